//! Logs: the process's `tracing` subscriber. Diagnostics are `tracing` events with a level and
//! a target naming the part that speaks: `ike` (IKE SAs and CHILD_SAs up, rekeyed, moved,
//! down), `control` (the control process, its channel, the WAN follower), `dataplane` (ports,
//! workers, the shared-memory link, the data plane's reports), `run` (the supervisor of
//! `run`/`client`), `seq_state` (the static SAs' sequence state file), `metrics`, `lab`.
//! They go to stderr, one line each with a UTC timestamp, human-readable by default or as
//! JSON objects with `--log-format json`. What a one-shot command answers (`sa`, `stats`,
//! `status`, the lab's live lines and summary, perf reports, the data plane's final
//! counters) stays on stdout, as plain output.
//!
//! Which events are written: `--log-level FILTER`, else the `RUST_LOG` environment variable,
//! else `info` (`warn` for `roamgate perf`, whose progress bar and report are the output).
//! FILTER is `tracing-subscriber`'s `EnvFilter` syntax: a level (`trace`, `debug`, `info`,
//! `warn`, `error`), or targets with levels (`info,ike=trace,dataplane=debug`).
//!
//! A supervisor passes its settings to its children through the environment
//! ([`child_env`]: `RUST_LOG` and `ROAMGATE_LOG_FORMAT`), so `run --log-level debug` reaches
//! `control` and `dataplane` too.
//!
//! Owns: the subscriber, its filter and format, and the stderr writer that keeps `roamgate
//! perf`'s progress bar whole (a log line written while the bar is drawn starts on a line of
//! its own). Must never: write to stdout (the one-shot commands' output is there), or be
//! given key bytes to write: events carry SPIs, addresses and names, never keys.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-03T19:00:00.000000Z  INFO ike: IKE_SA ... established ...`
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields.message`.
    Json,
}

impl LogFormat {
    fn name(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

/// The log flags, accepted before or after any subcommand.
#[derive(clap::Args, Debug, Default)]
pub struct LogArgs {
    /// Which log events to write (to stderr): a level (trace, debug, info, warn, error) or
    /// targets with levels, e.g. `info,ike=trace` (EnvFilter syntax). Overrides RUST_LOG.
    /// Default: info (warn for `perf`).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// human (default) or json (one object per line). Overrides ROAMGATE_LOG_FORMAT.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The environment variable a supervisor sets for its children's format.
const FORMAT_ENV: &str = "ROAMGATE_LOG_FORMAT";

/// What this process uses, for its children.
static CHOSEN: OnceLock<(String, LogFormat)> = OnceLock::new();

/// The filter and format this process logs with: flags first, then the environment, then
/// the defaults.
fn resolve(args: &LogArgs, default_level: &str) -> Result<(String, LogFormat)> {
    let filter = args
        .log_level
        .clone()
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| default_level.to_owned());
    let format = match args.log_format {
        Some(f) => f,
        None => match std::env::var(FORMAT_ENV).ok().as_deref() {
            None | Some("") | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(anyhow!(
                    "{FORMAT_ENV}={other:?}: the log format is human or json"
                ))
            }
        },
    };
    Ok((filter, format))
}

/// Installs the subscriber for the whole process. `default_level` applies when neither
/// `--log-level` nor `RUST_LOG` says.
pub fn init(args: &LogArgs, default_level: &str) -> Result<()> {
    let (filter, format) = resolve(args, default_level)?;
    let env_filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow!("--log-level / RUST_LOG {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(StderrLines)
        .with_target(true);
    let set = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    set.map_err(|e| anyhow!("installing the log subscriber: {e}"))?;
    let _ = CHOSEN.set((filter, format));
    Ok(())
}

/// The environment a child process gets so that it logs as this one does.
pub fn child_env() -> Vec<(&'static str, String)> {
    CHOSEN
        .get()
        .map(|(filter, format)| {
            vec![
                ("RUST_LOG", filter.clone()),
                (FORMAT_ENV, format.name().to_owned()),
            ]
        })
        .unwrap_or_default()
}

/// stderr, one event per write; an event written while `roamgate perf` draws its progress
/// bar starts on a new line instead of in the middle of the bar.
struct StderrLines;

struct StderrLine {
    fresh: bool,
}

impl Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if self.fresh {
            self.fresh = false;
            if roamgate_perf::report::PROGRESS_OPEN.swap(false, Ordering::Relaxed) {
                err.write_all(b"\n")?;
            }
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine { fresh: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_environment_and_bad_filters_are_refused() {
        let args = LogArgs {
            log_level: Some("ike=trace".into()),
            log_format: Some(LogFormat::Json),
        };
        let (filter, format) = resolve(&args, "info").unwrap();
        assert_eq!((filter.as_str(), format), ("ike=trace", LogFormat::Json));
        assert!(EnvFilter::try_new("ike=loud").is_err());
    }
}
