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
//! Owns: which generations are installed, the pending send/delete times, the group's SPD
//! rules and tunnel endpoints.
//! Must never: read a clock; log a key; install a generation twice.

use std::collections::BTreeMap;
use std::net::IpAddr;

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
}

#[derive(Default)]
pub struct MemberPlane {
    setup: Option<MemberSetup>,
    installed: BTreeMap<u32, Installed>,
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
        })
    }

    /// The endpoint's `Keys` event: install what is new, forget what is gone, and the
    /// sending generation if one is active now.
    pub fn on_keys(&mut self, now: Instant, sas: &[GroupSaKeys]) {
        let Some(setup) = self.setup.clone() else {
            return;
        };
        self.counts.keys_events += 1;
        let anyone_sending = self.installed.values().any(|i| i.sending);
        for sa in sas {
            if let Some(i) = self.installed.get_mut(&sa.spi) {
                i.until = sa.until;
                continue;
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
            // The first generation we get sends at once if active (registration); later ones
            // at their activation time.
            let send = sa.sender_id.is_some() && !anyone_sending && sa.active_from <= now;
            self.out.push(Update::AddGroupSa {
                params: GroupSaParams {
                    id: GROUP_SA_ID,
                    spi: Spi(sa.spi),
                    keys,
                    sender_id: sa.sender_id,
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
                    active_from: sa.active_from,
                    until: sa.until,
                    sending: send,
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
        self.handle_timeout(now);
    }

    /// The next activation or deactivation.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let newest = self.newest_pending();
        let act = newest.map(|(_, i)| i.active_from);
        let del = self.installed.values().filter_map(|i| i.until).min();
        match (act, del) {
            (Some(a), Some(d)) => Some(a.min(d)),
            (a, d) => a.or(d),
        }
    }

    /// The newest generation not yet sending (the one to activate), if it is newer than the
    /// sending one.
    fn newest_pending(&self) -> Option<(u32, Installed)> {
        let newest = self
            .installed
            .iter()
            .filter(|(_, i)| i.until.is_none())
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
