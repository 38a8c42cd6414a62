//! The cluster settings of one broker (`node.id`, `controller.quorum.voters`, ...), apart
//! from `config` so that the settings module can build them without an import cycle.

use std::time::Duration;

use ringfeed_replication::voters::{NodeId, QuorumVoters};

/// The cluster settings (docs/REPLICATION.md): this broker's id and the controller quorum.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `node.id`: what clients see as this broker's id; the shards are internal.
    pub node_id: NodeId,
    /// `controller.quorum.voters`; empty for a one-node cluster.
    pub voters: QuorumVoters,
    /// `default.replication.factor`: replicas of a topic created with -1.
    pub default_replication_factor: i16,
    /// `replica.lag.time.max.ms`: how long a follower may lag before it leaves the ISR.
    pub replica_lag_time_max: Duration,
    /// `ringfeed.cluster.preview.enable`: start with voters naming other brokers although
    /// the cluster is not complete (docs/REPLICATION.md, Status). Off by default, so that
    /// nobody runs an unfinished cluster without having asked for it.
    pub preview: bool,
    /// `broker.session.timeout.ms`: a broker not heard from for this long is fenced.
    pub session_timeout: Duration,
    /// `broker.rack`, if set.
    pub rack: Option<String>,
    /// `controlled.shutdown.enable`: hand leadership over before shutting down.
    pub controlled_shutdown: bool,
    /// `auto.leader.rebalance.enable`, `leader.imbalance.check.interval.seconds`,
    /// `leader.imbalance.per.broker.percentage` (`leader_moves`).
    pub leader_balancing: LeaderBalancing,
}

/// When leadership moves back to preferred replicas (`leader_moves`, Kafka's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderBalancing {
    pub enabled: bool,
    pub check_interval: Duration,
    pub per_broker_percentage: u32,
}

impl Default for LeaderBalancing {
    fn default() -> Self {
        Self {
            enabled: true,
            check_interval: Duration::from_secs(300),
            per_broker_percentage: 10,
        }
    }
}

impl ClusterConfig {
    /// A one-node cluster: this broker is its only voter and the only replica of everything.
    pub fn one_node(node_id: NodeId) -> Self {
        Self {
            node_id,
            voters: QuorumVoters::default(),
            default_replication_factor: 1,
            replica_lag_time_max: Duration::from_secs(30),
            preview: false,
            session_timeout: Duration::from_secs(9),
            rack: None,
            controlled_shutdown: true,
            leader_balancing: LeaderBalancing::default(),
        }
    }

    /// Brokers in the cluster: the voters (every broker is a voter for now), at least one.
    pub fn broker_count(&self) -> usize {
        self.voters.len().max(1)
    }

    /// Checks the settings against each other: this broker must be one of the voters it is
    /// given (it finds its internal address there), and a list naming other brokers needs
    /// `ringfeed.cluster.preview.enable` while the cluster is a preview.
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Ok(());
        }
        if self.voters.get(self.node_id).is_none() {
            return Err(format!(
                "node.id {} is not among controller.quorum.voters ({}); a broker finds its own \
                 internal address there by its id",
                self.node_id, self.voters
            ));
        }
        if self.voters.len() > 1 && !self.preview {
            return Err(format!(
                "controller.quorum.voters names other brokers ({}), and the cluster is a \
                 preview: the controller and the partitions are replicated by Raft, and what is \
                 not built yet is listed in docs/REPLICATION.md, Status. Set \
                 ringfeed.cluster.preview.enable=true to run the cluster anyway",
                self.voters
            ));
        }
        Ok(())
    }
}
