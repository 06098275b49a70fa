//! EAP pass-through to a RADIUS server (RFC 3579 over RFC 2865), sans-IO: each EAP response
//! of a peer goes to the server in an Access-Request (User-Name, NAS-Identifier, EAP-Message,
//! the server's State echoed, Message-Authenticator); an Access-Challenge's EAP-Message goes
//! back to the peer, an Access-Accept ends in EAP-Success with the MSK from its
//! MS-MPPE-Recv-Key and MS-MPPE-Send-Key (RFC 2548 2.4.2-3: decrypted with the shared secret
//! and our Request Authenticator; MSK = Recv | Send, zero-padded to 64 octets as an
//! EAP-MSCHAPv2 peer computes it), an Access-Reject in EAP-Failure.
//!
//! An answer whose Response Authenticator or Message-Authenticator does not check (RFC 3579
//! 3.2: silently discarded) or that answers nothing we asked is dropped and counted; the
//! request is sent again (the same packet, identifier and authenticator, RFC 5080 2.2.1) after
//! `timeout`, `retries` times, then the peer is refused for a RADIUS timeout.
//!
//! Owns: the RADIUS codec, identifiers in flight, the conversations' State.
//! Must never: print the shared secret or an MPPE key; send a request for a conversation
//! twice but as a retransmission.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rand_core::RngCore;
use zeroize::Zeroizing;

use super::{code as eap_code, packet as eap_packet, EapServer, Packet, Step};
use crate::crypto::Secret;
use crate::ids::IkeSaId;
use crate::services::auth::ct_eq;
use crate::services::AuthError;
use crate::time::Instant;

/// RADIUS codes (RFC 2865 3, RFC 2866).
pub mod code {
    pub const ACCESS_REQUEST: u8 = 1;
    pub const ACCESS_ACCEPT: u8 = 2;
    pub const ACCESS_REJECT: u8 = 3;
    pub const ACCESS_CHALLENGE: u8 = 11;
}

/// RADIUS attribute types (RFC 2865 5, RFC 3579 3).
pub mod attr {
    pub const USER_NAME: u8 = 1;
    pub const SERVICE_TYPE: u8 = 6;
    pub const FRAMED_MTU: u8 = 12;
    pub const STATE: u8 = 24;
    pub const VENDOR_SPECIFIC: u8 = 26;
    pub const NAS_IDENTIFIER: u8 = 32;
    pub const EAP_MESSAGE: u8 = 79;
    pub const MESSAGE_AUTHENTICATOR: u8 = 80;
}

/// Microsoft's vendor id and its MPPE key attributes (RFC 2548 2.4.2, 2.4.3).
pub const VENDOR_MICROSOFT: u32 = 311;
pub const MS_MPPE_SEND_KEY: u8 = 16;
pub const MS_MPPE_RECV_KEY: u8 = 17;

/// Service-Type Framed (RFC 2865 5.6).
const SERVICE_FRAMED: u32 = 2;

const HEADER: usize = 20;

/// Where and how to reach the server.
#[derive(Clone)]
pub struct RadiusConfig {
    pub secret: Secret,
    pub nas_identifier: String,
    /// Wait this long for an answer before sending the request again.
    pub timeout: Duration,
    /// Send each request again at most this many times.
    pub retries: u32,
}

impl core::fmt::Debug for RadiusConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RadiusConfig")
            .field("secret", &"<secret>")
            .field("nas_identifier", &self.nas_identifier)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

/// What the client counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RadiusStats {
    pub requests: u64,
    pub retransmits: u64,
    pub accepts: u64,
    pub rejects: u64,
    pub challenges: u64,
    pub timeouts: u64,
    /// Answers dropped: Response Authenticator or Message-Authenticator wrong or missing.
    pub bad_authenticator: u64,
    /// Answers dropped: malformed, or for no request in flight.
    pub unexpected: u64,
}

struct Conv {
    identity: String,
    state: Option<Vec<u8>>,
    /// The identifier of the peer's last EAP response (an EAP-Failure we make answers it).
    last_eap_id: u8,
}

struct InFlight {
    ike: IkeSaId,
    data: Vec<u8>,
    authenticator: [u8; 16],
    tries: u32,
    deadline: Instant,
}

/// The RADIUS client: one conversation per IKE SA, one request in flight per conversation.
pub struct RadiusClient {
    cfg: RadiusConfig,
    next_id: u8,
    convs: HashMap<IkeSaId, Conv>,
    in_flight: HashMap<u8, InFlight>,
    out: VecDeque<Vec<u8>>,
    results: VecDeque<(IkeSaId, Step)>,
    pub stats: RadiusStats,
}

impl core::fmt::Debug for RadiusClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RadiusClient")
            .field("cfg", &self.cfg)
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn put_attr(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    for chunk in value.chunks(253) {
        out.push(kind);
        out.push(u8::try_from(chunk.len().saturating_add(2)).unwrap_or(u8::MAX));
        out.extend_from_slice(chunk);
    }
}

/// The attributes of a packet as (type, value), or `None` if they do not fit its length.
pub fn attributes(packet: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let len = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let mut rest = packet.get(HEADER..len)?;
    let mut v = Vec::new();
    while !rest.is_empty() {
        let kind = *rest.first()?;
        let l = usize::from(*rest.get(1)?);
        if l < 2 {
            return None;
        }
        v.push((kind, rest.get(2..l)?));
        rest = rest.get(l..)?;
    }
    Some(v)
}

fn hmac_md5(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = match <Hmac<Md5> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 16],
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Where the Message-Authenticator's value sits in `packet`, if it has one.
fn message_authenticator_at(packet: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    let mut at = HEADER;
    while at < len {
        let kind = *packet.get(at)?;
        let l = usize::from(*packet.get(at.checked_add(1)?)?);
        if l < 2 {
            return None;
        }
        if kind == attr::MESSAGE_AUTHENTICATOR && l == 18 {
            return at.checked_add(2);
        }
        at = at.checked_add(l)?;
    }
    None
}

/// RFC 2548 2.4.2: the key in a MS-MPPE-Send/Recv-Key value (Salt, then the encrypted
/// String), decrypted with the shared secret and the Request Authenticator.
pub fn decrypt_mppe_key(secret: &[u8], request_auth: &[u8; 16], value: &[u8]) -> Option<Secret> {
    let salt = value.get(..2)?;
    let c = value.get(2..)?;
    if c.is_empty() || c.len() % 16 != 0 {
        return None;
    }
    let mut p = Zeroizing::new(Vec::with_capacity(c.len()));
    let mut prev: Vec<u8> = [request_auth.as_slice(), salt].concat();
    for block in c.chunks_exact(16) {
        let b = Md5::new()
            .chain_update(secret)
            .chain_update(&prev)
            .finalize();
        p.extend(block.iter().zip(b.iter()).map(|(x, y)| x ^ y));
        prev = block.to_vec();
    }
    let len = usize::from(*p.first()?);
    Some(Zeroizing::new(p.get(1..len.checked_add(1)?)?.to_vec()))
}

/// RFC 2548 2.4.2: a key as the server encrypts it (tests, the fake server).
pub fn encrypt_mppe_key(
    secret: &[u8],
    request_auth: &[u8; 16],
    salt: [u8; 2],
    key: &[u8],
) -> Vec<u8> {
    let mut p = vec![u8::try_from(key.len()).unwrap_or(u8::MAX)];
    p.extend_from_slice(key);
    while p.len() % 16 != 0 {
        p.push(0);
    }
    let mut out = salt.to_vec();
    let mut prev: Vec<u8> = [request_auth.as_slice(), &salt].concat();
    for block in p.chunks_exact(16) {
        let b = Md5::new()
            .chain_update(secret)
            .chain_update(&prev)
            .finalize();
        let c: Vec<u8> = block.iter().zip(b.iter()).map(|(x, y)| x ^ y).collect();
        out.extend_from_slice(&c);
        prev = c;
    }
    out
}

/// A RADIUS answer to a request with `request_auth`: the Message-Authenticator (RFC 3579
/// 3.2) and the Response Authenticator (RFC 2865 3) filled in (the fake server's, tests).
pub fn seal_response(
    secret: &[u8],
    request_auth: &[u8; 16],
    code: u8,
    id: u8,
    attrs: &[(u8, Vec<u8>)],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in attrs {
        put_attr(&mut body, *k, v);
    }
    body.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
    body.extend_from_slice(&[0; 16]);
    let len = u16::try_from(HEADER.saturating_add(body.len())).unwrap_or(u16::MAX);
    let mut pk = vec![code, id];
    pk.extend_from_slice(&len.to_be_bytes());
    pk.extend_from_slice(request_auth);
    pk.extend_from_slice(&body);
    let at = pk.len().saturating_sub(16);
    let ma = hmac_md5(secret, &pk);
    pk.get_mut(at..).unwrap_or(&mut []).copy_from_slice(&ma);
    let ra = Md5::new().chain_update(&pk).chain_update(secret).finalize();
    pk.get_mut(4..20).unwrap_or(&mut []).copy_from_slice(&ra);
    pk
}

/// The Vendor-Specific value of one Microsoft attribute.
pub fn ms_vendor(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut v = VENDOR_MICROSOFT.to_be_bytes().to_vec();
    v.push(kind);
    v.push(u8::try_from(value.len().saturating_add(2)).unwrap_or(u8::MAX));
    v.extend_from_slice(value);
    v
}

impl RadiusClient {
    pub fn new(cfg: RadiusConfig) -> RadiusClient {
        RadiusClient {
            cfg,
            next_id: 0,
            convs: HashMap::new(),
            in_flight: HashMap::new(),
            out: VecDeque::new(),
            results: VecDeque::new(),
            stats: RadiusStats::default(),
        }
    }

    /// Conversations and requests under way (tests, views).
    pub fn active(&self) -> (usize, usize) {
        (self.convs.len(), self.in_flight.len())
    }

    fn free_id(&mut self) -> Option<u8> {
        for _ in 0..=u8::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.in_flight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// An Access-Request for `ike` carrying the peer's EAP `response`.
    fn request(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step {
        let Some(conv) = self.convs.get_mut(&ike) else {
            return Step::Failure {
                why: AuthError::EapMalformed,
                packet: eap_packet(eap_code::FAILURE, 0, &[]),
            };
        };
        conv.last_eap_id = Packet::parse(response).map_or(0, |p| p.id);
        let identity = conv.identity.clone();
        let state = conv.state.clone();
        let Some(id) = self.free_id() else {
            self.convs.remove(&ike);
            return Step::Failure {
                why: AuthError::EapRadiusTimeout,
                packet: eap_packet(eap_code::FAILURE, 0, &[]),
            };
        };
        let mut authenticator = [0u8; 16];
        rng.fill_bytes(&mut authenticator);
        let mut body = Vec::new();
        put_attr(&mut body, attr::USER_NAME, identity.as_bytes());
        put_attr(&mut body, attr::SERVICE_TYPE, &SERVICE_FRAMED.to_be_bytes());
        put_attr(
            &mut body,
            attr::NAS_IDENTIFIER,
            self.cfg.nas_identifier.as_bytes(),
        );
        // The largest EAP packet that fits an IKE message without fragmentation.
        put_attr(&mut body, attr::FRAMED_MTU, &1100u32.to_be_bytes());
        if let Some(s) = &state {
            put_attr(&mut body, attr::STATE, s);
        }
        put_attr(&mut body, attr::EAP_MESSAGE, response);
        body.extend_from_slice(&[attr::MESSAGE_AUTHENTICATOR, 18]);
        body.extend_from_slice(&[0; 16]);
        let len = u16::try_from(HEADER.saturating_add(body.len())).unwrap_or(u16::MAX);
        let mut pk = vec![code::ACCESS_REQUEST, id];
        pk.extend_from_slice(&len.to_be_bytes());
        pk.extend_from_slice(&authenticator);
        pk.extend_from_slice(&body);
        let ma = hmac_md5(&self.cfg.secret, &pk);
        let at = pk.len().saturating_sub(16);
        pk.get_mut(at..).unwrap_or(&mut []).copy_from_slice(&ma);
        self.out.push_back(pk.clone());
        self.stats.requests = self.stats.requests.saturating_add(1);
        self.in_flight.insert(
            id,
            InFlight {
                ike,
                data: pk,
                authenticator,
                tries: 0,
                deadline: now.saturating_add(self.cfg.timeout),
            },
        );
        Step::Pending
    }

    /// The answer checks (RFC 2865 3 Response Authenticator, RFC 3579 3.2 Message-Authenticator).
    fn authentic(&self, data: &[u8], request_auth: &[u8; 16]) -> bool {
        let (Some(&hi), Some(&lo)) = (data.get(2), data.get(3)) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(pk) = data.get(..len) else {
            return false;
        };
        let mut with_req = pk.to_vec();
        let Some(ra) = pk.get(4..20) else {
            return false;
        };
        with_req
            .get_mut(4..20)
            .unwrap_or(&mut [])
            .copy_from_slice(request_auth);
        let want = Md5::new()
            .chain_update(&with_req)
            .chain_update(&*self.cfg.secret)
            .finalize();
        if !ct_eq(&want, ra) {
            return false;
        }
        let Some(at) = message_authenticator_at(pk) else {
            // RFC 3579 3.2 asks for one in every answer that carries EAP-Message; an
            // Access-Reject without either (FreeRADIUS's plain reject) stands on its Response
            // Authenticator: forging it could only refuse a user.
            return pk.first() == Some(&code::ACCESS_REJECT)
                && attributes(pk).is_some_and(|a| a.iter().all(|(k, _)| *k != attr::EAP_MESSAGE));
        };
        let Some(ma) = pk.get(at..at.saturating_add(16)).map(<[u8]>::to_vec) else {
            return false;
        };
        with_req
            .get_mut(at..at.saturating_add(16))
            .unwrap_or(&mut [])
            .fill(0);
        ct_eq(&hmac_md5(&self.cfg.secret, &with_req), &ma)
    }
}

impl EapServer for RadiusClient {
    fn begin(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        identity: &str,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step {
        self.convs.insert(
            ike,
            Conv {
                identity: identity.to_owned(),
                state: None,
                last_eap_id: 0,
            },
        );
        self.request(now, ike, response, rng)
    }

    fn respond(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        response: &[u8],
        rng: &mut dyn RngCore,
    ) -> Step {
        self.request(now, ike, response, rng)
    }

    fn forget(&mut self, ike: IkeSaId) {
        self.convs.remove(&ike);
        self.in_flight.retain(|_, f| f.ike != ike);
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    fn handle_datagram(&mut self, _now: Instant, data: &[u8]) {
        let (Some(&code), Some(&id)) = (data.first(), data.get(1)) else {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
            return;
        };
        let Some(f) = self.in_flight.get(&id) else {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
            return;
        };
        if !self.authentic(data, &f.authenticator) {
            self.stats.bad_authenticator = self.stats.bad_authenticator.saturating_add(1);
            return;
        }
        let Some(attrs) = attributes(data) else {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
            return;
        };
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        let ike = f.ike;
        let eap: Vec<u8> = attrs
            .iter()
            .filter(|(k, _)| *k == attr::EAP_MESSAGE)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let last_eap_id = self.convs.get(&ike).map_or(0, |c| c.last_eap_id);
        let step = match code {
            code::ACCESS_CHALLENGE if Packet::parse(&eap).is_some() => {
                self.stats.challenges = self.stats.challenges.saturating_add(1);
                if let Some(c) = self.convs.get_mut(&ike) {
                    c.state = attrs
                        .iter()
                        .find(|(k, _)| *k == attr::STATE)
                        .map(|(_, v)| v.to_vec());
                }
                Step::Request(eap)
            }
            code::ACCESS_ACCEPT => {
                self.stats.accepts = self.stats.accepts.saturating_add(1);
                let conv = self.convs.remove(&ike);
                let key = |kind: u8| {
                    attrs.iter().find_map(|(k, v)| {
                        if *k != attr::VENDOR_SPECIFIC
                            || v.get(..4) != Some(&VENDOR_MICROSOFT.to_be_bytes()[..])
                            || v.get(4) != Some(&kind)
                        {
                            return None;
                        }
                        let l = usize::from(*v.get(5)?);
                        decrypt_mppe_key(
                            &self.cfg.secret,
                            &f.authenticator,
                            v.get(6..l.checked_add(4)?)?,
                        )
                    })
                };
                let msk = match (key(MS_MPPE_RECV_KEY), key(MS_MPPE_SEND_KEY)) {
                    (Some(r), Some(s)) => {
                        let mut m = Zeroizing::new(Vec::with_capacity(64));
                        m.extend_from_slice(&r);
                        m.extend_from_slice(&s);
                        if m.len() < 64 {
                            m.resize(64, 0);
                        }
                        m
                    }
                    _ => Zeroizing::new(Vec::new()),
                };
                let identity = attrs
                    .iter()
                    .find(|(k, _)| *k == attr::USER_NAME)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .or(conv.map(|c| c.identity))
                    .unwrap_or_default();
                let packet = if Packet::parse(&eap).is_some() {
                    eap
                } else {
                    eap_packet(eap_code::SUCCESS, last_eap_id, &[])
                };
                Step::Success {
                    msk,
                    identity,
                    packet,
                }
            }
            code::ACCESS_REJECT => {
                self.stats.rejects = self.stats.rejects.saturating_add(1);
                self.convs.remove(&ike);
                Step::Failure {
                    why: AuthError::EapRadiusReject,
                    packet: eap_packet(eap_code::FAILURE, last_eap_id, &[]),
                }
            }
            _ => {
                self.stats.unexpected = self.stats.unexpected.saturating_add(1);
                self.convs.remove(&ike);
                Step::Failure {
                    why: AuthError::EapMalformed,
                    packet: eap_packet(eap_code::FAILURE, last_eap_id, &[]),
                }
            }
        };
        self.results.push_back((ike, step));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.deadline).min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u8> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(f) = self.in_flight.get_mut(&id) else {
                continue;
            };
            if f.tries < self.cfg.retries {
                f.tries = f.tries.saturating_add(1);
                f.deadline = now.saturating_add(self.cfg.timeout);
                self.out.push_back(f.data.clone());
                self.stats.retransmits = self.stats.retransmits.saturating_add(1);
                continue;
            }
            let ike = f.ike;
            self.in_flight.remove(&id);
            let last = self.convs.remove(&ike).map_or(0, |c| c.last_eap_id);
            self.stats.timeouts = self.stats.timeouts.saturating_add(1);
            self.results.push_back((
                ike,
                Step::Failure {
                    why: AuthError::EapRadiusTimeout,
                    packet: eap_packet(eap_code::FAILURE, last, &[]),
                },
            ));
        }
    }

    fn poll_result(&mut self) -> Option<(IkeSaId, Step)> {
        self.results.pop_front()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        vec![
            ("radius_requests", s.requests),
            ("radius_retransmits", s.retransmits),
            ("radius_accepts", s.accepts),
            ("radius_rejects", s.rejects),
            ("radius_challenges", s.challenges),
            ("radius_timeouts", s.timeouts),
            ("radius_bad_authenticator", s.bad_authenticator),
            ("radius_unexpected", s.unexpected),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mppe_keys_round_trip_and_wrong_secret_garbles() {
        let ra = [7u8; 16];
        let key = [0xabu8; 32];
        let enc = encrypt_mppe_key(b"s3cret", &ra, [0x80, 0x01], &key);
        assert_eq!(enc.len(), 2 + 48);
        assert_eq!(
            decrypt_mppe_key(b"s3cret", &ra, &enc).unwrap().as_slice(),
            &key
        );
        let other = decrypt_mppe_key(b"other", &ra, &enc);
        assert!(other.is_none_or(|k| k.as_slice() != key));
        assert!(decrypt_mppe_key(b"s3cret", &ra, &enc[..10]).is_none());
    }

    /// An answer without Message-Authenticator: only a plain Access-Reject (no EAP-Message)
    /// with the right Response Authenticator counts.
    #[test]
    fn only_a_plain_reject_may_lack_the_message_authenticator() {
        use rand_chacha::ChaCha20Rng;
        use rand_core::SeedableRng;
        let plain = |code: u8, id: u8, ra: &[u8; 16], attrs: &[u8], secret: &[u8]| {
            let len = u16::try_from(HEADER + attrs.len()).unwrap();
            let mut pk = vec![code, id];
            pk.extend_from_slice(&len.to_be_bytes());
            pk.extend_from_slice(ra);
            pk.extend_from_slice(attrs);
            let d = Md5::new().chain_update(&pk).chain_update(secret).finalize();
            pk[4..20].copy_from_slice(&d);
            pk
        };
        for (code, attrs, secret, counts) in [
            (code::ACCESS_REJECT, vec![], &b"s"[..], true),
            (code::ACCESS_REJECT, vec![], &b"not it"[..], false),
            (code::ACCESS_ACCEPT, vec![], &b"s"[..], false),
            (
                code::ACCESS_REJECT,
                vec![attr::EAP_MESSAGE, 6, 4, 1, 0, 4],
                &b"s"[..],
                false,
            ),
        ] {
            let mut c = RadiusClient::new(RadiusConfig {
                secret: crate::config::secret(b"s"),
                nas_identifier: "gw".into(),
                timeout: Duration::from_secs(1),
                retries: 0,
            });
            let ike = IkeSaId(crate::ids::IkeSpi(5));
            let mut rng = ChaCha20Rng::from_seed([1; 32]);
            let resp = eap_packet(eap_code::RESPONSE, 3, &[&[1], b"alice"]);
            assert!(matches!(
                c.begin(Instant::ZERO, ike, "alice", &resp, &mut rng),
                Step::Pending
            ));
            let req = c.poll_transmit().unwrap();
            let ra: [u8; 16] = req[4..20].try_into().unwrap();
            c.handle_datagram(Instant::ZERO, &plain(code, req[1], &ra, &attrs, secret));
            let r = c.poll_result();
            assert_eq!(r.is_some(), counts, "code {code} attrs {attrs:?}");
            if let Some((_, Step::Failure { why, .. })) = r {
                assert_eq!(why, AuthError::EapRadiusReject);
            }
            assert_eq!(c.stats.bad_authenticator, u64::from(!counts));
        }
    }

    #[test]
    fn attributes_parse_and_long_values_split() {
        let mut b = vec![0u8; HEADER];
        put_attr(&mut b, attr::EAP_MESSAGE, &[1; 300]);
        let len = u16::try_from(b.len()).unwrap();
        b[2..4].copy_from_slice(&len.to_be_bytes());
        let a = attributes(&b).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].1.len() + a[1].1.len(), 300);
        // An attribute past the length, or of length 1: none.
        b[2..4].copy_from_slice(&(len - 1).to_be_bytes());
        assert!(attributes(&b).is_none());
        let mut c = vec![0u8; HEADER];
        c.extend_from_slice(&[1, 1]);
        c[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert!(attributes(&c).is_none());
    }
}
