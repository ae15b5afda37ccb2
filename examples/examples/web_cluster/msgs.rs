//! The messages between the front and the workers. Front and workers are the same binary, so
//! the types (and their type tags) match on both sides.

use conc_node::ReplyTo;
use serde::{Deserialize, Serialize};

/// The name of each worker's `sessions` process (answers probes; the group member).
pub(crate) const SESSIONS: &str = "sessions";
/// The process group (`conc_cluster::pg`) every worker's `sessions` process joins.
pub(crate) const WORKERS_GROUP: &str = "web.workers";
/// The kind (`conc_cluster::spawn`) under which workers offer session processes.
pub(crate) const SESSION_KIND: &str = "session";
/// The local name of the chat room process on the worker that runs it (worker 0), shown in
/// `/stats`.
pub(crate) const CHAT: &str = "chat";
/// The chat room's cluster-wide name (`conc_cluster::global`): sessions on every worker find
/// the room through it, so a room started again (worker 0 restarted) is found without telling
/// anyone.
pub(crate) const CHAT_GLOBAL: &str = "web.chat";
/// Lines the chat room keeps (and shows).
pub(crate) const CHAT_LINES: usize = 20;
/// The longest chat line accepted, in characters; longer ones are cut.
pub(crate) const MAX_LINE_CHARS: usize = 200;

/// What a worker's `sessions` process answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SessionsRequest {
    /// A health probe: answers the worker's number and live session count.
    Ping(ReplyTo<WorkerInfo>),
}

/// The argument of the [`SESSION_KIND`] kind: what a new session process starts with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionArgs {
    /// The name the session posts to the chat room under.
    pub(crate) nick: String,
    /// Set when this session replaces one whose worker was lost (the worker's number): the
    /// session's first page says that its state was lost.
    pub(crate) replaces: Option<usize>,
}

/// A worker's answer to a probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerInfo {
    /// The worker's number.
    pub(crate) worker: usize,
    /// Session processes alive on it.
    pub(crate) sessions: u64,
}

/// What a session process answers: one request of its browser each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum SessionRequest {
    /// A page view: counts it and answers what the page shows.
    View(ReplyTo<View>),
    /// Posts a line to the chat room under the session's nick; answers once it is done (a
    /// failure is kept and shown on the next view).
    Post {
        /// The line.
        line: String,
        /// Answered when done.
        reply: ReplyTo<()>,
    },
}

/// What a page view shows, as answered by the session process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct View {
    /// The session's nick.
    pub(crate) nick: String,
    /// The worker the session lives on.
    pub(crate) worker: usize,
    /// That worker's node URI.
    pub(crate) node: String,
    /// The session process's persistent reference.
    pub(crate) pid: String,
    /// Page views of this session, this one included.
    pub(crate) views: u64,
    /// Lines this session posted.
    pub(crate) posts: u64,
    /// The chat room's last lines, or why they could not be fetched.
    pub(crate) chat: Result<Vec<ChatLine>, String>,
    /// Something to tell the user once (a failed post).
    pub(crate) notice: Option<String>,
}

/// One line of the chat room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChatLine {
    /// Who posted it.
    pub(crate) who: String,
    /// The worker the poster's session lives on.
    pub(crate) worker: usize,
    /// The text.
    pub(crate) text: String,
}

/// What the chat room answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChatRequest {
    /// Adds a line (the oldest beyond [`CHAT_LINES`] is dropped).
    Post {
        /// The line.
        line: ChatLine,
        /// Answered once the line is in.
        reply: ReplyTo<()>,
    },
    /// The last lines, oldest first.
    Recent(ReplyTo<Vec<ChatLine>>),
}
