//! `--with-floor`: the floors measured in the same run as conc's figures, so that every figure
//! can be read as a ratio (the machine's loopback speed drifts between sessions).
//!
//! - the tokio floor (`<tools>/tokio-floor`: plain tokio TCP, no framework), built with cargo
//!   and run: `floor tokio_rtt p50_us|p99_us` (100,000 sequential 40-byte ping-pongs with a
//!   server in another OS process) and `floor tokio_stream msgs_per_s|bytes_per_s` (1,000,000
//!   40-byte frames one way through a 64 KiB buffer);
//! - the C floor (`<tools>/c-floor/run.sh`, needs `cc`), where present: `floor c_rtt
//!   p50_us|p99_us`, `floor c_stream msgs_per_s` (one `write()` per 40-byte frame) and
//!   `floor c_connect_per_msg msgs_per_s` (connect, request, answer, close: the floor of
//!   per-message TCP).

use std::path::Path;
use std::process::Command;

use crate::report::Results;

/// The floors' frame size in bytes.
const FLOOR_FRAME: f64 = 40.0;

/// Runs the floors found under `tools` and records their figures; a floor that cannot run is
/// a note, not a failure.
pub(crate) fn run(tools: &Path, results: &mut Results) {
    let manifest = tools.join("tokio-floor/Cargo.toml");
    if manifest.exists() {
        let target = std::env::var_os("TOKIO_FLOOR_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("conc-tokio-floor"));
        eprintln!("floor: building and running {}", manifest.display());
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["run", "--quiet", "--release", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                for line in text.lines() {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    match w.as_slice() {
                        ["tokio_rtt", "p50_us", p50, "p99_us", p99] => {
                            record(results, "tokio_rtt", "p50_us", p50, 100_000);
                            record(results, "tokio_rtt", "p99_us", p99, 100_000);
                        }
                        ["tokio_stream", "msgs_per_s", v] => {
                            record(results, "tokio_stream", "msgs_per_s", v, 1_000_000);
                            if let Ok(x) = v.parse::<f64>() {
                                results.figure(
                                    Some("floor"),
                                    "tokio_stream",
                                    "bytes_per_s",
                                    x * FLOOR_FRAME,
                                    1_000_000,
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok(o) => results.note(&format!(
                "floor: the tokio floor failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => results.note(&format!("floor: cannot run cargo for the tokio floor: {e}")),
        }
    } else {
        results.note(&format!("floor: no tokio floor at {}", manifest.display()));
    }
    let script = tools.join("c-floor/run.sh");
    if !script.exists() {
        results.note(&format!("floor: no C floor at {}", script.display()));
        return;
    }
    eprintln!("floor: running {}", script.display());
    match Command::new("bash").arg(&script).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            for line in text.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                match w.as_slice() {
                    ["c_rtt", "p50_us", p50, "p99_us", p99] => {
                        record(results, "c_rtt", "p50_us", p50, 100_000);
                        record(results, "c_rtt", "p99_us", p99, 100_000);
                    }
                    ["c_stream_one_write_per_msg", "msgs_per_s", v] => {
                        record(results, "c_stream", "msgs_per_s", v, 1_000_000);
                    }
                    ["c_connect_per_msg", "msgs_per_s", v] => {
                        record(results, "c_connect_per_msg", "msgs_per_s", v, 20_000);
                    }
                    _ => {}
                }
            }
        }
        Ok(o) => results.note(&format!(
            "floor: the C floor failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => results.note(&format!("floor: cannot run the C floor: {e}")),
    }
}

fn record(results: &mut Results, workload: &'static str, metric: &'static str, v: &str, n: u64) {
    match v.parse::<f64>() {
        Ok(x) => results.figure(Some("floor"), workload, metric, x, n),
        Err(_) => results.note(&format!("floor: cannot read {workload} {metric} {v:?}")),
    }
}
