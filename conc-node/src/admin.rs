//! The node's admin process: what a remote operator can ask a node.
//!
//! [`serve`] spawns a process on a node and registers it under the reserved name
//! [`ADMIN_NAME`] (`conc.admin`). Any node that knows the cookie can then call it like any other
//! named process, with an [`AdminRequest`]:
//!
//! ```no_run
//! use conc_node::admin::{self, AdminRequest, ADMIN_NAME};
//! use conc_node::Node;
//! use std::time::Duration;
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // On the node to observe:
//! let node = Node::builder().listen("127.0.0.1:9000").start().await?;
//! admin::serve(&node)?;
//!
//! // On the operator's node (another OS process, same cookie):
//! let operator = Node::builder().start().await?;
//! let admin = operator.remote::<AdminRequest>("127.0.0.1:9000", ADMIN_NAME)?;
//! let stats = admin.call(AdminRequest::Stats, Duration::from_secs(5)).await?;
//! println!("{} runs {} processes", stats.name, stats.processes);
//! let names = admin.call(AdminRequest::Names, Duration::from_secs(5)).await?;
//! println!("registered: {names:?}");
//! // The supervision trees of the node's registered supervisors.
//! let trees = admin.call(AdminRequest::Supervisors, Duration::from_secs(5)).await?;
//! for tree in &trees {
//!     println!("{}", tree.lines().join("\n"));
//! }
//! let sent = admin
//!     .call(
//!         |reply| AdminRequest::SendString {
//!             name: "logger".into(),
//!             text: "hello".into(),
//!             reply,
//!         },
//!         Duration::from_secs(5),
//!     )
//!     .await?;
//! sent.map_err(|e| format!("not sent: {e}"))?;
//! # Ok(()) }
//! ```
//!
//! The admin process trusts every caller: whoever holds the cookie may read the node's stats
//! and send strings to its named processes (as in Erlang, the cookie is the whole of the
//! access control). Per-peer queue depth is not part of the report: the node does not expose it
//! yet.

use std::collections::BTreeMap;
use std::time::SystemTime;

use conc_core::supervisor::{SupervisionTree, registered_trees};
use conc_core::{Inbox, Pid, RegisterError, ReplyTo, WhereisError};
use serde::{Deserialize, Serialize};

use crate::{Node, NodeStats, PeerStats};

/// The name the admin process is registered under. Reserved: applications should not register
/// a process of their own under it.
pub const ADMIN_NAME: &str = "conc.admin";

/// What the admin process answers. Each request carries the handle its answer goes to, so it is
/// sent with [`Pid::call`].
#[derive(Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// A snapshot of the node's stats (see [`Node::stats`]).
    Stats(ReplyTo<StatsReport>),
    /// The names registered on the node, sorted.
    Names(ReplyTo<Vec<String>>),
    /// Sends `text` as a `String` message to the local process registered as `name`. The
    /// answer is `Ok(())` once the message is in the process's mailbox, or an error that says
    /// why not (no such name, a process that does not receive `String`, a full mailbox).
    SendString {
        /// The registered name of the target.
        name: String,
        /// The message.
        text: String,
        /// Where the outcome goes.
        reply: ReplyTo<Result<(), String>>,
    },
    /// The supervision trees of the node: one per supervisor registered under a name that is
    /// not itself in another registered supervisor's tree, with every child (pid, status,
    /// restart count) and the trees of the children that are supervisors (see
    /// [`conc_core::supervisor::registered_trees`]). Supervisors that are neither registered
    /// nor under a registered one are not found. Each supervisor is asked with a timeout of
    /// [`SUPERVISOR_TIMEOUT`]; one that does not answer is left out.
    Supervisors(ReplyTo<Vec<SupervisionTree>>),
}

/// How long the admin process waits for each supervisor's answer to
/// [`AdminRequest::Supervisors`].
pub const SUPERVISOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A node's stats as they travel: a serializable copy of [`NodeStats`], with times as whole
/// seconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// The node's name (`host:port`).
    pub name: String,
    /// The transport the node uses (for example `pooled-tcp`).
    pub transport: String,
    /// The node's incarnation.
    pub incarnation: u64,
    /// When the report was taken, in seconds since the Unix epoch.
    pub taken_at: u64,
    /// Live processes.
    pub processes: u64,
    /// Registered names, sorted.
    pub registered: Vec<String>,
    /// Messages that could not be delivered, by reason.
    pub dead_letters: BTreeMap<String, u64>,
    /// Connections or frames refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Replies that arrived after their call had ended (dropped).
    pub late_replies: u64,
    /// Per peer, sorted by name.
    pub peers: Vec<PeerReport>,
}

/// One peer in a [`StatsReport`]: a serializable copy of [`PeerStats`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer's node name.
    pub name: String,
    /// When its current connection was established, in seconds since the Unix epoch (`None`
    /// if not connected, and always for per-message TCP).
    pub connected_since: Option<u64>,
    /// Messages and replies sent to it.
    pub msgs_out: u64,
    /// Bytes of the encoded message and reply frames sent to it.
    pub bytes_out: u64,
    /// Frames received from it.
    pub msgs_in: u64,
    /// Bytes of the message and reply bodies received from it.
    pub bytes_in: u64,
    /// Bytes queued for it and not yet written.
    pub queued_bytes: u64,
    /// Frames queued for it and not yet written.
    pub queued_frames: u64,
    /// Messages to or from it that could not be delivered, by reason.
    pub dead_letters: std::collections::BTreeMap<String, u64>,
}

/// Seconds since the Unix epoch (0 for a time before it).
pub fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl From<&PeerStats> for PeerReport {
    fn from(p: &PeerStats) -> Self {
        PeerReport {
            name: p.name.clone(),
            connected_since: p.connected_since.map(epoch_seconds),
            msgs_out: p.msgs_out,
            bytes_out: p.bytes_out,
            msgs_in: p.msgs_in,
            bytes_in: p.bytes_in,
            queued_bytes: p.queued_bytes,
            queued_frames: p.queued_frames,
            dead_letters: p.dead_letters.clone(),
        }
    }
}

impl StatsReport {
    /// The report of `node` now.
    pub fn of(node: &Node) -> StatsReport {
        StatsReport::from_stats(
            &node.stats(),
            node.transport_name(),
            node.incarnation(),
            SystemTime::now(),
        )
    }

    /// A report from a stats snapshot and what the snapshot does not hold.
    pub fn from_stats(
        stats: &NodeStats,
        transport: &str,
        incarnation: u64,
        taken_at: SystemTime,
    ) -> StatsReport {
        StatsReport {
            name: stats.name.clone(),
            transport: transport.to_string(),
            incarnation,
            taken_at: epoch_seconds(taken_at),
            processes: u64::try_from(stats.processes).unwrap_or(u64::MAX),
            registered: stats.registered.clone(),
            dead_letters: stats.dead_letters.clone(),
            rejected: stats.rejected.clone(),
            late_replies: stats.late_replies,
            peers: stats.peers.iter().map(PeerReport::from).collect(),
        }
    }

    /// All dead letters, whatever the reason.
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

/// Sends `text` to the local process registered as `name` on `node` (what
/// [`AdminRequest::SendString`] does), with an error message fit for an operator.
pub fn send_string(node: &Node, name: &str, text: String) -> Result<(), String> {
    let pid: Pid<String> = node.whereis::<String>(name).map_err(|e| match e {
        WhereisError::NotFound(_) => format!("no process registered as {name:?}"),
        WhereisError::WrongType { actual, .. } => {
            format!("the process registered as {name:?} receives {actual}, not String")
        }
    })?;
    pid.send(text)
        .map_err(|e| format!("cannot send to {name:?}: {}", e.kind))
}

/// Spawns the admin process on `node` and registers it as [`ADMIN_NAME`]. Returns its pid.
/// Fails if the name is taken (for example by an earlier call). The process ends when the node
/// shuts down.
pub fn serve(node: &Node) -> Result<Pid<AdminRequest>, RegisterError> {
    let me = node.clone();
    let pid = node.spawn(move |mut inbox: Inbox<AdminRequest>| async move {
        while let Some(request) = inbox.recv().await {
            handle(&me, request);
        }
    });
    if let Err(e) = node.register(ADMIN_NAME, &pid) {
        pid.kill();
        return Err(e);
    }
    Ok(pid)
}

/// Answers one request. A reply that cannot be delivered (the caller gave up or its node is
/// gone) is only logged: the admin process carries on.
fn handle(node: &Node, request: AdminRequest) {
    let outcome = match request {
        AdminRequest::Stats(reply) => reply.send(StatsReport::of(node)).map_err(|e| e.kind),
        AdminRequest::Names(reply) => reply.send(node.runtime().registered()).map_err(|e| e.kind),
        AdminRequest::Supervisors(reply) => {
            // Supervisors are asked in a task of its own, so the admin process goes on
            // answering while they do.
            let rt = node.runtime().clone();
            tokio::spawn(async move {
                let trees = registered_trees(&rt, SUPERVISOR_TIMEOUT).await;
                if let Err(e) = reply.send(trees) {
                    tracing::debug!(target: "conc::admin", "reply not delivered: {}", e.kind);
                }
            });
            Ok(())
        }
        AdminRequest::SendString { name, text, reply } => {
            let result = send_string(node, &name, text);
            if let Err(e) = &result {
                tracing::debug!(target: "conc::admin", %name, "send refused: {e}");
            }
            reply.send(result).map_err(|e| e.kind)
        }
    };
    if let Err(kind) = outcome {
        tracing::debug!(target: "conc::admin", "reply not delivered: {kind}");
    }
}
