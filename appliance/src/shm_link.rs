//! The data plane's end of the shared-memory control channel (`roamgate dataplane --shm`).
//!
//! Updates from the control plane are prepared here (key schedules, SPD compilation: never on
//! a worker) and sent to each worker through its in-process command ring; the worker's
//! acknowledgement is translated back to the control plane's generation. Worker 0's punted
//! IKE datagrams go out on the punt ring, the control plane's datagrams come in on the
//! transmit ring. Full rings are back-pressure: what does not fit waits here, in order,
//! except punted IKE: a stalled control plane must not make the data plane hold every
//! datagram a flood brings, so at most `PUNT_BACKLOG` wait and the oldest go first (their
//! initiators have retransmitted by the time they would be read), counted as
//! `ike_punt_oldest_dropped`; without a control plane they are dropped as
//! `ike_punt_no_control`. The cookie lane (IKE_SA_INIT requests that echo a cookie, which
//! worker 0 puts on a ring of their own) has its own backlog of at most
//! `PUNT_COOKIE_BACKLOG` (`ike_punt_cookie_oldest_dropped`) and its own ring on the channel:
//! a flood of requests without a cookie never makes a returning initiator's request wait
//! behind it or push it out.
//!
//! A datagram of the control plane leaves only after the workers applied every update the
//! control plane wrote before it (it writes an update before the datagram that follows it):
//! an IKE DELETE that overtook the policy switch to a rekey's new SA would let packets sealed
//! with the old SA reach the peer after it removed that SA.
//!
//! The channel may appear after the data plane starts, and may go away and come back (a
//! control plane restart): the link attaches when it can and announces itself — fresh (ask
//! for the whole state) the first time, keeping its SAs after that.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::shm::{ControlChannel, Receiver, SendError, Sender};
use proto::{Ack, Datagram, Event, UpdateEnvelope};
use rtrb::{Consumer, Producer};

use crate::control_link::{HELLO_FRESH, HELLO_KEEP};

/// Punted IKE datagrams that wait for room on the punt ring, at most.
pub const PUNT_BACKLOG: usize = 1024;
/// Punted cookie echoes that wait for room on the cookie lane's ring, at most.
pub const PUNT_COOKIE_BACKLOG: usize = 64;

/// Punted IKE datagrams the link dropped, by reason (read by the stats view).
#[derive(Debug, Default)]
pub struct PuntDrops {
    /// The backlog was full: the oldest waiting datagram went.
    pub oldest: AtomicU64,
    /// No control plane attached.
    pub no_control: AtomicU64,
    /// The cookie lane's backlog was full: its oldest waiting datagram went.
    pub cookie_oldest: AtomicU64,
}

impl PuntDrops {
    /// (name, count) as `roamgate stats` shows them.
    pub fn named(&self) -> [(&'static str, u64); 3] {
        [
            (
                "ike_punt_oldest_dropped",
                self.oldest.load(Ordering::Relaxed),
            ),
            (
                "ike_punt_no_control",
                self.no_control.load(Ordering::Relaxed),
            ),
            (
                "ike_punt_cookie_oldest_dropped",
                self.cookie_oldest.load(Ordering::Relaxed),
            ),
        ]
    }
}

struct Ends {
    ch: ControlChannel,
    updates: Vec<Receiver<UpdateEnvelope>>,
    acks: Vec<Sender<Ack>>,
    punt: Sender<Datagram>,
    punt_cookie: Sender<Datagram>,
    transmit: Receiver<Datagram>,
    events: Sender<Event>,
}

pub struct ShmLink {
    path: PathBuf,
    workers: u16,
    ends: Option<Ends>,
    punt_rx: Consumer<Datagram>,
    /// Worker 0's cookie lane, if it has one.
    cookie_rx: Option<Consumer<Datagram>>,
    tx_tx: Producer<Datagram>,
    backend: Backend,
    /// Per worker: (local generation, control generation) of commands not yet acknowledged.
    inflight: Vec<VecDeque<(u64, u64)>>,
    /// Per worker: acknowledgements not yet written.
    ack_backlog: Vec<VecDeque<Ack>>,
    punt_backlog: VecDeque<Datagram>,
    cookie_backlog: VecDeque<Datagram>,
    punt_drops: Arc<PuntDrops>,
    /// Datagrams read from the transmit ring whose preceding updates may not all have been
    /// read yet.
    tx_unplaced: VecDeque<Datagram>,
    /// Datagrams with, per worker, the local generation of the last update sent before them:
    /// they go to worker 0 once every worker acknowledged it.
    tx_held: VecDeque<(Datagram, Vec<u64>)>,
    /// Per worker, the local generation of the last update sent.
    sent: Vec<u64>,
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
            cookie_rx: None,
            tx_tx,
            backend,
            inflight: vec![VecDeque::new(); usize::from(workers)],
            ack_backlog: vec![VecDeque::new(); usize::from(workers)],
            punt_backlog: VecDeque::new(),
            cookie_backlog: VecDeque::new(),
            punt_drops: Arc::default(),
            tx_unplaced: VecDeque::new(),
            tx_held: VecDeque::new(),
            sent: vec![0; usize::from(workers)],
            event_backlog: VecDeque::new(),
            ever_attached: false,
            last_try: None,
            last_check: Instant::now(),
        }
    }

    /// Reads worker 0's cookie lane too, onto the channel's cookie ring.
    pub fn set_cookie_lane(&mut self, cookie_rx: Consumer<Datagram>) {
        self.cookie_rx = Some(cookie_rx);
    }

    /// The punted datagrams this link dropped, by reason.
    pub fn punt_drops(&self) -> Arc<PuntDrops> {
        self.punt_drops.clone()
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
            tracing::error!(target: "dataplane",
                "{} is for {} workers, this data plane has {}",
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
        let (Ok(punt), Ok(punt_cookie), Ok(transmit), Ok(events)) = (
            ch.punt_sender(),
            ch.punt_cookie_sender(),
            ch.transmit_receiver(),
            ch.event_sender(),
        ) else {
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
        tracing::info!(target: "dataplane",
            "attached to the control plane at {}{}",
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
            punt_cookie,
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
                tracing::warn!(target: "dataplane", "the control plane left; forwarding on the SAs we have");
                self.ends = None;
            }
        }
        let mut work = false;
        work |= take_punted(
            &mut self.punt_rx,
            &mut self.punt_backlog,
            PUNT_BACKLOG,
            &self.punt_drops.oldest,
        );
        if let Some(rx) = self.cookie_rx.as_mut() {
            work |= take_punted(
                rx,
                &mut self.cookie_backlog,
                PUNT_COOKIE_BACKLOG,
                &self.punt_drops.cookie_oldest,
            );
        }
        let Some(e) = self.ends.as_mut() else {
            // Without a control plane, punted IKE has nowhere to go.
            let n = (self.punt_backlog.len() + self.cookie_backlog.len()) as u64;
            self.punt_drops.no_control.fetch_add(n, Ordering::Relaxed);
            self.punt_backlog.clear();
            self.cookie_backlog.clear();
            return Ok(work);
        };
        send_punted(&mut self.cookie_backlog, &mut e.punt_cookie);
        send_punted(&mut self.punt_backlog, &mut e.punt);
        // Datagrams first, then the updates: everything the control plane wrote before a
        // datagram read here is in the update rings by now.
        while self.tx_unplaced.len() + self.tx_held.len() < 1024 {
            match e.transmit.try_recv() {
                Ok(Some(d)) => {
                    work = true;
                    self.tx_unplaced.push_back(d);
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(target: "dataplane", "transmit ring: {err}");
                    break;
                }
            }
        }
        // Every update ring read to its end this turn: the datagrams read before are placed.
        let mut drained = true;
        for (w, link) in links.iter_mut().enumerate() {
            let (Some(rx), Some(tx)) = (e.updates.get_mut(w), e.acks.get_mut(w)) else {
                continue;
            };
            // At most a burst of updates per turn, so acknowledgements keep flowing.
            let mut read_all = false;
            for _ in 0..256 {
                match rx.try_recv() {
                    Ok(Some(env)) => {
                        work = true;
                        match agent::prepare(self.backend, &env.update) {
                            Ok(cmd) => {
                                let local = link.send(cmd);
                                self.inflight[w].push_back((local, env.generation));
                                if let Some(s) = self.sent.get_mut(w) {
                                    *s = local;
                                }
                            }
                            Err(err) => self.ack_backlog[w].push_back(Ack::Rejected {
                                worker: w as u16,
                                generation: env.generation,
                                why: err.to_string(),
                            }),
                        }
                    }
                    Ok(None) => {
                        read_all = true;
                        break;
                    }
                    Err(err) => {
                        // Nothing more can be read from it: holding datagrams for it would
                        // hold them for ever.
                        tracing::error!(target: "dataplane", "update ring of worker {w}: {err}");
                        read_all = true;
                        break;
                    }
                }
            }
            drained &= read_all;
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
                    Err(err) => {
                        tracing::error!(target: "dataplane", "ack ring of worker {w}: {err}")
                    }
                }
            }
        }
        if drained {
            while let Some(d) = self.tx_unplaced.pop_front() {
                self.tx_held.push_back((d, self.sent.clone()));
            }
        }
        while let Some((d, after)) = self.tx_held.pop_front() {
            let applied = links.iter().zip(&after).all(|(l, g)| l.acked() >= *g);
            if !applied {
                self.tx_held.push_front((d, after));
                break;
            }
            if let Err(rtrb::PushError::Full(d)) = self.tx_tx.push(d) {
                self.tx_held.push_front((d, after));
                break;
            }
            work = true;
        }
        while let Some(ev) = self.event_backlog.pop_front() {
            match e.events.try_send(&ev) {
                Ok(()) => work = true,
                Err(SendError::Full) => {
                    self.event_backlog.push_front(ev);
                    break;
                }
                Err(err) => tracing::error!(target: "dataplane", "event ring: {err}"),
            }
        }
        Ok(work)
    }
}

/// Moves what a worker punted into `backlog`, which keeps the newest `max` (the oldest
/// dropped, counted in `dropped`); true if anything came.
fn take_punted(
    rx: &mut Consumer<Datagram>,
    backlog: &mut VecDeque<Datagram>,
    max: usize,
    dropped: &AtomicU64,
) -> bool {
    let mut work = false;
    while let Ok(d) = rx.pop() {
        work = true;
        if backlog.len() >= max {
            backlog.pop_front();
            dropped.fetch_add(1, Ordering::Relaxed);
        }
        backlog.push_back(d);
    }
    work
}

/// Writes `backlog` to the channel's ring `to`, in order, while it has room.
fn send_punted(backlog: &mut VecDeque<Datagram>, to: &mut Sender<Datagram>) {
    while let Some(d) = backlog.pop_front() {
        match to.try_send(&d) {
            Ok(()) => {}
            Err(SendError::Full) => {
                backlog.push_front(d);
                break;
            }
            Err(err) => {
                tracing::error!(target: "dataplane", "a punted datagram cannot be sent: {err}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::msg::{Reply, Update};

    fn datagram(n: u32) -> Datagram {
        Datagram {
            src: "192.0.2.2".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            src_port: 500,
            dst_port: 500,
            payload: n.to_be_bytes().to_vec(),
        }
    }

    #[test]
    fn a_stalled_control_plane_bounds_the_punt_backlog_and_loses_the_oldest() {
        let path = std::env::temp_dir().join(format!("roamgate-shm-punt-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ch = ControlChannel::create(&path, 1).unwrap();
        let mut punted = ch.punt_receiver().unwrap();
        let (mut punt_tx, punt_rx) = rtrb::RingBuffer::new(1024);
        let (tx_tx, _tx_rx) = rtrb::RingBuffer::new(16);
        let (mut link, _worker) = agent::link(0, 16, None);
        let mut shm = ShmLink::new(path.clone(), 1, punt_rx, tx_tx, Backend::Ring);
        shm.turn(&mut [&mut link]).unwrap();
        assert!(shm.ends.is_some(), "attached");
        // A flood while the control plane reads nothing.
        let sent = 20_000u32;
        for n in 0..sent {
            if punt_tx.push(datagram(n)).is_err() {
                shm.turn(&mut [&mut link]).unwrap();
                punt_tx.push(datagram(n)).unwrap();
            }
        }
        shm.turn(&mut [&mut link]).unwrap();
        assert!(
            shm.punt_backlog.len() <= PUNT_BACKLOG,
            "{}",
            shm.punt_backlog.len()
        );
        // The control plane wakes up: what it reads is the ring's first datagrams (written
        // before the backlog filled) and then the newest ones.
        let mut got = Vec::new();
        loop {
            while let Ok(Some(d)) = punted.try_recv() {
                got.push(u32::from_be_bytes(d.payload[..4].try_into().unwrap()));
            }
            if shm.punt_backlog.is_empty() {
                break;
            }
            shm.turn(&mut [&mut link]).unwrap();
        }
        let dropped = shm.punt_drops().oldest.load(Ordering::Relaxed);
        assert_eq!(
            got.len() as u64 + dropped,
            u64::from(sent),
            "each counted once"
        );
        assert!(dropped > 0);
        assert_eq!(got.last(), Some(&(sent - 1)), "the newest got through");
        let tail = &got[got.len() - PUNT_BACKLOG..];
        assert!(
            tail.windows(2).all(|w| w[1] == w[0] + 1) && tail[0] == sent - PUNT_BACKLOG as u32,
            "the backlog kept the newest, in order"
        );
        drop(ch);
        let _ = std::fs::remove_file(&path);
    }

    /// A datagram from 198.18.x.y (a flood's spoofed source) or, `from_client`, from the
    /// client, numbered `n` in its payload.
    fn punted(n: u32, from_client: bool) -> Datagram {
        let mut d = datagram(n);
        if !from_client {
            d.src = std::net::Ipv4Addr::from(0xc612_0000 + n).into();
        }
        d
    }

    /// The data plane's side of the punt (worker 0's two rings, this link) and the control
    /// process's (`ShmControlLink`) on one channel; the control plane reads `reads` datagrams
    /// per tick, fewer than the flood brings. Ticks are the virtual clock.
    struct Stages {
        path: PathBuf,
        _ch: ControlChannel,
        main_tx: Producer<Datagram>,
        cookie_tx: Producer<Datagram>,
        link: WorkerLink,
        shm: ShmLink,
        control: crate::control_link::ShmControlLink,
        /// What the worker could not punt (its ring was full): `ike_punt_full`.
        worker_full: u64,
    }

    impl Stages {
        fn new(name: &str) -> Stages {
            let path =
                std::env::temp_dir().join(format!("roamgate-shm-{name}-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let ch = ControlChannel::create(&path, 1).unwrap();
            let control =
                crate::control_link::ShmControlLink::new(&ch, 1, None, Vec::new(), None).unwrap();
            let (main_tx, punt_rx) = rtrb::RingBuffer::new(1024);
            let (cookie_tx, cookie_rx) = rtrb::RingBuffer::new(PUNT_COOKIE_BACKLOG);
            let (tx_tx, _tx_rx) = rtrb::RingBuffer::new(16);
            let (link, _worker) = agent::link(0, 16, None);
            let mut shm = ShmLink::new(path.clone(), 1, punt_rx, tx_tx, Backend::Ring);
            shm.set_cookie_lane(cookie_rx);
            let mut s = Stages {
                path,
                _ch: ch,
                main_tx,
                cookie_tx,
                link,
                shm,
                control,
                worker_full: 0,
            };
            s.shm.turn(&mut [&mut s.link]).unwrap();
            assert!(s.shm.ends.is_some(), "attached");
            s
        }

        /// One tick: the worker punts `main` and `cookie`, the link turns, the control
        /// plane reads `reads` datagrams (what it read, in order).
        fn tick(&mut self, main: &[Datagram], cookie: &[Datagram], reads: usize) -> Vec<Datagram> {
            for d in main {
                if self.main_tx.push(d.clone()).is_err() {
                    self.worker_full += 1;
                }
            }
            for d in cookie {
                assert!(
                    self.cookie_tx.push(d.clone()).is_ok(),
                    "the cookie lane has room"
                );
            }
            self.shm.turn(&mut [&mut self.link]).unwrap();
            let mut got = Vec::new();
            while got.len() < reads {
                match control::driver::Link::poll_input(&mut self.control) {
                    Some(control::driver::Input::Datagram(d)) => got.push(d),
                    Some(_) => {}
                    None => break,
                }
            }
            got
        }
    }

    impl Drop for Stages {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn a_cookie_echo_overtakes_a_flood_that_fills_every_punt_stage() {
        let mut s = Stages::new("cookie-echo");
        // 10,000 spoofed requests a second in ticks of 1 ms, against a control plane that
        // reads 5,000 a second: within a second every stage of the main lane is full.
        let mut n = 0u32;
        let mut echoes_read = Vec::new();
        for tick in 0..2000u32 {
            let flood: Vec<Datagram> = (n..n + 10).map(|i| punted(i, false)).collect();
            n += 10;
            // Now and then the client echoes a cookie.
            let echo: Vec<Datagram> = if tick % 250 == 200 {
                vec![punted(tick, true)]
            } else {
                vec![]
            };
            let got = s.tick(&flood, &echo, 5);
            for d in got.iter().filter(|d| d.src == punted(0, true).src) {
                echoes_read.push((u32::from_be_bytes(d.payload[..4].try_into().unwrap()), tick));
            }
        }
        let drops = s.shm.punt_drops();
        let oldest = drops.oldest.load(Ordering::Relaxed);
        assert!(
            oldest > 0 && s.worker_full == 0,
            "the flood overflowed the link's backlog ({oldest}), not the worker's ring ({})",
            s.worker_full
        );
        assert_eq!(drops.cookie_oldest.load(Ordering::Relaxed), 0);
        // Each echo was read in the tick it arrived.
        let sent: Vec<u32> = (0..2000).filter(|t| t % 250 == 200).collect();
        assert_eq!(
            echoes_read,
            sent.iter().map(|&t| (t, t)).collect::<Vec<_>>(),
            "every echo, read at once"
        );
    }

    #[test]
    fn a_flood_of_forged_echoes_takes_at_most_every_other_read() {
        let mut s = Stages::new("forged-echoes");
        // Forged echoes (marked by port 4500 here) on the cookie lane and requests without a
        // cookie on the main one, each more than the control plane reads: both lanes stay
        // full, and the main lane gets every other read.
        let forged = |d: &Datagram| d.src_port == 4500;
        let (mut main_read, mut cookie_read) = (0u32, 0u32);
        let mut n = 0u32;
        for _ in 0..200 {
            let flood: Vec<Datagram> = (n..n + 8).map(|i| punted(i, false)).collect();
            // What the worker's cookie ring has room for (the rest: `ike_punt_cookie_full`).
            let room = s.cookie_tx.slots().min(8) as u32;
            let echoes: Vec<Datagram> = (n..n + room)
                .map(|i| Datagram {
                    src_port: 4500,
                    ..punted(i, false)
                })
                .collect();
            n += 8;
            let got = s.tick(&flood, &echoes, 8);
            assert_eq!(got.len(), 8, "the control plane always has work");
            for d in &got {
                if forged(d) {
                    cookie_read += 1;
                } else {
                    main_read += 1;
                }
            }
        }
        let reads = main_read + cookie_read;
        assert!(
            main_read >= reads / 2 && cookie_read + 1 >= reads / 2,
            "{main_read} of the main lane, {cookie_read} forged, of {reads}"
        );
        assert!(
            s.shm.punt_drops().cookie_oldest.load(Ordering::Relaxed) > 0,
            "the forged echoes overflowed their own lane's backlog"
        );
    }

    #[test]
    fn a_datagram_of_the_control_plane_waits_for_the_updates_written_before_it() {
        let path = std::env::temp_dir().join(format!("roamgate-shm-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ch = ControlChannel::create(&path, 1).unwrap();
        let mut updates = ch.update_sender(0).unwrap();
        let mut transmit = ch.transmit_sender().unwrap();
        let (_punt_tx, punt_rx) = rtrb::RingBuffer::new(16);
        let (tx_tx, mut tx_rx) = rtrb::RingBuffer::new(16);
        let (mut link, mut worker) = agent::link(0, 16, None);
        let mut shm = ShmLink::new(path.clone(), 1, punt_rx, tx_tx, Backend::Ring);
        shm.turn(&mut [&mut link]).unwrap();
        assert!(shm.ends.is_some(), "attached");

        // The control plane writes an update, then a datagram that follows it.
        let update = UpdateEnvelope {
            generation: 1,
            update: Update::SetWanAddresses {
                addrs: vec!["192.0.2.1".parse().unwrap()],
            },
        };
        assert!(updates.try_send(&update).is_ok());
        let t = Datagram {
            src: "192.0.2.1".parse().unwrap(),
            dst: "192.0.2.2".parse().unwrap(),
            src_port: 500,
            dst_port: 500,
            payload: vec![1, 2, 3],
        };
        assert!(transmit.try_send(&t).is_ok());
        shm.turn(&mut [&mut link]).unwrap();
        shm.turn(&mut [&mut link]).unwrap();
        assert!(
            tx_rx.pop().is_err(),
            "held: the worker has not applied the update"
        );

        // The worker applies it: the datagram goes.
        let env = worker.commands.pop().ok().unwrap();
        assert!(worker
            .replies
            .push(Reply::Applied {
                worker: 0,
                generation: env.generation,
            })
            .is_ok());
        shm.turn(&mut [&mut link]).unwrap();
        let d = tx_rx.pop().ok().unwrap();
        assert_eq!(d.payload, [1, 2, 3]);

        // A datagram with no update before it is not held.
        assert!(transmit.try_send(&t).is_ok());
        shm.turn(&mut [&mut link]).unwrap();
        assert!(tx_rx.pop().is_ok());
        drop(ch);
        let _ = std::fs::remove_file(&path);
    }
}
