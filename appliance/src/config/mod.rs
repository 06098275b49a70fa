//! The file of a gateway on real ports (`roamgate dataplane|control|run|client --config`): a
//! `gateway` section (control's [`GatewayConfig`]), a `dataplane` section ([`dataplane`]: the
//! port schema, which only this process reads) and an optional `ike` section (control's
//! [`IkeYaml`]).

use std::path::Path;

use control::cluster::config::{ClusterPlan, ClusterYaml, CryptoNodePlan, EdgePlan};
use control::config::ha::{HaPlan, HaYaml};
use control::config::ike::{Connection, IkeYaml};
use control::config::vcm::{VcmPolicy, VcmYaml};
use control::config::{ConfigError, GatewayConfig, GatewayPlan};
use pipeline::crypto::Backend;
use serde::Deserialize;

pub mod dataplane;

pub use dataplane::{DataplaneConfig, PortKind, XdpModeName, ZeroCopyName};

/// A file for `roamgate dataplane`: one gateway and its data plane.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneFile {
    pub gateway: GatewayConfig,
    pub dataplane: DataplaneConfig,
    /// IKEv2 connections (`roamgate run`): SAs negotiated at run time, next to the static ones.
    #[serde(default)]
    pub ike: IkeYaml,
    /// This node's place in an HA pair (`roamgate run`/`control`): absent, a lone gateway.
    #[serde(default)]
    pub ha: Option<HaYaml>,
    /// Hairpin detection for direct paths between road warriors (`control::config::vcm`):
    /// absent, hairpinned traffic is still forwarded, no pair is a candidate.
    #[serde(default)]
    pub vcm: Option<VcmYaml>,
    /// Which log events to write, as `--log-level` takes it (`info`, `info,ike=debug`):
    /// applied at start when neither `--log-level` nor `RUST_LOG` was given, and again at
    /// each reload.
    #[serde(default)]
    pub log_level: Option<String>,
    /// A cluster edge (`roamgate edge`): its id, the crypto node, the channel's key.
    #[serde(default)]
    pub cluster: Option<ClusterYaml>,
    /// Group mode (`control::config::group`): this gateway is a member of a G-IKEv2 group
    /// (role member); a key server runs as `roamgate gcks`.
    #[serde(default)]
    pub group: Option<control::config::group::GroupYaml>,
    /// A cluster edge's part of the per-connection masquerade that follows a moving client
    /// (issue 21, `control::config::masq`, `docs/masq.md`).
    #[serde(default)]
    pub masq: Option<control::config::masq::MasqYaml>,
}

/// A member's checked `group` section: the connection to the GCKS, the plan, the data
/// plane's side.
pub struct GroupMemberPlan {
    pub connection: String,
    pub plan: control::config::group::MemberPlan,
    pub setup: control::group::member::MemberSetup,
}

impl DataplaneFile {
    /// The `group` section of a member, checked against the file's connections and LAN.
    pub fn group_member(
        &self,
        file: &Path,
        conns: &[Connection],
    ) -> Result<Option<GroupMemberPlan>, ConfigError> {
        use control::config::group::GroupPlan;
        let Some(g) = &self.group else {
            return Ok(None);
        };
        let plan = match g.validate(file)? {
            GroupPlan::Member(m) => m,
            GroupPlan::Gcks(_) => {
                return Err(ConfigError::new(
                    file,
                    "group.role",
                    "is gcks: a key server runs as `roamgate gcks --config` (no data plane)",
                ))
            }
        };
        let connection = match &plan.connection {
            Some(c) => {
                if !conns.iter().any(|x| &x.peer.name == c) {
                    return Err(ConfigError::new(
                        file,
                        "group.connection",
                        format!("names no connection of ike.connections: {c}"),
                    ));
                }
                c.clone()
            }
            None => conns
                .iter()
                .find(|c| c.initiate_to.is_some_and(|a| a.ip() == plan.gcks))
                .map(|c| c.peer.name.clone())
                .ok_or_else(|| {
                    ConfigError::new(
                        file,
                        "group.connection",
                        format!(
                            "missing, and no connection has remote_addr {} (the GCKS)",
                            plan.gcks
                        ),
                    )
                })?,
        };
        let lan = self
            .gateway
            .lan
            .subnet()
            .map_err(|w| ConfigError::new(file, "gateway.lan.prefix_len", w))?;
        let any: proto::policy::Prefix = "0.0.0.0/0".parse().map_err(|_| {
            ConfigError::new(file, "group.traffic", "cannot make the default range")
        })?;
        let setup = control::group::member::MemberSetup {
            local: self.gateway.wan.address,
            lan,
            peers: plan
                .peers
                .iter()
                .map(|p| proto::group::GroupPeer {
                    lan: p.lan,
                    outer: p.address,
                })
                .collect(),
            traffic: plan.traffic.unwrap_or(any),
            replay_window: self
                .gateway
                .replay_window
                .clamp(64, 4096)
                .next_power_of_two(),
        };
        Ok(Some(GroupMemberPlan {
            connection,
            plan,
            setup,
        }))
    }
}

/// A file for `roamgate crypto-node`: the gateway the edges stand for (its name, the public
/// WAN address the clients talk to, the LAN prefixes and policies; no devices: a crypto node
/// has no data-plane ports), its IKE connections and its `cluster` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoNodeFile {
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub ike: IkeYaml,
    pub cluster: ClusterYaml,
    /// The SA repository in etcd (`store:`, control's `cluster::store::config`): with it the
    /// node writes every IKE SA, CHILD SA, placement and sequence state there and a restart
    /// recovers them; without it a restart renegotiates.
    #[cfg(feature = "etcd")]
    #[serde(default)]
    pub store: Option<control::cluster::store::config::StoreYaml>,
    #[cfg(not(feature = "etcd"))]
    #[serde(default)]
    pub store: Option<serde::de::IgnoredAny>,
}

/// What a checked crypto-node file yields.
#[derive(Debug)]
pub struct CheckedNode {
    pub plan: GatewayPlan,
    pub conns: Vec<Connection>,
    pub cluster: CryptoNodePlan,
}

impl CryptoNodeFile {
    pub fn validate(&self, file: &Path) -> Result<CheckedNode, ConfigError> {
        let plan = self.gateway.validate(file, "gateway")?;
        if !plan.sas.is_empty() {
            return Err(ConfigError::new(
                file,
                "gateway.sas",
                "a crypto node has no data plane for static SAs: give them to the edges",
            ));
        }
        let conns = self.ike.validate(file, "ike")?;
        self.ike
            .check_against(&self.gateway, file, "ike", "gateway")?;
        #[cfg(not(feature = "etcd"))]
        if self.store.is_some() {
            return Err(ConfigError::new(
                file,
                "store",
                "this roamgate was built without etcd (cargo feature `etcd`)",
            ));
        }
        match self.cluster.validate(file, "cluster")? {
            ClusterPlan::CryptoNode(cluster) => Ok(CheckedNode {
                plan,
                conns,
                cluster,
            }),
            ClusterPlan::Edge(_) => Err(ConfigError::new(
                file,
                "cluster.role",
                "is edge: run it with `roamgate edge`",
            )),
        }
    }
}

/// What a checked file yields: the data plane's static part, the IKE connections and the
/// AEAD backend this machine will use.
#[derive(Debug)]
pub struct Checked {
    pub plan: GatewayPlan,
    pub conns: Vec<Connection>,
    pub backend: Backend,
    pub ha: Option<HaPlan>,
    /// The `vcm` section, checked.
    pub vcm: Option<VcmPolicy>,
    /// A cluster edge's part (`roamgate edge`).
    pub edge: Option<EdgePlan>,
    /// The edge's `masq` section, checked (`roamgate edge-link` runs it).
    pub masq: Option<control::config::masq::MasqPlan>,
}

impl DataplaneFile {
    /// What a reload compares of this (validated) file: the control crate's sections, the
    /// log level, and this file's own sections that cannot change at run time (the data
    /// plane's ports, devices and workers; the HA section).
    pub fn snapshot<'a>(
        &self,
        checked: &'a Checked,
        admission: control::config::ike::AdmissionPolicy,
    ) -> control::config::reload::Snapshot<'a> {
        let mut s = control::config::reload::Snapshot::of(
            &self.gateway,
            &checked.plan,
            &checked.conns,
            admission,
        );
        s.log_level = self.log_level.clone();
        let d = &self.dataplane;
        s.fixed.extend([
            ("dataplane.port".into(), format!("{:?}", d.port)),
            ("dataplane.workers".into(), d.workers.to_string()),
            ("dataplane.cores".into(), format!("{:?}", d.cores)),
            ("dataplane".into(), format!("{d:?}")),
            ("ha".into(), format!("{:?}", self.ha)),
            ("group".into(), format!("{:?}", self.group)),
            ("masq".into(), format!("{:?}", self.masq)),
            // EAP's settings are read again at each reload; turning it on or off is not.
            (
                "ike.eap".into(),
                format!("present: {}", self.ike.eap.is_some()),
            ),
        ]);
        s
    }

    /// Validates the whole file: the gateway, the data-plane section (including whether its
    /// crypto backend exists on this machine) and every IKE connection. Every subcommand that
    /// starts a gateway calls this before it starts anything.
    pub fn validate(&self, file: &Path) -> Result<Checked, ConfigError> {
        let plan = self.gateway.validate(file, "gateway")?;
        self.dataplane.validate(file, "dataplane")?;
        let backend = self
            .dataplane
            .crypto_backend
            .resolve()
            .map_err(|e| ConfigError::new(file, "dataplane.crypto_backend", e))?;
        for (side, i) in [("lan", &self.gateway.lan), ("wan", &self.gateway.wan)] {
            if i.device.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(
                    file,
                    format!("gateway.{side}.device"),
                    "the data plane needs the device of each side",
                ));
            }
        }
        if let Some(l) = &self.log_level {
            crate::logs::check_filter(l).map_err(|w| ConfigError::new(file, "log_level", w))?;
        }
        let conns = self.ike.validate(file, "ike")?;
        self.ike
            .check_against(&self.gateway, file, "ike", "gateway")?;
        // The EAP section's files (user file, RADIUS secret) read and checked now too.
        self.ike.eap(file, "ike", &self.gateway.name)?;
        let ha = self
            .ha
            .as_ref()
            .map(|h| h.validate(file, "ha"))
            .transpose()?;
        let mut ha = ha;
        if let Some(h) = ha
            .as_mut()
            .filter(|h| h.takeover == control::config::ha::Takeover::Announce)
        {
            // Nodes on different subnets: this node's own WAN address is what it answers for
            // while active, and what it tells the clients when it takes over.
            h.wan_addresses = vec![self.gateway.wan.address];
        }
        if let Some(h) = &ha {
            if !h.wan_addresses.contains(&self.gateway.wan.address) {
                return Err(ConfigError::new(
                    file,
                    "ha.virtual_addresses.wan",
                    format!(
                        "does not hold gateway.wan.address ({}): the pair's clients talk to \
                         a virtual address",
                        self.gateway.wan.address
                    ),
                ));
            }
        }
        let vcm = self.vcm.as_ref().map(|v| v.validate(file)).transpose()?;
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| c.validate(file, "cluster"))
            .transpose()?;
        let edge = match cluster {
            None => None,
            Some(ClusterPlan::CryptoNode(_)) => {
                return Err(ConfigError::new(
                    file,
                    "cluster.role",
                    "is crypto-node, which has no data plane: run it with `roamgate \
                     crypto-node`",
                ))
            }
            Some(ClusterPlan::Edge(e)) => {
                if !conns.is_empty() {
                    return Err(ConfigError::new(
                        file,
                        "ike.connections",
                        "an edge runs no IKE of its own: the crypto node's file holds the \
                         connections",
                    ));
                }
                if self.dataplane.workers != 1 {
                    return Err(ConfigError::new(
                        file,
                        "dataplane.workers",
                        "an edge runs one worker for now (the crypto node places SAs per \
                         edge, not per worker)",
                    ));
                }
                if ha.is_some() {
                    return Err(ConfigError::new(file, "ha", "an edge is not an HA node"));
                }
                Some(e)
            }
        };
        let masq = match &self.masq {
            None => None,
            Some(m) => {
                if edge.as_ref().is_none_or(|e| e.encryption_node) {
                    return Err(ConfigError::new(
                        file,
                        "masq",
                        "only a cluster edge (cluster.role: edge) runs the masquerade that \
                         follows a moving client for now",
                    ));
                }
                if self.gateway.masquerade.is_some() {
                    return Err(ConfigError::new(
                        file,
                        "gateway.masquerade",
                        "the single-node masquerade and the masq section exclude each other",
                    ));
                }
                Some(m.validate(file, "masq", self.gateway.lan.address)?)
            }
        };
        Ok(Checked {
            plan,
            conns,
            backend,
            ha,
            vcm,
            edge,
            masq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::config::parse;

    const EXAMPLE: &str = include_str!("../../../configs/netns-a.yaml");

    #[test]
    fn the_shipped_example_is_valid() {
        let f: DataplaneFile = parse(Path::new("x.yaml"), EXAMPLE).unwrap();
        let checked = f.validate(Path::new("x.yaml")).unwrap();
        assert_eq!(f.dataplane.port, PortKind::AfXdp);
        assert_eq!(checked.plan.sas.len(), 4);
    }

    #[test]
    fn every_shipped_gateway_file_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") && !p.ends_with("lab.yaml") {
                // A key server's file (`roamgate gcks`) is no gateway's: checked as its own.
                let text = std::fs::read_to_string(&p).unwrap();
                if text.lines().any(|l| l.starts_with("gcks:")) {
                    crate::gcks_cmd::check_lines(&p).unwrap_or_else(|e| panic!("{e:#}"));
                    continue;
                }
                let f: DataplaneFile = control::config::load(&p).unwrap();
                n += 1;
                // Credentials a real gateway holds (certificates, EAP users): the file's
                // schema is checked above, its files only where they exist.
                let text = std::fs::read_to_string(&p).unwrap();
                if text.contains("/etc/roamgate/") && !Path::new("/etc/roamgate").exists() {
                    continue;
                }
                f.validate(&p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        assert!(n >= 5, "{n} files");
    }

    #[test]
    fn nodes_on_different_subnets_answer_for_their_own_wan_address() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for (f, own) in [
            ("ha-subnet-a.yaml", "203.0.113.1"),
            ("ha-subnet-b.yaml", "198.18.0.2"),
        ] {
            let p = dir.join(f);
            let file: DataplaneFile = control::config::load(&p).unwrap();
            let ha = file.validate(&p).unwrap().ha.unwrap();
            assert_eq!(ha.wan_addresses, [own.parse::<std::net::IpAddr>().unwrap()]);
            assert_eq!(ha.lan_addresses.len(), 1);
        }
        // A shared WAN address with takeover: announce names the file and the key.
        let p = dir.join("ha-subnet-a.yaml");
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("lan: [10.9.0.1]", "lan: [10.9.0.1]\n    wan: [203.0.113.1]");
        let file: DataplaneFile = parse(&p, &text).unwrap();
        let Err(e) = file.validate(&p) else {
            panic!("a shared WAN address with takeover: announce was taken");
        };
        assert_eq!(e.key, "ha.virtual_addresses.wan", "{e}");
        assert!(e.to_string().contains("ha-subnet-a.yaml"), "{e}");
    }

    #[test]
    fn the_mobile_nat_edges_files_are_valid_and_masq_is_an_edge_s_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster");
        let mut links = Vec::new();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            let p = dir.join(format!("mobnat-edge-{n}.yaml"));
            let f: DataplaneFile = control::config::load(&p).unwrap();
            let c = f.validate(&p).unwrap_or_else(|e| panic!("{e}"));
            let m = c.masq.unwrap();
            assert_eq!(m.params.node.as_str(), format!("edge-{n}"));
            assert_eq!(m.params.cluster.as_str(), "mobnat");
            assert_eq!(
                m.params.addrs,
                vec![std::net::Ipv4Addr::new(10, 8, 0, 100 + i as u8)]
            );
            assert_eq!(m.params.node_ttl_s, 2);
            assert_eq!(
                m.liveness,
                Some(format!("169.254.80.1{i}:7700").parse().unwrap()),
                "heartbeats on the management bridge"
            );
            assert!(matches!(
                m.store,
                control::config::masq::MasqStorePlan::Etcd(_)
            ));
            let rw = m.access.user("rw.roamgate.test").unwrap();
            assert!(m.access.allows(rw, "10.9.0.10".parse().unwrap(), 6, 5201));
            assert!(m.access.allows(rw, "10.9.0.30".parse().unwrap(), 17, 53));
            let sw = m.access.user("sw.roamgate.test").unwrap();
            assert!(m.access.allows(sw, "10.9.0.20".parse().unwrap(), 6, 22));
            assert!(!m.access.allows(sw, "10.9.0.30".parse().unwrap(), 6, 22));
            assert!(!m.access.allows(sw, "192.0.2.1".parse().unwrap(), 6, 80));
            assert!(m.access.user("mallory@lab").is_none());
            links.push(m.link_address);
        }
        links.dedup();
        assert_eq!(links.len(), 3, "one link address per edge");
        // Not on a gateway without a cluster edge, nor next to the single-node masquerade.
        let edge = std::fs::read_to_string(dir.join("mobnat-edge-a.yaml")).unwrap();
        let p = dir.join("x.yaml");
        let check = |text: &str| {
            let f: DataplaneFile = parse(&p, text).unwrap();
            f.validate(&p).map(|_| ()).unwrap_err()
        };
        let cut = edge.find("cluster:").unwrap();
        let end = edge.find("masq:").unwrap();
        let no_cluster = format!("{}{}", &edge[..cut], &edge[end..]);
        assert_eq!(check(&no_cluster).key, "masq");
        let e = check(&edge.replace("node: edge-a", "node: Edge/A"));
        assert_eq!(e.key, "masq.node", "{e}");
        assert!(e.to_string().contains("x.yaml"), "{e}");
    }

    #[test]
    fn the_shipped_cluster_files_are_valid_and_their_roles_are_kept_apart() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster");
        let node = dir.join("crypto-node.yaml");
        let f: CryptoNodeFile = control::config::load(&node).unwrap();
        let c = f.validate(&node).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.cluster.node_id, c.cluster.node_bits), (1, 4));
        for (i, name) in ["edge-a", "edge-b", "edge-c"].iter().enumerate() {
            let p = dir.join(format!("{name}.yaml"));
            let f: DataplaneFile = control::config::load(&p).unwrap();
            let c = f.validate(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.edge.map(|e| e.edge_id), Some(i as u16));
        }
        let client = dir.join("client.yaml");
        let f: DataplaneFile = control::config::load(&client).unwrap();
        assert!(f.validate(&client).unwrap().edge.is_none());
        // The encryption node's file and the crypto node's with filters (issue 18 item 7).
        let enc = dir.join("encryption-node.yaml");
        let f: DataplaneFile = control::config::load(&enc).unwrap();
        let e = f.validate(&enc).unwrap_or_else(|e| panic!("{e}")).edge;
        assert!(e.is_some_and(|e| e.encryption_node && e.edge_id == 9));
        let filtered = dir.join("crypto-node-filters.yaml");
        let f: CryptoNodeFile = control::config::load(&filtered).unwrap();
        let c = f.validate(&filtered).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.filters.rules.len(), 3);
        assert!(c.cluster.filters.encryption_nodes.contains(&9));
        // An edge with IKE connections, or more workers, or a crypto node run as an edge.
        let edge = std::fs::read_to_string(dir.join("edge-a.yaml")).unwrap();
        let key = |text: &str| {
            let f: DataplaneFile = parse(Path::new("x.yaml"), text).unwrap();
            f.validate(Path::new("x.yaml")).unwrap_err().key
        };
        assert_eq!(
            key(&edge.replace("workers: 1", "workers: 2\n  cores: [0, 1]")),
            "dataplane.workers"
        );
        assert_eq!(
            key(&edge.replace("role: edge", "role: crypto-node")),
            "cluster.edge_id"
        );
        let text = std::fs::read_to_string(&node).unwrap();
        let f: CryptoNodeFile = parse(
            Path::new("x.yaml"),
            &text.replace("role: crypto-node", "role: edge"),
        )
        .unwrap();
        assert_eq!(
            f.validate(Path::new("x.yaml")).unwrap_err().key,
            "cluster.node_id"
        );
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
        let bad_key = |from: &str, to: &str| {
            let f: DataplaneFile = parse(Path::new("x.yaml"), &EXAMPLE.replace(from, to)).unwrap();
            let e = f.validate(Path::new("x.yaml")).unwrap_err();
            assert!(e.to_string().contains("x.yaml"), "{e}");
            e.key
        };
        assert_eq!(bad_key("workers: 1", "workers: 65"), "dataplane.workers");
        assert_eq!(
            bad_key("workers: 1", "workers: 1\n  cores: [0, 0]"),
            "dataplane.cores[1]"
        );
        assert_eq!(
            bad_key("workers: 1", "workers: 1\n  cores: [100000]"),
            "dataplane.cores[0]"
        );
    }

    #[test]
    fn a_reload_refuses_what_needs_a_restart_and_a_bad_log_level() {
        let path = Path::new("x.yaml");
        let load = |text: &str| -> (DataplaneFile, Checked) {
            let f: DataplaneFile = parse(path, text).unwrap();
            let c = f.validate(path).unwrap();
            (f, c)
        };
        let adm = control::config::ike::IkeYaml::default()
            .admission(path, "ike")
            .unwrap();
        let (fa, ca) = load(EXAMPLE);
        let plan = |text: &str| {
            let (fb, cb) = load(text);
            control::config::reload::plan(&fa.snapshot(&ca, adm), &fb.snapshot(&cb, adm), path)
        };
        assert!(plan(EXAMPLE).unwrap().is_empty());
        let e = plan(&EXAMPLE.replace("frames: 8192", "frames: 16384")).unwrap_err();
        assert_eq!(e.key, "dataplane");
        assert!(e.what.contains("needs a restart"), "{e}");
        let p = plan(&format!("log_level: \"info,ike=debug\"\n{EXAMPLE}")).unwrap();
        assert_eq!(p.log_level, Some(Some("info,ike=debug".into())));
        let f: DataplaneFile = parse(path, &format!("log_level: \"ike=loud\"\n{EXAMPLE}")).unwrap();
        assert_eq!(f.validate(path).unwrap_err().key, "log_level");
    }

    /// netns-a.yaml with its links resolving: no neighbor_mac, the subnets and the WAN's
    /// gateway given instead.
    fn resolving() -> String {
        EXAMPLE
            .replace(
                "address6: \"fd00:a::1\", neighbor_mac: \"02:00:00:00:0a:fe\"",
                "address6: \"fd00:a::1\", prefix_len: 24, prefix_len6: 64",
            )
            .replace(
                "address: 192.0.2.1, neighbor_mac: \"02:00:00:00:bb:01\"",
                "address: 192.0.2.1, prefix_len: 24, gateway: 192.0.2.254",
            )
    }

    #[test]
    fn links_without_a_neighbor_mac_resolve_their_next_hops() {
        let text = resolving();
        assert!(!text.contains("neighbor_mac"), "{text}");
        let f: DataplaneFile = parse(Path::new("x.yaml"), &text).unwrap();
        f.validate(Path::new("x.yaml")).unwrap();
        // With several workers too (each resolves, the answers are shared among them).
        let two = text.replace("workers: 1", "workers: 2");
        assert_ne!(two, text);
        let f2: DataplaneFile = parse(Path::new("x.yaml"), &two).unwrap();
        f2.validate(Path::new("x.yaml")).unwrap();
        let wan = f.gateway.wan.routes().expect("the WAN resolves");
        assert_eq!(wan.gateway4, Some("192.0.2.254".parse().unwrap()));
        assert_eq!(wan.on_link, vec!["192.0.2.0/24".parse().unwrap()]);
        let lan = f.gateway.lan.routes().expect("the LAN resolves");
        assert_eq!(lan.on_link.len(), 2);
        // Defaults: reassembly on, the neighbour caches' RFC 4861 timers.
        assert!(f.dataplane.reassembly.to_config().unwrap().is_some());
        let n = f.dataplane.neighbor.to_config().unwrap();
        assert_eq!((n.queue_len, n.retrans_ns), (3, 1_000_000_000));
        // The shipped file, with its neighbor_mac, does not resolve.
        let f: DataplaneFile = parse(Path::new("x.yaml"), EXAMPLE).unwrap();
        assert!(f.gateway.wan.routes().is_none());
    }

    #[test]
    fn next_hop_and_l3_errors_name_the_key() {
        let key = |text: &str| {
            let f: DataplaneFile = parse(Path::new("x.yaml"), text).unwrap();
            let e = f.validate(Path::new("x.yaml")).unwrap_err();
            assert!(e.to_string().contains("x.yaml"), "{e}");
            e.key
        };
        let text = resolving();
        assert_eq!(
            key(&text.replace(", prefix_len: 24, gateway: 192.0.2.254", "")),
            "gateway.wan.neighbor_mac"
        );
        assert_eq!(
            key(&text.replace("gateway: 192.0.2.254", "gateway: 198.51.100.1")),
            "gateway.wan.gateway"
        );
        assert_eq!(
            key(&text.replace("gateway: 192.0.2.254", "gateway: \"2001:db8::9\"")),
            "gateway.wan.gateway"
        );
        assert_eq!(
            key(&EXAMPLE.replace("mtu: 1500 }", "mtu: 1500, gateway: 192.0.2.254 }")),
            "gateway.wan.gateway"
        );
        let with =
            |section: &str| text.replace("  workers: 1\n", &format!("  workers: 1\n{section}\n"));
        assert_eq!(
            key(&with("  neighbor: { queue_per_address: 0 }")),
            "dataplane.neighbor.queue_per_address"
        );
        assert_eq!(
            key(&with("  neighbor: { retrans_ms: 5 }")),
            "dataplane.neighbor.retrans_ms"
        );
        assert_eq!(
            key(&with("  reassembly: { timeout_ms: 70000 }")),
            "dataplane.reassembly.timeout_ms"
        );
        assert_eq!(
            key(&with("  reassembly: { max_bytes: 1000 }")),
            "dataplane.reassembly.max_bytes"
        );
        let f: DataplaneFile = parse(
            Path::new("x.yaml"),
            &with("  reassembly: { enabled: false }"),
        )
        .unwrap();
        assert!(f.dataplane.reassembly.to_config().unwrap().is_none());
    }
}
