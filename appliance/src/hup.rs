//! SIGHUP: "re-read the config file" (a reload), as daemons take it.
//!
//! `ctrlc` (with its `termination` feature) takes SIGHUP as a request to stop; [`install`],
//! called after `ctrlc::set_handler`, gives SIGHUP a handler of its own that only raises a
//! flag, which the process's loop takes with [`take`].

use std::sync::atomic::{AtomicBool, Ordering};

static RAISED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hup(_: libc::c_int) {
    RAISED.store(true, Ordering::Relaxed);
}

/// Installs the SIGHUP handler (after `ctrlc::set_handler`, which it replaces for SIGHUP).
#[allow(unsafe_code)]
pub fn install() -> anyhow::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask) that we fill in; the
    // handler only stores to an atomic, which is async-signal-safe; sigaction(2) reads the
    // struct we own and writes nothing back (old action: null).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_hup as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        anyhow::bail!(
            "installing the SIGHUP handler: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// True once per SIGHUP received since the last call.
pub fn take() -> bool {
    RAISED.swap(false, Ordering::Relaxed)
}
