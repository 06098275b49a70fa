//! The group state an [`Endpoint`](crate::Endpoint) holds for the G-IKEv2 exchanges
//! (`exchange::group`): the GCKSs it runs (one per group), the groups it is a member of, which
//! IKE SA each registration went over, registrations and in-band rekeys waiting for an IKE
//! SA's window, and the [`GroupEvent`]s for the driver.
//!
//! Owns: the [`Gcks`] and [`Member`] objects of the endpoint, the (group, member) -> IKE SA
//! map of a GCKS, the counters of refused or malformed group messages.
//! Must never: print a key (the SA keys in a [`GroupEvent::Keys`] print as `<secret>`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::crypto::Secret;
use crate::group::gcks::Gcks;
use crate::group::member::{Member, RegisterWhy};
use crate::ids::IkeSaId;
use crate::time::Instant;
use crate::wire::Id;

/// A group Data-Security SA as a member's data plane installs it.
#[derive(Clone)]
pub struct GroupSaKeys {
    pub spi: u32,
    /// AES-GCM-16: the AES key followed by the 4-octet salt.
    pub keymat: Secret,
    /// This member's Sender-ID on it (senders only): the IV's top `sender_id_bits` bits.
    pub sender_id: Option<u32>,
    pub sender_id_bits: u8,
    /// From when this member sends on it (the activation time delay after the rekey).
    pub active_from: Instant,
    /// Until when it is kept for receiving (set once a newer SA replaced it).
    pub until: Option<Instant>,
    /// Its hard expiry (GSA_KEY_LIFETIME), when the GCKS sent one.
    pub expires: Option<Instant>,
}

impl core::fmt::Debug for GroupSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "GroupSaKeys(spi {:#010x}, sender {:?}/{} bits, from {:?} until {:?} expires {:?}, <secret>)",
            self.spi, self.sender_id, self.sender_id_bits, self.active_from, self.until, self.expires
        )
    }
}

/// How a member got its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysFrom {
    /// GSA_AUTH or GSA_REGISTRATION.
    Registration,
    /// GSA_REKEY under the Rekey SA.
    Rekey,
    /// GSA_INBAND_REKEY over the registration IKE SA.
    Inband,
}

/// What the group exchanges report to the driver.
#[derive(Clone, Debug)]
pub enum GroupEvent {
    /// Member: the group's Data-Security SAs now (all of them, old and new, with their
    /// activation and deactivation times): the data plane installs these and drops the others.
    Keys {
        group: String,
        from: KeysFrom,
        sas: Vec<GroupSaKeys>,
        /// GSA_NEXT_SPI (RFC 9838 section 4.4.2.2.3): the SPIs the GCKS reserved for the SA
        /// replacing the newest; traffic on one before its rekey came means the rekey was lost.
        next_spis: Vec<u32>,
        /// The group's multicast address for GSA_REKEY (the Rekey SA's destination), where
        /// the member's data plane must take IKE datagrams too.
        rekey_multicast: Option<core::net::IpAddr>,
    },
    /// Member: register again (GSA_REGISTRATION over the IKE SA, or a new IKE SA's GSA_AUTH):
    /// a rekey was lost (Message ID gap) or our Sender-ID no longer fits.
    MustRegister { group: String, why: RegisterWhy },
    /// Member: the GCKS refused the registration with this notify (INVALID_GROUP_ID,
    /// AUTHORIZATION_FAILED, REGISTRATION_FAILED), or its answer was refused here (0).
    Refused {
        ike: IkeSaId,
        group: String,
        notify: u16,
    },
    /// Member: the GCKS excluded us (Delete of the Rekey SA with SPI zero): register again.
    Excluded { group: String },
    /// Member: we left the group (GSA_REGISTRATION with REGISTRATION_FAILED answered); its
    /// keys are gone here.
    Left { group: String },
    /// GCKS: a member registered over IKE SA `ike`.
    Registered {
        ike: IkeSaId,
        group: String,
        member: String,
        sender_id: Option<u32>,
    },
    /// GCKS: a registration refused with this notify.
    RegistrationRefused {
        ike: IkeSaId,
        group: String,
        member: String,
        notify: u16,
    },
    /// GCKS: a member removed; the rekey that excludes it went out.
    Removed { group: String, member: String },
}

/// Counters of the group exchanges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// GSA_REKEY datagrams for no Rekey SA held here, or that failed to open or were replayed.
    pub rekeys_dropped: u64,
    /// Registration answers or in-band rekeys a member refused (malformed or against policy).
    pub member_refused: u64,
    /// Requests with a malformed group payload (answered INVALID_SYNTAX or refused).
    pub malformed: u64,
    /// GSA_INBAND_REKEY exchanges the GCKS started.
    pub inband_sent: u64,
    /// GSA_REKEY datagrams the GCKS sent to a group's multicast address (one per message).
    pub multicast_rekeys: u64,
}

/// A member's group membership.
pub(crate) struct Membership {
    pub member: Member,
    /// The IKE SA it registered over.
    pub ike: Option<IkeSaId>,
}

/// GCKS: a member's registration: the IKE SA it went over (rekeyed along with it) and that
/// IKE SA's addresses when last seen (GSA_REKEY keeps going there after the IKE SA is gone:
/// RFC 9838 2.3.3 lets the GCKS close it).
pub(crate) struct Registration {
    pub group: Id,
    pub member: Id,
    pub ike: IkeSaId,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

#[derive(Default)]
pub(crate) struct GroupState {
    pub gcks: Vec<Gcks>,
    /// GCKS: where each member registered: its rekeys go there.
    pub registered: Vec<Registration>,
    /// GCKS: send every rekey over the members' IKE SAs too (GSA_INBAND_REKEY).
    pub inband_after_rekey: bool,
    pub members: Vec<Membership>,
    /// Member: connection name -> the group its IKE_AUTH is a GSA_AUTH for.
    pub joins: HashMap<String, Id>,
    /// Member: GSA_REGISTRATIONs waiting for the IKE SA's window (true: leaving the group).
    pub pending_registrations: HashMap<IkeSaId, VecDeque<(Id, bool)>>,
    /// GCKS: GSA_INBAND_REKEYs waiting for the IKE SA's window.
    pub pending_inband: HashMap<IkeSaId, VecDeque<Id>>,
    pub events: VecDeque<GroupEvent>,
    /// GCKS: GSA_REKEY messages to send, with their group (routed by the endpoint to each
    /// member's registration IKE SA's address).
    pub outbox: Vec<(Id, crate::group::gcks::Outbound)>,
    pub stats: GroupStats,
    /// Tests: changes the payloads of a group message this endpoint is about to send (by
    /// exchange type), to feed the peer malformed ones through the real exchange.
    #[cfg(test)]
    pub tamper: Option<Tamper>,
}

#[cfg(test)]
pub(crate) type Tamper = Box<dyn FnMut(u8, &mut Vec<crate::wire::Payload>)>;

impl GroupState {
    /// Tests: applies the tamper hook (if any) to a group message's payloads.
    #[cfg(test)]
    pub fn tamper(&mut self, exchange: u8, p: &mut Vec<crate::wire::Payload>) {
        if let Some(t) = self.tamper.as_mut() {
            t(exchange, p);
        }
    }

    #[cfg(not(test))]
    pub fn tamper(&mut self, _exchange: u8, _p: &mut Vec<crate::wire::Payload>) {}
}

impl GroupState {
    pub fn gcks_mut(&mut self, group: &Id) -> Option<&mut Gcks> {
        self.gcks.iter_mut().find(|g| g.group() == group)
    }

    pub fn membership_mut(&mut self, group: &Id) -> Option<&mut Membership> {
        self.members.iter_mut().find(|m| m.member.group() == group)
    }

    /// A member's view of its group's SAs, for [`GroupEvent::Keys`].
    pub fn keys_event(m: &Member, from: KeysFrom) -> GroupEvent {
        GroupEvent::Keys {
            group: m.group().display(),
            from,
            sas: m
                .sas()
                .iter()
                .map(|s| GroupSaKeys {
                    spi: s.spi,
                    keymat: s.keymat.clone(),
                    sender_id: s.sender_id,
                    sender_id_bits: s.sender_id_bits,
                    active_from: s.active_from,
                    until: s.until,
                    expires: s.expires,
                })
                .collect(),
            next_spis: m.next_spis().to_vec(),
            rekey_multicast: m.rekey_multicast(),
        }
    }

    /// Reports the member's reason to register again, if it has one.
    pub fn must_register(events: &mut VecDeque<GroupEvent>, m: &mut Member) {
        if let Some(why) = m.take_reregister() {
            events.push_back(GroupEvent::MustRegister {
                group: m.group().display(),
                why,
            });
        }
    }

    /// GCKS: remembers the IKE SA (and its addresses) `member` registered to `group` over.
    pub fn note_registration(
        &mut self,
        group: &Id,
        member: &Id,
        ike: IkeSaId,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        self.forget_registration(group, member);
        self.registered.push(Registration {
            group: group.clone(),
            member: member.clone(),
            ike,
            local,
            remote,
        });
    }

    pub fn forget_registration(&mut self, group: &Id, member: &Id) {
        self.registered
            .retain(|r| !(&r.group == group && &r.member == member));
    }

    /// GCKS: the registration of `member` in `group`.
    pub fn registration(&self, group: &Id, member: &Id) -> Option<&Registration> {
        self.registered
            .iter()
            .find(|r| &r.group == group && &r.member == member)
    }

    /// IKE SA `old` was rekeyed into `new`: registrations and memberships follow.
    pub fn ike_rekeyed(&mut self, old: IkeSaId, new: IkeSaId) {
        for r in self.registered.iter_mut().filter(|r| r.ike == old) {
            r.ike = new;
        }
        for m in self.members.iter_mut().filter(|m| m.ike == Some(old)) {
            m.ike = Some(new);
        }
    }

    /// The IKE SA went: no exchange waits on it (a GCKS's rekeys keep going to the
    /// addresses it had).
    pub fn forget_ike(&mut self, ike: IkeSaId) {
        self.pending_registrations.remove(&ike);
        self.pending_inband.remove(&ike);
    }
}
