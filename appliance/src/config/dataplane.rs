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

impl DataplaneConfig {
    /// Checks the section on its own; `at` is its key path (`dataplane`).
    pub fn validate(&self, file: &Path, at: &str) -> Result<(), ConfigError> {
        let err = |key: &str, what: String| ConfigError::new(file, format!("{at}.{key}"), what);
        if self.workers == 0 {
            return Err(err("workers", "needs at least one worker".into()));
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
        if self.port == PortKind::Dpdk && self.dpdk.eal_args.is_empty() {
            return Err(err(
                "dpdk.eal_args",
                "the DPDK port needs EAL arguments (cores, devices)".into(),
            ));
        }
        Ok(())
    }
}
