//! The log cleaner with transactions (`storage/src/cleaner.rs`, Kafka's `LogCleaner` with
//! `CleanedTransactionMetadata`), against a model: random keys, values and tombstones,
//! written plainly or in transactions of three producers that commit or abort, with
//! markers; cleaned many times with small maps. Checked after every pass: every batch
//! stays; nothing at or above the LSO is touched; a `read_committed` reader (the Java
//! consumer's algorithm, over the aborted list the cleaner left) sees only committed
//! records, unchanged, and the latest committed value of every key; aborted records below
//! the clean end are gone; an aborted entry is never left whose marker is gone. Then a power
//! cut after every step of the passes that remove aborted records and markers.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use common::{header, read_all, run, small_config};
use ringfeed_storage::batch::{build, control, read_varint, BATCH_HEADER_BYTES};
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{
    AbortedRange, CleanOptions, CleanerTxns, Clock, Disk, LogConfig, NoCodec, PartitionLog,
    StorageError,
};

const DIR: &str = "/data/topic-0";
const PRODUCERS: i64 = 3;
const TRANSACTIONAL_FLAG: i16 = 0x10;

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

fn aborted_list_path() -> PathBuf {
    Path::new(DIR).join("aborted.model")
}

/// The broker's side, modelled: open transactions, the aborted list, and (for the crash
/// test) the list persisted on the simulated disk when the cleaner asks to forget entries.
#[derive(Default)]
struct ModelTxns {
    open: RefCell<BTreeMap<i64, i64>>,
    aborted: RefCell<Vec<AbortedRange>>,
    high_watermark: Cell<i64>,
    persist_on: Option<SimDisk>,
    forgotten: RefCell<Vec<i64>>,
    /// A replicated log's view: no marker is ever retired (`CleanerTxns::retires_markers`).
    keeps_markers: bool,
}

fn encode_list(list: &[AbortedRange]) -> Vec<u8> {
    list.iter()
        .flat_map(|r| {
            [r.producer_id, r.first_offset, r.marker_offset]
                .into_iter()
                .flat_map(i64::to_be_bytes)
        })
        .collect()
}

fn decode_list(bytes: &[u8]) -> Vec<AbortedRange> {
    bytes
        .chunks_exact(24)
        .map(|c| {
            let at = |i: usize| i64::from_be_bytes(c[i * 8..i * 8 + 8].try_into().expect("8"));
            AbortedRange {
                producer_id: at(0),
                first_offset: at(1),
                marker_offset: at(2),
            }
        })
        .collect()
}

impl CleanerTxns for ModelTxns {
    fn first_unstable_offset(&self) -> i64 {
        let hw = self.high_watermark.get();
        self.open
            .borrow()
            .values()
            .copied()
            .min()
            .map_or(hw, |f| f.min(hw))
    }
    fn aborted(&self) -> Vec<AbortedRange> {
        self.aborted.borrow().clone()
    }
    async fn forget_aborted(&self, marker_offsets: &[i64]) -> Result<(), StorageError> {
        self.aborted
            .borrow_mut()
            .retain(|r| !marker_offsets.contains(&r.marker_offset));
        self.forgotten
            .borrow_mut()
            .extend_from_slice(marker_offsets);
        if let Some(disk) = &self.persist_on {
            let bytes = encode_list(&self.aborted.borrow());
            disk.write_file_atomically(&aborted_list_path(), &bytes)
                .await
                .map_err(|source| StorageError::Io {
                    operation: "writing the model's aborted list",
                    source: Rc::new(source),
                })?;
        }
        Ok(())
    }
    fn retires_markers(&self) -> bool {
        !self.keeps_markers
    }
}

/// One data record: offset, key, value (`None`: tombstone), and its transaction (producer
/// and that producer's transaction number) if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: i64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
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

fn records_of(batch: &[u8]) -> Vec<Rec> {
    let h = header(batch);
    let mut rest = &batch[BATCH_HEADER_BYTES..];
    let mut out = Vec::new();
    for _ in 0..h.record_count {
        let length = read_varint(&mut rest).expect("record length") as usize;
        let (mut record, tail) = rest.split_at(length);
        rest = tail;
        record = &record[1..];
        read_varint(&mut record).expect("ts");
        let offset_delta = read_varint(&mut record).expect("offset delta");
        let key = read_bytes(&mut record).expect("every record has a key");
        let value = read_bytes(&mut record);
        out.push(Rec {
            offset: h.base_offset + offset_delta,
            key,
            value,
        });
    }
    out
}

/// `batch` made transactional for `producer_id` (epoch 0).
fn transactional(batch: &Bytes, producer_id: i64) -> Bytes {
    let mut out = batch.to_vec();
    out[21..23].copy_from_slice(&TRANSACTIONAL_FLAG.to_be_bytes());
    out[43..51].copy_from_slice(&producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&0_i16.to_be_bytes());
    out[53..57].copy_from_slice(&0_i32.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

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

/// What each record and marker is, as appended.
#[derive(Default)]
struct Model {
    records: Vec<Rec>,
    /// Offset → producer of a transactional record; its fate once its marker is written.
    txn_of: HashMap<i64, i64>,
    committed: HashSet<i64>,
    aborted: HashSet<i64>,
    /// Producer → offsets of its open transaction's records.
    open_records: HashMap<i64, Vec<i64>>,
    /// Offset → (producer, abort) of each marker.
    markers: BTreeMap<i64, (i64, bool)>,
}

impl Model {
    fn is_committed(&self, offset: i64) -> bool {
        !self.txn_of.contains_key(&offset) || self.committed.contains(&offset)
    }
}

/// Appends one random step: a plain batch, a transactional one, or a producer's marker.
async fn append_step(
    log: &PartitionLog<SimDisk>,
    rng: &mut SeededRng,
    keys: u64,
    now_ms: i64,
    model: &mut Model,
    txns: &ModelTxns,
) {
    let producer_id = 1000 + rng.below(PRODUCERS as u64) as i64;
    let open = txns.open.borrow().contains_key(&producer_id);
    match rng.below(6) {
        0 | 1 => {
            let batch = random_batch(rng, keys, now_ms);
            let at = log.append(batch.clone()).await.expect("append").base_offset;
            model
                .records
                .extend(records_of(&common::stored_at(&batch, at)));
        }
        2..=3 => {
            let batch = transactional(&random_batch(rng, keys, now_ms), producer_id);
            let at = log.append(batch.clone()).await.expect("append").base_offset;
            txns.open.borrow_mut().entry(producer_id).or_insert(at);
            for rec in records_of(&common::stored_at(&batch, at)) {
                model.txn_of.insert(rec.offset, producer_id);
                model
                    .open_records
                    .entry(producer_id)
                    .or_default()
                    .push(rec.offset);
                model.records.push(rec);
            }
        }
        _ if open => {
            let commit = rng.below(5) < 3;
            let marker = control::txn_marker(producer_id, 0, commit, 0, now_ms);
            let at = log.append(marker).await.expect("append").base_offset;
            let first = txns.open.borrow_mut().remove(&producer_id).expect("open");
            let offsets = model.open_records.remove(&producer_id).unwrap_or_default();
            if commit {
                model.committed.extend(offsets);
            } else {
                model.aborted.extend(offsets);
                txns.aborted.borrow_mut().push(AbortedRange {
                    producer_id,
                    first_offset: first,
                    marker_offset: at,
                });
            }
            model.markers.insert(at, (producer_id, !commit));
        }
        _ => {}
    }
}

/// The records a `read_committed` reader sees below `lso`, by the Java consumer's rule:
/// a producer is aborted from the first offset of an aborted entry until its abort marker.
fn read_committed(batches: &[Bytes], aborted: &[AbortedRange], lso: i64) -> Vec<Rec> {
    let mut entries: Vec<AbortedRange> = aborted.to_vec();
    entries.sort_by_key(|e| e.first_offset);
    let mut next = 0;
    let mut aborted_producers = HashSet::new();
    let mut out = Vec::new();
    for batch in batches {
        let h = header(batch);
        if h.base_offset >= lso {
            break;
        }
        while next < entries.len() && entries[next].first_offset <= h.last_offset() {
            aborted_producers.insert(entries[next].producer_id);
            next += 1;
        }
        if h.is_control() {
            let abort = matches!(control::record(batch), Some((control::ABORT_MARKER, _)));
            if abort {
                aborted_producers.remove(&h.producer_id);
            }
            continue;
        }
        if h.is_transactional() && aborted_producers.contains(&h.producer_id) {
            continue;
        }
        out.extend(records_of(batch));
    }
    out
}

/// Checks the log after a pass against the model.
fn check_log(
    model: &Model,
    before: &[Bytes],
    after: &[Bytes],
    aborted_list: &[AbortedRange],
    lso: i64,
    clean_end: i64,
) {
    assert!(
        clean_end <= lso,
        "cleaned to {clean_end}, past the LSO {lso}"
    );
    assert_eq!(before.len(), after.len(), "every batch stays");
    for (old, new) in before.iter().zip(after) {
        let (o, n) = (header(old), header(new));
        assert_eq!(
            (
                o.base_offset,
                o.last_offset(),
                o.producer_id,
                o.attributes & 0x30
            ),
            (
                n.base_offset,
                n.last_offset(),
                n.producer_id,
                n.attributes & 0x30
            )
        );
        if o.base_offset >= clean_end {
            assert_eq!(
                old, new,
                "a batch at or above the clean end (and LSO) is untouched"
            );
        }
    }
    check_reader(model, after, aborted_list, lso);
    // Aborted records below the clean end are gone.
    let left: HashSet<i64> = after.iter().flat_map(|b| records_of_any(b)).collect();
    for offset in &model.aborted {
        if *offset < clean_end {
            assert!(
                !left.contains(offset),
                "aborted record {offset} kept below {clean_end}"
            );
        }
    }
}

/// Records of the transaction that the marker at `marker` (of `producer_id`) ends, still
/// in the log (`left`).
fn records_left_of(model: &Model, left: &HashSet<i64>, marker: i64, producer_id: i64) -> usize {
    model
        .txn_of
        .iter()
        .filter(|(o, p)| **p == producer_id && **o < marker && left.contains(o))
        .filter(|(o, _)| {
            !model
                .markers
                .range(**o..marker)
                .any(|(_, m)| m.0 == producer_id)
        })
        .count()
}

/// What a `read_committed` reader of `after` (with `aborted_list`) sees is right: committed
/// records only, unchanged, the latest committed of each key; no aborted entry outlives its
/// marker, and no marker went while its transaction's records remain.
fn check_reader(model: &Model, after: &[Bytes], aborted_list: &[AbortedRange], lso: i64) {
    let by_offset: HashMap<i64, &Rec> = model.records.iter().map(|r| (r.offset, r)).collect();
    let visible = read_committed(after, aborted_list, lso);
    let mut latest_seen: HashMap<&[u8], &Rec> = HashMap::new();
    for rec in &visible {
        assert_eq!(
            Some(&rec),
            by_offset.get(&rec.offset),
            "a record read is unchanged"
        );
        assert!(
            model.is_committed(rec.offset),
            "read_committed saw {rec:?}, not committed"
        );
        latest_seen.insert(&rec.key, rec);
    }
    // The latest committed value of every key below the LSO is what the reader sees last.
    let mut latest: HashMap<&[u8], &Rec> = HashMap::new();
    for rec in model
        .records
        .iter()
        .filter(|r| r.offset < lso && model.is_committed(r.offset))
    {
        latest.insert(&rec.key, rec);
    }
    for (key, rec) in &latest {
        match latest_seen.get(key) {
            Some(seen) => assert_eq!(seen, rec, "latest committed of {key:?}"),
            None => assert!(rec.value.is_none(), "latest committed {rec:?} was removed"),
        }
    }
    for key in latest_seen.keys() {
        assert!(latest.contains_key(key), "a key never committed is read");
    }
    let left: HashSet<i64> = after.iter().flat_map(|b| records_of_any(b)).collect();
    // No aborted entry outlives its marker; a removed marker's transaction left no record.
    let markers_left: HashSet<i64> = after
        .iter()
        .filter(|b| is_live_marker(b))
        .map(|b| header(b).base_offset)
        .collect();
    for entry in aborted_list {
        assert!(
            markers_left.contains(&entry.marker_offset),
            "aborted entry {entry:?} outlived its marker"
        );
    }
    for (&offset, &(producer_id, _)) in &model.markers {
        if !markers_left.contains(&offset) {
            let of_it = records_left_of(model, &left, offset, producer_id);
            assert_eq!(of_it, 0, "marker {offset} removed while its records remain");
        }
    }
}

/// Whether `batch` is a commit or abort marker (not one the cleaner retired).
fn is_live_marker(batch: &Bytes) -> bool {
    matches!(
        control::record(batch),
        Some((control::ABORT_MARKER | control::COMMIT_MARKER, _))
    ) && header(batch).is_transactional()
}

/// Offsets of every record (of any batch, markers' included) still in `batch`.
fn records_of_any(batch: &[u8]) -> Vec<i64> {
    let h = header(batch);
    if h.is_control() {
        return Vec::new();
    }
    records_of(batch).into_iter().map(|r| r.offset).collect()
}

#[test]
fn cleaning_with_transactions_matches_the_model() {
    run(|| async {
        let mut totals = (0_u64, 0_u64, 0_usize);
        // Passes of the seeds keeping markers, and the entries they forgot.
        let (mut kept_markers_passes, mut kept_markers_forgotten) = (0, 0);
        for seed in 0..6_u64 {
            let mut rng = SeededRng::new(seed);
            let now = Rc::new(Cell::new(1_000_000_i64));
            let clock = Clock::Manual(now.clone());
            let disk = SimDisk::new();
            let mut log = open(&disk, &clock).await;
            let keys = rng.range(3, 30);
            let mut model = Model::default();
            let txns = ModelTxns {
                keeps_markers: seed % 3 == 2,
                ..ModelTxns::default()
            };
            // Seeds 4 and 5 (one retiring markers, one keeping them) with no retention: a
            // marker is then due in the pass that removes its transaction's records.
            let delete_retention_ms = if seed >= 4 { 0 } else { rng.range(0, 600) };
            for round in 0..50 {
                for _ in 0..rng.range(1, 12) {
                    append_step(&log, &mut rng, keys, now.get(), &mut model, &txns).await;
                }
                log.wait_written(log.log_end_offset() - 1)
                    .await
                    .expect("written");
                txns.high_watermark.set(log.log_end_offset());
                now.set(now.get() + rng.range(0, 300) as i64);
                if rng.below(3) == 0 {
                    let options = CleanOptions {
                        map_bytes: rng.range(100, 3_000) as usize,
                        delete_retention_ms,
                        ..CleanOptions::default()
                    };
                    let lso = txns.first_unstable_offset();
                    let summary = log
                        .dirty_summary_below(0, delete_retention_ms, lso)
                        .await
                        .expect("summary");
                    let before = read_all(&log).await;
                    let outcome = log
                        .clean_with_txns(&options, &NoCodec, Some(&txns))
                        .await
                        .expect("clean");
                    if summary.dirty_bytes == 0 && !summary.tombstones_due {
                        assert_eq!(outcome.segments_rewritten, 0, "nothing was due");
                    }
                    let after = read_all(&log).await;
                    check_log(
                        &model,
                        &before,
                        &after,
                        &txns.aborted.borrow(),
                        lso,
                        outcome.clean_end_offset,
                    );
                    check_forgotten_before(&model, &before, &outcome.abort_markers_removed, seed);
                    if txns.keeps_markers {
                        assert_eq!(outcome.markers_removed, 0, "seed {seed}: a marker retired");
                        kept_markers_passes += 1;
                        kept_markers_forgotten += outcome.abort_markers_removed.len();
                    }
                    totals.0 += outcome.aborted_records_removed;
                    totals.1 += outcome.markers_removed;
                }
                if round % 9 == 8 {
                    log.close().await.expect("close");
                    let report = ringfeed_storage::check::check_partition(&disk, Path::new(DIR))
                        .await
                        .expect("check");
                    assert!(report.is_clean(), "seed {seed}: {:?}", report.findings);
                    log = open(&disk, &clock).await;
                }
            }
            let end = Ending {
                keys,
                delete_retention_ms,
                seed,
            };
            final_clean(&log, &mut rng, &mut model, &txns, &now, &end).await;
            if !txns.keeps_markers {
                totals.2 += model.markers.len();
            }
            log.close().await.expect("close");
        }
        let (aborted_removed, markers_removed, markers) = totals;
        assert!(
            aborted_removed > 50,
            "{aborted_removed} aborted records removed"
        );
        assert!(
            markers_removed > markers as u64 / 3,
            "{markers_removed} of {markers} markers removed"
        );
        assert!(
            kept_markers_passes > 10,
            "{kept_markers_passes} passes kept markers"
        );
        assert!(
            kept_markers_forgotten > 5,
            "{kept_markers_forgotten} entries of kept markers forgotten"
        );
    });
}

/// An entry is forgotten only for a transaction whose records were gone before the pass
/// (`before`): readers of the segments the pass replaces (until its swap) must not find
/// records whose entry is gone.
fn check_forgotten_before(model: &Model, before: &[Bytes], forgotten: &[i64], seed: u64) {
    let left_before: HashSet<i64> = before.iter().flat_map(|b| records_of_any(b)).collect();
    for marker in forgotten {
        let (producer_id, _) = model.markers[marker];
        assert_eq!(
            records_left_of(model, &left_before, *marker, producer_id),
            0,
            "seed {seed}: entry of {marker} forgotten while its records were there"
        );
    }
}

/// What [`final_clean`] needs besides the log and the model.
struct Ending {
    keys: u64,
    delete_retention_ms: u64,
    seed: u64,
}

/// Ends every transaction, then cleans until nothing changes: every aborted entry, and
/// every marker whose records are gone, is gone.
async fn final_clean(
    log: &PartitionLog<SimDisk>,
    rng: &mut SeededRng,
    model: &mut Model,
    txns: &ModelTxns,
    now: &Cell<i64>,
    ending: &Ending,
) {
    let Ending {
        keys,
        delete_retention_ms,
        seed,
    } = *ending;
    // End every transaction, then clean until nothing changes: every aborted entry
    // and every marker whose records are gone is gone.
    let open: Vec<i64> = txns.open.borrow().keys().copied().collect();
    for producer_id in open {
        let marker = control::txn_marker(producer_id, 0, false, 0, now.get());
        let at = log.append(marker).await.expect("append").base_offset;
        let first = txns.open.borrow_mut().remove(&producer_id).expect("open");
        let offsets = model.open_records.remove(&producer_id).unwrap_or_default();
        model.aborted.extend(offsets);
        txns.aborted.borrow_mut().push(AbortedRange {
            producer_id,
            first_offset: first,
            marker_offset: at,
        });
        model.markers.insert(at, (producer_id, true));
    }
    // Roll past everything written so it is all cleanable.
    for _ in 0..40 {
        let filler = random_batch(rng, keys, now.get());
        let at = log
            .append(filler.clone())
            .await
            .expect("append")
            .base_offset;
        model
            .records
            .extend(records_of(&common::stored_at(&filler, at)));
    }
    log.wait_written(log.log_end_offset() - 1)
        .await
        .expect("written");
    txns.high_watermark.set(log.log_end_offset());
    let options = CleanOptions {
        map_bytes: 1 << 20,
        delete_retention_ms,
        ..CleanOptions::default()
    };
    let mut end = 0;
    for _ in 0..4 {
        now.set(now.get() + 1_000);
        let before = read_all(log).await;
        let outcome = log
            .clean_with_txns(&options, &NoCodec, Some(txns))
            .await
            .expect("clean");
        let after = read_all(log).await;
        let lso = txns.first_unstable_offset();
        check_log(
            model,
            &before,
            &after,
            &txns.aborted.borrow(),
            lso,
            outcome.clean_end_offset,
        );
        end = outcome.clean_end_offset;
    }
    let last_marker = model.markers.keys().next_back().copied().unwrap_or(0);
    assert!(end > last_marker, "seed {seed}: cleaned past every marker");
    if txns.keeps_markers {
        check_kept_markers(log, model, txns, delete_retention_ms, seed).await;
        return;
    }
    assert!(
        txns.aborted.borrow().is_empty(),
        "seed {seed}: aborted entries left: {:?}",
        txns.aborted.borrow()
    );
    let after = read_all(log).await;
    let left: HashSet<i64> = after.iter().flat_map(|b| records_of_any(b)).collect();
    for (&offset, &(producer_id, _)) in &model.markers {
        let batch = after
            .iter()
            .find(|b| header(b).base_offset == offset)
            .expect("the marker's batch stays");
        if is_live_marker(batch) {
            assert!(
                records_left_of(model, &left, offset, producer_id) > 0,
                "seed {seed}: marker {offset} stayed, its records gone"
            );
        }
    }
}

/// A replicated log's view after its last pass: every marker stays, an aborted entry is
/// forgotten only once its records are gone, and no marker makes a pass due by itself.
async fn check_kept_markers(
    log: &PartitionLog<SimDisk>,
    model: &Model,
    txns: &ModelTxns,
    delete_retention_ms: u64,
    seed: u64,
) {
    let after = read_all(log).await;
    for offset in model.markers.keys() {
        let batch = after.iter().find(|b| header(b).base_offset == *offset);
        assert!(
            batch.is_some_and(is_live_marker),
            "seed {seed}: marker {offset} retired"
        );
    }
    // Entries forgotten (their markers stay) only once their records were gone.
    let left: HashSet<i64> = after.iter().flat_map(|b| records_of_any(b)).collect();
    for &marker in txns.forgotten.borrow().iter() {
        let (producer_id, _) = model.markers[&marker];
        assert_eq!(
            records_left_of(model, &left, marker, producer_id),
            0,
            "seed {seed}: entry of marker {marker} forgotten with records left"
        );
    }
    let summary = log
        .dirty_summary_below(0, delete_retention_ms, txns.first_unstable_offset())
        .await
        .expect("summary");
    assert!(
        !summary.tombstones_due,
        "seed {seed}: kept markers force passes"
    );
}

/// A log with transactions, cleaned once (aborted records go, their markers wait), its
/// aborted list persisted: returns the disk and clock, and the model.
async fn crash_setup() -> (SimDisk, Clock, Model, Vec<AbortedRange>) {
    let disk = SimDisk::new();
    let now = Rc::new(Cell::new(1_000_000));
    let clock = Clock::Manual(now.clone());
    let log = open(&disk, &clock).await;
    let mut rng = SeededRng::new(7);
    let mut model = Model::default();
    let txns = ModelTxns::default();
    for _ in 0..80 {
        append_step(&log, &mut rng, 12, now.get(), &mut model, &txns).await;
    }
    // Close every transaction, one way or the other, then roll.
    let open: Vec<i64> = txns.open.borrow().keys().copied().collect();
    for producer_id in open {
        let marker = control::txn_marker(producer_id, 0, true, 0, now.get());
        let at = log.append(marker).await.expect("append").base_offset;
        txns.open.borrow_mut().remove(&producer_id);
        model
            .committed
            .extend(model.open_records.remove(&producer_id).unwrap_or_default());
        model.markers.insert(at, (producer_id, false));
    }
    for _ in 0..16 {
        let filler = random_batch(&mut rng, 12, now.get());
        let at = log
            .append(filler.clone())
            .await
            .expect("append")
            .base_offset;
        model
            .records
            .extend(records_of(&common::stored_at(&filler, at)));
    }
    log.wait_written(log.log_end_offset() - 1)
        .await
        .expect("written");
    let list = txns.aborted.borrow().clone();
    disk.write_file_atomically(&aborted_list_path(), &encode_list(&list))
        .await
        .expect("persist");
    log.close().await.expect("close");
    (disk, clock, model, list)
}

fn crash_options() -> CleanOptions {
    CleanOptions {
        map_bytes: 1 << 20,
        delete_retention_ms: 0,
        ..CleanOptions::default()
    }
}

/// The log and the persisted aborted list after a reopen of `disk`.
async fn reopened(disk: &SimDisk, clock: &Clock) -> (PartitionLog<SimDisk>, ModelTxns) {
    let log = open(disk, clock).await;
    let list = disk
        .read_file(&aborted_list_path())
        .await
        .expect("read")
        .map(|b| decode_list(&b))
        .unwrap_or_default();
    let txns = ModelTxns {
        persist_on: Some(disk.clone()),
        ..ModelTxns::default()
    };
    *txns.aborted.borrow_mut() = list;
    txns.high_watermark.set(log.log_end_offset());
    (log, txns)
}

/// A power cut after every mutating step of the pass that removes aborted records and of
/// the one that then removes their markers and forgets their entries: the log reopens as
/// before or after the pass, and with the persisted aborted list a `read_committed` reader
/// sees exactly the committed records, and no entry is left whose marker is gone.
#[test]
fn a_power_cut_at_any_step_of_a_transactional_pass_keeps_readers_right() {
    run(|| async {
        let (disk, clock, model, list) = crash_setup().await;
        assert!(list.len() >= 3, "{} aborted transactions", list.len());
        let expected = {
            let (log, txns) = reopened(&disk.crash_image(CrashMode::ProcessCrash), &clock).await;
            let list = txns.aborted.borrow().clone();
            read_committed(&read_all(&log).await, &list, i64::MAX)
        };
        let mut start = disk;
        for pass in 0..2 {
            let (mut saw_old, mut saw_new) = (0, 0);
            for steps in 0.. {
                let image = start.crash_image(CrashMode::ProcessCrash);
                let (log, txns) = reopened(&image, &clock).await;
                let before = read_all(&log).await;
                image.power_cut_after_steps(steps);
                let finished = log
                    .clean_with_txns(&crash_options(), &NoCodec, Some(&txns))
                    .await
                    .is_ok()
                    && !image.is_powered_off();
                drop(log);
                let after_cut = image.crash_image(CrashMode::PowerCut);
                let (log, txns) = reopened(&after_cut, &clock).await;
                let after = read_all(&log).await;
                if after == before {
                    saw_old += 1;
                } else {
                    saw_new += 1;
                }
                let list = txns.aborted.borrow().clone();
                assert!(after == before || steps > 0, "pass {pass}: nothing to do");
                check_reader(&model, &after, &list, i64::MAX);
                assert_eq!(
                    read_committed(&after, &list, i64::MAX),
                    expected
                        .iter()
                        .filter(|r| after.iter().any(|b| records_of_any(b).contains(&r.offset)))
                        .cloned()
                        .collect::<Vec<_>>(),
                    "pass {pass}, cut after {steps} steps"
                );
                if finished {
                    if pass == 0 {
                        start = image;
                    }
                    break;
                }
            }
            assert!(
                saw_old > 2 && saw_new > 0,
                "pass {pass}: old {saw_old}, new {saw_new}"
            );
        }
    });
}

/// The broker's side never answers (its gate is held by an append that waits for the log's
/// append gate, which `close` holds): a pass waiting to have entries forgotten gives up
/// when the log starts closing, without committing, so `close` finishes.
struct NeverForgets(ModelTxns);

impl CleanerTxns for NeverForgets {
    fn first_unstable_offset(&self) -> i64 {
        self.0.first_unstable_offset()
    }
    fn aborted(&self) -> Vec<AbortedRange> {
        self.0.aborted()
    }
    async fn forget_aborted(&self, _marker_offsets: &[i64]) -> Result<(), StorageError> {
        futures::future::pending().await
    }
}

#[test]
fn a_pass_waiting_to_forget_entries_gives_way_to_close() {
    run(|| async {
        let (disk, clock, _model, _list) = crash_setup().await;
        let (log, txns) = reopened(&disk, &clock).await;
        let first = log
            .clean_with_txns(&crash_options(), &NoCodec, Some(&txns))
            .await
            .expect("clean");
        assert!(first.aborted_records_removed > 0);
        let before = read_all(&log).await;
        let stuck = NeverForgets(txns);
        let pass = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.clean_with_txns(&crash_options(), &NoCodec, Some(&stuck))
                    .await
            })
        };
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        log.close().await.expect("close");
        assert!(matches!(pass.await, Err(StorageError::Closed)));
        let (log, _) = reopened(&disk, &clock).await;
        assert_eq!(read_all(&log).await, before, "the pass did not commit");
    });
}
