//! [`PeerSession`]: the sans-IO state of one peer of a pooled transport, its connection
//! ([`PeerSlot`]) and its outbound queues ([`Outbound`]) under one owner, so that the rules
//! that tie them together (a frame queued while nothing is connected starts a connect; a
//! failed connect or a lost connection drops what was queued and says how much; a new
//! connection restarts the barrier counts; a writer of a replaced connection takes nothing)
//! are written, and tested, once.
//!
//! ## Handing a pair's frames over between two connections
//!
//! When both nodes dial each other at once, each may write frames on the connection that will
//! lose (it was the only one when they were queued) before the winner replaces it; those
//! frames and the ones written later on the winner are read by two readers at once, and a
//! pair's order could break. With [`HANDOVER`](crate::handshake::HANDOVER) agreed the session
//! keeps it, by three rules:
//!
//! 1. A connection that loses (replaced, or a duplicate) is *retired*: its writer writes a
//!    `Retire` frame and stops (on TCP it then closes its write side); the connection is
//!    *draining* until its reader has read everything the peer wrote on it (the peer's
//!    `Retire` and the end of its streams), which [`PeerSession::lost`] records.
//! 2. If this node had written on the loser, it writes nothing on the winner until the loser
//!    has drained here: the peer retires the loser only once it knows of both connections, so
//!    the winner's frames reach a peer that knows the loser is to be read first.
//! 3. The winner's reader delivers nothing while a connection of the same incarnation is
//!    draining ([`PeerSession::holds_delivery`]).
//!
//! The rules are exercised on a simulated network in `conc-wire/tests/session_sim.rs`.

use std::time::Instant;

use super::outbound::{LaneModel, Moved, Outbound, Taken};
use super::{ConnKey, Established, Gate, PeerSlot};
use crate::transport::{FrameMeta, RouteError};

/// What [`PeerSession::push`] asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Queued {
    /// Wake the writer of this lane (it was empty; a connection carries it).
    Wake(usize),
    /// Nothing: a writer will find the frame (the lane was not empty, or a connect is under
    /// way and the new connection's writers start by looking).
    Nothing,
    /// Start a connect: none is under way and none is up.
    Connect,
}

/// What [`PeerSession::take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Take {
    /// The writer's connection is not the current one: it must stop writing (and pass its
    /// wake-up on to the current connection's writer).
    NotCurrent,
    /// Nothing queued on the lane.
    Empty,
    /// Bytes were taken: write them.
    Took,
    /// A large frame was taken (QUIC's big lane), its buffer handed over: write what was put in
    /// `out` (its barrier, if any), then it.
    TookLarge(Vec<u8>),
}

/// What [`PeerSession::lost`] found about a connection that ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended<C> {
    /// It was the current connection: the peer has none now. Its handle, and how many queued
    /// frames were dropped.
    Current {
        /// The connection's handle.
        conn: C,
        /// Frames dropped from the queues.
        dropped: usize,
    },
    /// It had lost to another connection. `released` says that the current connection may now
    /// be written on (rule 2 of the module docs): wake its writers.
    Retired {
        /// Writing on the current connection waited for this one.
        released: bool,
    },
}

/// The state of one peer (see the module docs). `C` is the transport's handle of an
/// established connection.
#[derive(Debug)]
pub struct PeerSession<C> {
    slot: PeerSlot<C>,
    out: Outbound,
    /// Something was taken for the current connection.
    wrote: bool,
    /// The current connection is not written on until this retired one has drained.
    hold: Option<u64>,
    /// Retired connections of the current incarnation not yet drained (id).
    draining: Vec<u64>,
}

impl<C: Clone> PeerSession<C> {
    /// A peer with nothing connected and nothing queued; its frames go out as `model` says,
    /// at most `max_bytes` of them queued.
    pub fn new(model: LaneModel, max_bytes: usize) -> Self {
        PeerSession {
            slot: PeerSlot::default(),
            out: Outbound::new(model, max_bytes),
            wrote: false,
            hold: None,
            draining: Vec::new(),
        }
    }

    /// The connection state.
    pub fn slot(&self) -> &PeerSlot<C> {
        &self.slot
    }

    /// The outbound queues.
    pub fn outbound(&self) -> &Outbound {
        &self.out
    }

    /// Why a frame would be refused now (a connect backing off, a full queue), checked before
    /// the frame is encoded. `now` is read only when nothing is connected or connecting (a
    /// clock read per send was 5 % of a sender's time).
    pub fn refusal(&self, now: impl FnOnce() -> Instant) -> Result<(), RouteError> {
        if self.slot.is_idle()
            && let Some(wait) = self.slot.backing_off(now())
        {
            return Err(unreachable(wait));
        }
        if self.out.full() {
            return Err(RouteError::Busy);
        }
        Ok(())
    }

    /// Queues one encoded frame (see [`Outbound::push`] for the order it keeps and its
    /// bounds). Refused with [`RouteError::Unreachable`] while a failed connect backs off.
    pub fn push(
        &mut self,
        bytes: &[u8],
        meta: &FrameMeta,
        now: impl FnOnce() -> Instant,
    ) -> Result<Queued, RouteError> {
        self.push_with(now, |out| out.push(bytes, meta))
    }

    /// Like [`PeerSession::push`], with the frame's buffer moved in (see
    /// [`Outbound::push_owned`]): for large frames, copied by the caller outside any lock.
    pub fn push_owned(
        &mut self,
        bytes: Vec<u8>,
        meta: &FrameMeta,
        now: impl FnOnce() -> Instant,
    ) -> Result<Queued, RouteError> {
        self.push_with(now, |out| out.push_owned(bytes, meta))
    }

    fn push_with(
        &mut self,
        now: impl FnOnce() -> Instant,
        push: impl FnOnce(&mut Outbound) -> Result<super::Pushed, RouteError>,
    ) -> Result<Queued, RouteError> {
        let idle = self.slot.is_idle();
        let at = idle.then(now);
        if let Some(at) = at
            && let Some(wait) = self.slot.backing_off(at)
        {
            return Err(unreachable(wait));
        }
        let pushed = push(&mut self.out)?;
        if let Some(at) = at {
            // Nothing connected or connecting, and not backing off: this frame starts one.
            return Ok(match self.slot.gate(at) {
                Gate::QueueAndConnect => Queued::Connect,
                Gate::Queue | Gate::BackingOff(_) => Queued::Nothing,
            });
        }
        Ok(if pushed.was_empty && self.slot.conn().is_some() {
            Queued::Wake(pushed.lane)
        } else {
            Queued::Nothing
        })
    }

    /// The writer of connection `conn_id` takes what `lane` carries next into `out` (passed
    /// empty; see [`Outbound::take`]); `fragments` says whether the connection agreed to
    /// fragments.
    pub fn take(&mut self, conn_id: u64, lane: usize, out: &mut Vec<u8>, fragments: bool) -> Take {
        if !self.slot.is_current(conn_id) {
            return Take::NotCurrent;
        }
        if self.hold.is_some() {
            // Rule 2: the loser this node wrote on has not drained yet.
            return Take::Empty;
        }
        let took = match self.out.take(lane, out, fragments) {
            Taken::Nothing => return Take::Empty,
            Taken::Large(frame) => Take::TookLarge(frame),
            Taken::Bytes => Take::Took,
        };
        self.wrote = true;
        took
    }

    /// An authenticated connection was established (see [`PeerSlot::establish`]); when it
    /// becomes the current one, what is queued is what it carries first. `handover` says
    /// whether both nodes agreed [`HANDOVER`](crate::handshake::HANDOVER) on it: then a
    /// connection of the same incarnation that loses, to it or against it, drains first (see
    /// the module docs).
    pub fn establish(&mut self, key: ConnKey, conn: C, handover: bool) -> Established<C> {
        let id = key.id;
        let previous = self.slot.current_id();
        let decided = self.slot.establish(key, conn);
        match &decided {
            Established::Current { restarted, .. } => {
                if restarted.is_some() {
                    // Nothing of an earlier incarnation is ordered with the new one's frames.
                    self.draining.clear();
                    self.hold = None;
                } else if let Some(old) = previous
                    && handover
                {
                    self.draining.push(old);
                    if self.wrote {
                        self.hold = Some(old);
                    }
                }
                self.wrote = false;
                self.out.connection_established();
            }
            Established::Duplicate => {
                if handover {
                    self.draining.push(id);
                }
            }
        }
        decided
    }

    /// The connection `id` ended (its reader finished). When it was the current one,
    /// everything queued is dropped (it can no longer be delivered in order): [`Ended::Current`]
    /// with the handle and how many frames were dropped. A connection that had lost is
    /// [`Ended::Retired`]: it no longer holds up the current one. `None` for a connection the
    /// session does not know (already ended).
    pub fn lost(&mut self, id: u64) -> Option<Ended<C>> {
        if let Some(conn) = self.slot.lost(id) {
            self.hold = None;
            self.wrote = false;
            return Some(Ended::Current {
                conn,
                dropped: self.out.clear(),
            });
        }
        let at = self.draining.iter().position(|&d| d == id)?;
        self.draining.swap_remove(at);
        let released = self.hold == Some(id);
        if released {
            self.hold = None;
        }
        Some(Ended::Retired { released })
    }

    /// Whether the reader of connection `conn_id` must hold back what it read (rule 3 of the
    /// module docs): it is the current connection and a retired one is still draining.
    pub fn holds_delivery(&self, conn_id: u64) -> bool {
        !self.draining.is_empty() && self.slot.is_current(conn_id)
    }

    /// How many retired connections are draining.
    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    /// Whether writing on the current connection waits for a retired one to drain.
    pub fn is_holding(&self) -> bool {
        self.hold.is_some()
    }

    /// A connect failed at `now`: it backs off. When nothing is connected, what was queued is
    /// dropped; returns how many frames (`None` when a connection is up and carries them).
    pub fn connect_failed(&mut self, now: Instant) -> Option<usize> {
        self.slot.connect_failed(now).then(|| self.out.clear())
    }

    /// This entry's name turned out to be an alias of a node known under another name: the
    /// connect under way is no longer its own, and what is queued moves (see
    /// [`PeerSession::absorb`]).
    pub fn become_alias(&mut self) -> Moved {
        self.slot.stop_connecting();
        self.out.take_all()
    }

    /// Queues frames moved from an alias's entry behind what is queued here; returns the lanes
    /// whose writers should be woken (none while nothing is connected).
    pub fn absorb(&mut self, moved: Moved) -> Vec<usize> {
        let woken = self.out.absorb(moved);
        if self.slot.conn().is_some() {
            woken
        } else {
            Vec::new()
        }
    }

    /// The lanes (bits) other than `except` whose writers wait for another lane's progress (see
    /// [`Outbound::take_waiting`]); cleared.
    pub fn take_waiting(&mut self, except: usize) -> u64 {
        self.out.take_waiting(except)
    }

    /// Whether nothing is connected, connecting or queued.
    pub fn is_idle(&self) -> bool {
        self.slot.is_idle() && self.out.is_empty()
    }
}

fn unreachable(wait: std::time::Duration) -> RouteError {
    RouteError::Unreachable(format!("last connect failed; retrying in {wait:?}"))
}
