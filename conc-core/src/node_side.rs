//! The part of the runtime a node plugs into: delivering what arrives from other nodes,
//! failing calls, watching processes on behalf of peers, and exit signals. Applications do not
//! need it; the node layer (`conc-node`) reaches it through [`Runtime::node_side`].

use std::sync::Arc;

use crate::call::CallFailure;
use crate::error::{DeliverError, HookError};
use crate::exit::{ExitReason, MonitorRef, ProcessId};
use crate::process::{AnyProc, Watcher, lock};
use crate::remote::{NodeHook, Target, with_decode_context};
use crate::runtime::{Runtime, add_watcher, exit_signal, kill_with, remove_watcher};
use crate::tag::TypeTag;

/// The node-facing interface of a [`Runtime`] (see the module docs). Borrowed from the runtime
/// with [`Runtime::node_side`].
#[derive(Clone, Copy, Debug)]
pub struct NodeSide<'a>(pub(crate) &'a Runtime);

impl NodeSide<'_> {
    /// Kills the local process named by `target` with reason killed, for a peer that asked
    /// ([`RemoteSink::kill`](crate::RemoteSink::kill)). Unknown targets are ignored.
    pub fn kill_target(&self, target: &Target) {
        if let Some(p) = self.0.target_proc(target) {
            kill_with(&p, ExitReason::Killed);
        }
    }

    /// Delivers an exit signal that a process on another node sent to the local process named
    /// by `target` ([`RemoteSink::exit`](crate::RemoteSink::exit)), with the semantics of
    /// [`Inbox::send_exit`](crate::Inbox::send_exit). Unknown targets are ignored.
    pub fn exit_target(&self, target: &Target, from: ProcessId, reason: ExitReason) {
        if let Some(p) = self.0.target_proc(target) {
            crate::runtime::send_exit(&p, from, reason);
        }
    }

    /// Installs the node hook that carries messages for remote pids to the network. Done once,
    /// by the node layer when it starts.
    pub fn install_hook(&self, hook: Arc<dyn NodeHook>) -> Result<(), HookError> {
        self.0
            .inner
            .hook
            .set(hook)
            .map_err(|_| HookError::AlreadyInstalled)
    }

    /// The installed node hook, if a node was started on this runtime.
    pub fn hook(&self) -> Option<Arc<dyn NodeHook>> {
        self.0.inner.hook.get().cloned()
    }

    /// Delivers a message that came from another node to a local process, decoding it with
    /// `de` only after checking that the target exists and that `tag` matches its type. Pids and
    /// reply handles inside the message become working references.
    pub fn deliver(
        &self,
        target: &Target,
        tag: TypeTag,
        de: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), DeliverError> {
        let proc = self.delivery_target(target)?;
        if proc.type_tag() != tag {
            return Err(DeliverError::TypeMismatch {
                expected: proc.type_name(),
            });
        }
        with_decode_context(&self.0.inner, || proc.deliver_erased(de, None))
    }

    /// [`deliver`](NodeSide::deliver) for a message body in the node's encoding: decoded with the
    /// target process's [`Codec`](crate::Codec) when it has one, else through `erased`, which must run its
    /// argument with a type-erased deserializer over `body`.
    pub fn deliver_body<E>(
        &self,
        target: &Target,
        tag: TypeTag,
        body: &[u8],
        erased: E,
    ) -> Result<(), DeliverError>
    where
        E: FnOnce(
            &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError>,
        ) -> Result<(), DeliverError>,
    {
        self.deliver_body_traced(target, tag, body, erased, None)
    }

    /// [`deliver_body`](NodeSide::deliver_body), with the span the message's handling runs in
    /// (a child of the sender's remote span), which the receiving process gets from
    /// [`Inbox::recv_traced`](crate::Inbox::recv_traced). `span` is made by the caller only when
    /// the message carried a trace context and a subscriber wants the span; it is dropped if
    /// the message is refused.
    pub fn deliver_body_traced<E>(
        &self,
        target: &Target,
        tag: TypeTag,
        body: &[u8],
        erased: E,
        span: Option<tracing::Span>,
    ) -> Result<(), DeliverError>
    where
        E: FnOnce(
            &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError>,
        ) -> Result<(), DeliverError>,
    {
        let proc = self.delivery_target(target)?;
        self.deliver_body_to(&*proc, tag, body, erased, span)
    }

    /// [`deliver_body_traced`](NodeSide::deliver_body_traced) for a stream of frames: the
    /// process a frame's target resolves to is remembered in `cache`, so the next frame for the
    /// same target skips the registry (a lock and a hash of the name per frame, with `Arc`
    /// traffic on the process). A cached entry is checked on every use and looked up afresh
    /// when it no longer holds: a name must still be registered to that live process (a name
    /// unregistered, or registered to another process since, is resolved again, so a message
    /// by name goes to the process holding the name at delivery time, as Erlang's `Name ! Msg`
    /// does); a pid's process is the same process for as long as its id exists, and one that
    /// exited refuses the message with [`DeliverError::NoSuchProcess`] from its closed mailbox
    /// (a message racing with the exit may be taken and then dropped with the mailbox, as one
    /// that arrived just before the exit is).
    /// Errors are those of [`deliver_body_traced`](NodeSide::deliver_body_traced).
    pub fn deliver_body_cached<E>(
        &self,
        cache: &mut DeliveryCache,
        target: &Target,
        tag: TypeTag,
        body: &[u8],
        erased: E,
        span: Option<tracing::Span>,
    ) -> Result<(), DeliverError>
    where
        E: FnOnce(
            &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError>,
        ) -> Result<(), DeliverError>,
    {
        let inner = &self.0.inner;
        if cache.incarnation != inner.incarnation {
            // A cache is kept for one runtime; one handed another starts empty.
            cache.clear();
            cache.incarnation = inner.incarnation;
        }
        if let Target::Id(pid) = target
            && pid.incarnation != inner.incarnation
        {
            return Err(DeliverError::NoSuchProcess);
        }
        let slot = &mut cache.slots[DeliveryCache::slot_of(target)];
        let hit = slot.as_ref().is_some_and(|(t, p)| {
            t == target
                && match t {
                    Target::Id(_) => true,
                    Target::Name(name) => registered_as(&**p, name),
                }
        });
        if !hit {
            *slot = Some((target.clone(), self.delivery_target(target)?));
        }
        let Some((_, proc)) = slot.as_ref() else {
            return Err(DeliverError::NoSuchProcess);
        };
        self.deliver_body_to(&**proc, tag, body, erased, span)
    }

    /// Checks the type tag and delivers `body` to `proc` (see
    /// [`deliver_body_traced`](NodeSide::deliver_body_traced)).
    fn deliver_body_to<E>(
        &self,
        proc: &dyn AnyProc,
        tag: TypeTag,
        body: &[u8],
        erased: E,
        span: Option<tracing::Span>,
    ) -> Result<(), DeliverError>
    where
        E: FnOnce(
            &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), DeliverError>,
        ) -> Result<(), DeliverError>,
    {
        if proc.type_tag() != tag {
            return Err(DeliverError::TypeMismatch {
                expected: proc.type_name(),
            });
        }
        let mut span = span.map(Box::new);
        with_decode_context(&self.0.inner, || match proc.deliver_body(body, &mut span) {
            Some(result) => result,
            None => erased(&mut |de| proc.deliver_erased(de, span.take())),
        })
    }

    /// The names registered to live processes, sorted, each with the length of its process's
    /// mailbox: messages queued and messages its inbox has taken in but not yet received (as
    /// of its last receive). For the node's `conc_mailbox_length` gauge.
    pub fn registered_mailbox_lengths(&self) -> Vec<(String, usize)> {
        self.0.inner.registered_mailbox_lengths()
    }

    /// The process a frame for `target` is delivered to, or why there is none.
    fn delivery_target(&self, target: &Target) -> Result<Arc<dyn AnyProc>, DeliverError> {
        match target {
            Target::Id(pid) => {
                if pid.incarnation != self.0.inner.incarnation {
                    return Err(DeliverError::NoSuchProcess);
                }
                self.0
                    .inner
                    .proc_by_id(pid.id)
                    .ok_or(DeliverError::NoSuchProcess)
            }
            Target::Name(name) => self
                .0
                .inner
                .proc_by_name(name)
                .ok_or_else(|| DeliverError::UnknownName(name.clone())),
        }
    }

    /// Delivers a reply that came from another node to the call waiting for it. A reply for a
    /// call that has ended (timed out) is refused with [`DeliverError::NoCaller`] and dropped.
    pub fn deliver_reply(
        &self,
        reply_id: u64,
        tag: TypeTag,
        de: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<(), DeliverError> {
        let sink = lock(&self.0.inner.replies)
            .get(&reply_id)
            .cloned()
            .ok_or(DeliverError::NoCaller)?;
        if sink.tag(&self.0.inner) != tag {
            return Err(DeliverError::TypeMismatch {
                expected: sink.type_name(),
            });
        }
        with_decode_context(&self.0.inner, || sink.deliver(de))
    }

    /// Fails the call waiting for `reply_id` because the remote side could not deliver the
    /// request or dropped the reply handle. Unknown ids are ignored.
    pub fn fail_call(&self, reply_id: u64, failure: CallFailure) {
        let sink = lock(&self.0.inner.replies).get(&reply_id).cloned();
        if let Some(sink) = sink {
            sink.fail(failure);
        }
    }

    /// Fails every call of this runtime that is still waiting for a reply from another node
    /// (the node is shutting down).
    pub fn fail_waiting_calls(&self, failure: CallFailure) {
        let sinks: Vec<_> = lock(&self.0.inner.replies).values().cloned().collect();
        for sink in sinks {
            sink.fail(failure.clone());
        }
    }

    /// The identity of the live local process named by `target` (by id of this incarnation, or
    /// by registered name), if there is one.
    pub fn local_process_id(&self, target: &Target) -> Option<ProcessId> {
        self.0.target_proc(target).map(|p| p.process_id())
    }

    /// Whether a call is still waiting under `reply_id`.
    pub fn is_call_waiting(&self, reply_id: u64) -> bool {
        lock(&self.0.inner.replies).contains_key(&reply_id)
    }

    /// Monitors a local process named by `target` on behalf of someone outside this runtime
    /// (another node): `fire` is called once with the exit reason. Returns the monitor and the
    /// process's identity; if there is no such process, `fire` is called at once with
    /// no-such-process and `None` is returned.
    pub fn monitor_target(
        &self,
        target: &Target,
        fire: crate::remote::DownFn,
    ) -> Option<(MonitorRef, ProcessId)> {
        let Some(proc) = self.0.target_proc(target) else {
            fire(ExitReason::NoSuchProcess, None);
            return None;
        };
        let mref = self.0.inner.next_ref();
        let pid = proc.process_id();
        add_watcher(&proc, mref, Watcher::Callback(fire));
        Some((mref, pid))
    }

    /// Removes a monitor set with [`NodeSide::monitor_target`].
    pub fn demonitor_target(&self, pid: ProcessId, monitor: MonitorRef) {
        if pid.incarnation == self.0.inner.incarnation
            && let Some(proc) = self.0.inner.proc_by_id(pid.id)
        {
            remove_watcher(&*proc, monitor);
        }
    }

    /// A future that resolves when the bounded mailbox of `target` has room again (or at once
    /// if it is unbounded or gone). Transports wait on it instead of reading more from a peer
    /// whose messages a process cannot take, so backpressure reaches the sender.
    pub fn room(&self, target: &Target) -> crate::remote::BoxFuture<'static, ()> {
        match self.0.target_proc(target) {
            Some(p) => p.room(),
            None => Box::pin(async {}),
        }
    }

    /// Delivers an exit signal from a linked process on another node to a local process: it
    /// exits with `reason` (if abnormal) unless it traps exits.
    pub fn exit_signal(&self, target: &Target, from: ProcessId, reason: ExitReason) {
        if let Some(p) = self.0.target_proc(target) {
            exit_signal(&p, from, reason);
        }
    }

    /// Number of calls waiting for a reply from another node.
    pub fn pending_remote_calls(&self) -> usize {
        lock(&self.0.inner.replies).len()
    }
}

/// How many targets a [`DeliveryCache`] remembers.
const CACHE_SLOTS: usize = 64;

/// The processes that recent frames from other nodes were delivered to, for
/// [`NodeSide::deliver_body_cached`]: a direct-mapped table of 64 entries, each a target
/// ([`Target`]) and the local process it resolved to, replaced when another target maps to its
/// slot. It keeps those processes' control blocks (not their tasks) alive until replaced or
/// [`cleared`](DeliveryCache::clear). The node keeps one per inbound path; a cache belongs to
/// one runtime (handed to another, it starts empty). The idea is Erlang's distribution
/// receiver resolving a registered name per message against an ETS table made for reads;
/// here the lookup is skipped altogether while the entry holds.
pub struct DeliveryCache {
    /// The incarnation of the runtime the entries belong to (0: none yet).
    incarnation: u64,
    slots: [Option<(Target, Arc<dyn AnyProc>)>; CACHE_SLOTS],
}

impl std::fmt::Debug for DeliveryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryCache")
            .field(
                "targets",
                &self
                    .slots
                    .iter()
                    .flatten()
                    .map(|(t, _)| t)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for DeliveryCache {
    fn default() -> Self {
        DeliveryCache {
            incarnation: 0,
            slots: std::array::from_fn(|_| None),
        }
    }
}

impl DeliveryCache {
    /// An empty cache.
    pub fn new() -> DeliveryCache {
        DeliveryCache::default()
    }

    /// Forgets every entry (and the processes they kept).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
    }

    /// The slot of `target`: its id, or an FNV-1a hash of its name (names are at most 255
    /// bytes), modulo the number of slots.
    fn slot_of(target: &Target) -> usize {
        let h = match target {
            Target::Id(pid) => pid.id,
            Target::Name(name) => {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in name.bytes() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                h ^ (h >> 32)
            }
        };
        (h % CACHE_SLOTS as u64) as usize
    }
}

/// Whether `proc` is alive and holds `name` now: what a cached name entry must still satisfy.
fn registered_as(proc: &dyn AnyProc, name: &str) -> bool {
    let ctl = lock(proc.ctl());
    !ctl.exited
        && ctl
            .extras
            .as_ref()
            .is_some_and(|x| x.names.iter().any(|n| n == name))
}
