//! The `store:` section of a crypto node's or an edge's configuration: which cluster, the
//! cluster key file, and how to reach etcd (members, TLS, user).
//!
//! ```yaml
//! store:
//!   cluster: prod-1                      # [a-z0-9_-]{1,63}
//!   key_file: /etc/roamgate/cluster.key  # 32 bytes, raw or 64 hex digits; chmod 600
//!   etcd:
//!     endpoints: [https://10.0.0.11:2379, https://10.0.0.12:2379, https://10.0.0.13:2379]
//!     ca: /etc/roamgate/etcd/ca.pem
//!     cert: /etc/roamgate/etcd/client.pem
//!     key: /etc/roamgate/etcd/client-key.pem
//!     user: roamgate
//!     password_file: /etc/roamgate/etcd/password
//! ```
//!
//! Relative paths are relative to the configuration file's directory. Every error names the
//! file and the key ([`ConfigError`]); no secret is ever part of a message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
#[cfg(feature = "etcd")]
use zeroize::Zeroizing;

#[cfg(feature = "etcd")]
use super::etcd::{EtcdOptions, EtcdStore, TlsFiles};
use super::keys::Name;
#[cfg(feature = "etcd")]
use super::repo::ClusterStore;
use super::seal::Sealer;
use crate::config::ConfigError;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreYaml {
    pub cluster: String,
    pub key_file: PathBuf,
    pub etcd: EtcdYaml,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdYaml {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Transactions in flight at most.
    #[serde(default)]
    pub window: Option<usize>,
}

/// A validated store section.
#[cfg(feature = "etcd")]
pub struct StorePlan {
    pub cluster: Name,
    pub sealer: Arc<Sealer>,
    pub etcd: EtcdOptions,
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl StoreYaml {
    /// What a build without the `etcd` feature can check of the section: the cluster name,
    /// the cluster key file and that endpoints are given.
    pub fn check_basic(&self, file: &Path, at: &str) -> Result<(Name, Arc<Sealer>), ConfigError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let cluster = Name::new(&self.cluster)
            .map_err(|e| ConfigError::new(file, format!("{at}.cluster"), e.to_string()))?;
        let sealer = Sealer::from_file(&rel(base, &self.key_file))
            .map_err(|e| ConfigError::new(file, format!("{at}.key_file"), e.to_string()))?;
        if self.etcd.endpoints.is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{at}.etcd.endpoints"),
                "at least one etcd client URL is needed",
            ));
        }
        Ok((cluster, Arc::new(sealer)))
    }

    /// Validates the section of `file` found at key path `at` (e.g. `store`); reads the
    /// cluster key and the etcd password.
    #[cfg(feature = "etcd")]
    pub fn plan(&self, file: &Path, at: &str) -> Result<StorePlan, ConfigError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let cluster = Name::new(&self.cluster)
            .map_err(|e| ConfigError::new(file, format!("{at}.cluster"), e.to_string()))?;
        let key_path = rel(base, &self.key_file);
        let sealer = Sealer::from_file(&key_path)
            .map_err(|e| ConfigError::new(file, format!("{at}.key_file"), e.to_string()))?;
        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{at}.etcd.endpoints"),
                "at least one etcd client URL is needed",
            ));
        }
        let tls = match (&e.ca, &e.cert, &e.key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca: rel(base, ca),
                cert: rel(base, cert),
                key: rel(base, key),
            }),
            _ => {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.etcd"),
                    "ca, cert and key go together (TLS with a client certificate)",
                ))
            }
        };
        for (i, ep) in e.endpoints.iter().enumerate() {
            let want = if tls.is_some() { "https://" } else { "http://" };
            if !ep.starts_with(want) {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.etcd.endpoints[{i}]"),
                    format!(
                        "{ep:?} must start with {want} (TLS is {})",
                        if tls.is_some() { "on" } else { "off" }
                    ),
                ));
            }
        }
        if let Some(t) = &tls {
            for (k, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                if !p.is_file() {
                    return Err(ConfigError::new(
                        file,
                        format!("{at}.etcd.{k}"),
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        let user = match (&e.user, &e.password_file) {
            (None, None) => None,
            (Some(u), Some(pf)) => {
                let p = rel(base, pf);
                let bytes = crate::config::secret::read_text(&p).map_err(|err| {
                    ConfigError::new(
                        file,
                        format!("{at}.etcd.password_file"),
                        format!("cannot read {}: {err}", p.display()),
                    )
                })?;
                let pw = Zeroizing::new(bytes.trim_end_matches(['\n', '\r']).to_string());
                if pw.is_empty() {
                    return Err(ConfigError::new(
                        file,
                        format!("{at}.etcd.password_file"),
                        format!("{} is empty", p.display()),
                    ));
                }
                Some((u.clone(), pw))
            }
            _ => {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.etcd"),
                    "user and password_file go together",
                ))
            }
        };
        let mut etcd = EtcdOptions::new(e.endpoints.clone());
        etcd.tls = tls;
        etcd.user = user;
        if let Some(w) = e.window {
            if w == 0 {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.etcd.window"),
                    "must be at least 1",
                ));
            }
            etcd.window = w;
        }
        Ok(StorePlan {
            cluster,
            sealer: Arc::new(sealer),
            etcd,
        })
    }
}

#[cfg(feature = "etcd")]
impl StorePlan {
    /// Connects to etcd (blocks until a member answers or the retry time has passed).
    pub fn open(self) -> Result<ClusterStore<EtcdStore>, super::StoreError> {
        let store = EtcdStore::connect(self.etcd)?;
        Ok(ClusterStore::new(store, &self.cluster, self.sealer))
    }
}

#[cfg(all(test, feature = "etcd"))]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        store: StoreYaml,
    }

    fn check(yaml: &str, dir: &Path) -> Result<StorePlan, ConfigError> {
        let file = dir.join("node.yaml");
        let doc: Doc = crate::config::parse(&file, yaml)?;
        doc.store.plan(&file, "store")
    }

    #[test]
    fn the_shipped_example_section_validates_and_errors_name_file_and_key() {
        let dir = std::env::temp_dir().join(format!("rg-store-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.key"), "ab".repeat(32)).unwrap();
        std::fs::write(dir.join("password"), "s3cret\n").unwrap();
        for f in ["ca.pem", "client.pem", "client-key.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let good = "store:\n  cluster: prod-1\n  key_file: cluster.key\n  etcd:\n    endpoints: [https://127.0.0.1:2379]\n    ca: ca.pem\n    cert: client.pem\n    key: client-key.pem\n    user: roamgate\n    password_file: password\n";
        let p = check(good, &dir).unwrap();
        assert_eq!(p.cluster.as_str(), "prod-1");
        assert!(p.etcd.tls.is_some());
        assert_eq!(
            p.etcd
                .user
                .as_ref()
                .map(|(u, pw)| (u.as_str(), pw.as_str())),
            Some(("roamgate", "s3cret"))
        );
        assert!(!format!("{:?}", p.etcd).contains("s3cret"));

        let cases = [
            (good.replace("prod-1", "Prod"), "store.cluster"),
            (good.replace("cluster.key", "nope.key"), "store.key_file"),
            (
                good.replace("https://127", "http://127"),
                "store.etcd.endpoints[0]",
            ),
            (good.replace("    ca: ca.pem\n", ""), "store.etcd"),
            (
                good.replace("password_file: password", "password_file: missing"),
                "store.etcd.password_file",
            ),
            (
                good.replace("key: client-key.pem", "key: gone.pem"),
                "store.etcd.key",
            ),
        ];
        for (yaml, key) in cases {
            let e = check(&yaml, &dir)
                .err()
                .unwrap_or_else(|| panic!("{key} accepted"));
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains("node.yaml"), "{e}");
        }
        let e = check(&good.replace("user: roamgate", "usr: roamgate"), &dir)
            .err()
            .unwrap();
        assert!(e.to_string().contains("usr"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_shipped_example_parses_and_stops_at_its_missing_key_file() {
        let file =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/cluster/store-section.yaml");
        let doc: Doc = crate::config::load(&file).unwrap();
        assert_eq!(doc.store.etcd.endpoints.len(), 3);
        let e = doc.store.plan(&file, "store").err().unwrap();
        assert_eq!(e.key, "store.key_file", "{e}");
    }
}
