//! The controller: the single owner of topics, partition → shard placement and topic
//! configs. It lives on shard 0. Every change goes through `Controller::execute`, one at a
//! time (a local semaphore of one permit serialises them; no cross-thread lock): compute the
//! new state with the pure functions in `changes`, persist it, then push the resulting
//! snapshot to every shard and wait until each has applied it. Only then is the client
//! answered, so a topic is usable everywhere once `CreateTopics` returns.

mod calls;
pub mod changes;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use uuid::Uuid;

use crate::error_codes as codes;
use crate::metadata::{MetadataSnapshot, TopicMetadata, TopicPartition};
use crate::topic_config::TopicConfig;
pub use calls::{
    ConfigChange, ConfigOperation, ControllerCall, ControllerReply, NewTopic, PlacementRules,
    TopicOutcome, TopicRef,
};
use store::{ClusterState, MetadataStore};

/// Shard 0's controller. See the module docs for the one-change-at-a-time contract.
pub struct Controller {
    state: RefCell<ClusterState>,
    store: MetadataStore,
    one_change_at_a_time: Rc<glommio::sync::Semaphore>,
    rules: PlacementRules,
    /// Partitions whose owner reported their log unusable (see `ReportOffline`).
    offline: RefCell<BTreeSet<TopicPartition>>,
    /// Epoch of the last snapshot built; shards ignore snapshots older than theirs.
    snapshot_epoch: Cell<u64>,
}

impl Controller {
    /// Loads the persisted state, or creates and persists a fresh cluster.
    pub async fn recover(
        store: MetadataStore,
        rules: PlacementRules,
    ) -> Result<Self, store::StoreError> {
        let state = if let Some(state) = store.load().await? {
            state
        } else {
            let fresh = ClusterState {
                epoch: 1,
                cluster_id: format!("ringfeed-{}", Uuid::new_v4().simple()),
                topics: Vec::new(),
            };
            store.persist(&fresh).await?;
            fresh
        };
        tracing::info!(epoch = state.epoch, topics = state.topics.len(), cluster_id = %state.cluster_id, "controller state recovered");
        Ok(Self {
            state: RefCell::new(state),
            store,
            one_change_at_a_time: Rc::new(glommio::sync::Semaphore::new(1)),
            rules,
            offline: RefCell::new(BTreeSet::new()),
            snapshot_epoch: Cell::new(0),
        })
    }

    pub fn snapshot(&self) -> Arc<MetadataSnapshot> {
        self.snapshot_epoch.set(self.snapshot_epoch.get() + 1);
        let mut snapshot = build_snapshot(&self.state.borrow(), &self.rules);
        snapshot.epoch = self.snapshot_epoch.get();
        snapshot
            .offline_partitions
            .clone_from(&self.offline.borrow());
        Arc::new(snapshot)
    }

    /// Records an offline partition of a topic that still exists; returns whether the
    /// published metadata must change.
    fn mark_offline(&self, tp: TopicPartition, topic_id: Uuid) -> bool {
        let exists =
            self.state.borrow().topics.iter().any(|topic| {
                topic.name.as_str() == &*tp.topic && topic.id == topic_id.into_bytes()
            });
        exists && self.offline.borrow_mut().insert(tp)
    }

    /// Applies one change: validate, persist, and return the snapshot to publish (None
    /// when nothing changed). The caller publishes while still holding `ChangeTurn`.
    pub async fn execute(
        &self,
        call: ControllerCall,
    ) -> (ControllerReply, Option<Arc<MetadataSnapshot>>, ChangeTurn) {
        let turn = ChangeTurn {
            _permit: self
                .one_change_at_a_time
                .acquire_static_permit(1)
                .await
                .expect("never closed"),
        };
        if let ControllerCall::ReportOffline { tp, topic_id } = call {
            let changed = self.mark_offline(tp, topic_id);
            let reply = ControllerReply {
                outcomes: Vec::new(),
            };
            return (reply, changed.then(|| self.snapshot()), turn);
        }
        let current = self.state.borrow().clone();
        let mut next = current.clone();
        let outcomes = changes::apply(&mut next, call, &self.rules);
        if next == current {
            return (ControllerReply { outcomes }, None, turn);
        }
        next.epoch += 1;
        if let Err(error) = self.store.persist(&next).await {
            tracing::error!(%error, "cannot persist cluster metadata; change refused");
            let outcomes = outcomes
                .into_iter()
                .map(|outcome| outcome.failed(codes::KAFKA_STORAGE_ERROR, error.to_string()))
                .collect();
            return (ControllerReply { outcomes }, None, turn);
        }
        // A deleted topic takes its offline marks with it (a recreated one starts online).
        self.offline.borrow_mut().retain(|tp| {
            next.topics
                .iter()
                .any(|topic| topic.name.as_str() == &*tp.topic)
        });
        *self.state.borrow_mut() = next;
        (ControllerReply { outcomes }, Some(self.snapshot()), turn)
    }
}

/// Held while a change is computed, persisted and published; the next change waits for it.
pub struct ChangeTurn {
    _permit: glommio::sync::StaticPermit,
}

/// Builds the immutable view shards read. Placement recorded for more shards than run now
/// (a restart with fewer `--shards`) folds onto the running ones.
pub fn build_snapshot(state: &ClusterState, rules: &PlacementRules) -> MetadataSnapshot {
    let topics = state
        .topics
        .iter()
        .map(|record| {
            let name: Arc<str> = Arc::from(record.name.as_str());
            let overrides: BTreeMap<String, String> = record
                .overrides
                .iter()
                .map(|entry| (entry.key.clone(), entry.value.clone()))
                .collect();
            let topic = TopicMetadata {
                name: name.clone(),
                id: Uuid::from_bytes(record.id),
                partition_shards: record
                    .partition_shards
                    .iter()
                    .map(|shard| *shard as usize % rules.shard_count)
                    .collect(),
                config: TopicConfig::resolve(&overrides, &rules.topic_defaults),
                overrides,
            };
            (name, Arc::new(topic))
        })
        .collect();
    MetadataSnapshot {
        epoch: 0,
        cluster_id: state.cluster_id.clone(),
        topics,
        offline_partitions: BTreeSet::new(),
    }
}
