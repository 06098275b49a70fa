//! roamgate's worker on the AF_XDP port, over veth pairs in a network namespace of its own:
//!
//! ```text
//!   generator pgl <-veth-> rgl  worker  rgw <-veth-> pgw sink
//!   (plaintext UDP out)         (first core)         (ESP counted)
//!   \______________ one thread, second core ______________/
//! ```
//!
//! Both ends of both pairs have roamgate's XDP redirect program (native mode where veth has
//! it, else generic), so every frame crosses the kernel as an AF_XDP rx or tx and nothing else:
//! no IP addresses, no routing. Only encrypt: the sink counts the ESP that comes out.
//!
//! Where the kernel's work lands: a veth transmit runs its peer's receive (the XDP program and
//! the copy into the receiving socket's UMEM) in the sender's softirq, on the sender's core. So
//! the worker's core pays for its own transmit and the sink's receive, and the generator's
//! core for the worker's receive.
//!
//! Every AF_XDP call happens on threads that entered the namespace (setns); the caller's
//! thread never does. The namespace (`rgperf-<pid>`) is deleted when [`encrypt_rates`]
//! returns, on error and on panic too. Its two UMEMs (16 MiB each) stay mapped for the rest of
//! the process, as every UMEM does (see `pipeline::port::afxdp`).

use std::time::Duration;

use pipeline::crypto::Backend;

/// One size's rates.
#[derive(Clone, Debug)]
pub struct XdpPoint {
    /// Ethernet frame size of the plaintext (without FCS).
    pub size: usize,
    /// Frames the worker encrypted per second of wall time.
    pub pps: f64,
    /// ESP frames the sink received per second, over the same window.
    pub sink_pps: f64,
    /// The gateway's XDP attach mode and AF_XDP bind mode, e.g. "native, copy".
    pub mode: String,
}

/// Encrypt rates of one worker (one SA, busy-polling on the first core) on AF_XDP over veth,
/// fed by an AF_XDP generator on the second core; each size measured for `measure` after
/// `warmup`. Needs root and iproute2; says so otherwise.
#[cfg(target_os = "linux")]
pub fn encrypt_rates(
    sizes: &[usize],
    warmup: Duration,
    measure: Duration,
    backend: Backend,
) -> Result<Vec<XdpPoint>, String> {
    imp::encrypt_rates(sizes, warmup, measure, backend)
}

/// AF_XDP is Linux only.
#[cfg(not(target_os = "linux"))]
pub fn encrypt_rates(
    _sizes: &[usize],
    _warmup: Duration,
    _measure: Duration,
    _backend: Backend,
) -> Result<Vec<XdpPoint>, String> {
    Err("AF_XDP needs Linux".into())
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use nix::sched::{setns, CloneFlags};
    use pipeline::crypto::Backend;
    use pipeline::port::afxdp::{XdpConfig, XdpPort};
    use pipeline::port::xdp_prog::{XdpMode, XdpProgram};
    use pipeline::port::{Frame, Port};
    use pipeline::stats::Traffic;
    use pipeline::worker::Idle;

    use super::XdpPoint;
    use crate::run;

    /// Gateway LAN, its generator peer, gateway WAN, its sink peer.
    const GW_LAN: &str = "rgl";
    const GEN: &str = "pgl";
    const GW_WAN: &str = "rgw";
    const SINK: &str = "pgw";
    /// Frames per generator burst.
    const BURST: usize = 32;

    /// One measurement at a time in a process: the namespace's name is the pid's, and two
    /// at once would share cores anyway.
    static SERIAL: Mutex<()> = Mutex::new(());

    pub(super) fn encrypt_rates(
        sizes: &[usize],
        warmup: Duration,
        measure: Duration,
        backend: Backend,
    ) -> Result<Vec<XdpPoint>, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root: a network namespace and XDP programs".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("needs iproute2's `ip` (not found)".into());
        }
        if let Some(s) = sizes.iter().find(|s| !(64..=1420).contains(*s)) {
            return Err(format!("frame size {s}: expected 64..=1420"));
        }
        if sizes.is_empty() {
            return Ok(Vec::new());
        }
        let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let ns = Netns::create(&format!("rgperf-{}", std::process::id()))?;
        ns.wire()?;
        let path = format!("/run/netns/{}", ns.name);
        let r = std::thread::scope(|sc| {
            sc.spawn(|| {
                let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                setns(f, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering {}: {e}", ns.name))?;
                in_namespace(sizes, warmup, measure, backend)
            })
            .join()
        });
        // `ns` drops after the namespace's threads have ended (and on unwind, too).
        r.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// A network namespace this process made; deleted on drop.
    struct Netns {
        name: String,
    }

    impl Netns {
        fn create(name: &str) -> Result<Netns, String> {
            ip(&["netns", "add", name]).map_err(|e| {
                format!("{e} (a namespace left by an earlier run? `ip netns del {name}`)")
            })?;
            Ok(Netns {
                name: name.to_string(),
            })
        }

        /// The two veth pairs, MACs as the worker's links expect them, all up. No addresses,
        /// no IPv6 link-local either (nothing but the measured traffic on the wire).
        fn wire(&self) -> Result<(), String> {
            let n = self.name.as_str();
            let mac = |m: [u8; 6]| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            };
            let (lan, wan) = (run::lan_link(), run::wan_link());
            for (gw, peer, gw_mac, peer_mac) in [
                (GW_LAN, GEN, lan.mac, lan.neighbor),
                (GW_WAN, SINK, wan.mac, wan.neighbor),
            ] {
                ip(&[
                    "-n", n, "link", "add", gw, "type", "veth", "peer", "name", peer,
                ])?;
                for (dev, m) in [(gw, gw_mac), (peer, peer_mac)] {
                    ip(&[
                        "-n",
                        n,
                        "link",
                        "set",
                        "dev",
                        dev,
                        "address",
                        &mac(m),
                        "addrgenmode",
                        "none",
                    ])?;
                }
            }
            for dev in [GW_LAN, GEN, GW_WAN, SINK] {
                ip(&["-n", n, "link", "set", "dev", dev, "up"])?;
            }
            Ok(())
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            if let Err(e) = ip(&["netns", "del", &self.name]) {
                eprintln!("perf xdp: {e}");
            }
        }
    }

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Native mode if the driver has it (veth does), else generic.
    fn attach(dev: &str) -> Result<XdpProgram, String> {
        XdpProgram::attach(dev, XdpMode::Native, 1).or_else(|native| {
            XdpProgram::attach(dev, XdpMode::Skb, 1).map_err(|skb| format!("{native}; {skb}"))
        })
    }

    /// Everything with a socket, on a thread inside the namespace.
    fn in_namespace(
        sizes: &[usize],
        warmup: Duration,
        measure: Duration,
        backend: Backend,
    ) -> Result<Vec<XdpPoint>, String> {
        // This thread is not pinned: it sees every core.
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (worker_core, gen_core) = (cores.first().copied(), cores.get(1).copied());

        let cfg = XdpConfig::default();
        let lan_prog = attach(GW_LAN)?;
        let wan_prog = attach(GW_WAN)?;
        let gen_prog = attach(GEN)?;
        let sink_prog = attach(SINK)?;
        let (lan, wan) = XdpPort::open_pair(&lan_prog, &wan_prog, 0, &cfg)
            .map_err(|e| format!("gateway's AF_XDP sockets: {e}"))?;
        let (gen, sink) = XdpPort::open_pair(&gen_prog, &sink_prog, 0, &cfg)
            .map_err(|e| format!("generator's AF_XDP sockets: {e}"))?;
        let mode = describe(&lan_prog, &wan_prog, &lan);

        let (mut worker, _link) = run::one_sa_worker(lan, wan, backend)?;
        let handle = worker.handle();
        let reserve = cfg.ring_size as usize;

        let mut feeder = Feeder { gen, sink, reserve };
        let mut out = Vec::new();
        for &size in sizes {
            let stop = AtomicBool::new(false);
            let sunk = AtomicU64::new(0);
            let (w, f, pps, sink_pps) = std::thread::scope(|sc| {
                let (stop, sunk) = (&stop, &sunk);
                let w = sc.spawn(move || {
                    if let Some(c) = worker_core {
                        core_affinity::set_for_current(c);
                    }
                    worker.run_with(None, stop, Idle::Spin)
                });
                let f = sc.spawn(move || {
                    if let Some(c) = gen_core {
                        core_affinity::set_for_current(c);
                    }
                    feeder.run(size, stop, sunk);
                    feeder
                });
                std::thread::sleep(warmup);
                let t0 = Instant::now();
                let (n0, s0) = (
                    handle.counters.traffic(Traffic::Encrypted),
                    sunk.load(Ordering::Relaxed),
                );
                std::thread::sleep(measure);
                let t1 = Instant::now();
                let (n1, s1) = (
                    handle.counters.traffic(Traffic::Encrypted),
                    sunk.load(Ordering::Relaxed),
                );
                stop.store(true, Ordering::Relaxed);
                let secs = (t1 - t0).as_secs_f64();
                (
                    w.join(),
                    f.join(),
                    n1.saturating_sub(n0) as f64 / secs,
                    s1.saturating_sub(s0) as f64 / secs,
                )
            });
            worker = w.unwrap_or_else(|p| std::panic::resume_unwind(p));
            feeder = f.unwrap_or_else(|p| std::panic::resume_unwind(p));
            out.push(XdpPoint {
                size,
                pps,
                sink_pps,
                mode: mode.clone(),
            });
        }
        // Sockets close before their programs detach.
        drop((worker, feeder));
        drop((lan_prog, wan_prog, gen_prog, sink_prog));
        Ok(out)
    }

    fn describe(lan: &XdpProgram, wan: &XdpProgram, port: &XdpPort) -> String {
        let attach = |p: &XdpProgram| if p.is_native() { "native" } else { "skb" };
        let bind = if port.is_zero_copy() {
            "zero-copy"
        } else {
            "copy"
        };
        if lan.is_native() == wan.is_native() {
            format!("{}, {bind}", attach(lan))
        } else {
            format!("{GW_LAN} {}, {GW_WAN} {}, {bind}", attach(lan), attach(wan))
        }
    }

    /// The generator (plaintext into the gateway's LAN) and the sink (ESP out of its WAN),
    /// one thread, one UMEM.
    struct Feeder {
        gen: XdpPort,
        sink: XdpPort,
        /// Chunks the generator leaves on the free list, for the sink's fill ring: frames in
        /// flight are bounded by the rest.
        reserve: usize,
    }

    impl Feeder {
        fn run(&mut self, size: usize, stop: &AtomicBool, sunk: &AtomicU64) {
            let frame = run::plain_frame(size, Ipv4Addr::new(10, 1, 0, 10), run::host(0));
            let pool = self.gen.pool();
            let mut q = VecDeque::with_capacity(BURST);
            let mut got = Vec::with_capacity(BURST);
            while !stop.load(Ordering::Relaxed) {
                while q.len() < BURST && pool.free_chunks() > self.reserve {
                    let Some(mut f) = self.gen.alloc() else { break };
                    if !f.append(frame.len()) {
                        break;
                    }
                    f.data_mut().copy_from_slice(&frame);
                    q.push_back(f);
                }
                // What the tx ring does not take stays queued for the next turn.
                self.gen.tx_burst(&mut q);
                self.sink.rx_burst(&mut got, BURST);
                let esp = got.iter().filter(|f| is_esp(f.data())).count();
                sunk.fetch_add(esp as u64, Ordering::Relaxed);
                got.clear();
            }
        }
    }

    /// An IPv4 ESP frame (what the worker sends; anything else on the wire is not counted).
    fn is_esp(d: &[u8]) -> bool {
        d.get(12..14) == Some(&[0x08, 0x00][..]) && d.get(23) == Some(&50)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn esp_is_recognised_and_short_frames_are_not() {
            let mut f = run::plain_frame(64, Ipv4Addr::new(10, 1, 0, 10), run::host(0));
            assert!(!is_esp(&f));
            f[23] = 50;
            assert!(is_esp(&f));
            assert!(!is_esp(&f[..20]));
            assert!(!is_esp(&[]));
        }
    }
}
