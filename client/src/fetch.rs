//! `Fetch`: record batches of one topic's partitions from their leader. The request is built
//! in one place: [`Connection::fetch`] for a caller that waits for each answer (the CLI),
//! [`fetch_request`] for one that times the frame's arrival apart from its decoding (the
//! bench). The records of each partition come back as the broker sent them; split them into
//! whole batches with `ringfeed_protocol::batch::WholeBatches`.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use uuid::Uuid;

use crate::connection::Connection;
use crate::error::{check_error, Result};

/// `Fetch` v13 names topics by id only.
const FETCH_VERSION_BY_NAME_MAX: i16 = 12;

/// What a `Fetch` asks of one topic, besides the positions.
#[derive(Clone, Debug)]
pub struct FetchFrom<'a> {
    pub topic: &'a TopicName,
    /// Nil when the broker named none (the request then names the topic, up to v12).
    pub topic_id: Uuid,
    /// How long the broker may hold the request waiting for `min_bytes`.
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    /// Bound on the whole answer, and on each partition's records.
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
}

/// The `Fetch` request for `positions` (partition, next offset to read), outside any fetch
/// session, as a consumer (replica id -1).
pub fn fetch_request(
    from: &FetchFrom<'_>,
    positions: impl IntoIterator<Item = (i32, i64)>,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(from.max_wait_ms)
        .with_min_bytes(from.min_bytes)
        .with_max_bytes(from.max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(from.topic.clone())
            .with_topic_id(from.topic_id)
            .with_partitions(
                positions
                    .into_iter()
                    .map(|(partition, offset)| {
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(from.partition_max_bytes)
                    })
                    .collect(),
            )])
}

/// The version to fetch at: the negotiated one, at most v12 when the topic has no id.
pub fn fetch_version(negotiated: i16, topic_id: Uuid) -> i16 {
    if topic_id.is_nil() {
        negotiated.min(FETCH_VERSION_BY_NAME_MAX)
    } else {
        negotiated
    }
}

/// The partitions of a `Fetch` answer, after its top-level error code (a fetch-session
/// error) is checked. Each partition keeps its own error code: the caller acts on it
/// (move to the new leader, reset an out-of-range position). An iterator, so a caller
/// reading at full rate allocates nothing more than the decoded answer.
pub fn fetched_partitions(response: FetchResponse) -> Result<impl Iterator<Item = PartitionData>> {
    check_error(response.error_code, None, "Fetch")?;
    Ok(response.responses.into_iter().flat_map(|t| t.partitions))
}

impl Connection {
    /// One `Fetch` for `positions` at the negotiated version; the read waits `max_wait_ms`
    /// on top of the connection's timeout only if the caller lengthened it.
    pub fn fetch(
        &mut self,
        from: &FetchFrom<'_>,
        positions: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<Vec<PartitionData>> {
        let version = fetch_version(self.version::<FetchRequest>()?, from.topic_id);
        let request = fetch_request(from, positions);
        Ok(fetched_partitions(self.call_at(&request, version)?)?.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topic_name;

    #[test]
    fn the_request_asks_each_partition_from_its_position() {
        let topic = topic_name("t");
        let from = FetchFrom {
            topic: &topic,
            topic_id: Uuid::nil(),
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 16,
        };
        let request = fetch_request(&from, [(0, 5), (2, 9)]);
        assert_eq!(request.replica_id.0, -1, "a consumer, not a replica");
        assert_eq!(request.session_epoch, -1, "outside any fetch session");
        assert_eq!((request.max_wait_ms, request.min_bytes), (100, 1));
        let asked: Vec<(i32, i64, i32)> = request.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
            .collect();
        assert_eq!(asked, [(0, 5, 1 << 16), (2, 9, 1 << 16)]);
        assert_eq!(fetch_version(16, Uuid::nil()), 12);
    }
}
