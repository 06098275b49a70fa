//! The I/O of an HA pair: the sync channel between the two nodes ([`channel`]). The pair's
//! logic is `control::ha` (sans-IO); this module only moves its messages.

pub mod channel;
