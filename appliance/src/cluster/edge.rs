//! `roamgate edge-link --config X --shm PATH`: an edge's forwarder, the process `roamgate edge`
//! runs where `roamgate run` runs `control`.
//!
//! It creates the shared-memory channel to `roamgate dataplane --shm PATH` (the same
//! `ShmControlLink` the control process uses: generations, fresh and keep hellos), dials the
//! crypto node on the cluster channel (Noise NNpsk0 over TCP, reconnecting with a back-off)
//! and runs `control::cluster::EdgeForwarder` between the two: punted IKE up, carriers down
//! to the data plane, the crypto node's datagrams out after the carriers before them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use control::cluster::{EdgeForwarder, NodeMsg};
use control::driver::inproc::os_seed;
use control::driver::Link;
use pipeline::shm::ControlChannel;

use proto::masq::MasqMissKey;

use super::masq::{MasqThread, ToMasq};
use crate::config::{Checked, DataplaneFile};
use crate::control_link::ShmControlLink;
use crate::noise_channel::{Endpoint, LinkEvent, Psk, SyncLink, CLUSTER, MAX_PAYLOAD};

#[derive(clap::Args)]
pub struct EdgeLinkArgs {
    /// The edge's file (the data plane's file with a `cluster` section, role edge).
    #[arg(long)]
    config: PathBuf,
    /// The shared-memory control channel to create for the data plane.
    #[arg(long)]
    shm: PathBuf,
    /// Leave the process dumpable (it passes keys to the data plane).
    #[arg(long)]
    allow_core_dumps: bool,
}

impl EdgeLinkArgs {
    pub fn allow_core_dumps(&self) -> bool {
        self.allow_core_dumps
    }
}

/// SIGHUP: the file's `masq.access` again (the rest of the section needs a restart).
fn reload_masq(config: &std::path::Path, masq: Option<&MasqThread>) {
    let Some(m) = masq else {
        tracing::info!(target: "cluster", "SIGHUP: nothing to reload in edge-link");
        return;
    };
    let file: DataplaneFile = match control::config::load(config) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(target: "masq", "SIGHUP: {e}: the policy stays");
            return;
        }
    };
    let Some(section) = &file.masq else {
        tracing::warn!(target: "masq",
            "SIGHUP: {}: the masq section is gone: the policy stays (a restart removes it)",
            config.display());
        return;
    };
    match section.access_table(config, "masq") {
        Ok((t, r)) => m.send(ToMasq::Access(t, r)),
        Err(e) => tracing::warn!(target: "masq", "SIGHUP: {e}: the policy stays"),
    }
}

pub fn run(args: EdgeLinkArgs) -> Result<()> {
    let file: DataplaneFile = control::config::load(&args.config)?;
    let Checked {
        plan, edge, masq, ..
    } = file.validate(&args.config)?;
    let Some(edge) = edge else {
        bail!(
            "{}: cluster: an edge needs a cluster section with role edge",
            args.config.display()
        );
    };
    if args.shm.exists() {
        match ControlChannel::open(&args.shm) {
            Ok(old) if old.region().creator_alive() => bail!(
                "{}: another process (pid {}) is running on this channel",
                args.shm.display(),
                old.region().identity().creator_pid
            ),
            _ => std::fs::remove_file(&args.shm)
                .with_context(|| format!("removing {}", args.shm.display()))?,
        }
    }
    let ch = ControlChannel::create(&args.shm, 1)
        .with_context(|| format!("creating {}", args.shm.display()))?;
    let mut link = ShmControlLink::new(&ch, 1, None, plan.sas.clone(), plan.masquerade.clone())?;
    let seed = os_seed();
    let incarnation = u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8]));
    let mut fwd = EdgeForwarder::new(edge.edge_id, incarnation);
    // The masquerade that follows a moving client (issue 21): its own thread.
    let masq = match masq {
        Some(plan) => {
            fwd.track_clients(true);
            let inc = u64::from_le_bytes(seed[8..16].try_into().unwrap_or([2; 8]));
            Some(MasqThread::start(plan, &args.config, inc)?)
        }
        None => None,
    };
    let sync = SyncLink::start(
        Endpoint::Dial(edge.crypto_node),
        Psk::new(*edge.psk),
        edge.queue,
        CLUSTER,
    )
    .context("starting the channel to the crypto node")?;
    tracing::info!(target: "cluster",
        "roamgate edge {} ({}): edge {} of the crypto node at {}, channel {}",
        file.gateway.name, file.gateway.wan.address, edge.edge_id, edge.crypto_node,
        args.shm.display());
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    // After ctrlc's handler, which takes SIGHUP as a stop (`crate::hup`): a SIGHUP is a
    // reload of `masq.access`, not the end of edge-link.
    crate::hup::install()?;
    let mut last_stats = std::time::Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        let mut work = false;
        while let Ok(ev) = sync.events().try_recv() {
            work = true;
            match ev {
                LinkEvent::Up => {
                    tracing::info!(target: "cluster", "connected to the crypto node");
                    fwd.connected();
                }
                LinkEvent::Message(bytes, _) => match NodeMsg::decode(&bytes) {
                    Ok(m) => fwd.handle_node(m, &mut link)?,
                    Err(e) => {
                        tracing::warn!(target: "cluster", "a message from the crypto node: {e}")
                    }
                },
                LinkEvent::Down { why, .. } => {
                    tracing::warn!(target: "cluster", "crypto node connection lost: {why}");
                    fwd.disconnected();
                }
            }
        }
        work |= fwd.turn(&mut link);
        if let Some(m) = &masq {
            while let Some(c) = fwd.poll_client() {
                m.send(ToMasq::Client(c));
                work = true;
            }
            while let Some(e) = fwd.poll_masq_miss() {
                m.send(match e {
                    MasqMissKey::Out(f) => ToMasq::MissOut(f),
                    MasqMissKey::In(k) => ToMasq::MissIn(k),
                });
                work = true;
            }
            while let Some(u) = m.try_update() {
                link.send_update(0, u)?;
                work = true;
            }
            if !m.is_running() {
                bail!("the masquerade thread stopped (see the log above)");
            }
        }
        if crate::hup::take() {
            reload_masq(&args.config, masq.as_ref());
        }
        while let Some(m) = fwd.poll_to_node() {
            let bytes = match m.encode() {
                Ok(b) if b.len() <= MAX_PAYLOAD => b,
                Ok(b) => {
                    tracing::error!(target: "cluster",
                        "a message of {} bytes does not fit the channel: not sent", b.len());
                    continue;
                }
                Err(e) => {
                    tracing::error!(target: "cluster", "cannot encode: {e}");
                    continue;
                }
            };
            if sync.try_send(bytes).is_err() {
                // Full: it waits, and the data plane's input with it (back-pressure).
                fwd.unpoll(m);
                break;
            }
            work = true;
        }
        if let Some(err) = link.fatal.take() {
            return Err(err);
        }
        if last_stats.elapsed() >= std::time::Duration::from_secs(10) {
            last_stats = std::time::Instant::now();
            tracing::debug!(target: "cluster", "edge {}: {:?}", fwd.id(), fwd.stats);
        }
        if !work {
            std::thread::sleep(super::IDLE);
        }
    }
    tracing::info!(target: "cluster", "stopped: {:?}", fwd.stats);
    drop(masq);
    drop(ch);
    Ok(())
}
