//! The values of the cluster store, before sealing: a versioned, strict binary codec.
//!
//! Every value is `version: u8` (= [`STORE_CODEC_VERSION`]), `tag: u8`, then the body;
//! integers little-endian; strings are `len: u8` + UTF-8.
//!
//! | tag | record | body |
//! |---|---|---|
//! | 0x01 | `IkeSa` | id u64, version u64, len u32, bytes (the ike crate's export record) |
//! | 0x07 | `Child` | version u64, fence u64, flags u8 (bit 0 inbound, bit 1 outbound), then per direction present (inbound first): len u32, a `proto` `UpdateEnvelope` holding its `AddSa` (generation 0) |
//! | 0x08 | `Placement` | at_ms u64, drain_start u64, count u16, then per edge: edge u16, kind u8 |
//! | 0x04 | `Seq` | seq u64, at_ms u64, reporter string |
//! | 0x05 | `Edge` | address string, started_ms u64, incarnation u64 |
//! | 0x06 | `SpiBlock` | first u32, count u32 |
//!
//! Tags 0x02 (one direction of a CHILD SA) and 0x03 (one edge's placement) were the records
//! of the first layout, one key per direction and per edge; they are not read any more.
//!
//! Decoding never panics and allocates nothing before a length is checked against what is
//! left; unknown versions and tags, short buffers and trailing bytes are errors. Records that
//! hold keys (`IkeSa`, `ChildSa`) are encoded into zeroizing buffers and their `Debug` shows
//! ids and lengths only.
#![deny(clippy::arithmetic_side_effects)]

use std::fmt;

use proto::codec::Record as _;
use proto::sa::SaParams;
use proto::{Direction, Update, UpdateEnvelope};
use zeroize::Zeroizing;

/// The version byte every value starts with.
pub const STORE_CODEC_VERSION: u8 = 1;

/// The largest value (etcd's default request limit is 1.5 MiB for a whole transaction).
pub const MAX_VALUE: usize = 64 * 1024;

mod tag {
    pub const IKE_SA: u8 = 0x01;
    pub const CHILD: u8 = 0x07;
    pub const PLACEMENT: u8 = 0x08;
    pub const SEQ: u8 = 0x04;
    pub const EDGE: u8 = 0x05;
    pub const SPI_BLOCK: u8 = 0x06;
}

/// One value of the store.
#[derive(Clone)]
pub enum Record {
    /// An IKE SA as the ike crate exports it (opaque here; keys inside).
    IkeSa {
        id: u64,
        version: u64,
        bytes: Zeroizing<Vec<u8>>,
    },
    /// Both directions of a CHILD SA as installed (keys inside; a direction not installed
    /// yet or already deleted is `None`), and the first sequence fence of its outbound SA
    /// (later fences are `Seq` records; a recovering node takes the higher).
    Child {
        version: u64,
        inbound: Option<Box<SaParams>>,
        outbound: Option<Box<SaParams>>,
        fence: u64,
    },
    /// The edges that hold the CHILD SA in the key: per edge its kind, 1 both directions
    /// (`repository::PLACED_CHILD`), 2 a watched copy of its inbound SA only
    /// (`repository::PLACED_COPY`, ahead of the client), 3 a copy and the outbound SA as a
    /// drain below `drain_start`, the holder's start (`repository::PLACED_DRAIN`, after a
    /// move); sorted by edge, each edge once. `drain_start` is 0 without a drain.
    Placement {
        at_ms: u64,
        drain_start: u64,
        edges: Vec<(u16, u8)>,
    },
    /// The freshest outbound sequence state of a CHILD SA: the highest sequence number the
    /// reporter may have used.
    Seq {
        seq: u64,
        at_ms: u64,
        reporter: String,
    },
    /// A live edge (under its lease): where the crypto node reaches it, and the incarnation
    /// of its process (a crypto node that restarts knows from it whether an edge that says
    /// hello again still holds what it was sent).
    Edge {
        address: String,
        started_ms: u64,
        incarnation: u64,
    },
    /// The SPI range `first .. first + count` belongs to the node in the key.
    SpiBlock { first: u32, count: u32 },
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::IkeSa { id, version, bytes } => {
                write!(f, "IkeSa({id:#x} v{version}, {} bytes)", bytes.len())
            }
            Record::Child {
                version,
                inbound,
                outbound,
                fence,
            } => {
                let ids = |p: &Option<Box<SaParams>>| {
                    p.as_ref()
                        .map(|p| format!("id {} spi {:#x}", p.id.0, p.spi.0))
                };
                write!(
                    f,
                    "Child(in {:?}, out {:?}, fence {fence}, v{version})",
                    ids(inbound),
                    ids(outbound)
                )
            }
            Record::Placement {
                at_ms,
                drain_start,
                edges,
            } => write!(f, "Placement({edges:?} drain {drain_start} @{at_ms})"),
            Record::Seq {
                seq,
                at_ms,
                reporter,
            } => write!(f, "Seq({seq} by {reporter} @{at_ms})"),
            Record::Edge {
                address,
                started_ms,
                incarnation,
            } => write!(f, "Edge({address} since {started_ms}, {incarnation:016x})"),
            Record::SpiBlock { first, count } => write!(f, "SpiBlock({first:#x} +{count})"),
        }
    }
}

/// Equal when they encode to the same bytes (`SaParams` has no `PartialEq`).
impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        matches!((self.encode(), other.encode()), (Ok(a), Ok(b)) if *a == *b)
    }
}

/// Why a value did not decode. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is truncated")]
    Truncated,
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("store codec version {0}, expected {STORE_CODEC_VERSION}")]
    Version(u8),
    #[error("unknown tag {0:#04x}")]
    Tag(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("value longer than {MAX_VALUE} bytes")]
    TooLong,
}

/// Why a record could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is too long for its field")]
    TooLong(&'static str),
    #[error("the CHILD SA parameters do not encode: {0}")]
    Params(proto::codec::EncodeError),
}

impl Record {
    /// Encodes into a zeroizing buffer (records may hold keys).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let mut w = Zeroizing::new(Vec::with_capacity(64));
        w.push(STORE_CODEC_VERSION);
        match self {
            Record::IkeSa { id, version, bytes } => {
                w.push(tag::IKE_SA);
                w.extend_from_slice(&id.to_le_bytes());
                w.extend_from_slice(&version.to_le_bytes());
                put_len(&mut w, bytes.len(), "IKE SA record")?;
                w.extend_from_slice(bytes);
            }
            Record::Child {
                version,
                inbound,
                outbound,
                fence,
            } => {
                w.push(tag::CHILD);
                w.extend_from_slice(&version.to_le_bytes());
                w.extend_from_slice(&fence.to_le_bytes());
                w.push(u8::from(inbound.is_some()) | (u8::from(outbound.is_some()) << 1));
                for (dir, params) in [
                    (Direction::Inbound, inbound),
                    (Direction::Outbound, outbound),
                ] {
                    let Some(params) = params else {
                        continue;
                    };
                    let env = UpdateEnvelope {
                        generation: 0,
                        update: Update::AddSa {
                            dir,
                            params: (**params).clone(),
                        },
                    };
                    let bytes =
                        Zeroizing::new(proto::codec::to_vec(&env).map_err(EncodeError::Params)?);
                    put_len(&mut w, bytes.len(), "CHILD SA parameters")?;
                    w.extend_from_slice(&bytes);
                }
            }
            Record::Placement {
                at_ms,
                drain_start,
                edges,
            } => {
                w.push(tag::PLACEMENT);
                w.extend_from_slice(&at_ms.to_le_bytes());
                w.extend_from_slice(&drain_start.to_le_bytes());
                let n = u16::try_from(edges.len()).map_err(|_| EncodeError::TooLong("edges"))?;
                w.extend_from_slice(&n.to_le_bytes());
                for (edge, kind) in edges {
                    w.extend_from_slice(&edge.to_le_bytes());
                    w.push(*kind);
                }
            }
            Record::Seq {
                seq,
                at_ms,
                reporter,
            } => {
                w.push(tag::SEQ);
                w.extend_from_slice(&seq.to_le_bytes());
                w.extend_from_slice(&at_ms.to_le_bytes());
                put_str(&mut w, reporter, "reporter")?;
            }
            Record::Edge {
                address,
                started_ms,
                incarnation,
            } => {
                w.push(tag::EDGE);
                put_str(&mut w, address, "edge address")?;
                w.extend_from_slice(&started_ms.to_le_bytes());
                w.extend_from_slice(&incarnation.to_le_bytes());
            }
            Record::SpiBlock { first, count } => {
                w.push(tag::SPI_BLOCK);
                w.extend_from_slice(&first.to_le_bytes());
                w.extend_from_slice(&count.to_le_bytes());
            }
        }
        if w.len() > MAX_VALUE {
            return Err(EncodeError::TooLong("record"));
        }
        Ok(w)
    }

    /// Decodes exactly one record that fills `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        if bytes.len() > MAX_VALUE {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader { buf: bytes };
        let v = r.u8()?;
        if v != STORE_CODEC_VERSION {
            return Err(DecodeError::Version(v));
        }
        let rec = match r.u8()? {
            tag::IKE_SA => {
                let id = r.u64()?;
                let version = r.u64()?;
                let len = r.len()?;
                Record::IkeSa {
                    id,
                    version,
                    bytes: Zeroizing::new(r.take(len)?.to_vec()),
                }
            }
            tag::CHILD => {
                let version = r.u64()?;
                let fence = r.u64()?;
                let flags = r.u8()?;
                if flags & !3 != 0 {
                    return Err(DecodeError::Invalid("CHILD SA flags"));
                }
                let mut dirs = [None, None];
                for (bit, want) in [(1u8, Direction::Inbound), (2, Direction::Outbound)] {
                    if flags & bit == 0 {
                        continue;
                    }
                    let len = r.len()?;
                    let env = UpdateEnvelope::decode(r.take(len)?)
                        .map_err(|_| DecodeError::Invalid("CHILD SA parameters"))?;
                    match env.update {
                        Update::AddSa { dir, params } if env.generation == 0 && dir == want => {
                            if let Some(slot) = dirs.get_mut(usize::from(bit >> 1)) {
                                *slot = Some(Box::new(params));
                            }
                        }
                        _ => return Err(DecodeError::Invalid("CHILD SA record")),
                    }
                }
                let [inbound, outbound] = dirs;
                Record::Child {
                    version,
                    inbound,
                    outbound,
                    fence,
                }
            }
            tag::PLACEMENT => {
                let at_ms = r.u64()?;
                let drain_start = r.u64()?;
                let n = usize::from(r.u16()?);
                if n.checked_mul(3).is_none_or(|b| b > r.buf.len()) {
                    return Err(DecodeError::Truncated);
                }
                let mut edges: Vec<(u16, u8)> = Vec::with_capacity(n);
                for _ in 0..n {
                    let e = (r.u16()?, r.u8()?);
                    if edges.last().is_some_and(|l| l.0 >= e.0) {
                        return Err(DecodeError::Invalid("placement edges"));
                    }
                    edges.push(e);
                }
                Record::Placement {
                    at_ms,
                    drain_start,
                    edges,
                }
            }
            tag::SEQ => Record::Seq {
                seq: r.u64()?,
                at_ms: r.u64()?,
                reporter: r.string()?,
            },
            tag::EDGE => Record::Edge {
                address: r.string()?,
                started_ms: r.u64()?,
                incarnation: r.u64()?,
            },
            tag::SPI_BLOCK => Record::SpiBlock {
                first: r.u32()?,
                count: r.u32()?,
            },
            t => return Err(DecodeError::Tag(t)),
        };
        match r.buf.len() {
            0 => Ok(rec),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

fn put_len(w: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), EncodeError> {
    if len > MAX_VALUE {
        return Err(EncodeError::TooLong(what));
    }
    let n = u32::try_from(len).map_err(|_| EncodeError::TooLong(what))?;
    w.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_str(w: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), EncodeError> {
    let n = u8::try_from(s.len()).map_err(|_| EncodeError::TooLong(what))?;
    w.push(n);
    w.extend_from_slice(s.as_bytes());
    Ok(())
}

struct Reader<'a> {
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

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError::TooLong)?;
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid("string"))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use crate::ha::testing::child_params;

    pub(crate) fn samples() -> Vec<Record> {
        vec![
            Record::IkeSa {
                id: 0xfeed_0001,
                version: 3,
                bytes: Zeroizing::new(vec![0x5a; 300]),
            },
            Record::Child {
                version: 2,
                inbound: Some(Box::new(child_params(proto::SaId(6), 0xc000_0006))),
                outbound: Some(Box::new(child_params(proto::SaId(7), 0xc000_0007))),
                fence: 1 << 33,
            },
            Record::Child {
                version: 2,
                inbound: None,
                outbound: Some(Box::new(child_params(proto::SaId(7), 0xc000_0007))),
                fence: 0,
            },
            Record::Child {
                version: 2,
                inbound: Some(Box::new(child_params(proto::SaId(6), 0xc000_0006))),
                outbound: None,
                fence: 5,
            },
            Record::Placement {
                at_ms: 1234,
                drain_start: 1 << 19,
                edges: vec![(1, 1), (2, 3), (300, 2)],
            },
            Record::Placement {
                at_ms: 1,
                drain_start: 0,
                edges: vec![],
            },
            Record::Seq {
                seq: 1 << 40,
                at_ms: 99,
                reporter: "edge-b".into(),
            },
            Record::Edge {
                address: "127.0.0.1:4600".into(),
                started_ms: 5,
                incarnation: 0x1234,
            },
            Record::SpiBlock {
                first: 0xc000_0000,
                count: 0x0100_0000,
            },
        ]
    }

    #[test]
    fn every_record_round_trips_and_every_truncation_is_an_error() {
        for rec in samples() {
            let bytes = rec.encode().unwrap();
            assert_eq!(Record::decode(&bytes).unwrap(), rec);
            for cut in 0..bytes.len() {
                assert!(
                    Record::decode(&bytes[..cut]).is_err(),
                    "{rec:?} cut at {cut}"
                );
            }
            let mut long = bytes.to_vec();
            long.push(0);
            assert_eq!(Record::decode(&long), Err(DecodeError::TrailingBytes(1)));
        }
        assert_eq!(Record::decode(&[2, 1]), Err(DecodeError::Version(2)));
        assert_eq!(Record::decode(&[1, 0x77]), Err(DecodeError::Tag(0x77)));
        // A length past the end: no allocation, an error.
        let mut b = vec![1, tag::IKE_SA];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(&b), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_child_record_with_a_direction_in_the_wrong_place_or_placements_out_of_order_is_refused() {
        // The outbound SA's envelope where the inbound one belongs.
        let out = Record::Child {
            version: 1,
            inbound: None,
            outbound: Some(Box::new(child_params(proto::SaId(7), 7))),
            fence: 0,
        };
        let mut b = out.encode().unwrap().to_vec();
        b[18] = 1; // flags: inbound only
        assert_eq!(
            Record::decode(&b),
            Err(DecodeError::Invalid("CHILD SA record"))
        );
        b[18] = 4;
        assert_eq!(
            Record::decode(&b),
            Err(DecodeError::Invalid("CHILD SA flags"))
        );
        for edges in [vec![(2u16, 1u8), (1, 2)], vec![(1, 1), (1, 2)]] {
            let mut b = Record::Placement {
                at_ms: 0,
                drain_start: 0,
                edges,
            }
            .encode()
            .unwrap()
            .to_vec();
            assert_eq!(
                Record::decode(&b),
                Err(DecodeError::Invalid("placement edges"))
            );
            // A count past what is there allocates nothing.
            b[18] = 0xff;
            b[19] = 0xff;
            assert_eq!(Record::decode(&b), Err(DecodeError::Truncated));
        }
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        for rec in samples() {
            let s = format!("{rec:?}");
            assert!(
                !s.contains("90, 90") && !s.contains("170") && !s.contains("aa"),
                "{s}"
            );
        }
    }
}
