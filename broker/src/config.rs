//! The broker's start-up configuration, resolved from the settings once in `main` and
//! shared read-only by every shard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringfeed_replication::voters::{NodeId, QuorumVoters};

use crate::limits::Limits;
use crate::settings::Effective;
use crate::topic_config::TopicConfig;

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The address every shard's `SO_REUSEPORT` listener binds (port 0 already resolved).
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to (Metadata, `DescribeCluster`).
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    /// CPU of each shard, by shard index; its length is the shard count.
    pub shard_cpus: Vec<usize>,
    /// Busy-poll this long before an idle shard parks in the kernel (None: park at once).
    pub spin_before_park: Option<Duration>,
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic or a `CreateTopics` request with -1.
    pub default_partitions: i32,
    pub limits: Limits,
    /// The HTTP admin listener (metrics, health, log level), if enabled.
    pub admin_listen: Option<SocketAddr>,
    /// The configuration of a topic that overrides nothing (the broker's `log.*` settings).
    pub topic_defaults: TopicConfig,
    /// Every setting with its effective value and source (`DescribeConfigs` reports them).
    pub settings: Arc<Effective>,
    /// Who this broker is in its cluster (a one-node cluster unless voters are given).
    pub cluster: ClusterConfig,
}

impl BrokerConfig {
    pub fn shard_count(&self) -> usize {
        self.shard_cpus.len()
    }
}

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
}

impl ClusterConfig {
    /// A one-node cluster: this broker is its only voter and the only replica of everything.
    pub fn one_node(node_id: NodeId) -> Self {
        Self {
            node_id,
            voters: QuorumVoters::default(),
            default_replication_factor: 1,
            replica_lag_time_max: Duration::from_secs(30),
        }
    }

    /// Brokers in the cluster. Until replication lands (issue 12) that is always one, and
    /// `validate` refuses settings that name others.
    pub fn broker_count(&self) -> usize {
        self.voters.len().max(1)
    }

    /// Checks the settings against each other: this broker must be one of the voters it is
    /// given, and a list naming other brokers is refused while replication is being built,
    /// rather than started as a cluster that would not replicate.
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
        if self.voters.len() > 1 {
            return Err(format!(
                "controller.quorum.voters names {} brokers, but replication across brokers is \
                 not available yet (docs/REPLICATION.md, issue 12); leave it empty or name only \
                 this broker",
                self.voters.len()
            ));
        }
        Ok(())
    }
}
