//! `ringfeed topic|produce|consume|group|acl|quota|cluster`: an rpk-like command-line client that speaks the
//! Kafka protocol to any Kafka broker, Ringfeed or not. Nothing here reaches into the broker's
//! internals: requests are built with the `kafka-protocol` crate, versions are negotiated with
//! `ApiVersions`, partition requests go to partition leaders found through `Metadata` and group
//! requests to the coordinator found through `FindCoordinator`, as a Kafka client does.
//!
//! The connections, version negotiation, cluster routing and every request (one typed call
//! per API) are `ringfeed-client`'s (blocking, one request in flight per connection: a CLI
//! waits for every answer anyway); this crate is the commands and their output. Every response frame, fetch and line read has a bound. The
//! `ringfeed` binary runs these subcommands through [`run`].

pub mod acl;
pub mod client;
pub mod cluster;
pub mod consume;
pub mod format;
pub mod group;
pub mod membership;
pub mod produce;
pub mod quota;
pub mod topic;
pub mod txn;
pub mod user;

use std::fmt::{self, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use kafka_protocol::protocol::StrBytes;

/// The client subcommands, flattened into the binary's command list.
#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, reconfigure and delete topics.
    Topic {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// Produce records read from stdin, one per line.
    Produce(produce::ProduceArgs),
    /// Consume records and print them, alone or as a member of a consumer group.
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    Group {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// List and describe transactions (as `kafka-transactions.sh list|describe`).
    Txn {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: txn::TxnCommand,
    },
    /// Create, list and delete ACLs (as `kafka-acls.sh`).
    Acl {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: acl::AclCommand,
    },
    /// Set and describe client quotas (as `kafka-configs.sh --entity-type users|clients`).
    Quota {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: quota::QuotaCommand,
    },
    /// The cluster's brokers, controller and partition health.
    Cluster {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

/// How to reach the cluster; accepted before or after the subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// Comma-separated bootstrap brokers; the first that answers is asked for the cluster
    /// layout.
    #[arg(
        long,
        global = true,
        env = "RINGFEED_BROKERS",
        default_value = "127.0.0.1:9092",
        value_delimiter = ',',
        alias = "bootstrap-server"
    )]
    pub brokers: Vec<String>,
    /// How long to wait for a connection or for any one response, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub timeout_ms: u64,
    /// A Kafka client properties file with the security settings, as `kafka-topics.sh
    /// --command-config` takes: `security.protocol` (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`,
    /// `SASL_SSL`), `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with
    /// `sasl.jaas.config` or `sasl.username`/`sasl.password`, and PEM files in
    /// `ssl.truststore.location` (or `ssl.ca.location`) and, for mutual TLS,
    /// `ssl.keystore.location` (or `ssl.certificate.location` + `ssl.key.location`).
    #[arg(
        long,
        global = true,
        env = "RINGFEED_COMMAND_CONFIG",
        alias = "client-config",
        value_name = "FILE"
    )]
    pub command_config: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Runs one client command; the exit code is non-zero when anything failed.
pub fn run(command: ClientCommand) -> ExitCode {
    let outcome = match command {
        ClientCommand::Topic { connect, command } => topic::run(&connect, command),
        ClientCommand::Produce(args) => produce::run(&args),
        ClientCommand::Consume(args) => consume::run(&args),
        ClientCommand::Group { connect, command } => group::run(&connect, command),
        ClientCommand::Txn { connect, command } => txn::run(&connect, command),
        ClientCommand::Acl { connect, command } => acl::run(&connect, command),
        ClientCommand::Quota { connect, command } => quota::run(&connect, command),
        ClientCommand::Cluster { connect, command } => cluster::run(&connect, command),
    };
    match outcome {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::PartialFailure) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("ringfeed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// How a command that reports per-item results ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Some items (records, topics, groups) failed; each was reported on stderr.
    PartialFailure,
}

impl Outcome {
    pub fn from_failures(failures: usize) -> Self {
        if failures == 0 {
            Self::Success
        } else {
            Self::PartialFailure
        }
    }
}

/// An operating error the user is told about: broker unreachable, unknown topic, a
/// malformed answer. Never a panic.
#[derive(Debug)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// The client's errors reach the user as they are worded.
impl From<ringfeed_client::Error> for CliError {
    fn from(error: ringfeed_client::Error) -> Self {
        CliError(error.to_string())
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub fn fail<T>(message: impl Into<String>) -> CliResult<T> {
    Err(CliError(message.into()))
}

/// `UnknownTopicOrPartition (3)` plus the broker's message when it sent one.
pub fn describe_error(code: i16, message: Option<&StrBytes>) -> String {
    ringfeed_client::error::describe_error(code, message)
}

/// `Err` naming `what` when `code` is an error.
pub fn check_error(code: i16, message: Option<&StrBytes>, what: &str) -> CliResult<()> {
    if code == 0 {
        Ok(())
    } else {
        fail(format!("{what}: {}", describe_error(code, message)))
    }
}

/// Splits `key=value`; the value may contain `=`.
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

/// Prints rows under a header with columns padded to their widest cell (the last unpadded).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (index, cell) in cells.enumerate() {
            if index + 1 < widths.len() {
                let _ = write!(text, "{cell:<width$}  ", width = widths[index]);
            } else {
                text.push_str(cell);
            }
        }
        println!("{}", text.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_carry_code_and_message() {
        assert_eq!(describe_error(3, None), "UnknownTopicOrPartition (3)");
        assert_eq!(
            describe_error(36, Some(&StrBytes::from_static_str("exists"))),
            "TopicAlreadyExists (36): exists"
        );
        assert!(describe_error(-999, None).contains("-999"));
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(
            parse_key_value("retention.ms="),
            Ok(("retention.ms".into(), String::new()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
