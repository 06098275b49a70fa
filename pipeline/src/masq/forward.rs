//! HAM -> FAM forwarding over the inter-node link: the inbound packet, unchanged, sealed in
//! ESP tunnel mode (RFC 4303) on the outbound SA the HAM holds towards that FAM, opened by
//! the FAM's inbound SA of the pair. It is the same `esp::tunnel` code as every other SA, so
//! the same rules hold: the sequence number (the GCM nonce) is taken once per packet, the
//! replay window moves only after the tag matched.
//!
//! The inter-node SA's traffic selectors are any-to-any: what it carries is addressed to a
//! masquerading address, not to the FAM.

use crate::esp::sa::{Encap, OutboundSa};
use crate::esp::tunnel::{decapsulate, encapsulate, InnerMeta};
use crate::port::Frame;
use crate::sad::Sad;
use crate::stats::DropReason;
use crate::wire::ipv4;

/// IP-in-ESP next header for IPv4.
const NH_IPV4: u8 = 4;

/// HAM: seals the IPv4 packet in `f` for the FAM at the other end of `sa`; `f` then holds the
/// outer packet to send on the inter-node link.
pub fn seal_to_fam<F: Frame>(sa: &mut OutboundSa, f: &mut F) -> Result<(), DropReason> {
    let (dscp, ecn) = {
        let p = ipv4::Packet::new_checked(f.data()).map_err(|_| DropReason::MalformedIp)?;
        (p.dscp(), p.ecn())
    };
    let meta = InnerMeta {
        next_header: NH_IPV4,
        dscp,
        ecn,
    };
    encapsulate(sa, f, meta).map(|_| ())
}

/// FAM: opens an ESP packet from a HAM (`f` holds the outer IPv4 packet as received): `f`
/// then holds the original inbound packet, for [`super::FamTable::inbound`].
pub fn open_from_ham<F: Frame>(sad: &mut Sad, f: &mut F, now: u64) -> Result<(), DropReason> {
    let hl = {
        let p = ipv4::Packet::new_checked(f.data()).map_err(|_| DropReason::MalformedIp)?;
        if !p.verify_checksum() {
            return Err(DropReason::MalformedIp);
        }
        usize::from(p.header_len())
    };
    if !f.adj(hl) {
        return Err(DropReason::MalformedIp);
    }
    let o = decapsulate(sad, f, Encap::Bare, now)?;
    if o.next_header != NH_IPV4 {
        return Err(DropReason::BadNextHeader);
    }
    Ok(())
}
