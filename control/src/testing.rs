//! N parties on one virtual clock for the control core's tests: gateways (a [`Driver`] with
//! its [`ControlCore`] over a simulated data plane of N workers), bare IKE peers (an
//! [`ike::Endpoint`] alone, as `ike::testing` runs them) and the network between them. A simulated worker applies updates after a configurable delay (acknowledgements
//! that arrive late) and keeps what it was given, so tests can ask which worker holds which
//! SA; datagrams go from a gateway's transmit side to the gateway whose address they name,
//! through a fault hook that may drop them.
//!
//! Owns: the virtual clock, the simulated workers, routing datagrams.
//! Must never: read a real clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ike::Instant;
use proto::{Datagram, Direction, Event as DpEvent, SaId, Spi, Update};

use crate::config::ike::IkeYaml;
use crate::core::ControlCore;
use crate::driver::{Driver, IkeStore, Input, Link, LinkError, TurnError};
use crate::repo::SaRepository;

/// One simulated worker: what it holds, what it was sent, and its pending updates.
#[derive(Default)]
pub struct SimWorker {
    pub inbound: BTreeMap<Spi, SaId>,
    pub outbound: BTreeMap<SaId, Spi>,
    pub spd_rules: usize,
    /// Outbound SAs' sequence state as the data plane keeps it: (last used, reservation).
    pub out_seq: BTreeMap<SaId, (u64, Option<u64>)>,
    /// Every update it was sent, in order.
    pub received: Vec<Update>,
    /// Inbound SAs installed watched (a checkpoint on an inbound SA): their first packet is
    /// reported (`Event::SaState`, generation 0), as the data plane does.
    pub watched: std::collections::BTreeSet<Spi>,
    /// Inbound SAs' windows as the data plane keeps them, reduced to (top, width): a copy
    /// installed again over itself keeps the higher top (the data plane unites the windows).
    pub in_top: BTreeMap<Spi, (u64, u32)>,
    /// Host bindings (virtual IP -> the outbound SA LAN traffic to it is sealed with).
    pub bound: BTreeMap<std::net::IpAddr, SaId>,
    /// Outbound SAs installed with a hold (`Resume::hold_us`), as the data plane keeps it:
    /// Err(length) until the first packet, then Ok(its end).
    pub hold: BTreeMap<SaId, Result<Instant, Duration>>,
    /// Reports made while applying updates (exports), for the link's inputs.
    events: Vec<DpEvent>,
    pending: VecDeque<(Instant, u64, Update)>,
    next: u64,
    applied: u64,
}

impl SimWorker {
    fn apply(&mut self, generation: u64, u: &Update) {
        match u {
            Update::AddSa {
                dir: Direction::Inbound,
                params,
            } => {
                let same = self.inbound.get(&params.spi) == Some(&params.id);
                self.inbound.insert(params.spi, params.id);
                if params.checkpoint.is_some() {
                    self.watched.insert(params.spi);
                } else {
                    self.watched.remove(&params.spi);
                }
                let resumed = params.resume.replay.as_ref().map_or(0, |r| r.top);
                let kept = if same {
                    self.in_top.get(&params.spi).map_or(0, |t| t.0)
                } else {
                    0
                };
                self.in_top
                    .insert(params.spi, (resumed.max(kept), params.replay_window));
            }
            Update::ExportSa {
                sa: proto::sa::SaRef::Inbound(spi),
            } => {
                if let (Some(id), Some((top, width))) =
                    (self.inbound.get(spi), self.in_top.get(spi))
                {
                    self.events.push(DpEvent::SaState {
                        worker: 0,
                        generation,
                        id: *id,
                        spi: *spi,
                        state: proto::sa::SaState::Inbound {
                            replay: window_of(*top, *width),
                        },
                    });
                }
            }
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } => {
                self.outbound.insert(params.id, params.spi);
                self.out_seq
                    .insert(params.id, (params.resume.seq, params.resume.seq_reserved));
                if params.resume.hold_us > 0 {
                    let d = Duration::from_micros(u64::from(params.resume.hold_us));
                    self.hold.insert(params.id, Err(d));
                } else {
                    self.hold.remove(&params.id);
                }
            }
            Update::DeleteInbound { spi } => {
                self.inbound.remove(spi);
                self.watched.remove(spi);
                self.in_top.remove(spi);
            }
            Update::DeleteOutbound { id } => {
                self.outbound.remove(id);
                self.out_seq.remove(id);
                self.hold.remove(id);
            }
            Update::ReserveSeq { id, up_to } => {
                if let Some((_, r)) = self.out_seq.get_mut(id) {
                    *r = Some(r.map_or(*up_to, |r| r.max(*up_to)));
                }
            }
            Update::ReplaceSpd { rules } => self.spd_rules = rules.len(),
            Update::BindHost { dst, sa, .. } => {
                self.bound.insert(*dst, *sa);
            }
            Update::UnbindHost { dst } => {
                self.bound.remove(dst);
            }
            _ => {}
        }
    }

    /// Packets up to sequence number `seq` arrived on inbound SA `spi`: false if the worker
    /// does not hold it; the report of a watched SA's first packet, if this was it.
    pub fn receive_inbound(&mut self, spi: Spi, seq: u64) -> (bool, Option<DpEvent>) {
        let Some(id) = self.inbound.get(&spi).copied() else {
            return (false, None);
        };
        let t = self.in_top.entry(spi).or_insert((0, 64));
        t.0 = t.0.max(seq);
        let (top, width) = *t;
        let first = self.watched.remove(&spi).then(|| DpEvent::SaState {
            worker: 0,
            generation: 0,
            id,
            spi,
            state: proto::sa::SaState::Inbound {
                replay: window_of(top, width),
            },
        });
        (true, first)
    }

    /// Sends up to `n` packets on outbound SA `id` as a data plane does (the next number each
    /// time, never above the reservation): the (SPI, sequence number) of each.
    pub fn send_outbound(&mut self, id: SaId, n: u64) -> Vec<(Spi, u64)> {
        let (Some(spi), Some((used, reserved))) =
            (self.outbound.get(&id).copied(), self.out_seq.get_mut(&id))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for _ in 0..n {
            let next = *used + 1;
            if reserved.is_some_and(|r| next > r) {
                break;
            }
            *used = next;
            out.push((spi, next));
        }
        out
    }

    /// [`send_outbound`](Self::send_outbound) at `now`, each packet with the time it leaves
    /// the data plane: the end of the SA's hold while it lasts (the first packet starts it),
    /// else `now`.
    pub fn send_outbound_at(&mut self, id: SaId, n: u64, now: Instant) -> Vec<(Spi, u64, Instant)> {
        let sent = self.send_outbound(id, n);
        let leaves = match self.hold.get(&id).copied() {
            Some(Err(d)) if !sent.is_empty() => {
                let until = now.saturating_add(d);
                self.hold.insert(id, Ok(until));
                until
            }
            Some(Ok(until)) if now < until => until,
            Some(Ok(_)) => {
                self.hold.remove(&id);
                now
            }
            _ => now,
        };
        sent.into_iter()
            .map(|(spi, seq)| (spi, seq, leaves))
            .collect()
    }

    /// How many SA installs it received.
    pub fn installs(&self) -> usize {
        self.received
            .iter()
            .filter(|u| matches!(u, Update::AddSa { .. }))
            .count()
    }

    pub fn policies(&self) -> usize {
        self.received
            .iter()
            .filter(|u| matches!(u, Update::ReplaceSpd { .. }))
            .count()
    }
}

/// A window of `width` packets whose top is `top`, every number in it received (what the
/// simulated workers export: they keep only the top).
fn window_of(top: u64, width: u32) -> proto::sa::ReplayState {
    let words = (width / 64).max(1) as usize;
    proto::sa::ReplayState {
        top,
        seen: vec![u64::MAX; words],
    }
}

/// A simulated data plane: N workers, worker 0's IKE rings.
pub struct SimLink {
    pub workers: Vec<SimWorker>,
    /// How long a worker takes to apply (and acknowledge) an update.
    pub ack_delay: Duration,
    now: Instant,
    inputs: VecDeque<Input>,
    /// Datagrams the core handed to the data plane, not yet on the network.
    pub sent: VecDeque<Datagram>,
}

impl SimLink {
    pub fn new(workers: u16) -> SimLink {
        SimLink {
            workers: (0..workers).map(|_| SimWorker::default()).collect(),
            ack_delay: Duration::ZERO,
            now: Instant::ZERO,
            inputs: VecDeque::new(),
            sent: VecDeque::new(),
        }
    }

    /// A datagram for the control plane, as worker 0 punts it.
    pub fn punt(&mut self, d: Datagram) {
        self.inputs.push_back(Input::Datagram(d));
    }

    /// A worker's report.
    pub fn report(&mut self, e: DpEvent) {
        self.inputs.push_back(Input::Event(e));
    }

    /// Worker `w` restarted empty.
    pub fn restart(&mut self, w: u16) {
        if let Some(x) = self.workers.get_mut(usize::from(w)) {
            // It loses its SAs; the log of what it was sent stays for the tests.
            let (next, applied) = (x.next, x.applied);
            let received = std::mem::take(&mut x.received);
            *x = SimWorker {
                next,
                applied,
                received,
                ..SimWorker::default()
            };
        }
        self.inputs.push_back(Input::Fresh { worker: w });
    }

    /// Applies what is due at `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        self.now = now;
        for w in self.workers.iter_mut() {
            while w.pending.front().is_some_and(|(t, ..)| *t <= now) {
                if let Some((_, g, u)) = w.pending.pop_front() {
                    w.apply(g, &u);
                    w.applied = g;
                    for e in w.events.drain(..) {
                        self.inputs.push_back(Input::Event(e));
                    }
                }
            }
        }
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| w.pending.front().map(|(t, ..)| *t))
            .min()
    }
}

impl Link for SimLink {
    fn pump(&mut self) -> bool {
        false
    }

    fn poll_input(&mut self) -> Option<Input> {
        self.inputs.pop_front()
    }

    fn send_update(&mut self, worker: u16, update: Update) -> Result<u64, LinkError> {
        let due = self.now.saturating_add(self.ack_delay);
        let Some(w) = self.workers.get_mut(usize::from(worker)) else {
            return Err(LinkError {
                worker,
                why: "no such worker".into(),
            });
        };
        w.next += 1;
        w.received.push(update.clone());
        w.pending.push_back((due, w.next, update));
        let g = w.next;
        if self.ack_delay.is_zero() {
            self.advance(self.now);
        }
        Ok(g)
    }

    fn released(&self, worker: u16) -> u64 {
        self.workers
            .get(usize::from(worker))
            .map_or(u64::MAX, |w| w.applied)
    }

    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram> {
        self.sent.push_back(d);
        Ok(())
    }
}

/// A gateway: its control loop and its simulated data plane.
pub struct Gateway {
    pub driver: Driver,
    pub link: SimLink,
    pub addr: IpAddr,
    /// Its control process died (its store failed, as a crash injected there makes it): it
    /// takes no turns until [`World::restart_control`]; its data plane goes on.
    pub crashed: bool,
}

/// An IKE state store in memory that can crash the control process at its `n`th operation
/// (1-based), before or after the operation is durable.
#[derive(Clone, Default)]
pub struct MemStore {
    pub files: std::sync::Arc<std::sync::Mutex<BTreeMap<ike::IkeSaId, Vec<u8>>>>,
    pub ops: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// (n, after): crash at operation n, before it is done or after.
    pub crash_at: Option<(usize, bool)>,
}

impl MemStore {
    fn op(&mut self, f: impl FnOnce(&mut BTreeMap<ike::IkeSaId, Vec<u8>>)) -> Result<(), String> {
        let n = self.ops.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if self.crash_at == Some((n, false)) {
            return Err(format!("crash before operation {n}"));
        }
        if let Ok(mut files) = self.files.lock() {
            f(&mut files);
        }
        if self.crash_at == Some((n, true)) {
            return Err(format!("crash after operation {n}"));
        }
        Ok(())
    }

    /// What a restarted control process reads back.
    pub fn stored(&self) -> Vec<crate::core::durable::StoredIkeSa> {
        let files = self.files.lock().unwrap();
        files
            .values()
            .map(|b| crate::core::durable::StoredIkeSa::from_bytes(b).unwrap())
            .collect()
    }
}

impl IkeStore for MemStore {
    fn write(&mut self, batch: &[(ike::IkeSaId, &[u8])]) -> Result<(), String> {
        self.op(|f| {
            for (ike, bytes) in batch {
                f.insert(*ike, bytes.to_vec());
            }
        })
    }

    fn remove(&mut self, ike: ike::IkeSaId) -> Result<(), String> {
        self.op(|f| {
            f.remove(&ike);
        })
    }
}

impl Gateway {
    pub fn core(&mut self) -> &mut ControlCore {
        self.driver.core_mut()
    }

    /// The IKE view as last published.
    pub fn view(&self) -> serde_json::Value {
        let json = self.driver.view.lock().unwrap().json.clone();
        serde_json::from_str(&json).unwrap_or(serde_json::Value::Null)
    }
}

/// A bare IKE endpoint at an address (a peer with no data plane of ours).
pub struct Peer {
    pub endpoint: ike::Endpoint,
    pub addr: IpAddr,
    pub events: Vec<ike::Event>,
}

/// Decides whether a datagram (from party, to party) is delivered; parties are numbered
/// gateways first, then peers.
pub type Fault = Box<dyn FnMut(usize, usize, &Datagram) -> bool>;

/// Gateways on one virtual clock.
pub struct World {
    pub now: Instant,
    pub gws: Vec<Gateway>,
    pub peers: Vec<Peer>,
    pub fault: Option<Fault>,
    /// Datagrams delivered so far.
    pub delivered: usize,
}

impl World {
    pub fn new() -> World {
        World {
            now: Instant::ZERO,
            gws: Vec::new(),
            peers: Vec::new(),
            fault: None,
            delivered: 0,
        }
    }

    /// Adds a gateway at `addr` with `ike` (an `ike` section) over `workers` workers.
    pub fn gateway(&mut self, ike: &str, addr: &str, workers: u16) -> usize {
        let p = Path::new("test.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, ike)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let addr: IpAddr = addr.parse().unwrap();
        let seed = [self.gws.len() as u8 + 1; 32];
        let core = ControlCore::new(
            conns,
            SaRepository::new(Vec::new(), 64),
            workers,
            seed,
            addr,
        );
        let mut driver = Driver::new(core);
        driver.set_silent();
        self.gws.push(Gateway {
            driver,
            link: SimLink::new(workers),
            addr,
            crashed: false,
        });
        self.gws.len() - 1
    }

    /// Gateway `i`'s control process starts again (a new core with another seed, `ike` its
    /// `ike` section) over the same data plane, adopts what `store` holds and keeps its IKE
    /// SAs there from now on.
    pub fn restart_control(
        &mut self,
        i: usize,
        ike: &str,
        store: MemStore,
    ) -> crate::core::durable::AdoptReport {
        let p = Path::new("test.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, ike)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let g = &mut self.gws[i];
        let workers = g.driver.core().workers();
        let core = ControlCore::new(
            conns,
            SaRepository::new(Vec::new(), 64),
            workers,
            [0x40 | i as u8; 32],
            g.addr,
        );
        let mut driver = Driver::new(core);
        driver.set_silent();
        let stored = store.stored();
        driver.core_mut().enable_durability();
        let report = driver.core_mut().adopt_stored(self.now, stored);
        driver.set_store(Box::new(store));
        g.driver = driver;
        g.crashed = false;
        report
    }

    /// Adds a bare IKE endpoint at `addr` with `ike` (an `ike` section); returns its party
    /// number (after every gateway: add gateways first).
    pub fn peer(&mut self, ike: &str, addr: &str) -> usize {
        let p = Path::new("peer.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, ike)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let seed = [0x80 | self.peers.len() as u8; 32];
        self.peers.push(Peer {
            endpoint: ike::Endpoint::new(crate::config::ike::endpoint_config(&conns), seed),
            addr: addr.parse().unwrap(),
            events: Vec::new(),
        });
        self.gws.len() + self.peers.len() - 1
    }

    /// Starts every connection of peer `i` (its index among peers) that has a remote address.
    pub fn peer_connect(&mut self, i: usize, conn: &str, remote: &str) {
        let now = self.now;
        let p = &mut self.peers[i];
        let local = std::net::SocketAddr::new(p.addr, 500);
        p.endpoint
            .connect(now, conn, local, remote.parse().unwrap())
            .unwrap();
    }

    pub fn gw(&mut self, i: usize) -> &mut Gateway {
        &mut self.gws[i]
    }

    /// Every gateway takes a turn and the network delivers, until nothing moves at `now`.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            for g in self.gws.iter_mut() {
                g.link.advance(self.now);
                if g.crashed {
                    continue;
                }
                match g.driver.turn(self.now, &mut g.link) {
                    Ok(m) => moved |= m,
                    Err(TurnError::Store(_)) => {
                        g.crashed = true;
                        moved = true;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            let mut wire = Vec::new();
            for (from, g) in self.gws.iter_mut().enumerate() {
                wire.extend(g.link.sent.drain(..).map(|d| (from, d)));
            }
            let n = self.gws.len();
            for (i, p) in self.peers.iter_mut().enumerate() {
                while let Some(t) = p.endpoint.poll_transmit() {
                    let d = Datagram {
                        src: t.src.ip(),
                        dst: t.dst.ip(),
                        src_port: t.src.port(),
                        dst_port: t.dst.port(),
                        payload: t.data,
                    };
                    wire.push((n + i, d));
                }
            }
            for (from, d) in wire {
                moved = true;
                let to = match self.gws.iter().position(|g| g.addr == d.dst) {
                    Some(g) => g,
                    None => match self.peers.iter().position(|p| p.addr == d.dst) {
                        Some(p) => n + p,
                        None => continue,
                    },
                };
                if self.fault.as_mut().is_some_and(|f| !f(from, to, &d)) {
                    continue;
                }
                self.delivered += 1;
                match self.gws.get_mut(to) {
                    Some(g) => g.link.punt(d),
                    None => {
                        let p = &mut self.peers[to - n];
                        let local = std::net::SocketAddr::new(d.dst, d.dst_port);
                        let remote = std::net::SocketAddr::new(d.src, d.src_port);
                        p.endpoint.handle(self.now, local, remote, &d.payload);
                    }
                }
            }
            for p in self.peers.iter_mut() {
                if p.endpoint.poll_timeout().is_some_and(|t| t <= self.now) {
                    moved = true;
                    p.endpoint.handle_timeout(self.now);
                }
                while let Some(e) = p.endpoint.poll_event() {
                    p.events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.gws
            .iter()
            .flat_map(|g| {
                let core = (!g.crashed).then(|| g.driver.core().poll_timeout());
                [core.flatten(), g.link.next_due()]
            })
            .chain(self.peers.iter().map(|p| p.endpoint.poll_timeout()))
            .flatten()
            .min()
    }

    /// Runs the world until virtual time `t`.
    pub fn run_until(&mut self, t: Instant) {
        loop {
            self.settle();
            match self.next_deadline() {
                Some(n) if n <= t => {
                    // A deadline the turn did not consume moves time on a little.
                    self.now = if n > self.now {
                        n
                    } else {
                        self.now.saturating_add(Duration::from_millis(1))
                    };
                }
                _ => {
                    self.now = self.now.max(t);
                    self.settle();
                    return;
                }
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now.saturating_add(d);
        self.run_until(t);
    }
}
