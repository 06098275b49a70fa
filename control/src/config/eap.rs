//! EAP for road warriors (`ike.eap`): which connections authenticate their peers by EAP (the
//! gateway itself by the connection's certificate, `auth: pubkey`) and against what: a local
//! user file (EAP-MSCHAPv2) or a RADIUS server (EAP pass-through, RFC 3579).
//!
//! ```yaml
//! ike:
//!   eap:
//!     connections: [rw]                  # these connections' peers authenticate by EAP
//!     users_file: /etc/roamgate/eap-users  # EAP-MSCHAPv2: lines `name:nthash`
//!                                        #   (make one: roamgate eap-user NAME < password)
//!     # or, instead of users_file:
//!     radius:
//!       server: 127.0.0.1:1812
//!       secret_file: /etc/roamgate/radius.secret
//!       nas_identifier: gw.roamgate.test # default: the gateway's name
//!       timeout_ms: 3000                 # wait this long for an answer, then send again
//!       retries: 2                       # ... at most this many times, then refuse
//! ```
//!
//! A client that logs in by EAP has `auth: eap` on its connection and its user name and
//! password in the file `eap_credentials` names ([`read_client_credentials`]; see
//! `config::ike`).
//!
//! Owns: reading and checking the user file, the shared secret and a client's credentials;
//! errors that name the file read, the config file and the key.
//! Must never: print a hash, a password or the shared secret.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ike::eap::mschapv2::{nt_hash, LocalMschapv2, NtHash, UserDb};
use ike::eap::radius::{RadiusClient, RadiusConfig};
use ike::eap::{EapServer, EapService};
use serde::Deserialize;

use super::ConfigError;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EapYaml {
    pub connections: Vec<String>,
    #[serde(default)]
    pub users_file: Option<String>,
    #[serde(default)]
    pub radius: Option<RadiusYaml>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RadiusYaml {
    pub server: SocketAddr,
    pub secret_file: String,
    #[serde(default)]
    pub nas_identifier: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout_ms() -> u64 {
    3000
}

fn default_retries() -> u32 {
    2
}

/// The endpoint's EAP service and, for RADIUS, the server's address (the driver's socket).
pub struct Eap {
    pub service: EapService,
    pub radius: Option<SocketAddr>,
}

impl EapYaml {
    /// Checks the section (under `at`) against the connections' names and reads its files;
    /// `name` is the gateway's (the default NAS-Identifier).
    pub fn load(
        &self,
        file: &Path,
        at: &str,
        connections: &[String],
        name: &str,
    ) -> Result<Eap, ConfigError> {
        let err = |k: &str, what: String| ConfigError::new(file, format!("{at}.{k}"), what);
        if self.connections.is_empty() {
            return Err(err(
                "connections",
                "name at least one connection whose peers authenticate by EAP".into(),
            ));
        }
        for (i, c) in self.connections.iter().enumerate() {
            if !connections.contains(c) {
                return Err(err(
                    &format!("connections[{i}]"),
                    format!("no connection is named '{c}'"),
                ));
            }
        }
        let (server, radius): (Box<dyn EapServer>, _) = match (&self.users_file, &self.radius) {
            (Some(f), None) => {
                let text = super::secret::read_text(Path::new(f))
                    .map_err(|e| err("users_file", format!("cannot read {f}: {e}")))?;
                let users =
                    UserDb::parse(&text).map_err(|e| err("users_file", format!("{f}: {e}")))?;
                if users.is_empty() {
                    return Err(err("users_file", format!("{f}: no users")));
                }
                (Box::new(LocalMschapv2::new(Arc::new(users))), None)
            }
            (None, Some(r)) => {
                let mut secret =
                    super::secret::read_bytes(Path::new(&r.secret_file)).map_err(|e| {
                        err(
                            "radius.secret_file",
                            format!("cannot read {}: {e}", r.secret_file),
                        )
                    })?;
                while secret.last().is_some_and(u8::is_ascii_whitespace) {
                    secret.pop();
                }
                if secret.is_empty() {
                    return Err(err(
                        "radius.secret_file",
                        format!("{}: the shared secret is empty", r.secret_file),
                    ));
                }
                if r.timeout_ms == 0 {
                    return Err(err("radius.timeout_ms", "must be above 0".into()));
                }
                let client = RadiusClient::new(RadiusConfig {
                    secret,
                    nas_identifier: r.nas_identifier.clone().unwrap_or_else(|| name.into()),
                    timeout: Duration::from_millis(r.timeout_ms),
                    retries: r.retries,
                });
                (Box::new(client), Some(r.server))
            }
            _ => {
                return Err(err(
                    "users_file",
                    "give exactly one of users_file and radius".into(),
                ))
            }
        };
        Ok(Eap {
            service: EapService {
                connections: self.connections.iter().cloned().collect::<BTreeSet<_>>(),
                server: Some(server),
                clients: Default::default(),
            },
            radius,
        })
    }
}

/// An EAP peer's credentials file (`auth: eap`): one line `user:password`, the password
/// everything after the first colon up to the end of the line. The file is read into memory
/// that is zeroized; only the user name and the password's NT hash (zeroized on drop) are
/// kept. Errors never quote the file's content.
pub fn read_client_credentials(path: &Path) -> Result<(String, NtHash), String> {
    let text = super::secret::read_text(path).map_err(|e| format!("cannot read it: {e}"))?;
    let line = text.trim_end_matches(['\r', '\n']);
    if line.contains('\n') {
        return Err("one line only: user:password".into());
    }
    let Some((user, password)) = line.split_once(':') else {
        return Err("expected user:password (no colon)".into());
    };
    if user.is_empty() || user.len() > ike::eap::MAX_IDENTITY {
        return Err(format!(
            "the user name must be 1 to {} bytes",
            ike::eap::MAX_IDENTITY
        ));
    }
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok((user.to_owned(), nt_hash(password)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("roamgate-eap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn users_file_and_radius_load_and_bad_values_name_their_key() {
        let d = dir("load");
        let users = d.join("users");
        std::fs::write(&users, format!("{}\n", UserDb::entry("alice", "pw"))).unwrap();
        let conns = vec!["rw".to_string()];
        let f = Path::new("gw.yaml");
        let y = EapYaml {
            connections: conns.clone(),
            users_file: Some(users.display().to_string()),
            radius: None,
        };
        let e = y.load(f, "ike.eap", &conns, "gw").unwrap();
        assert!(e.radius.is_none());
        assert!(e.service.connections.contains("rw"));

        let bad = EapYaml {
            connections: vec!["nope".into()],
            ..y.clone()
        };
        let err = bad
            .load(f, "ike.eap", &conns, "gw")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("ike.eap.connections[0]") && err.contains("nope"),
            "{err}"
        );

        std::fs::write(&users, "alice:password\n").unwrap();
        let err = y
            .load(f, "ike.eap", &conns, "gw")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("users_file") && err.contains("line 1"),
            "{err}"
        );

        let secret = d.join("secret");
        std::fs::write(&secret, "testing123\n").unwrap();
        let r = EapYaml {
            connections: conns.clone(),
            users_file: None,
            radius: Some(RadiusYaml {
                server: "127.0.0.1:1812".parse().unwrap(),
                secret_file: secret.display().to_string(),
                nas_identifier: None,
                timeout_ms: 1000,
                retries: 1,
            }),
        };
        let e = r.load(f, "ike.eap", &conns, "gw").unwrap();
        assert_eq!(e.radius, Some("127.0.0.1:1812".parse().unwrap()));
        let both = EapYaml {
            users_file: Some("x".into()),
            ..r.clone()
        };
        let err = both
            .load(f, "ike.eap", &conns, "gw")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exactly one"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn client_credentials_read_and_bad_files_say_why_without_their_content() {
        let d = dir("client");
        let f = d.join("home.eap");
        std::fs::write(&f, "alice:pa:ss word\n").unwrap();
        let (user, hash) = read_client_credentials(&f).unwrap();
        assert_eq!(user, "alice");
        assert_eq!(
            *hash,
            *nt_hash("pa:ss word"),
            "everything after the first colon"
        );
        for (body, why) in [
            ("alice\n", "no colon"),
            (":secret\n", "user name"),
            ("alice:\n", "password is empty"),
            ("alice:one\nbob:two\n", "one line"),
        ] {
            std::fs::write(&f, body).unwrap();
            let e = read_client_credentials(&f).unwrap_err();
            assert!(e.contains(why), "{body:?}: {e}");
            assert!(!e.contains("secret") && !e.contains("two"), "{e}");
        }
        let e = read_client_credentials(&d.join("missing")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
