//! Guards the dormant form of a log (issue 16 item 3): an idle log closes its files and drops
//! its appender, tail cache and spare index capacity, and waking it for the next append,
//! read, truncation or cleaning pass loses, reorders or duplicates nothing; what needs no
//! file (long polls, retention, close, removal) works on it asleep; a crash while dormant
//! recovers everything acknowledged. A model test drives random interleavings of appends,
//! reads, idle periods, long polls and crashes against a `Vec` of acknowledged batches.
//! Simulated disk and clock: no test sleeps.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::{read_all, run, small_config, stored_at, workload_batch};
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{CleanOptions, Clock, Doze, LogConfig, NoCodec, PartitionLog, SimClock};

const DIR: &str = "/data/topic-0";
const IDLE: Duration = Duration::from_secs(30);

/// Lets every ready task run (flushers, fdatasync tasks, checkpoint writers).
async fn settle() {
    for _ in 0..10 {
        ringfeed_storage::sim::yield_once().await;
        glommio::timer::sleep(Duration::from_micros(50)).await;
    }
}

async fn open(disk: &SimDisk, time: &SimClock, config: LogConfig) -> PartitionLog<SimDisk> {
    PartitionLog::open_on(
        disk.clone(),
        Path::new(DIR),
        config,
        Clock::Simulated(time.clone()),
    )
    .await
    .expect("open")
    .0
}

/// Lets `IDLE` pass and checks until the log sleeps (an fdatasync first if it needs one).
async fn put_to_sleep(log: &PartitionLog<SimDisk>, time: &SimClock) {
    log.doze_if_idle(IDLE); // the check that finds the last use
    time.advance(IDLE);
    for _ in 0..5 {
        match log.doze_if_idle(IDLE) {
            Doze::Dozed | Doze::Dormant => return,
            Doze::Syncing | Doze::Busy => settle().await,
            Doze::Active => time.advance(IDLE),
        }
    }
    panic!("the log did not go dormant");
}

fn cached_config() -> LogConfig {
    LogConfig {
        tail_cache_bytes_max: 64 << 10,
        ..small_config()
    }
}

#[test]
fn an_idle_log_closes_its_files_and_wakes_for_the_next_append_and_read() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, cached_config()).await;
        let mut expected = Vec::new();
        for i in 0..40 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            expected.push(stored_at(&batch, outcome.base_offset));
        }
        // acks=1 only: the log makes its data durable before it sleeps.
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        assert!(disk.open_files() > 1, "several segments, each open");
        assert_eq!(log.doze_if_idle(IDLE), Doze::Active, "just used");
        time.advance(Duration::from_secs(29));
        assert_eq!(log.doze_if_idle(IDLE), Doze::Active, "not idle long enough");
        time.advance(Duration::from_secs(2));
        assert_eq!(log.doze_if_idle(IDLE), Doze::Syncing);
        settle().await;
        assert_eq!(log.durable_offset(), log.log_end_offset());
        assert_eq!(log.doze_if_idle(IDLE), Doze::Dozed);
        assert!(log.is_dormant());
        assert_eq!(disk.open_files(), 0, "a dormant log holds no file");
        assert_eq!(log.doze_if_idle(IDLE), Doze::Dormant);

        // Offsets and sizes answer from memory, asleep.
        let end = log.log_end_offset();
        assert_eq!(log.high_watermark(), end);
        assert!(log.size_bytes() > 0);
        assert!(log.read(end, 1000).await.expect("read").is_empty());
        assert!(log.is_dormant(), "a read at the end needs no file");

        // A read wakes it and sees every batch, in order.
        assert_eq!(read_all(&log).await, expected);
        assert!(!log.is_dormant());
        put_to_sleep(&log, &time).await;

        // An append wakes it, lands right after the last batch, and the page it shares with
        // the batch before it is rewritten whole.
        for i in 40..50 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            assert_eq!(outcome.base_offset, end + expected_records(&expected[40..]));
            expected.push(stored_at(&batch, outcome.base_offset));
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        assert_eq!(read_all(&log).await, expected);
        put_to_sleep(&log, &time).await;

        // Closed asleep, reopened clean: everything there.
        log.close().await.expect("close");
        drop(log);
        let (again, report) = PartitionLog::open_on(
            disk.clone(),
            Path::new(DIR),
            cached_config(),
            Clock::Simulated(time.clone()),
        )
        .await
        .expect("reopen");
        assert!(report.clean_shutdown);
        assert_eq!(read_all(&again).await, expected);
    });
}

fn expected_records(batches: &[Bytes]) -> i64 {
    batches
        .iter()
        .map(|b| common::header(b).last_offset() - common::header(b).base_offset + 1)
        .sum()
}

#[test]
fn a_long_poll_parked_on_a_dormant_log_is_woken_by_the_next_append() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        log.append(workload_batch(0)).await.expect("append");
        put_to_sleep(&log, &time).await;
        let end = log.log_end_offset();
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for_data(end).await })
        };
        settle().await;
        assert!(log.is_dormant(), "a parked long poll is not a use");
        log.append(workload_batch(1)).await.expect("append");
        waiter.await;
        assert_eq!(log.read(end, 1 << 20).await.expect("read").len(), 1);
    });
}

#[test]
fn a_crash_while_dormant_recovers_every_acknowledged_batch() {
    run(|| async {
        for mode in [CrashMode::ProcessCrash, CrashMode::PowerCut] {
            let time = SimClock::new(1_000_000);
            let disk = SimDisk::new();
            let log = open(&disk, &time, small_config()).await;
            let mut expected = Vec::new();
            for i in 0..30 {
                let batch = workload_batch(i);
                let outcome = log.append(batch.clone()).await.expect("append");
                expected.push(stored_at(&batch, outcome.base_offset));
            }
            log.wait_written(log.log_end_offset() - 1)
                .await
                .expect("written");
            put_to_sleep(&log, &time).await;
            let image = disk.crash_image(mode);
            let after = open(&image, &time, small_config()).await;
            assert_eq!(read_all(&after).await, expected, "{mode:?}");
            assert_eq!(after.log_end_offset(), log.log_end_offset());
        }
    });
}

#[test]
fn retention_and_delete_records_work_on_a_dormant_log_without_waking_it() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let config = LogConfig {
            retention_bytes: Some(40 << 10),
            ..small_config()
        };
        let log = open(&disk, &time, config.clone()).await;
        for i in 0..120 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        put_to_sleep(&log, &time).await;
        let deleted = log.enforce_retention().await.expect("retention");
        assert!(deleted > 0);
        assert!(log.is_dormant(), "retention needs no file");
        let start = log.log_start_offset();
        let target = start + (log.high_watermark() - start) / 2;
        log.delete_records_before(target).await.expect("delete");
        assert!(log.is_dormant());
        assert_eq!(log.log_start_offset(), target);
        let batches = read_all(&log).await;
        assert!(common::header(&batches[0]).last_offset() >= target);
        let reopened = {
            log.close().await.expect("close");
            drop(log);
            open(&disk, &time, config).await
        };
        assert_eq!(reopened.log_start_offset(), target);
        assert_eq!(read_all(&reopened).await, batches);
    });
}

#[test]
fn truncation_and_raft_reads_wake_a_dormant_log() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        for i in 0..40 {
            let checked = log.check(workload_batch(i)).expect("valid");
            log.append_as_leader(checked, 1 + (i / 15) as i32)
                .await
                .expect("leader append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let before = common::raft_entries(&log).await;
        put_to_sleep(&log, &time).await;
        assert_eq!(common::raft_entries(&log).await, before, "read asleep");
        put_to_sleep(&log, &time).await;
        log.truncate_from_index(25).await.expect("truncate");
        assert_eq!(log.last_index(), 24);
        let checked = log.check(workload_batch(99)).expect("valid");
        let outcome = log.append_as_leader(checked, 4).await.expect("append");
        assert_eq!(outcome.index, 25);
        log.wait_durable(outcome.last_offset)
            .await
            .expect("durable");
        let after = common::raft_entries(&log).await;
        assert_eq!(after[..24], before[..24]);
        assert_eq!(after.len(), 25);
        put_to_sleep(&log, &time).await;
        // A crash after the truncation, asleep: the cut holds.
        let image = disk.crash_image(CrashMode::PowerCut);
        let recovered = open(&image, &time, small_config()).await;
        assert_eq!(common::raft_entries(&recovered).await, after);
    });
}

#[test]
fn a_cleaning_pass_wakes_a_dormant_log() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        for i in 0..60 {
            log.append(workload_batch(i % 7)).await.expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        put_to_sleep(&log, &time).await;
        let summary = log.dirty_summary(0, 0).await.expect("summary");
        assert!(summary.dirty_bytes > 0);
        assert!(log.is_dormant(), "a summary needs no file");
        let outcome = log
            .clean(&CleanOptions::default(), &NoCodec)
            .await
            .expect("clean");
        assert!(outcome.segments_rewritten > 0);
        let cleaned = read_all(&log).await;
        put_to_sleep(&log, &time).await;
        assert_eq!(disk.open_files(), 0);
        assert_eq!(read_all(&log).await, cleaned);
    });
}

#[test]
fn a_failed_wake_fails_only_its_operation_and_the_next_one_succeeds() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        let first = log.append(workload_batch(0)).await.expect("append");
        put_to_sleep(&log, &time).await;
        disk.fail_next_open();
        assert!(log.append(workload_batch(1)).await.is_err(), "EMFILE");
        assert!(log.is_dormant(), "left as it was");
        assert_eq!(disk.open_files(), 0, "nothing half-opened is kept");
        assert!(
            log.fenced_error().is_none(),
            "an open failure fences nothing"
        );
        let second = log.append(workload_batch(1)).await.expect("append");
        assert_eq!(second.base_offset, first.last_offset + 1);
        log.wait_written(second.last_offset).await.expect("written");
        assert_eq!(read_all(&log).await.len(), 2);
    });
}

#[test]
fn nothing_sleeps_under_an_append_and_racing_wakers_wake_it_once() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        // Fill the active segment so the next append rolls, and stall the roll in its
        // fdatasync: the append holds the gate across awaits.
        for i in 0..12 {
            log.append(workload_batch(i)).await.expect("append");
        }
        disk.stall_fdatasyncs();
        let roller = {
            let log = log.clone();
            glommio::spawn_local(async move {
                for i in 12..30 {
                    log.append(workload_batch(i)).await.expect("append");
                }
            })
        };
        settle().await;
        time.advance(IDLE * 3);
        assert_eq!(log.doze_if_idle(IDLE), Doze::Active);
        time.advance(IDLE * 3);
        assert_eq!(log.doze_if_idle(IDLE), Doze::Busy, "an append is in flight");
        disk.release_fdatasyncs();
        roller.await;
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        let expected = read_all(&log).await;
        assert_eq!(expected.len(), 30);
        put_to_sleep(&log, &time).await;

        // A read, an append and a Raft-free timestamp lookup all find it dormant at once.
        let reader = {
            let log = log.clone();
            glommio::spawn_local(async move { read_all(&log).await })
        };
        let append_task = {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(workload_batch(30)).await })
        };
        let lookup = {
            let log = log.clone();
            glommio::spawn_local(async move { log.offset_for_timestamp(0).await })
        };
        let read = reader.await;
        assert_eq!(
            read[..30],
            expected[..],
            "the read sees every batch in order"
        );
        let appended = append_task.await.expect("append");
        assert_eq!(
            appended.base_offset,
            common::header(&expected[29]).last_offset() + 1
        );
        assert_eq!(lookup.await.expect("lookup").map(|(o, _)| o), Some(0));
        let segments = disk
            .paths()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .count();
        assert_eq!(disk.open_files(), segments, "each segment opened once");
    });
}

#[test]
fn removing_a_dormant_log_deletes_its_directory() {
    run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let log = open(&disk, &time, small_config()).await;
        for i in 0..30 {
            log.append(workload_batch(i)).await.expect("append");
        }
        put_to_sleep(&log, &time).await;
        log.remove().await.expect("remove");
        assert!(disk.paths().iter().all(|p| !p.starts_with(DIR)));
    });
}

/// One step of the model test.
#[derive(Debug, Clone, Copy)]
enum Step {
    Append(usize),
    AwaitDurable,
    Read(u64),
    /// Time passes and the idle check runs, as the broker's sweep does.
    Idle(Duration),
    /// A long poll at the end, left parked.
    Park,
    Crash(CrashMode),
    Reopen,
}

fn random_step(rng: &mut SeededRng) -> Step {
    match rng.below(20) {
        0..=6 => Step::Append(rng.range(1, 5) as usize),
        7 => Step::AwaitDurable,
        8..=10 => Step::Read(rng.next_u64()),
        11..=15 => Step::Idle(Duration::from_secs(rng.range(1, 50))),
        16 => Step::Park,
        17 => Step::Crash(if rng.below(2) == 0 {
            CrashMode::ProcessCrash
        } else {
            CrashMode::PowerCut
        }),
        _ => Step::Reopen,
    }
}

/// What the model knows: every batch acknowledged (written) in order, and how many of them
/// a completed fdatasync or a dormant spell made durable.
struct Model {
    batches: Vec<Bytes>,
    durable: usize,
}

/// One random walk: the log under test, its disk and clock, the model, and the long polls
/// parked on the log (where each waits, and whether it completed).
struct Walk {
    time: SimClock,
    disk: SimDisk,
    config: LogConfig,
    log: PartitionLog<SimDisk>,
    model: Model,
    parked: Vec<(i64, Rc<Cell<bool>>)>,
    next_batch: usize,
    dozes: usize,
}

impl Walk {
    async fn step(&mut self, step: Step, context: &str) {
        match step {
            Step::Append(count) => {
                for _ in 0..count {
                    let batch = workload_batch(self.next_batch);
                    self.next_batch += 1;
                    let outcome = self.log.append(batch.clone()).await.expect("append");
                    self.log
                        .wait_written(outcome.last_offset)
                        .await
                        .expect("written");
                    self.model
                        .batches
                        .push(stored_at(&batch, outcome.base_offset));
                }
            }
            Step::AwaitDurable => {
                let end = self.log.log_end_offset();
                if end > 0 {
                    self.log.wait_durable(end - 1).await.expect("durable");
                }
                self.model.durable = self.model.batches.len();
            }
            Step::Read(pick) => self.read(pick, context).await,
            Step::Idle(spell) => {
                // The flusher's idle exit and the doze both run on this clock.
                self.time.advance(spell);
                settle().await;
                if self.log.doze_if_idle(IDLE) == Doze::Dozed {
                    self.dozes += 1;
                    assert_eq!(self.disk.open_files(), 0, "{context}");
                    assert_eq!(
                        self.log.durable_offset(),
                        self.log.log_end_offset(),
                        "{context}: dormant means durable"
                    );
                    self.model.durable = self.model.batches.len();
                }
                settle().await;
            }
            Step::Park => {
                let end = self.log.log_end_offset();
                let done = Rc::new(Cell::new(false));
                let (waiting, woken) = (self.log.clone(), done.clone());
                glommio::spawn_local(async move {
                    waiting.wait_for_data(end).await;
                    woken.set(true);
                })
                .detach();
                self.parked.push((end, done));
            }
            Step::Crash(mode) => self.crash(mode, context).await,
            Step::Reopen => {
                self.log.close().await.expect("close");
                self.parked.clear();
                self.log = open(&self.disk, &self.time, self.config.clone()).await;
                self.model.durable = self.model.batches.len();
            }
        }
        // A parked poll completes exactly when data arrives past where it waited.
        settle().await;
        let high_watermark = self.log.high_watermark();
        for (end, done) in &self.parked {
            assert_eq!(
                done.get(),
                high_watermark > *end,
                "{context}: poll at {end}"
            );
        }
    }

    async fn read(&mut self, pick: u64, context: &str) {
        let batches = &self.model.batches;
        if batches.is_empty() {
            return;
        }
        let i = (pick % batches.len() as u64) as usize;
        let offset = common::header(&batches[i]).base_offset;
        let read = self.log.read(offset, 4 << 10).await.expect("read");
        assert!(!read.is_empty(), "{context}");
        assert_eq!(read[..], batches[i..i + read.len()], "{context}");
    }

    /// A crash, then recovery: every durable batch is back, nothing unacknowledged or out
    /// of order is, and a process crash loses nothing written.
    async fn crash(&mut self, mode: CrashMode, context: &str) {
        settle().await;
        self.disk = self.disk.crash_image(mode);
        self.parked.clear();
        self.log = open(&self.disk, &self.time, self.config.clone()).await;
        let recovered = read_all(&self.log).await;
        let model = &mut self.model;
        assert!(
            recovered.len() >= model.durable && recovered.len() <= model.batches.len(),
            "{context}: recovered {} of {} with {} durable",
            recovered.len(),
            model.batches.len(),
            model.durable
        );
        assert_eq!(recovered[..], model.batches[..recovered.len()], "{context}");
        if mode == CrashMode::ProcessCrash {
            assert_eq!(recovered.len(), model.batches.len(), "{context}");
        }
        model.batches.truncate(recovered.len());
        model.durable = model.batches.len();
    }
}

#[test]
fn random_appends_reads_idle_spells_and_crashes_match_a_vec() {
    run(|| async {
        let mut dozes = 0;
        for seed in 0..24_u64 {
            let mut rng = SeededRng::new(seed);
            let time = SimClock::new(1_000_000);
            let disk = SimDisk::new();
            let config = LogConfig {
                tail_cache_bytes_max: [0, 16 << 10][rng.below(2) as usize],
                ..small_config()
            };
            let log = open(&disk, &time, config.clone()).await;
            let mut walk = Walk {
                time,
                disk,
                config,
                log,
                model: Model {
                    batches: Vec::new(),
                    durable: 0,
                },
                parked: Vec::new(),
                next_batch: 0,
                dozes: 0,
            };
            for step_number in 0..120 {
                let step = random_step(&mut rng);
                let context = format!("seed {seed} step {step_number} {step:?}");
                walk.step(step, &context).await;
            }
            assert_eq!(read_all(&walk.log).await, walk.model.batches, "seed {seed}");
            dozes += walk.dozes;
        }
        assert!(dozes > 50, "the walks went dormant {dozes} times");
    });
}
