//! Fetch: read whole batches from each partition's owner; when fewer than `min_bytes` are
//! available, park until an append on any requested partition wakes us or `max_wait_ms`
//! passes (no polling loop: every wait is on the partition's own wake-up).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::{join_all, select, select_all, Either};
use futures::FutureExt;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::RequestContext;
use crate::error_codes as codes;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition::{FetchOutcome, PartitionCall, PartitionReply};
use crate::shard::Shard;

/// One requested partition, resolved against the metadata once per request.
struct Wanted {
    topic_index: usize,
    partition: i32,
    /// `None` when the topic or partition does not exist.
    placement: Option<(TopicPartition, usize)>,
    offset: i64,
    max_bytes: usize,
}

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
    request: FetchRequest,
) -> FetchResponse {
    let limits = &shard.config.limits;
    let deadline = Instant::now()
        + Duration::from_millis(request.max_wait_ms.max(0) as u64).min(limits.fetch_wait_max);
    let response_bytes_max =
        (request.max_bytes.max(1) as usize).min(limits.fetch_response_bytes_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    let snapshot = shard.metadata();
    let (wanted, mut topics) = resolve(&snapshot, request, response_bytes_max);
    loop {
        let reserved = shard
            .fetch_budget
            .acquire_static_permit(response_bytes_max as u64)
            .await
            .expect("the fetch budget is never closed");
        shard
            .metrics
            .fetch_budget_reserved(limits.shard_fetch_bytes_max as u64 - shard.fetch_budget.available());
        let outcomes = join_all(wanted.iter().map(|wanted| fetch_one(shard, wanted))).await;
        let available: usize = outcomes
            .iter()
            .flat_map(|outcome| &outcome.batches)
            .map(Bytes::len)
            .sum();
        let any_error = outcomes
            .iter()
            .any(|outcome| outcome.error_code != codes::NONE);
        // Wait for appends past what this round saw, not past the fetch offset: with some
        // data below min_bytes the latter would be satisfied at once and spin.
        let seen_high_watermarks: Vec<i64> = outcomes
            .iter()
            .map(|outcome| outcome.high_watermark)
            .collect();
        let now = Instant::now();
        if available >= min_bytes
            || any_error
            || now >= deadline
            || shard.is_shutting_down()
            || wanted.is_empty()
        {
            assemble(&wanted, outcomes, response_bytes_max, &mut topics);
            return FetchResponse::default().with_responses(topics);
        }
        drop(reserved); // a parked fetch holds no budget
        wait_for_any_append(shard, &wanted, &seen_high_watermarks, deadline - now).await;
    }
}

fn resolve(
    snapshot: &Arc<MetadataSnapshot>,
    request: FetchRequest,
    response_bytes_max: usize,
) -> (Vec<Wanted>, Vec<FetchableTopicResponse>) {
    let mut wanted = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for (topic_index, topic) in request.topics.into_iter().enumerate() {
        let name = topic.topic.0.as_str();
        for partition in &topic.partitions {
            let placement = snapshot
                .topic(name)
                .zip(snapshot.owner_of(name, partition.partition))
                .map(|(metadata, owner)| {
                    (
                        TopicPartition {
                            topic: metadata.name.clone(),
                            partition: partition.partition,
                        },
                        owner,
                    )
                });
            wanted.push(Wanted {
                topic_index,
                partition: partition.partition,
                placement,
                offset: partition.fetch_offset,
                max_bytes: (partition.partition_max_bytes.max(1) as usize).min(response_bytes_max),
            });
        }
        topics.push(FetchableTopicResponse::default().with_topic(topic.topic));
    }
    (wanted, topics)
}

async fn fetch_one(shard: &Shard, wanted: &Wanted) -> FetchOutcome {
    let missing = FetchOutcome {
        error_code: codes::UNKNOWN_TOPIC_OR_PARTITION,
        high_watermark: -1,
        log_start_offset: -1,
        batches: Vec::new(),
    };
    let Some((tp, owner)) = &wanted.placement else {
        return missing;
    };
    let call = PartitionCall::Fetch {
        tp: tp.clone(),
        offset: wanted.offset,
        max_bytes: wanted.max_bytes,
    };
    match shard.partition_call(*owner, call).await {
        Some(PartitionReply::Fetch(outcome)) => outcome,
        Some(other) => panic!("fetch answered with {other:?}"),
        None => FetchOutcome {
            error_code: codes::NOT_LEADER_OR_FOLLOWER,
            ..missing
        },
    }
}

/// Parks until any wanted partition's high watermark passes what the last round saw (and
/// its fetch offset), `wait` passes, or shutdown starts. The waits that lose the race are
/// dropped; remote ones end on their own timer at the owner.
async fn wait_for_any_append(
    shard: &Shard,
    wanted: &[Wanted],
    seen_high_watermarks: &[i64],
    wait: Duration,
) {
    let mut waits: Vec<_> = wanted
        .iter()
        .zip(seen_high_watermarks)
        .filter_map(|(wanted, seen_high_watermark)| {
            let (tp, owner) = wanted.placement.clone()?;
            Some(
                shard
                    .partition_call(
                        owner,
                        PartitionCall::WaitForData {
                            tp,
                            offset: wanted.offset.max(*seen_high_watermark),
                            wait,
                        },
                    )
                    .map(|_| ())
                    .boxed_local(),
            )
        })
        .collect();
    waits.push(glommio::timer::sleep(wait).boxed_local());
    let any_append = select_all(waits);
    let shutdown = std::pin::pin!(shard.shutdown_started());
    match select(any_append, shutdown).await {
        Either::Left(_) | Either::Right(_) => {}
    }
}

/// Fills the response in request order within `response_bytes_max`; the first partition
/// with data is always included whole, as Kafka does, so a large batch cannot stall a consumer.
fn assemble(
    wanted: &[Wanted],
    outcomes: Vec<FetchOutcome>,
    response_bytes_max: usize,
    topics: &mut [FetchableTopicResponse],
) {
    let mut response_bytes = 0;
    for (wanted, outcome) in wanted.iter().zip(outcomes) {
        let batch_bytes: usize = outcome.batches.iter().map(Bytes::len).sum();
        let fits = response_bytes == 0 || response_bytes + batch_bytes <= response_bytes_max;
        let records = if fits && batch_bytes > 0 {
            response_bytes += batch_bytes;
            concatenate(outcome.batches)
        } else {
            Bytes::new()
        };
        let partition = PartitionData::default()
            .with_partition_index(wanted.partition)
            .with_error_code(outcome.error_code)
            .with_high_watermark(outcome.high_watermark)
            .with_last_stable_offset(outcome.high_watermark)
            .with_log_start_offset(outcome.log_start_offset)
            .with_aborted_transactions(Some(Vec::new()))
            .with_records(Some(records));
        topics[wanted.topic_index].partitions.push(partition);
    }
}

/// One contiguous `records` field. A single batch is passed through without a copy.
fn concatenate(mut batches: Vec<Bytes>) -> Bytes {
    if batches.len() == 1 {
        return batches.pop().expect("one batch");
    }
    let mut records = BytesMut::with_capacity(batches.iter().map(Bytes::len).sum());
    for batch in &batches {
        records.extend_from_slice(batch);
    }
    records.freeze()
}
