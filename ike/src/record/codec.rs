//! The byte form of an [`IkeSaRecord`], big-endian:
//!
//! ```text
//!   "RGSA" | version (u16) | body | SHA-256 of everything before it (32)
//! ```
//!
//! Version 2 added a CHILD_SA's ESP integrity transform id (u16 after its key size; 0 for
//! AES-GCM); version 3 widened the IKE SA's flags to a u16 (RFC 6311 message-id sync, the
//! gateway move, RFC 5685 redirect); version 4 added the EAP identity (an optional string
//! after the CHILD_SAs); version 5 added the flag of RFC 9611 per-core CHILD_SAs (agreed in
//! IKE_AUTH: an adopter keeps creating and accepting one per worker). Versions 1 to 4 are
//! still read (no EAP identity before 4, never per-core before 5).
//!
//! The body lists the record's fields in declaration order: integers fixed-size, strings and
//! byte strings with a u16 length (the last response with a u32 one), lists with a u16 count,
//! options and flags as one byte whose unknown values are errors, addresses as a family byte
//! (4 or 6) and the address, durations in nanoseconds. Decoding checks the checksum before
//! anything else, then reads exactly the body and nothing after it.
//!
//! Owns: the encoding and the strict decoder.
//! Must never: panic or allocate by a count it has not checked against the bytes left; leave
//! copies of key bytes in memory it does not zeroize (the encoder sizes its buffer first, so
//! it never reallocates).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::time::Duration;

use ring::digest;
use zeroize::Zeroizing;

use super::{ChildSaRecord, IkeSaRecord, IkeSaSecrets, RecordError};
use crate::crypto::{DhGroup, Prf, Secret};
use crate::ids::{ChildSpi, IkeSpi};
use crate::proposal::{EspInteg, IkeProposal};
use crate::wire::{Id, TrafficSelector};

/// The version this code writes; it also reads [`RECORD_VERSION_GCM_ONLY`], 2, 3 and 4.
pub const RECORD_VERSION: u16 = 5;
/// Version 4: no per-core flag.
const RECORD_VERSION_NO_PER_CORE: u16 = 4;
/// Version 3: no EAP identity.
const RECORD_VERSION_NO_EAP_IDENTITY: u16 = 3;
/// Version 2: CHILD_SAs carry their integrity transform; one byte of IKE SA flags.
const RECORD_VERSION_ONE_BYTE_FLAGS: u16 = 2;
/// The first version: every CHILD_SA AES-GCM-16, no integrity transform field.
pub const RECORD_VERSION_GCM_ONLY: u16 = 1;
const MAGIC: &[u8; 4] = b"RGSA";
const SUM_LEN: usize = 32;

const FLAG_INITIATOR: u16 = 1;
const FLAG_NAT: u16 = 2;
const FLAG_MOBIKE: u16 = 4;
const FLAG_LEASE: u16 = 8;
const FLAG_FRAGMENTATION: u16 = 16;
const FLAG_MID_SYNC: u16 = 32;
const FLAG_MID_SYNC_USED: u16 = 64;
const FLAG_GATEWAY_MOVE: u16 = 128;
const FLAG_REDIRECT: u16 = 256;
/// Version 5 on.
const FLAG_PER_CORE: u16 = 512;
const CHILD_ESN: u8 = 1;
const CHILD_REPLACED: u8 = 2;

/// Where encoded bytes go: a counter first (to size the buffer), then the buffer.
trait Sink {
    fn put(&mut self, b: &[u8]);
}

impl Sink for usize {
    fn put(&mut self, b: &[u8]) {
        *self = self.saturating_add(b.len());
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

struct W<'a, S: Sink>(&'a mut S);

impl<S: Sink> W<'_, S> {
    fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.put(&v.to_be_bytes());
    }
    /// A count or length as u16 (the record's lists and keys stay far below it).
    fn len16(&mut self, n: usize) {
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len16(b.len());
        self.0.put(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn ip(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(v) => {
                self.u8(4);
                self.0.put(&v.octets());
            }
            IpAddr::V6(v) => {
                self.u8(6);
                self.0.put(&v.octets());
            }
        }
    }
    fn opt_ip(&mut self, a: Option<IpAddr>) {
        match a {
            Some(a) => self.ip(a),
            None => self.u8(0),
        }
    }
    fn ips(&mut self, v: &[IpAddr]) {
        self.len16(v.len());
        for a in v {
            self.ip(*a);
        }
    }
    fn sock(&mut self, s: SocketAddr) {
        self.ip(s.ip());
        self.u16(s.port());
    }
    fn dur(&mut self, d: Duration) {
        self.u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    fn opt_dur(&mut self, d: Option<Duration>) {
        match d {
            Some(d) => {
                self.u8(1);
                self.dur(d);
            }
            None => self.u8(0),
        }
    }
    fn id(&mut self, i: &Id) {
        self.u8(i.kind);
        self.bytes(&i.data);
    }
    fn tss(&mut self, v: &[TrafficSelector]) {
        self.len16(v.len());
        for t in v {
            self.u8(t.protocol);
            self.u16(t.start_port);
            self.u16(t.end_port);
            self.ip(t.start);
            self.ip(t.end);
        }
    }

    fn record(&mut self, r: &IkeSaRecord) {
        self.0.put(MAGIC);
        self.u16(RECORD_VERSION);
        let flags = [
            (r.initiator, FLAG_INITIATOR),
            (r.nat, FLAG_NAT),
            (r.mobike, FLAG_MOBIKE),
            (r.lease, FLAG_LEASE),
            (r.fragmentation, FLAG_FRAGMENTATION),
            (r.mid_sync, FLAG_MID_SYNC),
            (r.mid_sync_used, FLAG_MID_SYNC_USED),
            (r.gateway_move, FLAG_GATEWAY_MOVE),
            (r.redirect, FLAG_REDIRECT),
            (r.per_core, FLAG_PER_CORE),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0u16, |f, (_, bit)| f | bit);
        self.u16(flags);
        self.u64(r.spi_i.0);
        self.u64(r.spi_r.0);
        self.sock(r.local);
        self.sock(r.remote);
        self.str(&r.connection);
        self.id(&r.local_id);
        self.id(&r.remote_id);
        self.u16(r.prop.encr_bits);
        self.u16(r.prop.prf.id());
        self.u16(r.prop.dh.id());
        self.u8(u8::from(r.prop.cbc));
        let k = &r.keys;
        for s in [&k.sk_d, &k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er] {
            self.bytes(s);
        }
        self.u64(r.iv_next);
        self.u32(r.next_request_id);
        self.u32(r.peer_next_id);
        match &r.last_response {
            Some((id, m)) => {
                self.u8(1);
                self.u32(*id);
                self.u32(u32::try_from(m.len()).unwrap_or(u32::MAX));
                self.0.put(m);
            }
            None => self.u8(0),
        }
        self.opt_dur(r.rekey_in);
        self.dur(r.heard_ago);
        self.opt_ip(r.virtual_ip);
        self.ips(&r.peer_additional);
        self.ips(&r.our_additional);
        self.len16(r.children.len());
        for c in &r.children {
            self.str(&c.name);
            self.u32(c.spi_in.0);
            self.u32(c.spi_out.0);
            let f =
                (if c.esn { CHILD_ESN } else { 0 }) | (if c.replaced { CHILD_REPLACED } else { 0 });
            self.u8(f);
            self.u16(c.encr_bits);
            self.u16(c.integ.map_or(0, EspInteg::id));
            self.tss(&c.local_ts);
            self.tss(&c.remote_ts);
            self.opt_dur(c.rekey_in);
            self.opt_dur(c.expire_in);
            self.bytes(&c.key_in);
            self.bytes(&c.key_out);
        }
        match &r.eap_identity {
            Some(e) => {
                self.u8(1);
                self.str(e);
            }
            None => self.u8(0),
        }
    }
}

/// Every length and count fits its field (a peer could make, say, more CHILD_SAs on one IKE
/// SA than a u16 counts).
pub(super) fn check_limits(r: &IkeSaRecord) -> Result<(), RecordError> {
    let max = usize::from(u16::MAX);
    let k = &r.keys;
    let mut lens = vec![
        r.connection.len(),
        r.local_id.data.len(),
        r.remote_id.data.len(),
        k.sk_d.len(),
        k.sk_ai.len(),
        k.sk_ar.len(),
        k.sk_ei.len(),
        k.sk_er.len(),
        r.peer_additional.len(),
        r.our_additional.len(),
        r.children.len(),
        r.eap_identity.as_ref().map_or(0, String::len),
    ];
    for c in &r.children {
        lens.extend([
            c.name.len(),
            c.local_ts.len(),
            c.remote_ts.len(),
            c.key_in.len(),
            c.key_out.len(),
        ]);
    }
    let response_fits = r
        .last_response
        .as_ref()
        .is_none_or(|(_, m)| u32::try_from(m.len()).is_ok());
    if lens.iter().any(|n| *n > max) || !response_fits {
        return Err(RecordError::Invalid(
            "a length or count beyond the byte form's",
        ));
    }
    Ok(())
}

/// The byte form of a record whose lengths passed [`check_limits`].
pub(super) fn encode(r: &IkeSaRecord) -> Secret {
    let mut n = 0usize;
    W(&mut n).record(r);
    let mut out = Zeroizing::new(Vec::with_capacity(n.saturating_add(SUM_LEN)));
    W(&mut *out).record(r);
    let sum = digest::digest(&digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    out
}

/// A strict reader over the body.
struct R<'a> {
    b: &'a [u8],
    version: u16,
}

type Res<T> = Result<T, RecordError>;

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let (h, t) = self.b.split_at_checked(n).ok_or(RecordError::Truncated)?;
        self.b = t;
        Ok(h)
    }
    fn arr<const N: usize>(&mut self) -> Res<[u8; N]> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| RecordError::Truncated)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(u8::from_be_bytes(self.arr()?))
    }
    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn flag(&mut self, what: &'static str) -> Res<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Invalid(what)),
        }
    }
    fn bytes(&mut self) -> Res<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn secret(&mut self) -> Res<Secret> {
        Ok(Zeroizing::new(self.bytes()?.to_vec()))
    }
    fn str(&mut self, what: &'static str) -> Res<String> {
        let b = self.bytes()?;
        core::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| RecordError::Invalid(what))
    }
    fn ip_of(&mut self, family: u8) -> Res<IpAddr> {
        match family {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.arr::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.arr::<16>()?))),
            _ => Err(RecordError::Invalid("address family")),
        }
    }
    fn ip(&mut self) -> Res<IpAddr> {
        let f = self.u8()?;
        self.ip_of(f)
    }
    fn opt_ip(&mut self) -> Res<Option<IpAddr>> {
        match self.u8()? {
            0 => Ok(None),
            f => self.ip_of(f).map(Some),
        }
    }
    /// A list of `count` items, each at least `min` bytes: the count is checked against what
    /// is left before anything is allocated.
    fn list<T>(&mut self, min: usize, mut item: impl FnMut(&mut Self) -> Res<T>) -> Res<Vec<T>> {
        let n = usize::from(self.u16()?);
        if n.saturating_mul(min) > self.b.len() {
            return Err(RecordError::Truncated);
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(item(self)?);
        }
        Ok(v)
    }
    fn ips(&mut self) -> Res<Vec<IpAddr>> {
        self.list(5, R::ip)
    }
    fn sock(&mut self) -> Res<SocketAddr> {
        let ip = self.ip()?;
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn dur(&mut self) -> Res<Duration> {
        Ok(Duration::from_nanos(self.u64()?))
    }
    fn opt_dur(&mut self) -> Res<Option<Duration>> {
        if self.flag("duration option")? {
            self.dur().map(Some)
        } else {
            Ok(None)
        }
    }
    fn id(&mut self) -> Res<Id> {
        let kind = self.u8()?;
        Ok(Id {
            kind,
            data: self.bytes()?.to_vec(),
        })
    }
    fn tss(&mut self) -> Res<Vec<TrafficSelector>> {
        self.list(15, |r| {
            let protocol = r.u8()?;
            let start_port = r.u16()?;
            let end_port = r.u16()?;
            let start = r.ip()?;
            let end = r.ip()?;
            if start.is_ipv4() != end.is_ipv4() {
                return Err(RecordError::Invalid("traffic selector families differ"));
            }
            Ok(TrafficSelector {
                protocol,
                start_port,
                end_port,
                start,
                end,
            })
        })
    }

    fn child(&mut self) -> Res<ChildSaRecord> {
        let name = self.str("CHILD_SA name")?;
        let spi_in = ChildSpi(self.u32()?);
        let spi_out = ChildSpi(self.u32()?);
        let f = self.u8()?;
        if f & !(CHILD_ESN | CHILD_REPLACED) != 0 {
            return Err(RecordError::Invalid("CHILD_SA flags"));
        }
        let encr_bits = self.u16()?;
        let integ = match self.version {
            RECORD_VERSION_GCM_ONLY => None,
            _ => match self.u16()? {
                0 => None,
                id => {
                    Some(EspInteg::from_id(id).ok_or(RecordError::Invalid("CHILD_SA integrity"))?)
                }
            },
        };
        Ok(ChildSaRecord {
            name,
            spi_in,
            spi_out,
            esn: f & CHILD_ESN != 0,
            replaced: f & CHILD_REPLACED != 0,
            encr_bits,
            integ,
            local_ts: self.tss()?,
            remote_ts: self.tss()?,
            rekey_in: self.opt_dur()?,
            expire_in: self.opt_dur()?,
            key_in: self.secret()?,
            key_out: self.secret()?,
        })
    }

    fn record(&mut self) -> Res<IkeSaRecord> {
        // Versions 1 and 2 had one byte of flags (the first five).
        let flags = if self.version >= 3 {
            self.u16()?
        } else {
            u16::from(self.u8()?)
        };
        let known = FLAG_INITIATOR
            | FLAG_NAT
            | FLAG_MOBIKE
            | FLAG_LEASE
            | FLAG_FRAGMENTATION
            | FLAG_MID_SYNC
            | FLAG_MID_SYNC_USED
            | FLAG_GATEWAY_MOVE
            | FLAG_REDIRECT
            | if self.version >= 5 { FLAG_PER_CORE } else { 0 };
        if flags & !known != 0 {
            return Err(RecordError::Invalid("flags"));
        }
        let spi_i = IkeSpi(self.u64()?);
        let spi_r = IkeSpi(self.u64()?);
        let local = self.sock()?;
        let remote = self.sock()?;
        let connection = self.str("connection name")?;
        let local_id = self.id()?;
        let remote_id = self.id()?;
        let encr_bits = self.u16()?;
        let prf = Prf::from_id(self.u16()?).ok_or(RecordError::Invalid("PRF"))?;
        let dh = DhGroup::from_id(self.u16()?).ok_or(RecordError::Invalid("DH group"))?;
        let cbc = self.flag("cipher")?;
        let keys = IkeSaSecrets {
            sk_d: self.secret()?,
            sk_ai: self.secret()?,
            sk_ar: self.secret()?,
            sk_ei: self.secret()?,
            sk_er: self.secret()?,
        };
        let iv_next = self.u64()?;
        let next_request_id = self.u32()?;
        let peer_next_id = self.u32()?;
        let last_response = if self.flag("last response option")? {
            let id = self.u32()?;
            let n = usize::try_from(self.u32()?).map_err(|_| RecordError::Truncated)?;
            Some((id, self.take(n)?.to_vec()))
        } else {
            None
        };
        Ok(IkeSaRecord {
            initiator: flags & FLAG_INITIATOR != 0,
            spi_i,
            spi_r,
            local,
            remote,
            nat: flags & FLAG_NAT != 0,
            connection,
            local_id,
            remote_id,
            prop: IkeProposal {
                encr_bits,
                prf,
                dh,
                cbc,
            },
            keys,
            iv_next,
            next_request_id,
            peer_next_id,
            last_response,
            rekey_in: self.opt_dur()?,
            heard_ago: self.dur()?,
            virtual_ip: self.opt_ip()?,
            lease: flags & FLAG_LEASE != 0,
            mobike: flags & FLAG_MOBIKE != 0,
            fragmentation: flags & FLAG_FRAGMENTATION != 0,
            mid_sync: flags & FLAG_MID_SYNC != 0,
            mid_sync_used: flags & FLAG_MID_SYNC_USED != 0,
            gateway_move: flags & FLAG_GATEWAY_MOVE != 0,
            per_core: flags & FLAG_PER_CORE != 0,
            redirect: flags & FLAG_REDIRECT != 0,
            peer_additional: self.ips()?,
            our_additional: self.ips()?,
            // A CHILD_SA takes at least 23 bytes (every length and count zero).
            children: self.list(23, R::child)?,
            // Versions 1 to 3 did not carry it.
            eap_identity: if self.version > RECORD_VERSION_NO_EAP_IDENTITY
                && self.flag("EAP identity option")?
            {
                Some(self.str("EAP identity")?)
            } else {
                None
            },
        })
    }
}

pub(super) fn decode(b: &[u8]) -> Result<IkeSaRecord, RecordError> {
    let (content, sum) = b
        .split_at_checked(b.len().checked_sub(SUM_LEN).ok_or(RecordError::Truncated)?)
        .ok_or(RecordError::Truncated)?;
    let mut r = R {
        b: content,
        version: 0,
    };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let version = r.u16()?;
    if digest::digest(&digest::SHA256, content).as_ref() != sum {
        return Err(RecordError::Checksum);
    }
    if version != RECORD_VERSION
        && version != RECORD_VERSION_NO_PER_CORE
        && version != RECORD_VERSION_NO_EAP_IDENTITY
        && version != RECORD_VERSION_ONE_BYTE_FLAGS
        && version != RECORD_VERSION_GCM_ONLY
    {
        return Err(RecordError::UnknownVersion(version));
    }
    r.version = version;
    let rec = r.record()?;
    if !r.b.is_empty() {
        return Err(RecordError::TrailingBytes);
    }
    rec.check()?;
    Ok(rec)
}
