//! The control core, sans-IO: the IKEv2 endpoint, the SA repository, placement and the
//! decisions that join them to the data plane.
//!
//! Inputs, each with an explicit `now` (an [`ike::Instant`] on the driver's clock): IKE
//! datagrams the data plane punted ([`ControlCore::handle_datagram`]), the data plane's
//! reports ([`ControlCore::handle_dataplane_event`]), a worker that restarted empty
//! ([`ControlCore::handle_worker_fresh`]), timeouts ([`ControlCore::handle_timeout`] when
//! [`ControlCore::poll_timeout`] says so), and the operator's requests (initiate, roam, rekey,
//! shut down). Outputs are drained by the driver from one ordered queue
//! ([`ControlCore::poll_output`], see [`output`]): updates addressed to the worker that owns
//! what they touch ([`placement`]), datagrams to send, log lines and the IKE view.
//!
//! After every input the endpoint's events go through the repository to updates first and
//! its datagrams are queued after them, so a datagram never leaves ahead of the data-plane
//! change its exchange made.
//!
//! Owns: the endpoint, the repository, placement, the decisions on data-plane reports
//! ([`decisions`]), the view's counters and its rebuild deadline ([`view`]).
//! Must never: read a clock, touch a ring, a socket or a thread; print (log lines are
//! outputs); log key material.

pub mod decisions;
pub mod direct_paths;
pub mod durable;
mod group;
pub mod output;
pub mod placement;
pub mod reconnect;
pub mod transfer;
pub mod view;

#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod durable_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ike::services::{Services, SpiAllocator};
use ike::{Endpoint, IkeSaId, Instant};
use proto::{Datagram, Event as DpEvent, Spi, Update};

use crate::config::ike::{endpoint_config, Connection};
use crate::repo::{ChildView, SaRepository};
use decisions::Decision;
pub use output::Output;
use output::Outputs;
use placement::Placement;
use view::{DataplaneReports, IkeCounts, ViewClock};

/// The most sequence reports kept for the driver (a newer checkpoint of an SA says all an
/// older one did).
const MAX_SEQ_REPORTS: usize = 4096;

pub struct ControlCore {
    endpoint: Endpoint,
    repo: SaRepository,
    conns: Vec<Connection>,
    placement: Placement,
    out: Outputs,
    /// Our WAN address (the source of what we initiate).
    local: IpAddr,
    counts: IkeCounts,
    dp: DataplaneReports,
    view: ViewClock,
    /// Sequence checkpoints and SA states: not IKE's business, kept for the driver that owns
    /// the static SAs' reservations.
    seq_reports: VecDeque<DpEvent>,
    /// Log IKE events (the default; benchmarks turn it off).
    log: bool,
    /// What is kept on disk of the IKE SAs ([`durable`]; off unless the driver has a store).
    durable: durable::Durability,
    /// Hairpin detection (the `vcm` section; None: off).
    vcm: Option<crate::vcm::HairpinDetector>,
    /// Pairs found worth a direct path, for the connectivity manager (bounded).
    direct_path_candidates: VecDeque<crate::vcm::Candidate>,
    /// The connections we initiate come back after the peer drops them ([`reconnect`]).
    reconnect: reconnect::Reconnect,
    /// The connectivity manager, gateway and client ends ([`direct_paths`]).
    direct: direct_paths::DirectPaths,
    /// A group member's side (the `group` section, role member; [`group`]).
    group: Option<group::GroupMember>,
}

/// Candidates kept for the connectivity manager (the oldest go first).
const MAX_CANDIDATES: usize = 256;

impl ControlCore {
    /// A core for `conns` over a data plane of `workers` workers. `seed` seeds the
    /// endpoint's RNG (the driver takes it from the OS).
    pub fn new(
        conns: Vec<Connection>,
        repo: SaRepository,
        workers: u16,
        seed: [u8; 32],
        local: IpAddr,
    ) -> ControlCore {
        Self::with_placement(conns, repo, Placement::new(workers), seed, local)
    }

    /// A core of a cluster's crypto node `node` (`node_bits` wide, see
    /// [`Placement::for_node`]): every SPI it hands out carries the node id, so two crypto
    /// nodes never hand out the same SPI. Its data plane is one worker per edge.
    pub fn for_cluster_node(
        conns: Vec<Connection>,
        repo: SaRepository,
        seed: [u8; 32],
        local: IpAddr,
        node_bits: u8,
        node: u32,
    ) -> Result<ControlCore, ike::services::spi::SpiLayoutError> {
        let placement = Placement::for_node(node_bits, node)?;
        Ok(Self::with_placement(conns, repo, placement, seed, local))
    }

    fn with_placement(
        conns: Vec<Connection>,
        mut repo: SaRepository,
        placement: Placement,
        seed: [u8; 32],
        local: IpAddr,
    ) -> ControlCore {
        for c in &conns {
            repo.set_lifetime(&c.peer.name, c.child_lifetime);
        }
        let workers = placement.workers();
        let services = Services {
            spis: SpiAllocator::new(placement.layout()).spread_over(u32::from(workers)),
            ..Services::default()
        };
        let mut ecfg = endpoint_config(&conns);
        // RFC 9611: with several workers, one CHILD_SA per worker under an IKE SA whose peer
        // agrees (SA_RESOURCE_INFO; a peer that does not know it ignores the status notify).
        if workers > 1 {
            ecfg.per_core_sas = workers;
        }
        ControlCore {
            endpoint: Endpoint::with_services(ecfg, seed, services),
            repo,
            conns,
            placement,
            out: Outputs::default(),
            local,
            counts: IkeCounts::default(),
            dp: DataplaneReports::default(),
            view: ViewClock::default(),
            seq_reports: VecDeque::new(),
            log: true,
            durable: durable::Durability::default(),
            vcm: None,
            direct_path_candidates: VecDeque::new(),
            direct: direct_paths::DirectPaths::new(seed),
            reconnect: reconnect::Reconnect::default(),
            group: None,
        }
    }

    /// Hairpin detection by this policy (the `vcm` section), or none. A new policy keeps the
    /// pairs already offered whose clients it still allows; the others are told to return to
    /// the gateway path (at the next turn: `direct_paths`).
    pub fn set_vcm(&mut self, policy: Option<crate::config::vcm::VcmPolicy>) {
        match (policy, self.vcm.as_mut()) {
            (None, _) => self.vcm = None,
            (Some(p), Some(d)) => d.set_policy(p),
            (Some(p), None) => self.vcm = Some(crate::vcm::HairpinDetector::new(p)),
        }
        self.direct.revalidate();
    }

    /// The hairpin detector's counts (None: detection is off).
    pub fn vcm_counts(&self) -> Option<crate::vcm::DetectCounts> {
        self.vcm.as_ref().map(crate::vcm::HairpinDetector::counts)
    }

    /// Pairs of road warriors found worth a direct path since the last call.
    pub fn take_direct_path_candidates(&mut self) -> Vec<crate::vcm::Candidate> {
        self.direct_path_candidates.drain(..).collect()
    }

    /// The UNIX time at the driver clock's zero: the endpoint judges certificate validity by
    /// it plus the `now` it is given.
    pub fn set_unix_time_at_zero(&mut self, t: std::time::Duration) {
        self.endpoint.set_unix_time_at_zero(t);
    }

    /// EAP for road warriors (`config::eap`).
    pub fn set_eap(&mut self, eap: ike::eap::EapService) {
        self.endpoint.set_eap(eap);
    }

    /// A datagram from the RADIUS server: the IKE exchanges that waited for it go on.
    pub fn handle_radius(&mut self, now: Instant, data: &[u8]) {
        self.endpoint.handle_eap_datagram(now, data);
        self.view.mark_stale();
        self.pump(now);
    }

    /// A datagram for the RADIUS server.
    pub fn poll_radius_transmit(&mut self) -> Option<Vec<u8>> {
        self.endpoint.poll_eap_transmit()
    }

    /// Stops logging IKE events (a benchmark's crowd of clients would flood the output).
    pub fn set_quiet(&mut self) {
        self.log = false;
    }

    /// The responder's defences against IKE_SA_INIT floods, from the `ike` section
    /// ([`crate::config::ike::IkeYaml::admission`]).
    pub fn set_admission(&mut self, (a, half_open_timeout): crate::config::ike::AdmissionPolicy) {
        self.endpoint.set_admission(a, half_open_timeout);
    }

    pub fn set_fragmentation(&mut self, f: ike::Fragmentation) {
        self.endpoint.set_fragmentation(f);
    }

    /// An HA node: announce RFC 6311 message-id sync (IKEV2_MESSAGE_ID_SYNC_SUPPORTED) in
    /// IKE_AUTH, so that after a takeover the new active may sync with the peers that
    /// announced it too ([`ControlCore::sync_message_ids`]).
    pub fn enable_mid_sync(&mut self) {
        self.endpoint.set_mid_sync(true);
    }

    /// After a takeover: IKEV2_MESSAGE_ID_SYNC to the peer of IKE SA `ike` if both ends
    /// announced support (true), ahead of any other request on it.
    pub fn sync_message_ids(&mut self, now: Instant, ike: ike::IkeSaId) -> bool {
        let started = self.endpoint.sync_message_ids(now, ike).unwrap_or(false);
        self.pump(now);
        started
    }

    /// The endpoint's RFC 6311 counters.
    pub fn mid_sync_stats(&self) -> ike::MidSyncStats {
        self.endpoint.stats().mid_sync
    }

    /// The gateway moves' counters (`exchange::gw_move`; `replaced`: redirected IKE SAs the
    /// client's new IKE SA replaced).
    pub fn gateway_move_stats(&self) -> ike::GatewayMoveStats {
        self.endpoint.stats().gateway_move
    }

    pub fn workers(&self) -> u16 {
        self.placement.workers()
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    // ---- inputs --------------------------------------------------------------------------

    /// One punted IKE datagram.
    pub fn handle_datagram(&mut self, now: Instant, d: &Datagram) {
        let local = SocketAddr::new(d.dst, d.dst_port);
        let remote = SocketAddr::new(d.src, d.src_port);
        self.endpoint.handle(now, local, remote, &d.payload);
        // A half-open IKE SA, a drop counted: the view changes without an event.
        self.view.mark_stale();
        self.pump(now);
    }

    /// A report from the data plane: lifetimes and sequence limits decide a rekey or a
    /// delete ([`decisions`]); failures are counted for the view; sequence checkpoints and
    /// SA states are kept for [`take_seq_reports`](Self::take_seq_reports).
    pub fn handle_dataplane_event(&mut self, now: Instant, e: &DpEvent) {
        if let DpEvent::Hairpin {
            src,
            dst,
            packets,
            millis,
            ..
        } = *e
        {
            self.hairpin_report(now, (src, dst), packets, millis);
            self.pump(now);
            return;
        }
        if let DpEvent::SaState { spi, state, .. } = e {
            if self.direct_sa_state(now, *spi, state) {
                self.pump(now);
                return;
            }
        }
        if let DpEvent::SeqNearWrap { id, spi, seq, .. } = *e {
            if self.direct_seq_near_wrap(now, id, spi, seq) {
                self.pump(now);
                return;
            }
        }
        if matches!(e, DpEvent::SeqCheckpoint { .. } | DpEvent::SaState { .. }) {
            if self.seq_reports.len() >= MAX_SEQ_REPORTS {
                self.seq_reports.pop_front();
            }
            self.seq_reports.push_back(e.clone());
            return;
        }
        let repo = &self.repo;
        if let Some(line) = self.dp.take(e, |id, spi| repo.holds(id, spi)) {
            self.out.log(line);
        }
        if let DpEvent::UnknownSpi {
            spi,
            src,
            src_port,
            dst,
            ..
        } = *e
        {
            if proto::group::is_group_spi(spi) {
                self.group_unknown_spi(now, spi);
            } else {
                self.unknown_spi(now, spi, (src, src_port), dst);
            }
        }
        let decision = decisions::decide(
            e,
            |id, spi| self.repo.child_of_sa(id, spi),
            |c| self.endpoint.ike_of_child(c),
        );
        match decision {
            Some(Decision::Rekey { ike, child, why }) => {
                self.out.log(format!("ike: {why}"));
                let _ = self.endpoint.rekey_child(now, ike, child);
            }
            Some(Decision::Delete { ike, child, why }) => {
                self.out.log(format!("ike: {why}"));
                let _ = self.endpoint.delete_child(now, ike, child);
            }
            None => {}
        }
        self.view.mark_stale();
        self.pump(now);
    }

    /// ESP for an SPI no CHILD_SA of ours holds. From a peer we have an IKE SA with, the
    /// INVALID_SPI notification goes inside it (RFC 7296 2.21.4, 3.10.1; rate-limited per
    /// IKE SA): the peer makes that CHILD_SA anew and keeps the IKE SA (`ike`'s
    /// `exchange::info`). From an address we have no IKE SA with (we restarted and lost
    /// them): an unprotected INVALID_SPI tells the sender (RFC 7296 1.5), and a client's IKE
    /// SA checks its gateway at once (`ike`'s `exchange::hint`) rather than at its next
    /// dead-peer check.
    fn unknown_spi(&mut self, now: Instant, spi: Spi, (src, src_port): (IpAddr, u16), dst: IpAddr) {
        if src.is_unspecified()
            || dst.is_unspecified()
            || self.repo.child_sas(ike::ChildSpi(spi.0)).is_some()
        {
            return;
        }
        if self.endpoint.notify_invalid_spi(
            now,
            SocketAddr::new(src, src_port),
            ike::ChildSpi(spi.0),
        ) {
            self.out.log(format!(
                "ike: ESP for unknown SPI {:08x} from {src}: INVALID_SPI sent inside its IKE SA (RFC 7296 3.10.1)",
                spi.0
            ));
            return;
        }
        // ESP in UDP came to our 4500 (RFC 3948); bare ESP: IKE's own port.
        let (ours, theirs) = if src_port != 0 {
            (4500, src_port)
        } else {
            (500, 500)
        };
        if self.endpoint.notify_invalid_spi_unprotected(
            now,
            SocketAddr::new(dst, ours),
            SocketAddr::new(src, theirs),
            ike::ChildSpi(spi.0),
        ) {
            self.out.log(format!(
                "ike: ESP for unknown SPI {:08x} from {src} and no IKE SA with it: INVALID_SPI sent (unprotected, RFC 7296 1.5)",
                spi.0
            ));
        }
    }

    /// A worker's hairpin report: a candidate for a direct path is logged and kept for the
    /// connectivity manager; everything else is counted by the detector.
    fn hairpin_report(&mut self, now: Instant, pair: (IpAddr, IpAddr), packets: u64, millis: u32) {
        let Some(d) = self.vcm.as_mut() else {
            return;
        };
        d.expire(now);
        let endpoint = &self.endpoint;
        let leases = endpoint.leases();
        let who = |a: IpAddr| {
            let IpAddr::V4(v4) = a else {
                return None;
            };
            let (_, ike) = leases.iter().find(|(l, _)| *l == v4)?;
            endpoint.peer_identity(*ike)
        };
        if let crate::vcm::Decision::Candidate(c) = d.observe(now, pair, packets, millis, who) {
            self.out.log(format!(
                "vcm: {} ({}) <-> {} ({}) hairpin at {} packets/s: a direct path candidate",
                c.a.0, c.a.1, c.b.0, c.b.1, c.pps
            ));
            self.direct_offer(now, c.a.0, c.b.0);
            if self.direct_path_candidates.len() >= MAX_CANDIDATES {
                self.direct_path_candidates.pop_front();
            }
            self.direct_path_candidates.push_back(c);
        }
        self.view.mark_stale();
    }

    /// Worker `worker` restarted empty: it gets back the inbound SAs it owns and what every
    /// worker needs (`SaRepository::full_state`), and every CHILD_SA is rekeyed, so outbound
    /// SAs come back with fresh keys and no GCM nonce is ever used twice.
    pub fn handle_worker_fresh(&mut self, now: Instant, worker: u16) {
        for u in self.repo.full_state() {
            if self.placement.is_for(worker, &u) {
                self.out.update(worker, u);
            }
        }
        self.rekey_children(now);
        self.group_worker_fresh(now, worker);
    }

    /// Runs the endpoint's timers that are due, and rebuilds the view when its time came
    /// (then true: the driver tells [`set_view_cost`](Self::set_view_cost) what it took).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.reconnect.next_due().is_some_and(|t| t <= now) {
            for name in self.reconnect.take_due(now) {
                self.connect(now, &name, "reconnect: ");
            }
            self.pump(now);
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
            // An expired half-open IKE SA goes without an event.
            self.view.mark_stale();
            self.pump(now);
        }
        if self.direct.deadline().is_some_and(|t| t <= now) {
            self.direct_timeout(now);
            self.pump(now);
        }
        if self.group_deadline().is_some_and(|t| t <= now) {
            self.group_timeout(now);
        }
        if self.view.due().is_some_and(|t| t <= now) {
            self.view.rebuilt(now);
            let mut json = view::render(
                &self.endpoint,
                &self.repo,
                &self.counts,
                &self.dp,
                &self.reconnect,
                now,
            );
            // A group member's part goes in as the object's last key.
            if let Some(g) = self.group_view() {
                if json.ends_with('}') {
                    json.pop();
                    json.push_str(&format!(",\"group\":{g}}}"));
                }
            }
            self.out.view(json);
            return true;
        }
        false
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.endpoint.poll_timeout(),
            self.view.due(),
            self.reconnect.next_due(),
            self.direct.deadline(),
            self.group_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Initiates connection `name` (if it still has an address to initiate to), logging with
    /// `what` ("", "reload: ", "reconnect: ") before the line.
    fn connect(&mut self, now: Instant, name: &str, what: &str) {
        let local = SocketAddr::new(self.local, 500);
        let Some(remote) = self
            .conns
            .iter()
            .find(|c| c.peer.name == name)
            .and_then(|c| c.initiate_to)
        else {
            self.reconnect.forget(name);
            return;
        };
        match self.endpoint.connect(now, name, local, remote) {
            Ok(ike) => {
                self.reconnect.initiated(ike, name);
                self.out
                    .log(format!("ike: {what}initiating {name} to {remote}"));
            }
            Err(e) => self
                .out
                .error(format!("ike: {what}cannot initiate {name}: {e}")),
        }
    }

    /// Reconnects so far: losses that scheduled one, by reason, and attempts made.
    pub fn reconnects(&self) -> (Vec<(reconnect::Why, u64)>, u64) {
        (self.reconnect.counts().collect(), self.reconnect.attempts)
    }

    /// What the last view rebuild cost on the driver's clock (rebuilds keep to 5% of it).
    pub fn set_view_cost(&mut self, d: Duration) {
        self.view.set_cost(d);
    }

    /// The next output, oldest first (see [`output`] for the order the driver keeps).
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The sequence checkpoints and SA states the data plane reported since the last call.
    pub fn take_seq_reports(&mut self) -> VecDeque<DpEvent> {
        core::mem::take(&mut self.seq_reports)
    }

    /// Rekeys the CHILD_SA that holds SA (`id`, `spi`) now (a cluster edge that lost it);
    /// false if no CHILD_SA holds it.
    pub fn rekey_sa(&mut self, now: Instant, id: proto::SaId, spi: Spi) -> bool {
        let Some(c) = self.repo.child_of_sa(id, spi) else {
            return false;
        };
        let Some(ike) = self.endpoint.ike_of_child(c) else {
            return false;
        };
        let ok = self.endpoint.rekey_child(now, ike, c).is_ok();
        self.pump(now);
        ok
    }

    /// The data-plane SAs of the CHILD_SA whose inbound SPI is `spi` (a cluster edge saw ESP
    /// on it: its outbound SA follows the client there).
    pub fn child_sas(&self, spi: Spi) -> Option<durable::ChildSas> {
        self.repo.child_sas(ike::ChildSpi(spi.0))
    }

    /// The policy every data plane needs now (static rules and the CHILD_SAs' own), for a
    /// cluster edge that joins.
    pub fn policy_rules(&self) -> Vec<proto::policy::Rule> {
        self.repo.rules()
    }

    /// Who the peer of the CHILD_SA with inbound SPI `spi` is: its EAP identity, else the IKE
    /// identity it authenticated (a cluster's edge filters match on it). None before IKE_AUTH
    /// completed. A scan of the IKE SAs: called once per CHILD SA install when filters exist.
    pub fn child_peer_identity(&self, spi: Spi) -> Option<String> {
        let ike = self.endpoint.ike_of_child(ike::ChildSpi(spi.0))?;
        self.endpoint.peer_identity(ike)
    }

    /// The CHILD_SA (its inbound SPI) the data-plane SA `id` with SPI `spi` belongs to (a
    /// cluster's repository files both directions under it).
    pub fn child_of_sa(&self, id: proto::SaId, spi: proto::Spi) -> Option<ike::ChildSpi> {
        self.repo.child_of_sa(id, spi)
    }

    /// Queues an update of the driver's own (not from IKE), placed like every other.
    pub fn push_update(&mut self, u: Update) {
        self.route(u);
    }

    // ---- the operator's requests ---------------------------------------------------------

    /// Starts the connections that have a peer address and no IKE SA yet (one adopted after a
    /// restart carries on instead).
    pub fn initiate(&mut self, now: Instant) {
        let up: Vec<String> = self.endpoint.list().into_iter().map(|s| s.1).collect();
        let names: Vec<String> = self
            .conns
            .iter()
            .filter(|c| c.initiate_to.is_some() && !up.contains(&c.peer.name))
            .map(|c| c.peer.name.clone())
            .collect();
        for name in names {
            self.connect(now, &name, "");
        }
        self.pump(now);
    }

    /// MOBIKE: our WAN address is now `local`; every IKE SA that negotiated MOBIKE moves with
    /// its CHILD_SAs (same SPIs, no rekey), announcing `additional` addresses of ours too.
    /// Returns how many IKE SAs move.
    pub fn roam(&mut self, now: Instant, local: IpAddr, additional: Vec<IpAddr>) -> usize {
        self.local = local;
        let ids: Vec<IkeSaId> = self.endpoint.list().into_iter().map(|s| s.0).collect();
        let n = ids
            .into_iter()
            .filter(|id| {
                self.endpoint
                    .roam(now, *id, local, additional.clone())
                    .is_ok()
            })
            .count();
        self.pump(now);
        n
    }

    /// The gateway moved (an HA standby on another subnet took the IKE SAs over, issue 17
    /// item 6): our WAN address is now `local`. Every IKE SA tunnels from it at once and its
    /// client is told as it negotiated (`ike::GatewayMove`: roamgate's authenticated
    /// announcement, an RFC 5685 REDIRECT, or nothing: it reconnects). Returns how many IKE
    /// SAs got each, in that order.
    pub fn move_gateway(&mut self, now: Instant, local: IpAddr) -> [usize; 3] {
        self.local = local;
        let ids: Vec<IkeSaId> = self.endpoint.list().into_iter().map(|s| s.0).collect();
        let mut n = [0usize; 3];
        for id in ids {
            let i = match self.endpoint.move_gateway(now, id, local) {
                Ok(ike::GatewayMove::Announced) => 0,
                Ok(ike::GatewayMove::Redirected) => 1,
                Ok(ike::GatewayMove::Unsupported) => 2,
                Err(_) => continue,
            };
            if let Some(c) = n.get_mut(i) {
                *c = c.saturating_add(1);
            }
        }
        self.pump(now);
        n
    }

    /// Applies a configuration reload ([`crate::config::reload`]): `conns` is the new file's
    /// connections, `plan` what differs from the running ones. The IKE SAs of removed and
    /// changed connections are deleted (an INFORMATIONAL delete to the peer; their CHILD_SAs
    /// leave the data plane as the delete goes through), the endpoint takes the new
    /// connections, added and changed ones that we initiate are started; the static policy
    /// and the admission policy are replaced when they changed. The IKE SAs of unchanged
    /// connections are not touched: their CHILD_SAs keep their SPIs and their traffic.
    pub fn reconfigure(
        &mut self,
        now: Instant,
        conns: Vec<Connection>,
        plan: &crate::config::reload::ReloadPlan,
    ) {
        for (id, name, ..) in self.endpoint.list() {
            let why = if plan.removed.contains(&name) {
                "removed"
            } else if plan.changed.contains(&name) {
                "changed"
            } else {
                continue;
            };
            self.out.log(format!(
                "ike: reload: connection {name} {why}: deleting its IKE SA{}",
                if why == "changed" {
                    " (made again with the new settings)"
                } else {
                    ""
                }
            ));
            if let Err(e) = self.endpoint.delete_ike(now, id) {
                self.out
                    .error(format!("ike: reload: cannot delete {name}'s IKE SA: {e}"));
            }
        }
        self.endpoint
            .set_peers(conns.iter().map(|c| c.peer.clone()).collect());
        for c in &conns {
            self.repo.set_lifetime(&c.peer.name, c.child_lifetime);
        }
        self.conns = conns;
        if let Some(rules) = &plan.rules {
            // A group member's rules stay ahead of the file's (they are not in the file).
            let mut all = self
                .group
                .as_ref()
                .map(|g| g.plane.rules())
                .unwrap_or_default();
            all.extend(rules.iter().cloned());
            let u = self.repo.set_static_rules(all);
            self.out.log(format!(
                "control: reload: static policy replaced ({} rules)",
                rules.len()
            ));
            self.route(u);
        }
        if let Some(a) = plan.admission {
            self.set_admission(a);
        }
        let names: Vec<String> = self
            .conns
            .iter()
            .map(|c| c.peer.name.clone())
            .filter(|n| plan.added.contains(n) || plan.changed.contains(n))
            .collect();
        for name in names {
            self.reconnect.forget(&name);
            self.connect(now, &name, "reload: ");
        }
        self.view.mark_stale();
        self.pump(now);
    }

    /// Starts a further CHILD_SA under every established IKE SA.
    pub fn create_children(&mut self, now: Instant) {
        for (ike, _, up, _) in self.endpoint.list() {
            if up {
                let _ = self.endpoint.create_child(now, ike);
            }
        }
        self.pump(now);
    }

    /// Starts a rekey of every CHILD_SA.
    pub fn rekey_children(&mut self, now: Instant) {
        for (ike, _, up, children) in self.endpoint.list() {
            if up {
                for (spi_in, _) in children {
                    let _ = self.endpoint.rekey_child(now, ike, spi_in);
                }
            }
        }
        self.pump(now);
    }

    /// Starts deleting every IKE SA (a clean shutdown tells the peers).
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.reconnect.stopped = true;
        for (id, ..) in self.endpoint.list() {
            let _ = self.endpoint.delete_ike(now, id);
        }
        self.pump(now);
    }

    // ---- what it holds -------------------------------------------------------------------

    /// True while an IKE exchange is under way or outputs wait.
    pub fn busy(&self) -> bool {
        self.endpoint.busy() || !self.out.is_empty()
    }

    pub fn ike_sa_count(&self) -> usize {
        self.endpoint.list().len()
    }

    /// The CHILD_SAs the repository holds (never keys).
    pub fn children(&self) -> Vec<ChildView> {
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

    pub fn events_seen(&self) -> u64 {
        self.counts.events
    }

    /// The view as it stands at `now` (the queued [`Output::View`]s are rebuilt on a
    /// deadline).
    pub fn render_view(&self, now: Instant) -> String {
        view::render(
            &self.endpoint,
            &self.repo,
            &self.counts,
            &self.dp,
            &self.reconnect,
            now,
        )
    }

    // ---- internals -----------------------------------------------------------------------

    /// The endpoint's events (through the repository to placed updates), then the stored
    /// state of the IKE SAs they touched (ahead of those updates), then its datagrams.
    fn pump(&mut self, now: Instant) {
        let mark = self.out.mark();
        while let Some(e) = self.endpoint.poll_event() {
            self.counts.count(&e);
            if self.log {
                self.out.log(view::event_line(&e));
            }
            if self.durable.on {
                self.durable.note_event(&e);
                if let ike::Event::ChildDown { ike, spi_in, .. } = &e {
                    if let Some(s) = self.repo.child_sas(*spi_in) {
                        self.durable.removed.push((*ike, s));
                    }
                }
            }
            self.note_for_reconnect(now, &e);
            match self.repo.on_event(&e) {
                Ok(updates) => updates.into_iter().for_each(|u| self.route(u)),
                Err(err) => self.out.error(format!("ike: {err}")),
            }
            self.direct_on_event(now, &e);
            self.per_core_on_event(now, &e);
            self.group_on_event(now, &e);
            self.view.mark_stale();
        }
        let mut sent = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            if self.durable.on {
                self.durable.note_transmit(&t.data);
            }
            sent.push(t);
        }
        if self.durable.on {
            self.persist(now, mark);
        }
        for t in sent {
            self.out.transmit(Datagram {
                src: t.src.ip(),
                dst: t.dst.ip(),
                src_port: t.src.port(),
                dst_port: t.dst.port(),
                payload: t.data,
            });
        }
    }

    /// RFC 9611, up front: when the first CHILD_SA of an IKE SA we initiated comes up and the
    /// peer agreed to per-core CHILD_SAs, one more per other worker, each with its inbound
    /// SPI on that worker (so placement puts both its SAs there).
    fn per_core_on_event(&mut self, now: Instant, e: &ike::Event) {
        let ike::Event::ChildUp(c) = e else {
            return;
        };
        if c.rekey_of.is_some() || !c.initiated_here || self.placement.workers() < 2 {
            return;
        }
        if self.endpoint.per_core(c.ike) != Some(true) {
            self.out.log(format!(
                "ike: {}: the peer did not agree to per-core CHILD_SAs (RFC 9611): one CHILD_SA for {} workers",
                c.name,
                self.placement.workers()
            ));
            return;
        }
        let live = self
            .endpoint
            .list()
            .into_iter()
            .find(|s| s.0 == c.ike)
            .map_or(0, |s| s.3.len());
        if live != 1 {
            return;
        }
        let first = self.placement.inbound_owner(Spi(c.inbound.spi.0));
        self.out.log(format!(
            "ike: {}: per-core CHILD_SAs (RFC 9611): asking for {} more, one per other worker",
            c.name,
            self.placement.workers().saturating_sub(1)
        ));
        for w in (0..self.placement.workers()).filter(|w| *w != first) {
            let _ = self.endpoint.create_child_on(now, c.ike, u32::from(w));
        }
    }

    /// What [`reconnect`] needs of an endpoint event; a loss that schedules a reconnect is
    /// logged with its reason and delay.
    fn note_for_reconnect(&mut self, now: Instant, e: &ike::Event) {
        match e {
            ike::Event::IkeUp { ike, peer, .. } => self.reconnect.up(*ike, peer),
            ike::Event::IkeRekeyed { old, new, .. } => self.reconnect.rekeyed(*old, *new),
            ike::Event::IkeDown { ike, reason } => {
                if let Some((name, why, due)) = self.reconnect.down(now, *ike, reason) {
                    let failures = self.reconnect.failures(&name);
                    self.out.log(format!(
                        "ike: {name}: IKE SA lost ({}), reconnecting in {} ms (attempt {failures})",
                        why.label(),
                        due.saturating_duration_since(now).as_millis()
                    ));
                }
            }
            _ => {}
        }
    }

    fn route(&mut self, u: Update) {
        if matches!(u, Update::DeleteInbound { .. }) {
            let repo = &self.repo;
            self.dp.retire(|id, spi| repo.holds(id, spi));
        }
        let repo = &self.repo;
        let routed = self
            .placement
            .route(u, |id, spi| repo.child_of_sa(id, spi).map(|c| Spi(c.0)));
        for (w, u) in routed {
            self.out.update(w, u);
        }
    }
}
