//! `roamgate perf ha-resync`: what a rejoin and a takeover cost at 10k and 100k IKE SAs, with
//! the pair's real code in one process.
//!
//! 1. Real IKE SAs: simulated road-warrior clients (one sans-IO client endpoint, one address
//!    each, PSK, a virtual IP, one CHILD_SA, as `roamgate perf handshakes` makes them) against
//!    a sans-IO gateway endpoint; every IKE SA is exported as the pair replicates it.
//! 2. An active `control::ha::Node` holds them (IKE SA records and both directions of every
//!    CHILD SA); a fresh standby node joins it over the real sync channel (Noise NNpsk0 over
//!    TCP on loopback, `channel::start`, each end's thread): the resync time is from the
//!    standby's start until it says it holds the whole state (`Said::InSync`).
//! 3. The active goes silent: the standby's takeover (its node's outputs: every SA's install
//!    with its sequence start, the marks to persist) and the adoption of every IKE SA by a
//!    control core (`ControlCore::adopt_ike`, what `roamgate run` does at a takeover, the
//!    data-plane updates queued, not applied) are timed apart.
//!
//! Not in these figures: the data plane's installs (the worker's `AddSa`, measured by
//! `roamgate perf install`), the marks file's fsync, the network.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use control::config::ike::{endpoint_config, IkeYaml};
use control::core::ControlCore;
use control::ha::{HaParams, Node, Output, Record, Role, Said};
use control::repo::SaRepository;
use ike::Endpoint;
use proto::policy::Prefix;
use proto::sa::{AeadAlg, Checkpoint, Lifetime, Resume, SaKeys, SaParams, UdpEncap};
use proto::{Direction, SaId, Spi};
use zeroize::Zeroizing;

use super::channel::{self, Full, LinkEvent, Psk, SyncLink};

const PSK: &str = "perf-ha-resync-psk-not-secret";
const GW: &str = "192.0.2.1";

/// One run's figures.
#[derive(Debug)]
pub struct ResyncReport {
    pub ike_sas: usize,
    pub child_sas: usize,
    /// Making the IKE SAs (handshakes, exports): not part of the pair's cost.
    pub make: Duration,
    /// Bytes of IKE SA records (the ike crate's export) in all.
    pub record_bytes: usize,
    /// A fresh standby's start until it holds the whole state.
    pub resync: Duration,
    /// The standby's node at takeover: from the detection to its last install output.
    pub takeover_node: Duration,
    /// Every IKE SA adopted by a control core.
    pub adopt: Duration,
    pub adopted: usize,
}

fn params(slot: u8, priority: u8) -> HaParams {
    HaParams {
        slot,
        priority,
        heartbeat_ms: 30,
        detection_ms: 150,
        checkpoint: Checkpoint {
            packets: 4096,
            millis: 50,
        },
        max_pps: 2_000_000,
        window: 1024,
        max_backlog: 65_536,
        switchover_margin: 512,
    }
}

fn conns(yaml: String) -> Result<Vec<control::config::ike::Connection>> {
    let p = Path::new("perf ha-resync");
    let y: IkeYaml = control::config::parse(p, &yaml).map_err(|e| anyhow!("{e}"))?;
    y.validate(p, "ike").map_err(|e| anyhow!("{e}"))
}

fn gateway_conns() -> Result<Vec<control::config::ike::Connection>> {
    conns(format!(
        "connections:\n  - {{ name: rw, local_id: gw.perf.roamgate.test, psk: \"{PSK}\", \
         ike_proposals: [aes128gcm16-prfsha256-x25519], esp_proposals: [aes128gcm16-esn], \
         local_ts: [10.2.0.0/24], pool: 10.64.0.0/10 }}\n"
    ))
}

/// An exported IKE SA record (bytes) and the SPIs of its CHILD SAs (inbound, outbound).
type Made = (Zeroizing<Vec<u8>>, Vec<(u32, u32)>);

/// `n` real IKE SAs at a gateway endpoint.
fn make_ike_sas(n: usize) -> Result<Vec<Made>> {
    let cl_conns = conns(format!(
        "connections:\n  - {{ name: gw, local_id: rw.perf.roamgate.test, \
         remote_id: gw.perf.roamgate.test, psk: \"{PSK}\", \
         ike_proposals: [aes128gcm16-prfsha256-x25519], esp_proposals: [aes128gcm16-esn], \
         remote_ts: [10.2.0.0/24], request_vip: true, remote_addr: {GW} }}\n"
    ))?;
    let mut gw_cfg = endpoint_config(&gateway_conns()?);
    // A crowd from many sources at once is the point here, not the cookie defence.
    gw_cfg.admission.cookie_threshold = u32::MAX;
    gw_cfg.admission.half_open_max = u32::MAX;
    let mut gw = Endpoint::new(gw_cfg, [7; 32]);
    let mut cl = Endpoint::new(endpoint_config(&cl_conns), [8; 32]);
    let gw_addr = SocketAddr::new(GW.parse()?, 500);
    let now = ike::Instant::ZERO;
    let mut ups = Vec::with_capacity(n);
    let mut children: BTreeMap<ike::IkeSaId, Vec<(u32, u32)>> = BTreeMap::new();
    let mut started = 0usize;
    while ups.len() < n {
        // 256 handshakes under way at once.
        while started < n && started < ups.len() + 256 {
            let i = u32::try_from(started)?;
            let ip = Ipv4Addr::from(0x6440_0000u32 | i);
            let local = SocketAddr::new(IpAddr::V4(ip), 500);
            cl.connect(now, "gw", local, gw_addr)
                .map_err(|e| anyhow!("connect: {e}"))?;
            started += 1;
        }
        let mut moved = true;
        while moved {
            moved = false;
            while let Some(t) = cl.poll_transmit() {
                gw.handle(now, t.dst, t.src, &t.data);
                moved = true;
            }
            while let Some(t) = gw.poll_transmit() {
                cl.handle(now, t.dst, t.src, &t.data);
                moved = true;
            }
        }
        let before = ups.len();
        while let Some(e) = gw.poll_event() {
            match e {
                ike::Event::IkeUp { ike, .. } => ups.push(ike),
                ike::Event::ChildUp(info) => children
                    .entry(info.ike)
                    .or_default()
                    .push((info.inbound.spi.0, info.outbound.spi.0)),
                _ => {}
            }
        }
        while cl.poll_event().is_some() {}
        if ups.len() == before && started >= n {
            bail!("only {} of {n} handshakes completed", ups.len());
        }
    }
    ups.into_iter()
        .map(|id| {
            let r = gw.export(now, id).map_err(|e| anyhow!("export: {e}"))?;
            let bytes = r.to_bytes().map_err(|e| anyhow!("record: {e}"))?;
            Ok((
                Zeroizing::new(bytes.to_vec()),
                children.remove(&id).unwrap_or_default(),
            ))
        })
        .collect()
}

/// One direction of a CHILD SA as the pair replicates it (`AddSa` parameters).
fn child(id: SaId, spi: u32, remote: Ipv4Addr) -> Result<SaParams> {
    Ok(SaParams {
        id,
        spi: Spi(spi),
        keys: SaKeys::from_keymat(AeadAlg::AesGcm128, &[0x5a; 20]).map_err(|e| anyhow!("{e:?}"))?,
        esn: true,
        replay_window: 1024,
        local: GW.parse()?,
        remote: IpAddr::V4(remote),
        encap: Some(UdpEncap {
            local_port: 4500,
            remote_port: 4500,
        }),
        local_ts: Prefix::new("10.2.0.0".parse()?, 24).map_err(|e| anyhow!("{e:?}"))?,
        remote_ts: Prefix::new(IpAddr::V4(remote), 32).map_err(|e| anyhow!("{e:?}"))?,
        outer_ttl: 64,
        lifetime: Lifetime::default(),
        resume: Resume::default(),
        checkpoint: None,
    })
}

/// Moves a node's messages to its link (back-pressure: a full queue keeps the message), its
/// link's events to it, its timers and outputs; true if anything happened.
fn pump(
    node: &mut Node,
    link: &SyncLink,
    held: &mut Option<Zeroizing<Vec<u8>>>,
    now: u64,
    said: &mut Vec<Said>,
) -> bool {
    let mut work = false;
    while let Ok(ev) = link.events().try_recv() {
        work = true;
        match ev {
            LinkEvent::Up => node.link_up(now),
            LinkEvent::Message(m, _) => node.handle_message(now, &m),
            LinkEvent::Down { .. } => *held = None,
        }
    }
    if now >= node.poll_timeout() {
        node.handle_timeout(now);
    }
    loop {
        let Some(m) = held.take().or_else(|| node.poll_message()) else {
            break;
        };
        work = true;
        if let Err(Full(m)) = link.try_send(m) {
            *held = Some(m);
            break;
        }
    }
    while let Some(o) = node.poll_output() {
        work = true;
        match o {
            // The marks file is not measured here: confirmed at once.
            Output::Persist { token, marks } => node.persisted(token, marks),
            Output::Said(s) => said.push(s),
            _ => {}
        }
    }
    work
}

/// Resync and takeover of `n` IKE SAs (see the module documentation).
pub fn run(n: usize) -> Result<ResyncReport> {
    let t0 = Instant::now();
    let sas = make_ike_sas(n)?;
    let make = t0.elapsed();
    let record_bytes = sas.iter().map(|(b, _)| b.len()).sum();

    // The active, alone at first: it becomes active after the detection time.
    let clock = Instant::now();
    let offset = 1000u64;
    let now_ms = || offset + u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut a = Node::new(params(0, 200), BTreeMap::new(), 0);
    a.handle_timeout(200);
    while a.poll_output().is_some() {}
    if a.role() != Role::Active {
        bail!("the first node did not become active alone: {:?}", a.role());
    }
    let mut next_sa = 1u32;
    let mut child_sas = 0usize;
    for (i, (bytes, children)) in sas.iter().enumerate() {
        a.record(Record::IkeSa {
            id: i as u64 + 1,
            version: 1,
            bytes: bytes.clone(),
        })
        .map_err(|e| anyhow!("{e}"))?;
        let remote = Ipv4Addr::from(0x6440_0000u32 | u32::try_from(i)?);
        for (spi_in, spi_out) in children {
            let id = SaId(next_sa);
            next_sa += 1;
            for (dir, spi) in [
                (Direction::Inbound, *spi_in),
                (Direction::Outbound, *spi_out),
            ] {
                a.record(Record::ChildSa {
                    version: 1,
                    dir,
                    params: Box::new(child(id, spi, remote)?),
                })
                .map_err(|e| anyhow!("{e}"))?;
            }
            child_sas += 1;
        }
        while a.poll_output().is_some() {}
    }

    // The standby joins over the real channel.
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the sync listener")?;
    let addr = listener.local_addr()?;
    let psk = [0x42; 32];
    let la = channel::start(channel::Endpoint::Listen(listener), Psk::new(psk), 1024)?;
    let start = Instant::now();
    let lb = channel::start(channel::Endpoint::Dial(addr), Psk::new(psk), 1024)?;
    let mut b = Node::new(params(1, 100), BTreeMap::new(), now_ms());
    let (mut ha, mut hb) = (None, None);
    let (mut said_a, mut said_b) = (Vec::new(), Vec::new());
    let limit = Duration::from_secs(600);
    let resync = loop {
        let now = now_ms();
        let w = pump(&mut a, &la, &mut ha, now, &mut said_a)
            | pump(&mut b, &lb, &mut hb, now, &mut said_b);
        if said_b.iter().any(|s| matches!(s, Said::InSync { .. })) && b.role() == Role::Standby {
            break start.elapsed();
        }
        if start.elapsed() > limit {
            bail!(
                "the standby did not sync in {limit:?} (role {:?}, said {said_b:?})",
                b.role()
            );
        }
        if !w {
            std::thread::sleep(Duration::from_micros(100));
        }
    };
    let replicated = b.table().ike_sas().count();
    if replicated != n {
        bail!("the standby holds {replicated} of {n} IKE SAs");
    }

    // The active goes silent: the standby takes over.
    drop(la);
    drop(a);
    let t_detect = now_ms() + 10_000;
    let began = Instant::now();
    b.handle_timeout(t_detect);
    let mut installs = 0usize;
    let mut rounds = 0;
    loop {
        let mut any = false;
        while let Some(o) = b.poll_output() {
            any = true;
            match o {
                Output::InstallInbound { .. } | Output::InstallOutbound { .. } => installs += 1,
                Output::Persist { token, marks } => b.persisted(token, marks),
                _ => {}
            }
        }
        rounds += 1;
        if !any || rounds > 8 {
            break;
        }
    }
    let takeover_node = began.elapsed();
    if b.role() != Role::Active || installs < 2 * child_sas {
        bail!(
            "no takeover: role {:?}, {installs} installs of {} SAs",
            b.role(),
            2 * child_sas
        );
    }
    // The control core adopts every IKE SA, as `roamgate run` does.
    let repo = SaRepository::new(Vec::new(), 1024);
    let mut core = ControlCore::new(gateway_conns()?, repo, 1, [9; 32], GW.parse()?);
    let table = b.table();
    let mut by_spi: BTreeMap<(bool, u32), SaId> = BTreeMap::new();
    for (k, c) in table.children() {
        by_spi.insert((k.dir_out, c.params.spi.0), k.id);
    }
    let records: Vec<Zeroizing<Vec<u8>>> = table
        .ike_sas()
        .map(|(_, _, b)| Zeroizing::new(b.to_vec()))
        .collect();
    let began = Instant::now();
    let mut adopted = 0;
    let now = ike::Instant::ZERO;
    for bytes in &records {
        let ids = |info: &ike::ChildSaInfo| {
            Some((
                *by_spi.get(&(false, info.inbound.spi.0))?,
                *by_spi.get(&(true, info.outbound.spi.0))?,
            ))
        };
        if core.adopt_ike(now, bytes, ids).is_ok() {
            adopted += 1;
        }
        // The data-plane updates and log lines the adoption queued (applied by the driver).
        while core.poll_output().is_some() {}
    }
    let adopt = began.elapsed();
    Ok(ResyncReport {
        ike_sas: n,
        child_sas,
        make,
        record_bytes,
        resync,
        takeover_node,
        adopt,
        adopted,
    })
}
