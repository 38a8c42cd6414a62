//! Guards that the real disk's blocking filesystem calls run off the shard thread (issue 10
//! item 10). A shard is one glommio executor serving all its partitions: a `std::fs` call or
//! the kernel freeing a deleted file's blocks on that thread stalls every one of them (a
//! 2 GiB `DeleteTopics` stopped the shard's other producers for 1.5-2.7 s).
//! - Directory creation, listing and removal let other tasks of the executor run while
//!   they are in progress (they were synchronous calls, done in one poll).
//! - Deleting a partition, or old segments by retention, frees the segments' blocks before
//!   the files are closed, so the last close (which glommio does through `io_uring`, with
//!   the final release on the shard thread) has nothing left to free.

mod common;

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;

use common::{run, small_config, workload_batch};
use ringfeed_storage::sim::yield_once;
use ringfeed_storage::{Disk, DmaDisk, LogConfig, PartitionLog};

/// A task that counts how often the executor gets to run it, until `stop` is set.
fn spawn_ticker(stop: Rc<Cell<bool>>) -> Rc<Cell<u64>> {
    let ticks = Rc::new(Cell::new(0_u64));
    let counter = ticks.clone();
    glommio::spawn_local(async move {
        while !stop.get() {
            counter.set(counter.get() + 1);
            yield_once().await;
        }
    })
    .detach();
    ticks
}

/// How many turns the ticker got while `call` was in progress.
async fn ticks_during<T>(ticks: &Cell<u64>, call: impl std::future::Future<Output = T>) -> u64 {
    let before = ticks.get();
    call.await;
    ticks.get() - before
}

#[test]
fn directory_calls_let_the_shard_serve_meanwhile() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let disk = DmaDisk;
        // Warm up the blocking pool (its thread starts on first use) so what is measured
        // below is the directory call alone.
        disk.create_dir_all(&root.path().join("warm-up"))
            .await
            .expect("create");
        let stop = Rc::new(Cell::new(false));
        let ticks = spawn_ticker(stop.clone());
        let dir = root.path().join("topic-0/nested");
        let created = ticks_during(&ticks, async {
            disk.create_dir_all(&dir).await.expect("create");
        })
        .await;
        for i in 0..50 {
            std::fs::write(dir.join(format!("file-{i}")), [1_u8; 4096]).expect("write");
        }
        let listed = ticks_during(&ticks, async {
            assert_eq!(disk.list_dir(&dir).await.expect("list").len(), 50);
        })
        .await;
        let removed = ticks_during(&ticks, async {
            disk.remove_dir_all(&root.path().join("topic-0"))
                .await
                .expect("remove");
        })
        .await;
        stop.set(true);
        assert!(!dir.exists());
        assert!(
            created > 0 && listed > 0 && removed > 0,
            "other tasks ran during create_dir_all {created} times, list_dir {listed}, \
             remove_dir_all {removed}: a call that never yields ran on the shard thread"
        );
    });
}

/// A log on the real disk in `dir` with a few segments of data.
async fn log_with_segments(dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    let (log, _) = PartitionLog::open(dir, config).await.expect("open");
    for i in 0..300 {
        log.append(workload_batch(i)).await.expect("append");
    }
    log.wait_durable(log.log_end_offset() - 1)
        .await
        .expect("durable");
    log
}

fn segment_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        preallocate_step_bytes: 64 << 10,
        ..small_config()
    }
}

/// Segment files opened by the test, held across a deletion to see what happens to their
/// blocks.
fn witnesses(dir: &std::path::Path) -> Vec<std::fs::File> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| std::fs::File::open(path).expect("open a segment"))
        .collect()
}

fn assert_blocks_freed(witness: &std::fs::File) {
    let meta = witness.metadata().expect("fstat");
    assert_eq!(
        (meta.len(), meta.blocks()),
        (0, 0),
        "a deleted segment still holds its blocks: the last close would free them on the \
         shard thread"
    );
}

#[test]
fn retention_frees_deleted_segments_blocks_before_the_files_close() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("old-0");
        let log = log_with_segments(&dir, segment_config()).await;
        let witnesses = witnesses(&dir);
        assert!(witnesses.len() >= 3, "the workload rolls segments");
        let mut config = log.config();
        config.retention_bytes = Some(1);
        log.set_config(config);
        let deleted = log.enforce_retention().await.expect("retention");
        assert_eq!(deleted, witnesses.len() - 1, "every sealed segment goes");
        for witness in &witnesses[..deleted] {
            assert_blocks_freed(witness);
        }
        assert!(witnesses[deleted].metadata().expect("fstat").blocks() > 0);
        log.close().await.expect("close");
    });
}

#[test]
fn deleting_a_partition_frees_its_blocks_before_the_files_close() {
    run(|| async {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("big-0");
        let log = log_with_segments(&dir, segment_config()).await;
        let witnesses = witnesses(&dir);
        assert!(witnesses.len() >= 3, "the workload rolls segments");
        let stop = Rc::new(Cell::new(false));
        let ticks = spawn_ticker(stop.clone());
        let removed = ticks_during(&ticks, async {
            log.remove().await.expect("remove");
        })
        .await;
        stop.set(true);
        assert!(!dir.exists());
        assert!(removed > 0, "the deletion never let another task run");
        for witness in &witnesses {
            assert_blocks_freed(witness);
        }
    });
}
