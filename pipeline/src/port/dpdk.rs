//! The DPDK port: one rx/tx queue pair of a DPDK ethdev (a NIC on bare metal, a vdev such as
//! `net_af_packet`, `net_af_xdp`, `net_pcap`, `net_tap`, `net_null` in test mode), driving the
//! same worker code as every other port.
//!
//! Frames are mbufs, handed from rx to the worker to tx without a copy. The mbuf is opaque to
//! the bindings; the handful of fields a frame touches (data offset and lengths) are read and
//! written in place at offsets the C shim reports, checked once against the layout this code
//! was written for (DPDK 22.11) when the EAL starts. Single-segment mbufs only: a chained one
//! (larger than the 2 KiB data room) is dropped at rx and counted.
//!
//! Mempools live as long as the process: an mbuf may be freed after its port is closed (a
//! worker's queues drop after its ports), and freeing a pool under it would be a use after
//! free. The EAL can be initialised once per process.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dpdk_sys as sys;

use super::{Frame, Port};

const _: () = assert!(
    sys::AVAILABLE,
    "the `dpdk` feature needs DPDK >= 22.11 at build time: apt-get install libdpdk-dev pkg-config"
);

/// What can go wrong with DPDK, with DPDK's own words for it.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("the DPDK EAL was already initialised in this process")]
    AlreadyInitialised,
    #[error("rte_eal_init failed: {0}")]
    Eal(String),
    #[error("an EAL argument contains a NUL byte: {0:?}")]
    BadArgument(String),
    #[error(
        "this DPDK's rte_mbuf layout differs from the one roamgate was written for (22.11): {0:?}"
    )]
    MbufLayout([u32; 7]),
    #[error("no DPDK port named {0:?} (check the --vdev / -a EAL arguments)")]
    NoSuchPort(String),
    #[error("creating the mbuf pool for {port}: {why}")]
    Pool { port: String, why: String },
    #[error("setting up {port}: {why}")]
    Setup { port: String, why: String },
    #[error("{port}: queue {queue} is out of range or already taken")]
    Queue { port: String, queue: u16 },
}

fn strerror(code: c_int) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // for any input, valid until the next call on this thread; it is copied at once.
    let p = unsafe { sys::rte_strerror(code.abs()) };
    if p.is_null() {
        return format!("error {code}");
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// rte_mbuf field offsets this module uses: buf_addr, data_off, nb_segs, pkt_len, data_len,
/// buf_len, and the struct size (DPDK 22.11, x86_64).
const LAYOUT: [u32; 7] = [0, 16, 20, 36, 40, 54, 128];
const OFF_BUF_ADDR: usize = LAYOUT[0] as usize;
const OFF_DATA_OFF: usize = LAYOUT[1] as usize;
const OFF_NB_SEGS: usize = LAYOUT[2] as usize;
const OFF_PKT_LEN: usize = LAYOUT[3] as usize;
const OFF_DATA_LEN: usize = LAYOUT[4] as usize;
const OFF_BUF_LEN: usize = LAYOUT[5] as usize;

static EAL_UP: AtomicBool = AtomicBool::new(false);

/// The initialised EAL. Keep it alive while ports are in use.
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (without a program name; one is prepended). Once per
    /// process.
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if EAL_UP.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::AlreadyInitialised);
        }
        let mut layout = [0u32; 7];
        // SAFETY: the shim writes exactly 7 u32s into the array it is given.
        unsafe { sys::rg_mbuf_layout(layout.as_mut_ptr()) };
        if layout != LAYOUT {
            return Err(DpdkError::MbufLayout(layout));
        }
        let mut owned =
            vec![CString::new("roamgate").map_err(|_| DpdkError::BadArgument("roamgate".into()))?];
        for a in args {
            owned.push(CString::new(a.as_str()).map_err(|_| DpdkError::BadArgument(a.clone()))?);
        }
        // rte_eal_init may permute argv; give it a private array of pointers into `owned`,
        // which outlives the call (the EAL copies what it keeps).
        let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        // SAFETY: argc matches argv's length; every pointer is a valid NUL-terminated string
        // that lives across the call. EAL_UP guarantees a single call per process.
        let r = unsafe { sys::rte_eal_init(argv.len() as c_int, argv.as_mut_ptr()) };
        if r < 0 {
            // SAFETY: plain call of the shim's rte_errno reader.
            let e = unsafe { sys::rg_errno() };
            return Err(DpdkError::Eal(strerror(e)));
        }
        Ok(Eal { _private: () })
    }

    /// The EAL's runtime directory (`/var/run/dpdk/<file-prefix>` as root), which the EAL
    /// creates even with `--no-shconf`; dropping the `Eal` removes it when it is empty.
    pub fn runtime_dir(&self) -> Option<std::path::PathBuf> {
        // SAFETY: plain query after a successful rte_eal_init; the string is the EAL's own,
        // NUL-terminated, and copied before anything can free it.
        let dir = unsafe {
            let p = sys::rte_eal_get_runtime_dir();
            (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
        }?;
        (!dir.is_empty()).then(|| dir.into())
    }

    /// Ports the EAL found (PCI devices and vdevs).
    pub fn port_count(&self) -> u16 {
        // SAFETY: plain query after a successful rte_eal_init.
        unsafe { sys::rte_eth_dev_count_avail() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // The EAL creates its runtime directory (/var/run/dpdk/<file-prefix>) even with
        // --no-shconf and leaves it behind; read its path before the cleanup frees it.
        let runtime_dir = self.runtime_dir();
        // SAFETY: called once, after every device (which borrows nothing from the EAL but is
        // dropped first by its owner) has been stopped and closed.
        unsafe { sys::rte_eal_cleanup() };
        if let Some(dir) = runtime_dir {
            // What is left is this process's telemetry socket (the EAL unlinks it only at
            // exit) and nothing else unless another process shares the prefix: then leave
            // the directory alone.
            let entries: Vec<_> = std::fs::read_dir(&dir)
                .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            let ours = |p: &std::path::PathBuf| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dpdk_telemetry"))
            };
            if entries.iter().all(ours) {
                for p in &entries {
                    let _ = std::fs::remove_file(p);
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

/// A configured and started ethdev with `queues` rx/tx queue pairs, one per worker.
pub struct DpdkDevice {
    name: String,
    port: u16,
    pool: NonNull<sys::rte_mempool>,
    queues: u16,
    taken: Vec<bool>,
    mac: [u8; 6],
    mtu: u16,
    multi_seg_dropped: Arc<AtomicU64>,
}

// SAFETY: the mempool is thread-safe (DPDK mempools are multi-producer/multi-consumer by
// default); the port id is a plain number. Queues are handed out once each.
unsafe impl Send for DpdkDevice {}

impl DpdkDevice {
    /// Finds the port called `name` (a vdev name like `net_af_packet0` or a PCI address),
    /// creates its mbuf pool (`mbufs` buffers, 0 = enough for its rings) and starts it with
    /// `queues` queue pairs of `desc` descriptors.
    pub fn open(
        _eal: &Eal,
        name: &str,
        queues: u16,
        desc: u16,
        mbufs: u32,
    ) -> Result<Self, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NoSuchPort(name.into()))?;
        let mut port = 0u16;
        // SAFETY: `cname` is NUL-terminated and lives across the call; `port` is a valid out
        // pointer.
        let r = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut port) };
        if r != 0 {
            return Err(DpdkError::NoSuchPort(name.into()));
        }
        let queues = queues.max(1);
        // Rings full on both sides plus what a worker may hold in its queues and bursts.
        let need = u32::from(queues) * (2 * u32::from(desc) + 1024);
        let n = if mbufs == 0 { need.max(8191) } else { mbufs };
        let pool_name = CString::new(format!("rg_pool_{port}"))
            .map_err(|_| DpdkError::NoSuchPort(name.into()))?;
        // SAFETY: valid NUL-terminated name; sizes are plain numbers; the socket id comes from
        // DPDK itself. The result is checked for NULL.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                n,
                256,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                sys::rte_eth_dev_socket_id(port),
            )
        };
        let Some(pool) = NonNull::new(pool) else {
            // SAFETY: plain call of the shim's rte_errno reader.
            let e = unsafe { sys::rg_errno() };
            return Err(DpdkError::Pool {
                port: name.into(),
                why: strerror(e),
            });
        };
        // SAFETY: the port exists (looked up above), the pool is a live mbuf pool that is
        // never freed, and the shim only configures and starts the port.
        let r = unsafe { sys::rg_port_setup(port, queues, desc, pool.as_ptr()) };
        if r != 0 {
            return Err(DpdkError::Setup {
                port: name.into(),
                why: strerror(r),
            });
        }
        let mut mac = [0u8; 6];
        // SAFETY: the shim writes 6 bytes into `mac`.
        let r = unsafe { sys::rg_port_mac(port, mac.as_mut_ptr()) };
        if r != 0 {
            return Err(DpdkError::Setup {
                port: name.into(),
                why: format!("reading the MAC address: {}", strerror(r)),
            });
        }
        let mut mtu = 1500u16;
        // SAFETY: `mtu` is a valid out pointer; on failure it keeps its default.
        unsafe { sys::rte_eth_dev_get_mtu(port, &mut mtu) };
        Ok(DpdkDevice {
            name: name.to_string(),
            port,
            pool,
            queues,
            taken: vec![false; usize::from(queues)],
            mac,
            mtu,
            multi_seg_dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Takes rx/tx queue pair `queue` for one worker (each queue once).
    pub fn queue(&mut self, queue: u16) -> Result<DpdkPort, DpdkError> {
        match self.taken.get_mut(usize::from(queue)) {
            Some(t) if !*t => *t = true,
            _ => {
                return Err(DpdkError::Queue {
                    port: self.name.clone(),
                    queue,
                })
            }
        }
        Ok(DpdkPort {
            name: format!("dpdk:{}/{queue}", self.name),
            port: self.port,
            queue,
            pool: self.pool,
            rx: Vec::with_capacity(64),
            tx: Vec::with_capacity(64),
            multi_seg_dropped: self.multi_seg_dropped.clone(),
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    /// The port's counters: (rx packets, tx packets, rx missed, rx errors, tx errors, rx
    /// without mbuf) as DPDK reports them, plus chained mbufs roamgate dropped.
    pub fn stats(&self) -> DpdkStats {
        let mut s = [0u64; 6];
        let [a, b, c, d, e, f] = &mut s;
        // SAFETY: six valid out pointers; the port is started.
        let r = unsafe { sys::rg_port_stats(self.port, a, b, c, d, e, f) };
        let mut out = DpdkStats {
            multi_seg_dropped: self.multi_seg_dropped.load(Ordering::Relaxed),
            ..Default::default()
        };
        if r == 0 {
            out.rx_packets = s[0];
            out.tx_packets = s[1];
            out.rx_missed = s[2];
            out.rx_errors = s[3];
            out.tx_errors = s[4];
            out.rx_no_mbuf = s[5];
        }
        out
    }

    /// Steers inbound ESP to the queue of the worker that owns its SPI (the worker bits at
    /// the top of the SPI, as [`crate::handoff::spi_owner`]) with rte_flow rules, where the
    /// port offers them: `Ok(rules)`, or why not (then no rule is left in place and the
    /// software hand-off carries what reaches another worker). UDP-encapsulated ESP (NAT-T)
    /// is not matched: RSS spreads it and the hand-off sorts it.
    pub fn steer_esp(&self) -> Result<usize, String> {
        let bits = crate::handoff::worker_bits(self.queues);
        if bits == 0 {
            return Ok(0);
        }
        let mut why = [0u8; 256];
        // SAFETY: the port is started; `why` is a writable buffer of the length passed, which
        // the shim fills with a NUL-terminated message (snprintf) on failure.
        let r = unsafe {
            sys::rg_flow_steer_esp(
                self.port,
                self.queues,
                bits,
                why.as_mut_ptr().cast(),
                why.len(),
            )
        };
        if r >= 0 {
            return Ok(usize::try_from(r).unwrap_or(0));
        }
        let end = why.iter().position(|b| *b == 0).unwrap_or(why.len());
        Err(String::from_utf8_lossy(why.get(..end).unwrap_or_default()).into_owned())
    }

    /// A reader of the counters for another thread.
    pub fn stats_reader(&self) -> DpdkStatsReader {
        DpdkStatsReader {
            port: self.port,
            multi_seg_dropped: self.multi_seg_dropped.clone(),
        }
    }
}

impl Drop for DpdkDevice {
    fn drop(&mut self) {
        // SAFETY: the port was started by `open`; stopping and closing it is valid once its
        // workers are gone (the owner drops devices after joining them). The pool stays: mbufs
        // may still be alive (module doc).
        unsafe {
            sys::rte_eth_dev_stop(self.port);
            sys::rte_eth_dev_close(self.port);
        }
    }
}

/// A port's counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct DpdkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_no_mbuf: u64,
    pub multi_seg_dropped: u64,
}

/// Reads a port's counters from any thread.
#[derive(Clone)]
pub struct DpdkStatsReader {
    port: u16,
    multi_seg_dropped: Arc<AtomicU64>,
}

impl DpdkStatsReader {
    pub fn read(&self) -> DpdkStats {
        let mut s = [0u64; 6];
        let [a, b, c, d, e, f] = &mut s;
        // SAFETY: six valid out pointers; rte_eth_stats_get is safe to call concurrently with
        // the data path (it reads the driver's counters).
        let r = unsafe { sys::rg_port_stats(self.port, a, b, c, d, e, f) };
        DpdkStats {
            rx_packets: if r == 0 { s[0] } else { 0 },
            tx_packets: if r == 0 { s[1] } else { 0 },
            rx_missed: if r == 0 { s[2] } else { 0 },
            rx_errors: if r == 0 { s[3] } else { 0 },
            tx_errors: if r == 0 { s[4] } else { 0 },
            rx_no_mbuf: if r == 0 { s[5] } else { 0 },
            multi_seg_dropped: self.multi_seg_dropped.load(Ordering::Relaxed),
        }
    }
}

/// An mbuf owned by the worker.
pub struct DpdkFrame {
    m: NonNull<u8>,
}

// SAFETY: an mbuf belongs to whoever holds its pointer; DPDK allows freeing an mbuf from any
// thread (its pool is multi-producer), and this frame is the only holder.
unsafe impl Send for DpdkFrame {}

impl DpdkFrame {
    #[inline]
    fn get16(&self, off: usize) -> u16 {
        // SAFETY: `off` is one of the checked field offsets inside the 128-byte rte_mbuf this
        // frame owns; the field may be unaligned only in theory, so read_unaligned.
        unsafe { self.m.as_ptr().add(off).cast::<u16>().read_unaligned() }
    }

    #[inline]
    fn set16(&mut self, off: usize, v: u16) {
        // SAFETY: as in `get16`; `&mut self` means no one else reads the mbuf meanwhile.
        unsafe { self.m.as_ptr().add(off).cast::<u16>().write_unaligned(v) }
    }

    #[inline]
    fn add_pkt_len(&mut self, delta: i32) {
        // SAFETY: as in `set16`, for the u32 pkt_len field.
        unsafe {
            let p = self.m.as_ptr().add(OFF_PKT_LEN).cast::<u32>();
            p.write_unaligned(p.read_unaligned().wrapping_add_signed(delta));
        }
    }

    #[inline]
    fn data_ptr(&self) -> *mut u8 {
        // SAFETY: buf_addr is the mbuf's buffer; data_off (< buf_len) stays inside it.
        unsafe {
            let base = self
                .m
                .as_ptr()
                .add(OFF_BUF_ADDR)
                .cast::<*mut u8>()
                .read_unaligned();
            base.add(usize::from(self.get16(OFF_DATA_OFF)))
        }
    }

    fn as_mbuf(&self) -> *mut sys::rte_mbuf {
        self.m.as_ptr().cast()
    }

    fn into_mbuf(self) -> *mut sys::rte_mbuf {
        let m = self.as_mbuf();
        core::mem::forget(self);
        m
    }
}

impl Drop for DpdkFrame {
    fn drop(&mut self) {
        // SAFETY: this frame owns the mbuf; it is freed exactly once, here.
        unsafe { sys::rg_pktmbuf_free(self.as_mbuf()) }
    }
}

impl Frame for DpdkFrame {
    #[inline]
    fn data(&self) -> &[u8] {
        // SAFETY: [data_off, data_off + data_len) lies inside the mbuf's buffer (single
        // segment, maintained by every setter below) and this frame owns it.
        unsafe {
            core::slice::from_raw_parts(self.data_ptr(), usize::from(self.get16(OFF_DATA_LEN)))
        }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`; `&mut self` makes this the only view.
        unsafe {
            core::slice::from_raw_parts_mut(self.data_ptr(), usize::from(self.get16(OFF_DATA_LEN)))
        }
    }

    #[inline]
    fn headroom(&self) -> usize {
        usize::from(self.get16(OFF_DATA_OFF))
    }

    #[inline]
    fn tailroom(&self) -> usize {
        usize::from(self.get16(OFF_BUF_LEN))
            .saturating_sub(usize::from(self.get16(OFF_DATA_OFF)))
            .saturating_sub(usize::from(self.get16(OFF_DATA_LEN)))
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.headroom() {
            return false;
        }
        let n16 = n as u16;
        self.set16(OFF_DATA_OFF, self.get16(OFF_DATA_OFF) - n16);
        self.set16(OFF_DATA_LEN, self.get16(OFF_DATA_LEN) + n16);
        self.add_pkt_len(n as i32);
        true
    }

    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > usize::from(self.get16(OFF_DATA_LEN)) {
            return false;
        }
        let n16 = n as u16;
        self.set16(OFF_DATA_OFF, self.get16(OFF_DATA_OFF) + n16);
        self.set16(OFF_DATA_LEN, self.get16(OFF_DATA_LEN) - n16);
        self.add_pkt_len(-(n as i32));
        true
    }

    #[inline]
    fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.set16(OFF_DATA_LEN, self.get16(OFF_DATA_LEN) + n as u16);
        self.add_pkt_len(n as i32);
        true
    }

    #[inline]
    fn truncate(&mut self, len: usize) {
        let cur = usize::from(self.get16(OFF_DATA_LEN));
        if len < cur {
            self.set16(OFF_DATA_LEN, len as u16);
            self.add_pkt_len(-((cur - len) as i32));
        }
    }
}

/// The polling thread's lcore id. DPDK keeps mempool caches per lcore; a thread that is not
/// an EAL lcore (a roamgate worker is a plain Rust thread) gets every mbuf from the pool's
/// shared ring and hands every freed one back to it, cycling through the whole pool, so each
/// new mbuf is cold in the cache (at 1420 B the driver's copy into it then misses on every
/// line). The first poll on a thread registers it (`rte_thread_register`); the thread
/// releases the id when it ends.
mod lcore {
    use std::cell::Cell;

    use super::sys;

    struct Registered;

    impl Drop for Registered {
        fn drop(&mut self) {
            // SAFETY: runs on the thread that registered, as it exits (thread-local drop).
            unsafe { sys::rg_thread_unregister() };
        }
    }

    thread_local! {
        static TRIED: Cell<bool> = const { Cell::new(false) };
        static HELD: std::cell::RefCell<Option<Registered>> = const { std::cell::RefCell::new(None) };
    }

    /// Registers the calling thread once (a failure, e.g. no free lcore id, leaves it
    /// working without a cache, as before).
    #[inline]
    pub(super) fn ensure() {
        if TRIED.with(Cell::get) {
            return;
        }
        TRIED.with(|t| t.set(true));
        // SAFETY: the EAL is up (a port exists only after Eal::init); the shim registers the
        // calling thread unless it already has an lcore id (then it returns 1 and the EAL's
        // own thread keeps its id).
        if unsafe { sys::rg_thread_register() } == 0 {
            HELD.with(|h| *h.borrow_mut() = Some(Registered));
        }
    }
}

/// One rx/tx queue pair of a device, owned by one worker.
pub struct DpdkPort {
    name: String,
    port: u16,
    queue: u16,
    pool: NonNull<sys::rte_mempool>,
    rx: Vec<*mut sys::rte_mbuf>,
    tx: Vec<*mut sys::rte_mbuf>,
    multi_seg_dropped: Arc<AtomicU64>,
}

// SAFETY: a queue pair is used by exactly one thread at a time (the worker that owns this
// port); the pool pointer is to a thread-safe mempool.
unsafe impl Send for DpdkPort {}

impl Port for DpdkPort {
    type Frame = DpdkFrame;

    fn rx_burst(&mut self, out: &mut Vec<DpdkFrame>, max: usize) -> usize {
        lcore::ensure();
        let max = max.min(self.rx.capacity()).min(u16::MAX as usize);
        self.rx.clear();
        // SAFETY: `rx` has capacity for `max` pointers and the driver writes at most `max`;
        // the queue belongs to this port alone.
        let n =
            unsafe { sys::rg_rx_burst(self.port, self.queue, self.rx.as_mut_ptr(), max as u16) };
        // SAFETY: the driver initialised the first `n` entries.
        unsafe { self.rx.set_len(usize::from(n)) };
        let mut taken = 0;
        for &m in &self.rx {
            let Some(nn) = NonNull::new(m.cast::<u8>()) else {
                continue;
            };
            let f = DpdkFrame { m: nn };
            // SAFETY: reading nb_segs of an mbuf we now own.
            let segs = unsafe { nn.as_ptr().add(OFF_NB_SEGS).cast::<u16>().read_unaligned() };
            if segs != 1 {
                self.multi_seg_dropped.fetch_add(1, Ordering::Relaxed);
                drop(f);
                continue;
            }
            out.push(f);
            taken += 1;
        }
        taken
    }

    fn tx_burst(&mut self, q: &mut VecDeque<DpdkFrame>) -> usize {
        if q.is_empty() {
            return 0;
        }
        let n = q.len().min(self.tx.capacity()).min(u16::MAX as usize);
        self.tx.clear();
        for f in q.iter().take(n) {
            self.tx.push(f.as_mbuf());
        }
        // SAFETY: `tx` holds `n` valid mbufs owned by the frames still in `q`; the driver
        // takes ownership of the first `sent` of them.
        let sent =
            unsafe { sys::rg_tx_burst(self.port, self.queue, self.tx.as_mut_ptr(), n as u16) };
        for _ in 0..sent {
            if let Some(f) = q.pop_front() {
                // The driver owns (and will free) this mbuf now.
                let _ = f.into_mbuf();
            }
        }
        usize::from(sent)
    }

    fn alloc(&mut self) -> Option<DpdkFrame> {
        // SAFETY: the pool is a live mbuf pool; the result is checked for NULL.
        let m = unsafe { sys::rg_pktmbuf_alloc(self.pool.as_ptr()) };
        NonNull::new(m.cast::<u8>()).map(|m| DpdkFrame { m })
    }

    fn name(&self) -> &str {
        &self.name
    }
}
