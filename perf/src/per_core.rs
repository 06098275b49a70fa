//! Per-core CHILD_SAs negotiated by IKE (RFC 9611) on 1 and 2 workers: the product path up to
//! the worker. Two roamgate IKE endpoints (each with the SPI layout and `per_core_sas` its
//! control core gives it for that many workers) negotiate on virtual time; the initiator asks
//! for one CHILD_SA per other worker as `control::core` does; its CHILD_SAs go through the SA
//! repository and the placement (which gives each worker its own SAs and an SPD copy that
//! protects with them) into real workers on in-memory ports, one thread per worker on its own
//! core, each encrypting the LAN traffic it receives with the SA it owns (no hand-off: each
//! rig has only its own worker's SAs, so a policy naming another worker's SA would drop).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use control::config::ike::{endpoint_config, IkeYaml};
use control::core::placement::Placement;
use control::repo::SaRepository;
use ike::services::spi::SpiAllocator;
use ike::services::Services;
use ike::testing::Net;
use ike::{Endpoint, Event};
use pipeline::agent;
use pipeline::crypto::Backend;
use pipeline::msg::Update;
use pipeline::spd::Action;

use crate::run::{drive, Dir, Frames, Rig};

const PSK: &str = "perf-per-core-psk-not-secret";

/// What one worker of the initiator got from the control plane.
pub struct WorkerSas {
    /// The updates routed to it, in order.
    pub updates: Vec<Update>,
    /// The outbound SA its SPD's first protect rule names, and whether it installed that SA.
    pub protects_own: bool,
}

/// Negotiates the tunnel for `workers` workers at both ends; the initiator's updates per
/// worker and the number of CHILD_SAs under the one IKE SA.
pub fn negotiate(workers: u16) -> Result<(Vec<WorkerSas>, usize), String> {
    let p = Path::new("perf per-core");
    let parse = |y: String| -> Result<_, String> {
        let y: IkeYaml = control::config::parse(p, &y).map_err(|e| e.to_string())?;
        y.validate(p, "ike").map_err(|e| e.to_string())
    };
    let a = parse(format!(
        "connections:\n  - {{ name: site, local_id: a.perf.test, remote_id: b.perf.test, \
         psk: \"{PSK}\", esp_proposals: [aes128gcm16-esn], local_ts: [10.1.0.0/24], \
         remote_ts: [10.128.0.0/16], remote_addr: 192.0.2.2 }}\n"
    ))?;
    let b = parse(format!(
        "connections:\n  - {{ name: site, local_id: b.perf.test, remote_id: a.perf.test, \
         psk: \"{PSK}\", esp_proposals: [aes128gcm16-esn], local_ts: [10.128.0.0/16], \
         remote_ts: [10.1.0.0/24] }}\n"
    ))?;
    let endpoint = |conns: &[control::config::ike::Connection], seed: u8| {
        let placement = Placement::new(workers);
        let mut cfg = endpoint_config(conns);
        if workers > 1 {
            cfg.per_core_sas = workers;
        }
        let services = Services {
            spis: SpiAllocator::new(placement.layout()).spread_over(u32::from(workers)),
            ..Services::default()
        };
        Endpoint::with_services(cfg, [seed; 32], services)
    };
    let a_addr: SocketAddr = "192.0.2.1:500".parse().map_err(|_| "literal")?;
    let b_addr: SocketAddr = "192.0.2.2:500".parse().map_err(|_| "literal")?;
    let mut net = Net::new();
    net.add(endpoint(&a, 0xa1), a_addr);
    net.add(endpoint(&b, 0xb2), b_addr);
    let now = net.now;
    let ike = net
        .ep(0)
        .connect(now, "site", a_addr, b_addr)
        .map_err(|e| e.to_string())?;
    net.drive();
    // As `control::core` does once the first CHILD_SA is up: one per other worker.
    let mut placement = Placement::new(workers);
    if workers > 1 {
        let first = net.node(0).events.iter().find_map(|e| match e {
            Event::ChildUp(c) => Some(c.inbound.spi),
            _ => None,
        });
        let first = first.ok_or("no CHILD_SA came up")?;
        let w0 = placement.inbound_owner(pipeline::ids::Spi(first.0));
        let now = net.now;
        for w in (0..workers).filter(|w| *w != w0) {
            net.ep(0)
                .create_child_on(now, ike, u32::from(w))
                .map_err(|e| e.to_string())?;
        }
        net.drive();
    }
    let children = net
        .ep(0)
        .list()
        .into_iter()
        .find(|s| s.0 == ike)
        .map_or(0, |s| s.3.len());
    let mut repo = SaRepository::new(Vec::new(), 1024);
    let mut per: Vec<Vec<Update>> = vec![Vec::new(); usize::from(workers)];
    for e in net.node(0).events.drain(..).collect::<Vec<_>>() {
        for u in repo.on_event(&e).map_err(|e| e.to_string())? {
            let r = &repo;
            for (w, u) in placement.route(u, |id, spi| {
                r.child_of_sa(id, spi).map(|c| pipeline::ids::Spi(c.0))
            }) {
                per[usize::from(w)].push(u);
            }
        }
    }
    let out = per
        .into_iter()
        .map(|updates| {
            let own: Vec<_> = updates
                .iter()
                .filter_map(|u| match u {
                    Update::AddSa {
                        dir: pipeline::msg::Direction::Outbound,
                        params,
                    } => Some(params.id),
                    _ => None,
                })
                .collect();
            let first_protect = updates.iter().rev().find_map(|u| match u {
                Update::ReplaceSpd { rules } => rules.iter().find_map(|r| match r.action {
                    Action::Protect(id) => Some(id),
                    _ => None,
                }),
                _ => None,
            });
            WorkerSas {
                protects_own: first_protect.is_some_and(|id| own.contains(&id)),
                updates,
            }
        })
        .collect();
    Ok((out, children))
}

/// One measurement: the aggregate encrypt rate of `workers` workers with negotiated SAs.
#[derive(Clone, Debug)]
pub struct PerCorePoint {
    pub workers: u16,
    pub size: usize,
    /// CHILD_SAs under the IKE SA.
    pub children: usize,
    pub pps: f64,
    /// Packets that did not come out (a worker without its own SA would lose its share).
    pub missing: u64,
}

/// Negotiates for `workers` workers and measures the encrypt rate of `size`-byte frames,
/// `n` per worker.
pub fn point(workers: u16, size: usize, n: u64, backend: Backend) -> Result<PerCorePoint, String> {
    let (sas, children) = negotiate(workers)?;
    if let Some(i) = sas.iter().position(|w| !w.protects_own) {
        return Err(format!(
            "worker {i}: its SPD does not protect with an SA of its own"
        ));
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let results: Vec<Result<(u64, Duration, u64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = sas
            .iter()
            .enumerate()
            .map(|(w, ws)| {
                let core = cores.get(w).copied();
                s.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let mut rig = Rig::empty(w as u16, 16);
                    let mut last = 0;
                    for u in &ws.updates {
                        let c = agent::prepare(backend, u).map_err(|e| e.to_string())?;
                        last = rig.link.send(c);
                    }
                    rig.settle(last);
                    let (timed, _, busy, got) = drive(
                        &mut rig,
                        Dir::Encrypt,
                        size,
                        1,
                        n,
                        7 + w as u64,
                        &Frames::empty(),
                        false,
                    );
                    Ok((timed, busy, got))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker thread".into())))
            .collect()
    });
    let mut pps = 0.0;
    let mut got_all = 0;
    for r in results {
        let (timed, busy, got) = r?;
        pps += timed as f64 / busy.as_secs_f64().max(1e-9);
        got_all += got;
    }
    Ok(PerCorePoint {
        workers,
        size,
        children,
        pps,
        missing: (n * u64::from(workers)).saturating_sub(got_all),
    })
}

/// One side of a comparison: the median rate (pps) and the CHILD_SAs negotiated.
pub type Median = (f64, usize);

/// 1 against 2 workers at `size` bytes, `runs` interleaved runs of `n` packets per worker:
/// the median rates (pps) and the CHILD_SAs each negotiated. A run that lost a packet is an
/// error.
pub fn compare(
    size: usize,
    n: u64,
    runs: usize,
    backend: Backend,
) -> Result<(Median, Median), String> {
    let (mut one, mut two) = (Vec::new(), Vec::new());
    let mut children = (0, 0);
    for _ in 0..runs.max(1) {
        for w in [1u16, 2] {
            let p = point(w, size, n, backend)?;
            if p.missing > 0 {
                return Err(format!("{w} workers: {} packets missing", p.missing));
            }
            if w == 1 {
                children.0 = p.children;
                one.push(p.pps);
            } else {
                children.1 = p.children;
                two.push(p.pps);
            }
        }
    }
    Ok((
        (crate::median(&mut one), children.0),
        (crate::median(&mut two), children.1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_negotiate_a_child_sa_each_and_protect_with_their_own() {
        let (sas, children) = negotiate(2).unwrap();
        assert_eq!(children, 2);
        assert_eq!(sas.len(), 2);
        for (i, w) in sas.iter().enumerate() {
            assert!(w.protects_own, "worker {i}");
        }
        let (one, children) = negotiate(1).unwrap();
        assert_eq!((one.len(), children), (1, 1));
        assert!(one[0].protects_own);
    }

    /// The figure: `ROAMGATE_PER_CORE_PACKETS=1000000 cargo test --release -p roamgate-perf
    /// --lib per_core -- --nocapture` (as `roamgate perf per-core`); by default a short run.
    #[test]
    fn one_against_two_workers_with_negotiated_per_core_sas() {
        let n: u64 = std::env::var("ROAMGATE_PER_CORE_PACKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let backend = pipeline::crypto::best_backend();
        for size in [64, 1420] {
            let ((m1, c1), (m2, c2)) = compare(size, n, 3, backend).unwrap();
            assert_eq!((c1, c2), (1, 2));
            println!(
                "per-core {backend} {size} B: 1 worker {:.2} Mpps, 2 workers {:.2} Mpps, ratio {:.2}x",
                m1 / 1e6,
                m2 / 1e6,
                m2 / m1
            );
        }
    }

    #[test]
    fn both_workers_encrypt_every_packet_with_their_negotiated_sa() {
        let p = point(2, 64, 20_000, pipeline::crypto::best_backend()).unwrap();
        assert_eq!(p.children, 2);
        assert_eq!(p.missing, 0, "{p:?}");
        assert!(p.pps > 0.0);
    }
}
