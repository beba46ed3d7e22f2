//! L0 samples from this host: CPU utilisation and load from /proc, memory, and per-service
//! in-flight counts from a file the service writes.

#![expect(
    clippy::cast_precision_loss,
    reason = "counters become ratios and byte counts become f64 samples; 52 bits are plenty"
)]

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{Sample, Unit};

/// CPU time counters from the first line of /proc/stat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the aggregate `cpu` line of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in user)
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Utilisation (0..=1) between two readings.
pub fn utilisation(before: CpuTimes, after: CpuTimes) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let busy = after.busy.checked_sub(before.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// The 1-minute load average from /proc/loadavg.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Samples this host: call [`HostSampler::sample`] periodically; utilisation needs two calls.
#[derive(Debug)]
pub struct HostSampler {
    proc_dir: PathBuf,
    last_cpu: Option<CpuTimes>,
}

/// One round of host samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostSamples {
    pub cpu_utilisation: Option<Sample>,
    pub load_average: Option<Sample>,
    pub memory_available: Option<Sample>,
}

impl HostSampler {
    /// Reads from `/proc`.
    pub fn new() -> Self {
        Self::with_proc_dir("/proc")
    }

    /// Reads from another directory laid out like /proc (tests).
    pub fn with_proc_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            proc_dir: dir.into(),
            last_cpu: None,
        }
    }

    pub fn sample(&mut self, now: SystemTime) -> HostSamples {
        let read = |name: &str| std::fs::read_to_string(self.proc_dir.join(name)).ok();
        let cpu = read("stat").as_deref().and_then(parse_proc_stat);
        let cpu_utilisation = match (self.last_cpu, cpu) {
            (Some(before), Some(after)) => utilisation(before, after),
            _ => None,
        }
        .map(|u| Sample::measured(u, Unit::Ratio, now));
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
        HostSamples {
            cpu_utilisation,
            load_average: read("loadavg")
                .as_deref()
                .and_then(parse_loadavg)
                .map(|l| Sample::measured(l, Unit::Tasks, now)),
            memory_available: read("meminfo")
                .as_deref()
                .and_then(parse_meminfo_available)
                .map(|b| Sample::measured(b as f64, Unit::Bytes, now)),
        }
    }
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a service's in-flight count from a file holding one number (the service rewrites it).
/// The file's modification time is the sample's time, so a service that stops writing goes
/// stale instead of looking idle.
pub fn read_in_flight(path: &Path) -> std::io::Result<Sample> {
    let text = std::fs::read_to_string(path)?;
    let value: f64 = text.trim().parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: not a number: {e}", path.display()),
        )
    })?;
    let at = std::fs::metadata(path)?.modified()?;
    Ok(Sample::measured(value, Unit::Requests, at))
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "the values are parsed from exact decimal text"
)]
mod tests {
    use super::*;

    #[test]
    fn cpu_utilisation_from_two_readings() {
        let a = parse_proc_stat("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse_proc_stat("cpu  200 0 200 900 0 0 0 0 0 0\n").unwrap();
        assert_eq!(
            a,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        let u = utilisation(a, b).unwrap();
        assert!((u - 200.0 / 300.0).abs() < 1e-9, "{u}");
    }

    #[test]
    fn loadavg_and_meminfo() {
        assert_eq!(parse_loadavg("0.52 0.40 0.30 1/123 4567\n"), Some(0.52));
        assert_eq!(
            parse_meminfo_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_meminfo_available("MemTotal: 100 kB\n"), None);
    }

    #[test]
    fn sampler_reads_a_proc_like_directory() {
        let dir = std::env::temp_dir().join(format!("cpn-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), "cpu  100 0 100 800 0 0 0 0\n").unwrap();
        std::fs::write(dir.join("loadavg"), "1.5 1 1 1/1 1\n").unwrap();
        std::fs::write(dir.join("meminfo"), "MemAvailable: 1 kB\n").unwrap();
        let mut sampler = HostSampler::with_proc_dir(&dir);
        let first = sampler.sample(SystemTime::now());
        assert!(first.cpu_utilisation.is_none(), "needs two readings");
        assert_eq!(first.load_average.unwrap().value, 1.5);
        std::fs::write(dir.join("stat"), "cpu  150 0 150 850 0 0 0 0\n").unwrap();
        let second = sampler.sample(SystemTime::now());
        assert!((second.cpu_utilisation.unwrap().value - 100.0 / 150.0).abs() < 1e-9);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn in_flight_file() {
        let path = std::env::temp_dir().join(format!("cpn-inflight-{}", std::process::id()));
        std::fs::write(&path, "17\n").unwrap();
        assert_eq!(read_in_flight(&path).unwrap().value, 17.0);
        std::fs::write(&path, "lots").unwrap();
        assert!(
            read_in_flight(&path)
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        std::fs::remove_file(path).unwrap();
    }
}
