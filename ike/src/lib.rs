//! IKEv2 (RFC 7296) with MOBIKE (RFC 4555), sans-IO: datagrams, addresses and the time go
//! in; datagrams to send, events (SAs up, rekeyed, moved, deleted) and the next deadline come
//! out. No sockets, no clock reads, no unseeded randomness, and none of roamgate's other
//! crates: the control plane (`control`) drives an [`Endpoint`] and turns its events into
//! data-plane updates.
//!
//! | module | owns | must never |
//! |---|---|---|
//! | [`wire`] | the message codec: header, payload chain, every payload as a `Repr` | panic on any byte sequence |
//! | [`crypto`] | PRFs and prf+, key derivation, Diffie-Hellman, the SK payload's ciphers | print or keep key material past its drop |
//! | [`proposal`], [`ts`] | the suites we offer and choosing one; traffic selectors and narrowing | accept what the peer did not offer |
//! | [`config`] | connections and endpoint policy | print a credential |
//! | [`event`], [`stats`] | what the endpoint reports; why a message was dropped or answered with an error | |
//! | [`endpoint`] | the table of IKE SAs, dispatch of datagrams, answers outside any IKE SA, deadlines | run an exchange itself; walk every IKE SA for a timer |
//! | `cookie` | the responder's COOKIE secrets (rotated, the previous one kept for a grace), making and checking cookies (RFC 7296 2.6) | keep anything per request |
//! | `half_open` | the responder's half-open IKE SAs by (SPIi, address), counted in total and per source for admission | disagree with its counts |
//! | `endpoint::transfer` | exporting an IKE SA as a record and adopting one: the reservations in the services, re-armed timers | export work under way; adopt over an SPI or lease it holds |
//! | [`record`] | [`IkeSaRecord`], the versioned persistent state of an IKE SA, and its strict byte codec; why an adopted IKE SA never reuses an IV | print or keep key material; panic on any byte sequence |
//! | `ike_sa` | one IKE SA's lasting state and work under way | touch another IKE SA |
//! | `exchange::*` | IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (children, IKE SA), INFORMATIONAL, MOBIKE, each on one IKE SA and a context | answer an unauthenticated message on an IKE SA |
//! | `fragment` | IKE fragmentation (RFC 7383): splitting a protected message into Encrypted Fragment payloads, each sealed on its own; reassembly per IKE SA and direction, each fragment authenticated before it is kept, bounded per message, per IKE SA and in total, expired by a timer | keep an unauthenticated fragment; hold more than its budget |
//! | `timer` | per-IKE-SA deadline tables and the endpoint's ordered deadlines | file an IKE SA twice |
//! | [`services`] | SPI allocation (node/worker bits), virtual-IP pools, authentication: PSK and certificates (`auth`), signatures (`pubkey`), trust stores, chains, EKU and identities (`certs`) | reach the network or a clock; read a file |
//! | [`eap`] | EAP framing; EAP-MSCHAPv2 against a local user file (`mschapv2`); RADIUS pass-through (`radius`), each a sans-IO conversation per IKE SA | keep a password, print an NT hash, MSK or RADIUS secret |
//! | `exchange::eap_auth` | the responder's IKE_AUTH rounds with EAP (RFC 7296 2.16): our certificate AUTH, the EAP rounds, the AUTH from the MSK both ways; waiting for a RADIUS answer | pass a retransmitted request to the EAP backend twice |
//! | [`group`] | G-IKEv2 (RFC 9838): IDg/GSA/KD codecs, the GCKS and member state machines, key wrap, GSA_REKEY (docs/group.md) | give a Sender-ID twice under one key; accept a replayed GSA_REKEY |
//! | [`ids`], [`time`] | `IkeSpi`, `ChildSpi`, `IkeSaId`; `Instant` | wrap around |
#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
// Tests may panic: that is how they fail. (The lib target itself is checked without this.)
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod config;
mod cookie;
pub mod crypto;
pub mod eap;
pub mod endpoint;
pub mod event;
mod exchange;
mod fragment;
pub mod group;
mod half_open;
pub mod ids;
mod ike_sa;
pub mod proposal;
pub mod record;
pub mod services;
pub mod stats;
pub mod time;
mod timer;
pub mod ts;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use config::{
    after_secs, secret, Admission, Credential, EndpointConfig, Fragmentation, PeerConfig, Pool,
    Pubkey, Retransmit,
};
pub use endpoint::{
    AdoptError, ConnectError, Endpoint, ExportError, Footprint, SaStates, PRIVATE_QUEUE_MAX,
};
pub use event::{
    ChildSaInfo, ChildSaKeys, ChildSaView, DownReason, Event, IkeSaView, NatSides, PrivateData,
    SaSummary, Transmit,
};
pub use exchange::gw_move::{GatewayMove, PROBE_TRIES};
pub use ids::{ChildSpi, IkeSaId, IkeSpi};
pub use proposal::{EspInteg, EspProposal, IkeProposal};
pub use record::{ChildSaRecord, IkeSaRecord, RecordError};
pub use stats::{
    CookieStats, GatewayMoveStats, HandshakeStats, HintStats, MidSyncStats, Reason, Stats,
};
pub use time::Instant;
pub use ts::{any_v4, host_ts, prefix_ts, range_ts};
