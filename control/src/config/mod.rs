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
    /// Dotted key path, e.g. `site_a.sas[1].key`; empty when the parser located it by line.
    pub key: String,
    pub what: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.what)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.what)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses a YAML file into `T`.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        what: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses YAML text that came from `path` (used for messages only).
pub fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| ConfigError {
        file: path.to_owned(),
        key: String::new(),
        what: e.to_string(),
    })
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

    #[test]
    fn hex() {
        assert_eq!(decode_hex("0x0aff 10").unwrap(), vec![0x0a, 0xff, 0x10]);
        assert!(decode_hex("abc").is_err());
        let e = decode_hex("zz").unwrap_err();
        assert!(!e.contains("zz"), "errors must not echo key material: {e}");
    }
}
