//! ESP tunnel mode on a frame: seal an inner IP packet into ESP (+ UDP) + outer IP, and open
//! an ESP packet back into its inner IP packet.
//!
//! Layout (RFC 4303 section 2, RFC 4106 section 3):
//! `[outer IP][UDP 4500]? [SPI][seq lo][IV = 64-bit seq][ciphertext: inner | pad | pad len | next hdr][ICV 16]`
//!
//! The explicit IV is the SA's 64-bit sequence number, which never repeats under one key and is
//! owned by exactly one worker: GCM nonce uniqueness follows from sequence-number uniqueness.
//! AAD is SPI || seq (8 bytes), or SPI || seq hi || seq lo (12 bytes) with ESN (RFC 4106 5).
//!
//! AES-CBC + HMAC SAs (RFC 3602, RFC 2404, RFC 4868) carry a 16-byte IV that nobody can
//! predict ([`IvGen`](crate::crypto::IvGen)), pad the plaintext to the AES block, and append
//! an ICV of the HMAC's truncated length; with ESN the high half of the sequence number is
//! authenticated after the ciphertext (RFC 4303 2.2.1). The ICV is checked before anything is
//! decrypted. GCM SAs take the first branch of each function, as before.
//! Nothing here may panic on packet contents: every index is checked and a failure is a
//! [`DropReason`].

use crate::crypto::cbc::{CbcError, BLOCK_LEN, CBC_IV_LEN};
use crate::crypto::{esp_nonce, IV_LEN, NONCE_LEN, TAG_LEN};
use core::net::IpAddr;

use crate::esp::group::{GroupError, GroupSa};
use crate::esp::replay::ReplayError;
use crate::esp::sa::{CbcSa, Encap, EspCipher, InboundSa, OutboundSa, OuterTemplate};
use crate::ids::{SaId, Spi};
use crate::port::Frame;
use crate::sad::Sad;
use crate::spd::Prefix;
use crate::stats::{Crossing, DropReason};
use crate::wire::{checksum, esp as wire_esp, ethernet, ipv4, ipv6, udp, EtherType};

pub const ESP_HEADER_LEN: usize = 8;
/// Smallest ESP packet: header, IV, 4 bytes of ciphertext (pad to 4 with pad length and next
/// header), ICV.
pub const MIN_ESP_LEN: usize = ESP_HEADER_LEN + IV_LEN + 4 + TAG_LEN;

/// Next-header values of tunnel mode.
pub const NH_IPV4: u8 = 4;
pub const NH_IPV6: u8 = 41;
pub const NH_NONE: u8 = 59;

/// Padding so that inner + pad + 2 is a multiple of 4 (GCM needs no block alignment; RFC 4303
/// 2.4 requires 4-byte alignment of the trailer).
#[inline]
pub fn pad_len(inner_len: usize) -> usize {
    // Alignment 4 is always valid, so the wire helper cannot refuse it.
    wire_esp::pad_len(inner_len, 4).map_or(0, usize::from)
}

/// Padding so that inner + pad + 2 is a multiple of the AES block (RFC 3602 2.4).
#[inline]
pub fn cbc_pad_len(inner_len: usize) -> usize {
    wire_esp::pad_len(inner_len, BLOCK_LEN).map_or(0, usize::from)
}

/// Bytes added to an inner packet of `inner_len` bytes by this SA (outer headers included).
#[inline]
pub fn overhead(sa: &OutboundSa, inner_len: usize) -> usize {
    match &sa.cipher {
        EspCipher::Aead(_) => {
            sa.outer_len() + ESP_HEADER_LEN + IV_LEN + pad_len(inner_len) + 2 + TAG_LEN
        }
        EspCipher::Cbc(c) => {
            sa.outer_len() + ESP_HEADER_LEN + CBC_IV_LEN + cbc_pad_len(inner_len) + 2 + c.icv_len
        }
    }
}

/// What the outer header inherits from the inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerMeta {
    /// 4 (IPv4) or 41 (IPv6).
    pub next_header: u8,
    pub dscp: u8,
    pub ecn: u8,
}

/// Builds the AAD into `buf`, returning the used prefix.
fn aad(buf: &mut [u8; 12], spi: Spi, seq: u64, esn: bool) -> &[u8] {
    buf[..4].copy_from_slice(&spi.0.to_be_bytes());
    if esn {
        buf[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
        buf[8..12].copy_from_slice(&(seq as u32).to_be_bytes());
        &buf[..12]
    } else {
        buf[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        &buf[..8]
    }
}

/// Seals the inner IP packet in `f` into a complete outer IP packet of `sa`.
///
/// ECN is copied to the outer header as RFC 6040 normal mode says; DSCP is copied too. The
/// outer IPv4 header has DF set: oversize packets are answered with ICMP before they get here.
///
/// Returns the lifetime this packet reached, if any: the caller reports it to the control
/// plane, and also what the SA's sequence number reached (`sa.next_report`).
///
/// A GCM packet is [`frame_gcm`] + [`seal_gcm`] + [`finish_gcm`] in one go; the worker's main
/// path runs the seals of a burst after its framing (see `worker::gcm_burst`).
pub fn encapsulate<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
) -> Result<Option<Crossing>, DropReason> {
    if let EspCipher::Cbc(_) = sa.cipher {
        return encapsulate_cbc(sa, f, meta);
    }
    let mut framed = GcmFramed::default();
    frame_gcm(sa, f, meta, &mut framed)?;
    let EspCipher::Aead(cipher) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    seal_gcm(&**cipher, f, &framed)?;
    finish_gcm(sa, f, usize::from(framed.inner_len), meta, true)
}

/// A GCM packet framed by [`frame_gcm`]: the ESP header, IV, plaintext and trailer in place
/// and room for the ICV at the frame's end, waiting for [`seal_gcm`]. Its sequence number is
/// taken: the SA never hands it out again, whether or not the packet is sent.
///
/// The nonce and AAD travel here rather than being built when the seal runs: ipsec-mb reads
/// both with masked vector loads, which cannot take their bytes from stores still in flight
/// and wait until those reach the cache. Written when the packet is framed, a burst earlier
/// than its seal, they have long arrived (measured: a nonce and AAD built just before the
/// call cost about 17 ns of a 23 ns seal at 64 B). For the same reason [`frame_gcm`] writes
/// them where the seal will read them: a copy on the way is a fresh store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcmFramed {
    pub seq: u64,
    /// Salt || IV (the IV is the 64-bit sequence number).
    nonce: [u8; NONCE_LEN],
    /// SPI || seq, or SPI || seq hi || seq lo with ESN: the first `aad_len` bytes.
    aad: [u8; 12],
    aad_len: u8,
    /// The ciphertext's length (inner packet, padding, pad length, next header). It ends
    /// [`TAG_LEN`] bytes before the frame's data, wherever headers are put in front of it.
    ct_len: u16,
    pub inner_len: u16,
}

/// The first part of [`encapsulate`] for a GCM SA: every check, the sequence number,
/// padding, trailer, ESP header and IV; `f`'s data is then the ESP packet with the plaintext
/// in place and room for the ICV, ready for [`seal_gcm`] with what is written to `out`.
#[inline]
pub fn frame_gcm<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
    out: &mut GcmFramed,
) -> Result<(), DropReason> {
    frame_gcm_at(sa, f, meta, out, 0)
}

/// [`frame_gcm`], [`finish_gcm`] and the Ethernet header toward `dst` from `src` in one go,
/// the worker's common way: the frame grows at its front once, by all its headers (one
/// update of the buffer's offsets instead of three), and the outer header is written with
/// the rest. Returns the lifetime this packet reached, as [`finish_gcm`] does. The frame is
/// then ready for [`seal_gcm`] (and [`udp6_checksum`]); what it holds is what the three
/// steps make (test `a_gcm_packet_sealed_after_its_headers_is_the_packet_encapsulate_makes`).
#[inline]
pub fn frame_gcm_eth<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
    out: &mut GcmFramed,
    (src, dst): ([u8; 6], [u8; 6]),
) -> Result<Option<Crossing>, DropReason> {
    let hlen = usize::from(sa.outer.len);
    let front = ethernet::HEADER_LEN + hlen;
    frame_gcm_at(sa, f, meta, out, front)?;
    let total = f.len() - ethernet::HEADER_LEN;
    let Some((eth, outer)) = f
        .data_mut()
        .get_mut(..front)
        .map(|h| h.split_at_mut(ethernet::HEADER_LEN))
    else {
        return Err(DropReason::NoBufferRoom);
    };
    let mut eth = ethernet::Frame::new_unchecked(eth);
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(if sa.ipv6 {
        EtherType::Ipv6
    } else {
        EtherType::Ipv4
    });
    write_outer(
        &sa.outer,
        sa.ipv6,
        sa.encap.is_some(),
        outer,
        total,
        meta,
        sa.seq,
    )?;
    Ok(sa.counters.count(u64::from(out.inner_len)))
}

/// [`frame_gcm`] with `front` more bytes of room taken in front of the ESP header (the frame's
/// data then starts there; the caller fills them).
#[inline(always)]
fn frame_gcm_at<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
    out: &mut GcmFramed,
    front: usize,
) -> Result<(), DropReason> {
    if sa.counters.expired() {
        return Err(DropReason::SaExpired);
    }
    let inner_len = f.len();
    let pad = pad_len(inner_len);
    let tail = pad + 2 + TAG_LEN;
    let ct_start = front + ESP_HEADER_LEN + IV_LEN;
    // Room in front for the ESP header and IV, the outer header (now, or later from
    // `finish_gcm`) and whatever else the caller puts there.
    let head = (ESP_HEADER_LEN + IV_LEN + sa.outer_len()).max(ct_start);
    let ct_len = inner_len + pad + 2;
    // An IP packet is at most 65,535 bytes: anything longer cannot be sealed into one.
    let (Ok(ct_len16), Ok(inner_len16)) = (u16::try_from(ct_len), u16::try_from(inner_len)) else {
        return Err(DropReason::NoBufferRoom);
    };
    if f.tailroom() < tail || f.headroom() < head {
        return Err(DropReason::NoBufferRoom);
    }
    let seq = match sa.seq.checked_add(1) {
        Some(s) if s <= sa.seq_max() => s,
        _ => return Err(sa.seq_refusal()),
    };
    sa.seq = seq;

    // Trailer: padding 1, 2, 3, ..., pad length, next header. Room was checked above.
    if !f.append(tail) || !f.prepend(ct_start) {
        return Err(DropReason::NoBufferRoom);
    }
    let iv = seq.to_be_bytes();
    let d = f.data_mut();
    let ct_end = ct_start + ct_len;
    let Some(trailer) = d.get_mut(ct_start + inner_len..ct_end) else {
        return Err(DropReason::NoBufferRoom);
    };
    for (i, b) in trailer.iter_mut().take(pad).enumerate() {
        *b = (i + 1) as u8;
    }
    if let [.., pl, nh] = trailer {
        *pl = pad as u8;
        *nh = meta.next_header;
    }
    let Some(hdr) = d.get_mut(front..ct_start) else {
        return Err(DropReason::NoBufferRoom);
    };
    hdr[0..4].copy_from_slice(&sa.spi.0.to_be_bytes());
    hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
    hdr[8..16].copy_from_slice(&iv);
    out.seq = seq;
    out.nonce[..4].copy_from_slice(&sa.salt);
    out.nonce[4..].copy_from_slice(&iv);
    out.aad_len = aad(&mut out.aad, sa.spi, seq, sa.esn).len() as u8;
    out.ct_len = ct_len16;
    out.inner_len = inner_len16;
    Ok(())
}

/// Seals a packet [`frame_gcm`] framed, with `cipher` (its SA's). Headers may have been put
/// in front of the ESP packet since; its end must not have moved.
#[inline]
pub fn seal_gcm<F: Frame>(
    cipher: &dyn crate::crypto::Aead,
    f: &mut F,
    framed: &GcmFramed,
) -> Result<(), DropReason> {
    let d = f.data_mut();
    let ct_len = usize::from(framed.ct_len);
    let Some(start) = d.len().checked_sub(ct_len + TAG_LEN) else {
        return Err(DropReason::NoBufferRoom);
    };
    let Some((ct, tag)) = d
        .get_mut(start..)
        .and_then(|esp| esp.split_at_mut_checked(ct_len))
    else {
        return Err(DropReason::NoBufferRoom);
    };
    let Ok(tag): Result<&mut [u8; TAG_LEN], _> = tag.try_into() else {
        return Err(DropReason::NoBufferRoom);
    };
    let aad = framed
        .aad
        .get(..usize::from(framed.aad_len))
        .unwrap_or(&framed.aad);
    cipher.seal_in_place(&framed.nonce, aad, ct, tag);
    Ok(())
}

/// The last part of [`encapsulate`] for a GCM SA, right after [`frame_gcm`] framed the
/// packet of `inner_len` bytes: the lifetime count and the outer header. May run before the
/// seal (`sealed` false): an IPv6 + UDP header's checksum, which covers the ciphertext
/// (RFC 8200 8.1), is then left to [`udp6_checksum`] after the seal. (Its inputs are the
/// caller's own values, not read back from the [`GcmFramed`] just written: a read across
/// fields stored apart waits for the stores.)
#[inline]
pub fn finish_gcm<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    inner_len: usize,
    meta: InnerMeta,
    sealed: bool,
) -> Result<Option<Crossing>, DropReason> {
    let crossing = sa.counters.count(inner_len as u64);
    let udp = sa.encap.map(|_| (sa.local, sa.remote));
    push_template(&sa.outer, sa.ipv6, udp, sealed, f, meta, sa.seq)?;
    Ok(crossing)
}

/// The UDP checksum of a packet of IPv6 + UDP SA `sa` headed before its seal
/// ([`finish_gcm`] with `sealed` false), once it is sealed: the UDP datagram is the frame's
/// last bytes. Nothing to do for any other SA.
#[inline]
pub fn udp6_checksum<F: Frame>(
    sa: &OutboundSa,
    f: &mut F,
    framed: &GcmFramed,
) -> Result<(), DropReason> {
    if !(sa.ipv6 && sa.encap.is_some()) {
        return Ok(());
    }
    let d = f.data_mut();
    let udp_len = udp::HEADER_LEN + ESP_HEADER_LEN + IV_LEN + usize::from(framed.ct_len) + TAG_LEN;
    let Some(seg) = d
        .len()
        .checked_sub(udp_len)
        .and_then(|start| d.get_mut(start..))
    else {
        return Err(DropReason::NoBufferRoom);
    };
    udp::Packet::new_unchecked(seg).fill_checksum(&sa.local, &sa.remote);
    Ok(())
}

/// The high half of the sequence number the ICV covers (ESN only).
#[inline]
fn esn_hi(esn: bool, seq: u64) -> Option<u32> {
    esn.then_some((seq >> 32) as u32)
}

pub(crate) fn cbc_reason(e: CbcError) -> DropReason {
    match e {
        CbcError::Auth => DropReason::AuthFailed,
        CbcError::Length => DropReason::EspBadLength,
        CbcError::Backend => DropReason::CryptoFailed,
    }
}

/// [`encapsulate`] for an AES-CBC + HMAC SA: block padding, an unpredictable IV, the ICV of
/// the integrity algorithm.
#[inline(never)]
fn encapsulate_cbc<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
) -> Result<Option<Crossing>, DropReason> {
    let framed = frame_cbc(sa, f, meta)?;
    let EspCipher::Cbc(cbc) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    let Some(esp) = f.data_mut().get_mut(..framed.esp_len) else {
        return Err(DropReason::NoBufferRoom);
    };
    cbc.imp
        .seal_in_place(esp, framed.esn_hi)
        .map_err(cbc_reason)?;
    finish_cbc(sa, f, &framed)
}

/// A CBC packet framed by [`frame_cbc`], waiting for its seal ([`crate::crypto::cbc::seal_burst`])
/// and then [`finish_cbc`]. Its sequence number is taken: the SA never hands it out again,
/// whether or not the packet is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbcFramed {
    pub seq: u64,
    /// The ESN high half the ICV covers.
    pub esn_hi: Option<u32>,
    pub inner_len: usize,
    /// The ESP packet, SPI to ICV, at the start of the frame's data.
    pub esp_len: usize,
    pub meta: InnerMeta,
}

/// Whether `sa` seals with AES-CBC + HMAC (and so may be sealed a burst at a time through
/// [`frame_cbc`], `seal_burst` and [`finish_cbc`]).
#[inline]
pub fn is_cbc(sa: &OutboundSa) -> bool {
    matches!(sa.cipher, EspCipher::Cbc(_))
}

/// The first half of [`encapsulate`] for a CBC SA: every check, the sequence number, padding,
/// trailer, header and IV; `f`'s data is then the ESP packet with the plaintext in place and
/// room for the ICV, ready for the seal.
pub fn frame_cbc<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    meta: InnerMeta,
) -> Result<CbcFramed, DropReason> {
    if sa.counters.expired() {
        return Err(DropReason::SaExpired);
    }
    let EspCipher::Cbc(cbc) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    let CbcSa {
        iv: Some(ivgen),
        icv_len,
        ..
    } = &**cbc
    else {
        // An inbound record's state in an outbound one: never built that way.
        return Err(DropReason::CryptoFailed);
    };
    let icv_len = *icv_len;
    let inner_len = f.len();
    let pad = cbc_pad_len(inner_len);
    let tail = pad + 2 + icv_len;
    let head = ESP_HEADER_LEN + CBC_IV_LEN + sa.outer_len();
    if f.tailroom() < tail || f.headroom() < head {
        return Err(DropReason::NoBufferRoom);
    }
    let seq = match sa.seq.checked_add(1) {
        Some(s) if s <= sa.seq_max() => s,
        _ => return Err(sa.seq_refusal()),
    };
    sa.seq = seq;
    if !f.append(tail) || !f.prepend(ESP_HEADER_LEN + CBC_IV_LEN) {
        return Err(DropReason::NoBufferRoom);
    }
    let d = f.data_mut();
    let ct_start = ESP_HEADER_LEN + CBC_IV_LEN;
    let ct_end = ct_start + inner_len + pad + 2;
    let Some(trailer) = d.get_mut(ct_start + inner_len..ct_end) else {
        return Err(DropReason::NoBufferRoom);
    };
    for (i, b) in trailer.iter_mut().take(pad).enumerate() {
        *b = (i + 1) as u8;
    }
    if let [.., pl, nh] = trailer {
        *pl = pad as u8;
        *nh = meta.next_header;
    }
    let Some(hdr) = d.get_mut(..ct_start) else {
        return Err(DropReason::NoBufferRoom);
    };
    hdr[0..4].copy_from_slice(&sa.spi.0.to_be_bytes());
    hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
    hdr[8..24].copy_from_slice(&ivgen.iv(sa.spi.0, seq));
    Ok(CbcFramed {
        seq,
        esn_hi: esn_hi(sa.esn, seq),
        inner_len,
        esp_len: ct_end + icv_len,
        meta,
    })
}

/// The second half of [`encapsulate`] for a CBC SA, after its seal: the lifetimes and the
/// outer header.
pub fn finish_cbc<F: Frame>(
    sa: &mut OutboundSa,
    f: &mut F,
    framed: &CbcFramed,
) -> Result<Option<Crossing>, DropReason> {
    let crossing = sa.counters.count(framed.inner_len as u64);
    push_outer(sa, f, framed.meta, framed.seq)?;
    Ok(crossing)
}

/// Prepends the outer header from the SA's template and fills in the per-packet fields.
fn push_outer<F: Frame>(
    sa: &OutboundSa,
    f: &mut F,
    meta: InnerMeta,
    seq: u64,
) -> Result<(), DropReason> {
    let udp = sa.encap.map(|_| (sa.local, sa.remote));
    push_template(&sa.outer, sa.ipv6, udp, true, f, meta, seq)
}

/// Prepends the outer header `t` (IPv6 if `ipv6`; `udp` names the endpoints of an
/// encapsulated one, for IPv6's UDP checksum, computed only if `udp6_sum`) with the packet's
/// lengths, TOS and checksum.
#[inline]
fn push_template<F: Frame>(
    t: &OuterTemplate,
    ipv6: bool,
    udp: Option<(IpAddr, IpAddr)>,
    udp6_sum: bool,
    f: &mut F,
    meta: InnerMeta,
    seq: u64,
) -> Result<(), DropReason> {
    let hlen = usize::from(t.len);
    let total = f.len() + hlen;
    if total > usize::from(u16::MAX) || hlen == 0 || !f.prepend(hlen) {
        return Err(DropReason::NoBufferRoom);
    }
    let d = f.data_mut();
    let Some(hdr) = d.get_mut(..hlen) else {
        return Err(DropReason::NoBufferRoom);
    };
    write_outer(t, ipv6, udp.is_some(), hdr, total, meta, seq)?;
    if let (true, true, Some((local, remote))) = (ipv6, udp6_sum, udp) {
        // IPv6 forbids a zero UDP checksum here (RFC 8200 8.1): compute it over ESP.
        let Some(seg) = d.get_mut(ipv6::HEADER_LEN..) else {
            return Err(DropReason::NoBufferRoom);
        };
        udp::Packet::new_unchecked(seg).fill_checksum(&local, &remote);
    }
    Ok(())
}

/// Writes the outer header `t` (IPv6 if `ipv6`, then UDP if `udp`) into `hdr` (its length
/// exactly) for an outer packet of `total` bytes: the template, then its lengths, TOS and
/// checksum (a UDP checksum over IPv6 is left to the caller).
#[inline(always)]
fn write_outer(
    t: &OuterTemplate,
    ipv6: bool,
    udp: bool,
    hdr: &mut [u8],
    total: usize,
    meta: InnerMeta,
    seq: u64,
) -> Result<(), DropReason> {
    if total > usize::from(u16::MAX) {
        return Err(DropReason::NoBufferRoom);
    }
    // Every outer header starts with 20 bytes (all of IPv4's): those as one fixed-size copy,
    // the rest (UDP, IPv6's other 20) after it. (A copy of a length known only at run time is
    // a call to `memcpy`; so is a `match` over the few lengths there are, which the compiler
    // folds back into one.)
    let (Some((first, rest)), Some((t_first, t_rest))) = (
        hdr.split_first_chunk_mut::<20>(),
        t.bytes.split_first_chunk::<20>(),
    ) else {
        return Err(DropReason::NoBufferRoom);
    };
    *first = *t_first;
    if !rest.is_empty() {
        let Some(r) = t_rest.get(..rest.len()) else {
            return Err(DropReason::NoBufferRoom);
        };
        rest.copy_from_slice(r);
    }
    let tos = (meta.dscp << 2) | (meta.ecn & 3);
    let ip_len = if ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    if ipv6 {
        // Version 6, traffic class = inner DSCP + ECN (RFC 6040 normal mode), flow label 0.
        hdr[0] = 0x60 | (tos >> 4);
        hdr[1] = tos << 4;
        hdr[4..6].copy_from_slice(&((total - ip_len) as u16).to_be_bytes());
    } else {
        // RFC 6864: DF is set, so the ID only needs to differ among packets in flight.
        let ident = seq as u16;
        hdr[1] = tos;
        hdr[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        hdr[4..6].copy_from_slice(&ident.to_be_bytes());
        let sum = t.ipv4_sum + u32::from(tos) + total as u32 + u32::from(ident);
        hdr[10..12].copy_from_slice(&(!checksum::fold(sum)).to_be_bytes());
    }
    if udp {
        let udp_len = (total - ip_len) as u16;
        hdr[ip_len + 4..ip_len + 6].copy_from_slice(&udp_len.to_be_bytes());
    }
    Ok(())
}

/// Bytes a group SA adds to an inner packet of `inner_len` bytes toward outer header `t`.
#[inline]
pub fn group_overhead(t: &OuterTemplate, inner_len: usize) -> usize {
    usize::from(t.len) + ESP_HEADER_LEN + IV_LEN + pad_len(inner_len) + 2 + TAG_LEN
}

/// Seals the inner IP packet in `f` on group generation `sa` (RFC 9838), toward the member
/// whose outer header is `t`: standard RFC 4106 ESP whose explicit IV is the Sender-ID in the
/// top bits and this member's counter below, the sequence number that counter
/// ([`crate::esp::group`]). Returns the counter used. Refused with `SeqExhausted` once the
/// counter is used up (never an IV twice), `GroupNotSending` on a receive-only generation.
pub fn encapsulate_group<F: Frame>(
    sa: &mut GroupSa,
    t: &OuterTemplate,
    f: &mut F,
    meta: InnerMeta,
) -> Result<u64, DropReason> {
    let inner_len = f.len();
    let pad = pad_len(inner_len);
    if f.tailroom() < pad + 2 + TAG_LEN
        || f.headroom() < ESP_HEADER_LEN + IV_LEN + usize::from(t.len)
    {
        return Err(DropReason::NoBufferRoom);
    }
    let Some(sender) = sa.sender.as_mut() else {
        return Err(DropReason::GroupNotSending);
    };
    let (seq, iv) = sender.take().map_err(|_| DropReason::SeqExhausted)?;
    if !f.append(pad + 2 + TAG_LEN) || !f.prepend(ESP_HEADER_LEN + IV_LEN) {
        return Err(DropReason::NoBufferRoom);
    }
    let d = f.data_mut();
    let ct_start = ESP_HEADER_LEN + IV_LEN;
    let ct_end = ct_start + inner_len + pad + 2;
    let Some(trailer) = d.get_mut(ct_start + inner_len..ct_end) else {
        return Err(DropReason::NoBufferRoom);
    };
    for (i, b) in trailer.iter_mut().take(pad).enumerate() {
        *b = (i + 1) as u8;
    }
    if let [.., pl, nh] = trailer {
        *pl = pad as u8;
        *nh = meta.next_header;
    }
    let Some((hdr, rest)) = d.split_at_mut_checked(ct_start) else {
        return Err(DropReason::NoBufferRoom);
    };
    hdr[0..4].copy_from_slice(&sa.spi.0.to_be_bytes());
    hdr[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
    hdr[8..16].copy_from_slice(&iv);
    let Some((ct, tag)) = rest.split_at_mut_checked(ct_end - ct_start) else {
        return Err(DropReason::NoBufferRoom);
    };
    let Ok(tag): Result<&mut [u8; TAG_LEN], _> = tag.try_into() else {
        return Err(DropReason::NoBufferRoom);
    };
    let mut aad_buf = [0u8; 12];
    let aad = aad(&mut aad_buf, sa.spi, seq, false);
    sa.aead
        .seal_in_place(&esp_nonce(&sa.salt, &iv), aad, ct, tag);
    sa.out_counters.count(inner_len as u64);
    push_template(t, t.bytes[0] >> 4 == 6, None, true, f, meta, seq)?;
    Ok(seq)
}

/// Opens the group ESP packet at the start of `f`'s data on generation `sa`: the sender's
/// window checked before and moved after the ICV ([`crate::esp::group::GroupReplay`]). On
/// success `f` holds the inner packet; the result says whether it lies in the group's
/// selectors (inner source in `src_ts`, destination in `dst_ts`). Drops are counted
/// on the generation.
pub fn decapsulate_group<F: Frame>(
    sa: &mut GroupSa,
    f: &mut F,
    now: u64,
) -> Result<Opened, DropReason> {
    let r = open_group(sa, f);
    match r {
        Ok((next_header, inner_len)) => {
            sa.counters.last_used.set(now.max(1));
            if !f.adj(ESP_HEADER_LEN + IV_LEN) {
                return Err(DropReason::EspTruncated);
            }
            f.truncate(inner_len);
            Ok(Opened {
                sa: sa.id,
                spi: sa.spi,
                next_header,
                inner_len,
                crossing: None,
                selectors_ok: selectors_admit(f.data(), next_header, &sa.dst_ts, &sa.src_ts),
            })
        }
        Err(reason) => {
            sa.counters.record_drop(reason);
            Err(reason)
        }
    }
}

fn open_group<F: Frame>(sa: &mut GroupSa, f: &mut F) -> Result<(u8, usize), DropReason> {
    if f.len() < MIN_ESP_LEN {
        return Err(DropReason::EspTruncated);
    }
    let d = f.data_mut();
    match sa.replay.open_in_place(sa.aead.as_ref(), &sa.salt, d) {
        Ok(_sender) => {}
        Err(GroupError::Short) => return Err(DropReason::EspTruncated),
        Err(GroupError::SeqMismatch) => return Err(DropReason::GroupSeqMismatch),
        Err(GroupError::Replay(e)) => return Err(replay_reason(e)),
        Err(GroupError::Integrity) => return Err(DropReason::AuthFailed),
        Err(_) => return Err(DropReason::CryptoFailed),
    }
    let Some(ct) = d
        .len()
        .checked_sub(TAG_LEN)
        .and_then(|end| d.get(ESP_HEADER_LEN + IV_LEN..end))
    else {
        return Err(DropReason::EspTruncated);
    };
    let Ok((inner_len, nh)) = wire_esp::parse_trailer(ct) else {
        return Err(DropReason::BadPadding);
    };
    let nh = u8::from(nh);
    match nh {
        NH_IPV4 | NH_IPV6 => {
            sa.counters.count(inner_len as u64);
            Ok((nh, inner_len))
        }
        NH_NONE => {
            sa.counters.count_quietly(inner_len as u64);
            Err(DropReason::TfcDummy)
        }
        _ => {
            sa.counters.count_quietly(inner_len as u64);
            Err(DropReason::BadNextHeader)
        }
    }
}

/// The result of a successful open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub sa: SaId,
    pub spi: Spi,
    /// 4 (IPv4) or 41 (IPv6).
    pub next_header: u8,
    pub inner_len: usize,
    /// The lifetime this packet reached, if any.
    pub crossing: Option<Crossing>,
    /// The inner packet is what the SA was negotiated to carry (RFC 4301 5.2): its source
    /// lies in the SA's remote traffic selector, its destination in its local one. False too
    /// for an inner packet too short to hold its addresses (the caller's parse of the inner
    /// packet names that). Checked here, where the SA is at hand: carrying the two selectors
    /// out instead (18 bytes each, byte-aligned) had each packet's result copied through the
    /// stack in pieces of other sizes than they were written in, a store-forwarding stall
    /// per copy (~5 ns each of a 64 B packet's ~120 on an Intel Xeon).
    pub selectors_ok: bool,
}

/// Whether the inner packet `inner` (IPv4 when `next_header` is 4, IPv6 when 41) has its
/// source in `remote` and its destination in `local`; false when it is too short to hold
/// them.
#[inline]
fn selectors_admit(inner: &[u8], next_header: u8, local: &Prefix, remote: &Prefix) -> bool {
    // Source and destination, N bytes each, from byte `at` on.
    fn addrs<const N: usize>(inner: &[u8], at: usize) -> Option<([u8; N], [u8; N])> {
        let src = inner.get(at..at + N)?.try_into().ok()?;
        let dst = inner.get(at + N..at + 2 * N)?.try_into().ok()?;
        Some((src, dst))
    }
    let (src, dst): (IpAddr, IpAddr) = match next_header {
        4 => match addrs::<4>(inner, 12) {
            Some((s, d)) => (s.into(), d.into()),
            None => return false,
        },
        41 => match addrs::<16>(inner, 8) {
            Some((s, d)) => (s.into(), d.into()),
            None => return false,
        },
        _ => return false,
    };
    remote.contains(src) && local.contains(dst)
}

/// Opens the ESP packet that starts at the beginning of `f`'s data. On success `f` holds the
/// inner IP packet. Drops attributable to an SA are also counted on that SA. `arrived` is how
/// it came: ESP in the other encapsulation than its SA accepts is `EspWrongEncap`
/// ([`EncapRule`](crate::esp::sa::EncapRule)), refused before any cryptography. `now` (the
/// worker's clock) becomes the SA's last use when the packet opens.
pub fn decapsulate<F: Frame>(
    sad: &mut Sad,
    f: &mut F,
    arrived: Encap,
    now: u64,
) -> Result<Opened, DropReason> {
    match decapsulate_or_defer(sad, f, arrived, now, false)? {
        Decap::Opened(o) => Ok(o),
        // Not deferred, so never a pending CBC open.
        Decap::Cbc(_) => Err(DropReason::CryptoFailed),
    }
}

/// [`decapsulate`], except that with `defer` a CBC SA's packet stops before its ICV check
/// ([`Decap::Cbc`]) so that a burst's CBC packets are opened together.
///
/// Always inlined (into the worker's `open`, its one caller on the packet path, and
/// [`decapsulate`]): returned through memory, its result was written in single fields and
/// read back by the caller's move in wider pieces, a store-forwarding stall on every packet
/// (half the caller's samples in a profile of the decrypt path).
#[inline(always)]
pub fn decapsulate_or_defer<F: Frame>(
    sad: &mut Sad,
    f: &mut F,
    arrived: Encap,
    now: u64,
    defer: bool,
) -> Result<Decap, DropReason> {
    let len = f.len();
    if len < MIN_ESP_LEN {
        return Err(DropReason::EspTruncated);
    }
    let d = f.data_mut();
    let (Some(spi), Some(seq_lo), Some(iv)) = (
        d.get(0..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes),
        d.get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes),
        d.get(8..16).and_then(|b| <[u8; IV_LEN]>::try_from(b).ok()),
    ) else {
        return Err(DropReason::EspTruncated);
    };
    let spi = Spi(spi);
    let Some(sa) = sad.inbound_mut(spi) else {
        return Err(DropReason::UnknownSpi);
    };
    // The GCM nonce (salt || IV) is built now, before the checks, not just before the open:
    // ipsec-mb reads it with a masked load, which waits until the stores that built it have
    // reached the cache (`worker::gcm_burst`). `black_box` keeps the compiler from sinking
    // those stores to the call.
    let nonce = esp_nonce(&sa.salt, &iv);
    core::hint::black_box(&nonce);
    if !sa.accept.accepts(arrived) {
        sa.counters.record_drop(DropReason::EspWrongEncap);
        return Err(DropReason::EspWrongEncap);
    }
    let r = match sa.cipher {
        EspCipher::Aead(_) => open_with(sa, d, seq_lo, &nonce),
        EspCipher::Cbc(_) if defer => match check_cbc(sa, d, seq_lo) {
            Ok(seq) => return Ok(Decap::Cbc(CbcOpen { spi, seq })),
            Err(r) => Err(r),
        },
        EspCipher::Cbc(_) => open_cbc(sa, d, seq_lo),
    };
    opened(sa, f, spi, r, now).map(Decap::Opened)
}

/// What [`decapsulate_or_defer`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Opened (a GCM SA).
    Opened(Opened),
    /// A CBC SA's packet that passed every check before its ICV: open it (in a burst, with
    /// [`crate::crypto::cbc::open_burst`]) and hand the outcome to [`finish_open_cbc`].
    Cbc(CbcOpen),
}

/// A CBC packet waiting for its ICV check and decryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbcOpen {
    pub spi: Spi,
    /// The full sequence number (the ESN high half inferred from the replay window).
    pub seq: u64,
}

impl CbcOpen {
    /// The ESN high half the ICV covers, if `sa` uses ESN.
    pub fn esn_hi(&self, sa: &InboundSa) -> Option<u32> {
        esn_hi(sa.esn, self.seq)
    }
}

/// The end of a deferred CBC open: the burst's `result` for this packet, then as
/// [`decapsulate`] after the ICV (the replay window advances only now: a second copy of the
/// same number in the burst is refused here), the trailer, the lifetimes.
pub fn finish_open_cbc<F: Frame>(
    sad: &mut Sad,
    f: &mut F,
    p: CbcOpen,
    result: Result<(), CbcError>,
    now: u64,
) -> Result<Opened, DropReason> {
    let Some(sa) = sad.inbound_mut(p.spi) else {
        return Err(DropReason::UnknownSpi);
    };
    let r = match result {
        Ok(()) => after_cbc_open(sa, f.data_mut(), p.seq),
        Err(e) => Err(cbc_reason(e)),
    };
    opened(sa, f, p.spi, r, now)
}

/// The outcome of an open on `sa`: the frame trimmed to the inner packet, or the drop
/// counted on the SA.
#[inline]
fn opened<F: Frame>(
    sa: &mut InboundSa,
    f: &mut F,
    spi: Spi,
    r: Result<(u8, usize, Option<Crossing>), DropReason>,
    now: u64,
) -> Result<Opened, DropReason> {
    match r {
        Ok((next_header, inner_len, crossing)) => {
            let id = sa.id;
            sa.counters.last_used.set(now.max(1));
            if !f.adj(ESP_HEADER_LEN + sa.cipher.iv_len()) {
                return Err(DropReason::EspTruncated);
            }
            f.truncate(inner_len);
            Ok(Opened {
                sa: id,
                spi,
                next_header,
                inner_len,
                crossing,
                selectors_ok: selectors_admit(f.data(), next_header, &sa.local_ts, &sa.remote_ts),
            })
        }
        Err(reason) => {
            sa.counters.record_drop(reason);
            Err(reason)
        }
    }
}

fn replay_reason(e: ReplayError) -> DropReason {
    match e {
        ReplayError::TooOld => DropReason::ReplayTooOld,
        ReplayError::Duplicate => DropReason::ReplayDuplicate,
        ReplayError::Zero => DropReason::ReplayZero,
    }
}

/// Replay pre-check, tag check (with `nonce`, the SA's salt and the packet's IV), window
/// advance, trailer validation. Returns (next header, inner length).
#[inline]
fn open_with(
    sa: &mut InboundSa,
    d: &mut [u8],
    seq_lo: u32,
    nonce: &[u8; NONCE_LEN],
) -> Result<(u8, usize, Option<Crossing>), DropReason> {
    if sa.counters.expired() {
        return Err(DropReason::SaExpired);
    }
    let seq = sa.replay.check(seq_lo).map_err(replay_reason)?;
    let Some((hdr, body)) = d.split_at_mut_checked(ESP_HEADER_LEN + IV_LEN) else {
        return Err(DropReason::EspTruncated);
    };
    // Without ESN the AAD (SPI || seq) is the packet's own first 8 bytes: read where they
    // are. Built on the stack, it would be a fresh store that ipsec-mb's masked load of the
    // AAD waits for (see `worker::gcm_burst`).
    let mut aad_buf = [0u8; 12];
    let aad = match hdr.get(..ESP_HEADER_LEN) {
        Some(in_place) if !sa.esn => in_place,
        _ => aad(&mut aad_buf, sa.spi, seq, sa.esn),
    };
    let Some(ct_len) = body.len().checked_sub(TAG_LEN) else {
        return Err(DropReason::EspTruncated);
    };
    let (ct, tag) = body.split_at_mut(ct_len);
    let Ok(tag): Result<&[u8; TAG_LEN], _> = (&*tag).try_into() else {
        return Err(DropReason::EspTruncated);
    };
    let EspCipher::Aead(cipher) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    if cipher.open_in_place(nonce, aad, ct, tag).is_err() {
        return Err(DropReason::AuthFailed);
    }
    sa.replay.advance(seq).map_err(replay_reason)?;
    after_open(sa, ct)
}

/// [`open_with`] for an AES-CBC + HMAC SA: the length must be header, IV, whole blocks and
/// ICV; the ICV (with the inferred ESN high half) is checked before decryption.
#[inline(never)]
fn open_cbc(
    sa: &mut InboundSa,
    d: &mut [u8],
    seq_lo: u32,
) -> Result<(u8, usize, Option<Crossing>), DropReason> {
    let seq = check_cbc(sa, d, seq_lo)?;
    let EspCipher::Cbc(cbc) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    cbc.imp
        .open_in_place(d, esn_hi(sa.esn, seq))
        .map_err(cbc_reason)?;
    after_cbc_open(sa, d, seq)
}

/// The checks of a CBC packet before its ICV: lifetime, length, replay window (not advanced).
/// Returns the full sequence number.
fn check_cbc(sa: &mut InboundSa, d: &[u8], seq_lo: u32) -> Result<u64, DropReason> {
    if sa.counters.expired() {
        return Err(DropReason::SaExpired);
    }
    let EspCipher::Cbc(cbc) = &sa.cipher else {
        return Err(DropReason::CryptoFailed);
    };
    let Some(ct_len) = d
        .len()
        .checked_sub(ESP_HEADER_LEN + CBC_IV_LEN + cbc.icv_len)
    else {
        return Err(DropReason::EspTruncated);
    };
    if ct_len == 0 || ct_len % BLOCK_LEN != 0 {
        return Err(DropReason::EspBadLength);
    }
    sa.replay.check(seq_lo).map_err(replay_reason)
}

/// After a CBC packet's ICV matched and it was decrypted: the replay window, the trailer.
fn after_cbc_open(
    sa: &mut InboundSa,
    d: &[u8],
    seq: u64,
) -> Result<(u8, usize, Option<Crossing>), DropReason> {
    sa.replay.advance(seq).map_err(replay_reason)?;
    let icv_len = match &sa.cipher {
        EspCipher::Cbc(cbc) => cbc.icv_len,
        EspCipher::Aead(_) => return Err(DropReason::CryptoFailed),
    };
    let ct_start = ESP_HEADER_LEN + CBC_IV_LEN;
    let Some(ct) = d
        .len()
        .checked_sub(icv_len)
        .and_then(|end| d.get(ct_start..end))
    else {
        return Err(DropReason::EspTruncated);
    };
    after_open(sa, ct)
}

/// Trailer validation and lifetimes of an authentic packet.
#[inline]
fn after_open(sa: &mut InboundSa, ct: &[u8]) -> Result<(u8, usize, Option<Crossing>), DropReason> {
    // The packet is authentic from here on; what follows validates the peer's trailer.
    let Ok((inner_len, nh)) = wire_esp::parse_trailer(ct) else {
        return Err(DropReason::BadPadding);
    };
    let nh = u8::from(nh);
    // Every authentic packet counts toward the lifetimes; a limit that a TFC dummy reaches
    // is reported with the next real packet (the thresholds compare with >=).
    match nh {
        NH_IPV4 | NH_IPV6 => Ok((nh, inner_len, sa.counters.count(inner_len as u64))),
        NH_NONE => {
            sa.counters.count_quietly(inner_len as u64);
            Err(DropReason::TfcDummy)
        }
        _ => {
            sa.counters.count_quietly(inner_len as u64);
            Err(DropReason::BadNextHeader)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{AeadAlg, Backend, CbcAlg, EspAlg, IntegAlg};
    use crate::esp::sa::{build_inbound, build_outbound, SaKeys, SaParams, UdpEncap};
    use crate::port::mem::MemFrame;
    use crate::spd::Prefix;
    use core::net::IpAddr;

    fn params(
        local: &str,
        remote: &str,
        esn: bool,
        encap: bool,
        alg: impl Into<EspAlg>,
    ) -> SaParams {
        let alg = alg.into();
        let keymat: Vec<u8> = (0..alg.keymat_len())
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(1))
            .collect();
        SaParams {
            id: SaId(3),
            spi: Spi(0x1234_5678),
            keys: SaKeys::from_keymat(alg, &keymat).unwrap(),
            esn,
            replay_window: 64,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            encap: encap.then_some(UdpEncap {
                local_port: 4500,
                remote_port: 4501,
            }),
            local_ts: "10.1.0.0/24".parse::<Prefix>().unwrap(),
            remote_ts: "10.2.0.0/24".parse::<Prefix>().unwrap(),
            outer_ttl: 64,
            resume: Default::default(),
            checkpoint: None,
            lifetime: Default::default(),
        }
    }

    fn mirror(p: &SaParams) -> SaParams {
        let mut m = p.clone();
        core::mem::swap(&mut m.local, &mut m.remote);
        m
    }

    fn inner(len: usize) -> Vec<u8> {
        // A plausible IPv4 header followed by a pattern; ESP does not look inside.
        let mut v: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
        v[0] = 0x45;
        v
    }

    fn backends() -> Vec<Backend> {
        [Backend::IpsecMb, Backend::Ring]
            .into_iter()
            .filter(|b| crate::crypto::available(*b))
            .collect()
    }

    fn strip_outer(f: &mut MemFrame, v6: bool, encap: bool) {
        let n = if v6 { 40 } else { 20 } + if encap { 8 } else { 0 };
        assert!(f.adj(n));
    }

    /// Every transform: both GCM sizes, and CBC with each HMAC.
    fn algs() -> [EspAlg; 6] {
        [
            EspAlg::Aead(AeadAlg::AesGcm128),
            EspAlg::Aead(AeadAlg::AesGcm256),
            EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha1_96),
            EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha256_128),
            EspAlg::Cbc(CbcAlg::AesCbc128, IntegAlg::HmacSha384_192),
            EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha512_256),
        ]
    }

    const CBC: EspAlg = EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha256_128);

    #[test]
    fn seal_then_open_every_combination() {
        for backend in backends() {
            for alg in algs() {
                for (l, r) in [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")] {
                    for esn in [false, true] {
                        for encap in [false, true] {
                            let p = params(l, r, esn, encap, alg);
                            let mut out = build_outbound(backend, &p).unwrap();
                            let mut sad = Sad::with_capacity(4, 9);
                            sad.insert_inbound(build_inbound(backend, &mirror(&p)).unwrap());
                            for len in [20usize, 21, 22, 23, 64, 1400] {
                                let data = inner(len);
                                let mut f = MemFrame::from_bytes(&data).unwrap();
                                let meta = InnerMeta {
                                    next_header: NH_IPV4,
                                    dscp: 10,
                                    ecn: 2,
                                };
                                encapsulate(&mut out, &mut f, meta).unwrap();
                                assert_eq!(f.len(), len + overhead(&out, len));
                                // The outer header is what the SA says.
                                let v6 = p.local.is_ipv6();
                                if v6 {
                                    let ip = ipv6::Packet::new_checked(f.data()).unwrap();
                                    assert_eq!(IpAddr::V6(ip.dst_addr()), p.remote);
                                    assert_eq!((ip.dscp(), ip.ecn()), (10, 2));
                                } else {
                                    let ip = ipv4::Packet::new_checked(f.data()).unwrap();
                                    assert!(ip.verify_checksum());
                                    assert_eq!(IpAddr::V4(ip.dst_addr()), p.remote);
                                    assert_eq!((ip.dscp(), ip.ecn()), (10, 2));
                                    assert!(ip.dont_frag());
                                }
                                strip_outer(&mut f, v6, encap);
                                // The ciphertext is not the plaintext.
                                assert_ne!(
                                    f.data().get(16..16 + len.min(16)),
                                    data.get(..len.min(16))
                                );
                                let arrived = if encap { Encap::Udp } else { Encap::Bare };
                                let o = decapsulate(&mut sad, &mut f, arrived, 1).unwrap();
                                assert_eq!(o.next_header, NH_IPV4);
                                assert_eq!(
                                    f.data(),
                                    &data[..],
                                    "{backend:?} {alg:?} {l} esn={esn} encap={encap} len={len}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_gcm_packet_sealed_after_its_headers_is_the_packet_encapsulate_makes() {
        // The worker frames a GCM packet, puts the outer and Ethernet headers in front and
        // seals it later (`worker::gcm_burst`): the bytes must be encapsulate's, for each
        // nonce/AAD shape (ESN or not) and outer header (IPv4/IPv6, UDP or not). Over IPv6
        // with UDP the UDP checksum (it covers the ciphertext) is filled in after the seal.
        // Its common way, every header at once (`frame_gcm_eth`), must make the same bytes
        // behind its Ethernet header, the same nonce and AAD, and count the same lifetime.
        let (src, dst) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        for backend in backends() {
            for alg in [AeadAlg::AesGcm128, AeadAlg::AesGcm256] {
                for (l, r) in [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")] {
                    for esn in [false, true] {
                        for encap in [false, true] {
                            let p = params(l, r, esn, encap, alg);
                            let mut direct = build_outbound(backend, &p).unwrap();
                            let mut split = build_outbound(backend, &p).unwrap();
                            let mut one = build_outbound(backend, &p).unwrap();
                            for seq in [0u64, 0xffff_fff0] {
                                direct.seq = seq;
                                split.seq = seq;
                                one.seq = seq;
                                for len in [20usize, 23, 64, 1400] {
                                    let data = inner(len);
                                    let meta = InnerMeta {
                                        next_header: NH_IPV4,
                                        dscp: 3,
                                        ecn: 1,
                                    };
                                    let mut a = MemFrame::from_bytes(&data).unwrap();
                                    encapsulate(&mut direct, &mut a, meta).unwrap();
                                    let mut b = MemFrame::from_bytes(&data).unwrap();
                                    let mut g = GcmFramed::default();
                                    frame_gcm(&mut split, &mut b, meta, &mut g).unwrap();
                                    let crossing =
                                        finish_gcm(&mut split, &mut b, len, meta, false).unwrap();
                                    let mut whole = MemFrame::from_bytes(&data).unwrap();
                                    let mut gc = GcmFramed::default();
                                    let crossing_c = frame_gcm_eth(
                                        &mut one,
                                        &mut whole,
                                        meta,
                                        &mut gc,
                                        (src, dst),
                                    )
                                    .unwrap();
                                    assert_eq!((gc, crossing_c), (g, crossing));
                                    assert!(b.prepend(14));
                                    let EspCipher::Aead(c) = &split.cipher else {
                                        panic!("a GCM SA");
                                    };
                                    seal_gcm(&**c, &mut b, &g).unwrap();
                                    udp6_checksum(&split, &mut b, &g).unwrap();
                                    assert!(b.adj(14));
                                    let EspCipher::Aead(cipher) = &one.cipher else {
                                        panic!("a GCM SA");
                                    };
                                    seal_gcm(&**cipher, &mut whole, &gc).unwrap();
                                    udp6_checksum(&one, &mut whole, &gc).unwrap();
                                    let ethertype: &[u8] = if l.contains(':') {
                                        &[0x86, 0xdd]
                                    } else {
                                        &[8, 0]
                                    };
                                    let (eth, behind) = whole.data().split_at(14);
                                    assert_eq!(eth, [&dst[..], &src[..], ethertype].concat());
                                    assert_eq!(behind, b.data(), "in one go: {backend:?} {l} esn={esn} encap={encap} len={len}");
                                    if encap && l.contains(':') {
                                        let seg = &b.data()[ipv6::HEADER_LEN..];
                                        assert!(
                                            udp::Packet::new_checked(seg)
                                                .unwrap()
                                                .verify_checksum(&p.local, &p.remote),
                                            "the UDP checksum covers the sealed packet"
                                        );
                                    }
                                    assert_eq!(
                                        a.data(),
                                        b.data(),
                                        "{backend:?} {alg:?} {l} esn={esn} encap={encap} seq={seq} len={len}"
                                    );
                                    assert_eq!(g.seq, split.seq);
                                    assert_eq!(
                                        (one.counters.packets.get(), one.counters.bytes.get()),
                                        (split.counters.packets.get(), split.counters.bytes.get())
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cbc_sealed_on_one_backend_opens_on_every_other() {
        let all = backends();
        for alg in algs().into_iter().filter(|a| matches!(a, EspAlg::Cbc(..))) {
            for esn in [false, true] {
                let p = params("192.0.2.1", "192.0.2.2", esn, false, alg);
                for &tx in &all {
                    let mut out = build_outbound(tx, &p).unwrap();
                    out.seq = if esn { (7u64 << 32) + 3 } else { 3 };
                    for &rx in &all {
                        let mut inb = build_inbound(rx, &mirror(&p)).unwrap();
                        if esn {
                            // A receiver that has seen this subspace infers the same high half.
                            inb.replay = crate::esp::replay::ReplayWindow::resume(
                                64,
                                true,
                                &proto::sa::ReplayState {
                                    top: 7u64 << 32,
                                    seen: vec![1],
                                },
                            )
                            .unwrap();
                        }
                        let mut sad = Sad::with_capacity(4, 9);
                        sad.insert_inbound(inb);
                        let data = inner(333);
                        let mut f = MemFrame::from_bytes(&data).unwrap();
                        let meta = InnerMeta {
                            next_header: NH_IPV4,
                            dscp: 0,
                            ecn: 0,
                        };
                        encapsulate(&mut out, &mut f, meta).unwrap();
                        strip_outer(&mut f, false, false);
                        // Block-aligned ciphertext, a 16-byte IV, the HMAC's ICV.
                        let icv = match alg {
                            EspAlg::Cbc(_, i) => i.icv_len(),
                            EspAlg::Aead(_) => unreachable!(),
                        };
                        assert_eq!((f.len() - 8 - 16 - icv) % 16, 0);
                        let o = decapsulate(&mut sad, &mut f, Encap::Bare, 1)
                            .unwrap_or_else(|e| panic!("{tx}->{rx} {alg} esn={esn}: {e:?}"));
                        assert_eq!(o.inner_len, 333);
                        assert_eq!(f.data(), &data[..]);
                    }
                }
            }
        }
    }

    #[test]
    fn cbc_ivs_are_unpredictable_not_the_sequence_number() {
        let p = params("192.0.2.1", "192.0.2.2", false, false, CBC);
        let meta = InnerMeta {
            next_header: NH_IPV4,
            dscp: 0,
            ecn: 0,
        };
        let mut ivs = std::collections::HashSet::new();
        for backend in backends() {
            // Two records of the same SA (a restart, a move) still never share an IV stream.
            for _ in 0..2 {
                let mut out = build_outbound(backend, &p).unwrap();
                for seq in 1..=50u64 {
                    let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
                    encapsulate(&mut out, &mut f, meta).unwrap();
                    strip_outer(&mut f, false, false);
                    let iv: [u8; 16] = f.data()[8..24].try_into().unwrap();
                    assert_ne!(iv[..8], seq.to_be_bytes(), "a counter IV");
                    assert!(ivs.insert(iv), "IV repeated");
                }
            }
        }
    }

    #[test]
    fn cbc_bad_lengths_and_padding_are_named() {
        let p = params("192.0.2.1", "192.0.2.2", false, false, CBC);
        let backend = crate::crypto::best_backend();
        let mut out = build_outbound(backend, &p).unwrap();
        let meta = InnerMeta {
            next_header: NH_IPV4,
            dscp: 0,
            ecn: 0,
        };
        let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
        encapsulate(&mut out, &mut f, meta).unwrap();
        strip_outer(&mut f, false, false);
        let esp = f.data().to_vec();
        let fresh = || {
            let mut sad = Sad::with_capacity(4, 9);
            sad.insert_inbound(build_inbound(backend, &mirror(&p)).unwrap());
            sad
        };
        // One byte short of a whole block, and a packet with no ciphertext at all.
        for bad in [&esp[..esp.len() - 1], &esp[..8 + 16 + 16]] {
            let mut f = MemFrame::from_bytes(bad).unwrap();
            let r = decapsulate(&mut fresh(), &mut f, Encap::Bare, 1);
            assert!(
                matches!(
                    r,
                    Err(DropReason::EspBadLength) | Err(DropReason::EspTruncated)
                ),
                "{r:?}"
            );
        }
        // Authentic, but the padding is not 1, 2, 3, ...: sealed by hand with a bad pad byte.
        let keys = &p.keys;
        let (c, i) = match keys.alg {
            EspAlg::Cbc(c, i) => (c, i),
            EspAlg::Aead(_) => unreachable!(),
        };
        let imp = crate::crypto::new_cbc_hmac(backend, c, keys.key(), i, keys.integ_key()).unwrap();
        let mut pkt = vec![0u8; 8 + 16 + 48 + i.icv_len()];
        pkt[..4].copy_from_slice(&p.spi.0.to_be_bytes());
        pkt[4..8].copy_from_slice(&1u32.to_be_bytes());
        let pt = &mut pkt[24..72];
        pt[..40].copy_from_slice(&inner(40));
        pt[40..46].copy_from_slice(&[1, 2, 3, 4, 5, 7]);
        pt[46] = 6;
        pt[47] = NH_IPV4;
        imp.seal_in_place(&mut pkt, None).unwrap();
        let mut f = MemFrame::from_bytes(&pkt).unwrap();
        assert_eq!(
            decapsulate(&mut fresh(), &mut f, Encap::Bare, 1),
            Err(DropReason::BadPadding)
        );
        // The same with good padding opens: the test above failed for the padding alone.
        let pt = &mut pkt[24..72];
        let _ = pt;
        let mut good = vec![0u8; 8 + 16 + 48 + i.icv_len()];
        good[..4].copy_from_slice(&p.spi.0.to_be_bytes());
        good[4..8].copy_from_slice(&1u32.to_be_bytes());
        good[24..64].copy_from_slice(&inner(40));
        good[64..70].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        good[70] = 6;
        good[71] = NH_IPV4;
        imp.seal_in_place(&mut good, None).unwrap();
        let mut f = MemFrame::from_bytes(&good).unwrap();
        assert!(decapsulate(&mut fresh(), &mut f, Encap::Bare, 1).is_ok());
    }

    #[test]
    fn every_tampered_byte_fails_authentication() {
        for alg in [EspAlg::Aead(AeadAlg::AesGcm128), CBC] {
            let p = params("192.0.2.1", "192.0.2.2", true, false, alg);
            for backend in backends() {
                let mut out = build_outbound(backend, &p).unwrap();
                let meta = InnerMeta {
                    next_header: NH_IPV4,
                    dscp: 0,
                    ecn: 0,
                };
                let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
                encapsulate(&mut out, &mut f, meta).unwrap();
                strip_outer(&mut f, false, false);
                let esp = f.data().to_vec();
                // Every byte after the SPI: seq (AAD), IV (nonce), ciphertext, tag.
                for i in 4..esp.len() {
                    let mut sad = Sad::with_capacity(4, 9);
                    sad.insert_inbound(build_inbound(backend, &mirror(&p)).unwrap());
                    let mut bad = esp.clone();
                    bad[i] ^= 0x80;
                    let mut f = MemFrame::from_bytes(&bad).unwrap();
                    let r = decapsulate(&mut sad, &mut f, Encap::Bare, 1);
                    assert!(
                        matches!(r, Err(DropReason::AuthFailed) | Err(DropReason::ReplayZero)),
                        "byte {i}: {r:?}"
                    );
                    // A forged packet must not move the window: the genuine one still opens.
                    let mut f = MemFrame::from_bytes(&esp).unwrap();
                    assert!(
                        decapsulate(&mut sad, &mut f, Encap::Bare, 1).is_ok(),
                        "byte {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn esn_high_bits_are_authenticated() {
        // The high half travels only in the AAD (GCM) or the ICV input (CBC): a receiver that
        // infers another subspace fails.
        for alg in [EspAlg::Aead(AeadAlg::AesGcm128), CBC] {
            let p = params("192.0.2.1", "192.0.2.2", true, false, alg);
            let backend = crate::crypto::best_backend();
            let mut out = build_outbound(backend, &p).unwrap();
            out.seq = (1u64 << 32) + 10;
            let meta = InnerMeta {
                next_header: NH_IPV4,
                dscp: 0,
                ecn: 0,
            };
            let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
            encapsulate(&mut out, &mut f, meta).unwrap();
            strip_outer(&mut f, false, false);
            let esp = f.data().to_vec();
            // Fresh receiver (window at 0): infers high bits 0, so the tag check fails.
            let mut sad = Sad::with_capacity(4, 9);
            sad.insert_inbound(build_inbound(backend, &mirror(&p)).unwrap());
            let mut f = MemFrame::from_bytes(&esp).unwrap();
            assert_eq!(
                decapsulate(&mut sad, &mut f, Encap::Bare, 1),
                Err(DropReason::AuthFailed)
            );
        }
    }

    #[test]
    fn sequence_numbers_never_wrap() {
        let p = params("192.0.2.1", "192.0.2.2", false, false, AeadAlg::AesGcm128);
        let mut out = build_outbound(crate::crypto::best_backend(), &p).unwrap();
        out.seq = u64::from(u32::MAX) - 1;
        let meta = InnerMeta {
            next_header: NH_IPV4,
            dscp: 0,
            ecn: 0,
        };
        let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
        assert!(encapsulate(&mut out, &mut f, meta).is_ok());
        let mut f = MemFrame::from_bytes(&inner(40)).unwrap();
        assert_eq!(
            encapsulate(&mut out, &mut f, meta),
            Err(DropReason::SeqExhausted)
        );
        assert_eq!(
            f.data(),
            &inner(40)[..],
            "a refused packet is left untouched"
        );
    }

    #[test]
    fn short_and_unknown_packets_are_named() {
        let mut sad = Sad::with_capacity(4, 9);
        let mut f = MemFrame::from_bytes(&[0u8; MIN_ESP_LEN - 1]).unwrap();
        assert_eq!(
            decapsulate(&mut sad, &mut f, Encap::Bare, 1),
            Err(DropReason::EspTruncated)
        );
        let mut f = MemFrame::from_bytes(&[1u8; MIN_ESP_LEN]).unwrap();
        assert_eq!(
            decapsulate(&mut sad, &mut f, Encap::Bare, 1),
            Err(DropReason::UnknownSpi)
        );
    }

    #[test]
    fn the_selector_check_reads_both_families_and_refuses_what_it_cannot_read() {
        let v4 = |src: [u8; 4], dst: [u8; 4]| {
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[12..16].copy_from_slice(&src);
            p[16..20].copy_from_slice(&dst);
            p
        };
        let prefix = |s: &str| s.parse::<Prefix>().unwrap();
        let (l4, r4) = (prefix("10.1.0.0/24"), prefix("10.2.0.0/24"));
        let admit4 = |p: &[u8], nh: u8| selectors_admit(p, nh, &l4, &r4);
        assert!(admit4(&v4([10, 2, 0, 7], [10, 1, 0, 9]), 4));
        // Source outside the remote selector, destination outside the local one, the two
        // swapped.
        assert!(!admit4(&v4([10, 3, 0, 7], [10, 1, 0, 9]), 4));
        assert!(!admit4(&v4([10, 2, 0, 7], [10, 9, 0, 9]), 4));
        assert!(!admit4(&v4([10, 1, 0, 9], [10, 2, 0, 7]), 4));
        // Too short for the destination; a next header that is not IP.
        assert!(!admit4(&v4([10, 2, 0, 7], [10, 1, 0, 9])[..19], 4));
        assert!(!admit4(&v4([10, 2, 0, 7], [10, 1, 0, 9]), 17));
        // IPv6 in IPv6 selectors; an IPv4 selector never admits IPv6.
        let (l6, r6) = (prefix("fd00:1::/64"), prefix("fd00:2::/64"));
        let octets = |s: &str| s.parse::<core::net::Ipv6Addr>().unwrap().octets();
        let mut p6 = vec![0u8; 40];
        p6[0] = 0x60;
        p6[8..24].copy_from_slice(&octets("fd00:2::7"));
        p6[24..40].copy_from_slice(&octets("fd00:1::9"));
        assert!(selectors_admit(&p6, 41, &l6, &r6));
        assert!(!admit4(&p6, 41));
        assert!(!selectors_admit(&p6[..39], 41, &l6, &r6));
        p6[8] = 0xfe;
        assert!(!selectors_admit(&p6, 41, &l6, &r6));
    }
}
