//! A worker node (the example run with `--worker N`): a conc node that offers the spawn kind
//! `session` (one process per browser session, spawned and supervised by the front), a
//! `sessions` process that answers the front's probes and is the worker's member of the group
//! `web.workers`, the node's `conc.admin` process, and on worker 0 the chat room, registered
//! cluster-wide as `web.chat` (`conc_cluster::global`). Prints `ready <node-uri>` once it
//! serves; the front waits for that line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conc_cluster::global::{Global, GlobalEvent};
use conc_cluster::membership::{Cluster, ClusterConfig};
use conc_cluster::pg::Pg;
use conc_cluster::spawn::Spawner;
use conc_node::{CallError, ExitReason, Inbox, RecvError};
use tokio::io::AsyncReadExt;

use crate::msgs::{
    CHAT, CHAT_GLOBAL, CHAT_LINES, ChatLine, ChatRequest, MAX_LINE_CHARS, SESSION_KIND, SESSIONS,
    SessionArgs, SessionRequest, SessionsRequest, View, WORKERS_GROUP, WorkerInfo,
};

/// A session process that gets no request for this long ends (its browser gets a new session).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Session processes one worker runs at most; one spawned beyond it ends at once (its first
/// request fails, and its browser gets an error page).
const MAX_SESSIONS: u64 = 100_000;
/// How long a session waits for the chat room.
const CHAT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a starting worker waits to learn where the chat room is before it says `ready`.
const CHAT_KNOWN_WAIT: Duration = Duration::from_secs(10);

/// What a worker is started with.
#[derive(Debug, Clone)]
pub(crate) struct WorkerConfig {
    /// The worker's number.
    pub(crate) n: usize,
    /// Where its node listens.
    pub(crate) listen: String,
    /// The transport's name.
    pub(crate) transport: String,
    /// The cookie file.
    pub(crate) cookie_file: Option<std::path::PathBuf>,
    /// Exit when standard input closes (set by the front, so that workers never outlive it).
    pub(crate) exit_with_stdin: bool,
    /// The nodes it joins the cluster through (the front).
    pub(crate) seeds: Vec<String>,
    /// The other workers known when it starts, whose global scopes it contacts at once.
    pub(crate) peers: Vec<String>,
}

/// Runs a worker until it is told to stop (standard input closed, if asked to watch it, or
/// Ctrl-C / SIGTERM).
pub(crate) async fn run(cfg: WorkerConfig) -> Result<(), String> {
    let node = crate::start_node(&cfg.listen, &cfg.transport, cfg.cookie_file.as_deref()).await?;
    conc_node::admin::serve(&node).map_err(|e| format!("cannot serve conc.admin: {e}"))?;

    let live = Arc::new(AtomicU64::new(0));
    let factory = {
        let n = cfg.n;
        let live = live.clone();
        node.spawn(move |inbox: Inbox<SessionsRequest>| sessions(inbox, n, live))
    };
    node.register(SESSIONS, &factory)
        .map_err(|e| format!("cannot register {SESSIONS}: {e}"))?;
    let global = Global::start(&node).map_err(|e| format!("cannot start global: {e}"))?;
    {
        let n = cfg.n;
        let uri = node.uri();
        let global = global.clone();
        Spawner::new(&node)
            .register_kind(
                SESSION_KIND,
                move |args: SessionArgs, inbox: Inbox<SessionRequest>| {
                    let session = Session {
                        nick: args.nick,
                        worker: n,
                        node: uri.clone(),
                        global: global.clone(),
                        replaces: args.replaces,
                        live: live.clone(),
                    };
                    session.run(inbox)
                },
            )
            .map_err(|e| format!("cannot offer the {SESSION_KIND} kind: {e}"))?;
    }
    let pg = Pg::start(&node).map_err(|e| format!("cannot start pg: {e}"))?;
    pg.join(WORKERS_GROUP, &factory)
        .map_err(|e| format!("cannot join {WORKERS_GROUP}: {e}"))?;
    if cfg.n == 0 {
        let chat = node.spawn(chat_room);
        node.register(CHAT, &chat)
            .map_err(|e| format!("cannot register {CHAT}: {e}"))?;
        global
            .register_name(CHAT_GLOBAL, &chat)
            .map_err(|e| format!("cannot register {CHAT_GLOBAL} cluster-wide: {e}"))?;
    }

    // Joins the cluster through the front (its seed): every worker then connects to every
    // other, so pg and global see them all. Started after pg and global, so that their scopes
    // are there when the first peers come up.
    let _cluster = Cluster::start(&node, ClusterConfig::new().seed_nodes(cfg.seeds.clone()))
        .map_err(|e| format!("cannot join the cluster: {e}"))?;

    // The seeds' scopes are contacted at once too (a worker started by hand is found by the
    // front through its group member, whatever the transport).
    for seed in &cfg.seeds {
        if let Err(e) = pg.contact(seed) {
            tracing::warn!(worker = cfg.n, %seed, "cannot contact the seed's pg scope: {e}");
        }
    }
    for peer in &cfg.peers {
        if let Err(e) = global.contact(peer) {
            tracing::warn!(worker = cfg.n, %peer, "cannot contact the peer's global scope: {e}");
        }
    }
    // Ready once the chat room's cluster-wide name is known here (the cluster has synced), or
    // after a bound (worker 0 may be down: sessions then say the room is unavailable).
    let mut names = global.events();
    let known = tokio::time::timeout(CHAT_KNOWN_WAIT, async {
        while let Some(event) = names.recv().await {
            if matches!(&event, GlobalEvent::Registered(r) if r.name == CHAT_GLOBAL) {
                return true;
            }
        }
        false
    })
    .await;
    if !matches!(known, Ok(true)) {
        tracing::warn!(worker = cfg.n, "the chat room's name is not known yet");
    }

    crate::say(&format!("ready {}", node.uri()));

    let stdin_closed = async {
        if !cfg.exit_with_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        r = crate::shutdown_signal() => r.map_err(|e| format!("cannot wait for a signal: {e}"))?,
    }
    node.shutdown().await;
    Ok(())
}

/// The `sessions` process: answers probes.
async fn sessions(mut inbox: Inbox<SessionsRequest>, n: usize, live: Arc<AtomicU64>) {
    while let Some(request) = inbox.recv().await {
        match request {
            SessionsRequest::Ping(reply) => {
                let _ = reply.send(WorkerInfo {
                    worker: n,
                    sessions: live.load(Ordering::Relaxed),
                });
            }
        }
    }
}

/// One browser session's state, owned by its process.
struct Session {
    nick: String,
    worker: usize,
    node: String,
    /// Where the chat room is found, by its cluster-wide name.
    global: Global,
    /// The worker of the session this one replaces, if its worker was lost.
    replaces: Option<usize>,
    /// The worker's live session count, decremented when the process ends.
    live: Arc<AtomicU64>,
}

impl Session {
    async fn run(self, mut inbox: Inbox<SessionRequest>) {
        /// Counts the session out however the process ends.
        struct Live(Arc<AtomicU64>);
        impl Drop for Live {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.live.fetch_add(1, Ordering::Relaxed) >= MAX_SESSIONS {
            self.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                worker = self.worker,
                "worker full: a new session ends at once"
            );
            inbox.exit(ExitReason::Killed);
            return;
        }
        let _live = Live(self.live.clone());
        tracing::debug!(worker = self.worker, pid = %inbox.pid(), "session started");
        let me = inbox.pid().to_string();
        let mut views = 0u64;
        let mut posts = 0u64;
        let mut notice: Option<String> = self.replaces.map(|w| {
            format!(
                "Your session's worker {w} was lost, and your session's state with it: this is \
                 a new session on worker {}, started for you by the front's supervisor.",
                self.worker
            )
        });
        loop {
            let request = match inbox.recv_timeout(SESSION_IDLE).await {
                Ok(request) => request,
                Err(RecvError::Timeout | RecvError::Closed) => return,
            };
            match request {
                SessionRequest::View(reply) => {
                    views += 1;
                    let chat = match self.chat() {
                        Ok(room) => room
                            .call(ChatRequest::Recent, CHAT_TIMEOUT)
                            .await
                            .map_err(|e| chat_unavailable(&e)),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(View {
                        nick: self.nick.clone(),
                        worker: self.worker,
                        node: self.node.clone(),
                        pid: me.clone(),
                        views,
                        posts,
                        chat,
                        notice: notice.take(),
                    });
                }
                SessionRequest::Post { line, reply } => {
                    let line = ChatLine {
                        who: self.nick.clone(),
                        worker: self.worker,
                        text: line,
                    };
                    let posted = match self.chat() {
                        Ok(room) => room
                            .call(|reply| ChatRequest::Post { line, reply }, CHAT_TIMEOUT)
                            .await
                            .map_err(|e| chat_unavailable(&e)),
                        Err(e) => Err(e),
                    };
                    match posted {
                        Ok(()) => posts += 1,
                        Err(e) => notice = Some(format!("your line was not posted: {e}")),
                    }
                    let _ = reply.send(());
                }
            }
        }
    }
}

impl Session {
    /// The chat room, by its cluster-wide name.
    fn chat(&self) -> Result<conc_node::Pid<ChatRequest>, String> {
        self.global
            .whereis_name::<ChatRequest>(CHAT_GLOBAL)
            .map_err(|e| format!("the chat room ({CHAT_GLOBAL}) is not registered now: {e}"))
    }
}

fn chat_unavailable(e: &CallError) -> String {
    format!("the chat room (on worker 0) is unavailable: {e}")
}

/// The chat room: the last [`CHAT_LINES`] lines.
async fn chat_room(mut inbox: Inbox<ChatRequest>) {
    let mut lines: VecDeque<ChatLine> = VecDeque::with_capacity(CHAT_LINES + 1);
    while let Some(request) = inbox.recv().await {
        match request {
            ChatRequest::Post { mut line, reply } => {
                // Bounded whatever the poster sends.
                line.who = line.who.chars().take(32).collect();
                line.text = line.text.chars().take(MAX_LINE_CHARS).collect();
                lines.push_back(line);
                while lines.len() > CHAT_LINES {
                    lines.pop_front();
                }
                let _ = reply.send(());
            }
            ChatRequest::Recent(reply) => {
                let _ = reply.send(lines.iter().cloned().collect());
            }
        }
    }
}
