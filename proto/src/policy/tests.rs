use super::*;

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
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
fn prefix_range() {
    let p: Prefix = "10.1.0.0/24".parse().unwrap();
    assert_eq!(
        p.range(),
        ("10.1.0.0".parse().unwrap(), "10.1.0.255".parse().unwrap())
    );
    let p: Prefix = "0.0.0.0/0".parse().unwrap();
    assert_eq!(p.range().1, "255.255.255.255".parse::<IpAddr>().unwrap());
    let p: Prefix = "fd00:a::/64".parse().unwrap();
    assert_eq!(
        p.range().1,
        "fd00:a::ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap()
    );
    let p: Prefix = "10.1.0.7/32".parse().unwrap();
    assert_eq!(p.range().0, p.range().1);
}

#[test]
fn filter_rule_ids_carry_their_filter_index_and_other_ids_none() {
    let id = filter_rule_id(5, 7).unwrap();
    assert_eq!(filter_index(id), Some(5));
    assert_eq!(
        filter_index(filter_rule_id(63, (1 << 20) - 1).unwrap()),
        Some(63)
    );
    assert_eq!(filter_rule_id(64, 0), None);
    assert_eq!(filter_rule_id(0, 1 << 20), None);
    for plain in [0u32, 1, 100, 0x7fff_ffff, 0xe000_0000] {
        assert_eq!(filter_index(plain), None, "{plain:#x}");
    }
}
