//! roamgate's control plane.
//!
//! - `config`: deployment configuration (YAML), validated into data-plane parameters
//!   (`config::gateway`), IKE connections (`config::ike`) and the lab (`config::lab`).
//! - `repo`: the SA repository, turning IKE's events (crate `ike`) into `proto::Update`s.
//! - `ha`: the HA pair (roles, sync log and records, the nonce arithmetic of takeover).
//! - `runner`: the control loop that joins the endpoint to the data plane's rings.
#![deny(unsafe_code)]

pub mod config;
pub mod ha;
pub mod repo;
pub mod runner;
