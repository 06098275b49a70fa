//! The inter-node link SAs: the ESP between two masquerading nodes that carries a HAM's
//! inbound packets to the current FAM (`pipeline::masq::forward`), keyed from the cluster key.
//!
//! # Keys and SPIs
//!
//! For each ordered pair (sender `s`, receiver `r`) there is one SA, sealed by `s` and
//! opened by `r`. Its AES-256-GCM key, its 4-byte GCM salt and its SPI are
//!
//! ```text
//! HKDF-SHA256(ikm = cluster key, salt = "roamgate masq link",
//!             info = "roamgate masq link v1" | len(s) | s | incarnation(s) (u64 BE) | len(r) | r)
//! ```
//!
//! (36 bytes of key and salt, then 4 bytes whose low 20 bits pick the SPI in
//! [`LINK_SPI_PREFIX`]`..`). The sender's incarnation is a random u64 it draws at each start of
//! its process and again whenever its data plane restarts empty, and publishes in its
//! `nodes/<node>` record ([`NodeRec::incarnation`](super::records::NodeRec)); the receiver
//! derives the same keys when it reads that record. The names are length-prefixed, so no two
//! (sender, incarnation, receiver) triples give the same `info`.
//!
//! # Why no (key, nonce) pair repeats
//!
//! The ESP GCM nonce is the SA's salt and its 64-bit sequence number (RFC 4106), and an
//! outbound SA sends each sequence number once, from 1 upwards, for as long as it is
//! installed. So a (key, nonce) pair can only repeat if the same key is installed as an
//! outbound SA twice, with the sequence numbers starting again. That does not happen:
//!
//! 1. Only the sender ever installs the outbound SA of (s, r), and it installs it at most once
//!    per incarnation ([`Links`] keeps what it installed; a receiver that restarts, or whose
//!    link address changes, is rebound, never installed again).
//! 2. A new incarnation is drawn when the process starts and when the data plane restarts
//!    empty (the two ways an installed SA's sequence numbers are lost), so the key changes
//!    with it: two incarnations collide with probability 2^-64 per pair of starts.
//! 3. Two senders, or two receivers, give different `info` and so independent keys; the
//!    sender and the receiver of one direction derive the same one.
//!
//! What the receiver's anti-replay window does not cover: a receiver whose data plane
//! restarts starts with an empty window for a sender whose incarnation did not change, so a
//! packet of that SA captured before could be replayed once to it (a duplicate of an inbound
//! packet of a connection; TCP and UDP applications see duplicates anyway).
//!
//! # SPIs and SA ids
//!
//! Link SPIs lie in `0xfff0_0000..=0xffff_ffff`, inside the reserved range no CHILD_SA is ever
//! allocated in (`ike::services::spi::is_reserved_spi`; its direct-path part is installed on
//! clients, never on a node). Two senders whose SPIs at one receiver collide (2^-20 per pair)
//! cannot both be installed there: the second is refused and counted (`spi_collisions`) until
//! one of them restarts. Outbound link SAs use the SA ids [`LINK_SA_ID_BASE`]` + link index`,
//! below the dynamic ids the crypto node hands out (`1 << 20`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proto::policy::Prefix;
use proto::sa::{AeadAlg, Checkpoint, Lifetime, Resume, SaKeys, SaParams};
use proto::{Direction, SaId, Spi, Update};

use crate::cluster::store::{seal::SealError, Sealer};

/// Link SPIs: `LINK_SPI_PREFIX | 20 derived bits`.
pub const LINK_SPI_PREFIX: u32 = 0xfff0_0000;
pub const LINK_SPI_MASK: u32 = 0xfff0_0000;
/// Outbound link SA ids: this plus the link index (below `1 << 20`, the first dynamic id).
pub const LINK_SA_ID_BASE: u32 = 0x000f_f000;
/// Links (other nodes) at most.
pub const MAX_LINKS: u16 = 4096;
const SALT: &[u8] = b"roamgate masq link";
const LABEL: &[u8] = b"roamgate masq link v1";
/// The replay window of inbound link SAs.
pub const LINK_REPLAY_WINDOW: u32 = 1024;

/// Whether `spi` is a link SPI.
pub fn is_link_spi(spi: u32) -> bool {
    spi & LINK_SPI_MASK == LINK_SPI_PREFIX
}

/// The key, salt and SPI of the link SA from `sender` (at `incarnation`) to `receiver`.
pub struct LinkKeys {
    pub spi: Spi,
    pub keys: SaKeys,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkKeys({:?}, key hidden)", self.spi)
    }
}

/// Derives the link SA of (sender, incarnation, receiver) (see the module doc).
pub fn link_keys(
    sealer: &Sealer,
    sender: &str,
    incarnation: u64,
    receiver: &str,
) -> Result<LinkKeys, SealError> {
    let mut okm = zeroize::Zeroizing::new([0u8; 40]);
    let sl = (sender.len() as u32).to_be_bytes();
    let rl = (receiver.len() as u32).to_be_bytes();
    let inc = incarnation.to_be_bytes();
    sealer.derive(
        SALT,
        &[
            LABEL,
            &sl,
            sender.as_bytes(),
            &inc,
            &rl,
            receiver.as_bytes(),
        ],
        &mut okm[..],
    )?;
    let keys = SaKeys::from_keymat(AeadAlg::AesGcm256, okm.get(..36).unwrap_or(&[]))
        .map_err(|_| SealError::Refused)?;
    let tail: [u8; 4] = okm
        .get(36..40)
        .and_then(|t| t.try_into().ok())
        .ok_or(SealError::Refused)?;
    let spi = LINK_SPI_PREFIX | (u32::from_be_bytes(tail) & !LINK_SPI_MASK);
    Ok(LinkKeys {
        spi: Spi(spi),
        keys,
    })
}

/// The SA of one direction of a link: tunnel mode between the two link addresses, any inner
/// traffic (the worker checks what it forwards against its masquerade tables). No sequence
/// checkpoints (nobody keeps them: a link SA is never moved, a new incarnation replaces it).
pub fn link_sa(
    dir: Direction,
    id: SaId,
    k: LinkKeys,
    local: Ipv4Addr,
    remote: Ipv4Addr,
) -> SaParams {
    let any = Prefix::masked(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    SaParams {
        id,
        spi: k.spi,
        keys: k.keys,
        esn: true,
        replay_window: LINK_REPLAY_WINDOW,
        local: IpAddr::V4(local),
        remote: IpAddr::V4(remote),
        encap: None,
        local_ts: any,
        remote_ts: any,
        outer_ttl: 64,
        lifetime: Lifetime::default(),
        resume: Resume::default(),
        checkpoint: match dir {
            Direction::Outbound => Some(Checkpoint::OFF),
            Direction::Inbound => None,
        },
    }
}

/// What the link layer asks of the data plane (few, short-lived: not boxed).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LinkCmd {
    /// An ordinary update (AddSa, DeleteInbound, RebindOutbound).
    Update(Update),
    /// Forwards to node `node` are sealed on outbound SA `out_sa` (`Update::MasqLink`).
    Out { node: u16, out_sa: SaId },
    /// ESP on this SPI is a link's (`Update::MasqLinkIn`).
    In { spi: Spi },
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub out_installed: u64,
    pub in_installed: u64,
    pub rebound: u64,
    pub spi_collisions: u64,
    pub bad_peers: u64,
    pub too_many: u64,
}

struct Peer {
    index: u16,
    link: Option<Ipv4Addr>,
    /// The incarnation of ours the outbound SA was derived from (installed at most once per
    /// incarnation).
    out_for: Option<u64>,
    /// The peer's incarnation and the SPI installed for it.
    inbound: Option<(u64, Spi)>,
}

/// The link SAs of one node, sans-IO: fed the coordinator's `Output::Peer`s, it says which
/// SAs to add, rebind and delete.
pub struct Links {
    me: String,
    link: Ipv4Addr,
    incarnation: u64,
    peers: BTreeMap<String, Peer>,
    out: Vec<LinkCmd>,
    pub stats: LinkStats,
}

impl Links {
    pub fn new(me: &str, link: Ipv4Addr, incarnation: u64) -> Links {
        Links {
            me: me.to_string(),
            link,
            incarnation,
            peers: BTreeMap::new(),
            out: Vec::new(),
            stats: LinkStats::default(),
        }
    }

    /// The link index of `node` (assigned at first sight, kept for the process's life).
    pub fn index(&self, node: &str) -> Option<u16> {
        self.peers.get(node).map(|p| p.index)
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// What to send to the data plane now.
    pub fn take(&mut self) -> Vec<LinkCmd> {
        std::mem::take(&mut self.out)
    }

    /// The link index for `node`, assigning one.
    pub fn index_or_assign(&mut self, node: &str) -> Option<u16> {
        if let Some(p) = self.peers.get(node) {
            return Some(p.index);
        }
        let index = u16::try_from(self.peers.len())
            .ok()
            .filter(|i| *i < MAX_LINKS);
        let Some(index) = index else {
            self.stats.too_many += 1;
            return None;
        };
        self.peers.insert(
            node.to_string(),
            Peer {
                index,
                link: None,
                out_for: None,
                inbound: None,
            },
        );
        Some(index)
    }

    /// Another node's record (`Some((link address, incarnation))`) or its end (`None`).
    pub fn peer(&mut self, sealer: &Sealer, node: &str, rec: Option<(&str, u64)>) {
        if node == self.me {
            return;
        }
        let Some((link, inc)) = rec else {
            // Gone: its inbound SA goes (a new process of it has a new incarnation); our
            // outbound stays installed (its sequence numbers must not start again).
            if let Some(p) = self.peers.get_mut(node) {
                if let Some((_, spi)) = p.inbound.take() {
                    self.out
                        .push(LinkCmd::Update(Update::DeleteInbound { spi }));
                }
            }
            return;
        };
        let Ok(addr) = link.parse::<Ipv4Addr>() else {
            self.stats.bad_peers += 1;
            tracing::warn!(target: "control", node, link, "masq link: a node's link address is not IPv4");
            return;
        };
        let Some(index) = self.index_or_assign(node) else {
            return;
        };
        let me = self.me.clone();
        let (my_inc, my_link) = (self.incarnation, self.link);
        let taken: Vec<Spi> = self
            .peers
            .iter()
            .filter(|(n, _)| n.as_str() != node)
            .filter_map(|(_, p)| p.inbound.map(|(_, s)| s))
            .collect();
        let Some(p) = self.peers.get_mut(node) else {
            return;
        };
        let id = SaId(LINK_SA_ID_BASE + u32::from(index));
        // Outbound: once per incarnation of ours; a new address of the peer is a rebind.
        if p.out_for != Some(my_inc) {
            match link_keys(sealer, &me, my_inc, node) {
                Ok(k) => {
                    p.out_for = Some(my_inc);
                    p.link = Some(addr);
                    self.out.push(LinkCmd::Update(Update::AddSa {
                        dir: Direction::Outbound,
                        params: link_sa(Direction::Outbound, id, k, my_link, addr),
                    }));
                    self.out.push(LinkCmd::Out {
                        node: index,
                        out_sa: id,
                    });
                    self.stats.out_installed += 1;
                }
                Err(e) => tracing::error!(target: "control", "masq link: {e}"),
            }
        } else if p.link != Some(addr) {
            p.link = Some(addr);
            self.stats.rebound += 1;
            self.out.push(LinkCmd::Update(Update::RebindOutbound {
                ids: vec![id],
                local: IpAddr::V4(my_link),
                remote: IpAddr::V4(addr),
                encap: None,
            }));
        }
        // Inbound: derived from the peer's incarnation; a new one replaces the old SA.
        if p.inbound.map(|(i, _)| i) != Some(inc) {
            if let Some((_, spi)) = p.inbound.take() {
                self.out
                    .push(LinkCmd::Update(Update::DeleteInbound { spi }));
            }
            match link_keys(sealer, node, inc, &me) {
                Ok(k) if taken.contains(&k.spi) => {
                    self.stats.spi_collisions += 1;
                    tracing::warn!(target: "control", node, spi = ?k.spi,
                        "masq link: this node's link SPI collides with another node's: not installed");
                }
                Ok(k) => {
                    let spi = k.spi;
                    p.inbound = Some((inc, spi));
                    self.out.push(LinkCmd::Update(Update::AddSa {
                        dir: Direction::Inbound,
                        params: link_sa(Direction::Inbound, id, k, my_link, addr),
                    }));
                    self.out.push(LinkCmd::In { spi });
                    self.stats.in_installed += 1;
                }
                Err(e) => tracing::error!(target: "control", "masq link: {e}"),
            }
        }
    }

    /// The data plane restarted empty: every link SA is gone with it. A new incarnation of
    /// ours (the caller publishes it) and everything installed again, the outbound SAs under
    /// new keys.
    pub fn data_plane_fresh(&mut self, sealer: &Sealer, new_incarnation: u64) {
        self.incarnation = new_incarnation;
        let known: Vec<(String, Option<Ipv4Addr>, Option<u64>)> = self
            .peers
            .iter_mut()
            .map(|(n, p)| {
                let inc = p.inbound.take().map(|(i, _)| i);
                (n.clone(), p.link, inc)
            })
            .collect();
        for (node, link, inc) in known {
            if let (Some(link), Some(inc)) = (link, inc) {
                self.peer(sealer, &node, Some((&link.to_string(), inc)));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(Zeroizing::new([b; 32]))
    }

    fn id(k: &LinkKeys) -> (u32, Vec<u8>, [u8; 4]) {
        (k.spi.0, k.keys.key().to_vec(), k.keys.salt)
    }

    #[test]
    fn sender_and_receiver_derive_the_same_and_a_restart_changes_key_and_spi() {
        let s = sealer(1);
        let a = link_keys(&s, "edge-a", 7, "edge-b").unwrap();
        // The receiver, from the sender's record, on another process with the same key file.
        let b = link_keys(&sealer(1), "edge-a", 7, "edge-b").unwrap();
        assert_eq!(id(&a), id(&b));
        assert_eq!(a.keys.key().len(), 32);
        assert!(is_link_spi(a.spi.0));
        // The sender restarted: a new incarnation, so a new key, salt and SPI.
        let c = link_keys(&s, "edge-a", 8, "edge-b").unwrap();
        assert_ne!(a.keys.key(), c.keys.key());
        assert_ne!(a.keys.salt, c.keys.salt);
        assert_ne!(a.spi, c.spi);
        // Another cluster key: nothing in common.
        let d = link_keys(&sealer(2), "edge-a", 7, "edge-b").unwrap();
        assert_ne!(a.keys.key(), d.keys.key());
    }

    #[test]
    fn two_senders_or_two_directions_never_share_a_key() {
        let s = sealer(3);
        let names = ["a", "b", "c", "ab", "edge-a", "edge-b"];
        let mut seen = std::collections::HashSet::new();
        for snd in names {
            for rcv in names {
                if snd == rcv {
                    continue;
                }
                for inc in [0u64, 1, u64::MAX] {
                    let k = link_keys(&s, snd, inc, rcv).unwrap();
                    assert!(is_link_spi(k.spi.0));
                    assert!(
                        seen.insert(k.keys.key().to_vec()),
                        "{snd} -> {rcv} @{inc} repeats a key"
                    );
                }
            }
        }
        // Length prefixes: ("ab", "c") and ("a", "bc") are different pairs.
        let x = link_keys(&s, "ab", 1, "c").unwrap();
        let y = link_keys(&s, "a", 1, "bc").unwrap();
        assert_ne!(x.keys.key(), y.keys.key());
        assert!(!format!("{x:?}").contains(&format!("{:?}", x.keys.key())));
    }

    fn adds(cmds: &[LinkCmd]) -> Vec<(Direction, u32, u32, IpAddr)> {
        cmds.iter()
            .filter_map(|c| match c {
                LinkCmd::Update(Update::AddSa { dir, params }) => {
                    Some((*dir, params.id.0, params.spi.0, params.remote))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn links_install_each_outbound_sa_once_per_incarnation() {
        let s = sealer(4);
        let mut a = Links::new("a", "10.8.0.2".parse().unwrap(), 100);
        let mut b = Links::new("b", "10.8.0.3".parse().unwrap(), 200);
        a.peer(&s, "b", Some(("10.8.0.3", 200)));
        b.peer(&s, "a", Some(("10.8.0.2", 100)));
        let ca = a.take();
        let cb = b.take();
        let (aa, ab) = (adds(&ca), adds(&cb));
        assert_eq!(aa.len(), 2);
        // a's outbound to b is b's inbound from a: same SPI, same key.
        let a_out = aa.iter().find(|x| x.0 == Direction::Outbound).unwrap();
        let b_in = ab.iter().find(|x| x.0 == Direction::Inbound).unwrap();
        assert_eq!(a_out.2, b_in.2);
        assert_eq!(a_out.1, LINK_SA_ID_BASE);
        assert_eq!(a_out.3, "10.8.0.3".parse::<IpAddr>().unwrap());
        assert!(ca
            .iter()
            .any(|c| matches!(c, LinkCmd::Out { node: 0, out_sa } if out_sa.0 == LINK_SA_ID_BASE)));
        assert!(cb
            .iter()
            .any(|c| matches!(c, LinkCmd::In { spi } if spi.0 == b_in.2)));
        // The same record again: nothing. b goes and comes back restarted: a replaces only
        // its inbound SA; its outbound (sequence numbers going on) stays.
        a.peer(&s, "b", Some(("10.8.0.3", 200)));
        assert!(a.take().is_empty());
        a.peer(&s, "b", None);
        let gone = a.take();
        assert!(matches!(
            gone[..],
            [LinkCmd::Update(Update::DeleteInbound { .. })]
        ));
        a.peer(&s, "b", Some(("10.8.0.3", 201)));
        let back = adds(&a.take());
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, Direction::Inbound);
        assert_ne!(back[0].2, b_in.2);
        // b moved its link address: a rebind, not a second install of the same key.
        a.peer(&s, "b", Some(("10.8.0.9", 201)));
        let moved = a.take();
        assert!(adds(&moved).is_empty());
        assert!(matches!(
            moved[..],
            [LinkCmd::Update(Update::RebindOutbound { .. })]
        ));
        // a's data plane restarted: a new incarnation, new outbound keys, same index.
        let before = aa.iter().find(|x| x.0 == Direction::Outbound).unwrap().2;
        a.data_plane_fresh(&s, 101);
        let again = adds(&a.take());
        let out = again.iter().find(|x| x.0 == Direction::Outbound).unwrap();
        assert_ne!(out.2, before);
        assert_eq!(out.1, LINK_SA_ID_BASE);
        assert_eq!(out.2, link_keys(&s, "a", 101, "b").unwrap().spi.0);
        assert_eq!(a.index("b"), Some(0));
        assert_eq!(a.stats.out_installed, 2);
    }
}
