//! `ringfeed check-data DIR`: verifies a stopped broker's partitions offline: every batch's
//! length, magic and CRC32C, offset continuity across segments, each sealed segment's index,
//! and the recovery checkpoint and clean-shutdown marker (`ringfeed_storage::check`). It only
//! reads, and refuses to run while a broker holds the data directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::storage::check::{check_partition, CheckReport};
use crate::storage::DmaDisk;

/// Checks every partition directory under `data_dir`; prints what it found. Exit status 1
/// when anything is wrong, 2 when the check could not run.
pub fn run(data_dir: &Path) -> ExitCode {
    let _lock = match crate::server::lock_data_dir(data_dir) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("ringfeed check-data: {error}; stop the broker first");
            return ExitCode::from(2);
        }
    };
    let partitions = match partition_dirs(data_dir) {
        Ok(partitions) => partitions,
        Err(error) => {
            eprintln!(
                "ringfeed check-data: cannot list {}: {error}",
                data_dir.display()
            );
            return ExitCode::from(2);
        }
    };
    let checked = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let mut reports = Vec::new();
            for dir in partitions {
                let report = check_partition(&DmaDisk, &dir).await;
                reports.push((dir, report));
            }
            reports
        })
        .and_then(glommio::ExecutorJoinHandle::join);
    let reports = match checked {
        Ok(reports) => reports,
        Err(error) => {
            eprintln!("ringfeed check-data: cannot start an io_uring executor: {error}");
            return ExitCode::from(2);
        }
    };
    print_reports(&reports)
}

/// Subdirectories holding segment files, sorted by name. A shard's Raft hard states
/// (`shard-<n>.raft/raft-meta.log`, `replica`) are not a partition.
fn partition_dirs(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        let raft_meta = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().ends_with(".raft"));
        if path.is_dir()
            && !raft_meta
            && std::fs::read_dir(&path)?
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "log"))
        {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn print_reports(reports: &[(PathBuf, std::io::Result<CheckReport>)]) -> ExitCode {
    let mut damaged = 0;
    for (dir, report) in reports {
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        match report {
            Err(error) => {
                damaged += 1;
                println!("{name}: unreadable: {error}");
            }
            Ok(report) => {
                let offsets = match (report.first_offset, report.next_offset) {
                    (Some(first), Some(next)) => format!("offsets {first}..{next}"),
                    _ => "empty".to_string(),
                };
                let verdict = if report.is_clean() { "ok" } else { "DAMAGED" };
                println!(
                    "{name}: {verdict}: {} segments, {} batches, {} bytes, {offsets}",
                    report.segments, report.batches, report.bytes
                );
                for finding in &report.findings {
                    println!("  {}: {}", finding.file, finding.what);
                }
                damaged += usize::from(!report.is_clean());
            }
        }
    }
    println!(
        "{} partitions checked, {damaged} with findings",
        reports.len()
    );
    if damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
