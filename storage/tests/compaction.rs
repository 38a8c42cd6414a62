//! The log cleaner against a model (random keys, values, tombstones and appends, cleaned
//! many times with a map small enough to force several passes), on a Raft log, and with a
//! power cut after every mutating step of a pass (`storage/FORMAT.md` § Log cleaner).

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use common::{header, raft_entries, read_all, run, small_config};
use crc32c::crc32c;
use ringfeed_storage::batch::{build, read_varint, BATCH_HEADER_BYTES};
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{CleanOptions, Clock, LogConfig, NoCodec, PartitionLog, RecordCodec};

const DIR: &str = "/data/topic-0";

/// One record as a consumer sees it: offset, key, value (`None`: a tombstone), timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
}

fn read_bytes(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let length = read_varint(rest).expect("length");
    if length < 0 {
        return None;
    }
    let (bytes, tail) = rest.split_at(length as usize);
    *rest = tail;
    Some(bytes.to_vec())
}

/// The records of an uncompressed stored batch.
fn records_of(batch: &[u8]) -> Vec<Rec> {
    let h = header(batch);
    let mut rest = &batch[BATCH_HEADER_BYTES..];
    let mut out = Vec::new();
    for _ in 0..h.record_count {
        let length = read_varint(&mut rest).expect("record length") as usize;
        let (mut record, tail) = rest.split_at(length);
        rest = tail;
        record = &record[1..];
        let timestamp_delta = read_varint(&mut record).expect("ts");
        let offset_delta = read_varint(&mut record).expect("offset delta");
        let key = read_bytes(&mut record);
        let value = read_bytes(&mut record);
        out.push(Rec {
            offset: h.base_offset + offset_delta,
            key,
            value,
            timestamp: h.base_timestamp + timestamp_delta,
        });
    }
    assert!(rest.is_empty(), "records fill the batch");
    out
}

fn all_records(batches: &[Bytes]) -> Vec<Rec> {
    batches.iter().flat_map(|b| records_of(b)).collect()
}

/// What must not change about a batch, cleaned or not.
fn identity(batch: &[u8]) -> (i64, i64, i64, i16, i32, i32, i64) {
    let h = header(batch);
    (
        h.base_offset,
        h.last_offset(),
        h.producer_id,
        h.producer_epoch,
        h.base_sequence,
        ringfeed_storage::batch::partition_leader_epoch(batch),
        h.max_timestamp,
    )
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 2 << 10,
        index_interval_bytes: 256,
        ..small_config()
    }
}

async fn open(disk: &SimDisk, clock: &Clock) -> PartitionLog<SimDisk> {
    PartitionLog::open_on(disk.clone(), Path::new(DIR), config(), clock.clone())
        .await
        .expect("open")
        .0
}

/// A batch of `records` random records over `keys` keys, a fifth of them tombstones.
fn random_batch(rng: &mut SeededRng, keys: u64, now_ms: i64) -> Bytes {
    let count = rng.range(1, 4) as usize;
    let owned: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..count)
        .map(|_| {
            let key = format!("key-{}", rng.below(keys)).into_bytes();
            let value =
                (rng.below(5) != 0).then(|| format!("value-{}", rng.next_u64()).into_bytes());
            (key, value)
        })
        .collect();
    let records: Vec<build::Record<'_>> = owned
        .iter()
        .map(|(key, value)| build::Record {
            key: Some(key),
            value: value.as_deref(),
            timestamp_ms: now_ms,
        })
        .collect();
    build::batch(&records)
}

/// Checks one pass against the model: `original` is every record ever appended, `before`
/// and `after` the log's batches around the pass, `clean_end` where the pass stopped.
/// `first_below_end` is when each tombstone was first below a pass's end (no earlier than
/// its segment's first clean), updated here.
struct PassCheck<'a> {
    original: &'a [Rec],
    before: &'a [Bytes],
    after: &'a [Bytes],
    clean_end: i64,
    now_ms: i64,
    delete_retention_ms: i64,
    lag_ms: i64,
}

fn check_pass(check: &PassCheck<'_>, first_below_end: &mut HashMap<i64, i64>) {
    let PassCheck {
        original,
        before,
        after,
        clean_end,
        now_ms,
        delete_retention_ms,
        lag_ms,
    } = *check;
    // Every batch stays, with its offsets, producer fields and term; above the end, bytes.
    assert_eq!(before.len(), after.len(), "every batch stays");
    for (old, new) in before.iter().zip(after) {
        assert_eq!(identity(old), identity(new));
        if header(old).base_offset >= clean_end {
            assert_eq!(old, new, "a batch at or after the clean end is untouched");
        }
    }
    // Nothing younger than the compaction lag is touched.
    for (old, new) in before.iter().zip(after) {
        if header(old).max_timestamp > now_ms - lag_ms {
            assert_eq!(old, new, "a batch within the compaction lag is untouched");
        }
    }
    let by_offset: BTreeMap<i64, &Rec> = original.iter().map(|r| (r.offset, r)).collect();
    let kept = all_records(after);
    let mut last = -1;
    for rec in &kept {
        assert!(rec.offset > last, "offsets strictly increase");
        last = rec.offset;
        assert_eq!(
            Some(&rec),
            by_offset.get(&rec.offset),
            "a kept record is unchanged"
        );
        // No later record of its key lies below the end.
        if rec.offset < clean_end {
            let superseded = original
                .iter()
                .any(|r| r.key == rec.key && r.offset > rec.offset && r.offset < clean_end);
            assert!(!superseded, "{rec:?} is superseded below {clean_end}");
        }
    }
    let kept_offsets: std::collections::BTreeSet<i64> = kept.iter().map(|r| r.offset).collect();
    let before_offsets: std::collections::BTreeSet<i64> =
        all_records(before).iter().map(|r| r.offset).collect();
    // The latest record of each key stays, a tombstone only until its retention ran out.
    let mut latest: HashMap<&Option<Vec<u8>>, &Rec> = HashMap::new();
    for rec in original {
        latest.insert(&rec.key, rec);
    }
    for rec in latest.values() {
        if rec.offset >= clean_end || rec.value.is_some() {
            assert!(
                kept_offsets.contains(&rec.offset),
                "latest {rec:?} was removed (end {clean_end})"
            );
        } else if !kept_offsets.contains(&rec.offset) && before_offsets.contains(&rec.offset) {
            let since = first_below_end.get(&rec.offset).copied();
            assert!(
                since.is_some_and(|t| now_ms >= t + delete_retention_ms),
                "tombstone {rec:?} removed at {now_ms}, below the end since {since:?}"
            );
        }
    }
    for rec in original {
        if rec.value.is_none() && rec.offset < clean_end {
            first_below_end.entry(rec.offset).or_insert(now_ms);
        }
    }
    // Records at or after the end are all still there.
    for offset in before_offsets.range(clean_end..) {
        assert!(
            kept_offsets.contains(offset),
            "offset {offset} past the end removed"
        );
    }
}

/// Sometimes a batch boundary at or past `clean_end` (a replicated log is bounded at its
/// high watermark, which never goes back below what was cleaned), else no bound.
fn random_bound(rng: &mut SeededRng, batches: &[Bytes], clean_end: i64) -> i64 {
    if rng.below(3) != 0 {
        return i64::MAX;
    }
    let boundaries: Vec<i64> = batches
        .iter()
        .map(|b| header(b).base_offset)
        .filter(|&base| base >= clean_end)
        .collect();
    let at = rng.below(boundaries.len() as u64 + 1) as usize;
    boundaries.get(at).copied().unwrap_or(i64::MAX)
}

#[test]
fn cleaning_matches_the_model() {
    run(|| async {
        for seed in 0..6_u64 {
            let mut rng = SeededRng::new(seed);
            let now = Rc::new(Cell::new(1_000_000_i64));
            let clock = Clock::Manual(now.clone());
            let disk = SimDisk::new();
            let mut log = open(&disk, &clock).await;
            let keys = rng.range(3, 40);
            let mut original: Vec<Rec> = Vec::new();
            let mut first_below_end = HashMap::new();
            let delete_retention_ms = 1_000;
            let mut passes = 0;
            let mut multi_pass = false;
            let mut bounded_passes = 0;
            let mut clean_end = 0;
            for round in 0..40 {
                for _ in 0..rng.range(1, 12) {
                    let batch = random_batch(&mut rng, keys, now.get());
                    let outcome = log.append(batch.clone()).await.expect("append");
                    original.extend(records_of(&common::stored_at(&batch, outcome.base_offset)));
                }
                log.wait_written(log.log_end_offset() - 1)
                    .await
                    .expect("written");
                now.set(now.get() + rng.range(0, 300) as i64);
                if rng.below(3) == 0 {
                    let lag_ms = if rng.below(3) == 0 { 500 } else { 0 };
                    let before = read_all(&log).await;
                    let clean_below = random_bound(&mut rng, &before, clean_end);
                    let options = CleanOptions {
                        map_bytes: rng.range(100, 3_000) as usize,
                        delete_retention_ms: delete_retention_ms as u64,
                        min_compaction_lag_ms: lag_ms as u64,
                        io_bytes_per_second: None,
                        clean_below,
                    };
                    let start = log
                        .dirty_summary(lag_ms as u64, 1_000)
                        .await
                        .expect("summary");
                    let outcome = log.clean(&options, &NoCodec).await.expect("clean");
                    let after = read_all(&log).await;
                    passes += 1;
                    assert!(
                        outcome.clean_end_offset <= clean_below,
                        "seed {seed}: cleaned to {} past the bound {clean_below}",
                        outcome.clean_end_offset
                    );
                    clean_end = outcome.clean_end_offset;
                    bounded_passes += usize::from(clean_below < i64::MAX);
                    if outcome.segments_rewritten > 0 && start.dirty_bytes > 0 {
                        let end = log
                            .dirty_summary(lag_ms as u64, 1_000)
                            .await
                            .expect("summary");
                        multi_pass |= end.dirty_bytes > 0 && lag_ms == 0;
                    }
                    check_pass(
                        &PassCheck {
                            original: &original,
                            before: &before,
                            after: &after,
                            clean_end: outcome.clean_end_offset,
                            now_ms: now.get(),
                            delete_retention_ms,
                            lag_ms,
                        },
                        &mut first_below_end,
                    );
                }
                if round % 7 == 6 {
                    // What was cleaned and the cleaner's state survive a reopen, and the
                    // offline check (every batch, every index against its segment) passes.
                    let before = read_all(&log).await;
                    log.close().await.expect("close");
                    let report = ringfeed_storage::check::check_partition(&disk, Path::new(DIR))
                        .await
                        .expect("check");
                    assert!(report.is_clean(), "seed {seed}: {:?}", report.findings);
                    log = open(&disk, &clock).await;
                    assert_eq!(before, read_all(&log).await, "seed {seed}: reopened");
                }
            }
            final_clean(&log, &now, &original, &mut first_below_end, seed).await;
            assert!(passes > 5, "seed {seed}: {passes} passes");
            assert!(bounded_passes > 0, "seed {seed}: no pass was bounded");
            assert!(
                multi_pass || seed > 0,
                "seed {seed}: the small map forced several passes"
            );
            log.close().await.expect("close");
        }
    });
}

/// Cleans to the end, lets every tombstone's retention run out and cleans again: no
/// superseded record and no tombstone is left below the end.
async fn final_clean(
    log: &PartitionLog<SimDisk>,
    now: &Cell<i64>,
    original: &[Rec],
    first_below_end: &mut HashMap<i64, i64>,
    seed: u64,
) {
    let delete_retention_ms = 1_000;
    let options = CleanOptions {
        map_bytes: 1 << 20,
        delete_retention_ms: delete_retention_ms as u64,
        ..CleanOptions::default()
    };
    log.clean(&options, &NoCodec).await.expect("clean");
    now.set(now.get() + 2 * delete_retention_ms);
    log.clean(&options, &NoCodec).await.expect("clean");
    let before = read_all(log).await;
    let outcome = log.clean(&options, &NoCodec).await.expect("clean");
    let after = read_all(log).await;
    check_pass(
        &PassCheck {
            original,
            before: &before,
            after: &after,
            clean_end: outcome.clean_end_offset,
            now_ms: now.get(),
            delete_retention_ms,
            lag_ms: 0,
        },
        first_below_end,
    );
    let end = outcome.clean_end_offset;
    assert!(end > 0, "seed {seed}: something was cleaned");
    for rec in all_records(&after) {
        assert!(
            rec.offset >= end || rec.value.is_some(),
            "seed {seed}: tombstone {rec:?} outlived its retention"
        );
    }
}

/// The Raft numbering survives: the same entries at the same indexes and terms, and a
/// batch whose records all went stays as an empty batch (recordCount 0).
#[test]
fn a_raft_log_keeps_every_index_and_term() {
    run(|| async {
        let disk = SimDisk::new();
        let now = Rc::new(Cell::new(1_000_000_i64));
        let clock = Clock::Manual(now.clone());
        let log = open(&disk, &clock).await;
        for i in 0..200_i64 {
            let key = format!("key-{}", i % 5);
            let value = format!("value-{i}");
            let batch = build::batch(&[build::Record {
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                timestamp_ms: now.get(),
            }]);
            let checked = log.check(batch).expect("check");
            log.append_as_leader(checked, 1 + (i / 50) as i32)
                .await
                .expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        let entries = raft_entries(&log).await;
        let outcome = log
            .clean(&CleanOptions::default(), &NoCodec)
            .await
            .expect("clean");
        assert!(outcome.segments_rewritten > 0 && outcome.records_removed > 100);
        let cleaned = raft_entries(&log).await;
        assert_eq!(entries.len(), cleaned.len());
        let mut empty = 0;
        for ((index, term, old), (new_index, new_term, new)) in entries.iter().zip(&cleaned) {
            assert_eq!((index, term), (new_index, new_term));
            assert_eq!(identity(old), identity(new));
            empty += usize::from(header(new).record_count == 0);
        }
        assert!(empty > 100, "{empty} emptied batches");
        // A follower catching up from the cleaned leader takes its entries as they are, at
        // the same indexes and terms (a compacted entry passes a follower's checks).
        let (follower, _) = PartitionLog::open_on(
            disk.clone(),
            Path::new("/data/topic-1"),
            config(),
            clock.clone(),
        )
        .await
        .expect("open the follower");
        for (_, _, batch) in &cleaned {
            follower
                .append_replicated(batch.clone())
                .await
                .expect("a cleaned entry replicates");
        }
        follower
            .wait_written(follower.log_end_offset() - 1)
            .await
            .expect("written");
        assert_eq!(raft_entries(&follower).await, cleaned);
        follower.close().await.expect("close");
        // And so does a reopen that rebuilds every index from the cleaned segments.
        log.close().await.expect("close");
        for path in disk.paths() {
            if path.extension().is_some_and(|e| e == "index") {
                ringfeed_storage::Disk::remove_file(&disk, &path)
                    .await
                    .expect("remove");
            }
        }
        let log = open(&disk, &clock).await;
        assert_eq!(cleaned, raft_entries(&log).await);
    });
}

/// A follower's check of a replicated entry takes what the cleaner writes and nothing
/// looser: more records than offsets, offset deltas going back or past the batch are refused.
#[test]
fn a_compacted_entry_is_checked_as_such() {
    use ringfeed_storage::batch::{validate, validate_compacted};
    let records: Vec<build::Record<'_>> = (0..3)
        .map(|_| build::Record {
            key: Some(b"k"),
            value: Some(b"v"),
            timestamp_ms: 1,
        })
        .collect();
    let batch = build::batch(&records).to_vec();
    let max = 1 << 20;
    assert!(validate(&batch, max).is_ok() && validate_compacted(&batch, max).is_ok());
    let patched = |last_offset_delta: i32, record_count: i32| {
        let mut b = batch.clone();
        b[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        b[57..61].copy_from_slice(&record_count.to_be_bytes());
        let crc = crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    };
    // Three records over offsets 0..=5: compacted, not a producer's.
    assert!(validate(&patched(5, 3), max).is_err());
    assert!(validate_compacted(&patched(5, 3), max).is_ok());
    // Three records cannot fit offsets 0..=1, and record 2's delta is past the batch.
    assert!(validate_compacted(&patched(1, 3), max).is_err());
    assert!(
        validate_compacted(&patched(2, 2), max).is_err(),
        "bytes after the records"
    );
}

/// A codec whose "compression" is the identity: batches marked gzip that it can open.
struct IdentityCodec;

impl RecordCodec for IdentityCodec {
    fn decompress(&self, _attributes: i16, section: &[u8]) -> Option<Vec<u8>> {
        Some(section.to_vec())
    }
    fn compress(&self, _attributes: i16, records: &[u8]) -> Option<Vec<u8>> {
        Some(records.to_vec())
    }
}

/// `records` as a batch whose attributes say gzip (its section is plain: only a codec that
/// knows, like [`IdentityCodec`], opens it).
fn marked_compressed(records: &[build::Record<'_>]) -> Bytes {
    let mut b = build::batch(records).to_vec();
    b[22] |= 1;
    let crc = crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

/// A codec that opens batches but cannot compress them again.
struct OpenOnlyCodec;

impl RecordCodec for OpenOnlyCodec {
    fn decompress(&self, _attributes: i16, section: &[u8]) -> Option<Vec<u8>> {
        Some(section.to_vec())
    }
    fn compress(&self, _attributes: i16, _records: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Appends k=old (in a batch marked compressed, with j=1), then a tombstone of k, then
/// filler so both are sealed; cleans three times with `codec` and delete.retention.ms 0.
async fn clean_past_a_compressed_batch(codec: &dyn RecordCodec) -> Vec<Bytes> {
    let disk = SimDisk::new();
    let clock = Clock::Manual(Rc::new(Cell::new(1_000_000_i64)));
    let log = open(&disk, &clock).await;
    let record = |key: &'static [u8], value: Option<&'static [u8]>| build::Record {
        key: Some(key),
        value,
        timestamp_ms: 1_000_000,
    };
    let compressed = marked_compressed(&[record(b"k", Some(b"old")), record(b"j", Some(b"1"))]);
    log.append(compressed).await.expect("append");
    log.append(build::batch(&[record(b"k", None)]))
        .await
        .expect("append");
    for i in 0..60 {
        let key: &'static [u8] = format!("filler-{i}").into_bytes().leak();
        log.append(build::batch(&[record(key, Some(&[7; 100]))]))
            .await
            .expect("append");
    }
    log.wait_written(log.log_end_offset() - 1)
        .await
        .expect("written");
    let options = CleanOptions {
        delete_retention_ms: 0,
        ..CleanOptions::default()
    };
    for _ in 0..3 {
        log.clean(&options, codec).await.expect("clean");
    }
    // New dirty data with other keys, cleaned after a reopen: the pass rewrites everything
    // from the start with the tombstone's retention over and k not in its map (what was left
    // whole is remembered on disk).
    for i in 0..60 {
        let key: &'static [u8] = format!("more-{i}").into_bytes().leak();
        log.append(build::batch(&[record(key, Some(&[7; 100]))]))
            .await
            .expect("append");
    }
    log.close().await.expect("close");
    let log = open(&disk, &clock).await;
    log.clean(&options, codec).await.expect("clean");
    read_all(&log).await
}

fn keys_of(batch: &[u8]) -> Vec<(i64, Option<Vec<u8>>)> {
    records_of(batch)
        .into_iter()
        .map(|r| (r.offset, r.key))
        .collect()
}

/// A batch the cleaner cannot open, or cannot compress again once cleaned, may hold an older
/// value of a key: a tombstone after it stays, however old. One it can: its superseded
/// record goes, it is compressed again, and the tombstone goes too.
#[test]
fn a_tombstone_after_a_batch_left_whole_stays() {
    run(|| async {
        let original = marked_compressed(&[
            build::Record {
                key: Some(b"k"),
                value: Some(b"old"),
                timestamp_ms: 1_000_000,
            },
            build::Record {
                key: Some(b"j"),
                value: Some(b"1"),
                timestamp_ms: 1_000_000,
            },
        ]);
        for left_whole in [
            clean_past_a_compressed_batch(&NoCodec).await,
            clean_past_a_compressed_batch(&OpenOnlyCodec).await,
        ] {
            assert_eq!(left_whole[0], common::stored_at(&original, 0));
            assert_eq!(
                keys_of(&left_whole[1]),
                [(2, Some(b"k".to_vec()))],
                "the tombstone stays"
            );
        }
        let cleaned = clean_past_a_compressed_batch(&IdentityCodec).await;
        assert_eq!(header(&cleaned[0]).attributes & 7, 1, "compressed again");
        assert_eq!(
            keys_of(&cleaned[0]),
            [(1, Some(b"j".to_vec()))],
            "k=old went"
        );
        assert_eq!(
            header(&cleaned[1]).record_count,
            0,
            "then the tombstone went"
        );
    });
}

/// Records without a key are removed (Kafka's cleaner drops them), and a segment younger
/// than `min.compaction.lag.ms` is not touched.
#[test]
fn keyless_records_go_and_young_segments_stay() {
    run(|| async {
        let disk = SimDisk::new();
        let now = Rc::new(Cell::new(1_000_000_i64));
        let clock = Clock::Manual(now.clone());
        let log = open(&disk, &clock).await;
        for i in 0..100 {
            let value = format!("v{i}");
            let batch = build::batch(&[build::Record {
                key: None,
                value: Some(value.as_bytes()),
                timestamp_ms: now.get(),
            }]);
            log.append(batch).await.expect("append");
        }
        let options = CleanOptions {
            min_compaction_lag_ms: 10_000,
            ..CleanOptions::default()
        };
        let untouched = log.clean(&options, &NoCodec).await.expect("clean");
        assert_eq!(untouched.segments_rewritten, 0, "too young to clean");
        now.set(now.get() + 10_000);
        let outcome = log.clean(&options, &NoCodec).await.expect("clean");
        assert!(outcome.keyless_removed > 50);
        let left = all_records(&read_all(&log).await);
        assert!(left.iter().all(|r| r.offset >= outcome.clean_end_offset));
    });
}

/// A log to clean, deterministic: returns the disk (no power cut armed) and the clock.
async fn crash_setup() -> (SimDisk, Clock) {
    let disk = SimDisk::new();
    let clock = Clock::Manual(Rc::new(Cell::new(1_000_000)));
    let log = open(&disk, &clock).await;
    let mut rng = SeededRng::new(99);
    for _ in 0..120 {
        let batch = random_batch(&mut rng, 12, clock.now_ms());
        log.append(batch).await.expect("append");
    }
    log.close().await.expect("close");
    (disk, clock)
}

fn crash_options() -> CleanOptions {
    CleanOptions {
        map_bytes: 1 << 20,
        delete_retention_ms: 0, // tombstones go too: a half-done swap could resurrect values
        ..CleanOptions::default()
    }
}

/// A power cut after every mutating step of a pass: the log reopens as it was before the
/// pass or as the pass left it, never a mix, and with no cleaned file left behind.
#[test]
fn a_power_cut_at_any_step_of_a_pass_leaves_the_old_or_the_new_log() {
    run(|| async {
        let (disk, clock) = crash_setup().await;
        let old = {
            let log = open(&disk.crash_image(CrashMode::ProcessCrash), &clock).await;
            all_records(&read_all(&log).await)
        };
        let new = {
            let image = disk.crash_image(CrashMode::ProcessCrash);
            let log = open(&image, &clock).await;
            let outcome = log.clean(&crash_options(), &NoCodec).await.expect("clean");
            assert!(outcome.segments_rewritten >= 2 && outcome.tombstones_removed > 0);
            log.close().await.expect("close");
            let log = open(&image, &clock).await;
            all_records(&read_all(&log).await)
        };
        assert_ne!(old, new);
        let (mut saw_old, mut saw_new) = (0, 0);
        for steps in 0.. {
            let image = disk.crash_image(CrashMode::ProcessCrash);
            let log = open(&image, &clock).await;
            image.power_cut_after_steps(steps);
            let finished =
                log.clean(&crash_options(), &NoCodec).await.is_ok() && !image.is_powered_off();
            drop(log);
            let after = image.crash_image(CrashMode::PowerCut);
            let log = open(&after, &clock).await;
            let records = all_records(&read_all(&log).await);
            assert!(
                records == old || records == new,
                "power cut after {steps} steps: a log neither old nor new"
            );
            if records == old {
                saw_old += 1;
            } else {
                saw_new += 1;
            }
            let leftovers: Vec<_> = after
                .paths()
                .into_iter()
                .filter(|p| p.to_string_lossy().ends_with(".cleaned"))
                .collect();
            assert!(leftovers.is_empty(), "after {steps} steps: {leftovers:?}");
            // The next pass works from there and ends at the same log.
            log.clean(&crash_options(), &NoCodec)
                .await
                .expect("clean again");
            assert_eq!(all_records(&read_all(&log).await), new);
            if finished {
                break;
            }
        }
        assert!(saw_old > 3 && saw_new > 3, "old {saw_old}, new {saw_new}");
    });
}

/// Readers served from the tail cache after a pass get what the pass left, not the batches
/// as they were appended: the same as a reader of the log reopened (empty cache).
#[test]
fn the_tail_cache_does_not_bring_back_what_a_pass_removed() {
    run(|| async {
        let disk = SimDisk::new();
        let clock = Clock::System;
        let cached = LogConfig {
            tail_cache_bytes_max: 1 << 20,
            ..config()
        };
        let log =
            PartitionLog::open_on(disk.clone(), Path::new(DIR), cached.clone(), clock.clone())
                .await
                .expect("open")
                .0;
        let mut rng = SeededRng::new(11);
        for _ in 0..60 {
            log.append(random_batch(&mut rng, 4, 1_000))
                .await
                .expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        let before = all_records(&read_all(&log).await).len();
        let outcome = log
            .clean(&CleanOptions::default(), &NoCodec)
            .await
            .expect("clean");
        assert!(outcome.records_removed > 0, "the pass removed records");
        let after = read_all(&log).await;
        assert!(all_records(&after).len() < before, "a reader sees the pass");
        log.close().await.expect("close");
        let reopened = PartitionLog::open_on(disk.clone(), Path::new(DIR), cached, clock)
            .await
            .expect("open")
            .0;
        assert_eq!(
            read_all(&reopened).await,
            after,
            "the same as the log reopened"
        );
        reopened.close().await.expect("close");
    });
}
