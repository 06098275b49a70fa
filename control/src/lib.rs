//! roamgate's control plane.
//!
//! - `config`: deployment configuration (YAML), validated into data-plane parameters
//!   (`config::gateway`), IKE connections (`config::ike`) and the lab (`config::lab`).
//! - `repo`: the SA repository, turning IKE's events (crate `ike`) into `proto::Update`s.
//! - `core`: the sans-IO control core (the endpoint, the repository, placement, the
//!   decisions on data-plane reports, the IKE view), with explicit time.
//! - `driver`: the one control loop around the core, over a `Link` to the data plane;
//!   `driver::inproc` is the in-process link (the shared-memory one is the appliance's).
//! - `cluster`: a crypto node and its edges (the SA carrier messages, placement, the forwarder).
//! - `ha`: the HA pair (roles, sync log and records, the nonce arithmetic of takeover).
//! - `nat_coord`: connections that follow a moving client (issue 21): the routing
//!   coordinator's records in the cluster store and each node's HAM/FAM logic, sans-IO.
#![deny(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod core;
pub mod driver;
pub mod group;
pub mod ha;
pub mod nat_coord;
pub mod repo;
#[cfg(test)]
mod testing;
pub mod vcm;
