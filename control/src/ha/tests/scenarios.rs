//! Takeover, split brain, switchover, rejoin and resync on virtual time, each under the nonce
//! audit of the harness (a repeated (SPI, sequence number) panics where it happens).

use super::*;

fn took_over(s: &Sim, i: usize) -> bool {
    s.slots[i].role() == Some(Role::Active)
        && s.slots[i]
            .said
            .iter()
            .any(|x| matches!(x, Said::TookOver { .. }))
}

#[test]
fn a_pair_forms_and_the_standby_mirrors_the_active() {
    let mut sim = Sim::steady();
    sim.run(1000);
    assert!(sim.packets > 0);
    // Idle the log: no traffic for a moment, then compare.
    for s in &mut sim.slots {
        s.dp.active = false;
    }
    sim.run(100);
    assert!(
        sim.tables_agree(),
        "{:#?}",
        sim.slots[1].node().table().summary()
    );
    let a = sim.slots[0].node();
    assert!(a.stats().grants > 0);
    assert_eq!(a.stats().out_of_sync, 0);
    assert_eq!(a.epoch(), sim.slots[1].node().epoch());
}

#[test]
fn takeover_after_a_kill_is_within_the_detection_time_and_jumps_within_the_bound() {
    let mut sim = Sim::steady();
    let plan = sim.slots[1].node().plan();
    sim.kill(0);
    let t = sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    assert!(t <= 150 + 30 + 2, "took {t} ms");
    sim.run(500);
    // Traffic resumed on every SA, and the peer saw a jump within the stated bound.
    assert_eq!(sim.slots[1].sent.len(), SAS as usize);
    assert!(
        sim.largest_jump <= plan.max_jump(),
        "{} > {}",
        sim.largest_jump,
        plan.max_jump()
    );
    assert!(
        sim.longest_gap <= 150 + 30 + 2 + 5,
        "gap {} ms",
        sim.longest_gap
    );
    assert_eq!(sim.behind_window, 0);
}

#[test]
fn a_frozen_active_that_comes_back_finishes_only_its_grant_and_is_fenced() {
    let mut sim = Sim::steady();
    sim.slots[0].frozen = true;
    sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    sim.run(300);
    // It resumes where it stopped, with its old range and its queued messages.
    sim.slots[0].frozen = false;
    sim.run_until(1000, |s| s.slots[0].role() == Some(Role::Standby))
        .expect("the old active becomes standby");
    assert!(sim.slots[0]
        .said
        .iter()
        .any(|x| matches!(x, Said::Fenced { .. })));
    sim.run(500);
    assert_eq!(sim.active(), vec![1]);
    assert!(sim.slots[1].node().paired());
}

#[test]
fn split_brain_both_send_and_never_the_same_number() {
    let mut sim = Sim::steady();
    sim.cut();
    sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    // Both active for a while: the old one unpaired in its own blocks, on disk first.
    sim.run(2000);
    assert_eq!(sim.active(), vec![0, 1]);
    let a_sent = sim.slots[0].sent.clone();
    sim.run(10);
    assert_ne!(sim.slots[0].sent, a_sent, "the cut-off active still sends");
    assert!(sim.slots[0].node().stats().persists > 0);
    sim.heal();
    sim.run_until(2000, |s| {
        s.active() == vec![1] && s.slots[0].role() == Some(Role::Standby)
    })
    .expect("the later epoch wins and the other resyncs");
    // After the heal, the winner's paired ranges start above what the loser sent unpaired.
    sim.run(3000);
    assert!(sim.slots[1].node().paired());
}

#[test]
fn split_brain_then_the_loser_restarts_and_later_takes_over_above_its_own_marks() {
    let mut sim = Sim::steady();
    sim.cut();
    sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    sim.run(1500);
    // Slot 0 sent unpaired in its own blocks; it dies and forgets everything but its disk.
    sim.kill(0);
    sim.run(100);
    sim.restart(0, params(0, 200));
    sim.heal();
    sim.run_until(2000, |s| s.slots[0].role() == Some(Role::Standby))
        .expect("rejoin");
    sim.run(1000);
    sim.kill(1);
    sim.run_until(1000, |s| took_over(s, 0))
        .expect("takeover by the restarted node");
    sim.run(1000);
}

#[test]
fn planned_switchover_loses_no_packet_and_reuses_no_number() {
    let mut sim = Sim::steady();
    let plan = sim.slots[0].node().plan();
    let margin = params(0, 200).switchover_margin;
    for (from, to) in [(0, 1), (1, 0)] {
        let lost_before = sim.lost;
        let jump_before = sim.largest_jump;
        // What the new active sends from here on.
        sim.slots[to].sent.clear();
        sim.slots[from].node.as_mut().unwrap().switchover().unwrap();
        sim.run_until(200, |s| s.active() == vec![to])
            .expect("switched");
        // The old active drains until the new one was heard for the detection time.
        sim.run(plan.detection_ms + 100);
        assert!(sim.slots[from]
            .said
            .iter()
            .any(|x| matches!(x, Said::SwitchedOver { .. })));
        let last_old = sim.slots[from].sent.clone();
        sim.run(500);
        assert_eq!(sim.lost, lost_before, "{from} -> {to}: nothing lost");
        assert_eq!(sim.behind_window, 0, "no number behind the peer's window");
        for (spi, (first_new, _)) in &sim.slots[to].sent {
            let Some((_, last)) = last_old.get(spi) else {
                continue;
            };
            // The new active starts right above the old one's ceiling: above its last number,
            // at most the margin past it.
            assert!(first_new > last, "SPI {spi:#x}: {first_new} after {last}");
            assert!(
                *first_new <= last + margin + 1,
                "SPI {spi:#x}: {first_new} after {last}"
            );
        }
        assert!(sim.largest_jump <= jump_before.max(margin + 1));
        assert_eq!(sim.slots[from].role(), Some(Role::Standby));
        assert!(sim.slots[to].node().paired());
    }
}

#[test]
fn a_switchover_without_the_drain_would_lose_packets() {
    // The same switchover with the old active's data plane stopped at once (what a
    // quiesce-then-hand-over does) loses what arrives before the new active is announced:
    // the harness can see loss, so the test above can fail.
    let mut sim = Sim::steady();
    sim.link_delay = 5;
    sim.stop_on_drain = true;
    sim.slots[0].node.as_mut().unwrap().switchover().unwrap();
    sim.run_until(200, |s| s.active() == vec![1])
        .expect("switched");
    sim.run(300);
    assert!(sim.lost > 0);
}

#[test]
fn an_active_that_lost_its_standby_for_a_while_pairs_again() {
    // The standby's messages are lost for longer than the detection time (a loaded machine):
    // the active sends unpaired; the standby still hears it and stays standby. Heard again,
    // it resyncs and the pair is paired again (a switchover is possible again).
    let mut sim = Sim::steady();
    sim.mute = Some(1);
    sim.run(300);
    assert!(!sim.slots[0].node().paired());
    assert_eq!(sim.slots[1].role(), Some(Role::Standby));
    sim.mute = None;
    sim.run_until(1000, |s| s.slots[0].node().paired())
        .expect("paired again");
    sim.slots[0].node.as_mut().unwrap().switchover().unwrap();
    sim.run_until(200, |s| s.active() == vec![1])
        .expect("switched");
    sim.run(500);
}

#[test]
fn switchover_is_refused_without_a_standby_in_sync() {
    let mut sim = Sim::steady();
    sim.kill(1);
    sim.run(300);
    assert!(sim.slots[0].node.as_mut().unwrap().switchover().is_err());
}

#[test]
fn a_killed_node_rejoins_from_the_full_state_and_becomes_standby() {
    let mut sim = Sim::steady();
    sim.kill(0);
    sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    sim.run(300);
    sim.restart(0, params(0, 200));
    let t = sim
        .run_until(2000, |s| s.slots[0].role() == Some(Role::Standby))
        .expect("rejoin");
    assert!(t < 500, "rejoin took {t} ms");
    sim.run(500);
    assert!(sim.slots[1].node().paired());
    for s in &mut sim.slots {
        s.dp.active = false;
    }
    sim.run(100);
    assert!(sim.tables_agree());
    // The rejoined node takes over again when the other goes.
    sim.slots[1].dp.active = true;
    sim.kill(1);
    sim.run_until(1000, |s| took_over(s, 0))
        .expect("second takeover");
    sim.run(500);
}

/// The standby is killed and back 50 ms later, before the active's detection time ran out
/// (a supervisor restarting the process): `new_connection` says whether the active sees the
/// sync connection go and a new one come (the process's socket closed with it), or hears the
/// restarted node on what it takes for the old connection (entries sent to the dead process,
/// unacknowledged, never arrive). Either way it rejoins from the full state, the tables
/// agree, and it takes over when the active goes. Without a new connection the restarted
/// node gets a log entry before any heartbeat, sees a hole and asks for a snapshot of epoch 0
/// (it knows none yet): the active ignored a request of another epoch than its own, and the
/// node waited for a snapshot forever (the test written first at stop 28 timed out so).
fn a_standby_restarted_50_ms_after_a_kill_rejoins(new_connection: bool) {
    let mut sim = Sim::steady();
    sim.kill(1);
    sim.run(50);
    assert_eq!(sim.slots[0].role(), Some(Role::Active));
    sim.restart(1, params(1, 100));
    if new_connection {
        let now = sim.now;
        sim.slots[0].node.as_mut().unwrap().link_up(now);
    }
    let t = sim
        .run_until(3000, |s| {
            s.slots[1].role() == Some(Role::Standby) && s.slots[0].node().paired()
        })
        .expect("the restarted standby rejoins");
    assert!(t < 1000, "rejoin took {t} ms");
    assert_eq!(sim.active(), vec![0]);
    for s in &mut sim.slots {
        s.dp.active = false;
    }
    sim.run(100);
    assert!(sim.tables_agree());
    sim.slots[0].dp.active = true;
    sim.kill(0);
    sim.run_until(1000, |s| took_over(s, 1))
        .expect("the rejoined standby takes over");
    sim.run(300);
    assert_eq!(sim.slots[1].sent.len(), SAS as usize);
}

#[test]
fn a_standby_restarted_50_ms_after_a_kill_rejoins_on_a_new_connection() {
    a_standby_restarted_50_ms_after_a_kill_rejoins(true);
}

#[test]
fn a_standby_restarted_50_ms_after_a_kill_rejoins_unnoticed_by_the_active() {
    a_standby_restarted_50_ms_after_a_kill_rejoins(false);
}

#[test]
fn a_standby_that_falls_behind_is_marked_out_of_sync_and_resynced() {
    let mut a = params(0, 200);
    a.max_backlog = 64;
    let mut sim = Sim::with(a, params(1, 100));
    sim.run_until(1000, |s| s.slots[1].role() == Some(Role::Standby))
        .expect("pair");
    sim.add_sas(SAS);
    sim.run(300);
    // The standby stops reading for less than the detection time (a stall, not a failure);
    // the active's backlog passes its bound meanwhile.
    sim.slots[1].frozen = true;
    let active = sim.slots[0].node.as_mut().unwrap();
    for i in 0..200u64 {
        active
            .record(Record::IkeSa {
                id: i,
                version: 1,
                bytes: zeroize::Zeroizing::new(vec![7; 100]),
            })
            .unwrap();
    }
    assert!(sim.slots[0].node().stats().out_of_sync >= 1);
    assert!(sim.slots[0]
        .said
        .iter()
        .chain([].iter())
        .all(|x| !matches!(x, Said::TookOver { .. })));
    sim.run(100);
    assert!(sim.slots[0]
        .said
        .iter()
        .any(|x| matches!(x, Said::StandbyOutOfSync { .. })));
    sim.slots[1].frozen = false;
    sim.run_until(2000, |s| s.slots[0].node().paired())
        .expect("resynced");
    for s in &mut sim.slots {
        s.dp.active = false;
    }
    sim.run(100);
    let (a, b) = (
        sim.slots[0].node().table().summary(),
        sim.slots[1].node().table().summary(),
    );
    let diff: Vec<_> = a
        .iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|x| !a.contains(x)))
        .collect();
    assert!(diff.is_empty(), "{diff:#?}");
    assert_eq!(sim.slots[1].node().table().ike_sas().count(), 200);
}

#[test]
fn two_fresh_nodes_agree_on_one_active_by_priority() {
    let mut sim = Sim::with(params(0, 10), params(1, 20));
    sim.run_until(1000, |s| {
        s.slots[1].role() == Some(Role::Active) && s.slots[0].role() == Some(Role::Standby)
    })
    .expect("the higher priority is active");
}

#[test]
fn the_same_slot_on_both_nodes_is_said_and_refused() {
    let mut sim = Sim::with(params(0, 10), params(0, 20));
    sim.run(500);
    assert!(sim.slots[0].said.contains(&Said::SameSlot));
    assert!(sim.slots[0].node().stats().same_slot > 0);
}

#[test]
fn random_faults_never_repeat_a_nonce() {
    // A small Jepsen: kills, restarts, freezes, cuts and switchovers at random steps.
    for seed in 1..=6u64 {
        let mut sim = Sim::steady();
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..25 {
            let i = (rnd() % 2) as usize;
            match rnd() % 6 {
                0 if sim.slots[i].node.is_some() => sim.kill(i),
                0 => {
                    let p = params(i as u8, if i == 0 { 200 } else { 100 });
                    sim.restart(i, p);
                }
                1 => sim.slots[i].frozen = !sim.slots[i].frozen,
                2 if sim.link => sim.cut(),
                2 => sim.heal(),
                3 => {
                    if let Some(n) = sim.slots[i].node.as_mut() {
                        let _ = n.switchover();
                    }
                }
                _ => {}
            }
            let ms = 50 + rnd() % 600;
            sim.run(ms);
        }
        // Heal everything: one active again, traffic flows.
        for i in 0..2 {
            sim.slots[i].frozen = false;
            if sim.slots[i].node.is_none() {
                sim.restart(i, params(i as u8, if i == 0 { 200 } else { 100 }));
            }
        }
        sim.heal();
        sim.run(3000);
        assert_eq!(sim.active().len(), 1, "seed {seed}");
    }
}

#[test]
fn a_handover_lost_with_the_link_ends_with_one_active_and_no_repeat() {
    let mut sim = Sim::steady();
    sim.slots[0].node.as_mut().unwrap().switchover().unwrap();
    // The link goes before the handover gets through: neither follows an active any more.
    sim.cut();
    sim.run_until(1000, |s| s.active().len() == 2)
        .expect("both take over");
    sim.run(500);
    sim.heal();
    sim.run_until(2000, |s| {
        s.active().len() == 1 && s.slots.iter().any(|x| x.role() == Some(Role::Standby))
    })
    .expect("one active again");
    sim.run(1000);
}

#[test]
fn an_empty_node_that_heard_an_active_waits_for_it_before_starting_alone() {
    use crate::ha::{Message, Node};
    let p = params(1, 100);
    let mut n = Node::new(p, Default::default(), 0);
    let hb = Message::Heartbeat {
        slot: 0,
        role: Role::Active,
        epoch: 2,
        priority: 200,
        applied: 0,
    }
    .encode()
    .unwrap();
    n.handle_message(10, &hb);
    // A slow active (silent past the detection time) is not fenced by an empty table.
    for t in (20..p.detection_ms * 19).step_by(10) {
        n.handle_timeout(t);
        assert_ne!(n.role(), Role::Active, "at {t} ms");
    }
    // An active that is gone for good: the node starts alone, after the patience.
    let at = n.poll_timeout();
    assert!(at <= 10 + p.detection_ms * 20, "deadline {at}");
    n.handle_timeout(10 + p.detection_ms * 20);
    assert_eq!(n.role(), Role::Active);
    assert!(n.epoch() > 2);
}

/// The standby keeps its takeover ranges on disk ahead of time: a takeover on a slow disk
/// sends at once, from the reserved ranges, and reuses no number (the harness's audit).
#[test]
fn a_takeover_sends_at_once_from_ranges_reserved_while_standby() {
    let mut sim = Sim::steady();
    sim.run(1500);
    let plan = sim.slots[1].node().plan();
    let st = sim.slots[1].node().stats().clone();
    assert!(st.reservations >= u64::from(SAS), "{st:?}");
    // Reserved, not spent: the active's ranges did not move above the standby's marks.
    assert!(
        sim.largest_jump <= 1,
        "jump {} before any takeover",
        sim.largest_jump
    );
    // From now on every write takes 400 ms (a busy disk): more than the takeover may take.
    sim.persist_delay = 400;
    sim.kill(0);
    // The new active's first packet comes with the takeover, not after a write. (Later
    // extensions still need the disk: at this harness's rate one own block lasts under
    // 200 ms, less than this disk takes, so the longest gap is not judged here.)
    let t = sim
        .run_until(1000, |s| s.slots[1].sent.len() == SAS as usize)
        .expect("the new active sends on every SA");
    assert!(
        t <= 150 + 30 + 2,
        "first packets {t} ms after the kill, 400 ms disk"
    );
    sim.run(1500);
    let st = sim.slots[1].node().stats();
    assert_eq!(st.reserved_starts, u64::from(SAS), "{st:?}");
    assert!(sim.largest_jump <= plan.max_jump(), "{}", sim.largest_jump);
    assert_eq!(sim.behind_window, 0);
}

/// The control: a standby whose reservations are not on disk yet (every write 400 ms, the
/// takeover right after it synced) waits for the disk, and traffic stops that long.
#[test]
fn a_takeover_before_the_reservations_are_on_disk_waits_for_the_disk() {
    let mut sim = Sim::new();
    sim.persist_delay = 400;
    sim.run_until(1000, |s| {
        s.slots[0].role() == Some(Role::Active) && s.slots[1].role() == Some(Role::Standby)
    })
    .expect("a pair forms");
    sim.add_sas(SAS);
    sim.run(100);
    sim.kill(0);
    sim.run_until(1000, |s| took_over(s, 1)).expect("takeover");
    sim.run(1500);
    assert_eq!(sim.slots[1].node().stats().reserved_starts, 0);
    assert_eq!(sim.slots[1].sent.len(), SAS as usize);
    assert!(
        sim.longest_gap >= 240,
        "gap {} ms: the takeover did not wait for the disk",
        sim.longest_gap
    );
}
