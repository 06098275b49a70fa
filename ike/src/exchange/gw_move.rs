//! The gateway moves (an HA standby on another subnet took over, issue 17 item 6): the
//! gateway-side counterpart of MOBIKE, where RFC 4555 lets only the initiator move.
//!
//! **The notify.** Two private-use status types (RFC 7296 3.10.1: 40960..65535):
//! - `ROAMGATE_GATEWAY_MOVE_SUPPORTED` (47100), empty, in IKE_AUTH: the client offers it, the
//!   gateway answers it only to a client that offered it; both then hold `gateway_move`. A
//!   peer that does not know the type ignores it (3.10.1), and a standard client never gets it.
//! - `ROAMGATE_GATEWAY_MOVED` (47101) in an INFORMATIONAL request of the gateway, inside the
//!   IKE SA: `family (1: 4 or 6) | address (4 or 16) | port (2, network order)`, 7 or 19
//!   bytes: "this IKE SA and its CHILD_SAs are now at this address".
//!
//! **Why it is safe.** The announcement is a request of the IKE SA: encrypted and
//! integrity-protected with its keys (a forged one fails the check and is dropped, counted
//! `integrity`), and inside the window (a replay has an old message id: the cached answer is
//! sent again or it is dropped, nothing is processed twice). The client takes it only on an
//! IKE SA it initiated that negotiated the move, and it does not move on the announcement:
//! it first sends a request of its own with a fresh random COOKIE2 to the announced address
//! (return routability, as MOBIKE's COOKIE2 check, RFC 4555 3.5 and 5.2), and moves the IKE
//! SA and every CHILD_SA ([`crate::Event::IkeMoved`]) only when that request's authenticated
//! answer carries the COOKIE2 back. A probe that gets no answer there within [`PROBE_TRIES`]
//! tries goes on, the same request with the same message id, as a liveness check at the
//! address the IKE SA is at (its message id is spent: a request dropped instead would leave
//! a hole in the window the old gateway would never get past); one whose answer lacks the
//! cookie moves nothing either. Either way the IKE SA stays where it was: an announcement
//! never strands the client (it ends only if the old address does not answer either, as
//! any liveness check would end it). A request of the
//! client that was under way when the announcement came is retransmitted to both addresses
//! (the new gateway holds the same window and answers it).
//!
//! **Standard clients.** A client that sent REDIRECT_SUPPORTED in IKE_SA_INIT (RFC 5685 3;
//! strongSwan does unless `follow_redirects = no`) gets a REDIRECT inside the IKE SA instead
//! (5685 section 5: `GW Ident Type | Len | address`, no nonce): it makes a new IKE SA with the
//! new gateway (a new key exchange, as the RFC has it). Its IKE_SA_INIT then carries
//! REDIRECTED_FROM instead of REDIRECT_SUPPORTED (5685 5; strongSwan's `ike_init.c`), which
//! implies the support: the new IKE SA is redirected at the next takeover too. When that new
//! IKE SA authenticates with the identity and connection of the IKE SA we redirected, it
//! replaces it (`auth::complete`): the redirected IKE SA's lease goes to the new one (the
//! client asks for any address, `0.0.0.0`, and its traffic still comes from the one it had:
//! another address would strand every socket bound to it), and the redirected IKE SA is
//! closed here at once, without an exchange (`DownReason::Replaced`; the client deletes its
//! own copy, 5685 5): a request of ours may be under way on it that the client will never
//! answer (strongSwan destroys the old IKE SA when it cannot answer our IKEV2_MESSAGE_ID_SYNC
//! after the REDIRECT, both with message id 0), and an HA standby must not keep the old IKE
//! SA's record, whose lease is the new one's now. Only an IKE SA that came with
//! REDIRECTED_FROM replaces one, and only one that authenticated as the same peer.
//! Any other client reconnects when its liveness check fails (its configuration must name
//! the new gateway's address).
//!
//! Owns: the announcement, the redirect, the client's probe and move.
//! Must never: move a client's IKE SA before the probe's answer with our COOKIE2 came back;
//! end the IKE SA because a probe failed.

use std::net::{IpAddr, SocketAddr};

use crate::exchange::{find_notify, send_request_to, Action, Ctx, Request};
use crate::ike_sa::{IkeSa, Phase, Role};
use crate::wire::{exchange, notify, Payload};

/// Tries of a probe to the announced address (the first send and its retransmissions)
/// before it is given up and the IKE SA stays where it was.
pub const PROBE_TRIES: u32 = 4;

/// A redirected IKE SA's connection, peer identity and peer address (not its port): what
/// the client's new IKE SA must match to replace it. Two devices sharing one identity behind
/// different addresses never take each other's IKE SA and lease.
pub(crate) type RedirectKey = (String, String, IpAddr);

/// The key of an IKE SA of connection `conn` with peer `id` at `remote`.
pub(crate) fn redirect_key(conn: &str, id: &crate::wire::Id, remote: SocketAddr) -> RedirectKey {
    (conn.to_owned(), id.display(), remote.ip())
}

/// What the gateway did to tell a client it moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayMove {
    /// ROAMGATE_GATEWAY_MOVED (the client negotiated it).
    Announced,
    /// An RFC 5685 REDIRECT (the client announced REDIRECT_SUPPORTED).
    Redirected,
    /// Neither: the client reconnects after its liveness check fails.
    Unsupported,
}

/// The announced address's notify data.
pub(crate) fn encode(a: SocketAddr) -> Vec<u8> {
    let mut d = Vec::with_capacity(19);
    match a.ip() {
        IpAddr::V4(v) => {
            d.push(4);
            d.extend_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            d.push(6);
            d.extend_from_slice(&v.octets());
        }
    }
    d.extend_from_slice(&a.port().to_be_bytes());
    d
}

/// The announced address, or `None` for anything but exactly 7 or 19 bytes of the right
/// family, or port 0, or an unspecified address.
pub(crate) fn decode(d: &[u8]) -> Option<SocketAddr> {
    let (ip, port): (IpAddr, &[u8]) = match d {
        [4, rest @ ..] if rest.len() == 6 => {
            let (a, p) = rest.split_at(4);
            (IpAddr::from(<[u8; 4]>::try_from(a).ok()?), p)
        }
        [6, rest @ ..] if rest.len() == 18 => {
            let (a, p) = rest.split_at(16);
            (IpAddr::from(<[u8; 16]>::try_from(a).ok()?), p)
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(<[u8; 2]>::try_from(port).ok()?);
    if port == 0 || ip.is_unspecified() {
        return None;
    }
    Some(SocketAddr::new(ip, port))
}

/// RFC 5685 8: the REDIRECT notify's data for a gateway at `ip`, without nonce (section 5).
pub(crate) fn redirect_data(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => [&[1u8, 4][..], &v.octets()].concat(),
        IpAddr::V6(v) => [&[2u8, 16][..], &v.octets()].concat(),
    }
}

/// Gateway: this IKE SA is ours now at `local` (the port stays). Our CHILD_SAs tunnel from
/// it at once (an `IkeMoved` event); the client is told as it negotiated.
pub(crate) fn announce(sa: &mut IkeSa, ctx: &mut Ctx<'_>, local: IpAddr) -> GatewayMove {
    sa.state.local = SocketAddr::new(local, sa.state.local.port());
    ctx.event(sa.moved_event());
    let st = &mut ctx.stats.gateway_move;
    let how = if sa.state.gateway_move {
        st.announced = st.announced.saturating_add(1);
        GatewayMove::Announced
    } else if sa.state.redirect {
        st.redirected = st.redirected.saturating_add(1);
        // The client comes back with a new IKE SA (REDIRECTED_FROM in its IKE_SA_INIT): that
        // one takes this one's place (`auth::complete`).
        if let (Some(cfg), Some(id)) = (&sa.state.peer, &sa.state.remote_id) {
            let key = redirect_key(&cfg.name, id, sa.state.remote);
            ctx.out.redirected.insert(key, sa.id());
        }
        GatewayMove::Redirected
    } else {
        st.unsupported = st.unsupported.saturating_add(1);
        GatewayMove::Unsupported
    };
    let a = match how {
        GatewayMove::Announced => Some(Action::AnnounceMove),
        GatewayMove::Redirected => Some(Action::Redirect),
        GatewayMove::Unsupported => None,
    };
    if let Some(a) = a {
        if !sa.pending.queue.contains(&a) {
            sa.pending.queue.push_back(a);
        }
    }
    super::next_action(sa, ctx);
    how
}

/// Gateway: sends the announcement (or the redirect) from where the IKE SA is now.
pub(crate) fn start_announce(sa: &mut IkeSa, ctx: &mut Ctx<'_>, redirect: bool) {
    let p = if redirect {
        Payload::notify(notify::REDIRECT, redirect_data(sa.state.local.ip()))
    } else {
        Payload::notify(notify::ROAMGATE_GATEWAY_MOVED, encode(sa.state.local))
    };
    let remote = sa.state.remote;
    send_request_to(
        sa,
        ctx,
        remote,
        exchange::INFORMATIONAL,
        &[p],
        Request::AnnounceMove,
    );
}

/// The gateway-move part of an authenticated, in-window INFORMATIONAL request: a client
/// takes an announcement (the probe is queued, sent after the answer); a gateway echoes a
/// probe's COOKIE2 (MOBIKE's part does when MOBIKE was negotiated).
pub(crate) fn on_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    p: &[Payload],
    reply: &mut Vec<Payload>,
) {
    if let Some(c) = find_notify(p, notify::COOKIE2) {
        let echoed = reply.iter().any(|x| {
            matches!(
                x,
                Payload::Notify {
                    kind: notify::COOKIE2,
                    ..
                }
            )
        });
        if !echoed {
            reply.push(Payload::notify(notify::COOKIE2, c.to_vec()));
        }
    }
    let Some(d) = find_notify(p, notify::ROAMGATE_GATEWAY_MOVED) else {
        return;
    };
    let st = &mut ctx.stats.gateway_move;
    let to = match decode(d) {
        Some(to)
            if sa.state.gateway_move
                && sa.state.role == Role::Initiator
                && sa.state.phase == Phase::Established =>
        {
            to
        }
        _ => {
            st.refused = st.refused.saturating_add(1);
            return;
        }
    };
    if to == sa.state.remote {
        return;
    }
    st.heard = st.heard.saturating_add(1);
    sa.pending.gateway_moved = Some(to);
    if !sa.pending.queue.contains(&Action::ProbeGateway) {
        sa.pending.queue.push_back(Action::ProbeGateway);
    }
}

/// Client: the probe to the announced address (false when there is none any more).
pub(crate) fn start_probe(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let Some(to) = sa.pending.gateway_moved else {
        return false;
    };
    if to == sa.state.remote {
        sa.pending.gateway_moved = None;
        return false;
    }
    let mut cookie2 = vec![0u8; 16];
    rand_core::RngCore::fill_bytes(ctx.rng, &mut cookie2);
    send_request_to(
        sa,
        ctx,
        to,
        exchange::INFORMATIONAL,
        &[Payload::notify(notify::COOKIE2, cookie2.clone())],
        Request::ProbeGateway { cookie2, to },
    );
    true
}

/// Client: the probe's authenticated answer. With our COOKIE2 the IKE SA and its CHILD_SAs
/// move to the announced address; without it nothing moves.
pub(crate) fn on_probe_response(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    cookie2: &[u8],
    to: SocketAddr,
    p: &[Payload],
) {
    if sa.pending.gateway_moved == Some(to) {
        sa.pending.gateway_moved = None;
    }
    let st = &mut ctx.stats.gateway_move;
    if find_notify(p, notify::COOKIE2) != Some(cookie2) {
        st.probe_failed = st.probe_failed.saturating_add(1);
        return;
    }
    st.moved = st.moved.saturating_add(1);
    sa.state.remote = to;
    ctx.event(sa.moved_event());
}

/// Client: the probe went unanswered at the announced address: given up there (the request
/// goes on as a liveness check where the IKE SA is), nothing moves.
pub(crate) fn probe_gave_up(sa: &mut IkeSa, ctx: &mut Ctx<'_>, to: SocketAddr) {
    if sa.pending.gateway_moved == Some(to) {
        sa.pending.gateway_moved = None;
    }
    let st = &mut ctx.stats.gateway_move;
    st.probe_failed = st.probe_failed.saturating_add(1);
}
