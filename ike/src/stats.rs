//! Why a received message was not processed as it stands, counted by reason.
//!
//! Owns: [`Reason`] (one name per kind of malformed or unexpected message, and what RFC 7296
//! says to do about it) and [`Stats`] (the counters the endpoint exposes).
//! Must never: count a message under two reasons, or leave one uncounted.
//!
//! | reason | what arrived | answer |
//! |---|---|---|
//! | `Truncated` | shorter than an IKE header | none |
//! | `LengthMismatch` | the header's length is not the datagram's (trailing bytes, or cut short) | none |
//! | `OldMajorVersion` | major version below 2 (IKEv1) | none |
//! | `NewerMajorVersion` | major version above 2 | to a request: INVALID_MAJOR_VERSION, unprotected, version 2.0 in its header (2.5) |
//! | `InitZeroSpi` | IKE_SA_INIT request with initiator SPI 0 (3.1: never zero) | none |
//! | `InitResponderSpi` | IKE_SA_INIT request that already carries a responder SPI | none |
//! | `InitMessageId` | IKE_SA_INIT request with a message id other than 0 | none (INVALID_MESSAGE_ID is never a response, 3.10.1) |
//! | `InitMalformed` | IKE_SA_INIT request whose payloads do not parse | INVALID_SYNTAX, unprotected |
//! | `InitMissingPayload` | IKE_SA_INIT request without SA, KE or Ni | INVALID_SYNTAX, unprotected |
//! | `InitProposalSpi` | an IKE proposal in IKE_SA_INIT with an SPI (3.3.1: size 0) | INVALID_SYNTAX, unprotected |
//! | `InitKeyExchange` | a KE value its group rejects | INVALID_SYNTAX, unprotected |
//! | `InitCookieMissing` | IKE_SA_INIT request without a COOKIE while cookies are demanded (2.6) | COOKIE, unprotected, no state |
//! | `InitCookieInvalid` | IKE_SA_INIT request whose COOKIE does not check while cookies are demanded | a fresh COOKIE (2.6: as if it had none) |
//! | `InitHalfOpenTotal` | IKE_SA_INIT request while the endpoint holds its maximum of half-open IKE SAs | none (dropped: the initiator retransmits) |
//! | `InitHalfOpenSource` | IKE_SA_INIT request from a source (IPv4 address, IPv6 /64) at its maximum of half-open IKE SAs | none (dropped) |
//! | `InitSpiInUse` | IKE_SA_INIT request, not a retransmission, with the SPI and address of a half-open IKE SA | none |
//! | `UnsupportedCritical` | an unknown payload with the critical bit, in an IKE_SA_INIT request or inside an authenticated request | UNSUPPORTED_CRITICAL_PAYLOAD with the payload type (2.5), unprotected or encrypted alike |
//! | `UnknownSpi` | a request for an IKE SA we do not have | INVALID_IKE_SPI, unprotected, SPIs and message id copied (2.21.4) |
//! | `UnprotectedRequest` | an INFORMATIONAL request whose first payload is a plain Notify: a notification from outside any IKE SA (RFC 7296 1.5, e.g. INVALID_SPI from a peer that restarted) | none (1.5: never answered); one that names one of our IKE SAs is a hint (`exchange::hint`, [`HintStats`]) |
//! | `UnknownSpiResponse` | a response for an IKE SA we do not have | none (a response is never answered) |
//! | `PeerSpiMismatch` | our SPI matches an IKE SA, the peer's does not | none |
//! | `BadMessageId` | a request outside the window, or a response to no request of that id | none (3.10.1) |
//! | `UnexpectedResponse` | a response while no request is outstanding | none |
//! | `OuterMalformed` | the unencrypted part of a protected message does not parse | none (not authenticated, 3.10.1) |
//! | `NotEncrypted` | no SK payload where one is required, or no keys yet | none |
//! | `Integrity` | the SK payload's integrity check fails | none |
//! | `InnerMalformed` | the decrypted payloads do not parse | INVALID_SYNTAX, encrypted; the IKE SA goes (2.21.3) |
//! | `MissingPayload` | an authenticated request without a payload it needs, or with one that is malformed | INVALID_SYNTAX, encrypted; the IKE SA goes |
//! | `UnexpectedExchange` | an authenticated request of an exchange type this IKE SA does not take now | INVALID_SYNTAX, encrypted; the IKE SA goes |
//! | `ResponseMalformed` | a response that does not parse or lacks what it must carry | none (the request is retransmitted, then times out) |
//! | `FragmentUnnegotiated` | an Encrypted Fragment payload on an IKE SA that did not negotiate fragmentation (RFC 7383 2.3), or in IKE_SA_INIT | none |
//! | `FragmentMalformed` | an Encrypted Fragment payload that does not parse, or numbered 0 or above its total (2.5) | none |
//! | `FragmentDuplicate` | a fragment of a message under reassembly that is already held | none |
//! | `FragmentStale` | a fragment whose total is below the one under reassembly (2.6), or a retransmitted fragment other than the first of a request already answered (2.6.1) | none |
//! | `FragmentOverLimit` | a fragment beyond the bounds: more fragments, a longer message or more bytes held in total than configured (the partial message goes too) | none |
//!
//! Unprotected answers (to messages no key vouches for) are rate-limited (2.21.4); one the
//! limit holds back is counted in [`Stats::answers_limited`] besides its reason. COOKIE
//! answers are not: they are shorter than the request they answer (nothing to amplify) and
//! the one way in for a legitimate initiator during a flood. Cookies sent, and cookies
//! received that checked or did not (whether or not one was demanded), have counters of their
//! own ([`Stats::cookies`]). Failed authentications are counted by their reason
//! ([`AuthError::name`], `auth_*`), apart from the message reasons: such an IKE_AUTH was well
//! formed and is answered AUTHENTICATION_FAILED (RFC 7296 2.21.2).

use crate::services::AuthError;

/// Why a received message was dropped or answered with an error. See the module table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Truncated,
    LengthMismatch,
    OldMajorVersion,
    NewerMajorVersion,
    InitZeroSpi,
    InitResponderSpi,
    InitMessageId,
    InitMalformed,
    InitMissingPayload,
    InitProposalSpi,
    InitKeyExchange,
    InitCookieMissing,
    InitCookieInvalid,
    InitHalfOpenTotal,
    InitHalfOpenSource,
    InitSpiInUse,
    UnsupportedCritical,
    UnknownSpi,
    UnprotectedRequest,
    UnknownSpiResponse,
    PeerSpiMismatch,
    BadMessageId,
    UnexpectedResponse,
    OuterMalformed,
    NotEncrypted,
    Integrity,
    InnerMalformed,
    MissingPayload,
    UnexpectedExchange,
    ResponseMalformed,
    FragmentUnnegotiated,
    FragmentMalformed,
    FragmentDuplicate,
    FragmentStale,
    FragmentOverLimit,
}

impl Reason {
    pub const ALL: [Reason; 35] = [
        Reason::Truncated,
        Reason::LengthMismatch,
        Reason::OldMajorVersion,
        Reason::NewerMajorVersion,
        Reason::InitZeroSpi,
        Reason::InitResponderSpi,
        Reason::InitMessageId,
        Reason::InitMalformed,
        Reason::InitMissingPayload,
        Reason::InitProposalSpi,
        Reason::InitKeyExchange,
        Reason::InitCookieMissing,
        Reason::InitCookieInvalid,
        Reason::InitHalfOpenTotal,
        Reason::InitHalfOpenSource,
        Reason::InitSpiInUse,
        Reason::UnsupportedCritical,
        Reason::UnknownSpi,
        Reason::UnprotectedRequest,
        Reason::UnknownSpiResponse,
        Reason::PeerSpiMismatch,
        Reason::BadMessageId,
        Reason::UnexpectedResponse,
        Reason::OuterMalformed,
        Reason::NotEncrypted,
        Reason::Integrity,
        Reason::InnerMalformed,
        Reason::MissingPayload,
        Reason::UnexpectedExchange,
        Reason::ResponseMalformed,
        Reason::FragmentUnnegotiated,
        Reason::FragmentMalformed,
        Reason::FragmentDuplicate,
        Reason::FragmentStale,
        Reason::FragmentOverLimit,
    ];

    /// The name views and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::LengthMismatch => "length_mismatch",
            Reason::OldMajorVersion => "old_major_version",
            Reason::NewerMajorVersion => "newer_major_version",
            Reason::InitZeroSpi => "init_zero_spi",
            Reason::InitResponderSpi => "init_responder_spi",
            Reason::InitMessageId => "init_message_id",
            Reason::InitMalformed => "init_malformed",
            Reason::InitMissingPayload => "init_missing_payload",
            Reason::InitProposalSpi => "init_proposal_spi",
            Reason::InitKeyExchange => "init_key_exchange",
            Reason::InitCookieMissing => "init_cookie_missing",
            Reason::InitCookieInvalid => "init_cookie_invalid",
            Reason::InitHalfOpenTotal => "init_half_open_total",
            Reason::InitHalfOpenSource => "init_half_open_source",
            Reason::InitSpiInUse => "init_spi_in_use",
            Reason::UnsupportedCritical => "unsupported_critical",
            Reason::UnknownSpi => "unknown_spi",
            Reason::UnprotectedRequest => "unprotected_request",
            Reason::UnknownSpiResponse => "unknown_spi_response",
            Reason::PeerSpiMismatch => "peer_spi_mismatch",
            Reason::BadMessageId => "bad_message_id",
            Reason::UnexpectedResponse => "unexpected_response",
            Reason::OuterMalformed => "outer_malformed",
            Reason::NotEncrypted => "not_encrypted",
            Reason::Integrity => "integrity",
            Reason::InnerMalformed => "inner_malformed",
            Reason::MissingPayload => "missing_payload",
            Reason::UnexpectedExchange => "unexpected_exchange",
            Reason::ResponseMalformed => "response_malformed",
            Reason::FragmentUnnegotiated => "fragment_unnegotiated",
            Reason::FragmentMalformed => "fragment_malformed",
            Reason::FragmentDuplicate => "fragment_duplicate",
            Reason::FragmentStale => "fragment_stale",
            Reason::FragmentOverLimit => "fragment_over_limit",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The endpoint's counters of messages it did not take as they stood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    counts: [u64; Reason::ALL.len()],
    /// Unprotected error answers the rate limit held back (their reasons are counted too).
    pub answers_limited: u64,
    pub cookies: CookieStats,
    pub handshakes: HandshakeStats,
    pub fragments: FragmentStats,
    pub mid_sync: MidSyncStats,
    pub gateway_move: GatewayMoveStats,
    pub hints: HintStats,
    /// IKE_AUTH exchanges that failed, by why (ours or the peer's authentication).
    auth: AuthCounts,
}

/// One counter per [`AuthError`] (more than `Default` derives for an array).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AuthCounts([u64; AuthError::ALL.len()]);

impl Default for AuthCounts {
    fn default() -> Self {
        AuthCounts([0; AuthError::ALL.len()])
    }
}

/// IKE SAs made by a handshake (IKE_SA_INIT and IKE_AUTH; an IKE SA rekey or an adopted
/// record is none): started = completed + failed + those under way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    /// IKE SAs created by `connect` (initiator) or by an IKE_SA_INIT request admitted (responder).
    pub started: u64,
    /// Handshakes that established their IKE SA.
    pub completed: u64,
    /// IKE SAs gone before their handshake completed (refused, timed out, half-open expiry).
    pub failed: u64,
}

/// What the gateway move (`exchange::gw_move`, an HA standby on another subnet) did, on
/// either end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayMoveStats {
    /// Gateway: IKE SAs told the new address (ROAMGATE_GATEWAY_MOVED), sent an RFC 5685
    /// REDIRECT, or left to reconnect (the peer took neither).
    pub announced: u64,
    pub redirected: u64,
    pub unsupported: u64,
    /// Gateway: redirected IKE SAs replaced by the client's new one (it came back with
    /// REDIRECTED_FROM; the lease went along, the old IKE SA was deleted).
    pub replaced: u64,
    /// Client: authenticated announcements taken (a probe started), IKE SAs moved after the
    /// probe's answer came back with our COOKIE2, probes that went unanswered or came back
    /// without it (the IKE SA stays where it was), announcements refused (malformed, not
    /// negotiated, or from the wrong role).
    pub heard: u64,
    pub moved: u64,
    pub probe_failed: u64,
    pub refused: u64,
}

/// Unauthenticated signals that an IKE SA may be dead (RFC 7296 1.5, 2.21.4:
/// `exchange::hint`), and what came of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintStats {
    /// Unprotected INVALID_SPI notifications naming the outbound SPI of one of our CHILD_SAs,
    /// from its IKE SA's peer address.
    pub invalid_spi: u64,
    /// Unprotected INVALID_IKE_SPI answers to an outstanding request of ours (its SPIs and
    /// message id).
    pub invalid_ike_spi: u64,
    /// Hints the rate limit held back (a check started within the hold-off, or the IKE SA
    /// not established).
    pub held_back: u64,
    /// Liveness checks a hint started (or requests under way sent again at once).
    pub probes: u64,
    /// Hinted checks that got an authenticated answer: the IKE SA carries on.
    pub answered: u64,
    /// IKE SAs declared down: their hinted check ran out and the peer said INVALID_IKE_SPI.
    pub peer_lost: u64,
    /// Gateway side: unprotected INVALID_SPI notifications sent for ESP that came with an
    /// SPI we do not have from an address we have no IKE SA with (RFC 7296 1.5).
    pub invalid_spi_sent: u64,
    /// INVALID_SPI notifications sent inside an IKE SA for ESP from its peer with an SPI we
    /// do not have (RFC 7296 2.21.4, 3.10.1), and those the per-IKE-SA rate limit held back
    /// (one under way, or one within `EndpointConfig::invalid_spi_interval`).
    pub invalid_spi_sent_protected: u64,
    pub invalid_spi_send_limited: u64,
    /// Authenticated INVALID_SPI notifications (inside an IKE SA) that named the outbound
    /// SPI of one of our CHILD_SAs: that CHILD_SA is made anew, the IKE SA stays; and those
    /// that named none of ours (ignored).
    pub invalid_spi_children_recreated: u64,
    pub invalid_spi_protected_ignored: u64,
}

/// What IKE fragmentation (RFC 7383) did. A fragment that failed its integrity check is
/// counted as `Integrity`, other dropped ones under their `Fragment*` reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentStats {
    /// Messages we sent as fragments (each retransmission of one counts again), and the
    /// fragments in them.
    pub messages_sent: u64,
    pub sent: u64,
    /// Authenticated fragments kept for reassembly.
    pub received: u64,
    /// Messages reassembled from all their fragments.
    pub reassembled: u64,
    /// Reassemblies started over: a fragment with a larger total came (RFC 7383 2.6), or
    /// the first of another message replaced an unfinished one.
    pub restarted: u64,
    /// Unfinished messages dropped when their time ran out.
    pub expired: u64,
}

/// What RFC 6311 message-id synchronization did. Its messages carry message id 0, outside the
/// window: those refused are counted here, not under a [`Reason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MidSyncStats {
    /// IKEV2_MESSAGE_ID_SYNC requests we started (retransmissions not counted).
    pub started: u64,
    /// Our requests answered with our nonce: the message ids were taken on.
    pub synced: u64,
    /// A peer's requests we answered.
    pub answered: u64,
    /// Authenticated answers with another nonce than our request's (a replayed old answer):
    /// dropped, the request stays outstanding.
    pub wrong_nonce: u64,
    /// A peer's requests whose EXPECTED_SEND_REQ_MESSAGE_ID is below the next request id we
    /// expect from it (a replayed old request): dropped unanswered, as strongSwan does.
    pub stale: u64,
    /// Answers to our sync whose notify does not parse (missing, not 12 bytes of data):
    /// dropped, the request stays outstanding. (A message id 0 request that is not a sync
    /// goes through the ordinary window: `BadMessageId` unless 0 is the id expected.)
    pub malformed: u64,
}

/// What the responder's cookies (RFC 7296 2.6) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieStats {
    /// COOKIE answers sent.
    pub sent: u64,
    /// IKE_SA_INIT requests with a COOKIE we made for them (current or previous secret).
    pub valid: u64,
    /// IKE_SA_INIT requests with a COOKIE that does not check (wrong, stale, or for another
    /// request).
    pub invalid: u64,
}

// By hand: `Default` is derived for arrays of at most 32 elements.
impl Default for Stats {
    fn default() -> Self {
        Stats {
            counts: [0; Reason::ALL.len()],
            answers_limited: 0,
            cookies: CookieStats::default(),
            handshakes: HandshakeStats::default(),
            fragments: FragmentStats::default(),
            mid_sync: MidSyncStats::default(),
            gateway_move: GatewayMoveStats::default(),
            hints: HintStats::default(),
            auth: AuthCounts::default(),
        }
    }
}

impl Stats {
    pub fn count(&mut self, r: Reason) {
        if let Some(c) = self.counts.get_mut(r.index()) {
            *c = c.saturating_add(1);
        }
    }

    pub fn count_auth(&mut self, e: AuthError) {
        if let Some(i) = AuthError::ALL
            .iter()
            .position(|x| core::mem::discriminant(x) == core::mem::discriminant(&e))
        {
            if let Some(c) = self.auth.0.get_mut(i) {
                *c = c.saturating_add(1);
            }
        }
    }

    /// How often authentication failed for this reason (`Method(_)` counts every method).
    pub fn get_auth(&self, e: AuthError) -> u64 {
        AuthError::ALL
            .iter()
            .position(|x| core::mem::discriminant(x) == core::mem::discriminant(&e))
            .and_then(|i| self.auth.0.get(i).copied())
            .unwrap_or(0)
    }

    pub fn get(&self, r: Reason) -> u64 {
        self.counts.get(r.index()).copied().unwrap_or(0)
    }

    /// Every reason with a count above zero.
    pub fn nonzero(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Every counter by the name views show: the reasons above zero, then the rate limit's
    /// and the cookies' counters (always).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = self
            .nonzero()
            .into_iter()
            .map(|(r, n)| (r.name(), n))
            .collect();
        v.push(("answers_limited", self.answers_limited));
        v.push(("cookies_sent", self.cookies.sent));
        v.push(("cookies_valid", self.cookies.valid));
        v.push(("cookies_invalid", self.cookies.invalid));
        v.push(("handshakes_started", self.handshakes.started));
        v.push(("handshakes_completed", self.handshakes.completed));
        v.push(("handshakes_failed", self.handshakes.failed));
        let f = &self.fragments;
        v.push(("fragmented_messages_sent", f.messages_sent));
        v.push(("fragments_sent", f.sent));
        v.push(("fragments_received", f.received));
        v.push(("fragments_reassembled", f.reassembled));
        v.push(("fragment_reassembly_restarted", f.restarted));
        v.push(("fragment_reassembly_expired", f.expired));
        let h = &self.hints;
        v.push(("hint_invalid_spi", h.invalid_spi));
        v.push(("hint_invalid_ike_spi", h.invalid_ike_spi));
        v.push(("hint_held_back", h.held_back));
        v.push(("hint_probes", h.probes));
        v.push(("hint_probes_answered", h.answered));
        v.push(("hint_peer_lost", h.peer_lost));
        v.push(("invalid_spi_sent", h.invalid_spi_sent));
        v.push(("invalid_spi_sent_protected", h.invalid_spi_sent_protected));
        v.push(("invalid_spi_send_limited", h.invalid_spi_send_limited));
        v.push((
            "invalid_spi_children_recreated",
            h.invalid_spi_children_recreated,
        ));
        v.push((
            "invalid_spi_protected_ignored",
            h.invalid_spi_protected_ignored,
        ));
        v.extend(
            AuthError::ALL
                .iter()
                .map(|e| (e.name(), self.get_auth(*e)))
                .filter(|(_, n)| *n > 0),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let mut s = Stats::default();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} is in ALL at its own index");
            for _ in 0..=i {
                s.count(*r);
            }
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(s.get(*r), i as u64 + 1);
        }
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
