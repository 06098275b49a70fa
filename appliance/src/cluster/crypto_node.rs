//! `roamgate crypto-node --config X`: IKE for every edge of a cluster, no data-plane ports.
//!
//! The loop: the edges' channel ([`Hub`]: one Noise connection per edge) in,
//! `control::cluster::CryptoNode` on the real clock, its messages out per edge. A connection
//! is an edge once its hello arrives; a message that does not decode, or that names another
//! edge, closes the connection (counted, said). What an edge's channel cannot take now waits
//! in the node, in order, and is sent when it can (back-pressure, not loss).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use control::cluster::{CryptoNode, EdgeId, EdgeMsg};
use control::core::ControlCore;
use control::driver::{inproc::os_seed, Clock, IkeView};
use control::repo::SaRepository;

use crate::config::{CheckedNode, CryptoNodeFile};
use crate::noise_channel::{Hub, LinkEvent, Psk, CLUSTER, MAX_PAYLOAD};

#[derive(clap::Args)]
pub struct CryptoNodeArgs {
    /// The crypto node's file: `gateway` (no devices), `ike`, `cluster` (role crypto-node).
    #[arg(long)]
    config: PathBuf,
    /// Serve the read-only IKE view (`roamgate sa --socket S`) and the cluster's state
    /// (`placement`) on this unix socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Leave the process dumpable (it holds every edge's keys).
    #[arg(long)]
    allow_core_dumps: bool,
    /// Stop after this many seconds (tests).
    #[arg(long)]
    duration: Option<f64>,
}

impl CryptoNodeArgs {
    pub fn allow_core_dumps(&self) -> bool {
        self.allow_core_dumps
    }
}

pub fn run(args: CryptoNodeArgs) -> Result<()> {
    let file: CryptoNodeFile = control::config::load(&args.config)?;
    let CheckedNode {
        plan,
        conns,
        cluster,
    } = file.validate(&args.config)?;
    let gw = &file.gateway;
    let repo = SaRepository::new(plan.rules.clone(), gw.replay_window);
    let mut core = ControlCore::for_cluster_node(
        conns,
        repo,
        os_seed(),
        gw.wan.address,
        cluster.node_bits,
        cluster.node_id,
    )
    .map_err(|e| anyhow::anyhow!("{}: cluster.node_id: {e}", args.config.display()))?;
    core.set_admission(file.ike.admission(&args.config, "ike")?);
    let clock = Clock::start();
    core.set_unix_time_at_zero(clock.unix_time_at_zero());
    let mut node = CryptoNode::new(core);
    node.set_drain_moves(cluster.move_drain);
    node.set_move_hold(std::time::Duration::from_millis(u64::from(
        cluster.move_hold_ms,
    )));
    if !cluster.filters.is_empty() {
        node.set_filters(cluster.filters.clone());
    }
    node.set_neighbours(cluster.neighbours.clone());
    // A new incarnation at every start: edges count carriers per node incarnation.
    node.set_incarnation(u64::from_le_bytes(
        os_seed()[..8].try_into().unwrap_or([1; 8]),
    ));
    let mut store = open_store(&file, &args.config, &mut node, &clock)?;
    let listener = std::net::TcpListener::bind(cluster.listen)
        .with_context(|| format!("listening for edges on {}", cluster.listen))?;
    let hub = Hub::start(listener, Psk::new(*cluster.psk), cluster.queue, CLUSTER)
        .context("starting the edges' channel")?;
    tracing::info!(target: "cluster",
        "roamgate crypto-node {} (node {} of {} bits): edges connect to {}",
        gw.name, cluster.node_id, cluster.node_bits, cluster.listen);

    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let view = Arc::new(Mutex::new(IkeView::default()));
    let cluster_state = Arc::new(Mutex::new(String::from("{}")));
    let stop_views = Arc::new(AtomicBool::new(false));
    let views = match &args.socket {
        Some(path) => {
            let (v, c) = (view.clone(), cluster_state.clone());
            let handler: crate::views::Handler = Box::new(move |req| match req {
                "ike" => Some(
                    v.lock()
                        .ok()
                        .map(|v| v.answer())
                        .unwrap_or_else(|| r#"{"ike_sas":[]}"#.into()),
                ),
                "cluster" => c.lock().ok().map(|c| c.clone()),
                _ => None,
            });
            Some(crate::views::serve(path, handler, stop_views.clone())?)
        }
        None => None,
    };

    // Connection -> the edge it said hello as; edge -> its current connection.
    let mut conn_edge: BTreeMap<u64, EdgeId> = BTreeMap::new();
    let mut edge_conn: BTreeMap<EdgeId, u64> = BTreeMap::new();
    let started = std::time::Instant::now();
    let mut last_state = std::time::Instant::now();
    let mut state_moves = 0;
    while !shutdown.load(Ordering::Relaxed)
        && args
            .duration
            .is_none_or(|d| started.elapsed().as_secs_f64() < d)
    {
        let mut work = false;
        let now = clock.now();
        while let Ok(ev) = hub.events().try_recv() {
            work = true;
            match ev.event {
                LinkEvent::Up => {}
                LinkEvent::Message(bytes, _) => {
                    let msg = match EdgeMsg::decode(&bytes) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(target: "cluster",
                                "connection {}: {e}: closed", ev.conn);
                            node.stats.refused += 1;
                            hub.close(ev.conn);
                            continue;
                        }
                    };
                    let edge = match (conn_edge.get(&ev.conn), &msg) {
                        (Some(e), _) => *e,
                        (None, EdgeMsg::Hello { edge, .. }) => {
                            if let Some(old) = edge_conn.insert(*edge, ev.conn) {
                                conn_edge.remove(&old);
                                hub.close(old);
                                node.edge_down(*edge);
                            }
                            conn_edge.insert(ev.conn, *edge);
                            node.edge_up(*edge);
                            *edge
                        }
                        (None, _) => {
                            node.stats.refused += 1;
                            continue;
                        }
                    };
                    if msg.edge() != edge {
                        hub.close(ev.conn);
                    }
                    node.handle(now, edge, msg);
                }
                LinkEvent::Down { why, unsent } => {
                    if let Some(edge) = conn_edge.remove(&ev.conn) {
                        if edge_conn.get(&edge) == Some(&ev.conn) {
                            edge_conn.remove(&edge);
                            node.edge_down(edge);
                            tracing::info!(target: "cluster",
                                "edge {edge} disconnected ({why}; {unsent} message(s) unsent)");
                        }
                    }
                }
            }
        }
        if node.poll_timeout().is_some_and(|t| t <= now) {
            work = true;
            let t = std::time::Instant::now();
            if node.handle_timeout(now) {
                // The view rebuilds keep to their share of the loop's time.
                node.core_mut().set_view_cost(t.elapsed());
            }
        }
        work |= store.turn(&mut node, now, &clock);
        for edge in node.edges_with_output() {
            let Some(conn) = edge_conn.get(&edge).copied() else {
                continue;
            };
            while let Some(m) = node.poll_for(edge) {
                let bytes = match m.encode() {
                    Ok(b) if b.len() <= MAX_PAYLOAD => b,
                    Ok(b) => {
                        // A policy too large for one channel message (site-to-site rules of
                        // very many CHILD_SAs): said, not sent (it would break the channel).
                        tracing::error!(target: "cluster",
                            "edge {edge}: a message of {} bytes does not fit the channel \
                             ({MAX_PAYLOAD}): not sent", b.len());
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(target: "cluster", "edge {edge}: cannot encode: {e}");
                        continue;
                    }
                };
                if hub.try_send(conn, bytes).is_err() {
                    // Full: it waits, in order (back-pressure).
                    node.unpoll(edge, m);
                    break;
                }
                work = true;
            }
        }
        while let Some((line, error)) = node.poll_log() {
            super::log_line(&line, error);
        }
        if let Some(json) = node.take_view() {
            if let Ok(mut v) = view.lock() {
                v.json = json;
                v.published = Some(std::time::Instant::now());
            }
        }
        // The state (the view's `cluster`) every 200 ms, and within 5 ms of a move applied:
        // the LAN's routing follows its `hosts`.
        let since = last_state.elapsed();
        if since >= std::time::Duration::from_millis(200)
            || (node.stats.moves_applied != state_moves
                && since >= std::time::Duration::from_millis(5))
        {
            state_moves = node.stats.moves_applied;
            last_state = std::time::Instant::now();
            if let Ok(mut c) = cluster_state.lock() {
                *c = state_json(&node, &edge_conn);
            }
        }
        if !work {
            std::thread::sleep(super::IDLE);
        }
    }
    tracing::info!(target: "cluster", "stopping: {}", state_json(&node, &edge_conn));
    stop_views.store(true, Ordering::Relaxed);
    if let Some(v) = views {
        let _ = v.join();
    }
    drop(hub);
    Ok(())
}

/// The node's repository in etcd, when the file has a `store` section.
#[cfg(feature = "etcd")]
struct NodeRepo(
    Option<control::cluster::repository::NodeStore<control::cluster::store::etcd::EtcdStore>>,
);
#[cfg(not(feature = "etcd"))]
struct NodeRepo;

/// How long an edge's liveness record outlives its last keep-alive.
#[cfg(feature = "etcd")]
const EDGE_LEASE_TTL_S: i64 = 10;

#[cfg(feature = "etcd")]
fn open_store(
    file: &CryptoNodeFile,
    path: &std::path::Path,
    node: &mut CryptoNode,
    clock: &Clock,
) -> Result<NodeRepo> {
    let Some(y) = &file.store else {
        return Ok(NodeRepo(None));
    };
    let plan = y.plan(path, "store")?;
    let repo = plan
        .open()
        .map_err(|e| anyhow::anyhow!("{}: store.etcd: {e}", path.display()))?;
    let mut st = control::cluster::repository::NodeStore::new(repo, EDGE_LEASE_TTL_S);
    node.enable_store();
    node.set_wall_clock(unix_ms(clock));
    let t0 = std::time::Instant::now();
    let r = st
        .recover(node, clock.now(), std::time::Duration::from_secs(30))
        .map_err(|e| anyhow::anyhow!("{}: store: reading the repository: {e}", path.display()))?;
    tracing::info!(target: "cluster",
        "recovered from etcd at revision {} in {:.1} ms: {} IKE SA(s) adopted, {} CHILD_SA(s) kept on their edges, {} rekeyed, {} refused",
        r.revision, t0.elapsed().as_secs_f64() * 1e3, r.adopted, r.kept, r.rekeyed, r.refused.len());
    for (id, why) in &r.refused {
        tracing::warn!(target: "cluster", "stored IKE SA {id} not adopted: {why}");
    }
    Ok(NodeRepo(Some(st)))
}

#[cfg(not(feature = "etcd"))]
fn open_store(
    _file: &CryptoNodeFile,
    _path: &std::path::Path,
    _node: &mut CryptoNode,
    _clock: &Clock,
) -> Result<NodeRepo> {
    Ok(NodeRepo)
}

#[cfg(feature = "etcd")]
fn unix_ms(clock: &Clock) -> u64 {
    (clock.unix_time_at_zero() + clock.now().saturating_duration_since(ike::Instant::ZERO))
        .as_millis() as u64
}

impl NodeRepo {
    #[cfg(feature = "etcd")]
    fn turn(&mut self, node: &mut CryptoNode, now: ike::Instant, clock: &Clock) -> bool {
        let Some(st) = &mut self.0 else {
            return false;
        };
        let wall = unix_ms(clock);
        node.set_wall_clock(wall);
        st.turn(node, now, wall)
    }

    #[cfg(not(feature = "etcd"))]
    fn turn(&mut self, _node: &mut CryptoNode, _now: ike::Instant, _clock: &Clock) -> bool {
        false
    }
}

/// The node's counters, its edges and the SAs each holds (SPIs and ids, never keys), and the
/// carrier round trips (ms, p50 and max).
fn state_json(node: &CryptoNode, edges: &BTreeMap<EdgeId, u64>) -> String {
    let s = &node.stats;
    let per_edge: Vec<serde_json::Value> = edges
        .keys()
        .map(|e| {
            let (inb, out) = node.placement().held_by(*e);
            let mut rt: Vec<f64> = node
                .round_trips(*e)
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            rt.sort_by(|a, b| a.total_cmp(b));
            serde_json::json!({
                "edge": e,
                "inbound_spis": inb.iter().map(|s| format!("{:08x}", s.0)).collect::<Vec<_>>(),
                "outbound_ids": out.iter().map(|i| i.0).collect::<Vec<_>>(),
                // The freshest sequence report of each outbound SA (last number used).
                "outbound_seq": out
                    .iter()
                    .map(|i| node.placement().freshest_seq(*i).map_or(0, |s| s.seq))
                    .collect::<Vec<_>>(),
                "carrier_rtt_ms_p50": rt.get(rt.len() / 2),
                "carrier_rtt_ms_max": rt.last(),
            })
        })
        .collect();
    serde_json::json!({
        "ike_in": s.ike_in, "ike_out": s.ike_out, "carriers": s.carriers,
        "updates_carried": s.updates_carried, "no_edge": s.no_edge, "unplaced": s.unplaced,
        "refused": s.refused, "on_demand": s.on_demand, "resent": s.resent,
        "store_batches": s.store_batches, "store_ops": s.store_ops, "edges_kept": s.edges_kept,
        "waiting_for_store": node.waiting_for_store(),
        "moves": s.moves, "moves_applied": s.moves_applied, "grants": s.grants,
        "spread": s.spread, "rearmed": s.rearmed, "first_use": s.first_use,
        "stale_first_use": s.stale_first_use,
        "drains": s.drains, "drains_ended": s.drains_ended,
        // Outbound SAs the edges they moved away from still hold until the LAN's traffic
        // reaches the new holder.
        "draining": node
            .placement()
            .drains()
            .iter()
            .map(|(id, e)| serde_json::json!({"sa": id.0, "edges": e}))
            .collect::<Vec<_>>(),
        // The LAN return path: the edge each virtual IP's traffic must reach (a moved one's
        // new edge once it applied the move).
        "hosts": node
            .designated_hosts()
            .iter()
            .map(|(vip, e)| serde_json::json!({"vip": vip.to_string(), "edges": e}))
            .collect::<Vec<_>>(),
        // Each move: the unknown-SPI report in -> the new edge applied the moved SA (ms).
        "move_ms": node
            .move_times()
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect::<Vec<_>>(),
        "ike_sas": node.core().ike_sa_count(),
        "edges": per_edge,
        // Edge filters (issue 18 item 7): the rules by index (the edges' `roamgate stats`
        // counts `filter_hits` by it), the clients they hold and where their SAs are.
        "filters": node.filter_view(),
        // `cluster.neighbours`: where each edge's clients get watched copies (empty: all).
        "neighbours": node.neighbours(),
        "on_encryption_node": s.on_encryption_node,
        "filtered_unknown_spi": s.filtered_unknown_spi,
    })
    .to_string()
}
