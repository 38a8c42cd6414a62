//! Entry points of the storage fuzz targets (`fuzz/fuzz_targets/`), kept in the crate so the
//! committed corpus replays through exactly the same code in `cargo test` (stable, no
//! libFuzzer) as under `cargo fuzz`. Compiled for tests and with the `fuzzing` feature only.
//!
//! Each entry point takes arbitrary bytes and panics only when an invariant breaks: any
//! input must end in a value or an error, never a crash.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::{self, BatchHeader};
use crate::meta::{self, MetaKind};
use crate::segment::{index_file_name, segment_file_name, CHECKPOINT_FILE, CLEAN_SHUTDOWN_FILE};
use crate::sim::{CrashMode, SimDisk};
use crate::{Clock, Disk, FlushPolicy, LogConfig, PartitionLog, ReadError};

/// The batch size limit the validation target checks against (Kafka's default
/// `max.message.bytes` plus log overhead, as the log uses).
const BATCH_BYTES_MAX: usize = (1 << 20) + 12;

/// Record-batch validation as the log does it on append (`validate`), as reads do it on
/// stored bytes (`is_intact`), and the record walk of time lookups (`first_at_or_after`),
/// on the same bytes, with the invariants that tie them together.
pub fn batch_validation(data: &[u8]) {
    let verdict = batch::validate(data, BATCH_BYTES_MAX);
    let intact = batch::is_intact(data);
    // A Raft follower's check of an entry a leader's cleaner may have compacted: looser
    // than a producer's (every producer batch passes it), still a whole intact batch.
    let compacted = batch::validate_compacted(data, BATCH_BYTES_MAX);
    if let Ok(header) = &compacted {
        assert!(
            intact,
            "validate_compacted accepted a batch is_intact refuses"
        );
        assert!(
            header.record_count >= 0
                && i64::from(header.record_count) <= i64::from(header.last_offset_delta) + 1
        );
    }
    assert!(
        verdict.is_err() || compacted.is_ok(),
        "a producer's batch must pass a follower's check"
    );
    // Time lookups walk records of batches read from disk without `validate`: any bytes.
    for timestamp_ms in [i64::MIN, -1, 0, 1_700_000_000_000, i64::MAX] {
        let _ = batch::first_at_or_after(data, timestamp_ms);
    }
    let Ok(header) = verdict else {
        return;
    };
    assert!(intact, "validate accepted a batch is_intact refuses");
    assert_eq!(header.total_bytes(), data.len());
    assert!(header.record_count > 0);
    assert_eq!(
        i64::from(header.last_offset_delta),
        i64::from(header.record_count) - 1
    );
    // The log rewrites baseOffset on append; the batch must stay valid (baseOffset lies
    // outside the CRC) and say the new offset.
    for base_offset in [0, 1 << 40, i64::MAX - i64::from(header.last_offset_delta)] {
        let stored = batch::with_base_offset(data, base_offset);
        let restored = batch::validate(&stored, BATCH_BYTES_MAX).expect("rewritten batch");
        assert_eq!(restored.base_offset, base_offset);
        assert_eq!(
            restored.last_offset(),
            base_offset + i64::from(header.last_offset_delta)
        );
        assert!(batch::is_intact(&stored));
    }
    if !header.is_compressed() {
        // `validate` walked every record: the earliest timestamp finds record 0.
        let (delta, _) = batch::first_at_or_after(data, i64::MIN).expect("a first record");
        assert_eq!(delta, 0, "the first record has offset delta 0");
        if let Some((delta, timestamp_ms)) = batch::first_at_or_after(data, header.max_timestamp) {
            assert!((0..=header.last_offset_delta).contains(&delta));
            assert!(timestamp_ms >= header.max_timestamp);
        }
    }
}

/// One file of a fuzzed partition directory. Every entry of the input is
/// `kind: u8, base_offset: u64 LE, length: u32 LE, bytes`; a later entry for the same file
/// replaces an earlier one; a short final entry takes the bytes that are left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Segment `base_offset` holds the bytes as given.
    Segment,
    /// Index file of segment `base_offset`, bytes as given (the envelope must be right).
    IndexRaw,
    /// Index file of segment `base_offset`: the bytes are the rkyv payload, sealed in a
    /// correct envelope by the harness, so the fuzzer reaches the archive validation and
    /// what recovery does with an index it trusts.
    IndexSealed,
    CheckpointRaw,
    /// The recovery checkpoint: payload sealed by the harness (32 bytes make a checkpoint).
    CheckpointSealed,
    MarkerRaw,
    /// The clean-shutdown marker: payload sealed by the harness.
    MarkerSealed,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::Segment,
        FileKind::IndexRaw,
        FileKind::IndexSealed,
        FileKind::CheckpointRaw,
        FileKind::CheckpointSealed,
        FileKind::MarkerRaw,
        FileKind::MarkerSealed,
    ];

    pub fn code(self) -> u8 {
        FileKind::ALL
            .iter()
            .position(|kind| *kind == self)
            .expect("listed") as u8
    }
}

/// Entry header bytes: kind, base offset, length.
const ENTRY_HEADER_BYTES: usize = 1 + 8 + 4;

/// Encodes files in the segment-recovery input format (for seed tools and tests).
pub fn encode_partition_files(files: &[(FileKind, i64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, base_offset, bytes) in files {
        out.push(kind.code());
        out.extend_from_slice(&(*base_offset as u64).to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The partition directory an input describes, as (path, contents) pairs.
pub fn decode_partition_files(dir: &Path, mut data: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    while data.len() >= ENTRY_HEADER_BYTES {
        let kind = FileKind::ALL[usize::from(data[0]) % FileKind::ALL.len()];
        // File names carry 20 decimal digits: keep the base a non-negative i64.
        let base_offset = (u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"))
            & (i64::MAX as u64)) as i64;
        let length = u32::from_le_bytes(data[9..13].try_into().expect("4 bytes")) as usize;
        let rest = &data[ENTRY_HEADER_BYTES..];
        let (bytes, rest) = rest.split_at(length.min(rest.len()));
        data = rest;
        let (name, contents) = match kind {
            FileKind::Segment => (segment_file_name(base_offset), bytes.to_vec()),
            FileKind::IndexRaw => (index_file_name(base_offset), bytes.to_vec()),
            FileKind::IndexSealed => (
                index_file_name(base_offset),
                meta::seal(MetaKind::SegmentIndex, bytes),
            ),
            FileKind::CheckpointRaw => (CHECKPOINT_FILE.to_string(), bytes.to_vec()),
            FileKind::CheckpointSealed => (
                CHECKPOINT_FILE.to_string(),
                meta::seal(MetaKind::RecoveryCheckpoint, bytes),
            ),
            FileKind::MarkerRaw => (CLEAN_SHUTDOWN_FILE.to_string(), bytes.to_vec()),
            FileKind::MarkerSealed => (
                CLEAN_SHUTDOWN_FILE.to_string(),
                meta::seal(MetaKind::CleanShutdown, bytes),
            ),
        };
        let path = dir.join(name);
        files.retain(|(existing, _)| *existing != path);
        files.push((path, contents));
    }
    files
}

/// Small geometry so recovery's index building and preallocation stay cheap per input.
pub fn recovery_fuzz_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        segment_age_max_ms: None,
        retention_bytes: None,
        retention_ms: None,
        index_interval_bytes: 1024,
        preallocate_step_bytes: 8 << 10,
        tail_cache_bytes_max: 0,
        write_chunk_bytes: 8 << 10,
        checkpoint_interval_ms: 1 << 62,
        flush: FlushPolicy::OnDemand,
        ..LogConfig::default()
    }
}

const PARTITION_DIR: &str = "/fuzz/topic-0";

/// Segment recovery: a partition directory whose segment, index, checkpoint and marker
/// files hold the input's bytes is opened as a `PartitionLog` on a `SimDisk`, then read
/// from its start to its high watermark. Refusing to open is fine (damage must be
/// reported); panicking is not, nor is serving a batch that fails its CRC, offsets that do
/// not follow each other, or a read that stops short of the high watermark without an
/// error. The recovered log is then recovered again from a crash image of itself and must
/// come back the same (recovery is idempotent). Must run on a glommio executor. Returns the
/// number of batches served, `None` when recovery refused the directory.
pub async fn segment_recovery(data: &[u8]) -> Option<usize> {
    let dir = Path::new(PARTITION_DIR);
    let disk = SimDisk::new();
    for (path, contents) in decode_partition_files(dir, data) {
        disk.write_file_atomically(&path, &contents)
            .await
            .expect("the simulated disk has no faults armed");
    }
    let Ok((log, _report)) =
        PartitionLog::open_on(disk.clone(), dir, recovery_fuzz_config(), Clock::System).await
    else {
        return None;
    };
    let first = read_whole_log(&log).await;
    let _ = log.max_timestamp().await;
    let _ = log.offset_for_timestamp(0).await;
    let (start, end) = (log.log_start_offset(), log.high_watermark());
    drop(log);

    let image = disk.crash_image(CrashMode::ProcessCrash);
    let (again, _) = PartitionLog::open_on(image, dir, recovery_fuzz_config(), Clock::System)
        .await
        .unwrap_or_else(|error| panic!("a recovered log fails to recover again: {error}"));
    assert_eq!(
        (again.log_start_offset(), again.high_watermark()),
        (start, end),
        "a second recovery moved the log bounds"
    );
    let second = read_whole_log(&again).await;
    assert_eq!(first, second, "a second recovery serves different batches");
    Some(first.batches.len())
}

/// What reading a log from start to end gave: the batches served, then how it ended.
#[derive(Debug, PartialEq, Eq)]
struct WholeRead {
    batches: Vec<Bytes>,
    /// The read stopped at a batch reported corrupt (at this offset).
    corrupt_at: Option<i64>,
}

async fn read_whole_log<D: Disk>(log: &PartitionLog<D>) -> WholeRead {
    let (start, end) = (log.log_start_offset(), log.high_watermark());
    assert!(
        0 <= start && start <= end,
        "log bounds out of order: start {start}, end {end}"
    );
    let mut offset = start;
    let mut batches = Vec::new();
    loop {
        let chunk = match log.read(offset, 64 << 10).await {
            Ok(chunk) => chunk,
            Err(ReadError::Corrupt { .. }) => {
                return WholeRead {
                    batches,
                    corrupt_at: Some(offset),
                }
            }
            Err(error) => panic!("reading offset {offset} of [{start}, {end}): {error}"),
        };
        if chunk.is_empty() {
            assert_eq!(
                offset, end,
                "a read at {offset} returned nothing below the high watermark {end}"
            );
            return WholeRead {
                batches,
                corrupt_at: None,
            };
        }
        for (index, stored) in chunk.into_iter().enumerate() {
            assert!(batch::is_intact(&stored), "served a batch failing its CRC");
            let header = BatchHeader::parse(&stored).expect("intact batch has a header");
            let last = header
                .base_offset
                .checked_add(i64::from(header.last_offset_delta))
                .expect("served batch offsets overflow");
            if index == 0 {
                assert!(
                    header.base_offset <= offset && offset <= last,
                    "read at {offset} served a batch holding {}..={last}",
                    header.base_offset
                );
            } else {
                assert_eq!(header.base_offset, offset, "offsets skip or repeat");
            }
            assert!(
                last < end,
                "served offset {last} at or past the high watermark {end}"
            );
            offset = last + 1;
            batches.push(stored);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/<target>/`) through the entry
    //! points above, so a crash the fuzzer once found stays fixed under plain `cargo test`.
    use super::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.is_file())
            .map(|path| {
                let bytes = std::fs::read(&path).expect("corpus file");
                (path, bytes)
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no corpus", dir.display());
        files
    }

    #[test]
    fn batch_validation_corpus_replays() {
        for (path, bytes) in corpus("batch_validation") {
            println!("{}", path.display());
            batch_validation(&bytes);
        }
    }

    #[test]
    fn segment_recovery_corpus_replays() {
        let files = corpus("segment_recovery");
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                let mut batches_served = 0;
                for (path, bytes) in files {
                    let served = segment_recovery(&bytes).await;
                    println!("{}: {served:?} batches", path.display());
                    batches_served += served.unwrap_or(0);
                }
                // The captured seeds hold real partitions: the replay must reach the reads.
                assert!(batches_served > 0, "no corpus input recovered any batch");
            })
            .expect("executor")
            .join()
            .expect("replay task");
    }

    #[test]
    fn a_segment_whose_offsets_pass_i64_max_is_refused_without_overflow() {
        let records: Vec<batch::build::Record<'_>> = (0..5)
            .map(|_| batch::build::Record {
                key: None,
                value: Some(b"v"),
                timestamp_ms: 0,
            })
            .collect();
        let base_offset = i64::MAX - 2;
        let stored = batch::with_base_offset(&batch::build::batch(&records), base_offset);
        let input = encode_partition_files(&[(FileKind::Segment, base_offset, &stored)]);
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                // Its name is past OFFSET_MAX: the partition is refused with the reason (it
                // used to open with the batch cut as damage), and nothing overflows either way.
                assert_eq!(segment_recovery(&input).await, None, "refused at recovery");
            })
            .expect("executor")
            .join()
            .expect("test task");
    }

    #[test]
    fn a_checkpoint_with_negative_offsets_is_not_used() {
        // An empty directory starts at the checkpoint's next offset: it must not be negative.
        let checkpoint = crate::meta::LogCheckpoint {
            log_start_offset: -7,
            segment_base_offset: -7,
            durable_bytes: 0,
            next_offset: -7,
            segment_base_index: 1,
        };
        let payload = rkyv::to_bytes::<rkyv::rancor::Error>(&checkpoint).expect("archive");
        let input = encode_partition_files(&[(FileKind::CheckpointSealed, 0, &payload)]);
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                assert_eq!(segment_recovery(&input).await, Some(0));
            })
            .expect("executor")
            .join()
            .expect("test task");
    }

    #[test]
    fn partition_files_round_trip_through_the_input_format() {
        let input = encode_partition_files(&[
            (FileKind::Segment, 0, b"abc"),
            (FileKind::CheckpointSealed, 0, &[7; 40]),
            (FileKind::Segment, 0, b"replaced"),
        ]);
        let files = decode_partition_files(Path::new("/d"), &input);
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].1, b"replaced");
        assert_eq!(
            crate::meta::decode_checkpoint(MetaKind::RecoveryCheckpoint, &files[0].1)
                .map(|c| c.log_start_offset),
            Ok(0x0707_0707_0707_0707)
        );
    }
}
