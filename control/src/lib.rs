//! roamgate's control plane.
//!
//! - `config`, `ike_config`: deployment configuration (YAML), validated into data-plane
//!   parameters and IKE connections.
//! - `ike`: IKEv2, sans-IO (wire codec, crypto, the endpoint and its IKE SAs).
//! - `repo`: the SA repository, turning IKE's events into `proto::Update`s.
//! - `runner`: the control loop that joins the endpoint to the data plane's rings.
//!
//! The links for HA, clusters and group mode come later.
#![deny(unsafe_code)]

pub mod config;
pub mod ike;
pub mod ike_config;
pub mod repo;
pub mod runner;
