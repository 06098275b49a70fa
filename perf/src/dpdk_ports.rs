//! roamgate's worker on DPDK virtual devices, set up as the ipsec-secgw baseline is: plaintext
//! from a `net_pcap` vdev that replays its capture forever (`infinite_rx=1`) into a `net_null`
//! vdev, one worker on one core, `--no-huge --no-pci`. The two then compare on the same PMDs,
//! the pcap vdev's copy into mbufs included in both.
//!
//! Only encrypt: a replayed capture of ESP repeats sequence numbers, which roamgate's
//! anti-replay check drops (ipsec-secgw's default path has no such check).
//!
//! The EAL starts once per process, so every size is measured from one set of vdevs. Needs a
//! build with the `dpdk` feature; without it [`encrypt_rates`] says so.

use std::path::Path;
use std::time::Duration;

use pipeline::crypto::Backend;

/// Encrypt rates (packets per second of wall time, worker busy-polling on the first core) of
/// one SA at each of `sizes`, each measured for `measure` after `warmup`.
#[cfg(feature = "dpdk")]
pub fn encrypt_rates(
    sizes: &[usize],
    warmup: Duration,
    measure: Duration,
    backend: Backend,
    workdir: &Path,
) -> Result<Vec<(usize, f64)>, String> {
    // `rte_eal_init` pins the thread that calls it to the main lcore, and every thread it
    // spawns later inherits that: done on the caller's thread, the rest of the perf lab (and
    // `get_core_ids`) would then see one core. So the EAL lives and dies on a thread of its
    // own.
    let core = core_affinity::get_core_ids().and_then(|c| c.first().copied());
    std::thread::scope(|s| {
        s.spawn(|| encrypt_rates_here(sizes, warmup, measure, backend, workdir, core))
            .join()
            .map_err(|_| "the DPDK measurement thread panicked".to_string())?
    })
}

#[cfg(feature = "dpdk")]
fn encrypt_rates_here(
    sizes: &[usize],
    warmup: Duration,
    measure: Duration,
    backend: Backend,
    workdir: &Path,
    core: Option<core_affinity::CoreId>,
) -> Result<Vec<(usize, f64)>, String> {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicBool, Ordering};
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
    let mut out = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        let mut lan_dev = DpdkDevice::open(&eal, &format!("net_pcap{i}"), 1, 1024, 0)
            .map_err(|e| e.to_string())?;
        let mut wan_dev = DpdkDevice::open(&eal, &format!("net_null{i}"), 1, 1024, 0)
            .map_err(|e| e.to_string())?;
        let lan = lan_dev.queue(0).map_err(|e| e.to_string())?;
        let wan = wan_dev.queue(0).map_err(|e| e.to_string())?;
        let (worker, _link) = run::one_sa_worker(lan, wan, backend)?;
        let handle = worker.handle();
        let stop = AtomicBool::new(false);
        let pps = std::thread::scope(|sc| {
            let stop = &stop;
            sc.spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                worker.run_with(None, stop, Idle::Spin)
            });
            std::thread::sleep(warmup);
            let (t0, n0) = (Instant::now(), handle.counters.traffic(Traffic::Encrypted));
            std::thread::sleep(measure);
            let (t1, n1) = (Instant::now(), handle.counters.traffic(Traffic::Encrypted));
            stop.store(true, Ordering::Relaxed);
            (n1 - n0) as f64 / (t1 - t0).as_secs_f64()
        });
        out.push((s, pps));
    }
    Ok(out)
}

/// Without the `dpdk` feature there is no DPDK port to measure.
#[cfg(not(feature = "dpdk"))]
pub fn encrypt_rates(
    _sizes: &[usize],
    _warmup: Duration,
    _measure: Duration,
    _backend: Backend,
    _workdir: &Path,
) -> Result<Vec<(usize, f64)>, String> {
    Err("not in this build (build with --features dpdk)".into())
}
