//! The `ike` section of a gateway or client file: IKEv2 connections, in the spirit of
//! strongSwan's swanctl.conf (proposal strings like `aes128gcm16-prfsha256-x25519`).
//!
//! ```yaml
//! ike:
//!   connections:
//!     - name: rw
//!       local_id: gw.roamgate.test
//!       remote_id: any                 # or an FQDN, e-mail or IP address
//!       psk: "..."                     # or psk_file: /etc/roamgate/rw.psk
//!       ike_proposals: [aes128gcm16-prfsha256-x25519]
//!       esp_proposals: [aes128gcm16, aes128gcm16-esn]
//!       local_ts: [10.9.0.0/24]
//!       remote_ts: [0.0.0.0/0]
//!       pool: 10.99.0.0/24             # virtual IPs for road warriors
//!       child_rekey_secs: 3600         # soft lifetimes: rekey
//!       child_life_secs: 3960          # hard lifetimes: the CHILD_SA goes
//!       child_rekey_bytes: 0           # and by bytes / packets (0: none),
//!       child_life_bytes: 0            #   counted by the data plane
//!       child_rekey_packets: 0
//!       child_life_packets: 0
//! ```
//!
//! With `auth: pubkey` a connection authenticates with certificates instead (`cert`, `key`,
//! `cacerts`, `crls`, ...: see `config::certs`).
//!
//! A client that logs in by EAP-MSCHAPv2 (RFC 7296 2.16) has `auth: eap`: the gateway proves
//! itself with its certificate (checked against `cacerts`, `peer_eku` as for `pubkey`), we
//! with the user name and password in the file `eap_credentials` names (one line
//! `user:password`; read into zeroized memory, only its NT hash kept, never logged):
//!
//! ```yaml
//!     - name: home
//!       local_id: alice@roamgate.test
//!       remote_id: gw.roamgate.test
//!       remote_addr: 203.0.113.1
//!       auth: eap
//!       eap_credentials: /etc/roamgate/home.eap   # mode 0600
//!       cacerts: [/etc/roamgate/ca.pem]
//!       request_vip: true
//! ```
//!
//! A connection with `remote_addr` is initiated at start (a client, or a site-to-site
//! initiator); one without waits for peers. Pre-shared keys never reach `Debug` or logs.
//!
//! Against IKE_SA_INIT floods (RFC 7296 2.6, RFC 8019), beside `connections` (defaults shown):
//!
//! ```yaml
//! ike:
//!   cookie_threshold: 64        # demand a COOKIE from this many half-open IKE SAs (0: always)
//!   half_open_max: 5000         # half-open IKE SAs at most; more requests are dropped
//!   half_open_per_source: 16    # ... and at most this many from one IPv4 address / IPv6 /64
//!   half_open_timeout_secs: 30  # a half-open IKE SA goes when not authenticated by then
//!   cookie_secret_secs: 120     # the cookie secret is replaced this often
//!   cookie_grace_secs: 10       # cookies of the replaced secret still count this long
//! ```
//!
//! IKE fragmentation (RFC 7383), for every connection (defaults shown; strongSwan's
//! `fragmentation = yes`):
//!
//! ```yaml
//! ike:
//!   fragmentation: true         # offer and accept it in IKE_SA_INIT
//!   fragment_size: 576          # largest IPv4 datagram a fragment makes (RFC 7383 2.5.1)
//!   fragment_size_v6: 1280      # ... and IPv6
//!   fragment_timeout_secs: 30   # an unfinished reassembly goes after this
//! ```
//!
//! EAP for road warriors (`eap`: the connections, a user file or a RADIUS server): see
//! `config::eap`.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use super::{ActionName, ConfigError, GatewayConfig, SecretString};
use crate::repo::prefix_ts;
use ike::crypto::{DhGroup, Prf};
use ike::wire::Id;
use ike::{
    after_secs, secret, Admission, Credential, EndpointConfig, EspInteg, EspProposal,
    Fragmentation, IkeProposal, PeerConfig, Pool,
};
use pipeline::spd::Prefix;
use pipeline::stats::Lifetime;
use zeroize::Zeroizing;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionYaml {
    pub name: String,
    pub local_id: String,
    /// `any` (or absent) accepts every peer identity.
    #[serde(default)]
    pub remote_id: Option<String>,
    #[serde(default)]
    pub psk: Option<SecretString>,
    #[serde(default)]
    pub psk_file: Option<String>,
    /// `psk` (the default) or `pubkey` (certificates: see `config::certs`).
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub cacerts: Vec<String>,
    #[serde(default)]
    pub crls: Vec<String>,
    #[serde(default)]
    pub peer_eku: Option<String>,
    #[serde(default)]
    pub rsa_pss: bool,
    #[serde(default)]
    pub allow_sha1: bool,
    #[serde(default)]
    pub send_cert: Option<String>,
    /// `auth: eap` (a client that logs in by EAP-MSCHAPv2): the file holding `user:password`
    /// on one line (`config::eap::read_client_credentials`).
    #[serde(default)]
    pub eap_credentials: Option<String>,
    #[serde(default = "default_ike")]
    pub ike_proposals: Vec<String>,
    #[serde(default = "default_esp")]
    pub esp_proposals: Vec<String>,
    #[serde(default)]
    pub local_ts: Vec<Prefix>,
    #[serde(default)]
    pub remote_ts: Vec<Prefix>,
    #[serde(default)]
    pub pool: Option<Prefix>,
    /// Ask the peer for a virtual IP (a road-warrior client).
    #[serde(default)]
    pub request_vip: bool,
    /// Initiate to this peer at start.
    #[serde(default)]
    pub remote_addr: Option<IpAddr>,
    #[serde(default)]
    pub remote_port: Option<u16>,
    #[serde(default)]
    pub child_rekey_secs: u64,
    #[serde(default)]
    pub ike_rekey_secs: u64,
    #[serde(default)]
    pub dpd_secs: u64,
    /// Hard lifetime of a CHILD_SA by time: deleted if not rekeyed by then (0: none).
    #[serde(default)]
    pub child_life_secs: u64,
    /// Soft (rekey) and hard (the SA stops) lifetimes of each CHILD_SA direction by bytes
    /// and packets, counted by the data plane (0: none), as strongSwan's rekey_bytes /
    /// life_bytes / rekey_packets / life_packets.
    #[serde(default)]
    pub child_rekey_bytes: u64,
    #[serde(default)]
    pub child_life_bytes: u64,
    #[serde(default)]
    pub child_rekey_packets: u64,
    #[serde(default)]
    pub child_life_packets: u64,
}

impl core::fmt::Debug for ConnectionYaml {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConnectionYaml")
            .field("name", &self.name)
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn default_ike() -> Vec<String> {
    vec!["aes128gcm16-prfsha256-x25519".into()]
}

fn default_esp() -> Vec<String> {
    vec!["aes128gcm16".into()]
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IkeYaml {
    #[serde(default)]
    pub connections: Vec<ConnectionYaml>,
    /// The responder's defences against IKE_SA_INIT floods (module doc); absent: defaults.
    #[serde(default)]
    pub cookie_threshold: Option<u32>,
    #[serde(default)]
    pub half_open_max: Option<u32>,
    #[serde(default)]
    pub half_open_per_source: Option<u32>,
    #[serde(default)]
    pub half_open_timeout_secs: Option<u64>,
    #[serde(default)]
    pub cookie_secret_secs: Option<u64>,
    #[serde(default)]
    pub cookie_grace_secs: Option<u64>,
    /// IKE fragmentation (module doc); absent: defaults.
    #[serde(default)]
    pub fragmentation: Option<bool>,
    #[serde(default)]
    pub fragment_size: Option<u64>,
    #[serde(default)]
    pub fragment_size_v6: Option<u64>,
    #[serde(default)]
    pub fragment_timeout_secs: Option<u64>,
    /// EAP for road warriors (`config::eap`); absent: none.
    #[serde(default)]
    pub eap: Option<super::eap::EapYaml>,
}

/// What [`IkeYaml::admission`] yields: the endpoint's admission policy and half-open timeout.
pub type AdmissionPolicy = (Admission, std::time::Duration);

/// A connection ready for the endpoint, and where to initiate it (if anywhere).
#[derive(Clone, Debug)]
pub struct Connection {
    pub peer: PeerConfig,
    /// The byte/packet lifetimes of its CHILD_SAs' data-plane SAs.
    pub child_lifetime: Lifetime,
    pub initiate_to: Option<std::net::SocketAddr>,
    /// A digest of everything that makes the connection what it is: its settings, its key or
    /// the bytes of its certificate, key, CA and CRL files. A reload compares connections by
    /// it ([`super::reload`]); it is never shown.
    pub fingerprint: [u8; 32],
}

/// The digest of a connection for [`Connection::fingerprint`]: its settings as the endpoint
/// has them (credentials redacted in `Debug`), then its pre-shared key or the contents of the
/// files of its certificate credential, each length-prefixed.
fn fingerprint(
    c: &ConnectionYaml,
    peer: &PeerConfig,
    lifetime: &Lifetime,
    initiate_to: Option<std::net::SocketAddr>,
) -> [u8; 32] {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    let mut put = |b: &[u8]| {
        d.update(&(b.len() as u64).to_be_bytes());
        d.update(b);
    };
    put(format!("{peer:?}|{lifetime:?}|{initiate_to:?}").as_bytes());
    match &peer.auth {
        Credential::Psk(k) => put(k),
        Credential::Pubkey(p) => {
            put(format!("{:?}|{}|{}", p.peer_eku, p.rsa_pss, p.allow_sha1).as_bytes());
            let files = c
                .cert
                .iter()
                .chain(&c.key)
                .chain(&c.cacerts)
                .chain(&c.crls)
                .chain(&c.eap_credentials);
            for f in files {
                // Read once more: validation has just read them; an unreadable one now
                // (removed in between) counts as different content.
                match super::secret::read_bytes(Path::new(f)) {
                    Ok(b) => put(&b),
                    Err(_) => put(b"<unreadable>"),
                }
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// Parses strongSwan-style IKE proposals: `aes128gcm16-prfsha256-x25519` (AES-GCM-16; also
/// `aes256gcm16`, `prfsha384`, `prfsha512`, `ecp256`, `modp2048`) or `aes128-sha256-x25519`
/// (AES-CBC 128/256 with HMAC-SHA2-256-128). A missing PRF is prfsha256.
pub fn parse_ike_proposal(s: &str) -> Result<IkeProposal, String> {
    let mut encr = None;
    let mut cbc = false;
    let mut integ = false;
    let mut prf = Prf::HmacSha256;
    let mut dh = None;
    for part in s.split('-') {
        match part {
            "aes128gcm16" | "aes128gcm" => encr = Some(128),
            "aes256gcm16" | "aes256gcm" => encr = Some(256),
            "aes128" => (encr, cbc) = (Some(128), true),
            "aes256" => (encr, cbc) = (Some(256), true),
            "sha256" => integ = true,
            "prfsha256" => prf = Prf::HmacSha256,
            "prfsha384" => prf = Prf::HmacSha384,
            "prfsha512" => prf = Prf::HmacSha512,
            "x25519" | "curve25519" => dh = Some(DhGroup::X25519),
            "ecp256" => dh = Some(DhGroup::Ecp256),
            "modp2048" => dh = Some(DhGroup::Modp2048),
            other => return Err(format!("'{other}' in '{s}' is not supported (aes128gcm16|aes256gcm16, or aes128|aes256 with sha256; prfsha256|384|512; x25519|ecp256|modp2048)")),
        }
    }
    if cbc && !integ {
        return Err(format!(
            "'{s}': AES-CBC needs an integrity algorithm (sha256)"
        ));
    }
    if !cbc && integ {
        return Err(format!(
            "'{s}': AES-GCM takes no separate integrity algorithm"
        ));
    }
    Ok(IkeProposal {
        encr_bits: encr.ok_or_else(|| format!("'{s}' names no encryption"))?,
        prf,
        dh: dh.ok_or_else(|| format!("'{s}' names no DH group (x25519, ecp256 or modp2048)"))?,
        cbc,
    })
}

/// Parses strongSwan-style ESP proposals: `aes128gcm16`, `aes256gcm16-esn`,
/// `aes128gcm16-noesn`, and AES-CBC with its HMAC: `aes256-sha256`, `aes128-sha1-esn`
/// (`sha1`: HMAC-SHA1-96, weak; `sha256|sha384|sha512`: HMAC-SHA2 with half-length ICVs).
pub fn parse_esp_proposal(s: &str) -> Result<EspProposal, String> {
    let mut encr = None;
    let mut cbc = false;
    let mut integ = None;
    let mut esn = false;
    for part in s.split('-') {
        match part {
            "aes128gcm16" | "aes128gcm" => encr = Some(128),
            "aes256gcm16" | "aes256gcm" => encr = Some(256),
            "aes128" => (encr, cbc) = (Some(128), true),
            "aes256" => (encr, cbc) = (Some(256), true),
            "sha1" => integ = Some(EspInteg::HmacSha1_96),
            "sha256" => integ = Some(EspInteg::HmacSha256_128),
            "sha384" => integ = Some(EspInteg::HmacSha384_192),
            "sha512" => integ = Some(EspInteg::HmacSha512_256),
            "esn" => esn = true,
            "noesn" => esn = false,
            other => {
                return Err(format!(
                    "'{other}' in '{s}' is not supported (aes128gcm16|aes256gcm16, or aes128|aes256 with sha1|sha256|sha384|sha512; esn|noesn)"
                ))
            }
        }
    }
    if cbc && integ.is_none() {
        return Err(format!(
            "'{s}': AES-CBC needs an integrity algorithm (sha1, sha256, sha384 or sha512)"
        ));
    }
    if !cbc && integ.is_some() {
        return Err(format!(
            "'{s}': AES-GCM takes no separate integrity algorithm"
        ));
    }
    Ok(EspProposal {
        encr_bits: encr.ok_or_else(|| format!("'{s}' names no encryption"))?,
        esn,
        integ,
    })
}

impl IkeYaml {
    /// The admission policy (cookies, half-open caps and timeout), each value in its bounds;
    /// an error names the key.
    pub fn admission(&self, file: &Path, at: &str) -> Result<AdmissionPolicy, ConfigError> {
        let d = Admission::default();
        let d_timeout = EndpointConfig::default().half_open_timeout.as_secs();
        let check = |k: &str, v: u64, lo: u64, hi: u64, why: &str| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    file,
                    format!("{at}.{k}"),
                    format!("{v} is out of bounds: {lo} to {hi}{why}"),
                ))
            }
        };
        let max = check(
            "half_open_max",
            self.half_open_max
                .map_or(u64::from(d.half_open_max), u64::from),
            1,
            1_000_000,
            "",
        )?;
        let threshold = check(
            "cookie_threshold",
            self.cookie_threshold
                .map_or(u64::from(d.cookie_threshold), u64::from),
            0,
            max,
            " (half_open_max): cookies must be demanded before the cap refuses everyone",
        )?;
        let per_source = check(
            "half_open_per_source",
            self.half_open_per_source
                .map_or(u64::from(d.half_open_per_source), u64::from),
            1,
            max,
            " (half_open_max)",
        )?;
        let timeout = check(
            "half_open_timeout_secs",
            self.half_open_timeout_secs.unwrap_or(d_timeout),
            1,
            300,
            "",
        )?;
        let secret = check(
            "cookie_secret_secs",
            self.cookie_secret_secs
                .unwrap_or(d.cookie_secret_lifetime.as_secs()),
            10,
            86_400,
            "",
        )?;
        let grace = check(
            "cookie_grace_secs",
            self.cookie_grace_secs.unwrap_or(d.cookie_grace.as_secs()),
            1,
            secret,
            " (cookie_secret_secs): only the one secret before the current is kept",
        )?;
        // Each bound is at most 1,000,000: the conversions back cannot fail.
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok((
            Admission {
                cookie_threshold: small(threshold),
                half_open_max: small(max),
                half_open_per_source: small(per_source),
                cookie_secret_lifetime: std::time::Duration::from_secs(secret),
                cookie_grace: std::time::Duration::from_secs(grace),
            },
            std::time::Duration::from_secs(timeout),
        ))
    }

    /// IKE fragmentation (RFC 7383) as configured, each value in its bounds; an error names
    /// the key.
    pub fn fragmentation(&self, file: &Path, at: &str) -> Result<Fragmentation, ConfigError> {
        let d = Fragmentation::default();
        let check = |k: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    file,
                    format!("{at}.{k}"),
                    format!("{v} is out of bounds: {lo} to {hi}"),
                ))
            }
        };
        let min = u64::from(ike::config::MIN_FRAGMENT_SIZE);
        let v4 = check(
            "fragment_size",
            self.fragment_size.unwrap_or(u64::from(d.size_v4)),
            min,
            65_535,
        )?;
        let v6 = check(
            "fragment_size_v6",
            self.fragment_size_v6.unwrap_or(u64::from(d.size_v6)),
            min,
            65_535,
        )?;
        let timeout = check(
            "fragment_timeout_secs",
            self.fragment_timeout_secs.unwrap_or(d.timeout.as_secs()),
            1,
            300,
        )?;
        // Each size is at most 65535: the conversions back cannot fail.
        let size = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
        Ok(Fragmentation {
            enabled: self.fragmentation.unwrap_or(d.enabled),
            size_v4: size(v4),
            size_v6: size(v6),
            timeout: std::time::Duration::from_secs(timeout),
            ..d
        })
    }

    /// A connection's pre-shared key (`psk` or `psk_file`), at least 8 bytes.
    fn psk(
        c: &ConnectionYaml,
        err: &impl Fn(String, String) -> ConfigError,
        key: &impl Fn(&str) -> String,
    ) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
        let psk = match (&c.psk, &c.psk_file) {
            (Some(p), None) => Zeroizing::new(p.as_bytes().to_vec()),
            (None, Some(f)) => super::secret::read_bytes(Path::new(f))
                .map(|mut b| {
                    while b.last().is_some_and(u8::is_ascii_whitespace) {
                        b.pop();
                    }
                    b
                })
                .map_err(|e| err(key("psk_file"), format!("cannot read {f}: {e}")))?,
            _ => {
                return Err(err(
                    key("psk"),
                    "give exactly one of psk and psk_file".into(),
                ))
            }
        };
        if psk.len() < 8 {
            return Err(err(
                key("psk"),
                "a pre-shared key shorter than 8 bytes is refused".into(),
            ));
        }
        Ok(psk)
    }

    /// Validates every connection and the admission policy; errors name the file and the key.
    pub fn validate(&self, file: &Path, at: &str) -> Result<Vec<Connection>, ConfigError> {
        self.admission(file, at)?;
        self.fragmentation(file, at)?;
        let err = |key: String, what: String| ConfigError::new(file, key, what);
        let mut out = Vec::new();
        for (i, c) in self.connections.iter().enumerate() {
            let key = |k: &str| format!("{at}.connections[{i}].{k}");
            if self.connections[..i].iter().any(|o| o.name == c.name) {
                return Err(err(
                    key("name"),
                    format!("duplicate connection name '{}'", c.name),
                ));
            }
            if c.eap_credentials.is_some() && c.auth.as_deref() != Some("eap") {
                return Err(err(key("eap_credentials"), "only with auth: eap".into()));
            }
            let auth = match c.auth.as_deref() {
                None | Some("psk") => Credential::Psk(secret(&Self::psk(c, &err, &key)?)),
                Some("pubkey") => super::certs::load(c, file, &format!("{at}.connections[{i}]"))?,
                Some("eap") => {
                    if c.remote_addr.is_none() {
                        return Err(err(
                            key("auth"),
                            "auth: eap is a client's (we log in to the gateway at remote_addr); a gateway names its EAP connections in ike.eap".into(),
                        ));
                    }
                    let f = c.eap_credentials.as_deref().ok_or_else(|| {
                        err(
                            key("eap_credentials"),
                            "auth: eap needs eap_credentials (a file holding user:password)".into(),
                        )
                    })?;
                    super::eap::read_client_credentials(Path::new(f))
                        .map_err(|w| err(key("eap_credentials"), format!("{f}: {w}")))?;
                    super::certs::load_gateway_check(c, file, &format!("{at}.connections[{i}]"))?
                }
                Some(o) => {
                    return Err(err(
                        key("auth"),
                        format!("'{o}': expected psk, pubkey or eap"),
                    ))
                }
            };
            let mut ike = Vec::new();
            for (j, p) in c.ike_proposals.iter().enumerate() {
                ike.push(
                    parse_ike_proposal(p)
                        .map_err(|w| err(key(&format!("ike_proposals[{j}]")), w))?,
                );
            }
            let mut esp = Vec::new();
            for (j, p) in c.esp_proposals.iter().enumerate() {
                let at = key(&format!("esp_proposals[{j}]"));
                let e = parse_esp_proposal(p).map_err(|w| err(at.clone(), w))?;
                if e.is_weak() {
                    tracing::warn!(
                        target: "config",
                        "{}: {at} '{p}' uses HMAC-SHA1-96: weak, offered and accepted only because it is configured",
                        file.display()
                    );
                }
                esp.push(e);
            }
            if ike.is_empty() || esp.is_empty() {
                return Err(err(
                    key("ike_proposals"),
                    "needs at least one IKE and one ESP proposal".into(),
                ));
            }
            let pool = match c.pool {
                None => None,
                Some(p) => {
                    let (IpAddr::V4(first), IpAddr::V4(last)) = p.range() else {
                        return Err(err(key("pool"), "only IPv4 pools are supported".into()));
                    };
                    // Skip the network address; hand out the rest but the broadcast address.
                    let span = u32::from(last).saturating_sub(u32::from(first));
                    let first = std::net::Ipv4Addr::from(
                        u32::from(first).saturating_add(u32::from(span > 1)),
                    );
                    Some(Pool {
                        first,
                        count: span.saturating_sub(1).max(1),
                    })
                }
            };
            let remote_id = match c.remote_id.as_deref() {
                None | Some("any") | Some("%any") => None,
                Some(s) => Some(Id::from_text(s)),
            };
            if c.remote_addr.is_some() && c.pool.is_some() {
                return Err(err(
                    key("pool"),
                    "an initiator does not hand out virtual IPs".into(),
                ));
            }
            let remote_ts = if c.remote_ts.is_empty() && c.pool.is_none() {
                return Err(err(
                    key("remote_ts"),
                    "needs the peer's traffic selectors (or a pool)".into(),
                ));
            } else {
                c.remote_ts.iter().map(prefix_ts).collect()
            };
            if c.local_ts.is_empty() && !c.request_vip {
                return Err(err(
                    key("local_ts"),
                    "needs our traffic selectors (or request_vip)".into(),
                ));
            }
            for (soft, hard, soft_key, hard_key) in [
                (
                    c.child_rekey_secs,
                    c.child_life_secs,
                    "child_rekey_secs",
                    "child_life_secs",
                ),
                (
                    c.child_rekey_bytes,
                    c.child_life_bytes,
                    "child_rekey_bytes",
                    "child_life_bytes",
                ),
                (
                    c.child_rekey_packets,
                    c.child_life_packets,
                    "child_rekey_packets",
                    "child_life_packets",
                ),
            ] {
                if soft > 0 && hard > 0 && soft >= hard {
                    return Err(err(
                        key(hard_key),
                        format!("must be larger than {soft_key} ({soft}): the rekey comes first"),
                    ));
                }
            }
            let child_lifetime = Lifetime {
                soft_bytes: c.child_rekey_bytes,
                hard_bytes: c.child_life_bytes,
                soft_packets: c.child_rekey_packets,
                hard_packets: c.child_life_packets,
            };
            let peer = PeerConfig {
                name: c.name.clone(),
                local_id: Id::from_text(&c.local_id),
                remote_id,
                auth,
                ike_proposals: ike,
                esp_proposals: esp,
                local_ts: c.local_ts.iter().map(prefix_ts).collect(),
                remote_ts,
                pool,
                request_vip: c.request_vip,
                child_rekey: after_secs(c.child_rekey_secs),
                ike_rekey: after_secs(c.ike_rekey_secs),
                dpd: after_secs(c.dpd_secs),
                child_life: after_secs(c.child_life_secs),
            };
            let initiate_to = c
                .remote_addr
                .map(|a| std::net::SocketAddr::new(a, c.remote_port.unwrap_or(500)));
            out.push(Connection {
                fingerprint: fingerprint(c, &peer, &child_lifetime, initiate_to),
                child_lifetime,
                peer,
                initiate_to,
            });
        }
        Ok(out)
    }
}

impl IkeYaml {
    /// The `eap` section, checked and its files read, with the connections we log in by EAP
    /// (`auth: eap`: their credentials files read); `None` when there is neither. `name` is
    /// the gateway's (the default NAS-Identifier).
    pub fn eap(
        &self,
        file: &Path,
        at: &str,
        name: &str,
    ) -> Result<Option<super::eap::Eap>, ConfigError> {
        let mut clients = std::collections::BTreeMap::new();
        for (i, c) in self.connections.iter().enumerate() {
            let Some(f) = c.eap_credentials.as_deref() else {
                continue;
            };
            let creds = super::eap::read_client_credentials(Path::new(f)).map_err(|w| {
                ConfigError::new(
                    file,
                    format!("{at}.connections[{i}].eap_credentials"),
                    format!("{f}: {w}"),
                )
            })?;
            clients.insert(c.name.clone(), creds);
        }
        let mut eap = match &self.eap {
            Some(e) => {
                let names: Vec<String> = self.connections.iter().map(|c| c.name.clone()).collect();
                Some(e.load(file, &format!("{at}.eap"), &names, name)?)
            }
            None => None,
        };
        if !clients.is_empty() {
            let e = eap.get_or_insert_with(|| super::eap::Eap {
                service: ike::eap::EapService::default(),
                radius: None,
            });
            e.service.clients = clients;
        }
        Ok(eap)
    }

    /// The checks a road-warrior client's file must pass on top of [`validate`]
    /// (`roamgate client`): at least one connection, each initiated to a gateway.
    ///
    /// [`validate`]: IkeYaml::validate
    pub fn validate_client(&self, file: &Path, at: &str) -> Result<Vec<Connection>, ConfigError> {
        let conns = self.validate(file, at)?;
        if conns.is_empty() {
            return Err(ConfigError::new(
                file,
                format!("{at}.connections"),
                "a client needs a connection to a gateway",
            ));
        }
        if let Some(i) = conns.iter().position(|c| c.initiate_to.is_none()) {
            return Err(ConfigError::new(
                file,
                format!("{at}.connections[{i}].remote_addr"),
                "a client initiates every connection: give the gateway's address",
            ));
        }
        Ok(conns)
    }
}

/// Whether two prefixes share an address (never across address families).
fn overlap(a: &Prefix, b: &Prefix) -> bool {
    let ((a0, a1), (b0, b1)) = (a.range(), b.range());
    a0.is_ipv4() == b0.is_ipv4() && a0 <= b1 && b0 <= a1
}

impl IkeYaml {
    /// The checks between the connections and the gateway they run on (`gw` at key path
    /// `gw_at`): a virtual-IP pool must not overlap the WAN subnet (which holds our own
    /// address), the LAN's subnet, or any LAN selector (a connection's `local_ts`, a static
    /// SA's `local_ts`, a protect rule's `src`). A `/0` selector (a full tunnel) stands for
    /// "everything", not for a LAN, and is not compared.
    pub fn check_against(
        &self,
        gw: &GatewayConfig,
        file: &Path,
        at: &str,
        gw_at: &str,
    ) -> Result<(), ConfigError> {
        let mut taken: Vec<(String, Prefix)> = Vec::new();
        for side in ["wan", "lan"] {
            let i = if side == "wan" { &gw.wan } else { &gw.lan };
            let subnet = i
                .subnet()
                .map_err(|w| ConfigError::new(file, format!("{gw_at}.{side}.prefix_len"), w))?;
            taken.push((format!("{gw_at}.{side} subnet"), subnet));
        }
        for (j, c) in self.connections.iter().enumerate() {
            for (k, p) in c.local_ts.iter().enumerate() {
                taken.push((format!("{at}.connections[{j}].local_ts[{k}]"), *p));
            }
        }
        for (j, sa) in gw.sas.iter().enumerate() {
            taken.push((format!("{gw_at}.sas[{j}].local_ts"), sa.local_ts));
        }
        for (j, p) in gw.policies.iter().enumerate() {
            if p.action == ActionName::Protect {
                taken.push((format!("{gw_at}.policies[{j}].src"), p.src));
            }
        }
        for (i, c) in self.connections.iter().enumerate() {
            let Some(pool) = c.pool else { continue };
            if let Some((what, p)) = taken
                .iter()
                .find(|(_, p)| !p.is_default() && overlap(&pool, p))
            {
                return Err(ConfigError::new(
                    file,
                    format!("{at}.connections[{i}].pool"),
                    format!(
                        "{pool} overlaps {what} ({p}): a client's virtual IP would collide with an address on our side"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The endpoint configuration of validated connections. An endpoint that initiates (a
/// client) announces RFC 6311 message-id sync support, as strongSwan does: it answers an HA
/// gateway's IKEV2_MESSAGE_ID_SYNC after a takeover. A responder announces it only in an HA
/// pair (`ControlCore::enable_mid_sync`).
pub fn endpoint_config(conns: &[Connection]) -> EndpointConfig {
    EndpointConfig {
        peers: conns.iter().map(|c| c.peer.clone()).collect(),
        mid_sync: conns.iter().any(|c| c.initiate_to.is_some()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_strings() {
        let p = parse_ike_proposal("aes256gcm16-prfsha384-ecp256").unwrap();
        assert_eq!(
            (p.encr_bits, p.prf, p.dh),
            (256, Prf::HmacSha384, DhGroup::Ecp256)
        );
        assert!(parse_ike_proposal("aes128cbc-sha256-x25519").is_err());
        let c = parse_ike_proposal("aes256-sha256-ecp256").unwrap();
        assert!(c.cbc && c.encr_bits == 256);
        assert!(
            parse_ike_proposal("aes128-x25519").is_err(),
            "CBC without integrity"
        );
        assert!(parse_ike_proposal("aes128gcm16")
            .unwrap_err()
            .contains("no DH group"));
        let e = parse_esp_proposal("aes128gcm16-esn").unwrap();
        assert!(e.esn);
        assert_eq!(e.integ, None);
        assert!(!parse_esp_proposal("aes128gcm16").unwrap().esn);
        let c = parse_esp_proposal("aes256-sha256").unwrap();
        assert_eq!(
            (c.encr_bits, c.integ, c.esn),
            (256, Some(EspInteg::HmacSha256_128), false)
        );
        let c = parse_esp_proposal("aes128-sha1-esn").unwrap();
        assert_eq!(
            (c.encr_bits, c.integ, c.esn),
            (128, Some(EspInteg::HmacSha1_96), true)
        );
        assert!(c.is_weak());
        assert!(parse_esp_proposal("aes256")
            .unwrap_err()
            .contains("needs an integrity algorithm"));
        assert!(parse_esp_proposal("aes256gcm16-sha256")
            .unwrap_err()
            .contains("no separate integrity"));
        assert!(parse_esp_proposal("aes256-md5").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let y: IkeYaml = crate::config::parse(
            Path::new("x.yaml"),
            "connections:\n  - { name: rw, local_id: gw, psk: \"0123456789\", ike_proposals: [aes128gcm16-foo], remote_ts: [10.0.0.0/8], local_ts: [10.9.0.0/24] }\n",
        )
        .unwrap();
        let e = y.validate(Path::new("x.yaml"), "ike").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].ike_proposals[0]");
        let y: IkeYaml = crate::config::parse(
            Path::new("x.yaml"),
            "connections:\n  - { name: rw, local_id: gw, psk: \"short\", remote_ts: [10.0.0.0/8], local_ts: [10.9.0.0/24] }\n",
        )
        .unwrap();
        assert_eq!(
            y.validate(Path::new("x.yaml"), "ike").unwrap_err().key,
            "ike.connections[0].psk"
        );
    }

    #[test]
    fn a_pool_skips_network_and_broadcast() {
        let y: IkeYaml = crate::config::parse(
            Path::new("x.yaml"),
            "connections:\n  - { name: rw, local_id: gw, psk: \"0123456789\", pool: 10.99.0.0/24, local_ts: [10.9.0.0/24] }\n",
        )
        .unwrap();
        let c = y.validate(Path::new("x.yaml"), "ike").unwrap();
        let pool = c[0].peer.pool.clone().unwrap();
        assert_eq!(
            pool.first,
            "10.99.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(pool.count, 254);
        assert!(
            !format!("{:?}", y.connections[0]).contains("0123456789"),
            "no key in Debug"
        );
    }

    #[test]
    fn lifetimes_are_read_and_a_hard_one_must_follow_the_soft_one() {
        let base = "connections:\n  - { name: rw, local_id: gw, psk: \"0123456789\", remote_ts: [10.0.0.0/8], local_ts: [10.9.0.0/24], ";
        let y: IkeYaml = crate::config::parse(
            Path::new("x.yaml"),
            &format!("{base}child_rekey_secs: 60, child_life_secs: 66, child_rekey_bytes: 1000, child_life_packets: 50 }}\n"),
        )
        .unwrap();
        let c = y.validate(Path::new("x.yaml"), "ike").unwrap();
        assert_eq!(
            c[0].peer.child_life,
            Some(std::time::Duration::from_secs(66))
        );
        assert_eq!(
            c[0].child_lifetime,
            Lifetime {
                soft_bytes: 1000,
                hard_packets: 50,
                ..Lifetime::default()
            }
        );
        let y: IkeYaml = crate::config::parse(
            Path::new("x.yaml"),
            &format!("{base}child_rekey_packets: 100, child_life_packets: 100 }}\n"),
        )
        .unwrap();
        let e = y.validate(Path::new("x.yaml"), "ike").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].child_life_packets");
        assert!(e.to_string().contains("child_rekey_packets"), "{e}");
    }

    #[test]
    fn fragmentation_keys_have_defaults_and_bounds_and_errors_name_the_key() {
        let f = Path::new("x.yaml");
        let parse = |t: &str| crate::config::parse::<IkeYaml>(f, t).unwrap();
        assert_eq!(
            parse("{}").fragmentation(f, "ike").unwrap(),
            Fragmentation::default()
        );
        let g = parse(
            "fragmentation: false\nfragment_size: 1200\nfragment_size_v6: 1400\nfragment_timeout_secs: 5\n",
        )
        .fragmentation(f, "ike")
        .unwrap();
        assert_eq!(
            (g.enabled, g.size_v4, g.size_v6, g.timeout.as_secs()),
            (false, 1200, 1400, 5)
        );
        for (text, key) in [
            ("fragment_size: 100", "ike.fragment_size"),
            ("fragment_size: 70000", "ike.fragment_size"),
            ("fragment_size_v6: 199", "ike.fragment_size_v6"),
            ("fragment_timeout_secs: 0", "ike.fragment_timeout_secs"),
        ] {
            let e = parse(text).validate(f, "ike").unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.to_string().contains("x.yaml"), "{e}");
        }
    }

    #[test]
    fn admission_keys_have_defaults_and_bounds_and_errors_name_the_key() {
        let f = Path::new("x.yaml");
        let parse = |t: &str| crate::config::parse::<IkeYaml>(f, t).unwrap();
        let (a, t) = parse("{}").admission(f, "ike").unwrap();
        assert_eq!(a, Admission::default());
        assert_eq!(t, EndpointConfig::default().half_open_timeout);
        let (a, t) = parse(
            "cookie_threshold: 0\nhalf_open_max: 100\nhalf_open_per_source: 3\nhalf_open_timeout_secs: 5\ncookie_secret_secs: 30\ncookie_grace_secs: 4\n",
        )
        .admission(f, "ike")
        .unwrap();
        assert_eq!(
            a,
            Admission {
                cookie_threshold: 0,
                half_open_max: 100,
                half_open_per_source: 3,
                cookie_secret_lifetime: std::time::Duration::from_secs(30),
                cookie_grace: std::time::Duration::from_secs(4),
            }
        );
        assert_eq!(t, std::time::Duration::from_secs(5));
        for (text, key) in [
            ("half_open_max: 0", "ike.half_open_max"),
            ("half_open_max: 2000000", "ike.half_open_max"),
            (
                "half_open_max: 10\ncookie_threshold: 11",
                "ike.cookie_threshold",
            ),
            ("half_open_per_source: 0", "ike.half_open_per_source"),
            (
                "half_open_max: 10\ncookie_threshold: 5\nhalf_open_per_source: 11",
                "ike.half_open_per_source",
            ),
            ("half_open_timeout_secs: 0", "ike.half_open_timeout_secs"),
            ("half_open_timeout_secs: 301", "ike.half_open_timeout_secs"),
            ("cookie_secret_secs: 9", "ike.cookie_secret_secs"),
            ("cookie_grace_secs: 0", "ike.cookie_grace_secs"),
            (
                "cookie_secret_secs: 20\ncookie_grace_secs: 21",
                "ike.cookie_grace_secs",
            ),
        ] {
            let e = parse(text).validate(f, "ike").unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.to_string().contains("x.yaml"), "{e}");
        }
        assert!(
            crate::config::parse::<IkeYaml>(f, "cookie_treshold: 3").is_err(),
            "typo"
        );
    }

    fn gateway(lan: &str, wan: &str, extra: &str) -> GatewayConfig {
        crate::config::parse(
            Path::new("x.yaml"),
            &format!(
                "name: gw\nlan: {{ address: {lan}, neighbor_mac: \"02:00:00:00:00:01\" }}\nwan: {{ address: {wan}, neighbor_mac: \"02:00:00:00:00:02\" }}\n{extra}"
            ),
        )
        .unwrap()
    }

    fn rw(pool: &str, local_ts: &str) -> IkeYaml {
        crate::config::parse(
            Path::new("x.yaml"),
            &format!("connections:\n  - {{ name: rw, local_id: gw, psk: \"0123456789\", pool: {pool}, local_ts: [{local_ts}] }}\n"),
        )
        .unwrap()
    }

    #[test]
    fn a_pool_must_not_overlap_the_lan_selectors_or_the_wan_subnet() {
        let f = Path::new("x.yaml");
        let check = |y: &IkeYaml, gw: &GatewayConfig| {
            y.validate(f, "ike").unwrap();
            y.check_against(gw, f, "ike", "gateway")
        };
        let gw = gateway("10.9.0.1", "192.0.2.1", "");
        assert!(check(&rw("10.99.0.0/24", "10.9.0.0/24"), &gw).is_ok());
        // A full tunnel (0.0.0.0/0) is not a LAN.
        assert!(check(&rw("10.99.0.0/24", "0.0.0.0/0"), &gw).is_ok());

        let e = check(&rw("10.9.0.128/25", "10.9.0.0/24"), &gw).unwrap_err();
        assert_eq!(e.key, "ike.connections[0].pool", "{e}");
        assert!(e.what.contains("ike.connections[0].local_ts[0]"), "{e}");
        // A pool that holds the gateway's own WAN address, and one inside the WAN subnet.
        let e = check(&rw("192.0.2.0/24", "10.9.0.0/24"), &gw).unwrap_err();
        assert_eq!(e.key, "ike.connections[0].pool", "{e}");
        assert!(e.what.contains("gateway.wan subnet"), "{e}");
        let mut gw24 = gateway("10.9.0.1", "192.0.2.1", "");
        gw24.wan.prefix_len = Some(24);
        let e = check(&rw("192.0.2.128/26", "10.9.0.0/24"), &gw24).unwrap_err();
        assert!(e.what.contains("gateway.wan subnet (192.0.2.0/24)"), "{e}");
        assert!(
            check(&rw("192.0.2.128/26", "10.9.0.0/24"), &gw).is_ok(),
            "no prefix: only the address"
        );
        // A protect rule's LAN side.
        let gw_sa = gateway(
            "10.9.0.1",
            "192.0.2.1",
            "sas:\n  - { name: o, direction: out, spi: 0x1000, aead: aes-gcm-128, key: \"00112233445566778899aabbccddeeff00112233\", local: 192.0.2.1, remote: 192.0.2.2, local_ts: 10.8.0.0/16, remote_ts: 10.1.0.0/16 }\npolicies:\n  - { src: 10.8.0.0/16, dst: 10.1.0.0/16, action: protect, sa: o }\n",
        );
        let e = check(&rw("10.8.3.0/24", "10.9.0.0/24"), &gw_sa).unwrap_err();
        assert!(e.what.contains("gateway.sas[0].local_ts"), "{e}");
    }

    #[test]
    fn a_client_initiates_every_connection() {
        let y: IkeYaml = crate::config::parse(
            Path::new("c.yaml"),
            "connections:\n  - { name: home, local_id: rw, psk: \"0123456789\", remote_ts: [10.9.0.0/24], request_vip: true }\n",
        )
        .unwrap();
        let e = y.validate_client(Path::new("c.yaml"), "ike").unwrap_err();
        assert_eq!(e.key, "ike.connections[0].remote_addr");
        let empty = IkeYaml::default();
        assert_eq!(
            empty
                .validate_client(Path::new("c.yaml"), "ike")
                .unwrap_err()
                .key,
            "ike.connections"
        );
    }
}
