//! `roamgate`: the appliance binary. Subcommands wire a configuration to processes.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use control::config::{GatewayConfig, GatewayPlan};
use pipeline::agent::{self, WorkerLink};
use pipeline::crypto::Backend;
use pipeline::msg::Update;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod addr_watch;
mod cluster;
mod config;
mod control_link;
mod control_proc;
mod core_dumps;
mod dataplane;
mod gcks_cmd;
// The HA pair (parts used by tests only).
#[cfg_attr(not(test), allow(dead_code))]
mod ha;
mod hup;
mod ike_state;
mod lab;
mod logs;
mod metrics;
// Shared by the HA sync channel and the cluster's edge channel (parts used by tests only).
#[cfg_attr(not(test), allow(dead_code))]
mod noise_channel;
mod offload;
mod perf_cmd;
mod reload;
mod run_dir;
mod sa_report;
mod seq_state;
mod shm_link;
mod soak;
mod supervise;
mod views;
mod wan_follow;

#[derive(Parser)]
#[command(
    name = "roamgate",
    version,
    about = "An IPsec gateway whose secure connections survive address changes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    logs: logs::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded lab: two gateways with static SAs and simulated LAN hosts on
    /// in-memory ports, traffic both ways through the tunnel, a live line once a second.
    /// No NIC, no root. Stops on Ctrl-C (or after --duration) with a summary.
    Lab(lab::LabArgs),
    /// Run the data plane on real ports (AF_XDP or DPDK) with the gateway's static SAs and
    /// policies from --config, until SIGINT/SIGTERM; prints the final counters as JSON.
    Dataplane(dataplane::DataplaneArgs),
    /// Run a gateway with IKEv2: `control` and `dataplane` as two supervised processes on a
    /// shared-memory channel (or, with --single-process, both in one process).
    Run(supervise::RunArgs),
    /// Run a road-warrior client: like `run`, but every IKE connection is initiated to a
    /// gateway, and the LAN behind the client reaches the gateway's networks as the virtual
    /// IP the gateway assigns (LAN flows masqueraded to it inside the tunnel).
    Client(supervise::RunArgs),
    /// Run a cluster's crypto node: IKE for every edge (answering as the address each request
    /// came to), the SA repository, SA carriers to the edges; no data-plane ports.
    CryptoNode(cluster::crypto_node::CryptoNodeArgs),
    /// Run a cluster edge: the data plane (as `run`'s) and a stateless IKE forwarder to the
    /// crypto node, as two supervised processes.
    Edge(supervise::RunArgs),
    /// Run a cluster encryption node behind the edges: an edge's data plane and forwarder
    /// (file role `encryption-node`) holding the SAs the crypto node's edge filters place on
    /// it; the edges pass those clients' ESP to it over the LAN.
    EncryptionNode(supervise::RunArgs),
    /// An edge's forwarder alone (`roamgate edge` starts it) on a shared-memory channel to
    /// `roamgate dataplane --shm`.
    #[command(hide = true)]
    EdgeLink(cluster::edge::EdgeLinkArgs),
    /// Run a group's key server (G-IKEv2, RFC 9838; docs/group.md): registers the members of
    /// the file's `group` section (IKE_SA_INIT + GSA_AUTH), rekeys the group SA before its
    /// lifetime ends (GSA_REKEY to each member), removes members dropped at a reload.
    Gcks(gcks_cmd::GcksArgs),
    /// Run the control plane alone (IKEv2, the SA repository) on a shared-memory channel to
    /// `roamgate dataplane --shm` (same config file).
    Control(control_proc::ControlArgs),
    /// The perf lab: `roamgate perf [--quick]` measures the data plane (sizes, directions, SA
    /// counts, workers, latency/NDR) against the bare AEAD and DPDK's ipsec-secgw in one run
    /// and writes a dated report with plots under perf/reports/; `roamgate perf handshakes`
    /// measures IKEv2 handshakes per second against a gateway.
    Perf(perf_cmd::PerfArgs),
    /// Show what a running gateway is: ports, workers, control plane, IKE SAs.
    Status(views::ViewArgs),
    /// Show a running process's counters (read-only, over its view socket).
    Stats(views::ViewArgs),
    /// List a running process's SAs with their counters (never keys).
    Sa(views::ViewArgs),
    /// Ask a running gateway (`roamgate run`) to re-read its config file and apply what
    /// changed without taking unchanged tunnels down (as SIGHUP to `roamgate run` does):
    /// connections added, removed or changed, the static policy, the log level. A file that
    /// does not validate, or changes what needs a restart, is refused (non-zero exit).
    Reload(views::ViewArgs),
    /// An HA node: `status` (role, peer, sync state, SAs) or `switchover` (planned).
    Ha(ha::cli::HaArgs),
    /// A line for an EAP user file (`ike.eap.users_file`): `NAME:nthash`, the password read
    /// from standard input (its first line), never written anywhere.
    EapUser(EapUserArgs),
    /// Check a config file without starting anything (as `nginx -t` does): a gateway's (the
    /// file, the data-plane section, every connection with its credentials: certificates,
    /// keys, CAs, CRLs, the EAP users file; the HA or cluster section), a crypto node's, a key
    /// server's or the lab's, told apart by their sections. Prints what it holds and its
    /// warnings, or the file, the key and what is wrong (non-zero exit).
    Check(CheckArgs),
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["config", "file"])))]
struct CheckArgs {
    /// The file `run`, `client`, `dataplane` or `edge` would be given.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The file, given without `--config` (`roamgate check FILE`).
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

/// `roamgate check --config X` (or `roamgate check X`).
fn check(args: CheckArgs) -> anyhow::Result<()> {
    let Some(path) = args.config.as_ref().or(args.file.as_ref()) else {
        anyhow::bail!("no file to check: roamgate check --config FILE");
    };
    // Which kind of file, by its top-level sections: a key server's (`roamgate gcks`) has
    // `gcks`, the lab's `site_a`/`site_b`, a crypto node's `cluster` and no `dataplane`.
    let top: Vec<String> = std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_once(':').map(|(k, _)| k))
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let has = |k: &str| top.iter().any(|t| t == k);
    if has("gcks") {
        for l in gcks_cmd::check_lines(path)? {
            println!("{}: OK: {l}", path.display());
        }
        return Ok(());
    }
    if has("site_a") || has("site_b") {
        let lab: control::config::LabConfig = control::config::load(path)?;
        let (a, b) = lab.validate(path)?;
        let backend = lab.crypto_backend.resolve().map_err(anyhow::Error::msg)?;
        println!(
            "{}: OK: lab (`roamgate lab --config`), sites {} and {}, {} + {} static SA(s), AEAD backend {backend:?}",
            path.display(),
            lab.site_a.name,
            lab.site_b.name,
            a.sas.len(),
            b.sas.len(),
        );
        return Ok(());
    }
    if has("cluster") && !has("dataplane") {
        let file: config::CryptoNodeFile = control::config::load(path)?;
        let c = file.validate(path)?;
        file.ike.admission(path, "ike")?;
        // The store's section, its key file read (not etcd: `check` connects to nothing).
        #[cfg(feature = "etcd")]
        if let Some(y) = &file.store {
            y.plan(path, "store")?;
        }
        println!(
            "{}: OK: crypto node {} (`roamgate crypto-node`), {} IKE connection(s), edges' channel on {}{}",
            path.display(),
            c.cluster.node_id,
            c.conns.len(),
            c.cluster.listen,
            if file.store.is_some() { ", SA repository in etcd" } else { "" },
        );
        return Ok(());
    }
    let file: config::DataplaneFile = control::config::load(path)?;
    let c = file.validate(path)?;
    file.ike.admission(path, "ike")?;
    file.ike.fragmentation(path, "ike")?;
    let eap = file.ike.eap(path, "ike", &file.gateway.name)?;
    if let Some(g) = file.group_member(path, &c.conns)? {
        println!(
            "{}: group member of {} through connection {} (GCKS {}), {} other member(s)",
            path.display(),
            g.plan.group.display(),
            g.connection,
            g.plan.gcks,
            g.setup.peers.len()
        );
    }
    let role = match (&c.ha, &c.edge) {
        (Some(_), _) => ", a node of an HA pair",
        (None, Some(e)) if e.encryption_node => ", a cluster encryption node",
        (None, Some(_)) => ", a cluster edge",
        (None, None) => "",
    };
    println!(
        "{}: OK: gateway {}, {} IKE connection(s){}, {} static SA(s), {} policy rule(s), AEAD backend {:?}{role}",
        path.display(),
        file.gateway.name,
        c.conns.len(),
        if eap.is_some() { " (EAP on)" } else { "" },
        c.plan.sas.len(),
        c.plan.rules.len(),
        c.backend,
    );
    // (Weak IKE-negotiated suites were logged as the file was read.)
    for w in &c.plan.weak {
        println!("warning: {w}");
    }
    Ok(())
}

#[derive(clap::Args)]
struct EapUserArgs {
    /// The user name (the EAP identity the client gives).
    name: String,
}

/// `roamgate eap-user NAME < password`: prints `NAME:<MD4 of the UTF-16LE password>`.
fn eap_user(args: EapUserArgs) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    if args.name.is_empty() || args.name.contains(['\n', '\r']) {
        anyhow::bail!("the user name must be one non-empty line");
    }
    println!(
        "{}",
        ike::eap::mschapv2::UserDb::entry(&args.name, password)
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `perf` draws a progress bar and writes a report: only warnings interrupt it by default.
    let default_level = if matches!(cli.command, Command::Perf(_)) {
        "warn"
    } else {
        "info"
    };
    if let Err(e) = logs::init(&cli.logs, default_level) {
        eprintln!("roamgate: {e:#}");
        return ExitCode::FAILURE;
    }
    let result =
        match cli.command {
            Command::Lab(args) => lab::run(args),
            // The processes that hold keys leave core dumps out before they read any.
            Command::Dataplane(args) => {
                core_dumps::apply(args.allow_core_dumps()).and_then(|_| dataplane::run(args, false))
            }
            Command::Run(args) => core_dumps::apply(args.dataplane.allow_core_dumps())
                .and_then(|_| supervise::run(args)),
            Command::Client(args) => core_dumps::apply(args.dataplane.allow_core_dumps())
                .and_then(|_| supervise::client(args)),
            Command::Control(args) => {
                core_dumps::apply(args.allow_core_dumps()).and_then(|_| control_proc::run(args))
            }
            Command::CryptoNode(args) => core_dumps::apply(args.allow_core_dumps())
                .and_then(|_| cluster::crypto_node::run(args)),
            Command::Edge(args) => core_dumps::apply(args.dataplane.allow_core_dumps())
                .and_then(|_| supervise::edge(args)),
            Command::EncryptionNode(args) => core_dumps::apply(args.dataplane.allow_core_dumps())
                .and_then(|_| supervise::encryption_node(args)),
            Command::EdgeLink(args) => {
                core_dumps::apply(args.allow_core_dumps()).and_then(|_| cluster::edge::run(args))
            }
            Command::Perf(args) => perf_cmd::run(args),
            Command::Gcks(args) => gcks_cmd::run(args),
            Command::Status(args) => views::status(args),
            Command::Stats(args) => views::stats(args),
            Command::Sa(args) => views::sas(args),
            Command::Reload(args) => reload::run(args),
            Command::Ha(args) => ha::cli::run(args),
            Command::EapUser(args) => eap_user(args),
            Command::Check(args) => check(args),
        };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roamgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The path shown in messages for the embedded lab config.
pub(crate) fn embedded_path() -> PathBuf {
    PathBuf::from("configs/lab.yaml (embedded)")
}

/// A seed for the SAD hash (not a secret: it only spreads SPIs over the table).
pub(crate) fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Sends the gateway's SPD and SAs as messages and waits until the worker acknowledged them.
pub(crate) fn install(
    link: &mut WorkerLink,
    backend: Backend,
    gw: &GatewayConfig,
    plan: &GatewayPlan,
) -> Result<()> {
    let mut last = 0;
    for (dir, params) in &plan.sas {
        let cmd = agent::prepare(
            backend,
            &Update::AddSa {
                dir: *dir,
                params: params.clone(),
            },
        )?;
        last = link.send(cmd);
    }
    let cmd = agent::prepare(
        backend,
        &Update::ReplaceSpd {
            rules: plan.rules.clone(),
        },
    )?;
    last = last.max(link.send(cmd));
    if plan.masquerade.is_some() {
        let cmd = agent::prepare(
            backend,
            &Update::SetMasquerade {
                config: plan.masquerade.clone(),
            },
        )?;
        last = last.max(link.send(cmd));
    }
    link.wait_for(last, Duration::from_secs(5))?;
    println!(
        "{}: {} SAs and {} policies installed (generation {} acknowledged)",
        gw.name,
        plan.sas.len(),
        plan.rules.len(),
        last
    );
    Ok(())
}
