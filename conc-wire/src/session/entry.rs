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

/// What a pooled transport supplies to its [`PeerEntry`]s: its runtime, the node it reports
/// to, and dialling.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + Sized + 'static {
    /// The transport's handle of an established connection.
    type Conn: Clone + Send + Sync + 'static;

    /// The runtime the transport was started on (sends may come from threads outside it).
    fn handle(&self) -> &tokio::runtime::Handle;

    /// The node the transport reports to.
    fn inbound(&self) -> &dyn Inbound;

    /// Dials `peer`, authenticates the connection and hands it to
    /// [`PeerEntry::establish`] (of `peer`, or of the entry of the name the peer proved).
    /// An error makes the entry back off ([`PeerEntry::connect_failed`]).
    async fn connect(self: Arc<Self>, peer: Arc<PeerEntry<Self>>) -> Result<(), IoError>;
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
    /// A new entry for the peer `name`, dialled through `connector`, its frames carried as
    /// `model` says within `limits` (`max_queue_bytes`, `max_frame`).
    pub fn new(name: &str, connector: &Arc<D>, model: LaneModel, limits: &Limits) -> Arc<Self> {
        Arc::new_cyclic(|me| PeerEntry {
            name: name.to_string(),
            me: me.clone(),
            connector: Arc::downgrade(connector),
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
        let took = lock(&self.session).take(conn_id, lane, out, fragments);
        match took {
            Take::Took => self.room.notify_waiters(),
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
        let mut s = lock(&self.session);
        // Checked under the lock: the forward is set, and the queue moved, under it.
        if let Some(f) = self.forward.get() {
            drop(s);
            return f.append(bytes, meta);
        }
        let queued = s.push(bytes, meta, now)?;
        drop(s);
        match queued {
            Queued::Wake(lane) => self.data(lane).notify_one(),
            Queued::Connect => self.spawn_connect(),
            Queued::Nothing => {}
        }
        Ok(())
    }

    /// Starts a connect task: [`Connector::connect`], and on failure
    /// [`PeerEntry::connect_failed`].
    fn spawn_connect(&self) {
        let (Some(connector), Some(peer)) = (self.connector(), self.me.upgrade()) else {
            return;
        };
        let span = tracing::debug_span!("connect", peer = %self.name);
        let handle = connector.handle().clone();
        handle.spawn(
            async move {
                if let Err(e) = connector.clone().connect(peer.clone()).await {
                    tracing::debug!(error = %e, "connect failed");
                    peer.connect_failed(&*connector, e.down_reason());
                }
            }
            .instrument(span),
        );
    }

    /// A connect failed: the entry backs off, and when nothing is connected what was queued
    /// is dropped and reported undeliverable with `reason`.
    pub fn connect_failed(&self, connector: &D, reason: DownReason) {
        let dropped = lock(&self.session).connect_failed(now());
        if let Some(frames) = dropped {
            self.room.notify_waiters();
            if frames > 0 {
                connector
                    .inbound()
                    .undeliverable(&self.name, frames, None, reason);
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
    pub fn establish(
        &self,
        connector: &D,
        key: ConnKey,
        conn: D::Conn,
        handover: bool,
    ) -> Established<D::Conn> {
        let who = key.peer.clone();
        let (decided, lanes_with_data) = {
            let mut s = lock(&self.session);
            let decided = s.establish(key, conn, handover);
            self.draining.store(s.draining(), Ordering::SeqCst);
            let lanes: Vec<usize> = (0..self.data.len())
                .filter(|&l| s.outbound().has_data(l))
                .collect();
            (decided, lanes)
        };
        self.changed.notify_waiters();
        match &decided {
            Established::Duplicate => {
                // Simultaneous connect: this connection loses. It is not written to; it is read
                // until the peer, which makes the same choice, stops writing on it.
                tracing::debug!("duplicate connection (simultaneous connect)");
            }
            Established::Current { restarted, .. } => {
                if let Some(old) = restarted {
                    connector.inbound().peer_down(old, DownReason::Restarted);
                }
                connector.inbound().peer_up(&who);
                for lane in lanes_with_data {
                    self.data(lane).notify_one();
                }
            }
        }
        decided
    }

    /// Connection `conn_id` with `who` ended for `reason`. When it was the current one, what
    /// was queued is dropped and reported undeliverable, and the node is told the peer is down
    /// (once per connection). Returns whether it was the current one.
    /// A retired connection's end lets the current one be written on and delivered from.
    pub fn lost(
        &self,
        connector: &D,
        conn_id: u64,
        who: &NodeIdentity,
        reason: DownReason,
    ) -> bool {
        let (ended, lanes_with_data) = {
            let mut s = lock(&self.session);
            let ended = s.lost(conn_id);
            self.draining.store(s.draining(), Ordering::SeqCst);
            let lanes: Vec<usize> = (0..self.data.len())
                .filter(|&l| s.outbound().has_data(l))
                .collect();
            (ended, lanes)
        };
        self.changed.notify_waiters();
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
            connector
                .inbound()
                .undeliverable(&self.name, frames, None, reason);
        }
        connector.inbound().peer_down(who, reason);
        true
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
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.holds_delivery(conn_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return !self.holds_delivery(conn_id);
            }
        }
    }

    /// Waits until connection `conn_id` is no longer the current one, at most `bound`; returns
    /// whether it got there. (A connection the peer retired while it is still the current one
    /// here: the connection that replaces it is on its way.)
    pub async fn wait_not_current(&self, conn_id: u64, bound: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_current(conn_id) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return !self.is_current(conn_id);
            }
        }
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
