//! Simulated power cuts, the long form of `tests/crash_consistency.rs`: thousands of random
//! workloads on the fault-injecting disk, each cut at a random data write, recovered and
//! checked against what was acknowledged.
//!
//! Each iteration: 1 to 6 concurrent appenders send random batches (1 to 40 records of up to
//! 2 KiB), each waiting for durability (acks=all) or for the write (acks=1) at random, over
//! small segments so rolls happen; the power is cut after a random number of data writes;
//! the crash image is taken as a process crash, a plain power cut, or a power cut tearing the
//! last write at a random 512-byte boundary; the log is reopened and read back in full.
//! Checked: every batch acknowledged durable (acks=all) is read back byte-identical (lost
//! must be 0); after a process crash every written batch too; every batch read is
//! byte-identical to the one appended at that offset (no torn or foreign data); offsets are
//! contiguous; the recovered log accepts appends.
//!
//! Run: `cargo run --release -p ringfeed-storage --example power_cut -- --iterations 5000`

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use ringfeed_storage::batch::{build, with_base_offset, BatchHeader};
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{Clock, FlushPolicy, LogConfig, PartitionLog};

#[derive(Default)]
struct Totals {
    iterations: u64,
    batches_appended: u64,
    batches_acked_durable: u64,
    batches_recovered: u64,
    lost_durable: u64,
    lost_after_process_crash: u64,
    mismatched: u64,
    torn_tails_cut: u64,
}

/// What one workload appended: stored bytes by base offset, and which were acknowledged.
#[derive(Default)]
struct Appended {
    stored: BTreeMap<i64, Bytes>,
    durable: Vec<i64>,
    written: Vec<i64>,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        segment_age_max_ms: None,
        retention_ms: None,
        preallocate_step_bytes: 64 << 10,
        write_chunk_bytes: 16 << 10,
        tail_cache_bytes_max: 0,
        checkpoint_interval_ms: 0,
        flush: FlushPolicy::OnDemand,
        ..LogConfig::default()
    }
}

fn random_batch(rng: &mut SeededRng, tag: u64) -> Bytes {
    let records = 1 + rng.below(40) as usize;
    let value_bytes = rng.below(2048) as usize;
    let value: Vec<u8> = format!("{tag:016x}")
        .bytes()
        .cycle()
        .take(value_bytes)
        .collect();
    let list: Vec<build::Record<'_>> = (0..records)
        .map(|r| build::Record {
            key: None,
            value: Some(&value),
            timestamp_ms: 1_000 + r as i64,
        })
        .collect();
    build::batch(&list)
}

async fn workload(disk: &SimDisk, rng: &mut SeededRng) -> Appended {
    let dir = Path::new("/data/p0");
    let log = Rc::new(
        PartitionLog::open_on(disk.clone(), dir, config(), Clock::System)
            .await
            .expect("fresh open")
            .0,
    );
    let appended = Rc::new(RefCell::new(Appended::default()));
    let appenders = 1 + rng.below(6);
    let tasks: Vec<_> = (0..appenders)
        .map(|task| {
            let (log, appended) = (log.clone(), appended.clone());
            let mut rng = SeededRng::new(rng.next_u64());
            glommio::spawn_local(async move {
                for i in 0..(5 + rng.below(30)) {
                    let batch = random_batch(&mut rng, task << 32 | i);
                    let Ok(outcome) = log.append(batch.clone()).await else {
                        return;
                    };
                    appended.borrow_mut().stored.insert(
                        outcome.base_offset,
                        with_base_offset(&batch, outcome.base_offset),
                    );
                    let durable = rng.below(2) == 0;
                    let acked = if durable {
                        log.wait_durable(outcome.last_offset).await
                    } else {
                        log.wait_written(outcome.last_offset).await
                    };
                    if acked.is_err() {
                        return;
                    }
                    let mut appended = appended.borrow_mut();
                    if durable {
                        appended.durable.push(outcome.base_offset);
                    } else {
                        appended.written.push(outcome.base_offset);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    Rc::try_unwrap(appended)
        .ok()
        .expect("tasks done")
        .into_inner()
}

async fn iteration(seed: u64, totals: &mut Totals) {
    let mut rng = SeededRng::new(seed);
    let writes_total = {
        let disk = SimDisk::new();
        workload(&disk, &mut rng.clone()).await;
        disk.data_writes()
    };
    let disk = SimDisk::new();
    disk.power_cut_after_writes(1 + rng.below(writes_total));
    let appended = workload(&disk, &mut rng).await;
    let mode = match rng.below(3) {
        0 => CrashMode::ProcessCrash,
        1 => CrashMode::PowerCut,
        _ => CrashMode::PowerCutTearingLastWrite {
            keep_bytes: 512 * rng.below(64) as usize,
        },
    };
    let image = disk.crash_image(mode);
    let (log, report) =
        PartitionLog::open_on(image, Path::new("/data/p0"), config(), Clock::System)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: recovery refused after {mode:?}: {e}"));
    let recovered = read_all(&log).await;
    check(seed, mode, &appended, &recovered, totals);
    totals.torn_tails_cut += u64::from(report.truncated.is_some());
    log.append(random_batch(&mut rng, 0))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: append after recovery: {e}"));
}

fn check(
    seed: u64,
    mode: CrashMode,
    appended: &Appended,
    recovered: &BTreeMap<i64, Bytes>,
    totals: &mut Totals,
) {
    totals.iterations += 1;
    totals.batches_appended += appended.stored.len() as u64;
    totals.batches_acked_durable += appended.durable.len() as u64;
    totals.batches_recovered += recovered.len() as u64;
    for (offset, bytes) in recovered {
        if appended.stored.get(offset) != Some(bytes) {
            totals.mismatched += 1;
            eprintln!(
                "seed {seed} {mode:?}: batch at offset {offset} differs from what was appended"
            );
        }
    }
    totals.lost_durable += appended
        .durable
        .iter()
        .filter(|o| !recovered.contains_key(o))
        .count() as u64;
    if mode == CrashMode::ProcessCrash {
        totals.lost_after_process_crash += appended
            .written
            .iter()
            .filter(|o| !recovered.contains_key(o))
            .count() as u64;
    }
}

async fn read_all(log: &PartitionLog<SimDisk>) -> BTreeMap<i64, Bytes> {
    let mut batches = BTreeMap::new();
    let mut offset = log.log_start_offset();
    loop {
        let chunk = log.read(offset, 1 << 20).await.expect("read");
        if chunk.is_empty() {
            break;
        }
        for batch in chunk {
            let header = BatchHeader::parse(&batch).expect("header");
            assert_eq!(header.base_offset, offset, "offsets are contiguous");
            offset = header.last_offset() + 1;
            batches.insert(header.base_offset, batch);
        }
    }
    batches
}

fn main() {
    let mut iterations = 2000_u64;
    let mut first_seed = 1_u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--iterations N");
            }
            "--seed" => first_seed = args.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            _ => panic!("usage: power_cut [--iterations N] [--seed N]"),
        }
    }
    let totals = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let mut totals = Totals::default();
            for seed in first_seed..first_seed + iterations {
                iteration(seed, &mut totals).await;
            }
            totals
        })
        .expect("executor")
        .join()
        .expect("run");
    println!(
        "power cuts: {} (seeds {first_seed}..{}); batches appended {}, acknowledged durable {}, recovered {}; torn tails cut {}",
        totals.iterations,
        first_seed + iterations,
        totals.batches_appended,
        totals.batches_acked_durable,
        totals.batches_recovered,
        totals.torn_tails_cut
    );
    println!(
        "lost (acknowledged durable, not recovered): {}; lost after a process crash (written, not recovered): {}; recovered batches differing from what was appended: {}",
        totals.lost_durable, totals.lost_after_process_crash, totals.mismatched
    );
    let failed = totals.lost_durable + totals.lost_after_process_crash + totals.mismatched;
    std::process::exit(i32::from(failed > 0));
}
