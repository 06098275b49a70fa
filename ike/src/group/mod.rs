//! Group mode: G-IKEv2 (RFC 9838), the group key management that gives many gateways one
//! group SA, keyed and rekeyed by a Group Controller/Key Server (GCKS).
//!
//! | module | owns | must never |
//! |---|---|---|
//! | [`wire`] | the IDg, GSA and KD payload bodies, the G-IKEv2 registry numbers | panic on any byte sequence; accept a form it would not emit |
pub mod wire;
