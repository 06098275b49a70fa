#![no_main]
//! The cluster store's records (`control::cluster::store::record`) and a crypto node's
//! recovery from whatever a store holds. Any bytes as one value: whatever decodes encodes to
//! bytes that decode to the same record. Then the bytes as a sequence of records (key kind,
//! id, length, plaintext), sealed under the cluster key at their keys in a memory store, and
//! a crypto node recovers from that store and its edges say hello: inconsistent records (a
//! CHILD_SA without its IKE SA, placements on edges that never were, a direction missing,
//! IKE SA records that do not read) may be refused or rekeyed, never a panic.
use std::sync::Arc;
use std::time::Duration;

use control::cluster::repository::NodeStore;
use control::cluster::store::keys::Name;
use control::cluster::store::mem::MemStore;
use control::cluster::store::{ClusterStore, Record, RecordKey, Request, Sealer, Store, Txn};
use control::cluster::{CryptoNode, EdgeMsg};
use control::core::ControlCore;
use control::repo::SaRepository;
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::decode(data) {
        let again = r.encode().unwrap();
        assert_eq!(Record::decode(&again).unwrap(), r);
    }

    let repo = ClusterStore::new(
        MemStore::new(),
        &Name::new("fuzz").unwrap(),
        Arc::new(Sealer::new(Zeroizing::new([7; 32]))),
    );
    let mut repo = repo;
    let mut t = Txn::default();
    let mut rest = data;
    let mut seen = std::collections::HashSet::new();
    while rest.len() >= 7 {
        let (head, tail) = rest.split_at(7);
        let id = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let len = usize::from(u16::from_le_bytes([head[5], head[6]])).min(tail.len());
        let (plain, tail) = tail.split_at(len);
        rest = tail;
        let key = match head[0] % 5 {
            0 => RecordKey::Ike(u64::from(id)),
            1 => RecordKey::Child(id),
            2 => RecordKey::Placement(id),
            3 => RecordKey::Seq(id),
            _ => RecordKey::Edge(Name::new(&format!("edge-{}", id % 4)).unwrap()),
        };
        let path = repo.layout().key(&key);
        if !seen.insert(path.clone()) {
            continue;
        }
        let value = repo.sealer().seal(&path, plain).unwrap();
        t.put(path, value, None);
    }
    if !t.ops.is_empty() && repo.store().call(Request::Txn(t), Duration::from_secs(1)).is_err() {
        return;
    }

    let core = ControlCore::for_cluster_node(
        Vec::new(),
        SaRepository::new(Vec::new(), 64),
        [1; 32],
        "192.0.2.1".parse().unwrap(),
        4,
        1,
    )
    .unwrap();
    let mut node = CryptoNode::new(core);
    node.enable_store();
    let now = control::driver::Instant::ZERO;
    let mut st = NodeStore::new(repo, 10);
    if st.recover(&mut node, now, Duration::from_secs(1)).is_err() {
        return;
    }
    for e in 0..4u16 {
        node.edge_up(e);
        node.handle(
            now,
            e,
            EdgeMsg::Hello {
                edge: e,
                incarnation: u64::from(e),
                applied: 0,
            },
        );
    }
    for _ in 0..3 {
        st.turn(&mut node, now, 0);
    }
    for e in 0..4u16 {
        while node.poll_for(e).is_some() {}
    }
});
