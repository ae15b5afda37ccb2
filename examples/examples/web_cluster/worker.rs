//! A worker node (the example run with `--worker N`): a conc node with a `sessions` factory
//! that spawns one process per browser session, the node's `conc.admin` process, and on worker 0
//! the `chat` room. Prints `ready <node-uri>` once it serves; the front waits for that line.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conc_cluster::pg::Pg;
use conc_cluster::spawn::Spawner;
use conc_node::{CallError, ExitReason, Inbox, Pid, RecvError};
use tokio::io::AsyncReadExt;

use crate::msgs::{
    CHAT, CHAT_LINES, ChatLine, ChatRequest, MAX_LINE_CHARS, SESSION_KIND, SESSIONS, SessionArgs,
    SessionRequest, SessionsRequest, View, WORKERS_GROUP, WorkerInfo,
};

/// A session process that gets no request for this long ends (its browser gets a new session).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// Session processes one worker runs at most; one spawned beyond it ends at once (its first
/// request fails, and its browser gets an error page).
const MAX_SESSIONS: u64 = 100_000;
/// How long a session waits for the chat room.
const CHAT_TIMEOUT: Duration = Duration::from_secs(1);

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
    {
        let n = cfg.n;
        let uri = node.uri();
        Spawner::new(&node)
            .register_kind(
                SESSION_KIND,
                move |args: SessionArgs, inbox: Inbox<SessionRequest>| {
                    let session = Session {
                        nick: args.nick,
                        worker: n,
                        node: uri.clone(),
                        chat: args.chat,
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
    chat: Pid<ChatRequest>,
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
        let mut notice: Option<String> = None;
        loop {
            let request = match inbox.recv_timeout(SESSION_IDLE).await {
                Ok(request) => request,
                Err(RecvError::Timeout | RecvError::Closed) => return,
            };
            match request {
                SessionRequest::View(reply) => {
                    views += 1;
                    let chat = self
                        .chat
                        .call(ChatRequest::Recent, CHAT_TIMEOUT)
                        .await
                        .map_err(|e| chat_unavailable(&e));
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
                    match self
                        .chat
                        .call(|reply| ChatRequest::Post { line, reply }, CHAT_TIMEOUT)
                        .await
                    {
                        Ok(()) => posts += 1,
                        Err(e) => {
                            notice = Some(format!(
                                "your line was not posted: {}",
                                chat_unavailable(&e)
                            ))
                        }
                    }
                    let _ = reply.send(());
                }
            }
        }
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
