//! The worker's tests: a rig of one worker between two in-memory ports, its agent, and the
//! peers it talks to; one file per path of the worker.

use core::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::agent::{self, WorkerLink};
use crate::crypto::AeadAlg;
use crate::esp::sa::{SaKeys, SaParams};
use crate::msg::{Command, Datagram, Direction, Event, LifetimeKind, LifetimeLimit, Update};
use crate::nat::MasqueradeConfig;
use crate::port::mem::{cable, MemFrame, MemPort};
use crate::spd::{Action, PortRange, Prefix, Rule, Selector};
use crate::stats::{DropReason, Lifetime, Traffic};
use crate::traffic::{FlowSpec, Generator};
use crate::wire::{esp, ethernet, icmpv4, ipv4, udp, IpProtocol};

mod cbc;
mod client;
mod commands;
mod dual;
mod filters;
mod group;
mod hairpin;
mod handoff;
mod icmp;
mod ike_io;
mod inbound;
mod l3;
mod masq;
mod neighbors;
mod outbound;
mod reports;
mod sa_state;

const LAN_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 1];
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0xa, 0xfe];
const WAN_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];

struct Rig {
    w: Worker<MemPort>,
    lan: MemPort,
    wan: MemPort,
    agent: WorkerLink,
    /// The worker's clock when [`Rig::update`] applies an update.
    clock: u64,
}

fn sel(src: &str, dst: &str) -> Selector {
    Selector {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: None,
        src_ports: PortRange { lo: 0, hi: 65535 },
        dst_ports: PortRange { lo: 0, hi: 65535 },
    }
}

fn sa(id: u32, spi: u32, local: &str, remote: &str, lts: &str, rts: &str) -> SaParams {
    let keymat: Vec<u8> = (0..20u8).collect();
    SaParams {
        id: SaId(id),
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &keymat).unwrap(),
        esn: true,
        replay_window: 64,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        encap: None,
        local_ts: lts.parse::<Prefix>().unwrap(),
        remote_ts: rts.parse::<Prefix>().unwrap(),
        outer_ttl: 64,
        resume: Default::default(),
        checkpoint: None,
        lifetime: Default::default(),
    }
}

fn rig(mtu: u16) -> Rig {
    let (lan, lan_gw) = cable("host", "lan", 256);
    let (wan_gw, wan) = cable("wan", "peer", 256);
    let (agent, control) = agent::link(0, 64, None);
    let w = Worker::new(
        0,
        lan_gw,
        wan_gw,
        Link {
            mac: LAN_MAC,
            neighbor: HOST_MAC,
            addr4: Some("10.1.0.1".parse().unwrap()),
            addr6: Some("fd00:a::1".parse().unwrap()),
            mtu: 1500,
        },
        Link {
            mac: WAN_MAC,
            neighbor: PEER_MAC,
            addr4: Some("192.0.2.1".parse().unwrap()),
            addr6: None,
            mtu,
        },
        Sad::with_capacity(8, 3),
        Box::new(Spd::new(Vec::new()).unwrap()),
        control,
    );
    let mut r = Rig {
        w,
        lan,
        wan,
        agent,
        clock: 0,
    };
    let rules = vec![
        Rule {
            id: 0,
            selector: sel("10.1.0.0/24", "10.2.0.0/24"),
            action: Action::Protect(SaId(1)),
        },
        Rule {
            id: 1,
            selector: sel("10.1.0.0/24", "198.51.100.0/24"),
            action: Action::Bypass,
        },
        Rule {
            id: 2,
            selector: sel("0.0.0.0/0", "0.0.0.0/0"),
            action: Action::Discard,
        },
    ];
    r.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            0xa001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    r.update(Update::AddSa {
        dir: Direction::Inbound,
        params: sa(
            2,
            0xb001,
            "192.0.2.1",
            "192.0.2.2",
            "10.1.0.0/24",
            "10.2.0.0/24",
        ),
    });
    r.update(Update::ReplaceSpd { rules });
    r
}

impl Rig {
    fn update(&mut self, u: Update) {
        let g = self
            .agent
            .send(agent::prepare(crate::crypto::best_backend(), &u).unwrap());
        for _ in 0..100 {
            self.w.poll(self.clock);
            if self.agent.pump() >= g {
                return;
            }
        }
        panic!("not acknowledged: {:?}", self.agent.rejections());
    }

    fn send_lan(&mut self, src: &str, dst: &str, size: usize) {
        let mut g = Generator::new(
            vec![FlowSpec {
                src_mac: HOST_MAC,
                dst_mac: LAN_MAC,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                src_port: 1234,
                dst_port: 5001,
            }],
            &[size],
        );
        let mut f = MemFrame::new();
        g.fill(&mut f, 0);
        assert!(self.lan.send(f).is_ok());
        self.w.poll(1);
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.w.counters.drops(r)
    }

    /// A clear UDP packet arriving on the WAN side.
    fn send_wan_clear(&mut self, src: &str, dst: &str) {
        let mut g = Generator::new(
            vec![FlowSpec {
                src_mac: PEER_MAC,
                dst_mac: WAN_MAC,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                src_port: 1234,
                dst_port: 5001,
            }],
            &[100],
        );
        let mut f = MemFrame::new();
        g.fill(&mut f, 0);
        assert!(self.wan.send(f).is_ok());
        self.w.poll(1);
    }
}

/// The rig's peer gateway: it seals 10.2.0.0/24 -> 10.1.0.0/24 with the SA the rig opens
/// (SPI 0xb001, the rig's keys).
fn mirror_peer() -> Rig {
    let mut peer = rig(1500);
    peer.update(Update::AddSa {
        dir: Direction::Outbound,
        params: sa(
            1,
            0xb001,
            "192.0.2.2",
            "192.0.2.1",
            "10.2.0.0/24",
            "10.1.0.0/24",
        ),
    });
    peer.update(Update::ReplaceSpd {
        rules: vec![Rule {
            id: 0,
            selector: sel("10.2.0.0/24", "10.1.0.0/24"),
            action: Action::Protect(SaId(1)),
        }],
    });
    peer
}

/// Swaps a frame's MACs, addresses and UDP ports: the far end's answer to it.
fn answer(f: &mut MemFrame, dst_mac: [u8; 6], src_mac: [u8; 6]) {
    readdress(f, dst_mac, src_mac);
    let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[ethernet::HEADER_LEN..]);
    let (s, t) = (ip.src_addr(), ip.dst_addr());
    ip.set_src_addr(t);
    ip.set_dst_addr(s);
    ip.set_hop_limit(64);
    ip.fill_checksum();
    let (s, t) = (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()));
    let mut u = udp::Packet::new_unchecked(ip.payload_mut());
    let (sp, dp) = (u.src_port(), u.dst_port());
    u.set_src_port(dp);
    u.set_dst_port(sp);
    u.set_checksum(0);
    u.fill_checksum(&s, &t);
}

/// The server's answer to a masqueraded UDP datagram `out` (as it left the WAN), as the WAN
/// brings it back: addresses and ports swapped ([`answer`]), to the gateway's WAN MAC. Also
/// returns the masquerading port it answers.
fn server_answer(out: &MemFrame) -> (MemFrame, u16) {
    let mut f = MemFrame::from_bytes(out.data()).unwrap();
    answer(&mut f, WAN_MAC, PEER_MAC);
    let ip = ipv4::Packet::new_checked(&f.data()[ethernet::HEADER_LEN..]).unwrap();
    let port = udp::Packet::new_checked(ip.payload()).unwrap().dst_port();
    (f, port)
}

/// Sends a frame on to the next link: new destination and source MACs.
fn readdress(f: &mut MemFrame, dst_mac: [u8; 6], src_mac: [u8; 6]) {
    let mut eth = ethernet::Frame::new_unchecked(f.data_mut());
    eth.set_dst_addr(dst_mac);
    eth.set_src_addr(src_mac);
}

/// The IPv4 header of an Ethernet frame (checked).
fn outer_ipv4(f: &MemFrame) -> ipv4::Packet<&[u8]> {
    ipv4::Packet::new_checked(&f.data()[ethernet::HEADER_LEN..]).unwrap()
}

/// Rewrites the SPI of a frame carrying raw ESP over IPv4.
fn set_esp_spi(f: &mut MemFrame, spi: u32) {
    let mut ip = ipv4::Packet::new_unchecked(&mut f.data_mut()[ethernet::HEADER_LEN..]);
    esp::Packet::new_checked(ip.payload_mut())
        .unwrap()
        .set_spi(spi);
}
