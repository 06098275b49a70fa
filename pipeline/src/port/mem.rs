//! The in-memory port: two ends of a virtual cable joined by lock-free SPSC rings.
//!
//! Used by the tests, `roamgate lab` and the perf lab. Frames are heap buffers with the same
//! head/tailroom discipline as an mbuf. Pushing into a full ring fails and leaves the frame
//! with the sender: back-pressure, never a silent drop.

use std::collections::VecDeque;

use rtrb::{Consumer, Producer, RingBuffer};

use super::{Frame, Port};

/// Total buffer size, as a DPDK mbuf data room (2048) plus its 128-byte headroom, rounded up
/// so a 1500-byte MTU packet can still grow by a maximal ESP trailer.
pub const MEM_BUF_SIZE: usize = 2304;
/// Headroom of a fresh frame: room for outer IPv6 + UDP + ESP header + IV.
pub const MEM_HEADROOM: usize = 128;

/// A heap frame: one pointer, like an mbuf, with its data window kept in the buffer. Frames
/// move between rings and queues on every hop; a pointer moves without waiting for the
/// window's latest narrow stores (a frame carrying its window inline was read back with
/// a wider load than it was written, a failed store-to-load forward per packet).
pub struct MemFrame {
    buf: Box<MemBuf>,
}

struct MemBuf {
    start: u16,
    len: u16,
    bytes: [u8; MEM_BUF_SIZE],
}

impl MemFrame {
    pub fn new() -> Self {
        MemFrame {
            buf: Box::new(MemBuf {
                start: MEM_HEADROOM as u16,
                len: 0,
                bytes: [0u8; MEM_BUF_SIZE],
            }),
        }
    }

    /// A frame holding a copy of `bytes` after the default headroom. None if it does not fit.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut f = MemFrame::new();
        f.set_data(bytes).then_some(f)
    }

    /// Resets the frame to hold a copy of `bytes` after the default headroom.
    pub fn set_data(&mut self, bytes: &[u8]) -> bool {
        let end = MEM_HEADROOM + bytes.len();
        match self.buf.bytes.get_mut(MEM_HEADROOM..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.buf.start = MEM_HEADROOM as u16;
                self.buf.len = bytes.len() as u16;
                true
            }
            None => false,
        }
    }

    fn range(&self) -> core::ops::Range<usize> {
        let s = usize::from(self.buf.start);
        s..s + usize::from(self.buf.len)
    }
}

impl Default for MemFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl Frame for MemFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        self.buf.bytes.get(self.range()).unwrap_or(&[])
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let r = self.range();
        self.buf.bytes.get_mut(r).unwrap_or(&mut [])
    }

    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.buf.start)
    }

    #[inline]
    fn tailroom(&self) -> usize {
        MEM_BUF_SIZE - usize::from(self.buf.start) - usize::from(self.buf.len)
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.headroom() {
            return false;
        }
        self.buf.start -= n as u16;
        self.buf.len += n as u16;
        true
    }

    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > usize::from(self.buf.len) {
            return false;
        }
        self.buf.start += n as u16;
        self.buf.len -= n as u16;
        true
    }

    #[inline]
    fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.buf.len += n as u16;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < usize::from(self.buf.len) {
            self.buf.len = len as u16;
        }
    }
}

/// One end of an in-memory cable.
pub struct MemPort {
    name: String,
    rx: Consumer<MemFrame>,
    tx: Producer<MemFrame>,
}

/// A cable with two ends; what one end sends the other receives. `capacity` frames may be in
/// flight in each direction.
pub fn cable(a: &str, b: &str, capacity: usize) -> (MemPort, MemPort) {
    let (a_tx, b_rx) = RingBuffer::new(capacity);
    let (b_tx, a_rx) = RingBuffer::new(capacity);
    (
        MemPort {
            name: format!("mem:{a}"),
            rx: a_rx,
            tx: a_tx,
        },
        MemPort {
            name: format!("mem:{b}"),
            rx: b_rx,
            tx: b_tx,
        },
    )
}

impl MemPort {
    /// Sends one frame; gives it back if the cable is full.
    pub fn send(&mut self, f: MemFrame) -> Result<(), MemFrame> {
        self.tx.push(f).map_err(|rtrb::PushError::Full(f)| f)
    }

    pub fn recv(&mut self) -> Option<MemFrame> {
        self.rx.pop().ok()
    }

    /// Free slots toward the peer.
    pub fn tx_space(&self) -> usize {
        self.tx.slots()
    }
}

impl Port for MemPort {
    type Frame = MemFrame;

    #[inline]
    fn rx_burst(&mut self, out: &mut Vec<MemFrame>, max: usize) -> usize {
        let n = self.rx.slots().min(max);
        if n == 0 {
            return 0;
        }
        match self.rx.read_chunk(n) {
            Ok(chunk) => {
                out.extend(chunk);
                n
            }
            Err(_) => 0,
        }
    }

    #[inline]
    fn tx_burst(&mut self, q: &mut VecDeque<MemFrame>) -> usize {
        let n = self.tx.slots().min(q.len());
        if n == 0 {
            return 0;
        }
        match self.tx.write_chunk_uninit(n) {
            Ok(chunk) => chunk.fill_from_iter(q.drain(..n)),
            Err(_) => 0,
        }
    }

    fn alloc(&mut self) -> Option<MemFrame> {
        Some(MemFrame::new())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_room_accounting() {
        let mut f = MemFrame::from_bytes(&[1, 2, 3]).unwrap();
        assert_eq!(f.data(), &[1, 2, 3]);
        assert_eq!(f.headroom(), MEM_HEADROOM);
        assert!(f.prepend(4));
        assert_eq!(f.len(), 7);
        assert!(!f.prepend(MEM_HEADROOM));
        assert!(f.adj(4));
        assert_eq!(f.data(), &[1, 2, 3]);
        assert!(!f.adj(4));
        assert!(f.append(2));
        assert_eq!(f.len(), 5);
        assert!(!f.append(f.tailroom() + 1));
        f.truncate(1);
        assert_eq!(f.data(), &[1]);
        assert!(MemFrame::from_bytes(&[0u8; MEM_BUF_SIZE]).is_none());
    }

    #[test]
    fn full_cable_is_back_pressure() {
        let (mut a, mut b) = cable("a", "b", 4);
        let mut q: VecDeque<_> = (0..6u8)
            .map(|i| MemFrame::from_bytes(&[i]).unwrap())
            .collect();
        assert_eq!(a.tx_burst(&mut q), 4);
        assert_eq!(q.len(), 2, "frames that did not fit stay with the sender");
        let mut got = Vec::new();
        assert_eq!(b.rx_burst(&mut got, 3), 3);
        assert_eq!(a.tx_burst(&mut q), 2);
        assert_eq!(b.rx_burst(&mut got, 32), 3);
        let bytes: Vec<u8> = got.iter().map(|f| f.data()[0]).collect();
        assert_eq!(bytes, vec![0, 1, 2, 3, 4, 5]);
    }
}
