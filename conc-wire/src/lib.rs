//! # conc-wire
//!
//! Everything in conc that is bytes, and nothing that is a socket: the frame format and its
//! length-delimited codec (with a maximum frame size checked before memory is reserved), the
//! single bincode configuration ([`bin`]), the sans-IO cookie [`handshake`], async helpers that
//! run frames and the handshake over any stream ([`io`]), and the [`Transport`] trait that the
//! TCP and QUIC transports implement.
//!
//! Remote references (a `Pid` or `ReplyTo` inside a message) are serialized by conc-core's serde
//! impls and resolved against the receiving node's runtime; this crate carries their bytes.

pub mod bin;
pub mod frame;
pub mod handshake;
pub mod io;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trace;
pub mod transport;

pub use frame::{DEFAULT_MAX_FRAME, ErrorCode, Frame, FrameCodec, FrameError, FrameSplitter};
pub use handshake::{Cookie, CookieError, HandshakeConfig, NodeIdentity};
pub use transport::{
    BoxFuture, DownReason, EncodeFn, FrameMeta, Inbound, Limits, Proven, Route, RouteError,
    Transport, TransportConfig, TransportError, encode_frame, queue_frame,
};
