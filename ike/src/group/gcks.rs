//! The Group Controller/Key Server (RFC 9838 section 1.2), sans-IO on virtual time: group
//! policy, registration (the responder side of GSA_AUTH / GSA_REGISTRATION, section 2.3),
//! Sender-ID allocation (section 2.5), GSA_REKEY to every member (section 2.4.1), member
//! removal, activation and deactivation delays (GWP_ATD, GWP_DTD).
//!
//! Generations: each rekey makes a new Data-Security SA (new SPI from the group range, new
//! key). Sender-IDs follow RFC 9838 section 2.5.1: one counter from zero, a new value for every
//! registration of a sender, never given again; the member uses it on every Data-Security SA
//! (section 2.5.2), so GSA_REKEY carries none (GM_SENDER_ID is registration-only). When the
//! counter reaches the end of the GWP_SENDER_ID_BITS space, the registration is answered
//! REGISTRATION_FAILED and the group starts over ([`Gcks::restart`]: every member excluded by
//! a Delete with SPI zero, all register again under a new SA with a fresh counter).
//!
//! Keys (RFC 9838 sections 3.1, 3.4, 4.5.2.1): at registration every key in KD is wrapped
//! under the default KWK of the registration's IKE SA, and the member gets a KWK of its own
//! (WRAP_KEY). The Rekey SA's key material is GSK_e | GSK_w; a GSA_REKEY carries the new
//! Data-Security SA's key wrapped under the Rekey SA's GSK_w (Key ID and KWK ID 0): one
//! message, the same for every member. A removal first replaces the Rekey SA: a GSA_REKEY
//! under the old one carries the new Rekey SA's key once per remaining member, each wrapped
//! under that member's own KWK (several SA_KEY attributes, as section 4.5.2.1 allows for
//! GIKE_UPDATE; the key tree of appendix A with one level), then the new Data-Security SA
//! follows under the new Rekey SA. The removed member can open the first message but unwrap
//! none of its keys, and cannot open the second.
//!
//! Delivery is unicast (an [`Outbound`] per member and message, in order); the messages are
//! the same bytes for every member, so multicast delivery would need no change here.
//!
//! Owns: the policy, the generations, members and their KEKs and Sender-IDs, the Rekey SA.
//! Must never: give a Sender-ID twice under one key; send a key to a removed member; print a
//! key; read a clock or a socket.

use core::time::Duration;
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::crypto::{Secret, SkCipher};
use crate::group::keys::{gcm_keymat_len, Kek, KEK_LEN};
use crate::group::rekey;
use crate::group::wire::{
    group_key_attr, gsa_attr, gwp_attr, member_key_attr, notify, proto, transform as gtransform,
    Attr, GroupPayload, GroupPolicy, Gsa, Kd, KeyBag,
};
use crate::time::Instant;
use crate::wire::{self, Id, Payload, TrafficSelector, Transform};

/// Group SPIs come from the group range (top byte 0xff) that `services::spi` never hands out
/// for unicast CHILD_SAs, so a lookup by SPI alone stays unambiguous.
pub use crate::services::spi::{GROUP_SPI_MASK, GROUP_SPI_PREFIX};

/// Rekey SA key material (section 3.4): GSK_e (AES-256-GCM key and salt for the SK payload),
/// GSK_a (empty with an AEAD), GSK_w (the Rekey SA's default KWK, KW_5649_256).
pub const REKEY_GSK_E_LEN: usize = 36;
pub const REKEY_KEYMAT_LEN: usize = REKEY_GSK_E_LEN + KEK_LEN;

/// The group's policy.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group: Id,
    /// The identities allowed to register (authenticated by the IKE SA).
    pub members: Vec<Id>,
    /// The group's traffic: source and destination selectors of every Data-Security SA.
    pub src: TrafficSelector,
    pub dst: TrafficSelector,
    /// AES-GCM-16 key size (128 or 256): explicit-IV AEAD only (section 2.7 forbids
    /// implicit-IV transforms with many senders).
    pub key_bits: u16,
    pub lifetime: Duration,
    /// The GCKS rekeys this long before a generation's end (at least the DTD, so members
    /// keep receiving on the old SA until they drop it).
    pub rekey_lead: Duration,
    pub atd: Duration,
    pub dtd: Duration,
    /// Most significant IV bits that carry the Sender-ID (1 to 16).
    pub sender_id_bits: u8,
    /// Seed of the GCKS's randomness (keys, SPIs): sans-IO, the driver seeds it.
    pub seed: [u8; 32],
    /// How GSA_REKEY messages reach the members (RFC 9838 2.4.1).
    pub delivery: RekeyDelivery,
}

/// Where a rekey goes. A rekey is the same bytes for every member, so multicast sends it once;
/// the Rekey SA's destination selector names the multicast address (UDP port 500), which is
/// how a member learns to listen there (RFC 9838 4.4.2: the Rekey SA's traffic selectors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RekeyDelivery {
    /// A copy to each member's registration address.
    #[default]
    Unicast,
    /// One datagram to the group's multicast address.
    Multicast(core::net::IpAddr),
    /// Both: members on links without multicast still get theirs (a member drops the
    /// second copy as a replay: same Message ID).
    Both(core::net::IpAddr),
}

impl RekeyDelivery {
    pub fn multicast(&self) -> Option<core::net::IpAddr> {
        match self {
            RekeyDelivery::Unicast => None,
            RekeyDelivery::Multicast(a) | RekeyDelivery::Both(a) => Some(*a),
        }
    }

    pub fn unicast(&self) -> bool {
        !matches!(self, RekeyDelivery::Multicast(_))
    }
}

impl GroupConfig {
    /// What is wrong with the policy, if anything.
    pub fn check(&self) -> Result<(), &'static str> {
        if !matches!(self.key_bits, 128 | 256) {
            return Err("key_bits must be 128 or 256 (AES-GCM-16)");
        }
        if !(1..=16).contains(&self.sender_id_bits) {
            return Err("sender_id_bits must be 1 to 16");
        }
        if self.dtd < self.atd {
            return Err("the deactivation delay must be at least the activation delay");
        }
        if self.rekey_lead < self.dtd || self.rekey_lead >= self.lifetime {
            return Err("rekey_lead must be at least the deactivation delay and below lifetime");
        }
        if self.delivery.multicast().is_some_and(|a| !a.is_multicast()) {
            return Err("the rekey multicast address must be a multicast address");
        }
        Ok(())
    }
}

/// What the GCKS answers a registration with when it refuses it: a notify type.
pub type Refusal = u16;

struct Generation {
    spi: u32,
    keymat: Secret,
    expires: Instant,
}

struct MemberEntry {
    id: Id,
    kek: Kek,
    sender: bool,
    /// From its latest registration (a new one each registration, section 2.5.1).
    sender_id: Option<u32>,
    registered: bool,
    removed: bool,
}

/// A message for one member. A rekey's messages are the same bytes for every member: shared,
/// not copied per member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outbound {
    pub to: Id,
    pub msg: Arc<[u8]>,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcksStats {
    pub registered: u64,
    pub refused: u64,
    pub sender_id_exhausted: u64,
    /// Group restarts (every member excluded and registering again).
    pub restarts: u64,
    pub rekeys: u64,
    pub rekey_messages: u64,
}

pub struct Gcks {
    cfg: GroupConfig,
    rng: ChaCha20Rng,
    rekey_spi: [u8; 16],
    rekey_keymat: Secret,
    rekey_cipher: SkCipher,
    /// GSK_w of the Rekey SA.
    rekey_kwk: Kek,
    next_message_id: u32,
    gens: Vec<Generation>,
    /// The SPI reserved for the next generation, announced as GSA_NEXT_SPI (section
    /// 4.4.2.2.3) so a member that sees traffic on it before its rekey knows it lost one.
    next_spi: u32,
    members: Vec<MemberEntry>,
    next_kek_id: u32,
    /// The Sender-ID counter (section 2.5.1): the next value to allocate.
    next_sender_id: u32,
    /// The Sender-IDs ran out: the next poll starts the group over.
    restart_due: bool,
    rekey_at: Instant,
    stats: GcksStats,
}

impl core::fmt::Debug for Gcks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gcks")
            .field("group", &self.cfg.group.display())
            .field("members", &self.members.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gcks {
    pub fn new(cfg: GroupConfig, now: Instant) -> Result<Gcks, &'static str> {
        cfg.check()?;
        let mut rng = ChaCha20Rng::from_seed(cfg.seed);
        let (rekey_spi, rekey_keymat, rekey_cipher, rekey_kwk) = new_rekey_sa(&mut rng)?;
        let mut g = Gcks {
            rng,
            rekey_spi,
            rekey_keymat,
            rekey_cipher,
            rekey_kwk,
            next_message_id: 1,
            gens: Vec::new(),
            next_spi: 0,
            members: Vec::new(),
            next_kek_id: 1,
            next_sender_id: 0,
            restart_due: false,
            rekey_at: now,
            stats: GcksStats::default(),
            cfg,
        };
        g.new_generation(now);
        Ok(g)
    }

    pub fn stats(&self) -> GcksStats {
        self.stats
    }

    /// Whether `id` is registered and not removed.
    pub fn has_member(&self, id: &Id) -> bool {
        self.members
            .iter()
            .any(|m| &m.id == id && m.registered && !m.removed)
    }

    /// The group this GCKS keys.
    /// How this group's rekeys reach the members.
    pub fn delivery(&self) -> RekeyDelivery {
        self.cfg.delivery
    }

    pub fn group(&self) -> &Id {
        &self.cfg.group
    }

    /// The payloads of a GSA_INBAND_REKEY to registered member `id` over its registration IKE
    /// SA (RFC 9838 section 2.4.2: GSA and KD built as in a registration exchange): the Rekey
    /// SA, every live Data-Security SA and the GW policy, their keys wrapped under that IKE
    /// SA's default KWK `default_kek`. No Member Key Bag: GM_SENDER_ID and WRAP_KEY are for
    /// registrations only (sections 4.5.3.1, 4.5.3.3), the member keeps both. None when `id`
    /// is not a registered member (or was removed).
    pub fn inband(&mut self, now: Instant, id: &Id, default_kek: &Kek) -> Option<Vec<Payload>> {
        self.members
            .iter()
            .find(|m| &m.id == id && m.registered && !m.removed)?;
        let mut policies = vec![self.rekey_policy(false)];
        // No GSA_NEXT_SPI in-band: the exchange is reliable (section 4.4.2.2.3).
        policies.extend(self.data_policies(true, false, now));
        policies.push(self.gw_policy());
        let mut bags = vec![KeyBag::Group {
            protocol: proto::GIKE_UPDATE,
            spi: self.rekey_spi.to_vec(),
            attrs: vec![Attr::tlv(
                group_key_attr::SA_KEY,
                default_kek.wrap(&self.rekey_keymat).to_bytes(),
            )],
        }];
        bags.extend(self.data_key_bags(true, default_kek));
        Some(vec![
            GroupPayload::Gsa(Gsa { policies }).to_payload(),
            GroupPayload::Kd(Kd { bags }).to_payload(),
        ])
    }

    /// The newest Data-Security SA's SPI.
    pub fn current_spi(&self) -> Option<u32> {
        self.gens.last().map(|g| g.spi)
    }

    /// The live Data-Security SAs' SPIs and key material (AES key | 4-octet salt), for a lab's
    /// packet decoder only (`roamgate gcks --wireshark-keys`, which says it exports keys):
    /// never logged, never sent.
    pub fn export_data_keys(&self) -> Vec<(u32, Secret)> {
        self.gens
            .iter()
            .map(|g| (g.spi, Zeroizing::new(g.keymat.to_vec())))
            .collect()
    }

    /// The Sender-IDs of the members not removed: (Sender-ID, member identity).
    pub fn sender_ids(&self) -> Vec<(u32, Id)> {
        self.members
            .iter()
            .filter(|m| m.registered && !m.removed)
            .filter_map(|m| m.sender_id.map(|s| (s, m.id.clone())))
            .collect()
    }

    fn new_generation(&mut self, now: Instant) {
        let reserved = self.next_spi;
        let spi = if reserved != 0 && !self.gens.iter().any(|g| g.spi == reserved) {
            reserved
        } else {
            self.draw_spi(0)
        };
        self.next_spi = self.draw_spi(spi);
        let mut km = Zeroizing::new(vec![0u8; gcm_keymat_len(self.cfg.key_bits)]);
        self.rng.fill_bytes(&mut km);
        let gen = Generation {
            spi,
            keymat: km,
            expires: now.saturating_add(self.cfg.lifetime),
        };
        // Generations members have dropped (past their expiry) go.
        self.gens.retain(|g| g.expires > now);
        self.gens.push(gen);
        self.rekey_at = now.saturating_add(self.cfg.lifetime.saturating_sub(self.cfg.rekey_lead));
    }

    /// A group SPI no live generation has, other than `not`.
    fn draw_spi(&mut self, not: u32) -> u32 {
        loop {
            let s = GROUP_SPI_PREFIX | (self.rng.next_u32() & !GROUP_SPI_MASK);
            if s != not && !self.gens.iter().any(|g| g.spi == s) && s & !GROUP_SPI_MASK != 0 {
                break s;
            }
        }
    }

    /// The SPI reserved for the next generation (GSA_NEXT_SPI).
    pub fn next_spi(&self) -> u32 {
        self.next_spi
    }

    /// The policy's members: `id` may register from now on (a reload that adds a member).
    /// A member removed before starts afresh (a new KWK at its registration).
    pub fn allow_member(&mut self, id: &Id) {
        if !self.cfg.members.contains(id) {
            self.cfg.members.push(id.clone());
        }
        self.members.retain(|m| !(&m.id == id && m.removed));
    }

    /// The policy's Sender-ID bits change (a reload). The bits are group-wide and a member
    /// applies them to every SA it is given, while the IV a Sender-ID makes depends on them:
    /// under one key, Sender-ID 1 with 7 bits and Sender-ID 2 with 8 bits give the same IV
    /// prefix. So the change takes a new key and new Sender-IDs: the group starts over
    /// ([`restart`](Self::restart): every member excluded, all register again under a new SA,
    /// Sender-IDs from zero that fit the new bits; RFC 9838 sections 2.4.3, 2.5.1). Returns
    /// the GSA_REKEY messages; none when the bits are unchanged.
    pub fn set_sender_id_bits(
        &mut self,
        now: Instant,
        bits: u8,
    ) -> Result<Vec<Outbound>, &'static str> {
        if bits == self.cfg.sender_id_bits {
            return Ok(Vec::new());
        }
        let mut cfg = self.cfg.clone();
        cfg.sender_id_bits = bits;
        cfg.check()?;
        self.cfg = cfg;
        Ok(self.restart(now))
    }

    /// Tests: GW policies from now on carry `bits` with no restart (what a GCKS that does not
    /// start over would send), to exercise a member's own check.
    #[cfg(test)]
    pub(crate) fn set_sender_id_bits_unchecked(&mut self, bits: u8) {
        self.cfg.sender_id_bits = bits;
    }

    fn sender_id_space(&self) -> u32 {
        1u32 << self.cfg.sender_id_bits
    }

    /// The responder side of GSA_AUTH / GSA_REGISTRATION (section 2.3): `peer` is the
    /// identity the IKE SA authenticated, `default_kek` that IKE SA's default KEK, `request`
    /// the request's payloads inside SK. Returns the response's payloads, or the notify to
    /// answer with.
    pub fn register(
        &mut self,
        now: Instant,
        peer: &Id,
        default_kek: &Kek,
        request: &[Payload],
    ) -> Result<Vec<Payload>, Refusal> {
        let mut idg = None;
        let mut sender = false;
        for p in request {
            match GroupPayload::from_payload(p) {
                Ok(Some(GroupPayload::IdG(id))) => idg = Some(id),
                Ok(_) => {}
                Err(_) => return self.refuse(wire::notify::INVALID_SYNTAX),
            }
            if let Payload::Notify { kind, data, .. } = p {
                if *kind == notify::GROUP_SENDER {
                    // The data is a 4-octet count of Sender-IDs wanted (section 4.7.4); one
                    // is allocated whatever the count (a policy bound of one, section 2.5.1).
                    if data.len() != 4 {
                        return self.refuse(wire::notify::INVALID_SYNTAX);
                    }
                    sender = true;
                }
            }
        }
        match idg {
            Some(g) if g == self.cfg.group => {}
            _ => return self.refuse(notify::INVALID_GROUP_ID),
        }
        if !self.cfg.members.contains(peer) {
            return self.refuse(notify::AUTHORIZATION_FAILED);
        }
        let idx = match self.members.iter().position(|m| &m.id == peer) {
            Some(i) => i,
            None => {
                let mut k = Zeroizing::new([0u8; KEK_LEN]);
                self.rng.fill_bytes(k.as_mut());
                let kek =
                    Kek::new(self.next_kek_id, k.as_ref()).ok_or(notify::REGISTRATION_FAILED)?;
                self.next_kek_id = self.next_kek_id.wrapping_add(1).max(1);
                self.members.push(MemberEntry {
                    id: peer.clone(),
                    kek,
                    sender,
                    sender_id: None,
                    registered: false,
                    removed: false,
                });
                self.members.len().saturating_sub(1)
            }
        };
        if self.members.get(idx).is_some_and(|m| m.removed) {
            return self.refuse(notify::AUTHORIZATION_FAILED);
        }
        // A new Sender-ID for every registration of a sender, never one given before.
        let mut sender_id = None;
        if sender {
            if self.next_sender_id >= self.sender_id_space() {
                self.stats.sender_id_exhausted = self.stats.sender_id_exhausted.saturating_add(1);
                // Section 2.5.1: no new Sender-ID before every member is excluded; the next
                // poll starts the group over.
                self.restart_due = true;
                self.rekey_at = now;
                return self.refuse(notify::REGISTRATION_FAILED);
            }
            sender_id = Some(self.next_sender_id);
            self.next_sender_id = self.next_sender_id.saturating_add(1);
        }
        if let Some(m) = self.members.get_mut(idx) {
            m.registered = true;
            m.sender = sender;
            m.sender_id = sender_id;
        }
        self.stats.registered = self.stats.registered.saturating_add(1);
        let mut out = vec![GroupPayload::IdG(self.cfg.group.clone()).to_payload()];
        out.push(GroupPayload::Gsa(self.gsa(now)).to_payload());
        out.push(GroupPayload::Kd(self.registration_kd(idx, default_kek)).to_payload());
        Ok(out)
    }

    fn refuse(&mut self, n: u16) -> Result<Vec<Payload>, Refusal> {
        self.stats.refused = self.stats.refused.saturating_add(1);
        Err(n)
    }

    /// Removes a member: it is sent nothing more, and the next rekey (now) excludes it and
    /// replaces the Rekey SA. Returns the GSA_REKEY messages for the remaining members.
    pub fn remove_member(&mut self, now: Instant, id: &Id) -> Vec<Outbound> {
        let mut found = false;
        for m in self.members.iter_mut().filter(|m| &m.id == id) {
            m.removed = true;
            found = true;
        }
        if !found {
            return Vec::new();
        }
        self.rekey(now, true)
    }

    /// When [`poll`](Self::poll) next has work.
    pub fn deadline(&self) -> Instant {
        self.rekey_at
    }

    /// Rekeys (or starts the group over) when due: the GSA_REKEY messages for every member.
    pub fn poll(&mut self, now: Instant) -> Vec<Outbound> {
        if now < self.rekey_at {
            Vec::new()
        } else if self.restart_due {
            self.restart(now)
        } else {
            self.rekey(now, false)
        }
    }

    /// Starts the group over (section 2.4.3; section 2.5.1 when the Sender-IDs run out): a
    /// GSA_REKEY under the current Rekey SA with Delete(ESP, SPI 0) and Delete(GIKE_UPDATE,
    /// SPI 0) excludes every member, which must register again. The GCKS then holds a new
    /// Rekey SA, a new Data-Security SA (the old ones are not offered to anyone again, so the
    /// Sender-ID counter restarts at zero with no ID used twice under one key); a member keeps
    /// its KWK (its re-registration delivers it again). Members keep receiving on the
    /// old SA until they re-register; packets between a re-registered member and one not yet
    /// are lost for that spread.
    pub fn restart(&mut self, now: Instant) -> Vec<Outbound> {
        self.restart_due = false;
        let message_id = self.next_message_id;
        let inner = [
            Payload::Delete {
                protocol: proto::ESP,
                spis: vec![vec![0; 4]],
            },
            Payload::Delete {
                protocol: proto::GIKE_UPDATE,
                spis: vec![vec![0; 16]],
            },
        ];
        let spi = self.rekey_spi;
        let msg: Arc<[u8]> = Arc::from(rekey::seal(
            &spi,
            message_id,
            &mut self.rekey_cipher,
            &inner,
        ));
        let out: Vec<Outbound> = if msg.is_empty() {
            Vec::new()
        } else {
            self.members
                .iter()
                .filter(|m| m.registered && !m.removed)
                .map(|m| Outbound {
                    to: m.id.clone(),
                    msg: Arc::clone(&msg),
                })
                .collect()
        };
        if let Ok((spi, keymat, cipher, kwk)) = new_rekey_sa(&mut self.rng) {
            self.rekey_spi = spi;
            self.rekey_keymat = keymat;
            self.rekey_cipher = cipher;
            self.rekey_kwk = kwk;
            self.next_message_id = 1;
        }
        for m in &mut self.members {
            m.registered = false;
            m.sender_id = None;
        }
        self.next_sender_id = 0;
        self.gens.clear();
        self.new_generation(now);
        self.stats.restarts = self.stats.restarts.saturating_add(1);
        self.stats.rekey_messages = self
            .stats
            .rekey_messages
            .saturating_add(u64::try_from(out.len()).unwrap_or(u64::MAX));
        out
    }

    /// A new generation now, and the GSA_REKEY messages that deliver it to every registered
    /// member (the same messages to each, in order). With `replace_rekey_sa` (a removal) the
    /// Rekey SA is replaced first, its new key wrapped under each remaining member's own KWK.
    pub fn rekey(&mut self, now: Instant, replace_rekey_sa: bool) -> Vec<Outbound> {
        self.new_generation(now);
        self.stats.rekeys = self.stats.rekeys.saturating_add(1);
        let mut msgs = Vec::new();
        if replace_rekey_sa {
            if let Ok((spi, keymat, cipher, kwk)) = new_rekey_sa(&mut self.rng) {
                let old_spi = self.rekey_spi;
                let message_id = self.next_message_id;
                // The new Rekey SA's first message has Message ID 1.
                self.rekey_spi = spi;
                self.next_message_id = 1;
                let policy = self.rekey_policy(false);
                let attrs = self
                    .members
                    .iter()
                    .filter(|m| m.registered && !m.removed)
                    .map(|m| Attr::tlv(group_key_attr::SA_KEY, m.kek.wrap(&keymat).to_bytes()))
                    .collect();
                let inner = [
                    GroupPayload::Gsa(Gsa {
                        policies: vec![policy],
                    })
                    .to_payload(),
                    GroupPayload::Kd(Kd {
                        bags: vec![KeyBag::Group {
                            protocol: proto::GIKE_UPDATE,
                            spi: spi.to_vec(),
                            attrs,
                        }],
                    })
                    .to_payload(),
                ];
                // Under the old Rekey SA; everything after under the new.
                msgs.push(rekey::seal(
                    &old_spi,
                    message_id,
                    &mut self.rekey_cipher,
                    &inner,
                ));
                self.rekey_keymat = keymat;
                self.rekey_cipher = cipher;
                self.rekey_kwk = kwk;
            }
        }
        let message_id = self.next_message_id;
        self.next_message_id = self.next_message_id.saturating_add(1);
        let mut policies = self.data_policies(false, true, now);
        policies.push(self.gw_policy());
        let inner = [
            GroupPayload::Gsa(Gsa { policies }).to_payload(),
            GroupPayload::Kd(Kd {
                bags: self.data_key_bags(false, &self.rekey_kwk),
            })
            .to_payload(),
        ];
        let spi = self.rekey_spi;
        msgs.push(rekey::seal(
            &spi,
            message_id,
            &mut self.rekey_cipher,
            &inner,
        ));
        // An empty message: the Rekey SA's IV space is used up (it seals nothing then).
        msgs.retain(|m| !m.is_empty());
        let msgs: Vec<Arc<[u8]>> = msgs.into_iter().map(Arc::from).collect();
        let mut out = Vec::new();
        for m in self.members.iter().filter(|m| m.registered && !m.removed) {
            for msg in &msgs {
                out.push(Outbound {
                    to: m.id.clone(),
                    msg: Arc::clone(msg),
                });
            }
        }
        self.stats.rekey_messages = self
            .stats
            .rekey_messages
            .saturating_add(u64::try_from(out.len()).unwrap_or(u64::MAX));
        out
    }

    /// A Data-Security SA's transforms (section 4.4.2.1: ENCR and SN mandatory for ESP): AES-
    /// GCM-16 (explicit IV: section 2.7 forbids implicit-IV transforms), and "32-bit Unspecified
    /// Numbers" since many senders share the SA (section 4.4.2.1.3).
    fn transforms(&self) -> Vec<Transform> {
        vec![
            Transform {
                kind: wire::transform::ENCR,
                id: wire::transform::ENCR_AES_GCM_16,
                key_len: Some(self.cfg.key_bits),
            },
            Transform {
                kind: gtransform::SN,
                id: gtransform::SN_32BIT_UNSPECIFIED,
                key_len: None,
            },
        ]
    }

    /// The GSA payload of a registration: the Rekey SA, every live Data-Security SA (newest
    /// last), the GW policy.
    fn gsa(&self, now: Instant) -> Gsa {
        let mut policies = vec![self.rekey_policy(true)];
        policies.extend(self.data_policies(true, true, now));
        policies.push(self.gw_policy());
        Gsa { policies }
    }

    /// The Rekey SA's policy: ENCR (AEAD, so no INTEG), GCAUTH only at registration (section
    /// 4.4.2.1), KWA; its selectors name UDP from any address, to any address (unicast
    /// delivery: each member at its own) or to the group's multicast address, port 500.
    fn rekey_policy(&self, registration: bool) -> GroupPolicy {
        let mut transforms = vec![Transform {
            kind: wire::transform::ENCR,
            id: wire::transform::ENCR_AES_GCM_16,
            key_len: Some(256),
        }];
        if registration {
            transforms.push(Transform {
                kind: gtransform::GCAUTH,
                id: gtransform::GCAUTH_IMPLICIT,
                key_len: None,
            });
        }
        transforms.push(Transform {
            kind: gtransform::KWA,
            id: gtransform::KW_5649_256,
            key_len: None,
        });
        GroupPolicy::Rekey {
            spi: self.rekey_spi,
            src: any_udp(),
            dst: match self.cfg.delivery.multicast() {
                Some(a) => TrafficSelector {
                    protocol: 17,
                    start_port: REKEY_PORT,
                    end_port: REKEY_PORT,
                    start: a,
                    end: a,
                },
                None => any_udp(),
            },
            transforms,
            attrs: vec![
                lifetime_attr(self.cfg.lifetime),
                Attr::tlv(
                    gsa_attr::GSA_INITIAL_MESSAGE_ID,
                    self.next_message_id.to_be_bytes().to_vec(),
                ),
            ],
        }
    }

    /// The generations a message carries: all live ones at registration, the newest in a rekey.
    fn gens_for(&self, registration: bool) -> Vec<&Generation> {
        if registration {
            self.gens.iter().collect()
        } else {
            self.gens.last().into_iter().collect()
        }
    }

    /// With `next`, the newest SA's policy names the SPI reserved for its successor.
    fn data_policies(&self, registration: bool, next: bool, now: Instant) -> Vec<GroupPolicy> {
        let newest = self.current_spi();
        self.gens_for(registration)
            .into_iter()
            .map(|g| {
                let mut attrs = vec![lifetime_attr(g.expires.saturating_duration_since(now))];
                if next && Some(g.spi) == newest && self.next_spi != 0 {
                    attrs.push(Attr::tlv(
                        gsa_attr::GSA_NEXT_SPI,
                        self.next_spi.to_be_bytes().to_vec(),
                    ));
                }
                GroupPolicy::Data {
                    protocol: proto::ESP,
                    spi: g.spi,
                    src: self.cfg.src,
                    dst: self.cfg.dst,
                    transforms: self.transforms(),
                    attrs,
                }
            })
            .collect()
    }

    fn gw_policy(&self) -> GroupPolicy {
        GroupPolicy::GroupWide {
            attrs: vec![
                Attr::tv(gwp_attr::GWP_ATD, secs16(self.cfg.atd)),
                Attr::tv(gwp_attr::GWP_DTD, secs16(self.cfg.dtd)),
                Attr::tv(
                    gwp_attr::GWP_SENDER_ID_BITS,
                    u16::from(self.cfg.sender_id_bits),
                ),
            ],
        }
    }

    /// Group Key Bags of the Data-Security SAs, each SA_KEY wrapped under `kwk`.
    fn data_key_bags(&self, registration: bool, kwk: &Kek) -> Vec<KeyBag> {
        self.gens_for(registration)
            .into_iter()
            .map(|g| KeyBag::Group {
                protocol: proto::ESP,
                spi: g.spi.to_be_bytes().to_vec(),
                attrs: vec![Attr::tlv(
                    group_key_attr::SA_KEY,
                    kwk.wrap(&g.keymat).to_bytes(),
                )],
            })
            .collect()
    }

    /// The KD payload of a registration of member `idx`, every key wrapped under the IKE
    /// SA's default KWK: the Rekey SA's key material, the Data-Security SAs' keys, and the
    /// member's own bag (its KWK and its Sender-ID: section 4.5.3 sends the Member Key Bag at
    /// registration only).
    fn registration_kd(&self, idx: usize, kek: &Kek) -> Kd {
        let mut bags = vec![KeyBag::Group {
            protocol: proto::GIKE_UPDATE,
            spi: self.rekey_spi.to_vec(),
            attrs: vec![Attr::tlv(
                group_key_attr::SA_KEY,
                kek.wrap(&self.rekey_keymat).to_bytes(),
            )],
        }];
        bags.extend(self.data_key_bags(true, kek));
        if let Some(m) = self.members.get(idx) {
            let mut attrs = vec![Attr::tlv(
                member_key_attr::WRAP_KEY,
                kek.wrap_key(m.kek.id, m.kek.key_bytes()).to_bytes(),
            )];
            if let Some(s) = m.sender_id {
                attrs.push(Attr::tlv(
                    member_key_attr::GM_SENDER_ID,
                    s.to_be_bytes().to_vec(),
                ));
            }
            bags.push(KeyBag::Member { attrs });
        }
        Kd { bags }
    }
}

/// GSA_KEY_LIFETIME: 4 octets of seconds (section 4.4.2.2.1).
fn lifetime_attr(d: Duration) -> Attr {
    let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    Attr::tlv(gsa_attr::GSA_KEY_LIFETIME, secs.to_be_bytes().to_vec())
}

/// A traffic selector for UDP from or to any IPv4 address and port.
/// The UDP port multicast rekeys go to: the members' IKE port, where their data planes punt.
pub const REKEY_PORT: u16 = 500;

fn any_udp() -> TrafficSelector {
    TrafficSelector {
        protocol: 17,
        start_port: 0,
        end_port: 65535,
        start: core::net::IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
        end: core::net::IpAddr::V4(core::net::Ipv4Addr::BROADCAST),
    }
}

fn secs16(d: Duration) -> u16 {
    u16::try_from(d.as_secs()).unwrap_or(u16::MAX)
}

type RekeySa = ([u8; 16], Secret, SkCipher, Kek);

/// A Rekey SA: a random 16-octet SPI and its key material GSK_e | GSK_w.
fn new_rekey_sa(rng: &mut ChaCha20Rng) -> Result<RekeySa, &'static str> {
    let mut spi = [0u8; 16];
    rng.fill_bytes(&mut spi);
    let mut km = Zeroizing::new(vec![0u8; REKEY_KEYMAT_LEN]);
    rng.fill_bytes(&mut km);
    let (e, w) = split_rekey_keymat(&km).ok_or("rekey SA key material")?;
    let c = SkCipher::new(e).ok_or("rekey SA cipher")?;
    let kwk = Kek::new(0, w).ok_or("rekey SA GSK_w")?;
    Ok((spi, km, c, kwk))
}

/// GSK_e and GSK_w of Rekey SA key material of the right length.
pub fn split_rekey_keymat(km: &[u8]) -> Option<(&[u8], &[u8])> {
    (km.len() == REKEY_KEYMAT_LEN).then(|| km.split_at(REKEY_GSK_E_LEN))
}
