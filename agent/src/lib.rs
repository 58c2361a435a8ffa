//! agora-agent: runs tasks on one machine for the master.
//!
//! - [`agent`]: state and event loop (registration, tasks, status updates).
//! - [`link`]: the connection to the master (rkyv frames, reconnects).
//! - [`containerizer`]: sandboxes, process groups, launch, kill, reap.
//! - [`cgroups`]: per-task cgroups (v2, or v1 on hybrid hosts).
//! - [`ebpf`]: the eBPF programs' loader, maps and self-monitoring.
//! - [`btf`]: kernel struct offsets for the programs, from the kernel's BTF.
//! - [`resources`]: what the agent offers.
//! - [`usage`]: the per-task usage view and its renderings.
//! - [`http`]: the agent's own endpoints.

pub mod agent;
pub mod btf;
pub mod cgroups;
pub mod containerizer;
pub mod ebpf;
pub mod http;
pub mod link;
pub mod resources;
pub mod spawn;
pub mod usage;
pub mod volumes;
