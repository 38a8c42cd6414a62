//! Produce: split per partition, send each piece to its owning shard, answer when the acks
//! condition holds there. A missing partition or a bad batch is a per-partition error code.
//!
//! Two stages, as in Redpanda: [`dispatch`] runs synchronously while the connection starts
//! the request, and puts every piece in its partition's append line (locally, or in order
//! over the mesh); the returned future waits for the acks. The connection dispatches its
//! requests one after the other, so a client's pipelined requests are appended to each
//! partition in request order, while their acks waits overlap.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, select, LocalBoxFuture};
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProduceRequest, ProduceResponse, TopicName};

use crate::acl::model::{Operation, ResourceType};
use crate::config::BrokerConfig;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, topic_name, PartitionAccess, RequestContext};
use crate::message_format;
use crate::metadata::{MetadataSnapshot, TopicPartition};
use crate::partition::{self, ProduceOrigin, ProduceOutcome};
use crate::recompress::apply_codec_rules;
use crate::records::split_batches;

pub async fn handle(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: ProduceRequest,
) -> ProduceResponse {
    dispatch(shard, context, request).await
}

/// Stage one, synchronous: every piece of the request takes its place at its partition
/// before this returns. The future it returns is stage two: the pieces' answers.
pub fn dispatch(
    shard: &PartitionAccess<'_>,
    context: &RequestContext,
    request: ProduceRequest,
) -> impl Future<Output = ProduceResponse> + 'static {
    let snapshot = shard.metadata.current();
    let rules = PieceRules {
        version: context.api_version,
        acks: request.acks,
        timeout: Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0).max(1)),
        origin: ProduceOrigin {
            connection_id: context.connection_id,
            request_sequence: context.request_sequence,
        },
        // Kafka's `handleProduceRequest`: transactional records need the request's
        // transactional id and WRITE on it.
        transactional_id_authorized: request.transactional_id.as_ref().is_some_and(|id| {
            context.authorize(
                Operation::Write,
                ResourceType::TransactionalId,
                id.0.as_str(),
            )
        }),
    };
    let transactional_id = request.transactional_id.as_ref().map(|id| id.0.to_string());
    let mut responses = Vec::with_capacity(request.topic_data.len());
    // One slot per piece, in request order; the pieces appending fill theirs from one task.
    let mut slots: Vec<Slot> = Vec::new();
    let mut appending: Vec<(usize, Appending)> = Vec::new();
    for (topic_index, mut topic) in request.topic_data.into_iter().enumerate() {
        // v13+ names the topic by id only (KIP-516); an id the metadata does not know is
        // UNKNOWN_TOPIC_ID on every partition, checked before authorization as Kafka's
        // `KafkaApis.handleProduceRequest` does. Below v13 the id is not on the wire (nil).
        let refusal = if rules.version >= PRODUCE_VERSION_TOPIC_IDS_MIN {
            match snapshot.topic_by_id(topic.topic_id) {
                Some(metadata) => {
                    topic.name = topic_name(metadata);
                    None
                }
                None => Some(codes::UNKNOWN_TOPIC_ID),
            }
        } else {
            None
        };
        let refusal = refusal.or_else(|| {
            (!context.authorize_topic(Operation::Write, topic.name.0.as_str()))
                .then_some(codes::TOPIC_AUTHORIZATION_FAILED)
        });
        for partition in topic.partition_data {
            if let Some(error_code) = refusal {
                let refused = partition_answer(partition.index, error_code, -1, -1);
                slots.push(Slot::answered(topic_index, partition.index, refused));
                continue;
            }
            let piece = Piece {
                topic: topic.name.clone(),
                partition: partition.index,
                records: partition.records.unwrap_or_default(),
            };
            let index = partition.index;
            match dispatch_piece(shard, &snapshot, piece, rules, transactional_id.as_deref()) {
                PieceStart::Answered(response) => {
                    slots.push(Slot::answered(topic_index, index, response));
                }
                PieceStart::Appending(future) => {
                    appending.push((slots.len(), future));
                    slots.push(Slot {
                        topic_index,
                        partition: index,
                        state: SlotState::Waiting,
                    });
                }
            }
        }
        // The answer names the topic as the request did: by id from v13 (the name is not on
        // the wire there), by name below.
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic.name)
                .with_topic_id(topic.topic_id),
        );
    }
    let slots = Rc::new(RefCell::new(slots));
    let waiting = (!appending.is_empty()).then(|| {
        (
            run_appends(&slots, appending),
            shard.clock.sleep(rules.timeout),
        )
    });
    let config = shard.config.clone();
    let listener = context.listener;
    async move {
        if let Some((task, timeout)) = waiting {
            // Either all pieces are answered, or the request's time is up.
            select(task, timeout).await;
        }
        for slot in std::mem::take(&mut *slots.borrow_mut()) {
            let (topic_index, partition_response) = slot.into_answer();
            responses[topic_index]
                .partition_responses
                .push(partition_response);
        }
        let node_endpoints = if rules.version >= PRODUCE_VERSION_NODE_ENDPOINTS_MIN {
            node_endpoints(&config, &snapshot, listener, &responses)
        } else {
            Vec::new()
        };
        ProduceResponse::default()
            .with_responses(responses)
            .with_node_endpoints(node_endpoints)
    }
}

/// Runs the request's appends in one task and records each outcome in its slot. One task,
/// so no append is cancelled half-way (a dropped future could stop between batches): when
/// the request's timeout fires first, the task carries on and the client hears
/// `REQUEST_TIMED_OUT` for the pieces not answered yet, as from Kafka when acks take too
/// long. Every piece took its place at its partition in the dispatch, so when the task first
/// runs does not matter. One task and one timer per request, not per partition: a request
/// for 1,000 partitions made 1,000 of each.
fn run_appends(
    slots: &Rc<RefCell<Vec<Slot>>>,
    appending: Vec<(usize, Appending)>,
) -> glommio::task::JoinHandle<()> {
    let filled = slots.clone();
    glommio::spawn_local(async move {
        join_all(appending.into_iter().map(|(slot, future)| {
            let filled = filled.clone();
            async move {
                let outcome = future.await;
                // Gone when the request timed out and was answered without it.
                if let Some(entry) = filled.borrow_mut().get_mut(slot) {
                    entry.state = SlotState::Done(outcome);
                }
            }
        }))
        .await;
    })
    .detach()
}

/// The first Produce version whose response names leaders (KIP-951).
const PRODUCE_VERSION_NODE_ENDPOINTS_MIN: i16 = 10;

/// The endpoints of the leaders named in `current_leader`, at the address of the listener the
/// request came in on.
fn node_endpoints(
    config: &BrokerConfig,
    snapshot: &MetadataSnapshot,
    listener: usize,
    responses: &[TopicProduceResponse],
) -> Vec<NodeEndpoint> {
    let named = responses
        .iter()
        .flat_map(|topic| &topic.partition_responses)
        .map(|partition| partition.current_leader.leader_id.0);
    crate::handlers::metadata::endpoints_of(config, snapshot, listener, named)
        .into_iter()
        .map(|(node, host, port, rack)| {
            NodeEndpoint::default()
                .with_node_id(BrokerId(node))
                .with_host(str_bytes(&host))
                .with_port(port)
                .with_rack(rack.as_deref().map(str_bytes))
        })
        .collect()
}

/// One partition's share of a produce request.
struct Piece {
    topic: TopicName,
    partition: i32,
    records: Bytes,
}

/// What applies to every piece of one request.
#[derive(Clone, Copy)]
struct PieceRules {
    /// The request's Produce version (zstd batches need v7).
    version: i16,
    acks: i16,
    /// The request's `timeout_ms`: how long the client is willing to wait for its acks.
    timeout: Duration,
    origin: ProduceOrigin,
    /// The request names a transactional id the principal may WRITE: needed for
    /// transactional batches.
    transactional_id_authorized: bool,
}

/// A piece's append on its partition's owner, dispatched: the wait for its outcome
/// (`None`: the owner is gone, only during shutdown).
type Appending = LocalBoxFuture<'static, Option<ProduceOutcome>>;

/// What the dispatch of a piece gives: its answer at once (refused), or its append.
enum PieceStart {
    Answered(PartitionProduceResponse),
    Appending(Appending),
}

/// One piece of the request in the response: where it goes and how far it got.
struct Slot {
    topic_index: usize,
    partition: i32,
    state: SlotState,
}

enum SlotState {
    Answered(PartitionProduceResponse),
    Waiting,
    Done(Option<ProduceOutcome>),
}

impl Slot {
    fn answered(topic_index: usize, partition: i32, response: PartitionProduceResponse) -> Slot {
        Slot {
            topic_index,
            partition,
            state: SlotState::Answered(response),
        }
    }

    /// The piece's answer; one still waiting when the request's time ran out timed out.
    fn into_answer(self) -> (usize, PartitionProduceResponse) {
        let response = match self.state {
            SlotState::Answered(response) => response,
            SlotState::Done(Some(outcome)) => partition_answer(
                self.partition,
                outcome.error_code,
                outcome.base_offset,
                outcome.log_start_offset,
            ),
            SlotState::Done(None) => {
                partition_answer(self.partition, codes::NOT_LEADER_OR_FOLLOWER, -1, -1)
            }
            SlotState::Waiting => {
                partition_answer(self.partition, codes::REQUEST_TIMED_OUT, -1, -1)
            }
        };
        (self.topic_index, response)
    }
}

fn partition_answer(
    partition: i32,
    error_code: i16,
    base_offset: i64,
    log_start_offset: i64,
) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(partition)
        .with_error_code(error_code)
        .with_base_offset(base_offset)
        .with_log_start_offset(log_start_offset)
}

/// Checks what can be checked here and dispatches the piece to its partition's owner.
fn dispatch_piece(
    shard: &PartitionAccess<'_>,
    snapshot: &Arc<MetadataSnapshot>,
    piece: Piece,
    rules: PieceRules,
    transactional_id: Option<&str>,
) -> PieceStart {
    let Piece {
        topic,
        partition,
        records,
    } = piece;
    let refuse = |error_code| PieceStart::Answered(partition_answer(partition, error_code, -1, -1));
    if !matches!(rules.acks, -1..=1) {
        return refuse(codes::INVALID_REQUIRED_ACKS);
    }
    // Only the group and transaction coordinators write the internal topics, as in Kafka.
    if crate::metadata::is_internal_topic(topic.0.as_str()) {
        return refuse(codes::INVALID_TOPIC_EXCEPTION);
    }
    let (Some(topic_metadata), Some(owner)) = (
        snapshot.topic(topic.0.as_str()),
        snapshot.owner_of(topic.0.as_str(), partition),
    ) else {
        return refuse(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    // A replicated partition with a replica here: its Raft group answers (the leader takes
    // the produce, another replica refuses it; `replica::serve`).
    let replicas = topic_metadata.replicas(partition);
    let replicated = replicas.len() > 1;
    let hosted_replica = replicated && replicas.contains(&snapshot.local_node);
    // Another broker's partition (issue 12): refused with its leader for v10+ clients
    // (KIP-951; the leader's endpoint goes in the response's `node_endpoints`).
    if snapshot
        .broker_of(topic.0.as_str(), partition)
        .is_some_and(|leader| leader != snapshot.local_node && !hosted_replica)
    {
        let refused = partition_answer(partition, codes::NOT_LEADER_OR_FOLLOWER, -1, -1);
        let hint = snapshot
            .current_leader(topic_metadata, partition)
            .map_or_else(LeaderIdAndEpoch::default, |(leader, epoch)| {
                LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(leader))
                    .with_leader_epoch(epoch)
            });
        return PieceStart::Answered(refused.with_current_leader(hint));
    }
    // As Kafka does before appending: acks=all promises the write is on min.insync.replicas
    // replicas, and an unreplicated partition has exactly one in sync (docs/REPLICATION.md).
    // A replicated one is checked against its group's in-sync set (`replica::serve`).
    if rules.acks == -1
        && !replicated
        && topic_metadata.config.min_insync_replicas > IN_SYNC_REPLICAS
    {
        return refuse(codes::NOT_ENOUGH_REPLICAS);
    }
    // Produce v0-2 carries message format v0/v1: one v2 batch from here on (`message_format`).
    let records = if rules.version < PRODUCE_VERSION_V2_FORMAT_MIN {
        match message_format::up_convert(&records, topic_metadata.config.max_message_bytes as usize)
        {
            Ok(batch) => batch,
            Err(error_code) => return refuse(error_code),
        }
    } else {
        records
    };
    let batches = match split_batches(&records, topic_metadata.config.max_message_bytes as usize) {
        Ok(batches) => batches,
        Err(error_code) => return refuse(error_code),
    };
    // Kafka refuses the whole request; each piece holding transactional batches is refused
    // here (a transactional producer's pieces all hold them).
    if !rules.transactional_id_authorized && batches.iter().any(is_transactional) {
        return refuse(TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let batches = match apply_codec_rules(batches, rules.version, topic_metadata.config.compression)
    {
        Ok(batches) => batches,
        Err(error_code) => return refuse(error_code),
    };
    // The cleaner keeps the last record per key: a record without one has no place in a
    // compacted topic (Kafka's INVALID_RECORD).
    if topic_metadata.config.is_compacted() {
        if let Err(error_code) = crate::compaction::refuse_keyless(&batches) {
            return refuse(error_code);
        }
    }
    let tp = TopicPartition {
        topic: topic_metadata.name.clone(),
        partition,
    };
    // Only a transactional piece is verified with its coordinator (KIP-890).
    let transactional_id = transactional_id
        .filter(|_| batches.iter().any(is_transactional))
        .map(str::to_string);
    // The piece takes its place at the partition now; `dispatch` runs the wait.
    PieceStart::Appending(Box::pin(partition::produce_on(
        shard.router,
        owner,
        tp,
        batches,
        rules.acks,
        rules.origin,
        transactional_id,
    )))
}

const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 =
    kafka_protocol::error::ResponseError::TransactionalIdAuthorizationFailed.code();

fn is_transactional(batch: &Bytes) -> bool {
    crate::storage::batch::BatchHeader::parse(batch).is_some_and(|header| header.is_transactional())
}

/// The first Produce version that names topics by id (KIP-516). v12 (KIP-890 part 2) only
/// tells a transactional broker the client lets it add partitions implicitly; without
/// transactions it is v11 on the wire and in meaning.
const PRODUCE_VERSION_TOPIC_IDS_MIN: i16 = 13;

/// The first Produce version whose records are v2 batches (KIP-98); below it, `MessageSet`s.
const PRODUCE_VERSION_V2_FORMAT_MIN: i16 = 3;

/// Replicas of a partition in sync with its leader: the leader alone until replication
/// lands (issue 12).
const IN_SYNC_REPLICAS: i64 = 1;
