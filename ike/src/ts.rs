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
}
