//! The progress line on stderr: a thread of its own prints `\r<label> <done>/<total>` every
//! second while a workload runs, and clears it when the workload ends.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the line is redrawn.
const EVERY: Duration = Duration::from_secs(1);

/// A running progress line; stops and clears it when dropped.
pub(crate) struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a progress line (or, if `enabled` is false, only the counter).
    pub(crate) fn start(label: String, total: u64, enabled: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = enabled.then(|| {
            let done = done.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut next = start + EVERY;
                let mut drawn: usize = 0;
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                    if Instant::now() < next {
                        continue;
                    }
                    next += EVERY;
                    let line = format!(
                        "{label} {}/{total} ({:.0} s)",
                        done.load(Ordering::Relaxed),
                        start.elapsed().as_secs_f64()
                    );
                    let pad = drawn.saturating_sub(line.len());
                    eprint!("\r{line}{:pad$}", "");
                    let _ = std::io::stderr().flush();
                    drawn = line.len();
                }
                if drawn > 0 {
                    eprint!("\r{:drawn$}\r", "");
                    let _ = std::io::stderr().flush();
                }
            })
        });
        Progress { done, stop, thread }
    }

    /// The counter the workload advances.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
