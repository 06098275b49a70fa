//! Group mode (G-IKEv2, RFC 9838; docs/group.md) in the control plane, sans-IO: the key
//! server node ([`gcks`], driven by `roamgate gcks`) and a member's translation of its group
//! keys into data-plane updates ([`member`], in the control core of `roamgate run`).
//!
//! | module | owns | must never |
//! |---|---|---|
//! | [`gcks`] | the GCKS's endpoint, reloads (member removal), its counters and status | log a key |

pub mod gcks;
pub mod member;
