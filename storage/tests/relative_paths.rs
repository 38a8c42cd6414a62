//! Guards opening a log by a relative path (the broker's default data dir is
//! `./ringfeed-data`): glommio cannot open directories by relative path, so the log must
//! resolve it. A separate test binary, because it changes the process's working directory.

mod common;

use common::{read_all, run, small_config, workload_batch};
use ringfeed_storage::PartitionLog;
use std::path::Path;

#[test]
fn a_log_opens_and_syncs_by_a_relative_path() {
    run(|| async {
        let base = tempfile::tempdir().expect("tempdir");
        std::env::set_current_dir(base.path()).expect("cd");
        let (log, _) = PartitionLog::open(Path::new("data/topic-0"), small_config())
            .await
            .expect("open by relative path");
        let outcome = log.append(workload_batch(0)).await.expect("append");
        log.wait_durable(outcome.last_offset)
            .await
            .expect("durable");
        log.close().await.expect("close");
        let (log, report) = PartitionLog::open(Path::new("data/topic-0"), small_config())
            .await
            .expect("reopen");
        assert!(report.clean_shutdown);
        assert_eq!(read_all(&log).await.len(), 1);
        assert!(base
            .path()
            .join("data/topic-0/00000000000000000000.log")
            .exists());
    });
}
