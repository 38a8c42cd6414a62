//! `ringfeed group list|describe|reset-offsets|delete`: `ListGroups` on every broker,
//! `DescribeGroups`, `OffsetFetch` and `ListOffsets` for lag, `OffsetCommit` outside any
//! generation for a reset (which Kafka only accepts for an empty group), `DeleteGroups`.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;

use super::client::{
    group_id, topic_name, Cluster, Connection, TopicLayout, OFFSET_EARLIEST, OFFSET_LATEST,
};
use super::membership::decode_assignment_topics;
use super::{check_error, describe_error, fail, print_table, CliResult, ConnectArgs, Outcome};

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

/// Commits `offsets` of `topic` for `group`. `generation` -1 and an empty member id commit
/// as an admin, which Kafka accepts only while the group has no members. Returns each
/// partition's error code.
pub fn commit_offsets(
    connection: &mut Connection,
    group: &str,
    generation: i32,
    member_id: &str,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
) -> CliResult<Vec<(i32, i16)>> {
    let request = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member_id.to_string()))
        .with_retention_time_ms(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(&partition, &offset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(Some(StrBytes::default()))
                    })
                    .collect(),
            )]);
    let response = connection.call(&request)?;
    Ok(response
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition_index, p.error_code))
        .collect())
}

/// The group's committed offsets: of `topics` (name, partitions), or of every topic when
/// `None`. Partitions without a commit are left out.
pub fn fetch_committed(
    connection: &mut Connection,
    group: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> CliResult<BTreeMap<(String, i32), i64>> {
    let version = connection.version::<OffsetFetchRequest>()?;
    let (group_error, answers) = if version >= 8 {
        offset_fetch_by_groups(connection, version, group, topics)?
    } else {
        offset_fetch_single_group(connection, version, group, topics)?
    };
    check_error(
        group_error,
        None,
        &format!("committed offsets of group {group}"),
    )?;
    let mut committed = BTreeMap::new();
    for (topic, partition, offset, code) in answers {
        check_error(
            code,
            None,
            &format!("committed offset of {topic}/{partition}"),
        )?;
        // -1: no commit for this partition.
        if offset >= 0 {
            committed.insert((topic, partition), offset);
        }
    }
    Ok(committed)
}

/// The group's error code and, per partition, (topic, partition, offset, error code).
type OffsetFetchAnswer = (i16, Vec<(String, i32, i64, i16)>);

/// `OffsetFetch` v8+, which asks for a list of groups.
fn offset_fetch_by_groups(
    connection: &mut Connection,
    version: i16,
    group: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> CliResult<OffsetFetchAnswer> {
    let request_topics = topics.map(|topics| {
        topics
            .iter()
            .map(|(name, partitions)| {
                OffsetFetchRequestTopics::default()
                    .with_name(topic_name(name))
                    .with_partition_indexes(partitions.clone())
            })
            .collect()
    });
    let request =
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(group_id(group))
            .with_member_epoch(-1)
            .with_topics(request_topics)]);
    let response = connection.call_at(&request, version)?;
    let mut answers = Vec::new();
    for topic in response.groups.iter().flat_map(|g| &g.topics) {
        answers.extend(topic.partitions.iter().map(|p| {
            (
                topic.name.0.to_string(),
                p.partition_index,
                p.committed_offset,
                p.error_code,
            )
        }));
    }
    let group_error = response
        .groups
        .iter()
        .map(|g| g.error_code)
        .find(|&c| c != 0);
    Ok((group_error.unwrap_or(0), answers))
}

/// `OffsetFetch` v1-v7, for one group.
fn offset_fetch_single_group(
    connection: &mut Connection,
    version: i16,
    group: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> CliResult<OffsetFetchAnswer> {
    let request_topics = topics.map(|topics| {
        topics
            .iter()
            .map(|(name, partitions)| {
                OffsetFetchRequestTopic::default()
                    .with_name(topic_name(name))
                    .with_partition_indexes(partitions.clone())
            })
            .collect()
    });
    let request = OffsetFetchRequest::default()
        .with_group_id(group_id(group))
        .with_topics(request_topics);
    let response = connection.call_at(&request, version)?;
    let mut answers = Vec::new();
    for topic in &response.topics {
        answers.extend(topic.partitions.iter().map(|p| {
            (
                topic.name.0.to_string(),
                p.partition_index,
                p.committed_offset,
                p.error_code,
            )
        }));
    }
    Ok((response.error_code, answers))
}

fn list(cluster: &mut Cluster) -> Outcome {
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut failures = 0;
    // Groups live on their coordinators: every broker is asked.
    for broker in cluster.broker_ids() {
        let answer = cluster
            .broker(broker)
            .and_then(|c| c.call(&ListGroupsRequest::default()));
        match answer {
            Ok(response) if response.error_code == 0 => {
                for group in response.groups {
                    let state = if group.group_state.is_empty() {
                        "-".to_string()
                    } else {
                        group.group_state.to_string()
                    };
                    groups.insert(
                        group.group_id.0.to_string(),
                        (state, group.protocol_type.to_string()),
                    );
                }
            }
            Ok(response) => {
                failures += 1;
                eprintln!(
                    "broker {broker}: ListGroups: {}",
                    describe_error(response.error_code, None)
                );
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

fn describe_group(connection: &mut Connection, group: &str) -> CliResult<DescribedGroup> {
    let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let response = connection.call(&request)?;
    let Some(mut described) = response.groups.into_iter().next() else {
        return fail(format!("DescribeGroups {group}: empty answer"));
    };
    // DescribeGroups v6 reports an unknown group as an error; older versions as "Dead".
    if described.error_code == ResponseError::GroupIdNotFound.code() {
        described.error_code = 0;
        described.group_state = StrBytes::from_static_str("Dead");
    }
    check_error(
        described.error_code,
        described.error_message.as_ref(),
        &format!("group {group}"),
    )?;
    Ok(described)
}

/// One row of `group describe`: a partition the group has a commit for or a member owns.
struct LagRow {
    committed: Option<i64>,
    member: Option<(String, String, String)>,
}

fn describe(cluster: &mut Cluster, group: &str) -> CliResult<Outcome> {
    let coordinator = cluster.coordinator_address(group)?;
    let connection = cluster.connection_to(&coordinator)?;
    let described = describe_group(connection, group)?;
    let committed = fetch_committed(connection, group, None)?;
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
    let previous = fetch_committed(
        connection,
        group,
        Some(&[(topic.to_string(), indexes.clone())]),
    )?;
    let codes: BTreeMap<i32, i16> = if dry_run {
        BTreeMap::new()
    } else {
        commit_offsets(connection, group, -1, "", topic, &targets)?
            .into_iter()
            .collect()
    };
    let mut failures = 0;
    let mut rows = Vec::with_capacity(targets.len());
    for (&partition, &offset) in &targets {
        let status = match codes.get(&partition) {
            _ if dry_run => "dry run".to_string(),
            Some(0) => "ok".to_string(),
            Some(&code) => {
                failures += 1;
                describe_error(code, None)
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
    let described = describe_group(connection, group)?;
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
        let outcome = cluster.coordinator(group).and_then(|connection| {
            let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
            connection.call(&request)
        });
        match outcome {
            Ok(response) => {
                let code = response.results.first().map_or(0, |r| r.error_code);
                if code == 0 {
                    println!("deleted {group}");
                } else {
                    failures += 1;
                    eprintln!("group {group}: {}", describe_error(code, None));
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("group {group}: {error}");
            }
        }
    }
    Outcome::from_failures(failures)
}
