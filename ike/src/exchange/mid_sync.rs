//! RFC 6311 message-id synchronization (IKEV2_MESSAGE_ID_SYNC): an HA node that took an IKE
//! SA over from a replicated record may hold message ids behind the peer's (an exchange the
//! old node completed after its last replication), and asks the peer for its own.
//!
//! Negotiated per IKE SA: both ends put IKEV2_MESSAGE_ID_SYNC_SUPPORTED (16420) into the
//! first IKE_AUTH message each sends (`auth`; strongSwan 5.9.8 announces it as initiator).
//! The exchange is an INFORMATIONAL with message id 0 (outside the window, neither end's
//! counters move for it) that carries exactly one IKEV2_MESSAGE_ID_SYNC (16422) notify,
//! protocol 0, no SPI, 12 bytes of data: a 4-byte nonce, EXPECTED_SEND_REQ_MESSAGE_ID (the
//! next request id the sender will use) and EXPECTED_RECV_REQ_MESSAGE_ID (the next request id
//! it expects), in network order.
//!
//! - Requester (the node that took over, [`start`]): sends its next request id moved
//!   [`SEND_AHEAD`] forward and the next one it expects, with a fresh random nonce,
//!   retransmitted unchanged like any request.
//!   The answer must echo the nonce (an authenticated answer with another nonce, e.g. a
//!   replayed old one, is dropped and the request stays outstanding); its values are taken
//!   on, never moving a counter back.
//! - Responder ([`on_request`]): a request whose EXPECTED_SEND_REQ_MESSAGE_ID is below the
//!   next request id it expects (a replayed old request) is dropped unanswered (as strongSwan
//!   does); otherwise it takes M2 = max(that, its own) as the next request id it expects and
//!   answers with P2 = max(EXPECTED_RECV_REQ_MESSAGE_ID, its own next request id, or the id
//!   of its request under way) and M2, the same nonce, message id 0. A request of its own
//!   under way keeps its id: with P2 at that id the new node takes it as new; above it, the
//!   new node holds the answer the old one gave (its replicated last response) and repeats
//!   it.
//!
//! One sync per IKE SA keys: strongSwan 5.9.8 makes its AES-GCM IV from the message id
//! (`iv_gen_seq`: each id once, and once more in a second space for ids below the last),
//! so its answers with message id 0 use up that id: a second sync on the same keys makes it
//! refuse to encrypt ("no IV") and destroy the IKE SA. The IKE SA (and its record) remembers
//! that it asked (`mid_sync_used`, in its record too); an IKE SA rekey makes new keys and
//! may sync again.
//!
//! Owns: the IKEV2_MESSAGE_ID_SYNC messages of an IKE SA and the counters they move.
//! Must never: move a message id back; answer a sync without both ends' announcement;
//! count a message id 0 exchange against the window or cache its answer as the last
//! response.

use std::net::SocketAddr;

use rand_core::RngCore;

use crate::exchange::{Ctx, Outstanding, Request};
use crate::ike_sa::{IkeSa, OpenError, Phase};
use crate::timer::Timer;
use crate::wire::{exchange, notify, Header, Payload};

/// How far past the record's next request id a requester declares its own. The record may
/// lag the old node by the exchanges it started after its last replication (the pair
/// replicates after every exchange, so a few at most), and a responder refuses a sender id
/// below the one it expects (strongSwan 5.9.8 does: "ignore ... with lower than expected
/// sender MID"), so the requester must not guess low; skipping ids is harmless (the
/// responder takes the larger one and expects exactly that next).
pub(crate) const SEND_AHEAD: u32 = 64;

/// The notify's data: nonce, EXPECTED_SEND_REQ_MESSAGE_ID, EXPECTED_RECV_REQ_MESSAGE_ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sync {
    pub nonce: [u8; 4],
    pub send: u32,
    pub recv: u32,
}

impl Sync {
    fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&self.nonce);
        v.extend_from_slice(&self.send.to_be_bytes());
        v.extend_from_slice(&self.recv.to_be_bytes());
        v
    }

    /// The message's one IKEV2_MESSAGE_ID_SYNC, if it carries that and nothing else.
    fn parse(p: &[Payload]) -> Option<Sync> {
        let [Payload::Notify {
            kind, data, spi, ..
        }] = p
        else {
            return None;
        };
        if *kind != notify::IKEV2_MESSAGE_ID_SYNC || !spi.is_empty() {
            return None;
        }
        let d: &[u8; 12] = data.as_slice().try_into().ok()?;
        let [n0, n1, n2, n3, s0, s1, s2, s3, r0, r1, r2, r3] = *d;
        Some(Sync {
            nonce: [n0, n1, n2, n3],
            send: u32::from_be_bytes([s0, s1, s2, s3]),
            recv: u32::from_be_bytes([r0, r1, r2, r3]),
        })
    }

    fn payload(self) -> Payload {
        Payload::Notify {
            protocol: 0,
            spi: Vec::new(),
            kind: notify::IKEV2_MESSAGE_ID_SYNC,
            data: self.to_bytes(),
        }
    }
}

/// Whether a message id 0 request on `sa` may be a sync (before it is opened).
pub(crate) fn may_be_request(sa: &IkeSa, h: &Header) -> bool {
    h.message_id == 0
        && h.exchange == exchange::INFORMATIONAL
        && h.next_payload == crate::wire::payload::SK
        && sa.state.mid_sync
        && sa.state.phase == Phase::Established
}

/// Sends our IKEV2_MESSAGE_ID_SYNC request (the window is free); false when the IKE SA did
/// not negotiate it.
pub(crate) fn start(sa: &mut IkeSa, ctx: &mut Ctx<'_>) -> bool {
    if !sa.state.mid_sync || sa.state.mid_sync_used || sa.state.phase != Phase::Established {
        return false;
    }
    sa.state.mid_sync_used = true;
    let mut nonce = [0u8; 4];
    ctx.rng.fill_bytes(&mut nonce);
    // Past any request the old node may have sent after the record we hold.
    sa.state.next_request_id = sa.state.next_request_id.saturating_add(SEND_AHEAD);
    let ours = Sync {
        nonce,
        send: sa.state.next_request_id,
        recv: sa.state.peer_next_id,
    };
    let remote = sa.state.remote;
    let data = crate::fragment::protect(
        sa,
        ctx,
        remote,
        exchange::INFORMATIONAL,
        0,
        false,
        &[ours.payload()],
    );
    sa.timers.set(
        Timer::Retransmit,
        Some(ctx.now.saturating_add(ctx.config.retransmit.timeout)),
    );
    ctx.send_datagrams(sa.state.local, remote, &data);
    sa.pending.outstanding = Some(Outstanding {
        id: 0,
        data,
        request: Request::MidSync { nonce },
        tries: 0,
        hint: None,
    });
    ctx.stats.mid_sync.started = ctx.stats.mid_sync.started.saturating_add(1);
    true
}

/// Whether the authenticated answer `p` is the answer to our request with `nonce` (counted
/// when not: the caller drops it and keeps waiting).
pub(crate) fn answers(ctx: &mut Ctx<'_>, nonce: [u8; 4], p: &[Payload]) -> bool {
    match Sync::parse(p) {
        Some(s) if s.nonce == nonce => true,
        Some(_) => {
            ctx.stats.mid_sync.wrong_nonce = ctx.stats.mid_sync.wrong_nonce.saturating_add(1);
            false
        }
        None => {
            ctx.stats.mid_sync.malformed = ctx.stats.mid_sync.malformed.saturating_add(1);
            false
        }
    }
}

/// The peer's answer to our request (its nonce checked by [`answers`]): its values taken on.
pub(crate) fn on_response(sa: &mut IkeSa, ctx: &mut Ctx<'_>, p: &[Payload]) {
    let Some(theirs) = Sync::parse(p) else {
        return;
    };
    let s = &mut sa.state;
    s.next_request_id = s.next_request_id.max(theirs.recv);
    set_peer_next(sa, theirs.send);
    ctx.stats.mid_sync.synced = ctx.stats.mid_sync.synced.saturating_add(1);
}

/// The next request id we expect from the peer becomes `next` (never lower); our last
/// response is kept only if it still answers the request before it.
fn set_peer_next(sa: &mut IkeSa, next: u32) {
    let s = &mut sa.state;
    s.peer_next_id = s.peer_next_id.max(next);
    let keep = s
        .last_response
        .as_ref()
        .is_some_and(|(id, _)| id.wrapping_add(1) == s.peer_next_id);
    if !keep {
        s.last_response = None;
    }
}

/// A message id 0 INFORMATIONAL request on an IKE SA that negotiated the sync
/// ([`may_be_request`]): true if it was a sync (answered, or refused as stale) or did not
/// open (counted); false if it opened as something else, for the ordinary window (an
/// initiator that has had no request from its peer yet expects message id 0 as usual).
pub(crate) fn on_request(
    sa: &mut IkeSa,
    ctx: &mut Ctx<'_>,
    local: SocketAddr,
    remote: SocketAddr,
    h: &Header,
    msg: &[u8],
) -> bool {
    let payloads = match sa.open(msg, h) {
        Ok(p) => p,
        Err(OpenError::Drop(r)) => {
            ctx.count(r);
            return true;
        }
        Err(OpenError::Malformed | OpenError::Unsupported(_)) => return false,
    };
    let Some(theirs) = Sync::parse(&payloads) else {
        return false;
    };
    sa.pending.last_heard = ctx.now;
    if theirs.send < sa.state.peer_next_id {
        ctx.stats.mid_sync.stale = ctx.stats.mid_sync.stale.saturating_add(1);
        return true;
    }
    set_peer_next(sa, theirs.send);
    let ours_next = sa
        .pending
        .outstanding
        .as_ref()
        .filter(|o| o.id != 0)
        .map_or(sa.state.next_request_id, |o| o.id);
    let p2 = theirs.recv.max(ours_next);
    sa.state.next_request_id = sa.state.next_request_id.max(p2);
    let reply = Sync {
        nonce: theirs.nonce,
        send: p2,
        recv: sa.state.peer_next_id,
    };
    let data = crate::fragment::protect(
        sa,
        ctx,
        remote,
        exchange::INFORMATIONAL,
        0,
        true,
        &[reply.payload()],
    );
    ctx.send_datagrams(local, remote, &data);
    ctx.stats.mid_sync.answered = ctx.stats.mid_sync.answered.saturating_add(1);
    true
}
