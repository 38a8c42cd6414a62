//! The broker's side of log compaction (`cleanup.policy=compact`; the cleaner itself is
//! `storage/src/cleaner.rs`):
//!
//! - [`CleanerCodec`]: opens and recompresses compressed batches for the cleaner with the
//!   produce path's codecs (`recompress`), so compressed records are compacted too.
//! - [`refuse_keyless`]: a compacted topic refuses a record without a key with
//!   `INVALID_RECORD`, as Kafka's `LogValidator` does (the cleaner could only drop it).
//! - [`clean_logs_periodically`]: one cleaner per shard, in the background. Each round it
//!   asks every compacted log of the shard how dirty it is, cleans the dirtiest one that is
//!   due (its dirty ratio reached `min.cleanable.dirty.ratio`, its oldest dirty segment is
//!   past `max.compaction.lag.ms`, or expired tombstones wait in it), one pass, then looks
//!   again; with nothing due it sleeps `log.cleaner.backoff.ms`. A pass never blocks appends
//!   (the storage cleaner holds no append gate) and reads and writes at most
//!   `log.cleaner.io.max.bytes.per.second`, so produce latency is not traded for it.
//!
//! - Replicated partitions (`replica::cleaning`): the hosted logs of compacted topics are
//!   candidates too, each cleaned below its last stable offset under its high watermark,
//!   with the transactions of the replica's own state and no marker retired.
//!
//! - Transactions: a log that ever held a transactional batch is cleaned with its
//!   transactions (`PartitionTxnView`, from the partition's producer state): nothing at or
//!   above its LSO, aborted records removed, markers removed once their records are gone
//!   and `delete.retention.ms` ran out, and the aborted entries of removed markers forgotten
//!   durably before the pass commits (`storage/src/cleaner.rs`). A log that never held one
//!   is cleaned without (it has no transactional batch to read).
//!
//! Not yet: `__consumer_offsets` is not compacted (it is checkpointed and trimmed,
//! `groups/coordinator.rs`). Compacting it takes, in the group coordinator (`groups/`) and
//! the controller, not in the cleaner:
//! 1. the topic created with `cleanup.policy=compact` (`controller/changes.rs` creates the
//!    internal topics) and the checkpoint-and-trim retired or kept beside the cleaner;
//! 2. a tombstone for every key the coordinator overwrites away or forgets (offset expiry,
//!    `OffsetDelete`, group deletion; it writes some today), and a replay that reads a key
//!    without a record as absent (tombstones go after `delete.retention.ms`);
//! 3. the cleaner told the partition's transactions: `TxnOffsetCommit` batches are appended
//!    by the coordinator straight to the log, not through `ProducerStates::append`, so the
//!    partition has no `transactions.seen`, no LSO and no aborted list, and a pass leaves its
//!    transactional batches whole (unread; safe, but never compacted, and every tombstone
//!    after one is kept). Either those appends go through `ProducerStates` (which then
//!    tracks the LSO and aborted entries as for any partition), or a [`CleanerTxns`] backed
//!    by the coordinator (LSO = first offset of the oldest pending transaction in
//!    `txn_offsets`; aborted ranges recorded at `complete_txn(.., false)` and kept across a
//!    replay) is passed for these partitions;
//! 4. the replay taught what the cleaner leaves: a transactional batch with no records must
//!    not create a pending entry (today it creates an empty one, which blocks checkpoints
//!    and is never completed if its marker is retired), and a retired marker
//!    (`RETIRED_TXN_MARKER`) completes nothing (today `marker_commits` already answers
//!    `None` for it).
//!
use std::rc::Rc;

use bytes::Bytes;

use crate::error_codes as codes;
use crate::metadata::TopicPartition;
use crate::producer_state::ProducerStates;
use crate::recompress::{
    compress_section, decompress_section, Codec, DECOMPRESSED_RECORDS_BYTES_MAX,
};
use crate::shard::ShardServices;
use crate::storage::batch::{read_varint, BatchHeader, BATCH_HEADER_BYTES};
use crate::storage::{AbortedRange, CleanOptions, CleanerTxns, RecordCodec, StorageError};

/// The produce path's codecs, for the cleaner. A section that does not decompress (or
/// decompresses past [`DECOMPRESSED_RECORDS_BYTES_MAX`]) is left whole by the cleaner.
pub struct CleanerCodec;

impl RecordCodec for CleanerCodec {
    fn decompress(&self, attributes: i16, section: &[u8]) -> Option<Vec<u8>> {
        let codec = Codec::from_attributes(attributes).filter(|c| *c != Codec::None)?;
        let mut out = Vec::new();
        decompress_section(codec, section, DECOMPRESSED_RECORDS_BYTES_MAX, &mut out).ok()?;
        Some(out)
    }

    fn compress(&self, attributes: i16, records: &[u8]) -> Option<Vec<u8>> {
        let codec = Codec::from_attributes(attributes).filter(|c| *c != Codec::None)?;
        compress_section(codec, records, Vec::new()).ok()
    }
}

/// Whether every record of `records` (a batch's records section, uncompressed, holding
/// `count` records) has a key: `INVALID_RECORD` for the first without one or a record that
/// does not parse.
fn check_keys(mut records: &[u8], count: i32) -> Result<(), i16> {
    for _ in 0..count {
        let length = read_varint(&mut records)
            .and_then(|l| usize::try_from(l).ok())
            .filter(|&l| l <= records.len())
            .ok_or(codes::INVALID_RECORD)?;
        let (record, rest) = records.split_at(length);
        records = rest;
        let mut fields = record.get(1..).ok_or(codes::INVALID_RECORD)?; // attributes
        read_varint(&mut fields).ok_or(codes::INVALID_RECORD)?; // timestampDelta
        read_varint(&mut fields).ok_or(codes::INVALID_RECORD)?; // offsetDelta
        let key_length = read_varint(&mut fields).ok_or(codes::INVALID_RECORD)?;
        if key_length < 0 {
            return Err(codes::INVALID_RECORD);
        }
    }
    Ok(())
}

/// Refuses batches for a compacted topic that hold a record without a key, as Kafka does
/// (`INVALID_RECORD`, "Compacted topic cannot accept message without key"). Compressed
/// batches are decompressed to look (bounded by [`DECOMPRESSED_RECORDS_BYTES_MAX`]: past it
/// `MESSAGE_TOO_LARGE`, unreadable `CORRUPT_MESSAGE`). Control batches have keys by
/// definition and are not producers' anyway.
pub fn refuse_keyless(batches: &[Bytes]) -> Result<(), i16> {
    for batch in batches {
        let header = BatchHeader::parse(batch).ok_or(codes::CORRUPT_MESSAGE)?;
        if header.is_control() {
            continue;
        }
        let section = batch.get(BATCH_HEADER_BYTES..).unwrap_or_default();
        if header.is_compressed() {
            let codec = Codec::from_attributes(header.attributes).ok_or(codes::CORRUPT_MESSAGE)?;
            let mut records = Vec::new();
            decompress_section(codec, section, DECOMPRESSED_RECORDS_BYTES_MAX, &mut records)?;
            check_keys(&records, header.record_count)?;
        } else {
            check_keys(section, header.record_count)?;
        }
    }
    Ok(())
}

/// A partition's transactions as the storage cleaner asks for them: read from its producer
/// state when the round chose it; aborted entries are forgotten (durably) through it.
struct PartitionTxnView<'a> {
    producers: &'a ProducerStates,
    tp: &'a TopicPartition,
    log: &'a crate::disk::PartitionLog,
    first_unstable_offset: i64,
    aborted: Vec<AbortedRange>,
}

impl CleanerTxns for PartitionTxnView<'_> {
    fn first_unstable_offset(&self) -> i64 {
        self.first_unstable_offset
    }

    fn aborted(&self) -> Vec<AbortedRange> {
        self.aborted.clone()
    }

    async fn forget_aborted(&self, marker_offsets: &[i64]) -> Result<(), StorageError> {
        self.producers
            .forget_cleaned_aborts(self.tp, self.log, marker_offsets)
            .await
            .map(|_| ())
            .map_err(|source| StorageError::Io {
                operation: "writing the producer state snapshot",
                source: Rc::new(source),
            })
    }
}

/// Where a candidate's transactions come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CandidateKind {
    /// A partition with one replica: its LSO if it ever held a transaction (`None`: it
    /// never did), from the shard's producer state.
    Plain { first_unstable_offset: Option<i64> },
    /// A replicated partition (`replica::cleaning`): committed entries only, transactions
    /// from the replica's own state, no marker retired.
    Replicated,
}

/// One candidate of a cleaning round.
struct Candidate {
    tp: TopicPartition,
    log: crate::disk::PartitionLog,
    kind: CandidateKind,
    options: CleanOptions,
    /// Forced (max lag or expired tombstones) first, then by dirty ratio.
    priority: f64,
}

/// The shard's cleaner: see the module docs.
pub async fn clean_logs_periodically(shard: Rc<ShardServices>) {
    let limits = &shard.config.limits;
    if !limits.cleaner_enabled {
        return;
    }
    loop {
        if shard.shutdown.is_started() {
            return;
        }
        let cleaned = match dirtiest(&shard).await {
            Some(candidate) => clean_one(&shard, candidate).await,
            None => false,
        };
        if cleaned {
            glommio::executor().yield_task_queue_now().await;
        } else {
            shard.clock.sleep(limits.cleaner_backoff).await;
        }
    }
}

/// The compacted log of this shard most in need of a pass, if any is due.
async fn dirtiest(shard: &ShardServices) -> Option<Candidate> {
    let snapshot = shard.metadata.current();
    let now_ms = shard.clock.now_ms();
    let limits = &shard.config.limits;
    let mut best: Option<Candidate> = None;
    let mut max_dirty_ratio: f64 = 0.0;
    let plain = shard
        .partitions
        .online_logs()
        .into_iter()
        .map(|(tp, log)| (tp, log, None));
    let replicated = shard.replicas.iter().flat_map(|replicas| {
        replicas
            .cleanable_logs()
            .into_iter()
            .map(|(tp, log, clean_below)| (tp, log, Some(clean_below)))
    });
    // Each log with its topic's settings, compacted topics only.
    let compacted: Vec<_> = plain
        .chain(replicated)
        .filter_map(|(tp, log, bound)| {
            let config = &snapshot.topic(&tp.topic)?.config;
            config.is_compacted().then_some((tp, log, bound, config))
        })
        .collect();
    for (tp, log, replica_bound, config) in compacted {
        let lag_ms = u64::try_from(config.min_compaction_lag_ms).unwrap_or(0);
        let retention_ms = u64::try_from(config.delete_retention_ms).unwrap_or(0);
        let (kind, upper) = if let Some(clean_below) = replica_bound {
            (CandidateKind::Replicated, clean_below)
        } else {
            let first_unstable_offset = shard
                .partitions
                .producer_states()
                .cleaner_first_unstable_offset(&tp, &log)
                .await;
            (
                CandidateKind::Plain {
                    first_unstable_offset,
                },
                first_unstable_offset.unwrap_or(i64::MAX),
            )
        };
        let summary = match log.dirty_summary_below(lag_ms, retention_ms, upper).await {
            Ok(summary) => summary,
            Err(error) => {
                tracing::warn!(partition = %tp, %error, "cannot size a compacted log for cleaning");
                continue;
            }
        };
        max_dirty_ratio = max_dirty_ratio.max(summary.dirty_ratio);
        let overdue = summary
            .first_dirty_max_timestamp
            .is_some_and(|ts| ts < now_ms.saturating_sub(config.max_compaction_lag_ms));
        let forced = overdue || summary.tombstones_due;
        let ratio_due =
            summary.dirty_bytes > 0 && summary.dirty_ratio >= config.min_cleanable_dirty_ratio();
        if !(forced || ratio_due) {
            continue;
        }
        let priority = summary.dirty_ratio + if forced { 2.0 } else { 0.0 };
        if best.as_ref().is_some_and(|b| b.priority >= priority) {
            continue;
        }
        best = Some(Candidate {
            tp,
            log,
            kind,
            options: CleanOptions {
                map_bytes: limits.cleaner_map_bytes,
                delete_retention_ms: retention_ms,
                min_compaction_lag_ms: lag_ms,
                io_bytes_per_second: Some(limits.cleaner_io_bytes_per_second),
                clean_below: i64::MAX,
            },
            priority,
        });
    }
    shard.metrics.cleaner_scanned(max_dirty_ratio);
    best
}

/// One pass over `candidate`; whether it did anything.
async fn clean_one(shard: &ShardServices, candidate: Candidate) -> bool {
    let Candidate {
        tp,
        log,
        kind,
        options,
        ..
    } = candidate;
    let producers = shard.partitions.producer_states();
    // Read again: the LSO only goes up, and entries may have been dropped meanwhile.
    let cleaned =
        match kind {
            CandidateKind::Plain {
                first_unstable_offset: Some(_),
            } => {
                let view = producers.cleaner_view(&tp, &log).await.map(
                    |(first_unstable_offset, aborted)| PartitionTxnView {
                        producers,
                        tp: &tp,
                        log: &log,
                        first_unstable_offset,
                        aborted,
                    },
                );
                log.clean_with_txns(&options, &CleanerCodec, view.as_ref())
                    .await
            }
            CandidateKind::Plain {
                first_unstable_offset: None,
            } => log.clean(&options, &CleanerCodec).await,
            CandidateKind::Replicated => {
                let Some(replicas) = shard.replicas.as_ref() else {
                    return false;
                };
                match clean_replicated(replicas, &tp, &log, &options).await {
                    Some(cleaned) => cleaned,
                    None => return false, // closed since the round chose it
                }
            }
        };
    match cleaned {
        Ok(outcome) => {
            shard
                .metrics
                .cleaner_pass(outcome.bytes_before, shard.clock.now_ms());
            tracing::info!(
                partition = %tp,
                segments = outcome.segments_rewritten,
                bytes_before = outcome.bytes_before,
                bytes_after = outcome.bytes_after,
                records_removed = outcome.records_removed,
                tombstones_removed = outcome.tombstones_removed,
                aborted_records_removed = outcome.aborted_records_removed,
                markers_removed = outcome.markers_removed,
                clean_end_offset = outcome.clean_end_offset,
                "cleaned a compacted log"
            );
            // A pass that read nothing (nothing was due after all) is no reason to look
            // again at once.
            outcome.io_bytes > 0
        }
        Err(error) => {
            tracing::warn!(partition = %tp, %error, "cleaning a compacted log failed");
            false
        }
    }
}

/// One pass over hosted partition `tp`'s `log` (`replica::cleaning`); `None` if it is no
/// longer hosted.
pub(crate) async fn clean_replicated(
    replicas: &crate::replica::ReplicaManager,
    tp: &TopicPartition,
    log: &crate::disk::PartitionLog,
    options: &CleanOptions,
) -> Option<Result<crate::storage::CleanOutcome, StorageError>> {
    let view = replicas.cleaner_txns(tp)?;
    Some(
        log.clean_with_txns(options, &CleanerCodec, Some(&view))
            .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::BrokerDisk;
    use crate::producer_state::TxnMarker;
    use crate::storage::batch::{build, control};
    use crate::storage::sim::{CrashMode, SimDisk};
    use crate::storage::{Clock, Disk, LogConfig};
    use std::path::Path;

    fn batch(key: Option<&[u8]>) -> Bytes {
        build::batch(&[
            build::Record {
                key: Some(b"k"),
                value: Some(b"v"),
                timestamp_ms: 1,
            },
            build::Record {
                key,
                value: Some(b"v"),
                timestamp_ms: 1,
            },
        ])
    }

    /// `records` keyed records as one transactional batch of `producer_id` (epoch 0).
    fn transactional(producer_id: i64, sequence: i32, keys: &[&[u8]]) -> Bytes {
        let records: Vec<build::Record<'_>> = keys
            .iter()
            .map(|key| build::Record {
                key: Some(key),
                value: Some(b"value"),
                timestamp_ms: 1,
            })
            .collect();
        let mut out = build::batch(&records).to_vec();
        out[21..23].copy_from_slice(&0x10_i16.to_be_bytes());
        out[43..51].copy_from_slice(&producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&0_i16.to_be_bytes());
        out[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(out)
    }

    /// One pass over `log` with the transactions of `states`, as `clean_one` does it.
    async fn clean_with_state(
        states: &ProducerStates,
        tp: &TopicPartition,
        log: &crate::disk::PartitionLog,
        options: &CleanOptions,
    ) -> Result<crate::storage::CleanOutcome, StorageError> {
        let (first_unstable_offset, aborted) =
            states.cleaner_view(tp, log).await.expect("transactional");
        let view = PartitionTxnView {
            producers: states,
            tp,
            log,
            first_unstable_offset,
            aborted,
        };
        log.clean_with_txns(options, &CleanerCodec, Some(&view))
            .await
    }

    const DIR: &str = "/data/t-0";

    fn partition() -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: 0,
        }
    }

    async fn open_log(disk: &SimDisk) -> crate::disk::PartitionLog {
        let config = LogConfig {
            segment_bytes_max: 1 << 10,
            preallocate_step_bytes: 4096,
            ..LogConfig::default()
        };
        crate::disk::PartitionLog::open_on(
            BrokerDisk::Sim(disk.clone()),
            Path::new(DIR),
            config,
            Clock::System,
        )
        .await
        .expect("open")
        .0
    }

    /// Producers 7 and 9 abort (7 by the coordinator after an epoch bump, coordinator epoch
    /// 3), 8 commits; then plain records roll segments past them all. Durable.
    async fn write_transactions(states: &ProducerStates, log: &crate::disk::PartitionLog) {
        let tp = partition();
        let append = |batch: Bytes| {
            let checked = log.check(batch).expect("valid");
            states.append(&tp, log, checked)
        };
        append(transactional(7, 0, &[b"a", b"b"]))
            .await
            .expect("appended");
        append(transactional(8, 0, &[b"a"]))
            .await
            .expect("appended");
        append(transactional(9, 0, &[b"c"]))
            .await
            .expect("appended");
        for (producer_id, producer_epoch, commit) in [(7, 1, false), (8, 0, true), (9, 0, false)] {
            let marker = TxnMarker {
                producer_id,
                producer_epoch,
                commit,
                coordinator_epoch: 3,
            };
            states
                .write_marker(&tp, log, marker, 1)
                .await
                .expect("marker");
        }
        for round in 0..40_u8 {
            append(batch(Some(&[b'k', round % 4][..])))
                .await
                .expect("appended");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
    }

    fn retention_zero() -> CleanOptions {
        CleanOptions {
            delete_retention_ms: 0,
            ..CleanOptions::default()
        }
    }

    /// The aborted entries a fresh producer state of `log` (a restart) lists, each checked
    /// to have its abort marker still live in the log.
    async fn entries_after_restart(log: &crate::disk::PartitionLog) -> Vec<AbortedRange> {
        let states = ProducerStates::default();
        let (stable, aborted) = states.cleaner_view(&partition(), log).await.expect("seen");
        assert_eq!(stable, log.high_watermark(), "no transaction reopened");
        for entry in &aborted {
            let batches = log.read(entry.marker_offset, 1).await.expect("read");
            let marker = batches.first().expect("the marker's batch");
            assert_eq!(
                control::txn_marker_of(marker).map(|(commit, _)| commit),
                Some(false),
                "aborted entry {entry:?} outlived its marker"
            );
        }
        aborted
    }

    /// The broker's side on a real log: a pass removes the aborted transactions' records, a
    /// later one retires their markers and has the producer state forget their entries
    /// (durably); after a restart the state rebuilt from the snapshot and the log has no
    /// aborted entry and no open transaction, and a retired marker's epochs still count.
    #[test]
    fn cleaned_aborts_are_forgotten_and_stay_forgotten_after_a_restart() {
        crate::test_executor::run(|| async {
            let tp = partition();
            let disk = SimDisk::new();
            let log = open_log(&disk).await;
            let states = ProducerStates::default();
            write_transactions(&states, &log).await;
            let mut removed = (0, 0);
            for _ in 0..2 {
                let outcome = clean_with_state(&states, &tp, &log, &retention_zero())
                    .await
                    .expect("cleaned");
                removed.0 += outcome.aborted_records_removed;
                removed.1 += outcome.abort_markers_removed.len();
            }
            assert_eq!(removed, (3, 2), "3 aborted records, then their 2 markers");
            assert_eq!(
                states.with_txns(&tp, &log, |t| t.aborted().count()).await,
                0
            );
            drop(log);
            // From the snapshot written when the entries were forgotten, and from the log
            // alone (the retired markers and the emptied batches replayed).
            for without_snapshot in [false, true] {
                let image = disk.crash_image(CrashMode::ProcessCrash);
                if without_snapshot {
                    image
                        .remove_file(&Path::new(DIR).join("producer-state.snapshot"))
                        .await
                        .expect("removed");
                }
                let log = open_log(&image).await;
                assert_eq!(entries_after_restart(&log).await, vec![]);
                let described = ProducerStates::default().describe(&tp, &log).await;
                let seven = described
                    .iter()
                    .find(|p| p.producer_id == 7)
                    .expect("known");
                assert_eq!((seven.epoch, seven.coordinator_epoch), (1, 3));
                assert_eq!(seven.current_txn_start_offset, -1);
            }
        });
    }

    /// A power cut after every mutating step of the pass that retires the abort markers
    /// (snapshot written, cleaned segments written, swap committed, swapped): after the
    /// restart no aborted entry outlives its marker, and the entries are all there (the cut
    /// came before the snapshot) or none is.
    #[test]
    fn a_power_cut_at_any_step_of_the_marker_pass_leaves_no_entry_without_its_marker() {
        crate::test_executor::run(|| async {
            let tp = partition();
            let base = SimDisk::new();
            {
                let log = open_log(&base).await;
                let states = ProducerStates::default();
                write_transactions(&states, &log).await;
                let first = clean_with_state(&states, &tp, &log, &retention_zero())
                    .await
                    .expect("cleaned");
                assert_eq!(first.aborted_records_removed, 3);
                assert!(
                    first.abort_markers_removed.is_empty(),
                    "markers wait a pass"
                );
                // A snapshot holding both entries (without one, a restart's replay finds no
                // record of their transactions and rebuilds no entry: nothing to hide).
                states
                    .forget_cleaned_aborts(&tp, &log, &[])
                    .await
                    .expect("snapshot");
                log.close().await.expect("close");
            }
            let all =
                entries_after_restart(&open_log(&base.crash_image(CrashMode::ProcessCrash)).await)
                    .await;
            assert_eq!(all.len(), 2);
            let (mut saw_all, mut saw_none) = (0, 0);
            for steps in 0.. {
                let image = base.crash_image(CrashMode::ProcessCrash);
                let log = open_log(&image).await;
                let states = ProducerStates::default();
                image.power_cut_after_steps(steps);
                let finished = clean_with_state(&states, &tp, &log, &retention_zero())
                    .await
                    .is_ok()
                    && !image.is_powered_off();
                drop((log, states));
                let after = image.crash_image(CrashMode::PowerCut);
                let entries = entries_after_restart(&open_log(&after).await).await;
                if entries == all {
                    saw_all += 1;
                } else {
                    assert_eq!(entries, vec![], "after {steps} steps: some entries");
                    saw_none += 1;
                }
                if finished {
                    break;
                }
            }
            assert!(
                saw_all > 0 && saw_none > 2,
                "all {saw_all}, none {saw_none}"
            );
        });
    }

    #[test]
    fn a_record_without_a_key_is_refused_with_invalid_record() {
        assert_eq!(refuse_keyless(&[batch(Some(b"k2"))]), Ok(()));
        assert_eq!(
            refuse_keyless(&[batch(Some(b"k2")), batch(None)]),
            Err(codes::INVALID_RECORD)
        );
        // A tombstone has a key: accepted.
        let tombstone = build::batch(&[build::Record {
            key: Some(b"k"),
            value: None,
            timestamp_ms: 1,
        }]);
        assert_eq!(refuse_keyless(&[tombstone]), Ok(()));
    }

    #[test]
    fn a_compressed_batch_is_opened_to_look_for_keys() {
        for key in [Some(&b"k2"[..]), None] {
            let plain = batch(key);
            let compressed =
                crate::recompress::recompress(plain, Codec::Gzip).expect("recompressed");
            let expected = if key.is_some() {
                Ok(())
            } else {
                Err(codes::INVALID_RECORD)
            };
            assert_eq!(refuse_keyless(std::slice::from_ref(&compressed)), expected);
            // And the cleaner's codec opens what the produce path compressed.
            let header = BatchHeader::parse(&compressed).expect("header");
            let records = CleanerCodec
                .decompress(header.attributes, &compressed[BATCH_HEADER_BYTES..])
                .expect("opens");
            assert_eq!(check_keys(&records, 2), expected);
            let again = CleanerCodec
                .compress(header.attributes, &records)
                .expect("closes");
            assert_eq!(
                CleanerCodec
                    .decompress(header.attributes, &again)
                    .as_deref(),
                Some(&records[..])
            );
        }
    }
}
