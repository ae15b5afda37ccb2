//! Process groups across nodes of one test process on loopback (pooled TCP): joins and leaves
//! seen everywhere, local members first, typed members, subscriptions that start with the
//! current state, members that exit or whose node shuts down leaving at once, and scopes that
//! exchange their state when their nodes meet.

use std::time::Duration;

use conc_cluster::pg::{GroupMonitor, Member, Pg, PgEvent};
use conc_node::{Cookie, Inbox, Node, Pid};

/// Generous bound on every awaited event: a failure means the event never came.
const DEADLINE: Duration = Duration::from_secs(30);

async fn node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("pg-tests").unwrap())
        .start()
        .await
        .unwrap()
}

/// A node on per-message TCP, whose peers come up without a connection.
async fn per_message_node() -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(Cookie::new("pg-tests").unwrap())
        .transport_arc(conc_node::transport_by_name("per-message-tcp").unwrap())
        .start()
        .await
        .unwrap()
}

fn worker(node: &Node) -> Pid<String> {
    node.spawn(|mut inbox: Inbox<String>| async move { while inbox.recv().await.is_some() {} })
}

/// Waits, event by event, until `cond` holds.
async fn until(mon: &mut GroupMonitor, what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !cond() {
            mon.recv().await.expect("scope gone");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

async fn mesh(n: usize) -> Vec<(Node, Pg)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let node = node().await;
        let pg = Pg::start(&node).unwrap();
        out.push((node, pg));
    }
    for i in 0..n {
        for j in 0..i {
            out[i].1.contact(out[j].0.name()).unwrap();
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_everywhere_local_first_and_typed() {
    let nodes = mesh(3).await;
    let mut pids = Vec::new();
    for (node, pg) in &nodes {
        let w = worker(node);
        pg.join("workers", &w).unwrap();
        // Joining twice is one membership.
        pg.join("workers", &w).unwrap();
        pids.push(w);
    }
    // A member of another message type is in the group but not among the `String` members.
    let other: Pid<u64> = nodes[0]
        .0
        .spawn(|mut inbox: Inbox<u64>| async move { while inbox.recv().await.is_some() {} });
    nodes[0].1.join("workers", &other).unwrap();
    for (i, (_, pg)) in nodes.iter().enumerate() {
        let mut mon = pg.monitor("workers");
        until(&mut mon, "3 String members everywhere", || {
            pg.members::<String>("workers").len() == 3
        })
        .await;
        let members = pg.members::<String>("workers");
        assert_eq!(members[0], pids[i], "the local member comes first");
        assert!(members[0].is_local());
        assert!(members[1..].iter().all(|p| !p.is_local()));
        for p in &pids {
            assert!(members.contains(p));
        }
        assert_eq!(pg.local_members::<String>("workers"), vec![pids[i].clone()]);
        assert_eq!(pg.which_groups(), vec!["workers".to_string()]);
    }
    let (_, pg1) = &nodes[1];
    let mut mon = pg1.monitor("workers");
    until(&mut mon, "the u64 member seen on node 1", || {
        pg1.all_members("workers").len() == 4
    })
    .await;
    assert_eq!(pg1.members::<u64>("workers").len(), 1);
    // A typed remote member works: send it something through the group.
    let remote: Vec<Pid<String>> = pg1.members::<String>("workers");
    remote[1].send("job".into()).unwrap();
    // Only local processes can join through a scope.
    assert!(pg1.join("workers", &remote[1]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_starts_with_current_state_then_follows_changes() {
    let nodes = mesh(2).await;
    let (a, pg_a) = &nodes[0];
    let (_, pg_b) = &nodes[1];
    let w1 = worker(a);
    pg_a.join("g", &w1).unwrap();
    let mut on_b = pg_b.monitor("g");
    until(&mut on_b, "w1 seen on b", || {
        pg_b.all_members("g").len() == 1
    })
    .await;
    // A fresh subscription begins with the current members.
    let mut fresh = pg_b.monitor("g");
    let first = tokio::time::timeout(DEADLINE, fresh.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        PgEvent::Joined {
            group: "g".into(),
            members: vec![Member::of(&w1).unwrap()]
        }
    );
    // Other groups are not reported to it.
    let w2 = worker(a);
    pg_a.join("other", &w2).unwrap();
    pg_a.join("g", &w2).unwrap();
    let next = tokio::time::timeout(DEADLINE, fresh.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next,
        PgEvent::Joined {
            group: "g".into(),
            members: vec![Member::of(&w2).unwrap()]
        }
    );
    // A leave.
    assert!(pg_a.leave("g", &w1));
    assert!(!pg_a.leave("g", &w1), "not a member any more");
    let next = tokio::time::timeout(DEADLINE, fresh.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next,
        PgEvent::Left {
            group: "g".into(),
            members: vec![Member::of(&w1).unwrap()]
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_exits_leaves_every_group_everywhere() {
    let nodes = mesh(2).await;
    let (a, pg_a) = &nodes[0];
    let (_, pg_b) = &nodes[1];
    let w = worker(a);
    pg_a.join("g1", &w).unwrap();
    pg_a.join("g2", &w).unwrap();
    let mut on_b = pg_b.monitor_scope();
    until(&mut on_b, "both groups on b", || {
        pg_b.all_members("g1").len() == 1 && pg_b.all_members("g2").len() == 1
    })
    .await;
    w.kill();
    until(&mut on_b, "both groups empty on b", || {
        pg_b.which_groups().is_empty()
    })
    .await;
    let mut on_a = pg_a.monitor_scope();
    until(&mut on_a, "both groups empty on a", || {
        pg_a.which_groups().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_exchange_state_when_nodes_meet() {
    // Two nodes that do not know each other, each with members.
    let a = node().await;
    let b = node().await;
    let pg_a = Pg::start(&a).unwrap();
    let pg_b = Pg::start(&b).unwrap();
    let wa = worker(&a);
    let wb = worker(&b);
    pg_a.join("g", &wa).unwrap();
    pg_b.join("g", &wb).unwrap();
    assert_eq!(pg_a.members::<String>("g"), vec![wa.clone()]);
    let mut on_a = pg_a.monitor("g");
    let mut on_b = pg_b.monitor("g");
    // They meet: any connection makes each scope discover the other.
    pg_a.contact(b.name()).unwrap();
    until(&mut on_a, "b's member on a", || {
        pg_a.all_members("g").len() == 2
    })
    .await;
    until(&mut on_b, "a's member on b", || {
        pg_b.all_members("g").len() == 2
    })
    .await;
    assert_eq!(pg_a.peer_scopes(), vec![b.name().to_string()]);
    assert_eq!(pg_b.peer_scopes(), vec![a.name().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_node_that_shuts_down_leave() {
    let nodes = mesh(2).await;
    let (a, pg_a) = &nodes[0];
    let (b, pg_b) = &nodes[1];
    let wa = worker(a);
    let wb = worker(b);
    pg_a.join("g", &wa).unwrap();
    pg_b.join("g", &wb).unwrap();
    let mut on_a = pg_a.monitor("g");
    until(&mut on_a, "2 members on a", || {
        pg_a.all_members("g").len() == 2
    })
    .await;
    b.shutdown().await;
    until(&mut on_a, "b's member gone from a", || {
        pg_a.members::<String>("g") == vec![wa.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_find_each_other_on_any_connection() {
    // No `contact`: the nodes meet through an ordinary message (to a name that does not even
    // exist), and the node-up it causes on both sides makes the scopes discover each other.
    let a = node().await;
    let b = node().await;
    let pg_a = Pg::start(&a).unwrap();
    let pg_b = Pg::start(&b).unwrap();
    let wb = worker(&b);
    pg_b.join("g", &wb).unwrap();
    let mut on_a = pg_a.monitor("g");
    a.remote::<String>(b.name(), "nobody")
        .unwrap()
        .send("hello".into())
        .unwrap();
    until(&mut on_a, "b's member on a", || {
        pg_a.members::<String>("g").len() == 1
    })
    .await;
    let wa = worker(&a);
    pg_a.join("g", &wa).unwrap();
    let mut on_b = pg_b.monitor("g");
    until(&mut on_b, "a's member on b", || {
        pg_b.members::<String>("g").len() == 2
    })
    .await;
    assert_eq!(pg_b.members::<String>("g")[0], wb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_speaks_only_for_its_own_node() {
    // A peer's "scope" that claims a member of a third node, and one of an earlier incarnation
    // of its own node: both are ignored; its own member is taken.
    use conc_cluster::pg::PgMsg;
    let nodes = mesh(2).await;
    let (a, pg_a) = &nodes[0];
    let (b, _) = &nodes[1];
    let forger: Pid<PgMsg> =
        b.spawn(|mut inbox: Inbox<PgMsg>| async move { while inbox.recv().await.is_some() {} });
    let own = worker(b);
    let mut other_node = Member::of(&own).unwrap();
    other_node.node = "127.0.0.1:1".into();
    let mut old_incarnation = Member::of(&own).unwrap();
    old_incarnation.id.incarnation ^= 1;
    let remote_scope_a = b.remote::<PgMsg>(a.name(), "conc.pg").unwrap();
    let mut on_a = pg_a.monitor("g");
    remote_scope_a
        .send(PgMsg::Join {
            scope: forger.clone(),
            group: "g".into(),
            members: vec![other_node, old_incarnation, Member::of(&own).unwrap()],
        })
        .unwrap();
    until(&mut on_a, "the forger's own member", || {
        !pg_a.all_members("g").is_empty()
    })
    .await;
    assert_eq!(pg_a.all_members("g"), vec![Member::of(&own).unwrap()]);
}

/// Groups and names on every transport: seen across, and gone when the member exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_and_global_on_every_transport() {
    use conc_cluster::global::{Global, GlobalEvent};
    let names = conc_node::transport_names();
    assert!(names.contains(&"quic"), "QUIC is compiled into this test");
    for transport in names {
        let start = || async {
            Node::builder()
                .listen("127.0.0.1:0")
                .cookie(Cookie::new("pg-tests").unwrap())
                .transport_arc(conc_node::transport_by_name(transport).unwrap())
                .start()
                .await
                .unwrap()
        };
        let a = start().await;
        let b = start().await;
        let (pg_a, pg_b) = (Pg::start(&a).unwrap(), Pg::start(&b).unwrap());
        let (g_a, g_b) = (Global::start(&a).unwrap(), Global::start(&b).unwrap());
        let w = worker(&b);
        pg_b.join("g", &w).unwrap();
        g_b.register_name("w", &w).unwrap();
        let mut on_a = pg_a.monitor("g");
        let mut names_a = g_a.events();
        pg_a.contact(b.name()).unwrap();
        g_a.contact(b.name()).unwrap();
        until(&mut on_a, transport, || {
            pg_a.members::<String>("g") == vec![w.clone()]
        })
        .await;
        tokio::time::timeout(DEADLINE, async {
            while g_a.whereis_name::<String>("w").ok() != Some(w.clone()) {
                names_a.recv().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{transport}: name not seen"));
        w.kill();
        until(&mut on_a, transport, || pg_a.all_members("g").is_empty()).await;
        tokio::time::timeout(DEADLINE, async {
            while g_a.registration("w").is_some() {
                let e = names_a.recv().await.unwrap();
                assert!(!matches!(e, GlobalEvent::Conflict { .. }), "{transport}");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{transport}: name not released"));
        a.shutdown().await;
        b.shutdown().await;
    }
}

/// A scope that hears a `discover` from a scope it did not know asks it for its members in
/// turn (as Erlang's pg does), so a contact made from one side only is enough for both to see
/// each other's members, even on per-message TCP, where the contacted node sees no node-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_sided_contact_syncs_both_ways() {
    let (a, b) = (per_message_node().await, per_message_node().await);
    let (pa, pb) = (Pg::start(&a).unwrap(), Pg::start(&b).unwrap());
    let wa = worker(&a);
    pa.join("g", &wa).unwrap();
    let wb = worker(&b);
    pb.join("g", &wb).unwrap();
    let mut at_b = pb.monitor("g");
    let mut at_a = pa.monitor("g");
    pa.contact(b.name()).unwrap();
    until(&mut at_b, "B sees A's member", || {
        pb.members::<String>("g").contains(&wa)
    })
    .await;
    until(&mut at_a, "A sees B's member", || {
        pa.members::<String>("g").contains(&wb)
    })
    .await;
}

/// On per-message TCP too, scopes find each other when their nodes first meet (the node reports
/// a per-message peer up at its first proven handshake): no `contact` needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_tcp_scopes_meet_when_their_nodes_do() {
    let (a, b) = (per_message_node().await, per_message_node().await);
    let (pa, pb) = (Pg::start(&a).unwrap(), Pg::start(&b).unwrap());
    let wa = worker(&a);
    pa.join("g", &wa).unwrap();
    let wb = worker(&b);
    pb.join("g", &wb).unwrap();
    let mut at_a = pa.monitor("g");
    let mut at_b = pb.monitor("g");
    // The nodes meet: one message from B to A.
    a.register("hello", &wa).unwrap();
    b.remote::<String>(a.name(), "hello")
        .unwrap()
        .send("hi".into())
        .unwrap();
    until(&mut at_b, "B sees A's member", || {
        pb.members::<String>("g").contains(&wa)
    })
    .await;
    until(&mut at_a, "A sees B's member", || {
        pa.members::<String>("g").contains(&wb)
    })
    .await;
}
