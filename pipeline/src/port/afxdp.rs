//! The AF_XDP port: one rx/tx queue of a Linux interface, driven from user space through the
//! kernel's XDP socket rings (xdpilone), feeding the same worker code as every other port.
//!
//! Memory: each worker gets one UMEM, shared by the sockets of both its ports (LAN and WAN,
//! `XDP_SHARED_UMEM`), so a frame received on one port is transmitted on the other without a
//! copy. Every chunk of the UMEM is in exactly one place at a time: the free list, the kernel
//! (fill, rx, tx or completion ring) or one [`XdpFrame`]. A frame owns its chunk; sending it
//! hands the chunk to the kernel, dropping it returns the chunk to the free list.
//!
//! UMEM areas live for the whole process (like a DPDK mempool): a frame may outlive the port
//! it came from by a moment (a worker's queues drop after its ports), and a chunk pointer must
//! never dangle. The sockets themselves are closed when their ports drop.
//!
//! Modes: native XDP with zero-copy where the driver supports it, copy mode elsewhere, and
//! generic (SKB) mode on interfaces without native XDP. veth has native XDP but no zero-copy.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

use super::xdp_prog::XdpProgram;
use super::{Frame, Port};

/// The kernel's `XDP_PACKET_HEADROOM`: where rx data starts in a chunk (copy mode), leaving
/// room for our outer headers.
pub const XDP_HEADROOM: usize = 256;

// sockaddr_xdp bind flags (linux/if_xdp.h).
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;

/// Zero-copy wish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroCopy {
    /// Zero-copy when the program runs in native mode and the driver accepts it, else copy.
    Auto,
    On,
    Off,
}

/// Sizes of one worker's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct XdpConfig {
    /// Chunks in the worker's UMEM (shared by its two ports).
    pub frames: u32,
    /// Bytes per chunk: a power of two, 2048 or 4096.
    pub frame_size: u32,
    /// Entries of each fill, completion, rx and tx ring (power of two).
    pub ring_size: u32,
    pub zero_copy: ZeroCopy,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            frames: 8192,
            frame_size: 2048,
            ring_size: 2048,
            zero_copy: ZeroCopy::Auto,
        }
    }
}

/// One worker's UMEM: the chunk area and the chunks nobody holds.
pub struct UmemPool {
    area: NonNull<u8>,
    size: usize,
    frame_size: u32,
    free: Mutex<Vec<u64>>,
}

// SAFETY: the area is plain process memory registered with the kernel. Bytes of a chunk are
// only touched through the one `XdpFrame` that owns the chunk, or by the kernel while the
// chunk sits in one of its rings; the free list is behind a mutex. So sharing the pool
// between threads cannot create a data race.
unsafe impl Sync for UmemPool {}
// SAFETY: as above; nothing in the pool is tied to the creating thread.
unsafe impl Send for UmemPool {}

impl UmemPool {
    /// Maps a fresh area for `cfg.frames` chunks. The pool is never freed (see module doc).
    fn new(cfg: &XdpConfig) -> io::Result<&'static UmemPool> {
        if !cfg.frame_size.is_power_of_two() || !(2048..=4096).contains(&cfg.frame_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "AF_XDP frame_size must be 2048 or 4096",
            ));
        }
        let size = cfg.frames as usize * cfg.frame_size as usize;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked
        // against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let area = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let free = (0..u64::from(cfg.frames))
            .rev()
            .map(|i| i * u64::from(cfg.frame_size))
            .collect();
        Ok(Box::leak(Box::new(UmemPool {
            area,
            size,
            frame_size: cfg.frame_size,
            free: Mutex::new(free),
        })))
    }

    fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.frame_size) - 1)
    }

    fn give_back(&self, chunks: impl Iterator<Item = u64>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.extend(chunks);
    }

    fn take(&self) -> Option<u64> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Chunks on the free list (for tests and stats).
    pub fn free_chunks(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A frame in a UMEM chunk.
pub struct XdpFrame {
    pool: &'static UmemPool,
    /// Offset of the chunk in the UMEM.
    chunk: u64,
    /// Data window inside the chunk.
    start: u16,
    len: u16,
}

impl XdpFrame {
    fn ptr(&self) -> *mut u8 {
        // SAFETY: `chunk` is a chunk offset inside the pool's area (it came from the free list
        // or an rx descriptor of a socket registered with this area), so the result stays in
        // the same allocation.
        unsafe { self.pool.area.as_ptr().add(self.chunk as usize) }
    }

    /// Gives the chunk up without returning it to the free list (it goes to the kernel).
    fn into_desc(self) -> (u64, u32) {
        let d = (self.chunk + u64::from(self.start), u32::from(self.len));
        core::mem::forget(self);
        d
    }
}

impl Drop for XdpFrame {
    fn drop(&mut self) {
        self.pool.give_back(core::iter::once(self.chunk));
    }
}

impl Frame for XdpFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: this frame owns the chunk exclusively (module doc), and start + len never
        // exceeds the chunk size (every setter checks it against tailroom/headroom).
        unsafe {
            core::slice::from_raw_parts(
                self.ptr().add(usize::from(self.start)),
                usize::from(self.len),
            )
        }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and `&mut self` makes this the only live view of the bytes.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.ptr().add(usize::from(self.start)),
                usize::from(self.len),
            )
        }
    }

    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.start)
    }

    #[inline]
    fn tailroom(&self) -> usize {
        self.pool.frame_size as usize - usize::from(self.start) - usize::from(self.len)
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.headroom() {
            return false;
        }
        self.start -= n as u16;
        self.len += n as u16;
        true
    }

    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > usize::from(self.len) {
            return false;
        }
        self.start += n as u16;
        self.len -= n as u16;
        true
    }

    #[inline]
    fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.len += n as u16;
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        if len < usize::from(self.len) {
            self.len = len as u16;
        }
    }
}

/// Counters of one AF_XDP port (frames the kernel could not hand us are the operator's first
/// question when a NIC drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpPortStats {
    /// Frames the kernel dropped for this socket, each counted once: no buffer on the fill
    /// ring (copy mode) or a frame too large for a chunk (the kernel's `rx_dropped`), or the
    /// rx ring full (`rx_ring_full`).
    pub rx_dropped: u64,
    /// Times the kernel found this socket's fill ring empty (`rx_fill_ring_empty_descs`). In
    /// copy mode each such frame is also in `rx_dropped`; in zero-copy mode the driver retries.
    pub fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Times rx found no chunk to put on the fill ring.
    pub fill_starved: u64,
}

/// One queue of one interface, owned by one worker.
pub struct XdpPort {
    name: String,
    pool: &'static UmemPool,
    fq: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    fd: libc::c_int,
    zero_copy: bool,
    descs: Vec<XdpDesc>,
    fill_starved: Arc<AtomicU64>,
}

impl XdpPort {
    /// Opens queue `queue` of both of a worker's interfaces on one shared UMEM and registers
    /// the sockets with each interface's program. Returns (lan, wan).
    ///
    /// With `ZeroCopy::Auto` on natively attached programs, zero-copy is tried first; a
    /// driver that refuses it gets copy mode (a failed bind spoils its socket, so each attempt
    /// starts from a fresh UMEM registration of the same area).
    pub fn open_pair(
        lan: &XdpProgram,
        wan: &XdpProgram,
        queue: u32,
        cfg: &XdpConfig,
    ) -> io::Result<(XdpPort, XdpPort)> {
        let pool = UmemPool::new(cfg)?;
        let native = lan.is_native() && wan.is_native();
        let modes: &[bool] = match (cfg.zero_copy, native) {
            (ZeroCopy::On, _) => &[true],
            (ZeroCopy::Auto, true) => &[true, false],
            _ => &[false],
        };
        let mut last = None;
        for &zc in modes {
            match Self::try_pair(lan, wan, queue, cfg, pool, zc) {
                Ok(pair) => return Ok(pair),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no AF_XDP bind mode to try")))
    }

    fn try_pair(
        lan: &XdpProgram,
        wan: &XdpProgram,
        queue: u32,
        cfg: &XdpConfig,
        pool: &'static UmemPool,
        zc: bool,
    ) -> io::Result<(XdpPort, XdpPort)> {
        let ucfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
        };
        let area = core::ptr::slice_from_raw_parts_mut(pool.area.as_ptr(), pool.size);
        let area = NonNull::new(area).ok_or_else(|| io::Error::other("null UMEM area"))?;
        // SAFETY: the area is page aligned (fresh mmap), exactly `frames * frame_size` bytes,
        // and lives for the rest of the process (the pool is leaked on purpose).
        let umem = unsafe { Umem::new(ucfg, area) }.map_err(|e| xerr(e, "registering the UMEM"))?;
        let lan_port = Self::open_one(&umem, lan, queue, cfg, pool, zc, true)?;
        let wan_port = Self::open_one(&umem, wan, queue, cfg, pool, zc, false)?;
        Ok((lan_port, wan_port))
    }

    fn open_one(
        umem: &Umem,
        prog: &XdpProgram,
        queue: u32,
        cfg: &XdpConfig,
        pool: &'static UmemPool,
        zc: bool,
        first: bool,
    ) -> io::Result<XdpPort> {
        let mut info = IfInfo::invalid();
        info.from_ifindex(prog.ifindex())
            .map_err(|e| xerr(e, "looking up the interface"))?;
        info.set_queue(queue);
        // The first socket of the pair is the UMEM's own; the second shares it.
        let sock = if first {
            Socket::with_shared(&info, umem)
        } else {
            Socket::new(&info)
        }
        .map_err(|e| xerr(e, "creating the AF_XDP socket"))?;
        let fq = umem
            .fq_cq(&sock)
            .map_err(|e| xerr(e, "creating fill/completion rings"))?;
        let size = NonZeroU32::new(cfg.ring_size);
        let scfg = SocketConfig {
            rx_size: size,
            tx_size: size,
            // A socket sharing another's UMEM inherits its mode: the kernel refuses any
            // mode flag next to XDP_SHARED_UMEM.
            bind_flags: if !first {
                0
            } else if zc {
                XDP_USE_NEED_WAKEUP | XDP_ZEROCOPY
            } else {
                XDP_USE_NEED_WAKEUP | XDP_COPY
            },
        };
        let user = umem
            .rx_tx(&sock, &scfg)
            .map_err(|e| xerr(e, "creating rx/tx rings"))?;
        let rx = user.map_rx().map_err(|e| xerr(e, "mapping the rx ring"))?;
        let tx = user.map_tx().map_err(|e| xerr(e, "mapping the tx ring"))?;
        umem.bind(&user).map_err(|e| {
            xerr(
                e,
                &format!(
                    "binding to {} queue {queue} ({})",
                    prog.ifname(),
                    if zc { "zero-copy" } else { "copy" }
                ),
            )
        })?;
        let fd = rx.as_raw_fd();
        prog.register(queue, fd)?;
        let mut port = XdpPort {
            name: format!("af_xdp:{}/{queue}", prog.ifname()),
            pool,
            fq,
            rx,
            tx,
            fd,
            zero_copy: zc,
            descs: Vec::with_capacity(cfg.ring_size as usize),
            fill_starved: Arc::new(AtomicU64::new(0)),
        };
        // Give the kernel half the chunks this port's fill ring may hold now.
        port.refill(cfg.ring_size / 2);
        Ok(port)
    }

    /// True if bound in zero-copy mode.
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The worker's UMEM pool (both ports of a pair share it).
    pub fn pool(&self) -> &'static UmemPool {
        self.pool
    }

    /// A reader of this port's counters for another thread (it keeps its own handle on the
    /// socket, so it stays valid after the port is gone).
    pub fn stats_reader(&self) -> XdpStatsReader {
        // SAFETY: dup(2) of our open socket fd; the result is checked and then owned.
        let fd = unsafe { libc::dup(self.fd) };
        XdpStatsReader {
            // SAFETY: `fd` is a fresh descriptor from dup(2) that nothing else owns.
            fd: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
            fill_starved: self.fill_starved.clone(),
        }
    }

    /// Chunks the kernel has finished sending go back to the free list.
    fn reap(&mut self) {
        let pool = self.pool;
        let mut c = self.fq.complete(self.descs.capacity() as u32);
        let mut done = Vec::new();
        while let Some(addr) = c.read() {
            done.push(pool.chunk_of(addr));
        }
        c.release();
        drop(c);
        if !done.is_empty() {
            pool.give_back(done.into_iter());
        }
    }

    /// Puts up to `max` free chunks on the fill ring.
    fn refill(&mut self, max: u32) {
        let pool = self.pool;
        let mut free = pool.free.lock().unwrap_or_else(|p| p.into_inner());
        let n = (free.len() as u32).min(max);
        if n == 0 {
            self.fill_starved.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut w = self.fq.fill(n);
        let cap = w.capacity() as usize;
        let from = free.len() - cap;
        // Exactly `cap` items: the writer would silently lose any item beyond its capacity.
        let inserted = w.insert(free[from..].iter().copied()) as usize;
        w.commit();
        let keep = free.len() - inserted;
        free.truncate(keep);
    }
}

impl Port for XdpPort {
    type Frame = XdpFrame;

    fn rx_burst(&mut self, out: &mut Vec<XdpFrame>, max: usize) -> usize {
        self.reap();
        self.refill(max as u32 * 2);
        let pool = self.pool;
        let fs = pool.frame_size as u64;
        let mut r = self.rx.receive(max as u32);
        let mut n = 0;
        while let Some(d) = r.read() {
            let chunk = pool.chunk_of(d.addr);
            let start = d.addr - chunk;
            if start + u64::from(d.len) > fs || chunk + fs > pool.size as u64 {
                // The kernel never does this; if it did, keep the chunk and drop the frame.
                pool.give_back(core::iter::once(chunk));
                continue;
            }
            out.push(XdpFrame {
                pool,
                chunk,
                start: start as u16,
                len: d.len as u16,
            });
            n += 1;
        }
        r.release();
        drop(r);
        if n == 0 && self.fq.needs_wakeup() {
            self.fq.wake();
        }
        n
    }

    fn tx_burst(&mut self, q: &mut VecDeque<XdpFrame>) -> usize {
        if q.is_empty() {
            if self.tx.pending() > 0 && self.tx.needs_wakeup() {
                self.tx.wake();
            }
            return 0;
        }
        self.reap();
        let mut w = self.tx.transmit(q.len().min(self.descs.capacity()) as u32);
        let cap = w.capacity() as usize;
        self.descs.clear();
        for _ in 0..cap {
            let Some(f) = q.pop_front() else { break };
            let f = if core::ptr::eq(f.pool, self.pool) {
                f
            } else {
                // A frame from another worker's UMEM cannot be sent from ours: copy it once
                // (never happens when each worker owns its queue pair).
                match copy_into(self.pool, &f) {
                    Some(c) => c,
                    None => {
                        q.push_front(f);
                        break;
                    }
                }
            };
            let (addr, len) = f.into_desc();
            self.descs.push(XdpDesc {
                addr,
                len,
                options: 0,
            });
        }
        let n = w.insert(self.descs.iter().copied()) as usize;
        w.commit();
        drop(w);
        debug_assert_eq!(n, self.descs.len());
        if self.tx.needs_wakeup() {
            self.tx.wake();
        }
        n
    }

    fn alloc(&mut self) -> Option<XdpFrame> {
        let chunk = self.pool.take()?;
        Some(XdpFrame {
            pool: self.pool,
            chunk,
            start: XDP_HEADROOM as u16,
            len: 0,
        })
    }

    fn name(&self) -> &str {
        &self.name
    }
}

fn copy_into(pool: &'static UmemPool, f: &XdpFrame) -> Option<XdpFrame> {
    let chunk = pool.take()?;
    let mut c = XdpFrame {
        pool,
        chunk,
        start: XDP_HEADROOM as u16,
        len: 0,
    };
    if !c.append(f.len()) {
        return None;
    }
    c.data_mut().copy_from_slice(f.data());
    Some(c)
}

/// Reads one AF_XDP port's counters from any thread.
pub struct XdpStatsReader {
    fd: Option<OwnedFd>,
    fill_starved: Arc<AtomicU64>,
}

impl XdpStatsReader {
    /// The kernel's counters for the socket plus ours.
    pub fn read(&self) -> XdpPortStats {
        let mut out = XdpPortStats {
            fill_starved: self.fill_starved.load(Ordering::Relaxed),
            ..Default::default()
        };
        let Some(fd) = &self.fd else { return out };
        let mut s = libc_xdp_statistics::default();
        let mut len = core::mem::size_of::<libc_xdp_statistics>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `s`, a live #[repr(C)] struct of
        // that size; the fd is our own open duplicate of the socket.
        let r = unsafe {
            libc::getsockopt(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                SOL_XDP,
                XDP_STATISTICS,
                (&mut s as *mut libc_xdp_statistics).cast(),
                &mut len,
            )
        };
        if r == 0 {
            kernel_counters(&s, &mut out);
        }
        out
    }
}

/// The kernel's socket counters as ours. A frame that finds the fill ring empty in copy mode
/// is counted by the kernel twice, in `rx_dropped` (`xsk_buff_alloc` failed) and in
/// `rx_fill_ring_empty_descs` (the pool found no descriptor): adding the two counted every
/// such drop twice. `rx_ring_full` is a separate, disjoint cause of loss.
fn kernel_counters(s: &libc_xdp_statistics, out: &mut XdpPortStats) {
    out.rx_dropped = s.rx_dropped.saturating_add(s.rx_ring_full);
    out.fill_ring_empty = s.rx_fill_ring_empty_descs;
    out.rx_invalid_descs = s.rx_invalid_descs;
    out.tx_invalid_descs = s.tx_invalid_descs;
}

#[cfg(test)]
mod kernel_counter_tests {
    use super::*;

    #[test]
    fn a_fill_ring_drop_is_counted_once() {
        // 454 frames dropped for want of a fill buffer (copy mode): the kernel shows them in
        // both counters.
        let s = libc_xdp_statistics {
            rx_dropped: 454,
            rx_fill_ring_empty_descs: 454,
            ..Default::default()
        };
        let mut out = XdpPortStats::default();
        kernel_counters(&s, &mut out);
        assert_eq!(out.rx_dropped, 454);
        assert_eq!(out.fill_ring_empty, 454);
    }

    #[test]
    fn a_full_rx_ring_adds_to_the_drops() {
        let s = libc_xdp_statistics {
            rx_dropped: 3,
            rx_ring_full: 7,
            ..Default::default()
        };
        let mut out = XdpPortStats::default();
        kernel_counters(&s, &mut out);
        assert_eq!(out.rx_dropped, 10);
        assert_eq!(out.fill_ring_empty, 0);
    }
}

fn xerr(e: xdpilone::Errno, what: &str) -> io::Error {
    let os = io::Error::from_raw_os_error(e.get_raw().abs());
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

const SOL_XDP: libc::c_int = 283;
const XDP_STATISTICS: libc::c_int = 7;

/// `struct xdp_statistics` (linux/if_xdp.h, v2 layout).
#[repr(C)]
#[derive(Default)]
#[allow(non_camel_case_types)]
struct libc_xdp_statistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}
