//! Following the kernel's addresses on a client's WAN device (MOBIKE, RFC 4555): what
//! `roamgate client` does whether its control plane is a process of its own or runs inside
//! the data plane (`--single-process`).
//!
//! Owns the list of addresses the kernel has on the device and the one IKE uses. It decides
//! what changes (the addresses the data plane answers for, and a move of the IKE SAs); the
//! caller applies that to its control loop. It must never pick an address of the other
//! family than the one in use, nor leave the one in use while the kernel still has it.

use std::net::IpAddr;

use anyhow::{Context, Result};

use crate::addr_watch::{AddrChange, AddrWatch};

/// What the caller applies: the data plane answers ARP/ND for `addrs` (the one in use
/// first), and with `roam` the IKE SAs move to its address, announcing the others.
pub struct WanChange {
    pub addrs: Vec<IpAddr>,
    pub roam: Option<Roam>,
}

pub struct Roam {
    pub from: IpAddr,
    pub to: IpAddr,
    /// The kernel's other addresses of the family (RFC 4555 3.3 additional addresses).
    pub others: Vec<IpAddr>,
}

/// A new address is taken at once (make-before-break: the old one still works while the
/// peer is told); when the one in use goes, the newest remaining one is taken.
pub struct WanFollower {
    watch: AddrWatch,
    kernel: Vec<IpAddr>,
    current: IpAddr,
}

impl WanFollower {
    /// Watches device `dev`, starting from the configured address `current`.
    pub fn new(dev: &str, current: IpAddr) -> Result<WanFollower> {
        let watch = AddrWatch::new(dev)
            .with_context(|| format!("watching the addresses of WAN device {dev}"))?;
        Ok(WanFollower {
            watch,
            kernel: Vec::new(),
            current,
        })
    }

    /// The change the kernel's latest address messages call for, if any.
    pub fn poll(&mut self) -> Option<WanChange> {
        let changes = self.watch.poll();
        if changes.is_empty() {
            return None;
        }
        let family = self.current.is_ipv4();
        let mut want = None;
        for c in changes {
            match c {
                AddrChange::Added(a) if a.is_ipv4() == family => {
                    if !self.kernel.contains(&a) {
                        self.kernel.push(a);
                    }
                    if a != self.current {
                        want = Some(a);
                    }
                }
                AddrChange::Removed(a) => {
                    self.kernel.retain(|k| *k != a);
                    if a == self.current {
                        want = self
                            .kernel
                            .iter()
                            .rev()
                            .find(|k| k.is_ipv4() == family)
                            .copied();
                    }
                }
                _ => {}
            }
        }
        // The data plane answers ARP/ND for what the kernel has, and the address in use.
        let first = want.unwrap_or(self.current);
        let mut addrs = vec![first];
        addrs.extend(self.kernel.iter().filter(|k| **k != first).copied());
        let roam = want.map(|to| {
            let others = self
                .kernel
                .iter()
                .filter(|k| **k != to && k.is_ipv4() == family)
                .copied()
                .collect();
            let from = std::mem::replace(&mut self.current, to);
            Roam { from, to, others }
        });
        Some(WanChange { addrs, roam })
    }
}
