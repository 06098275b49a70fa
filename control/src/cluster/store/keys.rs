//! The key layout of one cluster (see the table in the module doc of `store`).
//!
//! [`Layout::key`] and [`Layout::parse`] are inverses; parsing is strict (a key that is not
//! exactly one of the forms, with canonical hex, is `None`, counted by the caller and
//! ignored).

use std::fmt;

/// A name (`cluster`, `edge`, `node`): 1..=63 characters from `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(s: &str) -> Result<Name, BadName> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(BadName(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name that is not 1..=63 characters of `[a-z0-9_-]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a name (1 to 63 characters of a-z, 0-9, '-', '_')")]
pub struct BadName(pub String);

/// Which record a key names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    /// `ike/<id:016x>`
    Ike(u64),
    /// `child/<spi:08x>`: both directions of the CHILD SA whose inbound SPI is `spi`.
    Child(u32),
    /// `placement/<spi:08x>`: the edges that hold the CHILD SA.
    Placement(u32),
    /// `seq/<spi:08x>`
    Seq(u32),
    /// `edges/<edge>` (leased)
    Edge(Name),
    /// `spi-blocks/<node>`
    SpiBlock(Name),
}

/// The keys of one cluster: everything under `/roamgate/<cluster>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

impl Layout {
    pub fn new(cluster: &Name) -> Layout {
        Layout {
            root: format!("/roamgate/{cluster}/"),
        }
    }

    /// The prefix of every key of this cluster.
    pub fn root(&self) -> &[u8] {
        self.root.as_bytes()
    }

    /// The prefix of one kind of record: `"ike/"`, `"child/"`, `"placement/"`, `"seq/"`,
    /// `"edges/"`, `"spi-blocks/"`.
    pub fn prefix(&self, kind: &str) -> Vec<u8> {
        format!("{}{kind}", self.root).into_bytes()
    }

    pub fn key(&self, k: &RecordKey) -> Vec<u8> {
        let r = &self.root;
        match k {
            RecordKey::Ike(id) => format!("{r}ike/{id:016x}"),
            RecordKey::Child(spi) => format!("{r}child/{spi:08x}"),
            RecordKey::Placement(spi) => format!("{r}placement/{spi:08x}"),
            RecordKey::Seq(spi) => format!("{r}seq/{spi:08x}"),
            RecordKey::Edge(edge) => format!("{r}edges/{edge}"),
            RecordKey::SpiBlock(node) => format!("{r}spi-blocks/{node}"),
        }
        .into_bytes()
    }

    /// The record a key of this cluster names, or `None`.
    pub fn parse(&self, key: &[u8]) -> Option<RecordKey> {
        let rest = std::str::from_utf8(key.strip_prefix(self.root.as_bytes())?).ok()?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["ike", id] => Some(RecordKey::Ike(hex64(id)?)),
            ["child", spi] => Some(RecordKey::Child(hex32(spi)?)),
            ["placement", spi] => Some(RecordKey::Placement(hex32(spi)?)),
            ["seq", spi] => Some(RecordKey::Seq(hex32(spi)?)),
            ["edges", edge] => Some(RecordKey::Edge(Name::new(edge).ok()?)),
            ["spi-blocks", node] => Some(RecordKey::SpiBlock(Name::new(node).ok()?)),
            _ => None,
        }
    }
}

fn canonical_hex(s: &str, width: usize) -> bool {
    s.len() == width
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex64(s: &str) -> Option<u64> {
    canonical_hex(s, 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn hex32(s: &str) -> Option<u32> {
    canonical_hex(s, 8)
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_parsing_is_strict() {
        let l = Layout::new(&Name::new("prod-1").unwrap());
        let edge = Name::new("edge-a").unwrap();
        let all = [
            RecordKey::Ike(0x0123_4567_89ab_cdef),
            RecordKey::Child(0xc000_0001),
            RecordKey::Child(7),
            RecordKey::Placement(7),
            RecordKey::Seq(7),
            RecordKey::Edge(edge),
            RecordKey::SpiBlock(Name::new("crypto-1").unwrap()),
        ];
        for k in &all {
            let bytes = l.key(k);
            assert!(bytes.starts_with(b"/roamgate/prod-1/"));
            assert_eq!(
                l.parse(&bytes).as_ref(),
                Some(k),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert_eq!(
            l.key(&RecordKey::Child(0xc000_0001)),
            b"/roamgate/prod-1/child/c0000001"
        );
        for bad in [
            "/roamgate/prod-1/ike/0123456789ABCDEF",
            "/roamgate/prod-1/ike/123",
            "/roamgate/prod-1/child/00000007/in",
            "/roamgate/prod-1/child/0000007",
            "/roamgate/prod-1/placement/00000007/edge-1",
            "/roamgate/prod-1/edges/Edge",
            "/roamgate/prod-1/edges/a/b",
            "/roamgate/prod-2/seq/00000007",
            "/roamgate/prod-1/seq/+0000007",
        ] {
            assert_eq!(l.parse(bad.as_bytes()), None, "{bad}");
        }
        assert!(Name::new("").is_err() && Name::new(&"a".repeat(64)).is_err());
        assert!(Name::new("a/b").is_err() && Name::new("..").is_err());
    }
}
