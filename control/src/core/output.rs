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
//! Coalescing: a policy (`ReplaceSpd`) still waiting in the queue is superseded by a newer
//! one for the same worker when only installs come between them (nothing the older policy
//! refers to goes away in between; another worker's policy takes nothing away), so a burst of new CHILD_SAs compiles the SPD once, not
//! once each. Datagrams queued between the two move behind the newer policy: a datagram may
//! always wait for more updates, never for fewer.
//!
//! Owns: the order of outputs, coalescing of policies.
//! Must never: let a datagram move ahead of an update queued before it.

use std::collections::VecDeque;

use proto::{Datagram, Update};

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
}

/// The ordered queue of [`Output`]s.
#[derive(Debug, Default)]
pub struct Outputs {
    q: VecDeque<Output>,
}

impl Outputs {
    pub fn pop(&mut self) -> Option<Output> {
        self.q.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Output> {
        self.q.iter()
    }

    pub fn transmit(&mut self, d: Datagram) {
        self.q.push_back(Output::Transmit(d));
    }

    pub fn log(&mut self, line: String) {
        self.q.push_back(Output::Log { line, error: false });
    }

    pub fn error(&mut self, line: String) {
        self.q.push_back(Output::Log { line, error: true });
    }

    pub fn view(&mut self, json: String) {
        // Only the newest view matters.
        self.q.retain(|o| !matches!(o, Output::View(_)));
        self.q.push_back(Output::View(json));
    }

    /// Queues `update` for `worker`, superseding a waiting policy of that worker (see the
    /// module doc).
    pub fn update(&mut self, worker: u16, update: Update) {
        let moved = if matches!(update, Update::ReplaceSpd { .. }) {
            self.supersede_policy(worker)
        } else {
            Vec::new()
        };
        self.q.push_back(Output::Update { worker, update });
        self.q.extend(moved);
    }

    /// Removes a waiting policy of `worker` that the next one makes useless; returns the
    /// datagrams that were queued after it, to go after the next one.
    fn supersede_policy(&mut self, worker: u16) -> Vec<Output> {
        let Some(pos) = self.q.iter().rposition(|o| {
            matches!(o, Output::Update { worker: w, update: Update::ReplaceSpd { .. } } if *w == worker)
        }) else {
            return Vec::new();
        };
        let only_installs = self.q.iter().skip(pos + 1).all(|o| match o {
            // Another worker's policy takes nothing away from this one.
            Output::Update {
                worker: w,
                update: Update::ReplaceSpd { .. },
            } => *w != worker,
            Output::Update { update, .. } => {
                matches!(update, Update::AddSa { .. } | Update::SetVirtualIp { .. })
            }
            Output::Transmit(_) | Output::Log { .. } | Output::View(_) => true,
        });
        if !only_installs {
            return Vec::new();
        }
        let _ = self.q.remove(pos);
        // Datagrams that waited for the old policy wait for the new one (queued next).
        let mut moved = Vec::new();
        let mut i = pos;
        while i < self.q.len() {
            if matches!(self.q.get(i), Some(Output::Transmit(_))) {
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
