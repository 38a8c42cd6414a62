//! `ringfeed user create|list|delete --bootstrap-server HOST:PORT`: SCRAM credentials of a
//! running broker over the Kafka protocol (KIP-554's `AlterUserScramCredentials` and
//! `DescribeUserScramCredentials`), as `kafka-configs.sh --entity-type users` does. The
//! caller salts and iterates the password (the broker never sees it); this sends and
//! reports. Plain TCP, as the rest of the CLI: the principal is `User:ANONYMOUS`.

use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, DescribeUserScramCredentialsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::{check_error, fail, CliResult, ConnectArgs};

/// A change for one user: an upsertion (already salted) or a deletion.
pub enum Change {
    Upsert {
        mechanism: i8,
        iterations: i32,
        salt: Vec<u8>,
        salted_password: Vec<u8>,
    },
    Delete {
        mechanism: i8,
    },
}

fn mechanism_name(code: i8) -> String {
    match code {
        1 => "SCRAM-SHA-256".into(),
        2 => "SCRAM-SHA-512".into(),
        other => format!("unknown({other})"),
    }
}

/// Sends one `AlterUserScramCredentials` with `changes` for `user`; the broker's answer.
pub fn alter(connect: &ConnectArgs, user: &str, changes: Vec<Change>) -> CliResult<String> {
    let mut request = AlterUserScramCredentialsRequest::default();
    for change in changes {
        match change {
            Change::Upsert {
                mechanism,
                iterations,
                salt,
                salted_password,
            } => request.upsertions.push(
                ScramCredentialUpsertion::default()
                    .with_name(StrBytes::from_string(user.to_string()))
                    .with_mechanism(mechanism)
                    .with_iterations(iterations)
                    .with_salt(salt.into())
                    .with_salted_password(salted_password.into()),
            ),
            Change::Delete { mechanism } => request.deletions.push(
                ScramCredentialDeletion::default()
                    .with_name(StrBytes::from_string(user.to_string()))
                    .with_mechanism(mechanism),
            ),
        }
    }
    let mut cluster = super::client::connect(connect)?;
    let response = cluster.any().call(&request)?;
    let Some(result) = response.results.first() else {
        return fail("AlterUserScramCredentials: no result");
    };
    check_error(
        result.error_code,
        result.error_message.as_ref(),
        &format!("user {user}"),
    )?;
    Ok(format!("altered the SCRAM credentials of {user}"))
}

/// Every user and their mechanisms, as `ringfeed user list --data-dir` prints them.
pub fn list(connect: &ConnectArgs) -> CliResult<String> {
    let mut cluster = super::client::connect(connect)?;
    let response = cluster
        .any()
        .call(&DescribeUserScramCredentialsRequest::default().with_users(None))?;
    check_error(
        response.error_code,
        response.error_message.as_ref(),
        "DescribeUserScramCredentials",
    )?;
    let mut lines = Vec::new();
    for result in response.results {
        check_error(
            result.error_code,
            result.error_message.as_ref(),
            &format!("user {}", result.user.as_str()),
        )?;
        let mechanisms: Vec<String> = result
            .credential_infos
            .iter()
            .map(|info| {
                format!(
                    "{}(iterations={})",
                    mechanism_name(info.mechanism),
                    info.iterations
                )
            })
            .collect();
        lines.push(format!(
            "{}\t{}",
            result.user.as_str(),
            mechanisms.join(",")
        ));
    }
    lines.sort();
    Ok(lines.join("\n"))
}
