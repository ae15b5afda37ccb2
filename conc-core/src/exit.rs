//! Exit reasons, process identities, monitors and the events a process can receive.

use std::fmt;

/// The identity of a process: the incarnation of the runtime (node) it runs on and its local id.
///
/// Incarnations are random 64-bit numbers chosen when a runtime is created, so a `ProcessId`
/// names one process across all nodes and all restarts, and a pid of an earlier incarnation
/// of a restarted node never names a process of the new one.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ProcessId {
    /// The incarnation of the node the process runs on.
    pub incarnation: u64,
    /// The process's id, unique within its incarnation.
    pub id: u64,
}

impl fmt::Debug for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}.{}>", self.incarnation, self.id)
    }
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}.{}>", self.incarnation, self.id)
    }
}

/// Why a process ended (or why a monitor fired).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExitReason {
    /// The process's function returned.
    Normal,
    /// The process panicked; the panic message.
    Panic(String),
    /// The process was killed with `kill`.
    Killed,
    /// The process did not exist (it had already exited, or never existed) when it was monitored,
    /// linked or called.
    NoSuchProcess,
    /// The connection to the process's node was lost, so its fate is unknown.
    NoConnection,
    /// The process exited with a reason of its own (see [`crate::Inbox::exit`]) or was taken down
    /// by a linked process that did.
    Other(String),
}

impl ExitReason {
    /// Whether this reason is `Normal`. Links propagate only abnormal exits.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal)
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Panic(msg) => write!(f, "panic: {msg}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::NoSuchProcess => f.write_str("no such process"),
            ExitReason::NoConnection => f.write_str("no connection"),
            ExitReason::Other(msg) => write!(f, "exit: {msg}"),
        }
    }
}

/// A reference to one monitor, returned by `monitor` and carried by its [`Down`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MonitorRef(pub(crate) u64);

/// A monitored process went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    /// The monitor that fired.
    pub monitor: MonitorRef,
    /// The process that went down.
    pub pid: ProcessId,
    /// Why.
    pub reason: ExitReason,
}

/// A linked process exited abnormally and this process traps exits (see
/// [`crate::Inbox::trap_exit`]), so the exit arrives as an event instead of ending this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The linked process that exited.
    pub pid: ProcessId,
    /// Why.
    pub reason: ExitReason,
}

/// What [`crate::Inbox::recv_event`] returns: a message, or a signal from a monitor or a link.
#[derive(Debug)]
pub enum Event<M> {
    /// An ordinary message.
    Message(M),
    /// A monitored process went down.
    Down(Down),
    /// A linked process exited (only when trapping exits).
    Exit(Exit),
}

/// Signals are queued apart from messages so that a typed mailbox can receive them.
#[derive(Debug)]
pub(crate) enum Signal {
    Down(Down),
    Exit(Exit),
}
