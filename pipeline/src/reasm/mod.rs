//! Reassembly of outer IPv4 (RFC 791, RFC 815) and IPv6 (RFC 8200 4.5) fragments, sans-IO.
//!
//! This module owns the datagrams being reassembled: their fragments' data in buffers it
//! allocates and recycles, the index by (source, destination, [protocol,] identification), the
//! per-source and total limits, the timers (on the caller's clock: `now` is monotonic
//! nanoseconds, passed in, never read here) and the counters of every fate a fragment can
//! have. A completed datagram comes back as one contiguous IP packet in a buffer this module
//! owns, valid until the next call; the caller parses it as an ordinary packet.
//!
//! What it must never do: panic on any bytes; hold more than [`ReasmConfig::max_bytes`] of
//! buffers or more than [`ReasmConfig::max_datagrams`] datagrams; let one source hold more than
//! [`ReasmConfig::max_per_source`] datagrams; reassemble a datagram whose fragments overlap;
//! look at a packet that is not a fragment (the caller's parser already knows, and the hot
//! path of unfragmented packets never reaches this module); send anything.
//!
//! # Rules
//!
//! * **Overlap** (RFC 5722, in RFC 8200 4.5): a fragment that overlaps one already held
//!   discards the whole datagram, and every later fragment of it is silently discarded for
//!   one timeout ([`ReasmDrop::Discarded`]). IPv4 is treated the same way. RFC 791 lets a
//!   receiver overwrite overlapping data, but which copy wins is how IDS evasion and the
//!   "teardrop" family worked; Linux has discarded overlapping IPv4 datagrams too since 4.19
//!   (`ip_frag_queue`, "ip: discard IPv4 datagrams with overlapping segments"), while
//!   OpenBSD's pf discards them for IPv6 and trims them for IPv4 (`pf_fillup_fragment`). An
//!   exact duplicate (inside one held fragment, with the same bytes) is only dropped
//!   ([`ReasmDrop::Duplicate`]), as RFC 8200 allows and Linux does; the same range with other
//!   bytes is an overlap.
//! * **Lengths**: a fragment with More Fragments set must carry a non-zero multiple of 8 bytes;
//!   an empty fragment is refused ([`ReasmDrop::BadLength`], the datagram stays). A datagram
//!   larger than `max_v4_len` (total length) or `max_v6_payload_len` (payload length, no
//!   jumbograms) is discarded as soon as a fragment reaches past it ([`ReasmDrop::TooLarge`]).
//!   Two different ends, or data past the end the last fragment set, discard the datagram
//!   ([`ReasmDrop::InconsistentEnd`]), and so do more than `max_fragments` fragments
//!   ([`ReasmDrop::TooManyFragments`]). A discarded datagram's later fragments are dropped
//!   for one timeout, as after an overlap.
//! * **Tiny first fragments**: the offset-0 fragment must hold the whole header chain up to
//!   and including the upper-layer header (RFC 7112 for IPv6, RFC 1858 3.1 for IPv4): 8 bytes
//!   for ESP (SPI and sequence number), UDP and ICMP, 20 for TCP; for IPv6 also every
//!   extension header after the Fragment header. Such a fragment is refused
//!   ([`ReasmDrop::TinyFirstFragment`]); its datagram cannot complete and times out. A
//!   Hop-by-Hop or second Fragment header after the Fragment header is malformed.
//! * **Atomic fragments** (IPv6 offset 0, M clear) are returned at once without their Fragment
//!   header, apart from any datagram with the same identification (RFC 6946).
//! * **ECN** (RFC 3168 5.3): CE on any fragment sets CE on the datagram; Not-ECT mixed with
//!   ECT or CE discards it ([`ReasmDrop::EcnMismatch`]), as Linux's `ip_frag_ecn_table` does.
//! * **Timeout**: a datagram not complete `timeout_ns` after its first fragment arrived is
//!   abandoned ([`ReasmDrop::Timeout`]). The default, 15 s, is RFC 791's recommended initial
//!   timer and within RFC 8200's 60 s bound: an outer datagram's fragments leave its sender
//!   back to back, so a datagram that has waited seconds is lost, and every second of waiting
//!   is memory an attacker's incomplete fragments pin. No ICMP "reassembly time exceeded" is
//!   sent (RFC 792 and RFC 8200 say "should"): the senders are IPsec peers, and ESP and IKE
//!   recover from loss on their own.
//! * **Limits**: a new datagram from a source that already has `max_per_source` (IPv4: per
//!   address; IPv6: per /64, which one host controls) pushes out that source's oldest
//!   ([`ReasmDrop::SourceLimit`]); a full slot table or a full memory budget pushes out the
//!   oldest incomplete datagram of anyone ([`ReasmDrop::Evicted`]). A datagram thus survives
//!   unless `max_datagrams` others start between its first and last fragment.
//!
//! # Costs
//!
//! Each fragment's data is copied once, to its place in the datagram's buffer, behind room
//! for the headers; completion writes the header in front of it and hands out the slice, so a
//! two-fragment datagram costs one copy of its bytes. Buffers are recycled (a completed or
//! abandoned datagram's buffer goes to a spare pool), the slot table, the fragment lists and
//! the indexes are allocated up front, so a fragment allocates only when a buffer must grow
//! (a datagram larger than any its buffer held before). Memory is the buffers' capacity
//! ([`Reassembler::memory_bytes`], bounded by `max_bytes`) plus the fixed tables
//! ([`Reassembler::table_bytes`]).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::fmt;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;

use crate::wire::{ipv4, ipv6};

mod fragment;
mod slots;
#[cfg(test)]
mod tests;

use fragment::{ecn_bit, parse, Fragment, Key, SourceKey, ECN_CE, ECN_NOT_ECT};
use slots::{push_back, unlink, List, Piece, Slot, SourceEntry, State, Thread, NIL};

const SEC: u64 = 1_000_000_000;

/// Room in front of an IPv4 datagram's data: the longest header (options included).
const V4_ROOM: usize = ipv4::MAX_HEADER_LEN;
/// Room in front of an IPv6 datagram's data: the fixed header and the unfragmentable
/// extension headers. An offset-0 fragment with more than this is refused
/// ([`ReasmDrop::HeadersTooLong`]).
pub const V6_MAX_UNFRAGMENTABLE: usize = 256;
/// The smallest buffer handed out, and the initial guess doubles the first fragment's need:
/// a full-size first fragment's datagram then fits without growing.
const MIN_BUFFER: usize = 2048;

macro_rules! drops {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $err:literal; )*) => {
        /// Why a fragment (and sometimes its whole datagram) went without being reassembled.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasmDrop { $( $(#[$doc])* $variant, )* }

        impl ReasmDrop {
            pub const ALL: &'static [ReasmDrop] = &[$(ReasmDrop::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's stable name (what the worker's drop reason is called).
            pub const fn name(self) -> &'static str {
                match self { $(ReasmDrop::$variant => $name,)* }
            }

            /// False for what a healthy network also produces (duplicates).
            pub const fn is_error(self) -> bool {
                match self { $(ReasmDrop::$variant => $err,)* }
            }
        }
    };
}

drops! {
    /// The IP header fails its checks (length, version, IPv4 checksum, IPv6 header chain).
    Malformed => "reasm_malformed", true;
    /// More Fragments set and a length that is not a multiple of 8, or an empty fragment.
    BadLength => "reasm_bad_length", true;
    /// The datagram would be larger than the configured maximum (or than the memory budget).
    TooLarge => "reasm_too_large", true;
    /// IPv6 unfragmentable part longer than [`V6_MAX_UNFRAGMENTABLE`].
    HeadersTooLong => "reasm_headers_too_long", true;
    /// The offset-0 fragment does not hold the whole header chain (RFC 1858, RFC 7112).
    TinyFirstFragment => "reasm_tiny_first_fragment", true;
    /// Overlaps a fragment already held (RFC 5722): the datagram is discarded.
    Overlap => "reasm_overlap", true;
    /// An exact copy of data already held: this fragment only is dropped.
    Duplicate => "reasm_duplicate", false;
    /// Two last fragments with different ends, or data past the end.
    InconsistentEnd => "reasm_inconsistent_end", true;
    /// More than `max_fragments` fragments in one datagram.
    TooManyFragments => "reasm_too_many_fragments", true;
    /// Not-ECT fragments mixed with ECN-capable ones (RFC 3168 5.3).
    EcnMismatch => "reasm_ecn_mismatch", true;
    /// A fragment of a datagram discarded earlier (RFC 5722: silently, for one timeout).
    Discarded => "reasm_discarded", true;
    /// Not complete within the timeout.
    Timeout => "reasm_timeout", true;
    /// Pushed out by a newer datagram from the same source.
    SourceLimit => "reasm_source_limit", true;
    /// Pushed out, oldest first, by the total datagram or memory limit.
    Evicted => "reasm_evicted", true;
}

impl fmt::Display for ReasmDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The limits of a [`Reassembler`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasmConfig {
    /// A datagram not complete this long after its first fragment is abandoned. At most 60 s
    /// (RFC 8200).
    pub timeout_ns: u64,
    /// Datagrams in flight (incomplete, or discarded and still remembered), in total.
    pub max_datagrams: usize,
    /// Incomplete datagrams in flight per source (IPv4 address; IPv6 /64).
    pub max_per_source: usize,
    /// Bytes of buffers, in total (spare buffers included).
    pub max_bytes: usize,
    /// Fragments per datagram.
    pub max_fragments: usize,
    /// Largest reassembled IPv4 datagram (total length), at most 65535.
    pub max_v4_len: usize,
    /// Largest reassembled IPv6 payload length, at most 65535 (no jumbograms).
    pub max_v6_payload_len: usize,
}

impl Default for ReasmConfig {
    fn default() -> Self {
        ReasmConfig {
            timeout_ns: 15 * SEC,
            max_datagrams: 1024,
            max_per_source: 64,
            // What Linux's ipfrag_high_thresh defaults to.
            max_bytes: 4 << 20,
            max_fragments: 64,
            max_v4_len: 65535,
            max_v6_payload_len: 65535,
        }
    }
}

/// A limit that cannot work, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl ReasmConfig {
    /// The largest buffer one datagram can need.
    fn largest_buffer(&self) -> usize {
        let v4 = V4_ROOM.saturating_add(self.max_v4_len);
        let v6 = V6_MAX_UNFRAGMENTABLE.saturating_add(self.max_v6_payload_len);
        v4.max(v6)
    }

    /// Checks the limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: String| Err(ConfigError { field, problem });
        if self.timeout_ns == 0 || self.timeout_ns > 60 * SEC {
            return err(
                "timeout_ns",
                "must be more than 0 and at most 60 s (RFC 8200)".into(),
            );
        }
        if self.max_datagrams == 0 || self.max_datagrams > 1 << 20 {
            return err("max_datagrams", "must be 1 to 1048576".into());
        }
        if self.max_per_source == 0 {
            return err("max_per_source", "must be at least 1".into());
        }
        if !(2..=8192).contains(&self.max_fragments) {
            return err("max_fragments", "must be 2 to 8192".into());
        }
        if !(ipv4::MIN_MTU..=65535).contains(&self.max_v4_len) {
            return err(
                "max_v4_len",
                "must be 576 (what every IPv4 host accepts) to 65535".into(),
            );
        }
        // RFC 8200 5: every node reassembles at least 1500-byte packets.
        if !(1460..=65535).contains(&self.max_v6_payload_len) {
            return err("max_v6_payload_len", "must be 1460 to 65535".into());
        }
        let need = self.largest_buffer();
        if self.max_bytes < need {
            return err(
                "max_bytes",
                format!("must hold one datagram of the largest size: at least {need}"),
            );
        }
        Ok(())
    }
}

/// What [`Reassembler::push`] did with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Not a fragment: the caller processes the packet as it is.
    NotFragment,
    /// Kept; the datagram is not complete yet.
    Held,
    /// This fragment completed its datagram: the whole IP packet, valid until the next call.
    Complete(&'a mut [u8]),
    /// Dropped, for this reason (and counted).
    Dropped(ReasmDrop),
}

/// What happened to the fragments so far. Every fragment pushed is, at any time, in exactly
/// one of: a completed datagram (`reassembled_fragments`), a drop reason (`fragment_drops`),
/// or held ([`Reassembler::held_fragments`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Fragments pushed (packets that were fragments, or failed to parse).
    pub fragments: u64,
    /// Datagrams completed and returned.
    pub reassembled: u64,
    /// Fragments that went into completed datagrams.
    pub reassembled_fragments: u64,
    /// Fragments dropped, per [`ReasmDrop`] (index `reason as usize`): the one refused on
    /// arrival and those a discarded datagram held.
    pub fragment_drops: [u64; ReasmDrop::COUNT],
    /// Datagrams abandoned, per [`ReasmDrop`].
    pub datagram_drops: [u64; ReasmDrop::COUNT],
}

impl Counters {
    pub fn fragment_drop(&self, r: ReasmDrop) -> u64 {
        self.fragment_drops.get(r as usize).copied().unwrap_or(0)
    }

    pub fn datagram_drop(&self, r: ReasmDrop) -> u64 {
        self.datagram_drops.get(r as usize).copied().unwrap_or(0)
    }

    fn add_fragments(&mut self, r: ReasmDrop, n: usize) {
        if let Some(c) = self.fragment_drops.get_mut(r as usize) {
            *c = c.wrapping_add(n as u64);
        }
    }

    fn add_datagram(&mut self, r: ReasmDrop) {
        if let Some(c) = self.datagram_drops.get_mut(r as usize) {
            *c = c.wrapping_add(1);
        }
    }
}

/// Outer-fragment reassembly for one worker. See the module documentation.
pub struct Reassembler {
    cfg: ReasmConfig,
    slots: Vec<Slot>,
    /// Free slots (a stack).
    free: Vec<usize>,
    /// Buffers of finished datagrams, for the next ones (a stack).
    spare: Vec<Vec<u8>>,
    /// Incomplete datagrams, oldest first.
    active: List,
    /// Discarded datagrams, oldest first.
    discarded: List,
    index: HashMap<Key, usize, RandomState>,
    sources: HashMap<SourceKey, SourceEntry, RandomState>,
    /// The slot returned by the last call.
    completed: Option<usize>,
    /// Capacity of every buffer owned (slots' and spare).
    memory: usize,
    held_fragments: usize,
    counters: Counters,
}

enum Step {
    Held,
    Complete(usize),
}

impl Reassembler {
    /// A reassembler with these limits (checked).
    pub fn new(cfg: ReasmConfig) -> Result<Reassembler, ConfigError> {
        cfg.validate()?;
        let n = cfg.max_datagrams;
        let slots = (0..n).map(|_| Slot::new(cfg.max_fragments)).collect();
        Ok(Reassembler {
            slots,
            free: (0..n).rev().collect(),
            spare: Vec::with_capacity(n),
            active: List::default(),
            discarded: List::default(),
            index: HashMap::with_capacity_and_hasher(n, RandomState::new()),
            sources: HashMap::with_capacity_and_hasher(n, RandomState::new()),
            completed: None,
            memory: 0,
            held_fragments: 0,
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &ReasmConfig {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes of buffers owned (held data, header room and spare buffers): at most
    /// `max_bytes`.
    pub fn memory_bytes(&self) -> usize {
        self.memory
    }

    /// Bytes of the tables allocated up front (slots, fragment lists, indexes), approximately.
    pub fn table_bytes(&self) -> usize {
        let slot = core::mem::size_of::<Slot>()
            .saturating_add(self.cfg.max_fragments.saturating_mul(size_of::<Piece>()));
        let index = size_of::<(Key, usize)>().saturating_add(size_of::<(SourceKey, SourceEntry)>());
        let lists = size_of::<usize>().saturating_mul(2);
        self.cfg
            .max_datagrams
            .saturating_mul(slot.saturating_add(index).saturating_add(lists))
    }

    /// Incomplete datagrams held.
    pub fn datagrams_in_flight(&self) -> usize {
        self.active.len
    }

    /// Fragments held in incomplete datagrams.
    pub fn held_fragments(&self) -> usize {
        self.held_fragments
    }

    /// The earliest time at which [`expire`](Self::expire) has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let d = |l: &List| l.head.and_then(|i| self.slots.get(i)).map(|s| s.deadline);
        match (d(&self.active), d(&self.discarded)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Abandons datagrams whose time is up (counted as [`ReasmDrop::Timeout`]) and forgets
    /// discarded ones whose time is up, at most `max` of them. Returns how many.
    pub fn expire(&mut self, now: u64, max: usize) -> usize {
        self.reclaim_completed();
        let mut n = 0usize;
        while n < max {
            let Some(i) = self.active.head else { break };
            if self.slots.get(i).is_none_or(|s| s.deadline > now) {
                break;
            }
            self.abandon(i, ReasmDrop::Timeout);
            n = n.saturating_add(1);
        }
        while n < max {
            let Some(i) = self.discarded.head else { break };
            if self.slots.get(i).is_none_or(|s| s.deadline > now) {
                break;
            }
            self.forget(i);
            n = n.saturating_add(1);
        }
        n
    }

    /// Takes one IP packet (from its IP header on). Non-fragments come back as
    /// [`Outcome::NotFragment`] untouched; a fragment is held, completes its datagram, or is
    /// dropped with a reason.
    pub fn push(&mut self, ip: &[u8], now: u64) -> Outcome<'_> {
        self.reclaim_completed();
        let frag = match parse(ip) {
            Ok(Some(f)) => f,
            Ok(None) => return Outcome::NotFragment,
            Err(r) => return self.refuse(r),
        };
        self.counters.fragments = self.counters.fragments.wrapping_add(1);
        let step = if frag.atomic {
            self.isolated(&frag)
        } else {
            self.add(&frag, now)
        };
        match step {
            Ok(Step::Held) => Outcome::Held,
            Ok(Step::Complete(i)) => self.complete(i),
            Err(r) => Outcome::Dropped(r),
        }
    }

    /// A packet that failed to parse: counted as a fragment dropped.
    fn refuse(&mut self, r: ReasmDrop) -> Outcome<'static> {
        self.counters.fragments = self.counters.fragments.wrapping_add(1);
        self.counters.add_fragments(r, 1);
        Outcome::Dropped(r)
    }

    fn dropped(&mut self, r: ReasmDrop) -> Result<Step, ReasmDrop> {
        self.counters.add_fragments(r, 1);
        Err(r)
    }

    fn add(&mut self, f: &Fragment<'_>, now: u64) -> Result<Step, ReasmDrop> {
        let i = match self.index.get(&f.key).copied() {
            Some(i) => {
                let (state, deadline) = match self.slots.get(i) {
                    Some(s) => (s.state, s.deadline),
                    None => return self.dropped(ReasmDrop::Malformed),
                };
                if deadline <= now {
                    match state {
                        State::Active => self.abandon(i, ReasmDrop::Timeout),
                        _ => self.forget(i),
                    }
                    self.start(f, now)
                } else if state == State::Discarded {
                    return self.dropped(ReasmDrop::Discarded);
                } else {
                    i
                }
            }
            None => self.start(f, now),
        };
        if i == NIL {
            return self.dropped(ReasmDrop::Evicted);
        }
        self.place(i, f, now)
    }

    /// Puts a fragment into datagram `i`.
    fn place(&mut self, i: usize, f: &Fragment<'_>, now: u64) -> Result<Step, ReasmDrop> {
        let verdict = match self.slots.get(i) {
            Some(s) => judge(&self.cfg, s, f),
            None => return self.dropped(ReasmDrop::Malformed),
        };
        let at = match verdict {
            Verdict::Place { at } => at,
            Verdict::Duplicate => return self.dropped(ReasmDrop::Duplicate),
            Verdict::Discard(r) => return self.discard(i, r, now),
        };
        let (room, total) = match self.slots.get(i) {
            Some(s) => (s.room(), s.total),
            None => return self.dropped(ReasmDrop::Malformed),
        };
        let start = f.offset;
        let end = start.saturating_add(f.data.len());
        // Room for the data and, while the end is unknown, a guess at the rest.
        let need = room.saturating_add(end);
        let want = match (f.more, total) {
            (false, _) => need,
            (true, Some(t)) => room.saturating_add(t),
            (true, None) => need
                .saturating_mul(2)
                .max(MIN_BUFFER)
                .checked_next_power_of_two()
                .unwrap_or(need)
                .min(room.saturating_add(65535)),
        };
        if !self.grow(i, need, want) {
            return self.discard(i, ReasmDrop::TooLarge, now);
        }
        let Some(s) = self.slots.get_mut(i) else {
            return self.dropped(ReasmDrop::Malformed);
        };
        let copied = match s.buf.get_mut(room.saturating_add(start)..need) {
            Some(dst) => {
                dst.copy_from_slice(f.data);
                true
            }
            None => false,
        };
        if start == 0 && copied {
            let hl = f.header.len();
            match s.buf.get_mut(room.saturating_sub(hl)..room) {
                Some(h) if hl <= room => h.copy_from_slice(f.header),
                _ => return self.dropped(ReasmDrop::HeadersTooLong),
            }
            s.header_len = hl;
            s.nh_at = f.nh_at;
            s.upper = f.upper;
        }
        if !copied {
            return self.dropped(ReasmDrop::Malformed);
        }
        s.pieces.insert(at, Piece { start, end });
        s.held = s.held.saturating_add(f.data.len());
        s.ecn |= ecn_bit(f.ecn);
        if !f.more {
            s.total = Some(end);
        }
        let complete = s.total == Some(s.held) && s.header_len != 0;
        self.held_fragments = self.held_fragments.saturating_add(1);
        Ok(if complete {
            Step::Complete(i)
        } else {
            Step::Held
        })
    }

    /// An atomic fragment: returned at once, without its Fragment header (RFC 6946).
    fn isolated(&mut self, f: &Fragment<'_>) -> Result<Step, ReasmDrop> {
        let i = self.take_slot();
        if i == NIL {
            return self.dropped(ReasmDrop::Evicted);
        }
        let room = V6_MAX_UNFRAGMENTABLE;
        let need = room.saturating_add(f.data.len());
        if let Some(s) = self.slots.get_mut(i) {
            s.state = State::Completed;
            s.key = f.key;
        }
        if !self.grow(i, need, need) {
            self.release_slot(i);
            return self.dropped(ReasmDrop::TooLarge);
        }
        let Some(s) = self.slots.get_mut(i) else {
            return self.dropped(ReasmDrop::Malformed);
        };
        let hl = f.header.len();
        let copied = match (
            s.buf.get_mut(room..need),
            room.checked_sub(hl).map(|h| h..room),
        ) {
            (Some(d), Some(hr)) => {
                d.copy_from_slice(f.data);
                match s.buf.get_mut(hr) {
                    Some(h) => {
                        h.copy_from_slice(f.header);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !copied {
            self.release_slot(i);
            return self.dropped(ReasmDrop::HeadersTooLong);
        }
        let s = self.slots.get_mut(i).ok_or(ReasmDrop::Malformed)?;
        s.pieces.clear();
        s.pieces.push(Piece {
            start: 0,
            end: f.data.len(),
        });
        s.held = f.data.len();
        s.total = Some(f.data.len());
        s.header_len = hl;
        s.nh_at = f.nh_at;
        s.upper = f.upper;
        s.ecn = ecn_bit(f.ecn);
        self.held_fragments = self.held_fragments.saturating_add(1);
        Ok(Step::Complete(i))
    }

    /// Writes the reassembled header in front of the data and hands the packet out.
    fn complete(&mut self, i: usize) -> Outcome<'_> {
        let (max_v4, max_v6) = (self.cfg.max_v4_len, self.cfg.max_v6_payload_len);
        let Some((total, hl, v6, ecn, pieces, state)) = self.slots.get(i).map(|s| {
            (
                s.held,
                s.header_len,
                s.key.v6,
                s.ecn,
                s.pieces.len(),
                s.state,
            )
        }) else {
            return Outcome::Dropped(ReasmDrop::Malformed);
        };
        if ecn & ECN_NOT_ECT != 0 && ecn & !ECN_NOT_ECT != 0 {
            return self.abandon_last(i, ReasmDrop::EcnMismatch);
        }
        let too_large = if v6 {
            hl.saturating_sub(ipv6::HEADER_LEN).saturating_add(total) > max_v6
        } else {
            hl.saturating_add(total) > max_v4
        };
        if too_large {
            return self.abandon_last(i, ReasmDrop::TooLarge);
        }
        // Out of the index and the lists; the buffer stays until the next call.
        if state == State::Active {
            self.unlink_active(i);
        }
        self.held_fragments = self.held_fragments.saturating_sub(pieces);
        self.counters.reassembled = self.counters.reassembled.wrapping_add(1);
        self.counters.reassembled_fragments = self
            .counters
            .reassembled_fragments
            .wrapping_add(pieces as u64);
        self.completed = Some(i);
        let Some(s) = self.slots.get_mut(i) else {
            return Outcome::Dropped(ReasmDrop::Malformed);
        };
        s.state = State::Completed;
        let room = s.room();
        let (from, to) = (room.saturating_sub(hl), room.saturating_add(total));
        s.out = (from, to);
        let (nh_at, upper) = (s.nh_at, s.upper);
        let Some(pkt) = s.buf.get_mut(from..to) else {
            return Outcome::Dropped(ReasmDrop::Malformed);
        };
        let ce = ecn & ECN_CE != 0;
        if v6 {
            let mut p = ipv6::Packet::new_unchecked(&mut *pkt);
            // Fits: checked against max_v6 (at most 65535) above.
            p.set_payload_len(
                u16::try_from(to.saturating_sub(from).saturating_sub(40)).unwrap_or(0),
            );
            if ce {
                p.set_ecn(3);
            }
            if let Some(b) = pkt.get_mut(nh_at) {
                *b = upper;
            }
        } else {
            let mut p = ipv4::Packet::new_unchecked(&mut *pkt);
            let df = p.dont_frag();
            p.set_total_len(u16::try_from(to.saturating_sub(from)).unwrap_or(0));
            p.clear_flags();
            p.set_dont_frag(df);
            if ce {
                p.set_ecn(3);
            }
            p.fill_checksum();
        }
        Outcome::Complete(pkt)
    }

    /// A datagram whose last fragment made it invalid: everything it held is dropped.
    fn abandon_last(&mut self, i: usize, r: ReasmDrop) -> Outcome<'static> {
        match self.slots.get(i).map(|s| s.state) {
            Some(State::Active) => self.abandon(i, r),
            _ => {
                // An atomic fragment: not in the index or the lists.
                let n = self.slots.get(i).map_or(0, |s| s.pieces.len());
                self.held_fragments = self.held_fragments.saturating_sub(n);
                self.counters.add_fragments(r, n);
                self.counters.add_datagram(r);
                self.release_slot(i);
            }
        }
        Outcome::Dropped(r)
    }

    /// Starts a datagram for `f` (applying the per-source limit and taking a slot). NIL if no
    /// slot could be had.
    fn start(&mut self, f: &Fragment<'_>, now: u64) -> usize {
        // The source's quota: its oldest incomplete datagram makes way.
        let oldest_of_source = self
            .sources
            .get(&f.source)
            .filter(|e| e.list.len >= self.cfg.max_per_source)
            .and_then(|e| e.list.head);
        if let Some(old) = oldest_of_source {
            self.abandon(old, ReasmDrop::SourceLimit);
        }
        let i = self.take_slot();
        let timeout = self.cfg.timeout_ns;
        let Some(s) = self.slots.get_mut(i) else {
            return NIL;
        };
        s.state = State::Active;
        s.key = f.key;
        s.source = f.source;
        s.deadline = now.saturating_add(timeout);
        s.pieces.clear();
        s.held = 0;
        s.total = None;
        s.header_len = 0;
        s.nh_at = 0;
        s.upper = 0;
        s.ecn = 0;
        push_back(&mut self.slots, &mut self.active, Thread::Age, i);
        let entry = self.sources.entry(f.source).or_default();
        push_back(&mut self.slots, &mut entry.list, Thread::Source, i);
        self.index.insert(f.key, i);
        i
    }

    /// A free slot: from the free list, else the oldest discarded datagram's, else the
    /// oldest incomplete datagram's (evicted). NIL only with no slots at all.
    fn take_slot(&mut self) -> usize {
        if let Some(i) = self.free.pop() {
            return i;
        }
        if let Some(i) = self.discarded.head {
            self.forget(i);
        } else if let Some(i) = self.active.head {
            self.abandon(i, ReasmDrop::Evicted);
        }
        self.free.pop().unwrap_or(NIL)
    }

    /// Makes slot `i`'s buffer at least `need` bytes (asking for `want` if memory allows),
    /// taking spare buffers and evicting the oldest other datagrams to stay within
    /// `max_bytes`. False if even that cannot make room.
    fn grow(&mut self, i: usize, need: usize, want: usize) -> bool {
        let Some(s) = self.slots.get_mut(i) else {
            return false;
        };
        if s.buf.capacity() == 0 {
            if let Some(b) = self.spare.pop() {
                s.buf = b;
            }
        }
        let cap = s.buf.capacity();
        if cap >= need {
            if s.buf.len() < need {
                s.buf.resize(cap, 0);
            }
            return true;
        }
        let mut want = want.max(need);
        loop {
            let extra = want.saturating_sub(cap);
            if self.memory.saturating_add(extra) <= self.cfg.max_bytes {
                break;
            }
            if let Some(b) = self.spare.pop() {
                self.memory = self.memory.saturating_sub(b.capacity());
                continue;
            }
            if want > need {
                want = need;
                continue;
            }
            let victim = match self.active.head {
                Some(h) if h == i => self.slots.get(h).map(|s| s.age.next),
                h => h,
            };
            match victim {
                Some(v) if v != NIL => self.abandon(v, ReasmDrop::Evicted),
                _ => return false,
            }
        }
        let Some(s) = self.slots.get_mut(i) else {
            return false;
        };
        s.buf.reserve_exact(want.saturating_sub(s.buf.len()));
        s.buf.resize(want, 0);
        let grown = s.buf.capacity().saturating_sub(cap);
        self.memory = self.memory.saturating_add(grown);
        true
    }

    /// Poisons datagram `i` (RFC 5722): what it held is dropped for `r`, along with the
    /// fragment that poisoned it, and its later fragments are discarded for one timeout.
    fn discard(&mut self, i: usize, r: ReasmDrop, now: u64) -> Result<Step, ReasmDrop> {
        let timeout = self.cfg.timeout_ns;
        let n = self.slots.get(i).map_or(0, |s| s.pieces.len());
        self.unlink_active(i);
        self.held_fragments = self.held_fragments.saturating_sub(n);
        self.counters.add_fragments(r, n.saturating_add(1));
        self.counters.add_datagram(r);
        self.return_buffer(i);
        if let Some(s) = self.slots.get_mut(i) {
            s.state = State::Discarded;
            s.deadline = now.saturating_add(timeout);
            s.pieces.clear();
            self.index.insert(s.key, i);
        }
        push_back(&mut self.slots, &mut self.discarded, Thread::Age, i);
        Err(r)
    }

    /// Abandons incomplete datagram `i`, counting what it held under `r`.
    fn abandon(&mut self, i: usize, r: ReasmDrop) {
        let n = self.slots.get(i).map_or(0, |s| s.pieces.len());
        self.unlink_active(i);
        self.held_fragments = self.held_fragments.saturating_sub(n);
        self.counters.add_fragments(r, n);
        self.counters.add_datagram(r);
        self.release_slot(i);
    }

    /// Forgets discarded datagram `i`.
    fn forget(&mut self, i: usize) {
        unlink(&mut self.slots, &mut self.discarded, Thread::Age, i);
        if let Some(k) = self.slots.get(i).map(|s| s.key) {
            self.index.remove(&k);
        }
        self.release_slot(i);
    }

    /// Takes active datagram `i` out of the index, the age list and its source's list.
    fn unlink_active(&mut self, i: usize) {
        let Some((key, source)) = self.slots.get(i).map(|s| (s.key, s.source)) else {
            return;
        };
        self.index.remove(&key);
        unlink(&mut self.slots, &mut self.active, Thread::Age, i);
        if let Some(e) = self.sources.get_mut(&source) {
            unlink(&mut self.slots, &mut e.list, Thread::Source, i);
            if e.list.len == 0 {
                self.sources.remove(&source);
            }
        }
    }

    fn return_buffer(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            let b = core::mem::take(&mut s.buf);
            if b.capacity() != 0 {
                self.spare.push(b);
            }
        }
    }

    fn release_slot(&mut self, i: usize) {
        self.return_buffer(i);
        if let Some(s) = self.slots.get_mut(i) {
            s.state = State::Free;
            s.pieces.clear();
            self.free.push(i);
        }
    }

    /// The datagram returned by the last call gives its slot and buffer back.
    fn reclaim_completed(&mut self) {
        if let Some(i) = self.completed.take() {
            self.release_slot(i);
        }
    }
}

/// What a fragment does to the datagram in `s`.
enum Verdict {
    /// Goes in at this position of the held pieces.
    Place {
        at: usize,
    },
    Duplicate,
    Discard(ReasmDrop),
}

fn judge(cfg: &ReasmConfig, s: &Slot, f: &Fragment<'_>) -> Verdict {
    let start = f.offset;
    let end = start.saturating_add(f.data.len());
    // The configured size, with this fragment's own header length until the offset-0
    // fragment's is known.
    let header = if s.header_len != 0 {
        s.header_len
    } else {
        f.header.len()
    };
    let too_large = if f.key.v6 {
        header.saturating_sub(ipv6::HEADER_LEN).saturating_add(end) > cfg.max_v6_payload_len
    } else {
        header.saturating_add(end) > cfg.max_v4_len
    };
    if too_large {
        return Verdict::Discard(ReasmDrop::TooLarge);
    }
    // The end of the datagram: one end only, and nothing past it (Linux's and pf's rules).
    let held_end = s.pieces.last().map_or(0, |p| p.end);
    let bad_end = match (f.more, s.total) {
        (false, Some(t)) => t != end,
        (false, None) => held_end > end,
        (true, Some(t)) => end > t,
        (true, None) => false,
    };
    if bad_end {
        return Verdict::Discard(ReasmDrop::InconsistentEnd);
    }
    // The first held piece that ends after this one starts is the only one that can overlap
    // it (the pieces are sorted and disjoint).
    let at = s.pieces.partition_point(|p| p.end <= start);
    if let Some(p) = s.pieces.get(at) {
        if p.start < end {
            let room = s.room();
            let held = s
                .buf
                .get(room.saturating_add(start)..room.saturating_add(end));
            return if p.start <= start && end <= p.end && held == Some(f.data) {
                Verdict::Duplicate
            } else {
                Verdict::Discard(ReasmDrop::Overlap)
            };
        }
    }
    if s.pieces.len() >= cfg.max_fragments {
        return Verdict::Discard(ReasmDrop::TooManyFragments);
    }
    Verdict::Place { at }
}
