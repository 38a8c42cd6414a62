//! The one list of Kafka APIs Ringfeed serves, each with the version range it advertises
//! and the range it accepts. `ApiVersions` answers from this table and the dispatcher admits
//! requests by it, so what is advertised and what works cannot drift apart.

use kafka_protocol::messages::ApiKey;

/// One supported API. `advertised_min..=advertised_max` goes into `ApiVersions`;
/// `accepted_min` may be above `advertised_min` where Kafka 4 keeps advertising versions
/// it no longer accepts (Produce 0-2, KAFKA-18659: old librdkafka refuses a broker whose
/// Produce range does not start at 0).
#[derive(Clone, Copy, Debug)]
pub struct ApiSpec {
    pub key: ApiKey,
    pub advertised_min: i16,
    pub advertised_max: i16,
    pub accepted_min: i16,
}

impl ApiSpec {
    const fn new(key: ApiKey, advertised_min: i16, advertised_max: i16) -> Self {
        Self {
            key,
            advertised_min,
            advertised_max,
            accepted_min: advertised_min,
        }
    }

    pub fn accepts(self, version: i16) -> bool {
        (self.accepted_min..=self.advertised_max).contains(&version)
    }
}

/// Every API Ringfeed answers, in api-key order. Each range is the union of Kafka 3.9's and
/// Kafka 4.1's (issue 15): 3.9 still served the versions KIP-896 removed in 4.0, and Sarama,
/// Burrow, kafka-go and old librdkafka send them. `KAFKA_RANGES` in the tests holds both
/// releases' ranges; the codec for the removed versions is generated from 3.9's message JSON
/// (vendor/README.md).
pub const SUPPORTED_APIS: [ApiSpec; 49] = [
    ApiSpec::new(ApiKey::Produce, 0, 13),
    ApiSpec::new(ApiKey::Fetch, 0, 18),
    ApiSpec::new(ApiKey::ListOffsets, 0, 10),
    ApiSpec::new(ApiKey::Metadata, 0, 13),
    ApiSpec::new(ApiKey::OffsetCommit, 0, 9),
    ApiSpec::new(ApiKey::OffsetFetch, 0, 9),
    ApiSpec::new(ApiKey::FindCoordinator, 0, 6),
    ApiSpec::new(ApiKey::JoinGroup, 0, 9),
    ApiSpec::new(ApiKey::Heartbeat, 0, 4),
    ApiSpec::new(ApiKey::LeaveGroup, 0, 5),
    ApiSpec::new(ApiKey::SyncGroup, 0, 5),
    ApiSpec::new(ApiKey::DescribeGroups, 0, 6),
    ApiSpec::new(ApiKey::ListGroups, 0, 5),
    ApiSpec::new(ApiKey::SaslHandshake, 0, 1),
    ApiSpec::new(ApiKey::ApiVersions, 0, 4),
    ApiSpec::new(ApiKey::CreateTopics, 0, 7),
    ApiSpec::new(ApiKey::DeleteTopics, 0, 6),
    ApiSpec::new(ApiKey::DeleteRecords, 0, 2),
    ApiSpec::new(ApiKey::InitProducerId, 0, 5),
    ApiSpec::new(ApiKey::OffsetForLeaderEpoch, 2, 4),
    ApiSpec::new(ApiKey::AddPartitionsToTxn, 0, 5),
    ApiSpec::new(ApiKey::AddOffsetsToTxn, 0, 4),
    ApiSpec::new(ApiKey::EndTxn, 0, 5),
    ApiSpec::new(ApiKey::TxnOffsetCommit, 0, 5),
    ApiSpec::new(ApiKey::DescribeAcls, 0, 3),
    ApiSpec::new(ApiKey::CreateAcls, 0, 3),
    ApiSpec::new(ApiKey::DeleteAcls, 0, 3),
    ApiSpec::new(ApiKey::DescribeConfigs, 0, 4),
    ApiSpec::new(ApiKey::AlterConfigs, 0, 2),
    ApiSpec::new(ApiKey::DescribeLogDirs, 0, 4),
    ApiSpec::new(ApiKey::SaslAuthenticate, 0, 2),
    ApiSpec::new(ApiKey::CreatePartitions, 0, 3),
    ApiSpec::new(ApiKey::DeleteGroups, 0, 2),
    ApiSpec::new(ApiKey::ElectLeaders, 0, 2),
    ApiSpec::new(ApiKey::IncrementalAlterConfigs, 0, 1),
    ApiSpec::new(ApiKey::AlterPartitionReassignments, 0, 1),
    ApiSpec::new(ApiKey::ListPartitionReassignments, 0, 0),
    ApiSpec::new(ApiKey::OffsetDelete, 0, 0),
    ApiSpec::new(ApiKey::DescribeClientQuotas, 0, 1),
    ApiSpec::new(ApiKey::AlterClientQuotas, 0, 1),
    ApiSpec::new(ApiKey::DescribeUserScramCredentials, 0, 0),
    ApiSpec::new(ApiKey::AlterUserScramCredentials, 0, 0),
    ApiSpec::new(ApiKey::DescribeCluster, 0, 2),
    ApiSpec::new(ApiKey::DescribeProducers, 0, 0),
    ApiSpec::new(ApiKey::DescribeTransactions, 0, 0),
    ApiSpec::new(ApiKey::ListTransactions, 0, 2),
    ApiSpec::new(ApiKey::ConsumerGroupHeartbeat, 0, 1),
    ApiSpec::new(ApiKey::ConsumerGroupDescribe, 0, 1),
    ApiSpec::new(ApiKey::DescribeTopicPartitions, 0, 0),
];

// The codec crate must decode and encode every accepted version; checked in tests below
// because `VersionRange` comparisons are not const.

/// What the dispatcher does with a request, decided from its key and version alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Decode and handle.
    Serve(ApiKey),
    /// An `ApiVersions` version above ours: answer a v0 response carrying
    /// `UNSUPPORTED_VERSION` and our ranges, so the client can pick a version (KIP-511).
    ApiVersionsFallback,
    /// Unknown key or a version we do not accept: Kafka closes the connection.
    Refuse,
}

pub fn admit(api_key: i16, api_version: i16) -> Admission {
    let Some(spec) = SUPPORTED_APIS
        .iter()
        .find(|spec| spec.key as i16 == api_key)
    else {
        return Admission::Refuse;
    };
    if spec.accepts(api_version) {
        Admission::Serve(spec.key)
    } else if spec.key == ApiKey::ApiVersions && api_version > spec.advertised_max {
        Admission::ApiVersionsFallback
    } else {
        Admission::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_crate_covers_every_accepted_version() {
        for spec in SUPPORTED_APIS {
            let codec = spec.key.valid_versions();
            assert!(
                codec.min <= spec.accepted_min && spec.advertised_max <= codec.max,
                "{:?}: we accept {}..={} but the codec covers {}..={}",
                spec.key,
                spec.accepted_min,
                spec.advertised_max,
                codec.min,
                codec.max
            );
        }
    }

    /// A version range, lowest and highest.
    type VersionPair = (i16, i16);

    /// Kafka's request version ranges per API: 3.9 (apache/kafka branch `3.9`, each
    /// `*Request.json`'s `validVersions`) and 4.1 (what kafka-protocol 0.18, generated from
    /// 4.1.0, accepts; a `latestVersionUnstable` version is not served by a default broker).
    const KAFKA_RANGES: [(ApiKey, VersionPair, VersionPair); 49] = [
        (ApiKey::Produce, (0, 11), (3, 13)),
        (ApiKey::Fetch, (0, 17), (4, 18)),
        (ApiKey::ListOffsets, (0, 9), (1, 10)),
        (ApiKey::Metadata, (0, 12), (0, 13)),
        (ApiKey::OffsetCommit, (0, 9), (2, 9)),
        (ApiKey::OffsetFetch, (0, 9), (1, 9)),
        (ApiKey::FindCoordinator, (0, 6), (0, 6)),
        (ApiKey::JoinGroup, (0, 9), (0, 9)),
        (ApiKey::Heartbeat, (0, 4), (0, 4)),
        (ApiKey::LeaveGroup, (0, 5), (0, 5)),
        (ApiKey::SyncGroup, (0, 5), (0, 5)),
        (ApiKey::DescribeGroups, (0, 5), (0, 6)),
        (ApiKey::ListGroups, (0, 5), (0, 5)),
        (ApiKey::SaslHandshake, (0, 1), (0, 1)),
        (ApiKey::ApiVersions, (0, 4), (0, 4)),
        (ApiKey::CreateTopics, (0, 7), (2, 7)),
        (ApiKey::DeleteTopics, (0, 6), (1, 6)),
        (ApiKey::DeleteRecords, (0, 2), (0, 2)),
        (ApiKey::InitProducerId, (0, 5), (0, 5)),
        (ApiKey::OffsetForLeaderEpoch, (0, 4), (2, 4)),
        (ApiKey::AddPartitionsToTxn, (0, 5), (0, 5)),
        (ApiKey::AddOffsetsToTxn, (0, 4), (0, 4)),
        (ApiKey::EndTxn, (0, 4), (0, 5)),
        (ApiKey::TxnOffsetCommit, (0, 4), (0, 5)),
        (ApiKey::DescribeAcls, (0, 3), (1, 3)),
        (ApiKey::CreateAcls, (0, 3), (1, 3)),
        (ApiKey::DeleteAcls, (0, 3), (1, 3)),
        (ApiKey::DescribeConfigs, (0, 4), (1, 4)),
        (ApiKey::AlterConfigs, (0, 2), (0, 2)),
        (ApiKey::DescribeLogDirs, (0, 4), (1, 4)),
        (ApiKey::SaslAuthenticate, (0, 2), (0, 2)),
        (ApiKey::CreatePartitions, (0, 3), (0, 3)),
        (ApiKey::DeleteGroups, (0, 2), (0, 2)),
        (ApiKey::ElectLeaders, (0, 2), (0, 2)),
        (ApiKey::IncrementalAlterConfigs, (0, 1), (0, 1)),
        (ApiKey::AlterPartitionReassignments, (0, 0), (0, 1)),
        (ApiKey::ListPartitionReassignments, (0, 0), (0, 0)),
        (ApiKey::OffsetDelete, (0, 0), (0, 0)),
        (ApiKey::DescribeClientQuotas, (0, 1), (0, 1)),
        (ApiKey::AlterClientQuotas, (0, 1), (0, 1)),
        (ApiKey::DescribeUserScramCredentials, (0, 0), (0, 0)),
        (ApiKey::AlterUserScramCredentials, (0, 0), (0, 0)),
        (ApiKey::DescribeCluster, (0, 1), (0, 2)),
        (ApiKey::DescribeProducers, (0, 0), (0, 0)),
        (ApiKey::DescribeTransactions, (0, 0), (0, 0)),
        (ApiKey::ListTransactions, (0, 1), (0, 2)),
        (ApiKey::ConsumerGroupHeartbeat, (0, 0), (0, 1)),
        (ApiKey::ConsumerGroupDescribe, (0, 0), (0, 1)),
        (ApiKey::DescribeTopicPartitions, (0, 0), (0, 0)),
    ];

    /// APIs whose advertised range is not yet the union, each with the work that closes it.
    /// `OffsetForLeaderEpoch` 0-1 (Kafka 3.9 only; KIP-896 dropped them in 4.0): the codec
    /// crate covers 2-4 and the clients that check truncation (KIP-320: librdkafka, the
    /// Java consumer since 2.1) send v2+; serving them needs the codec regenerated from 3.9's
    /// JSON as vendor/README.md describes for the other APIs.
    const NOT_YET_THE_UNION: [ApiKey; 1] = [ApiKey::OffsetForLeaderEpoch];

    #[test]
    fn advertised_ranges_are_the_union_of_kafka_3_9_and_4_1() {
        assert_eq!(KAFKA_RANGES.len(), SUPPORTED_APIS.len());
        for ((key, kafka_3_9, kafka_4_1), spec) in KAFKA_RANGES.iter().zip(SUPPORTED_APIS) {
            assert_eq!(*key, spec.key, "KAFKA_RANGES follows SUPPORTED_APIS' order");
            let union = (kafka_3_9.0.min(kafka_4_1.0), kafka_3_9.1.max(kafka_4_1.1));
            if NOT_YET_THE_UNION.contains(key) {
                assert_ne!(
                    (spec.accepted_min, spec.advertised_max),
                    union,
                    "{key:?} serves the union now: take it off NOT_YET_THE_UNION"
                );
                continue;
            }
            assert_eq!(
                (spec.advertised_min, spec.advertised_max),
                union,
                "{key:?} advertises {}..={}, Kafka 3.9 ∪ 4.1 is {}..={}",
                spec.advertised_min,
                spec.advertised_max,
                union.0,
                union.1
            );
            assert_eq!(
                spec.accepted_min, spec.advertised_min,
                "{key:?} accepts all it advertises"
            );
        }
    }

    #[test]
    fn table_is_in_key_order_without_duplicates() {
        let keys: Vec<i16> = SUPPORTED_APIS.iter().map(|spec| spec.key as i16).collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");
    }

    #[test]
    fn admission_by_key_and_version() {
        assert_eq!(admit(0, 3), Admission::Serve(ApiKey::Produce));
        assert_eq!(
            admit(0, 0),
            Admission::Serve(ApiKey::Produce),
            "Produce 0-2: message format v0/v1, converted"
        );
        assert_eq!(admit(0, 13), Admission::Serve(ApiKey::Produce));
        assert_eq!(admit(0, 14), Admission::Refuse);
        assert_eq!(admit(1, 18), Admission::Serve(ApiKey::Fetch));
        assert_eq!(admit(1, 19), Admission::Refuse);
        assert_eq!(admit(18, 4), Admission::Serve(ApiKey::ApiVersions));
        assert_eq!(admit(18, 9), Admission::ApiVersionsFallback);
        assert_eq!(
            admit(1, 0),
            Admission::Serve(ApiKey::Fetch),
            "Fetch 0-3 down-converts"
        );
        assert_eq!(admit(999, 0), Admission::Refuse, "unknown key");
        assert_eq!(admit(11, 0), Admission::Serve(ApiKey::JoinGroup));
        assert_eq!(
            admit(8, 1),
            Admission::Serve(ApiKey::OffsetCommit),
            "OffsetCommit 0-1: Kafka 4 dropped them, 3.9 served them (Sarama sends v1)"
        );
        assert_eq!(admit(2, 0), Admission::Serve(ApiKey::ListOffsets));
        assert_eq!(
            admit(8, 10),
            Admission::Refuse,
            "OffsetCommit 10 is unstable in 4.1"
        );
    }
}
