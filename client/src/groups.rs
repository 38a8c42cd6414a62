//! Typed consumer-group calls on a [`Connection`] to the group's coordinator (or, for
//! `ListGroups`, to each broker): offsets (`OffsetCommit`, `OffsetFetch`), the group's
//! membership (`JoinGroup`, `SyncGroup`, `Heartbeat`, `LeaveGroup`) and its administration
//! (`ListGroups`, `DescribeGroups`, `DeleteGroups`). Each builds its request for the version
//! negotiated with the broker; an error code becomes an [`Error`] of kind `Broker(code)`
//! (see [`Error::broker_code`]), per partition where Kafka answers per partition.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DescribeGroupsRequest, HeartbeatRequest, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;

use crate::cluster::{group_id, topic_name};
use crate::connection::Connection;
use crate::error::{check_error, describe_error, Error, ErrorKind, Result};

/// One group of a `ListGroups` answer.
#[derive(Clone, Debug)]
pub struct ListedGroup {
    pub group: String,
    /// Empty when the broker's version does not report states.
    pub state: String,
    pub protocol_type: String,
}

/// What a member asks of `JoinGroup`.
#[derive(Clone, Debug)]
pub struct JoinGroup<'a> {
    pub group: &'a str,
    /// Empty on a first join.
    pub member_id: &'a str,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: &'static str,
    /// (protocol name, member metadata), in order of preference.
    pub protocols: &'a [(&'static str, Bytes)],
}

/// The answer to `JoinGroup`: its error code is left to the caller, because two of them
/// carry what the caller needs next (KIP-394's `MEMBER_ID_REQUIRED` hands out the member
/// id to join with; a rebalance in progress means join again).
pub type Joined = JoinGroupResponse;

fn item_error(code: i16, message: Option<&StrBytes>) -> Error {
    Error::new(ErrorKind::Broker(code), describe_error(code, message))
}

fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// The group's error code and, per partition, (topic, partition, offset, error code).
type OffsetFetchAnswer = (i16, Vec<(String, i32, i64, i16)>);

impl Connection {
    /// Commits `offsets` of `topic` for `group`. `generation` -1 and an empty member id
    /// commit as an admin, which Kafka accepts only while the group has no members. Per
    /// partition: committed, or the error it got.
    pub fn commit_offsets(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<Vec<(i32, Result<()>)>> {
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member_id))
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
        let response = self.call(&request)?;
        Ok(response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| {
                let outcome = match p.error_code {
                    0 => Ok(()),
                    code => Err(item_error(code, None)),
                };
                (p.partition_index, outcome)
            })
            .collect())
    }

    /// The group's committed offsets: of `topics` (name, partitions), or of every topic when
    /// `None`. Partitions without a commit are left out; any error code is an error.
    pub fn fetch_committed(
        &mut self,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        let version = self.version::<OffsetFetchRequest>()?;
        let (group_error, answers) = if version >= 8 {
            self.offset_fetch_by_groups(version, group, topics)?
        } else {
            self.offset_fetch_single_group(version, group, topics)?
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

    /// `OffsetFetch` v8+, which asks for a list of groups.
    fn offset_fetch_by_groups(
        &mut self,
        version: i16,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<OffsetFetchAnswer> {
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
        let response = self.call_at(&request, version)?;
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
        &mut self,
        version: i16,
        group: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<OffsetFetchAnswer> {
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
        let response = self.call_at(&request, version)?;
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

    /// `JoinGroup`, holding the read timeout open for `rebalance_timeout` plus `margin`:
    /// the coordinator answers once every member rejoined or the rebalance timeout passed.
    pub fn join_group(&mut self, join: &JoinGroup<'_>, margin: Duration) -> Result<Joined> {
        let request = JoinGroupRequest::default()
            .with_group_id(group_id(join.group))
            .with_session_timeout_ms(millis(join.session_timeout))
            .with_rebalance_timeout_ms(millis(join.rebalance_timeout))
            .with_member_id(str_bytes(join.member_id))
            .with_protocol_type(StrBytes::from_static_str(join.protocol_type))
            .with_protocols(
                join.protocols
                    .iter()
                    .map(|(name, metadata)| {
                        JoinGroupRequestProtocol::default()
                            .with_name(StrBytes::from_static_str(name))
                            .with_metadata(metadata.clone())
                    })
                    .collect(),
            );
        self.call_held(&request, join.rebalance_timeout + margin)
    }

    /// `SyncGroup` for `generation`: the leader hands out `assignments` (member id,
    /// assignment), the others none. Returns this member's assignment; held like
    /// [`Connection::join_group`].
    pub fn sync_group(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        protocol: (&'static str, &'static str),
        assignments: Vec<(String, Bytes)>,
        held_for: Duration,
    ) -> Result<Bytes> {
        let (protocol_type, protocol_name) = protocol;
        let request = SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id))
            .with_protocol_type(Some(StrBytes::from_static_str(protocol_type)))
            .with_protocol_name(Some(StrBytes::from_static_str(protocol_name)))
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(member, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(StrBytes::from_string(member))
                            .with_assignment(assignment)
                    })
                    .collect(),
            );
        let response = self.call_held(&request, held_for)?;
        match response.error_code {
            0 => Ok(response.assignment),
            code => Err(item_error(code, None)),
        }
    }

    /// `Heartbeat` for `generation`.
    pub fn heartbeat(&mut self, group: &str, generation: i32, member_id: &str) -> Result<()> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(generation)
            .with_member_id(str_bytes(member_id));
        let response = self.call(&request)?;
        match response.error_code {
            0 => Ok(()),
            code => Err(item_error(code, None)),
        }
    }

    /// `LeaveGroup` for one member (v3+ takes a list of members, older versions one id).
    pub fn leave_group(&mut self, group: &str, member_id: &str) -> Result<()> {
        let version = self.version::<LeaveGroupRequest>()?;
        let member_id = str_bytes(member_id);
        let request = if version >= 3 {
            LeaveGroupRequest::default()
                .with_members(vec![MemberIdentity::default().with_member_id(member_id)])
        } else {
            LeaveGroupRequest::default().with_member_id(member_id)
        }
        .with_group_id(group_id(group));
        let response = self.call_at(&request, version)?;
        check_error(response.error_code, None, &format!("leaving group {group}"))
    }

    /// The groups this broker coordinates (`ListGroups`).
    pub fn list_groups(&mut self) -> Result<Vec<ListedGroup>> {
        let response = self.call(&ListGroupsRequest::default())?;
        check_error(response.error_code, None, "ListGroups")?;
        Ok(response
            .groups
            .into_iter()
            .map(|group| ListedGroup {
                group: group.group_id.0.to_string(),
                state: group.group_state.to_string(),
                protocol_type: group.protocol_type.to_string(),
            })
            .collect())
    }

    /// `DescribeGroups` for one group; an unknown group is described as `Dead`, as versions
    /// before 6 do.
    pub fn describe_group(&mut self, group: &str) -> Result<DescribedGroup> {
        let request = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
        let response = self.call(&request)?;
        let Some(mut described) = response.groups.into_iter().next() else {
            return Err(Error::failed(format!(
                "DescribeGroups {group}: empty answer"
            )));
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

    /// `DeleteGroups` for one group.
    pub fn delete_group(&mut self, group: &str) -> Result<()> {
        let request = DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]);
        let response = self.call(&request)?;
        match response.results.first().map_or(0, |r| r.error_code) {
            0 => Ok(()),
            code => Err(item_error(code, None)),
        }
    }

    /// A call the broker may hold up to `held_for`: the read timeout is lengthened for it
    /// and put back after, whatever the outcome.
    fn call_held<R: kafka_protocol::protocol::Request>(
        &mut self,
        request: &R,
        held_for: Duration,
    ) -> Result<R::Response> {
        let timeout = self.timeout();
        self.set_read_timeout(held_for)?;
        let response = self.call(request);
        self.set_read_timeout(timeout)?;
        response
    }
}
