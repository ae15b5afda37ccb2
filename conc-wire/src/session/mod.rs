//! The connection state of one peer, as the pooled transports (pooled TCP, QUIC) keep it:
//! which connection carries the peer's frames, whether one is being made, how long to back off
//! after a failed connect, which of two connections made at once wins, and when a new
//! connection proves that the peer restarted.
//!
//! Sans-IO, in the manner of `quinn-proto`: no sockets, no tasks and no clock of its own (the
//! caller passes `now`), so its rules are tested here on a simulated clock, and both transports
//! share them instead of writing them twice.
//!
//! Three layers:
//! - [`PeerSlot`] (this module): the connection state.
//! - [`Outbound`]: the outbound queues, their bounds, and the order frames keep on one stream
//!   with fragments (pooled TCP) or across several streams with barriers (QUIC).
//! - [`PeerSession`]: both under one owner, with the rules that tie them (a frame queued while
//!   nothing is connected starts a connect, a lost connection drops what was queued and says
//!   how much, a new connection restarts the barrier counts). Its pairs are simulated on a
//!   simulated clock in `conc-wire/tests/session_sim.rs`.
//!
//! [`PeerEntry`] puts a `PeerSession` under a lock with the wake-ups of its writers and
//! senders, as the [`Route`](crate::Route) the node sends through; a transport supplies only
//! dialling ([`Connector`]) and the I/O of its connections.

use std::time::{Duration, Instant};

mod entry;
mod outbound;
mod peer;

pub use entry::{Connector, DialError, PeerEntry, PeerTable};
pub use outbound::{LaneModel, Moved, Outbound, Pushed, Taken};
pub use peer::{Ended, PeerSession, Queued, Take};

use crate::handshake::NodeIdentity;

/// Who a connection is with and who opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnKey {
    /// Unique within the transport.
    pub id: u64,
    /// The (name, incarnation) of the node that opened it: decides simultaneous connects.
    pub initiator: (String, u64),
    /// The identity the peer proved on it.
    pub peer: NodeIdentity,
}

/// Reconnection backoff: after `n` consecutive failed connects, the next attempt waits
/// 100 ms × 2^(n-1), at most [`Backoff::MAX`]. Sends during the wait fail at once instead of
/// queueing frames that would be lost.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// The longest wait between attempts (5 s).
    pub const MAX: Duration = Duration::from_secs(5);

    /// Records a failed connect at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(6);
        let wait = (Duration::from_millis(100) * (1u32 << exp)).min(Self::MAX);
        self.retry_at = Some(now + wait);
    }

    /// Records a successful connect.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// How long after `now` the next attempt is allowed, if it is not allowed at `now`.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let at = self.retry_at?;
        (at > now).then(|| at - now)
    }
}

/// What [`PeerSlot::establish`] decided about a new authenticated connection.
#[derive(Debug)]
pub enum Established<C> {
    /// It carries the peer's frames from now on. `replaced` is the connection it takes over
    /// from (close it after a grace period, reading what is in flight); `restarted` is set when
    /// `replaced` was with an earlier incarnation of the peer (everything that depended on
    /// that one is gone).
    Current {
        /// The connection it replaces.
        replaced: Option<C>,
        /// The identity of the incarnation that ended, if the peer restarted.
        restarted: Option<NodeIdentity>,
    },
    /// Both nodes connected at once and this connection lost: nothing is written on it; it is
    /// read until the peer, which makes the same choice, closes it.
    Duplicate,
}

/// What a frame to be queued for the peer should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Queue it; the connection (or a connect under way) carries it.
    Queue,
    /// Queue it and start a connect (none is under way).
    QueueAndConnect,
    /// Refuse it: the last connect failed and the next is allowed only after this long.
    BackingOff(Duration),
}

/// The connection state of one peer (see the module docs). `C` is the transport's handle of an
/// established connection.
#[derive(Debug)]
pub struct PeerSlot<C> {
    conn: Option<(ConnKey, C)>,
    connecting: bool,
    backoff: Backoff,
}

impl<C> Default for PeerSlot<C> {
    fn default() -> Self {
        PeerSlot {
            conn: None,
            connecting: false,
            backoff: Backoff::default(),
        }
    }
}

impl<C: Clone> PeerSlot<C> {
    /// The connection that carries the peer's frames, if any.
    pub fn conn(&self) -> Option<&C> {
        self.conn.as_ref().map(|(_, c)| c)
    }

    /// The id of the current connection.
    pub fn current_id(&self) -> Option<u64> {
        self.conn.as_ref().map(|(k, _)| k.id)
    }

    /// Whether the connection with this id is the current one.
    pub fn is_current(&self, id: u64) -> bool {
        self.conn.as_ref().is_some_and(|(k, _)| k.id == id)
    }

    /// Whether a connect is under way.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// Whether nothing is connected or being connected (a peer entry that may be forgotten, as
    /// far as its connection goes).
    pub fn is_idle(&self) -> bool {
        self.conn.is_none() && !self.connecting
    }

    /// Decides what a frame queued at `now` does; on [`Gate::QueueAndConnect`] the slot counts
    /// the connect as started.
    pub fn gate(&mut self, now: Instant) -> Gate {
        if self.conn.is_some() || self.connecting {
            return Gate::Queue;
        }
        if let Some(wait) = self.backoff.remaining(now) {
            return Gate::BackingOff(wait);
        }
        self.connecting = true;
        Gate::QueueAndConnect
    }

    /// Like [`PeerSlot::gate`] but changes nothing: whether a frame would be refused now.
    pub fn backing_off(&self, now: Instant) -> Option<Duration> {
        if self.conn.is_some() || self.connecting {
            return None;
        }
        self.backoff.remaining(now)
    }

    /// A connect started by [`Gate::QueueAndConnect`] failed at `now`. Returns whether the
    /// peer has no connection, so that what is queued for it is lost.
    pub fn connect_failed(&mut self, now: Instant) -> bool {
        self.connecting = false;
        self.backoff.failed(now);
        self.conn.is_none()
    }

    /// A connect under way no longer concerns this slot (its peer turned out to be reached
    /// under another name).
    pub fn stop_connecting(&mut self) {
        self.connecting = false;
    }

    /// An authenticated connection `key` was established (by either side): decides whether it
    /// becomes the current one. Of two connections with the same incarnation of the peer opened
    /// by different nodes (a simultaneous connect), the one opened by the node with the smaller
    /// (name, incarnation) wins, on both sides alike; a later connection opened by the same
    /// node as the current one replaces it (that node gave the old one up); a connection with
    /// another incarnation always replaces the old one (the peer restarted).
    pub fn establish(&mut self, key: ConnKey, conn: C) -> Established<C> {
        self.connecting = false;
        self.backoff.reset();
        // Two connections opened by the same node are not a race: it opens a new one only when
        // it has given up the old one (which may still look alive here), so the newer wins.
        let keep_existing = self.conn.as_ref().is_some_and(|(existing, _)| {
            existing.peer.incarnation == key.peer.incarnation && existing.initiator < key.initiator
        });
        if keep_existing {
            return Established::Duplicate;
        }
        let incarnation = key.peer.incarnation;
        let old = self.conn.replace((key, conn));
        let restarted = old
            .as_ref()
            .filter(|(k, _)| k.peer.incarnation != incarnation)
            .map(|(k, _)| k.peer.clone());
        Established::Current {
            replaced: old.map(|(_, c)| c),
            restarted,
        }
    }

    /// The connection with this id ended. Returns its handle if it was the current one (the
    /// peer has no connection now; what is queued for it is lost); a connection that was
    /// replaced or lost a simultaneous connect ends without changing anything.
    pub fn lost(&mut self, id: u64) -> Option<C> {
        if self.is_current(id) {
            self.conn.take().map(|(_, c)| c)
        } else {
            None
        }
    }
}

/// The first wait before a dial refused by a busy peer is retried.
const FIRST_WAIT: Duration = Duration::from_millis(10);
/// The longest wait between two retries.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Retries of a dial refused by a busy peer (a node whose handshake caps,
/// [`Limits::max_handshakes`](crate::Limits::max_handshakes) and
/// [`Limits::max_handshakes_per_ip`](crate::Limits::max_handshakes_per_ip), are full closes a
/// new connection at once; the transports tell that apart from a dead peer and retry): waits
/// of 10 ms doubling to 500 ms, each jittered (between half and all of it, so a storm of
/// diallers spreads out), for at most [`BusyRetry::window`] after the first refusal. A peer's
/// cap holds a connection at most `handshake_timeout`, so places come free within that unless
/// the storm goes on. Sans-IO like [`Backoff`]: the caller passes the time.
pub struct BusyRetry {
    until: Option<Instant>,
    window: Duration,
    next: Duration,
    jitter: std::collections::hash_map::RandomState,
    attempt: u64,
}

impl BusyRetry {
    /// For a dial with `limits`.
    pub fn new(limits: &crate::Limits) -> BusyRetry {
        BusyRetry {
            until: None,
            window: Self::window(limits),
            next: FIRST_WAIT,
            jitter: std::collections::hash_map::RandomState::new(),
            attempt: 0,
        }
    }

    /// How long refusals by a busy peer are retried: `connect_timeout + handshake_timeout`
    /// (10 s by default).
    pub fn window(limits: &crate::Limits) -> Duration {
        limits.connect_timeout + limits.handshake_timeout
    }

    /// The wait before the next retry after a refusal at `now`, or `None` once the window
    /// has passed (the refusal is then a failure).
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        let until = *self.until.get_or_insert(now + self.window);
        if now >= until {
            return None;
        }
        let base = self.next;
        self.next = (self.next * 2).min(MAX_WAIT);
        self.attempt += 1;
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        let wait = half
            + Duration::from_nanos(
                std::hash::BuildHasher::hash_one(&self.jitter, self.attempt) % nanos,
            );
        Some(wait.min(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::handshake::tests::ident;

    fn key(id: u64, initiator: (&str, u64), peer: (&str, u64)) -> ConnKey {
        ConnKey {
            id,
            initiator: (initiator.0.to_string(), initiator.1),
            peer: ident(peer.0, peer.1),
        }
    }

    /// A simulated clock: an instant that only moves when told.
    struct Clock(Instant);

    impl Clock {
        fn advance(&mut self, d: Duration) -> Instant {
            self.0 += d;
            self.0
        }
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let mut clock = Clock(Instant::now());
        let mut slot: PeerSlot<u64> = PeerSlot::default();
        let mut expected = Vec::new();
        let mut waits = Vec::new();
        for i in 0..9u32 {
            let now = clock.0;
            assert_eq!(slot.gate(now), Gate::QueueAndConnect, "attempt {i}");
            // Queued while the connect is under way: no second connect.
            assert_eq!(slot.gate(now), Gate::Queue);
            assert!(slot.connect_failed(now));
            let wait = match slot.gate(now) {
                Gate::BackingOff(w) => w,
                other => panic!("attempt {i}: {other:?}"),
            };
            waits.push(wait);
            expected.push((Duration::from_millis(100) * (1u32 << i.min(6))).min(Backoff::MAX));
            // Just before the wait ends: still refused; at its end: allowed.
            assert!(
                slot.backing_off(clock.advance(wait - Duration::from_millis(1)))
                    .is_some()
            );
            clock.advance(Duration::from_millis(1));
        }
        assert_eq!(waits, expected);
        assert_eq!(*waits.last().unwrap(), Backoff::MAX);
        // A success resets it.
        assert_eq!(slot.gate(clock.0), Gate::QueueAndConnect);
        assert!(matches!(
            slot.establish(key(1, ("a", 1), ("b", 1)), 1),
            Established::Current {
                replaced: None,
                restarted: None
            }
        ));
        assert_eq!(slot.lost(1), Some(1));
        assert_eq!(slot.gate(clock.0), Gate::QueueAndConnect);
        assert!(slot.connect_failed(clock.0));
        assert_eq!(
            slot.gate(clock.0),
            Gate::BackingOff(Duration::from_millis(100))
        );
    }

    /// Both nodes connect at once; whatever order each sees the two connections in, both keep
    /// the one opened by the smaller (name, incarnation), so they write on the same one.
    #[test]
    fn simultaneous_connects_agree_in_every_order() {
        let a = ("a:1", 7);
        let b = ("b:1", 3);
        // Connection 10 opened by A, 20 by B. Each side sees the peer's identity.
        let a_side = [key(10, a, b), key(20, b, b)];
        let b_side = [key(10, a, a), key(20, b, a)];
        for a_order in [[0, 1], [1, 0]] {
            for b_order in [[0, 1], [1, 0]] {
                let mut sa: PeerSlot<u64> = PeerSlot::default();
                let mut sb: PeerSlot<u64> = PeerSlot::default();
                for i in a_order {
                    let k = a_side[i].clone();
                    let id = k.id;
                    let _ = sa.establish(k, id);
                }
                for i in b_order {
                    let k = b_side[i].clone();
                    let id = k.id;
                    let _ = sb.establish(k, id);
                }
                // "a:1" < "b:1": A's connection wins on both sides.
                assert_eq!(sa.conn(), Some(&10), "{a_order:?} {b_order:?}");
                assert_eq!(sb.conn(), Some(&10), "{a_order:?} {b_order:?}");
                // The loser ending changes nothing; the winner ending leaves no connection.
                assert_eq!(sa.lost(20), None);
                assert_eq!(sa.conn(), Some(&10));
                assert_eq!(sa.lost(10), Some(10));
                assert_eq!(sa.conn(), None);
            }
        }
    }

    /// B gave its connection up (it was replaced there, then the replacement broke) while A
    /// still holds it; B's next connection replaces it at A instead of losing to it as a
    /// duplicate (which would leave A reading a connection B no longer writes on).
    #[test]
    fn a_nodes_new_connection_replaces_its_old_one() {
        let b = ("b:1", 3);
        let a = ("a:1", 7);
        let mut sa: PeerSlot<u64> = PeerSlot::default();
        let _ = sa.establish(key(1, b, b), 1);
        match sa.establish(key(3, b, b), 3) {
            Established::Current {
                replaced: Some(1),
                restarted: None,
            } => {}
            other => panic!("expected 3 to replace 1, got {other:?}"),
        }
        assert_eq!(sa.conn(), Some(&3));
        // A connection of A's against B's is still decided by the names.
        let _ = a;
        assert!(matches!(
            sa.establish(key(4, a, b), 4),
            Established::Current { .. }
        ));
        assert!(matches!(
            sa.establish(key(5, b, b), 5),
            Established::Duplicate
        ));
    }

    #[test]
    fn a_new_incarnation_replaces_and_reports_the_old_one() {
        let mut slot: PeerSlot<u64> = PeerSlot::default();
        let _ = slot.establish(key(1, ("a", 1), ("b", 5)), 1);
        // The restarted peer connects; even a connection that would lose the tie-break wins,
        // since the old incarnation is gone.
        match slot.establish(key(2, ("z", 9), ("b", 6)), 2) {
            Established::Current {
                replaced,
                restarted,
            } => {
                assert_eq!(replaced, Some(1));
                assert_eq!(restarted, Some(ident("b", 5)));
            }
            Established::Duplicate => panic!("a restart must replace the old connection"),
        }
        // The old connection's end changes nothing.
        assert_eq!(slot.lost(1), None);
        assert_eq!(slot.conn(), Some(&2));
        // The same incarnation again, opened by a larger initiator: a duplicate.
        let dup = slot.establish(key(3, ("zz", 1), ("b", 6)), 3);
        assert!(matches!(dup, Established::Duplicate));
        assert_eq!(slot.conn(), Some(&2));
    }

    #[test]
    fn an_alias_stops_its_connect() {
        let now = Instant::now();
        let mut slot: PeerSlot<u64> = PeerSlot::default();
        assert_eq!(slot.gate(now), Gate::QueueAndConnect);
        assert!(slot.is_connecting());
        slot.stop_connecting();
        assert!(slot.is_idle());
    }

    #[test]
    fn busy_retries_spread_out_and_stop_after_the_window() {
        let limits = crate::Limits::default()
            .with_connect_timeout(Duration::from_secs(1))
            .with_handshake_timeout(Duration::from_secs(1));
        let mut r = BusyRetry::new(&limits);
        let start = Instant::now();
        let mut now = start;
        let mut waits = Vec::new();
        while let Some(w) = r.wait(now) {
            waits.push(w);
            now += w;
        }
        assert_eq!(now - start, Duration::from_secs(2));
        assert!(waits[0] >= FIRST_WAIT / 2 && waits[0] <= FIRST_WAIT);
        assert!(waits.iter().all(|w| *w <= MAX_WAIT));
        assert!(waits.len() > 5, "{waits:?}");
    }
}
