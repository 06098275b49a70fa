//! Rekeying direct SA pairs in the control core (issue 20, item 5): the gateway rekeys a live
//! pair at its soft lifetime (fresh keys from the core's CSPRNG, fresh SPIs from the reserved
//! range: `vcm::manager::rekey`); a client moves its traffic onto the successor's outbound SA
//! after the peer's `PeerReady` (the peer installed the successor's inbound SA first) and
//! deletes the old outbound SA at once; the old inbound SA goes when the gateway returns the
//! old pair (both moved), after `INBOUND_GRACE`. A client whose data plane warns that a
//! direct outbound SA nears its last sequence number (`Event::SeqNearWrap`; direct SAs have
//! no ESN) asks the gateway for the pair's rekey at once.
//!
//! Nonces: the successor has new keys and new SPIs, its outbound SA is installed once starting
//! at sequence number 1; the old outbound SA is deleted when the traffic moves and never
//! installed again. No (SPI, sequence number) is sent twice.

use ike::Instant;
use proto::{Direction, SaId, Spi, Update};
use rand_core::RngCore;

use super::{direct_params, host_prefix, ControlCore};

impl ControlCore {
    /// Gateway: the lifetime given to a new direct SA pair (`vcm.direct_lifetime_secs`).
    pub(super) fn direct_lifetime(&self) -> u32 {
        self.vcm
            .as_ref()
            .map_or(super::DIRECT_LIFETIME_SECS, |d| d.direct_lifetime_secs())
    }

    /// Gateway: `pair` is rekeyed at its (jittered) soft lifetime.
    pub(super) fn direct_schedule_rekey(&mut self, pair: u64) {
        let jitter = self.direct.rng.next_u32();
        self.direct.manager.schedule_rekey(pair, jitter);
    }

    /// Gateway: pairs at their soft lifetime get a successor.
    pub(super) fn direct_rekeys(&mut self, now: Instant) {
        while let Some(old) = self.direct.manager.poll_rekey_due() {
            let keys = self.direct.keys();
            match self.direct.manager.rekey(now, old, keys) {
                Some(new) => {
                    self.direct_schedule_rekey(new);
                    self.out
                        .log(format!("vcm: pair {old}: rekey offered as pair {new}"));
                }
                None => self
                    .out
                    .log(format!("vcm: pair {old}: not rekeyed (not established)")),
            }
        }
    }

    /// Client: our data plane warned that outbound SA `id` (`spi`) nears its last sequence
    /// number. A direct pair's: the manager is asked for the pair's rekey now (the pair ends
    /// at [`SEQ_WRAP_GRACE`](crate::vcm::manager::rekey::SEQ_WRAP_GRACE) if no successor took
    /// its traffic by then). False: not a direct SA (a CHILD_SA's warning is `decisions`').
    pub(in crate::core) fn direct_seq_near_wrap(
        &mut self,
        now: Instant,
        id: SaId,
        spi: Spi,
        seq: u64,
    ) -> bool {
        let Some(pair) = self
            .direct
            .pairs
            .iter()
            .find(|(_, p)| p.out_installed && p.out_id == id && p.out_spi == spi)
            .map(|(k, _)| *k)
        else {
            return false;
        };
        if self.direct.client.seq_near_wrap(now, pair) {
            self.out.log(format!(
                "vcm: pair {pair}: outbound direct SA {:08x} at sequence number {seq}: rekey asked for now",
                spi.0
            ));
        }
        self.client_actions(now);
        true
    }

    /// Client: the peer installed `pair`'s inbound SA: our traffic to it moves from `old`'s
    /// outbound SA onto `pair`'s; `old`'s outbound SA goes.
    pub(super) fn direct_rekeyed(&mut self, now: Instant, pair: u64, old: u64) {
        let Some((_, local)) = self.direct.client_ike else {
            return;
        };
        let Some(p) = self.direct.pairs.get_mut(&pair) else {
            return;
        };
        let params = direct_params(p, local.ip(), p.out_id, p.out_spi, &p.out_keymat, 0);
        let (dst, src, sa) = (p.peer_vip, p.local_vip, p.out_id);
        let first = !p.out_installed;
        p.out_installed = true;
        p.bound = true;
        if let (Some(params), true) = (params, first) {
            self.route(Update::AddSa {
                dir: Direction::Outbound,
                params,
            });
        }
        // The host binding now names the new SA (a binding of `dst` is replaced).
        if let Some(src) = host_prefix(src) {
            self.route(Update::BindHost { dst, src, sa });
        }
        let mut old_out = None;
        if let Some(o) = self.direct.pairs.get_mut(&old) {
            o.bound = false;
            if std::mem::take(&mut o.out_installed) {
                old_out = Some(o.out_id);
            }
        }
        if let Some(id) = old_out {
            self.route(Update::DeleteOutbound { id });
        }
        self.direct.next_probe.get_or_insert(now);
        self.out.log(format!(
            "vcm: pair {old}: rekeyed, sending to {dst} on pair {pair}'s direct SA"
        ));
    }
}
