//! The persistent state of an established IKE SA as a versioned record ([`IkeSaRecord`]): what
//! another endpoint (another process after a restart, a standby, another node) needs to carry
//! the IKE SA on so that the peer cannot tell. [`Endpoint::export`](crate::Endpoint::export)
//! makes one, [`Endpoint::adopt`](crate::Endpoint::adopt) continues from one, and
//! [`IkeSaRecord::to_bytes`] / [`IkeSaRecord::from_bytes`] carry it (`codec`).
//!
//! In the record: the SPIs and our role; the addresses, NAT and MOBIKE state (the peer's and
//! our additional addresses); the connection's name and both identities; the negotiated
//! proposal and the keys (SK_d, SK_a and SK_e of both directions; SK_p only authenticates
//! IKE_AUTH and is left out); our outbound IV counter; both message ids and our last response
//! (a retransmission of the peer's last request is answered with the same bytes); the rekey
//! deadline and how long ago the peer was last heard, as durations from the moment of export;
//! whether the virtual IP is a lease from our pool; the EAP identity the peer logged in with
//! (per-user policy keys on it); each CHILD_SA with its SPIs, ESN, key
//! size, traffic selectors, keys and deadlines. Not in it: work under way (an outstanding
//! request, queued requests, a half-done rekey). An IKE SA is exported only between exchanges
//! of ours, and a record is exact when taken after the exporter's last message and before
//! anything else is sent on the IKE SA.
//!
//! ## Why an adopted IKE SA never reuses an IV
//! Our encrypted payloads use AES-GCM with an explicit 8-byte IV that is a counter (and
//! AES-CBC with the counter encrypted under the key, `crypto::SkCipher`): the nonce must never
//! repeat under one key. The counter is `epoch << 48 | n`, and a cipher only ever seals with
//! counters of its own epoch (it seals nothing once `n` is used up, 2^48 messages, far beyond
//! the 2^32 message ids of an IKE SA). A new IKE SA (and each IKE SA rekey, with new keys)
//! starts in epoch 0; the record carries the exporter's counter, and the adopter continues in
//! the next epoch. So whatever the exporter sealed after the export (a snapshot that was
//! persisted, then the exporter answered one more request and crashed) lies in an epoch the
//! adopter never uses. Two adoptions of the same record would share an epoch: a record is
//! adopted at most once, and an adopter that has to be replaced in turn is continued from its
//! own export, whose epoch is higher (the epoch is the record's fencing token). Retransmitted
//! messages, and the cached response resent for a retransmitted request, are the same bytes
//! again, never a new encryption. After 65,535 adoptions without an IKE SA rekey an adoption
//! is refused.
//!
//! Key material is zeroized when a record (or its byte form) is dropped and never printed:
//! `Debug` shows SPIs, message ids and addresses and `<secret>` for the keys. The byte form
//! carries a SHA-256 of its content, so corruption is detected; it does not protect the keys
//! from whoever can read it: store it as the keys it holds deserve.
//!
//! Owns: the record, its validation and its byte codec.
//! Must never: print or keep key material past a drop; hold work under way; decode bytes it
//! cannot fully check (every error is a [`RecordError`], never a panic).

mod codec;

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::crypto::Secret;
use crate::event::{ChildSaInfo, ChildSaKeys};
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::proposal::{EspInteg, EspProposal, IkeProposal};
use crate::wire::{Id, TrafficSelector};

pub use codec::{RECORD_VERSION, RECORD_VERSION_GCM_ONLY};

/// Why a record (or its bytes) cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the record ends early")]
    Truncated,
    #[error("not an IKE SA record")]
    BadMagic,
    #[error("record version {0} is not one this endpoint reads")]
    UnknownVersion(u16),
    #[error("the record's checksum does not match its content")]
    Checksum,
    #[error("bytes after the end of the record")]
    TrailingBytes,
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// The keys of an IKE SA as a record carries them (zeroized on drop, never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct IkeSaSecrets {
    pub sk_d: Secret,
    /// Integrity keys (empty with AES-GCM).
    pub sk_ai: Secret,
    pub sk_ar: Secret,
    pub sk_ei: Secret,
    pub sk_er: Secret,
}

impl core::fmt::Debug for IkeSaSecrets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "IkeSaSecrets(<secret>)")
    }
}

/// One CHILD_SA of an exported IKE SA.
#[derive(Clone, PartialEq, Eq)]
pub struct ChildSaRecord {
    pub name: String,
    pub spi_in: ChildSpi,
    pub spi_out: ChildSpi,
    pub esn: bool,
    /// AES key size (GCM-16, or CBC with `integ`).
    pub encr_bits: u16,
    /// AES-CBC's HMAC; none for AES-GCM-16.
    pub integ: Option<EspInteg>,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Time left until its rekey / its hard lifetime, from the moment of export.
    pub rekey_in: Option<Duration>,
    pub expire_in: Option<Duration>,
    /// Already replaced by our rekey (its delete had not completed).
    pub replaced: bool,
    /// AES key and salt (GCM) or AES key and HMAC key (CBC), inbound and outbound.
    pub key_in: Secret,
    pub key_out: Secret,
}

impl ChildSaRecord {
    /// Its algorithms as a proposal.
    pub fn proposal(&self) -> EspProposal {
        EspProposal {
            encr_bits: self.encr_bits,
            esn: self.esn,
            integ: self.integ,
        }
    }
}

impl core::fmt::Debug for ChildSaRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChildSaRecord")
            .field("name", &self.name)
            .field("spi_in", &self.spi_in)
            .field("spi_out", &self.spi_out)
            .field("esn", &self.esn)
            .field("encr_bits", &self.encr_bits)
            .field("integ", &self.integ)
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("rekey_in", &self.rekey_in)
            .field("expire_in", &self.expire_in)
            .field("replaced", &self.replaced)
            .field("keys", &format_args!("<secret>"))
            .finish()
    }
}

/// The persistent state of an established IKE SA (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct IkeSaRecord {
    /// We are the IKE SA's original initiator (RFC 7296 2.2).
    pub initiator: bool,
    pub spi_i: IkeSpi,
    pub spi_r: IkeSpi,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A NAT sits between us (RFC 7296 2.23).
    pub nat: bool,
    /// The connection (`PeerConfig::name`) the adopter must have.
    pub connection: String,
    pub local_id: Id,
    /// The peer's authenticated identity.
    pub remote_id: Id,
    pub prop: IkeProposal,
    pub keys: IkeSaSecrets,
    /// The IV counter our next encrypted message would have used (`epoch << 48 | n`).
    pub iv_next: u64,
    /// The message id of our next request, and the next one we expect from the peer.
    pub next_request_id: u32,
    pub peer_next_id: u32,
    /// Our response to the peer's last request, as sent (its message id and bytes).
    pub last_response: Option<(u32, Vec<u8>)>,
    /// Time left until the IKE SA's rekey, from the moment of export.
    pub rekey_in: Option<Duration>,
    /// How long before the export the peer was last heard (for liveness checks).
    pub heard_ago: Duration,
    /// Ours (given by the peer) or the peer's (see `lease`).
    pub virtual_ip: Option<IpAddr>,
    /// `virtual_ip` is leased from our pool to the peer.
    pub lease: bool,
    /// MOBIKE was negotiated (RFC 4555), with the peer's and our additional addresses.
    pub mobike: bool,
    /// IKE fragmentation was negotiated (RFC 7383); `last_response` may hold fragments.
    pub fragmentation: bool,
    /// RFC 6311 message-id synchronization was negotiated (IKEV2_MESSAGE_ID_SYNC_SUPPORTED both
    /// ways): an adopter may send IKEV2_MESSAGE_ID_SYNC.
    pub mid_sync: bool,
    /// A sync was asked for on these keys already (one per IKE SA keys: `exchange::mid_sync`).
    pub mid_sync_used: bool,
    /// Both ends sent ROAMGATE_GATEWAY_MOVE_SUPPORTED (`exchange::gw_move`).
    pub gateway_move: bool,
    /// The peer sent REDIRECT_SUPPORTED in IKE_SA_INIT (RFC 5685).
    pub redirect: bool,
    /// RFC 9611 per-core CHILD_SAs were agreed in IKE_AUTH (both ends sent
    /// SA_RESOURCE_INFO): the adopter keeps one CHILD_SA per worker (version 5 on).
    pub per_core: bool,
    pub peer_additional: Vec<IpAddr>,
    pub our_additional: Vec<IpAddr>,
    /// The identity the peer logged in with by EAP (RFC 7296 2.16), or ours when we were the
    /// EAP peer: what per-user policy keys on, so an adopter has it too (version 4 on).
    pub eap_identity: Option<String>,
    pub children: Vec<ChildSaRecord>,
}

impl core::fmt::Debug for IkeSaRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IkeSaRecord")
            .field("id", &self.id())
            .field("initiator", &self.initiator)
            .field("spi_i", &self.spi_i)
            .field("spi_r", &self.spi_r)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("nat", &self.nat)
            .field("connection", &self.connection)
            .field("remote_id", &self.remote_id.display())
            .field("prop", &self.prop)
            .field("keys", &self.keys)
            .field(
                "iv_epoch",
                &(self.iv_next >> crate::crypto::SK_IV_EPOCH_SHIFT),
            )
            .field("next_request_id", &self.next_request_id)
            .field("peer_next_id", &self.peer_next_id)
            .field(
                "last_response",
                &self.last_response.as_ref().map(|(id, m)| (id, m.len())),
            )
            .field("rekey_in", &self.rekey_in)
            .field("heard_ago", &self.heard_ago)
            .field("virtual_ip", &self.virtual_ip)
            .field("lease", &self.lease)
            .field("mobike", &self.mobike)
            .field("gateway_move", &self.gateway_move)
            .field("per_core", &self.per_core)
            .field("redirect", &self.redirect)
            .field("fragmentation", &self.fragmentation)
            .field("mid_sync", &self.mid_sync)
            .field("mid_sync_used", &self.mid_sync_used)
            .field("peer_additional", &self.peer_additional)
            .field("our_additional", &self.our_additional)
            .field("eap_identity", &self.eap_identity)
            .field("children", &self.children)
            .finish()
    }
}

/// The key sizes our proposals allow.
fn valid_encr_bits(bits: u16) -> bool {
    bits == 128 || bits == 256
}

impl IkeSaRecord {
    /// The IKE SA's id: our own SPI of it.
    pub fn id(&self) -> IkeSaId {
        IkeSaId(if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        })
    }

    /// Tells the record that `elapsed` passed since its export (a record read back after a
    /// restart): its deadlines come that much closer, the peer was heard that much longer ago.
    pub fn age(&mut self, elapsed: Duration) {
        let closer = |d: &mut Option<Duration>| {
            if let Some(x) = d.as_mut() {
                *x = x.saturating_sub(elapsed);
            }
        };
        closer(&mut self.rekey_in);
        for c in self.children.iter_mut() {
            closer(&mut c.rekey_in);
            closer(&mut c.expire_in);
        }
        self.heard_ago = self.heard_ago.saturating_add(elapsed);
    }

    /// The CHILD_SAs as the data plane installs them (keys included).
    pub fn child_infos(&self) -> Vec<ChildSaInfo> {
        let udp_encap = self.nat || self.remote.port() == 4500;
        self.children
            .iter()
            .map(|c| ChildSaInfo {
                ike: self.id(),
                name: c.name.clone(),
                inbound: ChildSaKeys {
                    spi: c.spi_in,
                    encr_bits: c.encr_bits,
                    integ: c.integ,
                    keymat: c.key_in.clone(),
                },
                outbound: ChildSaKeys {
                    spi: c.spi_out,
                    encr_bits: c.encr_bits,
                    integ: c.integ,
                    keymat: c.key_out.clone(),
                },
                esn: c.esn,
                local_ts: c.local_ts.clone(),
                remote_ts: c.remote_ts.clone(),
                local: self.local,
                remote: self.remote,
                udp_encap,
                rekey_of: None,
                initiated_here: false,
                redundant: false,
            })
            .collect()
    }

    /// Checks what the types cannot: SPIs, key sizes that match the proposal, an existing
    /// lease address, lengths and counts the byte form can hold. Encoding, decoding, export
    /// and adoption call it.
    pub fn check(&self) -> Result<(), RecordError> {
        codec::check_limits(self)?;
        if self.spi_i.is_zero() || self.spi_r.is_zero() {
            return Err(RecordError::Invalid("zero IKE SPI"));
        }
        let p = &self.prop;
        if !valid_encr_bits(p.encr_bits) {
            return Err(RecordError::Invalid("IKE key size"));
        }
        let k = &self.keys;
        if k.sk_d.len() != p.prf.output_len() {
            return Err(RecordError::Invalid("SK_d length"));
        }
        if k.sk_ei.len() != p.encr_len() || k.sk_er.len() != p.encr_len() {
            return Err(RecordError::Invalid("SK_e length"));
        }
        if k.sk_ai.len() != p.integ_len() || k.sk_ar.len() != p.integ_len() {
            return Err(RecordError::Invalid("SK_a length"));
        }
        if self.lease && !matches!(self.virtual_ip, Some(IpAddr::V4(_))) {
            return Err(RecordError::Invalid("a lease without an IPv4 virtual IP"));
        }
        for c in &self.children {
            if c.spi_in.0 <= 255 || c.spi_out.0 <= 255 {
                return Err(RecordError::Invalid("reserved CHILD_SA SPI"));
            }
            if !valid_encr_bits(c.encr_bits) {
                return Err(RecordError::Invalid("CHILD_SA key size"));
            }
            let len = c.proposal().keymat_len();
            if c.key_in.len() != len || c.key_out.len() != len {
                return Err(RecordError::Invalid("CHILD_SA key length"));
            }
        }
        Ok(())
    }

    /// The versioned byte form (zeroized on drop: it holds the keys), of a record that
    /// passes [`check`](Self::check).
    pub fn to_bytes(&self) -> Result<Secret, RecordError> {
        self.check()?;
        Ok(codec::encode(self))
    }

    /// A record from its byte form: any truncation, corruption, unknown version or invalid
    /// content is an error.
    pub fn from_bytes(b: &[u8]) -> Result<IkeSaRecord, RecordError> {
        codec::decode(b)
    }
}
