//! The masquerade as data: what IPv4 masquerading (a gateway's NAT, or a road-warrior
//! client's virtual IP) is configured with. The session table that uses it is the data
//! plane's.

use core::net::Ipv4Addr;

const SEC: u64 = 1_000_000_000;

/// Masquerade parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasqueradeConfig {
    /// The address inside flows are rewritten to (usually the WAN address).
    pub external_addr: Ipv4Addr,
    /// External ports (and ICMP echo identifiers) handed out, inclusive. Port 0 is never used.
    pub port_range: (u16, u16),
    pub udp_timeout_ns: u64,
    pub tcp_established_timeout_ns: u64,
    /// New, closing and reset TCP flows.
    pub tcp_transitory_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
    /// A released port is not handed out again before this much time has passed.
    pub port_reuse_delay_ns: u64,
    pub max_sessions: usize,
}

impl Default for MasqueradeConfig {
    fn default() -> Self {
        MasqueradeConfig {
            external_addr: Ipv4Addr::UNSPECIFIED,
            port_range: (1024, 65535),
            udp_timeout_ns: 30 * SEC,
            tcp_established_timeout_ns: 2 * 3600 * SEC,
            tcp_transitory_timeout_ns: 4 * 60 * SEC,
            icmp_timeout_ns: 30 * SEC,
            port_reuse_delay_ns: 120 * SEC,
            max_sessions: 65536,
        }
    }
}
