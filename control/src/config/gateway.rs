//! The `gateway` schema: one gateway's data-plane parameters (its two interfaces, static SAs,
//! policies, masquerade and the AEAD backend), validated into a [`GatewayPlan`]. Keys are
//! never echoed: [`SaConfig`]'s `Debug` redacts them and hex errors name positions only.

use core::fmt;
use core::net::IpAddr;
use std::path::Path;

use pipeline::crypto::{AeadAlg, Backend, CbcAlg, EspAlg, IntegAlg};
use pipeline::esp::replay::ReplayWindow;
use pipeline::esp::sa::{SaKeys, SaParams, UdpEncap};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::Direction;
use pipeline::nat::MasqueradeConfig;
use pipeline::spd::{Action, PortRange, Prefix, Rule, Selector};
use serde::Deserialize;

use super::{decode_hex, ConfigError, SecretString};

/// Which AEAD backend the data plane uses.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// intel-ipsec-mb when it is built in and the CPU has AES-NI + PCLMULQDQ, else ring.
    #[default]
    Auto,
    IpsecMb,
    Ring,
    /// No encryption at all: for benchmarks only, refused outside the perf lab.
    Null,
}

impl BackendChoice {
    pub fn resolve(self) -> Result<Backend, String> {
        let b = match self {
            BackendChoice::Auto => return Ok(pipeline::crypto::best_backend()),
            BackendChoice::IpsecMb => Backend::IpsecMb,
            BackendChoice::Ring => Backend::Ring,
            BackendChoice::Null => Backend::Null,
        };
        if pipeline::crypto::available(b) {
            Ok(b)
        } else {
            Err(format!(
                "crypto backend {b} is not available on this machine or build"
            ))
        }
    }
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl core::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in mac.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("'{s}' is not a MAC address"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("'{s}' is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("'{s}' is not a MAC address"));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One side of a gateway (LAN: clear, WAN: protected).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// The device that carries this side: a kernel interface name for the AF_XDP port
    /// (`eth1`), a DPDK port name for the DPDK port (`net_af_packet0`, `0000:03:00.0`). Not
    /// used by the in-memory lab.
    #[serde(default)]
    pub device: Option<String>,
    /// Our Ethernet address on this link; the data plane reads it from the device when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Our address on this link (source of ICMP errors on the LAN, tunnel endpoint on the WAN;
    /// answered in ARP or neighbour discovery).
    pub address: IpAddr,
    /// A second, IPv6 address when `address` is IPv4 (dual-stack links).
    #[serde(default)]
    pub address6: Option<core::net::Ipv6Addr>,
    /// Length of the link's subnet around `address` (e.g. 24); absent: only the address itself
    /// is known to be on the link. Virtual-IP pools must stay out of it.
    #[serde(default)]
    pub prefix_len: Option<u8>,
    /// The one next hop's Ethernet address (a static neighbour for everything sent on this
    /// link). Absent: the data plane resolves next hops with ARP / neighbour discovery, which
    /// needs `prefix_len` (destinations on the link) or `gateway` (everything else).
    #[serde(default)]
    pub neighbor_mac: Option<MacAddr>,
    /// The next hop of destinations outside the link's subnet, in `address`'s family.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// The IPv6 next hop when `address6` is given.
    #[serde(default)]
    pub gateway6: Option<core::net::Ipv6Addr>,
    /// Length of the link's IPv6 subnet around `address6` (e.g. 64).
    #[serde(default)]
    pub prefix_len6: Option<u8>,
    /// Neighbours whose MAC is configured (never replaced by what the link says); only where
    /// next hops are resolved (no `neighbor_mac`).
    #[serde(default)]
    pub neighbors: Vec<StaticNeighbor>,
    /// IP MTU of the link.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// LAN side only: what to do with the TCP/UDP checksums of clear packets before sealing
    /// them. `pass` (default): as they are, a sample verified and counted; `verify`: each
    /// verified and counted; `complete`: each recomputed, for LAN hosts that leave checksums
    /// to hardware (veth, virtio with offloads: their segments arrive unfinished).
    #[serde(default)]
    pub checksum: Option<ChecksumChoice>,
}

/// `gateway.lan.checksum`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumChoice {
    #[default]
    Pass,
    Verify,
    Complete,
}

impl From<ChecksumChoice> for pipeline::worker::ClearChecksum {
    fn from(c: ChecksumChoice) -> Self {
        match c {
            ChecksumChoice::Pass => Self::Pass,
            ChecksumChoice::Verify => Self::Verify,
            ChecksumChoice::Complete => Self::Complete,
        }
    }
}

/// A neighbour with a configured MAC.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticNeighbor {
    pub address: IpAddr,
    pub mac: MacAddr,
}

/// Smallest MTU of an IPv4-only link (every host must accept 576-byte datagrams).
pub const MIN_MTU_V4: u16 = 576;
/// Smallest MTU of a link that carries IPv6.
pub const MIN_MTU_V6: u16 = 1280;
/// Largest MTU: a jumbo frame.
pub const MAX_MTU: u16 = 9216;

fn default_mtu() -> u16 {
    1500
}

impl InterfaceConfig {
    /// The MTU must carry the smallest datagram every family on the link must pass (IPv4
    /// 576, RFC 791; IPv6 1280, RFC 8200) and at most a jumbo frame (9216). A link with both
    /// families (`address6` next to an IPv4 `address`) takes the stricter minimum, 1280: its
    /// IPv6 traffic must fit whatever the IPv4 side would allow.
    pub fn check_mtu(&self) -> Result<(), String> {
        let (min, why) = if self.address.is_ipv6() || self.address6.is_some() {
            (MIN_MTU_V6, "IPv6 needs 1280 (RFC 8200)")
        } else {
            (MIN_MTU_V4, "IPv4 needs 576 (RFC 791)")
        };
        if !(min..=MAX_MTU).contains(&self.mtu) {
            return Err(format!(
                "{} is outside {min}..={MAX_MTU} ({why}; at most a jumbo frame)",
                self.mtu
            ));
        }
        Ok(())
    }

    /// The link's subnet (`address`/`prefix_len`), or the address alone as a host prefix.
    pub fn subnet(&self) -> Result<Prefix, String> {
        let host = if self.address.is_ipv4() { 32 } else { 128 };
        let len = self.prefix_len.unwrap_or(host);
        if len > host {
            return Err(format!("{len} is longer than an address ({host} bits)"));
        }
        Ok(Prefix::masked(self.address, len))
    }

    /// Where this link's traffic goes, for a worker that resolves its neighbours; None with
    /// a `neighbor_mac` (everything goes to it). Checked by [`check_next_hops`](Self::check_next_hops).
    pub fn routes(&self) -> Option<pipeline::worker::Routes> {
        if self.neighbor_mac.is_some() {
            return None;
        }
        let mut on_link = Vec::new();
        if let (Some(_), Ok(p)) = (self.prefix_len, self.subnet()) {
            on_link.push(p);
        }
        if let (Some(a6), Some(len)) = (self.address6, self.prefix_len6) {
            if len <= 128 {
                on_link.push(Prefix::masked(IpAddr::V6(a6), len));
            }
        }
        let (mut gateway4, mut gateway6) = (None, self.gateway6);
        match self.gateway {
            Some(IpAddr::V4(g)) => gateway4 = Some(g),
            Some(IpAddr::V6(g)) => gateway6 = gateway6.or(Some(g)),
            None => {}
        }
        Some(pipeline::worker::Routes {
            on_link,
            gateway4,
            gateway6,
            statics: self
                .neighbors
                .iter()
                .map(|n| (n.address, n.mac.0))
                .collect(),
        })
    }

    /// The next-hop keys make sense together. Returns (key, problem) on error.
    pub fn check_next_hops(&self) -> Result<(), (&'static str, String)> {
        if self.neighbor_mac.is_some() {
            for (key, set) in [
                ("gateway", self.gateway.is_some()),
                ("gateway6", self.gateway6.is_some()),
                ("neighbors", !self.neighbors.is_empty()),
            ] {
                if set {
                    return Err((
                        key,
                        "with neighbor_mac every frame goes to that MAC: drop neighbor_mac to \
                         resolve next hops, or this key"
                            .into(),
                    ));
                }
            }
            return Ok(());
        }
        if self.prefix_len.is_none() && self.gateway.is_none() && self.gateway6.is_none() {
            return Err((
                "neighbor_mac",
                "without neighbor_mac the data plane resolves next hops: give prefix_len (the \
                 link's subnet), gateway, or neighbor_mac"
                    .into(),
            ));
        }
        if let Some(g) = self.gateway {
            if g.is_ipv4() != self.address.is_ipv4() {
                return Err(("gateway", format!("{g} is not in address's family")));
            }
            if g == self.address {
                return Err(("gateway", format!("{g} is our own address")));
            }
            if self.prefix_len.is_some() && !self.subnet().is_ok_and(|p| p.contains(g)) {
                return Err(("gateway", format!("{g} is not on the link's subnet")));
            }
        }
        if let Some(len) = self.prefix_len6 {
            if len > 128 {
                return Err(("prefix_len6", format!("{len} is longer than 128")));
            }
            if self.address6.is_none() {
                return Err(("prefix_len6", "needs address6".into()));
            }
        }
        if let Some(g) = self.gateway6 {
            if self.address6.is_none() && !self.address.is_ipv6() {
                return Err(("gateway6", "needs an IPv6 address on the link".into()));
            }
            if Some(g) == self.address6 {
                return Err(("gateway6", format!("{g} is our own address")));
            }
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            if n.address == self.address || Some(n.address) == self.address6.map(IpAddr::V6) {
                return Err((
                    "neighbors",
                    format!("[{i}]: {} is our own address", n.address),
                ));
            }
            if n.mac.0[0] & 1 != 0 || n.mac.0 == [0; 6] {
                return Err((
                    "neighbors",
                    format!("[{i}]: {} is not a unicast MAC", n.mac),
                ));
            }
            if self.neighbors[..i].iter().any(|o| o.address == n.address) {
                return Err(("neighbors", format!("[{i}]: {} is listed twice", n.address)));
            }
        }
        Ok(())
    }

    /// What a worker needs to know of this link.
    pub fn link(&self) -> pipeline::worker::Link {
        self.link_with_mac(self.mac.unwrap_or_default().0)
    }

    /// [`link`](Self::link) with the MAC the device reported.
    pub fn link_with_mac(&self, mac: [u8; 6]) -> pipeline::worker::Link {
        let (addr4, addr6) = match self.address {
            IpAddr::V4(a) => (Some(a), self.address6),
            IpAddr::V6(a) => (None, Some(a)),
        };
        pipeline::worker::Link {
            mac,
            neighbor: self.neighbor_mac.unwrap_or_default().0,
            addr4,
            addr6,
            mtu: self.mtu,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum AeadName {
    /// AES-GCM with a 128-bit key and 16-byte ICV (RFC 4106).
    #[serde(rename = "aes-gcm-128")]
    AesGcm128,
    #[serde(rename = "aes-gcm-256")]
    AesGcm256,
}

impl From<AeadName> for AeadAlg {
    fn from(a: AeadName) -> AeadAlg {
        match a {
            AeadName::AesGcm128 => AeadAlg::AesGcm128,
            AeadName::AesGcm256 => AeadAlg::AesGcm256,
        }
    }
}

/// A non-AEAD cipher of a static SA (paired with an `integrity` algorithm).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum CipherName {
    /// AES-CBC with a 128-bit key and a random 16-byte IV per packet (RFC 3602).
    #[serde(rename = "aes-cbc-128")]
    AesCbc128,
    #[serde(rename = "aes-cbc-256")]
    AesCbc256,
}

impl From<CipherName> for CbcAlg {
    fn from(c: CipherName) -> CbcAlg {
        match c {
            CipherName::AesCbc128 => CbcAlg::AesCbc128,
            CipherName::AesCbc256 => CbcAlg::AesCbc256,
        }
    }
}

/// The integrity algorithm of a static CBC SA, named as in the IANA registry.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum IntegrityName {
    /// HMAC-SHA1-96 (RFC 2404): weak, warned about at start-up.
    #[serde(rename = "hmac-sha1-96")]
    HmacSha1_96,
    #[serde(rename = "hmac-sha2-256-128")]
    HmacSha256_128,
    #[serde(rename = "hmac-sha2-384-192")]
    HmacSha384_192,
    #[serde(rename = "hmac-sha2-512-256")]
    HmacSha512_256,
}

impl From<IntegrityName> for IntegAlg {
    fn from(i: IntegrityName) -> IntegAlg {
        match i {
            IntegrityName::HmacSha1_96 => IntegAlg::HmacSha1_96,
            IntegrityName::HmacSha256_128 => IntegAlg::HmacSha256_128,
            IntegrityName::HmacSha384_192 => IntegAlg::HmacSha384_192,
            IntegrityName::HmacSha512_256 => IntegAlg::HmacSha512_256,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DirectionName {
    In,
    Out,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UdpEncapConfig {
    #[serde(default = "natt_port")]
    pub local_port: u16,
    #[serde(default = "natt_port")]
    pub remote_port: u16,
}

fn natt_port() -> u16 {
    4500
}

/// A statically keyed SA (lab and tests; IKEv2 negotiates them in production).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaConfig {
    pub name: String,
    pub direction: DirectionName,
    pub spi: u32,
    /// An AEAD (`aes-gcm-128`, `aes-gcm-256`), or else `cipher` with `integrity`.
    #[serde(default)]
    pub aead: Option<AeadName>,
    #[serde(default)]
    pub cipher: Option<CipherName>,
    #[serde(default)]
    pub integrity: Option<IntegrityName>,
    /// Hex: the AES key followed by the 4-byte salt (20 or 36 bytes) for an AEAD; the AES key
    /// alone (16 or 32 bytes) for a `cipher`.
    pub key: SecretString,
    /// Hex: the HMAC key of `integrity` (as long as the hash: 20, 32, 48 or 64 bytes).
    #[serde(default)]
    pub integrity_key: Option<SecretString>,
    #[serde(default = "yes")]
    pub esn: bool,
    /// Our tunnel endpoint and the peer's.
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_ts: Prefix,
    pub remote_ts: Prefix,
    #[serde(default)]
    pub udp_encap: Option<UdpEncapConfig>,
    #[serde(default)]
    pub replay_window: Option<u32>,
}

impl fmt::Debug for SaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaConfig")
            .field("name", &self.name)
            .field("direction", &self.direction)
            .field("spi", &Spi(self.spi))
            .field("aead", &self.aead)
            .field("cipher", &self.cipher)
            .field("integrity", &self.integrity)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionName {
    Protect,
    Bypass,
    Discard,
}

/// One SPD rule; rules are matched in file order, first match wins.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub src: Prefix,
    pub dst: Prefix,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...); absent = any.
    #[serde(default)]
    pub proto: Option<u8>,
    #[serde(default = "any_port")]
    pub src_ports: PortRange,
    #[serde(default = "any_port")]
    pub dst_ports: PortRange,
    pub action: ActionName,
    /// The outbound SA of a protect rule, by name.
    #[serde(default)]
    pub sa: Option<String>,
}

fn any_port() -> PortRange {
    PortRange { lo: 0, hi: 65535 }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasqueradeYaml {
    /// The address inside flows are rewritten to (usually the WAN address).
    pub address: core::net::Ipv4Addr,
    #[serde(default = "port_lo")]
    pub port_lo: u16,
    #[serde(default = "port_hi")]
    pub port_hi: u16,
    #[serde(default)]
    pub udp_timeout_secs: Option<u64>,
    #[serde(default)]
    pub max_sessions: Option<usize>,
}

fn port_lo() -> u16 {
    1024
}
fn port_hi() -> u16 {
    65535
}

/// One gateway's data plane: its two interfaces, SAs, policies and masquerade.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub name: String,
    pub lan: InterfaceConfig,
    pub wan: InterfaceConfig,
    #[serde(default = "default_window")]
    pub replay_window: u32,
    #[serde(default)]
    pub sas: Vec<SaConfig>,
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    #[serde(default)]
    pub masquerade: Option<MasqueradeYaml>,
}

fn default_window() -> u32 {
    1024
}

/// Longest gateway name.
pub const MAX_NAME_LEN: usize = 32;

/// A gateway's name becomes part of file names (its shared-memory channel, its run
/// directory): 1 to 32 of `[A-Za-z0-9_.-]`, not starting with `.`, so it can never be a path
/// (`../x`), a hidden file or a separator.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a gateway name: 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . -, not starting with '.'"
        ))
    }
}

/// What a validated gateway config yields for the data plane.
#[derive(Debug)]
pub struct GatewayPlan {
    pub sas: Vec<(Direction, SaParams)>,
    pub rules: Vec<Rule>,
    pub masquerade: Option<MasqueradeConfig>,
    /// One line per SA with a weak algorithm (HMAC-SHA1): start-up warns with each.
    pub weak: Vec<String>,
}

impl GatewayConfig {
    /// Checks cross-references and converts to data-plane parameters. `at` is the key path of
    /// this gateway inside its file (e.g. `site_a`).
    pub fn validate(&self, file: &Path, at: &str) -> Result<GatewayPlan, ConfigError> {
        let err = |key: String, what: String| ConfigError::new(file, key, what);
        check_name(&self.name).map_err(|w| err(format!("{at}.name"), w))?;
        if let Err(e) = ReplayWindow::new(self.replay_window, true) {
            return Err(err(format!("{at}.replay_window"), e.to_string()));
        }
        for (side, i) in [("lan", &self.lan), ("wan", &self.wan)] {
            i.check_mtu()
                .map_err(|w| err(format!("{at}.{side}.mtu"), w))?;
            i.check_next_hops()
                .map_err(|(k, w)| err(format!("{at}.{side}.{k}"), w))?;
        }
        // One address on both sides: ARP, IKE and ESP would answer on the wrong port.
        let lan_addrs = [Some(self.lan.address), self.lan.address6.map(IpAddr::V6)];
        for (key, a) in [
            ("address", Some(self.wan.address)),
            ("address6", self.wan.address6.map(IpAddr::V6)),
        ] {
            if let Some(a) = a.filter(|a| lan_addrs.contains(&Some(*a))) {
                return Err(err(
                    format!("{at}.wan.{key}"),
                    format!("{a} is also the LAN side's address: each side needs its own"),
                ));
            }
        }
        if self.wan.checksum.is_some() {
            return Err(err(
                format!("{at}.wan.checksum"),
                "only the LAN side has clear packets whose checksums can be completed; set \
                 lan.checksum"
                    .into(),
            ));
        }
        let mut sas = Vec::new();
        let mut weak = Vec::new();
        for (i, sa) in self.sas.iter().enumerate() {
            let key = |k: &str| format!("{at}.sas[{i}].{k}");
            if self.sas[..i].iter().any(|o| o.name == sa.name) {
                return Err(err(key("name"), format!("duplicate SA name '{}'", sa.name)));
            }
            if sa.spi < 256 {
                return Err(err(
                    key("spi"),
                    format!(
                        "SPI {} is reserved (RFC 4303: 1..255 are IANA's, 0 is never used)",
                        sa.spi
                    ),
                ));
            }
            let keys = sa_keys(sa).map_err(|(k, w)| err(key(k), w))?;
            if keys.alg.is_weak() {
                weak.push(format!(
                    "{}: SA '{}' uses {} (HMAC-SHA1-96): weak, kept only because it is configured",
                    key("integrity"),
                    sa.name,
                    keys.alg
                ));
            }
            if sa.local.is_ipv4() != sa.remote.is_ipv4() {
                return Err(err(
                    key("remote"),
                    "local and remote mix IPv4 and IPv6".into(),
                ));
            }
            let window = sa.replay_window.unwrap_or(self.replay_window);
            if let Err(e) = ReplayWindow::new(window, sa.esn) {
                return Err(err(key("replay_window"), e.to_string()));
            }
            let dir = match sa.direction {
                DirectionName::In => Direction::Inbound,
                DirectionName::Out => Direction::Outbound,
            };
            sas.push((
                dir,
                SaParams {
                    id: SaId(i as u32),
                    spi: Spi(sa.spi),
                    keys,
                    esn: sa.esn,
                    replay_window: window,
                    local: sa.local,
                    remote: sa.remote,
                    encap: sa.udp_encap.map(|u| UdpEncap {
                        local_port: u.local_port,
                        remote_port: u.remote_port,
                    }),
                    local_ts: sa.local_ts,
                    remote_ts: sa.remote_ts,
                    outer_ttl: 64,
                    lifetime: Default::default(),
                    resume: Default::default(),
                    checkpoint: None,
                },
            ));
        }
        for (i, a) in self.sas.iter().enumerate() {
            if let Some(b) = self.sas[..i].iter().find(|b| {
                b.direction == DirectionName::In
                    && a.direction == DirectionName::In
                    && b.spi == a.spi
            }) {
                return Err(err(
                    format!("{at}.sas[{i}].spi"),
                    format!("inbound SPI {:#x} is also used by SA '{}'", a.spi, b.name),
                ));
            }
        }
        let mut rules = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            let key = |k: &str| format!("{at}.policies[{i}].{k}");
            let action = match (p.action, &p.sa) {
                (ActionName::Protect, None) => {
                    return Err(err(
                        key("sa"),
                        "a protect rule needs the name of an outbound SA".into(),
                    ))
                }
                (ActionName::Protect, Some(name)) => {
                    let idx = self
                        .sas
                        .iter()
                        .position(|s| &s.name == name && s.direction == DirectionName::Out)
                        .ok_or_else(|| err(key("sa"), format!("no outbound SA named '{name}'")))?;
                    Action::Protect(SaId(idx as u32))
                }
                (_, Some(_)) => return Err(err(key("sa"), "only protect rules name an SA".into())),
                (ActionName::Bypass, None) => Action::Bypass,
                (ActionName::Discard, None) => Action::Discard,
            };
            if p.src.addr().is_ipv4() != p.dst.addr().is_ipv4() {
                return Err(err(key("dst"), "src and dst mix IPv4 and IPv6".into()));
            }
            rules.push(Rule {
                id: i as u32,
                selector: Selector {
                    src: p.src,
                    dst: p.dst,
                    proto: p.proto,
                    src_ports: p.src_ports,
                    dst_ports: p.dst_ports,
                },
                action,
            });
        }
        let masquerade = match &self.masquerade {
            None => None,
            Some(m) => {
                if m.port_lo == 0 || m.port_lo > m.port_hi {
                    return Err(err(
                        format!("{at}.masquerade.port_lo"),
                        format!(
                            "port range {}-{} is empty or starts at 0",
                            m.port_lo, m.port_hi
                        ),
                    ));
                }
                let mut c = MasqueradeConfig {
                    external_addr: m.address,
                    port_range: (m.port_lo, m.port_hi),
                    ..MasqueradeConfig::default()
                };
                if let Some(t) = m.udp_timeout_secs {
                    c.udp_timeout_ns = t.saturating_mul(1_000_000_000);
                }
                if let Some(n) = m.max_sessions {
                    c.max_sessions = n;
                }
                Some(c)
            }
        };
        Ok(GatewayPlan {
            sas,
            rules,
            masquerade,
            weak,
        })
    }
}

/// The keys of a static SA: an AEAD with its key and salt, or a cipher and an integrity
/// algorithm with their two keys. Errors name the key (`aead`, `key`, ...) and the problem.
fn sa_keys(sa: &SaConfig) -> Result<SaKeys, (&'static str, String)> {
    let mut keymat = decode_hex(&sa.key).map_err(|w| ("key", w))?;
    let alg = match (sa.aead, sa.cipher, sa.integrity) {
        (Some(a), None, None) => {
            if sa.integrity_key.is_some() {
                return Err((
                    "integrity_key",
                    "an AEAD has no integrity key (its key is AES key and salt)".into(),
                ));
            }
            EspAlg::Aead(AeadAlg::from(a))
        }
        (None, Some(c), Some(i)) => {
            let Some(ik) = &sa.integrity_key else {
                return Err(("integrity_key", format!("{i:?} needs an integrity_key")));
            };
            let ik = decode_hex(ik).map_err(|w| ("integrity_key", w))?;
            let (c, i) = (CbcAlg::from(c), IntegAlg::from(i));
            if keymat.len() != c.key_len() {
                return Err((
                    "key",
                    format!(
                        "{c:?} needs a {}-byte key, got {}",
                        c.key_len(),
                        keymat.len()
                    ),
                ));
            }
            if ik.len() != i.key_len() {
                return Err((
                    "integrity_key",
                    format!("{i:?} needs a {}-byte key, got {}", i.key_len(), ik.len()),
                ));
            }
            keymat.extend_from_slice(&ik);
            EspAlg::Cbc(c, i)
        }
        (None, Some(_), None) => {
            return Err(("integrity", "a cipher needs an integrity algorithm".into()))
        }
        (None, None, Some(_)) => {
            return Err(("cipher", "an integrity algorithm needs a cipher".into()))
        }
        (None, None, None) => {
            return Err((
                "aead",
                "no algorithm: give aead, or cipher with integrity".into(),
            ))
        }
        (Some(_), ..) => {
            return Err((
                "aead",
                "an AEAD takes no cipher or integrity algorithm besides".into(),
            ))
        }
    };
    SaKeys::from_keymat(alg, &keymat).map_err(|e| ("key", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(lan: &str, wan: &str) -> GatewayConfig {
        crate::config::parse(
            Path::new("x.yaml"),
            &format!("name: gw\nlan: {{ {lan}, neighbor_mac: \"02:00:00:00:00:01\" }}\nwan: {{ {wan}, neighbor_mac: \"02:00:00:00:00:02\" }}\n"),
        )
        .unwrap()
    }

    fn with_sa(sa: &str) -> Result<GatewayPlan, ConfigError> {
        let text = format!(
            "name: gw\nlan: {{ address: 10.0.0.1, neighbor_mac: \"02:00:00:00:00:01\" }}\n\
             wan: {{ address: 192.0.2.1, neighbor_mac: \"02:00:00:00:00:02\" }}\n\
             sas:\n  - {{ name: o, direction: out, spi: 0x1000, local: 192.0.2.1, \
             remote: 192.0.2.2, local_ts: 10.8.0.0/16, remote_ts: 10.1.0.0/16, {sa} }}\n"
        );
        let gw: GatewayConfig = crate::config::parse(Path::new("x.yaml"), &text)?;
        gw.validate(Path::new("x.yaml"), "gateway")
    }

    #[test]
    fn static_sas_take_aes_cbc_with_an_hmac() {
        let k32 = "00".repeat(32);
        let plan = with_sa(&format!(
            "cipher: aes-cbc-256, integrity: hmac-sha2-256-128, key: \"{k32}\", \
             integrity_key: \"{}\"",
            "11".repeat(32)
        ))
        .unwrap();
        let keys = &plan.sas[0].1.keys;
        assert_eq!(
            keys.alg,
            EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha256_128)
        );
        assert_eq!(keys.integ_key(), &[0x11; 32]);
        assert!(plan.weak.is_empty());
        // HMAC-SHA1 is accepted because it is configured, and warned about.
        let plan = with_sa(&format!(
            "cipher: aes-cbc-128, integrity: hmac-sha1-96, key: \"{}\", integrity_key: \"{}\"",
            "00".repeat(16),
            "22".repeat(20)
        ))
        .unwrap();
        assert_eq!(plan.weak.len(), 1);
        assert!(
            plan.weak[0].contains("gateway.sas[0].integrity") && plan.weak[0].contains("weak"),
            "{}",
            plan.weak[0]
        );
        // Each mistake names its key.
        for (sa, key) in [
            (format!("cipher: aes-cbc-256, key: \"{k32}\""), "integrity"),
            (
                format!("integrity: hmac-sha2-256-128, key: \"{k32}\""),
                "cipher",
            ),
            (
                format!("cipher: aes-cbc-256, integrity: hmac-sha2-256-128, key: \"{k32}\""),
                "integrity_key",
            ),
            (
                format!(
                    "cipher: aes-cbc-128, integrity: hmac-sha2-256-128, key: \"{k32}\", \
                     integrity_key: \"{k32}\""
                ),
                "key",
            ),
            (
                format!(
                    "cipher: aes-cbc-256, integrity: hmac-sha2-512-256, key: \"{k32}\", \
                     integrity_key: \"{k32}\""
                ),
                "integrity_key",
            ),
            (
                format!(
                    "aead: aes-gcm-128, cipher: aes-cbc-128, key: \"{}\"",
                    "00".repeat(20)
                ),
                "aead",
            ),
            (format!("key: \"{k32}\""), "aead"),
        ] {
            let e = with_sa(&sa).unwrap_err();
            assert_eq!(e.key, format!("gateway.sas[0].{key}"), "{sa}: {e}");
        }
    }

    #[test]
    fn a_name_that_could_be_a_path_is_refused() {
        let f = Path::new("x.yaml");
        let v4 = "address: 10.0.0.1";
        let w4 = "address: 192.0.2.1";
        for bad in [
            "../../x",
            "a/b",
            ".hidden",
            "",
            "x y",
            "name\u{0}",
            &"n".repeat(33),
        ] {
            let mut gw = gateway(v4, w4);
            gw.name = bad.to_string();
            let e = gw.validate(f, "gateway").unwrap_err();
            assert_eq!(e.key, "gateway.name", "{bad:?}: {e}");
        }
        for good in ["gw", "gw-a", "site_b.2", &"n".repeat(32)] {
            let mut gw = gateway(v4, w4);
            gw.name = good.to_string();
            assert!(gw.validate(f, "gateway").is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_mtu_is_bounded_per_family() {
        let f = Path::new("x.yaml");
        let ok = |lan: &str, wan: &str| gateway(lan, wan).validate(f, "gateway").map(|_| ());
        let v4 = "address: 10.0.0.1";
        let w4 = "address: 192.0.2.1";
        assert!(ok(&format!("{v4}, mtu: 576"), w4).is_ok());
        assert!(ok(v4, &format!("{w4}, mtu: 9216")).is_ok());
        for (lan, wan, key) in [
            (format!("{v4}, mtu: 20"), w4.to_string(), "gateway.lan.mtu"),
            (format!("{v4}, mtu: 575"), w4.to_string(), "gateway.lan.mtu"),
            (
                v4.to_string(),
                format!("{w4}, mtu: 65535"),
                "gateway.wan.mtu",
            ),
            (
                v4.to_string(),
                format!("{w4}, mtu: 9217"),
                "gateway.wan.mtu",
            ),
            // IPv6, alone or next to IPv4 on the link: 1280 at least.
            (
                v4.to_string(),
                "address: \"2001:db8::1\", mtu: 1279".into(),
                "gateway.wan.mtu",
            ),
            (
                format!("{v4}, address6: \"2001:db8::1\", mtu: 1000"),
                w4.to_string(),
                "gateway.lan.mtu",
            ),
        ] {
            let e = ok(&lan, &wan).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        assert!(ok(v4, "address: \"2001:db8::1\", mtu: 1280").is_ok());
        let e = ok(&format!("{v4}, mtu: 20"), w4).unwrap_err().to_string();
        assert!(e.contains("20 is outside 576..=9216"), "{e}");
    }

    #[test]
    fn checksum_completion_is_a_lan_key() {
        let f = Path::new("x.yaml");
        let v4 = "address: 10.0.0.1";
        let w4 = "address: 192.0.2.1";
        let g = gateway(&format!("{v4}, checksum: complete"), w4);
        assert_eq!(g.lan.checksum, Some(ChecksumChoice::Complete));
        assert!(g.validate(f, "gateway").is_ok());
        assert_eq!(gateway(v4, w4).lan.checksum, None, "pass by default");
        let e = gateway(v4, &format!("{w4}, checksum: verify"))
            .validate(f, "gateway")
            .unwrap_err();
        assert_eq!(e.key, "gateway.wan.checksum", "{e}");
    }

    #[test]
    fn one_address_on_both_sides_is_refused() {
        let f = Path::new("x.yaml");
        let e = gateway("address: 10.0.0.1", "address: 10.0.0.1")
            .validate(f, "gateway")
            .unwrap_err();
        assert_eq!(e.key, "gateway.wan.address", "{e}");
        assert!(
            e.to_string()
                .contains("10.0.0.1 is also the LAN side's address"),
            "{e}"
        );
        let v6 = "address6: \"2001:db8::1\"";
        let e = gateway(
            &format!("address: 10.0.0.1, {v6}"),
            &format!("address: 192.0.2.1, {v6}"),
        )
        .validate(f, "gateway")
        .unwrap_err();
        assert_eq!(e.key, "gateway.wan.address6", "{e}");
        // The WAN's IPv6 address as the LAN's only address, too.
        let e = gateway(
            "address: \"2001:db8::1\"",
            &format!("address: 192.0.2.1, {v6}"),
        )
        .validate(f, "gateway")
        .unwrap_err();
        assert_eq!(e.key, "gateway.wan.address6", "{e}");
        assert!(gateway("address: 10.0.0.1", "address: 192.0.2.1")
            .validate(f, "gateway")
            .is_ok());
    }

    #[test]
    fn mac() {
        let m: MacAddr = "02:00:00:00:0a:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:00:00:0a:ff");
        assert!("02:00:00:00:0a".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:0a:ff:01".parse::<MacAddr>().is_err());
    }
}
