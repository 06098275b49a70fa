//! Keeping key material out of core dumps. The processes that hold keys (`dataplane`,
//! `control`, `run`, `client`) make themselves non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`)
//! before they read their configuration: the kernel then writes no core file for them and
//! lets no other process of the same user read their memory (`/proc/<pid>/mem`, ptrace), and
//! their `/proc/<pid>` entries belong to root. `--allow-core-dumps` keeps them dumpable, for
//! debugging a crash on a machine whose keys may be exposed.
//!
//! The flag is reset by every `execve`, so each process sets it for itself; a supervisor
//! passes `--allow-core-dumps` on to its children.
//!
//! Owns: the decision and the system call.
//! Must never: leave a key-holding process dumpable unless it was asked to.

use anyhow::{Context, Result};

/// The command-line flag, shared by every key-holding subcommand.
pub const ALLOW_FLAG: &str = "--allow-core-dumps";

/// Makes this process non-dumpable unless `allow`; returns whether it is dumpable now (read
/// back from the kernel).
pub fn apply(allow: bool) -> Result<bool> {
    if !allow {
        nix::sys::prctl::set_dumpable(false)
            .context("prctl(PR_SET_DUMPABLE, 0): keeping keys out of core dumps")?;
    }
    nix::sys::prctl::get_dumpable().context("prctl(PR_GET_DUMPABLE)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_allows_dumps_stays_dumpable() {
        // Only the allowing direction runs here: making the test binary non-dumpable would
        // outlive this test (the e2e test `tests/core_dumps.rs` checks the other direction on
        // real processes).
        assert!(apply(true).unwrap());
    }
}
