//! The controller: the single owner of topics, partition → shard placement and topic
//! configs, and on a broker of a cluster of the ACLs, SCRAM credentials and client quotas
//! (`security`). It lives on shard 0. Every change goes through `Controller::execute`, one at a
//! time (a local semaphore of one permit serialises them; no cross-thread lock): compute the
//! new state with the pure functions in `changes`, persist it, then push the resulting
//! snapshot to every shard and wait until each has applied it. Only then is the client
//! answered, so a topic is usable everywhere once `CreateTopics` returns.

mod calls;
pub mod changes;
pub mod election_mail;
pub mod forwarding;
pub mod leadership;
pub mod placement;
pub mod producer_ids;
pub mod reassignment;
pub mod registry;
pub mod security;
pub mod store;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use uuid::Uuid;

use crate::cluster::controller_group::{ControllerGroup, ProposalError};
use crate::disk::BrokerDisk;
use crate::error_codes as codes;
use crate::metadata::{
    BrokerEndpoints, MetadataSnapshot, PartitionMetadata, TopicMetadata, TopicPartition,
    OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC,
};
use crate::producer_state::GrantedBlocks;
use crate::topic_config::TopicConfig;
use crate::transactions::marker_mail;
pub use calls::{
    ConfigChange, ConfigOperation, ControllerCall, ControllerReply, NewPartitions, NewTopic,
    PartitionReassignment, PlacementRules, TopicOutcome, TopicRef,
};
use store::{ClusterState, MetadataStore, PartitionRecord};

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
    /// Group 0 when this broker is one of several voters (`cluster::controller_group`):
    /// changes are proposed there instead of written to `cluster.meta`. None: one node.
    replicated: Option<Replicated>,
    /// A cluster broker's data directory ACL, credential and quota files, folded into the
    /// state once per cluster by the first leader (`security::seed`).
    security_seed: RefCell<security::SecuritySets>,
    /// The security records last handed to this broker's shards (`security_to_install`).
    installed_security: RefCell<Option<store::SecurityRecords>>,
    /// Security changes forwarded to or from this broker (`forwarding`).
    forwards: Forwards,
}

/// What a broker keeps of the mail other brokers sent it beside heartbeats: forwarded
/// security changes (`forwarding`), election asks and transaction markers.
#[derive(Default)]
struct Forwards {
    next_id: Cell<u64>,
    /// This broker's changes sent to the leader, waiting for its reply.
    waiting: RefCell<HashMap<u64, oneshot::Sender<forwarding::ForwardReply>>>,
    /// Changes other brokers forwarded to this leader, not yet run: (sender, request).
    received: RefCell<Vec<(u64, forwarding::ForwardRequest)>>,
    /// Partitions whose preferred replica is on this broker that another broker's
    /// `ElectLeaders` asked to move here (`election_mail`), not yet claimed.
    elections: RefCell<Vec<crate::metadata::TopicPartition>>,
    /// Transaction markers for partitions this broker leads and the replies to this
    /// broker's own (`transactions::marker_mail`), not yet taken: (sender, mail).
    markers: RefCell<Vec<(u64, marker_mail::MarkerMail)>>,
}

/// Election asks a broker holds before its next claim (50 ms apart); more are dropped, and
/// their senders ask again while they wait.
const ELECTIONS_RECEIVED_MAX: usize = 16_384;

/// Forwarded changes a leader holds before running them; more are answered
/// `REQUEST_TIMED_OUT` by their senders' timeout.
const FORWARDS_RECEIVED_MAX: usize = 256;

/// The controller's part in group 0.
pub struct Replicated {
    pub group: Rc<ControllerGroup<BrokerDisk>>,
    /// The latest committed state not yet adopted (written by the group's commit callback).
    pub committed: Rc<RefCell<Option<ClusterState>>>,
    /// Whether any state was ever committed (else the first leader proposes its own).
    pub has_committed_state: Cell<bool>,
    /// What this broker registers as (`registry`), sent with every heartbeat.
    pub registration: store::BrokerRecord,
    /// When each broker was last heard from; read while this broker leads group 0.
    pub liveness: RefCell<registry::Liveness>,
    /// A `CreateTopics` of `__consumer_offsets` reached this broker while it did not lead:
    /// the next heartbeat asks the controller to create it.
    pub wants_offsets_topic: Cell<bool>,
    /// The same for `__transaction_state` (a transactional client's `FindCoordinator` at
    /// a broker that is not the controller).
    pub wants_transaction_state_topic: Cell<bool>,
    /// Leadership changes of groups this broker leads, sent with every heartbeat until the
    /// committed state shows them (`leadership`).
    pub leadership: RefCell<leadership::PendingReports>,
    /// A leadership change was queued since the last heartbeat: send one now.
    pub leadership_urgent: Cell<bool>,
    /// Producer-id blocks granted to this broker (`producer_ids`), shared with shard 0's
    /// producer-id allocator.
    pub producer_ids: Rc<GrantedBlocks>,
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
                ..ClusterState::default()
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
            replicated: None,
            security_seed: RefCell::default(),
            installed_security: RefCell::default(),
            forwards: Forwards::default(),
        })
    }

    /// The controller of a broker among several voters: its state is the last one committed
    /// in group 0 (`recovered`), or a fresh one until the first leader commits its own.
    pub fn replicated(
        store: MetadataStore,
        rules: PlacementRules,
        replicated: Replicated,
        recovered: Option<ClusterState>,
    ) -> Self {
        replicated.has_committed_state.set(recovered.is_some());
        let state = recovered.unwrap_or_else(|| ClusterState {
            epoch: 1,
            cluster_id: format!("ringfeed-{}", Uuid::new_v4().simple()),
            ..ClusterState::default()
        });
        Self {
            state: RefCell::new(state),
            store,
            one_change_at_a_time: Rc::new(glommio::sync::Semaphore::new(1)),
            rules,
            offline: RefCell::new(BTreeSet::new()),
            snapshot_epoch: Cell::new(0),
            replicated: Some(replicated),
            security_seed: RefCell::default(),
            installed_security: RefCell::default(),
            forwards: Forwards::default(),
        }
    }

    /// What a cluster broker's files hold, for the first leader to seed the cluster with.
    pub fn set_security_seed(&self, local: security::SecuritySets) {
        *self.security_seed.borrow_mut() = local;
    }

    /// On a cluster broker, the ACLs, credentials and quotas of the controller's state when
    /// they differ from those last returned (the caller installs them on every shard);
    /// None otherwise (a one-node broker keeps its files' stores).
    pub fn security_to_install(&self) -> Option<security::SecuritySets> {
        self.replicated.as_ref()?;
        let state = self.state.borrow();
        let mut installed = self.installed_security.borrow_mut();
        if installed.as_ref() == Some(&state.security) {
            return None;
        }
        *installed = Some(state.security.clone());
        Some(security::sets_of(&state.security))
    }

    pub fn replication(&self) -> Option<&Replicated> {
        self.replicated.as_ref()
    }

    /// The broker leading the controller: this one in a one-node cluster, group 0's leader
    /// otherwise (-1 while none is known).
    pub fn controller_id(&self) -> i32 {
        match &self.replicated {
            None => self.rules.node_id,
            Some(replicated) => replicated
                .group
                .leader()
                .and_then(|leader| i32::try_from(leader).ok())
                .unwrap_or(-1),
        }
    }

    /// Takes the latest committed state of group 0 as this broker's, if one arrived; returns
    /// the snapshot to publish (the caller publishes while holding the turn).
    pub async fn adopt_committed(&self) -> Option<(Arc<MetadataSnapshot>, ChangeTurn)> {
        let replicated = self.replicated.as_ref()?;
        replicated.committed.borrow().as_ref()?;
        let turn = self.take_turn().await;
        let state = replicated.committed.borrow_mut().take()?;
        replicated.has_committed_state.set(true);
        self.committed(replicated, &state);
        if *self.state.borrow() == state {
            return None;
        }
        self.forget_offline_of_deleted(&state);
        *self.state.borrow_mut() = state;
        Some((self.snapshot(), turn))
    }

    /// The first leader of a new cluster commits its state as the cluster's (its id is then
    /// every broker's cluster id). Does nothing elsewhere or once a state is committed.
    /// Returns the snapshot to publish (now with the cluster id) when it committed.
    pub async fn commit_genesis(&self) -> Option<(Arc<MetadataSnapshot>, ChangeTurn)> {
        let replicated = self.replicated.as_ref()?;
        if replicated.has_committed_state.get() || !replicated.group.ready_to_propose() {
            return None;
        }
        let turn = self.take_turn().await;
        let mut genesis = self.state.borrow().clone();
        security::seed(&mut genesis.security, &self.security_seed.borrow());
        genesis.epoch += 1;
        match replicated.group.propose(&genesis).await {
            Ok(()) => {
                replicated.has_committed_state.set(true);
                tracing::info!(cluster_id = %genesis.cluster_id, "this broker's state committed as the cluster's first");
                *self.state.borrow_mut() = genesis;
                Some((self.snapshot(), turn))
            }
            Err(error) => {
                tracing::info!(%error, "first cluster state not committed; retrying");
                None
            }
        }
    }

    /// The leader of a cluster whose committed state predates the security records
    /// (format 3) folds its files in once (`security::seed`). Returns the snapshot to
    /// publish when it committed.
    pub async fn seed_security(&self) -> Option<(Arc<MetadataSnapshot>, ChangeTurn)> {
        let replicated = self.replicated.as_ref()?;
        let unseeded = || {
            replicated.has_committed_state.get()
                && replicated.group.ready_to_propose()
                && replicated.committed.borrow().is_none()
                && !self.state.borrow().security.seeded
        };
        if !unseeded() {
            return None;
        }
        let turn = self.take_turn().await;
        if !unseeded() {
            return None;
        }
        let mut next = self.state.borrow().clone();
        security::seed(&mut next.security, &self.security_seed.borrow());
        next.epoch += 1;
        if let Err((_, message)) = self.persist(&next).await {
            tracing::info!(%message, "security seed not committed; retrying");
            return None;
        }
        tracing::info!(
            acls = next.security.acls.len(),
            credentials = next.security.scram.len(),
            quotas = next.security.quotas.len(),
            "this broker's security files seeded the cluster's state"
        );
        self.committed(replicated, &next);
        *self.state.borrow_mut() = next;
        Some((self.snapshot(), turn))
    }

    /// Applies one `CreateAcls`, `DeleteAcls`, `AlterUserScramCredentials` or
    /// `AlterClientQuotas` of a cluster broker: computed from the committed state on group
    /// 0's leader, proposed, and answered once committed (the caller publishes the
    /// snapshot, which installs the new sets on every shard, before answering). Elsewhere,
    /// with `may_forward`, the change goes to the leader (`forward`); without (a change
    /// forwarded here) or while no leader is known every part is answered `NOT_CONTROLLER`.
    pub async fn execute_security(
        &self,
        change: security::SecurityChange,
        may_forward: bool,
    ) -> (
        security::SecurityReply,
        Option<Arc<MetadataSnapshot>>,
        ChangeTurn,
    ) {
        let turn = self.take_turn().await;
        let current = self.state.borrow().clone();
        let mut next = current.clone();
        let wire = may_forward.then(|| forwarding::WireChange::of(&change));
        let reply = security::apply(&mut next.security, change);
        let Some(replicated) = &self.replicated else {
            let message = "security changes of a one-node broker go to its files";
            return (
                reply.refused(codes::UNKNOWN_SERVER_ERROR, message, true),
                None,
                turn,
            );
        };
        if !replicated.group.ready_to_propose() {
            let leader = replicated
                .group
                .leader()
                .filter(|leader| *leader != u64::try_from(self.rules.node_id).unwrap_or(0));
            if let (Some(leader), Some(wire)) = (leader, wire) {
                drop(turn);
                return self.forward(replicated, leader, wire, reply).await;
            }
            let message = format!(
                "broker {} is not the controller; the controller is broker {}",
                self.rules.node_id,
                self.controller_id()
            );
            return (
                reply.refused(codes::NOT_CONTROLLER, &message, true),
                None,
                turn,
            );
        }
        if next == current {
            return (reply, None, turn);
        }
        next.epoch += 1;
        if let Err((code, message)) = self.persist(&next).await {
            return (reply.refused(code, &message, false), None, turn);
        }
        self.committed(replicated, &next);
        *self.state.borrow_mut() = next;
        (reply, Some(self.snapshot()), turn)
    }

    /// Sends `wire` to the leader and waits for its answer, then until this broker has
    /// adopted (and installed on its shards) the state that holds the change. `local` is
    /// the change's answer computed here, for the shape of a timeout's answer.
    async fn forward(
        &self,
        replicated: &Replicated,
        leader: u64,
        wire: forwarding::WireChange,
        local: security::SecurityReply,
    ) -> (
        security::SecurityReply,
        Option<Arc<MetadataSnapshot>>,
        ChangeTurn,
    ) {
        let id = self.forwards.next_id.get().wrapping_add(1);
        self.forwards.next_id.set(id);
        let (answer, answered) = oneshot::channel();
        self.forwards.waiting.borrow_mut().insert(id, answer);
        let request = forwarding::ForwardRequest { id, change: wire };
        replicated.group.send_mail(leader, request.encode());
        let deadline = std::time::Instant::now() + forwarding::FORWARD_TIMEOUT;
        let answered = glommio::timer::timeout(forwarding::FORWARD_TIMEOUT, async {
            Ok(answered.await.ok())
        })
        .await
        .ok()
        .flatten();
        self.forwards.waiting.borrow_mut().remove(&id);
        let Some(answer) = answered else {
            let message = format!(
                "the controller (broker {leader}) did not answer the forwarded change in {:?}",
                forwarding::FORWARD_TIMEOUT
            );
            let reply = local.refused(codes::REQUEST_TIMED_OUT, &message, true);
            return (reply, None, self.take_turn().await);
        };
        // Answer once this broker enforces the change too (its follow loop adopts and
        // publishes the state holding the turn, so taking it waits for the install).
        while self.state.borrow().epoch < answer.epoch && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        let turn = self.take_turn().await;
        if self.state.borrow().epoch < answer.epoch {
            let message = "committed by the controller, not yet applied by this broker";
            let reply = answer
                .reply
                .into_reply()
                .refused(codes::REQUEST_TIMED_OUT, message, false);
            return (reply, None, turn);
        }
        (answer.reply.into_reply(), None, turn)
    }

    /// Takes the forwarding messages out of `mail`: replies complete this broker's waiting
    /// changes; requests are kept for `take_forwarded` on the leader and answered
    /// `NOT_CONTROLLER` elsewhere. Election asks and transaction marker mail are kept for
    /// `take_elections` and `take_marker_mail`. Returns the rest (heartbeats).
    fn sort_forward_mail(
        &self,
        replicated: &Replicated,
        mail: Vec<(u64, Vec<u8>)>,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut rest = Vec::with_capacity(mail.len());
        for (from, payload) in mail {
            if let Some(election) = election_mail::ElectionMail::decode(&payload) {
                self.receive_election(from, election);
                continue;
            }
            if let Some(mail) = marker_mail::MarkerMail::decode(&payload) {
                self.receive_marker_mail(from, mail);
                continue;
            }
            match forwarding::ForwardMail::decode(&payload) {
                None => rest.push((from, payload)),
                Some(Err(reason)) => {
                    tracing::warn!(from, %reason, "dropped a forwarded change that does not decode");
                }
                Some(Ok(forwarding::ForwardMail::Reply(reply))) => {
                    if let Some(waiting) = self.forwards.waiting.borrow_mut().remove(&reply.id) {
                        let _ = waiting.send(reply);
                    }
                }
                Some(Ok(forwarding::ForwardMail::Request(request))) => {
                    self.receive_forwarded(replicated, from, request);
                }
            }
        }
        rest
    }

    /// Keeps the partitions of an election mail for [`Self::take_elections`].
    fn receive_election(&self, from: u64, election: Result<election_mail::ElectionMail, String>) {
        match election {
            Err(reason) => {
                tracing::warn!(from, %reason, "dropped an election mail that does not decode");
            }
            Ok(mail) => {
                let mut elections = self.forwards.elections.borrow_mut();
                let room = ELECTIONS_RECEIVED_MAX.saturating_sub(elections.len());
                elections.extend(mail.partitions.into_iter().take(room));
            }
        }
    }

    /// Keeps a marker mail for [`Self::take_marker_mail`]; beyond
    /// `marker_mail::RECEIVED_MAX` it is dropped (its sender times out and retries).
    fn receive_marker_mail(&self, from: u64, mail: Result<marker_mail::MarkerMail, String>) {
        match mail {
            Err(reason) => {
                tracing::warn!(from, %reason, "dropped a marker mail that does not decode");
            }
            Ok(mail) => {
                let mut markers = self.forwards.markers.borrow_mut();
                if markers.len() < marker_mail::RECEIVED_MAX {
                    markers.push((from, mail));
                } else {
                    tracing::debug!(from, "dropped a marker mail: {} held", markers.len());
                }
            }
        }
    }

    /// The transaction markers other brokers sent this one to write and the replies to
    /// those it sent (`transactions::marker_mail`), since the last call, oldest first.
    pub fn take_marker_mail(&self) -> Vec<(u64, marker_mail::MarkerMail)> {
        std::mem::take(&mut *self.forwards.markers.borrow_mut())
    }

    /// The partitions other brokers asked this one to claim the leadership of
    /// (`ElectLeaders`), since the last call.
    pub fn take_elections(&self) -> Vec<crate::metadata::TopicPartition> {
        std::mem::take(&mut *self.forwards.elections.borrow_mut())
    }

    /// Keeps a forwarded change for the leader's next round, or answers `NOT_CONTROLLER`
    /// when this broker does not lead (or holds `FORWARDS_RECEIVED_MAX` already).
    fn receive_forwarded(
        &self,
        replicated: &Replicated,
        from: u64,
        request: forwarding::ForwardRequest,
    ) {
        let mut received = self.forwards.received.borrow_mut();
        if replicated.group.ready_to_propose() && received.len() < FORWARDS_RECEIVED_MAX {
            received.push((from, request));
            return;
        }
        let Ok(change) = request.change.into_change() else {
            return;
        };
        let message = format!(
            "broker {} is not the controller; the controller is broker {}",
            self.rules.node_id,
            self.controller_id()
        );
        let reply = security::apply(&mut store::SecurityRecords::default(), change).refused(
            codes::NOT_CONTROLLER,
            &message,
            true,
        );
        let reply = forwarding::ForwardReply {
            id: request.id,
            epoch: 0,
            reply: forwarding::WireReply::of(&reply),
        };
        replicated.group.send_mail(from, reply.encode());
    }

    /// The leader: the changes other brokers forwarded, to run with `execute_security` and
    /// answer with `answer_forwarded`.
    pub fn take_forwarded(&self) -> Vec<(u64, forwarding::ForwardRequest)> {
        std::mem::take(&mut *self.forwards.received.borrow_mut())
    }

    /// The leader: answers a forwarded change; `committed` says whether it changed the state
    /// (then the sender waits until it has adopted the current epoch).
    pub fn answer_forwarded(
        &self,
        to: u64,
        id: u64,
        reply: &security::SecurityReply,
        committed: bool,
    ) {
        let Some(replicated) = &self.replicated else {
            return;
        };
        let reply = forwarding::ForwardReply {
            id,
            epoch: if committed {
                self.state.borrow().epoch
            } else {
                0
            },
            reply: forwarding::WireReply::of(reply),
        };
        replicated.group.send_mail(to, reply.encode());
    }

    async fn take_turn(&self) -> ChangeTurn {
        ChangeTurn {
            _permit: self
                .one_change_at_a_time
                .acquire_static_permit(1)
                .await
                .expect("never closed"),
        }
    }

    /// A deleted topic takes its offline marks with it (a recreated one starts online).
    fn forget_offline_of_deleted(&self, next: &ClusterState) {
        self.offline.borrow_mut().retain(|tp| {
            next.topics
                .iter()
                .any(|topic| topic.name.as_str() == &*tp.topic)
        });
    }

    /// Persists `next`: `cluster.meta` on a one-node broker, a group 0 entry otherwise.
    /// `Err` is the error code and message for every topic of the change.
    async fn persist(&self, next: &ClusterState) -> Result<(), (i16, String)> {
        let Some(replicated) = &self.replicated else {
            return self.store.persist(next).await.map_err(|error| {
                tracing::error!(%error, "cannot persist cluster metadata; change refused");
                (codes::KAFKA_STORAGE_ERROR, error.to_string())
            });
        };
        match replicated.group.propose(next).await {
            Ok(()) => {
                replicated.has_committed_state.set(true);
                Ok(())
            }
            // Clients retry a NOT_CONTROLLER at the controller Metadata names (Kafka's rule).
            Err(error @ (ProposalError::NotController { .. } | ProposalError::Superseded)) => {
                Err((codes::NOT_CONTROLLER, error.to_string()))
            }
            Err(error @ ProposalError::Storage(_)) => {
                Err((codes::KAFKA_STORAGE_ERROR, error.to_string()))
            }
            Err(error @ ProposalError::TimedOut) => {
                Err((codes::REQUEST_TIMED_OUT, error.to_string()))
            }
        }
    }

    pub fn snapshot(&self) -> Arc<MetadataSnapshot> {
        self.snapshot_epoch.set(self.snapshot_epoch.get() + 1);
        let mut snapshot = build_snapshot(&self.state.borrow(), &self.rules);
        snapshot.epoch = self.snapshot_epoch.get();
        snapshot.controller_id = self.controller_id();
        if self
            .replicated
            .as_ref()
            .is_some_and(|replicated| !replicated.has_committed_state.get())
        {
            snapshot.cluster_id = None;
        }
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
        let turn = self.take_turn().await;
        if let ControllerCall::ReportOffline { tp, topic_id } = call {
            let changed = self.mark_offline(tp, topic_id);
            let reply = ControllerReply {
                outcomes: Vec::new(),
            };
            return (reply, changed.then(|| self.snapshot()), turn);
        }
        let current = self.state.borrow().clone();
        let mut next = current.clone();
        // Only a creation asks for the offsets topic (a reassignment's outcomes name
        // existing topics, that one included).
        let creates = matches!(call, ControllerCall::CreateTopics { .. });
        let outcomes = changes::apply(&mut next, call, &self.rules);
        let refuse = |outcomes: Vec<TopicOutcome>, code: i16, message: String| {
            let outcomes = outcomes
                .into_iter()
                .map(|outcome| outcome.failed(code, message.clone()))
                .collect();
            ControllerReply { outcomes }
        };
        if let Some(replicated) = &self.replicated {
            // A follower (or a leader not caught up in its term) must not compute changes
            // from a state that may be stale, validate-only ones included.
            if !replicated.group.ready_to_propose() {
                if creates && outcomes.iter().any(|outcome| outcome.name == OFFSETS_TOPIC) {
                    replicated.wants_offsets_topic.set(true);
                }
                if creates
                    && outcomes
                        .iter()
                        .any(|outcome| outcome.name == TRANSACTION_STATE_TOPIC)
                {
                    replicated.wants_transaction_state_topic.set(true);
                }
                let message = format!(
                    "broker {} is not the controller; the controller is broker {}",
                    self.rules.node_id,
                    self.controller_id()
                );
                let outcomes = outcomes
                    .into_iter()
                    .map(|mut outcome| {
                        outcome.error_code = codes::NOT_CONTROLLER;
                        outcome.message = Some(message.clone());
                        outcome
                    })
                    .collect();
                return (ControllerReply { outcomes }, None, turn);
            }
        }
        if next == current {
            return (ControllerReply { outcomes }, None, turn);
        }
        next.epoch += 1;
        if let Err((code, message)) = self.persist(&next).await {
            return (refuse(outcomes, code, message), None, turn);
        }
        if let Some(replicated) = &self.replicated {
            self.committed(replicated, &next);
        }
        self.forget_offline_of_deleted(&next);
        *self.state.borrow_mut() = next;
        (ControllerReply { outcomes }, Some(self.snapshot()), turn)
    }
}

impl Controller {
    /// Sends this broker's heartbeat (its registration) to group 0's leader: over the
    /// transport, or into its own mailbox when it leads. Nothing while no leader is known.
    pub fn heartbeat(&self) {
        let Some(replicated) = &self.replicated else {
            return;
        };
        let Some(leader) = replicated.group.leader() else {
            return;
        };
        let heartbeat = registry::BrokerHeartbeat {
            registration: replicated.registration.clone(),
            wants_offsets_topic: replicated.wants_offsets_topic.replace(false),
            wants_transaction_state_topic: replicated.wants_transaction_state_topic.replace(false),
            leadership: replicated.leadership.borrow().to_send(),
            producer_ids: replicated
                .producer_ids
                .request()
                .map(|(after, floor)| producer_ids::ProducerIdRequest { after, floor }),
        };
        replicated.leadership_urgent.set(false);
        replicated.group.send_mail(leader, heartbeat.encode());
    }

    /// Whether a heartbeat should go before its interval: a broker asked for
    /// `__consumer_offsets` or `__transaction_state`, a producer-id block became wanted, or
    /// a leadership change was reported.
    pub fn heartbeat_due_now(&self) -> bool {
        self.replicated.as_ref().is_some_and(|replicated| {
            replicated.wants_offsets_topic.get()
                || replicated.wants_transaction_state_topic.get()
                || replicated.leadership_urgent.get()
                || replicated.producer_ids.take_urgent()
        })
    }

    /// Queues leadership changes of groups this broker leads for the controller (shard 0;
    /// the `ReplicaManager`s' reports): sent with the next heartbeat (at once) and with
    /// every one after until the committed state shows them. Nothing on a one-node broker.
    pub fn report_leadership(&self, changes: Vec<leadership::LeadershipChange>) {
        let Some(replicated) = &self.replicated else {
            return;
        };
        if changes.is_empty() {
            return;
        }
        replicated.leadership.borrow_mut().queue(changes);
        replicated.leadership_urgent.set(true);
    }

    /// What this broker takes from each committed state it adopts: leadership reports now
    /// settled, and a producer-id block granted to it.
    fn committed(&self, replicated: &Replicated, state: &ClusterState) {
        replicated.leadership.borrow_mut().forget_settled(state);
        if let Some(start) = producer_ids::granted(
            state,
            self.rules.node_id,
            replicated.registration.incarnation,
        ) {
            replicated.producer_ids.receive(start);
        }
    }

    /// Applies the heartbeats received to `next` (registrations) and the silence of others
    /// (fencing); returns the internal topics brokers asked for.
    fn hear(
        replicated: &Replicated,
        mail: Vec<(u64, Vec<u8>)>,
        next: &mut ClusterState,
        now: std::time::Instant,
    ) -> Vec<&'static str> {
        let mut liveness = replicated.liveness.borrow_mut();
        let mut wanted = Vec::new();
        for (from, payload) in mail {
            let heartbeat = match registry::BrokerHeartbeat::decode(&payload) {
                Ok(heartbeat) => heartbeat,
                Err(reason) => {
                    tracing::warn!(from, %reason, "dropped a broker heartbeat that does not decode");
                    continue;
                }
            };
            let node_id = heartbeat.registration.node_id;
            if u64::try_from(node_id).ok() != Some(from) {
                tracing::warn!(from, node_id, "dropped a heartbeat naming another broker");
                continue;
            }
            liveness.heard(node_id, now);
            if registry::register(next, &heartbeat.registration) {
                tracing::info!(
                    node_id,
                    incarnation = heartbeat.registration.incarnation,
                    "broker registered"
                );
            }
            for (asked, topic) in [
                (heartbeat.wants_offsets_topic, OFFSETS_TOPIC),
                (
                    heartbeat.wants_transaction_state_topic,
                    TRANSACTION_STATE_TOPIC,
                ),
            ] {
                if asked && !wanted.contains(&topic) {
                    wanted.push(topic);
                }
            }
            if !heartbeat.leadership.is_empty() {
                let (recorded, ignored) = leadership::apply(next, node_id, &heartbeat.leadership);
                if recorded > 0 || !ignored.is_empty() {
                    tracing::debug!(node_id, recorded, ?ignored, "leadership reports heard");
                }
            }
            if let Some(request) = &heartbeat.producer_ids {
                let incarnation = heartbeat.registration.incarnation;
                if producer_ids::grant(next, node_id, incarnation, request) {
                    tracing::info!(node_id, start = ?producer_ids::granted(next, node_id, incarnation), "producer-id block granted");
                }
            }
        }
        for node_id in liveness.expired(next, now) {
            registry::fence(next, node_id);
            tracing::warn!(node_id, session_timeout = ?liveness.session_timeout(), "broker fenced: no heartbeat for a session");
        }
        wanted
    }

    /// The registry's work on group 0's leader (`registry`): reads the heartbeats received,
    /// registers brokers whose registration is new or changed, creates the internal topics
    /// (`internal_topics`: `__consumer_offsets`, `__transaction_state`) a broker asked for
    /// and that do not exist yet, and fences brokers silent for a session.
    /// Returns the snapshot to publish when it committed a change. Elsewhere it only drops
    /// the heartbeats (a follower is sent none but may hold a few from when it led). On
    /// every broker, forwarded security changes and their replies are taken out of the
    /// mailbox first (`sort_forward_mail`).
    pub async fn registry_round(
        &self,
        internal_topics: &[NewTopic],
    ) -> Option<(Arc<MetadataSnapshot>, ChangeTurn)> {
        let replicated = self.replicated.as_ref()?;
        let mail = self.sort_forward_mail(replicated, replicated.group.take_mailbox());
        if !replicated.group.ready_to_propose() {
            return None;
        }
        let now = std::time::Instant::now();
        {
            let mut liveness = replicated.liveness.borrow_mut();
            liveness.lead(replicated.group.term(), now);
            // The usual round: nothing heard, nobody due for fencing, no state to copy.
            if mail.is_empty() && liveness.expired(&self.state.borrow(), now).is_empty() {
                return None;
            }
        }
        let turn = self.take_turn().await;
        if !replicated.group.ready_to_propose() {
            return None;
        }
        let current = self.state.borrow().clone();
        let mut next = current.clone();
        let wanted = Self::hear(replicated, mail, &mut next, now);
        let missing: Vec<&NewTopic> = internal_topics
            .iter()
            .filter(|topic| {
                wanted.contains(&topic.name.as_str())
                    && !next
                        .topics
                        .iter()
                        .any(|existing| existing.name == topic.name)
            })
            .collect();
        for topic in missing {
            let call = ControllerCall::CreateTopics {
                topics: vec![topic.clone()],
                validate_only: false,
            };
            let outcomes = changes::apply(&mut next, call, &self.rules);
            if let Some(outcome) = outcomes
                .first()
                .filter(|outcome| outcome.error_code != codes::NONE)
            {
                tracing::warn!(topic = %topic.name, message = ?outcome.message, "could not create an internal topic a broker asked for");
            }
        }
        if next == current {
            return None;
        }
        next.epoch += 1;
        if let Err((_, message)) = self.persist(&next).await {
            tracing::info!(%message, "registry change not committed; retried with the next heartbeats");
            return None;
        }
        self.committed(replicated, &next);
        self.forget_offline_of_deleted(&next);
        *self.state.borrow_mut() = next;
        Some((self.snapshot(), turn))
    }
}

/// Held while a change is computed, persisted and published; the next change waits for it.
pub struct ChangeTurn {
    _permit: glommio::sync::StaticPermit,
}

/// Builds the immutable view shards read. Placement recorded for more shards than run now
/// (a restart with fewer `--shards`) folds onto the running ones.
pub fn build_snapshot(state: &ClusterState, rules: &PlacementRules) -> MetadataSnapshot {
    let live: BTreeSet<i32> = state
        .brokers
        .iter()
        .filter(|broker| rules.clustered && !broker.fenced)
        .map(|broker| broker.node_id)
        .collect();
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
            let (partition_shards, partitions) = record
                .partitions
                .iter()
                .map(|partition| {
                    let moving = reassignment::of_group(state, partition.group_id);
                    describe_partition(partition, moving, &live, rules)
                })
                .unzip();
            let topic = TopicMetadata {
                name_bytes: Bytes::copy_from_slice(name.as_bytes()),
                name: name.clone(),
                id: Uuid::from_bytes(record.id),
                partition_shards,
                partitions,
                config: TopicConfig::resolve(&overrides, &rules.topic_defaults),
                overrides,
            };
            (name, Arc::new(topic))
        })
        .collect();
    MetadataSnapshot {
        epoch: 0,
        cluster_id: Some(state.cluster_id.clone()),
        controller_id: rules.node_id,
        topics,
        offline_partitions: BTreeSet::new(),
        local_node: rules.node_id,
        brokers: state
            .brokers
            .iter()
            .filter(|broker| rules.clustered && !broker.fenced)
            .map(|broker| BrokerEndpoints {
                node_id: broker.node_id,
                rack: broker.rack.clone(),
                listeners: broker
                    .listeners
                    .iter()
                    .map(|listener| (listener.name.clone(), listener.host.clone(), listener.port))
                    .collect(),
            })
            .collect(),
        reassignments: reassignment::in_progress(state, None),
    }
}

/// One partition as this broker serves it: the shard a request for it goes to here, and
/// its replicas and leadership with fenced brokers taken out.
///
/// A one-node broker holds every partition; so does each broker of a cluster for a replica
/// with no recorded broker (a topic written before the registry, in the cluster preview).
/// Until a leader has been reported (epoch 0), the first live replica leads.
fn describe_partition(
    record: &PartitionRecord,
    moving: Option<&store::ReassignmentRecord>,
    live: &BTreeSet<i32>,
    rules: &PlacementRules,
) -> (usize, PartitionMetadata) {
    let resolve = |broker: i32| {
        if !rules.clustered || broker == store::LOCAL_BROKER {
            rules.node_id
        } else {
            broker
        }
    };
    let alive = |node: &i32| *node == rules.node_id || live.contains(node);
    let replicas: Vec<i32> = record
        .replicas
        .iter()
        .map(|replica| resolve(replica.broker))
        .collect();
    // A replica a move added is hosted too (as a learner until the move ends).
    let added: Vec<store::ReplicaRecord> = moving.map_or_else(Vec::new, |moving| {
        moving
            .hosted
            .iter()
            .filter(|hosted| !record.replicas.iter().any(|r| r.broker == hosted.broker))
            .copied()
            .collect()
    });
    let local = record
        .replicas
        .iter()
        .chain(&added)
        .find(|replica| resolve(replica.broker) == rules.node_id);
    let shard = local
        .or(record.replicas.first())
        .map_or(0, |replica| replica.shard as usize % rules.shard_count);
    let leader = if record.leader_epoch == 0 {
        replicas.iter().copied().find(alive)
    } else {
        Some(resolve(record.leader)).filter(|leader| *leader >= 0 && alive(leader))
    };
    let partition = PartitionMetadata {
        offline_replicas: replicas.iter().copied().filter(|r| !alive(r)).collect(),
        isr: record
            .isr
            .iter()
            .map(|node| resolve(*node))
            .filter(alive)
            .collect(),
        replicas,
        group_id: record.group_id,
        leader: leader.unwrap_or(-1),
        leader_epoch: record.leader_epoch,
        hosted_here: local.is_some(),
        target: moving.map_or_else(Vec::new, |moving| {
            moving.target.iter().map(|r| resolve(r.broker)).collect()
        }),
        learners: added.iter().map(|r| resolve(r.broker)).collect(),
    };
    (shard, partition)
}

#[cfg(test)]
mod heartbeat_tests;

#[cfg(test)]
mod marker_delivery_tests;

#[cfg(test)]
mod security_group_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store::{BrokerRecord, ReplicaRecord, TopicRecord};
    use crate::limits::Limits;

    fn rules(clustered: bool) -> PlacementRules {
        PlacementRules {
            shard_count: 2,
            node_id: 1,
            clustered,
            default_replication_factor: 1,
            default_partitions: 3,
            limits: Limits::default(),
            topic_defaults: crate::settings::Effective::defaults().topic_defaults(),
        }
    }

    fn on(replicas: &[(i32, u32)]) -> Vec<ReplicaRecord> {
        replicas
            .iter()
            .map(|&(broker, shard)| ReplicaRecord { broker, shard })
            .collect()
    }

    /// Brokers 1 and 3 live, 2 fenced. Topic `t`: one replica per partition; topic `r`: a
    /// partition never reported (epoch 0) whose first replica is fenced, one whose leader
    /// reported epoch 5, and one whose reported leader is fenced.
    fn state() -> ClusterState {
        let broker = |node_id, fenced| BrokerRecord {
            node_id,
            incarnation: 1,
            listeners: Vec::new(),
            rack: None,
            shard_count: 2,
            fenced,
        };
        let single = |broker, shard, group| PartitionRecord::placed(on(&[(broker, shard)]), group);
        ClusterState {
            epoch: 3,
            cluster_id: "c".into(),
            topics: vec![
                TopicRecord {
                    name: "t".into(),
                    id: [1; 16],
                    partitions: vec![single(1, 0, 1), single(2, 0, 2), single(1, 1, 3)],
                    overrides: Vec::new(),
                },
                TopicRecord {
                    name: "r".into(),
                    id: [2; 16],
                    partitions: vec![
                        PartitionRecord::placed(on(&[(2, 1), (1, 1), (3, 0)]), 4),
                        PartitionRecord {
                            leader: 3,
                            leader_epoch: 5,
                            isr: vec![3, 1],
                            ..PartitionRecord::placed(on(&[(3, 0), (2, 0), (1, 0)]), 5)
                        },
                        PartitionRecord {
                            leader: 2,
                            leader_epoch: 4,
                            ..PartitionRecord::placed(on(&[(2, 0), (3, 1)]), 6)
                        },
                    ],
                    overrides: Vec::new(),
                },
            ],
            brokers: vec![broker(1, false), broker(2, true), broker(3, false)],
            ..ClusterState::default()
        }
    }

    fn local(snapshot: &MetadataSnapshot, shard: usize) -> Vec<String> {
        snapshot
            .partitions_on(shard)
            .map(|(tp, _)| tp.to_string())
            .collect()
    }

    #[test]
    fn a_cluster_broker_holds_only_its_replicas_and_lists_only_live_brokers() {
        let snapshot = build_snapshot(&state(), &rules(true));
        let live: Vec<i32> = snapshot.brokers.iter().map(|b| b.node_id).collect();
        assert_eq!(live, [1, 3], "the fenced broker is left out");
        assert_eq!(
            (local(&snapshot, 0), local(&snapshot, 1)),
            (
                vec!["r-1".into(), "t-0".into()],
                vec!["r-0".into(), "t-2".into()]
            )
        );
        assert_eq!(
            snapshot.owner_of("r", 0),
            Some(1),
            "this broker's replica's shard"
        );
        assert_eq!(
            snapshot.broker_of("t", 1),
            Some(-1),
            "its only replica is fenced"
        );
        assert!(!snapshot.is_alive(2));
        assert!(snapshot.is_alive(3));
    }

    #[test]
    fn leadership_is_the_reported_one_or_the_first_live_replica_before_any_report() {
        let snapshot = build_snapshot(&state(), &rules(true));
        let r = snapshot.topic("r").unwrap();
        assert_eq!(r.replicas(0), [2, 1, 3]);
        assert_eq!(
            (r.leader(0), r.leader_epoch(0)),
            (1, 0),
            "first live replica"
        );
        assert_eq!(r.isr(0), [1, 3], "fenced brokers leave the ISR");
        assert_eq!(r.offline_replicas(0), [2]);
        assert_eq!((r.leader(1), r.leader_epoch(1)), (3, 5), "as reported");
        assert_eq!(r.isr(1), [3, 1]);
        assert_eq!(r.offline_replicas(1), [2]);
        assert_eq!(
            (r.leader(2), r.leader_epoch(2)),
            (-1, 4),
            "reported leader fenced"
        );
        assert!(!r.hosted_here(2));
        assert_eq!(
            [r.group_id(0), r.group_id(1), r.group_id(2), r.group_id(3)],
            [4, 5, 6, 0]
        );
        assert_eq!(
            (r.leader(3), r.leader_epoch(3), r.replicas(3)),
            (-1, -1, &[][..])
        );
    }

    #[test]
    fn clients_are_told_of_offline_replicas_and_missing_leaders() {
        let mut snapshot = build_snapshot(&state(), &rules(true));
        let tp = |topic: &str, partition| TopicPartition {
            topic: topic.into(),
            partition,
        };
        // This broker's (1) log of r-0, which it leads, and of r-1, which 3 leads, failed.
        snapshot.offline_partitions.insert(tp("r", 0));
        snapshot.offline_partitions.insert(tp("r", 1));
        let r = snapshot.topic("r").unwrap().clone();
        let led_here = snapshot.describe_partition(&r, 0);
        assert_eq!(led_here.error_code, codes::KAFKA_STORAGE_ERROR);
        assert_eq!(
            (led_here.isr, led_here.offline_replicas),
            (vec![3], vec![2, 1])
        );
        let led_elsewhere = snapshot.describe_partition(&r, 1);
        assert_eq!(led_elsewhere.error_code, codes::NONE, "3 still serves it");
        assert_eq!(
            (led_elsewhere.isr, led_elsewhere.offline_replicas),
            (vec![3], vec![2, 1])
        );
        let leaderless = snapshot.describe_partition(&r, 2);
        assert_eq!(
            (
                leaderless.error_code,
                leaderless.leader,
                leaderless.leader_epoch
            ),
            (codes::LEADER_NOT_AVAILABLE, -1, 4)
        );
        assert_eq!(leaderless.replicas, [2, 3]);
    }

    #[test]
    fn a_one_node_broker_holds_every_partition_as_before() {
        let snapshot = build_snapshot(&state(), &rules(false));
        assert!(snapshot.brokers.is_empty());
        assert_eq!(
            (local(&snapshot, 0), local(&snapshot, 1)),
            (
                vec!["r-1".into(), "r-2".into(), "t-0".into(), "t-1".into()],
                vec!["r-0".into(), "t-2".into()]
            )
        );
        assert_eq!(snapshot.broker_of("t", 1), Some(1));
    }
}
