//! Fetch: read whole batches from each partition's owner; when fewer than `min_bytes` are
//! available, park until an append on any requested partition wakes us or `max_wait_ms`
//! passes (no polling loop: every wait is on the partition's own wake-up).
//!
//! Memory: each round first asks every partition's offsets without reading (`max_bytes`
//! 0), then reads only the partitions with data under a reservation of the shard's fetch
//! budget (`Limits::shard_fetch_bytes_max`) sized to those reads, and keeps only the bytes
//! read until the response is assembled. An idle long poll reserves nothing, and a round
//! never reserves the client's whole `max_bytes` (librdkafka and the Java client ask for
//! 50 MiB) for a response of a few hundred bytes.
//!
//! Isolation (v4+, KIP-98): a `read_committed` request reads each partition up to its last
//! stable offset (`partition::Isolation`), is answered the aborted transactions overlapping
//! the batches returned, and its long poll waits for the last stable offset to move, not
//! the high watermark. `read_uncommitted` reads to the high watermark as before; both are
//! told the last stable offset.
//!
//! Codecs: below v10 no zstd batch is returned (KIP-110), as the client may not decode it;
//! the rule is `recompress::apply_fetch_codec_rule`, applied to each read as soon as it is
//! back, on the batch headers already in memory.
//!
//! Copies: none of a record byte. The batches come back as `Bytes` of the tail cache or of
//! the segment read, and the answer keeps them as they are (`FetchAnswer`); the frame is
//! their framing encoded apart and the batches themselves (`fetch_frame`), written to the
//! socket with vectored writes.

use std::sync::Arc;
use std::time::Duration;

use crate::acl::model::Operation;
use crate::budgets::ByteBudget;
use crate::handlers::context::{topic_name, PartitionAccess, RequestContext};
use crate::handlers::{Answer, ResponseFrame};
use bytes::Bytes;
use futures::future::{join_all, select, select_all, Either};
use futures::FutureExt;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};

use crate::codec::CodecError;
use crate::error_codes as codes;
use crate::fetch_sessions::{SessionPlan, NO_SESSION_ID};
use crate::message_format;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::metrics::ResponseErrorCode;
use crate::partition::{self, FetchOutcome, Isolation, WaitOutcome};
use crate::recompress::{apply_fetch_codec_rule, CompressionType};

/// One requested partition, resolved against the metadata once per request.
struct Wanted {
    topic_index: usize,
    partition: i32,
    /// `None` when the topic or partition does not exist, or this broker refuses to serve
    /// it (`refused`).
    placement: Option<(TopicPartition, usize)>,
    /// `FENCED_LEADER_EPOCH`/`UNKNOWN_LEADER_EPOCH` (v9+) or `NOT_LEADER_OR_FOLLOWER`
    /// (`MetadataSnapshot::leader_check`): answered without asking the owner.
    refused: Option<i16>,
    /// The partition's leader and epoch, named in a refusal's `current_leader` (v12+).
    leader: Option<(i32, i32)>,
    offset: i64,
    max_bytes: usize,
    /// The topic's `compression.type`, for the Fetch codec rule.
    compression: CompressionType,
    /// The request's `isolation_level`: `read_committed` reads up to the last stable offset.
    isolation: Isolation,
}

/// A Fetch response whose records are still the batches as they were read: `response` has
/// no records of its own where `partition_batches` has batches (one entry per partition, in
/// the response's order).
pub struct FetchAnswer {
    pub response: FetchResponse,
    pub partition_batches: Vec<Vec<Bytes>>,
}

impl ResponseErrorCode for FetchAnswer {
    fn error_code(&self) -> i16 {
        self.response.error_code()
    }
}

impl Answer for FetchAnswer {
    fn into_frame(self, context: &RequestContext) -> Result<ResponseFrame, CodecError> {
        ringfeed_protocol::fetch_frame::encode_fetch_response_frame(
            context.api_version,
            context.correlation_id,
            self.response,
            &self.partition_batches,
        )
    }
}

/// Serves `request` within its fetch session, if it has one (`fetch_sessions`): a session
/// error is answered at once; an incremental request is served as the session's whole list
/// of partitions and answered with those that changed.
pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    mut request: FetchRequest,
) -> FetchAnswer {
    let plan = shard.fetch_sessions.borrow_mut().begin(
        shard.clock.now_ms(),
        &mut request,
        context.api_version,
    );
    if let SessionPlan::Error(error_code) = plan {
        return FetchAnswer {
            response: FetchResponse::default()
                .with_error_code(error_code)
                .with_session_id(NO_SESSION_ID),
            partition_batches: Vec::new(),
        };
    }
    let mut answer = serve(shard, context, request).await;
    let mut sessions = shard.fetch_sessions.borrow_mut();
    answer.response.session_id = match plan {
        SessionPlan::Full {
            privileged,
            uses_topic_ids,
            partitions,
        } => sessions.finish_full(
            shard.clock.now_ms(),
            privileged,
            uses_topic_ids,
            partitions,
            &answer.response.responses,
        ),
        SessionPlan::Incremental { session_id } => {
            let has_records: Vec<bool> = answer
                .partition_batches
                .iter()
                .map(|batches| !batches.is_empty())
                .collect();
            let kept = sessions.finish_incremental(
                session_id,
                &mut answer.response.responses,
                &has_records,
            );
            let mut kept = kept.into_iter();
            answer
                .partition_batches
                .retain(|_| kept.next().expect("one flag per partition"));
            session_id
        }
        SessionPlan::Sessionless | SessionPlan::Error(_) => NO_SESSION_ID,
    };
    answer
}

async fn serve(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: FetchRequest,
) -> FetchAnswer {
    let limits = &shard.config.limits;
    let deadline = shard.clock.now()
        + Duration::from_millis(request.max_wait_ms.max(0) as u64).min(limits.fetch_wait_max);
    let response_bytes_max =
        (request.max_bytes.max(1) as usize).min(limits.fetch_response_bytes_max);
    let min_bytes = request.min_bytes.max(0) as usize;
    let snapshot = shard.metadata.current();
    let (request, mut refused_topics) = resolve_topic_ids(&snapshot, request, context.api_version);
    let (request, unreadable_topics) = refuse_unreadable(context, request);
    refused_topics.extend(unreadable_topics);
    let (wanted, mut topics) = resolve(&snapshot, request, response_bytes_max);
    // What the round before the last wait saw: a wait that ends with nothing appended (and
    // neither the deadline nor shutdown reached) must not start a round that waits again at
    // once, or the loop spins without yielding until the deadline and starves the shard.
    let mut seen_before_wait: Option<Vec<i64>> = None;
    loop {
        let mut outcomes = join_all(wanted.iter().map(|wanted| fetch_one(shard, wanted, 0))).await;
        let (reserved, unread_data) =
            read_with_budget(shard, &wanted, &mut outcomes, response_bytes_max).await;
        // Before the readiness checks: a refused partition is an error (answered now), and
        // batches it drops are not counted toward `min_bytes`.
        for (wanted, outcome) in wanted.iter().zip(&mut outcomes) {
            apply_codec_rule(wanted, outcome, context.api_version);
        }
        let available: usize = outcomes
            .iter()
            .flat_map(|outcome| &outcome.batches)
            .map(Bytes::len)
            .sum();
        let any_error = outcomes
            .iter()
            .any(|outcome| outcome.error_code != codes::NONE);
        // Wait for appends past what this round saw, not past the fetch offset: with some
        // data below min_bytes the latter would be satisfied at once and spin. (For
        // read_committed, what it saw is the last stable offset.)
        let seen_high_watermarks: Vec<i64> = wanted
            .iter()
            .zip(&outcomes)
            .map(|(wanted, outcome)| outcome.readable_end(wanted.isolation))
            .collect();
        let now = shard.clock.now();
        let woken_for_nothing = seen_before_wait.as_ref() == Some(&seen_high_watermarks);
        if woken_for_nothing {
            tracing::debug!(
                "a fetch wait ended with nothing appended; answering with what there is"
            );
        }
        if available >= min_bytes
            || any_error
            || unread_data
            || now >= deadline
            || shard.shutdown.is_started()
            || wanted.is_empty()
            || woken_for_nothing
        {
            if let Some(magic) = message_format::fetch_magic(context.api_version) {
                down_convert(&wanted, &mut outcomes, magic, context.api_version);
            }
            let mut partition_batches =
                assemble(&wanted, outcomes, response_bytes_max, &mut topics);
            // The refused partitions come last, with no records (one entry each for the frame).
            let refused_partitions = refused_topics.iter().map(|topic| topic.partitions.len());
            partition_batches.extend(std::iter::repeat_n(Vec::new(), refused_partitions.sum()));
            topics.extend(refused_topics);
            let node_endpoints = if context.api_version >= FETCH_VERSION_NODE_ENDPOINTS_MIN {
                node_endpoints(shard, context, &snapshot, &topics)
            } else {
                Vec::new()
            };
            return FetchAnswer {
                response: FetchResponse::default()
                    .with_responses(topics)
                    .with_node_endpoints(node_endpoints),
                partition_batches,
            };
        }
        drop(reserved); // a parked fetch holds no budget
        wait_for_any_append(shard, &wanted, &seen_high_watermarks, deadline - now).await;
        seen_before_wait = Some(seen_high_watermarks);
    }
}

/// The first Fetch version whose response carries `node_endpoints` (KIP-951).
const FETCH_VERSION_NODE_ENDPOINTS_MIN: i16 = 16;

/// The endpoints of the leaders named in `current_leader` (KIP-951), at the address of the
/// listener the request came in on, so a client can go there without a Metadata round trip.
fn node_endpoints(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    snapshot: &MetadataSnapshot,
    topics: &[FetchableTopicResponse],
) -> Vec<NodeEndpoint> {
    let named = topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| partition.current_leader.leader_id.0);
    crate::handlers::metadata::endpoints_of(shard.config, snapshot, context.listener, named)
        .into_iter()
        .map(|(node, host, port, rack)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(node))
                .with_host(crate::handlers::str_bytes(&host))
                .with_port(port)
                .with_rack(rack.as_deref().map(crate::handlers::str_bytes))
        })
        .collect()
}

/// Fetch v13+ names topics by id (KIP-516): names each topic whose id the metadata knows, so
/// the rest of the request is served by name, and takes out those it does not know, each
/// answered with `UNKNOWN_TOPIC_ID` on every partition and its id echoed (Kafka's
/// `KafkaApis.handleFetchRequest`, which checks this before authorization). Below v13 the
/// request is returned as it is.
fn resolve_topic_ids(
    snapshot: &MetadataSnapshot,
    mut request: FetchRequest,
    version: i16,
) -> (FetchRequest, Vec<FetchableTopicResponse>) {
    if version < 13 {
        return (request, Vec::new());
    }
    let mut unknown = Vec::new();
    request.topics.retain_mut(|topic| {
        if let Some(metadata) = snapshot.topic_by_id(topic.topic_id) {
            topic.topic = topic_name(metadata);
            true
        } else {
            unknown.push(refused_topic(topic, codes::UNKNOWN_TOPIC_ID));
            false
        }
    });
    (request, unknown)
}

/// Kafka's `FetchResponse.partitionResponse(tp, error)` for every partition of `topic`: the
/// error, unknown (-1) offsets and no records; the topic named as the request named it.
fn refused_topic(
    topic: &kafka_protocol::messages::fetch_request::FetchTopic,
    error_code: i16,
) -> FetchableTopicResponse {
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            PartitionData::default()
                .with_partition_index(partition.partition)
                .with_error_code(error_code)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
        })
        .collect();
    FetchableTopicResponse::default()
        .with_topic(topic.topic.clone())
        .with_topic_id(topic.topic_id)
        .with_partitions(partitions)
}

/// Takes out of the request the topics the principal may not READ, each answered with
/// `TOPIC_AUTHORIZATION_FAILED` on every partition it names (Kafka's per-partition answer).
fn refuse_unreadable(
    context: &RequestContext,
    mut request: FetchRequest,
) -> (FetchRequest, Vec<FetchableTopicResponse>) {
    // The plaintext fetch path without ACLs: no second list of topics per request.
    if !context.enforces_acls() {
        return (request, Vec::new());
    }
    let (readable, unreadable) = std::mem::take(&mut request.topics)
        .into_iter()
        .partition(|topic| context.authorize_topic(Operation::Read, topic.topic.0.as_str()));
    request.topics = readable;
    let refused = unreadable
        .iter()
        .map(|topic| refused_topic(topic, codes::TOPIC_AUTHORIZATION_FAILED))
        .collect();
    (request, refused)
}

fn resolve(
    snapshot: &Arc<MetadataSnapshot>,
    request: FetchRequest,
    response_bytes_max: usize,
) -> (Vec<Wanted>, Vec<FetchableTopicResponse>) {
    let mut wanted = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    // Below v4 the field is not on the wire and decodes as 0 (read_uncommitted).
    let isolation = Isolation::from_level(request.isolation_level);
    for (topic_index, topic) in request.topics.into_iter().enumerate() {
        let name = topic.topic.0.as_str();
        for partition in &topic.partitions {
            let metadata = snapshot.topic(name);
            let mut placement = metadata
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
            // Below v9 `current_leader_epoch` is not on the wire and decodes as -1 (no check).
            let refused = placement
                .as_ref()
                .zip(metadata)
                .map(|(_, metadata)| {
                    snapshot.leader_check(
                        metadata,
                        partition.partition,
                        partition.current_leader_epoch,
                    )
                })
                .filter(|error_code| *error_code != codes::NONE);
            if refused.is_some() {
                placement = None;
            }
            let leader = metadata
                .and_then(|metadata| snapshot.current_leader(metadata, partition.partition));
            wanted.push(Wanted {
                topic_index,
                partition: partition.partition,
                placement,
                refused,
                leader,
                offset: partition.fetch_offset,
                max_bytes: (partition.partition_max_bytes.max(1) as usize).min(response_bytes_max),
                compression: metadata
                    .map_or(CompressionType::Producer, |topic| topic.config.compression),
                isolation,
            });
        }
        // v13+: the id is what the answer carries (the name is not on the wire there).
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(topic.topic)
                .with_topic_id(topic.topic_id),
        );
    }
    (wanted, topics)
}

/// Reads the partitions whose probe (`outcomes`, offsets only) shows data, in request order,
/// each up to its partition `max_bytes` and all together up to `response_bytes_max` of bytes
/// actually read, and puts what they read in `outcomes`. The reads hold a reservation of the
/// shard's fetch budget; it is acquired before any read is sent and shrunk to the bytes read
/// after each pass. The first pass waits for its reservation holding none of the budget, so
/// fetches cannot deadlock on it; later passes only take what is free at once.
///
/// A pass gives every partition with data its whole partition `max_bytes` of the response,
/// so it may stop short of the partitions at the end of the request while the response is
/// far from full (50 MiB responses of 1 MiB partitions: 50 partitions a pass). As Kafka fills
/// a response with the bytes actually read, more passes read the partitions left over from
/// what is left of `response_bytes_max`; otherwise a consumer of many partitions would be
/// served the first ones of its request only. `true` with the reservation when a partition
/// with data was left unread (the response is full, or the budget is taken).
async fn read_with_budget(
    shard: &PartitionAccess<'_>,
    wanted: &[Wanted],
    outcomes: &mut [FetchOutcome],
    response_bytes_max: usize,
) -> (Reservation, bool) {
    let mut pending: Vec<usize> = (0..wanted.len())
        .filter(|&index| {
            let (wanted, probe) = (&wanted[index], &outcomes[index]);
            // Any offset but the readable end (the high watermark, or for read_committed
            // the last stable offset) goes to the read, which also decides the
            // out-of-range cases.
            probe.error_code == codes::NONE && probe.readable_end(wanted.isolation) != wanted.offset
        })
        .collect();
    let mut reservation = Reservation::empty(shard);
    let mut read_bytes = 0;
    let mut first_pass = true;
    while !pending.is_empty() && read_bytes < response_bytes_max {
        let (reads, share_bytes) = shares(wanted, &pending, response_bytes_max - read_bytes);
        let granted = if first_pass {
            reservation.grow(shard, share_bytes as u64).await;
            true
        } else {
            reservation.try_grow(shard, share_bytes as u64)
        };
        if !granted {
            break;
        }
        first_pass = false;
        let read = join_all(
            reads
                .iter()
                .map(|&(index, max_bytes)| fetch_one(shard, &wanted[index], max_bytes)),
        )
        .await;
        for ((index, _), outcome) in reads.iter().zip(read) {
            read_bytes += outcome.batches.iter().map(Bytes::len).sum::<usize>();
            outcomes[*index] = outcome;
        }
        pending.drain(..reads.len());
        // A read returns its first batch whatever its size, so it can exceed its share by
        // less than one batch (`message.max.bytes`); that excess is not reserved.
        reservation.shrink_to(read_bytes as u64);
    }
    (reservation, !pending.is_empty())
}

/// The next partitions of `pending` (in request order) that `bytes_left` of the response
/// can give their whole partition `max_bytes`, at least one, with the bytes they share.
fn shares(wanted: &[Wanted], pending: &[usize], bytes_left: usize) -> (Vec<(usize, usize)>, usize) {
    let mut reads = Vec::new();
    let mut left = bytes_left;
    for &index in pending {
        if left == 0 {
            break;
        }
        let max_bytes = wanted[index].max_bytes.min(left);
        left -= max_bytes;
        reads.push((index, max_bytes));
    }
    assert!(
        !reads.is_empty() || pending.is_empty() || bytes_left == 0,
        "a pass with room reads at least one partition"
    );
    (reads, bytes_left - left)
}

/// Applies `recompress::apply_fetch_codec_rule` to one partition's read. A refused partition
/// is answered as Kafka's `FetchResponse.partitionResponse(tp, error)` does: no records and
/// unknown (-1) offsets. A partition that does not exist keeps its own error.
fn apply_codec_rule(wanted: &Wanted, outcome: &mut FetchOutcome, fetch_version: i16) {
    if wanted.placement.is_none() {
        return;
    }
    if let Err(error_code) =
        apply_fetch_codec_rule(&mut outcome.batches, fetch_version, wanted.compression)
    {
        *outcome = FetchOutcome::failed(error_code);
    }
}

/// Fetch v0-3: each partition's batches as one `MessageSet` of `magic`, converted only now,
/// once per answer (`message_format::down_convert`, bounded by the partition's `max_bytes`).
fn down_convert(wanted: &[Wanted], outcomes: &mut [FetchOutcome], magic: i8, fetch_version: i16) {
    for (wanted, outcome) in wanted.iter().zip(outcomes) {
        let rules = message_format::DownConversion {
            magic,
            fetch_offset: wanted.offset,
            max_bytes: wanted.max_bytes,
            whole_first_message: fetch_version >= 3,
        };
        match message_format::down_convert(&outcome.batches, rules) {
            Ok(set) => outcome.batches = set,
            Err(error_code) => {
                tracing::warn!(error_code, "a stored batch could not be down-converted");
                *outcome = FetchOutcome::failed(error_code);
            }
        }
    }
}

/// Bytes of the shard's fetch budget held by one fetch round, given back when dropped.
struct Reservation {
    budget: ByteBudget,
    bytes: u64,
}

impl Reservation {
    fn empty(shard: &PartitionAccess<'_>) -> Self {
        Self {
            budget: shard.fetch_budget.clone(),
            bytes: 0,
        }
    }

    /// Adds `bytes`, waiting until the budget has them.
    async fn grow(&mut self, shard: &PartitionAccess<'_>, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.budget.reserve(bytes).await;
        self.bytes += bytes;
        Self::report(shard);
    }

    /// Adds `bytes` if the budget has them now; `false` (nothing added) otherwise.
    fn try_grow(&mut self, shard: &PartitionAccess<'_>, bytes: u64) -> bool {
        let granted = self.budget.try_reserve(bytes);
        if granted {
            self.bytes += bytes;
            Self::report(shard);
        }
        granted
    }

    fn report(shard: &PartitionAccess<'_>) {
        shard
            .metrics
            .fetch_budget_reserved(shard.fetch_budget.in_use_bytes());
    }

    /// Gives back what is held beyond `bytes`.
    fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// Fetches one partition from its owner; `max_bytes` 0 answers its offsets and reads nothing.
async fn fetch_one(shard: &PartitionAccess<'_>, wanted: &Wanted, max_bytes: usize) -> FetchOutcome {
    let Some((tp, owner)) = &wanted.placement else {
        return FetchOutcome::failed(wanted.refused.unwrap_or(codes::UNKNOWN_TOPIC_OR_PARTITION));
    };
    let fetched = partition::fetch_on(
        shard.router,
        *owner,
        tp.clone(),
        wanted.offset,
        max_bytes,
        wanted.isolation,
    );
    match fetched.await {
        Some(outcome) => outcome,
        None => FetchOutcome::failed(codes::NOT_LEADER_OR_FOLLOWER),
    }
}

/// Parks until any wanted partition's high watermark passes what the last round saw (and
/// its fetch offset), `wait` passes, or shutdown starts. The waits that lose the race are
/// dropped, remote ones included (the router cancels them at their owner). A wait its
/// owner refuses (it has `Limits::shard_fetch_waits_parked_max` parked) never wakes us:
/// that partition's data is then returned at `wait`, or when another partition wakes us;
/// answering at once would make the client poll again at once, and spin.
async fn wait_for_any_append(
    shard: &PartitionAccess<'_>,
    wanted: &[Wanted],
    seen_high_watermarks: &[i64],
    wait: Duration,
) {
    let mut waits: Vec<_> = wanted
        .iter()
        .zip(seen_high_watermarks)
        .filter_map(|(wanted, seen_high_watermark)| {
            let (tp, owner) = wanted.placement.clone()?;
            let offset = wanted.offset.max(*seen_high_watermark);
            Some(
                partition::wait_for_data_on(
                    shard.router,
                    owner,
                    tp,
                    offset,
                    wait,
                    wanted.isolation,
                )
                .then(|outcome| async move {
                    if outcome == Some(WaitOutcome::Refused) {
                        futures::future::pending::<()>().await;
                    }
                })
                .boxed_local(),
            )
        })
        .collect();
    waits.push(shard.clock.sleep(wait).boxed_local());
    let any_append = select_all(waits);
    let shutdown = std::pin::pin!(shard.shutdown.started());
    match select(any_append, shutdown).await {
        Either::Left(_) | Either::Right(_) => {}
    }
}

/// Fills the response in request order within `response_bytes_max`; the first partition
/// with data is always included whole, as Kafka does, so a large batch cannot stall a consumer.
/// Returns the batches of each partition, in request order, which is the response's order:
/// `resolve` gives each requested topic its own entry of `topics`, so `topic_index` never
/// decreases along `wanted`.
fn assemble(
    wanted: &[Wanted],
    outcomes: Vec<FetchOutcome>,
    response_bytes_max: usize,
    topics: &mut [FetchableTopicResponse],
) -> Vec<Vec<Bytes>> {
    debug_assert!(wanted
        .windows(2)
        .all(|pair| pair[0].topic_index <= pair[1].topic_index));
    let mut response_bytes = 0;
    let mut partition_batches = Vec::with_capacity(wanted.len());
    for (wanted, outcome) in wanted.iter().zip(outcomes) {
        let batch_bytes: usize = outcome.batches.iter().map(Bytes::len).sum();
        let fits = response_bytes == 0 || response_bytes + batch_bytes <= response_bytes_max;
        // read_committed: the aborted transactions of the batches returned, none without.
        let aborted_transactions = if fits && batch_bytes > 0 {
            response_bytes += batch_bytes;
            partition_batches.push(outcome.batches);
            outcome
                .aborted_transactions
                .iter()
                .map(|&(producer_id, first_offset)| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(producer_id))
                        .with_first_offset(first_offset)
                })
                .collect()
        } else {
            partition_batches.push(Vec::new());
            Vec::new()
        };
        // Records stay empty here: the frame splices the batches in (`FetchAnswer`).
        // KIP-951: a refusal names the leader to go to (v12+; `node_endpoints` at v16+).
        let current_leader = match (outcome.error_code, wanted.leader) {
            (codes::NOT_LEADER_OR_FOLLOWER | codes::FENCED_LEADER_EPOCH, Some((id, epoch))) => {
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(id))
                    .with_leader_epoch(epoch)
            }
            _ => LeaderIdAndEpoch::default(),
        };
        let partition = PartitionData::default()
            .with_current_leader(current_leader)
            .with_partition_index(wanted.partition)
            .with_error_code(outcome.error_code)
            .with_high_watermark(outcome.high_watermark)
            .with_last_stable_offset(outcome.last_stable_offset)
            .with_log_start_offset(outcome.log_start_offset)
            .with_aborted_transactions(Some(aborted_transactions))
            .with_records(Some(Bytes::new()));
        topics[wanted.topic_index].partitions.push(partition);
    }
    partition_batches
}
