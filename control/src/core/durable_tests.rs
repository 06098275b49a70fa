//! Durable IKE state on virtual time (`crate::testing`): gateway B (a control core with a store
//! in memory) answers a bare IKE peer; its control process crashes before or after each write
//! of the store, in turn, and a new one adopts what the store holds over the same data plane.
//! Afterwards the tunnel carries on (the peer's rekeys and deletes are answered), no message
//! id or IV of B's ever stood for two different messages, and B's data plane holds exactly the
//! SAs of B's CHILD_SAs. Also: the stored bytes' refusals.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use ike::{ChildSpi, IkeSaId};
use proto::Datagram;

use super::durable::{ChildSas, StoreError, StoredIkeSa};
use crate::testing::{MemStore, World};

const PEER: &str = "connections:
  - { name: site, local_id: a.test, remote_id: b.test, psk: \"durable-test-psk\",
      local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24], remote_addr: 192.0.2.2 }
";
const B: &str = "connections:
  - { name: site, local_id: b.test, remote_id: a.test, psk: \"durable-test-psk\",
      local_ts: [10.2.0.0/24], remote_ts: [10.1.0.0/24] }
";

type Wire = Rc<RefCell<Vec<Datagram>>>;

/// B (party 0, with `store`) and the peer (party 1), the peer connecting; every datagram B
/// sends is logged.
fn world(store: &MemStore) -> (World, Wire) {
    let mut w = World::new();
    w.gateway(B, "192.0.2.2", 1);
    w.gw(0).driver.set_store(Box::new(store.clone()));
    w.peer(PEER, "192.0.2.1");
    let wire: Wire = Rc::default();
    let log = wire.clone();
    w.fault = Some(Box::new(move |from, _, d| {
        if from == 0 {
            log.borrow_mut().push(d.clone());
        }
        true
    }));
    w.peer_connect(0, "site", "192.0.2.2:500");
    (w, wire)
}

/// The peer's IKE SA and its CHILD_SAs' inbound SPIs.
fn peer_sa(w: &World) -> Option<(IkeSaId, Vec<ChildSpi>)> {
    let l = w.peers[0].endpoint.list();
    l.into_iter()
        .find(|s| s.2)
        .map(|s| (s.0, s.3.iter().map(|c| c.0).collect()))
}

/// Runs `d`; a crashed control process is started again from the store first.
fn run(w: &mut World, store: &MemStore, d: Duration, restarts: &mut usize) {
    w.run_for(d);
    if w.gws[0].crashed {
        let report = w.restart_control(0, B, store.clone());
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        *restarts += 1;
        // The peer retransmits what went unanswered; B's rekeys of the adopted CHILD_SAs run.
        w.run_for(Duration::from_secs(40));
    }
}

/// The peer's exchanges, one after the other, each given time to finish.
fn scenario(w: &mut World, store: &MemStore) -> usize {
    let mut restarts = 0;
    let step = Duration::from_secs(3);
    run(w, store, step, &mut restarts);
    for op in 0..4 {
        let now = w.now;
        let Some((ike, children)) = peer_sa(w) else {
            break;
        };
        let ep = &mut w.peers[0].endpoint;
        let _ = match op {
            0 => ep.rekey_child(now, ike, children[0]),
            1 => ep.create_child(now, ike),
            2 => ep.rekey_ike(now, ike),
            _ => ep.delete_child(now, ike, children[0]),
        };
        run(w, store, step, &mut restarts);
    }
    restarts
}

/// No (IKE SPIs, message id, request or response) and no (IKE SPIs, IV) of B's stood for two
/// different messages.
fn assert_nothing_repeated(wire: &Wire, what: &str) {
    let mut by_id: BTreeMap<(u64, u64, bool, u32), Vec<u8>> = BTreeMap::new();
    let mut by_iv: BTreeMap<(u64, u64, u64), Vec<u8>> = BTreeMap::new();
    for d in wire.borrow().iter() {
        let Ok(h) = ike::wire::Header::parse(&d.payload) else {
            continue;
        };
        if h.exchange == ike::wire::exchange::IKE_SA_INIT {
            continue;
        }
        let key = (h.spi_i, h.spi_r, h.is_response(), h.message_id);
        let prev = by_id.entry(key).or_insert_with(|| d.payload.clone());
        assert_eq!(*prev, d.payload, "{what}: message id {key:?} sent twice");
        if let Some(iv) = d.payload.get(32..40) {
            let iv = u64::from_be_bytes(iv.try_into().unwrap());
            let prev = by_iv
                .entry((h.spi_i, h.spi_r, iv))
                .or_insert_with(|| d.payload.clone());
            assert_eq!(*prev, d.payload, "{what}: IV {iv:#x} sealed two messages");
        }
    }
}

/// B's IKE SA and the peer's agree, and B's data plane holds exactly B's CHILD_SAs' SAs.
fn assert_in_agreement(w: &mut World, what: &str) {
    let (_, peer_children) = peer_sa(w).unwrap_or_else(|| panic!("{what}: the peer's IKE SA"));
    let peer: BTreeSet<(u32, u32)> = w.peers[0]
        .endpoint
        .list()
        .into_iter()
        .filter(|s| s.2)
        .flat_map(|s| s.3)
        .map(|(i, o)| (o.0, i.0))
        .collect();
    assert_eq!(peer.len(), peer_children.len());
    let b: BTreeSet<(u32, u32)> = w
        .gw(0)
        .core()
        .children()
        .into_iter()
        .map(|c| (c.spi_in.0, c.spi_out.0))
        .collect();
    assert_eq!(b, peer, "{what}: B's CHILD_SAs are the peer's");
    assert_eq!(w.gw(0).core().ike_sa_count(), 1, "{what}");
    let dp = &w.gw(0).link.workers[0];
    let dp_in: BTreeSet<u32> = dp.inbound.keys().map(|s| s.0).collect();
    let dp_out: BTreeSet<u32> = dp.outbound.values().map(|s| s.0).collect();
    assert_eq!(
        dp_in,
        b.iter().map(|c| c.0).collect(),
        "{what}: inbound SAs"
    );
    assert_eq!(
        dp_out,
        b.iter().map(|c| c.1).collect(),
        "{what}: outbound SAs"
    );
}

/// The peer rekeys a CHILD_SA once more: B answers.
fn assert_answers(w: &mut World, what: &str) {
    let (ike, children) = peer_sa(w).unwrap();
    let now = w.now;
    let before = w.gw(0).core().child_counts().1;
    w.peers[0]
        .endpoint
        .rekey_child(now, ike, children[0])
        .unwrap();
    w.run_for(Duration::from_secs(3));
    assert_eq!(
        w.gw(0).core().child_counts().1,
        before + 1,
        "{what}: B took the rekey"
    );
}

#[test]
fn without_a_crash_every_change_is_stored_and_a_deleted_ike_sa_forgotten() {
    let store = MemStore::default();
    let (mut w, wire) = world(&store);
    assert_eq!(scenario(&mut w, &store), 0);
    assert_in_agreement(&mut w, "no crash");
    assert_nothing_repeated(&wire, "no crash");
    let files = store.files.lock().unwrap().clone();
    assert_eq!(files.len(), 1, "the rekeyed IKE SA's file is gone");
    let (id, bytes) = files.iter().next().unwrap();
    let s = StoredIkeSa::from_bytes(bytes).unwrap();
    assert_eq!(s.record.id(), *id);
    let ours: BTreeSet<u32> = s.record.children.iter().map(|c| c.spi_in.0).collect();
    let b: BTreeSet<u32> = w
        .gw(0)
        .core()
        .children()
        .iter()
        .map(|c| c.spi_in.0)
        .collect();
    assert_eq!(ours, b, "the stored record is the current one");
    let ops = store.ops.load(std::sync::atomic::Ordering::SeqCst);
    assert!(ops >= 6, "a write per exchange: {ops}");
}

/// The property: a crash at any point between an exchange and its write loses no
/// IKE SA and repeats no message id or IV.
#[test]
fn a_crash_before_or_after_any_write_keeps_the_tunnel_and_repeats_nothing() {
    let clean = MemStore::default();
    let (mut w, _) = world(&clean);
    scenario(&mut w, &clean);
    let ops = clean.ops.load(std::sync::atomic::Ordering::SeqCst);
    let mut crashed = 0;
    for n in 1..=ops {
        for after in [false, true] {
            let what = format!(
                "crash {} operation {n}",
                if after { "after" } else { "before" }
            );
            let store = MemStore {
                crash_at: Some((n, after)),
                ..MemStore::default()
            };
            let (mut w, wire) = world(&store);
            let restarts = scenario(&mut w, &store);
            if peer_sa(&w).is_none() {
                // The crash came before the IKE SA was first stored (its IKE_AUTH answer
                // never left): the peer has nothing to lose.
                assert!(store.files.lock().unwrap().is_empty(), "{what}");
                continue;
            }
            crashed += restarts;
            assert_nothing_repeated(&wire, &what);
            assert_in_agreement(&mut w, &what);
            assert_answers(&mut w, &what);
            assert_nothing_repeated(&wire, &what);
            assert_in_agreement(&mut w, &what);
        }
    }
    assert!(crashed >= ops, "{crashed} restarts over {ops} operations");
}

/// B's own request (a rekey of its CHILD_SA) is in flight when B crashes: the stored record
/// already reserves its message id, so the adopter never sends another request under it,
/// whether the request left (and was answered, the outcome not yet stored) or not.
#[test]
fn a_request_of_ours_in_flight_is_never_repeated_under_its_message_id() {
    // (the store operation to crash at, after the first write of the rekey, or after it)
    for (n, after) in [(1, true), (2, false)] {
        let what = format!("crash at operation {n} of the rekey, after={after}");
        let store = MemStore::default();
        let (mut w, wire) = world(&store);
        w.run_for(Duration::from_secs(3));
        let ops = store.ops.load(std::sync::atomic::Ordering::SeqCst);
        let mut s = store.clone();
        s.crash_at = Some((ops + n, after));
        w.gw(0).driver.set_store(Box::new(s));
        let now = w.now;
        w.gw(0).core().rekey_children(now);
        w.settle();
        assert!(w.gws[0].crashed, "{what}");
        let requests = |wire: &Wire| -> Vec<u32> {
            wire.borrow()
                .iter()
                .filter_map(|d| ike::wire::Header::parse(&d.payload).ok())
                .filter(|h| !h.is_response() && h.exchange != ike::wire::exchange::IKE_SA_INIT)
                .map(|h| h.message_id)
                .collect()
        };
        let before = requests(&wire);
        assert_eq!(
            before.len(),
            n - 1,
            "{what}: the request left only after its write"
        );
        let reserved = store.stored()[0].record.next_request_id;
        let report = w.restart_control(0, B, store.clone());
        assert_eq!(report.adopted.len(), 1, "{what}");
        w.run_for(Duration::from_secs(3));
        assert_nothing_repeated(&wire, &what);
        let after_restart = requests(&wire);
        let first_new = after_restart.get(before.len()).copied();
        assert_eq!(first_new, Some(reserved), "{what}: {after_restart:?}");
    }
}

#[test]
fn stored_bytes_that_are_cut_short_corrupt_or_foreign_are_refused_never_a_panic() {
    let store = MemStore::default();
    let (mut w, _) = world(&store);
    w.run_for(Duration::from_secs(3));
    let bytes = store.files.lock().unwrap().values().next().unwrap().clone();
    let s = StoredIkeSa::from_bytes(&bytes).unwrap();
    assert_eq!(
        s.to_bytes().unwrap().0.as_slice(),
        bytes.as_slice(),
        "round trip"
    );
    assert!(!format!("{s:?}").is_empty());
    for n in 0..bytes.len() {
        let e = StoredIkeSa::from_bytes(&bytes[..n]).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::Truncated | StoreError::Checksum | StoreError::BadMagic
            ),
            "{n}: {e}"
        );
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        assert!(StoredIkeSa::from_bytes(&b).is_err(), "flipped byte {i}");
    }
    let mut b = bytes.clone();
    b[8] = 0;
    b[9] = 9;
    assert_eq!(
        StoredIkeSa::from_bytes(&b).unwrap_err(),
        StoreError::UnknownVersion(9)
    );
    let mut b = bytes.clone();
    b.push(0);
    assert_eq!(
        StoredIkeSa::from_bytes(&b).unwrap_err(),
        StoreError::Checksum
    );
    assert_eq!(
        StoredIkeSa::from_bytes(b"not an IKE SA").unwrap_err(),
        StoreError::BadMagic
    );
    // A record whose connection this configuration lacks is refused by name, and its SAs in
    // the data plane are deleted as orphans.
    let other = StoredIkeSa {
        sas: vec![ChildSas {
            spi_in: ChildSpi(0x1234_5678),
            in_id: proto::SaId((1 << 20) + 40),
            spi_out: ChildSpi(0x0bad_cafe),
            out_id: proto::SaId((1 << 20) + 41),
        }],
        ..s.clone()
    };
    let mut record = other.record.clone();
    record.connection = "gone".into();
    let stranger = StoredIkeSa { record, ..other };
    let report = w.restart_control(0, B, MemStore::default());
    assert!(report.adopted.is_empty() && report.refused.is_empty());
    let now = w.now;
    let report = w.gw(0).core().adopt_stored(now, vec![stranger]);
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.refused[0].1.contains("gone"), "{report:?}");
    assert_eq!(report.orphans_deleted, 2);
}

/// An initiating gateway (a road-warrior client, say) restarted from its store carries its
/// IKE SA on: starting its connections again initiates nothing new.
#[test]
fn a_restarted_initiator_does_not_initiate_again() {
    let store = MemStore::default();
    let mut w = World::new();
    w.gateway(PEER, "192.0.2.1", 1);
    w.gw(0).driver.set_store(Box::new(store.clone()));
    w.peer(B, "192.0.2.2");
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(3));
    assert_eq!(w.gw(0).core().ike_sa_count(), 1);
    let report = w.restart_control(0, PEER, store.clone());
    assert_eq!(report.adopted.len(), 1);
    let now = w.now;
    w.gw(0).core().initiate(now);
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.gw(0).core().ike_sa_count(), 1, "no second IKE SA");
    assert_eq!(w.peers[0].endpoint.list().len(), 1, "the peer holds one");
    assert_in_agreement_with_peer_as_responder(&mut w);
}

/// B's data plane and the peer agree (the peer answered, B initiated).
fn assert_in_agreement_with_peer_as_responder(w: &mut World) {
    let peer: BTreeSet<(u32, u32)> = w.peers[0]
        .endpoint
        .list()
        .into_iter()
        .flat_map(|s| s.3)
        .map(|(i, o)| (o.0, i.0))
        .collect();
    let ours: BTreeSet<(u32, u32)> = w
        .gw(0)
        .core()
        .children()
        .into_iter()
        .map(|c| (c.spi_in.0, c.spi_out.0))
        .collect();
    assert_eq!(ours, peer);
}
