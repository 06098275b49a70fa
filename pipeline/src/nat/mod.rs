//! NAT masquerading (IPv4 source NAT to one external address), sans-IO.
//!
//! This module owns connection tracking for masqueraded flows, the allocation of external ports
//! (and ICMP echo identifiers), and the rewriting of packets in both directions with RFC 1624
//! incremental checksum updates. Time is passed in as `now` (monotonic nanoseconds) and never
//! read here. IPv6 is never masqueraded: the worker passes it through untouched.
//!
//! What it must never do: panic on a packet; reuse an external port before
//! [`MasqueradeConfig::port_reuse_delay_ns`] has passed since it was released (a late packet of
//! the old flow must not reach the new one); use an unkeyed hash on attacker-chosen keys.
//!
//! # Model
//!
//! * A session is created by the first outbound packet of a flow: TCP/UDP by the 5-tuple
//!   (protocol, inside address and port, remote address and port), ICMP echo by (inside
//!   address, identifier, remote address). Each session gets its own external port (or echo
//!   identifier) from the configured range, so the inbound lookup is (protocol, external port)
//!   in a directly indexed table, and the remote address and port must match the session
//!   (endpoint-dependent filtering).
//! * Ports: never-used ports first (starting at a random offset), then released ports in
//!   release order, each only once `port_reuse_delay_ns` has passed since its release. None
//!   available: [`NatDrop::PortsExhausted`].
//! * TCP state, for timeouts only: a new flow and a flow that saw FIN or RST are *transitory*;
//!   a flow becomes *established* when an inbound segment with ACK (and no RST/FIN) answers it.
//!   A new SYN on a closing flow makes it transitory again.
//! * ICMP errors (destination unreachable, time exceeded, parameter problem) are translated in
//!   both directions when the packet they quote belongs to a session: outer address, quoted
//!   address and port, quoted IP/transport checksums and the ICMP checksum.
//! * Fragments: a first fragment carries the transport header and is translated (the
//!   incremental checksum update stays right for the whole datagram); non-first fragments are
//!   dropped with [`NatDrop::Fragment`] (no reassembly, no fragment tracking), so fragmented
//!   datagrams do not make it through the masquerade.
//! * Expiry: a session idle for longer than its timeout is dead; it is removed either by
//!   [`Masquerade::expire`] (bounded work per call) or when a packet finds it.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use core::net::Ipv4Addr;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use crate::wire::bytes::{self, Field};
use crate::wire::checksum::{update16, update_ipv4_addr};
use crate::wire::{icmpv4, ipv4, tcp, udp, IpProtocol};

pub use proto::nat::MasqueradeConfig;

/// Why the masquerade dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NatDrop {
    /// Not a well-formed IPv4 packet, or its transport header is short.
    Malformed,
    /// Inbound (or an ICMP error) that belongs to no session; an outbound TCP RST with no
    /// session.
    NoSession,
    /// No external port can be handed out (all in use or in their reuse delay).
    PortsExhausted,
    /// `max_sessions` sessions exist.
    TableFull,
    /// A non-first fragment.
    Fragment,
    /// A protocol (or ICMP type) that is not masqueraded.
    UnsupportedProtocol,
}

impl core::fmt::Display for NatDrop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NatDrop::Malformed => "malformed",
            NatDrop::NoSession => "no session",
            NatDrop::PortsExhausted => "ports exhausted",
            NatDrop::TableFull => "table full",
            NatDrop::Fragment => "non-first fragment",
            NatDrop::UnsupportedProtocol => "unsupported protocol",
        })
    }
}

impl std::error::Error for NatDrop {}

/// The protocols with their own port space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Proto {
    Tcp = 0,
    Udp = 1,
    Icmp = 2,
}

impl Proto {
    fn of(p: IpProtocol) -> Option<Proto> {
        match p {
            IpProtocol::Tcp => Some(Proto::Tcp),
            IpProtocol::Udp => Some(Proto::Udp),
            IpProtocol::Icmp => Some(Proto::Icmp),
            _ => None,
        }
    }
}

/// The outbound lookup key. For ICMP echo `inside_port` is the identifier and `remote_port` 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    proto: Proto,
    inside: Ipv4Addr,
    inside_port: u16,
    remote: Ipv4Addr,
    remote_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpState {
    /// New (SYN sent or picked up mid-stream): transitory.
    Opening,
    Established,
    /// FIN or RST seen: transitory.
    Closing,
}

#[derive(Clone, Debug)]
struct Session {
    key: FlowKey,
    ext_port: u16,
    last_seen: u64,
    tcp: TcpState,
}

/// External ports of one protocol.
#[derive(Debug)]
struct PortPool {
    lo: u16,
    size: u32,
    /// The ports this pool hands out: `first`, `first + step`, ... (`count` of them); all of
    /// the range unless shared between workers ([`Masquerade::share_ports`]).
    first: u32,
    step: u32,
    count: u32,
    /// Fresh ports handed out so far (they go `start`, `start + 1`, ... wrapping in the ports).
    fresh_used: u32,
    start: u32,
    /// Released ports with their release time, oldest first.
    released: VecDeque<(u16, u64)>,
}

impl PortPool {
    fn new(lo: u16, hi: u16, start: u32) -> PortPool {
        let size = u32::from(hi) - u32::from(lo) + 1;
        PortPool {
            lo,
            size,
            first: u32::from(lo),
            step: 1,
            count: size,
            fresh_used: 0,
            start: start % size,
            released: VecDeque::new(),
        }
    }

    /// Only the ports `p` of the range with `p % workers == worker` (none handed out yet).
    fn share(&mut self, worker: u16, workers: u16) {
        let (w, n) = (u32::from(worker), u32::from(workers.max(1)));
        let lo = u32::from(self.lo);
        let first = lo + (w + n - lo % n) % n;
        let hi = lo + self.size - 1;
        self.first = first;
        self.step = n;
        self.count = if first > hi { 0 } else { (hi - first) / n + 1 };
        self.fresh_used = 0;
        self.start %= self.count.max(1);
    }

    fn alloc(&mut self, now: u64, delay: u64) -> Option<u16> {
        if self.fresh_used < self.count {
            let off = (self.start + self.fresh_used) % self.count;
            self.fresh_used += 1;
            return u16::try_from(self.first + off * self.step).ok();
        }
        match self.released.front() {
            Some(&(port, at)) if now.saturating_sub(at) >= delay => {
                self.released.pop_front();
                Some(port)
            }
            _ => None,
        }
    }

    fn release(&mut self, port: u16, now: u64) {
        self.released.push_back((port, now));
    }

    fn index(&self, port: u16) -> Option<usize> {
        let off = u32::from(port).checked_sub(u32::from(self.lo))?;
        (off < self.size).then_some(off as usize)
    }
}

const NONE: u32 = u32::MAX;

/// The worker whose masquerade handed out external port (or ICMP echo identifier) `port`
/// when `workers` share one address ([`Masquerade::share_ports`]).
#[inline]
pub fn port_owner(port: u16, workers: u16) -> u16 {
    port % workers.max(1)
}

/// The external port of an answer to a masqueraded flow: the destination port of a TCP or
/// UDP packet, the identifier of an ICMP echo reply, and for an ICMP error (destination
/// unreachable, e.g. "fragmentation needed", time exceeded, parameter problem) the same of
/// the packet it quotes, our translated one going out: its source port, or its echo
/// request's identifier (IPv4 `ip`, header checked by the caller or not: `None` for anything
/// short or else).
#[inline]
pub fn answer_port(ip: &[u8]) -> Option<u16> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    // A fragment after the first carries no ports.
    let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
    if ihl < 20 || frag != 0 {
        return None;
    }
    let at = |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*ip.get(o)?, *ip.get(o + 1)?])) };
    match *ip.get(9)? {
        6 | 17 => at(ihl + 2),
        1 => match *ip.get(ihl)? {
            0 => at(ihl + 4),
            3 | 11 | 12 => {
                // The quoted IP header, 8 bytes into the ICMP message.
                let q = ihl + 8;
                let qihl = usize::from(ip.get(q)? & 0x0f) * 4;
                if qihl < 20 {
                    return None;
                }
                match (*ip.get(q + 9)?, *ip.get(q + qihl)?) {
                    (6 | 17, _) => at(q + qihl),
                    (1, 8) => at(q + qihl + 4),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// The masquerade: sessions, port pools and the packet rewriters. See the module docs.
#[derive(Debug)]
pub struct Masquerade {
    cfg: MasqueradeConfig,
    slots: Vec<Option<Session>>,
    free: Vec<u32>,
    live: usize,
    outbound: HashMap<FlowKey, u32, RandomState>,
    /// Per protocol, indexed by external port - range start: the session slot or NONE.
    inbound: [Vec<u32>; 3],
    pools: [PortPool; 3],
    /// Where the next `expire` call starts.
    cursor: usize,
}

/// Where a packet is going, for the rewriters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Out,
    In,
}

impl Masquerade {
    /// A masquerade with no sessions. A reversed port range is swapped and port 0 is left out.
    pub fn new(mut cfg: MasqueradeConfig) -> Self {
        let (mut lo, mut hi) = cfg.port_range;
        if lo > hi {
            core::mem::swap(&mut lo, &mut hi);
        }
        lo = lo.max(1);
        hi = hi.max(lo);
        cfg.port_range = (lo, hi);
        let hasher = RandomState::new();
        let outbound = HashMap::with_hasher(hasher);
        // Random starting points for the fresh ports (RFC 6056 spirit), from the keyed hasher.
        let seed = |i: u64| (RandomState::new().hash_one(i) & 0xffff_ffff) as u32;
        let pool = |i| PortPool::new(lo, hi, seed(i));
        let pools = [pool(0), pool(1), pool(2)];
        let size = pools[0].size as usize;
        Masquerade {
            cfg,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            outbound,
            inbound: [vec![NONE; size], vec![NONE; size], vec![NONE; size]],
            pools,
            cursor: 0,
        }
    }

    pub fn config(&self) -> &MasqueradeConfig {
        &self.cfg
    }

    /// One of `workers` masquerades to the same address (a client's virtual IP with per-core
    /// SAs): this one hands out only the ports `p` with `p % workers == worker` (ICMP echo
    /// identifiers alike), so an answer's port names the worker that holds its session
    /// ([`port_owner`]). Only before the first session (false otherwise, nothing changed).
    pub fn share_ports(&mut self, worker: u16, workers: u16) -> bool {
        if self.live != 0 || workers == 0 || worker >= workers {
            return false;
        }
        for p in &mut self.pools {
            p.share(worker, workers);
        }
        true
    }

    /// The address inside flows are rewritten to.
    pub fn external_addr(&self) -> Ipv4Addr {
        self.cfg.external_addr
    }

    /// Live sessions (including idle ones `expire` has not reached yet).
    pub fn sessions(&self) -> usize {
        self.live
    }

    fn timeout(&self, s: &Session) -> u64 {
        match (s.key.proto, s.tcp) {
            (Proto::Tcp, TcpState::Established) => self.cfg.tcp_established_timeout_ns,
            (Proto::Tcp, _) => self.cfg.tcp_transitory_timeout_ns,
            (Proto::Udp, _) => self.cfg.udp_timeout_ns,
            (Proto::Icmp, _) => self.cfg.icmp_timeout_ns,
        }
    }

    fn is_expired(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.last_seen) >= self.timeout(s)
    }

    fn session(&self, slot: u32) -> Option<&Session> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn session_mut(&mut self, slot: u32) -> Option<&mut Session> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn remove(&mut self, slot: u32, now: u64) {
        let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.outbound.remove(&s.key);
        let p = s.key.proto as usize;
        if let (Some(pool), Some(table)) = (self.pools.get_mut(p), self.inbound.get_mut(p)) {
            if let Some(e) = pool.index(s.ext_port).and_then(|i| table.get_mut(i)) {
                *e = NONE;
            }
            pool.release(s.ext_port, now);
        }
        self.free.push(slot);
        self.live -= 1;
    }

    /// Removes up to `budget` examined sessions' worth of idle sessions, resuming where the
    /// last call stopped. Returns how many were removed.
    pub fn expire(&mut self, now: u64, budget: usize) -> usize {
        let n = self.slots.len();
        if n == 0 {
            return 0;
        }
        let mut removed = 0;
        for _ in 0..budget.min(n) {
            let slot = self.cursor % n;
            self.cursor = (slot + 1) % n;
            let dead = self
                .slots
                .get(slot)
                .and_then(Option::as_ref)
                .is_some_and(|s| self.is_expired(s, now));
            if dead {
                self.remove(slot as u32, now);
                removed += 1;
            }
        }
        removed
    }

    /// The live session for `key`, removing it first if it has timed out.
    fn find_out(&mut self, key: &FlowKey, now: u64) -> Option<u32> {
        let slot = *self.outbound.get(key)?;
        let expired = self.session(slot).is_none_or(|s| self.is_expired(s, now));
        if expired {
            self.remove(slot, now);
            return None;
        }
        Some(slot)
    }

    /// The live session owning external `port` of `proto`.
    fn find_in(&mut self, proto: Proto, port: u16, now: u64) -> Option<u32> {
        let p = proto as usize;
        let i = self.pools.get(p)?.index(port)?;
        let slot = *self.inbound.get(p)?.get(i)?;
        if slot == NONE {
            return None;
        }
        let expired = self.session(slot).is_none_or(|s| self.is_expired(s, now));
        if expired {
            self.remove(slot, now);
            return None;
        }
        Some(slot)
    }

    fn create(&mut self, key: FlowKey, now: u64) -> Result<u32, NatDrop> {
        if self.live >= self.cfg.max_sessions {
            return Err(NatDrop::TableFull);
        }
        let p = key.proto as usize;
        let delay = self.cfg.port_reuse_delay_ns;
        let pool = self.pools.get_mut(p).ok_or(NatDrop::UnsupportedProtocol)?;
        let port = pool.alloc(now, delay).ok_or(NatDrop::PortsExhausted)?;
        let idx = pool.index(port).ok_or(NatDrop::PortsExhausted)?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len()).map_err(|_| NatDrop::TableFull)?;
                self.slots.push(None);
                s
            }
        };
        if let Some(e) = self.slots.get_mut(slot as usize) {
            *e = Some(Session {
                key,
                ext_port: port,
                last_seen: now,
                tcp: TcpState::Opening,
            });
        }
        if let Some(e) = self.inbound.get_mut(p).and_then(|t| t.get_mut(idx)) {
            *e = slot;
        }
        self.outbound.insert(key, slot);
        self.live += 1;
        Ok(slot)
    }

    /// Rewrites an IPv4 packet (starting at the IP header) leaving through the masquerading
    /// interface: source address to the external address, source port (echo identifier) to
    /// the session's external port. Creates the session if needed. ICMP errors about a flow of
    /// a session are translated. On error the packet is unchanged.
    pub fn outbound(&mut self, ip: &mut [u8], now: u64) -> Result<(), NatDrop> {
        let h = Header::parse(ip)?;
        let proto = Proto::of(h.proto).ok_or(NatDrop::UnsupportedProtocol)?;
        let ext = self.cfg.external_addr;
        let l4 = ip.get_mut(h.hl..h.total).ok_or(NatDrop::Malformed)?;
        if proto == Proto::Icmp && is_icmp_error(l4)? {
            self.translate_error(l4, Dir::Out, h.src, now)?;
        } else {
            let t = Transport::parse(proto, l4, Dir::Out)?;
            let key = FlowKey {
                proto,
                inside: h.src,
                inside_port: t.local_port,
                remote: h.dst,
                remote_port: t.remote_port,
            };
            let slot = match self.find_out(&key, now) {
                Some(s) => s,
                None if t.flags.rst() => return Err(NatDrop::NoSession),
                None => self.create(key, now)?,
            };
            let s = self.session_mut(slot).ok_or(NatDrop::NoSession)?;
            s.last_seen = now;
            s.tcp = next_tcp_state(s.tcp, t.flags, Dir::Out);
            let ext_port = s.ext_port;
            t.rewrite(l4, h.src, ext, ext_port);
        }
        rewrite_ip_addr(ip, ipv4_field::SRC_ADDR, ext);
        Ok(())
    }

    /// Rewrites an IPv4 packet arriving at the external address back to the inside host:
    /// destination address and port (echo identifier) to the session's. ICMP errors quoting a
    /// packet of a session are translated back. `Err(NatDrop::NoSession)` if there is no
    /// session (or the packet is not addressed to the external address). On error the packet
    /// is unchanged.
    pub fn inbound(&mut self, ip: &mut [u8], now: u64) -> Result<(), NatDrop> {
        let h = Header::parse(ip)?;
        if h.dst != self.cfg.external_addr {
            return Err(NatDrop::NoSession);
        }
        let proto = Proto::of(h.proto).ok_or(NatDrop::UnsupportedProtocol)?;
        let l4 = ip.get_mut(h.hl..h.total).ok_or(NatDrop::Malformed)?;
        let inside = if proto == Proto::Icmp && is_icmp_error(l4)? {
            self.translate_error(l4, Dir::In, h.src, now)?
        } else {
            let t = Transport::parse(proto, l4, Dir::In)?;
            let slot = self
                .find_in(proto, t.local_port, now)
                .ok_or(NatDrop::NoSession)?;
            let s = self.session_mut(slot).ok_or(NatDrop::NoSession)?;
            if s.key.remote != h.src || s.key.remote_port != t.remote_port {
                return Err(NatDrop::NoSession);
            }
            s.last_seen = now;
            s.tcp = next_tcp_state(s.tcp, t.flags, Dir::In);
            let (inside, inside_port) = (s.key.inside, s.key.inside_port);
            t.rewrite(l4, h.dst, inside, inside_port);
            inside
        };
        rewrite_ip_addr(ip, ipv4_field::DST_ADDR, inside);
        Ok(())
    }

    /// Translates the quoted packet of an ICMP error message `msg` (header included) and its
    /// checksums. `outer_src` is the error's source: outbound it must be the inside host the
    /// quoted packet went to. Returns the inside host (the new outer destination, inbound).
    /// Sessions are not refreshed by errors. Nothing is written unless it succeeds.
    fn translate_error(
        &mut self,
        msg: &mut [u8],
        dir: Dir,
        outer_src: Ipv4Addr,
        now: u64,
    ) -> Result<Ipv4Addr, NatDrop> {
        let q = Quote::parse(msg)?;
        let proto = Proto::of(q.proto).ok_or(NatDrop::UnsupportedProtocol)?;
        // The quoted packet went the other way than the error.
        let (old_addr, new_addr, new_port) = match dir {
            Dir::In => {
                // Quoted: our translated outbound packet, ext:port -> remote.
                if q.src != self.cfg.external_addr {
                    return Err(NatDrop::NoSession);
                }
                let slot = self
                    .find_in(proto, q.src_port, now)
                    .ok_or(NatDrop::NoSession)?;
                let s = self.session(slot).ok_or(NatDrop::NoSession)?;
                if s.key.remote != q.dst || s.key.remote_port != q.dst_port {
                    return Err(NatDrop::NoSession);
                }
                (q.src, s.key.inside, s.key.inside_port)
            }
            Dir::Out => {
                // Quoted: an inbound packet after translation, remote -> inside:port.
                if proto == Proto::Icmp {
                    return Err(NatDrop::UnsupportedProtocol);
                }
                if q.dst != outer_src {
                    // The error must come from the host the quoted packet went to.
                    return Err(NatDrop::NoSession);
                }
                let key = FlowKey {
                    proto,
                    inside: q.dst,
                    inside_port: q.dst_port,
                    remote: q.src,
                    remote_port: q.src_port,
                };
                let slot = self.find_out(&key, now).ok_or(NatDrop::NoSession)?;
                let s = self.session(slot).ok_or(NatDrop::NoSession)?;
                (q.dst, self.cfg.external_addr, s.ext_port)
            }
        };
        q.rewrite(msg, dir, old_addr, new_addr, new_port);
        Ok(match dir {
            Dir::In => new_addr,
            Dir::Out => old_addr,
        })
    }
}

fn next_tcp_state(s: TcpState, f: tcp::Flags, dir: Dir) -> TcpState {
    if f.rst() || f.fin() {
        return TcpState::Closing;
    }
    match (s, dir) {
        (TcpState::Opening, Dir::In) if f.ack() => TcpState::Established,
        (TcpState::Closing, Dir::Out) if f.syn() && !f.ack() => TcpState::Opening,
        (s, _) => s,
    }
}

/// Offsets in the IPv4 header used by the rewriters.
mod ipv4_field {
    use super::Field;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Offsets in transport headers used by the rewriters.
mod l4_field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const UDP_CHECKSUM: Field = 6..8;
    pub const TCP_CHECKSUM: Field = 16..18;
    pub const ICMP_CHECKSUM: Field = 2..4;
    pub const ICMP_IDENT: Field = 4..6;
    /// Bytes of a transport header a rewrite needs (ports, or ICMP type to identifier).
    pub const MIN_QUOTE: usize = 8;
}

/// What the rewriters need from the outer IPv4 header.
struct Header {
    proto: IpProtocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    hl: usize,
    total: usize,
}

impl Header {
    fn parse(ip: &[u8]) -> Result<Header, NatDrop> {
        let p = ipv4::Packet::new_checked(ip).map_err(|_| NatDrop::Malformed)?;
        if p.version() != 4 || !p.verify_checksum() {
            return Err(NatDrop::Malformed);
        }
        if p.frag_offset() != 0 {
            return Err(NatDrop::Fragment);
        }
        Ok(Header {
            proto: p.next_header(),
            src: p.src_addr(),
            dst: p.dst_addr(),
            hl: usize::from(p.header_len()),
            total: usize::from(p.total_len()),
        })
    }
}

/// Writes `new` into the IPv4 address field `f` and updates the header checksum.
fn rewrite_ip_addr(ip: &mut [u8], f: Field, new: Ipv4Addr) {
    let old = Ipv4Addr::from(bytes::get_array::<4>(ip, f.clone()));
    bytes::set_bytes(ip, f, &new.octets());
    let ck = bytes::get_u16(ip, ipv4_field::CHECKSUM);
    bytes::set_u16(ip, ipv4_field::CHECKSUM, update_ipv4_addr(ck, old, new));
}

fn is_icmp_error(l4: &[u8]) -> Result<bool, NatDrop> {
    let p = icmpv4::Packet::new_checked(l4).map_err(|_| NatDrop::Malformed)?;
    Ok(matches!(
        p.msg_type(),
        icmpv4::Message::DstUnreachable
            | icmpv4::Message::TimeExceeded
            | icmpv4::Message::ParamProblem
    ))
}

/// The transport header of a (non-error) packet, seen from the masquerade: the local port is
/// the inside port (outbound) or the external port (inbound).
struct Transport {
    proto: Proto,
    local_port: u16,
    remote_port: u16,
    flags: tcp::Flags,
    /// The field holding the local port.
    port_field: Field,
}

impl Transport {
    fn parse(proto: Proto, l4: &[u8], dir: Dir) -> Result<Transport, NatDrop> {
        let (src, dst, flags) = match proto {
            Proto::Tcp => {
                let t = tcp::Packet::new_checked(l4).map_err(|_| NatDrop::Malformed)?;
                (t.src_port(), t.dst_port(), t.flags())
            }
            Proto::Udp => {
                // Only the header: a first fragment holds less than the length field says.
                if l4.len() < udp::HEADER_LEN {
                    return Err(NatDrop::Malformed);
                }
                let u = udp::Packet::new_unchecked(l4);
                (u.src_port(), u.dst_port(), tcp::Flags::default())
            }
            Proto::Icmp => {
                let p = icmpv4::Packet::new_checked(l4).map_err(|_| NatDrop::Malformed)?;
                let wanted = match dir {
                    Dir::Out => icmpv4::Message::EchoRequest,
                    Dir::In => icmpv4::Message::EchoReply,
                };
                if p.msg_type() != wanted {
                    return Err(NatDrop::UnsupportedProtocol);
                }
                return Ok(Transport {
                    proto,
                    local_port: p.echo_ident(),
                    remote_port: 0,
                    flags: tcp::Flags::default(),
                    port_field: l4_field::ICMP_IDENT,
                });
            }
        };
        Ok(match dir {
            Dir::Out => Transport {
                proto,
                local_port: src,
                remote_port: dst,
                flags,
                port_field: l4_field::SRC_PORT,
            },
            Dir::In => Transport {
                proto,
                local_port: dst,
                remote_port: src,
                flags,
                port_field: l4_field::DST_PORT,
            },
        })
    }

    /// Writes `new_port` as the local port and updates the transport checksum for it and for
    /// the address change `old_addr -> new_addr` (pseudo-header; not for ICMP).
    fn rewrite(&self, l4: &mut [u8], old_addr: Ipv4Addr, new_addr: Ipv4Addr, new_port: u16) {
        let old_port = bytes::get_u16(l4, self.port_field.clone());
        bytes::set_u16(l4, self.port_field.clone(), new_port);
        match self.proto {
            Proto::Tcp => {
                let ck = bytes::get_u16(l4, l4_field::TCP_CHECKSUM);
                let ck = update16(update_ipv4_addr(ck, old_addr, new_addr), old_port, new_port);
                bytes::set_u16(l4, l4_field::TCP_CHECKSUM, ck);
            }
            Proto::Udp => {
                let ck = bytes::get_u16(l4, l4_field::UDP_CHECKSUM);
                if ck != 0 {
                    let ck = update16(update_ipv4_addr(ck, old_addr, new_addr), old_port, new_port);
                    bytes::set_u16(
                        l4,
                        l4_field::UDP_CHECKSUM,
                        if ck == 0 { 0xffff } else { ck },
                    );
                }
            }
            Proto::Icmp => {
                let ck = bytes::get_u16(l4, l4_field::ICMP_CHECKSUM);
                bytes::set_u16(
                    l4,
                    l4_field::ICMP_CHECKSUM,
                    update16(ck, old_port, new_port),
                );
            }
        }
    }
}

/// The packet quoted in an ICMP error (offsets relative to the ICMP message).
struct Quote {
    proto: IpProtocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// For ICMP: the echo identifier as `src_port`, 0 as `dst_port`.
    src_port: u16,
    dst_port: u16,
    /// Offset of the quoted IP header and of its transport header.
    ip_at: usize,
    l4_at: usize,
}

impl Quote {
    fn parse(msg: &[u8]) -> Result<Quote, NatDrop> {
        let ip_at = icmpv4::HEADER_LEN;
        let q = msg.get(ip_at..).ok_or(NatDrop::Malformed)?;
        // The quote may be cut anywhere after the transport ports: check the fixed header and
        // the IHL by hand (new_checked would also want the whole total length).
        if q.len() < ipv4::HEADER_LEN {
            return Err(NatDrop::Malformed);
        }
        let p = ipv4::Packet::new_unchecked(q);
        let hl = usize::from(p.header_len());
        if p.version() != 4 || hl < ipv4::HEADER_LEN || q.len() < hl + l4_field::MIN_QUOTE {
            return Err(NatDrop::Malformed);
        }
        if p.frag_offset() != 0 {
            return Err(NatDrop::NoSession);
        }
        let l4 = q.get(hl..).ok_or(NatDrop::Malformed)?;
        let proto = p.next_header();
        let (src_port, dst_port) = match proto {
            IpProtocol::Tcp | IpProtocol::Udp => (
                bytes::get_u16(l4, l4_field::SRC_PORT),
                bytes::get_u16(l4, l4_field::DST_PORT),
            ),
            IpProtocol::Icmp => {
                let icmp = icmpv4::Packet::new_unchecked(l4);
                if icmp.msg_type() != icmpv4::Message::EchoRequest {
                    return Err(NatDrop::UnsupportedProtocol);
                }
                (icmp.echo_ident(), 0)
            }
            _ => return Err(NatDrop::UnsupportedProtocol),
        };
        Ok(Quote {
            proto,
            src: p.src_addr(),
            dst: p.dst_addr(),
            src_port,
            dst_port,
            ip_at,
            l4_at: ip_at + hl,
        })
    }

    /// Rewrites the quoted address (source for `Dir::In`, destination for `Dir::Out`) from
    /// `old_addr` to `new_addr` and the matching port to `new_port`, updating the quoted IP
    /// checksum, the quoted transport checksum when it is within the quote, and the ICMP
    /// checksum of the error for every changed word.
    fn rewrite(
        &self,
        msg: &mut [u8],
        dir: Dir,
        old_addr: Ipv4Addr,
        new_addr: Ipv4Addr,
        new_port: u16,
    ) {
        let mut w = Words { msg, icmp_ck: 0 };
        w.icmp_ck = bytes::get_u16(w.msg, l4_field::ICMP_CHECKSUM);
        let (addr_f, port_f) = match (dir, self.proto) {
            (Dir::In, IpProtocol::Icmp) => (ipv4_field::SRC_ADDR, l4_field::ICMP_IDENT),
            (Dir::In, _) => (ipv4_field::SRC_ADDR, l4_field::SRC_PORT),
            (Dir::Out, _) => (ipv4_field::DST_ADDR, l4_field::DST_PORT),
        };
        let ip = self.ip_at;
        let l4 = self.l4_at;
        let shift = |f: Field, by: usize| (f.start + by)..(f.end + by);
        // quoted address and quoted IP header checksum
        w.set32(shift(addr_f, ip), u32::from(new_addr));
        let ck_f = shift(ipv4_field::CHECKSUM, ip);
        let ck = w.get16(ck_f.clone());
        w.set16(ck_f, update_ipv4_addr(ck, old_addr, new_addr));
        // quoted port
        let port_f = shift(port_f, l4);
        let old_port = w.get16(port_f.clone());
        w.set16(port_f, new_port);
        // quoted transport checksum, if quoted
        let (ck_f, pseudo) = match self.proto {
            IpProtocol::Tcp => (shift(l4_field::TCP_CHECKSUM, l4), true),
            IpProtocol::Udp => (shift(l4_field::UDP_CHECKSUM, l4), true),
            _ => (shift(l4_field::ICMP_CHECKSUM, l4), false),
        };
        if w.msg.get(ck_f.clone()).is_some() {
            let ck = w.get16(ck_f.clone());
            let skip = self.proto == IpProtocol::Udp && ck == 0;
            if !skip {
                let mut ck = update16(ck, old_port, new_port);
                if pseudo {
                    ck = update_ipv4_addr(ck, old_addr, new_addr);
                }
                if self.proto == IpProtocol::Udp && ck == 0 {
                    ck = 0xffff;
                }
                w.set16(ck_f, ck);
            }
        }
        let ck = w.icmp_ck;
        bytes::set_u16(w.msg, l4_field::ICMP_CHECKSUM, ck);
    }
}

/// Writes 16/32-bit words of an ICMP message, keeping its checksum up to date (RFC 1624). All
/// offsets are even: the quote starts at 8, its fields at even offsets of it.
struct Words<'a> {
    msg: &'a mut [u8],
    icmp_ck: u16,
}

impl Words<'_> {
    fn get16(&self, f: Field) -> u16 {
        bytes::get_u16(self.msg, f)
    }

    fn set16(&mut self, f: Field, new: u16) {
        if self.msg.get(f.clone()).is_none() {
            return;
        }
        let old = bytes::get_u16(self.msg, f.clone());
        bytes::set_u16(self.msg, f, new);
        self.icmp_ck = update16(self.icmp_ck, old, new);
    }

    fn set32(&mut self, f: Field, new: u32) {
        let hi = f.start..f.start + 2;
        let lo = f.start + 2..f.end;
        self.set16(hi, (new >> 16) as u16);
        self.set16(lo, new as u16);
    }
}

#[cfg(test)]
mod tests;
