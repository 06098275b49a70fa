//! EAP (RFC 3748) for road warriors in IKE_AUTH (RFC 7296 2.16), the gateway's side: the
//! packet codec, the [`EapServer`] interface of a backend that decides who the peer is, and
//! two backends, both sans-IO state machines:
//!
//! - [`mschapv2::LocalMschapv2`]: EAP-MSCHAPv2 (RFC 2759 over EAP as
//!   draft-kamath-pppext-eap-mschapv2 frames it) against a local user file that holds NT
//!   hashes, never passwords; the MSK as RFC 3079 derives it.
//! - [`radius::RadiusClient`]: pass-through to a RADIUS server (RFC 3579: EAP-Message,
//!   Message-Authenticator, State; the MSK from MS-MPPE-Recv/Send-Key, RFC 2548). Its
//!   datagrams and deadlines go through the endpoint ([`crate::Endpoint::poll_eap_transmit`],
//!   [`crate::Endpoint::handle_eap_datagram`]); a driver owns the socket.
//!
//! The IKE side (`exchange::eap_auth`) asks for the peer's identity itself (EAP-Request/
//! Identity) and hands the backend the Identity response to begin with; whatever the backend
//! answers goes back to the peer in the IKE_AUTH response, or, while the backend waits for its
//! server ([`Step::Pending`]), the IKE_AUTH request stays unanswered (its retransmissions are
//! dropped, never passed to the backend twice) until the backend's result resumes it.
//!
//! Owns: EAP framing, the backends' conversations keyed by IKE SA.
//! Must never: keep a password or print an NT hash, MSK or RADIUS secret (`Debug` redacts).

pub mod mschapv2;
pub mod radius;

use std::collections::{BTreeMap, BTreeSet};

use rand_core::RngCore;

use crate::crypto::Secret;
use crate::ids::IkeSaId;
use crate::services::AuthError;
use crate::time::Instant;

/// EAP codes (RFC 3748 4).
pub mod code {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SUCCESS: u8 = 3;
    pub const FAILURE: u8 = 4;
}

/// EAP method types (RFC 3748 5, IANA "Method Types").
pub mod method {
    pub const IDENTITY: u8 = 1;
    pub const NOTIFICATION: u8 = 2;
    pub const NAK: u8 = 3;
    pub const TLS: u8 = 13;
    pub const MSCHAPV2: u8 = 26;
}

/// The longest identity we keep (RADIUS User-Name holds at most 253 octets, RFC 2865 5.1).
pub const MAX_IDENTITY: usize = 253;

/// One EAP packet, read from a buffer: code, identifier and what follows the 4-byte header
/// (for requests and responses: the type, then its data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub code: u8,
    pub id: u8,
    pub body: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The packet at the start of `b` (its Length field says how long; trailing bytes are
    /// ignored), or `None` if it is shorter than it says or than a header.
    pub fn parse(b: &'a [u8]) -> Option<Packet<'a>> {
        let (&code, rest) = b.split_first()?;
        let (&id, rest) = rest.split_first()?;
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let body = b.get(4..len)?;
        Some(Packet { code, id, body })
    }

    /// The method type of a request or response.
    pub fn kind(&self) -> Option<u8> {
        match self.code {
            code::REQUEST | code::RESPONSE => self.body.first().copied(),
            _ => None,
        }
    }

    /// What follows the type of a request or response.
    pub fn type_data(&self) -> &'a [u8] {
        self.body.get(1..).unwrap_or(&[])
    }
}

/// An EAP packet: `code`, `id`, then the parts of its body.
pub fn packet(code: u8, id: u8, body: &[&[u8]]) -> Vec<u8> {
    let len: usize = body
        .iter()
        .map(|b| b.len())
        .sum::<usize>()
        .saturating_add(4);
    let mut v = Vec::with_capacity(len);
    v.push(code);
    v.push(id);
    v.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    for b in body {
        v.extend_from_slice(b);
    }
    v
}

/// What a backend says to the peer's latest response.
pub enum Step {
    /// The next EAP request for the peer.
    Request(Vec<u8>),
    /// The answer comes from the backend's server later (its result resumes the exchange).
    Pending,
    /// The peer is `identity`; `packet` (EAP-Success) goes to it and `msk` keys the AUTH
    /// payloads that end IKE_AUTH (RFC 7296 2.16).
    Success {
        msk: Secret,
        identity: String,
        packet: Vec<u8>,
    },
    /// The peer is refused for `why`; `packet` (EAP-Failure) goes to it.
    Failure { why: AuthError, packet: Vec<u8> },
}

impl core::fmt::Debug for Step {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Step::Request(p) => write!(f, "Request({} bytes)", p.len()),
            Step::Pending => write!(f, "Pending"),
            Step::Success { identity, .. } => write!(f, "Success({identity}, <msk>)"),
            Step::Failure { why, .. } => write!(f, "Failure({why:?})"),
        }
    }
}

/// A server-side EAP backend, one conversation per IKE SA.
pub trait EapServer: Send {
    /// A conversation for IKE SA `ike` begins: the peer said it is `identity` in
    /// `response` (its EAP-Response/Identity, identifier `id`).
    fn begin(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        identity: &str,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step;

    /// The peer's next EAP response.
    fn respond(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step;

    /// The IKE SA went: its conversation (and any request to a server for it) is dropped.
    fn forget(&mut self, ike: IkeSaId);

    /// A datagram for the backend's server (RADIUS), if any.
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// A datagram from the backend's server.
    fn handle_datagram(&mut self, _now: Instant, _data: &[u8]) {}

    /// The backend's next deadline (a RADIUS retransmission).
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    /// A result for a conversation that was [`Step::Pending`].
    fn poll_result(&mut self) -> Option<(IkeSaId, Step)> {
        None
    }

    /// The backend's own counters by name (for views and metrics).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The endpoint's EAP: which connections authenticate their peers by EAP and the backend
/// that does it; which connections authenticate us by EAP (a client) and as whom.
#[derive(Default)]
pub struct EapService {
    /// Names of the connections whose peers authenticate by EAP (the gateway itself by its
    /// connection's credential, a certificate).
    pub connections: BTreeSet<String>,
    pub server: Option<Box<dyn EapServer>>,
    /// Connections on which we are the EAP peer (EAP-MSCHAPv2): our user name and NT hash.
    pub clients: BTreeMap<String, (String, mschapv2::NtHash)>,
}

impl core::fmt::Debug for EapService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EapService")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_short_ones_do_not_parse() {
        let p = packet(code::REQUEST, 7, &[&[method::IDENTITY]]);
        assert_eq!(p, [1, 7, 0, 5, 1]);
        let q = Packet::parse(&p).unwrap();
        assert_eq!((q.code, q.id, q.kind()), (1, 7, Some(method::IDENTITY)));
        assert!(q.type_data().is_empty());
        // Length past the buffer, shorter than the header, or empty: none.
        assert!(Packet::parse(&[1, 7, 0, 9, 1]).is_none());
        assert!(Packet::parse(&[1, 7, 0]).is_none());
        assert!(Packet::parse(&[]).is_none());
        assert!(Packet::parse(&[1, 7, 0, 2]).is_none());
        // Success has no type.
        let s = packet(code::SUCCESS, 9, &[]);
        assert_eq!(Packet::parse(&s).unwrap().kind(), None);
    }
}
