//! UDP encapsulation of ESP (RFC 3948): telling ESP, IKE and NAT-keepalives apart on port 4500.

/// IKE's port: no ESP here, everything is IKE (without a non-ESP marker).
pub const IKE_PORT: u16 = 500;
/// The NAT-T port: ESP, IKE after a non-ESP marker, and keepalives share it.
pub const NATT_PORT: u16 = 4500;
/// The non-ESP marker: four zero bytes where an ESP packet has its (never zero) SPI.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Length of [`NON_ESP_MARKER`].
pub const NON_ESP_MARKER_LEN: usize = NON_ESP_MARKER.len();
/// A NAT-keepalive: a single 0xFF byte (RFC 3948 2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];
/// Shortest ESP packet: SPI and sequence number.
pub const MIN_ESP_LEN: usize = super::esp::ESP_HEADER_LEN;

/// What a UDP payload on port 4500 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A NAT-keepalive (one 0xFF byte): consume it.
    Keepalive,
    /// IKE after the non-ESP marker: the IKE message starts at [`NON_ESP_MARKER_LEN`].
    Ike,
    /// ESP: the ESP header starts at offset 0.
    Esp,
    /// None of these (too short for ESP, or a zero SPI without the whole marker).
    Malformed,
}

/// Classifies the payload of a UDP datagram received on [`NATT_PORT`] (RFC 3948 2.2, 2.3).
pub fn classify(payload: &[u8]) -> Kind {
    match payload {
        [0xff] => Kind::Keepalive,
        [0, 0, 0, 0, ..] => Kind::Ike,
        p if p.len() >= MIN_ESP_LEN => Kind::Esp,
        _ => Kind::Malformed,
    }
}

/// The IKE message of a payload classified [`Kind::Ike`] (what follows the marker), or None.
pub fn ike_message(payload: &[u8]) -> Option<&[u8]> {
    match classify(payload) {
        Kind::Ike => payload.get(NON_ESP_MARKER_LEN..),
        _ => None,
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(classify(&NAT_KEEPALIVE), Kind::Keepalive);
        assert_eq!(classify(&[0, 0, 0, 0]), Kind::Ike);
        assert_eq!(classify(&[0, 0, 0, 0, 0x12, 0x34]), Kind::Ike);
        assert_eq!(
            ike_message(&[0, 0, 0, 0, 0x12, 0x34]),
            Some(&[0x12, 0x34][..])
        );
        assert_eq!(classify(&[0, 0, 0x10, 1, 0, 0, 0, 1]), Kind::Esp);
        assert_eq!(classify(&[0, 0, 0x10, 1, 0, 0, 0, 1, 9, 9]), Kind::Esp);
        assert_eq!(ike_message(&[0, 0, 0x10, 1, 0, 0, 0, 1]), None);
        // too short for ESP
        assert_eq!(classify(&[0, 0, 0x10, 1, 0, 0, 0]), Kind::Malformed);
        assert_eq!(classify(&[]), Kind::Malformed);
        assert_eq!(classify(&[0xfe]), Kind::Malformed);
        assert_eq!(classify(&[0xff, 0xff]), Kind::Malformed);
        assert_eq!(classify(&[0, 0, 0]), Kind::Malformed);
        // a non-zero SPI is ESP even if it starts with zeros
        assert_eq!(classify(&[0, 0, 0, 1, 0, 0, 0, 0]), Kind::Esp);
    }
}
