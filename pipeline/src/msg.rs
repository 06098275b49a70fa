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

use core::net::IpAddr;

use crate::esp::sa::{InboundSa, OutboundSa, SaParams, UdpEncap};
use crate::ids::{SaId, Spi};
use crate::nat::{Masquerade, MasqueradeConfig};
use crate::spd::{Rule, Spd};

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
    /// Move an outbound SA's tunnel endpoints (MOBIKE, NAT mapping change): keys and sequence
    /// numbers are kept.
    RebindOutbound {
        id: SaId,
        local: IpAddr,
        remote: IpAddr,
        encap: Option<UdpEncap>,
    },
    /// Replace the whole SPD (compiled off the fast path).
    ReplaceSpd { rules: Vec<Rule> },
    /// Turn masquerading of bypassed IPv4 traffic on (with a fresh session table) or off.
    SetMasquerade { config: Option<MasqueradeConfig> },
}

/// A prepared command for one worker.
pub enum Command {
    AddInbound(Box<InboundSa>),
    AddOutbound(Box<OutboundSa>),
    DeleteInbound(Spi),
    DeleteOutbound(SaId),
    RebindOutbound {
        id: SaId,
        local: IpAddr,
        remote: IpAddr,
        encap: Option<UdpEncap>,
    },
    ReplaceSpd(Box<Spd>),
    ReplaceMasquerade(Option<Box<Masquerade>>),
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
}
