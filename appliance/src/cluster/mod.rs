//! The cluster's processes (issue 18): `roamgate crypto-node` ([`crypto_node`]) and the edge's
//! forwarder (`roamgate edge-link`, [`edge`]), which `roamgate edge` supervises next to
//! `roamgate dataplane --shm` as `run` does with `control`.
//!
//! The logic is `control::cluster`'s (sans-IO); these are its drivers: the clock, the Noise
//! channel (`crate::noise_channel`, protocol `CLUSTER`), the shared-memory link to the data
//! plane, logs and the view socket.

pub mod crypto_node;
pub mod edge;
pub mod masq;

/// How long a loop with nothing to do sleeps.
const IDLE: std::time::Duration = std::time::Duration::from_micros(300);

/// A core's log line as a tracing event (target `cluster`, `ike` or `control`).
fn log_line(line: &str, error: bool) {
    let (target, msg) = match line.split_once(": ") {
        Some((t @ ("ike" | "cluster" | "dataplane"), rest)) => (t, rest),
        _ => ("control", line),
    };
    match (target, error) {
        ("ike", true) => tracing::warn!(target: "ike", "{msg}"),
        ("ike", false) => tracing::info!(target: "ike", "{msg}"),
        ("cluster", true) => tracing::warn!(target: "cluster", "{msg}"),
        ("cluster", false) => tracing::info!(target: "cluster", "{msg}"),
        (_, true) => tracing::warn!(target: "control", "{msg}"),
        (_, false) => tracing::info!(target: "control", "{msg}"),
    }
}
