//! `DescribeTopicPartitions` (KIP-966): topic and partition metadata in pages, so an admin
//! tool describing topics with tens of thousands of partitions does not need one huge
//! Metadata response. (librdkafka 2.16's `describe_topics` still sends Metadata.)
//!
//! Topics are described in name order (every topic when the request names none), from the
//! request's cursor on, with at most `response_partition_limit` partitions (capped at
//! [`PARTITIONS_PER_RESPONSE_MAX`], Kafka's `max.request.partition.size.limit` default). When
//! the limit stops a page early, `next_cursor` names the first partition left out. A named
//! topic that does not exist is answered with `UNKNOWN_TOPIC_OR_PARTITION` and no partitions.
//! The partitions themselves are described as `Metadata` describes them (this broker leads
//! every one, epoch 0; an offline log reports `KAFKA_STORAGE_ERROR`).

use std::ops::Range;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};

use crate::acl::model::{Operation, ResourceType};
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};
use crate::handlers::metadata::TOPIC_OPERATIONS_ALL;
use crate::metadata::MetadataSnapshot;

/// Kafka's default `max.request.partition.size.limit`: the most partitions one response holds.
pub const PARTITIONS_PER_RESPONSE_MAX: i32 = 2000;

#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let snapshot = shard.metadata.current();
    // As `Metadata`: listing every topic lists those the principal may describe; a named
    // topic it may not describe is refused (and said to exist no more than an unknown one).
    let requested: Vec<(String, Option<i32>)> = if request.topics.is_empty() {
        snapshot
            .topics
            .values()
            .filter(|topic| context.authorize_topic(Operation::Describe, &topic.name))
            .map(|topic| (topic.name.to_string(), Some(topic.partition_count())))
            .collect()
    } else {
        request
            .topics
            .iter()
            .map(|topic| {
                let name = topic.name.0.to_string();
                let count = snapshot
                    .topic(&name)
                    .filter(|_| context.authorize_topic(Operation::Describe, &name))
                    .map(|topic| topic.partition_count());
                (name, count)
            })
            .collect()
    };
    let cursor = request
        .cursor
        .as_ref()
        .map(|cursor| (cursor.topic_name.0.to_string(), cursor.partition_index));
    let limit = request
        .response_partition_limit
        .clamp(1, PARTITIONS_PER_RESPONSE_MAX);
    let (page, next) = page(requested, cursor.as_ref(), limit);
    let topics = page
        .into_iter()
        .map(|(name, partitions)| {
            if !context.authorize_topic(Operation::Describe, &name) {
                return DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(TopicName(str_bytes(&name))))
                    .with_error_code(codes::TOPIC_AUTHORIZATION_FAILED);
            }
            let mut described = describe(&snapshot, &name, partitions);
            if described.error_code == codes::NONE {
                described.topic_authorized_operations =
                    context.authorized_operations(ResourceType::Topic, &name, TOPIC_OPERATIONS_ALL);
            }
            described
        })
        .collect();
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next.map(|(name, partition)| {
            Cursor::default()
                .with_topic_name(TopicName(str_bytes(&name)))
                .with_partition_index(partition)
        }))
}

/// A topic name and a partition index: where a page starts.
type Position = (String, i32);

/// A topic of a page and the range of its partitions the page holds (`None`: unknown topic).
type PageEntry = (String, Option<Range<i32>>);

/// One page of `topics` (name, partition count or `None` when unknown): from `cursor` on, in
/// name order, each topic once, with at most `limit` partitions. Returns the page (a topic
/// and the range of its partitions it holds; an unknown topic holds `None`) and the cursor of
/// the next page, `None` when this page ends the listing.
fn page(
    mut topics: Vec<(String, Option<i32>)>,
    cursor: Option<&Position>,
    limit: i32,
) -> (Vec<PageEntry>, Option<Position>) {
    assert!(limit > 0, "a page holds at least one partition");
    topics.sort();
    topics.dedup_by(|a, b| a.0 == b.0);
    let mut room = limit;
    let mut described = Vec::new();
    for (name, count) in topics {
        let first = match cursor {
            Some((cursor_topic, _)) if name < *cursor_topic => continue,
            Some((cursor_topic, partition)) if name == *cursor_topic => (*partition).max(0),
            _ => 0,
        };
        let Some(count) = count else {
            described.push((name, None));
            continue;
        };
        if first >= count && count > 0 {
            continue;
        }
        // A cursor past the end of a topic without partitions starts at its end, so that
        // `first <= end` and the room below never grows.
        let first = first.min(count);
        if room == 0 {
            return (described, Some((name, first)));
        }
        let end = count.min(first.saturating_add(room));
        room -= end - first;
        let more = end < count;
        described.push((name.clone(), Some(first..end)));
        if more {
            return (described, Some((name, end)));
        }
    }
    (described, None)
}

fn describe(
    snapshot: &MetadataSnapshot,
    name: &str,
    partitions: Option<Range<i32>>,
) -> DescribeTopicPartitionsResponseTopic {
    let topic_name = Some(TopicName(str_bytes(name)));
    let (Some(topic), Some(partitions)) = (snapshot.topic(name), partitions) else {
        return DescribeTopicPartitionsResponseTopic::default()
            .with_name(topic_name)
            .with_error_code(codes::UNKNOWN_TOPIC_OR_PARTITION);
    };
    let nodes = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect::<Vec<_>>();
    let partitions = partitions
        .map(|partition| {
            // As `Metadata` describes it.
            let view = snapshot.describe_partition(topic, partition);
            DescribeTopicPartitionsResponsePartition::default()
                .with_error_code(view.error_code)
                .with_partition_index(partition)
                .with_leader_id(BrokerId(view.leader))
                .with_leader_epoch(view.leader_epoch)
                .with_replica_nodes(nodes(view.replicas))
                .with_isr_nodes(nodes(view.isr))
                .with_offline_replicas(nodes(view.offline_replicas))
        })
        .collect();
    DescribeTopicPartitionsResponseTopic::default()
        .with_name(topic_name)
        .with_topic_id(topic.id)
        .with_is_internal(crate::metadata::is_internal_topic(&topic.name))
        .with_partitions(partitions)
}

#[cfg(test)]
mod tests {
    use super::page;
    use crate::storage::sim::SeededRng;

    type Topics = Vec<(String, Option<i32>)>;

    /// Every (topic, partition) of `topics` in name order, each once; an unknown topic as
    /// (name, -1).
    fn model(topics: &Topics) -> Vec<(String, i32)> {
        let mut sorted = topics.clone();
        sorted.sort();
        sorted.dedup_by(|a, b| a.0 == b.0);
        sorted
            .into_iter()
            .flat_map(|(name, count)| match count {
                None => vec![(name, -1)],
                Some(count) => (0..count).map(|p| (name.clone(), p)).collect(),
            })
            .collect()
    }

    /// Up to 8 topics named from a five-letter alphabet (so names repeat), a tenth unknown,
    /// each with 0 to 6 partitions.
    fn random_topics(rng: &mut SeededRng) -> Topics {
        (0..rng.below(9))
            .map(|_| {
                let name: String = (0..rng.range(1, 3))
                    .map(|_| char::from(b'a' + rng.below(5) as u8))
                    .collect();
                let count = (rng.below(10) != 0).then(|| rng.below(7) as i32);
                (name, count)
            })
            .collect()
    }

    /// Following the cursors from the first page lists every partition once, in order, no
    /// page holds more than the limit, and a page ends early only when it is full.
    #[test]
    fn following_cursors_lists_every_partition_once() {
        for seed in 0..2_000 {
            let mut rng = SeededRng::new(seed);
            let topics = random_topics(&mut rng);
            let limit = rng.range(1, 6) as i32;
            let mut listed = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                pages += 1;
                assert!(pages <= 100, "seed {seed}: the cursors do not end");
                let (described, next) = page(topics.clone(), cursor.as_ref(), limit);
                let held: i32 = described
                    .iter()
                    .map(|(_, range)| range.as_ref().map_or(0, |r| r.end - r.start))
                    .sum();
                assert!(held <= limit, "seed {seed}: {held} > {limit}");
                for (name, range) in described {
                    match range {
                        None => listed.push((name, -1)),
                        Some(range) => listed.extend(range.map(|p| (name.clone(), p))),
                    }
                }
                match next {
                    None => break,
                    Some(next) => {
                        assert_eq!(held, limit, "seed {seed}: a page ended early");
                        cursor = Some(next);
                    }
                }
            }
            assert_eq!(
                listed,
                model(&topics),
                "seed {seed}: {topics:?} limit {limit}"
            );
        }
    }

    #[test]
    fn a_cursor_starts_mid_topic() {
        let topics = vec![("a".to_string(), Some(3)), ("b".to_string(), Some(2))];
        let (described, next) = page(topics, Some(&("a".to_string(), 2)), 2);
        assert_eq!(
            described,
            vec![("a".to_string(), Some(2..3)), ("b".to_string(), Some(0..1))]
        );
        assert_eq!(next, Some(("b".to_string(), 1)));
    }

    /// The cursor is the client's: a partition far past the end of a topic without
    /// partitions must not widen the page (or overflow it).
    #[test]
    fn a_cursor_past_an_empty_topic_leaves_the_room_as_it_was() {
        let topics = vec![("a".to_string(), Some(0)), ("b".to_string(), Some(3))];
        let (described, next) = page(topics, Some(&("a".to_string(), i32::MAX)), 2);
        assert_eq!(
            described,
            vec![("a".to_string(), Some(0..0)), ("b".to_string(), Some(0..2))]
        );
        assert_eq!(next, Some(("b".to_string(), 2)));
    }
}
