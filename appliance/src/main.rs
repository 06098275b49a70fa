//! `roamgate`: the appliance binary. Subcommands wire a configuration to processes.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod lab;

#[derive(Parser)]
#[command(
    name = "roamgate",
    version,
    about = "An IPsec gateway whose secure connections survive address changes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded lab: two gateways with static SAs and simulated LAN hosts on
    /// in-memory ports, traffic both ways through the tunnel, a live line once a second.
    /// No NIC, no root. Stops on Ctrl-C (or after --duration) with a summary.
    Lab(lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lab(args) => lab::run(args),
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
