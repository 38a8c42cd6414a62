//! `OffsetCommit`: routed to the group's coordinator, which writes the offsets to its
//! `__consumer_offsets` partition and answers once they are fdatasync'd.

use std::rc::Rc;

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use super::RequestContext;
use crate::groups::records::CommittedOffset;
use crate::groups::{self, wall_clock_ms, GroupCall, GroupReply};
use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    _context: &RequestContext,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let now_ms = wall_clock_ms();
    let offsets: Vec<(String, i32, CommittedOffset)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |partition| {
                let value = CommittedOffset {
                    offset: partition.committed_offset,
                    leader_epoch: partition.committed_leader_epoch,
                    metadata: partition
                        .committed_metadata
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    commit_timestamp_ms: now_ms,
                };
                (topic.name.to_string(), partition.partition_index, value)
            })
        })
        .collect();
    let count = offsets.len();
    let call = GroupCall::Commit {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|id| id.to_string()),
        generation: request.generation_id_or_member_epoch,
        offsets,
    };
    let partition_codes = match groups::route(shard, &request.group_id, call).await {
        Ok(GroupReply::Codes(codes)) => codes,
        Ok(other) => panic!("OffsetCommit answered with {other:?}"),
        Err(code) => vec![code; count],
    };
    let mut partition_codes = partition_codes.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(partition.partition_index)
                        .with_error_code(partition_codes.next().expect("one code per partition"))
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
