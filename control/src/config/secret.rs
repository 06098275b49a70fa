//! Configuration text and the secrets in it (pre-shared keys, static SA keys) kept only in
//! memory that is zeroized when dropped: [`read_text`] reads a file into such a buffer (sized
//! from the file first, grown only by copying into a new zeroizing buffer, so no copy of the
//! text is ever left behind in freed memory), and [`SecretString`] holds a secret value of a
//! schema.
//!
//! What this cannot reach: the YAML parser's own temporaries while it turns the text into a
//! schema's structs, and the copies the consumers of a key make (the IKE core's and the data
//! plane's key material is zeroizing on its own).
//!
//! Owns: reading configuration files, the secret value type.
//! Must never: leave configuration text or a secret in memory it does not wipe; print a
//! secret.

use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

/// A secret value of a configuration file: zeroized when dropped, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl core::ops::Deref for SecretString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> SecretString {
        SecretString(Zeroizing::new(s.to_owned()))
    }
}

impl core::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "<redacted>")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
        String::deserialize(d).map(|s| SecretString(Zeroizing::new(s)))
    }
}

/// The whole of `r` in a zeroizing buffer of `hint + 1` bytes, grown (by copying into a new
/// zeroizing buffer, the old one wiped) only when `r` holds more than `hint` bytes.
pub fn read_zeroizing(r: &mut impl Read, hint: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; hint.saturating_add(1)]);
    let mut len = 0;
    loop {
        if len == buf.len() {
            let mut bigger = Zeroizing::new(vec![0u8; buf.len().saturating_mul(2).max(64)]);
            bigger[..len].copy_from_slice(&buf[..len]);
            buf = bigger;
        }
        match r.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Shortening never reallocates; the bytes past `len` are zeros already.
    buf.truncate(len);
    Ok(buf)
}

/// The bytes of the file at `path` in a zeroizing buffer (see [`read_zeroizing`]).
pub fn read_bytes(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut f = std::fs::File::open(path)?;
    let hint = f
        .metadata()
        .ok()
        .and_then(|m| usize::try_from(m.len()).ok())
        .unwrap_or(0);
    read_zeroizing(&mut f, hint)
}

/// The text of the file at `path` in a zeroizing buffer.
pub fn read_text(path: &Path) -> io::Result<Zeroizing<String>> {
    let mut bytes = read_bytes(path)?;
    match String::from_utf8(core::mem::take(&mut *bytes)) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, as a pipe would.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(7).min(self.0.len() - self.1);
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn the_whole_input_arrives_whatever_the_size_hint() {
        for len in [0usize, 1, 63, 64, 65, 4096, 10_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for hint in [0, 3, len, len + 10] {
                let got = read_zeroizing(&mut Trickle(data.clone(), 0), hint).unwrap();
                assert_eq!(got.as_slice(), data.as_slice(), "len {len} hint {hint}");
            }
        }
    }

    #[test]
    fn a_file_is_read_into_the_buffer_sized_for_it_and_never_copied() {
        let dir = std::env::temp_dir().join(format!("roamgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.yaml");
        let text =
            "ike:\n  connections:\n    - { name: rw, psk: \"0123456789abcdef\" }\n".repeat(200);
        std::fs::write(&path, &text).unwrap();
        let bytes = read_bytes(&path).unwrap();
        assert_eq!(bytes.as_slice(), text.as_bytes());
        // The one allocation made for the file's size: no growth left a copy behind.
        assert_eq!(bytes.capacity(), text.len() + 1);
        let read = read_text(&path).unwrap();
        assert_eq!(read.as_str(), text);
        std::fs::write(&path, [0xffu8, 0xfe]).unwrap();
        assert!(read_text(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_value_never_prints() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct S {
            psk: SecretString,
        }
        let s: S = crate::config::parse(Path::new("x.yaml"), "psk: hunter2-hunter2\n").unwrap();
        assert_eq!(&*s.psk, "hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
