//! `OffsetDelete`: removes a group's committed offsets for some partitions, refused for
//! topics the group's members still subscribe to (`GROUP_SUBSCRIBED_TO_TOPIC`).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{GroupAccess, RequestContext};

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    if !context.authorize_group(Operation::Delete, &request.group_id) {
        return OffsetDeleteResponse::default()
            .with_error_code(crate::error_codes::GROUP_AUTHORIZATION_FAILED);
    }
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |p| (topic.name.to_string(), p.partition_index))
        })
        .collect();
    let deleted = shard
        .on_group_coordinator(&request.group_id, move |groups, at| async move {
            groups.delete_offsets(at, partitions).await
        })
        .await;
    let partition_codes = match deleted.and_then(|deleted| deleted) {
        Ok(codes) => codes,
        Err(error_code) => return OffsetDeleteResponse::default().with_error_code(error_code),
    };
    let mut partition_codes = partition_codes.into_iter();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    OffsetDeleteResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(partition_codes.next().expect("one code per partition"))
                })
                .collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetDeleteResponse::default()
        .with_error_code(codes::NONE)
        .with_topics(topics)
}
