//! The results: the line per figure as it is measured, the table at the end, the JSON file and
//! the SVG chart.

use std::fmt::Write as _;
use std::io::Write as _;

/// One measured figure.
pub(crate) struct Figure {
    /// `None` for the local workloads.
    pub(crate) transport: Option<String>,
    pub(crate) workload: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) value: f64,
    /// Messages, calls or processes the figure is measured over.
    pub(crate) count: u64,
}

/// A workload that failed.
pub(crate) struct Failure {
    pub(crate) transport: Option<String>,
    pub(crate) workload: String,
    pub(crate) error: String,
}

/// Everything the bench found.
#[derive(Default)]
pub(crate) struct Results {
    /// How the payload was serialized (`array` or `bytes`).
    pub(crate) payload: &'static str,
    pub(crate) figures: Vec<Figure>,
    pub(crate) notes: Vec<String>,
    pub(crate) errors: Vec<Failure>,
}

/// Whether a target is a floor or a ceiling.
#[derive(Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    fn met(self, v: f64) -> bool {
        match self {
            Bound::AtLeast(t) => v >= t,
            Bound::AtMost(t) => v <= t,
        }
    }

    fn value(self) -> f64 {
        match self {
            Bound::AtLeast(t) | Bound::AtMost(t) => t,
        }
    }

    fn op(self) -> &'static str {
        match self {
            Bound::AtLeast(_) => ">=",
            Bound::AtMost(_) => "<=",
        }
    }
}

/// The project's targets (design brief and the compass).
fn target(transport: Option<&str>, workload: &str, metric: &str) -> Option<Bound> {
    match (transport, workload, metric) {
        (None, "local_async", "msgs_per_s") => Some(Bound::AtLeast(15_000_000.0)),
        (None, "spawn_mem", "bytes_per_process") => Some(Bound::AtMost(1_000.0)),
        (Some("pooled-tcp"), "remote_async", "msgs_per_s") => Some(Bound::AtLeast(1_000_000.0)),
        (Some("pooled-tcp"), "remote_rpc", "p50_us") => Some(Bound::AtMost(40.0)),
        (Some("pooled-tcp"), "remote_rpc", "p99_us") => Some(Bound::AtMost(100.0)),
        (Some("quic"), "remote_async", "msgs_per_s") => Some(Bound::AtLeast(1_000_000.0)),
        (Some("quic"), "remote_rpc", "p50_us") => Some(Bound::AtMost(80.0)),
        _ => None,
    }
}

/// Whether smaller is better for a metric.
fn lower_is_better(metric: &str) -> bool {
    metric.ends_with("_us") || metric.starts_with("bytes")
}

/// The value as printed on a figure's line: latencies with one decimal, the rest whole.
fn plain(metric: &str, v: f64) -> String {
    if metric.ends_with("_us") {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A whole number with thousands separators.
fn grouped(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// The value for the table.
fn pretty(metric: &str, v: f64) -> String {
    if metric.ends_with("_us") {
        format!("{v:.1}")
    } else {
        grouped(v)
    }
}

/// A short form for the chart (12.3M, 456k, 38.2).
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        grouped(v)
    } else {
        format!("{v:.1}")
    }
}

fn println_flush(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

impl Results {
    /// Records a figure and prints its line.
    pub(crate) fn figure(
        &mut self,
        transport: Option<&str>,
        workload: &'static str,
        metric: &'static str,
        value: f64,
        count: u64,
    ) {
        let v = plain(metric, value);
        println_flush(&match transport {
            Some(t) => format!("{t} {workload} {metric} {v}"),
            None => format!("{workload} {metric} {v}"),
        });
        self.figures.push(Figure {
            transport: transport.map(str::to_string),
            workload,
            metric,
            value,
            count,
        });
    }

    /// Records a note and prints it as a comment line.
    pub(crate) fn note(&mut self, note: &str) {
        println_flush(&format!("# {note}"));
        self.notes.push(note.to_string());
    }

    /// Records a failed workload and prints it as a comment line.
    pub(crate) fn error(&mut self, transport: Option<&str>, workload: &str, error: &str) {
        let who = match transport {
            Some(t) => format!("{t} {workload}"),
            None => workload.to_string(),
        };
        println_flush(&format!("# error: {who}: {error}"));
        self.errors.push(Failure {
            transport: transport.map(str::to_string),
            workload: workload.to_string(),
            error: error.to_string(),
        });
    }

    /// Prints the table of all results (markdown).
    pub(crate) fn print_table(&self) {
        let head = ["transport", "workload", "metric", "value", "n", "target"];
        let mut rows: Vec<[String; 6]> = Vec::new();
        for f in &self.figures {
            let t = target(f.transport.as_deref(), f.workload, f.metric);
            let goal = match t {
                Some(b) => format!(
                    "{} {} {}",
                    b.op(),
                    pretty(f.metric, b.value()),
                    if b.met(f.value) { "met" } else { "MISSED" }
                ),
                None => String::new(),
            };
            rows.push([
                f.transport.clone().unwrap_or_else(|| "local".into()),
                f.workload.into(),
                f.metric.into(),
                pretty(f.metric, f.value),
                grouped(f.count as f64),
                goal,
            ]);
        }
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut s = String::from("|");
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                // Numbers align right.
                if i == 3 || i == 4 {
                    let _ = write!(s, " {c:>w$} |");
                } else {
                    let _ = write!(s, " {c:<w$} |");
                }
            }
            s
        };
        let mut out = String::from("\n");
        out.push_str(&line(head));
        out.push('\n');
        let mut rule = String::from("|");
        for (i, w) in width.iter().enumerate() {
            let dashes = "-".repeat(*w);
            if i == 3 || i == 4 {
                let _ = write!(rule, "-{dashes}:|");
            } else {
                let _ = write!(rule, "-{dashes}-|");
            }
        }
        out.push_str(&rule);
        out.push('\n');
        for r in &rows {
            out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
            out.push('\n');
        }
        if !self.notes.is_empty() || !self.errors.is_empty() {
            out.push('\n');
        }
        for n in &self.notes {
            let _ = writeln!(out, "# {n}");
        }
        for e in &self.errors {
            let who = match &e.transport {
                Some(t) => format!("{t} {}", e.workload),
                None => e.workload.clone(),
            };
            let _ = writeln!(out, "# error: {who}: {}", e.error);
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// The results as JSON.
    pub(crate) fn json(&self) -> String {
        let opt = |t: &Option<String>| match t {
            Some(t) => json_str(t),
            None => "null".to_string(),
        };
        let mut out = String::from("{\n  \"bench\": \"conc\",\n");
        let _ = writeln!(out, "  \"payload\": {},", json_str(self.payload));
        let _ = writeln!(
            out,
            "  \"transports_compiled\": [{}],",
            conc_node::transport_names()
                .iter()
                .map(|t| json_str(t))
                .collect::<Vec<_>>()
                .join(", ")
        );
        out.push_str("  \"results\": [");
        for (i, f) in self.figures.iter().enumerate() {
            let t = target(f.transport.as_deref(), f.workload, f.metric);
            let goal = match t {
                Some(b) => format!(
                    ", \"target\": {{\"op\": \"{}\", \"value\": {}}}, \"met\": {}",
                    b.op(),
                    json_num(b.value()),
                    b.met(f.value)
                ),
                None => String::new(),
            };
            let _ = write!(
                out,
                "{}\n    {{\"transport\": {}, \"workload\": {}, \"metric\": {}, \"value\": {}, \
                 \"count\": {}{goal}}}",
                if i == 0 { "" } else { "," },
                opt(&f.transport),
                json_str(f.workload),
                json_str(f.metric),
                json_num(f.value),
                f.count
            );
        }
        out.push_str("\n  ],\n  \"notes\": [");
        for (i, n) in self.notes.iter().enumerate() {
            let _ = write!(
                out,
                "{}\n    {}",
                if i == 0 { "" } else { "," },
                json_str(n)
            );
        }
        out.push_str("\n  ],\n  \"errors\": [");
        for (i, e) in self.errors.iter().enumerate() {
            let _ = write!(
                out,
                "{}\n    {{\"transport\": {}, \"workload\": {}, \"error\": {}}}",
                if i == 0 { "" } else { "," },
                opt(&e.transport),
                json_str(&e.workload),
                json_str(&e.error)
            );
        }
        out.push_str("\n  ]\n}\n");
        out
    }

    /// The results as an SVG bar chart: one panel per (workload, metric), one bar per
    /// transport, each panel on its own scale, with the target drawn as a dashed line.
    pub(crate) fn svg(&self) -> String {
        // The usual order, then anything else in the order measured.
        let mut panels: Vec<(&str, &str)> = [
            ("spawn_mem", "bytes_per_process"),
            ("local_async", "msgs_per_s"),
            ("remote_async", "msgs_per_s"),
            ("remote_rpc", "p50_us"),
            ("remote_rpc", "p99_us"),
            ("remote_rpc", "calls_per_s"),
        ]
        .into_iter()
        .filter(|(w, m)| {
            self.figures
                .iter()
                .any(|f| f.workload == *w && f.metric == *m)
        })
        .collect();
        for f in &self.figures {
            if !panels.contains(&(f.workload, f.metric)) {
                panels.push((f.workload, f.metric));
            }
        }
        // Wide enough for a label like "per-message-tcp" under every bar.
        let most_bars = panels
            .iter()
            .map(|(w, m)| {
                self.figures
                    .iter()
                    .filter(|f| f.workload == *w && f.metric == *m)
                    .count()
            })
            .max()
            .unwrap_or(1);
        let pw = (40.0 + 105.0 * most_bars as f64).max(320.0);
        let cols: usize = if pw > 400.0 { 2 } else { 3 };
        const PH: f64 = 270.0;
        const TOP: f64 = 56.0;
        let rows = panels.len().div_ceil(cols).max(1);
        let width = pw * cols.min(panels.len().max(1)) as f64;
        let height = TOP + PH * rows as f64 + 10.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" font-family=\"DejaVu Sans, Helvetica, Arial, \
             sans-serif\">"
        );
        let _ = writeln!(
            s,
            "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
        );
        let _ = writeln!(
            s,
            "<text x=\"12\" y=\"26\" font-size=\"18\" font-weight=\"bold\">conc bench \
             <tspan font-size=\"13\" font-weight=\"normal\" fill=\"#555\">(32-byte payload \
             as {})</tspan></text>",
            if self.payload == "bytes" {
                "a byte string"
            } else {
                "[u8; 32]"
            }
        );
        let _ = writeln!(
            s,
            "<text x=\"12\" y=\"45\" font-size=\"12\" fill=\"#555\">each panel has its own \
             scale; red dashed line: the target</text>"
        );
        if panels.is_empty() {
            let _ = writeln!(
                s,
                "<text x=\"12\" y=\"80\" font-size=\"14\">no results</text>"
            );
        }
        for (i, (workload, metric)) in panels.iter().enumerate() {
            let x0 = pw * (i % cols) as f64;
            let y0 = TOP + PH * (i / cols) as f64;
            let bars: Vec<&Figure> = self
                .figures
                .iter()
                .filter(|f| f.workload == *workload && f.metric == *metric)
                .collect();
            let goal = bars
                .iter()
                .find_map(|f| target(f.transport.as_deref(), f.workload, f.metric));
            let max = bars
                .iter()
                .map(|f| f.value)
                .chain(goal.map(Bound::value))
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let min = bars
                .iter()
                .map(|f| f.value)
                .chain(goal.map(Bound::value))
                .filter(|v| *v > 0.0)
                .fold(max, f64::min);
            // Values far apart (per-message TCP beside pooled) get a logarithmic scale, so that
            // the small bars stay readable.
            let log = max / min > 10.0;
            let lo = 10f64.powf(min.log10().floor() - 0.3);
            let (left, right) = (x0 + 24.0, x0 + pw - 16.0);
            let (top, base) = (y0 + 80.0, y0 + PH - 44.0);
            let height_of = |v: f64| -> f64 {
                let frac = if log {
                    (v.max(lo).log10() - lo.log10()) / ((max * 1.02).log10() - lo.log10())
                } else {
                    v.max(0.0) / (max * 1.02)
                };
                (frac * (base - top)).max(1.0)
            };
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" \
                 stroke=\"#ddd\"/>",
                x0 + 6.0,
                y0 + 4.0,
                pw - 12.0,
                PH - 10.0
            );
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"15\" font-weight=\"bold\" \
                 text-anchor=\"middle\">{}</text>",
                x0 + pw / 2.0,
                y0 + 24.0,
                xml(workload)
            );
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#444\" \
                 text-anchor=\"middle\">{} ({} is better{})</text>",
                x0 + pw / 2.0,
                y0 + 41.0,
                xml(metric),
                if lower_is_better(metric) {
                    "lower"
                } else {
                    "higher"
                },
                if log { ", log scale" } else { "" }
            );
            if let Some(b) = goal {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"#c62828\" \
                     text-anchor=\"middle\">target {} {} ({})</text>",
                    x0 + pw / 2.0,
                    y0 + 57.0,
                    match b {
                        Bound::AtLeast(_) => "\u{2265}",
                        Bound::AtMost(_) => "\u{2264}",
                    },
                    short(b.value()),
                    bars.iter()
                        .find(|f| target(f.transport.as_deref(), f.workload, f.metric).is_some())
                        .and_then(|f| f.transport.as_deref())
                        .unwrap_or("local")
                );
            }
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" \
                 stroke=\"#333\"/>"
            );
            let slot = (right - left) / bars.len().max(1) as f64;
            let bw = (slot * 0.6).min(70.0);
            if let Some(b) = goal {
                let y = base - height_of(b.value());
                let _ = writeln!(
                    s,
                    "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" \
                     stroke=\"#c62828\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>"
                );
            }
            for (j, f) in bars.iter().enumerate() {
                let name = f.transport.as_deref().unwrap_or("local");
                let cx = left + slot * (j as f64 + 0.5);
                let h = height_of(f.value);
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" \
                     fill=\"{}\"><title>{} {} {} = {}</title></rect>",
                    cx - bw / 2.0,
                    base - h,
                    color(name),
                    xml(name),
                    xml(workload),
                    xml(metric),
                    plain(metric, f.value)
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"13\" font-weight=\"bold\" \
                     text-anchor=\"middle\" stroke=\"#fafafa\" stroke-width=\"3\" \
                     paint-order=\"stroke\">{}</text>",
                    base - h - 5.0,
                    short(f.value)
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"12\" \
                     text-anchor=\"middle\">{}</text>",
                    base + 17.0,
                    xml(name)
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#666\" \
                     text-anchor=\"middle\">n={}</text>",
                    base + 31.0,
                    short(f.count as f64)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn color(transport: &str) -> &'static str {
    match transport {
        "per-message-tcp" => "#e07b39",
        "pooled-tcp" => "#3b7dd8",
        "pooled-tcp-tls" => "#1e4f9c",
        "quic" => "#43a047",
        "local" => "#7e57c2",
        _ => "#757575",
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() {
        // Rust prints f64 without exponent and with a dot only when needed: both valid JSON.
        format!("{v}")
    } else {
        "null".to_string()
    }
}
