//! Messages from the control plane to the workers, and what workers send back.
//!
//! Two layers:
//! - [`Update`] is plain, fixed-size data: what crosses the shared-memory rings between the
//!   control process and the data plane (the ring transport lands with the control plane).
//! - [`Command`] is what a worker applies between bursts: the dataplane's agent thread turns an
//!   `Update` into a `Command` by building the runtime records (key schedules expanded, replay
//!   windows allocated, an SPD compiled), so a worker never does more than swap pointers.
//!
//! Every command carries a generation; a worker acknowledges the highest one it applied and
//! hands replaced or removed records back in [`Reply::Released`], so keys are zeroized only
//! after the worker let go of them (the QSBR pattern of DPDK's `lib/rcu`).
//!
//! What crosses the process boundary, in plain data: [`UpdateEnvelope`] (control to data),
//! [`Ack`], [`Event`] and punted IKE datagrams ([`crate::worker::Punted`]) back, and
//! [`Transmit`] (IKE datagrams the control plane wants sent). [`codec`] is their binary
//! encoding; `crate::shm` carries them.

use core::net::IpAddr;

use crate::esp::sa::{InboundSa, OutboundSa, SaParams, UdpEncap};
use crate::ids::{SaId, Spi};
use crate::nat::{Masquerade, MasqueradeConfig};
use crate::spd::{Prefix, Rule, Spd};

pub mod codec;

/// A direction of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// A control-plane request in plain data (no pointers): the unit the shared-memory update
/// rings will carry.
#[derive(Clone, Debug)]
pub enum Update {
    /// Install (or replace, same SPI / same id) one direction of an SA.
    AddSa { dir: Direction, params: SaParams },
    /// Remove an inbound SA by SPI.
    DeleteInbound { spi: Spi },
    /// Remove an outbound SA by id.
    DeleteOutbound { id: SaId },
    /// Move outbound SAs' tunnel endpoints (MOBIKE, NAT mapping change), all at once (every
    /// CHILD_SA of one IKE SA): keys and sequence numbers are kept.
    RebindOutbound {
        ids: Vec<SaId>,
        local: IpAddr,
        remote: IpAddr,
        encap: Option<UdpEncap>,
    },
    /// Replace the whole SPD (compiled off the fast path).
    ReplaceSpd { rules: Vec<Rule> },
    /// Turn masquerading of bypassed IPv4 traffic on (with a fresh session table) or off.
    SetMasquerade { config: Option<MasqueradeConfig> },
    /// A road-warrior client's virtual IP (`config.external_addr`, assigned by the gateway):
    /// LAN traffic that a protect rule for the virtual IP covers is rewritten to it before
    /// sealing, and the answers back after opening (a masquerade inside the tunnel); `None`
    /// turns it off.
    SetVirtualIp { config: Option<MasqueradeConfig> },
    /// Protect traffic to one host address (a road warrior's virtual IP) from `src` with
    /// outbound SA `sa`: an exact-match table consulted before the SPD, so a gateway with
    /// many clients changes one entry per client instead of recompiling its policy.
    BindHost { dst: IpAddr, src: Prefix, sa: SaId },
    /// Remove a host binding.
    UnbindHost { dst: IpAddr },
    /// The WAN port's own addresses (the first of each family is the primary): the worker
    /// answers ARP / neighbour solicitations for all of them. A client that roams holds the
    /// old and the new address for a moment (make-before-break), then only the new one.
    SetWanAddresses { addrs: Vec<IpAddr> },
}

/// An [`Update`] with the generation it is applied under: one record on a worker's update ring.
#[derive(Clone, Debug)]
pub struct UpdateEnvelope {
    pub generation: u64,
    pub update: Update,
}

/// A worker's answer to the update ring, in plain data (the ack ring's record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Every update up to and including `generation` has been applied.
    Applied { worker: u16, generation: u64 },
    /// The update of `generation` referred to something this worker does not have; the
    /// worker went on with the next one.
    Rejected {
        worker: u16,
        generation: u64,
        why: String,
    },
}

/// Which lifetime limit of an SA was reached (RFC 4301 4.4.2.1: soft and hard, by time, bytes
/// or packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeKind {
    /// Rekey now; the SA still works.
    Soft,
    /// The SA is no longer used.
    Hard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeLimit {
    Time,
    Bytes,
    Packets,
}

/// Something the data plane reports to the control plane (the event ring's record). Counts
/// are the worker's running totals, so a lost or coalesced report loses nothing: the control
/// plane keeps the last value it saw per (worker, SA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// ESP arrived for an SPI this worker has no SA for (RFC 4303 3.4.2: auditable; IKEv2 may
    /// answer with INVALID_SPI, RFC 7296 3.10.1). `packets` is the total of such packets.
    UnknownSpi {
        worker: u16,
        spi: Spi,
        src: IpAddr,
        dst: IpAddr,
        packets: u64,
    },
    /// A soft or hard lifetime of one SA direction was reached; usage at that moment.
    Lifetime {
        worker: u16,
        id: SaId,
        spi: Spi,
        dir: Direction,
        kind: LifetimeKind,
        limit: LifetimeLimit,
        bytes: u64,
        packets: u64,
        age_secs: u64,
    },
    /// An outbound SA's sequence number is close to the last one it may send (2^32-1 without
    /// ESN, RFC 4303 3.3.3): rekey before it stops.
    SeqNearWrap {
        worker: u16,
        id: SaId,
        spi: Spi,
        seq: u64,
        limit: u64,
    },
    /// Packets on an inbound SA whose ICV did not verify (total on this worker).
    AuthFailures {
        worker: u16,
        id: SaId,
        spi: Spi,
        count: u64,
    },
    /// Packets on an inbound SA refused by the anti-replay window (total on this worker).
    ReplayFailures {
        worker: u16,
        id: SaId,
        spi: Spi,
        count: u64,
    },
}

/// An IKE datagram the control plane wants the data plane to send (the transmit ring's
/// record): the UDP payload (without the non-ESP marker, which the sender adds on port 4500)
/// with its addresses and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

/// A prepared command for one worker.
pub enum Command {
    AddInbound(Box<InboundSa>),
    AddOutbound(Box<OutboundSa>),
    DeleteInbound(Spi),
    DeleteOutbound(SaId),
    RebindOutbound {
        ids: Vec<SaId>,
        local: IpAddr,
        remote: IpAddr,
        encap: Option<UdpEncap>,
    },
    ReplaceSpd(Box<Spd>),
    ReplaceMasquerade(Option<Box<Masquerade>>),
    ReplaceVirtualIp(Option<Box<Masquerade>>),
    BindHost {
        dst: IpAddr,
        src: Prefix,
        sa: SaId,
    },
    UnbindHost(IpAddr),
    SetWanAddresses(Vec<IpAddr>),
}

/// A command and its generation.
pub struct Envelope {
    pub generation: u64,
    pub command: Command,
}

/// Something a worker let go of; dropped (and zeroized) by the receiver.
pub enum Released {
    Inbound(Box<InboundSa>),
    Outbound(Box<OutboundSa>),
    Spd(Box<Spd>),
    Masquerade(Box<Masquerade>),
}

/// What a worker sends back.
pub enum Reply {
    /// Every command up to and including this generation has been applied.
    Applied {
        worker: u16,
        generation: u64,
    },
    /// A command referred to something this worker does not have (e.g. deleting an SA that
    /// was never installed). Reported, not fatal.
    Rejected {
        worker: u16,
        generation: u64,
        why: &'static str,
    },
    Released(Released),
    /// Something for the control plane (lifetimes, unknown SPIs, failures).
    Event(Event),
}
