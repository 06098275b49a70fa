//! The records: what the control plane asks of the data plane ([`Update`], in an
//! [`UpdateEnvelope`] with its generation), what the data plane answers ([`Ack`]) and reports
//! ([`Event`]), and the IKE datagrams both hand each other ([`Datagram`]).
//!
//! Plain data, no pointers: each is one record on a shared-memory ring ([`crate::codec`]).

use core::net::IpAddr;

use crate::group::{GroupPeer, GroupSaParams};
use crate::ids::{SaId, Spi};
use crate::masq::{FlowKey, Masq, MasqMissKey, MasqPlane, MasqUsers, Route};
use crate::nat::MasqueradeConfig;
use crate::policy::{Prefix, Rule};
use crate::sa::{Direction, SaParams, SaRef, SaState, UdpEncap};

/// A control-plane request in plain data (no pointers): the unit the shared-memory update
/// rings carry.
#[derive(Clone, Debug)]
pub enum Update {
    /// Install (or replace, same SPI / same id) one direction of an SA.
    AddSa { dir: Direction, params: SaParams },
    /// Remove an inbound SA by SPI.
    DeleteInbound { spi: Spi },
    /// Remove an outbound SA by id. One with checkpoints answers with its final
    /// `Event::SaState` (the last sequence number it used) under this generation.
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
    /// A host binding on probation (a client's direct SA to another client, connectivity
    /// manager): traffic to `dst` from `src` still takes its way without the binding (the
    /// SPD: the gateway path), and a copy of each packet is sealed onto outbound SA `sa` too,
    /// until a `BindHost` (the direct path is proven: direct only) or an `UnbindHost`
    /// (gateway path only) replaces it. A copy the WAN queue has no room for is dropped
    /// (`dual_path_queue_full`), never the original.
    BindHostDual { dst: IpAddr, src: Prefix, sa: SaId },
    /// Remove a host binding (or one on probation).
    UnbindHost { dst: IpAddr },
    /// The WAN port's own addresses (the first of each family is the primary): the worker
    /// answers ARP / neighbour solicitations for all of them. A client that roams holds the
    /// old and the new address for a moment (make-before-break), then only the new one.
    SetWanAddresses { addrs: Vec<IpAddr> },
    /// Raise an outbound SA's reservation: the highest sequence number it may send. Never
    /// lowers it, so a late or repeated record changes nothing.
    ReserveSeq { id: SaId, up_to: u64 },
    /// Lower an outbound SA's reservation to at most `ahead` numbers past the last one it
    /// used, atomically with that number: answered by `Event::SaState` with this generation,
    /// whose `seq_reserved` is the SA's new ceiling (an HA pair's planned switchover: the next
    /// active starts above it while this SA drains below it).
    CapSeq { id: SaId, ahead: u64 },
    /// Report one SA's runtime state: answered by `Event::SaState` with this generation.
    ExportSa { sa: SaRef },
    /// Tell the link that these addresses of ours are here now (gratuitous ARP, RFC 5227's
    /// announcement; unsolicited neighbour advertisement, RFC 4861 7.2.6): after an address
    /// was taken over, hosts that cached another MAC for it learn ours. `wan` picks the side;
    /// an address that is not ours there is refused.
    Announce { wan: bool, addrs: Vec<IpAddr> },
    /// Install one generation of a group SA (see [`crate::group`] for the whole model):
    /// received on at once, sent on when `params.send`. Refused for an SPI already installed
    /// (a sender's IV counter never restarts under one key) or outside the group range.
    AddGroupSa { params: GroupSaParams },
    /// Remove one generation of a group SA (after the DTD). If it was the sending one, the
    /// group sends nothing until another generation is named (`group_not_sending`).
    DeleteGroupSa { spi: Spi },
    /// Group `id` sends on the installed generation `spi` from now on (after the ATD); the
    /// previous sending generation keeps receiving until deleted.
    SendOnGroupSa { id: SaId, spi: Spi },
    /// The tunnel endpoints of group `id`: our outer address, the outer TTL, and the other
    /// members (LAN prefix -> outer address). Replaces what was set before; sent to every
    /// worker (only the one holding the group's SAs reads it). Independent of generations:
    /// set once, changed when members come or go. `rekey_multicast`: the group's multicast
    /// address for GSA_REKEY; every worker takes IKE datagrams to it as its own (punted).
    SetGroupPeers {
        id: SaId,
        local: IpAddr,
        outer_ttl: u8,
        peers: Vec<GroupPeer>,
        rekey_multicast: Option<IpAddr>,
    },
    /// The per-connection masquerade (`docs/masq.md`) on (what this node masquerades, which
    /// addresses it serves) or off (`None`: every table below is emptied, held packets are
    /// dropped). Replacing it keeps the tables.
    SetMasqPlane { plane: Option<MasqPlane> },
    /// The FAM's table: install (or replace) a flow's masquerading address and port
    /// (`install`), or remove the flow (`!install`, `masq` ignored). Packets held for this
    /// flow (outbound) or this masquerading address (inbound) are run again.
    MasqFam {
        install: bool,
        flow: FlowKey,
        masq: Masq,
    },
    /// The HAM's route for a masquerading address and port (`None` removes it). Held
    /// inbound packets for it are run again.
    MasqRoute { masq: Masq, route: Option<Route> },
    /// HAM -> FAM forwards to node `node` (`Route::Node(node)`) are sealed on outbound SA
    /// `out_sa` (an ordinary outbound SA added by `AddSa`, outer = the two link addresses,
    /// any-to-any selectors); `None` forgets the node.
    MasqLink { node: u16, out_sa: Option<SaId> },
    /// ESP on inbound SA `spi` (an ordinary inbound SA added by `AddSa`) comes from a HAM:
    /// opened, its inner packet goes to the FAM table, not to the LAN (`install`), or no
    /// longer (`!install`).
    MasqLinkIn { spi: Spi, install: bool },
    /// The per-user access table and the client -> user map (replaces the previous one).
    MasqUsers { table: MasqUsers },
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
    /// `src_port`: the UDP source port of ESP in UDP (RFC 3948), 0 for bare ESP (where an
    /// INVALID_SPI for a peer we have no IKE SA with goes, RFC 7296 1.5).
    UnknownSpi {
        worker: u16,
        spi: Spi,
        src: IpAddr,
        src_port: u16,
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
    /// Where an outbound SA's sequence numbers stand (a checkpoint, every so many packets or
    /// milliseconds): `seq` is the last one used, `seq_reserved` its reservation.
    SeqCheckpoint {
        worker: u16,
        id: SaId,
        spi: Spi,
        seq: u64,
        seq_reserved: Option<u64>,
    },
    /// One SA's runtime state, answering the `Update::ExportSa` of `generation` (or, outbound,
    /// its final state when the `Update::DeleteOutbound` of `generation` removed it).
    SaState {
        worker: u16,
        generation: u64,
        id: SaId,
        spi: Spi,
        state: SaState,
    },
    /// Packets one road warrior sent to another's virtual IP through this worker (opened from
    /// the sender's SA, sealed again onto the receiver's) over the last `millis`: at most one
    /// report per pair and second, for the pairs seen in that second (a bounded table).
    Hairpin {
        worker: u16,
        src: IpAddr,
        dst: IpAddr,
        packets: u64,
        bytes: u64,
        millis: u32,
    },
    /// A masquerade table miss (a packet is held in the worker until the answer comes, at most
    /// 1 s). At most one per key per 100 ms.
    MasqMiss { worker: u16, key: MasqMissKey },
}

/// An IKE datagram between the data plane and the control plane: the UDP payload (without
/// the non-ESP marker) with its addresses and ports. The data plane punts the ones that
/// arrive on UDP 500/4500 to the control plane; the control plane hands it the ones to send,
/// which a worker builds into frames (a payload sent from or to port 4500 gets the non-ESP
/// marker, RFC 3948).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}
