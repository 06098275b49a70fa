//! One IKE SA: its lasting state ([`IkeSaState`]: SPIs, addresses, keys, message ids,
//! CHILD_SAs, virtual IP, MOBIKE addresses), the work under way on it ([`Pending`]) and its
//! timers. The exchanges (`exchange::*`) change an IKE SA; this module holds what they share:
//! building and opening its encrypted messages, reporting its CHILD_SAs, closing it.
//!
//! Owns: the IKE SA's data and the invariants between its parts (keys match the role; the
//! IKE SA's children are reported down exactly once).
//! Must never: touch another IKE SA or the endpoint's tables (cross-SA work goes out as an
//! `exchange::Effect`); print keys.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::PeerConfig;
use crate::crypto::{self, DhPrivate, IkeKeys, Secret, SkCipher};
use crate::event::{ChildSaInfo, ChildSaKeys, ChildSaView, DownReason, Event, IkeSaView, NatSides};
use crate::exchange::{Action, Ctx, Outstanding};
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::proposal::{EspProposal, IkeProposal};
use crate::stats::Reason;
use crate::time::Instant;
use crate::timer::{Timer, TimerTable};
use crate::wire::{self, payload, Header, Id, Payload, TrafficSelector, WireError};

/// Which end of the IKE SA we are: the original initiator or responder (RFC 7296 2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Initiator,
    Responder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Initiator: IKE_SA_INIT sent. Responder: IKE_SA_INIT answered.
    Init,
    /// Initiator: IKE_AUTH sent.
    Auth,
    Established,
    /// Being deleted; no new exchanges.
    Deleting,
    /// Gone: the endpoint takes it out of its tables after the current operation.
    Dead,
}

/// A CHILD_SA's key material, inbound and outbound (AES key and salt each), kept for as long
/// as the CHILD_SA lives so that an export of its IKE SA carries it.
#[derive(Clone)]
pub(crate) struct ChildKeys {
    pub inbound: Secret,
    pub outbound: Secret,
}

impl core::fmt::Debug for ChildKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ChildKeys(<secret>)")
    }
}

/// A CHILD_SA of an IKE SA (its keys went to the data plane in `Event::ChildUp`).
#[derive(Clone, Debug)]
pub(crate) struct Child {
    pub name: String,
    pub spi_in: ChildSpi,
    pub spi_out: ChildSpi,
    /// Its algorithms: AES-GCM-16 or AES-CBC + HMAC, key size, ESN.
    pub esp: EspProposal,
    pub keys: ChildKeys,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// When it was installed here (made, or adopted with its IKE SA): for the views.
    pub installed_at: Instant,
    pub rekey_at: Option<Instant>,
    /// The hard lifetime by time: deleted then if no rekey replaced it.
    pub expire_at: Option<Instant>,
    /// We sent a rekey request for this CHILD_SA and await the answer.
    pub rekeying: bool,
    /// We already replaced it by our own rekey (its delete is queued or in flight).
    pub replaced: bool,
    /// The peer rekeyed it while we were rekeying it too: the CHILD_SA we created for the
    /// peer (its inbound SPI) and the lowest nonce of that exchange (RFC 7296 2.8.1).
    pub peer_rekey: Option<(ChildSpi, Vec<u8>)>,
    /// The peer told us INVALID_SPI for its outbound SPI inside the IKE SA (RFC 7296 3.10.1):
    /// it has no SA for what we send. Its rekey is a new CHILD_SA with its selectors, without
    /// REKEY_SA (the peer has nothing to rekey); the old one is deleted once the new is up.
    /// Not carried in the IKE SA's record: after a move it is rekeyed the ordinary way, and
    /// a peer that answers CHILD_SA_NOT_FOUND tells us again.
    pub lost: bool,
}

/// What an IKE SA is beyond any one exchange: the part another process or node needs to
/// carry it on (keys, message ids, children, addresses).
pub(crate) struct IkeSaState {
    pub id: IkeSaId,
    pub role: Role,
    pub phase: Phase,
    pub spi_i: IkeSpi,
    pub spi_r: IkeSpi,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A NAT sits between us (RFC 7296 2.23).
    pub nat: bool,
    pub peer: Option<Arc<PeerConfig>>,
    /// The peer's authenticated identity (IDi or IDr), once IKE_AUTH verified it.
    pub remote_id: Option<Id>,
    /// The identity the peer authenticated with by EAP (EAP identity, RADIUS User-Name).
    pub eap_identity: Option<String>,
    pub prop: IkeProposal,
    pub keys: Option<IkeKeys>,
    pub sk_out: Option<SkCipher>,
    pub sk_in: Option<SkCipher>,
    /// The message id of our next request.
    pub next_request_id: u32,
    /// The next request id we expect from the peer, and our last response (for replays; its
    /// datagrams back to back when it went in fragments, `fragment::datagrams`).
    pub peer_next_id: u32,
    pub last_response: Option<(u32, Vec<u8>)>,
    pub children: Vec<Child>,
    /// When the IKE SA is due for a rekey.
    pub rekey_at: Option<Instant>,
    /// Ours (a client the peer gave one) or the peer's (leased from a pool).
    pub virtual_ip: Option<IpAddr>,
    /// Both ends sent MOBIKE_SUPPORTED (RFC 4555 3.1).
    pub mobike: bool,
    /// Both ends sent IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383 2.3).
    pub fragmentation: bool,
    /// Both ends sent IKEV2_MESSAGE_ID_SYNC_SUPPORTED in IKE_AUTH (RFC 6311 4.1).
    pub mid_sync: bool,
    /// We asked for a sync on these IKE SA keys already: never again (strongSwan derives its
    /// GCM IV from the message id and can encrypt a second answer with message id 0 on the
    /// same keys only by refusing it and destroying the IKE SA).
    pub mid_sync_used: bool,
    /// Both ends sent ROAMGATE_GATEWAY_MOVE_SUPPORTED in IKE_AUTH (`exchange::gw_move`).
    pub gateway_move: bool,
    /// Both ends sent SA_RESOURCE_INFO in IKE_AUTH (RFC 9611): one CHILD_SA per worker.
    pub per_core: bool,
    /// The peer sent REDIRECT_SUPPORTED, or REDIRECTED_FROM, in IKE_SA_INIT (RFC 5685): it
    /// follows a REDIRECT.
    pub redirect: bool,
    /// The peer's additional addresses (its latest announcement, RFC 4555 3.3), and ours.
    pub peer_additional: Vec<IpAddr>,
    pub our_additional: Vec<IpAddr>,
}

/// What IKE_SA_INIT and IKE_AUTH need and nothing after: dropped once the IKE SA is up.
#[derive(Default)]
pub(crate) struct Handshake {
    pub dh: Option<DhPrivate>,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
    /// Both IKE_SA_INIT messages as sent (AUTH signs them; a retransmitted request gets the
    /// same response).
    pub init_request: Vec<u8>,
    pub init_response: Vec<u8>,
    /// The responder's COOKIE to echo (RFC 7296 2.6), and how many it sent in a row.
    pub cookie: Option<Vec<u8>>,
    pub cookie_retries: u8,
    /// What the peer's IKE_SA_INIT said for certificate authentication: its
    /// SIGNATURE_HASH_ALGORITHMS (RFC 7427 4) and CERTREQs.
    pub peer_hashes: Vec<u16>,
    pub certreqs: Vec<Vec<u8>>,
    /// The peer's IKE_SA_INIT carried REDIRECTED_FROM (RFC 5685 5): a client that follows a
    /// REDIRECT; if we redirected its IKE SA of the same connection and identity, this one
    /// replaces it (`auth::complete`).
    pub redirected_from: bool,
}

/// Work under way on an IKE SA.
#[derive(Default)]
pub(crate) struct Pending {
    /// Our request awaiting its response (the window is one message each way).
    pub outstanding: Option<Outstanding>,
    /// Requests waiting for the window.
    pub queue: VecDeque<Action>,
    pub handshake: Option<Box<Handshake>>,
    /// A simultaneous rekey of this IKE SA (RFC 7296 2.8.2): the new IKE SA the peer's
    /// exchange made and ours, each with its exchange's lowest nonce. The children stay here
    /// until both are known, then go to the one that survives.
    pub rekey_peer: Option<(IkeSaId, Vec<u8>)>,
    pub rekey_ours: Option<(IkeSaId, Vec<u8>)>,
    /// When a message of the peer's last passed its checks (liveness).
    pub last_heard: Instant,
    /// A responder's entry in the endpoint's table of IKE_SA_INIT retransmissions.
    pub half_open: Option<(IkeSpi, SocketAddr)>,
    /// Fragmented messages (RFC 7383) under reassembly.
    pub reassembly: crate::fragment::Reassembly,
    /// A responder's IKE_AUTH with EAP under way (RFC 7296 2.16).
    pub eap: Option<Box<crate::exchange::eap_auth::EapRound>>,
    /// An initiator's EAP rounds (we are the EAP peer).
    pub eap_client: Option<Box<crate::exchange::eap_auth::EapClientRound>>,
    /// A client told by its gateway that it moved (`exchange::gw_move`): the announced
    /// address, until the probe there is answered or given up.
    pub gateway_moved: Option<SocketAddr>,
    /// Private-use notifies the endpoint's user asked to send (`Endpoint::send_private`), in
    /// order: one INFORMATIONAL each ([`crate::exchange::Action::Private`] takes the first).
    pub private_out: VecDeque<(u16, zeroize::Zeroizing<Vec<u8>>)>,
    /// When the last hinted liveness check started (`exchange::hint`'s rate limit).
    pub hint_at: Option<Instant>,
    /// When we last told the peer INVALID_SPI inside this IKE SA (the rate limit of
    /// `Endpoint::notify_invalid_spi`).
    pub invalid_spi_at: Option<Instant>,
}

/// What the views show of an IKE SA and the record of its state does not carry: when it came
/// up here and which ends NAT detection found behind a NAT.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Observed {
    pub established_at: Option<Instant>,
    pub nat: NatSides,
}

pub(crate) struct IkeSa {
    pub state: IkeSaState,
    pub observed: Observed,
    pub pending: Pending,
    pub timers: TimerTable,
    /// The deadline the endpoint has this IKE SA filed under.
    pub filed: Option<Instant>,
}

/// Why an encrypted message did not open.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Dropped: nothing authenticated it (or no keys yet).
    Drop(Reason),
    /// Authenticated, but its payloads do not parse: INVALID_SYNTAX.
    Malformed,
    /// Authenticated, with an unknown critical payload of this type.
    Unsupported(u8),
}

impl IkeSa {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: IkeSaId,
        role: Role,
        spi_i: IkeSpi,
        spi_r: IkeSpi,
        local: SocketAddr,
        remote: SocketAddr,
        prop: IkeProposal,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            state: IkeSaState {
                id,
                role,
                phase: Phase::Init,
                spi_i,
                spi_r,
                local,
                remote,
                nat: false,
                peer: None,
                remote_id: None,
                eap_identity: None,
                prop,
                keys: None,
                sk_out: None,
                sk_in: None,
                next_request_id: 0,
                peer_next_id: 0,
                last_response: None,
                children: Vec::new(),
                rekey_at: None,
                virtual_ip: None,
                mobike: false,
                fragmentation: false,
                mid_sync: false,
                mid_sync_used: false,
                gateway_move: false,
                per_core: false,
                redirect: false,
                peer_additional: Vec::new(),
                our_additional: Vec::new(),
            },
            observed: Observed::default(),
            pending: Pending {
                last_heard: now,
                ..Pending::default()
            },
            timers: TimerTable::default(),
            filed: None,
        }
    }

    pub(crate) fn id(&self) -> IkeSaId {
        self.state.id
    }

    pub(crate) fn handshake(&mut self) -> &mut Handshake {
        self.pending.handshake.get_or_insert_with(Box::default)
    }

    pub(crate) fn install_keys(&mut self, keys: IkeKeys) {
        let s = &mut self.state;
        let (out, inn, a_out, a_in) = match s.role {
            Role::Initiator => (&keys.sk_ei, &keys.sk_er, &keys.sk_ai, &keys.sk_ar),
            Role::Responder => (&keys.sk_er, &keys.sk_ei, &keys.sk_ar, &keys.sk_ai),
        };
        if s.prop.cbc {
            s.sk_out = SkCipher::new_cbc(out, a_out);
            s.sk_in = SkCipher::new_cbc(inn, a_in);
        } else {
            s.sk_out = SkCipher::new(out);
            s.sk_in = SkCipher::new(inn);
        }
        s.keys = Some(keys);
    }

    pub(crate) fn take_request_id(&mut self) -> u32 {
        let id = self.state.next_request_id;
        self.state.next_request_id = id.wrapping_add(1);
        id
    }

    /// What NAT detection found (RFC 7296 2.23, RFC 4555 3.5).
    pub(crate) fn set_nat(&mut self, sides: NatSides) {
        self.state.nat = sides.any();
        self.observed.nat = sides;
    }

    /// The IKE SA as the views show it, times counted from `now`.
    pub(crate) fn view(&self, now: Instant) -> IkeSaView {
        let s = &self.state;
        let peer = s.peer.as_deref();
        let until = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(now));
        let udp_encap = self.udp_encap();
        IkeSaView {
            id: s.id,
            connection: peer.map_or_else(String::new, |p| p.name.clone()),
            state: match s.phase {
                Phase::Init | Phase::Auth => "CONNECTING",
                Phase::Established => "ESTABLISHED",
                Phase::Deleting | Phase::Dead => "DELETING",
            },
            initiator: s.role == Role::Initiator,
            spi_i: s.spi_i,
            spi_r: s.spi_r,
            local: s.local,
            remote: s.remote,
            nat: s.nat,
            nat_sides: self.observed.nat,
            local_id: peer.map_or_else(String::new, |p| p.local_id.display()),
            remote_id: s
                .remote_id
                .as_ref()
                .or(peer.and_then(|p| p.remote_id.as_ref()))
                .map_or_else(String::new, Id::display),
            eap_identity: s.eap_identity.clone(),
            proposal: s.prop,
            virtual_ip: s.virtual_ip,
            mobike: s.mobike,
            established_ago: self
                .observed
                .established_at
                .filter(|_| s.phase == Phase::Established)
                .map(|t| now.saturating_duration_since(t)),
            rekey_in: until(s.rekey_at).filter(|_| s.phase == Phase::Established),
            children: s
                .children
                .iter()
                .map(|c| ChildSaView {
                    name: c.name.clone(),
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    state: if c.replaced {
                        "REKEYED"
                    } else if c.rekeying {
                        "REKEYING"
                    } else {
                        "INSTALLED"
                    },
                    udp_encap,
                    proposal: c.esp,
                    installed_ago: now.saturating_duration_since(c.installed_at),
                    rekey_in: until(c.rekey_at),
                    expire_in: until(c.expire_at),
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                })
                .collect(),
        }
    }

    /// ESP goes in UDP: behind a NAT, or since the IKE SA floated to 4500.
    pub(crate) fn udp_encap(&self) -> bool {
        self.state.nat || self.state.remote.port() == 4500
    }

    /// Builds an encrypted message: header, SK payload holding `inner` (never fragmented:
    /// the exchanges go through `fragment::protect`).
    #[cfg(test)]
    pub(crate) fn encrypted(
        &mut self,
        exch: u8,
        id: u32,
        response: bool,
        inner: &[Payload],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        let first = wire::emit_chain(inner, &mut body);
        self.seal_message(exch, id, response, first, &body)
    }

    /// An encrypted message whose SK payload holds the payload chain `body` starting with
    /// payload type `first`.
    pub(crate) fn seal_message(
        &mut self,
        exch: u8,
        id: u32,
        response: bool,
        first: u8,
        body: &[u8],
    ) -> Vec<u8> {
        let s = &mut self.state;
        let mut flags = if response { wire::FLAG_RESPONSE } else { 0 };
        if s.role == Role::Initiator {
            flags |= wire::FLAG_INITIATOR;
        }
        let sealed_len = s.sk_out.as_ref().map_or(0, |c| c.sealed_len(body.len()));
        let sk_len = sealed_len.saturating_add(4);
        let total = wire::HEADER_LEN.saturating_add(sk_len);
        let mut msg = Vec::with_capacity(total);
        Header {
            spi_i: s.spi_i.0,
            spi_r: s.spi_r.0,
            next_payload: payload::SK,
            exchange: exch,
            flags,
            message_id: id,
            length: u32::try_from(total).unwrap_or(u32::MAX),
        }
        .emit(&mut msg);
        msg.push(first);
        msg.push(0);
        msg.extend_from_slice(&u16::try_from(sk_len).unwrap_or(u16::MAX).to_be_bytes());
        let sealed = match s.sk_out.as_mut() {
            Some(c) => c.seal(&msg, body),
            None => Vec::new(),
        };
        msg.extend_from_slice(&sealed);
        msg
    }

    /// Decrypts and parses an encrypted message.
    pub(crate) fn open(&self, msg: &[u8], h: &Header) -> Result<Vec<Payload>, OpenError> {
        let chain = wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload)
            .map_err(|_| OpenError::Drop(Reason::OuterMalformed))?;
        let sk = chain.sk.ok_or(OpenError::Drop(Reason::NotEncrypted))?;
        let split = sk.header_at.saturating_add(4);
        let aad = msg
            .get(..split)
            .ok_or(OpenError::Drop(Reason::OuterMalformed))?;
        let body = msg
            .get(split..)
            .ok_or(OpenError::Drop(Reason::OuterMalformed))?;
        let cipher = self
            .state
            .sk_in
            .as_ref()
            .ok_or(OpenError::Drop(Reason::NotEncrypted))?;
        let inner = cipher
            .open(aad, body)
            .map_err(|_| OpenError::Drop(Reason::Integrity))?;
        parse_inner(&inner, sk.first_inner)
    }

    pub(crate) fn child_info(
        &self,
        c: &Child,
        rekey_of: Option<ChildSpi>,
        initiated_here: bool,
    ) -> ChildSaInfo {
        ChildSaInfo {
            ike: self.state.id,
            name: c.name.clone(),
            inbound: ChildSaKeys {
                spi: c.spi_in,
                encr_bits: c.esp.encr_bits,
                integ: c.esp.integ,
                keymat: c.keys.inbound.clone(),
            },
            outbound: ChildSaKeys {
                spi: c.spi_out,
                encr_bits: c.esp.encr_bits,
                integ: c.esp.integ,
                keymat: c.keys.outbound.clone(),
            },
            esn: c.esp.esn,
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            local: self.state.local,
            remote: self.state.remote,
            udp_encap: self.udp_encap(),
            rekey_of,
            initiated_here,
            redundant: false,
        }
    }

    /// Where this IKE SA and its CHILD_SAs are now, for the data plane.
    pub(crate) fn moved_event(&self) -> Event {
        Event::IkeMoved {
            ike: self.state.id,
            local: self.state.local,
            remote: self.state.remote,
            udp_encap: self.udp_encap(),
            children: self.state.children.iter().map(|c| c.spi_in).collect(),
        }
    }

    /// A new CHILD_SA of this IKE SA's connection, its lifetimes starting now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_child(
        &self,
        now: Instant,
        spi_in: ChildSpi,
        spi_out: ChildSpi,
        esp: EspProposal,
        keys: ChildKeys,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Child {
        let peer = self.state.peer.as_deref();
        Child {
            name: peer.map_or_else(String::new, |p| p.name.clone()),
            spi_in,
            spi_out,
            esp,
            keys,
            local_ts,
            remote_ts,
            installed_at: now,
            rekey_at: peer
                .and_then(|p| p.child_rekey)
                .map(|d| now.saturating_add(d)),
            expire_at: peer
                .and_then(|p| p.child_life)
                .map(|d| now.saturating_add(d)),
            rekeying: false,
            replaced: false,
            peer_rekey: None,
            lost: false,
        }
    }

    /// The IKE SA is authenticated: its rekey and liveness timers start, the handshake's
    /// leftovers go.
    pub(crate) fn establish(&mut self, now: Instant) {
        self.state.phase = Phase::Established;
        self.observed.established_at = Some(now);
        let peer = self.state.peer.clone();
        self.state.rekey_at = peer
            .as_ref()
            .and_then(|p| p.ike_rekey)
            .map(|d| now.saturating_add(d));
        self.timers.set(
            Timer::Liveness,
            peer.as_ref()
                .and_then(|p| p.dpd)
                .map(|d| self.pending.last_heard.saturating_add(d)),
        );
        self.timers.set(Timer::HalfOpen, None);
        self.pending.handshake = None;
    }

    /// Reports every CHILD_SA of this IKE SA down and forgets them.
    pub(crate) fn down_children(&mut self, ctx: &mut Ctx<'_>) {
        let id = self.state.id;
        for c in self.state.children.drain(..) {
            ctx.event(Event::ChildDown {
                ike: id,
                spi_in: c.spi_in,
                spi_out: c.spi_out,
            });
        }
    }

    /// The IKE SA ends now: its children go down, its lease is returned, `IkeDown` is
    /// reported and the endpoint takes it out.
    pub(crate) fn close(&mut self, ctx: &mut Ctx<'_>, reason: DownReason) {
        if self.state.phase == Phase::Dead {
            return;
        }
        self.down_children(ctx);
        ctx.services.pool.release(self.state.id);
        ctx.event(Event::IkeDown {
            ike: self.state.id,
            reason,
        });
        self.state.phase = Phase::Dead;
    }

    /// The rekey and lifetime timers follow the times in the IKE SA's state.
    pub(crate) fn refresh_timers(&mut self) {
        self.timers.set(Timer::IkeRekey, self.state.rekey_at);
        let c = &self.state.children;
        self.timers
            .set(Timer::ChildRekey, c.iter().filter_map(|c| c.rekey_at).min());
        self.timers.set(
            Timer::ChildExpire,
            c.iter()
                .filter(|c| !c.replaced)
                .filter_map(|c| c.expire_at)
                .min(),
        );
    }
}

/// The payloads of a decrypted SK payload (or of a reassembled fragmented message) whose
/// first payload has type `first`.
pub(crate) fn parse_inner(inner: &[u8], first: u8) -> Result<Vec<Payload>, OpenError> {
    match wire::parse_chain(inner, 0, first) {
        Ok(c) if c.sk.is_none() => Ok(c.payloads),
        // An SK payload inside an SK payload is no valid message either.
        Ok(_) => Err(OpenError::Malformed),
        Err(WireError::UnsupportedCritical(t)) => Err(OpenError::Unsupported(t)),
        Err(_) => Err(OpenError::Malformed),
    }
}

/// The lowest of an exchange's two nonces (RFC 7296 2.8.1, 2.8.2).
pub(crate) fn min_nonce(a: &[u8], b: &[u8]) -> Vec<u8> {
    core::cmp::min(a, b).to_vec()
}

/// Our SPI and the peer's of an IKE SA, from a message's header.
pub(crate) fn ours_and_theirs(h: &Header) -> (IkeSpi, IkeSpi) {
    if h.from_initiator() {
        (IkeSpi(h.spi_r), IkeSpi(h.spi_i))
    } else {
        (IkeSpi(h.spi_i), IkeSpi(h.spi_r))
    }
}

/// The NAT detection hash of this IKE SA for an address (RFC 7296 2.23).
pub(crate) fn nat_hash(spi_i: IkeSpi, spi_r: IkeSpi, a: SocketAddr) -> Vec<u8> {
    crypto::nat_hash(spi_i.0, spi_r.0, a.ip(), a.port())
}
