//! Guards the replacement of a whole log by one entry (`FORMAT.md` § Replacement), what a
//! Raft follower does when it installs its leader's snapshot:
//! - afterwards the log holds exactly that entry, byte for byte, at its own offsets and the
//!   given Raft index and term; appends continue after it; every reopen (clean, after a
//!   power cut) agrees, and no file of the old log or of the replacement is left;
//! - a diverged follower: the entry lands on an old segment's base offset, or below the old
//!   log's end (the tail cache must not serve the old batches there);
//! - a power cut after every disk step of a replacement reopens as the old log or the new
//!   one, never refused and never a mix; a power cut while an open finishes a committed
//!   replacement still gives the new one;
//! - a refused entry (index 0 or the last ones, a damaged batch, a negative term) changes
//!   nothing on disk, and an IO error before the commit leaves the old log usable.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{header, open_sim, raft_entries, read_all, run, small_config, workload_batch};
use ringfeed_storage::batch::{control, stamped};
use ringfeed_storage::segment::{parse_file_name, SEGMENT_SUFFIX};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{
    Disk, Doze, EntryError, EntryOutcome, LeaderEpoch, LogConfig, PartitionLog,
};

const DIR: &str = "/data/topic-0";

type Entries = Vec<(u64, i32, Bytes)>;

fn cached_config() -> LogConfig {
    LogConfig {
        tail_cache_bytes_max: 1 << 20,
        ..small_config()
    }
}

async fn lead(log: &PartitionLog<SimDisk>, i: usize, term: i32) -> EntryOutcome {
    let checked = log.check(workload_batch(i)).expect("valid");
    log.append_as_leader(checked, term)
        .await
        .expect("leader append")
}

/// 60 leader entries over several segments (terms 1 to 4), durable, with the broker's files
/// beside them. Returns the entries.
async fn fill(disk: &SimDisk, log: &PartitionLog<SimDisk>) -> Entries {
    for i in 0..60 {
        lead(log, i, 1 + (i / 16) as i32).await;
    }
    log.wait_durable(log.log_end_offset() - 1)
        .await
        .expect("durable");
    write_broker_files(disk).await;
    let segments = names(disk)
        .iter()
        .filter(|n| parse_file_name(n, SEGMENT_SUFFIX).is_some())
        .count();
    assert!(segments >= 4, "the old log spans {segments} segments");
    raft_entries(log).await
}

/// The files the broker keeps beside a log: its producer snapshot and `transactions.seen`.
async fn write_broker_files(disk: &SimDisk) {
    for (name, contents) in [
        ("producer-state.snapshot", &b"the old log's producers"[..]),
        ("transactions.seen", &b""[..]),
    ] {
        disk.write_file_atomically(&Path::new(DIR).join(name), contents)
            .await
            .expect("broker file");
    }
}

/// The leader's entry `i` as its log stores it at `base_offset` in `term`.
fn leader_entry(i: usize, base_offset: i64, term: i32) -> Bytes {
    stamped(&workload_batch(i), base_offset, term)
}

fn names(disk: &SimDisk) -> Vec<String> {
    disk.paths()
        .iter()
        .filter(|p| p.parent() == Some(Path::new(DIR)))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// (index, term, base offset, bytes) of each entry: what a failure prints.
fn summary(entries: &Entries) -> Vec<(u64, i32, i64, usize)> {
    entries
        .iter()
        .map(|(index, term, batch)| (*index, *term, header(batch).base_offset, batch.len()))
        .collect()
}

/// The log holds exactly `expected`, whichever way it is read: by index and by offset,
/// its bounds, the term of each index and the leader-epoch cache.
async fn assert_log_is(log: &PartitionLog<SimDisk>, expected: &Entries, context: &str) {
    let got = raft_entries(log).await;
    assert_eq!(summary(&got), summary(expected), "{context}: entries");
    assert!(&got == expected, "{context}: the entries' bytes differ");
    let (first, last) = (expected.first().unwrap(), expected.last().unwrap());
    assert_eq!(
        (log.first_index(), log.last_index(), log.last_term()),
        (first.0, last.0, last.1),
        "{context}: indexes"
    );
    assert_eq!(
        (
            log.log_start_offset(),
            log.log_end_offset(),
            log.high_watermark()
        ),
        (
            header(&first.2).base_offset,
            header(&last.2).last_offset() + 1,
            header(&last.2).last_offset() + 1
        ),
        "{context}: offsets"
    );
    let batches: Vec<Bytes> = expected.iter().map(|e| e.2.clone()).collect();
    assert_eq!(read_all(log).await, batches, "{context}: reads by offset");
    let mut epochs: Vec<LeaderEpoch> = Vec::new();
    for (index, term, batch) in expected {
        assert_eq!(
            log.term_at(*index),
            Some(*term),
            "{context}: term of {index}"
        );
        if epochs.last().is_none_or(|e| e.epoch != *term) {
            epochs.push(LeaderEpoch {
                epoch: *term,
                start_offset: header(batch).base_offset,
                start_index: *index,
            });
        }
    }
    assert_eq!(log.leader_epochs(), epochs, "{context}: leader epochs");
    assert_eq!(log.term_at(first.0 - 1), None, "{context}: nothing before");
}

/// Nothing of the old log and nothing staged is left: one segment, the metadata of the new
/// log, and the broker's `transactions.seen` (its producer snapshot went with the old log).
fn assert_only_new_files(disk: &SimDisk, base_offset: i64) {
    let mut left = names(disk);
    left.sort();
    let segment = ringfeed_storage::segment::segment_file_name(base_offset);
    let expected = [
        segment.as_str(),
        "log.format",
        "recovery.checkpoint",
        "transactions.seen",
    ];
    let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "files after the replacement");
}

/// Replaces `log` with `entry` at `index`, checks the one-entry log, appends two leader
/// entries after it, and checks that a clean reopen and a power cut agree.
async fn replace_and_continue(
    disk: &SimDisk,
    log: &PartitionLog<SimDisk>,
    index: u64,
    entry: Bytes,
) {
    let term = ringfeed_storage::batch::partition_leader_epoch(&entry);
    let h = header(&entry);
    let other_handle = log.clone();
    let outcome = log
        .replace_with_entry(index, entry.clone())
        .await
        .expect("replace");
    assert_eq!(
        outcome,
        EntryOutcome {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            index,
            term
        }
    );
    let mut expected = vec![(index, term, entry.clone())];
    assert_log_is(&other_handle, &expected, "replaced").await;
    assert_eq!(log.terms_from_index().map(|t| t <= index), Some(true));
    assert_eq!(log.size_bytes(), entry.len() as u64);
    assert_eq!(log.stats().batches_appended, 0, "stats of the new log");
    assert_eq!(log.durable_offset(), h.last_offset() + 1, "durable");
    assert_only_new_files(disk, h.base_offset);
    // Appends continue after it, as a Raft leader's entries would.
    for (i, entry_term) in [(2000, term), (2001, term + 1)] {
        let next = lead(log, i, entry_term).await;
        let expected_base = header(&expected.last().unwrap().2).last_offset() + 1;
        assert_eq!(
            (next.index, next.base_offset),
            (index + expected.len() as u64, expected_base)
        );
        expected.push((
            next.index,
            entry_term,
            leader_entry(i, next.base_offset, entry_term),
        ));
    }
    log.wait_durable(log.log_end_offset() - 1)
        .await
        .expect("durable");
    assert_log_is(log, &expected, "after two appends").await;
    let unclean = open_sim(&disk.crash_image(CrashMode::PowerCut), small_config())
        .await
        .expect("open after a power cut");
    assert_log_is(&unclean, &expected, "after a power cut").await;
    log.close().await.expect("close");
    let clean = open_sim(disk, small_config()).await.expect("reopen");
    assert_log_is(&clean, &expected, "after a clean close").await;
}

#[test]
fn a_log_replaced_by_a_far_entry_holds_it_alone_and_continues_after_it() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, cached_config()).await.expect("open");
        let old = fill(&disk, &log).await;
        // Entries still unwritten and not durable: the replacement waits for them (no
        // write round or fdatasync of the old log may land on the new one).
        for i in 60..63 {
            lead(&log, i, 4).await;
        }
        assert!(log.durable_offset() < log.log_end_offset());
        let (old_last_index, old_end) = (old.len() as u64 + 3, log.log_end_offset());
        let index = old_last_index + 1_000;
        replace_and_continue(&disk, &log, index, leader_entry(500, old_end + 10_000, 9)).await;
    });
}

#[test]
fn a_control_entry_replaces_a_dormant_log() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        fill(&disk, &log).await;
        let mut dozed = false;
        for _ in 0..100 {
            if matches!(
                log.doze_if_idle(Duration::ZERO),
                Doze::Dozed | Doze::Dormant
            ) {
                dozed = true;
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        assert!(dozed && log.is_dormant(), "the log went dormant");
        let entry = stamped(&control::batch(2, &[]), 1 << 40, 7);
        replace_and_continue(&disk, &log, 1 << 33, entry).await;
    });
}

/// A diverged follower: the leader's entry starts where one of the old segments does (the
/// segment file's name is taken), or inside the old log, below its end, where the tail cache
/// holds old batches at the same offsets.
#[test]
fn a_diverged_follower_is_replaced_over_its_own_offsets() {
    run(|| async {
        for case in ["on a segment's base", "below the old end"] {
            let disk = SimDisk::new();
            let log = open_sim(&disk, cached_config()).await.expect("open");
            let old = fill(&disk, &log).await;
            let base_offset = match case {
                "on a segment's base" => {
                    let bases: Vec<i64> = names(&disk)
                        .iter()
                        .filter_map(|n| parse_file_name(n, SEGMENT_SUFFIX))
                        .collect();
                    bases[2]
                }
                _ => header(&old[old.len() - 3].2).base_offset + 1,
            };
            assert!(
                !log.read(base_offset, 1 << 20)
                    .await
                    .expect("old read")
                    .is_empty(),
                "{case}: the old log holds offset {base_offset}"
            );
            replace_and_continue(&disk, &log, 40, leader_entry(700, base_offset, 5)).await;
        }
    });
}

#[test]
fn a_log_never_replicated_gets_terms_from_the_entry_on() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        for i in 0..20 {
            log.append(workload_batch(i)).await.expect("plain append");
        }
        write_broker_files(&disk).await;
        assert_eq!(log.terms_from_index(), None);
        replace_and_continue(&disk, &log, 77, leader_entry(900, 5_000, 3)).await;
        let reopened = open_sim(&disk, small_config()).await.expect("reopen");
        assert_eq!(reopened.terms_from_index(), Some(77));
    });
}

/// Refusals change nothing: not a byte on disk, not the log in memory.
#[test]
fn refused_entries_leave_the_log_as_it_was() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let old = fill(&disk, &log).await;
        let good = leader_entry(800, 100_000, 6);
        let mut bad_crc = good.to_vec();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0x55;
        let negative_offset = stamped(&workload_batch(800), -5, 6);
        let refusals: [(&str, u64, Bytes); 5] = [
            ("index 0", 0, good.clone()),
            ("the last index", u64::MAX - 1, good.clone()),
            ("a damaged batch", 200, Bytes::from(bad_crc)),
            ("a negative term", 200, leader_entry(800, 100_000, -1)),
            ("a negative offset", 200, negative_offset),
        ];
        let steps = disk.steps();
        for (case, index, entry) in refusals {
            let refused = log.replace_with_entry(index, entry).await;
            let as_expected = match case {
                "index 0" => matches!(refused, Err(EntryError::InvalidIndex { index: 0 })),
                "the last index" => matches!(refused, Err(EntryError::InvalidIndex { .. })),
                "a negative term" => {
                    matches!(refused, Err(EntryError::TermGoesBack { term: -1, .. }))
                }
                _ => matches!(refused, Err(EntryError::Batch(_))),
            };
            assert!(as_expected, "{case}: {refused:?}");
            assert_eq!(disk.steps(), steps, "{case}: the disk was touched");
            assert!(log.fenced_error().is_none(), "{case}");
            assert_eq!(raft_entries(&log).await, old, "{case}");
        }
        let next = lead(&log, 60, 4).await;
        assert_eq!(next.index, old.len() as u64 + 1);
    });
}

/// An fdatasync of the staged entry fails: before the commit, so the old log is intact,
/// usable and not fenced, and nothing staged is left.
#[test]
fn an_io_error_before_the_commit_leaves_the_old_log_usable() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let old = fill(&disk, &log).await;
        disk.fail_next_fdatasync();
        let failed = log
            .replace_with_entry(500, leader_entry(800, 100_000, 6))
            .await;
        assert!(matches!(failed, Err(EntryError::Storage(_))), "{failed:?}");
        assert!(log.fenced_error().is_none());
        assert!(
            !names(&disk).iter().any(|n| n.starts_with("replacement-")),
            "{:?}",
            names(&disk)
        );
        assert_eq!(raft_entries(&log).await, old);
        lead(&log, 60, 4).await;
        let reopened = open_sim(&disk.crash_image(CrashMode::ProcessCrash), small_config())
            .await
            .expect("reopen");
        assert_eq!(raft_entries(&reopened).await[..old.len()], old[..]);
    });
}

/// A power cut after every disk step of a replacement (and a process crash, and a cut that
/// tears the last write): the directory reopens as the old log or the new one, whole, with
/// no staged file left, and a replacement tried again from there ends at the new log.
#[test]
fn a_power_cut_at_any_step_of_a_replacement_leaves_the_old_or_the_new_log() {
    run(|| async {
        let base = SimDisk::new();
        let old = {
            let log = open_sim(&base, cached_config()).await.expect("open");
            let old = fill(&base, &log).await;
            drop(log);
            old
        };
        let index = 5_000;
        let entry = leader_entry(600, 3_000_000, 8);
        let new: Entries = vec![(index, 8, entry.clone())];
        let modes = [
            CrashMode::PowerCut,
            CrashMode::ProcessCrash,
            CrashMode::PowerCutTearingLastWrite { keep_bytes: 512 },
        ];
        let (mut saw_old, mut saw_new) = (0, 0);
        for steps in 0.. {
            let image = base.crash_image(CrashMode::ProcessCrash);
            let log = open_sim(&image, cached_config()).await.expect("open");
            image.power_cut_after_steps(steps);
            let finished = log.replace_with_entry(index, entry.clone()).await.is_ok()
                && !image.is_powered_off();
            drop(log);
            for mode in modes {
                let context = format!("power cut after {steps} steps, {mode:?}");
                let after = image.crash_image(mode);
                let log = open_sim(&after, small_config())
                    .await
                    .unwrap_or_else(|e| panic!("{context}: refused: {e}"));
                let entries = raft_entries(&log).await;
                assert!(
                    entries == old || entries == new,
                    "{context}: neither the old log nor the new one: {:?}",
                    summary(&entries)
                );
                if entries == old {
                    saw_old += 1;
                    assert_log_is(&log, &old, &context).await;
                } else {
                    saw_new += 1;
                    assert_log_is(&log, &new, &context).await;
                    assert_only_new_files(&after, header(&entry).base_offset);
                }
                let staged: Vec<PathBuf> = after
                    .paths()
                    .into_iter()
                    .filter(|p| p.to_string_lossy().contains("replacement-"))
                    .collect();
                assert!(staged.is_empty(), "{context}: {staged:?}");
                log.replace_with_entry(index, entry.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{context}: replacing again: {e}"));
                assert_log_is(&log, &new, &context).await;
            }
            if finished {
                break;
            }
        }
        println!("power cuts: {saw_old} reopened as the old log, {saw_new} as the new one");
        assert!(saw_old > 10 && saw_new > 10, "old {saw_old}, new {saw_new}");
    });
}

/// Recovery finishes a committed replacement with the same steps, so a power cut during
/// that open, at any of its steps, still reopens as the new log.
#[test]
fn a_power_cut_while_an_open_finishes_a_replacement_still_gives_the_new_log() {
    run(|| async {
        let base = SimDisk::new();
        fill(&base, &open_sim(&base, small_config()).await.expect("open")).await;
        let (index, entry) = (5_000, leader_entry(600, 3_000_000, 8));
        let new: Entries = vec![(index, 8, entry.clone())];
        // The first power cut that leaves the replacement committed and nothing more.
        let committed = 'search: {
            for steps in 0.. {
                let image = base.crash_image(CrashMode::ProcessCrash);
                let log = open_sim(&image, small_config()).await.expect("open");
                image.power_cut_after_steps(steps);
                let done = log.replace_with_entry(index, entry.clone()).await.is_ok();
                let after = image.crash_image(CrashMode::PowerCut);
                if names(&after).iter().any(|n| n.ends_with(".segment")) {
                    break 'search after;
                }
                assert!(!done, "the replacement finished without a committed file");
            }
            unreachable!()
        };
        let mut opens_cut = 0;
        for steps in 0.. {
            let image = committed.crash_image(CrashMode::ProcessCrash);
            image.power_cut_after_steps(steps);
            let opened = open_sim(&image, small_config()).await.is_ok() && !image.is_powered_off();
            let after = image.crash_image(CrashMode::PowerCut);
            let log = open_sim(&after, small_config())
                .await
                .unwrap_or_else(|e| panic!("open cut after {steps} steps, then open: {e}"));
            assert_log_is(&log, &new, &format!("open cut after {steps} steps")).await;
            assert_only_new_files(&after, header(&entry).base_offset);
            if opened {
                break;
            }
            opens_cut += 1;
        }
        assert!(opens_cut > 10, "{opens_cut} steps in the finishing open");
    });
}
