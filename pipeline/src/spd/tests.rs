use super::*;
use core::net::IpAddr;

use crate::ids::SaId;
use proto::policy::addr_width as width;

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn key(src: &str, dst: &str, proto: u8, sp: u16, dp: u16) -> FlowKey {
    FlowKey {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        src_port: sp,
        dst_port: dp,
    }
}

#[test]
fn backwards_port_range_is_rejected() {
    let sel = Selector {
        src: p("10.0.0.0/8"),
        dst: p("10.0.0.0/8"),
        proto: None,
        src_ports: PortRange::ANY,
        dst_ports: PortRange { lo: 90, hi: 80 },
    };
    let rule = Rule {
        id: 9,
        selector: sel,
        action: Action::Bypass,
    };
    assert_eq!(
        Spd::new(vec![rule]).err(),
        Some(SpdError::InvalidPortRange(9))
    );
    let mut src_bad = rule;
    src_bad.selector.dst_ports = PortRange::ANY;
    src_bad.selector.src_ports = PortRange { lo: 1, hi: 0 };
    assert_eq!(
        Spd::new(vec![src_bad]).err(),
        Some(SpdError::InvalidPortRange(9))
    );
    let empty = Spd::new(Vec::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(empty
        .lookup(&key("10.0.0.1", "10.0.0.2", 6, 1, 2))
        .is_none());
}

#[test]
fn mixed_family_keys_match_nothing() {
    let any4 = Rule {
        id: 1,
        selector: Selector {
            src: p("0.0.0.0/0"),
            dst: p("0.0.0.0/0"),
            proto: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        },
        action: Action::Bypass,
    };
    let mut any6 = any4;
    any6.id = 2;
    any6.selector.src = p("::/0");
    any6.selector.dst = p("::/0");
    let spd = Spd::new(vec![any4, any6]).unwrap();
    assert_eq!(
        spd.lookup(&key("10.0.0.1", "10.0.0.2", 6, 1, 2))
            .unwrap()
            .id,
        1
    );
    assert_eq!(spd.lookup(&key("::1", "::2", 6, 1, 2)).unwrap().id, 2);
    assert!(spd.lookup(&key("10.0.0.1", "::2", 6, 1, 2)).is_none());
    assert!(spd.lookup(&key("::1", "10.0.0.2", 6, 1, 2)).is_none());
}

#[test]
fn first_match_wins_and_errors() {
    let sel = |s: &str, d: &str| Selector {
        src: p(s),
        dst: p(d),
        proto: None,
        src_ports: PortRange::ANY,
        dst_ports: PortRange::ANY,
    };
    let rules = vec![
        Rule {
            id: 1,
            selector: Selector {
                dst_ports: PortRange { lo: 22, hi: 22 },
                proto: Some(6),
                ..sel("10.1.0.0/24", "10.2.0.0/24")
            },
            action: Action::Discard,
        },
        Rule {
            id: 2,
            selector: sel("10.1.0.0/24", "10.2.0.0/24"),
            action: Action::Protect(SaId(7)),
        },
        Rule {
            id: 3,
            selector: sel("0.0.0.0/0", "0.0.0.0/0"),
            action: Action::Bypass,
        },
    ];
    let spd = Spd::new(rules.clone()).unwrap();
    assert_eq!(
        spd.lookup(&key("10.1.0.5", "10.2.0.9", 6, 999, 22))
            .unwrap()
            .id,
        1
    );
    assert_eq!(
        spd.lookup(&key("10.1.0.5", "10.2.0.9", 17, 999, 22))
            .unwrap()
            .id,
        2
    );
    assert_eq!(
        spd.lookup(&key("10.9.0.5", "10.2.0.9", 6, 999, 22))
            .unwrap()
            .id,
        3
    );
    assert!(spd
        .lookup(&key("2001:db8::1", "2001:db8::2", 6, 1, 2))
        .is_none());
    let mut dup = rules.clone();
    dup[2].id = 1;
    assert_eq!(Spd::new(dup).err(), Some(SpdError::DuplicateId(1)));
    let mut mixed = rules;
    mixed[0].selector.dst = p("::/0");
    assert_eq!(Spd::new(mixed).err(), Some(SpdError::MixedFamilies(1)));
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn from_bits(v4: bool, b: u128) -> IpAddr {
    if v4 {
        IpAddr::V4((b as u32).into())
    } else {
        IpAddr::V6(b.into())
    }
}

/// Addresses drawn from a small pool so that prefixes overlap and keys hit them.
fn addr(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        let base = [
            0x0a01_0000u32,
            0x0a02_0000,
            0xc000_0200,
            0x0a01_0100,
            0,
            0xffff_ff00,
        ][rng.below(6) as usize];
        IpAddr::V4((base | (rng.below(512) as u32)).into())
    } else {
        let base = [
            0x2001_0db8u128 << 96,
            0xfd00_000a_u128 << 96,
            0,
            u128::MAX << 16,
        ][rng.below(4) as usize];
        IpAddr::V6(
            (base | u128::from(rng.below(512) as u32) | (u128::from(rng.below(4) as u32) << 64))
                .into(),
        )
    }
}

/// How a round draws prefix lengths: each shapes the tuple space differently.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Site-to-site: mostly long prefixes, some /0 and host routes (few tuples).
    Sites,
    /// Any length 0..=width (up to 33x33 or 129x129 tuples: the degenerate case).
    AnyLength,
    /// A handful of address pairs shared by many rules that differ in proto and ports
    /// (long lists inside one hash bucket).
    FewPairs,
}

fn prefix(rng: &mut Rng, v4: bool, shape: Shape) -> Prefix {
    let w: u8 = if v4 { 32 } else { 128 };
    let len = match shape {
        Shape::Sites => match rng.below(6) {
            0 => 0,
            1 => w,
            _ => w - rng.below(if v4 { 16 } else { 72 }) as u8,
        },
        Shape::AnyLength => rng.below(u64::from(w) + 1) as u8,
        Shape::FewPairs => [0, w / 2, w - 8, w][rng.below(4) as usize],
    };
    let a = if matches!(shape, Shape::FewPairs) {
        // Two addresses per family: the masked pairs repeat.
        from_bits(
            v4,
            [0x0a01_0203u128, 0xc000_02ff][rng.below(2) as usize] << if v4 { 0 } else { 96 },
        )
    } else {
        addr(rng, v4)
    };
    Prefix::masked(a, len)
}

fn ports(rng: &mut Rng) -> PortRange {
    match rng.below(6) {
        0 | 1 => PortRange::ANY,
        2 => {
            let p = [0u16, 22, 1000, 5000, 65535][rng.below(5) as usize];
            PortRange { lo: p, hi: p }
        }
        3 => PortRange {
            lo: 0,
            hi: rng.below(9000) as u16,
        },
        4 => PortRange {
            lo: 60000 + rng.below(5536) as u16,
            hi: 65535,
        },
        _ => {
            let lo = rng.below(8) as u16 * 1000;
            PortRange {
                lo,
                hi: lo + rng.below(3000) as u16,
            }
        }
    }
}

const PROTOS: [Option<u8>; 6] = [None, None, Some(6), Some(17), Some(1), Some(58)];

fn random_rules(rng: &mut Rng, n: usize, shape: Shape) -> Vec<Rule> {
    let v6_share = rng.below(3); // none, a third, or two thirds of the rules are IPv6
    let mut rules: Vec<Rule> = (0..n)
        .map(|i| {
            let v4 = rng.below(3) >= v6_share;
            Rule {
                id: i as u32,
                selector: Selector {
                    src: prefix(rng, v4, shape),
                    dst: prefix(rng, v4, shape),
                    proto: PROTOS[rng.below(PROTOS.len() as u64) as usize],
                    src_ports: ports(rng),
                    dst_ports: ports(rng),
                },
                action: [
                    Action::Bypass,
                    Action::Discard,
                    Action::Protect(SaId(i as u32)),
                ][rng.below(3) as usize],
            }
        })
        .collect();
    // Often a default rule at the end (as real SPDs have), sometimes one in the middle.
    if n > 1 && rng.below(2) == 0 {
        let at = if rng.below(4) == 0 {
            rng.below(n as u64) as usize
        } else {
            n - 1
        };
        let v4 = rules[at].selector.src.addr().is_ipv4();
        let any = Prefix::masked(from_bits(v4, 0), 0);
        rules[at].selector = Selector {
            src: any,
            dst: any,
            proto: None,
            src_ports: PortRange::ANY,
            dst_ports: PortRange::ANY,
        };
    }
    rules
}

/// An address at or just outside an edge of `pr`: first, last, one before the first, one
/// after the last (wrapping within the family), or a random one inside.
fn edge_addr(rng: &mut Rng, pr: Prefix) -> IpAddr {
    let v4 = pr.addr().is_ipv4();
    let w = width(pr.addr());
    let all = mask(w, w);
    let host = !mask(w, pr.prefix_len()) & all;
    let net = bits(pr.addr());
    let b = match rng.below(5) {
        0 => net,
        1 => net | host,
        2 => net.wrapping_sub(1) & all,
        3 => (net | host).wrapping_add(1) & all,
        _ => net | (u128::from(rng.next()) << 64 | u128::from(rng.next())) & host,
    };
    from_bits(v4, b)
}

fn edge_port(rng: &mut Rng, r: PortRange) -> u16 {
    [
        r.lo,
        r.hi,
        r.lo.wrapping_sub(1),
        r.hi.wrapping_add(1),
        0,
        65535,
        rng.below(65536) as u16,
    ][rng.below(7) as usize]
}

/// A key aimed at rule boundaries: source from one rule, destination from the same or another
/// rule of the same family (`by_family` = the IPv4 rules, the IPv6 rules), protocol and ports
/// at or just outside the rule's.
fn edge_key(rng: &mut Rng, rules: &[Rule], by_family: &[Vec<Selector>; 2]) -> FlowKey {
    let r = rules[rng.below(rules.len() as u64) as usize].selector;
    let same = &by_family[usize::from(!r.src.addr().is_ipv4())];
    let other = same[rng.below(same.len() as u64) as usize];
    let dst = if rng.below(2) == 0 { r.dst } else { other.dst };
    FlowKey {
        src: edge_addr(rng, r.src),
        dst: edge_addr(rng, dst),
        proto: match (r.proto, rng.below(3)) {
            (Some(p), 0 | 1) => p,
            _ => [0u8, 1, 6, 17, 50, 58, 255][rng.below(7) as usize],
        },
        src_port: edge_port(rng, r.src_ports),
        dst_port: edge_port(rng, r.dst_ports),
    }
}

fn random_key(rng: &mut Rng) -> FlowKey {
    let v4 = rng.below(3) != 0;
    // One key in 50 mixes families: it must match nothing.
    let dst_v4 = if rng.below(50) == 0 { !v4 } else { v4 };
    FlowKey {
        src: addr(rng, v4),
        dst: addr(rng, dst_v4),
        proto: [6u8, 17, 1, 58, 50][rng.below(5) as usize],
        src_port: rng.below(9000) as u16,
        dst_port: [rng.below(9000) as u16, 0, 65535][rng.below(3) as usize],
    }
}

#[test]
fn fast_lookup_equals_linear_first_match() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut hits, mut misses, mut not_first) = (0u64, 0u64, 0u64);
    let (mut probed, mut scanned) = (0u32, 0u32);
    for round in 0..90 {
        let shape = [Shape::Sites, Shape::AnyLength, Shape::FewPairs][round % 3];
        let n = match round % 5 {
            0 => 1 + rng.below(16) as usize,
            1 => 1 + rng.below(200) as usize,
            _ => 1 + rng.below(2000) as usize,
        };
        let rules = random_rules(&mut rng, n, shape);
        let spd = Spd::new(rules.clone()).unwrap();
        assert_eq!(spd.rules(), &rules[..]);
        assert_eq!(spd.len(), n);
        for fam in [&spd.v4, &spd.v6] {
            if !fam.tuples.is_empty() {
                if fam.scan.is_some() {
                    scanned += 1;
                } else {
                    probed += 1;
                }
            }
        }
        let by_family = [true, false].map(|v4| {
            rules
                .iter()
                .map(|r| r.selector)
                .filter(|s| s.src.addr().is_ipv4() == v4)
                .collect::<Vec<_>>()
        });
        for _ in 0..4000 {
            let k = if rng.below(4) != 0 {
                edge_key(&mut rng, &rules, &by_family)
            } else {
                random_key(&mut rng)
            };
            let slow = spd.lookup_linear(&k).map(|r| r.id);
            let ctx = || format!("round {round} ({shape:?}), {n} rules, key {k:?}");
            assert_eq!(spd.lookup_tuples(&k).map(|r| r.id), slow, "{}", ctx());
            assert_eq!(spd.lookup(&k).map(|r| r.id), slow, "{}", ctx());
            match slow {
                Some(id) => {
                    hits += 1;
                    // The first match shadows a later one: pruning had something to prune.
                    let later = rules.iter().skip(id as usize + 1);
                    if later.into_iter().any(|r| r.selector.matches(&k)) {
                        not_first += 1;
                    }
                }
                None => misses += 1,
            }
        }
    }
    // The keys mean something: plenty of hits, of misses, and of keys matched by several rules.
    assert!(hits > 150_000, "hits {hits}");
    assert!(misses > 40_000, "misses {misses}");
    assert!(not_first > 50_000, "shadowed matches {not_first}");
    assert!(
        probed > 20 && scanned > 20,
        "probed {probed}, scanned {scanned}"
    );
}

/// Every key of a small universe against random rule sets over it: no key is left to chance.
#[test]
fn fast_lookup_equals_linear_exhaustively_on_a_small_universe() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    // Addresses 10.0.0.0..=10.0.0.17: two /28s' worth of edges, and a few outside the /28.
    let addrs: Vec<IpAddr> = (0..18u32)
        .map(|i| IpAddr::V4((0x0a00_0000 | i).into()))
        .collect();
    let port_set = [0u16, 1, 2, 65534, 65535];
    let ranges = [
        PortRange::ANY,
        PortRange { lo: 0, hi: 0 },
        PortRange { lo: 1, hi: 2 },
        PortRange { lo: 2, hi: 65535 },
        PortRange {
            lo: 65535,
            hi: 65535,
        },
    ];
    let mut hits = 0u64;
    for round in 0..40 {
        let n = 1 + rng.below(if round % 2 == 0 { 12 } else { 80 }) as usize;
        let rules: Vec<Rule> = (0..n)
            .map(|i| {
                let pf = |rng: &mut Rng| {
                    let len = [0u8, 24, 27, 28, 29, 30, 31, 32, 32][rng.below(9) as usize];
                    Prefix::masked(addrs[rng.below(18) as usize], len)
                };
                Rule {
                    id: i as u32,
                    selector: Selector {
                        src: pf(&mut rng),
                        dst: pf(&mut rng),
                        proto: [None, Some(1), Some(6)][rng.below(3) as usize],
                        src_ports: ranges[rng.below(5) as usize],
                        dst_ports: ranges[rng.below(5) as usize],
                    },
                    action: Action::Bypass,
                }
            })
            .collect();
        let spd = Spd::new(rules).unwrap();
        for &src in &addrs {
            for &dst in &addrs {
                for proto in [1u8, 6, 17] {
                    for sp in port_set {
                        for dp in port_set {
                            let k = FlowKey {
                                src,
                                dst,
                                proto,
                                src_port: sp,
                                dst_port: dp,
                            };
                            let slow = spd.lookup_linear(&k).map(|r| r.id);
                            assert_eq!(spd.lookup_tuples(&k).map(|r| r.id), slow, "{k:?}");
                            assert_eq!(spd.lookup(&k).map(|r| r.id), slow, "{k:?}");
                            hits += u64::from(slow.is_some());
                        }
                    }
                }
            }
        }
    }
    assert!(hits > 100_000, "hits {hits}");
}
