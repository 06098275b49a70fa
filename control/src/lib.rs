//! roamgate's control plane.
//!
//! - `config`: deployment configuration (YAML), validated into data-plane parameters
//!   (`config::gateway`), IKE connections (`config::ike`) and the lab (`config::lab`).
//! - `ike`: IKEv2, sans-IO (wire codec, crypto, the endpoint and its IKE SAs).
//! - `repo`: the SA repository, turning IKE's events into `proto::Update`s.
//! - `runner`: the control loop that joins the endpoint to the data plane's rings.
//!
//! The links for HA, clusters and group mode come later.
#![deny(unsafe_code)]

pub mod config;
pub mod ike;
pub mod repo;
pub mod runner;
