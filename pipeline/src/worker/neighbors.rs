//! ARP and IPv6 neighbour discovery arriving on either side: what they say about their sender
//! goes to that side's neighbour cache (where the link resolves, `resolve`), and requests and
//! solicitations for the gateway's own addresses are answered in place on the side they came
//! from (`crate::neighbor` builds the answer). Never answers for an address that is not ours.

use core::net::IpAddr;

use super::{Side, Verdict, Worker};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::{ethernet, icmpv6, ipv6, EtherType, IpProtocol};

/// A neighbour advertisement with its target link-layer address option: Ethernet, IPv6 and 32
/// bytes of ICMPv6 (RFC 4861 4.4). A solicitation may be shorter than the answer.
const NA_FRAME_LEN: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + 32;

/// An IPv6 neighbour solicitation (Some(true)) or advertisement (Some(false)): ICMPv6 type 135
/// or 136 right after a bare IPv6 header (one behind extension headers is not looked for: it
/// goes the way of other IPv6 traffic).
#[inline]
fn nd_kind(ip: &[u8]) -> Option<bool> {
    let p = ipv6::Packet::new_checked(ip).ok()?;
    if p.next_header() != IpProtocol::Icmpv6 {
        return None;
    }
    match icmpv6::Packet::new_unchecked(p.payload()).msg_type() {
        icmpv6::Message::NeighborSolicit => Some(true),
        icmpv6::Message::NeighborAdvert => Some(false),
        _ => None,
    }
}

impl<P: Port> Worker<P> {
    /// With other workers, a copy of this ARP reply or neighbour advertisement to each of
    /// them: each worker resolves its next hops on its own, and an answer reaches the one
    /// queue the port chose (no RSS hash for ARP), so the worker that asked may not see it.
    /// The copies go the way of every hand-off (in order; a full lane is back-pressure). A
    /// copy that finds no free frame to carry it is not made (the cache asks again).
    fn share_neighbor_frame(&mut self, f: &P::Frame, side: Side) {
        if self.handoff.is_none() {
            return;
        }
        let lane = side.lane();
        for w in (0..self.workers).filter(|&w| w != self.id) {
            let port = match side {
                Side::Lan => &mut self.lan,
                Side::Wan => &mut self.wan,
            };
            let Some(mut copy) = port.alloc() else {
                return;
            };
            if !copy.append(f.len()) {
                return;
            }
            copy.data_mut().copy_from_slice(f.data());
            self.handoff_q.push_back((w, lane, copy));
        }
    }

    /// ARP and neighbour solicitations for our own address are answered on the side they came
    /// from; other ARP is link chatter. None: not neighbour discovery, go on.
    #[inline]
    pub(super) fn neighbor(&mut self, f: &mut P::Frame, side: Side) -> Option<Verdict> {
        let eth = ethernet::Frame::new_checked(f.data()).ok()?;
        let (arp, is_ns) = match eth.ethertype() {
            EtherType::Arp => (true, false),
            EtherType::Ipv6 => (false, nd_kind(eth.payload())?),
            _ => return None,
        };
        // An ARP reply (operation 2) or a neighbour advertisement: the answers resolution
        // waits for.
        let answer = if arp {
            eth.payload().get(6..8) == Some(&[0, 2][..])
        } else {
            !is_ns
        };
        self.learn(f.data(), side, arp);
        // A copy another worker shared: learned from, answered (if at all) by that worker.
        if self.receiving {
            return Some(Verdict::Drop(DropReason::NeighborShared));
        }
        if answer {
            self.share_neighbor_frame(f, side);
        }
        if !arp && !is_ns {
            return Some(Verdict::Drop(DropReason::NeighborIgnored));
        }
        let link = match side {
            Side::Lan => &self.lan_link,
            Side::Wan => &self.wan_link,
        };
        let len = f.len();
        if is_ns && len < NA_FRAME_LEN && !f.append(NA_FRAME_LEN - len) {
            return Some(Verdict::Drop(DropReason::NoBufferRoom));
        }
        let (mut outcome, mut new_len) =
            crate::neighbor::respond(f.data_mut(), link.mac, link.addr4, link.addr6);
        if matches!(side, Side::Wan) && matches!(outcome, crate::neighbor::Outcome::Ignored) {
            for a in &self.wan_also {
                let (a4, a6) = match a {
                    IpAddr::V4(v) => (Some(*v), None),
                    IpAddr::V6(v) => (None, Some(*v)),
                };
                (outcome, new_len) = crate::neighbor::respond(f.data_mut(), link.mac, a4, a6);
                if matches!(outcome, crate::neighbor::Outcome::Replied) {
                    break;
                }
            }
        }
        if matches!(side, Side::Lan) && matches!(outcome, crate::neighbor::Outcome::Ignored) {
            // Masquerading addresses this node serves (`masq`).
            if let Some(m) = self.masq.as_deref() {
                for a in m.served() {
                    (outcome, new_len) =
                        crate::neighbor::respond(f.data_mut(), link.mac, Some(*a), None);
                    if matches!(outcome, crate::neighbor::Outcome::Replied) {
                        break;
                    }
                }
            }
        }
        match outcome {
            crate::neighbor::Outcome::Replied => {
                f.truncate(new_len);
                self.counters.count(Traffic::NeighborReplies, 1);
                Some(match side {
                    Side::Lan => Verdict::ToLan,
                    Side::Wan => Verdict::ToWan,
                })
            }
            crate::neighbor::Outcome::Ignored => Some(Verdict::Drop(DropReason::NeighborIgnored)),
            crate::neighbor::Outcome::NotNeighbor => {
                f.truncate(len);
                None
            }
        }
    }
}
