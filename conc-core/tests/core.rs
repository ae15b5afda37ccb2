//! conc-core: runtimes, pids, send and receive, selective receive, the registry, bounded
//! mailboxes, shutdown, process URIs and local-only processes.

mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use conc_core::{
    ExitReason, Inbox, Pid, ProcessId, ProcessUri, RecvError, RegisterError, ReplyTo, Runtime,
    SendErrorKind, SpawnOptions, Target, WhereisError,
};
use tokio::sync::{mpsc, oneshot};

// ---------------------------------------------------------------------------------------------
// 1. Runtimes are isolated
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_do_not_see_each_other() {
    let rt1 = Runtime::new();
    let rt2 = Runtime::new();
    assert_ne!(rt1.incarnation(), rt2.incarnation());

    let p1 = idle(&rt1);
    let p2 = idle(&rt2);
    assert_eq!(rt1.process_count(), 1);
    assert_eq!(rt2.process_count(), 1);
    assert_eq!(pid_id(&p1).incarnation, rt1.incarnation());
    assert_eq!(pid_id(&p2).incarnation, rt2.incarnation());
    // Same local id in both runtimes, but different processes.
    assert_eq!(pid_id(&p1).id, pid_id(&p2).id);
    assert_ne!(p1, p2);
    assert_ne!(p1.to_string(), p2.to_string());
    assert_eq!(p1.runtime().unwrap().incarnation(), rt1.incarnation());
    assert_eq!(p2.runtime().unwrap().incarnation(), rt2.incarnation());

    // Names: rt1's names are invisible in rt2 and the same name is free there.
    rt1.register("svc", &p1).unwrap();
    assert!(matches!(
        rt2.whereis::<u64>("svc"),
        Err(WhereisError::NotFound(_))
    ));
    assert!(rt2.registered().is_empty());
    rt2.register("svc", &p2).unwrap();
    assert_eq!(rt1.whereis::<u64>("svc").unwrap(), p1);
    assert_eq!(rt2.whereis::<u64>("svc").unwrap(), p2);
    assert_eq!(rt1.registered(), vec!["svc".to_string()]);
    assert_eq!(rt2.registered(), vec!["svc".to_string()]);
    // A process of another runtime cannot be registered.
    assert!(matches!(
        rt2.register("foreign", &p1),
        Err(RegisterError::NotLocalOrDead(_))
    ));

    // Shutting one down leaves the other alone.
    let d1 = rt1.monitor(&p1);
    rt1.shutdown();
    assert!(rt1.is_shutting_down());
    assert!(!rt2.is_shutting_down());
    assert_eq!(p1.send(1).unwrap_err().kind, SendErrorKind::NoSuchProcess);
    p2.send(1).unwrap();
    let d1 = within("rt1 process exits after shutdown", d1).await;
    assert_eq!(d1.reason, ExitReason::Normal);
    assert!(p2.is_alive());
    assert_eq!(rt2.process_count(), 1);
    assert_eq!(rt1.process_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runtime_is_the_spawning_runtime() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    rt.spawn(move |inbox: Inbox<u64>| async move {
        let _ = tx.send(inbox.runtime().incarnation());
    });
    assert_eq!(within("report", rx).await.unwrap(), rt.incarnation());
}

/// `Inbox::runtime` documents "a process's runtime outlives it". A process whose spawning
/// `Runtime` handle was dropped must still see *that* runtime (its registry, its incarnation),
/// not a brand-new unrelated one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runtime_survives_dropping_the_runtime_handle() {
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let (incarnation, pid) = {
        let rt = Runtime::new();
        let pid = rt.spawn(move |inbox: Inbox<u64>| async move {
            let _ = go_rx.await;
            let _ = tx.send((inbox.runtime().incarnation(), pid_id(&inbox.pid())));
        });
        (rt.incarnation(), pid)
    }; // the only `Runtime` handle is dropped here; the process is still running
    go_tx.send(()).unwrap();
    let (seen, me) = within("report", rx).await.unwrap();
    assert_eq!(me, pid_id(&pid));
    assert_eq!(
        seen, incarnation,
        "Inbox::runtime() returned a different runtime than the one that spawned the process"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. send and recv, ordering
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_recv_one_message() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<String>| async move {
        let _ = tx.send(inbox.recv().await);
    });
    p.send("hello".to_string()).unwrap();
    assert_eq!(within("recv", rx).await.unwrap().as_deref(), Some("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_thousand_messages_arrive_complete_and_in_order() {
    const N: u64 = 100_000;
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let mut next = 0;
        while next < N {
            match inbox.recv().await {
                Some(m) if m == next => next += 1,
                other => {
                    let _ = tx.send(Err(format!("expected {next}, got {other:?}")));
                    return;
                }
            }
        }
        // Nothing extra arrives.
        let _ = tx.send(match inbox.try_recv() {
            None => Ok(next),
            Some(extra) => Err(format!("extra message {extra}")),
        });
    });
    for i in 0..N {
        p.send(i).unwrap();
    }
    assert_eq!(within("receiver done", rx).await.unwrap(), Ok(N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_several_senders_keep_per_sender_order() {
    const SENDERS: u64 = 4;
    const EACH: u64 = 25_000;
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<(u64, u64)>| async move {
        let mut next = vec![0u64; SENDERS as usize];
        for _ in 0..SENDERS * EACH {
            let (s, seq) = inbox.recv().await.unwrap();
            if seq != next[s as usize] {
                let _ = tx.send(Err(format!(
                    "sender {s}: expected {}, got {seq}",
                    next[s as usize]
                )));
                return;
            }
            next[s as usize] += 1;
        }
        let _ = tx.send(Ok(next));
    });
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..EACH {
                p.send((s, seq)).unwrap();
                if seq % 1000 == 0 {
                    tokio::task::yield_now().await; // interleave the senders
                }
            }
        }));
    }
    for t in tasks {
        within("sender", t).await.unwrap();
    }
    assert_eq!(
        within("receiver", rx).await.unwrap(),
        Ok(vec![EACH; SENDERS as usize])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_recv_and_len() {
    let rt = Runtime::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = ready_tx.send((inbox.try_recv(), inbox.len(), inbox.is_empty()));
        let _ = go_rx.await;
        let queued = (inbox.len(), inbox.is_empty());
        let got = (inbox.try_recv(), inbox.try_recv(), inbox.try_recv());
        let _ = tx.send((queued, got, inbox.len()));
    });
    assert_eq!(within("ready", ready_rx).await.unwrap(), (None, 0, true));
    p.send(1).unwrap();
    p.send(2).unwrap();
    go_tx.send(()).unwrap();
    let (queued, got, after) = within("report", rx).await.unwrap();
    assert_eq!(queued, (2, false));
    assert_eq!(got, (Some(1), Some(2), None));
    assert_eq!(after, 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Pid traits
// ---------------------------------------------------------------------------------------------

fn assert_pid_traits<T: Clone + Send + Sync + Debug + Eq + Hash + Display + 'static>() {}
fn assert_send<T: Send + 'static>() {}

#[test]
fn pid_has_the_required_traits() {
    assert_pid_traits::<Pid<u64>>();
    assert_pid_traits::<Pid<String>>();
    // Also for a message type that is Send but not Sync, and one that is not serializable.
    assert_pid_traits::<Pid<std::cell::Cell<u8>>>();
    assert_pid_traits::<Pid<oneshot::Sender<u8>>>();
    assert_send::<Inbox<u64>>();
    assert_send::<ReplyTo<u64>>();
    assert_pid_traits::<ProcessId>();
}

// A pid's hash and equality depend only on its immutable identity; the lock inside it (which
// clippy's `mutable_key_type` sees) is not part of the key.
#[allow(clippy::mutable_key_type)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_equality_hash_and_display() {
    let rt = Runtime::new();
    let a = idle(&rt);
    let b = idle(&rt);
    let a2 = a.clone();
    assert_eq!(a, a2);
    assert_ne!(a, b);
    assert_eq!(pid_id(&a), pid_id(&a2));
    assert_ne!(pid_id(&a), pid_id(&b));
    // A pid obtained another way (the registry) equals the original.
    rt.register("a", &a).unwrap();
    assert_eq!(rt.whereis::<u64>("a").unwrap(), a);

    let mut map = HashMap::new();
    map.insert(a.clone(), "a");
    map.insert(b.clone(), "b");
    map.insert(a2.clone(), "a again");
    assert_eq!(map.len(), 2);
    assert_eq!(map[&a], "a again");
    assert_eq!(map[&b], "b");

    let shown = a.to_string();
    assert!(shown.starts_with("conc://"), "{shown}");
    assert_eq!(shown, a2.to_string());
    assert_ne!(shown, b.to_string());
    assert!(format!("{a:?}").contains(&shown), "{a:?}");
    // Display is the URI and parses back to the same identity.
    let uri: ProcessUri = shown.parse().unwrap();
    assert_eq!(uri, a.uri());
    assert_eq!(uri.target, Target::Id(pid_id(&a)));

    // A pid is usable from another thread.
    let a3 = a.clone();
    std::thread::spawn(move || a3.send(7).unwrap())
        .join()
        .unwrap();

    // Many processes, all distinct.
    let pids: Vec<Pid<u64>> = (0..100).map(|_| idle(&rt)).collect();
    let set: HashSet<_> = pids.iter().cloned().collect();
    assert_eq!(set.len(), 100);
    rt.shutdown();
}

// ---------------------------------------------------------------------------------------------
// 4. send to an exited process
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_an_exited_process_hands_the_message_back() {
    let rt = Runtime::new();
    let p = rt.spawn(|mut inbox: Inbox<String>| async move {
        inbox.recv().await;
    });
    let down = rt.monitor(&p);
    p.send("stop".to_string()).unwrap();
    assert_eq!(within("exit", down).await.reason, ExitReason::Normal);
    assert!(!p.is_alive());

    let err = p.send("lost letter".to_string()).unwrap_err();
    assert_eq!(err.kind, SendErrorKind::NoSuchProcess);
    assert_eq!(err.message, "lost letter");
    assert_eq!(err.into_message(), "lost letter");

    let err = within("send_wait", p.send_wait("again".to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::NoSuchProcess);
    assert_eq!(err.message, "again");
    assert_eq!(rt.process_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. recv_timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_timeout_times_out_then_receives() {
    let rt = Runtime::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = tx.send(inbox.recv_timeout(Duration::from_millis(20)).await);
        let _ = tx.send(inbox.recv_timeout(HANG).await);
        let _ = tx.send(
            inbox
                .recv_event_timeout(Duration::from_millis(20))
                .await
                .map(|_| 0),
        );
    });
    assert_eq!(
        within("first", rx.recv()).await,
        Some(Err(RecvError::Timeout))
    );
    p.send(7).unwrap();
    assert_eq!(within("second", rx.recv()).await, Some(Ok(7)));
    assert_eq!(
        within("third", rx.recv()).await,
        Some(Err(RecvError::Timeout))
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Selective receive
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_matching_takes_matches_in_order_and_keeps_the_rest() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        let mut evens = Vec::new();
        for _ in 0..5 {
            evens.push(inbox.recv_matching(|m| m % 2 == 0).await.unwrap());
        }
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.push(inbox.recv().await.unwrap());
        }
        let _ = tx.send((evens, rest, inbox.try_recv()));
    });
    for i in 1..=10 {
        p.send(i).unwrap();
    }
    go_tx.send(()).unwrap();
    let (evens, rest, extra) = within("report", rx).await.unwrap();
    assert_eq!(evens, vec![2, 4, 6, 8, 10]);
    assert_eq!(rest, vec![1, 3, 5, 7, 9]);
    assert_eq!(extra, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_matching_interleaved_with_arrivals() {
    // Matches and non-matches arrive in several batches while the process is selecting.
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let (step_tx, mut step_rx) = mpsc::unbounded_channel::<()>();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let mut evens = Vec::new();
        for _ in 0..50 {
            evens.push(inbox.recv_matching(|m| m % 2 == 0).await.unwrap());
            let _ = step_tx.send(());
        }
        let mut odds = Vec::new();
        while let Some(m) = inbox.try_recv() {
            odds.push(m);
        }
        let _ = tx.send((evens, odds));
    });
    let (mut odd, mut even) = (1u64, 2u64);
    for _ in 0..50 {
        // Three odd numbers, then one even; the process takes the even and leaves the odds.
        for _ in 0..3 {
            p.send(odd).unwrap();
            odd += 2;
        }
        p.send(even).unwrap();
        even += 2;
        within("step", step_rx.recv()).await.unwrap();
    }
    let (evens, odds) = within("report", rx).await.unwrap();
    assert_eq!(evens.len(), 50);
    assert!(evens.windows(2).all(|w| w[0] < w[1]), "{evens:?}");
    assert!(evens.iter().all(|m| m % 2 == 0));
    assert_eq!(odds.len(), 150);
    assert!(odds.windows(2).all(|w| w[0] < w[1]), "{odds:?}");
    assert!(odds.iter().all(|m| m % 2 == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_matching_waits_for_a_later_message() {
    let rt = Runtime::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        // The matching message is sent only after this point, so the selective receive has to
        // wait for it (passing over the non-matching ones already queued or arriving).
        let _ = ready_tx.send(());
        let hit = inbox.recv_matching(|m| *m == 100).await;
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.push(inbox.recv().await.unwrap());
        }
        let _ = tx.send((hit, rest));
    });
    p.send(1).unwrap();
    p.send(2).unwrap();
    within("ready", ready_rx).await.unwrap();
    p.send(3).unwrap();
    p.send(100).unwrap();
    p.send(4).unwrap();
    p.send(5).unwrap();
    let (hit, rest) = within("report", rx).await.unwrap();
    assert_eq!(hit, Some(100));
    assert_eq!(rest, vec![1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_matching_timeout_times_out_and_leaves_the_queue_intact() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        let miss = inbox
            .recv_matching_timeout(|m| *m > 100, Duration::from_millis(20))
            .await;
        let len = inbox.len();
        let mut rest = Vec::new();
        while let Some(m) = inbox.try_recv() {
            rest.push(m);
        }
        let _ = tx.send((miss, len, rest));
        // A selective receive with a timeout also returns a message that arrives later.
        let hit = inbox.recv_matching_timeout(|m| *m == 9, HANG).await;
        let _ = tx.send((hit, inbox.len(), vec![inbox.try_recv().unwrap_or(0)]));
    });
    for i in 1..=3 {
        p.send(i).unwrap();
    }
    go_tx.send(()).unwrap();
    let (miss, len, rest) = within("first report", rx.recv()).await.unwrap();
    assert_eq!(miss, Err(RecvError::Timeout));
    assert_eq!(len, 3);
    assert_eq!(rest, vec![1, 2, 3]);
    p.send(8).unwrap();
    p.send(9).unwrap();
    let (hit, len, rest) = within("second report", rx.recv()).await.unwrap();
    assert_eq!(hit, Ok(9));
    assert_eq!(len, 1);
    assert_eq!(rest, vec![8]);
}

// ---------------------------------------------------------------------------------------------
// 8. Registry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_whereis() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = tx.send(inbox.recv().await);
    });
    rt.register("svc", &p).unwrap();
    rt.register("alias", &p).unwrap();
    assert_eq!(
        rt.registered(),
        vec!["alias".to_string(), "svc".to_string()]
    );
    let found = rt.whereis::<u64>("svc").unwrap();
    assert_eq!(found, p);
    assert_eq!(rt.whereis::<u64>("alias").unwrap(), p);
    found.send(5).unwrap();
    assert_eq!(within("recv", rx).await.unwrap(), Some(5));
    assert!(matches!(
        rt.whereis::<u64>("nobody"),
        Err(WhereisError::NotFound(n)) if n == "nobody"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_held_by_a_live_process_is_refused() {
    let rt = Runtime::new();
    let a = idle(&rt);
    let b = idle(&rt);
    rt.register("svc", &a).unwrap();
    assert_eq!(
        rt.register("svc", &b),
        Err(RegisterError::Taken("svc".to_string()))
    );
    // Registering the holder again is also refused (the name is taken).
    assert!(matches!(
        rt.register("svc", &a),
        Err(RegisterError::Taken(_))
    ));
    assert_eq!(rt.whereis::<u64>("svc").unwrap(), a);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_freed_when_the_process_exits() {
    let rt = Runtime::new();
    for reason in ["normal", "killed", "panic"] {
        let a = rt.spawn(|mut inbox: Inbox<u64>| async move {
            if inbox.recv().await == Some(1) {
                panic!("told to panic");
            }
        });
        rt.register("svc", &a).unwrap();
        let down = rt.monitor(&a);
        match reason {
            "normal" => a.send(0).unwrap(),
            "killed" => a.kill(),
            _ => a.send(1).unwrap(),
        }
        within("exit", down).await;
        assert!(
            matches!(rt.whereis::<u64>("svc"), Err(WhereisError::NotFound(_))),
            "{reason}"
        );
        assert!(rt.registered().is_empty(), "{reason}");
        let b = idle(&rt);
        rt.register("svc", &b).unwrap();
        assert_eq!(rt.whereis::<u64>("svc").unwrap(), b);
        let down_b = rt.monitor(&b);
        b.kill();
        within("exit b", down_b).await;
        assert!(rt.registered().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_process_cannot_be_registered() {
    let rt = Runtime::new();
    let d = dead(&rt).await;
    assert_eq!(
        rt.register("late", &d),
        Err(RegisterError::NotLocalOrDead("late".to_string()))
    );
    assert!(rt.registered().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whereis_with_the_wrong_type_is_an_error() {
    let rt = Runtime::new();
    let p = idle(&rt);
    rt.register("numbers", &p).unwrap();
    match rt.whereis::<String>("numbers") {
        Err(WhereisError::WrongType {
            name,
            requested,
            actual,
        }) => {
            assert_eq!(name, "numbers");
            assert!(requested.contains("String"), "{requested}");
            assert_eq!(actual, "u64");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    // Also a type that differs only in a parameter.
    assert!(matches!(
        rt.whereis::<u32>("numbers"),
        Err(WhereisError::WrongType { .. })
    ));
    assert!(matches!(
        rt.whereis::<(u64, ReplyTo<u64>)>("numbers"),
        Err(WhereisError::WrongType { .. })
    ));
    assert_eq!(rt.whereis::<u64>("numbers").unwrap(), p);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_removes_the_name() {
    let rt = Runtime::new();
    let a = idle(&rt);
    let b = idle(&rt);
    rt.register("svc", &a).unwrap();
    assert!(rt.unregister("svc"));
    assert!(!rt.unregister("svc"));
    assert!(!rt.unregister("never"));
    assert!(matches!(
        rt.whereis::<u64>("svc"),
        Err(WhereisError::NotFound(_))
    ));
    assert!(rt.registered().is_empty());
    rt.register("svc", &b).unwrap();
    assert_eq!(rt.whereis::<u64>("svc").unwrap(), b);
    // `a` can take another name and, once its old name was given away, keeps working.
    rt.register("other", &a).unwrap();
    // The exit of `a` must not remove `b`'s name `svc` (which `a` once held).
    let down = rt.monitor(&a);
    a.kill();
    within("exit a", down).await;
    assert_eq!(rt.whereis::<u64>("svc").unwrap(), b);
    assert_eq!(rt.registered(), vec!["svc".to_string()]);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused() {
    let rt = Runtime::new();
    let p = idle(&rt);
    let long = "x".repeat(256);
    for bad in ["", "a/b", "/", long.as_str()] {
        assert_eq!(
            rt.register(bad, &p),
            Err(RegisterError::InvalidName(bad.to_string())),
            "{bad:?}"
        );
    }
    assert!(rt.registered().is_empty());
    let max = "y".repeat(255);
    rt.register(&max, &p).unwrap();
    rt.register("with space and ünïcode", &p).unwrap();
    assert_eq!(rt.whereis::<u64>(&max).unwrap(), p);
    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_processes_race_for_one_name_and_exactly_one_wins() {
    const N: usize = 1000;
    let rt = Runtime::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut pids = Vec::new();
    for _ in 0..N {
        let barrier = barrier.clone();
        let tx = tx.clone();
        pids.push(rt.spawn(move |mut inbox: Inbox<u64>| async move {
            barrier.wait().await;
            let me = inbox.pid();
            let res = inbox.runtime().register("leader", &me);
            let _ = tx.send((me, res));
            // Stay alive (holding the name, if won) until told otherwise.
            inbox.recv().await;
        }));
    }
    drop(tx);
    let mut winners = Vec::new();
    for _ in 0..N {
        let (pid, res) = within("report", rx.recv()).await.unwrap();
        match res {
            Ok(()) => winners.push(pid),
            Err(RegisterError::Taken(n)) => assert_eq!(n, "leader"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(rt.whereis::<u64>("leader").unwrap(), winners[0]);
    assert_eq!(rt.registered(), vec!["leader".to_string()]);
    let downs: Vec<_> = pids.iter().map(|p| rt.monitor(p)).collect();
    rt.shutdown();
    for d in downs {
        within("exit", d).await;
    }
    assert_eq!(rt.process_count(), 0);
    assert!(rt.registered().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 12. Bounded mailboxes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_mailbox_refuses_when_full_and_send_wait_waits() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn_with(
        SpawnOptions::bounded(2),
        move |mut inbox: Inbox<String>| async move {
            let _ = go_rx.await;
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(inbox.recv().await.unwrap());
            }
            let _ = tx.send(got);
        },
    );
    p.send("1".into()).unwrap();
    p.send("2".into()).unwrap();
    let err = p.send("3".into()).unwrap_err();
    assert_eq!(err.kind, SendErrorKind::MailboxFull);
    assert_eq!(err.message, "3");

    // send_wait cannot complete before the process takes something out of its mailbox.
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.send_wait("3".to_string()).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "send_wait completed on a full mailbox"
    );
    assert_eq!(
        p.send("x".into()).unwrap_err().kind,
        SendErrorKind::MailboxFull
    );

    go_tx.send(()).unwrap();
    within("send_wait", waiter).await.unwrap().unwrap();
    within("send_wait 4", p.send_wait("4".to_string()))
        .await
        .unwrap();
    assert_eq!(
        within("report", rx).await.unwrap(),
        vec!["1", "2", "3", "4"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_on_a_full_mailbox_fails_when_the_process_exits() {
    let rt = Runtime::new();
    let p = rt.spawn_with(SpawnOptions::bounded(1), |_inbox: Inbox<u64>| {
        std::future::pending::<()>()
    });
    p.send(1).unwrap();
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.send_wait(2).await })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished());
    p.kill();
    let err = within("send_wait after kill", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, SendErrorKind::NoSuchProcess);
    assert_eq!(err.message, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_senders_waiting_on_a_bounded_mailbox_all_get_through() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn_with(
        SpawnOptions::bounded(4),
        move |mut inbox: Inbox<(u64, u64)>| async move {
            let mut next = [0u64; 8];
            for _ in 0..8 * 2000 {
                let (s, i) = inbox.recv().await.unwrap();
                assert_eq!(next[s as usize], i);
                next[s as usize] += 1;
            }
            let _ = tx.send(next);
        },
    );
    let mut tasks = Vec::new();
    for s in 0..8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..2000 {
                p.send_wait((s, i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within("sender", t).await.unwrap();
    }
    assert_eq!(within("receiver", rx).await.unwrap(), [2000; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_mailbox_accepts_one_hundred_thousand_without_receiving() {
    const N: u64 = 100_000;
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        let queued = inbox.len();
        let mut sum = 0;
        for _ in 0..N {
            sum += inbox.recv().await.unwrap();
        }
        let _ = tx.send((queued, sum));
    });
    assert_eq!(SpawnOptions::default().mailbox_capacity, None);
    for i in 0..N {
        p.send(i).unwrap();
    }
    go_tx.send(()).unwrap();
    let (queued, sum) = within("report", rx).await.unwrap();
    assert_eq!(queued, N as usize);
    assert_eq!(sum, N * (N - 1) / 2);
}

// ---------------------------------------------------------------------------------------------
// 13. Shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_ends_receives_and_refuses_sends() {
    let rt = Runtime::new();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (tx, rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = go_rx.await;
        let mut got = Vec::new();
        while let Some(m) = inbox.recv().await {
            got.push(m);
        }
        let after = (inbox.recv_timeout(HANG).await, inbox.try_recv());
        let _ = tx.send((got, after));
    });
    let down = rt.monitor(&p);
    for i in 1..=3 {
        p.send(i).unwrap();
    }
    rt.shutdown();
    assert!(rt.is_shutting_down());
    let err = p.send(4).unwrap_err();
    assert_eq!(err.kind, SendErrorKind::NoSuchProcess);
    assert_eq!(err.message, 4);
    go_tx.send(()).unwrap();
    let (got, after) = within("drain", rx).await.unwrap();
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(after, (Err(RecvError::Closed), None));
    assert_eq!(within("exit", down).await.reason, ExitReason::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wakes_a_waiting_receiver_and_refuses_new_processes() {
    let rt = Runtime::new();
    let (tx, rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let p = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = ready_tx.send(());
        let _ = tx.send(inbox.recv().await);
    });
    within("ready", ready_rx).await.unwrap();
    rt.shutdown();
    assert_eq!(within("recv ends", rx).await.unwrap(), None);
    within("exit", rt.monitor(&p)).await;

    // A process spawned after shutdown receives nothing.
    let (tx, rx) = oneshot::channel();
    let q = rt.spawn(move |mut inbox: Inbox<u64>| async move {
        let _ = tx.send(inbox.recv().await);
    });
    assert_eq!(q.send(1).unwrap_err().kind, SendErrorKind::NoSuchProcess);
    assert_eq!(within("recv after shutdown", rx).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// 15. ProcessUri
// ---------------------------------------------------------------------------------------------

#[test]
fn process_uri_round_trips() {
    let by_id: ProcessUri = "conc://127.0.0.1:9000/42/7".parse().unwrap();
    assert_eq!(by_id.node, "127.0.0.1:9000");
    assert_eq!(
        by_id.target,
        Target::Id(ProcessId {
            incarnation: 42,
            id: 7
        })
    );
    assert_eq!(by_id.to_string(), "conc://127.0.0.1:9000/42/7");

    let by_name: ProcessUri = "conc://example.org:1/name/logger".parse().unwrap();
    assert_eq!(by_name.node, "example.org:1");
    assert_eq!(by_name.target, Target::Name("logger".to_string()));
    assert_eq!(by_name.to_string(), "conc://example.org:1/name/logger");
    assert_eq!(by_name, ProcessUri::named("example.org:1", "logger"));

    let max = ProcessUri {
        node: "[::1]:65535".to_string(),
        target: Target::Id(ProcessId {
            incarnation: u64::MAX,
            id: u64::MAX,
        }),
    };
    assert_eq!(max.to_string().parse::<ProcessUri>().unwrap(), max);

    let named = ProcessUri::named("h:1", "a.b-c_d");
    assert_eq!(named.to_string().parse::<ProcessUri>().unwrap(), named);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pid_uri_round_trips() {
    let rt = Runtime::new();
    let p = idle(&rt);
    let uri = p.uri();
    assert_eq!(uri.target, Target::Id(pid_id(&p)));
    assert_eq!(uri.to_string(), p.to_string());
    assert_eq!(uri.to_string().parse::<ProcessUri>().unwrap(), uri);
    rt.shutdown();
}

#[test]
fn bad_process_uris_are_refused() {
    for bad in [
        "",
        "127.0.0.1:9000/42/7",               // no scheme
        "http://127.0.0.1:9000/42/7",        // wrong scheme
        "conc:/127.0.0.1:9000/42/7",         // malformed scheme
        "conc://",                           // nothing
        "conc://127.0.0.1:9000",             // no path
        "conc://127.0.0.1:9000/",            // empty path
        "conc://127.0.0.1:9000/42",          // missing id
        "conc://127.0.0.1:9000/42/",         // empty id
        "conc:///42/7",                      // empty node
        "conc://h:1/abc/7",                  // non-numeric incarnation
        "conc://h:1/42/x7",                  // non-numeric id
        "conc://h:1/-1/7",                   // negative
        "conc://h:1/42/7/8",                 // extra segment
        "conc://h:1/1.5/7",                  // not an integer
        "conc://h:1/18446744073709551616/1", // overflows u64
        "conc://h:1/name/",                  // empty name
        "conc://h:1/name",                   // missing name
        "conc://h:1/name/a/b",               // name with a slash
    ] {
        assert!(
            bad.parse::<ProcessUri>().is_err(),
            "{bad:?} parsed as {:?}",
            bad.parse::<ProcessUri>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 16. spawn_local
// ---------------------------------------------------------------------------------------------

/// Not serializable: carries a tokio oneshot sender.
struct Local {
    n: u64,
    reply: oneshot::Sender<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_local_with_a_non_serde_message() {
    let rt = Runtime::new();
    let p: Pid<Local> = rt.spawn_local(
        SpawnOptions::default(),
        |mut inbox: Inbox<Local>| async move {
            while let Some(Local { n, reply }) = inbox.recv().await {
                let _ = reply.send(n * 2);
            }
        },
    );
    for n in 0..100 {
        let (tx, rx) = oneshot::channel();
        p.send(Local { n, reply: tx }).unwrap();
        assert_eq!(within("reply", rx).await.unwrap(), n * 2);
    }
    rt.register("local", &p).unwrap();
    let found = rt.whereis::<Local>("local").unwrap();
    assert_eq!(found, p);

    rt.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_local_call() {
    let rt = Runtime::new();
    let p = rt.spawn_local(
        SpawnOptions::default(),
        |mut inbox: Inbox<(oneshot::Sender<()>, ReplyTo<u64>)>| async move {
            while let Some((ping, reply)) = inbox.recv().await {
                let _ = ping.send(());
                let _ = reply.send(42);
            }
        },
    );
    let (ping_tx, ping_rx) = oneshot::channel();
    let answer = within("call", p.call(|r| (ping_tx, r), HANG)).await;
    assert_eq!(answer, Ok(42));
    within("ping", ping_rx).await.unwrap();
    rt.shutdown();
}
