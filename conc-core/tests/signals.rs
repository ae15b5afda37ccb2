//! conc-core: exit reasons, monitors, links, trap_exit and `Inbox::exit`.

mod common;

use std::time::Duration;

use common::*;
use conc_core::{Event, ExitReason, Inbox, Pid, RecvError, ReplyTo, Runtime};
use tokio::sync::{mpsc, oneshot};

/// An echo process for "still works" checks.
fn echo(rt: &Runtime) -> Pid<(u64, ReplyTo<u64>)> {
    rt.spawn(|mut inbox: Inbox<(u64, ReplyTo<u64>)>| async move {
        while let Some((n, reply)) = inbox.recv().await {
            let _ = reply.send(n);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 9. Exit reasons
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reason_normal() {
    let rt = Runtime::new();
    let p = rt.spawn(|mut inbox: Inbox<u64>| async move {
        inbox.recv().await;
    });
    let mon = rt.monitor(&p);
    let mref = mon.monitor_ref();
    assert!(p.is_alive());
    p.send(1).unwrap();
    let down = within("down", mon).await;
    assert_eq!(down.reason, ExitReason::Normal);
    assert_eq!(down.pid, pid_id(&p));
    assert_eq!(down.monitor, mref);
    assert!(!p.is_alive());
    assert_eq!(rt.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reason_panic_carries_the_message_and_nothing_else_breaks() {
    let rt = Runtime::new();
    let bystander = echo(&rt);
    assert_eq!(
        within("call", bystander.call(|r| (1, r), HANG)).await,
        Ok(1)
    );

    // A formatted (String) panic message, a static (&str) one and a non-string payload. Each
    // waits for a message before panicking, so the monitors are set before the panics.
    let p = rt.spawn(|mut inbox: Inbox<u64>| async move {
        let n = inbox.recv().await.unwrap();
        panic!("boom {n}");
    });
    let q = rt.spawn(|mut inbox: Inbox<u64>| async move {
        inbox.recv().await;
        panic!("static boom");
    });
    let r = rt.spawn(|mut inbox: Inbox<u64>| async move {
        inbox.recv().await;
        std::panic::panic_any(42_u32);
    });
    let (dp, dq, dr) = (rt.monitor(&p), rt.monitor(&q), rt.monitor(&r));
    p.send(42).unwrap();
    q.send(0).unwrap();
    r.send(0).unwrap();
    assert_eq!(
        within("p", dp).await.reason,
        ExitReason::Panic("boom 42".to_string())
    );
    assert_eq!(
        within("q", dq).await.reason,
        ExitReason::Panic("static boom".to_string())
    );
    assert!(
        matches!(within("r", dr).await.reason, ExitReason::Panic(_)),
        "non-string panic payload"
    );

    // The runtime and the other processes keep working.
    assert_eq!(
        within("call", bystander.call(|r| (2, r), HANG)).await,
        Ok(2)
    );
    let fresh = echo(&rt);
    assert_eq!(within("call", fresh.call(|r| (3, r), HANG)).await, Ok(3));
    assert_eq!(rt.process_count(), 2);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reason_panic_of_a_process_that_panics_at_once() {
    // Set the monitor from inside the process before it panics, so the reason is certain.
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let watcher_rt = rt.clone();
    let p = rt.spawn(move |_inbox: Inbox<u64>| async move {
        let _ = rx.await;
        panic!("static boom");
    });
    let mon = watcher_rt.monitor(&p);
    tx.send(()).unwrap();
    assert_eq!(
        within("down", mon).await.reason,
        ExitReason::Panic("static boom".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reason_killed() {
    let rt = Runtime::new();
    let p = idle(&rt);
    let q = idle(&rt);
    let (dp, dq) = (rt.monitor(&p), rt.monitor(&q));
    p.kill();
    rt.kill(&q);
    assert_eq!(within("p", dp).await.reason, ExitReason::Killed);
    assert_eq!(within("q", dq).await.reason, ExitReason::Killed);
    // Killing again, or killing a dead pid, does nothing.
    p.kill();
    rt.kill(&q);
    assert_eq!(rt.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stops_a_busy_process_at_its_next_await() {
    let rt = Runtime::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = rt.spawn(move |_inbox: Inbox<u64>| async move {
        let mut i = 0u64;
        loop {
            let _ = tx.send(i);
            i += 1;
            tokio::task::yield_now().await;
        }
    });
    let mon = rt.monitor(&p);
    within("running", rx.recv()).await.unwrap();
    p.kill();
    assert_eq!(within("down", mon).await.reason, ExitReason::Killed);
    // Once the channel's sender (held by the process) is dropped, recv ends.
    while within("drain", rx.recv()).await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reason_no_such_process_for_a_dead_pid() {
    let rt = Runtime::new();
    let d = dead(&rt).await;
    let down = within("down", rt.monitor(&d)).await;
    assert_eq!(down.reason, ExitReason::NoSuchProcess);
    assert_eq!(down.pid, pid_id(&d));
}

// ---------------------------------------------------------------------------------------------
// 14. Inbox::exit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_exit_ends_the_process_with_that_reason() {
    let rt = Runtime::new();
    // (a) exit then return at once.
    let (go, go_rx) = oneshot::channel::<()>();
    let p = rt.spawn(move |inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        inbox.exit(ExitReason::Other("bye".to_string()));
    });
    let mon = rt.monitor(&p);
    go.send(()).unwrap();
    assert_eq!(
        within("a", mon).await.reason,
        ExitReason::Other("bye".to_string())
    );

    // (b) exit, then the code after the next (yielding) await does not run.
    let (go, go_rx) = oneshot::channel::<()>();
    let (after_tx, after_rx) = oneshot::channel::<()>();
    let q = rt.spawn(move |inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        inbox.exit(ExitReason::Other("bye".to_string()));
        tokio::task::yield_now().await;
        let _ = after_tx.send(());
    });
    let mon = rt.monitor(&q);
    go.send(()).unwrap();
    assert_eq!(
        within("b", mon).await.reason,
        ExitReason::Other("bye".to_string())
    );
    assert!(
        within("after", after_rx).await.is_err(),
        "code after exit + await ran"
    );

    // (c) exit then panic: the exit reason wins.
    let (go, go_rx) = oneshot::channel::<()>();
    let r = rt.spawn(move |inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        inbox.exit(ExitReason::Other("first".to_string()));
        panic!("second");
    });
    let mon = rt.monitor(&r);
    go.send(()).unwrap();
    assert_eq!(
        within("c", mon).await.reason,
        ExitReason::Other("first".to_string())
    );

    // (d) exit(Normal) is a normal exit.
    let (go, go_rx) = oneshot::channel::<()>();
    let s = rt.spawn(move |inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        inbox.exit(ExitReason::Normal);
        std::future::pending::<()>().await;
    });
    let mon = rt.monitor(&s);
    go.send(()).unwrap();
    assert_eq!(within("d", mon).await.reason, ExitReason::Normal);
}

// ---------------------------------------------------------------------------------------------
// 10. Monitors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_monitor_delivers_down_with_pid_and_reason() {
    let rt = Runtime::new();
    for (kind, expected) in [
        ("return", ExitReason::Normal),
        ("panic", ExitReason::Panic("boom".to_string())),
        ("kill", ExitReason::Killed),
        ("exit", ExitReason::Other("bye".to_string())),
    ] {
        let target = agent(&rt);
        let w = agent(&rt);
        op(&w, Op::Monitor(target.clone())).await;
        match kind {
            "return" => target.send(Cmd::Return).unwrap(),
            "panic" => target.send(Cmd::Panic("boom".to_string())).unwrap(),
            "kill" => target.kill(),
            _ => target
                .send(Cmd::Exit(ExitReason::Other("bye".to_string())))
                .unwrap(),
        }
        assert_eq!(
            next_signal(&w).await,
            Sig::Down(pid_id(&target), expected),
            "{kind}"
        );
        assert!(w.is_alive());
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_monitor_down_carries_the_monitor_ref() {
    let rt = Runtime::new();
    let target = idle(&rt);
    let (tx, rx) = oneshot::channel();
    let t = target.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let m1 = inbox.monitor(&t);
        let m2 = inbox.monitor(&t);
        let _ = ready_tx.send(());
        let mut downs = Vec::new();
        for _ in 0..2 {
            match inbox.recv_event().await {
                Some(Event::Down(d)) => downs.push(d),
                other => panic!("unexpected {other:?}"),
            }
        }
        let _ = tx.send((m1, m2, downs));
    });
    within("ready", ready_rx).await.unwrap();
    target.kill();
    let (m1, m2, downs) = within("downs", rx).await.unwrap();
    assert_ne!(m1, m2);
    assert_eq!(downs[0].monitor, m1);
    assert_eq!(downs[1].monitor, m2);
    for d in &downs {
        assert_eq!(d.pid, pid_id(&target));
        assert_eq!(d.reason, ExitReason::Killed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_signals_both_arrive_through_recv_event() {
    let rt = Runtime::new();
    let target = idle(&rt);
    let t = target.clone();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let w = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        inbox.monitor(&t);
        let _ = ready_tx.send(());
        let mut seen = Vec::new();
        while seen.len() < 3 {
            match inbox.recv_event().await.unwrap() {
                Event::Message(m) => seen.push(format!("msg {m}")),
                Event::Down(d) => seen.push(format!("down {}", d.reason)),
                Event::Exit(e) => seen.push(format!("exit {}", e.reason)),
            }
        }
        let _ = tx.send(seen);
    });
    within("ready", ready_rx).await.unwrap();
    w.send(1).unwrap();
    target.kill();
    w.send(2).unwrap();
    let seen = within("events", rx).await.unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&"down killed".to_string()), "{seen:?}");
    let msgs: Vec<_> = seen.iter().filter(|s| s.starts_with("msg")).collect();
    assert_eq!(msgs, vec!["msg 1", "msg 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_recv_does_not_return_signals() {
    let rt = Runtime::new();
    let target = idle(&rt);
    let t = target.clone();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let w = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        inbox.monitor(&t);
        let _ = ready_tx.send(());
        let m = inbox.recv().await;
        // The Down is still there for recv_event.
        let ev = inbox.recv_event_timeout(HANG).await;
        let _ = tx.send((m, matches!(ev, Ok(Event::Down(_)))));
    });
    within("ready", ready_rx).await.unwrap();
    let mon = rt.monitor(&target);
    target.kill();
    within("target down", mon).await;
    w.send(5).unwrap();
    assert_eq!(within("report", rx).await.unwrap(), (Some(5), true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_monitor_future_resolves_with_the_down() {
    let rt = Runtime::new();
    let p = rt.spawn(|mut inbox: Inbox<u64>| async move {
        inbox.recv().await;
        panic!("done");
    });
    let m1 = rt.monitor(&p);
    let m2 = rt.monitor(&p);
    assert_ne!(m1.monitor_ref(), m2.monitor_ref());
    let r1 = m1.monitor_ref();
    p.send(0).unwrap();
    let d1 = within("m1", m1).await;
    let d2 = within("m2", m2).await;
    assert_eq!(d1.monitor, r1);
    assert_eq!(d1.pid, pid_id(&p));
    assert_eq!(d1.reason, ExitReason::Panic("done".to_string()));
    assert_eq!(d2.reason, d1.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_of_a_dead_pid_fires_at_once_with_no_such_process() {
    let rt = Runtime::new();
    let d = dead(&rt).await;
    // rt.monitor: resolves at once.
    let down = within_for(
        "rt.monitor of dead pid",
        Duration::from_secs(10),
        rt.monitor(&d),
    )
    .await;
    assert_eq!(down.reason, ExitReason::NoSuchProcess);
    assert_eq!(down.pid, pid_id(&d));

    // inbox.monitor: the Down is queued by the time `monitor` returns.
    let (tx, rx) = oneshot::channel();
    let dd = d.clone();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let mref = inbox.monitor(&dd);
        let _ = tx.send((
            mref,
            inbox.recv_event_timeout(Duration::from_secs(10)).await,
        ));
    });
    let (mref, ev) = within("report", rx).await.unwrap();
    match ev {
        Ok(Event::Down(down)) => {
            assert_eq!(down.monitor, mref);
            assert_eq!(down.pid, pid_id(&d));
            assert_eq!(down.reason, ExitReason::NoSuchProcess);
        }
        other => panic!("expected Down, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_racing_an_exit_always_gives_exactly_one_down() {
    const ITER: usize = 500;
    let rt = Runtime::new();
    let (mut normal, mut nsp) = (0, 0);
    for _ in 0..ITER {
        let p = rt.spawn(|_inbox: Inbox<u64>| async move {});
        let down = within("down", rt.monitor(&p)).await;
        assert_eq!(down.pid, pid_id(&p));
        match down.reason {
            ExitReason::Normal => normal += 1,
            ExitReason::NoSuchProcess => nsp += 1,
            other => panic!("unexpected reason {other:?}"),
        }
    }
    assert_eq!(normal + nsp, ITER);

    // The same from inside a process, counting Downs: after each Down, a sentinel monitor of a
    // dead pid must be the very next event (so no second Down for the same monitor exists).
    let sentinel = dead(&rt).await;
    let (tx, rx) = oneshot::channel();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let rt = inbox.runtime();
        let mut counts = (0usize, 0usize);
        for _ in 0..ITER {
            let child = rt.spawn(|_inbox: Inbox<u64>| async move {});
            let mref = inbox.monitor(&child);
            match inbox.recv_event_timeout(HANG).await {
                Ok(Event::Down(d)) if d.monitor == mref && d.pid == pid_id(&child) => {
                    match d.reason {
                        ExitReason::Normal => counts.0 += 1,
                        ExitReason::NoSuchProcess => counts.1 += 1,
                        other => panic!("unexpected reason {other:?}"),
                    }
                }
                other => panic!("expected the child's Down, got {other:?}"),
            }
            let sref = inbox.monitor(&sentinel);
            match inbox.recv_event_timeout(HANG).await {
                Ok(Event::Down(d)) if d.monitor == sref => {}
                other => panic!("expected the sentinel Down, got {other:?}"),
            }
        }
        let _ = tx.send(counts);
    });
    let (n, s) = within("inbox monitors", rx).await.unwrap();
    assert_eq!(n + s, ITER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonitor_stops_the_down() {
    let rt = Runtime::new();
    let target = idle(&rt);
    let sentinel = dead(&rt).await;
    let t = target.clone();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let m1 = inbox.monitor(&t);
        let m2 = inbox.monitor(&t);
        inbox.demonitor(&t, m1);
        let _ = ready_tx.send(());
        // Monitors fire in the order they were set: had m1 survived, its Down would come first.
        let first = inbox.recv_event_timeout(HANG).await;
        let sref = inbox.monitor(&sentinel);
        let second = inbox.recv_event_timeout(HANG).await;
        let _ = tx.send((m1, m2, sref, first, second));
    });
    within("ready", ready_rx).await.unwrap();
    target.kill();
    let (m1, m2, sref, first, second) = within("report", rx).await.unwrap();
    match first {
        Ok(Event::Down(d)) => {
            assert_ne!(d.monitor, m1, "demonitored monitor fired");
            assert_eq!(d.monitor, m2);
        }
        other => panic!("expected Down, got {other:?}"),
    }
    match second {
        Ok(Event::Down(d)) => assert_eq!(d.monitor, sref, "an extra Down arrived"),
        other => panic!("expected the sentinel Down, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonitor_then_only_exit_no_down_at_all() {
    let rt = Runtime::new();
    let target = idle(&rt);
    let sentinel = dead(&rt).await;
    let t = target.clone();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let m = inbox.monitor(&t);
        inbox.demonitor(&t, m);
        let _ = ready_tx.send(());
        let _ = go_rx.await; // the target has exited by now
        let sref = inbox.monitor(&sentinel);
        let ev = inbox.recv_event_timeout(HANG).await;
        let _ = tx.send((sref, ev));
    });
    within("ready", ready_rx).await.unwrap();
    let mon = rt.monitor(&target);
    target.kill();
    within("target down", mon).await;
    go_tx.send(()).unwrap();
    let (sref, ev) = within("report", rx).await.unwrap();
    match ev {
        Ok(Event::Down(d)) => assert_eq!(d.monitor, sref, "the demonitored Down arrived"),
        other => panic!("expected the sentinel Down, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Links
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_propagates_an_abnormal_exit_both_ways() {
    let rt = Runtime::new();
    // B panics -> A (the linker) dies with B's reason.
    let a = agent(&rt);
    let b = agent(&rt);
    let (ma, mb) = (rt.monitor(&a), rt.monitor(&b));
    op(&a, Op::Link(b.clone())).await;
    b.send(Cmd::Panic("b failed".to_string())).unwrap();
    let reason = ExitReason::Panic("b failed".to_string());
    assert_eq!(within("b", mb).await.reason, reason);
    assert_eq!(within("a", ma).await.reason, reason);

    // A (the linker) panics -> B dies with A's reason.
    let a = agent(&rt);
    let b = agent(&rt);
    let (ma, mb) = (rt.monitor(&a), rt.monitor(&b));
    op(&a, Op::Link(b.clone())).await;
    a.send(Cmd::Panic("a failed".to_string())).unwrap();
    let reason = ExitReason::Panic("a failed".to_string());
    assert_eq!(within("a", ma).await.reason, reason);
    assert_eq!(within("b", mb).await.reason, reason);

    // Killed and a custom reason propagate too.
    for (how, reason) in [
        ("kill", ExitReason::Killed),
        ("exit", ExitReason::Other("bye".to_string())),
    ] {
        let a = agent(&rt);
        let b = agent(&rt);
        let ma = rt.monitor(&a);
        op(&a, Op::Link(b.clone())).await;
        if how == "kill" {
            b.kill();
        } else {
            b.send(Cmd::Exit(reason.clone())).unwrap();
        }
        assert_eq!(within(how, ma).await.reason, reason, "{how}");
    }
    assert_eq!(rt.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_chain_propagates() {
    let rt = Runtime::new();
    let a = agent(&rt);
    let b = agent(&rt);
    let c = agent(&rt);
    let (ma, mb) = (rt.monitor(&a), rt.monitor(&b));
    op(&a, Op::Link(b.clone())).await;
    op(&b, Op::Link(c.clone())).await;
    c.send(Cmd::Panic("c".to_string())).unwrap();
    assert_eq!(
        within("b", mb).await.reason,
        ExitReason::Panic("c".to_string())
    );
    assert_eq!(
        within("a", ma).await.reason,
        ExitReason::Panic("c".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_exit_does_not_kill_the_linked_partner() {
    let rt = Runtime::new();
    for how in ["return", "exit normal"] {
        let a = agent(&rt);
        let b = agent(&rt);
        op(&a, Op::Link(b.clone())).await;
        op(&a, Op::Monitor(b.clone())).await;
        if how == "return" {
            b.send(Cmd::Return).unwrap();
        } else {
            b.send(Cmd::Exit(ExitReason::Normal)).unwrap();
        }
        // A sees B's Down (so B has exited and the link has fired) and is still alive.
        assert_eq!(
            next_signal(&a).await,
            Sig::Down(pid_id(&b), ExitReason::Normal),
            "{how}"
        );
        op(&a, Op::Trap(false)).await;
        assert!(a.is_alive(), "{how}");
    }
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_exit_turns_a_linked_exit_into_an_event() {
    let rt = Runtime::new();
    let a = agent(&rt);
    op(&a, Op::Trap(true)).await;
    for (i, reason) in [
        ExitReason::Panic("b failed".to_string()),
        ExitReason::Killed,
        ExitReason::Other("bye".to_string()),
        ExitReason::Normal,
    ]
    .into_iter()
    .enumerate()
    {
        let b = agent(&rt);
        op(&a, Op::Link(b.clone())).await;
        match &reason {
            ExitReason::Panic(m) => b.send(Cmd::Panic(m.clone())).unwrap(),
            ExitReason::Killed => b.kill(),
            ExitReason::Normal => b.send(Cmd::Return).unwrap(),
            other => b.send(Cmd::Exit(other.clone())).unwrap(),
        }
        assert_eq!(
            next_signal(&a).await,
            Sig::Exit(pid_id(&b), reason),
            "case {i}"
        );
        assert!(a.is_alive());
    }
    // Trapping turned off again: the next abnormal exit kills A.
    op(&a, Op::Trap(false)).await;
    let b = agent(&rt);
    let ma = rt.monitor(&a);
    op(&a, Op::Link(b.clone())).await;
    b.kill();
    assert_eq!(within("a", ma).await.reason, ExitReason::Killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_stops_propagation() {
    let rt = Runtime::new();
    // Unlink by the linker.
    let a = agent(&rt);
    let b = agent(&rt);
    op(&a, Op::Link(b.clone())).await;
    op(&a, Op::Unlink(b.clone())).await;
    op(&a, Op::Monitor(b.clone())).await;
    b.send(Cmd::Panic("b failed".to_string())).unwrap();
    assert_eq!(
        next_signal(&a).await,
        Sig::Down(pid_id(&b), ExitReason::Panic("b failed".to_string()))
    );
    op(&a, Op::Trap(false)).await;
    assert!(a.is_alive());

    // Unlink by the other side removes the link in both directions.
    let c = agent(&rt);
    op(&a, Op::Link(c.clone())).await;
    op(&c, Op::Unlink(a.clone())).await;
    op(&c, Op::Monitor(a.clone())).await;
    a.send(Cmd::Panic("a failed".to_string())).unwrap();
    assert_eq!(
        next_signal(&c).await,
        Sig::Down(pid_id(&a), ExitReason::Panic("a failed".to_string()))
    );
    assert!(c.is_alive());
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_to_a_dead_process() {
    let rt = Runtime::new();
    let d = agent(&rt);
    let md = rt.monitor(&d);
    d.send(Cmd::Return).unwrap();
    within("d", md).await;

    // A non-trapping linker dies with no-such-process.
    let a = agent(&rt);
    let ma = rt.monitor(&a);
    // The ack may or may not come back before the exit takes effect.
    let _ = within(
        "link",
        a.call(|ack| Cmd::Op(Op::Link(d.clone()), ack), HANG),
    )
    .await;
    assert_eq!(within("a", ma).await.reason, ExitReason::NoSuchProcess);

    // A trapping linker receives Exit(no-such-process) and lives.
    let b = agent(&rt);
    op(&b, Op::Trap(true)).await;
    op(&b, Op::Link(d.clone())).await;
    assert_eq!(
        next_signal(&b).await,
        Sig::Exit(pid_id(&d), ExitReason::NoSuchProcess)
    );
    assert!(b.is_alive());
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_exit_is_not_a_message() {
    // A trapping process that only uses `recv` does not get Exit events as messages.
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let b = idle(&rt);
    let bb = b.clone();
    let a = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        inbox.trap_exit(true);
        inbox.link(&bb);
        let _ = ready_tx.send(());
        let m = inbox.recv().await;
        let ev = inbox.recv_event_timeout(HANG).await;
        let _ = tx.send((m, ev.map(|e| matches!(e, Event::Exit(_)))));
    });
    within("ready", ready_rx).await.unwrap();
    let mb = rt.monitor(&b);
    b.kill();
    within("b", mb).await;
    a.send(9).unwrap();
    assert_eq!(within("report", rx).await.unwrap(), (Some(9), Ok(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_event_timeout_on_nothing() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = tx.send(
            inbox
                .recv_event_timeout(Duration::from_millis(10))
                .await
                .map(|_| ()),
        );
    });
    assert_eq!(within("report", rx).await.unwrap(), Err(RecvError::Timeout));
}

/// Two runtimes in one OS process: their first processes both have local id 1. Linking them to
/// each other from two threads at once must not deadlock (`link` orders its two locks by local
/// id only, which is not unique across runtimes).
///
/// The processes run on a separate tokio runtime that is leaked if the deadlock happens: shutting
/// it down would block forever on the locks the deadlocked threads hold, hanging the test instead
/// of failing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cross_runtime_links_do_not_deadlock() {
    let side = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt1 = Runtime::new();
    let rt2 = Runtime::new();
    // Each process hands its inbox out and stays alive without it.
    let (tx1, rx1) = std::sync::mpsc::channel();
    let (tx2, rx2) = std::sync::mpsc::channel();
    let (a, b) = {
        let _enter = side.enter();
        let a = rt1.spawn(move |inbox: Inbox<u64>| {
            tx1.send(inbox).unwrap();
            std::future::pending::<()>()
        });
        let b = rt2.spawn(move |inbox: Inbox<u64>| {
            tx2.send(inbox).unwrap();
            std::future::pending::<()>()
        });
        (a, b)
    };
    assert_eq!(pid_id(&a).id, pid_id(&b).id);
    let (ia, ib) = (rx1.recv().unwrap(), rx2.recv().unwrap());
    const ITER: usize = 200_000;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for (inbox, other) in [(ia, b.clone()), (ib, a.clone())] {
        let barrier = barrier.clone();
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..ITER {
                inbox.link(&other);
                inbox.unlink(&other);
            }
            let _ = done_tx.send(());
        });
    }
    for _ in 0..2 {
        // A deadlocked thread never reports.
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            std::mem::forget(side);
            std::mem::forget((a, b, rt1, rt2));
            panic!("link/link of two processes of different runtimes deadlocked");
        }
    }
    rt1.shutdown();
    rt2.shutdown();
    a.kill();
    b.kill();
    side.shutdown_background();
}

// ---------------------------------------------------------------------------------------------
// Exit signals without a link (`Inbox::send_exit`, Erlang's `exit(Pid, Reason)`)
// ---------------------------------------------------------------------------------------------

/// A process that traps exits receives the signal as an event, with the sender's id; one that
/// does not exits with the reason; a normal reason is ignored by a process that does not trap;
/// killed cannot be trapped; a dead pid is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_exit_follows_erlang_exit_2() {
    let rt = Runtime::new();
    let (sender_tx, sender_rx) = oneshot::channel::<Inbox<()>>();
    // The sender: an inbox whose process waits, so that its id is a live pid.
    let _sender = rt.spawn(move |inbox: Inbox<()>| async move {
        let _ = sender_tx.send(inbox);
        std::future::pending::<()>().await
    });
    let sender = within("the sender", sender_rx).await.unwrap();

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let trapper = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        inbox.trap_exit(true);
        let _ = ready_tx.send(());
        while let Some(e) = inbox.recv_event().await {
            let _ = events_tx.send(e);
        }
    });
    let trapper_down = rt.monitor(&trapper);
    within("the trapper traps exits", ready_rx).await.unwrap();
    sender.send_exit(&trapper, ExitReason::Shutdown);
    match within("the trapped signal", events.recv()).await {
        Some(Event::Exit(x)) => {
            assert_eq!(x.pid, sender.process_id());
            assert_eq!(x.reason, ExitReason::Shutdown);
        }
        other => panic!("expected an exit event, got {other:?}"),
    }
    assert!(trapper.is_alive());

    let calm = echo(&rt);
    sender.send_exit(&calm, ExitReason::Normal);
    assert_eq!(
        within("calm answers", calm.call(|r| (7, r), HANG)).await,
        Ok(7)
    );

    let plain = echo(&rt);
    let plain_down = rt.monitor(&plain);
    sender.send_exit(&plain, ExitReason::Shutdown);
    assert_eq!(
        within("plain exits", plain_down).await.reason,
        ExitReason::Shutdown
    );

    sender.send_exit(&trapper, ExitReason::Killed);
    assert_eq!(
        within("trapper killed", trapper_down).await.reason,
        ExitReason::Killed
    );
    // A dead pid: nothing happens.
    sender.send_exit(&trapper, ExitReason::Shutdown);
    assert!(!trapper.is_alive());
}
