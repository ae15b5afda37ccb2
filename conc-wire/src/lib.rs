//! # conc-wire
//!
//! Everything in conc that is bytes, and nothing that is a socket: the frame format and its
//! length-delimited codec (with a maximum frame size checked before memory is reserved), the
//! single bincode configuration ([`bin`]), the sans-IO cookie [`handshake`], async helpers that
//! run frames and the handshake over any stream ([`io`]), and the [`Transport`] trait that the
//! TCP and QUIC transports implement.
//!
//! A frame, encoded and decoded (what a transport does for every message):
//!
//! ```
//! use conc_core::{SendRequest, Target, TypeTag};
//! use conc_wire::frame::{self, Frame, FrameSplitter};
//!
//! let target = Target::Name("logger".into());
//! let body = "Log Message!".to_string();
//! let mut wire = Vec::new();
//! let req = SendRequest { target: &target, tag: TypeTag::of::<String>(), call_ref: None,
//!     body: &body, encode: None };
//! frame::encode_send(&mut wire, &req, conc_wire::DEFAULT_MAX_FRAME)?;
//! // A reader splits the stream into frames (refusing any over the limit before reading it)...
//! let (payload, used) = FrameSplitter::new(conc_wire::DEFAULT_MAX_FRAME).split(&wire)?.unwrap();
//! assert_eq!(used, wire.len());
//! // ...and decodes each; the body is decoded only once the target's type is known to match.
//! let Frame::Send { target: t, tag, body: bytes, .. } = Frame::decode(&wire[payload])? else {
//!     unreachable!()
//! };
//! assert_eq!((t, tag), (target, TypeTag::of::<String>()));
//! assert_eq!(conc_wire::bin::decode_exact::<String>(bytes)?, body);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Remote references (a `Pid` or `ReplyTo` inside a message) are serialized by conc-core's serde
//! impls and resolved against the receiving node's runtime; this crate carries their bytes.

pub mod bin;
pub mod frame;
pub mod handshake;
pub mod io;
pub mod liveness;
pub mod session;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trace;
pub mod transport;

pub use frame::{
    DEFAULT_MAX_FRAME, ErrorCode, FRAGMENT_CHUNK, Frame, FrameCodec, FrameError, FrameSplitter,
    Reassembly,
};
pub use handshake::{Cookie, CookieError, HandshakeConfig, NodeIdentity};
pub use transport::{
    BoxFuture, DownReason, EncodeFn, FrameMeta, Inbound, Limits, Proven, Route, RouteError,
    Transport, TransportConfig, TransportError, encode_frame, queue_frame,
};
