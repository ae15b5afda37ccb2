//! Helpers shared by the conc-core integration tests.
//!
//! Every wait in the tests goes through [`within`], a generous upper bound that turns a hang
//! into a failure instead of a stuck test run. No test depends on something happening *before*
//! a deadline except where a test says so explicitly ("fails at once": well under a long call
//! timeout).

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use conc_core::{Event, ExitReason, Inbox, Pid, ProcessId, ReplyTo, Runtime};
use serde::{Deserialize, Serialize};

/// Upper bound for anything that must happen "eventually": far above what any healthy run needs.
pub const HANG: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it has not completed within [`HANG`].
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still pending after {HANG:?} (hang)"),
    }
}

/// Awaits `f`, failing the test if it has not completed within `limit`.
pub async fn within_for<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still pending after {limit:?}"),
    }
}

/// A process that receives and discards `u64`s until the runtime shuts down.
pub fn idle(rt: &Runtime) -> Pid<u64> {
    rt.spawn(|mut inbox: Inbox<u64>| async move { while inbox.recv().await.is_some() {} })
}

/// A process that returns at once (exit reason normal), and the pid after it has exited.
pub async fn dead(rt: &Runtime) -> Pid<u64> {
    let p = rt.spawn(|_inbox: Inbox<u64>| async move {});
    let down = within("exit of a process that returns at once", rt.monitor(&p)).await;
    assert!(
        matches!(down.reason, ExitReason::Normal | ExitReason::NoSuchProcess),
        "{down:?}"
    );
    assert!(!p.is_alive());
    p
}

/// An operation an [`agent`] performs and acknowledges.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    Link(Pid<Cmd>),
    Unlink(Pid<Cmd>),
    Monitor(Pid<Cmd>),
    Trap(bool),
}

/// The commands an [`agent`] understands.
#[derive(Debug, Serialize, Deserialize)]
pub enum Cmd {
    /// Perform the operation, then acknowledge.
    Op(Op, ReplyTo<()>),
    /// Panic with this message.
    Panic(String),
    /// `Inbox::exit(reason)`, then wait forever.
    Exit(ExitReason),
    /// Return from the process function (reason normal).
    Return,
    /// Answer with the next monitor/link signal this agent received (waiting for one if none).
    NextSignal(ReplyTo<Sig>),
}

/// A signal an [`agent`] received, as reported by [`Cmd::NextSignal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sig {
    Down(ProcessId, ExitReason),
    Exit(ProcessId, ExitReason),
}

/// A scriptable process: performs [`Cmd`]s and records monitor/link signals.
pub fn agent(rt: &Runtime) -> Pid<Cmd> {
    rt.spawn(|mut inbox: Inbox<Cmd>| async move {
        let mut signals: VecDeque<Sig> = VecDeque::new();
        let mut waiting: Option<ReplyTo<Sig>> = None;
        while let Some(ev) = inbox.recv_event().await {
            match ev {
                Event::Message(Cmd::Op(op, ack)) => {
                    match op {
                        Op::Link(p) => inbox.link(&p),
                        Op::Unlink(p) => inbox.unlink(&p),
                        Op::Monitor(p) => {
                            inbox.monitor(&p);
                        }
                        Op::Trap(t) => inbox.trap_exit(t),
                    }
                    let _ = ack.send(());
                }
                Event::Message(Cmd::Panic(msg)) => panic!("{msg}"),
                Event::Message(Cmd::Exit(reason)) => {
                    inbox.exit(reason);
                    std::future::pending::<()>().await;
                }
                Event::Message(Cmd::Return) => return,
                Event::Message(Cmd::NextSignal(reply)) => match signals.pop_front() {
                    Some(s) => {
                        let _ = reply.send(s);
                    }
                    None => waiting = Some(reply),
                },
                Event::Down(d) => signals.push_back(Sig::Down(d.pid, d.reason)),
                Event::Exit(e) => signals.push_back(Sig::Exit(e.pid, e.reason)),
            }
            if waiting.is_some()
                && let Some(s) = signals.pop_front()
            {
                let _ = waiting.take().unwrap().send(s);
            }
        }
    })
}

/// Asks an agent to perform `op` and waits for the acknowledgement.
pub async fn op(agent: &Pid<Cmd>, op: Op) {
    within("agent op", agent.call(|ack| Cmd::Op(op, ack), HANG))
        .await
        .expect("agent acknowledges the op");
}

/// The next signal an agent received.
pub async fn next_signal(agent: &Pid<Cmd>) -> Sig {
    within("agent signal", agent.call(Cmd::NextSignal, HANG))
        .await
        .expect("agent reports its next signal")
}

/// The identity of a local pid.
pub fn pid_id<M: Send + 'static>(p: &Pid<M>) -> ProcessId {
    p.id().expect("a local pid has an id")
}
