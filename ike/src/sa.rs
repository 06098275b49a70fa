//! The IKEv2 endpoint and its IKE SAs (RFC 7296), sans-IO.
//!
//! [`Endpoint`] owns every IKE SA of one process. It is driven from outside:
//! [`Endpoint::handle`] for each received datagram, [`Endpoint::handle_timeout`] when
//! [`Endpoint::poll_timeout`] says so, and [`Endpoint::connect`] / [`Endpoint::rekey_child`] /
//! [`Endpoint::rekey_ike`] / [`Endpoint::delete_ike`] for what the operator or the SA
//! repository asks. Its outputs are pulled: [`Endpoint::poll_transmit`] (datagrams, with their
//! addresses) and [`Endpoint::poll_event`] (SAs up, rekeyed, deleted). Time is a `u64` of
//! nanoseconds on whatever clock the caller uses; randomness comes from a caller-seeded RNG.
//!
//! Exchanges: IKE_SA_INIT (with INVALID_KE_PAYLOAD retry and NAT detection), IKE_AUTH with
//! pre-shared keys (the authenticator is an enum so certificates and EAP can join it),
//! the first CHILD_SA with traffic-selector narrowing and a virtual IP from a pool,
//! CREATE_CHILD_SA to rekey a CHILD_SA or the IKE SA, INFORMATIONAL (delete, liveness).
//! Requests are retransmitted with exponential back-off; the window is one message each way,
//! and a retransmitted request gets the cached response.
//!
//! Proposals: IKE AES-GCM-16 (128/256) with PRF HMAC-SHA2-256/384/512 and x25519, ecp256 or
//! modp2048; ESP AES-GCM-16 (128/256), with or without ESN.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::crypto::{self, DhGroup, DhPrivate, IkeKeys, Prf, Secret, SkCipher};
use crate::wire::{
    self, cfg, exchange, notify, payload, proto, transform, CfgAttr, Header, Id, Payload, Proposal,
    TrafficSelector, Transform,
};

const SEC: u64 = 1_000_000_000;

/// An IKE SA proposal: AES-GCM-16 (or, with `cbc`, AES-CBC with HMAC-SHA2-256-128) with
/// `encr_bits`, a PRF and a DH group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr_bits: u16,
    pub prf: Prf,
    pub dh: DhGroup,
    pub cbc: bool,
}

impl IkeProposal {
    /// Encryption key material per direction (GCM: key and salt; CBC: the key).
    fn encr_len(&self) -> usize {
        if self.cbc {
            usize::from(self.encr_bits / 8)
        } else {
            SkCipher::keymat_len(self.encr_bits)
        }
    }

    /// Integrity key length per direction (none for GCM).
    fn integ_len(&self) -> usize {
        if self.cbc {
            crypto::INTEG_SHA256_KEY_LEN
        } else {
            0
        }
    }
}

/// An ESP proposal: AES-GCM-16 with `encr_bits`, ESN or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EspProposal {
    pub encr_bits: u16,
    pub esn: bool,
}

/// How this end proves who it is (and checks the peer). Certificates and EAP join here.
#[derive(Clone)]
pub enum Authenticator {
    Psk(Secret),
}

impl core::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Authenticator::Psk(_) => write!(f, "Psk(<secret>)"),
        }
    }
}

/// A range of virtual IPv4 addresses handed to road-warrior clients.
#[derive(Clone, Debug)]
pub struct Pool {
    pub first: Ipv4Addr,
    pub count: u32,
}

/// One connection (peer) as configured.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub name: String,
    pub local_id: Id,
    /// The peer's identity; `None` accepts any (a responder for many road warriors).
    pub remote_id: Option<Id>,
    pub auth: Authenticator,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's selectors; for a client asking for a virtual IP, the address it gets.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side; for a responder with a pool, the virtual IP it hands out.
    pub remote_ts: Vec<TrafficSelector>,
    pub pool: Option<Pool>,
    /// Initiator: ask for a virtual IP (CP request).
    pub request_vip: bool,
    /// Rekey the CHILD_SA / the IKE SA after this long (0: never).
    pub child_rekey_ns: u64,
    pub ike_rekey_ns: u64,
    /// Delete a CHILD_SA that reaches this age without being replaced (its hard lifetime by
    /// time; 0: never).
    pub child_life_ns: u64,
    /// Send a liveness check when nothing arrived for this long (0: never).
    pub dpd_ns: u64,
}

/// Retransmission policy (strongSwan's defaults: 4 s, x1.8, 5 retransmits).
#[derive(Clone, Copy, Debug)]
pub struct Retransmit {
    pub timeout_ns: u64,
    pub base_milli: u64,
    pub tries: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        Retransmit {
            timeout_ns: 4 * SEC,
            base_milli: 1800,
            tries: 5,
        }
    }
}

/// The endpoint's configuration.
#[derive(Clone, Debug, Default)]
pub struct EndpointConfig {
    pub peers: Vec<PeerConfig>,
    pub retransmit: Retransmit,
}

/// Our handle for an IKE SA: our own SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

/// One direction's keys and parameters of a CHILD_SA as the data plane needs them.
#[derive(Clone)]
pub struct ChildSaKeys {
    pub spi: u32,
    pub encr_bits: u16,
    /// AES key followed by the 4-byte salt (RFC 4106).
    pub keymat: Secret,
}

impl core::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ChildSaKeys(spi {:08x}, aes-gcm-{}, <secret>)",
            self.spi, self.encr_bits
        )
    }
}

/// A CHILD_SA that came up.
#[derive(Clone, Debug)]
pub struct ChildSaInfo {
    pub ike: IkeSaId,
    pub name: String,
    pub inbound: ChildSaKeys,
    pub outbound: ChildSaKeys,
    pub esn: bool,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Tunnel endpoints (the IKE SA's addresses) and whether ESP goes in UDP 4500.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    /// The inbound SPI of the CHILD_SA this one replaces (a rekey).
    pub rekey_of: Option<u32>,
    /// True when this end started the exchange that made it.
    pub initiated_here: bool,
    /// Made by our rekey but redundant: the peer rekeyed the same CHILD_SA at the same time
    /// and its exchange won (RFC 7296 2.8.1). We delete it at once and never send on it.
    pub redundant: bool,
}

/// What happened, for the SA repository.
#[derive(Clone, Debug)]
pub enum Event {
    IkeUp {
        ike: IkeSaId,
        peer: String,
        remote_id: String,
        local: SocketAddr,
        remote: SocketAddr,
        /// The virtual IP of this IKE SA: ours (a client the peer assigned one to) when
        /// `virtual_ip_is_ours`, else the one we leased to the peer from a pool.
        virtual_ip: Option<IpAddr>,
        virtual_ip_is_ours: bool,
    },
    ChildUp(ChildSaInfo),
    /// MOBIKE moved the IKE SA and its CHILD_SAs (by inbound SPI) to new addresses: same
    /// keys, same SPIs, no rekey. The data plane rebinds their outbound SAs.
    IkeMoved {
        ike: IkeSaId,
        local: SocketAddr,
        remote: SocketAddr,
        udp_encap: bool,
        children: Vec<u32>,
    },
    /// A CHILD_SA is gone (deleted by either side, or with its IKE SA).
    ChildDown {
        ike: IkeSaId,
        spi_in: u32,
        spi_out: u32,
    },
    /// The IKE SA was rekeyed: `old` is replaced by `new`, children move along.
    IkeRekeyed {
        old: IkeSaId,
        new: IkeSaId,
        /// True when this end started the rekey.
        initiated_here: bool,
    },
    IkeDown {
        ike: IkeSaId,
        reason: DownReason,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    Deleted,
    PeerDeleted,
    /// Retransmissions ran out (dead peer).
    Timeout,
    AuthFailed,
    NoProposal,
    Rekeyed,
    /// A MOBIKE update's answer did not echo our COOKIE2 (RFC 4555 3.6).
    ReturnRoutability,
}

/// An IKE SA as the views show it: id, connection name, established, its CHILD_SAs as
/// (inbound SPI, outbound SPI).
pub type SaSummary = (IkeSaId, String, bool, Vec<(u32, u32)>);

/// A datagram to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// Why a received datagram was dropped (counted by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    Malformed,
    UnknownSa,
    BadMessageId,
    Integrity,
    Unexpected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Initiator: IKE_SA_INIT sent. Responder: IKE_SA_INIT answered.
    Init,
    /// Initiator: IKE_AUTH sent.
    Auth,
    Established,
    /// Being deleted; no new exchanges.
    Deleting,
}

/// What an outstanding request of ours was for.
#[derive(Debug)]
enum Request {
    Init,
    Auth {
        child_spi: u32,
    },
    RekeyChild {
        old_spi_in: u32,
        new_spi: u32,
        nonce: Vec<u8>,
        dh: Option<DhPrivate>,
        esp: Vec<EspProposal>,
    },
    RekeyIke {
        new_spi: u64,
        nonce: Vec<u8>,
        dh: DhPrivate,
        prop: IkeProposal,
    },
    DeleteChild {
        spi_in: u32,
    },
    DeleteIke,
    Liveness,
    /// MOBIKE UPDATE_SA_ADDRESSES with our COOKIE2; the peer addresses tried so far.
    UpdateAddresses {
        cookie2: Vec<u8>,
        tried: Vec<IpAddr>,
    },
}

#[derive(Debug)]
struct Outstanding {
    id: u32,
    data: Vec<u8>,
    request: Request,
    tries: u32,
    deadline: u64,
}

#[derive(Clone, Debug)]
struct Child {
    name: String,
    spi_in: u32,
    spi_out: u32,
    esn: bool,
    encr_bits: u16,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    rekey_at: u64,
    /// The hard lifetime by time: deleted then if no rekey replaced it (0: never).
    expire_at: u64,
    /// We sent a rekey request for this CHILD_SA and await the answer.
    rekeying: bool,
    /// We already replaced it by our own rekey (its delete is queued or in flight).
    replaced: bool,
    /// The peer rekeyed it while we were rekeying it too: the CHILD_SA we created for the
    /// peer (its inbound SPI) and the lowest nonce of that exchange (RFC 7296 2.8.1).
    peer_rekey: Option<(u32, Vec<u8>)>,
}

struct IkeSa {
    id: IkeSaId,
    role: Role,
    state: State,
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    nat: bool,
    peer: Option<Arc<PeerConfig>>,
    prop: IkeProposal,
    dh: Option<DhPrivate>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    keys: Option<IkeKeys>,
    sk_out: Option<SkCipher>,
    sk_in: Option<SkCipher>,
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    cookie: Option<Vec<u8>>,
    next_request_id: u32,
    outstanding: Option<Outstanding>,
    /// The next request id we expect from the peer, and our last response (for replays).
    peer_next_id: u32,
    last_response: Option<(u32, Vec<u8>)>,
    children: Vec<Child>,
    virtual_ip: Option<IpAddr>,
    last_heard: u64,
    rekey_at: u64,
    /// Both ends sent MOBIKE_SUPPORTED (RFC 4555 3.1).
    mobike: bool,
    /// A simultaneous rekey of this IKE SA (RFC 7296 2.8.2): the new IKE SA the peer's
    /// exchange made and ours, each with its exchange's lowest nonce. The children stay here
    /// until both are known, then go to the one that survives.
    rekey_peer: Option<(u64, Vec<u8>)>,
    rekey_ours: Option<(u64, Vec<u8>)>,
    /// The peer's additional addresses (its latest announcement, RFC 4555 3.3), and ours.
    peer_additional: Vec<IpAddr>,
    our_additional: Vec<IpAddr>,
    /// Requests waiting for the window (one outstanding at a time).
    queue: VecDeque<Action>,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    RekeyChild(u32),
    /// A further CHILD_SA with the first one's selectors.
    NewChild,
    UpdateAddresses,
    RekeyIke,
    DeleteChild(u32),
    DeleteIke,
    Liveness,
}

/// The IKEv2 endpoint of one process.
pub struct Endpoint {
    config: EndpointConfig,
    peers: Vec<Arc<PeerConfig>>,
    rng: ChaCha20Rng,
    sas: HashMap<u64, IkeSa>,
    /// Responder side: (initiator SPI, peer address) -> our SPI, to spot IKE_SA_INIT retries.
    half_open: HashMap<(u64, SocketAddr), u64>,
    /// `poll_timeout`'s answer until something changes (None: look again).
    deadline_cache: std::cell::Cell<Option<Option<u64>>>,
    /// Where the next pool lease search starts.
    lease_cursor: u32,
    /// Every inbound CHILD_SA SPI we handed out and have not yet reported down (a superset
    /// of those in use: an SPI of an exchange that failed stays, harmlessly).
    spis_in_use: std::collections::HashSet<u32>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Virtual IPs in use.
    leases: HashMap<Ipv4Addr, IkeSaId>,
    pub drops: HashMap<Drop, u64>,
}

/// Why an operator request could not start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection named {0:?}")]
    NoSuchPeer(String),
    #[error("connection {0:?} has no IKE proposal")]
    NoProposal(String),
    #[error("no such IKE SA")]
    NoSuchSa,
    #[error("the peer did not negotiate MOBIKE")]
    NoMobike,
}

impl Endpoint {
    pub fn new(config: EndpointConfig, seed: [u8; 32]) -> Endpoint {
        let peers = config.peers.iter().cloned().map(Arc::new).collect();
        Endpoint {
            config,
            peers,
            rng: ChaCha20Rng::from_seed(seed),
            sas: HashMap::new(),
            half_open: HashMap::new(),
            deadline_cache: std::cell::Cell::new(None),
            spis_in_use: std::collections::HashSet::new(),
            lease_cursor: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            leases: HashMap::new(),
            drops: HashMap::new(),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if let Some(Event::ChildDown { spi_in, .. }) = &e {
            self.spis_in_use.remove(spi_in);
        }
        e
    }

    /// The IKE SAs, for views: (id, peer name, established, children (spi_in, spi_out)).
    pub fn list(&self) -> Vec<SaSummary> {
        let mut v: Vec<_> = self
            .sas
            .values()
            .map(|s| {
                (
                    s.id,
                    s.peer.as_ref().map_or(String::new(), |p| p.name.clone()),
                    s.state == State::Established,
                    s.children.iter().map(|c| (c.spi_in, c.spi_out)).collect(),
                )
            })
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// The earliest time something is due (a retransmission, a rekey, a liveness check).
    pub fn poll_timeout(&self) -> Option<u64> {
        // Cached: every call that can move a timer clears it (see `touch`), so a control loop
        // that asks every turn does not walk every IKE SA every turn.
        if let Some(d) = self.deadline_cache.get() {
            return d;
        }
        let d = self.sas.values().filter_map(|s| s.next_deadline()).min();
        self.deadline_cache.set(Some(d));
        d
    }

    /// The virtual IPs leased from pools, with the IKE SA holding each.
    pub fn leases(&self) -> Vec<(Ipv4Addr, IkeSaId)> {
        self.leases.iter().map(|(a, i)| (*a, *i)).collect()
    }

    /// True while any exchange is under way or queued.
    pub fn busy(&self) -> bool {
        self.sas
            .values()
            .any(|sa| sa.outstanding.is_some() || !sa.queue.is_empty())
    }

    /// Something may have moved a timer: the next `poll_timeout` looks again.
    fn touch(&self) {
        self.deadline_cache.set(None);
    }

    fn drop(&mut self, d: Drop) {
        *self.drops.entry(d).or_insert(0) += 1;
    }

    fn spi64(&mut self) -> u64 {
        loop {
            let s = self.rng.next_u64();
            if s != 0 && !self.sas.contains_key(&s) {
                return s;
            }
        }
    }

    fn spi32(&mut self) -> u32 {
        loop {
            let s = self.rng.next_u32();
            // 1..255 are reserved (RFC 4303); and never twice among our inbound SPIs.
            if s > 255 && self.spis_in_use.insert(s) {
                return s;
            }
        }
    }

    fn nonce(&mut self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        self.rng.fill_bytes(&mut n);
        n
    }

    // ---- initiating ----------------------------------------------------------------------

    /// Starts an IKE SA (and its first CHILD_SA) to `remote` with connection `peer`.
    pub fn connect(
        &mut self,
        now: u64,
        peer: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<IkeSaId, ConnectError> {
        self.touch();
        let cfg = self
            .peers
            .iter()
            .find(|p| p.name == peer)
            .cloned()
            .ok_or_else(|| ConnectError::NoSuchPeer(peer.into()))?;
        let prop = *cfg
            .ike_proposals
            .first()
            .ok_or_else(|| ConnectError::NoProposal(peer.into()))?;
        let spi = self.spi64();
        let dh = DhPrivate::generate(prop.dh, &mut self.rng);
        let ni = self.nonce();
        let mut sa = IkeSa::new(
            IkeSaId(spi),
            Role::Initiator,
            spi,
            0,
            local,
            remote,
            prop,
            now,
        );
        sa.peer = Some(cfg);
        sa.dh = Some(dh);
        sa.ni = ni;
        self.sas.insert(spi, sa);
        self.send_init(now, spi);
        Ok(IkeSaId(spi))
    }

    fn send_init(&mut self, now: u64, spi: u64) {
        let retransmit = self.config.retransmit;
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let Some(cfg) = sa.peer.clone() else { return };
        let Some(dh) = sa.dh.as_ref() else { return };
        let mut p = Vec::new();
        if let Some(c) = &sa.cookie {
            p.push(Payload::notify(notify::COOKIE, c.clone()));
        }
        p.push(Payload::Sa(ike_proposals_payload(&cfg.ike_proposals, &[])));
        p.push(Payload::Ke {
            group: dh.group().id(),
            data: dh.public().to_vec(),
        });
        p.push(Payload::Nonce(sa.ni.clone()));
        p.push(Payload::notify(
            notify::NAT_DETECTION_SOURCE_IP,
            crypto::nat_hash(sa.spi_i, 0, sa.local.ip(), sa.local.port()),
        ));
        p.push(Payload::notify(
            notify::NAT_DETECTION_DESTINATION_IP,
            crypto::nat_hash(sa.spi_i, 0, sa.remote.ip(), sa.remote.port()),
        ));
        let data = plain_message(
            sa.spi_i,
            0,
            exchange::IKE_SA_INIT,
            wire::FLAG_INITIATOR,
            0,
            &p,
        );
        sa.init_request = data.clone();
        sa.next_request_id = 1;
        sa.state = State::Init;
        sa.outstanding = Some(Outstanding {
            id: 0,
            data: data.clone(),
            request: Request::Init,
            tries: 0,
            deadline: now + retransmit.timeout_ns,
        });
        self.transmits.push_back(Transmit {
            src: sa.local,
            dst: sa.remote,
            data,
        });
    }

    // ---- receiving -----------------------------------------------------------------------

    /// Handles one received IKE message (without the non-ESP marker) from `remote` to `local`.
    pub fn handle(&mut self, now: u64, local: SocketAddr, remote: SocketAddr, data: &[u8]) {
        self.touch();
        let Ok(h) = Header::parse(data) else {
            self.drop(Drop::Malformed);
            return;
        };
        let msg = data.get(..h.length as usize).unwrap_or(data);
        // Our SPI is the initiator SPI when we initiated, else the responder SPI.
        let ours = if h.from_initiator() { h.spi_r } else { h.spi_i };
        if h.exchange == exchange::IKE_SA_INIT && !h.is_response() && h.spi_r == 0 {
            self.responder_init(now, local, remote, &h, msg);
            return;
        }
        let Some(sa) = self.sas.get_mut(&ours) else {
            self.drop(Drop::UnknownSa);
            return;
        };
        // The peer's SPI must match too (once known).
        let theirs = if h.from_initiator() { h.spi_i } else { h.spi_r };
        let expected_theirs = if sa.role == Role::Initiator {
            sa.spi_r
        } else {
            sa.spi_i
        };
        if expected_theirs != 0 && theirs != expected_theirs {
            self.drop(Drop::UnknownSa);
            return;
        }
        if h.is_response() {
            self.handle_response(now, ours, local, remote, &h, msg);
        } else {
            self.handle_request(now, ours, local, remote, &h, msg);
        }
    }

    fn responder_init(
        &mut self,
        now: u64,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        msg: &[u8],
    ) {
        if let Some(spi) = self.half_open.get(&(h.spi_i, remote)).copied() {
            // A retransmitted IKE_SA_INIT: the same answer again.
            if let Some(sa) = self.sas.get(&spi) {
                if sa.init_request == msg && !sa.init_response.is_empty() {
                    self.transmits.push_back(Transmit {
                        src: local,
                        dst: remote,
                        data: sa.init_response.clone(),
                    });
                    return;
                }
            }
        }
        let Ok(chain) = wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload) else {
            self.drop(Drop::Malformed);
            return;
        };
        let p = &chain.payloads;
        let (Some(props), Some((group, ke)), Some(ni)) = (find_sa(p), find_ke(p), find_nonce(p))
        else {
            self.drop(Drop::Malformed);
            return;
        };
        // The union of our connections' proposals, in our order of preference.
        let ours: Vec<IkeProposal> = self
            .peers
            .iter()
            .flat_map(|c| c.ike_proposals.iter().copied())
            .collect();
        let Some((num, prop)) = select_ike(props, &ours) else {
            let data = plain_message(
                h.spi_i,
                0,
                exchange::IKE_SA_INIT,
                wire::FLAG_RESPONSE,
                0,
                &[Payload::notify(notify::NO_PROPOSAL_CHOSEN, vec![])],
            );
            self.transmits.push_back(Transmit {
                src: local,
                dst: remote,
                data,
            });
            return;
        };
        if group != prop.dh.id() {
            let data = plain_message(
                h.spi_i,
                0,
                exchange::IKE_SA_INIT,
                wire::FLAG_RESPONSE,
                0,
                &[Payload::notify(
                    notify::INVALID_KE_PAYLOAD,
                    prop.dh.id().to_be_bytes().to_vec(),
                )],
            );
            self.transmits.push_back(Transmit {
                src: local,
                dst: remote,
                data,
            });
            return;
        }
        let dh = DhPrivate::generate(prop.dh, &mut self.rng);
        let Ok(shared) = dh.shared(ke) else {
            self.drop(Drop::Malformed);
            return;
        };
        let spi_r = self.spi64();
        let nr = self.nonce();
        let nat = nat_detected(p, h.spi_i, 0, local, remote);
        let mut sa = IkeSa::new(
            IkeSaId(spi_r),
            Role::Responder,
            h.spi_i,
            spi_r,
            local,
            remote,
            prop,
            now,
        );
        sa.nat = nat;
        sa.ni = ni.to_vec();
        sa.nr = nr.clone();
        sa.init_request = msg.to_vec();
        sa.install_keys(IkeKeys::derive(
            prop.prf,
            None,
            &shared,
            ni,
            &nr,
            h.spi_i,
            spi_r,
            prop.encr_len(),
            prop.integ_len(),
        ));
        let reply = vec![
            Payload::Sa(vec![Proposal {
                num,
                protocol: proto::IKE,
                spi: vec![],
                transforms: ike_transforms(&prop),
            }]),
            Payload::Ke {
                group: prop.dh.id(),
                data: dh.public().to_vec(),
            },
            Payload::Nonce(nr),
            Payload::notify(
                notify::NAT_DETECTION_SOURCE_IP,
                crypto::nat_hash(h.spi_i, spi_r, local.ip(), local.port()),
            ),
            Payload::notify(
                notify::NAT_DETECTION_DESTINATION_IP,
                crypto::nat_hash(h.spi_i, spi_r, remote.ip(), remote.port()),
            ),
        ];
        let data = plain_message(
            h.spi_i,
            spi_r,
            exchange::IKE_SA_INIT,
            wire::FLAG_RESPONSE,
            0,
            &reply,
        );
        sa.init_response = data.clone();
        sa.peer_next_id = 1;
        sa.state = State::Init;
        self.half_open.insert((h.spi_i, remote), spi_r);
        self.sas.insert(spi_r, sa);
        self.transmits.push_back(Transmit {
            src: local,
            dst: remote,
            data,
        });
    }

    fn handle_response(
        &mut self,
        now: u64,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        msg: &[u8],
    ) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let Some(out) = sa.outstanding.as_ref() else {
            self.drop(Drop::Unexpected);
            return;
        };
        if out.id != h.message_id {
            self.drop(Drop::BadMessageId);
            return;
        }
        if h.exchange == exchange::IKE_SA_INIT {
            self.initiator_init_response(now, spi, local, remote, h, msg);
            return;
        }
        let payloads = match sa.open(msg, h) {
            Ok(p) => p,
            Err(d) => {
                self.drop(d);
                return;
            }
        };
        sa.last_heard = now;
        let Some(out) = sa.outstanding.take() else {
            return;
        };
        match out.request {
            Request::Auth { child_spi } => {
                self.initiator_auth_response(now, spi, child_spi, &payloads)
            }
            Request::RekeyChild {
                old_spi_in,
                new_spi,
                nonce,
                dh,
                esp,
            } => self
                .rekey_child_response(now, spi, old_spi_in, new_spi, &nonce, dh, &esp, &payloads),
            Request::RekeyIke {
                new_spi,
                nonce,
                dh,
                prop,
            } => self.rekey_ike_response(now, spi, new_spi, &nonce, &dh, prop, &payloads),
            Request::DeleteChild { spi_in } => {
                if let Some(sa) = self.sas.get_mut(&spi) {
                    if let Some(i) = sa.children.iter().position(|c| c.spi_in == spi_in) {
                        let c = sa.children.remove(i);
                        self.events.push_back(Event::ChildDown {
                            ike: IkeSaId(spi),
                            spi_in: c.spi_in,
                            spi_out: c.spi_out,
                        });
                    }
                }
            }
            Request::DeleteIke => self.remove_sa(spi, DownReason::Deleted),
            Request::UpdateAddresses { cookie2, .. } => {
                self.update_addresses_response(spi, local, remote, &cookie2, &payloads)
            }
            Request::Liveness | Request::Init => {}
        }
        self.next_action(now, spi);
    }

    fn initiator_init_response(
        &mut self,
        now: u64,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        msg: &[u8],
    ) {
        let Ok(chain) = wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload) else {
            self.drop(Drop::Malformed);
            return;
        };
        let p = chain.payloads;
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let Some(cfg) = sa.peer.clone() else { return };
        if let Some(c) = find_notify(&p, notify::COOKIE) {
            sa.cookie = Some(c.to_vec());
            self.send_init(now, spi);
            return;
        }
        if let Some(g) = find_notify(&p, notify::INVALID_KE_PAYLOAD) {
            let want = g.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            if let Some(prop) = cfg
                .ike_proposals
                .iter()
                .find(|pp| Some(pp.dh.id()) == want)
                .copied()
            {
                if Some(prop.dh) != sa.dh.as_ref().map(DhPrivate::group) {
                    sa.prop = prop;
                    sa.dh = Some(DhPrivate::generate(prop.dh, &mut self.rng));
                    self.send_init(now, spi);
                    return;
                }
            }
            self.remove_sa(spi, DownReason::NoProposal);
            return;
        }
        if p.iter()
            .any(|x| matches!(x, Payload::Notify { kind, .. } if notify::is_error(*kind)))
        {
            self.remove_sa(spi, DownReason::NoProposal);
            return;
        }
        let (Some(props), Some((group, ke)), Some(nr)) = (find_sa(&p), find_ke(&p), find_nonce(&p))
        else {
            self.drop(Drop::Malformed);
            return;
        };
        let Some((_, prop)) = select_ike(props, &cfg.ike_proposals) else {
            self.remove_sa(spi, DownReason::NoProposal);
            return;
        };
        let Some(dh) = sa.dh.take() else { return };
        if group != dh.group().id() || prop.dh != dh.group() {
            self.remove_sa(spi, DownReason::NoProposal);
            return;
        }
        let Ok(shared) = dh.shared(ke) else {
            self.drop(Drop::Malformed);
            return;
        };
        sa.spi_r = h.spi_r;
        sa.prop = prop;
        sa.nr = nr.to_vec();
        sa.init_response = msg.to_vec();
        sa.nat = nat_detected(&p, sa.spi_i, sa.spi_r, local, remote);
        sa.install_keys(IkeKeys::derive(
            prop.prf,
            None,
            &shared,
            &sa.ni,
            nr,
            sa.spi_i,
            sa.spi_r,
            prop.encr_len(),
            prop.integ_len(),
        ));
        sa.outstanding = None;
        sa.last_heard = now;
        // Float to 4500 for IKE_AUTH when a NAT sits between us (RFC 7296 2.23), and always
        // for a road warrior (it asks for a virtual IP): it may roam behind a NAT later
        // (MOBIKE), as strongSwan floats whenever MOBIKE is on.
        if (sa.nat || cfg.request_vip) && sa.remote.port() == 500 {
            sa.remote.set_port(4500);
            sa.local.set_port(4500);
        }
        // IKE_AUTH with the first CHILD_SA.
        let child_spi = self.spi32();
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let Some(keys) = sa.keys.as_ref() else { return };
        let Authenticator::Psk(psk) = &cfg.auth;
        let idi = cfg.local_id.clone();
        let auth = crypto::psk_auth(
            keys.prf,
            psk,
            &sa.init_request,
            &sa.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        let mut inner = vec![Payload::IdI(idi)];
        inner.push(Payload::notify(notify::INITIAL_CONTACT, vec![]));
        if let Some(r) = &cfg.remote_id {
            inner.push(Payload::IdR(r.clone()));
        }
        inner.push(Payload::Auth {
            method: 2,
            data: auth.to_vec(),
        });
        if cfg.request_vip {
            inner.push(Payload::Cp {
                kind: cfg::REQUEST,
                attrs: vec![CfgAttr {
                    kind: cfg::INTERNAL_IP4_ADDRESS,
                    value: vec![],
                }],
            });
        }
        inner.push(Payload::Sa(esp_proposals_payload(
            &cfg.esp_proposals,
            child_spi,
        )));
        let local_ts = if cfg.request_vip {
            vec![any_v4()]
        } else {
            cfg.local_ts.clone()
        };
        inner.push(Payload::TsI(local_ts));
        inner.push(Payload::TsR(cfg.remote_ts.clone()));
        inner.push(Payload::notify(notify::MOBIKE_SUPPORTED, vec![]));
        sa.state = State::Auth;
        self.send_encrypted(
            now,
            spi,
            exchange::IKE_AUTH,
            &inner,
            Request::Auth { child_spi },
        );
    }

    fn initiator_auth_response(&mut self, now: u64, spi: u64, child_spi: u32, p: &[Payload]) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let Some(cfg) = sa.peer.clone() else { return };
        if find_notify(p, notify::AUTHENTICATION_FAILED).is_some() {
            self.remove_sa(spi, DownReason::AuthFailed);
            return;
        }
        let (Some(idr), Some(auth)) = (
            p.iter().find_map(|x| {
                if let Payload::IdR(i) = x {
                    Some(i)
                } else {
                    None
                }
            }),
            p.iter().find_map(|x| {
                if let Payload::Auth { data, .. } = x {
                    Some(data)
                } else {
                    None
                }
            }),
        ) else {
            self.remove_sa(spi, DownReason::AuthFailed);
            return;
        };
        if cfg.remote_id.as_ref().is_some_and(|r| r != idr) {
            self.remove_sa(spi, DownReason::AuthFailed);
            return;
        }
        let Some(keys) = sa.keys.as_ref() else { return };
        let Authenticator::Psk(psk) = &cfg.auth;
        let expect = crypto::psk_auth(
            keys.prf,
            psk,
            &sa.init_response,
            &sa.ni,
            &keys.sk_pr,
            &idr.body(),
        );
        if !ct_eq(&expect, auth) {
            self.remove_sa(spi, DownReason::AuthFailed);
            return;
        }
        sa.state = State::Established;
        sa.mobike = find_notify(p, notify::MOBIKE_SUPPORTED).is_some();
        sa.rekey_at = if cfg.ike_rekey_ns > 0 {
            now + cfg.ike_rekey_ns
        } else {
            0
        };
        sa.virtual_ip = p.iter().find_map(|x| match x {
            Payload::Cp {
                kind: cfg::REPLY,
                attrs,
            } => attrs
                .iter()
                .find(|a| a.kind == cfg::INTERNAL_IP4_ADDRESS)
                .and_then(|a| {
                    <[u8; 4]>::try_from(a.value.get(..4)?)
                        .ok()
                        .map(|b| IpAddr::from(Ipv4Addr::from(b)))
                }),
            _ => None,
        });
        self.events.push_back(Event::IkeUp {
            ike: IkeSaId(spi),
            peer: cfg.name.clone(),
            remote_id: idr.display(),
            local: sa.local,
            remote: sa.remote,
            virtual_ip: sa.virtual_ip,
            virtual_ip_is_ours: true,
        });
        // The first CHILD_SA (or the reason there is none).
        let (Some(props), Some(tsi), Some(tsr)) = (find_sa(p), find_tsi(p), find_tsr(p)) else {
            return;
        };
        let Some((_, esp, spi_out)) = select_esp(props, &cfg.esp_proposals) else {
            return;
        };
        let (Some(keys), ni, nr) = (sa.keys.as_ref(), sa.ni.clone(), sa.nr.clone()) else {
            return;
        };
        let len = SkCipher::keymat_len(esp.encr_bits);
        let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, None, &ni, &nr, len);
        let child = Child {
            name: cfg.name.clone(),
            spi_in: child_spi,
            spi_out,
            esn: esp.esn,
            encr_bits: esp.encr_bits,
            local_ts: tsi.to_vec(),
            remote_ts: tsr.to_vec(),
            rekey_at: deadline(now, cfg.child_rekey_ns),
            expire_at: deadline(now, cfg.child_life_ns),
            rekeying: false,
            replaced: false,
            peer_rekey: None,
        };
        let info = sa.child_info(&child, r2i, i2r, None, true);
        sa.children.push(child);
        self.events.push_back(Event::ChildUp(info));
    }

    fn handle_request(
        &mut self,
        now: u64,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        h: &Header,
        msg: &[u8],
    ) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        if let Some((id, resp)) = &sa.last_response {
            if *id == h.message_id {
                // A retransmitted request: the cached response, nothing processed twice.
                let data = resp.clone();
                self.transmits.push_back(Transmit {
                    src: local,
                    dst: remote,
                    data,
                });
                return;
            }
        }
        if h.message_id != sa.peer_next_id {
            self.drop(Drop::BadMessageId);
            return;
        }
        let payloads = match sa.open(msg, h) {
            Ok(p) => p,
            Err(d) => {
                self.drop(d);
                return;
            }
        };
        sa.last_heard = now;
        // Only an authenticated request may move the IKE SA's port (NAT mapping, RFC 7296
        // 2.23: the float to 4500 happens on IKE_AUTH).
        if sa.state != State::Established && h.exchange == exchange::IKE_AUTH {
            sa.local = local;
            sa.remote = remote;
        }
        let reply = match h.exchange {
            exchange::IKE_AUTH if sa.role == Role::Responder && sa.state == State::Init => {
                self.responder_auth(now, spi, &payloads)
            }
            exchange::INFORMATIONAL => self.informational(now, spi, local, remote, &payloads),
            exchange::CREATE_CHILD_SA => self.create_child_request(now, spi, &payloads),
            _ => Some(vec![Payload::notify(notify::INVALID_SYNTAX, vec![])]),
        };
        let Some(reply) = reply else { return };
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let data = sa.encrypted(h.exchange, h.message_id, true, &reply);
        sa.peer_next_id = h.message_id.wrapping_add(1);
        sa.last_response = Some((h.message_id, data.clone()));
        // A response goes back where the request came from (RFC 7296 2.11), which is not the
        // SA's address when a MOBIKE peer probes a new path before it updates.
        self.transmits.push_back(Transmit {
            src: local,
            dst: remote,
            data,
        });
        if sa.state == State::Deleting && sa.outstanding.is_none() {
            self.sas.remove(&spi);
        }
    }

    fn responder_auth(&mut self, now: u64, spi: u64, p: &[Payload]) -> Option<Vec<Payload>> {
        let failed = || Some(vec![Payload::notify(notify::AUTHENTICATION_FAILED, vec![])]);
        let idi = p.iter().find_map(|x| {
            if let Payload::IdI(i) = x {
                Some(i.clone())
            } else {
                None
            }
        });
        let auth = p.iter().find_map(|x| {
            if let Payload::Auth { data, .. } = x {
                Some(data.clone())
            } else {
                None
            }
        });
        let idr_wanted = p.iter().find_map(|x| {
            if let Payload::IdR(i) = x {
                Some(i.clone())
            } else {
                None
            }
        });
        let (Some(idi), Some(auth)) = (idi, auth) else {
            self.fail_auth(spi);
            return failed();
        };
        let sa = self.sas.get(&spi)?;
        // The connection for this peer: its identity matches, the IKE proposal is one of its
        // own, and (if the peer named us) our identity is the one it asked for.
        let cfg = self.peers.iter().find(|c| {
            c.remote_id.as_ref().is_none_or(|r| *r == idi)
                && c.ike_proposals.contains(&sa.prop)
                && idr_wanted.as_ref().is_none_or(|w| *w == c.local_id)
        })?;
        let cfg = cfg.clone();
        let keys = sa.keys.as_ref()?;
        let Authenticator::Psk(psk) = &cfg.auth;
        let expect = crypto::psk_auth(
            keys.prf,
            psk,
            &sa.init_request,
            &sa.nr,
            &keys.sk_pi,
            &idi.body(),
        );
        if !ct_eq(&expect, &auth) {
            self.fail_auth(spi);
            return failed();
        }
        let my_auth = crypto::psk_auth(
            keys.prf,
            psk,
            &sa.init_response,
            &sa.ni,
            &keys.sk_pr,
            &cfg.local_id.body(),
        );
        let mut reply = vec![
            Payload::IdR(cfg.local_id.clone()),
            Payload::Auth {
                method: 2,
                data: my_auth.to_vec(),
            },
        ];
        // A virtual IP when asked for and we have a pool.
        let wants_vip = p.iter().any(|x| matches!(x, Payload::Cp { kind: cfg::REQUEST, attrs } if attrs.iter().any(|a| a.kind == cfg::INTERNAL_IP4_ADDRESS)));
        let mut vip = None;
        if wants_vip {
            if let Some(pool) = &cfg.pool {
                vip = self.lease(pool, IkeSaId(spi));
                match vip {
                    Some(a) => reply.push(Payload::Cp {
                        kind: cfg::REPLY,
                        attrs: vec![CfgAttr {
                            kind: cfg::INTERNAL_IP4_ADDRESS,
                            value: a.octets().to_vec(),
                        }],
                    }),
                    None => reply.push(Payload::notify(notify::INTERNAL_ADDRESS_FAILURE, vec![])),
                }
            }
        }
        let child_spi = self.spi32();
        let sa = self.sas.get_mut(&spi)?;
        sa.peer = Some(cfg.clone());
        sa.state = State::Established;
        sa.mobike = find_notify(p, notify::MOBIKE_SUPPORTED).is_some();
        sa.virtual_ip = vip.map(IpAddr::V4);
        sa.rekey_at = if cfg.ike_rekey_ns > 0 {
            now + cfg.ike_rekey_ns
        } else {
            0
        };
        self.half_open.retain(|_, v| *v != spi);
        self.events.push_back(Event::IkeUp {
            ike: IkeSaId(spi),
            peer: cfg.name.clone(),
            remote_id: idi.display(),
            local: sa.local,
            remote: sa.remote,
            virtual_ip: sa.virtual_ip,
            virtual_ip_is_ours: false,
        });
        // The first CHILD_SA.
        let remote_cfg_ts: Vec<TrafficSelector> = match vip {
            Some(a) => vec![host_ts(IpAddr::V4(a))],
            None => cfg.remote_ts.clone(),
        };
        match negotiate_child(p, &cfg.esp_proposals, &cfg.local_ts, &remote_cfg_ts) {
            Ok((num, esp, spi_out, tsi, tsr)) => {
                let (keys, ni, nr) = (sa.keys.as_ref()?, sa.ni.clone(), sa.nr.clone());
                let len = SkCipher::keymat_len(esp.encr_bits);
                let (i2r, r2i) = crypto::child_keymat(keys.prf, &keys.sk_d, None, &ni, &nr, len);
                let child = Child {
                    name: cfg.name.clone(),
                    spi_in: child_spi,
                    spi_out,
                    esn: esp.esn,
                    encr_bits: esp.encr_bits,
                    local_ts: tsr.clone(),
                    remote_ts: tsi.clone(),
                    rekey_at: deadline(now, cfg.child_rekey_ns),
                    expire_at: deadline(now, cfg.child_life_ns),
                    rekeying: false,
                    replaced: false,
                    peer_rekey: None,
                };
                let info = sa.child_info(&child, i2r, r2i, None, false);
                sa.children.push(child);
                self.events.push_back(Event::ChildUp(info));
                reply.push(Payload::Sa(vec![esp_proposal(num, &esp, child_spi)]));
                reply.push(Payload::TsI(tsi));
                reply.push(Payload::TsR(tsr));
            }
            Err(n) => reply.push(Payload::notify(n, vec![])),
        }
        reply.push(Payload::notify(notify::MOBIKE_SUPPORTED, vec![]));
        Some(reply)
    }

    fn fail_auth(&mut self, spi: u64) {
        if let Some(sa) = self.sas.get_mut(&spi) {
            sa.state = State::Deleting;
        }
        self.half_open.retain(|_, v| *v != spi);
        self.events.push_back(Event::IkeDown {
            ike: IkeSaId(spi),
            reason: DownReason::AuthFailed,
        });
    }

    fn lease(&mut self, pool: &Pool, ike: IkeSaId) -> Option<Ipv4Addr> {
        // From where the last search stopped: O(1) while the pool has room (and a released
        // address is not handed out again at once).
        let first = u32::from(pool.first);
        for k in 0..pool.count {
            let i = (self.lease_cursor.wrapping_add(k)) % pool.count.max(1);
            let a = Ipv4Addr::from(first.checked_add(i)?);
            if let std::collections::hash_map::Entry::Vacant(e) = self.leases.entry(a) {
                e.insert(ike);
                self.lease_cursor = i.wrapping_add(1);
                return Some(a);
            }
        }
        None
    }

    fn informational(
        &mut self,
        _now: u64,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        p: &[Payload],
    ) -> Option<Vec<Payload>> {
        let mut reply = Vec::new();
        self.mobike_request(spi, local, remote, p, &mut reply);
        for x in p {
            if let Payload::Delete { protocol, spis } = x {
                match *protocol {
                    proto::IKE => {
                        let sa = self.sas.get_mut(&spi)?;
                        sa.state = State::Deleting;
                        sa.outstanding = None;
                        self.down_children(spi);
                        self.events.push_back(Event::IkeDown {
                            ike: IkeSaId(spi),
                            reason: DownReason::PeerDeleted,
                        });
                        self.release_lease(spi);
                        return Some(Vec::new());
                    }
                    proto::ESP => {
                        let mut ours = Vec::new();
                        let sa = self.sas.get_mut(&spi)?;
                        for s in spis {
                            let Ok(b) = <[u8; 4]>::try_from(s.as_slice()) else {
                                continue;
                            };
                            let out_spi = u32::from_be_bytes(b);
                            if let Some(i) = sa.children.iter().position(|c| c.spi_out == out_spi) {
                                let c = sa.children.remove(i);
                                ours.push(c.spi_in.to_be_bytes().to_vec());
                                self.events.push_back(Event::ChildDown {
                                    ike: IkeSaId(spi),
                                    spi_in: c.spi_in,
                                    spi_out: c.spi_out,
                                });
                            }
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
        }
        // Anything else (an empty request: liveness; status notifies) gets an empty answer.
        Some(reply)
    }

    fn create_child_request(&mut self, now: u64, spi: u64, p: &[Payload]) -> Option<Vec<Payload>> {
        let sa = self.sas.get(&spi)?;
        if sa.state != State::Established {
            return Some(vec![Payload::notify(notify::TEMPORARY_FAILURE, vec![])]);
        }
        let cfg = sa.peer.clone()?;
        let props = find_sa(p)?;
        let ni = find_nonce(p)?.to_vec();
        // IKE SA rekey: an IKE proposal with the new initiator SPI.
        if props.first().is_some_and(|x| x.protocol == proto::IKE) {
            let Some((num, prop)) = select_ike(props, &cfg.ike_proposals) else {
                return Some(vec![Payload::notify(notify::NO_PROPOSAL_CHOSEN, vec![])]);
            };
            let new_spi_i = props
                .iter()
                .find(|x| x.num == num)
                .and_then(|x| <[u8; 8]>::try_from(x.spi.as_slice()).ok())
                .map(u64::from_be_bytes)?;
            let (group, ke) = find_ke(p)?;
            if group != prop.dh.id() {
                return Some(vec![Payload::notify(
                    notify::INVALID_KE_PAYLOAD,
                    prop.dh.id().to_be_bytes().to_vec(),
                )]);
            }
            // Simultaneous IKE rekey (RFC 7296 2.8.2): when we are rekeying this IKE SA too,
            // both exchanges complete; the children wait on the old SA until ours is done,
            // then go to the new SA whose exchange did not have the lowest nonce.
            let colliding = matches!(
                sa.outstanding,
                Some(Outstanding {
                    request: Request::RekeyIke { .. },
                    ..
                })
            );
            let dh = DhPrivate::generate(prop.dh, &mut self.rng);
            let shared = dh.shared(ke).ok()?;
            let new_spi_r = self.spi64();
            let nr = self.nonce();
            let sa = self.sas.get(&spi)?;
            let old = sa.keys.as_ref()?;
            let keys = IkeKeys::derive(
                prop.prf,
                Some((old.prf, &old.sk_d)),
                &shared,
                &ni,
                &nr,
                new_spi_i,
                new_spi_r,
                prop.encr_len(),
                prop.integ_len(),
            );
            let mut new = IkeSa::new(
                IkeSaId(new_spi_r),
                Role::Responder,
                new_spi_i,
                new_spi_r,
                sa.local,
                sa.remote,
                prop,
                now,
            );
            new.peer = Some(cfg.clone());
            new.state = State::Established;
            new.ni = ni;
            new.nr = nr.clone();
            new.nat = sa.nat;
            new.virtual_ip = sa.virtual_ip;
            new.mobike = sa.mobike;
            new.peer_additional = sa.peer_additional.clone();
            new.our_additional = sa.our_additional.clone();
            if !colliding {
                new.children = sa.children.clone();
            }
            new.rekey_at = if cfg.ike_rekey_ns > 0 {
                now + cfg.ike_rekey_ns
            } else {
                0
            };
            let min_nonce = core::cmp::min(new.ni.as_slice(), new.nr.as_slice()).to_vec();
            new.install_keys(keys);
            self.sas.insert(new_spi_r, new);
            if colliding {
                if let Some(old) = self.sas.get_mut(&spi) {
                    old.rekey_peer = Some((new_spi_r, min_nonce));
                }
            } else {
                // The old IKE SA's children now belong to the new one; the initiator deletes
                // the old IKE SA next.
                if let Some(old) = self.sas.get_mut(&spi) {
                    old.children.clear();
                }
                self.move_lease(spi, new_spi_r);
                self.events.push_back(Event::IkeRekeyed {
                    old: IkeSaId(spi),
                    new: IkeSaId(new_spi_r),
                    initiated_here: false,
                });
            }
            return Some(vec![
                Payload::Sa(vec![Proposal {
                    num,
                    protocol: proto::IKE,
                    spi: new_spi_r.to_be_bytes().to_vec(),
                    transforms: ike_transforms(&prop),
                }]),
                Payload::Nonce(nr),
                Payload::Ke {
                    group: prop.dh.id(),
                    data: dh.public().to_vec(),
                },
            ]);
        }
        // CHILD_SA rekey (REKEY_SA names the old one by its SPI as the peer receives it: our
        // outbound) or a new CHILD_SA.
        let old_out = p.iter().find_map(|x| match x {
            Payload::Notify {
                kind: notify::REKEY_SA,
                spi,
                ..
            } => <[u8; 4]>::try_from(spi.as_slice())
                .ok()
                .map(u32::from_be_bytes),
            _ => None,
        });
        let old = match old_out {
            Some(o) => match sa.children.iter().find(|c| c.spi_out == o) {
                // We replaced it already; our delete of it is on its way (RFC 7296 2.25).
                Some(c) if c.replaced => {
                    return Some(vec![Payload::notify(notify::TEMPORARY_FAILURE, vec![])])
                }
                Some(c) => Some(c.clone()),
                None => return Some(vec![Payload::notify(notify::CHILD_SA_NOT_FOUND, vec![])]),
            },
            None => None,
        };
        let (lts, rts) = match &old {
            Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
            None => (cfg.local_ts.clone(), cfg.remote_ts.clone()),
        };
        let (num, esp, spi_out, tsi, tsr) = match negotiate_child(p, &cfg.esp_proposals, &lts, &rts)
        {
            Ok(x) => x,
            Err(n) => return Some(vec![Payload::notify(n, vec![])]),
        };
        // PFS when the initiator sent a KE.
        let (ke_reply, shared) = match find_ke(p) {
            Some((group, ke)) => {
                let g = DhGroup::from_id(group)?;
                let dh = DhPrivate::generate(g, &mut self.rng);
                let s = dh.shared(ke).ok()?;
                (
                    Some(Payload::Ke {
                        group,
                        data: dh.public().to_vec(),
                    }),
                    Some(s),
                )
            }
            None => (None, None),
        };
        let new_in = self.spi32();
        let nr = self.nonce();
        let sa = self.sas.get_mut(&spi)?;
        let keys = sa.keys.as_ref()?;
        let len = SkCipher::keymat_len(esp.encr_bits);
        let (i2r, r2i) = crypto::child_keymat(
            keys.prf,
            &keys.sk_d,
            shared.as_deref().map(|v| v.as_slice()),
            &ni,
            &nr,
            len,
        );
        let child = Child {
            name: cfg.name.clone(),
            spi_in: new_in,
            spi_out,
            esn: esp.esn,
            encr_bits: esp.encr_bits,
            local_ts: tsr.clone(),
            remote_ts: tsi.clone(),
            rekey_at: deadline(now, cfg.child_rekey_ns),
            expire_at: deadline(now, cfg.child_life_ns),
            rekeying: false,
            replaced: false,
            peer_rekey: None,
        };
        let info = sa.child_info(&child, i2r, r2i, old.as_ref().map(|c| c.spi_in), false);
        sa.children.push(child);
        self.events.push_back(Event::ChildUp(info));
        // We are rekeying the same CHILD_SA: remember this exchange's lowest nonce for the
        // collision rule when our own answer comes.
        if let Some(o) = &old {
            if let Some(c) = sa
                .children
                .iter_mut()
                .find(|c| c.spi_in == o.spi_in && c.rekeying)
            {
                c.peer_rekey = Some((
                    new_in,
                    core::cmp::min(ni.as_slice(), nr.as_slice()).to_vec(),
                ));
            }
        }
        let mut reply = vec![
            Payload::Sa(vec![esp_proposal(num, &esp, new_in)]),
            Payload::Nonce(nr),
        ];
        if let Some(k) = ke_reply {
            reply.push(k);
        }
        reply.push(Payload::TsI(tsi));
        reply.push(Payload::TsR(tsr));
        Some(reply)
    }

    /// Sends a CREATE_CHILD_SA request for a new CHILD_SA: the rekey of inbound SPI `old_in`
    /// (REKEY_SA names it), or with `old_in` 0 a further one (0 is never one of our SPIs,
    /// they start above 255). The response is handled as `Request::RekeyChild` either way.
    fn send_create_child(
        &mut self,
        now: u64,
        spi: u64,
        old_in: u32,
        esp: Vec<EspProposal>,
        tsi: Vec<TrafficSelector>,
        tsr: Vec<TrafficSelector>,
    ) {
        let new_spi = self.spi32();
        let nonce = self.nonce();
        let mut p = Vec::with_capacity(5);
        if old_in != 0 {
            p.push(Payload::Notify {
                protocol: proto::ESP,
                spi: old_in.to_be_bytes().to_vec(),
                kind: notify::REKEY_SA,
                data: vec![],
            });
        }
        p.push(Payload::Sa(esp_proposals_payload(&esp, new_spi)));
        p.push(Payload::Nonce(nonce.clone()));
        p.push(Payload::TsI(tsi));
        p.push(Payload::TsR(tsr));
        self.send_encrypted(
            now,
            spi,
            exchange::CREATE_CHILD_SA,
            &p,
            Request::RekeyChild {
                old_spi_in: old_in,
                new_spi,
                nonce,
                dh: None,
                esp,
            },
        );
    }

    // ---- MOBIKE (RFC 4555) ----------------------------------------------------------------

    /// The MOBIKE part of an authenticated INFORMATIONAL request (it passed the integrity
    /// check and the message-id window, so a replayed or forged one never gets here):
    /// UPDATE_SA_ADDRESSES moves the IKE SA and its CHILD_SAs to the addresses this request
    /// came from and to (RFC 4555 3.5), announced addresses are kept, COOKIE2 is echoed.
    fn mobike_request(
        &mut self,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        p: &[Payload],
        reply: &mut Vec<Payload>,
    ) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        if !sa.mobike || sa.state != State::Established {
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
            sa.peer_additional = announced;
        }
        if find_notify(p, notify::UPDATE_SA_ADDRESSES).is_some() {
            let (spi_i, spi_r) = (sa.spi_i, sa.spi_r);
            sa.local = local;
            sa.remote = remote;
            sa.nat = nat_detected(p, spi_i, spi_r, local, remote);
            reply.push(Payload::notify(
                notify::NAT_DETECTION_SOURCE_IP,
                crypto::nat_hash(spi_i, spi_r, local.ip(), local.port()),
            ));
            reply.push(Payload::notify(
                notify::NAT_DETECTION_DESTINATION_IP,
                crypto::nat_hash(spi_i, spi_r, remote.ip(), remote.port()),
            ));
            let moved = sa.moved_event();
            self.events.push_back(moved);
        }
        if let Some(c) = find_notify(p, notify::COOKIE2) {
            reply.push(Payload::notify(notify::COOKIE2, c.to_vec()));
        }
    }

    /// MOBIKE, the mobile end (RFC 4555 3.4): our address for IKE SA `ike` is now `local`
    /// (the old one went away, or a better path came up). The IKE SA and its CHILD_SAs move at
    /// once on our side (an [`Event::IkeMoved`] for our data plane: make-before-break, since
    /// the peer accepts ESP by SPI from anywhere), and an UPDATE_SA_ADDRESSES request with NAT
    /// detection and a COOKIE2 tells the peer; its retransmissions leave from the new address.
    /// `additional` are further addresses of ours, announced with it (none:
    /// NO_ADDITIONAL_ADDRESSES).
    pub fn roam(
        &mut self,
        now: u64,
        ike: IkeSaId,
        local: IpAddr,
        additional: Vec<IpAddr>,
    ) -> Result<(), ConnectError> {
        self.touch();
        let sa = self.sas.get_mut(&ike.0).ok_or(ConnectError::NoSuchSa)?;
        if !sa.mobike {
            return Err(ConnectError::NoMobike);
        }
        sa.local = SocketAddr::new(local, sa.local.port());
        sa.our_additional = additional;
        let moved = sa.moved_event();
        self.events.push_back(moved);
        if !sa
            .queue
            .iter()
            .any(|a| matches!(a, Action::UpdateAddresses))
        {
            sa.queue.push_back(Action::UpdateAddresses);
        }
        self.next_action(now, ike.0);
        Ok(())
    }

    /// Starts a further CHILD_SA under IKE SA `ike` with the first one's selectors (e.g. one
    /// per core, RFC 9611 style).
    pub fn create_child(&mut self, now: u64, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::NewChild)
    }

    /// The answer to our UPDATE_SA_ADDRESSES: the COOKIE2 must come back (return
    /// routability); NAT detection may change whether ESP goes in UDP.
    fn update_addresses_response(
        &mut self,
        spi: u64,
        local: SocketAddr,
        remote: SocketAddr,
        cookie2: &[u8],
        p: &[Payload],
    ) {
        if find_notify(p, notify::COOKIE2) != Some(cookie2) {
            self.remove_sa(spi, DownReason::ReturnRoutability);
            return;
        }
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let nat = nat_detected(p, sa.spi_i, sa.spi_r, local, remote);
        let encap_before = sa.nat || sa.remote.port() == 4500;
        sa.nat = nat;
        sa.local = local;
        sa.remote = remote;
        if (sa.nat || sa.remote.port() == 4500) != encap_before {
            let moved = sa.moved_event();
            self.events.push_back(moved);
        }
    }

    // ---- operator and timer driven requests ----------------------------------------------

    /// Rekeys the CHILD_SA whose inbound SPI is `spi_in` (make-before-break: the new SA is
    /// reported up before the old one is deleted).
    pub fn rekey_child(&mut self, now: u64, ike: IkeSaId, spi_in: u32) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::RekeyChild(spi_in))
    }

    pub fn rekey_ike(&mut self, now: u64, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::RekeyIke)
    }

    pub fn delete_ike(&mut self, now: u64, ike: IkeSaId) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::DeleteIke)
    }

    /// The IKE SA a CHILD_SA (by inbound SPI) belongs to now.
    pub fn ike_of_child(&self, spi_in: u32) -> Option<IkeSaId> {
        self.sas
            .values()
            .find(|sa| sa.children.iter().any(|c| c.spi_in == spi_in))
            .map(|sa| sa.id)
    }

    pub fn delete_child(
        &mut self,
        now: u64,
        ike: IkeSaId,
        spi_in: u32,
    ) -> Result<(), ConnectError> {
        self.enqueue(now, ike, Action::DeleteChild(spi_in))
    }

    fn enqueue(&mut self, now: u64, ike: IkeSaId, a: Action) -> Result<(), ConnectError> {
        self.touch();
        let sa = self.sas.get_mut(&ike.0).ok_or(ConnectError::NoSuchSa)?;
        sa.queue.push_back(a);
        self.next_action(now, ike.0);
        Ok(())
    }

    /// Starts the next queued request if the window is free.
    fn next_action(&mut self, now: u64, spi: u64) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        if sa.outstanding.is_some() || sa.state != State::Established {
            return;
        }
        let Some(a) = sa.queue.pop_front() else {
            return;
        };
        match a {
            Action::Liveness => {
                self.send_encrypted(now, spi, exchange::INFORMATIONAL, &[], Request::Liveness);
            }
            Action::DeleteIke => {
                sa.state = State::Deleting;
                self.down_children(spi);
                let p = [Payload::Delete {
                    protocol: proto::IKE,
                    spis: vec![],
                }];
                self.send_encrypted(now, spi, exchange::INFORMATIONAL, &p, Request::DeleteIke);
            }
            Action::DeleteChild(spi_in) => {
                if !sa.children.iter().any(|c| c.spi_in == spi_in) {
                    return self.next_action(now, spi);
                }
                let p = [Payload::Delete {
                    protocol: proto::ESP,
                    spis: vec![spi_in.to_be_bytes().to_vec()],
                }];
                let request = Request::DeleteChild { spi_in };
                self.send_encrypted(now, spi, exchange::INFORMATIONAL, &p, request);
            }
            Action::NewChild => {
                let Some(cfg) = sa.peer.clone() else { return };
                // The first CHILD_SA's selectors (a client's virtual IP), else the config's.
                let (tsi, tsr) = match sa.children.first() {
                    Some(c) => (c.local_ts.clone(), c.remote_ts.clone()),
                    None => (cfg.local_ts.clone(), cfg.remote_ts.clone()),
                };
                self.send_create_child(now, spi, 0, cfg.esp_proposals.clone(), tsi, tsr);
            }
            Action::UpdateAddresses => {
                let mut cookie2 = vec![0u8; 16];
                self.rng.fill_bytes(&mut cookie2);
                let Some(sa) = self.sas.get_mut(&spi) else {
                    return;
                };
                let (spi_i, spi_r) = (sa.spi_i, sa.spi_r);
                let mut p = vec![
                    Payload::notify(notify::UPDATE_SA_ADDRESSES, vec![]),
                    Payload::notify(
                        notify::NAT_DETECTION_SOURCE_IP,
                        crypto::nat_hash(spi_i, spi_r, sa.local.ip(), sa.local.port()),
                    ),
                    Payload::notify(
                        notify::NAT_DETECTION_DESTINATION_IP,
                        crypto::nat_hash(spi_i, spi_r, sa.remote.ip(), sa.remote.port()),
                    ),
                    Payload::notify(notify::COOKIE2, cookie2.clone()),
                ];
                if sa.our_additional.is_empty() {
                    p.push(Payload::notify(notify::NO_ADDITIONAL_ADDRESSES, vec![]));
                }
                for a in &sa.our_additional {
                    p.push(match a {
                        IpAddr::V4(v) => {
                            Payload::notify(notify::ADDITIONAL_IP4_ADDRESS, v.octets().to_vec())
                        }
                        IpAddr::V6(v) => {
                            Payload::notify(notify::ADDITIONAL_IP6_ADDRESS, v.octets().to_vec())
                        }
                    });
                }
                self.send_encrypted(
                    now,
                    spi,
                    exchange::INFORMATIONAL,
                    &p,
                    Request::UpdateAddresses {
                        cookie2,
                        tried: Vec::new(),
                    },
                );
            }
            Action::RekeyChild(old_in) => {
                let Some(old) = sa
                    .children
                    .iter_mut()
                    .find(|c| c.spi_in == old_in && !c.replaced && !c.rekeying)
                else {
                    return self.next_action(now, spi);
                };
                old.rekeying = true;
                let old = old.clone();
                let Some(cfg) = sa.peer.clone() else { return };
                let esp: Vec<EspProposal> = cfg
                    .esp_proposals
                    .iter()
                    .copied()
                    .filter(|e| e.esn == old.esn)
                    .collect();
                self.send_create_child(now, spi, old_in, esp, old.local_ts, old.remote_ts);
            }
            Action::RekeyIke => {
                let prop = sa.prop;
                let new_spi = self.spi64();
                let nonce = self.nonce();
                let dh = DhPrivate::generate(prop.dh, &mut self.rng);
                let p = [
                    Payload::Sa(ike_proposals_payload(&[prop], &new_spi.to_be_bytes())),
                    Payload::Nonce(nonce.clone()),
                    Payload::Ke {
                        group: prop.dh.id(),
                        data: dh.public().to_vec(),
                    },
                ];
                self.send_encrypted(
                    now,
                    spi,
                    exchange::CREATE_CHILD_SA,
                    &p,
                    Request::RekeyIke {
                        new_spi,
                        nonce,
                        dh,
                        prop,
                    },
                );
            }
        }
    }

    /// Sends `payloads` as IKE SA `spi`'s next request (its next message id, encrypted) and
    /// keeps it for retransmission until `request`'s response comes.
    fn send_encrypted(
        &mut self,
        now: u64,
        spi: u64,
        exchange: u8,
        payloads: &[Payload],
        request: Request,
    ) {
        let timeout = self.config.retransmit.timeout_ns;
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let id = sa.take_request_id();
        let data = sa.encrypted(exchange, id, false, payloads);
        sa.outstanding = Some(Outstanding {
            id,
            data: data.clone(),
            request,
            tries: 0,
            deadline: now + timeout,
        });
        self.transmits.push_back(Transmit {
            src: sa.local,
            dst: sa.remote,
            data,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn rekey_child_response(
        &mut self,
        now: u64,
        spi: u64,
        old_in: u32,
        new_spi: u32,
        ni: &[u8],
        dh: Option<DhPrivate>,
        esp: &[EspProposal],
        p: &[Payload],
    ) {
        let Some(sa) = self.sas.get_mut(&spi) else {
            return;
        };
        let (Some(props), Some(nr), Some(tsi), Some(tsr)) =
            (find_sa(p), find_nonce(p), find_tsi(p), find_tsr(p))
        else {
            // Refused (e.g. TEMPORARY_FAILURE during a simultaneous rekey): try again later.
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == old_in) {
                c.rekey_at = now + 10 * SEC;
                c.rekeying = false;
            }
            return;
        };
        let Some((_, e, spi_out)) = select_esp(props, esp) else {
            return;
        };
        let shared = match (&dh, find_ke(p)) {
            (Some(d), Some((_, ke))) => d.shared(ke).ok(),
            _ => None,
        };
        let Some(keys) = sa.keys.as_ref() else { return };
        let len = SkCipher::keymat_len(e.encr_bits);
        let (i2r, r2i) = crypto::child_keymat(
            keys.prf,
            &keys.sk_d,
            shared.as_deref().map(|v| v.as_slice()),
            ni,
            nr,
            len,
        );
        let Some(cfg) = sa.peer.clone() else { return };
        let child = Child {
            name: cfg.name.clone(),
            spi_in: new_spi,
            spi_out,
            esn: e.esn,
            encr_bits: e.encr_bits,
            local_ts: tsi.to_vec(),
            remote_ts: tsr.to_vec(),
            rekey_at: deadline(now, cfg.child_rekey_ns),
            expire_at: deadline(now, cfg.child_life_ns),
            rekeying: false,
            replaced: false,
            peer_rekey: None,
        };
        let mut info = sa.child_info(&child, r2i, i2r, (old_in != 0).then_some(old_in), true);
        sa.children.push(child);
        if old_in == 0 {
            // A further CHILD_SA, not a rekey.
            self.events.push_back(Event::ChildUp(info));
            return;
        }
        let our_min = core::cmp::min(ni, nr).to_vec();
        let Some(old) = sa.children.iter_mut().find(|c| c.spi_in == old_in) else {
            return;
        };
        old.rekeying = false;
        old.replaced = true;
        match old.peer_rekey.take() {
            // Both ends rekeyed it at once (RFC 7296 2.8.1): the CHILD_SA made with the lowest
            // of the four nonces is redundant and its creator deletes it. If that is ours, we
            // never send on it, delete it, and leave the old one to the peer, whose rekey won.
            Some((_, peer_min)) if our_min < peer_min => {
                info.redundant = true;
                sa.queue.push_front(Action::DeleteChild(new_spi));
            }
            // Ours won (or there was no collision): make-before-break, the old one goes now.
            _ => sa.queue.push_front(Action::DeleteChild(old_in)),
        }
        self.events.push_back(Event::ChildUp(info));
    }

    #[allow(clippy::too_many_arguments)]
    fn rekey_ike_response(
        &mut self,
        now: u64,
        spi: u64,
        new_spi_i: u64,
        ni: &[u8],
        dh: &DhPrivate,
        prop: IkeProposal,
        p: &[Payload],
    ) {
        let Some(sa) = self.sas.get(&spi) else { return };
        let (Some(props), Some(nr), Some((_, ke))) = (find_sa(p), find_nonce(p), find_ke(p)) else {
            // Refused (e.g. TEMPORARY_FAILURE: the peer is rekeying it too): if the peer's
            // rekey made a new IKE SA here, that one carries on.
            self.settle_ike_rekey(now, spi);
            return;
        };
        let Some(new_spi_r) = props
            .first()
            .and_then(|x| <[u8; 8]>::try_from(x.spi.as_slice()).ok())
            .map(u64::from_be_bytes)
        else {
            return;
        };
        let Ok(shared) = dh.shared(ke) else { return };
        let Some(old) = sa.keys.as_ref() else { return };
        let keys = IkeKeys::derive(
            prop.prf,
            Some((old.prf, &old.sk_d)),
            &shared,
            ni,
            nr,
            new_spi_i,
            new_spi_r,
            prop.encr_len(),
            prop.integ_len(),
        );
        let cfg = sa.peer.clone();
        let mut new = IkeSa::new(
            IkeSaId(new_spi_i),
            Role::Initiator,
            new_spi_i,
            new_spi_r,
            sa.local,
            sa.remote,
            prop,
            now,
        );
        new.peer = cfg.clone();
        new.state = State::Established;
        new.ni = ni.to_vec();
        new.nr = nr.to_vec();
        new.nat = sa.nat;
        new.virtual_ip = sa.virtual_ip;
        new.mobike = sa.mobike;
        new.peer_additional = sa.peer_additional.clone();
        new.our_additional = sa.our_additional.clone();
        let colliding = sa.rekey_peer.is_some();
        if !colliding {
            new.children = sa.children.clone();
        }
        new.rekey_at = cfg
            .as_ref()
            .filter(|c| c.ike_rekey_ns > 0)
            .map_or(0, |c| now + c.ike_rekey_ns);
        new.install_keys(keys);
        self.sas.insert(new_spi_i, new);
        if colliding {
            if let Some(old) = self.sas.get_mut(&spi) {
                old.rekey_ours = Some((new_spi_i, core::cmp::min(ni, nr).to_vec()));
            }
            self.settle_ike_rekey(now, spi);
            return;
        }
        if let Some(old) = self.sas.get_mut(&spi) {
            old.children.clear();
            old.queue.clear();
            old.queue.push_back(Action::DeleteIke);
        }
        self.move_lease(spi, new_spi_i);
        self.events.push_back(Event::IkeRekeyed {
            old: IkeSaId(spi),
            new: IkeSaId(new_spi_i),
            initiated_here: true,
        });
    }

    /// After a simultaneous rekey of IKE SA `old` (RFC 7296 2.8.2): the new IKE SA made by the
    /// exchange with the lowest of the four nonces is redundant and its creator deletes it;
    /// the other takes the children (and the virtual IP lease); the old one is deleted. With
    /// our exchange failed, the peer's new IKE SA carries on.
    fn settle_ike_rekey(&mut self, now: u64, old: u64) {
        let Some(o) = self.sas.get_mut(&old) else {
            return;
        };
        let Some((theirs, their_min)) = o.rekey_peer.take() else {
            return;
        };
        let ours = o.rekey_ours.take();
        let (survivor, redundant_ours) = match &ours {
            Some((mine, my_min)) if my_min < &their_min => (theirs, Some(*mine)),
            Some((mine, _)) => (*mine, None),
            None => (theirs, None),
        };
        let children = core::mem::take(&mut o.children);
        o.queue.clear();
        o.queue.push_back(Action::DeleteIke);
        if let Some(s) = self.sas.get_mut(&survivor) {
            s.children = children;
        }
        self.move_lease(old, survivor);
        self.events.push_back(Event::IkeRekeyed {
            old: IkeSaId(old),
            new: IkeSaId(survivor),
            initiated_here: ours.as_ref().is_some_and(|(m, _)| *m == survivor),
        });
        if let Some(r) = redundant_ours {
            // Ours lost: it never carried anything; delete it.
            if let Some(sa) = self.sas.get_mut(&r) {
                sa.queue.push_back(Action::DeleteIke);
            }
            self.next_action(now, r);
        }
        self.next_action(now, old);
    }

    // ---- timers ----------------------------------------------------------------------------

    /// Retransmits, times out dead peers, starts due rekeys and liveness checks.
    pub fn handle_timeout(&mut self, now: u64) {
        self.touch();
        let rt = self.config.retransmit;
        let spis: Vec<u64> = self.sas.keys().copied().collect();
        for spi in spis {
            let Some(sa) = self.sas.get_mut(&spi) else {
                continue;
            };
            if let Some(out) = sa.outstanding.as_mut() {
                if now >= out.deadline {
                    if out.tries >= rt.tries {
                        // MOBIKE: the peer announced other addresses; try them before giving
                        // up (RFC 4555 3.3, 3.11).
                        if let Request::UpdateAddresses { tried, .. } = &mut out.request {
                            tried.push(sa.remote.ip());
                            let next = sa
                                .peer_additional
                                .iter()
                                .find(|a| !tried.contains(a) && a.is_ipv4() == sa.local.is_ipv4())
                                .copied();
                            if let Some(a) = next {
                                sa.remote = SocketAddr::new(a, sa.remote.port());
                                out.tries = 0;
                                out.deadline = now.saturating_add(rt.timeout_ns);
                                self.transmits.push_back(Transmit {
                                    src: sa.local,
                                    dst: sa.remote,
                                    data: out.data.clone(),
                                });
                                let moved = sa.moved_event();
                                self.events.push_back(moved);
                                continue;
                            }
                        }
                        self.remove_sa(spi, DownReason::Timeout);
                        continue;
                    }
                    out.tries += 1;
                    let mut t = rt.timeout_ns;
                    for _ in 0..out.tries {
                        t = t.saturating_mul(rt.base_milli) / 1000;
                    }
                    out.deadline = now.saturating_add(t);
                    let data = out.data.clone();
                    self.transmits.push_back(Transmit {
                        src: sa.local,
                        dst: sa.remote,
                        data,
                    });
                }
                continue;
            }
            if sa.state == State::Init
                && sa.role == Role::Responder
                && now.saturating_sub(sa.last_heard) > 30 * SEC
            {
                // A half-open SA nobody completed.
                self.sas.remove(&spi);
                self.half_open.retain(|_, v| *v != spi);
                continue;
            }
            if sa.state != State::Established {
                continue;
            }
            if sa.rekey_at != 0 && now >= sa.rekey_at {
                sa.rekey_at = 0;
                sa.queue.push_back(Action::RekeyIke);
            }
            for c in sa.children.iter_mut() {
                if c.rekey_at != 0 && now >= c.rekey_at {
                    c.rekey_at = 0;
                    sa.queue.push_back(Action::RekeyChild(c.spi_in));
                }
                if c.expire_at != 0 && now >= c.expire_at && !c.replaced {
                    c.expire_at = 0;
                    sa.queue.push_back(Action::DeleteChild(c.spi_in));
                }
            }
            let dpd = sa.peer.as_ref().map_or(0, |p| p.dpd_ns);
            if dpd > 0 && now.saturating_sub(sa.last_heard) >= dpd && sa.queue.is_empty() {
                sa.last_heard = now;
                sa.queue.push_back(Action::Liveness);
            }
            self.next_action(now, spi);
        }
    }

    fn remove_sa(&mut self, spi: u64, reason: DownReason) {
        self.down_children(spi);
        self.release_lease(spi);
        if self.sas.remove(&spi).is_some() {
            self.half_open.retain(|_, v| *v != spi);
            self.events.push_back(Event::IkeDown {
                ike: IkeSaId(spi),
                reason,
            });
        }
    }

    fn down_children(&mut self, spi: u64) {
        if let Some(sa) = self.sas.get_mut(&spi) {
            for c in sa.children.drain(..) {
                self.events.push_back(Event::ChildDown {
                    ike: IkeSaId(spi),
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                });
            }
        }
    }

    fn release_lease(&mut self, spi: u64) {
        self.leases.retain(|_, v| v.0 != spi);
    }

    fn move_lease(&mut self, from: u64, to: u64) {
        for v in self.leases.values_mut() {
            if v.0 == from {
                *v = IkeSaId(to);
            }
        }
    }
}

impl IkeSa {
    /// Where this IKE SA and its CHILD_SAs are now, for the data plane.
    fn moved_event(&self) -> Event {
        Event::IkeMoved {
            ike: self.id,
            local: self.local,
            remote: self.remote,
            udp_encap: self.nat || self.remote.port() == 4500,
            children: self.children.iter().map(|c| c.spi_in).collect(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        id: IkeSaId,
        role: Role,
        spi_i: u64,
        spi_r: u64,
        local: SocketAddr,
        remote: SocketAddr,
        prop: IkeProposal,
        now: u64,
    ) -> IkeSa {
        IkeSa {
            id,
            role,
            state: State::Init,
            spi_i,
            spi_r,
            local,
            remote,
            nat: false,
            peer: None,
            prop,
            dh: None,
            ni: Vec::new(),
            nr: Vec::new(),
            keys: None,
            sk_out: None,
            sk_in: None,
            init_request: Vec::new(),
            init_response: Vec::new(),
            cookie: None,
            next_request_id: 0,
            outstanding: None,
            peer_next_id: 0,
            last_response: None,
            children: Vec::new(),
            virtual_ip: None,
            last_heard: now,
            rekey_at: 0,
            mobike: false,
            rekey_peer: None,
            rekey_ours: None,
            peer_additional: Vec::new(),
            our_additional: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    fn install_keys(&mut self, keys: IkeKeys) {
        let (out, inn, a_out, a_in) = match self.role {
            Role::Initiator => (&keys.sk_ei, &keys.sk_er, &keys.sk_ai, &keys.sk_ar),
            Role::Responder => (&keys.sk_er, &keys.sk_ei, &keys.sk_ar, &keys.sk_ai),
        };
        if self.prop.cbc {
            self.sk_out = SkCipher::new_cbc(out, a_out);
            self.sk_in = SkCipher::new_cbc(inn, a_in);
        } else {
            self.sk_out = SkCipher::new(out);
            self.sk_in = SkCipher::new(inn);
        }
        self.keys = Some(keys);
    }

    fn take_request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = id.wrapping_add(1);
        id
    }

    fn next_deadline(&self) -> Option<u64> {
        let min = |a: Option<u64>, t: u64| {
            if t == 0 {
                a
            } else {
                Some(a.map_or(t, |a| a.min(t)))
            }
        };
        if let Some(o) = &self.outstanding {
            return Some(o.deadline);
        }
        match self.state {
            State::Established => {
                let mut d = min(None, self.rekey_at);
                for c in &self.children {
                    d = min(d, c.rekey_at);
                    if !c.replaced {
                        d = min(d, c.expire_at);
                    }
                }
                if let Some(p) = &self.peer {
                    if p.dpd_ns > 0 {
                        d = min(d, self.last_heard.saturating_add(p.dpd_ns));
                    }
                }
                d
            }
            State::Init if self.role == Role::Responder => {
                Some(self.last_heard.saturating_add(30 * SEC))
            }
            _ => None,
        }
    }

    /// Builds an encrypted message: header, SK payload holding `inner`.
    fn encrypted(&mut self, exch: u8, id: u32, response: bool, inner: &[Payload]) -> Vec<u8> {
        let mut body = Vec::new();
        let first = wire::emit_chain(inner, &mut body);
        let mut flags = if response { wire::FLAG_RESPONSE } else { 0 };
        if self.role == Role::Initiator {
            flags |= wire::FLAG_INITIATOR;
        }
        let sk_len = 4 + self.sk_out.as_ref().map_or(
            crypto::SK_IV_LEN + body.len() + 1 + crypto::SK_ICV_LEN,
            |c| c.sealed_len(body.len()),
        );
        let mut msg = Vec::with_capacity(wire::HEADER_LEN + sk_len);
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: payload::SK,
            exchange: exch,
            flags,
            message_id: id,
            length: (wire::HEADER_LEN + sk_len) as u32,
        }
        .emit(&mut msg);
        msg.push(first);
        msg.push(0);
        msg.extend_from_slice(&(sk_len as u16).to_be_bytes());
        let sealed = match self.sk_out.as_mut() {
            Some(c) => c.seal(&msg, &body),
            None => Vec::new(),
        };
        msg.extend_from_slice(&sealed);
        msg
    }

    /// Decrypts and parses an encrypted message.
    fn open(&self, msg: &[u8], h: &Header) -> Result<Vec<Payload>, Drop> {
        let chain = wire::parse_chain(msg, wire::HEADER_LEN, h.next_payload)
            .map_err(|_| Drop::Malformed)?;
        let sk = chain.sk.ok_or(Drop::Malformed)?;
        let aad = msg.get(..sk.header_at + 4).ok_or(Drop::Malformed)?;
        let body = msg.get(sk.header_at + 4..).ok_or(Drop::Malformed)?;
        let cipher = self.sk_in.as_ref().ok_or(Drop::Unexpected)?;
        let inner = cipher.open(aad, body).map_err(|_| Drop::Integrity)?;
        let c = wire::parse_chain(&inner, 0, sk.first_inner).map_err(|_| Drop::Malformed)?;
        Ok(c.payloads)
    }

    fn child_info(
        &self,
        c: &Child,
        key_in: Secret,
        key_out: Secret,
        rekey_of: Option<u32>,
        initiated_here: bool,
    ) -> ChildSaInfo {
        ChildSaInfo {
            ike: self.id,
            name: c.name.clone(),
            inbound: ChildSaKeys {
                spi: c.spi_in,
                encr_bits: c.encr_bits,
                keymat: key_in,
            },
            outbound: ChildSaKeys {
                spi: c.spi_out,
                encr_bits: c.encr_bits,
                keymat: key_out,
            },
            esn: c.esn,
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            local: self.local,
            remote: self.remote,
            udp_encap: self.nat || self.remote.port() == 4500,
            rekey_of,
            initiated_here,
            redundant: false,
        }
    }
}

/// `now + after`, or 0 (never) when `after` is 0.
fn deadline(now: u64, after: u64) -> u64 {
    if after > 0 {
        now.saturating_add(after)
    } else {
        0
    }
}

fn plain_message(spi_i: u64, spi_r: u64, exch: u8, flags: u8, id: u32, p: &[Payload]) -> Vec<u8> {
    let mut body = Vec::new();
    let first = wire::emit_chain(p, &mut body);
    let mut m = Vec::with_capacity(wire::HEADER_LEN + body.len());
    Header {
        spi_i,
        spi_r,
        next_payload: first,
        exchange: exch,
        flags,
        message_id: id,
        length: (wire::HEADER_LEN + body.len()) as u32,
    }
    .emit(&mut m);
    m.extend_from_slice(&body);
    m
}

fn ike_transforms(p: &IkeProposal) -> Vec<Transform> {
    let mut t = vec![Transform {
        kind: transform::ENCR,
        id: if p.cbc {
            transform::ENCR_AES_CBC
        } else {
            transform::ENCR_AES_GCM_16
        },
        key_len: Some(p.encr_bits),
    }];
    if p.cbc {
        t.push(Transform {
            kind: transform::INTEG,
            id: transform::AUTH_HMAC_SHA2_256_128,
            key_len: None,
        });
    }
    t.extend([
        Transform {
            kind: transform::PRF,
            id: p.prf.id(),
            key_len: None,
        },
        Transform {
            kind: transform::DH,
            id: p.dh.id(),
            key_len: None,
        },
    ]);
    t
}

fn ike_proposals_payload(props: &[IkeProposal], spi: &[u8]) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, p)| Proposal {
            num: (i + 1) as u8,
            protocol: proto::IKE,
            spi: spi.to_vec(),
            transforms: ike_transforms(p),
        })
        .collect()
}

fn esp_proposal(num: u8, e: &EspProposal, spi: u32) -> Proposal {
    Proposal {
        num,
        protocol: proto::ESP,
        spi: spi.to_be_bytes().to_vec(),
        transforms: vec![
            Transform {
                kind: transform::ENCR,
                id: transform::ENCR_AES_GCM_16,
                key_len: Some(e.encr_bits),
            },
            Transform {
                kind: transform::ESN,
                id: if e.esn {
                    transform::ESN_YES
                } else {
                    transform::ESN_NO
                },
                key_len: None,
            },
        ],
    }
}

fn esp_proposals_payload(props: &[EspProposal], spi: u32) -> Vec<Proposal> {
    props
        .iter()
        .enumerate()
        .map(|(i, e)| esp_proposal((i + 1) as u8, e, spi))
        .collect()
}

/// The first of our proposals (our preference) that one of the peer's proposals offers
/// completely. Returns the peer's proposal number.
fn select_ike(theirs: &[Proposal], ours: &[IkeProposal]) -> Option<(u8, IkeProposal)> {
    for o in ours {
        for t in theirs.iter().filter(|t| t.protocol == proto::IKE) {
            let has = |kind: u8, id: u16, key: Option<u16>| {
                t.transforms
                    .iter()
                    .any(|x| x.kind == kind && x.id == id && (key.is_none() || x.key_len == key))
            };
            let encr = if o.cbc {
                transform::ENCR_AES_CBC
            } else {
                transform::ENCR_AES_GCM_16
            };
            let integ_ok = !o.cbc || has(transform::INTEG, transform::AUTH_HMAC_SHA2_256_128, None);
            if has(transform::ENCR, encr, Some(o.encr_bits))
                && integ_ok
                && has(transform::PRF, o.prf.id(), None)
                && has(transform::DH, o.dh.id(), None)
            {
                return Some((t.num, *o));
            }
        }
    }
    None
}

/// As [`select_ike`] for ESP; also returns the peer's SPI.
fn select_esp(theirs: &[Proposal], ours: &[EspProposal]) -> Option<(u8, EspProposal, u32)> {
    for o in ours {
        for t in theirs.iter().filter(|t| t.protocol == proto::ESP) {
            let has = |kind: u8, id: u16, key: Option<u16>| {
                t.transforms
                    .iter()
                    .any(|x| x.kind == kind && x.id == id && (key.is_none() || x.key_len == key))
            };
            let esn_id = if o.esn {
                transform::ESN_YES
            } else {
                transform::ESN_NO
            };
            // No ESN transform at all means "no ESN".
            let esn_ok = has(transform::ESN, esn_id, None)
                || (!o.esn && !t.transforms.iter().any(|x| x.kind == transform::ESN));
            if has(
                transform::ENCR,
                transform::ENCR_AES_GCM_16,
                Some(o.encr_bits),
            ) && esn_ok
            {
                let spi = <[u8; 4]>::try_from(t.spi.as_slice())
                    .ok()
                    .map(u32::from_be_bytes)?;
                return Some((t.num, *o, spi));
            }
        }
    }
    None
}

/// Responder side of a CHILD_SA: the ESP proposal and the narrowed selectors (TSi: the
/// initiator's side, narrowed to `remote_cfg`; TSr: ours, narrowed to `local_cfg`).
type Negotiated = (
    u8,
    EspProposal,
    u32,
    Vec<TrafficSelector>,
    Vec<TrafficSelector>,
);

fn negotiate_child(
    p: &[Payload],
    esp: &[EspProposal],
    local_cfg: &[TrafficSelector],
    remote_cfg: &[TrafficSelector],
) -> Result<Negotiated, u16> {
    let props = find_sa(p).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
    let (num, e, spi) = select_esp(props, esp).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
    let tsi = find_tsi(p).ok_or(notify::TS_UNACCEPTABLE)?;
    let tsr = find_tsr(p).ok_or(notify::TS_UNACCEPTABLE)?;
    let ni = narrow(tsi, remote_cfg);
    let nr = narrow(tsr, local_cfg);
    if ni.is_empty() || nr.is_empty() {
        return Err(notify::TS_UNACCEPTABLE);
    }
    Ok((num, e, spi, ni, nr))
}

/// The intersection of the proposed selectors with the configured ones (RFC 7296 2.9).
pub fn narrow(
    proposed: &[TrafficSelector],
    configured: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for p in proposed {
        for c in configured {
            if p.start.is_ipv4() != c.start.is_ipv4() {
                continue;
            }
            let proto = match (p.protocol, c.protocol) {
                (0, x) | (x, 0) => x,
                (a, b) if a == b => a,
                _ => continue,
            };
            let sp = p.start_port.max(c.start_port);
            let ep = p.end_port.min(c.end_port);
            let sa = max_ip(p.start, c.start);
            let ea = min_ip(p.end, c.end);
            if sp <= ep && ip_le(sa, ea) {
                out.push(TrafficSelector {
                    protocol: proto,
                    start_port: sp,
                    end_port: ep,
                    start: sa,
                    end: ea,
                });
            }
        }
    }
    out
}

fn ip_le(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
        _ => false,
    }
}

fn max_ip(a: IpAddr, b: IpAddr) -> IpAddr {
    if ip_le(a, b) {
        b
    } else {
        a
    }
}

fn min_ip(a: IpAddr, b: IpAddr) -> IpAddr {
    if ip_le(a, b) {
        a
    } else {
        b
    }
}

/// 0.0.0.0-255.255.255.255, all protocols and ports.
pub fn any_v4() -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        end: IpAddr::V4(Ipv4Addr::BROADCAST),
    }
}

/// One address, all protocols and ports.
pub fn host_ts(a: IpAddr) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: a,
        end: a,
    }
}

/// An address range, all protocols and ports.
pub fn range_ts(start: IpAddr, end: IpAddr) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start,
        end,
    }
}

/// `addr/len` as a selector (host bits of `addr` ignored); `None` when `len` is longer than
/// the address family allows.
pub fn prefix_ts(addr: IpAddr, len: u8) -> Option<TrafficSelector> {
    let (start, end) = match addr {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if len > 32 {
                return None;
            }
            let a = u32::from(a);
            (
                IpAddr::V4((a & !host).into()),
                IpAddr::V4((a | host).into()),
            )
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if len > 128 {
                return None;
            }
            let a = u128::from(a);
            (
                IpAddr::V6((a & !host).into()),
                IpAddr::V6((a | host).into()),
            )
        }
    };
    Some(range_ts(start, end))
}

fn nat_detected(
    p: &[Payload],
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
) -> bool {
    let src: Vec<&Vec<u8>> = p
        .iter()
        .filter_map(|x| match x {
            Payload::Notify {
                kind: notify::NAT_DETECTION_SOURCE_IP,
                data,
                ..
            } => Some(data),
            _ => None,
        })
        .collect();
    let dst = find_notify(p, notify::NAT_DETECTION_DESTINATION_IP);
    if src.is_empty() && dst.is_none() {
        return false;
    }
    // The peer hashed what it saw as its own source and as our address.
    let peer_seen = crypto::nat_hash(spi_i, spi_r, remote.ip(), remote.port());
    let us_seen = crypto::nat_hash(spi_i, spi_r, local.ip(), local.port());
    let peer_natted = !src.iter().any(|s| s.as_slice() == peer_seen.as_slice());
    let we_natted = dst.is_some_and(|d| d != us_seen.as_slice());
    peer_natted || we_natted
}

fn find_sa(p: &[Payload]) -> Option<&[Proposal]> {
    p.iter().find_map(|x| {
        if let Payload::Sa(v) = x {
            Some(v.as_slice())
        } else {
            None
        }
    })
}

fn find_ke(p: &[Payload]) -> Option<(u16, &[u8])> {
    p.iter().find_map(|x| {
        if let Payload::Ke { group, data } = x {
            Some((*group, data.as_slice()))
        } else {
            None
        }
    })
}

fn find_nonce(p: &[Payload]) -> Option<&[u8]> {
    p.iter().find_map(|x| {
        if let Payload::Nonce(n) = x {
            Some(n.as_slice())
        } else {
            None
        }
    })
}

fn find_tsi(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| {
        if let Payload::TsI(t) = x {
            Some(t.as_slice())
        } else {
            None
        }
    })
}

fn find_tsr(p: &[Payload]) -> Option<&[TrafficSelector]> {
    p.iter().find_map(|x| {
        if let Payload::TsR(t) = x {
            Some(t.as_slice())
        } else {
            None
        }
    })
}

fn find_notify(p: &[Payload], k: u16) -> Option<&[u8]> {
    p.iter().find_map(|x| match x {
        Payload::Notify { kind, data, .. } if *kind == k => Some(data.as_slice()),
        _ => None,
    })
}

/// A new, zeroizing secret from bytes (for configuration).
pub fn secret(b: &[u8]) -> Secret {
    Zeroizing::new(b.to_vec())
}

/// Compares two MACs in time that depends only on their lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
