//! roamgate's data plane.
//!
//! Everything a worker core needs to move packets: wire formats, the AEAD backends, ESP tunnel
//! mode, the SA database (keyed by SPI alone), the security policy database, NAT masquerading,
//! the worker loop and the ports that feed it. The data plane never depends on the control
//! plane: SAs and policies arrive as [`msg`] messages and are acknowledged by generation.
#![deny(unsafe_code)]

pub mod agent;
pub mod crypto;
pub mod esp;
pub mod handoff;
pub mod ids;
pub mod masq;
pub mod msg;
pub mod nat;
pub mod neighbor;
pub mod pcap;
pub mod port;
pub mod prefetch;
pub mod reasm;
pub mod sad;
pub mod shm;
pub mod spd;
pub mod stats;
pub mod traffic;
pub mod wire;
pub mod worker;
