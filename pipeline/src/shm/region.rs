//! The mapped file: its versioned header, its ring descriptors, creation and checked opening.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::ring::{Consumer, Producer, RingMem, CONTROL_LEN, RECORD_HEADER_LEN};
use super::ShmError;

/// First eight bytes of every region.
pub const MAGIC: [u8; 8] = *b"RGATESHM";
/// Version of the header, descriptor and ring layout below. Bumped on any change.
pub const LAYOUT_VERSION: u32 = 1;

/// Fixed part of the header; the descriptors follow.
const FIXED_LEN: usize = 64;
const DESC_LEN: usize = 32;
/// Rings start on this boundary (head and tail each get a pair of cache lines).
const RING_ALIGN: u64 = 128;
const MAX_RINGS: usize = 4096;
const MAX_SLOT_SIZE: u32 = 1 << 20;
const MAX_SLOT_COUNT: u32 = 1 << 24;
const MAX_TOTAL: u64 = 1 << 36;

mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const RING_COUNT: usize = 12;
    pub const TOTAL: usize = 16;
    pub const CREATED_NS: usize = 24;
    pub const PID: usize = 32;
    pub const STATE: usize = 36;
    pub const BOOT_ID: usize = 40;
    pub const HEADER_LEN: usize = 56;
}

/// `state` word: written last by the creator (Release), read first by an opener (Acquire).
const STATE_INIT: u32 = 0;
const STATE_READY: u32 = 1;
const STATE_CLOSED: u32 = 2;

/// Descriptor flag: the consumer zeroizes a record's bytes before handing its slots back.
pub const FLAG_ZEROIZE: u32 = 1;

/// What a ring carries; stored in its descriptor so both sides agree on the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RingKind {
    /// Control -> data plane, one per worker: encoded updates (key material: zeroized).
    Update = 1,
    /// Data plane -> control, one per worker: acknowledgements.
    Ack = 2,
    /// Data plane -> control: punted IKE datagrams.
    Punt = 3,
    /// Control -> data plane: IKE datagrams to send.
    Transmit = 4,
    /// Data plane -> control: events (unknown SPI, lifetimes, failures).
    Event = 5,
}

impl RingKind {
    fn from_u16(v: u16) -> Option<RingKind> {
        Some(match v {
            1 => RingKind::Update,
            2 => RingKind::Ack,
            3 => RingKind::Punt,
            4 => RingKind::Transmit,
            5 => RingKind::Event,
            _ => return None,
        })
    }
}

/// One ring as the creator asks for it and as the header describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSpec {
    pub kind: RingKind,
    /// Which worker (per-worker rings) or 0.
    pub index: u16,
    /// Bytes per slot: a multiple of 8, at least 16. A record takes `8 + len` bytes rounded
    /// up to whole slots.
    pub slot_size: u32,
    /// Slots in the ring: a power of two.
    pub slot_count: u32,
    /// Zeroize consumed records (rings that carry key material).
    pub zeroize: bool,
}

impl RingSpec {
    fn bytes(&self) -> u64 {
        CONTROL_LEN as u64 + u64::from(self.slot_size) * u64::from(self.slot_count)
    }

    fn check(&self) -> Result<(), &'static str> {
        if self.slot_size < 16 || self.slot_size % 8 != 0 || self.slot_size > MAX_SLOT_SIZE {
            return Err("slot size must be a multiple of 8 in 16..=1 MiB");
        }
        if !self.slot_count.is_power_of_two() || self.slot_count < 2 {
            return Err("slot count must be a power of two, at least 2");
        }
        if self.slot_count > MAX_SLOT_COUNT {
            return Err("slot count above 2^24");
        }
        Ok(())
    }
}

/// Who made a region and when: a restarted peer compares this with what it saw before to tell
/// a fresh region from a stale one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub creator_pid: u32,
    /// Nanoseconds since the Unix epoch at creation (the region's epoch).
    pub created_ns: u64,
    /// `/proc/sys/kernel/random/boot_id` of the creating boot (zeros if unreadable).
    pub boot_id: [u8; 16],
}

/// The mapping itself; unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access to it goes through the ring
// protocol (atomics for indices, exclusive slot ownership) or happens before it is shared.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out raw pointers, dereferenced under the protocol.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address, so nothing of ours is overlapped. The result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    fn state(&self) -> &AtomicU32 {
        // SAFETY: offset 36 lies in the mapping (at least FIXED_LEN bytes), is 4-aligned (the
        // mapping is page-aligned), and this word is only ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off::STATE).cast()) }
    }

    /// Copies `len` bytes at `at` out of the mapping (`at + len <= self.len` checked).
    fn read(&self, at: usize, len: usize) -> Option<Vec<u8>> {
        if at.checked_add(len)? > self.len {
            return None;
        }
        let mut out = vec![0u8; len];
        // SAFETY: the source range was checked against the mapping; `out` is a separate
        // allocation of `len` bytes.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.add(at), out.as_mut_ptr(), len) };
        Some(out)
    }

    /// Copies `bytes` into the mapping at `at` (creator only, before the region is READY).
    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(
            at + bytes.len() <= self.len,
            "header write out of the mapping"
        );
        // SAFETY: the destination range is inside the mapping (asserted) and nobody else
        // reads it before the READY state is published.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; every `RingMem` holds an `Arc<Region>`,
        // so no pointer into the mapping outlives it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapped shared-memory region: header checked, rings described. Endpoints are taken from
/// it (each end of each ring once per mapping) and keep it alive.
pub struct Region {
    map: Mapping,
    path: PathBuf,
    /// Set on the creator's handle: on drop it marks the region closed and removes the file
    /// (if the path still names this file).
    created: Option<(u64, u64)>,
    identity: Identity,
    rings: Vec<RingSpec>,
    offsets: Vec<u64>,
    /// Per ring: producer taken, consumer taken.
    taken: Vec<[AtomicBool; 2]>,
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn boot_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return out;
    };
    let hex: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = pair[0] << 4 | pair[1];
    }
    out
}

/// Whether `pid` has exited and waits to be reaped (state Z or X in /proc/PID/stat).
fn is_zombie(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name in parentheses may hold anything; the state follows the last ')'.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

impl Region {
    /// Creates the file (mode 0600, never an existing one), sizes it, maps it and writes the
    /// header and descriptors; the region is READY when this returns.
    pub fn create(path: &Path, rings: &[RingSpec]) -> Result<Arc<Region>, ShmError> {
        if rings.is_empty() || rings.len() > MAX_RINGS {
            return Err(ShmError::Layout("1..=4096 rings"));
        }
        for r in rings {
            r.check().map_err(ShmError::Layout)?;
        }
        let header_len = (FIXED_LEN + DESC_LEN * rings.len()) as u64;
        let mut at = header_len.next_multiple_of(RING_ALIGN);
        let mut offsets = Vec::with_capacity(rings.len());
        for r in rings {
            offsets.push(at);
            at = (at + r.bytes()).next_multiple_of(RING_ALIGN);
        }
        let total = at;
        if total > MAX_TOTAL {
            return Err(ShmError::Layout("region larger than 64 GiB"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            // O_EXCL (create_new) already refuses any existing name, a symlink included;
            // O_NOFOLLOW says so where it is read.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => ShmError::Exists(path.to_path_buf()),
                _ => io_err(path, "create")(e),
            })?;
        let meta = file.metadata().map_err(io_err(path, "stat"))?;
        // From here on a failure removes the file again.
        let cleanup = |e: ShmError| {
            let _ = std::fs::remove_file(path);
            e
        };
        file.set_len(total)
            .map_err(io_err(path, "truncate"))
            .map_err(cleanup)?;
        let len = usize::try_from(total)
            .map_err(|_| ShmError::Layout("region larger than the address space"))
            .map_err(cleanup)?;
        let map = Mapping::new(&file, len)
            .map_err(io_err(path, "mmap"))
            .map_err(cleanup)?;
        let identity = Identity {
            creator_pid: std::process::id(),
            created_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            boot_id: boot_id(),
        };
        // The file is fresh (all zeros, state INIT); write everything, then publish READY.
        let mut h = vec![0u8; header_len as usize];
        h[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
        h[off::VERSION..off::VERSION + 4].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        h[off::RING_COUNT..off::RING_COUNT + 4]
            .copy_from_slice(&(rings.len() as u32).to_le_bytes());
        h[off::TOTAL..off::TOTAL + 8].copy_from_slice(&total.to_le_bytes());
        h[off::CREATED_NS..off::CREATED_NS + 8].copy_from_slice(&identity.created_ns.to_le_bytes());
        h[off::PID..off::PID + 4].copy_from_slice(&identity.creator_pid.to_le_bytes());
        h[off::BOOT_ID..off::BOOT_ID + 16].copy_from_slice(&identity.boot_id);
        h[off::HEADER_LEN..off::HEADER_LEN + 4].copy_from_slice(&(header_len as u32).to_le_bytes());
        for (i, (r, o)) in rings.iter().zip(&offsets).enumerate() {
            let d = &mut h[FIXED_LEN + i * DESC_LEN..][..DESC_LEN];
            d[0..8].copy_from_slice(&o.to_le_bytes());
            d[8..12].copy_from_slice(&r.slot_size.to_le_bytes());
            d[12..16].copy_from_slice(&r.slot_count.to_le_bytes());
            d[16..18].copy_from_slice(&(r.kind as u16).to_le_bytes());
            d[18..20].copy_from_slice(&r.index.to_le_bytes());
            let flags = if r.zeroize { FLAG_ZEROIZE } else { 0 };
            d[20..24].copy_from_slice(&flags.to_le_bytes());
        }
        // The state word stays 0 (INIT) in `h`; it is published separately below.
        map.write(0, &h);
        map.state().store(STATE_READY, Ordering::Release);
        Ok(Arc::new(Region {
            map,
            path: path.to_path_buf(),
            created: Some((meta.dev(), meta.ino())),
            identity,
            rings: rings.to_vec(),
            offsets,
            taken: rings.iter().map(|_| Default::default()).collect(),
        }))
    }

    /// Opens a region another process created and checks every header field: magic, layout
    /// version, sizes, each descriptor (bounds, alignment, overlap, kind), the READY state and
    /// the boot id. The file must be ours and not accessible to group or others.
    pub fn open(path: &Path) -> Result<Arc<Region>, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let meta = file.metadata().map_err(io_err(path, "stat"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if meta.uid() != uid || meta.mode() & 0o077 != 0 || !meta.file_type().is_file() {
            return Err(ShmError::Permissions {
                mode: meta.mode() & 0o7777,
                owner: meta.uid(),
            });
        }
        let size = meta.len();
        if size < FIXED_LEN as u64 {
            return Err(ShmError::TooSmall(size));
        }
        if size > MAX_TOTAL {
            return Err(ShmError::Header("file larger than any region"));
        }
        let map = Mapping::new(&file, size as usize).map_err(io_err(path, "mmap"))?;
        match map.state().load(Ordering::Acquire) {
            STATE_READY => {}
            STATE_INIT => return Err(ShmError::NotReady),
            STATE_CLOSED => return Err(ShmError::Closed),
            _ => return Err(ShmError::Header("state word")),
        }
        let fixed = map.read(0, FIXED_LEN).ok_or(ShmError::TooSmall(size))?;
        if fixed[..8] != MAGIC {
            return Err(ShmError::Magic);
        }
        let version = u32_at(&fixed, off::VERSION);
        if version != LAYOUT_VERSION {
            return Err(ShmError::Version {
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let total = u64_at(&fixed, off::TOTAL);
        if total != size {
            return Err(ShmError::Size {
                header: total,
                file: size,
            });
        }
        let n = u32_at(&fixed, off::RING_COUNT) as usize;
        if n == 0 || n > MAX_RINGS {
            return Err(ShmError::Header("ring count"));
        }
        let header_len = u32_at(&fixed, off::HEADER_LEN) as usize;
        if header_len != FIXED_LEN + n * DESC_LEN {
            return Err(ShmError::Header("header length"));
        }
        let identity = Identity {
            creator_pid: u32_at(&fixed, off::PID),
            created_ns: u64_at(&fixed, off::CREATED_NS),
            boot_id: fixed[off::BOOT_ID..off::BOOT_ID + 16]
                .try_into()
                .unwrap_or_default(),
        };
        let ours = boot_id();
        if ours != [0; 16] && identity.boot_id != ours {
            return Err(ShmError::Stale("created during another boot"));
        }
        let descs = map
            .read(FIXED_LEN, n * DESC_LEN)
            .ok_or(ShmError::TooSmall(size))?;
        let mut rings = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(n);
        // Rings must lie in order after the header, aligned, without overlap, inside the file.
        let mut floor = header_len as u64;
        for (i, d) in descs.chunks_exact(DESC_LEN).enumerate() {
            let bad = |why| ShmError::Descriptor { ring: i, why };
            let offset = u64_at(d, 0);
            let kind = RingKind::from_u16(u16::from_le_bytes([d[16], d[17]]))
                .ok_or(bad("unknown ring kind"))?;
            let flags = u32_at(d, 20);
            if flags & !FLAG_ZEROIZE != 0 || u64_at(d, 24) != 0 {
                return Err(bad("unknown flags"));
            }
            let spec = RingSpec {
                kind,
                index: u16::from_le_bytes([d[18], d[19]]),
                slot_size: u32_at(d, 8),
                slot_count: u32_at(d, 12),
                zeroize: flags & FLAG_ZEROIZE != 0,
            };
            spec.check().map_err(bad)?;
            if offset % RING_ALIGN != 0 || offset < floor {
                return Err(bad("offset misaligned or overlapping"));
            }
            let end = offset
                .checked_add(spec.bytes())
                .ok_or(bad("ring end overflows"))?;
            if end > size {
                return Err(bad("ring extends past the end of the file"));
            }
            floor = end;
            rings.push(spec);
            offsets.push(offset);
        }
        Ok(Arc::new(Region {
            map,
            path: path.to_path_buf(),
            created: None,
            identity,
            rings,
            offsets,
            taken: (0..n).map(|_| Default::default()).collect(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn rings(&self) -> &[RingSpec] {
        &self.rings
    }

    /// True while the creator has not closed the region (it marks it closed when dropped).
    pub fn is_open(&self) -> bool {
        self.map.state().load(Ordering::Acquire) == STATE_READY
    }

    /// Whether the creating process still exists (a crashed creator never marks the region
    /// closed). A restarted peer treats a region whose creator is gone, or whose identity
    /// differs from the one it saw before, as stale.
    pub fn creator_alive(&self) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.identity.creator_pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists; nothing is delivered.
        let r = unsafe { libc::kill(pid, 0) };
        let exists = r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        // A dead process that its (new) parent has not reaped yet still answers signal 0.
        exists && !is_zombie(pid)
    }

    fn ring(self: &Arc<Self>, ring: usize) -> Result<RingMem, ShmError> {
        let spec = *self.rings.get(ring).ok_or(ShmError::NoSuchRing(ring))?;
        let offset = self.offsets.get(ring).ok_or(ShmError::NoSuchRing(ring))?;
        // Checked in create/open: offset + CONTROL_LEN + slots <= len, offset 128-aligned.
        let base = self.map.ptr.wrapping_add(*offset as usize);
        Ok(RingMem::new(base, spec, self.clone()))
    }

    /// The producer end of ring `ring` (once per mapping).
    pub fn producer(self: &Arc<Self>, ring: usize) -> Result<Producer, ShmError> {
        self.take(ring, 0)?;
        Ok(Producer::new(self.ring(ring)?))
    }

    /// The consumer end of ring `ring` (once per mapping).
    pub fn consumer(self: &Arc<Self>, ring: usize) -> Result<Consumer, ShmError> {
        self.take(ring, 1)?;
        Ok(Consumer::new(self.ring(ring)?))
    }

    fn take(&self, ring: usize, end: usize) -> Result<(), ShmError> {
        let flag = self
            .taken
            .get(ring)
            .and_then(|t| t.get(end))
            .ok_or(ShmError::NoSuchRing(ring))?;
        if flag.swap(true, Ordering::AcqRel) {
            return Err(ShmError::Taken {
                ring,
                end: if end == 0 { "producer" } else { "consumer" },
            });
        }
        Ok(())
    }

    /// Largest record a ring of this spec can carry.
    pub fn max_record_len(spec: &RingSpec) -> usize {
        // The record header's length field is a u32.
        (spec.slot_size as usize * spec.slot_count as usize - RECORD_HEADER_LEN)
            .min(u32::MAX as usize)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let Some((dev, ino)) = self.created else {
            return;
        };
        self.map.state().store(STATE_CLOSED, Ordering::Release);
        // Remove the name only if it is still ours (a restarted creator may have replaced it).
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == dev && m.ino() == ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
