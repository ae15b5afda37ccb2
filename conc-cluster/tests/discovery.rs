//! DNS discovery against a real DNS server started by the test on loopback (a small UDP
//! responder built with hickory-proto, answering from a zone the test changes): A/AAAA names,
//! SRV names, and members found by re-resolution when the name gains an address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conc_cluster::{Cluster, ClusterConfig, DnsDiscovery, DnsQuery};
use conc_node::{Cookie, Node, Tcp};
use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const WAIT: Duration = Duration::from_secs(30);

/// Records by (lower-case fully qualified name, type).
type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<RData>>>>;

/// A DNS server on 127.0.0.1 answering from `zone` (NOERROR with no answers for what it does
/// not hold). Returns its address.
async fn dns_server(zone: Zone) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = Message::response(request.metadata.id, OpCode::Query);
            response.metadata.recursion_desired = request.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            for q in &request.queries {
                response.add_query(q.clone());
                let key = (q.name().to_ascii().to_lowercase(), q.query_type());
                let answers = zone.lock().unwrap().get(&key).cloned().unwrap_or_default();
                for rdata in answers {
                    response.add_answer(Record::from_rdata(q.name().clone(), 1, rdata));
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

fn set(zone: &Zone, name: &str, ty: RecordType, data: Vec<RData>) {
    zone.lock().unwrap().insert((name.to_string(), ty), data);
}

async fn node_at(addr: &str) -> Node {
    Node::builder()
        .listen(addr)
        .cookie(Cookie::new("discovery-suite").unwrap())
        .transport(Tcp::pooled())
        .start()
        .await
        .unwrap()
}

async fn wait_members(cluster: &Cluster, n: usize) {
    let mut events = cluster.events();
    tokio::time::timeout(WAIT, async {
        while cluster.members().len() != n {
            events.recv().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} saw {:?}, wanted {n}",
            cluster.me().name,
            cluster.members()
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_records_give_every_address_with_the_port() {
    let zone = Zone::default();
    let dns = dns_server(zone.clone()).await;
    set(
        &zone,
        "members.cluster.test.",
        RecordType::A,
        vec![
            RData::A(A(Ipv4Addr::new(10, 1, 0, 2))),
            RData::A(A(Ipv4Addr::new(10, 1, 0, 1))),
        ],
    );
    set(
        &zone,
        "members.cluster.test.",
        RecordType::AAAA,
        vec![RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))],
    );
    let discovery = DnsDiscovery::with_name_server(
        dns,
        DnsQuery::Hosts {
            name: "members.cluster.test.".into(),
            port: 4369,
        },
    )
    .unwrap();
    assert_eq!(
        discovery.resolve().await.unwrap(),
        vec!["10.1.0.1:4369", "10.1.0.2:4369", "[::1]:4369"]
    );
    // An unknown name is an error, not an empty cluster.
    let missing = DnsDiscovery::with_name_server(
        dns,
        DnsQuery::Hosts {
            name: "nobody.cluster.test.".into(),
            port: 4369,
        },
    )
    .unwrap();
    assert!(missing.resolve().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_hosts_and_ports_and_the_nodes_join() {
    let zone = Zone::default();
    let dns = dns_server(zone.clone()).await;
    let a = node_at("127.0.0.1:0").await;
    let b = node_at("127.0.0.1:0").await;
    let port = |n: &Node| n.local_addr().unwrap().port();
    set(
        &zone,
        "_conc._tcp.cluster.test.",
        RecordType::SRV,
        vec![
            RData::SRV(SRV::new(
                0,
                0,
                port(&a),
                Name::from_ascii("a.cluster.test.").unwrap(),
            )),
            RData::SRV(SRV::new(
                0,
                0,
                port(&b),
                Name::from_ascii("b.cluster.test.").unwrap(),
            )),
        ],
    );
    for host in ["a.cluster.test.", "b.cluster.test."] {
        set(
            &zone,
            host,
            RecordType::A,
            vec![RData::A(A(Ipv4Addr::LOCALHOST))],
        );
    }
    let query = DnsQuery::Srv {
        name: "_conc._tcp.cluster.test.".into(),
    };
    let discovery = DnsDiscovery::with_name_server(dns, query.clone()).unwrap();
    let mut expected = vec![a.name().to_string(), b.name().to_string()];
    expected.sort();
    assert_eq!(discovery.resolve().await.unwrap(), expected);

    let ca = Cluster::start(&a, ClusterConfig::new()).unwrap();
    let cb = Cluster::start(&b, ClusterConfig::new()).unwrap();
    let _task = cb.discover(discovery.every(Duration::from_millis(200)));
    wait_members(&ca, 2).await;
    wait_members(&cb, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_resolution_finds_a_member_added_to_the_name() {
    let zone = Zone::default();
    let dns = dns_server(zone.clone()).await;
    // Members on 127.0.0.2, .3 and .4, all on one port (a headless service's shape).
    let first = node_at("127.0.0.2:0").await;
    let port = first.local_addr().unwrap().port();
    let second = node_at(&format!("127.0.0.3:{port}")).await;
    let name = "members.cluster.test.";
    let a = |last: u8| RData::A(A(Ipv4Addr::new(127, 0, 0, last)));
    set(&zone, name, RecordType::A, vec![a(2), a(3)]);
    let query = DnsQuery::Hosts {
        name: name.into(),
        port,
    };
    let c1 = Cluster::start(&first, ClusterConfig::new()).unwrap();
    let c2 = Cluster::start(&second, ClusterConfig::new()).unwrap();
    let every = Duration::from_millis(200);
    let _t1 = c1.discover(
        DnsDiscovery::with_name_server(dns, query.clone())
            .unwrap()
            .every(every),
    );
    let _t2 = c2.discover(
        DnsDiscovery::with_name_server(dns, query.clone())
            .unwrap()
            .every(every),
    );
    wait_members(&c1, 2).await;
    wait_members(&c2, 2).await;

    // A third member starts, knowing nobody; once DNS lists it, the others find it.
    let third = node_at(&format!("127.0.0.4:{port}")).await;
    let c3 = Cluster::start(&third, ClusterConfig::new()).unwrap();
    set(&zone, name, RecordType::A, vec![a(2), a(3), a(4)]);
    wait_members(&c1, 3).await;
    wait_members(&c2, 3).await;
    wait_members(&c3, 3).await;
    assert!(c3.members().iter().any(|m| m.name == first.name()));
}
