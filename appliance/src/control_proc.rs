//! `roamgate control --config X --shm PATH`: the control plane as its own process.
//!
//! It creates the shared-memory control channel at PATH (mode 0600) for the file's workers,
//! runs the IKEv2 endpoint and the SA repository, and talks to `roamgate dataplane --shm PATH`
//! only through the channel's rings: updates (with generations) to each worker and their
//! acknowledgements back, punted IKE datagrams in, datagrams to send out.
//!
//! The loop is `control::driver::Driver` over the channel's link (`control_link`, where
//! restarts of the data plane and the static SAs' reservations are handled); this file sets
//! them up, follows the WAN addresses when asked, serves the IKE view and stops cleanly.
//!
//! The static outbound SAs keep their keys across every restart, so this process keeps
//! their sequence numbers: it owns the state file (`--seq-state`, `crate::seq_state`), and
//! a fresh data plane gets them resumed past everything the dead one could have used; their
//! checkpoints move the reservations on. This process, not the data plane, owns the file
//! because it is the one that installs the static SAs and outlives the data plane's restarts;
//! its own restart reads the file back, while the data plane goes on within reservations
//! that are on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control::config;
use control::core::ControlCore;
use control::driver::{inproc::os_seed, Clock, Driver};
use control::repo::SaRepository;
use pipeline::shm::ControlChannel;
use proto::{Direction, Update};

use crate::config::{Checked, DataplaneFile};
use crate::control_link::ShmControlLink;
use crate::ha::pair::Pair;
use crate::seq_state::SeqKeeper;
use crate::wan_follow::WanFollower;
use control::config::GatewayPlan;

#[derive(clap::Args)]
pub struct ControlArgs {
    /// Configuration file (the same file as the data plane's).
    #[arg(long)]
    config: PathBuf,
    /// The shared-memory control channel to create (e.g. /dev/shm/roamgate.ctl).
    #[arg(long)]
    shm: PathBuf,
    /// Serve the read-only IKE view (`roamgate sa`) on this unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Follow the kernel's addresses on the WAN device (rtnetlink) and move the IKE SAs with
    /// them (MOBIKE): `roamgate client` sets it.
    #[arg(long)]
    follow_wan: bool,
    /// The file that keeps the static outbound SAs' sequence numbers across restarts
    /// (default: next to the config file, CONFIG.seq-state).
    #[arg(long)]
    seq_state: Option<PathBuf>,
    /// The HA node's durable sequence marks (default: next to the config file,
    /// CONFIG.ha-marks); only with an `ha` section.
    #[arg(long)]
    ha_marks: Option<PathBuf>,
    /// Keep the IKE SAs in this directory (one file each, written before every message that
    /// advances them) and adopt what it holds at start, so a restart of this process keeps
    /// the tunnels (`crate::ike_state`; `run` puts it in its private run directory).
    #[arg(long)]
    ike_state: Option<PathBuf>,
    /// Leave the process dumpable (see `roamgate dataplane --allow-core-dumps`).
    #[arg(long)]
    allow_core_dumps: bool,
    /// Serve the IKE endpoint's counters in the Prometheus text format at
    /// http://ADDR/metrics (port 0: any free port, printed).
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
}

impl ControlArgs {
    pub fn allow_core_dumps(&self) -> bool {
        self.allow_core_dumps
    }
}

pub fn run(args: ControlArgs) -> Result<()> {
    let file: DataplaneFile = config::load(&args.config)?;
    let mut checked = file.validate(&args.config)?;
    crate::logs::apply_file_level(file.log_level.as_deref())?;
    let ha = checked.ha.take();
    let (plan, conns) = (&checked.plan, checked.conns.clone());
    let mut running = Running {
        admission: file.ike.admission(&args.config, "ike")?,
        file: file.clone(),
        checked: Checked {
            plan: GatewayPlan {
                sas: plan.sas.clone(),
                rules: plan.rules.clone(),
                masquerade: plan.masquerade.clone(),
                weak: Vec::new(),
            },
            conns: checked.conns.clone(),
            backend: checked.backend,
            ha: None,
            vcm: checked.vcm.clone(),
            edge: None,
            masq: None,
        },
    };
    let gw = &file.gateway;
    let workers = file.dataplane.workers;
    let keeper = if plan.sas.iter().any(|(d, _)| *d == Direction::Outbound) {
        let path = args
            .seq_state
            .clone()
            .unwrap_or_else(|| crate::seq_state::default_path(&args.config));
        Some(SeqKeeper::open(&path, &plan.sas)?)
    } else {
        None
    };
    if args.shm.exists() {
        // A channel left by a control plane that died: its creator is gone, so it is ours to
        // replace. One whose creator still runs belongs to another control plane.
        match ControlChannel::open(&args.shm) {
            Ok(old) if old.region().creator_alive() => bail!(
                "{}: another control plane (pid {}) is running on this channel",
                args.shm.display(),
                old.region().identity().creator_pid
            ),
            _ => {
                tracing::info!(target: "control",
                    "replacing the stale channel {}",
                    args.shm.display()
                );
                std::fs::remove_file(&args.shm)
                    .with_context(|| format!("removing {}", args.shm.display()))?;
            }
        }
    }
    let ch = ControlChannel::create(&args.shm, workers)
        .with_context(|| format!("creating {}", args.shm.display()))?;
    let mut link = ShmControlLink::new(
        &ch,
        workers,
        keeper,
        plan.sas.clone(),
        plan.masquerade.clone(),
    )?;
    tracing::info!(target: "control",
        "roamgate control {}: {} connection(s), channel {} for {workers} worker(s)",
        gw.name,
        conns.len(),
        args.shm.display()
    );

    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    crate::hup::install()?;
    // `roamgate reload` asks through the view socket; the loop below answers.
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<ReloadReply>();
    let repo = SaRepository::new(plan.rules.clone(), gw.replay_window);
    let core = ControlCore::new(conns, repo, workers, os_seed(), gw.wan.address);
    let mut driver = Driver::new(core);
    if ha.is_some() {
        driver.core_mut().enable_mid_sync();
    }
    driver.set_admission(file.ike.admission(&args.config, "ike")?);
    driver.set_fragmentation(file.ike.fragmentation(&args.config, "ike")?);
    driver.core_mut().set_vcm(checked.vcm.clone());
    if let Some(g) = file.group_member(&args.config, &checked.conns)? {
        tracing::info!(target: "control",
            "group member of {} through {} (GCKS {}), {} other member(s)",
            g.plan.group.display(),
            g.connection,
            g.plan.gcks,
            g.setup.peers.len()
        );
        driver.core_mut().join_group(
            &g.connection,
            g.plan.group.clone(),
            g.plan.sender,
            g.setup,
            plan.rules.clone(),
        );
    }
    if let Some(e) = file.ike.eap(&args.config, "ike", &gw.name)? {
        driver.set_eap(e).context("opening the RADIUS socket")?;
    }
    let clock = Clock::start();
    let unix_time_at_zero = clock.unix_time_at_zero();
    driver.core_mut().set_unix_time_at_zero(unix_time_at_zero);
    // An HA node that stops being active starts again with an empty core (its IKE SAs are
    // the new active's now).
    let fresh_core = {
        let (file, path) = (file.clone(), args.config.clone());
        move || -> Result<ControlCore> {
            let Checked {
                plan, conns, vcm, ..
            } = file.validate(&path)?;
            let gw = &file.gateway;
            let repo = SaRepository::new(plan.rules, gw.replay_window);
            let mut core = ControlCore::new(conns, repo, workers, os_seed(), gw.wan.address);
            core.set_admission(file.ike.admission(&path, "ike")?);
            core.set_fragmentation(file.ike.fragmentation(&path, "ike")?);
            // Only an HA node makes fresh cores.
            core.enable_mid_sync();
            core.set_vcm(vcm);
            if let Some(e) = file.ike.eap(&path, "ike", &file.gateway.name)? {
                // The driver keeps its RADIUS socket; the new core gets the backend.
                core.set_eap(e.service);
            }
            core.set_unix_time_at_zero(unix_time_at_zero);
            Ok(core)
        }
    };
    let mut follower = if args.follow_wan {
        let Some(dev) = gw.wan.device.as_deref() else {
            bail!(
                "{}: gateway.wan.device: --follow-wan needs the WAN device's name",
                args.config.display()
            );
        };
        let f = WanFollower::new(dev, gw.wan.address)?;
        tracing::info!(target: "control", "following the kernel's addresses on {dev} (MOBIKE)");
        Some(f)
    } else {
        None
    };
    let now = || clock.now();
    let mut pair = match ha {
        Some(h) => {
            let path = args
                .ha_marks
                .clone()
                .unwrap_or_else(|| crate::ha::marks::default_path(&args.config));
            Some(Pair::start(h, &path, workers, now(), Box::new(fresh_core))?)
        }
        None => None,
    };
    let pair_view = pair.as_ref().map(Pair::view);
    let stop_views = Arc::new(AtomicBool::new(false));
    let views = match &args.socket {
        Some(path) => {
            let view = driver.view.clone();
            let name = gw.name.clone();
            let handler: crate::views::Handler = Box::new(move |req| {
                match req {
                "ike" => Some(
                    view.lock()
                        .ok()
                        .map(|v| v.answer())
                        .unwrap_or_else(|| r#"{"ike_sas":[]}"#.into()),
                ),
                "sas" | "stats" | "status" => Some(
                    serde_json::json!({ "gateway": name, "sas": [], "note": "the control plane; ask the data plane's socket for its SAs and counters" })
                        .to_string(),
                ),
                "reload" => Some(ask_reload(&reload_tx)),
                other => pair_view.as_ref().and_then(|p| p.answer(other)),
            }
            });
            Some(crate::views::serve(path, handler, stop_views.clone())?)
        }
        None => None,
    };
    let metrics = match args.metrics {
        Some(addr) => Some(crate::metrics::serve(
            addr,
            crate::metrics::Sources {
                gateways: vec![crate::metrics::GatewaySource {
                    name: gw.name.clone(),
                    handles: Vec::new(),
                    ports: None,
                    punt: None,
                    ike: Some(crate::metrics::IkeSource::InProcess(driver.view.clone())),
                }],
                started: Instant::now(),
            },
            stop_views.clone(),
        )?),
        None => None,
    };
    match (&args.ike_state, &pair) {
        (Some(dir), None) => crate::ike_state::attach(&mut driver, now(), dir)?,
        // In a pair the other node holds the IKE SAs: a restart of this process is a
        // takeover by the standby, and a node adopting its own old records as well would
        // run the same IKE SAs twice.
        (Some(_), Some(_)) => tracing::info!(
            target: "ha",
            "IKE state is not kept in a local directory in an HA pair (the peer holds it)"
        ),
        (None, _) => {}
    }
    driver.core_mut().initiate(now());
    let mut deadline: Option<Instant> = None;
    loop {
        if shutdown.load(Ordering::Relaxed) && deadline.is_none() {
            driver.core_mut().begin_shutdown(now());
            deadline = Some(Instant::now() + Duration::from_secs(2));
        }
        if deadline.is_some_and(|d| Instant::now() >= d || driver.core().ike_sa_count() == 0) {
            // Let the last datagrams reach the data plane.
            let t = Instant::now();
            while driver.busy() && t.elapsed() < Duration::from_millis(300) {
                driver.turn(now(), &mut link)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            break;
        }
        let mut work = false;
        if crate::hup::take() {
            tracing::info!(target: "control", "SIGHUP: reloading {}", args.config.display());
            let _ = reload(&args, &mut running, &mut driver, pair.is_some(), now());
            work = true;
        }
        while let Ok(reply) = reload_rx.try_recv() {
            let _ = reply.send(reload(
                &args,
                &mut running,
                &mut driver,
                pair.is_some(),
                now(),
            ));
            work = true;
        }
        driver
            .core_mut()
            .set_wall_clock(crate::ike_state::unix_ms());
        if let Some(change) = follower.as_mut().and_then(WanFollower::poll) {
            let core = driver.core_mut();
            core.push_update(Update::SetWanAddresses {
                addrs: change.addrs,
            });
            if let Some(r) = change.roam {
                let n = core.roam(now(), r.to, r.others);
                tracing::info!(target: "control",
                    "WAN address {} -> {}: {n} IKE SA(s) moving (MOBIKE)",
                    r.from, r.to
                );
            }
            work = true;
        }
        work |= match pair.as_mut() {
            Some(p) => p.turn(now(), &mut driver, &mut link)?,
            None => driver.turn(now(), &mut link)?,
        };
        if let Some(err) = link.fatal.take() {
            return Err(err);
        }
        if !work {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    stop_views.store(true, Ordering::Relaxed);
    if let Some(v) = views {
        let _ = v.join();
    }
    if let Some(m) = metrics {
        let _ = m.join();
    }
    tracing::info!(target: "control", "stopped");
    drop(ch);
    Ok(())
}

/// The configuration the control plane runs: the file as it was read, what validation made
/// of it, and its admission policy (a reload compares the file read again with this).
struct Running {
    file: DataplaneFile,
    checked: Checked,
    admission: control::config::ike::AdmissionPolicy,
}

/// Where a reload's outcome goes: the change lines, or why the file was refused.
type ReloadReply = std::sync::mpsc::Sender<Result<Vec<String>, String>>;

/// The view socket's "reload": hands the request to the control loop and waits for it.
fn ask_reload(tx: &std::sync::mpsc::Sender<ReloadReply>) -> String {
    let (reply, answer) = std::sync::mpsc::channel();
    if tx.send(reply).is_err() {
        return serde_json::json!({ "error": "the control plane is stopping" }).to_string();
    }
    match answer.recv_timeout(Duration::from_secs(4)) {
        Ok(Ok(lines)) => serde_json::json!({ "reloaded": true, "changes": lines }).to_string(),
        Ok(Err(e)) => serde_json::json!({ "error": e }).to_string(),
        Err(_) => {
            serde_json::json!({ "error": "the control plane did not answer in time" }).to_string()
        }
    }
}

/// Reads the config file again and applies what differs ([`control::config::reload`]): a
/// file that does not parse or validate, or that changes what cannot change while running, is
/// refused whole and the running configuration stays. Logged either way; returns the change
/// lines or the refusal.
fn reload(
    args: &ControlArgs,
    running: &mut Running,
    driver: &mut Driver,
    in_pair: bool,
    now: control::driver::Instant,
) -> Result<Vec<String>, String> {
    let r = (|| -> Result<Vec<String>, String> {
        let path = &args.config;
        let file: DataplaneFile = config::load(path).map_err(|e| e.to_string())?;
        let checked = file.validate(path).map_err(|e| e.to_string())?;
        if args.follow_wan {
            file.ike
                .validate_client(path, "ike")
                .map_err(|e| e.to_string())?;
        }
        let admission = file.ike.admission(path, "ike").map_err(|e| e.to_string())?;
        if in_pair {
            return Err(format!(
                "{}: ha: a node of an HA pair is not reloaded (both nodes would have to change \
                 together): needs a restart",
                path.display()
            ));
        }
        let plan = control::config::reload::plan(
            &running.file.snapshot(&running.checked, running.admission),
            &file.snapshot(&checked, admission),
            path,
        )
        .map_err(|e| e.to_string())?;
        let fragmentation = file
            .ike
            .fragmentation(path, "ike")
            .map_err(|e| e.to_string())?;
        // The EAP section is read again whole: a user added to or removed from the users
        // file, or another RADIUS server, counts from this reload on.
        let eap = file
            .ike
            .eap(path, "ike", &file.gateway.name)
            .map_err(|e| e.to_string())?;
        driver
            .core_mut()
            .reconfigure(now, checked.conns.clone(), &plan);
        driver.set_fragmentation(fragmentation);
        let mut lines = plan.summary();
        // The direct-path policy: pairs it no longer allows return to the gateway path.
        if running.checked.vcm != checked.vcm {
            lines.push("vcm: the direct-path policy changed".into());
        }
        driver.core_mut().set_vcm(checked.vcm.clone());
        if let Some(e) = eap {
            driver
                .set_eap(e)
                .map_err(|e| format!("opening the RADIUS socket: {e}"))?;
            lines.push("EAP: users file / RADIUS server read again".into());
        }
        crate::logs::apply_file_level(file.log_level.as_deref()).map_err(|e| format!("{e:#}"))?;
        *running = Running {
            file,
            checked,
            admission,
        };
        Ok(lines)
    })();
    match &r {
        Ok(lines) => {
            for l in lines {
                tracing::info!(target: "control", "reload: {l}");
            }
        }
        Err(e) => tracing::error!(target: "control",
            "reload refused, the running configuration stays: {e}"),
    }
    r
}
