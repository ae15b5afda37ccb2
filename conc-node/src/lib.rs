//! # conc-node
//!
//! A conc node: one OS process, listening on `host:port`, whose processes can be addressed from
//! other nodes exactly like local ones. This is the seed post's `start-node`.
//!
//! ```
//! use conc_node::{Cookie, Inbox, Node, ReplyTo, Tcp};
//! use std::time::Duration;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Both nodes must hold the same cookie. Set it explicitly (here, or from your secret
//! // store); without `.cookie(..)` a node reads $CONC_COOKIE or ~/.conc/cookie, creating it.
//! let cookie = Cookie::new("a-long-random-shared-secret")?;
//!
//! // Machine 1 (port 0: any free port; `node.name()` says which).
//! let node = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie.clone())
//!     .transport(Tcp::pooled())
//!     .start()
//!     .await?;
//! let p1 = node.spawn(|mut inbox: Inbox<(String, ReplyTo<String>)>| async move {
//!     while let Some((_text, reply)) = inbox.recv().await {
//!         let _ = reply.send("Message Received!".to_string());
//!     }
//! });
//! node.register("process1", &p1)?;
//!
//! // Machine 2 (here in the same OS process; usually another one, or another host).
//! let node2 = Node::builder().cookie(cookie).transport(Tcp::pooled()).start().await?;
//! let p1 = node2.remote::<(String, ReplyTo<String>)>(node.name(), "process1")?;
//! let answer = p1
//!     .call(|reply| ("test-message".to_string(), reply), Duration::from_secs(5))
//!     .await?;
//! assert_eq!(answer, "Message Received!");
//! # node2.shutdown().await; node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Peers prove a shared cookie (see [`load_cookie`]) before anything they send is acted on.
//! Without the `tls` feature, TCP carries messages in clear: use it on trusted networks only.
//!
//! ## Metrics
//!
//! A node records through the [`metrics`](https://docs.rs/metrics) facade; install any recorder
//! (a Prometheus exporter, for instance) before starting nodes. Without one, recording costs
//! an atomic add on a no-op handle. Names and labels:
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `conc_messages_sent_total`, `conc_messages_received_total` | counter | `peer` | messages and replies to / from a peer (as [`PeerStats`] counts them) |
//! | `conc_bytes_sent_total`, `conc_bytes_received_total` | counter | `peer` | their bytes on the wire (length prefix, header, body) |
//! | `conc_dead_letters_total` | counter | `reason` | messages that could not be delivered, by reason (a fixed set) |
//! | `conc_refusals_total` | counter | `reason` | peers refused or misbehaving (handshake failures, limits, malformed frames) |
//! | `conc_node_up_total` | counter | | peer connections established |
//! | `conc_node_down_total` | counter | `reason` | peers lost, by [`DownReason`] |
//! | `conc_call_duration_seconds` | histogram | | from sending a remote call's request to its reply |
//! | `conc_outbound_queue_bytes`, `conc_outbound_queue_frames` | gauge | `peer` | bytes and frames queued for a peer and not yet written (what [`PeerStats`] shows as queued) |
//! | `conc_mailbox_length` | gauge | `name` | messages waiting in the mailbox of the process registered under `name`: queued, plus those its inbox took in and has not yet received |
//!
//! Counters and the histogram are recorded as things happen. The gauges are sampled: every
//! second by default ([`NodeBuilder::gauge_interval`]) and at every [`Node::stats`]. A peer or
//! name gone since the previous sample is set to 0 once.

pub mod admin;
mod cookie;
mod net;
pub mod proxy;
mod stats;
pub mod trace;

/// The README's examples, compiled and run as doctests (they use every transport, so with every
/// feature: `cargo test --doc -p conc-node --all-features`).
#[doc = include_str!("../../README.md")]
#[cfg(all(doctest, feature = "tls", feature = "quic"))]
pub struct ReadmeDoctests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a node samples its gauges by default (see [`NodeBuilder::gauge_interval`]).
pub const DEFAULT_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

pub use conc_core::{
    CallError, DeliverError, Down, DownReason, Event, Exit, ExitReason, Inbox, Message, MonitorRef,
    Pid, ProcessId, ProcessUri, RecvError, Refusal, RegisterError, RemoteError, ReplyError,
    ReplyErrorKind, ReplyFailure, ReplyTo, Runtime, SendError, SendErrorKind, SpawnOptions, Target,
    WhereisError,
};
/// Supervisors, the server behaviour and timers (from `conc-core`).
pub use conc_core::{SupervisorExit, server, supervisor, timer};
#[cfg(feature = "quic")]
pub use conc_quic::Quic;
#[cfg(feature = "tcp")]
pub use conc_tcp::{PerMessageTcp, PooledTcp, Tcp};
#[cfg(any(feature = "tls", feature = "quic"))]
pub use conc_wire::tls::{TlsError, TlsIdentity, TlsMode};
pub use conc_wire::{Cookie, Limits, Transport};
pub use cookie::{
    COOKIE_ENV, CookieLoadError, create_cookie_file, default_cookie_path, load_cookie,
    read_cookie_file,
};
pub use proxy::{ProxyOptions, ReadProxy, RemoteReader, RemoteWriter, WriteProxy};
pub use stats::{NodeStats, PeerStats};

pub use net::{DialPolicy, NodeEvent};
use net::{Hook, Net, NetInbound};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cookie could not be loaded.
    #[error(transparent)]
    Cookie(#[from] CookieLoadError),
    /// The transport failed to bind or start.
    #[error(transparent)]
    Transport(#[from] conc_wire::TransportError),
    /// No transport was given and none is compiled in.
    #[error("no transport: enable the `tcp` or `quic` feature or pass one to the builder")]
    NoTransport,
    /// The runtime already has a node.
    #[error("this runtime already has a node")]
    AlreadyStarted,
}

/// Why a reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The string is not a pid URI.
    #[error(transparent)]
    Parse(#[from] conc_core::ParseUriError),
    /// The node cannot resolve it.
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// A peer node [`Node::connect`] reached: the name and incarnation it proved in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectedPeer {
    /// The name the node proved (`host:port`); differs from the name dialled when that was an
    /// alias (`localhost:P` for `127.0.0.1:P`).
    pub name: String,
    /// Its incarnation.
    pub incarnation: u64,
}

/// Why [`Node::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer did not complete a handshake before the deadline. `last` is the latest failure
    /// the node reported for it during the attempts (connect refused or timed out: the peer
    /// is down or refused the connection; a failed handshake: the cookie is wrong), or `None`
    /// if no attempt had failed yet.
    #[error("{peer} was not reached within {timeout:?}{}", last.map(|r| format!(" ({r})")).unwrap_or_default())]
    Timeout {
        /// The name dialled.
        peer: String,
        /// The deadline given.
        timeout: Duration,
        /// The failure reported for the peer, if one was.
        last: Option<DownReason>,
    },
    /// The node reached proved a name that another live node already proved here (two nodes
    /// claim one name); it was refused.
    #[error("{peer}: another live node already proved this name")]
    NameConflict {
        /// The name dialled.
        peer: String,
    },
    /// The node's [`DialPolicy`] does not allow dialling this peer.
    #[error("not allowed to dial {0} (dial policy)")]
    DialRefused(String),
    /// The node keeps state for as many peers as [`Limits::max_peers`] allows, none idle.
    #[error("too many peer nodes: not reaching {0}")]
    TooManyPeers(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// The first wait between two attempts of [`Node::connect`]; doubled after each, up to
/// [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest wait between two attempts of [`Node::connect`].
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(1);

/// Configures and starts a [`Node`].
pub struct NodeBuilder {
    listen: Option<String>,
    advertise: Option<String>,
    cookie: Option<Cookie>,
    cookie_file: Option<PathBuf>,
    transport: Option<Arc<dyn Transport>>,
    limits: Limits,
    runtime: Option<Runtime>,
    dial: DialPolicy,
    gauge_interval: Option<Duration>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("transport", &self.transport.as_ref().map(|t| t.name()))
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Listen on `addr` (`host:port`; port 0 picks a free port). Without it the node only
    /// connects out (pooled transports carry replies back on the same connection; per-message
    /// TCP needs a listener to receive replies).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// The name other nodes reach this one by, if it differs from the listen address (for
    /// example when listening on `0.0.0.0`): `host:port`, or just `host` to combine it with
    /// the bound port (so it works with port 0).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// The cookie. Without it (and without [`NodeBuilder::cookie_file`]), it is loaded with
    /// [`load_cookie`]: `CONC_COOKIE`, else `~/.conc/cookie`.
    pub fn cookie(mut self, cookie: Cookie) -> Self {
        self.cookie = Some(cookie);
        self
    }

    /// Read the cookie from this file (unless `CONC_COOKIE` is set).
    pub fn cookie_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cookie_file = Some(path.into());
        self
    }

    /// The transport. Default: pooled TCP.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// A transport already in an `Arc` (for choosing among several at run time).
    pub fn transport_arc(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Limits on frames, handshakes, queues and heartbeats.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Which nodes this node may dial (default [`DialPolicy::Any`]). Pids received in messages
    /// name their nodes; with [`DialPolicy::AllowList`] a pid of a node not on the list cannot
    /// be used (sends fail with [`RemoteError::DialRefused`]), unless that node connected to
    /// this one.
    pub fn dial_policy(mut self, policy: DialPolicy) -> Self {
        self.dial = policy;
        self
    }

    /// Start the node on an existing runtime (its processes become reachable).
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// How often the node samples its gauges (`conc_outbound_queue_bytes`,
    /// `conc_outbound_queue_frames`, `conc_mailbox_length`; see the crate docs' metrics),
    /// default [`DEFAULT_GAUGE_INTERVAL`] (1 s); `None` samples them only at [`Node::stats`].
    /// A sample locks the peer table and each registered process's mailbox once.
    pub fn gauge_interval(mut self, interval: Option<Duration>) -> Self {
        self.gauge_interval = interval.filter(|i| !i.is_zero());
        self
    }

    /// Starts the node (the seed's `start-node`): loads the cookie, binds the listener, and
    /// makes the runtime's processes reachable from other nodes.
    pub async fn start(self) -> Result<Node, StartError> {
        let cookie = match self.cookie {
            Some(c) => c,
            None => load_cookie(self.cookie_file.as_deref())?,
        };
        let transport = match self.transport {
            Some(t) => t,
            None => default_transport().ok_or(StartError::NoTransport)?,
        };
        let rt = self.runtime.unwrap_or_default();
        if rt.node_side().hook().is_some() {
            return Err(StartError::AlreadyStarted);
        }
        let local_addr = match &self.listen {
            Some(addr) => Some(transport.bind(addr).await?),
            None => None,
        };
        let name: Arc<str> = match (&self.advertise, &self.listen, local_addr) {
            (Some(a), _, Some(addr)) if !has_port(a) => format!("{a}:{}", addr.port()).into(),
            (Some(a), _, _) => a.as_str().into(),
            (None, Some(listen), Some(addr)) => node_name(listen, addr).into(),
            _ => format!("client-{:016x}", rt.incarnation()).into(),
        };
        let net = Net::new(
            rt.clone(),
            name.clone(),
            transport.clone(),
            &self.limits,
            local_addr,
            self.dial,
        );
        rt.node_side()
            .install_hook(Arc::new(Hook(Arc::downgrade(&net), name.clone())))
            .map_err(|_| StartError::AlreadyStarted)?;
        transport
            .start(
                conc_wire::TransportConfig {
                    identity: conc_wire::NodeIdentity {
                        name: name.to_string(),
                        incarnation: rt.incarnation(),
                    },
                    cookie,
                    limits: self.limits.clone(),
                },
                Arc::new(NetInbound::new(&net)),
            )
            .await?;
        if transport.needs_probes() {
            net.spawn_prober(self.limits.heartbeat_interval);
        }
        if let Some(interval) = self.gauge_interval {
            net.spawn_gauge_sampler(interval);
        }
        tracing::info!(node = %name, transport = transport.name(), "node started");
        Ok(Node { net, local_addr })
    }
}

#[cfg(feature = "tcp")]
fn default_transport() -> Option<Arc<dyn Transport>> {
    Some(Arc::new(Tcp::pooled()))
}

#[cfg(not(feature = "tcp"))]
fn default_transport() -> Option<Arc<dyn Transport>> {
    None
}

/// Whether `addr` ends with `:port` (and is not a bare IPv6 address).
fn has_port(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    addr.rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The node's name from the listen address as given and the bound address: the given host with
/// the bound port (so port 0 becomes the real port), or 127.0.0.1 for an unspecified host.
fn node_name(listen: &str, bound: SocketAddr) -> String {
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or(listen);
    let unspecified = host.is_empty() || host == "0.0.0.0" || host == "[::]" || host == "::";
    if unspecified {
        if bound.is_ipv6() {
            format!("[::1]:{}", bound.port())
        } else {
            format!("127.0.0.1:{}", bound.port())
        }
    } else {
        format!("{host}:{}", bound.port())
    }
}

/// A started node: a [`Runtime`] whose processes are reachable from other nodes, and the way
/// to theirs. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    net: Arc<Net>,
    local_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.net.name)
            .field("transport", &self.net.transport.name())
            .finish()
    }
}

impl Node {
    /// A builder.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            listen: None,
            advertise: None,
            cookie: None,
            cookie_file: None,
            transport: None,
            limits: Limits::default(),
            runtime: None,
            dial: DialPolicy::Any,
            gauge_interval: Some(DEFAULT_GAUGE_INTERVAL),
        }
    }

    /// The node's name (`host:port`, or a generated `client-…` name if it does not listen).
    pub fn name(&self) -> &str {
        &self.net.name
    }

    /// The node's URI, `conc://host:port`.
    pub fn uri(&self) -> String {
        format!("conc://{}", self.net.name)
    }

    /// The bound listen address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.net.rt.incarnation()
    }

    /// The name of the transport in use.
    pub fn transport_name(&self) -> &'static str {
        self.net.transport.name()
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.net.rt
    }

    /// Spawns a process (see [`Runtime::spawn`]). The node registers its codec for `M` first
    /// (as [`remote`](Node::remote) and [`resolve`](Node::resolve) do), so messages from other
    /// nodes decode without type erasure (see [`conc_core::Codec`]).
    pub fn spawn<M, F, Fut>(&self, f: F) -> Pid<M>
    where
        M: Message,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        register_codec::<M>(&self.net.rt);
        self.net.rt.spawn(f)
    }

    /// Spawns a process with options (see [`Runtime::spawn_with`]).
    pub fn spawn_with<M, F, Fut>(&self, options: SpawnOptions, f: F) -> Pid<M>
    where
        M: Message,
        F: FnOnce(Inbox<M>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        register_codec::<M>(&self.net.rt);
        self.net.rt.spawn_with(options, f)
    }

    /// Registers a local process under a name (see [`Runtime::register`]).
    pub fn register<M: Send + 'static>(
        &self,
        name: &str,
        pid: &Pid<M>,
    ) -> Result<(), RegisterError> {
        self.net.rt.register(name, pid)
    }

    /// Removes a name.
    pub fn unregister(&self, name: &str) -> bool {
        self.net.rt.unregister(name)
    }

    /// Looks up a local name (see [`Runtime::whereis`]).
    pub fn whereis<M: Send + 'static>(&self, name: &str) -> Result<Pid<M>, WhereisError> {
        self.net.rt.whereis(name)
    }

    /// A pid for the process registered as `name` on the node at `node` (`host:port`): the
    /// seed's `<remote-process>`. The name is looked up by the remote node at each delivery, so
    /// the reference keeps working if the named process restarts.
    pub fn remote<M: Message>(&self, node: &str, name: &str) -> Result<Pid<M>, RemoteError> {
        register_codec::<M>(&self.net.rt);
        self.net.rt.resolve(&ProcessUri::named(node, name))
    }

    /// A typed pid from a persistent reference (`conc://host:port/name/<name>` or
    /// `conc://host:port/<incarnation>/<id>`).
    pub fn resolve<M: Message>(&self, uri: &str) -> Result<Pid<M>, ResolveError> {
        let uri: ProcessUri = uri.parse()?;
        register_codec::<M>(&self.net.rt);
        Ok(self.net.rt.resolve(&uri)?)
    }

    /// Connects to the node `peer` (`host:port`) now: dials it and runs the handshake, and
    /// returns once the peer has proven its identity (Erlang's `net_kernel:connect_node`).
    /// Returns at once if it is connected already (see [`Node::nodes`]), or if `peer` names
    /// this node.
    ///
    /// A failed attempt (connection refused or reset, the peer's handshake caps full during a
    /// start-up storm, a timeout) is retried with backoff (50 ms doubling to 1 s, and the
    /// transport's own reconnect backoff) until `timeout` has passed since the call. On the
    /// pooled transports and QUIC the connection then stays up (heartbeats, reconnects); on
    /// per-message TCP, which keeps no connections, "connected" means that this delivery
    /// (a ping) reached the peer.
    ///
    /// Errors: [`ConnectError::Timeout`] (with the failure seen, if any: a wrong cookie shows
    /// as [`DownReason::HandshakeFailed`]), [`ConnectError::NameConflict`],
    /// [`ConnectError::DialRefused`], [`ConnectError::TooManyPeers`],
    /// [`ConnectError::ShuttingDown`].
    ///
    /// ```
    /// use conc_node::{Cookie, Node, Tcp};
    /// use std::time::Duration;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cookie = Cookie::new("a shared secret")?;
    /// let a = Node::builder().listen("127.0.0.1:0").cookie(cookie.clone())
    ///     .transport(Tcp::pooled()).start().await?;
    /// let b = Node::builder().cookie(cookie).transport(Tcp::pooled()).start().await?;
    /// let peer = b.connect(a.name(), Duration::from_secs(10)).await?;
    /// assert_eq!(peer.name, a.name());
    /// assert!(b.is_connected(a.name()));
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        &self,
        peer: &str,
        timeout: Duration,
    ) -> Result<ConnectedPeer, ConnectError> {
        let net = &self.net;
        if net.is_self(peer) {
            return Ok(ConnectedPeer {
                name: self.name().to_string(),
                incarnation: self.incarnation(),
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before the first check, so a `Down` in between is seen.
        let mut events = net.events.subscribe();
        let up = || {
            let name = net.canon(peer);
            net.up_peers()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(name, incarnation)| ConnectedPeer { name, incarnation })
        };
        let proven = net.proven_changed.notified();
        tokio::pin!(proven);
        let mut last: Option<DownReason> = None;
        let mut wait = CONNECT_RETRY_MIN;
        loop {
            proven.set(net.proven_changed.notified());
            proven.as_mut().enable();
            if let Some(p) = up() {
                return Ok(p);
            }
            match net.ping(peer) {
                Ok(()) => {}
                Err(RemoteError::DialRefused(p)) => return Err(ConnectError::DialRefused(p)),
                Err(RemoteError::TooManyPeers(p)) => return Err(ConnectError::TooManyPeers(p)),
                Err(RemoteError::ShuttingDown) => return Err(ConnectError::ShuttingDown),
                // Backing off after a failed connect, or the queue is full: the next
                // attempt comes after the wait below.
                Err(RemoteError::Connection { reason, .. }) => {
                    last.get_or_insert(reason);
                }
                Err(e) => tracing::debug!(peer, error = %e, "connect: ping not queued"),
            }
            let retry = (tokio::time::Instant::now() + wait).min(deadline);
            wait = (wait * 2).min(CONNECT_RETRY_MAX);
            // Until the peer is proven, or this attempt's wait is over.
            loop {
                tokio::select! {
                    () = &mut proven => {
                        proven.set(net.proven_changed.notified());
                        proven.as_mut().enable();
                        if let Some(p) = up() {
                            return Ok(p);
                        }
                    }
                    ev = events.recv() => match ev {
                        Ok(NodeEvent::Down { name, reason }) if name == net.canon(peer) => {
                            match reason {
                                DownReason::NameConflict => {
                                    return Err(ConnectError::NameConflict {
                                        peer: peer.to_string(),
                                    });
                                }
                                DownReason::ShuttingDown => return Err(ConnectError::ShuttingDown),
                                _ => last = Some(reason),
                            }
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            if let Some(p) = up() {
                                return Ok(p);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return Err(ConnectError::ShuttingDown);
                        }
                    },
                    () = tokio::time::sleep_until(retry) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return match up() {
                    Some(p) => Ok(p),
                    None => Err(ConnectError::Timeout {
                        peer: peer.to_string(),
                        timeout,
                        last,
                    }),
                };
            }
        }
    }

    /// Subscribes to node up / node down events for all peers (Erlang's `net_kernel:monitor_nodes`).
    /// Filter by [`NodeEvent`]'s name for one peer, or use [`Node::node_down`]. The channel
    /// keeps the last 1,024 events; a subscriber that falls further behind skips the oldest
    /// (tokio's broadcast `Lagged`).
    pub fn node_events(&self) -> tokio::sync::broadcast::Receiver<NodeEvent> {
        self.net.events.subscribe()
    }

    /// Waits until the node named `peer` is declared down; returns the reason (Erlang's
    /// `monitor_node`). `peer` may be any name the node was reached by (an alias names the
    /// same node). On per-message TCP a peer is probed only while something waits on it (a
    /// call, a monitor or a link) — as this future does not, pair it with a monitor there.
    /// If this node shuts down first, returns [`DownReason::ShuttingDown`].
    pub async fn node_down(&self, peer: &str) -> DownReason {
        let mut rx = self.node_events();
        loop {
            match rx.recv().await {
                Ok(NodeEvent::Down { name, reason }) if name == self.net.canon(peer) => {
                    return reason;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return DownReason::ShuttingDown;
                }
            }
        }
    }

    /// The peer nodes this node is connected to now, by their proven names (Erlang's
    /// `nodes()`): every peer that proved its identity in a handshake and has not been seen
    /// down since. On per-message TCP, which keeps no connections, "connected" means: the last
    /// delivery or probe to it succeeded.
    pub fn nodes(&self) -> Vec<String> {
        self.net.up_peers().into_iter().map(|(n, _)| n).collect()
    }

    /// Whether the node reached as `peer` (its name or an alias) is among [`Node::nodes`].
    pub fn is_connected(&self, peer: &str) -> bool {
        let c = self.net.canon(peer);
        self.net.up_peers().iter().any(|(n, _)| *n == c)
    }

    /// Subscribes to node events starting from the current state: the returned stream first
    /// yields a [`NodeEvent::Up`] for every peer in [`Node::nodes`], then every event as it
    /// happens (Erlang's `net_kernel:monitor_nodes` after `nodes()`, without the race between
    /// the two: the subscription is made before the state is read, so an event in between is
    /// seen, at worst after an `Up` that it follows).
    pub fn monitor_nodes(&self) -> NodeEvents {
        let rx = self.net.events.subscribe();
        let initial = self
            .net
            .up_peers()
            .into_iter()
            .map(|(name, incarnation)| NodeEvent::Up { name, incarnation })
            .collect();
        NodeEvents { initial, rx }
    }

    /// A snapshot of the node's counters. Also samples the gauges (see
    /// [`NodeBuilder::gauge_interval`]).
    pub fn stats(&self) -> NodeStats {
        self.net.sample_gauges();
        let c = &self.net.counters;
        // The counters map is read on its own, then each peer's queue: never both locks at
        // once (the peer table is locked before the counters elsewhere).
        let counters: Vec<(String, Arc<stats::PeerCounters>)> = c
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        // One entry per node, under the name it proved: what was counted under an alias is
        // added to it.
        let mut merged: std::collections::BTreeMap<String, PeerStats> = Default::default();
        for (n, p) in counters {
            let snap = p.snapshot(&n, self.net.queued(&n));
            let canonical = self.net.canon(&n);
            match merged.get_mut(&canonical) {
                Some(into) => into.absorb(snap),
                None => {
                    let mut snap = snap;
                    snap.name = canonical.clone();
                    merged.insert(canonical, snap);
                }
            }
        }
        let peers: Vec<PeerStats> = merged.into_values().collect();
        NodeStats {
            name: self.net.name.to_string(),
            processes: self.net.rt.process_count(),
            registered: self.net.rt.registered(),
            dead_letters: c
                .dead_letters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            rejected: c.rejected.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            late_replies: c.late_replies.load(std::sync::atomic::Ordering::Relaxed),
            peers,
        }
    }

    /// Total messages that could not be delivered (all reasons).
    pub fn dead_letters(&self) -> u64 {
        self.net
            .counters
            .dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Shuts the node down. At once: every call of this node still waiting for a reply from
    /// another node fails with [`CallError::ShuttingDown`], and every later send, call,
    /// monitor or link towards another node fails (sends and calls with
    /// [`RemoteError::ShuttingDown`], monitors with a `Down` of reason no-connection, links with
    /// an exit of reason no-connection). Then it tells connected peers goodbye after what was
    /// already queued, stops accepting, and closes every mailbox (each process's `recv`
    /// returns what is queued, then `None`).
    pub async fn shutdown(&self) {
        self.net.begin_shutdown();
        self.net.transport.shutdown().await;
        self.net.rt.shutdown();
    }
}

/// Node events starting from the current state (see [`Node::monitor_nodes`]).
#[derive(Debug)]
pub struct NodeEvents {
    initial: std::collections::VecDeque<NodeEvent>,
    rx: tokio::sync::broadcast::Receiver<NodeEvent>,
}

impl NodeEvents {
    /// The next event: first the `Up` of every peer connected when the stream was made, then
    /// events as they happen. `None` once the node is gone. A subscriber that falls more than
    /// 1,024 events behind skips the oldest.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        if let Some(e) = self.initial.pop_front() {
            return Some(e);
        }
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The transports compiled in, by command-line name.
pub fn transport_names() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(feature = "tcp")]
    v.extend(["per-message-tcp", "pooled-tcp"]);
    #[cfg(feature = "tls")]
    v.push("pooled-tcp-tls");
    #[cfg(feature = "quic")]
    v.push("quic");
    v
}

/// Why a transport name is not known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {name:?}: this build has {known}")]
pub struct UnknownTransport {
    name: String,
    known: String,
}

/// A new transport by its command-line name: `per-message-tcp`, `pooled-tcp`,
/// `pooled-tcp-tls` (pooled TCP over TLS with self-signed certificates) or `quic` (each only if
/// its feature is compiled in).
pub fn transport_by_name(name: &str) -> Result<Arc<dyn Transport>, UnknownTransport> {
    match name {
        #[cfg(feature = "tcp")]
        "per-message-tcp" => Ok(Arc::new(Tcp::per_message())),
        #[cfg(feature = "tcp")]
        "pooled-tcp" => Ok(Arc::new(Tcp::pooled())),
        #[cfg(feature = "tls")]
        "pooled-tcp-tls" => Ok(Arc::new(Tcp::pooled().with_tls(TlsMode::SelfSigned))),
        #[cfg(feature = "quic")]
        "quic" => Ok(Arc::new(conc_quic::Quic::new())),
        _ => Err(UnknownTransport {
            name: name.to_string(),
            known: transport_names().join(", "),
        }),
    }
}

/// Registers bincode (conc-wire's `bin`) as the codec of message type `M`, so that pids and
/// processes of `M` encode and decode without type erasure (see [`conc_core::Codec`]).
fn register_codec<M: Message>(rt: &Runtime) {
    rt.register_codec::<M>(conc_core::Codec {
        encode: conc_wire::bin::encode_body::<M>,
        decode: conc_wire::bin::decode_body::<M>,
    });
}
