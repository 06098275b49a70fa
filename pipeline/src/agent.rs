//! The data plane's control agent: turns plain [`Update`]s into prepared [`Command`]s, sends
//! them to a worker, collects acknowledgements and frees what workers released.
//!
//! Building an SA (key expansion, replay window allocation) or compiling an SPD happens here,
//! on the agent's thread, never on a worker. Released records are dropped here, after the
//! worker acknowledged it no longer holds them, which zeroizes their key material.

use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer, RingBuffer};

use crate::crypto::Backend;
use crate::esp::sa::{build_inbound, build_outbound, SaBuildError};
use crate::msg::{Command, Datagram, Direction, Envelope, Event, Reply, Update};
use crate::nat::Masquerade;
use crate::spd::{Spd, SpdError};
use crate::worker::ControlLink;

/// Why an update could not be turned into a command.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot build SA: {0}")]
    Sa(#[from] SaBuildError),
    #[error("cannot build group SA: {0}")]
    Group(#[from] crate::esp::group::GroupBuildError),
    #[error("cannot compile SPD: {0:?}")]
    Spd(SpdError),
    #[error("worker {worker} did not acknowledge generation {generation} within {waited:?}")]
    Timeout {
        worker: u16,
        generation: u64,
        waited: Duration,
    },
    #[error("worker {worker} rejected generation {generation}: {why}")]
    Rejected {
        worker: u16,
        generation: u64,
        why: &'static str,
    },
}

/// The agent's end of one worker's rings.
pub struct WorkerLink {
    pub worker: u16,
    commands: Producer<Envelope>,
    replies: Consumer<Reply>,
    /// Commands the ring had no room for yet (back-pressure: kept, sent in order later).
    backlog: std::collections::VecDeque<Envelope>,
    next_generation: u64,
    acked: u64,
    rejected: Vec<(u64, &'static str)>,
    /// Records released by the worker and dropped (zeroized) here.
    pub released: u64,
    /// The worker's reports, waiting for [`take_events`](Self::take_events).
    events: std::collections::VecDeque<Event>,
    pub events_dropped: u64,
}

/// Reports an agent keeps for its reader at most.
const MAX_EVENTS: usize = 4096;

/// Creates the rings between an agent and a worker. `capacity` commands may wait.
pub fn link(
    worker: u16,
    capacity: usize,
    punt: Option<Producer<Datagram>>,
) -> (WorkerLink, ControlLink) {
    let (ctx, crx) = RingBuffer::new(capacity);
    let (rtx, rrx) = RingBuffer::new(capacity * 2);
    (
        WorkerLink {
            worker,
            commands: ctx,
            replies: rrx,
            backlog: Default::default(),
            next_generation: 1,
            acked: 0,
            rejected: Vec::new(),
            released: 0,
            events: Default::default(),
            events_dropped: 0,
        },
        ControlLink {
            commands: crx,
            replies: rtx,
            punt,
            punt_cookie: None,
            transmit: None,
        },
    )
}

/// Prepares the command for an update (the expensive part, done off the worker).
pub fn prepare(backend: Backend, update: &Update) -> Result<Command, AgentError> {
    Ok(match update {
        Update::AddSa {
            dir: Direction::Inbound,
            params,
        } => Command::AddInbound(Box::new(build_inbound(backend, params)?)),
        Update::AddSa {
            dir: Direction::Outbound,
            params,
        } => Command::AddOutbound(Box::new(build_outbound(backend, params)?)),
        Update::DeleteInbound { spi } => Command::DeleteInbound(*spi),
        Update::DeleteOutbound { id } => Command::DeleteOutbound(*id),
        Update::RebindOutbound {
            ids,
            local,
            remote,
            encap,
        } => Command::RebindOutbound {
            ids: ids.clone(),
            local: *local,
            remote: *remote,
            encap: *encap,
        },
        Update::SetMasquerade { config } => {
            Command::ReplaceMasquerade(config.clone().map(|c| Box::new(Masquerade::new(c))))
        }
        Update::SetVirtualIp { config } => {
            Command::ReplaceVirtualIp(config.clone().map(|c| Box::new(Masquerade::new(c))))
        }
        Update::BindHost { dst, src, sa } => Command::BindHost {
            dst: *dst,
            src: *src,
            sa: *sa,
        },
        Update::BindHostDual { dst, src, sa } => Command::BindHostDual {
            dst: *dst,
            src: *src,
            sa: *sa,
        },
        Update::UnbindHost { dst } => Command::UnbindHost(*dst),
        Update::SetWanAddresses { addrs } => Command::SetWanAddresses(addrs.clone()),
        Update::ReplaceSpd { rules } => {
            Command::ReplaceSpd(Box::new(Spd::new(rules.clone()).map_err(AgentError::Spd)?))
        }
        Update::ReserveSeq { id, up_to } => Command::ReserveSeq {
            id: *id,
            up_to: *up_to,
        },
        Update::CapSeq { id, ahead } => Command::CapSeq {
            id: *id,
            ahead: *ahead,
        },
        Update::ExportSa { sa } => Command::ExportSa(*sa),
        Update::Announce { wan, addrs } => Command::Announce {
            wan: *wan,
            addrs: addrs.clone(),
        },
        Update::AddGroupSa { params } => Command::AddGroupSa {
            sa: Box::new(crate::esp::group::build_group(backend, params)?),
            send: params.send && params.sender_id.is_some(),
        },
        Update::DeleteGroupSa { spi } => Command::DeleteGroupSa(*spi),
        Update::SendOnGroupSa { id, spi } => Command::SendOnGroupSa { id: *id, spi: *spi },
        Update::SetGroupPeers {
            id,
            local,
            outer_ttl,
            peers,
            rekey_multicast,
        } => Command::SetGroupPeers(Box::new(
            crate::esp::group::GroupPeers::new(*id, *local, *outer_ttl, peers.clone())
                .with_rekey_multicast(*rekey_multicast),
        )),
        Update::SetMasqPlane { plane } => Command::SetMasqPlane(plane.clone().map(Box::new)),
        Update::MasqFam {
            install,
            flow,
            masq,
        } => Command::MasqFam {
            install: *install,
            flow: *flow,
            masq: *masq,
        },
        Update::MasqRoute { masq, route } => Command::MasqRoute {
            masq: *masq,
            route: *route,
        },
        Update::MasqLink { node, out_sa } => Command::MasqLink {
            node: *node,
            out_sa: *out_sa,
        },
        Update::MasqLinkIn { spi, install } => Command::MasqLinkIn {
            spi: *spi,
            install: *install,
        },
        Update::MasqUsers { table } => {
            Command::MasqUsers(Box::new(crate::masq::MasqUsersTable::new(table)))
        }
    })
}

impl WorkerLink {
    /// Queues a prepared command; returns its generation. Never drops: if the ring is full the
    /// command waits in the backlog and goes out on a later [`pump`](Self::pump).
    pub fn send(&mut self, command: Command) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.backlog.push_back(Envelope {
            generation,
            command,
        });
        self.pump();
        generation
    }

    /// Moves backlog into the ring and drains replies. Returns the highest acknowledged
    /// generation.
    pub fn pump(&mut self) -> u64 {
        while let Some(env) = self.backlog.pop_front() {
            if let Err(rtrb::PushError::Full(env)) = self.commands.push(env) {
                self.backlog.push_front(env);
                break;
            }
        }
        while let Ok(r) = self.replies.pop() {
            match r {
                Reply::Applied { generation, .. } => self.acked = self.acked.max(generation),
                Reply::Rejected {
                    generation, why, ..
                } => self.rejected.push((generation, why)),
                Reply::Event(e) => {
                    // Bounded: the oldest report goes first (counts are running totals, a
                    // newer report of the same kind carries what an older one did).
                    if self.events.len() >= MAX_EVENTS {
                        self.events.pop_front();
                        self.events_dropped += 1;
                    }
                    self.events.push_back(e);
                }
                Reply::Released(r) => {
                    // Dropping the record here zeroizes its keys (ZeroizeOnDrop in the AEAD
                    // backends): the worker has acknowledged it holds no reference.
                    drop(r);
                    self.released += 1;
                }
            }
        }
        self.acked
    }

    /// The worker's reports since the last call, oldest first.
    pub fn take_events(&mut self) -> std::collections::VecDeque<Event> {
        core::mem::take(&mut self.events)
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Waits (polling, with short sleeps: this is the control path) until `generation` is
    /// acknowledged.
    pub fn wait_for(&mut self, generation: u64, timeout: Duration) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            if let Some((_, why)) = self.rejected.iter().find(|(g, _)| *g == generation) {
                return Err(AgentError::Rejected {
                    worker: self.worker,
                    generation,
                    why,
                });
            }
            if self.pump() >= generation {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(AgentError::Timeout {
                    worker: self.worker,
                    generation,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Rejections seen so far (generation, reason).
    pub fn rejections(&self) -> &[(u64, &'static str)] {
        &self.rejected
    }
}
