//! What the broker does for each Kafka API: one module per API, each a `handle` function
//! from the decoded request to its response. Codecs are the generated `kafka-protocol`
//! types; this module only maps API keys to handlers (the version table is `registry`).

pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_client_quotas;
pub mod alter_configs;
pub mod alter_partition_reassignments;
pub mod alter_user_scram_credentials;
pub mod api_versions;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod context;
pub mod create_acls;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_acls;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_acls;
pub mod describe_client_quotas;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod describe_user_scram_credentials;
pub mod elect_leaders;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_partition_reassignments;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod sync_group;
pub mod throttle;
pub mod txn_offset_commit;

use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Encodable;

use crate::codec::{self, CodecError};
use crate::metrics::ResponseErrorCode;
use crate::shard::ShardServices;
pub use context::{str_bytes, HandlerContext, RequestContext};
pub use ringfeed_protocol::fetch_frame::ResponseFrame;

macro_rules! served_apis {
    ($($variant:ident => $module:ident :: $request:ident),* $(,)?) => {
        /// A decoded request of any served API.
        #[derive(Debug)]
        pub enum Request {
            $($variant(kafka_protocol::messages::$request)),*
        }

        impl Request {
            /// The request of `api_key` with every field at its default, or None for an API
            /// that is not served. Tests and the simulation draw every served API from here,
            /// so a newly served API is covered without another list to keep in step.
            pub fn default_of(api_key: ApiKey) -> Option<Self> {
                match api_key {
                    $(ApiKey::$variant => Some(Request::$variant(Default::default())),)*
                    _ => None,
                }
            }

            /// Encodes the request body at `version`; the error says what the version lacks.
            pub fn encode_body(&self, out: &mut bytes::BytesMut, version: i16) -> Result<(), String> {
                match self {
                    $(Request::$variant(request) => request.encode(out, version),)*
                }
                .map_err(|error| error.to_string())
            }
        }

        /// Decodes the body of an admitted request.
        pub fn decode_request(api_key: ApiKey, api_version: i16, body: &mut Bytes) -> Result<Request, CodecError> {
            match api_key {
                $(ApiKey::$variant => Ok(Request::$variant(codec::decode_body(body, api_key, api_version)?)),)*
                other => unreachable!("the registry admitted {other:?}, which has no handler"),
            }
        }

        /// Runs the handler and encodes its response frame; `None` when the request wants no
        /// response (Produce with acks=0).
        pub async fn handle(shard: Rc<ShardServices>, context: RequestContext, request: Request) -> Result<Option<ResponseFrame>, CodecError> {
            trace_request(&context);
            let started = std::time::Instant::now();
            let wants_response = !matches!(&request, Request::Produce(produce) if produce.acks == 0);
            let quotas_enabled = shard.quotas.enabled();
            let (frame, error_code) = match request {
                $(Request::$variant(request) => {
                    let handler_context = HandlerContext::of(&shard);
                    let handling = $module::handle(&handler_context, &context, request);
                    let (mut response, busy) = throttle::measured(quotas_enabled, handling).await;
                    if quotas_enabled {
                        throttle::enforce(&shard, &context, &mut response, busy, 0);
                    }
                    let error_code = response.error_code();
                    (response.into_frame(&context)?, error_code)
                })*
            };
            Ok(answered(&shard, &context, started, wants_response.then_some(frame), error_code))
        }
    };
}

served_apis! {
    Produce => produce::ProduceRequest,
    Fetch => fetch::FetchRequest,
    ListOffsets => list_offsets::ListOffsetsRequest,
    Metadata => metadata::MetadataRequest,
    OffsetCommit => offset_commit::OffsetCommitRequest,
    OffsetFetch => offset_fetch::OffsetFetchRequest,
    FindCoordinator => find_coordinator::FindCoordinatorRequest,
    JoinGroup => join_group::JoinGroupRequest,
    Heartbeat => heartbeat::HeartbeatRequest,
    LeaveGroup => leave_group::LeaveGroupRequest,
    SyncGroup => sync_group::SyncGroupRequest,
    DescribeGroups => describe_groups::DescribeGroupsRequest,
    ListGroups => list_groups::ListGroupsRequest,
    SaslHandshake => sasl_handshake::SaslHandshakeRequest,
    SaslAuthenticate => sasl_authenticate::SaslAuthenticateRequest,
    DeleteGroups => delete_groups::DeleteGroupsRequest,
    OffsetDelete => offset_delete::OffsetDeleteRequest,
    DescribeConfigs => describe_configs::DescribeConfigsRequest,
    AlterConfigs => alter_configs::AlterConfigsRequest,
    ApiVersions => api_versions::ApiVersionsRequest,
    CreateTopics => create_topics::CreateTopicsRequest,
    DeleteTopics => delete_topics::DeleteTopicsRequest,
    DeleteRecords => delete_records::DeleteRecordsRequest,
    OffsetForLeaderEpoch => offset_for_leader_epoch::OffsetForLeaderEpochRequest,
    CreatePartitions => create_partitions::CreatePartitionsRequest,
    IncrementalAlterConfigs => incremental_alter_configs::IncrementalAlterConfigsRequest,
    DescribeCluster => describe_cluster::DescribeClusterRequest,
    ElectLeaders => elect_leaders::ElectLeadersRequest,
    DescribeLogDirs => describe_log_dirs::DescribeLogDirsRequest,
    DescribeProducers => describe_producers::DescribeProducersRequest,
    DescribeTopicPartitions => describe_topic_partitions::DescribeTopicPartitionsRequest,
    InitProducerId => init_producer_id::InitProducerIdRequest,
    AddPartitionsToTxn => add_partitions_to_txn::AddPartitionsToTxnRequest,
    AddOffsetsToTxn => add_offsets_to_txn::AddOffsetsToTxnRequest,
    EndTxn => end_txn::EndTxnRequest,
    TxnOffsetCommit => txn_offset_commit::TxnOffsetCommitRequest,
    DescribeTransactions => describe_transactions::DescribeTransactionsRequest,
    ListTransactions => list_transactions::ListTransactionsRequest,
    DescribeAcls => describe_acls::DescribeAclsRequest,
    CreateAcls => create_acls::CreateAclsRequest,
    DeleteAcls => delete_acls::DeleteAclsRequest,
    DescribeClientQuotas => describe_client_quotas::DescribeClientQuotasRequest,
    AlterClientQuotas => alter_client_quotas::AlterClientQuotasRequest,
    DescribeUserScramCredentials => describe_user_scram_credentials::DescribeUserScramCredentialsRequest,
    AlterUserScramCredentials => alter_user_scram_credentials::AlterUserScramCredentialsRequest,
    ConsumerGroupHeartbeat => consumer_group_heartbeat::ConsumerGroupHeartbeatRequest,
    ConsumerGroupDescribe => consumer_group_describe::ConsumerGroupDescribeRequest,
    AlterPartitionReassignments => alter_partition_reassignments::AlterPartitionReassignmentsRequest,
    ListPartitionReassignments => list_partition_reassignments::ListPartitionReassignmentsRequest,
}

/// Starts a request. What must happen in the connection's request order happens here,
/// before this returns and the connection starts its next request: Produce's pieces take
/// their places at their partitions (`produce::dispatch`). The rest of every request runs
/// in the returned future, concurrently with the requests after it.
pub fn start(
    shard: Rc<ShardServices>,
    context: RequestContext,
    request: Request,
) -> LocalBoxFuture<'static, Result<Option<ResponseFrame>, CodecError>> {
    let Request::Produce(request) = request else {
        return Box::pin(handle(shard, context, request));
    };
    trace_request(&context);
    let started = std::time::Instant::now();
    let wants_response = request.acks != 0;
    let quotas_enabled = shard.quotas.enabled();
    let produce_throttle_ms = if quotas_enabled {
        throttle::record_produce(&shard, &context, throttle::produced_bytes(&request))
    } else {
        0
    };
    let dispatched = std::time::Instant::now();
    let response = produce::dispatch(&HandlerContext::of(&shard), &context, request);
    let dispatch_busy = dispatched.elapsed();
    Box::pin(async move {
        let (mut response, busy) = throttle::measured(quotas_enabled, response).await;
        if quotas_enabled {
            let busy = busy + dispatch_busy;
            throttle::enforce(&shard, &context, &mut response, busy, produce_throttle_ms);
        }
        let error_code = response.error_code();
        let frame = response.into_frame(&context)?;
        let frame = wants_response.then_some(frame);
        Ok(answered(&shard, &context, started, frame, error_code))
    })
}

fn trace_request(context: &RequestContext) {
    tracing::trace!(peer = %context.peer, client_id = ?context.client_id, api = ?context.api_key, version = context.api_version, "request");
}

/// Counts the answered request; passes its response frame through.
fn answered(
    shard: &ShardServices,
    context: &RequestContext,
    started: std::time::Instant,
    response: Option<ResponseFrame>,
    error_code: i16,
) -> Option<ResponseFrame> {
    let response_bytes = response.as_ref().map_or(0, ResponseFrame::len);
    shard.metrics.request_answered(
        context.api_key,
        error_code,
        started.elapsed(),
        response_bytes,
    );
    response
}

/// A handler's answer as it goes on the wire: its frame, and the error code it is counted under.
pub trait Answer: ResponseErrorCode {
    fn into_frame(self, context: &RequestContext) -> Result<ResponseFrame, CodecError>;
}

/// Every response but Fetch's: one buffer, encoded by `kafka-protocol`.
impl<M: Encodable + ResponseErrorCode> Answer for M {
    fn into_frame(self, context: &RequestContext) -> Result<ResponseFrame, CodecError> {
        codec::encode_response_frame(
            context.api_key,
            context.api_version,
            context.correlation_id,
            &self,
        )
        .map(ResponseFrame::whole)
    }
}
