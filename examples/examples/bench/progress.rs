//! The progress bar on stderr, through `indicatif`: a bar per workload with the count done, the
//! elapsed time and the rate, cleared when the workload ends.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A running progress bar; cleared when dropped.
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Starts a bar for `total` units (or, if `enabled` is false, a hidden one).
    pub(crate) fn start(label: String, total: u64, enabled: bool) -> Progress {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4))
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {human_pos}/{human_len} ({elapsed}, {per_sec})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label);
        if enabled {
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        Progress { bar }
    }

    /// The bar the workload advances (`set_position` is cheap: an atomic store; drawing is
    /// rate-limited).
    pub(crate) fn counter(&self) -> ProgressBar {
        self.bar.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
