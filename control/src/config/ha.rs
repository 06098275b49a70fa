//! The `ha` section of a gateway file: this node's place in an HA pair.
//!
//! ```yaml
//! ha:
//!   node: 0                       # 0 or 1, different on the two nodes
//!   priority: 200                 # the higher one is active when both start together
//!   sync_local: 169.254.77.1:7500 # this node's end of the dedicated sync link
//!   sync_peer: 169.254.77.2:7500  # the other node's end
//!   psk_file: /etc/roamgate/ha.psk  # or psk: "<64 hex digits>" (32 bytes)
//!   virtual_addresses:
//!     wan: [192.0.2.1]            # what the clients talk to
//!     lan: [10.9.0.1]             # what the LAN hosts route through
//!   heartbeat_ms: 30
//!   detection_ms: 150
//!   checkpoint_packets: 4096
//!   checkpoint_ms: 50
//!   max_pps: 2000000              # the highest rate one SA sends at
//!   takeover: address             # or announce (below)
//! ```
//!
//! `takeover: address` (the default): the nodes share the WAN virtual addresses and the
//! active one holds them. `takeover: announce`: the nodes sit on different subnets and share
//! no WAN address (`virtual_addresses.wan` stays empty; each node's `gateway.wan.address` is
//! its own): a node that takes over tells every client its own address inside the IKE SA
//! (roamgate's clients move after a return-routability probe, clients that announced
//! REDIRECT_SUPPORTED get an RFC 5685 redirect, others reconnect; `ike::GatewayMove`).
//!
//! This module owns the schema and its validation into [`HaPlan`] (the pair's
//! `control::ha::HaParams`, the sync addresses, the key, the virtual addresses). Every error
//! names the file, the key path and the problem. It never prints the key: `Debug` of the
//! schema and of the plan shows `<redacted>`, and a bad key is described by its length or the
//! position of a bad digit only.

use core::fmt;
use core::net::{IpAddr, SocketAddr};
use std::path::Path;

use proto::sa::Checkpoint;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::ConfigError;
use crate::ha::{HaParams, MAX_JUMP};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaYaml {
    pub node: u8,
    #[serde(default = "default_priority")]
    pub priority: u8,
    pub sync_local: SocketAddr,
    pub sync_peer: SocketAddr,
    #[serde(default)]
    pub psk: Option<String>,
    #[serde(default)]
    pub psk_file: Option<String>,
    pub virtual_addresses: VirtualAddresses,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_detection")]
    pub detection_ms: u64,
    #[serde(default = "default_checkpoint_packets")]
    pub checkpoint_packets: u64,
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
    #[serde(default = "default_max_pps")]
    pub max_pps: u64,
    /// Sync messages queued for the channel before the core waits.
    #[serde(default = "default_queue")]
    pub sync_queue: usize,
    /// Log entries the standby may be behind before it is out of sync.
    #[serde(default = "default_backlog")]
    pub max_backlog: usize,
    /// Numbers per SA the old active may still send in a planned switchover while the
    /// traffic moves (the new active starts right above: the jump its peers see).
    #[serde(default = "default_switchover_margin")]
    pub switchover_margin: u64,
    /// How the clients find the node that took over.
    #[serde(default)]
    pub takeover: Takeover,
}

/// How the clients find the node that took over (`ha.takeover`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Takeover {
    /// The nodes share the WAN virtual addresses; the active one holds them.
    #[default]
    Address,
    /// The nodes sit on different subnets: the new active tells the clients its address.
    Announce,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualAddresses {
    #[serde(default)]
    pub wan: Vec<IpAddr>,
    #[serde(default)]
    pub lan: Vec<IpAddr>,
}

fn default_priority() -> u8 {
    100
}
fn default_heartbeat() -> u64 {
    30
}
fn default_detection() -> u64 {
    150
}
fn default_checkpoint_packets() -> u64 {
    4096
}
fn default_checkpoint_ms() -> u64 {
    50
}
fn default_max_pps() -> u64 {
    2_000_000
}
fn default_queue() -> usize {
    1024
}
fn default_backlog() -> usize {
    65_536
}
fn default_switchover_margin() -> u64 {
    512
}

impl fmt::Debug for HaYaml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaYaml")
            .field("node", &self.node)
            .field("priority", &self.priority)
            .field("sync_local", &self.sync_local)
            .field("sync_peer", &self.sync_peer)
            .field("psk", &"<redacted>")
            .field("psk_file", &self.psk_file)
            .field("virtual_addresses", &self.virtual_addresses)
            .finish_non_exhaustive()
    }
}

/// A validated `ha` section.
pub struct HaPlan {
    pub params: HaParams,
    pub sync_local: SocketAddr,
    pub sync_peer: SocketAddr,
    /// The sync channel's key (Noise NNpsk0).
    pub psk: Zeroizing<[u8; 32]>,
    pub wan_addresses: Vec<IpAddr>,
    pub lan_addresses: Vec<IpAddr>,
    pub sync_queue: usize,
    pub takeover: Takeover,
}

impl fmt::Debug for HaPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaPlan")
            .field("params", &self.params)
            .field("sync_local", &self.sync_local)
            .field("sync_peer", &self.sync_peer)
            .field("psk", &"<redacted>")
            .field("wan_addresses", &self.wan_addresses)
            .field("lan_addresses", &self.lan_addresses)
            .field("takeover", &self.takeover)
            .finish()
    }
}

impl HaYaml {
    /// Validates the section found at key path `at` (e.g. `ha`) of `file`.
    pub fn validate(&self, file: &Path, at: &str) -> Result<HaPlan, ConfigError> {
        let err = |k: &str, what: String| ConfigError::new(file, format!("{at}.{k}"), what);
        if self.node > 1 {
            return Err(err(
                "node",
                format!("{} is not 0 or 1 (the two nodes take one each)", self.node),
            ));
        }
        if self.sync_local == self.sync_peer {
            return Err(err(
                "sync_peer",
                "is this node's own sync address (sync_local)".into(),
            ));
        }
        if self.sync_local.is_ipv4() != self.sync_peer.is_ipv4() {
            return Err(err(
                "sync_peer",
                "is of another address family than sync_local".into(),
            ));
        }
        let psk = self.key(file, at)?;
        match (self.takeover, self.virtual_addresses.wan.is_empty()) {
            (Takeover::Address, true) => {
                return Err(err(
                    "virtual_addresses.wan",
                    "needs at least one address (the one the clients talk to; with nodes on \
                     different subnets, set takeover: announce instead)"
                        .into(),
                ))
            }
            (Takeover::Announce, false) => {
                return Err(err(
                    "virtual_addresses.wan",
                    "must be empty with takeover: announce (the nodes share no WAN address: \
                     each tells its clients its own gateway.wan.address when it takes over)"
                        .into(),
                ))
            }
            _ => {}
        }
        for (side, list) in [
            ("wan", &self.virtual_addresses.wan),
            ("lan", &self.virtual_addresses.lan),
        ] {
            for (i, a) in list.iter().enumerate() {
                if list[..i].contains(a) {
                    return Err(err(
                        &format!("virtual_addresses.{side}[{i}]"),
                        format!("{a} is listed twice"),
                    ));
                }
                if *a == self.sync_local.ip() || *a == self.sync_peer.ip() {
                    return Err(err(
                        &format!("virtual_addresses.{side}[{i}]"),
                        format!("{a} is a sync link address: the sync link must not move"),
                    ));
                }
            }
        }
        if self.heartbeat_ms == 0 {
            return Err(err("heartbeat_ms", "must be at least 1".into()));
        }
        if self.detection_ms < self.heartbeat_ms.saturating_mul(2) {
            return Err(err(
                "detection_ms",
                format!(
                    "{} ms is less than two heartbeats ({} ms each): one late heartbeat would \
                     be a failover",
                    self.detection_ms, self.heartbeat_ms
                ),
            ));
        }
        if self.checkpoint_packets == 0 && self.checkpoint_ms == 0 {
            return Err(err(
                "checkpoint_ms",
                "checkpoint_packets and checkpoint_ms are both 0: the standby would never learn \
                 where an SA stands"
                    .into(),
            ));
        }
        if self.max_pps == 0 {
            return Err(err("max_pps", "must be at least 1".into()));
        }
        if self.switchover_margin == 0 || self.switchover_margin > MAX_JUMP {
            return Err(err(
                "switchover_margin",
                format!("must be between 1 and {MAX_JUMP}"),
            ));
        }
        if self.sync_queue == 0 || self.max_backlog == 0 {
            return Err(err(
                if self.sync_queue == 0 {
                    "sync_queue"
                } else {
                    "max_backlog"
                },
                "must be at least 1".into(),
            ));
        }
        let params = HaParams {
            slot: self.node,
            priority: self.priority,
            heartbeat_ms: self.heartbeat_ms,
            detection_ms: self.detection_ms,
            checkpoint: Checkpoint {
                packets: self.checkpoint_packets,
                millis: self.checkpoint_ms,
            },
            max_pps: self.max_pps,
            window: self.sync_queue,
            max_backlog: self.max_backlog,
            switchover_margin: self.switchover_margin,
        };
        let jump = params.plan().max_jump();
        if jump > MAX_JUMP {
            return Err(err(
                "max_pps",
                format!(
                    "with these checkpoint and detection intervals a takeover could jump {jump} \
                     sequence numbers, more than 2^30 (the peer's ESN inference needs far less \
                     than 2^31): lower max_pps, checkpoint_packets, checkpoint_ms or detection_ms"
                ),
            ));
        }
        Ok(HaPlan {
            params,
            sync_local: self.sync_local,
            sync_peer: self.sync_peer,
            psk,
            wan_addresses: self.virtual_addresses.wan.clone(),
            lan_addresses: self.virtual_addresses.lan.clone(),
            sync_queue: self.sync_queue,
            takeover: self.takeover,
        })
    }

    fn key(&self, file: &Path, at: &str) -> Result<Zeroizing<[u8; 32]>, ConfigError> {
        super::read_key32(&self.psk, &self.psk_file, file, at, "the sync key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[derive(Deserialize)]
    struct OnlyHa {
        ha: HaYaml,
    }

    fn check(yaml: &str) -> Result<HaPlan, ConfigError> {
        let p = Path::new("t.yaml");
        let f: OnlyHa = super::super::parse(p, yaml)?;
        f.ha.validate(p, "ha")
    }

    fn base(extra: &str) -> String {
        format!(
            "ha:\n  node: 1\n  sync_local: 169.254.77.2:7500\n  sync_peer: 169.254.77.1:7500\n  \
             virtual_addresses: {{ wan: [192.0.2.1], lan: [10.9.0.1] }}\n{extra}"
        )
    }

    #[test]
    fn a_good_section_becomes_the_pair_parameters() {
        let p = check(&base(&format!("  psk: \"{KEY}\"\n"))).unwrap();
        assert_eq!(p.params.slot, 1);
        assert_eq!(p.params.detection_ms, 150);
        assert!(p.params.detection_ms <= 150);
        assert_eq!(p.psk[0], 0x00);
        assert_eq!(p.psk[31], 0xff);
        assert!(!format!("{p:?}").contains("ddeeff"));
    }

    #[test]
    fn errors_name_the_key_and_never_show_the_psk() {
        let cases = [
            ("  psk: \"abcd\"\n", "ha.psk", "2 bytes"),
            ("  psk: \"zz\"\n", "ha.psk", "not a hex digit"),
            ("", "ha.psk", "exactly one"),
            (
                "  psk_file: /nonexistent/ha.psk\n",
                "ha.psk_file",
                "cannot read",
            ),
        ];
        for (extra, key, what) in cases {
            let e = check(&base(extra)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.what.contains(what), "{e}");
            assert!(!e.to_string().contains("abcd"), "{e}");
        }
        let with_key = |extra: &str| base(&format!("  psk: \"{KEY}\"\n{extra}"));
        let cases = [
            ("  heartbeat_ms: 100\n", "ha.detection_ms"),
            ("  max_pps: 100000000000\n", "ha.max_pps"),
            (
                "  checkpoint_packets: 0\n  checkpoint_ms: 0\n",
                "ha.checkpoint_ms",
            ),
        ];
        for (extra, key) in cases {
            let e = check(&with_key(extra)).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        let e = check(&with_key("").replace("node: 1", "node: 2")).unwrap_err();
        assert_eq!(e.key, "ha.node");
        let e = check(&with_key("").replace("169.254.77.1:7500", "169.254.77.2:7500")).unwrap_err();
        assert_eq!(e.key, "ha.sync_peer");
        let e = check(&with_key("").replace("lan: [10.9.0.1]", "lan: [169.254.77.2]")).unwrap_err();
        assert_eq!(e.key, "ha.virtual_addresses.lan[0]");
        let e = check(&with_key("  takeover: announce\n")).unwrap_err();
        assert_eq!(e.key, "ha.virtual_addresses.wan", "{e}");
        assert!(e.what.contains("takeover: announce"), "{e}");
        let e = check(&with_key("").replace("wan: [192.0.2.1], ", "")).unwrap_err();
        assert_eq!(e.key, "ha.virtual_addresses.wan", "{e}");
        let e = check(&with_key("  takeover: anycast\n")).unwrap_err();
        assert!(e.to_string().contains("takeover"), "{e}");
        let p =
            check(&with_key("  takeover: announce\n").replace("wan: [192.0.2.1], ", "")).unwrap();
        assert_eq!(p.takeover, Takeover::Announce);
        assert!(p.wan_addresses.is_empty());
        let e = check(&with_key("  bogus: 1\n")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn the_example_configs_validate() {
        for f in [
            "ha-a.yaml",
            "ha-b.yaml",
            "ha-subnet-a.yaml",
            "ha-subnet-b.yaml",
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(f);
            let text = std::fs::read_to_string(&path).unwrap();
            let c: OnlyHa = super::super::parse(&path, &text).unwrap();
            let p = c.ha.validate(&path, "ha").unwrap();
            assert_eq!(p.params.slot, u8::from(f.ends_with("b.yaml")));
            assert_eq!(
                p.takeover == Takeover::Announce,
                f.starts_with("ha-subnet"),
                "{f}"
            );
        }
    }
}
