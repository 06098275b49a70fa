//! What the IKE view shows (never keys): the IKE SAs with their CHILD_SAs, the counts of
//! what happened, what the data plane reported, and what the IKE endpoint dropped or
//! answered with an error, by reason; and the log lines of IKE events.
//!
//! The view is rebuilt on a deadline, not per event: listing every IKE SA takes time that
//! grows with the number of clients, so a rebuild waits at least [`MIN_PAUSE`] and twenty
//! times its last cost (at most 5% of the time) after the one before. Anything that may
//! change what it lists marks it stale, timers included: a half-open IKE SA that expires
//! produces no event, and must still leave the view.
//!
//! Owns: the counters the view shows, the data plane's reports as running totals, rendering.
//! Must never: show a key; grow with the number of SAs that went.

use std::collections::BTreeMap;
use std::time::Duration;

use ike::{Endpoint, Event, Instant};
use proto::{Event as DpEvent, SaId, Spi};

use crate::repo::SaRepository;

/// The shortest pause between two rebuilds.
pub const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Counts of IKE events, for the view.
#[derive(Default, Debug)]
pub struct IkeCounts {
    pub events: u64,
    /// Rekeys by who started them: [child by us, child by peer, IKE by us, IKE by peer].
    pub rekeys: [u64; 4],
    pub ike_down: u64,
    /// IKE SAs established by a handshake (rekeys do not count).
    pub ike_up: u64,
    /// MOBIKE moves (ours and the peers').
    pub moves: u64,
}

impl IkeCounts {
    pub fn count(&mut self, e: &Event) {
        self.events += 1;
        match e {
            Event::ChildUp(c) if c.rekey_of.is_some() => {
                self.rekeys[if c.initiated_here { 0 } else { 1 }] += 1
            }
            Event::IkeRekeyed { initiated_here, .. } => {
                self.rekeys[if *initiated_here { 2 } else { 3 }] += 1
            }
            Event::IkeDown { .. } => self.ike_down += 1,
            Event::IkeMoved { .. } => self.moves += 1,
            Event::IkeUp { .. } => self.ike_up += 1,
            _ => {}
        }
    }
}

/// The data plane's reports as the views show them.
#[derive(Default, Debug)]
pub struct DataplaneReports {
    pub soft_lifetimes: u64,
    pub hard_lifetimes: u64,
    pub seq_near_wrap: u64,
    /// Latest running totals per worker (unknown SPI) or per (worker, SA id, SPI) of the
    /// SAs alive; an SA's totals move to `retired` when it goes.
    pub unknown_spi: BTreeMap<u16, u64>,
    pub auth_failures: BTreeMap<(u16, u32, u32), u64>,
    pub replay_failures: BTreeMap<(u16, u32, u32), u64>,
    /// Authentication and replay failures of SAs that went.
    pub retired: [u64; 2],
}

impl DataplaneReports {
    /// Takes a report in; returns a log line when it says something new. `alive` tells
    /// whether an (SA id, SPI) is one we hold: a report about an SA that went was on its way
    /// when it went (reports are rate limited), and what it adds is not counted.
    pub fn take(&mut self, e: &DpEvent, alive: impl Fn(SaId, Spi) -> bool) -> Option<String> {
        match e {
            DpEvent::Lifetime { kind, .. } => {
                if *kind == proto::LifetimeKind::Hard {
                    self.hard_lifetimes += 1;
                } else {
                    self.soft_lifetimes += 1;
                }
            }
            DpEvent::SeqNearWrap { .. } => self.seq_near_wrap += 1,
            DpEvent::UnknownSpi {
                worker,
                spi,
                src,
                packets,
                ..
            } => {
                let last = self.unknown_spi.insert(*worker, *packets).unwrap_or(0);
                if *packets > last {
                    return Some(format!(
                        "dataplane: ESP for unknown SPI {:08x} from {src} (worker {worker}: {packets} such packets)",
                        spi.0
                    ));
                }
            }
            DpEvent::AuthFailures {
                worker,
                id,
                spi,
                count,
            } if alive(*id, *spi) => {
                self.auth_failures.insert((*worker, id.0, spi.0), *count);
            }
            DpEvent::ReplayFailures {
                worker,
                id,
                spi,
                count,
            } if alive(*id, *spi) => {
                self.replay_failures.insert((*worker, id.0, spi.0), *count);
            }
            _ => {}
        }
        None
    }

    /// Moves the totals of SAs that `alive` no longer holds to `retired`: one entry per SA
    /// that ever failed would grow with every rekey.
    pub fn retire(&mut self, alive: impl Fn(SaId, Spi) -> bool) {
        for (i, map) in [&mut self.auth_failures, &mut self.replay_failures]
            .into_iter()
            .enumerate()
        {
            map.retain(|(_, id, spi), n| {
                let keep = alive(SaId(*id), Spi(*spi));
                if !keep {
                    self.retired[i] += *n;
                }
                keep
            });
        }
    }
}

/// When the view is rebuilt.
#[derive(Debug, Default)]
pub struct ViewClock {
    stale: bool,
    last: Option<Instant>,
    cost: Duration,
}

impl ViewClock {
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// When the next rebuild is due (none while nothing changed).
    pub fn due(&self) -> Option<Instant> {
        if !self.stale {
            return None;
        }
        let pause = MIN_PAUSE.max(self.cost.saturating_mul(20));
        Some(self.last.map_or(Instant::ZERO, |t| t.saturating_add(pause)))
    }

    pub fn rebuilt(&mut self, now: Instant) {
        self.stale = false;
        self.last = Some(now);
    }

    /// What the last rebuild cost (the driver measures it: the core has no clock).
    pub fn set_cost(&mut self, d: Duration) {
        self.cost = d;
    }
}

/// Whole seconds of a duration, for the JSON.
fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// One IKE SA in the view's JSON: what `swanctl --list-sas` shows of it, in a stable shape
/// (times in whole seconds as of the view's `now`; the view socket adds how old the view is).
pub fn ike_sa_json(sa: &ike::IkeSaView) -> serde_json::Value {
    let p = &sa.proposal;
    let ts =
        |v: &[ike::wire::TrafficSelector]| -> Vec<String> { v.iter().map(ike::ts::text).collect() };
    serde_json::json!({
        "ike_sa": format!("{:016x}", sa.id.0),
        "connection": sa.connection,
        "state": sa.state,
        "established": sa.state == "ESTABLISHED",
        "initiator": sa.initiator,
        "spi_i": format!("{:016x}", sa.spi_i.0),
        "spi_r": format!("{:016x}", sa.spi_r.0),
        "local_host": sa.local.ip().to_string(),
        "local_port": sa.local.port(),
        "remote_host": sa.remote.ip().to_string(),
        "remote_port": sa.remote.port(),
        "nat": sa.nat,
        "nat_local": sa.nat_sides.local,
        "nat_remote": sa.nat_sides.remote,
        "local_id": sa.local_id,
        "remote_id": sa.remote_id,
        "eap_identity": sa.eap_identity,
        "proposal": {
            "name": p.name(),
            "encryption": if p.cbc { "AES_CBC" } else { "AES_GCM_16" },
            "key_size": p.encr_bits,
            "integrity": if p.cbc { Some("HMAC_SHA2_256_128") } else { None },
            "prf": p.prf_name(),
            "dh_group": p.dh_name(),
        },
        "virtual_ip": sa.virtual_ip.map(|v| v.to_string()),
        "mobike": sa.mobike,
        "established_secs": sa.established_ago.map(secs),
        "rekey_in_secs": sa.rekey_in.map(secs),
        "children": sa.children.iter().map(|c| serde_json::json!({
            "name": c.name,
            "state": c.state,
            "protocol": "ESP",
            "mode": "TUNNEL",
            "udp_encap": c.udp_encap,
            "spi_in": format!("{:08x}", c.spi_in.0),
            "spi_out": format!("{:08x}", c.spi_out.0),
            "proposal": {
                "name": c.proposal.name(),
                "encryption": "AES_GCM_16",
                "key_size": c.proposal.encr_bits,
                "esn": c.proposal.esn,
            },
            "installed_secs": secs(c.installed_ago),
            "rekey_in_secs": c.rekey_in.map(secs),
            "expire_in_secs": c.expire_in.map(secs),
            "local_ts": ts(&c.local_ts),
            "remote_ts": ts(&c.remote_ts),
        })).collect::<Vec<_>>(),
    })
}

/// The view as JSON, its times as of `now`.
pub fn render(
    endpoint: &Endpoint,
    repo: &SaRepository,
    counts: &IkeCounts,
    dp: &DataplaneReports,
    reconnect: &super::reconnect::Reconnect,
    now: Instant,
) -> String {
    let sas: Vec<serde_json::Value> = endpoint.view(now).iter().map(ike_sa_json).collect();
    let stats = endpoint.stats();
    let states = endpoint.sa_states();
    let drops: serde_json::Map<String, serde_json::Value> = stats
        .nonzero()
        .into_iter()
        .map(|(r, n)| (r.name().to_string(), n.into()))
        .collect();
    let h = &stats.hints;
    let mut reconnects: serde_json::Map<String, serde_json::Value> = super::reconnect::Why::ALL
        .iter()
        .map(|w| (w.label().to_string(), 0u64.into()))
        .collect();
    for (w, n) in reconnect.counts() {
        reconnects.insert(w.label().to_string(), n.into());
    }
    reconnects.insert("attempts".into(), reconnect.attempts.into());
    serde_json::json!({
        "ike_sas": sas,
        // Connections we initiate, lost by reason and initiated again (`reconnect`).
        "reconnects": reconnects,
        // Unauthenticated hints that an IKE SA is dead and the checks they started
        // (RFC 7296 1.5, 2.21.4; `ike::HintStats`).
        "liveness_hints": {
            "invalid_spi": h.invalid_spi,
            "invalid_ike_spi": h.invalid_ike_spi,
            "held_back": h.held_back,
            "probes": h.probes,
            "probes_answered": h.answered,
            "peer_lost": h.peer_lost,
            "invalid_spi_sent": h.invalid_spi_sent,
            // Authenticated INVALID_SPI inside IKE SAs (RFC 7296 3.10.1): sent, held back by
            // the rate limit, received naming one of our CHILD_SAs (made anew), ignored.
            "invalid_spi_sent_protected": h.invalid_spi_sent_protected,
            "invalid_spi_send_limited": h.invalid_spi_send_limited,
            "invalid_spi_children_recreated": h.invalid_spi_children_recreated,
            "invalid_spi_protected_ignored": h.invalid_spi_protected_ignored,
        },
        "children_installed": repo.installed,
        "children_rekeyed": repo.rekeyed,
        "children_removed": repo.removed,
        "child_rekeys_by_us": counts.rekeys[0],
        "child_rekeys_by_peer": counts.rekeys[1],
        "ike_rekeys_by_us": counts.rekeys[2],
        "ike_rekeys_by_peer": counts.rekeys[3],
        "ike_sas_down": counts.ike_down,
        "ike_sas_up": counts.ike_up,
        "mobike_moves": counts.moves,
        "virtual_ip": repo.virtual_ip().map(|v| v.to_string()),
        "ike_drops": drops,
        "ike_drops_total": stats.total(),
        "ike_answers_limited": stats.answers_limited,
        // Failed authentications by reason (unknown CA, expired, missing EKU, ...).
        "ike_auth_failures": ike::services::AuthError::ALL.iter()
            .map(|e| (e.name(), stats.get_auth(*e)))
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_string(), n.into()))
            .collect::<serde_json::Map<_, _>>(),
        // Every IKE counter by name, the cookies' too (RFC 7296 2.6), and the half-open SAs.
        "ike_messages": stats.named().into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect::<serde_json::Map<_, _>>(),
        "half_open": endpoint.footprint().half_open,
        "ike_sa_states": {
            "init": states.init, "auth": states.auth,
            "established": states.established, "deleting": states.deleting,
        },
        "dataplane_reports": {
            "soft_lifetimes": dp.soft_lifetimes,
            "hard_lifetimes": dp.hard_lifetimes,
            "seq_near_wrap": dp.seq_near_wrap,
            "unknown_spi_packets": dp.unknown_spi.values().sum::<u64>(),
            "auth_failures": dp.auth_failures.values().sum::<u64>() + dp.retired[0],
            "replay_failures": dp.replay_failures.values().sum::<u64>() + dp.retired[1],
        },
    })
    .to_string()
}

/// One log line per IKE event (never keys).
pub fn event_line(e: &Event) -> String {
    match e {
        Event::IkeUp {
            ike,
            peer,
            remote_id,
            remote,
            virtual_ip,
            ..
        } => format!(
            "ike: IKE_SA {:016x} ({peer}) established with {remote_id} at {remote}{}",
            ike.0,
            virtual_ip.map_or(String::new(), |v| format!(", virtual IP {v}"))
        ),
        Event::ChildUp(c) => format!(
            "ike: CHILD_SA {} up: spi in {:08x} out {:08x}{}{}",
            c.name,
            c.inbound.spi,
            c.outbound.spi,
            if c.udp_encap { ", ESP in UDP" } else { "" },
            c.rekey_of.map_or(String::new(), |o| format!(
                ", replaces {o:08x} (rekeyed by {})",
                if c.initiated_here { "us" } else { "the peer" }
            ))
        ),
        Event::ChildDown {
            spi_in, spi_out, ..
        } => format!("ike: CHILD_SA down: spi in {spi_in:08x} out {spi_out:08x}"),
        Event::PrivateNotify { ike, kind, data } => format!(
            "ike: IKE_SA {:016x}: private notify {kind} ({} bytes)",
            ike.0,
            data.0.len()
        ),
        Event::IkeRekeyed {
            old,
            new,
            initiated_here,
        } => format!(
            "ike: IKE_SA {:016x} rekeyed to {:016x} (by {})",
            old.0,
            new.0,
            if *initiated_here { "us" } else { "the peer" }
        ),
        Event::IkeDown { ike, reason } => format!("ike: IKE_SA {:016x} down: {reason:?}", ike.0),
        Event::IkeMoved {
            ike,
            local,
            remote,
            udp_encap,
            children,
        } => format!(
            "ike: IKE_SA {:016x} moved (MOBIKE): {local} <-> {remote}{}, {} CHILD_SA(s) rebound, same SPIs",
            ike.0,
            if *udp_encap { ", ESP in UDP" } else { "" },
            children.len()
        ),
        Event::Group(g) => format!("ike: group: {g:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_totals_of_sas_that_went_are_kept_in_one_number_not_one_entry_each() {
        let mut dp = DataplaneReports::default();
        // A thousand rekeys of an SA that saw replay failures: the live one (the last)
        // keeps its entry, the others fold into the retired total.
        for k in 0..1000u32 {
            dp.replay_failures.insert((0, 7, 0x100 + k), 2);
            dp.retire(|_, spi| spi.0 == 0x100 + k);
        }
        assert_eq!(dp.replay_failures.len(), 1);
        assert_eq!(dp.retired, [0, 999 * 2]);
    }

    #[test]
    fn rebuilds_wait_for_a_change_and_the_pause() {
        let mut c = ViewClock::default();
        assert_eq!(c.due(), None, "nothing changed");
        c.mark_stale();
        assert_eq!(c.due(), Some(Instant::ZERO), "the first one at once");
        let t = Instant::from_nanos(1_000_000_000);
        c.rebuilt(t);
        assert_eq!(c.due(), None);
        c.mark_stale();
        assert_eq!(c.due(), Some(t.saturating_add(MIN_PAUSE)));
        // An expensive view waits twenty times its cost.
        c.set_cost(Duration::from_millis(10));
        assert_eq!(c.due(), Some(t.saturating_add(Duration::from_millis(200))));
    }
}
