//! The results: the line per figure as it is measured (with its ratio to the floor of the same
//! run), the table at the end, the JSON file (`serde_json`) and the SVG chart (`plotters`).

use std::fmt::Write as _;
use std::io::Write as _;

/// The floor a figure is compared with: its name (`tokio_rtt p50_us`, ...) and value.
pub(crate) struct FloorRef {
    pub(crate) name: String,
    pub(crate) value: f64,
}

/// One measured figure.
pub(crate) struct Figure {
    /// `None` for the local workloads; `Some("floor")` for a floor.
    pub(crate) transport: Option<String>,
    pub(crate) workload: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) value: f64,
    /// Messages, calls or processes the figure is measured over.
    pub(crate) count: u64,
    /// The floor of the same run it compares with, if measured.
    pub(crate) floor: Option<FloorRef>,
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

/// A target: on the value itself, or on its ratio to the floor.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    AtLeast(f64),
    AtMost(f64),
    Ratio(Bound),
}

/// Whether a bound is a floor or a ceiling.
#[derive(Clone, Copy)]
pub(crate) enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn value(self) -> f64 {
        match self {
            Goal::AtLeast(t) | Goal::AtMost(t) => t,
            Goal::Ratio(Bound::AtLeast(t) | Bound::AtMost(t)) => t,
        }
    }

    fn op(self) -> &'static str {
        match self {
            Goal::AtLeast(_) | Goal::Ratio(Bound::AtLeast(_)) => ">=",
            Goal::AtMost(_) | Goal::Ratio(Bound::AtMost(_)) => "<=",
        }
    }
}

/// The project's targets (issue 16: absolute figures, and ratios to the floor of the same run).
fn target(transport: Option<&str>, workload: &str, metric: &str) -> Option<Goal> {
    use Bound as B;
    Some(match (transport, workload, metric) {
        (None, "local_async", "msgs_per_s") => Goal::AtLeast(40_000_000.0),
        (None, "spawn_mem", "bytes_per_process") => Goal::AtMost(600.0),
        (Some("pooled-tcp"), "remote_async", "msgs_per_s") => Goal::AtLeast(5_000_000.0),
        (Some("quic"), "remote_async", "msgs_per_s") => Goal::AtLeast(3_000_000.0),
        (Some("pooled-tcp"), "remote_many", "msgs_per_s") => Goal::AtLeast(5_000_000.0),
        (Some("pooled-tcp" | "quic"), "remote_large", "bytes_per_s") => {
            Goal::Ratio(B::AtLeast(0.5))
        }
        (Some("pooled-tcp" | "quic"), "remote_hol", "p99_us") => Goal::Ratio(B::AtMost(2.0)),
        (Some("pooled-tcp"), "remote_rpc", "p50_us") => Goal::Ratio(B::AtMost(1.10)),
        (Some("pooled-tcp"), "remote_rpc", "p99_us") => Goal::Ratio(B::AtMost(1.25)),
        (Some("quic"), "remote_rpc", "p50_us") => Goal::Ratio(B::AtMost(1.25)),
        (Some("per-message-tcp"), "remote_async", "msgs_per_s") => Goal::Ratio(B::AtLeast(0.5)),
        _ => return None,
    })
}

/// The floor a conc figure is compared with (`floor <workload> <metric>` of this run), or, for
/// `remote_hol p99_us`, the idle p99 of the same transport.
pub(crate) fn floor_of(
    transport: &str,
    workload: &str,
    metric: &str,
) -> Option<(&'static str, &'static str)> {
    Some(match (transport, workload, metric) {
        ("per-message-tcp", "remote_async", "msgs_per_s") => ("c_connect_per_msg", "msgs_per_s"),
        (_, "remote_async" | "remote_many", "msgs_per_s") => ("tokio_stream", "msgs_per_s"),
        (_, "remote_large", "bytes_per_s") => ("tokio_stream", "bytes_per_s"),
        (_, "remote_rpc" | "remote_hol", "p50_us") => ("tokio_rtt", "p50_us"),
        (_, "remote_rpc", "p99_us") => ("tokio_rtt", "p99_us"),
        (_, "remote_hol", "idle_p99_us") => ("tokio_rtt", "p99_us"),
        (_, "remote_hol", "p99_us") => ("remote_hol", "idle_p99_us"),
        _ => return None,
    })
}

impl Figure {
    /// The target and whether it is met (a ratio target needs the floor).
    fn goal(&self) -> Option<(Goal, bool)> {
        let g = target(self.transport.as_deref(), self.workload, self.metric)?;
        let met = match g {
            Goal::AtLeast(t) => self.value >= t,
            Goal::AtMost(t) => self.value <= t,
            Goal::Ratio(b) => {
                let r = self.value / self.floor.as_ref()?.value;
                match b {
                    Bound::AtLeast(t) => r >= t,
                    Bound::AtMost(t) => r <= t,
                }
            }
        };
        Some((g, met))
    }

    /// The target as a value on the figure's own scale (for the chart).
    fn absolute_target(&self) -> Option<f64> {
        match self.goal()?.0 {
            Goal::AtLeast(t) | Goal::AtMost(t) => Some(t),
            Goal::Ratio(Bound::AtLeast(t) | Bound::AtMost(t)) => {
                self.floor.as_ref().map(|f| f.value * t)
            }
        }
    }
}

/// Whether smaller is better for a metric.
fn lower_is_better(metric: &str) -> bool {
    metric.ends_with("_us") || metric.starts_with("bytes_per_process")
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
    /// The value of a figure already recorded.
    pub(crate) fn value_of(&self, transport: &str, workload: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .rev()
            .find(|f| {
                f.transport.as_deref() == Some(transport)
                    && f.workload == workload
                    && f.metric == metric
            })
            .map(|f| f.value)
    }

    /// Records a figure and prints its line; if its floor was measured in this run, also a
    /// line `<transport> <workload> <metric>_vs_floor <ratio>`.
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
        let floor = transport
            .filter(|t| *t != "floor")
            .and_then(|t| {
                let (w, m) = floor_of(t, workload, metric)?;
                let of = if w == "remote_hol" { t } else { "floor" };
                let value = self.value_of(of, w, m)?;
                Some(FloorRef {
                    name: format!("{}{w} {m}", if of == "floor" { "floor " } else { "" }),
                    value,
                })
            })
            .filter(|f| f.value > 0.0);
        if let (Some(t), Some(fl)) = (transport, &floor) {
            println_flush(&format!(
                "{t} {workload} {metric}_vs_floor {:.3}",
                value / fl.value
            ));
        }
        self.figures.push(Figure {
            transport: transport.map(str::to_string),
            workload,
            metric,
            value,
            count,
            floor,
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
        let head = [
            "transport",
            "workload",
            "metric",
            "value",
            "n",
            "floor",
            "ratio",
            "target",
        ];
        let mut rows: Vec<[String; 8]> = Vec::new();
        for f in &self.figures {
            let goal = match f.goal() {
                Some((g, met)) => format!(
                    "{}{} {} {}",
                    if matches!(g, Goal::Ratio(_)) {
                        "ratio "
                    } else {
                        ""
                    },
                    g.op(),
                    if matches!(g, Goal::Ratio(_)) {
                        format!("{:.2}", g.value())
                    } else {
                        pretty(f.metric, g.value())
                    },
                    if met { "met" } else { "MISSED" }
                ),
                None => match target(f.transport.as_deref(), f.workload, f.metric) {
                    Some(g) => format!("ratio {} {:.2} (no floor)", g.op(), g.value()),
                    None => String::new(),
                },
            };
            let (floor, ratio) = match &f.floor {
                Some(fl) => (
                    format!("{} {}", fl.name, pretty(f.metric, fl.value)),
                    format!("{:.3}", f.value / fl.value),
                ),
                None => (String::new(), String::new()),
            };
            rows.push([
                f.transport.clone().unwrap_or_else(|| "local".into()),
                f.workload.into(),
                f.metric.into(),
                pretty(f.metric, f.value),
                grouped(f.count as f64),
                floor,
                ratio,
                goal,
            ]);
        }
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let right = |i: usize| i == 3 || i == 4 || i == 6;
        let line = |cells: [&str; 8]| {
            let mut s = String::from("|");
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                // Numbers align right.
                if right(i) {
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
            if right(i) {
                let _ = write!(rule, "-{dashes}:|");
            } else {
                let _ = write!(rule, "-{dashes}-|");
            }
        }
        out.push_str(&rule);
        out.push('\n');
        for r in &rows {
            let cells: [&str; 8] = std::array::from_fn(|i| r[i].as_str());
            out.push_str(&line(cells));
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

    /// The results as JSON (through `serde_json`).
    pub(crate) fn json(&self) -> String {
        let results: Vec<serde_json::Value> = self
            .figures
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({
                    "transport": f.transport,
                    "workload": f.workload,
                    "metric": f.metric,
                    "value": finite(f.value),
                    "count": f.count,
                });
                if let Some(fl) = &f.floor {
                    v["floor"] = serde_json::json!({
                        "name": fl.name,
                        "value": finite(fl.value),
                        "ratio": finite(f.value / fl.value),
                    });
                }
                if let Some((b, met)) = f.goal() {
                    v["target"] = serde_json::json!({
                        "op": b.op(),
                        "value": b.value(),
                        "of": if matches!(b, Goal::Ratio(_)) { "ratio" } else { "value" },
                    });
                    v["met"] = serde_json::Value::Bool(met);
                }
                v
            })
            .collect();
        let errors: Vec<serde_json::Value> = self
            .errors
            .iter()
            .map(|e| {
                serde_json::json!({
                    "transport": e.transport,
                    "workload": e.workload,
                    "error": e.error,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "bench": "conc",
            "payload": self.payload,
            "transports_compiled": conc_node::transport_names(),
            "results": results,
            "notes": self.notes,
            "errors": errors,
        });
        let mut out = serde_json::to_string_pretty(&doc)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        out.push('\n');
        out
    }

    /// The results as an SVG chart drawn with `plotters`: one panel per (workload, metric),
    /// one bar per transport, each panel on its own scale, with the floor of the same run as a
    /// blue line and the target as a red one.
    pub(crate) fn svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let mut panels: Vec<(&str, &str)> = Vec::new();
        for f in &self.figures {
            if f.transport.as_deref() != Some("floor") && !panels.contains(&(f.workload, f.metric))
            {
                panels.push((f.workload, f.metric));
            }
        }
        let cols = 3usize;
        let rows = panels.len().div_ceil(cols).max(1);
        let (pw, ph) = (440u32, 300u32);
        let size = (pw * cols as u32, ph * rows as u32 + 50);
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (head, body) = root.split_vertically(50);
            head.draw(&Text::new(
                format!(
                    "conc bench (32-byte payload as {}): bars per transport; blue line: the floor of the same run; red dashed: the target",
                    if self.payload == "bytes" { "a byte string" } else { "[u8; 32]" }
                ),
                (10, 18),
                ("sans-serif", 15).into_font(),
            ))
            .map_err(|e| e.to_string())?;
            let areas = body.split_evenly((rows, cols));
            for ((workload, metric), area) in panels.iter().zip(areas.iter()) {
                let bars: Vec<&Figure> = self
                    .figures
                    .iter()
                    .filter(|f| {
                        f.workload == *workload
                            && f.metric == *metric
                            && f.transport.as_deref() != Some("floor")
                    })
                    .collect();
                let floor = bars
                    .iter()
                    .find_map(|f| f.floor.as_ref().map(|fl| fl.value));
                let goal = bars.iter().find_map(|f| f.absolute_target());
                let max = bars
                    .iter()
                    .map(|f| f.value)
                    .chain(floor)
                    .chain(goal)
                    .fold(0.0f64, f64::max)
                    .max(f64::MIN_POSITIVE)
                    * 1.2;
                let n = bars.len();
                let names: Vec<String> = bars
                    .iter()
                    .map(|f| f.transport.clone().unwrap_or_else(|| "local".into()))
                    .collect();
                let caption = format!(
                    "{workload} {metric} ({} is better)",
                    if lower_is_better(metric) {
                        "lower"
                    } else {
                        "higher"
                    }
                );
                let mut chart = ChartBuilder::on(area)
                    .caption(caption, ("sans-serif", 14))
                    .margin(8)
                    .x_label_area_size(22)
                    .y_label_area_size(56)
                    .build_cartesian_2d(-0.5f64..n.max(1) as f64 - 0.5, 0f64..max)
                    .map_err(|e| e.to_string())?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(n.max(1))
                    .x_label_formatter(&|x| {
                        let i = x.round();
                        if (*x - i).abs() < 0.01 && i >= 0.0 {
                            names.get(i as usize).cloned().unwrap_or_default()
                        } else {
                            String::new()
                        }
                    })
                    .y_max_light_lines(1)
                    .y_label_formatter(&|y| short(*y))
                    .y_labels(5)
                    .draw()
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(bars.iter().enumerate().map(|(i, f)| {
                        let name = f.transport.as_deref().unwrap_or("local");
                        Rectangle::new(
                            [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, f.value)],
                            rgb(color(name)).filled(),
                        )
                    }))
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series(bars.iter().enumerate().map(|(i, f)| {
                        let label = match &f.floor {
                            Some(fl) => format!("{} ({:.2}x)", short(f.value), f.value / fl.value),
                            None => short(f.value),
                        };
                        Text::new(
                            label,
                            (i as f64 - 0.28, f.value + max * 0.07),
                            ("sans-serif", 12).into_font(),
                        )
                    }))
                    .map_err(|e| e.to_string())?;
                if let Some(y) = floor {
                    chart
                        .draw_series(LineSeries::new(
                            [(-0.5, y), (n as f64 - 0.5, y)],
                            ShapeStyle::from(&BLUE).stroke_width(2),
                        ))
                        .map_err(|e| e.to_string())?;
                }
                if let Some(y) = goal {
                    let red = RGBColor(0xc6, 0x28, 0x28);
                    chart
                        .draw_series(DashedLineSeries::new(
                            [(-0.5, y), (n as f64 - 0.5, y)],
                            6,
                            4,
                            ShapeStyle::from(&red).stroke_width(2),
                        ))
                        .map_err(|e| e.to_string())?;
                }
            }
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}

fn rgb(hex: &str) -> plotters::style::RGBColor {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0x757575);
    plotters::style::RGBColor((v >> 16) as u8, (v >> 8) as u8, v as u8)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
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
