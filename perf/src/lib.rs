//! The perf lab harness: builds gateways on in-memory ports for the benches (and, later,
//! `roamgate perf`). Everything here drives the real worker code; nothing is simulated but the
//! wire.

pub mod dpdk_ports;
pub mod group;
pub mod handoff;
pub mod handshakes;
pub mod per_core;
pub mod rekeys;
pub mod report;
pub mod run;
pub mod secgw;
pub mod soak;
pub mod xdp_ports;

use std::path::Path;

use control::config::{self, GatewayConfig, GatewayPlan, LabConfig};
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::msg::Update;
use pipeline::port::mem::{cable, MemFrame, MemPort};
use pipeline::sad::Sad;
use pipeline::spd::Spd;
use pipeline::traffic::FlowSpec;
use pipeline::worker::Worker;

/// The median of `v` (the upper one of an even count; sorts `v`); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

const LAB: &str = include_str!("../../configs/lab.yaml");

/// The lab config shipped in configs/lab.yaml.
pub fn lab() -> (LabConfig, GatewayPlan, GatewayPlan) {
    let p = Path::new("configs/lab.yaml");
    let cfg: LabConfig = config::parse(p, LAB).expect("lab.yaml parses");
    let (a, b) = cfg.validate(p).expect("lab.yaml is valid");
    (cfg, a, b)
}

/// A gateway worker with the host end of its LAN cable and the far end of its WAN cable.
pub struct Bench {
    pub worker: Worker<MemPort>,
    pub lan: MemPort,
    pub wan: MemPort,
    pub agent: WorkerLink,
}

impl Bench {
    pub fn new(gw: &GatewayConfig, plan: &GatewayPlan, backend: Backend) -> Self {
        let (lan, lan_gw) = cable("bench-lan", "gw-lan", 4096);
        let (wan_gw, wan) = cable("gw-wan", "bench-wan", 4096);
        let (agent, control) = agent::link(0, 1024, None);
        let worker = Worker::new(
            0,
            lan_gw,
            wan_gw,
            gw.lan.link(),
            gw.wan.link(),
            Sad::with_capacity(16, 1),
            Box::new(Spd::new(Vec::new()).expect("empty SPD")),
            control,
        );
        let mut b = Bench {
            worker,
            lan,
            wan,
            agent,
        };
        let mut updates: Vec<Update> = plan
            .sas
            .iter()
            .map(|(dir, params)| Update::AddSa {
                dir: *dir,
                params: params.clone(),
            })
            .collect();
        updates.push(Update::ReplaceSpd {
            rules: plan.rules.clone(),
        });
        for u in &updates {
            let g = b
                .agent
                .send(agent::prepare(backend, u).expect("update prepares"));
            while b.agent.pump() < g {
                b.worker.poll(0);
            }
        }
        b
    }
}

/// The IPv4 flow from site A's first host to site B's (what the lab's a-to-b SA protects).
pub fn flow_a_to_b(cfg: &LabConfig) -> FlowSpec {
    FlowSpec {
        src_mac: cfg.site_a.lan.neighbor_mac.unwrap_or_default().0,
        dst_mac: cfg.site_a.lan.mac.unwrap_or_default().0,
        src: "10.1.0.10".parse().expect("literal"),
        dst: "10.2.0.10".parse().expect("literal"),
        src_port: 40000,
        dst_port: 5001,
    }
}

/// A pool of frames for the benches to cycle.
pub fn frames(n: usize) -> Vec<MemFrame> {
    (0..n).map(|_| MemFrame::new()).collect()
}
