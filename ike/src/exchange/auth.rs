//! IKE_AUTH (RFC 7296 1.2, 2.15): identities and AUTH (made and checked by the authenticator
//! service, which may add payloads of its own), the first CHILD_SA with traffic-selector
//! narrowing (2.9), a virtual IP from the address pool (CP, 3.15), MOBIKE_SUPPORTED (RFC 4555
//! 3.1).
//!
//! A responder that cannot authenticate the peer (no IDi or AUTH, no connection for it, AUTH
//! does not verify) answers AUTHENTICATION_FAILED (2.21.2) and the half-open IKE SA goes.
//!
//! Owns: the IKE_AUTH messages; choosing the connection of a responder's IKE SA.
//! Must never: look at a credential (the authenticator does); report an IKE SA up before the
//! peer's AUTH verified.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::PeerConfig;
use crate::crypto;
use crate::event::{DownReason, Event};
use crate::exchange::{
    auth_hints, find_notify, find_sa, find_tsi, find_tsr, send_request, Ctx, Effect, Reply, Request,
};
use crate::ids::ChildSpi;
use crate::ike_sa::{ChildKeys, IkeSa, Phase};
use crate::proposal::{esp_payload, esp_proposal, select_esp, EspProposal};
use crate::services::{Auth, AuthContext, AuthInput};
use crate::ts::{any_v4, host_ts, narrow};
use crate::wire::{cfg, exchange, notify, CfgAttr, Id, Payload, TrafficSelector};

/// Our IKE_AUTH request with the first CHILD_SA (the initiator, after IKE_SA_INIT).
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let Some(cfg) = sa.state.peer.clone() else {
        return;
    };
    let idi = cfg.local_id.clone();
    let unix_time = ctx.unix_time();
    let signed = {
        let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref()) else {
            return;
        };
        let input = AuthInput {
            prf: keys.prf,
            message: &hs.init_request,
            nonce: &hs.nr,
            sk_p: &keys.sk_pi,
            id: &idi,
        };
        let actx = AuthContext {
            unix_time,
            peer_hashes: &hs.peer_hashes,
            certreqs: &hs.certreqs,
        };
        // An EAP peer signs nothing: its AUTH comes from the MSK, after EAP (RFC 7296 2.16).
        let eap = ctx
            .services
            .eap
            .as_ref()
            .is_some_and(|e| e.clients.contains_key(&cfg.name));
        let auth = if eap {
            Ok(None)
        } else {
            ctx.services.auth.sign(&cfg, &input, &actx).map(Some)
        };
        auth.map(|a| (a, ctx.services.auth.extra_payloads(&cfg, &actx)))
    };
    let (auth, extra) = match signed {
        Ok(x) => x,
        Err(e) => {
            ctx.count_auth(e);
            sa.close(ctx, DownReason::AuthFailed);
            return;
        }
    };
    // A connection that joins a group registers in GSA_AUTH instead (RFC 9838 2.3.1).
    if let Some(group) = ctx.group.joins.get(&cfg.name).cloned() {
        super::group::start_gsa_auth(sa, ctx, &cfg, (idi, extra, auth), group);
        return;
    }
    // An EAP peer sends no AUTH in its first request (RFC 7296 2.16); its rounds begin.
    let eap = super::eap_auth::client_begin(sa, ctx, &cfg);
    let auth = auth.filter(|_| !eap);
    let child_spi = ctx.child_spi();
    let mut inner = vec![Payload::IdI(idi)];
    inner.extend(extra);
    inner.push(Payload::notify(notify::INITIAL_CONTACT, vec![]));
    if let Some(r) = &cfg.remote_id {
        inner.push(Payload::IdR(r.clone()));
    }
    if let Some(auth) = auth {
        inner.push(Payload::Auth {
            method: auth.method,
            data: auth.data,
        });
    }
    if cfg.request_vip {
        inner.push(Payload::Cp {
            kind: cfg::REQUEST,
            attrs: vec![CfgAttr {
                kind: cfg::INTERNAL_IP4_ADDRESS,
                value: vec![],
            }],
        });
    }
    inner.push(Payload::Sa(esp_payload(&cfg.esp_proposals, child_spi)));
    let local_ts = if cfg.request_vip {
        vec![any_v4()]
    } else {
        cfg.local_ts.clone()
    };
    inner.push(Payload::TsI(local_ts));
    inner.push(Payload::TsR(cfg.remote_ts.clone()));
    inner.push(Payload::notify(notify::MOBIKE_SUPPORTED, vec![]));
    if ctx.config.mid_sync {
        inner.push(Payload::notify(
            notify::IKEV2_MESSAGE_ID_SYNC_SUPPORTED,
            vec![],
        ));
    }
    inner.push(Payload::notify(
        notify::ROAMGATE_GATEWAY_MOVE_SUPPORTED,
        vec![],
    ));
    if ctx.config.per_core_sas > 1 {
        // RFC 9611: this first CHILD_SA is the first of one per worker. A client that asks
        // for a virtual IP too: its workers masquerade its LAN to that address each from its
        // own share of the ports, and an answer the gateway sends on another worker's SA is
        // handed to the worker its port names after decryption (`pipeline::nat::port_owner`).
        inner.push(Payload::notify(notify::SA_RESOURCE_INFO, vec![]));
    }
    sa.state.phase = Phase::Auth;
    send_request(
        sa,
        ctx,
        exchange::IKE_AUTH,
        &inner,
        Request::Auth { child_spi },
    );
}

pub(crate) fn find_idi(p: &[Payload]) -> Option<&Id> {
    p.iter().find_map(|x| match x {
        Payload::IdI(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn find_idr(p: &[Payload]) -> Option<&Id> {
    p.iter().find_map(|x| match x {
        Payload::IdR(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn find_auth(p: &[Payload]) -> Option<Auth> {
    p.iter().find_map(|x| match x {
        Payload::Auth { method, data } => Some(Auth {
            method: *method,
            data: data.clone(),
        }),
        _ => None,
    })
}

/// The responder's IKE_AUTH answer (the initiator's side).
pub(crate) fn on_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, child_spi: ChildSpi, p: &[Payload]) {
    if super::eap_auth::client_on_response(sa, ctx, child_spi, p) {
        return;
    }
    let Some(cfg) = sa.state.peer.clone() else {
        return;
    };
    let fail = |sa: &mut IkeSa, ctx: &mut Ctx<'_>| {
        ctx.services.spis.release_child(child_spi);
        sa.close(ctx, DownReason::AuthFailed);
    };
    if find_notify(p, notify::AUTHENTICATION_FAILED).is_some() {
        return fail(sa, ctx);
    }
    let (Some(idr), Some(auth)) = (find_idr(p), find_auth(p)) else {
        return fail(sa, ctx);
    };
    if let Err(e) = verify_responder(sa, ctx, &cfg, idr, &auth, p) {
        if let Some(e) = e {
            ctx.count_auth(e);
        }
        return fail(sa, ctx);
    }
    let idr = idr.clone();
    complete_initiator(sa, ctx, cfg, child_spi, &idr, p);
}

/// Checks the responder's identity and AUTH (its connection's credential); `Err(None)`: the
/// identity is not the one we want, or the handshake's keys are gone.
pub(crate) fn verify_responder(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: &PeerConfig,
    idr: &Id,
    auth: &Auth,
    p: &[Payload],
) -> Result<(), Option<crate::services::AuthError>> {
    if cfg.remote_id.as_ref().is_some_and(|r| r != idr) {
        return Err(None);
    }
    let unix_time = ctx.unix_time();
    let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref()) else {
        return Err(None);
    };
    let input = AuthInput {
        prf: keys.prf,
        message: &hs.init_response,
        nonce: &hs.ni,
        sk_p: &keys.sk_pr,
        id: idr,
    };
    let actx = AuthContext {
        unix_time,
        peer_hashes: &hs.peer_hashes,
        certreqs: &hs.certreqs,
    };
    ctx.services
        .auth
        .verify(cfg, &input, auth, p, &actx)
        .map_err(Some)
}

/// The responder `idr` is authenticated: the IKE SA comes up, with the virtual IP and the
/// first CHILD_SA the response `p` carries.
pub(crate) fn complete_initiator(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: std::sync::Arc<PeerConfig>,
    child_spi: ChildSpi,
    idr: &Id,
    p: &[Payload],
) {
    let (ni, nr) = match sa.pending.handshake.as_ref() {
        Some(hs) => (hs.ni.clone(), hs.nr.clone()),
        None => return,
    };
    sa.state.mobike = find_notify(p, notify::MOBIKE_SUPPORTED).is_some();
    sa.state.mid_sync =
        ctx.config.mid_sync && find_notify(p, notify::IKEV2_MESSAGE_ID_SYNC_SUPPORTED).is_some();
    sa.state.gateway_move = find_notify(p, notify::ROAMGATE_GATEWAY_MOVE_SUPPORTED).is_some();
    sa.state.per_core =
        ctx.config.per_core_sas > 1 && find_notify(p, notify::SA_RESOURCE_INFO).is_some();
    sa.state.virtual_ip = p.iter().find_map(|x| match x {
        Payload::Cp {
            kind: cfg::REPLY,
            attrs,
        } => attrs
            .iter()
            .find(|a| a.kind == cfg::INTERNAL_IP4_ADDRESS)
            .and_then(|a| {
                <[u8; 4]>::try_from(a.value.get(..4)?)
                    .ok()
                    .map(|b| IpAddr::from(Ipv4Addr::from(b)))
            }),
        _ => None,
    });
    sa.state.remote_id = Some(idr.clone());
    sa.establish(ctx.now);
    ctx.stats.handshakes.completed = ctx.stats.handshakes.completed.saturating_add(1);
    ctx.event(Event::IkeUp {
        ike: sa.id(),
        peer: cfg.name.clone(),
        remote_id: idr.display(),
        local: sa.state.local,
        remote: sa.state.remote,
        virtual_ip: sa.state.virtual_ip,
        virtual_ip_is_ours: true,
    });
    // The first CHILD_SA (or the reason there is none).
    let chosen = match (find_sa(p), find_tsi(p), find_tsr(p)) {
        (Some(props), Some(tsi), Some(tsr)) => {
            select_esp(props, &cfg.esp_proposals).map(|c| (c, tsi, tsr))
        }
        _ => None,
    };
    let Some(((_, esp, spi_out), tsi, tsr)) = chosen else {
        ctx.services.spis.release_child(child_spi);
        return;
    };
    let Some(keys) = sa.state.keys.as_ref() else {
        return;
    };
    let len = esp.keymat_len();
    let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, None, &ni, &nr, len);
    let child = sa.new_child(
        ctx.now,
        child_spi,
        spi_out,
        esp,
        ChildKeys {
            inbound: r2i,
            outbound: i2r,
        },
        tsi.to_vec(),
        tsr.to_vec(),
    );
    let info = sa.child_info(&child, None, true);
    sa.state.children.push(child);
    ctx.event(Event::ChildUp(info));
}

/// The connection for this peer: its identity matches, the IKE proposal is one of its own,
/// (if the peer named us) our identity is the one it asked for, and it authenticates its
/// peers by EAP exactly when `eap` says.
pub(crate) fn choose_peer<'a>(
    ctx: &'a Ctx<'_>,
    sa: &IkeSa,
    idi: &Id,
    idr_wanted: Option<&Id>,
    eap: bool,
) -> Option<&'a std::sync::Arc<PeerConfig>> {
    ctx.peers.iter().find(|c| {
        c.remote_id.as_ref().is_none_or(|r| r == idi)
            && c.ike_proposals.contains(&sa.state.prop)
            && idr_wanted.is_none_or(|w| *w == c.local_id)
            && super::eap_auth::is_eap(ctx, c) == eap
    })
}

/// The initiator's IKE_AUTH request (the responder's side): authenticate, lease a virtual IP
/// if asked, negotiate the first CHILD_SA. A request without AUTH for a connection whose
/// peers authenticate by EAP goes to `eap_auth` (as do the requests after it).
pub(crate) fn on_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    if let Some(r) = super::eap_auth::on_request(sa, ctx, p) {
        return r;
    }
    let failed = Ok(vec![Payload::notify(notify::AUTHENTICATION_FAILED, vec![])]);
    let (Some(idi), Some(auth)) = (find_idi(p), find_auth(p)) else {
        return failed;
    };
    let Some(cfg) = choose_peer(ctx, sa, idi, find_idr(p), false).cloned() else {
        return failed;
    };
    // The initiator asks for our certificate in its IKE_AUTH request (RFC 7296 3.7).
    let (_, certreqs) = auth_hints(p);
    if let Err(e) = verify_initiator(sa, ctx, &cfg, idi, &auth, p, &certreqs) {
        if let Some(e) = e {
            ctx.count_auth(e);
        }
        return failed;
    }
    let reply = match our_auth(sa, ctx, &cfg, &certreqs) {
        Ok(r) => r,
        Err(e) => {
            if let Some(e) = e {
                ctx.count_auth(e);
            }
            return failed;
        }
    };
    complete(sa, ctx, cfg, idi, p, reply)
}

/// Checks the initiator's identity `idi` and AUTH for connection `cfg`; `Err(None)`: the
/// handshake's keys are gone.
pub(crate) fn verify_initiator(
    sa: &IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: &PeerConfig,
    idi: &Id,
    auth: &Auth,
    p: &[Payload],
    certreqs: &[Vec<u8>],
) -> Result<(), Option<crate::services::AuthError>> {
    let unix_time = ctx.unix_time();
    let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref()) else {
        return Err(None);
    };
    let input = AuthInput {
        prf: keys.prf,
        message: &hs.init_request,
        nonce: &hs.nr,
        sk_p: &keys.sk_pi,
        id: idi,
    };
    let actx = AuthContext {
        unix_time,
        peer_hashes: &hs.peer_hashes,
        certreqs,
    };
    ctx.services
        .auth
        .verify(cfg, &input, auth, p, &actx)
        .map_err(Some)
}

/// The responder's IDr, any payloads of the authenticator (CERT, CERTREQ) and AUTH, made with
/// the connection's own credential (`None`: the handshake's keys are gone).
pub(crate) fn our_auth(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: &PeerConfig,
    certreqs: &[Vec<u8>],
) -> Result<Vec<Payload>, Option<crate::services::AuthError>> {
    let unix_time = ctx.unix_time();
    let (Some(keys), Some(hs)) = (sa.state.keys.as_ref(), sa.pending.handshake.as_ref()) else {
        return Err(None);
    };
    let input = AuthInput {
        prf: keys.prf,
        message: &hs.init_response,
        nonce: &hs.ni,
        sk_p: &keys.sk_pr,
        id: &cfg.local_id,
    };
    let actx = AuthContext {
        unix_time,
        peer_hashes: &hs.peer_hashes,
        certreqs,
    };
    let my_auth = ctx.services.auth.sign(cfg, &input, &actx).map_err(Some)?;
    let extra = ctx.services.auth.extra_payloads(cfg, &actx);
    let mut reply = vec![Payload::IdR(cfg.local_id.clone())];
    reply.extend(extra);
    reply.push(Payload::Auth {
        method: my_auth.method,
        data: my_auth.data,
    });
    Ok(reply)
}

/// The peer `idi` is authenticated for connection `cfg`: the IKE SA comes up, with a virtual
/// IP and the first CHILD_SA as the request `p` (the first IKE_AUTH request) asks; `reply`
/// (our AUTH and what goes with it) gets their payloads.
pub(crate) fn complete(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: std::sync::Arc<PeerConfig>,
    idi: &Id,
    p: &[Payload],
    mut reply: Vec<Payload>,
) -> Reply {
    let failed = Ok(vec![Payload::notify(notify::AUTHENTICATION_FAILED, vec![])]);
    // A virtual IP when asked for and we have a pool.
    let wants_vip = p.iter().any(|x| {
        matches!(x, Payload::Cp { kind: cfg::REQUEST, attrs }
            if attrs.iter().any(|a| a.kind == cfg::INTERNAL_IP4_ADDRESS))
    });
    // A client we redirected (RFC 5685) to our own address comes back with a new IKE SA:
    // it replaces the redirected one, whose lease (the client's virtual IP, which its traffic
    // still uses) it takes over; the old one is closed here at once (the client deletes its
    // copy itself, RFC 5685 5).
    let replaced = sa
        .pending
        .handshake
        .as_ref()
        .is_some_and(|h| h.redirected_from)
        .then(|| {
            let key = super::gw_move::redirect_key(&cfg.name, idi, sa.state.remote);
            ctx.out.redirected.remove(&key)
        })
        .flatten()
        .filter(|old| *old != sa.id());
    if let Some(old) = replaced {
        ctx.stats.gateway_move.replaced = ctx.stats.gateway_move.replaced.saturating_add(1);
        ctx.out.effects.push(Effect::Replaced(old));
    }
    let mut vip = None;
    if wants_vip {
        if let Some(pool) = &cfg.pool {
            if let Some(old) = replaced {
                ctx.services.pool.rebind(old, sa.id());
            }
            vip = match ctx.services.pool.lease_of(sa.id()) {
                Some(a) => Some(a),
                None => ctx.services.pool.lease(pool, sa.id()),
            };
            reply.push(match vip {
                Some(a) => Payload::Cp {
                    kind: cfg::REPLY,
                    attrs: vec![CfgAttr {
                        kind: cfg::INTERNAL_IP4_ADDRESS,
                        value: a.octets().to_vec(),
                    }],
                },
                None => Payload::notify(notify::INTERNAL_ADDRESS_FAILURE, vec![]),
            });
        }
    }
    let (ni, nr) = match sa.pending.handshake.as_ref() {
        Some(hs) => (hs.ni.clone(), hs.nr.clone()),
        None => return failed,
    };
    sa.state.peer = Some(cfg.clone());
    sa.state.mobike = find_notify(p, notify::MOBIKE_SUPPORTED).is_some();
    sa.state.mid_sync =
        ctx.config.mid_sync && find_notify(p, notify::IKEV2_MESSAGE_ID_SYNC_SUPPORTED).is_some();
    sa.state.gateway_move = find_notify(p, notify::ROAMGATE_GATEWAY_MOVE_SUPPORTED).is_some();
    sa.state.per_core =
        ctx.config.per_core_sas > 1 && find_notify(p, notify::SA_RESOURCE_INFO).is_some();
    sa.state.virtual_ip = vip.map(IpAddr::V4);
    sa.state.remote_id = Some(idi.clone());
    sa.establish(ctx.now);
    ctx.stats.handshakes.completed = ctx.stats.handshakes.completed.saturating_add(1);
    ctx.event(Event::IkeUp {
        ike: sa.id(),
        peer: cfg.name.clone(),
        remote_id: idi.display(),
        local: sa.state.local,
        remote: sa.state.remote,
        virtual_ip: sa.state.virtual_ip,
        virtual_ip_is_ours: false,
    });
    // The first CHILD_SA.
    let remote_cfg_ts: Vec<TrafficSelector> = match vip {
        Some(a) => vec![host_ts(IpAddr::V4(a))],
        None => cfg.remote_ts.clone(),
    };
    match negotiate_child(p, &cfg.esp_proposals, &cfg.local_ts, &remote_cfg_ts) {
        Ok(n) => {
            let child_spi = ctx.child_spi();
            let Some(keys) = sa.state.keys.as_ref() else {
                return failed;
            };
            let len = n.esp.keymat_len();
            let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, None, &ni, &nr, len);
            let child = sa.new_child(
                ctx.now,
                child_spi,
                n.spi_out,
                n.esp,
                ChildKeys {
                    inbound: i2r,
                    outbound: r2i,
                },
                n.tsr.clone(),
                n.tsi.clone(),
            );
            let info = sa.child_info(&child, None, false);
            sa.state.children.push(child);
            ctx.event(Event::ChildUp(info));
            reply.push(Payload::Sa(vec![esp_proposal(n.num, &n.esp, child_spi)]));
            reply.push(Payload::TsI(n.tsi));
            reply.push(Payload::TsR(n.tsr));
        }
        Err(n) => reply.push(Payload::notify(n, vec![])),
    }
    reply.push(Payload::notify(notify::MOBIKE_SUPPORTED, vec![]));
    if ctx.config.mid_sync {
        reply.push(Payload::notify(
            notify::IKEV2_MESSAGE_ID_SYNC_SUPPORTED,
            vec![],
        ));
    }
    if sa.state.per_core {
        // RFC 9611: answered only to a peer that asked, so both ends know.
        reply.push(Payload::notify(notify::SA_RESOURCE_INFO, vec![]));
    }
    if sa.state.gateway_move {
        // Announced back only to a client that announced it (a private-use status type:
        // any other peer would ignore it, RFC 7296 3.10.1, but it never sees it).
        reply.push(Payload::notify(
            notify::ROAMGATE_GATEWAY_MOVE_SUPPORTED,
            vec![],
        ));
    }
    Ok(reply)
}

/// A responder's CHILD_SA: the chosen ESP proposal (its number, the peer's SPI) and the
/// narrowed selectors (TSi: the initiator's side, TSr: ours).
pub(crate) struct Negotiated {
    pub num: u8,
    pub esp: EspProposal,
    pub spi_out: ChildSpi,
    pub tsi: Vec<TrafficSelector>,
    pub tsr: Vec<TrafficSelector>,
}

/// Chooses the ESP proposal and narrows TSi to `remote_cfg`, TSr to `local_cfg`; the error
/// notify when it cannot.
pub(crate) fn negotiate_child(
    p: &[Payload],
    esp: &[EspProposal],
    local_cfg: &[TrafficSelector],
    remote_cfg: &[TrafficSelector],
) -> Result<Negotiated, u16> {
    let props = find_sa(p).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
    let (num, e, spi_out) = select_esp(props, esp).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
    let tsi = find_tsi(p).ok_or(notify::TS_UNACCEPTABLE)?;
    let tsr = find_tsr(p).ok_or(notify::TS_UNACCEPTABLE)?;
    let tsi = narrow(tsi, remote_cfg);
    let tsr = narrow(tsr, local_cfg);
    if tsi.is_empty() || tsr.is_empty() {
        return Err(notify::TS_UNACCEPTABLE);
    }
    Ok(Negotiated {
        num,
        esp: e,
        spi_out,
        tsi,
        tsr,
    })
}
