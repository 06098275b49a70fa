//! MOBIKE (RFC 4555): negotiated by MOBIKE_SUPPORTED in IKE_AUTH. The mobile end moves its
//! IKE SA and CHILD_SAs to a new address at once ([`roam`]) and tells the peer with
//! UPDATE_SA_ADDRESSES, NAT detection and a COOKIE2 (return routability, 3.6); an update that
//! times out is tried at the peer's announced additional addresses (3.3, 3.11). The other end
//! moves only on an authenticated request inside the window, to the addresses that request
//! came from and to (3.5).
//!
//! Owns: the MOBIKE notifies and the moves they make.
//! Must never: move an IKE SA on anything but an authenticated, in-window request or our own
//! roam; accept an update answer without our COOKIE2.

use std::net::{IpAddr, SocketAddr};

use crate::event::DownReason;
use crate::exchange::{
    find_notify, nat_detected, nat_notifies, send_request, Action, Ctx, Request,
};
use crate::ike_sa::{IkeSa, Phase};
use crate::timer::Timer;
use crate::wire::{exchange, notify, Payload};

/// Why a roam could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoamError {
    NoMobike,
}

/// Our address for this IKE SA is now `local`: the IKE SA and its CHILD_SAs move at once on
/// our side (`Event::IkeMoved`, make-before-break: the peer accepts ESP by SPI from anywhere)
/// and an UPDATE_SA_ADDRESSES request tells the peer; its retransmissions leave from the new
/// address. `additional` are further addresses of ours, announced with it.
pub(crate) fn roam(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: IpAddr,
    additional: Vec<IpAddr>,
) -> Result<(), RoamError> {
    if !sa.state.mobike {
        return Err(RoamError::NoMobike);
    }
    sa.state.local = SocketAddr::new(local, sa.state.local.port());
    sa.state.our_additional = additional;
    ctx.event(sa.moved_event());
    if !sa.pending.queue.contains(&Action::UpdateAddresses) {
        sa.pending.queue.push_back(Action::UpdateAddresses);
    }
    super::next_action(sa, ctx);
    Ok(())
}

/// The MOBIKE part of an authenticated INFORMATIONAL request (it passed the integrity check
/// and the window, so a replayed or forged one never gets here).
pub(crate) fn on_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    p: &[Payload],
    reply: &mut Vec<Payload>,
) {
    if !sa.state.mobike || sa.state.phase != Phase::Established {
        return;
    }
    let announced: Vec<IpAddr> = p
        .iter()
        .filter_map(|x| match x {
            Payload::Notify {
                kind: notify::ADDITIONAL_IP4_ADDRESS,
                data,
                ..
            } => <[u8; 4]>::try_from(data.as_slice()).ok().map(IpAddr::from),
            Payload::Notify {
                kind: notify::ADDITIONAL_IP6_ADDRESS,
                data,
                ..
            } => <[u8; 16]>::try_from(data.as_slice()).ok().map(IpAddr::from),
            _ => None,
        })
        .collect();
    if !announced.is_empty() || find_notify(p, notify::NO_ADDITIONAL_ADDRESSES).is_some() {
        sa.state.peer_additional = announced;
    }
    if find_notify(p, notify::UPDATE_SA_ADDRESSES).is_some() {
        let (spi_i, spi_r) = (sa.state.spi_i, sa.state.spi_r);
        sa.state.local = local;
        sa.state.remote = remote;
        sa.set_nat(nat_detected(p, spi_i, spi_r, local, remote));
        reply.extend(nat_notifies(spi_i, spi_r, local, remote));
        ctx.event(sa.moved_event());
    }
    if let Some(c) = find_notify(p, notify::COOKIE2) {
        reply.push(Payload::notify(notify::COOKIE2, c.to_vec()));
    }
}

/// Sends UPDATE_SA_ADDRESSES from where the IKE SA is now.
pub(crate) fn start_update(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    let mut cookie2 = vec![0u8; 16];
    rand_core::RngCore::fill_bytes(ctx.rng, &mut cookie2);
    let (spi_i, spi_r) = (sa.state.spi_i, sa.state.spi_r);
    let mut p = vec![Payload::notify(notify::UPDATE_SA_ADDRESSES, vec![])];
    p.extend(nat_notifies(spi_i, spi_r, sa.state.local, sa.state.remote));
    p.push(Payload::notify(notify::COOKIE2, cookie2.clone()));
    if sa.state.our_additional.is_empty() {
        p.push(Payload::notify(notify::NO_ADDITIONAL_ADDRESSES, vec![]));
    }
    for a in &sa.state.our_additional {
        p.push(match a {
            IpAddr::V4(v) => Payload::notify(notify::ADDITIONAL_IP4_ADDRESS, v.octets().to_vec()),
            IpAddr::V6(v) => Payload::notify(notify::ADDITIONAL_IP6_ADDRESS, v.octets().to_vec()),
        });
    }
    send_request(
        sa,
        ctx,
        exchange::INFORMATIONAL,
        &p,
        Request::UpdateAddresses {
            cookie2,
            tried: Vec::new(),
        },
    );
}

/// The answer to our UPDATE_SA_ADDRESSES: the COOKIE2 must come back (return routability);
/// NAT detection may change whether ESP goes in UDP.
pub(crate) fn on_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    cookie2: &[u8],
    p: &[Payload],
) {
    if find_notify(p, notify::COOKIE2) != Some(cookie2) {
        sa.close(ctx, DownReason::ReturnRoutability);
        return;
    }
    let nat = nat_detected(p, sa.state.spi_i, sa.state.spi_r, local, remote);
    let encap_before = sa.udp_encap();
    sa.set_nat(nat);
    sa.state.local = local;
    sa.state.remote = remote;
    if sa.udp_encap() != encap_before {
        ctx.event(sa.moved_event());
    }
}

/// Our update's retransmissions ran out: the next of the peer's additional addresses (of our
/// family) we have not tried yet, if any. True when one is being tried.
pub(crate) fn try_next_address(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let (remote, local_v4) = (sa.state.remote, sa.state.local.is_ipv4());
    let Some(out) = sa.pending.outstanding.as_mut() else {
        return false;
    };
    let Request::UpdateAddresses { tried, .. } = &mut out.request else {
        return false;
    };
    tried.push(remote.ip());
    let Some(next) = sa
        .state
        .peer_additional
        .iter()
        .find(|a| !tried.contains(a) && a.is_ipv4() == local_v4)
        .copied()
    else {
        return false;
    };
    sa.state.remote = SocketAddr::new(next, remote.port());
    out.tries = 0;
    let data = out.data.clone();
    sa.timers.set(
        Timer::Retransmit,
        Some(ctx.now.saturating_add(ctx.config.retransmit.timeout)),
    );
    ctx.send_datagrams(sa.state.local, sa.state.remote, &data);
    ctx.event(sa.moved_event());
    true
}
