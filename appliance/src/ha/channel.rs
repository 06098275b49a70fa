//! The HA pair's sync channel: the shared Noise channel (`crate::noise_channel`) under the
//! HA sync protocol's prologue.

use std::io;

pub use crate::noise_channel::{Endpoint, Full, LinkEvent, Psk, SyncLink, MAX_PAYLOAD};

/// Starts the sync link (see [`SyncLink::start`]).
pub fn start(endpoint: Endpoint, psk: Psk, queue: usize) -> io::Result<SyncLink> {
    SyncLink::start(endpoint, psk, queue, crate::noise_channel::HA_SYNC)
}
