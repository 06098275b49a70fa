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

/// IKE header length (RFC 7296 3.1).
const IKE_HEADER_LEN: usize = 28;
/// A generic payload header and a Notify payload's protocol, SPI size and type (3.10).
const NOTIFY_HEADER_LEN: usize = 8;
/// The COOKIE notify's type (RFC 7296 3.10.1).
const COOKIE: u16 = 16390;

/// Whether IKE message `ike` (without a non-ESP marker) looks like an IKE_SA_INIT request
/// that echoes a responder's cookie: an IKEv2 header of an initiator's request with message
/// id 0, a non-zero initiator SPI and a zero responder SPI, whose length is the datagram's,
/// and whose first payload is a Notify of type COOKIE (RFC 7296 2.6: the cookie must be the
/// first payload) with protocol 0, no SPI and 1 to 64 bytes of cookie inside the message.
///
/// A cheap check that any sender can pass (the cookie itself is checked by the control
/// plane, which alone holds the secret): it buys such a request the cookie lane's headroom,
/// never admission.
pub fn is_cookie_echo(ike: &[u8]) -> bool {
    let (Some(h), Some(n)) = (
        ike.get(..IKE_HEADER_LEN),
        ike.get(IKE_HEADER_LEN..IKE_HEADER_LEN + NOTIFY_HEADER_LEN),
    ) else {
        return false;
    };
    let be16 = |b: &[u8], at: usize| match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    };
    let be32 = |b: &[u8], at: usize| match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    };
    let spi_i_zero = h.get(..8).is_none_or(|s| s.iter().all(|b| *b == 0));
    let spi_r_zero = h.get(8..16).is_some_and(|s| s.iter().all(|b| *b == 0));
    let (next, version, exchange, flags) = match h.get(16..20) {
        Some(&[a, b, c, d]) => (a, b, c, d),
        _ => return false,
    };
    let header_ok = !spi_i_zero
        && spi_r_zero
        && next == 41 // Notify
        && version >> 4 == 2
        && exchange == 34 // IKE_SA_INIT
        && flags & 0x08 != 0 // Initiator
        && flags & 0x20 == 0 // not a response
        && be32(h, 20) == 0 // message id
        && usize::try_from(be32(h, 24)).ok() == Some(ike.len());
    let cookie_len = usize::from(be16(n, 2)).saturating_sub(NOTIFY_HEADER_LEN);
    header_ok
        && n.get(4..6) == Some(&[0, 0]) // protocol id, SPI size
        && be16(n, 6) == COOKIE
        && (1..=64).contains(&cookie_len)
        && IKE_HEADER_LEN + NOTIFY_HEADER_LEN + cookie_len <= ike.len()
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

    /// An IKE_SA_INIT request whose first payload is a notify of `kind` with `cookie`, then an
    /// empty Nonce payload.
    fn init_with_notify(kind: u16, cookie: &[u8]) -> Vec<u8> {
        let notify_len = 8 + cookie.len();
        let len = 28 + notify_len + 4;
        let mut m = Vec::new();
        m.extend(0x1122_3344_5566_7788u64.to_be_bytes());
        m.extend([0u8; 8]);
        m.extend([41, 0x20, 34, 0x08]);
        m.extend([0u8; 4]);
        m.extend((len as u32).to_be_bytes());
        m.extend([40, 0]);
        m.extend((notify_len as u16).to_be_bytes());
        m.extend([0, 0]);
        m.extend(kind.to_be_bytes());
        m.extend(cookie);
        m.extend([0, 0, 0, 4]);
        m
    }

    #[test]
    fn a_cookie_echo_is_told_by_its_first_payload_and_lengths() {
        let echo = init_with_notify(COOKIE, &[7; 17]);
        assert!(is_cookie_echo(&echo));
        assert!(is_cookie_echo(&init_with_notify(COOKIE, &[7; 1])));
        assert!(is_cookie_echo(&init_with_notify(COOKIE, &[7; 64])));
        // Each field that makes it one, bent.
        let bent = |at: usize, v: u8| {
            let mut m = echo.clone();
            m[at] = v;
            m
        };
        for m in [
            init_with_notify(16388, &[7; 17]), // NAT_DETECTION_SOURCE_IP, not COOKIE
            init_with_notify(COOKIE, &[]),     // no cookie
            init_with_notify(COOKIE, &[7; 65]), // longer than RFC 7296 allows
            Vec::new(),
            {
                let mut m = echo.clone();
                m[..8].fill(0); // zero initiator SPI
                m
            },
            bent(15, 1),            // responder SPI set
            bent(16, 33),           // first payload SA
            bent(17, 0x10),         // IKEv1
            bent(18, 35),           // IKE_AUTH
            bent(19, 0x00),         // not the initiator
            bent(19, 0x28),         // a response
            bent(23, 1),            // message id 1
            bent(27, echo[27] + 1), // length beyond the datagram
            bent(32, 1),            // protocol id
            bent(33, 4),            // SPI size
            bent(31, 8 + 30),       // a 30-byte cookie: beyond the message
            echo[..28 + 7].to_vec(),
        ] {
            assert!(!is_cookie_echo(&m), "{m:02x?}");
        }
    }
}
