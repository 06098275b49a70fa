//! The private directory of one `roamgate run`: where its shared-memory control channel and
//! the control process's IKE state live.
//!
//! `/dev/shm` is writable by every user, so a fixed name there (`roamgate-<name>.ctl`) can be
//! taken first by anyone: a dangling symlink or another user's file at that name blocked the
//! control plane. Each run instead makes its own directory, `roamgate-<name>.<16 random hex
//! digits>`, with mkdir (mode 0700: a name that exists already, whoever made it, is never
//! used; another is drawn), and the channel is created inside it with `O_EXCL|O_NOFOLLOW`.
//! Nobody else can add, replace or rename anything in it (0700, and `/dev/shm` is sticky).
//!
//! This module owns that directory's life: creating it, finding what earlier runs of the same
//! gateway left behind, and removing it when the run ends. It must never follow, open or
//! remove an entry another user owns: leftovers are only our own 0700 directories.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pipeline::shm::ControlChannel;

/// Where run directories are made: shared memory, never a disk (the channel carries keys).
pub const SHM_ROOT: &str = "/dev/shm";

/// The channel's file name inside the run directory.
const CHANNEL: &str = "control.ctl";

/// The IKE state directory's name inside the run directory.
const IKE_STATE: &str = "ike-state";

/// One run's directory; removed (with everything in it) when dropped.
pub struct RunDir {
    path: PathBuf,
    uid: u32,
}

impl RunDir {
    /// Makes a fresh private directory for gateway `name` (a checked `gateway.name`) under
    /// `root`.
    pub fn create(root: &Path, name: &str) -> Result<RunDir> {
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..16 {
            let mut r = [0u8; 8];
            ring::rand::SecureRandom::fill(&rng, &mut r)
                .map_err(|_| anyhow::anyhow!("no randomness for a run directory name"))?;
            let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let path = root.join(format!("roamgate-{name}.{hex}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let m = std::fs::symlink_metadata(&path)
                        .with_context(|| format!("checking {}", path.display()))?;
                    // mkdir made it, so it is ours; the check is against surprises.
                    if !m.is_dir() || m.mode() & 0o077 != 0 {
                        bail!("{}: not a private directory after mkdir", path.display());
                    }
                    return Ok(RunDir { path, uid: m.uid() });
                }
                // Someone has that name: draw another.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        bail!(
            "{}: no free name for a run directory after 16 tries",
            root.display()
        )
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control process's IKE state directory of this run (`ike_state`): it outlives the
    /// control process's restarts, not the run.
    pub fn ike_state(&self) -> PathBuf {
        self.path.join(IKE_STATE)
    }

    /// The shared-memory control channel of this run.
    pub fn channel(&self) -> PathBuf {
        self.path.join(CHANNEL)
    }

    /// Earlier runs of gateway `name` under `root` (our own private directories only): a dead
    /// one is removed, a live one (its control plane or any process started with it still
    /// runs) is an error that names it. Returns the directories removed.
    pub fn clear_leftovers(&self, root: &Path, name: &str) -> Result<Vec<PathBuf>> {
        let prefix = format!("roamgate-{name}.");
        let mut removed = Vec::new();
        let entries =
            std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(tail) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            let dir = e.path();
            if tail.len() != 16 || !tail.bytes().all(|b| b.is_ascii_hexdigit()) || dir == self.path
            {
                continue;
            }
            // Only our own private directories; anything else is another user's business.
            let Ok(m) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            if !m.is_dir() || m.uid() != self.uid || m.mode() & 0o077 != 0 {
                continue;
            }
            let channel = dir.join(CHANNEL);
            if let Ok(ch) = ControlChannel::open(&channel) {
                if ch.region().creator_alive() && ch.region().is_open() {
                    bail!(
                        "gateway {name}: another control plane (pid {}) is running on {}: stop \
                         that roamgate run first",
                        ch.region().identity().creator_pid,
                        channel.display()
                    );
                }
            }
            let pids = processes_using(&dir);
            if !pids.is_empty() {
                bail!(
                    "gateway {name}: processes of an earlier run still use {} (pid {}): stop \
                     them first",
                    dir.display(),
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the leftovers {}", dir.display()))?;
            removed.push(dir);
        }
        Ok(removed)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Processes (but this one) with an argument inside `dir` (e.g. `--shm DIR/control.ctl`).
fn processes_using(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg.starts_with(needle))
        {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("roamgate-run-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_link_or_file_at_the_old_name_or_any_guess_does_not_block_a_run() {
        let root = scratch("block");
        // What blocked start-up before: a dangling symlink at the fixed channel name.
        std::os::unix::fs::symlink("/nonexistent", root.join("roamgate-gw.ctl")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("roamgate-gw")).unwrap();
        let d = RunDir::create(&root, "gw").unwrap();
        let m = std::fs::symlink_metadata(d.path()).unwrap();
        assert!(m.is_dir() && m.mode() & 0o777 == 0o700);
        assert!(d.channel().starts_with(d.path()));
        let ch = ControlChannel::create(&d.channel(), 1).unwrap();
        drop(ch);
        let path = d.path().to_owned();
        drop(d);
        assert!(!path.exists(), "the run directory goes with the run");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn leftovers_of_a_dead_run_are_removed_a_live_one_is_refused_others_are_left_alone() {
        let root = scratch("leftovers");
        let old = RunDir::create(&root, "gw").unwrap();
        let old_path = old.path().to_owned();
        // A live control plane (this process) on the old run's channel.
        let ch = ControlChannel::create(&old.channel(), 1).unwrap();
        std::mem::forget(old);
        // Another gateway's run and a directory that is not private are never touched.
        let other = RunDir::create(&root, "gw2").unwrap();
        let open = root.join("roamgate-gw.00112233445566aa");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let new = RunDir::create(&root, "gw").unwrap();
        let e = new.clear_leftovers(&root, "gw").unwrap_err().to_string();
        assert!(
            e.contains("another control plane") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        // The control plane dies without closing (a crash): its channel stays, stale.
        std::mem::forget(ch);
        let stale = old_path.join(CHANNEL);
        assert!(stale.exists());
        // The region's creator is this process, still alive: stand in a dead pid by
        // rewriting it (offset 32 of the header).
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&stale)
            .unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &u32::MAX.to_le_bytes(), 32).unwrap();
        let removed = new.clear_leftovers(&root, "gw").unwrap();
        assert_eq!(removed, vec![old_path.clone()]);
        assert!(!old_path.exists());
        assert!(other.path().exists() && open.exists());
        drop((new, other));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
