//! `DescribeUserScramCredentials` (KIP-554, `kafka-configs --describe --entity-type users`,
//! `AdminClient` `describe_user_scram_credentials`): per user, the mechanisms and iteration
//! counts of their credentials, never a salt or a key. Needs DESCRIBE on the cluster.
//! Answered from this shard's credential set, as of the last change.
//!
//! Kafka's rules (`ScramImage.describe`): no users named (null or empty) lists every user;
//! a named user without credentials is `RESOURCE_NOT_FOUND`; a name given twice is
//! `DUPLICATE_RESOURCE`, answered once.

use std::collections::BTreeMap;

use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{
    DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse,
};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, RequestContext, UserAdmin};
use crate::sasl::alteration::mechanism_code;
use crate::sasl::Credentials;

/// Async only because every handler is (`served_apis!` awaits them all).
#[allow(clippy::unused_async)]
pub async fn handle(
    shard: &UserAdmin<'_>,
    context: &RequestContext,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let named: Vec<String> = request
        .users
        .unwrap_or_default()
        .into_iter()
        .map(|user| user.name.to_string())
        .collect();
    if !context.authorize_cluster(Operation::Describe) {
        // The top-level code alone, as Kafka's `getErrorResponse` answers it.
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED)
            .with_error_message(Some(str_bytes(
                "describing SCRAM credentials needs DESCRIBE on the cluster",
            )));
    }
    let credentials = shard.credentials();
    let results = if named.is_empty() {
        credentials
            .list()
            .map(|(user, _)| described(&credentials, user))
            .collect()
    } else {
        answer_named(&credentials, &named)
    };
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

/// One result per distinct name, in the order first named.
fn answer_named(
    credentials: &Credentials,
    named: &[String],
) -> Vec<DescribeUserScramCredentialsResult> {
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for user in named {
        *times.entry(user.as_str()).or_default() += 1;
    }
    let mut answered = std::collections::BTreeSet::new();
    named
        .iter()
        .filter(|user| answered.insert(user.as_str()))
        .map(|user| {
            if times[user.as_str()] > 1 {
                let message = format!(
                    "Cannot describe SCRAM credentials for the same user twice in a single request: {user}"
                );
                refused(user, codes::DUPLICATE_RESOURCE, &message)
            } else if credentials.has_user(user) {
                described(credentials, user)
            } else {
                let message =
                    format!("Attempt to describe a user credential that does not exist: {user}");
                refused(user, codes::RESOURCE_NOT_FOUND, &message)
            }
        })
        .collect()
}

fn described(credentials: &Credentials, user: &str) -> DescribeUserScramCredentialsResult {
    let infos = credentials
        .list()
        .find(|(name, _)| *name == user)
        .map(|(_, mechanisms)| mechanisms)
        .unwrap_or_default()
        .into_iter()
        .map(|(hash, iterations)| {
            CredentialInfo::default()
                .with_mechanism(mechanism_code(hash))
                .with_iterations(i32::try_from(iterations).unwrap_or(i32::MAX))
        })
        .collect();
    DescribeUserScramCredentialsResult::default()
        .with_user(str_bytes(user))
        .with_credential_infos(infos)
}

fn refused(user: &str, code: i16, message: &str) -> DescribeUserScramCredentialsResult {
    DescribeUserScramCredentialsResult::default()
        .with_user(str_bytes(user))
        .with_error_code(code)
        .with_error_message(Some(str_bytes(message)))
}
