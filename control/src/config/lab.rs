//! The lab schema (`configs/lab.yaml`): two gateways and the simulated traffic between their
//! LANs, for `roamgate lab` and the benches.

use core::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use super::{BackendChoice, ConfigError, GatewayConfig, GatewayPlan};

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
        // The lab's links are in memory: nobody answers ARP there.
        for (at, g) in [("site_a", &self.site_a), ("site_b", &self.site_b)] {
            for (side, i) in [("lan", &g.lan), ("wan", &g.wan)] {
                if i.neighbor_mac.is_none() {
                    return Err(ConfigError::new(
                        file,
                        format!("{at}.{side}.neighbor_mac"),
                        "the lab's in-memory links need a configured neighbour",
                    ));
                }
            }
        }
        let err = |key: String, what: String| ConfigError::new(file, key, what);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const LAB: &str = include_str!("../../../configs/lab.yaml");

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
        assert_eq!(
            e,
            "lab.yaml:13:96: site_a.wan.mtu: not valid here: expected a whole number from 0 to 65535"
        );
        let bad = LAB.replacen("rate_pps: 0", "rate_ps: 0", 1);
        let e = parse::<LabConfig>(Path::new("lab.yaml"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("lab.yaml:") && e.contains(": traffic.rate_ps: unknown field `rate_ps`"),
            "{e}"
        );
    }
}
