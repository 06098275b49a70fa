//! The GSA_REKEY message (RFC 9838 section 2.4.1): one message from the GCKS, no response,
//! protected by the Rekey SA: `HDR(SPIi | SPIr = the Rekey SA's SPI, GSA_REKEY, Message ID),
//! SK{GSA, KD}`. The GCKS authenticates implicitly (GCAUTH 1): only holders of the Rekey SA's
//! key can seal it (which every member is: RFC 9838 does not recommend implicit authentication
//! where origin authentication matters). Keys inside are wrapped under the Rekey SA's GSK_w,
//! or, for a new Rekey SA after a removal, under each remaining member's own KWK.
//!
//! Replay: the Message ID starts at the policy's GSA_INITIAL_MESSAGE_ID and grows with every
//! rekey; a member accepts only a Message ID above the last it accepted on that Rekey SA.
//! IVs: the Rekey SA's cipher is an [`SkCipher`] used by the GCKS alone (members only open),
//! whose IV is a counter: no IV repeats under one Rekey SA key.

use crate::crypto::{Secret, SkCipher};
use crate::group::wire::exchange;
use crate::wire::{self, Header, Payload, WireError, HEADER_LEN};

/// Why a GSA_REKEY message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RekeyError {
    #[error("malformed: {0}")]
    Wire(#[from] WireError),
    #[error("not a GSA_REKEY request")]
    NotRekey,
    #[error("unknown Rekey SA")]
    UnknownSpi,
    #[error("integrity check failed")]
    Integrity,
    #[error("replayed or old message id {got} (last accepted {last})")]
    Replay { got: u32, last: u32 },
    #[error("missing payload: {0}")]
    Missing(&'static str),
    #[error("key: {0}")]
    Key(#[from] crate::group::keys::KeyError),
    #[error("no key this member holds wraps the SA key")]
    NoKey,
    #[error("policy: {0}")]
    Policy(&'static str),
    /// Our Sender-ID does not fit the GWP_SENDER_ID_BITS of the new policy (RFC 9838 section
    /// 2.5.2: a fatal error, re-register); the SAs are not installed (section 2.4.1.4).
    #[error("Sender-ID {sender_id} does not fit {bits} bits: re-register")]
    SenderIdUnfit { sender_id: u32, bits: u8 },
}

/// Splits a 16-octet Rekey SA SPI into the header's SPIi and SPIr.
pub fn spi_halves(spi: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(spi.get(..8).unwrap_or(&[0; 8]));
    b.copy_from_slice(spi.get(8..).unwrap_or(&[0; 8]));
    (u64::from_be_bytes(a), u64::from_be_bytes(b))
}

/// Seals `inner` as a GSA_REKEY with `message_id` under the Rekey SA `spi`. Empty when the
/// cipher's IV space is used up (it then seals nothing rather than repeat an IV).
pub fn seal(spi: &[u8; 16], message_id: u32, cipher: &mut SkCipher, inner: &[Payload]) -> Vec<u8> {
    let (spi_i, spi_r) = spi_halves(spi);
    seal_message(
        (spi_i, spi_r),
        exchange::GSA_REKEY,
        wire::FLAG_INITIATOR,
        message_id,
        cipher,
        inner,
    )
}

/// `HDR, SK{inner}` for any exchange: GSA_REKEY under a Rekey SA, or GSA_REGISTRATION and
/// GSA_AUTH under an IKE SA's SK_e (the caller's cipher for its direction).
pub fn seal_message(
    (spi_i, spi_r): (u64, u64),
    exchange: u8,
    flags: u8,
    message_id: u32,
    cipher: &mut SkCipher,
    inner: &[Payload],
) -> Vec<u8> {
    let mut plain = Vec::new();
    let first = wire::emit_chain(inner, &mut plain);
    let sealed = cipher.sealed_len(plain.len());
    let sk_len = sealed.saturating_add(4);
    let mut m = Vec::with_capacity(HEADER_LEN.saturating_add(sk_len));
    Header {
        spi_i,
        spi_r,
        next_payload: wire::payload::SK,
        exchange,
        flags,
        message_id,
        length: u32::try_from(HEADER_LEN.saturating_add(sk_len)).unwrap_or(0),
    }
    .emit(&mut m);
    m.push(first);
    m.push(0);
    m.extend_from_slice(&u16::try_from(sk_len).unwrap_or(0).to_be_bytes());
    let body = cipher.seal(&m, &plain);
    zeroize::Zeroize::zeroize(&mut plain);
    if body.is_empty() {
        return Vec::new();
    }
    m.extend_from_slice(&body);
    m
}

/// The header of a GSA_REKEY (for finding the Rekey SA before opening).
pub fn header(msg: &[u8]) -> Result<Header, RekeyError> {
    let h = Header::parse(msg)?;
    if h.exchange != exchange::GSA_REKEY || h.is_response() {
        return Err(RekeyError::NotRekey);
    }
    if h.length as usize != msg.len() {
        return Err(RekeyError::Wire(WireError::Malformed("length field")));
    }
    Ok(h)
}

/// Opens a GSA_REKEY under `cipher`: its inner payloads.
pub fn open(msg: &[u8], cipher: &SkCipher) -> Result<Vec<Payload>, RekeyError> {
    header(msg)?;
    Ok(open_message(msg, cipher)?.1)
}

/// Opens `HDR, SK{...}` of any exchange under `cipher`: the header and the inner payloads.
pub fn open_message(msg: &[u8], cipher: &SkCipher) -> Result<(Header, Vec<Payload>), RekeyError> {
    let h = Header::parse(msg)?;
    if h.length as usize != msg.len() {
        return Err(RekeyError::Wire(WireError::Malformed("length field")));
    }
    let chain = wire::parse_chain(msg, HEADER_LEN, h.next_payload)?;
    let sk = chain.sk.ok_or(RekeyError::Missing("SK"))?;
    if !chain.payloads.is_empty() {
        return Err(RekeyError::Wire(WireError::Malformed(
            "payloads outside the encrypted payload",
        )));
    }
    let body_at = sk.header_at.saturating_add(4);
    let aad = msg.get(..body_at).ok_or(WireError::Truncated)?;
    let body = msg.get(body_at..).ok_or(WireError::Truncated)?;
    let plain: Secret = cipher.open(aad, body).map_err(|_| RekeyError::Integrity)?;
    Ok((h, wire::parse_chain(&plain, 0, sk.first_inner)?.payloads))
}
