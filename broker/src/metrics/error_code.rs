//! The one error code a response is counted under in `ringfeed_requests_total`: its
//! top-level error code when it has one and it is set, else the first per-topic,
//! per-partition or per-member error it carries, else `NONE`. One request counts once;
//! a Produce to ten partitions where one failed counts as that failure.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, AlterClientQuotasResponse,
    AlterUserScramCredentialsResponse, DescribeClientQuotasResponse, DescribeTransactionsResponse,
    DescribeUserScramCredentialsResponse, EndTxnResponse, ListTransactionsResponse,
    TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{
    AlterConfigsResponse, ApiVersionsResponse, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatResponse, CreateAclsResponse, CreatePartitionsResponse,
    CreateTopicsResponse, DeleteAclsResponse, DeleteGroupsResponse, DeleteRecordsResponse,
    DeleteTopicsResponse, DescribeAclsResponse, DescribeClusterResponse, DescribeConfigsResponse,
    DescribeGroupsResponse, DescribeLogDirsResponse, DescribeProducersResponse,
    DescribeTopicPartitionsResponse, ElectLeadersResponse, FetchResponse, FindCoordinatorResponse,
    HeartbeatResponse, IncrementalAlterConfigsResponse, InitProducerIdResponse, JoinGroupResponse,
    LeaveGroupResponse, ListGroupsResponse, ListOffsetsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse,
    ProduceResponse, SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse,
};

use kafka_protocol::messages::{
    AlterPartitionReassignmentsResponse, ListPartitionReassignmentsResponse,
};

use crate::error_codes::NONE;

/// The error code a whole response is counted under (see the module docs).
pub trait ResponseErrorCode {
    fn error_code(&self) -> i16;
}

/// The first code that is not `NONE`, else `NONE`.
fn first_error(codes: impl IntoIterator<Item = i16>) -> i16 {
    codes.into_iter().find(|code| *code != NONE).unwrap_or(NONE)
}

/// Responses whose only error is their top-level `error_code`.
macro_rules! top_level_only {
    ($($response:ty),* $(,)?) => {
        $(impl ResponseErrorCode for $response {
            fn error_code(&self) -> i16 {
                self.error_code
            }
        })*
    };
}

top_level_only!(
    ListPartitionReassignmentsResponse,
    AddOffsetsToTxnResponse,
    ListTransactionsResponse,
    EndTxnResponse,
    ApiVersionsResponse,
    ConsumerGroupHeartbeatResponse,
    DescribeClientQuotasResponse,
    DescribeAclsResponse,
    DescribeClusterResponse,
    DescribeLogDirsResponse,
    HeartbeatResponse,
    InitProducerIdResponse,
    JoinGroupResponse,
    ListGroupsResponse,
    SaslAuthenticateResponse,
    SaslHandshakeResponse,
    SyncGroupResponse,
);

/// The top-level code (v4+), then the first per-partition one of either form.
impl ResponseErrorCode for AddPartitionsToTxnResponse {
    fn error_code(&self) -> i16 {
        let topics = self.results_by_topic_v3_and_below.iter().chain(
            self.results_by_transaction
                .iter()
                .flat_map(|t| &t.topic_results),
        );
        first_error(
            std::iter::once(self.error_code).chain(
                topics
                    .flat_map(|topic| &topic.results_by_partition)
                    .map(|partition| partition.partition_error_code),
            ),
        )
    }
}

/// The top-level code (v1+), then the first per-partition one.
impl ResponseErrorCode for ElectLeadersResponse {
    fn error_code(&self) -> i16 {
        let partitions = self
            .replica_election_results
            .iter()
            .flat_map(|topic| &topic.partition_result)
            .map(|partition| partition.error_code);
        first_error(std::iter::once(self.error_code).chain(partitions))
    }
}

/// The top-level code, then the first per-partition one.
impl ResponseErrorCode for AlterPartitionReassignmentsResponse {
    fn error_code(&self) -> i16 {
        first_error(
            std::iter::once(self.error_code).chain(
                self.responses
                    .iter()
                    .flat_map(|topic| &topic.partitions)
                    .map(|partition| partition.error_code),
            ),
        )
    }
}

/// A top-level code, then the first per-user one.
impl ResponseErrorCode for DescribeUserScramCredentialsResponse {
    fn error_code(&self) -> i16 {
        first_error(
            std::iter::once(self.error_code).chain(self.results.iter().map(|user| user.error_code)),
        )
    }
}

/// Responses without a top-level code: the first error among their items (topics, groups,
/// config resources).
macro_rules! first_item_error {
    ($($response:ty => $items:ident),* $(,)?) => {
        $(impl ResponseErrorCode for $response {
            fn error_code(&self) -> i16 {
                first_error(self.$items.iter().map(|item| item.error_code))
            }
        })*
    };
}

first_item_error!(
    DescribeTransactionsResponse => transaction_states,
    ConsumerGroupDescribeResponse => groups,
    CreateAclsResponse => results,
    AlterUserScramCredentialsResponse => results,
    AlterClientQuotasResponse => entries,
    DeleteAclsResponse => filter_results,
    CreatePartitionsResponse => results,
    CreateTopicsResponse => topics,
    DeleteGroupsResponse => results,
    DeleteTopicsResponse => responses,
    DescribeConfigsResponse => results,
    DescribeGroupsResponse => groups,
    DescribeTopicPartitionsResponse => topics,
    AlterConfigsResponse => responses,
    IncrementalAlterConfigsResponse => responses,
);

/// Responses without a top-level code: the first error among their topics' partitions.
macro_rules! first_partition_error {
    ($($response:ty => $topics:ident . $partitions:ident),* $(,)?) => {
        $(impl ResponseErrorCode for $response {
            fn error_code(&self) -> i16 {
                first_error(
                    self.$topics
                        .iter()
                        .flat_map(|topic| &topic.$partitions)
                        .map(|partition| partition.error_code),
                )
            }
        })*
    };
}

first_partition_error!(
    TxnOffsetCommitResponse => topics.partitions,
    DeleteRecordsResponse => topics.partitions,
    DescribeProducersResponse => topics.partitions,
    ListOffsetsResponse => topics.partitions,
    OffsetCommitResponse => topics.partitions,
    OffsetForLeaderEpochResponse => topics.partitions,
    ProduceResponse => responses.partition_responses,
);

impl ResponseErrorCode for FetchResponse {
    fn error_code(&self) -> i16 {
        let partitions = self
            .responses
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.error_code);
        first_error(std::iter::once(self.error_code).chain(partitions))
    }
}

impl ResponseErrorCode for MetadataResponse {
    fn error_code(&self) -> i16 {
        let topics = self.topics.iter().flat_map(|topic| {
            std::iter::once(topic.error_code).chain(
                topic
                    .partitions
                    .iter()
                    .map(|partition| partition.error_code),
            )
        });
        first_error(std::iter::once(self.error_code).chain(topics))
    }
}

impl ResponseErrorCode for OffsetFetchResponse {
    fn error_code(&self) -> i16 {
        // v0-7 answer one group at the top level; v8+ answer a list of groups.
        let single_group = self
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.error_code);
        let groups = self.groups.iter().flat_map(|group| {
            std::iter::once(group.error_code).chain(
                group
                    .topics
                    .iter()
                    .flat_map(|topic| &topic.partitions)
                    .map(|partition| partition.error_code),
            )
        });
        first_error(
            std::iter::once(self.error_code)
                .chain(single_group)
                .chain(groups),
        )
    }
}

impl ResponseErrorCode for FindCoordinatorResponse {
    fn error_code(&self) -> i16 {
        let batched = self
            .coordinators
            .iter()
            .map(|coordinator| coordinator.error_code);
        first_error(std::iter::once(self.error_code).chain(batched))
    }
}

impl ResponseErrorCode for LeaveGroupResponse {
    fn error_code(&self) -> i16 {
        let members = self.members.iter().map(|member| member.error_code);
        first_error(std::iter::once(self.error_code).chain(members))
    }
}

impl ResponseErrorCode for OffsetDeleteResponse {
    fn error_code(&self) -> i16 {
        let partitions = self
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.error_code);
        first_error(std::iter::once(self.error_code).chain(partitions))
    }
}

/// Kafka's name of an error code, as its `Errors` enum spells it (`UNKNOWN_TOPIC_OR_PARTITION`),
/// so dashboards read the same as Kafka's `error` label. A code this codec does not know is
/// named by its number.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(code)) => format!("CODE_{code}"),
        Some(known) => screaming_snake_case(&known.to_string()),
    }
}

/// `UnknownTopicOrPartition` → `UNKNOWN_TOPIC_OR_PARTITION`.
fn screaming_snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 8);
    for (index, character) in camel.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(character.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    use super::*;
    use crate::error_codes as codes;

    #[test]
    fn error_names_follow_kafkas_spelling() {
        assert_eq!(error_name(0), "NONE");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(
            error_name(codes::INVALID_TOPIC_EXCEPTION),
            "INVALID_TOPIC_EXCEPTION"
        );
        assert_eq!(error_name(31_000), "CODE_31000");
    }

    #[test]
    fn a_produce_response_counts_under_its_first_failed_partition() {
        let partition =
            |error_code| PartitionProduceResponse::default().with_error_code(error_code);
        let mut response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_partition_responses(vec![partition(codes::NONE), partition(codes::NONE)])]);
        assert_eq!(response.error_code(), codes::NONE);
        response.responses.push(
            TopicProduceResponse::default().with_partition_responses(vec![
                partition(codes::NONE),
                partition(codes::MESSAGE_TOO_LARGE),
                partition(codes::CORRUPT_MESSAGE),
            ]),
        );
        assert_eq!(response.error_code(), codes::MESSAGE_TOO_LARGE);
    }

    #[test]
    fn a_top_level_error_wins_over_nested_ones() {
        let response = FetchResponse::default()
            .with_error_code(codes::UNSUPPORTED_VERSION)
            .with_responses(vec![FetchableTopicResponse::default()]);
        assert_eq!(response.error_code(), codes::UNSUPPORTED_VERSION);
        assert_eq!(FetchResponse::default().error_code(), codes::NONE);
    }
}
