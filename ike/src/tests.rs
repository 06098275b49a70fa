//! The endpoint's tests, one file per exchange, on the virtual-time network of
//! [`crate::testing`]: a road-warrior client (node 0) and a gateway (node 1) unless a test
//! builds more parties.

mod auth;
mod certs;
mod child;
mod cookie;
mod eap;
mod endpoint;
mod export;
mod fragment;
mod group;
mod gw_move;
mod hint;
mod ike_rekey;
mod info;
mod init;
mod malformed;
mod mid_sync;
mod mobike;
mod per_core;
mod view;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{secret, Credential, EndpointConfig, PeerConfig, Pool};
use crate::crypto::{DhGroup, Prf};
use crate::endpoint::{Endpoint, Footprint};
use crate::event::{ChildSaInfo, DownReason, Event};
use crate::ids::{ChildSpi, IkeSaId};
use crate::proposal::{EspInteg, EspProposal, IkeProposal};
use crate::testing::{Datagram, Net};
use crate::time::Instant;
use crate::ts::prefix_ts;
use crate::wire::{Id, TrafficSelector};

pub(crate) const CLIENT: usize = 0;
pub(crate) const GW: usize = 1;

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) fn ts(s: &str) -> TrafficSelector {
    let (a, l) = s.split_once('/').unwrap();
    prefix_ts(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

pub(crate) fn peer(name: &str, local: &str, remote: Option<&str>, psk: &[u8]) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_id: Id::from_text(local),
        remote_id: remote.map(Id::from_text),
        auth: Credential::Psk(secret(psk)),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal::gcm(128, true)],
        local_ts: vec![],
        remote_ts: vec![],
        pool: None,
        request_vip: false,
        child_rekey: None,
        ike_rekey: None,
        dpd: None,
        child_life: None,
    }
}

pub(crate) fn gateway_cfg() -> PeerConfig {
    let mut g = peer("rw", "gw.roamgate.test", None, b"lab-psk");
    g.local_ts = vec![ts("10.9.0.0/24")];
    g.remote_ts = vec![ts("0.0.0.0/0")];
    g.pool = Some(Pool {
        first: "10.99.0.1".parse().unwrap(),
        count: 2,
    });
    g
}

pub(crate) fn client_cfg() -> PeerConfig {
    let mut c = peer(
        "gw",
        "rw.roamgate.test",
        Some("gw.roamgate.test"),
        b"lab-psk",
    );
    c.remote_ts = vec![ts("10.9.0.0/24")];
    c.request_vip = true;
    c
}

pub(crate) fn endpoint(peer: PeerConfig, seed: u8) -> Endpoint {
    Endpoint::new(
        EndpointConfig {
            peers: vec![peer],
            ..Default::default()
        },
        [seed; 32],
    )
}

/// A client (node 0, 192.0.2.10) and a gateway (node 1, 192.0.2.1).
pub(crate) struct Pair {
    pub net: Net,
}

impl Pair {
    pub fn new(client: PeerConfig, gw: PeerConfig) -> Pair {
        Pair::with_endpoints(endpoint(client, 1), endpoint(gw, 2))
    }

    pub fn with_endpoints(client: Endpoint, gw: Endpoint) -> Pair {
        let mut net = Net::new();
        net.add(client, "192.0.2.10:500".parse().unwrap());
        net.add(gw, "192.0.2.1:500".parse().unwrap());
        Pair { net }
    }

    pub fn client(&mut self) -> &mut Endpoint {
        self.net.ep(CLIENT)
    }

    pub fn gw(&mut self) -> &mut Endpoint {
        self.net.ep(GW)
    }

    pub fn now(&self) -> Instant {
        self.net.now
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.net.nodes[CLIENT].addr
    }

    pub fn gw_addr(&self) -> SocketAddr {
        self.net.nodes[GW].addr
    }

    pub fn connect(&mut self) -> IkeSaId {
        let (c, g, now) = (self.client_addr(), self.gw_addr(), self.now());
        self.client().connect(now, "gw", c, g).unwrap()
    }

    pub fn drive(&mut self) {
        self.net.drive();
    }

    pub fn client_events(&self) -> &VecDeque<Event> {
        &self.net.nodes[CLIENT].events
    }

    pub fn gw_events(&self) -> &VecDeque<Event> {
        &self.net.nodes[GW].events
    }

    pub fn clear_events(&mut self) {
        for n in self.net.nodes.iter_mut() {
            n.events.clear();
        }
    }

    /// The datagrams that reached the gateway.
    pub fn to_gw(&self) -> Vec<Datagram> {
        self.net
            .log
            .iter()
            .filter(|d| d.to == Some(GW))
            .cloned()
            .collect()
    }

    /// The client changes address: `public` is where the gateway sees it from (itself, or its
    /// NAT's address), `local` its own.
    pub fn move_client(&mut self, local: &str, public: &str) {
        self.net
            .move_node(CLIENT, local.parse().unwrap(), public.parse().unwrap());
    }

    /// The client moves to `local` (seen as `public`) and roams its IKE SA `cid` there.
    pub fn roam_to(&mut self, cid: IkeSaId, local: &str, public: &str) {
        self.move_client(&format!("{local}:500"), public);
        let ip: IpAddr = local.parse().unwrap();
        let now = self.now();
        self.client().roam(now, cid, ip, vec![]).unwrap();
    }
}

pub(crate) fn children(events: &VecDeque<Event>) -> Vec<ChildSaInfo> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildUp(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn downs(events: &VecDeque<Event>) -> Vec<DownReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeDown { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

pub(crate) fn child_downs(events: &VecDeque<Event>) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::ChildDown { .. }))
        .count()
}

pub(crate) fn moves(events: &VecDeque<Event>) -> Vec<(SocketAddr, SocketAddr, bool, usize)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeMoved {
                local,
                remote,
                udp_encap,
                children,
                ..
            } => Some((*local, *remote, *udp_encap, children.len())),
            _ => None,
        })
        .collect()
}

pub(crate) fn ike_up(events: &VecDeque<Event>) -> Option<IkeSaId> {
    events.iter().find_map(|e| match e {
        Event::IkeUp { ike, .. } => Some(*ike),
        _ => None,
    })
}

pub(crate) fn assert_keys_pair(c: &ChildSaInfo, g: &ChildSaInfo) {
    assert_eq!(c.outbound.spi, g.inbound.spi);
    assert_eq!(c.inbound.spi, g.outbound.spi);
    assert_eq!(c.outbound.keymat.as_slice(), g.inbound.keymat.as_slice());
    assert_eq!(c.inbound.keymat.as_slice(), g.outbound.keymat.as_slice());
    assert_ne!(c.outbound.keymat.as_slice(), c.inbound.keymat.as_slice());
    assert_eq!(c.esn, g.esn);
}

/// A client and a gateway with an IKE SA and its first CHILD_SA up: (pair, client's IKE SA,
/// gateway's IKE SA).
pub(crate) fn up() -> (Pair, IkeSaId, IkeSaId) {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    let cid = p.connect();
    p.drive();
    let gid = ike_up(p.gw_events()).unwrap();
    (p, cid, gid)
}

/// One side's CHILD_SAs as (inbound SPI, outbound SPI).
pub(crate) type SpiPairs = Vec<(ChildSpi, ChildSpi)>;

/// The CHILD_SA SPIs on each side (client, gateway) of their first IKE SA.
pub(crate) fn spis(p: &mut Pair) -> (SpiPairs, SpiPairs) {
    (p.client().list()[0].3.clone(), p.gw().list()[0].3.clone())
}
