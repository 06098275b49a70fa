//! The connectivity manager's messages (M11) and their encoding: the data of one private-use
//! notify payload (RFC 7296 3.10.1: status types 40960-65535 are private use) that travels
//! inside a client's existing IKE SA, in an INFORMATIONAL exchange. The format is documented
//! in `docs/vcm.md`.
//!
//! Decoding is strict (version, kind, lengths, prefixes) and never panics; key bytes live in
//! zeroizing buffers and never appear in `Debug`.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zeroize::Zeroizing;

/// The private-use notify type that carries every message of the manager.
pub const NOTIFY_DIRECT_PATH: u16 = 48_200;

/// The version of the encoding below.
pub const VERSION: u8 = 1;

/// SPIs of direct SAs come from the upper half of the reserved range
/// (`ike::services::spi::DIRECT_SPI_PREFIX`, 0xff80_0000..): the gateway hands them
/// out, unique among its pairs; a client never allocates a unicast SPI there, and group SAs
/// take the lower half (0xff00_0000..0xff7f_ffff), so a member of a group can take part too.
pub const DIRECT_SPI_BASE: u32 = ike::services::spi::DIRECT_SPI_PREFIX;

/// AES-128-GCM key (16) and salt (4), RFC 4106.
pub const KEYMAT_LEN: usize = 20;

/// One direction of a direct SA.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectSa {
    pub spi: u32,
    pub keymat: Zeroizing<[u8; KEYMAT_LEN]>,
}

impl fmt::Debug for DirectSa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DirectSa {{ spi: {:#010x}, keymat: <hidden> }}",
            self.spi
        )
    }
}

/// What a client is offered: its side of the pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub inbound: DirectSa,
    pub outbound: DirectSa,
    /// The other client's address and port as the gateway sees them (after any NAT).
    pub peer: SocketAddr,
    /// This client's virtual IP and the peer's (the direct SAs' selectors: host to host).
    pub local_ts: IpAddr,
    pub remote_ts: IpAddr,
    pub lifetime_secs: u32,
}

/// One message, either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Gateway -> client: install the inbound SA, then acknowledge ([`Msg::Installed`]).
    Offer { pair: u64, offer: Offer },
    /// Client -> gateway: the inbound SA of `pair` is installed.
    Installed { pair: u64 },
    /// Gateway -> client: the peer's inbound SA is installed; you may send on the direct SA.
    PeerReady { pair: u64 },
    /// Client -> gateway: acknowledges [`Msg::PeerReady`].
    Switching { pair: u64 },
    /// Client -> gateway: the direct path failed (no authenticated packet in time); back on the
    /// gateway path.
    Failed { pair: u64 },
    /// Client -> gateway: the direct path worked and went quiet (nothing authenticated on it
    /// for a while): back on the gateway path. Unlike [`Msg::Failed`], the pair may be offered
    /// again at once.
    Idle { pair: u64 },
    /// Gateway -> client: back to the gateway path and delete the pair's SAs.
    Return { pair: u64 },
    /// Client -> gateway: acknowledges [`Msg::Return`].
    Returned { pair: u64 },
    /// Client -> gateway, once per IKE SA: this client takes direct paths (a client that never
    /// says so is never made an offer). Encoded with pair 0.
    Hello,
    /// Gateway -> client: the rekey of live pair `replaces`: an offer of the fresh pair `pair`
    /// (new keys, new SPIs) that takes its place, in the same ack order ([`Msg::Installed`],
    /// [`Msg::PeerReady`], [`Msg::Switching`] of `pair`); the old pair is then ended with
    /// [`Msg::Return`] (only its SAs go: the traffic stays on the direct path).
    Rekey {
        pair: u64,
        replaces: u64,
        offer: Offer,
    },
    /// Gateway -> client: the peer's IKE SA moved (MOBIKE, a NAT mapping change): send the
    /// pair's direct traffic to `peer` from now on (same keys, same SPIs, no rekey). `seq`
    /// increases with every move the manager relays: a late older move is not taken.
    PeerMoved {
        pair: u64,
        seq: u32,
        peer: SocketAddr,
    },
    /// Client -> gateway: acknowledges [`Msg::PeerMoved`] `seq` (an older move's
    /// acknowledgement does not acknowledge a newer one).
    Moved { pair: u64, seq: u32 },
    /// Client -> gateway: the pair's outbound direct SA is close to its last sequence number
    /// (`Event::SeqNearWrap`: 2^24 packets before 2^32 - 1, direct SAs have no ESN): rekey
    /// the pair now, before its soft lifetime, or its sender stops sealing.
    RekeyNeeded { pair: u64 },
}

impl Msg {
    pub fn pair(&self) -> u64 {
        match self {
            Msg::Offer { pair, .. }
            | Msg::Installed { pair }
            | Msg::PeerReady { pair }
            | Msg::Switching { pair }
            | Msg::Failed { pair }
            | Msg::Idle { pair }
            | Msg::Return { pair }
            | Msg::Returned { pair }
            | Msg::Rekey { pair, .. }
            | Msg::PeerMoved { pair, .. }
            | Msg::Moved { pair, .. }
            | Msg::RekeyNeeded { pair } => *pair,
            Msg::Hello => 0,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Msg::Offer { .. } => 1,
            Msg::Installed { .. } => 2,
            Msg::PeerReady { .. } => 3,
            Msg::Switching { .. } => 4,
            Msg::Failed { .. } => 5,
            Msg::Return { .. } => 6,
            Msg::Returned { .. } => 7,
            Msg::Hello => 8,
            Msg::Idle { .. } => 9,
            Msg::Rekey { .. } => 10,
            Msg::RekeyNeeded { .. } => 11,
            Msg::PeerMoved { .. } => 20,
            Msg::Moved { .. } => 21,
        }
    }

    /// The notify data (zeroizing: an offer holds keys).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(128));
        v.push(VERSION);
        v.push(self.kind());
        v.extend_from_slice(&self.pair().to_be_bytes());
        let offer = match self {
            Msg::Offer { offer, .. } => Some(offer),
            Msg::Rekey {
                replaces, offer, ..
            } => {
                v.extend_from_slice(&replaces.to_be_bytes());
                Some(offer)
            }
            _ => None,
        };
        if let Some(offer) = offer {
            for sa in [&offer.inbound, &offer.outbound] {
                v.extend_from_slice(&sa.spi.to_be_bytes());
                v.extend_from_slice(&sa.keymat[..]);
            }
            put_ip(&mut v, offer.peer.ip());
            v.extend_from_slice(&offer.peer.port().to_be_bytes());
            put_ip(&mut v, offer.local_ts);
            put_ip(&mut v, offer.remote_ts);
            v.extend_from_slice(&offer.lifetime_secs.to_be_bytes());
        }
        if let Msg::PeerMoved { seq, peer, .. } = self {
            v.extend_from_slice(&seq.to_be_bytes());
            put_ip(&mut v, peer.ip());
            v.extend_from_slice(&peer.port().to_be_bytes());
        }
        if let Msg::Moved { seq, .. } = self {
            v.extend_from_slice(&seq.to_be_bytes());
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader(b);
        if r.u8()? != VERSION {
            return Err(DecodeError::Version);
        }
        let kind = r.u8()?;
        let pair = u64::from_be_bytes(r.array()?);
        let replaces = match kind {
            10 => Some(u64::from_be_bytes(r.array()?)),
            _ => None,
        };
        let m = match kind {
            1 | 10 => {
                let mut sa = || -> Result<DirectSa, DecodeError> {
                    let spi = u32::from_be_bytes(r.array()?);
                    let keymat = Zeroizing::new(r.array::<KEYMAT_LEN>()?);
                    Ok(DirectSa { spi, keymat })
                };
                let inbound = sa()?;
                let outbound = sa()?;
                let ip = r.ip()?;
                let port = u16::from_be_bytes(r.array()?);
                let local_ts = r.ip()?;
                let remote_ts = r.ip()?;
                let lifetime_secs = u32::from_be_bytes(r.array()?);
                let offer = Offer {
                    inbound,
                    outbound,
                    peer: SocketAddr::new(ip, port),
                    local_ts,
                    remote_ts,
                    lifetime_secs,
                };
                match replaces {
                    Some(replaces) => Msg::Rekey {
                        pair,
                        replaces,
                        offer,
                    },
                    None => Msg::Offer { pair, offer },
                }
            }
            2 => Msg::Installed { pair },
            3 => Msg::PeerReady { pair },
            4 => Msg::Switching { pair },
            5 => Msg::Failed { pair },
            6 => Msg::Return { pair },
            7 => Msg::Returned { pair },
            8 if pair == 0 => Msg::Hello,
            9 => Msg::Idle { pair },
            11 => Msg::RekeyNeeded { pair },
            20 => {
                let seq = u32::from_be_bytes(r.array()?);
                let ip = r.ip()?;
                let peer = SocketAddr::new(ip, u16::from_be_bytes(r.array()?));
                Msg::PeerMoved { pair, seq, peer }
            }
            21 => Msg::Moved {
                pair,
                seq: u32::from_be_bytes(r.array()?),
            },
            _ => return Err(DecodeError::Kind),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(m)
    }
}

fn put_ip(v: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(x) => {
            v.push(4);
            v.extend_from_slice(&x.octets());
        }
        IpAddr::V6(x) => {
            v.push(6);
            v.extend_from_slice(&x.octets());
        }
    }
}

/// Why notify data is not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown version")]
    Version,
    #[error("unknown kind")]
    Kind,
    #[error("truncated")]
    Short,
    #[error("bad address family")]
    Family,
    #[error("trailing bytes")]
    Trailing,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Short)?;
        self.0 = rest;
        Ok(*head)
    }

    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            _ => Err(DecodeError::Family),
        }
    }
}
