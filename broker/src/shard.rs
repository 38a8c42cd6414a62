//! A shard's services: everything one pinned glommio executor owns, each part stating its
//! owner. Nothing in them is shared with other threads except the immutable metadata
//! snapshots and the mesh channels; another shard reaches them only through a typed job
//! over the mesh (`router`), which runs here, on this thread.
//!
//! What each part owns (all on this shard, `!Send`):
//! - `partitions` (`partition::PartitionTable`): the partitions the metadata places here,
//!   with their producer state and append lines. Partition calls from other shards assert
//!   the placement on receipt (`partitions_for_call`).
//! - `groups` (`groups::GroupCoordinator`): the groups whose `__consumer_offsets` partition
//!   is here; it reaches that partition through its `OffsetsHandle` only.
//! - the controller (`controller::Controller`), on shard 0 only; other shards reach it with
//!   `controller_call`, a typed job routed to shard 0.
//! - `metadata` (`metadata::MetadataView`): the snapshot served from, the ready gate, and
//!   the apply (`apply_metadata` here, the one place the partitions change).
//! - `budgets` (`budgets::Budgets`), `metrics` (`metrics::ShardMetrics`), `shutdown`.
//!
//! Lifecycle: [`ShardServices::start`] (or `build`, then `first_metadata`) builds them on
//! a disk and a joined router, without sockets (the server layer listens and accepts; a
//! simulation drives the handlers directly), and returns once the first metadata snapshot
//! is applied. On shutdown the
//! server stops accepting, lets connections finish, waits until every shard has drained,
//! and calls [`close_partitions`].

#[path = "shard_liveness.rs"]
mod liveness;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::mpsc::Receiver;
use futures::future::{join_all, LocalBoxFuture};
use futures::StreamExt;
use uuid::Uuid;

use crate::acl::store::{
    self as acl_store, AclChange, AclChangeReply, AclSnapshot, AclStore, AclView,
};
use crate::budgets::Budgets;
use crate::cluster;
use crate::config::BrokerConfig;
use crate::controller::security::{SecurityChange, SecurityReply, SecuritySets};
use crate::controller::store::MetadataStore;
use crate::controller::{Controller, ControllerCall, ControllerReply, NewTopic, PlacementRules};
use crate::disk::{BrokerDisk, PartitionLog};
use crate::fetch_sessions::FetchSessionCache;
use crate::groups::{
    self, codes as group_codes, GroupAddress, GroupCoordinator, GroupsOwner, OffsetsHandle,
    GROUP_ID_BYTES_MAX, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS,
};
use crate::metadata::{MetadataSnapshot, MetadataView, TopicMetadata, TopicPartition};
use crate::metrics::snapshot::{CommittedOffsetSnapshot, CrossShardCount, PartitionSnapshot};
use crate::metrics::{ScrapeRequest, ShardMetrics, ShardSnapshot};
use crate::partition::TxnMarker;
use crate::partition::{PartitionOwner, PartitionSlot, PartitionTable};
use crate::quotas::enforce::{PublishedUsage, PUBLISH_INTERVAL};
use crate::quotas::store::{EntryResult, QuotaEntry, QuotaStore};
use crate::quotas::{QuotaSet, ShardQuotas};
use crate::replica::{HostedReplica, ReplicaManager, ReplicaManagerStart};
use crate::router::{self, CallKind, Ending, IncomingCalls, MeshPair, ShardRouter};
use crate::sasl::alteration::{Alteration, UserResult};
use crate::sasl::store::{CredentialStore, CredentialView};
use crate::shutdown::ShutdownSignal;
use crate::storage::Clock;
use crate::transactions::marker_mail::{self, MarkerMail, MarkerPost, MarkerRoute};
use crate::transactions::{
    self, TxnAddress, TxnConfig, TxnCoordinator, TxnEffects, TxnHandle, TxnOwner,
    TRANSACTION_STATE_PARTITIONS, TRANSACTION_STATE_TOPIC, TXN_ID_BYTES_MAX,
};

/// Partition logs a shard opens or closes at once (start-up, `CreateTopics`, shutdown).
///
/// Opening a log is a dozen file operations, several of which `io_uring` hands to its worker
/// threads (open, fsync of the directory, fallocate). With every partition's open in flight
/// at once (all of them at start-up, 400 for a `CreateTopics` of 100 topics x 4), glommio's
/// cancellations (`IORING_OP_ASYNC_CANCEL`, issued as it drops in-flight sources between
/// waits) are each matched by the kernel against that whole backlog, so start-up grew with
/// the square of the partition count (issue 10, item 3: 180 s for ~1,100 partitions, one
/// shard busy in `io_uring_submit`; perf: `io_cancel_req_match`). 32 keep the device busy
/// (the ops are small and mostly wait on the journal) while bounding that backlog.
const PARTITION_OPENS_IN_FLIGHT_MAX: usize = 32;

/// The kinds of cross-shard calls, as counted by the router and exported as metrics
/// (`ringfeed_cross_shard_calls_*{kind}`); the `CallKind` constants below index it.
pub const CALL_KINDS: &[&str] = &[
    "partition",
    "controller",
    "apply_metadata",
    "group",
    "quota_usage",
    "replica_frames",
    "transaction",
];
pub(crate) const PARTITION_CALLS: CallKind = CallKind(0);
const CONTROLLER_CALLS: CallKind = CallKind(1);
const APPLY_METADATA_CALLS: CallKind = CallKind(2);
const GROUP_CALLS: CallKind = CallKind(3);
const QUOTA_USAGE_CALLS: CallKind = CallKind(4);
pub(crate) const REPLICA_FRAMES_CALLS: CallKind = CallKind(5);
const TXN_CALLS: CallKind = CallKind(6);

/// Frames of partition groups travelling between this shard and another one (to shard 0's
/// transport, or from it to the owning shard) at once; more are dropped and counted: Raft
/// resends what was lost, and a stalled shard must not grow a queue without bound.
const REPLICA_FRAMES_IN_FLIGHT_MAX: usize = 256;

/// The router of a shard: jobs run on its `ShardServices`.
pub type Router = ShardRouter<ShardServices>;
/// The meshes every shard joins, built once by the server.
pub type Meshes = MeshPair<ShardServices>;

/// Joins the meshes as shard `router::join` assigns (every shard must join before any
/// sends); counts calls by `CALL_KINDS`.
pub async fn join_meshes(meshes: Meshes) -> (Router, IncomingCalls<ShardServices>) {
    router::join(meshes, CALL_KINDS).await
}

/// One shard's services; see the module docs for what each part owns.
pub struct ShardServices {
    pub shard_id: usize,
    pub config: Arc<BrokerConfig>,
    pub partitions: Rc<PartitionTable>,
    pub groups: GroupCoordinator,
    /// The transactional ids whose `__transaction_state` partition is here (`transactions`).
    pub transactions: TxnCoordinator,
    /// Shard 0 only; see `controller_call`.
    controller: Option<Controller>,
    pub metadata: Rc<MetadataView>,
    pub budgets: Budgets,
    /// The incremental fetch sessions created on this shard's connections (`fetch_sessions`);
    /// borrowed by its fetch handlers between awaits only.
    pub fetch_sessions: RefCell<FetchSessionCache>,
    /// What this shard counts; read only by its own metrics snapshots.
    pub metrics: Rc<ShardMetrics>,
    pub shutdown: ShutdownSignal,
    /// Where cross-shard calls leave from; typed calls live with their subsystems
    /// (`partition::produce_on`, `groups::on_coordinator`, ...).
    pub router: Rc<Router>,
    /// Where every file of this shard's services lives: its partition logs and, on shard 0,
    /// the controller's and producer-id files (`disk.rs`).
    disk: BrokerDisk,
    /// Where every service of this shard reads time and sleeps (`storage::clock`): the
    /// system's in the binary, a simulated one in `simulation`.
    pub clock: Clock,
    /// One copy of each topic config in use by this shard's logs, shared by its partitions.
    log_configs: crate::storage::SharedConfigs,
    /// The memory budget the tail caches of this shard's partition logs share (replicated
    /// ones included).
    pub tail_cache: crate::storage::ShardTailCache,
    /// The ACLs this shard checks requests against (`acl::store`).
    pub acls: AclView,
    /// Shard 0 only: the durable ACL set; see `acl_change`. A lock because a change waits
    /// on its file write and its broadcast, and changes must not interleave.
    acl_store: Option<futures::lock::Mutex<AclStore>>,
    /// The SCRAM credentials this shard's logins check (`sasl::store`).
    pub credentials: CredentialView,
    /// The TLS server configuration new connections on TLS listeners take (`tls::reload`).
    pub tls: crate::tls::TlsView,
    /// Shard 0 only: the durable credential set; see `alter_credentials`. A lock for the
    /// reason `acl_store` has one.
    credential_store: Option<futures::lock::Mutex<CredentialStore>>,
    /// The client quotas this shard enforces and the usage it measured (`quotas::enforce`).
    pub quotas: ShardQuotas,
    /// Shard 0 only: the durable quota set; see `alter_quotas`. A lock for the reason
    /// `acl_store` has one.
    quota_store: Option<futures::lock::Mutex<QuotaStore>>,
    /// The Raft groups of the replicated partitions placed on this shard (`replica`); only
    /// on a broker among several voters.
    pub replicas: Option<Rc<ReplicaManager>>,
    /// Shard 0 of a cluster member: the shard hosting each local replicated partition's
    /// group, to route the frames its transport receives (`replica_frame_received`).
    replica_routes: RefCell<HashMap<u64, usize>>,
    /// Replica frames sent to or from other shards and not yet delivered.
    replica_frames_in_flight: Rc<Cell<usize>>,
    /// Replica frames dropped at `REPLICA_FRAMES_IN_FLIGHT_MAX` or for unknown groups.
    replica_frames_dropped: Cell<u64>,
    /// Shard 0 of a cluster member: transaction markers sent to other brokers and waiting
    /// for their answers, and those received being written (`transactions::marker_mail`).
    marker_post: Option<MarkerPost>,
}

impl PartitionOwner for ShardServices {
    const PARTITION_CALLS: CallKind = PARTITION_CALLS;

    fn partitions(&self) -> Rc<PartitionTable> {
        self.partitions.clone()
    }

    /// A partition call from another shard must be for a partition this shard owns. The
    /// sender routed by its own snapshot, which can be one change behind ours (a topic just
    /// deleted), so a miss is answered as data (`NOT_LEADER_OR_FOLLOWER` from the table);
    /// what must never happen is a call for a partition our current metadata places on a
    /// different shard while we also hold it open.
    fn check_ownership_on_receipt(&self, tp: &TopicPartition) {
        let placed_on = self.metadata.current().owner_of(&tp.topic, tp.partition);
        let held_here = self.partitions.log(tp).is_ok();
        assert!(
            !(held_here
                && placed_on.is_some_and(|owner| owner != self.shard_id)
                && !self.metadata.is_applying()),
            "shard {} holds {tp} open but the metadata places it on shard {placed_on:?}",
            self.shard_id
        );
        if !held_here {
            tracing::debug!(shard = self.shard_id, partition = %tp, ?placed_on, "partition call for a partition this shard does not hold");
        }
    }
}

impl TxnOwner for ShardServices {
    const TXN_CALLS: CallKind = TXN_CALLS;

    fn transactions(&self) -> &TxnCoordinator {
        &self.transactions
    }
}

/// What a shard's transaction coordinator needs of other shards: producer ids from shard
/// 0's allocator, and markers written by each partition's owner, on this broker when it
/// leads the partition, else by its leader (`transactions::marker_mail`, through shard 0).
struct ShardTxnEffects {
    router: Rc<Router>,
    metadata: Rc<MetadataView>,
    /// A broker among several voters: another broker may lead a partition.
    clustered: bool,
}

impl TxnEffects for ShardTxnEffects {
    fn new_producer_id(&self) -> LocalBoxFuture<'static, Result<i64, i16>> {
        let router = self.router.clone();
        Box::pin(async move {
            groups::on_coordinator(&router, 0, |groups| async move {
                groups.init_producer_id(-1, -1).await
            })
            .await
            .unwrap_or(Err(group_codes::COORDINATOR_NOT_AVAILABLE))
            .map(|(producer_id, _)| producer_id)
        })
    }

    /// Written here when this broker leads `tp` (always on a one-node broker), else sent
    /// to its leader by shard 0 (`ShardServices::send_marker`); refused as retriable while
    /// it has no leader.
    fn write_marker(&self, tp: TopicPartition, marker: TxnMarker) -> LocalBoxFuture<'static, i16> {
        let router = self.router.clone();
        let route = marker_mail::route(&self.metadata.current(), self.clustered, &tp);
        Box::pin(async move {
            match route {
                MarkerRoute::Unknown => crate::error_codes::UNKNOWN_TOPIC_OR_PARTITION,
                MarkerRoute::NoLeader => crate::error_codes::NOT_LEADER_OR_FOLLOWER,
                MarkerRoute::Here(owner) => write_marker_here(router, owner, tp, marker).await,
                MarkerRoute::Leader(leader) => {
                    let job = move |shard0: &Rc<ShardServices>| {
                        let shard0 = shard0.clone();
                        async move { shard0.send_marker(leader, tp, marker).await }
                    };
                    router
                        .invoke_on(0, TXN_CALLS, Ending::ToCompletion, job)
                        .await
                        .unwrap_or(crate::error_codes::NOT_LEADER_OR_FOLLOWER)
                }
            }
        })
    }
}

/// Writes `marker` on this broker's replica of `tp`, on its owner shard `owner`: the one
/// write of a marker, for this broker's coordinators and for markers other brokers sent
/// (`ShardServices::serve_marker_mail`). The table refuses it when this replica may not
/// write (`NOT_LEADER_OR_FOLLOWER`, retriable). Kafka's error code, 0 when written.
async fn write_marker_here(
    router: Rc<Router>,
    owner: usize,
    tp: TopicPartition,
    marker: TxnMarker,
) -> i16 {
    let partition = tp.partition;
    let offsets = &*tp.topic == OFFSETS_TOPIC;
    let code = crate::partition::write_txn_marker_on(&router, owner, tp, marker).await;
    // The marker on a `__consumer_offsets` partition also ends the transaction's pending
    // `TxnOffsetCommit` offsets in that partition's group coordinator (on the same shard,
    // which owns the partition).
    if code == crate::error_codes::NONE && offsets {
        let (producer_id, commit) = (marker.producer_id, marker.commit);
        groups::on_coordinator(&router, owner, move |groups| async move {
            groups.complete_txn(partition, producer_id, commit);
        })
        .await;
    }
    code
}

impl GroupsOwner for ShardServices {
    const GROUP_CALLS: CallKind = GROUP_CALLS;

    fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }
}

impl ShardServices {
    /// The one constructor: builds the services of the shard `router` joined as, on `disk`,
    /// `clock` and that router, serves the calls of other shards, and returns once the first metadata
    /// snapshot is applied (shard 0 recovers the controller and publishes it). No sockets:
    /// the server layer listens; a simulation calls `handlers::start` directly.
    pub async fn start(
        config: Arc<BrokerConfig>,
        disk: BrokerDisk,
        clock: Clock,
        router: Router,
        incoming: IncomingCalls<ShardServices>,
    ) -> Result<Rc<Self>, String> {
        let services = Self::build(config, disk, clock, router, incoming).await?;
        services.first_metadata().await;
        Ok(services)
    }

    /// `start` in two steps, for a caller with work to set up in between (the server
    /// answers metric scrapes while the first snapshot is being applied): builds the
    /// services and serves other shards' calls; `first_metadata` then waits for the
    /// metadata.
    pub async fn build(
        config: Arc<BrokerConfig>,
        disk: BrokerDisk,
        clock: Clock,
        router: Router,
        incoming: IncomingCalls<ShardServices>,
    ) -> Result<Rc<Self>, String> {
        let shard_id = router.shard_id();
        let controller = if shard_id == 0 {
            Some(recover_controller(&config, &disk).await?)
        } else {
            None
        };
        let (acl_store, credential_store, quota_store) =
            load_security_stores(shard_id, &config, &disk, controller.as_ref()).await?;
        let acls = AclView::new(acl_store::rules_of(&config.settings, &config.super_users));
        let credentials = CredentialView::new(config.sasl.credentials.clone());
        let first_tls = config
            .listeners
            .iter()
            .find_map(|listener| listener.tls.clone());
        let quotas = ShardQuotas::new(config.shard_count());
        let tail_cache = crate::storage::ShardTailCache::new(config.limits.tail_cache_shard_bytes);
        let replicas = open_replicas(&config, &disk, &clock, shard_id, &tail_cache).await?;
        let partitions = Rc::new(PartitionTable::new(
            config.limits.shard_fetch_waits_parked_max,
        ));
        let metadata = Rc::new(MetadataView::default());
        let shutdown = ShutdownSignal::default();
        let groups = GroupCoordinator::new(OffsetsHandle {
            shard_id,
            partitions: partitions.clone(),
            metadata: metadata.clone(),
            shutdown: shutdown.clone(),
            limits: config.limits.clone(),
            disk: disk.clone(),
            data_dir: config.data_dir.clone(),
            clock: clock.clone(),
            producer_id_blocks: controller
                .as_ref()
                .and_then(Controller::replication)
                .map(|replicated| replicated.producer_ids.clone()),
        });
        let router = Rc::new(router);
        let parts = (&partitions, &clock, &shutdown);
        let transactions = txn_coordinator(shard_id, parts, &config, (&router, &metadata));
        let services = Rc::new(ShardServices {
            shard_id,
            log_configs: crate::storage::SharedConfigs::default(),
            tail_cache,
            budgets: Budgets::new(
                config.limits.shard_inflight_request_bytes_max as u64,
                config.limits.shard_fetch_bytes_max as u64,
            ),
            fetch_sessions: RefCell::new(FetchSessionCache::new(
                shard_id,
                config.limits.shard_fetch_session_slots_max,
                config.limits.shard_fetch_session_partitions_max,
                session_id_seed(shard_id),
            )),
            config,
            partitions,
            groups,
            transactions,
            metadata,
            metrics: Rc::default(),
            shutdown,
            router,
            disk,
            clock,
            acls,
            acl_store,
            credentials,
            credential_store,
            tls: crate::tls::TlsView::new(first_tls),
            quotas,
            quota_store,
            replicas,
            replica_routes: RefCell::default(),
            replica_frames_in_flight: Rc::default(),
            replica_frames_dropped: Cell::new(0),
            marker_post: marker_post_of(controller.as_ref()),
            controller,
        });
        services
            .partitions
            .set_txn_verifier(txn_verifier(Rc::downgrade(&services)));
        services.start_replicas();
        services.report_offline_partitions();
        router::serve_incoming(&services.router, incoming, &services);
        if services.config.shard_count() > 1 {
            glommio::spawn_local(publish_usage_periodically(Rc::downgrade(&services))).detach();
        }
        if services
            .controller
            .as_ref()
            .is_some_and(|controller| controller.replication().is_some())
        {
            glommio::spawn_local(follow_controller_group(Rc::downgrade(&services))).detach();
        }
        Ok(services)
    }

    /// Shard 0 publishes the recovered controller's metadata to every shard; the others
    /// wait until it is applied here.
    pub async fn first_metadata(self: &Rc<Self>) {
        if let Some(controller) = &self.controller {
            // ACLs first: a shard serves requests once it has metadata, and must then
            // already check them against the stored ACLs. A cluster broker's come from the
            // controller's state, installed by `publish`.
            if controller.replication().is_some() {
                self.publish(controller.snapshot()).await;
                return;
            }
            if let Some(store) = &self.acl_store {
                let store = store.lock().await;
                self.publish_acls(store.bindings().iter().cloned().collect())
                    .await;
            }
            if let Some(store) = &self.credential_store {
                let current = store.lock().await.current();
                self.publish_credentials(current).await;
            }
            if let Some(store) = &self.quota_store {
                let current = store.lock().await.current();
                self.publish_quotas(current).await;
            }
            self.publish(controller.snapshot()).await;
        } else {
            self.metadata.wait_until_ready().await;
        }
        // The transaction state this shard holds is replayed now, not at the first request
        // for it: transactions left prepared are completed and open ones are timed out
        // without waiting for their producers to come back (issue 14, item 4).
        let transactions = self.transactions.clone();
        glommio::spawn_local(async move { transactions.load_all().await }).detach();
    }

    /// Connects this shard's replica manager: partitions it hosts are served through the
    /// partition table, its frames leave through shard 0's transport, and on shard 0 the
    /// transport's partition-group frames are routed to the shards hosting their groups.
    fn start_replicas(self: &Rc<Self>) {
        let Some(replicas) = &self.replicas else {
            return;
        };
        self.partitions.set_replicas(replicas.clone());
        let weak = Rc::downgrade(self);
        replicas.set_sender(Box::new(move |frame| {
            if let Some(services) = weak.upgrade() {
                services.send_replica_frame(frame);
            }
        }));
        if let Some(replicated) = self.controller.as_ref().and_then(|c| c.replication()) {
            let weak = Rc::downgrade(self);
            replicated
                .group
                .set_partition_frames(Box::new(move |frame| {
                    if let Some(services) = weak.upgrade() {
                        services.replica_frame_received(frame);
                    }
                }));
            let relay = liveness::LivenessRelay::start(self);
            replicated
                .group
                .set_liveness_listener(Box::new(move |live| relay.tell(live)));
        }
        replicas.start();
        self.start_leadership_reports();
    }

    /// When changes are recorded, at most once a tick, hands the leadership changes of this
    /// shard's partition groups to shard 0's controller, which carries them on its next
    /// heartbeat (`controller::leadership`). The manager keeps one change per group (the
    /// latest), so a slow shard 0 sees the newest term, never a backlog. Waiting for the
    /// manager's ring rather than polling lets a shard of quiet groups sleep.
    fn start_leadership_reports(self: &Rc<Self>) {
        let Some(recorded) = self
            .replicas
            .as_ref()
            .and_then(|replicas| replicas.take_changes_rung())
        else {
            return;
        };
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            let interval =
                std::time::Duration::from_millis(ringfeed_replication::driver::TICK_INTERVAL_MS);
            while recorded.recv().await.is_some() {
                // Changes recorded within a tick go in one report.
                glommio::timer::sleep(interval).await;
                let Some(services) = weak.upgrade() else {
                    return;
                };
                let Some(replicas) = &services.replicas else {
                    return;
                };
                let changes = replicas.take_leadership_changes();
                if changes.is_empty() {
                    continue;
                }
                if services.shard_id == 0 {
                    services.report_leadership(changes);
                    continue;
                }
                // Awaited here, so one report per shard is in flight at a time (bounded
                // without a drop: a dropped report would not be sent again until the next
                // change of the same group).
                let router = services.router.clone();
                drop(services);
                let _ = router
                    .invoke_on(
                        0,
                        REPLICA_FRAMES_CALLS,
                        Ending::ToCompletion,
                        move |shard0| {
                            shard0.report_leadership(changes);
                            std::future::ready(())
                        },
                    )
                    .await;
            }
        })
        .detach();
    }

    /// A frame of this shard's partition groups for a peer broker: onto shard 0's transport.
    fn send_replica_frame(self: &Rc<Self>, frame: ringfeed_replication::wire::Frame) {
        if let Some(replicated) = self.controller.as_ref().and_then(|c| c.replication()) {
            replicated.group.send_frame(&frame);
            return;
        }
        self.on_other_shard(0, move |services| {
            if let Some(replicated) = services.controller.as_ref().and_then(|c| c.replication()) {
                replicated.group.send_frame(&frame);
            }
        });
    }

    /// Shard 0: partition groups' messages the transport received, cut per hosting shard
    /// (`cluster::split_by_shard`). Messages of groups not hosted here are dropped.
    fn replica_frame_received(self: &Rc<Self>, frame: ringfeed_replication::wire::Frame) {
        let pieces = {
            let routes = self.replica_routes.borrow();
            cluster::split_by_shard(frame, |group_id| {
                routes.get(&group_id).copied().unwrap_or(usize::MAX)
            })
        };
        for (shard, piece) in pieces {
            if shard == usize::MAX {
                self.replica_frames_dropped
                    .set(self.replica_frames_dropped.get() + 1);
            } else if shard == self.shard_id {
                if let Some(replicas) = &self.replicas {
                    replicas.receive(piece);
                }
            } else {
                self.on_other_shard(shard, move |services| {
                    if let Some(replicas) = &services.replicas {
                        replicas.receive(piece);
                    }
                });
            }
        }
    }

    /// Runs `deliver` on `shard`'s services, in a task; dropped and counted when
    /// `REPLICA_FRAMES_IN_FLIGHT_MAX` deliveries are under way.
    fn on_other_shard(
        self: &Rc<Self>,
        shard: usize,
        deliver: impl FnOnce(&Rc<ShardServices>) + Send + 'static,
    ) {
        let in_flight = self.replica_frames_in_flight.clone();
        if in_flight.get() >= REPLICA_FRAMES_IN_FLIGHT_MAX {
            self.replica_frames_dropped
                .set(self.replica_frames_dropped.get() + 1);
            return;
        }
        in_flight.set(in_flight.get() + 1);
        let router = self.router.clone();
        glommio::spawn_local(async move {
            let _ = router
                .invoke_on(
                    shard,
                    REPLICA_FRAMES_CALLS,
                    Ending::ToCompletion,
                    move |services| {
                        deliver(services);
                        std::future::ready(())
                    },
                )
                .await;
            in_flight.set(in_flight.get() - 1);
        })
        .detach();
    }

    /// The replicated partitions `snapshot` places on this broker (on any shard): each with
    /// the shard hosting it. A partition with one replica is not one of them.
    fn replicated_partitions(snapshot: &MetadataSnapshot) -> Vec<(usize, HostedReplica)> {
        let mut hosted = Vec::new();
        for topic in snapshot.topics.values() {
            for (partition, shard) in topic.partition_shards.iter().enumerate() {
                let partition = partition as i32;
                let replicas = topic.replicas(partition);
                let (target, learners) = topic.moving(partition);
                if replicas.len() <= 1
                    || !(replicas.contains(&snapshot.local_node)
                        || learners.contains(&snapshot.local_node))
                {
                    continue;
                }
                let ids = |nodes: &[i32]| -> Vec<u64> {
                    nodes
                        .iter()
                        .filter_map(|id| u64::try_from(*id).ok())
                        .collect()
                };
                hosted.push((
                    *shard,
                    HostedReplica {
                        topic: TopicPartition {
                            topic: topic.name.clone(),
                            partition,
                        },
                        topic_id: topic.id,
                        group_id: topic.group_id(partition),
                        voters: ids(replicas),
                        learners: ids(learners),
                        target: ids(target),
                        config: topic.config.log_config(),
                        min_insync_replicas: u32::try_from(topic.config.min_insync_replicas)
                            .unwrap_or(1),
                    },
                ));
            }
        }
        hosted
    }

    /// Opens and closes this shard's replicated partitions' groups as `snapshot` places
    /// them; on shard 0 also records which shard hosts each group (frame routing).
    async fn reconcile_replicas(&self, snapshot: &MetadataSnapshot) {
        let Some(replicas) = &self.replicas else {
            return;
        };
        let placed = Self::replicated_partitions(snapshot);
        if self.shard_id == 0 {
            *self.replica_routes.borrow_mut() = placed
                .iter()
                .map(|(shard, replica)| (replica.group_id, *shard))
                .collect();
        }
        let here: Vec<HostedReplica> = placed
            .into_iter()
            .filter(|(shard, _)| *shard == self.shard_id)
            .map(|(_, replica)| replica)
            .collect();
        replicas.reconcile(&here).await;
    }

    /// Tells the controller about every partition of this shard that goes offline.
    fn report_offline_partitions(self: &Rc<Self>) {
        let reporter = Rc::downgrade(self);
        self.partitions
            .set_offline_listener(Box::new(move |tp, topic_id| {
                let reporter = reporter.clone();
                glommio::spawn_local(async move {
                    if let Some(services) = reporter.upgrade() {
                        services
                            .controller_call(ControllerCall::ReportOffline { tp, topic_id })
                            .await;
                    }
                })
                .detach();
            }));
    }

    /// Shard 0 of a cluster member: the controller's Raft group (group 0).
    /// The partitions other brokers' `ElectLeaders` asked this broker to claim since the
    /// last call (`Controller::take_elections`; shard 0 of a cluster broker, else empty).
    pub fn take_elections(&self) -> Vec<TopicPartition> {
        self.controller
            .as_ref()
            .map(Controller::take_elections)
            .unwrap_or_default()
    }

    pub fn controller_group(
        &self,
    ) -> Option<Rc<crate::cluster::controller_group::ControllerGroup<BrokerDisk>>> {
        let replicated = self.controller.as_ref()?.replication()?;
        Some(replicated.group.clone())
    }

    /// Shard 0: queues leadership changes of Raft groups this broker leads for the
    /// controller (`Controller::report_leadership`: sent with the next heartbeat, at once,
    /// and resent until committed). Nothing on other shards or on a one-node broker.
    pub fn report_leadership(&self, changes: Vec<crate::controller::leadership::LeadershipChange>) {
        if let Some(controller) = &self.controller {
            controller.report_leadership(changes);
        }
    }

    /// Sends a topic change to the controller on shard 0 and waits until every shard has
    /// the resulting metadata. `None` when shard 0 is gone (only during shutdown).
    pub async fn controller_call(self: &Rc<Self>, call: ControllerCall) -> Option<ControllerReply> {
        let job = |services: &Rc<ShardServices>| {
            let services = services.clone();
            async move { services.run_controller(call).await }
        };
        self.router
            .invoke_on(0, CONTROLLER_CALLS, Ending::ToCompletion, job)
            .await
            .ok()
    }

    async fn run_controller(self: &Rc<Self>, call: ControllerCall) -> ControllerReply {
        let controller = self
            .controller
            .as_ref()
            .expect("controller calls are routed to shard 0");
        let (reply, snapshot, turn) = controller.execute(call).await;
        if let Some(snapshot) = snapshot {
            self.publish(snapshot).await;
        }
        drop(turn);
        reply
    }

    /// Shard 0: whether this broker is one of several voters (its security metadata is the
    /// controller's, `controller::security`).
    fn is_cluster_member(&self) -> bool {
        self.controller
            .as_ref()
            .is_some_and(|controller| controller.replication().is_some())
    }

    /// Shard 0 of a cluster broker: runs a security change through the controller and,
    /// once committed, installs the new sets and metadata on every shard before answering.
    async fn security_change(self: &Rc<Self>, change: SecurityChange) -> SecurityReply {
        let controller = self
            .controller
            .as_ref()
            .expect("security changes are routed to shard 0");
        let (reply, snapshot, turn) = controller.execute_security(change, true).await;
        if let Some(snapshot) = snapshot {
            self.publish(snapshot).await;
        }
        drop(turn);
        reply
    }

    /// Shard 0 of the controller's leader: runs the security changes other brokers
    /// forwarded (`controller::forwarding`), publishes each, and answers its sender.
    async fn serve_forwarded(self: &Rc<Self>, controller: &Controller) {
        for (from, request) in controller.take_forwarded() {
            let change = match request.change.into_change() {
                Ok(change) => change,
                Err(reason) => {
                    tracing::warn!(from, %reason, "a forwarded change this build cannot read");
                    continue;
                }
            };
            let (reply, snapshot, turn) = controller.execute_security(change, false).await;
            let committed = snapshot.is_some();
            if let Some(snapshot) = snapshot {
                self.publish(snapshot).await;
            }
            controller.answer_forwarded(from, request.id, &reply, committed);
            drop(turn);
        }
    }

    /// Shard 0: sends `marker` for `tp` to broker `leader`, which leads it, and waits for
    /// its answer (`transactions::marker_mail`): its error code, `REQUEST_TIMED_OUT` without
    /// one in `MARKER_TIMEOUT` or at the post's bound, `NOT_LEADER_OR_FOLLOWER` on a broker
    /// that is not a cluster member. All retriable but the leader's own refusals.
    async fn send_marker(&self, leader: u64, tp: TopicPartition, marker: TxnMarker) -> i16 {
        let (Some(post), Some(group)) = (&self.marker_post, self.controller_group()) else {
            return crate::error_codes::NOT_LEADER_OR_FOLLOWER;
        };
        let send = |bytes| group.send_mail(leader, bytes);
        let code = post
            .deliver(
                leader,
                tp.clone(),
                marker,
                send,
                marker_mail::MARKER_TIMEOUT,
            )
            .await;
        if code != crate::error_codes::NONE {
            tracing::debug!(leader, partition = %tp, code, "a transaction marker sent to the partition's leader was not written");
        }
        code
    }

    /// Shard 0: the marker mail the controller's mail sort took out of the registry
    /// mailbox. A reply completes this broker's waiting request; a request is written as a
    /// local marker (`write_marker_here`, on the partition's owner shard) in a task and
    /// answered with its code, or answered `REQUEST_TIMED_OUT` at once when
    /// `marker_mail::SERVING_MAX` are being written.
    fn serve_marker_mail(&self, mail: Vec<(u64, MarkerMail)>) {
        let (Some(post), Some(group)) = (&self.marker_post, self.controller_group()) else {
            return;
        };
        for (from, mail) in mail {
            let request = match mail {
                MarkerMail::Reply(reply) => {
                    post.answered(from, reply);
                    continue;
                }
                MarkerMail::Request(request) => request,
            };
            let id = request.id;
            let Some(turn) = post.start_serving() else {
                let error_code = crate::error_codes::REQUEST_TIMED_OUT;
                group.send_mail(from, marker_mail::MarkerReply { id, error_code }.encode());
                continue;
            };
            // By this broker's metadata: the sender's may be a change ahead (a topic just
            // created) or behind; not placed here yet is retriable, never "deleted".
            let owner = self
                .metadata
                .current()
                .owner_of(&request.tp.topic, request.tp.partition);
            let (router, group) = (self.router.clone(), group.clone());
            glommio::spawn_local(async move {
                let error_code = match owner {
                    Some(owner) => {
                        write_marker_here(router, owner, request.tp, request.marker).await
                    }
                    None => crate::error_codes::NOT_LEADER_OR_FOLLOWER,
                };
                drop(turn);
                group.send_mail(from, marker_mail::MarkerReply { id, error_code }.encode());
            })
            .detach();
        }
    }

    /// Sends an ACL change to shard 0 and waits until every shard holds the resulting set.
    /// `None` when shard 0 is gone (only during shutdown).
    pub async fn acl_change(self: &Rc<Self>, change: AclChange) -> Option<AclChangeReply> {
        let job = |services: &Rc<ShardServices>| {
            let services = services.clone();
            async move {
                if services.is_cluster_member() {
                    return match services.security_change(SecurityChange::Acls(change)).await {
                        SecurityReply::Acls(reply) => reply,
                        _ => AclChangeReply::Created(Err(wrong_reply())),
                    };
                }
                let store = services
                    .acl_store
                    .as_ref()
                    .expect("ACL changes are routed to shard 0");
                let mut store = store.lock().await;
                let reply = store.apply(change).await;
                services
                    .publish_acls(store.bindings().iter().cloned().collect())
                    .await;
                reply
            }
        };
        self.router
            .invoke_on(0, CONTROLLER_CALLS, Ending::ToCompletion, job)
            .await
            .ok()
    }

    /// Sends an `AlterUserScramCredentials` to shard 0 and waits until every shard holds
    /// the resulting credentials; each user's answer. `None` when shard 0 is gone (only
    /// during shutdown).
    pub async fn alter_credentials(
        self: &Rc<Self>,
        alteration: Alteration,
    ) -> Option<Vec<UserResult>> {
        let job = |services: &Rc<ShardServices>| {
            let services = services.clone();
            async move {
                if services.is_cluster_member() {
                    return match services
                        .security_change(SecurityChange::Credentials(alteration))
                        .await
                    {
                        SecurityReply::Credentials(results) => results,
                        _ => Vec::new(),
                    };
                }
                let store = services
                    .credential_store
                    .as_ref()
                    .expect("credential changes are routed to shard 0");
                let mut store = store.lock().await;
                let results = store.alter(alteration).await;
                services.publish_credentials(store.current()).await;
                results
            }
        };
        self.router
            .invoke_on(0, CONTROLLER_CALLS, Ending::ToCompletion, job)
            .await
            .ok()
    }

    /// Sends an `AlterClientQuotas` to shard 0 and waits until every shard holds the
    /// resulting quotas; each entry's answer. `None` when shard 0 is gone (only during
    /// shutdown).
    pub async fn alter_quotas(
        self: &Rc<Self>,
        entries: Vec<QuotaEntry>,
        validate_only: bool,
    ) -> Option<Vec<EntryResult>> {
        let job = move |services: &Rc<ShardServices>| {
            let services = services.clone();
            async move {
                if services.is_cluster_member() {
                    let change = SecurityChange::Quotas {
                        entries,
                        validate_only,
                    };
                    return match services.security_change(change).await {
                        SecurityReply::Quotas(results) => results,
                        _ => Vec::new(),
                    };
                }
                let store = services
                    .quota_store
                    .as_ref()
                    .expect("quota changes are routed to shard 0");
                let mut store = store.lock().await;
                let results = store.alter(entries, validate_only).await;
                services.publish_quotas(store.current()).await;
                results
            }
        };
        self.router
            .invoke_on(0, CONTROLLER_CALLS, Ending::ToCompletion, job)
            .await
            .ok()
    }

    /// Shard 0: hands every shard the quota set and waits until all have installed it.
    async fn publish_quotas(self: &Rc<Self>, set: Arc<QuotaSet>) {
        self.install_on_every_shard(set, "client quotas", |services, set| {
            services.quotas.install(set);
        })
        .await;
    }

    /// Hands the other shards this shard's quota usage (`quotas::enforce`) and waits until
    /// they have it.
    async fn publish_usage(self: &Rc<Self>, usage: &PublishedUsage) {
        let from = self.shard_id;
        let sends = (0..self.config.shard_count())
            .filter(|shard| *shard != from)
            .map(|shard| {
                let usage = usage.clone();
                let job = move |services: &Rc<ShardServices>| {
                    services.quotas.install_remote(from, usage);
                    async {}
                };
                self.router
                    .invoke_on(shard, QUOTA_USAGE_CALLS, Ending::ToCompletion, job)
            });
        // A shard that is gone (only during shutdown) misses one publish.
        join_all(sends).await;
    }

    /// Shard 0: hands every shard the credential set and waits until all have installed it.
    async fn publish_credentials(self: &Rc<Self>, credentials: Arc<crate::sasl::Credentials>) {
        self.install_on_every_shard(credentials, "SCRAM credentials", |services, credentials| {
            services.credentials.install(credentials);
        })
        .await;
    }

    /// Shard 0: hands every shard a reloaded TLS configuration (`tls::reload`) and waits
    /// until all have installed it.
    pub async fn publish_tls(self: &Rc<Self>, config: Arc<rustls::ServerConfig>) {
        self.install_on_every_shard(config, "TLS certificates", |services, config| {
            services.tls.install(config);
        })
        .await;
    }

    /// Shard 0: hands every shard the ACL set, each building nothing (the index is built
    /// once here and shared immutable), and waits until all have installed it.
    async fn publish_acls(self: &Rc<Self>, bindings: Vec<crate::acl::model::AclBinding>) {
        let snapshot = Arc::new(AclSnapshot::new(self.acls.rules(), bindings));
        self.install_on_every_shard(snapshot, "ACLs", |services, snapshot| {
            services.acls.install(snapshot);
        })
        .await;
    }

    /// Shard 0: runs `install` with a copy of `value` on every shard (itself included) and
    /// waits until all have. A shard that is gone (only during shutdown) is logged, naming
    /// `what`, and skipped.
    async fn install_on_every_shard<T: Clone + Send + 'static>(
        self: &Rc<Self>,
        value: T,
        what: &'static str,
        install: fn(&ShardServices, T),
    ) {
        let installs = (0..self.config.shard_count()).map(|shard| {
            let value = value.clone();
            let job = move |services: &Rc<ShardServices>| {
                install(services, value);
                async {}
            };
            async move {
                let installed =
                    self.router
                        .invoke_on(shard, APPLY_METADATA_CALLS, Ending::ToCompletion, job);
                if let Err(gone) = installed.await {
                    tracing::warn!(%gone, "{what} not installed");
                }
            }
        });
        join_all(installs).await;
    }

    /// Shard 0: hands `snapshot` to every shard and waits until all have applied it. On a
    /// cluster broker, first installs the controller's ACLs, credentials and quotas on
    /// every shard when they changed (`controller::security`).
    async fn publish(self: &Rc<Self>, snapshot: Arc<MetadataSnapshot>) {
        if let Some(sets) = self
            .controller
            .as_ref()
            .and_then(Controller::security_to_install)
        {
            self.publish_acls(sets.acls.into_iter().collect()).await;
            self.publish_credentials(Arc::new(sets.credentials)).await;
            self.publish_quotas(Arc::new(sets.quotas)).await;
        }
        let applies = (0..self.config.shard_count()).map(|shard| {
            let snapshot = snapshot.clone();
            let job = move |services: &Rc<ShardServices>| {
                let services = services.clone();
                async move { services.apply_metadata(snapshot).await }
            };
            async move {
                let applied =
                    self.router
                        .invoke_on(shard, APPLY_METADATA_CALLS, Ending::ToCompletion, job);
                if let Err(gone) = applied.await {
                    tracing::warn!(%gone, "metadata not applied");
                }
            }
        });
        join_all(applies).await;
    }

    /// Runs `work` on the coordinator of `group`, wherever it lives, with the group's
    /// address. `Err` is the error code for the whole request (no coordinator reachable).
    pub async fn on_group_coordinator<F, Fut, R>(
        self: &Rc<Self>,
        group: &str,
        work: F,
    ) -> Result<R, i16>
    where
        F: FnOnce(GroupCoordinator, GroupAddress) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
            return Err(group_codes::INVALID_GROUP_ID);
        }
        let (partition, owner) = self.locate_group(group).await?;
        let at = GroupAddress {
            group: group.to_string(),
            partition,
        };
        groups::on_coordinator(&self.router, owner, move |coordinator| {
            work(coordinator, at)
        })
        .await
        .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)
    }

    /// Where a group's coordinator lives: its `__consumer_offsets` partition and that
    /// partition's shard. Creates the internal topic on first use, as Kafka does on the
    /// first `FindCoordinator`. `Err` is the error code to answer with.
    /// A group whose partition another broker hosts is answered `NOT_COORDINATOR`, so the
    /// client asks `FindCoordinator` again.
    pub async fn locate_group(self: &Rc<Self>, group: &str) -> Result<(i32, usize), i16> {
        self.locate_coordinator(OFFSETS_TOPIC, group).await
    }

    /// The partition of internal topic `name` that coordinates `key` (a group or a
    /// transactional id, by Kafka's hash) and the shard owning it here; `NOT_COORDINATOR`
    /// when another broker hosts it.
    async fn locate_coordinator(
        self: &Rc<Self>,
        name: &str,
        key: &str,
    ) -> Result<(i32, usize), i16> {
        let snapshot = self.internal_topic_snapshot(name).await?;
        let topic = snapshot
            .topic(name)
            .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)?;
        let partition = groups::partition_for(key, topic.partition_count());
        // A replicated partition's coordinator is its Raft leader, which may be this broker
        // before the controller has recorded it: a replica here lets the owning shard
        // decide (`NOT_COORDINATOR` there unless it leads).
        let replica_here = {
            let replicas = topic.replicas(partition);
            replicas.len() > 1 && replicas.contains(&snapshot.local_node)
        };
        if snapshot.broker_of(name, partition) != Some(snapshot.local_node) && !replica_here {
            return Err(group_codes::NOT_COORDINATOR);
        }
        let owner = snapshot
            .owner_of(name, partition)
            .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)?;
        Ok((partition, owner))
    }

    /// The broker coordinating `group`: the one hosting its `__consumer_offsets` partition
    /// (created on first use), if that broker is alive.
    pub async fn coordinator_broker(self: &Rc<Self>, group: &str) -> Result<i32, i16> {
        self.coordinator_broker_of(OFFSETS_TOPIC, group).await
    }

    /// The live broker hosting the partition of internal topic `name` that coordinates
    /// `key` (the topic created on first use, as Kafka does).
    async fn coordinator_broker_of(self: &Rc<Self>, name: &str, key: &str) -> Result<i32, i16> {
        let snapshot = self.internal_topic_snapshot(name).await?;
        let topic = snapshot
            .topic(name)
            .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)?;
        let partition = groups::partition_for(key, topic.partition_count());
        snapshot
            .broker_of(name, partition)
            .filter(|broker| snapshot.is_alive(*broker))
            .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)
    }

    /// Runs `work` on the coordinator of transactional id `id`, wherever it lives, with the
    /// id's address. `Err` is the error code for the whole request.
    pub async fn on_txn_coordinator<F, Fut, R>(self: &Rc<Self>, id: &str, work: F) -> Result<R, i16>
    where
        F: FnOnce(TxnCoordinator, TxnAddress) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if id.is_empty() || id.len() > TXN_ID_BYTES_MAX {
            return Err(group_codes::INVALID_REQUEST);
        }
        let (partition, owner) = self.locate_coordinator(TRANSACTION_STATE_TOPIC, id).await?;
        let at = TxnAddress {
            transactional_id: id.to_string(),
            partition,
        };
        transactions::on_coordinator(&self.router, owner, move |coordinator| {
            work(coordinator, at)
        })
        .await
        .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)
    }

    /// KIP-890's check of a transactional batch that would open its producer's transaction
    /// on `tp` (`ProducerStates::append_verified`): `NONE` when `tp` is in the producer's
    /// ongoing transaction, else the code the produce is refused with. As Kafka answers a
    /// produce: `INVALID_TXN_STATE` for a partition not in the transaction (or no ongoing
    /// one), `INVALID_PRODUCER_EPOCH` for a producer fenced since, and the coordinator's
    /// unavailability as `NOT_ENOUGH_REPLICAS`, which every client retries (older ones know
    /// no coordinator errors on a produce). A coordinator on another broker is not asked
    /// yet: the batch is taken unverified, as before this check (`TxnOffsetCommit` does
    /// the same; `docs/ARCHITECTURE.md`, Transactions).
    pub async fn verify_in_transaction(
        self: &Rc<Self>,
        id: String,
        producer_id: i64,
        epoch: i16,
        tp: TopicPartition,
    ) -> i16 {
        use crate::transactions::codes as txn_codes;
        match self
            .ask_txn_coordinator_about(&id, producer_id, epoch, &tp)
            .await
        {
            None => {
                tracing::debug!(transactional_id = %id, partition = %tp, "transactional batch taken unverified: its coordinator is on another broker");
                txn_codes::NONE
            }
            Some(code @ (txn_codes::NONE | txn_codes::INVALID_TXN_STATE)) => code,
            Some(txn_codes::PRODUCER_FENCED) => txn_codes::INVALID_PRODUCER_EPOCH,
            Some(
                txn_codes::COORDINATOR_NOT_AVAILABLE
                | txn_codes::COORDINATOR_LOAD_IN_PROGRESS
                | txn_codes::NOT_COORDINATOR,
            ) => crate::error_codes::NOT_ENOUGH_REPLICAS,
            Some(_) => txn_codes::INVALID_TXN_STATE,
        }
    }

    /// Whether `tp` is in the ongoing transaction of transactional id `id` (producer
    /// `producer_id`, epoch `epoch`), asked of its coordinator (`verify_partitions`): `NONE`,
    /// `INVALID_TXN_STATE`, or the coordinator's error (a coordinator that cannot be found or
    /// reached included). `None` when the coordinator is on another broker, which this one
    /// cannot ask yet.
    pub async fn ask_txn_coordinator_about(
        self: &Rc<Self>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        tp: &TopicPartition,
    ) -> Option<i16> {
        match self.txn_coordinator_broker(id).await {
            Ok(broker) if broker != self.metadata.current().local_node => return None,
            Ok(_) => {}
            Err(code) => return Some(code),
        }
        let partitions = vec![tp.clone()];
        let verified = self
            .on_txn_coordinator(id, move |coordinator, at| async move {
                coordinator
                    .verify_partitions(at, producer_id, epoch, partitions)
                    .await
            })
            .await;
        Some(match verified {
            Ok(Ok(per_partition)) => per_partition
                .first()
                .copied()
                .unwrap_or(crate::transactions::codes::NONE),
            Ok(Err(code)) | Err(code) => code,
        })
    }

    /// The broker coordinating transactional id `id`: the one hosting its
    /// `__transaction_state` partition (created on first use, as Kafka does).
    pub async fn txn_coordinator_broker(self: &Rc<Self>, id: &str) -> Result<i32, i16> {
        self.coordinator_broker_of(TRANSACTION_STATE_TOPIC, id)
            .await
    }

    /// The metadata, once it holds the internal topic `name` (`__consumer_offsets` or
    /// `__transaction_state`), created here if missing.
    async fn internal_topic_snapshot(
        self: &Rc<Self>,
        name: &str,
    ) -> Result<Arc<MetadataSnapshot>, i16> {
        let snapshot = self.metadata.current();
        if snapshot.topic(name).is_some() {
            return Ok(snapshot);
        }
        let topic = if name == OFFSETS_TOPIC {
            offsets_topic()
        } else {
            transaction_state_topic()
        };
        let call = ControllerCall::CreateTopics {
            topics: vec![topic],
            validate_only: false,
        };
        self.controller_call(call)
            .await
            .ok_or(group_codes::COORDINATOR_NOT_AVAILABLE)?;
        let snapshot = self.metadata.current();
        if snapshot.topic(name).is_some() {
            Ok(snapshot)
        } else {
            // Usually the controller created it and this broker has not installed that
            // metadata yet (another broker's controller commits first); the client asks
            // again on COORDINATOR_NOT_AVAILABLE. A refusal is logged by the controller.
            tracing::info!(
                topic = name,
                "internal topic not in this broker's metadata yet; the client will ask again"
            );
            Err(group_codes::COORDINATOR_NOT_AVAILABLE)
        }
    }

    /// The one place a shard changes which partitions it owns: remove what the snapshot no
    /// longer places here, open what is new, update configs, install the snapshot, then drop
    /// the committed offsets of deleted topics from the groups this shard coordinates.
    async fn apply_metadata(self: &Rc<Self>, snapshot: Arc<MetadataSnapshot>) {
        let _turn = self.metadata.apply_turn().await;
        let previous = self.metadata.current();
        if snapshot.epoch <= previous.epoch && previous.epoch != 0 {
            return;
        }
        // Ordered maps: removals and opens start in partition order, so the order of their
        // disk steps is the same in every run (a simulated power cut after N steps cuts the
        // same file when a seed is replayed).
        // A partition with several replicas is a Raft group of `replicas`, not a plain log.
        let wanted: BTreeMap<TopicPartition, Arc<TopicMetadata>> = snapshot
            .partitions_on(self.shard_id)
            .filter(|(tp, topic)| topic.replicas(tp.partition).len() <= 1)
            .map(|(tp, topic)| (tp, topic.clone()))
            .collect();
        let owned: BTreeMap<TopicPartition, Uuid> = self.partitions.owned().into_iter().collect();
        let removed = owned
            .iter()
            .filter(|(tp, id)| wanted.get(*tp).is_none_or(|topic| topic.id != **id));
        let removals: Vec<_> = removed
            .filter_map(|(tp, _)| self.partitions.remove(tp).map(|slot| (tp.clone(), slot)))
            .collect();
        join_all(
            removals
                .into_iter()
                .map(|(tp, slot)| remove_partition(tp, slot)),
        )
        .await;
        let opens = wanted
            .iter()
            .filter(|(tp, topic)| owned.get(*tp) != Some(&topic.id))
            .map(|(tp, topic)| self.open_partition(tp.clone(), topic.clone()));
        futures::stream::iter(opens)
            .buffer_unordered(PARTITION_OPENS_IN_FLIGHT_MAX)
            .collect::<()>()
            .await;
        for (tp, topic) in &wanted {
            let config_changed = previous
                .topic(&tp.topic)
                .is_some_and(|old| old.id == topic.id && old.config != topic.config);
            if let (true, Ok(log)) = (config_changed, self.partitions.log(tp)) {
                log.set_config(self.log_configs.share(topic.config.log_config()));
            }
        }
        self.reconcile_replicas(&snapshot).await;
        let deleted_topics: BTreeSet<String> = previous
            .topics
            .iter()
            .filter(|(name, old)| snapshot.topic(name).is_none_or(|new| new.id != old.id))
            .map(|(name, _)| name.to_string())
            .collect();
        self.metadata.install(snapshot);
        if !deleted_topics.is_empty() {
            // Before DeleteTopics is answered, so a client that deletes and recreates a
            // topic never sees its groups start at the old topic's offsets.
            self.groups.forget_deleted_topics(&deleted_topics).await;
        }
    }

    async fn open_partition(&self, tp: TopicPartition, topic: Arc<TopicMetadata>) {
        let dir = partition_dir(&self.config.data_dir, &tp);
        let opened = PartitionLog::open_on(
            self.disk.clone(),
            &dir,
            self.log_configs.share(topic.config.log_config()),
            self.clock.clone(),
        );
        let slot = match opened.await {
            Ok((log, report)) => {
                tracing::info!(partition = %tp, shard = self.shard_id, ?report, "partition open");
                log.observe_fdatasync_latency(self.metrics.fdatasync_observer());
                log.share_tail_cache(&self.tail_cache);
                PartitionSlot::Online {
                    topic_id: topic.id,
                    log,
                }
            }
            Err(error) => {
                tracing::error!(partition = %tp, dir = %dir.display(), %error, "partition offline: its log cannot be opened");
                PartitionSlot::Offline {
                    topic_id: topic.id,
                    reason: error.to_string(),
                }
            }
        };
        self.partitions.insert(tp, slot);
    }

    /// Copies this shard's metrics. Runs on the shard's thread; takes no await.
    pub fn metrics_snapshot(&self, committed_offsets_max: usize) -> ShardSnapshot {
        let online = self.partitions.online_logs();
        let owned = self.partitions.owned().len();
        let mut partitions: Vec<PartitionSnapshot> = online
            .iter()
            .map(|(tp, log)| PartitionSnapshot {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                size_bytes: log.size_bytes(),
                log_start_offset: log.log_start_offset(),
                high_watermark: log.high_watermark(),
            })
            .collect();
        partitions.sort_unstable_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let (committed_offsets, committed_offsets_total) =
            self.groups.committed_offsets(committed_offsets_max);
        let (consumer_group_rebalances, consumer_group_reconciliation) =
            self.groups.consumer_group_metrics();
        let committed_offsets = committed_offsets
            .into_iter()
            .map(
                |(group, topic, partition, offset)| CommittedOffsetSnapshot {
                    group,
                    topic,
                    partition,
                    offset,
                },
            )
            .collect();
        let cross_shard = self
            .router
            .counts()
            .into_iter()
            .map(|counts| CrossShardCount {
                kind: counts.kind,
                sent: counts.sent,
                received: counts.received,
            })
            .collect();
        ShardSnapshot {
            shard: self.shard_id,
            partitions_offline: (owned - online.len()) as u64,
            partitions,
            committed_offsets,
            committed_offsets_total: committed_offsets_total as u64,
            consumer_group_rebalances,
            consumer_group_reconciliation,
            cross_shard,
            fetch_budget_reserved_bytes: self.budgets.fetch_bytes.in_use_bytes(),
            tail_cache: self.tail_cache.stats(),
            fetch_waits_parked: self.partitions.parked_waits().parked() as u64,
            fetch_waits_refused: self.partitions.parked_waits().refused(),
            fetch_sessions: self.fetch_sessions.borrow().sessions() as u64,
            fetch_session_partitions: self.fetch_sessions.borrow().partitions_cached() as u64,
            fetch_session_counters: self.fetch_sessions.borrow().counters(),
            cluster_transport: self
                .controller
                .as_ref()
                .and_then(Controller::replication)
                .and_then(|replicated| replicated.group.transport_counts()),
            replication: self.replicas.as_ref().map(|replicas| {
                let mut snapshot = replicas.replication_snapshot();
                snapshot.frames_dropped += self.replica_frames_dropped.get();
                snapshot
            }),
            ..self.metrics.snapshot()
        }
    }
}

/// Answers scrape requests until the admin thread drops its sender (it never does while
/// the process serves) or the shard is gone. Holds the services weakly so it never keeps a
/// stopped shard alive.
pub async fn serve_scrapes(
    services: std::rc::Weak<ShardServices>,
    mut requests: Receiver<ScrapeRequest>,
) {
    while let Some(request) = requests.next().await {
        let Some(services) = services.upgrade() else {
            return;
        };
        // The admin thread may have given up waiting; then nobody wants the answer.
        let _ = request
            .reply
            .try_send(services.metrics_snapshot(request.committed_offsets_max));
    }
}

async fn remove_partition(tp: TopicPartition, slot: PartitionSlot) {
    if let PartitionSlot::Online { log, .. } = slot {
        match log.remove().await {
            Ok(()) => tracing::info!(partition = %tp, "partition deleted"),
            Err(error) => {
                tracing::error!(partition = %tp, %error, "deleting the partition directory failed");
            }
        }
    }
}

/// The replica manager of a broker among several voters (`replica`); `None` otherwise.
async fn open_replicas(
    config: &BrokerConfig,
    disk: &BrokerDisk,
    clock: &Clock,
    shard_id: usize,
    tail_cache: &crate::storage::ShardTailCache,
) -> Result<Option<Rc<ReplicaManager>>, String> {
    if config.cluster.voters.len() <= 1 {
        return Ok(None);
    }
    let node_id = cluster::node_id_u64(config.cluster.node_id);
    let incarnation = cluster::process_incarnation();
    let manager = ReplicaManager::open(ReplicaManagerStart {
        node_id,
        incarnation,
        shard: shard_id,
        data_dir: config.data_dir.clone(),
        disk: disk.clone(),
        clock: clock.clone(),
        election_seed: node_id ^ incarnation ^ ((shard_id as u64) << 48),
        replica_lag_time_max: config.cluster.replica_lag_time_max,
        tail_cache: tail_cache.clone(),
    })
    .await?;
    Ok(Some(manager))
}

/// Kafka's layout: `<data-dir>/<topic>-<partition>`. Topic names cannot contain `/`.
pub fn partition_dir(data_dir: &std::path::Path, tp: &TopicPartition) -> PathBuf {
    data_dir.join(format!("{}-{}", tp.topic, tp.partition))
}

/// The answer when a security change is answered in the shape of another (never: each
/// change's reply is built from the change).
fn wrong_reply() -> (i16, String) {
    (
        crate::error_codes::UNKNOWN_SERVER_ERROR,
        "internal error: wrong reply".into(),
    )
}

/// The stores shard 0 owns of the data directory's ACL, credential and quota files (None
/// elsewhere). A cluster broker hands what they hold to its controller, for the first leader
/// to seed the cluster with (`controller::security::seed`); the controller's state is then
/// what every shard enforces.
async fn load_security_stores(
    shard_id: usize,
    config: &BrokerConfig,
    disk: &BrokerDisk,
    controller: Option<&Controller>,
) -> Result<SecurityStores, String> {
    let acls = shard0_store(shard_id, AclStore::load(disk.clone(), &config.data_dir)).await?;
    let credentials = shard0_store(
        shard_id,
        CredentialStore::load(disk.clone(), &config.data_dir),
    )
    .await?;
    let quotas = shard0_store(shard_id, QuotaStore::load(disk.clone(), &config.data_dir)).await?;
    if let Some(controller) = controller.filter(|c| c.replication().is_some()) {
        let mut local = SecuritySets::default();
        if let Some(store) = &acls {
            local.acls.clone_from(store.lock().await.bindings());
        }
        if let Some(store) = &credentials {
            local.credentials = (*store.lock().await.current()).clone();
        }
        if let Some(store) = &quotas {
            local.quotas = (*store.lock().await.current()).clone();
        }
        controller.set_security_seed(local);
    }
    Ok((acls, credentials, quotas))
}

type SecurityStores = (
    Option<futures::lock::Mutex<AclStore>>,
    Option<futures::lock::Mutex<CredentialStore>>,
    Option<futures::lock::Mutex<QuotaStore>>,
);

async fn recover_controller(
    config: &BrokerConfig,
    disk: &BrokerDisk,
) -> Result<Controller, String> {
    let rules = PlacementRules {
        shard_count: config.shard_count(),
        node_id: config.cluster.node_id,
        clustered: config.cluster.voters.len() > 1,
        default_replication_factor: config.cluster.default_replication_factor,
        default_partitions: config.default_partitions,
        limits: config.limits.clone(),
        topic_defaults: config.topic_defaults.clone(),
    };
    let store = MetadataStore::new(disk.clone(), &config.data_dir);
    let Some(addresses) = cluster::cluster_addresses(&config.cluster)? else {
        return Controller::recover(store, rules)
            .await
            .map_err(|error| error.to_string());
    };
    let replicated = cluster::start_controller_group(config, disk, &addresses).await?;
    let (replicated, recovered) = replicated;
    Ok(Controller::replicated(store, rules, replicated, recovered))
}

/// Shard 0 of a broker among several voters: adopts each state group 0 commits, publishes
/// a new snapshot when the controller's leader changes (Metadata's `controller_id`), and
/// lets the first leader of a new cluster commit its state. Polls every 50 ms: a follower
/// sees a change at most that much after its commit. Heartbeats the controller every
/// `registry::HEARTBEAT_INTERVAL` (at once after a leader change or when a broker asked for
/// `__consumer_offsets`), and on the leader runs the registry (`Controller::registry_round`).
/// Serves the transaction marker mail of each round (`serve_marker_mail`).
async fn follow_controller_group(services: std::rc::Weak<ShardServices>) {
    let mut published_leader = None;
    let mut next_heartbeat = std::time::Instant::now();
    loop {
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let Some(controller) = services.controller.as_ref() else {
            return;
        };
        if let Some((snapshot, turn)) = controller.commit_genesis().await {
            services.publish(snapshot).await;
            drop(turn);
        }
        let leader = controller.controller_id();
        if let Some((snapshot, turn)) = controller.adopt_committed().await {
            services.publish(snapshot).await;
            drop(turn);
            published_leader = Some(leader);
        } else if published_leader != Some(leader) {
            tracing::info!(controller = leader, "controller leader changed");
            services.publish(controller.snapshot()).await;
            published_leader = Some(leader);
            next_heartbeat = std::time::Instant::now();
        }
        let now = std::time::Instant::now();
        if now >= next_heartbeat || controller.heartbeat_due_now() {
            controller.heartbeat();
            next_heartbeat = now + crate::controller::registry::HEARTBEAT_INTERVAL;
        }
        let internal_topics = [offsets_topic(), transaction_state_topic()];
        if let Some((snapshot, turn)) = controller.registry_round(&internal_topics).await {
            services.publish(snapshot).await;
            drop(turn);
        }
        // Before the security work below, which may wait for a commit: a marker's sender
        // times out after `marker_mail::MARKER_TIMEOUT`.
        services.serve_marker_mail(controller.take_marker_mail());
        if let Some((snapshot, turn)) = controller.seed_security().await {
            services.publish(snapshot).await;
            drop(turn);
        }
        services.serve_forwarded(controller).await;
    }
}

/// Shard 0 of a cluster member's marker post (`transactions::marker_mail`); none elsewhere.
fn marker_post_of(controller: Option<&Controller>) -> Option<MarkerPost> {
    controller
        .and_then(Controller::replication)
        .map(|_| MarkerPost::new(marker_ids_start()))
}

/// The first id of this process's marker requests (`marker_mail::MarkerPost`): its start
/// time in nanoseconds, so a reply meant for a previous life of this broker matches nothing.
fn marker_ids_start() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// `__consumer_offsets` as the first `FindCoordinator` creates it.
fn offsets_topic() -> NewTopic {
    NewTopic {
        name: OFFSETS_TOPIC.to_string(),
        partitions: OFFSETS_TOPIC_PARTITIONS,
        replication_factor: -1,
        manual_assignment: Vec::new(),
        configs: vec![
            // Commits of an active group must never age out with a segment; expiry of
            // offsets is the coordinator's job (offsets.retention), not the log's.
            ("retention.ms".to_string(), Some("-1".to_string())),
            // Kafka's offsets.topic.segment.bytes.
            ("segment.bytes".to_string(), Some("104857600".to_string())),
        ],
    }
}

/// The shard's transaction coordinator, on its partitions, clock and shutdown signal.
fn txn_coordinator(
    shard_id: usize,
    (partitions, clock, shutdown): (&Rc<PartitionTable>, &Clock, &ShutdownSignal),
    config: &BrokerConfig,
    (router, metadata): (&Rc<Router>, &Rc<MetadataView>),
) -> TxnCoordinator {
    let effects = ShardTxnEffects {
        router: router.clone(),
        metadata: metadata.clone(),
        clustered: config.cluster.voters.len() > 1,
    };
    TxnCoordinator::new(TxnHandle {
        shard_id,
        partitions: partitions.clone(),
        clock: clock.clone(),
        shutdown: shutdown.clone(),
        config: txn_config(&config.limits),
        effects: Rc::new(effects),
    })
}

/// The transaction coordinator's settings, from the broker's limits.
fn txn_config(limits: &crate::limits::Limits) -> TxnConfig {
    TxnConfig {
        max_timeout_ms: i32::try_from(limits.transaction_max_timeout.as_millis())
            .unwrap_or(i32::MAX),
        id_expiration: limits.transactional_id_expiration,
        abort_check_interval: limits.transaction_abort_check_interval,
    }
}

/// `__transaction_state` as Kafka creates it: compacted (the latest record per
/// transactional id; a tombstone forgets an expired id), never deleted by age.
fn transaction_state_topic() -> NewTopic {
    NewTopic {
        name: TRANSACTION_STATE_TOPIC.to_string(),
        partitions: TRANSACTION_STATE_PARTITIONS,
        replication_factor: -1,
        manual_assignment: Vec::new(),
        configs: vec![
            ("cleanup.policy".to_string(), Some("compact".to_string())),
            ("retention.ms".to_string(), Some("-1".to_string())),
            // Kafka's transaction.state.log.segment.bytes.
            ("segment.bytes".to_string(), Some("104857600".to_string())),
        ],
    }
}

/// Every `PUBLISH_INTERVAL`, hands the other shards this shard's quota usage, when it has
/// any (or had some the last time). Holds the services weakly, as the controller follower
/// does.
async fn publish_usage_periodically(services: std::rc::Weak<ShardServices>) {
    loop {
        let Some(clock) = services.upgrade().map(|services| services.clock.clone()) else {
            return;
        };
        clock.sleep(PUBLISH_INTERVAL).await;
        let Some(services) = services.upgrade() else {
            return;
        };
        if services.shutdown.is_started() {
            return;
        }
        let now_ms = u64::try_from(services.clock.now_ms()).unwrap_or(0);
        if let Some(usage) = services.quotas.usage_to_publish(now_ms) {
            services.publish_usage(&usage).await;
        }
    }
}

/// Removes the segments retention lets go, every `Limits::retention_check_interval`.
pub async fn enforce_retention_periodically(shard: Rc<ShardServices>) {
    loop {
        shard
            .clock
            .sleep(shard.config.limits.retention_check_interval)
            .await;
        let mut outcomes = Vec::new();
        for (tp, log) in shard.partitions.online_logs() {
            match log.enforce_retention().await {
                Ok(0) => {}
                outcome => outcomes.push((tp, outcome)),
            }
        }
        if let Some(replicas) = &shard.replicas {
            outcomes.extend(replicas.enforce_retention().await);
        }
        for (tp, outcome) in outcomes {
            match outcome {
                Ok(0) => {}
                Ok(segments) => {
                    tracing::info!(partition = %tp, segments, "retention removed segments");
                }
                Err(error) => tracing::error!(partition = %tp, %error, "retention failed"),
            }
        }
    }
}

/// Puts the shard's idle partition logs to sleep (the storage crate's `dormancy.rs`): every
/// half of `Limits::log_dormant_after`, each log unused for that long closes its files and
/// drops its buffers. One synchronous check per log, no task per log: 10,000 partitions
/// cost a few milliseconds per sweep.
pub async fn put_idle_logs_to_sleep_periodically(shard: Rc<ShardServices>) {
    let idle_after = shard.config.limits.log_dormant_after;
    loop {
        shard.clock.sleep(idle_after / 2).await;
        let mut dozed = 0_usize;
        for (_, log) in shard.partitions.online_logs() {
            if log.doze_if_idle(idle_after) == crate::storage::Doze::Dozed {
                dozed += 1;
            }
        }
        if let Some(replicas) = &shard.replicas {
            dozed += replicas.doze_idle_logs(idle_after);
        }
        if dozed > 0 {
            tracing::debug!(shard = shard.shard_id, dozed, "partition logs went dormant");
        }
    }
}

/// The shard's [`crate::producer_state::TxnVerifier`]: [`ShardServices::verify_in_transaction`]
/// while the shard lives (a retriable refusal once it is gone, during shutdown).
fn txn_verifier(services: std::rc::Weak<ShardServices>) -> crate::producer_state::TxnVerifier {
    Rc::new(move |id, producer_id, epoch, tp| {
        let services = services.clone();
        Box::pin(async move {
            match services.upgrade() {
                Some(services) => {
                    services
                        .verify_in_transaction(id, producer_id, epoch, tp)
                        .await
                }
                None => crate::error_codes::NOT_ENOUGH_REPLICAS,
            }
        })
    })
}

/// Closes every partition log of the shard (the end of its shutdown).
pub async fn close_partitions(shard: &ShardServices) {
    let mut logs = shard.partitions.online_logs();
    if let Some(replicas) = &shard.replicas {
        // No round may write to a log being closed: the driver stops first (its waiting
        // produce calls are answered NOT_LEADER_OR_FOLLOWER; nothing unacknowledged is
        // promised, and Raft recovers the rest from the hard state and the logs).
        replicas.stop();
        logs.extend(replicas.hosted_logs());
    }
    let closes = logs.into_iter().map(|(tp, log)| async move {
        if let Err(error) = log.close().await {
            tracing::error!(partition = %tp, %error, "closing the partition log failed");
        }
    });
    futures::stream::iter(closes)
        .buffer_unordered(PARTITION_OPENS_IN_FLIGHT_MAX)
        .collect::<()>()
        .await;
    tracing::info!(
        shard = shard.shard_id,
        "shard stopped; partition logs closed"
    );
}

/// Varies the first fetch session ids a shard hands out from one start to the next, so a
/// client still holding a session of the broker's previous run is answered
/// `FETCH_SESSION_ID_NOT_FOUND` rather than matched to a stranger's session (Kafka draws
/// its ids at random for the same reason).
fn session_id_seed(shard_id: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (shard_id as u64).rotate_left(32) ^ u64::from(std::process::id())
}

/// A store of the data directory that only shard 0 owns (ACLs, SCRAM credentials, quotas):
/// loaded there, behind the async lock its changes take; `None` on every other shard, whose
/// `load` future is dropped unpolled.
async fn shard0_store<T>(
    shard_id: usize,
    load: impl std::future::Future<Output = Result<T, String>>,
) -> Result<Option<futures::lock::Mutex<T>>, String> {
    if shard_id != 0 {
        return Ok(None);
    }
    Ok(Some(futures::lock::Mutex::new(load.await?)))
}
