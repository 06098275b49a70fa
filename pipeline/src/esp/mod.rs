//! ESP tunnel mode (RFC 4303) with AES-GCM (RFC 4106): SA records, the anti-replay window and
//! the seal/open of packets.
pub mod group;
pub mod replay;
pub mod sa;
pub mod tunnel;
