//! IKE fragmentation (RFC 7383): a protected message too large for the path goes as several
//! IKE messages, each with one Encrypted Fragment payload (type 53) sealed on its own, so
//! that no IP fragment is needed (paths that drop IP fragments then still carry an IKE_AUTH
//! with a certificate chain).
//!
//! - Negotiation (2.3): both ends send IKEV2_FRAGMENTATION_SUPPORTED in IKE_SA_INIT
//!   (`exchange::init`); [`IkeSaState::fragmentation`](crate::ike_sa::IkeSaState) says both did.
//! - Sending ([`protect`], 2.5): a message whose IP datagram would exceed the configured size
//!   for the peer's address family (IP and UDP headers and the non-ESP marker counted) is cut
//!   into chunks of its payload chain; each chunk is sealed with the IKE SA's outbound key
//!   and a fresh IV (its own counter value, so no GCM nonce repeats), the header and the
//!   fragment's fixed part as associated data. Only fragment 1 names the first inner payload.
//!   The fragments are kept back to back as one byte string (each an IKE message whose header
//!   length delimits it, [`datagrams`]), where an unfragmented message is kept: the
//!   outstanding request for retransmission, the last response for a retransmitted request,
//!   the record of an IKE SA. A retransmission sends every fragment again.
//! - Receiving ([`receive`], 2.6): at most one message under reassembly per IKE SA and
//!   direction (the window is one message each way). A fragment is checked against the
//!   message under way before anything is decrypted (a duplicate, a smaller total: dropped),
//!   then authenticated; only an authenticated fragment is kept, replaces a reassembly of
//!   another message or starts over one with a smaller total. Bounded by the fragments per
//!   message, the bytes per message and the bytes held by the whole endpoint ([`Budget`]);
//!   a reassembly not finished within the timeout is dropped (`Timer::Reassembly`). The
//!   reassembled payloads are parsed as an SK payload's would be.
//! - A request already answered: its first fragment again gets the cached response again,
//!   its other fragments are dropped (2.6.1).
//!
//! Path MTU discovery (2.5.2) is not done: the sizes are configured.
//!
//! Owns: the fragments of a message both ways and the bytes held for reassembly.
//! Must never: keep or count as received a fragment that failed its integrity check; hold
//! more than its bounds; panic on any datagram.

use std::net::SocketAddr;

use zeroize::Zeroizing;

use crate::exchange::Ctx;
use crate::ike_sa::{parse_inner, IkeSa, OpenError, Role};
use crate::stats::Reason;
use crate::time::Instant;
use crate::timer::Timer;
use crate::wire::{
    self, exchange, payload, FragmentHeader, Header, Payload, HEADER_LEN, SKF_HEADER_LEN,
};

/// The datagrams kept back to back in `bytes`, each an IKE message delimited by its header's
/// length (a byte string that does not split that way is one datagram).
pub(crate) fn datagrams(bytes: &[u8]) -> Datagrams<'_> {
    Datagrams(bytes)
}

pub(crate) struct Datagrams<'a>(&'a [u8]);

impl<'a> Iterator for Datagrams<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let len = self
            .0
            .get(24..28)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .and_then(|b| usize::try_from(u32::from_be_bytes(b)).ok())
            .filter(|n| *n >= HEADER_LEN && *n <= self.0.len())
            .unwrap_or(self.0.len());
        let (one, rest) = self.0.split_at_checked(len).unwrap_or((self.0, &[]));
        self.0 = rest;
        Some(one)
    }
}

/// The IKE message size a fragment to `remote` may have.
fn message_limit(ctx: &Ctx<'_>, remote: SocketAddr, marker: bool) -> usize {
    let f = &ctx.config.fragmentation;
    let (size, ip) = if remote.is_ipv4() {
        (f.size_v4, 20usize)
    } else {
        (f.size_v6, 40usize)
    };
    usize::from(size)
        .saturating_sub(ip)
        .saturating_sub(8)
        .saturating_sub(if marker { 4 } else { 0 })
}

/// The protected message with payloads `inner` as the datagrams to send to `remote`, back
/// to back: one message, or its fragments when the IKE SA negotiated fragmentation and the
/// message would exceed the fragment size.
pub(crate) fn protect(
    sa: &mut IkeSa,
    ctx: &Ctx<'_>,
    remote: SocketAddr,
    exch: u8,
    id: u32,
    response: bool,
    inner: &[Payload],
) -> Vec<u8> {
    let mut body = Zeroizing::new(Vec::new());
    let first = wire::emit_chain(inner, &mut body);
    let marker = remote.port() == 4500 || sa.state.local.port() == 4500;
    let limit = message_limit(ctx, remote, marker);
    let sealed = |sa: &IkeSa, n: usize| {
        sa.state
            .sk_out
            .as_ref()
            .map_or(n, |c| c.sealed_len(n))
            .saturating_add(HEADER_LEN)
            .saturating_add(SKF_HEADER_LEN)
    };
    let fits = sealed(sa, body.len()) <= limit;
    if fits
        || !sa.state.fragmentation
        || !ctx.config.fragmentation.enabled
        || exch == exchange::IKE_SA_INIT
        || sa.state.sk_out.is_none()
    {
        return sa.seal_message(exch, id, response, first, &body);
    }
    // The longest chunk whose fragment fits (padding makes the overhead step, not grow).
    let mut chunk = limit.saturating_sub(sealed(sa, 0)).saturating_add(32);
    while chunk > 0 && sealed(sa, chunk) > limit {
        chunk = chunk.saturating_sub(1);
    }
    let n = body.len().div_ceil(chunk.max(1));
    let Ok(total) = u16::try_from(n) else {
        return sa.seal_message(exch, id, response, first, &body);
    };
    if chunk == 0 || total > ctx.config.fragmentation.max_fragments {
        return sa.seal_message(exch, id, response, first, &body);
    }
    // Chunks of nearly equal length rather than full ones and a short last one.
    let even = body.len().div_ceil(n.max(1)).max(1);
    let mut out = Vec::with_capacity(limit.saturating_mul(n));
    for (i, part) in body.chunks(even).enumerate() {
        let number = u16::try_from(i.saturating_add(1)).unwrap_or(u16::MAX);
        let hdr = FragmentHeader {
            first_inner: if number == 1 { first } else { payload::NONE },
            number,
            total,
        };
        seal_fragment(sa, exch, id, response, hdr, part, &mut out);
    }
    out
}

/// Appends one fragment message: the IKE header, the Encrypted Fragment payload's fixed part
/// (both the associated data) and `part` sealed.
fn seal_fragment(
    sa: &mut IkeSa,
    exch: u8,
    id: u32,
    response: bool,
    hdr: FragmentHeader,
    part: &[u8],
    out: &mut Vec<u8>,
) {
    let s = &mut sa.state;
    let mut flags = if response { wire::FLAG_RESPONSE } else { 0 };
    if s.role == Role::Initiator {
        flags |= wire::FLAG_INITIATOR;
    }
    let Some(cipher) = s.sk_out.as_mut() else {
        return;
    };
    let payload_len = cipher.sealed_len(part.len()).saturating_add(SKF_HEADER_LEN);
    let total = HEADER_LEN.saturating_add(payload_len);
    let mut msg = Vec::with_capacity(total);
    Header {
        spi_i: s.spi_i.0,
        spi_r: s.spi_r.0,
        next_payload: payload::SKF,
        exchange: exch,
        flags,
        message_id: id,
        length: u32::try_from(total).unwrap_or(u32::MAX),
    }
    .emit(&mut msg);
    hdr.emit(u16::try_from(payload_len).unwrap_or(u16::MAX), &mut msg);
    let sealed = cipher.seal(&msg, part);
    msg.extend_from_slice(&sealed);
    out.extend_from_slice(&msg);
}

/// Bytes of decrypted fragments held for reassembly by all IKE SAs of an endpoint.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    held: usize,
}

impl Budget {
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

/// One IKE SA's messages under reassembly: the peer's request, the response to ours.
#[derive(Default)]
pub(crate) struct Reassembly {
    slots: [Option<Partial>; 2],
}

struct Partial {
    id: u32,
    total: u16,
    first_inner: u8,
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    have: u16,
    held: usize,
    expires: Instant,
}

impl Reassembly {
    /// Bytes held.
    pub(crate) fn held(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .fold(0usize, |a, p| a.saturating_add(p.held))
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|p| p.expires).min()
    }

    /// Drops everything held (the IKE SA goes), returning its bytes to `budget`.
    pub(crate) fn clear(&mut self, budget: &mut Budget) {
        budget.held = budget.held.saturating_sub(self.held());
        self.slots = [None, None];
    }
}

/// What a fragment led to.
pub(crate) enum Received {
    /// Kept (more are to come) or dropped (counted).
    Incomplete,
    /// The last missing fragment: the message's payloads, or why they do not parse.
    Complete(Result<Vec<Payload>, OpenError>),
}

fn drop_slot(sa: &mut IkeSa, ctx: &mut Ctx<'_>, dir: usize) {
    if let Some(slot) = sa.pending.reassembly.slots.get_mut(dir) {
        if let Some(p) = slot.take() {
            let b = &mut ctx.out.reassembly;
            b.held = b.held.saturating_sub(p.held);
        }
    }
    arm(sa);
}

fn arm(sa: &mut IkeSa) {
    let next = sa.pending.reassembly.next_expiry();
    sa.timers.set(Timer::Reassembly, next);
}

/// A message whose first payload is an Encrypted Fragment, on IKE SA `sa` (its SPIs, and
/// the window for its message id, already checked).
pub(crate) fn receive(sa: &mut IkeSa, ctx: &mut Ctx<'_>, h: &Header, msg: &[u8]) -> Received {
    let cfg = ctx.config.fragmentation;
    if !sa.state.fragmentation || !cfg.enabled || h.exchange == exchange::IKE_SA_INIT {
        ctx.count(Reason::FragmentUnnegotiated);
        return Received::Incomplete;
    }
    let Ok(f) = FragmentHeader::parse(msg) else {
        ctx.count(Reason::FragmentMalformed);
        return Received::Incomplete;
    };
    if f.total > cfg.max_fragments {
        ctx.count(Reason::FragmentOverLimit);
        return Received::Incomplete;
    }
    let dir = usize::from(h.is_response());
    let index = usize::from(f.number.saturating_sub(1));
    // Checked against the message under way before anything is decrypted.
    let start_over = match sa
        .pending
        .reassembly
        .slots
        .get(dir)
        .and_then(Option::as_ref)
    {
        Some(p) if p.id == h.message_id => {
            if f.total < p.total {
                ctx.count(Reason::FragmentStale);
                return Received::Incomplete;
            }
            if f.total == p.total && p.parts.get(index).is_some_and(Option::is_some) {
                ctx.count(Reason::FragmentDuplicate);
                return Received::Incomplete;
            }
            f.total > p.total
        }
        Some(_) => true,
        None => false,
    };
    let split = HEADER_LEN.saturating_add(SKF_HEADER_LEN);
    let (Some(aad), Some(body)) = (msg.get(..split), msg.get(split..)) else {
        ctx.count(Reason::FragmentMalformed);
        return Received::Incomplete;
    };
    let Some(cipher) = sa.state.sk_in.as_ref() else {
        ctx.count(Reason::NotEncrypted);
        return Received::Incomplete;
    };
    let Ok(plain) = cipher.open(aad, body) else {
        ctx.count(Reason::Integrity);
        return Received::Incomplete;
    };
    // Authenticated: it may now replace what it supersedes (RFC 7383 2.6).
    if start_over {
        drop_slot(sa, ctx, dir);
        ctx.stats.fragments.restarted = ctx.stats.fragments.restarted.saturating_add(1);
    }
    let Some(slot) = sa.pending.reassembly.slots.get_mut(dir) else {
        return Received::Incomplete;
    };
    let p = slot.get_or_insert_with(|| Partial {
        id: h.message_id,
        total: f.total,
        first_inner: payload::NONE,
        parts: (0..f.total).map(|_| None).collect(),
        have: 0,
        held: 0,
        expires: ctx.now.saturating_add(cfg.timeout),
    });
    let len = plain.len();
    if p.held.saturating_add(len) > cfg.max_message {
        ctx.count(Reason::FragmentOverLimit);
        drop_slot(sa, ctx, dir);
        return Received::Incomplete;
    }
    if ctx.out.reassembly.held.saturating_add(len) > cfg.max_total {
        // The endpoint holds all it may: this fragment goes, the peer retransmits it.
        ctx.count(Reason::FragmentOverLimit);
        arm(sa);
        return Received::Incomplete;
    }
    let Some(part) = p.parts.get_mut(index) else {
        ctx.count(Reason::FragmentMalformed);
        return Received::Incomplete;
    };
    *part = Some(Zeroizing::new(plain.to_vec()));
    if f.number == 1 {
        p.first_inner = f.first_inner;
    }
    p.have = p.have.saturating_add(1);
    p.held = p.held.saturating_add(len);
    ctx.out.reassembly.held = ctx.out.reassembly.held.saturating_add(len);
    ctx.stats.fragments.received = ctx.stats.fragments.received.saturating_add(1);
    if p.have < p.total {
        arm(sa);
        return Received::Incomplete;
    }
    let mut whole = Zeroizing::new(Vec::with_capacity(p.held));
    for x in p.parts.iter().flatten() {
        whole.extend_from_slice(x);
    }
    let first = p.first_inner;
    drop_slot(sa, ctx, dir);
    ctx.stats.fragments.reassembled = ctx.stats.fragments.reassembled.saturating_add(1);
    Received::Complete(parse_inner(&whole, first))
}

/// The first fragment of a request we already answered asks for the answer again (RFC 7383
/// 2.6.1); true for that one. Any other is dropped, counted.
pub(crate) fn is_first(ctx: &mut Ctx<'_>, msg: &[u8]) -> bool {
    match FragmentHeader::parse(msg) {
        Ok(f) if f.number == 1 => true,
        Ok(_) => {
            ctx.count(Reason::FragmentStale);
            false
        }
        Err(_) => {
            ctx.count(Reason::FragmentMalformed);
            false
        }
    }
}

/// Reassemblies whose time ran out go.
pub(crate) fn expire(sa: &mut IkeSa, ctx: &mut Ctx<'_>) {
    for dir in 0..2 {
        let due = sa
            .pending
            .reassembly
            .slots
            .get(dir)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.expires <= ctx.now);
        if due {
            drop_slot(sa, ctx, dir);
            ctx.stats.fragments.expired = ctx.stats.fragments.expired.saturating_add(1);
        }
    }
    arm(sa);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![fill; len];
        m[24..28].copy_from_slice(&(len as u32).to_be_bytes());
        m
    }

    #[test]
    fn datagrams_split_at_header_lengths() {
        let (a, b) = (msg(40, 1), msg(300, 2));
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let v: Vec<&[u8]> = datagrams(&both).collect();
        assert_eq!(v, vec![a.as_slice(), b.as_slice()]);
        // A byte string that does not split: one datagram, whatever it holds.
        let junk = vec![0xffu8; 50];
        assert_eq!(datagrams(&junk).collect::<Vec<_>>(), vec![junk.as_slice()]);
        assert_eq!(datagrams(&[1, 2, 3]).count(), 1);
        assert_eq!(datagrams(&[]).count(), 0);
    }
}
