//! ESP tunnel mode (RFC 4303) with AES-GCM (RFC 4106).
pub mod replay;
