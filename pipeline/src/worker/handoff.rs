//! Frames for another worker: the SA's owner (by the SPI's worker bits inbound, by the owner
//! table outbound) or, for IKE, worker 0. Sent through [`crate::handoff`]'s lanes; what a full
//! lane cannot take waits here and pauses rx (back-pressure, counted as `handoff_waits`).
//!
//! Outer fragments for us go to the worker that reassembles their datagram, chosen by what
//! every fragment of it carries ([`Worker::fragment_elsewhere`]): a NIC's hash or flow rule
//! may send the first fragment (the only one with an SPI or ports) and the rest to different
//! workers, each of which would then hold half a datagram until it timed out.
//!
//! Never hands on a frame another worker handed here (it is processed here or dropped with
//! a reason), with one exception: the datagram a worker reassembled from fragments handed to
//! it goes on once more, to its SA's owner (or, IKE, to worker 0); it is not a fragment, so
//! it cannot come back. Never moves an SA.

use core::net::IpAddr;

use super::parse::IpInfo;
use super::{Side, Verdict, Worker};
use crate::handoff;
use crate::ids::{SaId, Spi};
use crate::nat::NatDrop;
use crate::port::{Frame, Port};
use crate::stats::{DropReason, Traffic};
use crate::wire::IpProtocol;

impl<P: Port> Worker<P> {
    /// The hand-off to the owner of inbound SPI `spi`, if another worker owns it.
    /// `reassembled`: the packet was reassembled here (from fragments perhaps handed here).
    #[inline]
    pub(super) fn inbound_elsewhere(&self, spi: Spi, reassembled: bool) -> Option<Verdict> {
        if !self.may_hand_on(reassembled) {
            return None;
        }
        let w = handoff::spi_owner(spi, self.workers);
        (w != self.id).then_some(Verdict::HandOff(w))
    }

    /// Whether a frame may go to another worker: one that reached this worker's own ports,
    /// or a datagram reassembled here (even from fragments another worker handed here: the
    /// exception to "never handed on", see the module's doc).
    #[inline]
    fn may_hand_on(&self, reassembled: bool) -> bool {
        if self.receiving {
            reassembled && self.workers > 1
        } else {
            self.handoff.is_some()
        }
    }

    /// The hand-off of an outer fragment for us to the worker that reassembles its datagram,
    /// if that is another worker. Chosen from what every fragment of a datagram carries: UDP
    /// (IKE, ESP in UDP) to worker 0, which punts IKE, even a datagram larger than a frame,
    /// from its reassembler; ESP by its source and destination. A fragment handed here is
    /// reassembled here (the sender chose this worker by the same rule).
    #[inline]
    pub(super) fn fragment_elsewhere(&self, pkt: &IpInfo) -> Option<Verdict> {
        self.handoff.as_ref().filter(|_| !self.receiving)?;
        let w = match IpProtocol::from(pkt.key.proto) {
            IpProtocol::Udp => 0,
            _ => fragment_owner(pkt.key.src, pkt.key.dst, self.workers),
        };
        (w != self.id).then_some(Verdict::HandOff(w))
    }

    /// The hand-off to the worker holding outbound SA `id`, if another worker does.
    #[inline]
    pub(super) fn outbound_elsewhere(&self, id: SaId) -> Option<Verdict> {
        let h = self.handoff.as_ref().filter(|_| !self.receiving)?;
        let w = h.sa_owner(id)?;
        (w != self.id).then_some(Verdict::HandOff(w))
    }

    /// IKE that reached a worker without a punt ring goes to worker 0, which has it.
    /// `reassembled` as for [`Self::inbound_elsewhere`].
    #[inline]
    pub(super) fn ike_elsewhere(&self, reassembled: bool) -> Option<Verdict> {
        if !self.may_hand_on(reassembled) {
            return None;
        }
        (self.id != 0).then_some(Verdict::HandOff(0))
    }

    /// A client's answer to its virtual IP, decrypted here, whose masquerade session another
    /// worker holds (per-core SAs: the gateway answers on whichever SA its own worker owns).
    /// The port says which: each worker hands out its own share ([`crate::nat::port_owner`]).
    #[inline]
    pub(super) fn vip_answer_elsewhere(&self, ip: &[u8]) -> Option<Verdict> {
        // While frames handed here are processed the mesh is out of its slot (`receiving`).
        if self.workers < 2 || (self.handoff.is_none() && !self.receiving) {
            return None;
        }
        let w = crate::nat::port_owner(crate::nat::answer_port(ip)?, self.workers);
        (w != self.id).then_some(Verdict::HandOffInner(w))
    }

    /// An answer another worker decrypted for this one's masquerade: rewritten back to the
    /// LAN host (a flow this masquerade does not know goes to the LAN as it is, as on the
    /// worker that decrypted it).
    fn vip_answer(&mut self, mut f: P::Frame, now: u64) {
        let v = match self.vip_unmasquerade(f.data_mut(), now) {
            Ok(()) => self.forward(&mut f, Side::Lan, false),
            Err(reason) => Verdict::Drop(reason),
        };
        self.dispatch(f, Side::Lan, v);
    }

    /// An answer to the client's virtual IP, decrypted (here or by another worker), back to
    /// the LAN host whose flow it answers (counted as masqueraded); one no LAN host opened
    /// (no session, or a protocol the masquerade does not rewrite) stays as it is. Err: drop
    /// it for this reason.
    pub(super) fn vip_unmasquerade(&mut self, ip: &mut [u8], now: u64) -> Result<(), DropReason> {
        let Some(nat) = self.vip_nat.as_mut() else {
            return Err(DropReason::NatNoSession);
        };
        match nat.inbound(ip, now) {
            Ok(()) => {
                self.counters.count(Traffic::Masqueraded, 1);
                Ok(())
            }
            Err(NatDrop::NoSession | NatDrop::UnsupportedProtocol) => Ok(()),
            Err(e) => Err(super::nat_reason(e)),
        }
    }

    /// With other workers, the masquerades (the client's, and that of bypassed traffic) hand
    /// out only this worker's share of the ports, so that an answer's port names the worker
    /// that holds its session.
    pub(super) fn share_nat_ports(&mut self) {
        if self.workers > 1 {
            for n in [self.vip_nat.as_mut(), self.nat.as_mut()]
                .into_iter()
                .flatten()
            {
                n.share_ports(self.id, self.workers);
            }
        }
    }

    /// An answer to a flow of the masquerade of bypassed traffic (IPv4 `ip`, to its external
    /// address) whose session another worker holds: the whole frame goes there, as it came
    /// (the answer's port, or that of the packet an ICMP error quotes, names the worker:
    /// [`crate::nat::answer_port`], [`crate::nat::port_owner`]). An answer that names no
    /// port (a later fragment, an error about something else) stays here.
    #[inline]
    pub(super) fn nat_answer_elsewhere(&self, ip: &[u8]) -> Option<Verdict> {
        self.handoff.as_ref().filter(|_| !self.receiving)?;
        let w = crate::nat::port_owner(crate::nat::answer_port(ip)?, self.workers);
        (w != self.id).then_some(Verdict::HandOff(w))
    }

    /// Outbound SA `id` is installed here (true) or was deleted here: the other workers
    /// learn where its flows go.
    pub(super) fn publish_owner(&self, id: SaId, installed: bool) {
        if let Some(h) = self.handoff.as_ref() {
            if installed {
                h.owners().set(id, self.id);
            } else {
                h.owners().clear(id, self.id);
            }
        }
    }

    /// Moves waiting frames into their lanes, in order; true when none waits any more.
    pub(super) fn flush_handoffs(&mut self) -> bool {
        let Some(h) = self.handoff.as_mut() else {
            return true;
        };
        while let Some((to, from, f)) = self.handoff_q.front() {
            if h.send(*to, *from, f.data()).is_err() {
                self.counters.count(Traffic::HandOffWaits, 1);
                return false;
            }
            self.handoff_q.pop_front();
            self.counters.count(Traffic::HandedOff, 1);
        }
        true
    }

    /// Processes up to a burst of frames other workers handed here, as if this worker's own
    /// ports had received them. A parcel waits in its lane while the port has no free frame.
    pub(super) fn take_handoffs(&mut self, now: u64) -> usize {
        let Some(mut h) = self.handoff.take() else {
            return 0;
        };
        self.receiving = true;
        let n = h.receive(super::BURST, |p| {
            let (side, port) = match p.from {
                handoff::Side::Lan | handoff::Side::Inner => (Side::Lan, &mut self.lan),
                handoff::Side::Wan => (Side::Wan, &mut self.wan),
            };
            let Some(mut f) = port.alloc() else {
                return false;
            };
            self.counters.count(Traffic::HandOffReceived, 1);
            if !f.append(p.bytes.len()) {
                self.counters.record_drop(DropReason::HandOffNoRoom);
                return true;
            }
            f.data_mut().copy_from_slice(&p.bytes);
            if p.from == handoff::Side::Inner {
                self.vip_answer(f, now);
            } else {
                self.process(f, side, now);
            }
            true
        });
        self.receiving = false;
        self.handoff = Some(h);
        // GCM and CBC packets among them were parked for their seal or open: finish them now.
        self.finish_burst(now);
        n
    }
}

/// The worker that reassembles the ESP fragments from `src` to `dst` of `workers` workers:
/// all the fragments of a datagram carry both addresses, only the first its SPI. (Per pair
/// rather than per datagram: the IPv6 identification sits behind extension headers, and
/// fragments are few.)
fn fragment_owner(src: IpAddr, dst: IpAddr, workers: u16) -> u16 {
    let fold = |a: IpAddr| match a {
        IpAddr::V4(v) => u64::from(u32::from(v)),
        IpAddr::V6(v) => {
            let x = u128::from(v);
            (x as u64) ^ ((x >> 64) as u64)
        }
    };
    // A multiply-shift of both (the addresses are the peer's to choose, but the choice only
    // spreads the work: every worker reassembles as well as another).
    let h = (fold(src).rotate_left(32) ^ fold(dst)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((h >> 32) % u64::from(workers.max(1))) as u16
}
