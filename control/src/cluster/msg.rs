//! The messages between an edge and the crypto node, and their versioned, strict codec.
//!
//! Every message is one Noise transport message on the edge's channel (`appliance`'s
//! `noise_channel`): a version byte ([`MSG_VERSION`]), a tag, then the body. The proto records
//! they carry ([`Update`], [`Datagram`], [`Event`]) are embedded in `proto`'s own codec
//! (length-prefixed), so a key travels in exactly one encoding and the data plane's decoder
//! checks it again.
//!
//! Edge -> crypto node: [`EdgeMsg`] (hello with the edge's incarnation and the last carrier
//! it applied; an IKE datagram as the edge received it, tagged with the edge and the outer
//! addresses and ports it came from and to; a data-plane report, sequence reports among them;
//! the acknowledgement of carriers; a data plane that restarted empty).
//! Crypto node -> edge: [`NodeMsg`] (an SA carrier: numbered updates for that edge's data
//! plane, full or partial; an IKE datagram to send from the edge; the welcome with the node's
//! incarnation that answers every hello).
//!
//! Owns: the wire form. Must never: panic or over-allocate on any bytes (every length is
//! checked against what is there before anything is allocated); show a key in `Debug`
//! (`SaKeys` does not).

use proto::codec::{DecodeError, Record};
use proto::{Datagram, Event, Update, UpdateEnvelope};
use zeroize::Zeroizing;

/// The version byte every message starts with. 2: [`NodeMsg::Users`].
pub const MSG_VERSION: u8 = 2;

/// The longest identity [`NodeMsg::Users`] carries (bytes of UTF-8).
pub const MAX_IDENTITY: usize = 1024;

/// An edge's id in the cluster (configured, unique).
pub type EdgeId = u16;

/// The most updates one carrier holds (a bigger batch is split by the sender).
pub const MAX_CARRIER_UPDATES: usize = 256;

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const IKE_IN: u8 = 0x02;
    pub const REPORT: u8 = 0x03;
    pub const APPLIED: u8 = 0x04;
    pub const DATAPLANE_FRESH: u8 = 0x05;
    pub const CARRIER: u8 = 0x81;
    pub const IKE_OUT: u8 = 0x82;
    pub const WELCOME: u8 = 0x83;
    pub const USERS: u8 = 0x84;
}

/// What an edge tells the crypto node.
#[derive(Clone, Debug, PartialEq)]
pub enum EdgeMsg {
    /// First message on every connection. `incarnation` is new for every start of the edge
    /// process (a different one: the edge lost what it was sent); `applied` is the number of
    /// the last carrier it applied (0: none).
    Hello {
        edge: EdgeId,
        incarnation: u64,
        applied: u64,
    },
    /// An IKE datagram as it reached the edge (UDP 500, or 4500 with the non-ESP marker
    /// removed): `dst`/`dst_port` are the edge's address and port it came to.
    Ike { edge: EdgeId, datagram: Datagram },
    /// A data-plane report: sequence checkpoints and final SA states (sequence reports),
    /// lifetimes, unknown SPIs, failures.
    Report { edge: EdgeId, event: Event },
    /// Every carrier up to and including `carrier` is applied by the edge's data plane.
    Applied { edge: EdgeId, carrier: u64 },
    /// The edge's data plane restarted empty (its SAs are gone).
    DataplaneFresh { edge: EdgeId },
}

/// What the crypto node tells an edge.
#[derive(Clone, Debug)]
pub enum NodeMsg {
    /// SA carrier number `n` (per edge, from 1, no gaps): updates for the edge's data plane in
    /// order (installs, deletions, and partial ones: rebinds, reservations, host bindings).
    /// An edge applies each number once.
    Carrier { n: u64, updates: Vec<Update> },
    /// An IKE datagram to send from the edge (from `src`:`src_port`, one of its addresses),
    /// after every carrier sent before it is applied.
    Ike { datagram: Datagram },
    /// The node's answer to every hello, ahead of anything else on the connection:
    /// `incarnation` is new for every start of the crypto node process. Carrier numbers are
    /// per node incarnation: an edge that meets a new one starts counting again from 1.
    Welcome { incarnation: u64 },
    /// Who the clients of the outbound SAs in the next carrier are: per outbound SA id, the
    /// identity its IKE SA authenticated (EAP identity, else IKE identity). Sent ahead of
    /// every carrier (first or again) that installs an outbound SA of an authenticated
    /// client; the edge's masquerade (issue 21) identifies the user by it.
    Users { users: Vec<(proto::SaId, String)> },
}

/// Why a message could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message is truncated")]
    Truncated,
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("message version {0}, expected {MSG_VERSION}")]
    Version(u8),
    #[error("unknown message tag {0:#04x}")]
    Tag(u8),
    #[error("a carrier of {0} updates (at most {MAX_CARRIER_UPDATES})")]
    TooMany(usize),
    #[error("embedded record: {0}")]
    Record(String),
    #[error("{0} does not fit its field")]
    TooLong(&'static str),
}

impl From<DecodeError> for MsgError {
    fn from(e: DecodeError) -> Self {
        MsgError::Record(e.to_string())
    }
}

struct W(Zeroizing<Vec<u8>>);

impl W {
    fn new(tag: u8) -> W {
        W(Zeroizing::new(vec![MSG_VERSION, tag]))
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn record<T: Record>(&mut self, rec: &T) -> Result<(), MsgError> {
        let bytes = proto::codec::to_vec(rec).map_err(|e| MsgError::Record(e.to_string()))?;
        self.u32(u32::try_from(bytes.len()).map_err(|_| MsgError::TooLong("record"))?);
        self.0.extend_from_slice(&bytes);
        Ok(())
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgError> {
        let (h, rest) = self.0.split_at_checked(n).ok_or(MsgError::Truncated)?;
        self.0 = rest;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, MsgError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u16(&mut self) -> Result<u16, MsgError> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| MsgError::Truncated)?;
        Ok(u16::from_le_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, MsgError> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| MsgError::Truncated)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, MsgError> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| MsgError::Truncated)?;
        Ok(u64::from_le_bytes(b))
    }
    fn record<T: Record>(&mut self) -> Result<T, MsgError> {
        let n = usize::try_from(self.u32()?).map_err(|_| MsgError::Truncated)?;
        // take() checks the length against the input before anything is decoded.
        Ok(T::decode(self.take(n)?)?)
    }
    fn head(bytes: &'a [u8]) -> Result<(R<'a>, u8), MsgError> {
        let mut r = R(bytes);
        let v = r.u8()?;
        if v != MSG_VERSION {
            return Err(MsgError::Version(v));
        }
        let t = r.u8()?;
        Ok((r, t))
    }
    fn end(self) -> Result<(), MsgError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(MsgError::Trailing(n)),
        }
    }
}

fn envelope(u: &Update) -> UpdateEnvelope {
    UpdateEnvelope {
        generation: 0,
        update: u.clone(),
    }
}

impl EdgeMsg {
    pub fn edge(&self) -> EdgeId {
        match self {
            EdgeMsg::Hello { edge, .. }
            | EdgeMsg::Ike { edge, .. }
            | EdgeMsg::Report { edge, .. }
            | EdgeMsg::Applied { edge, .. }
            | EdgeMsg::DataplaneFresh { edge } => *edge,
        }
    }

    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, MsgError> {
        let w = match self {
            EdgeMsg::Hello {
                edge,
                incarnation,
                applied,
            } => {
                let mut w = W::new(tag::HELLO);
                w.u16(*edge);
                w.u64(*incarnation);
                w.u64(*applied);
                w
            }
            EdgeMsg::Ike { edge, datagram } => {
                let mut w = W::new(tag::IKE_IN);
                w.u16(*edge);
                w.record(datagram)?;
                w
            }
            EdgeMsg::Report { edge, event } => {
                let mut w = W::new(tag::REPORT);
                w.u16(*edge);
                w.record(event)?;
                w
            }
            EdgeMsg::Applied { edge, carrier } => {
                let mut w = W::new(tag::APPLIED);
                w.u16(*edge);
                w.u64(*carrier);
                w
            }
            EdgeMsg::DataplaneFresh { edge } => {
                let mut w = W::new(tag::DATAPLANE_FRESH);
                w.u16(*edge);
                w
            }
        };
        Ok(w.0)
    }

    pub fn decode(bytes: &[u8]) -> Result<EdgeMsg, MsgError> {
        let (mut r, t) = R::head(bytes)?;
        let m = match t {
            tag::HELLO => EdgeMsg::Hello {
                edge: r.u16()?,
                incarnation: r.u64()?,
                applied: r.u64()?,
            },
            tag::IKE_IN => EdgeMsg::Ike {
                edge: r.u16()?,
                datagram: r.record()?,
            },
            tag::REPORT => EdgeMsg::Report {
                edge: r.u16()?,
                event: r.record()?,
            },
            tag::APPLIED => EdgeMsg::Applied {
                edge: r.u16()?,
                carrier: r.u64()?,
            },
            tag::DATAPLANE_FRESH => EdgeMsg::DataplaneFresh { edge: r.u16()? },
            t => return Err(MsgError::Tag(t)),
        };
        r.end()?;
        Ok(m)
    }
}

impl NodeMsg {
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, MsgError> {
        let w = match self {
            NodeMsg::Carrier { n, updates } => {
                if updates.len() > MAX_CARRIER_UPDATES {
                    return Err(MsgError::TooMany(updates.len()));
                }
                let mut w = W::new(tag::CARRIER);
                w.u64(*n);
                w.u16(u16::try_from(updates.len()).map_err(|_| MsgError::TooLong("updates"))?);
                for u in updates {
                    w.record(&envelope(u))?;
                }
                w
            }
            NodeMsg::Ike { datagram } => {
                let mut w = W::new(tag::IKE_OUT);
                w.record(datagram)?;
                w
            }
            NodeMsg::Welcome { incarnation } => {
                let mut w = W::new(tag::WELCOME);
                w.u64(*incarnation);
                w
            }
            NodeMsg::Users { users } => {
                if users.len() > MAX_CARRIER_UPDATES {
                    return Err(MsgError::TooMany(users.len()));
                }
                let mut w = W::new(tag::USERS);
                w.u16(u16::try_from(users.len()).map_err(|_| MsgError::TooLong("users"))?);
                for (id, who) in users {
                    if who.len() > MAX_IDENTITY {
                        return Err(MsgError::TooLong("identity"));
                    }
                    w.u32(id.0);
                    w.u16(u16::try_from(who.len()).map_err(|_| MsgError::TooLong("identity"))?);
                    w.0.extend_from_slice(who.as_bytes());
                }
                w
            }
        };
        Ok(w.0)
    }

    pub fn decode(bytes: &[u8]) -> Result<NodeMsg, MsgError> {
        let (mut r, t) = R::head(bytes)?;
        let m = match t {
            tag::CARRIER => {
                let n = r.u64()?;
                let count = usize::from(r.u16()?);
                if count > MAX_CARRIER_UPDATES {
                    return Err(MsgError::TooMany(count));
                }
                // At most MAX_CARRIER_UPDATES, whatever the bytes say.
                let mut updates = Vec::with_capacity(count);
                for _ in 0..count {
                    let e: UpdateEnvelope = r.record()?;
                    updates.push(e.update);
                }
                NodeMsg::Carrier { n, updates }
            }
            tag::IKE_OUT => NodeMsg::Ike {
                datagram: r.record()?,
            },
            tag::WELCOME => NodeMsg::Welcome {
                incarnation: r.u64()?,
            },
            tag::USERS => {
                let count = usize::from(r.u16()?);
                if count > MAX_CARRIER_UPDATES {
                    return Err(MsgError::TooMany(count));
                }
                let mut users = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = proto::SaId(r.u32()?);
                    let n = usize::from(r.u16()?);
                    if n > MAX_IDENTITY {
                        return Err(MsgError::TooLong("identity"));
                    }
                    let who = std::str::from_utf8(r.take(n)?)
                        .map_err(|_| MsgError::Record("an identity that is not UTF-8".into()))?;
                    users.push((id, who.to_string()));
                }
                NodeMsg::Users { users }
            }
            t => return Err(MsgError::Tag(t)),
        };
        r.end()?;
        Ok(m)
    }
}

/// The initiator's IKE SPI of an IKE message (the first 8 bytes of its header), which names
/// its IKE SA in both directions; None for what is too short to be IKE.
pub fn ike_spi_i(payload: &[u8]) -> Option<u64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Direction, SaId, Spi};

    fn dgram() -> Datagram {
        Datagram {
            src: "198.51.100.7".parse().unwrap(),
            dst: "192.0.2.1".parse().unwrap(),
            src_port: 4500,
            dst_port: 4500,
            payload: vec![1, 2, 3, 4, 5, 6, 7, 8, 9],
        }
    }

    fn samples() -> (Vec<EdgeMsg>, Vec<NodeMsg>) {
        let params = crate::ha::testing::child_params(SaId(7), 0xc000_0001);
        let edge = vec![
            EdgeMsg::Hello {
                edge: 3,
                incarnation: 0xdead_beef,
                applied: 12,
            },
            EdgeMsg::Ike {
                edge: 1,
                datagram: dgram(),
            },
            EdgeMsg::Report {
                edge: 2,
                event: Event::SeqCheckpoint {
                    worker: 0,
                    id: SaId(7),
                    spi: Spi(9),
                    seq: 1000,
                    seq_reserved: Some(5000),
                },
            },
            EdgeMsg::Applied {
                edge: 2,
                carrier: 44,
            },
            EdgeMsg::DataplaneFresh { edge: 9 },
        ];
        let node = vec![
            NodeMsg::Carrier {
                n: 5,
                updates: vec![
                    Update::AddSa {
                        dir: Direction::Inbound,
                        params,
                    },
                    Update::DeleteOutbound { id: SaId(3) },
                ],
            },
            NodeMsg::Ike { datagram: dgram() },
            NodeMsg::Welcome {
                incarnation: 0x0123_4567_89ab_cdef,
            },
            NodeMsg::Users {
                users: vec![
                    (SaId(1 << 20), "alice@example.org".into()),
                    (SaId(7), "CN=bob, O=Example, C=CH".into()),
                ],
            },
        ];
        (edge, node)
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        let (edge, node) = samples();
        for m in edge {
            let b = m.encode().unwrap();
            assert_eq!(EdgeMsg::decode(&b).unwrap(), m);
        }
        for m in node {
            let b = m.encode().unwrap();
            let back = NodeMsg::decode(&b).unwrap();
            // SaKeys compare by bytes through the proto codec: encode again.
            assert_eq!(back.encode().unwrap(), b);
        }
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_message_never_a_panic() {
        let (edge, node) = samples();
        let mut all: Vec<Vec<u8>> = edge.iter().map(|m| m.encode().unwrap().to_vec()).collect();
        all.extend(node.iter().map(|m| m.encode().unwrap().to_vec()));
        for b in &all {
            for n in 0..b.len() {
                assert!(EdgeMsg::decode(&b[..n]).is_err() && NodeMsg::decode(&b[..n]).is_err());
            }
            for i in 0..b.len() {
                for x in [0x01u8, 0x80, 0xff] {
                    let mut c = b.clone();
                    c[i] ^= x;
                    let _ = EdgeMsg::decode(&c);
                    let _ = NodeMsg::decode(&c);
                }
            }
            let mut long = b.clone();
            long.push(0);
            let e = EdgeMsg::decode(&long).err();
            let n = NodeMsg::decode(&long).err();
            assert!(
                e == Some(MsgError::Trailing(1)) || n == Some(MsgError::Trailing(1)),
                "{e:?} {n:?}"
            );
        }
        assert_eq!(EdgeMsg::decode(&[1, 1]), Err(MsgError::Version(1)));
        assert_eq!(
            EdgeMsg::decode(&[MSG_VERSION, 0x77]),
            Err(MsgError::Tag(0x77))
        );
        // An identity longer than it may be, or not UTF-8, is refused.
        let mut b = vec![MSG_VERSION, tag::USERS, 1, 0, 7, 0, 0, 0];
        b.extend_from_slice(&(MAX_IDENTITY as u16 + 1).to_le_bytes());
        b.extend(std::iter::repeat_n(b'a', MAX_IDENTITY + 1));
        assert_eq!(
            NodeMsg::decode(&b).err(),
            Some(MsgError::TooLong("identity"))
        );
        let b = [MSG_VERSION, tag::USERS, 1, 0, 7, 0, 0, 0, 2, 0, 0xff, 0xfe];
        assert!(matches!(NodeMsg::decode(&b), Err(MsgError::Record(_))));
        // A carrier that claims 65535 updates in a few bytes is refused before allocating.
        let mut b = vec![MSG_VERSION, tag::CARRIER];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(NodeMsg::decode(&b).err(), Some(MsgError::TooMany(65535)));
    }

    #[test]
    fn the_initiator_spi_is_read_from_the_header_and_short_payloads_have_none() {
        assert_eq!(ike_spi_i(&[0, 0, 0, 0, 0, 0, 1, 2, 9]), Some(0x0102));
        assert_eq!(ike_spi_i(&[1, 2, 3]), None);
    }
}
