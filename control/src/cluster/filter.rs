//! Edge filters and encryption nodes (issue 18 item 7, M9), sans-IO.
//!
//! The crypto node's `cluster.filters` say, per user (the EAP identity, else the IKE identity
//! the peer authenticated) or class (the virtual IP pool its address came from), which of a
//! client's traffic goes through an encryption node, which goes directly to permitted hosts
//! (clear, no ESP), and which is dropped:
//!
//! ```yaml
//! cluster:
//!   encryption_nodes: [9]              # ids (in the edges' id space) of encryption nodes
//!   filters:
//!     - name: staff-esp                # rules apply in order; a client gets every rule it matches
//!       users: ["*.staff.example"]     # exact identity, or "*" + suffix; and/or
//!       pools: [10.99.0.0/24]          # the client's virtual IP in one of these
//!       action: encrypt                # its CHILD_SAs live on encryption node `via`
//!       via: 9
//!     - { name: staff-web, users: ["*.staff.example"], action: direct, hosts: [10.9.0.20/32] }
//!     - { name: staff-rest, users: ["*.staff.example"], action: drop }
//! ```
//!
//! What they become ([`Filters::spd_rules`]): for every connected client a rule matches, SPD
//! rules in front of the policy every edge holds, with ids that carry the filter rule's index
//! (`proto::policy::filter_rule_id`), so each edge's data plane counts what each filter rule
//! matched (`roamgate stats`: `filter_hits`):
//! - `encrypt`: the client's SAs are placed on the encryption node instead of the edge that
//!   forwarded IKE_AUTH ([`Filters::encryption_node`]); the edges pass its ESP (bare, or in UDP
//!   from port 4500) between the public address and the client's outer address in both
//!   directions: ESP for an SPI an edge does not hold goes on to its LAN side unchanged (the
//!   LAN routes it to the encryption node), the encryption node's ESP to the client goes out.
//! - `direct`: clear traffic between the client's outer address and the hosts passes.
//! - `drop`: every other clear packet to or from the client's outer address is discarded.
//!
//! The client is recognised by its outer address for clear traffic (the only thing a clear
//! packet says): two users behind one NAT address share the first matching user's rules.
//! IKE (UDP 500, 4500 with the non-ESP marker) is sorted out before the SPD: never filtered.
//!
//! Owns: the `filters` schema and its validation (errors name the file, the key path and
//! the problem), matching, the compiled SPD rules. Must never: place an SA on a node that is
//! not a configured encryption node.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use proto::policy::{filter_rule_id, Action, PortRange, Prefix, Rule, Selector, MAX_FILTER_RULES};
use serde::Deserialize;

use super::msg::EdgeId;
use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FilterActionYaml {
    Encrypt,
    Direct,
    Drop,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterYaml {
    pub name: String,
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub pools: Vec<Prefix>,
    pub action: FilterActionYaml,
    #[serde(default)]
    pub via: Option<EdgeId>,
    #[serde(default)]
    pub hosts: Vec<Prefix>,
}

/// What a filter rule does with a client it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterAction {
    /// The client's SAs on encryption node `via`; its ESP passes the edges.
    Encrypt { via: EdgeId },
    /// Clear traffic to and from these hosts passes.
    Direct { hosts: Vec<Prefix> },
    /// Clear traffic to and from the client is dropped.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterRule {
    pub name: String,
    pub users: Vec<String>,
    pub pools: Vec<Prefix>,
    pub action: FilterAction,
}

/// A connected client as the filters see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The EAP identity, else the authenticated IKE identity.
    pub identity: Option<String>,
    pub vip: Option<IpAddr>,
    /// Its outer (public) address.
    pub outer: IpAddr,
    /// ESP in UDP (RFC 3948).
    pub encap: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    pub rules: Vec<FilterRule>,
    pub encryption_nodes: BTreeSet<EdgeId>,
}

fn user_matches(pattern: &str, identity: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => identity.ends_with(suffix),
        None => pattern == identity,
    }
}

impl FilterRule {
    pub fn matches(&self, c: &Client) -> bool {
        let by_user = c
            .identity
            .as_deref()
            .is_some_and(|id| self.users.iter().any(|p| user_matches(p, id)));
        let by_pool = c
            .vip
            .is_some_and(|v| self.pools.iter().any(|p| p.contains(v)));
        by_user || by_pool
    }
}

fn any_ports() -> PortRange {
    PortRange { lo: 0, hi: 65535 }
}

fn host(a: IpAddr) -> Prefix {
    Prefix::masked(a, if a.is_ipv4() { 32 } else { 128 })
}

impl Filters {
    /// Validates the `encryption_nodes` and `filters` keys of the `cluster` section at `at`.
    pub fn validate(
        file: &Path,
        at: &str,
        nodes: &[EdgeId],
        yaml: &[FilterYaml],
    ) -> Result<Filters, ConfigError> {
        let encryption_nodes: BTreeSet<EdgeId> = nodes.iter().copied().collect();
        if encryption_nodes.len() != nodes.len() {
            return Err(ConfigError::new(
                file,
                format!("{at}.encryption_nodes"),
                "an id is listed twice".to_string(),
            ));
        }
        if yaml.len() > MAX_FILTER_RULES {
            return Err(ConfigError::new(
                file,
                format!("{at}.filters"),
                format!("{} rules (at most {MAX_FILTER_RULES})", yaml.len()),
            ));
        }
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(yaml.len());
        for (i, f) in yaml.iter().enumerate() {
            let err = |k: &str, what: String| {
                ConfigError::new(file, format!("{at}.filters[{i}].{k}"), what)
            };
            if f.name.is_empty() || !names.insert(f.name.clone()) {
                return Err(err("name", format!("{:?} is empty or used twice", f.name)));
            }
            if f.users.is_empty() && f.pools.is_empty() {
                return Err(err(
                    "users",
                    "names no user and no pool (`users` or `pools`): the rule matches no one"
                        .into(),
                ));
            }
            if let Some(u) = f.users.iter().find(|u| u.is_empty() || u.as_str() == "*") {
                return Err(err(
                    "users",
                    format!("{u:?}: an identity, or \"*\" and a suffix"),
                ));
            }
            let action = match f.action {
                FilterActionYaml::Encrypt => {
                    if !f.hosts.is_empty() {
                        return Err(err("hosts", "is for action direct".into()));
                    }
                    let via = f.via.ok_or_else(|| {
                        err(
                            "via",
                            "action encrypt needs the encryption node's id".into(),
                        )
                    })?;
                    if !encryption_nodes.contains(&via) {
                        return Err(err(
                            "via",
                            format!("{via} is not in {at}.encryption_nodes {nodes:?}"),
                        ));
                    }
                    FilterAction::Encrypt { via }
                }
                FilterActionYaml::Direct => {
                    if f.via.is_some() {
                        return Err(err("via", "is for action encrypt".into()));
                    }
                    if f.hosts.is_empty() {
                        return Err(err(
                            "hosts",
                            "action direct needs the permitted hosts".into(),
                        ));
                    }
                    FilterAction::Direct {
                        hosts: f.hosts.clone(),
                    }
                }
                FilterActionYaml::Drop => {
                    if f.via.is_some() || !f.hosts.is_empty() {
                        return Err(err("action", "drop takes neither via nor hosts".into()));
                    }
                    FilterAction::Drop
                }
            };
            rules.push(FilterRule {
                name: f.name.clone(),
                users: f.users.clone(),
                pools: f.pools.clone(),
                action,
            });
        }
        Ok(Filters {
            rules,
            encryption_nodes,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Where the client's SAs go: the encryption node of the first `encrypt` rule it matches
    /// (with that rule's index), None: the forwarding edge as without filters.
    pub fn encryption_node(&self, c: &Client) -> Option<(usize, EdgeId)> {
        self.rules
            .iter()
            .enumerate()
            .find_map(|(i, r)| match r.action {
                FilterAction::Encrypt { via } if r.matches(c) => Some((i, via)),
                _ => None,
            })
    }

    /// The SPD rules the clients' filters compile to (in front of the policy), rule by rule
    /// in the file's order, client by client. `public`: the edges' shared address(es).
    pub fn spd_rules<'a>(
        &self,
        clients: impl Iterator<Item = &'a Client> + Clone,
        public: &[IpAddr],
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let mut n = 0u32;
            let mut push = |selector: Selector, action: Action, out: &mut Vec<Rule>| {
                if let Some(id) = filter_rule_id(i, n) {
                    out.push(Rule {
                        id,
                        selector,
                        action,
                    });
                    n += 1;
                }
            };
            for c in clients.clone().filter(|c| r.matches(c)) {
                let client = host(c.outer);
                match &r.action {
                    FilterAction::Encrypt { .. } => {
                        for p in public.iter().filter(|p| p.is_ipv4() == c.outer.is_ipv4()) {
                            let (proto, src_ports) = if c.encap {
                                (17, PortRange { lo: 4500, hi: 4500 })
                            } else {
                                (50, any_ports())
                            };
                            let sel = Selector {
                                src: host(*p),
                                dst: client,
                                proto: Some(proto),
                                src_ports,
                                dst_ports: any_ports(),
                            };
                            push(sel, Action::Bypass, &mut out);
                        }
                    }
                    FilterAction::Direct { hosts } => {
                        for h in hosts
                            .iter()
                            .filter(|h| h.addr().is_ipv4() == c.outer.is_ipv4())
                        {
                            let sel = Selector {
                                src: *h,
                                dst: client,
                                proto: None,
                                src_ports: any_ports(),
                                dst_ports: any_ports(),
                            };
                            push(sel, Action::Bypass, &mut out);
                        }
                    }
                    FilterAction::Drop => {
                        let any = Prefix::masked(c.outer, 0);
                        let sel = Selector {
                            src: any,
                            dst: client,
                            proto: None,
                            src_ports: any_ports(),
                            dst_ports: any_ports(),
                        };
                        push(sel, Action::Discard, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The rules for a view: index, name, action.
    pub fn view(&self) -> serde_json::Value {
        let rules: Vec<serde_json::Value> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (action, via, hosts) = match &r.action {
                    FilterAction::Encrypt { via } => ("encrypt", Some(*via), vec![]),
                    FilterAction::Direct { hosts } => {
                        ("direct", None, hosts.iter().map(|h| h.to_string()).collect())
                    }
                    FilterAction::Drop => ("drop", None, vec![]),
                };
                serde_json::json!({ "rule": i, "name": r.name, "action": action, "via": via, "hosts": hosts })
            })
            .collect();
        serde_json::json!({ "encryption_nodes": self.encryption_nodes, "rules": rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::policy::{filter_index, FlowKey};

    #[derive(Deserialize)]
    struct Section {
        #[serde(default)]
        encryption_nodes: Vec<EdgeId>,
        filters: Vec<FilterYaml>,
    }

    fn check(text: &str) -> Result<Filters, ConfigError> {
        let p = Path::new("cn.yaml");
        let s: Section = crate::config::parse(p, text)?;
        Filters::validate(p, "cluster", &s.encryption_nodes, &s.filters)
    }

    const GOOD: &str = "encryption_nodes: [9]
filters:
  - { name: esp, users: [\"*.staff.test\"], action: encrypt, via: 9 }
  - { name: web, users: [\"*.staff.test\"], pools: [10.99.1.0/24], action: direct, hosts: [10.9.0.20/32] }
  - { name: rest, users: [\"*.staff.test\"], action: drop }
";

    fn client(id: &str, outer: &str, vip: &str) -> Client {
        Client {
            identity: Some(id.into()),
            vip: Some(vip.parse().unwrap()),
            outer: outer.parse().unwrap(),
            encap: false,
        }
    }

    fn flow(src: &str, dst: &str, proto: u8, sp: u16, dp: u16) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto,
            src_port: sp,
            dst_port: dp,
        }
    }

    #[test]
    fn users_and_pools_pick_the_encryption_node_and_the_rules_compile_per_client() {
        let f = check(GOOD).unwrap();
        let staff = client("alice.staff.test", "192.0.2.10", "10.99.0.1");
        let other = client("bob.guest.test", "192.0.2.11", "10.99.0.2");
        let pooled = client("carol.guest.test", "192.0.2.12", "10.99.1.7");
        assert_eq!(f.encryption_node(&staff), Some((0, 9)));
        assert_eq!(f.encryption_node(&other), None);
        assert_eq!(f.encryption_node(&pooled), None);
        let all = [staff.clone(), other.clone(), pooled.clone()];
        let public: IpAddr = "203.0.113.1".parse().unwrap();
        let rules = f.spd_rules(all.iter(), &[public]);
        // staff: ESP, web, drop; pooled: web only; other: nothing.
        assert_eq!(rules.len(), 4, "{rules:?}");
        let spd = |k: &FlowKey| rules.iter().find(|r| r.selector.matches(k)).copied();
        // The client's ESP to the public address (inbound mirror) and the node's ESP out.
        let esp = spd(&flow("203.0.113.1", "192.0.2.10", 50, 0, 0)).unwrap();
        assert_eq!(
            (esp.action, filter_index(esp.id)),
            (Action::Bypass, Some(0))
        );
        let web = spd(&flow("10.9.0.20", "192.0.2.10", 6, 80, 40000)).unwrap();
        assert_eq!(
            (web.action, filter_index(web.id)),
            (Action::Bypass, Some(1))
        );
        let rest = spd(&flow("10.9.0.30", "192.0.2.10", 6, 80, 40000)).unwrap();
        assert_eq!(
            (rest.action, filter_index(rest.id)),
            (Action::Discard, Some(2))
        );
        let pweb = spd(&flow("10.9.0.20", "192.0.2.12", 17, 53, 999)).unwrap();
        assert_eq!(filter_index(pweb.id), Some(1));
        assert!(spd(&flow("10.9.0.30", "192.0.2.12", 6, 1, 2)).is_none());
        assert!(spd(&flow("10.9.0.20", "192.0.2.11", 6, 1, 2)).is_none());
        // Ids are unique (the SPD refuses duplicates).
        let ids: BTreeSet<u32> = rules.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), rules.len());
        // ESP in UDP: the rule passes UDP from port 4500 only.
        let mut nat = staff;
        nat.encap = true;
        let rules = f.spd_rules([nat].iter(), &[public]);
        assert!(rules[0]
            .selector
            .matches(&flow("203.0.113.1", "192.0.2.10", 17, 4500, 3333)));
        assert!(!rules[0]
            .selector
            .matches(&flow("203.0.113.1", "192.0.2.10", 17, 53, 3333)));
    }

    #[test]
    fn a_bad_filter_names_the_file_the_key_and_what_is_wrong() {
        let key = |t: &str| {
            let e = check(t).unwrap_err();
            assert!(e.to_string().contains("cn.yaml"), "{e}");
            (e.key.clone(), e.to_string())
        };
        let (k, m) = key(&GOOD.replace("via: 9", "via: 7"));
        assert_eq!(k, "cluster.filters[0].via");
        assert!(m.contains("not in cluster.encryption_nodes"), "{m}");
        assert_eq!(
            key(&GOOD.replace(", via: 9", "")).0,
            "cluster.filters[0].via"
        );
        assert_eq!(
            key(&GOOD.replace(", hosts: [10.9.0.20/32]", "")).0,
            "cluster.filters[1].hosts"
        );
        assert_eq!(
            key(&GOOD.replace("name: rest", "name: web")).0,
            "cluster.filters[2].name"
        );
        assert_eq!(
            key(&GOOD.replace("users: [\"*.staff.test\"], action: drop", "action: drop")).0,
            "cluster.filters[2].users"
        );
        assert_eq!(
            key(&GOOD.replace("[\"*.staff.test\"], action: drop", "[\"*\"], action: drop")).0,
            "cluster.filters[2].users"
        );
        assert_eq!(
            key(&GOOD.replace("encryption_nodes: [9]", "encryption_nodes: [9, 9]")).0,
            "cluster.encryption_nodes"
        );
        assert!(key(&GOOD.replace("action: drop", "action: maybe"))
            .1
            .contains("maybe"));
        assert_eq!(
            key(&GOOD.replace("action: drop", "action: drop, via: 9")).0,
            "cluster.filters[2].action"
        );
    }
}
