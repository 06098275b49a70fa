//! IKE_SA_INIT (RFC 7296 1.2): proposals, Diffie-Hellman, nonces, NAT detection (2.23), on
//! both ends; the initiator's retries on INVALID_KE_PAYLOAD and COOKIE (2.6).
//!
//! The responder's checks, in order: the initiator SPI is not zero and the message id is 0
//! (else dropped: there is nothing valid to answer), the payloads parse (else INVALID_SYNTAX,
//! or UNSUPPORTED_CRITICAL_PAYLOAD for an unknown critical one), SA, KE and Ni are there and
//! the IKE proposals carry no SPI (else INVALID_SYNTAX); then the admission point (below); then
//! a proposal matches (else NO_PROPOSAL_CHOSEN), the KE group is the chosen one (else
//! INVALID_KE_PAYLOAD), the KE value is valid (else INVALID_SYNTAX). The error answers are
//! unprotected and rate-limited.
//!
//! Admission (RFC 7296 2.6, RFC 8019), before any state or Diffie-Hellman work: a COOKIE in
//! the request is checked (counted valid or invalid; one that does not check is ignored, as
//! 2.6 says). With `cookie_threshold` or more half-open IKE SAs, a request without a valid
//! cookie is answered with one (`HDR(A,0), N(COOKIE)`) and forgotten. Then the caps: with
//! `half_open_max` half-open IKE SAs, or `half_open_per_source` from the request's source, the
//! request is dropped, counted: RFC 7296 has no "busy" answer for IKE_SA_INIT, and the
//! initiator's retransmission comes back when a half-open IKE SA is done or expired. A
//! cookie is bound to Ni, IPi and SPIi, not to KEi, so the initiator may keep it across an
//! INVALID_KE_PAYLOAD retry (2.6.1's shorter exchange).
//!
//! The initiator echoes a COOKIE as the first payload of the same request (same SPI, nonce
//! and other payloads), and keeps it for an INVALID_KE_PAYLOAD retry; a responder that asks
//! again gets the new cookie, at most `MAX_COOKIE_RETRIES` times in a row.
//! RFC 7296 3.10.1 reserves INVALID_SYNTAX for protected messages; strongSwan and libreswan
//! answer a malformed IKE_SA_INIT with it all the same, and so do we: the answer is shorter
//! than the request, creates no state, and tells a broken initiator at once instead of after
//! its retransmissions run out.
//!
//! Owns: the IKE_SA_INIT messages and the keys they lead to.
//! Must never: create state for an IKE_SA_INIT request before it passed the admission point
//! (where a cookie check belongs) and every check above.

use std::net::SocketAddr;

use crate::config::PeerConfig;
use crate::cookie::CookieSecrets;
use crate::crypto::{DhPrivate, IkeKeys};
use crate::event::DownReason;
use crate::exchange::{
    auth, auth_hints, error_answer, find_ke, find_nonce, find_notify, find_sa, first_error,
    nat_detected, nat_notifies, plain_message, Ctx, Outstanding, Request,
};
use crate::half_open::HalfOpen;
use crate::ids::{IkeSaId, IkeSpi};
use crate::ike_sa::{IkeSa, Phase, Role};
use crate::proposal::{ike_payload, select_ike, IkeProposal};
use crate::stats::Reason;
use crate::timer::Timer;
use crate::wire::{self, exchange, notify, proto, Header, Payload, Proposal, WireError};

/// Sends (or sends again, after a COOKIE or INVALID_KE_PAYLOAD) our IKE_SA_INIT request.
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let Some(cfg) = sa.state.peer.clone() else {
        return;
    };
    let (spi_i, local, remote) = (sa.state.spi_i, sa.state.local, sa.state.remote);
    let hs = sa.handshake();
    let Some(dh) = hs.dh.as_ref() else {
        return;
    };
    let mut p = Vec::with_capacity(6);
    if let Some(c) = &hs.cookie {
        p.push(Payload::notify(notify::COOKIE, c.clone()));
    }
    p.push(Payload::Sa(ike_payload(&cfg.ike_proposals, &[])));
    p.push(Payload::Ke {
        group: dh.group().id(),
        data: dh.public().to_vec(),
    });
    p.push(Payload::Nonce(hs.ni.clone()));
    p.extend(nat_notifies(spi_i, IkeSpi::ZERO, local, remote));
    p.extend(ctx.services.auth.init_payloads(&[cfg.as_ref()], false));
    if ctx.config.fragmentation.enabled {
        p.push(Payload::notify(
            notify::IKEV2_FRAGMENTATION_SUPPORTED,
            vec![],
        ));
    }
    let data = plain_message(
        spi_i,
        IkeSpi::ZERO,
        exchange::IKE_SA_INIT,
        wire::FLAG_INITIATOR,
        0,
        &p,
    );
    hs.init_request = data.clone();
    sa.state.next_request_id = 1;
    sa.state.phase = Phase::Init;
    sa.pending.outstanding = Some(Outstanding {
        id: 0,
        data: data.clone(),
        request: Request::Init,
        tries: 0,
        hint: None,
    });
    sa.timers.set(
        Timer::Retransmit,
        Some(ctx.now.saturating_add(ctx.config.retransmit.timeout)),
    );
    ctx.send(local, remote, data);
}

/// How many COOKIE answers in a row the initiator follows before it gives up on a responder.
const MAX_COOKIE_RETRIES: u8 = 4;

/// Answers an IKE_SA_INIT request from `remote` (not a retransmission of one we answered):
/// the new half-open IKE SA, or `None` when the request was refused, answered with a COOKIE
/// or with an error.
pub(crate) fn respond(
    ctx: &mut Ctx<'_>,
    cookies: &mut CookieSecrets,
    half_open: &HalfOpen,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    msg: &[u8],
) -> Option<IkeSa> {
    let spi_i = IkeSpi(h.spi_i);
    if spi_i.is_zero() {
        ctx.count(Reason::InitZeroSpi);
        return None;
    }
    if h.message_id != 0 {
        ctx.count(Reason::InitMessageId);
        return None;
    }
    let chain = match wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload) {
        Ok(c) if c.sk.is_none() => c,
        Ok(_) => return refuse(ctx, local, remote, h, Reason::InitMalformed),
        Err(WireError::UnsupportedCritical(t)) => {
            let data = error_answer(h, notify::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t]);
            ctx.answer_unprotected(Reason::UnsupportedCritical, local, remote, data);
            return None;
        }
        Err(_) => return refuse(ctx, local, remote, h, Reason::InitMalformed),
    };
    let p = &chain.payloads;
    let (Some(props), Some((group, ke)), Some(ni)) = (find_sa(p), find_ke(p), find_nonce(p)) else {
        return refuse(ctx, local, remote, h, Reason::InitMissingPayload);
    };
    if props
        .iter()
        .any(|x| x.protocol == proto::IKE && !x.spi.is_empty())
    {
        // RFC 7296 3.3.1: an IKE proposal in IKE_SA_INIT has SPI size 0.
        return refuse(ctx, local, remote, h, Reason::InitProposalSpi);
    }
    if !admit(ctx, cookies, half_open, local, remote, spi_i, p, ni) {
        return None;
    }
    // The union of our connections' proposals, in our order of preference.
    let ours: Vec<IkeProposal> = ctx
        .peers
        .iter()
        .flat_map(|c| c.ike_proposals.iter().copied())
        .collect();
    let Some((num, prop)) = select_ike(props, &ours) else {
        let data = plain_init_answer(spi_i, notify::NO_PROPOSAL_CHOSEN, vec![]);
        ctx.send(local, remote, data);
        return None;
    };
    if group != prop.dh.id() {
        let data = plain_init_answer(
            spi_i,
            notify::INVALID_KE_PAYLOAD,
            prop.dh.id().to_be_bytes().to_vec(),
        );
        ctx.send(local, remote, data);
        return None;
    }
    let dh = DhPrivate::generate(prop.dh, ctx.rng);
    let Ok(shared) = dh.shared(ke) else {
        return refuse(ctx, local, remote, h, Reason::InitKeyExchange);
    };
    let spi_r = ctx.ike_spi();
    let nr = ctx.nonce();
    let mut sa = IkeSa::new(
        IkeSaId(spi_r),
        Role::Responder,
        spi_i,
        spi_r,
        local,
        remote,
        prop,
        ctx.now,
    );
    sa.set_nat(nat_detected(p, spi_i, IkeSpi::ZERO, local, remote));
    sa.install_keys(IkeKeys::derive(
        prop.prf,
        None,
        &shared,
        ni,
        &nr,
        spi_i.0,
        spi_r.0,
        prop.encr_len(),
        prop.integ_len(),
    ));
    let mut reply = vec![
        Payload::Sa(vec![Proposal {
            num,
            protocol: proto::IKE,
            spi: vec![],
            transforms: prop.transforms(),
        }]),
        Payload::Ke {
            group: prop.dh.id(),
            data: dh.public().to_vec(),
        },
        Payload::Nonce(nr.clone()),
    ];
    reply.extend(nat_notifies(spi_i, spi_r, local, remote));
    let peers: Vec<&PeerConfig> = ctx.peers.iter().map(|c| c.as_ref()).collect();
    reply.extend(ctx.services.auth.init_payloads(&peers, true));
    // RFC 7383 2.3: announced back only to an initiator that announced it.
    let fragmentation = ctx.config.fragmentation.enabled
        && find_notify(p, notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
    if fragmentation {
        reply.push(Payload::notify(
            notify::IKEV2_FRAGMENTATION_SUPPORTED,
            vec![],
        ));
    }
    sa.state.fragmentation = fragmentation;
    // RFC 5685 3: the client follows a REDIRECT (the gateway answers nothing to it here; a
    // REDIRECT may come later inside the IKE SA, section 5). A client that was redirected
    // sends REDIRECTED_FROM instead of REDIRECT_SUPPORTED (section 5; strongSwan does): it
    // follows the next REDIRECT as well.
    let redirected_from = find_notify(p, notify::REDIRECTED_FROM).is_some();
    sa.state.redirect = redirected_from || find_notify(p, notify::REDIRECT_SUPPORTED).is_some();
    let (peer_hashes, _) = auth_hints(p);
    let data = plain_message(
        spi_i,
        spi_r,
        exchange::IKE_SA_INIT,
        wire::FLAG_RESPONSE,
        0,
        &reply,
    );
    let hs = sa.handshake();
    hs.ni = ni.to_vec();
    hs.nr = nr;
    hs.init_request = msg.to_vec();
    hs.init_response = data.clone();
    hs.peer_hashes = peer_hashes;
    hs.redirected_from = redirected_from;
    sa.state.peer_next_id = 1;
    sa.state.phase = Phase::Init;
    sa.pending.half_open = Some((spi_i, remote));
    sa.timers.set(
        Timer::HalfOpen,
        Some(ctx.now.saturating_add(ctx.config.half_open_timeout)),
    );
    ctx.send(local, remote, data);
    Some(sa)
}

/// The admission point (module doc): true if the request may go on to cost us state and a
/// Diffie-Hellman computation.
#[allow(clippy::too_many_arguments)]
fn admit(
    ctx: &mut Ctx<'_>,
    cookies: &mut CookieSecrets,
    half_open: &HalfOpen,
    local: SocketAddr,
    remote: SocketAddr,
    spi_i: IkeSpi,
    p: &[Payload],
    ni: &[u8],
) -> bool {
    let a = ctx.config.admission;
    let life = (a.cookie_secret_lifetime, a.cookie_grace);
    let offered = find_notify(p, notify::COOKIE);
    let valid = offered.is_some_and(|c| cookies.check(ctx.now, life, c, ni, remote.ip(), spi_i));
    match (offered.is_some(), valid) {
        (true, true) => ctx.stats.cookies.valid = ctx.stats.cookies.valid.saturating_add(1),
        (true, false) => ctx.stats.cookies.invalid = ctx.stats.cookies.invalid.saturating_add(1),
        _ => {}
    }
    let busy = u32::try_from(half_open.len()).unwrap_or(u32::MAX);
    if busy >= a.cookie_threshold && !valid {
        ctx.count(if offered.is_some() {
            Reason::InitCookieInvalid
        } else {
            Reason::InitCookieMissing
        });
        let cookie = cookies.make(ctx.now, life, ni, remote.ip(), spi_i);
        ctx.stats.cookies.sent = ctx.stats.cookies.sent.saturating_add(1);
        ctx.send(
            local,
            remote,
            plain_init_answer(spi_i, notify::COOKIE, cookie),
        );
        return false;
    }
    if busy >= a.half_open_max {
        ctx.count(Reason::InitHalfOpenTotal);
        return false;
    }
    if half_open.of_source(remote.ip()) >= a.half_open_per_source {
        ctx.count(Reason::InitHalfOpenSource);
        return false;
    }
    if half_open.get(&(spi_i, remote)).is_some() {
        ctx.count(Reason::InitSpiInUse);
        return false;
    }
    true
}

/// Counts `reason` and answers INVALID_SYNTAX, unprotected.
fn refuse(
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    reason: Reason,
) -> Option<IkeSa> {
    let data = error_answer(h, notify::INVALID_SYNTAX, vec![]);
    ctx.answer_unprotected(reason, local, remote, data);
    None
}

/// A negotiation answer to IKE_SA_INIT (no responder SPI: no state was made).
fn plain_init_answer(spi_i: IkeSpi, kind: u16, data: Vec<u8>) -> Vec<u8> {
    plain_message(
        spi_i,
        IkeSpi::ZERO,
        exchange::IKE_SA_INIT,
        wire::FLAG_RESPONSE,
        0,
        &[Payload::notify(kind, data)],
    )
}

/// The responder's answer to our IKE_SA_INIT: keys, or a retry (COOKIE, INVALID_KE_PAYLOAD),
/// or the end; then IKE_AUTH.
pub(crate) fn on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    msg: &[u8],
) {
    let p = match wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload) {
        Ok(c) if c.sk.is_none() => c.payloads,
        _ => {
            ctx.count(Reason::ResponseMalformed);
            return;
        }
    };
    let Some(cfg) = sa.state.peer.clone() else {
        return;
    };
    if let Some(c) = find_notify(&p, notify::COOKIE) {
        // RFC 7296 2.6: retry with the cookie as the first payload, the rest unchanged (the
        // same SPI and nonce: the cookie is bound to them). 3.10.1: 1 to 64 bytes.
        // A responder that keeps asking (or someone on the path answering for it) is ignored:
        // our request is retransmitted with the last cookie and times out if nothing better
        // comes.
        let hs = sa.handshake();
        if c.is_empty() || c.len() > 64 || hs.cookie_retries >= MAX_COOKIE_RETRIES {
            ctx.count(Reason::ResponseMalformed);
            return;
        }
        hs.cookie_retries = hs.cookie_retries.saturating_add(1);
        hs.cookie = Some(c.to_vec());
        start(sa, ctx);
        return;
    }
    if let Some(g) = find_notify(&p, notify::INVALID_KE_PAYLOAD) {
        let want = g
            .get(..2)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(u16::from_be_bytes);
        let have = sa.handshake().dh.as_ref().map(DhPrivate::group);
        if let Some(prop) = cfg
            .ike_proposals
            .iter()
            .find(|pp| Some(pp.dh.id()) == want)
            .copied()
        {
            if Some(prop.dh) != have {
                sa.state.prop = prop;
                sa.handshake().dh = Some(DhPrivate::generate(prop.dh, ctx.rng));
                start(sa, ctx);
                return;
            }
        }
        sa.close(ctx, DownReason::NoProposal);
        return;
    }
    if first_error(&p).is_some() {
        sa.close(ctx, DownReason::NoProposal);
        return;
    }
    let (Some(props), Some((group, ke)), Some(nr)) = (find_sa(&p), find_ke(&p), find_nonce(&p))
    else {
        ctx.count(Reason::ResponseMalformed);
        return;
    };
    let Some((_, prop)) = select_ike(props, &cfg.ike_proposals) else {
        sa.close(ctx, DownReason::NoProposal);
        return;
    };
    let spi_r = IkeSpi(h.spi_r);
    let spi_i = sa.state.spi_i;
    let hs = sa.handshake();
    let Some(dh) = hs.dh.as_ref() else {
        return;
    };
    if group != dh.group().id() || prop.dh != dh.group() {
        sa.close(ctx, DownReason::NoProposal);
        return;
    }
    let Ok(shared) = dh.shared(ke) else {
        ctx.count(Reason::ResponseMalformed);
        return;
    };
    let keys = IkeKeys::derive(
        prop.prf,
        None,
        &shared,
        &hs.ni,
        nr,
        spi_i.0,
        spi_r.0,
        prop.encr_len(),
        prop.integ_len(),
    );
    hs.dh = None;
    hs.nr = nr.to_vec();
    hs.init_response = msg.to_vec();
    (hs.peer_hashes, hs.certreqs) = auth_hints(&p);
    sa.state.spi_r = spi_r;
    sa.state.prop = prop;
    sa.state.fragmentation = ctx.config.fragmentation.enabled
        && find_notify(&p, notify::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
    sa.set_nat(nat_detected(&p, spi_i, spi_r, local, remote));
    sa.install_keys(keys);
    sa.pending.outstanding = None;
    sa.timers.set(Timer::Retransmit, None);
    sa.pending.last_heard = ctx.now;
    // Float to 4500 for IKE_AUTH when a NAT sits between us (RFC 7296 2.23), and always for a
    // road warrior (it asks for a virtual IP): it may roam behind a NAT later (MOBIKE), as
    // strongSwan floats whenever MOBIKE is on.
    if (sa.state.nat || cfg.request_vip) && sa.state.remote.port() == 500 {
        sa.state.remote.set_port(4500);
        sa.state.local.set_port(4500);
    }
    auth::start(sa, ctx);
}
