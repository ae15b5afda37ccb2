//! The front's state: the worker processes it started and how it sees them (up or down), the
//! hash ring over the live ones, and the table of browser sessions (session id → the pid of the
//! session process on its worker).
//!
//! A worker is marked down when its OS process exits, when the node reports it down
//! (`NodeEvent::Down`), or when a call to it fails for want of a connection (a probe that
//! merely times out does not count: the node itself reports silent peers down); it is marked up
//! again when a probe (a call to its `sessions` process, every [`PROBE_EVERY`], and at once on
//! `NodeEvent::Up`) is answered. Each worker's `sessions` process is a member of the process
//! group `web.workers` (`conc_cluster::pg`): a worker whose member leaves the group (the process
//! exited, or its node went down) is marked down at once, and a member that joins is probed.
//! Only workers marked up are on the ring, so new sessions go to live workers only.
//!
//! Session processes are children of the front's dynamic supervisor `web.sessions`
//! (`conc_node::supervisor`, Erlang's `simple_one_for_one`), placed on their worker with
//! `conc_cluster::spawn` (kind `session`, [`conc_cluster::spawn::Spawner::start_child_on`]):
//! the supervisor is linked to each one across nodes. When a worker is lost, the link's exit
//! (`NoConnection`) reaches the supervisor for each of its sessions, and the supervisor starts
//! each again on the next live worker of the session's place on the ring: same session id,
//! same browser cookie, fresh state (the new process says so on its first page). A request that
//! finds its session's worker gone waits (at most [`RESTART_WAIT`]) for that replacement
//! instead of failing.
//!
//! All nodes form one cluster (`conc_cluster::membership`, the front is the workers' seed), so
//! every worker is connected to every other and the chat room's cluster-wide name
//! (`conc_cluster::global`) is known everywhere.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use conc_cluster::global::Global;
use conc_cluster::membership::{Cluster, ClusterConfig};
use conc_cluster::pg::{Pg, PgEvent};
use conc_cluster::spawn::Spawner;
use conc_node::supervisor::{
    Backoff, ChildPid, DynamicSpec, DynamicSupervisor, Restart, Shutdown, StartError,
};
use conc_node::{CallError, ExitReason, Node, NodeEvent, Pid, RemoteError, SendErrorKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::msgs::{
    SESSION_KIND, SESSIONS, SessionArgs, SessionRequest, SessionsRequest, WORKERS_GROUP,
};
use crate::ring::{Ring, VNODES};

/// How often each worker is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe waits.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for its session process.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker may take to print `ready`.
const WORKER_START: Duration = Duration::from_secs(30);
/// How long a (re)start waits for the new worker to answer a probe.
const UP_WAIT: Duration = Duration::from_secs(10);
/// How long a stopped worker may take to exit before it is killed.
const WORKER_STOP: Duration = Duration::from_secs(3);
/// Sessions the front keeps at most; beyond it, sessions idle for [`SESSION_IDLE`] are
/// forgotten, and if that is not enough new sessions are refused.
const MAX_SESSIONS: usize = 100_000;
/// A session unused this long may be forgotten (its process on the worker ends on its own).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// How long a request whose session's worker is lost waits for the supervisor to start the
/// session again on a live worker, before it answers 503.
pub(crate) const RESTART_WAIT: Duration = Duration::from_secs(4);
/// The sessions' supervisor: restarts allowed per [`SESSION_RESTART_PERIOD`]. A lost worker
/// restarts all of its sessions at once, so the bound is far above one worker's share; beyond
/// it the supervisor gives up (Erlang's restart intensity) and every session is lost.
const SESSION_RESTARTS: u32 = 1_000_000;
/// See [`SESSION_RESTARTS`].
const SESSION_RESTART_PERIOD: Duration = Duration::from_secs(10);

/// What the sessions' dynamic supervisor starts a session with (the same for every restart).
#[derive(Debug, Clone)]
pub(crate) struct SessionStart {
    /// The browser's session id (the key on the ring).
    sid: String,
    /// The session's chat name.
    nick: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the front is started with.
#[derive(Debug, Clone)]
pub(crate) struct FrontConfig {
    /// Worker nodes to run.
    pub(crate) workers: usize,
    /// The transport's name, passed to the workers.
    pub(crate) transport: String,
    /// The cookie file, passed to the workers.
    pub(crate) cookie_file: PathBuf,
    /// This program, re-executed with `--worker N` for each worker.
    pub(crate) exe: PathBuf,
}

/// The front's view of one worker.
#[derive(Default)]
struct Slot {
    /// Its node's address (`host:port`), known once it first started; restarts reuse it.
    addr: Option<String>,
    /// The OS pid of the worker process the front runs, while it runs.
    os_pid: Option<u32>,
    /// Stops that process.
    stop: Option<oneshot::Sender<()>>,
    /// Which start of the worker `os_pid` belongs to (exit reports of older ones are ignored).
    generation: u64,
    /// Whether it is on the ring.
    up: bool,
    /// Bumped each time the worker is marked down: a probe begun before cannot mark it up.
    downs: u64,
    /// When `up` last changed.
    since: Option<SystemTime>,
    /// Why it was last marked down.
    reason: Option<String>,
    /// Started by hand, not by the front (it answers probes under its own number).
    adopted: bool,
}

/// A worker as shown on the pages.
#[derive(Debug, Clone)]
pub(crate) struct WorkerStatus {
    /// Its number.
    pub(crate) n: usize,
    /// Its node's address.
    pub(crate) addr: Option<String>,
    /// The OS pid of the process the front runs.
    pub(crate) os_pid: Option<u32>,
    /// On the ring.
    pub(crate) up: bool,
    /// Since when.
    pub(crate) since: Option<SystemTime>,
    /// Why it is down.
    pub(crate) reason: Option<String>,
}

/// A browser session: where its process is.
#[derive(Clone)]
pub(crate) struct SessionEntry {
    /// The worker it lives on.
    pub(crate) worker: usize,
    /// Its process.
    pub(crate) pid: Pid<SessionRequest>,
    last_used: Instant,
}

/// The front.
pub(crate) struct Front {
    /// The front's node.
    pub(crate) node: Node,
    /// The front's pg scope (it joins no group; it follows `web.workers`).
    pg: Pg,
    /// Spawns session processes on the workers.
    spawner: Spawner,
    /// The cluster the workers join, with the front as their seed.
    _cluster: Cluster,
    /// The front's view of the cluster-wide names (the chat room's, `web.chat`).
    _global: Global,
    /// The sessions' dynamic supervisor (set once, right after the front is made).
    sessions_sup: std::sync::OnceLock<DynamicSupervisor<SessionStart>>,
    /// Told whenever a session's entry is replaced (a session started again elsewhere).
    replaced: tokio::sync::Notify,
    cfg: FrontConfig,
    /// One per worker: those it starts (`0..workers`), then workers started by hand that
    /// joined the group `web.workers` (adopted).
    slots: std::sync::RwLock<Vec<Arc<Mutex<Slot>>>>,
    ring: Mutex<Ring>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// One (re)start at a time.
    starting: tokio::sync::Mutex<()>,
    stopping: std::sync::atomic::AtomicBool,
}

/// Whether a failed call means that the callee's node cannot be reached.
pub(crate) fn is_connection_error(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Exited(ExitReason::NoConnection)
            | CallError::Send(SendErrorKind::Remote(
                RemoteError::Connection { .. } | RemoteError::ShuttingDown
            ))
    )
}

/// A fresh random hex string of `bytes` random bytes.
pub(crate) fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `sid` looks like a session id this front hands out (32 lowercase hex digits).
pub(crate) fn valid_sid(sid: &str) -> bool {
    sid.len() == 32
        && sid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Front {
    /// Starts the workers one after the other and the tasks that watch them. On failure every
    /// worker started is stopped again.
    pub(crate) async fn start(node: Node, cfg: FrontConfig) -> Result<Arc<Front>, String> {
        let pg = Pg::start(&node).map_err(|e| format!("cannot start pg: {e}"))?;
        let global = Global::start(&node).map_err(|e| format!("cannot start global: {e}"))?;
        let cluster = Cluster::start(&node, ClusterConfig::new())
            .map_err(|e| format!("cannot start the cluster membership: {e}"))?;
        let spawner = Spawner::new(&node).with_timeout(CALL_TIMEOUT);
        let front = Arc::new(Front {
            node,
            pg,
            spawner,
            _cluster: cluster,
            _global: global,
            sessions_sup: std::sync::OnceLock::new(),
            replaced: tokio::sync::Notify::new(),
            slots: std::sync::RwLock::new((0..cfg.workers).map(|_| Arc::default()).collect()),
            cfg,
            ring: Mutex::default(),
            sessions: Mutex::default(),
            starting: tokio::sync::Mutex::new(()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&front);
        let sup = DynamicSpec::new(move |start: SessionStart| {
            let front = weak.upgrade();
            async move {
                match front {
                    Some(front) => front.start_session(start).await,
                    None => Err(StartError::NoNode),
                }
            }
        })
        // A session that ends normally (idle) stays ended; one whose worker was lost
        // (`NoConnection`) or that crashed is started again.
        .restart(Restart::Transient)
        .shutdown(Shutdown::Timeout(Duration::from_secs(2)))
        .intensity(SESSION_RESTARTS, SESSION_RESTART_PERIOD)
        // A restart that finds no live worker is tried again, at most every 2 s.
        .backoff(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        })
        .name("web.sessions")
        .start(front.node.runtime())
        .await
        .map_err(|e| format!("cannot start the sessions' supervisor: {e}"))?;
        let _ = front.sessions_sup.set(sup);
        for n in 0..front.worker_count() {
            if let Err(e) = front.start_worker(n).await {
                front.shutdown().await;
                return Err(e);
            }
        }
        tokio::spawn(watch_events(front.clone()));
        tokio::spawn(watch_group(front.clone()));
        for n in 0..front.worker_count() {
            tokio::spawn(probe_loop(front.clone(), n));
        }
        Ok(front)
    }

    /// The number of workers.
    pub(crate) fn worker_count(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Starts worker `n` (again, on its old address if it had one) unless its process runs.
    /// Returns its OS pid and node URI, and prints `worker <n> pid <os-pid> <node-uri>`.
    pub(crate) async fn start_worker(self: &Arc<Self>, n: usize) -> Result<(u32, String), String> {
        let _one_at_a_time = self.starting.lock().await;
        let slot = self.slot(n).ok_or_else(|| format!("no worker {n}"))?;
        let listen = {
            let s = lock(&slot);
            if let Some(pid) = s.os_pid {
                return Err(format!("worker {n} is running (pid {pid})"));
            }
            s.addr.clone().unwrap_or_else(|| "127.0.0.1:0".to_string())
        };
        let peers: Vec<String> = (0..self.worker_count())
            .filter(|&m| m != n)
            .filter_map(|m| self.addr(m))
            .collect();
        let mut cmd = Command::new(&self.cfg.exe);
        for peer in &peers {
            cmd.arg("--peer").arg(peer);
        }
        cmd.arg("--worker")
            .arg(n.to_string())
            .arg("--listen")
            .arg(&listen)
            .arg("--transport")
            .arg(&self.cfg.transport)
            .arg("--cookie-file")
            .arg(&self.cfg.cookie_file)
            .arg("--seed")
            .arg(self.node.name())
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker {n}: {e}"))?;
        let os_pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("worker {n}: no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(WORKER_START, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(uri) = line.strip_prefix("ready ") {
                            return Ok(uri.trim().to_string());
                        }
                    }
                    Ok(None) => return Err(format!("worker {n} exited before it was ready")),
                    Err(e) => return Err(format!("worker {n}: cannot read its output: {e}")),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("worker {n} was not ready within {WORKER_START:?}")));
        let uri = match ready {
            Ok(uri) => uri,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        let addr = uri.strip_prefix("conc://").unwrap_or(&uri).to_string();

        let (stop_tx, stop_rx) = oneshot::channel();
        let generation = {
            let mut s = lock(&slot);
            s.addr = Some(addr.clone());
            s.os_pid = Some(os_pid);
            s.stop = Some(stop_tx);
            s.generation += 1;
            s.generation
        };
        // Whatever else the worker prints is read and dropped, so it never blocks on a pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // The worker runs until it exits or is stopped; its standard input stays open till then
        // (a worker exits when it closes, so workers never outlive the front).
        let front = self.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = stop_rx => {
                    drop(stdin);
                    match tokio::time::timeout(WORKER_STOP, child.wait()).await {
                        Ok(status) => status,
                        Err(_) => {
                            let _ = child.kill().await;
                            child.wait().await
                        }
                    }
                }
            };
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            front.exited(n, generation, os_pid, how);
        });

        crate::say(&format!("worker {n} pid {os_pid} {uri}"));
        // Wait (bounded) until a probe reaches it: after a restart the front's node may still
        // be backing off from the failed connects to the dead worker (up to 5 s).
        let deadline = Instant::now() + UP_WAIT;
        loop {
            self.probe(n).await;
            if self.is_up(n) || Instant::now() >= deadline || lock(&slot).os_pid != Some(os_pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((os_pid, uri))
    }

    /// The worker's process exited.
    fn exited(&self, n: usize, generation: u64, os_pid: u32, how: String) {
        {
            let Some(slot) = self.slot(n) else { return };
            let mut s = lock(&slot);
            if s.generation != generation {
                return;
            }
            s.os_pid = None;
            s.stop = None;
        }
        if !self.is_stopping() {
            crate::note(&format!("worker {n} (pid {os_pid}) exited: {how}"));
        }
        self.mark_down(n, format!("its process exited ({how})"));
    }

    /// Takes worker `n` off the ring.
    pub(crate) fn mark_down(&self, n: usize, reason: String) {
        let changed = {
            let Some(slot) = self.slot(n) else { return };
            let mut s = lock(&slot);
            s.downs += 1;
            let changed = s.up;
            if changed {
                s.up = false;
                s.since = Some(SystemTime::now());
                s.reason = Some(reason.clone());
            } else if s.reason.is_none() {
                s.reason = Some(reason.clone());
            }
            changed
        };
        if changed {
            self.rebuild_ring();
            if !self.is_stopping() {
                crate::note(&format!("worker {n} down: {reason}"));
            }
        }
    }

    /// Puts worker `n` on the ring, unless it was marked down after `downs` was read.
    fn mark_up(&self, n: usize, downs: u64) {
        let changed = {
            let Some(slot) = self.slot(n) else { return };
            let mut s = lock(&slot);
            if s.up || s.downs != downs {
                None
            } else {
                s.up = true;
                s.since = Some(SystemTime::now());
                // Whether it had been down (rather than just started).
                Some(s.reason.take().is_some())
            }
        };
        if let Some(was_down) = changed {
            self.rebuild_ring();
            if was_down {
                crate::note(&format!("worker {n} up again"));
            }
        }
    }

    fn rebuild_ring(&self) {
        let up: Vec<usize> = (0..self.worker_count())
            .filter(|&n| self.is_up(n))
            .collect();
        *lock(&self.ring) = Ring::new(up, VNODES);
    }

    /// Worker `n`'s slot.
    fn slot(&self, n: usize) -> Option<Arc<Mutex<Slot>>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(n)
            .cloned()
    }

    /// Every worker's slot, in order.
    fn all_slots(&self) -> Vec<Arc<Mutex<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes on a worker the front did not start (one started by hand, with the front as its
    /// seed), found when its `sessions` process joined `web.workers`: it gets the next number,
    /// is probed like the others, and goes on the ring once it answers. Returns its number.
    fn adopt(self: &Arc<Self>, addr: &str) -> usize {
        let n = {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = slots
                .iter()
                .position(|s| lock(s).addr.as_deref() == Some(addr))
            {
                return n;
            }
            slots.push(Arc::new(Mutex::new(Slot {
                addr: Some(addr.to_string()),
                adopted: true,
                ..Slot::default()
            })));
            slots.len() - 1
        };
        crate::note(&format!("worker {n} joined: {addr} (started by hand)"));
        tokio::spawn(probe_loop(self.clone(), n));
        n
    }

    /// Whether worker `n` is on the ring.
    pub(crate) fn is_up(&self, n: usize) -> bool {
        self.slot(n).is_some_and(|s| lock(&s).up)
    }

    /// Worker `n`'s node address.
    pub(crate) fn addr(&self, n: usize) -> Option<String> {
        self.slot(n).and_then(|s| lock(&s).addr.clone())
    }

    fn worker_by_addr(&self, addr: &str) -> Option<usize> {
        self.all_slots()
            .iter()
            .position(|s| lock(s).addr.as_deref() == Some(addr))
    }

    /// How the workers are.
    pub(crate) fn status(&self) -> Vec<WorkerStatus> {
        self.all_slots()
            .iter()
            .enumerate()
            .map(|(n, s)| {
                let s = lock(s);
                WorkerStatus {
                    n,
                    addr: s.addr.clone(),
                    os_pid: s.os_pid,
                    up: s.up,
                    since: s.since,
                    reason: s.reason.clone(),
                }
            })
            .collect()
    }

    /// Calls worker `n`'s `sessions` process with a probe; marks the worker up or down.
    pub(crate) async fn probe(&self, n: usize) {
        let Some(addr) = self.addr(n) else { return };
        let Some(slot) = self.slot(n) else { return };
        let (downs, adopted) = {
            let s = lock(&slot);
            (s.downs, s.adopted)
        };
        let factory = match self.node.remote::<SessionsRequest>(&addr, SESSIONS) {
            Ok(p) => p,
            Err(e) => return self.mark_down(n, e.to_string()),
        };
        match factory.call(SessionsRequest::Ping, PROBE_TIMEOUT).await {
            // A worker started by hand names itself; one the front started must be the one
            // it started there.
            Ok(info) if info.worker == n || adopted => self.mark_up(n, downs),
            Ok(info) => self.mark_down(
                n,
                format!("{addr} answers as worker {}, not {n}", info.worker),
            ),
            // A slow worker is not a dead one (a silent or unreachable one is reported down by
            // the node: heartbeats on the pooled transports, failed deliveries on per-message
            // TCP).
            Err(CallError::Timeout(_)) => {}
            Err(e) => self.mark_down(n, e.to_string()),
        }
    }

    /// The session `sid`, if the front knows it.
    pub(crate) fn session(&self, sid: &str) -> Option<SessionEntry> {
        let mut sessions = lock(&self.sessions);
        let entry = sessions.get_mut(sid)?;
        entry.last_used = Instant::now();
        Some(entry.clone())
    }

    /// Forgets session `sid` and stops its process (through its supervisor).
    pub(crate) fn forget(&self, sid: &str) {
        let Some(entry) = lock(&self.sessions).remove(sid) else {
            return;
        };
        if let (Some(sup), Some(id)) = (self.sessions_sup.get(), entry.pid.id()) {
            let sup = sup.clone();
            tokio::spawn(async move {
                if let Err(e) = sup.terminate_child(id, CALL_TIMEOUT).await {
                    tracing::debug!("a forgotten session was not stopped: {e}");
                }
            });
        }
    }

    /// Sessions the front knows, per worker.
    pub(crate) fn sessions_per_worker(&self) -> Vec<usize> {
        let mut counts = vec![0; self.worker_count()];
        for entry in lock(&self.sessions).values() {
            if let Some(c) = counts.get_mut(entry.worker) {
                *c += 1;
            }
        }
        counts
    }

    /// Creates a session: a fresh id, started by the sessions' supervisor on the worker that
    /// owns the id on the ring (if that worker fails, on the next one on the ring). Returns the
    /// id and the entry.
    pub(crate) async fn create_session(&self) -> Result<(String, SessionEntry), String> {
        {
            let mut sessions = lock(&self.sessions);
            if sessions.len() >= MAX_SESSIONS {
                sessions.retain(|_, e| e.last_used.elapsed() < SESSION_IDLE);
                if sessions.len() >= MAX_SESSIONS {
                    return Err(format!("the front already has {MAX_SESSIONS} sessions"));
                }
            }
        }
        let sid = random_hex(16)?;
        let nick = format!("guest-{}", random_hex(2)?);
        let sup = self
            .sessions_sup
            .get()
            .ok_or_else(|| "the sessions' supervisor is not running".to_string())?;
        sup.start_child(SessionStart {
            sid: sid.clone(),
            nick,
        })
        .await
        .map_err(|e| format!("no worker took the session: {e}"))?;
        let entry = self
            .session(&sid)
            .ok_or_else(|| "the new session was forgotten at once".to_string())?;
        Ok((sid, entry))
    }

    /// The sessions' supervisor's start function: spawns the session process for `start` on the
    /// first live worker of its place on the ring (`conc_cluster::spawn`, linked to the
    /// supervisor before it runs) and records it. When the session replaces one whose worker
    /// was lost, that worker is not tried, and the new process is told (its page says so).
    async fn start_session(&self, start: SessionStart) -> Result<ChildPid, StartError> {
        let replaces = lock(&self.sessions).get(&start.sid).map(|e| e.worker);
        let candidates: Vec<String> = lock(&self.ring)
            .successors(&start.sid)
            .into_iter()
            .filter(|&n| Some(n) != replaces && self.is_up(n))
            .filter_map(|n| self.addr(n))
            .collect();
        let args = SessionArgs {
            nick: start.nick.clone(),
            replaces,
        };
        let child = self
            .spawner
            .start_child_on::<SessionArgs, SessionRequest>(&candidates, SESSION_KIND, args)
            .await?;
        let pid = child
            .downcast::<SessionRequest>()
            .ok_or(StartError::NoProcessId)?;
        let Some(worker) = self.worker_by_addr(&pid.uri().node) else {
            pid.kill();
            return Err(StartError::NoNode);
        };
        tracing::debug!(worker, sid = %start.sid, %pid, "session started");
        if let Some(lost) = replaces {
            crate::note(&format!(
                "session {} of lost worker {lost} started again on worker {worker}",
                start.sid
            ));
        }
        lock(&self.sessions).insert(
            start.sid,
            SessionEntry {
                worker,
                pid,
                last_used: Instant::now(),
            },
        );
        self.replaced.notify_waiters();
        Ok(child)
    }

    /// Waits (at most [`RESTART_WAIT`]) until session `sid` runs in another process than
    /// `old`: the supervisor starts a session again when its worker is lost. Returns the new
    /// entry, or `None` if the session was forgotten or not replaced in time.
    pub(crate) async fn replacement(
        &self,
        sid: &str,
        old: &Pid<SessionRequest>,
    ) -> Option<SessionEntry> {
        let deadline = tokio::time::Instant::now() + RESTART_WAIT;
        loop {
            let changed = self.replaced.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.session(sid) {
                Some(entry) if entry.pid != *old => return Some(entry),
                Some(_) => {}
                None => return None,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops every worker process (each gets its standard input closed, then is killed if it
    /// has not exited within a few seconds) and waits for them.
    pub(crate) async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        for slot in self.all_slots() {
            if let Some(stop) = lock(&slot).stop.take() {
                let _ = stop.send(());
            }
        }
        let deadline = Instant::now() + WORKER_STOP + Duration::from_secs(2);
        while Instant::now() < deadline && self.all_slots().iter().any(|s| lock(s).os_pid.is_some())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Follows node up/down events: a worker's node down takes it off the ring at once; a node up
/// triggers a probe.
async fn watch_events(front: Arc<Front>) {
    let mut events = front.node.node_events();
    loop {
        match events.recv().await {
            Ok(NodeEvent::Down { name, reason }) => {
                if let Some(n) = front.worker_by_addr(&name) {
                    front.mark_down(n, format!("node down: {reason}"));
                }
            }
            Ok(NodeEvent::Up { name, .. }) => {
                if let Some(n) = front.worker_by_addr(&name) {
                    let front = front.clone();
                    tokio::spawn(async move { front.probe(n).await });
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Follows the `web.workers` group: a worker whose member leaves (its `sessions` process exited
/// or its node went down) is taken off the ring at once; a member that joins triggers a probe.
async fn watch_group(front: Arc<Front>) {
    let mut group = front.pg.monitor(WORKERS_GROUP);
    while let Some(event) = group.recv().await {
        match event {
            PgEvent::Left { members, .. } => {
                for m in members {
                    if let Some(n) = front.worker_by_addr(&m.node) {
                        front.mark_down(n, format!("its member left {WORKERS_GROUP}"));
                    }
                }
            }
            PgEvent::Joined { members, .. } => {
                for m in members {
                    let n = match front.worker_by_addr(&m.node) {
                        Some(n) => n,
                        None if !front.is_stopping() => front.adopt(&m.node),
                        None => continue,
                    };
                    let front = front.clone();
                    tokio::spawn(async move { front.probe(n).await });
                }
            }
            _ => {}
        }
    }
}

/// Probes worker `n` every [`PROBE_EVERY`].
async fn probe_loop(front: Arc<Front>, n: usize) {
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if front.is_stopping() {
            return;
        }
        front.probe(n).await;
    }
}
