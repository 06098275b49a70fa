use super::*;
use proto::sa::{Checkpoint, ReplayState, Resume, SaRef, SaState};

const MS: u64 = 1_000_000;

/// The rig's outbound SA (id 1, SPI 0xa001) again, continuing from `resume`.
fn outbound_from(resume: Resume, checkpoint: Option<Checkpoint>) -> Update {
    let mut p = sa(
        1,
        0xa001,
        "192.0.2.1",
        "192.0.2.2",
        "10.1.0.0/24",
        "10.2.0.0/24",
    );
    p.resume = resume;
    p.checkpoint = checkpoint;
    Update::AddSa {
        dir: Direction::Outbound,
        params: p,
    }
}

/// (sequence number field, the 64-bit explicit IV) of every ESP frame on the rig's WAN.
fn sent_seqs(r: &mut Rig) -> Vec<(u32, u64)> {
    std::iter::from_fn(|| r.wan.recv())
        .map(|f| {
            let ip = outer_ipv4(&f);
            assert_eq!(ip.next_header(), IpProtocol::Esp);
            let esp = esp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!(esp.spi(), 0xa001);
            let iv = u64::from_be_bytes(esp.payload()[..8].try_into().unwrap());
            (esp.seq_number(), iv)
        })
        .collect()
}

fn events(r: &mut Rig) -> Vec<Event> {
    r.agent.pump();
    r.agent.take_events().into()
}

fn checkpoints(r: &mut Rig) -> Vec<(u64, Option<u64>)> {
    events(r)
        .into_iter()
        .filter_map(|e| match e {
            Event::SeqCheckpoint {
                id,
                spi,
                seq,
                seq_reserved,
                ..
            } => {
                assert_eq!((id, spi), (SaId(1), Spi(0xa001)));
                Some((seq, seq_reserved))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_starting_sequence_number_is_respected_on_the_wire() {
    let mut r = rig(1500);
    // Past 2^32, so the ESN high half is in play: the wire carries the low half, the IV all.
    let start = (1u64 << 32) + 1000;
    r.update(outbound_from(
        Resume {
            seq: start,
            ..Resume::default()
        },
        None,
    ));
    for _ in 0..5 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let sent = sent_seqs(&mut r);
    let want: Vec<(u32, u64)> = (start + 1..=start + 5).map(|s| (s as u32, s)).collect();
    assert_eq!(sent, want, "never at or below the start, never twice");

    // The peer, continuing its inbound window from a state at the same point, opens them.
    let mut peer = rig(1500);
    let mut p = sa(
        2,
        0xa001,
        "192.0.2.2",
        "192.0.2.1",
        "10.2.0.0/24",
        "10.1.0.0/24",
    );
    p.resume.replay = Some(ReplayState {
        top: start,
        seen: vec![1],
    });
    peer.update(Update::AddSa {
        dir: Direction::Inbound,
        params: p,
    });
    for _ in 0..3 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    for mut f in std::iter::from_fn(|| r.wan.recv()).collect::<Vec<_>>() {
        readdress(&mut f, WAN_MAC, PEER_MAC);
        assert!(peer.wan.send(f).is_ok());
    }
    peer.w.poll(2);
    assert_eq!(std::iter::from_fn(|| peer.lan.recv()).count(), 3);
}

#[test]
fn a_reservation_is_never_passed_and_only_ever_raised() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 100,
            seq_reserved: Some(103),
            hold_us: 0,
            replay: None,
        },
        None,
    ));
    for _ in 0..5 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let seqs: Vec<u32> = sent_seqs(&mut r).into_iter().map(|s| s.0).collect();
    assert_eq!(seqs, [101, 102, 103]);
    assert_eq!(r.drops(DropReason::SeqNotReserved), 2);
    r.update(Update::ReserveSeq {
        id: SaId(1),
        up_to: 105,
    });
    // An older reservation arriving late changes nothing.
    r.update(Update::ReserveSeq {
        id: SaId(1),
        up_to: 101,
    });
    for _ in 0..3 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let seqs: Vec<u32> = sent_seqs(&mut r).into_iter().map(|s| s.0).collect();
    assert_eq!(seqs, [104, 105]);
    assert_eq!(r.drops(DropReason::SeqNotReserved), 3);
    // The protocol's own limit is another reason.
    r.update(outbound_from(
        Resume {
            seq: u64::MAX - 1,
            ..Resume::default()
        },
        None,
    ));
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert_eq!(sent_seqs(&mut r).len(), 1);
    assert_eq!(r.drops(DropReason::SeqExhausted), 1);
    // A reservation for an SA that is not there is refused, not fatal.
    let g = r.agent.send(
        agent::prepare(
            crate::crypto::best_backend(),
            &Update::ReserveSeq {
                id: SaId(9),
                up_to: 1,
            },
        )
        .unwrap(),
    );
    r.w.poll(3);
    r.agent.pump();
    assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
}

#[test]
fn export_reports_the_sequence_number_and_the_replay_window() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 500,
            seq_reserved: Some(10_000),
            hold_us: 0,
            replay: None,
        },
        None,
    ));
    for _ in 0..7 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let _ = sent_seqs(&mut r);
    // The peer sends the rig numbers 1..=10; 4 and 9 get lost on the way.
    let mut peer = mirror_peer();
    let mut frames = Vec::new();
    for _ in 0..10 {
        peer.send_lan("10.2.0.7", "10.1.0.10", 100);
        frames.push(peer.wan.recv().expect("sealed"));
    }
    for (i, mut f) in frames.into_iter().enumerate() {
        if i == 3 || i == 8 {
            continue;
        }
        readdress(&mut f, WAN_MAC, PEER_MAC);
        assert!(r.wan.send(f).is_ok());
    }
    r.w.poll(4);
    let _ = events(&mut r);
    r.update(Update::ExportSa {
        sa: SaRef::Outbound(SaId(1)),
    });
    let g_out = r.agent.acked();
    r.update(Update::ExportSa {
        sa: SaRef::Inbound(Spi(0xb001)),
    });
    let g_in = r.agent.acked();
    let ev = events(&mut r);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(
        ev[0],
        Event::SaState {
            worker: 0,
            generation: g_out,
            id: SaId(1),
            spi: Spi(0xa001),
            state: SaState::Outbound {
                seq: 507,
                seq_reserved: Some(10_000),
            },
        }
    );
    let Event::SaState {
        generation,
        id,
        spi,
        state: SaState::Inbound { replay },
        ..
    } = &ev[1]
    else {
        panic!("{:?}", ev[1]);
    };
    assert_eq!((*generation, *id, *spi), (g_in, SaId(2), Spi(0xb001)));
    assert_eq!(replay.top, 10);
    // Bit i is number 10 - i: 10..=1 received except 9 (bit 1) and 4 (bit 6).
    assert_eq!(replay.seen, vec![0b11_1011_1101]);
    // An SA that is not there is refused, not fatal.
    let g = r.agent.send(
        agent::prepare(
            crate::crypto::best_backend(),
            &Update::ExportSa {
                sa: SaRef::Inbound(Spi(0x999)),
            },
        )
        .unwrap(),
    );
    r.w.poll(5);
    r.agent.pump();
    assert!(r.agent.rejections().iter().any(|(gen, _)| *gen == g));
}

#[test]
fn checkpoints_come_every_n_packets() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 1000,
            seq_reserved: Some(1_000_000),
            hold_us: 0,
            replay: None,
        },
        Some(Checkpoint {
            packets: 4,
            millis: 0,
        }),
    ));
    for _ in 0..10 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    assert_eq!(sent_seqs(&mut r).len(), 10);
    assert_eq!(
        checkpoints(&mut r),
        [(1004, Some(1_000_000)), (1008, Some(1_000_000))]
    );
    // Off: none.
    r.update(outbound_from(Resume::default(), Some(Checkpoint::OFF)));
    for _ in 0..10 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    assert!(checkpoints(&mut r).is_empty());
}

#[test]
fn a_deleted_outbound_sa_with_checkpoints_reports_its_last_number() {
    let mut r = rig(1500);
    let every = Some(Checkpoint {
        packets: 4,
        millis: 0,
    });
    r.update(outbound_from(
        Resume {
            seq: 1000,
            seq_reserved: Some(1_000_000),
            hold_us: 0,
            replay: None,
        },
        every,
    ));
    // Between checkpoints: the last one said 1004, the SA used 1006.
    for _ in 0..6 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    assert_eq!(sent_seqs(&mut r).len(), 6);
    let _ = events(&mut r);
    r.update(Update::DeleteOutbound { id: SaId(1) });
    let g = r.agent.acked();
    assert_eq!(
        events(&mut r),
        [Event::SaState {
            worker: 0,
            generation: g,
            id: SaId(1),
            spi: Spi(0xa001),
            state: SaState::Outbound {
                seq: 1006,
                seq_reserved: Some(1_000_000),
            },
        }]
    );
    // Nothing is sealed on it after its last word.
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert!(sent_seqs(&mut r).is_empty());
    // Without checkpoints nobody tracks its numbers: no word.
    r.update(outbound_from(Resume::default(), Some(Checkpoint::OFF)));
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    r.update(Update::DeleteOutbound { id: SaId(1) });
    assert!(events(&mut r).is_empty());
}

#[test]
fn a_capped_outbound_sa_reports_its_ceiling_and_never_passes_it() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 1000,
            seq_reserved: Some(1_000_000),
            hold_us: 0,
            replay: None,
        },
        None,
    ));
    for _ in 0..3 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    assert_eq!(sent_seqs(&mut r).len(), 3);
    let _ = events(&mut r);
    r.update(Update::CapSeq {
        id: SaId(1),
        ahead: 2,
    });
    let g = r.agent.acked();
    assert_eq!(
        events(&mut r),
        [Event::SaState {
            worker: 0,
            generation: g,
            id: SaId(1),
            spi: Spi(0xa001),
            state: SaState::Outbound {
                seq: 1003,
                seq_reserved: Some(1005),
            },
        }]
    );
    for _ in 0..4 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let seqs: Vec<u32> = sent_seqs(&mut r).into_iter().map(|s| s.0).collect();
    assert_eq!(seqs, [1004, 1005]);
    assert_eq!(r.drops(DropReason::SeqNotReserved), 2);
    // A cap never raises: a wider one later keeps the ceiling.
    r.update(Update::CapSeq {
        id: SaId(1),
        ahead: 100,
    });
    r.send_lan("10.1.0.10", "10.2.0.7", 100);
    assert!(sent_seqs(&mut r).is_empty());
}

#[test]
fn checkpoints_come_every_t_milliseconds_of_the_workers_clock() {
    let mut r = rig(1500);
    // The worker's default, for SAs installed without their own.
    r.w.set_checkpoint_default(Checkpoint {
        packets: 0,
        millis: 100,
    });
    r.update(outbound_from(Resume::default(), None));
    let send_at = |r: &mut Rig, now: u64| {
        let mut g = Generator::new(
            vec![FlowSpec {
                src_mac: HOST_MAC,
                dst_mac: LAN_MAC,
                src: "10.1.0.10".parse().unwrap(),
                dst: "10.2.0.7".parse().unwrap(),
                src_port: 1,
                dst_port: 2,
            }],
            &[100],
        );
        let mut f = MemFrame::new();
        g.fill(&mut f, 0);
        assert!(r.lan.send(f).is_ok());
        r.w.poll(now);
    };
    // Installed at t = 0: the first deadline is at 100 ms.
    send_at(&mut r, 10 * MS);
    send_at(&mut r, 20 * MS);
    r.w.poll(99 * MS);
    assert!(checkpoints(&mut r).is_empty());
    r.w.poll(100 * MS);
    assert_eq!(checkpoints(&mut r), [(2, None)]);
    // Nothing sent since: nothing to say at 200 ms.
    r.w.poll(200 * MS);
    assert!(checkpoints(&mut r).is_empty());
    send_at(&mut r, 250 * MS);
    r.w.poll(299 * MS);
    assert!(checkpoints(&mut r).is_empty());
    r.w.poll(300 * MS);
    assert_eq!(checkpoints(&mut r), [(3, None)]);
    // A worker that was away for a second does not send ten at once.
    send_at(&mut r, 310 * MS);
    r.w.poll(1300 * MS);
    assert_eq!(checkpoints(&mut r), [(4, None)]);
    // A deleted SA's deadline goes quietly; a replaced one runs on its own clock.
    r.update(Update::DeleteOutbound { id: SaId(1) });
    r.w.poll(1500 * MS);
    assert!(checkpoints(&mut r).is_empty());
    r.clock = 1500 * MS;
    r.update(outbound_from(
        Resume {
            seq: 40,
            seq_reserved: Some(41),
            hold_us: 0,
            replay: None,
        },
        Some(Checkpoint {
            packets: 0,
            millis: 50,
        }),
    ));
    send_at(&mut r, 1510 * MS);
    send_at(&mut r, 1520 * MS);
    // Installed at 1500 ms, it checkpoints at 1550 and then every 50 ms; held at its
    // reservation, it says so at every deadline, so a lost checkpoint cannot stall it.
    r.w.poll(1600 * MS);
    assert_eq!(checkpoints(&mut r), [(41, Some(41))]);
    r.w.poll(1700 * MS);
    assert_eq!(checkpoints(&mut r), [(41, Some(41))]);
}

#[test]
fn the_warning_before_the_limit_and_checkpoints_do_not_hide_each_other() {
    let mut r = rig(1500);
    // No ESN on this one: the limit is 2^32 - 1, the warning 2^24 before it.
    let mut p = sa(
        1,
        0xa001,
        "192.0.2.1",
        "192.0.2.2",
        "10.1.0.0/24",
        "10.2.0.0/24",
    );
    p.esn = false;
    let warn_at = u64::from(u32::MAX) - (1 << 24);
    p.resume.seq = warn_at - 2;
    p.checkpoint = Some(Checkpoint {
        packets: 2,
        millis: 0,
    });
    r.update(Update::AddSa {
        dir: Direction::Outbound,
        params: p,
    });
    for _ in 0..4 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let ev = events(&mut r);
    let near: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::SeqNearWrap { seq, limit, .. } => {
                assert_eq!(*limit, u64::from(u32::MAX));
                Some(*seq)
            }
            _ => None,
        })
        .collect();
    let cps: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::SeqCheckpoint { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(near, [warn_at], "once");
    assert_eq!(cps, [warn_at, warn_at + 2]);
}

/// The peer's inbound form of the rig's outbound SA (SPI 0xa001), watched or not.
fn watched_inbound(watch: bool, floor: Option<ReplayState>) -> Update {
    let mut p = sa(
        2,
        0xa001,
        "192.0.2.2",
        "192.0.2.1",
        "10.2.0.0/24",
        "10.1.0.0/24",
    );
    p.checkpoint = watch.then_some(Checkpoint::OFF);
    p.resume.replay = floor;
    Update::AddSa {
        dir: Direction::Inbound,
        params: p,
    }
}

fn first_uses(r: &mut Rig) -> Vec<u64> {
    events(r)
        .into_iter()
        .filter_map(|e| match e {
            Event::SaState {
                generation: 0,
                spi,
                state: SaState::Inbound { replay },
                ..
            } => {
                assert_eq!(spi, Spi(0xa001));
                Some(replay.top)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_watched_inbound_sa_reports_its_first_packet_once_and_a_copy_installed_again_keeps_its_window()
{
    let mut r = rig(1500);
    r.update(outbound_from(Resume::default(), None));
    for _ in 0..4 {
        r.send_lan("10.1.0.10", "10.2.0.7", 100);
    }
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| r.wan.recv())
        .map(|mut f| {
            readdress(&mut f, WAN_MAC, PEER_MAC);
            f.data().to_vec()
        })
        .collect();
    assert_eq!(frames.len(), 4);
    let mut peer = rig(1500);
    peer.update(watched_inbound(true, None));
    let deliver = |peer: &mut Rig, which: &[usize]| -> usize {
        for i in which {
            let f = crate::port::mem::MemFrame::from_bytes(&frames[*i]).unwrap();
            assert!(peer.wan.send(f).is_ok());
            peer.w.poll(2);
        }
        std::iter::from_fn(|| peer.lan.recv()).count()
    };
    // Seq 1 and 2 here: one report, on the first, with the window after it.
    assert_eq!(deliver(&mut peer, &[0, 1]), 2);
    assert_eq!(first_uses(&mut peer), vec![1]);
    // Installed again over itself, watched, with a floor another copy reported (seq 3 was
    // received elsewhere): its own 1 and 2 stay refused, and so is 3.
    peer.update(watched_inbound(
        true,
        Some(ReplayState {
            top: 3,
            seen: vec![1],
        }),
    ));
    assert_eq!(deliver(&mut peer, &[0, 1, 2]), 0, "replays refused");
    assert_eq!(
        first_uses(&mut peer),
        Vec::<u64>::new(),
        "no packet was authentic and new"
    );
    // Seq 4 is new: accepted and, the copy being watched again, reported once.
    assert_eq!(deliver(&mut peer, &[3, 3]), 1);
    assert_eq!(first_uses(&mut peer), vec![4]);

    // An unwatched SA never reports.
    let mut quiet = rig(1500);
    quiet.update(watched_inbound(false, None));
    assert_eq!(deliver(&mut quiet, &[0, 1]), 2);
    assert_eq!(first_uses(&mut quiet), Vec::<u64>::new());
}

/// One LAN packet for the rig's outbound SA, at `t` (ns) on the worker's clock.
fn send_lan_at(r: &mut Rig, t: u64) {
    let mut g = Generator::new(
        vec![FlowSpec {
            src_mac: HOST_MAC,
            dst_mac: LAN_MAC,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.2.0.7".parse().unwrap(),
            src_port: 1234,
            dst_port: 5001,
        }],
        &[100],
    );
    let mut f = MemFrame::new();
    g.fill(&mut f, 0);
    assert!(r.lan.send(f).is_ok());
    r.w.poll(t);
}

#[test]
fn an_sa_installed_with_a_hold_sends_its_first_packets_in_order_when_the_hold_ends() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 1000,
            seq_reserved: Some(1_000_000),
            hold_us: 2000,
            replay: None,
        },
        None,
    ));
    // The hold starts with the first packet (10 ms after the install), not at the install.
    send_lan_at(&mut r, 10 * MS);
    send_lan_at(&mut r, 11 * MS);
    r.w.poll(12 * MS - 1);
    assert_eq!(sent_seqs(&mut r), vec![], "held");
    assert_eq!(r.w.counters.traffic(Traffic::Held), 2);
    // At its end they leave in the order they were sealed; what comes after goes at once.
    r.w.poll(12 * MS);
    send_lan_at(&mut r, 12 * MS + 1);
    let seqs: Vec<u32> = sent_seqs(&mut r).into_iter().map(|s| s.0).collect();
    assert_eq!(seqs, [1001, 1002, 1003]);
    assert_eq!(r.w.counters.traffic(Traffic::Held), 2);
    assert_eq!(r.w.counters.traffic(Traffic::HoldReleasedEarly), 0);

    // Installed over itself with a hold again (a client back at an edge that still drained
    // it): a new hold from its next first packet.
    r.update(outbound_from(
        Resume {
            seq: 5000,
            seq_reserved: Some(1_000_000),
            hold_us: 1000,
            replay: None,
        },
        None,
    ));
    send_lan_at(&mut r, 20 * MS);
    assert_eq!(sent_seqs(&mut r), vec![]);
    r.w.poll(21 * MS);
    let seqs: Vec<u32> = sent_seqs(&mut r).into_iter().map(|s| s.0).collect();
    assert_eq!(seqs, [5001]);
}

#[test]
fn a_full_hold_queue_sends_its_oldest_frame_early_and_drops_nothing() {
    let mut r = rig(1500);
    r.update(outbound_from(
        Resume {
            seq: 0,
            seq_reserved: None,
            hold_us: 1_000_000,
            replay: None,
        },
        None,
    ));
    let n = crate::worker::hold::HOLD_MAX as u64 + 5;
    let mut seqs = Vec::new();
    for i in 0..n {
        send_lan_at(&mut r, MS + i);
        seqs.extend(sent_seqs(&mut r).into_iter().map(|s| s.0));
    }
    assert_eq!(seqs, [1, 2, 3, 4, 5], "the oldest five, early");
    assert_eq!(r.w.counters.traffic(Traffic::HoldReleasedEarly), 5);
    assert_eq!(r.w.counters.traffic(Traffic::Held), n);
    // The rest at the hold's end (a stopping worker would send them too).
    r.w.poll(MS + 1_000_000_000);
    for _ in 0..8 {
        seqs.extend(sent_seqs(&mut r).into_iter().map(|s| s.0));
        r.w.poll(MS + 1_000_000_001);
    }
    assert_eq!(seqs, (1..=n as u32).collect::<Vec<_>>(), "all, in order");
}
