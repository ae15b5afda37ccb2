//! # conc-cluster
//!
//! The cluster layer above [`conc_node`]: nodes that find each other and share a view of who is
//! up, process groups (Erlang's `pg`), cluster-wide names (Erlang's `global`) and spawning a
//! process on another node. Everything here runs as ordinary conc processes on each node,
//! exchanging ordinary messages; nothing in it needs a change to the wire.
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
