//! `roamgate perf`: the perf lab's measurements (code in the `roamgate-perf` crate).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use roamgate_perf::handshakes;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PerfArgs {
    #[command(subcommand)]
    what: Option<PerfWhat>,
    #[command(flatten)]
    report: ReportArgs,
}

/// `roamgate perf` without a subcommand: the whole perf lab, written as a report.
#[derive(clap::Args)]
struct ReportArgs {
    /// A one-minute smoke run (fewer sizes, SA counts and packets).
    #[arg(long)]
    quick: bool,
    /// Where the dated report (markdown, with its SVG plots in a directory beside it) goes.
    #[arg(long, default_value = "perf/reports")]
    out: PathBuf,
    /// Where DPDK's ipsec-secgw baseline is built (from dpdk-doc's source).
    #[arg(long, default_value = "target/secgw")]
    secgw_dir: PathBuf,
    /// Skip the ipsec-secgw baseline.
    #[arg(long)]
    no_secgw: bool,
}

#[derive(clap::Subcommand)]
enum PerfWhat {
    /// IKEv2 handshakes per second against a gateway (worker + control loop on in-memory
    /// ports, installing every client's CHILD_SA), from simulated road-warrior clients; per
    /// core of the gateway's control thread, measured by its CPU time.
    Handshakes {
        /// Handshakes to run, per proposal.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// At most this many handshakes under way at once.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// IKE proposals to measure (strongSwan syntax), comma-separated.
        #[arg(
            long,
            default_value = "aes128gcm16-prfsha256-x25519,aes128gcm16-prfsha256-ecp256,aes128gcm16-prfsha256-modp2048"
        )]
        proposals: String,
    },
}

pub fn run(args: PerfArgs) -> Result<()> {
    let Some(what) = args.what else {
        let r = args.report;
        std::fs::create_dir_all(&r.out)?;
        let plan = roamgate_perf::report::Plan {
            quick: r.quick,
            backend: pipeline::crypto::best_backend(),
            out_dir: r.out.clone(),
            secgw_build: (!r.no_secgw).then(|| r.secgw_dir.clone()),
        };
        let path = roamgate_perf::report::run(&plan).map_err(anyhow::Error::msg)?;
        println!("report: {}", path.display());
        return Ok(());
    };
    match what {
        PerfWhat::Handshakes {
            clients,
            in_flight,
            proposals,
        } => {
            if clients == 0 || in_flight == 0 {
                bail!("--clients and --in-flight must be at least 1");
            }
            let backend = pipeline::crypto::best_backend();
            println!(
                "{clients} handshakes per proposal (IKE_SA_INIT + IKE_AUTH with PSK, virtual IP, first CHILD_SA installed at the gateway), {in_flight} at once, ESP backend {backend}"
            );
            println!(
                "{:<34} {:>8} {:>9} {:>10} {:>12} {:>14} {:>12}",
                "proposal",
                "done",
                "wall s",
                "per wall s",
                "gw ctl CPU s",
                "per ctl core",
                "per gw core"
            );
            for p in proposals
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let r = handshakes::run(clients, in_flight, p, backend, Duration::from_secs(600))
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "{:<34} {:>8} {:>9.2} {:>10.0} {:>12.2} {:>14.0} {:>12.0}",
                    p,
                    r.established,
                    r.wall.as_secs_f64(),
                    r.per_wall_second(),
                    r.gateway_control_cpu.as_secs_f64(),
                    r.per_control_core(),
                    r.per_gateway_core()
                );
                if r.failed > 0 || r.established < clients {
                    bail!(
                        "{p}: {} of {clients} handshakes completed, {} failed",
                        r.established,
                        r.failed
                    );
                }
            }
            Ok(())
        }
    }
}
