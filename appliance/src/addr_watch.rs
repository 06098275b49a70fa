//! Watching the WAN device's addresses (rtnetlink), for `roamgate client`: the operator or a
//! DHCP client changes the kernel's addresses on the device roamgate's data plane owns, and
//! the client follows (MOBIKE). One netlink socket subscribed to the IPv4 and IPv6 address
//! groups, polled without blocking from the control loop; a dump at start gives the current
//! set. Messages are parsed with bounds checks throughout (the kernel is trusted, but a
//! malformed message is skipped, never a panic).

use std::io;
use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const NLMSG_HDR: usize = 16;
const IFADDRMSG: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// An address that appeared on or left the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrChange {
    Added(IpAddr),
    Removed(IpAddr),
}

pub struct AddrWatch {
    sock: Socket,
    ifindex: u32,
    buf: Vec<u8>,
}

impl AddrWatch {
    /// Subscribes to address changes of device `dev` and asks for the current ones (they
    /// arrive as `Added` on the first polls).
    pub fn new(dev: &str) -> io::Result<AddrWatch> {
        let ifindex = pipeline::port::xdp_prog::ifindex(dev)?;
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
        sock.set_non_blocking(true)?;
        let mut req = Vec::with_capacity(NLMSG_HDR + IFADDRMSG);
        req.extend_from_slice(&((NLMSG_HDR + IFADDRMSG) as u32).to_ne_bytes());
        req.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[0u8; IFADDRMSG]);
        sock.send_to(&req, &SocketAddr::new(0, 0), 0)?;
        Ok(AddrWatch {
            sock,
            ifindex,
            buf: vec![0; 64 * 1024],
        })
    }

    /// What changed since the last poll (never blocks).
    pub fn poll(&mut self) -> Vec<AddrChange> {
        let mut out = Vec::new();
        while let Ok(n) = self.sock.recv(&mut &mut self.buf[..], 0) {
            parse(self.buf.get(..n).unwrap_or(&[]), self.ifindex, &mut out);
        }
        out
    }
}

/// The address changes of interface `ifindex` in one netlink datagram.
fn parse(mut d: &[u8], ifindex: u32, out: &mut Vec<AddrChange>) {
    while d.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let kind = u16::from_ne_bytes([d[4], d[5]]);
        if len < NLMSG_HDR || len > d.len() {
            return;
        }
        let msg = &d[NLMSG_HDR..len];
        if (kind == RTM_NEWADDR || kind == RTM_DELADDR) && msg.len() >= IFADDRMSG {
            let index = u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
            if index == ifindex {
                if let Some(a) = address(&msg[IFADDRMSG..]) {
                    out.push(if kind == RTM_NEWADDR {
                        AddrChange::Added(a)
                    } else {
                        AddrChange::Removed(a)
                    });
                }
            }
        }
        d = d.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
}

/// IFA_LOCAL (the address of the interface; point-to-point links put the peer in
/// IFA_ADDRESS), else IFA_ADDRESS.
fn address(mut attrs: &[u8]) -> Option<IpAddr> {
    let (mut local, mut addr) = (None, None);
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let v = &attrs[4..len];
        let ip = match v.len() {
            4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
            _ => None,
        };
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => addr = ip,
            _ => {}
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    local.or(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, index: u32, addr: [u8; 4]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 24, 0, 0]);
        m.extend_from_slice(&index.to_ne_bytes());
        for t in [IFA_ADDRESS, IFA_LOCAL] {
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&t.to_ne_bytes());
            m.extend_from_slice(&addr);
        }
        let n = m.len() as u32;
        m[0..4].copy_from_slice(&n.to_ne_bytes());
        m
    }

    #[test]
    fn address_messages_of_our_device_only_and_junk_is_skipped() {
        let mut d = msg(RTM_NEWADDR, 7, [198, 51, 100, 10]);
        d.extend(msg(RTM_NEWADDR, 8, [10, 0, 0, 1]));
        d.extend(msg(RTM_DELADDR, 7, [192, 0, 2, 10]));
        let mut out = Vec::new();
        parse(&d, 7, &mut out);
        assert_eq!(
            out,
            [
                AddrChange::Added("198.51.100.10".parse().unwrap()),
                AddrChange::Removed("192.0.2.10".parse().unwrap())
            ]
        );
        for cut in 0..d.len() {
            let mut o = Vec::new();
            parse(&d[..cut], 7, &mut o);
            let mut junk = d.clone();
            junk[cut] ^= 0xff;
            parse(&junk, 7, &mut o);
        }
    }
}
