//! A group member's data-plane side, sans-IO: the group keys the endpoint reports
//! (`ike::group::session::GroupEvent::Keys`: every SA of the group with its activation and
//! deactivation times) become the data plane's group updates (`proto::group`): a new
//! generation is installed at once (it receives), named the sender at its activation time
//! (the ATD after the rekey), deleted at its deactivation time (the DTD after it was
//! replaced). The data plane has no clock for these; this does, on the core's `now`.
//!
//! No loss across a rekey: every member receives on the new SA from the moment its keys
//! arrive and sends on it only after the ATD, which the GCKS sets above the spread of the
//! arrivals; the old SA is received on until the DTD, past the last packet sent on it.
//! No nonce twice: a generation is installed once (the data plane refuses the same SPI again:
//! its IV counter never restarts under a key); the Sender-ID comes from the GCKS, one per
//! registration, never given to two members (docs/group.md).
//!
//! Missed rekeys (RFC 9838; section numbers of draft-ietf-ipsecme-g-ikev2-23, which the RFC
//! Editor published as RFC 9838: docs/group.md): GSA_REKEY is one unacknowledged datagram
//! (section 2.4.1.3), so a member can lose one. It asks for a registration
//! ([`take_reregister`](MemberPlane::take_reregister); the core sends GSA_REGISTRATION over
//! the IKE SA, or starts a new one whose GSA_AUTH registers) when
//! - traffic arrives on the SPI the GCKS reserved for the next SA (GSA_NEXT_SPI, section
//!   4.4.2.2.3: "the GM SHOULD re-register") before that SA's rekey came here: the others
//!   already send on it (their ATD passed), so this is the quickest sign;
//! - the newest SA nears its hard expiry (GSA_KEY_LIFETIME, section 4.4.2.2.1) with no newer
//!   one: half the lead the GCKS showed at the last rekey (the old SA's lifetime left when
//!   the new one came) before the end, or a quarter of its lifetime at install (at most
//!   30 s) before any rekey was seen; then again with a backoff (2 s doubling to 60 s) while
//!   no newer SA comes;
//! - the data plane restarted (its group SAs, their IV counters and windows are gone): the
//!   generations cannot come back with the same Sender-ID (a restarted counter would repeat
//!   IVs under the same key), a registration gives a new one (section 2.5.1);
//! - (the endpoint's reasons, `GroupEvent::MustRegister`: a Message ID gap, a Sender-ID
//!   that no longer fits.)
//!
//! A registration answers every live SA: what is missing is installed then, so the member
//! receives again from that moment and sends on the newest at its activation time.
//!
//! Owns: which generations are installed, the pending send/delete times, the group's SPD
//! rules and tunnel endpoints, the watch for missed rekeys.
//! Must never: read a clock; log a key; install a generation twice; install one for sending
//! with a (SPI, Sender-ID) it was sending with before (the data plane's counter would
//! restart under a key and Sender-ID it already used).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ike::group::session::GroupSaKeys;
use ike::Instant;
use proto::group::{GroupPeer, GroupSaParams};
use proto::policy::{Action, PortRange, Prefix, Rule, Selector};
use proto::{SaId, Spi, Update};

/// The id the group's SPD rules name (the data plane resolves it to the sending generation):
/// above every id the SA repository hands out (it counts up from small numbers) and the
/// connectivity manager's.
pub const GROUP_SA_ID: SaId = SaId(0x7f00_0001);
/// SPD rule ids of the group's rules (below the edge filters' range).
const GROUP_RULE_ID: u32 = 0x000f_0000;

/// What a member is configured with beside the group's name and the GCKS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSetup {
    /// Our outer (WAN) address: the tunnel's source.
    pub local: IpAddr,
    /// Our LAN (the group's traffic from here).
    pub lan: Prefix,
    /// The other members: their LANs and outer addresses.
    pub peers: Vec<GroupPeer>,
    /// The group's selectors (the whole group's address range).
    pub traffic: Prefix,
    pub replay_window: u32,
}

#[derive(Clone, Copy, Debug)]
struct Installed {
    active_from: Instant,
    until: Option<Instant>,
    sending: bool,
    /// Our Sender-ID on it in the data plane (None: it only receives there).
    sender_id: Option<u32>,
    installed_at: Instant,
    expires: Option<Instant>,
}

/// Why the member plane asks for a registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reregister {
    /// Traffic came on the SPI reserved for the next SA (GSA_NEXT_SPI) before its rekey.
    NextSpiSeen(u32),
    /// The newest SA nears its hard expiry and no newer one came.
    Expiring(u32),
    /// The data plane restarted: its group SAs are gone.
    DataPlaneLost,
    /// The GCKS refused the last registration (not in its list yet, ...): try again.
    Refused,
}

impl core::fmt::Display for Reregister {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Reregister::NextSpiSeen(s) => write!(
                f,
                "traffic on {s:#010x}, the SPI reserved for the next SA, before its rekey: a GSA_REKEY was lost"
            ),
            Reregister::Expiring(s) => write!(
                f,
                "SA {s:#010x} nears its expiry and no newer one came: rekeys were lost"
            ),
            Reregister::DataPlaneLost => write!(f, "the data plane restarted without the group SAs"),
            Reregister::Refused => write!(f, "the last registration was refused: trying again"),
        }
    }
}

/// First retry after an expiry-driven registration brought nothing newer; doubles.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Before any rekey was seen: how long before the expiry at most.
const MARGIN_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct MemberPlane {
    setup: Option<MemberSetup>,
    installed: BTreeMap<u32, Installed>,
    /// (SPI, Sender-ID) pairs installed for sending since start: never again (a data plane
    /// that restarted lost their counters).
    used: BTreeSet<(u32, u32)>,
    /// GSA_NEXT_SPI of the newest SA.
    next_spis: Vec<u32>,
    /// An SPI the others were seen sending on before it was installed here: it is past its
    /// activation time, so it sends at once when it comes.
    seen_sending: Option<u32>,
    /// The GCKS's rekey lead as last seen (the replaced SA's lifetime left at the rekey).
    lead: Option<Duration>,
    /// The expiry watch fired for this (newest) SPI: retry at `retry_at`.
    fired: Option<(u32, Instant, Duration)>,
    want: Option<Reregister>,
    /// The GCKS refused a registration: the next try, and the backoff after it.
    refused: Option<(Instant, Duration)>,
    /// The group's multicast address for rekeys (from the Rekey SA's destination), which
    /// the data plane listens on (`SetGroupPeers`).
    rekey_multicast: Option<IpAddr>,
    /// Updates computed, for the core to route.
    out: Vec<Update>,
    pub counts: MemberCounts,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberCounts {
    pub keys_events: u64,
    pub installed: u64,
    pub activated: u64,
    pub deleted: u64,
    /// SAs refused here (wrong key length, outside the group SPI range).
    pub refused: u64,
    /// Registrations asked for, by reason.
    pub rereg_next_spi: u64,
    pub rereg_expiring: u64,
    pub rereg_data_plane: u64,
    /// Generations installed receive-only because their (SPI, Sender-ID) sent before.
    pub receive_only_reuse: u64,
    /// Installed receive-only generations given a new Sender-ID (removed and added again).
    pub upgraded: u64,
}

impl MemberPlane {
    pub fn new(setup: MemberSetup) -> MemberPlane {
        MemberPlane {
            setup: Some(setup),
            ..MemberPlane::default()
        }
    }

    pub fn setup(&self) -> Option<&MemberSetup> {
        self.setup.as_ref()
    }

    /// The group's SPD rules: our LAN to each other member's LAN, protected by the group SA
    /// (ahead of the file's static rules).
    pub fn rules(&self) -> Vec<Rule> {
        let Some(s) = &self.setup else {
            return Vec::new();
        };
        s.peers
            .iter()
            .enumerate()
            .map(|(i, p)| Rule {
                id: GROUP_RULE_ID + i as u32,
                selector: Selector {
                    src: s.lan,
                    dst: p.lan,
                    proto: None,
                    src_ports: PortRange::ANY,
                    dst_ports: PortRange::ANY,
                },
                action: Action::Protect(GROUP_SA_ID),
            })
            .collect()
    }

    /// The tunnel endpoints (sent once at start; again to a worker that restarted).
    pub fn peers_update(&self) -> Option<Update> {
        let s = self.setup.as_ref()?;
        Some(Update::SetGroupPeers {
            id: GROUP_SA_ID,
            local: s.local,
            outer_ttl: 64,
            peers: s.peers.clone(),
            rekey_multicast: self.rekey_multicast,
        })
    }

    /// The `Keys` event's multicast address for rekeys: when it changed, the tunnel endpoints
    /// go to the data plane again with it (every worker listens there).
    pub fn on_rekey_multicast(&mut self, a: Option<IpAddr>) {
        if a == self.rekey_multicast {
            return;
        }
        self.rekey_multicast = a;
        if let Some(u) = self.peers_update() {
            self.out.push(u);
        }
    }

    /// The multicast address the data plane listens on for rekeys, if any.
    pub fn rekey_multicast(&self) -> Option<IpAddr> {
        self.rekey_multicast
    }

    /// The endpoint's `Keys` event: install what is new, forget what is gone, and the
    /// sending generation if one is active now. `next_spis`: the event's GSA_NEXT_SPI;
    /// `rekey`: it came from a rekey (GSA_REKEY or in-band), so the lifetime the replaced SA
    /// had left shows the GCKS's rekey lead.
    pub fn on_keys(&mut self, now: Instant, sas: &[GroupSaKeys], next_spis: &[u32], rekey: bool) {
        let Some(setup) = self.setup.clone() else {
            return;
        };
        self.counts.keys_events += 1;
        self.refused = None;
        let newest_before = self.newest().map(|(s, _)| s);
        let mut anyone_sending = self.installed.values().any(|i| i.sending);
        // The one to send on at once when none sends (registration, a data plane that came
        // back): the newest active one we have a Sender-ID on.
        // The others already send on `seen_sending` (their ATD passed): so do we.
        let seen = self.seen_sending;
        let active_from = |s: &GroupSaKeys| {
            if Some(s.spi) == seen {
                s.active_from.min(now)
            } else {
                s.active_from
            }
        };
        let first_sender = sas
            .iter()
            .filter(|s| s.sender_id.is_some() && active_from(s) <= now)
            .filter(|s| s.until.is_none_or(|u| now < u))
            .max_by_key(|s| active_from(s))
            .map(|s| s.spi);
        for sa in sas {
            if let Some(i) = self.installed.get_mut(&sa.spi) {
                i.until = sa.until;
                i.expires = i.expires.or(sa.expires);
                // Receive-only here, and now a Sender-ID not used on it: add it again with it
                // (its counter starts at 1 under a Sender-ID new to this key; the windows of
                // this generation start over).
                let upgrade = i.sender_id.is_none()
                    && sa
                        .sender_id
                        .is_some_and(|sid| !self.used.contains(&(sa.spi, sid)));
                if !upgrade {
                    continue;
                }
                self.installed.remove(&sa.spi);
                self.out.push(Update::DeleteGroupSa { spi: Spi(sa.spi) });
                self.counts.upgraded += 1;
            }
            let alg = match sa.keymat.len() {
                20 => proto::sa::AeadAlg::AesGcm128,
                36 => proto::sa::AeadAlg::AesGcm256,
                _ => {
                    self.counts.refused += 1;
                    continue;
                }
            };
            let Ok(keys) = proto::sa::SaKeys::from_keymat(alg, &sa.keymat) else {
                self.counts.refused += 1;
                continue;
            };
            if !proto::group::is_group_spi(Spi(sa.spi)) {
                self.counts.refused += 1;
                continue;
            }
            let mut sender_id = sa.sender_id;
            if let Some(sid) = sender_id {
                if !self.used.insert((sa.spi, sid)) {
                    // Sent on before with this Sender-ID: its counter is gone with the data
                    // plane that held it. Receive only.
                    sender_id = None;
                    self.counts.receive_only_reuse += 1;
                }
            }
            // The first generation we get sends at once if active (registration); later ones
            // at their activation time.
            let send = sender_id.is_some() && !anyone_sending && first_sender == Some(sa.spi);
            anyone_sending |= send;
            self.out.push(Update::AddGroupSa {
                params: GroupSaParams {
                    id: GROUP_SA_ID,
                    spi: Spi(sa.spi),
                    keys,
                    sender_id,
                    sender_id_bits: sa.sender_id_bits,
                    replay_window: setup.replay_window,
                    src_ts: setup.traffic,
                    dst_ts: setup.traffic,
                    send,
                },
            });
            self.counts.installed += 1;
            self.installed.insert(
                sa.spi,
                Installed {
                    active_from: active_from(sa),
                    until: sa.until,
                    sending: send,
                    sender_id,
                    installed_at: now,
                    expires: sa.expires,
                },
            );
            if send {
                self.counts.activated += 1;
            }
        }
        // Generations the endpoint no longer holds (a restart of the group): gone here too.
        let gone: Vec<u32> = self
            .installed
            .keys()
            .copied()
            .filter(|spi| !sas.iter().any(|s| s.spi == *spi))
            .collect();
        for spi in gone {
            self.installed.remove(&spi);
            self.out.push(Update::DeleteGroupSa { spi: Spi(spi) });
            self.counts.deleted += 1;
        }
        let newest_now = self.newest().map(|(s, _)| s);
        if newest_now != newest_before {
            // A newer SA: the watch starts over for it.
            self.fired = None;
            if rekey {
                let replaced = newest_before.and_then(|s| self.installed.get(&s));
                if let Some(e) = replaced.and_then(|i| i.expires) {
                    self.lead = Some(e.saturating_duration_since(now));
                }
            }
        }
        if !next_spis.is_empty() || newest_now != newest_before {
            self.next_spis = next_spis.to_vec();
        }
        self.handle_timeout(now);
    }

    /// The newest generation (not being retired).
    fn newest(&self) -> Option<(u32, Installed)> {
        self.installed
            .iter()
            .filter(|(_, i)| i.until.is_none())
            .max_by_key(|(_, i)| (i.active_from, i.installed_at))
            .map(|(s, i)| (*s, *i))
    }

    /// When the expiry watch asks for a registration if no newer SA came.
    fn watch_at(&self) -> Option<Instant> {
        let (spi, n) = self.newest()?;
        if let Some((s, at, _)) = self.fired {
            if s == spi {
                return Some(at);
            }
        }
        let e = n.expires?;
        let margin = match self.lead {
            Some(l) => l / 2,
            None => (e.saturating_duration_since(n.installed_at) / 4).min(MARGIN_MAX),
        };
        let m = u64::try_from(margin.as_nanos()).unwrap_or(u64::MAX);
        Some(Instant::from_nanos(e.as_nanos().saturating_sub(m)))
    }

    /// ESP came on a group SPI no generation here has (the data plane's unknown-SPI report).
    /// The SPI reserved for the next SA: a rekey was lost, register (once per announced SPI).
    /// Any other: nothing (anyone can send a packet with any SPI; a registration costs the
    /// GCKS a Sender-ID).
    pub fn on_unknown_spi(&mut self, spi: u32) -> bool {
        if self.installed.contains_key(&spi) || !self.next_spis.contains(&spi) {
            return false;
        }
        self.next_spis.clear();
        self.seen_sending = Some(spi);
        self.counts.rereg_next_spi += 1;
        self.want = Some(Reregister::NextSpiSeen(spi));
        true
    }

    /// The data plane (the worker holding the group) restarted empty: nothing is installed
    /// there now; a registration brings the generations back with a new Sender-ID.
    pub fn data_plane_lost(&mut self) {
        if self.installed.is_empty() {
            return;
        }
        self.installed.clear();
        self.fired = None;
        self.counts.rereg_data_plane += 1;
        self.want = Some(Reregister::DataPlaneLost);
    }

    /// The GCKS refused a registration (a member not in its list yet: a reload may add it):
    /// another try after 2 s, doubling to 60 s while refused.
    pub fn on_refused(&mut self, now: Instant) {
        let back = self
            .refused
            .map_or(RETRY_FIRST, |(_, b)| (b * 2).min(RETRY_MAX));
        self.refused = Some((now.saturating_add(back), back));
    }

    /// A registration to make, once.
    pub fn take_reregister(&mut self) -> Option<Reregister> {
        self.want.take()
    }

    /// The next activation or deactivation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let newest = self.newest_pending();
        let act = newest.map(|(_, i)| i.active_from);
        let del = self.installed.values().filter_map(|i| i.until).min();
        let retry = self.refused.map(|r| r.0);
        [act, del, self.watch_at(), retry]
            .into_iter()
            .flatten()
            .min()
    }

    /// The newest generation not yet sending (the one to activate), if it is newer than the
    /// sending one.
    fn newest_pending(&self) -> Option<(u32, Installed)> {
        let newest = self
            .installed
            .iter()
            .filter(|(_, i)| i.until.is_none() && i.sender_id.is_some())
            .max_by_key(|(_, i)| i.active_from)?;
        (!newest.1.sending).then_some((*newest.0, *newest.1))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((spi, i)) = self.newest_pending() {
            if i.active_from <= now {
                for (_, o) in self.installed.iter_mut() {
                    o.sending = false;
                }
                if let Some(n) = self.installed.get_mut(&spi) {
                    n.sending = true;
                }
                self.out.push(Update::SendOnGroupSa {
                    id: GROUP_SA_ID,
                    spi: Spi(spi),
                });
                self.counts.activated += 1;
            }
        }
        let due: Vec<u32> = self
            .installed
            .iter()
            .filter(|(_, i)| i.until.is_some_and(|u| u <= now))
            .map(|(s, _)| *s)
            .collect();
        for spi in due {
            self.installed.remove(&spi);
            self.out.push(Update::DeleteGroupSa { spi: Spi(spi) });
            self.counts.deleted += 1;
        }
        if let Some((at, back)) = self.refused {
            if at <= now {
                // Again after `back` doubled if this one is refused too (`on_refused`).
                self.refused = Some((Instant::from_nanos(u64::MAX), back));
                self.want = Some(Reregister::Refused);
            }
        }
        if let (Some(at), Some((spi, _))) = (self.watch_at(), self.newest()) {
            if at <= now {
                let back = match self.fired {
                    Some((s, _, b)) if s == spi => (b * 2).min(RETRY_MAX),
                    _ => RETRY_FIRST,
                };
                self.fired = Some((spi, now.saturating_add(back), back));
                self.counts.rereg_expiring += 1;
                self.want = Some(Reregister::Expiring(spi));
            }
        }
    }

    /// The updates computed since the last call, in order.
    pub fn take_updates(&mut self) -> Vec<Update> {
        core::mem::take(&mut self.out)
    }

    /// The generations installed (SPI, sending), for the view.
    pub fn generations(&self) -> Vec<(u32, bool)> {
        self.installed
            .iter()
            .map(|(s, i)| (*s, i.sending))
            .collect()
    }
}

#[cfg(test)]
mod tests;
