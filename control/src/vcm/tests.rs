use super::*;
use crate::config::vcm::IdPattern;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn t(secs: u64) -> Instant {
    Instant::from_nanos(secs * 1_000_000_000)
}

fn detector(allow: &[IdPattern]) -> HairpinDetector {
    HairpinDetector::new(VcmPolicy {
        threshold_pps: 100,
        direct_paths: allow.to_vec(),
        direct_lifetime_secs: 3600,
        inside: Vec::new(),
    })
}

/// 10.99.0.1 is alice, 10.99.0.2 bob, 10.99.0.3 mallory; others hold no IKE SA.
fn who(a: IpAddr) -> Option<String> {
    match a.to_string().as_str() {
        "10.99.0.1" => Some("alice@example.com".into()),
        "10.99.0.2" => Some("bob@example.com".into()),
        "10.99.0.3" => Some("mallory@other.test".into()),
        _ => None,
    }
}

#[test]
fn a_pair_above_the_threshold_is_offered_once_in_address_order() {
    let mut d = detector(&[
        IdPattern::Exact("alice@example.com".into()),
        IdPattern::Exact("bob@example.com".into()),
    ]);
    let pair = (ip("10.99.0.2"), ip("10.99.0.1"));
    assert_eq!(
        d.observe(t(1), pair, 99, 1000, who),
        Decision::BelowThreshold
    );
    // 60 packets in half a second: 120 packets/s.
    let Decision::Candidate(c) = d.observe(t(2), pair, 60, 500, who) else {
        panic!("a candidate");
    };
    assert_eq!(c.a, (ip("10.99.0.1"), "alice@example.com".into()));
    assert_eq!(c.b, (ip("10.99.0.2"), "bob@example.com".into()));
    assert_eq!(c.pps, 120);
    // Either direction, again: offered already.
    assert_eq!(
        d.observe(t(3), (pair.1, pair.0), 500, 1000, who),
        Decision::Offered
    );
    assert_eq!(d.observe(t(4), pair, 500, 1000, who), Decision::Offered);
    // Its direct path ended: it may be offered again.
    d.forget(pair.0, pair.1);
    assert!(matches!(
        d.observe(t(5), pair, 500, 1000, who),
        Decision::Candidate(_)
    ));
    let c = d.counts();
    assert_eq!((c.reports, c.candidates, c.below_threshold), (5, 2, 1));
}

#[test]
fn both_clients_must_be_allowed_and_known() {
    let mut d = detector(&[
        IdPattern::Exact("alice@example.com".into()),
        IdPattern::Exact("bob@example.com".into()),
    ]);
    assert_eq!(
        d.observe(t(1), (ip("10.99.0.1"), ip("10.99.0.3")), 500, 1000, who),
        Decision::NotAllowed,
        "mallory is not in the policy"
    );
    assert_eq!(
        d.observe(t(1), (ip("10.99.0.1"), ip("10.99.0.9")), 500, 1000, who),
        Decision::UnknownClient
    );
    let mut nobody = detector(&[]);
    assert_eq!(
        nobody.observe(t(1), (ip("10.99.0.1"), ip("10.99.0.2")), 500, 1000, who),
        Decision::NotAllowed,
        "an empty policy allows nobody"
    );
    assert_eq!(d.pairs(), 0, "refusals take no room");
    assert_eq!((d.counts().not_allowed, d.counts().unknown_client), (1, 1));
}

#[test]
fn the_table_is_bounded_and_idle_pairs_expire() {
    let mut d = detector(&[IdPattern::Any]);
    let any = |_: IpAddr| Some("x".to_string());
    for i in 0..(MAX_PAIRS as u32 + 5) {
        let a = IpAddr::from(core::net::Ipv4Addr::from(0x0a00_0000 + 2 * i));
        let b = IpAddr::from(core::net::Ipv4Addr::from(0x0a00_0001 + 2 * i));
        let at = Instant::from_nanos(u64::from(i) + 1);
        assert!(matches!(
            d.observe(at, (a, b), 1000, 1000, any),
            Decision::Candidate(_)
        ));
    }
    assert_eq!(d.pairs(), MAX_PAIRS);
    assert_eq!(d.counts().evicted, 5);
    // The first pairs went first: the very first one is new again.
    let first = (ip("10.0.0.0"), ip("10.0.0.1"));
    assert!(matches!(
        d.observe(t(1), first, 1000, 1000, any),
        Decision::Candidate(_)
    ));
    d.expire(t(1).saturating_add(PAIR_IDLE));
    assert_eq!(
        d.pairs(),
        1,
        "only the pair seen at 1 s is younger than the idle time"
    );
    d.expire(t(2).saturating_add(PAIR_IDLE));
    assert_eq!(d.pairs(), 0);
}

#[test]
fn a_zero_period_does_not_divide_by_zero() {
    let mut d = detector(&[IdPattern::Any]);
    let any = |_: IpAddr| Some("x".to_string());
    assert!(matches!(
        d.observe(t(1), (ip("10.99.0.1"), ip("10.99.0.2")), u64::MAX, 0, any),
        Decision::Candidate(_)
    ));
}
