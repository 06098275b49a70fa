//! The control core as a group member (`roamgate run` with a `group` section of role
//! member): the connection to the GCKS registers by GSA_AUTH (the endpoint's `join_group`),
//! the group keys it reports go to the data plane through [`MemberPlane`] (installed at once,
//! sending from the activation time, deleted at the deactivation time), the group's SPD
//! rules go ahead of the file's static ones. It registers again (GSA_REGISTRATION over the IKE
//! SA it registered over, or a new IKE SA of the connection, whose GSA_AUTH registers) when
//! the GCKS excluded it (a group restart), when a rekey was lost (the endpoint's Message ID
//! gap, the member plane's GSA_NEXT_SPI and expiry watches), when its Sender-ID no longer
//! fits, and when the worker holding the group's SAs restarted.

use ike::group::member::RegisterWhy;
use ike::group::session::GroupEvent;
use ike::wire::Id;
use ike::{Event, Instant};
use proto::policy::Rule;
use proto::Spi;

use super::ControlCore;
use crate::group::member::{MemberPlane, MemberSetup};

/// The member's state in the core.
pub(super) struct GroupMember {
    pub group: Id,
    /// The connection to the GCKS.
    pub conn: String,
    pub sender: bool,
    pub plane: MemberPlane,
    /// Registrations started after the first, for the view and tests.
    pub reregistrations: u64,
}

impl ControlCore {
    /// Joins `group` through connection `conn` (its next IKE SA registers by GSA_AUTH), as a
    /// sender if `sender`; `setup` says where the other members' LANs are; `static_rules` are
    /// the file's (the group's rules go ahead of them).
    pub fn join_group(
        &mut self,
        conn: &str,
        group: Id,
        sender: bool,
        setup: MemberSetup,
        static_rules: Vec<Rule>,
    ) {
        self.endpoint.join_group(conn, group.clone(), sender);
        let plane = MemberPlane::new(setup);
        let mut rules = plane.rules();
        rules.extend(static_rules);
        self.out.log(format!(
            "group: member of {} through connection {conn}: {} SPD rule(s) to the other members' LANs",
            group.display(),
            plane.rules().len()
        ));
        let peers = plane.peers_update();
        self.group = Some(GroupMember {
            group,
            conn: conn.to_owned(),
            sender,
            plane,
            reregistrations: 0,
        });
        let u = self.repo.set_static_rules(rules);
        self.route(u);
        if let Some(u) = peers {
            self.route(u);
        }
    }

    /// The member plane (its counts and generations), if this gateway is a group member.
    pub fn group_member(&self) -> Option<&MemberPlane> {
        self.group.as_ref().map(|g| &g.plane)
    }

    /// The member's part of the view: its generations (SPI, sending), registrations started
    /// again and the member plane's counts. Never keys.
    pub(super) fn group_view(&self) -> Option<serde_json::Value> {
        let g = self.group.as_ref()?;
        let c = &g.plane.counts;
        Some(serde_json::json!({
            "group": g.group.display(),
            "generations": g.plane.generations().iter()
                .map(|(spi, send)| serde_json::json!({ "spi": format!("{spi:#010x}"), "sending": send }))
                .collect::<Vec<_>>(),
            "reregistrations": g.reregistrations,
            "rekey_multicast": g.plane.rekey_multicast().map(|a| a.to_string()),
            "rereg_next_spi": c.rereg_next_spi,
            "rereg_expiring": c.rereg_expiring,
            "rereg_data_plane": c.rereg_data_plane,
            "installed": c.installed,
            "deleted": c.deleted,
            "refused": c.refused,
        }))
    }

    /// Registrations this member started again (after an exclusion, a lost rekey, ...).
    pub fn group_reregistrations(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.reregistrations)
    }

    /// Registers again: GSA_REGISTRATION over the IKE SA the membership went over (or another
    /// established one of the GCKS's connection); without one, a new IKE SA of that
    /// connection (its GSA_AUTH registers), unless one is being set up.
    fn group_register_again(&mut self, now: Instant, why: &str) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        g.reregistrations += 1;
        let (gid, sender, conn) = (g.group.clone(), g.sender, g.conn.clone());
        self.out.log(format!(
            "group: registering again to {}: {why}",
            gid.display()
        ));
        let list = self.endpoint.list();
        let ike = self
            .endpoint
            .group_ike(&gid)
            .or_else(|| list.iter().find(|s| s.1 == conn && s.2).map(|s| s.0));
        match ike {
            Some(ike) => {
                if let Err(e) = self.endpoint.register_group(now, ike, gid, sender) {
                    self.out.error(format!("group: cannot register again: {e}"));
                }
            }
            None if list.iter().any(|s| s.1 == conn) => {
                // Being set up: its GSA_AUTH registers.
            }
            None => self.connect(now, &conn, "group: "),
        }
    }

    /// ESP on an unknown SPI of the group range (the data plane's report): never answered
    /// with INVALID_SPI (the sender is another member, with no IKE SA with us); the SPI the
    /// GCKS reserved for the next SA means a lost rekey.
    pub(super) fn group_unknown_spi(&mut self, now: Instant, spi: Spi) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        if g.plane.on_unknown_spi(spi.0) {
            self.group_check_reregister(now);
        }
    }

    /// Worker `worker` restarted empty: if it held the group's SAs (every group SPI's owner
    /// is the same worker), they are gone: the tunnel endpoints go again and the member
    /// registers again (a new Sender-ID: the old generations' counters are gone).
    pub(super) fn group_worker_fresh(&mut self, now: Instant, worker: u16) {
        // Group SPIs share their top bits, so any one names the worker.
        if self.placement.inbound_owner(Spi(0xff00_0000)) != worker {
            return;
        }
        let Some(g) = self.group.as_mut() else {
            return;
        };
        g.plane.data_plane_lost();
        if let Some(u) = g.plane.peers_update() {
            self.out.update(worker, u);
        }
        self.group_check_reregister(now);
    }

    fn group_check_reregister(&mut self, now: Instant) {
        let want = self.group.as_mut().and_then(|g| g.plane.take_reregister());
        if let Some(why) = want {
            self.group_register_again(now, &why.to_string());
        }
        self.group_flush();
    }

    /// An endpoint event for the group member.
    pub(super) fn group_on_event(&mut self, now: Instant, e: &Event) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        let Event::Group(ge) = e else {
            return;
        };
        match ge {
            GroupEvent::Keys {
                sas,
                from,
                next_spis,
                rekey_multicast,
                ..
            } => {
                let rekey = *from != ike::group::session::KeysFrom::Registration;
                g.plane.on_rekey_multicast(*rekey_multicast);
                g.plane.on_keys(now, sas, next_spis, rekey);
                self.out.log(format!(
                    "group: keys ({from:?}): {} generation(s): {}",
                    sas.len(),
                    sas.iter()
                        .map(|s| format!("{:#010x}", s.spi))
                        .collect::<Vec<_>>()
                        .join(" ")
                ));
            }
            GroupEvent::Excluded { group } => {
                let why = format!("excluded from {group} by the GCKS");
                self.group_register_again(now, &why);
            }
            GroupEvent::MustRegister { why, .. } => {
                let why = match why {
                    RegisterWhy::RekeyGap { expected, got } => format!(
                        "GSA_REKEY Message ID {got} where {expected} was due: a rekey was lost"
                    ),
                    RegisterWhy::SenderIdUnfit { sender_id, bits } => {
                        format!("Sender-ID {sender_id} does not fit the group's {bits} bits")
                    }
                };
                self.group_register_again(now, &why);
            }
            GroupEvent::Refused { .. } => {
                self.out.log(format!("group: {ge:?}"));
                g.plane.on_refused(now);
            }
            other => self.out.log(format!("group: {other:?}")),
        }
        self.group_flush();
    }

    pub(super) fn group_timeout(&mut self, now: Instant) {
        if let Some(g) = self.group.as_mut() {
            g.plane.handle_timeout(now);
        }
        self.group_check_reregister(now);
    }

    pub(super) fn group_deadline(&self) -> Option<Instant> {
        self.group.as_ref().and_then(|g| g.plane.poll_timeout())
    }

    fn group_flush(&mut self) {
        let ups = self
            .group
            .as_mut()
            .map(|g| g.plane.take_updates())
            .unwrap_or_default();
        for u in ups {
            self.route(u);
        }
    }
}
