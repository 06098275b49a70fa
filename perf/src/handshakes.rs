//! Handshakes per second against a gateway: a crowd of simulated road-warrior clients (one
//! sans-IO IKE endpoint holding every client's IKE SA, each client with its own address, behind
//! a real worker that frames and parses their datagrams) against a gateway built the way
//! `roamgate run --single-process` builds one: a worker on in-memory ports and the IKE control
//! loop with its SA repository, which installs every client's CHILD_SA (both directions, keys
//! expanded by the agent) into the running data plane and gives it a virtual IP.
//!
//! Each side's threads report the CPU time they used (`/proc/thread-self/stat`), so the rate
//! is stated per core of the gateway's control thread, not only per wall-clock second on a
//! machine whose two cores both sides share.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::config;
use control::config::ike::{endpoint_config, IkeYaml};
use control::driver::inproc::InProcControl;
use control::repo::SaRepository;
use ike::{Endpoint, Event};
use pipeline::agent;
use pipeline::crypto::Backend;
use pipeline::msg::Datagram;
use pipeline::port::mem::cable;
use pipeline::sad::Sad;
use pipeline::spd::{Action, Spd};
use pipeline::worker::{Idle, Worker};

const PSK: &str = "perf-handshake-psk-not-secret";

/// What a run measured.
#[derive(Clone, Debug)]
pub struct HandshakeReport {
    pub clients: usize,
    /// IKE SAs with their first CHILD_SA up at the client (and installed at the gateway).
    pub established: usize,
    pub failed: usize,
    pub wall: Duration,
    /// CPU time of the gateway's control thread (IKE, repository, SA preparation) and of its
    /// worker (framing, punting, installing).
    pub gateway_control_cpu: Duration,
    pub gateway_worker_cpu: Duration,
    /// CPU time of the client simulator and its worker.
    pub clients_cpu: Duration,
    /// CHILD_SAs the gateway's data plane holds at the end.
    pub gateway_children: usize,
}

impl HandshakeReport {
    /// Handshakes per second of the gateway's control-thread CPU: what one core of the
    /// gateway's control plane completes.
    pub fn per_control_core(&self) -> f64 {
        self.established as f64 / self.gateway_control_cpu.as_secs_f64().max(1e-9)
    }

    /// Handshakes per second of the gateway's CPU, control and worker together.
    pub fn per_gateway_core(&self) -> f64 {
        let cpu = self.gateway_control_cpu + self.gateway_worker_cpu;
        self.established as f64 / cpu.as_secs_f64().max(1e-9)
    }

    pub fn per_wall_second(&self) -> f64 {
        self.established as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

pub use control::cluster::perf::thread_cpu;

/// Runs `clients` handshakes (at most `in_flight` at once) with IKE proposal `proposal`
/// (strongSwan syntax, e.g. `aes128gcm16-prfsha256-x25519`).
pub fn run(
    clients: usize,
    in_flight: usize,
    proposal: &str,
    backend: Backend,
    timeout: Duration,
) -> Result<HandshakeReport, String> {
    let (cfg, _, plan_b) = crate::lab();
    let gw_cfg = cfg.site_b.clone();
    let cl_cfg = cfg.site_a.clone();
    let p = Path::new("perf handshakes");
    let parse = |y: String| -> Result<_, String> {
        let y: IkeYaml = config::parse(p, &y).map_err(|e| e.to_string())?;
        y.validate(p, "ike").map_err(|e| e.to_string())
    };
    let gw_conns = parse(format!(
        "connections:\n  - {{ name: rw, local_id: gw.perf.roamgate.test, psk: \"{PSK}\", \
         ike_proposals: [{proposal}], esp_proposals: [aes128gcm16-esn], \
         local_ts: [10.2.0.0/24], pool: 10.64.0.0/10 }}\n"
    ))?;
    let cl_conns = parse(format!(
        "connections:\n  - {{ name: gw, local_id: rw.perf.roamgate.test, \
         remote_id: gw.perf.roamgate.test, psk: \"{PSK}\", ike_proposals: [{proposal}], \
         esp_proposals: [aes128gcm16-esn], remote_ts: [10.2.0.0/24], request_vip: true, \
         remote_addr: {} }}\n",
        gw_cfg.wan.address
    ))?;

    // The two WAN ports face each other; the LANs are idle.
    let (wan_cl, wan_gw) = cable("clients/wan", "gateway/wan", 4096);
    let (_lan_cl_host, lan_cl) = cable("clients/hosts", "clients/lan", 64);
    let (_lan_gw_host, lan_gw) = cable("gateway/hosts", "gateway/lan", 64);
    let stop = Arc::new(AtomicBool::new(false));

    // The gateway: worker + control loop (as `roamgate run --single-process`).
    let (gw_punt_tx, gw_punt_rx) = rtrb::RingBuffer::new(4096);
    let (gw_tx_tx, gw_tx_rx) = rtrb::RingBuffer::new(4096);
    let (mut gw_link, mut gw_control) = agent::link(0, 4096, Some(gw_punt_tx));
    gw_control.transmit = Some(gw_tx_rx);
    let rules = plan_b
        .rules
        .iter()
        .filter(|r| !matches!(r.action, Action::Protect(_)))
        .cloned()
        .collect();
    let spd = Spd::new(Vec::new()).map_err(|e| format!("{e:?}"))?;
    let gw_worker = Worker::new(
        0,
        lan_gw,
        wan_gw,
        gw_cfg.lan.link(),
        gw_cfg.wan.link(),
        Sad::with_capacity(clients * 2 + 64, 1),
        Box::new(spd),
        gw_control,
    );
    let mut ctl = InProcControl::new(
        gw_conns,
        SaRepository::new(rules, gw_cfg.replay_window),
        Some(gw_punt_rx),
        Some(gw_tx_tx),
        backend,
        gw_cfg.wan.address,
        1,
    );
    ctl.set_quiet();
    let gw_worker_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("gw-worker".into())
            .spawn(move || {
                let w = gw_worker.run_with(None, &stop, Idle::Sleep(Duration::from_micros(20)));
                let cpu = thread_cpu();
                (w.sad().inbound_len(), cpu)
            })
            .map_err(|e| e.to_string())?
    };
    let gw_control_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("gw-control".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match ctl.turn(&mut [&mut gw_link]) {
                        Ok(true) => {}
                        Ok(false) => std::thread::sleep(Duration::from_micros(20)),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok((ctl.children().len(), thread_cpu()))
            })
            .map_err(|e| e.to_string())?
    };

    // The clients: one endpoint behind a worker (its punt and transmit rings).
    let (cl_punt_tx, mut cl_punt_rx) = rtrb::RingBuffer::new(4096);
    let (mut cl_tx_tx, cl_tx_rx) = rtrb::RingBuffer::<Datagram>::new(4096);
    let (_cl_link, mut cl_control) = agent::link(1, 64, Some(cl_punt_tx));
    cl_control.transmit = Some(cl_tx_rx);
    let cl_worker = Worker::new(
        1,
        lan_cl,
        wan_cl,
        cl_cfg.lan.link(),
        cl_cfg.wan.link(),
        Sad::with_capacity(16, 1),
        Box::new(Spd::new(Vec::new()).map_err(|e| format!("{e:?}"))?),
        cl_control,
    );
    let cl_worker_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("clients-worker".into())
            .spawn(move || {
                let _w = cl_worker.run_with(None, &stop, Idle::Sleep(Duration::from_micros(20)));
                thread_cpu()
            })
            .map_err(|e| e.to_string())?
    };
    let mut ep = Endpoint::new(endpoint_config(&cl_conns), [0x5a; 32]);
    let gw_addr = std::net::SocketAddr::new(gw_cfg.wan.address, 500);
    let start = Instant::now();
    let now = || ike::Instant::from_nanos(start.elapsed().as_nanos() as u64);
    let (mut started, mut established, mut failed) = (0usize, 0usize, 0usize);
    let mut backlog: std::collections::VecDeque<Datagram> = Default::default();
    let cpu0 = thread_cpu();
    while established + failed < clients {
        if start.elapsed() > timeout {
            break;
        }
        let mut work = false;
        while started < clients && started - established - failed < in_flight {
            // Client i at 198.18.0.0/15 + i.
            let a = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)) + started as u32;
            let local = std::net::SocketAddr::new(std::net::Ipv4Addr::from(a).into(), 500);
            ep.connect(now(), "gw", local, gw_addr)
                .map_err(|e| format!("{e:?}"))?;
            started += 1;
            work = true;
        }
        while let Ok(d) = cl_punt_rx.pop() {
            work = true;
            let local = std::net::SocketAddr::new(d.dst, d.dst_port);
            let remote = std::net::SocketAddr::new(d.src, d.src_port);
            ep.handle(now(), local, remote, &d.payload);
        }
        if ep.poll_timeout().is_some_and(|t| t <= now()) {
            ep.handle_timeout(now());
        }
        while let Some(t) = ep.poll_transmit() {
            backlog.push_back(Datagram {
                src: t.src.ip(),
                dst: t.dst.ip(),
                src_port: t.src.port(),
                dst_port: t.dst.port(),
                payload: t.data,
            });
        }
        while let Some(d) = backlog.pop_front() {
            if let Err(rtrb::PushError::Full(d)) = cl_tx_tx.push(d) {
                backlog.push_front(d);
                break;
            }
            work = true;
        }
        while let Some(e) = ep.poll_event() {
            match e {
                Event::ChildUp(c) if c.rekey_of.is_none() => established += 1,
                Event::IkeDown { .. } => failed += 1,
                _ => {}
            }
        }
        if !work {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let wall = start.elapsed();
    let sim_cpu = thread_cpu().saturating_sub(cpu0);
    // Let the gateway finish installing the last CHILD_SAs.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (gw_children, gw_control_cpu) = gw_control_thread
        .join()
        .map_err(|_| "gateway control thread panicked".to_string())??;
    let (_, gw_worker_cpu) = gw_worker_thread
        .join()
        .map_err(|_| "gateway worker panicked".to_string())?;
    let cl_worker_cpu = cl_worker_thread
        .join()
        .map_err(|_| "client worker panicked".to_string())?;
    Ok(HandshakeReport {
        clients,
        established,
        failed,
        wall,
        gateway_control_cpu: gw_control_cpu,
        gateway_worker_cpu: gw_worker_cpu,
        clients_cpu: sim_cpu + cl_worker_cpu,
        gateway_children: gw_children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_of_clients_gets_its_tunnels_and_the_gateway_installs_them() {
        let r = run(
            200,
            32,
            "aes128gcm16-prfsha256-x25519",
            pipeline::crypto::best_backend(),
            Duration::from_secs(60),
        )
        .unwrap();
        println!(
            "{} handshakes in {:?}: {:.0}/s per gateway control core, {:.0}/s per gateway core",
            r.established,
            r.wall,
            r.per_control_core(),
            r.per_gateway_core()
        );
        assert_eq!((r.established, r.failed), (200, 0), "{r:?}");
        assert_eq!(r.gateway_children, 200, "every CHILD_SA installed");
        assert!(r.gateway_control_cpu > Duration::ZERO);
    }
}
