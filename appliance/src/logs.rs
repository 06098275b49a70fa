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
//! A gateway's config file may give `log_level` (same syntax): `run`, `control` and
//! `dataplane` use it when neither `--log-level` nor `RUST_LOG` was given, and a reload
//! (SIGHUP, `roamgate reload`) applies a new one without a restart ([`apply_file_level`]).
//!
//! A supervisor passes its settings to its children through the environment
//! ([`child_env`]: `RUST_LOG` when a filter was given, and `ROAMGATE_LOG_FORMAT`), so
//! `run --log-level debug` reaches `control` and `dataplane` too.
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

/// What this process uses, for its children: the filter, the format, and whether the filter
/// was given (`--log-level` or `RUST_LOG`) rather than the default.
static CHOSEN: OnceLock<(String, LogFormat, bool)> = OnceLock::new();

/// Replaces the filter of the installed subscriber (a reload of the file's `log_level`).
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<()> + Send + Sync>;
static SET_FILTER: OnceLock<SetFilter> = OnceLock::new();

/// The filter and format this process logs with: flags first, then the environment, then
/// the defaults; and whether the filter was given.
fn resolve(args: &LogArgs, default_level: &str) -> Result<(String, LogFormat, bool)> {
    let given = args.log_level.clone().or_else(|| {
        std::env::var("RUST_LOG")
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    let explicit = given.is_some();
    let filter = given.unwrap_or_else(|| default_level.to_owned());
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
    Ok((filter, format, explicit))
}

/// Installs the subscriber for the whole process. `default_level` applies when neither
/// `--log-level` nor `RUST_LOG` says.
pub fn init(args: &LogArgs, default_level: &str) -> Result<()> {
    let (filter, format, explicit) = resolve(args, default_level)?;
    let env_filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow!("--log-level / RUST_LOG {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(StderrLines)
        .with_target(true);
    let set = match format {
        LogFormat::Human => {
            let b = builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter_reloading();
            let h = b.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                h.reload(f)
                    .map_err(|e| anyhow!("replacing the log filter: {e}"))
            }));
            b.try_init()
        }
        LogFormat::Json => {
            let b = builder
                .json()
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let h = b.reload_handle();
            let _ = SET_FILTER.set(Box::new(move |f| {
                h.reload(f)
                    .map_err(|e| anyhow!("replacing the log filter: {e}"))
            }));
            b.try_init()
        }
    };
    set.map_err(|e| anyhow!("installing the log subscriber: {e}"))?;
    let _ = CHOSEN.set((filter, format, explicit));
    Ok(())
}

/// Checks a `log_level` from a config file (EnvFilter syntax).
pub fn check_filter(level: &str) -> std::result::Result<(), String> {
    EnvFilter::try_new(level).map(|_| ()).map_err(|e| {
        format!("{level:?}: {e} (a level such as info, or targets with levels: info,ike=debug)")
    })
}

/// Applies the config file's `log_level` (None: the file gives none), at start and at each
/// reload. `--log-level` and `RUST_LOG` win over the file: when either was given, the file's
/// level is not applied (said once per call, at debug). Returns the filter in force.
pub fn apply_file_level(level: Option<&str>) -> Result<String> {
    let Some((start, _, explicit)) = CHOSEN.get() else {
        return Ok(String::new());
    };
    if *explicit {
        if level.is_some() {
            tracing::debug!(target: "control",
                "log_level in the file is not applied: --log-level / RUST_LOG ({start}) wins");
        }
        return Ok(start.clone());
    }
    let want = level.unwrap_or(start);
    let f = EnvFilter::try_new(want).map_err(|e| anyhow!("log_level {want:?}: {e}"))?;
    if let Some(set) = SET_FILTER.get() {
        set(f)?;
    }
    Ok(want.to_owned())
}

/// The environment a child process gets so that it logs as this one does.
pub fn child_env() -> Vec<(&'static str, String)> {
    CHOSEN
        .get()
        .map(|(filter, format, explicit)| {
            // A filter that was only the default is not passed on: the child applies the
            // config file's log_level, as this process does.
            let mut env = vec![(FORMAT_ENV, format.name().to_owned())];
            if *explicit {
                env.push(("RUST_LOG", filter.clone()));
            }
            env
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
        let (filter, format, explicit) = resolve(&args, "info").unwrap();
        assert!(explicit);
        assert_eq!((filter.as_str(), format), ("ike=trace", LogFormat::Json));
        assert!(EnvFilter::try_new("ike=loud").is_err());
    }
}
