//! The `certs` example (the development CA and node certificate tool) against the library's
//! mutual TLS: the example is built with cargo and run as a child process in a private
//! temporary directory, and what it writes is used as an operator would use it.
//!
//! - `certs ca` and `certs node NAME` write `ca.pem`, `ca.key`, `HOST.pem` and `HOST.key`
//!   where the tool says (a `:port` suffix of the node name is dropped), every file with mode
//!   0600 and the directory it creates with mode 0700; `node` without a CA and a second `ca`
//!   without `--force` fail and leave the CA alone.
//! - The files load with `TlsIdentity::from_pem_files`, and two nodes named `127.0.0.1:PORT`
//!   and `127.0.0.2:PORT` (ports read back after binding port 0) with those certificates call
//!   each other's `echo` over mutual TLS, on pooled TCP and on QUIC.
//! - A node presenting a certificate for another host than its node name (the other node's
//!   certificate, from the same CA), and a node presenting a certificate for its own host from
//!   a second CA made by another `certs ca` run, are refused: their calls fail and nothing
//!   reaches the server's processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conc_node::{CallError, Cookie, Inbox, Node, Quic, ReplyTo, Tcp, TlsIdentity, TlsMode};

use common::{Example, TempDir};

mod common;

/// A bound against hangs for calls that should succeed (not a performance bar).
const CALL: Duration = Duration::from_secs(30);
/// A bound against hangs for calls that should be refused; the refusal must come before it
/// (a timeout is not accepted as a refusal).
const REFUSED_CALL: Duration = Duration::from_secs(30);

/// The host of node A's certificate and listen address.
const HOST_A: &str = "127.0.0.1";
/// The host of node B's certificate and listen address (all of 127/8 is loopback on Linux).
const HOST_B: &str = "127.0.0.2";

type Echo = (String, ReplyTo<String>);

// ---------------------------------------------------------------------------------------------
// Building and running the example.

/// The `certs` example.
static CERTS: Example = Example::new("certs");

/// Runs `certs ARGS --dir DIR` to completion in `cwd`.
fn run_certs(cwd: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(CERTS.path())
        .current_dir(cwd)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run certs {args:?}: {e}"))
}

/// Runs `certs ARGS --dir DIR`, which must succeed; returns its standard output.
fn certs_ok(cwd: &Path, dir: &Path, args: &[&str]) -> String {
    let out = run_certs(cwd, dir, args);
    assert!(
        out.status.success(),
        "certs {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("certs prints UTF-8")
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A CA and the certificates of nodes A and B, made by the example in `DIR/certs` (a
/// directory the tool creates).
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(tmp: &TempDir) -> Certs {
        let dir = tmp.path().join("certs");
        certs_ok(tmp.path(), &dir, &["ca"]);
        // Node names as the nodes will have them: the port is dropped (A), or absent (B).
        certs_ok(tmp.path(), &dir, &["node", &format!("{HOST_A}:9000")]);
        certs_ok(tmp.path(), &dir, &["node", HOST_B]);
        Certs { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn cert(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.pem"))
    }

    fn key(&self, host: &str) -> PathBuf {
        self.dir.join(format!("{host}.key"))
    }

    /// The identity of the node `host`, loaded from the tool's files.
    fn identity(&self, host: &str) -> TlsIdentity {
        TlsIdentity::from_pem_files(self.ca(), self.cert(host), self.key(host))
            .unwrap_or_else(|e| panic!("loading the identity of {host}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The tool's files.

#[test]
fn ca_and_node_certificates_are_written_private_where_the_tool_says() {
    let tmp = TempDir::new("conc-certs-test");
    let dir = tmp.path().join("certs");

    // No CA yet: `node` fails and writes nothing.
    let out = run_certs(tmp.path(), &dir, &["node", HOST_A]);
    assert!(!out.status.success(), "certs node without a CA succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no CA"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join(format!("{HOST_A}.key")).exists());

    let said = certs_ok(tmp.path(), &dir, &["ca"]);
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    for path in [&ca_pem, &ca_key] {
        assert!(said.contains(&path.display().to_string()), "{said}");
    }
    assert_eq!(mode(&dir), 0o700, "the directory the tool created");

    // A second `ca` without --force is refused and leaves the CA as it was.
    let before = std::fs::read(&ca_key).unwrap();
    let out = run_certs(tmp.path(), &dir, &["ca"]);
    assert!(!out.status.success(), "a second certs ca succeeded");
    assert_eq!(
        std::fs::read(&ca_key).unwrap(),
        before,
        "the CA key changed"
    );

    // A node name with a port: the files are named after the host only.
    let said_a = certs_ok(tmp.path(), &dir, &["node", &format!("{HOST_A}:9000")]);
    let said_b = certs_ok(tmp.path(), &dir, &["node", HOST_B]);
    assert!(!dir.join(format!("{HOST_A}:9000.pem")).exists());
    assert!(
        said_a.contains(&format!("run the node as {HOST_A}:PORT")),
        "{said_a}"
    );
    assert!(
        said_b.contains(&format!("run the node as {HOST_B}:PORT")),
        "{said_b}"
    );

    let mut written: Vec<PathBuf> = vec![ca_pem, ca_key];
    for (host, said) in [(HOST_A, &said_a), (HOST_B, &said_b)] {
        for ext in ["pem", "key"] {
            let path = dir.join(format!("{host}.{ext}"));
            assert!(path.is_file(), "{} is missing", path.display());
            assert!(said.contains(&path.display().to_string()), "{said}");
            written.push(path);
        }
    }
    for path in &written {
        assert_eq!(mode(path), 0o600, "mode of {}", path.display());
    }
    // Nothing else was written.
    let mut listed: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    listed.sort();
    written.sort();
    assert_eq!(listed, written);

    // The private keys are keys, the certificates certificates, and the library loads them.
    for host in [HOST_A, HOST_B] {
        let key = std::fs::read_to_string(dir.join(format!("{host}.key"))).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
        let id = TlsIdentity::from_pem_files(
            dir.join("ca.pem"),
            dir.join(format!("{host}.pem")),
            dir.join(format!("{host}.key")),
        )
        .unwrap_or_else(|e| panic!("loading the identity of {host}: {e}"));
        assert_eq!(id.ca.len(), 1);
        assert_eq!(id.chain.len(), 1);
    }

    let path = tmp.path().to_path_buf();
    drop(tmp);
    assert!(!path.exists(), "the temporary directory was not removed");
}

// ---------------------------------------------------------------------------------------------
// Nodes with the tool's certificates.

#[derive(Clone, Copy, Debug)]
enum Kind {
    PooledTcpTls,
    Quic,
}

fn cookie() -> Cookie {
    Cookie::new("certs-test-cookie").unwrap()
}

/// A node listening on `host:0` with mutual TLS and `identity`, on `kind`.
async fn start(kind: Kind, host: &str, identity: TlsIdentity) -> Node {
    let builder = Node::builder().listen(format!("{host}:0")).cookie(cookie());
    let builder = match kind {
        Kind::PooledTcpTls => builder.transport(Tcp::pooled().with_tls(TlsMode::Mutual(identity))),
        Kind::Quic => builder.transport(Quic::new().with_mutual_tls(identity)),
    };
    let node = builder
        .start()
        .await
        .unwrap_or_else(|e| panic!("starting {kind:?} node on {host}: {e}"));
    // The bound port is read back and is the node's name.
    let port = node.local_addr().expect("the node listens").port();
    assert_ne!(port, 0);
    assert_eq!(node.name(), format!("{host}:{port}"));
    node
}

/// Registers an `echo` on `node`; returns how many requests it has received.
fn serve_echo(node: &Node) -> Arc<AtomicUsize> {
    let received = Arc::new(AtomicUsize::new(0));
    let r = received.clone();
    let echo = node.spawn(move |mut inbox: Inbox<Echo>| async move {
        while let Some((text, reply)) = inbox.recv().await {
            r.fetch_add(1, Ordering::SeqCst);
            let _ = reply.send(format!("echo {text}"));
        }
    });
    node.register("echo", &echo).unwrap();
    received
}

async fn nodes_with_tool_certificates_talk(kind: Kind) {
    let tmp = TempDir::new("conc-certs-test");
    let certs = Certs::make(&tmp);
    let a = start(kind, HOST_A, certs.identity(HOST_A)).await;
    let b = start(kind, HOST_B, certs.identity(HOST_B)).await;
    let a_received = serve_echo(&a);
    let b_received = serve_echo(&b);

    let echo = b.remote::<Echo>(a.name(), "echo").unwrap();
    let answer = echo.call(|r| ("hello".to_string(), r), CALL).await;
    assert_eq!(answer.as_deref(), Ok("echo hello"), "{kind:?}: B calls A");
    let back = a.remote::<Echo>(b.name(), "echo").unwrap();
    let answer = back.call(|r| ("back".to_string(), r), CALL).await;
    assert_eq!(answer.as_deref(), Ok("echo back"), "{kind:?}: A calls B");

    assert_eq!(a_received.load(Ordering::SeqCst), 1);
    assert_eq!(b_received.load(Ordering::SeqCst), 1);
    assert!(a.stats().rejected.is_empty(), "{:?}", a.stats().rejected);
    assert!(b.stats().rejected.is_empty(), "{:?}", b.stats().rejected);
}

/// `peer` calls `server`'s echo: the call fails with an error other than a timeout, and the
/// echo received nothing.
async fn assert_refused(server: &Node, received: &AtomicUsize, peer: &Node, what: &str) {
    let echo = peer.remote::<Echo>(server.name(), "echo").unwrap();
    let res = echo
        .call(|r| ("intruder".to_string(), r), REFUSED_CALL)
        .await;
    match &res {
        Ok(reply) => panic!("{what}: the call succeeded: {reply:?}"),
        Err(CallError::Timeout(_)) => panic!("{what}: the call was not refused but timed out"),
        Err(e) => println!(
            "{what}: refused: {e}; server rejected {:?}",
            server.stats().rejected
        ),
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "{what}: a request reached the server's echo"
    );
}

async fn certificate_for_another_host_is_refused(kind: Kind) {
    let tmp = TempDir::new("conc-certs-test");
    let certs = Certs::make(&tmp);
    let a = start(kind, HOST_A, certs.identity(HOST_A)).await;
    let received = serve_echo(&a);
    // B is named 127.0.0.2:PORT but presents A's certificate (same CA, host 127.0.0.1).
    let b = start(kind, HOST_B, certs.identity(HOST_A)).await;
    assert_refused(&a, &received, &b, "B with A's certificate").await;
}

async fn certificate_from_another_ca_is_refused(kind: Kind) {
    let tmp = TempDir::new("conc-certs-test");
    let certs = Certs::make(&tmp);
    // A second, independent CA from another run of the tool, with its own certificate for B.
    let other = tmp.path().join("other");
    certs_ok(tmp.path(), &other, &["ca"]);
    certs_ok(tmp.path(), &other, &["node", HOST_B]);
    assert_ne!(
        std::fs::read(certs.ca()).unwrap(),
        std::fs::read(other.join("ca.pem")).unwrap(),
        "the two CAs are the same"
    );
    // B trusts both CAs (so it accepts A's certificate), and presents the other CA's
    // certificate for its own host, which A does not trust.
    let both = tmp.path().join("both-cas.pem");
    let mut pem = std::fs::read_to_string(certs.ca()).unwrap();
    pem.push_str(&std::fs::read_to_string(other.join("ca.pem")).unwrap());
    std::fs::write(&both, pem).unwrap();
    let id = TlsIdentity::from_pem_files(
        &both,
        other.join(format!("{HOST_B}.pem")),
        other.join(format!("{HOST_B}.key")),
    )
    .expect("loading B's identity from the other CA");
    assert_eq!(id.ca.len(), 2);

    let a = start(kind, HOST_A, certs.identity(HOST_A)).await;
    let received = serve_echo(&a);
    let b = start(kind, HOST_B, id).await;
    assert_refused(&a, &received, &b, "B with another CA's certificate").await;
}

macro_rules! both_transports {
    ($($case:ident),* $(,)?) => {
        mod pooled_tcp_tls {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(Kind::PooledTcpTls).await;
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
    nodes_with_tool_certificates_talk,
    certificate_for_another_host_is_refused,
    certificate_from_another_ca_is_refused,
);
