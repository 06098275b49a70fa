//! The control loop of `roamgate run` (and of tests that pair two gateways in one process):
//! the IKEv2 endpoint fed from the data plane's punt ring,
//! its datagrams sent through the transmit ring, its events turned into data-plane updates by
//! the SA repository and sent to every worker through the agent.
//!
//! Today this loop runs in the data-plane process (a thread of `roamgate run`), joined to the
//! workers by in-process rings; the shared-memory transport that lets it live in its own
//! process is the next step. Nothing here logs key material.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::ike::{endpoint_config, Connection};
use crate::repo::SaRepository;
use ike::{Endpoint, Event, IkeSaId};
use pipeline::agent::{self, AgentError, WorkerLink};
use pipeline::crypto::Backend;
use proto::{Datagram, Event as DpEvent, LifetimeKind, SaId, Spi, Update};
use rtrb::{Consumer, Producer};

/// What the views show of IKE (never keys).
#[derive(Default, Clone)]
pub struct IkeView {
    pub json: String,
}

pub struct IkeControl {
    endpoint: Endpoint,
    repo: SaRepository,
    conns: Vec<Connection>,
    /// In-process rings to worker 0 (None when the data plane is another process).
    punt: Option<Consumer<Datagram>>,
    transmit: Option<Producer<Datagram>>,
    /// Updates not yet delivered to the data plane.
    outbox: VecDeque<Update>,
    /// Datagrams not yet handed to the data plane (back-pressure: kept, sent in order).
    backlog: VecDeque<Datagram>,
    /// [`turn`](Self::turn)'s datagrams with, per worker link, the generation of the last
    /// update sent before them: a datagram goes to the data plane only once every worker
    /// applied those updates. An IKE message must never overtake the data-plane change it
    /// follows: the DELETE of a rekeyed CHILD_SA leaving before the policy moved to the new
    /// SA lets packets sealed with the old one arrive after the peer removed it, and a
    /// response leaving before its CHILD_SA's inbound SA is installed lets the peer send on
    /// it too early.
    held: VecDeque<(Datagram, Vec<u64>)>,
    /// Per worker link, the generation of the last update `turn` sent.
    sent: Vec<u64>,
    backend: Backend,
    start: Instant,
    /// Our WAN address (the source of what we initiate).
    local: std::net::IpAddr,
    initiated: Vec<(String, IkeSaId)>,
    pub view: Arc<Mutex<IkeView>>,
    pub events_seen: u64,
    /// Rekeys by who started them: [child by us, child by peer, IKE by us, IKE by peer].
    rekeys: [u64; 4],
    ike_down: u64,
    /// IKE SAs established by a handshake (rekeys do not count).
    ike_up: u64,
    /// MOBIKE moves (ours and the peers').
    moves: u64,
    /// What the data plane reported (see [`on_dataplane_event`](Self::on_dataplane_event)).
    dp: DataplaneReports,
    /// Sequence checkpoints and SA states: not IKE's business, kept for the driver that owns
    /// the static SAs' reservations ([`take_seq_reports`](Self::take_seq_reports)).
    seq_reports: VecDeque<DpEvent>,
    /// Print IKE events (the default; benchmarks turn it off).
    log: bool,
    /// The views are out of date; when they were last rebuilt.
    dirty: bool,
    published_at: Option<Instant>,
    publish_cost: std::time::Duration,
}

/// The data plane's reports as the views show them.
#[derive(Default)]
struct DataplaneReports {
    soft_lifetimes: u64,
    hard_lifetimes: u64,
    seq_near_wrap: u64,
    /// Latest running totals per worker (unknown SPI) or per (worker, SA id, SPI) of the
    /// SAs alive; an SA's totals move to `retired` when it goes.
    unknown_spi: std::collections::BTreeMap<u16, u64>,
    auth_failures: std::collections::BTreeMap<(u16, u32, u32), u64>,
    replay_failures: std::collections::BTreeMap<(u16, u32, u32), u64>,
    /// Authentication and replay failures of SAs that went.
    retired: [u64; 2],
}

impl DataplaneReports {
    /// Moves the totals of SAs that `alive` no longer holds to `retired`: one entry per SA
    /// that ever failed would grow with every rekey.
    fn retire(&mut self, alive: impl Fn(SaId, Spi) -> bool) {
        for (i, map) in [&mut self.auth_failures, &mut self.replay_failures]
            .into_iter()
            .enumerate()
        {
            map.retain(|(_, id, spi), n| {
                let keep = alive(SaId(*id), Spi(*spi));
                if !keep {
                    self.retired[i] += *n;
                }
                keep
            });
        }
    }
}

impl IkeControl {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conns: Vec<Connection>,
        mut repo: SaRepository,
        punt: Option<Consumer<Datagram>>,
        transmit: Option<Producer<Datagram>>,
        backend: Backend,
        local: std::net::IpAddr,
    ) -> IkeControl {
        let mut seed = [0u8; 32];
        // The one place randomness enters the IKE core: the OS's generator seeds it.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        for c in &conns {
            repo.set_lifetime(&c.peer.name, c.child_lifetime);
        }
        IkeControl {
            endpoint: Endpoint::new(endpoint_config(&conns), seed),
            repo,
            conns,
            punt,
            transmit,
            outbox: VecDeque::new(),
            backlog: VecDeque::new(),
            held: VecDeque::new(),
            sent: Vec::new(),
            backend,
            start: Instant::now(),
            local,
            initiated: Vec::new(),
            view: Arc::new(Mutex::new(IkeView::default())),
            events_seen: 0,
            rekeys: [0; 4],
            ike_down: 0,
            ike_up: 0,
            moves: 0,
            dp: DataplaneReports::default(),
            seq_reports: VecDeque::new(),
            log: true,
            dirty: false,
            published_at: None,
            publish_cost: std::time::Duration::ZERO,
        }
    }

    /// Stops printing IKE events (a benchmark's crowd of clients would flood the output).
    pub fn set_quiet(&mut self) {
        self.log = false;
    }

    /// The responder's defences against IKE_SA_INIT floods, from the `ike` section
    /// ([`crate::config::ike::IkeYaml::admission`]).
    pub fn set_admission(&mut self, (a, half_open_timeout): crate::config::ike::AdmissionPolicy) {
        self.endpoint.set_admission(a, half_open_timeout);
    }

    /// A report from the data plane: a soft lifetime (or a sequence number near its limit)
    /// rekeys the CHILD_SA, a hard one deletes it (the data plane already stopped using the
    /// SA); unknown SPIs and authentication/replay failures are counted for the views.
    pub fn on_dataplane_event(&mut self, e: &DpEvent) {
        let now = self.now();
        match e {
            DpEvent::Lifetime {
                id,
                spi,
                dir,
                kind,
                limit,
                bytes,
                packets,
                ..
            } => {
                let hard = *kind == LifetimeKind::Hard;
                if hard {
                    self.dp.hard_lifetimes += 1;
                } else {
                    self.dp.soft_lifetimes += 1;
                }
                let Some(spi_in) = self.repo.child_of_sa(*id, *spi) else {
                    return;
                };
                let Some(ike) = self.endpoint.ike_of_child(spi_in) else {
                    return;
                };
                println!(
                    "ike: CHILD_SA {spi_in:08x}: {dir:?} SA {:08x} reached its {} {limit:?} lifetime ({bytes} bytes, {packets} packets): {}",
                    spi.0,
                    if hard { "hard" } else { "soft" },
                    if hard { "deleting it" } else { "rekeying" }
                );
                let _ = if hard {
                    self.endpoint.delete_child(now, ike, spi_in)
                } else {
                    self.endpoint.rekey_child(now, ike, spi_in)
                };
            }
            DpEvent::SeqNearWrap { id, spi, seq, .. } => {
                self.dp.seq_near_wrap += 1;
                let Some(spi_in) = self.repo.child_of_sa(*id, *spi) else {
                    return;
                };
                if let Some(ike) = self.endpoint.ike_of_child(spi_in) {
                    println!(
                        "ike: CHILD_SA {spi_in:08x}: outbound SA {:08x} at sequence number {seq}: rekeying",
                        spi.0
                    );
                    let _ = self.endpoint.rekey_child(now, ike, spi_in);
                }
            }
            DpEvent::UnknownSpi {
                worker,
                spi,
                src,
                packets,
                ..
            } => {
                let last = self.dp.unknown_spi.insert(*worker, *packets).unwrap_or(0);
                if *packets > last {
                    println!(
                        "dataplane: ESP for unknown SPI {:08x} from {src} (worker {worker}: {packets} such packets)",
                        spi.0
                    );
                }
            }
            // A report about an SA that went was on its way when it went (reports are rate
            // limited): what it adds since the last one is not counted.
            DpEvent::AuthFailures {
                worker,
                id,
                spi,
                count,
            } if self.repo.holds(*id, *spi) => {
                self.dp.auth_failures.insert((*worker, id.0, spi.0), *count);
            }
            DpEvent::ReplayFailures {
                worker,
                id,
                spi,
                count,
            } if self.repo.holds(*id, *spi) => {
                self.dp
                    .replay_failures
                    .insert((*worker, id.0, spi.0), *count);
            }
            DpEvent::AuthFailures { .. } | DpEvent::ReplayFailures { .. } => return,
            DpEvent::SeqCheckpoint { .. } | DpEvent::SaState { .. } => {
                // Bounded: a newer checkpoint of an SA says all an older one did.
                if self.seq_reports.len() >= 4096 {
                    self.seq_reports.pop_front();
                }
                self.seq_reports.push_back(e.clone());
                return;
            }
        }
        self.dirty = true;
        self.publish_if_due();
    }

    /// The sequence checkpoints and SA states the data plane reported since the last call.
    pub fn take_seq_reports(&mut self) -> VecDeque<DpEvent> {
        core::mem::take(&mut self.seq_reports)
    }

    fn now(&self) -> ike::Instant {
        ike::Instant::from_nanos(self.start.elapsed().as_nanos() as u64)
    }

    /// Starts the connections that have a peer address.
    pub fn initiate(&mut self) {
        let now = self.now();
        for c in &self.conns {
            if let Some(remote) = c.initiate_to {
                let local = SocketAddr::new(self.local, 500);
                match self.endpoint.connect(now, &c.peer.name, local, remote) {
                    Ok(id) => {
                        println!("ike: initiating {} to {remote}", c.peer.name);
                        self.initiated.push((c.peer.name.clone(), id));
                    }
                    Err(e) => eprintln!("ike: cannot initiate {}: {e}", c.peer.name),
                }
            }
        }
    }

    /// Feeds one punted IKE datagram to the endpoint.
    pub fn handle_datagram(&mut self, d: &Datagram) {
        let now = self.now();
        let local = SocketAddr::new(d.dst, d.dst_port);
        let remote = SocketAddr::new(d.src, d.src_port);
        self.endpoint.handle(now, local, remote, &d.payload);
        // Counters (cookies, refusals) change without an event: the views follow, at their
        // own pace.
        self.dirty = true;
    }

    /// Timers, then the endpoint's outputs: datagrams go to the transmit backlog, events
    /// through the repository to the update outbox. Returns true if it did anything.
    pub fn step(&mut self) -> bool {
        let mut work = false;
        let now = self.now();
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            work = true;
            self.endpoint.handle_timeout(now);
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            work = true;
            self.backlog.push_back(Datagram {
                src: t.src.ip(),
                dst: t.dst.ip(),
                src_port: t.src.port(),
                dst_port: t.dst.port(),
                payload: t.data,
            });
        }
        let mut changed = false;
        while let Some(e) = self.endpoint.poll_event() {
            work = true;
            changed = true;
            self.events_seen += 1;
            if self.log {
                log_event(&e);
            }
            match &e {
                Event::ChildUp(c) if c.rekey_of.is_some() => {
                    self.rekeys[if c.initiated_here { 0 } else { 1 }] += 1
                }
                Event::IkeRekeyed { initiated_here, .. } => {
                    self.rekeys[if *initiated_here { 2 } else { 3 }] += 1
                }
                Event::IkeDown { .. } => self.ike_down += 1,
                Event::IkeMoved { .. } => self.moves += 1,
                Event::IkeUp { .. } => self.ike_up += 1,
                _ => {}
            }
            match self.repo.on_event(&e) {
                Ok(updates) => updates.into_iter().for_each(|u| self.queue_update(u)),
                Err(err) => eprintln!("ike: {err}"),
            }
        }
        self.dirty |= changed;
        self.publish_if_due();
        work
    }

    /// Queues an update of the control loop's own (not from IKE) for the data plane.
    pub fn push_update(&mut self, u: Update) {
        self.outbox.push_back(u);
    }

    /// Queues an update for the data plane. A policy still waiting in the queue is
    /// superseded by a newer one when only installs come between them (nothing it refers to
    /// goes away in between), so a burst of new CHILD_SAs compiles the SPD once, not once
    /// each.
    fn queue_update(&mut self, u: Update) {
        if matches!(u, Update::DeleteInbound { .. }) {
            let repo = &self.repo;
            self.dp.retire(|id, spi| repo.holds(id, spi));
        }
        if matches!(u, Update::ReplaceSpd { .. }) {
            if let Some(pos) = self
                .outbox
                .iter()
                .rposition(|x| matches!(x, Update::ReplaceSpd { .. }))
            {
                let only_installs = self
                    .outbox
                    .iter()
                    .skip(pos + 1)
                    .all(|x| matches!(x, Update::AddSa { .. } | Update::SetVirtualIp { .. }));
                if only_installs {
                    self.outbox.remove(pos);
                }
            }
        }
        self.outbox.push_back(u);
    }

    /// The views are rebuilt at most every 50 ms, and never more than 5% of the time:
    /// listing every IKE SA takes time that grows with the number of clients, and a busy
    /// gateway must not spend it per event.
    fn publish_if_due(&mut self) {
        let pause = std::time::Duration::from_millis(50).max(self.publish_cost * 20);
        if self.dirty && self.published_at.is_none_or(|t| t.elapsed() >= pause) {
            self.dirty = false;
            let t = Instant::now();
            self.publish();
            self.publish_cost = t.elapsed();
            self.published_at = Some(Instant::now());
        }
    }

    /// Datagrams to send, oldest first (pop; push back to the front what did not fit).
    pub fn transmits(&mut self) -> &mut VecDeque<Datagram> {
        &mut self.backlog
    }

    /// Data-plane updates to deliver, oldest first, to every worker.
    pub fn updates(&mut self) -> &mut VecDeque<Update> {
        &mut self.outbox
    }

    /// What a data plane that restarted empty gets: the inbound SAs and the policy (see
    /// `SaRepository::full_state`); then every CHILD_SA is rekeyed, so outbound SAs come back
    /// with fresh keys and no GCM nonce is ever used twice.
    pub fn resync(&mut self) -> Vec<Update> {
        let v = self.repo.full_state();
        self.rekey_children();
        v
    }

    /// One turn with the data plane in this process: punted datagrams from `punt`, updates
    /// prepared and sent to every worker link, then datagrams on `transmit` once the updates
    /// queued before them are applied (see `held`).
    pub fn turn(&mut self, links: &mut [&mut WorkerLink]) -> Result<bool, AgentError> {
        let mut work = false;
        while let Some(d) = self.punt.as_mut().and_then(|p| p.pop().ok()) {
            work = true;
            self.handle_datagram(&d);
        }
        work |= self.step();
        self.sent.resize(links.len(), 0);
        while let Some(u) = self.outbox.pop_front() {
            for (l, sent) in links.iter_mut().zip(self.sent.iter_mut()) {
                *sent = l.send(agent::prepare(self.backend, &u)?);
            }
        }
        while let Some(d) = self.backlog.pop_front() {
            self.held.push_back((d, self.sent.clone()));
        }
        for l in links.iter_mut() {
            l.pump();
            for e in l.take_events() {
                work = true;
                self.on_dataplane_event(&e);
            }
        }
        if let Some(tx) = self.transmit.as_mut() {
            while let Some((d, after)) = self.held.pop_front() {
                let applied = links.iter().zip(&after).all(|(l, g)| l.acked() >= *g);
                if !applied {
                    self.held.push_front((d, after));
                    break;
                }
                if let Err(rtrb::PushError::Full(d)) = tx.push(d) {
                    self.held.push_front((d, after));
                    break;
                }
            }
        }
        Ok(work)
    }

    /// Starts deleting every IKE SA (a clean shutdown tells the peers); drive `step` until
    /// [`ike_sa_count`](Self::ike_sa_count) is zero or time runs out.
    pub fn begin_shutdown(&mut self) {
        let now = self.now();
        for (id, ..) in self.endpoint.list() {
            let _ = self.endpoint.delete_ike(now, id);
        }
    }

    /// True while an IKE exchange is under way, or updates or datagrams wait to go out.
    pub fn busy(&self) -> bool {
        self.endpoint.busy()
            || !self.outbox.is_empty()
            || !self.backlog.is_empty()
            || !self.held.is_empty()
    }

    pub fn ike_sa_count(&self) -> usize {
        self.endpoint.list().len()
    }

    /// The CHILD_SAs the repository holds (never keys).
    pub fn children(&self) -> Vec<crate::repo::ChildView> {
        self.repo.children()
    }

    /// The virtual IP the gateway assigned us (a client), if any.
    pub fn virtual_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.repo.virtual_ip()
    }

    /// (installed, rekeyed, removed) CHILD_SAs so far.
    pub fn child_counts(&self) -> (u64, u64, u64) {
        (self.repo.installed, self.repo.rekeyed, self.repo.removed)
    }

    /// MOBIKE: our WAN address is now `local` (the old one went away, or a better path came
    /// up). Every IKE SA that negotiated MOBIKE moves, with its CHILD_SAs (same SPIs, no
    /// rekey): our data plane at once, the peer by UPDATE_SA_ADDRESSES. Returns how many IKE
    /// SAs move.
    pub fn roam(&mut self, local: std::net::IpAddr) -> usize {
        self.roam_with(local, Vec::new())
    }

    /// [`roam`](Self::roam), announcing `additional` addresses of ours too (the peer may try
    /// them when a path fails; none: NO_ADDITIONAL_ADDRESSES).
    pub fn roam_with(
        &mut self,
        local: std::net::IpAddr,
        additional: Vec<std::net::IpAddr>,
    ) -> usize {
        let now = self.now();
        self.local = local;
        let ids: Vec<IkeSaId> = self.endpoint.list().into_iter().map(|s| s.0).collect();
        ids.into_iter()
            .filter(|id| {
                self.endpoint
                    .roam(now, *id, local, additional.clone())
                    .is_ok()
            })
            .count()
    }

    /// Starts a further CHILD_SA under every IKE SA (per-core SAs, tests).
    pub fn create_children(&mut self) {
        let now = self.now();
        for (ike, _, up, _) in self.endpoint.list() {
            if up {
                let _ = self.endpoint.create_child(now, ike);
            }
        }
    }

    /// Starts a rekey of every CHILD_SA (an operator's request, or a test's).
    pub fn rekey_children(&mut self) {
        let now = self.now();
        for (ike, _, up, children) in self.endpoint.list() {
            if up {
                for (spi_in, _) in children {
                    let _ = self.endpoint.rekey_child(now, ike, spi_in);
                }
            }
        }
    }

    /// Deletes every IKE SA (a clean shutdown tells the peers) and gives the deletes up to
    /// `wait` to go out and be answered.
    pub fn shutdown(&mut self, links: &mut [&mut WorkerLink], wait: std::time::Duration) {
        let now = self.now();
        let ids: Vec<IkeSaId> = self.endpoint.list().into_iter().map(|s| s.0).collect();
        if ids.is_empty() {
            return;
        }
        for id in ids {
            let _ = self.endpoint.delete_ike(now, id);
        }
        let t = Instant::now();
        while t.elapsed() < wait && !self.endpoint.list().is_empty() {
            if !self.turn(links).unwrap_or(false) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        // Let the last datagrams leave through the worker.
        let t = Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(200)
            && !(self.backlog.is_empty() && self.held.is_empty())
        {
            let _ = self.turn(links);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    fn publish(&self) {
        let sas: Vec<serde_json::Value> = self
            .endpoint
            .list()
            .into_iter()
            .map(|(id, name, up, children)| {
                serde_json::json!({
                    "ike_sa": format!("{:016x}", id.0),
                    "connection": name,
                    "established": up,
                    "children": children.iter().map(|(i, o)| serde_json::json!({
                        "spi_in": format!("{i:08x}"), "spi_out": format!("{o:08x}"),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let json = serde_json::json!({
            "ike_sas": sas,
            "children_installed": self.repo.installed,
            "children_rekeyed": self.repo.rekeyed,
            "children_removed": self.repo.removed,
            "child_rekeys_by_us": self.rekeys[0],
            "child_rekeys_by_peer": self.rekeys[1],
            "ike_rekeys_by_us": self.rekeys[2],
            "ike_rekeys_by_peer": self.rekeys[3],
            "ike_sas_down": self.ike_down,
            "ike_sas_up": self.ike_up,
            "mobike_moves": self.moves,
            "ike_messages": self.endpoint.stats().named().into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect::<serde_json::Map<_, _>>(),
            "half_open": self.endpoint.footprint().half_open,
            "virtual_ip": self.repo.virtual_ip().map(|v| v.to_string()),
            "dataplane_reports": {
                "soft_lifetimes": self.dp.soft_lifetimes,
                "hard_lifetimes": self.dp.hard_lifetimes,
                "seq_near_wrap": self.dp.seq_near_wrap,
                "unknown_spi_packets": self.dp.unknown_spi.values().sum::<u64>(),
                "auth_failures": self.dp.auth_failures.values().sum::<u64>() + self.dp.retired[0],
                "replay_failures": self.dp.replay_failures.values().sum::<u64>() + self.dp.retired[1],
            },
        })
        .to_string();
        if let Ok(mut v) = self.view.lock() {
            v.json = json;
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::IkeUp {
            ike,
            peer,
            remote_id,
            remote,
            virtual_ip,
            ..
        } => println!(
            "ike: IKE_SA {:016x} ({peer}) established with {remote_id} at {remote}{}",
            ike.0,
            virtual_ip.map_or(String::new(), |v| format!(", virtual IP {v}"))
        ),
        Event::ChildUp(c) => println!(
            "ike: CHILD_SA {} up: spi in {:08x} out {:08x}{}{}",
            c.name,
            c.inbound.spi,
            c.outbound.spi,
            if c.udp_encap { ", ESP in UDP" } else { "" },
            c.rekey_of.map_or(String::new(), |o| format!(
                ", replaces {o:08x} (rekeyed by {})",
                if c.initiated_here { "us" } else { "the peer" }
            ))
        ),
        Event::ChildDown {
            spi_in, spi_out, ..
        } => {
            println!("ike: CHILD_SA down: spi in {spi_in:08x} out {spi_out:08x}")
        }
        Event::IkeRekeyed {
            old,
            new,
            initiated_here,
        } => println!(
            "ike: IKE_SA {:016x} rekeyed to {:016x} (by {})",
            old.0,
            new.0,
            if *initiated_here { "us" } else { "the peer" }
        ),
        Event::IkeDown { ike, reason } => println!("ike: IKE_SA {:016x} down: {reason:?}", ike.0),
        Event::IkeMoved {
            ike,
            local,
            remote,
            udp_encap,
            children,
        } => println!(
            "ike: IKE_SA {:016x} moved (MOBIKE): {local} <-> {remote}{}, {} CHILD_SA(s) rebound, same SPIs",
            ike.0,
            if *udp_encap { ", ESP in UDP" } else { "" },
            children.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ike::IkeYaml;
    use pipeline::msg::Reply;
    use pipeline::worker::ControlLink;
    use std::path::Path;

    /// A worker that applies nothing: it acknowledges when told to and carries datagrams.
    struct Wire {
        control: ControlLink,
    }

    impl Wire {
        fn ack_all(&mut self) {
            let mut last = None;
            while let Ok(env) = self.control.commands.pop() {
                last = Some(env.generation);
            }
            if let Some(generation) = last {
                assert!(self
                    .control
                    .replies
                    .push(Reply::Applied {
                        worker: 0,
                        generation,
                    })
                    .is_ok());
            }
        }

        /// Moves what this side's control plane handed its worker to the peer's punt ring.
        fn carry_to(&mut self, peer: &mut Wire) -> usize {
            let mut n = 0;
            while let Some(d) = self.control.transmit.as_mut().and_then(|t| t.pop().ok()) {
                let punt = peer.control.punt.as_mut().unwrap();
                assert!(punt.push(d).is_ok());
                n += 1;
            }
            n
        }

        fn transmits_waiting(&self) -> usize {
            self.control.transmit.as_ref().map_or(0, |t| t.slots())
        }
    }

    fn side(ike: &str, local: &str) -> (IkeControl, WorkerLink, Wire) {
        let p = Path::new("test.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, ike)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let (punt_tx, punt_rx) = rtrb::RingBuffer::new(64);
        let (tx_tx, tx_rx) = rtrb::RingBuffer::new(64);
        let (link, mut control) = agent::link(0, 64, Some(punt_tx));
        control.transmit = Some(tx_rx);
        let mut ctl = IkeControl::new(
            conns,
            SaRepository::new(Vec::new(), 64),
            Some(punt_rx),
            Some(tx_tx),
            Backend::Ring,
            local.parse().unwrap(),
        );
        ctl.set_quiet();
        (ctl, link, Wire { control })
    }

    const A: &str = "connections:
  - { name: site, local_id: a.test, remote_id: b.test, psk: \"barrier-test-psk\",
      local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24], remote_addr: 192.0.2.2 }
";
    const B: &str = "connections:
  - { name: site, local_id: b.test, remote_id: a.test, psk: \"barrier-test-psk\",
      local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

    #[test]
    fn an_ike_message_leaves_only_after_the_data_plane_applied_the_updates_before_it() {
        let (mut a, mut la, mut wa) = side(A, "192.0.2.1");
        let (mut b, mut lb, mut wb) = side(B, "192.0.2.2");
        a.initiate();
        // The handshake: B's IKE_AUTH answer follows the install of its CHILD_SA's SAs, so it
        // waits for B's worker; everything else is acknowledged at once.
        let mut answer_held = false;
        for _ in 0..50 {
            a.turn(&mut [&mut la]).unwrap();
            wa.ack_all();
            wa.carry_to(&mut wb);
            let installed = b.child_counts().0;
            b.turn(&mut [&mut lb]).unwrap();
            if b.child_counts().0 > installed {
                assert_eq!(
                    wb.transmits_waiting(),
                    0,
                    "the answer waits for the install"
                );
                answer_held = true;
            }
            wb.ack_all();
            b.turn(&mut [&mut lb]).unwrap();
            wb.carry_to(&mut wa);
            if !a.children().is_empty() && !b.busy() && !a.busy() {
                break;
            }
        }
        assert!(answer_held);
        assert_eq!((a.children().len(), b.children().len()), (1, 1));

        // A rekeys. When its answer arrives, A moves its policy to the new SA and deletes the
        // old CHILD_SA: the DELETE must not leave before A's worker has the new policy.
        a.rekey_children();
        let mut delete_held = false;
        for _ in 0..50 {
            a.turn(&mut [&mut la]).unwrap();
            wa.ack_all();
            wa.carry_to(&mut wb);
            b.turn(&mut [&mut lb]).unwrap();
            wb.ack_all();
            b.turn(&mut [&mut lb]).unwrap();
            wb.carry_to(&mut wa);
            let rekeyed = a.child_counts().1;
            a.turn(&mut [&mut la]).unwrap();
            if a.child_counts().1 > rekeyed {
                assert_eq!(wa.transmits_waiting(), 0, "the DELETE waits for the switch");
                wa.ack_all();
                a.turn(&mut [&mut la]).unwrap();
                assert_eq!(wa.transmits_waiting(), 1, "then it goes");
                delete_held = true;
                break;
            }
        }
        assert!(delete_held);
    }

    #[test]
    fn failure_totals_of_sas_that_went_are_kept_in_one_number_not_one_entry_each() {
        let mut dp = DataplaneReports::default();
        // A thousand rekeys of an SA that saw replay failures: the live one (the last)
        // keeps its entry, the others fold into the retired total.
        for k in 0..1000u32 {
            dp.replay_failures.insert((0, 7, 0x100 + k), 2);
            dp.retire(|_, spi| spi.0 == 0x100 + k);
        }
        assert_eq!(dp.replay_failures.len(), 1);
        assert_eq!(dp.retired, [0, 999 * 2]);
    }
}
