//! The store's figure: SA installs per second through etcd (`roamgate perf cluster-store`).
//!
//! Simulated clients, each one install: an IKE SA record (opaque bytes of the size given,
//! standing in for the ike crate's export record), its CHILD SA with both directions in one
//! record (real `proto` `AddSa` envelopes with fresh random keys) and its placement on three
//! edges (the forwarding edge and two watched copies, one record): three sealed records,
//! written in transactions of `batch` clients (3 x `batch` operations, within etcd's default
//! `--max-txn-ops` of 128) with `window` transactions in flight.
//! In the same run, on the same cluster, the baseline: etcd's own put rate through the same
//! client (one key per request, values of the average record size, the same window), and
//! optionally `etcdctl check perf` (etcd's own tool, 60 s at a target rate: `xl`, 15,000
//! writes/s from 1,000 clients, shows the capacity; `s` is capped at 150); then the recovery a restarting
//! crypto node does: every record listed, opened and decoded.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::policy::Prefix;
use proto::sa::{AeadAlg, Lifetime, Resume, SaKeys, SaParams, UdpEncap};
use proto::{Direction, SaId, Spi};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::etcd::{EtcdOptions, EtcdStore};
use super::keys::{Name, RecordKey};
use super::local::LocalEtcd;
use super::record::Record;
use super::repo::ClusterStore;
use super::seal::Sealer;
use super::{Event, Reply, Request, Store, StoreError, Txn};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    /// Clients per transaction.
    pub batch: usize,
    /// Transactions in flight.
    pub window: usize,
    /// Bytes of each IKE SA record.
    pub ike_bytes: usize,
    /// `etcdctl check perf --load <this>` (None: skipped; it takes 60 s).
    pub check_perf: Option<String>,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct Figures {
    pub clients: usize,
    pub records: usize,
    pub value_bytes_avg: usize,
    pub txns: usize,
    pub install_secs: f64,
    pub installs_per_s: f64,
    pub records_per_s: f64,
    pub txn_ms_p50: f64,
    pub txn_ms_p99: f64,
    /// The baseline: single-key puts per second through the same client and window.
    pub raw_puts_per_s: f64,
    pub raw_puts: usize,
    /// `etcdctl check perf`'s throughput line, if run.
    pub check_perf: Option<String>,
    pub check_perf_writes_per_s: Option<f64>,
    pub recovery_secs: f64,
    pub recovered: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn child(rng: &SystemRandom, id: u32, spi: u32, dir: Direction) -> Result<SaParams, String> {
    let mut keymat = Zeroizing::new([0u8; 36]);
    rng.fill(&mut keymat[..])
        .map_err(|_| "random".to_string())?;
    let v4 = |s: &str| s.parse().map_err(err);
    Ok(SaParams {
        id: SaId(id),
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm256, &keymat[..]).map_err(err)?,
        esn: true,
        replay_window: if dir == Direction::Inbound { 1024 } else { 0 },
        local: v4("192.0.2.1")?,
        remote: v4("198.51.100.7")?,
        encap: Some(UdpEncap {
            local_port: 4500,
            remote_port: 4500,
        }),
        local_ts: Prefix::new(v4("10.1.0.0")?, 16).map_err(err)?,
        remote_ts: Prefix::new(v4("10.99.0.1")?, 32).map_err(err)?,
        outer_ttl: 64,
        lifetime: Lifetime::default(),
        resume: Resume::default(),
        checkpoint: None,
    })
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Runs `reqs` with `window` in flight; returns each request's latency (ms) and the wall
/// time.
pub(crate) fn pipeline<S: Store>(
    store: &mut S,
    reqs: Vec<Request>,
    window: usize,
) -> Result<(Vec<f64>, f64), String> {
    let start = Instant::now();
    // Tickets are increasing: the first key is the oldest request, the one to wait for.
    let mut started = std::collections::BTreeMap::new();
    let mut lat = Vec::with_capacity(reqs.len());
    let mut events = Vec::new();
    let mut reqs = reqs.into_iter();
    let mut more = true;
    while more || !started.is_empty() {
        while more && started.len() < window {
            match reqs.next() {
                Some(r) => {
                    let t = store.submit(r).map_err(err)?;
                    started.insert(t, Instant::now());
                }
                None => more = false,
            }
        }
        store.poll(&mut events);
        if events.is_empty() {
            if let Some(t) = started.keys().next().copied() {
                // Block for the oldest one (the rest are polled next time round).
                let r = store.wait(t, Duration::from_secs(60));
                if let Some(s) = started.remove(&t) {
                    lat.push(s.elapsed().as_secs_f64() * 1e3);
                }
                check(r)?;
            }
        }
        for e in events.drain(..) {
            if let Event::Done { ticket, result } = e {
                if let Some(s) = started.remove(&ticket) {
                    lat.push(s.elapsed().as_secs_f64() * 1e3);
                }
                check(result)?;
            }
        }
    }
    Ok((lat, start.elapsed().as_secs_f64()))
}

fn check(r: Result<Reply, StoreError>) -> Result<(), String> {
    match r {
        Ok(Reply::Txn {
            succeeded: true, ..
        }) => Ok(()),
        other => Err(format!("a write failed: {other:?}")),
    }
}

/// Runs the figure against `endpoints`.
pub fn run(
    plan: &Plan,
    endpoints: Vec<String>,
    local: Option<&LocalEtcd>,
) -> Result<Figures, String> {
    let rng = SystemRandom::new();
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill(&mut key[..]).map_err(|_| "random".to_string())?;
    let sealer = Arc::new(Sealer::new(key));
    let batch = plan.batch.clamp(1, 32);
    let mut opts = EtcdOptions::new(endpoints);
    opts.window = plan.window.max(1);
    let store = EtcdStore::connect(opts).map_err(err)?;
    let cluster = Name::new(&format!("perf-{}", std::process::id())).map_err(err)?;
    let mut repo = ClusterStore::new(store, &cluster, sealer);

    // The installs: build every sealed batch first (sealing is the crypto node's CPU, not
    // etcd's; it is timed separately below).
    let seal_start = Instant::now();
    let mut txns = Vec::new();
    let mut bytes = 0usize;
    let mut records = 0usize;
    let mut ike = vec![0u8; plan.ike_bytes];
    for chunk in (0..plan.clients).collect::<Vec<_>>().chunks(batch) {
        let mut t = Txn::default();
        for &c in chunk {
            let c32 = u32::try_from(c).map_err(err)?;
            let spi = 0xc000_0000 | c32;
            rng.fill(&mut ike).map_err(|_| "random".to_string())?;
            let id = 0x5eed_0000_0000_0000 | c as u64;
            let recs = [
                (
                    RecordKey::Ike(id),
                    Record::IkeSa {
                        id,
                        version: 1,
                        bytes: Zeroizing::new(ike.clone()),
                    },
                ),
                (
                    RecordKey::Child(spi),
                    Record::Child {
                        version: 1,
                        inbound: Some(Box::new(child(&rng, c32, spi, Direction::Inbound)?)),
                        outbound: Some(Box::new(child(
                            &rng,
                            c32,
                            0x0100_0000 | c32,
                            Direction::Outbound,
                        )?)),
                        fence: 1 << 20,
                    },
                ),
                (
                    RecordKey::Placement(spi),
                    Record::Placement {
                        at_ms: 0,
                        drain_start: 0,
                        edges: {
                            // The forwarding edge holds both directions, the others copies.
                            let home = u16::try_from(c % 3).map_err(err)?;
                            let mut e: Vec<(u16, u8)> =
                                (0..3).map(|x| (x, if x == home { 1 } else { 2 })).collect();
                            e.sort_unstable();
                            e
                        },
                    },
                ),
            ];
            for (k, r) in &recs {
                repo.put(&mut t, k, r, None).map_err(err)?;
                records += 1;
            }
        }
        bytes += t
            .ops
            .iter()
            .map(|op| match op {
                super::Op::Put { value, .. } => value.len(),
                super::Op::Delete { .. } => 0,
            })
            .sum::<usize>();
        txns.push(Request::Txn(t));
    }
    let seal_secs = seal_start.elapsed().as_secs_f64();
    tracing::info!(target: "control", records, seal_secs, "cluster-store perf: records sealed");
    let value_bytes_avg = bytes / records.max(1);
    let ntxns = txns.len();
    let (mut lat, install_secs) = pipeline(repo.store(), txns, plan.window.max(1))?;
    lat.sort_by(f64::total_cmp);

    // The baseline: single puts of the same size, same window, same client.
    let raw_puts = records.min(20_000);
    let reqs: Vec<Request> = (0..raw_puts)
        .map(|i| {
            let mut t = Txn::default();
            t.put(
                format!("/roamgate-perf-raw/{}/{i:08}", std::process::id()).into_bytes(),
                vec![0x5a; value_bytes_avg],
                None,
            );
            Request::Txn(t)
        })
        .collect();
    let (_, raw_secs) = pipeline(repo.store(), reqs, plan.window.max(1))?;

    // Recovery: list, open and decode everything.
    let rec_start = Instant::now();
    let (entries, _) = repo.load("", Duration::from_secs(120)).map_err(err)?;
    let recovery_secs = rec_start.elapsed().as_secs_f64();
    if entries.len() != records {
        return Err(format!(
            "recovered {} records of {records} written",
            entries.len()
        ));
    }

    let (check_perf, check_perf_writes_per_s) = match (&plan.check_perf, local) {
        (Some(load), Some(l)) => check_perf(l, load)?,
        _ => (None, None),
    };

    Ok(Figures {
        clients: plan.clients,
        records,
        value_bytes_avg,
        txns: ntxns,
        install_secs,
        installs_per_s: plan.clients as f64 / install_secs,
        records_per_s: records as f64 / install_secs,
        txn_ms_p50: quantile(&lat, 0.5),
        txn_ms_p99: quantile(&lat, 0.99),
        raw_puts_per_s: raw_puts as f64 / raw_secs,
        raw_puts,
        check_perf,
        check_perf_writes_per_s,
        recovery_secs,
        recovered: entries.len(),
    })
}

/// `etcdctl check perf --load <load>` on `local`: its throughput line and writes/s.
pub(crate) fn check_perf(
    local: &LocalEtcd,
    load: &str,
) -> Result<(Option<String>, Option<f64>), String> {
    let out = local
        .etcdctl(&["check", "perf", "--load", load])
        .map_err(err)?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("Throughput"))
        .map(str::to_string);
    // "PASS: Throughput is 144 writes/s" or "FAIL: Throughput too low: 2651 writes/s".
    let wps = line.as_deref().and_then(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "writes/s")?;
        words.get(at.checked_sub(1)?)?.parse::<f64>().ok()
    });
    Ok((line.or(Some(text.trim().to_string())), wps))
}

/// Single puts of `bytes` each (`count` of them, `window` in flight) through `store`: etcd's
/// own write rate through our client, the baseline of both figures.
pub(crate) fn raw_puts<S: Store>(
    store: &mut S,
    count: usize,
    bytes: usize,
    window: usize,
) -> Result<f64, String> {
    let reqs: Vec<Request> = (0..count)
        .map(|i| {
            let mut t = Txn::default();
            t.put(
                format!("/roamgate-perf-raw/{}/{i:08}", std::process::id()).into_bytes(),
                vec![0x5a; bytes],
                None,
            );
            Request::Txn(t)
        })
        .collect();
    let (_, secs) = pipeline(store, reqs, window.max(1))?;
    Ok(count as f64 / secs.max(1e-9))
}

/// Starts a local 3-member cluster under `dir` and runs the figure on it.
pub fn run_local(plan: &Plan, dir: &Path) -> Result<Figures, String> {
    let _ = std::fs::remove_dir_all(dir);
    let local = LocalEtcd::start(dir, 3, None).map_err(err)?;
    let r = run(plan, local.endpoints(), Some(&local));
    drop(local);
    let _ = std::fs::remove_dir_all(dir);
    r
}
