//! Per-user access control (M14): rules per user and per group, compiled into a table the
//! worker checks after decryption, keyed on the identity the client authenticated with (IKE
//! identity, EAP identity or certificate subject).
//!
//! The same policy (one `access:` section, the same on every node, or pushed by the
//! coordinator) compiles to the same decisions on every node: a user who roams is checked by
//! the same rules wherever its traffic enters. A new table replaces the old one between two
//! packets, so a change applies to established flows from their next packet on.
//!
//! Order: the user's own rules, then each of its groups' rules in the order listed, then the
//! default; first match wins. An identity the policy does not name gets the rules of the
//! group `default` if there is one, else the default action.
//!
//! Owns: the compiled table and its lookup. Must never: allow what an earlier rule of the
//! user denies; panic on any identity.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use proto::masq::{MasqClient, MasqUsers, UserRule};
use proto::policy::{PortRange, Prefix};
use serde::Deserialize;

/// A user's index in an [`AccessTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub u32);

/// allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// A protocol a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProto {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl RuleProto {
    fn number(self) -> Option<u8> {
        match self {
            RuleProto::Any => None,
            RuleProto::Tcp => Some(6),
            RuleProto::Udp => Some(17),
            RuleProto::Icmp => Some(1),
        }
    }
}

/// One rule: destination prefix, protocol, destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub dst: Prefix,
    #[serde(default)]
    pub proto: RuleProto,
    #[serde(default = "any_port")]
    pub ports: PortRange,
    pub action: Verdict,
}

fn any_port() -> PortRange {
    PortRange::ANY
}

/// A user: its groups and its own rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPolicy {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

/// The `access:` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// What no rule matches.
    pub default: Verdict,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<AccessRule>>,
    /// Identity -> user.
    #[serde(default)]
    pub users: BTreeMap<String, UserPolicy>,
}

/// A group a user lists that the policy does not define.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("access.users.{user:?}.groups: no group {group:?} in access.groups")]
pub struct UnknownGroup {
    pub user: String,
    pub group: String,
}

/// A compiled rule is the record's (`proto::masq::UserRule`): what `Update::MasqUsers`
/// carries to the workers is the table itself.
type Compiled = UserRule;

/// A rule with an IPv4 destination in the form the per-packet check reads: 16 bytes, masks
/// precomputed, no enum to match (`AccessTable::allows` scans these for IPv4 packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rule4 {
    net: u32,
    mask: u32,
    lo: u16,
    hi: u16,
    proto: u8,
    any_proto: bool,
    allow: bool,
}

/// The IPv4 rules of `list`, in order (a rule for IPv6 destinations never matches an IPv4
/// packet, so leaving it out keeps the first match).
fn rules4(list: &[Compiled]) -> Box<[Rule4]> {
    list.iter()
        .filter_map(|r| match r.dst.addr() {
            IpAddr::V4(net) => {
                let mask = u32::MAX
                    .checked_shl(32u32.saturating_sub(u32::from(r.dst.prefix_len())))
                    .unwrap_or(0);
                Some(Rule4 {
                    net: u32::from(net) & mask,
                    mask,
                    lo: r.ports.lo,
                    hi: r.ports.hi,
                    proto: r.proto.unwrap_or(0),
                    any_proto: r.proto.is_none(),
                    allow: r.allow,
                })
            }
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The compiled policy: per user, its rules in order (own, then groups').
#[derive(Debug)]
pub struct AccessTable {
    ids: HashMap<String, UserId>,
    rules: Vec<Box<[Compiled]>>,
    /// `rules`' IPv4 rules per user, for the per-packet check.
    rules4: Vec<Box<[Rule4]>>,
    /// Rules of identities the policy does not name.
    fallback: Option<UserId>,
    default_allow: bool,
}

impl AccessPolicy {
    /// Compiles the policy; a user naming an undefined group is an error.
    pub fn compile(&self) -> Result<AccessTable, UnknownGroup> {
        let mut ids = HashMap::new();
        let mut rules = Vec::new();
        let compile = |r: &AccessRule| Compiled {
            dst: r.dst,
            proto: r.proto.number(),
            ports: r.ports,
            allow: r.action == Verdict::Allow,
        };
        for (name, u) in &self.users {
            let mut list: Vec<Compiled> = u.rules.iter().map(compile).collect();
            for g in &u.groups {
                let Some(gr) = self.groups.get(g) else {
                    return Err(UnknownGroup {
                        user: name.clone(),
                        group: g.clone(),
                    });
                };
                list.extend(gr.iter().map(compile));
            }
            ids.insert(name.clone(), UserId(rules.len() as u32));
            rules.push(list.into_boxed_slice());
        }
        let fallback = self.groups.get("default").map(|gr| {
            let id = UserId(rules.len() as u32);
            rules.push(
                gr.iter()
                    .map(compile)
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            );
            id
        });
        Ok(AccessTable {
            ids,
            rules4: rules.iter().map(|r| rules4(r)).collect(),
            rules,
            fallback,
            default_allow: self.default == Verdict::Allow,
        })
    }
}

impl AccessTable {
    /// A table that allows everything (no `access:` section).
    pub fn allow_all() -> AccessTable {
        AccessTable {
            ids: HashMap::new(),
            rules: vec![Box::new([])],
            rules4: vec![Box::new([])],
            fallback: Some(UserId(0)),
            default_allow: true,
        }
    }

    /// The user an identity is checked as (once per client, not per packet).
    pub fn user(&self, identity: &str) -> Option<UserId> {
        self.ids.get(identity).copied().or(self.fallback)
    }

    /// Whether `user` may send to `dst` (`proto`, destination `port`; 0 for protocols without
    /// ports). An id from another table is denied.
    #[inline]
    pub fn allows(&self, user: UserId, dst: IpAddr, proto: u8, port: u16) -> bool {
        if let IpAddr::V4(a) = dst {
            let Some(rules) = self.rules4.get(user.0 as usize) else {
                return false;
            };
            let a = u32::from(a);
            for r in rules.iter() {
                if a & r.mask == r.net
                    && (r.any_proto || r.proto == proto)
                    && r.lo <= port
                    && port <= r.hi
                {
                    return r.allow;
                }
            }
            return self.default_allow;
        }
        let Some(rules) = self.rules.get(user.0 as usize) else {
            return false;
        };
        for r in rules.iter() {
            if r.proto.is_none_or(|p| p == proto) && r.ports.contains(port) && r.dst.contains(dst) {
                return r.allow;
            }
        }
        self.default_allow
    }

    /// The record for the workers (`Update::MasqUsers`): this table's rules and which client
    /// is which user.
    pub fn to_users(&self, clients: Vec<MasqClient>) -> MasqUsers {
        MasqUsers {
            users: self.rules.iter().map(|r| r.to_vec()).collect(),
            default_allow: self.default_allow,
            clients,
        }
    }

    /// The table a worker checks, from the record (identities stay with the control plane:
    /// the worker knows users by index only).
    pub fn from_users(t: &MasqUsers) -> AccessTable {
        AccessTable {
            ids: HashMap::new(),
            rules4: t.users.iter().map(|r| rules4(r)).collect(),
            rules: t
                .users
                .iter()
                .map(|r| r.clone().into_boxed_slice())
                .collect(),
            fallback: None,
            default_allow: t.default_allow,
        }
    }

    /// Users in the table.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const YAML: &str = r#"
default: deny
groups:
  staff:
    - { dst: 192.0.2.0/24, proto: tcp, ports: 443, action: allow }
    - { dst: 198.51.100.53/32, proto: udp, ports: 53, action: allow }
  default:
    - { dst: 198.51.100.53/32, proto: udp, ports: 53, action: allow }
users:
  alice@example.org:
    groups: [staff]
  bob@example.org:
    rules:
      - { dst: 192.0.2.10/32, action: deny }
    groups: [staff]
"#;

    fn table() -> AccessTable {
        let p: AccessPolicy = serde_saphyr::from_str(YAML).unwrap();
        p.compile().unwrap()
    }

    /// The first matching rule of `rules`, as written (the generic form `allows` used to scan).
    fn first_match(rules: &[UserRule], default: bool, dst: IpAddr, proto: u8, port: u16) -> bool {
        rules
            .iter()
            .find(|r| {
                r.proto.is_none_or(|p| p == proto) && r.ports.contains(port) && r.dst.contains(dst)
            })
            .map_or(default, |r| r.allow)
    }

    #[test]
    fn the_ipv4_form_decides_as_the_rules_are_written() {
        // Random rules of both families (prefix lengths 0-32 / 0-128, any or one protocol,
        // port ranges), random packets: the precompiled IPv4 scan and the written rules agree.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let n = (next() % 12) as usize;
            let rules: Vec<UserRule> = (0..n)
                .map(|_| {
                    let v4 = next() % 4 != 0;
                    let (addr, width) = if v4 {
                        (
                            IpAddr::from((0xc000_0200u32 | (next() as u32 & 0xff)).to_be_bytes()),
                            32,
                        )
                    } else {
                        (
                            IpAddr::from([
                                0x20,
                                0x01,
                                0x0d,
                                0xb8,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                next() as u8,
                            ]),
                            128,
                        )
                    };
                    let len = [0u8, 8, 24, 28, 30, width][(next() % 6) as usize];
                    let lo = [0u16, 53, 80, 443][(next() % 4) as usize];
                    UserRule {
                        dst: Prefix::masked(addr, len),
                        proto: [None, Some(6), Some(17)][(next() % 3) as usize],
                        ports: PortRange {
                            lo,
                            hi: lo.saturating_add((next() % 400) as u16),
                        },
                        allow: next() % 2 == 0,
                    }
                })
                .collect();
            let default = next() % 2 == 0;
            let t = AccessTable::from_users(&MasqUsers {
                users: vec![rules.clone()],
                default_allow: default,
                clients: Vec::new(),
            });
            for _ in 0..50 {
                let dst = IpAddr::from((0xc000_0200u32 | (next() as u32 & 0x1ff)).to_be_bytes());
                let proto = [6u8, 17, 1][(next() % 3) as usize];
                let port = [0u16, 53, 80, 443, 600, 1000][(next() % 6) as usize];
                assert_eq!(
                    t.allows(UserId(0), dst, proto, port),
                    first_match(&rules, default, dst, proto, port),
                    "{rules:?} {dst} {proto} {port}"
                );
            }
        }
    }

    #[test]
    fn users_get_their_rules_then_their_groups_then_the_default() {
        let t = table();
        let a = t.user("alice@example.org").unwrap();
        let b = t.user("bob@example.org").unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(t.allows(a, ip("192.0.2.10"), 6, 443));
        assert!(!t.allows(a, ip("192.0.2.10"), 6, 80), "port");
        assert!(!t.allows(a, ip("192.0.2.10"), 17, 443), "protocol");
        assert!(!t.allows(a, ip("203.0.113.1"), 6, 443), "default deny");
        // bob's own deny comes before the group's allow
        assert!(!t.allows(b, ip("192.0.2.10"), 6, 443));
        assert!(t.allows(b, ip("192.0.2.11"), 6, 443));
        // an identity the policy does not name: the `default` group
        let x = t.user("mallory").unwrap();
        assert!(t.allows(x, ip("198.51.100.53"), 17, 53));
        assert!(!t.allows(x, ip("192.0.2.10"), 6, 443));
        // an id from elsewhere
        assert!(!t.allows(UserId(99), ip("198.51.100.53"), 17, 53));
    }

    #[test]
    fn a_user_naming_an_undefined_group_is_an_error_naming_both() {
        let mut p: AccessPolicy = serde_saphyr::from_str(YAML).unwrap();
        p.users
            .get_mut("alice@example.org")
            .unwrap()
            .groups
            .push("ops".into());
        let e = p.compile().unwrap_err().to_string();
        assert!(e.contains("alice@example.org") && e.contains("ops"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let bad = "default: deny\nuserz: {}\n";
        assert!(serde_saphyr::from_str::<AccessPolicy>(bad).is_err());
    }
}
