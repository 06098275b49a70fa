//! The in-process driver: the control core joined to workers in the same process by rings
//! (`roamgate lab`, `run --single-process`, `perf`, tests). Worker 0 punts IKE into `punt`
//! and sends what `transmit` carries; updates are prepared here (keys expanded, the SPD
//! compiled: never on a worker) and go to their worker's command ring; a datagram waits until
//! the workers acknowledged the updates queued before it.
//!
//! Owns: the clock of the in-process control plane, the IKE rings, the preparation of
//! updates.
//! Must never: decide about SAs (the core does); send a datagram ahead of its updates.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use proto::{Datagram, Update};
use rtrb::{Consumer, Producer};

use super::{Clock, Driver, Input, Lanes, Link, LinkError, TurnError};
use crate::config::ike::Connection;
use crate::core::ControlCore;
use crate::repo::{ChildView, SaRepository};

/// The rings of one turn: worker links by worker id, worker 0's IKE rings.
pub struct InProcLink<'a, 'b> {
    pub links: &'a mut [&'b mut WorkerLink],
    pub punt: Option<&'a mut Consumer<Datagram>>,
    /// Worker 0's cookie lane ([`Lanes`]), if it has one.
    pub punt_cookie: Option<&'a mut Consumer<Datagram>>,
    pub transmit: Option<&'a mut Producer<Datagram>>,
    pub backend: Backend,
    lanes: Lanes,
    events: VecDeque<proto::Event>,
    /// Sees every SA installed (the lab's Wireshark key export; nothing else).
    export: Option<&'a mut KeyExport>,
}

/// A receiver of every SA a control plane installs, keys included: only `roamgate lab
/// --wireshark-keys` sets one, to export its run's keys for Wireshark.
pub type KeyExport = Box<dyn FnMut(proto::Direction, &proto::sa::SaParams) + Send>;

impl<'a, 'b> InProcLink<'a, 'b> {
    pub fn new(
        links: &'a mut [&'b mut WorkerLink],
        punt: Option<&'a mut Consumer<Datagram>>,
        transmit: Option<&'a mut Producer<Datagram>>,
        backend: Backend,
    ) -> Self {
        InProcLink {
            links,
            punt,
            punt_cookie: None,
            transmit,
            backend,
            lanes: Lanes::default(),
            events: VecDeque::new(),
            export: None,
        }
    }
}

impl Link for InProcLink<'_, '_> {
    fn pump(&mut self) -> bool {
        let mut work = false;
        for l in self.links.iter_mut() {
            l.pump();
            for e in l.take_events() {
                work = true;
                self.events.push_back(e);
            }
        }
        work
    }

    fn poll_input(&mut self) -> Option<Input> {
        let (cookie, main) = (&mut self.punt_cookie, &mut self.punt);
        let d = self.lanes.next(
            || cookie.as_mut().and_then(|p| p.pop().ok()),
            || main.as_mut().and_then(|p| p.pop().ok()),
        );
        if let Some(d) = d {
            return Some(Input::Datagram(d));
        }
        self.events.pop_front().map(Input::Event)
    }

    fn send_update(&mut self, worker: u16, update: Update) -> Result<u64, LinkError> {
        let Some(l) = self.links.get_mut(usize::from(worker)) else {
            return Err(LinkError {
                worker,
                why: "no such worker".into(),
            });
        };
        if let Update::AddSa { dir, params } = &update {
            if let Some(export) = self.export.as_mut() {
                export(*dir, params);
            }
        }
        let cmd = agent::prepare(self.backend, &update).map_err(|e| LinkError {
            worker,
            why: e.to_string(),
        })?;
        Ok(l.send(cmd))
    }

    fn released(&self, worker: u16) -> u64 {
        self.links
            .get(usize::from(worker))
            .map_or(u64::MAX, |l| l.acked())
    }

    fn send_datagram(&mut self, d: Datagram) -> Result<(), Datagram> {
        match self.transmit.as_mut() {
            Some(tx) => tx.push(d).map_err(|rtrb::PushError::Full(d)| d),
            // No worker sends for us: nothing would ever take it.
            None => Err(d),
        }
    }
}

/// The control plane in the data plane's process: a [`Driver`], its clock and worker 0's
/// IKE rings. The worker links are lent per turn.
pub struct InProcControl {
    driver: Driver,
    punt: Option<Consumer<Datagram>>,
    punt_cookie: Option<Consumer<Datagram>>,
    transmit: Option<Producer<Datagram>>,
    backend: Backend,
    clock: Clock,
    pub view: std::sync::Arc<std::sync::Mutex<super::IkeView>>,
    key_export: Option<KeyExport>,
}

impl InProcControl {
    /// A control plane for `conns` over `workers` workers, seeded from the OS.
    pub fn new(
        conns: Vec<Connection>,
        repo: SaRepository,
        punt: Option<Consumer<Datagram>>,
        transmit: Option<Producer<Datagram>>,
        backend: Backend,
        local: IpAddr,
        workers: u16,
    ) -> InProcControl {
        let mut core = ControlCore::new(conns, repo, workers, os_seed(), local);
        let clock = Clock::start();
        core.set_unix_time_at_zero(clock.unix_time_at_zero());
        let driver = Driver::new(core);
        InProcControl {
            view: driver.view.clone(),
            driver,
            punt,
            punt_cookie: None,
            transmit,
            backend,
            clock,
            key_export: None,
        }
    }

    /// Reads worker 0's cookie lane too ([`Lanes`]).
    pub fn set_cookie_lane(&mut self, punt_cookie: Consumer<Datagram>) {
        self.punt_cookie = Some(punt_cookie);
    }

    /// Hands every SA installed from now on, keys included, to `export` (the lab's
    /// `--wireshark-keys`; never a gateway's).
    pub fn export_keys(&mut self, export: KeyExport) {
        self.key_export = Some(export);
    }

    fn now(&self) -> ike::Instant {
        self.clock.now()
    }

    pub fn core(&self) -> &ControlCore {
        self.driver.core()
    }

    /// Stops printing IKE events (a benchmark's crowd of clients would flood the output).
    pub fn set_quiet(&mut self) {
        self.driver.set_quiet();
    }

    /// See [`ControlCore::set_vcm`](crate::core::ControlCore::set_vcm).
    pub fn set_vcm(&mut self, v: Option<crate::config::vcm::VcmPolicy>) {
        self.driver.core_mut().set_vcm(v);
    }

    /// See [`ControlCore::set_admission`](crate::core::ControlCore::set_admission).
    pub fn set_admission(&mut self, a: crate::config::ike::AdmissionPolicy) {
        self.driver.set_admission(a);
    }

    pub fn set_fragmentation(&mut self, f: ike::Fragmentation) {
        self.driver.set_fragmentation(f);
    }

    /// See [`Driver::set_eap`].
    pub fn set_eap(&mut self, eap: crate::config::eap::Eap) -> std::io::Result<()> {
        self.driver.set_eap(eap)
    }

    /// One turn with the workers in this process (see [`Driver::turn`]).
    pub fn turn(&mut self, links: &mut [&mut WorkerLink]) -> Result<bool, TurnError> {
        let now = self.now();
        let mut link = InProcLink::new(
            links,
            self.punt.as_mut(),
            self.transmit.as_mut(),
            self.backend,
        );
        link.export = self.key_export.as_mut();
        link.punt_cookie = self.punt_cookie.as_mut();
        self.driver.turn(now, &mut link)
    }

    pub fn initiate(&mut self) {
        let now = self.now();
        self.driver.core_mut().initiate(now);
    }

    /// The sequence checkpoints and SA states the data plane reported since the last call.
    pub fn take_seq_reports(&mut self) -> VecDeque<proto::Event> {
        self.driver.core_mut().take_seq_reports()
    }

    /// Queues an update of the caller's own (not from IKE).
    pub fn push_update(&mut self, u: Update) {
        self.driver.core_mut().push_update(u);
    }

    /// True while an IKE exchange is under way, or updates or datagrams wait to go out.
    pub fn busy(&self) -> bool {
        self.driver.busy()
    }

    pub fn ike_sa_count(&self) -> usize {
        self.driver.core().ike_sa_count()
    }

    pub fn children(&self) -> Vec<ChildView> {
        self.driver.core().children()
    }

    pub fn virtual_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.driver.core().virtual_ip()
    }

    pub fn child_counts(&self) -> (u64, u64, u64) {
        self.driver.core().child_counts()
    }

    /// MOBIKE: our WAN address is now `local` (see [`ControlCore::roam`]).
    pub fn roam(&mut self, local: IpAddr) -> usize {
        self.roam_with(local, Vec::new())
    }

    pub fn roam_with(&mut self, local: IpAddr, additional: Vec<IpAddr>) -> usize {
        let now = self.now();
        self.driver.core_mut().roam(now, local, additional)
    }

    pub fn create_children(&mut self) {
        let now = self.now();
        self.driver.core_mut().create_children(now);
    }

    pub fn rekey_children(&mut self) {
        let now = self.now();
        self.driver.core_mut().rekey_children(now);
    }

    /// Deletes every IKE SA (a clean shutdown tells the peers) and gives the deletes up to
    /// `wait` to go out and be answered.
    pub fn shutdown(&mut self, links: &mut [&mut WorkerLink], wait: Duration) {
        if self.ike_sa_count() == 0 {
            return;
        }
        let now = self.now();
        self.driver.core_mut().begin_shutdown(now);
        let t = Instant::now();
        while t.elapsed() < wait && self.ike_sa_count() > 0 {
            if !self.turn(links).unwrap_or(false) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Let the last datagrams leave through the worker.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(200)
            && (self.driver.held() > 0 || self.driver.core().has_output())
        {
            let _ = self.turn(links);
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 32 bytes from the OS's generator: the one place randomness enters the IKE core.
pub fn os_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ike::IkeYaml;
    use pipeline::msg::Reply;
    use pipeline::worker::ControlLink;
    use std::path::Path;

    /// A worker that applies nothing: it acknowledges when told to and carries datagrams.
    struct Wire {
        control: ControlLink,
    }

    impl Wire {
        fn ack_all(&mut self) {
            let mut last = None;
            while let Ok(env) = self.control.commands.pop() {
                last = Some(env.generation);
            }
            if let Some(generation) = last {
                assert!(self
                    .control
                    .replies
                    .push(Reply::Applied {
                        worker: 0,
                        generation,
                    })
                    .is_ok());
            }
        }

        /// Moves what this side's control plane handed its worker to the peer's punt ring.
        fn carry_to(&mut self, peer: &mut Wire) -> usize {
            let mut n = 0;
            while let Some(d) = self.control.transmit.as_mut().and_then(|t| t.pop().ok()) {
                let punt = peer.control.punt.as_mut().unwrap();
                assert!(punt.push(d).is_ok());
                n += 1;
            }
            n
        }

        fn transmits_waiting(&self) -> usize {
            self.control.transmit.as_ref().map_or(0, |t| t.slots())
        }
    }

    fn side(ike: &str, local: &str) -> (InProcControl, WorkerLink, Wire) {
        let p = Path::new("test.yaml");
        let conns = crate::config::parse::<IkeYaml>(p, ike)
            .unwrap()
            .validate(p, "ike")
            .unwrap();
        let (punt_tx, punt_rx) = rtrb::RingBuffer::new(64);
        let (tx_tx, tx_rx) = rtrb::RingBuffer::new(64);
        let (link, mut control) = agent::link(0, 64, Some(punt_tx));
        control.transmit = Some(tx_rx);
        let mut ctl = InProcControl::new(
            conns,
            SaRepository::new(Vec::new(), 64),
            Some(punt_rx),
            Some(tx_tx),
            Backend::Ring,
            local.parse().unwrap(),
            1,
        );
        ctl.set_quiet();
        (ctl, link, Wire { control })
    }

    const A: &str = "connections:
  - { name: site, local_id: a.test, remote_id: b.test, psk: \"barrier-test-psk\",
      local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24], remote_addr: 192.0.2.2 }
";
    const B: &str = "connections:
  - { name: site, local_id: b.test, remote_id: a.test, psk: \"barrier-test-psk\",
      local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

    #[test]
    fn an_ike_message_leaves_only_after_the_data_plane_applied_the_updates_before_it() {
        let (mut a, mut la, mut wa) = side(A, "192.0.2.1");
        let (mut b, mut lb, mut wb) = side(B, "192.0.2.2");
        a.initiate();
        // The handshake: B's IKE_AUTH answer follows the install of its CHILD_SA's SAs, so it
        // waits for B's worker; everything else is acknowledged at once.
        let mut answer_held = false;
        for _ in 0..50 {
            a.turn(&mut [&mut la]).unwrap();
            wa.ack_all();
            wa.carry_to(&mut wb);
            let installed = b.child_counts().0;
            b.turn(&mut [&mut lb]).unwrap();
            if b.child_counts().0 > installed {
                assert_eq!(
                    wb.transmits_waiting(),
                    0,
                    "the answer waits for the install"
                );
                answer_held = true;
            }
            wb.ack_all();
            b.turn(&mut [&mut lb]).unwrap();
            wb.carry_to(&mut wa);
            if !a.children().is_empty() && !b.busy() && !a.busy() {
                break;
            }
        }
        assert!(answer_held);
        assert_eq!((a.children().len(), b.children().len()), (1, 1));

        // A rekeys. When its answer arrives, A moves its policy to the new SA and deletes the
        // old CHILD_SA: the DELETE must not leave before A's worker has the new policy.
        a.rekey_children();
        let mut delete_held = false;
        for _ in 0..50 {
            a.turn(&mut [&mut la]).unwrap();
            wa.ack_all();
            wa.carry_to(&mut wb);
            b.turn(&mut [&mut lb]).unwrap();
            wb.ack_all();
            b.turn(&mut [&mut lb]).unwrap();
            wb.carry_to(&mut wa);
            let rekeyed = a.child_counts().1;
            a.turn(&mut [&mut la]).unwrap();
            if a.child_counts().1 > rekeyed {
                assert_eq!(wa.transmits_waiting(), 0, "the DELETE waits for the switch");
                wa.ack_all();
                a.turn(&mut [&mut la]).unwrap();
                assert_eq!(wa.transmits_waiting(), 1, "then it goes");
                delete_held = true;
                break;
            }
        }
        assert!(delete_held);
    }
}
