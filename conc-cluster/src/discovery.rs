//! Discovery through DNS: a name that resolves to the cluster's members, as a Kubernetes
//! headless service gives them, re-resolved periodically so that new members are found.
//!
//! Two kinds of names ([`DnsQuery`]): address records (A and AAAA) with one port for every
//! member, or service records (SRV, RFC 2782) that give each member's host and port (their
//! hosts resolved through A/AAAA in turn). Each address found becomes a node name `ip:port`,
//! which [`Cluster::discover`] asks to join like a seed; a node is reached under the name it
//! proves, so members must listen on (or advertise) the addresses DNS gives.
//!
//! Resolution uses `hickory-resolver`: the system's configuration (`/etc/resolv.conf`) or a
//! name server given explicitly.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::Cluster;

/// What to ask DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DnsQuery {
    /// A and AAAA records of `name`; every member listens on `port`.
    Hosts {
        /// The name, e.g. `conc.default.svc.cluster.local`.
        name: String,
        /// The port of every member.
        port: u16,
    },
    /// SRV records of `name` (e.g. `_conc._tcp.conc.default.svc.cluster.local`): each gives a
    /// host (resolved through A/AAAA) and a port.
    Srv {
        /// The service name.
        name: String,
    },
}

/// Why a DNS discovery could not be made or a resolution failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The system's resolver configuration could not be read.
    #[error("cannot read the system's DNS configuration: {0}")]
    SystemConfig(String),
    /// The resolver could not be built.
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
    /// A lookup failed (no such name, no answer, the server did not respond).
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The resolver's error.
        reason: String,
    },
}

/// A DNS name to find members by, and how often to ask again (default every 5 s).
pub struct DnsDiscovery {
    resolver: TokioResolver,
    query: DnsQuery,
    every: Duration,
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("query", &self.query)
            .field("every", &self.every)
            .finish()
    }
}

/// At most this many addresses are taken from one resolution (a bound on what a DNS server
/// can make a node dial).
pub const MAX_DISCOVERED: usize = 1024;

impl DnsDiscovery {
    /// Resolves `query` through the system's configuration (`/etc/resolv.conf` on Unix).
    ///
    /// Errors: [`DiscoveryError::SystemConfig`], [`DiscoveryError::Resolver`].
    pub fn system(query: DnsQuery) -> Result<DnsDiscovery, DiscoveryError> {
        let builder = TokioResolver::builder_tokio()
            .map_err(|e| DiscoveryError::SystemConfig(e.to_string()))?;
        Self::finish(builder, query)
    }

    /// Resolves `query` by asking the name server at `server` (UDP, then TCP for truncated
    /// answers) only.
    ///
    /// Errors: [`DiscoveryError::Resolver`].
    pub fn with_name_server(
        server: SocketAddr,
        query: DnsQuery,
    ) -> Result<DnsDiscovery, DiscoveryError> {
        let mut ns = NameServerConfig::udp_and_tcp(server.ip());
        for c in &mut ns.connections {
            c.port = server.port();
        }
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::finish(builder, query)
    }

    fn finish(
        mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
        query: DnsQuery,
    ) -> Result<DnsDiscovery, DiscoveryError> {
        let opts: &mut ResolverOpts = builder.options_mut();
        // Members come and go: do not keep answers longer than the re-resolution period.
        opts.positive_max_ttl = Some(Duration::from_secs(1));
        opts.negative_max_ttl = Some(Duration::from_secs(1));
        opts.timeout = Duration::from_secs(2);
        let resolver = builder
            .build()
            .map_err(|e| DiscoveryError::Resolver(e.to_string()))?;
        Ok(DnsDiscovery {
            resolver,
            query,
            every: Duration::from_secs(5),
        })
    }

    /// How often to resolve again (at least 100 ms).
    pub fn every(mut self, every: Duration) -> DnsDiscovery {
        self.every = every.max(Duration::from_millis(100));
        self
    }

    /// Resolves the name once: the node names (`ip:port`, IPv6 as `[ip]:port`) it gives now,
    /// sorted, without duplicates, at most [`MAX_DISCOVERED`].
    ///
    /// Errors: [`DiscoveryError::Lookup`] when the name (or, for SRV, every target) does not
    /// resolve.
    pub async fn resolve(&self) -> Result<Vec<String>, DiscoveryError> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        match &self.query {
            DnsQuery::Hosts { name, port } => {
                for ip in self.ips(name).await? {
                    addrs.push(SocketAddr::new(ip, *port));
                }
            }
            DnsQuery::Srv { name } => {
                let lookup = self
                    .resolver
                    .lookup(name.as_str(), RecordType::SRV)
                    .await
                    .map_err(|e| lookup_error(name, e))?;
                let mut targets: Vec<(String, u16)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some((srv.target.to_ascii(), srv.port)),
                        _ => None,
                    })
                    .collect();
                targets.sort();
                targets.dedup();
                targets.truncate(MAX_DISCOVERED);
                let mut last_error = None;
                for (target, port) in targets {
                    match self.ips(&target).await {
                        Ok(ips) => {
                            addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, port)))
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
                if addrs.is_empty()
                    && let Some(e) = last_error
                {
                    return Err(e);
                }
            }
        }
        let mut names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
        names.sort();
        names.dedup();
        names.truncate(MAX_DISCOVERED);
        Ok(names)
    }

    async fn ips(&self, name: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let lookup = self
            .resolver
            .lookup_ip(name)
            .await
            .map_err(|e| lookup_error(name, e))?;
        Ok(lookup.iter().take(MAX_DISCOVERED).collect())
    }
}

fn lookup_error(name: &str, e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Lookup {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

impl Cluster {
    /// Finds members through DNS: resolves `discovery`'s name now and then every period, and
    /// asks each address that is not a member yet to let this node in (as a seed, see
    /// [`Cluster::join`]). Runs until the returned handle is aborted or the membership
    /// process stops. Failed resolutions are logged and retried at the next period.
    pub fn discover(&self, discovery: DnsDiscovery) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(discovery.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match discovery.resolve().await {
                    Ok(names) => {
                        for name in names {
                            if !cluster.is_member(&name) && !cluster.announce(&name) {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "DNS discovery"),
                }
            }
        })
    }
}
