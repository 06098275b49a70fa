//! Two endpoints on virtual time (quinn's `Pair` idea): a road-warrior client and a gateway,
//! joined by an in-memory network that can lose packets or translate the client's address.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use crate::crypto::{DhGroup, Prf};
use crate::sa::*;
use crate::wire::{Id, TrafficSelector};

const MS: u64 = 1_000_000;

fn ts(s: &str) -> TrafficSelector {
    let (a, l) = s.split_once('/').unwrap();
    prefix_ts(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn peer(name: &str, local: &str, remote: Option<&str>, psk: &[u8]) -> PeerConfig {
    PeerConfig {
        name: name.into(),
        local_id: Id::from_text(local),
        remote_id: remote.map(Id::from_text),
        auth: Authenticator::Psk(secret(psk)),
        ike_proposals: vec![IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        }],
        esp_proposals: vec![EspProposal {
            encr_bits: 128,
            esn: true,
        }],
        local_ts: vec![],
        remote_ts: vec![],
        pool: None,
        request_vip: false,
        child_rekey_ns: 0,
        ike_rekey_ns: 0,
        dpd_ns: 0,
        child_life_ns: 0,
    }
}

fn gateway_cfg() -> PeerConfig {
    let mut g = peer("rw", "gw.roamgate.test", None, b"lab-psk");
    g.local_ts = vec![ts("10.9.0.0/24")];
    g.remote_ts = vec![ts("0.0.0.0/0")];
    g.pool = Some(Pool {
        first: "10.99.0.1".parse().unwrap(),
        count: 2,
    });
    g
}

fn client_cfg() -> PeerConfig {
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

struct Pair {
    now: u64,
    client: Endpoint,
    gw: Endpoint,
    client_addr: SocketAddr,
    gw_addr: SocketAddr,
    /// The client's address as the gateway sees it (a NAT when different).
    client_seen: SocketAddr,
    /// Drop the n-th datagram (0-based) in each direction if listed.
    drop_to_gw: Vec<usize>,
    drop_to_client: Vec<usize>,
    sent_to_gw: usize,
    sent_to_client: usize,
    client_events: VecDeque<Event>,
    gw_events: VecDeque<Event>,
    /// The peer is unplugged: everything is lost.
    cut: bool,
    /// Every datagram the gateway received: (from, to, bytes), for replays.
    to_gw_log: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Pair {
    fn new(client: PeerConfig, gw: PeerConfig) -> Pair {
        let client_addr: SocketAddr = "192.0.2.10:500".parse().unwrap();
        Pair {
            now: 0,
            client: Endpoint::new(
                EndpointConfig {
                    peers: vec![client],
                    ..Default::default()
                },
                [1; 32],
            ),
            gw: Endpoint::new(
                EndpointConfig {
                    peers: vec![gw],
                    ..Default::default()
                },
                [2; 32],
            ),
            client_addr,
            gw_addr: "192.0.2.1:500".parse().unwrap(),
            client_seen: client_addr,
            drop_to_gw: vec![],
            drop_to_client: vec![],
            sent_to_gw: 0,
            sent_to_client: 0,
            client_events: VecDeque::new(),
            gw_events: VecDeque::new(),
            cut: false,
            to_gw_log: Vec::new(),
        }
    }

    fn connect(&mut self) -> IkeSaId {
        let (c, g) = (self.client_addr, self.gw_addr);
        self.client.connect(self.now, "gw", c, g).unwrap()
    }

    /// Delivers what both sides want to send; true if anything moved.
    fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some(t) = self.client.poll_transmit() {
            moved = true;
            let n = self.sent_to_gw;
            self.sent_to_gw += 1;
            if self.cut || self.drop_to_gw.contains(&n) {
                continue;
            }
            // The NAT rewrites the source address (and keeps a separate mapping for 4500).
            let mut src = self.client_seen;
            if t.src.port() == 4500 {
                src.set_port(self.client_seen.port().wrapping_add(4000));
            }
            self.to_gw_log.push((src, t.dst, t.data.clone()));
            self.gw.handle(self.now, t.dst, src, &t.data);
        }
        while let Some(t) = self.gw.poll_transmit() {
            moved = true;
            let n = self.sent_to_client;
            self.sent_to_client += 1;
            // Sent to an address the client no longer has (it roamed): lost.
            if self.cut || self.drop_to_client.contains(&n) || t.dst.ip() != self.client_seen.ip() {
                continue;
            }
            let mut dst = self.client_addr;
            if t.dst.port() != self.client_seen.port() {
                dst.set_port(4500);
            }
            self.client.handle(self.now, dst, t.src, &t.data);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push_back(e);
        }
        while let Some(e) = self.gw.poll_event() {
            self.gw_events.push_back(e);
        }
        moved
    }

    /// Moves datagrams and runs timers until virtual time `t`.
    fn run_until(&mut self, t: u64) {
        loop {
            while self.deliver() {}
            let next = [self.client.poll_timeout(), self.gw.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(n) if n <= t => {
                    self.now = self.now.max(n);
                    self.client.handle_timeout(self.now);
                    self.gw.handle_timeout(self.now);
                }
                _ => {
                    self.now = t;
                    return;
                }
            }
        }
    }

    /// The client changes address: `public` is where the gateway sees it from (itself, or
    /// its NAT's address), `local` its own.
    fn move_client(&mut self, local: &str, public: &str) {
        self.client_addr = local.parse().unwrap();
        self.client_seen = public.parse().unwrap();
    }

    /// The client moves to `local` (seen as `public`) and roams its IKE SA `cid` there.
    fn roam_to(&mut self, cid: IkeSaId, local: &str, public: &str) {
        self.move_client(&format!("{local}:500"), public);
        let ip: IpAddr = local.parse().unwrap();
        self.client.roam(self.now, cid, ip, vec![]).unwrap();
    }

    fn moves(events: &VecDeque<Event>) -> Vec<(SocketAddr, SocketAddr, bool, usize)> {
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

    /// Moves datagrams and advances virtual time until both sides are quiet, or two minutes
    /// of virtual time have passed.
    fn drive(&mut self) {
        let until = self.now + 120_000 * MS;
        loop {
            if self.deliver() {
                continue;
            }
            let next = [self.client.poll_timeout(), self.gw.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.client.handle_timeout(self.now);
                    self.gw.handle_timeout(self.now);
                    let after = [self.client.poll_timeout(), self.gw.poll_timeout()]
                        .into_iter()
                        .flatten()
                        .min();
                    if !self.deliver() && after == next {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    fn children(events: &VecDeque<Event>) -> Vec<ChildSaInfo> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::ChildUp(c) = e {
                    Some(c.clone())
                } else {
                    None
                }
            })
            .collect()
    }

    fn downs(events: &VecDeque<Event>) -> Vec<DownReason> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::IkeDown { reason, .. } = e {
                    Some(reason.clone())
                } else {
                    None
                }
            })
            .collect()
    }
}

fn assert_keys_pair(c: &ChildSaInfo, g: &ChildSaInfo) {
    assert_eq!(c.outbound.spi, g.inbound.spi);
    assert_eq!(c.inbound.spi, g.outbound.spi);
    assert_eq!(c.outbound.keymat.as_slice(), g.inbound.keymat.as_slice());
    assert_eq!(c.inbound.keymat.as_slice(), g.outbound.keymat.as_slice());
    assert_ne!(c.outbound.keymat.as_slice(), c.inbound.keymat.as_slice());
    assert_eq!(c.esn, g.esn);
}

#[test]
fn handshake_brings_up_ike_and_child_with_matching_keys_and_a_virtual_ip() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.connect();
    p.drive();
    let c = Pair::children(&p.client_events);
    let g = Pair::children(&p.gw_events);
    assert_eq!(
        (c.len(), g.len()),
        (1, 1),
        "client {:?} gw {:?}",
        p.client_events,
        p.gw_events
    );
    assert_keys_pair(&c[0], &g[0]);
    let vip: IpAddr = "10.99.0.1".parse().unwrap();
    assert!(p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::IkeUp { virtual_ip: Some(a), .. } if *a == vip)));
    // Narrowed: the gateway's side is its LAN, the client's side its virtual IP alone.
    assert_eq!(g[0].remote_ts, vec![host_ts(vip)]);
    assert_eq!(g[0].local_ts, vec![ts("10.9.0.0/24")]);
    assert_eq!(c[0].remote_ts, vec![ts("10.9.0.0/24")]);
    // A road warrior floats to 4500 even without a NAT (it may roam behind one later).
    assert!(c[0].udp_encap && g[0].udp_encap);
    assert_eq!(c[0].remote.port(), 4500);
    assert_eq!(c[0].outbound.keymat.len(), 20);
}

#[test]
fn a_site_to_site_initiator_without_nat_stays_on_500_with_plain_esp() {
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("10.8.0.0/24")];
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("10.8.0.0/24")];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    let c = Pair::children(&p.client_events);
    assert_eq!(c.len(), 1);
    assert!(!c[0].udp_encap, "no NAT, no encapsulation");
    assert_eq!(c[0].remote.port(), 500);
}

#[test]
fn every_proposal_and_group_negotiates() {
    for dh in [DhGroup::X25519, DhGroup::Ecp256, DhGroup::Modp2048] {
        for (encr_bits, prf) in [
            (128, Prf::HmacSha256),
            (256, Prf::HmacSha384),
            (256, Prf::HmacSha512),
        ] {
            for (esn, cbc) in [(false, false), (true, false), (false, true), (true, true)] {
                let mut c = client_cfg();
                let mut g = gateway_cfg();
                c.ike_proposals = vec![IkeProposal {
                    encr_bits,
                    prf,
                    dh,
                    cbc,
                }];
                g.ike_proposals = c.ike_proposals.clone();
                c.esp_proposals = vec![EspProposal { encr_bits, esn }];
                g.esp_proposals = c.esp_proposals.clone();
                let mut p = Pair::new(c, g);
                p.connect();
                p.drive();
                let (c, g) = (
                    Pair::children(&p.client_events),
                    Pair::children(&p.gw_events),
                );
                assert_eq!(
                    (c.len(), g.len()),
                    (1, 1),
                    "{dh:?} {encr_bits} {prf:?} esn={esn}"
                );
                assert_keys_pair(&c[0], &g[0]);
                assert_eq!(c[0].outbound.keymat.len(), usize::from(encr_bits / 8) + 4);
            }
        }
    }
}

#[test]
fn invalid_ke_payload_makes_the_client_retry_with_the_gateways_group() {
    let mut c = client_cfg();
    c.ike_proposals = vec![
        IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::Ecp256,
            cbc: false,
        },
        IkeProposal {
            encr_bits: 128,
            prf: Prf::HmacSha256,
            dh: DhGroup::X25519,
            cbc: false,
        },
    ];
    let mut g = gateway_cfg();
    g.ike_proposals = vec![IkeProposal {
        encr_bits: 128,
        prf: Prf::HmacSha256,
        dh: DhGroup::X25519,
        cbc: false,
    }];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert_eq!(
        Pair::children(&p.client_events).len(),
        1,
        "{:?}",
        p.client_events
    );
}

#[test]
fn a_wrong_psk_fails_on_both_sides_and_installs_nothing() {
    let mut c = client_cfg();
    c.auth = Authenticator::Psk(secret(b"wrong"));
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    assert!(Pair::children(&p.client_events).is_empty());
    assert!(Pair::children(&p.gw_events).is_empty());
    assert_eq!(Pair::downs(&p.gw_events), vec![DownReason::AuthFailed]);
    assert_eq!(Pair::downs(&p.client_events), vec![DownReason::AuthFailed]);
}

#[test]
fn a_nat_is_detected_and_both_float_to_4500() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.client_seen = "198.51.100.7:31000".parse().unwrap();
    p.connect();
    p.drive();
    let (c, g) = (
        Pair::children(&p.client_events),
        Pair::children(&p.gw_events),
    );
    assert_eq!((c.len(), g.len()), (1, 1));
    assert!(c[0].udp_encap && g[0].udp_encap);
    assert_eq!(c[0].remote.port(), 4500);
    assert_eq!(
        g[0].remote,
        "198.51.100.7:35000".parse().unwrap(),
        "the NAT's mapping for 4500"
    );
}

#[test]
fn lost_packets_are_retransmitted() {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    p.drop_to_gw = vec![1]; // the first IKE_AUTH request
    p.drop_to_client = vec![1]; // and the first IKE_AUTH response to its retransmission
    p.connect();
    p.drive();
    assert_eq!(Pair::children(&p.client_events).len(), 1);
    assert_eq!(
        Pair::children(&p.gw_events).len(),
        1,
        "the replayed request was answered from cache, not processed twice"
    );
    assert!(p.now >= 4_000 * MS, "a retransmission timeout passed");
}

fn up() -> (Pair, IkeSaId, IkeSaId) {
    let mut p = Pair::new(client_cfg(), gateway_cfg());
    let cid = p.connect();
    p.drive();
    let gid = p
        .gw_events
        .iter()
        .find_map(|e| {
            if let Event::IkeUp { ike, .. } = e {
                Some(*ike)
            } else {
                None
            }
        })
        .unwrap();
    (p, cid, gid)
}

#[test]
fn child_rekey_from_either_side_is_make_before_break() {
    for from_client in [true, false] {
        let (mut p, cid, gid) = up();
        let old_c = Pair::children(&p.client_events)[0].clone();
        p.client_events.clear();
        p.gw_events.clear();
        if from_client {
            p.client.rekey_child(p.now, cid, old_c.inbound.spi).unwrap();
        } else {
            p.gw.rekey_child(p.now, gid, old_c.outbound.spi).unwrap();
        }
        p.drive();
        let (c, g) = (
            Pair::children(&p.client_events),
            Pair::children(&p.gw_events),
        );
        assert_eq!(
            (c.len(), g.len()),
            (1, 1),
            "from_client={from_client}: {:?}",
            p.client_events
        );
        assert_keys_pair(&c[0], &g[0]);
        assert_ne!(c[0].inbound.spi, old_c.inbound.spi);
        assert_ne!(
            c[0].inbound.keymat.as_slice(),
            old_c.inbound.keymat.as_slice()
        );
        // The new SA came up before the old one went, on both sides.
        for ev in [&p.client_events, &p.gw_events] {
            let up_at = ev
                .iter()
                .position(|e| matches!(e, Event::ChildUp(_)))
                .unwrap();
            let down_at = ev
                .iter()
                .position(|e| matches!(e, Event::ChildDown { .. }))
                .unwrap();
            assert!(up_at < down_at);
        }
        assert_eq!(p.client.list()[0].3.len(), 1, "only the new child remains");
        assert_eq!(p.gw.list()[0].3.len(), 1);
    }
}

#[test]
fn ike_rekey_from_either_side_keeps_the_children() {
    for from_client in [true, false] {
        let (mut p, cid, gid) = up();
        let child = Pair::children(&p.client_events)[0].clone();
        p.client_events.clear();
        p.gw_events.clear();
        if from_client {
            p.client.rekey_ike(p.now, cid).unwrap();
        } else {
            p.gw.rekey_ike(p.now, gid).unwrap();
        }
        p.drive();
        for (side, ev) in [("client", &p.client_events), ("gw", &p.gw_events)] {
            assert!(
                ev.iter().any(|e| matches!(e, Event::IkeRekeyed { .. })),
                "{side}: {ev:?}"
            );
            assert!(
                !ev.iter().any(|e| matches!(e, Event::ChildDown { .. })),
                "{side}: children kept"
            );
        }
        assert_eq!(p.client.list().len(), 1, "the old IKE SA is gone");
        assert_eq!(p.gw.list().len(), 1);
        assert_eq!(
            p.client.list()[0].3,
            vec![(child.inbound.spi, child.outbound.spi)]
        );
        // The new IKE SA works: a child rekey over it.
        let new_c = p.client.list()[0].0;
        p.client
            .rekey_child(p.now, new_c, child.inbound.spi)
            .unwrap();
        p.drive();
        assert_eq!(Pair::children(&p.gw_events).len(), 1);
    }
}

#[test]
fn delete_tears_down_both_sides() {
    let (mut p, cid, _) = up();
    p.client_events.clear();
    p.gw_events.clear();
    p.client.delete_ike(p.now, cid).unwrap();
    p.drive();
    assert!(p.client.list().is_empty());
    assert!(p.gw.list().is_empty());
    assert_eq!(Pair::downs(&p.gw_events), vec![DownReason::PeerDeleted]);
    assert!(p
        .gw_events
        .iter()
        .any(|e| matches!(e, Event::ChildDown { .. })));
    assert!(p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::ChildDown { .. })));
}

#[test]
fn liveness_checks_find_a_dead_peer() {
    let mut c = client_cfg();
    c.dpd_ns = 10_000 * MS;
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    p.client_events.clear();
    p.cut = true;
    p.now += 11_000 * MS;
    p.client.handle_timeout(p.now);
    // Five retransmissions, 4 s x 1.8^n apart: about 165 s of virtual time.
    for _ in 0..3 {
        p.drive();
    }
    assert_eq!(Pair::downs(&p.client_events), vec![DownReason::Timeout]);
    assert!(p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::ChildDown { .. })));
}

#[test]
fn traffic_selectors_are_narrowed_or_refused() {
    let mut g = gateway_cfg();
    g.pool = None;
    g.remote_ts = vec![ts("10.8.0.0/16")];
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("10.8.1.0/24"), ts("172.16.0.0/12")];
    c.remote_ts = vec![ts("10.0.0.0/8")];
    let mut p = Pair::new(c, g.clone());
    p.connect();
    p.drive();
    let gc = Pair::children(&p.gw_events);
    assert_eq!(
        gc[0].remote_ts,
        vec![ts("10.8.1.0/24")],
        "intersection with 10.8.0.0/16"
    );
    assert_eq!(gc[0].local_ts, vec![ts("10.9.0.0/24")]);
    // No overlap at all: the IKE SA comes up, the CHILD_SA does not.
    let mut c = client_cfg();
    c.request_vip = false;
    c.local_ts = vec![ts("172.16.0.0/12")];
    let mut p = Pair::new(c, g);
    p.connect();
    p.drive();
    assert!(Pair::children(&p.gw_events).is_empty());
    assert!(p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::IkeUp { .. })));
}

#[test]
fn garbage_and_forged_messages_are_dropped_without_harm() {
    let (mut p, _, _) = up();
    let (c, g) = (p.client_addr, p.gw_addr);
    let mut x: u64 = 7;
    for len in 0..200usize {
        let mut junk = vec![0u8; len];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        p.gw.handle(p.now, g, c, &junk);
    }
    // A real SPI pair with a forged encrypted payload.
    let sas = p.gw.list();
    assert_eq!(sas.len(), 1);
    assert!(
        p.gw.poll_transmit().is_none(),
        "nothing is answered to garbage"
    );
    assert!(p.gw.drops.values().sum::<u64>() >= 190);
    assert_eq!(p.gw.list().len(), 1, "the SA survives");
}

#[test]
fn simultaneous_child_rekeys_leave_exactly_one_new_child() {
    // Several seeds, so that both outcomes of the nonce comparison occur.
    let mut outcomes = std::collections::HashSet::new();
    for seed in 0..12u8 {
        let mut c = client_cfg();
        c.name = "gw".into();
        let mut p = Pair::new(c, gateway_cfg());
        p.client = Endpoint::new(
            EndpointConfig {
                peers: vec![client_cfg()],
                ..Default::default()
            },
            [seed.wrapping_add(100); 32],
        );
        let cid = p.connect();
        p.drive();
        let gid = p
            .gw_events
            .iter()
            .find_map(|e| {
                if let Event::IkeUp { ike, .. } = e {
                    Some(*ike)
                } else {
                    None
                }
            })
            .unwrap();
        let old = Pair::children(&p.client_events)[0].clone();
        p.client_events.clear();
        p.gw_events.clear();
        // Both ends start a rekey of the same CHILD_SA before either hears of the other's.
        p.client.rekey_child(p.now, cid, old.inbound.spi).unwrap();
        p.gw.rekey_child(p.now, gid, old.outbound.spi).unwrap();
        p.drive();
        let (cl, gl) = (p.client.list(), p.gw.list());
        assert_eq!(
            cl[0].3.len(),
            1,
            "seed {seed}: client keeps one CHILD_SA: {:?}",
            p.client_events
        );
        assert_eq!(
            gl[0].3.len(),
            1,
            "seed {seed}: gateway keeps one CHILD_SA: {:?}",
            p.gw_events
        );
        let (ci, co) = cl[0].3[0];
        let (gi, go) = gl[0].3[0];
        assert_eq!(
            (ci, co),
            (go, gi),
            "seed {seed}: the survivor is the same SA on both ends"
        );
        assert_ne!(ci, old.inbound.spi, "seed {seed}: it is a new one");
        // Its keys match on both ends.
        let c = Pair::children(&p.client_events)
            .into_iter()
            .find(|x| x.inbound.spi == ci)
            .unwrap();
        let g = Pair::children(&p.gw_events)
            .into_iter()
            .find(|x| x.inbound.spi == gi)
            .unwrap();
        assert_keys_pair(&c, &g);
        outcomes.insert(c.initiated_here);
    }
    assert_eq!(
        outcomes.len(),
        2,
        "both the client's and the gateway's rekey won sometimes"
    );
}

#[test]
fn a_child_sa_past_its_hard_lifetime_is_deleted_unless_a_rekey_replaced_it() {
    const SEC: u64 = 1000 * MS;
    // No rekey: at 30 s the CHILD_SA goes on both sides, the IKE SA stays.
    let mut c = client_cfg();
    c.child_life_ns = 30 * SEC;
    let mut p = Pair::new(c, gateway_cfg());
    let cid = p.connect();
    p.drive();
    assert_eq!(Pair::children(&p.client_events).len(), 1);
    let child_down = |ev: &VecDeque<Event>| {
        ev.iter()
            .filter(|e| matches!(e, Event::ChildDown { .. }))
            .count()
    };
    // drive() ran the clock on past the 30 s.
    assert!(p.now >= 30 * SEC);
    assert_eq!(child_down(&p.client_events), 1);
    assert_eq!(child_down(&p.gw_events), 1);
    assert!(p.client.list()[0].3.is_empty());
    assert_eq!(p.client.ike_of_child(1), None);
    assert!(
        p.client.list().iter().any(|s| s.0 == cid),
        "the IKE SA stays"
    );

    // Rekeyed at 20 s: the replacement lives on past the first one's 30 s.
    let mut c = client_cfg();
    c.child_rekey_ns = 20 * SEC;
    c.child_life_ns = 30 * SEC;
    let mut p = Pair::new(c, gateway_cfg());
    p.connect();
    p.drive();
    // drive() ran two minutes: rekeys at 20 s intervals, none reached 30 s.
    let kids = Pair::children(&p.client_events);
    assert!(kids.len() >= 5, "{}", kids.len());
    assert!(kids[1..].iter().all(|k| k.rekey_of.is_some()));
    assert_eq!(
        child_down(&p.client_events),
        kids.len() - 1,
        "only replaced ones went"
    );
    let last = kids.last().unwrap().inbound.spi;
    assert_eq!(p.client.list()[0].3.len(), 1);
    assert_eq!(p.client.ike_of_child(last), Some(p.client.list()[0].0));
}

// ---- MOBIKE (RFC 4555) ---------------------------------------------------------------------

/// One side's CHILD_SAs as (inbound SPI, outbound SPI).
type SpiPairs = Vec<(u32, u32)>;

/// The CHILD_SA SPIs on each side (client, gateway).
fn spis(p: &Pair) -> (SpiPairs, SpiPairs) {
    (p.client.list()[0].3.clone(), p.gw.list()[0].3.clone())
}

fn no_child_changes(p: &Pair) {
    for ev in [&p.client_events, &p.gw_events] {
        assert!(
            !ev.iter()
                .any(|e| matches!(e, Event::ChildUp(_) | Event::ChildDown { .. })),
            "no rekey, no new CHILD_SA: {ev:?}"
        );
    }
}

#[test]
fn a_roam_moves_the_ike_sa_and_its_child_without_a_rekey() {
    let (mut p, cid, _) = up();
    let before = spis(&p);
    p.client_events.clear();
    p.gw_events.clear();
    // Make-before-break: the new address works before the old one is given up.
    p.roam_to(cid, "192.0.2.77", "192.0.2.77:500");
    p.drive();
    // The client's data plane moved at once; the gateway's on the authenticated update.
    assert_eq!(
        Pair::moves(&p.client_events),
        [(
            "192.0.2.77:4500".parse().unwrap(),
            "192.0.2.1:4500".parse().unwrap(),
            true,
            1
        )]
    );
    assert_eq!(
        Pair::moves(&p.gw_events),
        [(
            "192.0.2.1:4500".parse().unwrap(),
            "192.0.2.77:4500".parse().unwrap(),
            true,
            1
        )]
    );
    assert_eq!(spis(&p), before, "same SPIs");
    no_child_changes(&p);
    assert!(p.client.drops.is_empty() && p.gw.drops.is_empty());

    // And back to the first address.
    p.gw_events.clear();
    p.roam_to(cid, "192.0.2.10", "192.0.2.10:500");
    p.drive();
    assert_eq!(
        Pair::moves(&p.gw_events)[0].1,
        "192.0.2.10:4500".parse().unwrap()
    );
    assert_eq!(spis(&p), before);
    no_child_changes(&p);
}

#[test]
fn break_before_make_the_update_is_retransmitted_from_the_new_address() {
    let (mut p, cid, _) = up();
    let before = spis(&p);
    p.client_events.clear();
    p.gw_events.clear();
    // The old address is gone and the new one not yet usable: the first tries are lost.
    p.cut = true;
    p.roam_to(cid, "192.0.2.88", "192.0.2.88:500");
    let t = p.now + 6_000 * MS;
    p.run_until(t);
    assert!(Pair::moves(&p.gw_events).is_empty());
    p.cut = false;
    p.drive();
    assert_eq!(
        Pair::moves(&p.gw_events),
        [(
            "192.0.2.1:4500".parse().unwrap(),
            "192.0.2.88:4500".parse().unwrap(),
            true,
            1
        )]
    );
    assert_eq!(spis(&p), before);
    no_child_changes(&p);
    assert_eq!(p.client.list().len(), 1, "the IKE SA survived the outage");
}

#[test]
fn a_roam_behind_a_nat_follows_the_mapping_the_update_came_through() {
    let (mut p, cid, _) = up();
    p.client_events.clear();
    p.gw_events.clear();
    p.roam_to(cid, "10.0.0.5", "198.51.100.9:40000");
    p.drive();
    // The NAT's mapping for the client's port 4500.
    assert_eq!(
        Pair::moves(&p.gw_events),
        [(
            "192.0.2.1:4500".parse().unwrap(),
            "198.51.100.9:44000".parse().unwrap(),
            true,
            1
        )]
    );
    no_child_changes(&p);
}

#[test]
fn one_update_rebinds_every_child_sa_of_the_ike_sa() {
    let (mut p, cid, _) = up();
    p.client.create_child(p.now, cid).unwrap();
    p.drive();
    assert_eq!(Pair::children(&p.client_events).len(), 2);
    assert_eq!(Pair::children(&p.gw_events).len(), 2);
    let c = Pair::children(&p.client_events);
    let g = Pair::children(&p.gw_events);
    assert_keys_pair(&c[1], &g[1]);
    assert_eq!(c[1].rekey_of, None, "a further CHILD_SA, not a rekey");
    p.client_events.clear();
    p.gw_events.clear();
    let requests_before = p.to_gw_log.len();
    p.roam_to(cid, "192.0.2.99", "192.0.2.99:500");
    p.drive();
    assert_eq!(p.to_gw_log.len() - requests_before, 1, "one request");
    assert_eq!(Pair::moves(&p.gw_events)[0].3, 2, "both CHILD_SAs rebound");
    no_child_changes(&p);
}

#[test]
fn replayed_forged_and_unauthenticated_updates_move_nothing() {
    let (mut p, cid, _) = up();
    let before = spis(&p);
    // A genuine roam to B, then back to A.
    let from = p.to_gw_log.len();
    p.roam_to(cid, "192.0.2.66", "192.0.2.66:500");
    p.drive();
    let update_to_b = p.to_gw_log[from].clone();
    p.roam_to(cid, "192.0.2.10", "192.0.2.10:500");
    p.drive();
    p.gw_events.clear();
    let drops_before: u64 = p.gw.drops.values().sum();
    let attacker: SocketAddr = "203.0.113.66:4500".parse().unwrap();

    // 1. The old UPDATE_SA_ADDRESSES replayed from the attacker: an old message id.
    p.gw.handle(p.now, update_to_b.1, attacker, &update_to_b.2);
    // 2. The same, re-labelled with the next message id: its integrity check fails.
    let mut forged = update_to_b.2.clone();
    let next_id = u32::from_be_bytes(forged[20..24].try_into().unwrap()) + 2;
    forged[20..24].copy_from_slice(&next_id.to_be_bytes());
    p.gw.handle(p.now, update_to_b.1, attacker, &forged);
    // 3. That one with a flipped byte in the encrypted part.
    let mut flipped = forged.clone();
    let n = flipped.len();
    flipped[n - 20] ^= 0x40;
    p.gw.handle(p.now, update_to_b.1, attacker, &flipped);
    p.deliver();

    assert!(Pair::moves(&p.gw_events).is_empty(), "{:?}", p.gw_events);
    assert_eq!(p.gw.drops.values().sum::<u64>() - drops_before, 3);
    assert_eq!(p.gw.drops.get(&Drop::BadMessageId), Some(&1));
    assert!(p.gw.drops.get(&Drop::Integrity) >= Some(&2));
    assert_eq!(spis(&p), before);
    // The tunnel still answers at A.
    let gid = p.gw.list()[0].0;
    p.gw.rekey_child(p.now, gid, before.1[0].0).unwrap();
    p.drive();
    assert_eq!(
        Pair::children(&p.gw_events).len(),
        1,
        "the gateway reaches A"
    );
}

#[test]
fn roam_needs_an_ike_sa_that_exists() {
    let (mut p, cid, _) = up();
    // Both sent MOBIKE_SUPPORTED in IKE_AUTH: negotiated, so the client may roam.
    assert!(p
        .client
        .roam(p.now, cid, "192.0.2.5".parse().unwrap(), vec![])
        .is_ok());
    assert!(matches!(
        p.gw.roam(p.now, IkeSaId(0xdead), "192.0.2.5".parse().unwrap(), vec![]),
        Err(ConnectError::NoSuchSa)
    ));
}

#[test]
fn simultaneous_ike_rekeys_leave_one_ike_sa_with_the_children_on_both_ends() {
    // RFC 7296 2.8.2; several seeds so that both outcomes of the nonce comparison occur.
    let mut survivors_by = std::collections::HashSet::new();
    for seed in 0..12u8 {
        let mut p = Pair::new(client_cfg(), gateway_cfg());
        p.client = Endpoint::new(
            EndpointConfig {
                peers: vec![client_cfg()],
                ..Default::default()
            },
            [seed.wrapping_add(50); 32],
        );
        let cid = p.connect();
        p.drive();
        let gid = p.gw.list()[0].0;
        let child = p.client.list()[0].3.clone();
        p.client_events.clear();
        p.gw_events.clear();
        // Both ends rekey the IKE SA before either hears of the other's.
        p.client.rekey_ike(p.now, cid).unwrap();
        p.gw.rekey_ike(p.now, gid).unwrap();
        p.drive();
        let (cl, gl) = (p.client.list(), p.gw.list());
        assert_eq!(cl.len(), 1, "seed {seed}: one IKE SA at the client: {cl:?}");
        assert_eq!(
            gl.len(),
            1,
            "seed {seed}: one IKE SA at the gateway: {gl:?}"
        );
        assert_ne!(cl[0].0, cid, "seed {seed}: a new one");
        assert_eq!(cl[0].3, child, "seed {seed}: the CHILD_SA moved with it");
        assert_eq!(gl[0].3.len(), 1);
        for ev in [&p.client_events, &p.gw_events] {
            assert!(
                !ev.iter().any(|e| matches!(e, Event::ChildDown { .. })),
                "seed {seed}: no CHILD_SA went down: {ev:?}"
            );
        }
        let rekeyed: Vec<bool> = p
            .client_events
            .iter()
            .filter_map(|e| match e {
                Event::IkeRekeyed { initiated_here, .. } => Some(*initiated_here),
                _ => None,
            })
            .collect();
        assert_eq!(rekeyed.len(), 1, "seed {seed}: one rekey reported");
        survivors_by.insert(rekeyed[0]);
        // The surviving IKE SA works: a CHILD_SA rekey over it completes on both ends.
        p.client_events.clear();
        p.gw_events.clear();
        p.client.rekey_child(p.now, cl[0].0, child[0].0).unwrap();
        p.drive();
        assert_eq!(Pair::children(&p.client_events).len(), 1, "seed {seed}");
        assert_eq!(Pair::children(&p.gw_events).len(), 1, "seed {seed}");
        // The virtual IP lease went with the children to the surviving IKE SA.
        assert_eq!(
            p.gw.leases(),
            [("10.99.0.1".parse().unwrap(), gl[0].0)],
            "seed {seed}"
        );
    }
    assert_eq!(
        survivors_by.len(),
        2,
        "both the client's and the gateway's rekey survived in some seed"
    );
}

#[test]
fn a_request_from_a_new_path_is_answered_there_without_moving_the_sa() {
    // strongSwan probes a new path with an empty INFORMATIONAL before it sends
    // UPDATE_SA_ADDRESSES: the answer must go to the probe's source (RFC 7296 2.11), and the
    // SA stays where it is.
    let (mut p, cid, _) = up();
    p.gw_events.clear();
    // The client's requests now come from a new address (it has not roamed): a CHILD_SA
    // rekey stands in for strongSwan's probe, it travels the same way.
    p.move_client("192.0.2.150:500", "192.0.2.150:500");
    let before = p.to_gw_log.len();
    let spi = p.client.list()[0].3[0].0;
    let t0 = p.now;
    p.client.rekey_child(p.now, cid, spi).unwrap();
    p.drive();
    assert!(p.to_gw_log.len() > before);
    assert_eq!(p.now, t0, "answered at once, no retransmission needed");
    assert_eq!(
        Pair::children(&p.client_events).len(),
        2,
        "the answer reached the client at its new address"
    );
    assert!(
        Pair::moves(&p.gw_events).is_empty(),
        "no move without an update"
    );
}
