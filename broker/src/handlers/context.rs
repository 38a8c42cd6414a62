//! What a handler knows of its request (`RequestContext`) and may use of its shard. Each
//! handler names one of the shard contexts below in its
//! signature, and the dispatcher (`served_apis!` in `mod.rs`) builds that one from the
//! shard's services for the request: borrowed views, no reference counting per request.
//!
//! - [`TopicAdmin`]: the configuration, the metadata, and topic changes through the
//!   controller (`Metadata`, topic and config admin, `DescribeCluster`).
//! - [`GroupAccess`]: the configuration, the metadata, and work on group coordinators
//!   (the group APIs, `FindCoordinator`, `InitProducerId`).
//! - [`UserAdmin`]: the SCRAM credentials and client quotas, and their changes through
//!   shard 0 (`DescribeUserScramCredentials`, `AlterUserScramCredentials`,
//!   `DescribeClientQuotas`, `AlterClientQuotas`).
//! - [`PartitionAccess`]: the configuration, the metadata, partition calls, the fetch
//!   budget, the shutdown signal and the metrics (`Produce`, `Fetch`, `ListOffsets`,
//!   `DeleteRecords`).
//! - [`LeaderElection`]: the metadata, and leadership moves to preferred replicas through
//!   `leader_moves` (`ElectLeaders`).
//!
//! None reaches the partition table, the group coordinator, the controller or the disk
//! directly: those are other shards' as much as this one's, and are reached through typed
//! calls (`partition::*_on`, `groups::on_coordinator`, `ShardServices::controller_call`).

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::acl::model::{Operation, ResourceType, CLUSTER_RESOURCE_NAME};
use crate::acl::store::{self as acl_store, AclChange, AclChangeReply, AclSnapshot, AclView};
use crate::budgets::ByteBudget;
use crate::config::BrokerConfig;
use crate::controller::{ControllerCall, ControllerReply};
use crate::fetch_sessions::FetchSessionCache;
use crate::groups::{GroupAddress, GroupCoordinator};
use crate::metadata::{MetadataView, TopicMetadata};
use crate::metrics::ShardMetrics;
use crate::shard::{Router, ShardServices};
use crate::shutdown::ShutdownSignal;
use crate::storage::Clock;

/// What a handler knows about the request besides its body.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub peer: SocketAddr,
    /// The connection, unique in the process (the shard's id in the top 16 bits).
    pub connection_id: u64,
    /// The listener the request came in on (index into `BrokerConfig::listeners`).
    pub listener: usize,
    /// The authenticated principal (`User:name`), kept for ACL enforcement; `User:ANONYMOUS`
    /// when nobody authenticated.
    pub principal: Arc<str>,
    /// The request's place in its connection: 0, 1, 2, ... in arrival order.
    pub request_sequence: u64,
    /// The shard's ACLs when the request started (`ShardServices::acls`); `None` when
    /// authorization is off (`authorizer.class.name` empty): everything is allowed.
    pub acls: Option<Arc<AclSnapshot>>,
}

impl RequestContext {
    /// Whether ACLs are enforced: a handler skips taking its request apart by
    /// authorization when they are not (`authorize` would allow everything anyway).
    pub fn enforces_acls(&self) -> bool {
        self.acls.is_some()
    }

    /// May this request's principal, from its address, do `operation` to the resource
    /// `name` of `resource_type`? A lookup in the shard's own snapshot (`acl::authorizer`).
    pub fn authorize(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let Some(acls) = &self.acls else {
            return true;
        };
        self.with_host(|host| {
            acl_store::decide(
                Some(acls),
                &self.principal,
                host,
                operation,
                resource_type,
                name,
            )
        })
    }

    /// Runs `work` with the client's address as text, formatted on the stack: a check per
    /// topic or partition allocates nothing (an IPv6 address is at most 45 characters).
    fn with_host<R>(&self, work: impl FnOnce(&str) -> R) -> R {
        use std::io::Write;
        let mut buffer = [0_u8; 64];
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        if write!(cursor, "{}", self.peer.ip()).is_ok() {
            let length = usize::try_from(cursor.position()).unwrap_or(0);
            if let Ok(host) = std::str::from_utf8(&buffer[..length]) {
                return work(host);
            }
        }
        work(&self.peer.ip().to_string())
    }

    /// Of `candidates` (a bitfield of Kafka operation codes, `1 << code`), those this
    /// principal may do to the resource: `Metadata`'s and `DescribeGroups`' authorized
    /// operations.
    pub fn authorized_operations(
        &self,
        resource_type: ResourceType,
        name: &str,
        candidates: i32,
    ) -> i32 {
        Operation::ALL
            .iter()
            .filter(|operation| candidates & (1 << operation.code()) != 0)
            .filter(|operation| self.authorize(**operation, resource_type, name))
            .fold(0, |bits, operation| bits | 1 << operation.code())
    }

    /// Whether the principal may do `operation` to some resource of `resource_type`
    /// (Kafka's `authorizeByResourceType`, e.g. WRITE on any topic for idempotence).
    pub fn authorize_any(&self, operation: Operation, resource_type: ResourceType) -> bool {
        let Some(acls) = &self.acls else {
            return true;
        };
        self.with_host(|host| acls.allows_some(&self.principal, host, operation, resource_type))
    }

    /// `authorize` on the cluster resource (`kafka-cluster`).
    pub fn authorize_cluster(&self, operation: Operation) -> bool {
        self.authorize(operation, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
    }

    /// `authorize` on a topic.
    pub fn authorize_topic(&self, operation: Operation, topic: &str) -> bool {
        self.authorize(operation, ResourceType::Topic, topic)
    }

    /// `authorize` on a group.
    pub fn authorize_group(&self, operation: Operation, group: &str) -> bool {
        self.authorize(operation, ResourceType::Group, group)
    }
}

/// Shorthand for the codec's string type.
pub fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// A topic's name for a request or response, sharing the metadata's bytes (no copy).
pub fn topic_name(topic: &TopicMetadata) -> TopicName {
    // The bytes were made from a `str`; the check costs a scan of a short name, not an
    // allocation, and keeps this free of `unsafe`.
    let name = StrBytes::from_utf8(topic.name_bytes.clone())
        .unwrap_or_else(|_| StrBytes::from_string(topic.name.to_string()));
    TopicName(name)
}

/// A context a handler takes, built from the shard's services by the dispatcher.
pub trait HandlerContext<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self;
}

/// Nothing of the shard (`ApiVersions` answers from the registry alone).
impl HandlerContext<'_> for () {
    fn of(_: &Rc<ShardServices>) -> Self {}
}

/// See the module docs.
pub struct TopicAdmin<'a> {
    pub config: &'a Arc<BrokerConfig>,
    pub metadata: &'a MetadataView,
    services: &'a Rc<ShardServices>,
}

impl<'a> HandlerContext<'a> for TopicAdmin<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self {
        Self {
            config: &services.config,
            metadata: &services.metadata,
            services,
        }
    }
}

impl TopicAdmin<'_> {
    /// See `ShardServices::acl_change`.
    pub async fn acl_change(&self, change: AclChange) -> Option<AclChangeReply> {
        self.services.acl_change(change).await
    }

    /// This shard's ACL state (`ShardServices::acls`).
    pub fn acls(&self) -> &AclView {
        &self.services.acls
    }

    /// See `ShardServices::controller_call`.
    pub async fn controller_call(&self, call: ControllerCall) -> Option<ControllerReply> {
        self.services.controller_call(call).await
    }
}

/// See the module docs.
pub struct UserAdmin<'a> {
    services: &'a Rc<ShardServices>,
}

impl<'a> HandlerContext<'a> for UserAdmin<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self {
        Self { services }
    }
}

impl UserAdmin<'_> {
    /// The SCRAM credentials this shard serves now (`ShardServices::credentials`).
    pub fn credentials(&self) -> Arc<crate::sasl::Credentials> {
        self.services.credentials.current()
    }

    /// The client quotas this shard enforces now (`ShardServices::quotas`).
    pub fn quotas(&self) -> Arc<crate::quotas::QuotaSet> {
        self.services.quotas.current()
    }

    /// See `ShardServices::alter_quotas`.
    pub async fn alter_quotas(
        &self,
        entries: Vec<crate::quotas::store::QuotaEntry>,
        validate_only: bool,
    ) -> Option<Vec<crate::quotas::store::EntryResult>> {
        self.services.alter_quotas(entries, validate_only).await
    }

    /// See `ShardServices::alter_credentials`.
    pub async fn alter_credentials(
        &self,
        alteration: crate::sasl::alteration::Alteration,
    ) -> Option<Vec<crate::sasl::alteration::UserResult>> {
        self.services.alter_credentials(alteration).await
    }
}

/// See the module docs.
pub struct GroupAccess<'a> {
    pub config: &'a Arc<BrokerConfig>,
    pub metadata: &'a MetadataView,
    /// For work on the coordinators of every shard (`groups::on_coordinator`).
    pub router: &'a Rc<Router>,
    /// Commit timestamps.
    pub clock: &'a Clock,
    services: &'a Rc<ShardServices>,
}

impl<'a> HandlerContext<'a> for GroupAccess<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self {
        Self {
            config: &services.config,
            metadata: &services.metadata,
            router: &services.router,
            clock: &services.clock,
            services,
        }
    }
}

impl GroupAccess<'_> {
    /// See `ShardServices::on_group_coordinator`.
    pub async fn on_group_coordinator<F, Fut, R>(&self, group: &str, work: F) -> Result<R, i16>
    where
        F: FnOnce(GroupCoordinator, GroupAddress) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        self.services.on_group_coordinator(group, work).await
    }

    /// See `ShardServices::locate_group`.
    pub async fn locate_group(&self, group: &str) -> Result<(i32, usize), i16> {
        self.services.locate_group(group).await
    }

    /// See `ShardServices::on_txn_coordinator`.
    pub async fn on_txn_coordinator<F, Fut, R>(&self, id: &str, work: F) -> Result<R, i16>
    where
        F: FnOnce(crate::transactions::TxnCoordinator, crate::transactions::TxnAddress) -> Fut
            + Send
            + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        self.services.on_txn_coordinator(id, work).await
    }

    /// See `ShardServices::txn_coordinator_broker`.
    pub async fn txn_coordinator_broker(&self, id: &str) -> Result<i32, i16> {
        self.services.txn_coordinator_broker(id).await
    }

    /// See `ShardServices::ask_txn_coordinator_about`.
    pub async fn ask_txn_coordinator_about(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        tp: &crate::metadata::TopicPartition,
    ) -> Option<i16> {
        self.services
            .ask_txn_coordinator_about(id, producer_id, epoch, tp)
            .await
    }

    /// See `ShardServices::coordinator_broker`.
    pub async fn coordinator_broker(&self, group: &str) -> Result<i32, i16> {
        self.services.coordinator_broker(group).await
    }
}

/// See the module docs.
pub struct LeaderElection<'a> {
    pub metadata: &'a MetadataView,
    services: &'a Rc<ShardServices>,
}

impl<'a> HandlerContext<'a> for LeaderElection<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self {
        Self {
            metadata: &services.metadata,
            services,
        }
    }
}

impl LeaderElection<'_> {
    /// See `leader_moves::elect_preferred`.
    pub async fn elect_preferred(
        &self,
        broker: i32,
        partitions: Vec<crate::metadata::TopicPartition>,
    ) {
        crate::leader_moves::elect_preferred(self.services, broker, partitions).await;
    }
}

/// See the module docs.
pub struct PartitionAccess<'a> {
    pub config: &'a Arc<BrokerConfig>,
    pub metadata: &'a MetadataView,
    pub router: &'a Rc<Router>,
    pub fetch_budget: &'a ByteBudget,
    pub shutdown: &'a ShutdownSignal,
    pub metrics: &'a ShardMetrics,
    /// The shard's incremental fetch sessions (Fetch only); never borrowed across an await.
    pub fetch_sessions: &'a RefCell<FetchSessionCache>,
    /// Deadlines and long-poll waits (`storage::Clock`: simulated in `simulation`).
    pub clock: &'a Clock,
}

impl<'a> HandlerContext<'a> for PartitionAccess<'a> {
    fn of(services: &'a Rc<ShardServices>) -> Self {
        Self {
            config: &services.config,
            metadata: &services.metadata,
            router: &services.router,
            fetch_budget: &services.budgets.fetch_bytes,
            shutdown: &services.shutdown,
            metrics: &services.metrics,
            fetch_sessions: &services.fetch_sessions,
            clock: &services.clock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_text_on_the_stack_is_the_address_as_displayed() {
        for peer in [
            "127.0.0.1:9092",
            "[::1]:9092",
            "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1",
            "[::ffff:10.1.2.3]:9092",
        ] {
            let context = RequestContext {
                api_key: ApiKey::Metadata,
                api_version: 12,
                correlation_id: 1,
                client_id: None,
                peer: peer.parse().unwrap(),
                connection_id: 0,
                listener: 0,
                principal: Arc::from("User:ANONYMOUS"),
                request_sequence: 0,
                acls: None,
            };
            let expected = context.peer.ip().to_string();
            assert_eq!(context.with_host(str::to_string), expected, "{peer}");
        }
    }
}
