//! Simulated Kafka clients: each builds requests from `kafka_protocol`'s message structs,
//! runs them through the broker's real request entry (`handlers::start`) on a fake
//! connection, decodes the response frame, and tells the model what it was answered. A
//! client outlives the broker's restarts (an idempotent producer keeps its producer id and
//! sequences; a group member its member id); only its connection is new in each life.

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse,
    TransactionalId,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, FetchRequest, FetchResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse, JoinGroupRequest,
    JoinGroupResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    ProduceRequest, ProduceResponse, ProducerId, ResponseHeader, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

use crate::handlers::{self, str_bytes, Request, RequestContext};
use crate::shard::ShardServices;
use crate::simulation::model::{Model, PartitionKey, TopicFate};
use crate::storage::batch::{build, BatchHeader};
use crate::storage::sim::{SeededRng, SimDisk};
use crate::storage::Clock;

const NONE: i16 = 0;
const PRODUCE_TIMEOUT_MS: i32 = 2_000;
/// A transactional producer's `transaction.timeout.ms` when it never stalls: long enough
/// that the coordinator never aborts its transactions on its own.
pub const TRANSACTION_TIMEOUT_MS: i32 = 600_000;
/// How far past its transaction timeout a stalling producer sleeps: the coordinator checks
/// every `transaction_abort_check_interval` (500 ms in the simulation), so its abort has
/// happened by then.
const STALL_PAST_TIMEOUT_MS: u64 = 1_500;

fn code(error: ResponseError) -> i16 {
    error.code()
}

/// What one life of the broker gives its clients.
#[derive(Clone)]
pub struct Life {
    pub number: u32,
    pub shard: Rc<ShardServices>,
    pub model: Rc<RefCell<Model>>,
    pub clock: Clock,
    pub disk: SimDisk,
}

/// One fake connection: its id, its request sequence, and the calls through the handlers.
pub struct Connection {
    shard: Rc<ShardServices>,
    client_id: String,
    peer: SocketAddr,
    id: u64,
    next_sequence: u64,
}

impl Connection {
    /// Connection ids are unique per life and client (shard 0: the top 16 bits are 0).
    pub fn new(life: &Life, client: u16) -> Self {
        let [high, low] = client.to_be_bytes();
        Self {
            shard: life.shard.clone(),
            client_id: format!("sim-client-{client}"),
            peer: SocketAddr::from((Ipv4Addr::new(10, 0, high, low), 40_000 + client)),
            id: (u64::from(life.number) << 16) | u64::from(client),
            next_sequence: 0,
        }
    }

    /// Runs one request through `handlers::start` and decodes its answer of type `R`.
    pub async fn call<R: Decodable>(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: Request,
    ) -> R {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let context = RequestContext {
            api_key,
            api_version: version,
            correlation_id: i32::try_from(sequence % (1 << 31)).expect("below 2^31"),
            client_id: Some(self.client_id.clone()),
            peer: self.peer,
            connection_id: self.id,
            listener: 0,
            principal: std::sync::Arc::from("User:ANONYMOUS"),
            request_sequence: sequence,
            acls: self.shard.acls.current(),
        };
        let frame = handlers::start(self.shard.clone(), context, request)
            .await
            .expect("the response encodes")
            .expect("every simulated request wants a response");
        let mut frame = BytesMut::from(&frame.concatenated()[..]);
        frame.advance(4); // the size prefix
        let mut frame = frame.freeze();
        ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .expect("the response header decodes");
        R::decode(&mut frame, version).expect("the response body decodes")
    }

    pub async fn produce(&mut self, key: &PartitionKey, batch: Bytes, acks: i16) -> (i16, i64) {
        self.produce_as(key, batch, acks, None).await
    }

    /// [`Self::produce`] with the request's transactional id (transactional batches need it).
    pub async fn produce_as(
        &mut self,
        key: &PartitionKey,
        batch: Bytes,
        acks: i16,
        transactional_id: Option<&str>,
    ) -> (i16, i64) {
        let request = ProduceRequest::default()
            .with_transactional_id(transactional_id.map(|id| TransactionalId(str_bytes(id))))
            .with_acks(acks)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(str_bytes(&key.0)))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(key.1)
                    .with_records(Some(batch))])]);
        let response: ProduceResponse = self
            .call(ApiKey::Produce, 9, Request::Produce(request))
            .await;
        let partition = &response.responses[0].partition_responses[0];
        (partition.error_code, partition.base_offset)
    }

    /// Fetch of one partition: (error, high watermark, whole batches).
    pub async fn fetch(
        &mut self,
        key: &PartitionKey,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> (i16, i64, Vec<Bytes>) {
        let partition = self
            .fetch_partition(key, offset, max_wait_ms, max_bytes, 0)
            .await;
        let batches = split_batches(partition.records.unwrap_or_default());
        (partition.error_code, partition.high_watermark, batches)
    }

    /// A Fetch v12 of one partition at `isolation_level`, its partition's answer.
    async fn fetch_partition(
        &mut self,
        key: &PartitionKey,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
        isolation_level: i8,
    ) -> PartitionData {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(isolation_level)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(str_bytes(&key.0)))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(key.1)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes)])]);
        let mut response: FetchResponse =
            self.call(ApiKey::Fetch, 12, Request::Fetch(request)).await;
        response.responses.swap_remove(0).partitions.swap_remove(0)
    }

    /// `ListOffsets` of one partition at `timestamp` (-1 latest, -2 earliest).
    pub async fn list_offset(&mut self, key: &PartitionKey, timestamp: i64) -> (i16, i64) {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(str_bytes(&key.0)))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(key.1)
                    .with_timestamp(timestamp)])]);
        let response: ListOffsetsResponse = self
            .call(ApiKey::ListOffsets, 7, Request::ListOffsets(request))
            .await;
        let partition = &response.topics[0].partitions[0];
        (partition.error_code, partition.offset)
    }

    /// A `read_committed` Fetch of one partition: (error, last stable offset, the aborted
    /// transactions it lists as (producer id, first offset), whole batches).
    pub async fn fetch_committed(
        &mut self,
        key: &PartitionKey,
        offset: i64,
        max_bytes: i32,
    ) -> (i16, i64, Vec<(i64, i64)>, Vec<Bytes>) {
        let partition = self.fetch_partition(key, offset, 0, max_bytes, 1).await;
        let aborted = partition
            .aborted_transactions
            .iter()
            .flatten()
            .map(|aborted| (aborted.producer_id.0, aborted.first_offset))
            .collect();
        let batches = split_batches(partition.records.unwrap_or_default());
        (
            partition.error_code,
            partition.last_stable_offset,
            aborted,
            batches,
        )
    }

    /// `InitProducerId` for `transactional_id`: (error, producer id, epoch).
    pub async fn init_transactional(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> (i16, i64, i16) {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(str_bytes(transactional_id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response: InitProducerIdResponse = self
            .call(ApiKey::InitProducerId, 4, Request::InitProducerId(request))
            .await;
        (
            response.error_code,
            response.producer_id.0,
            response.producer_epoch,
        )
    }

    /// `AddPartitionsToTxn` v3 of one partition: its error.
    pub async fn add_partition_to_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        key: &PartitionKey,
    ) -> i16 {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_v3_and_below_producer_id(ProducerId(producer.0))
            .with_v3_and_below_producer_epoch(producer.1)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(str_bytes(&key.0)))
                .with_partitions(vec![key.1])]);
        let response: AddPartitionsToTxnResponse = self
            .call(
                ApiKey::AddPartitionsToTxn,
                3,
                Request::AddPartitionsToTxn(request),
            )
            .await;
        response
            .results_by_topic_v3_and_below
            .first()
            .and_then(|topic| topic.results_by_partition.first())
            .map_or(response.error_code, |partition| {
                partition.partition_error_code
            })
    }

    /// `EndTxn`: its error.
    pub async fn end_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> i16 {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_committed(commit);
        let response: EndTxnResponse = self.call(ApiKey::EndTxn, 3, Request::EndTxn(request)).await;
        response.error_code
    }

    pub async fn create_topic(&mut self, name: &str, partitions: i32) -> i16 {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)])
            .with_timeout_ms(30_000);
        let response: CreateTopicsResponse = self
            .call(ApiKey::CreateTopics, 7, Request::CreateTopics(request))
            .await;
        response.topics[0].error_code
    }

    pub async fn delete_topic(&mut self, name: &str) -> i16 {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(str_bytes(name))])
            .with_timeout_ms(30_000);
        let response: DeleteTopicsResponse = self
            .call(ApiKey::DeleteTopics, 5, Request::DeleteTopics(request))
            .await;
        response.responses[0].error_code
    }

    /// The names of every topic the metadata holds.
    pub async fn topic_names(&mut self) -> Vec<String> {
        let request = MetadataRequest::default().with_topics(None);
        let response: MetadataResponse = self
            .call(ApiKey::Metadata, 12, Request::Metadata(request))
            .await;
        response
            .topics
            .iter()
            .filter_map(|topic| topic.name.as_ref().map(|name| name.0.to_string()))
            .collect()
    }

    pub async fn init_producer_id(&mut self, producer_id: i64, epoch: i16) -> (i16, i64, i16) {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch);
        let response: InitProducerIdResponse = self
            .call(ApiKey::InitProducerId, 4, Request::InitProducerId(request))
            .await;
        (
            response.error_code,
            response.producer_id.0,
            response.producer_epoch,
        )
    }

    /// (error, generation, member id, leader).
    pub async fn join_group(&mut self, group: &str, member_id: &str) -> (i16, i32, String, String) {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(str_bytes("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes("range"))
                .with_metadata(Bytes::from_static(b"sim"))]);
        let response: JoinGroupResponse = self
            .call(ApiKey::JoinGroup, 7, Request::JoinGroup(request))
            .await;
        (
            response.error_code,
            response.generation_id,
            response.member_id.to_string(),
            response.leader.to_string(),
        )
    }

    pub async fn sync_group(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        leader: bool,
    ) -> i16 {
        let assignments = if leader {
            vec![SyncGroupRequestAssignment::default()
                .with_member_id(str_bytes(member_id))
                .with_assignment(Bytes::from_static(b"all"))]
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes("range")))
            .with_assignments(assignments);
        let response: SyncGroupResponse = self
            .call(ApiKey::SyncGroup, 5, Request::SyncGroup(request))
            .await;
        response.error_code
    }

    pub async fn heartbeat(&mut self, group: &str, generation: i32, member_id: &str) -> i16 {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id));
        let response: HeartbeatResponse = self
            .call(ApiKey::Heartbeat, 4, Request::Heartbeat(request))
            .await;
        response.error_code
    }

    pub async fn commit(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        key: &PartitionKey,
        offset: i64,
    ) -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member_id))
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(&key.0)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(key.1)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)])]);
        let response: OffsetCommitResponse = self
            .call(ApiKey::OffsetCommit, 8, Request::OffsetCommit(request))
            .await;
        response.topics[0].partitions[0].error_code
    }

    /// (error, committed offset or -1).
    pub async fn committed(&mut self, group: &str, key: &PartitionKey) -> (i16, i64) {
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(str_bytes(&key.0)))
                .with_partition_indexes(vec![key.1])]));
        let response: OffsetFetchResponse = self
            .call(ApiKey::OffsetFetch, 7, Request::OffsetFetch(request))
            .await;
        if response.error_code != NONE {
            return (response.error_code, -1);
        }
        let partition = &response.topics[0].partitions[0];
        (partition.error_code, partition.committed_offset)
    }
}

/// Splits a Fetch response's records into whole batches; a batch cut by `max_bytes` at
/// the end is left out, as a consumer would.
pub fn split_batches(mut records: Bytes) -> Vec<Bytes> {
    let mut batches = Vec::new();
    while let Some(header) = BatchHeader::parse(&records) {
        let total = header.total_bytes();
        if total > records.len() || total == 0 {
            break;
        }
        batches.push(records.split_to(total));
    }
    batches
}

/// A batch of `values` written at `timestamp_ms`; idempotent when `producer` is given as
/// (producer id, epoch, base sequence).
/// Bytes added to a plain producer's value: mostly none, sometimes kilobytes, now and then
/// more than a whole segment (64 KiB here), so appends roll segments mid-life, a batch can
/// fill a segment alone, and reads cross segment boundaries and fetch byte limits.
fn value_padding(rng: &mut SeededRng) -> usize {
    match rng.below(20) {
        0..=15 => 0,
        16..=18 => rng.range(1 << 10, 8 << 10) as usize,
        _ => rng.range(16 << 10, 96 << 10) as usize,
    }
}

fn batch_of(values: &[String], timestamp_ms: i64, producer: Option<(i64, i16, i32)>) -> Bytes {
    batch_with(values, timestamp_ms, producer, false)
}

/// [`batch_of`] with a producer, marked transactional when `transactional`.
fn batch_with(
    values: &[String],
    timestamp_ms: i64,
    producer: Option<(i64, i16, i32)>,
    transactional: bool,
) -> Bytes {
    let records: Vec<_> = values
        .iter()
        .map(|value| build::Record {
            key: None,
            value: Some(value.as_bytes()),
            timestamp_ms,
        })
        .collect();
    let batch = build::batch(&records);
    let Some((producer_id, epoch, base_sequence)) = producer else {
        return batch;
    };
    // Kafka's v2 header: producerId at 43, producerEpoch at 51, baseSequence at 53; the CRC
    // at 17 covers everything from the attributes at 21.
    let mut batch = BytesMut::from(&batch[..]);
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    if transactional {
        // The attributes, at 21.
        let attributes = i16::from_be_bytes([batch[21], batch[22]])
            | ringfeed_protocol::batch::TRANSACTIONAL_FLAG;
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
    }
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// What a client does.
pub enum Role {
    /// acks=all produce of fresh payloads (now and then acks=1), never retried.
    Producer { sent: u64 },
    /// Idempotent produce to one partition, retrying unanswered batches and, now and then,
    /// an acknowledged one (which must not be appended again).
    IdempotentProducer(IdempotentState),
    /// Fetch and `ListOffsets`, checking what they read against the model.
    Consumer,
    /// A one-member consumer group: join, sync, heartbeat, commit, fetch offsets.
    GroupMember(GroupState),
    /// Creates and deletes scratch topics, and checks the metadata remembers the answers.
    Admin,
    /// A transactional producer on one partition: begin, one to three batches, commit or
    /// abort; re-initialised (its epoch bumped, its open transaction ended by the
    /// coordinator) after an error it cannot retry and in every new life. With a short
    /// timeout it now and then stalls past it mid-transaction, and must find the
    /// transaction aborted (its producer fenced).
    TransactionalProducer(TransactionalState),
}

pub struct TransactionalState {
    key: PartitionKey,
    transactional_id: String,
    timeout_ms: i32,
    producer: Option<(i64, i16)>,
    next_sequence: i32,
    /// The open transaction's number (the model's name for it with the client's index), and
    /// whether `AddPartitionsToTxn` was answered.
    open: Option<(u64, bool)>,
    transactions: u64,
}

pub struct IdempotentState {
    key: PartitionKey,
    producer: Option<(i64, i16)>,
    next_sequence: i32,
    /// Sent and not acknowledged: retried as is until answered.
    pending: Option<(Bytes, i32)>,
    last_acked: Option<Bytes>,
    sent: u64,
}

pub struct GroupState {
    group: String,
    member_id: String,
    generation: Option<i32>,
    next_offset: i64,
}

/// One simulated client: its role, its own random stream, its counters.
pub struct Client {
    pub index: u16,
    role: Role,
    rng: SeededRng,
}

impl Client {
    pub fn new(index: u16, role: Role, seed: u64) -> Self {
        Self {
            index,
            role,
            rng: SeededRng::new(seed ^ (u64::from(index) << 48) ^ 0x5157),
        }
    }

    pub fn idempotent(key: PartitionKey) -> Role {
        Role::IdempotentProducer(IdempotentState {
            key,
            producer: None,
            next_sequence: 0,
            pending: None,
            last_acked: None,
            sent: 0,
        })
    }

    pub fn transactional(key: PartitionKey, transactional_id: &str, timeout_ms: i32) -> Role {
        Role::TransactionalProducer(TransactionalState {
            key,
            transactional_id: transactional_id.to_string(),
            timeout_ms,
            producer: None,
            next_sequence: 0,
            open: None,
            transactions: 0,
        })
    }

    pub fn group_member(group: &str) -> Role {
        Role::GroupMember(GroupState {
            group: group.to_string(),
            member_id: String::new(),
            generation: None,
            next_offset: 0,
        })
    }

    /// Runs `operations` operations in this life, with short random pauses between them,
    /// and stops early once the power is off (the broker is about to be dropped).
    pub async fn run_life(mut self, life: Life, operations: u64) -> Self {
        let mut connection = Connection::new(&life, self.index);
        if let Role::TransactionalProducer(state) = &mut self.role {
            // A producer starting again, as after its own crash: it re-initialises, which
            // ends whatever it left open (completed if its commit was decided, else aborted).
            if let Some((number, _)) = state.open.take() {
                life.model.borrow_mut().txn_abandoned(self.index, number);
            }
            state.producer = None;
        }
        for _ in 0..operations {
            if life.disk.is_powered_off() {
                break;
            }
            let pause = Duration::from_millis(self.rng.below(40));
            life.clock.sleep(pause).await;
            self.operate(&life, &mut connection).await;
        }
        self
    }

    async fn operate(&mut self, life: &Life, connection: &mut Connection) {
        let partitions = life.model.borrow().partitions();
        let key = partitions[self.rng.below(partitions.len() as u64) as usize].clone();
        let index = self.index;
        match &mut self.role {
            Role::Producer { sent } => {
                *sent += 1;
                let acks = if self.rng.below(8) == 0 { 1 } else { -1 };
                let values: Vec<String> = (0..=self.rng.below(4))
                    .map(|n| {
                        let mut value = format!("c{index}-{sent}-{n}-");
                        value.extend(std::iter::repeat_n('v', value_padding(&mut self.rng)));
                        value
                    })
                    .collect();
                let batch = batch_of(&values, life.clock.now_ms(), None);
                let (error, base_offset) = connection.produce(&key, batch.clone(), acks).await;
                let mut model = life.model.borrow_mut();
                model.trace((index, "produce", acks, error, base_offset));
                if error == NONE && acks == -1 {
                    model.produce_acked(&key, base_offset, &batch);
                }
            }
            Role::IdempotentProducer(state) => {
                idempotent_operation(state, &mut self.rng, index, life, connection).await;
            }
            Role::Consumer => self.consume(&key, life, connection).await,
            Role::GroupMember(state) => {
                group_operation(state, &mut self.rng, index, &key, life, connection).await;
            }
            Role::Admin => admin_operation(&mut self.rng, index, life, connection).await,
            Role::TransactionalProducer(state) => {
                transactional_operation(state, &mut self.rng, index, life, connection).await;
            }
        }
    }

    async fn consume(&mut self, key: &PartitionKey, life: &Life, connection: &mut Connection) {
        let acked_end = life.model.borrow().acked_end(key);
        if self.rng.below(3) == 0 {
            let (error, latest) = connection.list_offset(key, -1).await;
            let mut model = life.model.borrow_mut();
            model.trace((self.index, "latest", error, latest));
            if error == NONE {
                model.check_high_watermark(key, latest, acked_end, "ListOffsets latest");
            }
            return;
        }
        let offset = if self.rng.below(3) == 0 {
            0
        } else {
            i64::try_from(self.rng.below(u64::try_from(acked_end).unwrap_or(0) + 1)).unwrap_or(0)
        };
        let max_wait_ms = i32::try_from(self.rng.below(300)).unwrap_or(0);
        let (error, high_watermark, batches) =
            connection.fetch(key, offset, max_wait_ms, 64 << 10).await;
        let mut model = life.model.borrow_mut();
        model.trace((
            self.index,
            "fetch",
            offset,
            error,
            high_watermark,
            batches.len(),
        ));
        if error == code(ResponseError::OffsetOutOfRange) && offset <= acked_end {
            model.violation(&format!(
                "{key:?}: fetch at {offset} out of range with {acked_end} acknowledged"
            ));
        }
        if error == NONE {
            model.check_high_watermark(key, high_watermark, acked_end, "Fetch");
            model.check_fetched(key, offset, &batches, false);
        }
    }
}

async fn idempotent_operation(
    state: &mut IdempotentState,
    rng: &mut SeededRng,
    index: u16,
    life: &Life,
    connection: &mut Connection,
) {
    let Some((producer_id, epoch)) = state.producer else {
        let (error, producer_id, epoch) = connection.init_producer_id(-1, -1).await;
        life.model.borrow_mut().trace((index, "init", error));
        if error == NONE {
            state.producer = Some((producer_id, epoch));
            state.next_sequence = 0;
        }
        return;
    };
    let key = state.key.clone();
    if let (0, Some(acked)) = (rng.below(4), state.last_acked.clone()) {
        // A retry of an acknowledged batch: answered with its offset or as a duplicate,
        // never appended again.
        let (error, base_offset) = connection.produce(&key, acked.clone(), -1).await;
        let mut model = life.model.borrow_mut();
        model.trace((index, "retry-acked", error, base_offset));
        let original = model.acked_base_of(&key, &acked);
        let duplicate = code(ResponseError::DuplicateSequenceNumber);
        if error == NONE && Some(base_offset) != original {
            model.violation(&format!(
                "{key:?}: an acknowledged idempotent batch (at {original:?}) retried was answered at {base_offset}"
            ));
        }
        let sequence_lost = [
            code(ResponseError::OutOfOrderSequenceNumber),
            code(ResponseError::UnknownProducerId),
        ];
        if sequence_lost.contains(&error) && !life.disk.is_powered_off() {
            model.violation(&format!(
                "{key:?}: an acknowledged idempotent batch retried was answered {error}: the producer state forgot it"
            ));
        }
        if error == NONE || error == duplicate {
            model.idempotent_retries_checked += 1;
        }
        return;
    }
    let (batch, records) = if let Some(pending) = state.pending.clone() {
        pending
    } else {
        state.sent += 1;
        let records = 1 + i32::try_from(rng.below(4)).expect("small");
        let values: Vec<String> = (0..records)
            .map(|n| format!("i{index}-{}-{n}", state.sent))
            .collect();
        let batch = batch_of(
            &values,
            life.clock.now_ms(),
            Some((producer_id, epoch, state.next_sequence)),
        );
        state.pending = Some((batch.clone(), records));
        (batch, records)
    };
    let (error, base_offset) = connection.produce(&key, batch.clone(), -1).await;
    life.model
        .borrow_mut()
        .trace((index, "idempotent", error, base_offset));
    let fenced = [
        code(ResponseError::OutOfOrderSequenceNumber),
        code(ResponseError::UnknownProducerId),
        code(ResponseError::InvalidProducerEpoch),
    ];
    if error == NONE || error == code(ResponseError::DuplicateSequenceNumber) {
        if error == NONE {
            life.model
                .borrow_mut()
                .produce_acked(&key, base_offset, &batch);
            state.last_acked = Some(batch);
        }
        state.next_sequence += records;
        state.pending = None;
    } else if fenced.contains(&error) {
        // The broker lost this producer's sequence (a batch never made durable before a
        // cut): start a new epoch, as Kafka's producer does; the unanswered batch is given
        // up (it may or may not be in the log, once).
        let (error, producer_id, epoch) = connection.init_producer_id(producer_id, epoch).await;
        life.model
            .borrow_mut()
            .trace((index, "reinit", error, epoch));
        if error == NONE {
            state.producer = Some((producer_id, epoch));
            state.next_sequence = 0;
            state.pending = None;
            state.last_acked = None;
        }
    }
}

/// One step of a transactional producer: initialise, begin (`AddPartitionsToTxn`), produce a
/// batch, or end the transaction. What it was answered goes to the model, which checks
/// `read_committed` reads against it (`Model::check_read_committed`).
async fn transactional_operation(
    state: &mut TransactionalState,
    rng: &mut SeededRng,
    index: u16,
    life: &Life,
    connection: &mut Connection,
) {
    let fenced = [
        code(ResponseError::ProducerFenced),
        code(ResponseError::InvalidProducerEpoch),
        code(ResponseError::InvalidProducerIdMapping),
        code(ResponseError::InvalidTxnState),
        code(ResponseError::OutOfOrderSequenceNumber),
        code(ResponseError::UnknownProducerId),
    ];
    let Some(producer) = state.producer else {
        let (error, producer_id, epoch) = connection
            .init_transactional(&state.transactional_id, state.timeout_ms)
            .await;
        life.model.borrow_mut().trace((index, "txn-init", error));
        if error == NONE {
            state.producer = Some((producer_id, epoch));
            state.next_sequence = 0;
        }
        return;
    };
    let key = state.key.clone();
    let give_up = |state: &mut TransactionalState, model: &mut Model| {
        // Its open transaction is left to the coordinator: aborted when the producer
        // re-initialises, unless its commit was decided.
        if let Some((number, _)) = state.open.take() {
            model.txn_abandoned(index, number);
        }
        state.producer = None;
    };
    match state.open {
        None | Some((_, false)) => {
            let number = if let Some((number, _)) = state.open {
                number
            } else {
                state.transactions += 1;
                let number = state.transactions;
                life.model.borrow_mut().txn_begun(index, number, &key);
                state.open = Some((number, false));
                number
            };
            let error = connection
                .add_partition_to_txn(&state.transactional_id, producer, &key)
                .await;
            let mut model = life.model.borrow_mut();
            model.trace((index, "txn-add", number, error));
            if error == NONE {
                state.open = Some((number, true));
            } else if fenced.contains(&error) {
                give_up(state, &mut model);
            }
        }
        Some((number, true)) => {
            let batches = life.model.borrow().txn_batches(index, number);
            if state.timeout_ms < TRANSACTION_TIMEOUT_MS && batches > 0 && rng.below(6) == 0 {
                stall_past_timeout(state.timeout_ms, index, number, life).await;
            }
            if batches < 3 && rng.below(3) != 0 {
                let records = 1 + i32::try_from(rng.below(3)).expect("small");
                let values: Vec<String> = (0..records)
                    .map(|n| format!("t{index}-{number}-{batches}-{n}"))
                    .collect();
                let batch = batch_with(
                    &values,
                    life.clock.now_ms(),
                    Some((producer.0, producer.1, state.next_sequence)),
                    true,
                );
                let (error, base_offset) = connection
                    .produce_as(&key, batch.clone(), -1, Some(&state.transactional_id))
                    .await;
                let mut model = life.model.borrow_mut();
                model.trace((index, "txn-produce", number, error, base_offset));
                if error == NONE {
                    model.produce_acked(&key, base_offset, &batch);
                    model.txn_batch_acked(index, number, base_offset);
                    state.next_sequence += records;
                } else {
                    // Not retried: the batch may be in the log or not, so the transaction
                    // can no longer commit whole. Given up at once (it is never ended with a
                    // commit): the producer initialises again, and the coordinator aborts it.
                    give_up(state, &mut model);
                }
                return;
            }
            let commit = rng.below(3) != 0;
            life.model.borrow_mut().txn_ending(index, number, commit);
            let error = connection
                .end_txn(&state.transactional_id, producer, commit)
                .await;
            let mut model = life.model.borrow_mut();
            model.trace((index, "txn-end", number, commit, error));
            if error == NONE {
                model.txn_ended(index, number, commit);
                state.open = None;
            } else if error != code(ResponseError::ConcurrentTransactions) {
                give_up(state, &mut model);
            }
        }
    }
}

/// The producer stalls past its transaction's timeout: whatever it sends next must find the
/// transaction aborted by the coordinator and itself fenced.
async fn stall_past_timeout(timeout_ms: i32, index: u16, number: u64, life: &Life) {
    let timeout = u64::try_from(timeout_ms).expect("positive");
    life.clock
        .sleep(Duration::from_millis(timeout + STALL_PAST_TIMEOUT_MS))
        .await;
    let mut model = life.model.borrow_mut();
    model.trace((index, "txn-stall", number));
    model.txn_timed_out(index, number);
}

async fn group_operation(
    state: &mut GroupState,
    rng: &mut SeededRng,
    index: u16,
    key: &PartitionKey,
    life: &Life,
    connection: &mut Connection,
) {
    let rejoin = [
        code(ResponseError::RebalanceInProgress),
        code(ResponseError::IllegalGeneration),
        code(ResponseError::UnknownMemberId),
    ];
    let group = state.group.clone();
    let Some(generation) = state.generation else {
        let (error, generation, member_id, leader) =
            connection.join_group(&group, &state.member_id).await;
        life.model
            .borrow_mut()
            .trace((index, "join", error, generation));
        if error == code(ResponseError::MemberIdRequired) {
            state.member_id = member_id;
            return;
        }
        if error == code(ResponseError::UnknownMemberId) {
            state.member_id.clear();
        }
        if error != NONE {
            return;
        }
        state.member_id = member_id;
        let synced = connection
            .sync_group(
                &group,
                generation,
                &state.member_id,
                leader == state.member_id,
            )
            .await;
        life.model.borrow_mut().trace((index, "sync", synced));
        if synced == NONE {
            state.generation = Some(generation);
        }
        return;
    };
    let error = match rng.below(3) {
        0 => {
            let error = connection
                .heartbeat(&group, generation, &state.member_id)
                .await;
            life.model.borrow_mut().trace((index, "heartbeat", error));
            error
        }
        1 => {
            state.next_offset += 1 + i64::try_from(rng.below(5)).expect("small");
            let offset = state.next_offset;
            life.model.borrow_mut().commit_sent(&group, key, offset);
            let error = connection
                .commit(&group, generation, &state.member_id, key, offset)
                .await;
            let mut model = life.model.borrow_mut();
            model.trace((index, "commit", error));
            if error == NONE {
                model.commit_acked(&group, key, offset);
            }
            error
        }
        _ => {
            let (error, committed) = connection.committed(&group, key).await;
            let model = life.model.borrow_mut();
            if error == NONE {
                model.check_committed(&group, key, committed);
            }
            error
        }
    };
    if rejoin.contains(&error) {
        state.generation = None;
        if error == code(ResponseError::UnknownMemberId) {
            state.member_id.clear();
        }
    }
}

async fn admin_operation(
    rng: &mut SeededRng,
    index: u16,
    life: &Life,
    connection: &mut Connection,
) {
    let name = format!("scratch-{}", rng.below(3));
    let fate = life.model.borrow().scratch_topics.get(&name).copied();
    if rng.below(3) == 0 {
        let names = connection.topic_names().await;
        let model = life.model.borrow();
        for (topic, fate) in &model.scratch_topics {
            if let TopicFate::Known(exists) = fate {
                if names.contains(topic) != *exists {
                    model.violation(&format!(
                        "topic {topic}: its acknowledged {} is not in the metadata",
                        if *exists { "creation" } else { "deletion" }
                    ));
                }
            }
        }
        return;
    }
    life.model
        .borrow_mut()
        .scratch_topics
        .insert(name.clone(), TopicFate::Unknown);
    let creating = fate != Some(TopicFate::Known(true));
    let error = if creating {
        let partitions = 1 + i32::try_from(rng.below(3)).expect("small");
        connection.create_topic(&name, partitions).await
    } else {
        connection.delete_topic(&name).await
    };
    let mut model = life.model.borrow_mut();
    model.trace((index, if creating { "create" } else { "delete" }, error));
    let known = match (creating, error) {
        (true, e) if e == NONE || e == code(ResponseError::TopicAlreadyExists) => Some(true),
        (false, e) if e == NONE || e == code(ResponseError::UnknownTopicOrPartition) => Some(false),
        _ => None,
    };
    if let Some(exists) = known {
        model.scratch_topics.insert(name, TopicFate::Known(exists));
    }
}
