//! Durable IKE state: what the control process keeps on disk of every established IKE SA so
//! that a restarted process (a crash, `kill -9`) carries the IKE SAs on instead of losing them,
//! and the rules that make the copy on disk safe to adopt. Sans-IO: this module makes and
//! reads the bytes of one stored IKE SA ([`StoredIkeSa`]) and decides when they are written;
//! the driver's store (a directory, fsync, atomic replace) does the writing, in the order the
//! core's outputs say.
//!
//! What is stored, per IKE SA: its [`IkeSaRecord`] ([`ike::Endpoint::export_durable`]: keys,
//! message ids, our last response, the IV counter, the CHILD_SAs) and the data-plane SAs the
//! repository installed for its CHILD_SAs ([`ChildSas`]: the ids and SPIs, never sequence
//! numbers, which stay with the data plane), plus the wall-clock time of the write (a record
//! read back is aged by the time it spent on disk). The byte form is versioned and ends with a
//! SHA-256 of everything before it; the record inside carries its own checksum too.
//!
//! ## When it is written (persist before send)
//! After every input, each IKE SA the input touched (an event named it, or a datagram of its
//! is about to leave) is exported, and all of them are queued as one
//! [`Output::Persist`](super::Output::Persist) ahead of the data-plane updates and the
//! datagrams of that input: the driver has them on disk, all or none, before any of them
//! leaves. All or none matters where one answer changes two IKE SAs: an IKE SA rekey moves the
//! CHILD_SAs from the old IKE SA to the new one, and the old one alone on disk would have lost
//! them. An IKE SA that went is [`Output::Forget`](super::Output::Forget)
//! once the updates that delete its CHILD_SAs are queued.
//!
//! ## Why a crash can at worst skip, never repeat
//! - **Our responses**: the record on disk already holds the peer's request as answered (the
//!   peer's next message id, our response's bytes) before the response leaves. A crash before
//!   the write: nothing left, the peer retransmits, the new process answers as new. A crash
//!   after it: the peer's retransmission gets the stored response, byte for byte.
//! - **Our requests**: the record is written with our next message id already past the
//!   request (`export_durable`); the new process never sends another request under that id.
//!   If the crash came before the request left, that id is skipped (the peer, still waiting
//!   for it, drops our later requests: a liveness failure at worst, never a wrong answer).
//! - **IVs**: every adoption continues in the next IV epoch (see `ike::record`), and the
//!   adopter's record is written right after the adoption, before it sends, so the epoch on
//!   disk is never older than the one in use: the next adopter's epoch is always new.
//!
//! ## The data plane after a restart
//! The stored [`ChildSas`] name everything the data plane may hold for an IKE SA: the record's
//! CHILD_SAs and those the same input deleted (their deletes follow the write). On adoption
//! (`ControlCore::adopt_stored`) the repository takes the record's CHILD_SAs under their old
//! ids (no install: the data plane kept them, with their sequence numbers), the policy is sent
//! again, stored SAs no record owns are deleted, and every adopted CHILD_SA is rekeyed, the
//! path of a data plane that restarted: a CHILD_SA whose install the crash cut short comes back
//! fresh, and no outbound SA is ever installed again with a sequence number from 1.
//!
//! Owns: the byte form of a stored IKE SA; which IKE SAs an input touched; which are on disk.
//! Must never: read a clock or touch a file (the driver does); print key material (the bytes
//! hold keys: zeroized on drop, `Debug` shows only their length).

use std::collections::BTreeSet;

use ike::crypto::Secret;
use ike::{ChildSpi, IkeSaId, IkeSaRecord, IkeSpi, Instant, RecordError};
use proto::SaId;

/// The first bytes of a stored IKE SA.
pub const MAGIC: &[u8; 8] = b"RGIKESA\0";
/// The layout version this code writes and reads.
pub const VERSION: u16 = 1;
const SHA256_LEN: usize = 32;
/// A stored IKE SA is never larger (the record's own limits keep it far below).
pub const MAX_LEN: usize = 1 << 20;

/// The data-plane SAs of one CHILD_SA: its inbound SA (by SPI) and outbound SA (by id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildSas {
    pub spi_in: ChildSpi,
    pub in_id: SaId,
    pub spi_out: ChildSpi,
    pub out_id: SaId,
}

/// One IKE SA as the store keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredIkeSa {
    pub record: IkeSaRecord,
    /// What the data plane may hold for it (see the module documentation).
    pub sas: Vec<ChildSas>,
    /// When it was written, milliseconds since the Unix epoch (the driver's wall clock).
    pub written_unix_ms: u64,
}

impl core::fmt::Debug for StoredIkeSa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoredIkeSa")
            .field("record", &self.record)
            .field("sas", &self.sas)
            .field("written_unix_ms", &self.written_unix_ms)
            .finish()
    }
}

/// Why stored bytes cannot be adopted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the file ends early (truncated)")]
    Truncated,
    #[error("not a stored IKE SA (bad magic)")]
    BadMagic,
    #[error("layout version {0} is not one this control plane reads")]
    UnknownVersion(u16),
    #[error("the checksum does not match the content (corrupt)")]
    Checksum,
    #[error("bytes after the end")]
    TrailingBytes,
    #[error("larger than any stored IKE SA can be")]
    TooLarge,
    #[error("the IKE SA record: {0}")]
    Record(#[from] RecordError),
}

/// The bytes of a stored IKE SA (they hold keys: zeroized on drop, never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredBytes(pub Secret);

impl core::fmt::Debug for StoredBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "StoredBytes({} bytes, <secret>)", self.0.len())
    }
}

impl StoredIkeSa {
    /// The versioned byte form.
    pub fn to_bytes(&self) -> Result<StoredBytes, StoreError> {
        let record = self.record.to_bytes()?;
        let n_sas = u16::try_from(self.sas.len()).map_err(|_| StoreError::TooLarge)?;
        let record_len = u32::try_from(record.len()).map_err(|_| StoreError::TooLarge)?;
        let mut b = Secret::new(Vec::with_capacity(record.len() + self.sas.len() * 16 + 64));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_be_bytes());
        b.extend_from_slice(&self.written_unix_ms.to_be_bytes());
        b.extend_from_slice(&record_len.to_be_bytes());
        b.extend_from_slice(&record);
        b.extend_from_slice(&n_sas.to_be_bytes());
        for s in &self.sas {
            for v in [s.spi_in.0, s.in_id.0, s.spi_out.0, s.out_id.0] {
                b.extend_from_slice(&v.to_be_bytes());
            }
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &b);
        b.extend_from_slice(digest.as_ref());
        if b.len() > MAX_LEN {
            return Err(StoreError::TooLarge);
        }
        Ok(StoredBytes(b))
    }

    /// A stored IKE SA from its bytes: anything truncated, corrupt or of another version is
    /// an error, never a panic.
    pub fn from_bytes(b: &[u8]) -> Result<StoredIkeSa, StoreError> {
        if b.len() > MAX_LEN {
            return Err(StoreError::TooLarge);
        }
        let mut r = Reader(b);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(StoreError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(StoreError::UnknownVersion(version));
        }
        let body_len = b
            .len()
            .checked_sub(SHA256_LEN)
            .ok_or(StoreError::Truncated)?;
        let (body, sum) = b.split_at(body_len);
        if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != sum {
            // A file cut short fails here too; say so when it is plainly too short.
            return Err(if body_len < MAGIC.len() + 2 + 8 + 4 + 2 {
                StoreError::Truncated
            } else {
                StoreError::Checksum
            });
        }
        let mut r = Reader(body.get(MAGIC.len() + 2..).ok_or(StoreError::Truncated)?);
        let written_unix_ms = r.u64()?;
        let record_len = usize::try_from(r.u32()?).map_err(|_| StoreError::TooLarge)?;
        let record = IkeSaRecord::from_bytes(r.take(record_len)?)?;
        let n = r.u16()?;
        let mut sas = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            sas.push(ChildSas {
                spi_in: ChildSpi(r.u32()?),
                in_id: SaId(r.u32()?),
                spi_out: ChildSpi(r.u32()?),
                out_id: SaId(r.u32()?),
            });
        }
        if !r.0.is_empty() {
            return Err(StoreError::TrailingBytes);
        }
        Ok(StoredIkeSa {
            record,
            sas,
            written_unix_ms,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(StoreError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(a))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
}

/// The name of an IKE SA's file in the store: its own SPI in hex.
pub fn file_name(id: IkeSaId) -> String {
    format!("{:016x}.ikesa", id.0 .0)
}

/// The IKE SA a file name in the store stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<IkeSaId> {
    let hex = name.strip_suffix(".ikesa")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .map(|v| IkeSaId(IkeSpi(v)))
}

/// The core's bookkeeping of durability: on or off, which IKE SAs an input touched, which
/// are on disk, the data-plane SAs of CHILD_SAs that went during the input.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    pub on: bool,
    /// The wall clock of the last input, for the stored bytes (the driver sets it).
    pub wall_ms: u64,
    pub touched: BTreeSet<IkeSaId>,
    pub stored: BTreeSet<IkeSaId>,
    /// IKE SAs that went during this input.
    pub gone: BTreeSet<IkeSaId>,
    /// CHILD_SAs deleted during this input, with their IKE SA.
    pub removed: Vec<(IkeSaId, ChildSas)>,
}

impl Durability {
    /// An IKE event names the IKE SAs it changed.
    pub fn note_event(&mut self, e: &ike::Event) {
        match e {
            ike::Event::IkeUp { ike, .. } | ike::Event::IkeMoved { ike, .. } => {
                self.touched.insert(*ike);
            }
            ike::Event::ChildUp(info) => {
                self.touched.insert(info.ike);
            }
            ike::Event::ChildDown { ike, .. } | ike::Event::PrivateNotify { ike, .. } => {
                self.touched.insert(*ike);
            }
            ike::Event::IkeRekeyed { old, new, .. } => {
                self.touched.insert(*old);
                self.touched.insert(*new);
            }
            ike::Event::IkeDown { ike, .. } => {
                self.gone.insert(*ike);
            }
            // Group state is not stored (no group mode in `run` yet).
            ike::Event::Group(_) => {}
        }
    }

    /// A datagram about to leave: the IKE SA it belongs to (our SPI of it; the I flag says
    /// whether we are its original initiator).
    pub fn note_transmit(&mut self, data: &[u8]) {
        if let Ok(h) = ike::wire::Header::parse(data) {
            let ours = if h.from_initiator() { h.spi_i } else { h.spi_r };
            if ours != 0 {
                self.touched.insert(IkeSaId(IkeSpi(ours)));
            }
        }
    }
}

/// What [`ControlCore::adopt_stored`](super::ControlCore::adopt_stored) did.
#[derive(Debug, Default)]
pub struct AdoptReport {
    /// IKE SAs carried on, with their CHILD_SAs.
    pub adopted: Vec<(IkeSaId, usize)>,
    /// Stored IKE SAs that could not be adopted, and why.
    pub refused: Vec<(IkeSaId, String)>,
    /// Data-plane SAs (inbound and outbound) that no adopted IKE SA owns: deleted.
    pub orphans_deleted: usize,
}

impl super::ControlCore {
    /// Keeps the IKE SAs on disk from now on: every change is queued as
    /// [`Output::Persist`](super::Output::Persist) / [`Output::Forget`](super::Output::Forget)
    /// for the driver's store.
    pub fn enable_durability(&mut self) {
        self.durable.on = true;
    }

    /// The wall clock (milliseconds since the Unix epoch), written with every stored IKE SA
    /// so that a record read back is aged by its time on disk.
    pub fn set_wall_clock(&mut self, unix_ms: u64) {
        self.durable.wall_ms = unix_ms;
    }

    /// A restarted control plane takes over the stored IKE SAs (see the module
    /// documentation): each record is aged by its time on disk and adopted, its CHILD_SAs go
    /// into the repository under their data-plane ids, the policy is sent again, stored SAs no
    /// adopted IKE SA owns are deleted, every adopted CHILD_SA is rekeyed, and the adopted
    /// IKE SAs are written again (in their new IV epoch) before anything is sent on them.
    pub fn adopt_stored(&mut self, now: Instant, stored: Vec<StoredIkeSa>) -> AdoptReport {
        self.adopt_stored_keeping(now, stored, &BTreeSet::new())
    }

    /// [`adopt_stored`](Self::adopt_stored) for a store that knows more than the IKE SAs: the
    /// CHILD_SAs in `installed` (by our inbound SPI) are known to be installed where their
    /// data-plane SAs are (a cluster's repository records an edge's acknowledgement) and are
    /// carried on as they are; only the others are rekeyed.
    pub fn adopt_stored_keeping(
        &mut self,
        now: Instant,
        stored: Vec<StoredIkeSa>,
        installed: &BTreeSet<ChildSpi>,
    ) -> AdoptReport {
        let mut report = AdoptReport::default();
        if stored.is_empty() {
            return report;
        }
        let mut orphans: Vec<ChildSas> = Vec::new();
        let mut adopted = Vec::new();
        for mut s in stored {
            let id = s.record.id();
            s.record.age(core::time::Duration::from_millis(
                self.durable.wall_ms.saturating_sub(s.written_unix_ms),
            ));
            if let Err(e) = self.endpoint.adopt(now, &s.record) {
                report.refused.push((id, e.to_string()));
                orphans.extend(s.sas.iter().copied());
                continue;
            }
            let mut n = 0;
            for info in s.record.child_infos() {
                let ids = s.sas.iter().find(|c| c.spi_in == info.inbound.spi);
                let Some(c) = ids else {
                    // Never installed as far as the store knows: the rekey below brings it.
                    continue;
                };
                match self.repo.adopt_child(&info, c.in_id, c.out_id, false) {
                    Ok(ups) => {
                        self.placement
                            .place_adopted(c.out_id, proto::Spi(c.spi_in.0));
                        ups.into_iter().for_each(|u| self.route(u));
                        n += 1;
                    }
                    Err(e) => self.out.error(format!("ike: adopting {id}: {e}")),
                }
            }
            orphans.extend(
                s.sas
                    .iter()
                    .filter(|c| !s.record.children.iter().any(|r| r.spi_in == c.spi_in))
                    .copied(),
            );
            if let (Some(core::net::IpAddr::V4(v)), false) = (s.record.virtual_ip, s.record.lease) {
                // A client's own virtual IP, as `IkeUp` would have set it.
                let ups = self.repo.on_event(&ike::Event::IkeUp {
                    ike: id,
                    peer: s.record.connection.clone(),
                    remote_id: String::new(),
                    local: s.record.local,
                    remote: s.record.remote,
                    virtual_ip: Some(core::net::IpAddr::V4(v)),
                    virtual_ip_is_ours: true,
                });
                ups.into_iter().flatten().for_each(|u| self.route(u));
            }
            self.durable.stored.insert(id);
            self.durable.touched.insert(id);
            report.adopted.push((id, n));
            adopted.push(id);
        }
        // The policy without the orphans first, then their deletes.
        self.route(proto::Update::ReplaceSpd {
            rules: self.repo.rules(),
        });
        for c in orphans {
            if self.repo.child_sas(c.spi_in).is_some() {
                continue;
            }
            if self.repo.hold_orphan_id(c.out_id) {
                self.route(proto::Update::DeleteOutbound { id: c.out_id });
                report.orphans_deleted += 1;
            }
            self.route(proto::Update::DeleteInbound {
                spi: proto::Spi(c.spi_in.0),
            });
            report.orphans_deleted += 1;
        }
        for id in adopted {
            let children: Vec<ChildSpi> = self
                .endpoint
                .list()
                .into_iter()
                .filter(|s| s.0 == id)
                .flat_map(|s| s.3.into_iter().map(|c| c.0))
                .filter(|spi| !installed.contains(spi))
                .collect();
            for spi in children {
                let _ = self.endpoint.rekey_child(now, id, spi);
            }
        }
        self.view.mark_stale();
        self.pump(now);
        report
    }

    /// Queues the stored state of every IKE SA this input touched ahead of the outputs queued
    /// since `mark`, and the removal of those that went behind them.
    pub(super) fn persist(&mut self, now: Instant, mark: u64) {
        let d = &mut self.durable;
        let touched = core::mem::take(&mut d.touched);
        let removed = core::mem::take(&mut d.removed);
        let mut batch = Vec::new();
        for id in touched {
            if d.gone.contains(&id) {
                continue;
            }
            let record = match self.endpoint.export_durable(now, id) {
                Ok(r) => r,
                // Not up yet, or being deleted: what is on disk stays until it goes.
                Err(ike::ExportError::NotEstablished | ike::ExportError::NoSuchSa) => continue,
                Err(e) => {
                    self.out.error(format!("ike: {id} cannot be stored: {e}"));
                    continue;
                }
            };
            let mut sas: Vec<ChildSas> = record
                .children
                .iter()
                .filter_map(|c| self.repo.child_sas(c.spi_in))
                .collect();
            sas.extend(removed.iter().filter(|(i, _)| *i == id).map(|(_, s)| *s));
            let stored = StoredIkeSa {
                record,
                sas,
                written_unix_ms: d.wall_ms,
            };
            match stored.to_bytes() {
                Ok(bytes) => {
                    d.stored.insert(id);
                    batch.push((id, bytes));
                }
                Err(e) => self.out.error(format!("ike: {id} cannot be stored: {e}")),
            }
        }
        if !batch.is_empty() {
            self.out.insert_at_mark(mark, super::Output::Persist(batch));
        }
        for id in core::mem::take(&mut d.gone) {
            if d.stored.remove(&id) {
                self.out.forget(id);
            }
        }
    }
}
