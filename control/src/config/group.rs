//! The `group` section: group mode (G-IKEv2, RFC 9838; docs/group.md). A gateway is either the
//! group's key server (GCKS) or a member.
//!
//! ```yaml
//! group:                                 # on the key server
//!   id: branches.roamgate.test           # the group's identity (IDg)
//!   role: gcks
//!   members:                             # identities allowed to register (as IKE
//!     - gw-a.roamgate.test               #   authenticates them)
//!     - gw-b.roamgate.test
//!   traffic: 10.0.0.0/8                  # the group's traffic: source and destination range
//!   algorithm: aes256gcm16               # or aes128gcm16 (explicit-IV AEAD only)
//!   lifetime_secs: 3600                  # of each Data-Security SA
//!   rekey_lead_secs: 60                  # rekey this long before the end (>= dtd_secs)
//!   atd_secs: 5                          # members send on a new SA this long after it came
//!   dtd_secs: 30                         # and keep the old one for receiving this long
//!   sender_id_bits: 8                    # top IV bits that carry a sender's Sender-ID
//!   rekey_multicast: 239.192.0.1         # GSA_REKEY once to this multicast group (UDP 500)
//!   rekey_unicast: false                 # a copy to each member too (default: true without
//!                                        #   rekey_multicast, false with it)
//!   rekey_multicast_ttl: 8               # hops the multicast rekeys may cross (default 8)
//! ```
//!
//! ```yaml
//! group:                                 # on a member
//!   id: branches.roamgate.test
//!   role: member
//!   gcks: 192.0.2.10                     # the key server's address
//!   sender: true                         # asks for a Sender-ID (default true)
//!   connection: gcks                     # the `ike` connection to the GCKS (default: the
//!                                        #   one whose remote_addr is `gcks`)
//!   traffic: 10.0.0.0/8                  # the group's range (as the GCKS's; default any)
//!   peers:                               # the other members: LAN -> outer (WAN) address
//!     - { lan: 10.2.0.0/24, address: 192.0.2.2 }
//! ```
//!
//! Checked here with the file, key and problem named in every error; the checked GCKS policy
//! is `ike::group::gcks::GroupConfig` (its own `check` runs last). No command reads this
//! section yet (docs/group.md, "Not verified / open").

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ike::group::gcks::{GroupConfig, RekeyDelivery};
use ike::wire::{Id, TrafficSelector};
use pipeline::spd::Prefix;
use serde::Deserialize;

use super::ConfigError;

/// The section as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupYaml {
    pub id: String,
    pub role: String,
    // The key server's keys.
    #[serde(default)]
    pub members: Option<Vec<String>>,
    #[serde(default)]
    pub traffic: Option<Prefix>,
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub lifetime_secs: Option<u64>,
    #[serde(default)]
    pub rekey_lead_secs: Option<u64>,
    #[serde(default)]
    pub atd_secs: Option<u64>,
    #[serde(default)]
    pub dtd_secs: Option<u64>,
    #[serde(default)]
    pub sender_id_bits: Option<u8>,
    #[serde(default)]
    pub rekey_multicast: Option<IpAddr>,
    #[serde(default)]
    pub rekey_unicast: Option<bool>,
    #[serde(default)]
    pub rekey_multicast_ttl: Option<u8>,
    // A member's keys.
    #[serde(default)]
    pub gcks: Option<IpAddr>,
    #[serde(default)]
    pub sender: Option<bool>,
    #[serde(default)]
    pub connection: Option<String>,
    #[serde(default)]
    pub peers: Option<Vec<GroupPeerYaml>>,
}

/// One other member of the group as a tunnel endpoint (a member's `peers`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupPeerYaml {
    pub lan: Prefix,
    pub address: IpAddr,
}

/// Defaults of the key server's keys.
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;
pub const DEFAULT_REKEY_LEAD_SECS: u64 = 60;
pub const DEFAULT_ATD_SECS: u64 = 5;
pub const DEFAULT_DTD_SECS: u64 = 30;
pub const DEFAULT_SENDER_ID_BITS: u8 = 8;
/// GWP_ATD and GWP_DTD are 16-bit seconds on the wire (RFC 9838 4.4.3.1.1).
pub const MAX_DELAY_SECS: u64 = 65_535;
/// GSA_KEY_LIFETIME is 32-bit seconds on the wire; a day is plenty for a group key.
pub const MAX_LIFETIME_SECS: u64 = 86_400;

/// The key server's checked policy, short of the random seed its driver supplies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcksPlan {
    pub group: Id,
    pub members: Vec<Id>,
    pub traffic: Prefix,
    pub key_bits: u16,
    pub lifetime: Duration,
    pub rekey_lead: Duration,
    pub atd: Duration,
    pub dtd: Duration,
    pub sender_id_bits: u8,
    pub delivery: RekeyDelivery,
    /// The IP TTL (hop limit) of multicast rekeys (the key server's socket).
    pub multicast_ttl: u8,
}

/// Default hops of a multicast rekey.
pub const DEFAULT_MULTICAST_TTL: u8 = 8;

impl GcksPlan {
    /// The state machine's configuration with `seed` for its keys and SPIs.
    pub fn config(&self, seed: [u8; 32]) -> GroupConfig {
        let (start, end) = self.traffic.range();
        let ts = TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start,
            end,
        };
        GroupConfig {
            group: self.group.clone(),
            members: self.members.clone(),
            src: ts,
            dst: ts,
            key_bits: self.key_bits,
            lifetime: self.lifetime,
            rekey_lead: self.rekey_lead,
            atd: self.atd,
            dtd: self.dtd,
            sender_id_bits: self.sender_id_bits,
            seed,
            delivery: self.delivery,
        }
    }
}

/// A member's checked section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPlan {
    pub group: Id,
    pub gcks: IpAddr,
    pub sender: bool,
    /// The `ike` connection to the GCKS, if named.
    pub connection: Option<String>,
    /// The group's range (both selectors of its SAs); None: any.
    pub traffic: Option<Prefix>,
    /// The other members: (LAN, outer address).
    pub peers: Vec<GroupPeerYaml>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupPlan {
    Gcks(GcksPlan),
    Member(MemberPlan),
}

impl GroupYaml {
    /// Checks the section of `file` (its keys named `group.*` in errors).
    pub fn validate(&self, file: &Path) -> Result<GroupPlan, ConfigError> {
        let err = |k: &str, what: String| ConfigError::new(file, format!("group.{k}"), what);
        let id = self.id.trim();
        if id.is_empty() {
            return Err(err("id", "must name the group".into()));
        }
        let group = Id::from_text(id);
        match self.role.as_str() {
            "gcks" => {
                for (k, set) in [
                    ("gcks", self.gcks.is_some()),
                    ("sender", self.sender.is_some()),
                    ("connection", self.connection.is_some()),
                    ("peers", self.peers.is_some()),
                ] {
                    if set {
                        return Err(err(k, "is a member's key; this is role gcks".into()));
                    }
                }
                self.gcks_plan(file, group).map(GroupPlan::Gcks)
            }
            "member" => {
                for (k, set) in [
                    ("members", self.members.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                    ("lifetime_secs", self.lifetime_secs.is_some()),
                    ("rekey_lead_secs", self.rekey_lead_secs.is_some()),
                    ("atd_secs", self.atd_secs.is_some()),
                    ("dtd_secs", self.dtd_secs.is_some()),
                    ("sender_id_bits", self.sender_id_bits.is_some()),
                    ("rekey_multicast", self.rekey_multicast.is_some()),
                    ("rekey_unicast", self.rekey_unicast.is_some()),
                    ("rekey_multicast_ttl", self.rekey_multicast_ttl.is_some()),
                ] {
                    if set {
                        return Err(err(
                            k,
                            "is the key server's policy; a member gets it from the GCKS".into(),
                        ));
                    }
                }
                let gcks = self.gcks.ok_or_else(|| {
                    err("gcks", "missing: a member needs the GCKS's address".into())
                })?;
                if gcks.is_unspecified() || gcks.is_multicast() {
                    return Err(err("gcks", format!("{gcks} is not a unicast address")));
                }
                let peers = self.peers.clone().unwrap_or_default();
                for (i, p) in peers.iter().enumerate() {
                    if p.address.is_unspecified() {
                        return Err(err(
                            &format!("peers[{i}].address"),
                            format!("{} is not an address", p.address),
                        ));
                    }
                    if let Some(t) = self.traffic {
                        if !t.contains(p.lan.addr()) {
                            return Err(err(
                                &format!("peers[{i}].lan"),
                                format!("{} is outside the group's traffic {t}", p.lan.addr()),
                            ));
                        }
                    }
                }
                Ok(GroupPlan::Member(MemberPlan {
                    group,
                    gcks,
                    sender: self.sender.unwrap_or(true),
                    connection: self.connection.clone(),
                    traffic: self.traffic,
                    peers,
                }))
            }
            other => Err(err(
                "role",
                format!("is {other:?}: it is \"gcks\" or \"member\""),
            )),
        }
    }

    fn gcks_plan(&self, file: &Path, group: Id) -> Result<GcksPlan, ConfigError> {
        let err = |k: &str, what: String| ConfigError::new(file, format!("group.{k}"), what);
        let names = self
            .members
            .as_ref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| {
                err(
                    "members",
                    "missing: name at least one member identity".into(),
                )
            })?;
        let mut members: Vec<Id> = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let n = n.trim();
            if n.is_empty() {
                return Err(err(&format!("members[{i}]"), "is empty".into()));
            }
            let m = Id::from_text(n);
            if members.contains(&m) {
                return Err(err(
                    &format!("members[{i}]"),
                    format!("{n} is listed twice"),
                ));
            }
            members.push(m);
        }
        let traffic = self
            .traffic
            .ok_or_else(|| err("traffic", "missing: the group's address range".into()))?;
        let key_bits = match self.algorithm.as_deref().unwrap_or("aes256gcm16") {
            "aes128gcm16" => 128,
            "aes256gcm16" => 256,
            other => {
                return Err(err(
                    "algorithm",
                    format!(
                        "is {other:?}: group SAs take aes128gcm16 or aes256gcm16 (an explicit-IV \
                         AEAD: RFC 9838 2.7 forbids implicit-IV transforms)"
                    ),
                ))
            }
        };
        let lifetime = self.lifetime_secs.unwrap_or(DEFAULT_LIFETIME_SECS);
        if lifetime == 0 || lifetime > MAX_LIFETIME_SECS {
            return Err(err(
                "lifetime_secs",
                format!("is {lifetime}: between 1 and {MAX_LIFETIME_SECS}"),
            ));
        }
        let atd = self.atd_secs.unwrap_or(DEFAULT_ATD_SECS);
        if atd > MAX_DELAY_SECS {
            return Err(err(
                "atd_secs",
                format!("is {atd}: at most {MAX_DELAY_SECS}"),
            ));
        }
        let dtd = self.dtd_secs.unwrap_or(DEFAULT_DTD_SECS);
        if dtd > MAX_DELAY_SECS {
            return Err(err(
                "dtd_secs",
                format!("is {dtd}: at most {MAX_DELAY_SECS}"),
            ));
        }
        if dtd < atd {
            return Err(err(
                "dtd_secs",
                format!("is {dtd}: at least atd_secs ({atd}), or a sender still uses an SA a receiver dropped"),
            ));
        }
        let lead = self.rekey_lead_secs.unwrap_or(DEFAULT_REKEY_LEAD_SECS);
        if lead < dtd || lead >= lifetime {
            return Err(err(
                "rekey_lead_secs",
                format!(
                    "is {lead}: at least dtd_secs ({dtd}) and below lifetime_secs ({lifetime})"
                ),
            ));
        }
        let bits = self.sender_id_bits.unwrap_or(DEFAULT_SENDER_ID_BITS);
        if !(1..=16).contains(&bits) {
            return Err(err(
                "sender_id_bits",
                format!("is {bits}: between 1 and 16 (the rest of the 64-bit IV is the counter)"),
            ));
        }
        if u64::try_from(members.len()).unwrap_or(u64::MAX) > 1u64 << bits {
            return Err(err(
                "sender_id_bits",
                format!(
                    "is {bits}: {} Sender-IDs, fewer than the {} members",
                    1u64 << bits,
                    members.len()
                ),
            ));
        }
        let delivery = match (self.rekey_multicast, self.rekey_unicast) {
            (Some(a), _) if !a.is_multicast() => {
                return Err(err(
                    "rekey_multicast",
                    format!("{a} is not a multicast address (224.0.0.0/4 or ff00::/8)"),
                ))
            }
            (Some(a), Some(true)) => RekeyDelivery::Both(a),
            (Some(a), _) => RekeyDelivery::Multicast(a),
            (None, Some(false)) => {
                return Err(err(
                    "rekey_unicast",
                    "is false without rekey_multicast: rekeys would reach no member".into(),
                ))
            }
            (None, _) => RekeyDelivery::Unicast,
        };
        let multicast_ttl = self.rekey_multicast_ttl.unwrap_or(DEFAULT_MULTICAST_TTL);
        if multicast_ttl == 0 {
            return Err(err(
                "rekey_multicast_ttl",
                "is 0: a multicast rekey would not leave this host".into(),
            ));
        }
        if self.rekey_multicast_ttl.is_some() && self.rekey_multicast.is_none() {
            return Err(err(
                "rekey_multicast_ttl",
                "is set without rekey_multicast".into(),
            ));
        }
        let plan = GcksPlan {
            group,
            members,
            traffic,
            key_bits,
            lifetime: Duration::from_secs(lifetime),
            rekey_lead: Duration::from_secs(lead),
            atd: Duration::from_secs(atd),
            dtd: Duration::from_secs(dtd),
            sender_id_bits: bits,
            delivery,
            multicast_ttl,
        };
        // The state machine's own check, last (everything it refuses is refused above).
        plan.config([0; 32])
            .check()
            .map_err(|e| ConfigError::new(file, "group", e))?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        group: GroupYaml,
    }

    fn check(text: &str) -> Result<GroupPlan, ConfigError> {
        let f = Path::new("gcks.yaml");
        let y: File = crate::config::parse(f, text)?;
        y.group.validate(f)
    }

    const GCKS: &str = "group:\n  id: branches.test\n  role: gcks\n  members: [a.test, b.test, c.test]\n  traffic: 10.0.0.0/8\n";

    #[test]
    fn a_gcks_and_a_member() {
        let GroupPlan::Gcks(p) = check(GCKS).unwrap() else {
            panic!("not a gcks plan")
        };
        assert_eq!(p.group, Id::from_text("branches.test"));
        assert_eq!(p.members.len(), 3);
        assert_eq!(p.key_bits, 256);
        assert_eq!(p.atd, Duration::from_secs(DEFAULT_ATD_SECS));
        let c = p.config([1; 32]);
        assert_eq!(c.src.start, "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.src.end, "10.255.255.255".parse::<IpAddr>().unwrap());
        assert!(c.check().is_ok());
        assert!(ike::group::gcks::Gcks::new(c, ike::time::Instant::from_nanos(0)).is_ok());
        assert_eq!(p.delivery, RekeyDelivery::Unicast);
        let a: IpAddr = "239.192.0.1".parse().unwrap();
        for (extra, d) in [
            (
                "  rekey_multicast: 239.192.0.1\n",
                RekeyDelivery::Multicast(a),
            ),
            (
                "  rekey_multicast: 239.192.0.1\n  rekey_unicast: true\n",
                RekeyDelivery::Both(a),
            ),
        ] {
            let GroupPlan::Gcks(p) = check(&format!("{GCKS}{extra}")).unwrap() else {
                panic!("not a gcks plan")
            };
            assert_eq!(p.delivery, d);
        }
        let m = check("group:\n  id: branches.test\n  role: member\n  gcks: 192.0.2.10\n").unwrap();
        assert_eq!(
            m,
            GroupPlan::Member(MemberPlan {
                group: Id::from_text("branches.test"),
                gcks: "192.0.2.10".parse().unwrap(),
                sender: true,
                connection: None,
                traffic: None,
                peers: Vec::new(),
            })
        );
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        let g = |extra: &str| format!("{GCKS}{extra}");
        for (text, key) in [
            (g("  algorithm: aes128cbc\n"), "group.algorithm"),
            (g("  lifetime_secs: 0\n"), "group.lifetime_secs"),
            (g("  atd_secs: 40\n  dtd_secs: 30\n"), "group.dtd_secs"),
            (g("  rekey_lead_secs: 10\n"), "group.rekey_lead_secs"),
            (g("  sender_id_bits: 0\n"), "group.sender_id_bits"),
            (g("  sender_id_bits: 1\n"), "group.sender_id_bits"),
            (g("  sender: true\n"), "group.sender"),
            (
                "group:\n  id: g\n  role: gcks\n  members: [a, a]\n  traffic: 10.0.0.0/8\n".into(),
                "group.members[1]",
            ),
            (
                "group:\n  id: g\n  role: gcks\n  traffic: 10.0.0.0/8\n".into(),
                "group.members",
            ),
            (
                "group:\n  id: g\n  role: gcks\n  members: [a]\n".into(),
                "group.traffic",
            ),
            ("group:\n  id: g\n  role: boss\n".into(), "group.role"),
            ("group:\n  id: \" \"\n  role: member\n".into(), "group.id"),
            ("group:\n  id: g\n  role: member\n".into(), "group.gcks"),
            (
                "group:\n  id: g\n  role: member\n  gcks: 0.0.0.0\n".into(),
                "group.gcks",
            ),
            (
                "group:\n  id: g\n  role: member\n  gcks: 192.0.2.1\n  atd_secs: 1\n".into(),
                "group.atd_secs",
            ),
            (
                "group:\n  id: g\n  role: member\n  gcks: 192.0.2.1\n  traffic: 10.0.0.0/8\n  peers: [{ lan: 172.16.0.0/24, address: 192.0.2.2 }]\n".into(),
                "group.peers[0].lan",
            ),
            (g("  peers: []\n"), "group.peers"),
            (g("  rekey_multicast: 192.0.2.9\n"), "group.rekey_multicast"),
            (g("  rekey_unicast: false\n"), "group.rekey_unicast"),
            (g("  rekey_multicast_ttl: 4\n"), "group.rekey_multicast_ttl"),
            (
                g("  rekey_multicast: 239.1.1.1\n  rekey_multicast_ttl: 0\n"),
                "group.rekey_multicast_ttl",
            ),
            (
                "group:\n  id: g\n  role: member\n  gcks: 192.0.2.1\n  rekey_multicast: 239.1.1.1\n".into(),
                "group.rekey_multicast",
            ),
        ] {
            let e = check(&text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            let shown = e.to_string();
            assert!(
                shown.starts_with("gcks.yaml") && shown.contains(key),
                "{shown}"
            );
        }
        // Unknown keys and values the parser refuses name the file too.
        for text in [
            g("  atd: 5\n"),
            "group:\n  id: g\n  role: gcks\n  members: [a]\n  traffic: 10.0.0.1/8\n".into(),
        ] {
            let e = check(&text).unwrap_err();
            assert!(e.to_string().starts_with("gcks.yaml"), "{e}");
        }
    }
}
