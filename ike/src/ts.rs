//! Traffic selectors (RFC 7296 2.9, 3.13.1): the ones roamgate builds and narrowing the
//! peer's proposal to what a connection allows.
//!
//! Owns: selector constructors and [`narrow`].
//! Must never: widen a selector beyond what the configuration allows.

use core::net::{IpAddr, Ipv4Addr};

use crate::wire::TrafficSelector;

/// The intersection of the proposed selectors with the configured ones (RFC 7296 2.9).
pub fn narrow(
    proposed: &[TrafficSelector],
    configured: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for p in proposed {
        for c in configured {
            if p.start.is_ipv4() != c.start.is_ipv4() {
                continue;
            }
            let proto = match (p.protocol, c.protocol) {
                (0, x) | (x, 0) => x,
                (a, b) if a == b => a,
                _ => continue,
            };
            let sp = p.start_port.max(c.start_port);
            let ep = p.end_port.min(c.end_port);
            let sa = max_ip(p.start, c.start);
            let ea = min_ip(p.end, c.end);
            if sp <= ep && ip_le(sa, ea) {
                out.push(TrafficSelector {
                    protocol: proto,
                    start_port: sp,
                    end_port: ep,
                    start: sa,
                    end: ea,
                });
            }
        }
    }
    out
}

fn ip_le(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a <= b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a <= b,
        _ => false,
    }
}

fn max_ip(a: IpAddr, b: IpAddr) -> IpAddr {
    if ip_le(a, b) {
        b
    } else {
        a
    }
}

fn min_ip(a: IpAddr, b: IpAddr) -> IpAddr {
    if ip_le(a, b) {
        a
    } else {
        b
    }
}

/// An address range, all protocols and ports.
pub fn range_ts(start: IpAddr, end: IpAddr) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start,
        end,
    }
}

/// 0.0.0.0-255.255.255.255, all protocols and ports.
pub fn any_v4() -> TrafficSelector {
    range_ts(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
    )
}

/// One address, all protocols and ports.
pub fn host_ts(a: IpAddr) -> TrafficSelector {
    range_ts(a, a)
}

/// `addr/len` as a selector (host bits of `addr` ignored); `None` when `len` is longer than
/// the address family allows.
pub fn prefix_ts(addr: IpAddr, len: u8) -> Option<TrafficSelector> {
    let (start, end) = match addr {
        IpAddr::V4(a) if len <= 32 => {
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            let a = u32::from(a);
            (
                IpAddr::V4((a & !host).into()),
                IpAddr::V4((a | host).into()),
            )
        }
        IpAddr::V6(a) if len <= 128 => {
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            let a = u128::from(a);
            (
                IpAddr::V6((a & !host).into()),
                IpAddr::V6((a | host).into()),
            )
        }
        _ => return None,
    };
    Some(range_ts(start, end))
}

/// A selector as strongSwan prints one (`swanctl --list-sas`): `addr/len` when the range is
/// a prefix (else `start..end`), then `[proto]` or `[proto/port]` / `[proto/lo-hi]` when it
/// is narrower than every protocol and port.
pub fn text(ts: &TrafficSelector) -> String {
    let addrs = match prefix_len(ts.start, ts.end) {
        Some(len) => format!("{}/{len}", ts.start),
        None => format!("{}..{}", ts.start, ts.end),
    };
    let all_ports = ts.start_port == 0 && ts.end_port == u16::MAX;
    if ts.protocol == 0 && all_ports {
        return addrs;
    }
    let proto = match ts.protocol {
        0 => "0".to_string(),
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        58 => "ipv6-icmp".to_string(),
        n => n.to_string(),
    };
    if all_ports {
        format!("{addrs}[{proto}]")
    } else if ts.start_port == ts.end_port {
        format!("{addrs}[{proto}/{}]", ts.start_port)
    } else {
        format!("{addrs}[{proto}/{}-{}]", ts.start_port, ts.end_port)
    }
}

/// The prefix length of `start..end` when the range is exactly one prefix.
fn prefix_len(start: IpAddr, end: IpAddr) -> Option<u8> {
    let (s, e, bits): (u128, u128, u8) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u128::from(u32::from(s)), u128::from(u32::from(e)), 32),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
        _ => return None,
    };
    // A prefix: the differing bits are all ones at the end and the start has them clear.
    let host = s ^ e;
    if host.wrapping_add(1) & host != 0 || s & host != 0 {
        return None;
    }
    let host_bits = u8::try_from(host.count_ones()).ok()?;
    bits.checked_sub(host_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> TrafficSelector {
        let (a, l) = s.split_once('/').unwrap();
        prefix_ts(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

    #[test]
    fn prefixes_and_narrowing() {
        let t = ts("10.1.2.3/16");
        assert_eq!(t.start, "10.1.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(t.end, "10.1.255.255".parse::<IpAddr>().unwrap());
        assert_eq!(ts("0.0.0.0/0"), any_v4());
        assert_eq!(ts("fd00::1/128"), host_ts("fd00::1".parse().unwrap()));
        assert_eq!(prefix_ts("10.0.0.0".parse().unwrap(), 33), None);
        assert_eq!(
            narrow(&[ts("10.0.0.0/8")], &[ts("10.8.0.0/16"), ts("fd00::/8")]),
            vec![ts("10.8.0.0/16")]
        );
        assert!(narrow(&[ts("10.0.0.0/8")], &[ts("172.16.0.0/12")]).is_empty());
    }

    #[test]
    fn text_as_strongswan_prints_it() {
        assert_eq!(text(&ts("10.1.0.0/16")), "10.1.0.0/16");
        assert_eq!(text(&ts("10.99.0.1/32")), "10.99.0.1/32");
        assert_eq!(text(&any_v4()), "0.0.0.0/0");
        assert_eq!(text(&ts("fd00:2::/64")), "fd00:2::/64");
        assert_eq!(text(&ts("::/0")), "::/0");
        let r = range_ts("10.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap());
        assert_eq!(text(&r), "10.0.0.1..10.0.0.5");
        let odd = range_ts("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(
            text(&odd),
            "10.0.0.1..10.0.0.2",
            "aligned size, unaligned start"
        );
        let mut p = ts("10.1.0.0/16");
        p.protocol = 6;
        assert_eq!(text(&p), "10.1.0.0/16[tcp]");
        p.start_port = 80;
        p.end_port = 80;
        assert_eq!(text(&p), "10.1.0.0/16[tcp/80]");
        p.protocol = 17;
        p.end_port = 90;
        assert_eq!(text(&p), "10.1.0.0/16[udp/80-90]");
    }
}
