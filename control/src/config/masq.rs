//! The `masq` section of a cluster edge's file: this node's part of the per-connection
//! masquerade that follows a moving client (issue 21, `docs/masq.md`).
//!
//! ```yaml
//! masq:
//!   node: edge-a                   # [a-z0-9_-]{1,63}, unique per node (the key nodes/<node>)
//!   addresses: [10.8.0.100]        # masquerading addresses this node claims port blocks on
//!   link_address: 10.8.0.2         # default: gateway.lan.address; outer address of the ESP
//!                                  # between nodes (the HAM forwarding to the FAM)
//!   clients: [10.7.0.0/24, 10.99.0.0/24]   # inner sources that are masqueraded
//!   exclude: [10.8.0.0/24]         # destinations never masqueraded
//!   first_block: 4                 # ports first_block*256 ..= last_block*256+255 (4..=255)
//!   last_block: 255
//!   udp_idle_ms: 30000             # a UDP connection ends after this long idle
//!   tcp_idle_ms: 7200000           # a TCP connection too (no FIN/RST tracking yet)
//!   reuse_delay_ms: 120000         # a released port is not handed out again before
//!   node_ttl_s: 3                  # the node's lease: a dead HAM is taken over after it
//!   liveness:                      # heartbeats between nodes (absent: only the lease)
//!     listen: 169.254.80.10:7700   #   where this node hears them (told to the others)
//!     interval_ms: 100             #   how often it sends them
//!     dead_after_ms: 300           #   a heard node silent this long: its successor
//!                                  #   revokes its lease and takes its blocks over
//!   store:                         # the coordinator's store: the schema of `store:`
//!     cluster: lab                 #   (control/src/cluster/store/config.rs); absent: an
//!     key_file: cluster.key        #   in-process memory store, for a node alone
//!     etcd: { endpoints: [http://169.254.80.1:2379] }
//!   access:                        # per-user policy (pipeline::masq::access); absent: allow
//!     default: deny
//!     groups: { staff: [ { dst: 10.9.0.0/24, proto: tcp, ports: 5201, action: allow } ] }
//!     users: { "alice@example.org": { groups: [staff] } }
//! ```
//!
//! Owns: the schema and its validation ([`MasqPlan`]); errors name the file, the key path and
//! the problem. Must never: print the cluster key (the sealer's `Debug` hides it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use pipeline::masq::access::{AccessPolicy, AccessRule, AccessTable, RuleProto, Verdict};
use proto::masq::UserRule;
use proto::policy::Prefix;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::ConfigError;
use crate::cluster::store::config::StoreYaml;
use crate::cluster::store::keys::Name;
use crate::cluster::store::Sealer;
use crate::nat_coord::MasqParams;

/// The section as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasqYaml {
    pub node: String,
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub link_address: Option<IpAddr>,
    pub clients: Vec<Prefix>,
    #[serde(default)]
    pub exclude: Vec<Prefix>,
    #[serde(default = "default_first_block")]
    pub first_block: u8,
    #[serde(default = "default_last_block")]
    pub last_block: u8,
    #[serde(default = "default_udp_idle")]
    pub udp_idle_ms: u64,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_ms: u64,
    #[serde(default = "default_reuse_delay")]
    pub reuse_delay_ms: u64,
    #[serde(default = "default_node_ttl")]
    pub node_ttl_s: i64,
    #[serde(default)]
    pub liveness: Option<LivenessYaml>,
    #[serde(default)]
    pub store: Option<StoreYaml>,
    #[serde(default)]
    pub access: Option<AccessPolicy>,
}

/// `masq.liveness`: heartbeats between nodes (`control::nat_coord::liveness`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LivenessYaml {
    pub listen: SocketAddr,
    #[serde(default = "default_heartbeat")]
    pub interval_ms: u64,
    #[serde(default = "default_dead_after")]
    pub dead_after_ms: u64,
}

fn default_heartbeat() -> u64 {
    100
}
fn default_dead_after() -> u64 {
    300
}

/// The range of `liveness.interval_ms`.
pub const HEARTBEAT_RANGE: core::ops::RangeInclusive<u64> = 10..=10_000;

fn default_first_block() -> u8 {
    4
}
fn default_last_block() -> u8 {
    255
}
fn default_udp_idle() -> u64 {
    30_000
}
fn default_tcp_idle() -> u64 {
    2 * 3600 * 1000
}
fn default_reuse_delay() -> u64 {
    120_000
}
fn default_node_ttl() -> i64 {
    3
}

/// The range of `node_ttl_s`: etcd's leases are whole seconds; a HAM that died is taken over
/// after it, so more than a minute leaves connections dead for too long.
pub const NODE_TTL_RANGE: core::ops::RangeInclusive<i64> = 1..=60;
/// The range of the idle timeouts (ms): 1 s .. 1 day.
pub const IDLE_RANGE: core::ops::RangeInclusive<u64> = 1_000..=86_400_000;

/// The policy as the worker takes it (`proto::masq::MasqUsers` without the client map): per
/// user index, the rules in the order [`AccessPolicy::compile`] gives them the same index
/// (the users in name order, then the group `default` for identities the policy does not
/// name), and the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRules {
    pub users: Vec<Vec<UserRule>>,
    pub default_allow: bool,
}

impl AccessRules {
    /// Everything allowed (no `access:`), as `AccessTable::allow_all`: one user, no rules.
    pub fn allow_all() -> AccessRules {
        AccessRules {
            users: vec![Vec::new()],
            default_allow: true,
        }
    }

    /// The worker's form of `p` (a policy that compiled: its groups exist).
    pub fn of(p: &AccessPolicy) -> AccessRules {
        let rule = |r: &AccessRule| UserRule {
            dst: r.dst,
            proto: match r.proto {
                RuleProto::Any => None,
                RuleProto::Tcp => Some(6),
                RuleProto::Udp => Some(17),
                RuleProto::Icmp => Some(1),
            },
            ports: r.ports,
            allow: r.action == Verdict::Allow,
        };
        let mut users: Vec<Vec<UserRule>> = Vec::new();
        for u in p.users.values() {
            let mut list: Vec<UserRule> = u.rules.iter().map(rule).collect();
            for g in &u.groups {
                list.extend(p.groups.get(g).into_iter().flatten().map(rule));
            }
            users.push(list);
        }
        if let Some(g) = p.groups.get("default") {
            users.push(g.iter().map(rule).collect());
        }
        AccessRules {
            users,
            default_allow: p.default == Verdict::Allow,
        }
    }
}

/// Where the coordinator keeps its records.
#[derive(Debug)]
pub enum MasqStorePlan {
    /// No `store:`: an in-process memory store (this node alone; tests).
    Memory,
    /// etcd (`store:`), opened by the driver (a build with the `etcd` feature).
    Etcd(Box<StoreYaml>),
}

/// A validated `masq` section.
#[derive(Debug)]
pub struct MasqPlan {
    /// The coordinator's settings (cluster, node, link address, addresses, timeouts).
    pub params: MasqParams,
    pub link_address: Ipv4Addr,
    pub clients: Vec<Prefix>,
    pub exclude: Vec<Prefix>,
    /// The cluster key (the store's sealing; the inter-node link SAs' keys).
    pub sealer: Arc<Sealer>,
    pub store: MasqStorePlan,
    /// The compiled per-user policy (allow-all without `access:`).
    pub access: Arc<AccessTable>,
    /// The same, as the worker takes it.
    pub rules: Arc<AccessRules>,
    /// Where the heartbeat socket listens (`liveness.listen`; `None`: no heartbeats).
    pub liveness: Option<SocketAddr>,
}

fn v4(file: &Path, key: String, a: IpAddr) -> Result<Ipv4Addr, ConfigError> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(ConfigError::new(
            file,
            key,
            format!("{a}: the masquerade between nodes is IPv4 only for now"),
        )),
    }
}

fn unknown_group(file: &Path, at: &str, e: pipeline::masq::access::UnknownGroup) -> ConfigError {
    ConfigError::new(
        file,
        format!("{at}.access.users.{:?}.groups", e.user),
        format!("no group {:?} in {at}.access.groups", e.group),
    )
}

impl MasqYaml {
    /// Validates the section found at key path `at` of `file`; `lan` is the gateway's LAN
    /// address (the default link address). Reads the cluster key when `store:` is given.
    pub fn validate(&self, file: &Path, at: &str, lan: IpAddr) -> Result<MasqPlan, ConfigError> {
        let node = Name::new(&self.node)
            .map_err(|e| ConfigError::new(file, format!("{at}.node"), e.to_string()))?;
        if self.addresses.is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{at}.addresses"),
                "at least one masquerading address is needed",
            ));
        }
        let mut addrs = Vec::new();
        for (i, a) in self.addresses.iter().enumerate() {
            let a = v4(file, format!("{at}.addresses[{i}]"), *a)?;
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.addresses[{i}]"),
                    format!("{a} cannot be a masquerading address"),
                ));
            }
            if addrs.contains(&a) {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.addresses[{i}]"),
                    format!("{a} is listed twice"),
                ));
            }
            addrs.push(a);
        }
        let link_key = if self.link_address.is_some() {
            format!("{at}.link_address")
        } else {
            "gateway.lan.address".to_string()
        };
        let link_address = v4(file, link_key, self.link_address.unwrap_or(lan))?;
        if self.clients.is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{at}.clients"),
                "at least one prefix of clients to masquerade is needed",
            ));
        }
        for (name, list) in [("clients", &self.clients), ("exclude", &self.exclude)] {
            for (i, p) in list.iter().enumerate() {
                if !p.addr().is_ipv4() {
                    return Err(ConfigError::new(
                        file,
                        format!("{at}.{name}[{i}]"),
                        "the masquerade between nodes is IPv4 only for now",
                    ));
                }
            }
        }
        for (i, a) in addrs.iter().enumerate() {
            if self.clients.iter().any(|p| p.contains(IpAddr::V4(*a))) {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.addresses[{i}]"),
                    format!("{a} is inside {at}.clients: it would be masqueraded again"),
                ));
            }
        }
        if self.first_block == 0 || self.first_block > self.last_block {
            return Err(ConfigError::new(
                file,
                format!("{at}.first_block"),
                format!(
                    "blocks {}..={}: the first must be at least 1 (port 0 is no port) and at \
                     most last_block",
                    self.first_block, self.last_block
                ),
            ));
        }
        for (k, v) in [
            ("udp_idle_ms", self.udp_idle_ms),
            ("tcp_idle_ms", self.tcp_idle_ms),
            ("reuse_delay_ms", self.reuse_delay_ms),
        ] {
            if !IDLE_RANGE.contains(&v) {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.{k}"),
                    format!(
                        "{v} is outside {}..={}",
                        IDLE_RANGE.start(),
                        IDLE_RANGE.end()
                    ),
                ));
            }
        }
        if !NODE_TTL_RANGE.contains(&self.node_ttl_s) {
            return Err(ConfigError::new(
                file,
                format!("{at}.node_ttl_s"),
                format!(
                    "{} is outside {}..={}",
                    self.node_ttl_s,
                    NODE_TTL_RANGE.start(),
                    NODE_TTL_RANGE.end()
                ),
            ));
        }
        let (cluster, sealer, store) = match &self.store {
            Some(s) => {
                let (cluster, sealer) = s.check_basic(file, &format!("{at}.store"))?;
                #[cfg(feature = "etcd")]
                s.plan(file, &format!("{at}.store"))?;
                (cluster, sealer, MasqStorePlan::Etcd(Box::new(s.clone())))
            }
            None => {
                // A memory store in this process: the key seals nothing another node reads.
                let mut key = Zeroizing::new([0u8; 32]);
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key[..])
                    .map_err(|_| {
                        ConfigError::new(file, format!("{at}.store"), "no system randomness")
                    })?;
                let cluster = Name::new("local")
                    .map_err(|e| ConfigError::new(file, format!("{at}.store"), e.to_string()))?;
                (cluster, Arc::new(Sealer::new(key)), MasqStorePlan::Memory)
            }
        };
        let access = match &self.access {
            None => AccessTable::allow_all(),
            Some(p) => p.compile().map_err(|e| unknown_group(file, at, e))?,
        };
        let mut params = MasqParams::new(cluster, node, addrs);
        params.link = link_address.to_string();
        params.first_block = self.first_block;
        params.last_block = self.last_block;
        params.udp_idle_ms = self.udp_idle_ms;
        params.tcp_idle_ms = self.tcp_idle_ms;
        params.reuse_delay_ms = self.reuse_delay_ms;
        params.node_ttl_s = self.node_ttl_s;
        if let Some(l) = &self.liveness {
            let k = |f: &str| format!("{at}.liveness.{f}");
            if l.listen.ip().is_unspecified() || l.listen.port() == 0 {
                return Err(ConfigError::new(
                    file,
                    k("listen"),
                    format!(
                        "{}: needs an address the other nodes can send to and a port (it is \
                         published to them)",
                        l.listen
                    ),
                ));
            }
            if !HEARTBEAT_RANGE.contains(&l.interval_ms) {
                return Err(ConfigError::new(
                    file,
                    k("interval_ms"),
                    format!(
                        "{} is outside {}..={}",
                        l.interval_ms,
                        HEARTBEAT_RANGE.start(),
                        HEARTBEAT_RANGE.end()
                    ),
                ));
            }
            let lease_ms = u64::try_from(self.node_ttl_s).unwrap_or(0) * 1000;
            if l.dead_after_ms < 2 * l.interval_ms || l.dead_after_ms >= lease_ms {
                return Err(ConfigError::new(
                    file,
                    k("dead_after_ms"),
                    format!(
                        "{} must be at least twice interval_ms ({}: one lost heartbeat is no \
                         death) and below the node lease ({lease_ms} ms, {at}.node_ttl_s: the \
                         lease would end first)",
                        l.dead_after_ms, l.interval_ms
                    ),
                ));
            }
            params.alive = Some(l.listen.to_string());
            params.heartbeat_ms = l.interval_ms;
            params.dead_after_ms = l.dead_after_ms;
        }
        Ok(MasqPlan {
            params,
            link_address,
            clients: self.clients.clone(),
            exclude: self.exclude.clone(),
            sealer,
            store,
            access: Arc::new(access),
            rules: Arc::new(
                self.access
                    .as_ref()
                    .map_or_else(AccessRules::allow_all, AccessRules::of),
            ),
            liveness: self.liveness.as_ref().map(|l| l.listen),
        })
    }

    /// The policy alone (a reload swaps it; the rest of the section is fixed at start).
    pub fn access_table(
        &self,
        file: &Path,
        at: &str,
    ) -> Result<(Arc<AccessTable>, Arc<AccessRules>), ConfigError> {
        match &self.access {
            None => Ok((
                Arc::new(AccessTable::allow_all()),
                Arc::new(AccessRules::allow_all()),
            )),
            Some(p) => Ok((
                Arc::new(p.compile().map_err(|e| unknown_group(file, at, e))?),
                Arc::new(AccessRules::of(p)),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        masq: MasqYaml,
    }

    const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 8, 0, 2));

    fn check(yaml: &str) -> Result<MasqPlan, ConfigError> {
        let file = Path::new("/nonexistent/edge.yaml");
        let d: Doc = crate::config::parse(file, yaml)?;
        d.masq.validate(file, "masq", LAN)
    }

    fn err(yaml: &str) -> String {
        match check(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = "masq:\n  node: edge-a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24, 10.99.0.0/24]\n  exclude: [10.8.0.0/24]\n";

    #[test]
    fn a_minimal_section_gets_the_defaults() {
        let p = check(GOOD).unwrap();
        assert_eq!(p.params.node.as_str(), "edge-a");
        assert_eq!(p.params.addrs, vec![Ipv4Addr::new(10, 8, 0, 100)]);
        assert_eq!(p.link_address, Ipv4Addr::new(10, 8, 0, 2));
        assert_eq!(p.params.link, "10.8.0.2");
        assert_eq!((p.params.first_block, p.params.last_block), (4, 255));
        assert_eq!(p.params.udp_idle_ms, 30_000);
        assert_eq!(p.params.reuse_delay_ms, 120_000);
        assert_eq!(p.params.node_ttl_s, 3);
        assert_eq!(p.clients.len(), 2);
        assert_eq!(p.exclude.len(), 1);
        assert!(matches!(p.store, MasqStorePlan::Memory));
        assert_eq!((p.liveness, p.params.alive.as_deref()), (None, None));
        // No policy: everybody may go anywhere.
        let u = p.access.user("anyone").unwrap();
        assert!(p.access.allows(u, "10.9.0.10".parse().unwrap(), 6, 80));
    }

    #[test]
    fn every_setting_is_taken() {
        let y = format!(
            "{GOOD}  link_address: 10.8.0.99\n  first_block: 16\n  last_block: 31\n  udp_idle_ms: 5000\n  tcp_idle_ms: 60000\n  reuse_delay_ms: 2000\n  node_ttl_s: 2\n  access:\n    default: deny\n    groups: {{ staff: [ {{ dst: 10.9.0.0/24, proto: tcp, ports: 5201, action: allow }} ] }}\n    users: {{ alice: {{ groups: [staff] }} }}\n"
        );
        let p = check(&y).unwrap();
        assert_eq!(p.link_address, Ipv4Addr::new(10, 8, 0, 99));
        assert_eq!((p.params.first_block, p.params.last_block), (16, 31));
        assert_eq!(
            (
                p.params.udp_idle_ms,
                p.params.tcp_idle_ms,
                p.params.reuse_delay_ms
            ),
            (5000, 60_000, 2000)
        );
        assert_eq!(p.params.node_ttl_s, 2);
        let alice = p.access.user("alice").unwrap();
        assert!(p
            .access
            .allows(alice, "10.9.0.10".parse().unwrap(), 6, 5201));
        assert!(!p.access.allows(alice, "10.9.0.10".parse().unwrap(), 6, 22));
        assert!(p.access.user("mallory").is_none());
    }

    #[test]
    fn liveness_is_taken_and_its_bad_values_named() {
        let p = check(&format!(
            "{GOOD}  liveness: {{ listen: 169.254.80.10:7700, interval_ms: 50, dead_after_ms: 200 }}\n"
        ))
        .unwrap();
        assert_eq!(p.liveness, Some("169.254.80.10:7700".parse().unwrap()));
        assert_eq!(p.params.alive.as_deref(), Some("169.254.80.10:7700"));
        assert_eq!((p.params.heartbeat_ms, p.params.dead_after_ms), (50, 200));
        let p = check(&format!(
            "{GOOD}  liveness: {{ listen: 169.254.80.10:7700 }}\n"
        ))
        .unwrap();
        assert_eq!((p.params.heartbeat_ms, p.params.dead_after_ms), (100, 300));
        for (l, want) in [
            (
                "{ listen: 0.0.0.0:7700 }",
                "masq.liveness.listen: 0.0.0.0:7700",
            ),
            ("{ listen: 169.254.80.10:0 }", "masq.liveness.listen"),
            (
                "{ listen: 169.254.80.10:7700, interval_ms: 5 }",
                "masq.liveness.interval_ms: 5 is outside",
            ),
            (
                "{ listen: 169.254.80.10:7700, dead_after_ms: 150 }",
                "masq.liveness.dead_after_ms: 150 must be at least twice",
            ),
            (
                "{ listen: 169.254.80.10:7700, dead_after_ms: 3000 }",
                "below the node lease (3000 ms",
            ),
            ("{ listen: 169.254.80.10:7700, every: 1 }", "every"),
        ] {
            let e = err(&format!("{GOOD}  liveness: {l}\n"));
            assert!(e.contains(want), "{l}: {e}");
            assert!(e.contains("/nonexistent/edge.yaml"), "{e}");
        }
    }

    #[test]
    fn the_worker_s_rules_decide_as_the_compiled_table_for_every_user() {
        let y = format!(
            "{GOOD}  access:\n    default: deny\n    groups:\n      staff: [ {{ dst: 10.9.0.0/24, proto: tcp, ports: 5201, action: allow }} ]\n      default: [ {{ dst: 10.9.0.10/32, action: allow }} ]\n    users:\n      alice: {{ groups: [staff] }}\n      bob: {{ rules: [ {{ dst: 10.9.0.0/24, proto: udp, action: deny }} ], groups: [staff, default] }}\n"
        );
        let p = check(&y).unwrap();
        let allows = |uid: u32, dst: IpAddr, proto: u8, port: u16| {
            let rules = &p.rules.users[uid as usize];
            rules
                .iter()
                .find(|r| {
                    r.proto.is_none_or(|x| x == proto)
                        && r.ports.contains(port)
                        && r.dst.contains(dst)
                })
                .map_or(p.rules.default_allow, |r| r.allow)
        };
        assert_eq!(p.rules.users.len(), 3, "alice, bob, the default group");
        for who in ["alice", "bob", "stranger"] {
            let u = p.access.user(who).unwrap();
            for dst in ["10.9.0.10", "10.9.0.20", "192.0.2.1"] {
                let dst: IpAddr = dst.parse().unwrap();
                for (proto, port) in [(6, 5201), (6, 22), (17, 53), (1, 0)] {
                    assert_eq!(
                        allows(u.0, dst, proto, port),
                        p.access.allows(u, dst, proto, port),
                        "{who} {dst} {proto}/{port}"
                    );
                }
            }
        }
        let none = check(GOOD).unwrap();
        assert_eq!(*none.rules, AccessRules::allow_all());
    }

    #[test]
    fn bad_values_name_the_key_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "masq:\n  node: Edge_A\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n",
                "masq.node",
            ),
            (
                "masq:\n  node: a\n  addresses: []\n  clients: [10.7.0.0/24]\n",
                "masq.addresses: at least one",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100, 10.8.0.100]\n  clients: [10.7.0.0/24]\n",
                "masq.addresses[1]: 10.8.0.100 is listed twice",
            ),
            (
                "masq:\n  node: a\n  addresses: [\"2001:db8::1\"]\n  clients: [10.7.0.0/24]\n",
                "masq.addresses[0]",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.7.0.5]\n  clients: [10.7.0.0/24]\n",
                "is inside masq.clients",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: []\n",
                "masq.clients: at least one",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [\"2001:db8::/64\"]\n",
                "masq.clients[0]: the masquerade between nodes is IPv4",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  first_block: 0\n",
                "masq.first_block",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  first_block: 9\n  last_block: 8\n",
                "masq.first_block",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  udp_idle_ms: 10\n",
                "masq.udp_idle_ms: 10 is outside",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  node_ttl_s: 0\n",
                "masq.node_ttl_s",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  access: { default: deny, users: { bob: { groups: [nope] } } }\n",
                "masq.access.users.\"bob\".groups",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  store: { cluster: lab, key_file: no-such.key, etcd: { endpoints: [http://127.0.0.1:2379] } }\n",
                "masq.store.key_file",
            ),
            (
                "masq:\n  node: a\n  addresses: [10.8.0.100]\n  clients: [10.7.0.0/24]\n  colour: red\n",
                "colour",
            ),
        ];
        for (y, want) in cases {
            let e = err(y);
            assert!(e.contains("/nonexistent/edge.yaml"), "{e}");
            assert!(e.contains(want), "{y}\n-> {e}\n(want {want})");
        }
    }

    #[test]
    fn a_store_section_reads_the_cluster_key() {
        let dir = std::env::temp_dir().join(format!("rg-masq-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.key"), [7u8; 32]).unwrap();
        let file = dir.join("edge.yaml");
        let y = format!("{GOOD}  store: {{ cluster: lab, key_file: k.key, etcd: {{ endpoints: [http://127.0.0.1:2379] }} }}\n");
        let d: Doc = crate::config::parse(&file, &y).unwrap();
        let p = d.masq.validate(&file, "masq", LAN).unwrap();
        assert_eq!(p.params.cluster.as_str(), "lab");
        assert!(matches!(p.store, MasqStorePlan::Etcd(_)));
        // The same key file on another node: the same sealer (a value sealed here opens there).
        let q = d.masq.validate(&file, "masq", LAN).unwrap();
        let sealed = p.sealer.seal(b"/roamgate/lab/masq/x", b"hello").unwrap();
        assert_eq!(
            &q.sealer.open(b"/roamgate/lab/masq/x", &sealed).unwrap()[..],
            b"hello"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
