//! Three brokers' replica managers in one process over a simulated network (frames moved
//! by the test between rounds, cut per node) and simulated disks (power cuts): acks=all
//! produces to a 3-replica partition, the leader cut off and then power-cut, a new leader
//! that holds every acknowledged batch at its offset with its bytes, the old leader
//! restarted from its disk catching up from the new one.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use ringfeed_replication::driver::ELECTION_TICKS_MAX;
use ringfeed_replication::wire::Frame;
use uuid::Uuid;

use super::*;
use crate::disk::BrokerDisk;
use crate::error_codes as codes;
use crate::metadata::TopicPartition;
use crate::storage::batch::build;
use crate::storage::sim::{yield_once, CrashMode, SimDisk};
use crate::storage::{Clock, LogConfig, SimClock};

pub(crate) const GROUP: u64 = 42;
/// `replica.lag.time.max.ms` here: 10 steps of the simulated clock.
const LAG: Duration = Duration::from_secs(1);

pub(crate) use crate::test_executor::run;

pub(crate) fn tp() -> TopicPartition {
    TopicPartition {
        topic: "orders".into(),
        partition: 0,
    }
}

fn replica(min_insync_replicas: u32) -> HostedReplica {
    HostedReplica {
        topic: tp(),
        topic_id: Uuid::from_u128(0x5eed),
        group_id: GROUP,
        voters: vec![1, 2, 3],
        learners: Vec::new(),
        target: Vec::new(),
        config: LogConfig::default(),
        min_insync_replicas,
    }
}

pub(crate) fn batch(label: &str) -> Bytes {
    let value = format!("{label}-").repeat(20);
    build::batch(&[
        build::Record {
            key: None,
            value: Some(value.as_bytes()),
            timestamp_ms: 1_000,
        },
        build::Record {
            key: Some(label.as_bytes()),
            value: Some(b"second"),
            timestamp_ms: 1_001,
        },
    ])
}

/// What a `read_committed` Kafka client hands the application from fetched `batches` with
/// the fetch's `aborted` transactions (producer id, first offset): the data batches it
/// keeps. A producer's transactional batches are skipped from the first offset of one of
/// its aborted transactions up to its abort marker; control batches never reach the
/// application. `skipping` (the producers being skipped) carries over from one fetch to the
/// next of a read.
pub(crate) fn kept_by_read_committed<'a>(
    batches: &'a [Bytes],
    aborted: &[(i64, i64)],
    skipping: &mut std::collections::HashSet<i64>,
) -> Vec<&'a Bytes> {
    use crate::storage::batch::{control, BatchHeader};
    let mut aborted = aborted.to_vec();
    aborted.sort_by_key(|(_, first_offset)| *first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut kept = Vec::new();
    for stored in batches {
        let header = BatchHeader::parse(stored).expect("header");
        while let Some((producer_id, _)) =
            aborted.next_if(|(_, first_offset)| *first_offset <= header.last_offset())
        {
            skipping.insert(producer_id);
        }
        if header.is_control() {
            if control::txn_marker_of(stored).is_some_and(|(commit, _)| !commit) {
                skipping.remove(&header.producer_id);
            }
            continue;
        }
        if header.is_transactional() && skipping.contains(&header.producer_id) {
            continue;
        }
        kept.push(stored);
    }
    kept
}

/// The bytes a replica must keep unchanged: everything after baseOffset, batchLength and
/// partitionLeaderEpoch, which the log stamps (outside the CRC).
pub(crate) fn payload(batch: &[u8]) -> Vec<u8> {
    batch[16..].to_vec()
}

struct Node {
    id: u64,
    disk: SimDisk,
    manager: Option<Rc<ReplicaManager>>,
    /// Frames to and from this node are dropped.
    cut: bool,
    /// The incarnation its manager was last started with.
    incarnation: u64,
}

pub(crate) struct Cluster {
    clock: SimClock,
    nodes: Vec<Node>,
    in_flight: Vec<Frame>,
    min_insync_replicas: u32,
    /// The transport's liveness, modelled: (node, peer) -> (step, incarnation) the node last
    /// heard the peer in. Running nodes that no cut separates hear each other every step (a
    /// keepalive); a peer heard within `PEER_LIVENESS_STEPS` is live. Quiet idle groups rest
    /// on it as in the broker (`ringfeed_replication::driver::quiet`).
    heard: BTreeMap<(u64, u64), (u64, u64)>,
    steps_taken: u64,
}

/// Steps (ticks of 100 ms) within which a peer heard from is live: the transport's 1 s.
const PEER_LIVENESS_STEPS: u64 = 10;

async fn start_manager(
    id: u64,
    disk: SimDisk,
    clock: &SimClock,
    incarnation: u64,
    min_insync: u32,
) -> Rc<ReplicaManager> {
    let manager = ReplicaManager::open(ReplicaManagerStart {
        node_id: id,
        incarnation,
        shard: 0,
        data_dir: PathBuf::from("/data"),
        disk: BrokerDisk::Sim(disk),
        clock: Clock::Simulated(clock.clone()),
        election_seed: id * 31 + incarnation,
        replica_lag_time_max: LAG,
        tail_cache: crate::storage::ShardTailCache::new(usize::MAX),
    })
    .await
    .expect("manager");
    manager.reconcile(&[replica(min_insync)]).await;
    assert_eq!(manager.group_ids(), [GROUP]);
    manager
}

impl Cluster {
    pub(crate) async fn new(min_insync_replicas: u32) -> Self {
        Self::hosting(min_insync_replicas, &[]).await
    }

    /// A cluster whose managers host `more` groups besides `GROUP` from the start.
    pub(crate) async fn hosting(min_insync_replicas: u32, more: &[HostedReplica]) -> Self {
        let clock = SimClock::new(1_000_000);
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let disk = SimDisk::new();
            let manager = start_manager(id, disk.clone(), &clock, 1, min_insync_replicas).await;
            if !more.is_empty() {
                let mut all = vec![replica(min_insync_replicas)];
                all.extend_from_slice(more);
                manager.reconcile(&all).await;
            }
            nodes.push(Node {
                id,
                disk,
                manager: Some(manager),
                cut: false,
                incarnation: 1,
            });
        }
        Cluster {
            clock,
            nodes,
            in_flight: Vec::new(),
            min_insync_replicas,
            heard: BTreeMap::new(),
            steps_taken: 0,
        }
    }

    /// Node `id`'s simulated disk (for faults).
    pub(crate) fn disk(&self, id: u64) -> SimDisk {
        self.nodes[(id - 1) as usize].disk.clone()
    }

    pub(crate) fn manager(&self, id: u64) -> Rc<ReplicaManager> {
        self.nodes[(id - 1) as usize]
            .manager
            .clone()
            .expect("node is up")
    }

    /// One step: a tick of time (100 ms), the frames sent last step delivered, one round on
    /// every live node, then the durability workers run.
    pub(crate) async fn step(&mut self) {
        self.clock.advance(Duration::from_millis(
            ringfeed_replication::driver::TICK_INTERVAL_MS,
        ));
        let cut: BTreeSet<u64> = self.nodes.iter().filter(|n| n.cut).map(|n| n.id).collect();
        for frame in std::mem::take(&mut self.in_flight) {
            if cut.contains(&frame.from_node) || cut.contains(&frame.to_node) {
                continue;
            }
            if let Some(manager) = &self.nodes[(frame.to_node - 1) as usize].manager {
                manager.receive(frame);
            }
        }
        self.steps_taken += 1;
        self.hear_keepalives();
        for node in &self.nodes {
            if let Some(manager) = &node.manager {
                manager.set_live_peers(self.live_peers(node.id));
                manager.tick();
                manager.round();
                self.in_flight.extend(manager.take_outbound());
            }
        }
        for _ in 0..64 {
            yield_once().await;
        }
    }

    /// Every running node hears every other one no cut separates it from.
    fn hear_keepalives(&mut self) {
        let running: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|node| node.manager.is_some() && !node.cut)
            .map(|node| (node.id, node.incarnation))
            .collect();
        for &(node, _) in &running {
            for &(peer, incarnation) in &running {
                if peer != node {
                    self.heard
                        .insert((node, peer), (self.steps_taken, incarnation));
                }
            }
        }
    }

    fn live_peers(&self, node: u64) -> ringfeed_replication::driver::LivePeers {
        self.heard
            .range((node, 0)..=(node, u64::MAX))
            .filter(|(_, (at, _))| self.steps_taken - at < PEER_LIVENESS_STEPS)
            .map(|((_, peer), (_, incarnation))| (*peer, *incarnation))
            .collect()
    }

    /// Whether every group of every running node is quiet.
    pub(crate) fn all_quiet(&self) -> bool {
        self.nodes
            .iter()
            .filter_map(|node| node.manager.as_ref())
            .all(|manager| manager.driver.borrow().quiet_groups() == manager.group_ids().len())
    }

    /// Steps until `reached` holds, at most `steps_max` of them; returns how many it took.
    pub(crate) async fn steps_until(
        &mut self,
        steps_max: usize,
        what: &str,
        reached: impl Fn(&Self) -> bool,
    ) -> usize {
        for steps in 1..=steps_max {
            self.step().await;
            if reached(self) {
                return steps;
            }
        }
        panic!("{what} not reached in {steps_max} steps");
    }

    pub(crate) async fn steps(&mut self, count: usize) {
        for _ in 0..count {
            self.step().await;
        }
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.nodes.iter().find_map(|node| {
            let manager = node.manager.as_ref()?;
            let (leader, _) = manager.leader_and_term(GROUP)?;
            (leader == node.id && !node.cut).then_some(node.id)
        })
    }

    pub(crate) async fn elect(&mut self) -> u64 {
        for _ in 0..400 {
            self.step().await;
            if let Some(leader) = self.leader() {
                // Let it commit its term's empty entry.
                self.steps(5).await;
                return leader;
            }
        }
        panic!("no leader elected");
    }

    /// Produces `labels` one batch per call on `id`; returns each call's answer cell.
    pub(crate) fn produce(
        &self,
        id: u64,
        labels: &[String],
        acks: i16,
    ) -> Vec<Rc<RefCell<Option<ReplicaProduce>>>> {
        let manager = self.manager(id);
        labels
            .iter()
            .map(|label| {
                let pending = manager.dispatch_produce(&tp(), vec![batch(label)], acks);
                let cell = Rc::new(RefCell::new(None));
                let sink = cell.clone();
                glommio::spawn_local(async move {
                    *sink.borrow_mut() = Some(pending.wait().await);
                })
                .detach();
                cell
            })
            .collect()
    }

    /// Runs `calls` to their answers, stepping the cluster meanwhile.
    async fn answers(&mut self, pending: Vec<serve::PendingReplicaProduce>) -> Vec<ReplicaProduce> {
        let cells: Vec<Rc<RefCell<Option<ReplicaProduce>>>> = pending
            .into_iter()
            .map(|call| {
                let cell = Rc::new(RefCell::new(None));
                let sink = cell.clone();
                glommio::spawn_local(async move {
                    let answer = call.wait().await;
                    *sink.borrow_mut() = Some(answer);
                })
                .detach();
                cell
            })
            .collect();
        self.until_answered(&cells).await;
        cells
            .iter()
            .map(|cell| cell.borrow().expect("answered"))
            .collect()
    }

    pub(crate) async fn until_answered(&mut self, cells: &[Rc<RefCell<Option<ReplicaProduce>>>]) {
        for _ in 0..400 {
            if cells.iter().all(|cell| cell.borrow().is_some()) {
                return;
            }
            self.step().await;
        }
        panic!("produce calls not answered");
    }

    /// The nodes running a manager.
    pub(crate) fn nodes_up(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|node| node.manager.is_some())
            .map(|node| node.id)
            .collect()
    }

    /// Cuts `id` off the simulated network (frames to and from it dropped), or heals it.
    pub(crate) fn set_cut(&mut self, id: u64, cut: bool) {
        self.nodes[(id - 1) as usize].cut = cut;
    }

    pub(crate) fn power_cut(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(manager) = node.manager.take() {
            manager.stop();
        }
        node.disk = node.disk.crash_image(CrashMode::PowerCut);
    }

    pub(crate) async fn restart(&mut self, id: u64, incarnation: u64) {
        let disk = self.nodes[(id - 1) as usize].disk.clone();
        let manager =
            start_manager(id, disk, &self.clock, incarnation, self.min_insync_replicas).await;
        let node = &mut self.nodes[(id - 1) as usize];
        node.manager = Some(manager);
        node.incarnation = incarnation;
        // A restarted transport has heard from no one yet.
        self.heard.retain(|(observer, _), _| *observer != id);
    }

    /// Cuts node `id` off the simulated network, or heals it if it was cut.
    pub(crate) fn toggle_cut(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        node.cut = !node.cut;
    }

    /// Power-cuts node `id` and starts it again from its disk, in its next incarnation.
    pub(crate) async fn power_cycle(&mut self, id: u64) {
        self.power_cut(id);
        let incarnation = self.nodes[(id - 1) as usize].incarnation + 1;
        self.restart(id, incarnation).await;
    }
}

/// Every batch fetched from the leader from offset 0: (base offset, payload).
pub(crate) async fn fetch_all(manager: &ReplicaManager) -> (i64, Vec<(i64, Vec<u8>)>) {
    let mut offset = 0;
    let mut found = Vec::new();
    let mut high_watermark = -1;
    loop {
        let fetched = manager
            .fetch(
                &tp(),
                offset,
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::NONE);
        high_watermark = high_watermark.max(fetched.high_watermark);
        if fetched.batches.is_empty() {
            return (high_watermark, found);
        }
        for batch in fetched.batches {
            let header = crate::storage::batch::BatchHeader::parse(&batch).expect("header");
            if !header.is_control() {
                found.push((header.base_offset, payload(&batch)));
            }
            offset = header.last_offset() + 1;
        }
    }
}

/// Every entry of `id`'s log, as stored.
async fn entries(cluster: &Cluster, id: u64) -> Vec<crate::storage::StoredEntry> {
    let log = cluster.manager(id).log(GROUP).expect("hosted");
    log.read_entries(1, log.last_index() + 1, usize::MAX)
        .await
        .expect("entries")
}

fn assert_acknowledged_held(acked: &[(i64, Vec<u8>)], held: &[(i64, Vec<u8>)], who: &str) {
    for (offset, bytes) in acked {
        let found = held.iter().find(|(at, _)| at == offset);
        assert_eq!(
            found.map(|(_, b)| b),
            Some(bytes),
            "{who}: acknowledged batch at offset {offset} missing or changed"
        );
    }
}

pub(crate) fn acked(
    labels: &[String],
    cells: &[Rc<RefCell<Option<ReplicaProduce>>>],
) -> Vec<(i64, Vec<u8>)> {
    labels
        .iter()
        .zip(cells)
        .filter_map(|(label, cell)| {
            let answer = (*cell.borrow())?;
            (answer.error_code == codes::NONE).then(|| (answer.base_offset, payload(&batch(label))))
        })
        .collect()
}

pub(crate) fn labels(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn acknowledged_batches_survive_the_loss_of_their_leader() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let first = cluster.elect().await;
        let (first_term, acked_a, high_watermark) =
            first_leader_acknowledges(&mut cluster, first).await;
        cut_leader_acknowledges_nothing(&mut cluster, first, high_watermark).await;
        new_leader_holds_everything(&mut cluster, first, first_term, &acked_a).await;
    });
}

/// acks=all on the first leader: every call answered, at increasing offsets; followers
/// refuse clients. Returns the leader's term, the acknowledged batches, the high watermark.
async fn first_leader_acknowledges(
    cluster: &mut Cluster,
    first: u64,
) -> (u64, Vec<(i64, Vec<u8>)>, i64) {
    let first_term = cluster
        .manager(first)
        .leader_and_term(GROUP)
        .expect("group")
        .1;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    for follower in &followers {
        let manager = cluster.manager(*follower);
        let refused = manager
            .dispatch_produce(&tp(), vec![batch("x")], -1)
            .wait()
            .await;
        assert_eq!(refused.error_code, codes::NOT_LEADER_OR_FOLLOWER);
        let fetched = manager
            .fetch(
                &tp(),
                0,
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::NOT_LEADER_OR_FOLLOWER);
    }

    // acks=all on the first leader: every call answered, at increasing offsets.
    let batch_a = labels("a", 20);
    let cells = cluster.produce(first, &batch_a, -1);
    cluster.until_answered(&cells).await;
    let acked_a = acked(&batch_a, &cells);
    assert_eq!(
        acked_a.len(),
        batch_a.len(),
        "every acks=all call acknowledged"
    );
    let offsets: Vec<i64> = acked_a.iter().map(|(offset, _)| *offset).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 2), "{offsets:?}");
    let (high_watermark, held) = fetch_all(&cluster.manager(first)).await;
    assert_acknowledged_held(&acked_a, &held, "first leader");
    assert_eq!(high_watermark, offsets.last().unwrap() + 2);
    let changes = cluster.manager(first).take_leadership_changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0].leader, changes[0].term, changes[0].isr.clone()),
        (first, first_term, vec![1, 2, 3])
    );

    (first_term, acked_a, high_watermark)
}

async fn cut_leader_acknowledges_nothing(cluster: &mut Cluster, first: u64, high_watermark: i64) {
    // The leader is cut off: acks=all calls are not acknowledged (no quorum), its fetches
    // never show what it appended alone, and it answers them when it steps down.
    cluster.nodes[(first - 1) as usize].cut = true;
    let batch_b = labels("b", 5);
    let cells_b = cluster.produce(first, &batch_b, -1);
    let cells_b1 = cluster.produce(first, &labels("c", 2), 1);
    cluster.steps(3).await;
    let (cut_high_watermark, _) = fetch_all(&cluster.manager(first)).await;
    assert_eq!(
        cut_high_watermark, high_watermark,
        "uncommitted batches are not visible"
    );
    let log = cluster.manager(first).log(GROUP).expect("hosted");
    assert!(
        log.log_end_offset() > high_watermark,
        "the cut leader appended"
    );
    cluster.until_answered(&cells_b).await;
    for cell in &cells_b {
        // Not acknowledged, and not "not written" either: the leader that steps down cannot
        // know whether its successor will commit the entry (here it will not, but a follower
        // that had received it would), so the client is told the outcome is unknown.
        assert_eq!(
            cell.borrow().expect("answered").error_code,
            OUTCOME_UNKNOWN,
            "an uncommitted acks=all call is never acknowledged"
        );
    }
    // acks=1 is the leader's write: answered (and may be lost, as in Kafka).
    cluster.until_answered(&cells_b1).await;
    let acks_one: Vec<(i16, i64)> = cells_b1
        .iter()
        .map(|cell| {
            let answer = cell.borrow().expect("answered");
            (answer.error_code, answer.base_offset)
        })
        .collect();
    // Stamped after the five acks=all batches of two records each.
    assert_eq!(
        acks_one,
        [
            (codes::NONE, high_watermark + 10),
            (codes::NONE, high_watermark + 12)
        ]
    );
    let stepped_down = cluster.manager(first).take_leadership_changes();
    assert!(
        stepped_down
            .iter()
            .any(|c| c.leader != first && c.isr.is_empty()),
        "{stepped_down:?}"
    );
}

async fn new_leader_holds_everything(
    cluster: &mut Cluster,
    first: u64,
    first_term: u64,
    acked_a: &[(i64, Vec<u8>)],
) {
    // A new leader among the others holds every acknowledged batch.
    let second = cluster.elect().await;
    assert_ne!(second, first);
    let (_, held) = fetch_all(&cluster.manager(second)).await;
    assert_acknowledged_held(acked_a, &held, "second leader");
    let second_term = cluster.manager(second).leader_and_term(GROUP).unwrap().1;
    assert!(second_term > first_term);
    let reported = cluster.manager(second).take_leadership_changes();
    assert!(
        reported
            .iter()
            .any(|c| c.leader == second && c.term == second_term),
        "{reported:?}"
    );

    // The old leader loses power, restarts from its disk: it holds what it acknowledged,
    // then catches up from the new leader (its uncommitted tail replaced).
    cluster.power_cut(first);
    cluster.nodes[(first - 1) as usize].cut = false;
    cluster.restart(first, 2).await;
    let own: Vec<(i64, Vec<u8>)> = entries(cluster, first)
        .await
        .iter()
        .filter_map(|entry| {
            let header = crate::storage::batch::BatchHeader::parse(&entry.batch)?;
            (!header.is_control()).then(|| (header.base_offset, payload(&entry.batch)))
        })
        .collect();
    assert_acknowledged_held(acked_a, &own, "old leader after its restart, from its disk");

    let batch_d = labels("d", 10);
    let cells_d = cluster.produce(second, &batch_d, -1);
    cluster.until_answered(&cells_d).await;
    let acked_d = acked(&batch_d, &cells_d);
    assert_eq!(acked_d.len(), batch_d.len());
    cluster.steps(40).await;
    let leader_entries = entries(cluster, second).await;
    for id in 1..=3 {
        assert_eq!(
            entries(cluster, id).await,
            leader_entries,
            "replica {id} holds the leader's log byte for byte"
        );
    }
    let (_, held) = fetch_all(&cluster.manager(second)).await;
    assert_acknowledged_held(acked_a, &held, "second leader at the end");
    assert_acknowledged_held(&acked_d, &held, "second leader at the end");
    for id in 1..=3 {
        assert_eq!(
            cluster.manager(id).high_watermark(GROUP),
            cluster.manager(second).high_watermark(GROUP),
            "replica {id} applied everything"
        );
    }
}

#[test]
fn acks_all_is_refused_below_min_insync_replicas() {
    run(|| async {
        let mut cluster = Cluster::new(3).await;
        let leader = cluster.elect().await;
        let cells = cluster.produce(leader, &labels("ok", 2), -1);
        cluster.until_answered(&cells).await;
        assert_eq!(acked(&labels("ok", 2), &cells).len(), 2);
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        cluster.power_cut(follower);
        // check-quorum clears `recent_active` once per election timeout.
        cluster.steps(45).await;
        assert_eq!(
            cluster.leader(),
            Some(leader),
            "two of three keep the leader"
        );
        assert_eq!(cluster.manager(leader).in_sync(GROUP).len(), 2);
        let refused = cluster
            .manager(leader)
            .dispatch_produce(&tp(), vec![batch("no")], -1);
        assert_eq!(refused.wait().await.error_code, codes::NOT_ENOUGH_REPLICAS);
        let acks_one = cluster.produce(leader, &labels("one", 1), 1);
        cluster.until_answered(&acks_one).await;
        assert_eq!(acks_one[0].borrow().unwrap().error_code, codes::NONE);
        let changes = cluster.manager(leader).take_leadership_changes();
        assert_eq!(changes.last().map(|c| c.isr.len()), Some(2), "{changes:?}");
    });
}

#[test]
fn reconcile_is_idempotent_and_closes_groups_no_longer_placed_here() {
    run(|| async {
        let disk = SimDisk::new();
        let manager = start_manager(1, disk, &SimClock::new(0), 1, 1).await;
        manager.reconcile(&[replica(1)]).await;
        assert_eq!(manager.counts().groups_opened, 1, "opened once");
        assert!(manager.hosts(&tp()));
        manager.reconcile(&[]).await;
        assert!(!manager.hosts(&tp()));
        assert_eq!(manager.group_ids(), Vec::<u64>::new());
        assert_eq!(manager.counts().groups_closed, 1);
    });
}

/// An acks=all produce of `idempotent_batch(sequence)` on node `id`.
pub(crate) fn produce_idempotent(
    cluster: &Cluster,
    id: u64,
    sequence: i32,
) -> serve::PendingReplicaProduce {
    cluster
        .manager(id)
        .dispatch_produce(&tp(), vec![idempotent_batch(sequence)], -1)
}

/// One batch of two records of producer 7, epoch 0, from `base_sequence`.
pub(crate) fn idempotent_batch(base_sequence: i32) -> Bytes {
    as_producer_batch(
        &batch(&format!("seq{base_sequence}")),
        7,
        0,
        base_sequence,
        false,
    )
}

/// `batch` (a v2 batch as `build::batch` makes it) as producer `producer_id`'s at `epoch`
/// from `base_sequence`, transactional when asked, its CRC recomputed.
pub(crate) fn as_producer_batch(
    batch: &[u8],
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    transactional: bool,
) -> Bytes {
    let mut bytes = bytes::BytesMut::from(batch);
    let attributes: i16 = if transactional { 0x10 } else { 0 };
    // attributes at 21, producerId at 43, producerEpoch at 51, baseSequence at 53; the CRC
    // at 17 covers 21..
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
    bytes[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes.freeze()
}

/// An idempotent producer's retries are answered with the original offsets and not
/// proposed again, on the leader that took them, on the next leader after a failover (the
/// state follows committed entries on every replica) and after a replica's restart (the
/// state is rebuilt from its log); gaps are refused.
#[test]
fn idempotent_retries_are_answered_with_their_offsets_across_leaders() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let first = cluster.elect().await;
        let produce = produce_idempotent;
        let mut offsets = Vec::new();
        for sequence in [0, 2, 4] {
            let pending = produce(&cluster, first, sequence);
            // A retry while the original is still in flight waits for it.
            let retry = produce(&cluster, first, sequence);
            let answers = cluster.answers(vec![pending, retry]).await;
            assert_eq!(answers[0].error_code, codes::NONE);
            assert_eq!(
                answers[0], answers[1],
                "the retry has the original's answer"
            );
            offsets.push(answers[0].base_offset);
        }
        let end = cluster.manager(first).log(GROUP).unwrap().log_end_offset();
        let again = produce(&cluster, first, 2).wait().await;
        assert_eq!(
            (again.error_code, again.base_offset),
            (codes::NONE, offsets[1])
        );
        let gap = produce(&cluster, first, 9).wait().await;
        assert_eq!(
            gap.error_code,
            crate::producer_state::OUT_OF_ORDER_SEQUENCE_NUMBER
        );
        assert_eq!(
            cluster.manager(first).log(GROUP).unwrap().log_end_offset(),
            end,
            "nothing proposed for retries and gaps"
        );

        // Failover: the next leader answers the retry of the last batch from its state.
        cluster.nodes[(first - 1) as usize].cut = true;
        let second = loop {
            let leader = cluster.elect().await;
            if leader != first {
                break leader;
            }
        };
        let mut retried = produce(&cluster, second, 4);
        for _ in 0..20 {
            // Until the new leader has committed in its term.
            let answer = retried.wait().await;
            if answer.error_code != codes::NOT_LEADER_OR_FOLLOWER {
                assert_eq!(
                    (answer.error_code, answer.base_offset),
                    (codes::NONE, offsets[2])
                );
                break;
            }
            cluster.step().await;
            retried = produce(&cluster, second, 4);
        }
        let next = produce(&cluster, second, 6);
        let answer = cluster.answers(vec![next]).await;
        assert_eq!(answer[0].error_code, codes::NONE, "the sequence goes on");

        // A replica restarted from its disk rebuilds the state from its log.
        let third = (1..=3).find(|id| *id != first && *id != second).unwrap();
        cluster.power_cut(third);
        cluster.restart(third, 2).await;
        let (_, hosted) = cluster.manager(third).hosted(&tp()).unwrap();
        let header = crate::storage::batch::BatchHeader::parse(&idempotent_batch(2)).unwrap();
        assert_eq!(
            hosted.producers.borrow().check(&header, 99),
            crate::replica::producers::Verdict::Duplicate(
                crate::replica::producers::BatchAt::Committed {
                    base_offset: offsets[1]
                }
            )
        );
    });
}

/// A leader cut off with two proposals of one producer loses both; the next leader commits
/// the retry of the first at the index where the old leader had proposed the second. Once
/// the old leader leads again, the retry of the second is a new batch there, not a
/// duplicate of the first: it is written, and answered at its own offset. (Before, the old
/// leader took the committed batch for its own proposal at that index, and answered the
/// retry of the second with the first's offset: acknowledged, never written.)
#[test]
fn a_retry_lost_with_its_leaders_term_is_written_when_that_leader_leads_again() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let first = cluster.elect().await;
        let produce = produce_idempotent;
        let answer = cluster.answers(vec![produce(&cluster, first, 0)]).await;
        assert_eq!(answer[0].error_code, codes::NONE);

        // Cut off, the leader proposes two batches (sequences 2 and 4); neither can commit.
        cluster.set_cut(first, true);
        let lost = vec![produce(&cluster, first, 2), produce(&cluster, first, 4)];
        let second = loop {
            let leader = cluster.elect().await;
            if leader != first {
                break leader;
            }
        };
        // The retry of the first commits at the index the old leader gave the second.
        let mut retried = None;
        for _ in 0..20 {
            let answer = cluster.answers(vec![produce(&cluster, second, 2)]).await;
            if answer[0].error_code == codes::NONE {
                retried = Some(answer[0]);
                break;
            }
            cluster.step().await;
        }
        let retried = retried.expect("the new leader takes the retry");
        cluster.set_cut(first, false);
        let lost_answers = cluster.answers(lost).await;
        assert!(lost_answers.iter().all(|a| a.error_code != codes::NONE));
        cluster.steps(20).await;

        // Leadership goes back to the old leader (as balancing would).
        assert!(cluster
            .manager(second)
            .driver
            .borrow_mut()
            .transfer_leader(GROUP, first));
        for _ in 0..40 {
            cluster.step().await;
            if cluster.leader() == Some(first) {
                break;
            }
        }
        assert_eq!(cluster.leader(), Some(first));
        let mut written = None;
        for _ in 0..20 {
            let answer = cluster.answers(vec![produce(&cluster, first, 4)]).await;
            if answer[0].error_code != codes::NOT_LEADER_OR_FOLLOWER {
                written = Some(answer[0]);
                break;
            }
            cluster.step().await;
        }
        let written = written.expect("the old leader answers the retry");
        assert_eq!(written.error_code, codes::NONE);
        assert_ne!(written.base_offset, retried.base_offset);
        let (_, held) = fetch_all(&cluster.manager(first)).await;
        let at = |sequence: i32| {
            let wanted = payload(&idempotent_batch(sequence));
            held.iter()
                .filter(|(_, bytes)| *bytes == wanted)
                .map(|(offset, _)| *offset)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(2), [retried.base_offset]);
        assert_eq!(
            at(4),
            [written.base_offset],
            "the second batch is written once, where acknowledged"
        );
    });
}

/// The production wiring: each manager's own driver task (`start`: real ticks, rounds on
/// arrival) and a sender that encodes every frame to the wire and the peer decodes
/// (`set_sender`, as shard 0's transport does). A leader is elected and an acks=all produce
/// is acknowledged and replicated. Waits for a real election (1-2 s of ticks).
#[test]
fn driver_tasks_and_senders_replicate_over_encoded_frames() {
    use ringfeed_replication::wire::WireLimits;
    run(|| async {
        let mut managers = Vec::new();
        for id in 1..=3 {
            let disk = SimDisk::new();
            managers.push(start_manager(id, disk, &SimClock::new(0), 1, 2).await);
        }
        let peers: Rc<Vec<std::rc::Weak<ReplicaManager>>> =
            Rc::new(managers.iter().map(Rc::downgrade).collect());
        for manager in &managers {
            let peers = peers.clone();
            manager.set_sender(Box::new(move |frame: Frame| {
                let mut bytes = bytes::BytesMut::new();
                frame.encode(&mut bytes);
                let decoded = Frame::decode(&bytes, &WireLimits::default()).expect("valid frame");
                if let Some(peer) = peers[(decoded.to_node - 1) as usize].upgrade() {
                    peer.receive(decoded);
                }
            }));
            manager.start();
        }
        let mut leader = None;
        for _ in 0..500 {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            leader = managers.iter().find(|m| {
                m.leader_and_term(GROUP)
                    .is_some_and(|(leader, _)| leader == m.node_id())
            });
            if leader.is_some_and(|m| m.committed_in_term(GROUP)) {
                break;
            }
        }
        let leader = leader.expect("a leader within 5 s").clone();
        let answer = leader
            .dispatch_produce(&tp(), vec![batch("wired")], -1)
            .wait()
            .await;
        assert_eq!(answer.error_code, codes::NONE);
        let high_watermark = leader.high_watermark(GROUP).expect("hosted");
        for _ in 0..500 {
            if managers
                .iter()
                .all(|m| m.high_watermark(GROUP) == Some(high_watermark))
            {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        for manager in &managers {
            assert_eq!(manager.high_watermark(GROUP), Some(high_watermark));
            assert_eq!(manager.counts().outbound_frames_dropped, 0);
            manager.stop();
        }
    });
}

/// The seeds of a seeded test: `quick`, or `RINGFEED_REPLICA_SEEDS` of them from 1 (a long
/// run: `RINGFEED_REPLICA_SEEDS=500 cargo test -p ringfeed-broker --release replica::`).
pub(crate) fn seeds_from_env(quick: impl IntoIterator<Item = u64>) -> Vec<u64> {
    match std::env::var("RINGFEED_REPLICA_SEEDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(count) => (1..=count).collect(),
        None => quick.into_iter().collect(),
    }
}

/// Seeded faults against the invariant that matters: an acks=all batch, once acknowledged,
/// is held at its offset with its bytes by every later leader, and replicas agree byte for
/// byte on their committed prefix. Each seed runs produces (acks=all and acks=1) at whoever
/// leads, cuts and heals nodes, and power-cuts and restarts them; after healing everything
/// a final leader must hold every acknowledged acks=all batch. A failing seed replays.
#[test]
fn seeded_faults_never_lose_an_acknowledged_batch() {
    for seed in seeds_from_env(1..=6) {
        run(move || async move {
            let mut rng = crate::storage::sim::SeededRng::new(seed);
            let mut cluster = Cluster::new(2).await;
            let mut calls: Vec<(String, Rc<RefCell<Option<ReplicaProduce>>>)> = Vec::new();
            for round in 0..60 {
                match rng.below(6) {
                    0 => cluster.toggle_cut(rng.range(1, 3)),
                    1 if rng.below(2) == 0 => cluster.power_cycle(rng.range(1, 3)).await,
                    _ => {
                        if let Some(leader) = cluster.leader() {
                            let label = format!("s{seed}r{round}");
                            let acks = if rng.below(3) == 0 { 1 } else { -1 };
                            let answers =
                                cluster.produce(leader, std::slice::from_ref(&label), acks);
                            if acks == -1 {
                                calls.push((label, answers[0].clone()));
                            }
                        }
                    }
                }
                let steps = rng.range(1, 25) as usize;
                cluster.steps(steps).await;
            }
            for node in &mut cluster.nodes {
                node.cut = false;
            }
            let leader = cluster.elect().await;
            let answered: Vec<Rc<RefCell<Option<ReplicaProduce>>>> =
                calls.iter().map(|(_, cell)| cell.clone()).collect();
            cluster.until_answered(&answered).await;
            let labels: Vec<String> = calls.iter().map(|(label, _)| label.clone()).collect();
            let acknowledged = acked(&labels, &answered);
            let (_, held) = fetch_all(&cluster.manager(leader)).await;
            assert_acknowledged_held(&acknowledged, &held, &format!("seed {seed}: final leader"));
            cluster.steps(60).await;
            let leader_entries = entries(&cluster, leader).await;
            let committed = cluster
                .manager(leader)
                .leader_and_term(GROUP)
                .map(|_| leader_entries.len());
            for id in 1..=3 {
                let theirs = entries(&cluster, id).await;
                let agree = committed.unwrap_or(0).min(theirs.len());
                assert_eq!(
                    theirs[..agree],
                    leader_entries[..agree],
                    "seed {seed}: replica {id} differs from the leader"
                );
                assert_eq!(
                    cluster.manager(id).counts().offset_mismatches,
                    0,
                    "seed {seed}: replica {id}'s high watermark left its log's offsets"
                );
            }
        });
    }
}

/// Under steady load a follower never has the leader's very last entry when the leader
/// looks, yet it is in sync: it keeps reaching what the leader had a moment before. One
/// that stops answering leaves the in-sync set after `replica.lag.time.max.ms`.
#[test]
fn followers_under_steady_load_stay_in_sync() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        // 4 s of simulated time, four times the lag, a batch every 100 ms.
        for step in 0..40 {
            cluster.produce(leader, &[format!("load{step}")], 1);
            cluster.step().await;
        }
        assert_eq!(cluster.manager(leader).in_sync(GROUP), [1, 2, 3]);
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        cluster.nodes[(follower - 1) as usize].cut = true;
        for step in 0..30 {
            cluster.produce(leader, &[format!("more{step}")], 1);
            cluster.step().await;
        }
        let in_sync = cluster.manager(leader).in_sync(GROUP);
        assert_eq!(in_sync.len(), 2, "{in_sync:?}");
        assert!(!in_sync.contains(&follower));
    });
}

/// Steps until `id` no longer leads and another node does; returns that node and the steps.
async fn until_leadership_moves_from(
    cluster: &mut Cluster,
    id: u64,
    steps_max: usize,
) -> (u64, usize) {
    for step in 1..=steps_max {
        cluster.step().await;
        if let Some(leader) = cluster.leader().filter(|&leader| leader != id) {
            return (leader, step);
        }
    }
    panic!("leadership did not move from {id} within {steps_max} steps");
}

/// Controlled shutdown: the leader hands its group to the preferred replica (in sync),
/// within a few round trips; produce calls during the transfer are refused
/// `NOT_LEADER_OR_FOLLOWER` at once, calls waiting are answered (never left hanging), and
/// every acknowledged batch is on the successor at its offset.
#[test]
fn a_handed_over_group_moves_to_an_in_sync_replica_and_keeps_every_acknowledged_batch() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let first = cluster.elect().await;
        let before = labels("a", 10);
        let cells = cluster.produce(first, &before, -1);
        cluster.until_answered(&cells).await;
        let mut acknowledged = acked(&before, &cells);
        assert_eq!(acknowledged.len(), before.len());
        cluster.steps(3).await;
        let expected = if first == 1 { 2 } else { 1 };
        assert_eq!(cluster.manager(first).successor(GROUP), Some(expected));

        // In flight when the shutdown starts.
        let in_flight = labels("b", 5);
        let in_flight_cells = cluster.produce(first, &in_flight, -1);
        assert_eq!(
            cluster.manager(first).hand_over_leadership(),
            1,
            "still leading"
        );
        let refused = cluster
            .manager(first)
            .dispatch_produce(&tp(), vec![batch("c")], -1);
        assert_eq!(
            refused.wait().await.error_code,
            codes::NOT_LEADER_OR_FOLLOWER
        );

        let (successor, steps) = until_leadership_moves_from(&mut cluster, first, 20).await;
        assert_eq!(
            successor, expected,
            "the preferred replica, in sync, takes over"
        );
        assert!(
            steps <= 10,
            "moved within one election timeout: {steps} steps"
        );
        assert_eq!(cluster.manager(first).hand_over_leadership(), 0);
        cluster.until_answered(&in_flight_cells).await;
        for cell in &in_flight_cells {
            let code = cell.borrow().expect("answered").error_code;
            assert!(
                code == codes::NONE || code == codes::NOT_LEADER_OR_FOLLOWER,
                "answered {code}"
            );
        }
        acknowledged.extend(acked(&in_flight, &in_flight_cells));
        cluster.steps(5).await;
        let (_, held) = fetch_all(&cluster.manager(successor)).await;
        assert_acknowledged_held(&acknowledged, &held, "successor");
        // Every in-flight batch was in the log the successor caught up on: committed.
        for label in &in_flight {
            assert!(
                held.iter()
                    .any(|(_, bytes)| *bytes == payload(&batch(label))),
                "{label}"
            );
        }
        // The old leader refuses leadership from now on (say, a balancing leader handing
        // the group back): it does not campaign, and the leader gives the transfer up.
        let back = handover::Transfer {
            group_id: GROUP,
            to: first,
        };
        assert!(cluster
            .manager(successor)
            .driver
            .borrow_mut()
            .transfer_leader(GROUP, first));
        cluster.steps(5).await;
        assert_eq!(cluster.leader(), Some(successor));
        assert_eq!(cluster.manager(successor).abort_transfers(&[back]), 1);
        assert_eq!(
            cluster
                .manager(successor)
                .driver
                .borrow()
                .transferring_to(GROUP),
            None
        );
        let after = labels("d", 3);
        let cells = cluster.produce(successor, &after, -1);
        cluster.until_answered(&cells).await;
        assert_eq!(
            acked(&after, &cells).len(),
            after.len(),
            "the successor acknowledges"
        );
    });
}

/// A new leader is reported (and so named in Metadata) only once it has applied an entry of
/// its term, when it serves idempotent producers; one cut off before its term's first entry
/// commits is not reported.
#[test]
fn a_leader_is_reported_once_it_serves() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let mut leader = None;
        for _ in 0..400 {
            cluster.step().await;
            leader = cluster.leader();
            if leader.is_some() {
                break;
            }
        }
        let leader = leader.expect("a leader elected");
        let term = cluster.manager(leader).leader_and_term(GROUP).unwrap().1;
        // Cut off as soon as it leads: its term's empty entry cannot commit.
        cluster.nodes[(leader - 1) as usize].cut = true;
        cluster.steps(3).await;
        assert_eq!(
            cluster.manager(leader).leader_and_term(GROUP),
            Some((leader, term)),
            "still leading (check quorum has not stepped it down yet)"
        );
        let early = cluster.manager(leader).take_leadership_changes();
        assert!(
            early.iter().all(|change| change.leader != leader),
            "reported before it could serve: {early:?}"
        );
        cluster.nodes[(leader - 1) as usize].cut = false;
        let mut reported = Vec::new();
        for _ in 0..5 {
            cluster.step().await;
            reported.extend(cluster.manager(leader).take_leadership_changes());
        }
        assert!(
            reported
                .iter()
                .any(|change| change.leader == leader && change.term == term),
            "reported once it serves: {reported:?}"
        );
    });
}

/// Leader balancing: a group led elsewhere goes back to its preferred replica (the first
/// voter) once the caller wants that broker balanced, and only then.
#[test]
fn leadership_returns_to_the_preferred_replica_when_wanted() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let mut leader = cluster.elect().await;
        if leader == 1 {
            assert!(cluster
                .manager(1)
                .driver
                .borrow_mut()
                .transfer_leader(GROUP, 2));
            leader = until_leadership_moves_from(&mut cluster, 1, 20).await.0;
        }
        cluster.steps(3).await;
        assert!(cluster
            .manager(leader)
            .move_to_preferred(|_| false)
            .is_empty());
        cluster.steps(3).await;
        assert_eq!(cluster.leader(), Some(leader));
        let started = cluster
            .manager(leader)
            .move_to_preferred(|broker| broker == 1);
        assert_eq!(
            started,
            [handover::Transfer {
                group_id: GROUP,
                to: 1
            }]
        );
        let (now, _) = until_leadership_moves_from(&mut cluster, leader, 20).await;
        assert_eq!(now, 1);
        assert!(
            cluster.manager(1).move_to_preferred(|_| true).is_empty(),
            "already there"
        );
        let after = labels("e", 3);
        let cells = cluster.produce(1, &after, -1);
        cluster.until_answered(&cells).await;
        assert_eq!(acked(&after, &cells).len(), after.len());
    });
}

/// The replication metrics: the leader's groups, elections, a follower cut off leaving the
/// in-sync set (under-replicated, an ISR shrink, its lag growing) and coming back (an
/// expand).
#[test]
fn replication_snapshot_counts_leaders_isr_changes_and_lag() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let snapshot = cluster.manager(leader).replication_snapshot();
        assert_eq!((snapshot.groups, snapshot.groups_led), (1, 1));
        assert_eq!(snapshot.counts.leader_elections, 1);
        assert_eq!((snapshot.under_replicated, snapshot.under_min_isr), (0, 0));
        let follower = if leader == 3 { 2 } else { 3 };
        assert_eq!(
            cluster.manager(follower).replication_snapshot().groups_led,
            0
        );

        cluster.nodes[(follower - 1) as usize].cut = true;
        let cells = cluster.produce(leader, &labels("f", 4), -1);
        cluster.until_answered(&cells).await;
        cluster.steps(30).await;
        let snapshot = cluster.manager(leader).replication_snapshot();
        assert_eq!(snapshot.under_replicated, 1, "{snapshot:?}");
        assert_eq!(
            snapshot.under_min_isr, 0,
            "two of three in sync, min.insync.replicas 2"
        );
        assert!(snapshot.follower_lag_entries_max >= 4, "{snapshot:?}");
        assert_eq!(snapshot.counts.isr_shrinks, 1, "{snapshot:?}");

        cluster.nodes[(follower - 1) as usize].cut = false;
        cluster.steps(30).await;
        let snapshot = cluster.manager(leader).replication_snapshot();
        assert_eq!(
            (snapshot.under_replicated, snapshot.follower_lag_entries),
            (0, 0),
            "{snapshot:?}"
        );
        assert_eq!(snapshot.counts.isr_expands, 1, "{snapshot:?}");
        assert_eq!(snapshot.counts.leader_elections, 1);
    });
}

/// A batch of one record whose value is `bytes` long.
fn large_batch(label: &str, bytes: usize) -> Bytes {
    let value = label.as_bytes().iter().copied().cycle().take(bytes);
    build::batch(&[build::Record {
        key: Some(label.as_bytes()),
        value: Some(&value.collect::<Vec<u8>>()),
        timestamp_ms: 1_000,
    }])
}

/// A follower cut off while the leader commits more than it keeps in memory (the store's
/// recent entries, `RECENT_BYTES_MAX`) catches up from the leader's log once healed: the
/// leader reads what memory no longer holds from disk (raft-rs's asynchronous fetch), so the
/// follower ends with every entry, byte for byte, and is back in sync.
#[test]
fn a_follower_behind_the_leaders_memory_catches_up_from_its_log() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        cluster.set_cut(follower, true);
        // Three times the leader's memory, 64 KiB a batch.
        let batches = 3 * manager::RECENT_BYTES_MAX / (64 << 10);
        let manager = cluster.manager(leader);
        let mut cells = Vec::new();
        for round in 0..batches / 8 {
            for i in 0..8 {
                let label = format!("large{round}-{i}");
                let pending =
                    manager.dispatch_produce(&tp(), vec![large_batch(&label, 64 << 10)], -1);
                let cell = Rc::new(RefCell::new(None));
                let sink = cell.clone();
                glommio::spawn_local(async move {
                    *sink.borrow_mut() = Some(pending.wait().await);
                })
                .detach();
                cells.push(cell);
            }
            cluster.step().await;
        }
        cluster.until_answered(&cells).await;
        assert!(cells
            .iter()
            .all(|cell| cell.borrow().expect("answered").error_code == codes::NONE));
        let leader_entries = entries(&cluster, leader).await;
        assert!(entries(&cluster, follower).await.len() < leader_entries.len() / 2);
        // Applied entries left the leader's memory: it keeps its budget, not the log.
        let held = manager
            .driver
            .borrow()
            .store(GROUP)
            .expect("hosted")
            .recent_bytes();
        assert!(held <= manager::RECENT_BYTES_MAX, "{held} bytes held");

        cluster.set_cut(follower, false);
        cluster.steps(100).await;
        let follower_entries = entries(&cluster, follower).await;
        assert_eq!(
            follower_entries.len(),
            leader_entries.len(),
            "the follower caught up"
        );
        for (ours, theirs) in leader_entries.iter().zip(&follower_entries) {
            assert_eq!((ours.index, ours.term), (theirs.index, theirs.term));
            assert_eq!(ours.batch, theirs.batch, "entry {} differs", ours.index);
        }
        assert_eq!(cluster.manager(leader).in_sync(GROUP), [1, 2, 3]);
        assert!(cluster.manager(leader).counts().entries_fetches >= 2);
    });
}

/// A replica whose log cannot be opened (here: EMFILE) is answered `KAFKA_STORAGE_ERROR`, as
/// an offline plain log is, not `NOT_LEADER_OR_FOLLOWER` (which would send clients looking
/// for a leader that this broker's metadata may well name); the next reconcile tries again
/// and serves it, and a replica no longer wanted is forgotten.
#[test]
fn a_replica_whose_log_cannot_be_opened_answers_a_storage_error() {
    run(|| async {
        let cluster = Cluster::new(2).await;
        let manager = cluster.manager(1);
        let table = crate::partition::PartitionTable::new(16);
        table.set_replicas(manager.clone());
        let broken_tp = TopicPartition {
            topic: "broken".into(),
            partition: 0,
        };
        let broken = HostedReplica {
            topic: broken_tp.clone(),
            topic_id: Uuid::from_u128(0xb0),
            group_id: GROUP + 1,
            ..replica(2)
        };
        let nowhere = TopicPartition {
            topic: "nowhere".into(),
            partition: 0,
        };

        cluster.disk(1).fail_next_open();
        manager.reconcile(&[replica(2), broken.clone()]).await;
        assert!(manager.failed_to_open(&broken_tp).is_some());
        assert_eq!(
            table.log(&broken_tp).err(),
            Some(codes::KAFKA_STORAGE_ERROR)
        );
        assert!(table.served(&broken_tp).is_err());
        assert_eq!(
            table.log(&nowhere).err(),
            Some(codes::NOT_LEADER_OR_FOLLOWER)
        );

        manager.reconcile(&[replica(2), broken.clone()]).await;
        assert!(manager.failed_to_open(&broken_tp).is_none());
        assert!(manager.hosts(&broken_tp));
        assert!(matches!(
            table.served(&broken_tp),
            Ok(crate::partition::Served::Replica(_))
        ));

        manager.reconcile(&[replica(2)]).await;
        let other = HostedReplica {
            topic: nowhere.clone(),
            group_id: GROUP + 2,
            ..broken.clone()
        };
        cluster.disk(1).fail_next_open();
        manager.reconcile(&[replica(2), other]).await;
        assert!(manager.failed_to_open(&nowhere).is_some());
        manager.reconcile(&[replica(2)]).await;
        assert!(
            manager.failed_to_open(&nowhere).is_none(),
            "no longer wanted"
        );
        assert_eq!(
            table.log(&nowhere).err(),
            Some(codes::NOT_LEADER_OR_FOLLOWER)
        );
    });
}

/// Quiet groups on the broker's replica managers (`ringfeed_replication::driver::quiet`):
/// an idle group goes quiet on every replica; an acks=all produce to it is acknowledged in
/// as many steps as when it was awake; it goes quiet again; and when its leader is
/// power-cut, the survivors elect within the liveness timeout and an election or two.
#[test]
fn an_idle_group_goes_quiet_wakes_for_a_produce_and_survives_its_leaders_loss() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let awake = cluster.produce(leader, &labels("awake", 1), -1);
        let answered = |cell: &Rc<RefCell<Option<ReplicaProduce>>>| {
            let cell = cell.clone();
            move |_: &Cluster| cell.borrow().is_some()
        };
        let awake_steps = cluster
            .steps_until(100, "awake answer", answered(&awake[0]))
            .await;
        assert!(!cluster.all_quiet());
        let settled = cluster
            .steps_until(40, "every group quiet", Cluster::all_quiet)
            .await;

        let quiet = cluster.produce(leader, &labels("quiet", 1), -1);
        let quiet_steps = cluster
            .steps_until(100, "quiet answer", answered(&quiet[0]))
            .await;
        assert_eq!(
            quiet_steps, awake_steps,
            "a quiet group acknowledges as fast as an awake one"
        );
        let acknowledged = acked(&labels("quiet", 1), &quiet);
        assert_eq!(acknowledged.len(), 1, "{:?}", quiet[0].borrow());
        cluster
            .steps_until(40, "every group quiet again", Cluster::all_quiet)
            .await;

        cluster.power_cut(leader);
        // The liveness timeout, two of the longest election timeouts (a split vote), and a
        // pre-vote and a vote round: far below a quiet follower's own 10-20 s.
        let failover = cluster
            .steps_until(
                PEER_LIVENESS_STEPS as usize + 2 * ELECTION_TICKS_MAX + 3,
                "a new leader after the quiet leader's loss",
                |cluster| cluster.leader().is_some(),
            )
            .await;
        println!(
            "settled quiet in {settled} ticks; acks=all answered in {awake_steps} steps awake, \
             {quiet_steps} quiet; a new leader {failover} ticks after the old one's power cut"
        );
        let (_, held) = fetch_all(&cluster.manager(cluster.leader().expect("led"))).await;
        assert_acknowledged_held(&acknowledged, &held, "the new leader");
    });
}
