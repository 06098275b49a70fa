//! The exchanges of RFC 7296 (and RFC 4555), each in its own module, each working on one IKE
//! SA and a [`Ctx`]: the time, the RNG, the output queues, the services and the counters.
//! This module holds what they share: receiving a request or a response on an IKE SA (the
//! window, decryption, the answer), sending our requests one at a time, and the timers.
//!
//! - [`init`]: IKE_SA_INIT, both ends (the responder's admission point is there).
//! - [`auth`]: IKE_AUTH with the first CHILD_SA, through the authenticator service.
//! - [`eap_auth`]: the responder's IKE_AUTH rounds when the peer authenticates by EAP.
//! - [`child`]: CREATE_CHILD_SA for a new CHILD_SA or a CHILD_SA rekey (2.8.1 collisions).
//! - [`ike_rekey`]: CREATE_CHILD_SA rekeying the IKE SA (2.8.2 collisions).
//! - [`info`]: INFORMATIONAL: deletes, liveness, INVALID_SPI.
//! - [`mobike`]: UPDATE_SA_ADDRESSES, additional addresses, return routability (RFC 4555).
//! - [`mid_sync`]: IKEV2_MESSAGE_ID_SYNC after an HA takeover (RFC 6311), both ends.
//! - [`gw_move`]: the gateway moves (HA standby on another subnet): roamgate's private
//!   announcement with the client's return-routability probe, or an RFC 5685 REDIRECT.
//!
//! Errors are answered as RFC 7296 2.21 says (the table is in `stats`): a request that passed
//! the integrity check and the window but is badly formed gets INVALID_SYNTAX and ends the IKE
//! SA on both ends (2.21.3); nothing unauthenticated on an IKE SA is ever answered; a
//! response is never answered.
//!
//! Owns: the request/response discipline of an IKE SA (one outstanding request, cached
//! response for a retransmitted request, retransmission with back-off).
//! Must never: reach another IKE SA except through an [`Effect`]; answer a message that
//! failed its integrity check or fell outside the window.

pub(crate) mod auth;
pub(crate) mod child;
pub(crate) mod eap_auth;
pub(crate) mod group;
pub mod gw_move;
pub(crate) mod hint;
pub(crate) mod ike_rekey;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod mid_sync;
pub(crate) mod mobike;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use crate::config::{EndpointConfig, PeerConfig};
use crate::crypto::DhPrivate;
use crate::event::{DownReason, Event, NatSides, Transmit};
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::ike_sa::{Child, IkeSa, OpenError, Phase, Role};
use crate::proposal::{EspProposal, IkeProposal};
use crate::services::Services;
use crate::stats::{Reason, Stats};
use crate::time::Instant;
use crate::timer::Timer;
use crate::wire::{self, exchange, notify, Header, Payload, Proposal, TrafficSelector};

/// What an exchange works with besides its IKE SA.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub rng: &'a mut ChaCha20Rng,
    pub config: &'a EndpointConfig,
    pub peers: &'a [Arc<PeerConfig>],
    pub services: &'a mut Services,
    pub out: &'a mut Output,
    pub stats: &'a mut Stats,
    pub group: &'a mut crate::group::session::GroupState,
}

/// The endpoint's outputs, filled by the exchanges.
#[derive(Default)]
pub(crate) struct Output {
    pub transmits: VecDeque<Transmit>,
    pub events: VecDeque<Event>,
    /// Work on other IKE SAs than the one at hand, done by the endpoint afterwards.
    pub effects: Vec<Effect>,
    pub unprotected: AnswerLimit,
    /// Bytes held for reassembly of fragmented messages by every IKE SA (RFC 7383).
    pub reassembly: crate::fragment::Budget,
    /// IKE SAs we sent an RFC 5685 REDIRECT to our own address (`gw_move`), by connection,
    /// peer identity and peer address: the client's new IKE SA replaces the redirected one.
    pub redirected: std::collections::HashMap<gw_move::RedirectKey, IkeSaId>,
}

/// Work for the endpoint on IKE SAs other than the one an exchange had.
pub(crate) enum Effect {
    /// A new IKE SA (made by an IKE SA rekey) joins the endpoint.
    Insert(Box<IkeSa>),
    /// CHILD_SAs held back during a simultaneous IKE SA rekey go to the one that survived.
    HandOver { to: IkeSaId, children: Vec<Child> },
    /// An IKE SA is to be deleted (the redundant one of a simultaneous rekey).
    Delete(IkeSaId),
    /// A redirected IKE SA the client's new one replaced (`gw_move`): closed at once, without
    /// an exchange (a request of ours may be under way on it that the client will never
    /// answer; the client deletes its own copy, RFC 5685 5).
    Replaced(IkeSaId),
}

/// At most `per_sec` unprotected error answers in any one-second window (RFC 7296 2.21.4).
#[derive(Debug, Default)]
pub(crate) struct AnswerLimit {
    window: Instant,
    sent: u32,
}

impl AnswerLimit {
    pub(crate) fn allow(&mut self, now: Instant, per_sec: u32) -> bool {
        if now.saturating_duration_since(self.window) >= core::time::Duration::from_secs(1) {
            self.window = now;
            self.sent = 0;
        }
        if self.sent < per_sec {
            self.sent = self.sent.saturating_add(1);
            true
        } else {
            false
        }
    }
}

impl Ctx<'_> {
    pub(crate) fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        self.rng.fill_bytes(&mut n);
        n
    }

    pub(crate) fn send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.out.transmits.push_back(Transmit { src, dst, data });
    }

    /// Sends a message kept as its datagrams back to back (its fragments, or the one
    /// message: `fragment::datagrams`).
    pub(crate) fn send_datagrams(&mut self, src: SocketAddr, dst: SocketAddr, data: &[u8]) {
        let mut n = 0u64;
        for d in crate::fragment::datagrams(data) {
            n = n.saturating_add(1);
            self.send(src, dst, d.to_vec());
        }
        if n > 1 {
            let f = &mut self.stats.fragments;
            f.messages_sent = f.messages_sent.saturating_add(1);
            f.sent = f.sent.saturating_add(n);
        }
    }

    pub(crate) fn event(&mut self, e: Event) {
        self.out.events.push_back(e);
    }

    pub(crate) fn effect(&mut self, e: Effect) {
        self.out.effects.push(e);
    }

    pub(crate) fn count(&mut self, r: Reason) {
        self.stats.count(r);
    }

    /// An authentication failure, by its reason.
    pub(crate) fn count_auth(&mut self, e: crate::services::AuthError) {
        self.stats.count_auth(e);
    }

    /// Seconds since the UNIX epoch at `now` (certificate validity).
    pub(crate) fn unix_time(&self) -> u64 {
        // Added before rounding down: two truncated parts would lag the clock by up to 2 s
        // and call a certificate issued a second ago not yet valid.
        self.config
            .unix_time_at_zero
            .saturating_add(core::time::Duration::from_nanos(self.now.as_nanos()))
            .as_secs()
    }

    pub(crate) fn ike_spi(&mut self) -> IkeSpi {
        self.services.spis.ike_spi(self.rng)
    }

    pub(crate) fn child_spi(&mut self) -> ChildSpi {
        self.services.spis.child_spi(self.rng)
    }

    /// A new inbound CHILD_SA SPI for worker `w` (RFC 9611 per-core CHILD_SAs).
    pub(crate) fn child_spi_for(&mut self, w: u32) -> ChildSpi {
        self.services.spis.child_spi_for(self.rng, w)
    }

    /// A new inbound CHILD_SA SPI for the first worker none of `taken` (inbound SPIs) is on;
    /// when every worker has one, the next in turn.
    pub(crate) fn child_spi_apart(&mut self, taken: &[ChildSpi]) -> ChildSpi {
        let spis = &self.services.spis;
        let workers = spis.workers();
        let layout = spis.layout();
        let free = (0..workers).find(|w| taken.iter().all(|s| layout.worker_of(*s) != *w));
        match free {
            Some(w) => self.child_spi_for(w),
            None => self.child_spi(),
        }
    }

    /// Counts `reason` and sends `data` (an unprotected error answer) unless the rate limit
    /// holds it back.
    pub(crate) fn answer_unprotected(
        &mut self,
        reason: Reason,
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    ) {
        self.count(reason);
        if self
            .out
            .unprotected
            .allow(self.now, self.config.unprotected_answers_per_sec)
        {
            self.send(local, remote, data);
        } else {
            self.stats.answers_limited = self.stats.answers_limited.saturating_add(1);
        }
    }
}

/// What an outstanding request of ours was for.
#[derive(Debug)]
pub(crate) enum Request {
    Init,
    Auth {
        child_spi: ChildSpi,
    },
    /// A new CHILD_SA: the rekey of `old_spi_in`, or a further one.
    CreateChild {
        old_spi_in: Option<ChildSpi>,
        new_spi: ChildSpi,
        nonce: Vec<u8>,
        dh: Option<DhPrivate>,
        esp: Vec<EspProposal>,
    },
    RekeyIke {
        new_spi: IkeSpi,
        nonce: Vec<u8>,
        dh: DhPrivate,
        prop: IkeProposal,
    },
    DeleteChild {
        spi_in: ChildSpi,
    },
    DeleteIke,
    Liveness,
    InvalidSpi,
    /// MOBIKE UPDATE_SA_ADDRESSES with our COOKIE2; the peer addresses tried so far.
    UpdateAddresses {
        cookie2: Vec<u8>,
        tried: Vec<IpAddr>,
    },
    /// IKEV2_MESSAGE_ID_SYNC (message id 0) with this nonce.
    MidSync {
        nonce: [u8; 4],
    },
    /// Gateway: ROAMGATE_GATEWAY_MOVED or a REDIRECT (`gw_move`).
    AnnounceMove,
    /// A private-use notify of the endpoint's user (`info::start_private`).
    Private,
    /// Client: the return-routability probe to the address the gateway announced.
    ProbeGateway {
        cookie2: Vec<u8>,
        to: SocketAddr,
    },
    /// G-IKEv2 member: GSA_AUTH registering for `group` (in place of IKE_AUTH).
    GsaAuth {
        group: crate::wire::Id,
    },
    /// G-IKEv2 member: GSA_REGISTRATION for `group`.
    GsaRegistration {
        group: crate::wire::Id,
    },
    /// G-IKEv2 member: GSA_REGISTRATION leaving `group`.
    GsaLeave {
        group: crate::wire::Id,
    },
    /// G-IKEv2 GCKS: GSA_INBAND_REKEY.
    GsaInband,
}

impl Request {
    /// SPIs this request holds for an SA that exists only if it succeeds.
    pub(crate) fn reserved(&self) -> (Option<IkeSpi>, Option<ChildSpi>) {
        match self {
            Request::Auth { child_spi } => (None, Some(*child_spi)),
            Request::CreateChild { new_spi, .. } => (None, Some(*new_spi)),
            Request::RekeyIke { new_spi, .. } => (Some(*new_spi), None),
            _ => (None, None),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Outstanding {
    pub id: u32,
    /// The request's datagrams back to back (its fragments, or the one message).
    pub data: Vec<u8>,
    pub request: Request,
    pub tries: u32,
    /// A hinted liveness check rides on this request (`hint`).
    pub hint: Option<hint::HintCheck>,
}

/// Requests waiting for the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    RekeyChild(ChildSpi),
    /// A further CHILD_SA with the first one's selectors.
    NewChild,
    /// A further per-core CHILD_SA (RFC 9611) with the first one's selectors, its inbound
    /// SPI on this worker.
    NewChildOn(u32),
    UpdateAddresses,
    RekeyIke,
    DeleteChild(ChildSpi),
    DeleteIke,
    Liveness,
    /// Tell the peer ESP arrived for an SPI we do not have (RFC 7296 3.10.1).
    InvalidSpi(ChildSpi),
    /// Synchronize the message ids with the peer (RFC 6311).
    MidSync,
    /// Gateway: tell the client where we are now (`gw_move`), or redirect it (RFC 5685).
    AnnounceMove,
    Redirect,
    /// Client: probe the address the gateway announced (`gw_move`).
    ProbeGateway,
    /// The first of `Pending::private_out`: a private-use notify of the endpoint's user
    /// (`info::start_private`).
    Private,
    /// G-IKEv2 member: the next GSA_REGISTRATION waiting for this IKE SA (`group`).
    GsaRegistration,
    /// G-IKEv2 GCKS: the next GSA_INBAND_REKEY waiting for this IKE SA (`group`).
    GsaInband,
}

/// A request on IKE SA `sa` (its SPIs matched): the window, decryption, the exchange, the
/// answer.
pub(crate) fn on_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    msg: &[u8],
) {
    let fragment = h.next_payload == wire::payload::SKF;
    // Ahead of the retransmission check: a responder's first request has message id 0 too
    // (RFC 6311 sync requests are told from it by their content, as strongSwan does by the
    // request's hash).
    if mid_sync::may_be_request(sa, h) && mid_sync::on_request(sa, ctx, local, remote, h, msg) {
        return;
    }
    if let Some((id, resp)) = &sa.state.last_response {
        if *id == h.message_id {
            // A retransmitted request: the cached response, nothing processed twice (of a
            // fragmented request, its first fragment only: RFC 7383 2.6.1).
            let data = resp.clone();
            if !fragment || crate::fragment::is_first(ctx, msg) {
                ctx.send_datagrams(local, remote, &data);
            }
            return;
        }
    }
    if eap_auth::waiting_for(sa, h.message_id) {
        // Retransmitted while the EAP backend's server has the previous one: answered once
        // the result is in, never passed on twice.
        return;
    }
    if h.message_id != sa.state.peer_next_id {
        ctx.count(Reason::BadMessageId);
        return;
    }
    let opened = if fragment {
        match crate::fragment::receive(sa, ctx, h, msg) {
            crate::fragment::Received::Incomplete => return,
            crate::fragment::Received::Complete(r) => r,
        }
    } else {
        sa.open(msg, h)
    };
    let outcome = match opened {
        Ok(payloads) => {
            sa.pending.last_heard = ctx.now;
            // Only an authenticated request may move the IKE SA's port (NAT mapping, RFC 7296
            // 2.23: the float to 4500 happens on IKE_AUTH).
            if sa.state.phase != Phase::Established
                && (h.exchange == exchange::IKE_AUTH
                    || h.exchange == crate::group::wire::exchange::GSA_AUTH)
            {
                sa.state.local = local;
                sa.state.remote = remote;
            }
            dispatch_request(sa, ctx, local, remote, h.exchange, &payloads)
        }
        Err(OpenError::Drop(r)) => {
            ctx.count(r);
            return;
        }
        Err(OpenError::Malformed) => Err(Reason::InnerMalformed),
        Err(OpenError::Unsupported(t)) => {
            ctx.count(Reason::UnsupportedCritical);
            Ok(vec![Payload::notify(
                notify::UNSUPPORTED_CRITICAL_PAYLOAD,
                vec![t],
            )])
        }
    };
    if eap_auth::defer(sa, h.message_id, local, remote) {
        return;
    }
    answer(sa, ctx, local, remote, h.exchange, h.message_id, outcome);
    if sa.pending.gateway_moved.is_some()
        || sa
            .pending
            .queue
            .iter()
            .any(|a| matches!(a, Action::RekeyChild(_)))
    {
        // The gateway announced a move, or the peer's INVALID_SPI asks for a CHILD_SA anew
        // (`info::invalid_spi`): that request goes out after the answer.
        next_action(sa, ctx);
    }
}

/// Sends the answer to request `message_id` (encrypted, kept for its retransmissions) and
/// ends the IKE SA if the answer says so.
pub(crate) fn answer(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    exch: u8,
    message_id: u32,
    outcome: Reply,
) {
    let (reply, fatal) = match outcome {
        Ok(reply) => (reply, false),
        Err(reason) => {
            ctx.count(reason);
            (vec![Payload::notify(notify::INVALID_SYNTAX, vec![])], true)
        }
    };
    let data = crate::fragment::protect(sa, ctx, remote, exch, message_id, true, &reply);
    sa.state.peer_next_id = message_id.wrapping_add(1);
    // A response goes back where the request came from (RFC 7296 2.11), which is not the
    // SA's address when a MOBIKE peer probes a new path before it updates.
    ctx.send_datagrams(local, remote, &data);
    sa.state.last_response = Some((message_id, data));
    let not_up = sa.state.phase == Phase::Init && sa.state.role == Role::Responder;
    if fatal || (not_up && reply_is_error(&reply)) {
        // INVALID_SYNTAX ends the IKE SA on both ends (2.21.3); so does any error to an
        // IKE_AUTH request, the IKE SA never came up.
        let reason = if fatal {
            DownReason::InvalidSyntax
        } else {
            DownReason::AuthFailed
        };
        sa.close(ctx, reason);
    } else if sa.state.phase == Phase::Deleting && sa.pending.outstanding.is_none() {
        sa.state.phase = Phase::Dead;
    }
}

fn reply_is_error(reply: &[Payload]) -> bool {
    reply
        .iter()
        .any(|p| matches!(p, Payload::Notify { kind, .. } if notify::is_error(*kind)))
}

/// The answer to an authenticated request, or the reason it is badly formed.
pub(crate) type Reply = Result<Vec<Payload>, Reason>;

fn dispatch_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    exch: u8,
    p: &[Payload],
) -> Reply {
    match exch {
        exchange::IKE_AUTH if sa.state.role == Role::Responder && sa.state.phase == Phase::Init => {
            auth::on_request(sa, ctx, p)
        }
        // G-IKEv2 requests only where a GCKS (GSA_AUTH, GSA_REGISTRATION) or a membership
        // (GSA_INBAND_REKEY) is; elsewhere they stay unexpected exchanges.
        crate::group::wire::exchange::GSA_AUTH
            if sa.state.role == Role::Responder
                && sa.state.phase == Phase::Init
                && !ctx.group.gcks.is_empty() =>
        {
            group::on_gsa_auth_request(sa, ctx, p)
        }
        // Nothing but IKE_AUTH before the IKE SA is up.
        _ if sa.state.phase == Phase::Init || sa.state.phase == Phase::Auth => {
            Err(Reason::UnexpectedExchange)
        }
        exchange::INFORMATIONAL => info::on_request(sa, ctx, local, remote, p),
        crate::group::wire::exchange::GSA_REGISTRATION
            if sa.state.phase == Phase::Established && !ctx.group.gcks.is_empty() =>
        {
            group::on_registration_request(sa, ctx, p)
        }
        crate::group::wire::exchange::GSA_INBAND_REKEY
            if sa.state.phase == Phase::Established && !ctx.group.members.is_empty() =>
        {
            group::on_inband_request(sa, ctx, p)
        }
        exchange::CREATE_CHILD_SA => {
            if sa.state.phase != Phase::Established {
                return Ok(vec![Payload::notify(notify::TEMPORARY_FAILURE, vec![])]);
            }
            let props = find_sa(p).ok_or(Reason::MissingPayload)?;
            if props
                .first()
                .is_some_and(|x| x.protocol == wire::proto::IKE)
            {
                ike_rekey::on_request(sa, ctx, p)
            } else {
                child::on_request(sa, ctx, p)
            }
        }
        _ => Err(Reason::UnexpectedExchange),
    }
}

/// A response on IKE SA `sa` (its SPIs matched).
pub(crate) fn on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    msg: &[u8],
) {
    let Some(out) = sa.pending.outstanding.as_ref() else {
        ctx.count(Reason::UnexpectedResponse);
        return;
    };
    if out.id != h.message_id {
        ctx.count(Reason::BadMessageId);
        return;
    }
    if h.exchange == exchange::IKE_SA_INIT {
        init::on_response(sa, ctx, local, remote, h, msg);
        return;
    }
    if h.next_payload != wire::payload::SK && h.next_payload != wire::payload::SKF {
        // Unprotected: an INVALID_IKE_SPI answer (RFC 7296 2.21.4) is a hint, nothing more.
        let refused = wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload)
            .ok()
            .filter(|c| c.sk.is_none())
            .is_some_and(|c| find_notify(&c.payloads, notify::INVALID_IKE_SPI).is_some());
        ctx.count(Reason::NotEncrypted);
        if refused {
            hint::on_hint(sa, ctx, hint::Signal::InvalidIkeSpi);
        }
        return;
    }
    let opened = if h.next_payload == wire::payload::SKF {
        match crate::fragment::receive(sa, ctx, h, msg) {
            crate::fragment::Received::Incomplete => return,
            crate::fragment::Received::Complete(r) => r,
        }
    } else {
        sa.open(msg, h)
    };
    let payloads = match opened {
        Ok(p) => p,
        Err(OpenError::Drop(r)) => {
            ctx.count(r);
            return;
        }
        // Authenticated but unreadable: never answered; the request times out.
        Err(OpenError::Malformed | OpenError::Unsupported(_)) => {
            ctx.count(Reason::ResponseMalformed);
            return;
        }
    };
    if let Some(Request::MidSync { nonce }) = sa.pending.outstanding.as_ref().map(|o| &o.request) {
        if !mid_sync::answers(ctx, *nonce, &payloads) {
            return;
        }
    }
    sa.pending.last_heard = ctx.now;
    sa.timers.set(Timer::Retransmit, None);
    let Some(out) = sa.pending.outstanding.take() else {
        return;
    };
    if out.hint.is_some() {
        hint::answered(ctx);
    }
    if find_notify(&payloads, notify::INVALID_SYNTAX).is_some() {
        // Fatal to both ends (RFC 7296 2.21.3).
        release_reserved(ctx, &out.request);
        sa.close(ctx, DownReason::InvalidSyntax);
        return;
    }
    match out.request {
        Request::Auth { child_spi } => auth::on_response(sa, ctx, child_spi, &payloads),
        Request::CreateChild {
            old_spi_in,
            new_spi,
            nonce,
            dh,
            esp,
        } => child::on_response(sa, ctx, old_spi_in, new_spi, &nonce, dh, &esp, &payloads),
        Request::RekeyIke {
            new_spi,
            nonce,
            dh,
            prop,
        } => ike_rekey::on_response(sa, ctx, new_spi, &nonce, &dh, prop, &payloads),
        Request::DeleteChild { spi_in } => info::on_delete_child_response(sa, ctx, spi_in),
        Request::DeleteIke => sa.close(ctx, DownReason::Deleted),
        Request::UpdateAddresses { cookie2, .. } => {
            mobike::on_response(sa, ctx, local, remote, &cookie2, &payloads)
        }
        Request::MidSync { .. } => mid_sync::on_response(sa, ctx, &payloads),
        Request::ProbeGateway { cookie2, to } => {
            gw_move::on_probe_response(sa, ctx, &cookie2, to, &payloads)
        }
        Request::GsaAuth { group } => group::on_gsa_auth_response(sa, ctx, &group, &payloads),
        Request::GsaRegistration { group } => {
            group::on_registration_response(sa, ctx, &group, &payloads)
        }
        Request::GsaLeave { group } => group::on_leave_response(ctx, &group),
        Request::GsaInband
        | Request::AnnounceMove
        | Request::Liveness
        | Request::InvalidSpi
        | Request::Private
        | Request::Init => {}
    }
    next_action(sa, ctx);
}

/// Returns the SPIs a request held for an SA that will not come.
pub(crate) fn release_reserved(ctx: &mut Ctx<'_>, r: &Request) {
    let (ike, child) = r.reserved();
    if let Some(s) = ike {
        ctx.services.spis.release_ike(s);
    }
    if let Some(s) = child {
        ctx.services.spis.release_child(s);
    }
}

/// Sends `payloads` as the IKE SA's next request (its next message id, encrypted) and keeps
/// it for retransmission until `request`'s response comes.
pub(crate) fn send_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    exch: u8,
    payloads: &[Payload],
    request: Request,
) {
    let remote = sa.state.remote;
    send_request_to(sa, ctx, remote, exch, payloads, request);
}

/// [`send_request`] to `remote` (a probe of an address the IKE SA is not at).
pub(crate) fn send_request_to(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    remote: SocketAddr,
    exch: u8,
    payloads: &[Payload],
    request: Request,
) {
    let id = sa.take_request_id();
    let data = crate::fragment::protect(sa, ctx, remote, exch, id, false, payloads);
    sa.timers.set(
        Timer::Retransmit,
        Some(ctx.now.saturating_add(ctx.config.retransmit.timeout)),
    );
    ctx.send_datagrams(sa.state.local, remote, &data);
    sa.pending.outstanding = Some(Outstanding {
        id,
        data,
        request,
        tries: 0,
        hint: None,
    });
}

/// Queues `a` and starts it if the window is free.
pub(crate) fn enqueue(sa: &mut IkeSa, ctx: &mut Ctx<'_>, a: Action) {
    sa.pending.queue.push_back(a);
    next_action(sa, ctx);
}

/// Starts the next queued request if the window is free.
pub(crate) fn next_action(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    while sa.pending.outstanding.is_none() && sa.state.phase == Phase::Established {
        let Some(a) = sa.pending.queue.pop_front() else {
            return;
        };
        let started = match a {
            Action::Liveness => {
                send_request(sa, ctx, exchange::INFORMATIONAL, &[], Request::Liveness);
                true
            }
            Action::DeleteIke => {
                info::start_delete_ike(sa, ctx);
                true
            }
            Action::DeleteChild(spi_in) => info::start_delete_child(sa, ctx, spi_in),
            Action::InvalidSpi(spi) => {
                info::start_invalid_spi(sa, ctx, spi);
                true
            }
            Action::NewChild => child::start_new(sa, ctx),
            Action::NewChildOn(w) => child::start_new_on(sa, ctx, w),
            Action::RekeyChild(old_in) => child::start_rekey(sa, ctx, old_in),
            Action::UpdateAddresses => {
                mobike::start_update(sa, ctx);
                true
            }
            Action::RekeyIke => {
                ike_rekey::start(sa, ctx);
                true
            }
            Action::MidSync => mid_sync::start(sa, ctx),
            Action::AnnounceMove => {
                gw_move::start_announce(sa, ctx, false);
                true
            }
            Action::Redirect => {
                gw_move::start_announce(sa, ctx, true);
                true
            }
            Action::ProbeGateway => gw_move::start_probe(sa, ctx),
            Action::Private => info::start_private(sa, ctx),
            Action::GsaRegistration => group::start_registration(sa, ctx),
            Action::GsaInband => group::start_inband(sa, ctx),
        };
        if started {
            return;
        }
    }
}

/// Whatever of the IKE SA's timers is due: retransmissions, a dead peer, half-open expiry,
/// rekeys, hard lifetimes, liveness checks.
pub(crate) fn on_timers(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let now = ctx.now;
    for t in sa.timers.take_due(now) {
        match t {
            Timer::Retransmit => retransmit(sa, ctx),
            Timer::HalfOpen => {
                if sa.state.phase == Phase::Init && sa.state.role == Role::Responder {
                    // A half-open SA nobody completed: it was never reported up.
                    sa.state.phase = Phase::Dead;
                }
            }
            Timer::IkeRekey => {
                if sa.state.rekey_at.is_some_and(|at| at <= now) {
                    sa.state.rekey_at = None;
                    if sa.state.phase == Phase::Established {
                        sa.pending.queue.push_back(Action::RekeyIke);
                    }
                }
            }
            Timer::ChildRekey => {
                for c in sa.state.children.iter_mut() {
                    if c.rekey_at.is_some_and(|at| at <= now) {
                        c.rekey_at = None;
                        sa.pending.queue.push_back(Action::RekeyChild(c.spi_in));
                    }
                }
            }
            Timer::ChildExpire => {
                for c in sa.state.children.iter_mut() {
                    if c.expire_at.is_some_and(|at| at <= now) && !c.replaced {
                        c.expire_at = None;
                        sa.pending.queue.push_back(Action::DeleteChild(c.spi_in));
                    }
                }
            }
            Timer::Liveness => liveness(sa, ctx),
            Timer::Reassembly => crate::fragment::expire(sa, ctx),
        }
    }
    if sa.state.phase != Phase::Dead {
        next_action(sa, ctx);
    }
}

/// Nothing heard for the liveness interval: an empty INFORMATIONAL asks the peer.
fn liveness(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let Some(dpd) = sa.state.peer.as_ref().and_then(|p| p.dpd) else {
        return;
    };
    if sa.state.phase != Phase::Established {
        return;
    }
    let due = sa.pending.last_heard.saturating_add(dpd);
    if due > ctx.now {
        // Something was heard since the timer was set.
        sa.timers.set(Timer::Liveness, Some(due));
        return;
    }
    if sa.pending.outstanding.is_none() && sa.pending.queue.is_empty() {
        sa.pending.queue.push_back(Action::Liveness);
    }
    // A request under way checks liveness by itself (its retransmissions run out).
    sa.pending.last_heard = ctx.now;
    sa.timers
        .set(Timer::Liveness, Some(ctx.now.saturating_add(dpd)));
}

fn retransmit(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let rt = ctx.config.retransmit;
    if hint::retransmit(sa, ctx) {
        return;
    }
    let Some(out) = sa.pending.outstanding.as_mut() else {
        return;
    };
    if let Request::ProbeGateway { to, .. } = out.request {
        // A probe goes to the announced address; when it gets no answer there the same
        // request (its message id is spent) goes on as a liveness check at the address the
        // IKE SA is at: nothing moves, and the window stays whole with the old gateway.
        if out.tries.saturating_add(1) >= gw_move::PROBE_TRIES {
            out.request = Request::Liveness;
            out.tries = 0;
            let data = out.data.clone();
            sa.timers
                .set(Timer::Retransmit, Some(ctx.now.saturating_add(rt.timeout)));
            ctx.send_datagrams(sa.state.local, sa.state.remote, &data);
            gw_move::probe_gave_up(sa, ctx, to);
            return;
        }
        out.tries = out.tries.saturating_add(1);
        let data = out.data.clone();
        sa.timers.set(
            Timer::Retransmit,
            Some(ctx.now.saturating_add(rt.wait(out.tries))),
        );
        ctx.send_datagrams(sa.state.local, to, &data);
        return;
    }
    if out.tries >= rt.tries {
        // MOBIKE: the peer announced other addresses; try them before giving up (RFC 4555
        // 3.3, 3.11).
        if mobike::try_next_address(sa, ctx) {
            return;
        }
        if let Some(out) = sa.pending.outstanding.take() {
            release_reserved(ctx, &out.request);
        }
        sa.close(ctx, DownReason::Timeout);
        return;
    }
    out.tries = out.tries.saturating_add(1);
    let data = out.data.clone();
    let wait = rt.wait(out.tries);
    sa.timers
        .set(Timer::Retransmit, Some(ctx.now.saturating_add(wait)));
    ctx.send_datagrams(sa.state.local, sa.state.remote, &data);
    if let Some(to) = sa.pending.gateway_moved.filter(|t| *t != sa.state.remote) {
        // The gateway announced a move while this request was under way: the new gateway
        // holds the same window and answers it (our probe follows it).
        ctx.send_datagrams(sa.state.local, to, &data);
    }
}

/// An unencrypted message (IKE_SA_INIT, or an error answer outside any IKE SA).
pub(crate) fn plain_message(
    spi_i: IkeSpi,
    spi_r: IkeSpi,
    exch: u8,
    flags: u8,
    id: u32,
    p: &[Payload],
) -> Vec<u8> {
    let mut body = Vec::new();
    let first = wire::emit_chain(p, &mut body);
    let total = wire::HEADER_LEN.saturating_add(body.len());
    let mut m = Vec::with_capacity(total);
    Header {
        spi_i: spi_i.0,
        spi_r: spi_r.0,
        next_payload: first,
        exchange: exch,
        flags,
        message_id: id,
        length: u32::try_from(total).unwrap_or(u32::MAX),
    }
    .emit(&mut m);
    m.extend_from_slice(&body);
    m
}

/// An unprotected error answer to request `h` (RFC 7296 2.21.4): the same SPIs, exchange and
/// message id, the response flag, and one notify.
pub(crate) fn error_answer(h: &Header, kind: u16, data: Vec<u8>) -> Vec<u8> {
    // The initiator flag says who sent a message: set when the requester was not the
    // original initiator (we are, then).
    let flags = wire::FLAG_RESPONSE
        | if h.from_initiator() {
            0
        } else {
            wire::FLAG_INITIATOR
        };
    plain_message(
        IkeSpi(h.spi_i),
        IkeSpi(h.spi_r),
        h.exchange,
        flags,
        h.message_id,
        &[Payload::notify(kind, data)],
    )
}

pub(crate) fn find_sa(p: &[Payload]) -> Option<&[Proposal]> {
    p.iter().find_map(|x| match x {
        Payload::Sa(v) => Some(v.as_slice()),
        _ => None,
    })
}

pub(crate) fn find_ke(p: &[Payload]) -> Option<(u16, &[u8])> {
    p.iter().find_map(|x| match x {
        Payload::Ke { group, data } => Some((*group, data.as_slice())),
        _ => None,
    })
}

pub(crate) fn find_nonce(p: &[Payload]) -> Option<&[u8]> {
    p.iter().find_map(|x| match x {
        Payload::Nonce(n) => Some(n.as_slice()),
        _ => None,
    })
}

pub(crate) fn find_tsi(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| match x {
        Payload::TsI(t) => Some(t.as_slice()),
        _ => None,
    })
}

pub(crate) fn find_tsr(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| match x {
        Payload::TsR(t) => Some(t.as_slice()),
        _ => None,
    })
}

/// What a peer's message says for certificate authentication: its SIGNATURE_HASH_ALGORITHMS
/// hashes (RFC 7427 4) and the data of its X.509 CERTREQs.
pub(crate) fn auth_hints(p: &[Payload]) -> (Vec<u16>, Vec<Vec<u8>>) {
    let hashes = find_notify(p, notify::SIGNATURE_HASH_ALGORITHMS)
        .map(crate::services::pubkey::decode_hashes)
        .unwrap_or_default();
    let certreqs = p
        .iter()
        .filter_map(|x| match x {
            Payload::CertReq {
                encoding: wire::cert_encoding::X509_SIGNATURE,
                data,
            } => Some(data.clone()),
            _ => None,
        })
        .collect();
    (hashes, certreqs)
}

pub(crate) fn find_notify(p: &[Payload], k: u16) -> Option<&[u8]> {
    p.iter().find_map(|x| match x {
        Payload::Notify { kind, data, .. } if *kind == k => Some(data.as_slice()),
        _ => None,
    })
}

/// The first error notify of a message, if any.
pub(crate) fn first_error(p: &[Payload]) -> Option<u16> {
    p.iter().find_map(|x| match x {
        Payload::Notify { kind, .. } if notify::is_error(*kind) => Some(*kind),
        _ => None,
    })
}

/// NAT detection (RFC 7296 2.23): did either side's address change on the way?
pub(crate) fn nat_detected(
    p: &[Payload],
    spi_i: IkeSpi,
    spi_r: IkeSpi,
    local: SocketAddr,
    remote: SocketAddr,
) -> NatSides {
    let mut src = p.iter().filter_map(|x| match x {
        Payload::Notify {
            kind: notify::NAT_DETECTION_SOURCE_IP,
            data,
            ..
        } => Some(data.as_slice()),
        _ => None,
    });
    let dst = find_notify(p, notify::NAT_DETECTION_DESTINATION_IP);
    let peer_seen = crate::ike_sa::nat_hash(spi_i, spi_r, remote);
    let us_seen = crate::ike_sa::nat_hash(spi_i, spi_r, local);
    let mut any_src = false;
    let mut src_matches = false;
    for s in src.by_ref() {
        any_src = true;
        src_matches |= s == peer_seen.as_slice();
    }
    if !any_src && dst.is_none() {
        return NatSides::default();
    }
    // The peer hashed what it saw as its own source and as our address.
    NatSides {
        remote: !src_matches,
        local: dst.is_some_and(|d| d != us_seen.as_slice()),
    }
}

/// The NAT detection notifies for a message between `local` and `remote`.
pub(crate) fn nat_notifies(
    spi_i: IkeSpi,
    spi_r: IkeSpi,
    local: SocketAddr,
    remote: SocketAddr,
) -> [Payload; 2] {
    [
        Payload::notify(
            notify::NAT_DETECTION_SOURCE_IP,
            crate::ike_sa::nat_hash(spi_i, spi_r, local),
        ),
        Payload::notify(
            notify::NAT_DETECTION_DESTINATION_IP,
            crate::ike_sa::nat_hash(spi_i, spi_r, remote),
        ),
    ]
}
