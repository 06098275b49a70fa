//! The cluster (issue 18): one crypto node keys for many edge data planes.
//!
//! - `config`: the `cluster` section of a crypto node's or an edge's file.
//! - `msg`: the edge <-> crypto node messages and their versioned, strict codec.
//! - `placement`: the SA repository's in-memory form: CHILD SA records, which edges hold
//!   them, the freshest sequence state of every outbound SA.
//! - `crypto_node`: the crypto node, sans-IO: the control core for every edge, IKE answered
//!   from the address it came to and sent back through the edge that forwarded it, SA
//!   carriers to the forwarding edge ahead of the answer.
//! - `edge`: an edge's stateless IKE forwarder and carrier applier, sans-IO, over the same
//!   `Link` to the data plane as the control core.
//!
//! The drivers (threads, sockets, the Noise channel) are the appliance's
//! (`appliance/src/cluster/`).
//! - `store`: the storage layer on etcd (a KV interface with memory and etcd backends, the
//!   key layout, sealed records).
//! - `repository`: the crypto node's SA repository in that store: what is written before
//!   what is sent, the recovery of a node that restarts, the loop that carries the writes.
//! - `perf`: `roamgate perf cluster`, installs per second to three edges through the store
//!   and the unknown-SPI carrier round trip (real node, edges and codec in one process).

pub mod config;
pub mod crypto_node;
pub mod edge;
pub mod filter;
pub mod msg;
pub mod perf;
pub mod placement;
pub mod repository;
pub mod store;
#[cfg(test)]
mod tests;

pub use crypto_node::{CryptoNode, NodeStats};
pub use edge::{ClientEvent, EdgeForwarder, EdgeStats};
pub use msg::{EdgeId, EdgeMsg, MsgError, NodeMsg};
pub use placement::{SaPlacement, SeqState};
