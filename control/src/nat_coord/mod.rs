//! Connections that follow a moving client across nodes (issue 21, M12-M14): per-connection
//! masquerading with home (HAM) and foreign (FAM) masqueraders and the routing coordinator
//! that keeps the connection table in the cluster store (etcd, or the memory store on
//! virtual time). See `docs/masq.md` for the design and the argument.
//!
//! - [`records`]: the key layout under `/roamgate/<cluster>/masq/` and the records (nodes,
//!   port blocks, connections, the flow index).
//! - [`node`]: one node's logic, sans-IO over the [`Store`](crate::cluster::store::Store)
//!   interface: liveness lease, block claims, HAM allocation, FAM registration, HAM lookup
//!   (watch, pull on a miss), FAM removal, idle expiry, port quarantine, HAM migration, the
//!   per-user check (`pipeline::masq::access`) on a new flow.
//!
//! - [`liveness`]: heartbeats between nodes, so a dead HAM's lease is revoked by its
//!   successor in a few hundred milliseconds.
//! - [`plane`]: the data-plane tables (`pipeline::masq`) as the node's outputs build them.
//!
//! The data-plane half (the FAM's rewrite, the HAM's routes, the ESP forward between nodes)
//! is `pipeline::masq`.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod glue;
pub mod link;
pub mod liveness;
pub mod node;
pub mod plane;
pub mod records;
#[cfg(test)]
mod tests;

pub use node::{InVerdict, MasqDrop, MasqNode, MasqParams, MasqStats, OutVerdict, Output};
pub use records::{BlockId, Flow, MasqAddr, Proto};
