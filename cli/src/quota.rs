//! `ringfeed quota alter|describe`: client quotas over the protocol (`AlterClientQuotas`,
//! `DescribeClientQuotas`, KIP-546), with `kafka-configs.sh`'s flags: `--entity-type
//! users|clients` with `--entity-name X` or `--entity-default`, or the shorthands `--user X`,
//! `--user-defaults`, `--client X`, `--client-defaults` (a user and a client id together make
//! one entity); `--add-config k=v,...`, `--delete-config k,...`.
//!
//! Connections are plain TCP, as for `ringfeed acl`.

use kafka_protocol::messages::alter_client_quotas_request::{EntityData, EntryData, OpData};
use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::{AlterClientQuotasRequest, DescribeClientQuotasRequest};
use kafka_protocol::protocol::StrBytes;

use super::{check_error, describe_error, fail, parse_key_value, CliResult, ConnectArgs, Outcome};

const USER: &str = "user";
const CLIENT_ID: &str = "client-id";
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_SPECIFIED: i8 = 2;

/// Which entity: see the module docs.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EntityArgs {
    /// `users` or `clients`, with `--entity-name` or `--entity-default`.
    #[arg(long, value_parser = ["users", "clients"])]
    pub entity_type: Option<String>,
    #[arg(long, requires = "entity_type", conflicts_with = "entity_default")]
    pub entity_name: Option<String>,
    /// The default entity of `--entity-type` (`<default>`).
    #[arg(long, requires = "entity_type")]
    pub entity_default: bool,
    /// A user (the principal's name, `ANONYMOUS` without authentication).
    #[arg(long, conflicts_with = "user_defaults")]
    pub user: Option<String>,
    #[arg(long)]
    pub user_defaults: bool,
    /// A client id.
    #[arg(long, conflicts_with = "client_defaults")]
    pub client: Option<String>,
    #[arg(long)]
    pub client_defaults: bool,
}

/// How one entity type is named: `Some(None)` is its default, `None` not given.
type Named = Option<Option<String>>;

impl EntityArgs {
    /// The user and client-id components given, each `(type, name or default)`; a type
    /// named without a name or default (describe only) is `Err` to the caller.
    fn components(&self) -> CliResult<Vec<(&'static str, Named)>> {
        let mut user: Named = self
            .user
            .clone()
            .map(Some)
            .or(self.user_defaults.then_some(None));
        let mut client: Named = self
            .client
            .clone()
            .map(Some)
            .or(self.client_defaults.then_some(None));
        if let Some(entity_type) = &self.entity_type {
            let named = self
                .entity_name
                .clone()
                .map(Some)
                .or(self.entity_default.then_some(None));
            let slot = if entity_type == "users" {
                &mut user
            } else {
                &mut client
            };
            if slot.is_some() {
                return fail(format!("{entity_type} named twice"));
            }
            // `--entity-type` alone (describe): every entity of the type.
            *slot = Some(named.unwrap_or(Some(String::new())));
        }
        let mut out = Vec::new();
        if let Some(named) = user {
            out.push((USER, Some(named)));
        }
        if let Some(named) = client {
            out.push((CLIENT_ID, Some(named)));
        }
        Ok(out)
    }
}

#[derive(clap::Subcommand)]
pub enum QuotaCommand {
    /// Set or remove quotas of one entity.
    Alter {
        #[command(flatten)]
        entity: EntityArgs,
        /// `producer_byte_rate=1048576,consumer_byte_rate=...,request_percentage=...`.
        #[arg(long, value_delimiter = ',', value_parser = parse_key_value)]
        add_config: Vec<(String, String)>,
        /// Keys to remove.
        #[arg(long, value_delimiter = ',')]
        delete_config: Vec<String>,
        /// Let the broker check the change without making it.
        #[arg(long)]
        validate_only: bool,
    },
    /// List the quotas of the entities named (every entity when none).
    Describe {
        #[command(flatten)]
        entity: EntityArgs,
    },
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

pub fn run(connect: &ConnectArgs, command: QuotaCommand) -> CliResult<Outcome> {
    match command {
        QuotaCommand::Alter {
            entity,
            add_config,
            delete_config,
            validate_only,
        } => {
            let request = alter_request(&entity, &add_config, &delete_config, validate_only)?;
            let mut cluster = super::client::connect(connect)?;
            alter(cluster.any(), &request)
        }
        QuotaCommand::Describe { entity } => {
            let request = describe_request(&entity)?;
            let mut cluster = super::client::connect(connect)?;
            describe(cluster.any(), &request)
        }
    }
}

fn alter_request(
    entity: &EntityArgs,
    add: &[(String, String)],
    delete: &[String],
    validate_only: bool,
) -> CliResult<AlterClientQuotasRequest> {
    let mut components = Vec::new();
    for (entity_type, named) in entity.components()? {
        match named.flatten() {
            Some(name) if name.is_empty() => {
                return fail("alter needs --entity-name or --entity-default")
            }
            name => components.push(
                EntityData::default()
                    .with_entity_type(text(entity_type))
                    .with_entity_name(name.as_deref().map(text)),
            ),
        }
    }
    if components.is_empty() {
        return fail("alter needs an entity: --entity-type users|clients, --user, --client");
    }
    if add.is_empty() && delete.is_empty() {
        return fail("alter needs --add-config or --delete-config");
    }
    let mut ops = Vec::new();
    for (key, value) in add {
        let Ok(value) = value.parse::<f64>() else {
            return fail(format!("{key}={value}: not a number"));
        };
        ops.push(OpData::default().with_key(text(key)).with_value(value));
    }
    for key in delete {
        ops.push(OpData::default().with_key(text(key)).with_remove(true));
    }
    Ok(AlterClientQuotasRequest::default()
        .with_entries(vec![EntryData::default()
            .with_entity(components)
            .with_ops(ops)])
        .with_validate_only(validate_only))
}

fn alter(
    connection: &mut super::client::Connection,
    request: &AlterClientQuotasRequest,
) -> CliResult<Outcome> {
    let response = connection.call(request)?;
    let Some(entry) = response.entries.first() else {
        return fail("AlterClientQuotas: no result");
    };
    let entity = entity_text(request.entries[0].entity.iter().map(|component| {
        (
            component.entity_type.as_str(),
            component.entity_name.as_deref(),
        )
    }));
    check_error(entry.error_code, entry.error_message.as_ref(), &entity)?;
    let verb = if request.validate_only {
        "Validated"
    } else {
        "Completed"
    };
    println!("{verb} updating config for {entity}.");
    Ok(Outcome::Success)
}

fn describe_request(entity: &EntityArgs) -> CliResult<DescribeClientQuotasRequest> {
    let components: Vec<ComponentData> = entity
        .components()?
        .into_iter()
        .map(|(entity_type, named)| {
            let (match_type, name) = match named.flatten() {
                None => (MATCH_DEFAULT, None),
                Some(name) if name.is_empty() => (MATCH_SPECIFIED, None),
                Some(name) => (MATCH_EXACT, Some(text(&name))),
            };
            ComponentData::default()
                .with_entity_type(text(entity_type))
                .with_match_type(match_type)
                .with_match(name)
        })
        .collect();
    // kafka-configs.sh describes only the entities of exactly the types named.
    let strict = !components.is_empty();
    Ok(DescribeClientQuotasRequest::default()
        .with_components(components)
        .with_strict(strict))
}

fn describe(
    connection: &mut super::client::Connection,
    request: &DescribeClientQuotasRequest,
) -> CliResult<Outcome> {
    let response = connection.call(request)?;
    if response.error_code != 0 {
        return fail(format!(
            "DescribeClientQuotas: {}",
            describe_error(response.error_code, response.error_message.as_ref())
        ));
    }
    for entry in response.entries.unwrap_or_default() {
        let entity = entity_text(entry.entity.iter().map(|component| {
            (
                component.entity_type.as_str(),
                component.entity_name.as_deref(),
            )
        }));
        let values: Vec<String> = entry
            .values
            .iter()
            .map(|value| format!("{}={}", value.key, value.value))
            .collect();
        println!("Quota configs for {entity} are {}", values.join(", "));
    }
    Ok(Outcome::Success)
}

/// `user-principal 'alice', client-id '<default>'`, as kafka-configs.sh words it.
fn entity_text<'a>(components: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> String {
    components
        .map(|(entity_type, name)| {
            let kind = if entity_type == USER {
                "user-principal"
            } else {
                entity_type
            };
            format!("{kind} '{}'", name.unwrap_or("<default>"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(user: Option<&str>, client_defaults: bool) -> EntityArgs {
        EntityArgs {
            user: user.map(str::to_string),
            client_defaults,
            ..EntityArgs::default()
        }
    }

    #[test]
    fn shorthands_make_one_entity_and_type_alone_lists_the_type() {
        let request = alter_request(
            &args(Some("alice"), true),
            &[("producer_byte_rate".into(), "1024".into())],
            &["request_percentage".into()],
            false,
        )
        .unwrap();
        let entity = &request.entries[0].entity;
        assert_eq!(entity.len(), 2);
        assert_eq!(entity[0].entity_name.as_deref(), Some("alice"));
        assert_eq!(entity[1].entity_name, None);
        assert_eq!(request.entries[0].ops.len(), 2);
        let users = EntityArgs {
            entity_type: Some("users".into()),
            ..EntityArgs::default()
        };
        let describe = describe_request(&users).unwrap();
        assert_eq!(describe.components[0].match_type, MATCH_SPECIFIED);
        assert!(describe.strict);
        assert!(alter_request(&users, &[("a".into(), "1".into())], &[], false).is_err());
        assert!(alter_request(
            &args(Some("a"), false),
            &[("k".into(), "x".into())],
            &[],
            false
        )
        .is_err());
        assert!(!describe_request(&EntityArgs::default()).unwrap().strict);
    }
}
