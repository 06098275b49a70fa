//! `roamgate perf`: the perf lab's measurements (code in the `roamgate-perf` crate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use roamgate_perf::handshakes;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PerfArgs {
    #[command(subcommand)]
    what: Option<PerfWhat>,
    #[command(flatten)]
    report: ReportArgs,
}

/// `roamgate perf` without a subcommand: the whole perf lab, written as a report.
#[derive(clap::Args)]
struct ReportArgs {
    /// A one-minute smoke run (fewer sizes, SA counts and packets).
    #[arg(long)]
    quick: bool,
    /// Where the dated report (markdown, with its SVG plots in a directory beside it) goes.
    #[arg(long, default_value = "perf/reports")]
    out: PathBuf,
    /// Where DPDK's ipsec-secgw baseline is built (from dpdk-doc's source).
    #[arg(long, default_value = "target/secgw")]
    secgw_dir: PathBuf,
    /// Skip the ipsec-secgw baseline.
    #[arg(long)]
    no_secgw: bool,
}

#[derive(clap::Subcommand)]
enum PerfWhat {
    /// HA pair: a fresh standby's resync over the real sync channel (Noise over loopback TCP)
    /// and its takeover (the node's installs, the control core's adoption of every IKE SA),
    /// for real IKE SAs of simulated clients (PSK, virtual IP, one CHILD_SA each).
    HaResync {
        /// IKE SA counts, comma-separated.
        #[arg(long, default_value = "10000,100000")]
        sas: String,
    },
    /// Encrypt rate of one worker on DPDK vdevs set up as the ipsec-secgw baseline
    /// (net_pcap with infinite_rx into net_null; needs a build with the `dpdk` feature), and
    /// the floor of those ports (their PMDs and the AEAD alone).
    Dpdk {
        /// Frame sizes, comma-separated.
        #[arg(long, default_value = "64,1420")]
        sizes: String,
        /// Seconds measured per run (after a half-second warm-up); three runs of the worker
        /// and three of the floor per size, in turn, their medians printed.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Also DPDK's ipsec-secgw on the same vdevs, three runs in turn with the worker and
        /// the floor, and the ratio of the medians (built into DIR, as the full lab does).
        #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "target/secgw")]
        secgw: Option<PathBuf>,
    },
    /// Encrypt rate of one worker on AF_XDP over veth pairs in a network namespace of its
    /// own, fed by an AF_XDP generator on the second core (needs root).
    Xdp {
        /// Frame sizes, comma-separated.
        #[arg(long, default_value = "64,1420")]
        sizes: String,
        /// Seconds measured per size (after a half-second warm-up).
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
    },
    /// Latency through one busy-polling worker (encrypt, one SA) at an offered rate: a paced
    /// feeder and a sink on another core; prints the histogram's percentiles and any loss.
    Latency {
        /// Frame size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Offered packets per second.
        #[arg(long, default_value_t = 100_000.0)]
        rate: f64,
        /// Seconds to offer traffic.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
    /// The many-SA cliff: one worker's rate with each SA count (SPIs at random), each against
    /// the first count's rate measured in the same run (runs interleaved, medians).
    SaScale {
        /// Directions, comma-separated: encrypt, decrypt.
        #[arg(long, default_value = "decrypt,encrypt")]
        dir: String,
        /// Frame sizes in bytes, comma-separated.
        #[arg(long, default_value = "64,1420")]
        size: String,
        /// SA counts, comma-separated; the first is the baseline of the ratios.
        #[arg(long, default_value = "1,10000,100000,1000000")]
        sas: String,
        /// Packets per point.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Runs (medians shown).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The software hand-off between workers: worker time per packet when the SA's owner
    /// gets the frame on its own port against when another worker receives it and hands it
    /// over (one thread polls both: the copy and the lane, not the cross-core transfer).
    Handoff {
        /// Frame sizes in bytes, comma-separated.
        #[arg(long, default_value = "64,1420")]
        size: String,
        /// Packets per run and way.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
        /// Interleaved runs (medians shown).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Per-core CHILD_SAs negotiated by IKE (RFC 9611): two roamgate endpoints negotiate
    /// for 1 and for 2 workers on virtual time, the initiator's SAs go through the SA
    /// repository and the placement into real workers on in-memory ports (each on its own
    /// core, each sealing with its own SA); the encrypt rate of 2 against 1, runs
    /// interleaved, medians.
    PerCore {
        /// Frame sizes in bytes, comma-separated.
        #[arg(long, default_value = "64,1420")]
        size: String,
        /// Packets per worker and run.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
        /// Interleaved runs (medians shown).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// One point of the throughput matrix (worker time only), plus the bare AEAD cost of the
    /// same size: for a quick comparison or to profile one path.
    Point {
        /// encrypt or decrypt.
        #[arg(long, default_value = "encrypt")]
        dir: String,
        /// Frame size in bytes (Ethernet, without FCS), or 0 for IMIX.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// SAs per worker (SPIs and destinations at random).
        #[arg(long, default_value_t = 1)]
        sas: usize,
        /// Workers, each pinned to its own core.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Packets per worker.
        #[arg(long, default_value_t = 2_000_000)]
        packets: u64,
        /// Runs (the median is shown, and each run).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Crypto backend: ipsec-mb, ring, or null (no crypto: the rest of the pipeline alone).
        /// Default: the best available.
        #[arg(long)]
        backend: Option<String>,
        /// ESP transforms, comma-separated: aes128-gcm16, aes256-gcm16, or AES-CBC with an
        /// HMAC as aes128-sha1, aes256-sha256, aes128-sha384, aes256-sha512 (any size with any
        /// hash). With more than one, the runs alternate between them and each is compared
        /// with the first (best of the runs, same process).
        #[arg(long, default_value = "aes128-gcm16")]
        alg: String,
        /// The cost of `gateway.lan.checksum: verify|complete` (encrypt only): every UDP
        /// checksum generated unfinished, each run measured with `pass` (the default, a
        /// sample verified) and with this mode, and the ratio.
        #[arg(long)]
        clear_checksum: Option<String>,
    },
    /// The lab with IKE, road-warrior clients, CHILD_SA rekeys and MOBIKE roams for minutes:
    /// RSS over time and its slope, the loss per direction, the rekeys and roams, and a
    /// verdict (flat and lossless, or exit status 1).
    Soak(crate::soak::SoakArgs),
    /// Group mode (G-IKEv2, issue 22): N simulated members registered with one GCKS, then the
    /// group rekeyed (the sans-IO `ike::group` code, one core): the GCKS's CPU per member for
    /// a registration and a rekey, each member's cost, the time until every member sends on
    /// the new key; a removal's rekey (the Rekey SA replaced) as the same-run baseline.
    Group {
        #[arg(long, default_value_t = 1000)]
        members: usize,
        /// The policy's activation delay (GWP_ATD, whole seconds).
        #[arg(long, default_value_t = 1)]
        atd_secs: u16,
        /// Runs (the median of each figure is printed).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// IKEv2 handshakes per second against a gateway (worker + control loop on in-memory
    /// ports, installing every client's CHILD_SA), from simulated road-warrior clients; per
    /// core of the gateway's control thread, measured by its CPU time.
    Handshakes {
        /// Handshakes to run, per proposal.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// At most this many handshakes under way at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// IKE proposals to measure (strongSwan syntax), comma-separated.
        #[arg(
            long,
            default_value = "aes128gcm16-prfsha256-x25519,aes128gcm16-prfsha256-ecp256,aes128gcm16-prfsha256-modp2048"
        )]
        proposals: String,
    },
    /// SA installs per second from the crypto node to 3 edges through etcd (issue 18): the
    /// real crypto node and edge cores in one process (the channel in process through the
    /// message codec, each edge's data plane a stand-in that prepares every update as for a
    /// worker), simulated clients' IKE_AUTHs handed to their edges after their IKE_SA_INITs;
    /// an install is done when all 3 edges acknowledged its SAs (written to etcd first).
    /// Also the unknown-SPI carrier round trip at a 4th edge, etcd's single-put rate through
    /// the same client in the same run, optionally `etcdctl check perf`, and the same run on
    /// the memory backend. Starts a local 3-member etcd unless --endpoints is given.
    Cluster {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Installs under way at once.
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// Unknown-SPI round trips to time (one at a time).
        #[arg(long, default_value_t = 200)]
        unknown: usize,
        /// Also run `etcdctl check perf --load LOAD` (60 s) on the local cluster.
        #[arg(long)]
        check_perf: Option<String>,
        /// An existing etcd (comma-separated client URLs, no TLS/auth) instead of a local one.
        #[arg(long)]
        endpoints: Option<String>,
        /// Where the local cluster's data goes (on disk: etcd fsyncs).
        #[arg(long, default_value = "target/perf-etcd-cluster")]
        dir: PathBuf,
        /// Skip the comparison run on the memory backend.
        #[arg(long)]
        no_mem: bool,
    },
    /// SA installs per second into the cluster store on etcd (issue 18): simulated clients,
    /// each an IKE SA + 2 CHILD SA records + a placement, sealed and batched into
    /// transactions; beside it, in the same run on the same cluster, etcd's single-put rate
    /// through the same client, optionally `etcdctl check perf`, and the recovery (list +
    /// open + decode every record). Starts a local 3-member etcd unless --endpoints is given.
    ClusterStore {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Clients per transaction (4 records each; at most 32: etcd's --max-txn-ops 128).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Transactions in flight.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Bytes of each IKE SA record.
        #[arg(long, default_value_t = 1024)]
        ike_bytes: usize,
        /// Also run `etcdctl check perf --load LOAD` (60 s) on the local cluster. Its loads are
        /// target rates (s 150, m 1000, l 8000, xl 15000 writes/s): use xl for the capacity.
        #[arg(long)]
        check_perf: Option<String>,
        /// An existing etcd (comma-separated client URLs, no TLS/auth) instead of a local one.
        #[arg(long)]
        endpoints: Option<String>,
        /// Where the local cluster's data goes (on disk: etcd fsyncs).
        #[arg(long, default_value = "target/perf-etcd")]
        dir: PathBuf,
    },
}

pub fn run(args: PerfArgs) -> Result<()> {
    let Some(what) = args.what else {
        let r = args.report;
        std::fs::create_dir_all(&r.out)?;
        let plan = roamgate_perf::report::Plan {
            quick: r.quick,
            backend: pipeline::crypto::best_backend(),
            out_dir: r.out.clone(),
            secgw_build: (!r.no_secgw).then(|| r.secgw_dir.clone()),
        };
        let path = roamgate_perf::report::run(&plan).map_err(anyhow::Error::msg)?;
        println!("report: {}", path.display());
        return Ok(());
    };
    match what {
        PerfWhat::Soak(args) => crate::soak::run(args),
        PerfWhat::Dpdk { sizes, secs, secgw } => {
            let sizes = port_sizes(&sizes, secs)?;
            let dir =
                std::env::temp_dir().join(format!("roamgate-perf-dpdk-{}", std::process::id()));
            let secgw_bin = match secgw {
                Some(build) => {
                    if let Some(why) = roamgate_perf::secgw::missing_tools() {
                        bail!("ipsec-secgw cannot be built here: needs {why}");
                    }
                    Some(roamgate_perf::secgw::build(&build).map_err(anyhow::Error::msg)?)
                }
                None => None,
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            let mut secgw_encrypt = |s: usize| match &secgw_bin {
                Some(bin) => roamgate_perf::report::secgw_rate(
                    bin,
                    roamgate_perf::secgw::SecgwMode::Encrypt,
                    s,
                    &dir,
                    false,
                ),
                None => Err("not asked for".into()),
            };
            let r = roamgate_perf::dpdk_ports::encrypt_rates(
                &sizes,
                3,
                Duration::from_millis(500),
                Duration::from_secs_f64(secs),
                pipeline::crypto::best_backend(),
                &dir.join("dpdk"),
                secgw_bin
                    .is_some()
                    .then_some(&mut secgw_encrypt as roamgate_perf::dpdk_ports::Baseline<'_>),
            );
            let _ = std::fs::remove_dir_all(&dir);
            for v in r.map_err(anyhow::Error::msg)? {
                println!(
                    "encrypt {} B on DPDK vdevs: {:.3} Mpps (the floor of these ports, their PMDs \
                     and the AEAD alone: {:.3} Mpps; roamgate's own work {:.1} ns/pkt)",
                    v.size,
                    v.pps / 1e6,
                    v.floor_pps / 1e6,
                    v.ns_beyond_floor(v.pps)
                );
                match (v.baseline_pps, &secgw_bin) {
                    (Some(theirs), _) => println!(
                        "  ipsec-secgw on the same vdevs, in turn: {:.3} Mpps, its own work {:.1} \
                         ns/pkt; roamgate / ipsec-secgw {:.2}x",
                        theirs / 1e6,
                        v.ns_beyond_floor(theirs),
                        v.pps / theirs.max(1e-9)
                    ),
                    (None, Some(_)) => println!("  ipsec-secgw: no run succeeded"),
                    (None, None) => {}
                }
            }
            Ok(())
        }
        PerfWhat::Xdp { sizes, secs } => {
            let sizes = port_sizes(&sizes, secs)?;
            let pts = roamgate_perf::xdp_ports::encrypt_rates(
                &sizes,
                Duration::from_millis(500),
                Duration::from_secs_f64(secs),
                pipeline::crypto::best_backend(),
            )
            .map_err(anyhow::Error::msg)?;
            for p in pts {
                println!(
                    "encrypt {} B on AF_XDP veth ({}): {:.3} Mpps, sink {:.3} Mpps",
                    p.size,
                    p.mode,
                    p.pps / 1e6,
                    p.sink_pps / 1e6
                );
            }
            Ok(())
        }
        PerfWhat::Latency { size, rate, secs } => {
            // Written so that NaN fails too; the bounds keep the per-packet timestamp table
            // (rate x secs entries) within memory.
            let ok = |x: f64, max: f64| x > 0.0 && x <= max;
            if !(64..=1420).contains(&size) || !ok(rate, 100e6) || !ok(secs, 600.0) {
                bail!("--size must be 64..=1420, --rate within (0, 1e8], --secs within (0, 600]");
            }
            if rate * secs > 2e8 {
                bail!("--rate x --secs is {:.0} packets; at most 2e8", rate * secs);
            }
            let backend = pipeline::crypto::best_backend();
            let (acc, rec, h) = roamgate_perf::run::latency(size, rate, secs, backend);
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            println!(
                "{size} B at {rate:.0} pps for {secs} s: {acc} accepted, {rec} received; latency p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
                us(0.5),
                us(0.99),
                us(0.999),
                h.max() as f64 / 1e3
            );
            Ok(())
        }
        PerfWhat::SaScale {
            dir,
            size,
            sas,
            packets,
            runs,
        } => sa_scale(&dir, &size, &sas, packets, runs),
        PerfWhat::Handoff {
            size,
            packets,
            runs,
        } => {
            let backend = pipeline::crypto::best_backend();
            println!("{backend}, encrypt, one SA owned by worker 1 of 2; {packets} packets per run, medians of {runs}");
            for s in size.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let s: usize = s
                    .parse()
                    .ok()
                    .filter(|s| (64..=1420).contains(s))
                    .ok_or_else(|| anyhow::anyhow!("--size {s}: expected 64..=1420"))?;
                let c = roamgate_perf::handoff::handoff_cost(s, packets, runs, backend)
                    .map_err(|e| anyhow::anyhow!("{s} B: {e}"))?;
                println!(
                    "{s:>5} B: direct {:.1} ns/pkt, handed over {:.1} ns/pkt (sender {:.1}), hand-off cost {:.1} ns/pkt, direct/handed-over rate ratio {:.2}",
                    c.direct_ns,
                    c.via_ns,
                    c.sender_ns,
                    c.via_ns - c.direct_ns,
                    c.direct_ns / c.via_ns
                );
            }
            Ok(())
        }
        PerfWhat::PerCore {
            size,
            packets,
            runs,
        } => {
            let backend = pipeline::crypto::best_backend();
            println!(
                "{backend}, encrypt, per-core CHILD_SAs negotiated by IKE; {packets} packets per worker and run, medians of {runs}"
            );
            for s in size.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let s: usize = s
                    .parse()
                    .ok()
                    .filter(|s| (64..=1420).contains(s))
                    .ok_or_else(|| anyhow::anyhow!("--size {s}: expected 64..=1420"))?;
                let ((m1, c1), (m2, c2)) =
                    roamgate_perf::per_core::compare(s, packets, runs, backend)
                        .map_err(|e| anyhow::anyhow!("{s} B: {e}"))?;
                let children = (c1, c2);
                println!(
                    "{s:>5} B: 1 worker ({} CHILD_SA) {:.2} Mpps, 2 workers ({} CHILD_SAs) {:.2} Mpps, ratio {:.2}x",
                    children.0,
                    m1 / 1e6,
                    children.1,
                    m2 / 1e6,
                    m2 / m1
                );
            }
            Ok(())
        }
        PerfWhat::Point {
            dir,
            size,
            sas,
            workers,
            packets,
            runs,
            backend,
            alg,
            clear_checksum,
        } => {
            use roamgate_perf::run::{self as perf_run, Dir};
            let dir = match dir.as_str() {
                "encrypt" => Dir::Encrypt,
                "decrypt" => Dir::Decrypt,
                other => bail!("--dir {other}: expected encrypt or decrypt"),
            };
            if size != 0 && !(64..=1420).contains(&size) {
                bail!("--size {size}: expected 64..=1420, or 0 for IMIX");
            }
            if sas == 0 || workers == 0 || packets < 1000 || runs == 0 {
                bail!("--sas, --workers and --runs must be at least 1, --packets at least 1000");
            }
            use pipeline::crypto::Backend;
            let backend = match backend.as_deref() {
                None => pipeline::crypto::best_backend(),
                Some("ipsec-mb") => Backend::IpsecMb,
                Some("ring") => Backend::Ring,
                Some("null") => Backend::Null,
                Some(other) => bail!("--backend {other}: expected ipsec-mb, ring or null"),
            };
            if !pipeline::crypto::available(backend) {
                bail!("--backend {backend}: not available on this machine or build");
            }
            if let Some(mode) = clear_checksum {
                use pipeline::worker::ClearChecksum;
                // The first transform of --alg (split always yields one).
                let alg0 = parse_algs(&alg)?[0];
                let mode = match mode.as_str() {
                    "verify" => ClearChecksum::Verify,
                    "complete" => ClearChecksum::Complete,
                    other => bail!("--clear-checksum {other}: expected verify or complete"),
                };
                if dir != Dir::Encrypt {
                    bail!("--clear-checksum: the clear side's checksums are an encrypt matter");
                }
                let mut base = Vec::new();
                let mut with = Vec::new();
                // Interleaved, so that a change of machine load hits both alike.
                for _ in 0..runs {
                    for (m, v) in [(ClearChecksum::Pass, &mut base), (mode, &mut with)] {
                        let p = perf_run::throughput_with(
                            dir,
                            size,
                            sas,
                            workers,
                            backend,
                            alg0,
                            packets,
                            Some(m),
                        );
                        println!(
                            "run {m:?}: {:.3} Mpps, {:.1} ns/pkt",
                            p.pps / 1e6,
                            p.ns_per_packet
                        );
                        v.push(p.ns_per_packet);
                    }
                }
                let median = |v: &mut Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let (b, w) = (median(&mut base), median(&mut with));
                println!(
                    "encrypt {} B, unfinished UDP checksums, {backend}: pass {b:.1} ns/pkt, {mode:?} {w:.1} ns/pkt: x{:.3} (+{:.1} ns/pkt), medians of {runs}",
                    if size == 0 { "IMIX".to_string() } else { size.to_string() },
                    w / b,
                    w - b
                );
                return Ok(());
            }
            let algs = parse_algs(&alg)?;
            // Runs alternate between the transforms, so that drift hits them alike.
            let mut pts: Vec<Vec<roamgate_perf::run::Point>> = vec![Vec::new(); algs.len()];
            for _ in 0..runs {
                for (k, a) in algs.iter().enumerate() {
                    let p = perf_run::throughput_alg(dir, size, sas, workers, backend, *a, packets);
                    println!(
                        "run: {a}: {:.3} Mpps, {:.2} Gbit/s, {:.1} ns/pkt, {} missing",
                        p.pps / 1e6,
                        p.bps / 1e9,
                        p.ns_per_packet,
                        p.missing
                    );
                    pts[k].push(p);
                }
            }
            let mut first_best = None;
            for (a, mut pts) in algs.iter().zip(pts) {
                pts.sort_by(|a, b| a.pps.total_cmp(&b.pps));
                let m = &pts[pts.len() / 2];
                let best = pts[pts.len() - 1].bps;
                let crypto = perf_run::crypto_ns(size, dir, backend, *a, 200_000);
                println!(
                    "{dir} {} B, {sas} SA(s), {workers} worker(s), {backend}, {a}: median {:.3} Mpps, {:.2} Gbit/s, {:.1} ns/pkt per worker; best {:.2} Gbit/s; bare crypto {crypto:.1} ns, pipeline - crypto {:.1} ns",
                    size,
                    m.pps / 1e6,
                    m.bps / 1e9,
                    m.ns_per_packet,
                    best / 1e9,
                    m.ns_per_packet - crypto
                );
                match first_best {
                    None => first_best = Some((*a, best)),
                    Some((f, fb)) => println!(
                        "ratio {a} / {f} (best of {runs}): {:.2}",
                        best / f64::max(fb, 1.0)
                    ),
                }
                if m.missing > 0 {
                    bail!("{a}: {} frames did not come out", m.missing);
                }
            }
            Ok(())
        }
        #[cfg(feature = "etcd")]
        PerfWhat::ClusterStore {
            clients,
            batch,
            window,
            ike_bytes,
            check_perf,
            endpoints,
            dir,
        } => {
            use control::cluster::store::perf;
            if clients == 0 || !(1..=32).contains(&batch) || window == 0 {
                bail!("--clients and --window must be at least 1, --batch 1..=32");
            }
            let plan = perf::Plan {
                clients,
                batch,
                window,
                ike_bytes,
                check_perf,
            };
            let f = match endpoints {
                Some(eps) => perf::run(
                    &plan,
                    eps.split(',').map(|e| e.trim().to_string()).collect(),
                    None,
                ),
                None => perf::run_local(&plan, &dir),
            }
            .map_err(anyhow::Error::msg)?;
            println!(
                "cluster-store: {} clients = {} sealed records (avg {} B), {} txns of {batch} clients, {window} in flight",
                f.clients, f.records, f.value_bytes_avg, f.txns
            );
            println!(
                "  installs: {:.0} SA installs/s ({:.0} records/s) in {:.2} s; txn latency p50 {:.1} ms, p99 {:.1} ms",
                f.installs_per_s, f.records_per_s, f.install_secs, f.txn_ms_p50, f.txn_ms_p99
            );
            println!(
                "  etcd single puts (same client, {} B, {window} in flight): {:.0} puts/s; records/s : puts/s = {:.2}",
                f.value_bytes_avg,
                f.raw_puts_per_s,
                f.records_per_s / f.raw_puts_per_s
            );
            if let Some(line) = &f.check_perf {
                match f.check_perf_writes_per_s {
                    Some(w) => println!(
                        "  etcdctl check perf: {line}; SA installs/s : its writes/s = {:.2}",
                        f.installs_per_s / w
                    ),
                    None => println!("  etcdctl check perf: {line}"),
                }
            }
            println!(
                "  recovery: {} records listed, opened and decoded in {:.2} s",
                f.recovered, f.recovery_secs
            );
            Ok(())
        }
        #[cfg(feature = "etcd")]
        PerfWhat::Cluster {
            clients,
            window,
            unknown,
            check_perf,
            endpoints,
            dir,
            no_mem,
        } => {
            use control::cluster::perf;
            if clients == 0 || window == 0 {
                bail!("--clients and --window must be at least 1");
            }
            let plan = perf::Plan {
                clients,
                window,
                unknown,
                timeout: Duration::from_secs(600),
            };
            let eps = endpoints.map(|e| e.split(',').map(|e| e.trim().to_string()).collect());
            let r = perf::run_etcd(&plan, eps, &dir, check_perf.as_deref(), !no_mem)
                .map_err(anyhow::Error::msg)?;
            let line = |what: &str, f: &perf::Figures| {
                println!(
                    "cluster {what}: clients={} installs={} installs_per_s={:.0} install_ms_p50={:.1} install_ms_p99={:.1} \
                     unknown_spi_rtt_ms_p50={:.2} unknown_spi_rtt_ms_p99={:.2} (n={}) node_thread_cpu_s={:.2} wall_s={:.2} \
                     txns={} ops={} clients_up={} complete={} edge_inbound={:?} edge_outbound={:?} \
                     stored ike={} child={} placed={} copies={}",
                    f.clients, f.installs, f.installs_per_s, f.install_ms_p50, f.install_ms_p99,
                    f.unknown_ms_p50, f.unknown_ms_p99, f.unknown_done, f.cpu_secs, f.install_secs,
                    f.txns, f.ops, f.clients_up, f.complete, f.edge_inbound, f.edge_outbound,
                    f.stored_ike, f.stored_child, f.stored_placed, f.stored_copies
                );
            };
            line("etcd", &r.etcd);
            println!(
                "  etcd single puts (same cluster and client, {} x {} B, {} in flight): {:.0} puts/s; installs/s : puts/s = {:.2}",
                r.raw_puts,
                r.raw_put_bytes,
                r.raw_window,
                r.raw_puts_per_s,
                r.etcd.installs_per_s / r.raw_puts_per_s.max(1e-9)
            );
            if let Some(l) = &r.check_perf {
                match r.check_perf_writes_per_s {
                    Some(w) => println!(
                        "  etcdctl check perf: {l}; installs/s : its writes/s = {:.2}",
                        r.etcd.installs_per_s / w.max(1e-9)
                    ),
                    None => println!("  etcdctl check perf: {l}"),
                }
            }
            if let Some(m) = &r.mem {
                line("memory", m);
                println!(
                    "  installs/s through etcd : on the memory backend = {:.2}",
                    r.etcd.installs_per_s / m.installs_per_s.max(1e-9)
                );
            }
            let f = &r.etcd;
            if f.installs != clients || f.complete != clients || f.clients_up != clients {
                bail!("not every SA reached every edge: {f:?}");
            }
            Ok(())
        }
        #[cfg(not(feature = "etcd"))]
        PerfWhat::Cluster { .. } => bail!(
            "this roamgate was built without the etcd client: build it with `cargo build \
             --release -p roamgate --features etcd` (needs protoc: Debian protobuf-compiler)"
        ),
        #[cfg(not(feature = "etcd"))]
        PerfWhat::ClusterStore { .. } => bail!(
            "this roamgate was built without the etcd client: build it with `cargo build \
             --release -p roamgate --features etcd` (needs protoc: Debian protobuf-compiler)"
        ),
        PerfWhat::HaResync { sas } => {
            for n in sas.split(',') {
                let n: usize = n
                    .trim()
                    .parse()
                    .with_context(|| format!("--sas: {n:?} is not a count"))?;
                let r = crate::ha::resync_perf::run(n)?;
                let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
                println!(
                    "ha-resync ike_sas={} child_sas={} record_bytes={} resync_ms={:.0} resync_us_per_sa={:.1} takeover_node_ms={:.0} adopt_ms={:.0} takeover_us_per_sa={:.1} adopted={} (making the IKE SAs took {:.1} s)",
                    r.ike_sas,
                    r.child_sas,
                    r.record_bytes,
                    r.resync.as_secs_f64() * 1e3,
                    per(r.resync),
                    r.takeover_node.as_secs_f64() * 1e3,
                    r.adopt.as_secs_f64() * 1e3,
                    per(r.takeover_node + r.adopt),
                    r.adopted,
                    r.make.as_secs_f64()
                );
            }
            Ok(())
        }
        PerfWhat::Group {
            members,
            atd_secs,
            runs,
        } => {
            if runs == 0 {
                bail!("--runs must be at least 1");
            }
            let mut rs = Vec::with_capacity(runs);
            for _ in 0..runs {
                rs.push(roamgate_perf::group::run(members, atd_secs).map_err(anyhow::Error::msg)?);
            }
            let med = |f: &dyn Fn(&roamgate_perf::group::GroupScale) -> f64| {
                let mut v: Vec<f64> = rs.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let n = members as f64;
            println!(
                "group: {members} members, one GCKS, ATD {atd_secs} s, median of {runs} runs (one core; registration = the G-IKEv2 part over an existing IKE SA)"
            );
            println!(
                "registration: GCKS {:.1} ms ({:.1} us/member), members {:.1} us each",
                med(&|r| ms(r.gcks_register)),
                med(&|r| r.register_us_per_member()),
                med(&|r| ms(r.members_register) * 1e3 / n)
            );
            println!(
                "rekey: GCKS {:.3} ms ({:.2} us/member, one {}-byte GSA_REKEY for all), members {:.1} us each (p99 {:.1} us)",
                med(&|r| ms(r.gcks_rekey)),
                med(&|r| r.rekey_us_per_member()),
                rs[0].rekey_bytes,
                med(&|r| ms(r.members_rekey) * 1e3 / n),
                med(&|r| ms(r.member_rekey_p99) * 1e3)
            );
            let base = med(&|r| ms(r.gcks_rekey_replaced));
            println!(
                "baseline (same run): a removal's rekey, Rekey SA key wrapped per member: GCKS {:.2} ms ({:.2} us/member), {:.1}x the plain rekey",
                base,
                base * 1e3 / n,
                base / med(&|r| ms(r.gcks_rekey)).max(1e-9)
            );
            println!(
                "new key at every member {:.3} ms after the rekey starts (GCKS + a member's p99, members in parallel, network not counted); all send on it after {:.3} ms (+ ATD)",
                med(&|r| ms(r.keys_everywhere())),
                med(&|r| ms(r.all_use_new_key()))
            );
            Ok(())
        }
        PerfWhat::Handshakes {
            clients,
            in_flight,
            proposals,
        } => {
            if clients == 0 || in_flight == 0 {
                bail!("--clients and --in-flight must be at least 1");
            }
            let backend = pipeline::crypto::best_backend();
            println!(
                "{clients} handshakes per proposal (IKE_SA_INIT + IKE_AUTH with PSK, virtual IP, first CHILD_SA installed at the gateway), {in_flight} at once, ESP backend {backend}"
            );
            println!(
                "{:<34} {:>8} {:>9} {:>10} {:>12} {:>14} {:>12}",
                "proposal",
                "done",
                "wall s",
                "per wall s",
                "gw ctl CPU s",
                "per ctl core",
                "per gw core"
            );
            for p in proposals
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let r = handshakes::run(clients, in_flight, p, backend, Duration::from_secs(600))
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "{:<34} {:>8} {:>9.2} {:>10.0} {:>12.2} {:>14.0} {:>12.0}",
                    p,
                    r.established,
                    r.wall.as_secs_f64(),
                    r.per_wall_second(),
                    r.gateway_control_cpu.as_secs_f64(),
                    r.per_control_core(),
                    r.per_gateway_core()
                );
                if r.failed > 0 || r.established < clients {
                    bail!(
                        "{p}: {} of {clients} handshakes completed, {} failed",
                        r.established,
                        r.failed
                    );
                }
            }
            Ok(())
        }
    }
}

/// `--sizes` and `--secs` of `perf dpdk` / `perf xdp`, checked (NaN fails too).
fn port_sizes(sizes: &str, secs: f64) -> Result<Vec<usize>> {
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|x| x.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--sizes: {e}"))?;
    if sizes.iter().any(|s| !(64..=1420).contains(s)) || !(secs > 0.0 && secs < 3600.0) {
        bail!("--sizes must be within 64..=1420, --secs above 0 (and below an hour)");
    }
    Ok(sizes)
}

/// `--alg`'s list: the names `EspAlg` displays (strongSwan's proposal keywords).
fn parse_algs(list: &str) -> Result<Vec<pipeline::crypto::EspAlg>> {
    use pipeline::crypto::{AeadAlg, CbcAlg, EspAlg, IntegAlg};
    let mut known = vec![
        EspAlg::Aead(AeadAlg::AesGcm128),
        EspAlg::Aead(AeadAlg::AesGcm256),
    ];
    for c in [CbcAlg::AesCbc128, CbcAlg::AesCbc256] {
        for i in [
            IntegAlg::HmacSha1_96,
            IntegAlg::HmacSha256_128,
            IntegAlg::HmacSha384_192,
            IntegAlg::HmacSha512_256,
        ] {
            known.push(EspAlg::Cbc(c, i));
        }
    }
    list.split(',')
        .map(|n| {
            let n = n.trim();
            known
                .iter()
                .find(|a| a.to_string() == n)
                .copied()
                .ok_or_else(|| {
                    let names: Vec<String> = known.iter().map(|a| a.to_string()).collect();
                    anyhow::anyhow!("--alg {n}: expected one of {}", names.join(", "))
                })
        })
        .collect()
}

/// `roamgate perf sa-scale`: see [`PerfWhat::SaScale`].
fn sa_scale(dirs: &str, sizes: &str, sas: &str, packets: u64, runs: usize) -> Result<()> {
    use roamgate_perf::run::{self as perf_run, Dir};
    fn list<T: std::str::FromStr>(what: &str, s: &str) -> Result<Vec<T>> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(|x| {
                x.parse()
                    .map_err(|_| anyhow::anyhow!("--{what} {x}: not a valid value"))
            })
            .collect()
    }
    let dirs = dirs
        .split(',')
        .map(|d| match d.trim() {
            "encrypt" => Ok(Dir::Encrypt),
            "decrypt" => Ok(Dir::Decrypt),
            other => bail!("--dir {other}: expected encrypt or decrypt"),
        })
        .collect::<Result<Vec<_>>>()?;
    let sizes: Vec<usize> = list("size", sizes)?;
    let counts: Vec<usize> = list("sas", sas)?;
    if let Some(s) = sizes.iter().find(|s| !(64..=1420).contains(*s)) {
        bail!("--size {s}: expected 64..=1420");
    }
    if counts.is_empty() || counts.contains(&0) || runs == 0 || packets < 1000 {
        bail!("--sas must list counts of at least 1, --runs at least 1, --packets at least 1000");
    }
    let backend = pipeline::crypto::best_backend();
    let (out_b, in_b) = perf_run::sa_footprint(backend);
    println!(
        "{backend} ({}), per-SA footprint: outbound {out_b} B, inbound {in_b} B; {packets} packets per point, medians of {runs}; GLIBC_TUNABLES={}",
        pipeline::crypto::ipsecmb_arch().unwrap_or("-"),
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "-".into())
    );
    for &dir in &dirs {
        for &size in &sizes {
            // Runs interleave the counts, so that a change of load hits them alike.
            let mut ns: Vec<Vec<f64>> = vec![Vec::new(); counts.len()];
            for _ in 0..runs {
                for (k, &n) in counts.iter().enumerate() {
                    let p = perf_run::throughput(dir, size, n, 1, backend, packets);
                    if p.missing > 0 {
                        bail!(
                            "{dir} {size} B {n} SAs: {} frames did not come out",
                            p.missing
                        );
                    }
                    ns[k].push(p.ns_per_packet);
                }
            }
            let med: Vec<f64> = ns
                .iter_mut()
                .map(|v| {
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                })
                .collect();
            for (k, &n) in counts.iter().enumerate() {
                let each: Vec<String> = ns[k].iter().map(|x| format!("{x:.1}")).collect();
                println!(
                    "{dir} {size:>4} B {n:>8} SAs: {:>6.3} Mpps {:>7.1} ns/pkt ({} ns), {:.0}% of {} SA(s)",
                    1e3 / med[k],
                    med[k],
                    each.join(" "),
                    100.0 * med[0] / med[k],
                    counts[0]
                );
            }
        }
    }
    Ok(())
}
