#![no_main]
//! Whole frames into a real worker, on both sides: everything a packet can reach in the data
//! plane (Ethernet/IP parsing, SPD, ESP open against installed SAs, NAT-T classification, NAT,
//! ICMP generation, outer-fragment reassembly, next-hop resolution and ARP/ND learning). Every frame must leave either forwarded or counted under one reason.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pipeline::agent;
use pipeline::crypto::{AeadAlg, Backend};
use pipeline::esp::sa::{SaKeys, SaParams, UdpEncap};
use proto::sa::{Checkpoint, Resume};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::{Direction, Update};
use pipeline::nat::MasqueradeConfig;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::sad::Sad;
use pipeline::spd::{Action, PortRange, Rule, Selector, Spd};
use pipeline::stats::Lifetime;
use pipeline::worker::{Link, NeighborSetup, Routes, Worker};

struct Rig {
    w: Worker<MemPort>,
    lan: MemPort,
    wan: MemPort,
}

fn sa(id: u32, spi: u32, v6: bool, encap: bool) -> SaParams {
    let (l, r, lts, rts) = if v6 {
        ("2001:db8::1", "2001:db8::2", "fd00:a::/64", "fd00:b::/64")
    } else {
        ("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24")
    };
    SaParams {
        id: SaId(id),
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[7u8; 20]).expect("20 bytes"),
        esn: true,
        replay_window: 64,
        local: l.parse().expect("literal"),
        remote: r.parse().expect("literal"),
        encap: encap.then_some(UdpEncap {
            local_port: 4500,
            remote_port: 4500,
        }),
        local_ts: lts.parse().expect("literal"),
        remote_ts: rts.parse().expect("literal"),
        outer_ttl: 64,
        // Small limits so that the soft and hard lifetime paths (and `sa_expired`) are
        // reached by the fuzzer's frames too.
        lifetime: Lifetime {
            soft_packets: 3,
            hard_packets: 40,
            ..Lifetime::default()
        },
        // Likewise a reservation below the hard limit (`seq_not_reserved`) and checkpoints by
        // packets and by time.
        resume: Resume {
            seq: 0,
            seq_reserved: Some(30),
            hold_us: 0,
            replay: None,
        },
        checkpoint: Some(Checkpoint {
            packets: 4,
            millis: 1,
        }),
    }
}

fn rig() -> Rig {
    let (lan, lan_gw) = cable("fuzz-lan", "gw-lan", 64);
    let (wan_gw, wan) = cable("gw-wan", "fuzz-wan", 64);
    let (mut link, control) = agent::link(0, 64, None);
    let link_of = |mac: u8, a4: &str| Link {
        mac: [2, 0, 0, 0, 0, mac],
        neighbor: [2, 0, 0, 0, 1, mac],
        addr4: Some(a4.parse().expect("literal")),
        addr6: Some("fd00:a::1".parse().expect("literal")),
        mtu: 1400,
    };
    let mut w = Worker::new(
        0,
        lan_gw,
        wan_gw,
        link_of(1, "10.1.0.1"),
        link_of(2, "192.0.2.1"),
        Sad::with_capacity(8, 1),
        Box::new(Spd::new(Vec::new()).expect("empty")),
        control,
    );
    // Outer fragments reassembled, next hops resolved (the peer pinned, the rest asked for).
    w.set_reassembly(Some(pipeline::reasm::ReasmConfig::default()))
        .expect("limits");
    w.set_neighbors(Some(NeighborSetup {
        cache: Default::default(),
        lan: Some(Routes {
            on_link: vec!["10.1.0.0/24".parse().expect("literal")],
            ..Routes::default()
        }),
        wan: Some(Routes {
            on_link: vec!["192.0.2.0/24".parse().expect("literal")],
            gateway4: Some("192.0.2.254".parse().expect("literal")),
            statics: vec![("192.0.2.2".parse().expect("literal"), [2, 0, 0, 0, 1, 2])],
            ..Routes::default()
        }),
    }))
    .expect("neighbour setup");
    let any = PortRange::ANY;
    let sel = |s: &str, d: &str| Selector {
        src: s.parse().expect("literal"),
        dst: d.parse().expect("literal"),
        proto: None,
        src_ports: any,
        dst_ports: any,
    };
    let updates = [
        Update::AddSa {
            dir: Direction::Outbound,
            params: sa(1, 0x100, false, false),
        },
        Update::AddSa {
            dir: Direction::Inbound,
            params: sa(2, 0x200, false, false),
        },
        Update::AddSa {
            dir: Direction::Outbound,
            params: sa(3, 0x300, true, true),
        },
        Update::AddSa {
            dir: Direction::Inbound,
            params: sa(4, 0x400, true, true),
        },
        Update::ReplaceSpd {
            rules: vec![
                Rule {
                    id: 0,
                    selector: sel("10.1.0.0/24", "10.2.0.0/24"),
                    action: Action::Protect(SaId(1)),
                },
                Rule {
                    id: 1,
                    selector: sel("fd00:a::/64", "fd00:b::/64"),
                    action: Action::Protect(SaId(3)),
                },
                Rule {
                    id: 2,
                    selector: sel("10.1.0.0/24", "0.0.0.0/0"),
                    action: Action::Bypass,
                },
                Rule {
                    id: 3,
                    selector: sel("0.0.0.0/0", "0.0.0.0/0"),
                    action: Action::Discard,
                },
            ],
        },
        Update::SetMasquerade {
            config: Some(MasqueradeConfig {
                external_addr: "192.0.2.1".parse().expect("literal"),
                ..MasqueradeConfig::default()
            }),
        },
    ];
    for u in &updates {
        let g = link.send(agent::prepare(Backend::Ring, u).expect("valid update"));
        while link.pump() < g {
            w.poll(0);
        }
    }
    Rig { w, lan, wan }
}

static RIG: OnceLock<std::sync::Mutex<Rig>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mut r = RIG
        .get_or_init(|| std::sync::Mutex::new(rig()))
        .lock()
        .expect("not poisoned");
    let Some((&side, frame)) = data.split_first() else {
        return;
    };
    let Some(f) = MemFrame::from_bytes(frame) else {
        return;
    };
    let before = r.w.handle().counters.snapshot();
    let port = if side & 1 == 0 {
        &mut r.lan
    } else {
        &mut r.wan
    };
    if port.send(f).is_err() {
        return;
    }
    r.w.poll(u64::from(side) * 1_000_000);
    let out =
        std::iter::from_fn(|| r.lan.recv()).count() + std::iter::from_fn(|| r.wan.recv()).count();
    let after = r.w.handle().counters.snapshot();
    let d = after.since(&before);
    let dropped: u64 = d.drops.iter().sum();
    // One frame in: it is forwarded or counted once; each ICMP error it caused is a frame of
    // its own (`icmp_sent`), forwarded, or counted once too (queued for its next hop, no route).
    let errors = d.traffic[pipeline::stats::Traffic::ALL
        .iter()
        .position(|t| *t == pipeline::stats::Traffic::IcmpSent)
        .expect("a traffic counter")];
    assert!(
        dropped <= 1 + errors,
        "one frame, one reason (and one per ICMP error): {dropped}, {errors} error(s)"
    );
    assert!(out as u64 + dropped >= 1, "every frame is accounted for");
});
