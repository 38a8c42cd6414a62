//! `FindCoordinator`: a group's coordinator is the broker its `__consumer_offsets` partition
//! is placed on (this one on a one-node broker; the owning shard is an internal matter,
//! reached over the mesh), at its address for the listener the request came in on. Asking
//! creates `__consumer_offsets` (or, for a transactional id, `__transaction_state`) on first
//! use, as in Kafka. v4+ looks up a batch of keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::acl::model::{Operation, ResourceType};
use crate::error_codes as codes;
use crate::groups::codes as group_codes;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};
use crate::handlers::metadata::broker_address;
use crate::transactions::codes as txn_codes;

/// `FindCoordinator` key types: 0 a consumer group, 1 a transactional id.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(
    shard: &GroupAccess<'_>,
    context: &RequestContext,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys = if context.api_version >= 4 {
        request.coordinator_keys
    } else {
        vec![request.key]
    };
    let mut coordinators = Vec::with_capacity(keys.len());
    for key in keys {
        // A group's coordinator is found by who may describe the group (Kafka's rule).
        // A transactional id's by who may describe the id.
        let found = if request.key_type == KEY_TYPE_GROUP
            && !context.authorize_group(Operation::Describe, &key)
        {
            Err(codes::GROUP_AUTHORIZATION_FAILED)
        } else if request.key_type == KEY_TYPE_TRANSACTION
            && !context.authorize(Operation::Describe, ResourceType::TransactionalId, &key)
        {
            Err(txn_codes::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        } else {
            lookup(shard, request.key_type, &key).await
        };
        let snapshot = shard.metadata.current();
        let found = found.and_then(|node| {
            broker_address(shard.config, &snapshot, context.listener, node)
                .map(|(host, port)| (node, host, port))
                .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)
        });
        coordinators.push(coordinator(key, found));
    }
    if context.api_version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let single = coordinators.pop().expect("one key below v4");
    FindCoordinatorResponse::default()
        .with_error_code(single.error_code)
        .with_error_message(single.error_message)
        .with_node_id(single.node_id)
        .with_host(single.host)
        .with_port(single.port)
}

/// The coordinating broker for one key, or the error code: a group's is the broker of its
/// `__consumer_offsets` partition, a transactional id's that of its `__transaction_state`
/// partition (each topic created on first use); unknown key types are invalid.
async fn lookup(shard: &GroupAccess<'_>, key_type: i8, key: &StrBytes) -> Result<i32, i16> {
    match key_type {
        KEY_TYPE_GROUP if key.is_empty() => Err(group_codes::INVALID_GROUP_ID),
        KEY_TYPE_GROUP => shard.coordinator_broker(key).await,
        KEY_TYPE_TRANSACTION if key.is_empty() => Err(group_codes::INVALID_REQUEST),
        KEY_TYPE_TRANSACTION => shard.txn_coordinator_broker(key).await,
        _ => Err(group_codes::INVALID_REQUEST),
    }
}

fn coordinator(key: StrBytes, found: Result<(i32, String, i32), i16>) -> Coordinator {
    match found {
        Ok((node, host, port)) => Coordinator::default()
            .with_key(key)
            .with_error_code(codes::NONE)
            .with_node_id(BrokerId(node))
            .with_host(str_bytes(&host))
            .with_port(port),
        Err(error_code) => Coordinator::default()
            .with_key(key)
            .with_error_code(error_code)
            .with_error_message(Some(str_bytes("no coordinator for this key")))
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::default())
            .with_port(-1),
    }
}
