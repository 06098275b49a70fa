//! What the endpoint reports: [`Event`]s for the SA repository (SAs up, moved, rekeyed, down),
//! [`Transmit`]s, the datagrams it wants sent, and [`IkeSaView`]s, its IKE SAs for the views.
//!
//! Owns: the output types of the control-plane API.
//! Must never: show key material in `Debug` (CHILD_SA keys print as `<secret>`).

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use crate::crypto::Secret;
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::proposal::{EspInteg, EspProposal, IkeProposal};
use crate::wire::TrafficSelector;

/// One direction's keys and parameters of a CHILD_SA as the data plane needs them.
#[derive(Clone)]
pub struct ChildSaKeys {
    pub spi: ChildSpi,
    pub encr_bits: u16,
    /// AES-CBC's HMAC; none for AES-GCM-16.
    pub integ: Option<EspInteg>,
    /// AES-GCM: the AES key followed by the 4-byte salt (RFC 4106); AES-CBC: the AES key
    /// followed by the HMAC key (RFC 7296 2.17).
    pub keymat: Secret,
}

impl core::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.integ {
            None => write!(
                f,
                "ChildSaKeys(spi {}, aes-gcm-{}, <secret>)",
                self.spi, self.encr_bits
            ),
            Some(i) => write!(
                f,
                "ChildSaKeys(spi {}, aes-cbc-{}/{}, <secret>)",
                self.spi,
                self.encr_bits,
                i.name()
            ),
        }
    }
}

/// A CHILD_SA that came up.
#[derive(Clone, Debug)]
pub struct ChildSaInfo {
    pub ike: IkeSaId,
    pub name: String,
    pub inbound: ChildSaKeys,
    pub outbound: ChildSaKeys,
    pub esn: bool,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Tunnel endpoints (the IKE SA's addresses) and whether ESP goes in UDP 4500.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub udp_encap: bool,
    /// The inbound SPI of the CHILD_SA this one replaces (a rekey).
    pub rekey_of: Option<ChildSpi>,
    /// True when this end started the exchange that made it.
    pub initiated_here: bool,
    /// Made by our rekey but redundant: the peer rekeyed the same CHILD_SA at the same time
    /// and its exchange won (RFC 7296 2.8.1). We delete it at once and never send on it.
    pub redundant: bool,
}

/// What happened, for the SA repository.
#[derive(Clone, Debug)]
pub enum Event {
    IkeUp {
        ike: IkeSaId,
        peer: String,
        remote_id: String,
        local: SocketAddr,
        remote: SocketAddr,
        /// The virtual IP of this IKE SA: ours (a client the peer assigned one to) when
        /// `virtual_ip_is_ours`, else the one we leased to the peer from a pool.
        virtual_ip: Option<IpAddr>,
        virtual_ip_is_ours: bool,
    },
    ChildUp(ChildSaInfo),
    /// MOBIKE moved the IKE SA and its CHILD_SAs (by inbound SPI) to new addresses: same
    /// keys, same SPIs, no rekey. The data plane rebinds their outbound SAs.
    IkeMoved {
        ike: IkeSaId,
        local: SocketAddr,
        remote: SocketAddr,
        udp_encap: bool,
        children: Vec<ChildSpi>,
    },
    /// A CHILD_SA is gone (deleted by either side, or with its IKE SA).
    ChildDown {
        ike: IkeSaId,
        spi_in: ChildSpi,
        spi_out: ChildSpi,
    },
    /// The IKE SA was rekeyed: `old` is replaced by `new`, children move along.
    IkeRekeyed {
        old: IkeSaId,
        new: IkeSaId,
        /// True when this end started the rekey.
        initiated_here: bool,
    },
    IkeDown {
        ike: IkeSaId,
        reason: DownReason,
    },
    /// The peer sent a private-use status notify (RFC 7296 3.10.1: 40960-65535) that no
    /// exchange of ours takes, in an INFORMATIONAL request of established IKE SA `ike` (which
    /// authenticated it); sent with `Endpoint::send_private`.
    PrivateNotify {
        ike: IkeSaId,
        kind: u16,
        data: PrivateData,
    },
    /// G-IKEv2 (RFC 9838): a member's group keys, a GCKS's registrations and removals.
    Group(crate::group::session::GroupEvent),
}

/// A private notify's data: it may carry keys (the connectivity manager's offers), so it is
/// zeroized on drop and `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateData(pub zeroize::Zeroizing<Vec<u8>>);

impl core::fmt::Debug for PrivateData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivateData({} bytes)", self.0.len())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownReason {
    Deleted,
    PeerDeleted,
    /// Retransmissions ran out (dead peer).
    Timeout,
    AuthFailed,
    NoProposal,
    Rekeyed,
    /// A MOBIKE update's answer did not echo our COOKIE2 (RFC 4555 3.6).
    ReturnRoutability,
    /// A badly formed authenticated message: we answered INVALID_SYNTAX, or the peer did
    /// (fatal to both ends, RFC 7296 2.21.3).
    InvalidSyntax,
    /// EAP refused the peer (RFC 7296 2.16): for this reason, the identity it gave (if it
    /// got that far).
    EapFailed {
        identity: Option<String>,
        why: crate::services::AuthError,
    },
    /// A hinted liveness check (`exchange::hint`) ran out without an authenticated answer
    /// and the peer answered it INVALID_IKE_SPI: it no longer has the IKE SA (it restarted).
    PeerLostState,
    /// A gateway's IKE SA that it redirected (RFC 5685) to its own address, replaced by the
    /// client's new one (`exchange::gw_move`): closed here, the client deletes its own copy.
    Replaced,
}

/// An IKE SA as the views show it: id, connection name, established, its CHILD_SAs as
/// (inbound SPI, outbound SPI).
pub type SaSummary = (IkeSaId, String, bool, Vec<(ChildSpi, ChildSpi)>);

/// Which ends NAT detection found behind a NAT (RFC 7296 2.23): `local` when the peer saw
/// another address of ours than we sent from, `remote` when the peer's address is not the one
/// it hashed. An adopted IKE SA knows only that a NAT is there ([`IkeSaView::nat`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSides {
    pub local: bool,
    pub remote: bool,
}

impl NatSides {
    pub fn any(self) -> bool {
        self.local || self.remote
    }
}

/// An IKE SA as the views show it, in the terms of `swanctl --list-sas` (never keys). Times
/// are durations from the `now` the view was made at.
#[derive(Clone, Debug)]
pub struct IkeSaView {
    pub id: IkeSaId,
    pub connection: String,
    /// CONNECTING (IKE_SA_INIT or IKE_AUTH under way), ESTABLISHED, DELETING.
    pub state: &'static str,
    /// We are the original initiator.
    pub initiator: bool,
    pub spi_i: IkeSpi,
    pub spi_r: IkeSpi,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// A NAT sits between the ends (ESP goes in UDP), and which ends it found behind one.
    pub nat: bool,
    pub nat_sides: NatSides,
    pub local_id: String,
    /// The peer's authenticated identity; before IKE_AUTH, the configured one (if any).
    pub remote_id: String,
    /// The identity the peer authenticated with by EAP (what per-user policy keys on).
    pub eap_identity: Option<String>,
    pub proposal: IkeProposal,
    pub virtual_ip: Option<IpAddr>,
    pub mobike: bool,
    /// Since the IKE SA was established (or adopted here); None while connecting.
    pub established_ago: Option<Duration>,
    pub rekey_in: Option<Duration>,
    pub children: Vec<ChildSaView>,
}

/// A CHILD_SA as the views show it (never keys).
#[derive(Clone, Debug)]
pub struct ChildSaView {
    pub name: String,
    pub spi_in: ChildSpi,
    pub spi_out: ChildSpi,
    /// INSTALLED, REKEYING (our rekey is under way), REKEYED (replaced, its delete pending).
    pub state: &'static str,
    /// ESP in UDP (RFC 3948); the mode is always tunnel.
    pub udp_encap: bool,
    pub proposal: EspProposal,
    /// Since it was installed (or adopted here).
    pub installed_ago: Duration,
    pub rekey_in: Option<Duration>,
    pub expire_in: Option<Duration>,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
}

/// A datagram to send.
#[derive(Clone, Debug)]
pub struct Transmit {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
}
