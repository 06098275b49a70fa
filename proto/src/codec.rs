//! The binary encoding of what crosses the shared-memory rings: [`UpdateEnvelope`] (every
//! [`Update`], keys included), [`Ack`], [`Event`] and [`Datagram`].
//!
//! This module owns the byte layout and its version; it never allocates more than the input
//! can justify, never panics on any byte sequence, and never leaves key bytes behind: encoding
//! writes straight into the caller's buffer (a ring slot), [`to_vec`] returns a zeroizing
//! buffer sized exactly once (no reallocation leaves a copy), and a decoded key goes straight
//! into [`SaKeys`] (zeroized on drop).
//!
//! # Layout (version 12)
//!
//! Version 2 added SA lifetimes, 3 made the punted and transmitted datagrams one record, 4
//! added the state an SA moves with (resume, checkpoints), `ReserveSeq`, `ExportSa` and the
//! `SeqCheckpoint` and `SaState` events, 5 added `Announce`, 6 `CapSeq`, 7 the `Hairpin` event,
//! 9 `BindHostDual`, 10 the group SA updates (`AddGroupSa`, `DeleteGroupSa`, `SendOnGroupSa`,
//! `SetGroupPeers`), 11 the per-connection masquerade (`SetMasqPlane`, `MasqFam`, `MasqRoute`,
//! `MasqLink`, `MasqLinkIn`, `MasqUsers`, the `MasqMiss` event), 12 the outbound hold after a
//! move (`Resume::hold_us`), 13 the group's rekey multicast address (`SetGroupPeers`).
//!
//! Every record is `version: u8` (= [`CODEC_VERSION`]), `tag: u8`, then the body. Integers are
//! little-endian. Tags are distinct across record types, so a record read from the wrong ring
//! is refused, not misread:
//!
//! | tag | record | body |
//! |---|---|---|
//! | 0x10 | `Update::AddSa` | generation u64, direction u8 (0 in, 1 out), SaParams |
//! | 0x11 | `Update::DeleteInbound` | generation, spi u32 |
//! | 0x12 | `Update::DeleteOutbound` | generation, id u32 |
//! | 0x13 | `Update::RebindOutbound` | generation, count u32, count x id u32, local ip, remote ip, encap |
//! | 0x14 | `Update::ReplaceSpd` | generation, count u32, count x rule |
//! | 0x15 | `Update::SetMasquerade` | generation, present u8, config |
//! | 0x16 | `Update::SetVirtualIp` | generation, present u8, config |
//! | 0x17 | `Update::BindHost` | generation, dst ip, src prefix, sa id u32 |
//! | 0x18 | `Update::UnbindHost` | generation, dst ip |
//! | 0x19 | `Update::SetWanAddresses` | generation, count u8, count x ip |
//! | 0x1a | `Update::ReserveSeq` | generation, id u32, up to u64 |
//! | 0x1b | `Update::ExportSa` | generation, sa ref |
//! | 0x1c | `Update::Announce` | generation, wan bool, count u8, count x ip |
//! | 0x1d | `Update::CapSeq` | generation, id u32, ahead u64 |
//! | 0x1e | `Update::BindHostDual` | generation, dst ip, src prefix, sa id u32 |
//! | 0x1f | `Update::AddGroupSa` | generation, GroupSaParams |
//! | 0x52 | `Update::DeleteGroupSa` | generation, spi u32 |
//! | 0x50 | `Update::SendOnGroupSa` | generation, id u32, spi u32 |
//! | 0x51 | `Update::SetGroupPeers` | generation, id u32, local ip, outer ttl u8, count u32, count x (lan prefix, outer ip), present u8 (+ rekey multicast ip) |
//! | 0x53 | `Update::SetMasqPlane` | generation, present u8 (+ count u32 + count x client prefix, count u32 + count x exclude prefix, count u32 + count x served v4, link v4) |
//! | 0x54 | `Update::MasqFam` | generation, install bool, flow, masq |
//! | 0x55 | `Update::MasqRoute` | generation, masq, route |
//! | 0x56 | `Update::MasqLink` | generation, node u16, present u8 (+ sa id u32) |
//! | 0x57 | `Update::MasqLinkIn` | generation, spi u32, install bool |
//! | 0x58 | `Update::MasqUsers` | generation, default allow bool, count u32 + count x (count u32 + count x user rule), count u32 + count x (prefix, user u32 < user count) |
//! | 0x20 / 0x21 | `Ack::Applied` / `Ack::Rejected` | worker u16, generation u64 (+ why: len u8, UTF-8) |
//! | 0x30..=0x38 | `Event` variants, in declaration order | worker u16, then the fields in order |
//! | 0x40 | `Datagram` (punted or to transmit) | src ip, dst ip, src port u16, dst port u16, len u32, bytes |
//!
//! Pieces: ip = family u8 (4 or 6) + 4 or 16 bytes; prefix = ip + length u8 (host bits must
//! be zero); encap = present u8 (+ local port u16, remote port u16); bool = u8 0 or 1, nothing
//! else; SaParams = id u32, spi u32, alg u8 (1 AES-128-GCM, 2 AES-256-GCM), key (16 or 32) and
//! salt (4), esn bool, replay window u32, local ip, remote ip, encap, local ts prefix, remote
//! ts prefix, outer ttl u8, lifetime (soft bytes, hard bytes, soft packets, hard packets:
//! u64 each, 0 = none), resume (seq u64, reserved opt u64, hold us u32, replay: present u8 + replay state),
//! checkpoint (present u8 + packets u64 + millis u64); opt u64 = present u8 (+ u64); replay
//! state = top u64, count u8 (1..=64), count x u64; sa ref = 0 + spi u32 (inbound) or 1 + id
//! u32 (outbound); GroupSaParams = id u32, spi u32, alg u8 (1 or 2 as above), key and salt,
//! sender id (present u8 + u32), sender id bits u8, replay window u32, src ts prefix, dst ts
//! prefix, send bool; sa state = 0 + replay state (inbound) or 1 + seq u64 + reserved opt u64
//! (outbound); rule = id u32, src prefix, dst prefix, proto (present u8 + u8),
//! src ports lo/hi u16, dst ports lo/hi u16, action u8 (0 protect + sa id u32, 1 bypass, 2
//! discard); masquerade config = external IPv4 (4 bytes), port lo/hi u16, udp, tcp
//! established, tcp transitory, icmp timeouts and port reuse delay u64 (ns), max sessions u64;
//! v4 = 4 bytes; flow = proto u8, client v4, client port u16, server v4, server port u16; masq =
//! proto u8, v4, port u16; route = 0 (none), 1 (local) or 2 + node u16; user rule = prefix,
//! proto (present u8 + u8), ports lo/hi u16, allow bool; masq miss key (event 0x38, after the
//! worker) = 0 + flow (outbound) or 1 + masq (inbound).
//!
//! Decoding is strict: unknown versions, tags and enum values, a bool other than 0/1, a prefix
//! with host bits, a backwards port range, a short buffer and trailing bytes are errors.
//!
//! Any change to a record (a field, a tag, an enum value) bumps [`CODEC_VERSION`]: the two
//! ends of a ring are one build, and a peer of another version is refused record by record
//! rather than misread.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zeroize::Zeroizing;

use crate::group::{GroupPeer, GroupSaParams};
use crate::ids::{SaId, Spi};
use crate::masq::{FlowKey, Masq, MasqClient, MasqMissKey, MasqPlane, MasqUsers, Route, UserRule};
use crate::nat::MasqueradeConfig;
use crate::policy::{Action, PortRange, Prefix, Rule, Selector};
use crate::records::{Ack, Datagram, Event, LifetimeKind, LifetimeLimit, Update, UpdateEnvelope};
use crate::sa::{
    AeadAlg, CbcAlg, Checkpoint, Direction, EspAlg, IntegAlg, Lifetime, ReplayState, Resume,
    SaKeys, SaParams, SaRef, SaState, UdpEncap, MAX_REPLAY_WORDS,
};

/// The version byte every record starts with.
pub const CODEC_VERSION: u8 = 13;

mod tag {
    pub const ADD_SA: u8 = 0x10;
    pub const DELETE_INBOUND: u8 = 0x11;
    pub const DELETE_OUTBOUND: u8 = 0x12;
    pub const REBIND_OUTBOUND: u8 = 0x13;
    pub const REPLACE_SPD: u8 = 0x14;
    pub const SET_MASQUERADE: u8 = 0x15;
    pub const SET_VIRTUAL_IP: u8 = 0x16;
    pub const BIND_HOST: u8 = 0x17;
    pub const UNBIND_HOST: u8 = 0x18;
    pub const SET_WAN_ADDRESSES: u8 = 0x19;
    pub const RESERVE_SEQ: u8 = 0x1a;
    pub const EXPORT_SA: u8 = 0x1b;
    pub const ANNOUNCE: u8 = 0x1c;
    pub const CAP_SEQ: u8 = 0x1d;
    pub const BIND_HOST_DUAL: u8 = 0x1e;
    pub const ADD_GROUP_SA: u8 = 0x1f;
    pub const DELETE_GROUP_SA: u8 = 0x52;
    pub const SEND_ON_GROUP_SA: u8 = 0x50;
    pub const SET_GROUP_PEERS: u8 = 0x51;
    pub const SET_MASQ_PLANE: u8 = 0x53;
    pub const MASQ_FAM: u8 = 0x54;
    pub const MASQ_ROUTE: u8 = 0x55;
    pub const MASQ_LINK: u8 = 0x56;
    pub const MASQ_LINK_IN: u8 = 0x57;
    pub const MASQ_USERS: u8 = 0x58;
    pub const ACK_APPLIED: u8 = 0x20;
    pub const ACK_REJECTED: u8 = 0x21;
    pub const EV_UNKNOWN_SPI: u8 = 0x30;
    pub const EV_LIFETIME: u8 = 0x31;
    pub const EV_SEQ_NEAR_WRAP: u8 = 0x32;
    pub const EV_AUTH_FAILURES: u8 = 0x33;
    pub const EV_REPLAY_FAILURES: u8 = 0x34;
    pub const EV_SEQ_CHECKPOINT: u8 = 0x35;
    pub const EV_SA_STATE: u8 = 0x36;
    pub const EV_HAIRPIN: u8 = 0x37;
    pub const EV_MASQ_MISS: u8 = 0x38;
    pub const DATAGRAM: u8 = 0x40;
}

/// Why a record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("{0} does not fit its field")]
    TooLong(&'static str),
    #[error("{0} cannot be encoded")]
    Unsupported(&'static str),
}

/// Why bytes did not decode. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is truncated")]
    Truncated,
    #[error("{0} trailing bytes after the record")]
    TrailingBytes(usize),
    #[error("codec version {0}, expected {CODEC_VERSION}")]
    Version(u8),
    #[error("unknown {what} tag {tag:#04x}")]
    Tag { what: &'static str, tag: u8 },
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A record type the rings carry.
pub trait Record: Sized {
    /// Exact encoded length.
    fn encoded_len(&self) -> Result<usize, EncodeError> {
        let mut w = Writer::counter();
        self.write(&mut w)?;
        Ok(w.at)
    }

    /// Encodes into the front of `out`; returns the length written. A too-small `out` is an
    /// error (part of it may have been written).
    fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut w = Writer::over(out);
        self.write(&mut w)?;
        Ok(w.at)
    }

    /// Decodes exactly one record that fills `bytes`.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader { buf: bytes };
        let v = r.u8()?;
        if v != CODEC_VERSION {
            return Err(DecodeError::Version(v));
        }
        let out = Self::read(&mut r)?;
        match r.buf.len() {
            0 => Ok(out),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    #[doc(hidden)]
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError>;
    #[doc(hidden)]
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// Encodes into a zeroizing buffer allocated once at the exact size.
pub fn to_vec<T: Record>(rec: &T) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
    let len = rec.encoded_len()?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    let n = rec.encode(&mut out)?;
    out.truncate(n);
    Ok(out)
}

/// Writes into a buffer, or only counts (for [`Record::encoded_len`]).
#[doc(hidden)]
pub struct Writer<'a> {
    out: Option<&'a mut [u8]>,
    at: usize,
}

impl<'a> Writer<'a> {
    fn counter() -> Self {
        Writer { out: None, at: 0 }
    }

    fn over(out: &'a mut [u8]) -> Self {
        Writer {
            out: Some(out),
            at: 0,
        }
    }

    fn put(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self
            .at
            .checked_add(b.len())
            .ok_or(EncodeError::BufferTooSmall)?;
        if let Some(out) = self.out.as_deref_mut() {
            out.get_mut(self.at..end)
                .ok_or(EncodeError::BufferTooSmall)?
                .copy_from_slice(b);
        }
        self.at = end;
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.put(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Result<(), EncodeError> {
        self.put(&v.to_le_bytes())
    }
    fn bool(&mut self, v: bool) -> Result<(), EncodeError> {
        self.u8(u8::from(v))
    }

    fn head(&mut self, tag: u8) -> Result<(), EncodeError> {
        self.u8(CODEC_VERSION)?;
        self.u8(tag)
    }

    fn ip(&mut self, a: IpAddr) -> Result<(), EncodeError> {
        match a {
            IpAddr::V4(v) => {
                self.u8(4)?;
                self.put(&v.octets())
            }
            IpAddr::V6(v) => {
                self.u8(6)?;
                self.put(&v.octets())
            }
        }
    }

    fn prefix(&mut self, p: Prefix) -> Result<(), EncodeError> {
        self.ip(p.addr())?;
        self.u8(p.prefix_len())
    }

    fn encap(&mut self, e: Option<UdpEncap>) -> Result<(), EncodeError> {
        match e {
            None => self.u8(0),
            Some(e) => {
                self.u8(1)?;
                self.u16(e.local_port)?;
                self.u16(e.remote_port)
            }
        }
    }

    fn ports(&mut self, p: PortRange) -> Result<(), EncodeError> {
        self.u16(p.lo)?;
        self.u16(p.hi)
    }

    fn sa_params(&mut self, p: &SaParams) -> Result<(), EncodeError> {
        self.u32(p.id.0)?;
        self.u32(p.spi.0)?;
        // 1, 2: AES-GCM, key || salt; 3, 4: AES-CBC, then the HMAC, key || integrity key.
        match p.keys.alg {
            EspAlg::Aead(AeadAlg::AesGcm128) => self.u8(1)?,
            EspAlg::Aead(AeadAlg::AesGcm256) => self.u8(2)?,
            EspAlg::Cbc(c, i) => {
                self.u8(match c {
                    CbcAlg::AesCbc128 => 3,
                    CbcAlg::AesCbc256 => 4,
                })?;
                self.u8(match i {
                    IntegAlg::HmacSha1_96 => 1,
                    IntegAlg::HmacSha256_128 => 2,
                    IntegAlg::HmacSha384_192 => 3,
                    IntegAlg::HmacSha512_256 => 4,
                })?;
            }
        }
        self.put(p.keys.key())?;
        match p.keys.alg {
            EspAlg::Aead(_) => self.put(&p.keys.salt)?,
            EspAlg::Cbc(..) => self.put(p.keys.integ_key())?,
        }
        self.bool(p.esn)?;
        self.u32(p.replay_window)?;
        self.ip(p.local)?;
        self.ip(p.remote)?;
        self.encap(p.encap)?;
        self.prefix(p.local_ts)?;
        self.prefix(p.remote_ts)?;
        self.u8(p.outer_ttl)?;
        let l = p.lifetime;
        [l.soft_bytes, l.hard_bytes, l.soft_packets, l.hard_packets]
            .into_iter()
            .try_for_each(|v| self.u64(v))?;
        self.u64(p.resume.seq)?;
        self.opt_u64(p.resume.seq_reserved)?;
        self.u32(p.resume.hold_us)?;
        match &p.resume.replay {
            None => self.u8(0)?,
            Some(r) => {
                self.u8(1)?;
                self.replay(r)?;
            }
        }
        match p.checkpoint {
            None => self.u8(0),
            Some(c) => {
                self.u8(1)?;
                self.u64(c.packets)?;
                self.u64(c.millis)
            }
        }
    }

    fn group_sa_params(&mut self, p: &GroupSaParams) -> Result<(), EncodeError> {
        self.u32(p.id.0)?;
        self.u32(p.spi.0)?;
        match p.keys.alg {
            EspAlg::Aead(AeadAlg::AesGcm128) => self.u8(1)?,
            EspAlg::Aead(AeadAlg::AesGcm256) => self.u8(2)?,
            // Group SAs are AES-GCM only (RFC 9838 with RFC 6054 IVs).
            EspAlg::Cbc(..) => {
                return Err(EncodeError::Unsupported("a group SA that is not AES-GCM"))
            }
        }
        self.put(p.keys.key())?;
        self.put(&p.keys.salt)?;
        match p.sender_id {
            None => self.u8(0)?,
            Some(s) => {
                self.u8(1)?;
                self.u32(s)?;
            }
        }
        self.u8(p.sender_id_bits)?;
        self.u32(p.replay_window)?;
        self.prefix(p.src_ts)?;
        self.prefix(p.dst_ts)?;
        self.bool(p.send)
    }

    fn opt_u64(&mut self, v: Option<u64>) -> Result<(), EncodeError> {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1)?;
                self.u64(v)
            }
        }
    }

    fn replay(&mut self, r: &ReplayState) -> Result<(), EncodeError> {
        if r.seen.is_empty() || r.seen.len() > MAX_REPLAY_WORDS {
            return Err(EncodeError::TooLong("replay window"));
        }
        self.u64(r.top)?;
        self.u8(u8::try_from(r.seen.len()).map_err(|_| EncodeError::TooLong("replay window"))?)?;
        r.seen.iter().try_for_each(|w| self.u64(*w))
    }

    fn sa_ref(&mut self, s: SaRef) -> Result<(), EncodeError> {
        match s {
            SaRef::Inbound(spi) => {
                self.u8(0)?;
                self.u32(spi.0)
            }
            SaRef::Outbound(id) => {
                self.u8(1)?;
                self.u32(id.0)
            }
        }
    }

    fn sa_state(&mut self, s: &SaState) -> Result<(), EncodeError> {
        match s {
            SaState::Inbound { replay } => {
                self.u8(0)?;
                self.replay(replay)
            }
            SaState::Outbound { seq, seq_reserved } => {
                self.u8(1)?;
                self.u64(*seq)?;
                self.opt_u64(*seq_reserved)
            }
        }
    }

    fn rule(&mut self, r: &Rule) -> Result<(), EncodeError> {
        self.u32(r.id)?;
        self.prefix(r.selector.src)?;
        self.prefix(r.selector.dst)?;
        match r.selector.proto {
            None => self.put(&[0, 0])?,
            Some(p) => self.put(&[1, p])?,
        }
        self.ports(r.selector.src_ports)?;
        self.ports(r.selector.dst_ports)?;
        match r.action {
            Action::Protect(id) => {
                self.u8(0)?;
                self.u32(id.0)
            }
            Action::Bypass => self.u8(1),
            Action::Discard => self.u8(2),
        }
    }

    fn v4(&mut self, a: Ipv4Addr) -> Result<(), EncodeError> {
        self.put(&a.octets())
    }

    fn count(&mut self, n: usize, what: &'static str) -> Result<(), EncodeError> {
        self.u32(u32::try_from(n).map_err(|_| EncodeError::TooLong(what))?)
    }

    fn flow(&mut self, f: &FlowKey) -> Result<(), EncodeError> {
        self.u8(f.proto)?;
        self.v4(f.client)?;
        self.u16(f.client_port)?;
        self.v4(f.server)?;
        self.u16(f.server_port)
    }

    fn masq(&mut self, m: &Masq) -> Result<(), EncodeError> {
        self.u8(m.proto)?;
        self.v4(m.addr)?;
        self.u16(m.port)
    }

    fn masq_plane(&mut self, p: &MasqPlane) -> Result<(), EncodeError> {
        self.count(p.clients.len(), "masq clients")?;
        p.clients.iter().try_for_each(|c| self.prefix(*c))?;
        self.count(p.exclude.len(), "masq exclude")?;
        p.exclude.iter().try_for_each(|c| self.prefix(*c))?;
        self.count(p.served.len(), "masq served")?;
        p.served.iter().try_for_each(|a| self.v4(*a))?;
        self.v4(p.link_addr)
    }

    fn masq_users(&mut self, t: &MasqUsers) -> Result<(), EncodeError> {
        self.bool(t.default_allow)?;
        self.count(t.users.len(), "masq users")?;
        for u in &t.users {
            self.count(u.len(), "user rules")?;
            for r in u {
                self.prefix(r.dst)?;
                match r.proto {
                    None => self.u8(0)?,
                    Some(p) => {
                        self.u8(1)?;
                        self.u8(p)?;
                    }
                }
                self.ports(r.ports)?;
                self.bool(r.allow)?;
            }
        }
        self.count(t.clients.len(), "masq user clients")?;
        t.clients.iter().try_for_each(|c| {
            self.prefix(c.prefix)?;
            self.u32(c.user)
        })
    }

    fn masquerade(&mut self, c: &MasqueradeConfig) -> Result<(), EncodeError> {
        self.put(&c.external_addr.octets())?;
        self.u16(c.port_range.0)?;
        self.u16(c.port_range.1)?;
        self.u64(c.udp_timeout_ns)?;
        self.u64(c.tcp_established_timeout_ns)?;
        self.u64(c.tcp_transitory_timeout_ns)?;
        self.u64(c.icmp_timeout_ns)?;
        self.u64(c.port_reuse_delay_ns)?;
        self.u64(u64::try_from(c.max_sessions).map_err(|_| EncodeError::TooLong("max_sessions"))?)
    }
}

/// Reads from the front of a byte slice; every read is checked.
#[doc(hidden)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid(what)),
        }
    }

    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(DecodeError::Invalid("address family")),
        }
    }

    fn prefix(&mut self) -> Result<Prefix, DecodeError> {
        let addr = self.ip()?;
        let len = self.u8()?;
        Prefix::new(addr, len).map_err(|_| DecodeError::Invalid("prefix"))
    }

    fn encap(&mut self) -> Result<Option<UdpEncap>, DecodeError> {
        Ok(if self.bool("encap flag")? {
            Some(UdpEncap {
                local_port: self.u16()?,
                remote_port: self.u16()?,
            })
        } else {
            None
        })
    }

    fn ports(&mut self) -> Result<PortRange, DecodeError> {
        let (lo, hi) = (self.u16()?, self.u16()?);
        if lo > hi {
            return Err(DecodeError::Invalid("port range"));
        }
        Ok(PortRange { lo, hi })
    }

    fn direction(&mut self) -> Result<Direction, DecodeError> {
        match self.u8()? {
            0 => Ok(Direction::Inbound),
            1 => Ok(Direction::Outbound),
            _ => Err(DecodeError::Invalid("direction")),
        }
    }

    fn opt_u64(&mut self, what: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool(what)? {
            Some(self.u64()?)
        } else {
            None
        })
    }

    fn replay(&mut self) -> Result<ReplayState, DecodeError> {
        let top = self.u64()?;
        let n = usize::from(self.u8()?);
        if n == 0 || n > MAX_REPLAY_WORDS {
            return Err(DecodeError::Invalid("replay window size"));
        }
        let mut seen = Vec::with_capacity(n);
        for _ in 0..n {
            seen.push(self.u64()?);
        }
        Ok(ReplayState { top, seen })
    }

    fn sa_ref(&mut self) -> Result<SaRef, DecodeError> {
        match self.u8()? {
            0 => Ok(SaRef::Inbound(Spi(self.u32()?))),
            1 => Ok(SaRef::Outbound(SaId(self.u32()?))),
            _ => Err(DecodeError::Invalid("SA reference")),
        }
    }

    fn sa_state(&mut self) -> Result<SaState, DecodeError> {
        match self.u8()? {
            0 => Ok(SaState::Inbound {
                replay: self.replay()?,
            }),
            1 => Ok(SaState::Outbound {
                seq: self.u64()?,
                seq_reserved: self.opt_u64("reservation flag")?,
            }),
            _ => Err(DecodeError::Invalid("SA state")),
        }
    }

    fn integ_alg(&mut self) -> Result<IntegAlg, DecodeError> {
        Ok(match self.u8()? {
            1 => IntegAlg::HmacSha1_96,
            2 => IntegAlg::HmacSha256_128,
            3 => IntegAlg::HmacSha384_192,
            4 => IntegAlg::HmacSha512_256,
            _ => return Err(DecodeError::Invalid("integrity algorithm")),
        })
    }

    fn sa_params(&mut self) -> Result<SaParams, DecodeError> {
        let id = SaId(self.u32()?);
        let spi = Spi(self.u32()?);
        let alg = match self.u8()? {
            1 => EspAlg::Aead(AeadAlg::AesGcm128),
            2 => EspAlg::Aead(AeadAlg::AesGcm256),
            3 => EspAlg::Cbc(CbcAlg::AesCbc128, self.integ_alg()?),
            4 => EspAlg::Cbc(CbcAlg::AesCbc256, self.integ_alg()?),
            _ => return Err(DecodeError::Invalid("ESP algorithm")),
        };
        let keymat_len = alg.keymat_len();
        // Straight from the input into SaKeys (zeroized on drop): no intermediate copy.
        let keys = SaKeys::from_keymat(alg, self.take(keymat_len)?)
            .map_err(|_| DecodeError::Invalid("key material"))?;
        Ok(SaParams {
            id,
            spi,
            keys,
            esn: self.bool("esn flag")?,
            replay_window: self.u32()?,
            local: self.ip()?,
            remote: self.ip()?,
            encap: self.encap()?,
            local_ts: self.prefix()?,
            remote_ts: self.prefix()?,
            outer_ttl: self.u8()?,
            lifetime: Lifetime {
                soft_bytes: self.u64()?,
                hard_bytes: self.u64()?,
                soft_packets: self.u64()?,
                hard_packets: self.u64()?,
            },
            resume: Resume {
                seq: self.u64()?,
                seq_reserved: self.opt_u64("reservation flag")?,
                hold_us: self.u32()?,
                replay: if self.bool("replay state flag")? {
                    Some(self.replay()?)
                } else {
                    None
                },
            },
            checkpoint: if self.bool("checkpoint flag")? {
                Some(Checkpoint {
                    packets: self.u64()?,
                    millis: self.u64()?,
                })
            } else {
                None
            },
        })
    }

    fn group_sa_params(&mut self) -> Result<GroupSaParams, DecodeError> {
        let id = SaId(self.u32()?);
        let spi = Spi(self.u32()?);
        let alg = match self.u8()? {
            1 => EspAlg::Aead(AeadAlg::AesGcm128),
            2 => EspAlg::Aead(AeadAlg::AesGcm256),
            _ => return Err(DecodeError::Invalid("group SA algorithm")),
        };
        // Straight from the input into SaKeys (zeroized on drop): no intermediate copy.
        let keys = SaKeys::from_keymat(alg, self.take(alg.keymat_len())?)
            .map_err(|_| DecodeError::Invalid("key material"))?;
        let sender_id = if self.bool("sender id flag")? {
            Some(self.u32()?)
        } else {
            None
        };
        Ok(GroupSaParams {
            id,
            spi,
            keys,
            sender_id,
            sender_id_bits: self.u8()?,
            replay_window: self.u32()?,
            src_ts: self.prefix()?,
            dst_ts: self.prefix()?,
            send: self.bool("send flag")?,
        })
    }

    fn rule(&mut self) -> Result<Rule, DecodeError> {
        let id = self.u32()?;
        let src = self.prefix()?;
        let dst = self.prefix()?;
        let proto = match self.u8()? {
            0 => {
                if self.u8()? != 0 {
                    return Err(DecodeError::Invalid("protocol"));
                }
                None
            }
            1 => Some(self.u8()?),
            _ => return Err(DecodeError::Invalid("protocol flag")),
        };
        let selector = Selector {
            src,
            dst,
            proto,
            src_ports: self.ports()?,
            dst_ports: self.ports()?,
        };
        let action = match self.u8()? {
            0 => Action::Protect(SaId(self.u32()?)),
            1 => Action::Bypass,
            2 => Action::Discard,
            _ => return Err(DecodeError::Invalid("action")),
        };
        Ok(Rule {
            id,
            selector,
            action,
        })
    }

    fn v4(&mut self) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(self.array::<4>()?))
    }

    /// A count of items of at least `min` bytes each: one the remaining bytes cannot hold is
    /// refused before anything is allocated.
    fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        if n > self.buf.len().checked_div(min).unwrap_or(0) {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn flow(&mut self) -> Result<FlowKey, DecodeError> {
        Ok(FlowKey {
            proto: self.u8()?,
            client: self.v4()?,
            client_port: self.u16()?,
            server: self.v4()?,
            server_port: self.u16()?,
        })
    }

    fn masq(&mut self) -> Result<Masq, DecodeError> {
        Ok(Masq {
            proto: self.u8()?,
            addr: self.v4()?,
            port: self.u16()?,
        })
    }

    fn prefixes(&mut self) -> Result<Vec<Prefix>, DecodeError> {
        let n = self.count(MIN_PREFIX_LEN)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.prefix()?);
        }
        Ok(v)
    }

    fn masq_plane(&mut self) -> Result<MasqPlane, DecodeError> {
        let clients = self.prefixes()?;
        let exclude = self.prefixes()?;
        let n = self.count(4)?;
        let mut served = Vec::with_capacity(n);
        for _ in 0..n {
            served.push(self.v4()?);
        }
        Ok(MasqPlane {
            clients,
            exclude,
            served,
            link_addr: self.v4()?,
        })
    }

    fn masq_users(&mut self) -> Result<MasqUsers, DecodeError> {
        let default_allow = self.bool("masq default")?;
        let n = self.count(4)?;
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            let m = self.count(MIN_USER_RULE_LEN)?;
            let mut rules = Vec::with_capacity(m);
            for _ in 0..m {
                rules.push(UserRule {
                    dst: self.prefix()?,
                    proto: if self.bool("rule protocol flag")? {
                        Some(self.u8()?)
                    } else {
                        None
                    },
                    ports: self.ports()?,
                    allow: self.bool("rule action")?,
                });
            }
            users.push(rules);
        }
        let n = self.count(MIN_PREFIX_LEN + 4)?;
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let prefix = self.prefix()?;
            let user = self.u32()?;
            if usize::try_from(user).ok().is_none_or(|u| u >= users.len()) {
                return Err(DecodeError::Invalid("masq client user"));
            }
            clients.push(MasqClient { prefix, user });
        }
        Ok(MasqUsers {
            users,
            default_allow,
            clients,
        })
    }

    fn masquerade(&mut self) -> Result<MasqueradeConfig, DecodeError> {
        let external_addr = Ipv4Addr::from(self.array::<4>()?);
        let (lo, hi) = (self.u16()?, self.u16()?);
        if lo > hi {
            return Err(DecodeError::Invalid("masquerade port range"));
        }
        Ok(MasqueradeConfig {
            external_addr,
            port_range: (lo, hi),
            udp_timeout_ns: self.u64()?,
            tcp_established_timeout_ns: self.u64()?,
            tcp_transitory_timeout_ns: self.u64()?,
            icmp_timeout_ns: self.u64()?,
            port_reuse_delay_ns: self.u64()?,
            max_sessions: usize::try_from(self.u64()?)
                .map_err(|_| DecodeError::Invalid("max_sessions"))?,
        })
    }
}

/// Smallest encoded rule: id, two IPv4 prefixes, proto, two port ranges, a bypass action.
const MIN_RULE_LEN: usize = 4 + 2 * 6 + 2 + 8 + 1;
/// The smallest encoded prefix: an IPv4 address with its family byte, the length.
const MIN_PREFIX_LEN: usize = 6;
/// The smallest encoded user rule: prefix, protocol flag, ports, action.
const MIN_USER_RULE_LEN: usize = MIN_PREFIX_LEN + 1 + 4 + 1;

impl Record for UpdateEnvelope {
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        let tag = match &self.update {
            Update::AddSa { .. } => tag::ADD_SA,
            Update::DeleteInbound { .. } => tag::DELETE_INBOUND,
            Update::DeleteOutbound { .. } => tag::DELETE_OUTBOUND,
            Update::RebindOutbound { .. } => tag::REBIND_OUTBOUND,
            Update::ReplaceSpd { .. } => tag::REPLACE_SPD,
            Update::SetMasquerade { .. } => tag::SET_MASQUERADE,
            Update::SetVirtualIp { .. } => tag::SET_VIRTUAL_IP,
            Update::BindHost { .. } => tag::BIND_HOST,
            Update::BindHostDual { .. } => tag::BIND_HOST_DUAL,
            Update::UnbindHost { .. } => tag::UNBIND_HOST,
            Update::SetWanAddresses { .. } => tag::SET_WAN_ADDRESSES,
            Update::ReserveSeq { .. } => tag::RESERVE_SEQ,
            Update::CapSeq { .. } => tag::CAP_SEQ,
            Update::ExportSa { .. } => tag::EXPORT_SA,
            Update::Announce { .. } => tag::ANNOUNCE,
            Update::AddGroupSa { .. } => tag::ADD_GROUP_SA,
            Update::DeleteGroupSa { .. } => tag::DELETE_GROUP_SA,
            Update::SendOnGroupSa { .. } => tag::SEND_ON_GROUP_SA,
            Update::SetGroupPeers { .. } => tag::SET_GROUP_PEERS,
            Update::SetMasqPlane { .. } => tag::SET_MASQ_PLANE,
            Update::MasqFam { .. } => tag::MASQ_FAM,
            Update::MasqRoute { .. } => tag::MASQ_ROUTE,
            Update::MasqLink { .. } => tag::MASQ_LINK,
            Update::MasqLinkIn { .. } => tag::MASQ_LINK_IN,
            Update::MasqUsers { .. } => tag::MASQ_USERS,
        };
        w.head(tag)?;
        w.u64(self.generation)?;
        match &self.update {
            Update::AddSa { dir, params } => {
                w.u8(match dir {
                    Direction::Inbound => 0,
                    Direction::Outbound => 1,
                })?;
                w.sa_params(params)
            }
            Update::DeleteInbound { spi } => w.u32(spi.0),
            Update::DeleteOutbound { id } => w.u32(id.0),
            Update::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                w.u32(u32::try_from(ids.len()).map_err(|_| EncodeError::TooLong("ids"))?)?;
                ids.iter().try_for_each(|id| w.u32(id.0))?;
                w.ip(*local)?;
                w.ip(*remote)?;
                w.encap(*encap)
            }
            Update::ReplaceSpd { rules } => {
                w.u32(u32::try_from(rules.len()).map_err(|_| EncodeError::TooLong("rules"))?)?;
                rules.iter().try_for_each(|r| w.rule(r))
            }
            Update::SetMasquerade { config } | Update::SetVirtualIp { config } => match config {
                None => w.u8(0),
                Some(c) => {
                    w.u8(1)?;
                    w.masquerade(c)
                }
            },
            Update::BindHost { dst, src, sa } | Update::BindHostDual { dst, src, sa } => {
                w.ip(*dst)?;
                w.prefix(*src)?;
                w.u32(sa.0)
            }
            Update::UnbindHost { dst } => w.ip(*dst),
            Update::SetWanAddresses { addrs } => {
                w.u8(u8::try_from(addrs.len()).map_err(|_| EncodeError::TooLong("addresses"))?)?;
                addrs.iter().try_for_each(|a| w.ip(*a))
            }
            Update::ReserveSeq { id, up_to } => {
                w.u32(id.0)?;
                w.u64(*up_to)
            }
            Update::CapSeq { id, ahead } => {
                w.u32(id.0)?;
                w.u64(*ahead)
            }
            Update::ExportSa { sa } => w.sa_ref(*sa),
            Update::Announce { wan, addrs } => {
                w.bool(*wan)?;
                w.u8(u8::try_from(addrs.len()).map_err(|_| EncodeError::TooLong("addresses"))?)?;
                addrs.iter().try_for_each(|a| w.ip(*a))
            }
            Update::AddGroupSa { params } => w.group_sa_params(params),
            Update::DeleteGroupSa { spi } => w.u32(spi.0),
            Update::SendOnGroupSa { id, spi } => {
                w.u32(id.0)?;
                w.u32(spi.0)
            }
            Update::SetGroupPeers {
                id,
                local,
                outer_ttl,
                peers,
                rekey_multicast,
            } => {
                w.u32(id.0)?;
                w.ip(*local)?;
                w.u8(*outer_ttl)?;
                w.u32(u32::try_from(peers.len()).map_err(|_| EncodeError::TooLong("peers"))?)?;
                peers.iter().try_for_each(|p| {
                    w.prefix(p.lan)?;
                    w.ip(p.outer)
                })?;
                match rekey_multicast {
                    None => w.u8(0),
                    Some(a) => {
                        w.u8(1)?;
                        w.ip(*a)
                    }
                }
            }
            Update::SetMasqPlane { plane } => match plane {
                None => w.u8(0),
                Some(p) => {
                    w.u8(1)?;
                    w.masq_plane(p)
                }
            },
            Update::MasqFam {
                install,
                flow,
                masq,
            } => {
                w.bool(*install)?;
                w.flow(flow)?;
                w.masq(masq)
            }
            Update::MasqRoute { masq, route } => {
                w.masq(masq)?;
                match route {
                    None => w.u8(0),
                    Some(Route::Local) => w.u8(1),
                    Some(Route::Node(i)) => {
                        w.u8(2)?;
                        w.u16(*i)
                    }
                }
            }
            Update::MasqLink { node, out_sa } => {
                w.u16(*node)?;
                match out_sa {
                    None => w.u8(0),
                    Some(id) => {
                        w.u8(1)?;
                        w.u32(id.0)
                    }
                }
            }
            Update::MasqLinkIn { spi, install } => {
                w.u32(spi.0)?;
                w.bool(*install)
            }
            Update::MasqUsers { table } => w.masq_users(table),
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = r.u8()?;
        let generation = r.u64()?;
        let update = match t {
            tag::ADD_SA => Update::AddSa {
                dir: r.direction()?,
                params: r.sa_params()?,
            },
            tag::DELETE_INBOUND => Update::DeleteInbound { spi: Spi(r.u32()?) },
            tag::DELETE_OUTBOUND => Update::DeleteOutbound { id: SaId(r.u32()?) },
            tag::REBIND_OUTBOUND => {
                let n = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
                // A count the remaining bytes cannot hold is refused before allocating.
                if n > r.buf.len() / 4 {
                    return Err(DecodeError::Truncated);
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(SaId(r.u32()?));
                }
                Update::RebindOutbound {
                    ids,
                    local: r.ip()?,
                    remote: r.ip()?,
                    encap: r.encap()?,
                }
            }
            tag::REPLACE_SPD => {
                let n = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
                // A count the remaining bytes cannot hold is refused before allocating.
                if n > r.buf.len() / MIN_RULE_LEN {
                    return Err(DecodeError::Truncated);
                }
                let mut rules = Vec::with_capacity(n);
                for _ in 0..n {
                    rules.push(r.rule()?);
                }
                Update::ReplaceSpd { rules }
            }
            tag::SET_MASQUERADE => Update::SetMasquerade {
                config: if r.bool("masquerade flag")? {
                    Some(r.masquerade()?)
                } else {
                    None
                },
            },
            tag::BIND_HOST => Update::BindHost {
                dst: r.ip()?,
                src: r.prefix()?,
                sa: SaId(r.u32()?),
            },
            tag::BIND_HOST_DUAL => Update::BindHostDual {
                dst: r.ip()?,
                src: r.prefix()?,
                sa: SaId(r.u32()?),
            },
            tag::UNBIND_HOST => Update::UnbindHost { dst: r.ip()? },
            tag::SET_WAN_ADDRESSES => {
                let n = r.u8()?;
                let mut addrs = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    addrs.push(r.ip()?);
                }
                Update::SetWanAddresses { addrs }
            }
            tag::SET_VIRTUAL_IP => Update::SetVirtualIp {
                config: if r.bool("virtual IP flag")? {
                    Some(r.masquerade()?)
                } else {
                    None
                },
            },
            tag::RESERVE_SEQ => Update::ReserveSeq {
                id: SaId(r.u32()?),
                up_to: r.u64()?,
            },
            tag::CAP_SEQ => Update::CapSeq {
                id: SaId(r.u32()?),
                ahead: r.u64()?,
            },
            tag::EXPORT_SA => Update::ExportSa { sa: r.sa_ref()? },
            tag::ADD_GROUP_SA => Update::AddGroupSa {
                params: r.group_sa_params()?,
            },
            tag::DELETE_GROUP_SA => Update::DeleteGroupSa { spi: Spi(r.u32()?) },
            tag::SEND_ON_GROUP_SA => Update::SendOnGroupSa {
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
            },
            tag::SET_GROUP_PEERS => {
                let id = SaId(r.u32()?);
                let local = r.ip()?;
                let outer_ttl = r.u8()?;
                let n = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
                // A count the remaining bytes cannot hold is refused before allocating
                // (smallest peer: an IPv4 prefix and an IPv4 address, 11 bytes).
                if n > r.buf.len() / 11 {
                    return Err(DecodeError::Truncated);
                }
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(GroupPeer {
                        lan: r.prefix()?,
                        outer: r.ip()?,
                    });
                }
                let rekey_multicast = match r.u8()? {
                    0 => None,
                    1 => Some(r.ip()?),
                    _ => return Err(DecodeError::Invalid("rekey multicast presence")),
                };
                Update::SetGroupPeers {
                    id,
                    local,
                    outer_ttl,
                    peers,
                    rekey_multicast,
                }
            }
            tag::SET_MASQ_PLANE => Update::SetMasqPlane {
                plane: if r.bool("masq plane flag")? {
                    Some(r.masq_plane()?)
                } else {
                    None
                },
            },
            tag::MASQ_FAM => Update::MasqFam {
                install: r.bool("masq install flag")?,
                flow: r.flow()?,
                masq: r.masq()?,
            },
            tag::MASQ_ROUTE => Update::MasqRoute {
                masq: r.masq()?,
                route: match r.u8()? {
                    0 => None,
                    1 => Some(Route::Local),
                    2 => Some(Route::Node(r.u16()?)),
                    _ => return Err(DecodeError::Invalid("masq route")),
                },
            },
            tag::MASQ_LINK => Update::MasqLink {
                node: r.u16()?,
                out_sa: if r.bool("masq link flag")? {
                    Some(SaId(r.u32()?))
                } else {
                    None
                },
            },
            tag::MASQ_LINK_IN => Update::MasqLinkIn {
                spi: Spi(r.u32()?),
                install: r.bool("masq link install flag")?,
            },
            tag::MASQ_USERS => Update::MasqUsers {
                table: r.masq_users()?,
            },
            tag::ANNOUNCE => {
                let wan = r.bool("announce side")?;
                let n = r.u8()?;
                let mut addrs = Vec::with_capacity(usize::from(n));
                for _ in 0..n {
                    addrs.push(r.ip()?);
                }
                Update::Announce { wan, addrs }
            }
            tag => {
                return Err(DecodeError::Tag {
                    what: "update",
                    tag,
                })
            }
        };
        Ok(UpdateEnvelope { generation, update })
    }
}

impl Record for Ack {
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Ack::Applied { worker, generation } => {
                w.head(tag::ACK_APPLIED)?;
                w.u16(*worker)?;
                w.u64(*generation)
            }
            Ack::Rejected {
                worker,
                generation,
                why,
            } => {
                w.head(tag::ACK_REJECTED)?;
                w.u16(*worker)?;
                w.u64(*generation)?;
                w.u8(u8::try_from(why.len()).map_err(|_| EncodeError::TooLong("why"))?)?;
                w.put(why.as_bytes())
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = r.u8()?;
        let worker = r.u16()?;
        let generation = r.u64()?;
        match t {
            tag::ACK_APPLIED => Ok(Ack::Applied { worker, generation }),
            tag::ACK_REJECTED => {
                let len = usize::from(r.u8()?);
                let why = core::str::from_utf8(r.take(len)?)
                    .map_err(|_| DecodeError::Invalid("reason (not UTF-8)"))?;
                Ok(Ack::Rejected {
                    worker,
                    generation,
                    why: why.to_owned(),
                })
            }
            tag => Err(DecodeError::Tag { what: "ack", tag }),
        }
    }
}

impl Record for Event {
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        match self {
            Event::UnknownSpi {
                worker,
                spi,
                src,
                src_port,
                dst,
                packets,
            } => {
                w.head(tag::EV_UNKNOWN_SPI)?;
                w.u16(*worker)?;
                w.u32(spi.0)?;
                w.ip(*src)?;
                w.u16(*src_port)?;
                w.ip(*dst)?;
                w.u64(*packets)
            }
            Event::Lifetime {
                worker,
                id,
                spi,
                dir,
                kind,
                limit,
                bytes,
                packets,
                age_secs,
            } => {
                w.head(tag::EV_LIFETIME)?;
                w.u16(*worker)?;
                w.u32(id.0)?;
                w.u32(spi.0)?;
                w.u8(match dir {
                    Direction::Inbound => 0,
                    Direction::Outbound => 1,
                })?;
                w.u8(match kind {
                    LifetimeKind::Soft => 0,
                    LifetimeKind::Hard => 1,
                })?;
                w.u8(match limit {
                    LifetimeLimit::Time => 0,
                    LifetimeLimit::Bytes => 1,
                    LifetimeLimit::Packets => 2,
                })?;
                w.u64(*bytes)?;
                w.u64(*packets)?;
                w.u64(*age_secs)
            }
            Event::SeqNearWrap {
                worker,
                id,
                spi,
                seq,
                limit,
            } => {
                w.head(tag::EV_SEQ_NEAR_WRAP)?;
                w.u16(*worker)?;
                w.u32(id.0)?;
                w.u32(spi.0)?;
                w.u64(*seq)?;
                w.u64(*limit)
            }
            Event::AuthFailures {
                worker,
                id,
                spi,
                count,
            }
            | Event::ReplayFailures {
                worker,
                id,
                spi,
                count,
            } => {
                w.head(if matches!(self, Event::AuthFailures { .. }) {
                    tag::EV_AUTH_FAILURES
                } else {
                    tag::EV_REPLAY_FAILURES
                })?;
                w.u16(*worker)?;
                w.u32(id.0)?;
                w.u32(spi.0)?;
                w.u64(*count)
            }
            Event::SeqCheckpoint {
                worker,
                id,
                spi,
                seq,
                seq_reserved,
            } => {
                w.head(tag::EV_SEQ_CHECKPOINT)?;
                w.u16(*worker)?;
                w.u32(id.0)?;
                w.u32(spi.0)?;
                w.u64(*seq)?;
                w.opt_u64(*seq_reserved)
            }
            Event::SaState {
                worker,
                generation,
                id,
                spi,
                state,
            } => {
                w.head(tag::EV_SA_STATE)?;
                w.u16(*worker)?;
                w.u64(*generation)?;
                w.u32(id.0)?;
                w.u32(spi.0)?;
                w.sa_state(state)
            }
            Event::Hairpin {
                worker,
                src,
                dst,
                packets,
                bytes,
                millis,
            } => {
                w.head(tag::EV_HAIRPIN)?;
                w.u16(*worker)?;
                w.ip(*src)?;
                w.ip(*dst)?;
                w.u64(*packets)?;
                w.u64(*bytes)?;
                w.u32(*millis)
            }
            Event::MasqMiss { worker, key } => {
                w.head(tag::EV_MASQ_MISS)?;
                w.u16(*worker)?;
                match key {
                    MasqMissKey::Out(f) => {
                        w.u8(0)?;
                        w.flow(f)
                    }
                    MasqMissKey::In(m) => {
                        w.u8(1)?;
                        w.masq(m)
                    }
                }
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let t = r.u8()?;
        let worker = r.u16()?;
        Ok(match t {
            tag::EV_UNKNOWN_SPI => Event::UnknownSpi {
                worker,
                spi: Spi(r.u32()?),
                src: r.ip()?,
                src_port: r.u16()?,
                dst: r.ip()?,
                packets: r.u64()?,
            },
            tag::EV_LIFETIME => Event::Lifetime {
                worker,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                dir: r.direction()?,
                kind: match r.u8()? {
                    0 => LifetimeKind::Soft,
                    1 => LifetimeKind::Hard,
                    _ => return Err(DecodeError::Invalid("lifetime kind")),
                },
                limit: match r.u8()? {
                    0 => LifetimeLimit::Time,
                    1 => LifetimeLimit::Bytes,
                    2 => LifetimeLimit::Packets,
                    _ => return Err(DecodeError::Invalid("lifetime limit")),
                },
                bytes: r.u64()?,
                packets: r.u64()?,
                age_secs: r.u64()?,
            },
            tag::EV_SEQ_NEAR_WRAP => Event::SeqNearWrap {
                worker,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                seq: r.u64()?,
                limit: r.u64()?,
            },
            tag::EV_AUTH_FAILURES => Event::AuthFailures {
                worker,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                count: r.u64()?,
            },
            tag::EV_REPLAY_FAILURES => Event::ReplayFailures {
                worker,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                count: r.u64()?,
            },
            tag::EV_SEQ_CHECKPOINT => Event::SeqCheckpoint {
                worker,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                seq: r.u64()?,
                seq_reserved: r.opt_u64("reservation flag")?,
            },
            tag::EV_SA_STATE => Event::SaState {
                worker,
                generation: r.u64()?,
                id: SaId(r.u32()?),
                spi: Spi(r.u32()?),
                state: r.sa_state()?,
            },
            tag::EV_HAIRPIN => Event::Hairpin {
                worker,
                src: r.ip()?,
                dst: r.ip()?,
                packets: r.u64()?,
                bytes: r.u64()?,
                millis: r.u32()?,
            },
            tag::EV_MASQ_MISS => Event::MasqMiss {
                worker,
                key: match r.u8()? {
                    0 => MasqMissKey::Out(r.flow()?),
                    1 => MasqMissKey::In(r.masq()?),
                    _ => return Err(DecodeError::Invalid("masq miss direction")),
                },
            },
            tag => return Err(DecodeError::Tag { what: "event", tag }),
        })
    }
}

impl Record for Datagram {
    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.head(tag::DATAGRAM)?;
        w.ip(self.src)?;
        w.ip(self.dst)?;
        w.u16(self.src_port)?;
        w.u16(self.dst_port)?;
        w.u32(u32::try_from(self.payload.len()).map_err(|_| EncodeError::TooLong("payload"))?)?;
        w.put(&self.payload)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            tag::DATAGRAM => {
                let src = r.ip()?;
                let dst = r.ip()?;
                let src_port = r.u16()?;
                let dst_port = r.u16()?;
                let len = usize::try_from(r.u32()?).map_err(|_| DecodeError::Truncated)?;
                // take() checks the length against the input before anything is allocated.
                let payload = r.take(len)?.to_vec();
                Ok(Datagram {
                    src,
                    dst,
                    src_port,
                    dst_port,
                    payload,
                })
            }
            tag => Err(DecodeError::Tag {
                what: "datagram",
                tag,
            }),
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]
mod tests;
