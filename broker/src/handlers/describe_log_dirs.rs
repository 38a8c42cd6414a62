//! `DescribeLogDirs`: the bytes each partition holds on disk, and the data directory's size
//! and free space (v4), as `kafka-log-dirs.sh`, Cruise Control and lag/size monitors read them.
//!
//! Ringfeed has one log directory, the data directory, so the answer has one result. Topics
//! `null` means every partition of every topic; a named topic or partition that does not
//! exist, or a partition that is offline, is left out, as Kafka leaves out what it does not
//! host. One call per shard gathers the sizes of all the partitions it owns, so the request
//! costs `shards` cross-shard calls however many partitions it names.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use futures::future::join_all;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, PartitionAccess, RequestContext};
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: DescribeLogDirsRequest,
) -> DescribeLogDirsResponse {
    if !context.authorize_cluster(Operation::Describe) {
        return DescribeLogDirsResponse::default()
            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED);
    }
    let snapshot = shard.metadata.current();
    let shard_count = shard.router.shard_count();
    let mut by_owner: Vec<Vec<TopicPartition>> = vec![Vec::new(); shard_count];
    for (tp, owner) in requested_partitions(&snapshot, &request) {
        by_owner[owner].push(tp);
    }
    let calls = by_owner
        .into_iter()
        .enumerate()
        .filter(|(_, tps)| !tps.is_empty())
        .map(|(owner, tps)| partition::log_sizes_on(shard.router, owner, tps));
    let mut sizes: BTreeMap<std::sync::Arc<str>, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (tp, size) in join_all(calls).await.into_iter().flatten().flatten() {
        let Some(size) = size else { continue };
        sizes.entry(tp.topic).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(tp.partition)
                .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                // A single replica is never behind itself.
                .with_offset_lag(0)
                .with_is_future_key(false),
        );
    }
    let topics = sizes
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|partition| partition.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(partitions)
        })
        .collect();
    let data_dir = &shard.config.data_dir;
    let (total_bytes, usable_bytes) = filesystem_bytes(data_dir).unwrap_or((-1, -1));
    let result = DescribeLogDirsResult::default()
        .with_error_code(codes::NONE)
        .with_log_dir(str_bytes(&data_dir.to_string_lossy()))
        .with_topics(topics)
        .with_total_bytes(total_bytes)
        .with_usable_bytes(usable_bytes);
    DescribeLogDirsResponse::default()
        .with_error_code(codes::NONE)
        .with_results(vec![result])
}

/// The partitions the request names that exist, each with its owning shard, sorted;
/// every partition of every topic when `topics` is null. A partition named twice is
/// described once.
fn requested_partitions(
    snapshot: &MetadataSnapshot,
    request: &DescribeLogDirsRequest,
) -> Vec<(TopicPartition, usize)> {
    let placed = |name: &str, partition: i32| {
        let topic = snapshot.topic(name)?;
        let owner = snapshot.owner_of(name, partition)?;
        Some((
            TopicPartition {
                topic: topic.name.clone(),
                partition,
            },
            owner,
        ))
    };
    let mut found: Vec<(TopicPartition, usize)> = match &request.topics {
        None => snapshot
            .topics
            .values()
            .flat_map(|topic| {
                (0..topic.partition_count()).filter_map(|partition| placed(&topic.name, partition))
            })
            .collect(),
        Some(topics) => topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .filter_map(|&partition| placed(topic.topic.0.as_str(), partition))
            })
            .collect(),
    };
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

/// The size of the filesystem holding `dir` and the bytes an unprivileged writer may still
/// use there (`statvfs`), or `None` when it cannot be read.
fn filesystem_bytes(dir: &Path) -> Option<(i64, i64)> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stats` is a valid place for one `statvfs`.
    let returned = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if returned != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `stats`.
    let stats = unsafe { stats.assume_init() };
    let fragment = u128::from(stats.f_frsize);
    let to_i64 = |blocks: u64| i64::try_from(u128::from(blocks) * fragment).unwrap_or(i64::MAX);
    Some((to_i64(stats.f_blocks), to_i64(stats.f_bavail)))
}
