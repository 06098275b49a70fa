//! `roamgate dataplane --config X`: the data plane process on real ports.
//!
//! Reads one gateway and its `dataplane` section, opens the configured port kind (AF_XDP or
//! DPDK), starts one worker per queue pair, installs the gateway's SAs and policies through the
//! same agent messages a control plane sends, and runs until SIGINT/SIGTERM. While it runs it
//! prints a status line every `--status-secs` and, with `--stats-file`, rewrites a JSON
//! snapshot of its counters there once a second; on exit it prints the final snapshot as one
//! JSON line on stdout.
//!
//! The static outbound SAs of the file resume past the sequence numbers (GCM nonces) their
//! previous runs may have used: this process keeps them in the state file (`--seq-state`,
//! `crate::seq_state`) unless a control process owns the SAs (`--shm`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control::config::ike::Connection;
use control::config::{self, GatewayPlan};

use crate::config::{Checked, DataplaneFile, PortKind};
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::port::Port;
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::stats::{DropReason, L3Stat, Snapshot, Traffic};
use pipeline::worker::{Idle, Link, Worker, WorkerHandle};
use proto::{Direction, Event, Update};

use crate::seq_state::SeqKeeper;

#[derive(clap::Args)]
pub struct DataplaneArgs {
    /// Configuration file: a `gateway` and a `dataplane` section.
    #[arg(long)]
    config: PathBuf,
    /// Rewrite a JSON snapshot of the counters to this file once a second.
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// Seconds between status lines on stderr (0: none; stdout carries only the final JSON).
    #[arg(long, default_value_t = 5)]
    status_secs: u64,
    /// The shared-memory channel between control plane and data plane. `dataplane`: take SAs
    /// and policies from the control plane that created it (`roamgate control --shm PATH`)
    /// instead of the file's static part. `run`/`client`: where to create it (default: a
    /// private directory under /dev/shm).
    #[arg(long)]
    shm: Option<PathBuf>,
    /// Serve the read-only views (`roamgate status|stats|sa`) on this unix socket (default:
    /// /run/roamgate/<gateway.name>.sock as root, else under $XDG_RUNTIME_DIR/roamgate).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Serve the counters in the Prometheus text format at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464; under `run`, the data plane serves them).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Sleep this many microseconds when a worker finds nothing to do for a while (0: yield
    /// the core instead, to whatever else is runnable on it; tests that share two cores with
    /// their hosts use a little sleep).
    #[arg(long, default_value_t = 0)]
    idle_sleep_us: u64,
    /// Pure poll mode: a worker never gives up its core, not even when idle. The production
    /// setting for workers pinned to isolated cores (`dataplane.cores`).
    #[arg(long, conflicts_with = "idle_sleep_us")]
    busy_poll: bool,
    /// The file that keeps the static outbound SAs' sequence numbers across restarts, so
    /// that none is sent twice under the same key (default: next to the config file,
    /// CONFIG.seq-state). Under `roamgate run` the control process keeps it.
    #[arg(long)]
    seq_state: Option<PathBuf>,
    /// Leave the process dumpable: a crash may write a core file holding keys, and other
    /// processes of this user may read its memory. For debugging only (core_dumps.rs).
    #[arg(long)]
    allow_core_dumps: bool,
    /// A client run in one process (`client --single-process`): the in-process control loop
    /// follows the kernel's addresses on the WAN device (MOBIKE), as `control --follow-wan`
    /// does in its own process.
    #[arg(skip)]
    follow_wan: bool,
}

impl DataplaneArgs {
    pub fn allow_core_dumps(&self) -> bool {
        self.allow_core_dumps
    }
    pub fn config(&self) -> &std::path::Path {
        &self.config
    }
    pub fn shm(&self) -> Option<&std::path::Path> {
        self.shm.as_deref()
    }
    pub fn socket(&self) -> Option<&std::path::Path> {
        self.socket.as_deref()
    }
    /// Without `--socket`, the views are served at gateway `name`'s default socket
    /// ([`crate::views::default_socket`]) when it can be had.
    pub fn use_default_socket(&mut self, name: &str) {
        if self.socket.is_none() {
            self.socket =
                crate::views::default_socket(name).filter(|p| crate::views::claim_default(p));
        }
    }
    pub fn duration(&self) -> Option<f64> {
        self.duration
    }
    /// Where the static SAs' sequence state is kept (`--seq-state`, or next to the config).
    pub fn seq_state(&self) -> PathBuf {
        self.seq_state
            .clone()
            .unwrap_or_else(|| crate::seq_state::default_path(&self.config))
    }
    /// The options a supervisor passes on to a `dataplane` child (all but the duration,
    /// which the supervisor keeps, and `--shm`, which it sets).
    pub fn forwarded_args(&self) -> Vec<String> {
        let mut v = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--status-secs".into(),
            self.status_secs.to_string(),
        ];
        if self.busy_poll {
            v.push("--busy-poll".into());
        } else {
            v.extend(["--idle-sleep-us".into(), self.idle_sleep_us.to_string()]);
        }
        if let Some(f) = &self.stats_file {
            v.extend(["--stats-file".into(), f.display().to_string()]);
        }
        if let Some(s) = &self.socket {
            v.extend(["--socket".into(), s.display().to_string()]);
        }
        if let Some(m) = &self.metrics {
            v.extend(["--metrics".into(), m.to_string()]);
        }
        if self.allow_core_dumps {
            v.push(crate::core_dumps::ALLOW_FLAG.into());
        }
        v
    }

    /// Makes the in-process control loop follow the WAN device's addresses.
    pub fn follow_wan(&mut self) {
        self.follow_wan = true;
    }

    /// Checks the files the data plane will write (the stats file) before anything starts.
    pub fn check_outputs(&self) -> Result<()> {
        match &self.stats_file {
            Some(path) => check_stats_file(path),
            None => Ok(()),
        }
    }
}

/// A running worker seen from the main thread.
struct Running {
    handle: WorkerHandle,
    link: WorkerLink,
    thread: std::thread::JoinHandle<()>,
}

/// What the port kinds give the generic part: a queue pair per worker and each side's MAC.
struct Opened<P> {
    pairs: Vec<(P, P)>,
    lan_mac: [u8; 6],
    wan_mac: [u8; 6],
    /// Kept alive while the workers run (XDP programs, EAL); dropped at the end.
    _keep: Box<dyn std::any::Any>,
    describe: String,
    /// The driver and each side's device and mode, for `roamgate status`.
    port_info: serde_json::Value,
    port_stats: PortStats,
}

/// Reads the port kind's own counters (kernel drops, pool starvation) from any thread.
pub type PortStats = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// `roamgate dataplane` (`with_ike` false: static SAs only) or `roamgate run` (true).
pub fn run(mut args: DataplaneArgs, with_ike: bool) -> Result<()> {
    let mut file: DataplaneFile = config::load(&args.config)?;
    if !with_ike && !file.ike.connections.is_empty() {
        match &args.shm {
            Some(p) => {
                tracing::info!(target: "dataplane", "SAs and policy come from the control plane at {}", p.display())
            }
            None => tracing::warn!(target: "dataplane",
                "{}: the ike section is left to `roamgate run` / `roamgate control`; the data plane alone uses the static SAs",
                args.config.display()
            ),
        }
        file.ike.connections.clear();
        file.ike.eap = None;
    }
    let Checked {
        plan,
        conns,
        backend,
        ha,
        ..
    } = file.validate(&args.config)?;
    crate::logs::apply_file_level(file.log_level.as_deref())?;
    if ha.is_some() && with_ike {
        bail!(
            "{}: ha: an HA node runs as two processes (`roamgate run` without \
             --single-process): the pair lives in the control process",
            args.config.display()
        );
    }
    if file.group.is_some() && with_ike {
        bail!(
            "{}: group: a group member runs as two processes (`roamgate run` without \
             --single-process): its registration and rekeys live in the control process",
            args.config.display()
        );
    }
    if !with_ike && args.shm.is_none() {
        // `roamgate dataplane` alone: what needs a control plane is not run here.
        let left: Vec<&str> = [
            ("group", file.group.is_some()),
            ("ha", ha.is_some()),
            ("vcm", file.vcm.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        if !left.is_empty() {
            tracing::warn!(target: "dataplane",
                "{}: not run by the data plane alone (they need `roamgate run`): {}",
                args.config.display(),
                left.join(", ")
            );
        }
    }
    args.check_outputs()?;
    // A data plane under a supervisor is given its socket (or none) explicitly.
    if args.shm.is_none() {
        args.use_default_socket(&file.gateway.name);
    }
    tracing::info!(target: "dataplane",
        "{}",
        pipeline::crypto::describe_backend(
            backend,
            file.dataplane.crypto_backend != control::config::BackendChoice::Auto
        )
    );
    for weak in &plan.weak {
        tracing::warn!(target: "dataplane", "{}: {weak}", args.config.display());
    }
    let (plan, keeper) = keep_static_sequence_numbers(&args, plan)?;
    let plan = &plan;
    match file.dataplane.port {
        PortKind::AfXdp => {
            if let Some(lan) = file.gateway.lan.device.as_deref() {
                let mode = file.gateway.lan.checksum.unwrap_or_default();
                if let Some(w) = crate::offload::startup_warning(lan, mode) {
                    tracing::warn!(target: "dataplane", "{w}");
                }
            }
            let opened = open_af_xdp(&file)?;
            serve(&args, &file, plan, conns, backend, opened, keeper)
        }
        PortKind::Dpdk => open_and_serve_dpdk(&args, &file, plan, conns, backend, keeper),
    }
}

/// The static SAs worker `w` of `workers` owns (the control plane's placement: inbound by
/// the SPI's worker bits, outbound by the remote address), with the whole policy.
pub(crate) fn owned_by(plan: &GatewayPlan, w: u16, workers: u16) -> GatewayPlan {
    let mut placement = control::core::placement::Placement::new(workers);
    let sas = plan
        .sas
        .iter()
        .filter(|(dir, params)| {
            let u = Update::AddSa {
                dir: *dir,
                params: params.clone(),
            };
            placement
                .route(u, |_, _| None)
                .iter()
                .any(|(owner, _)| *owner == w)
        })
        .cloned()
        .collect();
    GatewayPlan {
        sas,
        rules: plan.rules.clone(),
        masquerade: plan.masquerade.clone(),
        weak: plan.weak.clone(),
    }
}

/// Without a control process, this process installs the file's static SAs: their outbound
/// ones start past what the state file says may have been used, and that is written down
/// before any of them is installed.
fn keep_static_sequence_numbers(
    args: &DataplaneArgs,
    plan: GatewayPlan,
) -> Result<(GatewayPlan, Option<SeqKeeper>)> {
    if args.shm.is_some() || !plan.sas.iter().any(|(d, _)| *d == Direction::Outbound) {
        return Ok((plan, None));
    }
    let mut keeper = SeqKeeper::open(&args.seq_state(), &plan.sas)?;
    let mut sas = plan.sas;
    keeper.start(&mut sas)?;
    Ok((
        GatewayPlan {
            sas,
            rules: plan.rules,
            masquerade: plan.masquerade,
            weak: plan.weak,
        },
        Some(keeper),
    ))
}

#[cfg(target_os = "linux")]
fn open_af_xdp(file: &DataplaneFile) -> Result<Opened<pipeline::port::afxdp::XdpPort>> {
    use crate::config::{XdpModeName, ZeroCopyName};
    use pipeline::port::afxdp::{XdpConfig, XdpPort, ZeroCopy};
    use pipeline::port::xdp_prog::{mac_address, XdpMode, XdpProgram};

    let d = &file.dataplane;
    let mode = match d.af_xdp.mode {
        XdpModeName::Auto => XdpMode::Auto,
        XdpModeName::Native => XdpMode::Native,
        XdpModeName::Skb => XdpMode::Skb,
    };
    let cfg = XdpConfig {
        frames: d.af_xdp.frames,
        frame_size: d.af_xdp.frame_size,
        ring_size: d.af_xdp.ring_size,
        zero_copy: match d.af_xdp.zero_copy {
            ZeroCopyName::Auto => ZeroCopy::Auto,
            ZeroCopyName::On => ZeroCopy::On,
            ZeroCopyName::Off => ZeroCopy::Off,
        },
    };
    let lan_dev = file.gateway.lan.device.clone().unwrap_or_default();
    let wan_dev = file.gateway.wan.device.clone().unwrap_or_default();
    let lan_prog = XdpProgram::attach(&lan_dev, mode, u32::from(d.workers))
        .with_context(|| format!("gateway.lan.device {lan_dev}"))?;
    let wan_prog = XdpProgram::attach(&wan_dev, mode, u32::from(d.workers))
        .with_context(|| format!("gateway.wan.device {wan_dev}"))?;
    let mut pairs = Vec::new();
    for q in 0..u32::from(d.workers) {
        pairs.push(
            XdpPort::open_pair(&lan_prog, &wan_prog, q, &cfg)
                .with_context(|| format!("opening AF_XDP queue {q} of {lan_dev} and {wan_dev}"))?,
        );
    }
    let mac_of = |side: &control::config::InterfaceConfig, dev: &str| -> Result<[u8; 6]> {
        match side.mac {
            Some(m) => Ok(m.0),
            None => mac_address(dev).with_context(|| format!("reading the MAC of {dev}")),
        }
    };
    let describe = format!(
        "AF_XDP {lan_dev} ({}, {}) / {wan_dev} ({}, {})",
        if lan_prog.is_native() {
            "native"
        } else {
            "skb"
        },
        if pairs[0].0.is_zero_copy() {
            "zero-copy"
        } else {
            "copy"
        },
        if wan_prog.is_native() {
            "native"
        } else {
            "skb"
        },
        if pairs[0].1.is_zero_copy() {
            "zero-copy"
        } else {
            "copy"
        },
    );
    let side = |dev: &str, native: bool, zero_copy: bool| {
        serde_json::json!({
            "device": dev,
            "mode": if native { "native" } else { "skb" },
            "zero_copy": zero_copy,
        })
    };
    let port_info = serde_json::json!({
        "driver": "af_xdp",
        "lan": side(&lan_dev, lan_prog.is_native(), pairs[0].0.is_zero_copy()),
        "wan": side(&wan_dev, wan_prog.is_native(), pairs[0].1.is_zero_copy()),
    });
    let stats_src: Vec<_> = pairs
        .iter()
        .map(|(l, w)| (l.stats_reader(), w.stats_reader()))
        .collect();
    Ok(Opened {
        lan_mac: mac_of(&file.gateway.lan, &lan_dev)?,
        wan_mac: mac_of(&file.gateway.wan, &wan_dev)?,
        pairs,
        _keep: Box::new((lan_prog, wan_prog)),
        describe,
        port_info,
        // The same shape as DPDK's: the port kind, then lan and wan (totals over the
        // queues), then what only this kind has (per-queue figures).
        port_stats: Arc::new(move || {
            let j = |rx_dropped: u64, fill_ring_empty: u64, fill_starved: u64| {
                serde_json::json!({"kernel_rx_dropped": rx_dropped,
                                   "kernel_fill_ring_empty": fill_ring_empty,
                                   "fill_starved": fill_starved})
            };
            let mut total = [[0u64; 3]; 2];
            let q: Vec<serde_json::Value> = stats_src
                .iter()
                .map(|(l, w)| {
                    let (l, w) = (l.read(), w.read());
                    for (t, s) in total.iter_mut().zip([&l, &w]) {
                        t[0] += s.rx_dropped;
                        t[1] += s.fill_ring_empty;
                        t[2] += s.fill_starved;
                    }
                    serde_json::json!({
                        "lan": j(l.rx_dropped, l.fill_ring_empty, l.fill_starved),
                        "wan": j(w.rx_dropped, w.fill_ring_empty, w.fill_starved),
                    })
                })
                .collect();
            let [l, w] = total;
            serde_json::json!({
                "kind": "af_xdp",
                "lan": j(l[0], l[1], l[2]),
                "wan": j(w[0], w[1], w[2]),
                "queues": q,
            })
        }),
    })
}

#[cfg(not(target_os = "linux"))]
fn open_af_xdp(_: &DataplaneFile) -> Result<Opened<pipeline::port::mem::MemPort>> {
    bail!("the AF_XDP port needs Linux")
}

#[cfg(not(feature = "dpdk"))]
fn open_and_serve_dpdk(
    args: &DataplaneArgs,
    _: &DataplaneFile,
    _: &GatewayPlan,
    _: Vec<Connection>,
    _: Backend,
    _: Option<SeqKeeper>,
) -> Result<()> {
    bail!(
        "{}: dataplane.port: dpdk, but this roamgate was built without DPDK (build with \
         `--features roamgate/dpdk`, which needs Debian's libdpdk-dev)",
        args.config.display()
    )
}

#[cfg(feature = "dpdk")]
fn open_and_serve_dpdk(
    args: &DataplaneArgs,
    file: &DataplaneFile,
    plan: &GatewayPlan,
    conns: Vec<Connection>,
    backend: Backend,
    keeper: Option<SeqKeeper>,
) -> Result<()> {
    let opened = open_dpdk(file)?;
    serve(args, file, plan, conns, backend, opened, keeper)
}

#[cfg(feature = "dpdk")]
fn open_dpdk(file: &DataplaneFile) -> Result<Opened<pipeline::port::dpdk::DpdkPort>> {
    use pipeline::port::dpdk::{DpdkDevice, Eal};

    let d = &file.dataplane;
    let eal = Eal::init(&d.dpdk.eal_args).context("dataplane.dpdk.eal_args")?;
    let lan_dev = file.gateway.lan.device.clone().unwrap_or_default();
    let wan_dev = file.gateway.wan.device.clone().unwrap_or_default();
    let mut lan = DpdkDevice::open(&eal, &lan_dev, d.workers, 1024, d.dpdk.mbufs)
        .with_context(|| format!("gateway.lan.device {lan_dev}"))?;
    let mut wan = DpdkDevice::open(&eal, &wan_dev, d.workers, 1024, d.dpdk.mbufs)
        .with_context(|| format!("gateway.wan.device {wan_dev}"))?;
    // Inbound ESP straight to its worker's queue where the NIC can match the SPI; else the
    // software hand-off (every port of the lab and CI: their vdevs have no rte_flow).
    let steering = if d.workers > 1 {
        match wan.steer_esp() {
            Ok(n) => {
                tracing::info!(target: "dataplane",
                    "{wan_dev}: ESP steered to its worker's queue by SPI (rte_flow, {n} rules)");
                format!("rte_flow ({n} rules)")
            }
            Err(why) => {
                tracing::info!(target: "dataplane",
                    "{wan_dev}: no rte_flow ESP steering ({why}): ESP that reaches another \
                     worker's queue is handed over in software");
                format!("handoff ({why})")
            }
        }
    } else {
        "one worker".to_string()
    };
    let mut pairs = Vec::new();
    for q in 0..d.workers {
        pairs.push((lan.queue(q)?, wan.queue(q)?));
    }
    let lan_mac = file.gateway.lan.mac.map_or(lan.mac(), |m| m.0);
    let wan_mac = file.gateway.wan.mac.map_or(wan.mac(), |m| m.0);
    let (lr, wr) = (lan.stats_reader(), wan.stats_reader());
    let describe = format!("DPDK {lan_dev} / {wan_dev}");
    Ok(Opened {
        pairs,
        lan_mac,
        wan_mac,
        // Devices before the EAL: they are stopped and closed before it is cleaned up.
        _keep: Box::new((lan, wan, eal)),
        describe,
        port_info: serde_json::json!({
            "driver": "dpdk",
            "lan": { "device": lan_dev },
            "wan": { "device": wan_dev, "esp_steering": steering },
        }),
        port_stats: Arc::new(move || {
            let j = |s: pipeline::port::dpdk::DpdkStats| {
                serde_json::json!({
                    "rx_packets": s.rx_packets, "tx_packets": s.tx_packets,
                    "rx_missed": s.rx_missed, "rx_errors": s.rx_errors,
                    "tx_errors": s.tx_errors, "rx_no_mbuf": s.rx_no_mbuf,
                    "multi_seg_dropped": s.multi_seg_dropped,
                })
            };
            serde_json::json!({ "kind": "dpdk", "lan": j(lr.read()), "wan": j(wr.read()) })
        }),
    })
}

/// Reassembly and neighbour resolution as the file says (checked by `validate` already).
fn l3_setup<P: Port>(worker: &mut Worker<P>, file: &DataplaneFile) -> Result<()> {
    let d = &file.dataplane;
    let fail = |k: &str, w: String| anyhow::anyhow!("dataplane.{k}: {w}");
    let reasm = d
        .reassembly
        .to_config()
        .map_err(|(k, w)| fail(&format!("reassembly.{k}"), w))?;
    worker
        .set_reassembly(reasm)
        .map_err(|e| fail("reassembly", e.to_string()))?;
    let (lan, wan) = (file.gateway.lan.routes(), file.gateway.wan.routes());
    let setup = if lan.is_some() || wan.is_some() {
        let cache = d
            .neighbor
            .to_config()
            .map_err(|(k, w)| fail(&format!("neighbor.{k}"), w))?;
        Some(pipeline::worker::NeighborSetup { cache, lan, wan })
    } else {
        None
    };
    worker
        .set_neighbors(setup)
        .map_err(|e| anyhow::anyhow!("gateway.{e}"))?;
    worker.set_clear_checksum(file.gateway.lan.checksum.unwrap_or_default().into());
    Ok(())
}

fn serve<P: Port + 'static>(
    args: &DataplaneArgs,
    file: &DataplaneFile,
    plan: &GatewayPlan,
    conns: Vec<Connection>,
    backend: Backend,
    opened: Opened<P>,
    mut keeper: Option<SeqKeeper>,
) -> Result<()> {
    let gw = &file.gateway;
    let lan_link: Link = gw.lan.link_with_mac(opened.lan_mac);
    let wan_link: Link = gw.wan.link_with_mac(opened.wan_mac);
    tracing::info!(target: "dataplane",
        "roamgate dataplane {}: {} worker(s) on {}, crypto backend {backend}",
        gw.name,
        opened.pairs.len(),
        opened.describe
    );

    // Two flags: a signal asks for shutdown; the workers (and the views) stop only after the
    // control loop has told its peers, because its goodbyes leave through the workers.
    let stop = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        ctrlc::set_handler(move || shutdown.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    crate::hup::install()?;
    let idle = match (args.busy_poll, args.idle_sleep_us) {
        (true, _) => Idle::Spin,
        (false, 0) => Idle::Yield,
        (false, us) => Idle::Sleep(Duration::from_micros(us)),
    };
    let mut running = Vec::new();
    let mut handles = Vec::new();
    // IKE: worker 0 punts what arrives on UDP 500/4500 and sends what the control loop queues.
    let mut ike_rings = None;
    let mut ike = None;
    let mut follower = None;
    let mut shm_rings = None;
    // The punt's cookie lane (IKE_SA_INIT requests that echo a cookie): a small ring of its
    // own, which a flood of requests without one cannot fill (`control::driver::Lanes`).
    let mut cookie_lane = None;
    if args.shm.is_some() {
        // The control plane is another process: worker 0's IKE rings lead to the channel.
        let (punt_tx, punt_rx) = rtrb::RingBuffer::new(1024);
        let (tx_tx, tx_rx) = rtrb::RingBuffer::new(1024);
        let (cookie_tx, cookie_rx) = rtrb::RingBuffer::new(PUNT_COOKIE_SLOTS);
        ike_rings = Some((punt_tx, tx_rx));
        cookie_lane = Some(cookie_tx);
        shm_rings = Some((punt_rx, tx_tx, cookie_rx));
    } else if !conns.is_empty() {
        let (punt_tx, punt_rx) = rtrb::RingBuffer::new(1024);
        let (tx_tx, tx_rx) = rtrb::RingBuffer::new(1024);
        let (cookie_tx, cookie_rx) = rtrb::RingBuffer::new(PUNT_COOKIE_SLOTS);
        ike_rings = Some((punt_tx, tx_rx));
        cookie_lane = Some(cookie_tx);
        let repo = control::repo::SaRepository::new(plan.rules.clone(), gw.replay_window);
        let mut c = control::driver::inproc::InProcControl::new(
            conns,
            repo,
            Some(punt_rx),
            Some(tx_tx),
            backend,
            gw.wan.address,
            opened.pairs.len() as u16,
        );
        c.set_cookie_lane(cookie_rx);
        c.set_admission(file.ike.admission(&args.config, "ike")?);
        c.set_fragmentation(file.ike.fragmentation(&args.config, "ike")?);
        c.set_vcm(
            file.vcm
                .as_ref()
                .map(|v| v.validate(&args.config))
                .transpose()?,
        );
        if let Some(e) = file.ike.eap(&args.config, "ike", &gw.name)? {
            c.set_eap(e).context("opening the RADIUS socket")?;
        }
        c.initiate();
        ike = Some(c);
        if args.follow_wan {
            let Some(dev) = gw.wan.device.as_deref() else {
                bail!(
                    "{}: gateway.wan.device: following the WAN addresses needs the device's name",
                    args.config.display()
                );
            };
            follower = Some(crate::wan_follow::WanFollower::new(dev, gw.wan.address)?);
            tracing::info!(target: "control", "following the kernel's addresses on {dev} (MOBIKE)");
        }
    }
    // Several workers: each owns its SAs, and frames that reach another worker are handed
    // to the owner (the ports do not steer by SPI).
    let workers = opened.pairs.len() as u16;
    let mut handoffs = pipeline::handoff::mesh(
        workers,
        pipeline::handoff::LANE_SLOTS,
        pipeline::handoff::OWNER_SLOTS,
    )
    .into_iter();
    for (i, (lan, wan)) in opened.pairs.into_iter().enumerate() {
        let (punt, transmit) = match ike_rings.take() {
            Some((p, t)) => (Some(p), Some(t)),
            None => (None, None),
        };
        let punt_given = punt.is_some();
        let (mut link, mut control) = agent::link(i as u16, 1024, punt);
        control.transmit = transmit;
        if punt_given {
            control.punt_cookie = cookie_lane.take();
        }
        let spd = Spd::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut worker = Worker::new(
            i as u16,
            lan,
            wan,
            lan_link,
            wan_link,
            Sad::with_capacity(1024, crate::seed()),
            Box::new(spd),
            control,
        );
        l3_setup(&mut worker, file)?;
        if let Some(h) = handoffs.next() {
            worker.set_handoff(h);
        }
        let handle = worker.handle();
        let core = file.dataplane.cores.get(i).copied();
        let stop_w = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                worker.run_with(core, &stop_w, idle);
            })
            .context("starting a worker thread")?;
        if args.shm.is_none() {
            crate::install(&mut link, backend, gw, &owned_by(plan, i as u16, workers))?;
        }
        handles.push(handle.clone());
        running.push(Running {
            handle,
            link,
            thread,
        });
    }

    let mut attached = match (&args.shm, shm_rings) {
        (Some(path), Some((punt_rx, tx_tx, cookie_rx))) => {
            let mut l = crate::shm_link::ShmLink::new(
                path.clone(),
                running.len() as u16,
                punt_rx,
                tx_tx,
                backend,
            );
            l.set_cookie_lane(cookie_rx);
            Some(l)
        }
        _ => None,
    };
    let punt_drops = attached.as_ref().map(|a| a.punt_drops());
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::serve(
            addr,
            crate::metrics::Sources {
                gateways: vec![crate::metrics::GatewaySource {
                    name: gw.name.clone(),
                    handles: handles.clone(),
                    ports: Some(opened.port_stats.clone()),
                    punt: punt_drops.clone(),
                    ike: ike_metrics(args, ike.as_ref()),
                }],
                started: Instant::now(),
            },
            stop.clone(),
        )?),
        None => None,
    };
    let views = match &args.socket {
        Some(path) => {
            let punt_drops = punt_drops.clone();
            let name = gw.name.clone();
            let handles = handles.clone();
            let port_stats = opened.port_stats.clone();
            let sa_names: Vec<String> = gw.sas.iter().map(|s| s.name.clone()).collect();
            let ike_view = ike.as_ref().map(|c| c.view.clone());
            let (config, under_control) = (args.config.clone(), args.shm.is_some());
            let control = match (&args.shm, ike.is_some()) {
                (Some(p), _) => format!("roamgate control at {}", p.display()),
                (None, true) => "in this process".to_string(),
                (None, false) => "none (static SAs)".to_string(),
            };
            let info = StatusInfo {
                name: gw.name.clone(),
                ports: opened.describe.clone(),
                port_info: opened.port_info.clone(),
                backend: pipeline::crypto::describe_backend(
                    backend,
                    file.dataplane.crypto_backend != control::config::BackendChoice::Auto,
                ),
                cores: (0..handles.len())
                    .map(|i| file.dataplane.cores.get(i).copied())
                    .collect(),
                started: Instant::now(),
                control,
            };
            let handler: crate::views::Handler = Box::new(move |req| match req {
                "status" => Some(status_json(&info, &handles)),
                "stats" => Some(stats_json(
                    &name,
                    &handles,
                    &*port_stats,
                    punt_drops.as_deref(),
                )),
                "sas" => Some(sas_json(&name, &handles, &sa_names)),
                // Only when IKE runs in this process; otherwise the control plane answers.
                "ike" => ike_view.as_ref().map(|v| {
                    v.lock()
                        .ok()
                        .map(|v| v.answer())
                        .unwrap_or_else(|| r#"{"ike_sas":[]}"#.into())
                }),
                "reload" => Some(crate::reload::answer(crate::reload::dataplane_reload(
                    &config,
                    under_control,
                ))),
                _ => None,
            });
            Some(crate::views::serve(path, handler, stop.clone())?)
        }
        None => None,
    };

    let start = Instant::now();
    let mut last_status = Instant::now();
    let mut stats_writer = StatsFileHealth::default();
    let mut last_snap: Vec<Snapshot> = running
        .iter()
        .map(|r| r.handle.counters.snapshot())
        .collect();
    let deadline = args.duration.map(Duration::from_secs_f64);
    let mut last_pump = Instant::now();
    let mut checksum_seen = crate::offload::UnfinishedSeen::default();
    while !shutdown.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
        if crate::hup::take() {
            match crate::reload::dataplane_reload(&args.config, args.shm.is_some()) {
                Ok(lines) => lines
                    .iter()
                    .for_each(|l| tracing::info!(target: "dataplane", "SIGHUP: {l}")),
                Err(e) => tracing::error!(target: "dataplane", "SIGHUP: {e:#}"),
            }
        }
        {
            let mut links: Vec<&mut WorkerLink> = running.iter_mut().map(|r| &mut r.link).collect();
            match (ike.as_mut(), attached.as_mut()) {
                (Some(c), _) => {
                    if let Some(change) = follower.as_mut().and_then(|f| f.poll()) {
                        c.push_update(proto::Update::SetWanAddresses {
                            addrs: change.addrs,
                        });
                        if let Some(r) = change.roam {
                            let n = c.roam_with(r.to, r.others);
                            tracing::info!(target: "control",
                                "WAN address {} -> {}: {n} IKE SA(s) moving (MOBIKE)",
                                r.from, r.to
                            );
                        }
                    }
                    let busy = c.turn(&mut links)?;
                    // The static SAs' checkpoints, which the IKE loop keeps aside.
                    for e in c.take_seq_reports() {
                        reserve_on(&mut keeper, &e, &mut links, backend)?;
                    }
                    if !busy {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
                (None, Some(a)) => {
                    if !a.turn(&mut links)? {
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
                // Kept SAs' checkpoints must be answered well within a block's worth of
                // packets (see seq_state::block_size).
                (None, None) if keeper.is_some() => std::thread::sleep(Duration::from_millis(5)),
                (None, None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        if last_pump.elapsed() < Duration::from_millis(20) && (ike.is_some() || attached.is_some())
        {
            continue;
        }
        last_pump = Instant::now();
        let alone = ike.is_none() && attached.is_none();
        for r in running.iter_mut() {
            r.link.pump();
            // With a control plane the events are its own: the next turn hands them over
            // (taking them here lost a report now and then: an HA node's checkpoint, replay
            // mark or planned switchover's ceiling). Alone, the data plane says what happened
            // to its static SAs (and moves their reservations on).
            if !alone {
                continue;
            }
            for e in r.link.take_events() {
                if matches!(e, Event::SeqCheckpoint { .. }) {
                    reserve_on(&mut keeper, &e, &mut [&mut r.link], backend)?;
                } else {
                    tracing::info!(target: "dataplane", "{e:?}");
                }
            }
        }
        let (bad, checked) = handles.iter().fold((0, 0), |(b, c), h| {
            let s = h.counters.snapshot();
            (
                b + s.traffic(Traffic::ClearChecksumBad),
                c + s.traffic(Traffic::ClearChecksumChecked),
            )
        });
        let mode = gw.lan.checksum.unwrap_or_default();
        if let Some(line) = checksum_seen.check(bad, checked, mode) {
            tracing::warn!(target: "dataplane", "{line}");
        }
        if let Some(path) = &args.stats_file {
            if last_status.elapsed() >= Duration::from_secs(1)
                || start.elapsed() < Duration::from_secs(1)
            {
                let r = write_atomically(
                    path,
                    &stats_json(
                        &gw.name,
                        &handles,
                        &*opened.port_stats,
                        punt_drops.as_deref(),
                    ),
                );
                stats_writer.report(r);
            }
        }
        if args.status_secs > 0 && last_status.elapsed() >= Duration::from_secs(args.status_secs) {
            let dt = last_status.elapsed();
            last_status = Instant::now();
            let cur: Vec<Snapshot> = running
                .iter()
                .map(|r| r.handle.counters.snapshot())
                .collect();
            let mut d = Snapshot::default();
            for (c, l) in cur.iter().zip(&last_snap) {
                d.add(&c.since(l));
            }
            last_snap = cur;
            let errs: Vec<String> = d
                .nonzero_drops()
                .map(|(r, n)| format!("{}={n}", r.name()))
                .collect();
            tracing::info!(target: "dataplane",
                "[{:>5}s] rx {:.0}/s sealed {:.0}/s opened {:.0}/s drops: {}",
                start.elapsed().as_secs(),
                per_sec(d.traffic(Traffic::RxPackets), dt),
                per_sec(d.traffic(Traffic::Encrypted), dt),
                per_sec(d.traffic(Traffic::Decrypted), dt),
                if errs.is_empty() {
                    "none".into()
                } else {
                    errs.join(" ")
                }
            );
        } else if args.status_secs == 0 && last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
        }
    }
    if let Some(c) = ike.as_mut() {
        // Tell the peers before the workers stop carrying our datagrams.
        let mut links: Vec<&mut WorkerLink> = running.iter_mut().map(|r| &mut r.link).collect();
        c.shutdown(&mut links, Duration::from_secs(2));
    }
    stop.store(true, Ordering::Relaxed);
    let final_stats = stats_json(
        &gw.name,
        &handles,
        &*opened.port_stats,
        punt_drops.as_deref(),
    );
    for r in running {
        let _ = r.thread.join();
    }
    if let Some(v) = views {
        let _ = v.join();
    }
    if let Some(m) = metrics {
        let _ = m.join();
    }
    if let Some(path) = &args.stats_file {
        stats_writer.report(write_atomically(path, &final_stats));
    }
    println!("{final_stats}");
    drop(opened._keep);
    Ok(())
}

/// Slots of worker 0's cookie lane towards the control plane (see `shm_link`).
const PUNT_COOKIE_SLOTS: usize = crate::shm_link::PUNT_COOKIE_BACKLOG;

/// A checkpoint of a kept SA: the reservation moved on (on disk first), sent to the worker
/// that reported it.
fn reserve_on(
    keeper: &mut Option<SeqKeeper>,
    e: &Event,
    links: &mut [&mut WorkerLink],
    backend: Backend,
) -> Result<()> {
    let (Some(k), Event::SeqCheckpoint { worker, .. }) = (keeper.as_mut(), e) else {
        return Ok(());
    };
    let Some(update) = k.on_event(e) else {
        return Ok(());
    };
    let link = links.iter_mut().find(|l| l.worker == *worker);
    if let (Some(link), Update::ReserveSeq { .. }) = (link, &update) {
        link.send(agent::prepare(backend, &update)?);
    }
    Ok(())
}

fn per_sec(n: u64, dt: Duration) -> f64 {
    n as f64 / dt.as_secs_f64().max(1e-9)
}

/// Counters of every worker, summed, plus per-worker and port details, and the punted IKE
/// the shared-memory link dropped, as one JSON object.
fn stats_json(
    name: &str,
    handles: &[WorkerHandle],
    port_stats: &(dyn Fn() -> serde_json::Value + Send + Sync),
    punt: Option<&crate::shm_link::PuntDrops>,
) -> String {
    let mut total = Snapshot::default();
    for h in handles {
        total.add(&h.counters.snapshot());
    }
    let traffic: serde_json::Map<String, serde_json::Value> = Traffic::ALL
        .iter()
        .map(|t| (t.name().to_string(), total.traffic(*t).into()))
        .collect();
    let drops: serde_json::Map<String, serde_json::Value> = total
        .nonzero_drops()
        .map(|(r, n)| (r.name().to_string(), n.into()))
        .chain(
            punt.map(|p| p.named())
                .into_iter()
                .flatten()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n.into())),
        )
        .collect();
    // Punted IKE left the data path as intended: a hand-off, not a drop.
    let handed_off: serde_json::Map<String, serde_json::Value> = total
        .handed_off()
        .map(|(r, n)| (r.name().to_string(), n.into()))
        .collect();
    // Reassembly and neighbour resolution: datagram and address fates, memory, entries.
    let l3: serde_json::Map<String, serde_json::Value> = L3Stat::ALL
        .iter()
        .map(|s| (s.name().to_string(), total.l3(*s).into()))
        .collect();
    // Each worker's own: what it carried, what it handed to the others, its drops.
    let per_worker: Vec<serde_json::Value> = handles
        .iter()
        .map(|h| {
            let s = h.counters.snapshot();
            let traffic: serde_json::Map<String, serde_json::Value> = Traffic::ALL
                .iter()
                .map(|t| (t.name().to_string(), s.traffic(*t).into()))
                .collect();
            let drops: serde_json::Map<String, serde_json::Value> = s
                .nonzero_drops()
                .map(|(r, n)| (r.name().to_string(), n.into()))
                .collect();
            serde_json::json!({ "worker": h.id, "traffic": traffic, "drops": drops })
        })
        .collect();
    // Edge filters (issue 18, M9): what each filter rule matched, by the rule's index in the
    // crypto node's `cluster.filters` (its `cluster` view names them).
    let filter_hits: Vec<serde_json::Value> = (0..proto::policy::MAX_FILTER_RULES)
        .map(|i| {
            (
                i,
                handles
                    .iter()
                    .map(|h| h.counters.filter_hits(i))
                    .sum::<u64>(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .map(|(i, n)| serde_json::json!({ "rule": i, "packets": n }))
        .collect();
    serde_json::json!({
        "gateway": name,
        "workers": handles.len(),
        "per_worker": per_worker,
        "filter_hits": filter_hits,
        "traffic": traffic,
        "drops": drops,
        "handed_off": handed_off,
        "l3": l3,
        "ports": port_stats(),
    })
    .to_string()
}

/// What the process is and how it is doing, one JSON object.
/// What `roamgate status` shows beside the workers' counters.
struct StatusInfo {
    name: String,
    /// One line: driver, devices, modes.
    ports: String,
    port_info: serde_json::Value,
    /// The AEAD backend and why it was chosen.
    backend: String,
    /// The core each worker is pinned to (None: not pinned).
    cores: Vec<Option<usize>>,
    started: Instant,
    control: String,
}

fn status_json(info: &StatusInfo, handles: &[WorkerHandle]) -> String {
    let workers: Vec<serde_json::Value> = handles
        .iter()
        .map(|h| {
            let (mut sa_in, mut sa_out) = (0, 0);
            if let Ok(l) = h.sa_counters.lock() {
                for e in l.iter() {
                    match e.direction {
                        pipeline::msg::Direction::Inbound => sa_in += 1,
                        pipeline::msg::Direction::Outbound => sa_out += 1,
                    }
                }
            }
            let s = h.counters.snapshot();
            serde_json::json!({
                "worker": h.id,
                "core": info.cores.get(usize::from(h.id)).copied().flatten(),
                // Worker i polls queue i of both devices.
                "queue": h.id,
                "generation": h.counters.generation.get(),
                "sas_in": sa_in,
                "sas_out": sa_out,
                "rx_packets": s.traffic(Traffic::RxPackets),
                "tx_packets": s.traffic(Traffic::TxPackets),
            })
        })
        .collect();
    serde_json::json!({
        "gateway": info.name,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_secs": info.started.elapsed().as_secs(),
        "backend": info.backend,
        "ports": info.ports,
        "port_info": info.port_info,
        "control_plane": info.control,
        "workers": workers,
    })
    .to_string()
}

/// Every SA the workers hold, with its counters (never its keys).
fn sas_json(name: &str, handles: &[WorkerHandle], sa_names: &[String]) -> String {
    let mut sas = Vec::new();
    for h in handles {
        let list = match h.sa_counters.lock() {
            Ok(l) => l.clone(),
            Err(_) => Vec::new(),
        };
        // An SA's times are on its worker's clock; the worker publishes where that clock is.
        let clock = h.counters.clock.get();
        let ago = |t: u64| clock.saturating_sub(t) / 1_000_000_000;
        for e in list {
            let c = &e.counters;
            let last = c.last_used.get();
            let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
                .iter()
                .filter(|r| c.drops(**r) > 0)
                .map(|r| (r.name().to_string(), c.drops(*r).into()))
                .collect();
            sas.push(serde_json::json!({
                "name": sa_names.get(e.id.0 as usize).map_or("ike", String::as_str),
                "direction": match e.direction {
                    pipeline::msg::Direction::Inbound => "in",
                    pipeline::msg::Direction::Outbound => "out",
                },
                "spi": format!("{:08x}", e.spi.0),
                "worker": h.id,
                "packets": c.packets.get(),
                "bytes": c.bytes.get(),
                "installed_secs": ago(c.installed_at.get()),
                "last_use_secs": (last != 0).then(|| ago(last)),
                "drops": drops,
            }));
        }
    }
    serde_json::json!({ "gateway": name, "sas": sas }).to_string()
}

/// Whether the stats file could be written: a file that cannot be written any more (a full
/// disk, a directory removed under us) is said once, and once again when it recovers, and
/// never stops forwarding.
#[derive(Default)]
struct StatsFileHealth {
    failing: bool,
    failures: u64,
}

impl StatsFileHealth {
    fn report(&mut self, r: Result<()>) {
        match r {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(target: "dataplane",
                    "the stats file is written again (after {} failed writes)",
                    self.failures
                );
            }
            Ok(()) => {}
            Err(e) => {
                self.failures += 1;
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(target: "dataplane", "{e:#}; forwarding goes on");
                }
            }
        }
    }
}

/// Fails the start when the stats file cannot be written, before anything forwards: a path
/// that is wrong now will not be right in a minute.
fn check_stats_file(path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).with_context(|| {
        format!(
            "--stats-file {}: cannot write {}",
            path.display(),
            tmp.display()
        )
    })?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("cannot write stats file {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write stats file {}", path.display()))?;
    Ok(())
}

/// Where `--metrics` reads the IKE counters: this process's control plane, or under `run` the
/// control process's view socket next to ours (none without a socket or without IKE).
fn ike_metrics(
    args: &DataplaneArgs,
    ike: Option<&control::driver::inproc::InProcControl>,
) -> Option<crate::metrics::IkeSource> {
    match (ike, &args.shm, &args.socket) {
        (Some(c), _, _) => Some(crate::metrics::IkeSource::InProcess(c.view.clone())),
        (None, Some(_), Some(s)) => Some(crate::metrics::IkeSource::Socket(PathBuf::from(
            format!("{}.ike", s.display()),
        ))),
        _ => None,
    }
}
