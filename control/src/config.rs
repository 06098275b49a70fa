//! YAML configuration: one file per deployment (`configs/*.yaml`).
//!
//! Parsing happens in two steps. serde-saphyr turns the text into the structs below (its
//! errors carry line, column and a snippet); [`validate`](GatewayConfig::validate) then checks
//! what YAML cannot express (references between SAs and policies, address families, window
//! sizes). Every error names the file, the key path and what is wrong. Nothing here ever
//! prints key material.

use core::fmt;
use core::net::IpAddr;
use std::path::{Path, PathBuf};

use pipeline::crypto::{AeadAlg, Backend};
use pipeline::esp::replay::ReplayWindow;
use pipeline::esp::sa::{SaKeys, SaParams, UdpEncap};
use pipeline::ids::{SaId, Spi};
use pipeline::msg::Direction;
use pipeline::nat::MasqueradeConfig;
use pipeline::spd::{Action, PortRange, Prefix, Rule, Selector};
use serde::Deserialize;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `site_a.sas[1].key`; empty when the parser located it by line.
    pub key: String,
    pub what: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.what)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.what)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses a YAML file into `T`.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        what: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses YAML text that came from `path` (used for messages only).
pub fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        what: e.to_string(),
    })
}

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
    /// Next hop's Ethernet address (static neighbour).
    pub neighbor_mac: MacAddr,
    /// IP MTU of the link.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

impl InterfaceConfig {
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
            neighbor: self.neighbor_mac.0,
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
    pub aead: AeadName,
    /// Hex: the AES key followed by the 4-byte salt (20 or 36 bytes).
    pub key: String,
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

/// What a validated gateway config yields for the data plane.
#[derive(Debug)]
pub struct GatewayPlan {
    pub sas: Vec<(Direction, SaParams)>,
    pub rules: Vec<Rule>,
    pub masquerade: Option<MasqueradeConfig>,
}

impl GatewayConfig {
    /// Checks cross-references and converts to data-plane parameters. `at` is the key path of
    /// this gateway inside its file (e.g. `site_a`).
    pub fn validate(&self, file: &Path, at: &str) -> Result<GatewayPlan, ConfigError> {
        let err = |key: String, what: String| ConfigError {
            file: file.to_owned(),
            key,
            what,
        };
        if let Err(e) = ReplayWindow::new(self.replay_window, true) {
            return Err(err(format!("{at}.replay_window"), e.to_string()));
        }
        let mut sas = Vec::new();
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
            let keymat = decode_hex(&sa.key).map_err(|w| err(key("key"), w))?;
            let alg = AeadAlg::from(sa.aead);
            let keys =
                SaKeys::from_keymat(alg, &keymat).map_err(|e| err(key("key"), e.to_string()))?;
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
                    resume: Default::default(),
                    checkpoint: None,
                    lifetime: Default::default(),
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
        })
    }
}

/// Decodes hex (whitespace and a `0x` prefix allowed) without echoing it in errors.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!("not a hex digit at byte {i}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(decode_hex("0x0aff 10").unwrap(), vec![0x0a, 0xff, 0x10]);
        assert!(decode_hex("abc").is_err());
        let e = decode_hex("zz").unwrap_err();
        assert!(!e.contains("zz"), "errors must not echo key material: {e}");
    }

    #[test]
    fn mac() {
        let m: MacAddr = "02:00:00:00:0a:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:00:00:0a:ff");
        assert!("02:00:00:00:0a".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:0a:ff:01".parse::<MacAddr>().is_err());
    }
}

/// Which lab site a flow starts at.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    SiteA,
    SiteB,
}

/// One simulated UDP flow of the lab.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFlow {
    pub from: Site,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabTraffic {
    /// Packets per second per site; 0 = as fast as the gateways take them.
    #[serde(default)]
    pub rate_pps: u64,
    pub frame_sizes: Vec<usize>,
    pub flows: Vec<LabFlow>,
}

/// `configs/lab.yaml`: two gateways and the traffic between their LANs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    #[serde(default)]
    pub crypto_backend: BackendChoice,
    pub site_a: GatewayConfig,
    pub site_b: GatewayConfig,
    pub traffic: LabTraffic,
}

/// Largest Ethernet frame (no FCS) the lab generates: 1500-byte MTU + header.
pub const MAX_LAB_FRAME: usize = 1514;

impl LabConfig {
    /// Validates both gateways and the traffic section.
    pub fn validate(&self, file: &Path) -> Result<(GatewayPlan, GatewayPlan), ConfigError> {
        let a = self.site_a.validate(file, "site_a")?;
        let b = self.site_b.validate(file, "site_b")?;
        let err = |key: String, what: String| ConfigError {
            file: file.to_owned(),
            key,
            what,
        };
        for (at, gw) in [("site_a", &self.site_a), ("site_b", &self.site_b)] {
            for (side, i) in [("lan", &gw.lan), ("wan", &gw.wan)] {
                if i.mac.is_none() {
                    return Err(err(
                        format!("{at}.{side}.mac"),
                        "the in-memory lab has no device to read a MAC from: give one".into(),
                    ));
                }
            }
        }
        if self.traffic.frame_sizes.is_empty() {
            return Err(err(
                "traffic.frame_sizes".into(),
                "needs at least one size".into(),
            ));
        }
        for (i, s) in self.traffic.frame_sizes.iter().enumerate() {
            if !(64..=MAX_LAB_FRAME).contains(s) {
                return Err(err(
                    format!("traffic.frame_sizes[{i}]"),
                    format!("{s} is outside 64..={MAX_LAB_FRAME}"),
                ));
            }
        }
        for (i, f) in self.traffic.flows.iter().enumerate() {
            if f.src.is_ipv4() != f.dst.is_ipv4() {
                return Err(err(
                    format!("traffic.flows[{i}].dst"),
                    "src and dst mix IPv4 and IPv6".into(),
                ));
            }
        }
        if self.traffic.flows.len() > usize::from(u16::MAX) {
            return Err(err("traffic.flows".into(), "too many flows".into()));
        }
        Ok((a, b))
    }
}

/// Which port kind the data plane's workers run on.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// Linux AF_XDP sockets on kernel interfaces (VMs, veth, any NIC with an XDP driver).
    AfXdp,
    /// DPDK poll-mode drivers (bare metal NICs; vdevs in test mode). Needs a build with the
    /// `dpdk` feature.
    Dpdk,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XdpModeName {
    /// Native (driver) mode when the driver has it, else generic (SKB) mode.
    #[default]
    Auto,
    Native,
    Skb,
}

/// Zero-copy wish for AF_XDP sockets.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ZeroCopyName {
    /// Zero-copy when the driver supports it in native mode, else copy.
    #[default]
    Auto,
    On,
    Off,
}

/// The `dataplane.af_xdp` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfXdpYaml {
    #[serde(default)]
    pub mode: XdpModeName,
    #[serde(default)]
    pub zero_copy: ZeroCopyName,
    /// UMEM chunks per worker (shared by its LAN and WAN queues).
    #[serde(default = "xdp_frames")]
    pub frames: u32,
    /// Bytes per chunk: 2048 or 4096.
    #[serde(default = "xdp_frame_size")]
    pub frame_size: u32,
    /// Entries per fill/completion/rx/tx ring (a power of two).
    #[serde(default = "xdp_ring_size")]
    pub ring_size: u32,
}

impl Default for AfXdpYaml {
    fn default() -> Self {
        AfXdpYaml {
            mode: XdpModeName::Auto,
            zero_copy: ZeroCopyName::Auto,
            frames: xdp_frames(),
            frame_size: xdp_frame_size(),
            ring_size: xdp_ring_size(),
        }
    }
}

fn xdp_frames() -> u32 {
    8192
}
fn xdp_frame_size() -> u32 {
    2048
}
fn xdp_ring_size() -> u32 {
    2048
}

/// The `dataplane.dpdk` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkYaml {
    /// EAL arguments, e.g. `["-l", "0-1", "--no-huge", "--no-pci", "--vdev=net_af_packet0,iface=eth1"]`
    /// for test mode, or `["-l", "2-5", "-a", "0000:03:00.0"]` on bare metal.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// mbufs per port's pool (0 = the port's default).
    #[serde(default)]
    pub mbufs: u32,
}

/// The `dataplane` section: how the workers meet the wire.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    pub port: PortKind,
    /// Workers, each owning queue i of both devices.
    #[serde(default = "one")]
    pub workers: u16,
    /// Cores to pin worker i to `cores[i]` (absent: not pinned).
    #[serde(default)]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub crypto_backend: BackendChoice,
    #[serde(default)]
    pub af_xdp: AfXdpYaml,
    #[serde(default)]
    pub dpdk: DpdkYaml,
}

fn one() -> u16 {
    1
}

/// A file for `roamgate dataplane`: one gateway and its data plane.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneFile {
    pub gateway: GatewayConfig,
    pub dataplane: DataplaneConfig,
    /// IKEv2 connections (`roamgate run`): SAs negotiated at run time, next to the static ones.
    #[serde(default)]
    pub ike: crate::ike_config::IkeYaml,
}

impl DataplaneFile {
    /// Validates the gateway and the data-plane section.
    pub fn validate(&self, file: &Path) -> Result<GatewayPlan, ConfigError> {
        let plan = self.gateway.validate(file, "gateway")?;
        let err = |key: &str, what: String| ConfigError {
            file: file.to_owned(),
            key: key.to_string(),
            what,
        };
        let d = &self.dataplane;
        if d.workers == 0 {
            return Err(err("dataplane.workers", "needs at least one worker".into()));
        }
        if !d.cores.is_empty() && d.cores.len() < usize::from(d.workers) {
            return Err(err(
                "dataplane.cores",
                format!("{} cores listed for {} workers", d.cores.len(), d.workers),
            ));
        }
        if d.crypto_backend == BackendChoice::Null {
            return Err(err(
                "dataplane.crypto_backend",
                "null is for benchmarks only".into(),
            ));
        }
        for (side, i) in [("lan", &self.gateway.lan), ("wan", &self.gateway.wan)] {
            if i.device.as_deref().is_none_or(str::is_empty) {
                return Err(err(
                    &format!("gateway.{side}.device"),
                    "the data plane needs the device of each side".into(),
                ));
            }
        }
        let x = &d.af_xdp;
        if !(x.frame_size == 2048 || x.frame_size == 4096) {
            return Err(err(
                "dataplane.af_xdp.frame_size",
                format!("{} is not 2048 or 4096", x.frame_size),
            ));
        }
        if !x.ring_size.is_power_of_two() || !(64..=16384).contains(&x.ring_size) {
            return Err(err(
                "dataplane.af_xdp.ring_size",
                format!("{} is not a power of two in 64..=16384", x.ring_size),
            ));
        }
        if x.frames < 4 * x.ring_size {
            return Err(err(
                "dataplane.af_xdp.frames",
                format!(
                    "{} chunks cannot keep two ports' fill and tx rings of {} busy: give at least {}",
                    x.frames,
                    x.ring_size,
                    4 * x.ring_size
                ),
            ));
        }
        if d.port == PortKind::Dpdk && d.dpdk.eal_args.is_empty() {
            return Err(err(
                "dataplane.dpdk.eal_args",
                "the DPDK port needs EAL arguments (cores, devices)".into(),
            ));
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod dataplane_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../configs/netns-a.yaml");

    #[test]
    fn the_shipped_example_is_valid() {
        let f: DataplaneFile = parse(Path::new("x.yaml"), EXAMPLE).unwrap();
        let plan = f.validate(Path::new("x.yaml")).unwrap();
        assert_eq!(f.dataplane.port, PortKind::AfXdp);
        assert_eq!(plan.sas.len(), 4);
    }

    #[test]
    fn errors_name_the_key() {
        let bad = EXAMPLE.replace("ring_size: 2048", "ring_size: 1000");
        let f: DataplaneFile = parse(Path::new("x.yaml"), &bad).unwrap();
        let e = f.validate(Path::new("x.yaml")).unwrap_err();
        assert_eq!(e.key, "dataplane.af_xdp.ring_size");
        let bad = EXAMPLE.replace("device: lan,", "device: \"\",");
        let f: DataplaneFile = parse(Path::new("x.yaml"), &bad).unwrap();
        let e = f.validate(Path::new("x.yaml")).unwrap_err();
        assert_eq!(e.key, "gateway.lan.device");
        let bad = EXAMPLE.replace("workers: 1", "workers: 0");
        let f: DataplaneFile = parse(Path::new("x.yaml"), &bad).unwrap();
        assert_eq!(
            f.validate(Path::new("x.yaml")).unwrap_err().key,
            "dataplane.workers"
        );
    }
}

#[cfg(test)]
mod lab_tests {
    use super::*;

    const LAB: &str = include_str!("../../configs/lab.yaml");

    #[test]
    fn the_shipped_lab_config_is_valid() {
        let cfg: LabConfig = parse(Path::new("configs/lab.yaml"), LAB).unwrap();
        let (a, b) = cfg.validate(Path::new("configs/lab.yaml")).unwrap();
        assert_eq!(a.sas.len(), 4);
        assert_eq!(b.rules.len(), 4);
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let bad = LAB.replace("spi: 0x0000b001", "spi: 7");
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &bad).unwrap();
        let e = cfg.validate(Path::new("lab.yaml")).unwrap_err().to_string();
        assert!(
            e.starts_with("lab.yaml: site_a.sas[1].spi: SPI 7 is reserved"),
            "{e}"
        );

        let bad = LAB.replacen("sa: a-to-b }", "sa: nope }", 1);
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &bad).unwrap();
        let e = cfg.validate(Path::new("lab.yaml")).unwrap_err().to_string();
        assert_eq!(
            e,
            "lab.yaml: site_a.policies[0].sa: no outbound SA named 'nope'"
        );

        let bad = LAB.replacen(
            "key: \"92182da4849f36aa0a4dd65299d43cead6511b6b\"",
            "key: \"9218\"",
            1,
        );
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &bad).unwrap();
        let e = cfg.validate(Path::new("lab.yaml")).unwrap_err().to_string();
        assert!(
            e.starts_with("lab.yaml: site_a.sas[0].key: key material is 2 bytes"),
            "{e}"
        );

        let bad = LAB.replacen("replay_window: 1024", "replay_window: 100", 1);
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &bad).unwrap();
        let e = cfg.validate(Path::new("lab.yaml")).unwrap_err().to_string();
        assert!(
            e.starts_with("lab.yaml: site_a.replay_window: replay window 100"),
            "{e}"
        );

        let with_nat = LAB.replacen(
            "  replay_window: 1024\n",
            "  replay_window: 1024\n  masquerade: { address: 192.0.2.1, port_lo: 2000, port_hi: 1000 }\n",
            1,
        );
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &with_nat).unwrap();
        let e = cfg.validate(Path::new("lab.yaml")).unwrap_err().to_string();
        assert!(
            e.starts_with("lab.yaml: site_a.masquerade.port_lo: port range 2000-1000"),
            "{e}"
        );
        let ok = with_nat.replace(
            "port_lo: 2000, port_hi: 1000",
            "port_lo: 1000, port_hi: 2000",
        );
        let cfg: LabConfig = parse(Path::new("lab.yaml"), &ok).unwrap();
        let (a, _) = cfg.validate(Path::new("lab.yaml")).unwrap();
        assert_eq!(a.masquerade.unwrap().port_range, (1000, 2000));

        // Syntax and type errors come from the parser with line and column.
        let bad = LAB.replacen("mtu: 1500", "mtu: lots", 1);
        let e = parse::<LabConfig>(Path::new("lab.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("lab.yaml: ") && e.contains("line ") && e.contains("mtu"),
            "{e}"
        );
        let bad = LAB.replacen("rate_pps: 0", "rate_ps: 0", 1);
        let e = parse::<LabConfig>(Path::new("lab.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `rate_ps`"), "{e}");
    }
}
