//! `roamgate lab --ike --clients N`: road-warrior clients in the lab. Each is what `roamgate
//! client` runs: a worker on in-memory ports (its LAN host behind it, its WAN on the lab's
//! internet), the IKE control loop in client role asking site B's gateway for a virtual IP,
//! and the masquerade of its LAN host to that address inside the tunnel. The LAN host sends a
//! stamped UDP stream to site B's host, which echoes it; the client's sink counts what comes
//! back, so loss and latency are measured end to end through both data planes.
//!
//! With clients the two gateways' WAN ports no longer share one cable: the lab's internet is
//! [`Internet`], a switch that forwards each frame by its destination IP address.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use control::config;
use control::config::ike::{Connection, IkeYaml};
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

/// Site B's LAN host that echoes the clients' streams.
pub const ECHO_HOST: &str = "10.2.0.10";
/// The pool site B hands the clients' virtual IPs from.
pub const POOL: &str = "10.99.0.0/24";
const SLOTS: usize = 1024;

/// The lab's internet: frames are forwarded to the port that owns their destination address
/// (a full port holds them: back-pressure, nothing is lost).
pub struct Internet {
    ports: Vec<(MemPort, Vec<IpAddr>)>,
    held: Vec<VecDeque<MemFrame>>,
    rx: Vec<MemFrame>,
    /// Frames for an address nobody owns.
    pub unroutable: u64,
    /// Who owns which addresses, changed by roaming clients (another thread).
    routes: Arc<Routes>,
    seen: u64,
}

/// The internet's address table as other threads change it (a client that roams).
#[derive(Default)]
pub struct Routes {
    version: AtomicU64,
    table: std::sync::Mutex<Vec<Vec<IpAddr>>>,
}

impl Routes {
    /// Port `port` (in attach order) now owns `addrs`.
    pub fn set(&self, port: usize, addrs: Vec<IpAddr>) {
        if let Ok(mut t) = self.table.lock() {
            if let Some(a) = t.get_mut(port) {
                *a = addrs;
            }
        }
        self.version.fetch_add(1, Ordering::Release);
    }
}

impl Internet {
    pub fn new() -> Internet {
        Internet {
            ports: Vec::new(),
            held: Vec::new(),
            rx: Vec::with_capacity(64),
            unroutable: 0,
            routes: Arc::new(Routes::default()),
            seen: 0,
        }
    }

    /// The address table, for threads that move addresses between ports.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.clone()
    }

    /// The number of ports attached so far (the next one's index).
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Returns the far end of a new cable: the gateway's or client's WAN port.
    pub fn attach(&mut self, name: &str, addrs: Vec<IpAddr>) -> MemPort {
        let (ours, theirs) = cable(&format!("internet/{name}"), name, SLOTS);
        if let Ok(mut t) = self.routes.table.lock() {
            t.push(addrs.clone());
        }
        self.ports.push((ours, addrs));
        self.held.push(VecDeque::new());
        theirs
    }

    fn route(&self, frame: &[u8]) -> Option<usize> {
        let dst: IpAddr = match frame.get(12..14)? {
            [0x08, 0x00] => <[u8; 4]>::try_from(frame.get(30..34)?).ok()?.into(),
            [0x86, 0xdd] => <[u8; 16]>::try_from(frame.get(38..54)?).ok()?.into(),
            _ => return None,
        };
        self.ports.iter().position(|(_, a)| a.contains(&dst))
    }

    /// Moves what every port sent; `tap` sees each frame forwarded. Returns frames moved.
    pub fn pass(&mut self, mut tap: impl FnMut(&[u8])) -> usize {
        let v = self.routes.version.load(Ordering::Acquire);
        if v != self.seen {
            self.seen = v;
            if let Ok(t) = self.routes.table.lock() {
                for (p, a) in self.ports.iter_mut().zip(t.iter()) {
                    p.1.clone_from(a);
                }
            }
        }
        let mut moved = 0;
        let mut rx = std::mem::take(&mut self.rx);
        for i in 0..self.ports.len() {
            // A destination that does not drain holds its senders back.
            if self.held.iter().any(|q| q.len() > 2048) {
                break;
            }
            self.ports[i].0.rx_burst(&mut rx, 64);
            for f in rx.drain(..) {
                match self.route(f.data()) {
                    Some(t) => {
                        tap(f.data());
                        self.held[t].push_back(f);
                        moved += 1;
                    }
                    None => self.unroutable += 1,
                }
            }
        }
        self.rx = rx;
        for (i, q) in self.held.iter_mut().enumerate() {
            self.ports[i].0.tx_burst(q);
        }
        moved
    }
}

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
}

/// Client `i`'s second address (where it roams to).
pub fn client_wan_alt(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 110 + i as u8))
}

/// Site B's extra connection for the clients (a pool of virtual IPs).
pub fn gateway_connection(psk: &str, rekey_secs: u64) -> String {
    format!(
        "  - {{ name: rw, local_id: b-rw.lab.roamgate.test, psk: \"{psk}\", \
         esp_proposals: [aes128gcm16-esn], local_ts: [\"10.2.0.0/24\"], pool: \"{POOL}\", \
         child_rekey_secs: {rekey_secs} }}\n"
    )
}

fn client_connections(
    i: usize,
    psk: &str,
    gateway: IpAddr,
    rekey_secs: u64,
) -> Result<Vec<Connection>> {
    let y = format!(
        "connections:\n  - {{ name: lab-rw, local_id: client-{i}.lab.roamgate.test, \
         remote_id: b-rw.lab.roamgate.test, psk: \"{psk}\", esp_proposals: [aes128gcm16-esn], \
         remote_ts: [\"10.2.0.0/24\"], request_vip: true, remote_addr: \"{gateway}\", \
         child_rekey_secs: {rekey_secs} }}\n"
    );
    let p = Path::new("lab --clients");
    let y: IkeYaml = config::parse(p, &y)?;
    Ok(y.validate_client(p, "ike")?)
}

/// Client `i`'s WAN address on the lab's internet.
pub fn client_wan(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8))
}

/// Builds `n` clients of site B's gateway at `gateway` on `internet` and runs them in one
/// thread until `stop`; each LAN host offers `rate_pps` until `stop_traffic`. With
/// `roam_secs`, client 0 changes its address that often (MOBIKE).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    n: usize,
    internet: &mut Internet,
    gateway: IpAddr,
    psk: &str,
    rekey_secs: u64,
    rate_pps: u64,
    roam_secs: Option<f64>,
    backend: Backend,
    view: Arc<ClientsView>,
    stop_traffic: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Vec<ClientSummary>>> {
    let mut clients = Vec::new();
    for i in 0..n {
        let name = format!("client-{i}");
        let port = internet.ports();
        let wan = internet.attach(&name, vec![client_wan(i)]);
        let roamer = roam_secs.filter(|s| i == 0 && *s > 0.0).map(|s| Roamer {
            port,
            addrs: [client_wan(i), client_wan_alt(i)],
            at: 0,
            every_ns: (s * 1e9) as u64,
            next_ns: (s * 1e9) as u64,
            retire: None,
            roams: 0,
        });
        let (host, lan) = cable(&format!("{name}/host"), &format!("{name}/lan"), SLOTS);
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
            client_connections(i, psk, gateway, rekey_secs)?,
            SaRepository::new(vec![discard], 1024),
            Some(punt_rx),
            Some(tx_tx),
            backend,
            client_wan(i),
        );
        ctl.set_quiet();
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
        });
    }
    let routes = internet.routes();
    Ok(std::thread::Builder::new()
        .name("clients".into())
        .spawn(move || run(clients, rate_pps, &routes, &view, &stop_traffic, &stop))?)
}

/// Client roaming: time to move, or its update was answered and the old address can go.
fn roam(c: &mut Client, routes: &Routes, view: &ClientsView, now: u64, up: bool) {
    let Some(r) = c.roamer.as_mut() else { return };
    if let Some((old, since)) = r.retire {
        if !c.ctl.busy() {
            routes.set(r.port, vec![r.addrs[r.at]]);
            r.retire = None;
            view.last_roam_us
                .store(now.saturating_sub(since) / 1000, Ordering::Relaxed);
            let _ = old;
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
    while !stop.load(Ordering::Relaxed) {
        let now = start.elapsed().as_nanos() as u64;
        let generating = !stop_traffic.load(Ordering::Relaxed);
        let mut work = 0;
        let (mut up, mut sent, mut echoed, mut rekeys, mut busy) = (0, 0, 0, 0, 0);
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
                }
            }
            up += u64::from(is_up);
            sent += c.gen.sent().iter().sum::<u64>();
            echoed += c.sink.received();
            rekeys += c.ctl.child_counts().1;
            busy += u64::from(c.ctl.busy());
        }
        view.busy.store(busy, Ordering::Relaxed);
        view.up.store(up, Ordering::Relaxed);
        view.sent.store(sent, Ordering::Relaxed);
        view.echoed.store(echoed, Ordering::Relaxed);
        view.rekeys.store(rekeys, Ordering::Relaxed);
        if work == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    clients
        .into_iter()
        .map(|c| ClientSummary {
            name: c.name,
            virtual_ip: c.ctl.virtual_ip(),
            sent: c.gen.sent().iter().sum(),
            echoed: c.sink.received(),
            rekeys: c.ctl.child_counts().1,
            roams: c.roamer.as_ref().map_or(0, |r| r.roams),
            p50_us: c.latency.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: c.latency.value_at_quantile(0.99) as f64 / 1e3,
            max_us: c.latency.max() as f64 / 1e3,
        })
        .collect()
}

/// Site B's hosts answer the clients: a frame from a virtual IP goes back where it came from
/// (addresses, ports and MACs swapped; the UDP checksum is unchanged by the swap).
pub fn echo(f: &mut MemFrame, pool: Prefix) -> bool {
    let d = f.data_mut();
    if d.len() < 42 || d[12..14] != [0x08, 0x00] || d[23] != 17 {
        return false;
    }
    let src = Ipv4Addr::new(d[26], d[27], d[28], d[29]);
    if !pool.contains(IpAddr::V4(src)) {
        return false;
    }
    let (a, b) = d[..12].split_at_mut(6);
    a.swap_with_slice(b);
    for k in 0..4 {
        d.swap(26 + k, 30 + k);
    }
    for k in 0..2 {
        d.swap(34 + k, 36 + k);
    }
    // TTL back to 64, header checksum recomputed.
    d[22] = 64;
    d[24] = 0;
    d[25] = 0;
    let sum = d[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    d[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    true
}
