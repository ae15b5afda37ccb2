//! Child OS processes for the tests that kill a node: the test binary re-executed with
//! `CONC_CHILD=<role>` runs its `#[ignore]`d `child` entry (as in the workspace's
//! `tests/tests/restart.rs`), which starts a node, prints `node NAME` and runs until killed.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a child may take to start and print its name (a loaded machine may be slow).
pub(crate) const STARTUP: Duration = Duration::from_secs(60);

/// A child process killed (SIGKILL) when dropped.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts this test binary's `child` entry in role `role`; returns the process and its node's
/// name (read from its line `node NAME`).
pub(crate) fn start_child(role: &str) -> (KillOnDrop, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CONC_CHILD", role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // libtest may print `test child ... ` in front of the first line.
            if let Some((_, name)) = line.rsplit_once("node ") {
                let _ = tx.send(name.to_string());
            }
        }
    });
    let name = rx
        .recv_timeout(STARTUP)
        .unwrap_or_else(|_| panic!("the {role} child printed its name"));
    (child, name)
}

/// The body of a `child` entry: runs `role` (given `CONC_CHILD`'s value) on a multi-thread
/// runtime.
pub(crate) fn run_child<F: Future<Output = ()>>(role: impl FnOnce(String) -> F) {
    let name = std::env::var("CONC_CHILD").expect("run by the other test with CONC_CHILD set");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(role(name));
}
