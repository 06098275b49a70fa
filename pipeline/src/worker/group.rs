//! Group SAs (G-IKEv2, RFC 9838) in the worker: the generations this worker holds, which one
//! of each group sends, the group's tunnel endpoints; their commands, the seal of a LAN
//! packet on a group and the open of a group packet from the WAN.
//!
//! The model is `proto::group`'s. Ownership: a generation lives on the worker its SPI's worker
//! bits name (group SPIs all start 0xff0: one worker of up to 256 holds every group SA of the
//! node); that worker publishes the group's id as an outbound SA it owns while it holds the
//! group's sending generation, so the other workers hand the group's LAN frames to it, and
//! inbound group ESP reaches it by the SPI like any other. A sender's IV counter and the
//! per-sender windows are therefore each in one place.
//!
//! Owns: the group table. Must never: seal on a generation twice with one IV (one counter per
//! generation, never reset: a second install of an SPI is refused), move a window on a packet
//! whose ICV failed, send a group packet to no member.

use std::collections::HashMap;
use std::net::IpAddr;

use super::emit::decrement_hop_limit;
use super::parse::IpInfo;
use super::{SaCounterEntry, Side, Verdict, Worker};
use crate::esp::group::{GroupPeers, GroupSa};
use crate::esp::tunnel::{self, InnerMeta, NH_IPV4, NH_IPV6};
use crate::ids::{SaId, Spi};
use crate::msg::{Direction, Event, Released, Reply};
use crate::port::{Frame, Port};
use crate::stats::{DropReason, SaCounters, Traffic};
use crate::wire::ethernet;

/// The group SAs of one worker.
#[derive(Default)]
pub(super) struct Groups {
    /// Every generation held, by SPI.
    by_spi: HashMap<Spi, Box<GroupSa>>,
    /// Group id -> its sending generation.
    sending: HashMap<SaId, Spi>,
    /// Group id -> its tunnel endpoints.
    peers: HashMap<SaId, Box<GroupPeers>>,
}

impl Groups {
    pub(super) fn is_empty(&self) -> bool {
        self.by_spi.is_empty()
    }

    /// The generation group `id` sends on, with the group's endpoints.
    #[inline]
    pub(super) fn sender(&mut self, id: SaId) -> Option<(&mut GroupSa, Option<&GroupPeers>)> {
        let spi = *self.sending.get(&id)?;
        let sa = self.by_spi.get_mut(&spi)?;
        Some((sa, self.peers.get(&id).map(|b| &**b)))
    }

    /// Whether this worker holds any generation of group `id` (sending or not).
    /// True if `a` is a group's rekey multicast address (its IKE datagrams are ours).
    pub(super) fn listens_on(&self, a: IpAddr) -> bool {
        a.is_multicast() && self.peers.values().any(|p| p.rekey_multicast == Some(a))
    }

    pub(super) fn has_group(&self, id: SaId) -> bool {
        self.sending.contains_key(&id) || self.by_spi.values().any(|g| g.id == id)
    }

    /// Moves a sender's counter (tests of its end: 2^32 packets are too many to send).
    #[cfg(test)]
    pub(super) fn set_sender_last(&mut self, spi: Spi, last: u64) {
        if let Some(s) = self.by_spi.get_mut(&spi).and_then(|g| g.sender.as_mut()) {
            s.set_last(last);
        }
    }

    /// The inbound counters of generation `spi`.
    pub(super) fn counters(&self, spi: Spi) -> Option<&SaCounters> {
        self.by_spi.get(&spi).map(|g| &*g.counters)
    }

    #[inline]
    pub(super) fn generation(&mut self, spi: Spi) -> Option<&mut GroupSa> {
        self.by_spi.get_mut(&spi).map(|b| &mut **b)
    }
}

impl<P: Port> Worker<P> {
    pub(super) fn add_group_sa(
        &mut self,
        sa: Box<GroupSa>,
        send: bool,
    ) -> Result<(), &'static str> {
        if self.groups.by_spi.contains_key(&sa.spi) {
            // Installing it again would restart the IV counter under the same key.
            self.release(Released::Group(sa));
            return Err("group SA with that SPI already installed");
        }
        if self.sad.inbound(sa.spi).is_some() {
            self.release(Released::Group(sa));
            return Err("a unicast SA has that SPI");
        }
        if send && sa.sender.is_none() {
            self.release(Released::Group(sa));
            return Err("a receive-only group SA cannot send");
        }
        sa.counters.installed_at.set(self.now);
        let (id, spi) = (sa.id, sa.spi);
        self.list_upsert(SaCounterEntry {
            id,
            spi,
            direction: Direction::Inbound,
            counters: sa.counters.clone(),
        });
        self.groups.by_spi.insert(spi, sa);
        if send {
            self.group_send_on(id, spi)?;
        }
        Ok(())
    }

    pub(super) fn delete_group_sa(&mut self, spi: Spi) -> Result<(), &'static str> {
        let Some(sa) = self.groups.by_spi.remove(&spi) else {
            return Err("no group SA with that SPI");
        };
        let id = sa.id;
        if self.groups.sending.get(&id) == Some(&spi) {
            self.groups.sending.remove(&id);
            self.publish_owner(id, false);
            self.list_remove((true, id.0));
        }
        self.list_remove((false, spi.0));
        self.release(Released::Group(sa));
        Ok(())
    }

    pub(super) fn group_send_on(&mut self, id: SaId, spi: Spi) -> Result<(), &'static str> {
        let Some(sa) = self.groups.by_spi.get(&spi) else {
            return Err("no group SA with that SPI");
        };
        if sa.id != id {
            return Err("the group SA belongs to another group");
        }
        if sa.sender.is_none() {
            return Err("a receive-only group SA cannot send");
        }
        let e = SaCounterEntry {
            id,
            spi,
            direction: Direction::Outbound,
            counters: sa.out_counters.clone(),
        };
        self.groups.sending.insert(id, spi);
        self.publish_owner(id, true);
        self.list_upsert(e);
        Ok(())
    }

    pub(super) fn set_group_peers(&mut self, peers: Box<GroupPeers>) {
        self.groups.peers.insert(peers.id, peers);
    }
}

/// 2^24 packets before a sender's counter ends, the control plane is told (rekey or register
/// again): 1.6 s at 10 Mpps.
const WARN_BEFORE: u64 = 1 << 24;

impl<P: Port> Worker<P> {
    /// A LAN packet the SPD (or a host binding) protects with `id`, if `id` is a group this
    /// worker holds: sealed on the group's sending generation toward the member whose LAN
    /// holds the inner destination. None: `id` is no group here.
    #[inline]
    pub(super) fn protect_group(
        &mut self,
        f: &mut P::Frame,
        pkt: &IpInfo,
        id: SaId,
        now: u64,
    ) -> Option<Verdict> {
        let Some((sa, peers)) = self.groups.sender(id) else {
            return self
                .groups
                .has_group(id)
                .then_some(Verdict::Drop(DropReason::GroupNotSending));
        };
        let drop = |sa: &GroupSa, r: DropReason| {
            sa.out_counters.record_drop(r);
            Some(Verdict::Drop(r))
        };
        // The group's policy covers the packet (the SPD chose the group; the SA's selectors
        // are the GCKS's).
        if !sa.src_ts.contains(pkt.key.src) || !sa.dst_ts.contains(pkt.key.dst) {
            return drop(sa, DropReason::PolicyMismatch);
        }
        let Some(t) = peers.and_then(|p| p.outer_for(pkt.key.dst)).copied() else {
            return drop(sa, DropReason::GroupNoPeer);
        };
        let inner_len = f.len() - ethernet::HEADER_LEN;
        let outer_len = inner_len + tunnel::group_overhead(&t, inner_len);
        if outer_len > usize::from(self.wan_link.mtu) {
            let inner_mtu = usize::from(self.wan_link.mtu).saturating_sub(outer_len - inner_len);
            sa.out_counters.record_drop(DropReason::MtuExceeded);
            self.send_too_big(f, pkt.ipv6, inner_mtu);
            return Some(Verdict::Drop(DropReason::MtuExceeded));
        }
        if !decrement_hop_limit(f, pkt.ipv6) || !f.adj(ethernet::HEADER_LEN) {
            return Some(Verdict::Drop(DropReason::MalformedIp));
        }
        self.clear_checksum.apply(f.data_mut(), pkt, &self.counters);
        let meta = InnerMeta {
            next_header: if pkt.ipv6 { NH_IPV6 } else { NH_IPV4 },
            dscp: pkt.dscp,
            ecn: pkt.ecn,
        };
        // Borrowed again: the ICMP error above needed the whole worker.
        let (sa, _) = self.groups.sender(id)?;
        let seq = match tunnel::encapsulate_group(sa, &t, f, meta) {
            Ok(s) => s,
            Err(r) => {
                sa.out_counters.record_drop(r);
                return Some(Verdict::Drop(r));
            }
        };
        sa.out_counters.last_used.set(now.max(1));
        let near = sa
            .sender
            .as_ref()
            .map(|s| (s.limit(), seq >= s.limit().saturating_sub(WARN_BEFORE)));
        let spi = sa.spi;
        let mut warn = None;
        if let Some((limit, true)) = near {
            if !sa.warned {
                sa.warned = true;
                warn = Some(limit);
            }
        }
        if let Some(limit) = warn {
            self.reply(Reply::Event(Event::SeqNearWrap {
                worker: self.id,
                id,
                spi,
                seq,
                limit,
            }));
        }
        self.counters.count(Traffic::Encrypted, 1);
        self.counters
            .count(Traffic::EncryptedBytes, inner_len as u64);
        let v6 = t.bytes[0] >> 4 == 6;
        Some(self.forward(f, Side::Wan, v6))
    }

    /// Group ESP (bare, an SPI of the group range) for this worker: opened on its generation
    /// with the sender's window, then delivered as any opened packet. Err as `open`'s.
    #[inline]
    pub(super) fn open_group(
        &mut self,
        f: &mut P::Frame,
        esp_at: usize,
        spi: Spi,
        outer_ecn: u8,
        now: u64,
    ) -> Result<Verdict, (DropReason, Spi)> {
        let Some(sa) = self.groups.generation(spi) else {
            return Err((DropReason::UnknownSpi, spi));
        };
        if !f.adj(esp_at) {
            return Ok(Verdict::Drop(DropReason::EspTruncated));
        }
        match tunnel::decapsulate_group(sa, f, now) {
            Ok(opened) => Ok(self.after_open(f, &opened, outer_ecn, now)),
            Err(r) => {
                let _ = f.prepend(esp_at);
                Err((r, spi))
            }
        }
    }

    /// The counters of the group generation `spi`, if this worker holds it.
    pub(super) fn group_counters(&self, spi: Spi) -> Option<(SaId, std::sync::Arc<SaCounters>)> {
        self.groups
            .by_spi
            .get(&spi)
            .map(|g| (g.id, g.counters.clone()))
    }
}
