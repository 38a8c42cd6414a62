//! The CLI's use of `ringfeed-client`: the APIs and versions it speaks, its connection
//! options, and the cluster it connects to from `--brokers`.

use kafka_protocol::messages::{
    AlterClientQuotasRequest, AlterPartitionReassignmentsRequest, AlterUserScramCredentialsRequest,
    ApiVersionsRequest, CreateAclsRequest, CreateTopicsRequest, DeleteAclsRequest,
    DeleteGroupsRequest, DeleteTopicsRequest, DescribeAclsRequest, DescribeClientQuotasRequest,
    DescribeClusterRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    DescribeTransactionsRequest, DescribeUserScramCredentialsRequest, ElectLeadersRequest,
    FetchRequest, FindCoordinatorRequest, HeartbeatRequest, IncrementalAlterConfigsRequest,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest,
    ListPartitionReassignmentsRequest, ListTransactionsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, SaslAuthenticateRequest,
    SaslHandshakeRequest, SyncGroupRequest,
};
pub use ringfeed_client::cluster::{
    group_id, topic_name, Cluster, TopicLayout, OFFSET_EARLIEST, OFFSET_LATEST, RETRIES_MAX,
    RETRY_BACKOFF,
};
pub use ringfeed_client::Connection;
use ringfeed_client::{ApiRange, ConnectOptions, Security, VersionsMode};

use super::{CliError, CliResult, ConnectArgs};

/// Largest response frame accepted. Fetches ask for at most `--fetch-max-bytes` (32 MiB),
/// metadata of even a large cluster is a few MiB; anything bigger is a broken peer, refused
/// before the buffer is allocated.
pub const RESPONSE_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
const CLIENT_ID: &str = "ringfeed-cli";

/// The APIs the CLI uses, with every version the codec crate encodes, except
/// OffsetCommit/OffsetFetch: their v10 names topics by id and the crate's v10 request
/// structs have no field for it. Nor the versions Kafka 4 removed (KIP-896) that the codec
/// carries again for the broker (vendor/README.md): their answers differ (`ListOffsets` v0's
/// offset list, `OffsetCommit` v0's separate store) and the CLI's calls read the later shape.
const APIS: [ApiRange; 34] = [
    // v2 record batches only: Produce 0-2 and Fetch 0-3 carry message format v0/v1.
    ApiRange::at_least::<ProduceRequest>(3),
    ApiRange::at_least::<FetchRequest>(4),
    ApiRange::at_least::<ListOffsetsRequest>(1),
    ApiRange::of::<MetadataRequest>(),
    ApiRange::between::<OffsetCommitRequest>(2, 9),
    ApiRange::between::<OffsetFetchRequest>(1, 9),
    ApiRange::of::<FindCoordinatorRequest>(),
    ApiRange::of::<JoinGroupRequest>(),
    ApiRange::of::<HeartbeatRequest>(),
    ApiRange::of::<LeaveGroupRequest>(),
    ApiRange::of::<SyncGroupRequest>(),
    ApiRange::of::<DescribeGroupsRequest>(),
    ApiRange::of::<ListGroupsRequest>(),
    ApiRange::of::<ApiVersionsRequest>(),
    ApiRange::at_least::<CreateTopicsRequest>(2),
    ApiRange::at_least::<DeleteTopicsRequest>(1),
    ApiRange::at_least::<DescribeConfigsRequest>(1),
    ApiRange::of::<DeleteGroupsRequest>(),
    ApiRange::of::<IncrementalAlterConfigsRequest>(),
    ApiRange::of::<DescribeClusterRequest>(),
    // v1 on: resource pattern types (KIP-290).
    ApiRange::at_least::<DescribeAclsRequest>(1),
    ApiRange::at_least::<CreateAclsRequest>(1),
    ApiRange::at_least::<DeleteAclsRequest>(1),
    ApiRange::of::<DescribeUserScramCredentialsRequest>(),
    ApiRange::of::<AlterUserScramCredentialsRequest>(),
    ApiRange::of::<DescribeClientQuotasRequest>(),
    ApiRange::of::<AlterClientQuotasRequest>(),
    // v1 on: the login's messages ride in SaslAuthenticate requests (v0 sent them raw).
    ApiRange::at_least::<SaslHandshakeRequest>(1),
    ApiRange::of::<SaslAuthenticateRequest>(),
    ApiRange::of::<ListTransactionsRequest>(),
    ApiRange::of::<DescribeTransactionsRequest>(),
    ApiRange::of::<ElectLeadersRequest>(),
    ApiRange::of::<AlterPartitionReassignmentsRequest>(),
    ApiRange::of::<ListPartitionReassignmentsRequest>(),
];

/// How the CLI's connections behave: versions always negotiated (the CLI speaks too many
/// APIs for a fixed table), every socket operation bounded by `--timeout-ms`, TLS and SASL
/// as `--command-config` says.
pub fn options(args: &ConnectArgs) -> CliResult<ConnectOptions> {
    let security = match &args.command_config {
        Some(path) => Security::read_file(path).map_err(CliError)?,
        None => Security::plaintext(),
    };
    Ok(ConnectOptions {
        client_id: CLIENT_ID,
        timeout: args.timeout(),
        response_frame_bytes_max: RESPONSE_FRAME_BYTES_MAX,
        speaks: &APIS,
        fixed: &[],
        mode: VersionsMode::Negotiate,
        timeout_hint: "see --timeout-ms",
        security,
    })
}

/// Connects to the first bootstrap broker of `--brokers` that answers and reads the broker
/// list.
pub fn connect(args: &ConnectArgs) -> CliResult<Cluster> {
    Ok(Cluster::connect(&args.brokers, options(args)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiKey;
    use kafka_protocol::protocol::Message;
    use ringfeed_client::versions::advertised;
    use ringfeed_client::Versions;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        let versions = Versions::negotiate(
            &APIS,
            &advertised(&[
                (ApiKey::Fetch, 4, 12),
                (ApiKey::Produce, 0, 99),
                (ApiKey::OffsetCommit, 2, 10),
            ]),
        );
        assert_eq!(versions.get(ApiKey::Fetch as i16), Some(12));
        assert_eq!(
            versions.get(ApiKey::Produce as i16),
            Some(ProduceRequest::VERSIONS.max)
        );
        assert_eq!(
            versions.get(ApiKey::OffsetCommit as i16),
            Some(9),
            "capped: v10 needs topic ids"
        );
        assert_eq!(
            versions.get(ApiKey::Metadata as i16),
            None,
            "not advertised"
        );
    }

    #[test]
    fn no_common_version_leaves_the_api_out() {
        // The broker only serves Produce 0-2, whose message format v0/v1 the client does not write.
        let versions = Versions::negotiate(&APIS, &advertised(&[(ApiKey::Produce, 0, 2)]));
        assert_eq!(versions.get(ApiKey::Produce as i16), None);
        let versions = Versions::negotiate(&APIS, &advertised(&[(ApiKey::Fetch, 30, 40)]));
        assert_eq!(versions.get(ApiKey::Fetch as i16), None);
    }
}
