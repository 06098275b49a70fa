//! G-IKEv2 payloads on the wire (RFC 9838 section 4): the Group Identification payload
//! (IDg), the Group Security Association payload (GSA) with its policies (the Rekey SA,
//! Data-Security SAs, the Group-Wide Policy), and the Key Download payload (KD) with its key
//! bags; plus the numbers G-IKEv2 adds to the IKEv2 registries.
//!
//! Each payload body is a `Repr` with `parse` and `emit`; the generic payload header and the
//! chain stay with [`crate::wire`] (which parses these three types as known payloads and hands
//! their bodies over as `Payload::Other`). Everything here reads bytes from the network: no
//! input may panic, every length is checked against what encloses it, and a body with bytes
//! left over is malformed (strict: what we emit is the only form we accept).
//!
//! Checked against the text of draft-ietf-ipsecme-g-ikev2-23 (published as RFC 9838): the
//! figures of section 4 (GSA Policy Substructure, GW Policy Substructure, Group and Member Key
//! Bag, Wrapped Key Format) and the attribute tables; docs/group.md lists what was compared
//! and what was fixed. Section numbers in comments are the draft's. The numbers the draft
//! leaves "TBA" (exchange 42, notify 49, protocol 6, transform types 13 and 14, SN id 2) come
//! from transcriptions of the IANA registries, not from the RFC's text.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use core::net::IpAddr;

use crate::wire::{Id, Reader, TrafficSelector, Transform, WireError};

type Result<T> = core::result::Result<T, WireError>;

/// G-IKEv2 exchange types (section 9.3, IKEv2 Exchange Types registry).
pub mod exchange {
    /// Registration after IKE_SA_INIT (section 2.3.1).
    pub const GSA_AUTH: u8 = 39;
    /// Registration over an existing IKE SA (section 2.3.2).
    pub const GSA_REGISTRATION: u8 = 40;
    /// A rekey the GCKS sends under the Rekey SA, one message, no response (section 2.4.1).
    pub const GSA_REKEY: u8 = 41;
    /// A rekey over a member's own IKE SA, request and response (section 2.4.2).
    pub const GSA_INBAND_REKEY: u8 = 42;
}

/// G-IKEv2 payload types (section 9.3, IKEv2 Payload Types registry). The SAg payload a member
/// sends with its supported transforms has the SA payload's type (33).
pub mod payload {
    pub const IDG: u8 = 50;
    pub const GSA: u8 = 51;
    pub const KD: u8 = 52;
}

/// Security Protocol Identifiers used in group policies and key bags.
pub mod proto {
    /// Reserved in the registry; a policy or key bag with protocol 0 is the Group-Wide
    /// Policy (GSA) or a Member Key Bag (KD): not bound to an SA, no SPI.
    pub const NONE: u8 = 0;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
    /// The Rekey SA (section 9.3); its SPI is 16 octets (the SPIi and SPIr of the GSA_REKEY
    /// header).
    pub const GIKE_UPDATE: u8 = 6;
}

/// Transform types G-IKEv2 adds and the transform ids used with them.
pub mod transform {
    /// Type 5, renamed "Sequence Numbers" by RFC 9838: with many senders on one SA the
    /// sequence number cannot be one counter.
    pub const SN: u8 = 5;
    /// "32-bit Sequential Numbers" (the non-ESN case; single-sender SAs).
    pub const SN_32BIT_SEQUENTIAL: u16 = 0;
    /// "32-bit Unspecified Numbers" (section 4.4.2.1.3: many senders, no replay protection
    /// promised). The draft text says TBA; 2 is the value IANA assigned (see docs/group.md).
    pub const SN_32BIT_UNSPECIFIED: u16 = 2;
    /// Key Wrap Algorithm (type 13) and its ids.
    pub const KWA: u8 = 13;
    pub const KW_5649_128: u16 = 1;
    pub const KW_5649_192: u16 = 2;
    pub const KW_5649_256: u16 = 3;
    pub const KW_ARX: u16 = 4;
    /// Group Controller Authentication Method (type 14) and its ids.
    pub const GCAUTH: u8 = 14;
    pub const GCAUTH_IMPLICIT: u16 = 1;
    pub const GCAUTH_DIGITAL_SIGNATURE: u16 = 2;
}

/// Notify message types (section 4.7 and section 9.3).
pub mod notify {
    pub const INVALID_GROUP_ID: u16 = 45;
    pub const AUTHORIZATION_FAILED: u16 = 46;
    pub const REGISTRATION_FAILED: u16 = 49;
    /// A member that wants to send on the Data-Security SAs (section 4.7.4): it gets a
    /// Sender-ID.
    pub const GROUP_SENDER: u16 = 16429;
}

/// GSA Attributes of a Rekey SA or Data-Security SA policy (Group SA Attributes registry).
pub mod gsa_attr {
    pub const GSA_KEY_LIFETIME: u16 = 1;
    pub const GSA_INITIAL_MESSAGE_ID: u16 = 2;
    pub const GSA_NEXT_SPI: u16 = 3;
}

/// Group-Wide Policy attributes (section 4.4.3; Group-Wide Policy Attributes registry).
pub mod gwp_attr {
    /// Activation Time Delay: seconds a member waits before sending on a new Data-Security SA.
    pub const GWP_ATD: u16 = 1;
    /// Deactivation Time Delay: seconds a member keeps an old Data-Security SA for receiving.
    pub const GWP_DTD: u16 = 2;
    /// The number of most significant IV bits that carry a sender's Sender-ID (section
    /// 4.4.3.1.2, RFC 6054).
    pub const GWP_SENDER_ID_BITS: u16 = 3;
}

/// Group Key Bag attributes (Group Key Bag Attributes registry).
pub mod group_key_attr {
    pub const SA_KEY: u16 = 1;
}

/// Member Key Bag attributes (Member Key Bag Attributes registry; section 4.5.3).
pub mod member_key_attr {
    pub const WRAP_KEY: u16 = 1;
    pub const AUTH_KEY: u16 = 2;
    /// A Sender-ID allocated to this member (section 4.5.3.3).
    pub const GM_SENDER_ID: u16 = 3;
}

/// Attribute format bit: set = TV (a 2-octet value in place of the length, RFC 7296 3.3.5).
const AF_TV: u16 = 0x8000;
/// "More transforms follow" in a transform's Last Substructure field (RFC 7296 3.3.2).
const MORE_TRANSFORMS: u8 = 3;
const TS_IPV4: u8 = 7;
const TS_IPV6: u8 = 8;

/// Writes a 2-octet length at `at` in `out` (the bytes from `at` to the end).
fn patch_len(out: &mut [u8], at: usize) {
    let len = u16::try_from(out.len().saturating_sub(at)).unwrap_or(u16::MAX);
    if let Some(l) = out.get_mut(at.saturating_add(2)..at.saturating_add(4)) {
        l.copy_from_slice(&len.to_be_bytes());
    }
}

/// A data attribute (RFC 7296 3.3.5 format, used by GSA attributes, GWP attributes and key
/// bag attributes): TV carries a 2-octet value, TLV a value of any length.
#[derive(Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: u16,
    pub value: AttrValue,
}

#[derive(Clone, PartialEq, Eq)]
pub enum AttrValue {
    Tv(u16),
    Tlv(Vec<u8>),
}

/// Key bags carry wrapped keys: never print an attribute's bytes.
impl core::fmt::Debug for Attr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.value {
            AttrValue::Tv(v) => write!(f, "Attr({}, tv {v})", self.kind),
            AttrValue::Tlv(b) => write!(f, "Attr({}, {} bytes)", self.kind, b.len()),
        }
    }
}

impl Attr {
    pub fn tv(kind: u16, v: u16) -> Attr {
        Attr {
            kind,
            value: AttrValue::Tv(v),
        }
    }
    pub fn tlv(kind: u16, v: Vec<u8>) -> Attr {
        Attr {
            kind,
            value: AttrValue::Tlv(v),
        }
    }
    /// The value as a number: a TV value, or a TLV of 1 to 8 octets (big-endian).
    pub fn as_u64(&self) -> Option<u64> {
        match &self.value {
            AttrValue::Tv(v) => Some(u64::from(*v)),
            AttrValue::Tlv(b) if !b.is_empty() && b.len() <= 8 => {
                Some(b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x)))
            }
            AttrValue::Tlv(_) => None,
        }
    }
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.value {
            AttrValue::Tlv(b) => Some(b),
            AttrValue::Tv(_) => None,
        }
    }

    fn parse_all(r: &mut Reader<'_>) -> Result<Vec<Attr>> {
        let mut v = Vec::new();
        while !r.is_empty() {
            let t = r.u16()?;
            let kind = t & !AF_TV;
            if kind == 0 {
                return Err(WireError::Malformed("attribute type 0"));
            }
            let value = if t & AF_TV != 0 {
                AttrValue::Tv(r.u16()?)
            } else {
                let l = usize::from(r.u16()?);
                AttrValue::Tlv(r.take(l)?.to_vec())
            };
            v.push(Attr { kind, value });
        }
        Ok(v)
    }

    fn emit(&self, out: &mut Vec<u8>) {
        match &self.value {
            AttrValue::Tv(v) => {
                out.extend_from_slice(&(self.kind | AF_TV).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttrValue::Tlv(b) => {
                out.extend_from_slice(&(self.kind & !AF_TV).to_be_bytes());
                out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(0).to_be_bytes());
                out.extend_from_slice(b.get(..usize::from(u16::MAX)).unwrap_or(b));
            }
        }
    }
}

/// The first attribute of `kind` in `attrs`.
pub fn find_attr(attrs: &[Attr], kind: u16) -> Option<&Attr> {
    attrs.iter().find(|a| a.kind == kind)
}

/// The Group Identification payload (IDg, section 4.2): the ID payload's format (RFC 7296
/// 3.5): ID Type, three reserved octets, the identification data.
pub fn parse_idg(body: &[u8]) -> Result<Id> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    r.take(3)?;
    let data = r.rest();
    if data.is_empty() {
        return Err(WireError::Malformed("empty group id"));
    }
    Ok(Id {
        kind,
        data: data.to_vec(),
    })
}

pub fn emit_idg(id: &Id, out: &mut Vec<u8>) {
    out.extend_from_slice(&id.body());
}

/// One group policy of a GSA payload (section 4.4.2 for the Rekey SA and Data-Security SAs,
/// section 4.4.3 for the GW policy). Fields in order, lengths in octets:
///
/// ```text
/// GSA policy: Protocol (1) | SPI Size (1) | Length (2) | SPI (SPI Size)
///             | Source TS | Destination TS        (RFC 7296 3.13.1 substructures)
///             | GSA Transforms                    (RFC 7296 3.3.2; Last Substruc 3, last 0)
///             | GSA Attributes                    (RFC 7296 3.3.5)
/// GW policy:  Protocol = 0 (1) | RESERVED (1) | Length (2) | GW Policy Attributes
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupPolicy {
    /// The Rekey SA (section 4.4.2): protocol GIKE_UPDATE, a 16-octet SPI, the source and
    /// destination of the GSA_REKEY messages as traffic selectors (UDP, one port each).
    Rekey {
        spi: [u8; 16],
        src: TrafficSelector,
        dst: TrafficSelector,
        transforms: Vec<Transform>,
        attrs: Vec<Attr>,
    },
    /// A Data-Security SA (section 4.4.2): ESP or AH, a 4-octet SPI, one source and one
    /// destination traffic selector.
    Data {
        protocol: u8,
        spi: u32,
        src: TrafficSelector,
        dst: TrafficSelector,
        transforms: Vec<Transform>,
        attrs: Vec<Attr>,
    },
    /// The Group-Wide Policy (section 4.4.3): protocol 0, a RESERVED octet (sent as zero,
    /// ignored on receipt) in place of the SPI Size, no SPI, GWP attributes.
    GroupWide { attrs: Vec<Attr> },
}

/// The GSA payload's body: its group policies, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gsa {
    pub policies: Vec<GroupPolicy>,
}

impl Gsa {
    pub fn parse(body: &[u8]) -> Result<Gsa> {
        let mut r = Reader::new(body);
        let mut policies = Vec::new();
        while !r.is_empty() {
            let (protocol, spi_size, mut p) = r.substructure()?;
            // Protocol 0 is the GW policy: its second octet is RESERVED, not an SPI Size.
            let spi = if protocol == proto::NONE {
                &[][..]
            } else {
                p.take(usize::from(spi_size))?
            };
            policies.push(match protocol {
                proto::GIKE_UPDATE => {
                    let spi = <[u8; 16]>::try_from(spi)
                        .map_err(|_| WireError::Malformed("rekey SA SPI size"))?;
                    let src = parse_ts(&mut p)?;
                    let dst = parse_ts(&mut p)?;
                    let transforms = parse_transforms(&mut p)?;
                    let attrs = Attr::parse_all(&mut p)?;
                    GroupPolicy::Rekey {
                        spi,
                        src,
                        dst,
                        transforms,
                        attrs,
                    }
                }
                proto::ESP | proto::AH => {
                    let spi = <[u8; 4]>::try_from(spi)
                        .map_err(|_| WireError::Malformed("data SA SPI size"))?;
                    let src = parse_ts(&mut p)?;
                    let dst = parse_ts(&mut p)?;
                    let transforms = parse_transforms(&mut p)?;
                    let attrs = Attr::parse_all(&mut p)?;
                    GroupPolicy::Data {
                        protocol,
                        spi: u32::from_be_bytes(spi),
                        src,
                        dst,
                        transforms,
                        attrs,
                    }
                }
                proto::NONE => GroupPolicy::GroupWide {
                    attrs: Attr::parse_all(&mut p)?,
                },
                _ => return Err(WireError::Malformed("group policy protocol")),
            });
        }
        if policies.is_empty() {
            return Err(WireError::Malformed("GSA payload without a policy"));
        }
        Ok(Gsa { policies })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        for p in &self.policies {
            let start = out.len();
            match p {
                GroupPolicy::Rekey {
                    spi,
                    src,
                    dst,
                    transforms,
                    attrs,
                } => {
                    out.extend_from_slice(&[proto::GIKE_UPDATE, 16, 0, 0]);
                    out.extend_from_slice(spi);
                    emit_ts(src, out);
                    emit_ts(dst, out);
                    emit_transforms(transforms, out);
                    attrs.iter().for_each(|a| a.emit(out));
                }
                GroupPolicy::Data {
                    protocol,
                    spi,
                    src,
                    dst,
                    transforms,
                    attrs,
                } => {
                    out.extend_from_slice(&[*protocol, 4, 0, 0]);
                    out.extend_from_slice(&spi.to_be_bytes());
                    emit_ts(src, out);
                    emit_ts(dst, out);
                    emit_transforms(transforms, out);
                    attrs.iter().for_each(|a| a.emit(out));
                }
                GroupPolicy::GroupWide { attrs } => {
                    out.extend_from_slice(&[proto::NONE, 0, 0, 0]);
                    attrs.iter().for_each(|a| a.emit(out));
                }
            }
            patch_len(out, start);
        }
    }
}

/// Transforms until the one whose Last Substructure is 0; an SA policy has at least one.
fn parse_transforms(r: &mut Reader<'_>) -> Result<Vec<Transform>> {
    let mut v = Vec::new();
    loop {
        let (last, _reserved, mut t) = r.substructure()?;
        let kind = t.u8()?;
        t.u8()?;
        let id = t.u16()?;
        let mut key_len = None;
        for a in Attr::parse_all(&mut t)? {
            match (a.kind, a.value) {
                (crate::wire::transform::ATTR_KEY_LENGTH, AttrValue::Tv(k)) => key_len = Some(k),
                _ => return Err(WireError::Malformed("transform attribute")),
            }
        }
        v.push(Transform { kind, id, key_len });
        match last {
            0 => return Ok(v),
            MORE_TRANSFORMS => {}
            _ => return Err(WireError::Malformed("transform last-substructure")),
        }
    }
}

fn emit_transforms(ts: &[Transform], out: &mut Vec<u8>) {
    for (i, t) in ts.iter().enumerate() {
        let start = out.len();
        let last = i.saturating_add(1) == ts.len();
        out.extend_from_slice(&[if last { 0 } else { MORE_TRANSFORMS }, 0, 0, 0]);
        out.push(t.kind);
        out.push(0);
        out.extend_from_slice(&t.id.to_be_bytes());
        if let Some(k) = t.key_len {
            Attr::tv(crate::wire::transform::ATTR_KEY_LENGTH, k).emit(out);
        }
        patch_len(out, start);
    }
}

/// One traffic selector substructure (RFC 7296 3.13.1).
fn parse_ts(r: &mut Reader<'_>) -> Result<TrafficSelector> {
    let t = r.u8()?;
    let protocol = r.u8()?;
    let len = r.u16()?;
    let start_port = r.u16()?;
    let end_port = r.u16()?;
    let (start, end) = match (t, len) {
        (TS_IPV4, 16) => {
            let a = <[u8; 4]>::try_from(r.take(4)?).map_err(|_| WireError::Truncated)?;
            let b = <[u8; 4]>::try_from(r.take(4)?).map_err(|_| WireError::Truncated)?;
            (IpAddr::from(a), IpAddr::from(b))
        }
        (TS_IPV6, 40) => {
            let a = <[u8; 16]>::try_from(r.take(16)?).map_err(|_| WireError::Truncated)?;
            let b = <[u8; 16]>::try_from(r.take(16)?).map_err(|_| WireError::Truncated)?;
            (IpAddr::from(a), IpAddr::from(b))
        }
        _ => return Err(WireError::Malformed("traffic selector")),
    };
    if start > end || start_port > end_port {
        return Err(WireError::Malformed("traffic selector range"));
    }
    Ok(TrafficSelector {
        protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

fn emit_ts(t: &TrafficSelector, out: &mut Vec<u8>) {
    let (ty, len): (u8, u16) = match t.start {
        IpAddr::V4(_) => (TS_IPV4, 16),
        IpAddr::V6(_) => (TS_IPV6, 40),
    };
    out.push(ty);
    out.push(t.protocol);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&t.start_port.to_be_bytes());
    out.extend_from_slice(&t.end_port.to_be_bytes());
    for a in [t.start, t.end] {
        match (ty, a) {
            (_, IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
            (TS_IPV6, IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            // A v6 end with a v4 start: emit a v4 of the same width so the length holds.
            (_, IpAddr::V6(_)) => out.extend_from_slice(&[0xff; 4]),
        }
    }
}

/// One key bag of a KD payload (section 4.5): a Group Key Bag (section 4.5.2: the keys of the
/// SA named by Protocol and SPI) or a Member Key Bag (section 4.5.3: protocol 0, keys and
/// parameters for this member).
///
/// ```text
/// Group Key Bag:  Protocol (1) | SPI Size (1) | Length (2) | SPI | Group Key Bag Attributes
/// Member Key Bag: Protocol = 0 (1) | RESERVED (1) | Length (2) | Member Key Bag Attributes
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyBag {
    Group {
        protocol: u8,
        spi: Vec<u8>,
        attrs: Vec<Attr>,
    },
    Member {
        attrs: Vec<Attr>,
    },
}

/// The KD payload's body: its key bags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kd {
    pub bags: Vec<KeyBag>,
}

impl Kd {
    pub fn parse(body: &[u8]) -> Result<Kd> {
        let mut r = Reader::new(body);
        let mut bags = Vec::new();
        while !r.is_empty() {
            let (protocol, spi_size, mut b) = r.substructure()?;
            // Protocol 0 is a Member Key Bag: its second octet is RESERVED (ignored).
            let spi = if protocol == proto::NONE {
                Vec::new()
            } else {
                b.take(usize::from(spi_size))?.to_vec()
            };
            let attrs = Attr::parse_all(&mut b)?;
            bags.push(match protocol {
                proto::NONE => KeyBag::Member { attrs },
                proto::GIKE_UPDATE if spi.len() == 16 => KeyBag::Group {
                    protocol,
                    spi,
                    attrs,
                },
                proto::ESP | proto::AH if spi.len() == 4 => KeyBag::Group {
                    protocol,
                    spi,
                    attrs,
                },
                _ => return Err(WireError::Malformed("key bag protocol or SPI size")),
            });
        }
        if bags.is_empty() {
            return Err(WireError::Malformed("KD payload without a key bag"));
        }
        Ok(Kd { bags })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        for b in &self.bags {
            let start = out.len();
            match b {
                KeyBag::Group {
                    protocol,
                    spi,
                    attrs,
                } => {
                    out.extend_from_slice(&[*protocol, u8::try_from(spi.len()).unwrap_or(0), 0, 0]);
                    out.extend_from_slice(spi);
                    attrs.iter().for_each(|a| a.emit(out));
                }
                KeyBag::Member { attrs } => {
                    out.extend_from_slice(&[proto::NONE, 0, 0, 0]);
                    attrs.iter().for_each(|a| a.emit(out));
                }
            }
            patch_len(out, start);
        }
    }
}

/// A wrapped key (section 4.5.4, "Wrapped Key Format"), the value of the SA_KEY and WRAP_KEY
/// attributes: Key ID (4 octets: 0 for SA key material, else the id of the intermediate key
/// inside), KWK ID (4 octets: the key that wrapped it, 0 for the default KWK of the SA the
/// message travels in), Encrypted Key (RFC 5649 key wrap here: at least two 64-bit blocks).
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: u32,
    pub kwk_id: u32,
    pub wrapped: Vec<u8>,
}

impl core::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "WrappedKey(key {}, kwk {}, {} bytes)",
            self.key_id,
            self.kwk_id,
            self.wrapped.len()
        )
    }
}

impl WrappedKey {
    pub fn parse(v: &[u8]) -> Result<WrappedKey> {
        let mut r = Reader::new(v);
        let key_id = r.u32()?;
        let kwk_id = r.u32()?;
        let wrapped = r.rest();
        if wrapped.len() < 16 || wrapped.len() % 8 != 0 {
            return Err(WireError::Malformed("wrapped key length"));
        }
        Ok(WrappedKey {
            key_id,
            kwk_id,
            wrapped: wrapped.to_vec(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.key_id.to_be_bytes().to_vec();
        v.extend_from_slice(&self.kwk_id.to_be_bytes());
        v.extend_from_slice(&self.wrapped);
        v
    }
}

/// The G-IKEv2 payloads of a parsed chain (`crate::wire::parse_chain` hands them over as
/// `Payload::Other`), each parsed strictly; other payloads are passed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupPayload {
    IdG(Id),
    Gsa(Gsa),
    Kd(Kd),
}

impl GroupPayload {
    /// The group payload in `p`, `Ok(None)` when `p` is not one.
    pub fn from_payload(p: &crate::wire::Payload) -> Result<Option<GroupPayload>> {
        match p {
            crate::wire::Payload::Other { kind, data } => Ok(match *kind {
                payload::IDG => Some(GroupPayload::IdG(parse_idg(data)?)),
                payload::GSA => Some(GroupPayload::Gsa(Gsa::parse(data)?)),
                payload::KD => Some(GroupPayload::Kd(Kd::parse(data)?)),
                _ => None,
            }),
            _ => Ok(None),
        }
    }

    /// As a payload for `crate::wire::emit_chain`.
    pub fn to_payload(&self) -> crate::wire::Payload {
        let mut data = Vec::new();
        let kind = match self {
            GroupPayload::IdG(id) => {
                emit_idg(id, &mut data);
                payload::IDG
            }
            GroupPayload::Gsa(g) => {
                g.emit(&mut data);
                payload::GSA
            }
            GroupPayload::Kd(k) => {
                k.emit(&mut data);
                payload::KD
            }
        };
        crate::wire::Payload::Other { kind, data }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )]
    use super::*;
    use crate::wire::{self, Header, Payload, HEADER_LEN};

    fn ts(a: &str, b: &str) -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
        }
    }

    pub(crate) fn sample_gsa() -> Gsa {
        Gsa {
            policies: vec![
                GroupPolicy::Rekey {
                    spi: [7; 16],
                    src: TrafficSelector {
                        protocol: 17,
                        ..ts("192.0.2.1", "192.0.2.1")
                    },
                    dst: TrafficSelector {
                        protocol: 17,
                        start_port: 848,
                        end_port: 848,
                        ..ts("239.1.1.1", "239.1.1.1")
                    },
                    transforms: vec![
                        Transform {
                            kind: wire::transform::ENCR,
                            id: wire::transform::ENCR_AES_GCM_16,
                            key_len: Some(256),
                        },
                        Transform {
                            kind: transform::KWA,
                            id: transform::KW_5649_256,
                            key_len: None,
                        },
                    ],
                    attrs: vec![
                        Attr::tlv(gsa_attr::GSA_KEY_LIFETIME, 3600u64.to_be_bytes().to_vec()),
                        Attr::tlv(
                            gsa_attr::GSA_INITIAL_MESSAGE_ID,
                            1u32.to_be_bytes().to_vec(),
                        ),
                    ],
                },
                GroupPolicy::Data {
                    protocol: proto::ESP,
                    spi: 0xc000_0001,
                    src: ts("10.0.0.0", "10.255.255.255"),
                    dst: ts("fd00::", "fd00::ffff"),
                    transforms: vec![Transform {
                        kind: wire::transform::ENCR,
                        id: wire::transform::ENCR_AES_GCM_16,
                        key_len: Some(128),
                    }],
                    attrs: vec![Attr::tlv(
                        gsa_attr::GSA_KEY_LIFETIME,
                        600u64.to_be_bytes().to_vec(),
                    )],
                },
                GroupPolicy::GroupWide {
                    attrs: vec![
                        Attr::tv(gwp_attr::GWP_ATD, 2),
                        Attr::tv(gwp_attr::GWP_DTD, 30),
                        Attr::tv(gwp_attr::GWP_SENDER_ID_BITS, 8),
                    ],
                },
            ],
        }
    }

    pub(crate) fn sample_kd() -> Kd {
        Kd {
            bags: vec![
                KeyBag::Group {
                    protocol: proto::ESP,
                    spi: vec![0xc0, 0, 0, 1],
                    attrs: vec![Attr::tlv(
                        group_key_attr::SA_KEY,
                        WrappedKey {
                            key_id: 0,
                            kwk_id: 3,
                            wrapped: vec![0xaa; 32],
                        }
                        .to_bytes(),
                    )],
                },
                KeyBag::Member {
                    attrs: vec![
                        Attr::tlv(member_key_attr::GM_SENDER_ID, vec![0, 0, 0, 5]),
                        Attr::tlv(
                            member_key_attr::WRAP_KEY,
                            WrappedKey {
                                key_id: 9,
                                kwk_id: 0,
                                wrapped: vec![0xbb; 40],
                            }
                            .to_bytes(),
                        ),
                    ],
                },
            ],
        }
    }

    fn message(payloads: &[Payload]) -> Vec<u8> {
        let mut body = Vec::new();
        let first = wire::emit_chain(payloads, &mut body);
        let mut m = Vec::new();
        Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: first,
            exchange: exchange::GSA_AUTH,
            flags: wire::FLAG_RESPONSE,
            message_id: 1,
            length: (HEADER_LEN + body.len()) as u32,
        }
        .emit(&mut m);
        m.extend_from_slice(&body);
        m
    }

    fn sample_chain() -> Vec<GroupPayload> {
        vec![
            GroupPayload::IdG(Id::from_text("branches.roamgate.test")),
            GroupPayload::Gsa(sample_gsa()),
            GroupPayload::Kd(sample_kd()),
        ]
    }

    #[test]
    fn round_trip_through_the_ike_chain() {
        let g = sample_chain();
        let payloads: Vec<Payload> = g.iter().map(GroupPayload::to_payload).collect();
        let m = message(&payloads);
        let h = Header::parse(&m).unwrap();
        let c = wire::parse_chain(&m, HEADER_LEN, h.next_payload).unwrap();
        let back: Vec<GroupPayload> = c
            .payloads
            .iter()
            .map(|p| GroupPayload::from_payload(p).unwrap().unwrap())
            .collect();
        assert_eq!(back, g);
    }

    #[test]
    fn group_payloads_with_the_critical_bit_are_understood() {
        let m = message(&[GroupPayload::Gsa(sample_gsa()).to_payload()]);
        let mut m2 = m.clone();
        m2[HEADER_LEN + 1] = 0x80;
        let c = wire::parse_chain(&m2, HEADER_LEN, payload::GSA).unwrap();
        assert_eq!(
            GroupPayload::from_payload(&c.payloads[0]).unwrap(),
            Some(GroupPayload::Gsa(sample_gsa()))
        );
    }

    #[test]
    fn known_layout_of_a_group_wide_policy() {
        // Protocol 0, SPI size 0, length 16; three TV attributes.
        let g = Gsa {
            policies: vec![GroupPolicy::GroupWide {
                attrs: vec![
                    Attr::tv(gwp_attr::GWP_ATD, 15),
                    Attr::tv(gwp_attr::GWP_DTD, 30),
                    Attr::tv(gwp_attr::GWP_SENDER_ID_BITS, 8),
                ],
            }],
        };
        let mut b = Vec::new();
        g.emit(&mut b);
        assert_eq!(
            b,
            [0, 0, 0, 16, 0x80, 1, 0, 15, 0x80, 2, 0, 30, 0x80, 3, 0, 8]
        );
        assert_eq!(Gsa::parse(&b).unwrap(), g);
    }

    /// The GSA policy substructure of RFC 9838 section 4.4.2 ("GSA Policy Substructure
    /// Format"), byte by byte: Protocol, SPI Size, Length, SPI, Source and Destination Traffic
    /// Selectors (RFC 7296 3.13.1), GSA Transforms (RFC 7296 3.3.2, Last Substruc 3 then 0),
    /// GSA Attributes (RFC 7296 3.3.5). The Rekey SA has selectors too.
    #[test]
    fn known_layout_of_a_rekey_policy() {
        let g = Gsa {
            policies: vec![GroupPolicy::Rekey {
                spi: [0x11; 16],
                src: TrafficSelector {
                    protocol: 17,
                    start_port: 848,
                    end_port: 848,
                    ..ts("192.0.2.1", "192.0.2.1")
                },
                dst: TrafficSelector {
                    protocol: 17,
                    start_port: 848,
                    end_port: 848,
                    ..ts("239.0.0.1", "239.0.0.1")
                },
                transforms: vec![
                    Transform {
                        kind: 1,
                        id: 20,
                        key_len: Some(256),
                    },
                    Transform {
                        kind: transform::KWA,
                        id: transform::KW_5649_256,
                        key_len: None,
                    },
                ],
                attrs: vec![Attr::tlv(
                    gsa_attr::GSA_KEY_LIFETIME,
                    vec![0, 0, 0x0e, 0x10],
                )],
            }],
        };
        let mut want = vec![6, 16, 0, 4 + 16 + 16 + 16 + 12 + 8 + 8];
        want.extend_from_slice(&[0x11; 16]);
        want.extend_from_slice(&[7, 17, 0, 16, 3, 0x50, 3, 0x50, 192, 0, 2, 1, 192, 0, 2, 1]);
        want.extend_from_slice(&[7, 17, 0, 16, 3, 0x50, 3, 0x50, 239, 0, 0, 1, 239, 0, 0, 1]);
        // ENCR 20 (AES-GCM-16) with Key Length 256, more follow; KWA 3, last.
        want.extend_from_slice(&[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 14, 1, 0]);
        want.extend_from_slice(&[0, 0, 0, 8, 13, 0, 0, 3]);
        // GSA_KEY_LIFETIME (TLV) 3600 s in 4 octets.
        want.extend_from_slice(&[0, 1, 0, 4, 0, 0, 0x0e, 0x10]);
        let mut b = Vec::new();
        g.emit(&mut b);
        assert_eq!(b, want);
        assert_eq!(Gsa::parse(&b).unwrap(), g);
    }

    /// Group Key Bag (section 4.5.2) and the Wrapped Key Format (section 4.5.4): Key ID, KWK
    /// ID, Encrypted Key.
    #[test]
    fn known_layout_of_a_group_key_bag() {
        let w = WrappedKey {
            key_id: 0,
            kwk_id: 0x0102_0304,
            wrapped: vec![0xaa; 24],
        };
        let kd = Kd {
            bags: vec![KeyBag::Group {
                protocol: proto::ESP,
                spi: vec![0xff, 0, 0, 1],
                attrs: vec![Attr::tlv(group_key_attr::SA_KEY, w.to_bytes())],
            }],
        };
        let mut want = vec![3, 4, 0, 4 + 4 + 4 + 32, 0xff, 0, 0, 1, 0, 1, 0, 32];
        want.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4]);
        want.extend_from_slice(&[0xaa; 24]);
        let mut b = Vec::new();
        kd.emit(&mut b);
        assert_eq!(b, want);
        assert_eq!(Kd::parse(&b).unwrap(), kd);
    }

    #[test]
    fn strict_parsing_refuses_what_we_would_not_emit() {
        let mut b = Vec::new();
        sample_gsa().emit(&mut b);
        // Trailing byte after the last policy: its header is truncated.
        let mut t = b.clone();
        t.push(0);
        assert!(Gsa::parse(&t).is_err());
        // Empty GSA and KD.
        assert!(Gsa::parse(&[]).is_err());
        assert!(Kd::parse(&[]).is_err());
        // A rekey policy with a 4-octet SPI.
        assert!(Gsa::parse(&[6, 4, 0, 8, 1, 2, 3, 4]).is_err());
        // A member key bag's second octet is RESERVED: ignored on receipt, not an SPI size.
        assert_eq!(
            Kd::parse(&[0, 4, 0, 8, 0x80, 1, 0, 1]).unwrap(),
            Kd {
                bags: vec![KeyBag::Member {
                    attrs: vec![Attr::tv(1, 1)]
                }]
            }
        );
        // The same for the GW policy.
        assert!(matches!(
            Gsa::parse(&[0, 7, 0, 8, 0x80, 1, 0, 5]).unwrap().policies[..],
            [GroupPolicy::GroupWide { .. }]
        ));
        // Attribute type 0.
        assert!(Kd::parse(&[0, 0, 0, 8, 0x80, 0, 0, 1]).is_err());
        // A traffic selector with start above end.
        let mut d = Vec::new();
        Gsa {
            policies: vec![GroupPolicy::Data {
                protocol: proto::ESP,
                spi: 1,
                src: ts("10.0.0.9", "10.0.0.1"),
                dst: ts("10.0.0.1", "10.0.0.9"),
                transforms: vec![Transform {
                    kind: 1,
                    id: 20,
                    key_len: Some(128),
                }],
                attrs: vec![],
            }],
        }
        .emit(&mut d);
        assert_eq!(
            Gsa::parse(&d).unwrap_err(),
            WireError::Malformed("traffic selector range")
        );
        // Wrapped keys: too short, not whole blocks.
        assert!(WrappedKey::parse(&[0, 0, 0, 1, 1, 2, 3]).is_err());
        assert!(WrappedKey::parse(&[0; 8 + 17]).is_err());
        assert!(WrappedKey::parse(&[0; 8 + 8]).is_err());
        assert!(WrappedKey::parse(&[0; 8 + 24]).is_ok());
        // IDg without data.
        assert!(parse_idg(&[2, 0, 0, 0]).is_err());
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        let mut gsa = Vec::new();
        sample_gsa().emit(&mut gsa);
        let mut kd = Vec::new();
        sample_kd().emit(&mut kd);
        for body in [&gsa, &kd] {
            for n in 0..body.len() {
                let _ = Gsa::parse(&body[..n]);
                let _ = Kd::parse(&body[..n]);
                let _ = parse_idg(&body[..n]);
            }
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            for _ in 0..20_000 {
                let mut b = body.clone();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x as usize) % b.len();
                    b[i] = (x >> 32) as u8;
                }
                // What parses must emit to the same bytes (strict: one form only).
                if let Ok(g) = Gsa::parse(&b) {
                    let mut e = Vec::new();
                    g.emit(&mut e);
                    assert_eq!(Gsa::parse(&e).unwrap(), g);
                }
                if let Ok(k) = Kd::parse(&b) {
                    let mut e = Vec::new();
                    k.emit(&mut e);
                    assert_eq!(Kd::parse(&e).unwrap(), k);
                }
            }
        }
    }
}
