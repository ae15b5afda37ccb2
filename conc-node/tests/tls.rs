//! Certificate-based mutual TLS, on pooled TCP and on QUIC: a development CA and node
//! certificates are made in the test with rcgen and loaded with `TlsIdentity::from_pem_files`.
//!
//! Two nodes with certificates from the CA talk. A mutual-TLS node refuses a plain TCP peer, a
//! self-signed TLS peer, a peer whose certificate (from the right CA) names another host than
//! its node name, a peer with a certificate from another CA, and a peer with the right
//! certificate but the wrong cookie. In each refusal nothing reaches the node's processes and
//! the refusing node's `stats().rejected` grows.

#![cfg(all(feature = "tls", feature = "quic"))]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conc_node::*;

const T: Duration = Duration::from_secs(20);
/// The timeout of a refused peer's call: far longer than a refusal takes, so that a call that
/// waited instead of failing ends as `CallError::Timeout` (a bound against hangs too).
const REFUSED_CALL: Duration = Duration::from_secs(60);

type Echo = (String, ReplyTo<String>);

// ---- certificates ----

/// A certificate authority made for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A node certificate for `host` (an IP address or a DNS name) and its key, as PEM.
    fn issue(&self, host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "conc-tls-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node's TLS identity: it trusts the CAs in `trusts` and presents a certificate for `host`
/// from `issuer`. Goes through PEM files, as an operator's would.
fn identity(dir: &TempDir, trusts: &[&Ca], issuer: &Ca, host: &str) -> TlsIdentity {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let ca_pem: String = trusts.iter().map(|ca| ca.cert.pem()).collect();
    let (cert, key) = issuer.issue(host);
    let ca = dir.write(&format!("ca-{n}.pem"), &ca_pem);
    let cert = dir.write(&format!("{host}-{n}.pem"), &cert);
    let key = dir.write(&format!("{host}-{n}.key"), &key);
    TlsIdentity::from_pem_files(&ca, &cert, &key).unwrap()
}

// ---- nodes ----

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tcp,
    Quic,
}

/// How a node secures its connections.
enum Security {
    /// Mutual TLS with this identity.
    Mutual(TlsIdentity),
    /// TLS with a self-signed certificate (QUIC's default).
    SelfSigned,
    /// Pooled TCP without TLS.
    Plain,
}

fn transport(kind: Kind, security: Security) -> Arc<dyn Transport> {
    match (kind, security) {
        (Kind::Tcp, Security::Mutual(id)) => Arc::new(Tcp::pooled().with_tls(TlsMode::Mutual(id))),
        (Kind::Tcp, Security::SelfSigned) => Arc::new(Tcp::pooled().with_tls(TlsMode::SelfSigned)),
        (Kind::Quic, Security::Mutual(id)) => Arc::new(Quic::new().with_mutual_tls(id)),
        (Kind::Quic, Security::SelfSigned) => Arc::new(Quic::new()),
        // A plain TCP peer, whatever the other side speaks.
        (_, Security::Plain) => Arc::new(Tcp::pooled()),
    }
}

fn cookie() -> Cookie {
    Cookie::new("tls-suite-cookie").unwrap()
}

async fn start(kind: Kind, security: Security, cookie: Cookie) -> Node {
    Node::builder()
        .listen("127.0.0.1:0")
        .cookie(cookie)
        .transport_arc(transport(kind, security))
        .start()
        .await
        .unwrap()
}

/// A node with a `sink` that counts what it receives and an `echo`.
struct Served {
    node: Node,
    received: Arc<AtomicUsize>,
}

fn serve(node: Node) -> Served {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let sink = node.spawn(move |mut inbox: Inbox<String>| async move {
        while inbox.recv().await.is_some() {
            r.fetch_add(1, Ordering::SeqCst);
        }
    });
    node.register("sink", &sink).unwrap();
    let r = received.clone();
    let echo = node.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            r.fetch_add(1, Ordering::SeqCst);
            let _ = reply.send(format!("echo {text}"));
        }
    });
    node.register("echo", &echo).unwrap();
    Served { node, received }
}

fn rejected_total(node: &Node) -> u64 {
    node.stats().rejected.values().sum()
}

/// The peer sends to the server's sink and then calls its echo, on the same path to the
/// server: the call fails because the connection is refused (not by waiting out its timeout),
/// nothing is delivered, and (when `counted`) the server's rejected counter grows.
async fn assert_refused(server: &Served, peer: &Node, counted: bool, what: &str) {
    let before = rejected_total(&server.node);
    let sink = peer.remote::<String>(server.node.name(), "sink").unwrap();
    let _ = sink.send("intruder".to_string());
    let echo = peer.remote::<Echo>(server.node.name(), "echo").unwrap();
    let started = Instant::now();
    let res = echo
        .call(|r| ("intruder".to_string(), r), REFUSED_CALL)
        .await;
    assert!(res.is_err(), "{what}: the call succeeded: {res:?}");
    // Failed because the connection was refused, not by waiting out its timeout (after which
    // its request could still be on its way).
    assert!(
        !matches!(res, Err(CallError::Timeout(_))),
        "{what}: the call timed out instead of failing: {res:?}"
    );
    if counted {
        let deadline = Instant::now() + T;
        while rejected_total(&server.node) <= before {
            assert!(
                Instant::now() < deadline,
                "{what}: the server's rejected counter did not grow: {:?}",
                server.node.stats().rejected
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The call's request was failed back by the refused connection, and the send was queued
    // before it towards the same server: neither was taken by the server.
    assert_eq!(
        server.received.load(Ordering::SeqCst),
        0,
        "{what}: a message was delivered"
    );
    println!(
        "{what}: refused in {:?}, call error: {}, server rejected: {:?}",
        started.elapsed(),
        res.unwrap_err(),
        server.node.stats().rejected
    );
}

/// A mutual-TLS server with a certificate for 127.0.0.1 from `ca`.
async fn mutual_server(kind: Kind, dir: &TempDir, ca: &Ca) -> Served {
    let id = identity(dir, &[ca], ca, "127.0.0.1");
    serve(start(kind, Security::Mutual(id), cookie()).await)
}

// ---- the cases, each taking a transport ----

async fn mutual_peers_talk(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let a = mutual_server(kind, &dir, &ca).await;
    let b = serve(
        start(
            kind,
            Security::Mutual(identity(&dir, &[&ca], &ca, "127.0.0.1")),
            cookie(),
        )
        .await,
    );
    let echo = b.node.remote::<Echo>(a.node.name(), "echo").unwrap();
    let answer = echo.call(|r| ("hello".to_string(), r), T).await.unwrap();
    assert_eq!(answer, "echo hello");
    // And the other way round (on the same connection for the pooled transports).
    let back = a.node.remote::<Echo>(b.node.name(), "echo").unwrap();
    assert_eq!(
        back.call(|r| ("back".to_string(), r), T).await.unwrap(),
        "echo back"
    );
    assert_eq!(rejected_total(&a.node), 0, "{:?}", a.node.stats().rejected);
    assert_eq!(rejected_total(&b.node), 0, "{:?}", b.node.stats().rejected);
}

async fn plain_tcp_peer_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let a = mutual_server(kind, &dir, &ca).await;
    let peer = start(kind, Security::Plain, cookie()).await;
    // QUIC listens on UDP: a TCP peer does not even reach it, so nothing is counted there.
    assert_refused(&a, &peer, matches!(kind, Kind::Tcp), "plain tcp peer").await;
}

async fn self_signed_peer_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let a = mutual_server(kind, &dir, &ca).await;
    let peer = start(kind, Security::SelfSigned, cookie()).await;
    assert_refused(&a, &peer, true, "self-signed peer").await;
}

async fn certificate_for_another_name_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let a = mutual_server(kind, &dir, &ca).await;
    // A valid certificate from the right CA, but for 10.9.9.9, while the peer's node name is
    // 127.0.0.1:port.
    let id = identity(&dir, &[&ca], &ca, "10.9.9.9");
    let peer = start(kind, Security::Mutual(id), cookie()).await;
    assert!(peer.name().starts_with("127.0.0.1:"));
    assert_refused(&a, &peer, true, "certificate for another name").await;
}

async fn certificate_from_another_ca_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let other = Ca::new("someone else's CA");
    let a = mutual_server(kind, &dir, &ca).await;
    // The peer trusts the right CA (so it accepts the server), but its own certificate, for
    // the right name, comes from another CA.
    let id = identity(&dir, &[&ca, &other], &other, "127.0.0.1");
    let peer = start(kind, Security::Mutual(id), cookie()).await;
    assert_refused(&a, &peer, true, "certificate from another CA").await;
}

async fn wrong_cookie_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let a = mutual_server(kind, &dir, &ca).await;
    let id = identity(&dir, &[&ca], &ca, "127.0.0.1");
    let peer = start(
        kind,
        Security::Mutual(id),
        Cookie::new("not-the-cookie").unwrap(),
    )
    .await;
    assert_refused(&a, &peer, true, "right certificate, wrong cookie").await;
}

/// The client side checks the server too: a server whose certificate (from the right CA)
/// names another host is refused by the connecting node, which delivers nothing to it.
async fn server_with_certificate_for_another_name_is_refused(kind: Kind) {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let id = identity(&dir, &[&ca], &ca, "10.9.9.9");
    let a = serve(start(kind, Security::Mutual(id), cookie()).await);
    let id = identity(&dir, &[&ca], &ca, "127.0.0.1");
    let client = start(kind, Security::Mutual(id), cookie()).await;
    assert_refused(&a, &client, false, "server certificate for another name").await;
}

fn check_dir_is_gone(path: &Path) {
    assert!(!path.exists());
}

macro_rules! both_transports {
    ($($case:ident),* $(,)?) => {
        mod pooled_tcp_tls {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Kind::Tcp).await;
                }
            )*
        }
        mod quic {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Kind::Quic).await;
                }
            )*
        }
    };
}

both_transports!(
    mutual_peers_talk,
    plain_tcp_peer_is_refused,
    self_signed_peer_is_refused,
    certificate_for_another_name_is_refused,
    certificate_from_another_ca_is_refused,
    wrong_cookie_is_refused,
    server_with_certificate_for_another_name_is_refused,
);

#[test]
fn pem_files_are_loaded_and_errors_name_the_file() {
    let dir = TempDir::new();
    let ca = Ca::new("conc test CA");
    let id = identity(&dir, &[&ca], &ca, "node1.example");
    assert_eq!(id.ca.len(), 1);
    assert_eq!(id.chain.len(), 1);
    let missing = dir.0.join("missing.pem");
    let err = TlsIdentity::from_pem_files(&missing, &missing, &missing).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let empty = dir.write("empty.pem", "");
    let (cert, key) = ca.issue("127.0.0.1");
    let cert = dir.write("c.pem", &cert);
    let key = dir.write("c.key", &key);
    let err = TlsIdentity::from_pem_files(&empty, &cert, &key).unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
    let path = dir.0.clone();
    drop(dir);
    check_dir_is_gone(&path);
}
