//! The worker: one per core, pinned, poll-mode, run to completion, never blocking.
//!
//! A gateway worker owns one rx/tx queue of the clear-side port (LAN) and one of the protected
//! side (WAN), its SAD, its compiled SPD and its NAT table. Each turn of [`Worker::poll`]:
//! apply pending control commands (acknowledged by generation), receive a burst from each
//! port, classify and transform every frame in place, and transmit. A frame that cannot be
//! forwarded leaves with exactly one [`DropReason`], counted per core and, where an SA is
//! involved, per SA. A full output link holds frames in the worker's queue and pauses the rx
//! that feeds it: back-pressure, not loss.
//!
//! The worker's rooms, by path:
//!
//! | module | owns |
//! |---|---|
//! | `mod` (here) | the [`Worker`] record, its poll loop, the rx dispatch by side, back-pressure |
//! | `commands` | applying prepared commands between bursts, acknowledgements, released records, the SA list readers see |
//! | `hosts` | host bindings (road warriors' virtual IPs): the exact-match table before the SPD |
//! | `warm` | reading a burst's SA state ahead when the SAD is large |
//! | `neighbors` | ARP requests and neighbour solicitations for our own addresses, answered in place |
//! | `outbound` | LAN -> host binding or SPD -> ESP seal, or bypass (+ masquerade) -> WAN; ICMP too-big |
//! | `inbound` | WAN -> ESP open (in the SA's own encapsulation) -> selector and ECN checks -> LAN; clear traffic and masquerade in |
//! | `group` | group SAs (RFC 9838): generations by SPI, the sending one per group, the members as tunnel endpoints; seal with Sender-ID IVs, open with per-sender windows |
//! | `masq` | the per-connection masquerade (issue 21): a client's packets rewritten to their masquerading address, the answers back or forwarded to the FAM on a link SA, table misses held and reported |
//! | `hairpin` | a packet from one road warrior to another's virtual IP: sealed again onto its SA, back to the WAN |
//! | `hold` | what an outbound SA installed with a hold (a cluster move) seals in its first milliseconds, sent in order when the hold ends |
//! | `dual` | a client's host binding on probation: each packet takes the gateway path and a copy goes onto the direct SA |
//! | `gcm_burst` | GCM packets framed during the burst, sealed at its end (settled nonce, AAD and plaintext for the seal's vector loads) |
//! | `fragments` | outer fragments of ESP and IKE for us: the reassembler, and the whole datagram back on the inbound path |
//! | `ike_io` | IKE punted to the control plane; the control plane's datagrams built and sent |
//! | `handoff` | frames whose SA another worker owns (IKE: worker 0) to that worker's lane, waiting while it is full; frames other workers handed here |
//! | `reports` | events for the control plane: lifetimes, failures (rate-limited) |
//! | `sa_state` | an SA's state leaving the worker: sequence checkpoints (packets, time), the warning before the limit, reservations, exports on request |
//! | `parse` | what the worker reads of Ethernet and IP headers, through the `wire` views |
//! | `emit` | hop-limit and ECN rewrites, the Ethernet header toward a link |
//!
//! None of them may block, allocate per packet (punted IKE aside) or drop a frame without a
//! named [`DropReason`]. The per-packet functions are `#[inline]`: in separate modules they may
//! land in separate codegen units, where without the hint they would be called, not inlined.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rtrb::{Consumer, Producer};

use crate::esp::sa::Checkpoint;
use crate::handoff::{HandOff, Side as Lane};
use crate::ids::{SaId, Spi};
use crate::msg::{Datagram, Direction, Envelope, Reply};
use crate::nat::{Masquerade, NatDrop};
use crate::port::{Frame, Port};
use crate::reasm::{ReasmConfig, Reassembler};
use crate::sad::Sad;
use crate::spd::Spd;
use crate::stats::{CoreCounters, DropReason, SaCounters, Traffic};

mod cbc_burst;
mod checksum;
mod commands;
mod dual;
mod emit;
mod fragments;
mod gcm_burst;
mod group;
mod hairpin;
mod handoff;
mod hold;
mod hosts;
mod icmp_error;
mod ike_io;
mod inbound;
mod masq;
mod neighbors;
mod outbound;
mod parse;
mod reports;
mod resolve;
mod sa_state;
#[cfg(test)]
mod tests;
mod warm;

pub use checksum::{ClearChecksum, SAMPLE_EVERY};
use hosts::HostMap;
pub use resolve::{NeighborSetup, Routes, MEMO_NS};

/// Static facts of one link (from the config).
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub mac: [u8; 6],
    /// The configured next hop's MAC (`neighbor_mac`): every frame toward this link goes to it,
    /// unless the worker resolves this link's neighbours ([`Worker::set_neighbors`]).
    pub neighbor: [u8; 6],
    pub addr4: Option<Ipv4Addr>,
    pub addr6: Option<Ipv6Addr>,
    /// IP MTU.
    pub mtu: u16,
}

/// Frames per rx burst.
pub const BURST: usize = 32;

/// Above this many SAs a burst's SA state is read ahead ([`Worker::warm_burst`]). Measured
/// (64 B, `roamgate perf point`, this VM: 1 MB L2 per core, 32 MB L3): at 1000 SAs the pass
/// cost 7%, at ~3000 it broke even, at 10000 it saved a third of the time per packet, at
/// 100000 a fifth to a half.
const WARM_SAS_ABOVE: usize = 3000;

/// In a run of busy turns, [`Worker::run_with`] reads the clock every this many.
const CLOCK_TURNS: u32 = 4;

/// A tx queue longer than this pauses the rx that feeds it.
const TXQ_HIGH: usize = 4 * BURST;

/// The control side of a worker: where its commands come from and its replies go.
pub struct ControlLink {
    pub commands: Consumer<Envelope>,
    pub replies: Producer<Reply>,
    pub punt: Option<Producer<Datagram>>,
    /// The cookie lane: IKE_SA_INIT requests that echo a cookie ([`natt::is_cookie_echo`]),
    /// apart from `punt` so that a flood of requests without one cannot fill it. Without
    /// it they take `punt` like the rest.
    ///
    /// [`natt::is_cookie_echo`]: crate::wire::natt::is_cookie_echo
    pub punt_cookie: Option<Producer<Datagram>>,
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
    /// Host bindings on probation (a client's direct SAs not yet proven): the packet takes
    /// its way as without them, a copy goes onto the SA (`dual`).
    dual: HostMap,
    /// Group SAs (`group`).
    groups: group::Groups,
    /// The per-connection masquerade (`masq`); None until a masquerade command came.
    masq: Option<Box<masq::MasqState<P::Frame>>>,
    /// Hairpinned packets by pair since the last report (`hairpin`).
    hairpins: hairpin::HairpinPairs,
    /// Further WAN addresses answered for (a roaming client's old one, for a moment).
    wan_also: Vec<IpAddr>,
    /// Outer fragments for us are reassembled here (None: `outer_fragment` drops).
    reasm: Option<Box<Reassembler>>,
    /// The reassembler's fragment count when its counters were last published.
    reasm_published: u64,
    /// What happens to the L4 checksums of LAN packets before sealing.
    clear_checksum: checksum::ChecksumState,
    /// Neighbour resolution of the LAN and WAN links (indexed by [`Side`]); None: the link's
    /// configured `neighbor` MAC.
    resolvers: [Option<Box<resolve::LinkNeighbors<P::Frame>>>; 2],
    /// Gratuitous ARPs and unsolicited advertisements sent.
    announced: u64,
    /// Where each SA sits in `sa_counters`.
    sa_index: std::collections::HashMap<(bool, u32), usize>,
    /// The clock of the current turn (ns, the caller's).
    now: u64,
    unknown_spi_total: u64,
    /// When an unknown-SPI, auth-failure and replay-failure report last went out.
    reported_at: [u64; 3],
    /// What is left of this second's ICMP errors (`icmp_error`).
    icmp_budget: icmp_error::IcmpBudget,
    /// ICMP errors about packets from the WAN, for the outbound path at the burst's end.
    icmp_pending: Vec<P::Frame>,
    /// The checkpoints of outbound SAs installed without their own.
    checkpoint_default: Checkpoint,
    /// Outbound SAs that report their sequence numbers by time too.
    timed: sa_state::TimedCheckpoints,
    counters: Arc<CoreCounters>,
    sa_counters: SaCounterList,
    control: ControlLink,
    /// Replies the reply ring had no room for; while any wait, no new command is applied.
    replies_waiting: VecDeque<Reply>,
    rx: Vec<P::Frame>,
    /// The burst's CBC packets waiting for their seal or open (see [`cbc_burst`]).
    cbc_seals: Vec<(P::Frame, cbc_burst::SealLater)>,
    cbc_opens: Vec<(P::Frame, cbc_burst::OpenLater)>,
    /// The burst's GCM packets framed and waiting for their seal (see [`gcm_burst`]).
    gcm_seals: Vec<gcm_burst::SealGcm<P::Frame>>,
    lan_txq: VecDeque<P::Frame>,
    wan_txq: VecDeque<P::Frame>,
    generation: u64,
    /// The IPv4 identification of the next IKE datagram sent in fragments.
    ike_frag_ident: u16,
    /// The other workers, when there are any (`handoff`): frames whose SA another worker
    /// owns go there.
    handoff: Option<Box<HandOff>>,
    /// Frames waiting for room in their lane (destination worker, side they came in on).
    handoff_q: VecDeque<(u16, Lane, P::Frame)>,
    /// How many workers share the client masquerade's address (1 without a hand-off).
    workers: u16,
    /// True while this worker processes frames another worker handed it: they stay here.
    receiving: bool,
    /// Outbound SAs in their hold after a move, and the frames they sealed meanwhile (`hold`).
    holds: hold::Holds,
    held: VecDeque<hold::Held<P::Frame>>,
}

/// The clear (LAN) or protected (WAN) side of a gateway.
#[derive(Clone, Copy)]
enum Side {
    Lan,
    Wan,
}

impl Side {
    /// The hand-off lane of frames received on this side.
    fn lane(self) -> Lane {
        match self {
            Side::Lan => Lane::Lan,
            Side::Wan => Lane::Wan,
        }
    }
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
    /// Toward this side once the next hop's MAC is known (the neighbour cache has it or keeps
    /// the frame until it does).
    Resolve(Side, IpAddr),
    /// To the worker that owns the frame's SA (or, for IKE, the one with the punt ring).
    HandOff(u16),
    /// A decrypted answer to the client's virtual IP, to the worker whose masquerade holds
    /// its session.
    HandOffInner(u16),
    Drop(DropReason),
    /// A CBC SA's packet, framed, sealed with the rest of the burst's ([`cbc_burst`]).
    SealLater(cbc_burst::SealLater),
    /// A GCM SA's packet, framed and on its way, parked to be sealed at the burst's end
    /// ([`gcm_burst`]).
    SealGcm,
    /// A CBC SA's packet, checked up to its ICV, opened with the rest of the burst's.
    OpenLater(cbc_burst::OpenLater),
    /// Held for a masquerade table miss (`masq`), run again when the answer comes.
    MasqHold(proto::masq::MasqMissKey),
    /// Sealed on an SA in its hold (`hold`): waits until `until`, then to the WAN (or its next
    /// hop `hop`, resolved).
    Hold {
        until: u64,
        hop: Option<IpAddr>,
    },
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
            dual: HostMap::default(),
            groups: Default::default(),
            hairpins: Default::default(),
            masq: None,
            wan_also: Vec::new(),
            reasm: None,
            reasm_published: 0,
            clear_checksum: checksum::ChecksumState::default(),
            resolvers: [None, None],
            announced: 0,
            sa_index: std::collections::HashMap::new(),
            now: 0,
            unknown_spi_total: 0,
            reported_at: [0; 3],
            icmp_budget: icmp_error::IcmpBudget::default(),
            icmp_pending: Vec::new(),
            checkpoint_default: Checkpoint::OFF,
            timed: Default::default(),
            counters: Arc::new(CoreCounters::default()),
            sa_counters: Arc::new(std::sync::Mutex::new(Vec::new())),
            control,
            replies_waiting: VecDeque::new(),
            rx: Vec::with_capacity(BURST),
            cbc_seals: Vec::with_capacity(BURST),
            cbc_opens: Vec::with_capacity(BURST),
            gcm_seals: Vec::with_capacity(BURST),
            lan_txq: VecDeque::with_capacity(TXQ_HIGH + BURST),
            wan_txq: VecDeque::with_capacity(TXQ_HIGH + BURST),
            ike_frag_ident: 1,
            generation: 0,
            handoff: None,
            handoff_q: VecDeque::new(),
            workers: 1,
            receiving: false,
            holds: hold::Holds::default(),
            held: VecDeque::new(),
        }
    }

    /// Joins this worker to the others (its ends of [`crate::handoff::mesh`]): frames whose
    /// SA another worker owns, and IKE when this worker has no punt ring, go to that worker.
    pub fn set_handoff(&mut self, h: HandOff) {
        self.workers = h.workers().max(1);
        self.handoff = (h.workers() > 1).then(|| Box::new(h));
        self.share_nat_ports();
    }

    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            id: self.id,
            counters: self.counters.clone(),
            sa_counters: self.sa_counters.clone(),
        }
    }

    /// Reassembles outer fragments of ESP and IKE sent to us, within these limits (None: drops
    /// them as `outer_fragment`).
    pub fn set_reassembly(
        &mut self,
        cfg: Option<ReasmConfig>,
    ) -> Result<(), crate::reasm::ConfigError> {
        self.reasm = match cfg {
            Some(c) => Some(Box::new(Reassembler::new(c)?)),
            None => None,
        };
        Ok(())
    }

    /// What to do with the TCP/UDP checksums of LAN packets before sealing them (default:
    /// pass them on, verifying a sample).
    pub fn set_clear_checksum(&mut self, mode: ClearChecksum) {
        self.clear_checksum = checksum::ChecksumState::new(mode);
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
        let (mut now, mut busy_turns) = (0u64, 0u32);
        while !stop.load(Ordering::Relaxed) {
            // The clock is read before every turn that follows an idle one, and every
            // CLOCK_TURNS-th of a run of busy turns: a read costs ~50 ns on a VM's clock (1.7 ns
            // per packet of full 64-byte bursts), and `now` is then at most three busy turns
            // behind (a few microseconds under full bursts; every timer here is in
            // milliseconds).
            if idle > 0 || busy_turns % CLOCK_TURNS == 0 {
                now = start.elapsed().as_nanos() as u64;
            }
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
                busy_turns = busy_turns.wrapping_add(1);
            }
        }
        // Let queued frames out before returning (bounded: the peer may be gone), held ones too.
        self.release_held(u64::MAX);
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
        self.counters.clock.set(now);
        let mut work = self.apply_commands();
        work += self.release_held(now);
        work += self.transmit_datagrams();
        self.flush();
        // Each rx is paused only by the queues it feeds: LAN rx feeds the WAN (and the odd
        // ICMP error back to the LAN), WAN rx feeds the LAN. Gating WAN rx on the WAN queue too
        // would deadlock two gateways whose WAN links are both full.
        // Frames waiting for a full lane pause both rx (they may feed it), never the intake of
        // other workers' frames, which feeds only this worker's ports.
        let lanes_free = self.flush_handoffs();
        if lanes_free && self.wan_txq.len() < TXQ_HIGH && self.lan_txq.len() < TXQ_HIGH {
            work += self.rx_lan(now);
        }
        if lanes_free && self.lan_txq.len() < TXQ_HIGH {
            work += self.rx_wan(now);
        }
        if self.handoff.is_some() && self.wan_txq.len() < TXQ_HIGH && self.lan_txq.len() < TXQ_HIGH
        {
            work += self.take_handoffs(now);
        }
        self.flush_handoffs();
        self.flush();
        if let Some(nat) = self.nat.as_mut() {
            nat.expire(now, 64);
        }
        self.reasm_housekeeping(now);
        self.neighbor_housekeeping(now);
        if now >= self.timed.next {
            self.timed_checkpoints(now);
        }
        self.report_hairpins(now);
        if self.masq.is_some() {
            self.masq_housekeeping(now);
        }
        // Whatever parked a seal or an open outside a burst (none should) is finished here,
        // before the next turn applies commands.
        self.finish_burst(now);
        work
    }

    fn flush(&mut self) {
        let n = self.lan.tx_burst(&mut self.lan_txq);
        let m = self.wan.tx_burst(&mut self.wan_txq);
        self.counters.count(Traffic::TxPackets, (n + m) as u64);
    }

    /// Receives a burst on one side and sends each frame where its verdict says.
    #[inline]
    fn rx_burst(&mut self, side: Side, now: u64) -> usize {
        let mut rx = core::mem::take(&mut self.rx);
        let n = match side {
            Side::Lan => self.lan.rx_burst(&mut rx, BURST),
            Side::Wan => self.wan.rx_burst(&mut rx, BURST),
        };
        self.warm_burst(&rx, side);
        let mut bytes = 0u64;
        for f in rx.drain(..) {
            bytes += f.len() as u64;
            self.process(f, side, now);
        }
        self.rx = rx;
        self.finish_burst(now);
        self.counters.count(Traffic::RxPackets, n as u64);
        self.counters.count(Traffic::RxBytes, bytes);
        n
    }
}

impl<P: Port> Worker<P> {
    /// One received frame (from a port, or from another worker), to where its verdict says.
    #[inline]
    fn process(&mut self, mut f: P::Frame, side: Side, now: u64) {
        let verdict = match self.neighbor(&mut f, side) {
            Some(v) => v,
            None => match side {
                Side::Lan => match self
                    .masq
                    .is_some()
                    .then(|| self.masq_lan(&mut f, now))
                    .flatten()
                {
                    Some(v) => v,
                    None => {
                        if !self.dual.is_empty() {
                            self.dual_copy(&f, now);
                        }
                        self.outbound(&mut f, now)
                    }
                },
                Side::Wan => self.inbound(&mut f, now),
            },
        };
        self.dispatch(f, side, verdict);
    }

    /// Sends, queues, hands off or drops a processed frame (that arrived on `side`) as its
    /// verdict says.
    #[inline]
    fn dispatch(&mut self, f: P::Frame, side: Side, verdict: Verdict) {
        match verdict {
            Verdict::ToWan => self.wan_txq.push_back(f),
            Verdict::ToLan => self.lan_txq.push_back(f),
            Verdict::Resolve(side, hop) => self.resolve_and_send(side, hop, f),
            Verdict::HandOff(w) => self.handoff_q.push_back((w, side.lane(), f)),
            Verdict::HandOffInner(w) => {
                self.counters.count(Traffic::VipAnswersHandedOff, 1);
                self.handoff_q.push_back((w, Lane::Inner, f))
            }
            Verdict::Drop(r) => self.counters.record_drop(r),
            Verdict::SealLater(s) => self.cbc_seals.push((f, s)),
            Verdict::SealGcm => self.park_gcm_frame(f),
            Verdict::OpenLater(o) => self.cbc_opens.push((f, o)),
            Verdict::MasqHold(k) => self.masq_hold(f, k),
            Verdict::Hold { until, hop } => self.hold(f, until, hop),
        }
    }

    /// Forwards the IP packet in `f` toward `side`: its Ethernet header, to the configured or
    /// resolved next hop.
    #[inline]
    fn forward(&mut self, f: &mut P::Frame, side: Side, ipv6: bool) -> Verdict {
        match self.address(f, side, ipv6) {
            resolve::Handoff::Send => match side {
                Side::Lan => Verdict::ToLan,
                Side::Wan => Verdict::ToWan,
            },
            resolve::Handoff::Resolve(hop) => Verdict::Resolve(side, hop),
            resolve::Handoff::Drop(r) => Verdict::Drop(r),
        }
    }
}

/// The drop reason of the masquerade's refusal.
#[inline]
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
