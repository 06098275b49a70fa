//! The lab's two gateways: for each site a worker on in-memory ports in a thread of its own
//! (pinned to a core when there are enough) and the agent's link to it. With `--ike` each
//! site also runs the in-process IKE control loop (`control::driver::inproc`): site A
//! initiates one tunnel per static SA pair of the config, and both sites rekey every
//! CHILD_SA while traffic flows; the config's static keys are not used. Without it, the
//! static SAs and policies are installed as messages, the path a control plane uses.
//!
//! Owns: the gateways' threads and links, the lab's IKE connections (built as the `ike`
//! section's structures and validated as a file's would be), the key export. Must never:
//! export negotiated keys.

use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use control::config::ike::{Connection, ConnectionYaml, IkeYaml};
use control::config::{GatewayConfig, GatewayPlan, LabConfig};
use control::driver::inproc::{InProcControl, KeyExport};
use control::repo::SaRepository;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::msg::Direction;
use pipeline::pcap::esp_sa_line;
use pipeline::port::mem::MemPort;
use pipeline::sad::Sad;
use pipeline::spd::{Action, Spd};
use pipeline::worker::{Worker, WorkerHandle};

/// Site B's LAN in the embedded config: what the road-warrior clients reach.
pub const SITE_B_LAN: &str = "10.2.0.0/24";

pub struct Gateway {
    pub name: String,
    pub handle: WorkerHandle,
    pub link: WorkerLink,
    /// SA names by id (the config's order; empty with IKE).
    pub sa_names: Vec<String>,
    /// The site's IKE control loop (with `--ike`).
    pub ike: Option<InProcControl>,
}

/// Both sites' gateways, running.
pub struct Gateways {
    pub list: Vec<Gateway>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// One site as the gateways are built from it.
pub struct Site<'a> {
    pub gw: &'a GatewayConfig,
    pub plan: &'a GatewayPlan,
    pub lan: MemPort,
    pub wan: MemPort,
    /// Its IKE connections (with `--ike`).
    pub ike: Option<Vec<Connection>>,
    /// With `--ike --wireshark-keys`: receives every SA its control plane installs.
    pub export: Option<KeyExport>,
}

impl Gateways {
    /// Starts both sites' workers; with IKE connections, their control loops (not yet
    /// initiating), else the static SAs and policies installed and acknowledged.
    pub fn start(sites: [Site; 2], backend: Backend, log: bool) -> Result<Gateways> {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut list = Vec::new();
        let mut threads = Vec::new();
        for (i, s) in sites.into_iter().enumerate() {
            let (gw, plan) = (s.gw, s.plan);
            let mut ike = None;
            let mut rings = (None, None);
            if let Some(conns) = s.ike {
                let (punt_tx, punt_rx) = rtrb::RingBuffer::new(256);
                let (tx_tx, tx_rx) = rtrb::RingBuffer::new(256);
                // The config's policies without its static protect rules: the negotiated
                // CHILD_SAs bring their own.
                let rules = plan
                    .rules
                    .iter()
                    .filter(|r| !matches!(r.action, Action::Protect(_)))
                    .cloned()
                    .collect();
                let mut c = InProcControl::new(
                    conns,
                    SaRepository::new(rules, gw.replay_window),
                    Some(punt_rx),
                    Some(tx_tx),
                    backend,
                    gw.wan.address,
                    1,
                );
                if !log {
                    c.set_quiet();
                }
                if let Some(e) = s.export {
                    c.export_keys(e);
                }
                ike = Some(c);
                rings = (Some(punt_tx), Some(tx_rx));
            }
            let (mut link, mut control_link) = agent::link(i as u16, 256, rings.0);
            control_link.transmit = rings.1;
            let worker = Worker::new(
                i as u16,
                s.lan,
                s.wan,
                gw.lan.link(),
                gw.wan.link(),
                Sad::with_capacity(64, crate::seed()),
                Box::new(Spd::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e:?}"))?),
                control_link,
            );
            let handle = worker.handle();
            let stop = stop.clone();
            let core = (cores.len() > 2).then(|| cores[i].id);
            threads.push(
                std::thread::Builder::new()
                    .name(gw.name.clone())
                    .spawn(move || {
                        worker.run(core, &stop);
                    })?,
            );
            // With IKE the policies arrive with the negotiated CHILD_SAs; until then the
            // config's discards apply.
            if ike.is_none() {
                crate::install(&mut link, backend, gw, plan)?;
            }
            list.push(Gateway {
                name: gw.name.clone(),
                handle,
                link,
                sa_names: if ike.is_some() {
                    Vec::new()
                } else {
                    gw.sas.iter().map(|s| s.name.clone()).collect()
                },
                ike,
            });
        }
        Ok(Gateways {
            list,
            threads,
            stop,
        })
    }

    pub fn ike(&self) -> bool {
        self.list.iter().any(|g| g.ike.is_some())
    }

    /// One turn of each site's IKE control loop (its worker's link only), or without IKE a
    /// pump of the links (acknowledgements and released records).
    pub fn turn(&mut self) -> Result<()> {
        for g in self.list.iter_mut() {
            if let Some(c) = g.ike.as_mut() {
                c.turn(&mut [&mut g.link])?;
            }
            g.link.pump();
        }
        Ok(())
    }

    /// True while an IKE exchange is under way, or updates or datagrams wait to go out.
    pub fn busy(&self) -> bool {
        self.list
            .iter()
            .any(|g| g.ike.as_ref().is_some_and(InProcControl::busy))
    }

    /// CHILD_SA rekeys so far at both sites (None without IKE).
    pub fn rekeys(&self) -> Option<u64> {
        self.ike().then(|| {
            self.list
                .iter()
                .filter_map(|g| g.ike.as_ref())
                .map(|c| c.child_counts().1)
                .sum()
        })
    }

    /// Stops the workers; the gateways stay for the summary.
    pub fn stop(mut self) -> Result<Vec<Gateway>> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join()
                .map_err(|_| anyhow::anyhow!("worker thread panicked"))?;
        }
        Ok(self.list)
    }
}

/// With `--ike`: the run's PSK as a comment line (Wireshark's UAT files skip them), then
/// each outbound SA's line as the control planes install them, one [`KeyExport`] per site.
pub fn export_negotiated_keys(path: &Path, psk: &str) -> Result<[KeyExport; 2]> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "# roamgate lab --ike: the IKE PSK of this run is {psk}")?;
    let f = Arc::new(std::sync::Mutex::new(f));
    Ok([f.clone(), f].map(|f| {
        Box::new(move |dir: Direction, p: &proto::sa::SaParams| {
            if dir == Direction::Outbound {
                if let Ok(mut f) = f.lock() {
                    let _ = writeln!(f, "{}", esp_sa_line(p, p.local, p.remote));
                }
            }
        }) as KeyExport
    }))
}

/// A fresh random PSK for one lab run (both sites and the clients share it).
pub fn lab_psk() -> Result<String> {
    let mut psk = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut psk)
        .map_err(|_| anyhow::anyhow!("no randomness for the lab PSK"))?;
    Ok(psk.iter().map(|b| format!("{b:02x}")).collect())
}

/// A lab connection as an `ike` section would give it: PSK, the default IKE proposal,
/// AES-GCM-16 with ESN, a CHILD_SA rekey every `rekey_secs`; selectors, pool and peer
/// address left to the caller.
pub fn connection(
    name: &str,
    local_id: &str,
    remote_id: Option<&str>,
    psk: &str,
    rekey_secs: u64,
) -> ConnectionYaml {
    ConnectionYaml {
        name: name.into(),
        local_id: local_id.into(),
        remote_id: remote_id.map(Into::into),
        psk: Some(psk.into()),
        psk_file: None,
        auth: None,
        cert: None,
        key: None,
        cacerts: Vec::new(),
        crls: Vec::new(),
        peer_eku: None,
        rsa_pss: false,
        allow_sha1: false,
        send_cert: None,
        eap_credentials: None,
        ike_proposals: vec!["aes128gcm16-prfsha256-x25519".into()],
        esp_proposals: vec!["aes128gcm16-esn".into()],
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        pool: None,
        request_vip: false,
        remote_addr: None,
        remote_port: None,
        child_rekey_secs: rekey_secs,
        ike_rekey_secs: 0,
        dpd_secs: 0,
        child_life_secs: 0,
        child_rekey_bytes: 0,
        child_life_bytes: 0,
        child_rekey_packets: 0,
        child_life_packets: 0,
    }
}

/// The lab's tunnels as IKEv2 connections: one per outbound static SA of site A (its
/// selectors), site A initiating to site B's WAN address; with `clients`, site B's
/// road-warrior connection too.
pub fn connections(
    cfg: &LabConfig,
    plan_a: &GatewayPlan,
    psk: &str,
    rekey_secs: u64,
    clients: bool,
) -> Result<[Vec<Connection>; 2]> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let tunnels: Vec<_> = plan_a
        .sas
        .iter()
        .filter(|(d, _)| *d == Direction::Outbound)
        .map(|(_, p)| p)
        .collect();
    for (i, sa) in tunnels.iter().enumerate() {
        let fam = if sa.local_ts.addr().is_ipv4() {
            "v4"
        } else {
            "v6"
        };
        // The family names the tunnel, unless there are two of a family.
        let twins = tunnels
            .iter()
            .filter(|t| t.local_ts.addr().is_ipv4() == sa.local_ts.addr().is_ipv4())
            .count();
        let name = if twins > 1 {
            format!("{fam}-{i}")
        } else {
            fam.to_string()
        };
        let id = |site: &str| format!("{site}-{name}.lab.roamgate.test");
        a.push(ConnectionYaml {
            local_ts: vec![sa.local_ts],
            remote_ts: vec![sa.remote_ts],
            remote_addr: Some(cfg.site_b.wan.address),
            ..connection(&name, &id("a"), Some(&id("b")), psk, rekey_secs)
        });
        b.push(ConnectionYaml {
            local_ts: vec![sa.remote_ts],
            remote_ts: vec![sa.local_ts],
            ..connection(&name, &id("b"), Some(&id("a")), psk, rekey_secs)
        });
    }
    if clients {
        b.push(super::clients::gateway_connection(psk, rekey_secs)?);
    }
    let p = Path::new("lab --ike");
    let validate = |connections| {
        IkeYaml {
            connections,
            ..IkeYaml::default()
        }
        .validate(p, "ike")
    };
    Ok([validate(a)?, validate(b)?])
}

/// Every address a site's WAN port owns on the lab's internet.
pub fn wan_addresses(gw: &GatewayConfig, plan: &GatewayPlan) -> Vec<IpAddr> {
    let mut v = vec![gw.wan.address];
    v.extend(gw.wan.address6.map(IpAddr::V6));
    v.extend(plan.sas.iter().map(|(_, p)| p.local));
    v
}

/// The static SAs' keys in Wireshark's `esp_sa` format (lab only: it exports keys).
pub fn write_keys(path: &Path, a: &GatewayPlan, b: &GatewayPlan) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    for plan in [a, b] {
        for (dir, p) in &plan.sas {
            if *dir == Direction::Outbound {
                writeln!(f, "{}", esp_sa_line(p, p.local, p.remote))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_tunnels_become_connections_that_validate_on_both_sites() {
        let p = crate::embedded_path();
        let cfg: LabConfig = control::config::parse(&p, super::super::EMBEDDED).unwrap();
        let (plan_a, _) = cfg.validate(&p).unwrap();
        let [a, b] = connections(&cfg, &plan_a, "0123456789abcdef", 7, true).unwrap();
        let names = |c: &[Connection]| c.iter().map(|c| c.peer.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&a), ["v4", "v6"]);
        assert_eq!(names(&b), ["v4", "v6", "rw"]);
        // Site A initiates each tunnel to site B; site B waits.
        assert!(a
            .iter()
            .all(|c| c.initiate_to.map(|s| s.ip()) == Some(cfg.site_b.wan.address)));
        assert!(b.iter().all(|c| c.initiate_to.is_none()));
        // Mirrored selectors, the same identities seen from each end, the rekey time.
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.peer.local_ts, y.peer.remote_ts);
            assert_eq!(x.peer.remote_ts, y.peer.local_ts);
            assert_eq!(Some(&x.peer.local_id), y.peer.remote_id.as_ref());
            assert_eq!(x.peer.child_rekey, Some(std::time::Duration::from_secs(7)));
        }
        assert!(b[2].peer.pool.is_some());
    }
}
