//! The LAN hosts of both sites, in one thread (`hosts`): each site's generator offers the
//! lab's flows to its gateway's LAN port at the configured rate, and each site's sink counts
//! what the other site's hosts sent: loss, reordering, corruption, latency, and the longest
//! gap between two arrivals while both sites send. Site B's hosts echo the road-warrior
//! clients' streams back. With `--pcap` and no clients the thread also runs the tap between
//! the gateways.
//!
//! Owns: the host frames (a bounded pool for reuse), the per-direction accounts and their
//! live view ([`HostsView`]). Must never: drop a frame it was handed (a full LAN cable holds
//! frames back), or stop taking frames from its LAN port (the gateway would stop taking the
//! hosts' frames in turn: a deadlock).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pipeline::port::mem::{MemFrame, MemPort};
use pipeline::port::{Frame, Port};
use pipeline::spd::Prefix;
use pipeline::traffic::{FlowSpec, Generator, Sink};
use pipeline::wire::{ethernet, ipv4, udp, EtherType, IpProtocol};

use super::topology::{Pcap, Tap};

/// Spare frames a site's hosts keep for reuse. What arrives is recycled into the receiving
/// site's pool and what leaves is taken from the sending one's, so a site that receives more
/// than it sends (the gateways' rates differ) would otherwise grow its pool for ever.
pub const POOL_FRAMES: usize = 4096;
/// How often the hosts thread publishes its accounts.
const PUBLISH_NS: u64 = 10_000_000;

/// One site's simulated hosts: a generator into the LAN and a sink for what the other site's
/// hosts sent.
pub struct HostSite {
    port: MemPort,
    pub gen: Generator,
    pub sink: Sink,
    pub latency: Histogram<u64>,
    pool: Vec<MemFrame>,
    rate: u64,
    credit: f64,
    last_ns: u64,
    pending: VecDeque<MemFrame>,
    rx: Vec<MemFrame>,
    /// When the other site's last packet arrived here (while both sites send).
    last_arrival_ns: Option<u64>,
    /// The longest gap between two arrivals, since the last publish and over the whole run.
    gap_recent_ns: u64,
    pub gap_max_ns: u64,
}

impl HostSite {
    pub fn new(port: MemPort, flows: Vec<FlowSpec>, sizes: &[usize], rate: u64) -> Self {
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
            pending: VecDeque::new(),
            rx: Vec::with_capacity(64),
            last_arrival_ns: None,
            gap_recent_ns: 0,
            gap_max_ns: 0,
        }
    }

    pub fn sent(&self) -> u64 {
        self.gen.sent().iter().sum()
    }

    /// Generates what the rate allows (and the link accepts). Returns frames sent.
    fn turn(&mut self, now: u64, generating: bool) -> usize {
        if generating && !self.gen.flows().is_empty() && self.pending.len() < 64 {
            let mut n = 32;
            if self.rate > 0 {
                self.credit += now.saturating_sub(self.last_ns) as f64 * self.rate as f64 / 1e9;
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

    /// Receives frames at this site's LAN that `from`'s hosts generated (`gaps`: while both
    /// sites send, the time between arrivals counts); frames from `echo` (the road-warrior
    /// clients' virtual IPs) are sent back instead.
    fn receive(
        &mut self,
        from: &mut HostSite,
        now: u64,
        echo: Option<Prefix>,
        gaps: bool,
    ) -> usize {
        let n = self.port.rx_burst(&mut self.rx, 64);
        for mut f in self.rx.drain(..) {
            if echo.is_some_and(|pool| echo_back(&mut f, pool)) {
                self.pending.push_back(f);
                continue;
            }
            if let Some(lat) = from.sink.observe(f.data(), now) {
                let _ = from.latency.record(lat.max(1));
                if gaps {
                    if let Some(last) = self.last_arrival_ns {
                        let gap = now.saturating_sub(last);
                        self.gap_recent_ns = self.gap_recent_ns.max(gap);
                        self.gap_max_ns = self.gap_max_ns.max(gap);
                    }
                    self.last_arrival_ns = Some(now);
                }
            }
            if self.pool.len() < POOL_FRAMES {
                self.pool.push(f);
            }
        }
        n
    }
}

/// One direction between the sites as the live line shows it (written by the hosts thread).
#[derive(Default)]
pub struct Arrivals {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    /// The longest gap between two arrivals since the reader last took it (ns).
    pub gap_recent_ns: AtomicU64,
    pub gap_max_ns: AtomicU64,
}

/// Both directions: `[0]` site A's hosts to site B's, `[1]` back.
#[derive(Default)]
pub struct HostsView {
    pub dirs: [Arrivals; 2],
}

/// What the hosts thread hands back: both sites (A, B) and the frames the tap captured.
pub type HostsResult = ([HostSite; 2], Option<u64>);

/// Starts the hosts thread: both sites generate until `stop`, then drain for up to 2 s (what
/// is still on its way is counted as lost after that).
pub fn spawn(
    mut sites: [HostSite; 2],
    echo: Prefix,
    mut tap: Option<Tap>,
    mut pcap: Option<Pcap>,
    view: Arc<HostsView>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<HostsResult>> {
    std::thread::Builder::new()
        .name("hosts".into())
        .spawn(move || {
            let start = Instant::now();
            let mut draining_since: Option<Instant> = None;
            let mut published = 0u64;
            loop {
                let now = start.elapsed().as_nanos() as u64;
                let generating = !stop.load(Ordering::Relaxed);
                let mut moved = 0;
                for s in sites.iter_mut() {
                    moved += s.turn(now, generating);
                }
                // What arrives at one site's hosts was generated at the other site, whose
                // sink keeps the per-flow account.
                let [a, b] = &mut sites;
                moved +=
                    a.receive(b, now, None, generating) + b.receive(a, now, Some(echo), generating);
                if let Some(t) = tap.as_mut() {
                    moved += t.pass(pcap.as_mut());
                }
                if now.saturating_sub(published) >= PUBLISH_NS || !generating {
                    published = now;
                    publish(&mut sites, &view);
                }
                if !generating {
                    let since = *draining_since.get_or_insert_with(Instant::now);
                    let in_flight: u64 = sites
                        .iter()
                        .map(|s| s.sent().saturating_sub(s.sink.received()))
                        .sum();
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
        })
}

fn publish(sites: &mut [HostSite; 2], view: &HostsView) {
    // Direction 0 (A to B) is generated at A, counted by A's sink, arrives at B.
    for (d, (from, to)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
        let v = &view.dirs[d];
        v.sent.store(sites[from].sent(), Ordering::Relaxed);
        v.delivered
            .store(sites[from].sink.received(), Ordering::Relaxed);
        let gap = core::mem::take(&mut sites[to].gap_recent_ns);
        v.gap_recent_ns.fetch_max(gap, Ordering::Relaxed);
        v.gap_max_ns.store(sites[to].gap_max_ns, Ordering::Relaxed);
    }
}

/// Site B's hosts answer the clients: a UDP frame from a virtual IP goes back where it came
/// from (addresses, ports and MACs swapped; the UDP checksum is unchanged by the swap).
pub fn echo_back(f: &mut MemFrame, pool: Prefix) -> bool {
    let Ok(mut eth) = ethernet::Frame::new_checked(f.data_mut()) else {
        return false;
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return false;
    }
    let (src_mac, dst_mac) = (eth.src_addr(), eth.dst_addr());
    let Ok(mut ip) = ipv4::Packet::new_checked(eth.payload_mut()) else {
        return false;
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.next_header() != IpProtocol::Udp || !pool.contains(IpAddr::V4(src)) {
        return false;
    }
    let Ok(mut u) = udp::Packet::new_checked(ip.payload_mut()) else {
        return false;
    };
    let (sport, dport) = (u.src_port(), u.dst_port());
    u.set_src_port(dport);
    u.set_dst_port(sport);
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    ip.set_hop_limit(64);
    ip.fill_checksum();
    eth.set_src_addr(dst_mac);
    eth.set_dst_addr(src_mac);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::port::mem::cable;

    const CABLE: usize = super::super::topology::CABLE_SLOTS;

    fn flow(src: &str, dst: &str) -> FlowSpec {
        FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 30000,
            dst_port: 7,
        }
    }

    #[test]
    fn a_site_that_receives_more_than_it_sends_keeps_a_bounded_pool() {
        // Site A's hosts send, site B's only receive: every frame A sends lands in B's pool.
        let (a_hosts, mut a_lan) = cable("a", "a/lan", CABLE);
        let (b_hosts, mut b_lan) = cable("b", "b/lan", CABLE);
        let mut a = HostSite::new(a_hosts, vec![flow("10.1.0.10", "10.2.0.10")], &[64], 0);
        let mut b = HostSite::new(b_hosts, Vec::new(), &[64], 0);
        let mut carried = 0u64;
        for t in 0..20_000u64 {
            a.turn(t * 1000, true);
            // The "gateways": what A's LAN receives comes out at B's LAN.
            while let Some(f) = a_lan.recv() {
                assert!(b_lan.send(f).is_ok());
                carried += 1;
            }
            b.receive(&mut a, t * 1000, None, true);
        }
        assert!(carried > 2 * POOL_FRAMES as u64, "{carried}");
        assert_eq!(b.pool.len(), POOL_FRAMES);
        assert_eq!(a.sink.received(), carried, "every frame was counted");
    }

    #[test]
    fn the_longest_gap_between_arrivals_is_measured_while_both_sites_send() {
        let (a_hosts, mut a_lan) = cable("a", "a/lan", CABLE);
        let (b_hosts, mut b_lan) = cable("b", "b/lan", CABLE);
        let mut a = HostSite::new(a_hosts, vec![flow("10.1.0.10", "10.2.0.10")], &[64], 0);
        let mut b = HostSite::new(b_hosts, Vec::new(), &[64], 0);
        let ms = 1_000_000u64;
        // Arrivals at 1, 2, 3 ms, then none until 10 ms: the gap is 7 ms.
        for t in [1, 2, 3, 10, 11] {
            a.turn(t * ms, true);
            while let Some(f) = a_lan.recv() {
                assert!(b_lan.send(f).is_ok());
            }
            b.receive(&mut a, t * ms, None, true);
        }
        assert_eq!(b.gap_max_ns, 7 * ms);
        // The drain (nobody sends any more) does not count.
        a.turn(40 * ms, true);
        while let Some(f) = a_lan.recv() {
            assert!(b_lan.send(f).is_ok());
        }
        b.receive(&mut a, 40 * ms, None, false);
        assert_eq!(b.gap_max_ns, 7 * ms);
    }

    #[test]
    fn a_clients_packet_is_echoed_with_addresses_ports_and_macs_swapped() {
        let pool: Prefix = "10.99.0.0/24".parse().unwrap();
        let mut gen = Generator::new(vec![flow("10.99.0.5", "10.2.0.10")], &[200]);
        let mut f = MemFrame::new();
        gen.fill(&mut f, 0);
        let before = f.data().to_vec();
        assert!(echo_back(&mut f, pool));
        let eth = ethernet::Frame::new_checked(f.data()).unwrap();
        assert_eq!(eth.dst_addr(), [2, 0, 0, 0, 0, 1]);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.dst_addr().to_string(), "10.99.0.5");
        assert_eq!(ip.src_addr().to_string(), "10.2.0.10");
        assert!(ip.verify_checksum());
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (7, 30000));
        // Swapped back, it is the same frame but for the TTL.
        assert!(echo_back(&mut f, "10.2.0.0/24".parse().unwrap()));
        assert_eq!(f.data()[..22], before[..22]);
        assert_eq!(f.data()[26..], before[26..]);
        // Not from the pool: left alone.
        let mut g = MemFrame::new();
        Generator::new(vec![flow("10.1.0.5", "10.2.0.10")], &[200]).fill(&mut g, 0);
        assert!(!echo_back(&mut g, pool));
    }
}
