//! Moving an established IKE SA between endpoints: [`Endpoint::export`] writes its lasting
//! state as an [`IkeSaRecord`]; [`Endpoint::adopt`] takes one in, reserves its SPIs and its
//! virtual-IP lease in this endpoint's services, re-arms its timers and carries the IKE SA on
//! from the record's message ids, keys and deadlines (its IV counter in a later epoch, see
//! `record`). Adopting reports no events: the caller has the record, and installs its
//! CHILD_SAs ([`IkeSaRecord::child_infos`]) where it wants them.
//!
//! Owns: the translation between an IKE SA and its record, and the reservations an adopted IKE
//! SA needs.
//! [`Endpoint::export_durable`] is the one exception to "between exchanges": a process's copy
//! of its own IKE SAs for a restart, taken with work under way, its message ids past every
//! request sent.
//!
//! Must never: export work under way through [`Endpoint::export`] (an IKE SA with a request of
//! ours outstanding or queued is refused, the caller tries again when it is done); adopt a record whose SPIs or lease
//! this endpoint holds already, or leave a reservation behind when an adoption is refused.

use core::net::IpAddr;
use core::time::Duration;

use super::Endpoint;
use crate::crypto::{IkeKeys, SK_IV_EPOCH_SHIFT};
use crate::ids::{ChildSpi, IkeSaId, IkeSpi};
use crate::ike_sa::{Child, ChildKeys, IkeSa, Phase, Role};
use crate::record::{ChildSaRecord, IkeSaRecord, IkeSaSecrets, RecordError};
use crate::time::Instant;
use crate::timer::Timer;

/// Why an IKE SA cannot be exported now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("no such IKE SA")]
    NoSuchSa,
    #[error("the IKE SA is not established (or is being deleted)")]
    NotEstablished,
    #[error("an exchange of ours is under way on the IKE SA; export it when it is done")]
    Busy,
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Why a record cannot be adopted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("the connection's identities differ from the record's")]
    IdentityMismatch,
    #[error("IKE SPI {0} is in use here already")]
    IkeSpiInUse(IkeSpi),
    #[error("CHILD_SA SPI {0} is in use here already")]
    ChildSpiInUse(ChildSpi),
    #[error("virtual IP {0} cannot be leased here (in use, or not in the connection's pool)")]
    LeaseUnavailable(IpAddr),
    #[error("the IKE SA has used up its IV epochs: rekey it before moving it again")]
    IvEpochsExhausted,
}

/// The IV window of the epoch after the one `iv_next` is in (epochs are 16 bits).
fn next_epoch(iv_next: u64) -> Option<(u64, u64)> {
    const LAST: u64 = u16::MAX as u64;
    let epoch = (iv_next >> SK_IV_EPOCH_SHIFT)
        .checked_add(1)
        .filter(|e| *e <= LAST)?;
    let start = epoch.checked_shl(SK_IV_EPOCH_SHIFT)?;
    let end = if epoch == LAST {
        u64::MAX
    } else {
        epoch.saturating_add(1).checked_shl(SK_IV_EPOCH_SHIFT)?
    };
    Some((start, end))
}

fn until(now: Instant, at: Option<Instant>) -> Option<Duration> {
    at.map(|t| t.saturating_duration_since(now))
}

impl Endpoint {
    /// The lasting state of IKE SA `id` at `now`, between exchanges of ours.
    pub fn export(&self, now: Instant, id: IkeSaId) -> Result<IkeSaRecord, ExportError> {
        self.export_with(now, id, false)
    }

    /// The state of IKE SA `id` at `now` for a durable copy of this endpoint's own (a crash
    /// and a restart), taken even while work is under way: an exchange of ours in flight is
    /// left out as if it had been lost, and the record's `next_request_id` is already past
    /// its message id (and past every request sent), so an adopter skips that id and never
    /// sends another request under it. The peer's last request and our answer are in it as
    /// for [`export`](Self::export). A record taken with work under way is for this one
    /// purpose: adopting it loses the exchange in flight (the peer may hold a CHILD_SA or IKE
    /// SA it made, which its lifetime ends), and if the request never reached the peer, our
    /// next request's id is one the peer does not expect (a skip: never a repeat).
    pub fn export_durable(&self, now: Instant, id: IkeSaId) -> Result<IkeSaRecord, ExportError> {
        self.export_with(now, id, true)
    }

    fn export_with(
        &self,
        now: Instant,
        id: IkeSaId,
        under_way_ok: bool,
    ) -> Result<IkeSaRecord, ExportError> {
        let sa = self.sas.get(&id).ok_or(ExportError::NoSuchSa)?;
        let (st, pending) = (&sa.state, &sa.pending);
        if st.phase != Phase::Established {
            return Err(ExportError::NotEstablished);
        }
        let under_way = pending.outstanding.is_some()
            || !pending.queue.is_empty()
            || pending.rekey_peer.is_some()
            || pending.rekey_ours.is_some()
            || st
                .children
                .iter()
                .any(|c| c.rekeying || c.peer_rekey.is_some());
        if under_way && !under_way_ok {
            return Err(ExportError::Busy);
        }
        let (Some(keys), Some(sk_out), Some(cfg), Some(remote_id)) = (
            st.keys.as_ref(),
            st.sk_out.as_ref(),
            st.peer.as_ref(),
            st.remote_id.as_ref(),
        ) else {
            return Err(ExportError::NotEstablished);
        };
        // One lookup: listing (and sorting) every lease per export made exporting all IKE
        // SAs quadratic (100,000 of them took minutes in `perf ha-resync`).
        let lease = self.services.pool.lease_of(id).is_some();
        let record = IkeSaRecord {
            initiator: st.role == Role::Initiator,
            spi_i: st.spi_i,
            spi_r: st.spi_r,
            local: st.local,
            remote: st.remote,
            nat: st.nat,
            connection: cfg.name.clone(),
            local_id: cfg.local_id.clone(),
            remote_id: remote_id.clone(),
            prop: st.prop,
            keys: IkeSaSecrets {
                sk_d: keys.sk_d.clone(),
                sk_ai: keys.sk_ai.clone(),
                sk_ar: keys.sk_ar.clone(),
                sk_ei: keys.sk_ei.clone(),
                sk_er: keys.sk_er.clone(),
            },
            iv_next: sk_out.iv_window().0,
            next_request_id: st.next_request_id,
            peer_next_id: st.peer_next_id,
            last_response: st.last_response.clone(),
            rekey_in: until(now, st.rekey_at),
            heard_ago: now.saturating_duration_since(pending.last_heard),
            virtual_ip: st.virtual_ip,
            lease,
            mobike: st.mobike,
            fragmentation: st.fragmentation,
            mid_sync: st.mid_sync,
            mid_sync_used: st.mid_sync_used,
            gateway_move: st.gateway_move,
            per_core: st.per_core,
            redirect: st.redirect,
            peer_additional: st.peer_additional.clone(),
            our_additional: st.our_additional.clone(),
            eap_identity: st.eap_identity.clone(),
            children: st
                .children
                .iter()
                .map(|c| ChildSaRecord {
                    name: c.name.clone(),
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    esn: c.esp.esn,
                    encr_bits: c.esp.encr_bits,
                    integ: c.esp.integ,
                    local_ts: c.local_ts.clone(),
                    remote_ts: c.remote_ts.clone(),
                    rekey_in: until(now, c.rekey_at),
                    expire_in: until(now, c.expire_at),
                    replaced: c.replaced,
                    key_in: c.keys.inbound.clone(),
                    key_out: c.keys.outbound.clone(),
                })
                .collect(),
        };
        record.check()?;
        Ok(record)
    }

    /// Carries on the IKE SA of `record` from `now`: its SPIs and lease are reserved here,
    /// its timers armed from the record's deadlines. Nothing is sent.
    pub fn adopt(&mut self, now: Instant, record: &IkeSaRecord) -> Result<IkeSaId, AdoptError> {
        record.check()?;
        let cfg = self
            .peers
            .iter()
            .find(|p| p.name == record.connection)
            .cloned()
            .ok_or_else(|| AdoptError::UnknownConnection(record.connection.clone()))?;
        if cfg.local_id != record.local_id
            || cfg
                .remote_id
                .as_ref()
                .is_some_and(|r| *r != record.remote_id)
        {
            return Err(AdoptError::IdentityMismatch);
        }
        let (iv_next, iv_end) = next_epoch(record.iv_next).ok_or(AdoptError::IvEpochsExhausted)?;
        let id = record.id();
        if self.sas.contains_key(&id) || !self.services.spis.claim_ike(id.0) {
            return Err(AdoptError::IkeSpiInUse(id.0));
        }
        if let Err(e) = self.reserve(&cfg, id, record) {
            self.services.spis.release_ike(id.0);
            return Err(e);
        }
        let mut sa = build(now, id, record, cfg.clone());
        match sa.state.sk_out.as_mut() {
            Some(c) if sa.state.sk_in.is_some() => c.set_iv_window(iv_next, iv_end),
            // `check` matched the key sizes to the proposal: the ciphers always build.
            _ => {
                self.unreserve(id, record);
                return Err(RecordError::Invalid("keys").into());
            }
        }
        sa.timers.set(
            Timer::Liveness,
            cfg.dpd.map(|d| sa.pending.last_heard.saturating_add(d)),
        );
        self.sas.insert(id, sa);
        self.file(id);
        Ok(id)
    }

    /// Reserves the record's CHILD_SA SPIs and its lease, or nothing.
    fn reserve(
        &mut self,
        cfg: &crate::config::PeerConfig,
        id: IkeSaId,
        record: &IkeSaRecord,
    ) -> Result<(), AdoptError> {
        let spis = &mut self.services.spis;
        for (n, c) in record.children.iter().enumerate() {
            if !spis.claim_child(c.spi_in) {
                for done in record.children.iter().take(n) {
                    spis.release_child(done.spi_in);
                }
                return Err(AdoptError::ChildSpiInUse(c.spi_in));
            }
        }
        if let (true, Some(vip)) = (record.lease, record.virtual_ip) {
            let leased = match (&cfg.pool, vip) {
                (Some(pool), IpAddr::V4(a)) => self.services.pool.claim(pool, a, id),
                _ => false,
            };
            if !leased {
                for c in &record.children {
                    self.services.spis.release_child(c.spi_in);
                }
                return Err(AdoptError::LeaseUnavailable(vip));
            }
        }
        Ok(())
    }

    fn unreserve(&mut self, id: IkeSaId, record: &IkeSaRecord) {
        for c in &record.children {
            self.services.spis.release_child(c.spi_in);
        }
        if record.lease {
            self.services.pool.release(id);
        }
        self.services.spis.release_ike(id.0);
    }
}

/// The IKE SA a record describes, established, its deadlines counted from `now`.
fn build(
    now: Instant,
    id: IkeSaId,
    r: &IkeSaRecord,
    cfg: std::sync::Arc<crate::config::PeerConfig>,
) -> IkeSa {
    let role = if r.initiator {
        Role::Initiator
    } else {
        Role::Responder
    };
    let mut sa = IkeSa::new(id, role, r.spi_i, r.spi_r, r.local, r.remote, r.prop, now);
    let k = &r.keys;
    sa.install_keys(IkeKeys {
        prf: r.prop.prf,
        sk_d: k.sk_d.clone(),
        sk_ai: k.sk_ai.clone(),
        sk_ar: k.sk_ar.clone(),
        sk_ei: k.sk_ei.clone(),
        sk_er: k.sk_er.clone(),
        // SK_p only served IKE_AUTH, long done.
        sk_pi: Default::default(),
        sk_pr: Default::default(),
    });
    let at = |d: Option<Duration>| d.map(|d| now.saturating_add(d));
    // Established here now: what the views count its age from.
    sa.observed.established_at = Some(now);
    let s = &mut sa.state;
    s.phase = Phase::Established;
    s.nat = r.nat;
    s.peer = Some(cfg);
    s.remote_id = Some(r.remote_id.clone());
    s.eap_identity = r.eap_identity.clone();
    s.next_request_id = r.next_request_id;
    s.peer_next_id = r.peer_next_id;
    s.last_response = r.last_response.clone();
    s.rekey_at = at(r.rekey_in);
    s.virtual_ip = r.virtual_ip;
    s.mobike = r.mobike;
    s.fragmentation = r.fragmentation;
    s.mid_sync = r.mid_sync;
    s.mid_sync_used = r.mid_sync_used;
    s.gateway_move = r.gateway_move;
    s.per_core = r.per_core;
    s.redirect = r.redirect;
    s.peer_additional = r.peer_additional.clone();
    s.our_additional = r.our_additional.clone();
    s.children = r
        .children
        .iter()
        .map(|c| Child {
            name: c.name.clone(),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            esp: c.proposal(),
            keys: ChildKeys {
                inbound: c.key_in.clone(),
                outbound: c.key_out.clone(),
            },
            local_ts: c.local_ts.clone(),
            remote_ts: c.remote_ts.clone(),
            installed_at: now,
            rekey_at: at(c.rekey_in),
            expire_at: at(c.expire_in),
            rekeying: false,
            replaced: c.replaced,
            peer_rekey: None,
            lost: false,
        })
        .collect();
    sa.pending.last_heard = Instant::from_nanos(now.as_nanos().saturating_sub(nanos(r.heard_ago)));
    sa
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_adoption_moves_to_the_next_epoch_until_none_is_left() {
        let e = |n: u64| n << SK_IV_EPOCH_SHIFT;
        assert_eq!(next_epoch(5), Some((e(1), e(2))));
        assert_eq!(next_epoch(e(1) + 7), Some((e(2), e(3))));
        assert_eq!(next_epoch(e(0xfffe)), Some((e(0xffff), u64::MAX)));
        assert_eq!(next_epoch(e(0xffff)), None);
        assert_eq!(next_epoch(u64::MAX), None);
    }
}
