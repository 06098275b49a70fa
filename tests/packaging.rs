//! The systemd unit in vendor-scripts: systemd-analyze accepts it, and the command line it
//! starts is one the binary accepts (every flag exists; the config and state paths are the
//! operator's).

use std::process::Command;

use roamgate_tests::{have_tool, root, scratch};

#[test]
fn the_systemd_unit_verifies_and_its_command_line_parses() {
    let unit = std::fs::read_to_string(root().join("vendor-scripts/roamgate@.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let bin = env!("CARGO_BIN_EXE_roamgate");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/roamgate"));
    // The flags parse: with --help last, clap refuses an unknown flag before printing help.
    let args: Vec<String> = words.map(|w| w.replace("%i", "gw")).collect();
    let out = Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "roamgate {args:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !have_tool("systemd-analyze", &["--version"]) {
        return;
    }
    let dir = scratch("packaging");
    let path = dir.join("roamgate@test.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/roamgate", bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Only what it says of our unit: verify also loads the machine's other units, and their
    // deprecation warnings (e.g. Debian's freeradius.service on MemoryLimit=) are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.starts_with("/lib/systemd/")
                && !l.starts_with("/usr/lib/systemd/")
                && !l.starts_with("/etc/systemd/")
        })
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}
