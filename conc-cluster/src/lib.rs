//! # conc-cluster
//!
//! The cluster layer above [`conc_node`]: nodes that find each other and share a view of who is
//! up, process groups (Erlang's `pg`), cluster-wide names (Erlang's `global`) and spawning a
//! process on another node. Everything here runs as ordinary conc processes on each node,
//! exchanging ordinary messages; nothing in it needs a change to the wire.

#![forbid(unsafe_code)]

pub mod global;
pub mod membership;
pub mod pg;
pub mod spawn;

pub use membership::{
    Cluster, ClusterConfig, ClusterStartError, JoinError, Member, MemberDownReason, MemberEvent,
    MemberEvents,
};
