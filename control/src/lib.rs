//! roamgate's control plane.
#![deny(unsafe_code)]
