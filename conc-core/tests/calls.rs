//! conc-core: synchronous calls (`Pid::call`, `ReplyTo`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use conc_core::{
    CallError, ExitReason, Inbox, Pid, ReplyErrorKind, ReplyTo, Runtime, SendErrorKind,
    SpawnOptions,
};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

type Echo = (u64, ReplyTo<u64>);

fn echo(rt: &Runtime) -> Pid<Echo> {
    rt.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some((n, reply)) = inbox.recv().await {
            let _ = reply.send(n);
        }
    })
}

/// A request a [`server`] understands.
#[derive(Debug, Serialize, Deserialize)]
enum Req {
    /// Reply with the number.
    Echo(u64, ReplyTo<u64>),
    /// Drop the reply handle without replying, and keep running.
    Drop(ReplyTo<u64>),
    /// Panic while holding the reply handle.
    Panic(ReplyTo<u64>),
    /// Hand the reply handle out of the process (to the test) and keep running.
    HandOut(ReplyTo<u64>),
    /// Hold the reply handle and wait forever.
    Hold(ReplyTo<u64>),
    /// Give the reply handle to a helper tokio task that panics while holding it.
    PanicInHelper(ReplyTo<u64>),
    /// Drop the reply handle inside a panic that the process itself catches; keep running.
    CatchPanic(ReplyTo<u64>),
    /// Return from the process function while holding the handle.
    Return(ReplyTo<u64>),
}

/// A server; reply handles it is told to hand out go to the returned channel, and it announces
/// on `holding` when it holds a handle (for `Hold`).
fn server(
    rt: &Runtime,
) -> (
    Pid<Req>,
    mpsc::UnboundedReceiver<ReplyTo<u64>>,
    mpsc::UnboundedReceiver<()>,
) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (hold_tx, hold_rx) = mpsc::unbounded_channel();
    let pid = rt.spawn(move |mut inbox: Inbox<Req>| async move {
        while let Some(req) = inbox.recv().await {
            match req {
                Req::Echo(n, r) => {
                    let _ = r.send(n);
                }
                Req::Drop(r) => drop(r),
                Req::Panic(_r) => panic!("server panicked"),
                Req::HandOut(r) => {
                    let _ = out_tx.send(r);
                }
                Req::Hold(r) => {
                    let _ = hold_tx.send(());
                    std::future::pending::<()>().await;
                    drop(r);
                }
                Req::PanicInHelper(r) => {
                    tokio::spawn(async move {
                        let _held = r;
                        panic!("helper panicked");
                    });
                }
                Req::CatchPanic(r) => {
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let _held = r;
                        panic!("caught inside the server");
                    }));
                    assert!(caught.is_err());
                }
                Req::Return(_r) => return,
            }
        }
    });
    (pid, out_rx, hold_rx)
}

// ---------------------------------------------------------------------------------------------
// 7. Calls
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_returns_the_reply() {
    let rt = Runtime::new();
    let e = echo(&rt);
    assert_eq!(within("call", e.call(|r| (7, r), HANG)).await, Ok(7));
    assert_eq!(
        within("call_default", e.call_default(|r| (8, r))).await,
        Ok(8)
    );
    assert_eq!(conc_core::DEFAULT_CALL_TIMEOUT, Duration::from_secs(5));
    assert_eq!(rt.node_side().pending_remote_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_get_their_own_reply() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 500;
    let rt = Runtime::new();
    let e = echo(&rt);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CALLS {
                let n = t * 1_000_000 + i;
                assert_eq!(e.call(|r| (n, r), HANG).await, Ok(n));
            }
        }));
    }
    for t in tasks {
        within("caller task", t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_out_of_order_still_reach_the_right_callers() {
    // The server collects requests in batches and answers each batch in reverse order.
    const CALLERS: u64 = 64;
    let rt = Runtime::new();
    let server = rt.spawn(|mut inbox: Inbox<Echo>| async move {
        while let Some(first) = inbox.recv().await {
            let mut batch = vec![first];
            while let Some(more) = inbox.try_recv() {
                batch.push(more);
            }
            for (n, reply) in batch.into_iter().rev() {
                let _ = reply.send(n * 10);
            }
        }
    });
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let n = c * 1000 + i;
                assert_eq!(server.call(|r| (n, r), HANG).await, Ok(n * 10));
            }
        }));
    }
    for t in tasks {
        within("caller", t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_processes() {
    let rt = Runtime::new();
    let e = echo(&rt);
    let (tx, rx) = oneshot::channel();
    rt.spawn(move |_inbox: Inbox<u64>| async move {
        let mut sum = 0;
        for i in 0..100 {
            sum += e.call(|r| (i, r), HANG).await.unwrap();
        }
        let _ = tx.send(sum);
    });
    assert_eq!(within("caller process", rx).await.unwrap(), 4950);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_timeout_and_a_late_reply_is_dropped() {
    let rt = Runtime::new();
    let (server, mut handed_out, _) = server(&rt);
    let (res_tx, res_rx) = oneshot::channel();
    let (late_tx, late_rx) = oneshot::channel::<()>();
    let (left_tx, left_rx) = oneshot::channel();
    let s = server.clone();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let res = s.call(Req::HandOut, Duration::from_millis(50)).await;
        let _ = res_tx.send(res);
        let _ = late_rx.await;
        let len = inbox.len();
        let msg = inbox.try_recv();
        let ev = inbox.recv_event_timeout(Duration::from_millis(20)).await;
        let _ = left_tx.send((len, msg, ev.is_err()));
    });
    assert_eq!(
        within("call", res_rx).await.unwrap(),
        Err(CallError::Timeout(Duration::from_millis(50)))
    );
    let reply = within("handed out", handed_out.recv()).await.unwrap();
    let err = reply.send(99).unwrap_err();
    assert_eq!(err.kind, ReplyErrorKind::CallerGone);
    assert_eq!(err.reply, 99);
    late_tx.send(()).unwrap();
    // Nothing reached the caller's mailbox (neither as a message nor as a signal).
    assert_eq!(within("left", left_rx).await.unwrap(), (0, None, true));
    assert_eq!(rt.node_side().pending_remote_calls(), 0);
    // The server is unaffected.
    assert_eq!(
        within("echo", server.call(|r| Req::Echo(1, r), HANG)).await,
        Ok(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_reply_handle_fails_the_call_with_no_reply() {
    let rt = Runtime::new();
    let (server, _, _) = server(&rt);
    // The call's own timeout is far beyond the bound on the wait: a call that waited for its
    // timeout instead of failing when the handle was dropped fails the test in `within_for`
    // (and would end as `Timeout`, not `NoReply`).
    let res = within_for(
        "call whose handle is dropped",
        Duration::from_secs(20),
        server.call(Req::Drop, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(res, Err(CallError::NoReply));
    // The server is alive and still answers.
    assert!(server.is_alive());
    assert_eq!(
        within("echo", server.call(|r| Req::Echo(3, r), HANG)).await,
        Ok(3)
    );
}

/// The reply handle is forwarded to a helper task which panics while holding it; the callee
/// process itself stays alive. `ReplyTo` documents "dropping it without replying makes the call
/// fail at once", so this must be `NoReply` well before the 60 s call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_handle_dropped_by_a_panicking_helper_fails_the_call_at_once() {
    let rt = Runtime::new();
    let (server, _, _) = server(&rt);
    let res = within_for(
        "call whose handle is dropped by a panicking helper task",
        Duration::from_secs(10),
        server.call(Req::PanicInHelper, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(res, Err(CallError::NoReply));
    assert!(server.is_alive());
}

/// Same, but the panic happens (and is caught) inside the callee process itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_handle_dropped_in_a_caught_panic_fails_the_call_at_once() {
    let rt = Runtime::new();
    let (server, _, _) = server(&rt);
    let res = within_for(
        "call whose handle is dropped in a caught panic",
        Duration::from_secs(10),
        server.call(Req::CatchPanic, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(res, Err(CallError::NoReply));
    assert!(server.is_alive());
    assert_eq!(
        within("echo", server.call(|r| Req::Echo(4, r), HANG)).await,
        Ok(4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_panics_while_handling() {
    let rt = Runtime::new();
    let (server, _, _) = server(&rt);
    let res = within_for(
        "call to a panicking callee",
        Duration::from_secs(20),
        server.call(Req::Panic, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(
        res,
        Err(CallError::Exited(ExitReason::Panic(
            "server panicked".to_string()
        )))
    );
}

/// The callee panics while the call's request is still unread in its inbox (taken into the
/// inbox's private buffer by a selective receive). The call must fail with the panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_panics_with_the_request_still_buffered() {
    #[derive(Debug, Serialize, Deserialize)]
    enum M {
        Trigger,
        Call(ReplyTo<u64>),
    }
    let rt = Runtime::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let p = rt.spawn(|mut inbox: Inbox<M>| async move {
            let _ = inbox.recv_matching(|m| matches!(m, M::Trigger)).await;
            panic!("trigger");
        });
        let mut call = Box::pin(p.call(M::Call, Duration::from_secs(60)));
        // First poll: the request is queued.
        assert!((&mut call).now_or_never().is_none());
        p.send(M::Trigger).unwrap();
        let res = within_for("call", Duration::from_secs(20), call).await;
        *outcomes.entry(format!("{res:?}")).or_default() += 1;
    }
    assert_eq!(
        outcomes.keys().cloned().collect::<Vec<_>>(),
        vec![format!(
            "{:?}",
            Err::<u64, _>(CallError::Exited(ExitReason::Panic("trigger".to_string())))
        )],
        "outcomes: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_killed_while_handling() {
    let rt = Runtime::new();
    let (server, _, mut holding) = server(&rt);
    let s = server.clone();
    let call = tokio::spawn(async move { s.call(Req::Hold, Duration::from_secs(60)).await });
    within("holding", holding.recv()).await.unwrap();
    server.kill();
    let res = within_for("call", Duration::from_secs(20), call)
        .await
        .unwrap();
    assert_eq!(res, Err(CallError::Exited(ExitReason::Killed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_killed_before_reading_the_request() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let p = rt.spawn(move |mut inbox: Inbox<Echo>| async move {
        let _ = go_rx.await;
        inbox.recv().await;
    });
    let mut call = Box::pin(p.call(|r| (1, r), Duration::from_secs(60)));
    assert!((&mut call).now_or_never().is_none());
    p.kill();
    let res = within_for("call", Duration::from_secs(20), call).await;
    assert_eq!(res, Err(CallError::Exited(ExitReason::Killed)));
    drop(go_tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_exits_normally_without_replying() {
    let rt = Runtime::new();
    let (server, _, _) = server(&rt);
    let res = within_for(
        "call",
        Duration::from_secs(20),
        server.call(Req::Return, Duration::from_secs(60)),
    )
    .await;
    assert!(
        matches!(
            res,
            Err(CallError::NoReply | CallError::Exited(ExitReason::Normal))
        ),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_exits_with_a_custom_reason_while_handling() {
    let rt = Runtime::new();
    let p = rt.spawn(|mut inbox: Inbox<Echo>| async move {
        let (_n, _reply) = inbox.recv().await.unwrap();
        inbox.exit(ExitReason::Other("bye".to_string()));
        std::future::pending::<()>().await;
    });
    let res = within_for(
        "call",
        Duration::from_secs(20),
        p.call(|r| (1, r), Duration::from_secs(60)),
    )
    .await;
    assert_eq!(
        res,
        Err(CallError::Exited(ExitReason::Other("bye".to_string())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_dead_process_fails_at_once() {
    let rt = Runtime::new();
    let p = rt.spawn(|_inbox: Inbox<Echo>| async move {});
    within("exit", rt.monitor(&p)).await;
    let res = within_for(
        "call to dead process",
        Duration::from_secs(10),
        p.call(|r| (1, r), Duration::from_secs(30)),
    )
    .await;
    assert!(
        matches!(
            res,
            Err(CallError::Send(SendErrorKind::NoSuchProcess))
                | Err(CallError::Exited(ExitReason::NoSuchProcess))
        ),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_full_mailbox_waits_for_room_within_its_timeout() {
    let rt = Runtime::new();
    let p = rt.spawn_with(SpawnOptions::bounded(1), |_inbox: Inbox<Echo>| {
        std::future::pending::<()>()
    });
    let mut first = Box::pin(p.call(|r| (1, r), Duration::from_secs(60)));
    assert!((&mut first).now_or_never().is_none());
    // No room ever comes: the call ends with its timeout, not with a send error.
    let res = within_for(
        "call to full mailbox",
        Duration::from_secs(10),
        p.call(|r| (2, r), Duration::from_millis(200)),
    )
    .await;
    assert_eq!(res, Err(CallError::Timeout(Duration::from_millis(200))));
    drop(first);
    p.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_full_mailbox_completes_once_there_is_room() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let p = rt.spawn_with(
        SpawnOptions::bounded(1),
        |mut inbox: Inbox<Echo>| async move {
            let _ = go_rx.await;
            while let Some((n, reply)) = inbox.recv().await {
                let _ = reply.send(n);
            }
        },
    );
    let first = tokio::spawn({
        let p = p.clone();
        async move { p.call(|r| (1, r), Duration::from_secs(60)).await }
    });
    // Whichever request gets in first fills the mailbox; the other waits for room.
    let second = tokio::spawn({
        let p = p.clone();
        async move { p.call(|r| (2, r), Duration::from_secs(60)).await }
    });
    go_tx.send(()).unwrap();
    assert_eq!(within("second call", second).await.unwrap(), Ok(2));
    assert_eq!(within("first call", first).await.unwrap(), Ok(1));
    p.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_after_shutdown_fails_at_once() {
    let rt = Runtime::new();
    let e = echo(&rt);
    rt.shutdown();
    let res = within_for(
        "call after shutdown",
        Duration::from_secs(10),
        e.call(|r| (1, r), Duration::from_secs(30)),
    )
    .await;
    assert!(
        matches!(
            res,
            Err(CallError::Send(SendErrorKind::NoSuchProcess))
                | Err(CallError::Exited(
                    ExitReason::Normal | ExitReason::NoSuchProcess
                ))
        ),
        "{res:?}"
    );
}

/// A caller that gives up on a call by dropping the call future (`select!`, an outer timeout, a
/// cancelled task) is gone just as much as one that timed out: a reply sent afterwards must be
/// refused with `CallerGone` and handed back, not accepted into a slot nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_a_cancelled_call_is_refused() {
    let rt = Runtime::new();
    let (server, mut handed_out, _) = server(&rt);
    let mut call = Box::pin(server.call(Req::HandOut, Duration::from_secs(60)));
    assert!((&mut call).now_or_never().is_none());
    drop(call); // the caller gives up
    let reply = within("handed out", handed_out.recv()).await.unwrap();
    let res = reply.send(5);
    match res {
        Err(e) => {
            assert_eq!(e.kind, ReplyErrorKind::CallerGone);
            assert_eq!(e.reply, 5);
        }
        Ok(()) => panic!("reply to a cancelled call was accepted"),
    }
}

/// Many calls racing a ~1 ms timeout against a reply sent at about the same moment. Each call
/// ends in exactly `Ok` or `Timeout`, never hangs, and the replier sees `CallerGone` exactly when
/// the caller saw `Timeout` (a reply that the replier was told was delivered must be received).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_racing_the_timeout_agrees_on_both_sides() {
    const ITER: u64 = 1500;
    let rt = Runtime::new();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<(u64, bool)>();
    let server = rt.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((n, reply)) = inbox.recv().await {
            match n % 4 {
                0 => {}
                1 => tokio::task::yield_now().await,
                2 => tokio::time::sleep(Duration::from_micros(900)).await,
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
            let delivered = reply.send(n).is_ok();
            let _ = report_tx.send((n, delivered));
        }
    });
    let timeout = Duration::from_millis(1);
    let mut caller_ok = vec![false; ITER as usize];
    let (mut oks, mut timeouts) = (0, 0);
    for n in 0..ITER {
        match within("racing call", server.call(|r| (n, r), timeout)).await {
            Ok(v) => {
                assert_eq!(v, n);
                caller_ok[n as usize] = true;
                oks += 1;
            }
            Err(CallError::Timeout(t)) => {
                assert_eq!(t, timeout);
                timeouts += 1;
            }
            Err(other) => panic!("call {n}: unexpected {other:?}"),
        }
    }
    let mut disagreements = Vec::new();
    for _ in 0..ITER {
        let (n, delivered) = within("report", report_rx.recv()).await.unwrap();
        if delivered != caller_ok[n as usize] {
            disagreements.push((n, delivered));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {ITER} calls disagree (replier saw delivered, caller saw timeout: {:?}); \
         ok {oks}, timeouts {timeouts}",
        disagreements.len(),
        &disagreements[..disagreements.len().min(10)]
    );
    eprintln!("race: {oks} ok, {timeouts} timeouts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_handle_answers_only_once_and_many_handles_stay_independent() {
    // Two calls in flight to a server that answers them in the opposite order.
    let rt = Runtime::new();
    let (server, mut handed_out, _) = server(&rt);
    let s1 = server.clone();
    let c1 = tokio::spawn(async move { s1.call(Req::HandOut, HANG).await });
    let r1 = within("first handle", handed_out.recv()).await.unwrap();
    let s2 = server.clone();
    let c2 = tokio::spawn(async move { s2.call(Req::HandOut, HANG).await });
    let r2 = within("second handle", handed_out.recv()).await.unwrap();
    assert!(r1.is_local());
    r2.send(2).unwrap();
    assert_eq!(within("c2", c2).await.unwrap(), Ok(2));
    assert!(!c1.is_finished());
    r1.send(1).unwrap();
    assert_eq!(within("c1", c1).await.unwrap(), Ok(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_with_timeouts_do_not_disturb_each_other() {
    // Half the calls are answered, half are left to time out; answered ones must all succeed.
    let rt = Runtime::new();
    let held = Arc::new(AtomicUsize::new(0));
    let h = held.clone();
    let server = rt.spawn(move |mut inbox: Inbox<Echo>| async move {
        let mut keep = Vec::new();
        while let Some((n, reply)) = inbox.recv().await {
            if n % 2 == 0 {
                let _ = reply.send(n);
            } else {
                h.fetch_add(1, Ordering::SeqCst);
                keep.push(reply); // never answered, never dropped
            }
        }
    });
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100u64 {
                let n = t * 1000 + i;
                // Only the unanswered calls get a short timeout (no timing assumption on the
                // answered ones).
                let timeout = if n % 2 == 0 {
                    HANG
                } else {
                    Duration::from_millis(20)
                };
                let res = server.call(|r| (n, r), timeout).await;
                if n % 2 == 0 {
                    assert_eq!(res, Ok(n));
                } else {
                    assert_eq!(res, Err(CallError::Timeout(Duration::from_millis(20))));
                }
            }
        }));
    }
    for t in tasks {
        within("caller", t).await.unwrap();
    }
    assert_eq!(held.load(Ordering::SeqCst), 200);
    rt.shutdown();
}
