//! The perf lab's data-plane measurements: real workers on in-memory ports, driven with
//! pre-generated traffic so that a worker's time is its own.
//!
//! - Throughput: a worker thread refills a burst of frames (untimed), then runs one
//!   `Worker::poll` (timed) and takes what came out. Encrypt frames are a plaintext template
//!   whose destination is patched per packet to a random SA's host binding; decrypt frames
//!   are real ESP, sealed beforehand with the same keys and sequence numbers, so that every
//!   frame passes the anti-replay window once. With two workers both run at once on their own
//!   cores, each with its own SAs (per-core SAs), and the aggregate counts.
//! - The crypto ceiling: the bare AEAD seal of the same ESP plaintext, same backend.
//! - Latency and NDR: a paced feeder and a sink in one thread, the worker in another; the
//!   highest offered rate with zero loss (FD.io CSIT's NDR) found by binary search, and the
//!   latency at a fraction of it (the ESP sequence number identifies each packet).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::cbc::{self, CbcJob};
use pipeline::crypto::{self, AeadAlg, Backend, EspAlg};
use pipeline::esp::sa::{build_outbound, OutboundSa, SaKeys, SaParams};
use pipeline::esp::tunnel::{self, InnerMeta};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::{Direction, Update};
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::port::{Frame, Port};
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::stats::Lifetime;
use pipeline::worker::{Idle, Link, Worker, BURST};

/// Frame sizes (Ethernet frame without FCS, as RFC 2544 counts them less 4) and IMIX (0).
pub const SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 1420, 0];
/// IMIX: 7 x 64, 4 x 570, 1 x 1420 (the simple IMIX, capped at what the tunnel's MTU carries).
pub const IMIX: [usize; 12] = [64, 64, 64, 64, 64, 64, 64, 570, 570, 570, 570, 1420];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Encrypt,
    Decrypt,
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::Encrypt => "encrypt",
            Dir::Decrypt => "decrypt",
        })
    }
}

/// One measured point.
#[derive(Clone, Debug)]
pub struct Point {
    pub dir: Dir,
    /// Frame size, 0 = IMIX.
    pub size: usize,
    pub sas: usize,
    pub workers: usize,
    pub backend: Backend,
    /// The SAs' transform.
    pub alg: EspAlg,
    pub packets: u64,
    /// Aggregate packets per second of worker time (each worker's packets over its own poll
    /// time, summed).
    pub pps: f64,
    /// Inner (LAN-side) bits per second, aggregate.
    pub bps: f64,
    /// Worker time per packet (the mean over workers).
    pub ns_per_packet: f64,
    /// Frames that did not come out (must be 0).
    pub missing: u64,
}

pub(crate) fn lan_link() -> Link {
    Link {
        mac: [2, 0, 0, 0, 0x0a, 1],
        neighbor: [2, 0, 0, 0, 0x0a, 0xfe],
        addr4: Some(Ipv4Addr::new(10, 1, 0, 1)),
        addr6: None,
        mtu: 1500,
    }
}

pub(crate) fn wan_link() -> Link {
    Link {
        mac: [2, 0, 0, 0, 0xaa, 1],
        neighbor: [2, 0, 0, 0, 0xbb, 1],
        addr4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        addr6: None,
        mtu: 1500,
    }
}

/// The transform of the perf lab's SAs unless a point names another.
pub const GCM: EspAlg = EspAlg::Aead(AeadAlg::AesGcm128);

/// SA `i` of a run, either direction: its key (from its index, so that each SA has its own
/// key schedule), SPI and the host address it protects. AES-128-GCM.
pub fn sa_params(i: usize) -> SaParams {
    sa_params_alg(i, GCM)
}

/// [`sa_params`] with the transform `alg`.
pub fn sa_params_alg(i: usize, alg: EspAlg) -> SaParams {
    let mut keymat = vec![0u8; alg.keymat_len()];
    keymat[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    keymat[8] = 0x5a;
    let (local, remote) = ("192.0.2.1", "192.0.2.2");
    SaParams {
        id: SaId(i as u32 + 1),
        spi: Spi(0x1000 + i as u32),
        keys: SaKeys::from_keymat(alg, &keymat).expect("keymat_len bytes"),
        esn: false,
        replay_window: 1024,
        local: local.parse().expect("literal"),
        remote: remote.parse().expect("literal"),
        encap: None,
        local_ts: "10.1.0.0/24".parse().expect("literal"),
        remote_ts: "10.128.0.0/9".parse().expect("literal"),
        outer_ttl: 64,
        resume: Default::default(),
        checkpoint: None,
        lifetime: Lifetime::default(),
    }
}

/// The host SA `i` protects (10.128.0.0/9 holds 8 M).
pub fn host(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32)
}

/// A worker on in-memory ports with `sas` SAs of direction `dir` installed through the agent
/// (outbound ones bound to their hosts).
pub struct Rig {
    pub worker: Worker<MemPort>,
    pub lan: MemPort,
    pub wan: MemPort,
    pub link: WorkerLink,
}

impl Rig {
    pub fn new(id: u16, sas: usize, dir: Direction, backend: Backend) -> Rig {
        Rig::with_alg(id, sas, dir, backend, GCM)
    }

    /// [`Rig::new`] with SAs of transform `alg`.
    pub fn with_alg(id: u16, sas: usize, dir: Direction, backend: Backend, alg: EspAlg) -> Rig {
        let mut r = Rig::empty(id, sas);
        let mut last = 0;
        for i in 0..sas {
            let p = sa_params_alg(i, alg);
            let id = p.id;
            last = r.link.send(
                agent::prepare(backend, &Update::AddSa { dir, params: p }).expect("SA builds"),
            );
            if dir == Direction::Outbound {
                last = r.link.send(
                    agent::prepare(
                        backend,
                        &Update::BindHost {
                            dst: host(i).into(),
                            src: "10.1.0.0/24".parse().expect("literal"),
                            sa: id,
                        },
                    )
                    .expect("binding"),
                );
            }
            if i % 1024 == 1023 {
                r.settle(last);
            }
        }
        r.settle(last);
        r
    }

    /// A worker with no SAs yet and room for `capacity` of them.
    pub fn empty(id: u16, capacity: usize) -> Rig {
        let (lan, lan_gw) = cable("perf-lan", "gw-lan", 4096);
        let (wan_gw, wan) = cable("gw-wan", "perf-wan", 4096);
        let (link, control) = agent::link(id, 4096, None);
        let mut worker = Worker::new(
            id,
            lan_gw,
            wan_gw,
            lan_link(),
            wan_link(),
            Sad::with_capacity(capacity + 16, 0x5eed ^ u64::from(id)),
            Box::new(Spd::new(Vec::new()).expect("empty SPD")),
            control,
        );
        // ROAMGATE_PERF_RESOLVE=1: the WAN link resolves its next hop (the peer as a static
        // neighbour, so nothing waits for an answer): what the neighbour layer costs per
        // packet next to a configured neighbor_mac.
        if std::env::var_os("ROAMGATE_PERF_RESOLVE").is_some() {
            let routes = |subnet: &str, n: (&str, [u8; 6])| pipeline::worker::Routes {
                on_link: vec![subnet.parse().expect("literal")],
                statics: vec![(n.0.parse().expect("literal"), n.1)],
                ..Default::default()
            };
            worker
                .set_neighbors(Some(pipeline::worker::NeighborSetup {
                    cache: Default::default(),
                    lan: None,
                    wan: Some(routes("192.0.2.0/24", ("192.0.2.2", wan_link().neighbor))),
                }))
                .expect("neighbour setup");
        }
        Rig {
            worker,
            lan,
            wan,
            link,
        }
    }

    pub(crate) fn settle(&mut self, generation: u64) {
        while self.link.pump() < generation {
            self.worker.poll(0);
        }
    }
}

/// A worker on ports `lan` and `wan` (a real port kind) with one outbound SA, `sa_params(0)`,
/// bound to `host(0)`, installed through the agent: what the DPDK and AF_XDP measurements
/// encrypt with. The link must stay alive as long as the worker runs.
pub(crate) fn one_sa_worker<P: Port>(
    lan: P,
    wan: P,
    backend: Backend,
) -> Result<(Worker<P>, WorkerLink), String> {
    let (mut link, control) = agent::link(0, 64, None);
    let mut worker = Worker::new(
        0,
        lan,
        wan,
        lan_link(),
        wan_link(),
        Sad::with_capacity(16, 1),
        Box::new(Spd::new(Vec::new()).map_err(|e| e.to_string())?),
        control,
    );
    let p = sa_params(0);
    let id = p.id;
    let mut last = 0;
    for u in [
        Update::AddSa {
            dir: Direction::Outbound,
            params: p,
        },
        Update::BindHost {
            dst: host(0).into(),
            src: "10.1.0.0/24".parse().map_err(|_| "literal")?,
            sa: id,
        },
    ] {
        last = link.send(agent::prepare(backend, &u).map_err(|e| e.to_string())?);
    }
    while link.pump() < last {
        worker.poll(0);
    }
    Ok((worker, link))
}

/// A UDP/IPv4 frame of `size` bytes (Ethernet included) from 10.1.0.10 to `dst`, UDP
/// checksum 0 (allowed for IPv4), IPv4 checksum set.
pub fn plain_frame(size: usize, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let size = size.max(64);
    let ip_len = size - 14;
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&lan_link().mac);
    f[6..12].copy_from_slice(&lan_link().neighbor);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&5001u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    set_ipv4_checksum(&mut f[14..34]);
    f
}

/// Sets a `plain_frame`'s UDP checksum to the pseudo-header sum alone: what a host that
/// leaves checksums to hardware sends (the rest is never summed).
fn unfinish_udp_checksum(f: &mut [u8]) {
    let (src, dst) = (&f[26..30], &f[30..34]);
    let len = f.len() - 34;
    let mut sum: u32 = src
        .chunks(2)
        .chain(dst.chunks(2))
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>()
        + 17
        + len as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // A zero would read as "no checksum"; the sum of real addresses is never zero.
    f[40..42].copy_from_slice(&(sum as u16).to_be_bytes());
}

fn set_ipv4_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A small deterministic generator for SA indexes (SPIs spread at random).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn size_at(size: usize, k: u64) -> usize {
    if size == 0 {
        IMIX[(k % IMIX.len() as u64) as usize]
    } else {
        size
    }
}

/// Pre-generated frames, back to back in one buffer (one allocation, read in order).
pub(crate) struct Frames {
    bytes: Vec<u8>,
    /// Where each frame ends in `bytes`.
    ends: Vec<usize>,
}

impl Frames {
    /// No frames (encrypt runs generate theirs).
    pub(crate) fn empty() -> Frames {
        Frames {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    fn get(&self, k: usize) -> &[u8] {
        let start = if k == 0 { 0 } else { self.ends[k - 1] };
        &self.bytes[start..self.ends[k]]
    }
}

/// ESP frames (Ethernet included) that a peer with SAs 0..sas would send us: `n` of them,
/// to random SAs, each SA's sequence numbers in order.
fn esp_frames(n: u64, size: usize, sas: usize, backend: Backend, alg: EspAlg, seed: u64) -> Frames {
    let mut out_sas: Vec<_> = (0..sas)
        .map(|i| {
            let mut p = sa_params_alg(i, alg);
            // The peer's view: it sends from 192.0.2.2 to us.
            core::mem::swap(&mut p.local, &mut p.remote);
            build_outbound(backend, &p).expect("SA builds")
        })
        .collect();
    let mut rng = XorShift(seed | 1);
    // ESP adds at most 80 bytes to a frame; IMIX averages under 400.
    let per_frame = if size == 0 { 400 } else { size + 80 };
    let mut frames = Frames {
        bytes: Vec::with_capacity(n as usize * per_frame),
        ends: Vec::with_capacity(n as usize),
    };
    let mut scratch = MemFrame::new();
    for k in 0..n {
        let i = rng.next(sas);
        let fsize = size_at(size, k);
        let inner = plain_frame(fsize, host(i), Ipv4Addr::new(10, 1, 0, 10));
        seal_into(&mut out_sas[i], &inner, &mut scratch).expect("seals");
        frames.bytes.extend_from_slice(scratch.data());
        frames.ends.push(frames.bytes.len());
    }
    frames
}

/// The ESP frame (Ethernet included, to our WAN port from its neighbour) that `sa` makes of
/// the plaintext Ethernet frame `plain`.
pub(crate) fn seal_frame(sa: &mut OutboundSa, plain: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut f = MemFrame::new();
    seal_into(sa, plain, &mut f)?;
    Ok(f.data().to_vec())
}

/// [`seal_frame`] into `f`.
fn seal_into(sa: &mut OutboundSa, plain: &[u8], f: &mut MemFrame) -> Result<(), &'static str> {
    if !f.set_data(plain.get(14..).ok_or("short frame")?) {
        return Err("too big");
    }
    let meta = InnerMeta {
        next_header: 4,
        dscp: 0,
        ecn: 0,
    };
    tunnel::encapsulate(sa, f, meta).map_err(|r| r.name())?;
    if !f.prepend(14) {
        return Err("no headroom");
    }
    let d = f.data_mut();
    d[0..6].copy_from_slice(&wan_link().mac);
    d[6..12].copy_from_slice(&wan_link().neighbor);
    d[12..14].copy_from_slice(&[0x08, 0x00]);
    Ok(())
}

/// Runs one worker over `n` packets; returns (timed packets, their inner bytes, worker time
/// over them, all packets out). The first tenth is a warm-up, not timed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive(
    rig: &mut Rig,
    dir: Dir,
    size: usize,
    sas: usize,
    n: u64,
    seed: u64,
    esp: &Frames,
    unfinished: bool,
) -> (u64, u64, Duration, u64) {
    let mut q: VecDeque<MemFrame> = (0..BURST).map(|_| MemFrame::new()).collect();
    let mut out = Vec::with_capacity(BURST);
    let mut rng = XorShift(seed | 1);
    let templates: Vec<Vec<u8>> = IMIX
        .iter()
        .chain(std::iter::once(&size))
        .map(|s| {
            let mut f = plain_frame(*s, Ipv4Addr::new(10, 1, 0, 10), host(0));
            if unfinished {
                unfinish_udp_checksum(&mut f);
            }
            f
        })
        .collect();
    let (mut sent, mut got, mut bytes) = (0u64, 0u64, 0u64);
    let mut busy = Duration::ZERO;
    let mut timed_from: Option<u64> = None;
    let mut idle_turns = 0;
    while got < n {
        // Refill (untimed): the traffic generator's work, not the worker's.
        let mut burst = VecDeque::new();
        while sent < n && burst.len() < BURST {
            let Some(mut f) = q.pop_front().or_else(|| Some(MemFrame::new())) else {
                break;
            };
            match dir {
                Dir::Encrypt => {
                    let fsize = size_at(size, sent);
                    let t = if size == 0 {
                        &templates[IMIX.iter().position(|s| *s == fsize).unwrap_or(0)]
                    } else {
                        &templates[IMIX.len()]
                    };
                    f.set_data(t);
                    let i = rng.next(sas);
                    let d = f.data_mut();
                    d[30..34].copy_from_slice(&host(i).octets());
                    set_ipv4_checksum(&mut d[14..34]);
                    bytes += (fsize - 14) as u64;
                }
                Dir::Decrypt => {
                    f.set_data(esp.get(sent as usize));
                    bytes += (size_at(size, sent) - 14) as u64;
                }
            }
            burst.push_back(f);
            sent += 1;
        }
        let port = match dir {
            Dir::Encrypt => &mut rig.lan,
            Dir::Decrypt => &mut rig.wan,
        };
        port.tx_burst(&mut burst);
        q.extend(burst);
        let t = Instant::now();
        let w = rig.worker.poll(0);
        // The first tenth warms caches, the allocator and the clock up; it is not timed.
        if got >= n / 10 {
            busy += t.elapsed();
        }
        let port = match dir {
            Dir::Encrypt => &mut rig.wan,
            Dir::Decrypt => &mut rig.lan,
        };
        out.clear();
        let k = port.rx_burst(&mut out, BURST * 2);
        got += k as u64;
        if got > n / 10 && timed_from.is_none() {
            timed_from = Some(got);
        }
        q.extend(out.drain(..));
        if w == 0 && k == 0 && sent >= n {
            idle_turns += 1;
            if idle_turns > 1000 {
                break;
            }
        }
    }
    // Packets and bytes of the timed part only (bytes pro rata).
    let timed_pkts = got - timed_from.unwrap_or(0);
    let timed_bytes = bytes * timed_pkts / got.max(1);
    (timed_pkts, timed_bytes, busy, got)
}

/// Throughput of `workers` workers (at once, on their own cores), each with `sas` SAs of
/// AES-128-GCM.
pub fn throughput(
    dir: Dir,
    size: usize,
    sas: usize,
    workers: usize,
    backend: Backend,
    n: u64,
) -> Point {
    throughput_with(dir, size, sas, workers, backend, GCM, n, None)
}

/// [`throughput`] with SAs of transform `alg`.
pub fn throughput_alg(
    dir: Dir,
    size: usize,
    sas: usize,
    workers: usize,
    backend: Backend,
    alg: EspAlg,
    n: u64,
) -> Point {
    throughput_with(dir, size, sas, workers, backend, alg, n, None)
}

/// [`throughput`] with SAs of transform `alg` and the workers' clear-side checksum mode set
/// to `checksum` and, when it is given, every generated UDP checksum unfinished (the
/// pseudo-header sum only, as a host with checksum offload leaves it): the worst case, where
/// `complete` verifies and then recomputes every packet.
#[allow(clippy::too_many_arguments)] // the bench's knobs, each one a column of the report
pub fn throughput_with(
    dir: Dir,
    size: usize,
    sas: usize,
    workers: usize,
    backend: Backend,
    alg: EspAlg,
    n: u64,
    checksum: Option<pipeline::worker::ClearChecksum>,
) -> Point {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let results: Vec<(u64, u64, Duration, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let core = cores.get(w).copied();
                s.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let d = match dir {
                        Dir::Encrypt => Direction::Outbound,
                        Dir::Decrypt => Direction::Inbound,
                    };
                    let mut rig = Rig::with_alg(w as u16, sas, d, backend, alg);
                    if let Some(mode) = checksum {
                        rig.worker.set_clear_checksum(mode);
                    }
                    let esp = if dir == Dir::Decrypt {
                        esp_frames(n, size, sas, backend, alg, 7 + w as u64)
                    } else {
                        Frames {
                            bytes: Vec::new(),
                            ends: Vec::new(),
                        }
                    };
                    drive(
                        &mut rig,
                        dir,
                        size,
                        sas,
                        n,
                        7 + w as u64,
                        &esp,
                        checksum.is_some(),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect()
    });
    let packets: u64 = results.iter().map(|r| r.3).sum();
    let pps: f64 = results
        .iter()
        .map(|r| r.0 as f64 / r.2.as_secs_f64().max(1e-9))
        .sum();
    let bps: f64 = results
        .iter()
        .map(|r| r.1 as f64 * 8.0 / r.2.as_secs_f64().max(1e-9))
        .sum();
    let ns = results
        .iter()
        .map(|r| r.2.as_nanos() as f64 / r.0.max(1) as f64)
        .sum::<f64>()
        / workers.max(1) as f64;
    Point {
        dir,
        size,
        sas,
        workers,
        backend,
        alg,
        packets,
        pps,
        bps,
        ns_per_packet: ns,
        missing: n * workers as u64 - packets,
    }
}

/// The bare AEAD of a frame's ESP payload (inner packet + padding + trailer), ns: the seal for
/// `Encrypt`, the open (decrypt and tag check) for `Decrypt`. The median of five timed loops
/// after an untimed warm-up loop, on a thread pinned to the first worker's core.
pub fn aead_ns(size: usize, dir: Dir, backend: Backend, iters: u32) -> f64 {
    on_first_core(|| aead_ns_here(size, dir, backend, iters))
}

/// Runs `f` on a thread of its own pinned to the first core (where single workers run).
fn on_first_core<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let core = core_affinity::get_core_ids().and_then(|c| c.first().copied());
    in_own_thread(move || {
        if let Some(c) = core {
            core_affinity::set_for_current(c);
        }
        f()
    })
}

/// [`aead_ns`] for transform `alg`: for AES-CBC + HMAC, the bare seal (IV generation, CBC
/// and HMAC) or open (HMAC check and CBC decryption) of the whole ESP packet, a worker's burst
/// (32 packets) at a time as the worker does it (`cbc::seal_burst` / `open_burst`).
pub fn crypto_ns(size: usize, dir: Dir, backend: Backend, alg: EspAlg, iters: u32) -> f64 {
    match alg {
        EspAlg::Aead(_) => aead_ns(size, dir, backend, iters),
        EspAlg::Cbc(..) => on_first_core(|| cbc_ns_here(size, dir, backend, alg, iters)),
    }
}

fn cbc_ns_here(size: usize, dir: Dir, backend: Backend, alg: EspAlg, iters: u32) -> f64 {
    const BATCH: usize = 256;
    let EspAlg::Cbc(cipher, integ) = alg else {
        return 0.0;
    };
    let keymat: Vec<u8> = (0..alg.keymat_len()).map(|i| i as u8).collect();
    let (key, ikey) = keymat.split_at(cipher.key_len());
    let c = crypto::new_cbc_hmac(backend, cipher, key, integ, ikey).expect("key");
    let ivs = crypto::IvGen::random().expect("random IV key");
    let sizes: Vec<usize> = if size == 0 { IMIX.to_vec() } else { vec![size] };
    let per_loop = u64::from(iters / 5).max(BATCH as u64);
    let mut total = 0.0;
    for s in &sizes {
        // The ESP packet of the frame's inner IP packet: header, IV, padded ciphertext, ICV.
        let ct = (s - 14 + 2).next_multiple_of(16);
        let len = 8 + 16 + ct + integ.icv_len();
        let mut bufs = vec![vec![0u8; len]; BATCH];
        let mut seq = 0u64;
        let one_loop = || {
            let mut busy = Duration::ZERO;
            let mut done = 0u64;
            while done < per_loop {
                // As a worker does: a burst's packets sealed or opened in one batch
                // (`cbc::seal_burst` / `open_burst`).
                let seal = |bufs: &mut [Vec<u8>], seq: &mut u64| {
                    for chunk in bufs.chunks_mut(pipeline::worker::BURST) {
                        for b in chunk.iter_mut() {
                            *seq += 1;
                            b[8..24].copy_from_slice(&ivs.iv(0x1000, *seq));
                        }
                        let mut jobs: Vec<CbcJob<'_>> = chunk
                            .iter_mut()
                            .map(|b| CbcJob::new(&*c, b, None))
                            .collect();
                        cbc::seal_burst(&mut jobs);
                        assert!(jobs.iter().all(|j| j.result.is_ok()), "seals");
                    }
                };
                match dir {
                    Dir::Encrypt => {
                        let t = Instant::now();
                        seal(&mut bufs, &mut seq);
                        busy += t.elapsed();
                    }
                    Dir::Decrypt => {
                        seal(&mut bufs, &mut seq);
                        let t = Instant::now();
                        for chunk in bufs.chunks_mut(pipeline::worker::BURST) {
                            let mut jobs: Vec<CbcJob<'_>> = chunk
                                .iter_mut()
                                .map(|b| CbcJob::new(&*c, b, None))
                                .collect();
                            cbc::open_burst(&mut jobs);
                            debug_assert!(jobs.iter().all(|j| j.result.is_ok()));
                        }
                        busy += t.elapsed();
                    }
                }
                done += BATCH as u64;
            }
            busy.as_nanos() as f64 / done as f64
        };
        total += warm_median_of_five(one_loop);
    }
    total / sizes.len() as f64
}

/// One untimed warm-up run of `one_loop`, then the median of five timed ones (ns/packet).
fn warm_median_of_five(mut one_loop: impl FnMut() -> f64) -> f64 {
    one_loop();
    let mut runs: Vec<f64> = (0..5).map(|_| one_loop()).collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn aead_ns_here(size: usize, dir: Dir, backend: Backend, iters: u32) -> f64 {
    /// Buffers opened per timed batch (sealed again, untimed, before the next one).
    const BATCH: usize = 256;
    let sizes: Vec<usize> = if size == 0 { IMIX.to_vec() } else { vec![size] };
    let aead = crypto::new_aead(backend, AeadAlg::AesGcm128, &[7u8; 16]).expect("key");
    let nonce_of = |i: u64| {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        nonce
    };
    // The nonces and the AAD are written before the timed loop, as the worker writes its
    // nonces a burst ahead (`pipeline::worker::gcm_burst`): ipsec-mb reads them with masked
    // loads, which wait for stores still in flight, so a nonce built just before each call
    // would time that wait too, which no worker pays.
    let aad = [0u8; 8];
    let mut nonces = vec![[0u8; 12]; BATCH];
    let per_loop = u64::from(iters / 5).max(BATCH as u64);
    let mut total = 0.0;
    for s in &sizes {
        let len = (s - 14 + 2).next_multiple_of(4);
        let mut bufs = vec![(vec![0u8; len], [0u8; 16]); BATCH];
        let mut next = 0u64;
        let one_loop = || {
            let mut busy = Duration::ZERO;
            let mut done = 0u64;
            while done < per_loop {
                match dir {
                    Dir::Encrypt => {
                        for n in nonces.iter_mut() {
                            *n = nonce_of(next);
                            next += 1;
                        }
                        let t = Instant::now();
                        for ((buf, tag), n) in bufs.iter_mut().zip(&nonces) {
                            aead.seal_in_place(n, &aad, buf, tag);
                        }
                        busy += t.elapsed();
                    }
                    Dir::Decrypt => {
                        for (i, ((buf, tag), n)) in bufs.iter_mut().zip(&mut nonces).enumerate() {
                            *n = nonce_of(i as u64);
                            buf.fill(0);
                            aead.seal_in_place(n, &aad, buf, tag);
                        }
                        let t = Instant::now();
                        for ((buf, tag), n) in bufs.iter_mut().zip(&nonces) {
                            let ok = aead.open_in_place(n, &aad, buf, tag);
                            debug_assert!(ok.is_ok());
                        }
                        busy += t.elapsed();
                    }
                }
                done += BATCH as u64;
            }
            busy.as_nanos() as f64 / done as f64
        };
        total += warm_median_of_five(one_loop);
    }
    total / sizes.len() as f64
}

/// Latency at an offered rate: (accepted, received, histogram of ns), encrypt, one SA.
pub fn latency(
    size: usize,
    rate_pps: f64,
    secs: f64,
    backend: Backend,
) -> (u64, u64, hdrhistogram::Histogram<u64>) {
    latency_with(size, rate_pps, secs, backend, Offer::Drop)
}

/// What the latency generator does with a frame the worker's rx ring has no room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Drops it: an offered packet not accepted, the loss NDR searches for. The run ends
    /// 0.2 s after its length even if not everything came back.
    Drop,
    /// Waits for room (after draining the sink) and offers it again: every packet is accepted,
    /// late if the generator was (a descheduled generator sends a burst, not a loss). Latency
    /// counts from acceptance. The run waits up to 30 s past its length for what was accepted
    /// to come back.
    Wait,
}

/// [`latency`] with the generator's behaviour on a full ring chosen.
pub fn latency_with(
    size: usize,
    rate_pps: f64,
    secs: f64,
    backend: Backend,
    offer: Offer,
) -> (u64, u64, hdrhistogram::Histogram<u64>) {
    in_own_thread(|| latency_here(size, rate_pps, secs, backend, offer))
}

/// Runs `f` on a thread of its own and returns its result. The feeders pin the thread they
/// run on; done on the caller's thread, that pin outlived the call, and the next
/// `get_core_ids` (which lists the calling thread's allowed cores) then put every later
/// worker and feeder on that one core.
fn in_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("measurement thread"))
}

fn latency_here(
    size: usize,
    rate_pps: f64,
    secs: f64,
    backend: Backend,
    offer: Offer,
) -> (u64, u64, hdrhistogram::Histogram<u64>) {
    let grace = match offer {
        Offer::Drop => 0.2,
        Offer::Wait => 30.0,
    };
    let mut rig = Rig::new(0, 1, Direction::Outbound, backend);
    let mut lan = std::mem::replace(&mut rig.lan, cable("x", "y", 1).0);
    let mut wan = std::mem::replace(&mut rig.wan, cable("x", "y", 1).0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    let start = Instant::now();
    let n = (rate_pps * secs) as usize;
    let mut pushed_at = vec![0u64; n + 1];
    let (accepted, received) = std::thread::scope(|s| {
        let worker = rig.worker;
        let stop = &stop;
        let wcore = cores.first().copied();
        s.spawn(move || {
            if let Some(c) = wcore {
                core_affinity::set_for_current(c);
            }
            // Pure poll mode: a yielding worker lets other threads have its core for up to a
            // scheduler tick, which is what the sink then measures.
            worker.run_with(None, stop, Idle::Spin);
        });
        if let Some(c) = cores.get(1) {
            core_affinity::set_for_current(*c);
        }
        let template = plain_frame(size_at(size, 0), Ipv4Addr::new(10, 1, 0, 10), host(0));
        let (mut accepted, mut received, mut offered) = (0u64, 0u64, 0usize);
        let mut out = Vec::with_capacity(64);
        // Frames come back from the sink and are refilled (no allocation per packet).
        let mut pool: Vec<MemFrame> = (0..8192).map(|_| MemFrame::new()).collect();
        // Offer::Wait: the frame the ring had no room for, offered again next round.
        let mut waiting: Option<MemFrame> = None;
        let t0 = Instant::now();
        loop {
            let now = t0.elapsed().as_nanos() as u64;
            let due = ((now as f64 / 1e9) * rate_pps) as usize;
            while offered < due.min(n) {
                let f = waiting.take().unwrap_or_else(|| {
                    let mut f = pool.pop().unwrap_or_default();
                    f.set_data(&template);
                    f
                });
                match lan.send(f) {
                    Ok(()) => {
                        offered += 1;
                        accepted += 1;
                        pushed_at[accepted as usize] = start.elapsed().as_nanos() as u64;
                    }
                    Err(f) if offer == Offer::Wait => {
                        // Drain the sink first, then try again.
                        waiting = Some(f);
                        break;
                    }
                    Err(f) => {
                        offered += 1;
                        pool.push(f);
                    }
                }
            }
            out.clear();
            // Drain everything that arrived (a sink slower than the worker would queue).
            while wan.rx_burst(&mut out, 64) == 64 {}
            let arrive = start.elapsed().as_nanos() as u64;
            for f in &out {
                // The ESP sequence number numbers the accepted packets in order.
                let d = f.data();
                if let Some(b) = d.get(38..42) {
                    let seq = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                    if let Some(t) = pushed_at.get(seq) {
                        let _ = hist.record(arrive.saturating_sub(*t).max(1));
                    }
                }
                received += 1;
            }
            pool.append(&mut out);
            let late = t0.elapsed().as_secs_f64() > secs + grace;
            let done = offered >= n && received >= accepted;
            // Offer::Drop offers everything whatever the time (NDR counts the drops); a
            // waiting generator may be stuck behind a ring that never drains.
            let give_up = late && (offered >= n || offer == Offer::Wait);
            if done || give_up {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (accepted, received)
    });
    let offered_lost = n as u64 - accepted;
    let _ = offered_lost;
    (accepted, received, hist)
}

/// The cost model's fixed term: one `Worker::poll` that finds nothing to do (command ring,
/// transmit ring, both ports' rx rings, NAT expiry), ns, on the first worker's core.
pub fn idle_poll_ns() -> f64 {
    on_first_core(|| {
        let mut rig = Rig::empty(0, 16);
        let polls = 1_000_000u32;
        for _ in 0..polls / 10 {
            rig.worker.poll(0);
        }
        let t = Instant::now();
        for _ in 0..polls {
            rig.worker.poll(0);
        }
        t.elapsed().as_nanos() as f64 / f64::from(polls)
    })
}

/// Memory one SA direction occupies on its worker, bytes: the runtime record, its counters
/// (with the lifetimes) and the key state (`Aead::state_bytes`).
pub fn sa_footprint(backend: Backend) -> (usize, usize) {
    let p = sa_params(0);
    let out = build_outbound(backend, &p).expect("SA builds");
    let inb = pipeline::esp::sa::build_inbound(backend, &p).expect("SA builds");
    let counters = core::mem::size_of::<pipeline::stats::SaCounters>();
    (
        core::mem::size_of::<OutboundSa>() + counters + out.cipher.state_bytes(),
        core::mem::size_of::<pipeline::esp::sa::InboundSa>() + counters + inb.cipher.state_bytes(),
    )
}

/// One core's memory copy bandwidth, GB/s: 64 MiB copied eight times on the first worker's
/// core (far beyond any cache here). The yardstick for the memory traffic the cost model
/// projects.
pub fn copy_bandwidth_gbs() -> f64 {
    on_first_core(|| {
        let n = 64 << 20;
        let src = vec![1u8; n];
        let mut dst = vec![0u8; n];
        dst.copy_from_slice(&src);
        let t = Instant::now();
        for _ in 0..8 {
            dst.copy_from_slice(std::hint::black_box(&src));
        }
        // Each copy reads and writes n bytes.
        let moved = 8.0 * 2.0 * n as f64;
        std::hint::black_box(&dst);
        moved / t.elapsed().as_secs_f64() / 1e9
    })
}

/// The machine's own floor for [`latency`]: the same paced feeder and sink threads on the
/// same cores, but a bare echo thread between two rings instead of a worker. Returns the
/// round-trip histogram (ns) and the longest stretch the feeder itself did not run (ns): on
/// a VM that is the hypervisor's, and any packet in flight then waits with it.
pub fn ring_floor(rate_pps: f64, secs: f64) -> (hdrhistogram::Histogram<u64>, u64) {
    in_own_thread(|| ring_floor_here(rate_pps, secs))
}

fn ring_floor_here(rate_pps: f64, secs: f64) -> (hdrhistogram::Histogram<u64>, u64) {
    let (mut to_echo, mut echo_rx) = rtrb::RingBuffer::<u64>::new(4096);
    let (mut echo_tx, mut back) = rtrb::RingBuffer::<u64>::new(4096);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut hist =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    let n = (rate_pps * secs) as u64;
    let mut longest_gap = 0u64;
    std::thread::scope(|s| {
        let stop = &stop;
        let ecore = cores.first().copied();
        s.spawn(move || {
            if let Some(c) = ecore {
                core_affinity::set_for_current(c);
            }
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(v) = echo_rx.pop() {
                    while echo_tx.push(v).is_err() {}
                }
            }
        });
        if let Some(c) = cores.get(1) {
            core_affinity::set_for_current(*c);
        }
        let t0 = Instant::now();
        let (mut sent, mut got, mut last) = (0u64, 0u64, 0u64);
        while got < n && t0.elapsed().as_secs_f64() < secs + 1.0 {
            let now = t0.elapsed().as_nanos() as u64;
            longest_gap = longest_gap.max(now - last);
            last = now;
            let due = (((now as f64) / 1e9) * rate_pps) as u64;
            while sent < due.min(n) && to_echo.push(t0.elapsed().as_nanos() as u64).is_ok() {
                sent += 1;
            }
            while let Ok(v) = back.pop() {
                let _ = hist.record((t0.elapsed().as_nanos() as u64).saturating_sub(v).max(1));
                got += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    (hist, longest_gap)
}

/// The highest offered rate (pps) at which nothing is lost (RFC 2544 / CSIT NDR), by binary
/// search between `lo` and `hi` with trials of `secs`.
pub fn ndr(size: usize, hi: f64, secs: f64, steps: u32, backend: Backend) -> f64 {
    let (mut lo, mut hi) = (0.0f64, hi);
    for _ in 0..steps {
        let mid = (lo + hi) / 2.0;
        let n = (mid * secs) as u64;
        let (accepted, received, _) = latency(size, mid, secs, backend);
        if accepted == n && received == n {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_goes_through_in_each_direction_and_with_many_sas() {
        let b = pipeline::crypto::best_backend();
        for dir in [Dir::Encrypt, Dir::Decrypt] {
            // 5000 SAs: above the count at which a worker reads a burst's SA state ahead.
            for (size, sas) in [(64, 1), (1420, 1000), (0, 10), (64, 5000)] {
                let p = throughput(dir, size, sas, 1, b, 3000);
                assert_eq!(
                    (p.packets, p.missing),
                    (3000, 0),
                    "{dir} {size} {sas}: {p:?}"
                );
                assert!(p.pps > 0.0 && p.ns_per_packet > 0.0);
            }
        }
        let p = throughput(Dir::Encrypt, 64, 100, 2, b, 2000);
        assert_eq!(p.packets, 4000, "two workers: {p:?}");
    }

    #[test]
    fn every_checksum_mode_carries_every_packet() {
        use pipeline::worker::ClearChecksum;
        let b = pipeline::crypto::best_backend();
        for mode in [
            ClearChecksum::Pass,
            ClearChecksum::Verify,
            ClearChecksum::Complete,
        ] {
            let p = throughput_with(Dir::Encrypt, 1420, 1, 1, b, GCM, 3000, Some(mode));
            assert_eq!((p.packets, p.missing), (3000, 0), "{mode:?}: {p:?}");
        }
    }

    #[test]
    fn latency_is_measured_per_packet_and_a_low_rate_loses_nothing() {
        // A generator that waits for the pipeline: descheduled (two shared cores), it sends
        // late, in a burst, and the burst waits for ring room instead of being dropped; what
        // is checked is the worker's side (every accepted packet comes back, each with its
        // latency), which no scheduling can make lose a packet.
        let (acc, rec, h) = latency_with(
            64,
            20_000.0,
            0.1,
            pipeline::crypto::best_backend(),
            Offer::Wait,
        );
        assert_eq!(acc, 2000);
        assert_eq!(rec, 2000);
        assert_eq!(h.len(), 2000);
        assert!(h.value_at_quantile(0.5) > 0);
    }

    #[test]
    fn the_bare_seal_costs_less_than_the_pipeline() {
        let b = pipeline::crypto::best_backend();
        let bare = aead_ns(1420, Dir::Encrypt, b, 20_000);
        let p = throughput(Dir::Encrypt, 1420, 1, 1, b, 20_000);
        assert!(
            bare > 0.0 && bare < p.ns_per_packet,
            "{bare} vs {}",
            p.ns_per_packet
        );
    }
}
