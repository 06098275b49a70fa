//! `roamgate lab --ike --clients N`: road-warrior clients in the lab. Each is what `roamgate
//! client` runs: a worker on in-memory ports (its LAN host behind it, its WAN on the lab's
//! internet), the IKE control loop in client role asking site B's gateway for a virtual IP,
//! and the masquerade of its LAN host to that address inside the tunnel. The LAN host sends a
//! stamped UDP stream to site B's host, which echoes it; the client's sink counts what comes
//! back, so loss, latency and the longest gap are measured end to end through both data
//! planes. Client 0 can roam between two addresses (MOBIKE), make-before-break.
//!
//! Owns: the clients' thread (workers, control loops, hosts, roaming) and its live view.
//! Must never: take the old address away from a roaming client before the gateway moved to
//! the new one.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use control::config::ike::{Connection, ConnectionYaml, IkeYaml};
use control::repo::SaRepository;
use control::runner::IkeControl;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::{Frame, Port};
use pipeline::sad::Sad;
use pipeline::spd::{Action, PortRange, Prefix, Rule, Selector, Spd};
use pipeline::traffic::{FlowSpec, Generator, Sink};
use pipeline::worker::{Link, Worker};

use super::gateways::connection;
use super::topology::{Internet, Routes, CABLE_SLOTS};

/// Site B's LAN host that echoes the clients' streams.
pub const ECHO_HOST: &str = "10.2.0.10";
/// The pool site B hands the clients' virtual IPs from.
pub const POOL: &str = "10.99.0.0/24";
/// Clients the lab's address plan has room for: client i is 198.51.100.(10+i) and roams to
/// .(110+i).
pub const MAX_CLIENTS: usize = 100;

/// What the main thread shows of the clients (totals over all of them).
#[derive(Default)]
pub struct ClientsView {
    pub up: AtomicU64,
    pub sent: AtomicU64,
    pub echoed: AtomicU64,
    pub rekeys: AtomicU64,
    /// Clients with an IKE exchange under way.
    pub busy: AtomicU64,
    /// MOBIKE roams so far, and how long the last one's update took to be answered (us).
    pub roams: AtomicU64,
    pub last_roam_us: AtomicU64,
    /// The longest gap between two echoes at any client since the reader last took it, and
    /// over the whole run (ns).
    pub gap_recent_ns: AtomicU64,
    pub gap_max_ns: AtomicU64,
}

/// One client's account at the end.
pub struct ClientSummary {
    pub name: String,
    pub virtual_ip: Option<Ipv4Addr>,
    pub sent: u64,
    pub echoed: u64,
    pub rekeys: u64,
    pub roams: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub gap_max_ns: u64,
    /// The client's data plane's drops that are errors, by reason.
    pub drops: Vec<(&'static str, u64)>,
}

/// A client that moves between two addresses (MOBIKE), make-before-break: the new address
/// reaches it before it roams, the old one until its update is answered.
struct Roamer {
    port: usize,
    addrs: [IpAddr; 2],
    at: usize,
    every_ns: u64,
    next_ns: u64,
    retire: Option<(IpAddr, u64)>,
    roams: u64,
}

struct Client {
    name: String,
    worker: Worker<MemPort>,
    link: WorkerLink,
    ctl: IkeControl,
    host: MemPort,
    gen: Generator,
    sink: Sink,
    latency: hdrhistogram::Histogram<u64>,
    pending: VecDeque<MemFrame>,
    rx: Vec<MemFrame>,
    credit: f64,
    last_ns: u64,
    roamer: Option<Roamer>,
    last_echo_ns: Option<u64>,
    gap_recent_ns: u64,
    gap_max_ns: u64,
}

/// Client `i`'s WAN address on the lab's internet.
pub fn client_wan(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8))
}

/// Client `i`'s second address (where it roams to).
pub fn client_wan_alt(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 110 + i as u8))
}

/// Site B's extra connection for the clients: a pool of virtual IPs, site B's LAN.
pub fn gateway_connection(psk: &str, rekey_secs: u64) -> Result<ConnectionYaml> {
    Ok(ConnectionYaml {
        local_ts: vec![super::gateways::SITE_B_LAN.parse()?],
        pool: Some(POOL.parse()?),
        ..connection("rw", "b-rw.lab.roamgate.test", None, psk, rekey_secs)
    })
}

fn client_connections(
    i: usize,
    psk: &str,
    gateway: IpAddr,
    rekey_secs: u64,
) -> Result<Vec<Connection>> {
    let c = ConnectionYaml {
        remote_ts: vec![super::gateways::SITE_B_LAN.parse()?],
        request_vip: true,
        remote_addr: Some(gateway),
        ..connection(
            "lab-rw",
            &format!("client-{i}.lab.roamgate.test"),
            Some("b-rw.lab.roamgate.test"),
            psk,
            rekey_secs,
        )
    };
    let p = Path::new("lab --clients");
    Ok(IkeYaml {
        connections: vec![c],
        ..IkeYaml::default()
    }
    .validate_client(p, "ike")?)
}

/// How the clients run.
pub struct ClientsPlan<'a> {
    pub n: usize,
    pub gateway: IpAddr,
    pub psk: &'a str,
    pub rekey_secs: u64,
    pub rate_pps: u64,
    /// Client 0 changes its address this often (MOBIKE; None or 0: never).
    pub roam_secs: Option<f64>,
    pub backend: Backend,
    /// Print the clients' IKE events.
    pub log: bool,
}

/// Builds `plan.n` clients of site B's gateway on `internet` and runs them in one thread
/// until `stop`; each LAN host offers `rate_pps` until `stop_traffic`.
pub fn spawn(
    plan: &ClientsPlan,
    internet: &mut Internet,
    view: Arc<ClientsView>,
    stop_traffic: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Vec<ClientSummary>>> {
    let mut clients = Vec::new();
    for i in 0..plan.n {
        let name = format!("client-{i}");
        let port = internet.ports();
        let wan = internet.attach(&name, vec![client_wan(i)]);
        let roamer = plan
            .roam_secs
            .filter(|s| i == 0 && *s > 0.0)
            .map(|s| Roamer {
                port,
                addrs: [client_wan(i), client_wan_alt(i)],
                at: 0,
                every_ns: (s * 1e9) as u64,
                next_ns: (s * 1e9) as u64,
                retire: None,
                roams: 0,
            });
        let (host, lan) = cable(&format!("{name}/host"), &format!("{name}/lan"), CABLE_SLOTS);
        let (punt_tx, punt_rx) = rtrb::RingBuffer::new(256);
        let (tx_tx, tx_rx) = rtrb::RingBuffer::new(256);
        let (link, mut control) = agent::link(100 + i as u16, 256, Some(punt_tx));
        control.transmit = Some(tx_rx);
        let octet = i as u8;
        let lan_link = Link {
            mac: [2, 0, 0, 0x50, octet, 1],
            neighbor: [2, 0, 0, 0x50, octet, 0xfe],
            addr4: Some(Ipv4Addr::new(10, 50, octet, 1)),
            addr6: None,
            mtu: 1500,
        };
        let wan_link = Link {
            mac: [2, 0, 0, 0xc0, octet, 1],
            neighbor: [2, 0, 0, 0, 0xbb, 1],
            addr4: match client_wan(i) {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
            addr6: None,
            mtu: 1500,
        };
        let worker = Worker::new(
            100 + i as u16,
            lan,
            wan,
            lan_link,
            wan_link,
            Sad::with_capacity(16, crate::seed()),
            Box::new(Spd::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e:?}"))?),
            control,
        );
        let any = PortRange { lo: 0, hi: 65535 };
        let discard = Rule {
            id: 0,
            selector: Selector {
                src: "0.0.0.0/0".parse()?,
                dst: "0.0.0.0/0".parse()?,
                proto: None,
                src_ports: any,
                dst_ports: any,
            },
            action: Action::Discard,
        };
        let mut ctl = IkeControl::new(
            client_connections(i, plan.psk, plan.gateway, plan.rekey_secs)?,
            SaRepository::new(vec![discard], 1024),
            Some(punt_rx),
            Some(tx_tx),
            plan.backend,
            client_wan(i),
        );
        if !plan.log {
            ctl.set_quiet();
        }
        let flow = FlowSpec {
            src_mac: lan_link.neighbor,
            dst_mac: lan_link.mac,
            src: IpAddr::V4(Ipv4Addr::new(10, 50, octet, 10)),
            dst: ECHO_HOST.parse()?,
            src_port: 30000 + i as u16,
            dst_port: 7,
        };
        clients.push(Client {
            name,
            worker,
            link,
            ctl,
            host,
            gen: Generator::new(vec![flow], &[200]),
            sink: Sink::new(1),
            latency: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            pending: VecDeque::new(),
            rx: Vec::with_capacity(64),
            credit: 0.0,
            last_ns: 0,
            roamer,
            last_echo_ns: None,
            gap_recent_ns: 0,
            gap_max_ns: 0,
        });
    }
    let routes = internet.routes();
    let rate_pps = plan.rate_pps;
    Ok(std::thread::Builder::new()
        .name("clients".into())
        .spawn(move || run(clients, rate_pps, &routes, &view, &stop_traffic, &stop))?)
}

/// Client roaming: time to move, or its update was answered and the old address can go.
fn roam(c: &mut Client, routes: &Routes, view: &ClientsView, now: u64, up: bool) {
    let Some(r) = c.roamer.as_mut() else { return };
    if let Some((_, since)) = r.retire {
        if !c.ctl.busy() {
            routes.set(r.port, vec![r.addrs[r.at]]);
            r.retire = None;
            view.last_roam_us
                .store(now.saturating_sub(since) / 1000, Ordering::Relaxed);
        }
        return;
    }
    if up && now >= r.next_ns {
        let old = r.addrs[r.at];
        r.at ^= 1;
        let new = r.addrs[r.at];
        // Make-before-break: both addresses reach the client until the gateway moved.
        routes.set(r.port, vec![old, new]);
        if c.ctl.roam(new) > 0 {
            r.retire = Some((old, now));
            r.roams += 1;
            view.roams.fetch_add(1, Ordering::Relaxed);
        }
        r.next_ns = now + r.every_ns;
    }
}

fn run(
    mut clients: Vec<Client>,
    rate_pps: u64,
    routes: &Routes,
    view: &ClientsView,
    stop_traffic: &AtomicBool,
    stop: &AtomicBool,
) -> Vec<ClientSummary> {
    for c in clients.iter_mut() {
        c.ctl.initiate();
    }
    let start = Instant::now();
    let mut published = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed().as_nanos() as u64;
        let generating = !stop_traffic.load(Ordering::Relaxed);
        let mut work = 0;
        let (mut up, mut sent, mut echoed, mut rekeys, mut busy) = (0, 0, 0, 0, 0);
        let mut gap = 0;
        for c in clients.iter_mut() {
            work += c.worker.poll(now);
            if c.ctl.turn(&mut [&mut c.link]).unwrap_or(false) {
                work += 1;
            }
            let is_up = c.ctl.virtual_ip().is_some() && !c.ctl.children().is_empty();
            roam(c, routes, view, now, is_up);
            // The LAN host starts once the tunnel is up (before, its packets would meet the
            // default discard) and paces itself at the rate.
            if generating && is_up && c.pending.len() < 64 {
                c.credit += now.saturating_sub(c.last_ns) as f64 * rate_pps as f64 / 1e9;
                c.credit = c.credit.min(32.0);
                let k = c.credit as usize;
                c.credit -= k as f64;
                for _ in 0..k {
                    let mut f = MemFrame::new();
                    c.gen.fill(&mut f, now);
                    c.pending.push_back(f);
                }
            }
            c.last_ns = now;
            work += c.host.tx_burst(&mut c.pending);
            c.rx.clear();
            work += c.host.rx_burst(&mut c.rx, 64);
            for f in c.rx.drain(..) {
                if let Some(lat) = c.sink.observe(f.data(), now) {
                    let _ = c.latency.record(lat.max(1));
                    // Gaps count while the client sends (the drain at the end does not).
                    if generating {
                        if let Some(last) = c.last_echo_ns {
                            let g = now.saturating_sub(last);
                            c.gap_recent_ns = c.gap_recent_ns.max(g);
                            c.gap_max_ns = c.gap_max_ns.max(g);
                        }
                        c.last_echo_ns = Some(now);
                    }
                }
            }
            up += u64::from(is_up);
            sent += c.gen.sent().iter().sum::<u64>();
            echoed += c.sink.received();
            rekeys += c.ctl.child_counts().1;
            busy += u64::from(c.ctl.busy());
            gap = gap.max(c.gap_max_ns);
        }
        if now.saturating_sub(published) >= 10_000_000 || !generating {
            published = now;
            view.busy.store(busy, Ordering::Relaxed);
            view.up.store(up, Ordering::Relaxed);
            view.sent.store(sent, Ordering::Relaxed);
            view.echoed.store(echoed, Ordering::Relaxed);
            view.rekeys.store(rekeys, Ordering::Relaxed);
            view.gap_max_ns.store(gap, Ordering::Relaxed);
            let recent = clients
                .iter_mut()
                .map(|c| core::mem::take(&mut c.gap_recent_ns))
                .max()
                .unwrap_or(0);
            view.gap_recent_ns.fetch_max(recent, Ordering::Relaxed);
        }
        if work == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    clients
        .into_iter()
        .map(|c| {
            let s = c.worker.handle().counters.snapshot();
            let drops = s
                .nonzero_drops()
                .filter(|(r, _)| r.is_error())
                .map(|(r, n)| (r.name(), n))
                .collect();
            ClientSummary {
                name: c.name,
                virtual_ip: c.ctl.virtual_ip(),
                sent: c.gen.sent().iter().sum(),
                echoed: c.sink.received(),
                rekeys: c.ctl.child_counts().1,
                roams: c.roamer.as_ref().map_or(0, |r| r.roams),
                p50_us: c.latency.value_at_quantile(0.5) as f64 / 1e3,
                p99_us: c.latency.value_at_quantile(0.99) as f64 / 1e3,
                max_us: c.latency.max() as f64 / 1e3,
                gap_max_ns: c.gap_max_ns,
                drops,
            }
        })
        .collect()
}

/// The pool the clients' virtual IPs come from.
pub fn pool() -> Prefix {
    POOL.parse().expect("a valid prefix literal")
}
