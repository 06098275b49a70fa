//! Security policy database (placeholder, being written).
