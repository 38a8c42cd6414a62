//! Helpers shared by the storage tests: an executor within this machine's memlock limit,
//! small-geometry configs that force rolls, workload batches, and a reader of whole logs.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use ringfeed_storage::batch::{build, BatchHeader};
use ringfeed_storage::sim::SimDisk;
use ringfeed_storage::{Clock, Disk, FlushPolicy, LogConfig, PartitionLog, StorageError};

/// Runs `test` on a glommio executor with 1 MiB of io memory (`RLIMIT_MEMLOCK` here is 8 MiB).
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test task");
}

/// Tiny segments and buffers so a few dozen batches cross every boundary the log has.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 10,
        segment_age_max_ms: None,
        retention_bytes: None,
        retention_ms: None,
        index_interval_bytes: 1024,
        preallocate_step_bytes: 16 << 10,
        tail_cache_bytes_max: 0,
        write_chunk_bytes: 8 << 10,
        unwritten_bytes_max: 64 << 10,
        checkpoint_interval_ms: 0,
        flush: FlushPolicy::OnDemand,
        ..LogConfig::default()
    }
}

/// Batch `i` of a deterministic workload: 1 to 8 records of varied sizes, timestamps
/// rising with `i`, values that name their batch so any mix-up shows.
pub fn workload_batch(i: usize) -> Bytes {
    let records = 1 + i % 8;
    let value_bytes = 40 + (i * 397) % 900;
    let values: Vec<Vec<u8>> = (0..records)
        .map(|r| {
            format!("batch-{i}-record-{r}-")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(value_bytes)
                .collect()
        })
        .collect();
    let key = format!("key-{i}");
    let list: Vec<build::Record<'_>> = values
        .iter()
        .enumerate()
        .map(|(r, v)| build::Record {
            key: Some(key.as_bytes()),
            value: Some(v),
            timestamp_ms: 1_000_000 + (i * 10 + r) as i64,
        })
        .collect();
    build::batch(&list)
}

/// `batch` as the log stores it at `base_offset`.
pub fn stored_at(batch: &Bytes, base_offset: i64) -> Bytes {
    ringfeed_storage::batch::with_base_offset(batch, base_offset)
}

pub fn header(bytes: &[u8]) -> BatchHeader {
    BatchHeader::parse(bytes).expect("a batch header")
}

/// Every Raft entry of the log as (index, term, batch), from its first index on.
pub async fn raft_entries<D: Disk>(log: &PartitionLog<D>) -> Vec<(u64, i32, Bytes)> {
    let first = log.first_index();
    log.read_entries(first, log.last_index() + 1, usize::MAX)
        .await
        .expect("entries")
        .into_iter()
        .map(|entry| (entry.index, entry.term, entry.batch))
        .collect()
}

/// Every batch from the log start to the high watermark, in order.
pub async fn read_all<D: Disk>(log: &PartitionLog<D>) -> Vec<Bytes> {
    let mut offset = log.log_start_offset();
    let mut batches = Vec::new();
    loop {
        let chunk = log.read(offset, 10_000).await.expect("read");
        if chunk.is_empty() {
            break;
        }
        for batch in chunk {
            offset = header(&batch).last_offset() + 1;
            batches.push(batch);
        }
    }
    assert_eq!(
        offset.max(log.log_start_offset()),
        log.high_watermark(),
        "reads reach the high watermark"
    );
    batches
}

pub async fn open_sim(
    disk: &SimDisk,
    config: LogConfig,
) -> Result<PartitionLog<SimDisk>, StorageError> {
    PartitionLog::open_on(
        disk.clone(),
        Path::new("/data/topic-0"),
        config,
        Clock::System,
    )
    .await
    .map(|(log, _)| log)
}

pub fn segment_path(base_offset: i64) -> std::path::PathBuf {
    Path::new("/data/topic-0").join(ringfeed_storage::segment::segment_file_name(base_offset))
}
