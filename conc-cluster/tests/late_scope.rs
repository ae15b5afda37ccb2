//! Scopes started after their nodes are connected (pg and global): the scope that starts late
//! joins (or registers) at once, before any other scope has answered it, and the scopes that
//! were there first still learn of it. As in Erlang's `pg.erl`, a scope that hears `discover`
//! from a scope it does not know answers with its state and discovers it back.

use std::time::Duration;

use conc_cluster::global::Global;
use conc_cluster::pg::Pg;
use conc_node::{Cookie, Inbox, Node, Pid};

/// Generous bound on every awaited event: a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

async fn node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("late-scope-tests").unwrap())
        .start()
        .await
        .unwrap()
}

/// Waits until `node` has refused a message (a peer's `discover` to a scope that does not run
/// there yet). Polled: the count has no event to wait on.
async fn refused_one(node: &Node) {
    tokio::time::timeout(DEADLINE, async {
        while node.dead_letters() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the early discover was never refused");
}

fn worker(node: &Node) -> Pid<String> {
    node.spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_scope_started_after_the_connection_is_seen_by_the_others() {
    let a = node().await;
    let b = node().await;
    let pg_a = Pg::start(&a).unwrap();
    let wa = worker(&a);
    pg_a.join("g", &wa).unwrap();
    let mut mon_a = pg_a.monitor("g");
    // Connected before B's scope exists: A's discover (sent when B came up) finds no scope.
    b.connect(a.name(), DEADLINE).await.unwrap();
    refused_one(&b).await;
    let pg_b = Pg::start(&b).unwrap();
    let wb = worker(&b);
    // At once: B's scope knows no other scope yet, so nobody is told of this join directly.
    pg_b.join("g", &wb).unwrap();
    tokio::time::timeout(DEADLINE, async {
        while pg_a.members::<String>("g").len() < 2 {
            mon_a.recv().await.expect("scope gone");
        }
    })
    .await
    .expect("A's scope never learned the member that joined on B");
    let mut mon_b = pg_b.monitor("g");
    tokio::time::timeout(DEADLINE, async {
        while pg_b.members::<String>("g").len() < 2 {
            mon_b.recv().await.expect("scope gone");
        }
    })
    .await
    .expect("B's scope never learned A's member");
    assert!(pg_a.members::<String>("g").contains(&wb));
    assert!(pg_b.members::<String>("g").contains(&wa));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_scope_started_after_the_connection_is_seen_by_the_others() {
    let a = node().await;
    let b = node().await;
    let g_a = Global::start(&a).unwrap();
    let mut events_a = g_a.events();
    b.connect(a.name(), DEADLINE).await.unwrap();
    refused_one(&b).await;
    let g_b = Global::start(&b).unwrap();
    let wb = worker(&b);
    g_b.register_name("late", &wb).unwrap();
    tokio::time::timeout(DEADLINE, async {
        while g_a.whereis_name::<String>("late").is_err() {
            if events_a.recv().await.is_none() {
                panic!("scope gone");
            }
        }
    })
    .await
    .expect("A's scope never learned the name registered on B");
    assert_eq!(g_a.whereis_name::<String>("late").unwrap(), wb);
}
