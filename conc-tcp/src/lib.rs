//! # conc-tcp
//!
//! TCP transports for conc, both implementing [`conc_wire::Transport`]:
//!
//! - [`Tcp::per_message`]: one connection per message, as in the seed post (simple, slow,
//!   no state between messages).
//! - [`Tcp::pooled`]: one long-lived authenticated connection per pair of nodes, used in both
//!   directions, with coalesced writes and a bounded outbound queue per peer.
//!
//! Without the `tls` feature both carry messages in clear: use them on trusted networks only
//! (as Erlang's and Akka's plain TCP distribution). The cookie handshake authenticates peers but
//! does not encrypt.

mod accept;
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
