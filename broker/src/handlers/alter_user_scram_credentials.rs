//! `AlterUserScramCredentials` (KIP-554, `kafka-configs --alter --add-config
//! 'SCRAM-SHA-512=[password=...]'`, `AdminClient` `alter_user_scram_credentials`): creates,
//! replaces and deletes SCRAM credentials of a running broker. The client sends the
//! password salted and iterated, never the password. Needs ALTER on the cluster.
//!
//! The request goes to shard 0 whole, which applies Kafka's rules (`sasl::alteration`),
//! writes the credentials file and installs the new set on every shard before answering
//! (`ShardServices::alter_credentials`): a login right after the answer, on any
//! connection, sees the change.

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, UserAdmin};
use crate::sasl::alteration::{Alteration, Deletion, Upsertion, UserResult};

pub async fn handle(
    shard: &UserAdmin<'_>,
    context: &RequestContext,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    let alteration = Alteration {
        deletions: request
            .deletions
            .into_iter()
            .map(|deletion| Deletion {
                user: deletion.name.to_string(),
                mechanism: deletion.mechanism,
            })
            .collect(),
        upsertions: request
            .upsertions
            .into_iter()
            .map(|upsertion| Upsertion {
                user: upsertion.name.to_string(),
                mechanism: upsertion.mechanism,
                iterations: upsertion.iterations,
                salt: upsertion.salt.to_vec(),
                salted_password: upsertion.salted_password.to_vec(),
            })
            .collect(),
    };
    let results = if context.authorize_cluster(Operation::Alter) {
        match shard.alter_credentials(alteration.clone()).await {
            Some(results) => results,
            None => every_user(
                &alteration,
                codes::UNKNOWN_SERVER_ERROR,
                "the broker is shutting down",
            ),
        }
    } else {
        every_user(
            &alteration,
            codes::CLUSTER_AUTHORIZATION_FAILED,
            "altering SCRAM credentials needs ALTER on the cluster",
        )
    };
    AlterUserScramCredentialsResponse::default().with_results(
        results
            .into_iter()
            .map(|result| {
                AlterUserScramCredentialsResult::default()
                    .with_user(str_bytes(&result.user))
                    .with_error_code(result.error_code)
                    .with_error_message(result.error_message.as_deref().map(str_bytes))
            })
            .collect(),
    )
}

/// The same answer for every user named, once each, sorted (Kafka's `getErrorResponse`).
fn every_user(alteration: &Alteration, code: i16, message: &str) -> Vec<UserResult> {
    let users: std::collections::BTreeSet<&str> = alteration
        .deletions
        .iter()
        .map(|deletion| deletion.user.as_str())
        .chain(
            alteration
                .upsertions
                .iter()
                .map(|upsertion| upsertion.user.as_str()),
        )
        .collect();
    users
        .into_iter()
        .map(|user| UserResult {
            user: user.to_string(),
            error_code: code,
            error_message: Some(message.to_string()),
        })
        .collect()
}
