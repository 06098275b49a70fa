//! `roamgate lab`: two gateways, site A and site B, on in-memory ports in one process, with
//! simulated LAN hosts sending both ways through the tunnel; with `--ike` the tunnels are
//! negotiated and rekeyed by IKEv2 and road-warrior clients join site B.
//!
//! | module | owns |
//! |---|---|
//! | `topology` | the cables, the tap (`--pcap`), the lab's internet (a switch by destination address) |
//! | `gateways` | the gateways' workers and links, their IKE control loops, the lab's IKE connections |
//! | `hosts` | the sites' LAN hosts (generators, sinks, echo), the per-direction accounts and gaps |
//! | `clients` | the road-warrior clients (worker, control loop, host, roaming) |
//! | `report` | the live lines, the summary, the lab's account and its verdict |
//!
//! Threads: one worker per gateway (pinned to its own core when there are enough), `hosts`,
//! `clients` and `internet` with clients; the caller's thread runs the gateways' IKE control
//! loops and the live line. SAs and policies reach the workers as messages through the same
//! agent path a control plane uses. The lab never drops a packet on purpose: every hop is
//! back-pressured, so anything sent and not delivered is a finding, and fails the run.

mod clients;
mod gateways;
mod hosts;
mod report;
mod topology;

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control::config::{self, BackendChoice, GatewayConfig, LabConfig, Site as FlowSite};
use pipeline::pcap::PcapWriter;
use pipeline::port::mem::cable;
use pipeline::stats::Snapshot;
use pipeline::traffic::FlowSpec;

pub use report::{LabReport, Tick};

use clients::{ClientsPlan, ClientsView};
use gateways::{Gateway, Gateways};
use hosts::{HostSite, HostsView};
use report::{ClientsTick, Flow};
use topology::{Tap, CABLE_SLOTS};

pub(crate) const EMBEDDED: &str = include_str!("../../../configs/lab.yaml");

const DEFAULT_CLIENTS: usize = 3;
const DEFAULT_REKEY_SECS: u64 = 5;
const DEFAULT_ROAM_SECS: f64 = 2.0;
const DEFAULT_CLIENT_RATE_PPS: u64 = 2000;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct LabArgs {
    /// Lab configuration file (default: the embedded configs/lab.yaml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop after this many seconds, print the summary and exit (0 if nothing was lost).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write the ESP link between the two gateways to this pcap file.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// At most this many frames go into the pcap file.
    #[arg(long, default_value_t = 100_000)]
    pub pcap_limit: u64,
    /// Write the SAs' keys to this file in Wireshark's esp_sa format so the capture can be
    /// decrypted (lab only: it exports keys). With --ike: the PSK as a comment line and each
    /// negotiated SA as it is installed (they use ESN, which the file cannot describe).
    #[arg(long)]
    pub wireshark_keys: Option<PathBuf>,
    /// Packets per second offered by each site (overrides the config; 0 = as fast as the
    /// gateways take them).
    #[arg(long)]
    pub rate_pps: Option<u64>,
    /// Crypto backend (overrides the config): auto, ipsec-mb, ring.
    #[arg(long)]
    pub crypto: Option<String>,
    /// Negotiate the SAs with IKEv2 through the gateways' own punt path instead of using the
    /// config's static keys (PSK, one IKE SA per tunnel), and rekey them while traffic flows.
    #[arg(long)]
    pub ike: bool,
    /// With --ike: rekey every CHILD_SA after this many seconds [default: 5].
    #[arg(long, value_name = "SECS")]
    pub rekey_secs: Option<u64>,
    /// With --ike: this many road-warrior clients (what `roamgate client` runs) get virtual
    /// IPs from site B and stream to its host, which echoes [default: 3].
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// With --ike: packets per second each client's LAN host sends [default: 2000].
    #[arg(long, value_name = "PPS")]
    pub client_rate_pps: Option<u64>,
    /// With --ike and clients: client-0 changes its address every this many seconds
    /// (MOBIKE, make before break; 0: never) [default: 2].
    #[arg(long, value_name = "SECS")]
    pub roam_secs: Option<f64>,
    /// Serve both gateways' counters in the Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl LabArgs {
    /// The flags that only mean something with `--ike` and were given without it. They are
    /// refused rather than implying `--ike`: the static-key lab is a different lab (its keys
    /// can be exported, its SAs never change), and silently switching would hide that.
    fn ike_flags_without_ike(&self) -> Option<&'static str> {
        if self.ike {
            return None;
        }
        [
            ("--rekey-secs", self.rekey_secs.is_some()),
            ("--clients", self.clients.is_some()),
            ("--client-rate-pps", self.client_rate_pps.is_some()),
            ("--roam-secs", self.roam_secs.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// `roamgate lab`: the live lines once a second, the summary, exit non-zero on any loss.
pub fn run(args: LabArgs) -> Result<()> {
    run_with(&args, true, &mut |t| t.print())?.verdict()
}

/// Runs the lab until Ctrl-C or `--duration`, calls `on_tick` once a second and returns what
/// it measured (the gateways' summary is printed; the caller judges the account). `log`:
/// print the gateways' IKE events.
pub fn run_with(args: &LabArgs, log: bool, on_tick: &mut dyn FnMut(&Tick)) -> Result<LabReport> {
    if let Some(flag) = args.ike_flags_without_ike() {
        bail!(
            "{flag} needs --ike: the static-key lab has no IKE to rekey and no road-warrior \
             clients (add --ike)"
        );
    }
    let (path, mut cfg): (PathBuf, LabConfig) = match &args.config {
        Some(p) => (p.clone(), config::load(p)?),
        None => {
            let p = crate::embedded_path();
            let c = config::parse(&p, EMBEDDED)?;
            (p, c)
        }
    };
    if args.wireshark_keys.is_some() && !args.ike {
        // Wireshark's esp_sa table cannot say that an SA uses extended sequence numbers, and
        // with ESN the ICV covers the high 32 bits of the sequence number: tshark would call
        // every ICV bad. The exported run uses 32-bit sequence numbers instead (its SAs stop
        // after 2^32 - 1 packets each, which a capture-sized run never reaches).
        for sa in cfg.site_a.sas.iter_mut().chain(cfg.site_b.sas.iter_mut()) {
            sa.esn = false;
        }
        println!(
            "roamgate lab: --wireshark-keys: the static SAs use 32-bit sequence numbers (no ESN), \
             which the esp_sa file can describe, so Wireshark checks every ICV"
        );
    }
    let (plan_a, plan_b) = cfg.validate(&path)?;
    let choice = match args.crypto.as_deref() {
        None => cfg.crypto_backend,
        Some("auto") => BackendChoice::Auto,
        Some("ipsec-mb") => BackendChoice::IpsecMb,
        Some("ring") => BackendChoice::Ring,
        Some(other) => bail!("--crypto {other}: expected auto, ipsec-mb or ring"),
    };
    if choice == BackendChoice::Null {
        bail!(
            "{}: crypto_backend: null is for benchmarks only, not the lab",
            path.display()
        );
    }
    let backend = choice.resolve().map_err(anyhow::Error::msg)?;
    let rate = args.rate_pps.unwrap_or(cfg.traffic.rate_pps);
    let clients = if args.ike {
        args.clients.unwrap_or(DEFAULT_CLIENTS)
    } else {
        0
    };
    if clients > clients::MAX_CLIENTS {
        bail!(
            "--clients {clients}: at most {} (the lab's address plan)",
            clients::MAX_CLIENTS
        );
    }
    let rekey_secs = args.rekey_secs.unwrap_or(DEFAULT_REKEY_SECS);
    println!(
        "roamgate lab: {} <-> {} on in-memory ports; {}",
        cfg.site_a.name,
        cfg.site_b.name,
        pipeline::crypto::describe_backend(backend, choice != BackendChoice::Auto)
    );

    // Cables: hosts <-> gateway LANs, gateway WAN <-> (tap or internet) <-> gateway WAN.
    let (hosts_a, lan_a) = cable("hosts-a", "site-a/lan", CABLE_SLOTS);
    let (hosts_b, lan_b) = cable("hosts-b", "site-b/lan", CABLE_SLOTS);
    let wan = topology::wan(
        (clients > 0).then(|| {
            [
                gateways::wan_addresses(&cfg.site_a, &plan_a),
                gateways::wan_addresses(&cfg.site_b, &plan_b),
            ]
        }),
        args.pcap.is_some(),
    );
    let mut internet = wan.internet;

    let psk = if args.ike {
        gateways::lab_psk()?
    } else {
        String::new()
    };
    let [ike_a, ike_b] = if args.ike {
        gateways::connections(&cfg, &plan_a, &psk, rekey_secs, clients > 0)?.map(Some)
    } else {
        [None, None]
    };
    let [export_a, export_b] = match (&args.wireshark_keys, args.ike) {
        (Some(p), true) => gateways::export_negotiated_keys(p, &psk)?.map(Some),
        _ => [None, None],
    };
    let tunnels = ike_a.as_ref().map_or(0, Vec::len);
    let mut gateways = Gateways::start(
        [
            gateways::Site {
                gw: &cfg.site_a,
                plan: &plan_a,
                lan: lan_a,
                wan: wan.a,
                ike: ike_a,
                export: export_a,
            },
            gateways::Site {
                gw: &cfg.site_b,
                plan: &plan_b,
                lan: lan_b,
                wan: wan.b,
                ike: ike_b,
                export: export_b,
            },
        ],
        backend,
        log,
    )?;
    let stop_metrics = Arc::new(AtomicBool::new(false));
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::serve(
            addr,
            crate::metrics::Sources {
                gateways: gateways
                    .list
                    .iter()
                    .map(|g| crate::metrics::GatewaySource {
                        name: g.name.clone(),
                        handles: vec![g.handle.clone()],
                        ports: None,
                        punt: None,
                        ike: g
                            .ike
                            .as_ref()
                            .map(|c| crate::metrics::IkeSource::InProcess(c.view.clone())),
                    })
                    .collect(),
                started: Instant::now(),
            },
            stop_metrics.clone(),
        )?),
        None => None,
    };
    let mut pcap = match &args.pcap {
        Some(p) => Some(PcapWriter::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))?),
        None => None,
    };

    let clients_view = Arc::new(ClientsView::default());
    let stop_client_traffic = Arc::new(AtomicBool::new(false));
    let stop_clients = Arc::new(AtomicBool::new(false));
    let client_thread = match internet.as_mut() {
        Some(net) => {
            println!(
                "ike: {clients} road-warrior clients ask {} for virtual IPs from {}",
                cfg.site_b.name,
                clients::POOL
            );
            let plan = ClientsPlan {
                n: clients,
                gateway: cfg.site_b.wan.address,
                psk: &psk,
                rekey_secs,
                rate_pps: args.client_rate_pps.unwrap_or(DEFAULT_CLIENT_RATE_PPS),
                roam_secs: Some(args.roam_secs.unwrap_or(DEFAULT_ROAM_SECS)),
                backend,
                log: false,
            };
            Some(clients::spawn(
                &plan,
                net,
                clients_view.clone(),
                stop_client_traffic.clone(),
                stop_clients.clone(),
            )?)
        }
        None => None,
    };
    // With clients, the lab's internet runs from the start: IKE goes through it too.
    let stop_internet = Arc::new(AtomicBool::new(false));
    let internet_thread = match internet.take() {
        Some(net) => Some(net.spawn(pcap.take(), args.pcap_limit, stop_internet.clone())?),
        None => None,
    };

    if gateways.ike() {
        for g in gateways.list.iter_mut() {
            if let Some(c) = g.ike.as_mut() {
                c.initiate();
            }
        }
        // Traffic starts once every tunnel is up at both sites. Site A initiates them: when
        // it has them, site B has installed them too (site B also counts the clients').
        let t = Instant::now();
        let up = |g: &Gateways| g.list[0].ike.as_ref().map_or(0, |c| c.children().len());
        while up(&gateways) < tunnels {
            gateways.turn()?;
            if t.elapsed() > Duration::from_secs(10) {
                bail!("IKE did not bring the lab's tunnels up within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Let the policies reach the workers.
        gateways.turn()?;
        std::thread::sleep(Duration::from_millis(50));
        println!(
            "ike: {} negotiated; rekeying every CHILD_SA every {rekey_secs} s",
            if tunnels == 2 {
                "both tunnels".to_string()
            } else {
                format!("all {tunnels} tunnels")
            }
        );
    }

    if let Some(p) = &args.wireshark_keys {
        if !args.ike {
            gateways::write_keys(p, &plan_a, &plan_b)?;
        }
        tracing::warn!(target: "lab",
            "WARNING: {} holds the SA keys of this lab run so that Wireshark/tshark can decrypt \
             the capture. Lab only: never export keys from a real deployment.",
            p.display()
        );
    }

    // Hosts: generators and sinks for each site.
    let flows_from = |site: FlowSite, gw: &GatewayConfig| -> Vec<FlowSpec> {
        cfg.traffic
            .flows
            .iter()
            .filter(|f| f.from == site)
            .map(|f| FlowSpec {
                src_mac: gw.lan.neighbor_mac.unwrap_or_default().0,
                dst_mac: gw.lan.mac.unwrap_or_default().0,
                src: f.src,
                dst: f.dst,
                src_port: f.src_port,
                dst_port: f.dst_port,
            })
            .collect()
    };
    let sizes = &cfg.traffic.frame_sizes;
    let hosts_view = Arc::new(HostsView::default());
    let stop_hosts = Arc::new(AtomicBool::new(false));
    let hosts = hosts::spawn(
        [
            HostSite::new(
                hosts_a,
                flows_from(FlowSite::SiteA, &cfg.site_a),
                sizes,
                rate,
            ),
            HostSite::new(
                hosts_b,
                flows_from(FlowSite::SiteB, &cfg.site_b),
                sizes,
                rate,
            ),
        ],
        clients::pool(),
        wan.tap.map(|(a, b)| Tap {
            a,
            b,
            written: 0,
            limit: args.pcap_limit,
        }),
        pcap,
        hosts_view.clone(),
        stop_hosts.clone(),
    )?;
    let names = [
        format!("{} -> {}", cfg.site_a.name, cfg.site_b.name),
        format!("{} -> {}", cfg.site_b.name, cfg.site_a.name),
    ];

    let stop_main = Arc::new(AtomicBool::new(false));
    {
        let s = stop_main.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("cannot install the Ctrl-C handler")?;
    }
    let start = Instant::now();
    let deadline = args.duration.map(Duration::from_secs_f64);
    let mut last = totals(&gateways.list);
    let mut last_t = start;
    let mut next_tick = start + Duration::from_secs(1);
    loop {
        if stop_main.load(Ordering::Relaxed) || deadline.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let now = Instant::now();
        if now >= next_tick {
            let cur = totals(&gateways.list);
            let mut tick = Tick::rates(&gateways.list, &cur, &last, now - last_t);
            tick.elapsed = start.elapsed();
            tick.rekeys = gateways.rekeys();
            tick.flows = flows_now(&hosts_view, &names);
            tick.clients = client_thread
                .is_some()
                .then(|| clients_now(&clients_view, clients));
            on_tick(&tick);
            last = cur;
            last_t = now;
            next_tick += Duration::from_secs(1);
        }
        gateways.turn()?;
        if gateways.ike() {
            std::thread::sleep(Duration::from_micros(500));
        } else {
            std::thread::sleep(
                Duration::from_millis(20).min(next_tick.saturating_duration_since(Instant::now())),
            );
        }
    }
    let elapsed = start.elapsed();
    // The clients stop sending first; their last echoes need the hosts and the internet.
    // Then IKE gets up to 3 s to finish the exchanges under way (a rekey cut off halfway
    // would leave both the old and the new CHILD_SA in the summary).
    stop_client_traffic.store(true, Ordering::Relaxed);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let v = &clients_view;
        let clients_done = client_thread.is_none()
            || (v.sent.load(Ordering::Relaxed) == v.echoed.load(Ordering::Relaxed)
                && v.busy.load(Ordering::Relaxed) == 0);
        if clients_done && !gateways.busy() {
            break;
        }
        gateways.turn()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    stop_hosts.store(true, Ordering::Relaxed);
    let (sites, captured) = hosts
        .join()
        .map_err(|_| anyhow::anyhow!("hosts thread panicked"))?;
    let gateways = gateways.stop()?;
    stop_clients.store(true, Ordering::Relaxed);
    let client_summaries = match client_thread {
        Some(t) => t
            .join()
            .map_err(|_| anyhow::anyhow!("clients thread panicked"))?,
        None => Vec::new(),
    };
    stop_internet.store(true, Ordering::Relaxed);
    let (captured, unroutable) = match internet_thread {
        Some(t) => {
            let (written, unroutable) = t
                .join()
                .map_err(|_| anyhow::anyhow!("internet thread panicked"))?;
            (args.pcap.is_some().then_some(written), unroutable)
        }
        None => (captured, 0),
    };
    stop_metrics.store(true, Ordering::Relaxed);
    if let Some(m) = metrics {
        let _ = m.join();
    }
    report::gateways(elapsed, backend, &gateways);
    println!(
        "  (stopped {:.1} s after the traffic: IKE exchanges under way finished, packets in flight drained)",
        (start.elapsed() - elapsed).as_secs_f64()
    );
    let [a, b] = &sites;
    let flow = |name: &str, from: &HostSite, to: &HostSite| Flow {
        name: name.to_string(),
        sent: from.sent(),
        delivered: from.sink.received(),
        gap_ns: to.gap_max_ns,
    };
    let lab = LabReport {
        elapsed,
        flows: [flow(&names[0], a, b), flow(&names[1], b, a)],
        clients: client_summaries,
        gateway_rekeys: gateways
            .iter()
            .filter_map(|g| Some((g.name.clone(), g.ike.as_ref()?.child_counts().1)))
            .collect(),
        unroutable,
    };
    lab.print(&sites);
    if let (Some(p), Some(n)) = (&args.pcap, captured) {
        println!(
            "capture: {n} frames of the link between the gateways in {}",
            p.display()
        );
    }
    Ok(lab)
}

fn totals(gateways: &[Gateway]) -> Vec<Snapshot> {
    gateways
        .iter()
        .map(|g| g.handle.counters.snapshot())
        .collect()
}

/// Both directions as the hosts thread last published them; the gaps of the last second are
/// taken (the next tick starts from zero).
fn flows_now(view: &HostsView, names: &[String; 2]) -> [Flow; 2] {
    let f = |d: usize| {
        let v = &view.dirs[d];
        Flow {
            name: names[d].clone(),
            sent: v.sent.load(Ordering::Relaxed),
            delivered: v.delivered.load(Ordering::Relaxed),
            gap_ns: v.gap_recent_ns.swap(0, Ordering::Relaxed),
        }
    };
    [f(0), f(1)]
}

fn clients_now(v: &ClientsView, n: usize) -> ClientsTick {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    ClientsTick {
        n,
        up: load(&v.up),
        sent: load(&v.sent),
        echoed: load(&v.echoed),
        rekeys: load(&v.rekeys),
        roams: load(&v.roams),
        last_roam_us: load(&v.last_roam_us),
        gap_ns: v.gap_recent_ns.swap(0, Ordering::Relaxed),
        roam_addrs: (
            clients::client_wan(0).to_string(),
            clients::client_wan_alt(0).to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ike_flags_without_ike_are_refused_with_the_flag_named() {
        let args = LabArgs {
            clients: Some(2),
            ..LabArgs::default()
        };
        let e = run_with(&args, false, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--clients needs --ike"), "{e}");
        for (args, flag) in [
            (
                LabArgs {
                    rekey_secs: Some(1),
                    ..LabArgs::default()
                },
                "--rekey-secs",
            ),
            (
                LabArgs {
                    roam_secs: Some(1.0),
                    ..LabArgs::default()
                },
                "--roam-secs",
            ),
        ] {
            assert_eq!(args.ike_flags_without_ike(), Some(flag));
        }
        let ok = LabArgs {
            ike: true,
            clients: Some(0),
            rekey_secs: Some(1),
            ..LabArgs::default()
        };
        assert_eq!(ok.ike_flags_without_ike(), None);
    }
}
