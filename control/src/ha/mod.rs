//! High availability: two gateways, one active and one standby, that take over each other's
//! tunnels without renegotiation and without ever sending one (SPI, sequence number) twice.
//!
//! This module owns the pair's logic, sans-IO (milliseconds in, messages, outputs and
//! deadlines out):
//! - [`record`]: what the nodes say to each other (sync records and channel messages) and
//!   their versioned, strict codec;
//! - [`table`]: the replicated state (IKE SA records, CHILD SAs with their sequence state,
//!   leases), applied idempotently by version;
//! - [`log`]: the active's ordered, acknowledged log with its window and bounded backlog;
//! - [`seq`]: the nonce arithmetic (grants, own blocks, where a takeover starts, the replay
//!   exposure it accepts) and the argument why no nonce repeats;
//! - [`node`]: roles, heartbeats, failure detection, takeover, planned switchover, rejoin,
//!   fencing.
//!
//! It never reads a clock, opens a socket, writes a file or starts a thread: the sync
//! channel's I/O is the appliance's (`appliance/src/ha/`), the data plane is reached through
//! [`node::Output`]s, and the disk marks are written by the driver and confirmed back.
//! It never lets a node send a sequence number outside the rules stated in [`seq`].

pub mod log;
pub mod node;
pub mod record;
pub mod seq;
pub mod table;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use node::{HaParams, Node, NotActive, Output, Said, Stats, DRAIN_MIN_MS};
pub use record::{ChildKey, Message, Record, Role};
pub use seq::{SeqPlan, MAX_JUMP};
pub use table::Table;
