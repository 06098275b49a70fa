//! `roamgate control --config X --shm PATH`: the control plane as its own process.
//!
//! It creates the shared-memory control channel at PATH (mode 0600) for the file's workers,
//! runs the IKEv2 endpoint and the SA repository, and talks to `roamgate dataplane --shm PATH`
//! only through the channel's rings: updates (with generations) to each worker and their
//! acknowledgements back, punted IKE datagrams in, datagrams to send out.
//!
//! Restarts: a data plane announces itself with an acknowledgement of generation 0 ("I am
//! empty"); the control plane answers with the file's static SAs, the inbound SA of every
//! negotiated CHILD_SA and the policy, and rekeys every CHILD_SA: the old outbound SAs'
//! sequence numbers (their GCM nonces) died with the old data plane, so they are never
//! installed again. A data plane that re-attaches after a control-plane restart announces
//! `u64::MAX` ("I keep what I have") and is left forwarding on its SAs.
//!
//! The static outbound SAs keep their keys across every restart, so this process keeps
//! their sequence numbers: it owns the state file (`--seq-state`, `crate::seq_state`), and
//! a fresh data plane gets them resumed past everything the dead one could have used; their
//! checkpoints move the reservations on. This process, not the data plane, owns the file
//! because it is the one that installs the static SAs and outlives the data plane's restarts;
//! its own restart reads the file back, while the data plane goes on within reservations
//! that are on disk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use control::config;
use control::repo::SaRepository;
use control::runner::IkeControl;
use pipeline::shm::{ControlChannel, Receiver, SendError, Sender};
use proto::{Ack, Datagram, Direction, Event, Update, UpdateEnvelope};

use crate::seq_state::SeqKeeper;

use crate::config::{Checked, DataplaneFile};

/// The generation a fresh data plane acknowledges first.
pub const HELLO_FRESH: u64 = 0;
/// The generation a data plane that keeps its SAs acknowledges first.
pub const HELLO_KEEP: u64 = u64::MAX;

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
}

/// The WAN addresses the kernel has on the device and the one IKE uses: a new address is
/// taken at once (make-before-break: the old one still works while the peer is told); when
/// the one in use goes, the newest remaining one is taken.
struct WanFollower {
    watch: crate::addr_watch::AddrWatch,
    kernel: Vec<std::net::IpAddr>,
    current: std::net::IpAddr,
}

impl WanFollower {
    fn turn(&mut self, ctl: &mut IkeControl) -> bool {
        use crate::addr_watch::AddrChange;
        let changes = self.watch.poll();
        if changes.is_empty() {
            return false;
        }
        let family = self.current.is_ipv4();
        let mut want = None;
        for c in changes {
            match c {
                AddrChange::Added(a) if a.is_ipv4() == family => {
                    if !self.kernel.contains(&a) {
                        self.kernel.push(a);
                    }
                    if a != self.current {
                        want = Some(a);
                    }
                }
                AddrChange::Removed(a) => {
                    self.kernel.retain(|k| *k != a);
                    if a == self.current {
                        want = self
                            .kernel
                            .iter()
                            .rev()
                            .find(|k| k.is_ipv4() == family)
                            .copied();
                    }
                }
                _ => {}
            }
        }
        // The data plane answers ARP/ND for what the kernel has, and the address in use.
        let first = want.unwrap_or(self.current);
        let mut addrs = vec![first];
        addrs.extend(self.kernel.iter().filter(|k| **k != first).copied());
        ctl.push_update(Update::SetWanAddresses { addrs });
        if let Some(a) = want {
            // The other addresses the kernel still has are announced (RFC 4555 3.3).
            let others = self
                .kernel
                .iter()
                .filter(|k| **k != a && k.is_ipv4() == family)
                .copied()
                .collect();
            let n = ctl.roam_with(a, others);
            println!(
                "control: WAN address {} -> {a}: {n} IKE SA(s) moving (MOBIKE)",
                self.current
            );
            self.current = a;
        }
        true
    }
}

struct WorkerEnds {
    updates: Sender<UpdateEnvelope>,
    acks: Receiver<Ack>,
    backlog: VecDeque<UpdateEnvelope>,
    acked: u64,
}

pub fn run(args: ControlArgs) -> Result<()> {
    let file: DataplaneFile = config::load(&args.config)?;
    let Checked {
        plan,
        conns,
        backend,
    } = file.validate(&args.config)?;
    let gw = &file.gateway;
    let workers = file.dataplane.workers;
    let mut keeper = if plan.sas.iter().any(|(d, _)| *d == Direction::Outbound) {
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
                println!(
                    "control: replacing the stale channel {}",
                    args.shm.display()
                );
                std::fs::remove_file(&args.shm)
                    .with_context(|| format!("removing {}", args.shm.display()))?;
            }
        }
    }
    let ch = ControlChannel::create(&args.shm, workers)
        .with_context(|| format!("creating {}", args.shm.display()))?;
    let mut ends = Vec::new();
    for w in 0..workers {
        ends.push(WorkerEnds {
            updates: ch.update_sender(w)?,
            acks: ch.ack_receiver(w)?,
            backlog: VecDeque::new(),
            acked: 0,
        });
    }
    let mut punt = ch.punt_receiver()?;
    let mut transmit = ch.transmit_sender()?;
    let mut dp_events = ch.event_receiver()?;
    println!(
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
    let repo = SaRepository::new(plan.rules.clone(), gw.replay_window);
    let mut ctl = IkeControl::new(conns, repo, None, None, backend, gw.wan.address);
    ctl.set_admission(file.ike.admission(&args.config, "ike")?);
    let mut follower = if args.follow_wan {
        let Some(dev) = gw.wan.device.as_deref() else {
            bail!(
                "{}: gateway.wan.device: --follow-wan needs the WAN device's name",
                args.config.display()
            );
        };
        let watch = crate::addr_watch::AddrWatch::new(dev)
            .with_context(|| format!("watching the addresses of WAN device {dev}"))?;
        println!("control: following the kernel's addresses on {dev} (MOBIKE)");
        Some(WanFollower {
            watch,
            kernel: Vec::new(),
            current: gw.wan.address,
        })
    } else {
        None
    };
    let stop_views = Arc::new(AtomicBool::new(false));
    let views = match &args.socket {
        Some(path) => {
            let view = ctl.view.clone();
            let name = gw.name.clone();
            let handler: crate::views::Handler = Box::new(move |req| {
                match req {
                "ike" => Some(
                    view.lock()
                        .ok()
                        .map(|v| v.json.clone())
                        .filter(|j| !j.is_empty())
                        .unwrap_or_else(|| r#"{"ike_sas":[]}"#.into()),
                ),
                "sas" | "stats" | "status" => Some(
                    serde_json::json!({ "gateway": name, "sas": [], "note": "the control plane; ask the data plane's socket for its SAs and counters" })
                        .to_string(),
                ),
                _ => None,
            }
            });
            Some(crate::views::serve(path, handler, stop_views.clone())?)
        }
        None => None,
    };
    // The static part of the state (the file's SAs, their outbound ones resumed past what
    // any earlier data plane may have sent); the repository adds the policy and the
    // negotiated CHILD_SAs.
    let static_sas = |keeper: &mut Option<SeqKeeper>| -> Result<Vec<Update>> {
        let mut sas = plan.sas.clone();
        if let Some(k) = keeper.as_mut() {
            k.start(&mut sas)?;
        }
        Ok(sas
            .into_iter()
            .map(|(dir, params)| Update::AddSa { dir, params })
            .collect())
    };
    let mut generation = 0u64;
    ctl.initiate();
    let mut deadline: Option<Instant> = None;
    loop {
        if shutdown.load(Ordering::Relaxed) && deadline.is_none() {
            ctl.begin_shutdown();
            deadline = Some(Instant::now() + Duration::from_secs(2));
        }
        if deadline.is_some_and(|d| Instant::now() >= d || ctl.ike_sa_count() == 0) {
            // Let the last datagrams reach the data plane.
            let t = Instant::now();
            while !ctl.transmits().is_empty() && t.elapsed() < Duration::from_millis(300) {
                flush_transmits(&mut ctl, &mut transmit);
                std::thread::sleep(Duration::from_millis(1));
            }
            break;
        }
        let mut work = false;
        while let Ok(Some(d)) = punt.try_recv() {
            work = true;
            ctl.handle_datagram(&d);
        }
        while let Ok(Some(e)) = dp_events.try_recv() {
            work = true;
            let Event::SeqCheckpoint { worker, .. } = e else {
                ctl.on_dataplane_event(&e);
                continue;
            };
            // A static SA's checkpoint: its reservation moves on, on disk before it is sent.
            let update = keeper.as_mut().and_then(|k| k.on_event(&e));
            if let (Some(update), Some(end)) = (update, ends.get_mut(usize::from(worker))) {
                generation += 1;
                end.backlog.push_back(UpdateEnvelope { generation, update });
            }
        }
        if let Some(f) = follower.as_mut() {
            work |= f.turn(&mut ctl);
        }
        work |= ctl.step();
        while let Some(u) = ctl.updates().pop_front() {
            generation += 1;
            for e in ends.iter_mut() {
                e.backlog.push_back(UpdateEnvelope {
                    generation,
                    update: u.clone(),
                });
            }
        }
        for (w, e) in ends.iter_mut().enumerate() {
            while let Ok(Some(a)) = e.acks.try_recv() {
                work = true;
                match a {
                    Ack::Applied {
                        generation: HELLO_FRESH,
                        ..
                    } => {
                        println!(
                            "control: data plane worker {w} is fresh: inbound SAs and policy again, every CHILD_SA rekeyed"
                        );
                        e.backlog.clear();
                        for u in static_sas(&mut keeper)?.into_iter().chain(ctl.resync()) {
                            generation += 1;
                            e.backlog.push_back(UpdateEnvelope {
                                generation,
                                update: u,
                            });
                        }
                    }
                    Ack::Applied {
                        generation: HELLO_KEEP,
                        ..
                    } => println!("control: data plane worker {w} re-attached with its SAs"),
                    Ack::Applied { generation: g, .. } => e.acked = e.acked.max(g),
                    Ack::Rejected {
                        generation: g, why, ..
                    } => {
                        eprintln!("control: worker {w} rejected generation {g}: {why}")
                    }
                }
            }
            while let Some(env) = e.backlog.pop_front() {
                match e.updates.try_send(&env) {
                    Ok(()) => work = true,
                    Err(SendError::Full) => {
                        e.backlog.push_front(env);
                        break;
                    }
                    Err(err) => {
                        eprintln!(
                            "control: update {} for worker {w} cannot be sent: {err}",
                            env.generation
                        );
                    }
                }
            }
        }
        // Datagrams after the updates that came before them (the data plane sends a datagram
        // only once the updates written before it are applied): not while one waits here.
        if ends.iter().all(|e| e.backlog.is_empty()) {
            flush_transmits(&mut ctl, &mut transmit);
        }
        if !work {
            std::thread::sleep(Duration::from_micros(300));
        }
    }
    stop_views.store(true, Ordering::Relaxed);
    if let Some(v) = views {
        let _ = v.join();
    }
    println!("control: stopped");
    drop(ch);
    Ok(())
}

fn flush_transmits(ctl: &mut IkeControl, tx: &mut Sender<Datagram>) {
    while let Some(d) = ctl.transmits().pop_front() {
        match tx.try_send(&d) {
            Ok(()) => {}
            Err(SendError::Full) => {
                ctl.transmits().push_front(d);
                break;
            }
            Err(e) => eprintln!("control: an IKE datagram cannot be sent: {e}"),
        }
    }
}
