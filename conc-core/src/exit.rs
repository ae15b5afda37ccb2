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
///
/// New reasons may be added (match with a wildcard arm); they are appended, so the serialized
/// form of the existing ones stays the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
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
    /// The process was asked to stop, in order (Erlang's `shutdown`): a supervisor stopping
    /// its child, or a server stopped by its owner. Abnormal for links (a linked process that
    /// does not trap exits goes down with it), but a transient child that exits with it is not
    /// restarted.
    Shutdown,
    /// A supervisor stopped itself, and with it its children (see [`SupervisorExit`]).
    Supervisor(SupervisorExit),
}

/// Why a supervisor stopped itself (the reason of [`ExitReason::Supervisor`]): the child it
/// names could not be kept running. Erlang's supervisor exits with `shutdown` in these cases and
/// logs which child; here the reason itself says so.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum SupervisorExit {
    /// Restarting `child` would have exceeded the supervisor's restart intensity (more than
    /// `max_restarts` restarts within its period).
    ReachedMaxRestartIntensity {
        /// The id of the child whose exit was one restart too many.
        child: String,
    },
    /// `child` failed to start while the supervisor was starting its children; the children
    /// already started were stopped again.
    FailedToStartChild {
        /// The id of the child that failed to start.
        child: String,
    },
}

impl fmt::Display for SupervisorExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorExit::ReachedMaxRestartIntensity { child } => {
                write!(f, "reached max restart intensity (child {child:?})")
            }
            SupervisorExit::FailedToStartChild { child } => {
                write!(f, "failed to start child {child:?}")
            }
        }
    }
}

impl ExitReason {
    /// Whether this reason is `Normal`. Links propagate only abnormal exits.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal)
    }

    /// Whether this reason is an orderly stop: `Shutdown`, or a supervisor that stopped itself
    /// (Erlang's `shutdown` and `{shutdown, _}`). A transient child that exits with `Normal` or
    /// such a reason is not restarted.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, ExitReason::Shutdown | ExitReason::Supervisor(_))
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
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Supervisor(e) => write!(f, "supervisor shutdown: {e}"),
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
