//! The `web_cluster` example as a user meets it: the front and its three worker nodes run as
//! separate OS processes, and simulated browsers (a hand-written HTTP/1.1 client keeping
//! cookies) drive the front. Sessions are spread over the workers and count per session; the
//! sessions of a worker killed with SIGKILL are started again on live workers by the front's
//! supervisor (each browser gets a working page, with a fresh counter and a notice shown once)
//! while the others keep working and new sessions go to the live workers; the worker restarted through
//! `POST /admin/restart/<n>` takes new sessions again; `/stats` shows every node; killing the
//! front takes the workers with it.
//!
//! Also unit tests of the example's hash ring, whose file is included here.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Example, KillOnDrop, Lines, TempCookie};

mod common;

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/examples/web_cluster/ring.rs"]
mod ring;

/// How long the cluster may take to start (it builds nothing; the binary is built first).
const START: Duration = Duration::from_secs(60);
/// How long an HTTP request may take.
const REQUEST: Duration = Duration::from_secs(20);
/// The phrase of the page of a session whose worker is down.
const WORKER_DOWN: &str = "your session's worker is down";

// ---------------------------------------------------------------------------------------------
// The hash ring.

#[test]
fn ring_spreads_keys_over_workers() {
    let ring = ring::Ring::new([0, 1, 2], ring::VNODES);
    let mut counts = [0usize; 3];
    for i in 0..6000 {
        let owner = ring.successors(&format!("session-{i}"))[0];
        counts[owner] += 1;
    }
    for (w, &c) in counts.iter().enumerate() {
        assert!(
            (1200..=2800).contains(&c),
            "worker {w} owns {c} of 6000 keys: {counts:?}"
        );
    }
}

#[test]
fn ring_moves_only_the_keys_of_a_removed_worker() {
    let all = ring::Ring::new([0, 1, 2], ring::VNODES);
    let without_1 = ring::Ring::new([0, 2], ring::VNODES);
    let again = ring::Ring::new([2, 0, 1], ring::VNODES);
    assert_eq!(
        all, again,
        "the ring does not depend on the order workers are added"
    );
    let mut moved = 0;
    for i in 0..3000 {
        let key = format!("{i:032x}");
        let before = all.successors(&key);
        let after = without_1.successors(&key);
        assert_eq!(before.len(), 3);
        assert_eq!(after.len(), 2);
        if before[0] == 1 {
            moved += 1;
            // The key goes to the next live worker on the ring.
            assert_eq!(after[0], before[1], "key {key}");
        } else {
            assert_eq!(
                after[0], before[0],
                "key {key} moved though its worker stayed"
            );
        }
    }
    assert!(moved > 0);
    assert!(ring::Ring::new([], ring::VNODES).successors("x").is_empty());
}

// ---------------------------------------------------------------------------------------------
// The example's binary.

/// The example.
static WEB_CLUSTER: Example = Example::new("web_cluster");

// ---------------------------------------------------------------------------------------------
// The running cluster.

/// A worker as the front printed it: `worker <n> pid <os-pid> <node-uri>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerLine {
    n: usize,
    pid: u32,
    uri: String,
}

fn parse_worker_line(line: &str) -> Option<WorkerLine> {
    let mut words = line.split(' ');
    if words.next()? != "worker" {
        return None;
    }
    let n = words.next()?.parse().ok()?;
    if words.next()? != "pid" {
        return None;
    }
    let pid = words.next()?.parse().ok()?;
    let uri = words.next()?.to_string();
    if !uri.starts_with("conc://127.0.0.1:") || words.next().is_some() {
        return None;
    }
    Some(WorkerLine { n, pid, uri })
}

/// The front process; on drop, it and every worker it printed are killed and the cookie's
/// directory is removed (the front, killed, cannot remove a cookie of its own).
struct Cluster {
    front: Child,
    /// The front's stdout lines, filled by a reader thread (and echoed to the test's stderr).
    lines: Arc<Lines>,
    port: u16,
    /// The cookie's directory, removed when it is dropped, after `drop` killed the processes.
    _cookie: TempCookie,
}

impl Cluster {
    fn start(transport: &str) -> Cluster {
        let cookie = TempCookie::new(&format!("conc-web-cluster-test-{transport}"));
        let mut front = Command::new(WEB_CLUSTER.path())
            .args(["--port", "0", "--transport", transport])
            .arg("--cookie-file")
            .arg(&cookie.path)
            .env_remove(conc_node::COOKIE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the web_cluster front");
        let stdout = front.stdout.take().expect("piped stdout");
        let (lines, _reader) = Lines::read_echoing(stdout, Some("web_cluster"));
        let mut cluster = Cluster {
            front,
            lines,
            port: 0,
            _cookie: cookie,
        };
        const PREFIX: &str = "front listening on http://127.0.0.1:";
        let port = cluster.lines.wait_until(START, |lines| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(PREFIX).and_then(|p| p.parse::<u16>().ok()))
        });
        cluster.port = port.unwrap_or_else(|| {
            panic!(
                "the front did not print `{PREFIX}<port>`; it printed {:?}",
                cluster.lines.snapshot()
            )
        });
        cluster
    }

    /// The worker lines printed so far, in order.
    fn worker_lines(&self) -> Vec<WorkerLine> {
        self.lines
            .snapshot()
            .iter()
            .filter_map(|l| parse_worker_line(l))
            .collect()
    }

    /// The latest line of worker `n`.
    fn worker(&self, n: usize) -> WorkerLine {
        self.worker_lines()
            .into_iter()
            .rev()
            .find(|w| w.n == n)
            .unwrap_or_else(|| panic!("no line for worker {n}"))
    }

    fn browser(&self) -> Browser {
        Browser {
            port: self.port,
            cookies: HashMap::new(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.front.kill();
        let _ = self.front.wait();
        for w in self.worker_lines() {
            kill9(w.pid);
        }
        // `_cookie` is dropped after this: its directory is removed.
    }
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process is gone (or a zombie nobody reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

// ---------------------------------------------------------------------------------------------
// A browser: HTTP/1.1 over TCP, one connection per request, with a cookie jar.

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The text of the element with this id (`<span id="views">3</span>`).
    fn by_id(&self, id: &str) -> Option<&str> {
        let marker = format!("id=\"{id}\">");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('<')?;
        Some(&self.body[start..start + end])
    }

    fn views(&self) -> u64 {
        self.by_id("views")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no view counter in {}", self.short()))
    }

    fn worker(&self) -> usize {
        self.by_id("worker")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no worker number in {}", self.short()))
    }

    /// The body without the style sheet, for messages.
    fn short(&self) -> String {
        let body = match (self.body.find("<main>"), self.body.find("</main>")) {
            (Some(a), Some(b)) if a < b => &self.body[a..b],
            _ => &self.body,
        };
        format!("HTTP {} {body}", self.status)
    }
}

struct Browser {
    port: u16,
    cookies: HashMap<String, String>,
}

impl Browser {
    fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    fn post_form(&mut self, path: &str, form: &str) -> Response {
        self.request("POST", path, Some(form))
    }

    fn request(&mut self, method: &str, path: &str, form: Option<&str>) -> Response {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to front");
        stream.set_read_timeout(Some(REQUEST)).unwrap();
        stream.set_write_timeout(Some(REQUEST)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             User-Agent: conc-test\r\n",
            self.port
        );
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        match form {
            Some(form) => req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
                form.len()
            )),
            None => req.push_str("\r\n"),
        }
        stream.write_all(req.as_bytes()).expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read response");
        let response = parse_response(&raw);
        for (k, v) in &response.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or("");
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() || v.contains("Max-Age=0") {
                        self.cookies.remove(name.trim());
                    } else {
                        self.cookies
                            .insert(name.trim().to_string(), value.trim().to_string());
                    }
                }
            }
        }
        response
    }
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// A browser with its session's worker.
struct Session {
    browser: Browser,
    worker: usize,
    views: u64,
}

impl Session {
    /// Views the page once more and checks that the counter went up by one on the same worker.
    fn view_again(&mut self) {
        let r = self.browser.get("/");
        assert_eq!(r.status, 200, "{}", r.short());
        assert_eq!(r.worker(), self.worker, "the session moved: {}", r.short());
        assert_eq!(r.views(), self.views + 1, "{}", r.short());
        self.views += 1;
    }
}

fn new_session(cluster: &Cluster) -> Session {
    let mut browser = cluster.browser();
    let r = browser.get("/");
    assert_eq!(r.status, 200, "{}", r.short());
    assert!(
        browser.cookies.contains_key("sid"),
        "no sid cookie: {:?}",
        r.headers
    );
    assert_eq!(r.views(), 1, "{}", r.short());
    let worker = r.worker();
    assert_eq!(r.header("x-conc-worker"), Some(worker.to_string().as_str()));
    Session {
        browser,
        worker,
        views: 1,
    }
}

fn scenario(transport: &str) {
    let cluster = Cluster::start(transport);
    let workers: Vec<WorkerLine> = (0..3).map(|n| cluster.worker(n)).collect();
    let mut uris: Vec<&str> = workers.iter().map(|w| w.uri.as_str()).collect();
    uris.sort();
    uris.dedup();
    assert_eq!(
        uris.len(),
        3,
        "three workers with their own nodes: {workers:?}"
    );

    // Sessions, until the victim (worker 1; worker 0 keeps the chat room) and the others have
    // at least two each. Consistent hashing spreads them over all three workers.
    const VICTIM: usize = 1;
    let mut sessions: Vec<Session> = Vec::new();
    while sessions.iter().filter(|s| s.worker == VICTIM).count() < 2
        || sessions.iter().filter(|s| s.worker != VICTIM).count() < 2
        || (0..3).any(|w| !sessions.iter().any(|s| s.worker == w))
    {
        assert!(
            sessions.len() < 60,
            "60 sessions did not reach every worker"
        );
        sessions.push(new_session(&cluster));
    }

    // Each session counts its own views.
    for _ in 0..2 {
        for s in &mut sessions {
            s.view_again();
        }
    }

    // The chat room is shared: a line posted through one session shows in another's page.
    let r = sessions[0]
        .browser
        .post_form("/chat", "line=hello+from+%3Cthe%3E+test");
    assert_eq!(r.status, 303, "{}", r.short());
    let r = sessions[1].browser.get("/");
    sessions[1].views += 1;
    assert_eq!(r.status, 200, "{}", r.short());
    assert!(
        r.body.contains("hello from &lt;the&gt; test"),
        "the posted line is not in another session's page: {}",
        r.short()
    );

    // Kill the victim worker.
    let victim = cluster.worker(VICTIM);
    kill9(victim.pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(victim.pid) {
        assert!(Instant::now() < deadline, "worker {VICTIM} did not die");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Its sessions are started again on live workers by the front's supervisor: each of their
    // browsers gets a working page (same cookie, a fresh counter) that says once that the
    // state was lost. The others keep counting.
    let moved_at = Instant::now();
    for s in &mut sessions {
        if s.worker == VICTIM {
            let r = loop {
                let r = s.browser.get("/");
                if r.status == 200 {
                    break r;
                }
                // A 503 may come while the front waits for the loss to be detected (on QUIC,
                // a silent peer is declared lost after the heartbeat timeout).
                assert_eq!(r.status, 503, "{}", r.short());
                assert!(r.body.contains(WORKER_DOWN), "{}", r.short());
                assert!(
                    moved_at.elapsed() < Duration::from_secs(60),
                    "the session was not started again: {}",
                    r.short()
                );
            };
            assert!(r.body.contains("was lost"), "no notice: {}", r.short());
            assert_eq!(r.views(), 1, "{}", r.short());
            assert_ne!(r.worker(), VICTIM, "{}", r.short());
            assert!(
                r.header("set-cookie").is_none(),
                "the browser keeps its session id: {}",
                r.short()
            );
            s.worker = r.worker();
            s.views = 1;
            // The notice is shown once.
            let r = s.browser.get("/");
            assert_eq!(r.status, 200, "{}", r.short());
            assert!(!r.body.contains("was lost"), "{}", r.short());
            assert_eq!(r.views(), 2, "{}", r.short());
            s.views = 2;
        } else {
            s.view_again();
        }
    }
    println!(
        "the victim's sessions served again after {:?}",
        moved_at.elapsed()
    );

    // New sessions go to the live workers only.
    for _ in 0..12 {
        let s = new_session(&cluster);
        assert_ne!(s.worker, VICTIM, "a new session went to the dead worker");
        sessions.push(s);
    }

    // The front's metrics, in Prometheus's text format: messages to its workers and the
    // duration of its calls to them.
    let mut b = cluster.browser();
    let r = b.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.short());
    assert!(
        r.body
            .contains("conc_messages_sent_total{peer=\"127.0.0.1:"),
        "{}",
        r.body
    );
    assert!(r.body.contains("conc_call_duration_seconds"), "{}", r.body);

    // The stats page shows the dead worker as down and the others with their stats.
    let r = b.get("/stats");
    assert_eq!(r.status, 200, "{}", r.short());
    assert!(r.body.contains("down"), "{}", r.short());
    assert!(
        r.body.contains("/admin/restart/1"),
        "no restart button for the dead worker: {}",
        r.short()
    );

    // Restart it through the front: same port, new process.
    let r = b.post_form(&format!("/admin/restart/{VICTIM}"), "");
    assert_eq!(r.status, 200, "{}", r.short());
    let restarted = r
        .by_id("restarted")
        .and_then(parse_worker_line)
        .unwrap_or_else(|| panic!("no restart line: {}", r.short()));
    assert_eq!(restarted.n, VICTIM);
    assert_eq!(
        restarted.uri, victim.uri,
        "the worker came back on another port"
    );
    assert_ne!(restarted.pid, victim.pid);
    let printed = cluster.lines.wait_until(Duration::from_secs(5), |lines| {
        lines
            .iter()
            .filter_map(|l| parse_worker_line(l))
            .find(|w| *w == restarted)
    });
    assert!(
        printed.is_some(),
        "the front did not print the restarted worker's line"
    );
    // Restarting a running worker is refused.
    let r = b.post_form(&format!("/admin/restart/{VICTIM}"), "");
    assert_eq!(r.status, 409, "{}", r.short());

    // It takes new sessions again.
    let mut back = false;
    for _ in 0..60 {
        let s = new_session(&cluster);
        let on_victim = s.worker == VICTIM;
        sessions.push(s);
        if on_victim {
            back = true;
            break;
        }
    }
    assert!(back, "60 new sessions and none on the restarted worker");

    // One more worker, started by hand with the front as its seed: the front finds it through
    // its member of `web.workers`, probes it, and puts it on the ring; it takes new sessions.
    let front_node = cluster
        .lines
        .snapshot()
        .iter()
        .find_map(|l| {
            l.strip_prefix("front node conc://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("the front's node line");
    let _extra = KillOnDrop(
        Command::new(WEB_CLUSTER.path())
            .args(["--worker", "3", "--listen", "127.0.0.1:0"])
            .args(["--transport", transport, "--seed", &front_node])
            .arg("--cookie-file")
            .arg(&cluster._cookie.path)
            .env_remove(conc_node::COOKIE_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker by hand"),
    );
    // New sessions, until one lands on it (it must first be found and probed).
    let joined_by = Instant::now() + Duration::from_secs(60);
    loop {
        let s = new_session(&cluster);
        let on_extra = s.worker == 3;
        sessions.push(s);
        if on_extra {
            break;
        }
        assert!(
            Instant::now() < joined_by,
            "no new session on the worker started by hand"
        );
    }

    for s in &mut sessions {
        s.view_again();
    }

    // The stats page shows every node, through their conc.admin processes.
    let r = b.get("/stats");
    assert_eq!(r.status, 200, "{}", r.short());
    for w in (0..3).map(|n| cluster.worker(n)) {
        assert!(r.body.contains(&w.uri), "{} missing: {}", w.uri, r.short());
    }
    for name in ["conc.admin", "sessions", "chat"] {
        assert!(r.body.contains(name), "{name} missing: {}", r.short());
    }
    assert!(r.body.contains("Peers of"), "{}", r.short());

    // Killing the front takes the workers with it (they watch their standard input).
    let pids: Vec<u32> = (0..3).map(|n| cluster.worker(n).pid).collect();
    let mut cluster = cluster;
    cluster.front.kill().expect("kill the front");
    let _ = cluster.front.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    for pid in pids {
        while !process_gone(pid) {
            assert!(
                Instant::now() < deadline,
                "worker process {pid} outlived the front"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn web_cluster_on_pooled_tcp() {
    scenario("pooled-tcp");
}

#[test]
fn web_cluster_on_per_message_tcp() {
    scenario("per-message-tcp");
}

#[test]
fn web_cluster_on_quic() {
    if conc_node::transport_names().contains(&"quic") {
        scenario("quic");
    }
}
