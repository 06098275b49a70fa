//! roamgate's worker on DPDK virtual devices, set up as the ipsec-secgw baseline is: plaintext
//! from a `net_pcap` vdev that replays its capture forever (`infinite_rx=1`) into a `net_null`
//! vdev, one worker on one core, `--no-huge --no-pci`. The two then compare on the same PMDs,
//! the pcap vdev's copy into mbufs included in both.
//!
//! Only encrypt: a replayed capture of ESP repeats sequence numbers, which roamgate's
//! anti-replay check drops (ipsec-secgw's default path has no such check).
//!
//! Beside each size, the floor of these ports: a loop on the same kind of vdevs that receives
//! a burst, seals each frame's payload in place with the same AEAD backend and key size and
//! transmits it, and does nothing else (no parsing, policy, ESP header, trailer or counters).
//! A gateway does all of that and more, so the floor is its ceiling, up to the noise of the
//! machine and of code layout (an earlier version of the loop moved by ~15% at 64 B between
//! two builds that differed by one branch in it, never taken). What a gateway spends per
//! packet beyond the floor is its own work, which is what the identical-port ratio compares.
//! The worker and the floor are measured in turn, a few runs each (three in the report, one
//! in its quick smoke run), and their medians reported.
//!
//! The EAL starts once per process, so every size is measured from one set of vdevs. Needs a
//! build with the `dpdk` feature; without it [`encrypt_rates`] says so.

use std::path::Path;
use std::time::Duration;

use pipeline::crypto::Backend;

/// One size's rates on the vdevs, in packets per second of wall time.
#[derive(Clone, Copy, Debug)]
pub struct VdevRate {
    /// Frame size (Ethernet included) of the plaintext.
    pub size: usize,
    /// roamgate's worker, one SA.
    pub pps: f64,
    /// The floor (module doc): the PMDs and the AEAD alone.
    pub floor_pps: f64,
    /// The baseline measured in turn with the two (the perf lab's ipsec-secgw), if one was
    /// given and at least one of its runs succeeded.
    pub baseline_pps: Option<f64>,
}

/// A baseline gateway measured in turn with the worker and the floor: its encrypt rate
/// (packets per second) at a frame size, one run per call.
pub type Baseline<'a> = &'a mut (dyn FnMut(usize) -> Result<f64, String> + Send);

impl VdevRate {
    /// The time per packet beyond the floor of a gateway that reaches `pps` on these ports:
    /// its own work (module doc).
    pub fn ns_beyond_floor(&self, pps: f64) -> f64 {
        1e9 / pps.max(1e-9) - 1e9 / self.floor_pps.max(1e-9)
    }
}

/// Encrypt rates (packets per second of wall time, worker busy-polling on the first core) of
/// one SA at each of `sizes`, and the floor of the same ports: `runs` runs of each in turn,
/// each measured for `measure` after `warmup`, their medians. With a `baseline`, one run of it
/// follows each pair, so that all three meet the machine's changing load alike.
#[cfg(feature = "dpdk")]
pub fn encrypt_rates(
    sizes: &[usize],
    runs: usize,
    warmup: Duration,
    measure: Duration,
    backend: Backend,
    workdir: &Path,
    baseline: Option<Baseline<'_>>,
) -> Result<Vec<VdevRate>, String> {
    // `rte_eal_init` pins the thread that calls it to the main lcore, and every thread it
    // spawns later inherits that: done on the caller's thread, the rest of the perf lab (and
    // `get_core_ids`) would then see one core. So the EAL lives and dies on a thread of its
    // own.
    let core = core_affinity::get_core_ids().and_then(|c| c.first().copied());
    std::thread::scope(|s| {
        s.spawn(|| {
            encrypt_rates_here(
                sizes,
                runs,
                (warmup, measure),
                backend,
                workdir,
                core,
                baseline,
            )
        })
        .join()
        .map_err(|_| "the DPDK measurement thread panicked".to_string())?
    })
}

#[cfg(feature = "dpdk")]
fn encrypt_rates_here(
    sizes: &[usize],
    runs: usize,
    (warmup, measure): (Duration, Duration),
    backend: Backend,
    workdir: &Path,
    core: Option<core_affinity::CoreId>,
    mut baseline: Option<Baseline<'_>>,
) -> Result<Vec<VdevRate>, String> {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    use pipeline::pcap::PcapWriter;
    use pipeline::port::dpdk::{DpdkDevice, Eal};
    use pipeline::stats::Traffic;
    use pipeline::worker::Idle;

    use crate::run;

    std::fs::create_dir_all(workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let mut vdevs = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let path = workdir.join(format!("plain-{s}.pcap"));
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = PcapWriter::new(file).map_err(|e| e.to_string())?;
        for k in 0..256u64 {
            let f = run::plain_frame(s, Ipv4Addr::new(10, 1, 0, 10), run::host(0));
            w.write(k, &f).map_err(|e| e.to_string())?;
        }
        w.flush().map_err(|e| e.to_string())?;
        vdevs.push(format!(
            "--vdev=net_pcap{i},rx_pcap={},infinite_rx=1",
            path.display()
        ));
        vdevs.push(format!("--vdev=net_null{i},no-rx=1"));
        // The floor's pair, fed from the same capture.
        vdevs.push(format!(
            "--vdev=net_pcap{},rx_pcap={},infinite_rx=1",
            FLOOR_VDEVS + i,
            path.display()
        ));
        vdevs.push(format!("--vdev=net_null{},no-rx=1", FLOOR_VDEVS + i));
    }
    let mut args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "1024",
        "--log-level=lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--file-prefix=rg-perf-{}", std::process::id()));
    args.extend(vdevs);
    let eal = Eal::init(&args).map_err(|e| format!("EAL: {e}"))?;
    let alg = match run::GCM {
        pipeline::crypto::EspAlg::Aead(a) => a,
        _ => return Err("the perf SA is not AEAD".into()),
    };
    let aead = pipeline::crypto::new_aead(backend, alg, &vec![0x5a; alg.key_len()])
        .map_err(|e| e.to_string())?;
    let aead = &*aead;
    // The devices live as long as the EAL (a device that is dropped stops its port).
    let mut devices = Vec::new();
    let mut open = |name: String| -> Result<pipeline::port::dpdk::DpdkPort, String> {
        let mut d = DpdkDevice::open(&eal, &name, 1, 1024, 0).map_err(|e| e.to_string())?;
        let q = d.queue(0).map_err(|e| e.to_string())?;
        devices.push(d);
        Ok(q)
    };
    // One busy-polling run of `body` on the measuring core: the rate of what `count` reads,
    // over `measure` after `warmup`.
    let rate =
        |count: &(dyn Fn() -> u64 + Sync), stop: &AtomicBool, body: &mut (dyn FnMut() + Send)| {
            stop.store(false, Ordering::Relaxed);
            std::thread::scope(|sc| {
                sc.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    body()
                });
                std::thread::sleep(warmup);
                let (t0, n0) = (Instant::now(), count());
                std::thread::sleep(measure);
                let (t1, n1) = (Instant::now(), count());
                stop.store(true, Ordering::Relaxed);
                n1.saturating_sub(n0) as f64 / (t1 - t0).as_secs_f64()
            })
        };
    let mut out = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let (lan, wan) = (open(format!("net_pcap{i}"))?, open(format!("net_null{i}"))?);
        let (worker, _link) = run::one_sa_worker(lan, wan, backend)?;
        let handle = worker.handle();
        let mut worker = Some(worker);
        let mut floor_ports = Some((
            open(format!("net_pcap{}", FLOOR_VDEVS + i))?,
            open(format!("net_null{}", FLOOR_VDEVS + i))?,
        ));
        let stop = AtomicBool::new(false);
        let sealed = AtomicU64::new(0);
        // The worker, the floor and the baseline in turn, `runs` times each: their medians
        // (the machine's noise then weighs on all alike).
        let (mut ours, mut floors, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            ours.push(rate(
                &|| handle.counters.traffic(Traffic::Encrypted),
                &stop,
                &mut || worker = worker.take().map(|w| w.run_with(None, &stop, Idle::Spin)),
            ));
            floors.push(rate(&|| sealed.load(Ordering::Relaxed), &stop, &mut || {
                floor_ports = floor_ports
                    .take()
                    .map(|(lan, wan)| floor_loop(lan, wan, aead, &stop, &sealed));
            }));
            if let Some(Ok(pps)) = baseline.as_mut().map(|b| b(s)) {
                theirs.push(pps);
            }
        }
        out.push(VdevRate {
            size: s,
            pps: crate::median(&mut ours),
            floor_pps: crate::median(&mut floors),
            baseline_pps: (!theirs.is_empty()).then(|| crate::median(&mut theirs)),
        });
    }
    Ok(out)
}

/// The floor's vdevs are numbered from here (roamgate's from 0).
#[cfg(feature = "dpdk")]
const FLOOR_VDEVS: usize = 100;

/// The floor (module doc): receive a burst, seal each frame's bytes after the Ethernet header
/// in place with its tag appended, transmit; `sealed` counts the sealed frames.
#[cfg(feature = "dpdk")]
fn floor_loop(
    mut lan: pipeline::port::dpdk::DpdkPort,
    mut wan: pipeline::port::dpdk::DpdkPort,
    aead: &dyn pipeline::crypto::Aead,
    stop: &std::sync::atomic::AtomicBool,
    sealed: &std::sync::atomic::AtomicU64,
) -> (
    pipeline::port::dpdk::DpdkPort,
    pipeline::port::dpdk::DpdkPort,
) {
    use std::collections::VecDeque;
    use std::sync::atomic::Ordering;

    use pipeline::crypto::{NONCE_LEN, TAG_LEN};
    use pipeline::port::{Frame, Port};

    const BURST: usize = 32;
    const ETHERNET: usize = 14;
    let mut rx = Vec::with_capacity(BURST);
    let mut txq = VecDeque::with_capacity(4 * BURST);
    // Two sets of nonces, each written a burst before it is used: a seal that reads a nonce
    // stored just before waits for the store (`pipeline::worker::gcm_burst`). Each nonce is
    // rewritten with a fresh number once used: none repeats.
    let mut seq = 0u64;
    let mut fresh = |n: &mut [u8; NONCE_LEN]| {
        seq += 1;
        n[NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
    };
    let mut nonces = [[[0u8; NONCE_LEN]; BURST]; 2];
    nonces.iter_mut().flatten().for_each(&mut fresh);
    let mut cur = 0;
    let aad = [0u8; 8];
    let mut n = sealed.load(Ordering::Relaxed);
    // Each burst is sealed after the next one is received, as the worker seals at a burst's
    // end: a seal's masked loads of the payload's last bytes wait for stores still in flight
    // (the PMD's copy into the mbuf), which one burst's time lets settle.
    let mut held: Vec<pipeline::port::dpdk::DpdkFrame> = Vec::with_capacity(BURST);
    while !stop.load(Ordering::Relaxed) {
        rx.clear();
        lan.rx_burst(&mut rx, BURST);
        let used = held.len();
        for (mut f, nonce) in held.drain(..).zip(nonces[cur].iter()) {
            let d = f.data_mut();
            let Some(split) = d.len().checked_sub(TAG_LEN).filter(|&s| s >= ETHERNET) else {
                continue;
            };
            let (body, tag) = d.split_at_mut(split);
            let Ok(tag) = <&mut [u8; TAG_LEN]>::try_from(tag) else {
                continue;
            };
            aead.seal_in_place(nonce, &aad, &mut body[ETHERNET..], tag);
            n += 1;
            txq.push_back(f);
        }
        nonces[cur].iter_mut().take(used).for_each(&mut fresh);
        cur ^= 1;
        held.extend(
            rx.drain(..)
                .filter_map(|mut f| f.append(TAG_LEN).then_some(f)),
        );
        while !txq.is_empty() && wan.tx_burst(&mut txq) > 0 {}
        sealed.store(n, Ordering::Relaxed);
    }
    (lan, wan)
}

/// Without the `dpdk` feature there is no DPDK port to measure.
#[cfg(not(feature = "dpdk"))]
pub fn encrypt_rates(
    _sizes: &[usize],
    _runs: usize,
    _warmup: Duration,
    _measure: Duration,
    _backend: Backend,
    _workdir: &Path,
    _baseline: Option<Baseline<'_>>,
) -> Result<Vec<VdevRate>, String> {
    Err("not in this build (build with --features dpdk)".into())
}
