//! The routing coordinator's key layout and records (issue 21), in the cluster store.
//!
//! Every key lives under `/roamgate/<cluster>/masq/` (numbers fixed-width lowercase hex, so
//! keys sort by number and a block's connections share one prefix):
//!
//! | key | record | written by |
//! |---|---|---|
//! | `nodes/<node>` | [`NodeRec`]: a live masquerading node, **under its lease** | each node |
//! | `blocks/<addr:08x>/<hi:02x>` | [`BlockRec`]: ports `hi*256 ..= hi*256+255` of `addr` belong to `owner` (the HAM) | the claiming node (create-if-absent), a successor (compare-on-revision) |
//! | `conn/<addr:08x>/<hi:02x>/<port:04x>-<tcp\|udp>` | [`ConnRec`]: one connection: flow, user, current FAM, released or not | the HAM creates it (create-if-absent); a FAM registers and expires (compare-on-revision); the HAM deletes it after the reuse delay |
//! | `flow/<client:08x>/<tcp\|udp>/<cport:04x>/<server:08x>/<sport:04x>` | [`FlowRec`]: the flow's masquerading address and port | created with the connection, deleted when it is released |
//!
//! The connection's key *is* its masquerading (address, port, protocol): two connections can
//! never hold the same one at the same time whatever the nodes believe, because the HAM
//! creates the key only if it is absent. A released connection keeps its key (with
//! `released_ms`) for the reuse delay: the port is free only when the key is gone. The HAM of
//! a connection is the owner of its block (a HAM migration rewrites block records, not
//! connections). `flow/<client>/` lists a client's connections in one read (what a node
//! reads when the client shows up).
//!
//! Values: JSON (serde, unknown fields refused, `v` must be [`RECORD_VERSION`]), sealed by
//! the cluster's [`Sealer`](crate::cluster::store::Sealer) with the key path as associated
//! data like every other value of the store. None holds a key.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

use crate::cluster::store::keys::Name;

/// The version every record carries in `v`. 2: `NodeRec::incarnation` (the inter-node link
/// SAs' keys); no node ever ran version 1 outside tests.
pub const RECORD_VERSION: u8 = 2;

/// Ports per block (a block is the ports sharing the high byte).
pub const BLOCK_PORTS: u32 = 256;

/// TCP or UDP: each has its own port space at every masquerading address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// A connection as the client sees it: its (virtual) address and port, the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Flow {
    pub proto: Proto,
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
}

/// A masquerading address and port (of one protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MasqAddr {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl MasqAddr {
    pub fn block(&self) -> BlockId {
        BlockId {
            addr: self.addr,
            hi: (self.port >> 8) as u8,
        }
    }
}

/// A block of 256 ports of one address (both protocols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId {
    pub addr: Ipv4Addr,
    pub hi: u8,
}

impl BlockId {
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        let lo = u16::from(self.hi) << 8;
        lo..=(lo | 0xff)
    }
}

/// `nodes/<node>`: a live node (leased).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRec {
    pub v: u8,
    /// Where the other nodes reach its inter-node link.
    pub link: String,
    pub started_ms: u64,
    /// A random value drawn at each start of the node's process (and again when its data
    /// plane restarts empty): the keys and SPIs of the link SAs it sends on are derived from
    /// it (`super::link`), so a restarted sender never reuses a (key, nonce).
    pub incarnation: u64,
    /// Where it hears heartbeats (`super::liveness`); absent: it sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive: Option<String>,
}

/// `blocks/<addr>/<hi>`: who allocates from the block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRec {
    pub v: u8,
    pub owner: String,
    /// Raised by each takeover.
    pub epoch: u64,
}

/// `conn/<addr>/<hi>/<port>-<proto>`: one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnRec {
    pub v: u8,
    pub flow: Flow,
    /// The identity the client authenticated with.
    pub user: String,
    /// The node the client talks through now (None: nowhere).
    pub fam: Option<String>,
    /// Raised by every FAM registration.
    pub fam_epoch: u64,
    pub created_ms: u64,
    /// Set when the connection ended: the port is quarantined until `released_ms` + the reuse
    /// delay, then the HAM deletes the key.
    pub released_ms: Option<u64>,
}

/// `flow/...`: the flow's masquerading address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRec {
    pub v: u8,
    pub masq: MasqAddr,
}

/// Which record a key names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MasqKey {
    Node(Name),
    Block(BlockId),
    Conn(MasqAddr),
    Flow(Flow),
}

/// The keys of one cluster's coordinator: everything under `/roamgate/<cluster>/masq/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqLayout {
    root: String,
}

impl MasqLayout {
    pub fn new(cluster: &Name) -> MasqLayout {
        MasqLayout {
            root: format!("/roamgate/{cluster}/masq/"),
        }
    }

    pub fn root(&self) -> &[u8] {
        self.root.as_bytes()
    }

    /// `"nodes/"`, `"blocks/"`, `"conn/"`, `"flow/"`.
    pub fn prefix(&self, kind: &str) -> Vec<u8> {
        format!("{}{kind}", self.root).into_bytes()
    }

    /// The connections of one block.
    pub fn block_conns(&self, b: BlockId) -> Vec<u8> {
        format!("{}conn/{:08x}/{:02x}/", self.root, u32::from(b.addr), b.hi).into_bytes()
    }

    /// The flows of one client address.
    pub fn client_flows(&self, client: Ipv4Addr) -> Vec<u8> {
        format!("{}flow/{:08x}/", self.root, u32::from(client)).into_bytes()
    }

    pub fn key(&self, k: &MasqKey) -> Vec<u8> {
        let r = &self.root;
        match k {
            MasqKey::Node(n) => format!("{r}nodes/{n}"),
            MasqKey::Block(b) => format!("{r}blocks/{:08x}/{:02x}", u32::from(b.addr), b.hi),
            MasqKey::Conn(m) => format!(
                "{r}conn/{:08x}/{:02x}/{:04x}-{}",
                u32::from(m.addr),
                m.port >> 8,
                m.port,
                m.proto.as_str()
            ),
            MasqKey::Flow(f) => format!(
                "{r}flow/{:08x}/{}/{:04x}/{:08x}/{:04x}",
                u32::from(*f.client.ip()),
                f.proto.as_str(),
                f.client.port(),
                u32::from(*f.server.ip()),
                f.server.port()
            ),
        }
        .into_bytes()
    }

    /// The record a key names, or `None` (strict: canonical hex only, a conn key's block
    /// matches its port).
    pub fn parse(&self, key: &[u8]) -> Option<MasqKey> {
        let rest = std::str::from_utf8(key.strip_prefix(self.root.as_bytes())?).ok()?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["nodes", n] => Some(MasqKey::Node(Name::new(n).ok()?)),
            ["blocks", a, hi] => Some(MasqKey::Block(BlockId {
                addr: Ipv4Addr::from(hex(a, 8)? as u32),
                hi: hex(hi, 2)? as u8,
            })),
            ["conn", a, hi, last] => {
                let (port, proto) = last.split_once('-')?;
                let m = MasqAddr {
                    proto: Proto::parse(proto)?,
                    addr: Ipv4Addr::from(hex(a, 8)? as u32),
                    port: hex(port, 4)? as u16,
                };
                (u64::from(m.port >> 8) == hex(hi, 2)?).then_some(MasqKey::Conn(m))
            }
            ["flow", c, proto, cp, s, sp] => Some(MasqKey::Flow(Flow {
                proto: Proto::parse(proto)?,
                client: SocketAddrV4::new(Ipv4Addr::from(hex(c, 8)? as u32), hex(cp, 4)? as u16),
                server: SocketAddrV4::new(Ipv4Addr::from(hex(s, 8)? as u32), hex(sp, 4)? as u16),
            })),
            _ => None,
        }
    }
}

fn hex(s: &str, width: usize) -> Option<u64> {
    let canonical = s.len() == width
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    canonical.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

/// Encodes a record (JSON).
pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(rec).unwrap_or_default()
}

/// Decodes a record; `None` for anything that is not exactly one of version
/// [`RECORD_VERSION`].
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(bytes: &[u8]) -> Option<T> {
    let r: T = serde_json::from_slice(bytes).ok()?;
    (r.version() == RECORD_VERSION).then_some(r)
}

/// A record with a version field.
pub trait Versioned {
    fn version(&self) -> u8;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u8 { self.v } })*};
}
versioned!(NodeRec, BlockRec, ConnRec, FlowRec);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_parsing_is_strict() {
        let l = MasqLayout::new(&Name::new("c1").unwrap());
        let m = MasqAddr {
            proto: Proto::Udp,
            addr: Ipv4Addr::new(198, 51, 100, 7),
            port: 0x1234,
        };
        let f = Flow {
            proto: Proto::Tcp,
            client: "10.9.0.2:40000".parse().unwrap(),
            server: "192.0.2.80:443".parse().unwrap(),
        };
        let all = [
            MasqKey::Node(Name::new("node-a").unwrap()),
            MasqKey::Block(m.block()),
            MasqKey::Conn(m),
            MasqKey::Flow(f),
        ];
        for k in &all {
            let bytes = l.key(k);
            assert_eq!(l.parse(&bytes).as_ref(), Some(k));
        }
        assert_eq!(
            l.key(&MasqKey::Conn(m)),
            b"/roamgate/c1/masq/conn/c6336407/12/1234-udp"
        );
        assert!(l
            .key(&MasqKey::Conn(m))
            .starts_with(&l.block_conns(m.block())));
        assert!(l
            .key(&MasqKey::Flow(f))
            .starts_with(&l.client_flows(*f.client.ip())));
        for bad in [
            "/roamgate/c1/masq/conn/c6336407/13/1234-udp",
            "/roamgate/c1/masq/conn/c6336407/12/1234-sctp",
            "/roamgate/c1/masq/conn/C6336407/12/1234-udp",
            "/roamgate/c1/masq/blocks/c6336407/123",
            "/roamgate/c2/masq/nodes/a",
            "/roamgate/c1/masq/nodes/A",
        ] {
            assert_eq!(l.parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn records_round_trip_and_other_versions_are_refused() {
        let r = ConnRec {
            v: RECORD_VERSION,
            flow: Flow {
                proto: Proto::Udp,
                client: "10.9.0.2:5000".parse().unwrap(),
                server: "192.0.2.80:53".parse().unwrap(),
            },
            user: "alice@example.org".into(),
            fam: Some("b".into()),
            fam_epoch: 3,
            created_ms: 10,
            released_ms: None,
        };
        let bytes = encode(&r);
        assert_eq!(decode::<ConnRec>(&bytes), Some(r.clone()));
        for v in [RECORD_VERSION - 1, RECORD_VERSION + 1] {
            let mut other = r.clone();
            other.v = v;
            assert_eq!(decode::<ConnRec>(&encode(&other)), None);
        }
        assert_eq!(decode::<ConnRec>(b"{\"v\":1}"), None);
        assert_eq!(decode::<BlockRec>(&bytes), None);
        assert_eq!(decode::<FlowRec>(&[0xff, 0x00]), None);
    }
}
