//! YAML configuration: one file per deployment (`configs/*.yaml`).
//!
//! This module owns reading and parsing a file and the one error type every schema reports
//! ([`ConfigError`]: file, key path, problem). The schemas live in their own modules:
//! [`gateway`] (interfaces, static SAs, policies, masquerade), [`ike`] (IKEv2 connections),
//! [`lab`] (the embedded lab) and [`ha`] (a node of an HA pair). The data plane's port schema
//! (AF_XDP, DPDK) belongs to the process that opens the ports, the appliance.
//!
//! Parsing happens in two steps. serde-saphyr turns the text into the schema's structs; each
//! schema's `validate` then checks what YAML cannot express (references between SAs and
//! policies, address families, window sizes). It must never print key material.

use core::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod certs;
pub mod eap;
pub mod gateway;
pub mod group;
pub mod ha;
pub mod ike;
pub mod lab;
pub mod masq;
pub mod reload;
pub mod secret;
pub mod vcm;

pub use gateway::{
    ActionName, AeadName, BackendChoice, ChecksumChoice, DirectionName, GatewayConfig, GatewayPlan,
    InterfaceConfig, MacAddr, MasqueradeYaml, PolicyConfig, SaConfig, UdpEncapConfig,
};
pub use lab::{LabConfig, LabFlow, LabTraffic, Site, MAX_LAB_FRAME};
pub use secret::SecretString;

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

/// Reads and parses a YAML file into `T`. The text (keys and all) is held in memory that is
/// zeroized when parsing is done (`secret`).
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = secret::read_text(path)
        .map_err(|e| ConfigError::new(path, "", format!("cannot read: {e}")))?;
    parse(path, &text)
}

/// Parses YAML text that came from `path` (used for messages only). A parse error names the
/// key path where it happened (tracked while deserializing), its line and column and the
/// parser's message, never a snippet of the file (the lines around an error may hold keys);
/// a missing field is reported at the mapping that lacks it.
pub fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let mut at: Option<serde_path_to_error::Path> = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, parser_options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            at = Some(e.path().clone());
            e.into_inner()
        })
    })
    .map_err(|e| parse_error(path, text, at.as_ref(), &e))
}

/// The parser keeps no snippet of the source in its errors (nothing to leak by accident).
fn parser_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o
}

/// Names of keys whose values are secrets. A parse error under such a key (the key itself or
/// anything below it) never shows the offending value; validation errors name the key only.
pub const SECRET_KEYS: &[&str] = &[
    "psk",
    "key",
    "secret",
    "password",
    "passphrase",
    "private_key",
    "token",
];

/// Whether `name` is a secret key: one of [`SECRET_KEYS`], or a name ending in `_` and one of
/// them (`ike_psk`, `sa_key`, `client_secret`).
pub fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_KEYS
        .iter()
        .any(|s| name == *s || name.strip_suffix(s).is_some_and(|head| head.ends_with('_')))
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn steps(path: Option<&serde_path_to_error::Path>) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.map(|p| {
        p.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Step::Index(*index)),
                Segment::Map { key } => Some(Step::Key(key.clone())),
                Segment::Enum { variant } => Some(Step::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect()
    })
    .unwrap_or_default()
}

fn key_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn parse_error(
    file: &Path,
    text: &str,
    path: Option<&serde_path_to_error::Path>,
    e: &serde_saphyr::Error,
) -> ConfigError {
    use serde_saphyr::{DefaultMessageFormatter, Error, MessageFormatter};
    let mut steps = steps(path);
    let inner = e.without_snippet();
    let parser_at = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    let (what, at) = match inner {
        // serde reports a missing field when the mapping ends, which is wherever the next
        // thing starts: point at the mapping that lacks it instead.
        Error::SerdeMissingField { field, .. } => {
            let mapping = key_path(&steps);
            let at = Shape::position(text, &steps).or(parser_at);
            steps.push(Step::Key((*field).to_string()));
            let whose = if mapping.is_empty() {
                "the document".to_string()
            } else {
                mapping
            };
            let line = at.map(|(l, _)| format!(" (line {l})")).unwrap_or_default();
            (format!("missing: {whose}{line} has no `{field}`"), at)
        }
        other => {
            let secret = steps
                .iter()
                .any(|s| matches!(s, Step::Key(k) if is_secret_key(k)));
            let what = if secret && carries_value(other) {
                "not a valid value here (the value of a secret key is not shown)".to_string()
            } else if let Error::InvalidScalar { ty, .. } = other {
                scalar_expected(ty)
            } else if let Error::DuplicateMappingKey { key, .. } = other {
                match key {
                    Some(k) => format!("`{k}` appears twice here (each key once per mapping)"),
                    None => "a key appears twice here (each key once per mapping)".to_string(),
                }
            } else if matches!(other, Error::Eof { .. })
                && text.lines().all(|l| {
                    let l = l.trim();
                    l.is_empty() || l.starts_with('#')
                })
            {
                "the file has no settings (it is empty, or comments only)".to_string()
            } else {
                DefaultMessageFormatter.format_message(other).into_owned()
            };
            (what, parser_at.or_else(|| Shape::position(text, &steps)))
        }
    };
    ConfigError {
        file: file.to_owned(),
        key: key_path(&steps),
        what,
        at,
    }
}

/// What a scalar of the parser's type `ty` must be ("invalid u16" alone does not say).
fn scalar_expected(ty: &str) -> String {
    let range =
        |lo: i128, hi: i128| format!("not valid here: expected a whole number from {lo} to {hi}");
    match ty {
        "u8" => range(0, u8::MAX.into()),
        "u16" => range(0, u16::MAX.into()),
        "u32" => range(0, u32::MAX.into()),
        "u64" | "usize" => range(0, u64::MAX.into()),
        "i8" => range(i8::MIN.into(), i8::MAX.into()),
        "i16" => range(i16::MIN.into(), i16::MAX.into()),
        "i32" => range(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => range(i64::MIN.into(), i64::MAX.into()),
        "boolean" => "not valid here: expected true or false".to_string(),
        "floating point" => "not valid here: expected a finite number".to_string(),
        other => format!("not a valid {other}"),
    }
}

/// Whether the parser's message for `e` may quote the value it could not take (serde's
/// invalid type/value, unknown variant, custom messages of our own types).
fn carries_value(e: &serde_saphyr::Error) -> bool {
    use serde_saphyr::Error;
    !matches!(
        e,
        Error::Eof { .. }
            | Error::Unexpected { .. }
            | Error::InvalidScalar { .. }
            | Error::SerdeMissingField { .. }
            | Error::SerdeUnknownField { .. }
            | Error::SerdeInvalidLength { .. }
            | Error::DuplicateMappingKey { .. }
            | Error::NullIntoString { .. }
    )
}

/// The shape of a YAML document with each node's position and none of its values: enough to
/// find where a key path starts.
enum Shape {
    Map(Vec<(Option<String>, serde_saphyr::Spanned<Shape>)>),
    Seq(Vec<serde_saphyr::Spanned<Shape>>),
    Leaf,
}

impl Shape {
    /// Line and column of the node at `steps` in `text`.
    fn position(text: &str, steps: &[Step]) -> Option<(u64, u64)> {
        let root: serde_saphyr::Spanned<Shape> =
            serde_saphyr::from_str_with_options(text, parser_options()).ok()?;
        let mut node = &root;
        for s in steps {
            node = match (&node.value, s) {
                (Shape::Map(entries), Step::Key(k)) => entries
                    .iter()
                    .find(|(name, _)| name.as_deref() == Some(k.as_str()))
                    .map(|(_, v)| v)?,
                (Shape::Seq(items), Step::Index(i)) => items.get(*i)?,
                _ => return None,
            };
        }
        let l = node.referenced;
        (l.line() > 0).then(|| (l.line(), l.column()))
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_none<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        Shape::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = a.next_element()? {
            items.push(v);
        }
        Ok(Shape::Seq(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
        let mut entries = Vec::new();
        while let Some(KeyName(k)) = a.next_key()? {
            entries.push((k, a.next_value()?));
        }
        Ok(Shape::Map(entries))
    }
}

/// A mapping key as text when it is a scalar (`None` for a complex key).
struct KeyName(Option<String>);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E>(self, s: &str) -> Result<KeyName, E> {
                Ok(KeyName(Some(s.to_string())))
            }
            fn visit_bool<E>(self, b: bool) -> Result<KeyName, E> {
                Ok(KeyName(Some(b.to_string())))
            }
            fn visit_i64<E>(self, n: i64) -> Result<KeyName, E> {
                Ok(KeyName(Some(n.to_string())))
            }
            fn visit_u64<E>(self, n: u64) -> Result<KeyName, E> {
                Ok(KeyName(Some(n.to_string())))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_unit<E>(self) -> Result<KeyName, E> {
                Ok(KeyName(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<KeyName, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(KeyName(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<KeyName, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(KeyName(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A 32-byte key given as `psk` (64 hex digits) or read from `psk_file` (exactly one of the
/// two), at key path `at`; errors name the key, never echo it. `what` names the key in
/// messages ("the sync key").
pub fn read_key32(
    psk: &Option<String>,
    psk_file: &Option<String>,
    file: &Path,
    at: &str,
    what: &str,
) -> Result<zeroize::Zeroizing<[u8; 32]>, ConfigError> {
    let (text, k) = match (psk, psk_file) {
        (Some(p), None) => (zeroize::Zeroizing::new(p.clone()), "psk"),
        (None, Some(f)) => (
            zeroize::Zeroizing::new(std::fs::read_to_string(f).map_err(|e| {
                ConfigError::new(
                    file,
                    format!("{at}.psk_file"),
                    format!("cannot read {f}: {e}"),
                )
            })?),
            "psk_file",
        ),
        _ => {
            return Err(ConfigError::new(
                file,
                format!("{at}.psk"),
                "give exactly one of psk and psk_file",
            ))
        }
    };
    let bytes = decode_hex(&text).map_err(|w| ConfigError::new(file, format!("{at}.{k}"), w))?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        ConfigError::new(
            file,
            format!("{at}.{k}"),
            format!(
                "{what} is {} bytes; it must be 32 (64 hex digits, e.g. from `openssl rand \
                 -hex 32`)",
                bytes.len()
            ),
        )
    })?;
    Ok(zeroize::Zeroizing::new(key))
}

/// Decodes hex (whitespace and a `0x` prefix allowed) without echoing it in errors.
pub fn decode_hex(s: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").unwrap_or(s);
    // Hex of a key is the key: both copies live in zeroizing buffers.
    let digits: zeroize::Zeroizing<Vec<u8>> =
        zeroize::Zeroizing::new(s.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for (i, pair) in digits.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err(format!("not a hex digit at byte {i}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        key: String,
        #[serde(default)]
        spi: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Gw {
        name: String,
        #[serde(default)]
        sas: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct File {
        gateway: Gw,
    }

    const ITEMS: &str = "gateway:\n  name: gw\n  sas:\n    - name: a\n      key: \"00\"\n    - name: b\n      key: \"01\"\n    - name: c\n      spi: 300\n    - name: d\n      key: \"03\"\n";

    #[test]
    fn a_missing_field_names_its_key_path_and_the_mapping_that_lacks_it() {
        let e = parse::<File>(Path::new("x.yaml"), ITEMS).unwrap_err();
        assert_eq!(e.key, "gateway.sas[2].key", "{e}");
        // `- name: c` is on line 8: the mapping that lacks the key, not the next item.
        assert_eq!(e.at, Some((8, 7)), "{e}");
        assert!(
            e.to_string()
                .starts_with("x.yaml:8:7: gateway.sas[2].key: missing"),
            "{e}"
        );
        assert!(e.what.contains("gateway.sas[2] (line 8)"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_its_key_path_and_line() {
        let bad = ITEMS.replace("spi: 300", "spi: lots\n      key: \"02\"");
        let e = parse::<File>(Path::new("x.yaml"), &bad).unwrap_err();
        assert_eq!(e.key, "gateway.sas[2].spi", "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(9), "{e}");
        assert!(e.to_string().starts_with("x.yaml:9:"), "{e}");
    }

    #[test]
    fn a_number_out_of_range_says_what_the_key_takes() {
        for (bad, line) in [("spi: -1", 9), ("spi: 4294967296", 9), ("spi: 2.5", 9)] {
            let text = ITEMS.replace("spi: 300", &format!("{bad}\n      key: \"02\""));
            let e = parse::<File>(Path::new("x.yaml"), &text).unwrap_err();
            assert_eq!(e.key, "gateway.sas[2].spi", "{e}");
            assert_eq!(e.at.map(|a| a.0), Some(line), "{e}");
            assert!(
                e.what.contains("a whole number from 0 to 4294967295"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_repeated_key_and_an_empty_file_are_said_plainly() {
        let bad = ITEMS.replace("spi: 300", "spi: 300\n      spi: 301\n      key: \"02\"");
        let e = parse::<File>(Path::new("x.yaml"), &bad).unwrap_err();
        assert!(e.key.starts_with("gateway.sas[2]"), "{e}");
        assert_eq!(
            e.what, "`spi` appears twice here (each key once per mapping)",
            "{e}"
        );
        for empty in ["", "\n  \n", "# gateway:\n#   name: gw\n"] {
            let e = parse::<File>(Path::new("x.yaml"), empty).unwrap_err();
            assert_eq!(
                e.what, "the file has no settings (it is empty, or comments only)",
                "{e}"
            );
            assert!(e.to_string().starts_with("x.yaml"), "{e}");
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_path() {
        let bad = ITEMS.replace("spi: 300", "sip: 300\n      key: \"02\"");
        let e = parse::<File>(Path::new("x.yaml"), &bad).unwrap_err();
        assert!(e.key.starts_with("gateway.sas[2]"), "{e}");
        assert!(e.what.contains("unknown field `sip`"), "{e}");
        assert_eq!(e.at.map(|a| a.0), Some(9), "{e}");
    }

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
    fn a_value_error_under_a_secret_key_does_not_quote_the_value() {
        // MacAddr's error quotes what it was given: under a secret key it must not.
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Sa {
            name: String,
            psk: MacAddr,
            mac: MacAddr,
        }
        let e = parse::<Sa>(
            Path::new("x.yaml"),
            "name: a\npsk: hunter2hunter2\nmac: 02:00\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "psk", "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = parse::<Sa>(
            Path::new("x.yaml"),
            "name: a\npsk: 02:00:00:00:00:01\nmac: 02:00\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "mac", "{e}");
        assert!(
            e.what.contains("'02:00' is not a MAC address"),
            "other values are named: {e}"
        );
        assert!(is_secret_key("psk") && is_secret_key("ike_psk") && is_secret_key("private_key"));
        assert!(!is_secret_key("psk_file") && !is_secret_key("monkey") && !is_secret_key("keys"));
    }

    #[test]
    fn hex() {
        assert_eq!(*decode_hex("0x0aff 10").unwrap(), vec![0x0a, 0xff, 0x10]);
        assert!(decode_hex("abc").is_err());
        let e = decode_hex("zz").unwrap_err();
        assert!(!e.contains("zz"), "errors must not echo key material: {e}");
    }
}
