//! roamgate's control plane.
//!
//! Today: deployment configuration (YAML) and its validation into data-plane parameters.
//! IKEv2 (sans-IO), the SA repository and the links for HA, clusters and group mode come next;
//! they hand SAs to the data plane as `pipeline::msg::Update`s.
#![deny(unsafe_code)]

pub mod config;
pub mod ike;
pub mod ike_config;
pub mod repo;
