//! roamgate's worker on AF_XDP over veth pairs in a namespace of its own, fed by an AF_XDP
//! generator: it must encrypt, and the ESP must reach the sink. Run with `--nocapture` for
//! the rates.
//!
//! Needs root (a network namespace, XDP programs). Without it the test prints `SKIP:` and
//! passes, unless ROAMGATE_REQUIRE_ROOT is set.

use std::time::Duration;

use pipeline::crypto::best_backend;
use roamgate_perf::xdp_ports;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("ROAMGATE_REQUIRE_ROOT").is_some() {
        panic!("{test} needs root (ROAMGATE_REQUIRE_ROOT is set)");
    }
    println!("SKIP: {test} needs root (a network namespace, XDP programs)");
    false
}

#[test]
fn the_worker_encrypts_on_af_xdp_over_veth() {
    if !root_or_skip("the_worker_encrypts_on_af_xdp_over_veth") {
        return;
    }
    let pts = xdp_ports::encrypt_rates(
        &[64],
        Duration::from_millis(300),
        Duration::from_secs(1),
        best_backend(),
    )
    .expect("the AF_XDP lab runs");
    assert_eq!(pts.len(), 1);
    let p = &pts[0];
    println!(
        "encrypt {} B on AF_XDP veth ({}): worker {:.3} Mpps, sink {:.3} Mpps",
        p.size,
        p.mode,
        p.pps / 1e6,
        p.sink_pps / 1e6
    );
    assert!(p.pps > 0.0, "the worker encrypted nothing");
    assert!(p.sink_pps > 0.0, "no ESP reached the sink");
}

#[test]
fn bad_sizes_are_an_error_not_a_panic() {
    let e = xdp_ports::encrypt_rates(&[9000], Duration::ZERO, Duration::ZERO, best_backend())
        .unwrap_err();
    assert!(!e.is_empty());
}
