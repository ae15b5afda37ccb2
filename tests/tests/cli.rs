//! The node's admin process (`conc_node::admin`) and the `conc` operator CLI example that talks
//! to it: a node started in this test process serves `conc.admin`; the CLI runs as a child
//! process with the node's cookie and lists names, peers and stats and sends strings.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use conc_node::admin::{self, ADMIN_NAME, AdminRequest, StatsReport};
use conc_node::server::{Server, ServerContext, ServerMsg, ServerRef};
use conc_node::supervisor::{
    ChildPid, ChildSpec, DynamicSpec, DynamicSupervisor, Strategy, SupervisorSpec,
};
use conc_node::{Inbox, Node, Pid, RegisterError, ReplyTo};
use tokio::sync::mpsc;

use common::{Example, TempCookie};

mod common;

const CALL: Duration = Duration::from_secs(5);

/// A node on `transport` with the cookie of `cookie`, serving `conc.admin` if `admin`, with a
/// `logger` (strings, forwarded to the returned channel) and a `counter` (u64).
async fn target_node(
    transport: &str,
    cookie: &TempCookie,
    admin: bool,
) -> (Node, mpsc::UnboundedReceiver<String>) {
    let node = common::loopback_node(transport)
        .cookie_file(&cookie.path)
        .start()
        .await
        .unwrap();
    if admin {
        admin::serve(&node).unwrap();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let logger = node.spawn(move |mut inbox: Inbox<String>| async move {
        while let Some(line) = inbox.recv().await {
            let _ = tx.send(line);
        }
    });
    node.register("logger", &logger).unwrap();
    let counter =
        node.spawn(|mut inbox: Inbox<u64>| async move { while inbox.recv().await.is_some() {} });
    node.register("counter", &counter).unwrap();
    (node, rx)
}

// ---------------------------------------------------------------------------------------------
// The admin process, called from another node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_stats_names_and_sends_strings() {
    for transport in conc_node::transport_names() {
        let cookie = TempCookie::new("conc-cli-test");
        let (node, mut logged) = target_node(transport, &cookie, true).await;
        // The name is taken now.
        assert!(matches!(admin::serve(&node), Err(RegisterError::Taken(_))));

        let operator = common::loopback_node(transport)
            .cookie_file(&cookie.path)
            .start()
            .await
            .unwrap();
        let remote = operator
            .remote::<AdminRequest>(node.name(), ADMIN_NAME)
            .unwrap();

        let names = remote.call(AdminRequest::Names, CALL).await.unwrap();
        assert_eq!(
            names,
            vec!["conc.admin", "counter", "logger"],
            "{transport}"
        );

        let sent = remote
            .call(
                |reply| AdminRequest::SendString {
                    name: "logger".into(),
                    text: "hello".into(),
                    reply,
                },
                CALL,
            )
            .await
            .unwrap();
        assert_eq!(sent, Ok(()));
        let got = tokio::time::timeout(CALL, logged.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some("hello"));

        let unknown = remote
            .call(
                |reply| AdminRequest::SendString {
                    name: "nobody".into(),
                    text: "x".into(),
                    reply,
                },
                CALL,
            )
            .await
            .unwrap();
        let e = unknown.unwrap_err();
        assert!(e.contains("no process registered as \"nobody\""), "{e}");

        let mistyped = remote
            .call(
                |reply| AdminRequest::SendString {
                    name: "counter".into(),
                    text: "x".into(),
                    reply,
                },
                CALL,
            )
            .await
            .unwrap();
        let e = mistyped.unwrap_err();
        assert!(e.contains("receives u64, not String"), "{e}");

        let report = remote.call(AdminRequest::Stats, CALL).await.unwrap();
        assert_eq!(report.name, node.name());
        assert_eq!(report.transport, transport);
        assert_eq!(report.incarnation, node.incarnation());
        assert_eq!(report.registered, names);
        assert!(report.processes >= 3, "{report:?}");
        let now = admin::epoch_seconds(std::time::SystemTime::now());
        assert!(report.taken_at <= now && report.taken_at + 60 > now);
        let me = report
            .peers
            .iter()
            .find(|p| p.name == operator.name())
            .unwrap_or_else(|| panic!("the operator is not a peer: {report:?}"));
        assert!(me.msgs_in >= 5, "{me:?}");
        assert!(me.msgs_out >= 4, "{me:?}");
        assert!(me.bytes_out > 0, "{me:?}");
        if transport != "per-message-tcp" {
            let since = me.connected_since.expect("a long-lived connection");
            assert!(since <= now && since + 60 > now, "{me:?}");
        }
        // The report is the node's own snapshot, converted.
        let local = StatsReport::of(&node);
        assert_eq!(local.name, report.name);
        assert_eq!(local.registered, report.registered);

        operator.shutdown().await;
        node.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI.

/// The `conc` example (the operator CLI).
static CONC: Example = Example::new("conc");

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the CLI against `node` (the binary is built on a blocking thread the first time).
async fn cli(node: &str, transport: &str, cookie: &Path, args: &[&str]) -> Run {
    let binary = tokio::task::spawn_blocking(|| CONC.path()).await.unwrap();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(["--node", node, "--transport", transport, "--timeout", "3"])
        .arg("--cookie-file")
        .arg(cookie)
        .args(args)
        .env_remove(conc_node::COOKIE_ENV)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the CLI finished within a minute")
        .expect("run the CLI");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_names_peers_and_stats_and_sends() {
    for transport in conc_node::transport_names() {
        let cookie = TempCookie::new("conc-cli-test");
        let (node, mut logged) = target_node(transport, &cookie, true).await;
        let uri = node.uri();

        let run = cli(&uri, transport, &cookie.path, &["names"]).await;
        assert_eq!(run.code, Some(0), "{transport}: {}", run.stderr);
        assert_eq!(run.stdout, "conc.admin\ncounter\nlogger\n", "{transport}");

        let run = cli(node.name(), transport, &cookie.path, &["stats"]).await;
        assert_eq!(run.code, Some(0), "{transport}: {}", run.stderr);
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[0], format!("node {}", node.name()));
        assert!(lines.contains(&format!("transport {transport}").as_str()));
        assert!(
            lines.contains(&"registered conc.admin counter logger"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("processes ")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("dead_letters ")),
            "{lines:?}"
        );
        // The CLI's own node is a peer while it asks (and the earlier run's, from before).
        assert!(
            lines.iter().any(|l| l.starts_with("peer ")),
            "{transport}: {lines:?}"
        );

        let run = cli(&uri, transport, &cookie.path, &["peers"]).await;
        assert_eq!(run.code, Some(0), "{transport}: {}", run.stderr);
        let mut lines = run.stdout.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("PEER"), "{header}");
        assert!(header.contains("MSGS IN"), "{header}");
        assert!(lines.next().is_some(), "no peer: {}", run.stdout);

        let run = cli(
            &uri,
            transport,
            &cookie.path,
            &["send", "logger", "hello from the CLI"],
        )
        .await;
        assert_eq!(run.code, Some(0), "{transport}: {}", run.stderr);
        assert_eq!(run.stdout, "sent to logger\n");
        let got = tokio::time::timeout(CALL, logged.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some("hello from the CLI"));

        let run = cli(&uri, transport, &cookie.path, &["send", "nobody", "x"]).await;
        assert_eq!(run.code, Some(1), "{transport}: {}", run.stdout);
        assert!(
            run.stderr.contains("no process registered as \"nobody\""),
            "{}",
            run.stderr
        );

        let run = cli(&uri, transport, &cookie.path, &["send", "counter", "x"]).await;
        assert_eq!(run.code, Some(1), "{transport}: {}", run.stdout);
        assert!(run.stderr.contains("receives u64"), "{}", run.stderr);

        // Another cookie: the node refuses the connection, the CLI fails (no hang).
        let wrong = TempCookie::new("conc-cli-test");
        let started = Instant::now();
        let run = cli(&uri, transport, &wrong.path, &["names"]).await;
        assert_eq!(run.code, Some(1), "{transport}: {}", run.stdout);
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        assert!(started.elapsed() < Duration::from_secs(30));

        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_explains_a_node_without_admin_and_bad_usage() {
    let cookie = TempCookie::new("conc-cli-test");
    let (node, _logged) = target_node("pooled-tcp", &cookie, false).await;
    let run = cli(node.name(), "pooled-tcp", &cookie.path, &["names"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.stderr.contains("admin::serve"), "{}", run.stderr);

    let run = cli(node.name(), "pooled-tcp", &cookie.path, &["frobnicate"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    node.shutdown().await;

    // Nobody listens there any more.
    let run = cli(node.name(), "pooled-tcp", &cookie.path, &["stats"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stdout);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// Supervision trees, through the admin process and the CLI.

/// A server that counts the calls it answers (serializable types: callable from other nodes).
struct Counter(u64);

impl Server for Counter {
    type Call = ();
    type Reply = u64;
    type Cast = ();
    type Info = ();

    async fn handle_call(&mut self, _: (), _ctx: &mut ServerContext<Self>) -> u64 {
        self.0 += 1;
        self.0
    }
}

type Echo = (String, ReplyTo<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_shows_supervision_trees_with_restarts() {
    let transport = "pooled-tcp";
    let cookie = TempCookie::new("conc-cli-test");
    let (node, _logged) = target_node(transport, &cookie, true).await;
    let rt = node.runtime().clone();

    // app (one_for_one): echo (a named worker), counter (a named server), sessions (dynamic).
    let server_rt = rt.clone();
    let sessions_rt = rt.clone();
    let sessions = DynamicSpec::new(move |_user: String| {
        let pid = sessions_rt
            .spawn(|mut inbox: Inbox<u64>| async move { while inbox.recv().await.is_some() {} });
        async move { Ok(ChildPid::from(pid)) }
    });
    let app = SupervisorSpec::new(Strategy::OneForOne)
        .name("app")
        .intensity(3, Duration::from_secs(60))
        .child(
            ChildSpec::worker("echo", &rt, |mut inbox: Inbox<Echo>| async move {
                while let Some((text, reply)) = inbox.recv().await {
                    let _ = reply.send(text);
                }
            })
            .name("echo"),
        )
        .child(
            ChildSpec::new("counter", move || {
                let rt = server_rt.clone();
                async move { Ok(ServerRef::start(&rt, Counter(0)).await?.into()) }
            })
            .name("counter.srv"),
        )
        .child(sessions.into_child("sessions", &rt))
        .start(&rt)
        .await
        .unwrap();
    let children = app.which_children(CALL).await.unwrap();
    let dynamic = DynamicSupervisor::<String>::from_pid(
        children[2]
            .supervisor
            .clone()
            .expect("sessions is a supervisor"),
    );
    dynamic.start_child("ann".into()).await.unwrap();
    dynamic.start_child("bob".into()).await.unwrap();

    // Crash the echo worker: the supervisor restarts it under its name.
    let first = node.whereis::<Echo>("echo").unwrap();
    first.kill();
    let restarted = tokio::time::timeout(CALL, async {
        loop {
            let c = app.which_children(CALL).await.unwrap();
            if c[0].restarts == 1 && c[0].process.is_some() {
                return c[0].process.unwrap();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("echo restarted");

    // Another node reaches the restarted worker by name, and calls the server.
    let operator = common::loopback_node(transport)
        .cookie_file(&cookie.path)
        .start()
        .await
        .unwrap();
    let echo = operator.remote::<Echo>(node.name(), "echo").unwrap();
    let said = echo
        .call(|reply| ("still here".to_string(), reply), CALL)
        .await
        .unwrap();
    assert_eq!(said, "still here");
    let counter = ServerRef::<Counter>::from_pid(
        operator
            .remote::<ServerMsg<Counter>>(node.name(), "counter.srv")
            .unwrap(),
    );
    assert_eq!(counter.call((), CALL).await.unwrap(), 1);
    assert_eq!(counter.call((), CALL).await.unwrap(), 2);

    // The admin process reports the tree to the operator node.
    let admin = operator
        .remote::<AdminRequest>(node.name(), ADMIN_NAME)
        .unwrap();
    let trees = admin.call(AdminRequest::Supervisors, CALL).await.unwrap();
    assert_eq!(trees.len(), 1, "{trees:?}");
    let tree = &trees[0];
    assert_eq!(tree.supervisor.name.as_deref(), Some("app"));
    let ids: Vec<&str> = tree
        .supervisor
        .children
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["echo", "counter", "sessions"]);
    assert_eq!(tree.supervisor.children[0].process, Some(restarted));
    assert_eq!(tree.supervisor.children[0].restarts, 1);
    assert_eq!(tree.supervisor.restarts, 1);
    let sub = tree.subtrees[2].as_ref().expect("the sessions subtree");
    assert!(sub.supervisor.dynamic);
    assert_eq!(sub.supervisor.children.len(), 2);

    // The CLI prints it.
    let run = cli(node.name(), transport, &cookie.path, &["supervisors"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("app <"), "{lines:?}");
    assert!(lines[0].contains("OneForOne restarts=1"), "{lines:?}");
    let echo_line = format!("  echo Running conc://{}/", node.name());
    assert!(
        lines[1].starts_with(&echo_line) && lines[1].contains("restarts=1 Permanent name=echo"),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("  counter Running"), "{lines:?}");
    assert!(lines[3].starts_with("  sessions Running"), "{lines:?}");
    assert!(lines[3].contains("supervisor"), "{lines:?}");
    assert!(lines[4].starts_with("    1 Running"), "{lines:?}");
    assert!(lines[5].starts_with("    2 Running"), "{lines:?}");
    assert_eq!(lines.len(), 6, "{lines:?}");

    // Without supervisors, the CLI says so.
    app.stop(CALL).await.unwrap();
    let run = cli(node.name(), transport, &cookie.path, &["supervisors"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "no registered supervisors\n");

    operator.shutdown().await;
    node.shutdown().await;
}

/// A child on another node: the start function asks a spawner process there for a new worker
/// (user code, not conc's remote spawn); the supervisor links to the remote pid, restarts the
/// child when it is killed there, shows its `conc://` URI, and kills it when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_restarts_a_child_on_another_node() {
    let transport = "pooled-tcp";
    let cookie = TempCookie::new("conc-cli-test");
    let (home, _logged) = target_node(transport, &cookie, true).await;
    let away = common::loopback_node(transport)
        .cookie_file(&cookie.path)
        .start()
        .await
        .unwrap();
    let away2 = away.clone();
    let spawner = away.spawn(move |mut inbox: Inbox<ReplyTo<Pid<u64>>>| async move {
        while let Some(reply) = inbox.recv().await {
            let worker = away2.spawn(|mut inbox: Inbox<u64>| async move {
                while inbox.recv().await.is_some() {}
            });
            let _ = reply.send(worker);
        }
    });
    away.register("spawner", &spawner).unwrap();

    let home2 = home.clone();
    let away_name = away.name().to_string();
    let sup = SupervisorSpec::new(Strategy::OneForOne)
        .name("remote.app")
        .child(ChildSpec::new("far", move || {
            let spawner = home2
                .remote::<ReplyTo<Pid<u64>>>(&away_name, "spawner")
                .unwrap();
            async move {
                let worker = spawner.call(|reply| reply, CALL).await?;
                Ok(ChildPid::from(worker))
            }
        }))
        .start(home.runtime())
        .await
        .unwrap();
    let first = sup.which_children(CALL).await.unwrap().remove(0);
    let uri = first.uri.clone().unwrap();
    assert!(
        uri.starts_with(&format!("conc://{}/", away.name())),
        "{uri}"
    );
    let first_id = first.process.unwrap();
    assert_eq!(first_id.incarnation, away.incarnation());

    // Killed on its own node: the exit reaches the supervisor through the link.
    let worker = away.resolve::<u64>(&uri).unwrap();
    assert!(worker.is_local());
    worker.kill();
    let second = tokio::time::timeout(CALL, async {
        loop {
            let c = sup.which_children(CALL).await.unwrap().remove(0);
            if c.restarts == 1 && c.process.is_some() {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the remote child restarted");
    assert_ne!(second.process, Some(first_id));

    let run = cli(home.name(), transport, &cookie.path, &["supervisors"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("remote.app <"), "{lines:?}");
    assert!(
        lines[1].starts_with(&format!("  far Running conc://{}/", away.name()))
            && lines[1].contains("restarts=1"),
        "{lines:?}"
    );

    // Asked from another node, the supervisor answers everything but start_child.
    let from_away = conc_node::supervisor::Supervisor::from_pid(
        away.remote::<conc_node::supervisor::SupervisorRequest>(home.name(), "remote.app")
            .unwrap(),
    );
    assert_eq!(from_away.count_children(CALL).await.unwrap().active, 1);
    assert!(matches!(
        from_away
            .start_child(ChildSpec::new("nope", || async {
                Err(conc_node::supervisor::StartError::NoProcessId)
            }))
            .await,
        Err(conc_node::supervisor::StartError::NotLocal)
    ));

    // Stopping the supervisor stops the remote child in order: the shutdown exit signal
    // crosses nodes, and a child that does not trap exits ends with it.
    let second_pid = home.resolve::<u64>(second.uri.as_deref().unwrap()).unwrap();
    let down = home.runtime().monitor(&second_pid);
    sup.stop(CALL).await.unwrap();
    let down = tokio::time::timeout(CALL, down).await.unwrap();
    assert_eq!(down.reason, conc_node::ExitReason::Shutdown);

    away.shutdown().await;
    home.shutdown().await;
}
