//! IKE_AUTH with EAP, the responder's side (RFC 7296 2.16), for the connections the EAP
//! service names:
//!
//! 1. The initiator's first IKE_AUTH request has IDi but no AUTH (and SA, TSi, TSr, CP): we
//!    answer IDr, our certificate and AUTH (the connection's credential, as without EAP) and
//!    EAP-Request/Identity; the first request is kept, its SA, TS and CP are answered last.
//! 2. Each further request carries an EAP response: the Identity response begins the
//!    backend's conversation, the others continue it; the backend's request, Success or
//!    Failure goes back. A Failure ends the IKE SA (its reason in `DownReason::EapFailed`).
//!    While the backend waits for its server (RADIUS) the request stays unanswered: its
//!    retransmissions are dropped (`waiting_for`) until the result comes in (`resume`), then
//!    the one answer is sent and kept for retransmissions as any other.
//! 3. After EAP-Success the initiator sends AUTH computed with the MSK as the shared key
//!    (prf(prf(MSK, "Key Pad for IKEv2"), <InitiatorSignedOctets>)); if it verifies we answer
//!    our AUTH with the MSK over our signed octets, and the IKE SA and its first CHILD_SA come
//!    up as in `auth::complete`, with the EAP identity on the IKE SA.
//!
//! Owns: the EAP rounds of one IKE SA and their order.
//! Must never: pass a retransmitted request to the backend; bring an IKE SA up before the
//! AUTH from the MSK verified.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::PeerConfig;
use crate::crypto::{self, Secret};
use crate::eap::{self, EapServer, Packet, Step};
use crate::event::DownReason;
use crate::exchange::{auth, auth_hints, Ctx, Reply};
use crate::ike_sa::IkeSa;
use crate::services::auth::ct_eq;
use crate::services::auth::METHOD_PSK;
use crate::services::AuthError;
use crate::wire::{exchange, notify, payload, Id, Payload};

/// Where the EAP of one IKE SA is.
enum Stage {
    /// Our EAP-Request/Identity went out with this identifier.
    Identity { id: u8 },
    /// The backend has the conversation.
    Method,
    /// EAP succeeded: the MSK for the AUTH payloads, and who the peer is.
    Done { msk: Secret, identity: String },
}

/// A request that waits for the backend's server.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    message_id: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

/// The responder's EAP rounds of one IKE SA.
pub(crate) struct EapRound {
    cfg: Arc<PeerConfig>,
    idi: Id,
    /// The first IKE_AUTH request (its SA, TS and CP are answered in the last response).
    first: Vec<Payload>,
    stage: Stage,
    /// The identity the peer gave in EAP, once it did.
    identity: Option<String>,
    /// The backend said `Pending` to the request at hand.
    pending: bool,
    waiting: Option<Waiting>,
}

/// The connection's peers authenticate by EAP.
pub(crate) fn is_eap(ctx: &Ctx<'_>, c: &PeerConfig) -> bool {
    ctx.services
        .eap
        .as_ref()
        .is_some_and(|e| e.server.is_some() && e.connections.contains(&c.name))
}

fn failed() -> Reply {
    Ok(vec![Payload::notify(notify::AUTHENTICATION_FAILED, vec![])])
}

fn eap_payload(packet: Vec<u8>) -> Payload {
    Payload::Other {
        kind: payload::EAP,
        data: packet,
    }
}

fn find_eap(p: &[Payload]) -> Option<&[u8]> {
    p.iter().find_map(|x| match x {
        Payload::Other {
            kind: payload::EAP,
            data,
        } => Some(data.as_slice()),
        _ => None,
    })
}

/// The IKE_AUTH requests that are EAP's: `None` leaves the request to `auth`.
pub(crate) fn on_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Option<Reply> {
    ctx.services.eap.as_ref()?.server.as_ref()?;
    if let Some(round) = sa.pending.eap.take() {
        return Some(next_round(sa, ctx, round, p));
    }
    let idi = p.iter().find_map(|x| match x {
        Payload::IdI(i) => Some(i),
        _ => None,
    })?;
    let idr = p.iter().find_map(|x| match x {
        Payload::IdR(i) => Some(i),
        _ => None,
    });
    let has_auth = p.iter().any(|x| matches!(x, Payload::Auth { .. }));
    if has_auth {
        // Only an EAP connection fits: the peer must not skip EAP.
        if auth::choose_peer(ctx, sa, idi, idr, false).is_none()
            && auth::choose_peer(ctx, sa, idi, idr, true).is_some()
        {
            ctx.count_auth(AuthError::EapRequired);
        }
        return None;
    }
    let cfg = auth::choose_peer(ctx, sa, idi, idr, true)?.clone();
    let (_, certreqs) = auth_hints(p);
    let mut reply = match auth::our_auth(sa, ctx, &cfg, &certreqs) {
        Ok(r) => r,
        Err(e) => {
            if let Some(e) = e {
                ctx.count_auth(e);
            }
            return Some(failed());
        }
    };
    let id = ctx.nonce().first().copied().unwrap_or(0);
    reply.push(eap_payload(eap::packet(
        eap::code::REQUEST,
        id,
        &[&[eap::method::IDENTITY]],
    )));
    sa.pending.eap = Some(Box::new(EapRound {
        cfg,
        idi: idi.clone(),
        first: p.to_vec(),
        stage: Stage::Identity { id },
        identity: None,
        pending: false,
        waiting: None,
    }));
    Some(Ok(reply))
}

fn server<'a>(ctx: &'a mut Ctx<'_>) -> Option<&'a mut Box<dyn EapServer>> {
    ctx.services.eap.as_mut().and_then(|e| e.server.as_mut())
}

fn next_round(sa: &mut IkeSa, ctx: &mut Ctx<'_>, mut round: Box<EapRound>, p: &[Payload]) -> Reply {
    if let Some(auth) = p.iter().find_map(|x| match x {
        Payload::Auth { method, data } => Some((*method, data.clone())),
        _ => None,
    }) {
        return last_round(sa, ctx, round, auth);
    }
    let Some(data) = find_eap(p) else {
        return refuse(sa, ctx, &round, AuthError::EapMalformed, None);
    };
    let now = ctx.now;
    let ike = sa.id();
    let step = match &round.stage {
        Stage::Identity { id } => {
            let Some(pk) = Packet::parse(data).filter(|pk| {
                pk.code == eap::code::RESPONSE
                    && pk.id == *id
                    && pk.kind() == Some(eap::method::IDENTITY)
            }) else {
                return refuse(sa, ctx, &round, AuthError::EapMalformed, None);
            };
            let given = pk.type_data();
            let given = given.get(..eap::MAX_IDENTITY).unwrap_or(given);
            let identity = if given.is_empty() {
                round.idi.display()
            } else {
                String::from_utf8_lossy(given).into_owned()
            };
            round.identity = Some(identity.clone());
            round.stage = Stage::Method;
            let Ctx { rng, services, .. } = ctx;
            match services.eap.as_mut().and_then(|e| e.server.as_mut()) {
                Some(s) => s.begin(now, ike, &identity, data, &mut **rng),
                None => return failed(),
            }
        }
        Stage::Method => {
            let Ctx { rng, services, .. } = ctx;
            match services.eap.as_mut().and_then(|e| e.server.as_mut()) {
                Some(s) => s.respond(now, ike, data, &mut **rng),
                None => return failed(),
            }
        }
        Stage::Done { .. } => {
            return refuse(sa, ctx, &round, AuthError::EapMalformed, None);
        }
    };
    on_step(sa, ctx, round, step)
}

/// What the backend said, as the answer to the peer.
fn on_step(sa: &mut IkeSa, ctx: &mut Ctx<'_>, mut round: Box<EapRound>, step: Step) -> Reply {
    match step {
        Step::Request(packet) => {
            sa.pending.eap = Some(round);
            Ok(vec![eap_payload(packet)])
        }
        Step::Pending => {
            round.pending = true;
            sa.pending.eap = Some(round);
            Ok(vec![])
        }
        Step::Success {
            msk,
            identity,
            packet,
        } => {
            if msk.is_empty() {
                return refuse(sa, ctx, &round, AuthError::EapNoMsk, None);
            }
            round.identity = Some(identity.clone());
            round.stage = Stage::Done { msk, identity };
            sa.pending.eap = Some(round);
            Ok(vec![eap_payload(packet)])
        }
        Step::Failure { why, packet } => refuse(sa, ctx, &round, why, Some(packet)),
    }
}

/// The peer is refused for `why`: counted, the IKE SA ends with the reason, the peer gets
/// EAP-Failure (or, outside EAP, AUTHENTICATION_FAILED).
fn refuse(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    round: &EapRound,
    why: AuthError,
    packet: Option<Vec<u8>>,
) -> Reply {
    ctx.count_auth(why);
    if let Some(s) = server(ctx) {
        s.forget(sa.id());
    }
    sa.close(
        ctx,
        DownReason::EapFailed {
            identity: round.identity.clone(),
            why,
        },
    );
    match packet {
        Some(p) => Ok(vec![eap_payload(p)]),
        None => failed(),
    }
}

/// The AUTH from the MSK (RFC 7296 2.16): checked, ours made, the IKE SA comes up.
fn last_round(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    round: Box<EapRound>,
    (method, data): (u8, Vec<u8>),
) -> Reply {
    let Stage::Done { msk, identity } = &round.stage else {
        return refuse(sa, ctx, &round, AuthError::EapMalformed, None);
    };
    let ours = {
        let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref()) else {
            return failed();
        };
        let theirs = crypto::psk_auth(
            keys.prf,
            msk,
            &hs.init_request,
            &hs.nr,
            &keys.sk_pi,
            &round.idi.body(),
        );
        if method != METHOD_PSK || !ct_eq(&theirs, &data) {
            None
        } else {
            Some(crypto::psk_auth(
                keys.prf,
                msk,
                &hs.init_response,
                &hs.ni,
                &keys.sk_pr,
                &round.cfg.local_id.body(),
            ))
        }
    };
    let Some(ours) = ours else {
        return refuse(sa, ctx, &round, AuthError::EapAuthMismatch, None);
    };
    sa.state.eap_identity = Some(identity.clone());
    let reply = vec![Payload::Auth {
        method: METHOD_PSK,
        data: ours.to_vec(),
    }];
    auth::complete(sa, ctx, round.cfg.clone(), &round.idi, &round.first, reply)
}

/// Request `message_id` waits for the backend's server.
pub(crate) fn waiting_for(sa: &IkeSa, message_id: u32) -> bool {
    sa.pending
        .eap
        .as_ref()
        .and_then(|r| r.waiting)
        .is_some_and(|w| w.message_id == message_id)
}

/// After an IKE_AUTH request: if the backend said `Pending`, the request waits (no answer
/// now) and `true`.
pub(crate) fn defer(
    sa: &mut IkeSa,
    message_id: u32,
    local: SocketAddr,
    remote: SocketAddr,
) -> bool {
    match sa.pending.eap.as_mut() {
        Some(r) if r.pending && r.waiting.is_none() => {
            r.waiting = Some(Waiting {
                message_id,
                local,
                remote,
            });
            true
        }
        _ => false,
    }
}

/// The backend's result for the request that waits: answered now.
pub(crate) fn resume(sa: &mut IkeSa, ctx: &mut Ctx<'_>, step: Step) {
    let Some(mut round) = sa.pending.eap.take() else {
        return;
    };
    let Some(w) = round.waiting.take().filter(|_| round.pending) else {
        sa.pending.eap = Some(round);
        return;
    };
    round.pending = false;
    let reply = on_step(sa, ctx, round, step);
    if defer(sa, w.message_id, w.local, w.remote) {
        return;
    }
    super::answer(
        sa,
        ctx,
        w.local,
        w.remote,
        exchange::IKE_AUTH,
        w.message_id,
        reply,
    );
}

// ---- the initiator (an EAP peer) -----------------------------------------------------------

/// The initiator's EAP rounds: the responder is verified once (its first response), then
/// each EAP request is answered; after EAP-Success our AUTH from the MSK goes out and the
/// last response must carry the responder's.
pub(crate) struct EapClientRound {
    client: eap::mschapv2::Client,
    /// The responder's identity, once its AUTH (certificate) verified.
    idr: Option<Id>,
    msk: Option<Secret>,
}

/// Our IKE_AUTH request is an EAP peer's (no AUTH) if the connection is one of the EAP
/// service's clients; its round begins.
pub(crate) fn client_begin(sa: &mut IkeSa, ctx: &mut Ctx<'_>, cfg: &PeerConfig) -> bool {
    let Some((user, hash)) = ctx
        .services
        .eap
        .as_ref()
        .and_then(|e| e.clients.get(&cfg.name))
    else {
        return false;
    };
    sa.pending.eap_client = Some(Box::new(EapClientRound {
        client: eap::mschapv2::Client::new(user, hash.clone()),
        idr: None,
        msk: None,
    }));
    true
}

/// A response to our IKE_AUTH request while our EAP rounds go on: `true` if handled here.
pub(crate) fn client_on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    child_spi: crate::ids::ChildSpi,
    p: &[Payload],
) -> bool {
    let Some(mut round) = sa.pending.eap_client.take() else {
        return false;
    };
    let Some(cfg) = sa.state.peer.clone() else {
        return true;
    };
    let fail = |sa: &mut IkeSa, ctx: &mut Ctx<'_>, reason: DownReason| {
        ctx.services.spis.release_child(child_spi);
        sa.close(ctx, reason);
        true
    };
    if super::find_notify(p, notify::AUTHENTICATION_FAILED).is_some() {
        return fail(sa, ctx, DownReason::AuthFailed);
    }
    if round.idr.is_none() {
        let (Some(idr), Some(auth)) = (auth::find_idr(p), auth::find_auth(p)) else {
            return fail(sa, ctx, DownReason::AuthFailed);
        };
        if let Err(e) = auth::verify_responder(sa, ctx, &cfg, idr, &auth, p) {
            if let Some(e) = e {
                ctx.count_auth(e);
            }
            return fail(sa, ctx, DownReason::AuthFailed);
        }
        round.idr = Some(idr.clone());
    }
    let Some(idr) = round.idr.clone() else {
        return true;
    };
    if let Some(msk) = round.msk.as_ref() {
        // The last response: the responder's AUTH from the MSK, then the IKE SA is up.
        let ok = auth::find_auth(p).is_some_and(|a| {
            let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref())
            else {
                return false;
            };
            let want = crypto::psk_auth(
                keys.prf,
                msk,
                &hs.init_response,
                &hs.ni,
                &keys.sk_pr,
                &idr.body(),
            );
            a.method == METHOD_PSK && ct_eq(&want, &a.data)
        });
        if !ok {
            ctx.count_auth(AuthError::EapAuthMismatch);
            return fail(sa, ctx, DownReason::AuthFailed);
        }
        sa.state.eap_identity = Some(round.client.user.clone());
        auth::complete_initiator(sa, ctx, cfg, child_spi, &idr, p);
        return true;
    }
    let Some(pk) = find_eap(p).and_then(Packet::parse) else {
        ctx.count_auth(AuthError::EapMalformed);
        return fail(sa, ctx, DownReason::AuthFailed);
    };
    let next = match pk.code {
        eap::code::SUCCESS => {
            let Some(msk) = round.client.take_msk() else {
                ctx.count_auth(AuthError::EapNoMsk);
                return fail(sa, ctx, DownReason::AuthFailed);
            };
            let data = {
                let (Some(keys), Some(hs)) =
                    (sa.state.keys.as_ref(), sa.pending.handshake.as_ref())
                else {
                    return true;
                };
                crypto::psk_auth(
                    keys.prf,
                    &msk,
                    &hs.init_request,
                    &hs.nr,
                    &keys.sk_pi,
                    &cfg.local_id.body(),
                )
            };
            round.msk = Some(msk);
            Payload::Auth {
                method: METHOD_PSK,
                data: data.to_vec(),
            }
        }
        eap::code::REQUEST => match round.client.answer(pk_bytes(p), &mut *ctx.rng) {
            Some(a) => eap_payload(a),
            None => {
                ctx.count_auth(AuthError::EapMalformed);
                return fail(sa, ctx, DownReason::AuthFailed);
            }
        },
        // EAP-Failure: the responder refused us (it knows why).
        _ => return fail(sa, ctx, DownReason::AuthFailed),
    };
    sa.pending.eap_client = Some(round);
    super::send_request(
        sa,
        ctx,
        exchange::IKE_AUTH,
        &[next],
        super::Request::Auth { child_spi },
    );
    true
}

fn pk_bytes(p: &[Payload]) -> &[u8] {
    find_eap(p).unwrap_or(&[])
}
