//! `FindCoordinator`: every group's coordinator is this broker (one node; the owning shard is
//! an internal matter, reached over the mesh). Asking creates `__consumer_offsets` on first
//! use, as in Kafka. v4+ looks up a batch of keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::acl::model::Operation;
use crate::config::BrokerConfig;
use crate::error_codes as codes;
use crate::groups::codes as group_codes;
use crate::handlers::context::{str_bytes, GroupAccess, RequestContext};

/// `FindCoordinator` key types: 0 a consumer group, 1 a transactional id.
const KEY_TYPE_GROUP: i8 = 0;

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
        let error_code =
            if request.key_type == 0 && !context.authorize_group(Operation::Describe, &key) {
                codes::GROUP_AUTHORIZATION_FAILED
            } else {
                lookup(shard, request.key_type, &key).await
            };
        coordinators.push(coordinator(shard.config, context.listener, key, error_code));
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

/// The error code for one key: transactions have no coordinator here (there is no
/// transaction support), unknown key types are invalid.
async fn lookup(shard: &GroupAccess<'_>, key_type: i8, key: &StrBytes) -> i16 {
    match key_type {
        KEY_TYPE_GROUP if key.is_empty() => group_codes::INVALID_GROUP_ID,
        KEY_TYPE_GROUP => match shard.locate_group(key).await {
            Ok(_) => codes::NONE,
            Err(code) => code,
        },
        1 => group_codes::COORDINATOR_NOT_AVAILABLE,
        _ => group_codes::INVALID_REQUEST,
    }
}

fn coordinator(
    config: &BrokerConfig,
    listener: usize,
    key: StrBytes,
    error_code: i16,
) -> Coordinator {
    let found = error_code == codes::NONE;
    let (host, port) = config.advertised(listener);
    Coordinator::default()
        .with_key(key)
        .with_error_code(error_code)
        .with_error_message((!found).then(|| str_bytes("no coordinator for this key")))
        .with_node_id(BrokerId(if found { config.cluster.node_id } else { -1 }))
        .with_host(if found {
            str_bytes(host)
        } else {
            StrBytes::default()
        })
        .with_port(if found { port } else { -1 })
}
