//! The JSON every probe writes, and the short tables humans read.
//!
//! One document per probe run:
//! ```json
//! { "schema": "ringfeed-perf/1", "probe": "disk",
//!   "host": { "hostname": "…", "kernel": "6.18.0", "cpus": 2, "filesystem": "ext4", "unix_time_s": 1764140000 },
//!   "parameters": { "block_size_bytes": 16384, "queue_depth": 1, … },
//!   "figures": { "write_mb_per_s": 812.5, "write_fdatasync_latency_us_p99": 410.2, … } }
//! ```
//! `figures` is flat (`name → number`, units last) so the bench and scripts can read it
//! without our types; `schema` changes only when a name changes meaning.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::summary::{Figures, LatencySummary, PERCENTILES};

pub const SCHEMA: &str = "ringfeed-perf/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub kernel: String,
    pub cpus: usize,
    /// Filesystem of the measured directory; only for disk runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    pub unix_time_s: u64,
    /// 1-minute load average when the run ended: other work on the cores skews every figure,
    /// so a figure measured on a busy host says so.
    #[serde(default)]
    pub load_average_1m: Option<f64>,
    /// Share of all cores' time (0-100) used by everything but this process while it ran.
    /// Above a few percent the figures are not the machine's alone: rerun on a quiet host.
    #[serde(default)]
    pub cpu_busy_other_percent: Option<f64>,
}

impl Host {
    pub fn current(filesystem: Option<String>, sampler: &OtherCpuSampler) -> Self {
        let read = |path: &str| {
            fs::read_to_string(path)
                .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            filesystem,
            unix_time_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            load_average_1m: load_average_1m(),
            cpu_busy_other_percent: sampler.busy_percent(),
        }
    }
}

fn load_average_1m() -> Option<f64> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Measures how busy the cores were with other work during a run, from `/proc/stat` (all
/// cores) minus `/proc/self/stat` (this process, including its `io_uring` workers).
pub struct OtherCpuSampler {
    start: Option<CpuTicks>,
}

#[derive(Clone, Copy)]
struct CpuTicks {
    busy: u64,
    total: u64,
    own: u64,
}

impl OtherCpuSampler {
    pub fn start() -> Self {
        Self {
            start: CpuTicks::read(),
        }
    }

    pub fn busy_percent(&self) -> Option<f64> {
        let (start, end) = (self.start?, CpuTicks::read()?);
        let total = end.total.checked_sub(start.total)?;
        if total == 0 {
            return None;
        }
        let busy = end.busy.saturating_sub(start.busy);
        let other = busy.saturating_sub(end.own.saturating_sub(start.own));
        Some(other as f64 * 100.0 / total as f64)
    }
}

impl CpuTicks {
    fn read() -> Option<Self> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        if ticks.len() < 8 {
            return None;
        }
        let idle = ticks[3] + ticks[4];
        let total: u64 = ticks.iter().sum();
        // The command name may contain spaces; fields after the last ')' are fixed:
        // state(3) … utime(14) stime(15), i.e. the 12th and 13th after the parenthesis.
        let own_stat = fs::read_to_string("/proc/self/stat").ok()?;
        let after_name = &own_stat[own_stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace().skip(11);
        let own = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
        Some(Self {
            busy: total - idle,
            total,
            own,
        })
    }
}

/// One probe run as written by `--json` and read by `report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingDocument {
    pub schema: String,
    /// `disk` or `net`.
    pub probe: String,
    pub host: Host,
    pub parameters: serde_json::Value,
    pub figures: Figures,
}

impl CeilingDocument {
    pub fn new(probe: &str, host: Host, parameters: &impl Serialize, figures: Figures) -> Self {
        Self {
            schema: SCHEMA.to_string(),
            probe: probe.to_string(),
            host,
            parameters: serde_json::to_value(parameters).expect("parameters serialise"),
            figures,
        }
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        text.push('\n');
        fs::write(path, text)
    }

    pub fn read(path: &Path) -> io::Result<Self> {
        let text = fs::read_to_string(path)?;
        let document: Self = serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        if document.schema != SCHEMA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: schema {:?}, expected {SCHEMA:?}",
                    path.display(),
                    document.schema
                ),
            ));
        }
        Ok(document)
    }

    pub fn parameter_u64(&self, name: &str) -> Option<u64> {
        self.parameters
            .get(name)
            .and_then(serde_json::Value::as_u64)
    }
}

/// A latency table: one row per measured operation, columns p50 … max in microseconds.
pub fn latency_table(rows: &[(&str, &LatencySummary)]) -> String {
    let mut out = format!("{:<24}{:>8}", "latency (us)", "count");
    for (name, _) in PERCENTILES {
        let _ = write!(out, "{name:>10}");
    }
    let _ = writeln!(out, "{:>10}", "max");
    for (label, summary) in rows {
        let _ = write!(out, "{label:<24}{:>8}", summary.count);
        for value_us in summary.percentiles_us {
            let _ = write!(out, "{:>10}", format_us(value_us));
        }
        let _ = writeln!(out, "{:>10}", format_us(summary.max_us));
    }
    out
}

/// Three significant digits, enough for figures whose histogram keeps three.
pub fn format_us(value_us: f64) -> String {
    if value_us >= 100.0 {
        format!("{value_us:.0}")
    } else if value_us >= 10.0 {
        format!("{value_us:.1}")
    } else {
        format!("{value_us:.2}")
    }
}

/// `16384` → `16 KiB`, for labels.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_round_trips_through_json() {
        let mut figures = Figures::new();
        figures.insert("write_mb_per_s".into(), 812.5);
        let parameters = serde_json::json!({ "block_size_bytes": 16384, "queue_depth": 1 });
        let document = CeilingDocument::new(
            "disk",
            Host::current(Some("ext4".into()), &OtherCpuSampler::start()),
            &parameters,
            figures,
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.json");
        document.write(&path).expect("write");
        let read = CeilingDocument::read(&path).expect("read");
        assert_eq!(read, document);
        assert_eq!(read.parameter_u64("block_size_bytes"), Some(16384));
        let raw: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["figures"]["write_mb_per_s"], 812.5);
        assert_eq!(raw["schema"], SCHEMA);
    }

    #[test]
    fn wrong_schema_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.json");
        fs::write(&path, r#"{"schema":"other/9","probe":"disk","host":{"hostname":"h","kernel":"k","cpus":1,"unix_time_s":0},"parameters":{},"figures":{}}"#).unwrap();
        assert!(CeilingDocument::read(&path)
            .unwrap_err()
            .to_string()
            .contains("schema"));
    }

    #[test]
    fn table_has_a_column_per_percentile() {
        let summary = LatencySummary {
            count: 3,
            min_us: 1.0,
            mean_us: 2.0,
            percentiles_us: [1.0, 2.0, 3.0, 4.0, 5.0],
            max_us: 1234.6,
        };
        let table = latency_table(&[("write+fdatasync", &summary)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("p9999") && lines[0].contains("max"));
        assert!(lines[1].starts_with("write+fdatasync") && lines[1].ends_with("1235"));
    }

    #[test]
    fn other_cpu_share_is_a_percentage() {
        let sampler = OtherCpuSampler::start();
        let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        // Ticks are 10 ms, so 50 ms is enough for /proc/stat to move.
        let percent = sampler.busy_percent().expect("/proc/stat is readable");
        assert!((0.0..=100.0).contains(&percent), "{percent}");
    }

    #[test]
    fn human_units() {
        assert_eq!(format_bytes(16384), "16 KiB");
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(100), "100 B");
        assert_eq!(format_us(12.345), "12.3");
        assert_eq!(format_us(0.5), "0.50");
    }
}
