//! Links between local processes and processes of peers.

use super::*;

impl Net {
    /// Sends the exit of a linked local process to the peer side of `l`.
    pub(super) fn send_link_exit(&self, l: &RemoteLink, reason: &ExitReason) {
        let target = match (&l.remote, &l.via) {
            (Some(r), _) => Target::Id(*r),
            // The peer has not said yet which process held the name; it knows its side of
            // the link by the name (the frame follows the link request).
            (None, Some(name)) => Target::Name(name.clone()),
            (None, None) => return,
        };
        let sink = self.sink(&l.peer);
        if let Some(link) = &sink.route {
            let _ = link.send(
                &mut |out: &mut Vec<u8>| frame::encode_link_exit(out, &target, l.local_pid, reason),
                FrameMeta {
                    after_all: true,
                    ..FrameMeta::default()
                },
            );
        }
    }

    /// Records a link between the local process `local` and a process of `peer` (`remote`,
    /// or, for a link made through a name that the peer has yet to resolve, `None`), with a
    /// watcher that sends the local process's exit to the peer. Returns the local process, or
    /// `None` if there is no such process (nothing is recorded then).
    pub(super) fn add_link(
        &self,
        peer: &str,
        local: &Target,
        remote: Option<ProcessId>,
        via: Option<String>,
    ) -> Option<ProcessId> {
        let local_pid = self.rt.node_side().local_process_id(local)?;
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        lock(&self.links).push(RemoteLink {
            id,
            peer: peer.to_string(),
            local_pid,
            remote,
            via,
            mref: None,
        });
        let weak = self.me.clone();
        let fire: DownFn = Box::new(move |reason, _| {
            let Some(net) = weak.upgrade() else {
                return;
            };
            let entry = {
                let mut links = lock(&net.links);
                links
                    .iter()
                    .position(|l| l.id == id)
                    .map(|i| links.swap_remove(i))
            };
            if let Some(l) = entry {
                net.send_link_exit(&l, &reason);
            }
        });
        // If the process exited meanwhile, the watcher fires at once and sends its exit.
        if let Some((mref, _)) = self
            .rt
            .node_side()
            .monitor_target(&Target::Id(local_pid), fire)
        {
            let mut links = lock(&self.links);
            match links.iter_mut().find(|l| l.id == id) {
                Some(l) => l.mref = Some(mref),
                None => {
                    drop(links);
                    self.rt.node_side().demonitor_target(local_pid, mref);
                }
            }
        }
        Some(local_pid)
    }

    /// Removes the links with the node known as `peer` that a frame from it about
    /// `(target, remote)` names (`target` a process of this node, `remote` one of the peer's),
    /// and their watchers; returns them.
    pub(super) fn remove_links(
        &self,
        peer: &str,
        target: &Target,
        remote: ProcessId,
    ) -> Vec<RemoteLink> {
        self.take_links(peer, |l| l.matches(target, remote))
    }

    /// Removes the links with the node known as `peer` that `pred` picks, and their watchers.
    pub(super) fn remove_links_where(&self, peer: &str, pred: impl Fn(&RemoteLink) -> bool) {
        drop(self.take_links(peer, pred));
    }

    pub(super) fn take_links(
        &self,
        peer: &str,
        pred: impl Fn(&RemoteLink) -> bool,
    ) -> Vec<RemoteLink> {
        let names = self.names_of(&self.canon(peer));
        let removed: Vec<RemoteLink> = {
            let mut links = lock(&self.links);
            let (gone, keep): (Vec<_>, Vec<_>) = links
                .drain(..)
                .partition(|l| names.contains(&l.peer) && pred(l));
            *links = keep;
            gone
        };
        for l in &removed {
            if let Some(mref) = l.mref {
                self.rt.node_side().demonitor_target(l.local_pid, mref);
            }
        }
        removed
    }
}

/// A link between a local process and a process of a peer.
pub(super) struct RemoteLink {
    /// Unique on this node.
    pub(super) id: u64,
    /// The name of the peer the link was made through (an alias or the proven name).
    pub(super) peer: String,
    pub(super) local_pid: ProcessId,
    /// The peer's process; `None` while a link made through a name waits for the peer to say
    /// which process held it ([`Frame::Linked`]).
    pub(super) remote: Option<ProcessId>,
    /// The name the link was made through, on either side.
    pub(super) via: Option<String>,
    /// The watcher on the local process (set once installed).
    pub(super) mref: Option<MonitorRef>,
}

impl RemoteLink {
    /// Whether a link frame from the peer about `(target, remote)` names this link.
    pub(super) fn matches(&self, target: &Target, remote: ProcessId) -> bool {
        let remote_ok = match self.remote {
            Some(r) => r == remote,
            // A link through a name the peer could not resolve is refused with no pid.
            None => remote == NO_PID,
        };
        remote_ok
            && match target {
                Target::Id(id) => self.local_pid == *id,
                Target::Name(n) => self.via.as_deref() == Some(n.as_str()),
            }
    }
}
