//! # conc-cluster
//!
//! The cluster layer above [`conc_node`]: nodes that find each other and share a view of who is
//! up, process groups (Erlang's `pg`), cluster-wide names (Erlang's `global`) and spawning a
//! process on another node. Everything here runs as ordinary conc processes on each node,
//! exchanging ordinary messages; nothing in it needs a change to the wire.
//!
//! Two nodes on loopback form a cluster: B joins through A as its seed, and A sees it come up.
//!
//! ```
//! use conc_cluster::{Cluster, ClusterConfig, MemberEvent};
//! use conc_node::{Cookie, Node, Tcp};
//! use std::time::Duration;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Every member proves the same cookie before anything it sends is acted on.
//! let cookie = Cookie::new("a shared secret")?;
//! let a = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie.clone())
//!     .transport(Tcp::pooled())
//!     .start()
//!     .await?;
//! let b = Node::builder()
//!     .listen("127.0.0.1:0")
//!     .cookie(cookie)
//!     .transport(Tcp::pooled())
//!     .start()
//!     .await?;
//! let cluster_a = Cluster::start(&a, ClusterConfig::new())?;
//! let mut events = cluster_a.events(); // the current view first, then every change
//! let _cluster_b = Cluster::start(&b, ClusterConfig::new().seed_nodes([a.name()]))?;
//! tokio::time::timeout(Duration::from_secs(30), async {
//!     while let Some(event) = events.recv().await {
//!         if matches!(&event, MemberEvent::Up(m) if m.name == b.name()) {
//!             break;
//!         }
//!     }
//! })
//! .await?;
//! assert_eq!(cluster_a.members().len(), 2); // A and B
//! # Ok(()) }
//! ```
//!
//! ## Membership
//!
//! [`Cluster::start`] runs a node's membership process: it joins through seed nodes
//! ([`ClusterConfig::seed_nodes`]) or at run time ([`Cluster::join`]), keeps the view of the
//! members up ([`Cluster::members`]) and reports changes ([`Cluster::events`]: up, down with a
//! [`MemberDownReason`], left). Failure detection and gossip are SWIM, through the `foca`
//! crate; the state machine is sans-IO ([`membership::Machine`]). See the [`membership`]
//! module and the README's "Cluster" section for the defaults and the measured bounds.

#![forbid(unsafe_code)]

pub mod discovery;
pub mod global;
pub mod membership;
pub mod pg;
pub mod spawn;

pub use discovery::{DiscoveryError, DnsDiscovery, DnsQuery};

pub use membership::{
    Cluster, ClusterConfig, ClusterStartError, JoinError, Member, MemberDownReason, MemberEvent,
    MemberEvents,
};
