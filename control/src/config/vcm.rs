//! The `vcm` section: when the gateway takes two road warriors talking through it (a hairpin)
//! for a pair that could be given a direct path, and who may get one.
//!
//! ```yaml
//! vcm:
//!   threshold_pps: 50               # packets per second of a pair, as a worker reports it
//!   direct_paths:                   # peer identities (EAP identity, else IKE identity) that
//!     - alice@example.com           # may get a direct path: exact, or "*.suffix", or "*";
//!     - "*.branch.example.com"      # both clients of a pair must match. Empty: nobody.
//!   direct_lifetime_secs: 3600      # lifetime of a direct SA pair: rekeyed at 75-85% of it
//!                                   # (random), returned to the gateway path at 95% if
//!                                   # the rekey did not get through; 3-86400
//!   inside: [10.9.0.0/16]           # the protected network: a client whose IKE SA moves to
//!                                   # an address in it returns its direct pairs.
//! ```
//!
//! Without the section hairpinned traffic is still forwarded (the data plane does that on its
//! own); only the decision about direct paths is off.

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;

/// The section as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcmYaml {
    #[serde(default = "default_threshold")]
    pub threshold_pps: u64,
    #[serde(default)]
    pub direct_paths: Vec<String>,
    #[serde(default = "default_direct_lifetime")]
    pub direct_lifetime_secs: u32,
    /// Prefixes of the protected network: a client whose IKE SA moves to an address inside
    /// them came back inside, and its direct pairs return to the gateway path.
    #[serde(default)]
    pub inside: Vec<String>,
}

fn default_direct_lifetime() -> u32 {
    DEFAULT_DIRECT_LIFETIME_SECS
}

/// Lifetime of a direct SA pair unless `vcm.direct_lifetime_secs` says otherwise.
pub const DEFAULT_DIRECT_LIFETIME_SECS: u32 = 3600;
/// The range of `vcm.direct_lifetime_secs`: a rekey needs a few round trips between the soft
/// lifetime and the last chance (10% of the lifetime); a day at most.
pub const DIRECT_LIFETIME_RANGE: core::ops::RangeInclusive<u32> = 3..=86_400;

fn default_threshold() -> u64 {
    50
}

/// The highest threshold taken: a data plane's worker reports at most this much in a second
/// anyway, and a larger number is a typo.
pub const MAX_THRESHOLD_PPS: u64 = 100_000_000;

/// One entry of `direct_paths`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdPattern {
    Any,
    Exact(String),
    /// `*.example.com`: the identity ends with `.example.com`.
    Suffix(String),
}

impl IdPattern {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            IdPattern::Any => true,
            IdPattern::Exact(e) => e.eq_ignore_ascii_case(id),
            IdPattern::Suffix(s) => {
                id.len() > s.len()
                    && id
                        .get(id.len() - s.len()..)
                        .is_some_and(|t| t.eq_ignore_ascii_case(s))
            }
        }
    }
}

/// The checked section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcmPolicy {
    pub threshold_pps: u64,
    pub direct_paths: Vec<IdPattern>,
    /// Lifetime of a direct SA pair (seconds).
    pub direct_lifetime_secs: u32,
    /// The protected network (`vcm.inside`).
    pub inside: Vec<proto::policy::Prefix>,
}

impl VcmPolicy {
    /// Whether the peer `id` may get a direct path.
    pub fn allows(&self, id: &str) -> bool {
        self.direct_paths.iter().any(|p| p.matches(id))
    }

    /// Whether address `a` lies inside the protected network (`vcm.inside`).
    pub fn inside(&self, a: core::net::IpAddr) -> bool {
        self.inside.iter().any(|p| p.contains(a))
    }
}

impl VcmYaml {
    /// Checks the section of `file` (its keys named `vcm.*` in errors).
    pub fn validate(&self, file: &Path) -> Result<VcmPolicy, ConfigError> {
        if self.threshold_pps == 0 || self.threshold_pps > MAX_THRESHOLD_PPS {
            return Err(ConfigError::new(
                file,
                "vcm.threshold_pps",
                format!("must be between 1 and {MAX_THRESHOLD_PPS}"),
            ));
        }
        let mut direct_paths = Vec::with_capacity(self.direct_paths.len());
        for (i, p) in self.direct_paths.iter().enumerate() {
            let key = format!("vcm.direct_paths[{i}]");
            let p = p.trim();
            let pat = if p == "*" {
                IdPattern::Any
            } else if let Some(rest) = p.strip_prefix("*.") {
                if rest.is_empty() || rest.contains('*') {
                    return Err(ConfigError::new(
                        file,
                        key,
                        "a pattern is \"*\", \"*.suffix\" or an identity",
                    ));
                }
                IdPattern::Suffix(format!(".{rest}"))
            } else if p.is_empty() || p.contains('*') {
                return Err(ConfigError::new(
                    file,
                    key,
                    "a pattern is \"*\", \"*.suffix\" or an identity",
                ));
            } else {
                IdPattern::Exact(p.to_owned())
            };
            direct_paths.push(pat);
        }
        if !DIRECT_LIFETIME_RANGE.contains(&self.direct_lifetime_secs) {
            return Err(ConfigError::new(
                file,
                "vcm.direct_lifetime_secs",
                format!(
                    "must be between {} and {} seconds",
                    DIRECT_LIFETIME_RANGE.start(),
                    DIRECT_LIFETIME_RANGE.end()
                ),
            ));
        }
        let mut inside = Vec::with_capacity(self.inside.len());
        for (i, p) in self.inside.iter().enumerate() {
            let prefix = p.trim().parse::<proto::policy::Prefix>().map_err(|e| {
                ConfigError::new(
                    file,
                    format!("vcm.inside[{i}]"),
                    format!("{p:?} is not a prefix (address/length): {}", e.0),
                )
            })?;
            inside.push(prefix);
        }
        Ok(VcmPolicy {
            threshold_pps: self.threshold_pps,
            direct_paths,
            direct_lifetime_secs: self.direct_lifetime_secs,
            inside,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        vcm: VcmYaml,
    }

    fn check(text: &str) -> Result<VcmPolicy, ConfigError> {
        let f = Path::new("gw.yaml");
        let y: File = crate::config::parse(f, text)?;
        y.vcm.validate(f)
    }

    #[test]
    fn patterns_and_defaults() {
        let p = check("vcm:\n  direct_paths: [alice@example.com, \"*.branch.test\"]\n").unwrap();
        assert_eq!(p.threshold_pps, 50);
        assert_eq!(p.direct_lifetime_secs, DEFAULT_DIRECT_LIFETIME_SECS);
        assert_eq!(
            check("vcm:\n  direct_lifetime_secs: 5\n")
                .unwrap()
                .direct_lifetime_secs,
            5
        );
        assert!(p.allows("alice@example.com"));
        assert!(p.allows("ALICE@example.com"));
        assert!(p.allows("a.branch.test"));
        assert!(!p.allows("branch.test"));
        assert!(!p.allows("bob@example.com"));
        let none = check("vcm:\n  threshold_pps: 10\n").unwrap();
        assert!(!none.allows("alice@example.com"), "empty: nobody");
        assert!(check("vcm:\n  direct_paths: [\"*\"]\n")
            .unwrap()
            .allows("x"));
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        for (text, key) in [
            ("vcm:\n  threshold_pps: 0\n", "vcm.threshold_pps"),
            (
                "vcm:\n  direct_paths: [a, \"b*c\"]\n",
                "vcm.direct_paths[1]",
            ),
            ("vcm:\n  direct_paths: [\"*.\"]\n", "vcm.direct_paths[0]"),
            ("vcm:\n  direct_paths: [\"\"]\n", "vcm.direct_paths[0]"),
            (
                "vcm:\n  direct_lifetime_secs: 2\n",
                "vcm.direct_lifetime_secs",
            ),
            (
                "vcm:\n  direct_lifetime_secs: 90000\n",
                "vcm.direct_lifetime_secs",
            ),
        ] {
            let e = check(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            let shown = e.to_string();
            assert!(
                shown.starts_with("gw.yaml") && shown.contains(key),
                "{shown}"
            );
        }
        let e = check("vcm:\n  threshold: 5\n").unwrap_err();
        assert!(e.to_string().starts_with("gw.yaml"), "{e}");
        assert!(e.to_string().contains("threshold"), "{e}");
    }
}
