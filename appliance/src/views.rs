//! Read-only views over a local socket: `roamgate stats` and `roamgate sa` ask a running
//! process (the data plane today, the control plane next) for its counters and SAs, in the
//! spirit of `swanctl --list-sas`. One request line ("stats" or "sas"), one JSON line back.
//! The socket is created mode 0600; nothing served here ever contains key material.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
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

#[derive(clap::Args)]
pub struct ViewArgs {
    /// The process's view socket (`roamgate dataplane --socket`).
    #[arg(long, default_value = "/run/roamgate/dataplane.sock")]
    socket: PathBuf,
    /// Print the raw JSON.
    #[arg(long)]
    json: bool,
}

/// `roamgate status`: what the process is, its workers, its control plane and IKE SAs.
pub fn status(args: ViewArgs) -> Result<()> {
    let v = ask(&args.socket, "status")?;
    let ike = ask(&args.socket, "ike").ok().or_else(|| {
        let mut p = args.socket.clone().into_os_string();
        p.push(".ike");
        ask(std::path::Path::new(&p), "ike").ok()
    });
    if args.json {
        println!("{}", serde_json::json!({ "dataplane": v, "ike": ike }));
        return Ok(());
    }
    println!(
        "{} (roamgate {}, pid {}), up {} s",
        v["gateway"].as_str().unwrap_or("?"),
        v["version"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptime_secs"]
    );
    println!("  ports: {}", v["ports"].as_str().unwrap_or("?"));
    println!(
        "  control plane: {}",
        v["control_plane"].as_str().unwrap_or("?")
    );
    for w in v["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "  worker {}: generation {}, {} inbound / {} outbound SAs, rx {} tx {}",
            w["worker"],
            w["generation"],
            w["sas_in"],
            w["sas_out"],
            w["rx_packets"],
            w["tx_packets"]
        );
    }
    if let Some(ike) = ike {
        let sas = ike["ike_sas"].as_array().map(Vec::len).unwrap_or(0);
        println!(
            "  IKE: {sas} IKE SA(s); CHILD_SAs installed {}, rekeyed {}, removed {}",
            ike["children_installed"], ike["children_rekeyed"], ike["children_removed"]
        );
    }
    Ok(())
}

/// `roamgate stats`: counters, drops by reason, port counters.
pub fn stats(args: ViewArgs) -> Result<()> {
    let v = ask(&args.socket, "stats")?;
    if args.json {
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
    if !v["ports"].is_null() {
        println!("  ports: {}", v["ports"]);
    }
    Ok(())
}

/// `roamgate sa`: the IKE SAs and the data plane's SAs, one line each (never keys).
pub fn sas(args: ViewArgs) -> Result<()> {
    let v = ask(&args.socket, "sas")?;
    // The IKE view: from the same process (`run --single-process`), or from the control
    // plane's socket next to it (`run` puts it at <socket>.ike).
    let ike = ask(&args.socket, "ike").ok().or_else(|| {
        let mut p = args.socket.clone().into_os_string();
        p.push(".ike");
        ask(std::path::Path::new(&p), "ike").ok()
    });
    if args.json {
        println!("{}", serde_json::json!({ "dataplane": v, "ike": ike }));
        return Ok(());
    }
    if let Some(ike) = &ike {
        for sa in ike["ike_sas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            println!(
                "IKE_SA {} ({}) {}",
                sa["ike_sa"].as_str().unwrap_or("?"),
                sa["connection"].as_str().unwrap_or("?"),
                if sa["established"].as_bool() == Some(true) {
                    "ESTABLISHED"
                } else {
                    "CONNECTING"
                }
            );
            for c in sa["children"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                println!(
                    "  CHILD_SA in {} out {}",
                    c["spi_in"].as_str().unwrap_or("?"),
                    c["spi_out"].as_str().unwrap_or("?")
                );
            }
        }
    }
    println!("{}:", v["gateway"].as_str().unwrap_or("?"));
    for sa in v["sas"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let drops = sa["drops"]
            .as_object()
            .filter(|d| !d.is_empty())
            .map(|d| {
                let parts: Vec<String> = d.iter().map(|(k, n)| format!("{k}={n}")).collect();
                format!(", drops: {}", parts.join(" "))
            })
            .unwrap_or_default();
        println!(
            "  {:<14} {:<3} spi {:>10} worker {}: {} packets, {} bytes{drops}",
            sa["name"].as_str().unwrap_or("?"),
            sa["direction"].as_str().unwrap_or("?"),
            sa["spi"].as_str().unwrap_or("?"),
            sa["worker"],
            sa["packets"],
            sa["bytes"],
        );
    }
    Ok(())
}
