#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use super::*;
use crate::wire::checksum::tests::Rng;

const MS: u64 = 1_000_000;
const PEER: Address = [2, 0, 0, 0, 0xbb, 1];
const OTHER: Address = [2, 0, 0, 0, 0xbb, 2];

type Cache4 = NeighborCache<Ipv4Addr, u32>;

fn cache(cfg: NeighborConfig) -> Cache4 {
    NeighborCache::new(cfg).unwrap()
}

fn ip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a01_0000 + n)
}

fn actions<A: NeighborAddr, F>(c: &mut NeighborCache<A, F>) -> Vec<Action<A, F>> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn confirm(addr: Ipv4Addr, mac: Address) -> Hint<Ipv4Addr> {
    Hint {
        addr,
        mac: Some(mac),
        kind: HintKind::Confirmation { override_: true },
    }
}

/// Every queued frame is in exactly one entry's queue.
fn check<A: NeighborAddr, F>(c: &NeighborCache<A, F>) {
    let live: Vec<_> = c.entries.iter().filter(|e| e.in_use).collect();
    assert_eq!(live.len(), c.len());
    assert!(c.len() <= c.config().capacity);
    let q: usize = live.iter().map(|e| e.queue.len()).sum();
    assert_eq!(q, c.queued());
    assert!(c.queued() <= c.config().max_queued);
    assert!(live.iter().all(|e| e.queue.len() <= c.config().queue_len));
    assert!(live
        .iter()
        .all(|e| e.queue.is_empty() || e.state == NeighborState::Incomplete));
    // the LRU list holds exactly the non-permanent entries
    let mut n = 0;
    let mut i = c.lru_head;
    while i != NIL {
        assert!(c.entries[i].in_use && c.entries[i].state != NeighborState::Permanent);
        n += 1;
        i = c.entries[i].next;
    }
    let permanent = live
        .iter()
        .filter(|e| e.state == NeighborState::Permanent)
        .count();
    assert_eq!(n + permanent, c.len());
}

#[test]
fn resolves_and_releases_the_queued_frames_in_order() {
    let mut c = cache(NeighborConfig::default());
    let gw = ip(1);
    assert_eq!(c.resolve(gw, 1, 0), Resolution::Queued);
    assert_eq!(c.resolve(gw, 2, MS), Resolution::Queued);
    assert_eq!(
        actions(&mut c),
        [Action::Solicit {
            target: gw,
            unicast: None
        }],
        "one solicitation, not one per frame"
    );
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Incomplete);
    assert_eq!(c.lookup(gw, MS), None);
    assert_eq!(c.learn(confirm(gw, PEER), 2 * MS), Learned::Resolved);
    assert_eq!(
        actions(&mut c),
        [
            Action::Transmit {
                mac: PEER,
                frame: 1
            },
            Action::Transmit {
                mac: PEER,
                frame: 2
            }
        ]
    );
    assert_eq!(c.entry(gw), Some((NeighborState::Reachable, PEER)));
    assert_eq!(c.resolve(gw, 3, 3 * MS), Resolution::Ready(PEER, 3));
    assert_eq!(c.lookup(gw, 3 * MS), Some(PEER));
    assert_eq!(c.counters().resolved, 1);
    assert_eq!(c.counters().solicits, 1);
    check(&c);
}

#[test]
fn retransmits_then_gives_up_and_returns_the_frames_as_unreachable() {
    let mut c = cache(NeighborConfig::default());
    let dead = ip(9);
    assert_eq!(c.resolve(dead, 7, 0), Resolution::Queued);
    assert_eq!(c.next_deadline(), Some(SEC));
    let mut solicits = actions(&mut c).len();
    c.handle_timeout(SEC - 1);
    assert!(actions(&mut c).is_empty());
    for t in [SEC, 2 * SEC] {
        c.handle_timeout(t);
        let a = actions(&mut c);
        assert_eq!(
            a,
            [Action::Solicit {
                target: dead,
                unicast: None
            }],
            "at {t}"
        );
        solicits += 1;
    }
    assert_eq!(solicits, 3, "MAX_MULTICAST_SOLICIT");
    assert_eq!(c.resolve(dead, 8, 2 * SEC + 1), Resolution::Queued);
    c.handle_timeout(3 * SEC);
    assert_eq!(
        actions(&mut c),
        [
            Action::Unreachable {
                target: dead,
                frame: 7
            },
            Action::Unreachable {
                target: dead,
                frame: 8
            }
        ]
    );
    assert_eq!(c.entry(dead), None);
    assert_eq!(c.counters().no_answer, 1);
    assert_eq!(c.counters().drop_count(NeighborDrop::Unresolved), 2);
    assert_eq!(c.next_deadline(), None);
    // the next frame starts over
    assert_eq!(c.resolve(dead, 9, 4 * SEC), Resolution::Queued);
    assert_eq!(actions(&mut c).len(), 1);
    check(&c);
}

#[test]
fn queue_overflow_drops_the_oldest_and_is_counted() {
    let mut c = cache(NeighborConfig::default());
    let h = ip(5);
    for f in 1..=5 {
        assert_eq!(c.resolve(h, f, 0), Resolution::Queued);
    }
    assert_eq!(c.counters().drop_count(NeighborDrop::QueueOverflow), 2);
    assert_eq!(c.queued(), 3);
    actions(&mut c);
    c.learn(confirm(h, PEER), MS);
    let sent: Vec<u32> = actions(&mut c)
        .into_iter()
        .map(|a| match a {
            Action::Transmit { frame, .. } => frame,
            a => panic!("{a:?}"),
        })
        .collect();
    assert_eq!(sent, [3, 4, 5], "the newest three");
    // the total bound
    let mut c = cache(NeighborConfig {
        max_queued: 4,
        ..NeighborConfig::default()
    });
    for n in 0..6 {
        c.resolve(ip(100 + n), n, 0);
    }
    assert_eq!(c.queued(), 4);
    assert_eq!(c.counters().drop_count(NeighborDrop::QueueFull), 2);
    check(&c);
}

#[test]
fn reachable_goes_stale_then_delay_probe_and_back_to_reachable() {
    let mut c = cache(NeighborConfig::default());
    let gw = ip(1);
    c.resolve(gw, 1, 0);
    c.learn(confirm(gw, PEER), 0);
    actions(&mut c);
    // reachable for 0.5..1.5 x 30 s
    let until = c.entry_deadline(gw);
    assert!((15 * SEC..45 * SEC).contains(&until), "{until}");
    c.handle_timeout(until - 1);
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Reachable);
    c.handle_timeout(until);
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Stale);
    assert!(actions(&mut c).is_empty(), "stale sends nothing until used");
    // used while stale: the frame goes at once, the entry waits 5 s
    let t = until + SEC;
    assert_eq!(c.resolve(gw, 2, t), Resolution::Ready(PEER, 2));
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Delay);
    c.handle_timeout(t + 5 * SEC - 1);
    assert!(actions(&mut c).is_empty());
    c.handle_timeout(t + 5 * SEC);
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Probe);
    assert_eq!(
        actions(&mut c),
        [Action::Solicit {
            target: gw,
            unicast: Some(PEER)
        }]
    );
    // still used while probing
    assert_eq!(c.lookup(gw, t + 5 * SEC + 1), Some(PEER));
    c.learn(confirm(gw, PEER), t + 5 * SEC + 2);
    assert_eq!(c.entry(gw).unwrap().0, NeighborState::Reachable);
    assert_eq!(c.counters().probes, 1);
    check(&c);
}

#[test]
fn unanswered_probes_remove_the_entry() {
    let mut c = cache(NeighborConfig::default());
    let gw = ip(1);
    c.resolve(gw, 1, 0);
    c.learn(
        Hint {
            addr: gw,
            mac: Some(PEER),
            kind: HintKind::Unsolicited { override_: true },
        },
        0,
    );
    assert_eq!(
        c.entry(gw).unwrap().0,
        NeighborState::Stale,
        "resolved, unconfirmed"
    );
    actions(&mut c);
    assert_eq!(c.lookup(gw, SEC), Some(PEER));
    let mut t = SEC + 5 * SEC;
    let mut probes = 0;
    while c.entry(gw).is_some() {
        c.handle_timeout(t);
        probes += actions(&mut c)
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Solicit {
                        unicast: Some(PEER),
                        ..
                    }
                )
            })
            .count();
        t += SEC;
    }
    assert_eq!(probes, 3, "MAX_UNICAST_SOLICIT");
    assert_eq!(c.counters().no_answer, 1);
    assert_eq!(c.lookup(gw, t), None);
    check(&c);
}

#[test]
fn unused_stale_entries_expire() {
    let mut c = cache(NeighborConfig::default());
    let h = ip(3);
    c.learn(
        Hint {
            addr: h,
            mac: Some(PEER),
            kind: HintKind::Solicitation,
        },
        0,
    );
    assert_eq!(c.entry(h), Some((NeighborState::Stale, PEER)));
    c.handle_timeout(60 * SEC - 1);
    assert!(c.entry(h).is_some());
    c.handle_timeout(60 * SEC);
    assert!(c.entry(h).is_none());
    assert_eq!(c.counters().expired, 1);
}

#[test]
fn a_bounded_cache_under_many_addresses() {
    let mut c = cache(NeighborConfig {
        capacity: 16,
        ..NeighborConfig::default()
    });
    c.add_permanent(ip(1), PEER).unwrap();
    // a busy neighbour, resolved and used all the time
    c.resolve(ip(2), 0, 0);
    c.learn(confirm(ip(2), OTHER), 0);
    for n in 0..1000u32 {
        let r = c.resolve(ip(1000 + n), n, u64::from(n) * MS);
        assert_eq!(r, Resolution::Queued);
        assert_eq!(c.lookup(ip(2), u64::from(n) * MS), Some(OTHER));
        assert!(c.len() <= 16);
        check(&c);
        actions(&mut c);
    }
    assert_eq!(c.len(), 16);
    // 14 unresolved slots besides the permanent and the busy entry
    assert_eq!(c.counters().evicted, 1000 - 14);
    assert_eq!(c.counters().drop_count(NeighborDrop::CacheFull), 1000 - 14);
    assert_eq!(c.entry(ip(1)), Some((NeighborState::Permanent, PEER)));
    assert!(c.entry(ip(2)).is_some(), "the busy entry stayed");
    assert!(c.queued() <= 14);
    // full of permanent entries: nothing can be resolved
    let mut c = cache(NeighborConfig {
        capacity: 2,
        ..NeighborConfig::default()
    });
    c.add_permanent(ip(1), PEER).unwrap();
    c.add_permanent(ip(2), PEER).unwrap();
    assert_eq!(c.add_permanent(ip(3), PEER), Err(NeighborDrop::CacheFull));
    assert_eq!(
        c.resolve(ip(4), 0, 0),
        Resolution::Dropped(NeighborDrop::CacheFull)
    );
    check(&c);
}

#[test]
fn gleaning_never_pushes_out_neighbours_in_use() {
    let mut c = cache(NeighborConfig {
        capacity: 4,
        ..NeighborConfig::default()
    });
    for n in 0..4 {
        c.resolve(ip(n), n, 0);
        c.learn(confirm(ip(n), PEER), 0);
    }
    actions(&mut c);
    let glean = |n: u32| Hint {
        addr: ip(100 + n),
        mac: Some(OTHER),
        kind: HintKind::Solicitation,
    };
    for n in 0..50 {
        assert_eq!(c.learn(glean(n), MS), Learned::Ignored);
    }
    assert_eq!(c.counters().glean_skipped, 50);
    assert!((0..4).all(|n| c.entry(ip(n)).unwrap().0 == NeighborState::Reachable));
    // an unused STALE entry may make way
    let stale = c.entry_deadline(ip(0)).max(c.entry_deadline(ip(3)));
    c.handle_timeout(stale);
    assert!((0..4).all(|n| c.entry(ip(n)).unwrap().0 == NeighborState::Stale));
    assert_eq!(c.learn(glean(0), stale), Learned::Created);
    assert_eq!(c.entry(ip(100)), Some((NeighborState::Stale, OTHER)));
    assert_eq!(c.len(), 4);
    check(&c);
}

#[test]
fn permanent_entries_are_never_replaced_or_expired() {
    let mut c = cache(NeighborConfig::default());
    let gw = ip(1);
    c.resolve(gw, 1, 0);
    c.add_permanent(gw, PEER).unwrap();
    assert_eq!(c.counters().drop_count(NeighborDrop::CacheFull), 1);
    for kind in [
        HintKind::Confirmation { override_: true },
        HintKind::Unsolicited { override_: true },
        HintKind::Solicitation,
    ] {
        let h = Hint {
            addr: gw,
            mac: Some(OTHER),
            kind,
        };
        assert_eq!(c.learn(h, 0), Learned::Ignored);
    }
    c.handle_timeout(u64::MAX - 1);
    assert_eq!(c.entry(gw), Some((NeighborState::Permanent, PEER)));
    assert_eq!(c.resolve(gw, 2, u64::MAX - 1), Resolution::Ready(PEER, 2));
    assert!(c.remove(gw));
    assert_eq!(c.entry(gw), None);
    check(&c);
}

#[test]
fn advertisements_follow_rfc4861_7_2_5() {
    let mut c = cache(NeighborConfig::default());
    let h = ip(7);
    c.resolve(h, 1, 0);
    c.learn(confirm(h, PEER), 0);
    let adv = |mac, solicited, override_| Hint {
        addr: h,
        mac: Some(mac),
        kind: if solicited {
            HintKind::Confirmation { override_ }
        } else {
            HintKind::Unsolicited { override_ }
        },
    };
    // O clear, another MAC: REACHABLE goes STALE, the MAC stays
    assert_eq!(c.learn(adv(OTHER, true, false), MS), Learned::Updated);
    assert_eq!(c.entry(h), Some((NeighborState::Stale, PEER)));
    // ... and while not REACHABLE it is ignored
    assert_eq!(c.learn(adv(OTHER, false, false), MS), Learned::Ignored);
    // O set, unsolicited: new MAC, STALE
    assert_eq!(c.learn(adv(OTHER, false, true), MS), Learned::Updated);
    assert_eq!(c.entry(h), Some((NeighborState::Stale, OTHER)));
    assert_eq!(c.counters().mac_changed, 1);
    // same MAC, unsolicited: nothing changes
    assert_eq!(c.learn(adv(OTHER, false, false), MS), Learned::Ignored);
    // solicited, same MAC, O clear: REACHABLE
    assert_eq!(c.learn(adv(OTHER, true, false), MS), Learned::Updated);
    assert_eq!(c.entry(h), Some((NeighborState::Reachable, OTHER)));
    // no entry: an advertisement creates nothing
    let stranger = Hint {
        addr: ip(8),
        ..adv(PEER, true, true)
    };
    assert_eq!(c.learn(stranger, MS), Learned::Ignored);
    assert_eq!(c.entry(ip(8)), None);
    // an INCOMPLETE entry ignores an answer without a MAC
    c.resolve(ip(9), 1, MS);
    let bare = Hint {
        addr: ip(9),
        mac: None,
        kind: HintKind::Confirmation { override_: true },
    };
    assert_eq!(c.learn(bare, MS), Learned::Ignored);
    // a solicitation from it resolves it, unconfirmed
    let ns = Hint {
        addr: ip(9),
        mac: Some(PEER),
        kind: HintKind::Solicitation,
    };
    assert_eq!(c.learn(ns, MS), Learned::Resolved);
    assert_eq!(c.entry(ip(9)), Some((NeighborState::Stale, PEER)));
    check(&c);
}

#[test]
fn group_and_unspecified_addresses() {
    let mut c = cache(NeighborConfig::default());
    assert_eq!(
        c.resolve(Ipv4Addr::BROADCAST, 1, 0),
        Resolution::Ready([0xff; 6], 1)
    );
    assert_eq!(
        c.resolve(Ipv4Addr::new(224, 0, 0, 251), 1, 0),
        Resolution::Ready([1, 0, 0x5e, 0, 0, 251], 1)
    );
    assert_eq!(
        c.resolve(Ipv4Addr::new(239, 255, 1, 2), 1, 0),
        Resolution::Ready([1, 0, 0x5e, 0x7f, 1, 2], 1)
    );
    assert_eq!(
        c.resolve(Ipv4Addr::UNSPECIFIED, 1, 0),
        Resolution::Dropped(NeighborDrop::Unresolved)
    );
    let mut c6: NeighborCache<Ipv6Addr, u32> =
        NeighborCache::new(NeighborConfig::default()).unwrap();
    assert_eq!(
        c6.resolve("ff02::1:ff00:10".parse().unwrap(), 1, 0),
        Resolution::Ready([0x33, 0x33, 0xff, 0, 0, 0x10], 1)
    );
    assert!(c.is_empty() && c6.is_empty());
    assert!(actions(&mut c).is_empty());
}

#[test]
fn config_is_checked() {
    let bad = |c: NeighborConfig| NeighborCache::<Ipv4Addr, u32>::new(c).err().unwrap().field;
    let d = NeighborConfig::default;
    assert_eq!(bad(NeighborConfig { capacity: 0, ..d() }), "capacity");
    assert_eq!(
        bad(NeighborConfig {
            retrans_ns: 0,
            ..d()
        }),
        "timers"
    );
    assert_eq!(
        bad(NeighborConfig {
            multicast_solicit: 0,
            ..d()
        }),
        "multicast_solicit"
    );
    assert_eq!(
        bad(NeighborConfig {
            queue_len: 0,
            ..d()
        }),
        "queue_len"
    );
}

#[test]
fn random_operations_keep_the_invariants() {
    let mut rng = Rng(4861);
    let mut c = cache(NeighborConfig {
        capacity: 8,
        max_queued: 10,
        ..NeighborConfig::default()
    });
    let mut now = 0u64;
    let (mut frames_in, mut sent) = (0u64, 0u64);
    for n in 0..50_000u32 {
        now += rng.below(400) as u64 * MS;
        let a = ip(rng.below(24) as u32);
        match rng.below(8) {
            0..=2 => {
                frames_in += 1;
                if let Resolution::Ready(..) = c.resolve(a, n, now) {
                    sent += 1;
                }
            }
            3 => {
                let _ = c.lookup(a, now);
            }
            4 | 5 => {
                let mac = [2, 0, 0, 0, 0, rng.below(3) as u8];
                let kind = match rng.below(3) {
                    0 => HintKind::Solicitation,
                    1 => HintKind::Confirmation {
                        override_: rng.below(2) == 0,
                    },
                    _ => HintKind::Unsolicited {
                        override_: rng.below(2) == 0,
                    },
                };
                let m = if rng.below(8) == 0 { None } else { Some(mac) };
                c.learn(
                    Hint {
                        addr: a,
                        mac: m,
                        kind,
                    },
                    now,
                );
            }
            6 => c.handle_timeout(now),
            _ => {
                if rng.below(50) == 0 {
                    let _ = c.add_permanent(a, PEER);
                } else if rng.below(50) == 0 {
                    c.remove(a);
                }
            }
        }
        while let Some(act) = c.poll_action() {
            if let Action::Transmit { .. } = act {
                sent += 1;
            }
        }
        check(&c);
        if let Some(d) = c.next_deadline() {
            // no entry's timer is earlier than the cache's next deadline
            assert!(c
                .entries
                .iter()
                .filter(|e| e.in_use)
                .all(|e| e.deadline >= d));
        }
    }
    // Every frame given to the cache was sent (at once or released), is still queued, or
    // was dropped under exactly one reason (Unresolved ones also came back as actions).
    let dropped: u64 = c.counters().drops.iter().sum();
    assert_eq!(
        frames_in,
        sent + c.queued() as u64 + dropped,
        "frames add up"
    );
    assert!(c.counters().resolved > 100 && c.counters().no_answer > 10);
}

impl<A: NeighborAddr, F> NeighborCache<A, F> {
    fn entry_deadline(&self, a: A) -> u64 {
        self.entries[self.index[&a]].deadline
    }
}
