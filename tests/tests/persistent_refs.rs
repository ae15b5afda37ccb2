//! Persistent references across OS processes, on every transport: `publish_ref serve` writes
//! the references of its processes to a file; `publish_ref send`, another OS process started
//! later, reads the file and calls `echo`. After the whole server restarts on the same address,
//! the references by name keep working, while a reference by identity to a process of the old
//! incarnation fails cleanly (a clear error, no hang).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use conc_node::{CallError, Node, Pid, Refusal, ReplyTo};

use common::{Example, Proc, TempCookie};

mod common;

/// What `echo` receives (the same type as in the example: tags derive from the type's name).
type Echo = (String, ReplyTo<String>);

/// How long a server may take to start.
const START: Duration = Duration::from_secs(30);
/// A bound against hangs, not a performance bar.
const RUN: Duration = Duration::from_secs(60);
/// The timeout of each call made by this test.
const CALL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The example.

/// The example, with the features of this build's transports.
static PUBLISH_REF: Example = Example::with_transport_features("publish_ref");

/// Starts `publish_ref ARGS` with `HOME` in the temporary directory.
fn spawn(args: &[&str], tmp: &TempCookie) -> Proc {
    Proc::spawn("publish_ref", PUBLISH_REF.path(), args, Some(tmp.dir()))
}

// ---------------------------------------------------------------------------------------------
// The two modes.

/// A running `publish_ref serve`, with what it printed.
struct Server {
    proc: Proc,
    /// `host:port`.
    address: String,
    /// The reference by identity to this run's `echo`.
    echo_by_id: String,
}

impl Server {
    fn start(t: &str, tmp: &TempCookie, listen: &str) -> Server {
        let refs = tmp.file("refs");
        let args = [
            "serve",
            "--listen",
            listen,
            "--refs",
            &refs,
            "--cookie-file",
            tmp.arg(),
            "--transport",
            t,
        ];
        // The address of a killed server may take a moment to be free again.
        let deadline = Instant::now() + START;
        loop {
            let mut proc = spawn(&args, tmp);
            if let Some(uri) = proc.stdout.wait_for_prefix(START, "listening on conc://") {
                let echo_by_id = proc
                    .stdout
                    .wait_for_prefix(START, "pid echo ")
                    .expect("serve prints the echo pid");
                return Server {
                    proc,
                    address: uri.trim().to_string(),
                    echo_by_id,
                };
            }
            let status = proc.wait_exit(RUN);
            assert!(
                Instant::now() < deadline,
                "publish_ref serve ({t}) did not start: {status:?}\n{}",
                proc.report()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `publish_ref send`; returns its exit status, stdout and stderr.
fn send(t: &str, tmp: &TempCookie, text: &str) -> (ExitStatus, String, String) {
    let refs = tmp.file("refs");
    let mut proc = spawn(
        &[
            "send",
            "--refs",
            &refs,
            "--cookie-file",
            tmp.arg(),
            "--transport",
            t,
            text,
        ],
        tmp,
    );
    let Some(status) = proc.wait_exit(RUN) else {
        panic!("publish_ref send ({t}) hung\n{}", proc.report());
    };
    let out = proc.stdout.text();
    let err = proc.stderr.text();
    (status, out, err)
}

/// A node in this test process, with the shared cookie.
async fn test_node(t: &str, tmp: &TempCookie) -> Node {
    common::loopback_node(t)
        .cookie(conc_node::read_cookie_file(&tmp.path).unwrap())
        .start()
        .await
        .unwrap()
}

/// Calls `echo` until it answers (a pooled connection to a server that was restarted may
/// fail once), at most for a bound.
async fn call_until_ok(p: &Pid<Echo>, text: &str) -> String {
    let deadline = Instant::now() + RUN;
    loop {
        match p.call(|r| (text.to_string(), r), CALL).await {
            Ok(answer) => return answer,
            Err(CallError::Timeout(_)) => panic!("call to {p} hung"),
            Err(e) => {
                assert!(Instant::now() < deadline, "{p} never answered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn scenario(t: &str) {
    // The tests crate enables every transport feature of conc-node, so each is compiled in.
    assert!(
        conc_node::transport_names().contains(&t),
        "{t} is not compiled in"
    );
    let rt = common::runtime();
    // Resolving a pid of another node may start transport tasks: inside the runtime.
    let _entered = rt.enter();
    let tmp = TempCookie::new("conc-persistent-refs");

    // One run of the server publishes its references.
    let mut server = Server::start(t, &tmp, "127.0.0.1:0");
    let addr = server.address.clone();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    let refs = std::fs::read_to_string(tmp.file("refs")).unwrap();
    assert_eq!(
        refs,
        format!("conc://{addr}/name/echo\nconc://{addr}/name/logger\n")
    );
    let old_by_id = server.echo_by_id.clone();
    assert!(
        old_by_id.starts_with(&format!("conc://{addr}/")),
        "{old_by_id}"
    );

    // Another program, started later, uses them.
    let (status, out, err) = send(t, &tmp, "hello, stored reference");
    assert!(status.success(), "send ({t}) failed: {err}");
    assert_eq!(out, "hello, stored reference");

    // The reference by identity works while its incarnation lives.
    let node = rt.block_on(test_node(t, &tmp));
    let by_name: Pid<Echo> = node.resolve(&format!("conc://{addr}/name/echo")).unwrap();
    let by_id: Pid<Echo> = node.resolve(&old_by_id).unwrap();
    rt.block_on(async {
        assert_eq!(call_until_ok(&by_id, "by id").await, "by id");
        assert_eq!(call_until_ok(&by_name, "by name").await, "by name");
    });

    // The whole server restarts, on the same address: a new incarnation.
    server.proc.kill();
    let server = Server::start(t, &tmp, &addr);
    assert_eq!(server.address, addr);
    assert_ne!(server.echo_by_id, old_by_id, "a new incarnation");
    let refs_again = std::fs::read_to_string(tmp.file("refs")).unwrap();
    assert_eq!(refs_again, refs, "the references by name are the same");

    // A later program uses the stored reference by name: it still works.
    let (status, out, err) = send(t, &tmp, "after the restart");
    assert!(
        status.success(),
        "send ({t}) after the restart failed: {err}"
    );
    assert_eq!(out, "after the restart");

    rt.block_on(async {
        // So does the pid by name held across the restart, and the logger's reference.
        assert_eq!(call_until_ok(&by_name, "again").await, "again");
        let logger: Pid<String> = node.resolve(&format!("conc://{addr}/name/logger")).unwrap();
        logger.send("stored logger works".to_string()).unwrap();

        // The pid of the old incarnation fails cleanly: refused, neither delivered nor hung.
        let deadline = Instant::now() + RUN;
        for p in [by_id.clone(), node.resolve::<Echo>(&old_by_id).unwrap()] {
            loop {
                let started = Instant::now();
                match p.call(|r| ("old".to_string(), r), CALL).await {
                    Ok(answer) => panic!("a pid of the old incarnation answered {answer:?}"),
                    Err(CallError::Refused {
                        reason: Refusal::NoSuchProcess,
                        ..
                    }) => {
                        assert!(started.elapsed() < CALL);
                        break;
                    }
                    Err(CallError::Timeout(_)) => panic!("a call to the old pid hung"),
                    // A connection to the old server may still be failing.
                    Err(e) => {
                        assert!(Instant::now() < deadline, "unexpected error: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    assert!(
        server
            .proc
            .stdout
            .wait_for_prefix(RUN, "log: stored logger works")
            .is_some(),
        "the logger got the message\n{}",
        server.proc.report()
    );

    // With the server gone, `send` fails cleanly: exit status 1 and a message, no hang.
    drop(server);
    let (status, out, err) = send(t, &tmp, "anyone there?");
    assert_eq!(status.code(), Some(1), "{out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("error:"), "{err}");
    rt.block_on(node.shutdown());
}

#[test]
fn per_message_tcp() {
    scenario("per-message-tcp");
}

#[test]
fn pooled_tcp() {
    scenario("pooled-tcp");
}

#[test]
fn pooled_tcp_tls() {
    scenario("pooled-tcp-tls");
}

#[test]
fn quic() {
    scenario("quic");
}

/// `send` with a refs file that holds no reference to `echo`, or that does not exist, fails
/// with exit status 1 and a message.
#[test]
fn send_without_a_reference_fails() {
    let tmp = TempCookie::new("conc-persistent-refs");
    std::fs::write(
        tmp.file("refs"),
        "conc://127.0.0.1:1/name/logger\nnot a uri\n",
    )
    .unwrap();
    let (status, _, err) = send("pooled-tcp", &tmp, "x");
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("no reference to echo"), "{err}");
    std::fs::remove_file(tmp.file("refs")).unwrap();
    let (status, _, err) = send("pooled-tcp", &tmp, "x");
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("cannot read"), "{err}");
}
