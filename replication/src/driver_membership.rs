//! Membership changes of a group (issue 12's partition reassignment, Kafka's KIP-455 on
//! raft-rs `ConfChangeV2`): the leader moves a group from its voters to a target set in
//! steps, one configuration change in flight at a time.
//!
//! ```text
//! 1. add each new replica as a learner (one simple change per learner): it catches up
//!    from the leader's log without counting in any quorum
//! 2. once every new learner's matched index is within `lag_entries_max` of the leader's
//!    last index: one joint change (C_old,new), new learners become voters and removed
//!    voters leave, explicitly joint
//! 3. leave the joint configuration (C_new); a leader that is not in the target hands
//!    leadership to a caught-up voter of the target first (before 2 when one exists, else
//!    in the joint configuration), so it is never a leader outside its own configuration
//! ```
//!
//! Learners that are not in the target (a cancelled reassignment) are removed with one
//! simple change each; a target equal to the voters with no learners left is done.
//!
//! A replica that joins a group opens it with the configuration of step 1's end (the old
//! voters, the new replicas as learners: it cannot know the group's first configuration,
//! which no entry holds) and then reads the log from its start, including changes older
//! than that configuration. So each change carries, in its context, the configuration it
//! applies to and the one it makes, and a replica applies a change only when its own
//! configuration is the former: older changes, and the change that made the configuration
//! it opened with, are passed over. A replica that applied a change and restarts before its
//! new configuration was saved sees the change again and applies it again for the same
//! reason (and one that saved it passes it over).

use std::collections::BTreeSet;

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
};
use raft::protocompat::PbMessage;
use raft::{Changer, StateRole};

use super::{GroupStore, MultiRaft, ProposeError};

/// Where a group's move to a target membership stands after [`MultiRaft::advance_membership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipStep {
    /// This node does not lead the group (its leader drives the change).
    NotLeader,
    /// The voters are the target, no learner is left and the configuration is not joint.
    Done,
    /// A change is in flight, learners are catching up, or a leadership transfer is under way.
    Waiting,
    /// A configuration change was proposed now.
    Proposed,
    /// Leadership is being handed to this voter of the target (this node leaves the group).
    Transferring(u64),
}

/// A group's configuration as sets (sorted, so two equal configurations compare equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<u64>,
    pub voters_outgoing: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub learners_next: BTreeSet<u64>,
}

impl Membership {
    pub fn of(conf: &ConfState) -> Self {
        Self {
            voters: conf.voters.iter().copied().collect(),
            voters_outgoing: conf.voters_outgoing.iter().copied().collect(),
            learners: conf.learners.iter().copied().collect(),
            learners_next: conf.learners_next.iter().copied().collect(),
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }
}

/// Encodes the (before, after) pair a change carries in its context.
fn encode_context(before: &ConfState, after: &ConfState) -> Vec<u8> {
    let before = before.encode_to_vec();
    let mut context = Vec::with_capacity(4 + before.len() + after.encoded_len());
    context.extend_from_slice(&(before.len() as u32).to_le_bytes());
    context.extend_from_slice(&before);
    context.extend_from_slice(&after.encode_to_vec());
    context
}

/// The (before, after) pair of a change's context; `None` for a change without one (not
/// made by this module) or a damaged one.
pub(crate) fn decode_context(context: &[u8]) -> Option<(ConfState, ConfState)> {
    let length = u32::from_le_bytes(context.get(..4)?.try_into().ok()?) as usize;
    let before = context.get(4..4usize.checked_add(length)?)?;
    let after = context.get(4 + length..)?;
    Some((
        ConfState::decode(before).ok()?,
        ConfState::decode(after).ok()?,
    ))
}

/// What a committed configuration-change entry does to a replica whose configuration is
/// `current`: `Some(change)` to apply, `None` to pass over (see the module docs).
pub(crate) fn change_to_apply(entry: &Entry, current: &ConfState) -> Option<ConfChangeV2> {
    let change = ConfChangeV2::decode(entry.data.as_ref()).ok()?;
    match decode_context(&change.context) {
        Some((before, _)) if Membership::of(&before) == Membership::of(current) => Some(change),
        Some(_) => None,
        // Not one of ours (raft-rs's automatic leave of an auto-leave joint change, never
        // proposed here): applied where raft-rs accepts it.
        None => Some(change),
    }
}

#[cfg(test)]
pub(crate) fn tests_single(node_id: u64, change_type: ConfChangeType) -> ConfChangeSingle {
    single(node_id, change_type)
}

#[cfg(test)]
pub(crate) fn tests_context(before: &ConfState, after: &ConfState) -> Vec<u8> {
    encode_context(before, after)
}

fn single(node_id: u64, change_type: ConfChangeType) -> ConfChangeSingle {
    let mut single = ConfChangeSingle {
        node_id,
        ..ConfChangeSingle::default()
    };
    single.set_change_type(change_type);
    single
}

impl<S: GroupStore> MultiRaft<S> {
    /// The configuration of a hosted group as this replica applied it.
    pub fn membership(&self, group_id: u64) -> Option<Membership> {
        let raft = &self.groups.get(&group_id)?.node.raft;
        Some(Membership::of(&raft.prs().conf().to_conf_state()))
    }

    /// Takes the next step of moving `group_id`, which this node must lead, to `target`
    /// voters (module docs). A new learner counts as caught up when it was heard from lately
    /// (raft-rs `recent_active`) and its matched index is at most `lag_entries_max` below
    /// the leader's last index. Call again after every round
    /// until it returns [`MembershipStep::Done`]; each call proposes at most one change.
    pub fn advance_membership(
        &mut self,
        group_id: u64,
        target: &BTreeSet<u64>,
        lag_entries_max: u64,
    ) -> Result<MembershipStep, ProposeError> {
        let node_id = self.node_id;
        let group = self
            .groups
            .get_mut(&group_id)
            .ok_or(ProposeError::UnknownGroup(group_id))?;
        if group.fenced {
            return Err(ProposeError::Fenced(group_id));
        }
        if target.is_empty() {
            return Err(ProposeError::Dropped {
                group_id,
                reason: "an empty target membership".into(),
            });
        }
        let raft = &group.node.raft;
        if raft.state != StateRole::Leader {
            return Ok(MembershipStep::NotLeader);
        }
        if raft.has_pending_conf() || raft.lead_transferee.is_some() {
            return Ok(MembershipStep::Waiting);
        }
        let now = Membership::of(&raft.prs().conf().to_conf_state());
        let last_index = raft.raft_log.last_index();
        // Heard from lately (a learner that never answered has matched 0, which a short
        // log would otherwise count as within the lag) and within the lag.
        let caught_up = |id: u64| {
            raft.prs().get(id).is_some_and(|progress| {
                progress.recent_active
                    && progress.matched > 0
                    && progress.matched.saturating_add(lag_entries_max) >= last_index
            })
        };
        // The caught-up voter of the target this leader hands over to, when it leaves.
        let successor = |voters: &BTreeSet<u64>| {
            voters
                .iter()
                .copied()
                .filter(|id| target.contains(id) && *id != node_id && caught_up(*id))
                .max_by_key(|id| raft.prs().get(*id).map_or(0, |progress| progress.matched))
        };
        let (changes, transition) = if now.is_joint() {
            if !target.contains(&node_id) {
                let to = successor(&now.voters);
                return Ok(self.hand_over(group_id, to));
            }
            (Vec::new(), ConfChangeTransition::Auto)
        } else {
            let stray: Vec<u64> = now.learners.difference(target).copied().collect();
            let adding: Vec<u64> = target.difference(&now.voters).copied().collect();
            let removing: Vec<u64> = now.voters.difference(target).copied().collect();
            if let Some(&learner) = stray.first() {
                (
                    vec![single(learner, ConfChangeType::RemoveNode)],
                    ConfChangeTransition::Auto,
                )
            } else if let Some(&new) = adding.iter().find(|id| !now.learners.contains(id)) {
                (
                    vec![single(new, ConfChangeType::AddLearnerNode)],
                    ConfChangeTransition::Auto,
                )
            } else if adding.is_empty() && removing.is_empty() {
                return Ok(MembershipStep::Done);
            } else if !adding.iter().all(|id| caught_up(*id)) {
                return Ok(MembershipStep::Waiting);
            } else if let Some(to) = successor(&now.voters).filter(|_| removing.contains(&node_id))
            {
                return Ok(self.hand_over(group_id, Some(to)));
            } else {
                let changes = adding
                    .iter()
                    .map(|id| single(*id, ConfChangeType::AddNode))
                    .chain(
                        removing
                            .iter()
                            .map(|id| single(*id, ConfChangeType::RemoveNode)),
                    )
                    .collect();
                (changes, ConfChangeTransition::Explicit)
            }
        };
        self.propose_change(group_id, changes, transition)
    }

    fn hand_over(&mut self, group_id: u64, successor: Option<u64>) -> MembershipStep {
        match successor {
            Some(to) if self.transfer_leader(group_id, to) => MembershipStep::Transferring(to),
            _ => MembershipStep::Waiting,
        }
    }

    /// Proposes one change with its (before, after) context.
    fn propose_change(
        &mut self,
        group_id: u64,
        changes: Vec<ConfChangeSingle>,
        transition: ConfChangeTransition,
    ) -> Result<MembershipStep, ProposeError> {
        let group = self
            .groups
            .get_mut(&group_id)
            .expect("checked by the caller");
        let mut change = ConfChangeV2::default();
        change.set_transition(transition);
        change.changes = changes;
        let tracker = group.node.raft.prs();
        let before = tracker.conf().to_conf_state();
        let mut making = Changer::new(tracker);
        let made = if change.leave_joint() {
            making.leave_joint()
        } else if let Some(auto_leave) = change.enter_joint() {
            making.enter_joint(auto_leave, &change.changes)
        } else {
            making.simple(&change.changes)
        };
        let after = made
            .map_err(|error| ProposeError::Dropped {
                group_id,
                reason: error.to_string(),
            })?
            .0
            .to_conf_state();
        change.context = encode_context(&before, &after);
        group
            .node
            .propose_conf_change(Vec::new(), change)
            .map_err(|error| ProposeError::Dropped {
                group_id,
                reason: error.to_string(),
            })?;
        self.stats.count_rest(group.rest.wake());
        self.maybe_ready.insert(group_id);
        Ok(MembershipStep::Proposed)
    }
}
