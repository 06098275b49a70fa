//! INFORMATIONAL (RFC 7296 1.4): deleting the IKE SA or CHILD_SAs (both directions of a
//! CHILD_SA go together, 1.4.1), liveness checks (an empty request), and INVALID_SPI (3.10.1:
//! ESP arrived for an SPI we do not have, told to the peer inside its IKE SA). The MOBIKE
//! notifies an INFORMATIONAL may carry are `mobike`'s.
//!
//! Owns: the INFORMATIONAL messages of deletes, liveness and INVALID_SPI.
//! Must never: delete a CHILD_SA the request did not name; answer a delete with anything but
//! the deletes of the peer's CHILD_SAs' partners (1.4.1).

use std::net::SocketAddr;

use crate::event::{DownReason, Event, PrivateData};
use crate::exchange::{gw_move, mobike, send_request, Action, Ctx, Reply, Request};
use crate::ids::ChildSpi;
use crate::ike_sa::{IkeSa, Phase};
use crate::wire::{exchange, notify, proto, Payload};

/// The peer's INFORMATIONAL request.
pub(crate) fn on_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    p: &[Payload],
) -> Reply {
    let mut reply = Vec::new();
    mobike::on_request(sa, ctx, local, remote, p, &mut reply);
    gw_move::on_request(sa, ctx, p, &mut reply);
    private_notifies(sa, ctx, p);
    invalid_spi(sa, ctx, p);
    for x in p {
        let Payload::Delete { protocol, spis } = x else {
            continue;
        };
        match *protocol {
            proto::IKE => {
                sa.state.phase = Phase::Deleting;
                if let Some(out) = sa.pending.outstanding.take() {
                    super::release_reserved(ctx, &out.request);
                }
                sa.down_children(ctx);
                ctx.event(Event::IkeDown {
                    ike: sa.id(),
                    reason: DownReason::PeerDeleted,
                });
                ctx.services.pool.release(sa.id());
                return Ok(Vec::new());
            }
            proto::ESP => {
                let mut ours = Vec::new();
                for s in spis {
                    // A malformed or unknown SPI names nothing of ours (3.11: ignore it).
                    let Some(out_spi) = ChildSpi::from_slice(s) else {
                        continue;
                    };
                    let Some(i) = sa.state.children.iter().position(|c| c.spi_out == out_spi)
                    else {
                        continue;
                    };
                    let c = sa.state.children.remove(i);
                    ours.push(c.spi_in.to_bytes().to_vec());
                    ctx.event(Event::ChildDown {
                        ike: sa.id(),
                        spi_in: c.spi_in,
                        spi_out: c.spi_out,
                    });
                }
                if !ours.is_empty() {
                    reply.push(Payload::Delete {
                        protocol: proto::ESP,
                        spis: ours,
                    });
                }
            }
            _ => {}
        }
    }
    // Anything else (an empty request: liveness; status notifies; INVALID_SPI, acted on
    // above) gets an empty answer.
    Ok(reply)
}

/// Deletes the IKE SA: its children go down now, the IKE SA when the peer answers.
pub(crate) fn start_delete_ike(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    sa.state.phase = Phase::Deleting;
    sa.down_children(ctx);
    let p = [Payload::Delete {
        protocol: proto::IKE,
        spis: vec![],
    }];
    send_request(sa, ctx, exchange::INFORMATIONAL, &p, Request::DeleteIke);
}

/// Deletes the CHILD_SA with inbound SPI `spi_in`; false when it is gone already.
pub(crate) fn start_delete_child(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi_in: ChildSpi) -> bool {
    if !sa.state.children.iter().any(|c| c.spi_in == spi_in) {
        return false;
    }
    let p = [Payload::Delete {
        protocol: proto::ESP,
        spis: vec![spi_in.to_bytes().to_vec()],
    }];
    send_request(
        sa,
        ctx,
        exchange::INFORMATIONAL,
        &p,
        Request::DeleteChild { spi_in },
    );
    true
}

/// The peer answered our delete of CHILD_SA `spi_in`: it goes.
pub(crate) fn on_delete_child_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi_in: ChildSpi) {
    if let Some(i) = sa.state.children.iter().position(|c| c.spi_in == spi_in) {
        let c = sa.state.children.remove(i);
        ctx.event(Event::ChildDown {
            ike: sa.id(),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
        });
    }
}

/// INVALID_SPI inside the IKE SA (RFC 7296 3.10.1, 2.21.4): the peer got ESP from us for an
/// SPI it has no SA for. Authenticated (unlike the unprotected one, `exchange::hint`), so a
/// notification naming the outbound SPI of one of our CHILD_SAs is believed: that CHILD_SA
/// is made anew with its selectors (its "rekey" without REKEY_SA, `child::start_rekey`; the
/// old one is deleted when the new one is up, make-before-break), the IKE SA stays. One
/// naming none of ours (already replaced, never ours) is counted and ignored.
fn invalid_spi(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) {
    if sa.state.phase != Phase::Established {
        return;
    }
    for x in p {
        let Payload::Notify {
            kind: notify::INVALID_SPI,
            protocol,
            data,
            ..
        } = x
        else {
            continue;
        };
        let named = (*protocol == proto::ESP)
            .then(|| ChildSpi::from_slice(data))
            .flatten();
        let child = named.and_then(|spi| {
            sa.state
                .children
                .iter_mut()
                .find(|c| c.spi_out == spi && !c.replaced)
        });
        let h = &mut ctx.stats.hints;
        let Some(c) = child else {
            h.invalid_spi_protected_ignored = h.invalid_spi_protected_ignored.saturating_add(1);
            continue;
        };
        h.invalid_spi_children_recreated = h.invalid_spi_children_recreated.saturating_add(1);
        c.lost = true;
        let spi_in = c.spi_in;
        // A rekey of it under way (or queued) becomes the new one; a refused one is tried
        // again at `rekey_retry`, then without REKEY_SA.
        let queued = sa
            .pending
            .queue
            .iter()
            .any(|a| *a == Action::RekeyChild(spi_in));
        if !c.rekeying && !queued {
            sa.pending.queue.push_back(Action::RekeyChild(spi_in));
        }
    }
}

/// Tells the peer that ESP for `spi` reached us and we have no such SA (RFC 7296 3.10.1).
pub(crate) fn start_invalid_spi(sa: &mut IkeSa, ctx: &mut Ctx<'_>, spi: ChildSpi) {
    let p = [Payload::Notify {
        protocol: proto::ESP,
        spi: Vec::new(),
        kind: notify::INVALID_SPI,
        data: spi.to_bytes().to_vec(),
    }];
    send_request(sa, ctx, exchange::INFORMATIONAL, &p, Request::InvalidSpi);
}

/// Private-use status notifies (RFC 7296 3.10.1: 40960-65535) in the peer's INFORMATIONAL
/// request that no exchange of ours takes (the gateway move's are `gw_move`'s) go up to the
/// endpoint's user, with the IKE SA they came in: that SA authenticated them. Only on an
/// established SA; each is answered by the empty response like any unknown status notify.
fn private_notifies(sa: &IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) {
    if sa.state.phase != Phase::Established {
        return;
    }
    for x in p {
        let Payload::Notify { kind, data, .. } = x else {
            continue;
        };
        if *kind >= notify::PRIVATE_STATUS_FIRST
            && *kind != notify::ROAMGATE_GATEWAY_MOVE_SUPPORTED
            && *kind != notify::ROAMGATE_GATEWAY_MOVED
        {
            ctx.event(Event::PrivateNotify {
                ike: sa.id(),
                kind: *kind,
                data: PrivateData(zeroize::Zeroizing::new(data.clone())),
            });
        }
    }
}

/// Sends the first private-use notify the user queued (`Endpoint::send_private`), alone in an
/// INFORMATIONAL request; retransmitted as every request is (RFC 7296 2.1) until answered.
pub(crate) fn start_private(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let Some((kind, data)) = sa.pending.private_out.pop_front() else {
        return false;
    };
    let p = [Payload::Notify {
        protocol: 0,
        spi: Vec::new(),
        kind,
        data: data.to_vec(),
    }];
    send_request(sa, ctx, exchange::INFORMATIONAL, &p, Request::Private);
    true
}
