//! The control core as a group member (`roamgate run` with a `group` section of role
//! member): the connection to the GCKS registers by GSA_AUTH (the endpoint's `join_group`),
//! the group keys it reports go to the data plane through [`MemberPlane`] (installed at once,
//! sending from the activation time, deleted at the deactivation time), the group's SPD
//! rules go ahead of the file's static ones, and an exclusion by the GCKS (a group restart)
//! registers again over the IKE SA.

use ike::group::session::GroupEvent;
use ike::wire::Id;
use ike::{Event, Instant};
use proto::policy::Rule;

use super::ControlCore;
use crate::group::member::{MemberPlane, MemberSetup};

/// The member's state in the core.
pub(super) struct GroupMember {
    pub group: Id,
    pub sender: bool,
    pub plane: MemberPlane,
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
            sender,
            plane,
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

    /// An endpoint event for the group member.
    pub(super) fn group_on_event(&mut self, now: Instant, e: &Event) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        let Event::Group(ge) = e else {
            return;
        };
        match ge {
            GroupEvent::Keys { sas, from, .. } => {
                g.plane.on_keys(now, sas);
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
                self.out.log(format!(
                    "group: excluded from {group} by the GCKS: registering again"
                ));
                let (gid, sender) = (g.group.clone(), g.sender);
                let up: Vec<ike::IkeSaId> = self
                    .endpoint
                    .list()
                    .into_iter()
                    .filter(|s| s.2)
                    .map(|s| s.0)
                    .collect();
                if let Some(ike) = up.first() {
                    let _ = self.endpoint.register_group(now, *ike, gid, sender);
                }
            }
            other => self.out.log(format!("group: {other:?}")),
        }
        self.group_flush();
    }

    pub(super) fn group_timeout(&mut self, now: Instant) {
        if let Some(g) = self.group.as_mut() {
            g.plane.handle_timeout(now);
        }
        self.group_flush();
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
