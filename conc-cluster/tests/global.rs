//! Cluster-wide names across nodes of one test process on loopback (pooled TCP): one
//! registration for the whole cluster, found from every node, released when the owner exits,
//! is unregistered or its node shuts down, and conflicts found when two nodes that registered
//! the same name apart meet, resolved by the documented rule (the lowest stamp wins, the
//! loser is killed).

use std::time::Duration;

use conc_cluster::global::{
    Global, GlobalEvent, GlobalEvents, RegisterNameError, ReleaseReason, WhereisNameError,
};
use conc_node::{Cookie, ExitReason, Inbox, Node, Pid};

/// Generous bound on every awaited event: a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

async fn node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("global-tests").unwrap())
        .start()
        .await
        .unwrap()
}

fn room(node: &Node) -> Pid<String> {
    node.spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} })
}

/// Waits, event by event, until `cond` holds.
async fn until(events: &mut GlobalEvents, what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !cond() {
            events.recv().await.expect("scope gone");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

async fn mesh(n: usize) -> Vec<(Node, Global)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let node = node().await;
        let g = Global::start(&node).unwrap();
        out.push((node, g));
    }
    for i in 0..n {
        for j in 0..i {
            out[i].1.contact(out[j].0.name()).unwrap();
        }
    }
    for (_, g) in &out {
        let mut ev = g.events();
        until(&mut ev, "every scope known", || {
            g.peer_scopes().len() == n - 1
        })
        .await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_for_the_whole_cluster() {
    let nodes = mesh(3).await;
    let (a, ga) = &nodes[0];
    let r = room(a);
    ga.register_name("room", &r).unwrap();
    for (_, g) in &nodes {
        let mut ev = g.events();
        until(&mut ev, "room known", || {
            g.whereis_name::<String>("room").is_ok()
        })
        .await;
        assert_eq!(g.whereis_name::<String>("room").unwrap(), r);
        assert_eq!(
            g.whereis_name::<u64>("room").unwrap_err(),
            WhereisNameError::WrongType("room".into())
        );
        assert_eq!(g.registered_names(), vec!["room".to_string()]);
    }
    // Taken for every node now.
    let (b, gb) = &nodes[1];
    let other = room(b);
    assert_eq!(
        gb.register_name("room", &other).unwrap_err(),
        RegisterNameError::Taken("room".into())
    );
    // A remote pid cannot be registered through this node's scope.
    let remote = gb.whereis_name::<String>("room").unwrap();
    assert_eq!(
        gb.register_name("x", &remote).unwrap_err(),
        RegisterNameError::NotLocal
    );
    // Only the owner's node unregisters; then it is free everywhere, and can be taken again.
    assert!(!gb.unregister_name("room"));
    assert!(ga.unregister_name("room"));
    for (_, g) in &nodes {
        let mut ev = g.events();
        until(&mut ev, "room released", || {
            g.whereis_name::<String>("room").is_err()
        })
        .await;
    }
    gb.register_name("room", &other).unwrap();
    let (_, gc) = &nodes[2];
    let mut ev = gc.events();
    until(&mut ev, "room is b's", || {
        gc.whereis_name::<String>("room").ok() == Some(other.clone())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_when_the_owner_exits_or_its_node_shuts_down() {
    let nodes = mesh(2).await;
    let (a, ga) = &nodes[0];
    let (b, gb) = &nodes[1];
    let r1 = room(a);
    ga.register_name("one", &r1).unwrap();
    ga.register_name("two", &r1).unwrap();
    let r2 = room(b);
    gb.register_name("three", &r2).unwrap();
    let mut ev = ga.events();
    until(&mut ev, "3 names on a", || ga.registered_names().len() == 3).await;
    let mut ev_b = gb.events();
    until(&mut ev_b, "3 names on b", || {
        gb.registered_names().len() == 3
    })
    .await;
    // The owner exits: both its names go, on both nodes, with the reason.
    let mut seen = gb.events();
    r1.kill();
    until(&mut ev_b, "a's names gone from b", || {
        gb.registered_names() == vec!["three"]
    })
    .await;
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        if let Some(GlobalEvent::Unregistered { reason, .. }) =
            tokio::time::timeout(DEADLINE, seen.recv()).await.unwrap()
        {
            reasons.push(reason);
        }
    }
    assert_eq!(reasons, vec![ReleaseReason::OwnerExited; 2]);
    until(&mut ev, "a's names gone from a", || {
        ga.registered_names() == vec!["three"]
    })
    .await;
    // b shuts down: its name goes from a.
    b.shutdown().await;
    until(&mut ev, "b's name gone from a", || {
        ga.registered_names().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_found_when_partitions_heal_kills_the_later_registration() {
    // Two nodes that do not know each other register the same name.
    let a = node().await;
    let b = node().await;
    let ga = Global::start(&a).unwrap();
    let gb = Global::start(&b).unwrap();
    let ra = room(&a);
    let rb = room(&b);
    ga.register_name("room", &ra).unwrap();
    gb.register_name("room", &rb).unwrap();
    let reg_a = ga.registration("room").unwrap();
    let reg_b = gb.registration("room").unwrap();
    // The documented rule: the lowest stamp wins.
    let (winner, winner_pid, loser_pid, loser_node) = if reg_a.stamp < reg_b.stamp {
        (reg_a.clone(), ra.clone(), rb.clone(), b.clone())
    } else {
        (reg_b.clone(), rb.clone(), ra.clone(), a.clone())
    };
    let loser_down = loser_node.runtime().monitor(&loser_pid);
    let mut ev_a = ga.events();
    let mut ev_b = gb.events();
    // The partition heals.
    ga.contact(b.name()).unwrap();
    // The loser is told: killed by its own node.
    let down = tokio::time::timeout(DEADLINE, loser_down).await.unwrap();
    assert_eq!(down.reason, ExitReason::Killed);
    assert!(winner_pid.is_alive());
    // The loser's node reports the conflict (the winner's node reports it too if the loser's
    // registration reached it before the loser was killed: it may not have).
    let (loser_scope, loser_events) = if winner_pid == ra {
        (&gb, &mut ev_b)
    } else {
        (&ga, &mut ev_a)
    };
    let mut conflict = None;
    tokio::time::timeout(DEADLINE, async {
        while conflict.is_none() {
            if let Some(GlobalEvent::Conflict { winner, loser }) = loser_events.recv().await {
                conflict = Some((winner, loser));
            }
        }
    })
    .await
    .unwrap();
    let (w, l) = conflict.unwrap();
    assert_eq!(w, winner);
    assert_eq!(l.owner.id, loser_pid.id().unwrap());
    assert_eq!(loser_scope.registration("room").unwrap(), winner);
    // Both nodes agree on the winner.
    for (g, ev) in [(&ga, &mut ev_a), (&gb, &mut ev_b)] {
        until(ev, "the winner everywhere", || {
            g.registration("room") == Some(winner.clone())
        })
        .await;
        assert_eq!(g.whereis_name::<String>("room").unwrap(), winner_pid);
    }
    // The loser's exit does not release the winner's name.
    let mut ev = ga.events();
    until(&mut ev, "still the winner's", || {
        ga.registration("room") == Some(winner.clone())
            && gb.registration("room") == Some(winner.clone())
    })
    .await;
    assert!(!loser_pid.is_alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_end_with_one_owner_everywhere() {
    // Connected nodes register one name at (nearly) the same moment: each registration is
    // refused (the other's arrived first) or wins or loses by the rule; in every case all three
    // nodes end with the same single owner, and a registration that lost has its owner killed.
    let nodes = mesh(3).await;
    let pids: Vec<Pid<String>> = nodes.iter().map(|(n, _)| room(n)).collect();
    let mut downs: Vec<_> = nodes
        .iter()
        .zip(&pids)
        .map(|((n, _), p)| Some(n.runtime().monitor(p)))
        .collect();
    let results: Vec<_> = nodes
        .iter()
        .zip(&pids)
        .map(|((_, g), p)| g.register_name("race", p))
        .collect();
    assert!(results.iter().any(|r| r.is_ok()));
    // Every node's events, merged.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (_, g) in &nodes {
        let mut ev = g.events();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
    }
    let agreed = || {
        let regs: Vec<_> = nodes.iter().map(|(_, g)| g.registration("race")).collect();
        regs[0].is_some() && regs.iter().all(|r| *r == regs[0])
    };
    tokio::time::timeout(DEADLINE, async {
        while !agreed() {
            rx.recv().await.unwrap();
        }
    })
    .await
    .expect("every node names the same owner");
    let owner = nodes[0].1.registration("race").unwrap().owner;
    // Every other registration that succeeded lost, and its owner is killed.
    for ((r, p), down) in results.iter().zip(&pids).zip(&mut downs) {
        if r.is_ok() && p.id() != Some(owner.id) {
            let down = tokio::time::timeout(DEADLINE, down.take().unwrap())
                .await
                .expect("the loser is killed");
            assert_eq!(down.reason, ExitReason::Killed);
        }
    }
    let winner = pids.iter().find(|p| p.id() == Some(owner.id)).unwrap();
    assert!(winner.is_alive());
    assert!(agreed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_speaks_only_for_its_own_node() {
    // A peer's "scope" announcing a registration whose owner or stamp names another node is
    // ignored; one of its own process with its own stamp is taken.
    use conc_cluster::global::{GlobalMsg, Registration, Stamp};
    use conc_cluster::pg::Member;
    let nodes = mesh(2).await;
    let (a, ga) = &nodes[0];
    let (b, _) = &nodes[1];
    let forger: Pid<GlobalMsg> =
        b.spawn(|mut inbox: Inbox<GlobalMsg>| async move { while inbox.recv().await.is_some() {} });
    let own = room(b);
    let owner = Member::of(&own).unwrap();
    let reg = |name: &str, stamp_node: &str, owner: Member| Registration {
        name: name.into(),
        stamp: Stamp {
            at_ms: 0,
            node: stamp_node.into(),
            owner: owner.id,
        },
        owner,
    };
    let mut elsewhere = owner.clone();
    elsewhere.node = a.name().into();
    let to_a = b.remote::<GlobalMsg>(a.name(), "conc.global").unwrap();
    let mut ev = ga.events();
    for registration in [
        reg("other-owner", b.name(), elsewhere),
        reg("other-stamp", a.name(), owner.clone()),
        reg("own", b.name(), owner.clone()),
    ] {
        to_a.send(GlobalMsg::Register {
            scope: forger.clone(),
            registration,
        })
        .unwrap();
    }
    until(&mut ev, "the forger's own name", || {
        ga.registration("own").is_some()
    })
    .await;
    assert_eq!(ga.registered_names(), vec!["own".to_string()]);
    assert_eq!(ga.whereis_name::<String>("own").unwrap(), own);
}
