//! Trace context carried across nodes, in the form of W3C Trace Context's `traceparent`
//! (<https://www.w3.org/TR/trace-context/>).
//!
//! A message sent from inside a traced span carries that span's context, so that the receiving
//! process's handling can run in a child span and one request through several nodes is one
//! trace. It is carried only to peers whose handshake agreed on
//! [`TRACE_CONTEXT`](crate::handshake::TRACE_CONTEXT), in a `SendTraced` frame (kind
//! [`kind::SEND_TRACED`](crate::frame::kind::SEND_TRACED)): a `Send` frame with the
//! [`TraceParent::WIRE_LEN`] bytes of [`TraceParent::to_bytes`] between its kind and its header.
//! A message sent outside any traced span is an ordinary `Send` frame, byte for byte.

use std::fmt;
use std::str::FromStr;

/// A W3C `traceparent`: which trace a message belongs to and which span sent it.
///
/// Its text form is `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`, for example
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
///
/// ```
/// use conc_wire::trace::TraceParent;
/// let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap();
/// assert!(tp.sampled());
/// assert_eq!(tp.to_string(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(TraceParent::from_bytes(&tp.to_bytes()), Some(tp));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace's id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The sending span's id (8 bytes, not all zero): the receiver's span's parent.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Why a `traceparent` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseTraceParentError {
    /// Not `version-traceid-parentid-flags` with 2, 32, 16 and 2 hex digits.
    #[error("not a traceparent: expected 00-<32 hex>-<16 hex>-<2 hex>")]
    Format,
    /// A version this build does not read (only `00`).
    #[error("unsupported traceparent version {0:#04x}")]
    Version(u8),
    /// An all-zero trace id or parent id (invalid by the W3C rules).
    #[error("all-zero trace id or parent id")]
    Zero,
}

impl TraceParent {
    /// The W3C version this build writes.
    pub const VERSION: u8 = 0;
    /// The "sampled" bit of [`TraceParent::flags`].
    pub const SAMPLED: u8 = 0x01;
    /// Length of [`TraceParent::to_bytes`]: version (1), trace id (16), parent id (8), flags (1).
    pub const WIRE_LEN: usize = 26;

    /// A context for the span `span_id` of the trace `trace_id`; `None` if either is all zero
    /// (invalid by the W3C rules).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the sender sampled the trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The wire form: version 0, trace id, parent id, flags ([`TraceParent::WIRE_LEN`] bytes).
    pub fn to_bytes(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0; Self::WIRE_LEN];
        b[0] = Self::VERSION;
        b[1..17].copy_from_slice(&self.trace_id);
        b[17..25].copy_from_slice(&self.span_id);
        b[25] = self.flags;
        b
    }

    /// Reads the wire form. `None` for a version other than 0 or all-zero ids: by the W3C
    /// rules an invalid context is ignored (the receiver starts a new trace), not an error.
    pub fn from_bytes(b: &[u8; Self::WIRE_LEN]) -> Option<Self> {
        if b[0] != Self::VERSION {
            return None;
        }
        let mut trace_id = [0; 16];
        trace_id.copy_from_slice(&b[1..17]);
        let mut span_id = [0; 8];
        span_id.copy_from_slice(&b[17..25]);
        TraceParent::new(trace_id, span_id, b[25])
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}-", Self::VERSION)?;
        hex(f, &self.trace_id)?;
        f.write_str("-")?;
        hex(f, &self.span_id)?;
        write!(f, "-{:02x}", self.flags)
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

fn unhex<const N: usize>(s: &str) -> Result<[u8; N], ParseTraceParentError> {
    let bytes = s.as_bytes();
    if bytes.len() != 2 * N {
        return Err(ParseTraceParentError::Format);
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(ParseTraceParentError::Format),
    };
    let mut out = [0; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Ok(out)
}

impl FromStr for TraceParent {
    type Err = ParseTraceParentError;

    /// Parses the text form (lower-case hex, as W3C requires).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('-');
        let (Some(v), Some(t), Some(p), Some(fl), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseTraceParentError::Format);
        };
        let [version] = unhex::<1>(v)?;
        if version != Self::VERSION {
            return Err(ParseTraceParentError::Version(version));
        }
        let [flags] = unhex::<1>(fl)?;
        TraceParent::new(unhex(t)?, unhex(p)?, flags).ok_or(ParseTraceParentError::Zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_bytes_round_trip_and_bad_input_is_refused() {
        let tp = TraceParent::new([0xab; 16], [0x01; 8], 1).unwrap();
        assert_eq!(tp.to_string().parse::<TraceParent>(), Ok(tp));
        assert_eq!(TraceParent::from_bytes(&tp.to_bytes()), Some(tp));
        assert_eq!(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(ParseTraceParentError::Zero)
        );
        assert_eq!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse::<TraceParent>(),
            Err(ParseTraceParentError::Version(1))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(
                bad.parse::<TraceParent>(),
                Err(ParseTraceParentError::Format),
                "{bad}"
            );
        }
        let mut b = tp.to_bytes();
        b[0] = 0xff;
        assert_eq!(TraceParent::from_bytes(&b), None);
        assert_eq!(TraceParent::from_bytes(&[0; TraceParent::WIRE_LEN]), None);
    }
}
