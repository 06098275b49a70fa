//! The masquerade's driver in `roamgate edge-link` (issue 21, `docs/masq.md`): one thread
//! that runs the node's coordinator (`control::nat_coord`, sans-IO) over its store (etcd with
//! the `etcd` feature, else an in-process memory store for a node alone) with a clock, and
//! hands the data-plane updates the glue makes to the forwarder's loop, which owns the
//! shared-memory link.
//!
//! In (a bounded channel): clients arriving and leaving (the crypto node's carriers, through
//! `EdgeForwarder::poll_client`), the data plane's table misses, a data plane that restarted
//! empty, a new access policy (SIGHUP). Out (a bounded channel): `proto` updates, in order.
//! A full channel blocks the sender (back-pressure); only table misses are dropped when the
//! channel is full (counted: the worker asks again after its rate limit while it holds the
//! packet).
//!
//! Heartbeats (`masq.liveness`): a UDP socket bound before the thread starts (a bad address
//! fails the start); each turn reads what arrived and sends what the node says is due.
//!
//! Owns: the clock, the store's handle, the heartbeat socket, the thread. Must never: decide anything (the glue
//! does), print keys.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use control::cluster::store::mem::MemStore;
use control::cluster::store::Store;
use control::cluster::ClientEvent;
use control::config::masq::{AccessRules, MasqPlan, MasqStorePlan};
use control::nat_coord::glue::Glue;
use control::nat_coord::MasqNode;
use pipeline::masq::access::AccessTable;
use pipeline::masq::{FlowKey, Masq};
use proto::policy::Prefix;
use proto::Update;

/// What the forwarder's loop tells the thread.
#[derive(Debug)]
pub enum ToMasq {
    Client(ClientEvent),
    MissOut(FlowKey),
    MissIn(Masq),
    Access(Arc<AccessTable>, Arc<AccessRules>),
}

/// Messages waiting for the thread, and updates for the loop, at most.
const QUEUE: usize = 4096;

/// The running thread.
pub struct MasqThread {
    tx: SyncSender<ToMasq>,
    updates: Receiver<Update>,
    stop: Arc<AtomicBool>,
    join: Option<std::thread::JoinHandle<()>>,
    /// Misses dropped because the thread's queue was full.
    pub misses_dropped: Arc<AtomicU64>,
}

/// The fixed part of the data plane's masquerade plane (from the file).
#[derive(Clone, Debug)]
pub struct PlaneSpec {
    pub clients: Vec<Prefix>,
    pub exclude: Vec<Prefix>,
    pub link: Ipv4Addr,
}

impl MasqThread {
    /// Starts the thread for the checked `masq` section of `config`.
    pub fn start(plan: MasqPlan, config: &Path, incarnation: u64) -> Result<MasqThread> {
        let hb = match plan.liveness {
            Some(a) => {
                let s = UdpSocket::bind(a).with_context(|| {
                    format!(
                        "{}: masq.liveness.listen: binding {a} for heartbeats",
                        config.display()
                    )
                })?;
                s.set_nonblocking(true)
                    .context("the heartbeat socket: non-blocking")?;
                Some(s)
            }
            None => None,
        };
        let (tx, rx) = sync_channel::<ToMasq>(QUEUE);
        let (utx, updates) = sync_channel::<Update>(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let config = config.to_path_buf();
        let join = std::thread::Builder::new()
            .name("masq".into())
            .spawn(move || {
                if let Err(e) = run(plan, &config, incarnation, hb, rx, utx, s) {
                    tracing::error!(target: "masq", "the masquerade stopped: {e:#}");
                }
            })
            .context("starting the masquerade thread")?;
        Ok(MasqThread {
            tx,
            updates,
            stop,
            join: Some(join),
            misses_dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Passes `m` on: blocks while the queue is full, except for table misses, which are
    /// dropped and counted then (the worker asks again).
    pub fn send(&self, m: ToMasq) {
        match m {
            ToMasq::MissOut(_) | ToMasq::MissIn(_) => {
                if let Err(TrySendError::Full(_)) = self.tx.try_send(m) {
                    self.misses_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            m => {
                let _ = self.tx.send(m);
            }
        }
    }

    /// The next update for the data plane.
    pub fn try_update(&self) -> Option<Update> {
        self.updates.try_recv().ok()
    }

    /// Whether the thread is still running.
    pub fn is_running(&self) -> bool {
        self.join.as_ref().is_some_and(|j| !j.is_finished())
    }
}

impl Drop for MasqThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock a send of the thread's.
        while self.updates.try_recv().is_ok() {}
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn run(
    plan: MasqPlan,
    config: &Path,
    incarnation: u64,
    hb: Option<UdpSocket>,
    rx: Receiver<ToMasq>,
    out: SyncSender<Update>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let spec = PlaneSpec {
        clients: plan.clients.clone(),
        exclude: plan.exclude.clone(),
        link: plan.link_address,
    };
    match &plan.store {
        MasqStorePlan::Memory => {
            tracing::info!(target: "masq",
                "masquerade node {} on an in-process store (no masq.store: this node alone)",
                plan.params.node);
            let store = MemStore::new();
            drive(
                plan,
                store,
                spec,
                incarnation,
                hb,
                rx,
                out,
                stop,
                |s, now| s.advance(now),
            )
        }
        MasqStorePlan::Etcd(y) => {
            let y = (**y).clone();
            open_etcd(&y, config, plan, spec, incarnation, hb, rx, out, stop)
        }
    }
}

#[cfg(feature = "etcd")]
#[allow(clippy::too_many_arguments)]
fn open_etcd(
    y: &control::cluster::store::config::StoreYaml,
    config: &Path,
    plan: MasqPlan,
    spec: PlaneSpec,
    incarnation: u64,
    hb: Option<UdpSocket>,
    rx: Receiver<ToMasq>,
    out: SyncSender<Update>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let sp = y.plan(config, "masq.store")?;
    tracing::info!(target: "masq", "masquerade node {}: connecting to etcd", plan.params.node);
    let store = control::cluster::store::etcd::EtcdStore::connect(sp.etcd)
        .context("masq.store: connecting to etcd")?;
    drive(plan, store, spec, incarnation, hb, rx, out, stop, |_, _| {})
}

#[cfg(not(feature = "etcd"))]
#[allow(clippy::too_many_arguments)]
fn open_etcd(
    _y: &control::cluster::store::config::StoreYaml,
    config: &Path,
    _plan: MasqPlan,
    _spec: PlaneSpec,
    _incarnation: u64,
    _hb: Option<UdpSocket>,
    _rx: Receiver<ToMasq>,
    _out: SyncSender<Update>,
    _stop: Arc<AtomicBool>,
) -> Result<()> {
    anyhow::bail!(
        "{}: masq.store: this roamgate was built without the etcd feature (cargo build \
         --features etcd)",
        config.display()
    )
}

#[allow(clippy::too_many_arguments)]
fn drive<S: Store>(
    plan: MasqPlan,
    store: S,
    spec: PlaneSpec,
    incarnation: u64,
    hb: Option<UdpSocket>,
    rx: Receiver<ToMasq>,
    out: SyncSender<Update>,
    stop: Arc<AtomicBool>,
    advance: impl Fn(&mut S, u64),
) -> Result<()> {
    let start = Instant::now();
    // The coordinator's clock: milliseconds, never 0.
    let now = || 1_000 + u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
    let mut params = plan.params.clone();
    params.incarnation = incarnation;
    let node = MasqNode::new(params, store, plan.sealer.clone(), plan.access.clone());
    let mut glue = Glue::new(node, plan.sealer.clone(), plan.link_address);
    glue.start(plan.access.clone(), plan.rules.clone(), now());
    let mut fresh_incarnation = incarnation;
    let mut last_log = Instant::now();
    let mut ready_said = false;
    while !stop.load(Ordering::Relaxed) {
        let first = match rx.recv_timeout(Duration::from_millis(1)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        for m in first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            let t = now();
            match m {
                ToMasq::Client(ClientEvent::Attached { client, user }) => {
                    tracing::info!(target: "masq", %client, %user, "client attached");
                    glue.client_attached(client, &user, t)
                }
                ToMasq::Client(ClientEvent::Left { client }) => {
                    tracing::info!(target: "masq", %client, "client left");
                    glue.client_left(client, t)
                }
                ToMasq::Client(ClientEvent::DataplaneFresh) => {
                    fresh_incarnation = next_incarnation(fresh_incarnation);
                    tracing::info!(target: "masq",
                        "the data plane restarted empty: link SAs under a new incarnation");
                    glue.data_plane_fresh(fresh_incarnation, t)
                }
                ToMasq::MissOut(f) => glue.miss_out(&f, t),
                ToMasq::MissIn(m) => glue.miss_in(&m, t),
                ToMasq::Access(a, r) => {
                    tracing::info!(target: "masq", "masq: access policy reloaded");
                    glue.set_access(a, r, t)
                }
            }
        }
        let t = now();
        if let Some(s) = &hb {
            heartbeats(s, glue.node_mut(), t);
        }
        advance(glue.node_mut().store(), t);
        glue.turn(t);
        while let Some(c) = glue.poll() {
            let us = control::nat_coord::glue::updates(
                c,
                &glue,
                &spec.clients,
                &spec.exclude,
                spec.link,
            );
            for u in us {
                if out.send(u).is_err() {
                    return Ok(());
                }
            }
        }
        if !ready_said && glue.node().is_ready() {
            ready_said = true;
            tracing::info!(target: "masq", "masquerade node {} registered (incarnation {:016x})",
                glue.node().name(), glue.node().incarnation());
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            tracing::info!(target: "masq", "stats: {:?} {:?} {:?}",
                glue.node().stats, glue.stats, glue.links().stats);
        }
    }
    Ok(())
}

/// Reads the heartbeats that arrived (at most a bounded number a turn) and sends those due.
/// A send that fails (no route yet, a full buffer) is logged at debug: the next one is due
/// an interval later, and a peer judges only after several are missing.
fn heartbeats<S: Store>(s: &UdpSocket, node: &mut MasqNode<S>, now_ms: u64) {
    let mut buf = [0u8; 512];
    for _ in 0..256 {
        match s.recv_from(&mut buf) {
            Ok((n, _)) => node.heartbeat_in(buf.get(..n).unwrap_or_default(), now_ms),
            Err(_) => break,
        }
    }
    for (to, b) in node.heartbeats(now_ms) {
        match to.parse::<SocketAddr>() {
            Ok(a) => {
                if let Err(e) = s.send_to(&b, a) {
                    tracing::debug!(target: "masq", %a, error = %e, "heartbeat not sent");
                }
            }
            Err(_) => {
                tracing::debug!(target: "masq", to = %to, "a peer's heartbeat address does not parse")
            }
        }
    }
}

/// A new random incarnation (different from the last).
fn next_incarnation(last: u64) -> u64 {
    loop {
        let s = control::driver::inproc::os_seed();
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[..8]);
        let v = u64::from_le_bytes(b);
        if v != last {
            return v;
        }
    }
}
