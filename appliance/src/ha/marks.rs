//! The HA node's durable sequence marks (`Output::Persist` of `control::ha::Node`): per
//! outbound SA, the highest sequence number this node may have sent on its own (unpaired).
//!
//! This module owns the file: one line per SA (`id seq`, decimal) after a header line,
//! written to a temporary file next to it, fsynced, renamed over the old one and the
//! directory fsynced, so a crash leaves the old marks or the new ones, never a mix. A file
//! that does not parse stops the start with its name and line: guessing marks could reuse a
//! nonce. It never lowers a mark on its own (the node decides what to write) and never holds
//! key material.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::SaId;

const HEADER: &str = "roamgate-ha-marks 1";

/// The marks file of one node.
pub struct MarksFile {
    path: PathBuf,
}

/// What one write of the marks gave: the node's token, the marks, whether they are on disk.
pub type Stored = (u64, BTreeMap<SaId, u64>, Result<()>);

/// The marks file written on a thread of its own: an fsync takes hundreds of milliseconds on
/// a busy disk, and the control loop must go on meanwhile (heartbeats, a takeover's inbound
/// SAs and announcements). Nothing is lost by the wait: the node sends above a mark only
/// after `Node::persisted`, which follows the write's answer. Writes happen in order.
pub struct MarksWriter {
    tx: std::sync::mpsc::Sender<(u64, BTreeMap<SaId, u64>)>,
    done: std::sync::mpsc::Receiver<Stored>,
}

impl MarksWriter {
    pub fn start(file: MarksFile) -> Result<MarksWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<(u64, BTreeMap<SaId, u64>)>();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ha-marks".into())
            .spawn(move || {
                for (token, marks) in rx {
                    let r = file.store(&marks);
                    if done_tx.send((token, marks, r)).is_err() {
                        break;
                    }
                }
            })
            .context("starting the marks writer")?;
        Ok(MarksWriter { tx, done })
    }

    /// Queues a write (answered through [`MarksWriter::stored`]); false if the writer is gone.
    pub fn store(&self, token: u64, marks: BTreeMap<SaId, u64>) -> bool {
        self.tx.send((token, marks)).is_ok()
    }

    /// A finished write, if any.
    pub fn stored(&self) -> Option<Stored> {
        self.done.try_recv().ok()
    }
}

/// The default place: next to the config file, CONFIG.ha-marks.
pub fn default_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".ha-marks");
    config.with_file_name(name)
}

impl MarksFile {
    /// Opens `path` and reads the marks in it (none if it does not exist yet).
    pub fn open(path: &Path) -> Result<(MarksFile, BTreeMap<SaId, u64>)> {
        let f = MarksFile {
            path: path.to_owned(),
        };
        let marks = match std::fs::read_to_string(path) {
            Ok(text) => parse(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok((f, marks))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's marks with `marks`, durably (see the module documentation).
    pub fn store(&self, marks: &BTreeMap<SaId, u64>) -> Result<()> {
        let mut text = String::with_capacity(32 + marks.len() * 24);
        text.push_str(HEADER);
        text.push('\n');
        for (id, seq) in marks {
            text.push_str(&format!("{} {seq}\n", id.0));
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing the directory {}", dir.display()))?;
        Ok(())
    }
}

fn parse(path: &Path, text: &str) -> Result<BTreeMap<SaId, u64>> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!(
            "{}: line 1: not a roamgate HA marks file (expected {HEADER:?}); move it away \
             only if this node never sent on its own",
            path.display()
        );
    }
    let mut marks = BTreeMap::new();
    for (i, line) in lines.enumerate() {
        let n = i.saturating_add(2);
        let mut it = line.split_ascii_whitespace();
        let (Some(id), Some(seq), None) = (it.next(), it.next(), it.next()) else {
            bail!("{}: line {n}: expected `id seq`", path.display());
        };
        let (Ok(id), Ok(seq)) = (id.parse::<u32>(), seq.parse::<u64>()) else {
            bail!("{}: line {n}: not two decimal numbers", path.display());
        };
        if marks.insert(SaId(id), seq).is_some() {
            bail!("{}: line {n}: SA {id} is listed twice", path.display());
        }
    }
    Ok(marks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "roamgate-ha-marks-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn marks_survive_a_reopen_and_replace_the_old_ones() {
        let d = dir();
        let p = d.join("n.ha-marks");
        let (f, m) = MarksFile::open(&p).unwrap();
        assert!(m.is_empty());
        f.store(&BTreeMap::from([(SaId(7), 100), (SaId(9), 5)]))
            .unwrap();
        f.store(&BTreeMap::from([(SaId(7), 200)])).unwrap();
        let (_, m) = MarksFile::open(&p).unwrap();
        assert_eq!(m, BTreeMap::from([(SaId(7), 200)]));
        assert!(!d.join("n.ha-marks.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_file_stops_the_start_with_its_name_and_line() {
        let d = dir();
        let p = d.join("bad.ha-marks");
        for (text, what) in [
            ("garbage\n", "line 1"),
            ("roamgate-ha-marks 1\n7 x\n", "line 2"),
            ("roamgate-ha-marks 1\n7 1\n7 2\n", "listed twice"),
            ("roamgate-ha-marks 1\n7\n", "expected"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = MarksFile::open(&p).err().unwrap().to_string();
            assert!(e.contains("bad.ha-marks") && e.contains(what), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
