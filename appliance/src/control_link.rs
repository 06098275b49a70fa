//! The control process's end of the shared-memory control channel, as a
//! [`control::driver::Link`]: updates (with generations) to each worker's ring and their
//! acknowledgements back, punted IKE datagrams in (two lanes, read in turn: [`Lanes`]), datagrams to send out, the workers'
//! reports in.
//!
//! A datagram is written after the updates queued before it are written: the data plane
//! (`shm_link`) reads the transmit ring before the update rings and holds each datagram until
//! its workers applied the updates read before it, so "written" is as far as this end needs
//! to wait ([`Link::released`]).
//!
//! Restarts: a data plane announces itself with an acknowledgement of generation 0 ("I am
//! empty"): what waited for it is dropped, it gets the file's static SAs (outbound ones
//! resumed past everything a dead data plane could have used: `seq_state`) and masquerade
//! (`gateway.masquerade`, which the core knows nothing of), and the core is
//! told the worker is fresh (its inbound SAs and the policy again, every CHILD_SA rekeyed).
//! One that re-attaches after a control-plane restart announces `u64::MAX` ("I keep what I
//! have") and is left forwarding on its SAs. A static SA's checkpoint moves its reservation
//! on here, on disk before the update that raises it is written.
//!
//! Owns: the rings of the channel, generations, the static SAs' reservations.
//! Must never: decide about negotiated SAs (the core does); write a datagram before the
//! updates queued ahead of it.

use std::collections::VecDeque;

use control::driver::{Input, Lanes, Link, LinkError};
use pipeline::shm::{ControlChannel, Receiver, SendError, Sender};
use proto::nat::MasqueradeConfig;
use proto::sa::SaParams;
use proto::{Ack, Datagram, Direction, Event, Update, UpdateEnvelope};

use crate::seq_state::SeqKeeper;

/// The generation a fresh data plane acknowledges first.
pub const HELLO_FRESH: u64 = 0;
/// The generation a data plane that keeps its SAs acknowledges first.
pub const HELLO_KEEP: u64 = u64::MAX;

struct WorkerEnds {
    updates: Sender<UpdateEnvelope>,
    acks: Receiver<Ack>,
    backlog: VecDeque<UpdateEnvelope>,
    /// The generation of the last update written to the ring (or dropped unwritten for a
    /// data plane that restarted: nothing will ever apply it).
    written: u64,
}

pub struct ShmControlLink {
    ends: Vec<WorkerEnds>,
    punt: Receiver<Datagram>,
    /// The punt's cookie lane, read in turn with `punt` ([`Lanes`]).
    punt_cookie: Receiver<Datagram>,
    lanes: Lanes,
    transmit: Sender<Datagram>,
    events: Receiver<Event>,
    generation: u64,
    inputs: VecDeque<Input>,
    keeper: Option<SeqKeeper>,
    static_sas: Vec<(Direction, SaParams)>,
    /// `gateway.masquerade`, sent to each worker when it is fresh.
    masquerade: Option<MasqueradeConfig>,
    /// What stopped this link (a state file that cannot be written): the caller stops.
    pub fatal: Option<anyhow::Error>,
}

impl ShmControlLink {
    pub fn new(
        ch: &ControlChannel,
        workers: u16,
        keeper: Option<SeqKeeper>,
        static_sas: Vec<(Direction, SaParams)>,
        masquerade: Option<MasqueradeConfig>,
    ) -> anyhow::Result<ShmControlLink> {
        let mut ends = Vec::new();
        for w in 0..workers {
            ends.push(WorkerEnds {
                updates: ch.update_sender(w)?,
                acks: ch.ack_receiver(w)?,
                backlog: VecDeque::new(),
                written: 0,
            });
        }
        Ok(ShmControlLink {
            ends,
            punt: ch.punt_receiver()?,
            punt_cookie: ch.punt_cookie_receiver()?,
            lanes: Lanes::default(),
            transmit: ch.transmit_sender()?,
            events: ch.event_receiver()?,
            generation: 0,
            inputs: VecDeque::new(),
            keeper,
            static_sas,
            masquerade,
            fatal: None,
        })
    }

    fn queue(&mut self, w: u16, update: Update) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        if let Some(e) = self.ends.get_mut(usize::from(w)) {
            e.backlog.push_back(UpdateEnvelope { generation, update });
        }
        generation
    }

    /// Worker `w` is empty: what waited for it goes, the static SAs come first.
    fn fresh(&mut self, w: u16) {
        tracing::info!(target: "control",
            "data plane worker {w} is fresh: inbound SAs and policy again, every CHILD_SA rekeyed"
        );
        let last = self.generation;
        if let Some(e) = self.ends.get_mut(usize::from(w)) {
            e.backlog.clear();
            e.written = e.written.max(last);
        }
        let mut sas = self.static_sas.clone();
        if let Some(k) = self.keeper.as_mut() {
            if let Err(err) = k.start(&mut sas) {
                self.fatal = Some(err);
                return;
            }
        }
        // Each static SA to its owner only (an outbound SA has one sequence counter: one
        // worker seals with it); the others hand its packets over.
        let mut placement = control::core::placement::Placement::new(self.ends.len() as u16);
        for (dir, params) in sas {
            let to_w = placement
                .route(Update::AddSa { dir, params }, |_, _| None)
                .into_iter()
                .filter(|(owner, _)| *owner == w);
            for (_, u) in to_w {
                self.queue(w, u);
            }
        }
        // The masquerade of bypassed traffic, on every worker (each hands out its own share
        // of the ports).
        if let Some(config) = self.masquerade.clone() {
            self.queue(
                w,
                Update::SetMasquerade {
                    config: Some(config),
                },
            );
        }
        self.inputs.push_back(Input::Fresh { worker: w });
    }

    fn flush(&mut self) -> bool {
        let mut work = false;
        for (w, e) in self.ends.iter_mut().enumerate() {
            while let Some(env) = e.backlog.pop_front() {
                match e.updates.try_send(&env) {
                    Ok(()) => {
                        work = true;
                        e.written = env.generation;
                    }
                    Err(SendError::Full) => {
                        e.backlog.push_front(env);
                        break;
                    }
                    Err(err) => {
                        tracing::error!(target: "control",
                            "update {} for worker {w} cannot be sent: {err}",
                            env.generation
                        );
                        e.written = env.generation;
                    }
                }
            }
        }
        work
    }
}

impl Link for ShmControlLink {
    fn pump(&mut self) -> bool {
        let mut work = false;
        for w in 0..self.ends.len() {
            while let Some(Ok(Some(a))) = self.ends.get_mut(w).map(|e| e.acks.try_recv()) {
                work = true;
                match a {
                    Ack::Applied {
                        generation: HELLO_FRESH,
                        ..
                    } => self.fresh(w as u16),
                    Ack::Applied {
                        generation: HELLO_KEEP,
                        ..
                    } => {
                        tracing::info!(target: "control", "data plane worker {w} re-attached with its SAs")
                    }
                    Ack::Applied { .. } => {}
                    Ack::Rejected {
                        generation: g, why, ..
                    } => {
                        tracing::warn!(target: "control", "worker {w} rejected generation {g}: {why}")
                    }
                }
            }
        }
        work | self.flush()
    }

    fn poll_input(&mut self) -> Option<Input> {
        if let Some(i) = self.inputs.pop_front() {
            return Some(i);
        }
        let (cookie, main) = (&mut self.punt_cookie, &mut self.punt);
        let d = self.lanes.next(
            || cookie.try_recv().ok().flatten(),
            || main.try_recv().ok().flatten(),
        );
        if let Some(d) = d {
            return Some(Input::Datagram(d));
        }
        if let Ok(Some(e)) = self.events.try_recv() {
            if let Event::SeqCheckpoint { worker, .. } = e {
                // A static SA's checkpoint: its reservation moves on, on disk before it is
                // sent. Every checkpoint goes on to the core too (an HA pair replicates its
                // SAs' checkpoints).
                if let Some(u) = self.keeper.as_mut().and_then(|k| k.on_event(&e)) {
                    self.queue(worker, u);
                    self.flush();
                }
            }
            return Some(Input::Event(e));
        }
        None
    }

    fn send_update(&mut self, worker: u16, update: Update) -> Result<u64, LinkError> {
        if usize::from(worker) >= self.ends.len() {
            return Err(LinkError {
                worker,
                why: "no such worker on the channel".into(),
            });
        }
        let g = self.queue(worker, update);
        self.flush();
        Ok(g)
    }

    fn released(&self, worker: u16) -> u64 {
        self.ends
            .get(usize::from(worker))
            .map_or(u64::MAX, |e| e.written)
    }

    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram> {
        match self.transmit.try_send(&d) {
            Ok(()) => Ok(()),
            Err(SendError::Full) => Err(d),
            Err(e) => {
                tracing::error!(target: "control", "an IKE datagram cannot be sent: {e}");
                Ok(())
            }
        }
    }
}
