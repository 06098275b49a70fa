//! The in-process command set of a worker, and the plain records it is prepared from.
//!
//! Two layers:
//! - The records (`proto`'s [`Update`], [`Ack`], [`Event`], [`Datagram`], re-exported here)
//!   are plain data: what crosses the shared-memory rings between the control process and
//!   the data plane, and what the control plane hands the data plane in-process too.
//! - [`Command`] is what a worker applies between bursts: the dataplane's agent thread turns
//!   an `Update` into a `Command` by building the runtime records (key schedules expanded,
//!   replay windows allocated, an SPD compiled), so a worker never does more than swap
//!   pointers.
//!
//! Every command carries a generation; a worker acknowledges the highest one it applied and
//! hands replaced or removed records back in [`Reply::Released`], so keys are zeroized only
//! after the worker let go of them (the QSBR pattern of DPDK's `lib/rcu`).

use core::net::IpAddr;

use crate::esp::group::{GroupPeers, GroupSa};
use crate::esp::sa::{InboundSa, OutboundSa, UdpEncap};
use crate::ids::{SaId, Spi};
use crate::masq::MasqUsersTable;
use crate::nat::Masquerade;
use crate::spd::{Prefix, Spd};
use proto::masq::{FlowKey as MasqFlow, Masq, MasqPlane, Route};
use proto::sa::SaRef;

pub use proto::{
    Ack, Datagram, Direction, Event, LifetimeKind, LifetimeLimit, Update, UpdateEnvelope,
};

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
    /// A host binding on probation: the gateway path and a copy on `sa` (`worker::dual`).
    BindHostDual {
        dst: IpAddr,
        src: Prefix,
        sa: SaId,
    },
    UnbindHost(IpAddr),
    SetWanAddresses(Vec<IpAddr>),
    /// Raise an outbound SA's reservation (never lowers it).
    ReserveSeq {
        id: SaId,
        up_to: u64,
    },
    /// Lower the reservation to `ahead` past the last number used; report the state.
    CapSeq {
        id: SaId,
        ahead: u64,
    },
    /// Report one SA's runtime state (an `Event::SaState` with this command's generation).
    ExportSa(SaRef),
    /// Gratuitous ARP / unsolicited neighbour advertisements for our addresses on one side.
    Announce {
        wan: bool,
        addrs: Vec<IpAddr>,
    },
    /// Install a generation of a group SA (`Update::AddGroupSa`; see `proto::group`): it
    /// receives at once; `send` makes it its group's sending generation. Refused if the SPI
    /// is installed already (an IV counter never restarts under one key).
    AddGroupSa {
        sa: Box<GroupSa>,
        send: bool,
    },
    /// Remove a generation (`Update::DeleteGroupSa`).
    DeleteGroupSa(Spi),
    /// Group `id` sends on generation `spi` from now on (`Update::SendOnGroupSa`).
    SendOnGroupSa {
        id: SaId,
        spi: Spi,
    },
    /// The group's tunnel endpoints (`Update::SetGroupPeers`), replacing earlier ones.
    SetGroupPeers(Box<GroupPeers>),
    /// The per-connection masquerade (`Update::SetMasqPlane`, ...; `worker::masq`).
    SetMasqPlane(Option<Box<MasqPlane>>),
    MasqFam {
        install: bool,
        flow: MasqFlow,
        masq: Masq,
    },
    MasqRoute {
        masq: Masq,
        route: Option<Route>,
    },
    MasqLink {
        node: u16,
        out_sa: Option<SaId>,
    },
    MasqLinkIn {
        spi: Spi,
        install: bool,
    },
    /// The per-user table, compiled by the agent (`Update::MasqUsers`).
    MasqUsers(Box<MasqUsersTable>),
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
    Group(Box<GroupSa>),
    MasqUsers(Box<MasqUsersTable>),
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
