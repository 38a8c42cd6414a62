//! What a shard asks of the controller ([`ControllerCall`]) and what it gets back, with the
//! rules the changes follow ([`PlacementRules`]): the vocabulary shared by the controller
//! (the parent module) and its pure change functions (`changes`).

use uuid::Uuid;

use crate::error_codes as codes;
use crate::limits::Limits;
use crate::metadata::TopicPartition;
use crate::topic_config::TopicConfig;

#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    /// -1 asks for the broker default.
    pub partitions: i32,
    /// -1 asks for `default.replication.factor`; at most the live brokers.
    pub replication_factor: i16,
    /// Replica lists given by the client per partition (empty: let the broker place).
    pub manual_assignment: Vec<Vec<i32>>,
    pub configs: Vec<(String, Option<String>)>,
}

/// A `CreatePartitions` entry: grow `name` to `total` partitions.
#[derive(Debug, Clone)]
pub struct NewPartitions {
    pub name: String,
    pub total: i32,
    /// Replica lists of the new partitions given by the client (empty: let the broker place).
    pub assignment: Vec<Vec<i32>>,
}

/// An `AlterPartitionReassignments` entry: move `topic`/`partition` to `replicas` (first =
/// preferred leader), or cancel its move (None).
#[derive(Debug, Clone)]
pub struct PartitionReassignment {
    pub topic: String,
    pub partition: i32,
    pub replicas: Option<Vec<i32>>,
}

#[derive(Debug, Clone)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

#[derive(Debug, Clone)]
pub enum ConfigOperation {
    Set(String),
    Delete,
}

#[derive(Debug, Clone)]
pub struct ConfigChange {
    pub topic: String,
    /// `AlterConfigs` (non-incremental) replaces every override with the given set.
    pub replace_all: bool,
    pub operations: Vec<(String, ConfigOperation)>,
}

#[derive(Debug, Clone)]
pub struct TopicOutcome {
    pub name: String,
    pub topic_id: Uuid,
    pub error_code: i16,
    pub message: Option<String>,
    pub partitions: i32,
    /// Replicas of each partition (-1 on failure).
    pub replication_factor: i16,
}

impl TopicOutcome {
    pub(super) fn ok(name: &str, topic_id: Uuid, partitions: i32) -> Self {
        Self {
            name: name.to_string(),
            topic_id,
            error_code: codes::NONE,
            message: None,
            partitions,
            replication_factor: 1,
        }
    }

    #[must_use]
    pub(super) fn with_replication_factor(mut self, replication_factor: i16) -> Self {
        self.replication_factor = replication_factor;
        self
    }

    pub(super) fn error(name: &str, error_code: i16, message: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            topic_id: Uuid::nil(),
            error_code,
            message: Some(message.into()),
            partitions: -1,
            replication_factor: -1,
        }
    }

    #[must_use]
    pub fn failed(mut self, error_code: i16, message: String) -> Self {
        if self.error_code == codes::NONE {
            self.error_code = error_code;
            self.message = Some(message);
        }
        self
    }
}

/// A topic change requested by any shard.
#[derive(Debug)]
pub enum ControllerCall {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        topics: Vec<TopicRef>,
    },
    CreatePartitions {
        topics: Vec<NewPartitions>,
        validate_only: bool,
    },
    AlterConfigs {
        changes: Vec<ConfigChange>,
        validate_only: bool,
    },
    /// One outcome per entry, in order: `name` the topic, `partitions` the partition index.
    AlterReassignments {
        partitions: Vec<PartitionReassignment>,
        /// v1's `allow_replication_factor_change` (true before v1): false refuses a list
        /// of another length than the partition's replicas.
        allow_replication_factor_change: bool,
    },
    /// The owning shard could not open or keep open this partition's log: every shard
    /// should report it offline in Metadata. Not persisted; a restart re-detects it.
    ReportOffline {
        tp: TopicPartition,
        topic_id: Uuid,
    },
}

/// One outcome per topic named in the call, in the call's order.
#[derive(Debug)]
pub struct ControllerReply {
    pub outcomes: Vec<TopicOutcome>,
}

/// Rules the pure change functions apply, fixed at start-up.
#[derive(Clone, Debug)]
pub struct PlacementRules {
    pub shard_count: usize,
    /// This broker's `node.id`: the replica of every partition in a one-node cluster.
    pub node_id: i32,
    /// Several voters: partitions are placed on registered live brokers (`placement`);
    /// false for a one-node broker, which places everything on itself as before.
    pub clustered: bool,
    /// `default.replication.factor`, for a `CreateTopics` request that asks for -1.
    pub default_replication_factor: i16,
    pub default_partitions: i32,
    pub limits: Limits,
    /// The configuration of a topic that overrides nothing (the broker's `log.*` settings).
    pub topic_defaults: TopicConfig,
}
