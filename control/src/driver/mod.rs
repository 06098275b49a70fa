//! The one control loop: a [`Driver`] runs a [`ControlCore`] over a [`Link`] to the data
//! plane. Links are the transports: in-process rings ([`inproc`]) for `roamgate lab`,
//! `run --single-process` and tests, the shared-memory channel for `roamgate control`
//! (in the appliance), a simulated data plane on virtual time for the core's tests.
//!
//! Each [`Driver::turn`]: the link moves what it has, its inputs go to the core (punted
//! datagrams, reports, workers that restarted empty), the core's timers run, and its outputs
//! are drained in order: updates to their workers, log lines written as `tracing` events
//! (target `ike`, `dataplane` or `control`), the view published,
//! datagrams held until every update queued before them is past [`Link::released`] on its
//! worker, then handed to the link.
//!
//! The IKE state the core asks to keep ([`Output::Persist`], [`Output::Forget`]) goes to the
//! driver's [`IkeStore`] as it comes in the order: a write that fails stops the turn with
//! [`TurnError::Store`] before anything queued after it leaves.
//!
//! Owns: the order in which outputs leave, the held datagrams, the published view.
//! Must never: decide anything about SAs (the core does); read a clock itself (the caller
//! passes `now`; only the cost of a view rebuild is timed, to pace rebuilds).

pub mod inproc;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use ike::Instant;
use proto::{Datagram, Event as DpEvent, Update};

use crate::core::{ControlCore, Output};

/// The real clock of a driver, as the core's [`Instant`]s (nanoseconds since it started), and
/// the UNIX time it started at (certificate validity).
pub struct Clock(std::time::Instant, std::time::Duration);

impl Clock {
    pub fn start() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock(std::time::Instant::now(), unix)
    }

    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The UNIX time at this clock's [`Instant`] zero.
    pub fn unix_time_at_zero(&self) -> std::time::Duration {
        self.1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::start()
    }
}

/// What the view socket serves of IKE (never keys).
#[derive(Default, Clone)]
pub struct IkeView {
    pub json: String,
    /// When `json` was published: the view is rebuilt when something changed, so its ages
    /// and countdowns are as of then.
    pub published: Option<std::time::Instant>,
}

impl IkeView {
    /// The answer to an "ike" request: the view with `view_age_ms`, how long ago its times
    /// were true (the reader adds it to ages and takes it from countdowns).
    pub fn answer(&self) -> String {
        let mut v: serde_json::Value = match serde_json::from_str(&self.json) {
            Ok(v) => v,
            Err(_) => serde_json::json!({ "ike_sas": [] }),
        };
        let age = self.published.map_or(0, |t| {
            u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        if let Some(o) = v.as_object_mut() {
            o.insert("view_age_ms".into(), age.into());
        }
        v.to_string()
    }
}

/// Something the data plane gave the control plane.
#[derive(Debug)]
pub enum Input {
    /// An IKE datagram it received.
    Datagram(Datagram),
    /// A worker's report.
    Event(DpEvent),
    /// Worker `worker` (re)started empty and needs its state.
    Fresh { worker: u16 },
}

/// Punted IKE comes on two lanes: the cookie lane (IKE_SA_INIT requests that echo a cookie,
/// `pipeline::wire::natt::is_cookie_echo`) and the main one. A link reads them in turn: a
/// returning initiator's request waits behind at most one datagram of the main lane, however
/// full that is, and a flood of forged echoes (only the core can tell a valid cookie) takes
/// at most every other read while the main lane has datagrams waiting.
#[derive(Debug, Default)]
pub struct Lanes {
    main_next: bool,
}

impl Lanes {
    /// The next datagram: from the lane whose turn it is, else from the other.
    pub fn next<T>(
        &mut self,
        cookie: impl FnOnce() -> Option<T>,
        main: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        if self.main_next {
            if let Some(d) = main() {
                self.main_next = false;
                return Some(d);
            }
            cookie()
        } else {
            if let Some(d) = cookie() {
                self.main_next = true;
                return Some(d);
            }
            main()
        }
    }
}

/// An update the link cannot take.
#[derive(Debug, thiserror::Error)]
#[error("update for worker {worker}: {why}")]
pub struct LinkError {
    pub worker: u16,
    pub why: String,
}

/// Why a turn stopped.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The IKE state could not be kept: nothing queued after it may leave.
    #[error("IKE state store: {0}")]
    Store(String),
}

/// Where the driver keeps the IKE state the core asks to keep (`core::durable`): each call
/// returns once the change is durable.
pub trait IkeStore {
    /// Writes the stored state of these IKE SAs, all or none (after a crash in between,
    /// either every one of them is the new state or every one is the old).
    fn write(&mut self, batch: &[(ike::IkeSaId, &[u8])]) -> Result<(), String>;
    fn remove(&mut self, ike: ike::IkeSaId) -> Result<(), String>;
}

/// A transport between the control core and the data plane's workers.
pub trait Link {
    /// Moves what waits (backlogs into rings, acknowledgements and reports out of them);
    /// true if anything moved.
    fn pump(&mut self) -> bool;
    /// The next input, oldest first (punted IKE: the two [`Lanes`] in turn).
    fn poll_input(&mut self) -> Option<Input>;
    /// Hands `update` to worker `worker`; returns its generation on that worker (increasing).
    /// Never drops: what does not fit waits in the link.
    fn send_update(&mut self, worker: u16, update: Update) -> Result<u64, LinkError>;
    /// The generation of worker `worker` up to which a datagram queued after its updates may
    /// go: acknowledged by the worker, or (a transport that orders datagrams after updates
    /// itself) written.
    fn released(&self, worker: u16) -> u64;
    /// Hands a datagram to the data plane; gives it back when there is no room now.
    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram>;
}

/// The control loop around one [`ControlCore`].
pub struct Driver {
    core: ControlCore,
    /// Datagrams with, per worker, the generation of the last update sent before them.
    held: VecDeque<(Datagram, Vec<u64>)>,
    /// Per worker, the generation of the last update sent.
    sent: Vec<u64>,
    pub view: Arc<Mutex<IkeView>>,
    /// Print log lines (tests and benchmarks turn it off).
    print: bool,
    store: Option<Box<dyn IkeStore + Send>>,
    /// The socket to the RADIUS server of EAP pass-through, connected to it.
    radius: Option<std::net::UdpSocket>,
}

impl Driver {
    pub fn new(core: ControlCore) -> Driver {
        let workers = usize::from(core.workers());
        Driver {
            core,
            held: VecDeque::new(),
            sent: vec![0; workers],
            view: Arc::new(Mutex::new(IkeView::default())),
            print: true,
            store: None,
            radius: None,
        }
    }

    /// EAP for road warriors as the `ike.eap` section says (with its RADIUS socket).
    pub fn set_eap(&mut self, eap: crate::config::eap::Eap) -> std::io::Result<()> {
        self.core.set_eap(eap.service);
        match eap.radius {
            Some(server) => self.set_radius(server),
            None => Ok(()),
        }
    }

    /// EAP through the RADIUS server at `server`: a socket of its own, non-blocking, read and
    /// written each turn.
    pub fn set_radius(&mut self, server: std::net::SocketAddr) -> std::io::Result<()> {
        let any: std::net::SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(any)?;
        s.connect(server)?;
        s.set_nonblocking(true)?;
        tracing::info!(target: "ike", "EAP through the RADIUS server at {server} (from {})", s.local_addr()?);
        self.radius = Some(s);
        Ok(())
    }

    /// Moves the RADIUS server's answers in and the requests out; true if anything moved.
    fn radius_io(&mut self, now: Instant) -> bool {
        let Some(s) = self.radius.as_ref() else {
            return false;
        };
        let mut work = false;
        let mut buf = [0u8; 4096];
        loop {
            match s.recv(&mut buf) {
                Ok(n) => {
                    work = true;
                    self.core.handle_radius(now, buf.get(..n).unwrap_or(&[]));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP unreachable and the like: the request is retransmitted on time.
                Err(e) => {
                    tracing::debug!(target: "ike", "RADIUS socket: {e}");
                    break;
                }
            }
        }
        while let Some(d) = self.core.poll_radius_transmit() {
            work = true;
            if let Err(e) = s.send(&d) {
                tracing::warn!(target: "ike", "RADIUS request not sent: {e} (retransmitted on time)");
            }
        }
        work
    }

    /// Keeps the IKE SAs in `store` from now on (persist before send, `core::durable`).
    pub fn set_store(&mut self, store: Box<dyn IkeStore + Send>) {
        self.core.enable_durability();
        self.store = Some(store);
    }

    /// Stops logging IKE events (a benchmark's crowd of clients would flood the output);
    /// other lines (decisions, errors) are still printed.
    pub fn set_quiet(&mut self) {
        self.core.set_quiet();
    }

    /// See [`ControlCore::set_admission`](crate::core::ControlCore::set_admission).
    pub fn set_admission(&mut self, a: crate::config::ike::AdmissionPolicy) {
        self.core.set_admission(a);
    }

    pub fn set_fragmentation(&mut self, f: ike::Fragmentation) {
        self.core.set_fragmentation(f);
    }

    /// Prints nothing but errors (tests).
    pub fn set_silent(&mut self) {
        self.set_quiet();
        self.print = false;
    }

    pub fn core(&self) -> &ControlCore {
        &self.core
    }

    pub fn core_mut(&mut self) -> &mut ControlCore {
        &mut self.core
    }

    /// True while the core is busy or datagrams wait.
    pub fn busy(&self) -> bool {
        self.core.busy() || !self.held.is_empty()
    }

    /// Datagrams still waiting for their updates or for room.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// One turn at `now`; true if anything happened.
    pub fn turn<L: Link>(&mut self, now: Instant, link: &mut L) -> Result<bool, TurnError> {
        let mut work = link.pump();
        while let Some(input) = link.poll_input() {
            work = true;
            match input {
                Input::Datagram(d) => {
                    tracing::trace!(target: "ike", "datagram in: {}:{} -> {}:{}, {} bytes",
                        d.src, d.src_port, d.dst, d.dst_port, d.payload.len());
                    self.core.handle_datagram(now, &d)
                }
                Input::Event(e) => self.core.handle_dataplane_event(now, &e),
                Input::Fresh { worker } => self.core.handle_worker_fresh(now, worker),
            }
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            work = true;
            let t = std::time::Instant::now();
            if self.core.handle_timeout(now) {
                // Rebuilds keep to a share of the time they cost (the core cannot measure).
                self.core.set_view_cost(t.elapsed());
            }
        }
        work |= self.radius_io(now);
        work |= self.drain(link)?;
        work |= self.release(link);
        Ok(work)
    }

    /// Takes the core's outputs in order (see `core::output`).
    fn drain<L: Link>(&mut self, link: &mut L) -> Result<bool, TurnError> {
        let mut work = false;
        while let Some(o) = self.core.poll_output() {
            work = true;
            match o {
                Output::Update { worker, update } => {
                    tracing::debug!(target: "control", "worker {worker}: {}", update_summary(&update));
                    let g = link.send_update(worker, update)?;
                    if let Some(s) = self.sent.get_mut(usize::from(worker)) {
                        *s = g;
                    }
                }
                Output::Transmit(d) => {
                    tracing::trace!(target: "ike", "datagram out: {}:{} -> {}:{}, {} bytes",
                        d.src, d.src_port, d.dst, d.dst_port, d.payload.len());
                    self.held.push_back((d, self.sent.clone()))
                }
                Output::Log { line, error } => log_line(&line, error, self.print),
                Output::View(json) => {
                    if let Ok(mut v) = self.view.lock() {
                        v.json = json;
                        v.published = Some(std::time::Instant::now());
                    }
                }
                Output::Persist(batch) => {
                    if let Some(s) = self.store.as_mut() {
                        let batch: Vec<(ike::IkeSaId, &[u8])> =
                            batch.iter().map(|(id, b)| (*id, b.0.as_slice())).collect();
                        s.write(&batch).map_err(TurnError::Store)?;
                    }
                }
                Output::Forget { ike } => {
                    if let Some(s) = self.store.as_mut() {
                        s.remove(ike).map_err(TurnError::Store)?;
                    }
                }
            }
        }
        Ok(work)
    }

    /// Hands the held datagrams whose updates are released to the link, in order.
    fn release<L: Link>(&mut self, link: &mut L) -> bool {
        let mut work = false;
        while let Some((d, after)) = self.held.pop_front() {
            let released = after
                .iter()
                .enumerate()
                .all(|(w, g)| link.released(w as u16) >= *g);
            if !released {
                self.held.push_front((d, after));
                break;
            }
            if let Err(d) = link.send_datagram(d) {
                self.held.push_front((d, after));
                break;
            }
            work = true;
        }
        work
    }
}

/// One line of the core as a log event: its prefix (`ike: `, `dataplane: `) names the target;
/// errors are warnings, the rest info (debug when the driver was told to stay quiet).
fn log_line(line: &str, error: bool, print: bool) {
    let (target, msg) = match line.split_once(": ") {
        Some((t @ ("ike" | "dataplane"), rest)) => (t, rest),
        _ => ("control", line),
    };
    match (target, error, print) {
        ("ike", true, _) => tracing::warn!(target: "ike", "{msg}"),
        ("ike", false, true) => tracing::info!(target: "ike", "{msg}"),
        ("ike", false, false) => tracing::debug!(target: "ike", "{msg}"),
        ("dataplane", true, _) => tracing::warn!(target: "dataplane", "{msg}"),
        ("dataplane", false, true) => tracing::info!(target: "dataplane", "{msg}"),
        ("dataplane", false, false) => tracing::debug!(target: "dataplane", "{msg}"),
        (_, true, _) => tracing::warn!(target: "control", "{msg}"),
        (_, false, true) => tracing::info!(target: "control", "{msg}"),
        (_, false, false) => tracing::debug!(target: "control", "{msg}"),
    }
}

/// What an update does, for a debug line: SPIs, ids and counts, never keys.
fn update_summary(u: &Update) -> String {
    match u {
        Update::AddSa { dir, params } => format!(
            "add {dir:?} SA {} (SPI {:08x}, {} -> {})",
            params.id.0, params.spi.0, params.local, params.remote
        ),
        Update::DeleteInbound { spi } => format!("delete inbound SPI {:08x}", spi.0),
        Update::DeleteOutbound { id } => format!("delete outbound SA {}", id.0),
        Update::RebindOutbound { ids, remote, .. } => {
            format!("rebind {} outbound SA(s) to {remote}", ids.len())
        }
        Update::ReplaceSpd { rules } => format!("policy: {} rules", rules.len()),
        Update::SetMasquerade { config } => format!("masquerade {}", config.is_some()),
        Update::SetVirtualIp { config } => format!("virtual IP {}", config.is_some()),
        Update::BindHost { dst, sa, .. } => format!("bind host {dst} to SA {}", sa.0),
        Update::BindHostDual { dst, sa, .. } => {
            format!("bind host {dst} to SA {} on probation (dual path)", sa.0)
        }
        Update::UnbindHost { dst } => format!("unbind host {dst}"),
        Update::SetWanAddresses { addrs } => format!("WAN addresses {addrs:?}"),
        Update::ReserveSeq { id, up_to } => format!("SA {} reserved up to {up_to}", id.0),
        Update::CapSeq { id, ahead } => format!("SA {} capped at {ahead} ahead", id.0),
        Update::ExportSa { .. } => "export an SA's state".into(),
        Update::Announce { wan, addrs } => format!("announce {addrs:?} (wan {wan})"),
        Update::AddGroupSa { params } => format!(
            "add group SA {} (SPI {:08x}, sender {:?}/{} bits, send {})",
            params.id.0, params.spi.0, params.sender_id, params.sender_id_bits, params.send
        ),
        Update::DeleteGroupSa { spi } => format!("delete group SPI {:08x}", spi.0),
        Update::SendOnGroupSa { id, spi } => {
            format!("group {} sends on SPI {:08x}", id.0, spi.0)
        }
        Update::SetGroupPeers { id, peers, .. } => {
            format!("group {}: {} peers", id.0, peers.len())
        }
        Update::SetMasqPlane { plane } => match plane {
            Some(p) => format!(
                "masq plane: {} client prefixes, {} excluded, serving {:?}",
                p.clients.len(),
                p.exclude.len(),
                p.served
            ),
            None => "masq plane off".into(),
        },
        Update::MasqFam {
            install,
            flow,
            masq,
        } => format!("masq fam {flow:?} -> {masq:?} (install {install})"),
        Update::MasqRoute { masq, route } => format!("masq route {masq:?} -> {route:?}"),
        Update::MasqLink { node, out_sa } => format!("masq link to node {node}: {out_sa:?}"),
        Update::MasqLinkIn { spi, install } => {
            format!("masq link in SPI {:08x} (install {install})", spi.0)
        }
        Update::MasqUsers { table } => format!(
            "masq users: {} users, {} clients",
            table.users.len(),
            table.clients.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Lanes;
    use std::collections::VecDeque;

    #[test]
    fn lanes_are_read_in_turn_and_either_alone_at_full_speed() {
        let mut lanes = Lanes::default();
        let mut cookie: VecDeque<u32> = (100..103).collect();
        let mut main: VecDeque<u32> = (0..5).collect();
        let mut got = Vec::new();
        while let Some(d) = lanes.next(|| cookie.pop_front(), || main.pop_front()) {
            got.push(d);
        }
        assert_eq!(got, [100, 0, 101, 1, 102, 2, 3, 4]);
        let mut main: VecDeque<u32> = (0..3).collect();
        let mut none = VecDeque::new();
        let only_main: Vec<u32> =
            std::iter::from_fn(|| lanes.next(|| none.pop_front(), || main.pop_front())).collect();
        assert_eq!(only_main, [0, 1, 2]);
        let mut cookie: VecDeque<u32> = (0..3).collect();
        let only_cookie: Vec<u32> =
            std::iter::from_fn(|| lanes.next(|| cookie.pop_front(), || none.pop_front())).collect();
        assert_eq!(only_cookie, [0, 1, 2]);
    }

    #[test]
    fn a_lane_that_never_empties_takes_every_other_read_at_most() {
        // Forged cookie echoes without end against a backlog on the main lane: the main lane
        // gets every other read; and the other way round a returning initiator's echo waits
        // for one main datagram at most.
        let mut lanes = Lanes::default();
        let mut main: VecDeque<u32> = (0..1000).collect();
        let mut reads = 0;
        while !main.is_empty() {
            lanes.next(|| Some(u32::MAX), || main.pop_front());
            reads += 1;
        }
        assert!(reads <= 2 * 1000, "{reads}");
        let mut lanes = Lanes::default();
        let mut cookie = VecDeque::new();
        for round in 0..50u32 {
            let echo = round % 7 == 3;
            if echo {
                cookie.push_back(round);
            }
            let mut reads = 0;
            loop {
                reads += 1;
                let d = lanes.next(|| cookie.pop_front(), || Some(u32::MAX));
                if !echo || d == Some(round) {
                    break;
                }
            }
            assert!(
                reads <= 2,
                "round {round}: the echo read after {reads} reads"
            );
        }
    }
}
