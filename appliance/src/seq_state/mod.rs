//! Sequence numbers of statically keyed outbound SAs, kept across restarts.
//!
//! A static SA has the same key on every start, and its sequence number is its GCM IV: a
//! gateway that counted from 1 again after a restart would send the previous run's nonces
//! under the same key. This module makes that impossible. Each static outbound SA has a
//! *mark* in a state file: the highest sequence number it may have used. Marks are written
//! ahead, a block at a time, and durably (a temporary file, fsync, rename over the state file,
//! fsync of the directory: [`file`]) before any number of the new block is sent. An SA is
//! installed with the stored mark as its last used number (`Resume::seq`: it sends mark + 1
//! first) and the end of its new block as its reservation (`Resume::seq_reserved`), which the
//! worker never passes; its checkpoints tell the owner when to move the reservation on
//! ([`Reservations::extension`]), and only a reservation already on disk is sent
//! (`Update::ReserveSeq`). A crash at any point can only lose the unsent rest of a block:
//! numbers are skipped, never repeated.
//!
//! Marks are keyed by a hash of the SA's SPI, algorithm, key and salt ([`KeyId`], never the
//! key itself): a new key in the config is a new SA whose numbers legitimately start at 1. A
//! state file that exists but cannot be read or does not parse stops the start, naming the
//! file; a missing one is a first start, said so, and created. One process owns a file at a
//! time (an exclusive lock on `FILE.lock`): two writers would each rewrite the file without
//! the other's marks.
//!
//! Who owns the file is the process that installs the static SAs and outlives the restarts of
//! the process that sends on them:
//! - `roamgate dataplane --config` (and `run --single-process`): the data plane process; its
//!   own restart reads the marks back.
//! - `roamgate run`: the control process (`control_proc`), not the data plane. A data plane
//!   that restarts under it comes back empty and gets its static SAs from the control process,
//!   which resumes them past everything the dead process could have used (its reservation was
//!   on disk before it was sent). A control process that restarts finds the data plane still
//!   sending within the reservations on disk, reads them back and moves them on.
//!
//! It never sends a reservation it has not made durable (a write that fails leaves the SA
//! waiting at its reservation, counted as `seq_not_reserved`, and is tried again at the next
//! checkpoint) and never lowers a mark.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Result;
use pipeline::esp::sa::seq_limit;
use proto::sa::{Checkpoint, SaParams};
use proto::{Direction, Event, SaId, Update};

pub mod file;
#[cfg(test)]
mod tests;

pub use file::StateFile;

/// Sequence numbers reserved at a time. With ESN, 2^22: the owner moves the reservation on
/// when a quarter of a block is used, which leaves three quarters (some 280 ms of packets for
/// one SA at 15 Mpps) for its write and its update to land; a restart skips at most a block of
/// 2^64. Without ESN, whose 2^32 numbers must last the key's life, 2^20 (4096 restarts).
pub fn block_size(esn: bool) -> u64 {
    if esn {
        1 << 22
    } else {
        1 << 20
    }
}

/// The checkpoints a kept SA reports with: sixteen per block, and every second (which also
/// repeats the position of an SA held at its reservation, so one lost report cannot stall it).
pub fn checkpoints(esn: bool) -> Checkpoint {
    Checkpoint {
        packets: block_size(esn) / 16,
        millis: 1000,
    }
}

/// The identity of an SA's key: SHA-256 over a label, the SPI, the algorithm, the key, the
/// salt and the integrity key (CBC), cut to 128 bits. It names a key without revealing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    pub fn of(p: &SaParams) -> KeyId {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        h.update(b"roamgate static SA sequence state\0");
        h.update(&p.spi.0.to_be_bytes());
        h.update(p.keys.alg.to_string().as_bytes());
        h.update(&[0]);
        h.update(p.keys.key());
        h.update(&p.keys.salt);
        // Empty for an AEAD, so a GCM key's identity is what it always was.
        h.update(p.keys.integ_key());
        let d = h.finish();
        let mut id = [0u8; 16];
        id.copy_from_slice(d.as_ref().get(..16).unwrap_or(&[0; 16]));
        KeyId(id)
    }
}

/// What the state file holds: per key, the highest sequence number that may have been used.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks(pub BTreeMap<KeyId, u64>);

/// Where a kept SA starts: after `resume` (the stored mark), up to `reserved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub resume: u64,
    pub reserved: u64,
    /// No mark was stored for this key: its first start.
    pub first: bool,
}

/// The reservation logic, sans-IO: marks as they are on disk in, the marks to write and the
/// numbers to install out. Changes are proposed as new [`Marks`]; they are [`adopt`]ed only
/// once written.
///
/// [`adopt`]: Reservations::adopt
pub struct Reservations {
    /// As on disk.
    marks: Marks,
    /// The kept SAs this process installed, by id: their key and sizes.
    kept: HashMap<SaId, Kept>,
    /// Block sizes other than [`block_size`] (tests use small ones).
    block: Option<u64>,
}

#[derive(Clone, Copy)]
struct Kept {
    key: KeyId,
    limit: u64,
    block: u64,
}

impl Reservations {
    pub fn new(marks: Marks) -> Reservations {
        Reservations {
            marks,
            kept: HashMap::new(),
            block: None,
        }
    }

    /// With blocks of `block` numbers whatever the SA (tests).
    #[cfg(test)]
    pub fn with_block(marks: Marks, block: u64) -> Reservations {
        Reservations {
            block: Some(block.max(1)),
            ..Reservations::new(marks)
        }
    }

    pub fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Keeps the reservation of SA `p` from now on: its checkpoints move it on. An SA that
    /// runs already (installed by an earlier owner process) needs no more than this.
    pub fn keep(&mut self, p: &SaParams) -> KeyId {
        let key = KeyId::of(p);
        let limit = seq_limit(p.esn);
        let block = self.block.unwrap_or_else(|| block_size(p.esn));
        self.kept.insert(p.id, Kept { key, limit, block });
        key
    }

    /// An SA (re)installed: it resumes after everything the stored mark says may have been
    /// used and reserves the next block. The proposed marks must be on disk before the SA is
    /// installed with the returned start.
    pub fn start(&mut self, p: &SaParams) -> (Start, Marks) {
        let key = self.keep(p);
        let limit = seq_limit(p.esn);
        let block = self.block.unwrap_or_else(|| block_size(p.esn));
        let stored = self.marks.0.get(&key).copied();
        let resume = stored.unwrap_or(0).min(limit);
        let reserved = resume.saturating_add(block).min(limit);
        let mut next = self.marks.clone();
        next.0.insert(key, reserved);
        (
            Start {
                resume,
                reserved,
                first: stored.is_none(),
            },
            next,
        )
    }

    /// A checkpoint of SA `id` at `seq`: when less than three quarters of a block are left,
    /// the proposed reservation (a block past `seq`) and the marks to write before sending it.
    pub fn extension(&self, id: SaId, seq: u64) -> Option<(u64, Marks)> {
        let k = self.kept.get(&id)?;
        let mark = self.marks.0.get(&k.key).copied().unwrap_or(0);
        if mark.saturating_sub(seq) >= k.block - k.block / 4 {
            return None;
        }
        let up_to = seq.saturating_add(k.block).min(k.limit).max(mark);
        if up_to == mark {
            return None;
        }
        let mut next = self.marks.clone();
        next.0.insert(k.key, up_to);
        Some((up_to, next))
    }

    /// The marks are on disk now.
    pub fn adopt(&mut self, marks: Marks) {
        // Never lower a mark, whatever was proposed.
        for (k, m) in marks.0 {
            let e = self.marks.0.entry(k).or_insert(m);
            *e = (*e).max(m);
        }
    }
}

/// The owner's side: the state file and the reservations of the static SAs it installs.
pub struct SeqKeeper {
    file: StateFile,
    res: Reservations,
    /// Extensions that could not be written: said once, not at every checkpoint.
    failing: bool,
}

impl SeqKeeper {
    /// Opens (and locks) the state file at `path` for the static SAs among `sas` (their
    /// outbound ones are kept from now on, running or not); a missing file is a first start.
    pub fn open(path: &Path, sas: &[(Direction, SaParams)]) -> Result<SeqKeeper> {
        let (file, marks) = StateFile::open(path)?;
        match &marks {
            None => tracing::info!(target: "seq_state",
                "{} does not exist: a first start, so static outbound SAs begin at \
                 sequence number 1 (the file is created before any is sent)",
                path.display()
            ),
            Some(m) => tracing::info!(target: "seq_state",
                "{}: {} key(s) with sequence numbers in use",
                path.display(),
                m.0.len()
            ),
        }
        let mut res = Reservations::new(marks.unwrap_or_default());
        for (dir, p) in sas {
            if *dir == Direction::Outbound {
                res.keep(p);
            }
        }
        Ok(SeqKeeper {
            file,
            res,
            failing: false,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Sets where the static outbound SAs among `sas` start and what they may send, after
    /// writing that down: install them only when this returned Ok.
    pub fn start(&mut self, sas: &mut [(Direction, SaParams)]) -> Result<()> {
        let mut starts: Vec<(SaId, KeyId, Start)> = Vec::new();
        for (dir, p) in sas.iter() {
            if *dir != Direction::Outbound {
                continue;
            }
            let key = KeyId::of(p);
            if let Some((other, ..)) = starts.iter().find(|(_, k, _)| *k == key) {
                anyhow::bail!(
                    "static outbound SAs {} and {} have the same SPI ({:08x}) and key: they                      would send the same sequence numbers (GCM nonces)",
                    other.0,
                    p.id.0,
                    p.spi.0
                );
            }
            let (s, next) = self.res.start(p);
            // Taken before it is written (the next SA's start builds on it); none of these
            // SAs is installed unless the write below succeeds.
            self.res.adopt(next);
            starts.push((p.id, key, s));
        }
        if starts.is_empty() {
            return Ok(());
        }
        self.file.store(self.res.marks())?;
        for (dir, p) in sas.iter_mut() {
            let Some((_, _, s)) = starts.iter().find(|(id, ..)| *id == p.id) else {
                continue;
            };
            if *dir != Direction::Outbound {
                continue;
            }
            tracing::info!(target: "seq_state",
                "SA {} (SPI {:08x}): {}, reserved up to {}",
                p.id.0,
                p.spi.0,
                if s.first {
                    "first start under this key, from 1".to_string()
                } else {
                    format!("resumes after {}", s.resume)
                },
                s.reserved
            );
            if s.resume >= seq_limit(p.esn) {
                tracing::warn!(target: "seq_state",
                    "SA {} (SPI {:08x}) has used every sequence number its key \
                     allows: it will send nothing (seq_exhausted) until its key changes",
                    p.id.0, p.spi.0
                );
            }
            p.resume.seq = s.resume;
            p.resume.seq_reserved = Some(s.reserved);
            p.checkpoint = Some(checkpoints(p.esn));
        }
        Ok(())
    }

    /// A data-plane report: for a checkpoint of a kept SA that needs its reservation moved
    /// on, the update that moves it (already on disk). Other reports: None.
    pub fn on_event(&mut self, e: &Event) -> Option<Update> {
        let Event::SeqCheckpoint { id, seq, .. } = e else {
            return None;
        };
        let (up_to, next) = self.res.extension(*id, *seq)?;
        match self.file.store(&next) {
            Ok(()) => {
                self.res.adopt(next);
                if self.failing {
                    tracing::info!(target: "seq_state", "{} is written again", self.path().display());
                    self.failing = false;
                }
                Some(Update::ReserveSeq { id: *id, up_to })
            }
            Err(err) => {
                if !self.failing {
                    tracing::error!(target: "seq_state",
                        "cannot write {}: {err:#}; SA {} stays within its \
                         reservation (seq_not_reserved) until it can",
                        self.path().display(),
                        id.0
                    );
                    self.failing = true;
                }
                None
            }
        }
    }
}

/// The state file's place unless `--seq-state` says otherwise: next to the config file, as
/// `CONFIG.seq-state` (one per config file, found where the operator keeps the config).
pub fn default_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".seq-state");
    config.with_file_name(name)
}
