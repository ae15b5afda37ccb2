//! Traces across nodes: the trace context of a send or call travels with the message, in W3C
//! Trace Context's `traceparent` form, so that one request through several nodes is one trace.
//!
//! # How it works
//!
//! - **Ids.** `tracing` spans have no trace ids of their own. [`TraceLayer`] (a
//!   `tracing-subscriber` layer over its `Registry`) gives every new span W3C ids
//!   ([`SpanIds`]): a random 16-byte trace id for a root span, the parent's trace id for a
//!   child, and a random 8-byte span id. Read them with [`span_ids`].
//! - **Sending.** A remote `send` or `call` made while a span with ids is entered carries that
//!   span's context ([`TraceParent`]) in its frame, to peers whose handshake agreed on
//!   [`TRACE_CONTEXT`](conc_wire::handshake::TRACE_CONTEXT) (every node of this version; the
//!   first messages to a peer, queued before its first handshake completed, go without). Without
//!   a span, or without [`TraceLayer`], the frame is a plain `Send` frame: nothing is allocated
//!   and no byte is added.
//! - **Receiving.** When a frame carries a context and the receiving node's subscriber is
//!   interested in spans of target `conc_node::trace` at level INFO, the node makes a span
//!   `conc.recv` whose parent is the remote span (the field `conc.traceparent` holds the
//!   context, which [`TraceLayer`] reads: the span joins the sender's trace with the sender's
//!   span as its parent). The receiving process takes it with the message from
//!   [`Inbox::recv_traced`](conc_core::Inbox::recv_traced) and runs its handling inside it; what
//!   it sends from there carries the trace on to the next node. `recv`, `recv_matching` and
//!   `recv_event` drop the span.
//!
//! Replies, monitors and links carry no context (the caller's span already covers the call).
//!
//! ```
//! use conc_node::trace::{TraceLayer, span_ids};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let subscriber = tracing_subscriber::registry().with(TraceLayer::new());
//! tracing::subscriber::with_default(subscriber, || {
//!     let root = tracing::info_span!("request");
//!     let child = root.in_scope(|| tracing::info_span!("step"));
//!     let (r, c) = (span_ids(&root).unwrap(), span_ids(&child).unwrap());
//!     assert_eq!(c.trace_id, r.trace_id);
//!     assert_eq!(c.parent_span_id, Some(r.span_id));
//!     assert_eq!(c.to_traceparent().trace_id, r.trace_id);
//! });
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

pub use conc_wire::trace::{ParseTraceParentError, TraceParent};
use tracing::span::{Attributes, Id};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The field of a `conc.recv` span that holds the remote parent's `traceparent`.
pub const TRACEPARENT_FIELD: &str = "conc.traceparent";

/// The W3C ids [`TraceLayer`] gave a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpanIds {
    /// The trace the span belongs to (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The span's own id (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// The parent's span id: a local parent's, or for a `conc.recv` span the sender's span on
    /// the other node. `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the parent is a span on another node (a `conc.recv` span).
    pub remote_parent: bool,
}

impl SpanIds {
    /// This span as the parent of a span elsewhere (what a message sent inside it carries).
    pub fn to_traceparent(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id,
            span_id: self.span_id,
            flags: TraceParent::SAMPLED,
        }
    }
}

/// A `tracing-subscriber` layer that gives every span W3C trace and span ids (see the module
/// docs). Add it to a subscriber built on `tracing_subscriber::Registry` (as
/// `tracing_subscriber::registry()` and `tracing_subscriber::fmt()` are):
/// `tracing_subscriber::registry().with(TraceLayer::new()).with(fmt::layer())`.
///
/// Ids come from a splitmix64 sequence seeded from the OS's random source once per layer:
/// unique and unpredictable enough for tracing, not for secrets.
pub struct TraceLayer {
    state: AtomicU64,
}

impl fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer").finish_non_exhaustive()
    }
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLayer {
    /// A layer with a fresh random seed (from the system clock if the OS has no randomness).
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            seed = (now.as_nanos() as u64).to_le_bytes();
        }
        TraceLayer {
            state: AtomicU64::new(u64::from_le_bytes(seed)),
        }
    }

    /// The next non-zero 64-bit id (splitmix64).
    fn next(&self) -> u64 {
        loop {
            let mut z = self
                .state
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }

    fn trace_id(&self) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        id
    }
}

/// Finds the `conc.traceparent` field among a new span's fields.
struct RemoteParent(Option<TraceParent>);

impl tracing::field::Visit for RemoteParent {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == TRACEPARENT_FIELD {
            self.0 = value.parse().ok();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == TRACEPARENT_FIELD {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut remote = RemoteParent(None);
        if attrs.fields().field(TRACEPARENT_FIELD).is_some() {
            attrs.record(&mut remote);
        }
        let ids = if let Some(tp) = remote.0 {
            SpanIds {
                trace_id: tp.trace_id,
                span_id: self.next().to_be_bytes(),
                parent_span_id: Some(tp.span_id),
                remote_parent: true,
            }
        } else if let Some(parent) = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanIds>().copied())
        {
            SpanIds {
                trace_id: parent.trace_id,
                span_id: self.next().to_be_bytes(),
                parent_span_id: Some(parent.span_id),
                remote_parent: false,
            }
        } else {
            SpanIds {
                trace_id: self.trace_id(),
                span_id: self.next().to_be_bytes(),
                parent_span_id: None,
                remote_parent: false,
            }
        };
        span.extensions_mut().insert(ids);
    }
}

/// The ids [`TraceLayer`] gave the span `id` of the subscriber `dispatch`.
fn ids_in(dispatch: &Dispatch, id: &Id) -> Option<SpanIds> {
    let registry = dispatch.downcast_ref::<Registry>()?;
    let span = registry.span(id)?;
    span.extensions().get::<SpanIds>().copied()
}

/// The W3C ids of `span`, if the subscriber it belongs to has a [`TraceLayer`] over a
/// `Registry`; `None` for a disabled span or another subscriber.
pub fn span_ids(span: &tracing::Span) -> Option<SpanIds> {
    span.with_subscriber(|(id, dispatch)| ids_in(dispatch, id))
        .flatten()
}

/// The context a message sent now would carry: that of the current span, if it has ids
/// (from [`TraceLayer`], or with feature `otel` from tracing-opentelemetry's layer, preferred).
/// Allocates nothing without `otel`; with no span entered it reads one thread-local and
/// returns.
pub(crate) fn current() -> Option<TraceParent> {
    tracing::dispatcher::get_default(|dispatch| {
        let current = dispatch.current_span();
        let id = current.id()?;
        #[cfg(feature = "otel")]
        if let Some(tp) = otel::current() {
            return Some(tp);
        }
        ids_in(dispatch, id).map(|ids| ids.to_traceparent())
    })
}

/// With feature `otel`: the same contexts through tracing-opentelemetry's layer.
#[cfg(feature = "otel")]
mod otel {
    use super::TraceParent;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The OpenTelemetry context of the current span, if it has a valid one.
    pub(super) fn current() -> Option<TraceParent> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        TraceParent::new(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        )
    }

    /// Gives `span` the remote parent `parent` in OpenTelemetry (a no-op without its layer).
    pub(super) fn set_parent(span: &tracing::Span, parent: &TraceParent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(cx);
    }
}

/// The span a message that carried `parent` is handled in, or `None` when no subscriber wants
/// it (then nothing is allocated for it).
pub(crate) fn recv_span(parent: &TraceParent) -> Option<tracing::Span> {
    let span = tracing::info_span!(
        target: "conc_node::trace",
        parent: None,
        "conc.recv",
        conc.traceparent = %parent,
        otel.kind = "consumer"
    );
    if span.is_disabled() {
        return None;
    }
    #[cfg(feature = "otel")]
    otel::set_parent(&span, parent);
    Some(span)
}
