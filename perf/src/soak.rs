//! The soak's measurements: the process's resident memory over time, its slope, and the
//! verdict on a long run (`roamgate perf soak`, which runs the lab).
//!
//! The slope is a least-squares line through the samples of the second half of the run, so
//! the warm-up (pools and rings filling, the first IKE SAs) does not count as growth.
//! Memory is called flat when that slope is below a threshold in MB per minute; what a
//! threshold can and cannot tell is said where the command takes it.

/// One sample of the process's resident set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub secs: f64,
    /// Resident set size in MiB.
    pub rss_mb: f64,
}

/// The resident set size of this process in MiB (`VmRSS` of `/proc/self/status`), or None
/// where there is no such file.
pub fn rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss_kb(&status).map(|kb| kb as f64 / 1024.0)
}

fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The least-squares slope of RSS over time, in MiB per minute, through the samples taken
/// in the second half of the run (by time); None with fewer than three such samples.
pub fn slope_mb_per_min(samples: &[Sample]) -> Option<f64> {
    let end = samples.last()?.secs;
    let tail: Vec<&Sample> = samples.iter().filter(|s| s.secs >= end / 2.0).collect();
    if tail.len() < 3 {
        return None;
    }
    let n = tail.len() as f64;
    let mean_t = tail.iter().map(|s| s.secs).sum::<f64>() / n;
    let mean_m = tail.iter().map(|s| s.rss_mb).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in &tail {
        cov += (s.secs - mean_t) * (s.rss_mb - mean_m);
        var += (s.secs - mean_t) * (s.secs - mean_t);
    }
    (var > 0.0).then(|| cov / var * 60.0)
}

/// Growth from the first sample of the second half to the largest sample after it (MiB):
/// what a short run can bound when its slope says little.
pub fn growth_mb(samples: &[Sample]) -> Option<f64> {
    let end = samples.last()?.secs;
    let first = samples.iter().find(|s| s.secs >= end / 2.0)?;
    let peak = samples
        .iter()
        .filter(|s| s.secs >= first.secs)
        .map(|s| s.rss_mb)
        .fold(f64::MIN, f64::max);
    Some(peak - first.rss_mb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(rate_mb_per_min: f64, base: f64, noise: &[f64]) -> Vec<Sample> {
        noise
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let secs = i as f64 * 5.0;
                Sample {
                    secs,
                    rss_mb: base + rate_mb_per_min * secs / 60.0 + n,
                }
            })
            .collect()
    }

    #[test]
    fn the_slope_is_the_second_halfs_least_squares_line() {
        let flat = line(0.0, 60.0, &[0.0; 40]);
        assert_eq!(slope_mb_per_min(&flat), Some(0.0));
        let leak = line(12.0, 60.0, &[0.0; 40]);
        assert!((slope_mb_per_min(&leak).unwrap() - 12.0).abs() < 1e-9);
        // A warm-up jump in the first half does not count.
        let mut warm = line(0.0, 60.0, &[0.0; 40]);
        for s in warm.iter_mut().take(10) {
            s.rss_mb -= 40.0;
        }
        assert_eq!(slope_mb_per_min(&warm), Some(0.0));
        // Noise around a flat line stays near zero.
        let noise: Vec<f64> = (0..40)
            .map(|i| if i % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        assert!(slope_mb_per_min(&line(0.0, 60.0, &noise)).unwrap().abs() < 0.1);
        assert_eq!(slope_mb_per_min(&flat[..3]), None, "too few samples");
        assert!((growth_mb(&leak).unwrap() - 12.0 * 95.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\troamgate\nVmPeak:\t  900 kB\nVmRSS:\t   61440 kB\nThreads:\t7\n";
        assert_eq!(parse_vm_rss_kb(status), Some(61440));
        assert_eq!(parse_vm_rss_kb("Name: x\n"), None);
        assert!(rss_mb().is_some_and(|m| m > 0.0));
    }
}
