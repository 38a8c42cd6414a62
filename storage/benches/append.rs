//! Storage append benchmark: the partition log against the raw `O_DIRECT` ceiling of the same
//! disk, in one run, at 16 KiB and 1 MiB batches of 1 KiB records.
//!
//! For each batch size it prints:
//! - MB/s appending without waiting for any fdatasync (write-behind only), and the ceiling:
//!   plain page-aligned `DmaFile` writes of the same size, one at a time, into a
//!   preallocated file;
//! - MB/s and append→durable latency with one fdatasync per batch, and the ceiling: a raw
//!   write followed by fdatasync;
//! - MB/s and append→durable latency with 8 concurrent appenders sharing fdatasyncs (group
//!   commit), and how many batches each fdatasync covered.
//!
//! Run: `cargo bench -p ringfeed-storage --bench append -- --dir DIR` (DIR on the disk to
//! measure; not tmpfs). Targets: no-sync append ≥ 90% of the raw write bandwidth at 1 MiB;
//! fsync'd append p99 ≤ 1.2 × raw write+fdatasync p99.

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use glommio::io::{DmaFile, OpenOptions};
use hdrhistogram::Histogram;
use ringfeed_storage::batch::build;
use ringfeed_storage::{FlushPolicy, LogConfig, PartitionLog};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Partition-log append throughput and durability latency vs. the raw O_DIRECT ceiling"
)]
struct Args {
    /// Directory on the disk to measure (a scratch subdirectory is created and removed).
    #[arg(long, default_value = "./bench-scratch")]
    dir: PathBuf,
    /// Bytes written per bandwidth case.
    #[arg(long, default_value_t = 256 << 20)]
    bytes_per_case: u64,
    /// Batches timed per latency case.
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Alternating log/raw repeats per case (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Concurrent appenders in the group-commit case.
    #[arg(long, default_value_t = 8)]
    appenders: usize,
    /// Batch sizes to run, in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16 << 10, 1 << 20])]
    batch_bytes: Vec<usize>,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

const RECORD_VALUE_BYTES: usize = 1024;

fn main() {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).expect("bench directory");
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .io_memory(1 << 20)
        .spawn(move || async move { run(args).await })
        .expect("executor");
    handle.join().expect("bench");
}

async fn run(args: Args) {
    println!(
        "ringfeed storage append benchmark (dir {}, {} MiB per bandwidth case, {} alternating repeats, medians)",
        args.dir.display(),
        args.bytes_per_case >> 20,
        args.repeats
    );
    for &batch_bytes in &args.batch_bytes {
        let batch = batch_of(batch_bytes);
        let raw_block = batch.len().next_multiple_of(4096);
        println!(
            "\n== batch {} bytes ({} records of {RECORD_VALUE_BYTES} B; raw block {raw_block} B)",
            batch.len(),
            batch_records(batch_bytes)
        );
        bandwidth_cases(&args, &batch, raw_block).await;
        latency_cases(&args, &batch, raw_block).await;
    }
    let _ = std::fs::remove_dir_all(args.dir.join("scratch"));
}

/// Unsynced appends against raw writes at queue depth 1 (the same size, as specified) and
/// at queue depth 8 (what the device can take).
async fn bandwidth_cases(args: &Args, batch: &Bytes, raw_block: usize) {
    let count = (args.bytes_per_case / batch.len() as u64).max(1) as usize;
    let (mut log, mut raw_qd1, mut raw_qd8) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        raw_qd1.push(
            raw_writes(
                &args.dir,
                raw_block,
                count,
                RawMode::Write { queue_depth: 1 },
            )
            .await
            .mb_per_s,
        );
        log.push(log_no_sync(&args.dir, batch, count).await);
        raw_qd8.push(
            raw_writes(
                &args.dir,
                raw_block,
                count,
                RawMode::Write { queue_depth: 8 },
            )
            .await
            .mb_per_s,
        );
    }
    let (log, raw_qd1, raw_qd8) = (median(&mut log), median(&mut raw_qd1), median(&mut raw_qd8));
    println!("  no sync      log {log:>8.1} MB/s   raw QD1 {raw_qd1:>8.1} MB/s (ratio {:.2})   raw QD8 {raw_qd8:>8.1} MB/s (ratio {:.2})", log / raw_qd1, log / raw_qd8);
}

/// One fdatasync per batch against raw write+fdatasync, and group commit.
async fn latency_cases(args: &Args, batch: &Bytes, raw_block: usize) {
    let (mut log_runs, mut raw_runs, mut group_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeats {
        raw_runs.push(
            raw_writes(
                &args.dir,
                raw_block,
                args.latency_samples,
                RawMode::WriteSync,
            )
            .await,
        );
        log_runs.push(log_sync_each(&args.dir, batch, args.latency_samples).await);
        group_runs
            .push(log_group_commit(&args.dir, batch, args.latency_samples, args.appenders).await);
    }
    let (log, raw, group) = (merge(&log_runs), merge(&raw_runs), merge(&group_runs));
    println!(
        "  sync each    log {:>8.1} MB/s   raw w+fsync {:>6.1} MB/s   ratio {:.2}",
        log.mb_per_s,
        raw.mb_per_s,
        log.mb_per_s / raw.mb_per_s
    );
    print_latency("    log append→durable", &log.latency_us);
    print_latency("    raw write+fdatasync", &raw.latency_us);
    println!(
        "    p99 ratio (target ≤ 1.20): {:.2}",
        p(&log.latency_us, 99.0) as f64 / p(&raw.latency_us, 99.0) as f64
    );
    println!(
        "  group commit {} appenders: log {:>8.1} MB/s ({:.1} batches per fdatasync)",
        args.appenders, group.mb_per_s, group.batches_per_sync
    );
    print_latency("    log append→durable", &group.latency_us);
}

/// Median bandwidth and batches per sync; all latency samples together.
fn merge(runs: &[LatencyRun]) -> LatencyRun {
    let mut mb = runs.iter().map(|r| r.mb_per_s).collect::<Vec<_>>();
    let mut per_sync = runs.iter().map(|r| r.batches_per_sync).collect::<Vec<_>>();
    let mut latency_us = histogram();
    for run in runs {
        latency_us.add(&run.latency_us).expect("same bounds");
    }
    LatencyRun {
        mb_per_s: median(&mut mb),
        latency_us,
        batches_per_sync: median(&mut per_sync),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn batch_records(batch_bytes: usize) -> usize {
    // A 1 KiB-value record costs its value plus about 10 bytes of framing.
    ((batch_bytes - 61) / (RECORD_VALUE_BYTES + 10)).max(1)
}

fn batch_of(batch_bytes: usize) -> Bytes {
    build::filler(
        batch_records(batch_bytes),
        RECORD_VALUE_BYTES,
        1_700_000_000_000,
    )
}

/// The library defaults (32 MiB preallocation steps, 4 MiB tail cache, 256 KiB write
/// chunks), with room for the 1 MiB batches of 1 KiB records.
fn bench_config() -> LogConfig {
    LogConfig {
        batch_bytes_max: 2 << 20,
        flush: FlushPolicy::OnDemand,
        ..LogConfig::default()
    }
}

async fn fresh_log(dir: &Path) -> PartitionLog {
    let path = dir.join("scratch").join("log");
    let _ = std::fs::remove_dir_all(&path);
    PartitionLog::open(&path, bench_config())
        .await
        .expect("open log")
        .0
}

async fn log_no_sync(dir: &Path, batch: &Bytes, count: usize) -> f64 {
    let log = fresh_log(dir).await;
    let start = Instant::now();
    let mut last = 0;
    for _ in 0..count {
        last = log.append(batch.clone()).await.expect("append").last_offset;
    }
    log.wait_written(last).await.expect("written");
    let elapsed = start.elapsed();
    log.close().await.expect("close");
    mb_per_s(batch.len() * count, elapsed)
}

struct LatencyRun {
    mb_per_s: f64,
    latency_us: Histogram<u64>,
    batches_per_sync: f64,
}

async fn log_sync_each(dir: &Path, batch: &Bytes, count: usize) -> LatencyRun {
    let log = fresh_log(dir).await;
    let mut latency_us = histogram();
    let start = Instant::now();
    for _ in 0..count {
        let sent = Instant::now();
        let outcome = log.append(batch.clone()).await.expect("append");
        log.wait_durable(outcome.last_offset)
            .await
            .expect("durable");
        latency_us
            .record(sent.elapsed().as_micros() as u64)
            .expect("in range");
    }
    let elapsed = start.elapsed();
    log.close().await.expect("close");
    LatencyRun {
        mb_per_s: mb_per_s(batch.len() * count, elapsed),
        latency_us,
        batches_per_sync: 1.0,
    }
}

async fn log_group_commit(dir: &Path, batch: &Bytes, count: usize, appenders: usize) -> LatencyRun {
    let log = fresh_log(dir).await;
    let latency_us = Rc::new(std::cell::RefCell::new(histogram()));
    let start = Instant::now();
    let per_appender = count.div_ceil(appenders);
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (log, batch, latency_us) = (log.clone(), batch.clone(), latency_us.clone());
            glommio::spawn_local(async move {
                for _ in 0..per_appender {
                    let sent = Instant::now();
                    let outcome = log.append(batch.clone()).await.expect("append");
                    log.wait_durable(outcome.last_offset)
                        .await
                        .expect("durable");
                    latency_us
                        .borrow_mut()
                        .record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = start.elapsed();
    let fdatasyncs = log.stats().fdatasyncs;
    let latency_us = Rc::into_inner(latency_us).expect("tasks done").into_inner();
    let batches = per_appender * appenders;
    log.close().await.expect("close");
    LatencyRun {
        mb_per_s: mb_per_s(batch.len() * batches, elapsed),
        latency_us,
        batches_per_sync: batches as f64 / fdatasyncs.max(1) as f64,
    }
}

#[derive(Clone, Copy)]
enum RawMode {
    /// Writes only, `queue_depth` in flight.
    Write { queue_depth: usize },
    /// One write then one fdatasync, each pair timed.
    WriteSync,
}

/// The ceiling: page-aligned `DmaFile` writes of `block` bytes into a preallocated file.
async fn raw_writes(dir: &Path, block: usize, count: usize, mode: RawMode) -> LatencyRun {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let path = scratch.join("raw.dat");
    // Prime glommio's per-device IOPOLL probe with a non-empty file (see storage io.rs).
    std::fs::write(&path, [0_u8; 4096]).expect("probe file");
    let file: DmaFile = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .expect("open raw file");
    file.pre_allocate((block * count) as u64, false)
        .await
        .expect("preallocate");
    let mut latency_us = histogram();
    let start = Instant::now();
    match mode {
        RawMode::WriteSync => {
            for i in 0..count {
                let buffer = filled_buffer(&file, block);
                let sent = Instant::now();
                file.write_at(buffer, (i * block) as u64)
                    .await
                    .expect("raw write");
                file.fdatasync().await.expect("raw fdatasync");
                latency_us
                    .record(sent.elapsed().as_micros() as u64)
                    .expect("in range");
            }
        }
        RawMode::Write { queue_depth } => {
            for wave in (0..count).collect::<Vec<_>>().chunks(queue_depth) {
                let writes = wave
                    .iter()
                    .map(|&i| file.write_at(filled_buffer(&file, block), (i * block) as u64));
                for written in futures::future::join_all(writes).await {
                    written.expect("raw write");
                }
            }
        }
    }
    let elapsed = start.elapsed();
    file.close().await.expect("close");
    std::fs::remove_file(&path).expect("remove raw file");
    LatencyRun {
        mb_per_s: mb_per_s(block * count, elapsed),
        latency_us,
        batches_per_sync: 1.0,
    }
}

fn filled_buffer(file: &DmaFile, block: usize) -> glommio::io::DmaBuffer {
    let mut buffer = file.alloc_dma_buffer(block);
    buffer.as_bytes_mut().fill(0x5a);
    buffer
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn p(histogram: &Histogram<u64>, percentile: f64) -> u64 {
    histogram.value_at_percentile(percentile)
}

fn print_latency(label: &str, h: &Histogram<u64>) {
    println!(
        "{label:<26} µs: p50 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>6}  (n={})",
        p(h, 50.0),
        p(h, 99.0),
        p(h, 99.9),
        h.max(),
        h.len()
    );
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}
