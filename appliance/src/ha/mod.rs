//! The I/O of an HA pair: the sync channel between the two nodes ([`channel`]), the durable
//! sequence marks ([`marks`]) and the driver that joins `control::ha::Node` to the control
//! process ([`pair`]). The pair's logic is `control::ha` (sans-IO); this module only moves
//! its messages, writes its marks and applies its outputs.

pub mod channel;
pub mod cli;
pub mod marks;
pub mod pair;
pub mod resync_perf;
