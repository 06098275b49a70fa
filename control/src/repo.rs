//! The SA repository: what the control plane knows of every CHILD_SA, and the data-plane
//! updates that follow from IKE's events.
//!
//! A CHILD_SA that comes up becomes an inbound and an outbound SA in the data plane plus one
//! protect rule per pair of its traffic selectors, placed before the gateway's static rules.
//! A rekey is make-before-break on both ends:
//! - the end that started it gets the response only after the peer installed its new inbound
//!   SA, so it moves its policy to the new outbound SA at once;
//! - the end that answered has just installed its new inbound SA, but the starter may not yet
//!   have installed its own, so it keeps sending on the old SA until the starter deletes the
//!   old CHILD_SA (which the starter does only after switching).
//!
//! Old SAs are deleted only when IKE reports the old CHILD_SA gone. The repository is plain
//! data in, plain data out: it never touches a ring.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proto::nat::MasqueradeConfig;
use proto::policy::{Action, PortRange, Prefix, Rule, Selector};
use proto::sa::{AeadAlg, CbcAlg, EspAlg, IntegAlg, Lifetime, SaKeys, SaParams, UdpEncap};
use proto::{Direction, SaId, Spi, Update};

use ike::wire::TrafficSelector;
use ike::{range_ts, ChildSaInfo, ChildSpi, EspInteg, Event, IkeSaId};

/// The data plane's algorithm for a CHILD_SA's suite: AES-GCM-16, or AES-CBC with its HMAC.
fn esp_alg(encr_bits: u16, integ: Option<EspInteg>) -> Result<EspAlg, String> {
    let integ = match integ {
        None => {
            return match encr_bits {
                128 => Ok(AeadAlg::AesGcm128.into()),
                256 => Ok(AeadAlg::AesGcm256.into()),
                b => Err(format!("AES-GCM-{b} is not supported")),
            }
        }
        Some(EspInteg::HmacSha1_96) => IntegAlg::HmacSha1_96,
        Some(EspInteg::HmacSha256_128) => IntegAlg::HmacSha256_128,
        Some(EspInteg::HmacSha384_192) => IntegAlg::HmacSha384_192,
        Some(EspInteg::HmacSha512_256) => IntegAlg::HmacSha512_256,
    };
    match encr_bits {
        128 => Ok(EspAlg::Cbc(CbcAlg::AesCbc128, integ)),
        256 => Ok(EspAlg::Cbc(CbcAlg::AesCbc256, integ)),
        b => Err(format!("AES-CBC-{b} is not supported")),
    }
}

/// Dynamic SA ids start here (static SAs from the config use their index). Ids are
/// recycled, lowest first: a worker indexes its outbound SAs by id, so the highest id ever
/// handed out sizes that index, and it must follow the number of CHILD_SAs alive, not the
/// number of rekeys so far.
const FIRST_ID: u32 = 1 << 20;
/// Dynamic rule ids start here.
const FIRST_RULE: u32 = 1 << 20;

#[derive(Clone, Debug)]
struct ChildRec {
    name: String,
    spi_out: ChildSpi,
    out_id: SaId,
    rules: Vec<Rule>,
    /// Rules waiting for the CHILD_SA this one replaces to go (a rekey the peer started).
    parked: Vec<Rule>,
    /// The CHILD_SA (inbound SPI) that takes over this one's rules when it goes.
    successor: Option<ChildSpi>,
    /// Our rekey replaced this one: its rules, kept in case the replacement is deleted first
    /// (a simultaneous rekey the peer won, RFC 7296 2.8.1).
    own_parked: Vec<Rule>,
    /// The CHILD_SA this one replaced by our rekey.
    predecessor: Option<ChildSpi>,
    /// The peer's replacement of our predecessor, parked: it takes over if this one is
    /// deleted after the predecessor (we lost a simultaneous rekey).
    fallback: Option<ChildSpi>,
    /// What the data plane holds for it (keys included: zeroized when dropped); the inbound
    /// one is installed again in a data plane that restarted.
    sas: [SaParams; 2],
    local: IpAddr,
    remote: IpAddr,
    /// A road warrior's CHILD_SA (one local selector, one remote host, any protocol and
    /// port): its rules go to the data plane as a host binding (destination -> SA), not into
    /// the SPD, so a gateway with many clients never recompiles its policy per client.
    host: Option<(IpAddr, Prefix)>,
}

/// A CHILD_SA as the views show it (never keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildView {
    pub name: String,
    pub spi_in: ChildSpi,
    pub spi_out: ChildSpi,
    pub local: IpAddr,
    pub remote: IpAddr,
}

pub struct SaRepository {
    static_rules: Vec<Rule>,
    replay_window: u32,
    children: BTreeMap<ChildSpi, ChildRec>,
    next_id: u32,
    /// Ids of CHILD_SAs that went (their deletes are queued before any reuse, and every
    /// rule or binding naming them is gone first), handed out again lowest first.
    free_ids: std::collections::BTreeSet<u32>,
    /// SA id -> the CHILD_SA (inbound SPI) holding it, for the data plane's reports.
    owner: std::collections::HashMap<SaId, ChildSpi>,
    next_rule: u32,
    /// A client's virtual IP and the IKE SA that holds it.
    vip: Option<(IkeSaId, std::net::Ipv4Addr)>,
    /// Byte/packet lifetimes of the data-plane SAs, by connection name.
    lifetimes: BTreeMap<String, Lifetime>,
    /// The host bindings the data plane holds: destination -> (sources, outbound SA).
    bound: std::collections::HashMap<IpAddr, (Prefix, SaId)>,
    /// Children installed, rekeyed, removed (for views and tests).
    pub installed: u64,
    pub rekeyed: u64,
    pub removed: u64,
}

/// Why a CHILD_SA could not become data-plane SAs.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("CHILD_SA {name}: {what}")]
    Child { name: String, what: String },
}

impl SaRepository {
    pub fn new(static_rules: Vec<Rule>, replay_window: u32) -> SaRepository {
        SaRepository {
            static_rules,
            replay_window,
            children: BTreeMap::new(),
            next_id: FIRST_ID,
            free_ids: std::collections::BTreeSet::new(),
            owner: std::collections::HashMap::new(),
            next_rule: FIRST_RULE,
            vip: None,
            lifetimes: BTreeMap::new(),
            bound: std::collections::HashMap::new(),
            installed: 0,
            rekeyed: 0,
            removed: 0,
        }
    }

    /// The byte/packet lifetimes of connection `conn`'s CHILD_SAs from now on.
    pub fn set_lifetime(&mut self, conn: &str, l: Lifetime) {
        self.lifetimes.insert(conn.to_owned(), l);
    }

    /// The CHILD_SA (its inbound SPI) a data-plane SA belongs to, either direction, by its
    /// id and SPI: ids are reused, so a report about an SA that went must not name the
    /// CHILD_SA that holds its id now.
    pub fn child_of_sa(&self, id: SaId, spi: Spi) -> Option<ChildSpi> {
        let spi_in = *self.owner.get(&id)?;
        let c = self.children.get(&spi_in)?;
        c.sas
            .iter()
            .any(|p| p.id == id && p.spi == spi)
            .then_some(spi_in)
    }

    /// True for a static SA (the config's, never deleted) and for an SA of a CHILD_SA alive.
    pub fn holds(&self, id: SaId, spi: Spi) -> bool {
        id.0 < FIRST_ID || self.child_of_sa(id, spi).is_some()
    }

    /// The highest dynamic SA id in use or free (what sizes a worker's outbound index).
    pub fn highest_id(&self) -> Option<SaId> {
        (self.next_id > FIRST_ID).then(|| SaId(self.next_id - 1))
    }

    pub fn children(&self) -> Vec<ChildView> {
        self.children
            .iter()
            .map(|(spi_in, c)| ChildView {
                name: c.name.clone(),
                spi_in: *spi_in,
                spi_out: c.spi_out,
                local: c.local,
                remote: c.remote,
            })
            .collect()
    }

    /// The updates, in order, that an IKE event asks of the data plane.
    pub fn on_event(&mut self, e: &Event) -> Result<Vec<Update>, RepoError> {
        match e {
            Event::ChildUp(info) => self.child_up(info),
            Event::ChildDown { spi_in, .. } => Ok(self.child_down(*spi_in)),
            Event::IkeUp {
                ike,
                virtual_ip: Some(IpAddr::V4(v)),
                virtual_ip_is_ours: true,
                ..
            } => {
                self.vip = Some((*ike, *v));
                Ok(vec![self.virtual_ip_update()])
            }
            Event::IkeRekeyed { old, new, .. } => {
                if let Some((ike, _)) = self.vip.as_mut().filter(|(i, _)| i == old) {
                    *ike = *new;
                }
                Ok(Vec::new())
            }
            Event::IkeMoved {
                local,
                remote,
                udp_encap,
                children,
                ..
            } => Ok(self.moved(*local, *remote, *udp_encap, children)),
            Event::IkeDown { ike, .. } if self.vip.is_some_and(|(i, _)| i == *ike) => {
                self.vip = None;
                Ok(vec![self.virtual_ip_update()])
            }
            _ => Ok(Vec::new()),
        }
    }

    /// MOBIKE moved an IKE SA: its CHILD_SAs' outbound SAs are rebound in one update (same
    /// keys, same sequence numbers); what a restarted data plane would get is updated too.
    fn moved(
        &mut self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        udp_encap: bool,
        children: &[ChildSpi],
    ) -> Vec<Update> {
        let encap = udp_encap.then_some(UdpEncap {
            local_port: local.port(),
            remote_port: remote.port(),
        });
        let mut ids = Vec::new();
        for spi in children {
            if let Some(c) = self.children.get_mut(spi) {
                c.local = local.ip();
                c.remote = remote.ip();
                for p in c.sas.iter_mut() {
                    p.local = local.ip();
                    p.remote = remote.ip();
                    p.encap = encap;
                }
                ids.push(c.out_id);
            }
        }
        if ids.is_empty() {
            return Vec::new();
        }
        vec![Update::RebindOutbound {
            ids,
            local: local.ip(),
            remote: remote.ip(),
            encap,
        }]
    }

    /// A client's virtual IP as the data plane's masquerade inside the tunnel (or none).
    fn virtual_ip_update(&self) -> Update {
        Update::SetVirtualIp {
            config: self.vip.map(|(_, v)| MasqueradeConfig {
                external_addr: v,
                ..MasqueradeConfig::default()
            }),
        }
    }

    /// The virtual IP the peer assigned us, if we are a client that holds one.
    pub fn virtual_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.vip.map(|(_, v)| v)
    }

    /// An SA id for a data-plane SA no CHILD_SA holds (a direct SA of the connectivity
    /// manager): never one of the repository's live ids.
    pub fn alloc_direct_id(&mut self) -> SaId {
        self.alloc_id()
    }

    /// Gives back an id of [`alloc_direct_id`](Self::alloc_direct_id).
    pub fn release_direct_id(&mut self, id: SaId) {
        self.free_ids.insert(id.0);
    }

    /// The anti-replay window inbound SAs get.
    pub fn replay_window(&self) -> u32 {
        self.replay_window
    }

    fn alloc_id(&mut self) -> SaId {
        if let Some(id) = self.free_ids.pop_first() {
            return SaId(id);
        }
        let id = SaId(self.next_id);
        // Ids are recycled, so this counts live SAs; u32::MAX of them cannot exist.
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// The data-plane SAs of CHILD_SA `spi_in` (by its inbound SPI), if the repository holds it.
    pub fn child_sas(&self, spi_in: ChildSpi) -> Option<crate::core::durable::ChildSas> {
        let c = self.children.get(&spi_in)?;
        let [i, o] = &c.sas;
        Some(crate::core::durable::ChildSas {
            spi_in,
            in_id: i.id,
            spi_out: c.spi_out,
            out_id: o.id,
        })
    }

    /// Takes an adopted CHILD_SA under the SA ids it had, so that state kept or replicated
    /// by id stays attached to the same SA. A restarted control plane's CHILD_SA (from the
    /// store; `install` false) is still in the data plane, which kept its ids: no SA is
    /// installed (an outbound SA installed again would start its sequence numbers, the GCM
    /// nonces, from 1 under the same key) and only the policy updates are returned. One
    /// carried over from another node (an HA takeover; `install` true) comes with the
    /// updates that install it. Fails for an id or inbound SPI in use here.
    pub fn adopt_child(
        &mut self,
        info: &ChildSaInfo,
        in_id: SaId,
        out_id: SaId,
        install: bool,
    ) -> Result<Vec<Update>, RepoError> {
        let fail = |what: &str| RepoError::Child {
            name: info.name.clone(),
            what: what.to_owned(),
        };
        let dynamic = |id: SaId| id.0 >= FIRST_ID && id.0 < u32::MAX;
        if !dynamic(in_id) || !dynamic(out_id) || in_id == out_id {
            return Err(fail("stored SA ids out of range"));
        }
        if self.owner.contains_key(&in_id) || self.owner.contains_key(&out_id) {
            return Err(fail("stored SA id held by another CHILD_SA"));
        }
        if self.children.contains_key(&info.inbound.spi) {
            return Err(fail("inbound SPI held already"));
        }
        // Every id below the highest one seen is free unless a CHILD_SA holds it.
        for id in [in_id, out_id] {
            while self.next_id <= id.0 {
                self.free_ids.insert(self.next_id);
                self.next_id += 1;
            }
            self.free_ids.remove(&id.0);
        }
        let mut ups = self.child_up_with(info, Some((in_id, out_id)))?;
        if !install {
            ups.retain(|u| !matches!(u, Update::AddSa { .. }));
        }
        Ok(ups)
    }

    /// Marks an id a stored SA had as in use until its delete is queued (an SA the data plane
    /// may hold that no CHILD_SA owns any more): returns false if a CHILD_SA holds it.
    pub fn hold_orphan_id(&mut self, id: SaId) -> bool {
        if id.0 < FIRST_ID || id.0 == u32::MAX || self.owner.contains_key(&id) {
            return false;
        }
        while self.next_id <= id.0 {
            self.free_ids.insert(self.next_id);
            self.next_id += 1;
        }
        // Its delete is queued by the caller right away: reusable after it.
        self.free_ids.insert(id.0);
        true
    }

    fn child_up(&mut self, info: &ChildSaInfo) -> Result<Vec<Update>, RepoError> {
        self.child_up_with(info, None)
    }

    fn child_up_with(
        &mut self,
        info: &ChildSaInfo,
        ids: Option<(SaId, SaId)>,
    ) -> Result<Vec<Update>, RepoError> {
        let fail = |what: String| RepoError::Child {
            name: info.name.clone(),
            what,
        };
        let alg = esp_alg(info.inbound.encr_bits, info.inbound.integ).map_err(fail)?;
        let key_in =
            SaKeys::from_keymat(alg, &info.inbound.keymat).map_err(|e| fail(e.to_string()))?;
        let key_out =
            SaKeys::from_keymat(alg, &info.outbound.keymat).map_err(|e| fail(e.to_string()))?;
        let local_ts = info
            .local_ts
            .first()
            .map(ts_prefix)
            .ok_or_else(|| fail("no local selector".into()))?;
        let remote_ts = info
            .remote_ts
            .first()
            .map(ts_prefix)
            .ok_or_else(|| fail("no remote selector".into()))?;
        let encap = info.udp_encap.then_some(UdpEncap {
            local_port: info.local.port(),
            remote_port: info.remote.port(),
        });
        let (in_id, out_id) = match ids {
            Some(ids) => ids,
            None => (self.alloc_id(), self.alloc_id()),
        };
        let lifetime = self.lifetimes.get(&info.name).copied().unwrap_or_default();
        let common = |id: SaId, spi: ChildSpi, keys: SaKeys| SaParams {
            id,
            spi: Spi(spi.0),
            keys,
            esn: info.esn,
            replay_window: self.replay_window,
            local: info.local.ip(),
            remote: info.remote.ip(),
            encap,
            local_ts,
            remote_ts,
            outer_ttl: 64,
            resume: Default::default(),
            checkpoint: None,
            lifetime,
        };
        let inbound = common(in_id, info.inbound.spi, key_in);
        let outbound = common(out_id, info.outbound.spi, key_out);
        let kept = [inbound.clone(), outbound.clone()];
        let mut rules = Vec::new();
        for l in &info.local_ts {
            for r in &info.remote_ts {
                if l.start.is_ipv4() != r.start.is_ipv4() {
                    continue;
                }
                let id = self.next_rule;
                self.next_rule = self.next_rule.wrapping_add(1).max(FIRST_RULE);
                rules.push(Rule {
                    id,
                    selector: Selector {
                        src: ts_prefix(l),
                        dst: ts_prefix(r),
                        proto: (r.protocol != 0).then_some(r.protocol),
                        src_ports: PortRange {
                            lo: l.start_port,
                            hi: l.end_port,
                        },
                        dst_ports: PortRange {
                            lo: r.start_port,
                            hi: r.end_port,
                        },
                    },
                    action: Action::Protect(out_id),
                });
            }
        }
        let full =
            |t: &TrafficSelector| t.protocol == 0 && t.start_port == 0 && t.end_port == 65535;
        let host = match (info.local_ts.as_slice(), info.remote_ts.as_slice()) {
            ([l], [r]) if r.start == r.end && full(l) && full(r) => Some((r.start, ts_prefix(l))),
            _ => None,
        };
        // Make-before-break: the new inbound SA first, then the outbound, then the policy
        // moves over. The old SAs stay until IKE says the old CHILD_SA is gone.
        let mut ups = vec![
            Update::AddSa {
                dir: Direction::Inbound,
                params: inbound,
            },
            Update::AddSa {
                dir: Direction::Outbound,
                params: outbound,
            },
        ];
        let mut parked = Vec::new();
        let mut switch_now = true;
        if info.redundant {
            // Never used: installed only so that nothing the peer sends on it is lost, and
            // deleted by IKE right away.
            parked = core::mem::take(&mut rules);
            switch_now = false;
        } else if let Some(old) = info.rekey_of.and_then(|o| self.children.get_mut(&o)) {
            self.rekeyed += 1;
            if info.initiated_here {
                old.own_parked = core::mem::take(&mut old.rules);
            } else {
                // Keep sending on the old SA until the peer deletes it.
                old.successor = Some(info.inbound.spi);
                parked = core::mem::take(&mut rules);
                switch_now = false;
            }
        }
        self.children.insert(
            info.inbound.spi,
            ChildRec {
                name: info.name.clone(),
                spi_out: info.outbound.spi,
                out_id,
                rules,
                parked,
                successor: None,
                own_parked: Vec::new(),
                predecessor: info
                    .rekey_of
                    .filter(|_| info.initiated_here && !info.redundant),
                fallback: None,
                sas: kept,
                local: info.local.ip(),
                remote: info.remote.ip(),
                host,
            },
        );
        self.owner.insert(in_id, info.inbound.spi);
        self.owner.insert(out_id, info.inbound.spi);
        self.installed += 1;
        let touched = [Some(info.inbound.spi), info.rekey_of];
        ups.extend(self.policy_updates(&touched, None, switch_now));
        Ok(ups)
    }

    /// The policy updates after the CHILD_SAs `touched` (and `gone`, just removed) had their
    /// rules moved: host bindings by difference, the SPD only if `spd_changed` for a CHILD_SA
    /// that is not a host binding.
    fn policy_updates(
        &mut self,
        touched: &[Option<ChildSpi>],
        gone: Option<&ChildRec>,
        spd_changed: bool,
    ) -> Vec<Update> {
        let mut ups = Vec::new();
        let mut want = Vec::new();
        let mut drop = Vec::new();
        let mut spd = false;
        let live = touched
            .iter()
            .flatten()
            .filter_map(|s| self.children.get(s));
        for c in live.chain(gone) {
            match c.host {
                Some((dst, src))
                    if !c.rules.is_empty() && gone.is_none_or(|g| !std::ptr::eq(g, c)) =>
                {
                    want.push((dst, src, c.out_id))
                }
                Some((dst, _)) => drop.push((dst, c.out_id)),
                None => spd = true,
            }
        }
        for (dst, id) in drop {
            let ours = self.bound.get(&dst).is_some_and(|b| b.1 == id);
            if ours && !want.iter().any(|w| w.0 == dst) {
                self.bound.remove(&dst);
                ups.push(Update::UnbindHost { dst });
            }
        }
        for (dst, src, sa) in want {
            if self.bound.get(&dst) != Some(&(src, sa)) {
                self.bound.insert(dst, (src, sa));
                ups.push(Update::BindHost { dst, src, sa });
            }
        }
        if spd && spd_changed {
            ups.push(Update::ReplaceSpd {
                rules: self.rules(),
            });
        }
        ups
    }

    fn child_down(&mut self, spi_in: ChildSpi) -> Vec<Update> {
        let Some(c) = self.children.remove(&spi_in) else {
            return Vec::new();
        };
        self.removed += 1;
        let mut spd_changed = !c.rules.is_empty();
        let mut touched = [None; 3];
        if c.own_parked.is_empty() {
            // The peer's replacement takes over.
            if let Some(n) = c.successor.and_then(|s| self.children.get_mut(&s)) {
                n.rules = core::mem::take(&mut n.parked);
                spd_changed = true;
                touched[0] = c.successor;
            }
        } else if let Some(succ) = c.successor {
            // Both ends replaced it (a simultaneous rekey): ours carries the traffic; if ours
            // turns out to be the redundant one and goes, the peer's takes over then.
            if let Some(ours) = self
                .children
                .values_mut()
                .find(|o| o.predecessor == Some(spi_in))
            {
                ours.fallback = Some(succ);
            }
        }
        if !c.rules.is_empty() {
            // Our replacement went (we lost a simultaneous rekey): the old CHILD_SA carries
            // the traffic again if it is still there, else the peer's replacement.
            if let Some(p) = c.predecessor.and_then(|p| self.children.get_mut(&p)) {
                if p.rules.is_empty() {
                    p.rules = core::mem::take(&mut p.own_parked);
                    spd_changed = true;
                    touched[1] = c.predecessor;
                }
            } else if let Some(f) = c.fallback.and_then(|f| self.children.get_mut(&f)) {
                f.rules = core::mem::take(&mut f.parked);
                spd_changed = true;
                touched[2] = c.fallback;
            }
        }
        let mut ups = self.policy_updates(&touched, Some(&c), spd_changed);
        ups.push(Update::DeleteOutbound { id: c.out_id });
        ups.push(Update::DeleteInbound { spi: Spi(spi_in.0) });
        // Reused only by a CHILD_SA that comes later: its install follows these deletes, and
        // the policy above no longer names them.
        for p in &c.sas {
            self.owner.remove(&p.id);
            self.free_ids.insert(p.id.0);
        }
        ups
    }

    /// What a data plane that restarted empty may get back: every CHILD_SA's inbound SA and
    /// the policy — but no outbound SA. Its sequence number (the GCM nonce) died with the old
    /// data plane; installing it again would seal with nonces already used under the same
    /// key. The caller rekeys every CHILD_SA instead, and the new outbound SAs arrive with
    /// the rekeys.
    pub fn full_state(&self) -> Vec<Update> {
        let mut v = Vec::new();
        for c in self.children.values() {
            let [i, _] = &c.sas;
            v.push(Update::AddSa {
                dir: Direction::Inbound,
                params: i.clone(),
            });
        }
        v.push(Update::ReplaceSpd {
            rules: self.rules(),
        });
        v.extend(self.bound.iter().map(|(dst, (src, sa))| Update::BindHost {
            dst: *dst,
            src: *src,
            sa: *sa,
        }));
        if self.vip.is_some() {
            v.push(self.virtual_ip_update());
        }
        v
    }

    /// Replaces the gateway's static rules (a reload); returns the SPD update with the
    /// CHILD_SAs' rules ahead of the new static ones.
    pub fn set_static_rules(&mut self, rules: Vec<Rule>) -> Update {
        self.static_rules = rules;
        Update::ReplaceSpd {
            rules: self.rules(),
        }
    }

    /// The CHILD_SAs' rules (by inbound SPI; host bindings apart), then the static ones.
    pub fn rules(&self) -> Vec<Rule> {
        let mut r: Vec<Rule> = self
            .children
            .values()
            .rev()
            .filter(|c| c.host.is_none())
            .flat_map(|c| c.rules.iter().cloned())
            .collect();
        r.extend(self.static_rules.iter().cloned());
        r
    }
}

/// A configured prefix as an IKE traffic selector (all protocols and ports).
pub fn prefix_ts(p: &Prefix) -> TrafficSelector {
    let (start, end) = p.range();
    range_ts(start, end)
}

/// The prefix a selector's address range is, or the smallest one covering it.
pub fn ts_prefix(t: &TrafficSelector) -> Prefix {
    let (a, b, width) = match (t.start, t.end) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return Prefix::masked(t.start, 0),
    };
    let common = (a ^ b).leading_zeros().saturating_sub(128 - width);
    Prefix::masked(t.start, common as u8)
}

/// A test CHILD_SA of IKE SA 1 with AES-GCM-128 keys: `spi_in`/`spi_out`, ESN off, no
/// selectors, addresses or rekey; tests fill in what they need.
#[cfg(test)]
fn test_info(spi_in: u32, spi_out: u32) -> ChildSaInfo {
    let keys = |spi: u32, fill: u8| ike::ChildSaKeys {
        spi: ChildSpi(spi),
        encr_bits: 128,
        integ: None,
        keymat: zeroize::Zeroizing::new(vec![fill; 20]),
    };
    ChildSaInfo {
        ike: IkeSaId(ike::IkeSpi(1)),
        name: String::new(),
        inbound: keys(spi_in, 1),
        outbound: keys(spi_out, 2),
        esn: false,
        local_ts: Vec::new(),
        remote_ts: Vec::new(),
        local: "192.0.2.1:500".parse().unwrap(),
        remote: "192.0.2.2:500".parse().unwrap(),
        udp_encap: false,
        rekey_of: None,
        initiated_here: false,
        redundant: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ike::host_ts;

    fn info(spi_in: u32, spi_out: u32, rekey_of: Option<u32>) -> ChildSaInfo {
        info_by(spi_in, spi_out, rekey_of, true)
    }

    fn info_by(spi_in: u32, spi_out: u32, rekey_of: Option<u32>, here: bool) -> ChildSaInfo {
        ChildSaInfo {
            name: "rw".into(),
            esn: false,
            local_ts: vec![prefix_ts(&"10.9.0.0/24".parse().unwrap())],
            remote_ts: vec![prefix_ts(&"10.99.0.0/28".parse().unwrap())],
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.10:4500".parse().unwrap(),
            udp_encap: true,
            rekey_of: rekey_of.map(ChildSpi),
            initiated_here: here,
            ..test_info(spi_in, spi_out)
        }
    }

    #[test]
    fn an_adopted_child_keeps_the_ids_it_had_and_later_children_avoid_them() {
        let mut r = SaRepository::new(Vec::new(), 64);
        let (in_id, out_id) = (SaId(FIRST_ID + 5), SaId(FIRST_ID + 6));
        let ups = r
            .adopt_child(&info(0x10, 0x20, None), in_id, out_id, true)
            .unwrap();
        let added: Vec<(Direction, SaId)> = ups
            .iter()
            .filter_map(|u| match u {
                Update::AddSa { dir, params } => Some((*dir, params.id)),
                _ => None,
            })
            .collect();
        assert_eq!(
            added,
            [(Direction::Inbound, in_id), (Direction::Outbound, out_id)]
        );
        assert_eq!(
            r.child_of_sa(out_id, Spi(0x20)),
            Some(ChildSpi(0x10)),
            "reports about it name it"
        );
        // Its ids are in use: a second adoption of them is refused, fresh children get others.
        assert!(r
            .adopt_child(&info(0x11, 0x21, None), in_id, SaId(FIRST_ID + 9), true)
            .is_err());
        assert!(r
            .adopt_child(&info(0x11, 0x21, None), SaId(3), SaId(FIRST_ID + 9), true)
            .is_err());
        for n in 0..8u32 {
            let ups = r
                .on_event(&Event::ChildUp(info(0x100 + n, 0x200 + n, None)))
                .unwrap();
            for u in &ups {
                if let Update::AddSa { params, .. } = u {
                    assert!(params.id != in_id && params.id != out_id, "{:?}", params.id);
                }
            }
        }
    }

    #[test]
    fn selectors_become_prefixes() {
        assert_eq!(
            ts_prefix(&host_ts("10.99.0.1".parse().unwrap())),
            "10.99.0.1/32".parse().unwrap()
        );
        let t = prefix_ts(&"10.9.0.0/24".parse().unwrap());
        assert_eq!(ts_prefix(&t), "10.9.0.0/24".parse().unwrap());
        let mut odd = t;
        odd.end = "10.9.1.3".parse().unwrap();
        assert_eq!(
            ts_prefix(&odd),
            "10.9.0.0/23".parse().unwrap(),
            "the covering prefix"
        );
        let any = ike::any_v4();
        assert!(ts_prefix(&any).is_default());
    }

    /// A CHILD_SA negotiated with AES-CBC + HMAC installs as such, the KEYMAT split into the
    /// AES key and the HMAC key; a key of the wrong length is an error, not an install.
    #[test]
    fn a_cbc_child_installs_with_its_cipher_and_hmac_keys() {
        let mut c = info(0x1000, 0x2000, None);
        for k in [&mut c.inbound, &mut c.outbound] {
            k.encr_bits = 256;
            k.integ = Some(EspInteg::HmacSha256_128);
            k.keymat = zeroize::Zeroizing::new((0..64).collect());
        }
        let mut r = SaRepository::new(Vec::new(), 1024);
        let ups = r.on_event(&Event::ChildUp(c.clone())).unwrap();
        let Update::AddSa { params, .. } = &ups[0] else {
            panic!("{ups:?}")
        };
        assert_eq!(
            params.keys.alg,
            EspAlg::Cbc(CbcAlg::AesCbc256, IntegAlg::HmacSha256_128)
        );
        assert_eq!(params.keys.key(), &(0..32).collect::<Vec<u8>>()[..]);
        assert_eq!(params.keys.integ_key(), &(32..64).collect::<Vec<u8>>()[..]);
        let mut bad = c;
        bad.inbound.integ = Some(EspInteg::HmacSha512_256);
        assert!(SaRepository::new(Vec::new(), 1024)
            .on_event(&Event::ChildUp(bad))
            .is_err());
    }

    #[test]
    fn a_child_installs_in_then_out_then_policy_and_a_rekey_breaks_after_making() {
        let static_rule = Rule {
            id: 0,
            selector: Selector {
                src: "0.0.0.0/0".parse().unwrap(),
                dst: "0.0.0.0/0".parse().unwrap(),
                proto: None,
                src_ports: PortRange { lo: 0, hi: 65535 },
                dst_ports: PortRange { lo: 0, hi: 65535 },
            },
            action: Action::Discard,
        };
        let mut r = SaRepository::new(vec![static_rule], 1024);
        let ups = r
            .on_event(&Event::ChildUp(info(0x1000, 0x2000, None)))
            .unwrap();
        assert!(
            matches!(&ups[0], Update::AddSa { dir: Direction::Inbound, params } if params.spi == Spi(0x1000) && params.encap.is_some())
        );
        assert!(
            matches!(&ups[1], Update::AddSa { dir: Direction::Outbound, params } if params.spi == Spi(0x2000))
        );
        let Update::ReplaceSpd { rules } = &ups[2] else {
            panic!("{ups:?}")
        };
        assert_eq!(rules.len(), 2, "one protect rule before the static discard");
        let Action::Protect(first_out) = rules[0].action else {
            panic!()
        };
        assert_eq!(rules[0].selector.dst, "10.99.0.0/28".parse().unwrap());

        // Rekey: new SAs and the policy moves; nothing is deleted yet.
        let ups = r
            .on_event(&Event::ChildUp(info(0x1001, 0x2001, Some(0x1000))))
            .unwrap();
        assert_eq!(ups.len(), 3);
        let Update::ReplaceSpd { rules } = &ups[2] else {
            panic!()
        };
        assert_eq!(rules.len(), 2);
        assert_ne!(
            rules[0].action,
            Action::Protect(first_out),
            "the policy points at the new SA"
        );
        // The old CHILD_SA goes: its SAs are deleted, the policy is untouched.
        let ups = r
            .on_event(&Event::ChildDown {
                ike: IkeSaId(ike::IkeSpi(1)),
                spi_in: ChildSpi(0x1000),
                spi_out: ChildSpi(0x2000),
            })
            .unwrap();
        assert!(
            matches!(ups[..], [Update::DeleteOutbound { id }, Update::DeleteInbound { spi: Spi(0x1000) }] if id == first_out)
        );
        assert_eq!(r.children().len(), 1);
        // The last one goes: SPD back to the static rules.
        let ups = r
            .on_event(&Event::ChildDown {
                ike: IkeSaId(ike::IkeSpi(1)),
                spi_in: ChildSpi(0x1001),
                spi_out: ChildSpi(0x2001),
            })
            .unwrap();
        let Update::ReplaceSpd { rules } = &ups[0] else {
            panic!()
        };
        assert_eq!(rules.len(), 1);
    }
}

#[cfg(test)]
mod id_reuse_tests {
    use super::*;

    fn up(spi_in: u32, rekey_of: Option<u32>, here: bool) -> Event {
        Event::ChildUp(ChildSaInfo {
            name: "site".into(),
            esn: true,
            local_ts: vec![prefix_ts(&"10.1.0.0/24".parse().unwrap())],
            remote_ts: vec![prefix_ts(&"10.2.0.0/24".parse().unwrap())],
            local: "192.0.2.1:500".parse().unwrap(),
            remote: "192.0.2.2:500".parse().unwrap(),
            udp_encap: false,
            rekey_of: rekey_of.map(ChildSpi),
            initiated_here: here,
            ..test_info(spi_in, spi_in + 1)
        })
    }

    fn down(spi_in: u32) -> Event {
        Event::ChildDown {
            ike: IkeSaId(ike::IkeSpi(1)),
            spi_in: ChildSpi(spi_in),
            spi_out: ChildSpi(spi_in + 1),
        }
    }

    fn ids(ups: &[Update]) -> Vec<SaId> {
        ups.iter()
            .filter_map(|u| match u {
                Update::AddSa { params, .. } => Some(params.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ten_thousand_rekeys_reuse_a_handful_of_sa_ids() {
        // A worker's outbound index is as long as the highest id: it must follow the
        // CHILD_SAs alive (here one, two during a rekey), not the rekeys so far.
        let mut r = SaRepository::new(Vec::new(), 64);
        r.on_event(&up(0x100, None, true)).unwrap();
        let mut spi = 0x100;
        for k in 0..10_000u32 {
            let next = spi + 0x10;
            r.on_event(&up(next, Some(spi), k % 2 == 0)).unwrap();
            r.on_event(&down(spi)).unwrap();
            spi = next;
        }
        assert_eq!(r.children().len(), 1);
        assert_eq!(r.highest_id(), Some(SaId(FIRST_ID + 3)));
    }

    #[test]
    fn a_report_about_an_sa_that_went_does_not_name_the_child_that_reuses_its_id() {
        let mut r = SaRepository::new(Vec::new(), 64);
        let first = ids(&r.on_event(&up(0x100, None, true)).unwrap());
        r.on_event(&up(0x200, Some(0x100), true)).unwrap();
        let ups = r.on_event(&down(0x100)).unwrap();
        // The old SAs' deletes come before any reuse of their ids.
        assert!(ups
            .iter()
            .any(|u| matches!(u, Update::DeleteOutbound { id } if *id == first[1])));
        let third = ids(&r.on_event(&up(0x300, Some(0x200), true)).unwrap());
        assert_eq!(third, first, "the freed ids are handed out again");
        // A lifetime report about the old outbound SA (SPI 0x101) that was still on its
        // way: it names no CHILD_SA; one about the new SA with that id names the new one.
        assert_eq!(r.child_of_sa(first[1], Spi(0x101)), None);
        assert_eq!(r.child_of_sa(first[1], Spi(0x301)), Some(ChildSpi(0x300)));
        assert_eq!(r.child_of_sa(first[0], Spi(0x300)), Some(ChildSpi(0x300)));
    }
}

#[cfg(test)]
mod peer_rekey_tests {
    use super::*;

    fn info(spi_in: u32, spi_out: u32, rekey_of: Option<u32>) -> ChildSaInfo {
        ChildSaInfo {
            name: "rw".into(),
            esn: true,
            local_ts: vec![prefix_ts(&"10.9.0.0/24".parse().unwrap())],
            remote_ts: vec![prefix_ts(&"10.99.0.0/28".parse().unwrap())],
            local: "192.0.2.1:500".parse().unwrap(),
            remote: "192.0.2.10:500".parse().unwrap(),
            udp_encap: false,
            rekey_of: rekey_of.map(ChildSpi),
            initiated_here: false,
            ..test_info(spi_in, spi_out)
        }
    }

    #[test]
    fn a_rekey_the_peer_started_switches_only_when_the_old_child_goes() {
        let mut r = SaRepository::new(Vec::new(), 64);
        let ups = r.on_event(&Event::ChildUp(info(0x10, 0x20, None))).unwrap();
        let Update::ReplaceSpd { rules } = &ups[2] else {
            panic!()
        };
        let old_action = rules[0].action;
        // The peer rekeys: new SAs installed, the policy stays on the old outbound SA.
        let ups = r
            .on_event(&Event::ChildUp(info(0x11, 0x21, Some(0x10))))
            .unwrap();
        assert_eq!(ups.len(), 2, "in and out, no policy change: {ups:?}");
        assert_eq!(r.rules()[0].action, old_action);
        // The peer deletes the old CHILD_SA: switch, then delete the old SAs.
        let ups = r
            .on_event(&Event::ChildDown {
                ike: IkeSaId(ike::IkeSpi(1)),
                spi_in: ChildSpi(0x10),
                spi_out: ChildSpi(0x20),
            })
            .unwrap();
        let Update::ReplaceSpd { rules } = &ups[0] else {
            panic!("{ups:?}")
        };
        assert_ne!(rules[0].action, old_action);
        assert!(matches!(ups[1], Update::DeleteOutbound { .. }));
        assert!(matches!(ups[2], Update::DeleteInbound { spi: Spi(0x10) }));
    }
}

#[cfg(test)]
mod virtual_ip_tests {
    use super::*;
    use ike::{DownReason, IkeSpi};

    fn up(ike: u64, vip: &str, ours: bool) -> Event {
        Event::IkeUp {
            ike: IkeSaId(IkeSpi(ike)),
            peer: "home".into(),
            remote_id: "gw".into(),
            local: "192.0.2.10:500".parse().unwrap(),
            remote: "192.0.2.1:500".parse().unwrap(),
            virtual_ip: Some(vip.parse().unwrap()),
            virtual_ip_is_ours: ours,
        }
    }

    fn vip_of(u: &[Update]) -> Option<Option<std::net::Ipv4Addr>> {
        u.iter().find_map(|u| match u {
            Update::SetVirtualIp { config } => Some(config.as_ref().map(|c| c.external_addr)),
            _ => None,
        })
    }

    #[test]
    fn a_clients_virtual_ip_follows_its_ike_sa_through_rekeys_and_restarts() {
        let mut r = SaRepository::new(Vec::new(), 64);
        // A gateway that leased an address to its peer masquerades nothing.
        assert!(r.on_event(&up(7, "10.99.0.9", false)).unwrap().is_empty());
        let ups = r.on_event(&up(1, "10.99.0.5", true)).unwrap();
        assert_eq!(vip_of(&ups), Some(Some("10.99.0.5".parse().unwrap())));
        // A fresh data plane gets it back.
        assert_eq!(
            vip_of(&r.full_state()),
            Some(Some("10.99.0.5".parse().unwrap()))
        );
        // The rekeyed IKE SA keeps it; the old one going does not clear it.
        r.on_event(&Event::IkeRekeyed {
            old: IkeSaId(ike::IkeSpi(1)),
            new: IkeSaId(IkeSpi(2)),
            initiated_here: true,
        })
        .unwrap();
        let down = |ike| Event::IkeDown {
            ike: IkeSaId(IkeSpi(ike)),
            reason: DownReason::Deleted,
        };
        assert!(r.on_event(&down(1)).unwrap().is_empty());
        assert!(r.on_event(&down(7)).unwrap().is_empty());
        assert_eq!(r.virtual_ip(), Some("10.99.0.5".parse().unwrap()));
        let ups = r.on_event(&down(2)).unwrap();
        assert_eq!(vip_of(&ups), Some(None));
        assert_eq!(vip_of(&r.full_state()), None);
    }
}

#[cfg(test)]
mod host_binding_tests {
    use super::*;
    use ike::host_ts;

    /// A road warrior's CHILD_SA: 10.9.0.0/24 <-> its virtual IP 10.99.0.7.
    fn rw(spi_in: u32, rekey_of: Option<u32>, here: bool) -> Event {
        Event::ChildUp(ChildSaInfo {
            name: "rw".into(),
            esn: true,
            local_ts: vec![prefix_ts(&"10.9.0.0/24".parse().unwrap())],
            remote_ts: vec![host_ts("10.99.0.7".parse().unwrap())],
            local: "192.0.2.1:4500".parse().unwrap(),
            remote: "192.0.2.10:4500".parse().unwrap(),
            udp_encap: true,
            rekey_of: rekey_of.map(ChildSpi),
            initiated_here: here,
            ..test_info(spi_in, spi_in + 1)
        })
    }

    fn down(spi_in: u32) -> Event {
        Event::ChildDown {
            ike: IkeSaId(ike::IkeSpi(1)),
            spi_in: ChildSpi(spi_in),
            spi_out: ChildSpi(spi_in + 1),
        }
    }

    /// The policy part of some updates: ("bind", sa id) / ("unbind", 0) / ("spd", rules).
    fn policy(ups: &[Update]) -> Vec<(&'static str, u32)> {
        ups.iter()
            .filter_map(|u| match u {
                Update::BindHost { dst, sa, .. } => {
                    assert_eq!(*dst, "10.99.0.7".parse::<IpAddr>().unwrap());
                    Some(("bind", sa.0))
                }
                Update::UnbindHost { .. } => Some(("unbind", 0)),
                Update::ReplaceSpd { rules } => Some(("spd", rules.len() as u32)),
                _ => None,
            })
            .collect()
    }

    fn out_id(ups: &[Update]) -> u32 {
        ups.iter()
            .find_map(|u| match u {
                Update::AddSa {
                    dir: Direction::Outbound,
                    params,
                } => Some(params.id.0),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn a_road_warrior_is_a_host_binding_that_rekeys_make_before_break() {
        let mut r = SaRepository::new(Vec::new(), 64);
        let ups = r.on_event(&rw(0x100, None, false)).unwrap();
        let first = out_id(&ups);
        assert_eq!(policy(&ups), [("bind", first)], "no SPD recompile");
        assert!(r.rules().is_empty());

        // Our rekey: the binding moves to the new SA at once; the old SAs go later.
        let ups = r.on_event(&rw(0x200, Some(0x100), true)).unwrap();
        let second = out_id(&ups);
        assert_eq!(policy(&ups), [("bind", second)]);
        let ups = r.on_event(&down(0x100)).unwrap();
        assert_eq!(policy(&ups), []);
        assert!(matches!(ups[0], Update::DeleteOutbound { id } if id.0 == first));

        // The peer's rekey: the binding stays on the old SA until the peer deletes it, and
        // moves before the old SA is deleted.
        let ups = r.on_event(&rw(0x300, Some(0x200), false)).unwrap();
        let third = out_id(&ups);
        assert_eq!(policy(&ups), []);
        let ups = r.on_event(&down(0x200)).unwrap();
        assert_eq!(policy(&ups), [("bind", third)]);
        let bind_at = ups
            .iter()
            .position(|u| matches!(u, Update::BindHost { .. }))
            .unwrap();
        let del_at = ups
            .iter()
            .position(|u| matches!(u, Update::DeleteOutbound { .. }))
            .unwrap();
        assert!(bind_at < del_at);

        // A restarted data plane gets the binding back.
        assert_eq!(policy(&r.full_state()), [("spd", 0), ("bind", third)]);

        // The client leaves: unbound, then its SAs go.
        let ups = r.on_event(&down(0x300)).unwrap();
        assert_eq!(policy(&ups), [("unbind", 0)]);
        assert_eq!(policy(&r.full_state()), [("spd", 0)]);
    }

    #[test]
    fn a_simultaneous_rekey_leaves_the_binding_on_a_live_sa() {
        let mut r = SaRepository::new(Vec::new(), 64);
        r.on_event(&rw(0x100, None, false)).unwrap();
        // Both ends rekey 0x100: ours (0x200) switches at once, the peer's (0x300) parks.
        let ours = out_id(&r.on_event(&rw(0x200, Some(0x100), true)).unwrap());
        let peers = out_id(&r.on_event(&rw(0x300, Some(0x100), false)).unwrap());
        // Ours turns out redundant and goes first: the old one carries again...
        let ups = r.on_event(&down(0x200)).unwrap();
        assert_ne!(policy(&ups), [("unbind", 0)], "never left unbound: {ups:?}");
        let bound_after = *policy(&r.full_state()).last().unwrap();
        assert_eq!(bound_after.0, "bind");
        assert_ne!(bound_after.1, ours);
        // ...then the old one goes and the peer's takes over.
        let ups = r.on_event(&down(0x100)).unwrap();
        assert_eq!(policy(&ups), [("bind", peers)]);
    }
}
