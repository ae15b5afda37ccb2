//! [`PeerEntry`]: a [`PeerSession`] under its lock, with the wake-ups its writers and senders
//! wait on, as a [`Route`]. The pooled transports keep one entry per peer name and supply only
//! what needs their sockets ([`Connector`]: dialling); everything else about a peer (queueing,
//! refusing, connecting once, forwarding an alias, establishing and losing connections, and
//! reporting what that does to the node) is here, once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::Notify;
use tracing::Instrument;

use super::outbound::LaneModel;
use super::peer::{Ended, PeerSession, Queued, Take};
use super::{ConnKey, Established};
use crate::handshake::NodeIdentity;
use crate::io::IoError;
use crate::transport::{
    BoxFuture, DownReason, EncodeFn, FrameMeta, Inbound, Limits, Route, RouteError,
};

/// What a pooled transport supplies to its [`PeerEntry`]s: dialling.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + Sized + 'static {
    /// The transport's handle of an established connection.
    type Conn: Clone + Send + Sync + 'static;

    /// Dials `peer` once, authenticates the connection and hands it to
    /// [`PeerEntry::establish`] (of `peer`, or of the entry of the name the peer proved).
    /// A [`DialError::Busy`] is dialled again with [`BusyRetry`](super::BusyRetry); any other
    /// error makes the entry back off ([`PeerEntry::connect_failed`]).
    async fn dial(self: Arc<Self>, peer: Arc<PeerEntry<Self>>) -> Result<(), DialError>;

    /// Whether the transport is shutting down (a busy peer is then not dialled again).
    fn stopping(&self) -> bool;
}

/// How one dial failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum DialError {
    /// The peer refused the connection before the handshake because its handshake caps were
    /// full: it is alive but busy (a start-up storm). Dialled again, for a bounded time.
    Busy(IoError),
    /// Anything else.
    Failed(IoError),
}

impl From<IoError> for DialError {
    fn from(e: IoError) -> Self {
        DialError::Failed(e)
    }
}

impl From<std::io::Error> for DialError {
    fn from(e: std::io::Error) -> Self {
        DialError::Failed(e.into())
    }
}

/// Now, on tokio's clock (so a test with paused time controls it).
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything a pooled transport keeps about one peer name (see the module docs). Outlives
/// the peer's connections, so routes held by pids survive reconnection.
pub struct PeerEntry<D: Connector> {
    name: String,
    me: Weak<PeerEntry<D>>,
    connector: Weak<D>,
    /// The runtime the transport was started on (sends may come from threads outside it).
    handle: tokio::runtime::Handle,
    /// The node the transport reports to.
    inbound: Arc<dyn Inbound>,
    /// The transport's limits (for the busy retries).
    limits: Limits,
    session: Mutex<PeerSession<D::Conn>>,
    /// One per lane: wakes the lane's writer when the lane goes from empty to non-empty.
    data: Box<[Notify]>,
    /// Wakes senders waiting for room.
    room: Notify,
    /// Wakes readers waiting for a retired connection to drain, or for theirs to stop being
    /// the current one: notified whenever a connection is established or ends.
    changed: Notify,
    /// The session's count of draining connections, read without its lock on every frame
    /// received.
    draining: std::sync::atomic::AtomicUsize,
    max_frame: usize,
    /// Set when this entry's name turned out to be an alias of a node known by another
    /// (proven) name: everything goes to that node's entry from then on.
    forward: OnceLock<Arc<PeerEntry<D>>>,
}

impl<D: Connector> std::fmt::Debug for PeerEntry<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<D: Connector> PeerEntry<D> {
    /// A new entry for the peer `name` of `table`, dialled through `connector`.
    fn new(name: &str, connector: &Arc<D>, table: &PeerTable<D>) -> Arc<Self> {
        let (model, limits) = (table.model, &table.limits);
        Arc::new_cyclic(|me| PeerEntry {
            name: name.to_string(),
            me: me.clone(),
            connector: Arc::downgrade(connector),
            handle: table.handle.clone(),
            inbound: table.inbound.clone(),
            limits: limits.clone(),
            session: Mutex::new(PeerSession::new(model, limits.max_queue_bytes)),
            data: (0..model.lanes()).map(|_| Notify::new()).collect(),
            room: Notify::new(),
            changed: Notify::new(),
            draining: std::sync::atomic::AtomicUsize::new(0),
            max_frame: limits.max_frame,
            forward: OnceLock::new(),
        })
    }

    /// The name this entry was made for.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry this one forwards to, if its name is an alias.
    pub fn forwarded(&self) -> Option<&Arc<PeerEntry<D>>> {
        self.forward.get()
    }

    /// The current connection.
    pub fn conn(&self) -> Option<D::Conn> {
        lock(&self.session).slot().conn().cloned()
    }

    /// Whether connection `id` is the current one.
    pub fn is_current(&self, id: u64) -> bool {
        lock(&self.session).slot().is_current(id)
    }

    /// Whether the entry may be dropped from the transport's table: nothing holds it but
    /// `this` reference, and nothing is connected, connecting or queued.
    pub fn is_forgettable(this: &Arc<Self>) -> bool {
        Arc::strong_count(this) == 1 && lock(&this.session).is_idle()
    }

    /// The wake-up of `lane`'s writer.
    pub fn data(&self, lane: usize) -> &Notify {
        &self.data[lane.min(self.data.len() - 1)]
    }

    /// The writer of connection `conn_id` takes what `lane` carries next (see
    /// [`PeerSession::take`]). A writer told [`Take::NotCurrent`] has had a wake-up that may
    /// have been meant for the current connection's writer: it is passed on here.
    pub fn take(&self, conn_id: u64, lane: usize, out: &mut Vec<u8>, fragments: bool) -> Take {
        let (took, waiting) = {
            let mut s = lock(&self.session);
            let took = s.take(conn_id, lane, out, fragments);
            let progress = matches!(took, Take::Took | Take::TookLarge(_));
            (took, if progress { s.take_waiting(lane) } else { 0 })
        };
        // Writers stopped at a barrier this take may have let through.
        for l in (0..self.data.len()).filter(|&l| waiting & (1 << l) != 0) {
            self.data(l).notify_one();
        }
        match took {
            Take::Took | Take::TookLarge(_) => self.room.notify_waiters(),
            Take::NotCurrent => self.data(lane).notify_one(),
            Take::Empty => {}
        }
        took
    }

    fn connector(&self) -> Option<Arc<D>> {
        self.connector.upgrade()
    }

    /// Appends one encoded frame (or hands it to the entry this one is an alias of), then
    /// starts a connect or wakes a writer as the session says.
    fn append(&self, bytes: &[u8], meta: &FrameMeta) -> Result<(), RouteError> {
        // A large frame is copied before the lock is taken: copying megabytes under it would
        // hold up every sender and writer of the peer.
        let owned = super::Outbound::is_large(bytes.len()).then(|| bytes.to_vec());
        let mut s = lock(&self.session);
        // Checked under the lock: the forward is set, and the queue moved, under it.
        if let Some(f) = self.forward.get() {
            drop(s);
            return f.append(bytes, meta);
        }
        let queued = match owned {
            Some(owned) => s.push_owned(owned, meta, now)?,
            None => s.push(bytes, meta, now)?,
        };
        drop(s);
        match queued {
            Queued::Wake(lane) => self.data(lane).notify_one(),
            Queued::Connect => self.spawn_connect(),
            Queued::Nothing => {}
        }
        Ok(())
    }

    /// Starts a connect task: [`Connector::dial`], again with [`BusyRetry`](super::BusyRetry)
    /// while the peer is busy (its frames wait in the queue meanwhile), and on failure (or the
    /// retry window passing) [`PeerEntry::connect_failed`].
    fn spawn_connect(&self) {
        let (Some(connector), Some(peer)) = (self.connector(), self.me.upgrade()) else {
            return;
        };
        let span = tracing::debug_span!("connect", peer = %self.name);
        let mut busy = super::BusyRetry::new(&self.limits);
        self.handle.spawn(
            async move {
                let failed = loop {
                    match connector.clone().dial(peer.clone()).await {
                        Ok(()) => return,
                        Err(DialError::Busy(e))
                            if peer.forwarded().is_none() && !connector.stopping() =>
                        {
                            let Some(wait) = busy.wait(now()) else {
                                break e;
                            };
                            tracing::debug!(?wait, "refused by a busy peer: dialling again");
                            tokio::time::sleep(wait).await;
                        }
                        Err(DialError::Busy(e) | DialError::Failed(e)) => break e,
                    }
                };
                tracing::debug!(error = %failed, "connect failed");
                peer.connect_failed(failed.down_reason());
            }
            .instrument(span),
        );
    }

    /// A connect failed: the entry backs off, and when nothing is connected what was queued
    /// is dropped and reported undeliverable with `reason`.
    pub fn connect_failed(&self, reason: DownReason) {
        let dropped = lock(&self.session).connect_failed(now());
        if let Some(frames) = dropped {
            self.room.notify_waiters();
            if frames > 0 {
                self.inbound.undeliverable(&self.name, frames, None, reason);
            }
        }
    }

    /// Makes this entry (named by an alias) forward to `canonical`, the entry of the name the
    /// peer proved, moving what is queued here behind what is queued there.
    pub fn forward_to(&self, canonical: &Arc<PeerEntry<D>>) {
        if std::ptr::eq(self, &**canonical) {
            return;
        }
        let moved = {
            let mut s = lock(&self.session);
            if self.forward.set(canonical.clone()).is_err() {
                return;
            }
            s.become_alias()
        };
        self.room.notify_waiters();
        if moved.frames() > 0 {
            let woken = lock(&canonical.session).absorb(moved);
            for lane in woken {
                canonical.data(lane).notify_one();
            }
        }
    }

    /// An authenticated connection `key` (handle `conn`) was established, by either side:
    /// decides whether it carries the peer's frames from now on, tells the node (the old
    /// incarnation down when the peer restarted, the peer up unless the connection is a
    /// duplicate) and wakes the writers of lanes with frames queued. Returns what
    /// [`PeerSession::establish`] decided: on [`Established::Duplicate`] nothing is to be
    /// written on the connection; a `replaced` connection is to be closed after a grace.
    ///
    /// `handover`: both nodes agreed [`HANDOVER`](crate::handshake::HANDOVER) on the
    /// connection (see [`PeerSession`]'s docs for what it changes).
    pub fn establish(&self, key: ConnKey, conn: D::Conn, handover: bool) -> Established<D::Conn> {
        let who = key.peer.clone();
        let (decided, lanes_with_data) = self.change(|s| s.establish(key, conn, handover));
        match &decided {
            Established::Duplicate => {
                // Simultaneous connect: this connection loses. It is not written to; it is read
                // until the peer, which makes the same choice, stops writing on it.
                tracing::debug!("duplicate connection (simultaneous connect)");
            }
            Established::Current { restarted, .. } => {
                if let Some(old) = restarted {
                    self.inbound.peer_down(old, DownReason::Restarted);
                }
                self.inbound.peer_up(&who);
                for lane in lanes_with_data {
                    self.data(lane).notify_one();
                }
            }
        }
        decided
    }

    /// Applies a change of connections (`what`) to the session, then wakes whoever waits on one
    /// ([`PeerEntry::wait_delivery`], [`PeerEntry::wait_not_current`]); returns its result and
    /// the lanes with frames queued.
    fn change<T>(&self, what: impl FnOnce(&mut PeerSession<D::Conn>) -> T) -> (T, Vec<usize>) {
        let out = {
            let mut s = lock(&self.session);
            let result = what(&mut s);
            self.draining.store(s.draining(), Ordering::SeqCst);
            let lanes: Vec<usize> = (0..self.data.len())
                .filter(|&l| s.outbound().has_data(l))
                .collect();
            (result, lanes)
        };
        self.changed.notify_waiters();
        out
    }

    /// Connection `conn_id` with `who` ended for `reason`. When it was the current one, what
    /// was queued is dropped and reported undeliverable, and the node is told the peer is down
    /// (once per connection). Returns whether it was the current one. A retired connection's
    /// end lets the current one be written on and delivered from.
    pub fn lost(&self, conn_id: u64, who: &NodeIdentity, reason: DownReason) -> bool {
        let (ended, lanes_with_data) = self.change(|s| s.lost(conn_id));
        let frames = match ended {
            Some(Ended::Current { dropped, .. }) => dropped,
            Some(Ended::Retired { released }) => {
                if released {
                    for lane in lanes_with_data {
                        self.data(lane).notify_one();
                    }
                }
                return false;
            }
            None => return false,
        };
        self.room.notify_waiters();
        tracing::debug!(%reason, "connection down");
        if frames > 0 {
            self.inbound.undeliverable(&self.name, frames, None, reason);
        }
        self.inbound.peer_down(who, reason);
        true
    }
}

/// A pooled transport's peers, one [`PeerEntry`] per name (an alias's entry forwards to the
/// proven name's).
pub struct PeerTable<D: Connector> {
    peers: Mutex<std::collections::HashMap<String, Arc<PeerEntry<D>>>>,
    next_conn: std::sync::atomic::AtomicU64,
    model: LaneModel,
    limits: Limits,
    handle: tokio::runtime::Handle,
    inbound: Arc<dyn Inbound>,
}

impl<D: Connector> std::fmt::Debug for PeerTable<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &lock(&self.peers).len())
            .finish_non_exhaustive()
    }
}

impl<D: Connector> PeerTable<D> {
    /// An empty table. Its entries carry frames as `model` says within `limits`
    /// (`max_queue_bytes`, `max_frame`), dial on `handle` and report to `inbound`.
    pub fn new(
        model: LaneModel,
        limits: &Limits,
        handle: tokio::runtime::Handle,
        inbound: Arc<dyn Inbound>,
    ) -> Self {
        PeerTable {
            peers: Mutex::new(std::collections::HashMap::new()),
            next_conn: std::sync::atomic::AtomicU64::new(1),
            model,
            limits: limits.clone(),
            handle,
            inbound,
        }
    }

    /// The entry of the peer `name`, made (dialled through `connector`) if there is none.
    pub fn entry(&self, connector: &Arc<D>, name: &str) -> Arc<PeerEntry<D>> {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get(name) {
            return p.clone();
        }
        let p = PeerEntry::new(name, connector, self);
        peers.insert(name.to_string(), p.clone());
        p
    }

    /// Drops the entry of `name` if nothing holds it and it is idle
    /// ([`PeerEntry::is_forgettable`]).
    pub fn forget(&self, name: &str) {
        let mut peers = lock(&self.peers);
        if peers.get(name).is_some_and(PeerEntry::is_forgettable) {
            peers.remove(name);
        }
    }

    /// A connection this node dialled through `dialled`'s entry proved `who` (with the agreed
    /// capabilities `caps`): the node is told ([`Inbound::peer_proven`]) before any frame of
    /// the connection is handled. Returns the entry that carries the peer's frames from now
    /// on: `dialled`, or, when the name dialled is an alias of the proven name (`localhost:P`
    /// for `127.0.0.1:P`), the proven name's entry, to which `dialled` now forwards what it
    /// had queued and everything later (one entry, and one connection, per node).
    ///
    /// Errors: [`IoError::NameConflict`] when the node refuses the proof (another live node
    /// holds the name); [`IoError::TooManyPeers`] when the proven name is new and the node
    /// admits no more peers ([`Inbound::admit`]).
    pub fn proven_dialled(
        &self,
        connector: &Arc<D>,
        dialled: &Arc<PeerEntry<D>>,
        who: &NodeIdentity,
        caps: u64,
    ) -> Result<Arc<PeerEntry<D>>, IoError> {
        let proof = crate::Proven::new(Some(dialled.name()), who).agreed(caps);
        if !self.inbound.peer_proven(proof) {
            return Err(IoError::NameConflict(who.name.clone()));
        }
        if who.name == dialled.name() {
            return Ok(dialled.clone());
        }
        tracing::debug!(dialled = %dialled.name(), proven = %who.name, "reached a node through an alias");
        if !self.inbound.admit(who) {
            return Err(IoError::TooManyPeers);
        }
        let canonical = self.entry(connector, &who.name);
        dialled.forward_to(&canonical);
        Ok(canonical)
    }

    /// A connection the peer opened proved `who` (with the agreed capabilities `caps`):
    /// returns the entry of its name, the node told ([`Inbound::peer_proven`]).
    ///
    /// Errors: [`IoError::TooManyPeers`] when the node admits no more peers, checked before
    /// an entry is made, so a refused connection leaves nothing behind.
    pub fn proven_accepted(
        &self,
        connector: &Arc<D>,
        who: &NodeIdentity,
        caps: u64,
    ) -> Result<Arc<PeerEntry<D>>, IoError> {
        if !self.inbound.admit(who) {
            return Err(IoError::TooManyPeers);
        }
        let peer = self.entry(connector, &who.name);
        self.inbound
            .peer_proven(crate::Proven::new(None, who).agreed(caps));
        Ok(peer)
    }

    /// The key of a new connection with `peer`, opened by the node `initiator` (name and
    /// incarnation), with an id unique in this table.
    pub fn key(&self, initiator: (String, u64), peer: &NodeIdentity) -> ConnKey {
        ConnKey {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            initiator,
            peer: peer.clone(),
        }
    }

    /// Every entry.
    pub fn all(&self) -> Vec<Arc<PeerEntry<D>>> {
        lock(&self.peers).values().cloned().collect()
    }
}

impl<D: Connector> PeerEntry<D> {
    /// Whether the reader of connection `conn_id` must hold back what it read: it is the
    /// current connection and a retired one has not drained (rule 3 in [`PeerSession`]'s docs).
    /// One atomic load when nothing drains.
    pub fn holds_delivery(&self, conn_id: u64) -> bool {
        self.draining.load(Ordering::SeqCst) > 0 && lock(&self.session).holds_delivery(conn_id)
    }

    /// Waits until the reader of connection `conn_id` may deliver ([`PeerEntry::holds_delivery`]
    /// is false), at most `bound`; returns whether it got there (a retired connection whose
    /// peer neither ends nor answers it is given up on after `bound`).
    pub async fn wait_delivery(&self, conn_id: u64, bound: std::time::Duration) -> bool {
        self.wait_until(bound, |p| !p.holds_delivery(conn_id)).await
    }

    /// Waits until `done` holds, looking again whenever a connection is established or ends,
    /// at most `bound`; returns whether it holds.
    async fn wait_until(&self, bound: std::time::Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(self);
            }
        }
    }

    /// Hands a frame read on connection `conn_id` with `from` to the node (with
    /// [`hand_over`](crate::io::hand_over): a full mailbox holds the reader back for at most
    /// half the heartbeat timeout, so backpressure reaches the sender). First, while the
    /// connection is the current one and a retired one still drains, it waits for that one
    /// (at most the heartbeat timeout): the peer's frames on it go first.
    pub async fn deliver(
        &self,
        conn_id: u64,
        from: &NodeIdentity,
        frame: crate::Frame<'_>,
        payload: &[u8],
    ) {
        let bound = self.limits.heartbeat_timeout;
        if self.holds_delivery(conn_id) && !self.wait_delivery(conn_id, bound).await {
            tracing::warn!("a retired connection did not end in time; delivering");
        }
        let _ = crate::io::hand_over(&*self.inbound, from, frame, payload, self, bound / 2).await;
    }

    /// Waits until connection `conn_id` is no longer the current one, at most `bound`; returns
    /// whether it got there. (A connection the peer retired while it is still the current one
    /// here: the connection that replaces it is on its way.)
    pub async fn wait_not_current(&self, conn_id: u64, bound: std::time::Duration) -> bool {
        self.wait_until(bound, |p| !p.is_current(conn_id)).await
    }
}

impl<D: Connector> Route for PeerEntry<D> {
    fn peer(&self) -> &str {
        match self.forward.get() {
            Some(f) => &f.name,
            None => &self.name,
        }
    }

    fn queued(&self) -> (usize, usize) {
        if let Some(f) = self.forward.get() {
            return f.queued();
        }
        let s = lock(&self.session);
        (s.outbound().bytes(), s.outbound().frames())
    }

    fn send(&self, encode: EncodeFn<'_>, meta: FrameMeta) -> Result<(), RouteError> {
        if let Some(f) = self.forward.get() {
            return f.send(encode, meta);
        }
        lock(&self.session).refusal(now)?;
        // Encoded outside the session's lock (user `Serialize` code runs here, and may send).
        crate::encode_frame(encode, self.max_frame, |bytes| self.append(bytes, &meta))
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        if let Some(f) = self.forward.get() {
            return f.ready();
        }
        Box::pin(async move {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Half the bound: the most a large frame may find queued, so a sender woken here
            // finds room whatever it sends.
            if lock(&self.session).outbound().has_room() {
                return;
            }
            notified.await;
        })
    }
}
