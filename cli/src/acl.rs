//! `ringfeed acl create|list|delete`: Kafka ACLs over the protocol (`CreateAcls`,
//! `DescribeAcls`, `DeleteAcls`), with `kafka-acls.sh`'s flags: `--allow-principal`,
//! `--deny-principal`, `--operation`, `--topic`/`--group`/`--cluster`/`--transactional-id`,
//! `--resource-pattern-type`, `--host`. The codes are Kafka's (`ResourceType`,
//! `PatternType`, `AclOperation`, `AclPermissionType`), written here rather than taken from
//! the broker: the CLI talks to any Kafka broker.
//!
//! Connections are secured as `--command-config` says; without it, on a broker with ACLs on,
//! the CLI acts as `User:ANONYMOUS` on a PLAINTEXT listener.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use super::{describe_error, fail, print_table, CliResult, ConnectArgs, Outcome};

/// Most bindings one `create` sends (resources x principals x operations): a request Kafka
/// takes whole, and a typo in a loop cannot flood the broker.
const CREATIONS_MAX: usize = 10_000;

const ANY: i8 = 1;
const PATTERN_MATCH: i8 = 2;
const PATTERN_LITERAL: i8 = 3;
const PATTERN_PREFIXED: i8 = 4;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

const RESOURCE_TYPES: [(i8, &str); 4] = [
    (2, "Topic"),
    (3, "Group"),
    (4, "Cluster"),
    (5, "TransactionalId"),
];

/// `AclOperation` codes with `kafka-acls.sh`'s names.
const OPERATIONS: [(i8, &str); 14] = [
    (2, "All"),
    (3, "Read"),
    (4, "Write"),
    (5, "Create"),
    (6, "Delete"),
    (7, "Alter"),
    (8, "Describe"),
    (9, "ClusterAction"),
    (10, "DescribeConfigs"),
    (11, "AlterConfigs"),
    (12, "IdempotentWrite"),
    (13, "CreateTokens"),
    (14, "DescribeTokens"),
    (15, "TwoPhaseCommit"),
];

/// Which resources a command is about (any number of each; `--cluster` is the one
/// `kafka-cluster`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Resources {
    #[arg(long)]
    pub topic: Vec<String>,
    #[arg(long)]
    pub group: Vec<String>,
    #[arg(long)]
    pub cluster: bool,
    #[arg(long)]
    pub transactional_id: Vec<String>,
}

impl Resources {
    fn list(&self) -> Vec<(i8, String)> {
        let mut out: Vec<(i8, String)> = Vec::new();
        out.extend(self.topic.iter().map(|name| (2, name.clone())));
        out.extend(self.group.iter().map(|name| (3, name.clone())));
        if self.cluster {
            out.push((4, "kafka-cluster".to_string()));
        }
        out.extend(self.transactional_id.iter().map(|name| (5, name.clone())));
        out
    }
}

/// Who and what: the principals allowed or denied and the operations.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Grants {
    /// A principal to allow (`User:alice`, `User:*`); repeatable.
    #[arg(long)]
    pub allow_principal: Vec<String>,
    /// A principal to deny; repeatable. Deny wins over allow.
    #[arg(long)]
    pub deny_principal: Vec<String>,
    /// An operation as `kafka-acls.sh` names it (read, write, create, delete, alter,
    /// describe, cluster-action, describe-configs, alter-configs, idempotent-write, all);
    /// repeatable.
    #[arg(long, value_parser = parse_operation)]
    pub operation: Vec<i8>,
    /// The client address the ACL applies to (`*`: any).
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum AclCommand {
    /// Add ACLs: every principal x operation x resource given.
    Create {
        #[command(flatten)]
        resources: Resources,
        #[command(flatten)]
        grants: Grants,
        /// literal or prefixed.
        #[arg(long, default_value = "literal", value_parser = parse_create_pattern)]
        resource_pattern_type: i8,
    },
    /// List ACLs: those on the resources given (all when none), optionally of one principal.
    List {
        #[command(flatten)]
        resources: Resources,
        /// Only this principal's ACLs.
        #[arg(long)]
        principal: Option<String>,
        /// literal, prefixed, any, or match (every pattern that applies to the named resource).
        #[arg(long, default_value = "any", value_parser = parse_filter_pattern)]
        resource_pattern_type: i8,
    },
    /// Remove ACLs matching the flags given: with none but a resource, every ACL on it.
    Delete {
        #[command(flatten)]
        resources: Resources,
        #[command(flatten)]
        grants: Grants,
        #[arg(long, default_value = "literal", value_parser = parse_filter_pattern)]
        resource_pattern_type: i8,
    },
}

fn normalized(text: &str) -> String {
    text.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn parse_operation(text: &str) -> Result<i8, String> {
    OPERATIONS
        .iter()
        .find(|(_, name)| normalized(name) == normalized(text))
        .map(|(code, _)| *code)
        .ok_or_else(|| {
            let names: Vec<&str> = OPERATIONS.iter().map(|(_, name)| *name).collect();
            format!("unknown operation {text:?}; one of {}", names.join(", "))
        })
}

fn parse_create_pattern(text: &str) -> Result<i8, String> {
    match normalized(text).as_str() {
        "literal" => Ok(PATTERN_LITERAL),
        "prefixed" => Ok(PATTERN_PREFIXED),
        _ => Err(format!("{text:?}: literal or prefixed")),
    }
}

fn parse_filter_pattern(text: &str) -> Result<i8, String> {
    match normalized(text).as_str() {
        "any" => Ok(ANY),
        "match" => Ok(PATTERN_MATCH),
        other => parse_create_pattern(other),
    }
}

fn name_of(table: &[(i8, &'static str)], code: i8) -> String {
    table.iter().find(|(known, _)| *known == code).map_or_else(
        || format!("unknown({code})"),
        |(_, name)| (*name).to_string(),
    )
}

fn pattern_name(code: i8) -> String {
    match code {
        PATTERN_LITERAL => "LITERAL".into(),
        PATTERN_PREFIXED => "PREFIXED".into(),
        other => format!("unknown({other})"),
    }
}

fn permission_name(code: i8) -> String {
    match code {
        ALLOW => "ALLOW".into(),
        DENY => "DENY".into(),
        other => format!("unknown({other})"),
    }
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub fn run(connect: &ConnectArgs, command: AclCommand) -> CliResult<Outcome> {
    match command {
        AclCommand::Create {
            resources,
            grants,
            resource_pattern_type,
        } => {
            let creations = creations(&resources, &grants, resource_pattern_type)?;
            let mut cluster = super::client::connect(connect)?;
            create(cluster.any(), &creations)
        }
        AclCommand::List {
            resources,
            principal,
            resource_pattern_type,
        } => {
            let mut cluster = super::client::connect(connect)?;
            list(
                cluster.any(),
                &resources,
                principal.as_deref(),
                resource_pattern_type,
            )
        }
        AclCommand::Delete {
            resources,
            grants,
            resource_pattern_type,
        } => {
            let filters = delete_filters(&resources, &grants, resource_pattern_type)?;
            let mut cluster = super::client::connect(connect)?;
            delete(cluster.any(), filters)
        }
    }
}

/// Every binding `create` asks for, in the order given.
fn creations(resources: &Resources, grants: &Grants, pattern: i8) -> CliResult<Vec<AclCreation>> {
    let resources = resources.list();
    if resources.is_empty() {
        return fail("create needs a resource: --topic, --group, --cluster or --transactional-id");
    }
    if grants.operation.is_empty() {
        return fail("create needs at least one --operation");
    }
    let principals: Vec<(i8, &String)> = grants
        .allow_principal
        .iter()
        .map(|principal| (ALLOW, principal))
        .chain(
            grants
                .deny_principal
                .iter()
                .map(|principal| (DENY, principal)),
        )
        .collect();
    if principals.is_empty() {
        return fail("create needs --allow-principal or --deny-principal");
    }
    let count = resources.len() * principals.len() * grants.operation.len();
    if count > CREATIONS_MAX {
        return fail(format!(
            "{count} ACLs in one command; at most {CREATIONS_MAX}"
        ));
    }
    let host = grants.host.as_deref().unwrap_or("*");
    let mut out = Vec::with_capacity(count);
    for (resource_type, name) in &resources {
        for (permission, principal) in &principals {
            for operation in &grants.operation {
                out.push(
                    AclCreation::default()
                        .with_resource_type(*resource_type)
                        .with_resource_name(text(name))
                        .with_resource_pattern_type(pattern)
                        .with_principal(text(principal))
                        .with_host(text(host))
                        .with_operation(*operation)
                        .with_permission_type(*permission),
                );
            }
        }
    }
    Ok(out)
}

fn create(
    connection: &mut super::client::Connection,
    creations: &[AclCreation],
) -> CliResult<Outcome> {
    let response =
        connection.call(&CreateAclsRequest::default().with_creations(creations.to_vec()))?;
    if response.results.len() != creations.len() {
        return fail(format!(
            "CreateAcls: {} results for {} creations",
            response.results.len(),
            creations.len()
        ));
    }
    let mut failures = 0;
    for (creation, result) in creations.iter().zip(&response.results) {
        let line = binding_line(
            creation.resource_type,
            &creation.resource_name,
            creation.resource_pattern_type,
            &creation.principal,
            &creation.host,
            creation.operation,
            creation.permission_type,
        );
        if result.error_code == 0 {
            println!("created {line}");
        } else {
            failures += 1;
            eprintln!(
                "not created {line}: {}",
                describe_error(result.error_code, result.error_message.as_ref())
            );
        }
    }
    Ok(Outcome::from_failures(failures))
}

fn binding_line(
    resource_type: i8,
    name: &str,
    pattern: i8,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> String {
    format!(
        "{} {}:{name} {principal} {} {} from {host}",
        permission_name(permission),
        name_of(&RESOURCE_TYPES, resource_type),
        pattern_name(pattern),
        name_of(&OPERATIONS, operation),
    )
}

fn list(
    connection: &mut super::client::Connection,
    resources: &Resources,
    principal: Option<&str>,
    pattern: i8,
) -> CliResult<Outcome> {
    // One DescribeAcls per resource named (Kafka's filter has one resource), or one for all.
    let mut filters: Vec<(i8, Option<String>)> = resources
        .list()
        .into_iter()
        .map(|(resource_type, name)| (resource_type, Some(name)))
        .collect();
    if filters.is_empty() {
        filters.push((ANY, None));
    }
    let mut rows = Vec::new();
    for (resource_type, name) in filters {
        let request = DescribeAclsRequest::default()
            .with_resource_type_filter(resource_type)
            .with_resource_name_filter(name.as_deref().map(text))
            .with_pattern_type_filter(pattern)
            .with_principal_filter(principal.map(text))
            // The codec's default is Some(""), which matches no host.
            .with_host_filter(None)
            .with_operation(ANY)
            .with_permission_type(ANY);
        let response = connection.call(&request)?;
        if response.error_code != 0 {
            return fail(format!(
                "DescribeAcls: {}",
                describe_error(response.error_code, response.error_message.as_ref())
            ));
        }
        for resource in response.resources {
            for acl in resource.acls {
                rows.push(vec![
                    name_of(&RESOURCE_TYPES, resource.resource_type),
                    resource.resource_name.to_string(),
                    pattern_name(resource.pattern_type),
                    acl.principal.to_string(),
                    acl.host.to_string(),
                    name_of(&OPERATIONS, acl.operation),
                    permission_name(acl.permission_type),
                ]);
            }
        }
    }
    rows.sort();
    rows.dedup();
    print_table(
        &[
            "RESOURCE-TYPE",
            "NAME",
            "PATTERN",
            "PRINCIPAL",
            "HOST",
            "OPERATION",
            "PERMISSION",
        ],
        &rows,
    );
    Ok(Outcome::Success)
}

/// One filter per resource x principal x operation given; a flag not given matches any.
fn delete_filters(
    resources: &Resources,
    grants: &Grants,
    pattern: i8,
) -> CliResult<Vec<DeleteAclsFilter>> {
    let resources = resources.list();
    if resources.is_empty() {
        return fail("delete needs a resource: --topic, --group, --cluster or --transactional-id");
    }
    let mut principals: Vec<(i8, Option<&String>)> = grants
        .allow_principal
        .iter()
        .map(|principal| (ALLOW, Some(principal)))
        .chain(
            grants
                .deny_principal
                .iter()
                .map(|principal| (DENY, Some(principal))),
        )
        .collect();
    if principals.is_empty() {
        principals.push((ANY, None));
    }
    let operations = if grants.operation.is_empty() {
        vec![ANY]
    } else {
        grants.operation.clone()
    };
    let count = resources.len() * principals.len() * operations.len();
    if count > CREATIONS_MAX {
        return fail(format!(
            "{count} filters in one command; at most {CREATIONS_MAX}"
        ));
    }
    let mut filters = Vec::with_capacity(count);
    for (resource_type, name) in &resources {
        for (permission, principal) in &principals {
            for operation in &operations {
                filters.push(
                    DeleteAclsFilter::default()
                        .with_resource_type_filter(*resource_type)
                        .with_resource_name_filter(Some(text(name)))
                        .with_pattern_type_filter(pattern)
                        .with_principal_filter(principal.map(|p| text(p)))
                        .with_host_filter(grants.host.as_deref().map(text))
                        .with_operation(*operation)
                        .with_permission_type(*permission),
                );
            }
        }
    }
    Ok(filters)
}

fn delete(
    connection: &mut super::client::Connection,
    filters: Vec<DeleteAclsFilter>,
) -> CliResult<Outcome> {
    let count = filters.len();
    let response = connection.call(&DeleteAclsRequest::default().with_filters(filters))?;
    if response.filter_results.len() != count {
        return fail(format!(
            "DeleteAcls: {} results for {count} filters",
            response.filter_results.len()
        ));
    }
    let mut failures = 0;
    let mut deleted = 0;
    for result in response.filter_results {
        if result.error_code != 0 {
            failures += 1;
            eprintln!(
                "not deleted: {}",
                describe_error(result.error_code, result.error_message.as_ref())
            );
            continue;
        }
        for acl in result.matching_acls {
            let line = binding_line(
                acl.resource_type,
                &acl.resource_name,
                acl.pattern_type,
                &acl.principal,
                &acl.host,
                acl.operation,
                acl.permission_type,
            );
            if acl.error_code == 0 {
                deleted += 1;
                println!("deleted {line}");
            } else {
                failures += 1;
                eprintln!(
                    "not deleted {line}: {}",
                    describe_error(acl.error_code, acl.error_message.as_ref())
                );
            }
        }
    }
    if deleted == 0 && failures == 0 {
        println!("no ACL matched");
    }
    Ok(Outcome::from_failures(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_take_kafka_acls_names_in_any_case() {
        assert_eq!(parse_operation("Read"), Ok(3));
        assert_eq!(parse_operation("describe-configs"), Ok(10));
        assert_eq!(parse_operation("IDEMPOTENT_WRITE"), Ok(12));
        assert!(parse_operation("Fly").unwrap_err().contains("Read"));
        assert_eq!(parse_filter_pattern("match"), Ok(PATTERN_MATCH));
        assert!(parse_create_pattern("match").is_err());
    }

    #[test]
    fn create_is_the_product_of_resources_principals_and_operations() {
        let resources = Resources {
            topic: vec!["a".into(), "b".into()],
            cluster: true,
            ..Resources::default()
        };
        let grants = Grants {
            allow_principal: vec!["User:x".into()],
            deny_principal: vec!["User:y".into()],
            operation: vec![3, 4],
            host: None,
        };
        let made = creations(&resources, &grants, PATTERN_PREFIXED).unwrap();
        assert_eq!(made.len(), 3 * 2 * 2);
        assert_eq!(made[0].resource_name.as_str(), "a");
        assert_eq!(made[0].host.as_str(), "*");
        assert_eq!(made[0].permission_type, ALLOW);
        assert_eq!(made[2].permission_type, DENY);
        assert_eq!(made[8].resource_name.as_str(), "kafka-cluster");
        assert!(creations(&Resources::default(), &grants, 3).is_err());
        let no_operation = Grants {
            operation: Vec::new(),
            ..grants
        };
        assert!(creations(&resources, &no_operation, 3).is_err());
    }
}
