//! `AlterClientQuotas` (KIP-546, `kafka-configs --alter --entity-type users|clients
//! --add-config producer_byte_rate=...`, `Admin.alterClientQuotas`): sets and removes quota
//! values of user / client-id entities. Needs `ALTER_CONFIGS` on the cluster.
//!
//! The request goes to shard 0 whole, which applies each entry on its own (Kafka's checks,
//! `quotas::model`: a refused entry is answered `INVALID_REQUEST` and leaves the others),
//! writes `quotas.json` and installs the new set on every shard before answering
//! (`ShardServices::alter_quotas`): the next request on any connection is held to it. With
//! `validate_only` the entries are checked and nothing changes.

use kafka_protocol::messages::alter_client_quotas_response::{EntityData, EntryData};
use kafka_protocol::messages::{AlterClientQuotasRequest, AlterClientQuotasResponse};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, UserAdmin};
use crate::quotas::store::{EntryResult, QuotaEntry};
use crate::quotas::{Entity, QuotaOp};

pub async fn handle(
    shard: &UserAdmin<'_>,
    context: &RequestContext,
    request: AlterClientQuotasRequest,
) -> AlterClientQuotasResponse {
    let echoed: Vec<Vec<EntityData>> = request
        .entries
        .iter()
        .map(|entry| {
            entry
                .entity
                .iter()
                .map(|component| {
                    EntityData::default()
                        .with_entity_type(component.entity_type.clone())
                        .with_entity_name(component.entity_name.clone())
                })
                .collect()
        })
        .collect();
    let results = if context.authorize_cluster(Operation::AlterConfigs) {
        let entries = request.entries.iter().map(entry).collect();
        shard
            .alter_quotas(entries, request.validate_only)
            .await
            .unwrap_or_else(|| {
                every_entry(
                    echoed.len(),
                    codes::UNKNOWN_SERVER_ERROR,
                    "the broker is shutting down",
                )
            })
    } else {
        every_entry(
            echoed.len(),
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "altering client quotas needs ALTER_CONFIGS on the cluster",
        )
    };
    let entries = echoed
        .into_iter()
        .zip(results)
        .map(|(entity, (error_code, message))| {
            EntryData::default()
                .with_entity(entity)
                .with_error_code(error_code)
                .with_error_message(message.as_deref().map(str_bytes))
        })
        .collect();
    AlterClientQuotasResponse::default().with_entries(entries)
}

fn entry(entry: &kafka_protocol::messages::alter_client_quotas_request::EntryData) -> QuotaEntry {
    let components: Vec<(&str, Option<&str>)> = entry
        .entity
        .iter()
        .map(|component| {
            (
                component.entity_type.as_str(),
                component.entity_name.as_deref(),
            )
        })
        .collect();
    QuotaEntry {
        entity: Entity::parse(&components),
        ops: entry
            .ops
            .iter()
            .map(|op| QuotaOp {
                key: op.key.to_string(),
                value: op.value,
                remove: op.remove,
            })
            .collect(),
    }
}

fn every_entry(count: usize, code: i16, message: &str) -> Vec<EntryResult> {
    vec![(code, Some(message.to_string())); count]
}
