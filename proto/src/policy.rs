//! Policy as data: address prefixes, port ranges, selectors, rules and the flow key a packet
//! is classified by (RFC 4301 section 4.4.1).
//!
//! This module owns these types, their parsing (`10.0.0.0/8`, `2001:db8::/32`, a bare
//! address; ports `443`, `1024-65535`, `any`) and matching one selector against one key. It
//! never orders or compiles rules (the data plane's SPD does) and never panics on any input.

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;

use serde::Deserialize;

use crate::ids::SaId;

/// An address prefix, IPv4 or IPv6. Written `10.0.0.0/8`, `2001:db8::/32`, or a bare address
/// (a host route). Host bits must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix or port range did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// An address as an integer, IPv4 zero-extended (how the SPD compares addresses).
#[inline]
pub fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

/// Bits in an address of `a`'s family: 32 or 128.
#[inline]
pub fn addr_width(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// Mask with the top `len` bits of a `width`-bit address set (`len <= width <= 128`).
#[inline]
pub fn mask(width: u8, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all & !((1u128 << (width - len)) - 1)
    }
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ParseError> {
        let w = addr_width(addr);
        if len > w {
            return Err(ParseError(format!(
                "prefix length {len} is longer than {w}"
            )));
        }
        if addr_bits(addr) & !mask(w, len) != 0 {
            let net = Prefix::masked(addr, len);
            return Err(ParseError(format!(
                "{addr}/{len} has host bits set (did you mean {net}?)"
            )));
        }
        Ok(Prefix { addr, len })
    }

    /// The prefix of `addr` with host bits cleared.
    pub fn masked(addr: IpAddr, len: u8) -> Self {
        let w = addr_width(addr);
        let len = len.min(w);
        let b = addr_bits(addr) & mask(w, len);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(b.into()),
        };
        Prefix { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The first and last address of the prefix.
    pub fn range(&self) -> (IpAddr, IpAddr) {
        let w = addr_width(self.addr);
        let last = addr_bits(self.addr) | (!mask(w, self.len) & mask(w, w));
        let last = match self.addr {
            IpAddr::V4(_) => IpAddr::V4((last as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(last.into()),
        };
        (self.addr, last)
    }

    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn contains(&self, a: IpAddr) -> bool {
        // Per family, in the family's own width (this runs per packet: the inbound selector
        // check and host bindings).
        match (self.addr, a) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let m = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(self.len)))
                    .unwrap_or(0);
                u32::from(a) & m == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let m = u128::MAX
                    .checked_shl(128u32.saturating_sub(u32::from(self.len)))
                    .unwrap_or(0);
                u128::from(a) & m == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Prefix {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| ParseError(format!("'{s}' is not an address or prefix")))?;
        let len = match l {
            Some(l) => l
                .trim()
                .parse::<u8>()
                .map_err(|_| ParseError(format!("'{s}': bad prefix length")))?,
            None => addr_width(addr),
        };
        Prefix::new(addr, len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        lo: 0,
        hi: u16::MAX,
    };

    #[inline]
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("any") {
            return Ok(PortRange::ANY);
        }
        let num = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| ParseError(format!("'{s}' is not a port, a range 'lo-hi' or 'any'")))
        };
        let r = match t.split_once('-') {
            Some((lo, hi)) => PortRange {
                lo: num(lo)?,
                hi: num(hi)?,
            },
            None => {
                let p = num(t)?;
                PortRange { lo: p, hi: p }
            }
        };
        if r.lo > r.hi {
            return Err(ParseError(format!("port range '{s}' runs backwards")));
        }
        Ok(r)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(p) => Ok(PortRange { lo: p, hi: p }),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    pub src: Prefix,
    pub dst: Prefix,
    /// IP protocol; None = any.
    pub proto: Option<u8>,
    pub src_ports: PortRange,
    pub dst_ports: PortRange,
}

impl Selector {
    #[inline]
    pub fn matches(&self, k: &FlowKey) -> bool {
        self.src.contains(k.src)
            && self.dst.contains(k.dst)
            && self.proto.is_none_or(|p| p == k.proto)
            && self.src_ports.contains(k.src_port)
            && self.dst_ports.contains(k.dst_port)
    }

    /// The protocol and port part only (for a caller that matched the prefixes otherwise,
    /// e.g. the SPD's hash probe).
    #[inline]
    pub fn matches_proto_and_ports(&self, k: &FlowKey) -> bool {
        self.proto.is_none_or(|p| p == k.proto)
            && self.src_ports.contains(k.src_port)
            && self.dst_ports.contains(k.dst_port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Protect(SaId),
    Bypass,
    Discard,
}

/// SPD rule ids at or above this are an edge filter's (issue 18, M9: `control::cluster::filter`):
/// bits 20..26 hold the filter rule's index, so the data plane counts what each filter rule
/// matched (`CoreCounters::filter_hits`) without knowing the filters.
pub const FILTER_RULE_TAG: u32 = 0xF000_0000;
/// The most filter rules one SPD counts separately (the index field's 6 bits).
pub const MAX_FILTER_RULES: usize = 64;

/// The SPD rule id of the `n`th SPD rule compiled from filter rule `index` (None: out of range).
pub fn filter_rule_id(index: usize, n: u32) -> Option<u32> {
    let i = u32::try_from(index)
        .ok()
        .filter(|i| (*i as usize) < MAX_FILTER_RULES)?;
    (n < 1 << 20).then_some(FILTER_RULE_TAG | (i << 20) | n)
}

/// The filter rule an SPD rule id was compiled from, if it is a filter's.
#[inline]
pub fn filter_index(id: u32) -> Option<usize> {
    (id & FILTER_RULE_TAG == FILTER_RULE_TAG).then_some(((id >> 20) & 0x3f) as usize)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub selector: Selector,
    pub action: Action,
}

/// What a packet is classified by. For ICMP, `src_port` = type and `dst_port` = code; for
/// protocols without ports both are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

#[cfg(test)]
mod tests;
