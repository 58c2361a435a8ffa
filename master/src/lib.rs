//! agora-master: the cluster's master.
//!
//! - [`allocator`]: DRF allocation, sans-IO.
//! - [`core`]: the master's state machine (agents, frameworks, offers, tasks),
//!   sans-IO, driven by inputs and returning actions.
//! - [`registry`]: the durable state behind a small interface (a local file in
//!   standalone mode).
//! - [`api`]: the HTTP endpoints; the only module that knows JSON.
//! - [`outq`]: a connection's bounded outgoing queue, drained whole by its
//!   writer.
//! - [`shard`]: the glommio shell, one executor per core, that performs I/O.

pub mod allocator;
pub mod api;
pub mod core;
pub mod outq;
pub mod registry;
pub mod shard;
