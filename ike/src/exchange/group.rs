//! The G-IKEv2 exchanges (RFC 9838 sections 2.3 and 2.4.2) on an IKE SA, both roles:
//!
//! - GSA_AUTH (39) in place of IKE_AUTH: `HDR, SK{IDi, [CERT,] [IDr,] AUTH, IDg,
//!   [N(GROUP_SENDER)]}` -> `HDR, SK{IDr, [CERT,] AUTH, GSA, KD}`, or `SK{IDr, AUTH, N}` when
//!   the GCKS refuses the registration (INVALID_GROUP_ID, AUTHORIZATION_FAILED,
//!   REGISTRATION_FAILED): the IKE SA is then up and the member may register for another
//!   group. The identities and AUTH are made and checked as in IKE_AUTH (`auth`); no CHILD_SA.
//! - GSA_REGISTRATION (40) over an established IKE SA: `SK{IDg, [N(GROUP_SENDER)]}` ->
//!   `SK{GSA, KD}` or `SK{N}`; `SK{IDg, N(NO_PROPOSAL_CHOSEN or REGISTRATION_FAILED)}` is a
//!   member leaving the group: the GCKS removes it (and rekeys) and answers `SK{}`.
//! - GSA_INBAND_REKEY (42), the GCKS initiating: `SK{GSA, KD}` -> `SK{}`, the keys under the
//!   IKE SA's default KWK (section 3.1.1), processed by the member as a registration's.
//!
//! A group payload that does not parse is a badly formed request (INVALID_SYNTAX, RFC 7296
//! 2.21.3, counted in `GroupStats::malformed`); a registration the GCKS refuses is answered
//! with its notify; a response a member refuses (malformed or against its policy) is counted
//! and reported ([`GroupEvent::Refused`] with notify 0), never installed.
//!
//! Owns: the G-IKEv2 messages on an IKE SA. Must never: give keys to an identity the IKE SA
//! did not authenticate; install SAs from a response that fails the member's checks.

use std::sync::Arc;

use crate::config::PeerConfig;
use crate::event::{DownReason, Event};
use crate::exchange::{auth, auth_hints, find_notify, send_request, Ctx, Reply, Request};
use crate::group::keys::Kek;
use crate::group::rekey::RekeyError;
use crate::group::session::{GroupEvent, GroupState, KeysFrom};
use crate::group::wire::{exchange as gx, notify as gnotify, GroupPayload, GroupPolicy};
use crate::ike_sa::{IkeSa, Phase};
use crate::services::Auth;
use crate::stats::Reason;
use crate::wire::{notify, Id, Payload};

/// The registration refusals a GCKS answers with (sections 2.3.1, 4.7).
const REFUSALS: [u16; 4] = [
    gnotify::INVALID_GROUP_ID,
    gnotify::AUTHORIZATION_FAILED,
    gnotify::REGISTRATION_FAILED,
    notify::NO_PROPOSAL_CHOSEN,
];

/// The IKE SA's default KWK (section 3.1.1), from its SK_d.
fn default_kek(sa: &IkeSa) -> Option<Kek> {
    let k = sa.state.keys.as_ref()?;
    Some(Kek::from_ike_sa(k.prf, &k.sk_d))
}

/// The first IDg of a request, and whether any group payload failed to parse.
fn find_idg(p: &[Payload]) -> (Option<Id>, bool) {
    let mut idg = None;
    let mut malformed = false;
    for x in p {
        match GroupPayload::from_payload(x) {
            Ok(Some(GroupPayload::IdG(g))) => {
                idg.get_or_insert(g);
            }
            Ok(_) => {}
            Err(_) => malformed = true,
        }
    }
    (idg, malformed)
}

// ---- member (initiator of GSA_AUTH / GSA_REGISTRATION, responder of GSA_INBAND_REKEY) ----

/// Our GSA_AUTH request for `group` (the member, after IKE_SA_INIT), with the identities and
/// AUTH made as for IKE_AUTH (`auth::start`). A connection authenticated by EAP cannot
/// register this way (not done): the IKE SA fails.
pub(crate) fn start_gsa_auth(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cfg: &PeerConfig,
    ids_and_auth: (Id, Vec<Payload>, Option<Auth>),
    group: Id,
) {
    let (idi, extra, auth) = ids_and_auth;
    let request = ctx
        .group
        .membership_mut(&group)
        .map(|m| m.member.registration_request());
    let (Some(auth), Some(request)) = (auth, request) else {
        sa.close(ctx, DownReason::AuthFailed);
        return;
    };
    let mut inner = vec![Payload::IdI(idi)];
    inner.extend(extra);
    inner.push(Payload::notify(notify::INITIAL_CONTACT, vec![]));
    if let Some(r) = &cfg.remote_id {
        inner.push(Payload::IdR(r.clone()));
    }
    inner.push(Payload::Auth {
        method: auth.method,
        data: auth.data,
    });
    inner.extend(request);
    sa.state.phase = Phase::Auth;
    send_request(sa, ctx, gx::GSA_AUTH, &inner, Request::GsaAuth { group });
}

/// The GCKS's GSA_AUTH answer: the IKE SA comes up once the GCKS's AUTH verifies, then the
/// registration's GSA and KD (or its refusal).
pub(crate) fn on_gsa_auth_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, group: &Id, p: &[Payload]) {
    let Some(cfg) = sa.state.peer.clone() else {
        return;
    };
    if find_notify(p, notify::AUTHENTICATION_FAILED).is_some() {
        return sa.close(ctx, DownReason::AuthFailed);
    }
    let (Some(idr), Some(a)) = (auth::find_idr(p), auth::find_auth(p)) else {
        return sa.close(ctx, DownReason::AuthFailed);
    };
    if let Err(e) = auth::verify_responder(sa, ctx, &cfg, idr, &a, p) {
        if let Some(e) = e {
            ctx.count_auth(e);
        }
        return sa.close(ctx, DownReason::AuthFailed);
    }
    // The default KWK comes from SK_d, which the handshake's end keeps.
    sa.state.remote_id = Some(idr.clone());
    sa.establish(ctx.now);
    ctx.stats.handshakes.completed = ctx.stats.handshakes.completed.saturating_add(1);
    ctx.event(Event::IkeUp {
        ike: sa.id(),
        peer: cfg.name.clone(),
        remote_id: idr.display(),
        local: sa.state.local,
        remote: sa.state.remote,
        virtual_ip: None,
        virtual_ip_is_ours: true,
    });
    on_registration_response(sa, ctx, group, p);
}

/// Starts the next GSA_REGISTRATION waiting on this IKE SA (false: none).
pub(crate) fn start_registration(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let Some((group, leave)) = ctx
        .group
        .pending_registrations
        .get_mut(&sa.id())
        .and_then(|q| q.pop_front())
    else {
        return false;
    };
    let Some(m) = ctx.group.membership_mut(&group) else {
        return false;
    };
    let (mut inner, request) = if leave {
        // Section 2.3.2: a member leaving sends IDg and REGISTRATION_FAILED.
        (
            vec![
                GroupPayload::IdG(group.clone()).to_payload(),
                Payload::notify(gnotify::REGISTRATION_FAILED, vec![]),
            ],
            Request::GsaLeave { group },
        )
    } else {
        (
            m.member.registration_request(),
            Request::GsaRegistration { group },
        )
    };
    ctx.group.tamper(gx::GSA_REGISTRATION, &mut inner);
    send_request(sa, ctx, gx::GSA_REGISTRATION, &inner, request);
    true
}

/// The GCKS answered our leaving: the membership and its keys go.
pub(crate) fn on_leave_response(ctx: &mut Ctx<'_>, group: &Id) {
    ctx.group.members.retain(|m| m.member.group() != group);
    ctx.group.joins.retain(|_, g| g != group);
    ctx.group.events.push_back(GroupEvent::Left {
        group: group.display(),
    });
}

/// A GSA_AUTH or GSA_REGISTRATION response's group part: keys installed and reported, or the
/// refusal reported.
pub(crate) fn on_registration_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    group: &Id,
    p: &[Payload],
) {
    let ike = sa.id();
    if let Some(n) = REFUSALS
        .iter()
        .copied()
        .find(|n| find_notify(p, *n).is_some())
    {
        ctx.group.events.push_back(GroupEvent::Refused {
            ike,
            group: group.display(),
            notify: n,
        });
        return;
    }
    let kek = default_kek(sa);
    let now = ctx.now;
    let GroupState {
        members,
        events,
        stats,
        ..
    } = &mut *ctx.group;
    let Some(m) = members.iter_mut().find(|m| m.member.group() == group) else {
        return;
    };
    let r = match &kek {
        Some(k) => m.member.on_registration(now, k, p),
        None => Err(RekeyError::Policy("no IKE SA keys")),
    };
    match r {
        Ok(()) => {
            m.ike = Some(ike);
            events.push_back(GroupState::keys_event(&m.member, KeysFrom::Registration));
        }
        Err(e) => {
            stats.member_refused = stats.member_refused.saturating_add(1);
            if matches!(e, RekeyError::Wire(_)) {
                stats.malformed = stats.malformed.saturating_add(1);
            }
            events.push_back(GroupEvent::Refused {
                ike,
                group: group.display(),
                notify: 0,
            });
        }
    }
}

/// The GCKS's GSA_INBAND_REKEY (the member answers): the keys go to the membership that
/// registered over this IKE SA (the one holding the Rekey SA the policy names, when several).
pub(crate) fn on_inband_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    let ike = sa.id();
    let mut rekey_spi = None;
    for x in p {
        match GroupPayload::from_payload(x) {
            Ok(Some(GroupPayload::Gsa(g))) => {
                rekey_spi = g.policies.iter().find_map(|pol| match pol {
                    GroupPolicy::Rekey { spi, .. } => Some(*spi),
                    _ => None,
                });
            }
            Ok(_) => {}
            Err(_) => {
                ctx.group.stats.malformed = ctx.group.stats.malformed.saturating_add(1);
                return Err(Reason::InnerMalformed);
            }
        }
    }
    let kek = default_kek(sa);
    let now = ctx.now;
    let GroupState {
        members,
        events,
        stats,
        ..
    } = &mut *ctx.group;
    let mine: Vec<_> = members.iter_mut().filter(|m| m.ike == Some(ike)).collect();
    let at = rekey_spi
        .and_then(|s| mine.iter().position(|m| m.member.rekey_spi() == Some(s)))
        .unwrap_or(0);
    let m = mine.into_iter().nth(at);
    let (Some(m), Some(kek)) = (m, kek) else {
        stats.member_refused = stats.member_refused.saturating_add(1);
        return Ok(vec![]);
    };
    match m.member.on_inband(now, &kek, p) {
        Ok(()) => events.push_back(GroupState::keys_event(&m.member, KeysFrom::Inband)),
        Err(_) => {
            stats.member_refused = stats.member_refused.saturating_add(1);
            events.push_back(GroupEvent::Refused {
                ike,
                group: m.member.group().display(),
                notify: 0,
            });
            GroupState::must_register(events, &mut m.member);
        }
    }
    Ok(vec![])
}

// ---- GCKS (responder of GSA_AUTH / GSA_REGISTRATION, initiator of GSA_INBAND_REKEY) ------

/// A member's GSA_AUTH request: authenticated as an IKE_AUTH request (`auth`), the IKE SA up,
/// then registered (or refused) by the group's GCKS.
pub(crate) fn on_gsa_auth_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    let failed = Ok(vec![Payload::notify(notify::AUTHENTICATION_FAILED, vec![])]);
    let (Some(idi), Some(a)) = (auth::find_idi(p), auth::find_auth(p)) else {
        return failed;
    };
    let Some(cfg) = auth::choose_peer(ctx, sa, idi, auth::find_idr(p), false).cloned() else {
        return failed;
    };
    let (_, certreqs) = auth_hints(p);
    if let Err(e) = auth::verify_initiator(sa, ctx, &cfg, idi, &a, p, &certreqs) {
        if let Some(e) = e {
            ctx.count_auth(e);
        }
        return failed;
    }
    let mut reply = match auth::our_auth(sa, ctx, &cfg, &certreqs) {
        Ok(r) => r,
        Err(e) => {
            if let Some(e) = e {
                ctx.count_auth(e);
            }
            return failed;
        }
    };
    // The default KWK needs SK_d only (kept by the IKE SA), not the handshake.
    let idi = idi.clone();
    up_responder(sa, ctx, cfg, &idi);
    reply.extend(register(sa, ctx, &idi, p)?);
    Ok(reply)
}

fn up_responder(sa: &mut IkeSa, ctx: &mut Ctx<'_>, cfg: Arc<PeerConfig>, idi: &Id) {
    sa.state.peer = Some(cfg.clone());
    sa.state.remote_id = Some(idi.clone());
    sa.establish(ctx.now);
    ctx.stats.handshakes.completed = ctx.stats.handshakes.completed.saturating_add(1);
    ctx.event(Event::IkeUp {
        ike: sa.id(),
        peer: cfg.name.clone(),
        remote_id: idi.display(),
        local: sa.state.local,
        remote: sa.state.remote,
        virtual_ip: None,
        virtual_ip_is_ours: false,
    });
}

/// A GSA_REGISTRATION request on an established IKE SA: a registration, or a member leaving.
pub(crate) fn on_registration_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    let Some(peer) = sa.state.remote_id.clone() else {
        return Err(Reason::UnexpectedExchange);
    };
    let leaving = [notify::NO_PROPOSAL_CHOSEN, gnotify::REGISTRATION_FAILED]
        .iter()
        .any(|n| find_notify(p, *n).is_some());
    if leaving {
        let (idg, malformed) = find_idg(p);
        if malformed {
            ctx.group.stats.malformed = ctx.group.stats.malformed.saturating_add(1);
            return Err(Reason::InnerMalformed);
        }
        let now = ctx.now;
        if let Some(g) = idg {
            // Section 2.3.2: the GCKS MUST remove the GM from the group.
            remove(ctx.group, now, &g, &peer);
        }
        return Ok(vec![]);
    }
    register(sa, ctx, &peer, p)
}

/// Removes `member` from `group` (if this endpoint is its GCKS): the rekey that excludes it
/// waits in the outbox for the endpoint to send.
pub(crate) fn remove(group: &mut GroupState, now: crate::time::Instant, g: &Id, member: &Id) {
    let Some(gcks) = group.gcks_mut(g) else {
        return;
    };
    if !gcks.has_member(member) {
        return;
    }
    let out = gcks.remove_member(now, member);
    group.outbox.extend(out.into_iter().map(|o| (g.clone(), o)));
    group.forget_registration(g, member);
    group.events.push_back(GroupEvent::Removed {
        group: g.display(),
        member: member.display(),
    });
}

/// The group part of a GSA_AUTH / GSA_REGISTRATION answer: GSA and KD, or the refusal.
fn register(sa: &mut IkeSa, ctx: &mut Ctx<'_>, peer: &Id, p: &[Payload]) -> Reply {
    let ike = sa.id();
    let (idg, malformed) = find_idg(p);
    if malformed {
        ctx.group.stats.malformed = ctx.group.stats.malformed.saturating_add(1);
        return Err(Reason::InnerMalformed);
    }
    let Some(kek) = default_kek(sa) else {
        return Err(Reason::UnexpectedExchange);
    };
    let now = ctx.now;
    let group_name = idg.as_ref().map_or_else(String::new, Id::display);
    let result = match idg.as_ref().and_then(|g| ctx.group.gcks_mut(g)) {
        None => Err(gnotify::INVALID_GROUP_ID),
        Some(gcks) => gcks.register(now, peer, &kek, p).map(|payloads| {
            let sid = gcks
                .sender_ids()
                .into_iter()
                .find(|(_, id)| id == peer)
                .map(|(s, _)| s);
            (payloads, sid)
        }),
    };
    match result {
        Ok((payloads, sender_id)) => {
            if let Some(g) = &idg {
                ctx.group
                    .note_registration(g, peer, ike, sa.state.local, sa.state.remote);
            }
            ctx.group.events.push_back(GroupEvent::Registered {
                ike,
                group: group_name,
                member: peer.display(),
                sender_id,
            });
            // The response carries GSA and KD (section 2.3.1); the GCKS's IDg echo is left out.
            let mut out: Vec<Payload> = payloads
                .into_iter()
                .filter(|x| {
                    !matches!(
                        GroupPayload::from_payload(x),
                        Ok(Some(GroupPayload::IdG(_)))
                    )
                })
                .collect();
            ctx.group.tamper(gx::GSA_REGISTRATION, &mut out);
            Ok(out)
        }
        Err(n) => {
            if n == notify::INVALID_SYNTAX {
                ctx.group.stats.malformed = ctx.group.stats.malformed.saturating_add(1);
                return Err(Reason::InnerMalformed);
            }
            ctx.group.events.push_back(GroupEvent::RegistrationRefused {
                ike,
                group: group_name,
                member: peer.display(),
                notify: n,
            });
            Ok(vec![Payload::notify(n, vec![])])
        }
    }
}

/// Starts the next GSA_INBAND_REKEY waiting on this IKE SA (false: none could start).
pub(crate) fn start_inband(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let Some(group) = ctx
        .group
        .pending_inband
        .get_mut(&sa.id())
        .and_then(|q| q.pop_front())
    else {
        return false;
    };
    let (Some(peer), Some(kek)) = (sa.state.remote_id.clone(), default_kek(sa)) else {
        return false;
    };
    let now = ctx.now;
    let Some(mut inner) = ctx
        .group
        .gcks_mut(&group)
        .and_then(|g| g.inband(now, &peer, &kek))
    else {
        return false;
    };
    ctx.group.tamper(gx::GSA_INBAND_REKEY, &mut inner);
    ctx.group.stats.inband_sent = ctx.group.stats.inband_sent.saturating_add(1);
    send_request(sa, ctx, gx::GSA_INBAND_REKEY, &inner, Request::GsaInband);
    true
}
