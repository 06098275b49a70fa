//! The crypto node's repository in the store (the memory backend, etcd's semantics) and a
//! crypto node that restarts from it, on the harness of `cluster::tests`: three edges,
//! clients behind a router, virtual time.
// Clients, edges and their expectations are indexed together.
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use zeroize::Zeroizing;

use super::repository::NodeStore;
use super::store::keys::Name;
use super::store::mem::MemStore;
use super::store::{ClusterStore, Sealer, Store as _};
use super::*;

const T: Duration = Duration::from_secs(1);

/// The harness with the node's repository in a memory store.
struct Stored {
    w: Cluster,
    st: Option<NodeStore<MemStore>>,
}

fn repo() -> ClusterStore<MemStore> {
    ClusterStore::new(
        MemStore::new(),
        &Name::new("test").unwrap(),
        Arc::new(Sealer::new(Zeroizing::new([9; 32]))),
    )
}

fn node(node_id: u32, incarnation: u64) -> CryptoNode {
    let p = Path::new("node.yaml");
    let conns = crate::config::parse::<IkeYaml>(p, NODE)
        .unwrap()
        .validate(p, "ike")
        .unwrap();
    let mut core = ControlCore::for_cluster_node(
        conns,
        SaRepository::new(Vec::new(), 64),
        [incarnation as u8; 32],
        PUBLIC.parse().unwrap(),
        4,
        node_id,
    )
    .unwrap();
    core.set_quiet();
    let mut n = CryptoNode::new(core);
    n.set_incarnation(incarnation);
    n.enable_store();
    n
}

impl Stored {
    fn new(edges: usize, clients: usize) -> Stored {
        let mut w = Cluster::new(edges, clients);
        // The harness's node, with a store; the edges say hello again to it.
        for i in 0..edges {
            w.disconnect(i);
        }
        w.node = node(5, 0xa1);
        let mut s = Stored {
            w,
            st: Some(NodeStore::new(repo(), 10)),
        };
        for i in 0..edges {
            s.w.connect(i);
        }
        s.settle();
        s
    }

    fn wall(&self) -> u64 {
        1_700_000_000_000
            + self
                .w
                .now
                .saturating_duration_since(Instant::ZERO)
                .as_millis() as u64
    }

    fn settle(&mut self) {
        loop {
            self.w.settle();
            let wall = self.wall();
            let now = self.w.now;
            let Some(st) = self.st.as_mut() else {
                return;
            };
            st.repo()
                .store()
                .advance(now.saturating_duration_since(Instant::ZERO).as_millis() as u64);
            self.w.node.set_wall_clock(wall);
            let moved = st.turn(&mut self.w.node, now, wall);
            // A second turn hands the completions of the first to the node.
            let moved2 = st.turn(&mut self.w.node, now, wall);
            if !moved && !moved2 {
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.w.now.saturating_add(d);
        loop {
            self.settle();
            let store_due = self.st.as_ref().and_then(|st| st.next_deadline());
            let due = match (self.w.next_deadline(), store_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match due {
                Some(n) if n <= end => {
                    self.w.now = if n > self.w.now {
                        n
                    } else {
                        self.w.now.saturating_add(Duration::from_millis(1))
                    };
                }
                _ => {
                    self.w.now = end;
                    self.settle();
                    return;
                }
            }
        }
    }

    /// kill -9 of the crypto node: its connections go with whatever was queued on them or
    /// in the node (uncommitted writes included: what the store has is what it committed).
    fn crash(&mut self) -> ClusterStore<MemStore> {
        for i in 0..self.w.edges.len() {
            self.w.disconnect(i);
        }
        self.st.take().unwrap().into_repo()
    }

    /// A node process starts (`node_id`: the same one restarting, or a second node), reads
    /// the store and the edges connect to it.
    fn start(
        &mut self,
        repo: ClusterStore<MemStore>,
        node_id: u32,
        incarnation: u64,
    ) -> super::repository::RecoveryReport {
        self.w.node = node(node_id, incarnation);
        self.w.node.set_wall_clock(self.wall());
        let mut st = NodeStore::new(repo, 10);
        let r = st.recover(&mut self.w.node, self.w.now, T).unwrap();
        self.st = Some(st);
        for i in 0..self.w.edges.len() {
            self.w.connect(i);
        }
        // The hellos and welcomes cross the channel.
        self.run_for(Duration::from_millis(20));
        r
    }

    fn ike_up(&self, i: usize) -> usize {
        self.w.clients[i]
            .events
            .iter()
            .filter(|e| matches!(e, ike::Event::IkeUp { .. }))
            .count()
    }

    fn client_ike(&self, i: usize) -> ike::IkeSaId {
        self.w.clients[i]
            .endpoint
            .list()
            .into_iter()
            .find(|s| s.2)
            .unwrap()
            .0
    }

    fn stored_keys(&mut self, kind: &str) -> usize {
        self.st
            .as_mut()
            .unwrap()
            .repo()
            .load(kind, T)
            .unwrap()
            .0
            .len()
    }

    /// The store's records of kind `kind` (`"child/"`, `"placement/"`, ...).
    fn stored(&mut self, kind: &str) -> Vec<super::store::repo::Entry> {
        self.st.as_mut().unwrap().repo().load(kind, T).unwrap().0
    }
}

/// Every outbound SA any edge was ever sent, installed once over all edges (an SA installed
/// twice would send its sequence numbers, the GCM nonces, again).
fn assert_no_outbound_installed_twice(w: &Cluster) {
    let mut seen = std::collections::BTreeMap::new();
    for e in &w.edges {
        for u in &e.link.workers[0].received {
            if let Update::AddSa {
                dir: Direction::Outbound,
                params,
            } = u
            {
                *seen.entry(params.spi).or_insert(0) += 1;
            }
        }
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

#[test]
fn the_repository_is_written_before_anything_leaves_and_placed_after_the_edge_applied() {
    let mut s = Stored::new(3, 2);
    s.w.router = init_here_auth_there();
    s.w.client_connect(0);
    s.w.client_connect(1);
    s.run_for(Duration::from_secs(1));
    assert_eq!(s.stored_keys("ike/"), 2);
    // One record per CHILD_SA with both directions and the outbound SA's first fence.
    let children = s.stored("child/");
    assert_eq!(children.len(), 2);
    for e in &children {
        let super::store::Record::Child {
            inbound: Some(i),
            outbound: Some(_),
            fence,
            ..
        } = &e.record
        else {
            panic!("{e:?}")
        };
        assert_eq!(e.key, super::store::RecordKey::Child(i.spi.0));
        assert!(*fence > 0, "the fence rides in the record: {e:?}");
    }
    assert_eq!(
        s.stored_keys("seq/"),
        0,
        "no fence record of its own at the install"
    );
    // One placement record per CHILD_SA: its edge (both directions) and a watched copy on
    // each other edge.
    let placed = s.stored("placement/");
    assert_eq!(placed.len(), 2);
    assert_eq!(
        s.stored_keys("edges/"),
        3,
        "every edge live under its lease"
    );
    for i in 0..2 {
        let spis = s.w.child_spis(i)[0];
        let home = ((i + 1) % 3) as EdgeId;
        let want: Vec<(EdgeId, u8)> = (0..3)
            .map(|e| {
                let kind = if e == home {
                    super::repository::PLACED_CHILD
                } else {
                    super::repository::PLACED_COPY
                };
                (e, kind)
            })
            .collect();
        assert!(
            placed.iter().any(|e| e.key == super::store::RecordKey::Placement(spis.0 .0)
                && matches!(&e.record, super::store::Record::Placement { edges, .. } if *edges == want)),
            "client {i}'s CHILD SA placed at its IKE_AUTH edge, copies on the others: {placed:?}"
        );
    }
    assert!(s.w.node.stats.store_batches > 0);
    assert_eq!(s.w.node.waiting_for_store(), 0);
    // An edge's lease expires when nobody keeps it alive (its connection went).
    s.w.disconnect(2);
    s.run_for(Duration::from_secs(12));
    assert_eq!(s.stored_keys("edges/"), 2);
}

#[test]
fn a_record_written_again_waits_for_its_earlier_write_on_a_store_that_reorders() {
    use super::repository::{StoreBatch, StoreOp};
    use super::store::{Record, RecordKey};
    let placement = |edges: Vec<(u16, u8)>| StoreBatch {
        n: 0,
        ops: vec![StoreOp::Put(
            RecordKey::Placement(7),
            Record::Placement {
                at_ms: 1,
                drain_start: 0,
                edges,
            },
        )],
    };
    let first = placement(vec![(1, 1)]);
    let second = placement(vec![(1, 1), (2, 2), (3, 2)]);
    let last_written = |wait: bool| {
        let mut r = repo();
        // Transactions are applied newest first, at each poll.
        r.store().reorder_transactions(1);
        let mut st = NodeStore::new(r, 10);
        let mut node = node(5, 0xa1);
        // Two inputs' batches, packed by two turns (one turn would put them in one
        // transaction, the later write of the key alone).
        let mut q = Some(StoreBatch {
            n: 1,
            ..first.clone()
        });
        st.pack(|| q.take());
        if !wait {
            // What the driver did before: both in flight at once.
            st.forget_keys_in_flight();
        }
        let mut q = Some(StoreBatch {
            n: 2,
            ..second.clone()
        });
        st.pack(|| q.take());
        if wait {
            assert_eq!(st.stats.waits, 1, "the second write waits for the first");
            assert_eq!(st.in_flight(), 1);
        } else {
            assert_eq!(st.in_flight(), 2);
        }
        for _ in 0..4 {
            st.turn(&mut node, Instant::ZERO, 0);
        }
        assert_eq!(st.in_flight(), 0);
        let (e, _) = st.repo().load("placement/", T).unwrap();
        match &e[0].record {
            Record::Placement { edges, .. } => edges.len(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(last_written(true), 3);
    // The same store without the wait: the older write lands last (what the test guards).
    assert_eq!(last_written(false), 1);
}

#[test]
fn watched_copies_are_placed_in_the_store_and_a_restarted_node_deletes_them_with_their_child_sa() {
    let mut s = Stored::new(3, 2);
    s.w.router = init_here_auth_there();
    s.w.client_connect(0);
    s.w.client_connect(1);
    s.run_for(Duration::from_secs(1));
    let spis: Vec<(Spi, Spi)> = (0..2).map(|i| s.w.child_spis(i)[0]).collect();
    for e in 0..3 {
        for sp in &spis {
            assert!(s.w.holds(e, *sp).0, "edge {e} holds the inbound SA {sp:?}");
        }
    }
    assert_eq!(
        s.stored_keys("placement/"),
        2,
        "2 CHILD_SAs, each on its edge and copied to 2"
    );

    let mut repo = s.crash();
    // A copy whose CHILD_SA the store does not hold (its records gone before the crash, the
    // copy's not yet): deleted at the restart, from the store and from edge 0.
    let orphan = Spi(0x0bad_0001);
    let mut t = super::store::Txn::default();
    repo.put(
        &mut t,
        &super::store::RecordKey::Placement(orphan.0),
        &super::store::Record::Placement {
            at_ms: 1,
            drain_start: 0,
            edges: vec![(0, super::repository::PLACED_COPY)],
        },
        None,
    )
    .unwrap();
    repo.store().call(super::store::Request::Txn(t), T).unwrap();
    s.run_for(Duration::from_secs(2));
    let r = s.start(repo, 5, 0xa2);
    assert_eq!(
        (r.kept, r.copies_kept, r.copies_deleted, r.rekeyed),
        (2, 4, 1, 0),
        "{r:?}"
    );
    assert!(
        s.w.edges[0].link.workers[0]
            .received
            .iter()
            .any(|u| matches!(u, Update::DeleteInbound { spi } if *spi == orphan)),
        "edge 0 was told to delete the orphaned copy"
    );
    assert_eq!(s.stored_keys("placement/"), 2, "the orphan's record went");
    for sp in &spis {
        assert_eq!(
            s.w.node.placement().inbound_edges(sp.0).len(),
            3,
            "the restarted node knows every copy of {sp:?}"
        );
    }
    // The node ends every IKE SA: each inbound SA leaves all three edges, copies included,
    // and its placement records leave the store.
    let now = s.w.now;
    s.w.node.core_mut().begin_shutdown(now);
    s.w.node.handle_timeout(now);
    s.run_for(Duration::from_secs(2));
    for e in 0..3 {
        for sp in &spis {
            assert!(!s.w.holds(e, *sp).0, "edge {e} still holds {sp:?}");
        }
    }
    assert_eq!(s.stored_keys("placement/"), 0);
}

#[test]
fn a_crypto_node_restarted_mid_flow_continues_every_ike_sa_without_renegotiation() {
    let mut s = Stored::new(3, 4);
    s.w.router = init_here_auth_there();
    for i in 0..3 {
        s.w.client_connect(i);
    }
    s.run_for(Duration::from_secs(1));
    let before: Vec<(Spi, Spi)> = (0..3).map(|i| s.w.child_spis(i)[0]).collect();
    let adds_before: Vec<usize> = (0..3)
        .map(|e| s.w.edges[e].link.workers[0].received.len())
        .collect();
    // Sequence reports reach the store (at most once a second per SA).
    let (_, ours_out) = before[0];
    let id = *s.w.edges[1].link.workers[0]
        .outbound
        .iter()
        .find(|(_, sp)| **sp == ours_out)
        .unwrap()
        .0;
    s.w.edges[1].link.report(DpEvent::SeqCheckpoint {
        worker: 0,
        id,
        spi: ours_out,
        seq: 7777,
        seq_reserved: None,
    });
    s.run_for(Duration::from_secs(2));
    // Every outbound SA's first fence was written (in its CHILD_SA's record) before the
    // carrier that installed it left; the reported one has its own sequence record now.
    assert!(s.stored("child/").iter().all(|e| matches!(
        &e.record,
        super::store::Record::Child { fence, outbound: Some(_), .. } if *fence > 0
    )));
    assert_eq!(s.stored_keys("seq/"), 1);
    let fence_before = s.w.node.placement().freshest_seq(id).unwrap().fence;
    assert!(fence_before > 7777, "{fence_before}");

    let repo = s.crash();
    s.run_for(Duration::from_secs(2));
    let r = s.start(repo, 5, 0xa2);
    assert_eq!((r.adopted, r.kept, r.rekeyed), (3, 3, 0), "{r:?}");
    assert!(r.refused.is_empty());
    assert_eq!(s.w.node.stats.edges_kept, 3);
    // What comes back is the fence (at or above every number an edge may send), never less:
    // a move after the restart starts above it.
    let back = s.w.node.placement().freshest_seq(id).unwrap();
    assert_eq!(
        (back.seq, back.fence),
        (fence_before, fence_before),
        "the fence came back"
    );
    s.run_for(Duration::from_secs(2));
    // Nothing was negotiated again and no edge got an SA again.
    for i in 0..3 {
        assert_eq!(s.ike_up(i), 1, "client {i}");
        assert_eq!(s.w.child_spis(i), vec![before[i]], "client {i}");
        let auth_edge = (i + 1) % 3;
        assert_eq!(s.w.holds(auth_edge, before[i]), (true, true));
    }
    for e in 0..3 {
        let adds = s.w.edges[e].link.workers[0]
            .received
            .iter()
            .skip(adds_before[e])
            .filter(|u| matches!(u, Update::AddSa { .. }))
            .count();
        assert_eq!(adds, 0, "edge {e} was sent no SA again");
    }
    // The IKE SAs work: a CHILD_SA rekey from each client (message ids and keys carried on),
    // an IKE SA rekey from one, each answered by the new node.
    let now = s.w.now;
    for i in 0..3 {
        let ike = s.client_ike(i);
        let spi_in = ike::ChildSpi(before[i].1 .0);
        s.w.clients[i]
            .endpoint
            .rekey_child(now, ike, spi_in)
            .unwrap();
    }
    let ike0 = s.client_ike(0);
    s.run_for(Duration::from_secs(2));
    s.w.clients[0].endpoint.rekey_ike(s.w.now, ike0).unwrap();
    s.run_for(Duration::from_secs(2));
    for i in 0..3 {
        let spis = s.w.child_spis(i);
        assert_eq!(
            spis.len(),
            2,
            "client {i}'s CHILD_SA rekeyed through the new node"
        );
        assert_eq!(s.w.holds((i + 1) % 3, spis[1]), (true, true));
        // No IKE SA went down but one an IKE SA rekey replaced.
        let ev = &s.w.clients[i].events;
        let replaced: Vec<ike::IkeSaId> = ev
            .iter()
            .filter_map(|e| match e {
                ike::Event::IkeRekeyed { old, .. } => Some(*old),
                _ => None,
            })
            .collect();
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ike::Event::IkeDown { ike, .. } if !replaced.contains(ike))),
            "client {i}: {:?}",
            s.w.clients[i].events
        );
    }
    assert!(s.w.clients[0]
        .events
        .iter()
        .any(|e| matches!(e, ike::Event::IkeRekeyed { .. })));
    // A new client connects to the new node.
    s.w.client_connect(3);
    s.run_for(Duration::from_secs(1));
    assert_eq!(s.ike_up(3), 1, "a new client is up");
    assert_eq!(s.w.child_spis(3).len(), 1);
    assert_no_outbound_installed_twice(&s.w);
    assert_eq!(s.w.node.stats.no_edge, 0);
}

#[test]
fn a_crash_after_the_commit_before_the_carrier_left_rekeys_that_child_sa_and_installs_nothing_twice(
) {
    let mut s = Stored::new(3, 1);
    s.w.router = all_via(1);
    s.w.client_connect(0);
    // Step until the IKE_AUTH batch is committed and its carrier and answer still wait in
    // the node (the next turn would release them).
    let mut crashed = None;
    for _ in 0..4000 {
        s.w.settle();
        let now = s.w.now;
        let wall = s.wall();
        let st = s.st.as_mut().unwrap();
        st.turn(&mut s.w.node, now, wall);
        let committed_child = st.repo().load("child/", T).unwrap().0.len() == 1;
        let installed: usize = (0..3)
            .map(|e| {
                s.w.edges[e].link.workers[0]
                    .received
                    .iter()
                    .filter(|u| matches!(u, Update::AddSa { .. }))
                    .count()
            })
            .sum();
        if committed_child && installed == 0 && s.w.node.waiting_for_store() > 0 {
            // The write is committed; the node has not heard so (the crash comes first).
            crashed = Some(s.crash());
            break;
        }
        s.w.now = s.w.now.saturating_add(Duration::from_micros(250));
    }
    let repo = crashed.expect("the crash point was reached");
    let held_before: usize = (0..3)
        .map(|e| s.w.edges[e].link.workers[0].outbound.len())
        .sum();
    assert_eq!(held_before, 0, "no edge holds the CHILD_SA yet");
    assert!(s.w.child_spis(0).is_empty(), "the client has no answer yet");
    let r = s.start(repo, 5, 0xa3);
    assert_eq!((r.adopted, r.kept, r.rekeyed), (1, 0, 1), "{r:?}");
    s.run_for(Duration::from_secs(5));
    // The client's IKE_AUTH retransmission got the stored answer, and the new node's rekey
    // brought fresh SAs to the edge.
    let spis = s.w.child_spis(0);
    assert_eq!(s.ike_up(0), 1);
    assert_eq!(spis.len(), 2, "{:?}", s.w.clients[0].events);
    assert_eq!(s.w.holds(1, spis[1]), (true, true));
    assert_no_outbound_installed_twice(&s.w);
}

#[test]
fn a_crypto_node_restarted_between_ike_sa_init_and_ike_auth_lets_the_client_start_again() {
    let mut s = Stored::new(3, 1);
    s.w.router = all_via(0);
    s.w.client_connect(0);
    // Until the IKE_SA_INIT response reached the client.
    for _ in 0..4000 {
        s.settle();
        if s.w
            .sent
            .iter()
            .any(|x| exchange(&x.d.payload) == (IKE_SA_INIT, true))
        {
            break;
        }
        s.w.now = s.w.now.saturating_add(Duration::from_micros(250));
    }
    assert_eq!(s.stored_keys("ike/"), 0, "a half-open IKE SA is not stored");
    let repo = s.crash();
    let r = s.start(repo, 5, 0xa4);
    assert_eq!(r.adopted, 0);
    // The client's IKE_AUTH finds no IKE SA; it gives up and starts again.
    s.run_for(Duration::from_secs(300));
    assert_eq!(s.ike_up(0), 0, "no IKE SA came up from the half-open one");
    assert!(
        s.w.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ike::Event::IkeDown { .. })),
        "{:?}",
        s.w.clients[0].events
    );
    s.w.client_connect(0);
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.ike_up(0), 1);
    assert_eq!(s.w.child_spis(0).len(), 1);
    assert_eq!(s.stored_keys("ike/"), 1);
    assert_no_outbound_installed_twice(&s.w);
}

#[test]
fn a_second_crypto_node_takes_over_and_its_own_spis_carry_its_node_id() {
    let mut s = Stored::new(3, 2);
    s.w.router = all_via(2);
    s.w.client_connect(0);
    s.run_for(Duration::from_secs(1));
    let old = s.w.child_spis(0)[0];
    let repo = s.crash();
    // Node 6 (another node id, another seed) takes the repository over.
    let r = s.start(repo, 6, 0xb1);
    assert_eq!((r.adopted, r.kept), (1, 1), "{r:?}");
    s.w.client_connect(1);
    s.run_for(Duration::from_secs(1));
    let ike = s.client_ike(0);
    let now = s.w.now;
    s.w.clients[0]
        .endpoint
        .rekey_child(now, ike, ike::ChildSpi(old.1 .0))
        .unwrap();
    s.run_for(Duration::from_secs(2));
    let layout6 = ike::services::SpiLayout::new(4, 6, 0, 0).unwrap();
    let layout5 = ike::services::SpiLayout::new(4, 5, 0, 0).unwrap();
    assert_eq!(layout5.node_of_child(ike::ChildSpi(old.0 .0)), 5);
    let spis0 = s.w.child_spis(0);
    assert_eq!(
        spis0.len(),
        2,
        "the adopted IKE SA rekeyed its CHILD_SA on node 6"
    );
    assert_eq!(layout6.node_of_child(ike::ChildSpi(spis0[1].0 .0)), 6);
    let spis1 = s.w.child_spis(1);
    assert_eq!(spis1.len(), 1);
    assert_eq!(layout6.node_of_child(ike::ChildSpi(spis1[0].0 .0)), 6);
    assert_eq!(s.ike_up(0), 1);
    assert_no_outbound_installed_twice(&s.w);
}

impl Stored {
    /// [`Cluster::run_traffic`] with the store in the loop.
    fn run_traffic(&mut self, d: Duration) {
        for _ in 0..d.as_millis() {
            self.run_for(Duration::from_millis(1));
            self.w.traffic_step();
        }
    }
}

/// One client, connected through edge 0 (its traffic there), with the store in the loop:
/// the rig and the client's (inbound, outbound) SPIs.
fn one_client_at_edge_0() -> (Stored, (Spi, Spi)) {
    let mut s = Stored::new(3, 1);
    s.w.router = all_via(0);
    s.w.client_connect(0);
    s.w.traffic.at[0] = 0;
    s.run_for(Duration::from_secs(1));
    let spis = s.w.child_spis(0)[0];
    (s, spis)
}

#[test]
fn a_crypto_node_restarted_during_a_drain_keeps_the_new_edge_as_the_holder_and_sends_nothing_twice()
{
    let (mut s, spis) = one_client_at_edge_0();
    s.w.traffic.in_per_ms = 10;
    s.w.traffic.out_per_ms = 10;
    s.run_traffic(Duration::from_millis(100));
    // The client's path goes to edge 1; the LAN's route stays at edge 0: edge 0 drains.
    s.w.traffic.lan_at[0] = Some(0);
    steer(&mut s.w, 0, 1);
    s.run_traffic(Duration::from_millis(30));
    assert_eq!(s.w.node.stats.moves, 1, "{:?}", s.w.node.stats);
    assert!(!s.w.node.placement().drains().is_empty(), "edge 0 drains");
    let id = out_id(&s.w, 1, spis.1).expect("edge 1 holds the outbound SA");
    // kill -9 of the crypto node mid-drain, a new one from the store.
    let repo = s.crash();
    s.run_traffic(Duration::from_millis(20));
    let r = s.start(repo, 5, 0xa2);
    assert_eq!((r.kept, r.drains_kept), (1, 1), "{r:?}");
    assert_eq!(
        s.w.node.placement().draining_edges(id),
        std::collections::BTreeSet::from([0]),
        "the drain came back from the store"
    );
    // The LAN's route follows; edge 1 goes on getting numbers, nothing is sent twice.
    s.w.traffic.lan_at[0] = Some(1);
    let lost_before = s.w.traffic.back_lost[0];
    s.run_traffic(Duration::from_millis(400));
    assert_eq!(
        s.w.node.placement().outbound_edges(id),
        std::collections::BTreeSet::from([1]),
        "the holder after the restart"
    );
    assert_eq!(s.w.duplicates(), vec![]);
    assert_eq!(
        s.w.traffic.back_lost[0] - lost_before,
        0,
        "LAN -> client lost after the restart"
    );
    // Edge 1's checkpoint above its start ended the drain: edge 0 let the outbound SA and
    // its host binding go (it keeps its copy of the inbound SA), and the store says so.
    assert!(
        s.w.node.placement().draining_edges(id).is_empty(),
        "the drain ended"
    );
    assert!(
        out_id(&s.w, 0, spis.1).is_none(),
        "edge 0 still holds the outbound SA"
    );
    assert!(s.w.holds(0, spis).0, "edge 0 keeps its inbound copy");
    let placed = s.stored("placement/");
    assert!(
        matches!(&placed[0].record, super::store::Record::Placement { drain_start: 0, edges, .. }
            if edges.contains(&(0, super::repository::PLACED_COPY))
                && edges.contains(&(1, super::repository::PLACED_CHILD))),
        "{placed:?}"
    );
}

#[test]
fn a_client_that_moved_by_mobike_is_sent_to_at_its_new_address_by_an_edge_after_a_restart() {
    let (mut s, spis) = one_client_at_edge_0();
    let new: std::net::IpAddr = "198.51.100.77".parse().unwrap();
    s.w.roam(0, new);
    s.run_for(Duration::from_secs(1));
    // The stored CHILD_SA follows the move.
    let children = s.stored("child/");
    assert!(
        matches!(&children[0].record, super::store::Record::Child { outbound: Some(o), .. } if o.remote == new),
        "{children:?}"
    );
    // kill -9 of the crypto node; a new one from the store; then the client's path moves
    // to edge 1, which gets the outbound SA from the node.
    let repo = s.crash();
    let r = s.start(repo, 5, 0xa2);
    assert_eq!(r.kept, 1, "{r:?}");
    s.w.traffic.in_per_ms = 10;
    s.w.traffic.out_per_ms = 10;
    steer(&mut s.w, 0, 1);
    s.run_traffic(Duration::from_millis(200));
    let sent_to: Vec<std::net::IpAddr> = s.w.edges[1].link.workers[0]
        .received
        .iter()
        .filter_map(|u| match u {
            Update::AddSa {
                dir: Direction::Outbound,
                params,
            } if params.spi == spis.1 => Some(params.remote),
            _ => None,
        })
        .collect();
    assert_eq!(sent_to, vec![new], "edge 1's outbound SA");
    assert_eq!(s.w.duplicates(), vec![]);
}
