//! IKEv2 (RFC 7296), sans-IO: the core takes datagrams, addresses and the time as inputs and
//! returns datagrams to send, events (SAs up, rekeyed, deleted) and its next deadline. No
//! sockets, no clock reads, no unseeded randomness inside.
//!
//! - [`wire`]: the message codec.
//! - [`crypto`]: PRFs, key derivation, Diffie-Hellman, the encrypted payload.
//! - [`sa`]: the IKE SA state machine (initiator and responder) and its CHILD_SAs.
#![deny(unsafe_code)]

pub mod crypto;
pub mod sa;
pub mod wire;

#[cfg(test)]
mod tests;
