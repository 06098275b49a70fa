//! IKEv2 messages on the wire (RFC 7296 section 3): the header, the payload chain and every
//! payload roamgate speaks, as owned `Repr`s with `parse` and `emit`.
//!
//! Everything here reads bytes from the network: no input may panic. Lengths are checked
//! before use, arithmetic is checked, and an unknown payload with the critical bit set is
//! reported (the caller answers UNSUPPORTED_CRITICAL_PAYLOAD), one without is skipped.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 28;
pub const VERSION: u8 = 0x20;
pub const FLAG_INITIATOR: u8 = 0x08;
pub const FLAG_RESPONSE: u8 = 0x20;

/// Exchange types.
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Payload type numbers.
pub mod payload {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    /// Encrypted Fragment (RFC 7383 2.5).
    pub const SKF: u8 = 53;
}

/// Notify message types used here.
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// RFC 9611 4: the responder keeps no further per-resource CHILD_SA with these selectors.
    pub const TS_MAX_QUEUE: u16 = 48;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const ADDITIONAL_IP4_ADDRESS: u16 = 16397;
    pub const ADDITIONAL_IP6_ADDRESS: u16 = 16398;
    pub const NO_ADDITIONAL_ADDRESSES: u16 = 16399;
    pub const UPDATE_SA_ADDRESSES: u16 = 16400;
    pub const COOKIE2: u16 = 16401;
    /// RFC 6311 4.1: both ends of an IKE SA can synchronize its message ids.
    pub const IKEV2_MESSAGE_ID_SYNC_SUPPORTED: u16 = 16420;
    /// RFC 6311 4.2: nonce (4 bytes), EXPECTED_SEND_REQ_MESSAGE_ID, EXPECTED_RECV_REQ_MESSAGE_ID.
    pub const IKEV2_MESSAGE_ID_SYNC: u16 = 16422;
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
    /// RFC 9611: per-resource (per-core) CHILD_SAs with identical selectors. Sent in IKE_AUTH
    /// and with each further CHILD_SA of the same selectors; both ends sending it in IKE_AUTH
    /// agree to keep one CHILD_SA per resource (here: per worker) under the IKE SA.
    pub const SA_RESOURCE_INFO: u16 = 16444;
    /// RFC 5685: a client that follows redirects says so in IKE_SA_INIT; the gateway names
    /// the new gateway in REDIRECT (here inside an INFORMATIONAL of the IKE SA, 5685 section 5).
    pub const REDIRECT_SUPPORTED: u16 = 16406;
    pub const REDIRECT: u16 = 16407;
    /// RFC 5685 5 and 8: a redirected client names the gateway it was redirected from in its
    /// next IKE_SA_INIT, instead of REDIRECT_SUPPORTED (which it implies).
    pub const REDIRECTED_FROM: u16 = 16408;
    /// Private use (RFC 7296 3.10.1: 40960..65535 status types): roamgate's gateway move
    /// (`exchange::gw_move`). Sent in IKE_AUTH by both ends that take it.
    pub const ROAMGATE_GATEWAY_MOVE_SUPPORTED: u16 = 47100;
    /// In an INFORMATIONAL request of the gateway: "I am now at this address" (family byte
    /// 4 or 6, the address, the port; 7 or 19 bytes).
    pub const ROAMGATE_GATEWAY_MOVED: u16 = 47101;

    /// The first private-use status type (RFC 7296 3.10.1: 40960-65535).
    pub const PRIVATE_STATUS_FIRST: u16 = 40960;

    /// Types below 16384 are errors (RFC 7296 3.10.1).
    pub fn is_error(t: u16) -> bool {
        t < 16384
    }
}

/// Certificate encodings of CERT and CERTREQ (RFC 7296 3.6).
pub mod cert_encoding {
    pub const X509_SIGNATURE: u8 = 4;
}

/// Protocol ids (SA proposals, notify, delete).
pub mod proto {
    pub const IKE: u8 = 1;
    pub const ESP: u8 = 3;
}

/// Transform types and ids.
pub mod transform {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;

    pub const ENCR_AES_CBC: u16 = 12;
    pub const ENCR_AES_GCM_16: u16 = 20;
    pub const PRF_HMAC_SHA2_256: u16 = 5;
    pub const PRF_HMAC_SHA2_384: u16 = 6;
    pub const PRF_HMAC_SHA2_512: u16 = 7;
    pub const AUTH_HMAC_SHA1_96: u16 = 2;
    pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
    pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
    pub const AUTH_HMAC_SHA2_512_256: u16 = 14;
    pub const DH_MODP2048: u16 = 14;
    pub const DH_ECP256: u16 = 19;
    pub const DH_X25519: u16 = 31;
    pub const ESN_NO: u16 = 0;
    pub const ESN_YES: u16 = 1;
    /// The Key Length attribute (TV format).
    pub const ATTR_KEY_LENGTH: u16 = 14;
}

/// What can be wrong with a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated")]
    Truncated,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported critical payload {0}")]
    UnsupportedCritical(u8),
    #[error("not IKEv2 (version {0:#x})")]
    Version(u8),
}

type Result<T> = core::result::Result<T, WireError>;

/// A cursor over received bytes that never panics.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(WireError::Truncated)?;
        self.at = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        self.take(1)?.first().copied().ok_or(WireError::Truncated)
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        match self.take(2)? {
            &[a, b] => Ok(u16::from_be_bytes([a, b])),
            _ => Err(WireError::Truncated),
        }
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        match self.take(4)? {
            &[a, b, c, d] => Ok(u32::from_be_bytes([a, b, c, d])),
            _ => Err(WireError::Truncated),
        }
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.at..).unwrap_or(&[]);
        self.at = self.buf.len();
        s
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }
    /// A substructure with a 4-octet header (two octets, then its length counting the
    /// header): the two octets and a reader over the body.
    pub(crate) fn substructure(&mut self) -> Result<(u8, u8, Reader<'a>)> {
        let a = self.u8()?;
        let b = self.u8()?;
        let len = usize::from(self.u16()?);
        let body = len
            .checked_sub(4)
            .ok_or(WireError::Malformed("substructure length"))?;
        Ok((a, b, Reader::new(self.take(body)?)))
    }
}

/// The fixed IKE header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: u8,
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    /// The header of an IKEv2 message: major version 2 (the minor version is ignored, RFC
    /// 7296 2.5) and a length field within `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header> {
        let (h, version) = Header::parse_any_version(buf)?;
        if version >> 4 != 2 {
            return Err(WireError::Version(version));
        }
        Ok(h)
    }

    /// The header whatever its version byte (returned beside it), for answering a newer
    /// major version (RFC 7296 2.5).
    pub fn parse_any_version(buf: &[u8]) -> Result<(Header, u8)> {
        let mut r = Reader::new(buf);
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = r.u8()?;
        let version = r.u8()?;
        let exchange = r.u8()?;
        let flags = r.u8()?;
        let message_id = r.u32()?;
        let length = r.u32()?;
        if (length as usize) < HEADER_LEN || length as usize > buf.len() {
            return Err(WireError::Malformed("length field"));
        }
        Ok((
            Header {
                spi_i,
                spi_r,
                next_payload,
                exchange,
                flags,
                message_id,
                length,
            },
            version,
        ))
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload);
        out.push(VERSION);
        out.push(self.exchange);
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn from_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

/// One transform of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform {
    pub kind: u8,
    pub id: u16,
    /// The Key Length attribute, in bits.
    pub key_len: Option<u16>,
}

/// One proposal of an SA payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub num: u8,
    pub protocol: u8,
    /// 8 bytes for IKE rekeys, 4 for ESP, empty in IKE_SA_INIT.
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// Identification (IDi / IDr).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Id {
    pub kind: u8,
    pub data: Vec<u8>,
}

pub mod id_type {
    pub const IPV4: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822: u8 = 3;
    pub const IPV6: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const KEY_ID: u8 = 11;
}

impl Id {
    /// The body the AUTH computation MACs (RFC 7296 2.15: ID type, three reserved bytes, data).
    pub fn body(&self) -> Vec<u8> {
        let mut b = vec![self.kind, 0, 0, 0];
        b.extend_from_slice(&self.data);
        b
    }

    /// A printable form for logs and matching.
    pub fn display(&self) -> String {
        match self.kind {
            id_type::IPV4 => match <[u8; 4]>::try_from(self.data.as_slice()) {
                Ok(a) => Ipv4Addr::from(a).to_string(),
                Err(_) => "<bad ipv4 id>".into(),
            },
            id_type::IPV6 => match <[u8; 16]>::try_from(self.data.as_slice()) {
                Ok(a) => Ipv6Addr::from(a).to_string(),
                Err(_) => "<bad ipv6 id>".into(),
            },
            id_type::DER_ASN1_DN => {
                use x509_parser::prelude::FromDer;
                match x509_parser::x509::X509Name::from_der(&self.data) {
                    Ok((_, name)) => name.to_string(),
                    Err(_) => "<bad dn id>".into(),
                }
            }
            _ => String::from_utf8_lossy(&self.data).into_owned(),
        }
    }

    /// FQDN, e-mail address (with '@') or IP address, from config text.
    pub fn from_text(s: &str) -> Id {
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            Id {
                kind: id_type::IPV4,
                data: a.octets().to_vec(),
            }
        } else if let Ok(a) = s.parse::<Ipv6Addr>() {
            Id {
                kind: id_type::IPV6,
                data: a.octets().to_vec(),
            }
        } else if s.contains('@') {
            Id {
                kind: id_type::RFC822,
                data: s.as_bytes().to_vec(),
            }
        } else {
            Id {
                kind: id_type::FQDN,
                data: s.as_bytes().to_vec(),
            }
        }
    }
}

/// A traffic selector (address range, protocol, port range).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

const TS_IPV4: u8 = 7;
const TS_IPV6: u8 = 8;

/// A configuration attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfgAttr {
    pub kind: u16,
    pub value: Vec<u8>,
}

pub mod cfg {
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const INTERNAL_IP4_ADDRESS: u16 = 1;
    pub const INTERNAL_IP4_NETMASK: u16 = 2;
    pub const INTERNAL_IP4_DNS: u16 = 3;
    pub const INTERNAL_IP6_ADDRESS: u16 = 8;
    pub const INTERNAL_IP6_DNS: u16 = 10;
}

/// One payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Id),
    IdR(Id),
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify {
        protocol: u8,
        spi: Vec<u8>,
        kind: u16,
        data: Vec<u8>,
    },
    Delete {
        protocol: u8,
        spis: Vec<Vec<u8>>,
    },
    Vendor(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    Cp {
        kind: u8,
        attrs: Vec<CfgAttr>,
    },
    /// CERT (RFC 7296 3.6): an encoding (`cert_encoding`) and the certificate data.
    Cert {
        encoding: u8,
        data: Vec<u8>,
    },
    /// CERTREQ (RFC 7296 3.7): an encoding and, for X.509, the SHA-1 hashes of the trusted
    /// CAs' SubjectPublicKeyInfo, concatenated.
    CertReq {
        encoding: u8,
        data: Vec<u8>,
    },
    /// A payload we do not interpret (EAP, ... without the critical bit).
    Other {
        kind: u8,
        data: Vec<u8>,
    },
}

impl Payload {
    pub fn kind(&self) -> u8 {
        match self {
            Payload::Sa(_) => payload::SA,
            Payload::Ke { .. } => payload::KE,
            Payload::IdI(_) => payload::IDI,
            Payload::IdR(_) => payload::IDR,
            Payload::Auth { .. } => payload::AUTH,
            Payload::Nonce(_) => payload::NONCE,
            Payload::Notify { .. } => payload::NOTIFY,
            Payload::Delete { .. } => payload::DELETE,
            Payload::Vendor(_) => payload::VENDOR,
            Payload::TsI(_) => payload::TSI,
            Payload::TsR(_) => payload::TSR,
            Payload::Cp { .. } => payload::CP,
            Payload::Cert { .. } => payload::CERT,
            Payload::CertReq { .. } => payload::CERTREQ,
            Payload::Other { kind, .. } => *kind,
        }
    }

    /// A status or error notify without SPI.
    pub fn notify(kind: u16, data: Vec<u8>) -> Payload {
        Payload::Notify {
            protocol: 0,
            spi: Vec::new(),
            kind,
            data,
        }
    }

    /// Parses one payload body of type `kind`.
    fn parse_body(kind: u8, body: &[u8]) -> Result<Payload> {
        let mut r = Reader::new(body);
        Ok(match kind {
            payload::SA => Payload::Sa(parse_proposals(body)?),
            payload::KE => {
                let group = r.u16()?;
                r.take(2)?;
                Payload::Ke {
                    group,
                    data: r.rest().to_vec(),
                }
            }
            payload::IDI | payload::IDR => {
                let t = r.u8()?;
                r.take(3)?;
                let id = Id {
                    kind: t,
                    data: r.rest().to_vec(),
                };
                if kind == payload::IDI {
                    Payload::IdI(id)
                } else {
                    Payload::IdR(id)
                }
            }
            payload::AUTH => {
                let method = r.u8()?;
                r.take(3)?;
                Payload::Auth {
                    method,
                    data: r.rest().to_vec(),
                }
            }
            payload::NONCE => {
                let n = r.rest();
                if !(16..=256).contains(&n.len()) {
                    return Err(WireError::Malformed("nonce length"));
                }
                Payload::Nonce(n.to_vec())
            }
            payload::NOTIFY => {
                let protocol = r.u8()?;
                let spi_len = r.u8()?;
                let kind = r.u16()?;
                let spi = r.take(usize::from(spi_len))?.to_vec();
                Payload::Notify {
                    protocol,
                    spi,
                    kind,
                    data: r.rest().to_vec(),
                }
            }
            payload::DELETE => {
                let protocol = r.u8()?;
                let spi_len = usize::from(r.u8()?);
                let n = r.u16()?;
                let mut spis = Vec::new();
                for _ in 0..n {
                    spis.push(r.take(spi_len)?.to_vec());
                }
                Payload::Delete { protocol, spis }
            }
            payload::VENDOR => Payload::Vendor(r.rest().to_vec()),
            payload::TSI | payload::TSR => {
                let n = r.u8()?;
                r.take(3)?;
                let mut ts = Vec::new();
                for _ in 0..n {
                    let t = r.u8()?;
                    let protocol = r.u8()?;
                    let len = usize::from(r.u16()?);
                    let start_port = r.u16()?;
                    let end_port = r.u16()?;
                    let (start, end) = match (t, len) {
                        (TS_IPV4, 16) => {
                            let mut a = [0u8; 4];
                            let mut b = [0u8; 4];
                            a.copy_from_slice(r.take(4)?);
                            b.copy_from_slice(r.take(4)?);
                            (IpAddr::from(a), IpAddr::from(b))
                        }
                        (TS_IPV6, 40) => {
                            let mut a = [0u8; 16];
                            let mut b = [0u8; 16];
                            a.copy_from_slice(r.take(16)?);
                            b.copy_from_slice(r.take(16)?);
                            (IpAddr::from(a), IpAddr::from(b))
                        }
                        _ => return Err(WireError::Malformed("traffic selector")),
                    };
                    ts.push(TrafficSelector {
                        protocol,
                        start_port,
                        end_port,
                        start,
                        end,
                    });
                }
                if kind == payload::TSI {
                    Payload::TsI(ts)
                } else {
                    Payload::TsR(ts)
                }
            }
            payload::CP => {
                let kind = r.u8()?;
                r.take(3)?;
                let mut attrs = Vec::new();
                while !r.is_empty() {
                    let t = r.u16()? & 0x7fff;
                    let len = usize::from(r.u16()?);
                    attrs.push(CfgAttr {
                        kind: t,
                        value: r.take(len)?.to_vec(),
                    });
                }
                Payload::Cp { kind, attrs }
            }
            payload::CERT | payload::CERTREQ => {
                let encoding = r.u8()?;
                let data = r.rest().to_vec();
                if kind == payload::CERT {
                    Payload::Cert { encoding, data }
                } else {
                    Payload::CertReq { encoding, data }
                }
            }
            other => Payload::Other {
                kind: other,
                data: body.to_vec(),
            },
        })
    }

    fn emit_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => emit_proposals(props, out),
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(n) => out.extend_from_slice(n),
            Payload::Notify {
                protocol,
                spi,
                kind,
                data,
            } => {
                out.push(*protocol);
                out.push(spi.len() as u8);
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(spi);
                out.extend_from_slice(data);
            }
            Payload::Delete { protocol, spis } => {
                out.push(*protocol);
                out.push(spis.first().map_or(0, |s| s.len() as u8));
                out.extend_from_slice(&(spis.len() as u16).to_be_bytes());
                for s in spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::Vendor(v) => out.extend_from_slice(v),
            Payload::TsI(ts) | Payload::TsR(ts) => {
                out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
                for t in ts {
                    let (ty, len) = if t.start.is_ipv4() {
                        (TS_IPV4, 16u16)
                    } else {
                        (TS_IPV6, 40u16)
                    };
                    out.push(ty);
                    out.push(t.protocol);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(&t.start_port.to_be_bytes());
                    out.extend_from_slice(&t.end_port.to_be_bytes());
                    for a in [t.start, t.end] {
                        match a {
                            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                        }
                    }
                }
            }
            Payload::Cp { kind, attrs } => {
                out.extend_from_slice(&[*kind, 0, 0, 0]);
                for a in attrs {
                    out.extend_from_slice(&a.kind.to_be_bytes());
                    out.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&a.value);
                }
            }
            Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
                out.push(*encoding);
                out.extend_from_slice(data);
            }
            Payload::Other { data, .. } => out.extend_from_slice(data),
        }
    }
}

fn parse_proposals(body: &[u8]) -> Result<Vec<Proposal>> {
    let mut r = Reader::new(body);
    let mut props = Vec::new();
    loop {
        let last = r.u8()?;
        r.u8()?;
        let len = usize::from(r.u16()?);
        let inner_len = len
            .checked_sub(4)
            .ok_or(WireError::Malformed("proposal length"))?;
        let mut p = Reader::new(r.take(inner_len)?);
        let num = p.u8()?;
        let protocol = p.u8()?;
        let spi_len = usize::from(p.u8()?);
        let n = p.u8()?;
        let spi = p.take(spi_len)?.to_vec();
        let mut transforms = Vec::new();
        for _ in 0..n {
            let _last = p.u8()?;
            p.u8()?;
            let tlen = usize::from(p.u16()?);
            let tin = tlen
                .checked_sub(4)
                .ok_or(WireError::Malformed("transform length"))?;
            let mut t = Reader::new(p.take(tin)?);
            let kind = t.u8()?;
            t.u8()?;
            let id = t.u16()?;
            let mut key_len = None;
            while !t.is_empty() {
                let at = t.u16()?;
                if at & 0x8000 != 0 {
                    let v = t.u16()?;
                    if at & 0x7fff == transform::ATTR_KEY_LENGTH {
                        key_len = Some(v);
                    }
                } else {
                    let l = usize::from(t.u16()?);
                    t.take(l)?;
                }
            }
            transforms.push(Transform { kind, id, key_len });
        }
        props.push(Proposal {
            num,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 => break,
            2 => {}
            _ => return Err(WireError::Malformed("proposal last-substructure")),
        }
    }
    Ok(props)
}

fn emit_proposals(props: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in props.iter().enumerate() {
        let start = out.len();
        out.push(if Some(i) == props.len().checked_sub(1) {
            0
        } else {
            2
        });
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out.push(p.num);
        out.push(p.protocol);
        out.push(p.spi.len() as u8);
        out.push(p.transforms.len() as u8);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            out.push(if Some(j) == p.transforms.len().checked_sub(1) {
                0
            } else {
                3
            });
            out.push(0);
            let tlen: u16 = if t.key_len.is_some() { 12 } else { 8 };
            out.extend_from_slice(&tlen.to_be_bytes());
            out.push(t.kind);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            if let Some(k) = t.key_len {
                out.extend_from_slice(&(0x8000 | transform::ATTR_KEY_LENGTH).to_be_bytes());
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        let len = (out.len().saturating_sub(start)) as u16;
        if let Some(l) = out.get_mut(start.saturating_add(2)..start.saturating_add(4)) {
            l.copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Emits a payload chain; returns the first payload's type (for the header or SK payload).
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> u8 {
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads
            .get(i.saturating_add(1))
            .map_or(payload::NONE, Payload::kind);
        let start = out.len();
        out.push(next);
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        p.emit_body(out);
        let len = (out.len().saturating_sub(start)) as u16;
        if let Some(l) = out.get_mut(start.saturating_add(2)..start.saturating_add(4)) {
            l.copy_from_slice(&len.to_be_bytes());
        }
    }
    payloads.first().map_or(payload::NONE, Payload::kind)
}

/// A parsed payload chain. When it ends in an SK payload, `sk` holds where that payload's
/// body starts in the message and the type of its first inner payload.
#[derive(Debug)]
pub struct Chain {
    pub payloads: Vec<Payload>,
    pub sk: Option<SkRef>,
}

/// The encrypted payload's place in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkRef {
    /// Offset of the SK generic payload header in the message.
    pub header_at: usize,
    /// The inner chain's first payload type.
    pub first_inner: u8,
}

/// Parses the chain that starts at `at` in `msg` with type `first`.
pub fn parse_chain(msg: &[u8], at: usize, first: u8) -> Result<Chain> {
    let mut next = first;
    let mut pos = at;
    let mut payloads = Vec::new();
    while next != payload::NONE {
        let kind = next;
        let hdr = msg
            .get(pos..pos.checked_add(4).ok_or(WireError::Truncated)?)
            .ok_or(WireError::Truncated)?;
        let (n, flags, len) = match hdr {
            &[n, f, a, b] => (n, f, usize::from(u16::from_be_bytes([a, b]))),
            _ => return Err(WireError::Truncated),
        };
        if len < 4 {
            return Err(WireError::Malformed("payload length"));
        }
        let end = pos.checked_add(len).ok_or(WireError::Truncated)?;
        let body = msg
            .get(pos.checked_add(4).ok_or(WireError::Truncated)?..end)
            .ok_or(WireError::Truncated)?;
        if kind == payload::SK {
            // The SK payload must be the last one; its body is decrypted by the caller.
            if end != msg.len() {
                return Err(WireError::Malformed("data after the encrypted payload"));
            }
            return Ok(Chain {
                payloads,
                sk: Some(SkRef {
                    header_at: pos,
                    first_inner: n,
                }),
            });
        }
        let known = matches!(
            kind,
            payload::SA
                | payload::KE
                | payload::IDI
                | payload::IDR
                | payload::AUTH
                | payload::NONCE
                | payload::NOTIFY
                | payload::DELETE
                | payload::VENDOR
                | payload::TSI
                | payload::TSR
                | payload::CP
                | payload::CERT
                | payload::CERTREQ
                | payload::EAP
                // G-IKEv2 (RFC 9838): bodies parsed by `crate::group::wire`.
                | crate::group::wire::payload::IDG
                | crate::group::wire::payload::GSA
                | crate::group::wire::payload::KD
        );
        if !known && flags & 0x80 != 0 {
            return Err(WireError::UnsupportedCritical(kind));
        }
        payloads.push(Payload::parse_body(kind, body)?);
        next = n;
        pos = end;
    }
    if pos != msg.len() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok(Chain { payloads, sk: None })
}

/// The fixed part of an Encrypted Fragment payload (RFC 7383 2.5): the generic payload
/// header (next payload, flags, length), Fragment Number and Total Fragments. The IV,
/// ciphertext and ICV follow; everything before the IV is the fragment's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    /// In fragment 1, the type of the first inner payload; zero in the others.
    pub first_inner: u8,
    /// 1-based, at most `total`.
    pub number: u16,
    pub total: u16,
}

/// Length of [`FragmentHeader`] on the wire.
pub const SKF_HEADER_LEN: usize = 8;

impl FragmentHeader {
    /// The Encrypted Fragment payload of `msg`, a whole IKE message whose header says the
    /// first payload is SKF. It must be the only payload: its length runs to the end of the
    /// message (no exchange carries anything beside it). Numbers of 0 and a number above
    /// the total are malformed (RFC 7383 2.5).
    pub fn parse(msg: &[u8]) -> Result<FragmentHeader> {
        let mut r = Reader::new(msg);
        r.take(HEADER_LEN)?;
        let first_inner = r.u8()?;
        let _flags = r.u8()?;
        let len = usize::from(r.u16()?);
        let number = r.u16()?;
        let total = r.u16()?;
        if HEADER_LEN.checked_add(len) != Some(msg.len()) {
            return Err(WireError::Malformed("encrypted fragment length"));
        }
        if len <= SKF_HEADER_LEN {
            return Err(WireError::Malformed("empty encrypted fragment"));
        }
        if number == 0 || total == 0 || number > total {
            return Err(WireError::Malformed("fragment number"));
        }
        Ok(FragmentHeader {
            first_inner,
            number,
            total,
        })
    }

    /// The payload's fixed part for a payload of `len` bytes in all.
    pub fn emit(&self, len: u16, out: &mut Vec<u8>) {
        out.push(self.first_inner);
        out.push(0);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.number.to_be_bytes());
        out.extend_from_slice(&self.total.to_be_bytes());
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

    fn sample() -> Vec<Payload> {
        vec![
            Payload::Sa(vec![Proposal {
                num: 1,
                protocol: proto::IKE,
                spi: vec![],
                transforms: vec![
                    Transform {
                        kind: transform::ENCR,
                        id: transform::ENCR_AES_GCM_16,
                        key_len: Some(128),
                    },
                    Transform {
                        kind: transform::PRF,
                        id: transform::PRF_HMAC_SHA2_256,
                        key_len: None,
                    },
                    Transform {
                        kind: transform::DH,
                        id: transform::DH_X25519,
                        key_len: None,
                    },
                ],
            }]),
            Payload::Ke {
                group: 31,
                data: vec![9; 32],
            },
            Payload::Nonce(vec![1; 32]),
            Payload::notify(notify::NAT_DETECTION_SOURCE_IP, vec![2; 20]),
            Payload::TsI(vec![TrafficSelector {
                protocol: 0,
                start_port: 0,
                end_port: 65535,
                start: "10.1.0.0".parse().unwrap(),
                end: "10.1.0.255".parse().unwrap(),
            }]),
            Payload::TsR(vec![TrafficSelector {
                protocol: 17,
                start_port: 500,
                end_port: 500,
                start: "fd00::".parse().unwrap(),
                end: "fd00::ffff".parse().unwrap(),
            }]),
            Payload::Cp {
                kind: cfg::REQUEST,
                attrs: vec![CfgAttr {
                    kind: cfg::INTERNAL_IP4_ADDRESS,
                    value: vec![],
                }],
            },
            Payload::Delete {
                protocol: proto::ESP,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            },
            Payload::IdI(Id::from_text("gw.roamgate.test")),
            Payload::Auth {
                method: 2,
                data: vec![3; 32],
            },
        ]
    }

    fn message(payloads: &[Payload]) -> Vec<u8> {
        let mut body = Vec::new();
        let first = emit_chain(payloads, &mut body);
        let mut m = Vec::new();
        Header {
            spi_i: 0x1122334455667788,
            spi_r: 0,
            next_payload: first,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0,
            length: (HEADER_LEN + body.len()) as u32,
        }
        .emit(&mut m);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn round_trip_every_payload() {
        let p = sample();
        let m = message(&p);
        let h = Header::parse(&m).unwrap();
        assert_eq!(h.length as usize, m.len());
        let c = parse_chain(&m, HEADER_LEN, h.next_payload).unwrap();
        assert_eq!(c.payloads, p);
        assert!(c.sk.is_none());
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let m = message(&sample());
        for n in 0..m.len() {
            let cut = &m[..n];
            if let Ok(h) = Header::parse(cut) {
                let _ = parse_chain(cut, HEADER_LEN, h.next_payload);
            }
            let _ = parse_chain(cut, HEADER_LEN.min(n), payload::SA);
        }
        // Deterministic pseudo-random mutations of a valid message.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let mut b = m.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            if let Ok(h) = Header::parse(&b) {
                let _ = parse_chain(&b, HEADER_LEN, h.next_payload);
            }
        }
    }

    #[test]
    fn unknown_critical_payload_is_reported() {
        let mut m = message(&[Payload::Other {
            kind: 200,
            data: vec![1, 2],
        }]);
        m[HEADER_LEN + 1] = 0x80;
        let h = Header::parse(&m).unwrap();
        assert_eq!(
            parse_chain(&m, HEADER_LEN, h.next_payload).unwrap_err(),
            WireError::UnsupportedCritical(200)
        );
        m[HEADER_LEN + 1] = 0;
        assert!(parse_chain(&m, HEADER_LEN, h.next_payload).is_ok());
    }

    #[test]
    fn header_checks_version_and_length() {
        let mut m = message(&sample());
        m[17] = 0x10;
        assert_eq!(Header::parse(&m).unwrap_err(), WireError::Version(0x10));
        let mut m = message(&sample());
        m[27] = m[27].wrapping_add(1);
        assert!(Header::parse(&m).is_err());
    }
}
