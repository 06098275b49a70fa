//! How the lab's ports are joined. Each site's hosts reach their gateway's LAN port by a
//! cable; the gateways' WAN ports share one cable, or pass through a [`Tap`] that captures
//! them (`--pcap`), or, with road-warrior clients, meet on [`Internet`], a switch that
//! forwards each frame by its destination IP address and whose address table roaming clients
//! change.
//!
//! Owns: the cables, the switch and its thread, the tap. Must never: drop a frame silently (a
//! full port holds frames back; only a frame for an address nobody owns is dropped, and
//! counted), or look inside ESP.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pipeline::pcap::PcapWriter;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::{Frame, Port};
use pipeline::wire::{ethernet, ipv4, ipv6, EtherType};

/// Frames a cable holds in each direction.
pub const CABLE_SLOTS: usize = 1024;
/// A destination port of the internet that holds this many frames stops every sender.
const HELD_FRAMES: usize = 2048;

pub type Pcap = PcapWriter<BufWriter<File>>;

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
    table: Mutex<Vec<Vec<IpAddr>>>,
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
        let (ours, theirs) = cable(&format!("internet/{name}"), name, CABLE_SLOTS);
        if let Ok(mut t) = self.routes.table.lock() {
            t.push(addrs.clone());
        }
        self.ports.push((ours, addrs));
        self.held.push(VecDeque::new());
        theirs
    }

    fn route(&self, frame: &[u8]) -> Option<usize> {
        let eth = ethernet::Frame::new_checked(frame).ok()?;
        let dst: IpAddr = match eth.ethertype() {
            EtherType::Ipv4 => ipv4::Packet::new_checked(eth.payload())
                .ok()?
                .dst_addr()
                .into(),
            EtherType::Ipv6 => ipv6::Packet::new_checked(eth.payload())
                .ok()?
                .dst_addr()
                .into(),
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
            if self.held.iter().any(|q| q.len() > HELD_FRAMES) {
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

    /// Runs the switch in its own thread until `stop`; returns (frames captured, frames for
    /// addresses nobody owns).
    pub fn spawn(
        mut self,
        mut pcap: Option<Pcap>,
        limit: u64,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<(u64, u64)>> {
        std::thread::Builder::new()
            .name("internet".into())
            .spawn(move || {
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let moved = self.pass(|frame| {
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
                (written, self.unroutable)
            })
    }
}

/// With `--pcap` and no clients: the frames between the two WAN ports pass through here and
/// are captured.
pub struct Tap {
    pub a: MemPort,
    pub b: MemPort,
    pub written: u64,
    pub limit: u64,
}

impl Tap {
    pub fn pass<W: Write>(&mut self, mut pcap: Option<&mut PcapWriter<W>>) -> usize {
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

/// The gateways' WAN ports and what joins them.
pub struct Wan {
    pub a: MemPort,
    pub b: MemPort,
    /// The tap's two ends (with `--pcap`, without clients).
    pub tap: Option<(MemPort, MemPort)>,
    /// The switch (with clients; they attach to it too).
    pub internet: Option<Internet>,
}

/// Site A's and site B's WAN ports: on the internet when `internet` gives each site's
/// addresses, else on one cable (through a tap with `capture`).
pub fn wan(internet: Option<[Vec<IpAddr>; 2]>, capture: bool) -> Wan {
    if let Some([addrs_a, addrs_b]) = internet {
        let mut net = Internet::new();
        let a = net.attach("site-a/wan", addrs_a);
        let b = net.attach("site-b/wan", addrs_b);
        Wan {
            a,
            b,
            tap: None,
            internet: Some(net),
        }
    } else if capture {
        let (a, tap_a) = cable("site-a/wan", "tap-a", CABLE_SLOTS);
        let (tap_b, b) = cable("tap-b", "site-b/wan", CABLE_SLOTS);
        Wan {
            a,
            b,
            tap: Some((tap_a, tap_b)),
            internet: None,
        }
    } else {
        let (a, b) = cable("site-a/wan", "site-b/wan", CABLE_SLOTS);
        Wan {
            a,
            b,
            tap: None,
            internet: None,
        }
    }
}

/// Wall-clock microseconds for pcap records.
pub fn stamp_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_to(dst: &str) -> MemFrame {
        let mut b = vec![0u8; 60];
        match dst.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => {
                b[12..14].copy_from_slice(&[0x08, 0x00]);
                b[14] = 0x45;
                b[16..18].copy_from_slice(&46u16.to_be_bytes());
                b[30..34].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                b.resize(14 + 40, 0);
                b[12..14].copy_from_slice(&[0x86, 0xdd]);
                b[14] = 0x60;
                b[38..54].copy_from_slice(&a.octets());
            }
        }
        MemFrame::from_bytes(&b).unwrap()
    }

    #[test]
    fn the_internet_forwards_by_destination_and_counts_the_rest() {
        let mut net = Internet::new();
        let mut a = net.attach("a", vec!["192.0.2.1".parse().unwrap()]);
        let mut b = net.attach(
            "b",
            vec!["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
        );
        for dst in ["192.0.2.2", "2001:db8::2", "198.51.100.9"] {
            assert!(a.send(frame_to(dst)).is_ok());
        }
        let mut seen = 0;
        net.pass(|_| seen += 1);
        assert_eq!((seen, net.unroutable), (2, 1));
        assert_eq!(b.rx_burst(&mut Vec::new(), 64), 2);
        // A roam moves an address to another port.
        net.routes().set(0, vec!["192.0.2.2".parse().unwrap()]);
        assert!(b.send(frame_to("192.0.2.2")).is_ok());
        net.pass(|_| {});
        assert_eq!(a.rx_burst(&mut Vec::new(), 64), 1);
    }
}
