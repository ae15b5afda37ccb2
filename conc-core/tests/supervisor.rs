//! Supervisors: strategies, restart types, intensity, shutdown order and timeouts, names
//! registered again after restarts, nesting, dynamic supervisors and introspection. Time is
//! tokio's paused clock: restart windows, backoffs and shutdown timeouts pass without waiting,
//! and nothing waits for a fixed time.

mod common;

use std::time::Duration;

use common::within;
use conc_core::supervisor::{
    Backoff, ChildError, ChildPid, ChildRequestError, ChildSpec, ChildStatus, DynamicSpec, Restart,
    Shutdown, StartError, Strategy, Supervisor, SupervisorSpec,
};
use conc_core::{Event, ExitReason, Inbox, ProcessId, Runtime, SupervisorExit};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);

/// What a test child is told to do.
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {
    /// Return from its function (reason normal).
    Return,
    /// Panic.
    Panic,
    /// Exit with this reason.
    Exit(ExitReason),
}

/// What test children report.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    /// Child `id` started (as process `pid`).
    Started(String, ProcessId),
    /// Child `id`, trapping exits, received an exit signal with this reason.
    Signalled(String, ExitReason),
}

/// How a test child takes its supervisor's shutdown signal.
#[derive(Clone, Copy, PartialEq)]
enum Trap {
    /// It does not trap exits: the signal ends it.
    No,
    /// It traps, reports the signal and exits with it.
    Cooperate,
    /// It traps, reports the signal and carries on (so it must be killed).
    Ignore,
}

/// A child that reports its start and the exit signals it traps. Its start function returns
/// once the child runs (as Erlang's `start_link` returns after `init`), so children start
/// and stop in a fixed order.
fn child(rt: &Runtime, id: &str, log: &mpsc::UnboundedSender<Ev>, trap: Trap) -> ChildSpec {
    let id = id.to_string();
    let log = log.clone();
    let rt = rt.clone();
    ChildSpec::new(id.clone(), move || {
        spawn_child(&rt, id.clone(), log.clone(), trap)
    })
}

/// Spawns a test child; the future resolves once it runs.
fn spawn_child(
    rt: &Runtime,
    id: String,
    log: mpsc::UnboundedSender<Ev>,
    trap: Trap,
) -> impl std::future::Future<Output = Result<ChildPid, StartError>> + Send + use<> {
    let (ready, running) = tokio::sync::oneshot::channel();
    let pid = rt.spawn(move |mut inbox: Inbox<Cmd>| async move {
        inbox.trap_exit(trap != Trap::No);
        let _ = log.send(Ev::Started(id.clone(), inbox.process_id()));
        let _ = ready.send(());
        while let Some(ev) = inbox.recv_event().await {
            match ev {
                Event::Message(Cmd::Return) => return,
                Event::Message(Cmd::Panic) => panic!("child {id} panics"),
                Event::Message(Cmd::Exit(reason)) => {
                    inbox.exit(reason);
                    std::future::pending::<()>().await;
                }
                Event::Exit(e) => {
                    let _ = log.send(Ev::Signalled(id.clone(), e.reason.clone()));
                    if trap == Trap::Cooperate {
                        inbox.exit(e.reason);
                        std::future::pending::<()>().await;
                    }
                }
                Event::Down(_) => {}
            }
        }
    });
    async move {
        let _ = running.await;
        Ok(ChildPid::from(pid))
    }
}

async fn next(log: &mut mpsc::UnboundedReceiver<Ev>) -> Ev {
    within("next child event", log.recv()).await.unwrap()
}

async fn started(log: &mut mpsc::UnboundedReceiver<Ev>) -> (String, ProcessId) {
    match next(log).await {
        Ev::Started(id, pid) => (id, pid),
        other => panic!("expected a start, got {other:?}"),
    }
}

/// The ids of the next `n` starts, with their pids.
async fn starts(log: &mut mpsc::UnboundedReceiver<Ev>, n: usize) -> Vec<(String, ProcessId)> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(started(log).await);
    }
    v
}

fn ids(v: &[(String, ProcessId)]) -> Vec<&str> {
    v.iter().map(|(id, _)| id.as_str()).collect()
}

/// Sends `cmd` to the running child `id` of `sup` (registered as `t.<id>`).
async fn tell(sup: &Supervisor, id: &str, cmd: Cmd) {
    let children = sup.which_children(T).await.unwrap();
    let c = children.iter().find(|c| c.id == id).unwrap();
    let pid = c
        .process
        .unwrap_or_else(|| panic!("child {id} is not running"));
    let rt = sup.pid().runtime().unwrap();
    let child = rt.whereis::<Cmd>(&format!("t.{id}")).unwrap();
    assert_eq!(child.id(), Some(pid));
    child.send(cmd).unwrap();
}

/// A named child (registered as `t.<id>`) so tests can reach it.
fn named(rt: &Runtime, id: &str, log: &mpsc::UnboundedSender<Ev>, trap: Trap) -> ChildSpec {
    child(rt, id, log, trap).name(format!("t.{id}"))
}

async fn restarts_of(sup: &Supervisor, id: &str) -> u64 {
    sup.which_children(T)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.restarts)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Strategies

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_child_that_exited() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "a", &tx, Trap::No))
        .child(named(&rt, "b", &tx, Trap::No))
        .child(named(&rt, "c", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap();
    let first = starts(&mut log, 3).await;
    assert_eq!(ids(&first), ["a", "b", "c"], "started in order");

    tell(&sup, "b", Cmd::Panic).await;
    let (id, b2) = started(&mut log).await;
    assert_eq!(id, "b");
    assert_ne!(b2, first[1].1);
    let children = sup.which_children(T).await.unwrap();
    assert_eq!(children[0].process, Some(first[0].1), "a untouched");
    assert_eq!(children[1].process, Some(b2));
    assert_eq!(children[2].process, Some(first[2].1), "c untouched");
    assert_eq!(
        children.iter().map(|c| c.restarts).collect::<Vec<_>>(),
        [0, 1, 0]
    );
    assert!(log.try_recv().is_err(), "nothing else restarted");
}

#[tokio::test(start_paused = true)]
async fn one_for_all_stops_the_others_in_reverse_order_and_restarts_all_in_order() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForAll)
        .child(named(&rt, "a", &tx, Trap::Cooperate))
        .child(named(&rt, "b", &tx, Trap::Cooperate))
        .child(named(&rt, "c", &tx, Trap::Cooperate))
        .child(named(&rt, "d", &tx, Trap::Cooperate))
        .start(&rt)
        .await
        .unwrap();
    let first = starts(&mut log, 4).await;

    tell(&sup, "b", Cmd::Exit(ExitReason::Other("boom".into()))).await;
    // d, c, a are stopped with the shutdown signal, in reverse order; then all start again.
    for id in ["d", "c", "a"] {
        assert_eq!(
            next(&mut log).await,
            Ev::Signalled(id.into(), ExitReason::Shutdown)
        );
    }
    let second = starts(&mut log, 4).await;
    assert_eq!(ids(&second), ["a", "b", "c", "d"]);
    for (a, b) in first.iter().zip(&second) {
        assert_ne!(a.1, b.1);
    }
    let children = sup.which_children(T).await.unwrap();
    assert!(children.iter().all(|c| c.restarts == 1));
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_child_and_those_started_after_it() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::RestForOne)
        .child(named(&rt, "a", &tx, Trap::Cooperate))
        .child(named(&rt, "b", &tx, Trap::Cooperate))
        .child(named(&rt, "c", &tx, Trap::Cooperate))
        .child(named(&rt, "d", &tx, Trap::Cooperate))
        .start(&rt)
        .await
        .unwrap();
    let first = starts(&mut log, 4).await;

    tell(&sup, "b", Cmd::Panic).await;
    for id in ["d", "c"] {
        assert_eq!(
            next(&mut log).await,
            Ev::Signalled(id.into(), ExitReason::Shutdown)
        );
    }
    let second = starts(&mut log, 3).await;
    assert_eq!(ids(&second), ["b", "c", "d"]);
    let children = sup.which_children(T).await.unwrap();
    assert_eq!(children[0].process, Some(first[0].1), "a untouched");
    assert_eq!(
        children.iter().map(|c| c.restarts).collect::<Vec<_>>(),
        [0, 1, 1, 1]
    );
}

// ---------------------------------------------------------------------------------------------
// Restart types

#[tokio::test(start_paused = true)]
async fn restart_types_decide_which_exits_restart() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(5))
        .child(named(&rt, "perm", &tx, Trap::No))
        .child(named(&rt, "trans", &tx, Trap::No).restart(Restart::Transient))
        .child(named(&rt, "temp", &tx, Trap::No).restart(Restart::Temporary))
        .start(&rt)
        .await
        .unwrap();
    starts(&mut log, 3).await;

    // Permanent: restarted even after a normal exit.
    tell(&sup, "perm", Cmd::Return).await;
    assert_eq!(started(&mut log).await.0, "perm");

    // Transient: restarted after an abnormal exit...
    tell(&sup, "trans", Cmd::Panic).await;
    assert_eq!(started(&mut log).await.0, "trans");
    // ...not after a shutdown or a normal exit: it stays, stopped.
    tell(&sup, "trans", Cmd::Exit(ExitReason::Shutdown)).await;
    let trans = wait_status(&sup, "trans", ChildStatus::Stopped).await;
    assert_eq!(trans.process, None);
    assert_eq!(trans.restarts, 1);
    // It can be started again by hand, then exits normally: still not restarted.
    let pid = sup.restart_child("trans", T).await.unwrap();
    assert_eq!(started(&mut log).await, ("trans".to_string(), pid));
    tell(&sup, "trans", Cmd::Return).await;
    wait_status(&sup, "trans", ChildStatus::Stopped).await;

    // Temporary: never restarted, and removed.
    tell(&sup, "temp", Cmd::Panic).await;
    loop {
        let children = sup.which_children(T).await.unwrap();
        if children.iter().all(|c| c.id != "temp") {
            assert_eq!(children.len(), 2);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(log.try_recv().is_err(), "no restart of trans or temp");
    let counts = sup.count_children(T).await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (2, 1, 1));
}

async fn wait_status(
    sup: &Supervisor,
    id: &str,
    status: ChildStatus,
) -> conc_core::supervisor::ChildInfo {
    within("child status", async {
        loop {
            let c = sup
                .which_children(T)
                .await
                .unwrap()
                .into_iter()
                .find(|c| c.id == id)
                .unwrap();
            if c.status == status {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Intensity

#[tokio::test(start_paused = true)]
async fn exceeding_the_restart_intensity_stops_the_supervisor_naming_the_child() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    // Erlang's default: at most 1 restart in 5 seconds.
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "steady", &tx, Trap::Cooperate))
        .child(named(&rt, "flaky", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap();
    let down = rt.monitor(sup.pid());
    starts(&mut log, 2).await;

    // One restart, then the window passes: the next crash is allowed too.
    tell(&sup, "flaky", Cmd::Panic).await;
    assert_eq!(started(&mut log).await.0, "flaky");
    tokio::time::sleep(Duration::from_secs(6)).await;
    tell(&sup, "flaky", Cmd::Panic).await;
    assert_eq!(started(&mut log).await.0, "flaky");
    assert_eq!(restarts_of(&sup, "flaky").await, 2);

    // A second crash within 5 seconds of the last restart is one too many.
    tell(&sup, "flaky", Cmd::Panic).await;
    // The other children are stopped before the supervisor exits.
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("steady".into(), ExitReason::Shutdown)
    );
    let down = within("supervisor exit", down).await;
    assert_eq!(
        down.reason,
        ExitReason::Supervisor(SupervisorExit::ReachedMaxRestartIntensity {
            child: "flaky".into()
        })
    );
    assert!(down.reason.is_shutdown());
    assert!(rt.whereis::<Cmd>("t.steady").is_err());
}

#[tokio::test(start_paused = true)]
async fn zero_intensity_gives_up_on_the_first_exit() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForAll)
        .intensity(0, Duration::from_secs(1))
        .child(named(&rt, "only", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap();
    let down = rt.monitor(sup.pid());
    starts(&mut log, 1).await;
    tell(&sup, "only", Cmd::Return).await;
    assert_eq!(
        within("supervisor exit", down).await.reason,
        ExitReason::Supervisor(SupervisorExit::ReachedMaxRestartIntensity {
            child: "only".into()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Backoff

#[tokio::test(start_paused = true)]
async fn backoff_delays_restarts_exponentially() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(3),
    };
    assert_eq!(backoff.delay(1), Duration::from_secs(1));
    assert_eq!(backoff.delay(2), Duration::from_secs(2));
    assert_eq!(backoff.delay(3), Duration::from_secs(3));
    assert_eq!(backoff.delay(40), Duration::from_secs(3));
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(backoff)
        .child(named(&rt, "w", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap();
    starts(&mut log, 1).await;

    for expected in [1, 2, 3] {
        let crashed = tokio::time::Instant::now();
        tell(&sup, "w", Cmd::Panic).await;
        // The supervisor has seen the exit and waits: the child is not running meanwhile.
        wait_status(&sup, "w", ChildStatus::Restarting).await;
        assert_eq!(started(&mut log).await.0, "w");
        assert!(
            crashed.elapsed() >= Duration::from_secs(expected),
            "restart {expected} came after {:?} of paused time",
            crashed.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Start and shutdown

#[tokio::test(start_paused = true)]
async fn children_stop_in_reverse_order_on_stop() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "a", &tx, Trap::Cooperate))
        .child(named(&rt, "b", &tx, Trap::Cooperate))
        .child(named(&rt, "c", &tx, Trap::Cooperate))
        .start(&rt)
        .await
        .unwrap();
    assert_eq!(ids(&starts(&mut log, 3).await), ["a", "b", "c"]);
    let reason = sup.stop(T).await.unwrap();
    assert_eq!(reason, ExitReason::Shutdown);
    for id in ["c", "b", "a"] {
        assert_eq!(
            next(&mut log).await,
            Ev::Signalled(id.into(), ExitReason::Shutdown)
        );
    }
    for id in ["a", "b", "c"] {
        assert!(rt.whereis::<Cmd>(&format!("t.{id}")).is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_policies_timeout_kill_and_brutal_kill() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(
            named(&rt, "stubborn", &tx, Trap::Ignore)
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        )
        .child(named(&rt, "polite", &tx, Trap::Cooperate))
        .child(named(&rt, "brutal", &tx, Trap::Cooperate).shutdown(Shutdown::BrutalKill))
        .start(&rt)
        .await
        .unwrap();
    let pids = starts(&mut log, 3).await;
    let watch = |i: usize| {
        let pid = rt.whereis::<Cmd>(&format!("t.{}", pids[i].0)).unwrap();
        rt.monitor(&pid)
    };
    let (stubborn, polite, brutal) = (watch(0), watch(1), watch(2));

    let stopped_at = tokio::time::Instant::now();
    sup.stop(Duration::from_secs(60)).await.unwrap();
    // Brutal kill: the child is not asked, it cannot trap the kill.
    assert_eq!(within("brutal", brutal).await.reason, ExitReason::Killed);
    // The polite child got the shutdown signal and exited with it.
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("polite".into(), ExitReason::Shutdown)
    );
    assert_eq!(within("polite", polite).await.reason, ExitReason::Shutdown);
    // The stubborn child got it too, ignored it, and was killed when its timeout ran out.
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("stubborn".into(), ExitReason::Shutdown)
    );
    assert_eq!(
        within("stubborn", stubborn).await.reason,
        ExitReason::Killed
    );
    assert!(stopped_at.elapsed() >= Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_child_that_fails_to_start_stops_the_others_and_the_supervisor() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let failing = ChildSpec::new("broken", || async {
        Err(StartError::Exited(ExitReason::Other("no config".into())))
    });
    let result = SupervisorSpec::new(Strategy::OneForOne)
        .name("fails")
        .child(named(&rt, "a", &tx, Trap::Cooperate))
        .child(named(&rt, "b", &tx, Trap::Cooperate))
        .child(failing)
        .child(named(&rt, "never", &tx, Trap::Cooperate))
        .start(&rt)
        .await;
    match result {
        Err(StartError::Child { child, reason }) => {
            assert_eq!(child, "broken");
            assert!(matches!(*reason, StartError::Exited(ExitReason::Other(_))));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ids(&starts(&mut log, 2).await), ["a", "b"]);
    for id in ["b", "a"] {
        assert_eq!(
            next(&mut log).await,
            Ev::Signalled(id.into(), ExitReason::Shutdown)
        );
    }
    assert!(
        rt.whereis::<conc_core::supervisor::SupervisorRequest>("fails")
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Names

#[tokio::test(start_paused = true)]
async fn a_named_child_is_registered_again_after_its_restart() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "svc", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap();
    let (_, first) = started(&mut log).await;
    let before = rt.whereis::<Cmd>("t.svc").unwrap();
    assert_eq!(before.id(), Some(first));
    before.kill();
    let (_, second) = started(&mut log).await;
    // The name now names the new process, which messages by name reach.
    within("name registered again", async {
        loop {
            if let Ok(p) = rt.whereis::<Cmd>("t.svc")
                && p.id() == Some(second)
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let info = &sup.which_children(T).await.unwrap()[0];
    assert_eq!(info.name.as_deref(), Some("t.svc"));
    assert_eq!(info.process, Some(second));
    assert_eq!(info.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_taken_name_fails_the_start() {
    let rt = Runtime::new();
    let (tx, _log) = mpsc::unbounded_channel();
    let squatter = common::idle(&rt);
    rt.register("t.x", &squatter).unwrap();
    let err = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "x", &tx, Trap::No))
        .start(&rt)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Child { reason, .. } if matches!(**reason, StartError::Register(_))),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Nesting and introspection

#[tokio::test(start_paused = true)]
async fn nested_supervisors_stop_bottom_up_and_escalate() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let inner = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(0, Duration::from_secs(5))
        .child(named(&rt, "leaf1", &tx, Trap::Cooperate))
        .child(named(&rt, "leaf2", &tx, Trap::Cooperate));
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .name("root")
        .intensity(5, Duration::from_secs(5))
        .child(named(&rt, "first", &tx, Trap::Cooperate))
        .child(inner.into_child("inner", &rt))
        .child(named(&rt, "last", &tx, Trap::Cooperate))
        .start(&rt)
        .await
        .unwrap();
    assert_eq!(
        ids(&starts(&mut log, 4).await),
        ["first", "leaf1", "leaf2", "last"]
    );

    // The tree, with the inner supervisor's children under it.
    let tree = root.tree(T).await.unwrap();
    assert_eq!(tree.supervisor.name.as_deref(), Some("root"));
    let kids: Vec<&str> = tree
        .supervisor
        .children
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(kids, ["first", "inner", "last"]);
    let inner_tree = tree.subtrees[1].as_ref().unwrap();
    assert_eq!(inner_tree.supervisor.children.len(), 2);
    assert!(tree.subtrees[0].is_none() && tree.subtrees[2].is_none());
    assert_eq!(tree.supervisor.children[1].shutdown, Shutdown::Infinity);
    let lines = tree.lines();
    assert!(lines[0].starts_with("root "), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("    leaf2 Running")),
        "{lines:?}"
    );
    let counts = root.count_children(T).await.unwrap();
    assert_eq!((counts.supervisors, counts.workers), (1, 2));
    let registered = conc_core::supervisor::registered_trees(&rt, T).await;
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0], tree);

    // A leaf crashes: the inner supervisor (intensity 0) gives up, stopping leaf2 ...
    let inner_sup = tree.supervisor.children[1].supervisor.clone().unwrap();
    tell(&Supervisor::from_pid(inner_sup), "leaf1", Cmd::Panic).await;
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("leaf2".into(), ExitReason::Shutdown)
    );
    // ... and the root restarts it, which starts its leaves again.
    assert_eq!(ids(&starts(&mut log, 2).await), ["leaf1", "leaf2"]);
    assert_eq!(restarts_of(&root, "inner").await, 1);

    // Stopping the root stops "last", then the inner supervisor's leaves (bottom-up), then
    // "first".
    root.stop(T).await.unwrap();
    let order: Vec<Ev> = [
        next(&mut log).await,
        next(&mut log).await,
        next(&mut log).await,
        next(&mut log).await,
    ]
    .into();
    assert_eq!(
        order,
        ["last", "leaf2", "leaf1", "first"]
            .map(|id| Ev::Signalled(id.into(), ExitReason::Shutdown))
    );
}

#[tokio::test(start_paused = true)]
async fn terminate_restart_delete_and_start_child() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .child(named(&rt, "a", &tx, Trap::Cooperate))
        .start(&rt)
        .await
        .unwrap();
    starts(&mut log, 1).await;

    let added = sup
        .start_child(named(&rt, "b", &tx, Trap::No))
        .await
        .unwrap();
    assert_eq!(
        started(&mut log).await,
        ("b".to_string(), added.id().unwrap())
    );
    assert!(matches!(
        sup.start_child(named(&rt, "b", &tx, Trap::No)).await,
        Err(StartError::DuplicateId(id)) if id == "b"
    ));

    sup.terminate_child("a", T).await.unwrap();
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("a".into(), ExitReason::Shutdown)
    );
    let a = wait_status(&sup, "a", ChildStatus::Stopped).await;
    assert_eq!(a.restarts, 0, "a terminated child is not restarted");
    assert!(matches!(
        sup.delete_child("b", T).await,
        Err(ChildRequestError::Child(ChildError::Running))
    ));
    assert!(matches!(
        sup.terminate_child("nope", T).await,
        Err(ChildRequestError::Child(ChildError::NotFound))
    ));
    sup.delete_child("a", T).await.unwrap();
    let children = sup.which_children(T).await.unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].id, "b");
}

// ---------------------------------------------------------------------------------------------
// Dynamic supervisors

#[tokio::test(start_paused = true)]
async fn dynamic_children_start_with_an_argument_up_to_a_maximum() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel::<(String, ProcessId)>();
    let rt2 = rt.clone();
    let spec = DynamicSpec::new(move |session: String| {
        let tx = tx.clone();
        let pid = rt2.spawn(move |mut inbox: Inbox<Cmd>| async move {
            let _ = tx.send((session, inbox.process_id()));
            while let Some(cmd) = inbox.recv().await {
                if let Cmd::Panic = cmd {
                    panic!("session crashed");
                }
            }
        });
        async move { Ok(pid.into()) }
    })
    .max_children(2)
    .intensity(5, Duration::from_secs(5))
    .name("sessions");
    let sessions = spec.start(&rt).await.unwrap();

    let alice = sessions.start_child("alice".to_string()).await.unwrap();
    let bob = sessions.start_child("bob".to_string()).await.unwrap();
    assert_eq!(
        within("starts", log.recv()).await.unwrap(),
        ("alice".to_string(), alice.id().unwrap())
    );
    assert_eq!(within("starts", log.recv()).await.unwrap().0, "bob");
    assert!(matches!(
        sessions.start_child("carol".to_string()).await,
        Err(StartError::MaxChildren(2))
    ));

    // A crashed session is restarted with its argument.
    alice.downcast::<Cmd>().unwrap().send(Cmd::Panic).unwrap();
    let (who, new_alice) = within("restart", log.recv()).await.unwrap();
    assert_eq!(who, "alice");
    assert_ne!(Some(new_alice), alice.id());

    // terminate_child by pid removes it, making room.
    sessions
        .terminate_child(bob.id().unwrap(), T)
        .await
        .unwrap();
    assert!(matches!(
        sessions.terminate_child(bob.id().unwrap(), T).await,
        Err(ChildRequestError::Child(ChildError::NotFound))
    ));
    let carol = sessions.start_child("carol".to_string()).await.unwrap();
    let info = sessions.supervisor().describe(T).await.unwrap();
    assert!(info.dynamic);
    assert_eq!(info.name.as_deref(), Some("sessions"));
    let running: Vec<Option<ProcessId>> = info.children.iter().map(|c| c.process).collect();
    assert_eq!(running, [Some(new_alice), carol.id()]);
    assert_eq!(info.children[0].restarts, 1);
    assert_eq!(info.restarts, 1);
}

#[tokio::test(start_paused = true)]
async fn temporary_dynamic_children_are_removed_when_they_exit() {
    let rt = Runtime::new();
    let rt2 = rt.clone();
    let sessions = DynamicSpec::new(move |n: u32| {
        let pid = rt2.spawn(move |mut inbox: Inbox<Cmd>| async move {
            let _ = n;
            let _ = inbox.recv().await;
        });
        async move { Ok(pid.into()) }
    })
    .restart(Restart::Temporary)
    .start(&rt)
    .await
    .unwrap();
    let c = sessions.start_child(1).await.unwrap();
    let down = rt.monitor(&c.downcast::<Cmd>().unwrap());
    c.downcast::<Cmd>().unwrap().send(Cmd::Return).unwrap();
    within("child exit", down).await;
    within("removed", async {
        while sessions.supervisor().count_children(T).await.unwrap().specs != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // A static supervisor takes no arguments.
    let plain = SupervisorSpec::new(Strategy::OneForOne)
        .start(&rt)
        .await
        .unwrap();
    let as_dynamic = conc_core::supervisor::DynamicSupervisor::<u32>::clone(&sessions);
    drop(as_dynamic);
    assert!(matches!(
        plain
            .start_child(ChildSpec::new("x", || async {
                Err(StartError::NoProcessId)
            }))
            .await,
        Err(StartError::NoProcessId)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_supervisor_goes_down_with_its_parent_link() {
    // A supervisor started by a supervisor stops when its parent is killed (the link), and its
    // children with it.
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .child(
            SupervisorSpec::new(Strategy::OneForOne)
                .name("mid")
                .child(named(&rt, "leaf", &tx, Trap::Cooperate))
                .into_child("mid", &rt),
        )
        .start(&rt)
        .await
        .unwrap();
    starts(&mut log, 1).await;
    let mid = rt
        .whereis::<conc_core::supervisor::SupervisorRequest>("mid")
        .unwrap();
    let mid_down = rt.monitor(&mid);
    root.pid().kill();
    // The mid supervisor sees its parent's exit, stops its leaf, and exits with the reason.
    assert_eq!(
        next(&mut log).await,
        Ev::Signalled("leaf".into(), ExitReason::Shutdown)
    );
    assert_eq!(
        within("mid exit", mid_down).await.reason,
        ExitReason::Killed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_killed_at_once_on_several_threads_are_all_restarted() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let mut spec = SupervisorSpec::new(Strategy::OneForOne).intensity(100, Duration::from_secs(60));
    for i in 0..20 {
        spec = spec.child(named(&rt, &format!("c{i}"), &tx, Trap::No));
    }
    let sup = spec.start(&rt).await.unwrap();
    let first = starts(&mut log, 20).await;
    // Every child is killed from another task at the same time.
    let killers: Vec<_> = (0..20)
        .map(|i| {
            let pid = rt.whereis::<Cmd>(&format!("t.c{i}")).unwrap();
            tokio::spawn(async move { pid.kill() })
        })
        .collect();
    for k in killers {
        k.await.unwrap();
    }
    let mut again = starts(&mut log, 20).await;
    again.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    expected.sort();
    assert_eq!(
        again.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    let children = sup.which_children(T).await.unwrap();
    for (c, (_, old)) in children.iter().zip(&first) {
        assert_eq!(c.restarts, 1, "{c:?}");
        assert_ne!(c.process, Some(*old));
    }
    assert_eq!(sup.count_children(T).await.unwrap().active, 20);
    sup.stop(T).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_tree_with_a_cycle_is_walked_once() {
    // A start function may return any pid, even the supervisor's own parent: the tree walk
    // stops at a supervisor already on its path.
    let rt = Runtime::new();
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .name("cyclic")
        .intensity(0, Duration::from_secs(5))
        .start(&rt)
        .await
        .unwrap();
    let me = root.clone();
    root.start_child(ChildSpec::new("itself", move || {
        let me = me.clone();
        async move { Ok(ChildPid::from(me)) }
    }))
    .await
    .unwrap();
    let tree = root.tree(T).await.unwrap();
    assert_eq!(tree.supervisor.children.len(), 1);
    assert!(tree.supervisor.children[0].supervisor.is_some());
    assert_eq!(tree.subtrees, [None]);
    assert_eq!(
        conc_core::supervisor::registered_trees(&rt, T).await.len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_dynamic_supervisor_stops_its_children_at_once_with_one_timeout() {
    let rt = Runtime::new();
    let (tx, mut log) = mpsc::unbounded_channel();
    let rt2 = rt.clone();
    let tx2 = tx.clone();
    let sessions = DynamicSpec::new(move |(id, trap): (String, bool)| {
        spawn_child(
            &rt2,
            id,
            tx2.clone(),
            if trap { Trap::Ignore } else { Trap::Cooperate },
        )
    })
    .shutdown(Shutdown::Timeout(Duration::from_secs(2)))
    .start(&rt)
    .await
    .unwrap();
    let mut downs = Vec::new();
    for (id, stubborn) in [("s1", true), ("s2", false), ("s3", true), ("s4", true)] {
        let c = sessions
            .start_child((id.to_string(), stubborn))
            .await
            .unwrap();
        downs.push((stubborn, rt.monitor(&c.downcast::<Cmd>().unwrap())));
    }
    starts(&mut log, 4).await;
    let begun = tokio::time::Instant::now();
    sessions
        .supervisor()
        .stop(Duration::from_secs(60))
        .await
        .unwrap();
    // One timeout for all of them: three stubborn children would take 6 s one after another.
    assert!(
        begun.elapsed() < Duration::from_secs(4),
        "{:?}",
        begun.elapsed()
    );
    for (stubborn, down) in downs {
        let reason = within("child exit", down).await.reason;
        let expected = if stubborn {
            ExitReason::Killed
        } else {
            ExitReason::Shutdown
        };
        assert_eq!(reason, expected);
    }
    let mut signalled = 0;
    while let Ok(ev) = log.try_recv() {
        assert!(
            matches!(ev, Ev::Signalled(_, ExitReason::Shutdown)),
            "{ev:?}"
        );
        signalled += 1;
    }
    assert_eq!(signalled, 4, "every child got the shutdown signal");
    drop(tx);
}
