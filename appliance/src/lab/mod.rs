//! `roamgate lab`: two gateways, site A and site B, on in-memory ports in one process.
//!
//! Threads: one worker per gateway (pinned to its own core when there are enough), one
//! "hosts" thread that plays every LAN host (generators and sinks) and, with `--pcap`, the tap
//! on the link between the gateways; the main thread prints the live line. SAs and policies
//! reach the workers as messages through the same agent path a control plane uses.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use control::config::{self, BackendChoice, GatewayConfig, GatewayPlan, LabConfig, Site};
use hdrhistogram::Histogram;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::msg::Direction;
use pipeline::pcap::{esp_sa_line, PcapWriter};
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::{Frame, Port};
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::stats::{DropReason, Snapshot, Traffic};
use pipeline::traffic::{FlowSpec, Generator, Sink};
use pipeline::worker::{Worker, WorkerHandle};

mod clients;

const EMBEDDED: &str = include_str!("../../../configs/lab.yaml");
const CABLE_SLOTS: usize = 1024;

#[derive(clap::Args)]
pub struct LabArgs {
    /// Lab configuration file (default: the embedded configs/lab.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many seconds, print the summary and exit 0.
    #[arg(long)]
    duration: Option<f64>,
    /// Write the ESP link between the two gateways to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// At most this many frames go into the pcap file.
    #[arg(long, default_value_t = 100_000)]
    pcap_limit: u64,
    /// Write the SAs' keys to this file in Wireshark's esp_sa format so the capture can be
    /// decrypted (lab only: it exports keys).
    #[arg(long)]
    wireshark_keys: Option<PathBuf>,
    /// Packets per second offered by each site (overrides the config; 0 = as fast as the
    /// gateways take them).
    #[arg(long)]
    rate_pps: Option<u64>,
    /// Crypto backend (overrides the config): auto, ipsec-mb, ring.
    #[arg(long)]
    crypto: Option<String>,
    /// Negotiate the SAs with IKEv2 through the gateways' own punt path instead of using the
    /// config's static keys (PSK, one IKE SA per tunnel), and rekey them while traffic flows.
    #[arg(long)]
    ike: bool,
    /// With --ike: rekey every CHILD_SA after this many seconds.
    #[arg(long, default_value_t = 5)]
    rekey_secs: u64,
    /// With --ike: this many road-warrior clients (what `roamgate client` runs) get virtual
    /// IPs from site B and stream to its host, which echoes.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Packets per second each client's LAN host sends.
    #[arg(long, default_value_t = 2000)]
    client_rate_pps: u64,
    /// With clients: client-0 changes its address every this many seconds (MOBIKE, make
    /// before break; 0: never).
    #[arg(long, default_value_t = 2.0)]
    roam_secs: f64,
}

type Conns = Vec<control::config::ike::Connection>;

/// The lab's two tunnels as IKEv2 connections, site A initiating, and with `clients` site B's
/// road-warrior connection; a fresh random PSK per run (returned too, for the clients).
fn lab_ike(cfg: &LabConfig, rekey_secs: u64, clients: bool) -> Result<([Conns; 2], String)> {
    let mut psk = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut psk)
        .map_err(|_| anyhow::anyhow!("no randomness for the lab PSK"))?;
    let psk: String = psk.iter().map(|b| format!("{b:02x}")).collect();
    let remote_a = cfg.site_b.wan.address;
    let conn = |me: &str, peer: &str, fam: &str, l: &str, r: &str, to: Option<IpAddr>| {
        format!(
            "  - {{ name: {fam}, local_id: {me}-{fam}.lab.roamgate.test, remote_id: {peer}-{fam}.lab.roamgate.test, \
             psk: \"{psk}\", esp_proposals: [aes128gcm16-esn], local_ts: [\"{l}\"], remote_ts: [\"{r}\"], \
             child_rekey_secs: {rekey_secs}{} }}\n",
            to.map_or(String::new(), |a| format!(", remote_addr: \"{a}\""))
        )
    };
    let a = format!(
        "connections:\n{}{}",
        conn("a", "b", "v4", "10.1.0.0/24", "10.2.0.0/24", Some(remote_a)),
        conn("a", "b", "v6", "fd00:a::/64", "fd00:b::/64", Some(remote_a))
    );
    let b = format!(
        "connections:\n{}{}{}",
        conn("b", "a", "v4", "10.2.0.0/24", "10.1.0.0/24", None),
        conn("b", "a", "v6", "fd00:b::/64", "fd00:a::/64", None),
        if clients {
            clients::gateway_connection(&psk, rekey_secs)
        } else {
            String::new()
        }
    );
    let p = Path::new("lab --ike");
    let parse = |t: &str| -> Result<Vec<control::config::ike::Connection>> {
        let y: control::config::ike::IkeYaml = config::parse(p, t)?;
        Ok(y.validate(p, "ike")?)
    };
    Ok(([parse(&a)?, parse(&b)?], psk))
}

struct Gateway {
    name: String,
    handle: WorkerHandle,
    link: WorkerLink,
    /// SA names by id (the config's order).
    sa_names: Vec<String>,
}

pub fn run(args: LabArgs) -> Result<()> {
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
    println!(
        "roamgate lab: {} <-> {} on in-memory ports; {}",
        cfg.site_a.name,
        cfg.site_b.name,
        pipeline::crypto::describe_backend(backend, choice != BackendChoice::Auto)
    );

    // Cables: hosts <-> gateway LANs, gateway WAN <-> (tap) <-> gateway WAN.
    let (hosts_a, lan_a) = cable("hosts-a", "site-a/lan", CABLE_SLOTS);
    let (hosts_b, lan_b) = cable("hosts-b", "site-b/lan", CABLE_SLOTS);
    let clients = if args.ike { args.clients } else { 0 };
    if clients > 200 {
        bail!("--clients {clients}: at most 200 (one address each in 198.51.100.0/24)");
    }
    let mut internet = (clients > 0).then(clients::Internet::new);
    let (wan_a, wan_b, tap) = if let Some(net) = internet.as_mut() {
        let addrs = |gw: &GatewayConfig, plan: &GatewayPlan| {
            let mut v = vec![gw.wan.address];
            v.extend(gw.wan.address6.map(IpAddr::V6));
            v.extend(plan.sas.iter().map(|(_, p)| p.local));
            v
        };
        (
            net.attach("site-a/wan", addrs(&cfg.site_a, &plan_a)),
            net.attach("site-b/wan", addrs(&cfg.site_b, &plan_b)),
            None,
        )
    } else if args.pcap.is_some() {
        let (wan_a, tap_a) = cable("site-a/wan", "tap-a", CABLE_SLOTS);
        let (tap_b, wan_b) = cable("tap-b", "site-b/wan", CABLE_SLOTS);
        (wan_a, wan_b, Some((tap_a, tap_b)))
    } else {
        let (wan_a, wan_b) = cable("site-a/wan", "site-b/wan", CABLE_SLOTS);
        (wan_a, wan_b, None)
    };

    let stop_workers = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut gateways = Vec::new();
    let mut worker_threads = Vec::new();
    let (mut ike_conns, psk) = if args.ike {
        let (c, psk) = lab_ike(&cfg, args.rekey_secs, clients > 0)?;
        (c.map(Some), psk)
    } else {
        ([None, None], String::new())
    };
    let mut controls: Vec<control::runner::IkeControl> = Vec::new();
    for (i, (gw, plan, lan, wan)) in [
        (&cfg.site_a, &plan_a, lan_a, wan_a),
        (&cfg.site_b, &plan_b, lan_b, wan_b),
    ]
    .into_iter()
    .enumerate()
    {
        let mut ike_rings = None;
        if let Some(conns) = ike_conns[i].take() {
            let (punt_tx, punt_rx) = rtrb::RingBuffer::new(256);
            let (tx_tx, tx_rx) = rtrb::RingBuffer::new(256);
            // The config's policies without its static protect rules: the negotiated CHILD_SAs
            // bring their own.
            let rules = plan
                .rules
                .iter()
                .filter(|r| !matches!(r.action, pipeline::spd::Action::Protect(_)))
                .cloned()
                .collect();
            controls.push(control::runner::IkeControl::new(
                conns,
                control::repo::SaRepository::new(rules, gw.replay_window),
                Some(punt_rx),
                Some(tx_tx),
                backend,
                gw.wan.address,
            ));
            ike_rings = Some((punt_tx, tx_rx));
        }
        let (punt, transmit) = match ike_rings {
            Some((p, t)) => (Some(p), Some(t)),
            None => (None, None),
        };
        let (mut agent_link, mut control_link) = agent::link(i as u16, 256, punt);
        control_link.transmit = transmit;
        let worker = Worker::new(
            i as u16,
            lan,
            wan,
            gw.lan.link(),
            gw.wan.link(),
            Sad::with_capacity(64, crate::seed()),
            Box::new(Spd::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e:?}"))?),
            control_link,
        );
        let handle = worker.handle();
        let stop = stop_workers.clone();
        let core = (cores.len() > 2).then(|| cores[i].id);
        worker_threads.push(std::thread::Builder::new().name(gw.name.clone()).spawn(
            move || {
                worker.run(core, &stop);
            },
        )?);
        if args.ike {
            // The policies arrive with the negotiated CHILD_SAs; until then the config's
            // discards apply.
        } else {
            crate::install(&mut agent_link, backend, gw, plan)?;
        }
        gateways.push(Gateway {
            name: gw.name.clone(),
            handle,
            link: agent_link,
            sa_names: if args.ike {
                Vec::new()
            } else {
                gw.sas.iter().map(|s| s.name.clone()).collect()
            },
        });
    }
    let mut pcap = match &args.pcap {
        Some(p) => Some(PcapWriter::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ))?),
        None => None,
    };
    let clients_view = Arc::new(clients::ClientsView::default());
    let stop_client_traffic = Arc::new(AtomicBool::new(false));
    let stop_clients = Arc::new(AtomicBool::new(false));
    let client_thread = match internet.as_mut() {
        Some(net) => {
            println!(
                "ike: {clients} road-warrior clients ask {} for virtual IPs from {}",
                cfg.site_b.name,
                clients::POOL
            );
            Some(clients::spawn(
                clients,
                net,
                cfg.site_b.wan.address,
                &psk,
                args.rekey_secs,
                args.client_rate_pps,
                Some(args.roam_secs),
                backend,
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
        Some(mut net) => {
            let mut pcap = pcap.take();
            let stop = stop_internet.clone();
            let limit = args.pcap_limit;
            Some(
                std::thread::Builder::new()
                    .name("internet".into())
                    .spawn(move || {
                        let mut written = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let moved = net.pass(|frame| {
                                if let Some(p) = pcap.as_mut() {
                                    if written < limit && p.write(stamp_us(), frame).is_ok() {
                                        written += 1;
                                    }
                                }
                            });
                            if moved == 0 {
                                std::thread::sleep(Duration::from_micros(20));
                            }
                        }
                        if let Some(p) = pcap.as_mut() {
                            let _ = p.flush();
                        }
                        (written, net.unroutable)
                    })?,
            )
        }
        None => None,
    };
    if args.ike {
        if args.wireshark_keys.is_some() {
            bail!("--wireshark-keys exports the static keys; with --ike the keys are negotiated");
        }
        for c in controls.iter_mut() {
            c.initiate();
        }
        // Traffic starts once both tunnels are up at both sites.
        let t = Instant::now();
        // Site A initiates both tunnels: when it has them, site B has installed them too
        // (site B also counts the clients' CHILD_SAs).
        while controls[0].children().len() < 2 {
            ike_turn(&mut controls, &mut gateways)?;
            if t.elapsed() > Duration::from_secs(10) {
                bail!("IKE did not bring the lab's tunnels up within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        // Let the policies reach the workers.
        for g in gateways.iter_mut() {
            let g2 = g.link.pump();
            let _ = g2;
        }
        std::thread::sleep(Duration::from_millis(50));
        println!(
            "ike: both tunnels negotiated; rekeying every CHILD_SA every {} s",
            args.rekey_secs
        );
    }

    if let Some(p) = &args.wireshark_keys {
        write_keys(p, &plan_a, &plan_b)?;
        eprintln!(
            "WARNING: {} holds the SA keys of this lab run so that Wireshark/tshark can decrypt \
             the capture. Lab only: never export keys from a real deployment.",
            p.display()
        );
    }

    // Hosts: generators and sinks for each site.
    let flows_from = |site: Site, gw: &GatewayConfig| -> Vec<FlowSpec> {
        cfg.traffic
            .flows
            .iter()
            .filter(|f| f.from == site)
            .map(|f| FlowSpec {
                src_mac: gw.lan.neighbor_mac.0,
                dst_mac: gw.lan.mac.unwrap_or_default().0,
                src: f.src,
                dst: f.dst,
                src_port: f.src_port,
                dst_port: f.dst_port,
            })
            .collect()
    };
    let flows_a = flows_from(Site::SiteA, &cfg.site_a);
    let flows_b = flows_from(Site::SiteB, &cfg.site_b);
    let stop_hosts = Arc::new(AtomicBool::new(false));
    let hosts = {
        let stop = stop_hosts.clone();
        let sizes = cfg.traffic.frame_sizes.clone();
        let pcap_limit = args.pcap_limit;
        std::thread::Builder::new()
            .name("hosts".into())
            .spawn(move || {
                let mut sites = [
                    HostSite::new(hosts_a, flows_a, &sizes, rate),
                    HostSite::new(hosts_b, flows_b, &sizes, rate),
                ];
                let echo_pool: pipeline::spd::Prefix = clients::POOL
                    .parse()
                    .expect("a valid prefix literal");
                let mut tap = tap.map(|(a, b)| Tap {
                    a,
                    b,
                    written: 0,
                    limit: pcap_limit,
                });
                let start = Instant::now();
                let mut draining_since: Option<Instant> = None;
                loop {
                    let now = start.elapsed().as_nanos() as u64;
                    let generating = !stop.load(Ordering::Relaxed);
                    let mut moved = 0;
                    for s in sites.iter_mut() {
                        moved += s.turn(now, generating);
                    }
                    // What arrives at one site's hosts was generated at the other site, whose sink
                    // keeps the per-flow account.
                    let (a, b) = sites.split_at_mut(1);
                    moved += a[0].receive(&mut b[0], now, None)
                        + b[0].receive(&mut a[0], now, Some(echo_pool));
                    if let Some(t) = tap.as_mut() {
                        moved += t.pass(pcap.as_mut());
                    }

                    if !generating {
                        let since = *draining_since.get_or_insert_with(Instant::now);
                        let in_flight = sites
                            .iter()
                            .map(|s| s.gen.sent().iter().sum::<u64>())
                            .sum::<u64>()
                            - sites.iter().map(|s| s.sink.received()).sum::<u64>();
                        if in_flight == 0 || since.elapsed() > Duration::from_secs(2) {
                            break;
                        }
                    }
                    if moved == 0 {
                        std::thread::yield_now();
                    }
                }
                if let Some(p) = pcap.as_mut() {
                    let _ = p.flush();
                }
                (sites, tap.map(|t| t.written))
            })?
    };

    let stop_main = Arc::new(AtomicBool::new(false));
    {
        let s = stop_main.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("cannot install the Ctrl-C handler")?;
    }
    let start = Instant::now();
    let deadline = args.duration.map(Duration::from_secs_f64);
    let mut last = totals(&gateways);
    let mut last_t = start;
    let mut next_tick = start + Duration::from_secs(1);
    loop {
        if stop_main.load(Ordering::Relaxed) || deadline.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let now = Instant::now();
        if now >= next_tick {
            let cur = totals(&gateways);
            live_line(start.elapsed(), &gateways, &cur, &last, now - last_t);
            if !controls.is_empty() {
                let rekeyed: u64 = controls.iter().map(|c| c.child_counts().1).sum();
                println!("        ike: {rekeyed} CHILD_SA rekeys so far, traffic never paused");
            }
            if client_thread.is_some() {
                let v = &clients_view;
                let (sent, echoed) = (
                    v.sent.load(Ordering::Relaxed),
                    v.echoed.load(Ordering::Relaxed),
                );
                println!(
                    "        clients: {}/{clients} up with virtual IPs, {sent} sent, {echoed} echoed back, {} in flight, {} rekeys",
                    v.up.load(Ordering::Relaxed),
                    sent.saturating_sub(echoed),
                    v.rekeys.load(Ordering::Relaxed),
                );
                let roams = v.roams.load(Ordering::Relaxed);
                if roams > 0 {
                    println!(
                        "        client-0 roamed {roams}x between {} and {} (MOBIKE, same SAs, no rekey); last update answered in {:.1} ms",
                        clients::client_wan(0),
                        clients::client_wan_alt(0),
                        v.last_roam_us.load(Ordering::Relaxed) as f64 / 1e3
                    );
                }
            }
            last = cur;
            last_t = now;
            next_tick += Duration::from_secs(1);
        }
        if controls.is_empty() {
            for g in gateways.iter_mut() {
                g.link.pump();
            }
            std::thread::sleep(
                Duration::from_millis(20).min(next_tick.saturating_duration_since(Instant::now())),
            );
        } else {
            ike_turn(&mut controls, &mut gateways)?;
            std::thread::sleep(Duration::from_micros(500));
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
        if clients_done && controls.iter().all(|c| !c.busy()) {
            break;
        }
        if !controls.is_empty() {
            ike_turn(&mut controls, &mut gateways)?;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop_hosts.store(true, Ordering::Relaxed);
    let (sites, captured) = hosts
        .join()
        .map_err(|_| anyhow::anyhow!("hosts thread panicked"))?;
    stop_workers.store(true, Ordering::Relaxed);
    for t in worker_threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("worker thread panicked"))?;
    }
    stop_clients.store(true, Ordering::Relaxed);
    let client_summaries = match client_thread {
        Some(t) => t
            .join()
            .map_err(|_| anyhow::anyhow!("clients thread panicked"))?,
        None => Vec::new(),
    };
    stop_internet.store(true, Ordering::Relaxed);
    let captured = match internet_thread {
        Some(t) => {
            let (written, unroutable) = t
                .join()
                .map_err(|_| anyhow::anyhow!("internet thread panicked"))?;
            if unroutable > 0 {
                println!("internet: {unroutable} frames for addresses nobody owns");
            }
            args.pcap.is_some().then_some(written)
        }
        None => captured,
    };
    summary(elapsed, backend, &gateways, &sites, &cfg);
    let mut clients_lost = 0;
    for c in &client_summaries {
        let lost = c.sent.saturating_sub(c.echoed);
        clients_lost += lost;
        println!(
            "  {} (virtual IP {}): sent {}, echoed back {}, lost {lost}, {} rekeys, {} roams; round trip p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            c.name,
            c.virtual_ip.map_or("none".to_string(), |v| v.to_string()),
            c.sent,
            c.echoed,
            c.rekeys,
            c.roams,
            c.p50_us,
            c.p99_us,
            c.max_us
        );
    }
    if client_summaries
        .iter()
        .any(|c| c.virtual_ip.is_none() || c.sent == 0)
    {
        bail!("a road-warrior client never got its tunnel up");
    }
    if let (Some(p), Some(n)) = (&args.pcap, captured) {
        println!(
            "capture: {n} frames of the link between the gateways in {}",
            p.display()
        );
    }
    let lost: u64 = sites
        .iter()
        .map(|s| s.gen.sent().iter().sum::<u64>())
        .sum::<u64>()
        - sites.iter().map(|s| s.sink.received()).sum::<u64>();
    if lost > 0 {
        bail!("{lost} packets were sent by the hosts but never arrived");
    }
    if clients_lost > 0 {
        bail!("{clients_lost} client packets were never echoed back");
    }
    Ok(())
}

fn write_keys(path: &Path, a: &GatewayPlan, b: &GatewayPlan) -> Result<()> {
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

/// One site's simulated hosts: a generator into the LAN and a sink for what comes out of it.
struct HostSite {
    port: MemPort,
    gen: Generator,
    sink: Sink,
    latency: Histogram<u64>,
    pool: Vec<MemFrame>,
    rate: u64,
    credit: f64,
    last_ns: u64,
    pending: std::collections::VecDeque<MemFrame>,
    rx: Vec<MemFrame>,
}

impl HostSite {
    fn new(port: MemPort, flows: Vec<FlowSpec>, sizes: &[usize], rate: u64) -> Self {
        HostSite {
            port,
            sink: Sink::new(flows.len()),
            gen: Generator::new(flows, sizes),
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("static bounds are valid"),
            pool: Vec::new(),
            rate,
            credit: 0.0,
            last_ns: 0,
            pending: Default::default(),
            rx: Vec::with_capacity(64),
        }
    }

    /// Generates what the rate allows (and the link accepts). Returns frames sent.
    fn turn(&mut self, now: u64, generating: bool) -> usize {
        if generating && !self.gen.flows().is_empty() && self.pending.len() < 64 {
            let mut n = 32;
            if self.rate > 0 {
                self.credit += (now - self.last_ns) as f64 * self.rate as f64 / 1e9;
                self.credit = self.credit.min(64.0);
                n = n.min(self.credit as usize);
                self.credit -= n as f64;
            }
            for _ in 0..n {
                let mut f = self.pool.pop().unwrap_or_default();
                self.gen.fill(&mut f, now);
                self.pending.push_back(f);
            }
        }
        self.last_ns = now;
        self.port.tx_burst(&mut self.pending)
    }

    /// Receives frames at this site's LAN that `from`'s hosts generated; frames from `echo`
    /// (the road-warrior clients' virtual IPs) are sent back instead.
    fn receive(
        &mut self,
        from: &mut HostSite,
        now: u64,
        echo: Option<pipeline::spd::Prefix>,
    ) -> usize {
        let n = self.port.rx_burst(&mut self.rx, 64);
        for mut f in self.rx.drain(..) {
            if echo.is_some_and(|pool| clients::echo(&mut f, pool)) {
                self.pending.push_back(f);
                continue;
            }
            if let Some(lat) = from.sink.observe(f.data(), now) {
                let _ = from.latency.record(lat.max(1));
            }
            self.pool.push(f);
        }
        n
    }
}

/// With --pcap: the frames between the two WAN ports pass through here and are captured.
struct Tap {
    a: MemPort,
    b: MemPort,
    written: u64,
    limit: u64,
}

impl Tap {
    fn pass<W: Write>(&mut self, mut pcap: Option<&mut PcapWriter<W>>) -> usize {
        let mut moved = 0;
        for dir in 0..2 {
            let (from, to) = if dir == 0 {
                (&mut self.a, &mut self.b)
            } else {
                (&mut self.b, &mut self.a)
            };
            while to.tx_space() > 0 {
                let Some(f) = from.recv() else { break };
                if let Some(p) = pcap.as_deref_mut() {
                    if self.written < self.limit && p.write(stamp_us(), f.data()).is_ok() {
                        self.written += 1;
                    }
                }
                // tx_space() > 0 was checked, so the send cannot fail.
                let _ = to.send(f);
                moved += 1;
            }
        }
        moved
    }
}

/// Wall-clock microseconds for pcap records.
fn stamp_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One turn of each site's IKE control loop (its worker's link only).
fn ike_turn(controls: &mut [control::runner::IkeControl], gateways: &mut [Gateway]) -> Result<()> {
    for (c, g) in controls.iter_mut().zip(gateways.iter_mut()) {
        c.turn(&mut [&mut g.link])?;
        g.link.pump();
    }
    Ok(())
}

fn totals(gateways: &[Gateway]) -> Vec<Snapshot> {
    gateways
        .iter()
        .map(|g| g.handle.counters.snapshot())
        .collect()
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

fn live_line(t: Duration, gateways: &[Gateway], cur: &[Snapshot], last: &[Snapshot], dt: Duration) {
    let mut line = format!("[{:>4}s]", t.as_secs());
    let mut drops = Snapshot::default();
    for (i, g) in gateways.iter().enumerate() {
        let d = cur[i].since(&last[i]);
        drops.add(&d);
        let pps = rate(d.traffic(Traffic::Encrypted), dt);
        let gbps = rate(d.traffic(Traffic::EncryptedBytes) * 8, dt) / 1e9;
        line.push_str(&format!(
            " {} seal {} {:.2} Gbit/s |",
            g.name,
            fmt_pps(pps),
            gbps
        ));
    }
    let errs: Vec<String> = drops
        .nonzero_drops()
        .filter(|(r, _)| r.is_error())
        .map(|(r, n)| format!("{}={}", r.name(), n))
        .collect();
    line.push_str(&format!(
        " drops/s: {}",
        if errs.is_empty() {
            "none".to_string()
        } else {
            errs.join(" ")
        }
    ));
    println!("{line}");
}

fn summary(
    elapsed: Duration,
    backend: Backend,
    gateways: &[Gateway],
    sites: &[HostSite],
    cfg: &LabConfig,
) {
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
            let errs: Vec<String> = DropReason::ALL
                .iter()
                .filter(|r| c.drops(**r) > 0)
                .map(|r| format!("{}={}", r.name(), c.drops(*r)))
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
                    format!(", drops: {}", errs.join(" "))
                }
            );
        }
        let drops: Vec<String> = s
            .nonzero_drops()
            .map(|(r, n)| format!("{}={}", r.name(), n))
            .collect();
        println!(
            "    drops by reason: {}",
            if drops.is_empty() {
                "none".into()
            } else {
                drops.join(" ")
            }
        );
    }
    for (site, name) in sites.iter().zip([&cfg.site_a.name, &cfg.site_b.name]) {
        let sent: u64 = site.gen.sent().iter().sum();
        let recv = site.sink.received();
        let reordered: u64 = site.sink.flows.iter().map(|f| f.reordered).sum();
        let l = &site.latency;
        println!(
            "  hosts of {name}: sent {sent}, delivered {recv}, lost {}, reordered {reordered}, corrupt {}; \
             latency p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            sent.saturating_sub(recv),
            site.sink.corrupt,
            l.value_at_quantile(0.5) as f64 / 1e3,
            l.value_at_quantile(0.99) as f64 / 1e3,
            l.max() as f64 / 1e3,
        );
    }
}
