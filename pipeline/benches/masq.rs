//! Per-connection masquerade (issue 21) per packet, next to the single-node masquerade in the
//! same run: the per-user access check (`access/allows`, the goal is <= 30 ns), the
//! FAM's rewrite of a 64-byte TCP packet (`masq/fam_outbound`) and, as the baseline, the
//! single-node `nat::Masquerade::outbound` of the same packet (`masq/nat_outbound`). Each
//! rewrite iteration copies the 64-byte packet back first (in both, so the ratio holds).
//!
//! Run: `cargo bench -p roamgate-pipeline --bench masq -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use pipeline::masq::access::{AccessPolicy, AccessRule, RuleProto, UserPolicy, Verdict};
use pipeline::masq::{FamTable, FlowKey, Masq};
use pipeline::nat::{Masquerade, MasqueradeConfig};
use pipeline::spd::PortRange;
use pipeline::wire::{ipv4, tcp, IpProtocol};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn tcp64() -> Vec<u8> {
    let payload = [0x61u8; 24]; // 20 + 20 + 24 = 64 bytes
    let r = tcp::Repr {
        src_port: 40000,
        dst_port: 443,
        seq_number: 1,
        ack_number: 1,
        flags: tcp::Flags::default(),
        window_len: 1000,
        payload_len: payload.len(),
    };
    let mut l4 = vec![0u8; r.buffer_len()];
    let mut t = tcp::Packet::new_unchecked(&mut l4[..]);
    r.emit(&mut t);
    t.payload_mut().copy_from_slice(&payload);
    t.fill_checksum(&IpAddr::V4(CLIENT), &IpAddr::V4(SERVER));
    let ip = ipv4::Repr {
        src_addr: CLIENT,
        dst_addr: SERVER,
        next_header: IpProtocol::Tcp,
        payload_len: l4.len(),
        hop_limit: 64,
        dscp: 0,
        ecn: 0,
        ident: 1,
        dont_frag: true,
    };
    let mut b = vec![0u8; ip.buffer_len()];
    ip.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
    b[20..].copy_from_slice(&l4);
    assert_eq!(b.len(), 64);
    b
}

fn policy(users: usize, rules: usize) -> AccessPolicy {
    let mut u = BTreeMap::new();
    for i in 0..users {
        let list = (0..rules)
            .map(|r| AccessRule {
                dst: format!("198.18.{}.0/24", r % 250).parse().unwrap(),
                proto: RuleProto::Tcp,
                ports: PortRange { lo: 80, hi: 80 },
                action: Verdict::Deny,
            })
            .chain(std::iter::once(AccessRule {
                dst: "192.0.2.0/24".parse().unwrap(),
                proto: RuleProto::Tcp,
                ports: PortRange { lo: 443, hi: 443 },
                action: Verdict::Allow,
            }))
            .collect();
        u.insert(
            format!("user{i}@example.org"),
            UserPolicy {
                groups: vec![],
                rules: list,
            },
        );
    }
    AccessPolicy {
        default: Verdict::Deny,
        groups: BTreeMap::new(),
        users: u,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("access");
    for rules in [1usize, 8] {
        let t = policy(10_000, rules).compile().unwrap();
        let u = t.user("user4242@example.org").unwrap();
        g.bench_function(
            format!("allows/10k_users/{}_rules_match_last", rules + 1),
            |b| b.iter(|| black_box(t.allows(black_box(u), IpAddr::V4(SERVER), 6, 443))),
        );
    }
    g.finish();

    let template = tcp64();
    let mut g = c.benchmark_group("masq");
    let mut fam = FamTable::new();
    for i in 0..10_000u32 {
        let f = FlowKey {
            proto: 6,
            client: Ipv4Addr::from(u32::from(CLIENT) + i),
            client_port: 40000,
            server: SERVER,
            server_port: 443,
        };
        fam.install(
            f,
            Masq {
                proto: 6,
                addr: Ipv4Addr::new(198, 51, 100, 1),
                port: 1024 + (i % 60000) as u16,
            },
        );
    }
    let mut buf = template.clone();
    g.bench_function("fam_outbound/64B/10k_flows", |b| {
        b.iter(|| {
            buf.copy_from_slice(&template);
            black_box(fam.outbound(black_box(&mut buf)).unwrap());
        })
    });
    let mut nat = Masquerade::new(MasqueradeConfig {
        external_addr: Ipv4Addr::new(198, 51, 100, 1),
        ..Default::default()
    });
    buf.copy_from_slice(&template);
    nat.outbound(&mut buf, 0).unwrap();
    g.bench_function("nat_outbound/64B (baseline)", |b| {
        b.iter(|| {
            buf.copy_from_slice(&template);
            nat.outbound(black_box(&mut buf), 1).unwrap();
            black_box(&buf);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
