//! The cluster store's etcd backend against a real 3-member etcd 3.4 (Debian's etcd-server),
//! started by each test on loopback ports and killed by pid afterwards.
//!
//! - `records_watch_and_resync_after_compaction`: sealed records written in batched
//!   transactions and read back; a watcher whose member is frozen while the others write and
//!   compact, then killed: the watch resumes on another member, finds its revision compacted,
//!   re-lists (a resync with every record) and follows on in order.
//! - `an_edge_key_goes_when_its_lease_expires`: kept alive it stays; left alone etcd deletes
//!   it and the watch sees the delete.
//! - `no_acknowledged_write_is_lost_when_the_leader_is_killed`: batches written with many in
//!   flight to the leader while it gets SIGKILL (the client moves to another member, a new
//!   leader is elected): every acknowledged key is there afterwards, on the survivors and on
//!   the killed member once it has rejoined.
//! - `tls_and_auth_through_the_store_section`: a member with client-certificate TLS and auth
//!   (a PKI made with openssl as in configs/cluster/etcd/README.md), reached through a
//!   `store:` section; without the password, or over plain HTTP, nothing is read.
//!
//! - `masq_coordinator_on_etcd` (issue 21): two coordinator nodes (`control::nat_coord`) on
//!   etcd: a connection homed at a, its client moving to b (a learns it by the watch and
//!   forwards to b), a dying unannounced: b takes its block and address over after the lease
//!   (2 s); prints `masq_store case=etcd alloc_ms=.. push_ms=.. takeover_ms=..`.
//!
//! - `installs_reach_every_edge_through_etcd` (issue 18, `roamgate perf cluster`'s harness
//!   at 200 clients, `CLUSTER_PERF_CLIENTS` for more): the real crypto node and 3 edges in
//!   process, every client's IKE_AUTH through its edge: every SA acknowledged by all 3 edges,
//!   every client up, the store holding each IKE SA, both CHILD SA directions and 3
//!   placements; unknown-SPI carriers at a 4th edge; prints `cluster case=perf-etcd ..`.
//!
//! Run time: about 14 s in all (the masq case about 4 s). Needs `etcd` and `etcdctl` (prints SKIP without them unless
//! ROAMGATE_REQUIRE_TOOLS=1). Uses free loopback ports only; run under the shared lock with
//! the other multi-process tests: `flock -o /tmp/roamgate-netns.lock cargo test -p
//! roamgate-tests --test cluster_store -- --nocapture`.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::cluster::store::etcd::{EtcdOptions, EtcdStore};
use control::cluster::store::keys::{Name, RecordKey};
use control::cluster::store::repo::Update;
use control::cluster::store::{
    ClusterStore, Event, Record, Reply, Request, Sealer, Store, StoreError, Txn,
};
use roamgate_tests::etcd;
use zeroize::Zeroizing;

const T: Duration = Duration::from_secs(20);

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::new(Zeroizing::new([0x17; 32])))
}

fn connect(endpoints: Vec<String>) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new(endpoints)).expect("connect to the local etcd")
}

fn ike(id: u64) -> (RecordKey, Record) {
    (
        RecordKey::Ike(id),
        Record::IkeSa {
            id,
            version: 1,
            bytes: Zeroizing::new(vec![0x61; 400]),
        },
    )
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// Waits for updates until `done` says so.
fn pump<S: Store>(
    repo: &mut ClusterStore<S>,
    within: Duration,
    mut done: impl FnMut(&Update) -> bool,
) -> Vec<Update> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    loop {
        let mut out = Vec::new();
        repo.poll(&mut out);
        for u in out {
            let stop = done(&u);
            all.push(u);
            if stop {
                return all;
            }
        }
        assert!(Instant::now() < deadline, "timed out; got {all:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn records_watch_and_resync_after_compaction() {
    let Some(mut cluster) = etcd::cluster("cluster_store_watch", 3) else {
        return;
    };
    let eps = cluster.endpoints();
    let name = Name::new("it").unwrap();
    let mut writer = ClusterStore::new(connect(eps[1..].to_vec()), &name, sealer());
    // Batched writes: 10 transactions of 10 IKE SA records.
    let mut tickets = Vec::new();
    for b in 0..10u64 {
        let mut t = Txn::default();
        for i in 0..10 {
            let (k, r) = ike(b * 10 + i);
            writer.put(&mut t, &k, &r, None).unwrap();
        }
        tickets.push(writer.submit(t).unwrap());
    }
    for t in tickets {
        assert!(matches!(
            writer.store().wait(t, T),
            Ok(Reply::Txn {
                succeeded: true,
                ..
            })
        ));
    }
    let (all, rev) = writer.load("ike/", T).unwrap();
    assert_eq!(all.len(), 100);

    // The watcher talks to member 0 first. Its keep-alive is long so that only the kill below
    // (not a keep-alive timeout while the member is frozen) breaks its stream: the resume
    // then happens after the compaction, whatever the machine's load.
    let mut wopts = EtcdOptions::new(eps.clone());
    wopts.keep_alive = Duration::from_secs(120);
    let mut watcher = ClusterStore::new(EtcdStore::connect(wopts).unwrap(), &name, sealer());
    let wt = watcher.watch("ike/", rev + 1).unwrap();
    assert!(matches!(
        watcher.store().wait(wt, T),
        Ok(Reply::Watching(_))
    ));
    let mut t = Txn::default();
    let (k, r) = ike(1000);
    writer.put(&mut t, &k, &r, None).unwrap();
    writer.store().call(Request::Txn(t), T).unwrap();
    pump(
        &mut watcher,
        T,
        |u| matches!(u, Update::Put { entry, .. } if entry.key == RecordKey::Ike(1000)),
    );

    // Freeze the watcher's member; meanwhile the others write and compact past the
    // watcher's resume point; then kill the frozen member.
    let pid0 = cluster.pid(0).unwrap();
    signal(pid0, "-STOP");
    for id in 2000..2005 {
        let mut t = Txn::default();
        let (k, r) = ike(id);
        writer.put(&mut t, &k, &r, None).unwrap();
        writer.store().call(Request::Txn(t), T).unwrap();
    }
    let mut t = Txn::default();
    writer.delete(&mut t, &RecordKey::Ike(5));
    let Ok(Reply::Txn { revision: now, .. }) = writer.store().call(Request::Txn(t), T) else {
        panic!("delete")
    };
    writer.store().call(Request::Compact(now), T).unwrap();
    cluster.kill9(0).unwrap();

    let got = pump(&mut watcher, T, |u| matches!(u, Update::Resync { .. }));
    let Some(Update::Resync {
        entries, revision, ..
    }) = got.last()
    else {
        unreachable!()
    };
    assert!(*revision >= now);
    let keys: BTreeSet<RecordKey> = entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys.len(),
        100 + 1 + 5 - 1,
        "every record, the deleted one gone"
    );
    assert!(keys.contains(&RecordKey::Ike(2004)) && !keys.contains(&RecordKey::Ike(5)));
    // And it follows on from there, in order.
    let after = *revision;
    for id in 3000..3003 {
        let mut t = Txn::default();
        let (k, r) = ike(id);
        writer.put(&mut t, &k, &r, None).unwrap();
        writer.store().call(Request::Txn(t), T).unwrap();
    }
    let got = pump(
        &mut watcher,
        T,
        |u| matches!(u, Update::Put { entry, .. } if entry.key == RecordKey::Ike(3002)),
    );
    let revs: Vec<i64> = got
        .iter()
        .filter_map(|u| match u {
            Update::Put { entry, .. } => Some(entry.mod_revision),
            _ => None,
        })
        .collect();
    assert_eq!(revs.len(), 3, "{got:?}");
    assert!(revs.windows(2).all(|w| w[0] < w[1]) && revs[0] > after);
    assert_eq!(
        watcher
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    println!(
        "cluster_store case=watch_resync records=105 resync_revision={after} compacted_at={now}"
    );
}

#[test]
fn an_edge_key_goes_when_its_lease_expires() {
    let Some(cluster) = etcd::cluster("cluster_store_lease", 3) else {
        return;
    };
    let name = Name::new("it").unwrap();
    let mut repo = ClusterStore::new(connect(cluster.endpoints()), &name, sealer());
    let Ok(Reply::Lease { id, .. }) = repo.store().call(Request::LeaseGrant { ttl_s: 2 }, T) else {
        panic!("lease")
    };
    let edge = Name::new("edge-a").unwrap();
    let mut t = Txn::default();
    repo.put(
        &mut t,
        &RecordKey::Edge(edge.clone()),
        &Record::Edge {
            address: "127.0.0.1:4800".into(),
            started_ms: 1,
            incarnation: 1,
        },
        Some(id),
    )
    .unwrap();
    repo.store().call(Request::Txn(t), T).unwrap();
    let w = repo.watch("edges/", 0).unwrap();
    assert!(matches!(repo.store().wait(w, T), Ok(Reply::Watching(_))));
    // Kept alive past its ttl: still there.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3000) {
        assert!(matches!(
            repo.store().call(Request::LeaseKeepAlive(id), T),
            Ok(Reply::Lease { .. })
        ));
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_eq!(repo.load("edges/", T).unwrap().0.len(), 1);
    // Left alone (the edge died): etcd deletes it after the ttl (its lease checker runs
    // every 500 ms).
    let left = Instant::now();
    pump(
        &mut repo,
        Duration::from_secs(10),
        |u| matches!(u, Update::Deleted { key: RecordKey::Edge(e), .. } if *e == edge),
    );
    let gone_after = left.elapsed();
    assert!(gone_after >= Duration::from_millis(1000), "{gone_after:?}");
    assert!(repo.load("edges/", T).unwrap().0.is_empty());
    assert_eq!(
        repo.store().call(Request::LeaseKeepAlive(id), T),
        Err(StoreError::LeaseNotFound(id.0))
    );
    println!(
        "cluster_store case=lease ttl_s=2 gone_after_ms={}",
        gone_after.as_millis()
    );
}

fn leader_index(cluster: &etcd::LocalEtcd) -> usize {
    let out = cluster
        .etcdctl(&["endpoint", "status", "--write-out=json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eps = cluster.endpoints();
    for s in v.as_array().unwrap() {
        let me = &s["Status"]["header"]["member_id"];
        if *me == s["Status"]["leader"] {
            let ep = s["Endpoint"].as_str().unwrap();
            return eps.iter().position(|e| e == ep).unwrap();
        }
    }
    panic!("no leader in {v}");
}

#[test]
fn no_acknowledged_write_is_lost_when_the_leader_is_killed() {
    let Some(mut cluster) = etcd::cluster("cluster_store_kill", 3) else {
        return;
    };
    let eps = cluster.endpoints();
    let leader = leader_index(&cluster);
    // The writer talks to the leader first: killing it forces both a move to another member
    // and an election.
    let mut order = eps.clone();
    order.rotate_left(leader);
    let mut store = connect(order);
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut pending = std::collections::HashMap::new();
    let mut failed = 0usize;
    let start = Instant::now();
    let mut killed_at = None;
    let mut n = 0u64;
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_millis(3000) {
        if killed_at.is_none() && start.elapsed() > Duration::from_millis(800) {
            cluster.kill9(leader).unwrap();
            killed_at = Some(n);
        }
        let mut t = Txn::default();
        let keys: Vec<String> = (0..8)
            .map(|i| format!("/roamgate/it/kill/{:08}", n * 8 + i))
            .collect();
        for k in &keys {
            t.put(k.clone().into_bytes(), vec![0x55; 200], None);
        }
        n += 1;
        let ticket = store.submit(Request::Txn(t)).unwrap();
        pending.insert(ticket, keys);
        store.poll(&mut events);
        for e in events.drain(..) {
            if let Event::Done { ticket, result } = e {
                let keys = pending.remove(&ticket).unwrap();
                match result {
                    Ok(Reply::Txn {
                        succeeded: true, ..
                    }) => acked.extend(keys),
                    _ => failed += 1,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    while !pending.is_empty() {
        let t = *pending.keys().next().unwrap();
        let keys = pending.remove(&t).unwrap();
        match store.wait(t, T) {
            Ok(Reply::Txn {
                succeeded: true, ..
            }) => acked.extend(keys),
            _ => failed += 1,
        }
    }
    assert!(killed_at.is_some());
    assert_eq!(
        failed, 0,
        "every batch is retried on a live member until it is acknowledged"
    );
    // Read back from a fresh client on the survivors.
    let survivors: Vec<String> = eps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, e)| e.clone())
        .collect();
    let mut fresh = connect(survivors);
    let Ok(Reply::Range { kvs, .. }) = fresh.call(
        Request::Range {
            prefix: b"/roamgate/it/kill/".to_vec(),
        },
        T,
    ) else {
        panic!("range")
    };
    let stored: BTreeSet<String> = kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged keys lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // The killed member rejoins and has them too.
    cluster.restart(leader).unwrap();
    cluster.wait_healthy(Duration::from_secs(20)).unwrap();
    let mut back = connect(vec![eps[leader].clone()]);
    let deadline = Instant::now() + T;
    loop {
        if let Ok(Reply::Range { kvs, .. }) = back.call(
            Request::Range {
                prefix: b"/roamgate/it/kill/".to_vec(),
            },
            T,
        ) {
            if kvs.len() == stored.len() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the rejoined member did not catch up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "cluster_store case=kill_leader batches={n} acked_keys={} lost=0 killed_after_batch={}",
        acked.len(),
        killed_at.unwrap_or(0)
    );
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl (the
/// recipe of configs/cluster/etcd/README.md, on loopback).
fn make_pki(dir: &std::path::Path) -> Option<etcd::LocalSecurity> {
    let sh = |script: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let ok = sh("set -e
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
          -subj /CN=test-ca -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=member \
          -keyout member-key.pem -out member.csr 2>/dev/null
        openssl x509 -req -in member.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
          -extfile <(printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth') \
          -out member.pem 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=roamgate-node \
          -keyout client-key.pem -out client.csr 2>/dev/null
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
          -extfile <(printf 'extendedKeyUsage=clientAuth') -out client.pem 2>/dev/null");
    ok.then(|| etcd::LocalSecurity {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("member.pem"),
        server_key: dir.join("member-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
        root_password: "test-root-pw".into(),
    })
}

#[test]
fn tls_and_auth_through_the_store_section() {
    if !roamgate_tests::have_tool("etcd", &["--version"])
        || !roamgate_tests::have_tool("openssl", &["version"])
    {
        return;
    }
    let dir = roamgate_tests::scratch("cluster_store_tls");
    let sec = make_pki(&dir).expect("openssl made the test PKI");
    let cluster = etcd::LocalEtcd::start(&dir.join("etcd"), 1, Some(sec.clone())).unwrap();
    std::fs::write(dir.join("cluster.key"), [0x42u8; 32]).unwrap();
    std::fs::write(dir.join("password"), "test-root-pw\n").unwrap();
    let yaml = format!(
        "store:\n  cluster: tls\n  key_file: cluster.key\n  etcd:\n    endpoints: [{}]\n    ca: ca.pem\n    cert: client.pem\n    key: client-key.pem\n    user: root\n    password_file: password\n",
        cluster.endpoints()[0]
    );
    #[derive(serde::Deserialize)]
    struct Doc {
        store: control::cluster::store::config::StoreYaml,
    }
    let file = dir.join("node.yaml");
    let doc: Doc = control::config::parse(&file, &yaml).unwrap();
    let mut repo = doc.store.plan(&file, "store").unwrap().open().unwrap();
    let mut t = Txn::default();
    let (k, r) = ike(7);
    repo.put(&mut t, &k, &r, None).unwrap();
    assert!(matches!(
        repo.store().call(Request::Txn(t), T),
        Ok(Reply::Txn {
            succeeded: true,
            ..
        })
    ));
    assert_eq!(repo.load("ike/", T).unwrap().0.len(), 1);
    // The same certificate without the password: etcd takes the certificate's CN as the
    // user, which does not exist: refused.
    let plan = doc.store.plan(&file, "store").unwrap();
    let mut opts = plan.etcd.clone();
    opts.user = None;
    opts.retry_for = Duration::from_secs(2);
    let refused = match EtcdStore::connect(opts) {
        Err(_) => true,
        Ok(mut s) => !matches!(
            s.call(
                Request::Range {
                    prefix: b"/roamgate/".to_vec()
                },
                T
            ),
            Ok(Reply::Range { .. })
        ),
    };
    assert!(refused, "a client without the etcd password read the store");
    // And plain HTTP to the TLS member gets nowhere.
    let mut plain = EtcdOptions::new(vec![cluster.endpoints()[0].replace("https", "http")]);
    plain.retry_for = Duration::from_secs(1);
    plain.request_timeout = Duration::from_millis(500);
    assert!(EtcdStore::connect(plain).is_err());
    println!("cluster_store case=tls_auth ok");
}

/// The routing coordinator of issue 21 on a real etcd (3 members): node a homes a client's
/// connection (held until etcd committed it), the client moves to b, whose registration
/// reaches a by the watch (a then forwards to b); a dies without a word (its store
/// connection dropped): its lease (4 s) runs out and b takes its block and address over and
/// delivers the answers itself. Both nodes are driven in every wait, as they run on their own
/// in a deployment: a node left without keep-alives past its lease loses it and steps down. Prints the latencies it saw (wall clock, one run):
/// `masq_store case=etcd alloc_ms=.. push_ms=.. takeover_ms=..`.
#[test]
fn masq_coordinator_on_etcd() {
    use control::nat_coord::{Flow, InVerdict, MasqNode, MasqParams, OutVerdict, Output, Proto};
    use pipeline::masq::access::AccessTable;
    use std::net::{Ipv4Addr, SocketAddrV4};

    let Some(cluster) = etcd::cluster("masq_store", 3) else {
        return;
    };
    let eps = cluster.endpoints();
    let t0 = Instant::now();
    let now = || t0.elapsed().as_millis() as u64;
    let node = |name: &str, a: Ipv4Addr, first: usize| {
        let mut p = MasqParams::new(
            Name::new("masq-it").unwrap(),
            Name::new(name).unwrap(),
            vec![a],
        );
        // 4 s: room for a loaded CI machine's etcd (a node whose keep-alive does not land
        // within its lease loses it and steps down, as it must).
        p.node_ttl_s = 4;
        // Another member first for each node: the watch crosses members.
        let mut e = eps.clone();
        e.rotate_left(first);
        let mut n = MasqNode::new(p, connect(e), sealer(), Arc::new(AccessTable::allow_all()));
        n.start(now());
        n
    };
    // Runs `n` until `until` holds, and the other live node beside it (nodes run on their
    // own in a deployment: one left alone past its lease would lose it, and step down).
    type Side<'a> = Option<(&'a mut MasqNode<EtcdStore>, &'a mut Vec<Output>)>;
    let drive =
        |n: &mut MasqNode<EtcdStore>,
         out: &mut Vec<Output>,
         mut other: Side<'_>,
         until: &mut dyn FnMut(&mut MasqNode<EtcdStore>, &[Output]) -> bool| {
            let deadline = Instant::now() + T;
            loop {
                n.handle_timeout(now());
                while let Some(o) = n.poll_output() {
                    out.push(o);
                }
                if let Some((m, mo)) = other.as_mut() {
                    m.handle_timeout(now());
                    while let Some(o) = m.poll_output() {
                        mo.push(o);
                    }
                }
                if until(n, out) {
                    return;
                }
                assert!(Instant::now() < deadline, "timed out; outputs {out:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
    let (addr_a, addr_b) = (
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(198, 51, 100, 2),
    );
    let mut a = node("a", addr_a, 0);
    let mut b = node("b", addr_b, 1);
    let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
    drive(&mut a, &mut out_a, None, &mut |n, _| n.is_ready());
    drive(
        &mut b,
        &mut out_b,
        Some((&mut a, &mut out_a)),
        &mut |n, _| n.is_ready(),
    );

    let client = Ipv4Addr::new(10, 9, 0, 2);
    let f = Flow {
        proto: Proto::Tcp,
        client: SocketAddrV4::new(client, 40000),
        server: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 80), 443),
    };
    a.client_attached(client, "alice", now());
    drive(
        &mut a,
        &mut out_a,
        Some((&mut b, &mut out_b)),
        &mut |_, _| true,
    );
    // The first packet waits for etcd: the block claim, its (empty) read, the create.
    let started = Instant::now();
    let m = loop {
        match a.outbound(f, now()) {
            OutVerdict::Rewrite(m) => break m,
            OutVerdict::Hold => drive(
                &mut a,
                &mut out_a,
                Some((&mut b, &mut out_b)),
                &mut |_, o| o.contains(&Output::Retry(f)),
            ),
            other => panic!("{other:?}"),
        }
        out_a.retain(|x| *x != Output::Retry(f));
    };
    let alloc_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(m.addr, addr_a);
    assert_eq!(a.inbound(m, now()), InVerdict::Local(f));

    // The client moves to b: b reads its flows, registers; a hears it by the watch.
    let moved = Instant::now();
    b.client_attached(client, "alice", now());
    drive(
        &mut b,
        &mut out_b,
        Some((&mut a, &mut out_a)),
        &mut |_, o| o.contains(&Output::FamInstall { flow: f, masq: m }),
    );
    a.client_left(client, now());
    // Both nodes run meanwhile, as they would: b's registration may still be on its way to
    // etcd when a leaves (a's conditional unregister then wins and b writes again).
    let deadline = Instant::now() + T;
    let want = Output::Route {
        masq: m,
        fam: Some("b".into()),
    };
    while !out_a.contains(&want) {
        for (n, out) in [(&mut a, &mut out_a), (&mut b, &mut out_b)] {
            n.handle_timeout(now());
            while let Some(o) = n.poll_output() {
                out.push(o);
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out; outputs of a {out_a:?}, of b {out_b:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let push_ms = moved.elapsed().as_secs_f64() * 1e3;
    assert!(matches!(b.outbound(f, now()), OutVerdict::Rewrite(x) if x == m));
    assert_eq!(a.inbound(m, now()), InVerdict::Forward("b".into()));

    assert_eq!(a.stats.lease_lost, 0, "a kept its lease while it ran");
    // a dies: its etcd connection goes with it, its lease is no longer kept alive.
    drop(a);
    let died = Instant::now();
    drive(&mut b, &mut out_b, None, &mut |_, o| {
        o.contains(&Output::Serve(addr_a))
    });
    let takeover_ms = died.elapsed().as_secs_f64() * 1e3;
    let mut v = InVerdict::Hold;
    drive(&mut b, &mut out_b, None, &mut |n, _| {
        v = n.inbound(m, now());
        v != InVerdict::Hold
    });
    assert_eq!(v, InVerdict::Local(f), "b delivers a's connection itself");
    assert!(matches!(b.outbound(f, now()), OutVerdict::Rewrite(x) if x == m));
    assert_eq!(b.stats.blocks_taken, 1);
    assert_eq!(b.stats.bad_records, 0);
    assert_eq!(b.stats.lease_lost, 0, "b kept its lease");
    // The lease is 4 s: the takeover cannot have come before it ran out (less the time
    // since a's last keep-alive, at most a third of it).
    assert!(takeover_ms >= 2500.0, "takeover after {takeover_ms} ms");
    println!(
        "masq_store case=etcd alloc_ms={alloc_ms:.1} push_ms={push_ms:.1} takeover_ms={takeover_ms:.0} (lease ttl 4 s)"
    );
}

#[test]
fn installs_reach_every_edge_through_etcd() {
    let Some(cluster) = etcd::cluster("cluster_perf", 3) else {
        println!("SKIP: etcd/etcdctl not installed");
        return;
    };
    let n: usize = std::env::var("CLUSTER_PERF_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let plan = control::cluster::perf::Plan {
        clients: n,
        window: 64,
        unknown: 20,
        timeout: Duration::from_secs(120),
    };
    let dir = std::env::temp_dir().join(format!("roamgate-cluster-perf-{}", std::process::id()));
    // CLUSTER_PERF_MEM=1: the same run on the memory backend too (the figure without etcd).
    let mem = std::env::var("CLUSTER_PERF_MEM").is_ok_and(|v| v == "1");
    let r = control::cluster::perf::run_etcd(&plan, Some(cluster.endpoints()), &dir, None, mem)
        .expect("perf cluster through etcd");
    let f = &r.etcd;
    println!(
        "cluster case=perf-etcd clients={n} installs_per_s={:.0} install_ms_p50={:.1} install_ms_p99={:.1} \
         unknown_spi_rtt_ms_p50={:.2} unknown_spi_rtt_ms_p99={:.2} etcd_puts_per_s={:.0} ratio={:.2}",
        f.installs_per_s,
        f.install_ms_p50,
        f.install_ms_p99,
        f.unknown_ms_p50,
        f.unknown_ms_p99,
        r.raw_puts_per_s,
        f.installs_per_s / r.raw_puts_per_s.max(1e-9)
    );
    if let Some(m) = &r.mem {
        println!(
            "cluster case=perf-mem clients={n} installs_per_s={:.0} install_ms_p50={:.1} install_ms_p99={:.1} \
             unknown_spi_rtt_ms_p50={:.2} node_thread_cpu_s={:.2}; etcd/mem = {:.2}; etcd run node_thread_cpu_s={:.2} wall_s={:.2}",
            m.installs_per_s,
            m.install_ms_p50,
            m.install_ms_p99,
            m.unknown_ms_p50,
            m.cpu_secs,
            f.installs_per_s / m.installs_per_s.max(1e-9),
            f.cpu_secs,
            f.install_secs
        );
    }
    assert_eq!(f.installs, n, "{f:?}");
    assert_eq!(f.clients_up, n, "every client has its CHILD_SA: {f:?}");
    assert_eq!(
        f.complete, n,
        "inbound on every edge, outbound on one: {f:?}"
    );
    assert_eq!(f.edge_inbound, vec![n; 3], "{f:?}");
    assert_eq!(f.edge_outbound.iter().sum::<usize>(), n, "{f:?}");
    assert_eq!(
        (
            f.stored_ike,
            f.stored_child,
            f.stored_placed,
            f.stored_copies
        ),
        (n, 2 * n, n, 2 * n),
        "the store holds every install: {f:?}"
    );
    assert_eq!(f.unknown_done, 20, "{f:?}");
}
