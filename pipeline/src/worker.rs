//! The worker: one per core, pinned, poll-mode, run to completion, never blocking.
//!
//! A gateway worker owns one rx/tx queue of the clear-side port (LAN) and one of the protected
//! side (WAN), its SAD, its compiled SPD and its NAT table. Each turn of [`Worker::poll`]:
//! apply pending control commands (acknowledged by generation), receive a burst from each
//! port, classify and transform every frame in place, and transmit. A frame that cannot be
//! forwarded leaves with exactly one [`DropReason`], counted per core and, where an SA is
//! involved, per SA. A full output link holds frames in the worker's queue and pauses the rx
//! that feeds it: back-pressure, not loss.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rtrb::{Consumer, Producer};

use crate::esp::tunnel::{self, InnerMeta, Opened, NH_IPV4, NH_IPV6};
use crate::ids::{SaId, Spi};
use crate::msg::{
    Command, Datagram, Direction, Envelope, Event, LifetimeKind, LifetimeLimit, Released, Reply,
};
use crate::nat::{Masquerade, NatDrop};
use crate::port::{Frame, Port};
use crate::sad::Sad;
use crate::spd::{Action, FlowKey, Prefix, Spd};
use crate::stats::{CoreCounters, Crossing, DropReason, SaCounters, Traffic};
use crate::wire::{checksum, ethernet, icmpv4, icmpv6, ipv4, ipv6, natt, udp, EtherType};

/// Static facts of one link (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub mac: [u8; 6],
    /// Next hop's MAC (static neighbour; ARP/ND come with the real ports).
    pub neighbor: [u8; 6],
    pub addr4: Option<Ipv4Addr>,
    pub addr6: Option<Ipv6Addr>,
    /// IP MTU.
    pub mtu: u16,
}

/// Frames per rx burst.
pub const BURST: usize = 32;

/// Host bindings by destination: one exact-match table per family, keyed by the address as an
/// integer (hashing a `u32` is one multiply; hashing an `IpAddr` fed its discriminant and bytes
/// to the hasher piece by piece, ~6 ns per packet), with foldhash and a per-process random
/// seed (the keys are the control plane's, the lookups any LAN host's).
#[derive(Default)]
struct HostMap {
    v4: std::collections::HashMap<u32, (Prefix, SaId), foldhash::fast::RandomState>,
    v6: std::collections::HashMap<u128, (Prefix, SaId), foldhash::fast::RandomState>,
}

impl HostMap {
    #[inline]
    fn get(&self, a: &IpAddr) -> Option<&(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.get(&u32::from(*v)),
            IpAddr::V6(v) => self.v6.get(&u128::from(*v)),
        }
    }

    fn insert(&mut self, a: IpAddr, b: (Prefix, SaId)) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.insert(u32::from(v), b),
            IpAddr::V6(v) => self.v6.insert(u128::from(v), b),
        }
    }

    fn remove(&mut self, a: &IpAddr) -> Option<(Prefix, SaId)> {
        match a {
            IpAddr::V4(v) => self.v4.remove(&u32::from(*v)),
            IpAddr::V6(v) => self.v6.remove(&u128::from(*v)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}
/// Above this many SAs a burst's SA state is read ahead ([`Worker::warm_burst`]). Measured
/// (64 B, `roamgate perf point`, this VM: 1 MB L2 per core, 32 MB L3): at 1000 SAs the pass
/// cost 7%, at ~3000 it broke even, at 10000 it saved a third of the time per packet, at
/// 100000 a fifth to a half.
const WARM_SAS_ABOVE: usize = 3000;
/// A tx queue longer than this pauses the rx that feeds it.
const TXQ_HIGH: usize = 4 * BURST;

/// The control side of a worker: where its commands come from and its replies go.
pub struct ControlLink {
    pub commands: Consumer<Envelope>,
    pub replies: Producer<Reply>,
    pub punt: Option<Producer<Datagram>>,
    /// IKE datagrams the control plane wants sent from this worker's WAN port.
    pub transmit: Option<Consumer<Datagram>>,
}

/// One SA's counters as a worker publishes them.
#[derive(Clone, Debug)]
pub struct SaCounterEntry {
    pub id: SaId,
    pub spi: Spi,
    pub direction: Direction,
    pub counters: Arc<SaCounters>,
}

/// The per-SA counters of the SAs a worker holds, republished when its SAs change.
pub type SaCounterList = Arc<std::sync::Mutex<Vec<SaCounterEntry>>>;

/// Read-only views of a worker that other threads hold.
#[derive(Clone)]
pub struct WorkerHandle {
    pub id: u16,
    pub counters: Arc<CoreCounters>,
    pub sa_counters: SaCounterList,
}

pub struct Worker<P: Port> {
    id: u16,
    lan: P,
    wan: P,
    lan_link: Link,
    wan_link: Link,
    sad: Sad,
    spd: Box<Spd>,
    nat: Option<Box<Masquerade>>,
    /// A client's virtual IP: LAN flows are masqueraded to it inside the tunnel.
    vip_nat: Option<Box<Masquerade>>,
    /// Host bindings (road warriors' virtual IPs): destination -> (allowed sources, SA),
    /// looked up before the SPD.
    hosts: HostMap,
    /// Further WAN addresses answered for (a roaming client's old one, for a moment).
    wan_also: Vec<IpAddr>,
    /// Where each SA sits in `sa_counters`.
    sa_index: std::collections::HashMap<(bool, u32), usize>,
    /// The clock of the current turn (ns, the caller's).
    now: u64,
    unknown_spi_total: u64,
    /// When an unknown-SPI, auth-failure and replay-failure report last went out.
    reported_at: [u64; 3],
    counters: Arc<CoreCounters>,
    sa_counters: SaCounterList,
    control: ControlLink,
    /// Replies the reply ring had no room for; while any wait, no new command is applied.
    replies_waiting: VecDeque<Reply>,
    rx: Vec<P::Frame>,
    lan_txq: VecDeque<P::Frame>,
    wan_txq: VecDeque<P::Frame>,
    generation: u64,
}

/// The clear (LAN) or protected (WAN) side of a gateway.
#[derive(Clone, Copy)]
enum Side {
    Lan,
    Wan,
}

/// What a worker does after a long run of polls that found nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Keep polling: pure poll mode, for a core of its own (isolated). A packet never waits
    /// for the scheduler.
    Spin,
    /// `sched_yield`: another runnable thread on this core may run, for up to a scheduler
    /// tick (4 ms at HZ=250) before the worker polls again. Suits cores shared with other work.
    Yield,
    /// Sleep this long (labs and tests that share their cores with the hosts they simulate).
    Sleep(std::time::Duration),
}

/// Where a processed frame goes.
enum Verdict {
    ToLan,
    ToWan,
    Drop(DropReason),
}

impl<P: Port> Worker<P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u16,
        lan: P,
        wan: P,
        lan_link: Link,
        wan_link: Link,
        sad: Sad,
        spd: Box<Spd>,
        control: ControlLink,
    ) -> Self {
        Worker {
            id,
            lan,
            wan,
            lan_link,
            wan_link,
            sad,
            spd,
            nat: None,
            vip_nat: None,
            hosts: HostMap::default(),
            wan_also: Vec::new(),
            sa_index: std::collections::HashMap::new(),
            now: 0,
            unknown_spi_total: 0,
            reported_at: [0; 3],
            counters: Arc::new(CoreCounters::default()),
            sa_counters: Arc::new(std::sync::Mutex::new(Vec::new())),
            control,
            replies_waiting: VecDeque::new(),
            rx: Vec::with_capacity(BURST),
            lan_txq: VecDeque::with_capacity(TXQ_HIGH + BURST),
            wan_txq: VecDeque::with_capacity(TXQ_HIGH + BURST),
            generation: 0,
        }
    }

    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            id: self.id,
            counters: self.counters.clone(),
            sa_counters: self.sa_counters.clone(),
        }
    }

    pub fn sad(&self) -> &Sad {
        &self.sad
    }

    /// Runs until `stop` is set, pinned to `core` if given, yielding the core when idle.
    pub fn run(self, core: Option<usize>, stop: &AtomicBool) -> Self {
        self.run_with(core, stop, Idle::Yield)
    }

    /// [`run`](Self::run) with an explicit policy for a long run of polls that found nothing
    /// to do.
    pub fn run_with(mut self, core: Option<usize>, stop: &AtomicBool, idle_policy: Idle) -> Self {
        if let Some(c) = core {
            core_affinity::set_for_current(core_affinity::CoreId { id: c });
        }
        let start = std::time::Instant::now();
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let now = start.elapsed().as_nanos() as u64;
            if self.poll(now) == 0 {
                idle = idle.saturating_add(1);
                // Poll mode, but be polite when there is nothing to do for a while: a lab or
                // test shares its cores with the traffic generator.
                if idle > 1024 {
                    match idle_policy {
                        Idle::Spin => {}
                        Idle::Yield => std::thread::yield_now(),
                        Idle::Sleep(d) => std::thread::sleep(d),
                    }
                }
                core::hint::spin_loop();
            } else {
                idle = 0;
            }
        }
        // Let queued frames out before returning (bounded: the peer may be gone).
        for _ in 0..1000 {
            self.flush();
            if self.lan_txq.is_empty() && self.wan_txq.is_empty() {
                break;
            }
            std::thread::yield_now();
        }
        self
    }

    /// One turn of the loop. Returns the number of frames and commands handled.
    pub fn poll(&mut self, now: u64) -> usize {
        self.now = now;
        let mut work = self.apply_commands();
        work += self.transmit_datagrams();
        self.flush();
        // Each rx is paused only by the queues it feeds: LAN rx feeds the WAN (and the odd
        // ICMP error back to the LAN), WAN rx feeds the LAN. Gating WAN rx on the WAN queue too
        // would deadlock two gateways whose WAN links are both full.
        if self.wan_txq.len() < TXQ_HIGH && self.lan_txq.len() < TXQ_HIGH {
            work += self.rx_lan(now);
        }
        if self.lan_txq.len() < TXQ_HIGH {
            work += self.rx_wan(now);
        }
        self.flush();
        if let Some(nat) = self.nat.as_mut() {
            nat.expire(now, 64);
        }
        work
    }

    fn flush(&mut self) {
        let n = self.lan.tx_burst(&mut self.lan_txq);
        let m = self.wan.tx_burst(&mut self.wan_txq);
        self.counters.count(Traffic::TxPackets, (n + m) as u64);
    }

    // ---- control ------------------------------------------------------------------------

    /// Sends what the control plane queued, while the WAN queue has room (a full queue leaves
    /// the rest in the ring: back-pressure).
    fn transmit_datagrams(&mut self) -> usize {
        let mut sent = 0;
        while self.wan_txq.len() < TXQ_HIGH && sent < BURST {
            let Some(ring) = self.control.transmit.as_mut() else {
                break;
            };
            let Ok(d) = ring.pop() else {
                break;
            };
            sent += 1;
            let Some(mut f) = self.wan.alloc() else {
                self.counters.record_drop(DropReason::NoBufferRoom);
                continue;
            };
            match build_datagram(&mut f, &d) {
                Ok(ipv6) => {
                    if push_eth(&mut f, &self.wan_link, ipv6) {
                        self.counters.count(Traffic::IkeSent, 1);
                        self.wan_txq.push_back(f);
                    } else {
                        self.counters.record_drop(DropReason::NoBufferRoom);
                    }
                }
                Err(r) => self.counters.record_drop(r),
            }
        }
        sent
    }

    fn apply_commands(&mut self) -> usize {
        while let Some(r) = self.replies_waiting.pop_front() {
            if let Err(rtrb::PushError::Full(r)) = self.control.replies.push(r) {
                self.replies_waiting.push_front(r);
                return 0;
            }
        }
        let mut applied = 0;
        // Bounded per turn so a flood of updates cannot starve the packets.
        while applied < 64 {
            let Ok(env) = self.control.commands.pop() else {
                break;
            };
            applied += 1;
            self.generation = env.generation;
            if let Err(why) = self.apply(env.command) {
                self.reply(Reply::Rejected {
                    worker: self.id,
                    generation: env.generation,
                    why,
                });
            }
        }
        if applied > 0 {
            self.counters
                .generation
                .add(self.generation - self.counters.generation.get());
            self.reply(Reply::Applied {
                worker: self.id,
                generation: self.generation,
            });
        }
        applied
    }

    fn reply(&mut self, r: Reply) {
        if self.replies_waiting.is_empty() {
            if let Err(rtrb::PushError::Full(r)) = self.control.replies.push(r) {
                self.replies_waiting.push_back(r);
            }
        } else {
            self.replies_waiting.push_back(r);
        }
    }

    fn release(&mut self, r: Released) {
        self.reply(Reply::Released(r));
    }

    fn apply(&mut self, cmd: Command) -> Result<(), &'static str> {
        match cmd {
            Command::AddInbound(sa) => {
                sa.counters.installed_at.set(self.now);
                let e = SaCounterEntry {
                    id: sa.id,
                    spi: sa.spi,
                    direction: Direction::Inbound,
                    counters: sa.counters.clone(),
                };
                if let Some(old) = self.sad.insert_inbound(*sa) {
                    self.release(Released::Inbound(Box::new(old)));
                }
                self.list_upsert(e);
            }
            Command::AddOutbound(sa) => {
                sa.counters.installed_at.set(self.now);
                let e = SaCounterEntry {
                    id: sa.id,
                    spi: sa.spi,
                    direction: Direction::Outbound,
                    counters: sa.counters.clone(),
                };
                if let Some(old) = self.sad.insert_outbound(*sa) {
                    self.release(Released::Outbound(Box::new(old)));
                }
                self.list_upsert(e);
            }
            Command::DeleteInbound(spi) => match self.sad.remove_inbound(spi) {
                Some(old) => {
                    self.release(Released::Inbound(Box::new(old)));
                    self.list_remove((false, spi.0));
                }
                None => return Err("no inbound SA with that SPI"),
            },
            Command::DeleteOutbound(id) => match self.sad.remove_outbound(id) {
                Some(old) => {
                    self.release(Released::Outbound(Box::new(old)));
                    self.list_remove((true, id.0));
                }
                None => return Err("no outbound SA with that id"),
            },
            Command::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                // All or none: checked first, so a refused rebind leaves every SA as it was.
                if local.is_ipv4() != remote.is_ipv4() {
                    return Err("rebind mixes address families");
                }
                for id in &ids {
                    match self.sad.outbound_mut(*id) {
                        Some(sa) if sa.local.is_ipv4() == local.is_ipv4() => {}
                        Some(_) => return Err("rebind would change the address family"),
                        None => return Err("no outbound SA with that id"),
                    }
                }
                for id in ids {
                    if let Some(sa) = self.sad.outbound_mut(id) {
                        sa.rebind(local, remote, encap);
                    }
                }
            }
            Command::ReplaceSpd(spd) => {
                let old = core::mem::replace(&mut self.spd, spd);
                self.release(Released::Spd(old));
            }
            Command::ReplaceMasquerade(nat) => {
                if let Some(old) = core::mem::replace(&mut self.nat, nat) {
                    self.release(Released::Masquerade(old));
                }
            }
            Command::ReplaceVirtualIp(nat) => {
                if let Some(old) = core::mem::replace(&mut self.vip_nat, nat) {
                    self.release(Released::Masquerade(old));
                }
            }
            Command::BindHost { dst, src, sa } => {
                self.hosts.insert(dst, (src, sa));
            }
            Command::SetWanAddresses(addrs) => {
                let v4 = addrs.iter().find_map(|a| match a {
                    IpAddr::V4(v) => Some(*v),
                    IpAddr::V6(_) => None,
                });
                let v6 = addrs.iter().find_map(|a| match a {
                    IpAddr::V6(v) => Some(*v),
                    IpAddr::V4(_) => None,
                });
                self.wan_link.addr4 = v4;
                self.wan_link.addr6 = v6;
                self.wan_also = addrs
                    .into_iter()
                    .filter(|a| Some(*a) != v4.map(IpAddr::V4) && Some(*a) != v6.map(IpAddr::V6))
                    .collect();
            }
            Command::UnbindHost(dst) => {
                if self.hosts.remove(&dst).is_none() {
                    return Err("no host binding for that address");
                }
            }
        }
        Ok(())
    }

    /// The SA list readers see is kept up to date one entry at a time (an index from SA key
    /// to position), so installing the millionth SA costs what the first did.
    fn list_upsert(&mut self, e: SaCounterEntry) {
        let key = list_key(&e);
        if let Ok(mut g) = self.sa_counters.lock() {
            match self.sa_index.get(&key) {
                Some(&i) if i < g.len() => g[i] = e,
                _ => {
                    self.sa_index.insert(key, g.len());
                    g.push(e);
                }
            }
        }
    }

    fn list_remove(&mut self, key: (bool, u32)) {
        if let Ok(mut g) = self.sa_counters.lock() {
            if let Some(i) = self.sa_index.remove(&key) {
                if i < g.len() {
                    g.swap_remove(i);
                    if let Some(moved) = g.get(i) {
                        self.sa_index.insert(list_key(moved), i);
                    }
                }
            }
        }
    }

    // ---- clear side: LAN -> (SPD) -> ESP or bypass -> WAN ----------------------------------

    fn rx_lan(&mut self, now: u64) -> usize {
        self.rx_burst(Side::Lan, now)
    }

    /// Receives a burst on one side and sends each frame where its verdict says.
    fn rx_burst(&mut self, side: Side, now: u64) -> usize {
        let mut rx = core::mem::take(&mut self.rx);
        let n = match side {
            Side::Lan => self.lan.rx_burst(&mut rx, BURST),
            Side::Wan => self.wan.rx_burst(&mut rx, BURST),
        };
        self.warm_burst(&rx, side);
        let mut bytes = 0u64;
        for mut f in rx.drain(..) {
            bytes += f.len() as u64;
            let verdict = match self.neighbor(&mut f, side) {
                Some(v) => v,
                None => match side {
                    Side::Lan => self.outbound(&mut f, now),
                    Side::Wan => self.inbound(&mut f, now),
                },
            };
            match verdict {
                Verdict::ToWan => self.wan_txq.push_back(f),
                Verdict::ToLan => self.lan_txq.push_back(f),
                Verdict::Drop(r) => self.counters.record_drop(r),
            }
        }
        self.rx = rx;
        self.counters.count(Traffic::RxPackets, n as u64);
        self.counters.count(Traffic::RxBytes, bytes);
        n
    }

    /// With many SAs, a packet's SA state (table slot, record, counters) is likely not in
    /// the cache, and looked up packet by packet each miss waits for the one before. This
    /// pass reads, for every frame of the burst, the SA state its lookup will reach, with no
    /// dependence between frames, so the misses of a burst overlap; processing then finds
    /// them cached. Plain loads: the fast path has no `unsafe` for a prefetch instruction.
    /// Covered: inbound ESP over IPv4 (raw or UDP 4500) and outbound IPv4 to a bound host (a
    /// road warrior's virtual IP), the many-SA cases; SPD-selected SAs are not read ahead.
    fn warm_burst(&self, rx: &[P::Frame], side: Side) {
        if self.sad.inbound_len() + self.sad.outbound_len() < WARM_SAS_ABOVE {
            return;
        }
        let mut sink = 0u64;
        for f in rx {
            let d = f.data();
            match side {
                Side::Wan => {
                    if let Some(sa) = peek_spi(d).and_then(|spi| self.sad.inbound(spi)) {
                        sink ^= sa.counters.packets.get() ^ u64::from(sa.cipher.warm());
                    }
                }
                Side::Lan => {
                    let dst = match d.get(30..34) {
                        Some(&[a, b, c, e]) if d.get(12..14) == Some(&[0x08, 0x00][..]) => {
                            IpAddr::V4(Ipv4Addr::new(a, b, c, e))
                        }
                        _ => continue,
                    };
                    if let Some(sa) = self
                        .hosts
                        .get(&dst)
                        .and_then(|(_, id)| self.sad.outbound(*id))
                    {
                        sink ^= sa.counters.packets.get() ^ sa.seq ^ u64::from(sa.cipher.warm());
                    }
                }
            }
        }
        core::hint::black_box(sink);
    }

    /// ARP and neighbour solicitations for our own address are answered on the side they came
    /// from; other ARP is link chatter. None: not neighbour discovery, go on.
    fn neighbor(&mut self, f: &mut P::Frame, side: Side) -> Option<Verdict> {
        let d = f.data();
        let is_arp = d.get(12..14) == Some(&[0x08, 0x06][..]);
        // IPv6 with next header ICMPv6 and type 135, at the fixed offsets of a bare header.
        let is_ns = d.get(12..14) == Some(&[0x86, 0xdd][..])
            && d.get(20) == Some(&58)
            && d.get(54) == Some(&135);
        if !is_arp && !is_ns {
            return None;
        }
        let link = match side {
            Side::Lan => &self.lan_link,
            Side::Wan => &self.wan_link,
        };
        // An advertisement (86 bytes with its option) may be longer than the solicitation.
        let len = f.len();
        if is_ns && len < 86 && !f.append(86 - len) {
            return Some(Verdict::Drop(DropReason::NoBufferRoom));
        }
        let (mut outcome, mut new_len) =
            crate::neighbor::respond(f.data_mut(), link.mac, link.addr4, link.addr6);
        if matches!(side, Side::Wan) && matches!(outcome, crate::neighbor::Outcome::Ignored) {
            for a in &self.wan_also {
                let (a4, a6) = match a {
                    IpAddr::V4(v) => (Some(*v), None),
                    IpAddr::V6(v) => (None, Some(*v)),
                };
                (outcome, new_len) = crate::neighbor::respond(f.data_mut(), link.mac, a4, a6);
                if matches!(outcome, crate::neighbor::Outcome::Replied) {
                    break;
                }
            }
        }
        match outcome {
            crate::neighbor::Outcome::Replied => {
                f.truncate(new_len);
                self.counters.count(Traffic::NeighborReplies, 1);
                Some(match side {
                    Side::Lan => Verdict::ToLan,
                    Side::Wan => Verdict::ToWan,
                })
            }
            crate::neighbor::Outcome::Ignored => Some(Verdict::Drop(DropReason::NeighborIgnored)),
            crate::neighbor::Outcome::NotNeighbor => {
                f.truncate(len);
                None
            }
        }
    }

    fn outbound(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        let pkt = match parse_ip(f.data()) {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(r),
        };
        if pkt.hop_limit <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        // A road warrior's virtual IP: one exact-match lookup before the SPD.
        if !self.hosts.is_empty() {
            if let Some(&(src, id)) = self.hosts.get(&pkt.key.dst) {
                if src.contains(pkt.key.src) {
                    return self.protect(f, &pkt, id, now, false);
                }
            }
        }
        // A client: LAN flows go into the tunnel as the virtual IP the gateway assigned.
        if let Some(vip) = self.vip_nat.as_ref().map(|n| IpAddr::V4(n.external_addr())) {
            if !pkt.ipv6 && pkt.key.src != vip {
                let key = FlowKey {
                    src: vip,
                    ..pkt.key
                };
                if let Some(Action::Protect(id)) = self.spd.lookup(&key).map(|r| r.action) {
                    return self.protect(f, &pkt, id, now, true);
                }
            }
        }
        let Some(rule) = self.spd.lookup(&pkt.key) else {
            return Verdict::Drop(DropReason::NoPolicy);
        };
        match rule.action {
            Action::Discard => Verdict::Drop(DropReason::PolicyDiscard),
            Action::Bypass => {
                if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
                    return Verdict::Drop(DropReason::MalformedIp);
                }
                if !pkt.ipv6 {
                    if let Some(nat) = self.nat.as_mut() {
                        if let Err(e) = nat.outbound(f.data_mut(), now) {
                            return Verdict::Drop(nat_reason(e));
                        }
                        self.counters.count(Traffic::Masqueraded, 1);
                    }
                }
                self.counters.count(Traffic::Bypassed, 1);
                forward(f, &self.wan_link, pkt.ipv6, Verdict::ToWan)
            }
            Action::Protect(id) => self.protect(f, &pkt, id, now, false),
        }
    }

    /// Seals one LAN packet into ESP on outbound SA `id`; `vip` masquerades it to the
    /// client's virtual IP first.
    fn protect(
        &mut self,
        f: &mut P::Frame,
        pkt: &IpInfo,
        id: SaId,
        now: u64,
        vip: bool,
    ) -> Verdict {
        let Some(sa) = self.sad.outbound_mut(id) else {
            return Verdict::Drop(DropReason::NoSa);
        };
        let inner_len = f.len() - ethernet::HEADER_LEN;
        let outer_len = inner_len + tunnel::overhead(sa, inner_len);
        if outer_len > usize::from(self.wan_link.mtu) {
            let inner_mtu = usize::from(self.wan_link.mtu).saturating_sub(outer_len - inner_len);
            let reason = DropReason::MtuExceeded;
            sa.counters.record_drop(reason);
            self.send_too_big(f, pkt.ipv6, inner_mtu);
            return Verdict::Drop(reason);
        }
        if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
            return Verdict::Drop(DropReason::MalformedIp);
        }
        // Rewritten after the MTU check, so that an ICMP error quotes what the host sent.
        if let Some(nat) = self.vip_nat.as_mut().filter(|_| vip) {
            if let Err(e) = nat.outbound(f.data_mut(), now) {
                let r = nat_reason(e);
                sa.counters.record_drop(r);
                return Verdict::Drop(r);
            }
            self.counters.count(Traffic::Masqueraded, 1);
        }
        let meta = InnerMeta {
            next_header: if pkt.ipv6 { NH_IPV6 } else { NH_IPV4 },
            dscp: pkt.dscp,
            ecn: pkt.ecn,
        };
        let outer_v6 = sa.ipv6;
        let crossing = match tunnel::encapsulate(sa, f, meta) {
            Ok(c) => c,
            Err(r) => {
                sa.counters.record_drop(r);
                return Verdict::Drop(r);
            }
        };
        let event = crossing.map(|c| {
            crossing_event(
                self.id,
                (sa.id, sa.spi),
                &sa.counters,
                Direction::Outbound,
                c,
                now,
            )
        });
        self.counters.count(Traffic::Encrypted, 1);
        self.counters
            .count(Traffic::EncryptedBytes, inner_len as u64);
        if let Some(e) = event {
            self.reply(Reply::Event(e));
        }
        forward(f, &self.wan_link, outer_v6, Verdict::ToWan)
    }

    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" back to the sender on the LAN.
    fn send_too_big(&mut self, f: &P::Frame, ipv6: bool, mtu: usize) {
        let Some(mut out) = self.lan.alloc() else {
            return;
        };
        // RFC 792/4443: the error, quote included, fits in the minimum MTU of the family.
        let cap = if ipv6 { 1280 } else { 576 };
        if !out.append(cap) {
            return;
        }
        let invoking = f.data().get(ethernet::HEADER_LEN..).unwrap_or(&[]);
        let built = match (ipv6, self.lan_link.addr4, self.lan_link.addr6) {
            (true, _, Some(src)) => {
                icmpv6::build_packet_too_big(out.data_mut(), src, invoking, mtu as u32)
            }
            (false, Some(src), _) => {
                icmpv4::build_frag_needed(out.data_mut(), src, invoking, mtu as u16)
            }
            _ => None,
        };
        let Some(n) = built else {
            return;
        };
        out.truncate(n);
        if push_eth(&mut out, &self.lan_link, ipv6) {
            self.counters.count(Traffic::IcmpSent, 1);
            self.lan_txq.push_back(out);
        }
    }

    // ---- protected side: WAN -> ESP open -> policy check -> LAN ---------------------------

    fn rx_wan(&mut self, now: u64) -> usize {
        self.rx_burst(Side::Wan, now)
    }

    fn inbound(&mut self, f: &mut P::Frame, now: u64) -> Verdict {
        let pkt = match parse_ip(f.data()) {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(r),
        };
        let esp_at = match pkt.key.proto {
            50 => Some(ethernet::HEADER_LEN + pkt.header_len),
            17 => match self.classify_udp(f, &pkt) {
                Ok(Some(at)) => Some(at),
                Ok(None) => None,
                Err(r) => return Verdict::Drop(r),
            },
            _ => None,
        };
        if let Some(at) = esp_at {
            if pkt.fragment {
                return Verdict::Drop(DropReason::OuterFragment);
            }
            // A failed open is reported with the outer addresses, read from the frame again
            // only then: keeping `pkt` alive across the open made every packet read it back
            // from the stack before the stores that wrote it had retired.
            return match self.open(f, at, pkt.ecn, now) {
                Ok(v) => v,
                Err((r, spi)) => {
                    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                    let (src, dst) = outer_addrs(f.data()).unwrap_or((unspecified, unspecified));
                    self.report_failure(r, spi, src, dst, now);
                    Verdict::Drop(r)
                }
            };
        }
        // Clear traffic from the protected side.
        if pkt.hop_limit <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        if !pkt.ipv6 {
            if let Some(nat) = self.nat.as_mut() {
                if IpAddr::V4(nat.external_addr()) == pkt.key.dst {
                    let Some(ip) = f.data_mut().get_mut(ethernet::HEADER_LEN..) else {
                        return Verdict::Drop(DropReason::MalformedIp);
                    };
                    if let Err(e) = nat.inbound(ip, now) {
                        return Verdict::Drop(nat_reason(e));
                    }
                    self.counters.count(Traffic::Masqueraded, 1);
                    if !decrement_hop_limit(f, false) || !f.adj(ethernet::HEADER_LEN) {
                        return Verdict::Drop(DropReason::MalformedIp);
                    }
                    return forward(f, &self.lan_link, false, Verdict::ToLan);
                }
            }
        }
        // Clear traffic from a bound host (a road warrior's virtual IP) must come through its
        // tunnel.
        if self
            .hosts
            .get(&pkt.key.src)
            .is_some_and(|(src, _)| src.contains(pkt.key.dst))
        {
            return Verdict::Drop(DropReason::ClearButProtected);
        }
        // Inbound SPD check: look up the mirror image of the flow, as policies are written
        // for the outbound direction.
        let mirror = FlowKey {
            src: pkt.key.dst,
            dst: pkt.key.src,
            proto: pkt.key.proto,
            src_port: if pkt.key.proto == 1 || pkt.key.proto == 58 {
                pkt.key.src_port
            } else {
                pkt.key.dst_port
            },
            dst_port: if pkt.key.proto == 1 || pkt.key.proto == 58 {
                pkt.key.dst_port
            } else {
                pkt.key.src_port
            },
        };
        match self.spd.lookup(&mirror).map(|r| r.action) {
            Some(Action::Bypass) => {
                if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
                    return Verdict::Drop(DropReason::MalformedIp);
                }
                self.counters.count(Traffic::Bypassed, 1);
                forward(f, &self.lan_link, pkt.ipv6, Verdict::ToLan)
            }
            Some(Action::Protect(_)) => Verdict::Drop(DropReason::ClearButProtected),
            Some(Action::Discard) => Verdict::Drop(DropReason::PolicyDiscard),
            None => Verdict::Drop(DropReason::NoPolicy),
        }
    }

    /// UDP on the protected side: ESP-in-UDP (returns where ESP starts), IKE (punted),
    /// keepalive, or plain UDP (None: handled as clear traffic).
    fn classify_udp(&mut self, f: &P::Frame, pkt: &IpInfo) -> Result<Option<usize>, DropReason> {
        let port = pkt.key.dst_port;
        if port != natt::NATT_PORT && port != natt::IKE_PORT {
            return Ok(None);
        }
        let udp_at = ethernet::HEADER_LEN + pkt.header_len;
        let Some(seg) = f.data().get(udp_at..) else {
            return Err(DropReason::MalformedIp);
        };
        let Ok(u) = udp::Packet::new_checked(seg) else {
            return Err(DropReason::MalformedIp);
        };
        let payload = u.payload();
        if port == natt::IKE_PORT {
            return Err(self.punt(pkt, payload));
        }
        match natt::classify(payload) {
            natt::Kind::Keepalive => Err(DropReason::NatKeepalive),
            natt::Kind::Ike => {
                Err(self.punt(pkt, payload.get(natt::NON_ESP_MARKER_LEN..).unwrap_or(&[])))
            }
            natt::Kind::Esp => Ok(Some(udp_at + udp::HEADER_LEN)),
            natt::Kind::Malformed => Err(DropReason::EspTruncated),
        }
    }

    fn punt(&mut self, pkt: &IpInfo, payload: &[u8]) -> DropReason {
        let Some(ring) = self.control.punt.as_mut() else {
            return DropReason::IkeNoControl;
        };
        let p = Datagram {
            src: pkt.key.src,
            dst: pkt.key.dst,
            src_port: pkt.key.src_port,
            dst_port: pkt.key.dst_port,
            payload: payload.to_vec(),
        };
        match ring.push(p) {
            Ok(()) => DropReason::IkePunted,
            Err(_) => DropReason::IkeNoControl,
        }
    }

    /// Opens the ESP at `esp_at` and forwards the inner packet; Err: the open itself failed
    /// (unknown SPI, authentication, replay, ...), for the caller to report.
    fn open(
        &mut self,
        f: &mut P::Frame,
        esp_at: usize,
        outer_ecn: u8,
        now: u64,
    ) -> Result<Verdict, (DropReason, Spi)> {
        if !f.adj(esp_at) {
            return Ok(Verdict::Drop(DropReason::EspTruncated));
        }
        let opened = match tunnel::decapsulate(&mut self.sad, f) {
            Ok(o) => o,
            Err(r) => {
                let spi = f
                    .data()
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(Spi(0), |b| Spi(u32::from_be_bytes(b)));
                // Back to the outer header, for the caller's report (a failed open leaves the
                // frame's data where it was).
                let _ = f.prepend(esp_at);
                return Err((r, spi));
            }
        };
        if let Some(c) = opened.crossing {
            self.report_crossing(opened.spi, c, now);
        }
        Ok(self.deliver(f, &opened, outer_ecn, now))
    }

    /// Checks an opened packet against its SA's selectors, applies the RFC 6040 ECN outcome
    /// and the hop limit, and forwards it to the LAN.
    #[inline]
    fn deliver(&mut self, f: &mut P::Frame, opened: &Opened, outer_ecn: u8, now: u64) -> Verdict {
        // Drops from here on are also counted on the SA (looked up again only then: the hot
        // path holds no reference to it).
        let sa_drop = |sad: &Sad, r: DropReason| {
            if let Some(sa) = sad.inbound(opened.spi) {
                sa.counters.record_drop(r);
            }
            Verdict::Drop(r)
        };
        let inner = match parse_inner(f.data(), opened.next_header) {
            Ok(i) => i,
            Err(r) => return sa_drop(&self.sad, r),
        };
        // The inner packet must be what this SA was negotiated to carry (RFC 4301 5.2).
        if !opened.remote_ts.contains(inner.key.src) || !opened.local_ts.contains(inner.key.dst) {
            return sa_drop(&self.sad, DropReason::PolicyMismatch);
        }
        if inner.hop_limit <= 1 {
            return sa_drop(&self.sad, DropReason::TtlExceeded);
        }
        // RFC 6040 decapsulation: CE on the outer marks an ECN-capable inner packet; a
        // Not-ECT inner packet with CE outside must be dropped.
        let new_ecn = match (outer_ecn, inner.ecn) {
            (3, 0) => return sa_drop(&self.sad, DropReason::InnerMalformed),
            (3, _) => 3,
            (1, 2) => 1,
            (_, e) => e,
        };
        if !rewrite_inner(f.data_mut(), inner.ipv6, new_ecn) {
            return Verdict::Drop(DropReason::InnerMalformed);
        }
        // A client: answers to the virtual IP go back to the LAN host that opened the flow.
        if let Some(nat) = self.vip_nat.as_mut() {
            if IpAddr::V4(nat.external_addr()) == inner.key.dst {
                if let Err(e) = nat.inbound(f.data_mut(), now) {
                    return sa_drop(&self.sad, nat_reason(e));
                }
                self.counters.count(Traffic::Masqueraded, 1);
            }
        }
        self.counters.count(Traffic::Decrypted, 1);
        self.counters
            .count(Traffic::DecryptedBytes, opened.inner_len as u64);
        forward(f, &self.lan_link, inner.ipv6, Verdict::ToLan)
    }

    /// Reports the lifetime an inbound packet on `spi` reached (rare: once per threshold).
    fn report_crossing(&mut self, spi: Spi, c: Crossing, now: u64) {
        let Some(sa) = self.sad.inbound(spi) else {
            return;
        };
        let e = crossing_event(
            self.id,
            (sa.id, spi),
            &sa.counters,
            Direction::Inbound,
            c,
            now,
        );
        self.reply(Reply::Event(e));
    }
}

/// An SA's key in the readers' list: (outbound, id) or (inbound, SPI), as the SAD keys them.
fn list_key(e: &SaCounterEntry) -> (bool, u32) {
    match e.direction {
        Direction::Outbound => (true, e.id.0),
        Direction::Inbound => (false, e.spi.0),
    }
}

/// At most one report per second per worker and kind: totals travel, so a coalesced report
/// loses nothing.
const REPORT_EVERY_NS: u64 = 1_000_000_000;

impl<P: Port> Worker<P> {
    /// Tells the control plane about ESP it could not open: an unknown SPI (RFC 4303 3.4.2
    /// auditable event; IKE may answer INVALID_SPI), or an SA's authentication or replay
    /// failures. Rate-limited; the counts are running totals.
    fn report_failure(&mut self, r: DropReason, spi: Spi, src: IpAddr, dst: IpAddr, now: u64) {
        let slot = match r {
            DropReason::UnknownSpi => 0,
            DropReason::AuthFailed => 1,
            DropReason::ReplayDuplicate | DropReason::ReplayTooOld | DropReason::ReplayZero => 2,
            _ => return,
        };
        if slot == 0 {
            self.unknown_spi_total += 1;
        }
        let last = &mut self.reported_at[slot];
        if *last != 0 && now.saturating_sub(*last) < REPORT_EVERY_NS {
            return;
        }
        *last = now.max(1);
        let worker = self.id;
        let event = if slot == 0 {
            Event::UnknownSpi {
                worker,
                spi,
                src,
                dst,
                packets: self.unknown_spi_total,
            }
        } else {
            let Some(sa) = self.sad.inbound(spi) else {
                return;
            };
            let (id, c) = (sa.id, &sa.counters);
            if slot == 1 {
                Event::AuthFailures {
                    worker,
                    id,
                    spi,
                    count: c.drops(DropReason::AuthFailed),
                }
            } else {
                Event::ReplayFailures {
                    worker,
                    id,
                    spi,
                    count: c.drops(DropReason::ReplayDuplicate)
                        + c.drops(DropReason::ReplayTooOld)
                        + c.drops(DropReason::ReplayZero),
                }
            }
        };
        self.reply(Reply::Event(event));
    }
}

/// The event for a limit an SA reached.
fn crossing_event(
    worker: u16,
    (id, spi): (SaId, Spi),
    c: &SaCounters,
    dir: Direction,
    x: Crossing,
    now: u64,
) -> Event {
    match x {
        Crossing::Lifetime { hard, bytes } => Event::Lifetime {
            worker,
            id,
            spi,
            dir,
            kind: if hard {
                LifetimeKind::Hard
            } else {
                LifetimeKind::Soft
            },
            limit: if bytes {
                LifetimeLimit::Bytes
            } else {
                LifetimeLimit::Packets
            },
            bytes: c.bytes.get(),
            packets: c.packets.get(),
            age_secs: now.saturating_sub(c.installed_at.get()) / 1_000_000_000,
        },
        Crossing::SeqNearWrap { seq, limit } => Event::SeqNearWrap {
            worker,
            id,
            spi,
            seq,
            limit,
        },
    }
}

fn nat_reason(e: NatDrop) -> DropReason {
    match e {
        NatDrop::Malformed => DropReason::NatMalformed,
        NatDrop::NoSession => DropReason::NatNoSession,
        NatDrop::PortsExhausted => DropReason::NatPortsExhausted,
        NatDrop::TableFull => DropReason::NatTableFull,
        NatDrop::Fragment => DropReason::NatFragment,
        NatDrop::UnsupportedProtocol => DropReason::NatUnsupported,
    }
}

/// What the worker needs from an IP header.
struct IpInfo {
    key: FlowKey,
    ipv6: bool,
    header_len: usize,
    hop_limit: u8,
    dscp: u8,
    ecn: u8,
    fragment: bool,
}

/// The SPI of an IPv4 frame carrying ESP, raw or in UDP 4500 (for [`Worker::warm_burst`];
/// the real classification comes later and checks everything).
fn peek_spi(d: &[u8]) -> Option<Spi> {
    if d.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(d.get(14)? & 0x0f) * 4;
    let at = match *d.get(23)? {
        50 => 14 + ihl,
        17 if d.get(14 + ihl + 2..14 + ihl + 4)? == natt::NATT_PORT.to_be_bytes() => 14 + ihl + 8,
        _ => return None,
    };
    let b = d.get(at..at + 4)?;
    Some(Spi(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// The outer source and destination of an Ethernet + IP frame (for reports).
fn outer_addrs(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let ip = frame.get(ethernet::HEADER_LEN..)?;
    match ip.first()? >> 4 {
        4 => {
            let p = ipv4::Packet::new_checked(ip).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        6 => {
            let p = ipv6::Packet::new_checked(ip).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        _ => None,
    }
}

/// Parses Ethernet + IP (+ the first transport bytes for the flow key).
#[inline(always)]
fn parse_ip(frame: &[u8]) -> Result<IpInfo, DropReason> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| DropReason::MalformedFrame)?;
    let ipv6 = match eth.ethertype() {
        EtherType::Ipv4 => false,
        EtherType::Ipv6 => true,
        _ => return Err(DropReason::MalformedFrame),
    };
    let ip = frame.get(ethernet::HEADER_LEN..).unwrap_or(&[]);
    if ipv6 {
        parse_ipv6(ip)
    } else {
        parse_ipv4(ip)
    }
}

#[inline(always)]
fn parse_inner(ip: &[u8], next_header: u8) -> Result<IpInfo, DropReason> {
    let version = ip.first().map(|b| b >> 4);
    match (next_header, version) {
        (NH_IPV4, Some(4)) => parse_ipv4(ip).map_err(|_| DropReason::InnerMalformed),
        (NH_IPV6, Some(6)) => parse_ipv6(ip).map_err(|_| DropReason::InnerMalformed),
        _ => Err(DropReason::BadNextHeader),
    }
}

#[inline(always)]
fn ports(proto: u8, l4: &[u8]) -> (u16, u16) {
    let be = |i: usize| {
        l4.get(i..i + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    match proto {
        6 | 17 => (be(0), be(2)),
        // ICMP: type and code stand in for the ports (RFC 4301 4.4.1.1).
        1 | 58 => (
            u16::from(l4.first().copied().unwrap_or(0)),
            u16::from(l4.get(1).copied().unwrap_or(0)),
        ),
        _ => (0, 0),
    }
}

#[inline(always)]
fn parse_ipv4(ip: &[u8]) -> Result<IpInfo, DropReason> {
    let p = ipv4::Packet::new_checked(ip).map_err(|_| DropReason::MalformedIp)?;
    if !p.verify_checksum() {
        return Err(DropReason::IpChecksum);
    }
    let proto = p.protocol();
    let fragment = p.more_frags() || p.frag_offset() != 0;
    let (src_port, dst_port) = if p.frag_offset() == 0 {
        ports(proto, p.payload())
    } else {
        (0, 0)
    };
    Ok(IpInfo {
        key: FlowKey {
            src: IpAddr::V4(p.src_addr()),
            dst: IpAddr::V4(p.dst_addr()),
            proto,
            src_port,
            dst_port,
        },
        ipv6: false,
        header_len: usize::from(p.header_len()),
        hop_limit: p.hop_limit(),
        dscp: p.dscp(),
        ecn: p.ecn(),
        fragment,
    })
}

#[inline(always)]
fn parse_ipv6(ip: &[u8]) -> Result<IpInfo, DropReason> {
    let p = ipv6::Packet::new_checked(ip).map_err(|_| DropReason::MalformedIp)?;
    let upper = ipv6::upper_layer(&p).map_err(|_| DropReason::MalformedIp)?;
    let proto = u8::from(upper.protocol);
    let l4 = ip.get(upper.offset..).unwrap_or(&[]);
    let (src_port, dst_port) = if upper.fragment_offset == 0 {
        ports(proto, l4)
    } else {
        (0, 0)
    };
    Ok(IpInfo {
        key: FlowKey {
            src: IpAddr::V6(p.src_addr()),
            dst: IpAddr::V6(p.dst_addr()),
            proto,
            src_port,
            dst_port,
        },
        ipv6: true,
        header_len: upper.offset,
        hop_limit: p.hop_limit(),
        dscp: p.dscp(),
        ecn: p.ecn(),
        fragment: upper.fragmented,
    })
}

/// Decrements TTL / hop limit of the IP packet after the Ethernet header (RFC 1624 update).
fn decrement_hop_limit<F: Frame>(f: &mut F, ipv6: bool) -> bool {
    let Some(ip) = f.data_mut().get_mut(ethernet::HEADER_LEN..) else {
        return false;
    };
    dec_hop(ip, ipv6)
}

fn dec_hop(ip: &mut [u8], ipv6: bool) -> bool {
    if ipv6 {
        let mut p = ipv6::Packet::new_unchecked(ip);
        let h = p.hop_limit();
        p.set_hop_limit(h.saturating_sub(1));
        true
    } else {
        // RFC 1624 incremental update: TTL shares a 16-bit word with the protocol.
        let mut p = ipv4::Packet::new_unchecked(ip);
        let h = p.hop_limit();
        let proto = u16::from(u8::from(p.next_header()));
        let old = (u16::from(h) << 8) | proto;
        let new = (u16::from(h.saturating_sub(1)) << 8) | proto;
        let ck = checksum::update16(p.checksum(), old, new);
        p.set_hop_limit(h.saturating_sub(1));
        p.set_checksum(ck);
        true
    }
}

/// After decapsulation: hop limit minus one and the RFC 6040 ECN outcome.
fn rewrite_inner(ip: &mut [u8], ipv6: bool, ecn: u8) -> bool {
    if ipv6 {
        ipv6::Packet::new_unchecked(&mut *ip).set_ecn(ecn);
    } else {
        let mut p = ipv4::Packet::new_unchecked(&mut *ip);
        if p.ecn() != ecn {
            p.set_ecn(ecn);
            p.fill_checksum();
        }
    }
    dec_hop(ip, ipv6)
}

/// Prepends the Ethernet header toward `link`'s neighbour. False if there is no headroom.
fn push_eth<F: Frame>(f: &mut F, link: &Link, ipv6: bool) -> bool {
    if !f.prepend(ethernet::HEADER_LEN) {
        return false;
    }
    // Destination, source, EtherType: three plain copies (every forwarded packet does this).
    let Some(h) = f.data_mut().get_mut(..ethernet::HEADER_LEN) else {
        return false;
    };
    h[0..6].copy_from_slice(&link.neighbor);
    h[6..12].copy_from_slice(&link.mac);
    h[12..14].copy_from_slice(if ipv6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
    true
}

/// Writes `d` into the empty frame `f` as IPv4/IPv6 + UDP (+ the non-ESP marker on port
/// 4500) + payload. Returns whether it is IPv6.
fn build_datagram<F: Frame>(f: &mut F, d: &Datagram) -> Result<bool, DropReason> {
    let marker = if d.src_port == natt::NATT_PORT || d.dst_port == natt::NATT_PORT {
        natt::NON_ESP_MARKER_LEN
    } else {
        0
    };
    let udp_len = udp::HEADER_LEN + marker + d.payload.len();
    let (ipv6, ip_len) = match (d.src, d.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (false, ipv4::HEADER_LEN),
        (IpAddr::V6(_), IpAddr::V6(_)) => (true, ipv6::HEADER_LEN),
        _ => return Err(DropReason::MalformedIp),
    };
    if ip_len + udp_len > usize::from(u16::MAX) || !f.append(ip_len + udp_len) {
        return Err(DropReason::NoBufferRoom);
    }
    let buf = f.data_mut();
    let Some((ip, seg)) = buf.split_at_mut_checked(ip_len) else {
        return Err(DropReason::NoBufferRoom);
    };
    match (d.src, d.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: crate::wire::IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(ip)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ipv6::Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: crate::wire::IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            flow_label: 0,
        }
        .emit(&mut ipv6::Packet::new_unchecked(ip)),
        _ => return Err(DropReason::MalformedIp),
    }
    let Some(body) = seg.get_mut(udp::HEADER_LEN..) else {
        return Err(DropReason::NoBufferRoom);
    };
    let (m, payload) = body.split_at_mut(marker);
    m.fill(0);
    payload.copy_from_slice(&d.payload);
    let mut u = udp::Packet::new_unchecked(seg);
    udp::Repr {
        src_port: d.src_port,
        dst_port: d.dst_port,
        payload_len: marker + d.payload.len(),
    }
    .emit(&mut u);
    u.fill_checksum(&d.src, &d.dst);
    Ok(ipv6)
}

/// Forwards toward `link` as `verdict` if the Ethernet header fits.
fn forward<F: Frame>(f: &mut F, link: &Link, ipv6: bool, verdict: Verdict) -> Verdict {
    if push_eth(f, link, ipv6) {
        verdict
    } else {
        Verdict::Drop(DropReason::NoBufferRoom)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{self, WorkerLink};
    use crate::crypto::AeadAlg;
    use crate::esp::sa::{SaKeys, SaParams};
    use crate::msg::{Direction, Update};
    use crate::nat::MasqueradeConfig;
    use crate::port::mem::{cable, MemFrame, MemPort};
    use crate::spd::{PortRange, Prefix, Rule, Selector};
    use crate::stats::Lifetime;
    use crate::traffic::{FlowSpec, Generator};
    use crate::wire::IpProtocol;

    const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 1];
    const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 0xfe];
    const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];

    struct Rig {
        w: Worker<MemPort>,
        lan: MemPort,
        wan: MemPort,
        agent: WorkerLink,
    }

    fn sel(src: &str, dst: &str) -> Selector {
        Selector {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: None,
            src_ports: PortRange { lo: 0, hi: 65535 },
            dst_ports: PortRange { lo: 0, hi: 65535 },
        }
    }

    fn sa(id: u32, spi: u32, local: &str, remote: &str, lts: &str, rts: &str) -> SaParams {
        let keymat: Vec<u8> = (0..20u8).collect();
        SaParams {
            id: SaId(id),
            spi: Spi(spi),
            keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &keymat).unwrap(),
            esn: true,
            replay_window: 64,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            encap: None,
            local_ts: lts.parse::<Prefix>().unwrap(),
            remote_ts: rts.parse::<Prefix>().unwrap(),
            outer_ttl: 64,
            lifetime: Default::default(),
        }
    }

    fn rig(mtu: u16) -> Rig {
        let (lan, lan_gw) = cable("host", "lan", 256);
        let (wan_gw, wan) = cable("wan", "peer", 256);
        let (agent, control) = agent::link(0, 64, None);
        let w = Worker::new(
            0,
            lan_gw,
            wan_gw,
            Link {
                mac: LAN_MAC,
                neighbor: HOST_MAC,
                addr4: Some("10.1.0.1".parse().unwrap()),
                addr6: Some("fd00:a::1".parse().unwrap()),
                mtu: 1500,
            },
            Link {
                mac: WAN_MAC,
                neighbor: PEER_MAC,
                addr4: Some("192.0.2.1".parse().unwrap()),
                addr6: None,
                mtu,
            },
            Sad::with_capacity(8, 3),
            Box::new(Spd::new(Vec::new()).unwrap()),
            control,
        );
        let mut r = Rig { w, lan, wan, agent };
        let rules = vec![
            Rule {
                id: 0,
                selector: sel("10.1.0.0/24", "10.2.0.0/24"),
                action: Action::Protect(SaId(1)),
            },
            Rule {
                id: 1,
                selector: sel("10.1.0.0/24", "198.51.100.0/24"),
                action: Action::Bypass,
            },
            Rule {
                id: 2,
                selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                action: Action::Discard,
            },
        ];
        r.update(Update::AddSa {
            dir: Direction::Outbound,
            params: sa(
                1,
                0xa001,
                "192.0.2.1",
                "192.0.2.2",
                "10.1.0.0/24",
                "10.2.0.0/24",
            ),
        });
        r.update(Update::AddSa {
            dir: Direction::Inbound,
            params: sa(
                2,
                0xb001,
                "192.0.2.1",
                "192.0.2.2",
                "10.1.0.0/24",
                "10.2.0.0/24",
            ),
        });
        r.update(Update::ReplaceSpd { rules });
        r
    }

    impl Rig {
        fn update(&mut self, u: Update) {
            let g = self
                .agent
                .send(agent::prepare(crate::crypto::best_backend(), &u).unwrap());
            for _ in 0..100 {
                self.w.poll(0);
                if self.agent.pump() >= g {
                    return;
                }
            }
            panic!("not acknowledged: {:?}", self.agent.rejections());
        }

        fn send_lan(&mut self, src: &str, dst: &str, size: usize) {
            let mut g = Generator::new(
                vec![FlowSpec {
                    src_mac: HOST_MAC,
                    dst_mac: LAN_MAC,
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    src_port: 1234,
                    dst_port: 5001,
                }],
                &[size],
            );
            let mut f = MemFrame::new();
            g.fill(&mut f, 0);
            assert!(self.lan.send(f).is_ok());
            self.w.poll(1);
        }

        fn drops(&self, r: DropReason) -> u64 {
            self.w.counters.drops(r)
        }

        /// A clear UDP packet arriving on the WAN side.
        fn send_wan_clear(&mut self, src: &str, dst: &str) {
            let mut g = Generator::new(
                vec![FlowSpec {
                    src_mac: PEER_MAC,
                    dst_mac: WAN_MAC,
                    src: src.parse().unwrap(),
                    dst: dst.parse().unwrap(),
                    src_port: 1234,
                    dst_port: 5001,
                }],
                &[100],
            );
            let mut f = MemFrame::new();
            g.fill(&mut f, 0);
            assert!(self.wan.send(f).is_ok());
            self.w.poll(1);
        }
    }

    #[test]
    fn ike_datagrams_from_control_are_sent_and_punted_back_intact() {
        let mut a = rig(1500);
        let mut b = rig(1500);
        let (mut tx, tx_rx) = rtrb::RingBuffer::new(8);
        a.w.control.transmit = Some(tx_rx);
        let (punt_tx, mut punted) = rtrb::RingBuffer::new(8);
        b.w.control.punt = Some(punt_tx);
        let ike: Vec<u8> = (0..100u8).collect();
        for (src_port, dst_port) in [(500u16, 500u16), (4500, 4500)] {
            tx.push(Datagram {
                src: "192.0.2.1".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                src_port,
                dst_port,
                payload: ike.clone(),
            })
            .unwrap();
        }
        a.w.poll(0);
        let mut frames = Vec::new();
        a.wan.rx_burst(&mut frames, 8);
        assert_eq!(frames.len(), 2);
        assert_eq!(a.w.counters.traffic(Traffic::IkeSent), 2);
        for (i, f) in frames.iter().enumerate() {
            let d = f.data();
            assert_eq!(&d[0..6], &PEER_MAC);
            assert_eq!(&d[6..12], &WAN_MAC);
            let ip = ipv4::Packet::new_checked(&d[14..]).unwrap();
            assert!(ip.verify_checksum());
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(&"192.0.2.1".parse().unwrap(), &"192.0.2.2".parse().unwrap()));
            let marker = if i == 1 { 4 } else { 0 };
            assert_eq!(&u.payload()[..marker], &[0u8; 4][..marker]);
            assert_eq!(&u.payload()[marker..], &ike[..]);
        }
        for f in frames {
            assert!(b.wan.send(f).is_ok());
        }
        b.w.poll(1);
        for port in [500, 4500] {
            let p = punted.pop().expect("punted");
            assert_eq!((p.src_port, p.dst_port), (port, port));
            assert_eq!(p.payload, ike, "non-ESP marker stripped on port 4500");
        }
        assert_eq!(b.drops(DropReason::IkePunted), 2);
    }

    #[test]
    fn commands_are_acknowledged_by_generation() {
        let r = rig(1500);
        assert_eq!(r.agent.acked(), 3);
        assert_eq!(r.w.counters.generation.get(), 3);
        assert_eq!(r.w.sad().inbound_len(), 1);
        assert_eq!(r.w.sad().outbound_len(), 1);
    }

    #[test]
    fn replaced_records_are_released_to_the_agent() {
        let mut r = rig(1500);
        r.update(Update::AddSa {
            dir: Direction::Inbound,
            params: sa(
                2,
                0xb001,
                "192.0.2.1",
                "192.0.2.2",
                "10.1.0.0/24",
                "10.2.0.0/24",
            ),
        });
        r.update(Update::DeleteOutbound { id: SaId(1) });
        // Old inbound record, old outbound record, and the first (empty) SPD.
        assert_eq!(r.agent.released, 3);
        // Deleting what is not there is reported, not fatal.
        let g = r.agent.send(Command::DeleteOutbound(SaId(1)));
        r.w.poll(0);
        r.agent.pump();
        assert_eq!(r.agent.rejections(), &[(g, "no outbound SA with that id")]);
    }

    #[test]
    fn protect_bypass_discard() {
        let mut r = rig(1500);
        r.send_lan("10.1.0.10", "10.2.0.10", 100);
        let f = r.wan.recv().expect("sealed packet on the WAN");
        assert_eq!(&f.data()[0..6], &PEER_MAC);
        assert_eq!(f.data()[14 + 9], 50, "ESP");
        r.send_lan("10.1.0.10", "198.51.100.7", 100);
        let f = r.wan.recv().expect("bypassed packet on the WAN");
        assert_eq!(f.data()[14 + 9], 17, "clear UDP");
        assert_eq!(f.data()[14 + 8], 63, "TTL decremented");
        r.send_lan("10.1.0.10", "203.0.113.1", 100);
        assert!(r.wan.recv().is_none());
        assert_eq!(r.drops(DropReason::PolicyDiscard), 1);
    }

    #[test]
    fn oversize_gets_icmp_frag_needed_not_silence() {
        let mut r = rig(1400);
        r.send_lan("10.1.0.10", "10.2.0.10", 1400);
        assert!(r.wan.recv().is_none());
        assert_eq!(r.drops(DropReason::MtuExceeded), 1);
        let icmp = r.lan.recv().expect("ICMP back to the sender");
        let d = icmp.data();
        assert_eq!(&d[0..6], &HOST_MAC);
        let ip = ipv4::Packet::new_checked(&d[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.src_addr(), "10.1.0.1".parse::<Ipv4Addr>().unwrap());
        let p = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u8::from(p.msg_type()), p.msg_code()), (3, 4));
        // Next-hop MTU leaves room for outer IPv4 + ESP overhead.
        let mtu = p.next_hop_mtu();
        assert!(mtu < 1400 && mtu > 1300, "{mtu}");
        assert!(p.verify_checksum());
        // And a packet of that size fits.
        r.send_lan("10.1.0.10", "10.2.0.10", usize::from(mtu) + 14);
        assert!(
            r.wan.recv().is_some(),
            "a packet of the advertised MTU passes"
        );
    }

    #[test]
    fn ttl_one_is_not_forwarded() {
        let mut r = rig(1500);
        let mut g = Generator::new(
            vec![FlowSpec {
                src_mac: HOST_MAC,
                dst_mac: LAN_MAC,
                src: "10.1.0.10".parse().unwrap(),
                dst: "10.2.0.10".parse().unwrap(),
                src_port: 1,
                dst_port: 2,
            }],
            &[100],
        );
        let mut f = MemFrame::new();
        g.fill(&mut f, 0);
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[14..]);
            ip.set_hop_limit(1);
            ip.fill_checksum();
        }
        assert!(r.lan.send(f).is_ok());
        r.w.poll(0);
        assert!(r.wan.recv().is_none());
        assert_eq!(r.drops(DropReason::TtlExceeded), 1);
    }

    #[test]
    fn malformed_frames_are_counted_never_panic() {
        let mut r = rig(1500);
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..600usize {
            let mut bytes = vec![0u8; len];
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            // Half of them look like IPv4 so they get past the first checks.
            if len > 14 && len % 2 == 0 {
                bytes[12] = 0x08;
                bytes[13] = 0x00;
                bytes[14] = 0x45;
            }
            assert!(r.wan.send(MemFrame::from_bytes(&bytes).unwrap()).is_ok());
            assert!(r.lan.send(MemFrame::from_bytes(&bytes).unwrap()).is_ok());
            r.w.poll(0);
        }
        let s = r.w.counters.snapshot();
        let dropped: u64 = s.drops.iter().sum();
        let forwarded = std::iter::from_fn(|| r.wan.recv()).count()
            + std::iter::from_fn(|| r.lan.recv()).count();
        assert_eq!(
            dropped + forwarded as u64,
            1200,
            "every frame is accounted for"
        );
    }

    #[test]
    fn masquerade_rewrites_bypass_traffic_and_back() {
        let mut r = rig(1500);
        r.update(Update::SetMasquerade {
            config: Some(MasqueradeConfig {
                external_addr: "192.0.2.1".parse().unwrap(),
                ..MasqueradeConfig::default()
            }),
        });
        r.send_lan("10.1.0.10", "198.51.100.7", 100);
        let mut out = r.wan.recv().expect("masqueraded");
        let (sport, src) = {
            let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
            (u.src_port(), ip.src_addr())
        };
        assert_eq!(src, "192.0.2.1".parse::<Ipv4Addr>().unwrap());
        // The server answers to the masquerading address and port.
        {
            let d = out.data_mut();
            d[0..6].copy_from_slice(&WAN_MAC);
            d[6..12].copy_from_slice(&PEER_MAC);
            let mut ip = ipv4::Packet::new_unchecked(&mut d[14..]);
            let (s, t) = (ip.src_addr(), ip.dst_addr());
            ip.set_src_addr(t);
            ip.set_dst_addr(s);
            ip.fill_checksum();
            let (s, t) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
            let mut u = udp::Packet::new_unchecked(ip.payload_mut());
            u.set_dst_port(sport);
            u.set_src_port(5001);
            u.set_checksum(0);
            u.fill_checksum(&s, &t);
        }
        assert!(r.wan.send(out).is_ok());
        r.w.poll(2);
        let back = r.lan.recv().expect("translated back to the host");
        let ip = ipv4::Packet::new_checked(&back.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(u.dst_port(), 1234);
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
    }

    /// The rig's peer gateway: it seals 10.2.0.0/24 -> 10.1.0.0/24 with the SA the rig opens
    /// (SPI 0xb001, the rig's keys).
    fn mirror_peer() -> Rig {
        let mut peer = rig(1500);
        peer.update(Update::AddSa {
            dir: Direction::Outbound,
            params: sa(
                1,
                0xb001,
                "192.0.2.2",
                "192.0.2.1",
                "10.2.0.0/24",
                "10.1.0.0/24",
            ),
        });
        peer.update(Update::ReplaceSpd {
            rules: vec![Rule {
                id: 0,
                selector: sel("10.2.0.0/24", "10.1.0.0/24"),
                action: Action::Protect(SaId(1)),
            }],
        });
        peer
    }

    /// Swaps a frame's MACs, addresses and UDP ports: the far end's answer to it.
    fn answer(f: &mut MemFrame, dst_mac: [u8; 6], src_mac: [u8; 6]) {
        let d = f.data_mut();
        d[0..6].copy_from_slice(&dst_mac);
        d[6..12].copy_from_slice(&src_mac);
        let mut ip = ipv4::Packet::new_unchecked(&mut d[14..]);
        let (s, t) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(t);
        ip.set_dst_addr(s);
        ip.set_hop_limit(64);
        ip.fill_checksum();
        let (s, t) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
        let mut u = udp::Packet::new_unchecked(ip.payload_mut());
        let (sp, dp) = (u.src_port(), u.dst_port());
        u.set_src_port(dp);
        u.set_dst_port(sp);
        u.set_checksum(0);
        u.fill_checksum(&s, &t);
    }

    fn readdress(f: &mut MemFrame, dst_mac: [u8; 6], src_mac: [u8; 6]) {
        f.data_mut()[0..6].copy_from_slice(&dst_mac);
        f.data_mut()[6..12].copy_from_slice(&src_mac);
    }

    #[test]
    fn client_masquerades_its_lan_into_the_tunnel_as_the_virtual_ip() {
        // The client: its CHILD_SA carries 10.99.0.5 (the virtual IP) <-> 10.2.0.0/24.
        let mut c = rig(1500);
        for (dir, id, spi) in [
            (Direction::Outbound, 1, 0xa001),
            (Direction::Inbound, 2, 0xb001),
        ] {
            c.update(Update::AddSa {
                dir,
                params: sa(
                    id,
                    spi,
                    "192.0.2.1",
                    "192.0.2.2",
                    "10.99.0.5/32",
                    "10.2.0.0/24",
                ),
            });
        }
        c.update(Update::ReplaceSpd {
            rules: vec![
                Rule {
                    id: 0,
                    selector: sel("10.99.0.5/32", "10.2.0.0/24"),
                    action: Action::Protect(SaId(1)),
                },
                Rule {
                    id: 1,
                    selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                    action: Action::Discard,
                },
            ],
        });
        // The gateway: the mirror image.
        let mut g = rig(1500);
        g.update(Update::AddSa {
            dir: Direction::Inbound,
            params: sa(
                3,
                0xa001,
                "192.0.2.2",
                "192.0.2.1",
                "10.2.0.0/24",
                "10.99.0.5/32",
            ),
        });
        g.update(Update::AddSa {
            dir: Direction::Outbound,
            params: sa(
                1,
                0xb001,
                "192.0.2.2",
                "192.0.2.1",
                "10.2.0.0/24",
                "10.99.0.5/32",
            ),
        });
        g.update(Update::ReplaceSpd {
            rules: vec![Rule {
                id: 0,
                selector: sel("10.2.0.0/24", "10.99.0.5/32"),
                action: Action::Protect(SaId(1)),
            }],
        });

        // Without the virtual IP set, the LAN host's flow matches no protect rule.
        c.send_lan("10.1.0.10", "10.2.0.7", 100);
        assert!(c.wan.recv().is_none());
        assert_eq!(c.drops(DropReason::PolicyDiscard), 1);

        c.update(Update::SetVirtualIp {
            config: Some(MasqueradeConfig {
                external_addr: "10.99.0.5".parse().unwrap(),
                ..MasqueradeConfig::default()
            }),
        });
        // Too big for the tunnel: the ICMP error quotes the packet as the host sent it.
        c.send_lan("10.1.0.10", "10.2.0.7", 1514);
        assert!(c.wan.recv().is_none());
        let icmp = c.lan.recv().expect("frag-needed");
        let ip = ipv4::Packet::new_checked(&icmp.data()[14..]).unwrap();
        let quoted = ipv4::Packet::new_unchecked(&ip.payload()[8..]);
        assert_eq!(quoted.src_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        c.send_lan("10.1.0.10", "10.2.0.7", 100);
        let mut esp = c.wan.recv().expect("sealed");
        readdress(&mut esp, WAN_MAC, PEER_MAC);
        assert!(g.wan.send(esp).is_ok());
        g.w.poll(1);
        let mut inner = g.lan.recv().expect("opened at the gateway");
        let (src, sport) = {
            let ip = ipv4::Packet::new_checked(&inner.data()[14..]).unwrap();
            assert!(ip.verify_checksum());
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
            (ip.src_addr(), u.src_port())
        };
        assert_eq!(
            src,
            "10.99.0.5".parse::<Ipv4Addr>().unwrap(),
            "the virtual IP"
        );

        // The server's answer comes back through the tunnel to the LAN host and its port.
        answer(&mut inner, LAN_MAC, HOST_MAC);
        let second = MemFrame::from_bytes(inner.data()).unwrap();
        assert!(g.lan.send(inner).is_ok());
        g.w.poll(2);
        let mut back = g.wan.recv().expect("sealed by the gateway");
        readdress(&mut back, WAN_MAC, PEER_MAC);
        assert!(c.wan.send(back).is_ok());
        c.w.poll(3);
        let host = c.lan.recv().expect("to the LAN host");
        let ip = ipv4::Packet::new_checked(&host.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.1.0.10".parse::<Ipv4Addr>().unwrap());
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (5001, 1234));
        assert!(u.verify_checksum(&IpAddr::V4(ip.src_addr()), &IpAddr::V4(ip.dst_addr())));
        assert_ne!(sport, 0);

        // Turned off: an answer to the virtual IP is delivered as it is (the SA's selectors
        // allow it), never to the LAN host.
        c.update(Update::SetVirtualIp { config: None });
        assert!(g.lan.send(second).is_ok());
        g.w.poll(4);
        let mut back = g.wan.recv().expect("sealed by the gateway");
        readdress(&mut back, WAN_MAC, PEER_MAC);
        assert!(c.wan.send(back).is_ok());
        c.w.poll(5);
        let out = c.lan.recv().expect("opened");
        let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "10.99.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(c.w.counters.traffic(Traffic::Masqueraded), 2);
        assert_eq!(c.drops(DropReason::MtuExceeded), 1);
    }

    #[test]
    fn lifetimes_are_reported_and_a_hard_one_stops_the_sa() {
        let mut r = rig(1500);
        let mut p = sa(
            1,
            0xa001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        );
        p.lifetime = Lifetime {
            soft_packets: 2,
            hard_packets: 3,
            ..Lifetime::default()
        };
        r.update(Update::AddSa {
            dir: Direction::Outbound,
            params: p,
        });
        for _ in 0..5 {
            r.send_lan("10.1.0.10", "10.2.0.7", 100);
        }
        assert_eq!(std::iter::from_fn(|| r.wan.recv()).count(), 3);
        assert_eq!(r.drops(DropReason::SaExpired), 2);
        r.agent.pump();
        let kinds: Vec<_> = r
            .agent
            .take_events()
            .into_iter()
            .map(|e| match e {
                Event::Lifetime {
                    id,
                    spi,
                    dir,
                    kind,
                    limit,
                    packets,
                    ..
                } => {
                    assert_eq!((id, spi, dir), (SaId(1), Spi(0xa001), Direction::Outbound));
                    assert_eq!(limit, LifetimeLimit::Packets);
                    (kind, packets)
                }
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(kinds, [(LifetimeKind::Soft, 2), (LifetimeKind::Hard, 3)]);
    }

    #[test]
    fn unknown_spis_and_forgeries_are_reported_rate_limited() {
        let mut r = rig(1500);
        // A sealed packet from a peer gateway that has the mirror SAs (the rig's keys).
        let mut peer = mirror_peer();
        peer.send_lan("10.2.0.7", "10.1.0.10", 100);
        let good = peer.wan.recv().expect("sealed");
        let mut forged = MemFrame::from_bytes(good.data()).unwrap();
        let n = forged.data().len();
        forged.data_mut()[n - 1] ^= 1;
        let mut unknown = MemFrame::from_bytes(good.data()).unwrap();
        unknown.data_mut()[34..38].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        for (i, f) in [unknown, forged].into_iter().enumerate() {
            let mut f = f;
            readdress(&mut f, WAN_MAC, PEER_MAC);
            let again = MemFrame::from_bytes(f.data()).unwrap();
            assert!(r.wan.send(f).is_ok());
            r.w.poll(10 + i as u64);
            // The same again within the second: counted, not reported again.
            assert!(r.wan.send(again).is_ok());
            r.w.poll(20 + i as u64);
        }
        assert_eq!(r.drops(DropReason::UnknownSpi), 2);
        assert_eq!(r.drops(DropReason::AuthFailed), 2);
        r.agent.pump();
        let ev: Vec<Event> = r.agent.take_events().into();
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(
            ev[0],
            Event::UnknownSpi { spi: Spi(0xdead_beef), packets: 1, src, .. }
                if src == "192.0.2.2".parse::<IpAddr>().unwrap()
        ));
        assert!(matches!(
            ev[1],
            Event::AuthFailures {
                id: SaId(2),
                spi: Spi(0xb001),
                count: 1,
                ..
            }
        ));
        // A second later the running total is reported.
        let mut f = MemFrame::from_bytes(good.data()).unwrap();
        f.data_mut()[34..38].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        readdress(&mut f, WAN_MAC, PEER_MAC);
        assert!(r.wan.send(f).is_ok());
        r.w.poll(2_000_000_000);
        r.agent.pump();
        let ev: Vec<Event> = r.agent.take_events().into();
        assert!(
            matches!(ev[..], [Event::UnknownSpi { packets: 3, .. }]),
            "{ev:?}"
        );
    }

    #[test]
    fn host_bindings_come_before_the_spd_and_guard_the_clear_side() {
        let mut r = rig(1500);
        // The SPD discards 10.99.0.7; a binding protects it from the LAN's /24 only.
        r.send_lan("10.1.0.10", "10.99.0.7", 100);
        assert_eq!(r.drops(DropReason::PolicyDiscard), 1);
        r.update(Update::BindHost {
            dst: "10.99.0.7".parse().unwrap(),
            src: "10.1.0.0/24".parse().unwrap(),
            sa: SaId(1),
        });
        r.send_lan("10.1.0.10", "10.99.0.7", 100);
        let esp = r.wan.recv().expect("sealed by the bound SA");
        let ip = ipv4::Packet::new_checked(&esp.data()[14..]).unwrap();
        assert_eq!(ip.next_header(), IpProtocol::Esp);
        assert_eq!(&ip.payload()[0..4], &0xa001u32.to_be_bytes());
        r.send_lan("10.1.1.10", "10.99.0.7", 100);
        assert!(r.wan.recv().is_none(), "a source outside the binding");
        assert_eq!(r.drops(DropReason::PolicyDiscard), 2);

        // The bound host in the clear on the WAN side is refused.
        r.send_wan_clear("10.99.0.7", "10.1.0.10");
        assert!(r.lan.recv().is_none());
        assert_eq!(r.drops(DropReason::ClearButProtected), 1);

        r.update(Update::UnbindHost {
            dst: "10.99.0.7".parse().unwrap(),
        });
        r.send_lan("10.1.0.10", "10.99.0.7", 100);
        assert!(r.wan.recv().is_none());
        assert_eq!(r.drops(DropReason::PolicyDiscard), 3);
        // Unbinding what is not bound is reported, not fatal.
        let g = r.agent.send(
            agent::prepare(
                crate::crypto::best_backend(),
                &Update::UnbindHost {
                    dst: "10.99.0.7".parse().unwrap(),
                },
            )
            .unwrap(),
        );
        r.w.poll(9);
        r.agent.pump();
        assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
    }

    #[test]
    fn esp_from_a_new_address_is_accepted_but_never_redirects_the_tunnel() {
        let mut r = rig(1500);
        let mut peer = mirror_peer();
        peer.send_lan("10.2.0.7", "10.1.0.10", 100);
        let mut esp = peer.wan.recv().expect("sealed");
        readdress(&mut esp, WAN_MAC, PEER_MAC);
        // The peer (or an attacker who replays its packet) now appears at another address.
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut esp.data_mut()[14..]);
            ip.set_src_addr("203.0.113.9".parse().unwrap());
            ip.fill_checksum();
        }
        assert!(r.wan.send(esp).is_ok());
        r.w.poll(1);
        // M1: found by SPI alone, opened, delivered.
        assert!(r.lan.recv().is_some(), "accepted from the new address");
        // M3: our answers still go to the address the SA was negotiated with.
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
        let out = r.wan.recv().expect("sealed");
        let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "192.0.2.2".parse::<Ipv4Addr>().unwrap());

        // Only an update from the control plane moves it (every listed SA at once, or none).
        let bad = Update::RebindOutbound {
            ids: vec![SaId(1), SaId(77)],
            local: "192.0.2.1".parse().unwrap(),
            remote: "203.0.113.9".parse().unwrap(),
            encap: None,
        };
        let g = r
            .agent
            .send(agent::prepare(crate::crypto::best_backend(), &bad).unwrap());
        r.w.poll(2);
        r.agent.pump();
        assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
        let out = r.wan.recv().expect("sealed");
        let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
        assert_eq!(
            ip.dst_addr(),
            "192.0.2.2".parse::<Ipv4Addr>().unwrap(),
            "none moved"
        );
        r.update(Update::RebindOutbound {
            ids: vec![SaId(1)],
            local: "192.0.2.1".parse().unwrap(),
            remote: "203.0.113.9".parse().unwrap(),
            encap: Some(crate::esp::sa::UdpEncap {
                local_port: 4500,
                remote_port: 4500,
            }),
        });
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
        let out = r.wan.recv().expect("sealed");
        let ip = ipv4::Packet::new_checked(&out.data()[14..]).unwrap();
        assert_eq!(ip.dst_addr(), "203.0.113.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(ip.next_header(), IpProtocol::Udp, "now in UDP 4500");
    }

    #[test]
    fn a_roaming_client_answers_for_its_old_and_new_wan_address_then_only_the_new() {
        let mut r = rig(1500);
        let ask = |r: &mut Rig, target: [u8; 4]| -> bool {
            let f = crate::neighbor::tests::arp_request(target);
            assert!(r.wan.send(MemFrame::from_bytes(&f).unwrap()).is_ok());
            r.w.poll(1);
            r.wan.recv().is_some()
        };
        assert!(ask(&mut r, [192, 0, 2, 1]), "the configured address");
        assert!(!ask(&mut r, [198, 51, 100, 10]));
        r.update(Update::SetWanAddresses {
            addrs: vec![
                "198.51.100.10".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
            ],
        });
        assert!(ask(&mut r, [198, 51, 100, 10]), "the new one");
        assert!(ask(&mut r, [192, 0, 2, 1]), "the old one, for now");
        r.update(Update::SetWanAddresses {
            addrs: vec!["198.51.100.10".parse().unwrap()],
        });
        assert!(ask(&mut r, [198, 51, 100, 10]));
        assert!(!ask(&mut r, [192, 0, 2, 1]), "given up");
    }

    #[test]
    fn the_sa_list_follows_installs_replacements_and_deletes() {
        let mut r = rig(1500);
        for i in 10..15u32 {
            for dir in [Direction::Inbound, Direction::Outbound] {
                r.update(Update::AddSa {
                    dir,
                    params: sa(
                        i,
                        0x100 + i,
                        "192.0.2.1",
                        "192.0.2.2",
                        "10.1.0.0/24",
                        "10.2.0.0/24",
                    ),
                });
            }
        }
        r.update(Update::DeleteInbound { spi: Spi(0x10b) });
        r.update(Update::DeleteOutbound { id: SaId(10) });
        // A replacement (same id) is one entry, with the new counters.
        r.update(Update::AddSa {
            dir: Direction::Outbound,
            params: sa(
                12,
                0x999,
                "192.0.2.1",
                "192.0.2.2",
                "10.1.0.0/24",
                "10.2.0.0/24",
            ),
        });
        let mut got: Vec<(bool, u32, u32)> =
            r.w.handle()
                .sa_counters
                .lock()
                .unwrap()
                .iter()
                .map(|e| (e.direction == Direction::Outbound, e.id.0, e.spi.0))
                .collect();
        got.sort();
        let mut want: Vec<(bool, u32, u32)> =
            r.w.sad()
                .inbound_iter()
                .map(|s| (false, s.id.0, s.spi.0))
                .chain(r.w.sad().outbound_iter().map(|s| (true, s.id.0, s.spi.0)))
                .collect();
        want.sort();
        assert_eq!(got, want);
        assert!(got.contains(&(true, 12, 0x999)));
        assert!(!got
            .iter()
            .any(|e| *e == (false, 11, 0x10b) || e.1 == 10 && e.0));
    }

    #[test]
    fn ike_and_keepalives_are_not_esp() {
        let mut r = rig(1500);
        let mut frame = vec![0u8; 14 + 20 + 8 + 40];
        frame[0..6].copy_from_slice(&WAN_MAC);
        frame[12] = 0x08;
        {
            let repr = ipv4::Repr {
                src_addr: "192.0.2.2".parse().unwrap(),
                dst_addr: "192.0.2.1".parse().unwrap(),
                next_header: IpProtocol::Udp,
                payload_len: 48,
                hop_limit: 64,
                dscp: 0,
                ecn: 0,
                ident: 0,
                dont_frag: true,
            };
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut frame[14..]));
            let mut u = udp::Packet::new_unchecked(&mut frame[34..]);
            u.set_src_port(4500);
            u.set_dst_port(4500);
            u.set_len(48);
        }
        // Non-ESP marker (4 zero bytes) then an IKE header: punted, but no control attached.
        assert!(r.wan.send(MemFrame::from_bytes(&frame).unwrap()).is_ok());
        // A NAT keepalive: a single 0xFF byte.
        let mut ka = frame[..14 + 20 + 9].to_vec();
        {
            let mut ip = ipv4::Packet::new_unchecked(&mut ka[14..]);
            ip.set_total_len(29);
            ip.fill_checksum();
            let mut u = udp::Packet::new_unchecked(&mut ka[34..]);
            u.set_len(9);
        }
        ka[42] = 0xff;
        assert!(r.wan.send(MemFrame::from_bytes(&ka).unwrap()).is_ok());
        r.w.poll(0);
        assert_eq!(r.drops(DropReason::IkeNoControl), 1);
        assert_eq!(r.drops(DropReason::NatKeepalive), 1);
    }

    #[test]
    fn peek_spi_finds_raw_and_udp_encapsulated_esp_and_nothing_else() {
        let mut raw = vec![0u8; 14 + 20 + 8];
        raw[12..14].copy_from_slice(&[0x08, 0x00]);
        raw[14] = 0x45;
        raw[23] = 50;
        raw[34..38].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        assert_eq!(peek_spi(&raw), Some(Spi(0x0102_0304)));
        let mut udp = vec![0u8; 14 + 20 + 8 + 8];
        udp[12..14].copy_from_slice(&[0x08, 0x00]);
        udp[14] = 0x45;
        udp[23] = 17;
        udp[36..38].copy_from_slice(&4500u16.to_be_bytes());
        udp[42..46].copy_from_slice(&0x0a0b_0c0du32.to_be_bytes());
        assert_eq!(peek_spi(&udp), Some(Spi(0x0a0b_0c0d)));
        udp[36..38].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(peek_spi(&udp), None, "IKE on 500 is not ESP");
        // Truncated before the SPI's last byte, or an IHL pointing past the end: None, never
        // a panic.
        for n in 0..14 + 20 + 4 {
            assert_eq!(peek_spi(&raw[..n]), None, "{n} bytes");
        }
        raw[14] = 0x4f;
        assert_eq!(peek_spi(&raw), None);
    }
}
