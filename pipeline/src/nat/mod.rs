//! NAT masquerading (placeholder, being written).
