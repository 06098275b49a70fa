//! CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 1.3.2, 2.18): a new IKE SA with fresh keys
//! derived from the old SK_d, the CHILD_SAs and the virtual IP lease move to it, the
//! initiator deletes the old one. Simultaneous rekeys (2.8.2): both exchanges complete, the
//! children wait on the old IKE SA until both are known, then go to the new IKE SA whose
//! exchange did not hold the lowest nonce; the other one's creator deletes it.
//!
//! Owns: the IKE SA half of CREATE_CHILD_SA, both ends, and settling a collision.
//! Must never: move the children before both colliding exchanges are done; touch the new IKE
//! SA other than by handing it to the endpoint (`Effect::Insert`, `Effect::HandOver`).

use std::net::SocketAddr;

use crate::crypto::{DhPrivate, IkeKeys};
use crate::event::Event;
use crate::exchange::{
    find_ke, find_nonce, find_sa, send_request, Action, Ctx, Effect, Reply, Request,
};
use crate::ids::{IkeSaId, IkeSpi};
use crate::ike_sa::{min_nonce, IkeSa, Role};
use crate::proposal::{ike_payload, select_ike, IkeProposal};
use crate::stats::Reason;
use crate::wire::{exchange, notify, proto, Payload, Proposal};

/// Our request to rekey the IKE SA, with its current proposal.
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let prop = sa.state.prop;
    let new_spi = ctx.ike_spi();
    let nonce = ctx.nonce();
    let dh = DhPrivate::generate(prop.dh, ctx.rng);
    let p = [
        Payload::Sa(ike_payload(&[prop], &new_spi.to_bytes())),
        Payload::Nonce(nonce.clone()),
        Payload::Ke {
            group: prop.dh.id(),
            data: dh.public().to_vec(),
        },
    ];
    send_request(
        sa,
        ctx,
        exchange::CREATE_CHILD_SA,
        &p,
        Request::RekeyIke {
            new_spi,
            nonce,
            dh,
            prop,
        },
    );
}

/// The new IKE SA that replaces `old`, established, with `old`'s addresses, connection,
/// virtual IP and MOBIKE state.
#[allow(clippy::too_many_arguments)]
fn successor(
    old: &IkeSa,
    ctx: &Ctx<'_>,
    id: IkeSaId,
    role: Role,
    spi_i: IkeSpi,
    spi_r: IkeSpi,
    prop: IkeProposal,
    keys: IkeKeys,
) -> IkeSa {
    let (local, remote): (SocketAddr, SocketAddr) = (old.state.local, old.state.remote);
    let mut new = IkeSa::new(id, role, spi_i, spi_r, local, remote, prop, ctx.now);
    new.state.peer = old.state.peer.clone();
    new.state.remote_id = old.state.remote_id.clone();
    new.state.nat = old.state.nat;
    new.observed.nat = old.observed.nat;
    new.state.virtual_ip = old.state.virtual_ip;
    new.state.mobike = old.state.mobike;
    new.state.gateway_move = old.state.gateway_move;
    new.state.per_core = old.state.per_core;
    new.state.redirect = old.state.redirect;
    // Negotiated in IKE_SA_INIT only: a rekeyed IKE SA keeps it (RFC 7383 2.3).
    new.state.fragmentation = old.state.fragmentation;
    new.state.mid_sync = old.state.mid_sync;
    new.state.peer_additional = old.state.peer_additional.clone();
    new.state.our_additional = old.state.our_additional.clone();
    new.install_keys(keys);
    new.establish(ctx.now);
    new
}

/// The peer's request to rekey this IKE SA (its SA payload holds IKE proposals).
pub(crate) fn on_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    let Some(cfg) = sa.state.peer.clone() else {
        return Err(Reason::UnexpectedExchange);
    };
    let props = find_sa(p).ok_or(Reason::MissingPayload)?;
    let ni = find_nonce(p).ok_or(Reason::MissingPayload)?.to_vec();
    let Some((num, prop)) = select_ike(props, &cfg.ike_proposals) else {
        return Ok(vec![Payload::notify(notify::NO_PROPOSAL_CHOSEN, vec![])]);
    };
    let new_spi_i = props
        .iter()
        .find(|x| x.num == num)
        .and_then(|x| IkeSpi::from_slice(&x.spi))
        .filter(|s| !s.is_zero())
        .ok_or(Reason::MissingPayload)?;
    let (group, ke) = find_ke(p).ok_or(Reason::MissingPayload)?;
    if group != prop.dh.id() {
        return Ok(vec![Payload::notify(
            notify::INVALID_KE_PAYLOAD,
            prop.dh.id().to_be_bytes().to_vec(),
        )]);
    }
    // Simultaneous IKE rekey (RFC 7296 2.8.2): when we are rekeying this IKE SA too, both
    // exchanges complete; the children wait on the old SA until ours is done.
    let colliding = matches!(
        sa.pending.outstanding.as_ref().map(|o| &o.request),
        Some(Request::RekeyIke { .. })
    );
    let dh = DhPrivate::generate(prop.dh, ctx.rng);
    let shared = dh.shared(ke).map_err(|_| Reason::MissingPayload)?;
    let Some(old_keys) = sa.state.keys.as_ref() else {
        return Err(Reason::NotEncrypted);
    };
    let new_spi_r = ctx.ike_spi();
    let nr = ctx.nonce();
    let keys = IkeKeys::derive(
        prop.prf,
        Some((old_keys.prf, &old_keys.sk_d)),
        &shared,
        &ni,
        &nr,
        new_spi_i.0,
        new_spi_r.0,
        prop.encr_len(),
        prop.integ_len(),
    );
    let new_id = IkeSaId(new_spi_r);
    let mut new = successor(
        sa,
        ctx,
        new_id,
        Role::Responder,
        new_spi_i,
        new_spi_r,
        prop,
        keys,
    );
    if colliding {
        sa.pending.rekey_peer = Some((new_id, min_nonce(&ni, &nr)));
    } else {
        // The children now belong to the new IKE SA; the initiator deletes the old one next.
        new.state.children = core::mem::take(&mut sa.state.children);
        ctx.services.pool.rebind(sa.id(), new_id);
        ctx.event(Event::IkeRekeyed {
            old: sa.id(),
            new: new_id,
            initiated_here: false,
        });
    }
    ctx.effect(Effect::Insert(Box::new(new)));
    Ok(vec![
        Payload::Sa(vec![Proposal {
            num,
            protocol: proto::IKE,
            spi: new_spi_r.to_bytes().to_vec(),
            transforms: prop.transforms(),
        }]),
        Payload::Nonce(nr),
        Payload::Ke {
            group: prop.dh.id(),
            data: dh.public().to_vec(),
        },
    ])
}

/// The answer to our request to rekey this IKE SA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    new_spi_i: IkeSpi,
    ni: &[u8],
    dh: &DhPrivate,
    prop: IkeProposal,
    p: &[Payload],
) {
    let (Some(props), Some(nr), Some((_, ke))) = (find_sa(p), find_nonce(p), find_ke(p)) else {
        // Refused (e.g. TEMPORARY_FAILURE: the peer is rekeying it too): if the peer's rekey
        // made a new IKE SA here, that one carries on.
        ctx.services.spis.release_ike(new_spi_i);
        settle(sa, ctx);
        return;
    };
    let (Some(new_spi_r), Ok(shared)) = (
        props
            .first()
            .and_then(|x| IkeSpi::from_slice(&x.spi))
            .filter(|s| !s.is_zero()),
        dh.shared(ke),
    ) else {
        ctx.count(Reason::ResponseMalformed);
        ctx.services.spis.release_ike(new_spi_i);
        settle(sa, ctx);
        return;
    };
    let Some(old_keys) = sa.state.keys.as_ref() else {
        return;
    };
    let keys = IkeKeys::derive(
        prop.prf,
        Some((old_keys.prf, &old_keys.sk_d)),
        &shared,
        ni,
        nr,
        new_spi_i.0,
        new_spi_r.0,
        prop.encr_len(),
        prop.integ_len(),
    );
    let new_id = IkeSaId(new_spi_i);
    let mut new = successor(
        sa,
        ctx,
        new_id,
        Role::Initiator,
        new_spi_i,
        new_spi_r,
        prop,
        keys,
    );
    if sa.pending.rekey_peer.is_some() {
        ctx.effect(Effect::Insert(Box::new(new)));
        sa.pending.rekey_ours = Some((new_id, min_nonce(ni, nr)));
        settle(sa, ctx);
        return;
    }
    new.state.children = core::mem::take(&mut sa.state.children);
    ctx.effect(Effect::Insert(Box::new(new)));
    sa.pending.queue.clear();
    sa.pending.queue.push_back(Action::DeleteIke);
    ctx.services.pool.rebind(sa.id(), new_id);
    ctx.event(Event::IkeRekeyed {
        old: sa.id(),
        new: new_id,
        initiated_here: true,
    });
}

/// After a simultaneous rekey of this IKE SA (RFC 7296 2.8.2): the new IKE SA made by the
/// exchange with the lowest of the four nonces is redundant and its creator deletes it; the
/// other takes the children (and the virtual IP lease); this one is deleted. With our
/// exchange failed, the peer's new IKE SA carries on.
fn settle(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let Some((theirs, their_min)) = sa.pending.rekey_peer.take() else {
        return;
    };
    let ours = sa.pending.rekey_ours.take();
    let (survivor, redundant_ours) = match &ours {
        Some((mine, my_min)) if *my_min < their_min => (theirs, Some(*mine)),
        Some((mine, _)) => (*mine, None),
        None => (theirs, None),
    };
    let children = core::mem::take(&mut sa.state.children);
    sa.pending.queue.clear();
    sa.pending.queue.push_back(Action::DeleteIke);
    ctx.effect(Effect::HandOver {
        to: survivor,
        children,
    });
    ctx.services.pool.rebind(sa.id(), survivor);
    ctx.event(Event::IkeRekeyed {
        old: sa.id(),
        new: survivor,
        initiated_here: ours.as_ref().is_some_and(|(m, _)| *m == survivor),
    });
    if let Some(r) = redundant_ours {
        // Ours lost: it never carried anything; delete it.
        ctx.effect(Effect::Delete(r));
    }
}
