//! The `cluster` section of a crypto node's or an edge's file.
//!
//! ```yaml
//! cluster:
//!   role: crypto-node            # or: edge
//!   node_id: 1                   # crypto node: its id in the top node_bits bits of every SPI
//!   node_bits: 4                 # crypto node (default 4): up to 16 crypto nodes
//!   listen: 10.0.0.1:7600        # crypto node: where edges connect
//!   edge_id: 0                   # edge: unique in the cluster
//!   crypto_node: 10.0.0.1:7600   # edge: the crypto node's address
//!   psk_file: /etc/roamgate/cluster.psk   # or psk: "<64 hex digits>" (32 bytes), the same on all
//!   queue: 1024                  # messages queued per channel before back-pressure
//! ```
//!
//! Owns: the schema and its validation ([`ClusterPlan`]); errors name the file, the key path
//! and the problem. Must never: print the key (`Debug` shows `<redacted>`).

use core::fmt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use super::msg::EdgeId;
use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    CryptoNode,
    Edge,
    /// An encryption node behind the edges (issue 18 item 7): an edge's process and file
    /// (`roamgate encryption-node`), holding the SAs the crypto node's filters place on it.
    EncryptionNode,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterYaml {
    pub role: Role,
    #[serde(default)]
    pub node_id: Option<u32>,
    #[serde(default = "default_node_bits")]
    pub node_bits: u8,
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub edge_id: Option<EdgeId>,
    #[serde(default)]
    pub crypto_node: Option<SocketAddr>,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub psk_file: Option<String>,
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Crypto node: the ids of the encryption nodes behind the edges.
    #[serde(default)]
    pub encryption_nodes: Vec<EdgeId>,
    /// Crypto node: the edge filters (`super::filter`).
    #[serde(default)]
    pub filters: Vec<super::filter::FilterYaml>,
    /// Crypto node: at a move, the old edge keeps the client's outbound SA and host binding
    /// (sending only below the new edge's start) until the LAN's traffic for the client
    /// reaches the new edge (default); false: it deletes them at the move.
    #[serde(default = "default_move_drain")]
    pub move_drain: bool,
    /// Crypto node: at a move, the new edge holds what it seals for the client in its first
    /// this many milliseconds and then sends it in order, so that the old edge's packets in
    /// flight reach the client before the new edge's higher numbers (0: no hold; at most
    /// [`MAX_MOVE_HOLD_MS`]).
    #[serde(default = "default_move_hold_ms")]
    pub move_hold_ms: u32,
    /// Crypto node: per edge, the edges its clients may move to next (`{0: [1], 1: [0, 2]}`):
    /// a client's inbound SA is copied, watched, only to these (an edge not listed: to every
    /// edge); a move to another edge takes the unknown-SPI path (its first packets dropped
    /// until the SA's carrier arrives).
    #[serde(default)]
    pub neighbours: BTreeMap<EdgeId, Vec<EdgeId>>,
}

/// The longest hold `cluster.move_hold_ms` may ask for: the LAN's traffic to a moved client
/// waits that long once.
pub const MAX_MOVE_HOLD_MS: u32 = 100;

fn default_move_drain() -> bool {
    true
}

fn default_move_hold_ms() -> u32 {
    DEFAULT_MOVE_HOLD_MS
}

/// `cluster.move_hold_ms` by default (`docs/architecture.md`, "Packets lost at a move").
pub const DEFAULT_MOVE_HOLD_MS: u32 = 5;

fn default_node_bits() -> u8 {
    4
}

fn default_queue() -> usize {
    1024
}

impl fmt::Debug for ClusterYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterYaml")
            .field("role", &self.role)
            .field("node_id", &self.node_id)
            .field("edge_id", &self.edge_id)
            .field("listen", &self.listen)
            .field("crypto_node", &self.crypto_node)
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("psk_file", &self.psk_file)
            .finish()
    }
}

/// What a crypto node runs with.
pub struct CryptoNodePlan {
    pub node_id: u32,
    pub node_bits: u8,
    pub listen: SocketAddr,
    pub psk: Zeroizing<[u8; 32]>,
    pub queue: usize,
    /// Edge filters and the encryption nodes they name.
    pub filters: super::filter::Filters,
    /// `cluster.move_drain`.
    pub move_drain: bool,
    /// `cluster.move_hold_ms`.
    pub move_hold_ms: u32,
    /// `cluster.neighbours` (empty: every edge is every edge's neighbour).
    pub neighbours: BTreeMap<EdgeId, BTreeSet<EdgeId>>,
}

/// What an edge runs with.
pub struct EdgePlan {
    /// An encryption node (role `encryption-node`): the same process as an edge.
    pub encryption_node: bool,
    pub edge_id: EdgeId,
    pub crypto_node: SocketAddr,
    pub psk: Zeroizing<[u8; 32]>,
    pub queue: usize,
}

pub enum ClusterPlan {
    CryptoNode(CryptoNodePlan),
    Edge(EdgePlan),
}

impl fmt::Debug for CryptoNodePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CryptoNodePlan(node {} of {} bits, listen {}, key <redacted>)",
            self.node_id, self.node_bits, self.listen
        )
    }
}

impl fmt::Debug for EdgePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EdgePlan({}, crypto node {}, key <redacted>)",
            self.edge_id, self.crypto_node
        )
    }
}

impl fmt::Debug for ClusterPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPlan::CryptoNode(p) => p.fmt(f),
            ClusterPlan::Edge(p) => p.fmt(f),
        }
    }
}

impl ClusterYaml {
    pub fn validate(&self, file: &Path, at: &str) -> Result<ClusterPlan, ConfigError> {
        let err = |k: &str, what: String| ConfigError::new(file, format!("{at}.{k}"), what);
        if !(1..=65536).contains(&self.queue) {
            return Err(err("queue", format!("{} is not in 1..=65536", self.queue)));
        }
        let psk =
            crate::config::read_key32(&self.psk, &self.psk_file, file, at, "the cluster key")?;
        let only = |k: &str, set: bool, role: &str| {
            if set {
                Err(err(k, format!("is for a {role}, not this role")))
            } else {
                Ok(())
            }
        };
        match self.role {
            Role::CryptoNode => {
                only("edge_id", self.edge_id.is_some(), "edge")?;
                only("crypto_node", self.crypto_node.is_some(), "edge")?;
                if !(1..=8).contains(&self.node_bits) {
                    return Err(err(
                        "node_bits",
                        format!("{} is not in 1..=8", self.node_bits),
                    ));
                }
                let node_id = self
                    .node_id
                    .ok_or_else(|| err("node_id", "a crypto node needs its id".into()))?;
                if u64::from(node_id) >= 1u64 << self.node_bits {
                    return Err(err(
                        "node_id",
                        format!("{node_id} does not fit in node_bits ({})", self.node_bits),
                    ));
                }
                let listen = self
                    .listen
                    .ok_or_else(|| err("listen", "where edges connect is missing".into()))?;
                if self.move_hold_ms > MAX_MOVE_HOLD_MS {
                    return Err(err(
                        "move_hold_ms",
                        format!(
                            "{} ms is longer than the {MAX_MOVE_HOLD_MS} ms a moved client's traffic may wait",
                            self.move_hold_ms
                        ),
                    ));
                }
                let mut neighbours = BTreeMap::new();
                for (edge, list) in &self.neighbours {
                    let mut set = BTreeSet::new();
                    for (i, n) in list.iter().enumerate() {
                        let key = format!("neighbours.{edge}[{i}]");
                        let bad = if n == edge {
                            Some("an edge is not its own neighbour".to_string())
                        } else if self.encryption_nodes.contains(n)
                            || self.encryption_nodes.contains(edge)
                        {
                            Some(format!(
                                "{n} or {edge} is an encryption node (it gets no copies of edges' clients)"
                            ))
                        } else if !set.insert(*n) {
                            Some(format!("{n} is listed twice"))
                        } else {
                            None
                        };
                        if let Some(b) = bad {
                            return Err(err(&key, b));
                        }
                    }
                    neighbours.insert(*edge, set);
                }
                Ok(ClusterPlan::CryptoNode(CryptoNodePlan {
                    node_id,
                    neighbours,
                    node_bits: self.node_bits,
                    listen,
                    psk,
                    queue: self.queue,
                    move_drain: self.move_drain,
                    move_hold_ms: self.move_hold_ms,
                    filters: super::filter::Filters::validate(
                        file,
                        at,
                        &self.encryption_nodes,
                        &self.filters,
                    )?,
                }))
            }
            Role::Edge | Role::EncryptionNode => {
                only(
                    "encryption_nodes",
                    !self.encryption_nodes.is_empty(),
                    "crypto node",
                )?;
                only("filters", !self.filters.is_empty(), "crypto node")?;
                only("neighbours", !self.neighbours.is_empty(), "crypto node")?;
                only("node_id", self.node_id.is_some(), "crypto node")?;
                only("listen", self.listen.is_some(), "crypto node")?;
                let edge_id = self
                    .edge_id
                    .ok_or_else(|| err("edge_id", "an edge needs its id".into()))?;
                let crypto_node = self.crypto_node.ok_or_else(|| {
                    err("crypto_node", "the crypto node's address is missing".into())
                })?;
                Ok(ClusterPlan::Edge(EdgePlan {
                    encryption_node: self.role == Role::EncryptionNode,
                    edge_id,
                    crypto_node,
                    psk,
                    queue: self.queue,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn check(text: &str) -> Result<ClusterPlan, ConfigError> {
        let p = Path::new("c.yaml");
        crate::config::parse::<ClusterYaml>(p, text)?.validate(p, "cluster")
    }

    #[test]
    fn neighbours_are_for_a_crypto_node_and_errors_name_the_entry() {
        let node = format!(
            "role: crypto-node\nnode_id: 3\nlisten: 127.0.0.1:7600\npsk: \"{KEY}\"\nencryption_nodes: [9]\n"
        );
        let with = |n: &str| format!("{node}neighbours: {n}\n");
        assert!(matches!(
            check(&with("{0: [1], 1: [0, 2]}")).unwrap(),
            ClusterPlan::CryptoNode(p) if p.neighbours.get(&1) == Some(&BTreeSet::from([0, 2]))
        ));
        let key = |t: String| check(&t).unwrap_err().key;
        assert_eq!(key(with("{0: [1], 1: [1]}")), "cluster.neighbours.1[0]");
        assert_eq!(key(with("{0: [1, 2, 1]}")), "cluster.neighbours.0[2]");
        assert_eq!(key(with("{0: [9]}")), "cluster.neighbours.0[0]");
        assert!(check(&with("{0: [x]}")).is_err());
        let edge = format!(
            "role: edge\nedge_id: 2\ncrypto_node: 127.0.0.1:7600\npsk: \"{KEY}\"\nneighbours: {{2: [1]}}\n"
        );
        assert_eq!(key(edge), "cluster.neighbours");
    }

    #[test]
    fn both_roles_validate_and_errors_name_the_key_never_the_psk() {
        let node =
            format!("role: crypto-node\nnode_id: 3\nlisten: 127.0.0.1:7600\npsk: \"{KEY}\"\n");
        assert!(
            matches!(check(&node).unwrap(), ClusterPlan::CryptoNode(p) if p.node_id == 3 && p.node_bits == 4)
        );
        let edge = format!("role: edge\nedge_id: 2\ncrypto_node: 127.0.0.1:7600\npsk: \"{KEY}\"\n");
        assert!(matches!(check(&edge).unwrap(), ClusterPlan::Edge(p) if p.edge_id == 2));
        let key = |t: String| check(&t).unwrap_err().key;
        assert_eq!(
            key(node.replace("node_id: 3", "node_id: 16")),
            "cluster.node_id"
        );
        assert_eq!(
            key(node.replace("listen: 127.0.0.1:7600\n", "")),
            "cluster.listen"
        );
        assert_eq!(key(format!("{node}edge_id: 1\n")), "cluster.edge_id");
        assert_eq!(key(edge.replace("edge_id: 2\n", "")), "cluster.edge_id");
        assert_eq!(
            key(edge.replace("crypto_node: 127.0.0.1:7600\n", "")),
            "cluster.crypto_node"
        );
        let short = edge.replace(KEY, "0011");
        let e = check(&short).unwrap_err();
        assert_eq!(e.key, "cluster.psk");
        assert!(!e.to_string().contains("0011"), "{e}");
        let dbg = format!(
            "{:?}",
            crate::config::parse::<ClusterYaml>(Path::new("c"), &edge).unwrap()
        );
        assert!(!dbg.contains(KEY) && dbg.contains("redacted"), "{dbg}");
        assert_eq!(key(edge.replace("role: edge", "role: router")), "role");
        let enc = edge.replace("role: edge", "role: encryption-node");
        assert!(
            matches!(check(&enc).unwrap(), ClusterPlan::Edge(p) if p.encryption_node && p.edge_id == 2)
        );
        assert_eq!(
            key(format!(
                "{enc}filters: [{{ name: x, users: [a], action: drop }}]\n"
            )),
            "cluster.filters"
        );
        let with_filters = format!(
            "{node}encryption_nodes: [9]\nfilters: [{{ name: x, users: [a], action: encrypt, via: 8 }}]\n"
        );
        assert_eq!(key(with_filters.clone()), "cluster.filters[0].via");
        assert!(matches!(
            check(&with_filters.replace("via: 8", "via: 9")).unwrap(),
            ClusterPlan::CryptoNode(p) if p.filters.rules.len() == 1
        ));
    }
}
