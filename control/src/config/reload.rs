//! A configuration reload, sans-IO: what differs between the running configuration and the
//! file read again, as a [`ReloadPlan`] the driver applies (`ControlCore::reconfigure` for the
//! IKE side, the driver for the log level), or a refusal that names the key.
//!
//! Both sides are [`Snapshot`]s of a validated file: a file that does not parse or validate
//! never gets here (the caller refuses it whole, with the validation's error). Connections are
//! matched by name and compared by their [`fingerprint`](super::ike::Connection::fingerprint)
//! (settings, key, the bytes of certificate files): a new name is added, a missing one
//! removed (its IKE SA deleted, the peer told), a different one changed (deleted and made
//! again); an unchanged one is not touched, so its IKE SA, CHILD_SAs and traffic go on. The
//! static policy (the gateway's SPD rules), the responder's admission policy and the file's
//! log level are replaced when they differ.
//!
//! What a running gateway cannot change is refused with the key and "needs a restart": the
//! parts the caller lists as fixed (ports, devices, addresses, worker count, the HA section),
//! and the static SAs, whose outbound sequence numbers are kept across restarts only
//! (`seq_state` in the appliance): a static SA added, removed or changed needs a restart.
//!
//! Owns: the comparison. Must never: read a file or a clock, touch the running state.

use std::path::Path;

use proto::policy::Rule;
use proto::sa::SaParams;
use proto::Direction;

use super::gateway::{GatewayConfig, GatewayPlan};
use super::ike::{AdmissionPolicy, Connection};
use super::ConfigError;

/// What a reload compares of one validated file.
pub struct Snapshot<'a> {
    pub conns: &'a [Connection],
    /// The static SAs by name, each with a digest of everything it is (keys included).
    pub static_sas: Vec<(String, [u8; 32])>,
    /// The gateway's static policy, compiled.
    pub rules: &'a [Rule],
    pub admission: AdmissionPolicy,
    /// The file's `log_level` (None: not given).
    pub log_level: Option<String>,
    /// What cannot change at run time: (key, a rendering to compare).
    pub fixed: Vec<(String, String)>,
}

impl<'a> Snapshot<'a> {
    /// The parts of the control crate's sections: the gateway's static SAs and policy, its
    /// interfaces and masquerade (fixed), the connections and admission policy. The caller
    /// adds its own fixed sections and the log level.
    pub fn of(
        gw: &GatewayConfig,
        plan: &'a GatewayPlan,
        conns: &'a [Connection],
        admission: AdmissionPolicy,
    ) -> Snapshot<'a> {
        let static_sas = gw
            .sas
            .iter()
            .zip(&plan.sas)
            .map(|(c, (dir, p))| (c.name.clone(), sa_digest(*dir, p)))
            .collect();
        let fixed = vec![
            ("gateway.name".into(), gw.name.clone()),
            ("gateway.lan".into(), format!("{:?}", gw.lan)),
            ("gateway.wan".into(), format!("{:?}", gw.wan)),
            ("gateway.replay_window".into(), gw.replay_window.to_string()),
            ("gateway.masquerade".into(), format!("{:?}", gw.masquerade)),
        ];
        Snapshot {
            conns,
            static_sas,
            rules: &plan.rules,
            admission,
            log_level: None,
            fixed,
        }
    }
}

/// A digest of a static SA: its settings (keys redacted in `Debug`) and its key bytes.
fn sa_digest(dir: Direction, p: &SaParams) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    for b in [
        format!("{dir:?}|{p:?}").as_bytes(),
        p.keys.key(),
        &p.keys.salt[..],
        p.keys.integ_key(),
    ] {
        d.update(&(b.len() as u64).to_be_bytes());
        d.update(b);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// What a reload does.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadPlan {
    /// Connection names, in the new file's order (removed: the old file's).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// The new static policy, when it changed.
    pub rules: Option<Vec<Rule>>,
    /// The new admission policy, when it changed.
    pub admission: Option<AdmissionPolicy>,
    /// The new log level, when it changed (inner None: the file no longer gives one).
    pub log_level: Option<Option<String>>,
}

impl ReloadPlan {
    /// True when the file says what the gateway runs already.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.rules.is_none()
            && self.admission.is_none()
            && self.log_level.is_none()
    }

    /// One line per change, for the log and the answer to `roamgate reload`.
    pub fn summary(&self) -> Vec<String> {
        let mut v = Vec::new();
        for n in &self.added {
            v.push(format!("connection {n}: added"));
        }
        for n in &self.removed {
            v.push(format!(
                "connection {n}: removed (its IKE SA is deleted, the peer told)"
            ));
        }
        for n in &self.changed {
            v.push(format!(
                "connection {n}: changed (its IKE SA is torn down and made again)"
            ));
        }
        if let Some(r) = &self.rules {
            v.push(format!("static policy: {} rule(s) now", r.len()));
        }
        if self.admission.is_some() {
            v.push("IKE admission policy (cookies, half-open caps): replaced".into());
        }
        if let Some(l) = &self.log_level {
            v.push(format!(
                "log level: {}",
                l.as_deref().unwrap_or("back to the start-up filter")
            ));
        }
        if v.is_empty() {
            v.push("nothing changed".into());
        }
        if !self.unchanged.is_empty() {
            v.push(format!(
                "unchanged, left as they are: {}",
                self.unchanged.join(", ")
            ));
        }
        v
    }
}

/// The plan that takes a gateway running `old` to `new` (read from `file`), or the refusal
/// of a change that needs a restart (its key named).
pub fn plan(old: &Snapshot, new: &Snapshot, file: &Path) -> Result<ReloadPlan, ConfigError> {
    let mut restart: Vec<String> = Vec::new();
    for (key, now) in &new.fixed {
        let before = old.fixed.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if before != Some(now) {
            restart.push(key.clone());
        }
    }
    for (key, _) in &old.fixed {
        if !new.fixed.iter().any(|(k, _)| k == key) {
            restart.push(key.clone());
        }
    }
    if let Some(first) = restart.first() {
        return Err(ConfigError::new(
            file,
            first.clone(),
            format!(
                "changed, and {} cannot change while the gateway runs: needs a restart \
                 (the running configuration stays)",
                if restart.len() == 1 {
                    "it".to_string()
                } else {
                    format!("neither can {}", restart[1..].join(", "))
                }
            ),
        ));
    }
    if old.static_sas != new.static_sas {
        let names = |s: &Snapshot| s.static_sas.iter().map(|(n, _)| n.clone()).collect();
        let (o, n): (Vec<String>, Vec<String>) = (names(old), names(new));
        let mut what = Vec::new();
        what.extend(
            n.iter()
                .filter(|x| !o.contains(x))
                .map(|x| format!("{x} added")),
        );
        what.extend(
            o.iter()
                .filter(|x| !n.contains(x))
                .map(|x| format!("{x} removed")),
        );
        what.extend(
            new.static_sas
                .iter()
                .filter(|e| old.static_sas.iter().any(|o| o.0 == e.0 && o.1 != e.1))
                .map(|e| format!("{} changed", e.0)),
        );
        if what.is_empty() {
            what.push("reordered".into());
        }
        return Err(ConfigError::new(
            file,
            "gateway.sas",
            format!(
                "static SAs changed ({}): needs a restart (their sequence numbers are kept \
                 across restarts only; the running configuration stays)",
                what.join(", ")
            ),
        ));
    }
    let mut p = ReloadPlan::default();
    for c in new.conns {
        let name = &c.peer.name;
        match old.conns.iter().find(|o| &o.peer.name == name) {
            None => p.added.push(name.clone()),
            Some(o) if o.fingerprint != c.fingerprint => p.changed.push(name.clone()),
            Some(_) => p.unchanged.push(name.clone()),
        }
    }
    for o in old.conns {
        if !new.conns.iter().any(|c| c.peer.name == o.peer.name) {
            p.removed.push(o.peer.name.clone());
        }
    }
    if old.rules != new.rules {
        p.rules = Some(new.rules.to_vec());
    }
    if old.admission != new.admission {
        p.admission = Some(new.admission);
    }
    if old.log_level != new.log_level {
        p.log_level = Some(new.log_level.clone());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ike::IkeYaml;
    use crate::config::parse;

    const FILE: &str = "gw.yaml";

    /// A gateway with one static SA pair and a policy, and `conns` IKE connections.
    fn gateway(extra_policy: bool) -> String {
        let extra = if extra_policy {
            "  - { src: 10.1.0.0/16, dst: 10.9.0.0/16, action: discard }\n"
        } else {
            ""
        };
        format!(
            "name: gw\n\
             lan: {{ device: lan, address: 10.1.0.1, neighbor_mac: \"02:00:00:00:00:01\" }}\n\
             wan: {{ device: wan, address: 192.0.2.1, neighbor_mac: \"02:00:00:00:00:02\" }}\n\
             sas:\n\
             \x20 - {{ name: out, direction: out, spi: 0x1001, aead: aes-gcm-128, \
             key: \"000102030405060708090a0b0c0d0e0f10111213\", local: 192.0.2.1, \
             remote: 198.51.100.1, local_ts: 10.1.0.0/16, remote_ts: 10.2.0.0/16 }}\n\
             policies:\n{extra}\
             \x20 - {{ src: 10.1.0.0/16, dst: 10.2.0.0/16, action: protect, sa: out }}\n"
        )
    }

    fn conn(name: &str, psk: &str, remote_ts: &str) -> String {
        format!(
            "  - {{ name: {name}, local_id: gw.example, remote_id: {name}.example, \
             psk: \"{psk}\", ike_proposals: [aes128gcm16-prfsha256-x25519], \
             esp_proposals: [aes128gcm16], local_ts: [10.1.0.0/16], remote_ts: [{remote_ts}] }}\n"
        )
    }

    struct Loaded {
        gw: GatewayConfig,
        plan: GatewayPlan,
        conns: Vec<Connection>,
        admission: AdmissionPolicy,
    }

    fn load(gw: &str, conns: &[String], cookie_threshold: Option<u32>) -> Loaded {
        let path = Path::new(FILE);
        let gw: GatewayConfig = parse(path, gw).unwrap();
        let plan = gw.validate(path, "gateway").unwrap();
        let mut ike = format!("connections:\n{}", conns.concat());
        if conns.is_empty() {
            ike = "connections: []\n".into();
        }
        if let Some(t) = cookie_threshold {
            ike.push_str(&format!("cookie_threshold: {t}\n"));
        }
        let ike: IkeYaml = parse(path, &ike).unwrap();
        let conns = ike.validate(path, "ike").unwrap();
        let admission = ike.admission(path, "ike").unwrap();
        Loaded {
            gw,
            plan,
            conns,
            admission,
        }
    }

    fn snap(l: &Loaded) -> Snapshot<'_> {
        Snapshot::of(&l.gw, &l.plan, &l.conns, l.admission)
    }

    fn diff(a: &Loaded, b: &Loaded) -> Result<ReloadPlan, ConfigError> {
        plan(&snap(a), &snap(b), Path::new(FILE))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let a = load(
            &gateway(false),
            &[conn("a", "secret-aaaa", "10.2.0.0/16")],
            None,
        );
        let b = load(
            &gateway(false),
            &[conn("a", "secret-aaaa", "10.2.0.0/16")],
            None,
        );
        let p = diff(&a, &b).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.unchanged, ["a"]);
        assert_eq!(p.summary()[0], "nothing changed");
    }

    #[test]
    fn connections_are_added_removed_and_changed_by_name() {
        let a = load(
            &gateway(false),
            &[
                conn("keep", "secret-kkkk", "10.2.0.0/16"),
                conn("gone", "secret-gggg", "10.3.0.0/16"),
                conn("psk", "secret-pppp", "10.4.0.0/16"),
                conn("ts", "secret-tttt", "10.5.0.0/16"),
            ],
            None,
        );
        let b = load(
            &gateway(false),
            &[
                conn("new", "secret-nnnn", "10.6.0.0/16"),
                conn("ts", "secret-tttt", "10.5.0.0/24"),
                conn("keep", "secret-kkkk", "10.2.0.0/16"),
                conn("psk", "secret-PPPP", "10.4.0.0/16"),
            ],
            None,
        );
        let p = diff(&a, &b).unwrap();
        assert_eq!(p.added, ["new"]);
        assert_eq!(p.removed, ["gone"]);
        // A new key and new traffic selectors are both changes; order of the file is not.
        assert_eq!(p.changed, ["ts", "psk"]);
        assert_eq!(p.unchanged, ["keep"]);
        assert!(p.rules.is_none() && p.admission.is_none());
        let s = p.summary().join("\n");
        assert!(s.contains("connection gone: removed"), "{s}");
        // The summary names connections, never their keys.
        assert!(!s.contains("secret"), "{s}");
    }

    #[test]
    fn a_new_proposal_is_a_change() {
        let a = load(
            &gateway(false),
            &[conn("a", "secret-aaaa", "10.2.0.0/16")],
            None,
        );
        let text = conn("a", "secret-aaaa", "10.2.0.0/16").replace(
            "esp_proposals: [aes128gcm16]",
            "esp_proposals: [aes256gcm16]",
        );
        let b = load(&gateway(false), &[text], None);
        assert_eq!(diff(&a, &b).unwrap().changed, ["a"]);
    }

    #[test]
    fn policy_and_admission_are_replaced_when_they_differ() {
        let a = load(&gateway(false), &[], None);
        let b = load(&gateway(true), &[], Some(5));
        let p = diff(&a, &b).unwrap();
        assert_eq!(p.rules.as_ref().map(Vec::len), Some(2));
        assert_eq!(p.admission, Some(b.admission));
        assert!(p.added.is_empty() && p.removed.is_empty());
    }

    #[test]
    fn fixed_parts_and_static_sas_are_refused_with_their_key() {
        let a = load(&gateway(false), &[], None);
        let b = load(
            &gateway(false).replace("device: wan", "device: wan2"),
            &[],
            None,
        );
        let e = diff(&a, &b).unwrap_err();
        assert_eq!(e.key, "gateway.wan");
        assert!(e.to_string().contains("needs a restart"), "{e}");
        assert!(e.to_string().contains(FILE), "{e}");
        let b = load(
            &gateway(false).replace(
                "000102030405060708090a0b0c0d0e0f10111213",
                "0f0102030405060708090a0b0c0d0e0f10111213",
            ),
            &[],
            None,
        );
        let e = diff(&a, &b).unwrap_err();
        assert_eq!(e.key, "gateway.sas");
        assert!(e.what.contains("out changed"), "{e}");
        // A fixed section the caller adds (the data plane's, the HA one).
        let (sa, mut sb) = (snap(&a), snap(&a));
        sb.fixed.push(("ha".into(), "Some(..)".into()));
        let e = plan(&sa, &sb, Path::new(FILE)).unwrap_err();
        assert_eq!(e.key, "ha");
    }

    #[test]
    fn the_log_level_follows_the_file() {
        let a = load(&gateway(false), &[], None);
        let (sa, mut sb) = (snap(&a), snap(&a));
        sb.log_level = Some("debug".into());
        let p = plan(&sa, &sb, Path::new(FILE)).unwrap();
        assert_eq!(p.log_level, Some(Some("debug".into())));
        let p = plan(&sb, &sa, Path::new(FILE)).unwrap();
        assert_eq!(p.log_level, Some(None));
    }
}
