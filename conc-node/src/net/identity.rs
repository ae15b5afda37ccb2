//! A peer's identity: the name and incarnation it proved, its aliases, restarts, and what
//! fires when it is lost.

use super::*;

impl Net {
    /// The proven name of the node reached as `name` (itself if no alias is known).
    pub(crate) fn canon(&self, name: &str) -> String {
        lock(&self.aliases)
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// Every name the node with proven name `canonical` is known under here.
    pub(super) fn names_of(&self, canonical: &str) -> HashSet<String> {
        let mut names: HashSet<String> = lock(&self.aliases)
            .iter()
            .filter(|(_, proven)| *proven == canonical)
            .map(|(alias, _)| alias.clone())
            .collect();
        names.insert(canonical.to_string());
        names
    }

    /// The peers proven and not seen down since (name, incarnation), sorted by name.
    pub(crate) fn up_peers(&self) -> Vec<(String, u64)> {
        let mut up: Vec<(String, u64)> = lock(&self.known)
            .iter()
            .filter(|(_, k)| !k.down && k.incarnation != 0)
            .map(|(n, k)| (n.clone(), k.incarnation))
            .collect();
        up.sort();
        up
    }

    /// The incarnation of the node reached as `name` that is up now, as far as this node
    /// knows (0: none yet, or it was seen down: the next one proven is the one reached).
    pub(super) fn live_incarnation(&self, name: &str) -> u64 {
        let c = self.canon(name);
        lock(&self.known)
            .get(&c)
            .filter(|k| !k.down)
            .map_or(0, |k| k.incarnation)
    }

    /// Whether `node` names this node: its own name, or `host:port` with this node's port and
    /// a host that is its bound address (or loopback, when it listens on loopback or on every
    /// address). Checked without resolving names.
    pub(crate) fn is_self(&self, node: &str) -> bool {
        node == &*self.name
            || self
                .local_addr
                .is_some_and(|bound| names_bound(node, bound))
    }

    /// A handshake proved `who`: learns the alias it was reached through, and whether it is a
    /// new incarnation of a known node (a restart), which fires everything that depended on
    /// the old one.
    pub(crate) fn proven(&self, proof: Proven<'_>) -> bool {
        let who = proof.peer;
        if let Some(d) = proof.dialled
            && d != who.name
        {
            // A name reached through another address while a live node of another
            // incarnation holds it: two nodes claim one name. The newcomer is refused rather
            // than let it take the other's traffic (a restart of the same node is seen through
            // its own name, or once the old one is down).
            let conflict = lock(&self.known)
                .get(&who.name)
                .is_some_and(|k| !k.down && k.incarnation != 0 && k.incarnation != who.incarnation);
            if conflict {
                tracing::warn!(dialled = d, claimed = %who.name, "two nodes claim one name: refused");
                self.counters.rejected("name conflict");
                return false;
            }
            let mut aliases = lock(&self.aliases);
            if aliases.get(d) != Some(&who.name) {
                tracing::debug!(alias = d, node = %who.name, "alias of a node");
                aliases.insert(d.to_string(), who.name.clone());
            }
        }
        // The call or monitor this connection carries reaches this incarnation.
        if let Some(id) = proof.carrying.call_ref {
            for calls in lock(&self.pending_calls).values_mut() {
                if let Some(call) = calls.get_mut(&id) {
                    call.incarnation = who.incarnation;
                }
            }
        }
        if let Some(m) = proof.carrying.monitor
            && let Some(w) = lock(&self.watching).get_mut(&m)
        {
            w.incarnation = who.incarnation;
        }
        // What later frames to this peer may use (a trace context), under every name it is
        // reached by.
        self.counters
            .peer(&who.name)
            .capabilities
            .store(proof.capabilities, Ordering::Relaxed);
        if let Some(d) = proof.dialled
            && d != who.name
            && let Some(s) = lock(&self.sinks).get(d)
        {
            s.counters
                .capabilities
                .store(proof.capabilities, Ordering::Relaxed);
        }
        // A connectionless transport (per-message TCP) has no connection whose start is the
        // peer's `Up`: the node reports it up at its first proof, and again after it was seen
        // down or restarted.
        let connectionless = self.transport.needs_probes();
        let (restarted, newly_up) = {
            let mut known = lock(&self.known);
            let k = known.entry(who.name.clone()).or_default();
            let old = k.incarnation;
            k.incarnation = who.incarnation;
            let was_down = std::mem::replace(&mut k.down, false);
            let restarted = (old != 0 && old != who.incarnation).then_some((old, was_down));
            let newly_up = connectionless && (!k.up || restarted.is_some());
            k.up |= connectionless;
            (restarted, newly_up)
        };
        if let Some((old, was_down)) = restarted {
            tracing::info!(peer = %who.name, old, new = who.incarnation, "node restarted");
            self.lost(&who.name, Some(old), DownReason::Restarted, !was_down);
        }
        if newly_up {
            self.report_up(who);
        }
        self.bind_unbound(&who.name, who.incarnation);
        self.proven_changed.notify_waiters();
        true
    }

    /// Reports `peer` up: the `Up` event, its connected-since time and the counter.
    pub(crate) fn report_up(&self, peer: &NodeIdentity) {
        tracing::info!(peer = %peer.name, incarnation = peer.incarnation, "node up");
        *lock(&self.counters.peer(&peer.name).connected_since) = Some(SystemTime::now());
        if let Some(k) = lock(&self.known).get_mut(&peer.name) {
            k.down = false;
        }
        metrics::counter!("conc_node_up_total").increment(1);
        let _ = self.events.send(NodeEvent::Up {
            name: peer.name.clone(),
            incarnation: peer.incarnation,
        });
    }

    /// Calls and monitors made through a name while no incarnation of the node was known to
    /// be up (never reached yet, or seen down) reach the one proven now.
    pub(super) fn bind_unbound(&self, canonical: &str, incarnation: u64) {
        let names = self.names_of(canonical);
        {
            let mut pending = lock(&self.pending_calls);
            for name in &names {
                if let Some(calls) = pending.get_mut(name) {
                    for call in calls.values_mut().filter(|c| c.incarnation == 0) {
                        call.incarnation = incarnation;
                    }
                }
            }
        }
        for w in lock(&self.watching).values_mut() {
            if w.incarnation == 0 && names.contains(&w.peer) {
                w.incarnation = incarnation;
            }
        }
    }

    /// The node known as `peer` is lost: fail its calls, fire monitors and links with
    /// no-connection, and tell subscribers (once until it is proven or up again). A peer
    /// reported with an incarnation that is no longer its current one was already handled.
    pub(crate) fn node_down(&self, peer: &NodeIdentity, reason: DownReason) {
        let c = self.canon(&peer.name);
        let emit = {
            let mut known = lock(&self.known);
            let k = known.entry(c.clone()).or_default();
            if peer.incarnation != 0 && k.incarnation != 0 && k.incarnation != peer.incarnation {
                // The old incarnation of a restarted peer: handled when the new one was proven.
                return;
            }
            k.up = false;
            !std::mem::replace(&mut k.down, true)
        };
        self.lost(&c, None, reason, emit);
    }

    /// Fires everything that depends on the node with proven name `c` (only what belongs to
    /// incarnation `only`, if given).
    pub(super) fn lost(&self, c: &str, only: Option<u64>, reason: DownReason, emit: bool) {
        if only.is_none()
            && let Some(counters) = self.counters.get(c)
        {
            *lock(&counters.connected_since) = None;
        }
        let names = self.names_of(c);
        self.fail_calls(&names, only, CallFailure::Exited(ExitReason::NoConnection));
        let fired: Vec<Watching> = {
            let mut w = lock(&self.watching);
            let keys: Vec<u64> = w
                .iter()
                .filter(|(_, e)| names.contains(&e.peer) && only.is_none_or(|o| e.incarnation == o))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for e in fired {
            (e.fire)(ExitReason::NoConnection, None);
        }
        // Monitors the peer held here belong to the incarnation that is gone.
        let dropped: Vec<(ProcessId, MonitorRef)> = {
            let mut w = lock(&self.watched);
            let keys: Vec<_> = w.keys().filter(|(p, _)| *p == c).cloned().collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for (pid, mref) in dropped {
            self.rt.node_side().demonitor_target(pid, mref);
        }
        let links: Vec<RemoteLink> = {
            let mut l = lock(&self.links);
            let (gone, keep): (Vec<_>, Vec<_>) = l.drain(..).partition(|x| {
                names.contains(&x.peer)
                    && only.is_none_or(|o| x.remote.is_none_or(|r| r.incarnation == o))
            });
            *l = keep;
            gone
        };
        for l in links {
            if let Some(mref) = l.mref {
                self.rt.node_side().demonitor_target(l.local_pid, mref);
            }
            self.rt.node_side().exit_signal(
                &Target::Id(l.local_pid),
                l.remote.unwrap_or(NO_PID),
                ExitReason::NoConnection,
            );
        }
        if emit {
            metrics::counter!("conc_node_down_total", "reason" => format!("{reason:?}"))
                .increment(1);
            let _ = self.events.send(NodeEvent::Down {
                name: c.to_string(),
                reason,
            });
        }
    }
}

/// Whether `node` (`host:port`) names the listener bound at `bound`: the port as it prints (no
/// leading zeros), and a host that is the bound address in its canonical spelling (IPv6 in
/// brackets), or — when the node listens on loopback or on every address — `localhost`,
/// `127.0.0.1` or `[::1]`. Only these few spellings count, so a peer cannot mint endless
/// aliases of this node (each would be kept).
fn names_bound(node: &str, bound: SocketAddr) -> bool {
    let Some((host, port)) = node.rsplit_once(':') else {
        return false;
    };
    if port != bound.port().to_string() {
        return false;
    }
    let bound_ip = bound.ip();
    if host == "localhost" {
        return bound_ip.is_loopback() || bound_ip.is_unspecified();
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => match v6.parse::<std::net::Ipv6Addr>() {
            Ok(ip) if ip.to_string() == v6 => std::net::IpAddr::V6(ip),
            _ => return false,
        },
        None => match host.parse::<std::net::Ipv4Addr>() {
            Ok(ip) if ip.to_string() == host => std::net::IpAddr::V4(ip),
            _ => return false,
        },
    };
    let usual_loopback = ip == std::net::IpAddr::from([127, 0, 0, 1])
        || ip == std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    ip == bound_ip || (bound_ip.is_unspecified() && (usual_loopback || ip.is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_knows_the_few_spellings_of_itself() {
        let lo: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let lan: SocketAddr = "10.1.2.3:9000".parse().unwrap();
        for name in ["localhost:9000", "127.0.0.1:9000"] {
            assert!(names_bound(name, lo), "{name}");
        }
        for name in [
            "localhost:9000",
            "127.0.0.1:9000",
            "[::1]:9000",
            "0.0.0.0:9000",
        ] {
            assert!(names_bound(name, any), "{name}");
        }
        assert!(names_bound("10.1.2.3:9000", lan));
        // Other ports, other addresses, other spellings: not this node (or not recognised).
        for (name, bound) in [
            ("localhost:9001", lo),
            ("localhost:09000", lo),
            ("LOCALHOST:9000", lo),
            ("127.0.0.2:9000", lo),
            ("127.1.2.3:9000", any),
            ("[[::1]]:9000", any),
            ("[0:0:0:0:0:0:0:1]:9000", any),
            ("::1:9000", any),
            ("localhost:9000", lan),
            ("127.0.0.1:9000", lan),
            ("10.1.2.3", lan),
        ] {
            assert!(!names_bound(name, bound), "{name} for {bound}");
        }
    }
}
