//! Hints that an IKE SA may be dead, from messages nothing authenticates (RFC 7296 1.5,
//! 2.21.4), and the liveness check they start:
//!
//! - an unprotected INVALID_SPI notification (an INFORMATIONAL request outside any IKE SA,
//!   never answered) that names the outbound SPI of one of our CHILD_SAs and comes from its
//!   IKE SA's peer address: the peer got our ESP and has no SA for it (it restarted);
//! - an unprotected INVALID_IKE_SPI answer to our outstanding request, with its SPIs and
//!   message id: the peer no longer knows the IKE SA.
//!
//! Anyone who saw our packets could forge either, so neither changes any SA by itself. A hint
//! starts a liveness check at once (an empty INFORMATIONAL; or, while a request of ours is
//! under way, that request is sent again at once and becomes the check) on the short hint
//! schedule ([`EndpointConfig::hint_probe`](crate::EndpointConfig::hint_probe)). Any
//! authenticated answer ends the check and the IKE SA carries on. When the schedule runs out
//! with no authenticated answer and the peer answered the check with INVALID_IKE_SPI, the IKE
//! SA is down ([`DownReason::PeerLostState`]): what decides is the absence of an
//! authenticated answer, as for dead-peer detection, only sooner because the peer said it
//! lost the IKE SA. A check that ran out without that answer goes on as the ordinary
//! retransmissions of its request (a silent peer is dead-peer detection's business).
//!
//! Rate limit (2.21.4: "limit the frequency of such tests"): one check per IKE SA at a time,
//! none within [`EndpointConfig::hint_holdoff`](crate::EndpointConfig::hint_holdoff) of the
//! last one started; what is held back is counted.
//!
//! Owns: the plausibility checks and the hinted check's schedule.
//! Must never: change an SA because of an unauthenticated message alone; answer one.

use crate::event::DownReason;
use crate::ike_sa::{IkeSa, Phase};
use crate::timer::Timer;
use crate::wire::exchange;

use super::{release_reserved, send_request, Ctx, Request};

/// Which hint arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    InvalidSpi,
    InvalidIkeSpi,
}

/// The state of a hinted check, on the request that carries it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HintCheck {
    /// Sends after the first.
    pub tries: u32,
    /// The peer answered the check INVALID_IKE_SPI.
    pub refused: bool,
}

/// A plausible hint about IKE SA `sa`: counted, and a check started unless the rate limit
/// holds it back.
pub(crate) fn on_hint(sa: &mut IkeSa, ctx: &mut Ctx<'_>, signal: Signal) {
    let h = &mut ctx.stats.hints;
    match signal {
        Signal::InvalidSpi => h.invalid_spi = h.invalid_spi.saturating_add(1),
        Signal::InvalidIkeSpi => h.invalid_ike_spi = h.invalid_ike_spi.saturating_add(1),
    }
    let now = ctx.now;
    if let Some(c) = sa
        .pending
        .outstanding
        .as_mut()
        .and_then(|o| o.hint.as_mut())
    {
        // A check under way: an INVALID_IKE_SPI answer to it is what lets it end early.
        c.refused |= signal == Signal::InvalidIkeSpi;
        return;
    }
    let recent = sa
        .pending
        .hint_at
        .is_some_and(|t| now < t.saturating_add(ctx.config.hint_holdoff));
    let probe_elsewhere = matches!(
        sa.pending.outstanding.as_ref().map(|o| &o.request),
        Some(Request::ProbeGateway { .. } | Request::Init | Request::Auth { .. })
    );
    if sa.state.phase != Phase::Established || recent || probe_elsewhere {
        h.held_back = h.held_back.saturating_add(1);
        return;
    }
    h.probes = h.probes.saturating_add(1);
    sa.pending.hint_at = Some(now);
    let check = HintCheck {
        tries: 0,
        refused: signal == Signal::InvalidIkeSpi,
    };
    let wait = ctx.config.hint_probe.timeout;
    match sa.pending.outstanding.as_mut() {
        Some(out) => {
            // The request under way is the check: sent again now, on the hint schedule.
            out.hint = Some(check);
            let data = out.data.clone();
            sa.timers
                .set(Timer::Retransmit, Some(now.saturating_add(wait)));
            ctx.send_datagrams(sa.state.local, sa.state.remote, &data);
        }
        None => {
            send_request(sa, ctx, exchange::INFORMATIONAL, &[], Request::Liveness);
            sa.timers
                .set(Timer::Retransmit, Some(now.saturating_add(wait)));
            if let Some(out) = sa.pending.outstanding.as_mut() {
                out.hint = Some(check);
            }
        }
    }
}

/// The retransmission timer of a request that carries a hinted check: true if handled here
/// (sent again on the hint schedule, or the IKE SA declared down); false when the check ran
/// out without INVALID_IKE_SPI and the request goes on as an ordinary one.
pub(crate) fn retransmit(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    let hp = ctx.config.hint_probe;
    let Some(out) = sa.pending.outstanding.as_mut() else {
        return false;
    };
    let Some(c) = out.hint.as_mut() else {
        return false;
    };
    if c.tries < hp.tries {
        c.tries = c.tries.saturating_add(1);
        let wait = hp.wait(c.tries);
        let data = out.data.clone();
        sa.timers
            .set(Timer::Retransmit, Some(ctx.now.saturating_add(wait)));
        ctx.send_datagrams(sa.state.local, sa.state.remote, &data);
        return true;
    }
    if !c.refused {
        out.hint = None;
        return false;
    }
    if let Some(out) = sa.pending.outstanding.take() {
        release_reserved(ctx, &out.request);
    }
    let h = &mut ctx.stats.hints;
    h.peer_lost = h.peer_lost.saturating_add(1);
    sa.close(ctx, DownReason::PeerLostState);
    true
}

/// An authenticated answer to a request that carried a hinted check.
pub(crate) fn answered(ctx: &mut Ctx<'_>) {
    let h = &mut ctx.stats.hints;
    h.answered = h.answered.saturating_add(1);
}
