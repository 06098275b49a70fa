//! A local etcd cluster for tests and the perf figure: `n` members of Debian's `etcd` on
//! loopback ports in a directory of the caller's, started as child processes and killed by
//! pid (SIGKILL) when dropped. Not for production: the example configurations for a real
//! deployment are in `configs/cluster/`.
//!
//! Members use short raft timings (heartbeat 50 ms, election 500 ms) so that a test that kills
//! one sees a new leader in about a second; they fsync as etcd always does.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// TLS and auth for the local members (files made by the caller).
#[derive(Clone, Debug)]
pub struct LocalSecurity {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The `root` user's password; auth is enabled after start-up.
    pub root_password: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running local cluster.
pub struct LocalEtcd {
    dir: PathBuf,
    members: Vec<Member>,
    token: String,
    security: Option<LocalSecurity>,
    /// Auth has been enabled (etcdctl then logs in as root).
    auth_on: bool,
    /// The network namespace the members (and etcdctl) run in (`ip netns exec`), if not
    /// the caller's.
    netns: Option<String>,
    /// The address the members listen on (client and peer URLs): 127.0.0.1 unless the
    /// members serve other namespaces too ([`LocalEtcd::start_at`]).
    host: String,
}

/// A free loopback TCP port (bound and released: another process may take it before etcd
/// binds it, which [`LocalEtcd::start_at`] sees as a member that exits and answers with new
/// ports).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// Starts `n` members under `dir` (created; data and logs inside) and waits until every
    /// member is healthy.
    pub fn start(dir: &Path, n: usize, security: Option<LocalSecurity>) -> io::Result<LocalEtcd> {
        Self::start_in(dir, n, security, None)
    }

    /// [`LocalEtcd::start`] in network namespace `netns` (its loopback; the namespace tests'
    /// crypto node reaches etcd there).
    pub fn start_in(
        dir: &Path,
        n: usize,
        security: Option<LocalSecurity>,
        netns: Option<&str>,
    ) -> io::Result<LocalEtcd> {
        Self::start_at(dir, n, security, netns, "127.0.0.1")
    }

    /// [`LocalEtcd::start_in`] with the members listening on `host` (an address of the
    /// namespace, e.g. on a management bridge other namespaces reach) instead of loopback.
    /// The ports are picked free on the caller's loopback: in a fresh namespace they are
    /// free there too.
    pub fn start_at(
        dir: &Path,
        n: usize,
        security: Option<LocalSecurity>,
        netns: Option<&str>,
        host: &str,
    ) -> io::Result<LocalEtcd> {
        std::fs::create_dir_all(dir)?;
        // The ports are free when picked, not when etcd binds them (tests start clusters in
        // parallel): a member that exits at once lost that race, and the cluster starts
        // again on new ports, from empty data directories.
        let mut attempt = 0;
        let mut c = loop {
            attempt += 1;
            let mut members = Vec::new();
            for i in 1..=n {
                let name = format!("m{i}");
                match std::fs::remove_dir_all(dir.join(&name)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                members.push(Member {
                    name,
                    client: free_port()?,
                    peer: free_port()?,
                    child: None,
                });
            }
            let mut c = LocalEtcd {
                dir: dir.to_path_buf(),
                members,
                token: format!("roamgate-test-{}-{}", std::process::id(), free_port()?),
                security: security.clone(),
                auth_on: false,
                netns: netns.map(str::to_owned),
                host: host.to_owned(),
            };
            for i in 0..n {
                c.spawn(i, "new")?;
            }
            match c.wait_started(Duration::from_secs(30))? {
                true => break c,
                false if attempt < 3 => continue,
                false => {
                    return Err(io::Error::other(format!(
                        "local etcd: a member exited at start {attempt} times (logs in {})",
                        dir.display()
                    )))
                }
            }
        };
        if let Some(sec) = c.security.clone() {
            let pw = format!("root:{}", sec.root_password);
            c.etcdctl_checked(&["user", "add", &pw])?;
            c.etcdctl_checked(&["auth", "enable"])?;
            c.auth_on = true;
        }
        Ok(c)
    }

    fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}:{}", self.scheme(), self.host, m.client))
            .collect()
    }

    /// `prog`, in the members' namespace (`ip netns exec` execs it: the pid is the
    /// program's).
    fn command(&self, prog: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        }
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members.get(i)?.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, i: usize, state: &str) -> io::Result<()> {
        let scheme = self.scheme();
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={scheme}://{}:{}", m.name, self.host, m.peer))
            .collect();
        let Some(m) = self.members.get(i) else {
            return Err(io::Error::other("no such member"));
        };
        let host = &self.host;
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name)))?;
        let mut cmd = self.command("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("{scheme}://{host}:{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("{scheme}://{host}:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("{scheme}://{host}:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("{scheme}://{host}:{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(sec) = &self.security {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&sec.ca)
                .arg("--cert-file")
                .arg(&sec.server_cert)
                .arg("--key-file")
                .arg(&sec.server_key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(&sec.ca)
                .arg("--peer-cert-file")
                .arg(&sec.server_cert)
                .arg("--peer-key-file")
                .arg(&sec.server_key);
        }
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start etcd (Debian's etcd-server): {e}"),
            )
        })?;
        if let Some(m) = self.members.get_mut(i) {
            m.child = Some(child);
        }
        Ok(())
    }

    /// Runs `etcdctl` against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<Output> {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://{}:{}", self.scheme(), self.host, m.client))
            .collect();
        self.etcdctl_at(&eps.join(","), args)
    }

    fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> io::Result<Output> {
        let mut cmd = self.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--dial-timeout")
            .arg("2s")
            .arg("--command-timeout")
            .arg("30s");
        if let Some(sec) = &self.security {
            cmd.arg("--cacert")
                .arg(&sec.ca)
                .arg("--cert")
                .arg(&sec.client_cert)
                .arg("--key")
                .arg(&sec.client_key);
            if self.auth_on {
                cmd.arg("--user").arg(format!("root:{}", sec.root_password));
            }
        }
        cmd.args(args).stdin(Stdio::null()).output()
    }

    fn etcdctl_checked(&self, args: &[&str]) -> io::Result<Output> {
        let out = self.etcdctl(args)?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "etcdctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out)
    }

    /// Waits until every member answers `endpoint health` (true), or one of them has exited
    /// (false: every member is stopped, for a start on other ports).
    fn wait_started(&mut self, within: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            let exited = self
                .members
                .iter_mut()
                .filter_map(|m| m.child.as_mut())
                .any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                for i in 0..self.members.len() {
                    self.kill9(i)?;
                }
                return Ok(false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_healthy(left.min(Duration::from_millis(500))) {
                Ok(()) => return Ok(true),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Waits until every running member answers `endpoint health`.
    pub fn wait_healthy(&self, within: Duration) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                let ep = format!("{}://{}:{}", self.scheme(), self.host, m.client);
                // Before auth is enabled the root password is not needed; after, it is
                // given: both answer health.
                self.etcdctl_at(&ep, &["endpoint", "health"])
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            });
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "local etcd not healthy after {within:?} (logs in {})",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs member `i` (by its pid) and reaps it.
    pub fn kill9(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut child) = self.members.get_mut(i).and_then(|m| m.child.take()) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.spawn(i, "existing")
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill9(i).ok();
        }
    }
}
