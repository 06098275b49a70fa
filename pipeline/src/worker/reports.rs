//! What the worker tells the control plane on its reply ring: lifetimes reached, unknown
//! SPIs, authentication and replay failures (sequence numbers: `sa_state`).
//!
//! Counts are running totals, so a report that is coalesced or lost loses nothing; failure
//! reports go out at most once a second per kind (unknown SPIs: every 10 ms).

use core::net::IpAddr;

use super::Worker;
use crate::ids::{SaId, Spi};
use crate::msg::{Direction, Event, LifetimeKind, LifetimeLimit, Reply};
use crate::port::Port;
use crate::stats::{Crossing, DropReason, SaCounters};

/// At most one report per second per worker and kind: totals travel, so a coalesced report
/// loses nothing.
pub(super) const REPORT_EVERY_NS: u64 = 1_000_000_000;

/// Unknown SPIs are reported every 10 ms at most: in a cluster, the first ESP of a client at
/// another edge is what moves its SAs there (issue 18 item 6), and a client that comes back
/// within the second must be noticed too. 100 reports a second per worker is still nothing
/// to the control plane, whatever an attacker sprays.
pub(super) const UNKNOWN_SPI_EVERY_NS: u64 = 10_000_000;

impl<P: Port> Worker<P> {
    /// Tells the control plane about ESP it could not open: an unknown SPI (RFC 4303 3.4.2
    /// auditable event; IKE may answer INVALID_SPI), or an SA's authentication or replay
    /// failures. Rate-limited; the counts are running totals. `src_port`: of ESP in UDP, else 0.
    pub(super) fn report_failure(
        &mut self,
        r: DropReason,
        spi: Spi,
        (src, src_port): (IpAddr, u16),
        dst: IpAddr,
        now: u64,
    ) {
        let slot = match r {
            DropReason::UnknownSpi => 0,
            DropReason::AuthFailed => 1,
            DropReason::ReplayDuplicate | DropReason::ReplayTooOld | DropReason::ReplayZero => 2,
            _ => return,
        };
        if slot == 0 {
            self.unknown_spi_total += 1;
        }
        let every = if slot == 0 {
            UNKNOWN_SPI_EVERY_NS
        } else {
            REPORT_EVERY_NS
        };
        let last = &mut self.reported_at[slot];
        if *last != 0 && now.saturating_sub(*last) < every {
            return;
        }
        *last = now.max(1);
        let worker = self.id;
        let event = if slot == 0 {
            Event::UnknownSpi {
                worker,
                spi,
                src,
                src_port,
                dst,
                packets: self.unknown_spi_total,
            }
        } else {
            let (id, c) = match self.sad.inbound(spi) {
                Some(sa) => (sa.id, sa.counters.clone()),
                None => match self.group_counters(spi) {
                    Some(g) => g,
                    None => return,
                },
            };
            if slot == 1 {
                Event::AuthFailures {
                    worker,
                    id,
                    spi,
                    count: c.drops(DropReason::AuthFailed),
                }
            } else {
                Event::ReplayFailures {
                    worker,
                    id,
                    spi,
                    count: c.drops(DropReason::ReplayDuplicate)
                        + c.drops(DropReason::ReplayTooOld)
                        + c.drops(DropReason::ReplayZero),
                }
            }
        };
        self.reply(Reply::Event(event));
    }

    /// Reports the lifetime an inbound packet on `spi` reached (rare: once per threshold).
    pub(super) fn report_crossing(&mut self, spi: Spi, c: Crossing, now: u64) {
        let Some(sa) = self.sad.inbound(spi) else {
            return;
        };
        if c == Crossing::FirstUse {
            // Unasked (generation 0): the SA's window as it stands after its first packet
            // here (the cluster's crypto node moves the client's outbound SA to this edge).
            let e = Event::SaState {
                worker: self.id,
                generation: 0,
                id: sa.id,
                spi,
                state: proto::sa::SaState::Inbound {
                    replay: sa.replay.export(),
                },
            };
            self.reply(Reply::Event(e));
            return;
        }
        let Some(e) = crossing_event(
            self.id,
            (sa.id, spi),
            &sa.counters,
            Direction::Inbound,
            c,
            now,
        ) else {
            return;
        };
        self.reply(Reply::Event(e));
    }
}

/// The event for a limit an SA reached.
pub(super) fn crossing_event(
    worker: u16,
    (id, spi): (SaId, Spi),
    c: &SaCounters,
    dir: Direction,
    x: Crossing,
    now: u64,
) -> Option<Event> {
    Some(match x {
        Crossing::FirstUse => return None,
        Crossing::Lifetime { hard, bytes } => Event::Lifetime {
            worker,
            id,
            spi,
            dir,
            kind: if hard {
                LifetimeKind::Hard
            } else {
                LifetimeKind::Soft
            },
            limit: if bytes {
                LifetimeLimit::Bytes
            } else {
                LifetimeLimit::Packets
            },
            bytes: c.bytes.get(),
            packets: c.packets.get(),
            age_secs: now.saturating_sub(c.installed_at.get()) / 1_000_000_000,
        },
    })
}
