//! Control commands applied between bursts: each prepared [`Command`] is applied whole (an
//! SA swapped in, an SPD replaced, a host bound), acknowledged by generation, and whatever it
//! replaced goes back to the agent in [`Reply::Released`] to be freed (and its keys zeroized)
//! there. Also the per-SA counter list other threads read.
//!
//! Never builds a key schedule or compiles anything (the agent did); never applies a command
//! while replies wait for room (an acknowledgement must not overtake a release).

use core::net::IpAddr;

use super::{SaCounterEntry, Side, Worker};
use crate::esp::sa::{Checkpoint, EncapRule};
use crate::msg::{Command, Direction, Released, Reply};
use crate::port::Port;

impl<P: Port> Worker<P> {
    pub(super) fn apply_commands(&mut self) -> usize {
        while let Some(r) = self.replies_waiting.pop_front() {
            if let Err(rtrb::PushError::Full(r)) = self.control.replies.push(r) {
                self.replies_waiting.push_front(r);
                return 0;
            }
        }
        let mut applied = 0;
        // Bounded per turn so a flood of updates cannot starve the packets.
        while applied < 64 {
            let Ok(env) = self.control.commands.pop() else {
                break;
            };
            applied += 1;
            self.generation = env.generation;
            if let Err(why) = self.apply(env.command) {
                self.reply(Reply::Rejected {
                    worker: self.id,
                    generation: env.generation,
                    why,
                });
            }
        }
        if applied > 0 {
            self.counters
                .generation
                .add(self.generation - self.counters.generation.get());
            self.reply(Reply::Applied {
                worker: self.id,
                generation: self.generation,
            });
        }
        applied
    }

    pub(super) fn reply(&mut self, r: Reply) {
        if self.replies_waiting.is_empty() {
            if let Err(rtrb::PushError::Full(r)) = self.control.replies.push(r) {
                self.replies_waiting.push_back(r);
            }
        } else {
            self.replies_waiting.push_back(r);
        }
    }

    pub(super) fn release(&mut self, r: Released) {
        self.reply(Reply::Released(r));
    }

    fn apply(&mut self, cmd: Command) -> Result<(), &'static str> {
        match cmd {
            Command::AddInbound(mut sa) => {
                sa.counters.installed_at.set(self.now);
                if let Some(old) = self.sad.inbound(sa.spi) {
                    if old.id == sa.id && old.salt == sa.salt {
                        // The same SA again (a cluster edge's copy re-armed after a move):
                        // its window keeps what this worker received under it.
                        sa.replay.merge(&old.replay);
                    }
                }
                let e = SaCounterEntry {
                    id: sa.id,
                    spi: sa.spi,
                    direction: Direction::Inbound,
                    counters: sa.counters.clone(),
                };
                if let Some(old) = self.sad.insert_inbound(*sa) {
                    self.release(Released::Inbound(Box::new(old)));
                }
                self.list_upsert(e);
            }
            Command::AddOutbound(mut sa) => {
                sa.counters.installed_at.set(self.now);
                self.settle_checkpoints(&mut sa);
                let e = SaCounterEntry {
                    id: sa.id,
                    spi: sa.spi,
                    direction: Direction::Outbound,
                    counters: sa.counters.clone(),
                };
                let id = sa.id;
                // A record installed over this SA (a client back at an edge that still
                // drains it) starts its own hold, if it has one.
                self.holds.ends.retain(|(s, _)| *s != id);
                if let Some(old) = self.sad.insert_outbound(*sa) {
                    self.release(Released::Outbound(Box::new(old)));
                }
                self.publish_owner(id, true);
                self.list_upsert(e);
            }
            Command::DeleteInbound(spi) => match self.sad.remove_inbound(spi) {
                Some(old) => {
                    self.release(Released::Inbound(Box::new(old)));
                    self.list_remove((false, spi.0));
                }
                None => return Err("no inbound SA with that SPI"),
            },
            Command::DeleteOutbound(id) => match self.sad.remove_outbound(id) {
                Some(old) => {
                    self.holds.ends.retain(|(s, _)| *s != id);
                    self.publish_owner(id, false);
                    self.timed.stop(id);
                    // Its owner tracks its sequence numbers: the SA's last word is exact (it
                    // is out of the SAD in this command, nothing is sealed on it after).
                    if old.checkpoint.is_some_and(|c| c != Checkpoint::OFF) {
                        self.final_state(&old);
                    }
                    self.release(Released::Outbound(Box::new(old)));
                    self.list_remove((true, id.0));
                }
                None => return Err("no outbound SA with that id"),
            },
            Command::RebindOutbound {
                ids,
                local,
                remote,
                encap,
            } => {
                // All or none: checked first, so a refused rebind leaves every SA as it was.
                if local.is_ipv4() != remote.is_ipv4() {
                    return Err("rebind mixes address families");
                }
                for id in &ids {
                    match self.sad.outbound_mut(*id) {
                        Some(sa) if sa.local.is_ipv4() == local.is_ipv4() => {}
                        Some(_) => return Err("rebind would change the address family"),
                        None => return Err("no outbound SA with that id"),
                    }
                }
                // The peers whose encapsulation this move changes (MOBIKE turned NAT
                // traversal on or off): their inbound SAs accept both from now on
                // (`EncapRule`, RFC 4555 3.5).
                let mut switched: Vec<IpAddr> = Vec::new();
                for id in ids {
                    if let Some(sa) = self.sad.outbound_mut(id) {
                        if sa.encap.is_some() != encap.is_some() && !switched.contains(&sa.remote) {
                            switched.push(sa.remote);
                        }
                        sa.rebind(local, remote, encap);
                    }
                }
                for sa in self.sad.inbound_iter_mut() {
                    if switched.contains(&sa.remote) {
                        sa.accept = EncapRule::Either;
                        sa.remote = remote;
                    }
                }
            }
            Command::ReplaceSpd(spd) => {
                let old = core::mem::replace(&mut self.spd, spd);
                self.release(Released::Spd(old));
            }
            Command::ReplaceMasquerade(nat) => {
                if let Some(old) = core::mem::replace(&mut self.nat, nat) {
                    self.release(Released::Masquerade(old));
                }
                self.share_nat_ports();
            }
            Command::ReplaceVirtualIp(nat) => {
                if let Some(old) = core::mem::replace(&mut self.vip_nat, nat) {
                    self.release(Released::Masquerade(old));
                }
                self.share_nat_ports();
            }
            Command::BindHost { dst, src, sa } => {
                // A binding on probation that is proven becomes this one (direct only).
                self.dual.remove(&dst);
                self.hosts.insert(dst, (src, sa));
            }
            Command::BindHostDual { dst, src, sa } => {
                self.hosts.remove(&dst);
                self.dual.insert(dst, (src, sa));
            }
            Command::SetWanAddresses(addrs) => {
                let v4 = addrs.iter().find_map(|a| match a {
                    IpAddr::V4(v) => Some(*v),
                    IpAddr::V6(_) => None,
                });
                let v6 = addrs.iter().find_map(|a| match a {
                    IpAddr::V6(v) => Some(*v),
                    IpAddr::V4(_) => None,
                });
                self.wan_link.addr4 = v4;
                self.wan_link.addr6 = v6;
                self.wan_also = addrs
                    .into_iter()
                    .filter(|a| Some(*a) != v4.map(IpAddr::V4) && Some(*a) != v6.map(IpAddr::V6))
                    .collect();
            }
            Command::ReserveSeq { id, up_to } => self.reserve_seq(id, up_to)?,
            Command::CapSeq { id, ahead } => self.cap_seq(id, ahead)?,
            Command::ExportSa(which) => self.export_sa(which)?,
            Command::Announce { wan, addrs } => {
                let side = if wan { Side::Wan } else { Side::Lan };
                self.announce(side, &addrs)?;
            }
            Command::AddGroupSa { sa, send } => self.add_group_sa(sa, send)?,
            Command::DeleteGroupSa(spi) => self.delete_group_sa(spi)?,
            Command::SendOnGroupSa { id, spi } => self.group_send_on(id, spi)?,
            Command::SetGroupPeers(p) => self.set_group_peers(p),
            Command::SetMasqPlane(p) => self.masq_set_plane(p),
            Command::MasqFam {
                install,
                flow,
                masq,
            } => self.masq_fam(install, flow, masq, self.now),
            Command::MasqRoute { masq, route } => self.masq_route(masq, route, self.now),
            Command::MasqLink { node, out_sa } => self.masq_link(node, out_sa),
            Command::MasqLinkIn { spi, install } => self.masq_link_in(spi, install),
            Command::MasqUsers(t) => self.masq_users(t),
            Command::UnbindHost(dst) => {
                let probation = self.dual.remove(&dst).is_some();
                if self.hosts.remove(&dst).is_none() && !probation {
                    return Err("no host binding for that address");
                }
            }
        }
        Ok(())
    }

    /// The SA list readers see is kept up to date one entry at a time (an index from SA key
    /// to position), so installing the millionth SA costs what the first did.
    pub(super) fn list_upsert(&mut self, e: SaCounterEntry) {
        let key = list_key(&e);
        if let Ok(mut g) = self.sa_counters.lock() {
            match self.sa_index.get(&key) {
                Some(&i) if i < g.len() => g[i] = e,
                _ => {
                    self.sa_index.insert(key, g.len());
                    g.push(e);
                }
            }
        }
    }

    pub(super) fn list_remove(&mut self, key: (bool, u32)) {
        if let Ok(mut g) = self.sa_counters.lock() {
            if let Some(i) = self.sa_index.remove(&key) {
                if i < g.len() {
                    g.swap_remove(i);
                    if let Some(moved) = g.get(i) {
                        self.sa_index.insert(list_key(moved), i);
                    }
                }
            }
        }
    }
}

/// An SA's key in the readers' list: (outbound, id) or (inbound, SPI), as the SAD keys them.
fn list_key(e: &SaCounterEntry) -> (bool, u32) {
    match e.direction {
        Direction::Outbound => (true, e.id.0),
        Direction::Inbound => (false, e.spi.0),
    }
}
