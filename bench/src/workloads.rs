//! The three workloads (produce, consume, end-to-end): topic set-up, splitting the work among
//! producer and consumer threads, and collecting what they measured.
//!
//! A run has one [`RunContext`]: the clock every thread shares, the measured window
//! (warm-up ends at `measure_start_ns`), and a hard deadline after which every thread stops.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::{Acks, Cli, StartFrom, Workload};
use crate::consume::{self, ConsumeConfig, ConsumerSpec};
use crate::produce::{self, ProduceConfig, ProducerSpec};
use crate::progress::Progress;
use crate::stats::{LiveCounters, RoleStats};
use crate::system::{cpu_for, pid_cpu_time, process_cpu_time, Clock, HostCpu};
use crate::topic::{ensure_topic, list_offsets, Layout, LogEnd};

/// What every thread of one run shares. Cheap to clone (the counters are behind an `Arc`).
#[derive(Clone, Debug)]
pub struct RunContext {
    pub clock: Clock,
    pub counters: Arc<LiveCounters>,
    /// Written into every record so consumers time only this run's records.
    pub run_id: u64,
    pub measure_start_ns: u64,
    /// End of the measured window for time-bound runs.
    pub measure_end_ns: Option<u64>,
    pub deadline_ns: u64,
}

impl RunContext {
    pub fn new(
        clock: Clock,
        warmup: Duration,
        duration: Option<Duration>,
        timeout: Duration,
    ) -> Self {
        let now_ns = clock.now_ns();
        let measure_start_ns = now_ns + warmup.as_nanos() as u64;
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Self {
            clock,
            counters: Arc::new(LiveCounters::default()),
            run_id,
            measure_start_ns,
            measure_end_ns: duration.map(|d| measure_start_ns + d.as_nanos() as u64),
            deadline_ns: now_ns + timeout.as_nanos() as u64,
        }
    }

    pub fn abort(&self) {
        self.counters.abort.store(true, Ordering::Relaxed);
    }

    pub fn aborted(&self) -> bool {
        self.counters.aborted()
    }
}

/// Everything one run measured.
#[derive(Debug)]
pub struct RunResult {
    pub bootstrap: String,
    pub partitions: usize,
    pub produce: Option<RoleStats>,
    pub consume: Option<RoleStats>,
    /// Messages written before a consume run so it had something to read (not measured).
    pub fill_messages: u64,
    pub measure_start_ns: u64,
    pub measure_end_ns: Option<u64>,
    pub wall: Duration,
    pub client_cpu: Duration,
    pub broker_cpu: Option<Duration>,
    /// Percent of the host's CPU time used by neither the bench nor the broker (when
    /// `--broker-pid` names it) during the run: noise in the figures.
    pub other_busy_percent: f64,
    pub deadline_hit: bool,
}

pub fn run(cli: &Cli, bootstrap: &str) -> io::Result<RunResult> {
    let layout = ensure_topic(bootstrap, &cli.topic, cli.partitions, cli.api_versions)?;
    if layout.partitions() != cli.partitions as usize {
        eprintln!(
            "ringfeed-bench: topic {} already has {} partitions; using them (asked for {})",
            cli.topic,
            layout.partitions(),
            cli.partitions
        );
    }
    let broker_cpu_before = cli.broker_pid.and_then(|pid| pid_cpu_time(pid).ok());
    let client_cpu_before = process_cpu_time();
    let host_before = HostCpu::sample();
    let clock = Clock::start();
    let mut fill_messages = 0;
    if cli.workload == Workload::Consume && cli.from == StartFrom::Earliest {
        fill_messages = fill_if_short(cli, &layout)?;
    }
    let context = Arc::new(RunContext::new(
        clock,
        cli.warmup(),
        cli.duration(),
        cli.timeout(),
    ));
    let progress = (!cli.quiet).then(|| Progress::start(cli, context.clone()));
    let (produce, consume) = match cli.workload {
        Workload::Produce => (Some(run_producers(cli, &layout, &context)), None),
        Workload::Consume => (None, Some(run_consume_only(cli, &layout, &context)?)),
        Workload::E2e => {
            let (produce, consume) = run_end_to_end(cli, &layout, &context)?;
            (Some(produce), Some(consume))
        }
    };
    if let Some(progress) = progress {
        progress.stop();
    }
    let wall = Duration::from_nanos(clock.now_ns());
    let broker_cpu = match (cli.broker_pid, broker_cpu_before) {
        (Some(pid), Some(before)) => pid_cpu_time(pid)
            .ok()
            .map(|after| after.saturating_sub(before)),
        _ => None,
    };
    let client_cpu = process_cpu_time().saturating_sub(client_cpu_before);
    let accounted = client_cpu + broker_cpu.unwrap_or_default();
    Ok(RunResult {
        bootstrap: bootstrap.to_string(),
        partitions: layout.partitions(),
        produce,
        consume,
        fill_messages,
        measure_start_ns: context.measure_start_ns,
        measure_end_ns: context.measure_end_ns,
        wall,
        client_cpu,
        broker_cpu,
        other_busy_percent: host_before.other_busy_percent(HostCpu::sample(), accounted),
        deadline_hit: clock.now_ns() >= context.deadline_ns,
    })
}

fn produce_config(cli: &Cli, layout: &Layout) -> Arc<ProduceConfig> {
    Arc::new(ProduceConfig {
        layout: layout.clone(),
        message_size_bytes: cli.message_size_bytes,
        batch_size_bytes: cli.batch_size_bytes,
        linger: cli.linger(),
        compression: cli.compression.codec(),
        acks: cli.acks.wire(),
        max_in_flight: cli.max_in_flight,
    })
}

/// Producer `index`'s partitions: its own share when there are enough partitions, otherwise
/// every partition, starting at a different one per producer.
fn producer_partitions(index: usize, producers: usize, partitions: usize) -> Vec<i32> {
    if partitions >= producers {
        (0..partitions)
            .filter(|p| p % producers == index)
            .map(|p| p as i32)
            .collect()
    } else {
        (0..partitions)
            .map(|p| ((p + index) % partitions) as i32)
            .collect()
    }
}

/// Runs the producers to completion and merges what they measured.
fn run_producers(cli: &Cli, layout: &Layout, context: &Arc<RunContext>) -> RoleStats {
    let config = produce_config(cli, layout);
    let producers = cli.producers;
    context
        .counters
        .producers_running
        .store(producers as u64, Ordering::Relaxed);
    let handles: Vec<_> = (0..producers)
        .map(|index| {
            let spec = ProducerSpec {
                partitions: producer_partitions(index, producers, layout.partitions()),
                messages: cli.messages.map(|n| {
                    n / producers as u64 + u64::from((index as u64) < n % producers as u64)
                }),
                rate_msgs_per_s: cli.rate().map(|rate| rate / producers as f64),
                cpu: cpu_for(cli.cpus.as_deref(), cli.no_pin, index),
            };
            produce::spawn(config.clone(), spec, context.clone())
        })
        .collect();
    let mut stats = Vec::new();
    for handle in handles {
        stats.extend(handle.join().expect("producer thread does not panic"));
        context
            .counters
            .producers_running
            .fetch_sub(1, Ordering::Relaxed);
    }
    RoleStats::merge(stats)
}

/// Before a consume run from the log start: produce what is missing so the topic holds at
/// least `--messages` records. Unmeasured, unpaced, acks=1, its own run id.
fn fill_if_short(cli: &Cli, layout: &Layout) -> io::Result<u64> {
    let Some(wanted) = cli.messages else {
        return Ok(0);
    };
    let starts = list_offsets(layout, LogEnd::Start)?;
    let ends = list_offsets(layout, LogEnd::End)?;
    let held: i64 = ends
        .iter()
        .zip(&starts)
        .map(|(end, start)| end - start)
        .sum();
    let missing = wanted.saturating_sub(held.max(0) as u64);
    if missing == 0 {
        return Ok(0);
    }
    eprintln!(
        "ringfeed-bench: filling {} with {missing} messages before consuming",
        layout.topic
    );
    let mut fill = cli.clone();
    fill.messages = Some(missing);
    fill.rate_msgs_per_s = None;
    fill.acks = Acks::One;
    let context = Arc::new(RunContext::new(
        Clock::start(),
        Duration::ZERO,
        None,
        cli.timeout(),
    ));
    let filled = run_producers(&fill, layout, &context);
    if let Some(error) = filled.first_error {
        return Err(io::Error::other(format!("filling the topic: {error}")));
    }
    Ok(filled.messages)
}

/// Spawns the consumers over the layout's partitions, each starting at `starts[p]`.
fn spawn_consumers(
    cli: &Cli,
    layout: &Layout,
    context: &Arc<RunContext>,
    starts: &[i64],
    ends: Option<&[i64]>,
    follow_producers: bool,
) -> Vec<std::thread::JoinHandle<crate::stats::ThreadStats>> {
    let consumers = cli.consumers.min(layout.partitions());
    if consumers < cli.consumers {
        eprintln!("ringfeed-bench: {consumers} consumers (one partition each at least)");
    }
    let config = Arc::new(ConsumeConfig {
        layout: layout.clone(),
        fetch_partition_bytes_max: cli.fetch_partition_bytes_max,
        fetch_wait_ms_max: cli.fetch_wait_ms_max,
        messages: if follow_producers { None } else { cli.messages },
        follow_producers,
    });
    (0..consumers)
        .map(|index| {
            let partitions: Vec<usize> = (0..layout.partitions())
                .filter(|p| p % consumers == index)
                .collect();
            let spec = ConsumerSpec {
                partitions: partitions.iter().map(|&p| p as i32).collect(),
                start_offsets: partitions.iter().map(|&p| starts[p]).collect(),
                end_offsets: ends.map(|ends| partitions.iter().map(|&p| ends[p]).collect()),
                cpu: cpu_for(cli.cpus.as_deref(), cli.no_pin, cli.producers + index),
            };
            consume::spawn(config.clone(), spec, context.clone())
        })
        .collect()
}

fn run_consume_only(
    cli: &Cli,
    layout: &Layout,
    context: &Arc<RunContext>,
) -> io::Result<RoleStats> {
    let ends = list_offsets(layout, LogEnd::End)?;
    let (starts, bounded) = match cli.from {
        StartFrom::Earliest => (list_offsets(layout, LogEnd::Start)?, Some(ends.as_slice())),
        StartFrom::Latest => (ends.clone(), None),
    };
    let handles = spawn_consumers(cli, layout, context, &starts, bounded, false);
    let per_thread = handles
        .into_iter()
        .map(|h| h.join().expect("consumer thread does not panic"))
        .collect();
    Ok(RoleStats::merge(per_thread))
}

fn run_end_to_end(
    cli: &Cli,
    layout: &Layout,
    context: &Arc<RunContext>,
) -> io::Result<(RoleStats, RoleStats)> {
    let starts = list_offsets(layout, LogEnd::End)?;
    // Consumers wait at the tail before the first record is sent.
    context
        .counters
        .producers_running
        .store(cli.producers as u64, Ordering::Relaxed);
    let consumers = spawn_consumers(cli, layout, context, &starts, None, true);
    let produce = run_producers(cli, layout, context);
    let per_thread = consumers
        .into_iter()
        .map(|h| h.join().expect("consumer thread does not panic"))
        .collect();
    Ok((produce, RoleStats::merge(per_thread)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_shared_out() {
        assert_eq!(producer_partitions(0, 2, 4), [0, 2]);
        assert_eq!(producer_partitions(1, 2, 4), [1, 3]);
        assert_eq!(producer_partitions(1, 3, 2), [1, 0]);
    }
}
