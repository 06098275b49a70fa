//! Group mode: G-IKEv2 (RFC 9838), the group key management that gives many gateways one
//! group SA, keyed and rekeyed by a Group Controller/Key Server (GCKS). Sans-IO like the rest
//! of the crate: payloads, messages and the time in; payloads, messages and deadlines out.
//!
//! | module | owns | must never |
//! |---|---|---|
//! | [`wire`] | the IDg, GSA and KD payload bodies, the G-IKEv2 registry numbers | panic on any byte sequence; accept a form it would not emit |
//! | [`keys`] | KEKs, the RFC 5649 key wrap (the `aes-kw` crate), Data-Security SA key material | print a key; keep one past its drop |
//! | [`rekey`] | the GSA_REKEY message under the Rekey SA: seal, open | accept a message that fails its integrity check |
//! | [`gcks`] | group policy, registration (responder), Sender-IDs, generations, rekeys, removal | give a Sender-ID twice under one key; send a key to a removed member |
//! | [`member`] | registration (initiator), rekeys with replay refusal, SAs with ATD/DTD | accept a GSA_REKEY twice; send without its own Sender-ID |
//! | [`session`] | the endpoint's group state: its GCKSs, memberships, registrations by IKE SA, [`session::GroupEvent`]s | print a key |
//!
//! The exchanges on an IKE SA (GSA_AUTH, GSA_REGISTRATION, GSA_INBAND_REKEY) are in
//! `exchange::group`; GSA_REKEY reception and the routing of a GCKS's rekeys in
//! `endpoint::group`. What is not here yet (see docs/group.md): signatures by the GCKS
//! (GCAUTH 2), multicast delivery, Delete payloads in GSA_INBAND_REKEY, EAP in GSA_AUTH.
pub mod gcks;
pub mod keys;
pub mod member;
pub mod rekey;
pub mod session;
pub mod wire;

#[cfg(test)]
mod tests;
