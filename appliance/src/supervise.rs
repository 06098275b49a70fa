//! `roamgate run --config X`: the gateway as two supervised processes, `roamgate control` and
//! `roamgate dataplane`, joined by a shared-memory control channel. A child that dies is
//! started again (after a short, growing pause); the other goes on: a restarted data plane
//! gets its state back from the control plane, a restarted control plane finds the data
//! plane still forwarding. SIGINT/SIGTERM stop the control plane first (it deletes its IKE
//! SAs through the data plane), then the data plane. `--single-process` runs both in one
//! process instead (threads and in-process rings).
//!
//! The children die with the supervisor, however it dies ([`die_with_parent`]). A child that
//! fails at its first start, or five times in a row at start-up, stops the run with an error
//! instead of being restarted for ever: what makes a start fail (a device held by a leftover
//! process, a file it cannot use) does not go away by itself. A run whose gateway is still
//! served by an earlier run's control plane is refused ([`crate::run_dir`]).
//!
//! SIGHUP is a reload: passed on to both children (the control process re-reads the file and
//! applies what changed, `crate::reload`), and the file's log level taken here too.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::run_dir::RunDir;

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub dataplane: crate::dataplane::DataplaneArgs,
    /// Run control and data plane in one process (threads, in-process rings).
    #[arg(long)]
    pub single_process: bool,
}

/// A child that exits sooner than this after its start failed to start.
const STARTUP: Duration = Duration::from_secs(3);
/// Start-up failures in a row after which a child that had been running is given up on.
const MAX_QUICK_FAILURES: u32 = 5;

struct Supervised {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
    started_at: Instant,
    /// The child once ran past its start-up.
    ever_up: bool,
    /// Consecutive exits within STARTUP of a start.
    quick_failures: u32,
}

impl Supervised {
    fn new(name: &'static str, args: Vec<String>) -> Supervised {
        Supervised {
            name,
            args,
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            started_at: Instant::now(),
            ever_up: false,
            quick_failures: 0,
        }
    }

    fn start(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("finding the roamgate binary")?;
        // Own process group: a Ctrl-C at the terminal reaches only the supervisor, which
        // stops the children in order.
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .envs(crate::logs::child_env())
            .process_group(0);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting roamgate {}", self.name))?;
        tracing::info!(target: "run", "started {} (pid {})", self.name, child.id());
        self.child = Some(child);
        self.started_at = Instant::now();
        Ok(())
    }

    /// Restarts the child if it died; returns true if it is running. A child that fails at
    /// its first start, or keeps failing at start-up, is an error: restarting it would only
    /// loop (a leftover holding its devices, a file it cannot use).
    fn watch(&mut self) -> Result<bool> {
        if let Some(c) = self.child.as_mut() {
            match c.try_wait()? {
                None => {
                    if self.started_at.elapsed() >= STARTUP {
                        self.ever_up = true;
                        self.quick_failures = 0;
                    }
                    return Ok(true);
                }
                Some(status) => {
                    self.child = None;
                    if self.started_at.elapsed() < STARTUP {
                        self.quick_failures += 1;
                        if !self.ever_up {
                            anyhow::bail!(
                                "roamgate {} failed at start-up ({status}): stopping (its \
                                 messages above say why)",
                                self.name
                            );
                        }
                        if self.quick_failures >= MAX_QUICK_FAILURES {
                            anyhow::bail!(
                                "roamgate {} failed at start-up {} times in a row ({status}): \
                                 stopping",
                                self.name,
                                self.quick_failures
                            );
                        }
                    } else {
                        self.ever_up = true;
                        self.quick_failures = 0;
                    }
                    self.restarts += 1;
                    let pause = Duration::from_millis(200u64 << self.restarts.min(6));
                    tracing::warn!(target: "run",
                        "{} exited ({status}); starting it again in {:?} (restart {})",
                        self.name, pause, self.restarts
                    );
                    self.next_start = Instant::now() + pause;
                }
            }
        }
        if self.child.is_none() && Instant::now() >= self.next_start {
            self.start()?;
        }
        Ok(self.child.is_some())
    }

    /// Passes a SIGHUP (a reload) on to the child.
    fn hup(&self) {
        if let Some(c) = &self.child {
            // One still starting may not have its SIGHUP handler yet (SIGHUP would stop it).
            if self.started_at.elapsed() < STARTUP && !self.ever_up {
                tracing::warn!(target: "run",
                    "{} is still starting: the reload is not passed on to it", self.name);
                return;
            }
            let _ = Command::new("kill")
                .args(["-HUP", &c.id().to_string()])
                .status();
        }
    }

    fn stop(&mut self, wait: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t = Instant::now();
            while t.elapsed() < wait {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Supervised {
    /// An error or a panic in the supervisor still stops the child (the normal path has
    /// stopped it already, in order).
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// What the children leave when they cannot clean up themselves (killed after their grace
/// period, or dead by a signal): view sockets nobody answers on and a channel whose creator is
/// gone. Cleared when the run ends, on every path out of it (dropped after the children are
/// stopped).
struct Leftovers {
    sockets: Vec<PathBuf>,
    /// A channel at a path given with --shm (the default one goes with the run directory).
    channel: Option<PathBuf>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for s in &self.sockets {
            crate::views::remove_stale(s);
        }
        if let Some(p) = &self.channel {
            let stale =
                pipeline::shm::ControlChannel::open(p).is_ok_and(|ch| !ch.region().creator_alive());
            if stale {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// The child is killed when the supervisor dies, however it dies (kill -9 included): it
/// asks the kernel for SIGKILL on its parent's death between fork and exec. SIGKILL, not
/// SIGTERM: without its supervisor nobody would stop a child that hangs in its shutdown;
/// what it leaves (its run directory) the next `run` removes. The signal follows the thread
/// that forked the child, so children are started from the supervisor's main thread only.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2) and
    // getppid(2), both async-signal-safe, allocating nothing and taking no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nothing will ever signal us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other(
                    "the supervisor died during the start",
                ));
            }
            Ok(())
        });
    }
}

/// `roamgate client`: `run` for a file whose connections are all initiated (a road warrior),
/// whose control plane follows the kernel's addresses on the WAN device (MOBIKE).
pub fn client(args: RunArgs) -> Result<()> {
    let dp = &args.dataplane;
    let file: crate::config::DataplaneFile = control::config::load(dp.config())?;
    file.validate(dp.config())?;
    file.ike.validate_client(dp.config(), "ike")?;
    crate::logs::apply_file_level(file.log_level.as_deref())?;
    dp.check_outputs()?;
    supervise(args, Kind::Client, file)
}

/// `roamgate edge`: `run` for a cluster edge: the data plane and the edge's forwarder
/// (`roamgate edge-link`) in place of the control plane.
pub fn edge(args: RunArgs) -> Result<()> {
    edge_role(args, false)
}

/// `roamgate encryption-node`: an edge's two processes with a file whose cluster role is
/// `encryption-node` (issue 18 item 7): the crypto node places on it the SAs its filters name
/// it for; the edges pass those clients' ESP to it.
pub fn encryption_node(args: RunArgs) -> Result<()> {
    edge_role(args, true)
}

fn edge_role(args: RunArgs, encryption_node: bool) -> Result<()> {
    let dp = &args.dataplane;
    let file: crate::config::DataplaneFile = control::config::load(dp.config())?;
    let checked = file.validate(dp.config())?;
    let (cmd, role) = if encryption_node {
        ("encryption-node", "encryption-node")
    } else {
        ("edge", "edge")
    };
    if checked
        .edge
        .as_ref()
        .is_none_or(|e| e.encryption_node != encryption_node)
    {
        anyhow::bail!(
            "{}: cluster.role: `roamgate {cmd}` needs a cluster section with role {role}",
            dp.config().display()
        );
    }
    if args.single_process {
        anyhow::bail!("--single-process: an edge runs as two processes (edge-link, dataplane)");
    }
    dp.check_outputs()?;
    supervise(args, Kind::Edge, file)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Run,
    Client,
    Edge,
}

pub fn run(args: RunArgs) -> Result<()> {
    // The whole file (gateway, dataplane, every IKE connection) is checked before anything
    // starts: a child that cannot start would otherwise be restarted for ever.
    let dp = &args.dataplane;
    let file: crate::config::DataplaneFile = control::config::load(dp.config())?;
    file.validate(dp.config())?;
    crate::logs::apply_file_level(file.log_level.as_deref())?;
    dp.check_outputs()?;
    supervise(args, Kind::Run, file)
}

fn supervise(args: RunArgs, kind: Kind, file: crate::config::DataplaneFile) -> Result<()> {
    let client = kind == Kind::Client;
    if args.single_process {
        if args.dataplane.shm().is_some() {
            anyhow::bail!("--single-process has no shared-memory channel: drop --shm");
        }
        let mut dp = args.dataplane;
        if client {
            dp.follow_wan();
        }
        return crate::dataplane::run(dp, true);
    }
    let mut args = args;
    args.dataplane.use_default_socket(&file.gateway.name);
    let dp = &args.dataplane;
    // --shm names the channel; by default it lives in this run's private directory under
    // /dev/shm, which no other user can block or redirect (run_dir.rs).
    let name = &file.gateway.name;
    let (shm, _run_dir) = match dp.shm() {
        Some(p) => (PathBuf::from(p), None),
        None => {
            let root = Path::new(crate::run_dir::SHM_ROOT);
            let dir = RunDir::create(root, name)?;
            for old in dir.clear_leftovers(root, name)? {
                tracing::info!(target: "run", "removed what an earlier run left: {}", old.display());
            }
            (dir.channel(), Some(dir))
        }
    };
    let config = dp.config().display().to_string();
    let mut control_args = vec![
        if kind == Kind::Edge {
            "edge-link"
        } else {
            "control"
        }
        .to_string(),
        "--config".into(),
        config.clone(),
        "--shm".into(),
        shm.display().to_string(),
    ];
    if kind != Kind::Edge {
        if let Some(s) = dp.socket() {
            control_args.extend(["--socket".into(), format!("{}.ike", s.display())]);
        }
        if client {
            control_args.push("--follow-wan".into());
        }
        // The control process keeps the static SAs' sequence numbers (see control_proc).
        control_args.extend(["--seq-state".into(), dp.seq_state().display().to_string()]);
        // ... and its IKE SAs, for as long as the run lasts (ike_state.rs): in the run's
        // private directory, or next to the channel it was given.
        let ike_state = match &_run_dir {
            Some(d) => d.ike_state(),
            None => PathBuf::from(format!("{}.ike-state", shm.display())),
        };
        control_args.extend(["--ike-state".into(), ike_state.display().to_string()]);
    }
    if dp.allow_core_dumps() {
        control_args.push(crate::core_dumps::ALLOW_FLAG.into());
    }
    let mut dataplane_args = vec![
        "dataplane".to_string(),
        "--shm".into(),
        shm.display().to_string(),
    ];
    dataplane_args.extend(dp.forwarded_args());
    let mut sockets = Vec::new();
    if let Some(sock) = dp.socket() {
        sockets.push(sock.to_owned());
        sockets.push(PathBuf::from(format!("{}.ike", sock.display())));
    }
    let _leftovers = Leftovers {
        sockets,
        channel: dp.shm().map(Path::to_owned),
    };
    let mut control = Supervised::new(
        if kind == Kind::Edge {
            "edge-link"
        } else {
            "control"
        },
        control_args,
    );
    let mut dataplane = Supervised::new("dataplane", dataplane_args);
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    crate::hup::install()?;
    let deadline = dp.duration().map(Duration::from_secs_f64);
    let config = dp.config().to_owned();
    let result = run_children(
        &mut control,
        &mut dataplane,
        &shm,
        &shutdown,
        deadline,
        &config,
    );
    // The control plane says goodbye to its peers through the data plane, so it goes first.
    control.stop(Duration::from_secs(5));
    dataplane.stop(Duration::from_secs(10));
    tracing::info!(target: "run", "stopped");
    result
}

/// Starts both children and watches them until a signal, the deadline or a child that cannot
/// start.
fn run_children(
    control: &mut Supervised,
    dataplane: &mut Supervised,
    shm: &Path,
    shutdown: &AtomicBool,
    deadline: Option<Duration>,
    config: &Path,
) -> Result<()> {
    control.start()?;
    // The channel exists before the data plane looks for it (it would find it later anyway).
    let t = Instant::now();
    while !shm.exists() && t.elapsed() < Duration::from_secs(5) && control.watch()? {
        std::thread::sleep(Duration::from_millis(20));
    }
    dataplane.start()?;
    let start = Instant::now();
    while !shutdown.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
        control.watch()?;
        dataplane.watch()?;
        if crate::hup::take() {
            // A reload: the control process applies the file (and logs what changed or why
            // it refused it), the data plane and this process take its log level.
            tracing::info!(target: "run", "SIGHUP: passing the reload on to control and dataplane");
            control.hup();
            dataplane.hup();
            let level = control::config::load::<crate::config::DataplaneFile>(config)
                .map_err(anyhow::Error::from)
                .and_then(|f| {
                    f.validate(config)?;
                    crate::logs::apply_file_level(f.log_level.as_deref())
                });
            if let Err(e) = level {
                tracing::warn!(target: "run", "SIGHUP: {e:#}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
