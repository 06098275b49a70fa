//! `roamgate gcks --config X`: a group's key server (G-IKEv2, RFC 9838; docs/group.md), the
//! thin driver of `control::group::gcks::GcksNode`: one UDP socket on the IKE port, the
//! clock, SIGHUP / `roamgate reload` (a member dropped from `group.members` is removed: the
//! rekey that excludes it goes out at once; one added may register from then on; a new
//! `sender_id_bits` starts the group over), and a view socket for `roamgate status|stats`.
//!
//! Its own command, not a section of `run`: a key server needs no data plane (no ports, no
//! workers, no devices), so it runs on any host with an address the members reach, and a
//! gateway's restart does not take the group's keys down with it.
//!
//! The file:
//!
//! ```yaml
//! gcks:
//!   name: gcks                 # names the view socket (<dir>/gcks.sock)
//!   address: 192.0.2.100       # listens on UDP 500 here (port: to change it)
//! ike:                         # how members authenticate (one connection, remote_id any)
//!   connections: [ ... ]
//! group:                       # role gcks: the group's policy (control::config::group)
//!   ...
//! ```

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use control::config::group::{GcksPlan, GroupPlan, GroupYaml};
use control::config::ike::{Connection, IkeYaml};
use control::config::ConfigError;
use control::driver::{inproc::os_seed, Clock};
use control::group::gcks::GcksNode;
use serde::Deserialize;

#[derive(clap::Args)]
pub struct GcksArgs {
    /// The key server's file (sections `gcks`, `ike`, `group`).
    #[arg(long)]
    config: PathBuf,
    /// Serve `roamgate status|stats|reload` on this unix socket (default: <dir>/<name>.sock
    /// in /run/roamgate or $XDG_RUNTIME_DIR/roamgate).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Lab only: write every group SA's key to this file in Wireshark's esp_sa format (one
    /// line per SPI, any source and destination) so a capture of the group's ESP can be
    /// decrypted. It exports keys: never on a production key server.
    #[arg(long)]
    wireshark_keys: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GcksSection {
    name: String,
    address: IpAddr,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcksFile {
    gcks: GcksSection,
    #[serde(default)]
    ike: IkeYaml,
    group: GroupYaml,
    #[serde(default)]
    log_level: Option<String>,
}

struct Checked {
    conns: Vec<Connection>,
    plan: GcksPlan,
    listen: SocketAddr,
}

impl GcksFile {
    fn validate(&self, file: &Path) -> Result<Checked, ConfigError> {
        let name = self.gcks.name.trim();
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(ConfigError::new(
                file,
                "gcks.name",
                "must be a plain name (it names the view socket)",
            ));
        }
        if self.gcks.address.is_unspecified() || self.gcks.address.is_multicast() {
            return Err(ConfigError::new(
                file,
                "gcks.address",
                format!(
                    "{} is not a unicast address of this host",
                    self.gcks.address
                ),
            ));
        }
        let conns = self.ike.validate(file, "ike")?;
        if conns.is_empty() {
            return Err(ConfigError::new(
                file,
                "ike.connections",
                "the members authenticate over a connection: give at least one",
            ));
        }
        if let Some(l) = &self.log_level {
            crate::logs::check_filter(l).map_err(|w| ConfigError::new(file, "log_level", w))?;
        }
        let plan = match self.group.validate(file)? {
            GroupPlan::Gcks(p) => p,
            GroupPlan::Member(_) => {
                return Err(ConfigError::new(
                    file,
                    "group.role",
                    "is member: `roamgate gcks` runs a key server (role gcks); a member is a `roamgate run` gateway",
                ))
            }
        };
        if let Some(m) = plan.delivery.multicast() {
            if m.is_ipv4() != self.gcks.address.is_ipv4() {
                return Err(ConfigError::new(
                    file,
                    "group.rekey_multicast",
                    format!(
                        "{m} is not of the family of gcks.address {}: rekeys leave from there",
                        self.gcks.address
                    ),
                ));
            }
        }
        Ok(Checked {
            conns,
            plan,
            listen: SocketAddr::new(self.gcks.address, self.gcks.port.unwrap_or(500)),
        })
    }
}

/// `roamgate check` of a key server's file: what it holds.
pub fn check_lines(path: &Path) -> Result<Vec<String>> {
    let file: GcksFile = control::config::load(path)?;
    let c = file.validate(path)?;
    Ok(vec![format!(
        "key server {} on {}: group {}, {} member(s) allowed, {} connection(s)",
        file.gcks.name,
        c.listen,
        c.plan.group.display(),
        c.plan.members.len(),
        c.conns.len()
    )])
}

/// The IKE socket sends multicast rekeys from its own address's interface (not the route
/// table's choice), `ttl` hops far, and not back to this host.
fn multicast_sender(sock: &UdpSocket, local: IpAddr, ttl: u8) -> std::io::Result<()> {
    let s = socket2::SockRef::from(sock);
    match local {
        IpAddr::V4(l) => {
            s.set_multicast_if_v4(&l)?;
            s.set_multicast_ttl_v4(u32::from(ttl))?;
            s.set_multicast_loop_v4(false)
        }
        IpAddr::V6(_) => {
            // The interface follows the route to the group (an index would be needed here).
            s.set_multicast_hops_v6(u32::from(ttl))?;
            s.set_multicast_loop_v6(false)
        }
    }
}

type ReloadReply = std::sync::mpsc::Sender<Result<Vec<String>, String>>;

pub fn run(args: GcksArgs) -> Result<()> {
    let file: GcksFile = control::config::load(&args.config)?;
    let checked = file.validate(&args.config)?;
    crate::logs::apply_file_level(file.log_level.as_deref())?;
    let sock = UdpSocket::bind(checked.listen)
        .with_context(|| format!("binding the IKE socket {}", checked.listen))?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    if let Some(m) = checked.plan.delivery.multicast() {
        multicast_sender(&sock, checked.listen.ip(), checked.plan.multicast_ttl)
            .with_context(|| format!("setting up multicast rekeys to {m}"))?;
        tracing::info!(target: "gcks",
            "rekeys go to multicast group {m} (TTL {}){}",
            checked.plan.multicast_ttl,
            if checked.plan.delivery.unicast() { " and to each member" } else { "" }
        );
    }
    let clock = Clock::start();
    let now = || clock.now();
    let mut node = GcksNode::new(&checked.conns, checked.plan, os_seed(), now())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    tracing::info!(target: "gcks",
        "roamgate gcks {}: group {} on {}",
        file.gcks.name,
        node.group().display(),
        checked.listen
    );
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    crate::hup::install()?;
    let socket_path = match &args.socket {
        Some(p) => p.clone(),
        None => {
            let Some(dir) = crate::views::default_dir() else {
                bail!("no default view directory (not root and no XDG_RUNTIME_DIR): give --socket");
            };
            std::fs::create_dir_all(&dir)?;
            dir.join(format!("{}.sock", file.gcks.name))
        }
    };
    let status = Arc::new(Mutex::new(serde_json::Value::Null));
    let (reload_tx, reload_rx) = std::sync::mpsc::channel::<ReloadReply>();
    let reload_tx = Mutex::new(reload_tx);
    let stop_views = Arc::new(AtomicBool::new(false));
    let views = {
        let status = status.clone();
        let handler: crate::views::Handler = Box::new(move |req| match req {
            "status" | "stats" => status.lock().ok().map(|s| s.to_string()),
            "reload" => {
                let (reply, answer) = std::sync::mpsc::channel();
                let sent = reload_tx.lock().ok().map(|t| t.send(reply).is_ok());
                Some(match (sent, answer.recv_timeout(Duration::from_secs(4))) {
                    (Some(true), Ok(r)) => crate::reload::answer(r.map_err(anyhow::Error::msg)),
                    _ => {
                        serde_json::json!({ "error": "the key server did not answer" }).to_string()
                    }
                })
            }
            _ => None,
        });
        crate::views::serve(&socket_path, handler, stop_views.clone())?
    };
    if args.wireshark_keys.is_some() {
        tracing::warn!(target: "gcks", "--wireshark-keys: the group's keys are written to a file (lab only)");
    }
    let mut exported: std::collections::BTreeMap<u32, zeroize::Zeroizing<String>> =
        Default::default();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 65_536];
    let mut last_status = std::time::Instant::now() - Duration::from_secs(1);
    while !shutdown.load(Ordering::Relaxed) {
        if crate::hup::take() {
            tracing::info!(target: "gcks", "SIGHUP: reloading {}", args.config.display());
            let _ = reload(&args.config, &mut node, now());
        }
        while let Ok(reply) = reload_rx.try_recv() {
            let _ = reply.send(reload(&args.config, &mut node, now()));
        }
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(d) = buf.get(..n) {
                    node.handle_datagram(now(), checked.listen, from, d);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => tracing::warn!(target: "gcks", "receive: {e}"),
        }
        if node.poll_timeout().is_some_and(|t| t <= now()) {
            node.handle_timeout(now());
        }
        while let Some(t) = node.poll_transmit() {
            if let Err(e) = sock.send_to(&t.data, t.dst) {
                tracing::warn!(target: "gcks", "send to {}: {e}", t.dst);
            }
        }
        while let Some(l) = node.poll_log() {
            tracing::info!(target: "gcks", "{l}");
        }
        if let Some(path) = &args.wireshark_keys {
            export_keys(path, &node, &mut exported);
        }
        if last_status.elapsed() >= Duration::from_millis(200) {
            last_status = std::time::Instant::now();
            let mut v = node.status(now());
            if let Some(o) = v.as_object_mut() {
                o.insert("gateway".into(), file.gcks.name.clone().into());
                o.insert("pid".into(), std::process::id().into());
                o.insert("version".into(), env!("CARGO_PKG_VERSION").into());
                o.insert("uptime_secs".into(), started.elapsed().as_secs().into());
                o.insert("listen".into(), checked.listen.to_string().into());
            }
            if let Ok(mut s) = status.lock() {
                *s = v;
            }
        }
    }
    stop_views.store(true, Ordering::Relaxed);
    let _ = views.join();
    tracing::info!(target: "gcks", "stopped: {:?}", node.counts());
    Ok(())
}

/// Appends the group SAs not yet in `path` (Wireshark's esp_sa UAT: AES-GCM-16, key | salt,
/// any addresses); rewrites the file when one is new.
fn export_keys(
    path: &Path,
    node: &GcksNode,
    done: &mut std::collections::BTreeMap<u32, zeroize::Zeroizing<String>>,
) {
    let keys = node.export_data_keys();
    if keys.iter().all(|(spi, _)| done.contains_key(spi)) {
        return;
    }
    for (spi, km) in keys {
        done.entry(spi).or_insert_with(|| {
            let hex: zeroize::Zeroizing<String> =
                zeroize::Zeroizing::new(km.iter().map(|b| format!("{b:02x}")).collect());
            zeroize::Zeroizing::new(format!(
                "\"IPv4\",\"*\",\"*\",\"{spi:#010x}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{}\",\"NULL\",\"\"",
                hex.as_str()
            ))
        });
    }
    let text = zeroize::Zeroizing::new(
        done.values()
            .map(|l| format!("{}\n", l.as_str()))
            .collect::<String>(),
    );
    // Keys: readable by the owner only.
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())
    };
    if let Err(e) = write() {
        tracing::warn!(target: "gcks", "--wireshark-keys {}: {e}", path.display());
    }
}

/// Reads the file again: the group's member list may lose entries (each removed now); the
/// rest must not change (a restart).
fn reload(path: &Path, node: &mut GcksNode, now: ike::Instant) -> Result<Vec<String>, String> {
    let r = (|| {
        let file: GcksFile = control::config::load(path).map_err(|e| e.to_string())?;
        let c = file.validate(path).map_err(|e| e.to_string())?;
        let lines = node
            .reload(now, c.plan)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        crate::logs::apply_file_level(file.log_level.as_deref()).map_err(|e| format!("{e:#}"))?;
        Ok(lines)
    })();
    // (The node logs each change itself.)
    if let Err(e) = &r {
        tracing::error!(target: "gcks", "reload refused, the running configuration stays: {e}");
    }
    r
}

/// `roamgate status|stats` of a key server (its view answers with `"role": "gcks"`).
pub fn view_lines(v: &serde_json::Value) -> Vec<String> {
    let mut out = vec![format!(
        "{} (roamgate {}, pid {}): key server of group {} on {}, up {} s",
        v["gateway"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["group"].as_str().unwrap_or("?"),
        v["listen"].as_str().unwrap_or("?"),
        v["uptime_secs"]
    )];
    out.push(format!(
        "  group SA {}, next rekey in {} ms, {} IKE SA(s)",
        v["spi"].as_str().unwrap_or("none"),
        v["next_rekey_ms"],
        v["ike_sas"]
    ));
    out.push("  members (Sender-ID):".into());
    for m in v["members"].as_array().into_iter().flatten() {
        out.push(format!(
            "    {:<32} {}",
            m["member"].as_str().unwrap_or("?"),
            m["sender_id"]
        ));
    }
    if let Some(c) = v["counts"].as_object() {
        out.push("  counts:".into());
        for (k, n) in c {
            out.push(format!("    {k:<22} {n}"));
        }
    }
    out
}
