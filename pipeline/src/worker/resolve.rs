//! Next hops on links whose neighbour is not configured: which address a frame goes to (the
//! destination if it is on the link, else the link's gateway), and that address's MAC from the
//! link's neighbour caches (`crate::neighbor`: ARP, neighbour discovery), with the frames the
//! caches ask for (solicitations, probes, announcements) built and sent here.
//!
//! Owns the per-link caches and the memo of each family's last destination: a forwarded frame
//! to the memoised destination (the peer, for all of one tunnel's ESP) takes its MAC from the
//! memo, without choosing a next hop or hashing, for [`MEMO_NS`]; then one frame goes through
//! the cache again, which is how the cache sees the entry in use (RFC 4861's DELAY and PROBE).
//! Anything the cache learns or times out drops the memos.
//!
//! Never blocks, never holds more than the cache's limits (a few frames per unresolved
//! address), never sends a frame with a guessed MAC, never announces an address that is not
//! ours.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::emit::push_eth_to;
use super::icmp_error::{ip_of, IcmpError};
use super::{Side, Worker};
use crate::neighbor::frames::{self, ARP_FRAME_LEN, ND_FRAME_LEN};
use crate::neighbor::{
    Action, Hint, NeighborCache, NeighborConfig, NeighborCounters, NeighborDrop, Resolution,
};
use crate::port::{Frame, Port};
use crate::spd::Prefix;
use crate::stats::{CoreCounters, DropReason, L3Stat, Traffic};
use crate::wire::{ethernet, EtherType};

/// How long a memoised destination's MAC is used without asking the cache.
pub const MEMO_NS: u64 = 100_000_000;

/// Where a link's traffic goes, from the config.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Subnets on the link: destinations inside are their own next hop.
    pub on_link: Vec<Prefix>,
    /// The next hop of everything else, per family.
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Configured neighbours (never replaced by what the link says); each is on the link.
    pub statics: Vec<(IpAddr, [u8; 6])>,
}

impl Routes {
    #[inline]
    fn next_hop(&self, dst: IpAddr) -> Option<IpAddr> {
        if self.on_link.iter().any(|p| p.contains(dst)) {
            return Some(dst);
        }
        let gw = match dst {
            IpAddr::V4(_) => self.gateway4.map(IpAddr::V4),
            IpAddr::V6(_) => self.gateway6.map(IpAddr::V6),
        };
        gw.or_else(|| self.statics.iter().any(|(a, _)| *a == dst).then_some(dst))
    }
}

/// Neighbour resolution of a worker: the cache limits, and the routes of each link that
/// resolves (None: the link's configured `neighbor` MAC for everything).
#[derive(Clone, Debug, Default)]
pub struct NeighborSetup {
    pub cache: NeighborConfig,
    pub lan: Option<Routes>,
    pub wan: Option<Routes>,
}

/// The last destination of one family (as an integer: one compare) and its next hop's MAC.
#[derive(Clone, Copy)]
struct Memo<T> {
    dst: T,
    mac: [u8; 6],
    until: u64,
}

/// One link's resolution.
pub(super) struct LinkNeighbors<F> {
    routes: Routes,
    v4: NeighborCache<Ipv4Addr, F>,
    v6: NeighborCache<Ipv6Addr, F>,
    memo4: Option<Memo<u32>>,
    memo6: Option<Memo<u128>>,
}

impl<F> LinkNeighbors<F> {
    fn new(cfg: &NeighborConfig, routes: Routes) -> Result<Self, String> {
        let mut v4 = NeighborCache::new(cfg.clone()).map_err(|e| e.to_string())?;
        let mut v6 = NeighborCache::new(cfg.clone()).map_err(|e| e.to_string())?;
        for (a, mac) in &routes.statics {
            let r = match a {
                IpAddr::V4(v) => v4.add_permanent(*v, *mac),
                IpAddr::V6(v) => v6.add_permanent(*v, *mac),
            };
            r.map_err(|e| format!("static neighbour {a}: {e}"))?;
        }
        Ok(LinkNeighbors {
            routes,
            v4,
            v6,
            memo4: None,
            memo6: None,
        })
    }

    /// The MAC of the IP packet at the start of `ip` if its destination is the memoised one.
    #[inline]
    fn memo(&self, ip: &[u8], ipv6: bool, now: u64) -> Option<[u8; 6]> {
        self.memo_to(ip_dst(ip, ipv6)?, now)
    }

    /// The memoised MAC for destination `dst`, if it is the memoised one.
    #[inline]
    pub(super) fn memo_to(&self, dst: IpAddr, now: u64) -> Option<[u8; 6]> {
        match dst {
            IpAddr::V6(d) => {
                let m = self.memo6.as_ref()?;
                (m.dst == u128::from(d) && now < m.until).then_some(m.mac)
            }
            IpAddr::V4(d) => {
                let m = self.memo4.as_ref()?;
                (m.dst == u32::from(d) && now < m.until).then_some(m.mac)
            }
        }
    }

    fn remember(&mut self, dst: IpAddr, mac: [u8; 6], now: u64) {
        let until = now.saturating_add(MEMO_NS);
        match dst {
            IpAddr::V4(d) => {
                self.memo4 = Some(Memo {
                    dst: u32::from(d),
                    mac,
                    until,
                })
            }
            IpAddr::V6(d) => {
                self.memo6 = Some(Memo {
                    dst: u128::from(d),
                    mac,
                    until,
                })
            }
        }
    }

    fn forget(&mut self) {
        self.memo4 = None;
        self.memo6 = None;
    }

    fn next_deadline(&self) -> u64 {
        let a = self.v4.next_deadline().unwrap_or(u64::MAX);
        let b = self.v6.next_deadline().unwrap_or(u64::MAX);
        a.min(b)
    }
}

/// The destination address of the IP packet at the start of `ip`.
#[inline]
fn ip_dst(ip: &[u8], ipv6: bool) -> Option<IpAddr> {
    if ipv6 {
        let b: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
        Some(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        let b: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(b)))
    }
}

/// What became of a frame handed to a link.
pub(super) enum Handoff {
    /// Addressed: send it.
    Send,
    /// Its next hop must be resolved first (the frame has its Ethernet header, destination
    /// unset).
    Resolve(IpAddr),
    Drop(DropReason),
}

impl<P: Port> Worker<P> {
    /// Sets up neighbour resolution (None: every link uses its configured neighbour MAC).
    pub fn set_neighbors(&mut self, setup: Option<NeighborSetup>) -> Result<(), String> {
        let mk = |r: Option<Routes>, cfg: &NeighborConfig| {
            r.map(|r| LinkNeighbors::new(cfg, r).map(Box::new))
                .transpose()
        };
        match setup {
            None => self.resolvers = [None, None],
            Some(s) => {
                let lan = mk(s.lan, &s.cache).map_err(|e| format!("lan: {e}"))?;
                let wan = mk(s.wan, &s.cache).map_err(|e| format!("wan: {e}"))?;
                self.resolvers = [lan, wan];
            }
        }
        Ok(())
    }

    /// Adds the Ethernet header toward `side`'s next hop for the IP packet in `f` (starting
    /// at its IP header).
    #[inline]
    pub(super) fn address(&mut self, f: &mut P::Frame, side: Side, ipv6: bool) -> Handoff {
        let link = match side {
            Side::Lan => &self.lan_link,
            Side::Wan => &self.wan_link,
        };
        let Some(r) = self.resolvers[side as usize].as_ref() else {
            return if push_eth_to(f, link.mac, link.neighbor, ipv6) {
                Handoff::Send
            } else {
                Handoff::Drop(DropReason::NoBufferRoom)
            };
        };
        if let Some(mac) = r.memo(f.data(), ipv6, self.now) {
            return if push_eth_to(f, link.mac, mac, ipv6) {
                Handoff::Send
            } else {
                Handoff::Drop(DropReason::NoBufferRoom)
            };
        }
        let Some(dst) = ip_dst(f.data(), ipv6) else {
            return Handoff::Drop(DropReason::MalformedIp);
        };
        let Some(hop) = r.routes.next_hop(dst) else {
            return Handoff::Drop(DropReason::NoRoute);
        };
        if !push_eth_to(f, link.mac, [0; 6], ipv6) {
            return Handoff::Drop(DropReason::NoBufferRoom);
        }
        Handoff::Resolve(hop)
    }

    /// A frame (with its Ethernet header) for `hop` on `side`: sent, queued until `hop`
    /// resolves, or dropped with the cache's reason.
    pub(super) fn resolve_and_send(&mut self, side: Side, hop: IpAddr, f: P::Frame) {
        let now = self.now;
        let Some(r) = self.resolvers[side as usize].as_mut() else {
            self.counters.record_drop(DropReason::NeighborUnresolved);
            return;
        };
        let res = match hop {
            IpAddr::V4(a) => r.v4.resolve(a, f, now),
            IpAddr::V6(a) => r.v6.resolve(a, f, now),
        };
        match res {
            Resolution::Ready(mac, mut f) => {
                // The memo is by destination: the packet's, behind its Ethernet header.
                let ipv6 = hop.is_ipv6();
                if let Some(dst) = f
                    .data()
                    .get(ethernet::HEADER_LEN..)
                    .and_then(|ip| ip_dst(ip, ipv6))
                {
                    r.remember(dst, mac, now);
                }
                set_dst(&mut f, mac);
                self.txq(side).push_back(f);
            }
            Resolution::Queued => self.counters.record_drop(DropReason::NeighborQueued),
            Resolution::Dropped(d) => self.counters.record_drop(neighbor_reason(d)),
        }
        self.neighbor_actions(side);
    }

    /// Sends a frame the worker built itself (ICMP errors, IKE), IP header first.
    pub(super) fn send_originated(&mut self, side: Side, mut f: P::Frame, ipv6: bool) -> bool {
        match self.address(&mut f, side, ipv6) {
            Handoff::Send => {
                self.txq(side).push_back(f);
                true
            }
            Handoff::Resolve(hop) => {
                self.resolve_and_send(side, hop, f);
                true
            }
            Handoff::Drop(r) => {
                self.counters.record_drop(r);
                false
            }
        }
    }

    fn txq(&mut self, side: Side) -> &mut std::collections::VecDeque<P::Frame> {
        match side {
            Side::Lan => &mut self.lan_txq,
            Side::Wan => &mut self.wan_txq,
        }
    }

    /// What a received ARP or neighbour discovery frame says about its sender, for `side`'s
    /// caches.
    pub(super) fn learn(&mut self, frame: &[u8], side: Side, arp: bool) {
        let (mac, a4, a6) = {
            let link = match side {
                Side::Lan => &self.lan_link,
                Side::Wan => &self.wan_link,
            };
            (link.mac, link.addr4, link.addr6)
        };
        let mut ours6: Vec<Ipv6Addr> = Vec::new();
        let now = self.now;
        let Some(r) = self.resolvers[side as usize].as_mut() else {
            return;
        };
        let changed = if arp {
            frames::arp_hint(frame, mac, a4).map(|h: Hint<Ipv4Addr>| r.v4.learn(h, now))
        } else {
            ours6.extend(a6);
            frames::nd_hint(frame, &ours6).map(|h| r.v6.learn(h, now))
        };
        if changed.is_some_and(|l| l != crate::neighbor::Learned::Ignored) {
            r.forget();
            self.neighbor_actions(side);
        }
    }

    /// Runs the caches' timers.
    pub(super) fn neighbor_housekeeping(&mut self, now: u64) {
        for side in [Side::Lan, Side::Wan] {
            let Some(r) = self.resolvers[side as usize].as_mut() else {
                continue;
            };
            if r.next_deadline() > now {
                continue;
            }
            r.v4.handle_timeout(now);
            r.v6.handle_timeout(now);
            r.forget();
            self.neighbor_actions(side);
        }
    }

    /// Takes what `side`'s caches ask for: solicitations sent, released frames sent,
    /// unresolved ones gone (counted by the cache), and publishes the counters.
    fn neighbor_actions(&mut self, side: Side) {
        let (mac, a4, a6) = match side {
            Side::Lan => (self.lan_link.mac, self.lan_link.addr4, self.lan_link.addr6),
            Side::Wan => (self.wan_link.mac, self.wan_link.addr4, self.wan_link.addr6),
        };
        loop {
            let Some(r) = self.resolvers[side as usize].as_mut() else {
                return;
            };
            let step = match r.v4.poll_action() {
                Some(a) => Some(widen(a, IpAddr::V4)),
                None => r.v6.poll_action().map(|a| widen(a, IpAddr::V6)),
            };
            let Some(action) = step else { break };
            match action {
                Action::Solicit { target, unicast } => {
                    self.solicit(side, mac, a4, a6, target, unicast);
                }
                Action::Transmit { mac, mut frame } => {
                    set_dst(&mut frame, mac);
                    self.txq(side).push_back(frame);
                }
                Action::Unreachable { frame, .. } => {
                    // Its sender is on the other side.
                    let ipv6 = ethernet::Frame::new_checked(frame.data())
                        .is_ok_and(|e| e.ethertype() == EtherType::Ipv6);
                    let from = match side {
                        Side::Lan => Side::Wan,
                        Side::Wan => Side::Lan,
                    };
                    self.send_icmp_error(IcmpError::Unreachable, ip_of(&frame), ipv6, from);
                }
            }
        }
        self.publish_neighbors(side);
    }

    fn solicit(
        &mut self,
        side: Side,
        mac: [u8; 6],
        a4: Option<Ipv4Addr>,
        a6: Option<Ipv6Addr>,
        target: IpAddr,
        unicast: Option<[u8; 6]>,
    ) {
        let port = match side {
            Side::Lan => &mut self.lan,
            Side::Wan => &mut self.wan,
        };
        let Some(mut f) = port.alloc() else {
            self.counters.record_drop(DropReason::NoBufferRoom);
            return;
        };
        let len = f.len();
        let built = match target {
            IpAddr::V4(t) => a4.and_then(|ours| {
                f.append(ARP_FRAME_LEN.saturating_sub(len))
                    .then(|| frames::arp_request(f.data_mut(), mac, ours, t, unicast))
                    .flatten()
            }),
            IpAddr::V6(t) => a6.and_then(|ours| {
                f.append(ND_FRAME_LEN.saturating_sub(len))
                    .then(|| frames::neighbor_solicitation(f.data_mut(), mac, ours, t, unicast))
                    .flatten()
            }),
        };
        // None: no address of that family on the link to ask from. Nothing is sent, and the
        // frames waiting for the answer go, counted, when the cache gives up.
        if let Some(n) = built {
            f.truncate(n);
            self.counters.count(Traffic::NeighborRequests, 1);
            self.txq(side).push_back(f);
        }
    }

    /// Gratuitous ARP / unsolicited neighbour advertisements for `addrs` on `side` (RFC 5227
    /// announcement, RFC 4861 7.2.6): hosts that cached an address we took over learn our
    /// MAC. Refused for an address that is not ours on that side.
    pub(super) fn announce(&mut self, side: Side, addrs: &[IpAddr]) -> Result<(), &'static str> {
        let link = match side {
            Side::Lan => self.lan_link,
            Side::Wan => self.wan_link,
        };
        let ours = |a: &IpAddr| match a {
            IpAddr::V4(v) => link.addr4 == Some(*v),
            IpAddr::V6(v) => link.addr6 == Some(*v),
        } || (matches!(side, Side::Wan) && self.wan_also.contains(a))
            || (matches!(side, Side::Lan)
                && matches!(a, IpAddr::V4(v) if self.masq.as_deref().is_some_and(|m| m.served().contains(v))));
        if !addrs.iter().all(ours) {
            return Err("announce: not one of our addresses on that side");
        }
        for a in addrs {
            let port = match side {
                Side::Lan => &mut self.lan,
                Side::Wan => &mut self.wan,
            };
            let Some(mut f) = port.alloc() else {
                self.counters.record_drop(DropReason::NoBufferRoom);
                continue;
            };
            let len = f.len();
            let built = match a {
                IpAddr::V4(v) => f
                    .append(ARP_FRAME_LEN.saturating_sub(len))
                    .then(|| frames::gratuitous_arp(f.data_mut(), link.mac, *v))
                    .flatten(),
                IpAddr::V6(v) => f
                    .append(ND_FRAME_LEN.saturating_sub(len))
                    .then(|| frames::unsolicited_advertisement(f.data_mut(), link.mac, *v, true))
                    .flatten(),
            };
            if let Some(n) = built {
                f.truncate(n);
                self.announced = self.announced.wrapping_add(1);
                self.txq(side).push_back(f);
            }
        }
        self.counters
            .set_l3(L3Stat::NeighborAnnounced, self.announced);
        Ok(())
    }

    fn publish_neighbors(&self, side: Side) {
        let Some(r) = self.resolvers[side as usize].as_ref() else {
            return;
        };
        publish(
            &self.counters,
            side,
            r.v4.counters(),
            r.v6.counters(),
            r.v4.len() + r.v6.len(),
        );
    }
}

fn publish(c: &CoreCounters, side: Side, a: &NeighborCounters, b: &NeighborCounters, n: usize) {
    use L3Stat::*;
    let s = |x: fn(&NeighborCounters) -> u64| x(a).wrapping_add(x(b));
    let [entries, resolved, no_answer, unresolved, queue, solicits, probes, gleaned, changed, evicted] =
        match side {
            Side::Lan => [
                NeighborLanEntries,
                NeighborLanResolved,
                NeighborLanNoAnswer,
                NeighborLanUnresolved,
                NeighborLanQueueDrops,
                NeighborLanSolicits,
                NeighborLanProbes,
                NeighborLanGleaned,
                NeighborLanMacChanged,
                NeighborLanEvicted,
            ],
            Side::Wan => [
                NeighborWanEntries,
                NeighborWanResolved,
                NeighborWanNoAnswer,
                NeighborWanUnresolved,
                NeighborWanQueueDrops,
                NeighborWanSolicits,
                NeighborWanProbes,
                NeighborWanGleaned,
                NeighborWanMacChanged,
                NeighborWanEvicted,
            ],
        };
    c.set_l3(entries, n as u64);
    c.set_l3(resolved, s(|x| x.resolved));
    c.set_l3(no_answer, s(|x| x.no_answer));
    c.set_l3(unresolved, s(|x| x.drop_count(NeighborDrop::Unresolved)));
    c.set_l3(
        queue,
        s(|x| x.drop_count(NeighborDrop::QueueOverflow) + x.drop_count(NeighborDrop::CacheFull)),
    );
    c.set_l3(solicits, s(|x| x.solicits));
    c.set_l3(probes, s(|x| x.probes));
    c.set_l3(gleaned, s(|x| x.gleaned));
    c.set_l3(changed, s(|x| x.mac_changed));
    c.set_l3(evicted, s(|x| x.evicted));
}

/// An action of one family's cache, its address widened.
fn widen<A, F>(a: Action<A, F>, ip: fn(A) -> IpAddr) -> Action<IpAddr, F> {
    match a {
        Action::Solicit { target, unicast } => Action::Solicit {
            target: ip(target),
            unicast,
        },
        Action::Transmit { mac, frame } => Action::Transmit { mac, frame },
        Action::Unreachable { target, frame } => Action::Unreachable {
            target: ip(target),
            frame,
        },
    }
}

#[inline]
fn set_dst<F: Frame>(f: &mut F, mac: [u8; 6]) {
    if let Ok(mut eth) = ethernet::Frame::new_checked(f.data_mut()) {
        eth.set_dst_addr(mac);
    }
}

/// The drop reason of a frame the cache refused at once.
fn neighbor_reason(d: NeighborDrop) -> DropReason {
    match d {
        NeighborDrop::QueueOverflow | NeighborDrop::QueueFull => DropReason::NeighborQueueFull,
        NeighborDrop::Unresolved => DropReason::NeighborUnresolved,
        NeighborDrop::CacheFull => DropReason::NeighborCacheFull,
    }
}
