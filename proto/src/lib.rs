//! roamgate's plain records and their binary encoding: what crosses a process boundary between
//! the control plane and the data plane (the shared-memory rings), and the data those records
//! are made of.
//!
//! This crate owns:
//! - the identifiers ([`Spi`], [`SaId`]) and the plain data an SA, a policy and a masquerade
//!   are described by: [`sa::SaParams`] (with its key material, [`sa::SaKeys`], zeroized on
//!   drop), [`policy::Prefix`] / [`policy::Rule`], [`nat::MasqueradeConfig`];
//! - the records: [`Update`] / [`UpdateEnvelope`] (control to data), [`Ack`] and [`Event`]
//!   (data to control), and one [`Datagram`] type for IKE in both directions;
//! - [`codec`]: their versioned, strictly checked binary encoding.
//!
//! It must never do I/O, hold a clock, depend on another roamgate crate, or panic on any byte
//! sequence it decodes; key material never appears in a `Debug` output.
//!
//! # Why the data types live here and are not converted
//!
//! The records are built from the very types the data plane works with: a [`Spi`] or a
//! [`policy::Prefix`] in an [`Update`] is the one the worker compares per packet, and the
//! data plane re-exports them where it always had them (`pipeline::ids`, `pipeline::spd`,
//! `pipeline::esp::sa`, ...). A separate set of wire-only records with conversions would
//! have doubled every type and put a translation (and, for keys, a copy) between the control
//! plane and the agent that builds the runtime SA records; the fast path would have gained
//! nothing, since it never sees a record, only the runtime records built from it. What stays
//! out of this crate is everything with behaviour on the fast path: runtime SA records,
//! AEAD key schedules, the compiled SPD, the NAT session table.
#![forbid(unsafe_code)]

pub mod codec;
pub mod group;
pub mod ids;
pub mod masq;
pub mod nat;
pub mod policy;
mod records;
pub mod sa;

pub use ids::{SaId, Spi};
pub use records::{Ack, Datagram, Event, LifetimeKind, LifetimeLimit, Update, UpdateEnvelope};
pub use sa::Direction;
