//! What the control plane does about a data-plane report: a soft lifetime (or a sequence
//! number near its limit) rekeys the CHILD_SA, a hard one deletes it (the data plane already
//! stopped using the SA). A report about an SA that is no longer ours (it was rekeyed or
//! deleted while the report travelled: reports are rate-limited and queued) changes nothing.
//!
//! Owns: the mapping from a report to a [`Decision`].
//! Must never: act on a report whose (SA id, SPI) no CHILD_SA holds now: ids are recycled, so
//! a stale report must not name the CHILD_SA that holds its id today.

use ike::{ChildSpi, IkeSaId};
use proto::{Event as DpEvent, LifetimeKind, SaId, Spi};

/// What to ask of the IKE endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Rekey {
        ike: IkeSaId,
        child: ChildSpi,
        why: String,
    },
    Delete {
        ike: IkeSaId,
        child: ChildSpi,
        why: String,
    },
}

/// The decision a report asks for, if any. `child_of` finds the CHILD_SA (inbound SPI) that
/// holds a data-plane SA now; `ike_of` the IKE SA of a CHILD_SA.
pub fn decide(
    e: &DpEvent,
    child_of: impl Fn(SaId, Spi) -> Option<ChildSpi>,
    ike_of: impl Fn(ChildSpi) -> Option<IkeSaId>,
) -> Option<Decision> {
    match e {
        DpEvent::Lifetime {
            id,
            spi,
            dir,
            kind,
            limit,
            bytes,
            packets,
            ..
        } => {
            let child = child_of(*id, *spi)?;
            let ike = ike_of(child)?;
            let hard = *kind == LifetimeKind::Hard;
            let why = format!(
                "CHILD_SA {child:08x}: {dir:?} SA {:08x} reached its {} {limit:?} lifetime ({bytes} bytes, {packets} packets): {}",
                spi.0,
                if hard { "hard" } else { "soft" },
                if hard { "deleting it" } else { "rekeying" }
            );
            Some(if hard {
                Decision::Delete { ike, child, why }
            } else {
                Decision::Rekey { ike, child, why }
            })
        }
        DpEvent::SeqNearWrap { id, spi, seq, .. } => {
            let child = child_of(*id, *spi)?;
            let ike = ike_of(child)?;
            Some(Decision::Rekey {
                ike,
                child,
                why: format!(
                    "CHILD_SA {child:08x}: outbound SA {:08x} at sequence number {seq}: rekeying",
                    spi.0
                ),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Direction, LifetimeLimit};

    fn lifetime(kind: LifetimeKind, id: u32, spi: u32) -> DpEvent {
        DpEvent::Lifetime {
            worker: 0,
            id: SaId(id),
            spi: Spi(spi),
            dir: Direction::Outbound,
            kind,
            limit: LifetimeLimit::Bytes,
            bytes: 1000,
            packets: 10,
            age_secs: 3,
        }
    }

    const CHILD: ChildSpi = ChildSpi(0x1234);
    const IKE: IkeSaId = IkeSaId(ike::IkeSpi(7));

    fn ours(id: SaId, spi: Spi) -> Option<ChildSpi> {
        (id == SaId(5) && spi == Spi(0xaa)).then_some(CHILD)
    }

    fn ike_of(c: ChildSpi) -> Option<IkeSaId> {
        (c == CHILD).then_some(IKE)
    }

    #[test]
    fn soft_rekeys_hard_deletes() {
        let soft = decide(&lifetime(LifetimeKind::Soft, 5, 0xaa), ours, ike_of);
        assert!(matches!(
            soft,
            Some(Decision::Rekey {
                ike: IKE,
                child: CHILD,
                ..
            })
        ));
        let hard = decide(&lifetime(LifetimeKind::Hard, 5, 0xaa), ours, ike_of);
        assert!(matches!(
            hard,
            Some(Decision::Delete {
                ike: IKE,
                child: CHILD,
                ..
            })
        ));
        let wrap = DpEvent::SeqNearWrap {
            worker: 0,
            id: SaId(5),
            spi: Spi(0xaa),
            seq: 1 << 40,
            limit: u64::MAX,
        };
        assert!(matches!(
            decide(&wrap, ours, ike_of),
            Some(Decision::Rekey { .. })
        ));
    }

    #[test]
    fn a_report_about_an_sa_that_went_or_whose_id_was_reused_changes_nothing() {
        // Same id, another SPI: the id now belongs to a newer SA.
        assert_eq!(
            decide(&lifetime(LifetimeKind::Hard, 5, 0xbb), ours, ike_of),
            None
        );
        // No CHILD_SA holds it.
        assert_eq!(
            decide(&lifetime(LifetimeKind::Soft, 6, 0xaa), ours, ike_of),
            None
        );
        // The CHILD_SA is known but its IKE SA went.
        assert_eq!(
            decide(&lifetime(LifetimeKind::Soft, 5, 0xaa), ours, |_| None),
            None
        );
    }
}
