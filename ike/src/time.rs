//! Time as the IKE core sees it: an [`Instant`] is nanoseconds on the caller's clock (the core
//! never reads one), spans are [`core::time::Duration`]. "Never" is `Option::None`, not a
//! magic value.
//!
//! Owns: the newtype and saturating arithmetic on it.
//! Must never: wrap around (every operation saturates).

use core::time::Duration;

/// A point in time: nanoseconds since whatever epoch the caller's clock counts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub const fn from_nanos(n: u64) -> Instant {
        Instant(n)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, the end of time if that overflows.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(nanos(d)))
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX` (some 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_nanos(5);
        assert_eq!(t.saturating_add(Duration::from_nanos(3)).as_nanos(), 8);
        assert_eq!(
            Instant::from_nanos(u64::MAX - 1).saturating_add(Duration::MAX),
            Instant::from_nanos(u64::MAX)
        );
        assert_eq!(
            t.saturating_duration_since(Instant::from_nanos(9)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_nanos(9).saturating_duration_since(t),
            Duration::from_nanos(4)
        );
    }
}
