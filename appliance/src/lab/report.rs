//! What the lab says: the live lines once a second ([`Tick`]), the summary at the end, and the
//! lab's account ([`LabReport`]) with its verdict: any packet sent by a host or client that
//! did not arrive fails the run.
//!
//! Owns: formatting and the verdict. Must never: state what it did not measure (the gaps
//! printed are the longest measured between two arrivals, not a claim that traffic never
//! paused).

use std::time::Duration;

use anyhow::{bail, Result};
use pipeline::crypto::Backend;
use pipeline::msg::Direction;
use pipeline::stats::{DropReason, Snapshot, Traffic};

use super::clients::ClientSummary;
use super::gateways::Gateway;
use super::hosts::HostSite;

/// One direction between the sites, as measured at the receiving hosts.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// "site-a -> site-b".
    pub name: String,
    pub sent: u64,
    pub delivered: u64,
    /// The longest gap between two arrivals: in the last second (live) or the whole run.
    pub gap_ns: u64,
}

impl Flow {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

/// The clients' totals for the live line.
#[derive(Clone, Debug, Default)]
pub struct ClientsTick {
    pub n: usize,
    pub up: u64,
    pub sent: u64,
    pub echoed: u64,
    pub rekeys: u64,
    pub roams: u64,
    pub last_roam_us: u64,
    /// The longest gap between two echoes at any client in the last second.
    pub gap_ns: u64,
    /// Where client 0 roams between.
    pub roam_addrs: (String, String),
}

/// What the lab measured in the last second.
pub struct Tick {
    pub elapsed: Duration,
    /// Per gateway: name, packets sealed per second, Gbit/s sealed.
    pub seal: Vec<(String, f64, f64)>,
    /// Error drops per second at the gateways, by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// CHILD_SA rekeys at the gateways so far (with IKE).
    pub rekeys: Option<u64>,
    pub flows: [Flow; 2],
    pub clients: Option<ClientsTick>,
}

impl Tick {
    /// The gateways' seal rates and error drops between two snapshots `dt` apart.
    pub fn rates(gateways: &[Gateway], cur: &[Snapshot], last: &[Snapshot], dt: Duration) -> Self {
        let mut drops = Snapshot::default();
        let mut seal = Vec::new();
        for (i, g) in gateways.iter().enumerate() {
            let d = cur[i].since(&last[i]);
            drops.add(&d);
            seal.push((
                g.name.clone(),
                rate(d.traffic(Traffic::Encrypted), dt),
                rate(d.traffic(Traffic::EncryptedBytes) * 8, dt) / 1e9,
            ));
        }
        Tick {
            elapsed: Duration::ZERO,
            seal,
            drops: drops
                .nonzero_drops()
                .filter(|(r, _)| r.is_error())
                .map(|(r, n)| (r.name(), n))
                .collect(),
            rekeys: None,
            flows: Default::default(),
            clients: None,
        }
    }

    /// The live lines.
    pub fn print(&self) {
        let mut line = format!("[{:>4}s]", self.elapsed.as_secs());
        for (name, pps, gbps) in &self.seal {
            line.push_str(&format!(
                " {name} seal {} {gbps:.2} Gbit/s |",
                fmt_pps(*pps)
            ));
        }
        line.push_str(&format!(" drops/s: {}", list_or_none(&self.drops)));
        println!("{line}");
        if let Some(n) = self.rekeys {
            println!(
                "        ike: {n} CHILD_SA rekeys so far; longest gap between arrivals in this second: {}",
                self.flows
                    .iter()
                    .map(|f| format!("{} {}", f.name, fmt_gap(f.gap_ns)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(c) = &self.clients {
            println!(
                "        clients: {}/{} up with virtual IPs, {} sent, {} echoed back, {} in flight, {} rekeys; longest gap between echoes in this second {}",
                c.up,
                c.n,
                c.sent,
                c.echoed,
                c.sent.saturating_sub(c.echoed),
                c.rekeys,
                fmt_gap(c.gap_ns)
            );
            if c.roams > 0 {
                println!(
                    "        client-0 roamed {}x between {} and {} (MOBIKE, same SAs, no rekey); last update answered in {:.1} ms",
                    c.roams,
                    c.roam_addrs.0,
                    c.roam_addrs.1,
                    c.last_roam_us as f64 / 1e3
                );
            }
        }
    }
}

/// What a lab run measured, for its verdict and for callers (the soak).
pub struct LabReport {
    /// How long traffic flowed.
    pub elapsed: Duration,
    /// Site A to site B, and back (gaps over the whole run).
    pub flows: [Flow; 2],
    pub clients: Vec<ClientSummary>,
    /// CHILD_SA rekeys each gateway saw (with IKE; a rekey counts at both ends).
    pub gateway_rekeys: Vec<(String, u64)>,
    /// Frames the lab's internet could not deliver (an address nobody owned).
    pub unroutable: u64,
}

impl LabReport {
    /// Client packets that were not echoed back.
    pub fn clients_lost(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.sent.saturating_sub(c.echoed))
            .sum()
    }

    /// CHILD_SA rekeys the clients saw.
    pub fn client_rekeys(&self) -> u64 {
        self.clients.iter().map(|c| c.rekeys).sum()
    }

    pub fn roams(&self) -> u64 {
        self.clients.iter().map(|c| c.roams).sum()
    }

    /// Fails when a client never got its tunnel or anything sent was not delivered.
    pub fn verdict(&self) -> Result<()> {
        if self
            .clients
            .iter()
            .any(|c| c.virtual_ip.is_none() || c.sent == 0)
        {
            bail!("a road-warrior client never got its tunnel up");
        }
        let lost: u64 = self.flows.iter().map(Flow::lost).sum();
        if lost > 0 {
            bail!("{lost} packets were sent by the hosts but never arrived");
        }
        let lost = self.clients_lost();
        if lost > 0 {
            bail!("{lost} client packets were never echoed back");
        }
        Ok(())
    }

    /// The hosts' and clients' lines of the summary.
    pub fn print(&self, sites: &[HostSite; 2]) {
        for (f, site) in self.flows.iter().zip(sites) {
            let reordered: u64 = site.sink.flows.iter().map(|f| f.reordered).sum();
            let l = &site.latency;
            println!(
                "  hosts {}: sent {}, delivered {}, lost {}, reordered {reordered}, corrupt {}; \
                 latency p50 {:.1} us, p99 {:.1} us, max {:.1} us; longest gap between arrivals {}",
                f.name,
                f.sent,
                f.delivered,
                f.lost(),
                site.sink.corrupt,
                l.value_at_quantile(0.5) as f64 / 1e3,
                l.value_at_quantile(0.99) as f64 / 1e3,
                l.max() as f64 / 1e3,
                fmt_gap(f.gap_ns),
            );
        }
        for c in &self.clients {
            println!(
                "  {} (virtual IP {}): sent {}, echoed back {}, lost {}, {} rekeys, {} roams; round trip p50 {:.1} us, p99 {:.1} us, max {:.1} us; longest gap between echoes {}{}",
                c.name,
                c.virtual_ip.map_or("none".to_string(), |v| v.to_string()),
                c.sent,
                c.echoed,
                c.sent.saturating_sub(c.echoed),
                c.rekeys,
                c.roams,
                c.p50_us,
                c.p99_us,
                c.max_us,
                fmt_gap(c.gap_max_ns),
                if c.drops.is_empty() {
                    String::new()
                } else {
                    format!("; its data plane dropped {}", list_or_none(&c.drops))
                }
            );
        }
        if self.unroutable > 0 {
            println!(
                "  internet: {} frames for addresses nobody owns",
                self.unroutable
            );
        }
    }
}

/// The gateways' part of the summary: traffic, each SA's counters, drops by reason.
pub fn gateways(elapsed: Duration, backend: Backend, gateways: &[Gateway]) {
    println!();
    println!(
        "summary after {:.1} s, crypto backend {backend}:",
        elapsed.as_secs_f64()
    );
    for g in gateways {
        let s = g.handle.counters.snapshot();
        println!(
            "  {}: rx {} tx {} | sealed {} ({:.2} Gbit/s avg) | opened {} ({:.2} Gbit/s avg) | generation {}",
            g.name,
            s.traffic(Traffic::RxPackets),
            s.traffic(Traffic::TxPackets),
            s.traffic(Traffic::Encrypted),
            rate(s.traffic(Traffic::EncryptedBytes) * 8, elapsed) / 1e9,
            s.traffic(Traffic::Decrypted),
            rate(s.traffic(Traffic::DecryptedBytes) * 8, elapsed) / 1e9,
            g.handle.counters.generation.get(),
        );
        let mut list = match g.handle.sa_counters.lock() {
            Ok(l) => l.clone(),
            Err(_) => Vec::new(),
        };
        list.sort_by_key(|e| e.id.0);
        for e in list {
            let name = g
                .sa_names
                .get(e.id.0 as usize)
                .map_or("ike", String::as_str);
            let c = &e.counters;
            let errs: Vec<(&str, u64)> = DropReason::ALL
                .iter()
                .filter(|r| c.drops(**r) > 0)
                .map(|r| (r.name(), c.drops(*r)))
                .collect();
            println!(
                "    SA {name:<12} {:<3} spi {}: {} packets, {} bytes{}",
                match e.direction {
                    Direction::Inbound => "in",
                    Direction::Outbound => "out",
                },
                e.spi,
                c.packets.get(),
                c.bytes.get(),
                if errs.is_empty() {
                    String::new()
                } else {
                    format!(", drops: {}", list_or_none(&errs))
                }
            );
        }
        let drops: Vec<(&str, u64)> = s.nonzero_drops().map(|(r, n)| (r.name(), n)).collect();
        println!("    drops by reason: {}", list_or_none(&drops));
    }
}

fn list_or_none(v: &[(&str, u64)]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|(r, n)| format!("{r}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn fmt_gap(ns: u64) -> String {
    format!("{:.1} ms", ns as f64 / 1e6)
}

fn rate(n: u64, dt: Duration) -> f64 {
    n as f64 / dt.as_secs_f64().max(1e-9)
}

fn fmt_pps(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} Mpps", pps / 1e6)
    } else {
        format!("{:.1} kpps", pps / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(lost: u64, client_lost: u64) -> LabReport {
        let flow = |name: &str, lost| Flow {
            name: name.into(),
            sent: 100,
            delivered: 100 - lost,
            gap_ns: 0,
        };
        LabReport {
            elapsed: Duration::from_secs(1),
            flows: [flow("a -> b", lost), flow("b -> a", 0)],
            clients: vec![ClientSummary {
                name: "client-0".into(),
                virtual_ip: Some("10.99.0.1".parse().unwrap()),
                sent: 50,
                echoed: 50 - client_lost,
                rekeys: 1,
                roams: 0,
                p50_us: 0.0,
                p99_us: 0.0,
                max_us: 0.0,
                gap_max_ns: 0,
                drops: Vec::new(),
            }],
            gateway_rekeys: Vec::new(),
            unroutable: 0,
        }
    }

    #[test]
    fn any_loss_fails_the_run() {
        assert!(report(0, 0).verdict().is_ok());
        let e = report(3, 0).verdict().unwrap_err().to_string();
        assert!(e.contains("3 packets"), "{e}");
        let e = report(0, 2).verdict().unwrap_err().to_string();
        assert!(e.contains("2 client packets"), "{e}");
        assert_eq!(fmt_gap(1_260_000), "1.3 ms");
    }
}
