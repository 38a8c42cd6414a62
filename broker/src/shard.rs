//! A shard: one pinned glommio executor that owns a set of partitions and serves the
//! connections it accepted. `Shard` is the per-shard context every task of that executor
//! shares through an `Rc`; nothing in it is shared with other threads except the immutable
//! metadata snapshots and the mesh channels.
//!
//! Lifecycle (`run`): join the meshes → (shard 0) recover the controller and publish the
//! metadata, (others) wait for the first snapshot → listen → on shutdown stop accepting,
//! let connections finish, wait until every shard has drained (cross-shard requests may
//! still arrive until then), close every partition log → return.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{join_all, LocalBoxFuture};
use futures::StreamExt;
use glommio::sync::{Gate, Semaphore};
use uuid::Uuid;

use crate::admission::ConnectionCounts;
use crate::config::BrokerConfig;
use crate::controller::store::MetadataStore;
use crate::controller::{Controller, ControllerCall, ControllerReply, PlacementRules};
use crate::disk::{BrokerDisk, PartitionLog};
use crate::groups::{GroupCoordinator, GroupEnvelope, GroupReply};
use crate::metadata::{MetadataSnapshot, TopicMetadata, TopicPartition};
use crate::metrics::{ScrapeRequest, ShardMetrics};
use crate::partition::{self, PartitionCall, PartitionReply, PartitionSlot, PartitionTable};
use crate::router::{
    self, CrossShardCounts, IncomingCalls, MeshPair, ShardCall, ShardReply, ShardRouter,
};
use crate::storage::Clock;

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

/// Per-shard context. Owned by one executor thread; see the module docs.
pub struct Shard {
    pub id: usize,
    pub config: Arc<BrokerConfig>,
    /// Where every file of this shard's services lives: its partition logs and, on shard 0,
    /// the controller's and producer-id files (`disk.rs`).
    pub disk: BrokerDisk,
    /// Where every service of this shard reads time and sleeps (`storage::clock`): the
    /// system's in the binary, a simulated one in `simulation`.
    pub clock: Clock,
    metadata: RefCell<Arc<MetadataSnapshot>>,
    pub partitions: PartitionTable,
    /// The consumer groups whose `__consumer_offsets` partition this shard owns.
    pub groups: GroupCoordinator,
    /// What this shard counts; read only by its own metrics snapshots.
    pub metrics: Rc<ShardMetrics>,
    router: Rc<ShardRouter>,
    controller: Option<Controller>,
    /// Open connections across every shard (`max.connections`, `max.connections.per.ip`).
    pub connection_counts: Arc<ConnectionCounts>,
    /// Bytes of request frames this shard may hold at once (`Limits::shard_inflight_request_bytes_max`).
    pub request_budget: Rc<Semaphore>,
    /// Bytes of Fetch responses this shard may assemble at once (`Limits::shard_fetch_bytes_max`).
    pub fetch_budget: Rc<Semaphore>,
    /// Closed (never signalled) when shutdown starts: waiters see an error and stop.
    shutdown: Rc<Semaphore>,
    /// Closed when the first metadata snapshot has been applied.
    metadata_ready: Rc<Semaphore>,
    /// One permit: snapshots are applied one at a time, in arrival order (opening a
    /// partition awaits, and a second apply must not see it half-opened).
    one_apply_at_a_time: Rc<Semaphore>,
}

impl Shard {
    pub fn metadata(&self) -> Arc<MetadataSnapshot> {
        self.metadata.borrow().clone()
    }

    /// Resolves once shutdown has started. Cancel-safe; race it with long waits.
    pub async fn shutdown_started(&self) {
        let _ = self.shutdown.acquire(1).await;
    }

    /// Calls this shard has exchanged with the others over the mesh (for metrics).
    pub fn cross_shard_counts(&self) -> CrossShardCounts {
        self.router.counts()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.try_acquire(1).is_err()
    }

    /// Runs `call` on the partition's owner: directly when that is this shard, else over the
    /// mesh. `None` when the owner is gone (only during shutdown).
    pub async fn partition_call(
        &self,
        owner: usize,
        call: PartitionCall,
    ) -> Option<PartitionReply> {
        if owner == self.id {
            return Some(partition::execute(&self.partitions, call).await);
        }
        match self.router.call(owner, ShardCall::Partition(call)).await {
            Ok(ShardReply::Partition(reply)) => Some(reply),
            Ok(other) => panic!("shard {owner} answered a partition call with {other:?}"),
            Err(gone) => {
                tracing::warn!(%gone, "partition call not answered");
                None
            }
        }
    }

    /// Dispatches `call` to the partition's owner now and returns the wait for its reply:
    /// locally it takes its place at the partition (`partition::dispatch`), remotely it is
    /// sent behind the calls dispatched to that shard before it
    /// (`ShardRouter::call_in_order`). Produce calls dispatched one after the other are
    /// therefore appended in that order. `None` when the owner is gone (only during shutdown).
    pub fn dispatch_partition_call(
        self: &Rc<Self>,
        owner: usize,
        call: PartitionCall,
    ) -> LocalBoxFuture<'static, Option<PartitionReply>> {
        if owner == self.id {
            let dispatched = partition::dispatch(&self.partitions, call);
            let shard = self.clone();
            return Box::pin(async move { Some(dispatched.run(&shard.partitions).await) });
        }
        let reply = self.router.call_in_order(owner, ShardCall::Partition(call));
        Box::pin(async move {
            match reply.await {
                Ok(ShardReply::Partition(reply)) => Some(reply),
                Ok(other) => panic!("shard {owner} answered a partition call with {other:?}"),
                Err(gone) => {
                    tracing::warn!(%gone, "partition call not answered");
                    None
                }
            }
        })
    }

    /// Runs a group call on the group's coordinator shard `owner`, locally or over the mesh.
    /// `None` when the owner is gone (only during shutdown).
    pub async fn group_call(
        self: &Rc<Self>,
        owner: usize,
        envelope: GroupEnvelope,
    ) -> Option<GroupReply> {
        if owner == self.id {
            return Some(self.groups.execute(self, envelope).await);
        }
        match self.router.call(owner, ShardCall::Group(envelope)).await {
            Ok(ShardReply::Group(reply)) => Some(reply),
            Ok(other) => panic!("shard {owner} answered a group call with {other:?}"),
            Err(_) => None,
        }
    }

    /// Sends a topic change to the controller on shard 0 and waits until every shard has the
    /// resulting metadata.
    pub async fn controller_call(self: &Rc<Self>, call: ControllerCall) -> Option<ControllerReply> {
        if self.id == 0 {
            return Some(self.run_controller(call).await);
        }
        match self.router.call(0, ShardCall::Controller(call)).await {
            Ok(ShardReply::Controller(reply)) => Some(reply),
            Ok(other) => panic!("shard 0 answered a controller call with {other:?}"),
            Err(_) => None,
        }
    }

    /// Everything another shard can ask of this one arrives here, in the order each peer sent
    /// it. A partition call is dispatched at once, before the returned future is first
    /// polled, so produce calls take their places at their partitions in that order.
    fn execute_call(self: Rc<Self>, call: ShardCall) -> LocalBoxFuture<'static, ShardReply> {
        let ShardCall::Partition(call) = call else {
            return Box::pin(self.execute_other_call(call));
        };
        self.check_ownership_on_receipt(call.tp());
        let dispatched = partition::dispatch(&self.partitions, call);
        Box::pin(async move { ShardReply::Partition(dispatched.run(&self.partitions).await) })
    }

    async fn execute_other_call(self: Rc<Self>, call: ShardCall) -> ShardReply {
        match call {
            ShardCall::Partition(_) => unreachable!("dispatched by execute_call"),
            ShardCall::Controller(call) => ShardReply::Controller(self.run_controller(call).await),
            ShardCall::ApplyMetadata(snapshot) => {
                self.apply_metadata(snapshot).await;
                ShardReply::MetadataApplied
            }
            ShardCall::Group(envelope) => {
                ShardReply::Group(self.groups.execute(&self, envelope).await)
            }
        }
    }

    /// A partition call from another shard must be for a partition this shard owns. The
    /// sender routed by its own snapshot, which can be one change behind ours (a topic just
    /// deleted), so a miss is answered as data (`NOT_LEADER_OR_FOLLOWER` from the table);
    /// what must never happen is a call for a partition our current metadata places on a
    /// different shard while we also hold it open.
    fn check_ownership_on_receipt(&self, tp: &TopicPartition) {
        let placed_on = self.metadata().owner_of(&tp.topic, tp.partition);
        let held_here = self.partitions.log(tp).is_ok();
        assert!(
            !(held_here
                && placed_on.is_some_and(|owner| owner != self.id)
                && !self.is_applying_metadata()),
            "shard {} holds {tp} open but the metadata places it on shard {placed_on:?}",
            self.id
        );
        if !held_here {
            tracing::debug!(shard = self.id, partition = %tp, ?placed_on, "partition call for a partition this shard does not hold");
        }
    }

    fn is_applying_metadata(&self) -> bool {
        self.one_apply_at_a_time.available() == 0
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

    /// Shard 0: hands `snapshot` to every shard and waits until all have applied it.
    async fn publish(self: &Rc<Self>, snapshot: Arc<MetadataSnapshot>) {
        let applies = (0..self.config.shard_count()).map(|shard| {
            let snapshot = snapshot.clone();
            async move {
                if shard == self.id {
                    self.apply_metadata(snapshot).await;
                } else if let Err(gone) = self
                    .router
                    .call(shard, ShardCall::ApplyMetadata(snapshot))
                    .await
                {
                    tracing::warn!(%gone, "metadata not applied");
                }
            }
        });
        join_all(applies).await;
    }

    /// The one place a shard changes which partitions it owns: remove what the snapshot no
    /// longer places here, open what is new, update configs, install the snapshot, then drop
    /// the committed offsets of deleted topics from the groups this shard coordinates.
    async fn apply_metadata(self: &Rc<Self>, snapshot: Arc<MetadataSnapshot>) {
        let _turn = self
            .one_apply_at_a_time
            .acquire_permit(1)
            .await
            .expect("never closed");
        let previous = self.metadata();
        if snapshot.epoch <= previous.epoch && previous.epoch != 0 {
            return;
        }
        let wanted: HashMap<TopicPartition, Arc<TopicMetadata>> = snapshot
            .partitions_on(self.id)
            .map(|(tp, topic)| (tp, topic.clone()))
            .collect();
        let owned: HashMap<TopicPartition, Uuid> = self.partitions.owned().into_iter().collect();
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
                log.set_config(topic.config.log_config());
            }
        }
        let deleted_topics: BTreeSet<String> = previous
            .topics
            .iter()
            .filter(|(name, old)| snapshot.topic(name).is_none_or(|new| new.id != old.id))
            .map(|(name, _)| name.to_string())
            .collect();
        *self.metadata.borrow_mut() = snapshot;
        self.metadata_ready.close();
        if !deleted_topics.is_empty() {
            // Before DeleteTopics is answered, so a client that deletes and recreates a
            // topic never sees its groups start at the old topic's offsets.
            self.groups
                .forget_deleted_topics(self, &deleted_topics)
                .await;
        }
    }

    async fn open_partition(&self, tp: TopicPartition, topic: Arc<TopicMetadata>) {
        let dir = partition_dir(&self.config.data_dir, &tp);
        let opened = PartitionLog::open_on(
            self.disk.clone(),
            &dir,
            topic.config.log_config(),
            self.clock.clone(),
        );
        let slot = match opened.await {
            Ok((log, report)) => {
                tracing::info!(partition = %tp, shard = self.id, ?report, "partition open");
                log.observe_fdatasync_latency(self.metrics.fdatasync_observer());
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

/// Kafka's layout: `<data-dir>/<topic>-<partition>`. Topic names cannot contain `/`.
pub fn partition_dir(data_dir: &std::path::Path, tp: &TopicPartition) -> PathBuf {
    data_dir.join(format!("{}-{}", tp.topic, tp.partition))
}

/// Everything one shard's thread is started with.
pub struct ShardStart {
    pub config: Arc<BrokerConfig>,
    pub meshes: MeshPair,
    pub shutdown_requested: oneshot::Receiver<()>,
    /// Shards that have finished their connections; the barrier before logs close.
    pub drained_shards: Arc<AtomicUsize>,
    /// Shared by every shard: open connections in total and per client address.
    pub connection_counts: Arc<ConnectionCounts>,
    /// Tells `main` this shard is listening.
    pub listening: std::sync::mpsc::Sender<usize>,
    /// The admin thread's requests for this shard's metrics snapshot.
    pub scrapes: futures::channel::mpsc::Receiver<ScrapeRequest>,
}

/// The body of one shard's executor. Returns when the shard has shut down cleanly.
pub async fn run(start: ShardStart) -> Result<(), String> {
    let ShardStart {
        config,
        meshes,
        shutdown_requested,
        drained_shards,
        connection_counts,
        listening,
        scrapes,
    } = start;
    // The real disk and clock: a shard started on its own thread by `server` cannot be handed
    // a `SimDisk` or `SimClock` (single-thread handles, not `Send`); simulations start
    // services on theirs with `start_services`.
    let shard = start_services(
        config.clone(),
        BrokerDisk::default(),
        Clock::System,
        router::join(meshes).await,
        connection_counts,
        scrapes,
    )
    .await?;
    let id = shard.id;
    forward_shutdown(&shard, shutdown_requested);
    let listener = crate::server::shard_listener(config.listen)
        .map_err(|error| format!("shard {id}: cannot listen on {}: {error}", config.listen))?;
    let connections = Rc::new(Gate::new());
    let accepting = glommio::spawn_local(crate::connection::accept_loop(
        shard.clone(),
        listener,
        connections.clone(),
    ));
    let retention = glommio::spawn_local(enforce_retention_periodically(shard.clone()));
    let _ = listening.send(id);
    shard.shutdown_started().await;
    drop(accepting);
    drop(retention);
    let _ = connections.close().await;
    drained_shards.fetch_add(1, Ordering::SeqCst);
    while drained_shards.load(Ordering::SeqCst) < config.shard_count() {
        // Shutdown only: peers may still send partition calls until they have drained.
        shard.clock.sleep(Duration::from_millis(5)).await;
    }
    close_partitions(&shard).await;
    Ok(())
}

/// Everything of a shard but its sockets: recovers the controller (shard 0), builds the
/// shard's services on `disk` and `clock`, serves the calls of the other shards and returns
/// once this shard has applied the first metadata snapshot (shard 0 publishes it). The
/// binary calls it from `run`; the simulation calls it on a simulated disk and clock.
pub async fn start_services(
    config: Arc<BrokerConfig>,
    disk: BrokerDisk,
    clock: Clock,
    (router, incoming): (ShardRouter, IncomingCalls),
    connection_counts: Arc<ConnectionCounts>,
    scrapes: futures::channel::mpsc::Receiver<ScrapeRequest>,
) -> Result<Rc<Shard>, String> {
    let id = router.shard_id();
    let controller = if id == 0 {
        Some(recover_controller(&config, &disk).await?)
    } else {
        None
    };
    let shard = Rc::new(Shard {
        id,
        config: config.clone(),
        disk: disk.clone(),
        clock: clock.clone(),
        metadata: RefCell::new(Arc::new(MetadataSnapshot::default())),
        partitions: PartitionTable::new(config.limits.shard_fetch_waits_parked_max),
        groups: GroupCoordinator::new(clock),
        metrics: Rc::default(),
        router: Rc::new(router),
        controller,
        connection_counts,
        request_budget: Rc::new(Semaphore::new(
            config.limits.shard_inflight_request_bytes_max as u64,
        )),
        fetch_budget: Rc::new(Semaphore::new(config.limits.shard_fetch_bytes_max as u64)),
        shutdown: Rc::new(Semaphore::new(0)),
        metadata_ready: Rc::new(Semaphore::new(0)),
        one_apply_at_a_time: Rc::new(Semaphore::new(1)),
    });
    let reporter = Rc::downgrade(&shard);
    shard
        .partitions
        .set_offline_listener(Box::new(move |tp, topic_id| {
            let reporter = reporter.clone();
            glommio::spawn_local(async move {
                if let Some(shard) = reporter.upgrade() {
                    shard
                        .controller_call(ControllerCall::ReportOffline { tp, topic_id })
                        .await;
                }
            })
            .detach();
        }));
    glommio::spawn_local(crate::metrics::snapshot::serve_scrapes(
        Rc::downgrade(&shard),
        scrapes,
    ))
    .detach();
    let executor_shard = shard.clone();
    router::serve_incoming(&shard.router, incoming, move |call| {
        executor_shard.clone().execute_call(call)
    });
    if let Some(controller) = &shard.controller {
        shard.publish(controller.snapshot()).await;
    } else {
        let _ = shard.metadata_ready.acquire(1).await;
    }
    Ok(shard)
}

async fn recover_controller(
    config: &BrokerConfig,
    disk: &BrokerDisk,
) -> Result<Controller, String> {
    let rules = PlacementRules {
        shard_count: config.shard_count(),
        default_partitions: config.default_partitions,
        limits: config.limits.clone(),
        topic_defaults: config.topic_defaults.clone(),
    };
    Controller::recover(MetadataStore::new(disk.clone(), &config.data_dir), rules)
        .await
        .map_err(|error| error.to_string())
}

/// The signal thread completes `shutdown_requested`; turn that into the local broadcast.
fn forward_shutdown(shard: &Rc<Shard>, shutdown_requested: oneshot::Receiver<()>) {
    let shutdown = shard.shutdown.clone();
    glommio::spawn_local(async move {
        let _ = shutdown_requested.await;
        shutdown.close();
    })
    .detach();
}

async fn enforce_retention_periodically(shard: Rc<Shard>) {
    loop {
        shard
            .clock
            .sleep(shard.config.limits.retention_check_interval)
            .await;
        for (tp, log) in shard.partitions.online_logs() {
            match log.enforce_retention().await {
                Ok(0) => {}
                Ok(segments) => {
                    tracing::info!(partition = %tp, segments, "retention removed segments");
                }
                Err(error) => tracing::error!(partition = %tp, %error, "retention failed"),
            }
        }
    }
}

async fn close_partitions(shard: &Shard) {
    let closes = shard
        .partitions
        .online_logs()
        .into_iter()
        .map(|(tp, log)| async move {
            if let Err(error) = log.close().await {
                tracing::error!(partition = %tp, %error, "closing the partition log failed");
            }
        });
    futures::stream::iter(closes)
        .buffer_unordered(PARTITION_OPENS_IN_FLIGHT_MAX)
        .collect::<()>()
        .await;
    tracing::info!(shard = shard.id, "shard stopped; partition logs closed");
}
