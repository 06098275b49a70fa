//! The driver of one HA node inside `roamgate control`: joins `control::ha::Node` (sans-IO)
//! to the sync channel, the marks file, the control core and the data plane.
//!
//! This module owns the mapping of the node's inputs and outputs to the process:
//! - in: the channel's messages and connection changes; the data plane's sequence
//!   checkpoints (`Event::SeqCheckpoint`) and inbound windows (`Event::SaState`, asked for
//!   every checkpoint interval with `Update::ExportSa`); every CHILD SA update the control
//!   core sends (`AddSa`, deletions, MOBIKE rebinds: replicated as `Record::ChildSa` /
//!   `ChildSaGone`); IKE SA records exported after every exchange on them (IKE datagrams in
//!   or out name the IKE SA by its SPIs) and once a second for all of them;
//! - out: `Range` as `Update::ReserveSeq` (or a re-install when the range jumps), `Persist`
//!   through [`MarksFile`], `Activate` as the adoption of every replicated IKE SA (its
//!   CHILD SAs installed under the ids the old active used, outbound ones held until the node
//!   says where they start: `InstallOutbound`, inbound ones with the replicated window) and
//!   the virtual addresses (`SetWanAddresses`, `Announce` on both sides), `Deactivate` as
//!   the removal of every SA from the data plane and of the virtual WAN addresses, `Cap` (a
//!   planned switchover) as `Update::CapSeq` of every outbound SA, whose answers
//!   (`Event::SaState` under each command's generation) are the ceilings handed to the node,
//!   `Draining` as the end of IKE and replication while the data plane keeps its
//!   SAs (below their fences) and addresses for the traffic still on its way here, until the
//!   node's `Deactivate`. A new active announces its addresses only once the SAs of the
//!   adoption are in its data plane (the updates go in order), so the first frames the
//!   announcement draws find them.
//!
//! A node that is not active holds the replicated state in its table only: nothing is
//! installed in its data plane until it takes over (the sequence numbers it would start at
//! are known only then), IKE datagrams that reach it are dropped (counted) and its core sends
//! nothing. It never lets an outbound SA reach the data plane with more than the node
//! allowed (`seq_reserved` is the node's range), and never prints key material.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use control::config::ha::HaPlan;
use control::core::ControlCore;
use control::driver::{Driver, Input, Link, LinkError, TurnError};
use control::ha::{ChildKey, Node, Output, Record, Role};
use ike::{IkeSaId, IkeSpi, Instant};
use proto::sa::{Checkpoint, SaParams, SaRef, SaState};
use proto::{Datagram, Direction, Event, SaId, Update};
use zeroize::Zeroizing;

use super::channel::{self, LinkEvent, Psk, SyncLink};
use super::marks::{MarksFile, MarksWriter};

/// How often every IKE SA is exported even without traffic (timers: DPD, rekey deadlines).
const FULL_EXPORT_MS: u64 = 1000;

/// How often an active node announces its virtual addresses again: a neighbour that cached
/// another node's MAC (a node that was active for a moment at its start, then fenced) learns
/// ours within this time.
const ANNOUNCE_MS: u64 = 1000;
/// The least a fresh node waits for its peer's sync channel before it may start alone.
const START_GRACE_MS: u64 = 1000;
/// How long a planned switchover waits for the data plane's ceilings; an SA whose answer
/// does not come is handed over at its fence (safe: it never sends above its reservation).
const CAP_WAIT_MS: u64 = 100;

/// How long a new active waits for the outbound SAs of its adoption (a takeover writes their
/// marks to disk first) before it announces the addresses anyway.
const ANNOUNCE_WAIT_MS: u64 = 50;
/// The same after a planned switchover: the old active drains meanwhile (at least
/// `control::ha::DRAIN_MIN_MS`), so nothing is lost by waiting for the disk.
const HANDOVER_ANNOUNCE_WAIT_MS: u64 = 800;

/// The view socket's requests this module answers.
pub const STATUS_REQUEST: &str = "ha";
pub const SWITCHOVER_REQUEST: &str = "ha-switchover";

/// Shared with the view socket's thread.
#[derive(Clone, Default)]
pub struct PairView {
    pub status: Arc<Mutex<String>>,
    pub switchover: Arc<AtomicBool>,
}

impl PairView {
    /// The view socket's answer to `request`, if it is one of the pair's.
    pub fn answer(&self, request: &str) -> Option<String> {
        match request {
            STATUS_REQUEST => self.status.lock().ok().map(|s| s.clone()),
            SWITCHOVER_REQUEST => {
                self.switchover.store(true, Ordering::Relaxed);
                Some(r#"{"switchover":"requested"}"#.into())
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct Counters {
    ike_records: u64,
    ike_export_busy: u64,
    child_records: u64,
    adopted_ike: u64,
    adopt_failed: u64,
    dropped_ike_not_active: u64,
    persist_failed: u64,
    takeover_install_ms: Option<u64>,
    /// RFC 6311 IKEV2_MESSAGE_ID_SYNC requests started at takeovers (peers that announced
    /// support), and the endpoint's counters of them.
    mid_sync_started: u64,
    mid_sync: ike::MidSyncStats,
    /// `takeover: announce`: IKE SAs told the new address, redirected (RFC 5685), left to
    /// reconnect.
    moves_announced: u64,
    moves_redirected: u64,
    moves_unsupported: u64,
    /// Redirected IKE SAs replaced by the client's new one (it came back with REDIRECTED_FROM).
    moves_replaced: u64,
}

/// Makes an empty control core (what a node that stops being active continues with).
pub type FreshCore = Box<dyn FnMut() -> Result<ControlCore>>;

pub struct Pair {
    node: Node,
    fresh_core: FreshCore,
    sync: SyncLink,
    marks: MarksWriter,
    plan_checkpoint: Checkpoint,
    wan_vips: Vec<IpAddr>,
    lan_vips: Vec<IpAddr>,
    /// `takeover: announce`: after a takeover the IKE SAs move to this node's own WAN
    /// address (`wan_vips` holds just that) and their clients are told.
    announce_move: bool,
    workers: u16,
    link_up: bool,
    /// A message the channel's queue had no room for (back-pressure: sent first next time).
    unsent: Option<Zeroizing<Vec<u8>>>,
    /// Sending on the pair's SAs (the node's role is Active).
    active: bool,
    version: u64,
    /// IKE SAs to export (our SPI), and the ones the standby knows of.
    touched: BTreeSet<u64>,
    exported: BTreeSet<u64>,
    next_full_export: u64,
    next_replay_poll: u64,
    /// What this node installed in its data plane, by direction and id (worker, params).
    installed: BTreeMap<ChildKey, (u16, SaParams)>,
    /// Outbound SAs of an adoption waiting for the node's start (`InstallOutbound`), and
    /// starts that came before their SA.
    held: BTreeMap<SaId, (u16, SaParams)>,
    starts: BTreeMap<SaId, (u64, u64)>,
    /// Jumps to a later range (`Range { from }`), applied when the SA nears the end of the
    /// range it sends in: jumping at once would waste the rest of it.
    jumps: BTreeMap<SaId, (u64, u64)>,
    /// Checkpoints of SAs with a jump waiting.
    near_end: Vec<(SaId, u64)>,
    takeover_at: Option<u64>,
    view: PairView,
    counters: Counters,
    next_view: u64,
    next_announce: u64,
    /// The data plane's WAN addresses must be set for the role (at the start, after a
    /// worker restarted with the file's addresses).
    addresses_due: bool,
    /// Before this, a fresh node waits for its peer (the sync channel takes a moment to
    /// connect) instead of declaring it lost.
    start_grace_until: u64,
    /// Activated at this time: the addresses are announced once the adoption's SAs are in
    /// the data plane (or `ANNOUNCE_WAIT_MS` later).
    announce_due: Option<u64>,
    announce_wait: u64,
    /// IKE SAs adopted at the last takeover: IKEV2_MESSAGE_ID_SYNC to their peers once the
    /// addresses are announced (the answer comes back to them).
    mid_sync_due: Vec<IkeSaId>,
    /// A planned switchover made this node standby at this time (its data plane drains).
    drain_since: Option<u64>,
    /// A planned switchover waiting for its ceilings.
    capping: Option<Capping>,
}

/// The outbound SAs a planned switchover capped, waiting for their answers: by the (worker,
/// generation) of the command, the SA; the ceilings so far; when to stop waiting.
struct Capping {
    pending: BTreeMap<(u16, u64), SaId>,
    caps: Vec<(SaId, u64)>,
    since: u64,
    until: u64,
}

fn ms(now: Instant) -> u64 {
    now.as_nanos() / 1_000_000
}

impl Pair {
    /// Starts the node with the marks on disk and its end of the sync channel.
    pub fn start(
        plan: HaPlan,
        marks_path: &Path,
        workers: u16,
        now: Instant,
        fresh_core: FreshCore,
    ) -> Result<Pair> {
        let (marks, disk) = MarksFile::open(marks_path)?;
        let endpoint = if plan.params.slot == 0 {
            channel::Endpoint::Dial(plan.sync_peer)
        } else {
            let l = TcpListener::bind(plan.sync_local)
                .with_context(|| format!("ha: listening on {}", plan.sync_local))?;
            channel::Endpoint::Listen(l)
        };
        let sync = channel::start(endpoint, Psk::new(*plan.psk), plan.sync_queue)
            .context("ha: starting the sync channel")?;
        tracing::info!(target: "ha", "node {} (priority {}), sync {} <-> {}, marks {} ({} SA(s))",
            plan.params.slot,
            plan.params.priority,
            plan.sync_local,
            plan.sync_peer,
            marks.path().display(),
            disk.len()
        );
        let marks = MarksWriter::start(marks)?;
        Ok(Pair {
            node: Node::new(plan.params, disk, ms(now)),
            fresh_core,
            sync,
            marks,
            plan_checkpoint: plan.params.checkpoint,
            wan_vips: plan.wan_addresses.clone(),
            lan_vips: plan.lan_addresses.clone(),
            announce_move: plan.takeover == control::config::ha::Takeover::Announce,
            workers: workers.max(1),
            link_up: false,
            unsent: None,
            active: false,
            version: 0,
            touched: BTreeSet::new(),
            exported: BTreeSet::new(),
            next_full_export: 0,
            next_replay_poll: 0,
            installed: BTreeMap::new(),
            held: BTreeMap::new(),
            starts: BTreeMap::new(),
            jumps: BTreeMap::new(),
            near_end: Vec::new(),
            takeover_at: None,
            view: PairView::default(),
            counters: Counters::default(),
            next_view: 0,
            next_announce: 0,
            addresses_due: true,
            announce_due: None,
            announce_wait: ANNOUNCE_WAIT_MS,
            mid_sync_due: Vec::new(),
            drain_since: None,
            capping: None,
            start_grace_until: ms(now).saturating_add(
                plan.params
                    .detection_ms
                    .saturating_mul(4)
                    .max(START_GRACE_MS),
            ),
        })
    }

    pub fn view(&self) -> PairView {
        self.view.clone()
    }

    /// One turn of the control loop with the pair in it: the driver's turn through a link
    /// that shows the pair every update, report and datagram, then the node's own work.
    pub fn turn<L: Link>(
        &mut self,
        now: Instant,
        driver: &mut Driver,
        link: &mut L,
    ) -> Result<bool, TurnError> {
        let mut work = {
            let mut l = PairLink {
                inner: link,
                pair: self,
            };
            driver.turn(now, &mut l)?
        };
        work |= self.tick(now, driver, link)?;
        Ok(work)
    }

    fn tick<L: Link>(
        &mut self,
        now: Instant,
        driver: &mut Driver,
        link: &mut L,
    ) -> Result<bool, LinkError> {
        let t = ms(now);
        let mut work = false;
        while let Ok(ev) = self.sync.events().try_recv() {
            work = true;
            match ev {
                LinkEvent::Up => {
                    self.link_up = true;
                    tracing::info!(target: "ha", "sync channel up");
                    self.node.link_up(t);
                }
                LinkEvent::Message(m, read_at) => {
                    let was = self.node.role();
                    self.node.handle_message(t, &m);
                    if was != Role::Active && self.node.role() == Role::Active {
                        // A handover: how long it waited between the channel and the node.
                        tracing::info!(target: "ha",
                            "handover read from the sync channel {} us ago",
                            read_at.elapsed().as_micros()
                        );
                    }
                }
                LinkEvent::Down { why, unsent } => {
                    if self.link_up {
                        tracing::info!(target: "ha", "sync channel down ({why}; {unsent} message(s) to resend)");
                    }
                    self.link_up = false;
                    self.unsent = None;
                }
            }
        }
        while let Some((token, marks, r)) = self.marks.stored() {
            work = true;
            match r {
                Ok(()) => self.node.persisted(token, marks),
                Err(e) => {
                    // Without the marks on disk the node extends nothing: the SAs stop at
                    // their reservation rather than risk a nonce.
                    self.counters.persist_failed += 1;
                    tracing::warn!(target: "ha", "{e:#}");
                }
            }
        }
        // A fresh node hears its peer before it may decide alone (the channel connects
        // after the detection time has passed).
        let heard = self.node.peer().is_some();
        if t >= self.node.poll_timeout() && (heard || t >= self.start_grace_until) {
            self.node.handle_timeout(t);
        }
        if let Some(t0) = self.announce_due {
            // A driver turn ran since the activation: the adoption's updates reached the link.
            if (self.held.is_empty() && self.starts.is_empty())
                || t >= t0.saturating_add(self.announce_wait)
            {
                self.announce_due = None;
                self.next_announce = t.saturating_add(ANNOUNCE_MS);
                self.announce(link)?;
                if self.announce_move {
                    self.move_gateway(now, driver);
                }
                tracing::info!(target: "ha",
                    "addresses announced {} ms after the activation ({} outbound SA(s) held)",
                    t.saturating_sub(t0),
                    self.held.len() + self.starts.len()
                );
                self.sync_message_ids(now, driver);
            }
        }
        if self.addresses_due {
            // The file's WAN address is a virtual one: only the active answers for it.
            self.addresses_due = false;
            let addrs = if self.active {
                self.next_announce = 0;
                self.wan_vips.clone()
            } else {
                Vec::new()
            };
            for w in 0..self.workers {
                link.send_update(
                    w,
                    Update::SetWanAddresses {
                        addrs: addrs.clone(),
                    },
                )?;
            }
        }
        if self.active {
            if t >= self.next_announce && self.announce_due.is_none() {
                self.next_announce = t.saturating_add(ANNOUNCE_MS);
                self.announce(link)?;
            }
            self.export_ike(now, driver);
            self.counters.mid_sync = driver.core().mid_sync_stats();
            self.counters.moves_replaced = driver.core().gateway_move_stats().replaced;
            if t >= self.next_replay_poll {
                self.next_replay_poll = t.saturating_add(self.plan_checkpoint.millis.max(10));
                for (key, (w, p)) in &self.installed {
                    if !key.dir_out {
                        link.send_update(
                            *w,
                            Update::ExportSa {
                                sa: SaRef::Inbound(p.spi),
                            },
                        )?;
                    }
                }
            }
        }
        while let Some(o) = self.node.poll_output() {
            work = true;
            self.apply(now, o, driver, link)?;
        }
        for (id, seq) in std::mem::take(&mut self.near_end) {
            let key = ChildKey::new(Direction::Outbound, id);
            let Some((w, p)) = self.installed.get(&key) else {
                self.jumps.remove(&id);
                continue;
            };
            let end = p.resume.seq_reserved.unwrap_or(u64::MAX);
            // Near the end: what one checkpoint interval may use.
            if end.saturating_sub(seq) <= self.plan_checkpoint.packets.max(1) {
                let (w, p) = (*w, p.clone());
                if let Some((from, up_to)) = self.jumps.remove(&id) {
                    self.install_outbound(link, w, p, from, up_to)?;
                }
            }
        }
        work |= self.send_messages();
        if let Some(t0) = self.takeover_at {
            // After the announcement: a driver turn has passed the adoption's SAs on by then.
            if self.announce_due.is_none() && self.held.is_empty() && self.starts.is_empty() {
                // Every outbound SA of the takeover is in the data plane.
                self.takeover_at = None;
                self.counters.takeover_install_ms = Some(t.saturating_sub(t0));
                tracing::info!(target: "ha", "takeover installed in {} ms", t.saturating_sub(t0));
            }
        }
        if t >= self.next_view {
            self.next_view = t.saturating_add(100);
            self.render_view(t);
        }
        if self.finish_cap(t) {
            // The handover goes out before anything else is done.
            while let Some(o) = self.node.poll_output() {
                self.apply(now, o, driver, link)?;
            }
            self.send_messages();
        }
        if self.view.switchover.swap(false, Ordering::Relaxed) {
            match self.node.switchover() {
                Ok(()) => {
                    tracing::info!(target: "ha", "planned switchover: capping the outbound SAs");
                    while let Some(o) = self.node.poll_output() {
                        self.apply(now, o, driver, link)?;
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "ha", "switchover refused: {e} with a standby in sync")
                }
            }
        }
        Ok(work)
    }

    fn send_messages(&mut self) -> bool {
        if !self.link_up {
            return false;
        }
        let mut work = false;
        loop {
            let Some(m) = self.unsent.take().or_else(|| self.node.poll_message()) else {
                break;
            };
            if m.len() > channel::MAX_PAYLOAD {
                continue;
            }
            match self.sync.try_send(m) {
                Ok(()) => work = true,
                Err(channel::Full(m)) => {
                    self.unsent = Some(m);
                    break;
                }
            }
        }
        work
    }

    /// Exports the IKE SAs that had an exchange (and all of them now and then) into the log.
    fn export_ike(&mut self, now: Instant, driver: &mut Driver) {
        let t = ms(now);
        if t >= self.next_full_export {
            self.next_full_export = t.saturating_add(FULL_EXPORT_MS);
            let live: BTreeSet<u64> = driver
                .core()
                .ike_ids()
                .into_iter()
                .map(|i| i.0 .0)
                .collect();
            for gone in self.exported.difference(&live).copied().collect::<Vec<_>>() {
                self.touched.insert(gone);
            }
            self.touched.extend(live);
        }
        if self.touched.is_empty() {
            return;
        }
        let mut retry = BTreeSet::new();
        for spi in std::mem::take(&mut self.touched) {
            match driver.core().export_ike(now, IkeSaId(IkeSpi(spi))) {
                Ok(rec) => match rec.to_bytes() {
                    Ok(bytes) => {
                        self.version = self.version.saturating_add(1);
                        let r = Record::IkeSa {
                            id: spi,
                            version: self.version,
                            bytes,
                        };
                        if self.node.record(r).is_ok() {
                            self.counters.ike_records += 1;
                            self.exported.insert(spi);
                        }
                    }
                    Err(e) => tracing::warn!(target: "ha", "IKE SA {spi:016x}: {e}"),
                },
                Err(ike::ExportError::Busy) => {
                    self.counters.ike_export_busy += 1;
                    retry.insert(spi);
                }
                Err(_) => {
                    if self.exported.remove(&spi) {
                        self.version = self.version.saturating_add(1);
                        let _ = self.node.record(Record::IkeSaGone {
                            id: spi,
                            version: self.version,
                        });
                    }
                }
            }
        }
        self.touched = retry;
    }

    fn apply<L: Link>(
        &mut self,
        now: Instant,
        o: Output,
        driver: &mut Driver,
        link: &mut L,
    ) -> Result<(), LinkError> {
        match o {
            Output::Activate { epoch, handover } => {
                self.active = true;
                // Record versions must pass every version the old active wrote (the table
                // keeps the highest): this node's own counter may be far behind. A record of
                // ours with a lower version would be ignored (an IKE SA's message ids after
                // this node's own exchanges, a gateway move's addresses, would never reach the
                // standby, and the next takeover would adopt the old active's stale record).
                self.version = self
                    .version
                    .max(epoch << 40)
                    .max(self.node.table().max_version());
                let t = ms(now);
                tracing::info!(target: "ha", "active in epoch {epoch}");
                if driver.core().ike_sa_count() == 0 {
                    self.takeover_at = Some(t);
                    let began = std::time::Instant::now();
                    self.adopt_all(now, driver);
                    tracing::debug!(target: "ha", "adopted in {} us", began.elapsed().as_micros());
                }
                for w in 0..self.workers {
                    link.send_update(
                        w,
                        Update::SetWanAddresses {
                            addrs: self.wan_vips.clone(),
                        },
                    )?;
                }
                // Announced once the adoption's SAs are in the data plane.
                self.announce_due = Some(t);
                self.announce_wait = if handover {
                    HANDOVER_ANNOUNCE_WAIT_MS
                } else {
                    ANNOUNCE_WAIT_MS
                };
            }
            Output::Cap { ahead } => {
                // Each outbound SA may send `ahead` more; its answer is the exact ceiling.
                self.jumps.clear();
                self.near_end.clear();
                let t = ms(now);
                let mut c = Capping {
                    pending: BTreeMap::new(),
                    caps: Vec::new(),
                    since: t,
                    until: t.saturating_add(CAP_WAIT_MS),
                };
                for (key, (w, _)) in &self.installed {
                    if key.dir_out {
                        let g = link.send_update(*w, Update::CapSeq { id: key.id, ahead })?;
                        c.pending.insert((*w, g), key.id);
                    }
                }
                self.capping = Some(c);
            }
            Output::Draining => {
                // A planned switchover: the new active answers IKE from now on; the data
                // plane goes on below the fences for the traffic still coming here.
                self.active = false;
                self.announce_due = None;
                self.drain_since = Some(ms(now));
                self.jumps.clear();
                self.near_end.clear();
                tracing::info!(target: "ha", "planned switchover: standby, draining");
            }
            Output::Deactivate => {
                self.active = false;
                self.announce_due = None;
                self.capping = None;
                let t = ms(now);
                match self.drain_since.take() {
                    Some(t0) => tracing::info!(target: "ha",
                        "stopped sending (drained for {} ms)", t.saturating_sub(t0)),
                    None => tracing::info!(target: "ha", "stopped sending (deactivated)"),
                }
                for (key, (w, p)) in std::mem::take(&mut self.installed) {
                    let u = if key.dir_out {
                        Update::DeleteOutbound { id: key.id }
                    } else {
                        Update::DeleteInbound { spi: p.spi }
                    };
                    link.send_update(w, u)?;
                }
                self.held.clear();
                self.starts.clear();
                self.jumps.clear();
                for w in 0..self.workers {
                    link.send_update(w, Update::SetWanAddresses { addrs: Vec::new() })?;
                }
                // The IKE SAs are the new active's: this node forgets them without a word to
                // the peers, and adopts them again from the replicated state if it takes over.
                let built = std::time::Instant::now();
                match (self.fresh_core)() {
                    Ok(core) => {
                        *driver.core_mut() = core;
                        tracing::debug!(target: "ha", "an empty control core in {} us",
                            built.elapsed().as_micros());
                    }
                    Err(e) => {
                        tracing::warn!(target: "ha", "cannot start an empty control core: {e:#}")
                    }
                }
                self.exported.clear();
                self.touched.clear();
            }
            Output::InstallInbound { .. } => {}
            Output::InstallOutbound { id, from, up_to } => {
                if let Some((w, p)) = self.held.remove(&id) {
                    self.install_outbound(link, w, p, from, up_to)?;
                } else {
                    self.starts.insert(id, (from, up_to));
                }
            }
            Output::Range { id, from, up_to } => {
                let key = ChildKey::new(Direction::Outbound, id);
                match (from, self.installed.get(&key)) {
                    // A jump is never merged into the range before it (the numbers between
                    // are the other node's): it waits until the SA is installed and near its
                    // end, even when the SA is still waiting for its adoption (`starts`).
                    (Some(from), _) => {
                        let j = self.jumps.entry(id).or_insert((from, up_to));
                        j.1 = j.1.max(up_to);
                    }
                    (None, _) if self.jumps.contains_key(&id) => {
                        if let Some(j) = self.jumps.get_mut(&id) {
                            j.1 = j.1.max(up_to);
                        }
                    }
                    (None, Some((w, _))) => {
                        link.send_update(*w, Update::ReserveSeq { id, up_to })?;
                        if let Some((_, p)) = self.installed.get_mut(&key) {
                            let r = p.resume.seq_reserved.get_or_insert(up_to);
                            *r = (*r).max(up_to);
                        }
                    }
                    (_, None) => {
                        if let Some(s) = self.starts.get_mut(&id) {
                            s.1 = s.1.max(up_to);
                        }
                    }
                }
            }
            Output::Persist { token, marks } => {
                // Written on the marks thread; `Node::persisted` when it answers (`tick`).
                if !self.marks.store(token, marks) {
                    self.counters.persist_failed += 1;
                    tracing::warn!(target: "ha", "the marks writer is gone: nothing is extended");
                }
            }
            Output::Said(s) => tracing::info!(target: "ha", "{s:?}"),
        }
        Ok(())
    }

    /// Hands the ceilings to the node once every capped SA answered (or the wait is over:
    /// the ones that did not are handed over at their fences). True when it did.
    fn finish_cap(&mut self, t: u64) -> bool {
        let Some(c) = self.capping.as_ref() else {
            return false;
        };
        if !c.pending.is_empty() && t < c.until {
            return false;
        }
        let Some(c) = self.capping.take() else {
            return false;
        };
        tracing::info!(target: "ha",
            "planned switchover: {} outbound SA(s) capped in {} ms ({} without an answer), handover logged",
            c.caps.len(),
            t.saturating_sub(c.since),
            c.pending.len()
        );
        self.node.capped(t, &c.caps);
        true
    }

    /// `takeover: announce`: the adopted IKE SAs move to this node's own WAN address and
    /// their clients are told (after the adoption's SAs are in the data plane: the clients'
    /// ESP reaches SAs that are there).
    fn move_gateway(&mut self, now: Instant, driver: &mut Driver) {
        let Some(own) = self.wan_vips.first().copied() else {
            return;
        };
        let [a, r, u] = driver.core_mut().move_gateway(now, own);
        let c = &mut self.counters;
        c.moves_announced += a as u64;
        c.moves_redirected += r as u64;
        c.moves_unsupported += u as u64;
        tracing::info!(target: "ha",
            "gateway moved to {own}: {a} IKE SA(s) told, {r} redirected (RFC 5685), {u} left to reconnect"
        );
    }

    /// Gratuitous ARP / unsolicited NA for the virtual addresses on both sides.
    fn announce<L: Link>(&self, link: &mut L) -> Result<(), LinkError> {
        link.send_update(
            0,
            Update::Announce {
                wan: true,
                addrs: self.wan_vips.clone(),
            },
        )?;
        if !self.lan_vips.is_empty() {
            link.send_update(
                0,
                Update::Announce {
                    wan: false,
                    addrs: self.lan_vips.clone(),
                },
            )?;
        }
        Ok(())
    }

    fn install_outbound<L: Link>(
        &mut self,
        link: &mut L,
        w: u16,
        mut p: SaParams,
        from: u64,
        up_to: u64,
    ) -> Result<(), LinkError> {
        p.resume.seq = from.saturating_sub(1);
        p.resume.seq_reserved = Some(up_to);
        p.checkpoint = Some(self.plan_checkpoint);
        let id = p.id;
        self.installed
            .insert(ChildKey::new(Direction::Outbound, id), (w, p.clone()));
        link.send_update(
            w,
            Update::AddSa {
                dir: Direction::Outbound,
                params: p,
            },
        )?;
        Ok(())
    }

    /// RFC 6311: IKEV2_MESSAGE_ID_SYNC on every IKE SA of the takeover whose peer announced
    /// support (the replicated message ids may lag the old active's by the exchanges it made
    /// after its last replication; the peer's answer brings them level), ahead of any other
    /// request on it. Peers that did not announce it (the record says) get none.
    fn sync_message_ids(&mut self, now: Instant, driver: &mut Driver) {
        let due = std::mem::take(&mut self.mid_sync_due);
        let n = due.len();
        let mut started = 0u64;
        for ike in due {
            if driver.core_mut().sync_message_ids(now, ike) {
                started += 1;
            }
        }
        self.counters.mid_sync_started += started;
        if n > 0 {
            tracing::info!(target: "ha",
                "IKEV2_MESSAGE_ID_SYNC sent on {started} of {n} IKE SA(s) (the others' peers did not announce support)"
            );
        }
    }

    /// Takes over every replicated IKE SA: the endpoint carries them on, the repository
    /// installs their CHILD SAs under the replicated ids (through [`PairLink`]).
    fn adopt_all(&mut self, now: Instant, driver: &mut Driver) {
        let table = self.node.table();
        let mut by_spi: BTreeMap<(bool, u32), SaId> = BTreeMap::new();
        for (k, c) in table.children() {
            by_spi.insert((k.dir_out, c.params.spi.0), k.id);
        }
        let records: Vec<(u64, Zeroizing<Vec<u8>>)> = table
            .ike_sas()
            .map(|(id, _, b)| (id, Zeroizing::new(b.to_vec())))
            .collect();
        for (spi, bytes) in records {
            let ids = |info: &ike::ChildSaInfo| {
                Some((
                    *by_spi.get(&(false, info.inbound.spi.0))?,
                    *by_spi.get(&(true, info.outbound.spi.0))?,
                ))
            };
            match driver.core_mut().adopt_ike(now, &bytes, ids) {
                Ok(ike) => {
                    self.counters.adopted_ike += 1;
                    self.exported.insert(spi);
                    self.mid_sync_due.push(ike);
                }
                Err(e) => {
                    self.counters.adopt_failed += 1;
                    tracing::warn!(target: "ha", "IKE SA {spi:016x} not taken over: {e}");
                }
            }
        }
        tracing::info!(target: "ha", "took over {} IKE SA(s) ({} failed)",
            self.counters.adopted_ike, self.counters.adopt_failed
        );
    }

    /// An update the control core sends: replicated (active), held or completed (an
    /// adoption), passed on.
    fn on_update<L: Link>(
        &mut self,
        inner: &mut L,
        worker: u16,
        update: Update,
    ) -> Result<u64, LinkError> {
        match update {
            Update::AddSa { dir, mut params } => {
                let key = ChildKey::new(dir, params.id);
                let adopted = self
                    .node
                    .table()
                    .child(&key)
                    .filter(|c| c.params.spi == params.spi)
                    .map(|c| c.replay.clone());
                match (dir, adopted) {
                    (Direction::Inbound, Some(replay)) => {
                        params.resume.replay = replay;
                    }
                    (Direction::Outbound, Some(_)) => {
                        if let Some((from, up_to)) = self.starts.remove(&params.id) {
                            self.install_outbound(inner, worker, params, from, up_to)?;
                        } else {
                            self.held.insert(params.id, (worker, params));
                        }
                        return Ok(inner.released(worker));
                    }
                    (_, None) => {
                        if dir == Direction::Outbound {
                            // Nothing reserved until the node grants a range.
                            params.resume.seq_reserved = Some(params.resume.seq);
                            params.checkpoint = Some(self.plan_checkpoint);
                        }
                        self.replicate_child(dir, &params);
                    }
                }
                self.installed.insert(key, (worker, params.clone()));
                inner.send_update(worker, Update::AddSa { dir, params })
            }
            Update::DeleteInbound { spi } => {
                let gone = self
                    .installed
                    .iter()
                    .find(|(k, (_, p))| !k.dir_out && p.spi == spi)
                    .map(|(k, _)| *k);
                if let Some(k) = gone {
                    self.installed.remove(&k);
                    self.child_gone(k);
                }
                inner.send_update(worker, Update::DeleteInbound { spi })
            }
            Update::DeleteOutbound { id } => {
                let k = ChildKey::new(Direction::Outbound, id);
                if self.installed.remove(&k).is_some() {
                    self.child_gone(k);
                }
                self.held.remove(&id);
                inner.send_update(worker, Update::DeleteOutbound { id })
            }
            Update::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                for id in &ids {
                    // An adopted SA still held for its start (a gateway move right after a
                    // takeover) is installed with its new addresses.
                    if let Some((_, p)) = self.held.get_mut(id) {
                        p.local = local;
                        p.remote = remote;
                        p.encap = encap;
                    }
                    let k = ChildKey::new(Direction::Outbound, *id);
                    if let Some((_, p)) = self.installed.get_mut(&k) {
                        p.local = local;
                        p.remote = remote;
                        p.encap = encap;
                        let p = p.clone();
                        self.replicate_child(Direction::Outbound, &p);
                    }
                }
                inner.send_update(
                    worker,
                    Update::RebindOutbound {
                        ids,
                        local,
                        remote,
                        encap,
                    },
                )
            }
            other => inner.send_update(worker, other),
        }
    }

    fn replicate_child(&mut self, dir: Direction, params: &SaParams) {
        self.version = self.version.saturating_add(1);
        let r = Record::ChildSa {
            version: self.version,
            dir,
            params: Box::new(params.clone()),
        };
        if self.node.record(r).is_ok() {
            self.counters.child_records += 1;
        }
    }

    fn child_gone(&mut self, key: ChildKey) {
        self.version = self.version.saturating_add(1);
        let _ = self.node.record(Record::ChildSaGone {
            key,
            version: self.version,
        });
    }

    /// A report of the data plane's.
    fn on_event(&mut self, e: &Event) {
        match e {
            Event::SeqCheckpoint { id, seq, .. } => {
                self.node.seq_checkpoint(*id, *seq);
                if self.jumps.contains_key(id) {
                    self.near_end.push((*id, *seq));
                }
            }
            Event::SaState {
                worker,
                generation,
                id,
                state: SaState::Outbound { seq_reserved, .. },
                ..
            } => {
                // The ceiling of an SA a planned switchover capped.
                if let Some(c) = self.capping.as_mut() {
                    if c.pending.get(&(*worker, *generation)) == Some(id) {
                        c.pending.remove(&(*worker, *generation));
                        if let Some(r) = seq_reserved {
                            c.caps.push((*id, *r));
                        }
                    }
                }
            }
            Event::SaState {
                id,
                state: SaState::Inbound { replay },
                ..
            } if self.active => {
                let _ = self.node.record(Record::ReplayMark {
                    id: *id,
                    replay: replay.clone(),
                });
            }
            _ => {}
        }
    }

    /// The IKE SA a datagram belongs to, by its SPIs (ours is one of them).
    fn touch(&mut self, payload: &[u8]) {
        for r in [0..8, 8..16] {
            if let Some(spi) = payload.get(r).and_then(IkeSpi::from_slice) {
                if spi.0 != 0 {
                    self.touched.insert(spi.0);
                }
            }
        }
    }

    fn render_view(&mut self, t: u64) {
        let peer = self
            .node
            .peer()
            .map(|(role, epoch, priority, slot, heard)| {
                serde_json::json!({
                    "role": role_name(role),
                    "epoch": epoch,
                    "priority": priority,
                    "node": slot,
                    "heard_ms_ago": t.saturating_sub(heard),
                })
            });
        let table = self.node.table();
        let s = self.node.stats();
        let c = &self.counters;
        let outbound = self.installed.keys().filter(|k| k.dir_out).count();
        let json = serde_json::json!({
            "role": role_name(self.node.role()),
            "epoch": self.node.epoch(),
            "sync_channel": if self.link_up { "up" } else { "down" },
            "peer": peer,
            "paired": self.node.paired(),
            "backlog": self.node.backlog(),
            "replicated": {
                "ike_sas": table.ike_sas().count(),
                "child_sas": table.children().count(),
            },
            "installed": {
                "outbound": outbound,
                "inbound": self.installed.len().saturating_sub(outbound),
            },
            "counters": {
                "ike_records": c.ike_records,
                "ike_export_busy": c.ike_export_busy,
                "child_records": c.child_records,
                "adopted_ike": c.adopted_ike,
                "adopt_failed": c.adopt_failed,
                "dropped_ike_not_active": c.dropped_ike_not_active,
                "persist_failed": c.persist_failed,
                "takeovers": s.takeovers,
                "fenced": s.fenced,
                "out_of_sync": s.out_of_sync,
                "snapshots_sent": s.snapshots_sent,
                "grants": s.grants,
                "persists": s.persists,
                "reservations": s.reservations,
                "reserved_starts": s.reserved_starts,
                "decode_errors": s.decode_errors.values().sum::<u64>(),
            },
            "takeover_install_ms": c.takeover_install_ms,
            "mid_sync": {
                "started": c.mid_sync_started,
                "synced": c.mid_sync.synced,
                "wrong_nonce": c.mid_sync.wrong_nonce,
                "answered": c.mid_sync.answered,
                "stale": c.mid_sync.stale,
            },
            "gateway_moves": {
                "announced": c.moves_announced,
                "redirected": c.moves_redirected,
                "unsupported": c.moves_unsupported,
                "replaced": c.moves_replaced,
            },
        });
        if let Ok(mut v) = self.view.status.lock() {
            *v = json.to_string();
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Standby => "standby",
        Role::OutOfSync => "out-of-sync",
        Role::Fenced => "fenced",
    }
}

/// The data-plane link as the driver sees it with a pair in the process.
struct PairLink<'a, L: Link> {
    inner: &'a mut L,
    pair: &'a mut Pair,
}

impl<L: Link> Link for PairLink<'_, L> {
    fn pump(&mut self) -> bool {
        self.inner.pump()
    }

    fn poll_input(&mut self) -> Option<Input> {
        loop {
            let i = self.inner.poll_input()?;
            match &i {
                Input::Datagram(d) if !self.pair.active => {
                    // Not ours to answer: the active holds the IKE SAs.
                    let _ = d;
                    self.pair.counters.dropped_ike_not_active += 1;
                    continue;
                }
                Input::Datagram(d) => self.pair.touch(&d.payload),
                Input::Event(e) => self.pair.on_event(e),
                Input::Fresh { .. } => self.pair.addresses_due = true,
            }
            return Some(i);
        }
    }

    fn send_update(&mut self, worker: u16, update: Update) -> Result<u64, LinkError> {
        self.pair.on_update(self.inner, worker, update)
    }

    fn released(&self, worker: u16) -> u64 {
        self.inner.released(worker)
    }

    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram> {
        if !self.pair.active {
            return Ok(());
        }
        self.pair.touch(&d.payload);
        self.inner.send_datagram(d)
    }
}
