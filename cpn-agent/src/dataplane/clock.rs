//! The kernel's tick counter (jiffies), the clock the data plane stamps affinity entries with.
//!
//! `bpf_jiffies64` costs a few nanoseconds per packet where `bpf_ktime_get_coarse_ns` costs
//! about 30 on the bench machine (docs/BENCHMARKS.md), and idle timeouts are whole seconds, so
//! a tick (1-10 ms) is resolution enough. Userspace has no system call for jiffies or for the
//! tick rate (`CONFIG_HZ`; `sysconf(_SC_CLK_TCK)` is `USER_HZ`, always 100). `/proc/timer_list`
//! prints the jiffies next to `CLOCK_MONOTONIC`: two samples 100 ms apart give the rate, and
//! either sample maps any later monotonic time to jiffies (both count the same timekeeping, so
//! they do not drift apart). Cilium's agent probes the tick rate from the same file.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    sync::OnceLock,
    time::Duration,
};

use super::Error;

const TIMER_LIST: &str = "/proc/timer_list";

/// The tick rates of `kernel/Kconfig.hz` (x86, arm64 and most architectures; a few others add
/// rates of their own, which this would misread as the nearest of these).
const TICK_RATES: [u32; 4] = [100, 250, 300, 1000];

/// Time between the two samples: long enough that ±1 tick of sampling error cannot make one
/// rate look like its neighbour (250 Hz: 25 ± 1 ticks, 300 Hz: 30 ± 1).
const CALIBRATION: Duration = Duration::from_millis(100);

/// The tick rate and one (monotonic time, jiffies) sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    hz: u32,
    sample_ns: u64,
    sample_jiffies: u64,
}

/// One sample of `/proc/timer_list`: its `now at … nsecs` and the first CPU's `jiffies:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    monotonic_ns: u64,
    jiffies: u64,
}

impl TickClock {
    /// This kernel's clock, calibrated once per process (the first call takes 100 ms).
    pub fn kernel() -> Result<Self, Error> {
        static CLOCK: OnceLock<Result<TickClock, String>> = OnceLock::new();
        CLOCK
            .get_or_init(|| Self::calibrate().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::TickClock)
    }

    fn calibrate() -> Result<Self, std::io::Error> {
        let first = read_sample()?;
        std::thread::sleep(CALIBRATION);
        let second = read_sample()?;
        let hz = nearest_rate(first, second).ok_or_else(|| {
            std::io::Error::other(format!(
                "two samples {first:?} and {second:?} give no tick rate"
            ))
        })?;
        Ok(Self::new(hz, second.monotonic_ns, second.jiffies))
    }

    /// A clock of `hz` ticks a second that read `jiffies` at monotonic time `monotonic_ns`.
    const fn new(hz: u32, monotonic_ns: u64, jiffies: u64) -> Self {
        Self {
            hz,
            sample_ns: monotonic_ns,
            sample_jiffies: jiffies,
        }
    }

    pub const fn hz(&self) -> u32 {
        self.hz
    }

    /// The jiffies at monotonic time `monotonic_ns` (exact to a tick).
    pub fn jiffies_at(&self, monotonic_ns: u64) -> u64 {
        let elapsed = i128::from(monotonic_ns) - i128::from(self.sample_ns);
        let ticks = elapsed * i128::from(self.hz) / 1_000_000_000;
        u64::try_from(i128::from(self.sample_jiffies) + ticks).unwrap_or(0)
    }

    /// The jiffies now.
    pub fn now(&self) -> u64 {
        self.jiffies_at(monotonic_ns())
    }

    /// `ticks` as milliseconds.
    pub fn ticks_to_ms(&self, ticks: u64) -> u64 {
        u64::try_from(u128::from(ticks) * 1000 / u128::from(self.hz)).unwrap_or(u64::MAX)
    }

    /// A timeout of `seconds` in ticks, saturating at `u32::MAX` (49 days at 1000 Hz).
    pub fn seconds_to_ticks(&self, seconds: u64) -> u32 {
        u32::try_from(seconds.saturating_mul(u64::from(self.hz))).unwrap_or(u32::MAX)
    }

    /// Whole seconds of `ticks`, rounded to nearest (a timeout set in seconds reads back as set).
    pub fn ticks_to_seconds(&self, ticks: u32) -> u32 {
        (ticks + self.hz / 2) / self.hz
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns` and of `/proc/timer_list`'s `now at`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

fn read_sample() -> Result<Sample, std::io::Error> {
    let file = File::open(TIMER_LIST).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{TIMER_LIST}: {e} (it needs root and CONFIG_PROC_FS)"),
        )
    })?;
    parse_sample(BufReader::new(file)).ok_or_else(|| {
        std::io::Error::other(format!("{TIMER_LIST} has no `now at` and `jiffies:` lines"))
    })
}

/// The first `now at N nsecs` and the first `jiffies: N` (the file is long on many CPUs; stop
/// reading there).
fn parse_sample(reader: impl BufRead) -> Option<Sample> {
    let mut monotonic_ns = None;
    for line in reader.lines() {
        let line = line.ok()?;
        let line = line.trim();
        if monotonic_ns.is_none() {
            monotonic_ns = line
                .strip_prefix("now at ")
                .and_then(|rest| rest.strip_suffix(" nsecs"))
                .and_then(|n| n.parse().ok());
        } else if let Some(j) = line.strip_prefix("jiffies:") {
            return Some(Sample {
                monotonic_ns: monotonic_ns?,
                jiffies: j.trim().parse().ok()?,
            });
        }
    }
    None
}

/// The listed tick rate nearest to what the two samples measured, if one is within 10 %.
fn nearest_rate(first: Sample, second: Sample) -> Option<u32> {
    let elapsed_ns = second.monotonic_ns.checked_sub(first.monotonic_ns)?;
    let ticks = second.jiffies.checked_sub(first.jiffies)?;
    if elapsed_ns == 0 {
        return None;
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate estimate")]
    let measured = ticks as f64 * 1e9 / elapsed_ns as f64;
    let nearest = TICK_RATES.into_iter().min_by(|a, b| {
        (f64::from(*a) - measured)
            .abs()
            .total_cmp(&(f64::from(*b) - measured).abs())
    })?;
    ((f64::from(nearest) - measured).abs() <= f64::from(nearest) * 0.1).then_some(nearest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMER_LIST_HEAD: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
        now at 19400194556833 nsecs\n\ncpu: 0\n clock 0:\n  .base:       ffff\n\
        .expires_next   : 19400196000000 nsecs\n  .idle_jiffies   : 4299742280\n\
        jiffies: 4299742816\n\ncpu: 1\njiffies: 4299742817\n";

    #[test]
    fn a_sample_is_the_first_now_and_the_first_jiffies() {
        assert_eq!(
            parse_sample(TIMER_LIST_HEAD.as_bytes()),
            Some(Sample {
                monotonic_ns: 19_400_194_556_833,
                jiffies: 4_299_742_816
            })
        );
        // `.idle_jiffies` is not `jiffies:`; a file without either gives nothing.
        assert_eq!(
            parse_sample("now at 5 nsecs\n.idle_jiffies : 3\n".as_bytes()),
            None
        );
        assert_eq!(parse_sample("jiffies: 3\n".as_bytes()), None);
    }

    #[test]
    fn the_rate_is_the_nearest_kconfig_choice() {
        let at = |ms: u64, jiffies| Sample {
            monotonic_ns: ms * 1_000_000,
            jiffies,
        };
        // 100 ms: 25 ± 1 ticks at 250 Hz, 30 ± 1 at 300 Hz, 100 ± 1 at 1000 Hz.
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1024)), Some(250));
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1026)), Some(250));
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1029)), Some(300));
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1101)), Some(1000));
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1010)), Some(100));
        // Nothing near any rate, or time running backwards: no answer.
        assert_eq!(nearest_rate(at(0, 1000), at(100, 1500)), None);
        assert_eq!(nearest_rate(at(100, 1000), at(0, 1025)), None);
    }

    #[test]
    fn conversions_follow_the_rate() {
        let clock = TickClock::new(250, 10_000_000_000, 5_000);
        assert_eq!(clock.jiffies_at(10_000_000_000), 5_000);
        assert_eq!(clock.jiffies_at(11_000_000_000), 5_250);
        assert_eq!(clock.jiffies_at(9_996_000_000), 4_999);
        assert_eq!(clock.ticks_to_ms(250), 1000);
        assert_eq!(clock.ticks_to_ms(1), 4);
        assert_eq!(clock.seconds_to_ticks(30), 7_500);
        assert_eq!(clock.seconds_to_ticks(u64::MAX), u32::MAX);
        assert_eq!(clock.ticks_to_seconds(7_500), 30);
    }

    #[test]
    fn this_kernel_has_a_tick_rate() {
        if !std::path::Path::new(TIMER_LIST).exists() || !nix_is_root() {
            // Unit tests also run unprivileged (cargo test as a user); the agent runs as root.
            return;
        }
        let clock = TickClock::kernel().expect("calibrated");
        assert!(TICK_RATES.contains(&clock.hz()));
        let fresh = read_sample().expect("a sample");
        // The extrapolated jiffies agree with the kernel's to a tick or two.
        assert!(clock.jiffies_at(fresh.monotonic_ns).abs_diff(fresh.jiffies) <= 2);
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
