use super::*;

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
fn prefixes_parse_and_match() {
    assert!(p("0.0.0.0/0").contains("255.1.2.3".parse().unwrap()));
    assert!(p("10.1.0.0/16").contains("10.1.255.255".parse().unwrap()));
    assert!(!p("10.1.0.0/16").contains("10.2.0.0".parse().unwrap()));
    assert!(p("10.1.2.3").contains("10.1.2.3".parse().unwrap()));
    assert_eq!(p("10.1.2.3").prefix_len(), 32);
    assert!(p("::/0").contains("2001:db8::1".parse().unwrap()));
    assert!(
        !p("::/0").contains("10.0.0.1".parse().unwrap()),
        "families never match"
    );
    assert!(p("2001:db8::/32").contains("2001:db8:ffff::1".parse().unwrap()));
    assert!(p("2001:db8::1/128").contains("2001:db8::1".parse().unwrap()));
    assert!(p("128.0.0.0/1").contains("200.0.0.0".parse().unwrap()));
    assert!(!p("128.0.0.0/1").contains("100.0.0.0".parse().unwrap()));
    let e = "10.1.0.1/24".parse::<Prefix>().unwrap_err();
    assert!(e.0.contains("did you mean 10.1.0.0/24"), "{e}");
    assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    assert!("2001:db8::/129".parse::<Prefix>().is_err());
    assert!("ten/8".parse::<Prefix>().is_err());
    assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
}

#[test]
fn port_ranges_parse() {
    assert_eq!("any".parse::<PortRange>().unwrap(), PortRange::ANY);
    assert_eq!(
        "80".parse::<PortRange>().unwrap(),
        PortRange { lo: 80, hi: 80 }
    );
    assert_eq!("0-65535".parse::<PortRange>().unwrap(), PortRange::ANY);
    assert!("90-80".parse::<PortRange>().is_err());
    assert!("65536".parse::<PortRange>().is_err());
    let r = "1024-65535".parse::<PortRange>().unwrap();
    assert!(r.contains(1024) && r.contains(65535) && !r.contains(1023));
}

#[test]
fn prefix_edges() {
    let a = |s: &str| s.parse::<IpAddr>().unwrap();
    // /0 matches every address of its family, and only its family.
    assert!(p("0.0.0.0/0").contains(a("0.0.0.0")));
    assert!(p("0.0.0.0/0").contains(a("255.255.255.255")));
    assert!(!p("0.0.0.0/0").contains(a("::")));
    assert!(p("::/0").contains(a("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(!p("::/0").contains(a("0.0.0.0")));
    assert!(p("0.0.0.0/0").is_default() && !p("10.0.0.0/8").is_default());
    // /32 and /128 are exactly one address.
    let h = p("10.1.2.3/32");
    assert!(h.contains(a("10.1.2.3")));
    assert!(!h.contains(a("10.1.2.2")) && !h.contains(a("10.1.2.4")));
    let h6 = p("2001:db8::1/128");
    assert!(h6.contains(a("2001:db8::1")));
    assert!(!h6.contains(a("2001:db8::")) && !h6.contains(a("2001:db8::2")));
    assert!(p("255.255.255.255/32").contains(a("255.255.255.255")));
    // The IPv4-mapped IPv6 address is an IPv6 address: it never matches an IPv4 prefix.
    assert!(!p("10.0.0.0/8").contains(a("::ffff:10.0.0.1")));
    // Both ends of a prefix, and one past each.
    let n = p("10.1.0.0/16");
    assert!(n.contains(a("10.1.0.0")) && n.contains(a("10.1.255.255")));
    assert!(!n.contains(a("10.0.255.255")) && !n.contains(a("10.2.0.0")));
    // Display round-trips, bare addresses are host prefixes.
    for s in [
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.1.2.3/32",
        "::/0",
        "2001:db8::/32",
        "2001:db8::1/128",
    ] {
        assert_eq!(p(s).to_string(), s);
    }
    assert_eq!(p("2001:db8::1"), p("2001:db8::1/128"));
    // Host bits are rejected by the parser and by new(); masked() clears them.
    assert!("0.0.0.1/0".parse::<Prefix>().is_err());
    assert!("2001:db8::1/127".parse::<Prefix>().is_err());
    assert!(Prefix::new(a("10.1.2.3"), 24).is_err());
    assert_eq!(Prefix::masked(a("10.1.2.3"), 24), p("10.1.2.0/24"));
    assert_eq!(Prefix::masked(a("10.1.2.3"), 40), p("10.1.2.3/32"));
    assert_eq!(Prefix::masked(a("2001:db8::1"), 0), p("::/0"));
    for bad in [
        "",
        "/8",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "10.0.0/8",
        "::/256",
    ] {
        assert!(bad.parse::<Prefix>().is_err(), "{bad:?}");
    }
}

#[test]
fn port_edges() {
    let any = PortRange::ANY;
    assert!(any.contains(0) && any.contains(65535));
    let zero: PortRange = "0".parse().unwrap();
    assert!(zero.contains(0) && !zero.contains(1));
    let top: PortRange = "65535".parse().unwrap();
    assert!(top.contains(65535) && !top.contains(65534));
    assert_eq!(
        " 1024 - 65535 ".parse::<PortRange>().unwrap(),
        PortRange {
            lo: 1024,
            hi: 65535
        }
    );
    assert_eq!("ANY".parse::<PortRange>().unwrap(), PortRange::ANY);
    for bad in ["", "-", "80-", "-80", "1-2-3", "x", "-1", "70000", "0x50"] {
        assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
    }
}

#[test]
fn deserialize_from_config_values() {
    use serde::de::value::{Error, StrDeserializer, U16Deserializer};
    use serde::de::IntoDeserializer;
    let pr = |s: &str| PortRange::deserialize(IntoDeserializer::<Error>::into_deserializer(s));
    assert_eq!(pr("any").unwrap(), PortRange::ANY);
    assert_eq!(pr("80").unwrap(), PortRange { lo: 80, hi: 80 });
    assert_eq!(
        pr("1024-65535").unwrap(),
        PortRange {
            lo: 1024,
            hi: 65535
        }
    );
    assert!(pr("90-80").is_err());
    // YAML `port: 443` arrives as a number.
    let num = PortRange::deserialize(U16Deserializer::<Error>::new(443)).unwrap();
    assert_eq!(num, PortRange { lo: 443, hi: 443 });
    let pf = |s: &str| Prefix::deserialize(StrDeserializer::<Error>::new(s));
    assert_eq!(pf("10.0.0.0/8").unwrap(), p("10.0.0.0/8"));
    assert_eq!(pf("2001:db8::/32").unwrap(), p("2001:db8::/32"));
    assert!(pf("10.0.0.1/8").is_err());
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
    assert!(empty.is_empty() && empty.len() == 0);
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

/// Addresses drawn from a small pool so that prefixes overlap and keys hit them.
fn addr(rng: &mut Rng, v4: bool) -> IpAddr {
    if v4 {
        let base = [0x0a01_0000u32, 0x0a02_0000, 0xc000_0200, 0x0a01_0100][rng.below(4) as usize];
        IpAddr::V4((base | (rng.below(512) as u32)).into())
    } else {
        let base = [0x2001_0db8u128 << 96, 0xfd00_000a_u128 << 96][rng.below(2) as usize];
        IpAddr::V6(
            (base | u128::from(rng.below(512) as u32) | (u128::from(rng.below(4) as u32) << 64))
                .into(),
        )
    }
}

fn prefix(rng: &mut Rng, v4: bool) -> Prefix {
    let w = if v4 { 32 } else { 128 };
    let len = match rng.below(6) {
        0 => 0,
        1 => w,
        _ => (w as u64 - rng.below(if v4 { 16 } else { 72 })) as u8,
    };
    Prefix::masked(addr(rng, v4), len)
}

fn ports(rng: &mut Rng) -> PortRange {
    match rng.below(4) {
        0 | 1 => PortRange::ANY,
        2 => {
            let p = rng.below(8) as u16 * 1000;
            PortRange { lo: p, hi: p }
        }
        _ => {
            let lo = rng.below(8) as u16 * 1000;
            PortRange {
                lo,
                hi: lo + rng.below(3000) as u16,
            }
        }
    }
}

#[test]
fn fast_lookup_equals_linear_first_match() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut checked = 0u64;
    for round in 0..60 {
        let n = [1usize, 2, 10, 100, 500, 2000][round % 6];
        let rules: Vec<Rule> = (0..n)
            .map(|i| {
                let v4 = rng.below(3) != 0;
                Rule {
                    id: i as u32,
                    selector: Selector {
                        src: prefix(&mut rng, v4),
                        dst: prefix(&mut rng, v4),
                        proto: [None, Some(6), Some(17), Some(1)][rng.below(4) as usize],
                        src_ports: ports(&mut rng),
                        dst_ports: ports(&mut rng),
                    },
                    action: [
                        Action::Bypass,
                        Action::Discard,
                        Action::Protect(SaId(i as u32)),
                    ][rng.below(3) as usize],
                }
            })
            .collect();
        let spd = Spd::new(rules.clone()).unwrap();
        for _ in 0..3000 {
            // Half the keys are built from a rule's own boundaries.
            let k = if rng.below(2) == 0 && !rules.is_empty() {
                let r = rules[rng.below(rules.len() as u64) as usize].selector;
                let edge = |rng: &mut Rng, pr: Prefix| {
                    let b = bits(pr.addr())
                        | if rng.below(2) == 0 {
                            !mask(width(pr.addr()), pr.prefix_len())
                        } else {
                            0
                        };
                    match pr.addr() {
                        IpAddr::V4(_) => IpAddr::V4((b as u32).into()),
                        IpAddr::V6(_) => IpAddr::V6(b.into()),
                    }
                };
                FlowKey {
                    src: edge(&mut rng, r.src),
                    dst: edge(&mut rng, r.dst),
                    proto: r.proto.unwrap_or(6),
                    src_port: [
                        r.src_ports.lo,
                        r.src_ports.hi,
                        r.src_ports.hi.saturating_add(1),
                    ][rng.below(3) as usize],
                    dst_port: [
                        r.dst_ports.lo,
                        r.dst_ports.hi,
                        r.dst_ports.lo.saturating_sub(1),
                    ][rng.below(3) as usize],
                }
            } else {
                let v4 = rng.below(3) != 0;
                FlowKey {
                    src: addr(&mut rng, v4),
                    dst: addr(&mut rng, v4),
                    proto: [6u8, 17, 1, 50][rng.below(4) as usize],
                    src_port: rng.below(9000) as u16,
                    dst_port: rng.below(9000) as u16,
                }
            };
            let fast = spd.lookup_tuples(&k).map(|r| r.id);
            let slow = spd.lookup_linear(&k).map(|r| r.id);
            assert_eq!(fast, slow, "round {round}, {n} rules, key {k:?}");
            assert_eq!(spd.lookup(&k).map(|r| r.id), slow);
            checked += u64::from(slow.is_some());
        }
    }
    assert!(
        checked > 50_000,
        "the keys hit rules often enough to mean something: {checked}"
    );
}
