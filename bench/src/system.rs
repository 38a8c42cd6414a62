//! The host side of measuring: one clock for every thread, CPU pinning, precise sleeps, and
//! CPU-time readings for the client's own threads and (optionally) the broker process.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Nanoseconds since the run's epoch, shared by every thread of the process so a send time
/// written by a producer can be subtracted from a receive time read by a consumer.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Sleeps until `deadline_ns`. The thread's timer slack is 1 µs (see [`prepare_thread`]),
    /// so this wakes within a few microseconds on an idle core.
    pub fn sleep_until_ns(self, deadline_ns: u64) {
        let now_ns = self.now_ns();
        if deadline_ns > now_ns {
            std::thread::sleep(Duration::from_nanos(deadline_ns - now_ns));
        }
    }
}

/// Chooses the CPU for the `index`-th client thread: `--cpus` round-robin, or every online
/// CPU round-robin; `None` when pinning is off.
pub fn cpu_for(cpus: Option<&[usize]>, no_pin: bool, index: usize) -> Option<usize> {
    if no_pin {
        return None;
    }
    match cpus {
        Some(list) if !list.is_empty() => Some(list[index % list.len()]),
        _ => {
            let online = core_affinity::get_core_ids().map_or(0, |ids| ids.len());
            (online > 0).then(|| index % online)
        }
    }
}

/// Pins the calling thread and shrinks its timer slack from the default 50 µs to 1 µs, so
/// fixed-rate sends and linger deadlines are kept to the microsecond.
pub fn prepare_thread(cpu: Option<usize>) {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("ringfeed-bench: could not pin a client thread to CPU {id}");
        }
    }
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000_u64, 0_u64, 0_u64, 0_u64);
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut time) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// User + system CPU time of the whole bench process.
pub fn process_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) } != 0 {
        return Duration::ZERO;
    }
    let of = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    of(usage.ru_utime) + of(usage.ru_stime)
}

/// User + system CPU time of another process on this host, from `/proc/PID/stat`.
pub fn pid_cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let total_ticks = ticks(11) + ticks(12);
    Ok(Duration::from_nanos(
        total_ticks * 1_000_000_000 / ticks_per_s,
    ))
}

/// Host-wide CPU time from `/proc/stat`, to tell how much of the machine other work used
/// while a run was measuring (a build next door shows up here, not in the figures' names).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    pub busy: Duration,
    pub total: Duration,
}

impl HostCpu {
    pub fn sample() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().next() else {
            return Self::default();
        };
        // user nice system idle iowait irq softirq steal
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if ticks.len() < 8 {
            return Self::default();
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let to_time = |t: u64| Duration::from_nanos(t * 1_000_000_000 / ticks_per_s);
        let total: u64 = ticks.iter().sum();
        let idle = ticks[3] + ticks[4];
        Self {
            busy: to_time(total - idle),
            total: to_time(total),
        }
    }

    /// Percent of all CPUs' time between `self` and `later` that went to anything but the
    /// CPU time named in `accounted` (the bench and the broker).
    pub fn other_busy_percent(self, later: Self, accounted: Duration) -> f64 {
        let total = later.total.saturating_sub(self.total).as_secs_f64();
        let busy = later.busy.saturating_sub(self.busy);
        if total <= 0.0 {
            return 0.0;
        }
        (busy.saturating_sub(accounted).as_secs_f64() / total * 100.0).max(0.0)
    }
}

/// What the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Host {
    pub hostname: String,
    pub kernel: String,
    pub cpus_online: usize,
    pub cpu_model: String,
}

impl Host {
    pub fn current() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_default();
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus_online: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_choice_is_round_robin() {
        assert_eq!(cpu_for(Some(&[3, 5]), false, 0), Some(3));
        assert_eq!(cpu_for(Some(&[3, 5]), false, 3), Some(5));
        assert_eq!(cpu_for(Some(&[3, 5]), true, 0), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        // Spin until this thread's CPU clock moves 30 ms (three of /proc's 10 ms ticks). Wall
        // time is no guide on a loaded machine (CI), so the bound is generous and only stops
        // a clock that never moves.
        let before = thread_cpu_time();
        let give_up = Instant::now() + Duration::from_secs(60);
        while thread_cpu_time() < before + Duration::from_millis(30) {
            assert!(
                Instant::now() < give_up,
                "the thread CPU clock does not advance"
            );
        }
        assert!(pid_cpu_time(std::process::id()).unwrap() > Duration::ZERO);
        assert!(process_cpu_time() > Duration::ZERO);
    }
}
