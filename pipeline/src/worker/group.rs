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

use super::{SaCounterEntry, Worker};
use crate::esp::group::{GroupPeers, GroupSa};
use crate::ids::{SaId, Spi};
use crate::msg::{Direction, Released};
use crate::port::Port;

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
    pub(super) fn has_group(&self, id: SaId) -> bool {
        self.sending.contains_key(&id) || self.by_spi.values().any(|g| g.id == id)
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
