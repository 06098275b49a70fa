//! roamgate's control plane.
//!
//! - `config`, `ike_config`: deployment configuration (YAML), validated into data-plane
//!   parameters and IKE connections.
//! - `repo`: the SA repository, turning IKE's events (crate `ike`) into
//!   `pipeline::msg::Update`s.
//! - `runner`: the control loop that joins the endpoint to the data plane's rings.
//!
//! The links for HA, clusters and group mode come later.
#![deny(unsafe_code)]

pub mod config;
pub mod ike_config;
pub mod repo;
pub mod runner;
