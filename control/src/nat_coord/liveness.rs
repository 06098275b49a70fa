//! Heartbeats between masquerading nodes, sans-IO: a dead HAM is noticed in a few hundred
//! milliseconds instead of at the end of its etcd lease (issue 21: established connections
//! stall at most 1 s when their HAM dies).
//!
//! Each node that has `masq.liveness` sends a small datagram to every other live node that
//! published a heartbeat address (`NodeRec::alive`) every `interval_ms`. A node judges only
//! the peers it has heard under their current lease: one whose heartbeats never arrive (a
//! firewall, an older node) is left to its lease. When a heard peer is silent for
//! `dead_after_ms`, the node that would take over its blocks (its successor in name order)
//! revokes the peer's lease; etcd deletes `nodes/<peer>` and the take-over of
//! [`super::node`] runs as for an expired lease (one winner per block: compare-on-revision).
//!
//! # Why the heartbeats are not authenticated
//!
//! They carry no secret and decide nothing by their presence: a forged heartbeat can only keep
//! a dead node "alive" until its lease runs out (today's behaviour without heartbeats); their
//! absence, which an attacker on the path can cause by dropping them, is what acts, and such
//! an attacker can equally cut the node off etcd. A node whose lease was revoked while it was
//! alive (a false suspicion: a partition, a stalled process) notices (its `nodes/` key goes,
//! its keep-alive is refused), withdraws its addresses at once and registers again under a new
//! lease, competing for its old blocks by compare-on-revision: never two nodes serving one
//! block.
//!
//! Wire format (big-endian): `"RGALIVE1"`, cluster name length (u8) and bytes, node name
//! length (u8) and bytes, the sender's lease (i64). Anything else is counted and dropped.

use std::collections::BTreeMap;

const MAGIC: &[u8; 8] = b"RGALIVE1";

/// One heartbeat as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub cluster: String,
    pub node: String,
    pub lease: i64,
}

impl Heartbeat {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 2 + self.cluster.len() + self.node.len() + 8);
        v.extend_from_slice(MAGIC);
        for s in [&self.cluster, &self.node] {
            // Names are at most 63 bytes (`keys::Name`).
            let b = s.as_bytes();
            let n = b.len().min(255);
            v.push(n as u8);
            v.extend_from_slice(b.get(..n).unwrap_or_default());
        }
        v.extend_from_slice(&self.lease.to_be_bytes());
        v
    }

    /// `None` for anything that is not exactly one heartbeat.
    pub fn decode(b: &[u8]) -> Option<Heartbeat> {
        let rest = b.strip_prefix(MAGIC.as_slice())?;
        let (cluster, rest) = take_str(rest)?;
        let (node, rest) = take_str(rest)?;
        let lease: [u8; 8] = rest.try_into().ok()?;
        Some(Heartbeat {
            cluster,
            node,
            lease: i64::from_be_bytes(lease),
        })
    }
}

fn take_str(b: &[u8]) -> Option<(String, &[u8])> {
    let (&n, rest) = b.split_first()?;
    let n = usize::from(n);
    let s = rest.get(..n)?;
    let s = std::str::from_utf8(s).ok()?.to_string();
    Some((s, rest.get(n..)?))
}

#[derive(Clone, Debug)]
struct Peer {
    lease: i64,
    addr: String,
    heard_ms: Option<u64>,
    /// Its lease was revoked by this node (not judged again under that lease).
    revoked: bool,
}

/// What a node knows of its peers' heartbeats.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    peers: BTreeMap<String, Peer>,
}

impl Liveness {
    /// A peer's record as read: its lease and heartbeat address (`None`: it sends none). A new
    /// lease starts its judgement again (it must be heard under it first).
    pub fn peer(&mut self, node: &str, lease: i64, addr: Option<&str>) {
        let Some(addr) = addr else {
            self.peers.remove(node);
            return;
        };
        match self.peers.get_mut(node) {
            Some(p) if p.lease == lease => p.addr = addr.to_string(),
            _ => {
                self.peers.insert(
                    node.to_string(),
                    Peer {
                        lease,
                        addr: addr.to_string(),
                        heard_ms: None,
                        revoked: false,
                    },
                );
            }
        }
    }

    /// The peer's record went.
    pub fn gone(&mut self, node: &str) {
        self.peers.remove(node);
    }

    /// A heartbeat from `node` under `lease`: false (not counted as heard) for a node or a
    /// lease this node does not know (a stale heartbeat from before a new registration).
    pub fn heard(&mut self, node: &str, lease: i64, now_ms: u64) -> bool {
        match self.peers.get_mut(node) {
            Some(p) if p.lease == lease => {
                p.heard_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }

    /// Peers heard under their current lease, silent for `dead_after_ms` or more, not yet
    /// revoked: (name, lease).
    pub fn silent(&self, now_ms: u64, dead_after_ms: u64) -> Vec<(String, i64)> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                !p.revoked
                    && p.heard_ms
                        .is_some_and(|h| now_ms.saturating_sub(h) >= dead_after_ms)
            })
            .map(|(n, p)| (n.clone(), p.lease))
            .collect()
    }

    pub fn mark_revoked(&mut self, node: &str) {
        if let Some(p) = self.peers.get_mut(node) {
            p.revoked = true;
        }
    }

    /// Where heartbeats go: (peer, address).
    pub fn targets(&self) -> impl Iterator<Item = (&str, &str)> {
        self.peers
            .iter()
            .map(|(n, p)| (n.as_str(), p.addr.as_str()))
    }

    /// When the peer was last heard (under its current lease).
    pub fn heard_ms(&self, node: &str) -> Option<u64> {
        self.peers.get(node).and_then(|p| p.heard_ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_round_trip_and_anything_else_is_refused() {
        let h = Heartbeat {
            cluster: "lab".into(),
            node: "edge-a".into(),
            lease: 0x1234_5678_9abc,
        };
        let b = h.encode();
        assert_eq!(Heartbeat::decode(&b), Some(h));
        for cut in 0..b.len() {
            assert_eq!(Heartbeat::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Heartbeat::decode(&long), None);
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert_eq!(Heartbeat::decode(&bad), None);
        let mut bad_utf8 = b;
        bad_utf8[10] = 0xff;
        assert_eq!(Heartbeat::decode(&bad_utf8), None);
    }

    #[test]
    fn only_peers_heard_under_their_lease_are_judged() {
        let mut l = Liveness::default();
        l.peer("a", 7, Some("192.0.2.1:7700"));
        l.peer("b", 8, None);
        // Never heard: not judged, however long.
        assert!(l.silent(100_000, 300).is_empty());
        // A heartbeat of another lease does not count.
        assert!(!l.heard("a", 6, 1_000));
        assert!(!l.heard("b", 8, 1_000));
        assert!(l.heard("a", 7, 1_000));
        assert!(l.silent(1_299, 300).is_empty());
        assert_eq!(l.silent(1_300, 300), vec![("a".to_string(), 7)]);
        l.mark_revoked("a");
        assert!(l.silent(5_000, 300).is_empty());
        // Registered again: judged again once heard under the new lease.
        l.peer("a", 9, Some("192.0.2.1:7700"));
        assert!(l.silent(5_000, 300).is_empty());
        assert!(l.heard("a", 9, 5_000));
        assert_eq!(l.silent(5_400, 300), vec![("a".to_string(), 9)]);
        // The same lease read again (a record rewritten) keeps what was heard.
        l.peer("a", 9, Some("192.0.2.2:7700"));
        assert_eq!(l.heard_ms("a"), Some(5_000));
        assert_eq!(
            l.targets().collect::<Vec<_>>(),
            vec![("a", "192.0.2.2:7700")]
        );
        l.gone("a");
        assert!(l.silent(9_000, 300).is_empty());
    }
}
