//! The key server of a group, sans-IO (`roamgate gcks` is its thin driver): an IKE
//! [`Endpoint`] that answers IKE_SA_INIT + GSA_AUTH (and GSA_REGISTRATION) for the group of
//! its `group` section, rekeys the group before each Data-Security SA's lifetime ends
//! (GSA_REKEY, one unicast datagram to each member's registration address), and applies a
//! reload: a member dropped from `group.members` is removed at once (the rekey that goes out
//! excludes it: `ike::group::gcks::Gcks::remove_member`), one added may register from then
//! on, a new `sender_id_bits` starts the group over.
//!
//! Owns: the endpoint and its GCKS, the counters and log lines for the driver.
//! Must never: read a clock or a socket; log a key.

use std::collections::VecDeque;
use std::net::SocketAddr;

use ike::group::gcks::Gcks;
use ike::group::session::GroupEvent;
use ike::wire::Id;
use ike::{Endpoint, Event, Instant, Transmit};

use crate::config::group::GcksPlan;
use crate::config::ike::{endpoint_config, Connection};

/// Counters of the key server, for `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcksCounts {
    pub registered: u64,
    pub refused: u64,
    pub removed: u64,
    pub rekeys: u64,
    pub rekey_messages: u64,
    pub restarts: u64,
    pub sender_id_exhausted: u64,
    pub ike_up: u64,
    pub ike_down: u64,
    pub malformed: u64,
}

pub struct GcksNode {
    endpoint: Endpoint,
    plan: GcksPlan,
    log: VecDeque<String>,
    removed: u64,
    ike_up: u64,
    ike_down: u64,
}

impl GcksNode {
    /// A key server for `plan` answering the connections `conns` (how members authenticate:
    /// one connection with `remote_id: any` is enough; the group's `members` list decides who
    /// may register). `seed` keys the endpoint and the group (the driver takes it from the OS).
    pub fn new(
        conns: &[Connection],
        plan: GcksPlan,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<GcksNode, String> {
        let mut endpoint = Endpoint::new(endpoint_config(conns), seed);
        // The group's randomness apart from the endpoint's: another stream of the same seed.
        let mut gseed = seed;
        gseed.iter_mut().for_each(|b| *b ^= 0x5a);
        let gcks = Gcks::new(plan.config(gseed), now).map_err(|e| format!("group: {e}"))?;
        endpoint.add_gcks(gcks, false);
        let mut n = GcksNode {
            endpoint,
            plan,
            log: VecDeque::new(),
            removed: 0,
            ike_up: 0,
            ike_down: 0,
        };
        n.log(format!(
            "gcks: group {} with {} member(s) allowed, lifetime {} s, rekey {} s before its end, ATD {} s, DTD {} s, {} Sender-ID bits",
            n.plan.group.display(),
            n.plan.members.len(),
            n.plan.lifetime.as_secs(),
            n.plan.rekey_lead.as_secs(),
            n.plan.atd.as_secs(),
            n.plan.dtd.as_secs(),
            n.plan.sender_id_bits
        ));
        Ok(n)
    }

    fn log(&mut self, l: String) {
        if self.log.len() >= 4096 {
            self.log.pop_front();
        }
        self.log.push_back(l);
    }

    pub fn group(&self) -> &Id {
        &self.plan.group
    }

    /// One datagram that came to `local` from `remote`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.endpoint.handle(now, local, remote, data);
        self.pump();
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work (the next rekey, IKE
    /// retransmissions).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let before = self.gcks().map(|g| g.stats().rekeys);
        self.endpoint.handle_timeout(now);
        let after = self.gcks().map(|g| g.stats().rekeys);
        if before != after {
            let spi = self.gcks().and_then(Gcks::current_spi).unwrap_or(0);
            let members = self.gcks().map_or(0, |g| g.sender_ids().len());
            self.log(format!(
                "gcks: group {}: rekeyed, new SA {spi:#010x}, GSA_REKEY to {members} member(s)",
                self.plan.group.display()
            ));
        }
        self.pump();
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    pub fn poll_log(&mut self) -> Option<String> {
        self.log.pop_front()
    }

    fn gcks(&self) -> Option<&Gcks> {
        self.endpoint.gcks(&self.plan.group)
    }

    fn pump(&mut self) {
        while let Some(e) = self.endpoint.poll_event() {
            match e {
                Event::IkeUp { .. } => self.ike_up += 1,
                Event::IkeDown { .. } => self.ike_down += 1,
                Event::Group(g) => {
                    let line = match g {
                        GroupEvent::Registered {
                            group,
                            member,
                            sender_id,
                            ..
                        } => format!(
                            "gcks: group {group}: {member} registered (GSA_AUTH/GSA_REGISTRATION), Sender-ID {}",
                            sender_id.map_or("none (receiver)".into(), |s| s.to_string())
                        ),
                        GroupEvent::RegistrationRefused {
                            group,
                            member,
                            notify,
                            ..
                        } => format!(
                            "gcks: group {group}: registration of {member} refused (notify {notify})"
                        ),
                        GroupEvent::Removed { group, member } => {
                            self.removed += 1;
                            format!("gcks: group {group}: {member} removed; the rekey that excludes it went out")
                        }
                        other => format!("gcks: {other:?}"),
                    };
                    self.log(line);
                }
                _ => {}
            }
        }
    }

    /// A reload: the same group with another policy. Members dropped from the list are
    /// removed now (each removal replaces the Rekey SA and rekeys the others, RFC 9838
    /// 2.4.1.1); members added may register from now on (a member removed before starts
    /// afresh); a change of `sender_id_bits` starts the group over under a new SA (every
    /// member excluded and registering again, with Sender-IDs that fit: `Gcks::set_sender_id_bits`
    /// says why a new key is needed). Any other change (algorithm, lifetimes, ...) needs a
    /// restart and is refused whole: `Err` names the key. Returns the change lines.
    pub fn reload(&mut self, now: Instant, plan: GcksPlan) -> Result<Vec<String>, String> {
        let mut same = plan.clone();
        same.members = self.plan.members.clone();
        same.sender_id_bits = self.plan.sender_id_bits;
        if same != self.plan {
            return Err(
                "group: only `members` and `sender_id_bits` may change at a reload; the other keys need a restart"
                    .into(),
            );
        }
        let mut check = self.plan.clone();
        check.sender_id_bits = plan.sender_id_bits;
        check
            .config([0; 32])
            .check()
            .map_err(|e| format!("group.sender_id_bits: {e}"))?;
        let gone: Vec<Id> = self
            .plan
            .members
            .iter()
            .filter(|m| !plan.members.contains(m))
            .cloned()
            .collect();
        let added: Vec<Id> = plan
            .members
            .iter()
            .filter(|m| !self.plan.members.contains(m))
            .cloned()
            .collect();
        let group = self.plan.group.clone();
        let mut lines = Vec::new();
        for m in &gone {
            self.endpoint.remove_group_member(now, &group, m);
            lines.push(format!("group: member {} removed", m.display()));
        }
        for m in &added {
            self.endpoint.allow_group_member(&group, m);
            lines.push(format!("group: member {} added", m.display()));
        }
        if plan.sender_id_bits != self.plan.sender_id_bits {
            self.endpoint
                .set_group_sender_id_bits(now, &group, plan.sender_id_bits)
                .map_err(|e| format!("group.sender_id_bits: {e}"))?;
            lines.push(format!(
                "group: Sender-ID bits {} -> {}: the group starts over (every member registers again)",
                self.plan.sender_id_bits, plan.sender_id_bits
            ));
        }
        self.plan = plan;
        self.pump();
        for l in &lines {
            self.log(format!("gcks: reload: {l}"));
        }
        Ok(lines)
    }

    /// The live group SAs' SPIs and keys (key | salt) for a lab's packet decoder
    /// (`roamgate gcks --wireshark-keys`): never logged.
    pub fn export_data_keys(&self) -> Vec<(u32, ike::crypto::Secret)> {
        self.gcks().map(Gcks::export_data_keys).unwrap_or_default()
    }

    pub fn counts(&self) -> GcksCounts {
        let g = self.gcks().map(Gcks::stats).unwrap_or_default();
        let s = self.endpoint.group_stats();
        GcksCounts {
            registered: g.registered,
            refused: g.refused,
            removed: self.removed,
            rekeys: g.rekeys,
            rekey_messages: g.rekey_messages,
            restarts: g.restarts,
            sender_id_exhausted: g.sender_id_exhausted,
            ike_up: self.ike_up,
            ike_down: self.ike_down,
            malformed: s.malformed,
        }
    }

    /// The status view (JSON; never keys): the group, its current SPI, the members with
    /// their Sender-IDs, the counters.
    pub fn status(&self, now: Instant) -> serde_json::Value {
        let g = self.gcks();
        let members: Vec<serde_json::Value> = g
            .map(Gcks::sender_ids)
            .unwrap_or_default()
            .into_iter()
            .map(|(s, id)| serde_json::json!({ "member": id.display(), "sender_id": s }))
            .collect();
        let next_rekey_ms = g.map(|g| g.deadline().saturating_duration_since(now).as_millis());
        serde_json::json!({
            "role": "gcks",
            "group": self.plan.group.display(),
            "spi": g.and_then(Gcks::current_spi).map(|s| format!("{s:#010x}")),
            "next_rekey_ms": next_rekey_ms,
            "allowed": self.plan.members.iter().map(Id::display).collect::<Vec<_>>(),
            "members": members,
            "ike_sas": self.endpoint.list().len(),
            "counts": self.counts(),
        })
    }
}

#[cfg(test)]
mod tests;
