//! `DescribeClientQuotas` (KIP-546, `kafka-configs --describe --entity-type users|clients`,
//! `Admin.describeClientQuotas`): the quotas of the entities a filter matches, answered from
//! this shard's copy as of the last change. Needs `DESCRIBE_CONFIGS` on the cluster.
//!
//! Kafka's rules (`ClientQuotasImage.describe`): each component names an entity type once,
//! with match type 0 (exact name), 1 (the default, no name) or 2 (any name of the type);
//! an entity matches when it has every named type with a matching name, and, when
//! `strict`, no other type. No components: every entity (or none, when strict). A bad
//! filter is `INVALID_REQUEST` for the whole response, entries null.

use kafka_protocol::messages::describe_client_quotas_response::{EntityData, EntryData, ValueData};
use kafka_protocol::messages::{DescribeClientQuotasRequest, DescribeClientQuotasResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, UserAdmin};
use crate::quotas::{QuotaFilter, QuotaSet};

/// Async only because every handler is (`served_apis!` awaits them all).
#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &UserAdmin<'_>,
    context: &RequestContext,
    request: DescribeClientQuotasRequest,
) -> DescribeClientQuotasResponse {
    if !context.authorize_cluster(Operation::DescribeConfigs) {
        return refused(
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "describing client quotas needs DESCRIBE_CONFIGS on the cluster",
        );
    }
    let components: Vec<(&str, i8, Option<&str>)> = request
        .components
        .iter()
        .map(|component| {
            (
                component.entity_type.as_str(),
                component.match_type,
                component._match.as_deref(),
            )
        })
        .collect();
    match QuotaFilter::parse(&components, request.strict) {
        Ok(filter) => DescribeClientQuotasResponse::default()
            .with_entries(Some(described(&shard.quotas(), &filter))),
        Err((code, message)) => refused(code, &message),
    }
}

fn described(set: &QuotaSet, filter: &QuotaFilter) -> Vec<EntryData> {
    set.entities()
        .filter(|(entity, _)| filter.matches(entity))
        .map(|(entity, values)| {
            let entity = entity
                .components()
                .into_iter()
                .map(|(entity_type, name)| {
                    EntityData::default()
                        .with_entity_type(str_bytes(entity_type))
                        .with_entity_name(name.map(str_bytes))
                })
                .collect();
            let values = values
                .iter()
                .map(|(key, value)| {
                    ValueData::default()
                        .with_key(str_bytes(key.name()))
                        .with_value(*value)
                })
                .collect();
            EntryData::default().with_entity(entity).with_values(values)
        })
        .collect()
}

fn refused(code: i16, message: &str) -> DescribeClientQuotasResponse {
    DescribeClientQuotasResponse::default()
        .with_error_code(code)
        .with_error_message(Some(str_bytes(message)))
        .with_entries(None)
}
