//! The broker's start-up configuration, resolved from the settings once in `main` and
//! shared read-only by every shard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::cluster_config::ClusterConfig;
use crate::limits::Limits;
use crate::listeners::SecurityProtocol;
use crate::settings::Effective;
use crate::topic_config::TopicConfig;

/// One Kafka listener as bound: every shard accepts on it (`SO_REUSEPORT`).
#[derive(Clone, Debug)]
pub struct BoundListener {
    /// Kafka's listener name (`PLAINTEXT`, `SSL`, or one mapped by
    /// `listener.security.protocol.map`).
    pub name: String,
    pub protocol: SecurityProtocol,
    /// Port 0 already resolved.
    pub address: SocketAddr,
    /// Host and port clients on this listener are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// The TLS configuration of an SSL or `SASL_SSL` listener, built once at start-up and
    /// shared immutable by every shard.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// SASL as the SASL listeners serve it.
#[derive(Clone, Debug, Default)]
pub struct SaslConfig {
    /// `sasl.enabled.mechanisms`, validated, in the order given.
    pub mechanisms: Vec<String>,
    /// As read at start-up: each shard's first `CredentialView`; shard 0 then publishes its
    /// store's, and each `AlterUserScramCredentials` a new one (`sasl::store`).
    pub credentials: Arc<crate::sasl::Credentials>,
    /// `connections.max.reauth.ms`: how long a login lasts before the client must
    /// re-authenticate (KIP-368, `sasl::session`); `None` (0) for ever.
    pub session_lifetime: Option<std::time::Duration>,
}

/// Parses `super.users` (`User:a;User:b`, Kafka's separator).
pub fn parse_super_users(value: &str) -> Vec<String> {
    value
        .split(';')
        .map(str::trim)
        .filter(|principal| !principal.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// The first listener's address (what the start-up line names; `listeners` has them all).
    pub listen: SocketAddr,
    /// Host and port of the first listener clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Every Kafka listener, in the order of the `listeners` setting; a connection knows
    /// the index of the one it came in on (`RequestContext::listener`).
    pub listeners: Vec<BoundListener>,
    /// What the SASL listeners check logins against.
    pub sasl: SaslConfig,
    /// `super.users`: principals allowed everything (kept for ACL enforcement).
    pub super_users: Vec<String>,
    /// Mutual TLS on the broker-to-broker port (`controller.listener.names` mapped to
    /// `SSL`), built once at start-up; None for a plaintext port or a one-node broker.
    pub peer_tls: Option<Arc<crate::cluster::peer_tls::PeerTls>>,
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
    /// The `ssl.*` settings (for certificate reload) and the principal mapping.
    pub tls: crate::tls::TlsConfig,
}

impl BrokerConfig {
    pub fn shard_count(&self) -> usize {
        self.shard_cpus.len()
    }

    /// The address advertised on listener `index` (Kafka's rule: Metadata answers with the
    /// advertised address of the listener the request came in on). An index without a
    /// listener (simulations) gets the first listener's.
    pub fn advertised(&self, index: usize) -> (&str, i32) {
        self.listeners.get(index).map_or(
            (self.advertised_host.as_str(), self.advertised_port),
            |listener| (listener.advertised_host.as_str(), listener.advertised_port),
        )
    }
}
