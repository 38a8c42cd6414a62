//! Client quotas on the request path (`quotas`): after a handler answers, what the request
//! used is recorded against its quotas — a Produce's record bytes (`producer_byte_rate`), a
//! Fetch's record bytes (`consumer_byte_rate`), the time the shard's thread spent polling
//! the handler (`request_percentage`) — and when the client is over one, the response
//! carries the throttle time (the largest of the three) in `throttle_time_ms` and the
//! connection is muted that long (KIP-219: answered at once, then no request is read until
//! the throttle time has passed; `server::connection`). A throttled Fetch is answered
//! without records, and its bytes are not counted (Kafka's `handleFetchRequest`).
//! Not done: Kafka also caps a Fetch's `max_bytes` at what the quota window allows.
//!
//! Without quotas (`ShardQuotas::enabled` false) nothing is measured or recorded: the
//! dispatcher awaits the handler as it is, and this module is not entered.

use std::future::Future;
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, AlterClientQuotasResponse,
    AlterConfigsResponse, AlterUserScramCredentialsResponse, ApiVersionsResponse,
    ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse, CreateAclsResponse,
    CreatePartitionsResponse, CreateTopicsResponse, DeleteAclsResponse, DeleteGroupsResponse,
    DeleteRecordsResponse, DeleteTopicsResponse, DescribeAclsResponse,
    DescribeClientQuotasResponse, DescribeClusterResponse, DescribeConfigsResponse,
    DescribeGroupsResponse, DescribeLogDirsResponse, DescribeProducersResponse,
    DescribeTopicPartitionsResponse, DescribeTransactionsResponse,
    DescribeUserScramCredentialsResponse, ElectLeadersResponse, EndTxnResponse,
    FindCoordinatorResponse, HeartbeatResponse, IncrementalAlterConfigsResponse,
    InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse,
    ListOffsetsResponse, ListTransactionsResponse, MetadataResponse, OffsetCommitResponse,
    OffsetDeleteResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse, ProduceResponse,
    SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsResponse, ListPartitionReassignmentsResponse,
};

use crate::handlers::context::RequestContext;
use crate::handlers::fetch::FetchAnswer;
use crate::quotas::QuotaKey;
use crate::shard::ShardServices;

/// A response that can say how long its client is throttled.
pub trait Throttled {
    /// Sets `throttle_time_ms` (a no-op for a response without it, and at versions without
    /// it the codec leaves it out).
    fn set_throttle_time_ms(&mut self, throttle_ms: i32);

    /// The record bytes the response carries (Fetch only), for `consumer_byte_rate`.
    fn fetched_bytes(&self) -> u64 {
        0
    }

    /// A throttled Fetch is answered empty (Kafka's `getThrottledResponse`); others keep
    /// their answer.
    fn drop_records(&mut self) {}
}

macro_rules! throttled {
    ($($response:ty),* $(,)?) => {
        $(impl Throttled for $response {
            fn set_throttle_time_ms(&mut self, throttle_ms: i32) {
                self.throttle_time_ms = throttle_ms;
            }
        })*
    };
}

throttled!(
    AlterClientQuotasResponse,
    AlterPartitionReassignmentsResponse,
    ListPartitionReassignmentsResponse,
    AlterConfigsResponse,
    AlterUserScramCredentialsResponse,
    ApiVersionsResponse,
    ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatResponse,
    CreateAclsResponse,
    CreatePartitionsResponse,
    CreateTopicsResponse,
    DeleteAclsResponse,
    DeleteGroupsResponse,
    DeleteRecordsResponse,
    ElectLeadersResponse,
    DeleteTopicsResponse,
    DescribeAclsResponse,
    DescribeClientQuotasResponse,
    DescribeClusterResponse,
    DescribeConfigsResponse,
    DescribeGroupsResponse,
    DescribeLogDirsResponse,
    DescribeProducersResponse,
    DescribeTopicPartitionsResponse,
    DescribeUserScramCredentialsResponse,
    FindCoordinatorResponse,
    HeartbeatResponse,
    IncrementalAlterConfigsResponse,
    InitProducerIdResponse,
    AddPartitionsToTxnResponse,
    AddOffsetsToTxnResponse,
    EndTxnResponse,
    TxnOffsetCommitResponse,
    DescribeTransactionsResponse,
    ListTransactionsResponse,
    JoinGroupResponse,
    LeaveGroupResponse,
    ListGroupsResponse,
    ListOffsetsResponse,
    MetadataResponse,
    OffsetCommitResponse,
    OffsetDeleteResponse,
    OffsetFetchResponse,
    OffsetForLeaderEpochResponse,
    ProduceResponse,
    SyncGroupResponse,
);

/// The SASL responses have no throttle time (and their requests are exempt).
impl Throttled for SaslHandshakeResponse {
    fn set_throttle_time_ms(&mut self, _: i32) {}
}

impl Throttled for SaslAuthenticateResponse {
    fn set_throttle_time_ms(&mut self, _: i32) {}
}

impl Throttled for FetchAnswer {
    fn set_throttle_time_ms(&mut self, throttle_ms: i32) {
        self.response.throttle_time_ms = throttle_ms;
    }

    fn fetched_bytes(&self) -> u64 {
        self.partition_batches
            .iter()
            .flatten()
            .map(|batch| batch.len() as u64)
            .sum()
    }

    /// No partitions at all, the session id kept: to an incremental session "nothing
    /// changed"; the client fetches the same offsets again once the throttle time passed.
    fn drop_records(&mut self) {
        self.response.responses.clear();
        self.partition_batches.clear();
    }
}

/// Awaits `work`; when `measure`, also sums the time its polls took on this thread (the
/// request's share of the shard, Kafka's request handler time). Two clock reads per poll.
pub async fn measured<F: Future>(measure: bool, work: F) -> (F::Output, Duration) {
    if !measure {
        return (work.await, Duration::ZERO);
    }
    let mut work = std::pin::pin!(work);
    let mut busy = Duration::ZERO;
    let output = std::future::poll_fn(|context| {
        let started = Instant::now();
        let poll = work.as_mut().poll(context);
        busy += started.elapsed();
        poll
    })
    .await;
    (output, busy)
}

/// APIs whose time is not counted against `request_percentage` (Kafka exempts the ones a
/// client needs to learn it is throttled and to log in).
fn exempt_from_request_quota(api_key: ApiKey) -> bool {
    matches!(
        api_key,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    )
}

/// Records a Produce's record bytes against `producer_byte_rate` as the request starts,
/// and mutes the connection at once when it is over: the connection's next request is
/// not taken before the throttle time has passed. (Kafka reads one request of a
/// connection at a time, so its mute after the response stops the very next request;
/// here requests are pipelined, and the mute must be set before the next frame is taken.)
/// Returns the throttle time (ms). Call only when `ShardQuotas::enabled`.
pub fn record_produce(shard: &ShardServices, context: &RequestContext, produced_bytes: u64) -> u64 {
    let now_ms = u64::try_from(shard.clock.now_ms()).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let bytes = produced_bytes as f64;
    let throttle_ms = shard.quotas.record(
        QuotaKey::ProducerByteRate,
        &context.principal,
        context.client_id.as_deref(),
        bytes,
        now_ms,
    );
    if throttle_ms > 0 {
        shard
            .quotas
            .mute(context.connection_id, now_ms + throttle_ms, now_ms);
    }
    throttle_ms
}

/// Records what the request used against its quotas (a Fetch's bytes, the request's
/// time); when over one, or when `throttle_ms` (a Produce's from `record_produce`) is not
/// 0, sets the response's throttle time (the largest) and mutes the connection for it.
/// Call only when `ShardQuotas::enabled`.
pub fn enforce<R: Throttled>(
    shard: &ShardServices,
    context: &RequestContext,
    response: &mut R,
    busy: Duration,
    throttle_ms: u64,
) {
    let quotas = &shard.quotas;
    let now_ms = u64::try_from(shard.clock.now_ms()).unwrap_or(0);
    let principal = &context.principal;
    let client_id = context.client_id.as_deref();
    let record =
        |key: QuotaKey, value: f64| quotas.record(key, principal, client_id, value, now_ms);
    let mut throttle_ms = throttle_ms;
    #[allow(clippy::cast_precision_loss)]
    let fetched_bytes = response.fetched_bytes() as f64;
    if context.api_key == ApiKey::Fetch {
        throttle_ms = throttle_ms.max(record(QuotaKey::ConsumerByteRate, fetched_bytes));
    }
    if !exempt_from_request_quota(context.api_key) {
        // Kafka's unit: percent of one thread, i.e. 100 per second of thread time.
        let percent_seconds = busy.as_secs_f64() * 100.0;
        throttle_ms = throttle_ms.max(record(QuotaKey::RequestPercentage, percent_seconds));
    }
    if throttle_ms > 0 && context.api_key == ApiKey::Fetch {
        // Kafka's rule (KIP-219): a throttled Fetch is answered empty, and its bytes,
        // not sent, are taken back out of the client's usage.
        record(QuotaKey::ConsumerByteRate, -fetched_bytes);
        response.drop_records();
    }
    if throttle_ms > 0 {
        let throttle = i32::try_from(throttle_ms).unwrap_or(i32::MAX);
        response.set_throttle_time_ms(throttle);
        quotas.mute(context.connection_id, now_ms + throttle_ms, now_ms);
        tracing::debug!(
            peer = %context.peer,
            principal = %context.principal,
            client_id = ?context.client_id,
            api = ?context.api_key,
            throttle_ms,
            "client throttled"
        );
    }
}

/// A Produce request's record bytes, what Kafka counts against `producer_byte_rate`.
pub fn produced_bytes(request: &kafka_protocol::messages::ProduceRequest) -> u64 {
    request
        .topic_data
        .iter()
        .flat_map(|topic| &topic.partition_data)
        .filter_map(|partition| partition.records.as_ref())
        .map(|records| records.len() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    use kafka_protocol::messages::FetchResponse;

    #[test]
    fn measured_counts_the_polls_time_only_when_asked() {
        let spin = |duration: Duration| async move {
            let started = Instant::now();
            while started.elapsed() < duration {}
            7
        };
        let (output, busy) =
            futures::executor::block_on(measured(true, spin(Duration::from_millis(5))));
        assert_eq!(output, 7);
        assert!(busy >= Duration::from_millis(5), "{busy:?}");
        let (_, busy) =
            futures::executor::block_on(measured(false, spin(Duration::from_millis(1))));
        assert_eq!(busy, Duration::ZERO);
    }

    #[test]
    fn a_throttled_fetch_keeps_its_session_and_loses_its_records() {
        let mut answer = FetchAnswer {
            response: FetchResponse::default()
                .with_session_id(42)
                .with_responses(vec![FetchableTopicResponse::default()]),
            partition_batches: vec![vec![
                Bytes::from_static(&[0; 100]),
                Bytes::from_static(&[0; 20]),
            ]],
        };
        assert_eq!(answer.fetched_bytes(), 120);
        answer.drop_records();
        answer.set_throttle_time_ms(250);
        assert_eq!(answer.fetched_bytes(), 0);
        assert!(answer.response.responses.is_empty());
        assert_eq!(
            (answer.response.session_id, answer.response.throttle_time_ms),
            (42, 250)
        );
    }
}
