//! A node killed with SIGKILL takes its group members, its cluster-wide names and its
//! remote-spawned processes with it: the surviving node sees its members leave, its names
//! released and the `Down` of a process it spawned there (reason no-connection).
//!
//! The killed node is a child OS process: this test binary re-executed with `CONC_CHILD` set
//! (the `child` entry, `#[ignore]`d so that it only runs that way), as in the workspace's
//! `tests/tests/restart.rs`.

mod common;

use std::time::Duration;

use conc_cluster::global::{Global, GlobalEvent, ReleaseReason};
use conc_cluster::pg::Pg;
use conc_cluster::spawn::Spawner;
use conc_node::{Cookie, Event, ExitReason, Inbox, Node};

const COOKIE: &str = "pg-global-killed";
/// The bound on each awaited event: a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

async fn start_node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new(COOKIE).unwrap())
        .start()
        .await
        .unwrap()
}

/// The child: a node with a member of group `g`, the name `room`, and the kind `idle`; prints
/// `node NAME` once all are in place, then runs until killed.
async fn role_member() {
    let node = start_node().await;
    let pg = Pg::start(&node).unwrap();
    let global = Global::start(&node).unwrap();
    let worker =
        node.spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} });
    pg.join("g", &worker).unwrap();
    global.register_name("room", &worker).unwrap();
    Spawner::new(&node)
        .register_kind("idle", |_: (), mut inbox: Inbox<String>| async move {
            while inbox.recv().await.is_some() {}
        })
        .unwrap();
    println!("node {}", node.name());
    std::future::pending::<()>().await;
}

#[test]
#[ignore = "the entry point of the child process (run by the other test with CONC_CHILD set)"]
fn child() {
    common::run_child(|role| async move {
        match role.as_str() {
            "member" => role_member().await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Starts the child; returns it and its node's name.
fn start_child() -> (common::KillOnDrop, String) {
    common::start_child("member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_members_names_and_spawned_processes_with_it() {
    let (mut child, peer) = tokio::task::spawn_blocking(start_child).await.unwrap();
    let node = start_node().await;
    let pg = Pg::start(&node).unwrap();
    let global = Global::start(&node).unwrap();
    let mut groups = pg.monitor("g");
    let mut names = global.events();
    pg.contact(&peer).unwrap();
    global.contact(&peer).unwrap();
    tokio::time::timeout(DEADLINE, async {
        while pg.members::<String>("g").len() != 1 {
            groups.recv().await.unwrap();
        }
        while global.whereis_name::<String>("room").is_err() {
            names.recv().await.unwrap();
        }
    })
    .await
    .expect("the child's member and name are seen");
    let member = pg.members::<String>("g").remove(0);
    assert_eq!(global.whereis_name::<String>("room").unwrap(), member);

    // A process spawned on the child, monitored by a process here.
    let spawner = Spawner::new(&node).with_timeout(DEADLINE);
    let (spawned_tx, spawned_rx) = tokio::sync::oneshot::channel();
    let (down_tx, down_rx) = tokio::sync::oneshot::channel();
    let target = peer.clone();
    node.spawn(move |mut inbox: Inbox<()>| async move {
        let (pid, monitor) = spawner
            .spawn_monitor_on::<(), String, ()>(&inbox, &target, "idle", ())
            .await
            .unwrap();
        let _ = spawned_tx.send(());
        if let Ok(Event::Down(d)) = inbox.recv_event_timeout(DEADLINE).await {
            assert_eq!(d.monitor, monitor);
            assert_eq!(Some(d.pid), pid.id());
            let _ = down_tx.send(d.reason);
        }
    });
    tokio::time::timeout(DEADLINE, spawned_rx)
        .await
        .unwrap()
        .unwrap();

    child.0.kill().unwrap();
    child.0.wait().unwrap();

    tokio::time::timeout(DEADLINE, async {
        while !pg.members::<String>("g").is_empty() {
            groups.recv().await.unwrap();
        }
    })
    .await
    .expect("the killed node's member leaves");
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(GlobalEvent::Unregistered {
                registration,
                reason,
            }) = names.recv().await
            {
                assert_eq!(registration.name, "room");
                assert_eq!(reason, ReleaseReason::NodeDown);
                return;
            }
        }
    })
    .await
    .expect("the killed node's name is released");
    assert!(global.whereis_name::<String>("room").is_err());
    let reason = tokio::time::timeout(DEADLINE, down_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, ExitReason::NoConnection);
}
