//! A three-party virtual-time harness: two nodes of a pair, each with a fake data plane that
//! sends on the pair's outbound SAs at a fixed rate, and the remote peer that receives them.
//! Every (SPI, sequence number) any node sends is recorded: one sent twice fails the test at
//! once. Faults: kill (state gone, disk kept), freeze (nothing runs, messages wait), link cut
//! (messages in flight lost, reconnect later), planned switchover.

use std::collections::{BTreeMap, HashMap, VecDeque};

use proto::sa::Checkpoint;
use proto::{Direction, SaId};

use super::node::{HaParams, Node, Output, Said};
use super::record::{ChildKey, Record, Role};
use super::testing::child_params;

mod scenarios;

pub const SAS: u32 = 3;
/// Packets per millisecond per SA.
pub const RATE: u64 = 10;

pub fn params(slot: u8, priority: u8) -> HaParams {
    HaParams {
        slot,
        priority,
        heartbeat_ms: 30,
        detection_ms: 150,
        checkpoint: Checkpoint {
            packets: 256,
            millis: 20,
        },
        max_pps: RATE * 1000,
        window: 64,
        max_backlog: 4096,
        switchover_margin: 64,
    }
}

#[derive(Default)]
struct DpSa {
    spi: u32,
    next: u64,
    up_to: u64,
    last_cp: u64,
    last_cp_ms: u64,
}

#[derive(Default)]
struct DataPlane {
    active: bool,
    /// After a planned switchover: sends only while the traffic still comes here.
    draining: bool,
    sas: BTreeMap<SaId, DpSa>,
}

pub struct Slot {
    pub node: Option<Node>,
    dp: DataPlane,
    pub disk: BTreeMap<SaId, u64>,
    persists: Vec<(u64, u64, BTreeMap<SaId, u64>)>,
    pub frozen: bool,
    inbox: VecDeque<(u64, Vec<u8>)>,
    pub said: Vec<Said>,
    /// First and last sequence number this node sent per SPI.
    pub sent: BTreeMap<u32, (u64, u64)>,
}

pub struct Sim {
    pub now: u64,
    pub slots: [Slot; 2],
    pub link: bool,
    pub link_delay: u64,
    pub persist_delay: u64,
    /// (SPI, seq) -> slot that sent it.
    audit: HashMap<(u32, u64), usize>,
    /// The peer: the highest number received per SPI, and the arrival times.
    pub peer_top: BTreeMap<u32, u64>,
    pub last_arrival: BTreeMap<u32, u64>,
    pub longest_gap: u64,
    pub packets: u64,
    pub behind_window: u64,
    /// Jumps the peer saw (new number minus the top before it), largest.
    pub largest_jump: u64,
    next_sa: u32,
    /// The node whose addresses were announced last: the traffic arrives there.
    pub steer: Option<usize>,
    /// Packets that arrived at the steered node with no SA there to send them on.
    pub lost: u64,
    /// Messages this slot sends are lost (a one-way silence).
    pub mute: Option<usize>,
    /// Stop the data plane at once on `Draining` (no make-before-break), to show the loss.
    pub stop_on_drain: bool,
}

impl Slot {
    fn new(node: Node) -> Slot {
        Slot {
            node: Some(node),
            dp: DataPlane::default(),
            disk: BTreeMap::new(),
            persists: Vec::new(),
            frozen: false,
            inbox: VecDeque::new(),
            said: Vec::new(),
            sent: BTreeMap::new(),
        }
    }

    pub fn role(&self) -> Option<Role> {
        self.node.as_ref().map(Node::role)
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node alive")
    }
}

impl Sim {
    /// Two nodes: slot 0 with the higher priority.
    pub fn new() -> Sim {
        Sim::with(params(0, 200), params(1, 100))
    }

    pub fn with(a: HaParams, b: HaParams) -> Sim {
        Sim {
            now: 0,
            slots: [
                Slot::new(Node::new(a, BTreeMap::new(), 0)),
                Slot::new(Node::new(b, BTreeMap::new(), 0)),
            ],
            link: true,
            link_delay: 1,
            persist_delay: 2,
            audit: HashMap::new(),
            peer_top: BTreeMap::new(),
            last_arrival: BTreeMap::new(),
            longest_gap: 0,
            packets: 0,
            behind_window: 0,
            largest_jump: 0,
            next_sa: 1,
            steer: None,
            lost: 0,
            stop_on_drain: false,
            mute: None,
        }
    }

    pub fn active(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| self.slots[i].role() == Some(Role::Active) && !self.slots[i].frozen)
            .collect()
    }

    /// The active's control core makes `n` CHILD SAs (both directions).
    pub fn add_sas(&mut self, n: u32) {
        let i = self.active()[0];
        for _ in 0..n {
            let id = SaId(self.next_sa);
            let spi = 0x1000 + self.next_sa;
            self.next_sa += 1;
            for dir in [Direction::Inbound, Direction::Outbound] {
                let mut p = child_params(
                    id,
                    if dir == Direction::Inbound {
                        spi + 0x8000
                    } else {
                        spi
                    },
                );
                p.resume.seq = 0;
                let node = self.slots[i].node.as_mut().unwrap();
                node.record(Record::ChildSa {
                    version: 1,
                    dir,
                    params: Box::new(p),
                })
                .unwrap();
                if dir == Direction::Outbound {
                    // Installed with nothing reserved: ranges come from the pair.
                    self.slots[i].dp.sas.insert(
                        id,
                        DpSa {
                            spi,
                            next: 1,
                            up_to: 0,
                            last_cp: 0,
                            last_cp_ms: self.now,
                        },
                    );
                }
            }
        }
    }

    pub fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Runs until `f` holds (at most `ms`); the time it took.
    pub fn run_until(&mut self, ms: u64, f: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        for _ in 0..ms {
            if f(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        f(self).then_some(self.now - start)
    }

    pub fn kill(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.node = None;
        s.dp = DataPlane::default();
        s.persists.clear();
        s.inbox.clear();
        s.frozen = false;
    }

    /// A node comes back with its disk.
    pub fn restart(&mut self, i: usize, p: HaParams) {
        let disk = self.slots[i].disk.clone();
        self.slots[i].node = Some(Node::new(p, disk, self.now));
        self.slots[i].dp = DataPlane::default();
        if let Some(n) = self.slots[i].node.as_mut() {
            n.link_up(self.now);
        }
    }

    pub fn cut(&mut self) {
        self.link = false;
        for s in &mut self.slots {
            s.inbox.clear();
        }
    }

    pub fn heal(&mut self) {
        self.link = true;
        let now = self.now;
        for s in &mut self.slots {
            if let Some(n) = s.node.as_mut() {
                n.link_up(now);
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        let now = self.now;
        for i in 0..2 {
            if self.slots[i].frozen || self.slots[i].node.is_none() {
                continue;
            }
            // Messages.
            while self.slots[i].inbox.front().is_some_and(|m| m.0 <= now) {
                let (_, bytes) = self.slots[i].inbox.pop_front().unwrap();
                self.slots[i]
                    .node
                    .as_mut()
                    .unwrap()
                    .handle_message(now, &bytes);
            }
            // Disk.
            let due: Vec<_> = {
                let s = &mut self.slots[i];
                let (due, rest) = s.persists.drain(..).partition(|p| p.0 <= now);
                s.persists = rest;
                due
            };
            for (_, token, marks) in due {
                self.slots[i].disk = marks.clone();
                self.slots[i].node.as_mut().unwrap().persisted(token, marks);
            }
            let node = self.slots[i].node.as_mut().unwrap();
            if now >= node.poll_timeout() {
                node.handle_timeout(now);
            }
            self.outputs(i);
            self.send_packets(i);
            self.outputs(i);
            // To the other node.
            let mut out = Vec::new();
            while let Some(m) = self.slots[i].node.as_mut().unwrap().poll_message() {
                out.push(m.to_vec());
            }
            if self.link && self.mute != Some(i) {
                let at = now + self.link_delay;
                let other = &mut self.slots[1 - i];
                if other.node.is_some() {
                    other.inbox.extend(out.into_iter().map(|m| (at, m)));
                }
            }
        }
    }

    fn outputs(&mut self, i: usize) {
        let now = self.now;
        while let Some(o) = self.slots[i].node.as_mut().unwrap().poll_output() {
            let s = &mut self.slots[i];
            match o {
                Output::Activate { .. } => {
                    s.dp.active = true;
                    self.steer = Some(i);
                }
                Output::Deactivate => s.dp = DataPlane::default(),
                Output::InstallInbound { .. } => {}
                Output::InstallOutbound { id, from, up_to } => {
                    let node = s.node.as_ref().unwrap();
                    let spi = node
                        .table()
                        .child(&ChildKey::new(Direction::Outbound, id))
                        .unwrap()
                        .params
                        .spi
                        .0;
                    s.dp.sas.insert(
                        id,
                        DpSa {
                            spi,
                            next: from,
                            up_to,
                            last_cp: from - 1,
                            last_cp_ms: now,
                        },
                    );
                }
                Output::Range { id, from, up_to } => {
                    if let Some(sa) = s.dp.sas.get_mut(&id) {
                        sa.up_to = sa.up_to.max(up_to);
                        if let Some(f) = from {
                            sa.next = sa.next.max(f);
                        }
                    }
                }
                Output::Persist { token, marks } => {
                    s.persists.push((now + self.persist_delay, token, marks));
                }
                Output::Cap { ahead } => {
                    let mut caps = Vec::new();
                    for (id, sa) in &mut s.dp.sas {
                        sa.up_to = sa.up_to.min((sa.next - 1).saturating_add(ahead));
                        caps.push((*id, sa.up_to));
                    }
                    s.node.as_mut().unwrap().capped(now, &caps);
                }
                Output::Draining => {
                    s.dp.draining = true;
                    s.dp.active &= !self.stop_on_drain;
                }
                Output::Said(x) => s.said.push(x),
            }
        }
    }

    fn send_packets(&mut self, i: usize) {
        let now = self.now;
        let cp = self.slots[i].node().plan().checkpoint;
        let steered = self.steer == Some(i);
        let s = &mut self.slots[i];
        if steered {
            // What the traffic source sends this node and it cannot seal: lost.
            let sas = u64::from(self.next_sa - 1);
            let room: u64 = if s.dp.active {
                s.dp.sas
                    .values()
                    .map(|sa| (sa.up_to + 1).saturating_sub(sa.next).min(RATE))
                    .sum()
            } else {
                0
            };
            self.lost += (sas * RATE).saturating_sub(room);
        }
        if !s.dp.active || (s.dp.draining && !steered) {
            return;
        }
        let mut checkpoints = Vec::new();
        for (id, sa) in &mut s.dp.sas {
            for _ in 0..RATE {
                if sa.next > sa.up_to {
                    break;
                }
                let seq = sa.next;
                sa.next += 1;
                if let Some(prev) = self.audit.insert((sa.spi, seq), i) {
                    panic!(
                        "nonce reuse at {now} ms: SPI {:#x} seq {seq} sent by slot {prev} and slot {i}",
                        sa.spi
                    );
                }
                let e = s.sent.entry(sa.spi).or_insert((seq, seq));
                e.1 = e.1.max(seq);
                // The peer.
                self.packets += 1;
                let top = self.peer_top.entry(sa.spi).or_insert(0);
                if seq > *top {
                    self.largest_jump = self.largest_jump.max(seq - *top);
                    *top = seq;
                } else if *top - seq >= 1024 {
                    self.behind_window += 1;
                }
                if let Some(last) = self.last_arrival.insert(sa.spi, now) {
                    self.longest_gap = self.longest_gap.max(now - last);
                }
            }
            let used = sa.next - 1;
            if used > sa.last_cp
                && (used - sa.last_cp >= cp.packets || now - sa.last_cp_ms >= cp.millis)
            {
                sa.last_cp = used;
                sa.last_cp_ms = now;
                checkpoints.push((*id, used));
            }
        }
        let node = s.node.as_mut().unwrap();
        for (id, seq) in checkpoints {
            node.seq_checkpoint(id, seq);
        }
    }

    /// Both nodes hold the same state (compared once the log is idle).
    pub fn tables_agree(&self) -> bool {
        match (&self.slots[0].node, &self.slots[1].node) {
            (Some(a), Some(b)) => a.table().summary() == b.table().summary(),
            _ => false,
        }
    }

    /// A pair in steady state: slot 0 active, slot 1 standby, `SAS` SAs, traffic flowing.
    pub fn steady() -> Sim {
        let mut sim = Sim::new();
        sim.run_until(1000, |s| {
            s.slots[0].role() == Some(Role::Active) && s.slots[1].role() == Some(Role::Standby)
        })
        .expect("a pair forms");
        sim.add_sas(SAS);
        sim.run(500);
        assert!(sim.slots[0].node().paired());
        assert_eq!(sim.active(), vec![0]);
        sim
    }
}
