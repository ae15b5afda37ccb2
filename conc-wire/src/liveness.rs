//! Heartbeats and the silence bound of one connection, as a sans-IO state machine: when the
//! writer must send a ping, when the reader must give up on a silent peer, and how long a
//! closing connection waits for the peer to close after the goodbye.
//!
//! In the manner of `quinn-proto`: no sockets, no tasks, no clock of its own. The transport
//! tells it what happened and when ([`Liveness::on_read`], [`Liveness::on_write`],
//! [`Liveness::on_goodbye`]) and asks it for deadlines ([`Liveness::ping_at`],
//! [`Liveness::read_deadline`]) and for a verdict once one passes ([`Liveness::expired`]). So
//! the rules are exact and testable on a simulated clock (see this crate's
//! `tests/liveness_sim.rs`, which drives pairs of machines through loss, delay and pauses).
//! Pooled TCP keeps one per connection, shared by its reader and writer tasks.
//!
//! The rules:
//! - a connection on which nothing was written for `interval` sends a ping (a peer answers a
//!   ping with a pong, so a live peer is never silent for long);
//! - a peer from which nothing was read for `timeout` is silent: the connection is down
//!   ([`Expired::Silent`]);
//! - after this side said goodbye, the reader waits for the peer to close its side (so that
//!   nothing the peer still sends is cut by a reset) for at most `grace`, whatever the silence
//!   bound ([`Expired::GoodbyeUnanswered`]).
//!
//! Erlang's distribution does the same with `net_ticktime` (a tick every quarter of it, a
//! connection down after four missed ticks).

use std::time::{Duration, Instant};

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expired {
    /// Nothing was read from the peer for the silence bound.
    Silent,
    /// This side said goodbye and the peer did not close its side within the grace period.
    GoodbyeUnanswered,
}

/// The liveness state of one connection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Liveness {
    interval: Duration,
    timeout: Duration,
    grace: Duration,
    read_at: Instant,
    wrote_at: Instant,
    goodbye_at: Option<Instant>,
}

impl Liveness {
    /// How long a connection that said goodbye waits for the peer to close, by default (1 s).
    pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

    /// A connection established at `now`: pings after `interval` without a write, silent after
    /// `timeout` without a read, and [`Liveness::GOODBYE_GRACE`] after a goodbye.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Liveness {
        Liveness {
            interval,
            timeout,
            grace: Self::GOODBYE_GRACE,
            read_at: now,
            wrote_at: now,
            goodbye_at: None,
        }
    }

    /// Sets how long a connection that said goodbye waits for the peer to close.
    pub fn with_goodbye_grace(mut self, grace: Duration) -> Liveness {
        self.grace = grace;
        self
    }

    /// Bytes were read from the peer at `now`.
    pub fn on_read(&mut self, now: Instant) {
        self.read_at = self.read_at.max(now);
    }

    /// Bytes (frames or a ping) were written to the peer at `now`.
    pub fn on_write(&mut self, now: Instant) {
        self.wrote_at = self.wrote_at.max(now);
    }

    /// This side wrote its goodbye at `now`; the peer is expected to close its side.
    pub fn on_goodbye(&mut self, now: Instant) {
        self.on_write(now);
        self.goodbye_at.get_or_insert(now);
    }

    /// Whether this side said goodbye.
    pub fn said_goodbye(&self) -> bool {
        self.goodbye_at.is_some()
    }

    /// When the writer must send a ping if it writes nothing before.
    pub fn ping_at(&self) -> Instant {
        self.wrote_at + self.interval
    }

    /// Whether a ping is due at `now`.
    pub fn ping_due(&self, now: Instant) -> bool {
        now >= self.ping_at()
    }

    /// When the reader must give up if it reads nothing before: the silence bound, or after a
    /// goodbye the end of the grace period, whichever comes first.
    pub fn read_deadline(&self) -> Instant {
        let silent = self.read_at + self.timeout;
        match self.goodbye_at {
            Some(at) => silent.min(at + self.grace),
            None => silent,
        }
    }

    /// Why the connection is over at `now`, if its read deadline has passed.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        if now < self.read_deadline() {
            return None;
        }
        match self.goodbye_at {
            Some(at) if now >= at + self.grace => Some(Expired::GoodbyeUnanswered),
            _ => Some(Expired::Silent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_ping_is_due_an_interval_after_the_last_write() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, 3 * S);
        assert_eq!(l.ping_at(), t0 + S);
        assert!(!l.ping_due(t0 + S / 2));
        l.on_write(t0 + S / 2);
        assert_eq!(l.ping_at(), t0 + S + S / 2);
        assert!(l.ping_due(t0 + S + S / 2));
        // A write reported late (an older instant) does not move the deadline back.
        l.on_write(t0);
        assert_eq!(l.ping_at(), t0 + S + S / 2);
    }

    #[test]
    fn silence_is_the_timeout_after_the_last_read() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, 3 * S);
        assert_eq!(l.expired(t0 + 3 * S - Duration::from_nanos(1)), None);
        assert_eq!(l.expired(t0 + 3 * S), Some(Expired::Silent));
        l.on_read(t0 + 2 * S);
        assert_eq!(l.read_deadline(), t0 + 5 * S);
        assert_eq!(l.expired(t0 + 4 * S), None);
    }

    #[test]
    fn after_a_goodbye_the_reader_waits_the_grace_at_most() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, 60 * S).with_goodbye_grace(S / 2);
        l.on_goodbye(t0 + S);
        assert!(l.said_goodbye());
        assert_eq!(l.read_deadline(), t0 + S + S / 2);
        // Reads after the goodbye do not extend the grace.
        l.on_read(t0 + S + S / 4);
        assert_eq!(l.expired(t0 + S + S / 2), Some(Expired::GoodbyeUnanswered));
        // A second goodbye does not restart it.
        l.on_goodbye(t0 + 2 * S);
        assert_eq!(l.read_deadline(), t0 + S + S / 2);
    }

    #[test]
    fn a_silence_bound_shorter_than_the_grace_still_applies() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, S, 2 * S).with_goodbye_grace(10 * S);
        l.on_goodbye(t0 + S);
        assert_eq!(l.read_deadline(), t0 + 2 * S);
        assert_eq!(l.expired(t0 + 2 * S), Some(Expired::Silent));
    }
}
