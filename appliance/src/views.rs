//! Read-only views over a local socket: `roamgate stats` and `roamgate sa` ask a running
//! process (the data plane, or the control plane's IKE view) for its counters and SAs, in the
//! spirit of `swanctl --list-sas`. One request line ("stats" or "sas"), one JSON line back.
//! The socket is never reachable with a mode wider than 0600 ([`bind_private`]); nothing
//! served here ever contains key material.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What a view server answers: request name -> JSON text.
pub type Handler = Box<dyn Fn(&str) -> Option<String> + Send>;

/// Serves `handler` on a unix socket at `path` until `stop` is set. An existing socket file
/// is replaced only if no process answers on it.
pub fn serve(
    path: &Path,
    handler: Handler,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another process is serving on this socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = bind_private(path)?;
    listener.set_nonblocking(true)?;
    let owned: PathBuf = path.to_owned();
    Ok(std::thread::Builder::new()
        .name("views".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => answer(conn, &handler),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            let _ = std::fs::remove_file(&owned);
        })?)
}

/// Removes `path` if it is a unix socket nobody answers on (what a killed server left).
pub fn remove_stale(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
}

/// Binds a unix socket that is never reachable with a mode wider than 0600: it is bound in a
/// fresh 0700 directory next to `path` (so the umask never matters and nobody else can reach
/// it there), set to 0600, then renamed into place (atomic, same file system). A unix socket
/// cannot be fchmod-ed before bind, and a umask around bind would change it for every thread
/// of the process.
fn bind_private(path: &Path) -> Result<UnixListener> {
    let parent = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.to_owned()
        }
        None => PathBuf::from("."),
    };
    let rng = ring::rand::SystemRandom::new();
    let mut r = [0u8; 6];
    ring::rand::SecureRandom::fill(&rng, &mut r)
        .map_err(|_| anyhow::anyhow!("no randomness for a private directory name"))?;
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let private = parent.join(format!(".roamgate-bind.{hex}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = private.join("s");
    let result = (|| {
        let listener =
            UnixListener::bind(&bound).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", bound.display()))?;
        std::fs::rename(&bound, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&bound);
    let _ = std::fs::remove_dir(&private);
    result
}

fn answer(conn: UnixStream, handler: &Handler) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let req = line.trim();
    let reply = handler(req).unwrap_or_else(|| {
        serde_json::json!({ "error": format!("unknown request {req:?}; ask for stats or sas") })
            .to_string()
    });
    let mut w = &conn;
    let _ = w.write_all(reply.as_bytes());
    let _ = w.write_all(b"\n");
}

/// Sends one request and returns the JSON answer.
pub fn ask(path: &Path, request: &str) -> Result<serde_json::Value> {
    let mut conn = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {} (is roamgate running?)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("{}: the answer is not JSON", path.display()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("{}: {e}", path.display());
    }
    Ok(v)
}

/// Where gateways started without `--socket` serve their views: `/run/roamgate` for root,
/// `$XDG_RUNTIME_DIR/roamgate` for other users (None when neither applies).
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return Some(PathBuf::from("/run/roamgate"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("roamgate"))
}

/// The default view socket of gateway `name` (a checked `gateway.name`).
pub fn default_socket(name: &str) -> Option<PathBuf> {
    default_dir().map(|d| d.join(format!("{name}.sock")))
}

/// Makes the default directory (0700: the sockets in it carry counters, never keys, but
/// nobody else needs to list them) and says whether `path` can be served: a default socket
/// that another live gateway of the same name serves, or a directory that cannot be made,
/// leaves this gateway without views (said once), never stops it.
pub fn claim_default(path: &Path) -> bool {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            eprintln!(
                "views: cannot make {} ({e}); no view socket (give --socket)",
                dir.display()
            );
            return false;
        }
    }
    if path.exists() && UnixStream::connect(path).is_ok() {
        eprintln!(
            "views: {} is served by another process; no view socket for this one (give \
             --socket)",
            path.display()
        );
        return false;
    }
    true
}

#[derive(clap::Args)]
pub struct ViewArgs {
    /// The process's view socket (`--socket` of `dataplane`/`run`). Default: the one gateway
    /// serving in /run/roamgate (root) or $XDG_RUNTIME_DIR/roamgate, or --gateway's.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The gateway (its `gateway.name`) whose default socket to ask, when several serve.
    #[arg(long, conflicts_with = "socket")]
    gateway: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

impl ViewArgs {
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// The socket to ask: `--socket`, `--gateway`'s default one, or the only gateway's.
    pub(crate) fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let Some(dir) = default_dir() else {
            bail!("no default view directory (not root and no XDG_RUNTIME_DIR): give --socket");
        };
        if let Some(name) = &self.gateway {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                bail!("--gateway {name:?}: a gateway.name, not a path");
            }
            return Ok(dir.join(format!("{name}.sock")));
        }
        // Only sockets somebody answers on: what a killed gateway left is not a choice.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter(|e| UnixStream::connect(e.path()).is_ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".sock").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        match names.as_slice() {
            [one] => Ok(dir.join(format!("{one}.sock"))),
            [] => bail!(
                "no gateway serves views in {} (is one running? else give --socket)",
                dir.display()
            ),
            many => bail!(
                "several gateways serve views in {}: {}; pick one with --gateway",
                dir.display(),
                many.join(", ")
            ),
        }
    }
}

/// The IKE view: from the same process (`run --single-process`), or from the control
/// plane's socket next to it (`run` puts it at <socket>.ike); none without IKE.
fn ike_view(socket: &Path) -> Option<serde_json::Value> {
    ask(socket, "ike").ok().or_else(|| {
        let mut p = socket.to_owned().into_os_string();
        p.push(".ike");
        ask(Path::new(&p), "ike").ok()
    })
}

/// The IKE endpoint's drops and error answers by reason (malformed, unknown SPI, bad message
/// id, integrity, unexpected ...), as lines.
fn ike_drop_lines(ike: &serde_json::Value) -> Vec<String> {
    let mut lines = Vec::new();
    match ike["ike_drops"].as_object() {
        Some(d) if !d.is_empty() => {
            lines.push("  IKE drops:".to_string());
            for (k, n) in d {
                lines.push(format!("    {k:<22} {n}"));
            }
        }
        _ => lines.push("  IKE drops: none".to_string()),
    }
    if let Some(n) = ike["ike_answers_limited"].as_u64().filter(|n| *n > 0) {
        lines.push(format!("    {:<22} {n}", "answers_rate_limited"));
    }
    if let Some(d) = ike["ike_auth_failures"]
        .as_object()
        .filter(|d| !d.is_empty())
    {
        lines.push("  IKE authentication failures:".to_string());
        for (k, n) in d {
            lines.push(format!("    {k:<22} {n}"));
        }
    }
    // Reconnects of the connections we initiate and the liveness hints: what is not zero.
    for (key, title) in [
        ("reconnects", "reconnects"),
        ("liveness_hints", "liveness hints (RFC 7296 1.5, 2.21.4)"),
    ] {
        let set: Vec<_> = ike[key]
            .as_object()
            .map(|d| d.iter().filter(|(_, n)| n.as_u64() != Some(0)).collect())
            .unwrap_or_default();
        if !set.is_empty() {
            lines.push(format!("  {title}:"));
            for (k, n) in set {
                lines.push(format!("    {k:<22} {n}"));
            }
        }
    }
    lines
}

/// `roamgate status`: what the process is, its workers, its control plane and IKE SAs.
pub fn status(args: ViewArgs) -> Result<()> {
    let socket = args.socket()?;
    let v = ask(&socket, "status")?;
    if v["role"] == "gcks" {
        if args.json {
            println!("{v}");
        } else {
            crate::gcks_cmd::view_lines(&v)
                .iter()
                .for_each(|l| println!("{l}"));
        }
        return Ok(());
    }
    let ike = ike_view(&socket);
    if args.json {
        println!("{}", serde_json::json!({ "dataplane": v, "ike": ike }));
        return Ok(());
    }
    for l in status_lines(&v, ike.as_ref()) {
        println!("{l}");
    }
    Ok(())
}

/// `roamgate status` as text: the process, its AEAD backend, ports, workers (core, queue,
/// SAs, packets), control plane and IKE SAs.
fn status_lines(v: &serde_json::Value, ike: Option<&serde_json::Value>) -> Vec<String> {
    let mut out = vec![
        format!(
            "{} (roamgate {}, pid {}), up {} s",
            v["gateway"].as_str().unwrap_or("?"),
            v["version"].as_str().unwrap_or("?"),
            v["pid"],
            v["uptime_secs"]
        ),
        format!("  {}", v["backend"].as_str().unwrap_or("AEAD backend: ?")),
        format!("  ports: {}", v["ports"].as_str().unwrap_or("?")),
    ];
    let p = &v["port_info"];
    for side in ["lan", "wan"] {
        if let Some(dev) = p[side]["device"].as_str() {
            let mode = p[side]["mode"]
                .as_str()
                .map_or(String::new(), |m| format!(", {m} mode"));
            let zc = match p[side]["zero_copy"].as_bool() {
                Some(true) => ", zero-copy",
                Some(false) => ", copy",
                None => "",
            };
            out.push(format!(
                "    {side}: {} device {dev}{mode}{zc}",
                p["driver"].as_str().unwrap_or("?")
            ));
        }
    }
    out.push(format!(
        "  control plane: {}",
        v["control_plane"].as_str().unwrap_or("?")
    ));
    for w in v["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let core = w["core"]
            .as_u64()
            .map_or("not pinned".to_string(), |c| format!("core {c}"));
        let queue = w["queue"]
            .as_u64()
            .map_or(String::new(), |q| format!(", queue {q}"));
        out.push(format!(
            "  worker {}: generation {}, {core}{queue}, {} inbound / {} outbound SAs, rx {} tx {}",
            w["worker"],
            w["generation"],
            w["sas_in"],
            w["sas_out"],
            w["rx_packets"],
            w["tx_packets"]
        ));
    }
    if let Some(ike) = ike {
        let sas = ike["ike_sas"].as_array().map(Vec::len).unwrap_or(0);
        out.push(format!(
            "  IKE: {sas} IKE SA(s); CHILD_SAs installed {}, rekeyed {}, removed {}",
            ike["children_installed"], ike["children_rekeyed"], ike["children_removed"]
        ));
    }
    out
}

/// One worker's line of `roamgate stats`: its traffic and the hand-offs between workers, its
/// drops in all.
fn worker_line(w: &serde_json::Value) -> String {
    let t = &w["traffic"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let drops: u64 = w["drops"]
        .as_object()
        .map_or(0, |d| d.values().filter_map(|n| n.as_u64()).sum());
    format!(
        "worker {}: rx {} tx {} encrypted {} decrypted {} handed_off {} handoff_received {} \
         handoff_waits {} drops {drops}",
        w["worker"],
        n("rx_packets"),
        n("tx_packets"),
        n("encrypted"),
        n("decrypted"),
        n("handed_off"),
        n("handoff_received"),
        n("handoff_waits"),
    )
}

/// `roamgate stats`: counters, drops by reason, hand-offs, the IKE endpoint's drops, port
/// counters.
pub fn stats(args: ViewArgs) -> Result<()> {
    let socket = args.socket()?;
    let mut v = ask(&socket, "stats")?;
    if v["role"] == "gcks" {
        if args.json {
            println!("{v}");
        } else {
            crate::gcks_cmd::view_lines(&v)
                .iter()
                .for_each(|l| println!("{l}"));
        }
        return Ok(());
    }
    let ike = ike_view(&socket);
    if args.json {
        if let (Some(o), Some(ike)) = (v.as_object_mut(), &ike) {
            for k in ["ike_drops", "reconnects", "liveness_hints"] {
                o.insert(k.into(), ike[k].clone());
            }
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "{}: {} worker(s)",
        v["gateway"].as_str().unwrap_or("?"),
        v["workers"]
    );
    if let Some(t) = v["traffic"].as_object() {
        println!("  traffic:");
        for (k, n) in t {
            println!("    {k:<18} {n}");
        }
    }
    match v["drops"].as_object() {
        Some(d) if !d.is_empty() => {
            println!("  drops:");
            for (k, n) in d {
                println!("    {k:<18} {n}");
            }
        }
        _ => println!("  drops: none"),
    }
    if let Some(h) = v["handed_off"].as_object().filter(|h| !h.is_empty()) {
        println!("  handed off (not drops):");
        for (k, n) in h {
            println!("    {k:<18} {n}");
        }
    }
    if let Some(ws) = v["per_worker"].as_array().filter(|w| w.len() > 1) {
        println!("  per worker:");
        for w in ws {
            println!("    {}", worker_line(w));
        }
    }
    if let Some(ike) = &ike {
        for l in ike_drop_lines(ike) {
            println!("{l}");
        }
    }
    // Reassembly and neighbour resolution: only what is not zero.
    if let Some(l) = v["l3"].as_object() {
        let set: Vec<_> = l.iter().filter(|(_, n)| n.as_u64() != Some(0)).collect();
        if !set.is_empty() {
            println!("  reassembly and neighbours:");
            for (k, n) in set {
                println!("    {k:<28} {n}");
            }
        }
    }
    if !v["ports"].is_null() {
        println!("  ports: {}", v["ports"]);
    }
    Ok(())
}

/// `roamgate sa`: the IKE SAs with their CHILD_SAs and counters, and the static SAs, as
/// `swanctl --list-sas` shows them (never keys); `--json`: the same in a stable shape
/// ([`crate::sa_report`]).
pub fn sas(args: ViewArgs) -> Result<()> {
    let socket = args.socket()?;
    let v = ask(&socket, "sas")?;
    let ike = ike_view(&socket);
    let report = crate::sa_report::report(&v, ike.as_ref());
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("{}", crate::sa_report::text(&report));
    if let Some(ike) = &ike {
        for l in ike_drop_lines(ike) {
            println!("{l}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn status_names_the_backend_the_ports_and_each_workers_core_and_queue() {
        let v = serde_json::json!({
            "gateway": "gw-a", "version": "0.1.0", "pid": 42, "uptime_secs": 7,
            "backend": "AEAD backend: ring, as configured",
            "ports": "AF_XDP lana (native, copy) / wana (native, copy)",
            "port_info": {
                "driver": "af_xdp",
                "lan": { "device": "lana", "mode": "native", "zero_copy": false },
                "wan": { "device": "wana", "mode": "skb", "zero_copy": false },
            },
            "control_plane": "none (static SAs)",
            "workers": [{ "worker": 0, "core": 1, "queue": 0, "generation": 3, "sas_in": 2,
                          "sas_out": 2, "rx_packets": 10, "tx_packets": 9 }],
        });
        let l = status_lines(&v, None);
        assert_eq!(l[0], "gw-a (roamgate 0.1.0, pid 42), up 7 s");
        assert_eq!(l[1], "  AEAD backend: ring, as configured");
        assert_eq!(l[3], "    lan: af_xdp device lana, native mode, copy");
        assert_eq!(l[4], "    wan: af_xdp device wana, skb mode, copy");
        assert_eq!(
            l[6],
            "  worker 0: generation 3, core 1, queue 0, 2 inbound / 2 outbound SAs, rx 10 tx 9"
        );
    }

    #[test]
    fn ike_drops_are_listed_by_reason() {
        let ike = serde_json::json!({
            "ike_drops": { "truncated": 3, "integrity": 1 },
            "ike_answers_limited": 2,
            "ike_auth_failures": { "auth_unknown_ca": 4 },
        });
        let lines = ike_drop_lines(&ike);
        assert_eq!(lines[0], "  IKE drops:");
        assert!(lines
            .iter()
            .any(|l| l.contains("truncated") && l.ends_with(" 3")));
        assert!(lines
            .iter()
            .any(|l| l.contains("integrity") && l.ends_with(" 1")));
        assert!(lines
            .iter()
            .any(|l| l.contains("answers_rate_limited") && l.ends_with(" 2")));
        assert!(lines
            .iter()
            .any(|l| l.contains("auth_unknown_ca") && l.ends_with(" 4")));
        let none = ike_drop_lines(&serde_json::json!({ "ike_drops": {} }));
        assert_eq!(none, ["  IKE drops: none"]);
    }

    #[test]
    fn the_socket_is_bound_privately_and_appears_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("roamgate-views-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("view.sock");
        let listener = bind_private(&path).unwrap();
        // It was bound inside a private directory, not at the public path: there, whatever
        // the umask, nobody else could reach it before its mode was set.
        let bound = listener.local_addr().unwrap();
        let bound = bound.as_pathname().unwrap().to_owned();
        assert_ne!(
            bound, path,
            "bound in place: its mode followed the umask for a moment"
        );
        assert_eq!(bound.parent().unwrap().parent(), Some(dir.as_path()));
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // Nothing left but the socket, and it answers at its public path.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("view.sock")]);
        UnixStream::connect(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
