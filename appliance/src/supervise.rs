//! `roamgate run --config X`: the gateway as two supervised processes, `roamgate control` and
//! `roamgate dataplane`, joined by a shared-memory control channel. A child that dies is
//! started again (after a short, growing pause); the other goes on: a restarted data plane
//! gets its state back from the control plane, a restarted control plane finds the data
//! plane still forwarding. SIGINT/SIGTERM stop the control plane first (it deletes its IKE
//! SAs through the data plane), then the data plane. `--single-process` runs both in one
//! process instead (threads and in-process rings).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub dataplane: crate::dataplane::DataplaneArgs,
    /// Run control and data plane in one process (threads, in-process rings).
    #[arg(long)]
    pub single_process: bool,
}

struct Supervised {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    restarts: u32,
    next_start: Instant,
}

impl Supervised {
    fn start(&mut self) -> Result<()> {
        let exe = std::env::current_exe().context("finding the roamgate binary")?;
        // Own process group: a Ctrl-C at the terminal reaches only the supervisor, which
        // stops the children in order.
        let child = Command::new(exe)
            .args(&self.args)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting roamgate {}", self.name))?;
        eprintln!("run: started {} (pid {})", self.name, child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Restarts the child if it died; returns true if it is running.
    fn watch(&mut self) -> Result<bool> {
        if let Some(c) = self.child.as_mut() {
            match c.try_wait()? {
                None => return Ok(true),
                Some(status) => {
                    self.restarts += 1;
                    let pause = Duration::from_millis(200u64 << self.restarts.min(6));
                    eprintln!(
                        "run: {} exited ({status}); starting it again in {:?} (restart {})",
                        self.name, pause, self.restarts
                    );
                    self.child = None;
                    self.next_start = Instant::now() + pause;
                }
            }
        }
        if self.child.is_none() && Instant::now() >= self.next_start {
            self.start()?;
        }
        Ok(self.child.is_some())
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

/// `roamgate client`: `run` for a file whose connections are all initiated (a road warrior),
/// whose control plane follows the kernel's addresses on the WAN device (MOBIKE).
pub fn client(args: RunArgs) -> Result<()> {
    let dp = &args.dataplane;
    let file: control::config::DataplaneFile = control::config::load(dp.config())?;
    file.validate(dp.config())?;
    file.ike.validate_client(dp.config(), "ike")?;
    supervise(args, true)
}

pub fn run(args: RunArgs) -> Result<()> {
    supervise(args, false)
}

fn supervise(args: RunArgs, client: bool) -> Result<()> {
    if args.single_process {
        if args.dataplane.shm().is_some() {
            anyhow::bail!("--single-process has no shared-memory channel: drop --shm");
        }
        return crate::dataplane::run(args.dataplane, true);
    }
    let dp = &args.dataplane;
    let file: control::config::DataplaneFile = control::config::load(dp.config())?;
    file.validate(dp.config())?;
    // --shm names the channel (default: /dev/shm/roamgate-<gateway>.ctl).
    let shm = dp
        .shm()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/roamgate-{}.ctl", file.gateway.name)));
    let config = dp.config().display().to_string();
    let mut control_args = vec![
        "control".to_string(),
        "--config".into(),
        config.clone(),
        "--shm".into(),
        shm.display().to_string(),
    ];
    if let Some(s) = dp.socket() {
        control_args.extend(["--socket".into(), format!("{}.ike", s.display())]);
    }
    if client {
        control_args.push("--follow-wan".into());
    }
    // The control process keeps the static SAs' sequence numbers (see control_proc).
    control_args.extend(["--seq-state".into(), dp.seq_state().display().to_string()]);
    let mut dataplane_args = vec![
        "dataplane".to_string(),
        "--shm".into(),
        shm.display().to_string(),
    ];
    dataplane_args.extend(dp.forwarded_args());
    let mut control = Supervised {
        name: "control",
        args: control_args,
        child: None,
        restarts: 0,
        next_start: Instant::now(),
    };
    let mut dataplane = Supervised {
        name: "dataplane",
        args: dataplane_args,
        child: None,
        restarts: 0,
        next_start: Instant::now(),
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let s = shutdown.clone();
        ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    control.start()?;
    // The channel exists before the data plane looks for it (it would find it later anyway).
    let t = Instant::now();
    while !shm.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    dataplane.start()?;
    let deadline = dp.duration().map(Duration::from_secs_f64);
    let start = Instant::now();
    while !shutdown.load(Ordering::Relaxed) && deadline.is_none_or(|d| start.elapsed() < d) {
        control.watch()?;
        dataplane.watch()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    // The control plane says goodbye to its peers through the data plane, so it goes first.
    control.stop(Duration::from_secs(5));
    dataplane.stop(Duration::from_secs(10));
    eprintln!("run: stopped");
    Ok(())
}
