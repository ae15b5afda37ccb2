//! # conc-core
//!
//! Erlang-style processes for Rust, on one node: lightweight tokio tasks with typed mailboxes,
//! spawned by a [`Runtime`] that also owns a registry of names. A process is addressed by a
//! [`Pid<M>`]; it receives from its [`Inbox<M>`] (`recv`, `recv_timeout`, selective
//! `recv_matching`, and `recv_event` for monitor and link signals). A synchronous call builds
//! its request around a [`ReplyTo<R>`] and waits for the reply to that exact request.
//!
//! Fault tolerance the Erlang way is built on these: [`supervisor`] (supervisors, strategies,
//! restart intensity, dynamic supervisors), [`server`] (the `gen_server` behaviour) and
//! [`timer`] (`send_after`).
//!
//! This crate has no sockets and no bytes. A node (crate `conc-node`) installs a
//! [`NodeHook`] so that a pid of another node hands its messages to the network; pids and reply
//! handles serialize (with serde) as remote references and deserialize, on the node that
//! receives them, into working references.
//!
//! ```
//! use conc_core::{Runtime, Inbox, ReplyTo};
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() {
//! let rt = Runtime::new();
//! // The seed's process1: replies "Message Received!" to every request.
//! let p1 = rt.spawn(|mut inbox: Inbox<(String, ReplyTo<String>)>| async move {
//!     while let Some((_text, reply)) = inbox.recv().await {
//!         let _ = reply.send("Message Received!".to_string());
//!     }
//! });
//! rt.register("process1", &p1).unwrap();
//! let answer = p1
//!     .call(|reply| ("test-message".to_string(), reply), Duration::from_secs(5))
//!     .await
//!     .unwrap();
//! assert_eq!(answer, "Message Received!");
//! # }
//! ```

mod call;
mod error;
mod exit;
pub mod node_side;
mod pid;
mod process;
mod remote;
mod runtime;
pub mod server;
mod shape;
pub mod supervisor;
mod tag;
pub mod timer;

pub use call::{CallFailure, ReplyTo};
pub use error::{
    CallError, DeliverError, DownReason, HookError, RecvError, Refusal, RegisterError, RemoteError,
    ReplyError, ReplyErrorKind, ReplyFailure, SendError, SendErrorKind, WhereisError,
};
pub use exit::{Down, Event, Exit, ExitReason, MonitorRef, ProcessId, SupervisorExit};
pub use node_side::NodeSide;
pub use pid::{BYTES_PER_UNIT, DEFAULT_CALL_TIMEOUT, Pid, SEND_BUDGET};
pub use process::Inbox;
pub use remote::{
    BoxFuture, Codec, DecodeBody, DownFn, EncodeBody, EncodeInto, NodeHook, ParseUriError,
    ProcessUri, RemoteSink, ReplyRequest, SendRequest, Target,
};
pub use runtime::{Monitor, Runtime, SpawnOptions};
pub use tag::{TypeTag, short_type_name};

/// What a message that can cross nodes must be: serializable, `Send` and `'static`.
/// Implemented for every such type.
pub trait Message: serde::Serialize + serde::de::DeserializeOwned + Send + 'static {}

impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Message for T {}

/// Re-exported so that the node layer uses the same version.
pub use erased_serde;
