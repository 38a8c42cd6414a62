//! `Produce`: record batches (already encoded, one per partition) to a partition leader.
//! The request is built in one place for both users: [`Connection::produce`] for a caller
//! that waits for each answer (the CLI), [`encode_produce`] for one that keeps its own frame
//! buffer and many requests in flight (the bench's lanes), which encodes straight into that
//! buffer so a send allocates nothing more than the request's two small lists.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use uuid::Uuid;

use crate::connection::{encode_request, Connection};
use crate::error::{describe_error, Error, ErrorKind, Result};

/// `Produce` v13 names topics by id only.
const PRODUCE_VERSION_BY_NAME_MAX: i16 = 12;

/// Where a `Produce` goes and how it is acknowledged.
#[derive(Clone, Debug)]
pub struct ProduceTo<'a> {
    pub topic: &'a TopicName,
    /// Nil when the broker named none (the request then names the topic, up to v12).
    pub topic_id: Uuid,
    /// 0: no answer; 1: the leader's write; -1: every in-sync replica's.
    pub acks: i16,
    /// How long the broker may wait for the replicas `acks` asks for.
    pub timeout_ms: i32,
}

/// What one partition of a `Produce` answer says.
#[derive(Debug)]
pub struct ProducedPartition {
    pub partition: i32,
    /// The offset of the first record written, or the partition's error code as an error.
    pub outcome: Result<i64>,
    /// The broker's own words on the error, when it sent any (also in `outcome`'s message).
    pub error_message: Option<String>,
}

/// The `Produce` request for `batches` (partition, one encoded record batch).
pub fn produce_request(
    to: &ProduceTo<'_>,
    batches: impl IntoIterator<Item = (i32, Bytes)>,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(to.acks)
        .with_timeout_ms(to.timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(to.topic.clone())
            .with_topic_id(to.topic_id)
            .with_partition_data(
                batches
                    .into_iter()
                    .map(|(partition, batch)| {
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch))
                    })
                    .collect(),
            )])
}

/// Encodes the whole `Produce` frame for one partition's `batch` into `frame`, reusing its
/// memory. The request (and with it the caller's reference to `batch`) is dropped before
/// returning, so a caller that split `batch` off its own buffer gets that memory back.
pub fn encode_produce(
    frame: &mut BytesMut,
    to: &ProduceTo<'_>,
    partition: i32,
    batch: Bytes,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
) -> Result<()> {
    let request = produce_request(to, [(partition, batch)]);
    encode_request(frame, &request, version, correlation_id, client_id)
}

/// The version to produce at: the negotiated one, at most v12 when the topic has no id.
pub fn produce_version(negotiated: i16, topic_id: Uuid) -> i16 {
    if topic_id.is_nil() {
        negotiated.min(PRODUCE_VERSION_BY_NAME_MAX)
    } else {
        negotiated
    }
}

/// Per partition of `response`: its base offset or its error.
pub fn produced_partitions(response: &ProduceResponse) -> Vec<ProducedPartition> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .map(|p| {
            let error_message = p
                .error_message
                .as_ref()
                .filter(|m| !m.is_empty())
                .map(ToString::to_string);
            let outcome = match p.error_code {
                0 => Ok(p.base_offset),
                code => Err(Error::new(
                    ErrorKind::Broker(code),
                    describe_error(code, p.error_message.as_ref()),
                )),
            };
            ProducedPartition {
                partition: p.index,
                outcome,
                error_message,
            }
        })
        .collect()
}

/// The error code `response` gives `partition` (0 for success), or `None` when the answer
/// leaves the partition out. Allocates nothing: for a caller reading answers at full rate.
pub fn partition_error_code(response: &ProduceResponse, partition: i32) -> Option<i16> {
    response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == partition)
        .map(|p| p.error_code)
}

impl Connection {
    /// One `Produce` of `batches` (partition, encoded record batch) at the negotiated
    /// version. With `acks` 0 the broker sends no answer: the write is the acknowledgement
    /// and the result is empty.
    pub fn produce(
        &mut self,
        to: &ProduceTo<'_>,
        batches: Vec<(i32, Bytes)>,
    ) -> Result<Vec<ProducedPartition>> {
        let version = produce_version(self.version::<ProduceRequest>()?, to.topic_id);
        let request = produce_request(to, batches);
        if to.acks == 0 {
            self.send_only(&request, version)?;
            return Ok(Vec::new());
        }
        let response = self.call_at(&request, version)?;
        Ok(produced_partitions(&response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::topic_name;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn a_topic_without_an_id_is_produced_to_by_name() {
        assert_eq!(produce_version(13, Uuid::nil()), 12);
        assert_eq!(produce_version(9, Uuid::nil()), 9);
        assert_eq!(produce_version(13, Uuid::from_u128(7)), 13);
    }

    #[test]
    fn the_request_carries_each_batch_under_its_partition() {
        let topic = topic_name("t");
        let to = ProduceTo {
            topic: &topic,
            topic_id: Uuid::nil(),
            acks: -1,
            timeout_ms: 500,
        };
        let request = produce_request(
            &to,
            [(0, Bytes::from_static(b"a")), (3, Bytes::from_static(b"b"))],
        );
        assert_eq!((request.acks, request.timeout_ms), (-1, 500));
        let data = &request.topic_data[0];
        assert_eq!(data.name.0.as_str(), "t");
        let partitions: Vec<(i32, &[u8])> = data
            .partition_data
            .iter()
            .map(|p| (p.index, p.records.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(partitions, [(0, &b"a"[..]), (3, &b"b"[..])]);
    }

    #[test]
    fn partition_errors_keep_their_code_and_the_brokers_words() {
        let response =
            ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(0)
                        .with_base_offset(41),
                    PartitionProduceResponse::default()
                        .with_index(1)
                        .with_error_code(10)
                        .with_error_message(Some(StrBytes::from_static_str("too big"))),
                ])]);
        let produced = produced_partitions(&response);
        assert_eq!(produced[0].outcome.as_ref().ok(), Some(&41));
        let error = produced[1].outcome.as_ref().unwrap_err();
        assert_eq!(error.broker_code(), Some(10));
        assert_eq!(error.to_string(), "MessageTooLarge (10): too big");
        assert_eq!(produced[1].error_message.as_deref(), Some("too big"));
        assert_eq!(partition_error_code(&response, 1), Some(10));
        assert_eq!(partition_error_code(&response, 2), None);
    }
}
