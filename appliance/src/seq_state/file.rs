//! The state file: its text format, its strict parser, and the durable write that replaces it.
//!
//! ```text
//! roamgate-seq-state 1
//! <key id: 32 hex digits> <mark: decimal>      one line per key, ascending key ids
//! end <the first 16 hex digits of SHA-256 of every byte before this line>
//! ```
//!
//! A write never changes the file in place: the new text goes to `FILE.tmp`, which is
//! fsync'd and renamed over `FILE`, and then the directory is fsync'd, so the name points at
//! the old or the new text, whole, whatever happens in between; a reservation is used only
//! after its write returned. A file that does not parse is refused with its name and the line,
//! never repaired or ignored: it could hide a mark.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::{KeyId, Marks};

const HEADER: &str = "roamgate-seq-state 1";

/// The state file of one owner, locked for as long as this value lives.
pub struct StateFile {
    path: PathBuf,
    _lock: Flock<File>,
}

/// How far a write got (tests stop it early to stand for a crash there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Half of the new text is in `FILE.tmp`.
    Half,
    /// All of it.
    Written,
    /// `FILE.tmp` is on disk.
    Synced,
    /// `FILE` is the new text.
    Renamed,
    /// The rename is on disk too: the write is done.
    DirSynced,
}

impl StateFile {
    /// Locks `FILE.lock` (refusing when another process holds it) and reads `FILE`: its marks,
    /// or None when it does not exist.
    pub fn open(path: &Path) -> Result<(StateFile, Option<Marks>)> {
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "sequence state {}: cannot open its lock file {}",
                    path.display(),
                    lock_path.display()
                )
            })?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "sequence state {}: another roamgate process holds it ({}: {e})",
                path.display(),
                lock_path.display()
            )
        })?;
        let marks = match std::fs::read(path) {
            Ok(bytes) => Some(parse(&bytes).map_err(|why| {
                anyhow::anyhow!(
                    "sequence state {} is unreadable ({why}): refusing to start static SAs \
                     whose sequence numbers (GCM nonces) it may hold; restore it, or remove \
                     it only together with new keys for every static SA",
                    path.display()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "sequence state {} cannot be read: refusing to start static SAs \
                         without it",
                        path.display()
                    )
                })
            }
        };
        Ok((
            StateFile {
                path: path.to_owned(),
                _lock: lock,
            },
            marks,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `marks`, durably (see the module doc).
    pub fn store(&self, marks: &Marks) -> Result<()> {
        self.store_until(marks, Step::DirSynced)
    }

    /// The write of [`store`](Self::store), stopped after `last`.
    pub fn store_until(&self, marks: &Marks, last: Step) -> Result<()> {
        let text = render(marks);
        let tmp = with_suffix(&self.path, ".tmp");
        let ctx = |what: &str| format!("sequence state {}: {what}", self.path.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| ctx(&format!("cannot create {}", tmp.display())))?;
        let bytes = text.as_bytes();
        let half = bytes.get(..bytes.len() / 2).unwrap_or(bytes);
        f.write_all(half).with_context(|| ctx("write"))?;
        if last == Step::Half {
            return Ok(());
        }
        f.write_all(bytes.get(half.len()..).unwrap_or(&[]))
            .with_context(|| ctx("write"))?;
        if last == Step::Written {
            return Ok(());
        }
        f.sync_all().with_context(|| ctx("fsync"))?;
        drop(f);
        if last == Step::Synced {
            return Ok(());
        }
        std::fs::rename(&tmp, &self.path).with_context(|| ctx("rename"))?;
        if last == Step::Renamed {
            return Ok(());
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| ctx(&format!("fsync of the directory {}", dir.display())))?;
        Ok(())
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file's text for `marks`.
pub fn render(marks: &Marks) -> String {
    let mut s = format!("{HEADER}\n");
    for (k, m) in &marks.0 {
        let hex: String = k.0.iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!("{hex} {m}\n"));
    }
    let sum = digest(s.as_bytes());
    s.push_str(&format!("end {sum}\n"));
    s
}

/// Parses the file's bytes; anything but exactly what [`render`] writes is an error.
pub fn parse(bytes: &[u8]) -> Result<Marks> {
    let text = std::str::from_utf8(bytes).map_err(|_| anyhow::anyhow!("not UTF-8"))?;
    let Some(body_len) = text.rfind("end ") else {
        bail!("no end line (a torn or foreign file)");
    };
    let (body, end) = text.split_at(body_len);
    let sum = end
        .strip_prefix("end ")
        .and_then(|s| s.strip_suffix('\n'))
        .ok_or_else(|| anyhow::anyhow!("the end line is malformed"))?;
    if sum != digest(body.as_bytes()) {
        bail!("its checksum does not match its content");
    }
    let mut lines = body.lines();
    match lines.next() {
        Some(HEADER) => {}
        Some(other) => bail!("line 1: '{other}' is not the header '{HEADER}'"),
        None => bail!("empty"),
    }
    let mut marks = Marks::default();
    let mut last: Option<KeyId> = None;
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let (hex, mark) = line
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("line {n}: not '<key id> <mark>'"))?;
        let key = parse_key(hex).ok_or_else(|| anyhow::anyhow!("line {n}: bad key id"))?;
        if mark.is_empty()
            || !mark.bytes().all(|b| b.is_ascii_digit())
            || (mark.len() > 1 && mark.starts_with('0'))
        {
            bail!("line {n}: bad mark");
        }
        let mark: u64 = mark
            .parse()
            .map_err(|_| anyhow::anyhow!("line {n}: bad mark"))?;
        if last.is_some_and(|l| l >= key) {
            bail!("line {n}: key ids out of order or repeated");
        }
        last = Some(key);
        marks.0.insert(key, mark);
    }
    Ok(marks)
}

fn parse_key(hex: &str) -> Option<KeyId> {
    if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(KeyId(k))
}
