//! `--metrics ADDR`: the data plane's counters in the Prometheus/OpenMetrics text format over
//! HTTP (`GET /metrics`), encoded by the maintained `prometheus-client` crate.
//!
//! This module owns the scrape: a collector that reads the workers' counters at scrape time
//! and the small HTTP listener that serves it. It must never slow a worker: every per-packet
//! counter is an atomic read with a relaxed load; the only lock taken is the per-worker list of
//! SA counter handles, which a worker takes only when it installs or deletes an SA. It must
//! never hold a connection long: one request per connection, bounded in size and time.
//!
//! Names follow the Prometheus conventions: the `roamgate_` prefix, a unit suffix where there
//! is one (`_bytes`), `_total` on counters (added by the encoder), labels for what varies
//! (`worker`, `event`, `reason`, `direction`, `spi`, `side`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pipeline::stats::{DropReason, L3Stat, Snapshot, Traffic};
use pipeline::worker::{SaCounterEntry, WorkerHandle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use proto::Direction;

/// One gateway's data plane as a scrape reads it: its workers' handles and the port kind's
/// own counters.
pub struct GatewaySource {
    pub name: String,
    pub handles: Vec<WorkerHandle>,
    /// The port counters as `roamgate stats` shows them (`{"kind", "lan": {..}, "wan": {..}}`);
    /// None for the lab's in-memory ports.
    pub ports: Option<crate::dataplane::PortStats>,
    /// Punted IKE the shared-memory link dropped (a data plane under a control process).
    pub punt: Option<Arc<crate::shm_link::PuntDrops>>,
    /// Its IKE endpoint's counters, where it has one.
    pub ike: Option<IkeSource>,
}

/// Where a gateway's IKE counters are read at scrape time: its control plane's view (the
/// JSON `roamgate sa`/`stats` show, rebuilt by the control loop at most every 50 ms after a
/// change), never the endpoint itself, so a scrape takes no lock the control loop waits on
/// beyond the one it publishes the view under.
pub enum IkeSource {
    /// The control plane runs in this process (`control`, `--single-process`, `lab --ike`).
    InProcess(Arc<Mutex<control::driver::IkeView>>),
    /// The control process's view socket (`run`/`client`: the data plane's socket + `.ike`).
    Socket(PathBuf),
}

impl IkeSource {
    fn read(&self) -> Option<serde_json::Value> {
        match self {
            IkeSource::InProcess(v) => {
                let json = v.lock().ok()?.json.clone();
                serde_json::from_str(&json).ok()
            }
            IkeSource::Socket(p) => crate::views::ask(p, "ike").ok(),
        }
    }
}

/// What a scrape reads: every gateway of the process (one, or the lab's two), each series
/// labelled with its gateway.
pub struct Sources {
    pub gateways: Vec<GatewaySource>,
    pub started: Instant,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.gateways.iter().map(|g| g.name.as_str()).collect();
        f.debug_struct("Sources").field("gateways", &names).finish()
    }
}

/// A traffic counter's family and its `event` label: `rx_bytes` is `bytes{event="rx"}`,
/// `encrypted` is `packets{event="encrypted"}`.
fn traffic_series(name: &str) -> (&'static str, &str) {
    if let Some(e) = name.strip_suffix("_bytes") {
        ("bytes", e)
    } else if let Some(e) = name.strip_suffix("_packets") {
        ("packets", e)
    } else {
        ("packets", name)
    }
}

impl Collector for Sources {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        // Each family once, every gateway's series in it.
        let snaps: Vec<(&str, String, Snapshot)> = self
            .gateways
            .iter()
            .flat_map(|g| {
                g.handles
                    .iter()
                    .map(|h| (g.name.as_str(), h.id.to_string(), h.counters.snapshot()))
            })
            .collect();
        // Per SA: each list is cloned under its worker's lock (held by the worker only for
        // installs and deletes), then read without it.
        let lists: Vec<(&str, String, Vec<SaCounterEntry>)> = self
            .gateways
            .iter()
            .flat_map(|g| {
                g.handles.iter().map(|h| {
                    let list = h.sa_counters.lock().map(|l| l.clone()).unwrap_or_default();
                    (g.name.as_str(), h.id.to_string(), list)
                })
            })
            .collect();

        let mut up = enc.encode_descriptor(
            "roamgate_uptime_seconds",
            "Seconds since this process started serving metrics",
            None,
            MetricType::Gauge,
        )?;
        for g in &self.gateways {
            ConstGauge::new(self.started.elapsed().as_secs_f64())
                .encode(up.encode_family(&[("gateway", g.name.as_str())])?)?;
        }

        for (family, help) in [
            (
                "packets",
                "Packets by what the data plane did with them (rx, tx, encrypted, decrypted, ...)",
            ),
            ("bytes", "Bytes received, encrypted and decrypted"),
        ] {
            let name = format!("roamgate_traffic_{family}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (gw, worker, s) in &snaps {
                for t in Traffic::ALL {
                    let (f, event) = traffic_series(t.name());
                    if f == family {
                        ConstCounter::new(s.traffic(*t)).encode(m.encode_family(&[
                            ("gateway", *gw),
                            ("worker", worker),
                            ("event", event),
                        ])?)?;
                    }
                }
            }
        }

        let mut m = enc.encode_descriptor(
            "roamgate_drops",
            "Packets dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (gw, worker, s) in &snaps {
            for r in DropReason::ALL.iter().filter(|r| !r.is_hand_off()) {
                ConstCounter::new(s.drops(*r)).encode(m.encode_family(&[
                    ("gateway", *gw),
                    ("worker", worker),
                    ("reason", r.name()),
                ])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "roamgate_handed_off",
            "Packets the data plane handed on as intended (IKE to the control plane), by kind",
            None,
            MetricType::Counter,
        )?;
        for (gw, worker, s) in &snaps {
            for r in DropReason::ALL.iter().filter(|r| r.is_hand_off()) {
                ConstCounter::new(s.drops(*r)).encode(m.encode_family(&[
                    ("gateway", *gw),
                    ("worker", worker),
                    ("reason", r.name()),
                ])?)?;
            }
        }

        // Reassembly and neighbour resolution: levels (memory, datagrams in flight, held
        // fragments, cache entries) as gauges, the rest as counters.
        let is_level = |n: &str| {
            n.ends_with("_memory_bytes")
                || n.ends_with("_in_flight")
                || n.ends_with("_held_fragments")
                || n.ends_with("_entries")
        };
        for (family, help, gauge) in [
            (
                "roamgate_l3_level",
                "Reassembly and neighbour-cache levels",
                true,
            ),
            (
                "roamgate_l3_events",
                "Reassembly and neighbour-resolution events (datagram and address fates)",
                false,
            ),
        ] {
            let kind = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let mut m = enc.encode_descriptor(family, help, None, kind)?;
            for (gw, worker, s) in &snaps {
                for st in L3Stat::ALL.iter().filter(|st| is_level(st.name()) == gauge) {
                    let labels = [("gateway", *gw), ("worker", worker), ("stat", st.name())];
                    let v = s.l3(*st);
                    if gauge {
                        ConstGauge::new(v as i64).encode(m.encode_family(&labels)?)?;
                    } else {
                        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }

        let mut m = enc.encode_descriptor(
            "roamgate_ike_punt_drops",
            "Punted IKE datagrams the link to the control process dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for g in &self.gateways {
            for (reason, n) in g.punt.iter().flat_map(|p| p.named()) {
                ConstCounter::new(n).encode(
                    m.encode_family(&[("gateway", g.name.as_str()), ("reason", reason)])?,
                )?;
            }
        }

        let mut sas = enc.encode_descriptor(
            "roamgate_sas",
            "SAs installed in the data plane",
            None,
            MetricType::Gauge,
        )?;
        for (gw, worker, list) in &lists {
            for (dir, want) in [("in", Direction::Inbound), ("out", Direction::Outbound)] {
                let n = list.iter().filter(|e| e.direction == want).count();
                ConstGauge::new(n as i64).encode(sas.encode_family(&[
                    ("gateway", *gw),
                    ("worker", worker),
                    ("direction", dir),
                ])?)?;
            }
        }
        for (family, help) in [
            ("packets", "Packets through one SA"),
            ("bytes", "Bytes through one SA"),
        ] {
            let name = format!("roamgate_sa_{family}");
            let mut m = enc.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for (gw, worker, list) in &lists {
                for e in list {
                    let dir = match e.direction {
                        Direction::Inbound => "in",
                        Direction::Outbound => "out",
                    };
                    let spi = format!("{:08x}", e.spi.0);
                    let v = if family == "packets" {
                        e.counters.packets.get()
                    } else {
                        e.counters.bytes.get()
                    };
                    ConstCounter::new(v).encode(m.encode_family(&[
                        ("gateway", *gw),
                        ("worker", worker.as_str()),
                        ("direction", dir),
                        ("spi", spi.as_str()),
                    ])?)?;
                }
            }
        }

        let ike: Vec<(&str, serde_json::Value)> = self
            .gateways
            .iter()
            .filter_map(|g| Some((g.name.as_str(), g.ike.as_ref()?.read()?)))
            .collect();
        if !ike.is_empty() {
            encode_ike(&ike, &mut enc)?;
        }

        // The port kinds' own counters, one family per field, both sides of every gateway in it.
        let ports: Vec<(&str, serde_json::Value)> = self
            .gateways
            .iter()
            .filter_map(|g| Some((g.name.as_str(), (g.ports.as_ref()?)())))
            .collect();
        let mut fields: Vec<String> = ports
            .iter()
            .filter_map(|(_, p)| p["lan"].as_object())
            .flat_map(|o| o.keys().cloned())
            .collect();
        fields.sort();
        fields.dedup();
        for field in &fields {
            let name = format!("roamgate_port_{field}");
            let mut m = enc.encode_descriptor(
                &name,
                "A port counter of this port kind (kernel or PMD)",
                None,
                MetricType::Counter,
            )?;
            for (gw, p) in &ports {
                let kind = p["kind"].as_str().unwrap_or("unknown");
                for side in ["lan", "wan"] {
                    if let Some(v) = p[side][field.as_str()].as_u64() {
                        ConstCounter::new(v).encode(m.encode_family(&[
                            ("gateway", *gw),
                            ("kind", kind),
                            ("side", side),
                        ])?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The IKE endpoints' families, from their views (`control::core::view::render`).
fn encode_ike(
    views: &[(&str, serde_json::Value)],
    enc: &mut DescriptorEncoder,
) -> std::result::Result<(), std::fmt::Error> {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let mut m = enc.encode_descriptor(
        "roamgate_ike_sas",
        "IKE SAs by state (init: IKE_SA_INIT done, auth: IKE_AUTH sent, established, deleting)",
        None,
        MetricType::Gauge,
    )?;
    for (gw, v) in views {
        for state in ["init", "auth", "established", "deleting"] {
            ConstGauge::new(n(&v["ike_sa_states"][state]) as i64)
                .encode(m.encode_family(&[("gateway", *gw), ("state", state)])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "roamgate_ike_half_open",
        "Half-open IKE SAs (responder, IKE_SA_INIT answered, not yet authenticated)",
        None,
        MetricType::Gauge,
    )?;
    for (gw, v) in views {
        ConstGauge::new(n(&v["half_open"]) as i64).encode(m.encode_family(&[("gateway", *gw)])?)?;
    }
    // Counters, one value per gateway, from the view's `ike_messages` or top level.
    for (name, help, key, top) in [
        (
            "roamgate_ike_handshakes_started",
            "IKE SAs created by a handshake (initiated, or an IKE_SA_INIT request admitted)",
            "handshakes_started",
            false,
        ),
        (
            "roamgate_ike_handshakes_completed",
            "Handshakes that established their IKE SA",
            "handshakes_completed",
            false,
        ),
        (
            "roamgate_ike_handshakes_failed",
            "IKE SAs gone before their handshake completed",
            "handshakes_failed",
            false,
        ),
        (
            "roamgate_ike_cookies_sent",
            "COOKIE answers sent: IKE_SA_INIT requests asked for a cookie (RFC 7296 2.6)",
            "cookies_sent",
            false,
        ),
        (
            "roamgate_ike_answers_limited",
            "Unprotected error answers the rate limit held back",
            "answers_limited",
            false,
        ),
        (
            "roamgate_ike_fragments_sent",
            "IKE fragments sent (RFC 7383), retransmissions included",
            "fragments_sent",
            false,
        ),
        (
            "roamgate_ike_fragments_received",
            "Authenticated IKE fragments kept for reassembly (RFC 7383)",
            "fragments_received",
            false,
        ),
        (
            "roamgate_ike_fragments_reassembled",
            "IKE messages reassembled from their fragments (RFC 7383)",
            "fragments_reassembled",
            false,
        ),
        (
            "roamgate_ike_mobike_updates",
            "IKE SAs moved to new addresses by MOBIKE (ours and the peers')",
            "mobike_moves",
            true,
        ),
    ] {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (gw, v) in views {
            let value = if top {
                &v[key]
            } else {
                &v["ike_messages"][key]
            };
            ConstCounter::new(n(value)).encode(m.encode_family(&[("gateway", *gw)])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "roamgate_ike_cookies_received",
        "IKE_SA_INIT requests carrying a COOKIE, by whether it checked",
        None,
        MetricType::Counter,
    )?;
    for (gw, v) in views {
        for (result, key) in [("valid", "cookies_valid"), ("invalid", "cookies_invalid")] {
            ConstCounter::new(n(&v["ike_messages"][key]))
                .encode(m.encode_family(&[("gateway", *gw), ("result", result)])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "roamgate_ike_rekeys",
        "Rekeys completed, by what was rekeyed (child, ike) and who started it (us, peer)",
        None,
        MetricType::Counter,
    )?;
    for (gw, v) in views {
        for (kind, by, key) in [
            ("child", "us", "child_rekeys_by_us"),
            ("child", "peer", "child_rekeys_by_peer"),
            ("ike", "us", "ike_rekeys_by_us"),
            ("ike", "peer", "ike_rekeys_by_peer"),
        ] {
            ConstCounter::new(n(&v[key])).encode(m.encode_family(&[
                ("gateway", *gw),
                ("kind", kind),
                ("initiator", by),
            ])?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        "roamgate_ike_drops",
        "IKE messages dropped or answered with an error, by reason (malformed, unknown SPI, \
         bad message id, integrity, unexpected ...); a reason appears with its first drop",
        None,
        MetricType::Counter,
    )?;
    for (gw, v) in views {
        for (reason, count) in v["ike_drops"].as_object().into_iter().flatten() {
            ConstCounter::new(n(count))
                .encode(m.encode_family(&[("gateway", *gw), ("reason", reason.as_str())])?)?;
        }
    }
    Ok(())
}

/// The whole exposition, as a scrape gets it.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail but through a collector's own error, and ours
    // returns none of its own.
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// Serves `GET /metrics` on `addr` until `stop` is set. The address is bound before this
/// returns, so a bad one fails the start.
pub fn serve(
    addr: SocketAddr,
    sources: Sources,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    listener.set_nonblocking(true)?;
    // Port 0 asks for any free port: say which one it got.
    let bound = listener.local_addr()?;
    tracing::info!(target: "metrics", "http://{bound}/metrics");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(sources));
    Ok(std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = answer(conn, &registry);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?)
}

/// The request line, once the head has arrived: at most 8 KiB within 2 s, else nothing.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(2);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        if buf.len() > 8192 || Instant::now() > deadline {
            return None;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    head.lines().next().map(str::to_owned)
}

fn answer(mut conn: TcpStream, registry: &Registry) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_millis(500)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let Some(line) = read_head(&mut conn) else {
        return Ok(());
    };
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "roamgate: the metrics are at /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "roamgate: GET /metrics\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition of a data plane without workers parses with an independent reader
    /// (the prometheus-parse crate), the port counters typed as counters.
    #[test]
    fn the_exposition_parses() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sources {
            gateways: vec![GatewaySource {
                name: "gw".into(),
                handles: Vec::new(),
                ports: Some(Arc::new(|| {
                    serde_json::json!({"kind": "dpdk", "lan": {"rx_missed": 3}, "wan": {"rx_missed": 4}})
                })),
                punt: None,
                ike: None,
            }],
            started: Instant::now(),
        }));
        let text = render(&registry);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let missed: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "roamgate_port_rx_missed_total")
            .map(|s| {
                let v = match s.value {
                    // A classic-format reader files OpenMetrics `_total` samples as untyped.
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                };
                (s.labels.get("side").unwrap_or("").to_string(), v)
            })
            .collect();
        assert_eq!(
            missed,
            vec![("lan".into(), 3.0), ("wan".into(), 4.0)],
            "{text}"
        );
        assert!(
            text.contains("# TYPE roamgate_port_rx_missed counter"),
            "{text}"
        );
        assert!(text.contains("roamgate_uptime_seconds"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The IKE families of a control plane's view, as an independent reader sees them: every
    /// value from its place in the view, the counters typed as counters.
    #[test]
    fn the_ike_view_becomes_ike_families() {
        let view = serde_json::json!({
            "ike_sas": [],
            "ike_sa_states": {"init": 1, "auth": 2, "established": 7, "deleting": 0},
            "half_open": 1,
            "child_rekeys_by_us": 3, "child_rekeys_by_peer": 4,
            "ike_rekeys_by_us": 5, "ike_rekeys_by_peer": 6,
            "mobike_moves": 8,
            "ike_drops": {"integrity": 9, "bad_message_id": 10},
            "ike_messages": {
                "integrity": 9, "bad_message_id": 10, "answers_limited": 11,
                "cookies_sent": 12, "cookies_valid": 13, "cookies_invalid": 14,
                "handshakes_started": 20, "handshakes_completed": 15, "handshakes_failed": 2,
                "fragments_sent": 21, "fragments_received": 22, "fragments_reassembled": 23,
            },
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sources {
            gateways: vec![GatewaySource {
                name: "gw".into(),
                handles: Vec::new(),
                ports: None,
                punt: None,
                ike: Some(IkeSource::InProcess(Arc::new(Mutex::new(
                    control::driver::IkeView {
                        json: view.to_string(),
                        published: None,
                    },
                )))),
            }],
            started: Instant::now(),
        }));
        let text = render(&registry);
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        let get = |m: &str, labels: &[(&str, &str)]| -> f64 {
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == m
                        && s.labels.get("gateway") == Some("gw")
                        && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
                .unwrap_or_else(|| panic!("{m} {labels:?}:\n{text}"))
        };
        assert_eq!(get("roamgate_ike_sas", &[("state", "established")]), 7.0);
        assert_eq!(get("roamgate_ike_sas", &[("state", "auth")]), 2.0);
        assert_eq!(get("roamgate_ike_half_open", &[]), 1.0);
        assert_eq!(get("roamgate_ike_handshakes_started_total", &[]), 20.0);
        assert_eq!(get("roamgate_ike_handshakes_completed_total", &[]), 15.0);
        assert_eq!(get("roamgate_ike_handshakes_failed_total", &[]), 2.0);
        let rekeys = |kind, by| {
            get(
                "roamgate_ike_rekeys_total",
                &[("kind", kind), ("initiator", by)],
            )
        };
        assert_eq!(
            [
                rekeys("child", "us"),
                rekeys("child", "peer"),
                rekeys("ike", "us"),
                rekeys("ike", "peer")
            ],
            [3.0, 4.0, 5.0, 6.0]
        );
        assert_eq!(get("roamgate_ike_mobike_updates_total", &[]), 8.0);
        assert_eq!(
            get("roamgate_ike_drops_total", &[("reason", "integrity")]),
            9.0
        );
        assert_eq!(
            get("roamgate_ike_drops_total", &[("reason", "bad_message_id")]),
            10.0
        );
        assert_eq!(get("roamgate_ike_answers_limited_total", &[]), 11.0);
        assert_eq!(get("roamgate_ike_cookies_sent_total", &[]), 12.0);
        assert_eq!(get("roamgate_ike_fragments_sent_total", &[]), 21.0);
        assert_eq!(get("roamgate_ike_fragments_received_total", &[]), 22.0);
        assert_eq!(get("roamgate_ike_fragments_reassembled_total", &[]), 23.0);
        assert_eq!(
            get(
                "roamgate_ike_cookies_received_total",
                &[("result", "valid")]
            ),
            13.0
        );
        assert_eq!(
            get(
                "roamgate_ike_cookies_received_total",
                &[("result", "invalid")]
            ),
            14.0
        );
        for counter in [
            "handshakes_started",
            "rekeys",
            "drops",
            "cookies_sent",
            "mobike_updates",
        ] {
            assert!(
                text.contains(&format!("# TYPE roamgate_ike_{counter} counter")),
                "{text}"
            );
        }
        assert!(text.contains("# TYPE roamgate_ike_sas gauge"), "{text}");
    }

    #[test]
    fn traffic_counters_split_into_packets_and_bytes() {
        assert_eq!(traffic_series("rx_bytes"), ("bytes", "rx"));
        assert_eq!(traffic_series("rx_packets"), ("packets", "rx"));
        assert_eq!(traffic_series("encrypted"), ("packets", "encrypted"));
        assert_eq!(traffic_series("encrypted_bytes"), ("bytes", "encrypted"));
        // Every traffic counter lands in exactly one series, and no two share one.
        let mut seen = std::collections::HashSet::new();
        for t in Traffic::ALL {
            assert!(seen.insert(traffic_series(t.name())), "{}", t.name());
        }
    }
}
