//! The broker's start-up configuration, resolved from the settings once in `main` and
//! shared read-only by every shard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cluster_config::ClusterConfig;
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
