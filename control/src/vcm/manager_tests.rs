//! The manager and two clients on virtual time, over a network that loses, delays and
//! reorders their messages (seeded): the ack order holds in every run.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

const MS: u64 = 1_000_000;

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * MS)
}

fn vip(i: u8) -> IpAddr {
    IpAddr::from([10, 99, 0, i])
}

fn keys() -> Keys {
    Keys([
        Zeroizing::new([0x11; KEYMAT_LEN]),
        Zeroizing::new([0x22; KEYMAT_LEN]),
    ])
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// xorshift64: the network's coin.
struct Coin(u64);

impl Coin {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What happened, in order, for the invariant.
#[derive(Debug, PartialEq, Eq)]
enum Log {
    Installed(usize),
    SendsDirect(usize),
}

struct Sim {
    now: u64,
    mgr: Manager,
    cl: [DirectClient; 2],
    /// (deliver at ms, to: None = manager, Some(i) = client i, from client, msg).
    wire: Vec<(u64, Option<usize>, usize, Msg)>,
    coin: Coin,
    loss_pct: u64,
    log: Vec<Log>,
    /// Authenticated packets arrive on the direct path (false: it is blackholed).
    direct_works: bool,
}

impl Sim {
    fn new(seed: u64, loss_pct: u64) -> Sim {
        Sim {
            now: 0,
            mgr: Manager::default(),
            cl: [DirectClient::default(), DirectClient::default()],
            wire: Vec::new(),
            coin: Coin(seed | 1),
            loss_pct,
            log: Vec::new(),
            direct_works: true,
        }
    }

    fn send(&mut self, to: Option<usize>, from: usize, m: Msg) {
        if self.coin.next() % 100 < self.loss_pct {
            return;
        }
        // 0-300 ms: later messages often overtake earlier ones.
        let at = self.now + self.coin.next() % 300;
        self.wire.push((at, to, from, m));
    }

    fn collect(&mut self) {
        while let Some((to, m)) = self.mgr.poll_transmit() {
            let i = usize::from(to != vip(1));
            self.send(Some(i), i, m);
        }
        for i in 0..2 {
            while let Some(m) = self.cl[i].poll_transmit() {
                self.send(None, i, m);
            }
            while let Some(a) = self.cl[i].poll_action() {
                match a {
                    Action::InstallInbound { .. } => self.log.push(Log::Installed(i)),
                    Action::SendDirect { .. } => self.log.push(Log::SendsDirect(i)),
                    _ => {}
                }
            }
        }
    }

    /// Runs `ms` milliseconds in 10 ms steps.
    fn run(&mut self, ms: u64, pair: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            let now = t(self.now);
            let due: Vec<_> = {
                let (due, rest): (Vec<_>, Vec<_>) =
                    self.wire.drain(..).partition(|w| w.0 <= self.now);
                self.wire = rest;
                due
            };
            for (_, to, from, m) in due {
                match to {
                    None => self.mgr.handle(now, vip(from as u8 + 1), &m),
                    Some(i) => self.cl[i].handle(now, &m),
                }
                self.collect();
            }
            // A client that sends directly gets the peer's packets on the direct path when it
            // works (the peer sends too).
            for i in 0..2 {
                if self.direct_works && self.cl[1 - i].sends_direct(pair) {
                    self.cl[i].direct_authenticated(now, pair);
                }
            }
            self.mgr.handle_timeout(now);
            for c in self.cl.iter_mut() {
                c.handle_timeout(now);
            }
            self.collect();
        }
    }

    fn offer(&mut self) -> u64 {
        let p = self.mgr.offer(
            t(self.now),
            (vip(1), addr("192.0.2.10:4500")),
            (vip(2), addr("198.51.100.10:4500")),
            keys(),
            3600,
        );
        self.collect();
        p
    }

    /// The rule: a client sends on the direct SA only after its peer installed its inbound.
    fn check_order(&self) {
        for (k, e) in self.log.iter().enumerate() {
            if let Log::SendsDirect(i) = e {
                assert!(
                    self.log[..k].contains(&Log::Installed(1 - i)),
                    "client {i} sent before its peer installed: {:?}",
                    self.log
                );
            }
        }
    }
}

#[test]
fn the_ack_order_holds_under_loss_and_reordering() {
    let mut switched = 0;
    for seed in 1..=300u64 {
        let loss = [0, 20, 50][seed as usize % 3];
        let mut s = Sim::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), loss);
        let pair = s.offer();
        s.run(4000, pair);
        s.check_order();
        if s.cl[0].sends_direct(pair) && s.cl[1].sends_direct(pair) {
            switched += 1;
        } else {
            // Later (the relay lost again and again), or back to the gateway path (one side's
            // relay was late by more than the fallback time, its liveness timer running from
            // its own switch): never stuck in between.
            s.run(6000, pair);
            s.check_order();
            let both = s.cl[0].sends_direct(pair) && s.cl[1].sends_direct(pair);
            let ended =
                s.mgr.pairs() == 0 && !s.cl[0].sends_direct(pair) && !s.cl[1].sends_direct(pair);
            assert!(both || ended, "seed {seed}: neither switched nor ended");
        }
        // Late copies of a pair's messages after it ended are counted as unknown, never acted
        // on; nobody else's messages were involved.
        assert_eq!(s.mgr.counts().not_member, 0);
    }
    // Retransmission gets most runs through within 4 s at up to 50% loss (280 of 300 with
    // these seeds).
    assert!(switched >= 260, "{switched} of 300 switched");
    println!("{switched} of 300 runs switched to the direct path");
}

#[test]
fn a_blackholed_direct_path_falls_back_within_a_second_and_both_return() {
    let mut s = Sim::new(7, 0);
    s.direct_works = false;
    let pair = s.offer();
    // Until both sent PeerReady's acknowledgement (at most 3 x 300 ms of delay).
    let mut at = None;
    for _ in 0..200 {
        s.run(10, pair);
        if s.cl[0].sends_direct(pair) {
            at = Some(s.now);
            break;
        }
    }
    let at = at.expect("client 0 switched");
    while s.cl[0].sends_direct(pair) {
        s.run(10, pair);
    }
    assert!(s.now - at <= 1010, "back after {} ms", s.now - at);
    s.run(3000, pair);
    assert_eq!(s.mgr.pairs(), 0, "the pair ended");
    assert_eq!(s.mgr.poll_ended(), Some((pair, vip(1), vip(2))));
    assert!(s.mgr.counts().failed >= 1);
    for c in &s.cl {
        assert!(!c.sends_direct(pair));
        assert_eq!(c.counts().returned, 1);
    }
}

#[test]
fn forged_replayed_and_foreign_messages_are_refused() {
    let mut m = Manager::default();
    let pair = m.offer(
        t(0),
        (vip(1), addr("192.0.2.10:4500")),
        (vip(2), addr("198.51.100.10:4500")),
        keys(),
        60,
    );
    let offers: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert_eq!(offers.len(), 2);
    // A client that is not in the pair acknowledges it (or claims it failed).
    m.handle(t(1), vip(3), &Msg::Installed { pair });
    m.handle(t(1), vip(3), &Msg::Failed { pair });
    assert_eq!(m.counts().not_member, 2);
    assert!(m.poll_transmit().is_none(), "nothing relayed");
    // A forged pair id.
    m.handle(t(1), vip(1), &Msg::Installed { pair: pair + 7 });
    assert_eq!(m.counts().unknown_pair, 1);
    // The manager's own kinds from a client.
    m.handle(t(1), vip(1), &Msg::PeerReady { pair });
    assert_eq!(m.counts().wrong_direction, 1);
    assert!(m.poll_transmit().is_none());

    // Client side: a PeerReady before any offer, and the client's kinds from the gateway.
    let mut c = DirectClient::default();
    c.handle(t(1), &Msg::PeerReady { pair });
    c.handle(t(1), &Msg::Installed { pair });
    assert_eq!(
        (c.counts().unknown_pair, c.counts().wrong_direction),
        (1, 1)
    );
    assert!(c.poll_action().is_none() && c.poll_transmit().is_none());
    // The real offer; its repetition is acknowledged again, installed once.
    let (_, offer) = offers.into_iter().next().unwrap();
    c.handle(t(2), &offer);
    c.handle(t(3), &offer);
    let actions: Vec<_> = std::iter::from_fn(|| c.poll_action()).collect();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(
        std::iter::from_fn(|| c.poll_transmit()).count(),
        2,
        "two acknowledgements"
    );
    // The pair ends; a replay of its offer afterwards is refused, not installed.
    c.handle(t(4), &Msg::Return { pair });
    let _ = std::iter::from_fn(|| c.poll_action()).count();
    let _ = std::iter::from_fn(|| c.poll_transmit()).count();
    c.handle(t(5), &offer);
    assert!(
        c.poll_action().is_none(),
        "a replayed offer installs nothing"
    );
    assert_eq!(c.counts().unknown_pair, 2);
    // A repeated Return is acknowledged again (the first answer may have been lost).
    c.handle(t(6), &Msg::Return { pair });
    assert_eq!(c.poll_transmit(), Some(Msg::Returned { pair }));
}

#[test]
fn the_two_offers_mirror_each_other_with_reserved_spis() {
    let mut m = Manager::default();
    let a = (vip(1), addr("192.0.2.10:4500"));
    let b = (vip(2), addr("198.51.100.10:61000"));
    m.offer(t(0), a, b, keys(), 60);
    let o: Vec<Offer> = std::iter::from_fn(|| m.poll_transmit())
        .map(|(_, msg)| match msg {
            Msg::Offer { offer, .. } => offer,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(o[0].inbound, o[1].outbound);
    assert_eq!(o[1].inbound, o[0].outbound);
    assert_ne!(o[0].inbound.spi, o[1].inbound.spi);
    assert_ne!(o[0].inbound.keymat, o[1].inbound.keymat);
    for x in &o {
        assert_eq!(x.inbound.spi & 0xFF80_0000, DIRECT_SPI_BASE);
    }
    assert_eq!(
        (o[0].peer, o[1].peer),
        (b.1, a.1),
        "each gets the other's NAT-T address"
    );
    assert_eq!((o[0].local_ts, o[0].remote_ts), (a.0, b.0));
    // The encoding carries it whole; truncations and trailing bytes are refused.
    let msg = Msg::Offer {
        pair: 9,
        offer: o[0].clone(),
    };
    let bytes = msg.encode();
    assert_eq!(Msg::decode(&bytes), Ok(msg));
    for n in 0..bytes.len() {
        assert!(Msg::decode(&bytes[..n]).is_err());
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Msg::decode(&longer).is_err());
    assert!(
        !format!("{:?}", o[0]).contains("17, 17"),
        "no key bytes in Debug"
    );
}

/// Rekeys on virtual time: the manager, two clients, a network that loses and reorders the
/// manager's messages, traffic both ways on whatever SA each client seals on.
struct RekeySim {
    now: u64,
    mgr: Manager,
    cl: [DirectClient; 2],
    /// (deliver at ms, to: None = manager, Some(i) = client i, from client, msg).
    wire: Vec<(u64, Option<usize>, usize, Msg)>,
    coin: Coin,
    loss_pct: u64,
    /// Client 1 neither receives nor sends a message of the manager from then on (ms).
    mute_1_at: u64,
    /// Per client: the pair whose outbound SA it seals on.
    sealing: [Option<u64>; 2],
    /// (client, pair) -> when its inbound SA was installed / its SAs deleted (ms).
    installed: BTreeMap<(usize, u64), u64>,
    deleted: BTreeMap<(usize, u64), u64>,
    /// (client, pair) that ever sealed: never again after it stopped.
    stopped: BTreeSet<(usize, u64)>,
    lifetime: u32,
}

/// The core keeps a returned pair's inbound SA this long (`core::direct_paths::INBOUND_GRACE`).
const GRACE_MS: u64 = 2000;

impl RekeySim {
    fn new(seed: u64, loss_pct: u64, lifetime: u32) -> RekeySim {
        RekeySim {
            now: 0,
            mgr: Manager::default(),
            cl: [DirectClient::default(), DirectClient::default()],
            wire: Vec::new(),
            coin: Coin(seed | 1),
            loss_pct,
            mute_1_at: u64::MAX,
            sealing: [None; 2],
            installed: BTreeMap::new(),
            deleted: BTreeMap::new(),
            stopped: BTreeSet::new(),
            lifetime,
        }
    }

    fn muted(&self, i: usize) -> bool {
        i == 1 && self.now >= self.mute_1_at
    }

    fn send(&mut self, to: Option<usize>, from: usize, m: Msg) {
        if self.muted(from) || self.coin.next() % 100 < self.loss_pct {
            return;
        }
        let at = self.now + self.coin.next() % 300;
        self.wire.push((at, to, from, m));
    }

    fn stop_sealing(&mut self, i: usize) {
        if let Some(p) = self.sealing[i].take() {
            self.stopped.insert((i, p));
        }
    }

    fn collect(&mut self) {
        while let Some((to, m)) = self.mgr.poll_transmit() {
            let i = usize::from(to != vip(1));
            self.send(Some(i), i, m);
        }
        for i in 0..2 {
            while let Some(m) = self.cl[i].poll_transmit() {
                self.send(None, i, m);
            }
            while let Some(a) = self.cl[i].poll_action() {
                match a {
                    Action::InstallInbound { pair, .. } => {
                        self.installed.insert((i, pair), self.now);
                    }
                    Action::SendDirect { pair } | Action::Rekeyed { pair, .. } => {
                        self.stop_sealing(i);
                        assert!(
                            !self.stopped.contains(&(i, pair)),
                            "client {i} seals on pair {pair} again"
                        );
                        self.sealing[i] = Some(pair);
                    }
                    Action::BackToGateway { pair } | Action::DeleteSas { pair } => {
                        if self.sealing[i] == Some(pair) {
                            self.stop_sealing(i);
                        }
                        if matches!(a, Action::DeleteSas { .. }) {
                            self.deleted.insert((i, pair), self.now);
                        }
                    }
                    Action::DirectOnly { .. } | Action::Rebind { .. } => {}
                }
            }
        }
    }

    /// What each sealed packet needs: the receiver installed the SA and has not deleted it
    /// (beyond the grace), and the sender is within the SA's hard lifetime.
    fn check(&self) {
        for i in 0..2 {
            let Some(p) = self.sealing[i] else { continue };
            let at = self.installed.get(&(1 - i, p));
            assert!(
                at.is_some(),
                "client {i} seals on pair {p} before the peer installed it"
            );
            if let Some(d) = self.deleted.get(&(1 - i, p)) {
                assert!(
                    self.now < d + GRACE_MS,
                    "client {i} seals on pair {p}, deleted by the peer at {d} ms (now {})",
                    self.now
                );
            }
            let mine = self.installed[&(i, p)];
            assert!(
                self.now < mine + u64::from(self.lifetime) * 1000,
                "client {i} seals on pair {p} past its hard lifetime"
            );
        }
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            let now = t(self.now);
            let (due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= self.now);
            self.wire = rest;
            for (_, to, from, m) in due {
                match to {
                    None => self.mgr.handle(now, vip(from as u8 + 1), &m),
                    Some(i) if self.muted(i) => {}
                    Some(i) => self.cl[i].handle(now, &m),
                }
                self.collect();
            }
            // The data path keeps working; only the manager's messages are lost.
            for i in 0..2 {
                if let Some(p) = self.sealing[1 - i] {
                    self.cl[i].direct_authenticated(now, p);
                }
            }
            self.mgr.handle_timeout(now);
            while let Some(old) = self.mgr.poll_rekey_due() {
                if let Some(new) = self.mgr.rekey(now, old, keys()) {
                    let j = self.coin.next() as u32;
                    self.mgr.schedule_rekey(new, j);
                }
            }
            for c in self.cl.iter_mut() {
                c.handle_timeout(now);
            }
            self.collect();
            self.check();
        }
    }
}

/// Starts a pair (lifetime `lifetime` s) and runs until both seal on it.
fn rekey_sim(seed: u64, loss: u64, lifetime: u32) -> (RekeySim, u64) {
    let mut s = RekeySim::new(seed, loss, lifetime);
    let pair = s.mgr.offer(
        t(0),
        (vip(1), addr("192.0.2.10:4500")),
        (vip(2), addr("198.51.100.10:4500")),
        keys(),
        lifetime,
    );
    s.mgr.schedule_rekey(pair, s.coin.next() as u32);
    s.collect();
    (s, pair)
}

#[test]
fn rekeys_under_traffic_loss_and_reordering_keep_the_order_and_the_lifetime() {
    let (mut rekeyed, mut runs) = (0, 0);
    let mut lost_by = [0u64; 4];
    for seed in 1..=120u64 {
        let loss = [0, 10, 30][seed as usize % 3];
        let (mut s, first) = rekey_sim(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), loss, 20);
        // 65 s: three lifetimes; every 10 ms the invariants of `check`.
        s.run(65_000);
        lost_by[loss as usize / 10] += u64::from(s.sealing == [None, None]);
        runs += 1;
        let m = s.mgr.counts();
        if s.sealing == [None, None] {
            // A rekey (or the first offer) did not get through in time: back on the gateway
            // path, every pair ended (no client keeps a pair the manager forgot).
            assert_eq!(s.mgr.pairs(), 0, "seed {seed}: {m:?}");
            assert!(
                m.expired + m.failed + m.idle >= 1 || loss > 0,
                "seed {seed}: {m:?}"
            );
            continue;
        }
        // Still direct (both; one may have moved to a successor the other has not yet) on a
        // successor of the first pair, rekeyed at least 3 times.
        let (Some(p0), Some(p1)) = (s.sealing[0], s.sealing[1]) else {
            panic!(
                "seed {seed}: one side direct, the other not: {:?}",
                s.sealing
            )
        };
        assert!(p0.abs_diff(p1) <= 1, "seed {seed}: {p0} {p1}");
        assert!(p0.min(p1) > first, "seed {seed}: still on the first pair");
        assert!(m.rekeys >= 3, "seed {seed}: {m:?}");
        rekeyed += 1;
        // Every pair before the live one (and its successor under way) is deleted on both
        // clients: only the pairs of the rekey under way are left in the manager.
        s.run(3000);
        let live = s.sealing[0].unwrap_or(0).min(s.sealing[1].unwrap_or(0));
        for old in first..live.saturating_sub(1) {
            for i in 0..2 {
                if s.installed.contains_key(&(i, old)) {
                    assert!(
                        s.deleted.contains_key(&(i, old)),
                        "seed {seed}: client {i} keeps pair {old}"
                    );
                }
            }
        }
        assert!(s.mgr.pairs() <= 2, "seed {seed}: {} pairs", s.mgr.pairs());
        if loss == 0 {
            assert_eq!(m.expired, 0, "seed {seed}: no loss, no last chance");
        }
    }
    // Without loss every run keeps its direct path through three rekeys; with loss most do.
    assert_eq!(lost_by[0], 0, "every run without loss stays direct");
    assert!(
        rekeyed * 10 >= runs * 8,
        "{rekeyed} of {runs} kept the direct path"
    );
    println!(
        "{rekeyed} of {runs} runs rekeyed and stayed direct; back on the gateway path at 0/10/30% loss: {} {} {}",
        lost_by[0], lost_by[1], lost_by[3]
    );
}

#[test]
fn a_rekey_a_client_does_not_answer_returns_the_pair_before_its_hard_lifetime() {
    let (mut s, first) = rekey_sim(11, 0, 10);
    s.run(3000);
    assert_eq!(s.sealing, [Some(first), Some(first)]);
    // Client 1 goes silent before the soft lifetime (7.5-8.5 s).
    s.mute_1_at = 5000;
    s.run(6900);
    // Client 0 is back on the gateway path before the pair's hard lifetime (10 s from its
    // install): the manager's last chance (9.5 s) returned both pairs.
    assert_eq!(s.sealing[0], None, "client 0 still direct");
    assert!(
        s.deleted.contains_key(&(0, first)),
        "client 0 deleted the pair"
    );
    let m = s.mgr.counts();
    assert_eq!(m.rekeys, 0);
    assert!(m.expired >= 1, "{m:?}");
    // Client 1, silent, stops on its own at its hard lifetime (`check` runs every 10 ms).
    s.run(1500);
    assert_eq!(s.sealing[1], None, "client 1 stopped at its hard lifetime");
    assert_eq!(s.cl[1].counts().expired, 1);
}

#[test]
fn a_rekey_offer_has_fresh_spis_encodes_whole_and_is_refused_from_a_client() {
    let mut m = Manager::default();
    let first = m.offer(
        t(0),
        (vip(1), addr("192.0.2.10:4500")),
        (vip(2), addr("198.51.100.10:4500")),
        keys(),
        10,
    );
    let spi_of = |msg: &Msg| match msg {
        Msg::Offer { offer, .. } | Msg::Rekey { offer, .. } => offer.inbound.spi,
        other => panic!("{other:?}"),
    };
    let old: Vec<u32> = std::iter::from_fn(|| m.poll_transmit())
        .map(|(_, msg)| spi_of(&msg))
        .collect();
    assert!(
        m.rekey(t(1), first, keys()).is_none(),
        "not established yet"
    );
    for v in [vip(1), vip(2)] {
        m.handle(t(1), v, &Msg::Installed { pair: first });
    }
    for v in [vip(1), vip(2)] {
        m.handle(t(2), v, &Msg::Switching { pair: first });
    }
    let _ = std::iter::from_fn(|| m.poll_transmit()).count();
    let new = m.rekey(t(3), first, keys()).expect("established");
    assert!(
        m.rekey(t(3), first, keys()).is_none(),
        "one rekey at a time"
    );
    let msgs: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert_eq!(msgs.len(), 2);
    for (_, msg) in &msgs {
        let Msg::Rekey {
            pair,
            replaces,
            offer,
        } = msg
        else {
            panic!("{msg:?}")
        };
        assert_eq!((*pair, *replaces), (new, first));
        assert_eq!(offer.inbound.spi & 0xFF80_0000, DIRECT_SPI_BASE);
        assert!(!old.contains(&offer.inbound.spi), "a SPI of the old pair");
        let b = msg.encode();
        assert_eq!(b.len(), 79 + 8, "an IPv4 offer and the replaced pair");
        assert_eq!(Msg::decode(&b).as_ref(), Ok(msg));
        for n in 0..b.len() {
            assert!(Msg::decode(&b[..n]).is_err());
        }
    }
    assert_ne!(spi_of(&msgs[0].1), spi_of(&msgs[1].1));
    // A client sending the manager's kind is refused.
    m.handle(t(4), vip(1), &msgs[0].1);
    assert_eq!(m.counts().wrong_direction, 1);
    // The old pair stays until both moved; then it is returned (its SAs deleted) without
    // ending the traffic's pair in the detector's eyes.
    for v in [vip(1), vip(2)] {
        m.handle(t(5), v, &Msg::Installed { pair: new });
    }
    m.handle(t(6), vip(1), &Msg::Switching { pair: new });
    assert!(m
        .poll_transmit()
        .is_some_and(|(_, x)| matches!(x, Msg::PeerReady { .. })));
    assert!(m
        .poll_transmit()
        .is_some_and(|(_, x)| matches!(x, Msg::PeerReady { .. })));
    assert!(m.poll_transmit().is_none(), "no Return before both moved");
    m.handle(t(6), vip(2), &Msg::Switching { pair: new });
    let ret: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    assert_eq!(ret.len(), 2);
    assert!(ret.iter().all(|(_, x)| *x == Msg::Return { pair: first }));
    for v in [vip(1), vip(2)] {
        m.handle(t(7), v, &Msg::Returned { pair: first });
    }
    assert_eq!(m.pairs(), 1);
    assert_eq!(
        m.poll_ended(),
        None,
        "the retired pair is not an ended path"
    );
    assert_eq!(m.counts().rekeys, 1);
}

/// An established pair of the manager (first Offer per member returned too).
fn established_pair(m: &mut Manager, lifetime: u32) -> (u64, Vec<(IpAddr, Msg)>) {
    let pair = m.offer(
        t(0),
        (vip(1), addr("192.0.2.10:4500")),
        (vip(2), addr("198.51.100.10:4500")),
        keys(),
        lifetime,
    );
    m.schedule_rekey(pair, 0);
    let offers: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
    for v in [vip(1), vip(2)] {
        m.handle(t(1), v, &Msg::Installed { pair });
    }
    for v in [vip(1), vip(2)] {
        m.handle(t(2), v, &Msg::Switching { pair });
    }
    let _ = std::iter::from_fn(|| m.poll_transmit()).count();
    (pair, offers)
}

#[test]
fn a_rekey_asked_for_near_the_sequence_limit_is_due_at_once_and_once() {
    let mut m = Manager::default();
    let pending = m.offer(
        t(0),
        (vip(3), addr("192.0.2.30:4500")),
        (vip(4), addr("192.0.2.40:4500")),
        keys(),
        3600,
    );
    m.handle(t(1), vip(3), &Msg::RekeyNeeded { pair: pending });
    assert_eq!(
        m.poll_rekey_due(),
        None,
        "not established: nothing to rekey"
    );
    assert_eq!(m.counts().duplicates, 1);

    let (pair, _) = established_pair(&mut m, 3600);
    m.handle(t(3), vip(9), &Msg::RekeyNeeded { pair });
    assert_eq!(m.counts().not_member, 1);
    assert_eq!(m.poll_rekey_due(), None);
    // Both ask (each one's outbound SA warned): queued once, due now, not at 51-57 min.
    m.handle(t(3), vip(1), &Msg::RekeyNeeded { pair });
    m.handle(t(3), vip(2), &Msg::RekeyNeeded { pair });
    assert_eq!(m.counts().rekeys_asked, 2);
    assert_eq!(m.poll_rekey_due(), Some(pair));
    assert_eq!(m.poll_rekey_due(), None);
    let new = m.rekey(t(3), pair, keys()).expect("established");
    // Being replaced: a late ask changes nothing, and the soft lifetime no longer comes.
    m.handle(t(4), vip(1), &Msg::RekeyNeeded { pair });
    assert_eq!(m.counts().duplicates, 2);
    m.handle_timeout(t(3_600_000 * 9 / 10));
    assert_eq!(m.poll_rekey_due(), None);
    assert_ne!(new, pair);
    // The encoding: kind 11, the pair, nothing else; a gateway's message kind at a client.
    let msg = Msg::RekeyNeeded { pair };
    let b = msg.encode();
    assert_eq!(b.len(), 10);
    assert_eq!(Msg::decode(&b), Ok(msg.clone()));
    assert!(Msg::decode(&b[..9]).is_err());
    let mut c = DirectClient::default();
    c.handle(t(5), &msg);
    assert_eq!(c.counts().wrong_direction, 1);
}

#[test]
fn a_client_asks_for_the_rekey_near_the_sequence_limit_and_goes_back_if_it_does_not_come() {
    let mut m = Manager::default();
    let (pair, offers) = established_pair(&mut m, 3600);
    let offer = offers
        .iter()
        .find_map(|(v, msg)| (*v == vip(1)).then_some(msg.clone()))
        .unwrap();
    let mut c = DirectClient::default();
    assert!(!c.seq_near_wrap(t(0), pair), "an unknown pair");
    c.handle(t(0), &offer);
    assert!(!c.seq_near_wrap(t(0), pair), "not sending directly yet");
    c.handle(t(10), &Msg::PeerReady { pair });
    assert!(c.sends_direct(pair));
    let _ = std::iter::from_fn(|| c.poll_action()).count();
    let _ = std::iter::from_fn(|| c.poll_transmit()).count();

    assert!(c.seq_near_wrap(t(100), pair));
    assert_eq!(c.poll_transmit(), Some(Msg::RekeyNeeded { pair }));
    assert_eq!(c.counts().rekeys_asked, 1);
    // Inbound traffic keeps the path alive; the deadline is the grace, not the hour.
    let grace = t(100).saturating_add(rekey::SEQ_WRAP_GRACE);
    c.direct_authenticated(t(900), pair);
    assert_eq!(c.poll_timeout(), Some(grace));
    c.handle_timeout(t(1099));
    assert!(c.sends_direct(pair));
    c.handle_timeout(grace);
    assert!(!c.sends_direct(pair));
    let actions: Vec<_> = std::iter::from_fn(|| c.poll_action()).collect();
    assert!(
        actions.contains(&Action::BackToGateway { pair }),
        "{actions:?}"
    );
    assert!(actions.contains(&Action::DeleteSas { pair }), "{actions:?}");
    assert_eq!(c.poll_transmit(), Some(Msg::Idle { pair }));
}
