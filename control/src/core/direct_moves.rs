//! The connectivity manager's moves and NAT keepalives in the control core (issue 20, items
//! 5 and 6):
//!
//! - Gateway: a capable client's IKE SA moved (`ike::Event::IkeMoved`: MOBIKE, or a NAT
//!   mapping change): to an address inside the protected network (`vcm.inside`) its pairs
//!   return (the other client goes back to the gateway path); elsewhere the other client of
//!   each pair is told the new address (`PeerMoved`, acknowledged by `Moved`).
//! - Client: `PeerMoved` rebinds the pair's outbound direct SA to the new address
//!   (`Update::RebindOutbound`: keys and sequence numbers kept, so no (SPI, sequence number)
//!   is sent twice); our own IKE SA moving rebinds every outbound direct SA to our new local
//!   address.
//! - NAT keepalives (RFC 3948 2.3, one 0xFF byte from port 4500) to the peer's address as the
//!   gateway saw it: when the inbound SA is installed, after a move, and every probe while the
//!   direct path has not proven itself. Both clients send them, so each NAT holds a mapping
//!   towards the other's public address before (or while) ESP arrives: a NAT that filters by
//!   endpoint lets the peer's packets in once we sent to the peer; a NAT whose mapping depends
//!   on the destination (symmetric) gives the peer a port the gateway never saw, the direct
//!   path never proves itself and the pair falls back to the gateway path (`Failed`, counted).
//!
//! Must never: install a direct outbound SA again on a move (the SA is moved, not replaced).

use super::*;
use proto::Datagram;

/// The RFC 3948 NAT-keepalive payload.
const NATT_KEEPALIVE: [u8; 1] = [0xff];

impl ControlCore {
    /// Client: the peer of `pair` moved to `peer` (the manager's `PeerMoved`).
    pub(super) fn direct_rebind(&mut self, pair: u64, peer: SocketAddr) {
        let Some((_, local)) = self.direct.client_ike else {
            return;
        };
        let Some(p) = self.direct.pairs.get_mut(&pair) else {
            return;
        };
        let old = p.peer;
        p.peer = peer;
        let (id, installed) = (p.out_id, p.out_installed);
        if installed {
            self.route(Update::RebindOutbound {
                ids: vec![id],
                local: local.ip(),
                remote: peer.ip(),
                encap: Some(direct_encap(peer)),
            });
        }
        self.out.log(format!(
            "vcm: pair {pair}: the peer moved from {old} to {peer}: the direct SA follows"
        ));
        self.direct_keepalive(pair);
    }

    /// An IKE SA moved: ours (client) or a capable client's (gateway).
    pub(super) fn direct_moved(
        &mut self,
        now: Instant,
        ike: IkeSaId,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        if self.direct.client_ike.is_some_and(|(i, _)| i == ike) {
            self.direct.client_ike = Some((ike, local));
            let moved: Vec<(u64, SaId, SocketAddr)> = self
                .direct
                .pairs
                .iter()
                .filter(|(_, p)| p.out_installed)
                .map(|(k, p)| (*k, p.out_id, p.peer))
                .collect();
            for (_, id, peer) in &moved {
                self.route(Update::RebindOutbound {
                    ids: vec![*id],
                    local: local.ip(),
                    remote: peer.ip(),
                    encap: Some(direct_encap(*peer)),
                });
            }
            let pairs: Vec<u64> = self.direct.pairs.keys().copied().collect();
            if !pairs.is_empty() {
                self.out.log(format!(
                    "vcm: we moved to {local}: direct pairs {pairs:?} send from there"
                ));
            }
            for pair in pairs {
                self.direct_keepalive(pair);
            }
            return;
        }
        let Some(&vip) = self.direct.capable.get(&ike) else {
            return;
        };
        let inside = self.vcm.as_ref().is_some_and(|d| d.inside(remote.ip()));
        if !inside {
            // Outside (again): its hairpin pairs are candidates anew.
            if let Some(d) = self.vcm.as_mut() {
                d.forget_member(vip);
            }
        }
        let pairs = self.direct.manager.member_moved(now, vip, remote, inside);
        if pairs.is_empty() {
            return;
        }
        if inside {
            self.out.log(format!(
                "vcm: {vip} came back inside the protected network (at {remote}): its direct pairs {pairs:?} return"
            ));
        } else {
            self.out.log(format!(
                "vcm: {vip} moved to {remote}: its peers in {pairs:?} are told"
            ));
        }
        self.flush_manager(now);
    }

    /// Gateway: whether a client of a candidate pair (at `a`, `b`) is inside the protected
    /// network (`vcm.inside`): the pair stays on the gateway path (logged).
    pub(super) fn direct_inside(&mut self, a: SocketAddr, b: SocketAddr) -> bool {
        let inside = self
            .vcm
            .as_ref()
            .is_some_and(|d| d.inside(a.ip()) || d.inside(b.ip()));
        if inside {
            self.out.log(format!(
                "vcm: {a} <-> {b} stays on the gateway path (a client is inside the protected network)"
            ));
        }
        inside
    }

    /// Client: one NAT keepalive to the peer of `pair`, from our IKE address's port 4500.
    pub(super) fn direct_keepalive(&mut self, pair: u64) {
        let (Some((_, local)), Some(p)) = (self.direct.client_ike, self.direct.pairs.get(&pair))
        else {
            return;
        };
        let dst_port = direct_encap(p.peer).remote_port;
        let dst = p.peer.ip();
        self.direct.keepalives += 1;
        self.out.transmit(Datagram {
            src: local.ip(),
            dst,
            src_port: 4500,
            dst_port,
            payload: NATT_KEEPALIVE.to_vec(),
        });
    }

    /// Client: keepalives to every peer whose direct path has not proven itself yet.
    pub(super) fn direct_keepalives_unproven(&mut self) {
        let pairs: Vec<u64> = self
            .direct
            .pairs
            .keys()
            .copied()
            .filter(|k| self.direct.client.proving(*k))
            .collect();
        for pair in pairs {
            self.direct_keepalive(pair);
        }
    }
}

/// ESP in UDP to `peer` (port 4500 when the gateway saw 500: no NAT in front of it).
fn direct_encap(peer: SocketAddr) -> UdpEncap {
    UdpEncap {
        local_port: 4500,
        remote_port: if peer.port() == 500 {
            4500
        } else {
            peer.port()
        },
    }
}
