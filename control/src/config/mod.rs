//! YAML configuration: one file per deployment (`configs/*.yaml`).
//!
//! This module owns reading and parsing a file and the one error type every schema reports
//! ([`ConfigError`]: file, key path, problem). The schemas live in their own modules:
//! [`gateway`] (interfaces, static SAs, policies, masquerade), [`ike`] (IKEv2 connections) and
//! [`lab`] (the embedded lab). The data plane's port schema (AF_XDP, DPDK) belongs to the
//! process that opens the ports, the appliance.
//!
//! Parsing happens in two steps. serde-saphyr turns the text into the schema's structs; each
//! schema's `validate` then checks what YAML cannot express (references between SAs and
//! policies, address families, window sizes). It must never print key material.

use core::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod gateway;
pub mod ike;
pub mod lab;

pub use gateway::{
    ActionName, AeadName, BackendChoice, DirectionName, GatewayConfig, GatewayPlan,
    InterfaceConfig, MacAddr, MasqueradeYaml, PolicyConfig, SaConfig, UdpEncapConfig,
};
pub use lab::{LabConfig, LabFlow, LabTraffic, Site, MAX_LAB_FRAME};

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `site_a.sas[1].key`; empty only for a file that cannot be read
    /// or a syntax error before the first key.
    pub key: String,
    pub what: String,
    /// Line and column (1-based) in the file, when the parser knows them.
    pub at: Option<(u64, u64)>,
}

impl ConfigError {
    /// An error found by validation: the key path says where.
    pub fn new(file: &Path, key: impl Into<String>, what: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            key: key.into(),
            what: what.into(),
            at: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.at {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.what)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses a YAML file into `T`.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    parse(path, &text)
}

/// Parses YAML text that came from `path` (used for messages only). Errors give the line and
/// column and the parser's message, never a snippet of the file: the lines around an error
/// may hold pre-shared keys and SA keys.
pub fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str_with_options(text, parser_options()).map_err(|e| parse_error(path, &e))
}

/// The parser keeps no snippet of the source in its errors (nothing to leak by accident).
fn parser_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o
}

fn parse_error(file: &Path, e: &serde_saphyr::Error) -> ConfigError {
    use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};
    ConfigError {
        file: file.to_owned(),
        key: String::new(),
        what: DefaultMessageFormatter
            .format_message(e.without_snippet())
            .into_owned(),
        at: e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| (l.line(), l.column())),
    }
}

/// Decodes hex (whitespace and a `0x` prefix allowed) without echoing it in errors.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    digits
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let hi = (pair[0] as char).to_digit(16);
            let lo = (pair[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
                _ => Err(format!("not a hex digit at byte {i}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken file whose error sits between a pre-shared key and an SA key.
    const SECRETS: &str = "gateway:\n  name: gw\n  sas:\n    - name: a\n      key: \"00aa11bb22cc33dd\"\nike:\n  connections:\n    - name: rw\n      psk: \"hunter2hunter2\"\n      local_id: [gw\n      remote_ts: [10.0.0.0/8]\n";

    #[test]
    fn a_parse_error_echoes_no_secret() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Any {
            gateway: serde::de::IgnoredAny,
            ike: serde::de::IgnoredAny,
        }
        let e = parse::<Any>(Path::new("x.yaml"), SECRETS)
            .unwrap_err()
            .to_string();
        for secret in ["hunter2", "00aa11bb22cc33dd"] {
            assert!(!e.contains(secret), "the error echoes a secret: {e}");
        }
        assert!(e.starts_with("x.yaml:11:"), "file, line and column: {e}");
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("0x0aff 10").unwrap(), vec![0x0a, 0xff, 0x10]);
        assert!(decode_hex("abc").is_err());
        let e = decode_hex("zz").unwrap_err();
        assert!(!e.contains("zz"), "errors must not echo key material: {e}");
    }
}
