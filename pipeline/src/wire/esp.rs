//! The ESP header and trailer (RFC 4303).
//!
//! The header view covers an ESP packet: SPI, sequence number (low 32 bits), then everything
//! else (IV, ciphertext, ICV) as the payload; what the payload holds depends on the SA's
//! algorithm and is not this module's business. The trailer functions work on a plaintext:
//! [`Trailer`] appends `padding | pad length | next header` (padding bytes 1, 2, 3, ...) and
//! [`Trailer::parse`] checks a decrypted plaintext's tail as RFC 4303 2.4 requires.

use super::bytes::{self, Field, Rest};
use super::{Error, IpProtocol, Result};

/// Length of the ESP header (SPI and sequence number).
pub const ESP_HEADER_LEN: usize = 8;
/// Alias of [`ESP_HEADER_LEN`].
pub const HEADER_LEN: usize = ESP_HEADER_LEN;
/// Pad length and next header.
pub const TRAILER_FIXED_LEN: usize = 2;
/// The alignment RFC 4303 2.4 requires of `payload + padding + 2`, and all AES-GCM needs.
pub const MIN_ALIGN: usize = 4;

mod field {
    use super::{Field, Rest};
    pub const SPI: Field = 0..4;
    pub const SEQ: Field = 4..8;
    pub const PAYLOAD: Rest = 8..;
}

/// A view of an ESP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps `buffer` and runs [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if shorter than the 8-byte header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < ESP_HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn spi(&self) -> u32 {
        bytes::get_u32(self.buffer.as_ref(), field::SPI)
    }

    /// The sequence number field (the low 32 bits with ESN).
    pub fn seq_number(&self) -> u32 {
        bytes::get_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::PAYLOAD)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_spi(&mut self, v: u32) {
        bytes::set_u32(self.buffer.as_mut(), field::SPI, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        bytes::set_u32(self.buffer.as_mut(), field::SEQ, v);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        bytes::slice_mut(self.buffer.as_mut(), field::PAYLOAD)
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// A parsed ESP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Repr {
    pub spi: u32,
    pub seq_number: u32,
}

impl Repr {
    /// Parses a checked header: `Malformed` for SPI 0 (reserved, RFC 4303 2.1).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.spi() == 0 {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            spi: packet.spi(),
            seq_number: packet.seq_number(),
        })
    }

    pub const fn header_len(&self) -> usize {
        ESP_HEADER_LEN
    }

    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        ESP_HEADER_LEN + payload_len
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_spi(self.spi);
        packet.set_seq_number(self.seq_number);
    }
}

/// The ESP trailer of a plaintext: padding, pad length, next header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Trailer {
    pub pad_len: u8,
    /// Next header: [`IpProtocol::IPV4_IN_IP`] (4) or [`IpProtocol::IPV6_IN_IP`] (41) in
    /// tunnel mode; [`IpProtocol::NoNextHeader`] (59) for a dummy packet (RFC 4303 2.6).
    pub next_header: IpProtocol,
}

/// Padding that makes `payload_len + padding + 2` a multiple of `align`. `Unsupported` unless
/// `align` is a power of two from 4 to 256.
pub fn pad_len(payload_len: usize, align: usize) -> Result<u8> {
    if !align.is_power_of_two() || !(MIN_ALIGN..=256).contains(&align) {
        return Err(Error::Unsupported);
    }
    let rem = payload_len.wrapping_add(TRAILER_FIXED_LEN) & (align - 1);
    let pad = (align - rem) & (align - 1);
    u8::try_from(pad).map_err(|_| Error::Unsupported)
}

impl Trailer {
    /// The trailer for a payload of `payload_len` bytes aligned to `align` (4 for AES-GCM).
    pub fn for_payload(
        payload_len: usize,
        align: usize,
        next_header: IpProtocol,
    ) -> Result<Trailer> {
        Ok(Trailer {
            pad_len: pad_len(payload_len, align)?,
            next_header,
        })
    }

    /// Length of the trailer (padding + 2).
    pub const fn len(&self) -> usize {
        self.pad_len as usize + TRAILER_FIXED_LEN
    }

    /// Never empty (pad length and next header are always there).
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes the trailer into the first [`len`](Self::len) bytes of `tail`. `Truncated` if
    /// `tail` is shorter.
    pub fn emit(&self, tail: &mut [u8]) -> Result<()> {
        let tail = tail.get_mut(..self.len()).ok_or(Error::Truncated)?;
        let (pad, fixed) = tail
            .split_at_mut_checked(usize::from(self.pad_len))
            .ok_or(Error::Truncated)?;
        for (i, b) in pad.iter_mut().enumerate() {
            *b = (i as u8).wrapping_add(1);
        }
        if let [pl, nh] = fixed {
            *pl = self.pad_len;
            *nh = self.next_header.into();
        }
        Ok(())
    }

    /// Writes the trailer after the `payload_len` bytes of payload at the start of `buf` and
    /// returns the new plaintext length. `Truncated` if `buf` has no room.
    pub fn append(&self, buf: &mut [u8], payload_len: usize) -> Result<usize> {
        let end = payload_len
            .checked_add(self.len())
            .ok_or(Error::Truncated)?;
        self.emit(buf.get_mut(payload_len..end).ok_or(Error::Truncated)?)?;
        Ok(end)
    }

    /// Appends the trailer to a plaintext held in a `Vec`.
    pub fn append_to_vec(&self, buf: &mut Vec<u8>) {
        let at = buf.len();
        buf.resize(at + self.len(), 0);
        let _ = self.emit(buf.get_mut(at..).unwrap_or(&mut []));
    }

    /// Checks the tail of a decrypted plaintext (`payload | padding | pad length | next
    /// header`, RFC 4303 2.4): the pad length fits and the padding is exactly 1, 2, 3, ....
    /// Returns the length of the payload before the padding, and the trailer. `Truncated` if
    /// shorter than 2 bytes or the pad length exceeds the plaintext, `Malformed` for bad padding.
    pub fn parse(plaintext: &[u8]) -> Result<(usize, Trailer)> {
        let (pad_len, nh) = match plaintext {
            [.., pl, nh] => (*pl, *nh),
            _ => return Err(Error::Truncated),
        };
        let padded = plaintext.len() - TRAILER_FIXED_LEN;
        let inner_len = padded
            .checked_sub(usize::from(pad_len))
            .ok_or(Error::Truncated)?;
        let padding = plaintext.get(inner_len..padded).ok_or(Error::Truncated)?;
        if padding
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(Error::Malformed);
        }
        Ok((
            inner_len,
            Trailer {
                pad_len,
                next_header: IpProtocol::from(nh),
            },
        ))
    }
}

/// [`Trailer::parse`], returning the inner length and next header.
pub fn parse_trailer(plaintext: &[u8]) -> Result<(usize, IpProtocol)> {
    Trailer::parse(plaintext).map(|(n, t)| (n, t.next_header))
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
    use crate::wire::checksum::tests::Rng;

    #[test]
    fn header() {
        let buf = [0, 0, 0x10, 0x01, 0, 0, 0, 7, 0xaa, 0xbb];
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.spi(), 0x1001);
        assert_eq!(p.seq_number(), 7);
        assert_eq!(p.payload(), &[0xaa, 0xbb]);
        let r = Repr::parse(&p).unwrap();
        let mut out = [0u8; 10];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out[..8], buf[..8]);
        for n in 0..8 {
            assert_eq!(
                Packet::new_checked(&buf[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        assert_eq!(
            Repr::parse(&Packet::new_checked(&[0u8; 8][..]).unwrap()),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn pad_lengths() {
        assert_eq!(pad_len(0, 4), Ok(2));
        assert_eq!(pad_len(1, 4), Ok(1));
        assert_eq!(pad_len(2, 4), Ok(0));
        assert_eq!(pad_len(3, 4), Ok(3));
        assert_eq!(pad_len(14, 16), Ok(0));
        assert_eq!(pad_len(15, 16), Ok(15));
        assert_eq!(pad_len(0, 3), Err(Error::Unsupported));
        assert_eq!(pad_len(0, 2), Err(Error::Unsupported));
        assert_eq!(pad_len(0, 512), Err(Error::Unsupported));
        for n in 0..100 {
            for align in [4, 8, 16] {
                let p = usize::from(pad_len(n, align).unwrap());
                assert_eq!((n + p + 2) % align, 0);
                assert!(p < align);
            }
        }
    }

    #[test]
    fn trailer_round_trip() {
        let mut rng = Rng(8);
        for n in 0..64 {
            let mut v = rng.bytes(n);
            let t = Trailer::for_payload(n, 4, IpProtocol::IPV4_IN_IP).unwrap();
            t.append_to_vec(&mut v);
            assert_eq!(v.len() % 4, 0);
            assert_eq!(Trailer::parse(&v).unwrap(), (n, t));
            assert_eq!(parse_trailer(&v).unwrap(), (n, IpProtocol::IPV4_IN_IP));
            let mut buf = vec![0u8; n + 5];
            assert_eq!(t.append(&mut buf, n).unwrap(), n + t.len());
            assert_eq!(Trailer::parse(&buf[..n + t.len()]).unwrap().0, n);
        }
        let t = Trailer::for_payload(3, 4, IpProtocol::IPV6_IN_IP).unwrap();
        assert_eq!(t.append(&mut [0u8; 7], 3), Err(Error::Truncated));
        // RFC 4303 2.4 shape: payload | 1 2 3 | 3 | 41
        let mut v = vec![0xee; 3];
        t.append_to_vec(&mut v);
        assert_eq!(v, [0xee, 0xee, 0xee, 1, 2, 3, 3, 41]);
    }

    #[test]
    fn bad_trailers() {
        assert_eq!(Trailer::parse(&[]), Err(Error::Truncated));
        assert_eq!(Trailer::parse(&[4]), Err(Error::Truncated));
        assert_eq!(
            Trailer::parse(&[0, 4]).unwrap(),
            (
                0,
                Trailer {
                    pad_len: 0,
                    next_header: IpProtocol::IPV4_IN_IP
                }
            )
        );
        // pad length beyond the plaintext
        assert_eq!(Trailer::parse(&[1, 2, 3, 4]), Err(Error::Truncated));
        // wrong padding bytes
        assert_eq!(Trailer::parse(&[9, 1, 3, 2, 4]), Err(Error::Malformed));
        assert_eq!(Trailer::parse(&[9, 0, 0, 2, 4]), Err(Error::Malformed));
        let mut rng = Rng(9);
        for _ in 0..5000 {
            let n = rng.below(300);
            let g = rng.bytes(n);
            if let Ok((inner, t)) = Trailer::parse(&g) {
                assert_eq!(inner + t.len(), n);
            }
        }
    }
}
