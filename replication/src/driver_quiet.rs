//! Quiet idle groups (docs/REPLICATION.md, "Quiet idle groups"; after `CockroachDB`'s
//! quiescence): a group with nothing to replicate ticks once in [`QUIET_TICK_EVERY`] ticks,
//! so 1,000 idle partitions do not heartbeat 5 times a second each.
//!
//! The rules, per group, as the driver applies them:
//! - **Calm** ([`is_calm`]), on the state raft-rs keeps:
//!   - a leader: its log is committed, applied and durable to its end, the end is of its
//!     term, nothing is pending (transfer, configuration change, read index), and every
//!     other voter and learner has matched its end, knows its commit, is replicating, and
//!     sits on a broker that is live;
//!   - a follower: its leader's broker is live, and its end, its commit and the commit of
//!     its leader's last heartbeat in this term are equal (and durable, and applied).
//! - **Quiet** after being calm for [`LEADER_CALM_TICKS`] (leader) or
//!   [`FOLLOWER_CALM_TICKS`] (follower) consecutive ticks. A follower settles first, so a
//!   quiet leader's slow heartbeats (every 2 s) reach followers whose election timeout is
//!   slow too (10-20 s).
//! - **Woken** by any message other than an unchanged heartbeat (follower) or heartbeat
//!   response (leader), by a proposal, transfer or configuration change, by an entry fetch,
//!   by a slow tick that finds it no longer calm, and by liveness: a follower when its
//!   leader's broker stops being live or restarts, a leader when a broker of one of its
//!   followers stops or starts being live or restarts.
//!
//! Without liveness (an empty live set, as a driver starts) no group with peers is ever
//! calm: the controller group, which is given none, never goes quiet.

use std::collections::BTreeMap;

use raft::eraftpb::{Message, MessageType};
use raft::{ProgressState, Raft, StateRole};

use super::{GroupStore, ELECTION_TICKS};

/// A quiet group ticks on every tenth tick: a quiet leader heartbeats every 2 s, a quiet
/// follower elects after 10-20 s without one (its leader's broker stopping being live wakes
/// it long before).
pub const QUIET_TICK_EVERY: u64 = 10;
/// Ticks a leader stays calm before it goes quiet: one election timeout, so its followers
/// (which settle after [`FOLLOWER_CALM_TICKS`]) are quiet before its heartbeats slow down.
pub const LEADER_CALM_TICKS: u32 = ELECTION_TICKS as u32;
/// Ticks a follower stays calm before it goes quiet: a few heartbeat intervals.
pub const FOLLOWER_CALM_TICKS: u32 = 3;

const _: () = assert!(FOLLOWER_CALM_TICKS < LEADER_CALM_TICKS);

/// The peer brokers heard from lately, each with the incarnation it was last heard in
/// (a restart within the liveness timeout shows as a new incarnation).
pub type LivePeers = BTreeMap<u64, u64>;

/// A group's quiet state, kept beside its raft node.
#[derive(Debug, Default)]
pub(crate) struct Rest {
    quiet: bool,
    calm_ticks: u32,
    /// (term, commit) of the last heartbeat of the leader of that term.
    heartbeat: Option<(u64, u64)>,
}

/// What a tick or a wake did to a group's quiet state (counted in `DriverStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    Quieted,
    Woken,
}

impl Rest {
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Back to ticking every tick, calm counted from zero.
    pub(crate) fn wake(&mut self) -> Change {
        self.calm_ticks = 0;
        if std::mem::take(&mut self.quiet) {
            Change::Woken
        } else {
            Change::None
        }
    }

    /// After the group ticked: counts its calm, and makes it quiet or wakes it.
    pub(crate) fn after_tick(&mut self, calm: bool, role: StateRole) -> Change {
        if !calm {
            return self.wake();
        }
        let needed = if role == StateRole::Leader {
            LEADER_CALM_TICKS
        } else {
            FOLLOWER_CALM_TICKS
        };
        self.calm_ticks = self.calm_ticks.saturating_add(1);
        if !self.quiet && self.calm_ticks >= needed {
            self.quiet = true;
            return Change::Quieted;
        }
        Change::None
    }

    /// Whether `message`, about to be stepped, leaves a quiet group quiet: a heartbeat of
    /// its leader that commits nothing new, or a heartbeat response that says the follower
    /// knows the leader's commit. Neither carries a read-index context.
    pub(crate) fn keeps_quiet<S: GroupStore>(raft: &Raft<S>, message: &Message) -> bool {
        if message.term != raft.term || !message.context.is_empty() {
            return false;
        }
        match (raft.state, message.get_msg_type()) {
            (StateRole::Follower, MessageType::MsgHeartbeat) => {
                message.from == raft.leader_id && message.commit == raft.raft_log.committed
            }
            (StateRole::Leader, MessageType::MsgHeartbeatResponse) => {
                message.commit == raft.raft_log.committed
            }
            _ => false,
        }
    }

    /// After a message was stepped; `heartbeat` is its (from, term, commit) if it was a
    /// heartbeat. One the group took from the leader of its term is remembered, for
    /// [`is_calm`].
    pub(crate) fn stepped_heartbeat<S: GroupStore>(
        &mut self,
        raft: &Raft<S>,
        heartbeat: Option<(u64, u64, u64)>,
    ) {
        if let Some((from, term, commit)) = heartbeat {
            if raft.state == StateRole::Follower && term == raft.term && from == raft.leader_id {
                self.heartbeat = Some((term, commit));
            }
        }
    }
}

/// Whether the group has nothing to do but heartbeat (module docs).
pub(crate) fn is_calm<S: GroupStore>(raft: &Raft<S>, rest: &Rest, live: &LivePeers) -> bool {
    let log = &raft.raft_log;
    let end = log.last_index();
    let settled_here = log.committed == end && log.applied == end && log.persisted == end;
    if !settled_here {
        return false;
    }
    match raft.state {
        StateRole::Leader => {
            log.term(end).ok() == Some(raft.term)
                && raft.lead_transferee.is_none()
                && raft.pending_conf_index <= log.applied
                && raft.pending_read_count() == 0
                && raft.prs().iter().all(|(&id, progress)| {
                    id == raft.id
                        || (progress.matched == end
                            && progress.committed_index == end
                            && progress.state == ProgressState::Replicate
                            && live.contains_key(&id))
                })
        }
        StateRole::Follower => {
            raft.leader_id != raft::INVALID_ID
                && live.contains_key(&raft.leader_id)
                && raft.pending_request_snapshot == raft::INVALID_INDEX
                && rest.heartbeat == Some((raft.term, end))
        }
        StateRole::Candidate | StateRole::PreCandidate => false,
    }
}

/// Whether a quiet group must wake because the live set changed: `changed` holds the
/// brokers that stopped or started being live or restarted.
pub(crate) fn woken_by_liveness<S: GroupStore>(
    raft: &Raft<S>,
    changed: &std::collections::BTreeSet<u64>,
) -> bool {
    match raft.state {
        StateRole::Leader => raft
            .prs()
            .iter()
            .any(|(id, _)| *id != raft.id && changed.contains(id)),
        _ => changed.contains(&raft.leader_id),
    }
}

/// The brokers whose liveness differs between `before` and `after` (gone, come, or heard in
/// another incarnation).
pub(crate) fn liveness_changes(
    before: &LivePeers,
    after: &LivePeers,
) -> std::collections::BTreeSet<u64> {
    let gone_or_restarted = before
        .iter()
        .filter(|(peer, incarnation)| after.get(peer) != Some(incarnation))
        .map(|(peer, _)| *peer);
    let come = after
        .keys()
        .filter(|peer| !before.contains_key(peer))
        .copied();
    gone_or_restarted.chain(come).collect()
}
