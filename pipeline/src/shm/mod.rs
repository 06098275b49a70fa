//! Shared-memory rings between the control-plane process and the data plane.
//!
//! This module owns the shared-memory file (its versioned header and checked opening), the
//! single-producer single-consumer rings inside it, and the roamgate layout of those rings
//! ([`ControlChannel`]). It is, with the ipsec-mb FFI, one of the two places `unsafe` lives:
//! raw pointers into the mapping, atomics placed in it, `mmap`/`munmap`. Everything above the
//! ring (the records and their encoding, `proto::codec`) is safe code.
//!
//! It must never: read or write outside the mapping whatever the peer wrote into it (every
//! index, header and descriptor read from shared memory is validated; a bad one is an error);
//! drop a record (a full ring is back-pressure: the caller keeps the record and retries);
//! leave key material in a slot after it was consumed (update rings are zeroized by the
//! consumer before the slots go back to the producer).
//!
//! # The region
//!
//! A file (mode 0600, created with `O_EXCL`, e.g. under `/dev/shm`), mapped shared by both
//! processes. It starts with a fixed header (little-endian):
//!
//! ```text
//!  0  magic "RGATESHM"        8  layout version u32     12  ring count u32
//! 16  total size u64          24  creation time (ns since the Unix epoch) u64
//! 32  creator pid u32         36  state u32 (0 init, 1 ready, 2 closed by the creator)
//! 40  boot id [16]            56  header length u32     60  reserved
//! 64  ring descriptors, 32 bytes each:
//!       offset u64, slot size u32, slot count u32, kind u16, index u16, flags u32, 0 u64
//! ```
//!
//! The creator writes everything, then stores `ready` with Release; an opener loads the state
//! with Acquire first and checks every field (magic, version, total size against the file,
//! each descriptor's bounds, alignment, order, kind and flags, the boot id) and refuses a
//! region that is not ready or already closed. The (pid, creation time, boot id)
//! [`Identity`] lets a restarted peer tell a fresh region from a stale one; a crashed
//! creator is seen with [`Region::creator_alive`]. The creator's drop marks the region closed
//! and removes the file (if the name still points to it).
//!
//! Rings start on 128-byte boundaries after the header; see [`ring`] for a ring's layout and
//! memory ordering. Both processes are parts of one appliance and trust each other with keys;
//! the validation is there against bugs, stale files and version skew, not a hostile peer.
//!
//! # The roamgate layout ([`ControlChannel`])
//!
//! For `W` workers, in this order:
//!
//! | rings | kind | direction | record | default slots |
//! |---|---|---|---|---|
//! | per worker `w`: | `Update` | control -> data | [`UpdateEnvelope`](proto::UpdateEnvelope) (zeroized) | 4096 x 256 B |
//! | | `Ack` | data -> control | [`Ack`](proto::Ack) | 1024 x 32 B |
//! | one | `Punt` | data -> control | [`Datagram`](proto::Datagram)s from the wire | 512 x 2 KiB |
//! | one | `Transmit` | control -> data | [`Datagram`](proto::Datagram)s to send | 512 x 2 KiB |
//! | one | `Event` | data -> control | [`Event`](proto::Event) | 4096 x 64 B |
//! | one | `Punt` (index 1) | data -> control | the cookie lane: IKE_SA_INIT requests that echo a cookie | 64 x 2 KiB |
//!
//! A record larger than a slot spans consecutive slots (a whole SPD goes as one update of up
//! to a ring's size). The punt, transmit and event rings have one producer or consumer in the
//! data plane: its agent thread, which the workers reach over their in-process rings.
#![allow(unsafe_code)]

use std::path::PathBuf;

mod channel;
pub mod region;
pub mod ring;

#[cfg(test)]
mod tests;

pub use channel::{ChannelSizes, ControlChannel, Receiver, RecvError, RingSize, SendError, Sender};
pub use region::{Identity, Region, RingKind, RingSpec};
pub use ring::{Consumer, PopError, Producer, PushError, ReadGuard};

/// Why a region could not be created, opened or handed out.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{op} {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{0} already exists (a stale region? check it, remove it, create again)")]
    Exists(PathBuf),
    #[error("refusing a region file with mode {mode:o} owned by uid {owner}: it must be ours, mode 0600")]
    Permissions { mode: u32, owner: u32 },
    #[error("region file of {0} bytes is too small for its header")]
    TooSmall(u64),
    #[error("not a roamgate region (bad magic)")]
    Magic,
    #[error("region layout version {found}, this build speaks {expected}")]
    Version { found: u32, expected: u32 },
    #[error("header says {header} bytes, the file has {file}")]
    Size { header: u64, file: u64 },
    #[error("bad region header: {0}")]
    Header(&'static str),
    #[error("ring {ring}: {why}")]
    Descriptor { ring: usize, why: &'static str },
    #[error("region is still being initialized by its creator")]
    NotReady,
    #[error("region was closed by its creator")]
    Closed,
    #[error("stale region: {0}")]
    Stale(&'static str),
    #[error("invalid layout: {0}")]
    Layout(&'static str),
    #[error("no ring {0}")]
    NoSuchRing(usize),
    #[error("the {end} of ring {ring} was already taken in this process")]
    Taken { ring: usize, end: &'static str },
}
