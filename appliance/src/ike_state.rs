//! The IKE state directory of `roamgate control` (`--ike-state DIR`; `run` puts it in its
//! private run directory): one file per established IKE SA, `<our SPI>.ikesa`, in the byte
//! form of `control::core::durable` (the IKE SA's record, keys included, and the data-plane
//! SAs of its CHILD_SAs). The core decides what is written and when (before any datagram or
//! update that depends on it); this file does the writing and, at start, the reading.
//!
//! A write never changes a file in place: the bytes go to `NAME.tmp`, which is fsync'd and
//! renamed over `NAME`, then the directory is fsync'd, so a name holds the old or the new
//! bytes, whole, whatever happens in between (a crash leaves at most a `.tmp`, removed at the
//! next start). Several IKE SAs written together (an IKE SA rekey changes two) are all or
//! none: every `NAME.tmp` is fsync'd, then a `journal` naming them is written the same way
//! (its rename is the commit), then the renames follow and the journal goes. A start that
//! finds a journal finishes its renames (each `.tmp` it names is whole and on disk); one that
//! finds `.tmp` files without a journal removes them (the write never committed). [`Driver`](control::driver::Driver) calls it in the order of the core's outputs,
//! and a failed write stops the process before anything that followed it leaves. A deleted
//! IKE SA's file is removed (and the directory fsync'd).
//!
//! At start every file is read: a file that is truncated, corrupt (its SHA-256), of another
//! version, or whose record the endpoint refuses is named with the reason, counted, and
//! renamed to `NAME.refused` (kept for inspection, never read again), never a panic. The
//! directory is mode 0700 and locked (`lock`): one control process owns it.
//!
//! Owns: the directory, its lock, the durable write and the start-up read.
//! Must never: decide what to store (the core does); print a record's content.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use control::core::durable::{file_name, parse_file_name, StoreError, StoredIkeSa};
use control::driver::IkeStore;
use ike::IkeSaId;
use nix::fcntl::{Flock, FlockArg};

/// The file that commits a write of several IKE SAs (see the module documentation).
const JOURNAL: &str = "journal";

/// Finishes a committed write of several IKE SAs that a crash cut short.
fn redo_journal(dir: &Path) -> Result<()> {
    let journal = dir.join(JOURNAL);
    let text = match std::fs::read_to_string(&journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("IKE state: reading {}", journal.display()))
        }
    };
    for name in text.lines().filter(|n| parse_file_name(n).is_some()) {
        let tmp = dir.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::rename(&tmp, dir.join(name))
                .with_context(|| format!("IKE state: finishing the write of {}", tmp.display()))?;
        }
    }
    let sync = || File::open(dir).and_then(|d| d.sync_all());
    sync().with_context(|| format!("IKE state {}: fsync", dir.display()))?;
    std::fs::remove_file(&journal)
        .with_context(|| format!("IKE state: removing {}", journal.display()))?;
    sync().with_context(|| format!("IKE state {}: fsync", dir.display()))
}

/// The IKE state directory, locked.
pub struct IkeStateDir {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// What the directory held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub stored: Vec<StoredIkeSa>,
    /// Files that could not be read, and why (renamed to `NAME.refused`).
    pub refused: Vec<(String, StoreError)>,
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl IkeStateDir {
    /// Creates (mode 0700) or opens `dir`, locks it, and reads what it holds.
    pub fn open(dir: &Path) -> Result<(IkeStateDir, Loaded)> {
        let ctx = |what: &str| format!("IKE state {}: {what}", dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| ctx("cannot create the directory"))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| ctx("cannot make the directory private"))?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))
            .with_context(|| ctx("cannot open its lock file"))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::anyhow!(
                "{}",
                ctx(&format!("another control process holds it ({e})"))
            )
        })?;
        redo_journal(dir)?;
        let mut loaded = Loaded::default();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| ctx("cannot list it"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if name.ends_with(".tmp") {
                // A write the crash cut short: the file it was for still holds the last whole
                // version.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = parse_file_name(&name) else {
                continue;
            };
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(&path).with_context(|| ctx(&format!("cannot read {name}")))?,
            );
            match StoredIkeSa::from_bytes(&bytes) {
                Ok(s) if s.record.id() == id => loaded.stored.push(s),
                Ok(_) => loaded.refused.push((
                    name.clone(),
                    StoreError::Record(ike::RecordError::Invalid(
                        "the file's name is another IKE SA's",
                    )),
                )),
                Err(e) => loaded.refused.push((name.clone(), e)),
            }
        }
        let this = IkeStateDir {
            dir: dir.to_owned(),
            _lock: lock,
        };
        for (name, _) in &loaded.refused {
            this.set_aside(name)?;
        }
        Ok((this, loaded))
    }

    /// Renames a file that cannot be adopted to `NAME.refused`.
    pub fn set_aside(&self, name: &str) -> Result<()> {
        let from = self.dir.join(name);
        let to = self.dir.join(format!("{name}.refused"));
        std::fs::rename(&from, &to)
            .with_context(|| format!("IKE state: cannot rename {}", from.display()))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("IKE state {}: fsync of the directory", self.dir.display()))
    }

    /// Writes `NAME.tmp` whole and fsync'd.
    fn write_tmp(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let ctx = |what: &str| format!("IKE state {}: {what}", tmp.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| ctx("cannot create it"))?;
        f.write_all(bytes).with_context(|| ctx("write"))?;
        f.sync_all().with_context(|| ctx("fsync"))
    }

    fn rename_tmp(&self, name: &str) -> Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::rename(&tmp, self.dir.join(name))
            .with_context(|| format!("IKE state {}: rename", tmp.display()))
    }

    fn write_batch(&self, batch: &[(IkeSaId, &[u8])]) -> Result<()> {
        let names: Vec<String> = batch.iter().map(|(id, _)| file_name(*id)).collect();
        for (name, (_, bytes)) in names.iter().zip(batch) {
            self.write_tmp(name, bytes)?;
        }
        if names.len() > 1 {
            // The commit: from here on a start finishes the renames.
            self.write_tmp(JOURNAL, names.join("\n").as_bytes())?;
            self.rename_tmp(JOURNAL)?;
            self.sync_dir()?;
        }
        for name in &names {
            self.rename_tmp(name)?;
        }
        self.sync_dir()?;
        if names.len() > 1 {
            std::fs::remove_file(self.dir.join(JOURNAL)).with_context(|| {
                format!("IKE state {}: removing the journal", self.dir.display())
            })?;
            self.sync_dir()?;
        }
        Ok(())
    }

    fn remove_file(&self, id: IkeSaId) -> Result<()> {
        let path = self.dir.join(file_name(id));
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("IKE state: cannot remove {}", path.display()))
            }
        }
    }
}

impl IkeStore for IkeStateDir {
    fn write(&mut self, batch: &[(IkeSaId, &[u8])]) -> Result<(), String> {
        self.write_batch(batch).map_err(|e| format!("{e:#}"))
    }

    fn remove(&mut self, ike: IkeSaId) -> Result<(), String> {
        self.remove_file(ike).map_err(|e| format!("{e:#}"))
    }
}

/// Opens the IKE state directory `dir` for `driver`: the stored IKE SAs are adopted (counted;
/// refused ones named, their files set aside), the data plane is reconciled with them
/// (`ControlCore::adopt_stored`), and every change from now on is written before it leaves.
pub fn attach(driver: &mut control::driver::Driver, now: ike::Instant, dir: &Path) -> Result<()> {
    let (store, loaded) = IkeStateDir::open(dir)?;
    for (name, why) in &loaded.refused {
        tracing::warn!(
            target: "control",
            "IKE state {}/{name} refused: {why} (renamed to {name}.refused)",
            dir.display()
        );
    }
    let found = loaded.stored.len();
    let core = driver.core_mut();
    core.enable_durability();
    core.set_wall_clock(unix_ms());
    let report = core.adopt_stored(now, loaded.stored);
    for (id, why) in &report.refused {
        tracing::warn!(
            target: "control",
            "IKE state {}/{}: IKE SA {id} refused: {why}",
            dir.display(),
            file_name(*id)
        );
        store.set_aside(&file_name(*id))?;
    }
    let children: usize = report.adopted.iter().map(|(_, n)| n).sum();
    tracing::info!(
        target: "control",
        "IKE state {}: {found} stored IKE SA(s), {} adopted ({children} CHILD_SA(s), \
         rekeyed now), {} refused, {} unreadable; {} orphaned data-plane SA(s) deleted",
        dir.display(),
        report.adopted.len(),
        report.refused.len(),
        loaded.refused.len(),
        report.orphans_deleted
    );
    driver.set_store(Box::new(store));
    Ok(())
}

#[cfg(test)]
#[path = "ike_state_tests.rs"]
mod tests;
