//! The `dataplane` section: how the workers meet the wire (port kind, workers and their
//! cores, the AEAD backend, AF_XDP and DPDK parameters). It lives with the appliance, the
//! process that opens the ports; the control plane never reads it.

use std::path::Path;

use control::config::{BackendChoice, ConfigError};
use serde::Deserialize;

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
    #[cfg_attr(not(feature = "dpdk"), allow(dead_code))]
    pub mbufs: u32,
}

/// The `dataplane.neighbor` section: the neighbour caches of links without a `neighbor_mac`
/// (one per link, family and worker). Defaults: RFC 4861 10's constants, Linux's table sizes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeighborYaml {
    /// Entries per cache (static neighbours included).
    pub cache_size: usize,
    /// A confirmed neighbour is used without asking again for about this long (0.5 to 1.5
    /// times it, RFC 4861's BaseReachableTime).
    pub reachable_ms: u64,
    /// Between solicitations (RetransTimer).
    pub retrans_ms: u64,
    /// A stale entry in use waits this long before its first unicast probe.
    pub delay_first_probe_ms: u64,
    /// Solicitations (broadcast / multicast, then unicast probes) before giving up.
    pub probes: u8,
    /// An unused stale entry goes after this long.
    pub stale_ms: u64,
    /// Frames kept per unresolved address (the oldest makes way).
    pub queue_per_address: usize,
    /// Frames kept in all, per cache.
    pub queue_total: usize,
}

impl Default for NeighborYaml {
    fn default() -> Self {
        let d = pipeline::neighbor::NeighborConfig::default();
        NeighborYaml {
            cache_size: d.capacity,
            reachable_ms: d.reachable_ns / MS,
            retrans_ms: d.retrans_ns / MS,
            delay_first_probe_ms: d.delay_first_probe_ns / MS,
            probes: d.multicast_solicit,
            stale_ms: d.stale_ns / MS,
            queue_per_address: d.queue_len,
            queue_total: d.max_queued,
        }
    }
}

const MS: u64 = 1_000_000;

impl NeighborYaml {
    /// The cache's limits, checked; Err names the key (under `dataplane.neighbor`).
    pub fn to_config(&self) -> Result<pipeline::neighbor::NeighborConfig, (&'static str, String)> {
        let in_range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((key, format!("{v} is outside {lo}..={hi}")))
            }
        };
        in_range("cache_size", self.cache_size as u64, 1, 1 << 20)?;
        in_range("reachable_ms", self.reachable_ms, 1000, 3_600_000)?;
        in_range("retrans_ms", self.retrans_ms, 100, 60_000)?;
        in_range(
            "delay_first_probe_ms",
            self.delay_first_probe_ms,
            100,
            60_000,
        )?;
        in_range("probes", u64::from(self.probes), 1, 10)?;
        in_range("stale_ms", self.stale_ms, 1000, 86_400_000)?;
        in_range("queue_per_address", self.queue_per_address as u64, 1, 64)?;
        in_range("queue_total", self.queue_total as u64, 1, 65536)?;
        if self.queue_total < self.queue_per_address {
            return Err((
                "queue_total",
                format!(
                    "{} is less than queue_per_address ({})",
                    self.queue_total, self.queue_per_address
                ),
            ));
        }
        let c = pipeline::neighbor::NeighborConfig {
            capacity: self.cache_size,
            reachable_ns: self.reachable_ms * MS,
            retrans_ns: self.retrans_ms * MS,
            delay_first_probe_ns: self.delay_first_probe_ms * MS,
            multicast_solicit: self.probes,
            unicast_solicit: self.probes,
            stale_ns: self.stale_ms * MS,
            queue_len: self.queue_per_address,
            max_queued: self.queue_total,
            seed: crate::seed(),
        };
        c.validate().map_err(|e| (e.field, e.problem.to_string()))?;
        Ok(c)
    }
}

/// The `dataplane.reassembly` section: outer fragments of ESP and IKE sent to the gateway,
/// reassembled per worker within these limits (defaults: RFC 791's 15 s timer, Linux's 4 MiB).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReassemblyYaml {
    /// Off: every such fragment is dropped as `outer_fragment`.
    pub enabled: bool,
    /// A datagram not complete this long after its first fragment is dropped (at most 60 s).
    pub timeout_ms: u64,
    /// Incomplete datagrams held, in total.
    pub max_datagrams: usize,
    /// Incomplete datagrams held per source (IPv4 address, IPv6 /64).
    pub max_per_source: usize,
    /// Bytes of reassembly buffers, in total.
    pub max_bytes: usize,
    /// Fragments per datagram.
    pub max_fragments: usize,
}

impl Default for ReassemblyYaml {
    fn default() -> Self {
        let d = pipeline::reasm::ReasmConfig::default();
        ReassemblyYaml {
            enabled: true,
            timeout_ms: d.timeout_ns / MS,
            max_datagrams: d.max_datagrams,
            max_per_source: d.max_per_source,
            max_bytes: d.max_bytes,
            max_fragments: d.max_fragments,
        }
    }
}

impl ReassemblyYaml {
    /// The reassembler's limits, checked (None: off); Err names the key (under
    /// `dataplane.reassembly`).
    pub fn to_config(
        &self,
    ) -> Result<Option<pipeline::reasm::ReasmConfig>, (&'static str, String)> {
        if !self.enabled {
            return Ok(None);
        }
        if self.max_bytes > 1 << 30 {
            return Err((
                "max_bytes",
                format!("{} is more than 1 GiB", self.max_bytes),
            ));
        }
        if self.max_per_source > self.max_datagrams {
            return Err((
                "max_per_source",
                format!(
                    "{} is more than max_datagrams ({})",
                    self.max_per_source, self.max_datagrams
                ),
            ));
        }
        let c = pipeline::reasm::ReasmConfig {
            timeout_ns: self.timeout_ms.saturating_mul(MS),
            max_datagrams: self.max_datagrams,
            max_per_source: self.max_per_source,
            max_bytes: self.max_bytes,
            max_fragments: self.max_fragments,
            ..pipeline::reasm::ReasmConfig::default()
        };
        c.validate().map_err(|e| {
            let key = match e.field {
                "timeout_ns" => "timeout_ms",
                "max_datagrams" => "max_datagrams",
                "max_per_source" => "max_per_source",
                "max_fragments" => "max_fragments",
                _ => "max_bytes",
            };
            (key, e.problem)
        })?;
        Ok(Some(c))
    }
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
    #[serde(default)]
    pub neighbor: NeighborYaml,
    #[serde(default)]
    pub reassembly: ReassemblyYaml,
}

/// The most workers a data plane runs (every pair of workers has a hand-off lane).
pub const MAX_WORKERS: u16 = 64;

fn one() -> u16 {
    1
}

impl DataplaneConfig {
    /// Checks the section on its own; `at` is its key path (`dataplane`).
    pub fn validate(&self, file: &Path, at: &str) -> Result<(), ConfigError> {
        let err = |key: &str, what: String| ConfigError::new(file, format!("{at}.{key}"), what);
        if self.workers == 0 {
            return Err(err("workers", "needs at least one worker".into()));
        }
        if self.workers > MAX_WORKERS {
            return Err(err(
                "workers",
                format!("{} is more than {MAX_WORKERS}", self.workers),
            ));
        }
        for (i, c) in self.cores.iter().enumerate() {
            if self.cores[..i].contains(c) {
                return Err(err(
                    &format!("cores[{i}]"),
                    format!("core {c} is listed twice: each worker needs a core of its own"),
                ));
            }
        }
        if let Some(ids) = core_affinity::get_core_ids() {
            let here: Vec<usize> = ids.iter().map(|c| c.id).collect();
            if let Some((i, c)) = self
                .cores
                .iter()
                .enumerate()
                .find(|(_, c)| !here.contains(c))
            {
                return Err(err(
                    &format!("cores[{i}]"),
                    format!("core {c} is not one this process may run on (cores {here:?})"),
                ));
            }
        }
        if !self.cores.is_empty() && self.cores.len() < usize::from(self.workers) {
            return Err(err(
                "cores",
                format!(
                    "{} cores listed for {} workers",
                    self.cores.len(),
                    self.workers
                ),
            ));
        }
        if self.crypto_backend == BackendChoice::Null {
            return Err(err("crypto_backend", "null is for benchmarks only".into()));
        }
        let x = &self.af_xdp;
        if !(x.frame_size == 2048 || x.frame_size == 4096) {
            return Err(err(
                "af_xdp.frame_size",
                format!("{} is not 2048 or 4096", x.frame_size),
            ));
        }
        if !x.ring_size.is_power_of_two() || !(64..=16384).contains(&x.ring_size) {
            return Err(err(
                "af_xdp.ring_size",
                format!("{} is not a power of two in 64..=16384", x.ring_size),
            ));
        }
        if x.frames < 4 * x.ring_size {
            return Err(err(
                "af_xdp.frames",
                format!(
                    "{} chunks cannot keep two ports' fill and tx rings of {} busy: give at least {}",
                    x.frames,
                    x.ring_size,
                    4 * x.ring_size
                ),
            ));
        }
        self.neighbor
            .to_config()
            .map_err(|(k, w)| err(&format!("neighbor.{k}"), w))?;
        self.reassembly
            .to_config()
            .map_err(|(k, w)| err(&format!("reassembly.{k}"), w))?;
        if self.port == PortKind::Dpdk && self.dpdk.eal_args.is_empty() {
            return Err(err(
                "dpdk.eal_args",
                "the DPDK port needs EAL arguments (cores, devices)".into(),
            ));
        }
        Ok(())
    }
}
