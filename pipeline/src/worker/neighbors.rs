//! ARP requests and IPv6 neighbour solicitations for the gateway's own addresses, answered in
//! place on the side they came from (`crate::neighbor` builds the answer).

use core::net::IpAddr;

use super::{Side, Verdict, Worker};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};

impl<P: Port> Worker<P> {
    /// ARP and neighbour solicitations for our own address are answered on the side they came
    /// from; other ARP is link chatter. None: not neighbour discovery, go on.
    pub(super) fn neighbor(&mut self, f: &mut P::Frame, side: Side) -> Option<Verdict> {
        let d = f.data();
        let is_arp = d.get(12..14) == Some(&[0x08, 0x06][..]);
        // IPv6 with next header ICMPv6 and type 135, at the fixed offsets of a bare header.
        let is_ns = d.get(12..14) == Some(&[0x86, 0xdd][..])
            && d.get(20) == Some(&58)
            && d.get(54) == Some(&135);
        if !is_arp && !is_ns {
            return None;
        }
        let link = match side {
            Side::Lan => &self.lan_link,
            Side::Wan => &self.wan_link,
        };
        // An advertisement (86 bytes with its option) may be longer than the solicitation.
        let len = f.len();
        if is_ns && len < 86 && !f.append(86 - len) {
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
