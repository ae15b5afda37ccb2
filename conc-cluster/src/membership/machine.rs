//! The sans-IO membership state machine: foca's SWIM plus the member view and its events.
//!
//! Inputs are packets, timers and commands; outputs ([`Output`]) are packets to send (by node
//! name), timers to arm (a delay) and [`MemberEvent`]s. It does no I/O and reads no clock, so
//! the node's membership process ([`crate::Cluster`]) and a simulation drive the same code.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use foca::{
    Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, State, Timer, TimerToken,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use super::{ClusterConfig, Member, MemberDownReason, MemberEvent};

/// The identity foca gossips: the node's name and incarnation, plus a counter bumped when the
/// member rejoins after being declared down (foca's `Identity::renew`), so a member that was
/// paused or cut off comes back without a restart. The user sees `(name, incarnation)` only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Id {
    /// Shared: foca asks for the address (the name) often.
    name: Arc<str>,
    incarnation: u64,
    bump: u32,
    /// When the member's cluster layer started (milliseconds since the Unix epoch): of two
    /// identities on one address, the later start is the restarted node and wins (incarnations
    /// are random, so they cannot tell which is newer).
    started: u64,
}

impl Identity for Id {
    type Addr = Arc<str>;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            name: self.name.clone(),
            incarnation: self.incarnation,
            bump: self.bump.wrapping_add(1),
            started: self.started,
        })
    }

    fn addr(&self) -> Arc<str> {
        self.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.started, self.incarnation, self.bump)
            > (adversary.started, adversary.incarnation, adversary.bump)
    }
}

/// A timer the machine asked for: hand it back to [`Machine::handle_timer`] once its delay
/// has passed (late is fine, never is not).
#[derive(Debug, Clone)]
pub struct MachineTimer(Timer<Id>);

/// What the machine asks its driver to do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Output {
    /// Send a membership packet to the membership process of the node named `to`.
    Send {
        /// The node's name (`host:port`).
        to: String,
        /// The packet (foca's encoding, at most the configured packet size).
        packet: Vec<u8>,
    },
    /// Call [`Machine::handle_timer`] with `timer` after `after`.
    Timer {
        /// The delay.
        after: Duration,
        /// The timer to hand back.
        timer: MachineTimer,
    },
    /// The member view changed.
    Event(MemberEvent),
}

/// Why a membership input was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MachineError {
    /// foca refused the input (a malformed or oversized packet, a packet claiming to be from
    /// this member, a timer out of place).
    #[error("membership input refused: {0}")]
    Refused(String),
}

/// Collects what foca asks for during one call.
struct Collect<'a> {
    out: &'a mut Vec<Output>,
    changed: &'a mut bool,
    rejoined: &'a mut bool,
    /// foca's current timer token, as seen on the timers it asks for.
    token: &'a mut Option<TimerToken>,
}

impl foca::Runtime<Id> for Collect<'_> {
    fn notify(&mut self, notification: Notification<'_, Id>) {
        match notification {
            Notification::MemberUp(_)
            | Notification::MemberDown(_)
            | Notification::Rename(_, _)
            | Notification::Idle => *self.changed = true,
            Notification::Rejoin(_) => {
                *self.changed = true;
                *self.rejoined = true;
            }
            Notification::Active | Notification::Defunct => {}
        }
    }

    fn send_to(&mut self, to: Id, data: &[u8]) {
        self.out.push(Output::Send {
            to: to.name.to_string(),
            packet: data.to_vec(),
        });
    }

    fn submit_after(&mut self, event: Timer<Id>, after: Duration) {
        match &event {
            Timer::ProbeRandomMember(t)
            | Timer::PeriodicAnnounce(t)
            | Timer::PeriodicAnnounceDown(t)
            | Timer::PeriodicGossip(t)
            | Timer::SendIndirectProbe { token: t, .. }
            | Timer::ChangeSuspectToDown { token: t, .. } => *self.token = Some(*t),
            Timer::RemoveDown(_) => {}
        }
        self.out.push(Output::Timer {
            after,
            timer: MachineTimer(event),
        });
    }
}

/// One member's membership state: a foca instance (SWIM with suspicion, piggybacked gossip,
/// periodic gossip and announces), the view derived from it (the active members by name) and
/// the events that changed the view.
pub struct Machine {
    foca: Foca<Id, PostcardCodec, SmallRng, NoCustomBroadcast>,
    me: Member,
    /// The other members seen up, by name.
    view: BTreeMap<String, Member>,
    /// Members that said they leave (or whose node said goodbye): their going is `Left`.
    leaving: HashSet<(String, u64)>,
    out: Vec<Output>,
    rejoins: u64,
    /// foca's timer token (see [`Collect`]): a suspicion raised from outside SWIM
    /// ([`Machine::suspect`]) needs it for its down timer.
    token: Option<TimerToken>,
    /// [`ClusterConfig::suspect_to_down_after`].
    suspect_after: Duration,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("me", &self.me)
            .field("members", &self.view.len())
            .finish()
    }
}

impl Machine {
    /// A member named `name` (`host:port`) of incarnation `incarnation`, alone until it joins
    /// or is joined. `seed` seeds foca's random choices (which member to probe, whom to
    /// gossip to): equal seeds and inputs give equal outputs.
    ///
    /// `started` orders two members on one address (a node restarted on it): the later start
    /// (milliseconds since the Unix epoch, or any clock that only grows) wins.
    pub fn new(
        name: &str,
        incarnation: u64,
        started: u64,
        config: &ClusterConfig,
        seed: u64,
    ) -> Machine {
        let id = Id {
            name: name.into(),
            incarnation,
            bump: 0,
            started,
        };
        Machine {
            foca: Foca::new(
                id,
                config.foca_config(),
                SmallRng::seed_from_u64(seed),
                PostcardCodec,
            ),
            me: Member {
                name: name.to_string(),
                incarnation,
            },
            view: BTreeMap::new(),
            leaving: HashSet::new(),
            out: Vec::new(),
            rejoins: 0,
            token: None,
            suspect_after: config.suspect_to_down_after,
        }
    }

    /// This member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The members seen up, this one included, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.view.values().cloned().collect();
        v.push(self.me.clone());
        v.sort();
        v
    }

    /// The number of members seen up, this one included.
    pub fn len(&self) -> usize {
        self.view.len() + 1
    }

    /// Always false: a member sees itself.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether a member of this name is seen up (this one included).
    pub fn contains(&self, name: &str) -> bool {
        name == self.me.name || self.view.contains_key(name)
    }

    /// How many times this member was declared down by the others and rejoined (foca's
    /// `renew`).
    pub fn rejoins(&self) -> u64 {
        self.rejoins
    }

    /// Takes what the machine asks for since the last call.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    fn run(
        &mut self,
        f: impl FnOnce(
            &mut Foca<Id, PostcardCodec, SmallRng, NoCustomBroadcast>,
            &mut Collect<'_>,
        ) -> Result<(), foca::Error>,
    ) -> Result<(), MachineError> {
        let mut changed = false;
        let mut rejoined = false;
        let mut collect = Collect {
            out: &mut self.out,
            changed: &mut changed,
            rejoined: &mut rejoined,
            token: &mut self.token,
        };
        let result = f(&mut self.foca, &mut collect);
        if rejoined {
            self.rejoins += 1;
        }
        if changed {
            self.reconcile();
        }
        result.map_err(|e| MachineError::Refused(e.to_string()))
    }

    /// Asks the member of name `seed` to let this one in (foca's announce). Its answer carries
    /// the members it knows; call again (with backoff) until [`Machine::contains`] `seed`.
    pub fn join(&mut self, seed: &str) -> Result<(), MachineError> {
        if seed == self.me.name {
            return Ok(());
        }
        // foca addresses the announce to an identity but never checks it: a placeholder with
        // the seed's name routes it.
        let dst = Id {
            name: seed.into(),
            incarnation: 0,
            bump: 0,
            started: 0,
        };
        self.run(|foca, rt| foca.announce(dst, rt))
    }

    /// A packet from another member's machine.
    pub fn handle_packet(&mut self, packet: &[u8]) -> Result<(), MachineError> {
        self.run(|foca, rt| foca.handle_data(packet, rt))
    }

    /// A timer asked for by [`Output::Timer`], once its delay has passed.
    pub fn handle_timer(&mut self, timer: MachineTimer) -> Result<(), MachineError> {
        self.run(|foca, rt| foca.handle_timer(timer.0, rt))
    }

    /// The member `name` told us it leaves (or its node said goodbye): when it goes, the event
    /// is [`MemberEvent::Left`]. `incarnation` `None` means whatever incarnation is up now.
    pub fn leaving(&mut self, name: &str, incarnation: Option<u64>) {
        let inc = match incarnation {
            Some(i) => i,
            None => match self.view.get(name) {
                Some(m) => m.incarnation,
                None => return,
            },
        };
        self.leaving.insert((name.to_string(), inc));
        // Bound the set: entries for members no longer in the view serve no one.
        if self.leaving.len() > 4 * (self.view.len() + 1) {
            let view = &self.view;
            self.leaving
                .retain(|(n, i)| view.get(n).is_some_and(|m| m.incarnation == *i));
        }
    }

    /// Something outside SWIM (the node lost its connection to `name`) suggests the member
    /// is gone: it is suspected now, as if a probe had failed, and declared down unless it
    /// refutes within the suspicion time. (foca starts the suspicion's down timer only for
    /// its own failed probes; this machine starts it here, with foca's timer, so a member
    /// whose connection broke is declared down without waiting for its turn to be probed.)
    pub fn suspect(&mut self, name: &str) -> Result<(), MachineError> {
        let target = self
            .foca
            .iter_membership_state()
            .find(|m| &*m.id().name == name && m.state() == State::Alive)
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), State::Suspect));
        let Some(m) = target else {
            return Ok(());
        };
        let (id, incarnation) = (m.id().clone(), m.incarnation());
        self.run(|foca, rt| foca.apply_many(std::iter::once(m), true, rt))?;
        if let Some(token) = self.token {
            self.out.push(Output::Timer {
                after: self.suspect_after,
                timer: MachineTimer(Timer::ChangeSuspectToDown {
                    member_id: id,
                    incarnation,
                    token,
                }),
            });
        }
        Ok(())
    }

    /// Leaves the cluster: the others are told (by gossip) that this member is gone; the
    /// machine stops answering.
    pub fn leave(&mut self) -> Result<(), MachineError> {
        self.run(|foca, rt| foca.leave_cluster(rt))
    }

    /// Brings the view in line with foca's active members and emits the events.
    fn reconcile(&mut self) {
        let mut active: BTreeMap<String, u64> = BTreeMap::new();
        for m in self.foca.iter_members() {
            let id = m.id();
            if *id.name != *self.me.name {
                active.insert(id.name.to_string(), id.incarnation);
            }
        }
        let gone: Vec<Member> = self
            .view
            .values()
            .filter(|m| active.get(&m.name) != Some(&m.incarnation))
            .cloned()
            .collect();
        for m in gone {
            self.view.remove(&m.name);
            let key = (m.name.clone(), m.incarnation);
            let event = if self.leaving.remove(&key) {
                MemberEvent::Left(m)
            } else if active.contains_key(&m.name) {
                MemberEvent::Down {
                    member: m,
                    reason: MemberDownReason::Restarted,
                }
            } else {
                MemberEvent::Down {
                    member: m,
                    reason: MemberDownReason::Unresponsive,
                }
            };
            self.out.push(Output::Event(event));
        }
        for (name, incarnation) in active {
            if !self.view.contains_key(&name) {
                let m = Member { name, incarnation };
                self.view.insert(m.name.clone(), m.clone());
                self.out.push(Output::Event(MemberEvent::Up(m)));
            }
        }
    }
}
