//! `DescribeCluster`: the live brokers (as `Metadata` lists them) and the cluster id.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use crate::acl::model::{ResourceType, CLUSTER_RESOURCE_NAME};
use crate::handlers::context::{str_bytes, RequestContext, TopicAdmin};

#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &TopicAdmin<'_>,
    context: &RequestContext,
    request: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let snapshot = shard.metadata.current();
    let brokers =
        crate::handlers::metadata::live_brokers(shard.config, &snapshot, context.listener)
            .into_iter()
            .map(|(node, host, port, rack)| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(node))
                    .with_host(str_bytes(&host))
                    .with_port(port)
                    .with_rack(rack.as_deref().map(str_bytes))
            })
            .collect();
    let Some(cluster_id) = snapshot.cluster_id.as_deref() else {
        // Kafka's broker does not serve clients before it joined its cluster; this one does,
        // so it answers a retriable error rather than an id the cluster will not keep.
        return DescribeClusterResponse::default()
            .with_error_code(crate::error_codes::LEADER_NOT_AVAILABLE)
            .with_error_message(Some(str_bytes(
                "this broker has not joined its cluster yet (no controller state committed)",
            )))
            .with_controller_id(BrokerId(snapshot.controller_id));
    };
    let response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(cluster_id))
        .with_controller_id(BrokerId(snapshot.controller_id))
        .with_brokers(brokers);
    let response = if request.include_cluster_authorized_operations {
        // What the principal's ACLs allow on the cluster, as `Metadata` reports it.
        response.with_cluster_authorized_operations(context.authorized_operations(
            ResourceType::Cluster,
            CLUSTER_RESOURCE_NAME,
            crate::handlers::metadata::CLUSTER_OPERATIONS_ALL,
        ))
    } else {
        response
    };
    if context.api_version >= 1 {
        response.with_endpoint_type(request.endpoint_type)
    } else {
        response
    }
}
