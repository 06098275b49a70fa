//! The per-connection masquerade in the worker (issue 21, `docs/masq.md`): three paths
//! through `crate::masq`'s tables.
//!
//! - out: a client's decrypted IPv4 packet (source in `MasqPlane::clients`, destination not
//!   in `exclude`) -> the user's access check -> `FamTable::outbound` -> LAN.
//! - in: a LAN packet to a served (or FAM-known) masquerading address -> `FamTable::inbound`
//!   (then the usual LAN path towards the client: host binding or SPD, seal), else
//!   `HamTable::route`: `Node(i)` -> sealed unchanged on link `i`'s outbound SA -> LAN, to
//!   that node's link address.
//! - link: ESP on the LAN port for a link SPI (`MasqLinkIn`) -> opened -> `FamTable::inbound`
//!   -> the usual LAN path towards the client.
//!
//! A table miss holds the packet (bounded per key and in total), reports `Event::MasqMiss`
//! (at most one per key per 100 ms), and runs it again when the answer (`MasqFam`,
//! `MasqRoute`) is applied; a held packet is dropped after 1 s. Owns the worker's masquerade
//! state. Never rewrites a packet of a flow the tables do not have; never panics on any bytes
//! (the tables refuse malformed packets untouched).

use core::net::{IpAddr, Ipv4Addr};
use std::collections::{HashMap, HashSet, VecDeque};

use super::parse::IpInfo;
use super::{Side, Verdict, Worker};
use crate::ids::{SaId, Spi};
use crate::masq::{forward, FamTable, HamTable, MasqMiss, MasqUsersTable, Route};
use crate::msg::{Event, Released, Reply};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::{ethernet, EtherType, IpProtocol};
use proto::masq::{FlowKey, Masq, MasqMissKey, MasqPlane};

/// Held packets per key at most.
pub const HOLD_PER_KEY: usize = 8;
/// Held packets per worker at most.
pub const HOLD_TOTAL: usize = 256;
/// A held packet is dropped this long after it was held (ns).
pub const HOLD_NS: u64 = 1_000_000_000;
/// At most one miss report per key in this long (ns).
pub const MISS_EVERY_NS: u64 = 100_000_000;

/// A held packet: an outbound one is the decrypted inner packet (no Ethernet header), an
/// inbound one the LAN frame as received.
struct Held<F> {
    key: MasqMissKey,
    at: u64,
    frame: F,
}

/// One worker's masquerade state (`Worker::masq`).
pub(super) struct MasqState<F> {
    plane: Option<MasqPlane>,
    fam: FamTable,
    /// Masquerading addresses the FAM table holds flows of, with their flow counts.
    fam_addrs: HashMap<Ipv4Addr, u32>,
    ham: HamTable,
    links: HashMap<u16, SaId>,
    link_in: HashSet<Spi>,
    users: Option<Box<MasqUsersTable>>,
    held: VecDeque<Held<F>>,
    held_per_key: HashMap<MasqMissKey, usize>,
    reported: HashMap<MasqMissKey, u64>,
}

impl<F> Default for MasqState<F> {
    fn default() -> Self {
        MasqState {
            plane: None,
            fam: FamTable::new(),
            fam_addrs: HashMap::new(),
            ham: HamTable::new(),
            links: HashMap::new(),
            link_in: HashSet::new(),
            users: None,
            held: VecDeque::new(),
            held_per_key: HashMap::new(),
            reported: HashMap::new(),
        }
    }
}

impl<F> MasqState<F> {
    /// A masquerading address this node receives answers for on its LAN port.
    fn receives(&self, a: Ipv4Addr) -> bool {
        self.plane.as_ref().is_some_and(|p| p.served.contains(&a))
            || self.fam_addrs.contains_key(&a)
    }

    /// Served addresses (answered for by ARP on the LAN port).
    pub(super) fn served(&self) -> &[Ipv4Addr] {
        self.plane.as_ref().map_or(&[], |p| &p.served)
    }
}

/// The masquerade's refusal as a drop reason.
fn miss_reason(m: MasqMiss) -> DropReason {
    match m {
        MasqMiss::Malformed => DropReason::MasqMalformed,
        MasqMiss::Protocol => DropReason::MasqUnsupported,
        MasqMiss::NoEntry => DropReason::MasqMissIn,
    }
}

impl<P: Port> Worker<P> {
    fn masq_state(&mut self) -> &mut MasqState<P::Frame> {
        self.masq.get_or_insert_with(Default::default)
    }

    /// Applies `Command::SetMasqPlane`.
    pub(super) fn masq_set_plane(&mut self, plane: Option<Box<MasqPlane>>) {
        match plane {
            Some(p) => self.masq_state().plane = Some(*p),
            None => {
                if let Some(m) = self.masq.take() {
                    let n = m.held.len() as u64;
                    self.counters.record_drops(DropReason::MasqHoldExpired, n);
                    if let Some(u) = m.users {
                        self.release(Released::MasqUsers(u));
                    }
                }
            }
        }
    }

    /// Applies `Command::MasqFam`, then runs the packets held for it.
    pub(super) fn masq_fam(&mut self, install: bool, flow: FlowKey, masq: Masq, now: u64) {
        let m = self.masq_state();
        let old = m.fam.get(&flow);
        if let Some(o) = old {
            if let Some(c) = m.fam_addrs.get_mut(&o.addr) {
                *c -= 1;
                if *c == 0 {
                    m.fam_addrs.remove(&o.addr);
                }
            }
        }
        if install {
            m.fam.install(flow, masq);
            *m.fam_addrs.entry(masq.addr).or_insert(0) += 1;
            self.masq_release(
                |k| *k == MasqMissKey::Out(flow) || *k == MasqMissKey::In(masq),
                now,
            );
        } else {
            m.fam.remove(&flow);
        }
    }

    /// Applies `Command::MasqRoute`, then runs the packets held for it.
    pub(super) fn masq_route(&mut self, masq: Masq, route: Option<Route>, now: u64) {
        self.masq_state().ham.set(masq, route);
        if route.is_some() {
            self.masq_release(|k| *k == MasqMissKey::In(masq), now);
        }
    }

    pub(super) fn masq_link(&mut self, node: u16, out_sa: Option<SaId>) {
        let m = self.masq_state();
        match out_sa {
            Some(id) => m.links.insert(node, id),
            None => m.links.remove(&node),
        };
    }

    pub(super) fn masq_link_in(&mut self, spi: Spi, install: bool) {
        let m = self.masq_state();
        if install {
            m.link_in.insert(spi);
        } else {
            m.link_in.remove(&spi);
        }
    }

    pub(super) fn masq_users(&mut self, t: Box<MasqUsersTable>) {
        if let Some(old) = self.masq_state().users.replace(t) {
            self.release(Released::MasqUsers(old));
        }
    }

    /// Out: a decrypted client packet (`f` holds the inner packet, `inner` its parse). None:
    /// not masqueraded (the masquerade is off, IPv6, a source that is no client, an excluded
    /// destination): it goes its usual way.
    #[inline]
    pub(super) fn masq_decrypted(&mut self, f: &mut P::Frame, inner: &IpInfo) -> Option<Verdict> {
        let m = self.masq.as_deref()?;
        let p = m.plane.as_ref()?;
        if inner.ipv6 {
            return None;
        }
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (inner.key.src, inner.key.dst) else {
            return None;
        };
        if !p.clients.iter().any(|c| c.contains(inner.key.src))
            || p.exclude.iter().any(|c| c.contains(inner.key.dst))
        {
            return None;
        }
        if let Some(u) = m.users.as_deref() {
            match u.allows(src, dst, inner.key.proto, inner.key.dst_port) {
                Some(true) => {}
                Some(false) => return Some(Verdict::Drop(DropReason::MasqDenied)),
                None => return Some(Verdict::Drop(DropReason::MasqNoUser)),
            }
        }
        Some(self.masq_out(f))
    }

    /// The FAM's outbound rewrite of a client packet (`f`: the IP packet) and its way to the
    /// LAN; a miss holds it.
    fn masq_out(&mut self, f: &mut P::Frame) -> Verdict {
        let Some(m) = self.masq.as_deref() else {
            return Verdict::Drop(DropReason::MasqMalformed);
        };
        match m.fam.outbound(f.data_mut()) {
            Ok(_) => {
                self.counters.count(Traffic::MasqRewrittenOut, 1);
                self.forward(f, Side::Lan, false)
            }
            Err(MasqMiss::NoEntry) => match FamTable::flow_of(f.data()) {
                Ok(flow) => Verdict::MasqHold(MasqMissKey::Out(flow)),
                Err(e) => Verdict::Drop(miss_reason(e)),
            },
            Err(e) => Verdict::Drop(miss_reason(e)),
        }
    }

    /// In and link: a LAN frame (Ethernet header included). None: not the masquerade's (or
    /// rewritten towards its client): the usual LAN path.
    #[inline]
    pub(super) fn masq_lan(&mut self, f: &mut P::Frame, now: u64) -> Option<Verdict> {
        let m = self.masq.as_deref()?;
        m.plane.as_ref()?;
        let data = f.data();
        if ethernet::Frame::new_checked(data).ok()?.ethertype() != EtherType::Ipv4 {
            return None;
        }
        let ip = data.get(ethernet::HEADER_LEN..)?;
        let hl = usize::from(ip.first()? & 0x0f) * 4;
        let proto = *ip.get(9)?;
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
        if proto == u8::from(IpProtocol::Esp) && !m.link_in.is_empty() {
            let spi = Spi(u32::from_be_bytes(ip.get(hl..hl + 4)?.try_into().ok()?));
            if m.link_in.contains(&spi) {
                return Some(self.masq_link_rx(f, now));
            }
        }
        if !m.receives(dst) {
            return None;
        }
        let Some(ipm) = f.data_mut().get_mut(ethernet::HEADER_LEN..) else {
            return Some(Verdict::Drop(DropReason::MalformedIp));
        };
        let m = self.masq.as_deref()?;
        match m.fam.inbound(ipm) {
            Ok(_) => {
                self.counters.count(Traffic::MasqRewrittenIn, 1);
                return None;
            }
            Err(MasqMiss::NoEntry) => {}
            Err(e) => return Some(Verdict::Drop(miss_reason(e))),
        }
        Some(match m.ham.route(ipm) {
            Ok(Route::Node(i)) => self.masq_forward(f, i),
            // The FAM table should have had it (its `MasqFam` is on its way): held.
            Ok(Route::Local) | Err(MasqMiss::NoEntry) => match in_key(ipm) {
                Some(k) => Verdict::MasqHold(MasqMissKey::In(k)),
                None => Verdict::Drop(DropReason::MasqMalformed),
            },
            Err(e) => Verdict::Drop(miss_reason(e)),
        })
    }

    /// HAM: the packet in `f` (LAN frame), unchanged, sealed on node `i`'s link SA and sent
    /// on the LAN to that node's link address.
    fn masq_forward(&mut self, f: &mut P::Frame, i: u16) -> Verdict {
        let Some(id) = self.masq.as_deref().and_then(|m| m.links.get(&i).copied()) else {
            return Verdict::Drop(DropReason::MasqLinkNoSa);
        };
        let Some(sa) = self.sad.outbound_mut(id) else {
            return Verdict::Drop(DropReason::MasqLinkNoSa);
        };
        if !f.adj(ethernet::HEADER_LEN) {
            return Verdict::Drop(DropReason::MalformedIp);
        }
        let inner_len = f.len();
        if let Err(r) = forward::seal_to_fam(sa, f) {
            sa.counters.record_drop(r);
            return Verdict::Drop(r);
        }
        sa.counters.last_used.set(self.now.max(1));
        self.counters.count(Traffic::MasqForwarded, 1);
        self.counters.count(Traffic::Encrypted, 1);
        self.counters
            .count(Traffic::EncryptedBytes, inner_len as u64);
        self.forward(f, Side::Lan, false)
    }

    /// FAM: ESP from a HAM on a link SA (`f`: the LAN frame): opened, rewritten to the
    /// client, then the usual LAN path towards it.
    fn masq_link_rx(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        if !f.adj(ethernet::HEADER_LEN) {
            return Verdict::Drop(DropReason::MalformedIp);
        }
        if let Err(r) = forward::open_from_ham(&mut self.sad, f, now) {
            return Verdict::Drop(r);
        }
        self.counters.count(Traffic::MasqLinkIn, 1);
        self.counters.count(Traffic::Decrypted, 1);
        let Some(m) = self.masq.as_deref() else {
            return Verdict::Drop(DropReason::MasqMissIn);
        };
        if let Err(e) = m.fam.inbound(f.data_mut()) {
            return Verdict::Drop(miss_reason(e));
        }
        self.counters.count(Traffic::MasqRewrittenIn, 1);
        // Back to a LAN frame (an Ethernet header of IPv4: the outbound path reads only its
        // type), then the way of every LAN packet towards a client.
        if !f.prepend(ethernet::HEADER_LEN) {
            return Verdict::Drop(DropReason::NoBufferRoom);
        }
        if let Some(t) = f.data_mut().get_mut(12..14) {
            t.copy_from_slice(&0x0800u16.to_be_bytes());
        }
        self.outbound(f, now)
    }

    /// Holds `f` for `key` (a table miss) and reports the miss (rate-limited).
    pub(super) fn masq_hold(&mut self, f: P::Frame, key: MasqMissKey) {
        let now = self.now;
        let worker = self.id;
        let Some(m) = self.masq.as_deref_mut() else {
            self.counters.record_drop(DropReason::MasqHoldExpired);
            return;
        };
        let n = m.held_per_key.entry(key).or_insert(0);
        if *n >= HOLD_PER_KEY || m.held.len() >= HOLD_TOTAL {
            self.counters.record_drop(DropReason::MasqHoldFull);
        } else {
            *n += 1;
            m.held.push_back(Held {
                key,
                at: now,
                frame: f,
            });
            self.counters.count(Traffic::MasqHeld, 1);
        }
        let due = m
            .reported
            .get(&key)
            .is_none_or(|t| now.saturating_sub(*t) >= MISS_EVERY_NS);
        if due {
            if m.reported.len() >= 4 * HOLD_TOTAL {
                m.reported
                    .retain(|_, t| now.saturating_sub(*t) < MISS_EVERY_NS);
            }
            m.reported.insert(key, now);
            self.counters.count(Traffic::MasqMissReported, 1);
            self.reply(Reply::Event(Event::MasqMiss { worker, key }));
        }
    }

    /// Runs the held packets whose key `matches` again (an answer came).
    fn masq_release(&mut self, matches: impl Fn(&MasqMissKey) -> bool, now: u64) {
        let Some(m) = self.masq.as_deref_mut() else {
            return;
        };
        if m.held.is_empty() {
            return;
        }
        let mut run = Vec::new();
        let mut keep = VecDeque::with_capacity(m.held.len());
        for h in m.held.drain(..) {
            if matches(&h.key) {
                run.push(h);
            } else {
                keep.push_back(h);
            }
        }
        m.held = keep;
        for h in &run {
            m.held_per_key.remove(&h.key);
            m.reported.remove(&h.key);
        }
        for h in run {
            self.counters.count(Traffic::MasqReleased, 1);
            let mut f = h.frame;
            match h.key {
                MasqMissKey::Out(_) => {
                    let v = self.masq_out(&mut f);
                    self.dispatch(f, Side::Wan, v);
                }
                MasqMissKey::In(_) => self.process(f, Side::Lan, now),
            }
        }
        // Those that went the LAN's way may have been parked for their seal.
        self.finish_burst(now);
    }

    /// Drops held packets older than [`HOLD_NS`].
    pub(super) fn masq_housekeeping(&mut self, now: u64) {
        let Some(m) = self.masq.as_deref_mut() else {
            return;
        };
        let mut n = 0;
        while m
            .held
            .front()
            .is_some_and(|h| now.saturating_sub(h.at) >= HOLD_NS)
        {
            if let Some(h) = m.held.pop_front() {
                if let Some(c) = m.held_per_key.get_mut(&h.key) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        m.held_per_key.remove(&h.key);
                    }
                }
                n += 1;
            }
        }
        if n > 0 {
            self.counters.record_drops(DropReason::MasqHoldExpired, n);
        }
    }
}

/// The masquerading side of an inbound packet (its destination, protocol and port).
fn in_key(ip: &[u8]) -> Option<Masq> {
    FamTable::flow_of(ip).ok().map(|f| Masq {
        proto: f.proto,
        addr: f.server,
        port: f.server_port,
    })
}
