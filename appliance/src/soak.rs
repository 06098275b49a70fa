//! `roamgate perf soak`: the lab with IKE, road-warrior clients, CHILD_SA rekeys every
//! second or two and MOBIKE roams, for minutes, while this process's resident memory is
//! sampled. It reports RSS over time, the slope over the second half (least squares, MB per
//! minute: the warm-up does not count), the loss per direction (packets the hosts sent
//! against packets that arrived; the clients' echoes), the rekeys and roams, and a verdict:
//! memory flat (slope below a threshold) and lossless, or not (exit status 1).
//!
//! The lab runs in this process, so its RSS is the gateways', hosts' and clients' together:
//! what it can show is growth per rekey or per roam at this rate. Slower leaks (bytes per
//! rekey) are below what minutes of RSS can tell apart from allocator noise; the record
//! counts of the IKE endpoint, the SA repository and the worker are bounded by tests instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use roamgate_perf::soak::{growth_mb, rss_mb, slope_mb_per_min, Sample};

use crate::lab::{self, LabArgs, LabReport};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long traffic flows, in minutes.
    #[arg(long, conflicts_with = "secs", default_value_t = 10.0)]
    minutes: f64,
    /// How long traffic flows, in seconds (a quick run).
    #[arg(long)]
    secs: Option<f64>,
    /// Every CHILD_SA is rekeyed this often, in seconds (by both ends: they collide).
    #[arg(long, default_value_t = 1)]
    rekey_secs: u64,
    /// Road-warrior clients.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Client 0 changes its address this often, in seconds (MOBIKE).
    #[arg(long, default_value_t = 1.5)]
    roam_secs: f64,
    /// Packets per second offered by each site (0: as fast as the gateways take them).
    #[arg(long, default_value_t = 0)]
    rate_pps: u64,
    /// Seconds between RSS samples [default: 5, or a twentieth of a shorter run].
    #[arg(long)]
    sample_secs: Option<u64>,
    /// The largest slope (MB per minute, over the second half) still called flat. The
    /// default, 1 MB/min, is twice the noise of a flat run on the reference machine (RSS
    /// moves by about a megabyte between samples as the allocator's arenas grow and
    /// shrink: a few MB over a 5-minute half) and two orders of magnitude below the growth
    /// the leaks this command was built to catch showed (hundreds of MB per minute).
    #[arg(long, default_value_t = 1.0)]
    max_slope: f64,
    /// Also write the samples and the verdict as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the soak measured.
struct Soak {
    samples: Vec<Sample>,
    slope: Option<f64>,
    growth: Option<f64>,
    lab: LabReport,
}

pub fn run(args: SoakArgs) -> Result<()> {
    let secs = args.secs.unwrap_or(args.minutes * 60.0);
    if !(10.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        bail!("--minutes/--secs: between 10 s and a week");
    }
    let sample_secs = args
        .sample_secs
        .unwrap_or_else(|| ((secs / 20.0) as u64).clamp(1, 5));
    if sample_secs == 0 || args.rekey_secs == 0 {
        bail!("--sample-secs and --rekey-secs must be at least 1");
    }
    if rss_mb().is_none() {
        bail!("the soak reads /proc/self/status (Linux only)");
    }
    println!(
        "soak: {secs:.0} s of the lab with IKE: CHILD_SAs rekeyed every {} s, {} road-warrior clients, client-0 roaming every {} s; RSS every {} s, flat below {} MB/min over the second half",
        args.rekey_secs, args.clients, args.roam_secs, sample_secs, args.max_slope
    );
    let lab_args = LabArgs {
        duration: Some(secs),
        pcap_limit: 0,
        rate_pps: Some(args.rate_pps),
        ike: true,
        rekey_secs: Some(args.rekey_secs),
        clients: Some(args.clients),
        roam_secs: Some(args.roam_secs),
        ..LabArgs::default()
    };
    let mut samples = Vec::new();
    let every = Duration::from_secs(sample_secs);
    let mut next = Duration::ZERO;
    let mut sample = |t: &lab::Tick| {
        if t.elapsed < next {
            return;
        }
        next = t.elapsed + every;
        let Some(rss) = rss_mb() else { return };
        samples.push(Sample {
            secs: t.elapsed.as_secs_f64(),
            rss_mb: rss,
        });
        let slope =
            slope_mb_per_min(&samples).map_or("-".to_string(), |s| format!("{s:+.2} MB/min"));
        let clients = t.clients.as_ref().map_or(String::new(), |c| {
            format!(
                " | clients {}/{} up, {} rekeys, {} roams",
                c.up, c.n, c.rekeys, c.roams
            )
        });
        println!(
            "[{:>5}s] RSS {rss:7.1} MB (slope so far {slope}) | gateway CHILD_SA rekeys {}{clients} | {}",
            t.elapsed.as_secs(),
            t.rekeys.unwrap_or(0),
            t.flows
                .iter()
                .map(|f| format!("{} {} sent", f.name, f.sent))
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let report = lab::run_with(&lab_args, false, &mut sample)?;
    // One last sample after the lab stopped: what it still holds.
    if let Some(rss) = rss_mb() {
        println!("after the lab stopped: RSS {rss:.1} MB");
    }
    let soak = Soak {
        slope: slope_mb_per_min(&samples),
        growth: growth_mb(&samples),
        samples,
        lab: report,
    };
    let (flat, lossless) = soak.print(args.max_slope);
    if let Some(p) = &args.json {
        std::fs::write(p, soak.json(args.max_slope, flat, lossless).to_string())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if !(flat && lossless) {
        bail!("the soak failed its verdict");
    }
    Ok(())
}

impl Soak {
    fn lost(&self) -> u64 {
        self.lab.flows.iter().map(|f| f.lost()).sum::<u64>() + self.lab.clients_lost()
    }

    fn sent(&self) -> u64 {
        self.lab.flows.iter().map(|f| f.sent).sum::<u64>()
            + self.lab.clients.iter().map(|c| c.sent).sum::<u64>()
    }

    /// Prints the soak's account and verdict; returns (flat, lossless).
    fn print(&self, max_slope: f64) -> (bool, bool) {
        println!();
        println!(
            "soak: {:.0} s, {} RSS samples: first {:.1} MB, last {:.1} MB, peak {:.1} MB",
            self.lab.elapsed.as_secs_f64(),
            self.samples.len(),
            self.samples.first().map_or(0.0, |s| s.rss_mb),
            self.samples.last().map_or(0.0, |s| s.rss_mb),
            self.samples.iter().map(|s| s.rss_mb).fold(0.0, f64::max),
        );
        for f in &self.lab.flows {
            println!(
                "  {}: sent {}, delivered {}, lost {}; longest gap between arrivals {:.1} ms",
                f.name,
                f.sent,
                f.delivered,
                f.lost(),
                f.gap_ns as f64 / 1e6
            );
        }
        let (sent, echoed) = self
            .lab
            .clients
            .iter()
            .fold((0, 0), |(s, e), c| (s + c.sent, e + c.echoed));
        println!(
            "  clients (round trip through both gateways): sent {sent}, echoed back {echoed}, lost {}",
            self.lab.clients_lost()
        );
        println!(
            "  CHILD_SA rekeys: {}; clients {}; MOBIKE roams {}",
            self.lab
                .gateway_rekeys
                .iter()
                .map(|(n, r)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.lab.client_rekeys(),
            self.lab.roams()
        );
        let flat = self.slope.is_some_and(|s| s < max_slope);
        let lost = self.lost();
        println!(
            "verdict: memory {} ({} over the second half, threshold {max_slope} MB/min; grew {} there); {} ({lost} of {} packets lost)",
            if flat { "flat" } else { "NOT flat" },
            self.slope
                .map_or("no slope: too few samples".into(), |s| format!("{s:+.3} MB/min")),
            self.growth.map_or("-".into(), |g| format!("{g:+.1} MB")),
            if lost == 0 { "lossless" } else { "LOSSY" },
            self.sent(),
        );
        (flat, lost == 0)
    }

    fn json(&self, max_slope: f64, flat: bool, lossless: bool) -> serde_json::Value {
        serde_json::json!({
            "secs": self.lab.elapsed.as_secs_f64(),
            "samples": self.samples.iter().map(|s| [s.secs, s.rss_mb]).collect::<Vec<_>>(),
            "slope_mb_per_min": self.slope,
            "growth_mb": self.growth,
            "max_slope_mb_per_min": max_slope,
            "flows": self.lab.flows.iter().map(|f| serde_json::json!({
                "name": f.name, "sent": f.sent, "delivered": f.delivered, "lost": f.lost(),
                "longest_gap_ms": f.gap_ns as f64 / 1e6,
            })).collect::<Vec<_>>(),
            "clients": self.lab.clients.iter().map(|c| serde_json::json!({
                "name": c.name, "sent": c.sent, "echoed": c.echoed, "rekeys": c.rekeys,
                "roams": c.roams,
            })).collect::<Vec<_>>(),
            "gateway_rekeys": self.lab.gateway_rekeys.iter().map(|(n, r)| serde_json::json!({"gateway": n, "rekeys": r})).collect::<Vec<_>>(),
            "roams": self.lab.roams(),
            "flat": flat,
            "lossless": lossless,
        })
    }
}
