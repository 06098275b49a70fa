//! Checksums left for hardware on the LAN side. A LAN host whose interface offloads TCP/UDP
//! checksums (a veth with its default tx checksumming, virtio with offloads) hands the gateway
//! segments whose checksum is unfinished, and sealed as they are the far end drops them.
//! [`startup_warning`] looks at the LAN device before forwarding starts (`ethtool -i` / `-k`:
//! a veth's peer when it is in this namespace, a virtio device's own receive offload) and
//! [`UnfinishedSeen`] says so once when the workers first count such a segment.
//!
//! Owns: the advice and when to give it. Must never: stop a start-up (ethtool may be missing
//! or the peer out of reach: then the counters speak), or change a device's settings.

use std::process::Command;

use control::config::ChecksumChoice;

/// What is known of the LAN device.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LanDevice {
    pub name: String,
    /// `ethtool -i`'s driver.
    pub driver: Option<String>,
    /// For a veth: its peer, when it is in this namespace, and whether it checksums in
    /// "hardware" (tx-checksumming on).
    pub peer: Option<(String, bool)>,
    /// The device's own rx-checksumming (virtio: the host may pass unfinished checksums).
    pub rx_checksumming: Option<bool>,
}

/// The warning to print, if any, for a LAN device and the configured checksum mode.
pub fn advice(dev: &LanDevice, mode: ChecksumChoice) -> Option<String> {
    if mode == ChecksumChoice::Complete {
        return None;
    }
    let fix = "set gateway.lan.checksum: complete";
    match (dev.driver.as_deref(), &dev.peer) {
        (Some("veth"), Some((peer, true))) => Some(format!(
            "{}'s peer {peer} checksums TCP/UDP in \"hardware\" (tx-checksumming on): its \
             segments arrive unfinished and the far end would drop them; {fix}, or `ethtool -K \
             {peer} tx off`",
            dev.name
        )),
        (Some("veth"), Some((_, false))) => None,
        (Some("veth"), None) => Some(format!(
            "{} is a veth whose peer is in another namespace: if that side keeps tx \
             checksumming on (the default), its TCP/UDP segments arrive unfinished; {fix}, or \
             `ethtool -K PEER tx off` there (clear_checksum_bad in `roamgate stats` counts them)",
            dev.name
        )),
        (Some("virtio_net"), _) if dev.rx_checksumming == Some(true) => Some(format!(
            "{} is virtio with receive checksum offload: segments from guests on the same host \
             may arrive unfinished; {fix}, or `ethtool -K {} rx off`",
            dev.name, dev.name
        )),
        _ => None,
    }
}

fn ethtool(args: &[&str]) -> Option<String> {
    let out = Command::new("ethtool").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `feature: on` in `ethtool -k` output.
fn feature_on(k: &str, feature: &str) -> Option<bool> {
    k.lines()
        .find_map(|l| l.trim().strip_prefix(feature)?.strip_prefix(':'))
        .map(|v| v.trim_start().starts_with("on"))
}

fn sys(path: String) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Looks at `name` (and a veth's peer in this namespace) with ethtool and sysfs.
pub fn inspect(name: &str) -> LanDevice {
    let driver = ethtool(&["-i", name]).and_then(|i| {
        i.lines()
            .find_map(|l| l.strip_prefix("driver:"))
            .map(|d| d.trim().to_string())
    });
    let mut dev = LanDevice {
        name: name.into(),
        driver,
        ..LanDevice::default()
    };
    if dev.driver.as_deref() == Some("veth") {
        // The peer's ifindex is our iflink; it is ours to read only in this namespace.
        let iflink = sys(format!("/sys/class/net/{name}/iflink"));
        let peer = std::fs::read_dir("/sys/class/net").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n != name)
                .find(|n| iflink.is_some() && sys(format!("/sys/class/net/{n}/ifindex")) == iflink)
        });
        dev.peer = peer.and_then(|p| {
            let on = feature_on(&ethtool(&["-k", &p])?, "tx-checksumming")?;
            Some((p, on))
        });
    } else if let Some(k) = ethtool(&["-k", name]) {
        dev.rx_checksumming = feature_on(&k, "rx-checksumming");
    }
    dev
}

/// The start-up warning for LAN device `name`, if any.
pub fn startup_warning(name: &str, mode: ChecksumChoice) -> Option<String> {
    if mode == ChecksumChoice::Complete {
        return None;
    }
    advice(&inspect(name), mode)
}

/// Says once that the workers counted unfinished or wrong checksums on the clear side.
#[derive(Debug, Default)]
pub struct UnfinishedSeen {
    said: bool,
}

impl UnfinishedSeen {
    /// The line to print the first time `bad` (clear_checksum_bad, summed over the workers)
    /// is not zero; `mode` tells whether they were completed.
    pub fn check(&mut self, bad: u64, checked: u64, mode: ChecksumChoice) -> Option<String> {
        if self.said || bad == 0 {
            return None;
        }
        self.said = true;
        Some(match mode {
            ChecksumChoice::Complete => format!(
                "dataplane: LAN TCP/UDP with unfinished or wrong checksums ({bad} of {checked} \
                 checked so far): completed before sealing (gateway.lan.checksum: complete)"
            ),
            _ => format!(
                "dataplane: LAN TCP/UDP with unfinished or wrong checksums ({bad} of {checked} \
                 checked so far), sealed as they are: the far end drops them. A LAN host leaves \
                 checksums to hardware (veth or virtio offload): set gateway.lan.checksum: \
                 complete, or turn its tx checksumming off (ethtool -K DEV tx off)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(peer: Option<(&str, bool)>) -> LanDevice {
        LanDevice {
            name: "gw-lan".into(),
            driver: Some("veth".into()),
            peer: peer.map(|(p, on)| (p.to_string(), on)),
            rx_checksumming: None,
        }
    }

    #[test]
    fn a_veth_peer_with_tx_checksumming_is_named() {
        let w = advice(&veth(Some(("host-lan", true))), ChecksumChoice::Pass).unwrap();
        assert!(
            w.contains("host-lan") && w.contains("checksum: complete"),
            "{w}"
        );
        assert_eq!(
            advice(&veth(Some(("host-lan", false))), ChecksumChoice::Pass),
            None
        );
        assert!(advice(&veth(None), ChecksumChoice::Verify)
            .unwrap()
            .contains("another namespace"));
        assert_eq!(
            advice(&veth(Some(("host-lan", true))), ChecksumChoice::Complete),
            None
        );
        let virtio = LanDevice {
            name: "ens4".into(),
            driver: Some("virtio_net".into()),
            peer: None,
            rx_checksumming: Some(true),
        };
        assert!(advice(&virtio, ChecksumChoice::Pass)
            .unwrap()
            .contains("virtio"));
        let ixgbe = LanDevice {
            driver: Some("ixgbe".into()),
            rx_checksumming: Some(true),
            ..virtio
        };
        assert_eq!(
            advice(&ixgbe, ChecksumChoice::Pass),
            None,
            "a NIC finishes them"
        );
    }

    #[test]
    fn ethtool_features_are_read_by_name() {
        let k = "Features for veth0:\nrx-checksumming: on\ntx-checksumming: off\n\ttx-checksum-ipv4: off [fixed]\n";
        assert_eq!(feature_on(k, "tx-checksumming"), Some(false));
        assert_eq!(feature_on(k, "rx-checksumming"), Some(true));
        assert_eq!(feature_on(k, "scatter-gather"), None);
    }

    #[test]
    fn the_first_unfinished_checksum_is_said_once() {
        let mut s = UnfinishedSeen::default();
        assert_eq!(s.check(0, 10, ChecksumChoice::Pass), None);
        let l = s.check(2, 12, ChecksumChoice::Pass).unwrap();
        assert!(l.contains("2 of 12") && l.contains("far end drops"), "{l}");
        assert_eq!(s.check(5, 20, ChecksumChoice::Pass), None);
    }
}
