//! The IKEv2 endpoint of one process (RFC 7296), sans-IO: it owns every IKE SA, finds the one
//! a datagram is for, answers what arrives outside any IKE SA, and keeps the deadlines.
//!
//! Driven from outside: [`Endpoint::handle`] for each received datagram,
//! [`Endpoint::handle_timeout`] when [`Endpoint::poll_timeout`] says so, and
//! [`Endpoint::connect`] / [`Endpoint::rekey_child`] / [`Endpoint::rekey_ike`] /
//! [`Endpoint::delete_ike`] / [`Endpoint::roam`] for what the operator or the SA repository
//! asks. Outputs are pulled: [`Endpoint::poll_transmit`] (datagrams with their addresses) and
//! [`Endpoint::poll_event`] (SAs up, rekeyed, moved, deleted). Time is an [`Instant`] on the
//! caller's clock; randomness comes from a caller-seeded RNG; SPIs, virtual IPs and
//! authentication come from the [`Services`] it was built with.
//!
//! What it answers outside an IKE SA (RFC 7296 2.5, 2.21; the full table is in `stats`):
//! a request with a newer major version gets INVALID_MAJOR_VERSION; a request for an IKE SA
//! we do not have gets INVALID_IKE_SPI; both unprotected, with the requester's SPIs and
//! message id, and rate-limited. A response that matches no IKE SA, or anything malformed
//! before an IKE SA is found, is counted and dropped: a response is never answered.
//!
//! Owns: the table of IKE SAs, the responder's table of half-open IKE SAs (IKE_SA_INIT
//! retransmissions, and the counts admission goes by) and its cookie secrets, the deadlines,
//! the services, the output queues and the counters.
//! Must never: run an exchange itself (the `exchange` modules do, on one IKE SA at a time);
//! walk every IKE SA to find what is due.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use crate::config::EndpointConfig;
use crate::config::PeerConfig;
use crate::cookie::CookieSecrets;
use crate::crypto::DhPrivate;
use crate::event::{DownReason, Event, IkeSaView, SaSummary, Transmit};
use crate::exchange::{self, error_answer, init, mobike, Action, Ctx, Effect, Output};
use crate::half_open::HalfOpen;
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::ike_sa::{ours_and_theirs, IkeSa, Phase, Role};
use crate::services::Services;
use crate::stats::{Reason, Stats};
use crate::time::Instant;
use crate::timer::Deadlines;
use crate::wire::{exchange as xchg, notify, payload, Header, Payload, WireError};

mod eap;
mod group;
mod transfer;
pub use transfer::{AdoptError, ExportError};

/// Record counts of an [`Endpoint`] (see [`Endpoint::footprint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub ike_sas: usize,
    pub child_sas: usize,
    pub half_open: usize,
    /// Inbound CHILD_SA SPIs reserved (in use, or handed out and not yet released).
    pub inbound_spis: usize,
    pub leases: usize,
    /// Datagrams, events and requests waiting.
    pub queued: usize,
}

/// IKE SAs by where they stand (see [`Endpoint::sa_states`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaStates {
    /// IKE_SA_INIT sent (initiator) or answered (responder).
    pub init: usize,
    /// IKE_AUTH sent (initiator).
    pub auth: usize,
    pub established: usize,
    /// Being deleted.
    pub deleting: usize,
}

/// Why an operator request could not start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection named {0:?}")]
    NoSuchPeer(String),
    #[error("connection {0:?} has no IKE proposal")]
    NoProposal(String),
    #[error("no such IKE SA")]
    NoSuchSa,
    #[error("the peer did not negotiate MOBIKE")]
    NoMobike,
    #[error("not a private-use notify type (40960-65535)")]
    NotPrivate,
    #[error("too many private notifies wait on this IKE SA")]
    QueueFull,
    #[error("the peer did not agree to per-core CHILD_SAs (RFC 9611 SA_RESOURCE_INFO)")]
    NoPerCore,
}

/// Private notifies that may wait per IKE SA (`Endpoint::send_private`).
pub const PRIVATE_QUEUE_MAX: usize = 64;

/// The IKEv2 endpoint of one process.
pub struct Endpoint {
    config: EndpointConfig,
    peers: Vec<Arc<PeerConfig>>,
    rng: ChaCha20Rng,
    sas: HashMap<IkeSaId, IkeSa>,
    /// Responder side: (initiator SPI, peer address) -> our IKE SA, to spot IKE_SA_INIT
    /// retransmissions, counted for the admission of new ones.
    half_open: HalfOpen,
    cookies: CookieSecrets,
    deadlines: Deadlines,
    services: Services,
    out: Output,
    stats: Stats,
    /// G-IKEv2: the GCKSs and group memberships (`exchange::group`).
    group: crate::group::session::GroupState,
}

impl Endpoint {
    /// An endpoint with the default services (random SPIs, local pools, pre-shared keys).
    pub fn new(config: EndpointConfig, seed: [u8; 32]) -> Endpoint {
        Endpoint::with_services(config, seed, Services::default())
    }

    pub fn with_services(config: EndpointConfig, seed: [u8; 32], services: Services) -> Endpoint {
        let peers = config.peers.iter().cloned().map(Arc::new).collect();
        Endpoint {
            config,
            peers,
            rng: ChaCha20Rng::from_seed(seed),
            cookies: CookieSecrets::new(seed, Instant::ZERO),
            sas: HashMap::new(),
            half_open: HalfOpen::default(),
            deadlines: Deadlines::default(),
            services,
            out: Output::default(),
            stats: Stats::default(),
            group: crate::group::session::GroupState::default(),
        }
    }

    /// Bytes of fragmented messages (RFC 7383) held for reassembly by all IKE SAs.
    pub fn fragments_held(&self) -> usize {
        self.out.reassembly.held()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self
            .out
            .events
            .pop_front()
            .or_else(|| self.group.events.pop_front().map(Event::Group));
        if let Some(Event::ChildDown { spi_in, .. }) = &e {
            // Reported down: the SPI may be handed out again.
            self.services.spis.release_child(*spi_in);
        }
        if let Some(Event::IkeRekeyed { old, new, .. }) = &e {
            // Group registrations over the old IKE SA now live on the new one.
            self.group.ike_rekeyed(*old, *new);
        }
        e
    }

    /// The earliest time something is due (a retransmission, a rekey, a liveness check, a
    /// group rekey of a GCKS here).
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.deadlines.first(),
            self.eap_timeout(),
            self.group.gcks.iter().map(|g| g.deadline()).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What was dropped or answered with an error, by reason; the cookies' counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Replaces the responder's admission policy (cookies, half-open caps) and the half-open
    /// timeout, e.g. from a configuration file read after the endpoint was built; half-open
    /// IKE SAs already made keep their expiry.
    /// The UNIX time at the caller's `Instant::ZERO` (certificate validity is judged by it).
    pub fn set_unix_time_at_zero(&mut self, t: core::time::Duration) {
        self.config.unix_time_at_zero = t;
    }

    pub fn set_admission(
        &mut self,
        admission: crate::config::Admission,
        half_open_timeout: core::time::Duration,
    ) {
        self.config.admission = admission;
        self.config.half_open_timeout = half_open_timeout;
    }

    /// IKE fragmentation (RFC 7383) from now on: IKE SAs negotiate it in IKE_SA_INIT, so
    /// those up already keep what they agreed (their sizes and bounds follow this).
    pub fn set_fragmentation(&mut self, f: crate::config::Fragmentation) {
        self.config.fragmentation = f;
    }

    /// RFC 6311 message-id sync from now on ([`EndpointConfig::mid_sync`]): IKE SAs made
    /// later announce it; those made already keep what they negotiated.
    pub fn set_mid_sync(&mut self, on: bool) {
        self.config.mid_sync = on;
    }

    /// Replaces the connections (a configuration reload). IKE SAs already made keep the
    /// connection they were made with (their own copy); new exchanges, as initiator or
    /// responder, see only `peers`. The caller deletes the IKE SAs of connections that went
    /// or changed.
    pub fn set_peers(&mut self, peers: Vec<PeerConfig>) {
        self.peers = peers.iter().cloned().map(Arc::new).collect();
        self.config.peers = peers;
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The IKE SAs, for views: (id, peer name, established, children (spi_in, spi_out)).
    pub fn list(&self) -> Vec<SaSummary> {
        let mut v: Vec<_> = self
            .sas
            .values()
            .map(|s| {
                (
                    s.id(),
                    s.state
                        .peer
                        .as_ref()
                        .map_or(String::new(), |p| p.name.clone()),
                    s.state.phase == Phase::Established,
                    s.state
                        .children
                        .iter()
                        .map(|c| (c.spi_in, c.spi_out))
                        .collect(),
                )
            })
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// The IKE SAs as the views show them (never keys), times counted from `now`, in the
    /// order of their ids.
    pub fn view(&self, now: Instant) -> Vec<IkeSaView> {
        let mut v: Vec<_> = self.sas.values().map(|s| s.view(now)).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// The virtual IPs leased from pools, with the IKE SA holding each.
    pub fn leases(&self) -> Vec<(Ipv4Addr, IkeSaId)> {
        self.services.pool.leases()
    }

    /// How many IKE SAs stand where: one pass over them (views and metrics).
    pub fn sa_states(&self) -> SaStates {
        let mut st = SaStates::default();
        for sa in self.sas.values() {
            let n = match sa.state.phase {
                Phase::Init => &mut st.init,
                Phase::Auth => &mut st.auth,
                Phase::Established => &mut st.established,
                Phase::Deleting | Phase::Dead => &mut st.deleting,
            };
            *n = n.saturating_add(1);
        }
        st
    }

    /// How many records the endpoint holds: what must stay bounded by the number of peers
    /// however many exchanges it runs (soak tests and views read it).
    pub fn footprint(&self) -> Footprint {
        let queued = self
            .sas
            .values()
            .fold(0usize, |n, s| n.saturating_add(s.pending.queue.len()));
        Footprint {
            ike_sas: self.sas.len(),
            child_sas: self
                .sas
                .values()
                .fold(0usize, |n, s| n.saturating_add(s.state.children.len())),
            half_open: self.half_open.len(),
            inbound_spis: self.services.spis.in_use().1,
            leases: self.services.pool.leases().len(),
            queued: queued
                .saturating_add(self.out.transmits.len())
                .saturating_add(self.out.events.len()),
        }
    }

    /// True while any exchange is under way or queued.
    pub fn busy(&self) -> bool {
        self.sas
            .values()
            .any(|sa| sa.pending.outstanding.is_some() || !sa.pending.queue.is_empty())
    }

    /// The IKE SA a CHILD_SA (by inbound SPI) belongs to now.
    pub fn ike_of_child(&self, spi_in: ChildSpi) -> Option<IkeSaId> {
        self.sas
            .values()
            .find(|sa| sa.state.children.iter().any(|c| c.spi_in == spi_in))
            .map(IkeSa::id)
    }

    /// The peer's address and port of IKE SA `ike` (as the packets come: after any NAT).
    pub fn remote_of(&self, ike: IkeSaId) -> Option<SocketAddr> {
        self.sas.get(&ike).map(|sa| sa.state.remote)
    }

    /// Who the peer of an established IKE SA is: the EAP identity it logged in with, else the
    /// IKE identity it authenticated (as the views print it).
    pub fn peer_identity(&self, ike: IkeSaId) -> Option<String> {
        let sa = self.sas.get(&ike)?;
        let s = &sa.state;
        if s.phase != Phase::Established {
            return None;
        }
        s.eap_identity
            .clone()
            .or_else(|| s.remote_id.as_ref().map(crate::wire::Id::display))
    }

    // ---- operator requests -------------------------------------------------------------

    /// Starts an IKE SA (and its first CHILD_SA) to `remote` with connection `peer`.
    pub fn connect(
        &mut self,
        now: Instant,
        peer: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<IkeSaId, ConnectError> {
        let cfg = self
            .peers
            .iter()
            .find(|p| p.name == peer)
            .cloned()
            .ok_or_else(|| ConnectError::NoSuchPeer(peer.into()))?;
        let prop = *cfg
            .ike_proposals
            .first()
            .ok_or_else(|| ConnectError::NoProposal(peer.into()))?;
        let spi = self.services.spis.ike_spi(&mut self.rng);
        let dh = DhPrivate::generate(prop.dh, &mut self.rng);
        let mut ni = vec![0u8; 32];
        rand_core::RngCore::fill_bytes(&mut self.rng, &mut ni);
        let id = IkeSaId(spi);
        let mut sa = IkeSa::new(
            id,
            Role::Initiator,
            spi,
            IkeSpi::ZERO,
            local,
            remote,
            prop,
            now,
        );
        sa.state.peer = Some(cfg);
        let hs = sa.handshake();
        hs.dh = Some(dh);
        hs.ni = ni;
        self.sas.insert(id, sa);
        self.stats.handshakes.started = self.stats.handshakes.started.saturating_add(1);
        self.run(id, now, init::start);
        self.apply_effects(now);
        Ok(id)
    }

    /// Rekeys the CHILD_SA whose inbound SPI is `spi_in` (make-before-break: the new SA is
    /// reported up before the old one is deleted).
    pub fn rekey_child(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        spi_in: ChildSpi,
    ) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::RekeyChild(spi_in))
    }

    /// RFC 6311: asks the peer of IKE SA `ike` for its message ids (IKEV2_MESSAGE_ID_SYNC,
    /// ahead of any other request of ours on it) and takes them on when it answers; for an
    /// HA node that just took the IKE SA over from a replicated record. `Ok(false)`: the IKE
    /// SA did not negotiate it (the peer did not announce IKEV2_MESSAGE_ID_SYNC_SUPPORTED, or
    /// [`EndpointConfig::mid_sync`](crate::EndpointConfig::mid_sync) is off).
    pub fn sync_message_ids(&mut self, now: Instant, ike: IkeSaId) -> Result<bool, ConnectError> {
        let started = self
            .run(ike, now, |sa, ctx| {
                if !sa.state.mid_sync
                    || sa.state.mid_sync_used
                    || sa.state.phase != crate::ike_sa::Phase::Established
                {
                    return false;
                }
                sa.pending.queue.push_front(Action::MidSync);
                exchange::next_action(sa, ctx);
                true
            })
            .ok_or(ConnectError::NoSuchSa)?;
        self.apply_effects(now);
        Ok(started)
    }

    pub fn rekey_ike(&mut self, now: Instant, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::RekeyIke)
    }

    pub fn delete_ike(&mut self, now: Instant, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::DeleteIke)
    }

    pub fn delete_child(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        spi_in: ChildSpi,
    ) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::DeleteChild(spi_in))
    }

    /// Starts a further CHILD_SA under IKE SA `ike` with the first one's selectors (e.g. one
    /// per core, RFC 9611 style).
    pub fn create_child(&mut self, now: Instant, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::NewChild)
    }

    /// Starts a further per-core CHILD_SA (RFC 9611) under IKE SA `ike`, with the first
    /// one's selectors and SA_RESOURCE_INFO, its inbound SPI on worker `worker` (so the data
    /// plane places both its SAs there). Refused ([`ConnectError::NoPerCore`]) unless both
    /// ends sent SA_RESOURCE_INFO in IKE_AUTH ([`Endpoint::per_core`]).
    pub fn create_child_on(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        worker: u32,
    ) -> Result<(), ConnectError> {
        if !self.per_core(ike).ok_or(ConnectError::NoSuchSa)? {
            return Err(ConnectError::NoPerCore);
        }
        self.enqueue(now, ike, Action::NewChildOn(worker))
    }

    /// Whether both ends of IKE SA `ike` agreed to per-core CHILD_SAs (RFC 9611); None when
    /// there is no such IKE SA.
    pub fn per_core(&self, ike: IkeSaId) -> Option<bool> {
        self.sas.get(&ike).map(|sa| sa.state.per_core)
    }

    /// MOBIKE, the mobile end (RFC 4555 3.4): our address for IKE SA `ike` is now `local`.
    /// The IKE SA and its CHILD_SAs move at once on our side (an [`Event::IkeMoved`]) and an
    /// UPDATE_SA_ADDRESSES request tells the peer. `additional` are further addresses of ours
    /// (none: NO_ADDITIONAL_ADDRESSES).
    pub fn roam(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        local: IpAddr,
        additional: Vec<IpAddr>,
    ) -> Result<(), ConnectError> {
        let r = self
            .run(ike, now, |sa, ctx| mobike::roam(sa, ctx, local, additional))
            .ok_or(ConnectError::NoSuchSa)?;
        self.apply_effects(now);
        r.map_err(|_| ConnectError::NoMobike)
    }

    /// The gateway moved (an HA standby on another subnet took IKE SA `ike` over): our
    /// address for it is now `local` (the port stays). Our CHILD_SAs tunnel from it at once
    /// (an [`Event::IkeMoved`]); a client that negotiated it is told in an authenticated
    /// INFORMATIONAL and moves after its return-routability probe, one that announced
    /// REDIRECT_SUPPORTED is redirected (RFC 5685), any other reconnects
    /// (`exchange::gw_move`).
    pub fn move_gateway(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        local: IpAddr,
    ) -> Result<exchange::gw_move::GatewayMove, ConnectError> {
        let r = self
            .run(ike, now, |sa, ctx| {
                exchange::gw_move::announce(sa, ctx, local)
            })
            .ok_or(ConnectError::NoSuchSa)?;
        self.apply_effects(now);
        Ok(r)
    }

    /// ESP arrived from `from` for an SPI we do not have: tells the peer in an INFORMATIONAL
    /// over the established IKE SA we have with that address (RFC 7296 2.21.4, 3.10.1;
    /// protected, so the peer may act on it: `exchange::info` makes the named CHILD_SA anew).
    /// `from`'s port is ESP-in-UDP's source port (0 for bare ESP): behind a NAT it is the
    /// IKE SA's port too (RFC 3948), so an IKE SA with the exact address is taken first.
    /// Rate-limited per IKE SA: one such request under way, none within
    /// [`EndpointConfig::invalid_spi_interval`](crate::EndpointConfig::invalid_spi_interval)
    /// of the last; what is held back is counted. True if one was queued.
    pub fn notify_invalid_spi(&mut self, now: Instant, from: SocketAddr, spi: ChildSpi) -> bool {
        let established = || {
            self.sas
                .values()
                .filter(|sa| sa.state.phase == Phase::Established)
        };
        let Some(id) = established()
            .find(|sa| from.port() != 0 && sa.state.remote == from)
            .or_else(|| established().find(|sa| sa.state.remote.ip() == from.ip()))
            .map(IkeSa::id)
        else {
            return false;
        };
        let queued = self.run(id, now, |sa, ctx| {
            let busy = sa
                .pending
                .queue
                .iter()
                .any(|a| matches!(a, Action::InvalidSpi(_)))
                || matches!(
                    sa.pending.outstanding.as_ref().map(|o| &o.request),
                    Some(exchange::Request::InvalidSpi)
                );
            let recent = sa
                .pending
                .invalid_spi_at
                .is_some_and(|t| now < t.saturating_add(ctx.config.invalid_spi_interval));
            let h = &mut ctx.stats.hints;
            if busy || recent {
                h.invalid_spi_send_limited = h.invalid_spi_send_limited.saturating_add(1);
                return false;
            }
            h.invalid_spi_sent_protected = h.invalid_spi_sent_protected.saturating_add(1);
            sa.pending.invalid_spi_at = Some(now);
            exchange::enqueue(sa, ctx, Action::InvalidSpi(spi));
            true
        });
        self.apply_effects(now);
        queued.unwrap_or(false)
    }

    /// Sends private-use status notify `kind` (40960-65535, RFC 7296 3.10.1) with `data` to
    /// the peer of established IKE SA `ike`, alone in an INFORMATIONAL request after those
    /// queued before it; retransmitted until answered like every request (RFC 7296 2.1). The
    /// peer's endpoint reports it as [`Event::PrivateNotify`]; a peer that does not know the
    /// type ignores it. At most [`PRIVATE_QUEUE_MAX`] wait per IKE SA (`QueueFull` beyond);
    /// one equal to a waiting one is not queued twice.
    pub fn send_private(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        kind: u16,
        data: &[u8],
    ) -> Result<(), ConnectError> {
        if kind < crate::wire::notify::PRIVATE_STATUS_FIRST {
            return Err(ConnectError::NotPrivate);
        }
        let r = self
            .run(ike, now, |sa, ctx| {
                if sa.state.phase != Phase::Established {
                    return Err(ConnectError::NoSuchSa);
                }
                if sa
                    .pending
                    .private_out
                    .iter()
                    .any(|(k, d)| *k == kind && d.as_slice() == data)
                {
                    return Ok(());
                }
                if sa.pending.private_out.len() >= PRIVATE_QUEUE_MAX {
                    return Err(ConnectError::QueueFull);
                }
                sa.pending
                    .private_out
                    .push_back((kind, zeroize::Zeroizing::new(data.to_vec())));
                exchange::enqueue(sa, ctx, Action::Private);
                Ok(())
            })
            .ok_or(ConnectError::NoSuchSa)?;
        self.apply_effects(now);
        r
    }

    fn enqueue(&mut self, now: Instant, ike: IkeSaId, a: Action) -> Result<(), ConnectError> {
        self.run(ike, now, |sa, ctx| exchange::enqueue(sa, ctx, a))
            .ok_or(ConnectError::NoSuchSa)?;
        self.apply_effects(now);
        Ok(())
    }

    // ---- receiving -----------------------------------------------------------------------

    /// Handles one received IKE message (without the non-ESP marker) from `remote` to `local`.
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        let (h, version) = match Header::parse_any_version(data) {
            Ok(x) => x,
            Err(WireError::Truncated) => {
                self.stats.count(Reason::Truncated);
                return;
            }
            // The length field is below a header or beyond the datagram.
            Err(_) => {
                self.stats.count(Reason::LengthMismatch);
                return;
            }
        };
        if usize::try_from(h.length).ok() != Some(data.len()) {
            self.stats.count(Reason::LengthMismatch);
            return;
        }
        match version >> 4 {
            2 => {}
            major if major > 2 => {
                if h.is_response() {
                    self.stats.count(Reason::NewerMajorVersion);
                } else {
                    // RFC 7296 2.5: the highest version we speak is in the answer's header.
                    let answer = error_answer(&h, notify::INVALID_MAJOR_VERSION, vec![]);
                    self.ctx(now).answer_unprotected(
                        Reason::NewerMajorVersion,
                        local,
                        remote,
                        answer,
                    );
                }
                return;
            }
            _ => {
                self.stats.count(Reason::OldMajorVersion);
                return;
            }
        }
        if h.exchange == xchg::IKE_SA_INIT && !h.is_response() {
            self.init_request(now, local, remote, &h, data);
            return;
        }
        if h.exchange == crate::group::wire::exchange::GSA_REKEY && !h.is_response() {
            // G-IKEv2: a GCKS's rekey under a Rekey SA, not an IKE SA (RFC 9838 2.4.1).
            self.group_rekey(now, data);
            return;
        }
        if h.exchange == xchg::INFORMATIONAL
            && !h.is_response()
            && h.next_payload == payload::NOTIFY
        {
            self.unprotected_request(now, remote, h.next_payload, data);
            return;
        }
        let (ours, theirs) = ours_and_theirs(&h);
        let id = IkeSaId(ours);
        let Some(sa) = self.sas.get(&id) else {
            if h.is_response() {
                self.stats.count(Reason::UnknownSpiResponse);
            } else {
                let answer = error_answer(&h, notify::INVALID_IKE_SPI, vec![]);
                self.ctx(now)
                    .answer_unprotected(Reason::UnknownSpi, local, remote, answer);
            }
            return;
        };
        // The peer's SPI must match too (once known).
        let expected = match sa.state.role {
            Role::Initiator => sa.state.spi_r,
            Role::Responder => sa.state.spi_i,
        };
        if !expected.is_zero() && theirs != expected {
            self.stats.count(Reason::PeerSpiMismatch);
            return;
        }
        self.run(id, now, |sa, ctx| {
            if h.is_response() {
                exchange::on_response(sa, ctx, local, remote, &h, data);
            } else {
                exchange::on_request(sa, ctx, local, remote, &h, data);
            }
        });
        self.apply_effects(now);
        self.flush_group(now);
    }

    /// An INFORMATIONAL request that starts with a plain Notify payload (nothing encrypted): a
    /// notification from outside any IKE SA (RFC 7296 1.5), never answered (an answer could start a loop). An INVALID_SPI that
    /// names the outbound SPI of one of our CHILD_SAs whose IKE SA's peer is at `remote` is a
    /// hint that the peer lost its state (`exchange::hint`).
    fn unprotected_request(&mut self, now: Instant, remote: SocketAddr, first: u8, data: &[u8]) {
        self.stats.count(Reason::UnprotectedRequest);
        let Ok(chain) = crate::wire::parse_chain(data, crate::wire::HEADER_LEN, first) else {
            return;
        };
        let named: Vec<ChildSpi> = chain
            .payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Notify {
                    kind: notify::INVALID_SPI,
                    spi,
                    data,
                    ..
                } => {
                    // RFC 7296 1.5: the SPI is the notification data (some put it in the
                    // notify's SPI field).
                    let b = if data.len() == 4 { data } else { spi };
                    <[u8; 4]>::try_from(b.as_slice())
                        .ok()
                        .map(|b| ChildSpi(u32::from_be_bytes(b)))
                }
                _ => None,
            })
            .collect();
        let Some(id) = self
            .sas
            .values()
            .find(|sa| {
                sa.state.phase == Phase::Established
                    && sa.state.remote.ip() == remote.ip()
                    && sa.state.children.iter().any(|c| named.contains(&c.spi_out))
            })
            .map(IkeSa::id)
        else {
            return;
        };
        self.run(id, now, |sa, ctx| {
            exchange::hint::on_hint(sa, ctx, exchange::hint::Signal::InvalidSpi)
        });
        self.apply_effects(now);
    }

    /// ESP came from `remote` to our `local` for an SPI we do not have, and we have no IKE SA
    /// with that address: tells the sender in an unprotected INFORMATIONAL with INVALID_SPI
    /// (RFC 7296 1.5: zero IKE SPIs, the initiator flag, message id 0; never answered), a hint
    /// for a peer whose IKE SA we lost (we restarted) to check it at once. Rate-limited with
    /// the other unprotected answers. True if sent.
    pub fn notify_invalid_spi_unprotected(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        spi: ChildSpi,
    ) -> bool {
        if self
            .sas
            .values()
            .any(|sa| sa.state.remote.ip() == remote.ip())
        {
            return false;
        }
        let msg = exchange::plain_message(
            IkeSpi::ZERO,
            IkeSpi::ZERO,
            xchg::INFORMATIONAL,
            crate::wire::FLAG_INITIATOR,
            0,
            &[Payload::Notify {
                protocol: crate::wire::proto::ESP,
                spi: Vec::new(),
                kind: notify::INVALID_SPI,
                data: spi.to_bytes().to_vec(),
            }],
        );
        if !self
            .out
            .unprotected
            .allow(now, self.config.unprotected_answers_per_sec)
        {
            self.stats.answers_limited = self.stats.answers_limited.saturating_add(1);
            return false;
        }
        self.out.transmits.push_back(Transmit {
            src: local,
            dst: remote,
            data: msg,
        });
        let h = &mut self.stats.hints;
        h.invalid_spi_sent = h.invalid_spi_sent.saturating_add(1);
        true
    }

    /// An IKE_SA_INIT request: the same answer again for a retransmission, else the responder
    /// side of `exchange::init`.
    fn init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        msg: &[u8],
    ) {
        if h.spi_r != 0 {
            self.stats.count(Reason::InitResponderSpi);
            return;
        }
        let key = (IkeSpi(h.spi_i), remote);
        if let Some(sa) = self.half_open.get(&key).and_then(|id| self.sas.get(&id)) {
            if let Some(hs) = sa.pending.handshake.as_ref() {
                if hs.init_request == msg && !hs.init_response.is_empty() {
                    let data = hs.init_response.clone();
                    self.out.transmits.push_back(Transmit {
                        src: local,
                        dst: remote,
                        data,
                    });
                    return;
                }
            }
        }
        let Endpoint {
            rng,
            config,
            peers,
            services,
            out,
            stats,
            cookies,
            half_open,
            group,
            ..
        } = self;
        let mut ctx = Ctx {
            now,
            rng,
            config,
            peers,
            services,
            out,
            stats,
            group,
        };
        let Some(sa) = init::respond(&mut ctx, cookies, half_open, local, remote, h, msg) else {
            return;
        };
        let id = sa.id();
        // Admission refused a taken key, so this cannot fail.
        let _ = self.half_open.insert(key, id);
        self.sas.insert(id, sa);
        self.stats.handshakes.started = self.stats.handshakes.started.saturating_add(1);
        self.file(id);
    }

    // ---- timers ----------------------------------------------------------------------------

    /// Retransmits, times out dead peers and half-open IKE SAs, starts due rekeys and liveness
    /// checks: only on the IKE SAs that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for id in self.deadlines.take_due(now) {
            if let Some(sa) = self.sas.get_mut(&id) {
                sa.filed = None;
            }
            self.run(id, now, exchange::on_timers);
        }
        self.apply_effects(now);
        self.eap_handle_timeout(now);
        self.group_timeout(now);
    }

    /// How many IKE SAs are filed under a deadline (each at most once).
    pub fn filed_deadlines(&self) -> usize {
        self.deadlines.len()
    }

    // ---- plumbing ----------------------------------------------------------------------------

    fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        Ctx {
            now,
            rng: &mut self.rng,
            config: &self.config,
            peers: &self.peers,
            services: &mut self.services,
            out: &mut self.out,
            stats: &mut self.stats,
            group: &mut self.group,
        }
    }

    /// Runs `f` on IKE SA `id` (if it exists) with a context, then re-files it under its
    /// next deadline or takes it out if it ended. Effects on other IKE SAs wait in the output
    /// for [`apply_effects`](Self::apply_effects).
    fn run<R>(
        &mut self,
        id: IkeSaId,
        now: Instant,
        f: impl FnOnce(&mut IkeSa, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let Endpoint {
            sas,
            rng,
            config,
            peers,
            services,
            out,
            stats,
            group,
            ..
        } = self;
        let sa = sas.get_mut(&id)?;
        let mut ctx = Ctx {
            now,
            rng,
            config,
            peers,
            services,
            out,
            stats,
            group,
        };
        let r = f(sa, &mut ctx);
        self.file(id);
        Some(r)
    }

    /// Files IKE SA `id` under its earliest deadline, or takes it out if it is dead.
    fn file(&mut self, id: IkeSaId) {
        let Some(sa) = self.sas.get_mut(&id) else {
            return;
        };
        if sa.state.phase == Phase::Dead {
            self.remove(id);
            return;
        }
        if sa.state.phase != Phase::Init {
            if let Some(k) = sa.pending.half_open.take() {
                self.half_open.remove(&k, id);
            }
        }
        sa.refresh_timers();
        let next = sa.timers.next();
        self.deadlines.refile(id, sa.filed, next);
        sa.filed = next;
    }

    fn remove(&mut self, id: IkeSaId) {
        let Some(mut sa) = self.sas.remove(&id) else {
            return;
        };
        sa.pending.reassembly.clear(&mut self.out.reassembly);
        self.deadlines.refile(id, sa.filed, None);
        if sa.pending.handshake.is_some() {
            self.stats.handshakes.failed = self.stats.handshakes.failed.saturating_add(1);
        }
        if let Some(k) = sa.pending.half_open {
            self.half_open.remove(&k, id);
        }
        if let Some(out) = &sa.pending.outstanding {
            let (ike, child) = out.request.reserved();
            if let Some(s) = ike {
                self.services.spis.release_ike(s);
            }
            if let Some(s) = child {
                self.services.spis.release_child(s);
            }
        }
        self.services.pool.release(id);
        self.services.spis.release_ike(id.0);
        self.group.forget_ike(id);
        if let (true, Some(cfg), Some(rid)) =
            (sa.state.redirect, &sa.state.peer, &sa.state.remote_id)
        {
            let key = exchange::gw_move::redirect_key(&cfg.name, rid, sa.state.remote);
            if self.out.redirected.get(&key) == Some(&id) {
                self.out.redirected.remove(&key);
            }
        }
        if sa.pending.eap.is_some() {
            if let Some(s) = self.services.eap.as_mut().and_then(|e| e.server.as_mut()) {
                s.forget(id);
            }
        }
    }

    /// Does what exchanges asked of other IKE SAs than their own, until nothing is left.
    fn apply_effects(&mut self, now: Instant) {
        while !self.out.effects.is_empty() {
            let effects = core::mem::take(&mut self.out.effects);
            for e in effects {
                match e {
                    Effect::Insert(sa) => {
                        let id = sa.id();
                        self.sas.insert(id, *sa);
                        self.file(id);
                    }
                    Effect::HandOver { to, children } => {
                        let mut children = Some(children);
                        self.run(to, now, |sa, _| {
                            sa.state
                                .children
                                .extend(children.take().unwrap_or_default())
                        });
                        // The survivor went meanwhile: its children are gone with it.
                        for c in children.into_iter().flatten() {
                            self.out.events.push_back(Event::ChildDown {
                                ike: to,
                                spi_in: c.spi_in,
                                spi_out: c.spi_out,
                            });
                        }
                    }
                    Effect::Delete(id) => {
                        self.run(id, now, |sa, ctx| {
                            exchange::enqueue(sa, ctx, Action::DeleteIke)
                        });
                    }
                    Effect::Replaced(id) => {
                        self.run(id, now, |sa, ctx| sa.close(ctx, DownReason::Replaced));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
impl Endpoint {
    /// An IKE SA itself, for tests that forge messages with its keys.
    pub(crate) fn sa_mut(&mut self, id: IkeSaId) -> Option<&mut IkeSa> {
        self.sas.get_mut(&id)
    }

    /// Whether the responder's table of IKE_SA_INIT retransmissions is empty.
    pub(crate) fn half_open_entries(&self) -> usize {
        self.half_open.len()
    }
}
