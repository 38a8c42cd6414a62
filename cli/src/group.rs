//! `ringfeed group list|describe|reset-offsets|delete`: `ListGroups` on every broker,
//! `DescribeGroups`, `OffsetFetch` and `ListOffsets` for lag, `OffsetCommit` outside any
//! generation for a reset (which Kafka only accepts for an empty group), `DeleteGroups`.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::describe_groups_response::DescribedGroup;

use super::client::{Cluster, Connection, TopicLayout, OFFSET_EARLIEST, OFFSET_LATEST};
use super::membership::decode_assignment_topics;
use super::{fail, print_table, CliResult, ConnectArgs, Outcome};

/// Caps how many partitions one describe or reset covers, so a hostile or huge answer does
/// not turn into unbounded `ListOffsets` traffic.
const PARTITIONS_MAX: usize = 100_000;

#[derive(clap::Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups of every broker.
    List,
    /// Show a group's state, members, assignments, committed offsets and lag.
    Describe { group: String },
    /// Set a group's committed offsets for a topic. The group must have no members.
    ResetOffsets {
        group: String,
        /// Topic whose offsets to reset.
        #[arg(long)]
        topic: String,
        /// Only these partitions (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        partition: Vec<i32>,
        /// Reset to each partition's log start.
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset"])]
        to_earliest: bool,
        /// Reset to each partition's log end.
        #[arg(long, conflicts_with = "to_offset")]
        to_latest: bool,
        /// Reset to this offset (clamped to the partition's range, as Kafka's tool does).
        #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
        to_offset: Option<i64>,
        /// Print the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete groups (each must have no members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

pub fn run(connect: &ConnectArgs, command: GroupCommand) -> CliResult<Outcome> {
    let mut cluster = super::client::connect(connect)?;
    match command {
        GroupCommand::List => Ok(list(&mut cluster)),
        GroupCommand::Describe { group } => describe(&mut cluster, &group),
        GroupCommand::ResetOffsets {
            group,
            topic,
            partition,
            to_earliest,
            to_latest,
            to_offset,
            dry_run,
        } => {
            let target = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => ResetTarget::Earliest,
                (_, true, _) => ResetTarget::Latest,
                (_, _, Some(offset)) => ResetTarget::Offset(offset),
                _ => {
                    return fail("reset-offsets needs --to-earliest, --to-latest or --to-offset N")
                }
            };
            reset_offsets(&mut cluster, &group, &topic, &partition, target, dry_run)
        }
        GroupCommand::Delete { groups } => Ok(delete(&mut cluster, &groups)),
    }
}

fn list(cluster: &mut Cluster) -> Outcome {
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut failures = 0;
    // Groups live on their coordinators: every broker is asked.
    for broker in cluster.broker_ids() {
        match cluster.broker(broker).and_then(Connection::list_groups) {
            Ok(listed) => {
                for group in listed {
                    let state = if group.state.is_empty() {
                        "-".to_string()
                    } else {
                        group.state
                    };
                    groups.insert(group.group, (state, group.protocol_type));
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("broker {broker}: {error}");
            }
        }
    }
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|(group, (state, protocol_type))| vec![group, state, protocol_type])
        .collect();
    print_table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows);
    Outcome::from_failures(failures)
}

/// One row of `group describe`: a partition the group has a commit for or a member owns.
struct LagRow {
    committed: Option<i64>,
    member: Option<(String, String, String)>,
}

fn describe(cluster: &mut Cluster, group: &str) -> CliResult<Outcome> {
    let coordinator = cluster.coordinator_address(group)?;
    let connection = cluster.connection_to(&coordinator)?;
    let described = connection.describe_group(group)?;
    let committed = connection.fetch_committed(group, None)?;
    if described.group_state.as_str() == "Dead" && committed.is_empty() {
        return fail(format!("group {group} does not exist"));
    }
    let rows = lag_rows(&described, &committed)?;
    if rows.len() > PARTITIONS_MAX {
        return fail(format!(
            "group {group} covers {} partitions, over the {PARTITIONS_MAX} this command shows",
            rows.len()
        ));
    }
    let log_ends = log_end_offsets(cluster, rows.keys())?;
    println!("GROUP        {group}");
    println!("COORDINATOR  {coordinator}");
    println!("STATE        {}", described.group_state);
    let protocol = if described.protocol_type.is_empty() {
        "-".to_string()
    } else {
        format!("{}/{}", described.protocol_type, described.protocol_data)
    };
    println!("PROTOCOL     {protocol}");
    println!("MEMBERS      {}", described.members.len());
    let mut total_lag = 0;
    let mut table = Vec::with_capacity(rows.len());
    for ((topic, partition), row) in &rows {
        let end = log_ends.get(&(topic.clone(), *partition)).copied();
        let lag = match (row.committed, end) {
            (Some(committed), Some(end)) => Some((end - committed).max(0)),
            _ => None,
        };
        total_lag += lag.unwrap_or(0);
        let (member, client, host) = row
            .member
            .clone()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let cell = |value: Option<i64>| value.map_or_else(|| "-".to_string(), |v| v.to_string());
        table.push(vec![
            topic.clone(),
            partition.to_string(),
            cell(row.committed),
            cell(end),
            cell(lag),
            member,
            client,
            host,
        ]);
    }
    println!("TOTAL-LAG    {total_lag}");
    println!();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "MEMBER-ID",
            "CLIENT-ID",
            "HOST",
        ],
        &table,
    );
    Ok(Outcome::Success)
}

/// Every partition the group has a commit for or a member owns.
fn lag_rows(
    described: &DescribedGroup,
    committed: &BTreeMap<(String, i32), i64>,
) -> CliResult<BTreeMap<(String, i32), LagRow>> {
    let mut rows: BTreeMap<(String, i32), LagRow> = committed
        .iter()
        .map(|(key, &offset)| {
            let row = LagRow {
                committed: Some(offset),
                member: None,
            };
            (key.clone(), row)
        })
        .collect();
    // Only the consumer protocol's assignments have a format we can read.
    if described.protocol_type.as_str() != "consumer" {
        return Ok(rows);
    }
    for member in &described.members {
        let owner = (
            member.member_id.to_string(),
            member.client_id.to_string(),
            member.client_host.to_string(),
        );
        for (topic, partitions) in decode_assignment_topics(&member.member_assignment)? {
            for partition in partitions {
                let row = rows.entry((topic.clone(), partition)).or_insert(LagRow {
                    committed: None,
                    member: None,
                });
                row.member = Some(owner.clone());
            }
        }
    }
    Ok(rows)
}

/// Log-end offsets of the given partitions; partitions whose topic or leader cannot be
/// reached are left out (shown as "-").
fn log_end_offsets<'a>(
    cluster: &mut Cluster,
    partitions: impl Iterator<Item = &'a (String, i32)>,
) -> CliResult<BTreeMap<(String, i32), i64>> {
    let mut by_topic: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic
            .entry(topic.clone())
            .or_default()
            .insert(*partition);
    }
    let mut ends = BTreeMap::new();
    for (topic, partitions) in by_topic {
        let layout = match cluster.topic_layout(&topic) {
            Ok(layout) => layout,
            Err(error) => {
                eprintln!("{error}");
                continue;
            }
        };
        let indexes: Vec<i32> = partitions.into_iter().collect();
        for (partition, offset) in cluster.list_offsets(&layout, &indexes, OFFSET_LATEST)? {
            match offset {
                Ok(offset) => {
                    ends.insert((topic.clone(), partition), offset);
                }
                Err(error) => eprintln!("{topic}/{partition}: log end: {error}"),
            }
        }
    }
    Ok(ends)
}

#[derive(Clone, Copy, Debug)]
enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
}

fn reset_offsets(
    cluster: &mut Cluster,
    group: &str,
    topic: &str,
    partitions: &[i32],
    target: ResetTarget,
    dry_run: bool,
) -> CliResult<Outcome> {
    let coordinator = cluster.coordinator_address(group)?;
    require_no_members(cluster.connection_to(&coordinator)?, group)?;
    let layout = cluster.topic_layout(topic)?;
    let indexes: Vec<i32> = if partitions.is_empty() {
        layout.partitions.iter().map(|p| p.index).collect()
    } else {
        partitions.to_vec()
    };
    let targets = reset_targets(cluster, &layout, &indexes, target)?;
    let connection = cluster.connection_to(&coordinator)?;
    let previous =
        connection.fetch_committed(group, Some(&[(topic.to_string(), indexes.clone())]))?;
    let outcomes: BTreeMap<i32, ringfeed_client::Result<()>> = if dry_run {
        BTreeMap::new()
    } else {
        connection
            .commit_offsets(group, -1, "", topic, &targets)?
            .into_iter()
            .collect()
    };
    let mut failures = 0;
    let mut rows = Vec::with_capacity(targets.len());
    for (&partition, &offset) in &targets {
        let status = match outcomes.get(&partition) {
            _ if dry_run => "dry run".to_string(),
            Some(Ok(())) => "ok".to_string(),
            Some(Err(error)) => {
                failures += 1;
                error.to_string()
            }
            None => {
                failures += 1;
                "missing from the answer".to_string()
            }
        };
        let before = previous
            .get(&(topic.to_string(), partition))
            .map_or_else(|| "-".to_string(), ToString::to_string);
        rows.push(vec![
            topic.to_string(),
            partition.to_string(),
            before,
            offset.to_string(),
            status,
        ]);
    }
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "PREVIOUS-OFFSET",
            "NEW-OFFSET",
            "STATUS",
        ],
        &rows,
    );
    Ok(Outcome::from_failures(failures))
}

/// Kafka accepts an admin commit only for a group without members; say so up front.
fn require_no_members(connection: &mut Connection, group: &str) -> CliResult<()> {
    let described = connection.describe_group(group)?;
    let state = described.group_state.as_str();
    if matches!(state, "Empty" | "Dead") {
        return Ok(());
    }
    fail(format!(
        "group {group} is {state} with {} member(s): stop its consumers first (Kafka resets \
         only the offsets of a group without members)",
        described.members.len()
    ))
}

/// The offset each partition is reset to; `--to-offset` clamped into the partition's range.
fn reset_targets(
    cluster: &mut Cluster,
    layout: &TopicLayout,
    indexes: &[i32],
    target: ResetTarget,
) -> CliResult<BTreeMap<i32, i64>> {
    let starts = cluster.list_offsets(layout, indexes, OFFSET_EARLIEST)?;
    let ends = cluster.list_offsets(layout, indexes, OFFSET_LATEST)?;
    let mut targets = BTreeMap::new();
    for &partition in indexes {
        let (Some(Ok(start)), Some(Ok(end))) = (starts.get(&partition), ends.get(&partition))
        else {
            let reason = [starts.get(&partition), ends.get(&partition)]
                .into_iter()
                .find_map(|r| r.and_then(|r| r.clone().err()))
                .unwrap_or_else(|| "no offsets".into());
            return fail(format!("{}/{partition}: {reason}", layout.name));
        };
        let offset = match target {
            ResetTarget::Earliest => *start,
            ResetTarget::Latest => *end,
            ResetTarget::Offset(offset) => offset.clamp(*start, *end),
        };
        targets.insert(partition, offset);
    }
    Ok(targets)
}

fn delete(cluster: &mut Cluster, groups: &[String]) -> Outcome {
    let mut failures = 0;
    for group in groups {
        match cluster
            .coordinator(group)
            .and_then(|connection| connection.delete_group(group))
        {
            Ok(()) => println!("deleted {group}"),
            Err(error) => {
                failures += 1;
                eprintln!("group {group}: {error}");
            }
        }
    }
    Outcome::from_failures(failures)
}
