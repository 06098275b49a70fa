//! Ports: how bursts of frames come into a worker and go out of it.
//!
//! A port is only an rx burst, a tx burst and a buffer type; every port kind (in-memory today,
//! AF_XDP and DPDK next) drives the very same worker code. Buffers move by ownership, never by
//! copy: a frame received on one port is rewritten in place and handed to another port's tx.

use std::collections::VecDeque;

#[cfg(target_os = "linux")]
pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod mem;
#[cfg(target_os = "linux")]
pub mod xdp_prog;

/// A packet buffer with head- and tailroom, like a DPDK mbuf: the worker grows and shrinks the
/// data window in place to add or strip encapsulation.
pub trait Frame: Send {
    fn data(&self) -> &[u8];
    fn data_mut(&mut self) -> &mut [u8];
    fn len(&self) -> usize {
        self.data().len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn headroom(&self) -> usize;
    fn tailroom(&self) -> usize;
    /// Moves the start of the data `n` bytes earlier. False (and no change) without room.
    fn prepend(&mut self, n: usize) -> bool;
    /// Moves the start of the data `n` bytes later. False (and no change) if shorter than `n`.
    fn adj(&mut self, n: usize) -> bool;
    /// Grows the data by `n` bytes at the tail. False (and no change) without room.
    fn append(&mut self, n: usize) -> bool;
    /// Shortens the data to `len` bytes (no-op if already shorter).
    fn truncate(&mut self, len: usize);
}

/// One rx/tx queue pair of a port, owned by one worker.
pub trait Port: Send {
    type Frame: Frame;

    /// Appends up to `max` received frames to `out`; returns how many.
    fn rx_burst(&mut self, out: &mut Vec<Self::Frame>, max: usize) -> usize;

    /// Sends frames from the front of `q`; returns how many were taken. What is left in `q` was
    /// not accepted (the link is full): the caller keeps it and tries again, so a full link is
    /// back-pressure, not loss.
    fn tx_burst(&mut self, q: &mut VecDeque<Self::Frame>) -> usize;

    /// A fresh, empty frame with the port's default headroom (for packets the worker
    /// originates, such as ICMP errors). None if the port's pool is exhausted.
    fn alloc(&mut self) -> Option<Self::Frame>;

    /// A short name for logs and stats ("mem:lan-a", "af_xdp:eth1/0", ...).
    fn name(&self) -> &str;
}
