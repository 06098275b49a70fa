//! A virtual-time network of N IKE endpoints for tests (quinn's `Pair` idea, for any number
//! of parties): each node has its own address and, optionally, a NAT in front of it; a
//! [`Fault`] hook may drop, duplicate or reorder any datagram; time only moves when a test
//! says so. Built with `cfg(test)` and by the `testing` feature.
//!
//! Owns: routing datagrams between the nodes' endpoints, their events, the clock.
//! Must never: read a real clock or a socket.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::event::Event;
use crate::time::Instant;

/// One party: its endpoint, where it is, and what it reported.
pub struct Node {
    pub endpoint: Endpoint,
    /// Its own address (port 500) as its endpoint knows it.
    pub addr: SocketAddr,
    /// Where the others see it from (its NAT's mapping for port 500; port 4500 is mapped to
    /// this port + 4000). Equal to `addr` without a NAT.
    pub public: SocketAddr,
    /// Its events so far, oldest first (tests clear them as they like).
    pub events: VecDeque<Event>,
}

/// A datagram on the network, as the receiver will see it.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: usize,
    /// The receiving node, if any has the destination address.
    pub to: Option<usize>,
    /// Its index among the datagrams from `from` to `to` so far (0-based).
    pub n: usize,
    /// Source as the receiver sees it (after the sender's NAT).
    pub src: SocketAddr,
    /// Destination as sent.
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}

/// What the network does with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Delivered twice.
    Duplicate,
    /// Delivered after every datagram now in flight.
    Reorder,
}

/// Decides each datagram's fate.
pub type Fault = Box<dyn FnMut(&Datagram) -> Fate>;

/// N endpoints on one virtual clock.
/// A node's EAP server (node, time, datagram) -> its answers.
pub type EapHook = Box<dyn FnMut(usize, Instant, Vec<u8>) -> Vec<Vec<u8>>>;

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Node>,
    /// Every datagram that reached a node, in order (for replays and forgeries).
    pub log: Vec<Datagram>,
    /// Everything is lost while set (a cable pulled).
    pub cut: bool,
    pub fault: Option<Fault>,
    /// The EAP backends' servers (RADIUS): each node's datagrams for its server go to this,
    /// its answers straight back (none: lost, or held back by the hook).
    pub eap_server: Option<EapHook>,
    in_flight: VecDeque<(Datagram, bool)>,
    counts: std::collections::HashMap<(usize, Option<usize>), usize>,
    /// Multicast groups: a datagram to one goes to each node that joined it.
    multicast: Vec<(IpAddr, usize)>,
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        Net {
            now: Instant::ZERO,
            nodes: Vec::new(),
            log: Vec::new(),
            cut: false,
            fault: None,
            eap_server: None,
            in_flight: VecDeque::new(),
            counts: std::collections::HashMap::new(),
            multicast: Vec::new(),
        }
    }

    /// Adds a node at `addr`; returns its index.
    pub fn add(&mut self, endpoint: Endpoint, addr: SocketAddr) -> usize {
        self.nodes.push(Node {
            endpoint,
            addr,
            public: addr,
            events: VecDeque::new(),
        });
        self.nodes.len().saturating_sub(1)
    }

    pub fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.node(i).endpoint
    }

    #[allow(clippy::indexing_slicing)]
    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Node `i` is now at `addr`, seen by the others from `public`.
    pub fn move_node(&mut self, i: usize, addr: SocketAddr, public: SocketAddr) {
        let n = self.node(i);
        n.addr = addr;
        n.public = public;
    }

    /// Node `i` receives what is sent to multicast address `group`.
    pub fn join_multicast(&mut self, i: usize, group: IpAddr) {
        self.multicast.push((group, i));
    }

    fn route(&self, dst: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.public.ip() == dst.ip())
    }

    /// The source node `from` appears from when it sends from local port `port`.
    fn seen_from(&self, from: usize, port: u16) -> SocketAddr {
        let Some(n) = self.nodes.get(from) else {
            return SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
        };
        let mut s = n.public;
        s.set_port(
            n.public
                .port()
                .wrapping_add(port.wrapping_sub(n.addr.port())),
        );
        s
    }

    fn send_all(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.nodes.len() {
            while let Some(d) = self.ep(i).poll_eap_transmit() {
                any = true;
                let now = self.now;
                let answers = self
                    .eap_server
                    .as_mut()
                    .map(|h| h(i, now, d))
                    .unwrap_or_default();
                for a in answers {
                    self.ep(i).handle_eap_datagram(now, &a);
                }
            }
        }
        for i in 0..self.nodes.len() {
            while let Some(t) = self.ep(i).poll_transmit() {
                any = true;
                if t.dst.ip().is_multicast() {
                    // One copy to each node that joined (none: lost, as on a network).
                    let to: Vec<usize> = self
                        .multicast
                        .iter()
                        .filter(|(g, _)| *g == t.dst.ip())
                        .map(|(_, n)| *n)
                        .collect();
                    for n in to {
                        let d = Datagram {
                            from: i,
                            to: Some(n),
                            n: 0,
                            src: self.seen_from(i, t.src.port()),
                            dst: t.dst,
                            data: t.data.clone(),
                        };
                        if self.cut {
                            continue;
                        }
                        if self.fault.as_mut().map_or(Fate::Deliver, |f| f(&d)) != Fate::Drop {
                            self.in_flight.push_back((d, false));
                        }
                    }
                    continue;
                }
                let to = self.route(t.dst);
                let k = self.counts.entry((i, to)).or_insert(0);
                let n = *k;
                *k = k.saturating_add(1);
                let d = Datagram {
                    from: i,
                    to,
                    n,
                    src: self.seen_from(i, t.src.port()),
                    dst: t.dst,
                    data: t.data,
                };
                if self.cut || to.is_none() {
                    continue;
                }
                let fate = self.fault.as_mut().map_or(Fate::Deliver, |f| f(&d));
                match fate {
                    Fate::Deliver => self.in_flight.push_back((d, false)),
                    Fate::Drop => {}
                    Fate::Duplicate => {
                        self.in_flight.push_back((d.clone(), false));
                        self.in_flight.push_back((d, false));
                    }
                    Fate::Reorder => self.in_flight.push_back((d, true)),
                }
            }
        }
        any
    }

    /// Moves every datagram to its destination until nobody has anything to send; true if
    /// anything moved.
    pub fn deliver(&mut self) -> bool {
        let mut moved = false;
        loop {
            moved |= self.send_all();
            let Some((d, late)) = self.in_flight.pop_front() else {
                break;
            };
            if late && !self.in_flight.is_empty() {
                // Reordered: after whatever else is in flight.
                self.in_flight.push_back((d, false));
                continue;
            }
            moved = true;
            let Some(to) = d.to else { continue };
            let now = self.now;
            let n = self.node(to);
            // The receiver's NAT sends 500 to its port 500 and the other mapping to 4500.
            let mut local = n.addr;
            if d.dst.ip().is_multicast() {
                // Received on the group's address, as a socket bound to it sees it.
                local = d.dst;
            } else if d.dst.port() != n.public.port() {
                local.set_port(4500);
            }
            n.endpoint.handle(now, local, d.src, &d.data);
            self.log.push(d);
        }
        for n in self.nodes.iter_mut() {
            while let Some(e) = n.endpoint.poll_event() {
                n.events.push_back(e);
            }
        }
        moved
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter_map(|n| n.endpoint.poll_timeout())
            .min()
    }

    fn fire(&mut self, t: Instant) {
        self.now = self.now.max(t);
        let now = self.now;
        for n in self.nodes.iter_mut() {
            if n.endpoint.poll_timeout().is_some_and(|d| d <= now) {
                n.endpoint.handle_timeout(now);
            }
        }
    }

    /// Moves datagrams and runs timers until virtual time `t`.
    pub fn run_until(&mut self, t: Instant) {
        loop {
            while self.deliver() {}
            match self.next_deadline() {
                Some(n) if n <= t => self.fire(n),
                _ => {
                    self.now = self.now.max(t);
                    return;
                }
            }
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now.saturating_add(d);
        self.run_until(t);
    }

    /// Moves datagrams and advances virtual time until every node is quiet, or two minutes
    /// of virtual time have passed.
    pub fn drive(&mut self) {
        let until = self.now.saturating_add(Duration::from_secs(120));
        loop {
            if self.deliver() {
                continue;
            }
            match self.next_deadline() {
                Some(t) if t <= until => {
                    self.fire(t);
                    if !self.deliver() && self.next_deadline() == Some(t) {
                        return;
                    }
                }
                _ => return,
            }
        }
    }
}
