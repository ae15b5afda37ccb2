//! # conc-tcp
//!
//! TCP transports for conc, both implementing [`conc_wire::Transport`]:
//!
//! - [`Tcp::per_message`]: one connection per message, as in the seed post (simple, slow,
//!   no state between messages).
//! - [`Tcp::pooled`]: one long-lived authenticated connection per pair of nodes, used in both
//!   directions, with coalesced writes and a bounded outbound queue per peer.
//!
//! A transport is handed to a node (crate `conc-node`, which re-exports [`Tcp`]):
//!
//! ```
//! use conc_node::{Cookie, Inbox, Node};
//! use conc_tcp::Tcp;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cookie = Cookie::new("a-long-random-shared-secret")?;
//! let a = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie.clone())
//!     .transport(Tcp::pooled())
//!     .start()
//!     .await?;
//! let (tx, rx) = tokio::sync::oneshot::channel();
//! let mut tx = Some(tx);
//! let logger = a.spawn(move |mut inbox: Inbox<String>| async move {
//!     if let (Some(line), Some(tx)) = (inbox.recv().await, tx.take()) {
//!         let _ = tx.send(line);
//!     }
//! });
//! a.register("logger", &logger)?;
//!
//! // One connection per message, as in the seed post.
//! let b = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie)
//!     .transport(Tcp::per_message())
//!     .start()
//!     .await?;
//! b.remote::<String>(a.name(), "logger")?.send("Log Message!".to_string())?;
//! assert_eq!(rx.await?, "Log Message!");
//! # Ok(()) }
//! ```
//!
//! Without the `tls` feature both carry messages in clear: use them on trusted networks only
//! (as Erlang's and Akka's plain TCP distribution). The cookie handshake authenticates peers but
//! does not encrypt.

mod accept;
mod busy;
mod per_message;
mod pooled;

pub use per_message::PerMessageTcp;
pub use pooled::PooledTcp;

/// Constructors for the TCP transports.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Tcp {
    /// The per-message transport: one connection per message.
    pub fn per_message() -> PerMessageTcp {
        PerMessageTcp::default()
    }

    /// The pooled transport: one long-lived connection per pair of nodes.
    pub fn pooled() -> PooledTcp {
        PooledTcp::default()
    }
}
