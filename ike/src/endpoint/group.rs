//! The endpoint's G-IKEv2 side (RFC 9838): the GCKSs it runs and the groups it joins, the
//! GSA_REKEY datagrams it receives outside any IKE SA, and the routing of a GCKS's rekeys to
//! each member's address (that of the IKE SA it registered over). The exchanges themselves
//! are in `exchange::group`; the state in `group::session`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::exchange::{self, Action};
use crate::group::gcks::Gcks;
use crate::group::member::Member;
use crate::group::rekey::{self, RekeyError};
use crate::group::session::{GroupEvent, GroupState, GroupStats, KeysFrom, Membership};
use crate::ids::IkeSaId;
use crate::time::Instant;
use crate::wire::Id;

use super::{ConnectError, Endpoint, Transmit};

impl Endpoint {
    /// Runs `gcks` here: GSA_AUTH and GSA_REGISTRATION requests for its group are answered by
    /// it, its rekeys go to each member's registration IKE SA's address. With `inband`, every
    /// rekey is also sent over each member's IKE SA as GSA_INBAND_REKEY (reliable delivery,
    /// RFC 9838 2.4: a member that lost the GSA_REKEY datagram still gets the keys).
    pub fn add_gcks(&mut self, gcks: Gcks, inband: bool) {
        self.group.gcks.retain(|g| g.group() != gcks.group());
        self.group.gcks.push(gcks);
        self.group.inband_after_rekey |= inband;
    }

    /// The GCKS of `group` run here.
    pub fn gcks(&self, group: &Id) -> Option<&Gcks> {
        self.group.gcks.iter().find(|g| g.group() == group)
    }

    /// Joins `group` through connection `peer`: its next IKE SA registers in GSA_AUTH
    /// (instead of IKE_AUTH, no CHILD_SA), as a sender (asking for a Sender-ID) if `sender`.
    pub fn join_group(&mut self, peer: &str, group: Id, sender: bool) {
        self.ensure_membership(&group, sender);
        self.group.joins.insert(peer.to_owned(), group);
    }

    /// Registers for `group` over established IKE SA `ike` (GSA_REGISTRATION).
    pub fn register_group(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        group: Id,
        sender: bool,
    ) -> Result<(), ConnectError> {
        if !self.sas.contains_key(&ike) {
            return Err(ConnectError::NoSuchSa);
        }
        self.ensure_membership(&group, sender);
        self.group
            .pending_registrations
            .entry(ike)
            .or_default()
            .push_back((group, false));
        self.enqueue(now, ike, Action::GsaRegistration)
    }

    /// Leaves `group` over established IKE SA `ike` (GSA_REGISTRATION with IDg and
    /// REGISTRATION_FAILED, RFC 9838 2.3.2: the GCKS removes us); once answered, the
    /// membership and its keys are gone here ([`GroupEvent::Left`]).
    pub fn leave_group(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        group: Id,
    ) -> Result<(), ConnectError> {
        if !self.sas.contains_key(&ike) || self.group.membership_mut(&group).is_none() {
            return Err(ConnectError::NoSuchSa);
        }
        self.group
            .pending_registrations
            .entry(ike)
            .or_default()
            .push_back((group, true));
        self.enqueue(now, ike, Action::GsaRegistration)
    }

    /// GCKS: sends `group`'s current keys to `member` over the IKE SA it registered over
    /// (GSA_INBAND_REKEY).
    pub fn group_inband_rekey(
        &mut self,
        now: Instant,
        group: &Id,
        member: &Id,
    ) -> Result<(), ConnectError> {
        let ike = self
            .group
            .registration(group, member)
            .ok_or(ConnectError::NoSuchSa)?
            .ike;
        self.queue_inband(now, ike, group.clone())
    }

    /// GCKS: removes `member` from `group`; the rekey that excludes it goes out now.
    pub fn remove_group_member(&mut self, now: Instant, group: &Id, member: &Id) {
        exchange::group::remove(&mut self.group, now, group, member);
        self.flush_group(now);
    }

    /// The IKE SA `group`'s membership registered over, while it is up (a re-registration
    /// goes over it by GSA_REGISTRATION; without one the member starts a new IKE SA, whose
    /// GSA_AUTH registers).
    pub fn group_ike(&self, group: &Id) -> Option<IkeSaId> {
        self.group
            .members
            .iter()
            .find(|m| m.member.group() == group)
            .and_then(|m| m.ike)
            .filter(|ike| self.sas.contains_key(ike))
    }

    /// GCKS: `member` may register to `group` from now on (a reload that adds it).
    pub fn allow_group_member(&mut self, group: &Id, member: &Id) -> bool {
        self.group
            .gcks_mut(group)
            .map(|g| g.allow_member(member))
            .is_some()
    }

    /// GCKS: `group`'s Sender-ID bits change: the group starts over under a new SA (every
    /// member excluded and registering again, `Gcks::set_sender_id_bits`); the messages go now.
    pub fn set_group_sender_id_bits(
        &mut self,
        now: Instant,
        group: &Id,
        bits: u8,
    ) -> Result<(), &'static str> {
        let g = self.group.gcks_mut(group).ok_or("no such group")?;
        let out = g.set_sender_id_bits(now, bits)?;
        self.group
            .outbox
            .extend(out.into_iter().map(|o| (group.clone(), o)));
        self.flush_group(now);
        Ok(())
    }

    /// The membership of `group` (its SAs, counters).
    pub fn group_member(&self, group: &Id) -> Option<&Member> {
        self.group
            .members
            .iter()
            .find(|m| m.member.group() == group)
            .map(|m| &m.member)
    }

    /// Tests: the GCKS of `group` itself.
    #[cfg(test)]
    pub(crate) fn gcks_mut(&mut self, group: &Id) -> Option<&mut Gcks> {
        self.group.gcks_mut(group)
    }

    /// Tests: the hook that changes the payloads of group messages this endpoint sends.
    #[cfg(test)]
    pub(crate) fn set_group_tamper(&mut self, t: crate::group::session::Tamper) {
        self.group.tamper = Some(t);
    }

    /// The group exchanges' counters.
    pub fn group_stats(&self) -> GroupStats {
        self.group.stats
    }

    fn ensure_membership(&mut self, group: &Id, sender: bool) {
        if self.group.membership_mut(group).is_none() {
            self.group.members.push(Membership {
                member: Member::new(group.clone(), sender),
                ike: None,
            });
        }
    }

    fn queue_inband(&mut self, now: Instant, ike: IkeSaId, group: Id) -> Result<(), ConnectError> {
        if !self.sas.contains_key(&ike) {
            return Err(ConnectError::NoSuchSa);
        }
        self.group
            .pending_inband
            .entry(ike)
            .or_default()
            .push_back(group);
        self.enqueue(now, ike, Action::GsaInband)
    }

    /// A GSA_REKEY datagram: for the membership whose Rekey SA its header names.
    pub(super) fn group_rekey(&mut self, now: Instant, data: &[u8]) {
        let GroupState {
            members,
            events,
            stats,
            ..
        } = &mut self.group;
        let spi = rekey::header(data).ok().map(|h| (h.spi_i, h.spi_r));
        let m = spi.and_then(|spi| {
            members.iter_mut().find(|m| {
                m.member
                    .rekey_spi()
                    .is_some_and(|s| rekey::spi_halves(&s) == spi)
            })
        });
        let Some(m) = m else {
            stats.rekeys_dropped = stats.rekeys_dropped.saturating_add(1);
            return;
        };
        match m.member.on_rekey(now, data) {
            Ok(()) if m.member.must_register() => events.push_back(GroupEvent::Excluded {
                group: m.member.group().display(),
            }),
            Ok(()) => {
                events.push_back(GroupState::keys_event(&m.member, KeysFrom::Rekey));
                GroupState::must_register(events, &mut m.member);
            }
            Err(e) => {
                stats.rekeys_dropped = stats.rekeys_dropped.saturating_add(1);
                if matches!(e, RekeyError::Wire(_)) {
                    stats.malformed = stats.malformed.saturating_add(1);
                }
                GroupState::must_register(events, &mut m.member);
            }
        }
    }

    /// GCKS rekeys when due; members drop SAs past their deactivation time.
    pub(super) fn group_timeout(&mut self, now: Instant) {
        for i in 0..self.group.gcks.len() {
            let Some(g) = self.group.gcks.get_mut(i) else {
                continue;
            };
            if g.deadline() <= now {
                let group = g.group().clone();
                let out = g.poll(now);
                self.group
                    .outbox
                    .extend(out.into_iter().map(|o| (group.clone(), o)));
            }
        }
        for m in &mut self.group.members {
            m.member.poll(now);
        }
        self.flush_group(now);
    }

    /// Sends the GCKSs' waiting GSA_REKEY messages to the members' registration IKE SAs'
    /// addresses (unicast delivery) and once to the group's multicast address (multicast
    /// delivery: a message shared by several members goes out once, from the address the
    /// members registered at), and (with in-band delivery) queues a GSA_INBAND_REKEY on each
    /// member's IKE SA.
    pub(super) fn flush_group(&mut self, now: Instant) {
        let out = core::mem::take(&mut self.group.outbox);
        let mut inband: Vec<(IkeSaId, Id)> = Vec::new();
        let mut multicast_sent: Vec<*const [u8]> = Vec::new();
        for (group, o) in out {
            let Some(r) = self.group.registration(&group, &o.to) else {
                continue;
            };
            let ike = r.ike;
            // The IKE SA's addresses now (MOBIKE may have moved it), else the last known.
            let (src, dst) = match self.sas.get(&ike) {
                Some(sa) => (sa.state.local, sa.state.remote),
                None => (r.local, r.remote),
            };
            let delivery = self
                .group
                .gcks
                .iter()
                .find(|g| g.group() == &group)
                .map(|g| g.delivery())
                .unwrap_or_default();
            if let Some(m) = delivery.multicast() {
                let msg: *const [u8] = Arc::as_ptr(&o.msg);
                if !multicast_sent.contains(&msg) {
                    multicast_sent.push(msg);
                    self.group.stats.multicast_rekeys =
                        self.group.stats.multicast_rekeys.saturating_add(1);
                    self.out.transmits.push_back(Transmit {
                        src,
                        dst: SocketAddr::new(m, crate::group::gcks::REKEY_PORT),
                        data: o.msg.to_vec(),
                    });
                }
            }
            if delivery.unicast() {
                self.out.transmits.push_back(Transmit {
                    src,
                    dst,
                    data: o.msg.to_vec(),
                });
            }
            if self.group.inband_after_rekey
                && self.sas.contains_key(&ike)
                && !inband.iter().any(|(i, g)| *i == ike && *g == group)
            {
                inband.push((ike, group));
            }
        }
        for (ike, group) in inband {
            let _ = self.queue_inband(now, ike, group);
        }
    }
}
