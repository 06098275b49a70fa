//! `roamgate reload` and the data plane's part of a reload.
//!
//! A reload re-reads the gateway's config file and applies what differs without taking
//! unchanged tunnels down. The control process does the work (`control_proc::reload`, over
//! the diff of `control::config::reload`): it is asked over its view socket (`<socket>.ike`
//! under `roamgate run`) or by SIGHUP, which `roamgate run` passes on to its children. The
//! data plane takes only the file's `log_level` (its SAs and policy come from the control
//! plane). `roamgate reload` asks the control plane first; a refused file stops there, with
//! the reason, and a non-zero exit.

use std::path::Path;

use anyhow::{bail, Result};

use crate::config::DataplaneFile;

/// The data plane's answer to "reload" (and what it does on SIGHUP): the file checked whole
/// again, its log level applied. `under_control`: the SAs come from a control process (a
/// data plane alone, or `run --single-process`, cannot reload: they need a restart).
pub fn dataplane_reload(config: &Path, under_control: bool) -> Result<Vec<String>> {
    if !under_control {
        bail!(
            "this gateway has no control process of its own (`roamgate dataplane` alone or \
             `run --single-process`): a reload needs a restart"
        );
    }
    let file: DataplaneFile = control::config::load(config)?;
    file.validate(config)?;
    let level = crate::logs::apply_file_level(file.log_level.as_deref())?;
    Ok(vec![format!("data plane: log level {level}")])
}

/// The JSON answer of a view socket to "reload".
pub fn answer(r: Result<Vec<String>>) -> String {
    match r {
        Ok(lines) => serde_json::json!({ "reloaded": true, "changes": lines }).to_string(),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
    }
}

/// `roamgate reload [--socket S | --gateway NAME]`: asks the running gateway to re-read its
/// config file; prints what changed, or fails with why the file was refused.
pub fn run(args: crate::views::ViewArgs) -> Result<()> {
    let socket = args.socket()?;
    let mut control = socket.clone().into_os_string();
    control.push(".ike");
    let control = std::path::PathBuf::from(control);
    // Under `run`, the control process serves <socket>.ike; a gateway in one process answers
    // on its socket (and says a reload needs a restart).
    let first = if control.exists() { &control } else { &socket };
    let v = crate::views::ask(first, "reload")?;
    let mut lines = changes(&v);
    if first == &control {
        let d = crate::views::ask(&socket, "reload")?;
        lines.extend(changes(&d));
    }
    if args.json() {
        println!(
            "{}",
            serde_json::json!({ "reloaded": true, "changes": lines })
        );
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}

fn changes(v: &serde_json::Value) -> Vec<String> {
    v.get("changes")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
