//! Supervision across nodes: a supervisor's child placed on another node
//! ([`conc_cluster::spawn::remote_child`]) is restarted on a live node after its node is killed
//! with SIGKILL (the link's exit arrives with reason no-connection).
//!
//! The worker nodes are child OS processes: this test binary re-executed with `CONC_CHILD` set
//! (the `child` entry, `#[ignore]`d so that it only runs that way), as in
//! `pg_global_node_killed.rs`.

mod common;

use std::time::Duration;

use conc_cluster::spawn::{Spawner, remote_child};
use conc_node::supervisor::{
    ChildInfo, ChildStatus, DynamicSpec, Strategy, Supervisor, SupervisorSpec,
};
use conc_node::{Cookie, ExitReason, Inbox, Node, ReplyTo, SupervisorExit};

const COOKIE: &str = "remote-child";
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

/// A worker node offering the kind `where`, whose processes answer with their node's name;
/// prints `node NAME`, then runs until killed.
async fn role_worker() {
    let node = start_node().await;
    let name = node.name().to_string();
    Spawner::new(&node)
        .register_kind("where", move |_: (), mut inbox: Inbox<ReplyTo<String>>| {
            let name = name.clone();
            async move {
                while let Some(reply) = inbox.recv().await {
                    let _ = reply.send(name.clone());
                }
            }
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
            "worker" => role_worker().await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Starts a worker; returns it and its node's name.
fn start_worker() -> (common::KillOnDrop, String) {
    common::start_child("worker")
}

/// Asks the process at `uri` (a `where` process) for its node's name.
async fn where_is(node: &Node, uri: &str) -> String {
    node.resolve::<ReplyTo<String>>(uri)
        .unwrap()
        .call(|reply| reply, DEADLINE)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_child_is_restarted_on_a_live_node_after_its_node_is_killed() {
    let (mut first, first_name) = tokio::task::spawn_blocking(start_worker).await.unwrap();
    let (_second, second_name) = tokio::task::spawn_blocking(start_worker).await.unwrap();
    let node = start_node().await;
    let spawner = Spawner::new(&node).with_timeout(DEADLINE);
    // Placement: the first worker while it is connected, else any connected node.
    let placement = {
        let node = node.clone();
        let preferred = first_name.clone();
        std::sync::Arc::new(move || {
            let mut nodes = node.nodes();
            nodes.sort_by_key(|n| *n != preferred);
            nodes
        })
    };
    // Connect to both workers (a spawn connects), so that both are candidates.
    for peer in [&first_name, &second_name] {
        spawner
            .spawn_on::<(), ReplyTo<String>>(peer, "where", ())
            .await
            .unwrap()
            .kill();
    }
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(remote_child::<(), ReplyTo<String>, _>(
            &spawner,
            "where",
            "where",
            (),
            {
                let placement = placement.clone();
                move || placement()
            },
        ))
        .start(node.runtime())
        .await
        .unwrap();
    let children = sup.which_children(DEADLINE).await.unwrap();
    assert_eq!(children[0].status, ChildStatus::Running);
    let uri = children[0].uri.clone().unwrap();
    assert_eq!(where_is(&node, &uri).await, first_name);
    // The same under a dynamic supervisor (one child per argument, as web sessions are).
    let dynamic = DynamicSpec::new({
        let spawner = spawner.clone();
        let placement = placement.clone();
        move |arg: ()| {
            let spawner = spawner.clone();
            let candidates = placement();
            async move {
                spawner
                    .start_child_on::<(), ReplyTo<String>>(&candidates, "where", arg)
                    .await
            }
        }
    })
    .intensity(10, Duration::from_secs(60))
    .start(node.runtime())
    .await
    .unwrap();
    dynamic.start_child(()).await.unwrap();
    let dyn_children = dynamic.supervisor().which_children(DEADLINE).await.unwrap();
    let dyn_uri = dyn_children[0].uri.clone().unwrap();
    assert_eq!(where_is(&node, &dyn_uri).await, first_name);

    // SIGKILL the child's node: the supervisor restarts the child on the other worker.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let restarted = restarted_child(&sup, 1).await;
    let new_uri = restarted.uri.clone().unwrap();
    assert_ne!(new_uri, uri);
    assert_eq!(where_is(&node, &new_uri).await, second_name);
    let dyn_restarted = restarted_child(dynamic.supervisor(), 1).await;
    let dyn_new_uri = dyn_restarted.uri.clone().unwrap();
    assert_ne!(dyn_new_uri, dyn_uri);
    assert_eq!(where_is(&node, &dyn_new_uri).await, second_name);
    // The supervisor watches the new child: killing it is seen and it is restarted again.
    node.resolve::<ReplyTo<String>>(&new_uri).unwrap().kill();
    let again = restarted_child(&sup, 2).await;
    assert_ne!(again.uri.as_deref(), Some(new_uri.as_str()));
    assert_eq!(
        where_is(&node, again.uri.as_deref().unwrap()).await,
        second_name
    );

    // No node left: every restart fails (no node to place it on), and the supervisor gives up
    // with the restart intensity reached, naming the child.
    let down = node.runtime().monitor(sup.pid());
    drop(_second);
    let reason = tokio::time::timeout(DEADLINE, down)
        .await
        .expect("the supervisor gives up")
        .reason;
    assert_eq!(
        reason,
        ExitReason::Supervisor(SupervisorExit::ReachedMaxRestartIntensity {
            child: "where".to_string()
        })
    );
}

/// Waits until `sup`'s first child has been restarted `restarts` times and runs again.
async fn restarted_child(sup: &Supervisor, restarts: u64) -> ChildInfo {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let mut children = sup.which_children(DEADLINE).await.unwrap();
            if children[0].restarts >= restarts && children[0].status == ChildStatus::Running {
                return children.remove(0);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the child is restarted")
}
