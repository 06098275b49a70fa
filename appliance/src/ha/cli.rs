//! `roamgate ha status|switchover`: asks a running HA node's control process over its view
//! socket (`<socket>.ike`, next to the data plane's). It owns the printing of the pair's
//! status and never changes anything but through the node (a switchover is a request the
//! node may refuse).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::pair::{STATUS_REQUEST, SWITCHOVER_REQUEST};
use crate::views::{ask, ViewArgs};

#[derive(clap::Args)]
pub struct HaArgs {
    #[command(subcommand)]
    what: HaCommand,
}

#[derive(clap::Subcommand)]
enum HaCommand {
    /// Role, peer, sync channel, backlog, replicated and installed SAs, counters.
    Status(ViewArgs),
    /// A planned switchover: the active hands over to a standby in sync (refused otherwise).
    Switchover(ViewArgs),
}

/// The control process's socket next to the data plane's.
fn control_socket(socket: &Path) -> PathBuf {
    let mut p = socket.to_owned().into_os_string();
    p.push(".ike");
    PathBuf::from(p)
}

pub fn run(args: HaArgs) -> Result<()> {
    let (HaCommand::Status(view) | HaCommand::Switchover(view)) = &args.what;
    let socket = view.socket()?;
    // `run` serves the control process at <socket>.ike; a lone `roamgate control --socket`
    // at the socket given.
    let ask_pair = |req: &str| ask(&control_socket(&socket), req).or_else(|_| ask(&socket, req));
    match args.what {
        HaCommand::Status(_) => {
            let v = ask_pair(STATUS_REQUEST)?;
            if view.json() {
                println!("{v}");
                return Ok(());
            }
            println!(
                "role {} (epoch {}), sync channel {}, paired {}, backlog {}",
                v["role"].as_str().unwrap_or("?"),
                v["epoch"],
                v["sync_channel"].as_str().unwrap_or("?"),
                v["paired"],
                v["backlog"]
            );
            match v["peer"].as_object() {
                Some(p) => println!(
                    "  peer: node {} {} (epoch {}, priority {}), heard {} ms ago",
                    p["node"],
                    p["role"].as_str().unwrap_or("?"),
                    p["epoch"],
                    p["priority"],
                    p["heard_ms_ago"]
                ),
                None => println!("  peer: never heard"),
            }
            println!(
                "  replicated: {} IKE SA(s), {} CHILD SA direction(s); installed: {} outbound, {} inbound",
                v["replicated"]["ike_sas"],
                v["replicated"]["child_sas"],
                v["installed"]["outbound"],
                v["installed"]["inbound"]
            );
            if let Some(c) = v["counters"].as_object() {
                let line: Vec<String> = c.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("  counters: {}", line.join(", "));
            }
        }
        HaCommand::Switchover(_) => {
            ask_pair(SWITCHOVER_REQUEST)?;
            println!("switchover requested (see `roamgate ha status` and the node's log)");
        }
    }
    Ok(())
}
