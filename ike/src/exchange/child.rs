//! CREATE_CHILD_SA for CHILD_SAs (RFC 7296 1.3.1, 1.3.3): a further CHILD_SA under an IKE SA,
//! or the rekey of one (make-before-break: the new one is reported up before the old one is
//! deleted), with PFS when the initiator sends a KE. Simultaneous rekeys of one CHILD_SA
//! (2.8.1): the exchange with the lowest of the four nonces made the redundant CHILD_SA; its
//! creator deletes it and never sends on it.
//!
//! Owns: the CHILD_SA half of CREATE_CHILD_SA, both ends.
//! Must never: take a request without SA or Ni (INVALID_SYNTAX); answer for a CHILD_SA the
//! IKE SA does not have other than CHILD_SA_NOT_FOUND.

use crate::crypto::{self, DhGroup, DhPrivate};
use crate::event::Event;
use crate::exchange::auth::negotiate_child;
use crate::exchange::{
    find_ke, find_nonce, find_sa, find_tsi, find_tsr, send_request, Action, Ctx, Reply, Request,
};
use crate::ids::ChildSpi;
use crate::ike_sa::{min_nonce, ChildKeys, IkeSa};
use crate::proposal::{esp_payload, esp_proposal, select_esp, EspProposal};
use crate::stats::Reason;
use crate::wire::{exchange, notify, proto, Payload, TrafficSelector};

/// Sends a CREATE_CHILD_SA request for a new CHILD_SA: the replacement of inbound SPI
/// `old_in` (REKEY_SA names it when `rekey_sa`: a rekey; without it, the peer lost that
/// CHILD_SA), or a further one.
/// `new_spi` is the new CHILD_SA's inbound SPI; `per_core` adds SA_RESOURCE_INFO (RFC 9611).
#[allow(clippy::too_many_arguments)]
fn send(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    old_in: Option<ChildSpi>,
    rekey_sa: bool,
    new_spi: ChildSpi,
    per_core: bool,
    esp: Vec<EspProposal>,
    tsi: Vec<TrafficSelector>,
    tsr: Vec<TrafficSelector>,
) {
    let nonce = ctx.nonce();
    let mut p = Vec::with_capacity(6);
    if let Some(old) = old_in.filter(|_| rekey_sa) {
        p.push(Payload::Notify {
            protocol: proto::ESP,
            spi: old.to_bytes().to_vec(),
            kind: notify::REKEY_SA,
            data: vec![],
        });
    }
    p.push(Payload::Sa(esp_payload(&esp, new_spi)));
    p.push(Payload::Nonce(nonce.clone()));
    p.push(Payload::TsI(tsi));
    p.push(Payload::TsR(tsr));
    if per_core {
        p.push(Payload::notify(notify::SA_RESOURCE_INFO, vec![]));
    }
    send_request(
        sa,
        ctx,
        exchange::CREATE_CHILD_SA,
        &p,
        Request::CreateChild {
            old_spi_in: old_in,
            new_spi,
            nonce,
            dh: None,
            esp,
        },
    );
}

/// A further CHILD_SA with the first one's selectors (a client's virtual IP), else the
/// connection's. False when there is no connection to take them from.
pub(crate) fn start_new(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let Some(cfg) = sa.state.peer.clone() else {
        return false;
    };
    let (tsi, tsr) = match sa.state.children.first() {
        Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
        None => (cfg.local_ts.clone(), cfg.remote_ts.clone()),
    };
    let spi = ctx.child_spi();
    send(
        sa,
        ctx,
        None,
        false,
        spi,
        false,
        cfg.esp_proposals.clone(),
        tsi,
        tsr,
    );
    true
}

/// A further per-core CHILD_SA (RFC 9611) with the first one's selectors, its inbound SPI on
/// worker `w`. False when the peer did not agree to per-core CHILD_SAs or there is no
/// CHILD_SA to copy the selectors from.
pub(crate) fn start_new_on(sa: &mut IkeSa, ctx: &mut Ctx<'_>, w: u32) -> bool {
    let Some(cfg) = sa.state.peer.clone() else {
        return false;
    };
    if !sa.state.per_core {
        return false;
    }
    let Some(first) = sa.state.children.iter().find(|c| !c.replaced) else {
        return false;
    };
    let (tsi, tsr) = (first.local_ts.clone(), first.remote_ts.clone());
    let spi = ctx.child_spi_for(w);
    send(
        sa,
        ctx,
        None,
        false,
        spi,
        true,
        cfg.esp_proposals.clone(),
        tsi,
        tsr,
    );
    true
}

/// Rekeys the CHILD_SA with inbound SPI `old_in`; false when it is gone, already replaced or
/// being rekeyed.
pub(crate) fn start_rekey(sa: &mut IkeSa, ctx: &mut Ctx<'_>, old_in: ChildSpi) -> bool {
    let Some(cfg) = sa.state.peer.clone() else {
        return false;
    };
    let Some(old) = sa
        .state
        .children
        .iter_mut()
        .find(|c| c.spi_in == old_in && !c.replaced && !c.rekeying)
    else {
        return false;
    };
    old.rekeying = true;
    // The peer said it has no SA for it (INVALID_SPI inside the IKE SA): a new CHILD_SA with
    // its selectors, without REKEY_SA; the old one goes once the new one is up, as in a rekey.
    let notify = !old.lost;
    let (esn, lts, rts) = (old.esp.esn, old.local_ts.clone(), old.remote_ts.clone());
    let esp: Vec<EspProposal> = cfg
        .esp_proposals
        .iter()
        .copied()
        .filter(|e| e.esn == esn)
        .collect();
    // A per-core CHILD_SA stays on its worker: the new one's inbound SPI names the same.
    let spi = if sa.state.per_core {
        let w = ctx.services.spis.layout().worker_of(old_in);
        ctx.child_spi_for(w)
    } else {
        ctx.child_spi()
    };
    send(sa, ctx, Some(old_in), notify, spi, false, esp, lts, rts);
    true
}

/// The peer's CREATE_CHILD_SA request for a CHILD_SA (its SA payload is not an IKE one).
pub(crate) fn on_request(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) -> Reply {
    let Some(cfg) = sa.state.peer.clone() else {
        return Err(Reason::UnexpectedExchange);
    };
    find_sa(p).ok_or(Reason::MissingPayload)?;
    let ni = find_nonce(p).ok_or(Reason::MissingPayload)?.to_vec();
    // REKEY_SA names the old CHILD_SA by its SPI as the peer receives it: our outbound.
    let mut old_out = None;
    for x in p {
        if let Payload::Notify {
            kind: notify::REKEY_SA,
            spi,
            ..
        } = x
        {
            old_out = Some(ChildSpi::from_slice(spi).ok_or(Reason::MissingPayload)?);
        }
    }
    let old = match old_out {
        Some(o) => match sa.state.children.iter().find(|c| c.spi_out == o) {
            // We replaced it already; our delete of it is on its way (RFC 7296 2.25).
            Some(c) if c.replaced => {
                return Ok(vec![Payload::notify(notify::TEMPORARY_FAILURE, vec![])])
            }
            Some(c) => Some(c.clone()),
            None => return Ok(vec![Payload::notify(notify::CHILD_SA_NOT_FOUND, vec![])]),
        },
        None => None,
    };
    // RFC 9611: a further CHILD_SA of a peer that agreed to per-core CHILD_SAs, up to ours.
    let per_core = sa.state.per_core
        && old.is_none()
        && super::find_notify(p, notify::SA_RESOURCE_INFO).is_some();
    let live: Vec<ChildSpi> = sa
        .state
        .children
        .iter()
        .filter(|c| !c.replaced)
        .map(|c| c.spi_in)
        .collect();
    if per_core && live.len() >= usize::from(ctx.config.per_core_sas) {
        return Ok(vec![Payload::notify(notify::TS_MAX_QUEUE, vec![])]);
    }
    // A per-core CHILD_SA has its siblings' selectors (a client's virtual IP among them,
    // which the connection's own selectors do not name).
    let sibling = sa
        .state
        .children
        .iter()
        .find(|c| per_core && !c.replaced)
        .map(|c| (c.local_ts.clone(), c.remote_ts.clone()));
    let (lts, rts) = match (&old, sibling) {
        (Some(c), _) => (c.local_ts.clone(), c.remote_ts.clone()),
        (None, Some(ts)) => ts,
        // A further CHILD_SA (or the peer making anew one we told it INVALID_SPI for): the
        // connection's selectors; a side the connection leaves empty (a client's own: its
        // virtual IP) is the first CHILD_SA's, as `start_new` offers them.
        (None, None) => {
            let first = sa.state.children.first();
            let pick = |conf: &Vec<TrafficSelector>, child: Option<&Vec<TrafficSelector>>| {
                if conf.is_empty() {
                    child.cloned().unwrap_or_default()
                } else {
                    conf.clone()
                }
            };
            (
                pick(&cfg.local_ts, first.map(|c| &c.local_ts)),
                pick(&cfg.remote_ts, first.map(|c| &c.remote_ts)),
            )
        }
    };
    let n = match negotiate_child(p, &cfg.esp_proposals, &lts, &rts) {
        Ok(n) => n,
        Err(e) => return Ok(vec![Payload::notify(e, vec![])]),
    };
    // PFS when the initiator sent a KE.
    let (ke_reply, shared) = match find_ke(p) {
        Some((group, ke)) => {
            let Some(g) = DhGroup::from_id(group) else {
                return Ok(vec![Payload::notify(notify::NO_PROPOSAL_CHOSEN, vec![])]);
            };
            let dh = DhPrivate::generate(g, ctx.rng);
            let s = dh.shared(ke).map_err(|_| Reason::MissingPayload)?;
            (
                Some(Payload::Ke {
                    group,
                    data: dh.public().to_vec(),
                }),
                Some(s),
            )
        }
        None => (None, None),
    };
    let new_in = match &old {
        // A per-core CHILD_SA's rekey stays on its worker.
        Some(o) if sa.state.per_core => {
            let w = ctx.services.spis.layout().worker_of(o.spi_in);
            ctx.child_spi_for(w)
        }
        // A per-core one goes to a worker this IKE SA has none on yet.
        None if per_core => ctx.child_spi_apart(&live),
        _ => ctx.child_spi(),
    };
    let nr = ctx.nonce();
    let Some(keys) = sa.state.keys.as_ref() else {
        return Err(Reason::NotEncrypted);
    };
    let len = n.esp.keymat_len();
    let (i2r, r2i) = crypto::child_keymat(
        keys.prf,
        &keys.sk_d,
        shared.as_deref().map(|v| v.as_slice()),
        &ni,
        &nr,
        len,
    );
    let child = sa.new_child(
        ctx.now,
        new_in,
        n.spi_out,
        n.esp,
        ChildKeys {
            inbound: i2r,
            outbound: r2i,
        },
        n.tsr.clone(),
        n.tsi.clone(),
    );
    let info = sa.child_info(&child, old.as_ref().map(|c| c.spi_in), false);
    sa.state.children.push(child);
    ctx.event(Event::ChildUp(info));
    // We are rekeying the same CHILD_SA: remember this exchange's lowest nonce for the
    // collision rule when our own answer comes.
    if let Some(o) = &old {
        if let Some(c) = sa
            .state
            .children
            .iter_mut()
            .find(|c| c.spi_in == o.spi_in && c.rekeying)
        {
            c.peer_rekey = Some((new_in, min_nonce(&ni, &nr)));
        }
    }
    let mut reply = vec![
        Payload::Sa(vec![esp_proposal(n.num, &n.esp, new_in)]),
        Payload::Nonce(nr),
    ];
    if let Some(k) = ke_reply {
        reply.push(k);
    }
    reply.push(Payload::TsI(n.tsi));
    reply.push(Payload::TsR(n.tsr));
    if per_core {
        reply.push(Payload::notify(notify::SA_RESOURCE_INFO, vec![]));
    }
    Ok(reply)
}

/// The answer to our CREATE_CHILD_SA request for a CHILD_SA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    old_in: Option<ChildSpi>,
    new_spi: ChildSpi,
    ni: &[u8],
    dh: Option<DhPrivate>,
    esp: &[EspProposal],
    p: &[Payload],
) {
    let (Some(props), Some(nr), Some(tsi), Some(tsr)) =
        (find_sa(p), find_nonce(p), find_tsi(p), find_tsr(p))
    else {
        return refused(sa, ctx, old_in, new_spi);
    };
    let Some((_, e, spi_out)) = select_esp(props, esp) else {
        ctx.count(Reason::ResponseMalformed);
        return refused(sa, ctx, old_in, new_spi);
    };
    let shared = match (&dh, find_ke(p)) {
        (Some(d), Some((_, ke))) => d.shared(ke).ok(),
        _ => None,
    };
    let Some(keys) = sa.state.keys.as_ref() else {
        return;
    };
    let len = e.keymat_len();
    let (i2r, r2i) = crypto::child_keymat(
        keys.prf,
        &keys.sk_d,
        shared.as_deref().map(|v| v.as_slice()),
        ni,
        nr,
        len,
    );
    let child = sa.new_child(
        ctx.now,
        new_spi,
        spi_out,
        e,
        ChildKeys {
            inbound: r2i,
            outbound: i2r,
        },
        tsi.to_vec(),
        tsr.to_vec(),
    );
    let mut info = sa.child_info(&child, old_in, true);
    sa.state.children.push(child);
    let Some(old_in) = old_in else {
        // A further CHILD_SA, not a rekey.
        ctx.event(Event::ChildUp(info));
        return;
    };
    let our_min = min_nonce(ni, nr);
    let Some(old) = sa.state.children.iter_mut().find(|c| c.spi_in == old_in) else {
        ctx.event(Event::ChildUp(info));
        return;
    };
    old.rekeying = false;
    old.replaced = true;
    match old.peer_rekey.take() {
        // Both ends rekeyed it at once (RFC 7296 2.8.1): the CHILD_SA made with the lowest of
        // the four nonces is redundant and its creator deletes it. If that is ours, we never
        // send on it, delete it, and leave the old one to the peer, whose rekey won.
        Some((_, peer_min)) if our_min < peer_min => {
            info.redundant = true;
            sa.pending.queue.push_front(Action::DeleteChild(new_spi));
        }
        // Ours won (or there was no collision): make-before-break, the old one goes now.
        _ => sa.pending.queue.push_front(Action::DeleteChild(old_in)),
    }
    ctx.event(Event::ChildUp(info));
}

/// The peer refused our CHILD_SA request (e.g. TEMPORARY_FAILURE during a simultaneous rekey)
/// or answered what we cannot use: a rekey is tried again later.
fn refused(sa: &mut IkeSa, ctx: &mut Ctx<'_>, old_in: Option<ChildSpi>, new_spi: ChildSpi) {
    ctx.services.spis.release_child(new_spi);
    let retry = ctx.now.saturating_add(ctx.config.rekey_retry);
    if let Some(c) = sa
        .state
        .children
        .iter_mut()
        .find(|c| Some(c.spi_in) == old_in)
    {
        c.rekey_at = Some(retry);
        c.rekeying = false;
    }
}
