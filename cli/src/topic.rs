//! `ringfeed topic create|list|describe|alter-config|delete`: `CreateTopics`, `Metadata`,
//! `ListOffsets`, `DescribeConfigs`, `IncrementalAlterConfigs` and `DeleteTopics`.

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{topic_name, Cluster, OFFSET_EARLIEST, OFFSET_LATEST};
use super::{
    check_error, describe_error, fail, parse_key_value, print_table, CliResult, ConnectArgs,
    Outcome,
};

/// Kafka's config resource type for a topic.
const RESOURCE_TYPE_TOPIC: i8 = 2;
/// `IncrementalAlterConfigs` operations.
const CONFIG_OPERATION_SET: i8 = 0;
const CONFIG_OPERATION_DELETE: i8 = 1;

#[derive(clap::Subcommand)]
pub enum TopicCommand {
    /// Create topics.
    Create {
        /// Topic names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Partitions per topic (default: the broker's num.partitions).
        #[arg(short, long, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
        partitions: Option<i32>,
        /// Replication factor (default: the broker's default.replication.factor).
        #[arg(short = 'r', long, value_parser = clap::value_parser!(i16).range(1..))]
        replication_factor: Option<i16>,
        /// A topic config, key=value (repeatable), e.g. -c retention.ms=60000.
        #[arg(short = 'c', long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics with their partition and replica counts.
    List {
        /// Include internal topics such as `__consumer_offsets`.
        #[arg(short, long)]
        internal: bool,
    },
    /// Show a topic's partitions (leaders, replicas, offsets) and its configs.
    Describe { name: String },
    /// Set or delete topic configs (`IncrementalAlterConfigs`).
    AlterConfig {
        name: String,
        /// A config to set, key=value (repeatable).
        #[arg(long = "set", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
        /// A config to remove, back to its default (repeatable).
        #[arg(long = "delete")]
        delete: Vec<String>,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub fn run(connect: &ConnectArgs, command: TopicCommand) -> CliResult<Outcome> {
    let mut cluster = super::client::connect(connect)?;
    match command {
        TopicCommand::Create {
            names,
            partitions,
            replication_factor,
            configs,
        } => create(
            &mut cluster,
            &names,
            partitions,
            replication_factor,
            &configs,
        ),
        TopicCommand::List { internal } => list(&mut cluster, internal),
        TopicCommand::Describe { name } => describe(&mut cluster, &name),
        TopicCommand::AlterConfig { name, set, delete } => {
            alter_config(&mut cluster, &name, &set, &delete)
        }
        TopicCommand::Delete { names } => delete_topics(&mut cluster, &names),
    }
}

fn create(
    cluster: &mut Cluster,
    names: &[String],
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: &[(String, String)],
) -> CliResult<Outcome> {
    let timeout_ms = cluster.broker_timeout_ms();
    let connection = cluster.controller()?;
    let version = connection.version::<CreateTopicsRequest>()?;
    // "-1: the broker's default" exists from v4; older brokers need numbers.
    let default = if version >= 4 { -1 } else { 1 };
    let topics = names
        .iter()
        .map(|name| {
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions.unwrap_or(default))
                .with_replication_factor(replication_factor.unwrap_or(default as i16))
                .with_configs(
                    configs
                        .iter()
                        .map(|(key, value)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(key.clone()))
                                .with_value(Some(StrBytes::from_string(value.clone())))
                        })
                        .collect(),
                )
        })
        .collect();
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms);
    let response = connection.call_at(&request, version)?;
    let mut failures = 0;
    for result in &response.topics {
        let name = result.name.0.as_str();
        if result.error_code == 0 {
            if version >= 5 {
                println!(
                    "created {name} ({} partitions, replication factor {})",
                    result.num_partitions, result.replication_factor
                );
            } else {
                println!("created {name}");
            }
        } else {
            failures += 1;
            eprintln!(
                "topic {name}: {}",
                describe_error(result.error_code, result.error_message.as_ref())
            );
        }
    }
    Ok(Outcome::from_failures(failures))
}

fn list(cluster: &mut Cluster, internal: bool) -> CliResult<Outcome> {
    let metadata = cluster.metadata(None)?;
    let mut rows: Vec<Vec<String>> = metadata
        .topics
        .iter()
        .filter(|t| internal || !t.is_internal)
        .map(|t| {
            let name = t
                .name
                .as_ref()
                .map_or_else(|| t.topic_id.to_string(), |n| n.0.to_string());
            let replicas = t.partitions.first().map_or(0, |p| p.replica_nodes.len());
            let status = if t.error_code == 0 {
                String::new()
            } else {
                describe_error(t.error_code, None)
            };
            vec![
                name,
                t.partitions.len().to_string(),
                replicas.to_string(),
                status,
            ]
        })
        .collect();
    rows.sort();
    print_table(&["NAME", "PARTITIONS", "REPLICAS", "ERROR"], &rows);
    Ok(Outcome::Success)
}

fn describe(cluster: &mut Cluster, name: &str) -> CliResult<Outcome> {
    let layout = cluster.topic_layout(name)?;
    let indexes: Vec<i32> = layout.partitions.iter().map(|p| p.index).collect();
    let starts = cluster.list_offsets(&layout, &indexes, OFFSET_EARLIEST)?;
    let ends = cluster.list_offsets(&layout, &indexes, OFFSET_LATEST)?;
    println!("NAME        {name}");
    println!("ID          {}", layout.topic_id);
    println!("INTERNAL    {}", layout.is_internal);
    println!("PARTITIONS  {}", layout.partitions.len());
    println!(
        "REPLICAS    {}",
        layout.partitions.first().map_or(0, |p| p.replicas.len())
    );
    println!();
    let offset_cell = |result: Option<&Result<i64, String>>| match result {
        Some(Ok(offset)) => offset.to_string(),
        Some(Err(error)) => error.clone(),
        None => "-".to_string(),
    };
    let rows: Vec<Vec<String>> = layout
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.index.to_string(),
                p.leader.0.to_string(),
                p.leader_epoch.to_string(),
                format!("{:?}", p.replicas),
                format!("{:?}", p.in_sync),
                offset_cell(starts.get(&p.index)),
                offset_cell(ends.get(&p.index)),
                if p.error_code == 0 {
                    String::new()
                } else {
                    describe_error(p.error_code, None)
                },
            ]
        })
        .collect();
    print_table(
        &[
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "IN-SYNC",
            "LOG-START",
            "HIGH-WATERMARK",
            "ERROR",
        ],
        &rows,
    );
    println!();
    print_configs(cluster, name)?;
    Ok(Outcome::Success)
}

fn print_configs(cluster: &mut Cluster, name: &str) -> CliResult<()> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TYPE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configuration_keys(None)]);
    let response = cluster.any().call(&request)?;
    let Some(result) = response.results.first() else {
        return fail(format!("DescribeConfigs {name}: empty answer"));
    };
    check_error(
        result.error_code,
        result.error_message.as_ref(),
        &format!("configs of {name}"),
    )?;
    let mut rows: Vec<Vec<String>> = result
        .configs
        .iter()
        .map(|c| {
            let value = if c.is_sensitive {
                "(sensitive)".to_string()
            } else {
                c.value
                    .as_ref()
                    .map_or_else(|| "(null)".to_string(), ToString::to_string)
            };
            vec![
                c.name.to_string(),
                value,
                config_source_name(c.config_source).to_string(),
            ]
        })
        .collect();
    rows.sort();
    print_table(&["CONFIG", "VALUE", "SOURCE"], &rows);
    Ok(())
}

fn config_source_name(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        _ => "UNKNOWN",
    }
}

fn alter_config(
    cluster: &mut Cluster,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
) -> CliResult<Outcome> {
    if set.is_empty() && delete.is_empty() {
        return fail("alter-config needs at least one --set key=value or --delete key");
    }
    let mut configs: Vec<AlterableConfig> = set
        .iter()
        .map(|(key, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(key.clone()))
                .with_config_operation(CONFIG_OPERATION_SET)
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    configs.extend(delete.iter().map(|key| {
        AlterableConfig::default()
            .with_name(StrBytes::from_string(key.clone()))
            .with_config_operation(CONFIG_OPERATION_DELETE)
            .with_value(None)
    }));
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TYPE_TOPIC)
            .with_resource_name(StrBytes::from_string(name.to_string()))
            .with_configs(configs),
    ]);
    let response = cluster.any().call(&request)?;
    let Some(result) = response.responses.first() else {
        return fail(format!("IncrementalAlterConfigs {name}: empty answer"));
    };
    check_error(
        result.error_code,
        result.error_message.as_ref(),
        &format!("altering configs of {name}"),
    )?;
    for (key, value) in set {
        println!("{name}: set {key}={value}");
    }
    for key in delete {
        println!("{name}: deleted {key}");
    }
    Ok(Outcome::Success)
}

fn delete_topics(cluster: &mut Cluster, names: &[String]) -> CliResult<Outcome> {
    let timeout_ms = cluster.broker_timeout_ms();
    let connection = cluster.controller()?;
    let version = connection.version::<DeleteTopicsRequest>()?;
    let request = if version >= 6 {
        DeleteTopicsRequest::default().with_topics(
            names
                .iter()
                .map(|name| DeleteTopicState::default().with_name(Some(topic_name(name))))
                .collect(),
        )
    } else {
        DeleteTopicsRequest::default()
            .with_topic_names(names.iter().map(|n| topic_name(n)).collect())
    }
    .with_timeout_ms(timeout_ms);
    let response = connection.call_at(&request, version)?;
    let mut failures = 0;
    for result in &response.responses {
        let name = result
            .name
            .as_ref()
            .map_or_else(|| result.topic_id.to_string(), |n| n.0.to_string());
        if result.error_code == 0 {
            println!("deleted {name}");
        } else {
            failures += 1;
            eprintln!(
                "topic {name}: {}",
                describe_error(result.error_code, result.error_message.as_ref())
            );
        }
    }
    Ok(Outcome::from_failures(failures))
}
