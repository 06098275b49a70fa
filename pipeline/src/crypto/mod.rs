//! AEAD backends (placeholder, being written).
