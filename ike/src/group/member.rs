//! A group member (GM, RFC 9838 section 1.2), sans-IO on virtual time: the initiator side of
//! GSA_AUTH / GSA_REGISTRATION (section 2.3), GSA_REKEY processing (section 2.4.1) with replay
//! refusal, and the Data-Security SAs it holds with their activation and deactivation times:
//! a new SA is installed for receiving at once, used for sending after GWP_ATD; the SA it
//! replaces is kept for receiving until GWP_DTD after the rekey arrived. With ATD above the
//! spread of the rekey's arrival at the members, and DTD at least ATD, there is no moment a
//! sender uses an SA some receiver lacks.
//!
//! Owns: the member's KEK, Rekey SA, Data-Security SAs and their Sender-IDs.
//! Must never: accept a GSA_REKEY twice or out of order; send on an SA without its own
//! Sender-ID; keep a key past its SA; print a key.

use core::time::Duration;

use crate::crypto::{Secret, SkCipher};
use crate::group::gcks::{split_rekey_keymat, REKEY_KEYMAT_LEN};
use crate::group::keys::{gcm_keymat_len, Kek, KEK_LEN};
use crate::group::rekey::{self, RekeyError};
use crate::group::wire::{
    find_attr, group_key_attr, gsa_attr, gwp_attr, member_key_attr, notify, proto,
    transform as gtransform, GroupPayload, GroupPolicy, KeyBag, WrappedKey,
};
use crate::time::Instant;
use crate::wire::{self, Id, Payload};

/// A Data-Security SA as a member holds it.
pub struct MemberSa {
    pub spi: u32,
    pub keymat: Secret,
    /// This member's Sender-ID (senders only): the one from its registration, used on every
    /// Data-Security SA (RFC 9838 section 2.5.2).
    pub sender_id: Option<u32>,
    pub sender_id_bits: u8,
    /// From when this member sends on it.
    pub active_from: Instant,
    /// Until when this member accepts packets on it (set when a newer SA arrives).
    pub until: Option<Instant>,
    /// Its hard expiry (GSA_KEY_LIFETIME, section 4.4.2.2.1), when the GCKS gave one: a
    /// member that holds no newer SA by then has missed the rekeys.
    pub expires: Option<Instant>,
}

impl core::fmt::Debug for MemberSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemberSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("sender_id", &self.sender_id)
            .field("active_from", &self.active_from)
            .field("until", &self.until)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

struct RekeySa {
    spi: [u8; 16],
    cipher: SkCipher,
    /// GSK_w: the KWK of keys a GSA_REKEY on this SA carries (section 3.1.1).
    kwk: Kek,
    /// The last Message ID accepted (the initial one minus one before any).
    last: u32,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    pub rekeys: u64,
    /// Exclusions by the GCKS (a Delete of the Rekey SA with SPI zero).
    pub excluded: u64,
    pub replays: u64,
    pub refused: u64,
    /// GSA_REKEYs whose Message ID jumped over one or more (rekeys lost on the way).
    pub gaps: u64,
}

pub struct Member {
    group: Id,
    sender: bool,
    /// From the latest registration (GM_SENDER_ID; rekeys carry none).
    sender_id: Option<u32>,
    kek: Option<Kek>,
    rekey: Option<RekeySa>,
    sas: Vec<MemberSa>,
    atd: Duration,
    dtd: Duration,
    /// GWP_SENDER_ID_BITS from the last GW policy.
    bits: u8,
    /// GSA_NEXT_SPI of the newest Data-Security SA (section 4.4.2.2.3): SPIs the GCKS reserved
    /// for the SA replacing it; traffic on one without a rekey here means a rekey was lost.
    next_spis: Vec<u32>,
    /// The multicast address the Rekey SA's destination selector names (RFC 9838 4.4.2):
    /// rekeys come there (UDP port 500) as well as, or instead of, to our own address.
    rekey_multicast: Option<core::net::IpAddr>,
    /// Why this member should register again, once told ([`take_reregister`](Self::take_reregister)).
    reregister: Option<RegisterWhy>,
    stats: MemberStats,
}

/// Why a member that holds keys registers again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterWhy {
    /// A GSA_REKEY's Message ID jumped: the ones between were lost (section 2.4.1.4 orders
    /// them; a registration returns every live SA, the missed one too).
    RekeyGap { expected: u32, got: u32 },
    /// Our Sender-ID does not fit the new GWP_SENDER_ID_BITS (section 2.5.2).
    SenderIdUnfit { sender_id: u32, bits: u8 },
}

impl core::fmt::Debug for Member {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.group.display())
            .field("sas", &self.sas)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a message to check is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A GSA_AUTH / GSA_REGISTRATION response: everything, with the Member Key Bag.
    Registration,
    /// A GSA_INBAND_REKEY: everything as in a registration, no Member Key Bag.
    Inband,
    /// A GSA_REKEY: a new Rekey SA, new Data-Security SAs, or both.
    Rekey,
}

/// What a registration response or rekey carried, checked.
struct Update {
    rekey: Option<([u8; 16], u32, Secret)>,
    rekey_multicast: Option<core::net::IpAddr>,
    /// SPI, key, lifetime left.
    data: Vec<(u32, Secret, Option<Duration>)>,
    next_spis: Vec<u32>,
    sender_id: Option<u32>,
    atd: Option<Duration>,
    dtd: Option<Duration>,
    bits: Option<u8>,
    kek: Option<Kek>,
}

impl Member {
    pub fn new(group: Id, sender: bool) -> Member {
        Member {
            group,
            sender,
            sender_id: None,
            kek: None,
            rekey: None,
            sas: Vec::new(),
            atd: Duration::ZERO,
            dtd: Duration::ZERO,
            bits: 0,
            next_spis: Vec::new(),
            rekey_multicast: None,
            reregister: None,
            stats: MemberStats::default(),
        }
    }

    /// The group's multicast address for rekeys, if its Rekey SA names one.
    pub fn rekey_multicast(&self) -> Option<core::net::IpAddr> {
        self.rekey_multicast
    }

    /// The SPIs the GCKS reserved for the next Data-Security SA (GSA_NEXT_SPI of the newest).
    pub fn next_spis(&self) -> &[u32] {
        &self.next_spis
    }

    /// Why this member should register again (a gap in the rekeys' Message IDs, a Sender-ID
    /// that no longer fits), once: the caller registers.
    pub fn take_reregister(&mut self) -> Option<RegisterWhy> {
        self.reregister.take()
    }

    pub fn stats(&self) -> MemberStats {
        self.stats
    }

    /// The group.
    pub fn group(&self) -> &Id {
        &self.group
    }

    /// The Rekey SA's SPI, once registered (a GSA_REKEY's header carries it).
    pub fn rekey_spi(&self) -> Option<[u8; 16]> {
        self.rekey.as_ref().map(|r| r.spi)
    }

    /// A GSA_INBAND_REKEY's payloads (RFC 9838 section 2.4.2: processed as a registration's
    /// GSA and KD, keys under the registration IKE SA's default KWK `default_kek`); the
    /// Sender-ID and this member's KWK stay those of its registration. New SAs are used for
    /// sending after the ATD, as from a GSA_REKEY.
    pub fn on_inband(
        &mut self,
        now: Instant,
        default_kek: &Kek,
        payloads: &[Payload],
    ) -> Result<(), RekeyError> {
        if self.kek.is_none() {
            self.stats.refused = self.stats.refused.saturating_add(1);
            return Err(RekeyError::Policy("in-band rekey before a registration"));
        }
        let u = self
            .check(&[default_kek], payloads, Mode::Inband)
            .inspect_err(|e| {
                self.stats.refused = self.stats.refused.saturating_add(1);
                if let RekeyError::SenderIdUnfit { sender_id, bits } = *e {
                    self.reregister = Some(RegisterWhy::SenderIdUnfit { sender_id, bits });
                }
            })?;
        // Every live SA came: nothing missed is left to register for.
        self.reregister = None;
        self.apply(now, u, false);
        self.stats.rekeys = self.stats.rekeys.saturating_add(1);
        Ok(())
    }

    pub fn sas(&self) -> &[MemberSa] {
        &self.sas
    }

    /// The payloads of a GSA_AUTH / GSA_REGISTRATION request (inside SK): IDg, and
    /// GROUP_SENDER when this member sends (its data: a 4-octet count of Sender-IDs, one).
    pub fn registration_request(&self) -> Vec<Payload> {
        let mut v = vec![GroupPayload::IdG(self.group.clone()).to_payload()];
        if self.sender {
            v.push(Payload::notify(
                notify::GROUP_SENDER,
                1u32.to_be_bytes().to_vec(),
            ));
        }
        v
    }

    /// The GCKS's response; `default_kek` is the registration IKE SA's.
    pub fn on_registration(
        &mut self,
        now: Instant,
        default_kek: &Kek,
        response: &[Payload],
    ) -> Result<(), RekeyError> {
        let mut u = self
            .check(&[default_kek], response, Mode::Registration)
            .inspect_err(|_| {
                self.stats.refused = self.stats.refused.saturating_add(1);
            })?;
        self.kek = u.kek.take();
        self.sender_id = u.sender_id;
        self.reregister = None;
        // SAs being retired (after an exclusion) stay for receiving until their DTD ends;
        // the rest are replaced by what the GCKS listed.
        self.sas.retain(|s| s.until.is_some_and(|t| now < t));
        self.apply(now, u, true);
        Ok(())
    }

    /// A GSA_REKEY from the network.
    pub fn on_rekey(&mut self, now: Instant, msg: &[u8]) -> Result<(), RekeyError> {
        let r = self.on_rekey_inner(now, msg);
        match &r {
            Err(RekeyError::Replay { .. }) => {
                self.stats.replays = self.stats.replays.saturating_add(1);
            }
            Err(RekeyError::SenderIdUnfit { sender_id, bits }) => {
                self.stats.refused = self.stats.refused.saturating_add(1);
                self.reregister = Some(RegisterWhy::SenderIdUnfit {
                    sender_id: *sender_id,
                    bits: *bits,
                });
            }
            Err(_) => self.stats.refused = self.stats.refused.saturating_add(1),
            Ok(()) => self.stats.rekeys = self.stats.rekeys.saturating_add(1),
        }
        r
    }

    fn on_rekey_inner(&mut self, now: Instant, msg: &[u8]) -> Result<(), RekeyError> {
        let h = rekey::header(msg)?;
        let rs = self.rekey.as_ref().ok_or(RekeyError::UnknownSpi)?;
        if (h.spi_i, h.spi_r) != rekey::spi_halves(&rs.spi) {
            return Err(RekeyError::UnknownSpi);
        }
        // Authenticate first, then the replay check: an unauthenticated Message ID moves nothing.
        let inner = rekey::open(msg, &rs.cipher)?;
        if h.message_id <= rs.last {
            return Err(RekeyError::Replay {
                got: h.message_id,
                last: rs.last,
            });
        }
        // Delete(GIKE_UPDATE, SPI 0): this member is excluded and must register again
        // (section 2.4.3); the Data-Security SAs go after the DTD, so it keeps receiving until
        // then, and may send on them until it registers again (its Sender-ID on them is its
        // own under their key).
        let excluded = inner.iter().any(|p| {
            matches!(p, Payload::Delete { protocol, spis }
                if *protocol == proto::GIKE_UPDATE && spis.iter().any(|s| s.iter().all(|b| *b == 0)))
        });
        if excluded {
            let until = now.saturating_add(self.dtd);
            for sa in &mut self.sas {
                sa.until = Some(sa.until.map_or(until, |u| u.min(until)));
            }
            self.rekey = None;
            self.stats.excluded = self.stats.excluded.saturating_add(1);
            return Ok(());
        }
        let kek = self.kek.as_ref().ok_or(RekeyError::Policy("no KEK"))?;
        let u = self.check(&[&rs.kwk, kek], &inner, Mode::Rekey)?;
        let expected = rs.last.saturating_add(1);
        if h.message_id > expected {
            // Section 2.4.1.4: each rekey's Message ID is one above the last one's, so the
            // ones between never came; a registration gets every live SA.
            self.stats.gaps = self.stats.gaps.saturating_add(1);
            self.reregister = Some(RegisterWhy::RekeyGap {
                expected,
                got: h.message_id,
            });
        }
        if let Some(rs) = self.rekey.as_mut() {
            rs.last = h.message_id;
        }
        self.apply(now, u, false);
        Ok(())
    }

    /// Parses and checks a GSA + KD: every SA has its key, wrapped under one of `keks` (the
    /// IKE SA's default KWK at registration; the Rekey SA's GSK_w or this member's own KWK in
    /// a GSA_REKEY), and keys unwrap.
    fn check(&self, keks: &[&Kek], payloads: &[Payload], mode: Mode) -> Result<Update, RekeyError> {
        // Everything comes (a registration or in-band rekey); the Member Key Bag comes.
        let full = mode != Mode::Rekey;
        let registration = mode == Mode::Registration;
        let mut gsa = None;
        let mut kd = None;
        for p in payloads {
            match GroupPayload::from_payload(p)? {
                Some(GroupPayload::IdG(g)) if g != self.group => {
                    return Err(RekeyError::Policy("another group"))
                }
                Some(GroupPayload::Gsa(g)) => gsa = Some(g),
                Some(GroupPayload::Kd(k)) => kd = Some(k),
                _ => {}
            }
        }
        let gsa = gsa.ok_or(RekeyError::Missing("GSA"))?;
        let kd = kd.ok_or(RekeyError::Missing("KD"))?;
        let mut u = Update {
            rekey: None,
            rekey_multicast: None,
            data: Vec::new(),
            next_spis: Vec::new(),
            sender_id: None,
            atd: None,
            dtd: None,
            bits: None,
            kek: None,
        };
        let key_of = |proto_id: u8, spi: &[u8]| -> Result<Secret, RekeyError> {
            for b in &kd.bags {
                if let KeyBag::Group {
                    protocol,
                    spi: s,
                    attrs,
                } = b
                {
                    if *protocol == proto_id && s.as_slice() == spi {
                        // Several SA_KEY attributes may come (GIKE_UPDATE in a GSA_REKEY):
                        // the one wrapped under a key this member holds is ours.
                        let mut any = false;
                        for a in attrs.iter().filter(|a| a.kind == group_key_attr::SA_KEY) {
                            any = true;
                            let w = WrappedKey::parse(
                                a.bytes().ok_or(RekeyError::Policy("SA_KEY format"))?,
                            )?;
                            // SA_KEY holds SA key material: Key ID 0 (section 4.5.2.1).
                            if w.key_id != 0 {
                                return Err(RekeyError::Policy("SA_KEY with a Key ID"));
                            }
                            if let Some(k) = keks.iter().find(|k| k.id == w.kwk_id) {
                                return Ok(k.unwrap(&w)?);
                            }
                        }
                        return Err(if any {
                            RekeyError::NoKey
                        } else {
                            RekeyError::Missing("SA_KEY")
                        });
                    }
                }
            }
            Err(RekeyError::Missing("key bag"))
        };
        let mut key_bits = None;
        for p in &gsa.policies {
            match p {
                GroupPolicy::Rekey {
                    spi, attrs, dst, ..
                } => {
                    // One multicast address (a group's, not a member's): listen there too.
                    u.rekey_multicast =
                        (dst.start == dst.end && dst.start.is_multicast()).then_some(dst.start);
                    let first = find_attr(attrs, gsa_attr::GSA_INITIAL_MESSAGE_ID)
                        .and_then(|a| a.as_u64())
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(1);
                    let km = key_of(proto::GIKE_UPDATE, spi)?;
                    if km.len() != REKEY_KEYMAT_LEN {
                        return Err(RekeyError::Policy("rekey SA key length"));
                    }
                    u.rekey = Some((*spi, first, km));
                }
                GroupPolicy::Data {
                    protocol,
                    spi,
                    transforms,
                    attrs,
                    ..
                } => {
                    // AES-GCM-16 only (explicit IV) and the mandatory Sequence Numbers
                    // transform (section 4.4.2.1); anything else is refused.
                    let mut encr = None;
                    let mut sn = false;
                    for t in transforms {
                        match t.kind {
                            wire::transform::ENCR
                                if encr.is_none() && t.id == wire::transform::ENCR_AES_GCM_16 =>
                            {
                                encr = Some(t)
                            }
                            gtransform::SN
                                if !sn
                                    && matches!(
                                        t.id,
                                        gtransform::SN_32BIT_SEQUENTIAL
                                            | gtransform::SN_32BIT_UNSPECIFIED
                                    ) =>
                            {
                                sn = true
                            }
                            _ => return Err(RekeyError::Policy("data SA transform")),
                        }
                    }
                    let t = match (encr, sn) {
                        (Some(t), true) => t,
                        _ => return Err(RekeyError::Policy("data SA transforms missing")),
                    };
                    let bits = t.key_len.ok_or(RekeyError::Policy("key length"))?;
                    if *protocol != proto::ESP || !matches!(bits, 128 | 256) {
                        return Err(RekeyError::Policy("data SA protocol or key length"));
                    }
                    let km = key_of(proto::ESP, &spi.to_be_bytes())?;
                    if km.len() != gcm_keymat_len(bits) {
                        return Err(RekeyError::Policy("data SA key length"));
                    }
                    key_bits = Some(bits);
                    // GSA_KEY_LIFETIME: seconds left (section 4.4.2.2.1).
                    let life = find_attr(attrs, gsa_attr::GSA_KEY_LIFETIME)
                        .and_then(|a| a.as_u64())
                        .map(Duration::from_secs);
                    // GSA_NEXT_SPI (section 4.4.2.2.3, best effort): the newest SA's count.
                    u.next_spis = attrs
                        .iter()
                        .filter(|a| a.kind == gsa_attr::GSA_NEXT_SPI)
                        .filter_map(|a| a.bytes())
                        .filter_map(|b| <[u8; 4]>::try_from(b).ok())
                        .map(u32::from_be_bytes)
                        .collect();
                    u.data.push((*spi, km, life));
                }
                GroupPolicy::GroupWide { attrs } => {
                    let secs = |k| {
                        find_attr(attrs, k)
                            .and_then(|a| a.as_u64())
                            .map(Duration::from_secs)
                    };
                    u.atd = secs(gwp_attr::GWP_ATD);
                    u.dtd = secs(gwp_attr::GWP_DTD);
                    u.bits = Some(
                        find_attr(attrs, gwp_attr::GWP_SENDER_ID_BITS)
                            .and_then(|a| a.as_u64())
                            .and_then(|v| u8::try_from(v).ok())
                            .unwrap_or(0),
                    );
                }
            }
        }
        // A registration brings everything; a rekey a new Rekey SA, new Data-Security SAs,
        // or both (section 4.4.1: at least one of them).
        if (full || u.rekey.is_none()) && (u.data.is_empty() || key_bits.is_none()) {
            return Err(RekeyError::Missing("Data-Security SA"));
        }
        if full && u.rekey.is_none() {
            return Err(RekeyError::Missing("Rekey SA"));
        }
        let bits = match (u.bits, full) {
            (Some(b), _) => b,
            (None, false) => self.bits,
            (None, true) => return Err(RekeyError::Missing("GW policy")),
        };
        if !u.data.is_empty() && !(1..=16).contains(&bits) {
            return Err(RekeyError::Policy("sender-id bits"));
        }
        u.bits = Some(bits);
        for b in &kd.bags {
            if let KeyBag::Member { attrs } = b {
                for a in attrs {
                    let Some(v) = a.bytes() else {
                        continue;
                    };
                    match a.kind {
                        // Section 4.5.3.3: registration only; the value is the Sender-ID
                        // (4 octets here: the RFC gives no width, GROUP_SENDER's count is 4).
                        member_key_attr::GM_SENDER_ID if registration => {
                            let sid = u32::from_be_bytes(
                                <[u8; 4]>::try_from(v)
                                    .map_err(|_| RekeyError::Policy("GM_SENDER_ID"))?,
                            );
                            if u64::from(sid) >> bits != 0 {
                                return Err(RekeyError::Policy("Sender-ID wider than its bits"));
                            }
                            // One is asked for; the first is used.
                            u.sender_id.get_or_insert(sid);
                        }
                        // Section 4.5.3.1: a wrapped key with a non-zero Key ID (the new KWK's
                        // id), wrapped under the default KWK of the IKE SA.
                        member_key_attr::WRAP_KEY if registration => {
                            let w = WrappedKey::parse(v)?;
                            let id = w.key_id;
                            let kek = keks.first().ok_or(RekeyError::Policy("no KWK"))?;
                            if w.kwk_id != kek.id {
                                return Err(RekeyError::Policy(
                                    "WRAP_KEY not under the IKE SA's KWK",
                                ));
                            }
                            let k = kek.unwrap(&w)?;
                            if id == 0 || k.len() != KEK_LEN {
                                return Err(RekeyError::Policy("WRAP_KEY"));
                            }
                            u.kek = Kek::new(id, &k);
                        }
                        member_key_attr::GM_SENDER_ID | member_key_attr::WRAP_KEY => {
                            return Err(RekeyError::Policy("member key bag in a rekey"));
                        }
                        _ => {}
                    }
                }
            }
        }
        if registration && u.kek.is_none() {
            return Err(RekeyError::Missing("WRAP_KEY"));
        }
        // A sender without a Sender-ID must not install the SAs (section 2.4.1.4).
        let held = if registration {
            u.sender_id
        } else {
            self.sender_id
        };
        if self.sender && !u.data.is_empty() {
            match held {
                None => return Err(RekeyError::Policy("no Sender-ID for a sender")),
                // Section 2.5.2: a fatal error, re-register (not in a registration's answer:
                // the GCKS gave this one with these bits, which is refused above).
                Some(s) if u64::from(s) >> bits != 0 => {
                    return Err(RekeyError::SenderIdUnfit { sender_id: s, bits })
                }
                Some(_) => {}
            }
        }
        Ok(u)
    }

    fn apply(&mut self, now: Instant, u: Update, registration: bool) {
        if let Some(a) = u.atd {
            self.atd = a;
        }
        if let Some(d) = u.dtd {
            self.dtd = d;
        }
        if let Some(b) = u.bits {
            self.bits = b;
        }
        if u.rekey.is_some() {
            self.rekey_multicast = u.rekey_multicast;
        }
        if let Some((spi, first, km)) = u.rekey {
            let changed = self.rekey.as_ref().is_none_or(|r| r.spi != spi);
            if changed {
                let keys = split_rekey_keymat(&km)
                    .and_then(|(e, w)| Some((SkCipher::new(e)?, Kek::new(0, w)?)));
                if let Some((cipher, kwk)) = keys {
                    self.rekey = Some(RekeySa {
                        spi,
                        cipher,
                        kwk,
                        last: first.saturating_sub(1),
                    });
                }
            }
        }
        let n = u.data.len();
        if n > 0 {
            self.next_spis = u.next_spis;
        }
        for (i, (spi, keymat, life)) in u.data.into_iter().enumerate() {
            let expires = life.map(|l| now.saturating_add(l));
            if let Some(s) = self.sas.iter_mut().find(|s| s.spi == spi) {
                s.expires = s.expires.or(expires);
                continue;
            }
            // At registration every SA listed is live: the newest is ours to send on after
            // the ATD (unless it is the only one: then at once), the older ones receive only.
            let newest = i.saturating_add(1) == n;
            let active_from = if registration && n == 1 {
                now
            } else {
                now.saturating_add(self.atd)
            };
            let until = if newest {
                None
            } else {
                Some(now.saturating_add(self.dtd))
            };
            let sender_id = self.sender_id;
            // A newer SA retires the ones we have: kept for receiving until the DTD.
            if newest {
                for old in self.sas.iter_mut().filter(|s| s.until.is_none()) {
                    old.until = Some(now.saturating_add(self.dtd));
                }
            }
            self.sas.push(MemberSa {
                spi,
                keymat,
                sender_id,
                sender_id_bits: self.bits,
                active_from,
                until,
                expires,
            });
        }
    }

    /// Whether this member must register (again): never registered, or excluded by the GCKS.
    pub fn must_register(&self) -> bool {
        self.rekey.is_none()
    }

    /// Drops SAs past their deactivation time.
    pub fn poll(&mut self, now: Instant) {
        self.sas.retain(|s| s.until.is_none_or(|u| now < u));
    }

    /// The SA to send on now: the newest active one with a Sender-ID of ours. An older SA
    /// stays the one to send on until the newer one's activation time.
    pub fn outbound(&self, now: Instant) -> Option<&MemberSa> {
        self.sas
            .iter()
            .filter(|s| s.sender_id.is_some() && s.active_from <= now)
            .filter(|s| s.until.is_none_or(|u| now < u))
            .max_by_key(|s| s.active_from)
    }

    /// The SA for an inbound packet with `spi`, if held now.
    pub fn inbound(&self, spi: u32, now: Instant) -> Option<&MemberSa> {
        self.sas
            .iter()
            .find(|s| s.spi == spi && s.until.is_none_or(|u| now < u))
    }
}
