//! The core's outputs, in the one order the driver must keep.
//!
//! The queue is the contract between the core and its drivers: outputs leave in the order
//! they were queued, and an [`Output::Transmit`] may reach the wire only after every
//! [`Output::Update`] queued before it was applied by its worker. That is what keeps an IKE
//! message from overtaking the data-plane change it follows: a rekey's DELETE leaving before
//! the policy moved to the new SA lets packets sealed with the old one arrive after the peer
//! removed it; an IKE_AUTH answer leaving before its CHILD_SA's inbound SA is installed lets
//! the peer send on it too early. Any output that must happen before a datagram (a durable
//! record of the IKE SA it advances, say) is queued before it and carries the same rule.
//!
//! [`Output::Persist`] is such an output: the core places it ahead of the updates and datagrams
//! of the input that changed the IKE SA ([`Outputs::insert_at_mark`]).
//!
//! Coalescing: a policy (`ReplaceSpd`) still waiting in the queue is superseded by a newer
//! one for the same worker when only installs come between them (nothing the older policy
//! refers to goes away in between; another worker's policy takes nothing away), so a burst of new CHILD_SAs compiles the SPD once, not
//! once each. Datagrams queued between the two move behind the newer policy: a datagram may
//! always wait for more updates, never for fewer.
//!
//! Owns: the order of outputs, coalescing of policies.
//! Must never: let a datagram move ahead of an update queued before it.

use std::collections::VecDeque;

use ike::IkeSaId;
use proto::{Datagram, Update};

use super::durable::StoredBytes;

/// One thing the core asks its driver to do.
// An update carries its SA's keys inline (an AES-CBC SA's HMAC key is boxed, the rest is not):
// outputs are queued a handful per exchange, and boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Output {
    /// Deliver `update` to worker `worker` of the data plane.
    Update { worker: u16, update: Update },
    /// Send this IKE datagram, once every update queued before it is applied.
    Transmit(Datagram),
    /// A line for the operator's log (`error`: for stderr).
    Log { line: String, error: bool },
    /// The IKE view (JSON, never keys) was rebuilt.
    View(String),
    /// Write these IKE SAs' stored state durably, all or none (an IKE SA rekey changes two
    /// at once), before anything queued after it happens (`durable`: persist before send).
    Persist(Vec<(IkeSaId, StoredBytes)>),
    /// IKE SA `ike` went: remove its stored state.
    Forget { ike: IkeSaId },
}

/// The ordered queue of [`Output`]s.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Each output with the number it was queued under (a mark for
    /// [`insert_at_mark`](Outputs::insert_at_mark)).
    q: VecDeque<(u64, Output)>,
    next: u64,
}

impl Outputs {
    pub fn pop(&mut self) -> Option<Output> {
        self.q.pop_front().map(|(_, o)| o)
    }

    /// The number the next output will be queued under.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Queues `o` ahead of everything queued since `mark` (and behind everything before it).
    pub fn insert_at_mark(&mut self, mark: u64, o: Output) {
        let at = self
            .q
            .iter()
            .position(|(n, _)| *n >= mark)
            .unwrap_or(self.q.len());
        self.q.insert(at, (mark, o));
    }

    fn push(&mut self, o: Output) {
        self.q.push_back((self.next, o));
        self.next += 1;
    }

    pub fn forget(&mut self, ike: IkeSaId) {
        self.push(Output::Forget { ike });
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Output> {
        self.q.iter().map(|(_, o)| o)
    }

    pub fn transmit(&mut self, d: Datagram) {
        self.push(Output::Transmit(d));
    }

    pub fn log(&mut self, line: String) {
        self.push(Output::Log { line, error: false });
    }

    pub fn error(&mut self, line: String) {
        self.push(Output::Log { line, error: true });
    }

    pub fn view(&mut self, json: String) {
        // Only the newest view matters.
        self.q.retain(|(_, o)| !matches!(o, Output::View(_)));
        self.push(Output::View(json));
    }

    /// Queues `update` for `worker`, superseding a waiting policy of that worker (see the
    /// module doc).
    pub fn update(&mut self, worker: u16, update: Update) {
        let moved = if matches!(update, Update::ReplaceSpd { .. }) {
            self.supersede_policy(worker)
        } else {
            Vec::new()
        };
        self.push(Output::Update { worker, update });
        self.q.extend(moved);
    }

    /// Removes a waiting policy of `worker` that the next one makes useless; returns the
    /// datagrams that were queued after it, to go after the next one.
    fn supersede_policy(&mut self, worker: u16) -> Vec<(u64, Output)> {
        let Some(pos) = self.q.iter().rposition(|(_, o)| {
            matches!(o, Output::Update { worker: w, update: Update::ReplaceSpd { .. } } if *w == worker)
        }) else {
            return Vec::new();
        };
        let only_installs = self.q.iter().skip(pos + 1).all(|(_, o)| match o {
            // Another worker's policy takes nothing away from this one.
            Output::Update {
                worker: w,
                update: Update::ReplaceSpd { .. },
            } => *w != worker,
            Output::Update { update, .. } => {
                matches!(update, Update::AddSa { .. } | Update::SetVirtualIp { .. })
            }
            Output::Transmit(_)
            | Output::Log { .. }
            | Output::View(_)
            | Output::Persist(_)
            | Output::Forget { .. } => true,
        });
        if !only_installs {
            return Vec::new();
        }
        let _ = self.q.remove(pos);
        // Datagrams that waited for the old policy wait for the new one (queued next).
        let mut moved = Vec::new();
        let mut i = pos;
        while i < self.q.len() {
            if matches!(self.q.get(i), Some((_, Output::Transmit(_)))) {
                if let Some(o) = self.q.remove(i) {
                    moved.push(o);
                }
            } else {
                i += 1;
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::SaId;

    fn dgram(n: u8) -> Datagram {
        Datagram {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            src_port: 500,
            dst_port: 500,
            payload: vec![n],
        }
    }

    fn kinds(o: &Outputs) -> Vec<String> {
        o.iter()
            .map(|o| match o {
                Output::Update { worker, update } => match update {
                    Update::ReplaceSpd { rules } => format!("spd{worker}:{}", rules.len()),
                    Update::AddSa { .. } => format!("add{worker}"),
                    Update::DeleteOutbound { .. } => format!("del{worker}"),
                    _ => format!("other{worker}"),
                },
                Output::Transmit(d) => format!("tx{}", d.payload[0]),
                Output::Log { .. } => "log".into(),
                Output::View(_) => "view".into(),
                Output::Persist(_) => "persist".into(),
                Output::Forget { .. } => "forget".into(),
            })
            .collect()
    }

    fn spd(n: usize) -> Update {
        let rules = (0..n)
            .map(|i| proto::policy::Rule {
                id: i as u32,
                selector: proto::policy::Selector {
                    src: "10.1.0.0/24".parse().unwrap(),
                    dst: "10.2.0.0/24".parse().unwrap(),
                    proto: None,
                    src_ports: proto::policy::PortRange::ANY,
                    dst_ports: proto::policy::PortRange::ANY,
                },
                action: proto::policy::Action::Bypass,
            })
            .collect();
        Update::ReplaceSpd { rules }
    }

    #[test]
    fn policies_separated_only_by_installs_coalesce_and_datagrams_wait_for_the_newer_one() {
        let mut o = Outputs::default();
        o.update(0, spd(1));
        o.transmit(dgram(1));
        o.update(0, spd(2));
        o.transmit(dgram(2));
        o.update(0, spd(3));
        assert_eq!(kinds(&o), ["spd0:3", "tx1", "tx2"]);
    }

    #[test]
    fn an_output_inserted_at_a_mark_goes_ahead_of_everything_queued_since() {
        let mut o = Outputs::default();
        o.transmit(dgram(1));
        let mark = o.mark();
        o.update(0, Update::DeleteOutbound { id: SaId(9) });
        o.transmit(dgram(2));
        o.insert_at_mark(
            mark,
            Output::Forget {
                ike: ike::IkeSaId(ike::IkeSpi(7)),
            },
        );
        assert_eq!(kinds(&o), ["tx1", "forget", "del0", "tx2"]);
        // A policy that supersedes one from before the mark moves nothing ahead of it.
        let mut o = Outputs::default();
        o.update(0, spd(1));
        let mark = o.mark();
        o.update(0, spd(2));
        o.transmit(dgram(3));
        o.insert_at_mark(
            mark,
            Output::Forget {
                ike: ike::IkeSaId(ike::IkeSpi(7)),
            },
        );
        assert_eq!(kinds(&o), ["forget", "spd0:2", "tx3"]);
    }

    #[test]
    fn a_policy_before_a_delete_stays() {
        let mut o = Outputs::default();
        o.update(0, spd(1));
        o.update(0, Update::DeleteOutbound { id: SaId(9) });
        o.update(0, spd(2));
        assert_eq!(kinds(&o), ["spd0:1", "del0", "spd0:2"]);
    }

    #[test]
    fn each_worker_coalesces_its_own_policy() {
        let mut o = Outputs::default();
        o.update(0, spd(1));
        o.update(1, spd(1));
        o.transmit(dgram(1));
        o.update(0, spd(2));
        // Worker 1's policy stays; the datagram waits behind worker 0's newer one.
        assert_eq!(kinds(&o), ["spd1:1", "spd0:2", "tx1"]);
    }
}
