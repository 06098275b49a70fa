//! The data plane's end of the shared-memory control channel (`roamgate dataplane --shm`).
//!
//! Updates from the control plane are prepared here (key schedules, SPD compilation: never on
//! a worker) and sent to each worker through its in-process command ring; the worker's
//! acknowledgement is translated back to the control plane's generation. Worker 0's punted
//! IKE datagrams go out on the punt ring, the control plane's datagrams come in on the
//! transmit ring. Full rings are back-pressure: what does not fit waits here, in order.
//!
//! The channel may appear after the data plane starts, and may go away and come back (a
//! control plane restart): the link attaches when it can and announces itself — fresh (ask
//! for the whole state) the first time, keeping its SAs after that.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::shm::{ControlChannel, Receiver, SendError, Sender};
use proto::{Ack, Datagram, Event, UpdateEnvelope};
use rtrb::{Consumer, Producer};

use crate::control_proc::{HELLO_FRESH, HELLO_KEEP};

struct Ends {
    ch: ControlChannel,
    updates: Vec<Receiver<UpdateEnvelope>>,
    acks: Vec<Sender<Ack>>,
    punt: Sender<Datagram>,
    transmit: Receiver<Datagram>,
    events: Sender<Event>,
}

pub struct ShmLink {
    path: PathBuf,
    workers: u16,
    ends: Option<Ends>,
    punt_rx: Consumer<Datagram>,
    tx_tx: Producer<Datagram>,
    backend: Backend,
    /// Per worker: (local generation, control generation) of commands not yet acknowledged.
    inflight: Vec<VecDeque<(u64, u64)>>,
    /// Per worker: acknowledgements not yet written.
    ack_backlog: Vec<VecDeque<Ack>>,
    punt_backlog: VecDeque<Datagram>,
    tx_backlog: VecDeque<Datagram>,
    /// Workers' reports not yet on the event ring (bounded: running totals, so the oldest
    /// can go).
    event_backlog: VecDeque<Event>,
    ever_attached: bool,
    last_try: Option<Instant>,
    last_check: Instant,
}

impl ShmLink {
    pub fn new(
        path: PathBuf,
        workers: u16,
        punt_rx: Consumer<Datagram>,
        tx_tx: Producer<Datagram>,
        backend: Backend,
    ) -> ShmLink {
        ShmLink {
            path,
            workers,
            ends: None,
            punt_rx,
            tx_tx,
            backend,
            inflight: vec![VecDeque::new(); usize::from(workers)],
            ack_backlog: vec![VecDeque::new(); usize::from(workers)],
            punt_backlog: VecDeque::new(),
            tx_backlog: VecDeque::new(),
            event_backlog: VecDeque::new(),
            ever_attached: false,
            last_try: None,
            last_check: Instant::now(),
        }
    }

    fn attach(&mut self) {
        if self
            .last_try
            .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last_try = Some(Instant::now());
        let Ok(ch) = ControlChannel::open(&self.path) else {
            return;
        };
        if ch.workers() != self.workers {
            eprintln!(
                "dataplane: {} is for {} workers, this data plane has {}",
                self.path.display(),
                ch.workers(),
                self.workers
            );
            return;
        }
        let mut updates = Vec::new();
        let mut acks = Vec::new();
        for w in 0..self.workers {
            match (ch.update_receiver(w), ch.ack_sender(w)) {
                (Ok(u), Ok(a)) => {
                    updates.push(u);
                    acks.push(a);
                }
                _ => return,
            }
        }
        let (Ok(punt), Ok(transmit), Ok(events)) =
            (ch.punt_sender(), ch.transmit_receiver(), ch.event_sender())
        else {
            return;
        };
        let hello = if self.ever_attached {
            HELLO_KEEP
        } else {
            HELLO_FRESH
        };
        for (w, q) in self.ack_backlog.iter_mut().enumerate() {
            q.clear();
            q.push_back(Ack::Applied {
                worker: w as u16,
                generation: hello,
            });
        }
        println!(
            "dataplane: attached to the control plane at {}{}",
            self.path.display(),
            if self.ever_attached {
                " (again, keeping our SAs)"
            } else {
                ""
            }
        );
        self.ever_attached = true;
        self.ends = Some(Ends {
            ch,
            updates,
            acks,
            punt,
            transmit,
            events,
        });
    }

    /// One turn; true if anything moved.
    pub fn turn(&mut self, links: &mut [&mut WorkerLink]) -> Result<bool> {
        if self.ends.is_none() {
            self.attach();
        }
        // The control plane went away (its file is gone, or its creator died): keep
        // forwarding, re-attach later. Checked a few times a second, not every turn.
        if self.ends.is_some() && self.last_check.elapsed() > Duration::from_millis(200) {
            self.last_check = Instant::now();
            let alive = self
                .ends
                .as_ref()
                .is_some_and(|e| e.ch.region().creator_alive() && e.ch.region().is_open());
            if !alive || !self.path.exists() {
                println!("dataplane: the control plane left; forwarding on the SAs we have");
                self.ends = None;
            }
        }
        let mut work = false;
        while let Ok(d) = self.punt_rx.pop() {
            work = true;
            self.punt_backlog.push_back(d);
        }
        let Some(e) = self.ends.as_mut() else {
            // Without a control plane, punted IKE has nowhere to go.
            self.punt_backlog.clear();
            return Ok(work);
        };
        while let Some(d) = self.punt_backlog.pop_front() {
            match e.punt.try_send(&d) {
                Ok(()) => {}
                Err(SendError::Full) => {
                    self.punt_backlog.push_front(d);
                    break;
                }
                Err(err) => eprintln!("dataplane: a punted datagram cannot be sent: {err}"),
            }
        }
        while self.tx_backlog.len() < 1024 {
            match e.transmit.try_recv() {
                Ok(Some(d)) => {
                    work = true;
                    self.tx_backlog.push_back(d);
                }
                Ok(None) => break,
                Err(err) => {
                    eprintln!("dataplane: transmit ring: {err}");
                    break;
                }
            }
        }
        while let Some(d) = self.tx_backlog.pop_front() {
            if let Err(rtrb::PushError::Full(d)) = self.tx_tx.push(d) {
                self.tx_backlog.push_front(d);
                break;
            }
        }
        for (w, link) in links.iter_mut().enumerate() {
            let (Some(rx), Some(tx)) = (e.updates.get_mut(w), e.acks.get_mut(w)) else {
                continue;
            };
            // At most a burst of updates per turn, so acknowledgements keep flowing.
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(Some(env)) => {
                        work = true;
                        match agent::prepare(self.backend, &env.update) {
                            Ok(cmd) => {
                                let local = link.send(cmd);
                                self.inflight[w].push_back((local, env.generation));
                            }
                            Err(err) => self.ack_backlog[w].push_back(Ack::Rejected {
                                worker: w as u16,
                                generation: env.generation,
                                why: err.to_string(),
                            }),
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        eprintln!("dataplane: update ring of worker {w}: {err}");
                        break;
                    }
                }
            }
            let acked = link.pump();
            for ev in link.take_events() {
                if self.event_backlog.len() >= 4096 {
                    self.event_backlog.pop_front();
                }
                self.event_backlog.push_back(ev);
            }
            let mut last = None;
            while self.inflight[w].front().is_some_and(|(l, _)| *l <= acked) {
                last = self.inflight[w].pop_front().map(|(_, g)| g);
            }
            if let Some(g) = last {
                self.ack_backlog[w].push_back(Ack::Applied {
                    worker: w as u16,
                    generation: g,
                });
            }
            while let Some(a) = self.ack_backlog[w].pop_front() {
                match tx.try_send(&a) {
                    Ok(()) => work = true,
                    Err(SendError::Full) => {
                        self.ack_backlog[w].push_front(a);
                        break;
                    }
                    Err(err) => eprintln!("dataplane: ack ring of worker {w}: {err}"),
                }
            }
        }
        while let Some(ev) = self.event_backlog.pop_front() {
            match e.events.try_send(&ev) {
                Ok(()) => work = true,
                Err(SendError::Full) => {
                    self.event_backlog.push_front(ev);
                    break;
                }
                Err(err) => eprintln!("dataplane: event ring: {err}"),
            }
        }
        Ok(work)
    }
}
