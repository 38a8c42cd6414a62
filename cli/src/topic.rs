//! `ringfeed topic create|list|describe|alter-config|delete`: `CreateTopics`, `Metadata`,
//! `ListOffsets`, `DescribeConfigs`, `IncrementalAlterConfigs` and `DeleteTopics`.

use ringfeed_client::admin::{config_source_name, NewTopic};

use super::client::{Cluster, OFFSET_EARLIEST, OFFSET_LATEST};
use super::{describe_error, fail, parse_key_value, print_table, CliResult, ConnectArgs, Outcome};

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
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic {
            name: name.clone(),
            partitions,
            replication_factor,
            configs: configs.to_vec(),
        })
        .collect();
    let mut failures = 0;
    for created in cluster.create_topics(&topics)? {
        let name = &created.name;
        match created.outcome {
            Ok(Some((partitions, replication_factor))) => println!(
                "created {name} ({partitions} partitions, replication factor {replication_factor})"
            ),
            Ok(None) => println!("created {name}"),
            Err(error) => {
                failures += 1;
                eprintln!("topic {name}: {error}");
            }
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
    let mut rows: Vec<Vec<String>> = cluster
        .describe_topic_configs(name)?
        .into_iter()
        .map(|c| {
            let value = if c.is_sensitive {
                "(sensitive)".to_string()
            } else {
                c.value.unwrap_or_else(|| "(null)".to_string())
            };
            vec![c.name, value, config_source_name(c.source).to_string()]
        })
        .collect();
    rows.sort();
    print_table(&["CONFIG", "VALUE", "SOURCE"], &rows);
    Ok(())
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
    cluster.alter_topic_configs(name, set, delete)?;
    for (key, value) in set {
        println!("{name}: set {key}={value}");
    }
    for key in delete {
        println!("{name}: deleted {key}");
    }
    Ok(Outcome::Success)
}

fn delete_topics(cluster: &mut Cluster, names: &[String]) -> CliResult<Outcome> {
    let mut failures = 0;
    for (name, outcome) in cluster.delete_topics(names)? {
        match outcome {
            Ok(()) => println!("deleted {name}"),
            Err(error) => {
                failures += 1;
                eprintln!("topic {name}: {error}");
            }
        }
    }
    Ok(Outcome::from_failures(failures))
}
