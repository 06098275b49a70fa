//! A group SA as data (G-IKEv2, RFC 9838): one generation of a group's Data-Security SA as the
//! control plane installs it in the data plane, and the group's members as tunnel endpoints.
//!
//! # The model the data plane implements
//!
//! - **One group, one id.** A group is named by one [`SaId`] (`id`), the same for every
//!   generation (every rekey's SA) of the group. The SPD protects the group's traffic with an
//!   ordinary `Action::Protect(id)` rule; the worker resolves `id` to the group's *sending*
//!   generation. The id comes from the control plane's id space and must not name a unicast
//!   outbound SA.
//! - **Generations by SPI.** Each generation is installed by `Update::AddGroupSa` under its
//!   group SPI (0xff00_0000..=0xff7f_ffff, `ike::services::spi::GROUP_SPI_PREFIX`: never a
//!   unicast SPI, so the lookup by SPI alone stays correct) and removed by
//!   `Update::DeleteGroupSa`. Every installed generation receives at once. At most one
//!   generation of a group sends: the one installed with `send: true` last, or the one named
//!   by `Update::SendOnGroupSa` last. The control plane runs the RFC's activation and
//!   deactivation delays by these updates: install the new SA (receive), name it the sender
//!   after the ATD, delete the old one after the DTD. The data plane has no clock for them.
//! - **IVs.** A sending generation seals with `IV = sender_id << (64 - sender_id_bits) |
//!   counter`, counter 1, 2, ... of its own, ESP sequence number = counter (RFC 6054, RFC
//!   9838 2.5); standard RFC 4106 ESP with an 8-byte explicit IV otherwise. A generation is
//!   never installed twice under one SPI (refused): a counter never restarts under a key. When
//!   the counter reaches 2^32 - 1 the generation stops sending (drop `seq_exhausted`); an
//!   `Event::SeqNearWrap` with the group's id and the generation's SPI goes out 2^24 packets
//!   before: the control plane asks the GCKS for a rekey or registers again.
//! - **Replay.** One window per Sender-ID per generation, moved only after the ICV verified.
//! - **Outer addresses.** Tunnel mode between members: the outer source is `local` of
//!   `Update::SetGroupPeers`, the outer destination the member whose `lan` prefix holds the
//!   packet's inner destination (longest prefix; none: drop `group_no_peer`). A packet is
//!   sealed once, to that one member; a peer entry with a wide prefix and a multicast address
//!   sends there instead. Bare ESP (IP protocol 50), no UDP encapsulation.
//! - **Workers.** A group's generations live on the worker the SPI's worker bits name (as any
//!   inbound SA); every group SPI starts with 0xff and its ninth bit is 0, so with up to 256
//!   workers all group SAs of a node sit on one worker, and the group's id is published as
//!   that worker's outbound SA: other workers hand the group's LAN frames to it. One counter
//!   per sending generation and one set of windows per generation, each in one place.
//!
//! Key material is in [`SaKeys`] (zeroized on drop, never in `Debug`).

use core::net::IpAddr;

use crate::ids::{SaId, Spi};
use crate::policy::Prefix;
use crate::sa::SaKeys;

/// The first octet of every group SPI (the group range is 0xff00_0000..=0xff7f_ffff).
pub const GROUP_SPI_TOP: u8 = 0xff;

/// Whether `spi` lies in the group range 0xff00_0000..=0xff7f_ffff.
pub fn is_group_spi(spi: Spi) -> bool {
    (0xff00_0000..=0xff7f_ffff).contains(&spi.0)
}

/// One generation of a group's Data-Security SA (`Update::AddGroupSa`).
#[derive(Clone, Debug)]
pub struct GroupSaParams {
    /// The group's id: what the SPD's `Protect` rules name; the same for every generation.
    pub id: SaId,
    /// The generation's SPI (group range).
    pub spi: Spi,
    /// AES-GCM key and 4-byte salt (RFC 4106); other transforms are refused.
    pub keys: SaKeys,
    /// This member's Sender-ID from the GCKS (GM_SENDER_ID). None: a receive-only member,
    /// which never sends on the generation.
    pub sender_id: Option<u32>,
    /// GWP_SENDER_ID_BITS: the top bits of the IV the Sender-ID takes (1..=16).
    pub sender_id_bits: u8,
    /// Anti-replay window per sender in packets (64..=4096, a power of two).
    pub replay_window: u32,
    /// The group's selectors (the GSA policy's source and destination TS): an inner packet's
    /// source must lie in `src_ts` and its destination in `dst_ts`, both when sealed and when
    /// opened (every member applies the same policy in both directions).
    pub src_ts: Prefix,
    pub dst_ts: Prefix,
    /// Make this generation the group's sending one now (the first registration; a rekey
    /// installs with `false` and names it by `Update::SendOnGroupSa` after the ATD). Ignored
    /// (false) when `sender_id` is None.
    pub send: bool,
}

/// One other member of a group as a tunnel endpoint: its LAN and its outer address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPeer {
    /// The member's protected network: inner destinations in it go to `outer`.
    pub lan: Prefix,
    /// Its outer (WAN) address, or a multicast address.
    pub outer: IpAddr,
}
