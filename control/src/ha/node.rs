//! One node of an HA pair: roles, heartbeats, failure detection, takeover, switchover,
//! rejoin, and the sequence ranges its data plane may send in.
//!
//! This module owns the pair's state machine ([`Node`]): sync messages, data-plane checkpoints,
//! disk confirmations and `now` (milliseconds of the caller's clock) in; messages for the
//! sync channel ([`Node::poll_message`]), [`Output`]s for the data plane and the driver, and
//! the next deadline ([`Node::poll_timeout`]) out. It never reads a clock, opens a socket or
//! writes a file, and never lets its data plane send a sequence number outside the rules of
//! [`super::seq`] (granted by the standby, or in its own blocks and on disk first).
//!
//! Roles: a node starts [`Role::OutOfSync`]; it syncs from an active it hears (a snapshot)
//! and becomes [`Role::Standby`], or, hearing no active for the detection time and holding
//! no state, becomes [`Role::Active`] itself (with two fresh nodes the higher priority, then
//! the higher slot, goes first). A standby that hears nothing from its active for the
//! detection time takes over (epoch + 1). Two actives (a healed split brain, an old active
//! back from a freeze) resolve by (epoch, priority, slot): the lower one is
//! [`Role::Fenced`]: it stops sending at once and resyncs as a standby. A planned
//! switchover is make-before-break: the active's data plane caps every outbound SA a margin
//! past its last number; the active logs each ceiling and a grant above it, then a
//! `Handover`, and stops being active at once; its data plane drains (keeps its SAs and
//! addresses for the traffic still on its way to it, never passing a ceiling) until the new
//! active has been heard for the detection time; the standby starts right above the ceilings
//! and announces the addresses. There is no preemption: a returning node with a
//! higher priority stays standby until a switchover.

use std::collections::{BTreeMap, VecDeque};

use proto::sa::{Checkpoint, ReplayState};
use proto::{Direction, SaId};
use zeroize::Zeroizing;

use super::log::SyncLog;
use super::record::{ChildKey, Message, Record, Role};
use super::seq::SeqPlan;
use super::table::{Applied, Table};

/// How many detection times an empty node that heard an active peer waits for it before it
/// starts alone.
const EMPTY_PATIENCE: u64 = 20;

/// The least an old active drains after hearing the new one: the new active announces the
/// addresses only once its SAs are in, which may wait for its disk (hundreds of ms when busy).
pub const DRAIN_MIN_MS: u64 = 1000;

/// The parameters of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaParams {
    /// 0 or 1, different on the two nodes: which sequence blocks are this node's own.
    pub slot: u8,
    /// The higher one becomes active when both start together.
    pub priority: u8,
    pub heartbeat_ms: u64,
    /// Silence for this long is a failure.
    pub detection_ms: u64,
    pub checkpoint: Checkpoint,
    /// The highest rate one SA sends at (packets per second).
    pub max_pps: u64,
    /// Log entries on the wire unacknowledged.
    pub window: usize,
    /// Log entries waiting before the standby is out of sync.
    pub max_backlog: usize,
    /// A planned switchover lets the old active send at most this many numbers more per SA
    /// while its traffic moves; the new active starts right above (the jump its peer sees).
    pub switchover_margin: u64,
}

impl HaParams {
    pub fn plan(&self) -> SeqPlan {
        SeqPlan {
            checkpoint: self.checkpoint,
            max_pps: self.max_pps,
            detection_ms: self.detection_ms,
            slot: self.slot,
        }
    }
}

/// What a node asks of its data plane and driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Became active in `epoch`: take the virtual addresses (gratuitous ARP / unsolicited NA),
    /// tell the peers (IKEV2_MESSAGE_ID_SYNC where supported). `handover`: a planned
    /// switchover (the old active drains meanwhile: announce only once everything is in).
    Activate { epoch: u64, handover: bool },
    /// Stop sending on every outbound SA and give up the virtual addresses.
    Deactivate,
    /// Install an inbound SA (parameters in [`Node::table`]) with this window.
    InstallInbound {
        id: SaId,
        replay: Option<ReplayState>,
    },
    /// Install an outbound SA (parameters in [`Node::table`]) that sends `from` first and
    /// never passes `up_to`.
    InstallOutbound { id: SaId, from: u64, up_to: u64 },
    /// A running outbound SA may send up to `up_to` (`Update::ReserveSeq`); with `from`, it
    /// continues at `from` first (a jump forward: a re-install with `Resume::seq = from - 1`).
    Range {
        id: SaId,
        from: Option<u64>,
        up_to: u64,
    },
    /// Write these marks durably (replacing the file), then call [`Node::persisted`].
    Persist {
        token: u64,
        marks: BTreeMap<SaId, u64>,
    },
    /// A planned switchover: lower every outbound SA's reservation to at most `ahead` past
    /// the last number it used (`Update::CapSeq`) and report the ceilings ([`Node::capped`]).
    Cap { ahead: u64 },
    /// A planned switchover made this node the standby: answer no IKE any more, but keep
    /// the data plane's SAs (each below its fence already) and addresses for the traffic
    /// still on its way here; [`Output::Deactivate`] follows once the new active has been
    /// heard for the detection time (or before this node becomes active again).
    Draining,
    /// Something to say (log line, counter).
    Said(Said),
}

/// What a node says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    /// The peer was silent for the detection time.
    PeerLost {
        role: Role,
    },
    /// The standby fell behind by more than the bound: resynced by a snapshot.
    StandbyOutOfSync {
        backlog: usize,
    },
    /// The standby applied a whole snapshot.
    StandbyInSync,
    /// This node holds the active's whole state.
    InSync {
        epoch: u64,
    },
    TookOver {
        epoch: u64,
        sas: usize,
    },
    /// Another active of a later epoch exists: this node stopped.
    Fenced {
        by_epoch: u64,
    },
    SwitchedOver {
        epoch: u64,
    },
    /// The peer uses the same slot: the pair refuses to work until one is changed.
    SameSlot,
    /// A standby with no usable state saw its active go: nobody takes over.
    CannotTakeOver,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub out_of_sync: u64,
    pub snapshots_sent: u64,
    pub takeovers: u64,
    pub fenced: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub grants: u64,
    pub persists: u64,
    /// Outbound SAs a takeover or handover started in a range reserved on disk beforehand
    /// (no wait for the disk).
    pub reserved_starts: u64,
    /// Reservations a standby wrote for its next takeover.
    pub reservations: u64,
    pub same_slot: u64,
    pub unexpected: u64,
}

/// The active's view of one outbound SA it sends on.
#[derive(Clone, Copy, Debug)]
struct Running {
    used: u64,
    allowed: u64,
    /// A grant in the log, not acknowledged yet: (index, up to).
    grant: Option<(u64, u64)>,
    /// An unpaired extension waiting for the disk: (from, up to).
    disk: Option<(u64, u64)>,
    /// The standby's own mark: the next paired range starts above it.
    floor: u64,
    installed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    role: Role,
    epoch: u64,
    priority: u8,
    slot: u8,
    last_heard: u64,
}

/// A record the control core wants replicated was refused: this node is not active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not the active node")]
pub struct NotActive;

/// One node of the pair.
pub struct Node {
    p: HaParams,
    plan: SeqPlan,
    role: Role,
    epoch: u64,
    table: Table,
    log: SyncLog,
    /// Standby: the last log index applied.
    applied: u64,
    ack_due: bool,
    /// Active: the standby applied a whole snapshot and is current.
    standby_in_sync: bool,
    /// Active: the index of the `SnapshotEnd` on its way.
    snapshot_end: Option<u64>,
    /// Standby: receiving a snapshot.
    receiving: bool,
    peer: Option<Peer>,
    peer_lost_said: bool,
    /// When an active peer was last heard (a standby's failure detection).
    active_heard: u64,
    next_heartbeat: u64,
    started: u64,
    control: VecDeque<Message>,
    outputs: VecDeque<Output>,
    running: BTreeMap<SaId, Running>,
    /// As on disk: per outbound SA, a bound on every number this node may send unpaired
    /// without writing again (what it may have sent, or reserved: see `spent`).
    disk: BTreeMap<SaId, u64>,
    /// To be on disk.
    want: BTreeMap<SaId, u64>,
    /// Changes of `want`, and how many of them the last write carried: comparing the two maps
    /// instead made a takeover of many SAs quadratic (one comparison per SA).
    want_changes: u64,
    written_changes: u64,
    /// Per outbound SA, the highest number this node may have sent: the marks it started
    /// with (it cannot tell what of them it used before a crash) and every range it gave its
    /// data plane since. A mark above it was reserved by a standby for its takeover and is
    /// known unused ([`super::seq`], "Reserved but unused").
    spent: BTreeMap<SaId, u64>,
    persist_inflight: Option<u64>,
    persist_token: u64,
    /// A planned switchover waits for the data plane's ceilings ([`Node::capped`]).
    handing_over: bool,
    /// After a planned switchover: the data plane still holds the old SAs until this
    /// deadline (`u64::MAX` until the new active is heard).
    draining: Option<u64>,
    stats: Stats,
}

impl Node {
    /// A node starting at `now` with the marks its disk holds (empty on a first start).
    pub fn new(p: HaParams, disk: BTreeMap<SaId, u64>, now: u64) -> Node {
        Node {
            plan: p.plan(),
            p,
            role: Role::OutOfSync,
            epoch: 0,
            table: Table::default(),
            log: SyncLog::new(1, p.window, p.max_backlog),
            applied: 0,
            ack_due: false,
            standby_in_sync: false,
            snapshot_end: None,
            receiving: false,
            peer: None,
            peer_lost_said: false,
            active_heard: now,
            next_heartbeat: now,
            started: now,
            control: VecDeque::new(),
            outputs: VecDeque::new(),
            running: BTreeMap::new(),
            want: disk.clone(),
            want_changes: 0,
            written_changes: 0,
            spent: disk.clone(),
            disk,
            persist_inflight: None,
            persist_token: 0,
            handing_over: false,
            draining: None,
            stats: Stats::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn plan(&self) -> SeqPlan {
        self.plan
    }

    /// The peer as last heard: role, epoch, priority, slot, when (for `ha status`).
    pub fn peer(&self) -> Option<(Role, u64, u8, u8, u64)> {
        self.peer
            .map(|p| (p.role, p.epoch, p.priority, p.slot, p.last_heard))
    }

    /// Active with a standby that is current: ranges come from grants.
    pub fn paired(&self) -> bool {
        self.role == Role::Active && self.standby_in_sync && !self.handing_over
    }

    /// Entries waiting for the standby (the caller may slow down optional records).
    pub fn backlog(&self) -> usize {
        self.log.backlog()
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> u64 {
        let mut t = self.next_heartbeat;
        if let Some(d) = self.draining {
            t = t.min(d);
        }
        if self.role == Role::Standby {
            t = t.min(self.active_heard.saturating_add(self.p.detection_ms));
        }
        if !self.peer_lost_said {
            let last = self.peer.map_or(self.started, |p| p.last_heard);
            t = t.min(last.saturating_add(self.p.detection_ms));
        }
        if let Some(p) = self
            .peer
            .filter(|p| p.role == Role::Active && self.role != Role::Active)
        {
            t = t.min(
                p.last_heard
                    .saturating_add(self.p.detection_ms.saturating_mul(EMPTY_PATIENCE)),
            );
        }
        t
    }

    /// The next output for the data plane or driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next message for the sync channel (control messages first, then log entries as
    /// the window allows). The driver calls it only while its send queue has room: that is
    /// the back-pressure.
    pub fn poll_message(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        let msg = if let Some(m) = self.control.pop_front() {
            m
        } else if self.ack_due {
            self.ack_due = false;
            Message::Ack {
                index: self.applied,
            }
        } else {
            // The active's log; after a handover the old active's last entries drain from it.
            let (index, record) = self.log.next_to_send()?;
            Message::Entry {
                index,
                record: record.clone(),
            }
        };
        match msg.encode() {
            Ok(b) => Some(b),
            Err(_) => {
                // Records are bounded when they are made (the IKE record's size is checked
                // by `record`); count rather than stop the pair.
                self.stats.unexpected = self.stats.unexpected.saturating_add(1);
                None
            }
        }
    }

    /// A new connection to the peer: send a heartbeat at once and everything unacknowledged
    /// again.
    pub fn link_up(&mut self, now: u64) {
        self.log.rewind();
        // A snapshot request may have gone with the old connection: ask again when the
        // active is heard.
        if self.role != Role::Standby {
            self.receiving = false;
        }
        self.next_heartbeat = now;
    }

    /// Timers: heartbeats and failure detection.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.draining.is_some_and(|d| now >= d) {
            self.end_drain();
        }
        if now >= self.next_heartbeat {
            self.control.push_back(self.heartbeat());
            self.next_heartbeat = now.saturating_add(self.p.heartbeat_ms.max(1));
        }
        // A standby follows an active: a peer that only says it is standby or out of sync
        // (a lost handover) is no active, and the standby takes over.
        if self.role == Role::Standby
            && now.saturating_sub(self.active_heard) >= self.p.detection_ms
        {
            self.peer_lost_said = true;
            self.outputs
                .push_back(Output::Said(Said::PeerLost { role: self.role }));
            self.take_over(now);
            return;
        }
        let last = self.peer.map_or(self.started, |p| p.last_heard);
        if self.waited_for_active(now) {
            self.become_active(now);
            return;
        }
        if self.peer_lost_said || now.saturating_sub(last) < self.p.detection_ms {
            // Said and acted on once per silence; heartbeats go on.
            return;
        }
        self.peer_lost_said = true;
        self.outputs
            .push_back(Output::Said(Said::PeerLost { role: self.role }));
        match self.role {
            Role::Active => {
                // Unpaired from now on: grants cannot be acknowledged any more.
                if self.standby_in_sync {
                    self.standby_in_sync = false;
                    let ids: Vec<SaId> = self.running.keys().copied().collect();
                    for id in ids {
                        self.extend(id);
                    }
                }
            }
            Role::Standby => {}
            Role::OutOfSync | Role::Fenced => {
                // An empty node that heard an active peer (it was syncing from it) waits much
                // longer before it starts alone: a busy or slow active would otherwise be
                // fenced by an empty table, and its state lost.
                let heard_active = self.peer.is_some_and(|p| p.role == Role::Active);
                let patience = self.p.detection_ms.saturating_mul(EMPTY_PATIENCE);
                if self.is_empty() && heard_active && now.saturating_sub(last) < patience {
                    // Said; started alone by `waited_for_active` if the peer stays silent.
                } else if self.is_empty() {
                    self.become_active(now);
                } else if self.role == Role::OutOfSync {
                    self.outputs.push_back(Output::Said(Said::CannotTakeOver));
                }
            }
        }
    }

    /// An empty node that heard an active peer, silent for the whole patience since.
    fn waited_for_active(&self, now: u64) -> bool {
        matches!(self.role, Role::OutOfSync | Role::Fenced)
            && self.is_empty()
            && self.peer.is_some_and(|p| {
                p.role == Role::Active
                    && now.saturating_sub(p.last_heard)
                        >= self.p.detection_ms.saturating_mul(EMPTY_PATIENCE)
            })
    }

    fn is_empty(&self) -> bool {
        self.table.children().next().is_none() && self.table.ike_sas().next().is_none()
    }

    fn heartbeat(&self) -> Message {
        Message::Heartbeat {
            slot: self.p.slot,
            role: self.role,
            epoch: self.epoch,
            priority: self.p.priority,
            applied: self.applied,
        }
    }

    /// One message from the sync channel.
    pub fn handle_message(&mut self, now: u64, bytes: &[u8]) {
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                *self.stats.decode_errors.entry(e.reason()).or_default() += 1;
                return;
            }
        };
        match msg {
            Message::Heartbeat {
                slot,
                role,
                epoch,
                priority,
                applied: _,
            } => self.on_heartbeat(now, slot, role, epoch, priority),
            Message::Entry { index, record } => self.on_entry(now, index, record),
            Message::Ack { index } => self.on_ack(index),
            Message::SnapshotRequest { epoch } => {
                // Asked for this epoch; or by a node that did not know it yet: a restarted
                // node that got a log entry before any heartbeat (the old connection's
                // entries, or a new connection's sent before its first heartbeat) sees a hole
                // and asks with its own epoch (0 after a restart), once. Ignored, it would
                // wait for a snapshot forever (and the pair stayed unpaired) — unless one is
                // under way already.
                let stale = epoch < self.epoch && self.snapshot_end.is_none();
                if self.role == Role::Active && (epoch == self.epoch || stale) {
                    self.start_snapshot();
                }
            }
            Message::Floor { id, seq } => {
                if let Some(r) = self.running.get_mut(&id) {
                    r.floor = r.floor.max(seq);
                }
            }
        }
    }

    fn on_heartbeat(&mut self, now: u64, slot: u8, role: Role, epoch: u64, priority: u8) {
        if slot == self.p.slot {
            self.stats.same_slot = self.stats.same_slot.saturating_add(1);
            if self.stats.same_slot == 1 {
                self.outputs.push_back(Output::Said(Said::SameSlot));
            }
            return;
        }
        self.peer = Some(Peer {
            role,
            epoch,
            priority,
            slot,
            last_heard: now,
        });
        self.peer_lost_said = false;
        if role == Role::Active {
            self.active_heard = now;
            // The new active of our switchover speaks: its addresses are being announced;
            // what still reaches us is drained for one detection time more.
            if self.draining == Some(u64::MAX) && epoch >= self.epoch {
                self.draining = Some(now.saturating_add(self.p.detection_ms.max(DRAIN_MIN_MS)));
            }
        }
        let peer_wins = (epoch, priority, slot) > (self.epoch, self.p.priority, self.p.slot);
        match (self.role, role) {
            (Role::Active, Role::Active) if peer_wins => self.fence(epoch),
            (Role::Active, Role::Active) => {}
            // Our standby, heard again after a silence that unpaired us (a loaded machine, a
            // link that came back): it resyncs (a snapshot carries every fence) and we are
            // paired again once it applied it; without this the pair would stay unpaired.
            (Role::Active, Role::Standby)
                if epoch == self.epoch && !self.standby_in_sync && self.snapshot_end.is_none() =>
            {
                self.start_snapshot();
            }
            (Role::OutOfSync | Role::Fenced, Role::Active) if !self.receiving => {
                self.epoch = self.epoch.max(epoch);
                self.control.push_back(Message::SnapshotRequest { epoch });
                self.receiving = true;
            }
            (Role::Standby, Role::Active) if epoch > self.epoch => {
                // An active of a later epoch than the one we follow (we missed a takeover):
                // our state is not its state.
                self.role = Role::OutOfSync;
                self.receiving = false;
            }
            // Two nodes starting together: the higher (priority, slot) goes first.
            (Role::OutOfSync, Role::OutOfSync | Role::Fenced)
                if self.is_empty() && (self.p.priority, self.p.slot) > (priority, slot) =>
            {
                self.become_active(now)
            }
            _ => {}
        }
    }

    fn on_entry(&mut self, now: u64, index: u64, record: Record) {
        if self.role == Role::Active {
            self.stats.unexpected = self.stats.unexpected.saturating_add(1);
            return;
        }
        let begins = matches!(record, Record::SnapshotBegin { .. });
        if index <= self.applied && !begins {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            self.ack_due = true;
            return;
        }
        if index != self.applied.saturating_add(1) && !begins {
            // A hole: the active dropped what we missed (out of sync). Ask for everything.
            self.stats.gaps = self.stats.gaps.saturating_add(1);
            if self.role == Role::Standby || !self.receiving {
                self.role = Role::OutOfSync;
                self.receiving = true;
                self.control
                    .push_back(Message::SnapshotRequest { epoch: self.epoch });
            }
            return;
        }
        if self.role != Role::Standby && !self.receiving && !begins {
            return;
        }
        self.applied = index;
        self.ack_due = true;
        if self.table.apply(&record) != Applied::Control {
            match &record {
                Record::SeqCheckpoint { id, .. } | Record::SeqGrant { id, .. } => self.reserve(*id),
                Record::ChildSa { dir, params, .. } if *dir == Direction::Outbound => {
                    self.reserve(params.id)
                }
                Record::ChildSaGone { key, .. } if key.dir_out => {
                    // Its keys are gone at both ends: nothing can repeat a nonce of it.
                    if self.want.remove(&key.id).is_some() {
                        self.want_changes = self.want_changes.wrapping_add(1);
                    }
                    self.spent.remove(&key.id);
                }
                _ => {}
            }
            return;
        }
        match record {
            Record::SnapshotBegin { epoch } => {
                self.table.clear();
                self.epoch = epoch;
                self.role = Role::OutOfSync;
                self.receiving = true;
            }
            Record::SnapshotEnd { epoch } => {
                self.role = Role::Standby;
                self.active_heard = now;
                self.receiving = false;
                self.epoch = epoch;
                // What we may have sent unpaired must stay below the active's next ranges (not
                // what we only reserved: that stays unused).
                let ids: Vec<SaId> = self
                    .table
                    .children()
                    .filter(|(k, _)| k.dir_out)
                    .map(|(k, _)| k.id)
                    .collect();
                for &id in &ids {
                    if let Some(&seq) = self.spent.get(&id) {
                        self.control.push_back(Message::Floor { id, seq });
                    }
                }
                for id in ids {
                    self.reserve(id);
                }
                self.outputs.push_back(Output::Said(Said::InSync { epoch }));
            }
            Record::Handover { epoch } => self.accept_handover(now, epoch),
            _ => {}
        }
    }

    fn on_ack(&mut self, index: u64) {
        if self.role != Role::Active || !self.log.ack(index) {
            return;
        }
        let acked = self.log.acked();
        let mut all = false;
        if let Some(end) = self.snapshot_end {
            if acked >= end {
                self.snapshot_end = None;
                self.standby_in_sync = true;
                all = true;
                self.outputs.push_back(Output::Said(Said::StandbyInSync));
            }
        }
        let ids: Vec<SaId> = self
            .running
            .iter()
            .filter(|(_, r)| all || r.grant.is_some_and(|(i, _)| i <= acked))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(r) = self.running.get_mut(&id) else {
                continue;
            };
            if let Some((i, up_to)) = r.grant {
                if i <= acked {
                    r.grant = None;
                    if up_to > r.allowed {
                        // The range starts above the standby's own mark (what it may have
                        // sent unpaired before it synced).
                        let from = (r.floor >= r.allowed).then(|| r.floor.saturating_add(1));
                        r.allowed = up_to;
                        spend(&mut self.spent, id, up_to);
                        // Not while the data plane is being capped for a handover.
                        if r.installed && !self.handing_over {
                            self.outputs.push_back(Output::Range { id, from, up_to });
                        }
                    }
                }
            }
            self.extend(id);
        }
    }

    /// Replicates a change the control core made (IKE SA, CHILD SA, lease, replay mark).
    /// A new outbound CHILD SA gets its first range through [`Output::Range`]: the control
    /// core installs it with nothing reserved (`Resume::seq_reserved = Some(resume.seq)`).
    pub fn record(&mut self, record: Record) -> Result<(), NotActive> {
        if self.role != Role::Active || self.handing_over {
            return Err(NotActive);
        }
        if let Record::IkeSa { bytes, .. } = &record {
            if bytes.len() > super::record::MAX_IKE_RECORD {
                self.stats.unexpected = self.stats.unexpected.saturating_add(1);
                return Ok(());
            }
        }
        self.table.apply(&record);
        match &record {
            Record::ChildSa { dir, params, .. } if *dir == Direction::Outbound => {
                let seq = params.resume.seq;
                let r = self.running.entry(params.id).or_insert(Running {
                    used: seq,
                    allowed: seq,
                    grant: None,
                    disk: None,
                    floor: 0,
                    installed: true,
                });
                r.used = r.used.max(seq);
                r.allowed = r.allowed.max(seq);
                let id = params.id;
                spend(&mut self.spent, id, seq);
                self.log_record(record);
                self.extend(id);
            }
            Record::ChildSaGone { key, .. } if key.dir_out => {
                self.running.remove(&key.id);
                if self.want.remove(&key.id).is_some() {
                    self.want_changes = self.want_changes.wrapping_add(1);
                }
                self.spent.remove(&key.id);
                self.log_record(record);
            }
            _ => self.log_record(record),
        }
        Ok(())
    }

    fn log_record(&mut self, record: Record) {
        if let Err(e) = self.log.append(record) {
            self.stats.out_of_sync = self.stats.out_of_sync.saturating_add(1);
            self.outputs
                .push_back(Output::Said(Said::StandbyOutOfSync { backlog: e.backlog }));
            self.unpair();
            self.start_snapshot();
        }
    }

    fn unpair(&mut self) {
        self.standby_in_sync = false;
        self.snapshot_end = None;
        for r in self.running.values_mut() {
            r.grant = None;
        }
        let ids: Vec<SaId> = self.running.keys().copied().collect();
        for id in ids {
            self.extend(id);
        }
    }

    fn start_snapshot(&mut self) {
        self.stats.snapshots_sent = self.stats.snapshots_sent.saturating_add(1);
        self.log.reset();
        self.standby_in_sync = false;
        let mut recs = vec![Record::SnapshotBegin { epoch: self.epoch }];
        recs.extend(self.table.snapshot());
        recs.push(Record::SnapshotEnd { epoch: self.epoch });
        self.snapshot_end = Some(self.log.append_snapshot(recs));
        for r in self.running.values_mut() {
            r.grant = None;
        }
    }

    /// A data-plane checkpoint of an outbound SA this node sends on.
    pub fn seq_checkpoint(&mut self, id: SaId, seq: u64) {
        if self.role != Role::Active {
            return;
        }
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        if seq <= r.used {
            return;
        }
        r.used = seq;
        self.table.apply(&Record::SeqCheckpoint { id, seq });
        self.log_record(Record::SeqCheckpoint { id, seq });
        self.extend(id);
    }

    /// Asks for more numbers for `id` if it runs short: a grant when paired, an own block on
    /// disk otherwise.
    fn extend(&mut self, id: SaId) {
        if self.role != Role::Active || self.handing_over {
            return;
        }
        let paired = self.paired();
        let plan = self.plan;
        let Some(r) = self.running.get_mut(&id) else {
            return;
        };
        if !plan.needs_more(r.used, r.allowed) {
            return;
        }
        if paired {
            if r.grant.is_some() {
                return;
            }
            let base = r.used.max(r.floor);
            let up_to = plan.grant_for(base);
            // Ours as soon as it is in the table: a snapshot carries it as the fence.
            self.table.apply(&Record::SeqGrant { id, up_to });
            let rec = Record::SeqGrant { id, up_to };
            match self.log.append(rec) {
                Ok(index) => {
                    self.stats.grants = self.stats.grants.saturating_add(1);
                    if let Some(r) = self.running.get_mut(&id) {
                        r.grant = Some((index, up_to));
                    }
                }
                Err(e) => {
                    self.stats.out_of_sync = self.stats.out_of_sync.saturating_add(1);
                    self.outputs
                        .push_back(Output::Said(Said::StandbyOutOfSync { backlog: e.backlog }));
                    self.unpair();
                    self.start_snapshot();
                }
            }
        } else {
            if r.disk.is_some() {
                return;
            }
            let (from, up_to) = plan.unpaired_extension(r.allowed.max(r.floor));
            if from == u64::MAX {
                return;
            }
            r.disk = Some((from, up_to));
            self.want_at_least(id, up_to);
            self.persist();
            // Not a grant (nobody acknowledges it) but the fence a standby that syncs later
            // must start above, like everything this node may send.
            self.table.apply(&Record::SeqGrant { id, up_to });
            self.log_record(Record::SeqGrant { id, up_to });
            // Reserved on disk already (while standby): no wait.
            self.open_on_disk(id);
        }
    }

    /// A standby keeps the range it would start `id` in at a takeover on disk ahead of time
    /// (reserved, unused: `spent` does not move), so a takeover sends at once. It writes two
    /// own blocks at a time, and again when the start enters the second of them.
    fn reserve(&mut self, id: SaId) {
        if self.role != Role::Standby {
            return;
        }
        let Some(c) = self.table.child(&ChildKey::new(Direction::Outbound, id)) else {
            return;
        };
        let spent = self.spent.get(&id).copied().unwrap_or(0);
        let from = self.plan.takeover_start(c.checkpoint, c.fence, spent);
        if from == u64::MAX {
            return;
        }
        // Written when the start enters the last reserved block: that block stays covered
        // while the next write is on its way.
        let have = self.want.get(&id).copied().unwrap_or(0);
        let up_to = self.plan.reservation(from);
        if have >= up_to {
            return;
        }
        self.want_at_least(id, up_to);
        self.stats.reservations = self.stats.reservations.saturating_add(1);
        self.persist();
    }

    /// `id`'s mark to be on disk is at least `up_to`.
    fn want_at_least(&mut self, id: SaId, up_to: u64) {
        let w = self.want.entry(id).or_insert(0);
        if *w < up_to {
            *w = up_to;
            self.want_changes = self.want_changes.wrapping_add(1);
        }
    }

    fn persist(&mut self) {
        if self.persist_inflight.is_some() || self.want_changes == self.written_changes {
            return;
        }
        self.persist_token = self.persist_token.saturating_add(1);
        self.persist_inflight = Some(self.persist_token);
        self.stats.persists = self.stats.persists.saturating_add(1);
        self.outputs.push_back(Output::Persist {
            token: self.persist_token,
            marks: self.want.clone(),
        });
        self.written_changes = self.want_changes;
    }

    /// The marks of `Output::Persist { token }` are on disk.
    pub fn persisted(&mut self, token: u64, marks: BTreeMap<SaId, u64>) {
        if self.persist_inflight != Some(token) {
            return;
        }
        self.persist_inflight = None;
        self.disk = marks;
        let ids: Vec<SaId> = self.running.keys().copied().collect();
        for id in ids {
            self.open_on_disk(id);
            self.extend(id);
        }
        self.persist();
    }

    /// Gives `id`'s data plane the unpaired range waiting for the disk once a mark on disk
    /// covers it (written for it, or reserved earlier); true if it did.
    fn open_on_disk(&mut self, id: SaId) -> bool {
        let on_disk = self.disk.get(&id).copied().unwrap_or(0);
        let (active, handing_over) = (self.role == Role::Active, self.handing_over);
        let Some(r) = self.running.get_mut(&id) else {
            return false;
        };
        let Some((from, up_to)) = r.disk else {
            return false;
        };
        if on_disk < up_to || !active || handing_over {
            return false;
        }
        r.disk = None;
        let jump = from != r.allowed.saturating_add(1);
        let first_install = !r.installed;
        if up_to <= r.allowed && !first_install {
            // A grant overtook the disk: nothing new.
            return false;
        }
        r.allowed = up_to;
        r.installed = true;
        spend(&mut self.spent, id, up_to);
        if first_install {
            self.outputs
                .push_back(Output::InstallOutbound { id, from, up_to });
        } else {
            self.outputs.push_back(Output::Range {
                id,
                from: jump.then_some(from),
                up_to,
            });
        }
        true
    }

    /// The drain of a planned switchover is over: the data plane lets go of the old SAs.
    fn end_drain(&mut self) {
        if self.draining.take().is_some() {
            self.outputs.push_back(Output::Deactivate);
        }
    }

    fn become_active(&mut self, now: u64) {
        self.end_drain();
        let peer_epoch = self.peer.map_or(0, |p| p.epoch);
        self.epoch = self.epoch.max(peer_epoch).saturating_add(1);
        self.role = Role::Active;
        self.receiving = false;
        self.log = SyncLog::new(
            self.applied.saturating_add(1),
            self.p.window,
            self.p.max_backlog,
        );
        self.standby_in_sync = false;
        self.snapshot_end = None;
        self.next_heartbeat = now;
        self.outputs.push_back(Output::Activate {
            epoch: self.epoch,
            handover: false,
        });
    }

    /// The standby takes over after silence: every SA from the replicated state, outbound
    /// ones above everything the old active may have used, in this node's own blocks and on
    /// disk first.
    fn take_over(&mut self, now: u64) {
        self.stats.takeovers = self.stats.takeovers.saturating_add(1);
        self.become_active(now);
        let plan = self.plan;
        let mut sas = 0usize;
        let entries: Vec<(ChildKey, u64, u64, Option<ReplayState>)> = self
            .table
            .children()
            .map(|(k, c)| (*k, c.checkpoint, c.fence, c.replay.clone()))
            .collect();
        for (key, checkpoint, fence, replay) in entries {
            sas = sas.saturating_add(1);
            if !key.dir_out {
                self.outputs
                    .push_back(Output::InstallInbound { id: key.id, replay });
                continue;
            }
            let mark = self.spent.get(&key.id).copied().unwrap_or(0);
            let from = plan.takeover_start(checkpoint, fence, mark);
            if from == u64::MAX {
                continue;
            }
            let up_to = plan.block_end(from);
            self.table.apply(&Record::SeqGrant { id: key.id, up_to });
            self.want_at_least(key.id, up_to);
            self.running.insert(
                key.id,
                Running {
                    used: from.saturating_sub(1),
                    allowed: from.saturating_sub(1),
                    grant: None,
                    disk: Some((from, up_to)),
                    floor: 0,
                    installed: false,
                },
            );
            // Reserved on disk while standby and known unused: it sends at once.
            if self.open_on_disk(key.id) {
                self.stats.reserved_starts = self.stats.reserved_starts.saturating_add(1);
                self.extend(key.id);
            }
        }
        self.outputs.push_back(Output::Said(Said::TookOver {
            epoch: self.epoch,
            sas,
        }));
        self.persist();
    }

    fn fence(&mut self, by_epoch: u64) {
        self.stats.fenced = self.stats.fenced.saturating_add(1);
        self.role = Role::Fenced;
        self.running.clear();
        self.log.reset();
        self.standby_in_sync = false;
        self.snapshot_end = None;
        self.handing_over = false;
        self.draining = None;
        self.outputs.push_back(Output::Deactivate);
        self.outputs
            .push_back(Output::Said(Said::Fenced { by_epoch }));
        self.control
            .push_back(Message::SnapshotRequest { epoch: by_epoch });
        self.receiving = true;
    }

    /// A planned switchover, make-before-break: refused unless this node is active with a
    /// standby in sync. The data plane caps every outbound SA at `switchover_margin` numbers
    /// past the last one it used ([`Output::Cap`]); [`Node::capped`] hands over above the caps.
    pub fn switchover(&mut self) -> Result<(), NotActive> {
        if !self.paired() || self.handing_over {
            return Err(NotActive);
        }
        self.handing_over = true;
        self.outputs.push_back(Output::Cap {
            ahead: self.p.switchover_margin,
        });
        Ok(())
    }

    /// The data plane's ceilings after [`Output::Cap`] (an SA missing here counts at its
    /// fence: every range it was given, every grant and disk extension asked for). The log
    /// gets each ceiling as a checkpoint and a grant above it for the new active, then the
    /// `Handover`. This node becomes the standby at once but its data plane drains
    /// ([`Output::Draining`]): it goes on sending below the ceilings (and receiving) until
    /// the new active, which starts right above them, has announced the addresses and the
    /// traffic has moved.
    pub fn capped(&mut self, now: u64, caps: &[(SaId, u64)]) {
        if self.role != Role::Active || !self.handing_over {
            return;
        }
        self.handing_over = false;
        // The handover's entries bypass the bound (a reset now would lose the handover):
        // they are the last this node logs, to a standby that is current.
        let mut last_words = Vec::new();
        let sas: Vec<(SaId, Running)> = self.running.iter().map(|(i, r)| (*i, *r)).collect();
        for (id, r) in sas {
            let fence = self
                .table
                .child(&ChildKey::new(Direction::Outbound, id))
                .map_or(0, |c| c.fence)
                .max(r.allowed)
                .max(r.disk.map_or(0, |d| d.1));
            let top = caps
                .iter()
                .find(|c| c.0 == id)
                .map_or(fence, |c| c.1.min(fence))
                .max(r.used);
            self.table.apply(&Record::SeqCheckpoint { id, seq: top });
            last_words.push(Record::SeqCheckpoint { id, seq: top });
            let up_to = self.plan.grant_for(top.max(r.floor));
            self.table.apply(&Record::SeqGrant { id, up_to });
            last_words.push(Record::SeqGrant { id, up_to });
        }
        let next = self.epoch.saturating_add(1);
        last_words.push(Record::Handover { epoch: next });
        let last = self.log.append_snapshot(last_words);
        self.outputs.push_back(Output::Draining);
        self.draining = Some(u64::MAX);
        self.running.clear();
        self.role = Role::Standby;
        self.active_heard = now;
        self.epoch = next;
        self.standby_in_sync = false;
        self.applied = last;
        self.outputs
            .push_back(Output::Said(Said::SwitchedOver { epoch: next }));
    }

    fn accept_handover(&mut self, now: u64, epoch: u64) {
        self.end_drain();
        self.role = Role::Active;
        self.epoch = epoch;
        self.log = SyncLog::new(
            self.applied.saturating_add(1),
            self.p.window,
            self.p.max_backlog,
        );
        // The old active applied everything up to the handover: it is our standby, in sync.
        self.standby_in_sync = true;
        self.snapshot_end = None;
        self.next_heartbeat = now;
        self.outputs.push_back(Output::Activate {
            epoch,
            handover: true,
        });
        let entries: Vec<(ChildKey, u64, u64, Option<ReplayState>)> = self
            .table
            .children()
            .map(|(k, c)| (*k, c.checkpoint, c.fence, c.replay.clone()))
            .collect();
        let mut waiting = false;
        for (key, checkpoint, fence, replay) in entries {
            if !key.dir_out {
                self.outputs
                    .push_back(Output::InstallInbound { id: key.id, replay });
                continue;
            }
            // The old active sends at most `checkpoint` (its fence) while it drains and granted
            // us up to `fence`. Our
            // own earlier unpaired numbers (the disk mark) stay behind us.
            let mark = self.spent.get(&key.id).copied().unwrap_or(0);
            let from = checkpoint.max(mark).saturating_add(1);
            if from <= fence {
                spend(&mut self.spent, key.id, fence);
                self.running.insert(
                    key.id,
                    Running {
                        used: from.saturating_sub(1),
                        allowed: fence,
                        grant: None,
                        disk: None,
                        floor: 0,
                        installed: true,
                    },
                );
                self.outputs.push_back(Output::InstallOutbound {
                    id: key.id,
                    from,
                    up_to: fence,
                });
            } else {
                let from = self.plan.next_own(fence.max(mark));
                let up_to = self.plan.block_end(from);
                self.table.apply(&Record::SeqGrant { id: key.id, up_to });
                self.want_at_least(key.id, up_to);
                self.running.insert(
                    key.id,
                    Running {
                        used: from.saturating_sub(1),
                        allowed: from.saturating_sub(1),
                        grant: None,
                        disk: Some((from, up_to)),
                        floor: 0,
                        installed: false,
                    },
                );
                // Reserved while standby, unused: no wait for the disk.
                if self.open_on_disk(key.id) {
                    self.stats.reserved_starts = self.stats.reserved_starts.saturating_add(1);
                } else {
                    waiting = true;
                }
            }
        }
        if waiting {
            self.persist();
        }
        self.outputs
            .push_back(Output::Said(Said::SwitchedOver { epoch }));
    }
}

/// `id`'s data plane may send up to `up_to` from now on.
fn spend(spent: &mut BTreeMap<SaId, u64>, id: SaId, up_to: u64) {
    let s = spent.entry(id).or_insert(0);
    *s = (*s).max(up_to);
}
