//! The harness: one broker shard on the simulated disk and clock, started with
//! `ShardServices::start`, driven by simulated clients through lives separated by crashes.
//!
//! A run is a pure function of its seed: every choice comes from a `SeededRng`, the disk and
//! the clock are simulated, and the executor is one glommio thread whose run queue is FIFO.
//! Time moves only in `drive`: when nothing has changed for a while (every task waits on a
//! timer or an answer), the clock jumps to the next timer.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use kafka_protocol::messages::ApiKey;

use crate::config::BrokerConfig;
use crate::disk::BrokerDisk;
use crate::handlers::{self, Request, RequestContext};
use crate::simulation::clients::{Client, Connection, Life, Role, TRANSACTION_TIMEOUT_MS};
use crate::simulation::model::{Model, PartitionKey, TopicFate};

use crate::settings::Effective;
use crate::shard::{self, ShardServices};
use crate::storage::batch::BatchHeader;
use crate::storage::sim::{CrashMode, SeededRng, SimDisk};
use crate::storage::{Clock, SimClock};

/// The simulated wall clock starts here (2023-11-14), so record timestamps are plausible.
const WALL_START_MS: i64 = 1_700_000_000_000;
/// Yields in a row without progress before the harness calls the executor idle.
const QUIET_YIELDS: u32 = 12;
/// Simulated time one `drive` may take before the run counts as stuck (a livelock).
const DRIVE_TIME_MAX: Duration = Duration::from_secs(3_600);
/// Topics the producers, consumers and groups use; never deleted.
const STABLE_TOPICS: [(&str, i32); 2] = [("sim-a", 2), ("sim-b", 1)];

/// How big one run is.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    pub lives: u32,
    pub operations_per_client: u64,
}

/// What a run did, for the summary line and the determinism check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub seed: u64,
    pub trace_digest: u64,
    pub trace_events: u64,
    pub power_cuts_mid_life: u32,
    pub acked_batches: u64,
    pub acked_commits: u64,
    pub idempotent_retries_checked: u64,
    pub full_scans: u64,
    /// Transactions answered committed and aborted, and `read_committed` scans checked.
    pub committed_txns: u64,
    pub aborted_txns: u64,
    /// Transactions whose producer stalled past their timeout.
    pub txn_timeouts: u64,
    pub read_committed_scans: u64,
    pub simulated_ms: u128,
}

/// Real time one seed may take before the run counts as stuck in a task that never yields
/// (simulated time cannot move then, so only a real clock notices).
const SEED_REAL_TIME_MAX: Duration = Duration::from_secs(300);

/// Runs one seed on its own executor; panics with `seed=N` on a broken invariant.
pub fn run_seed(seed: u64, shape: RunShape) -> RunSummary {
    let executor = glommio::LocalExecutorBuilder::default()
        .name("simulation")
        .spawn(move || async move { Simulation::new(seed).run(shape).await })
        .expect("executor");
    let (finished, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = finished.send(executor.join());
    });
    match outcome.recv_timeout(SEED_REAL_TIME_MAX) {
        Ok(Ok(summary)) => summary,
        Ok(Err(error)) => panic!("seed={seed}: the simulation panicked: {error:?}"),
        Err(error) => panic!(
            "seed={seed}: no end after {SEED_REAL_TIME_MAX:?} of real time ({error}): a task spins without yielding"
        ),
    }
}

/// Sends every API at every version the registry accepts through `handlers::start` on a
/// fresh shard with the stable topics: each request at its all-default value (Produce with
/// acks=1, so it is answered) and, for the APIs with per-partition or per-resource answers,
/// once more naming a stable topic's partition, so those answers are built too. Panics naming the API and version whose handler answers
/// something its version cannot carry (the encoder refuses a field that version lacks: the
/// connection would be closed). Returns how many (API, version) pairs answered.
pub fn answer_every_served_version(seed: u64) -> usize {
    let executor = glommio::LocalExecutorBuilder::default()
        .name("simulation-versions")
        .spawn(move || async move { Simulation::new(seed).answer_every_served_version().await })
        .expect("executor");
    executor.join().expect("the simulation ran")
}

/// (topic, partition, error) of each partition in a produce response, in its order.
pub type PieceAnswers = Vec<(String, i32, i16)>;

/// One Produce request (acks=all, 200 ms timeout) to partitions 0 and 1 of a topic while
/// fdatasyncs stall, and to a topic that does not exist: returns each partition's
/// (topic, partition, error) in the response's order, then, once the stall ends, the
/// (error, base offset) of one more acks=all produce to partition 0.
pub fn produce_pieces_time_out_while_fdatasyncs_stall(seed: u64) -> (PieceAnswers, (i16, i64)) {
    let executor = glommio::LocalExecutorBuilder::default()
        .name("simulation-timeouts")
        .spawn(move || async move {
            Simulation::new(seed)
                .produce_pieces_time_out_while_fdatasyncs_stall()
                .await
        })
        .expect("executor");
    executor.join().expect("the simulation ran")
}

struct Simulation {
    seed: u64,
    rng: SeededRng,
    clock: SimClock,
    disk: SimDisk,
    config: Arc<BrokerConfig>,
    model: Rc<RefCell<Model>>,
    /// Bumped by every answer a client gets, so `drive` sees progress that touches no disk.
    progress: Rc<Cell<u64>>,
    power_cuts_mid_life: u32,
}

impl Simulation {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: SeededRng::new(seed),
            clock: SimClock::new(WALL_START_MS),
            disk: SimDisk::new(),
            config: Arc::new(simulation_config()),
            model: Rc::new(RefCell::new(Model::new(seed))),
            progress: Rc::new(Cell::new(0)),
            power_cuts_mid_life: 0,
        }
    }

    async fn run(mut self, shape: RunShape) -> RunSummary {
        let mut clients = self.clients();
        for life in 0..shape.lives {
            self.model.borrow_mut().start_life(life);
            let shard = self.start().await;
            let life_context = self.life(life, shard.clone());
            if life == 0 {
                self.create_stable_topics(&life_context).await;
            } else {
                self.verify(&life_context).await;
            }
            if self.rng.below(5) < 3 {
                // Mid-life: the power goes off after this many more disk steps, wherever
                // the clients and the broker's tasks are then.
                self.disk.power_cut_after_steps(self.rng.range(1, 600));
            }
            let stall = self.fdatasync_stall();
            let runs = clients
                .into_iter()
                .map(|client| client.run_life(life_context.clone(), shape.operations_per_client));
            let finished = self.drive(join_all(runs)).await;
            clients = finished;
            drop(stall);
            self.disk.release_fdatasyncs();
            if self.disk.is_powered_off() {
                self.power_cuts_mid_life += 1;
            }
            drop(life_context);
            drop(shard);
            self.crash();
        }
        let shard = self.start().await;
        let life = self.life(shape.lives, shard);
        self.verify(&life).await;
        let model = self.model.borrow();
        RunSummary {
            seed: self.seed,
            trace_digest: model.trace_digest(),
            trace_events: model.trace_events,
            power_cuts_mid_life: self.power_cuts_mid_life,
            acked_batches: model.acked_batches,
            acked_commits: model.acked_commits,
            idempotent_retries_checked: model.idempotent_retries_checked,
            full_scans: model.full_scans,
            committed_txns: model.committed_txns,
            aborted_txns: model.aborted_txns,
            txn_timeouts: model.txn_timeouts,
            read_committed_scans: model.read_committed_scans,
            simulated_ms: self.clock.elapsed().as_millis(),
        }
    }

    async fn answer_every_served_version(self) -> usize {
        let shard = self.start().await;
        let life = self.life(0, shard.clone());
        self.create_stable_topics(&life).await;
        let mut answered = 0;
        for spec in crate::registry::SUPPORTED_APIS {
            for version in spec.accepted_min..=spec.advertised_max {
                let context = RequestContext {
                    api_key: spec.key,
                    api_version: version,
                    correlation_id: answered,
                    client_id: Some("sim-versions".into()),
                    peer: std::net::SocketAddr::from(([10, 0, 9, 9], 40_999)),
                    connection_id: 999,
                    listener: 0,
                    principal: std::sync::Arc::from("User:ANONYMOUS"),
                    request_sequence: u64::try_from(answered).expect("counts up from 0"),
                    acls: None,
                };
                let requests = [
                    Some(all_default_request(spec.key)),
                    naming_a_partition(spec.key, version),
                ];
                for request in requests.into_iter().flatten() {
                    let frame = self
                        .drive_call(handlers::start(shard.clone(), context.clone(), request))
                        .await;
                    match frame {
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("{:?} v{version}: no answer", spec.key),
                        Err(error) => panic!("{:?} v{version}: {error}", spec.key),
                    }
                }
                answered += 1;
            }
        }
        usize::try_from(answered).expect("counts up from 0")
    }

    async fn produce_pieces_time_out_while_fdatasyncs_stall(self) -> (PieceAnswers, (i16, i64)) {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};

        let shard = self.start().await;
        let life = self.life(0, shard.clone());
        let mut connection = Connection::new(&life, 1);
        assert_eq!(
            self.drive_call(connection.create_topic("pieces", 2)).await,
            0
        );
        let batch = || {
            crate::storage::batch::build::batch(&[crate::storage::batch::build::Record {
                key: None,
                value: Some(b"piece"),
                timestamp_ms: WALL_START_MS,
            }])
        };
        let topic = |name: &str, partitions: &[i32]| {
            TopicProduceData::default()
                .with_name(TopicName(crate::handlers::context::str_bytes(name)))
                .with_partition_data(
                    partitions
                        .iter()
                        .map(|&index| {
                            PartitionProduceData::default()
                                .with_index(index)
                                .with_records(Some(batch()))
                        })
                        .collect(),
                )
        };
        self.disk.stall_fdatasyncs();
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(200)
            .with_topic_data(vec![topic("pieces", &[0, 1]), topic("missing", &[0])]);
        let response: ProduceResponse = self
            .drive_call(connection.call(ApiKey::Produce, 9, Request::Produce(request)))
            .await;
        let answers = response
            .responses
            .iter()
            .flat_map(|topic| {
                topic.partition_responses.iter().map(|partition| {
                    (
                        topic.name.0.to_string(),
                        partition.index,
                        partition.error_code,
                    )
                })
            })
            .collect();
        self.disk.release_fdatasyncs();
        let after = self
            .drive_call(connection.produce(&("pieces".to_string(), 0), batch(), -1))
            .await;
        (answers, after)
    }

    fn clients(&self) -> Vec<Client> {
        let stable = |index: usize| -> PartitionKey {
            let (topic, _) = STABLE_TOPICS[index % STABLE_TOPICS.len()];
            (topic.to_string(), 0)
        };
        let roles = vec![
            Role::Producer { sent: 0 },
            Role::Producer { sent: 0 },
            Client::idempotent(stable(0)),
            Client::idempotent(stable(1)),
            Role::Consumer,
            Client::group_member("sim-group-0"),
            Client::group_member("sim-group-1"),
            Role::Admin,
            Client::transactional(stable(0), "sim-txn-0", TRANSACTION_TIMEOUT_MS),
            Client::transactional(stable(1), "sim-txn-1", 2_000),
        ];
        roles
            .into_iter()
            .enumerate()
            .map(|(index, role)| Client::new(u16::try_from(index).expect("few"), role, self.seed))
            .collect()
    }

    /// A new shard on the current disk image: controller recovery, partition recovery,
    /// then the first metadata applied.
    /// Life `number` of the broker, on `shard`, as the clients see it.
    fn life(&self, number: u32, shard: Rc<ShardServices>) -> Life {
        Life {
            number,
            shard,
            model: self.model.clone(),
            clock: Clock::Simulated(self.clock.clone()),
            disk: self.disk.clone(),
        }
    }

    async fn start(&self) -> Rc<ShardServices> {
        let config = self.config.clone();
        let disk = BrokerDisk::Sim(self.disk.clone());
        let clock = Clock::Simulated(self.clock.clone());
        let started = async move {
            let meshes = shard::Meshes::new(1, config.limits.mesh_channel_slots);
            let (router, incoming) = shard::join_meshes(meshes).await;
            ShardServices::start(config, disk, clock, router, incoming).await
        };
        match self.drive(started).await {
            Ok(shard) => shard,
            Err(error) => self.model.borrow().violation(&format!(
                "the broker does not restart from the crash image: {error}"
            )),
        }
    }

    async fn create_stable_topics(&self, life: &Life) {
        let mut admin = Connection::new(life, 900);
        for (topic, partitions) in STABLE_TOPICS {
            let error = self.drive_call(admin.create_topic(topic, partitions)).await;
            assert_eq!(error, 0, "seed={}: creating {topic}", self.seed);
            for partition in 0..partitions {
                self.model
                    .borrow_mut()
                    .track_partition((topic.to_string(), partition));
            }
        }
    }

    /// After a restart: every acknowledged batch is in the log at its offset, the log is
    /// dense with no payload twice, the high watermark covers what was acknowledged,
    /// acknowledged commits and topic changes survived.
    async fn verify(&self, life: &Life) {
        let mut reader = Connection::new(life, 901);
        let partitions = self.model.borrow().partitions();
        for key in &partitions {
            let acked_end = self.model.borrow().acked_end(key);
            let (error, latest) = self.drive_call(reader.list_offset(key, -1)).await;
            {
                let model = self.model.borrow();
                if error != 0 {
                    model.violation(&format!(
                        "{key:?}: ListOffsets after restart: error {error}"
                    ));
                }
                model.check_high_watermark(key, latest, acked_end, "after restart");
            }
            let mut batches = Vec::new();
            let mut offset = 0;
            while offset < latest {
                let (error, _, read) = self.drive_call(reader.fetch(key, offset, 0, 1 << 20)).await;
                let Some(last) = read.last() else {
                    self.model.borrow().violation(&format!(
                        "{key:?}: fetch at {offset} below the high watermark {latest} read nothing (error {error})"
                    ));
                };
                offset = crate::storage::batch::BatchHeader::parse(last)
                    .expect("split_batches keeps whole batches")
                    .last_offset()
                    + 1;
                batches.extend(read);
            }
            self.model
                .borrow_mut()
                .check_fetched(key, 0, &batches, true);
            self.verify_read_committed(&mut reader, key).await;
        }
        let commit_keys = self.model.borrow().commit_keys();
        for (group, key) in commit_keys {
            let (error, committed) = self.drive_call(reader.committed(&group, &key)).await;
            let model = self.model.borrow();
            if error != 0 {
                model.violation(&format!(
                    "group {group}: OffsetFetch after restart: error {error}"
                ));
            }
            model.check_committed(&group, &key, committed);
        }
        let names = self.drive_call(reader.topic_names()).await;
        let model = self.model.borrow();
        for (topic, fate) in &model.scratch_topics {
            if let TopicFate::Known(exists) = fate {
                if names.contains(topic) != *exists {
                    model.violation(&format!(
                        "topic {topic}: acknowledged as {} but the restarted broker says otherwise",
                        if *exists { "created" } else { "deleted" }
                    ));
                }
            }
        }
    }

    /// Reads `key` from its start as a `read_committed` Kafka client does (up to the last
    /// stable offset; the batches of the aborted transactions the broker lists, up to each
    /// one's abort marker, dropped) and has the model check what stays.
    async fn verify_read_committed(&self, reader: &mut Connection, key: &PartitionKey) {
        use crate::storage::batch::control::txn_marker_of;
        let mut offset = 0;
        let mut aborted = BTreeSet::new();
        let mut batches = Vec::new();
        loop {
            let (error, last_stable, listed, read) = self
                .drive_call(reader.fetch_committed(key, offset, 1 << 20))
                .await;
            if error != 0 {
                self.model.borrow().violation(&format!(
                    "{key:?}: read_committed fetch at {offset} after restart: error {error}"
                ));
            }
            aborted.extend(
                listed
                    .into_iter()
                    .map(|(producer, first)| (first, producer)),
            );
            let Some(last) = read.last() else { break };
            offset = BatchHeader::parse(last)
                .expect("split_batches keeps whole batches")
                .last_offset()
                + 1;
            batches.extend(read);
            if offset >= last_stable {
                break;
            }
        }
        let mut pending = aborted.into_iter().peekable();
        let mut aborting = BTreeSet::new();
        let mut visible = BTreeSet::new();
        for batch in &batches {
            let header = BatchHeader::parse(batch).expect("split_batches keeps whole batches");
            while let Some((_, producer)) =
                pending.next_if(|(first, _)| *first <= header.base_offset)
            {
                aborting.insert(producer);
            }
            if header.is_control() {
                if txn_marker_of(batch).is_some_and(|(commit, _)| !commit) {
                    aborting.remove(&header.producer_id);
                }
                continue;
            }
            if header.is_transactional() && !aborting.contains(&header.producer_id) {
                visible.insert(header.base_offset);
            }
        }
        self.model
            .borrow_mut()
            .check_read_committed(key, offset, &visible);
    }

    /// Now and then, fdatasyncs stall for a while (a slow device): produce requests time
    /// out, and their retries meet appends that are written but not yet durable.
    fn fdatasync_stall(&mut self) -> Option<glommio::task::JoinHandle<()>> {
        if self.rng.below(3) != 0 {
            return None;
        }
        let (start, length) = (self.rng.below(2_000), self.rng.range(100, 4_000));
        let clock = Clock::Simulated(self.clock.clone());
        let disk = self.disk.clone();
        Some(
            glommio::spawn_local(async move {
                clock.sleep(Duration::from_millis(start)).await;
                disk.stall_fdatasyncs();
                clock.sleep(Duration::from_millis(length)).await;
                disk.release_fdatasyncs();
            })
            .detach(),
        )
    }

    /// The machine stops: the old disk is powered off (the old shard's tasks can change
    /// nothing more) and the next life starts on what survived.
    fn crash(&mut self) {
        self.disk.power_cut_after_steps(0);
        let mode = match self.rng.below(10) {
            0 => CrashMode::ProcessCrash,
            1 | 2 => CrashMode::PowerCutTearingLastWrite {
                keep_bytes: 512 * usize::try_from(self.rng.below(8)).expect("small"),
            },
            _ => CrashMode::PowerCut,
        };
        self.model.borrow_mut().trace(format!("{mode:?}"));
        self.disk = self.disk.crash_image(mode);
    }

    /// Runs a request future of the harness's own to its end (see `drive`).
    async fn drive_call<T: 'static>(&self, call: impl Future<Output = T>) -> T {
        // The harness's connection lives on its stack; the call borrows it, so it cannot be
        // spawned: poll it here, interleaved with the driving.
        let done = Rc::new(RefCell::new(None));
        let finished = done.clone();
        let call = async move {
            *finished.borrow_mut() = Some(call.await);
        };
        let mut call = std::pin::pin!(call);
        let started = self.clock.elapsed();
        loop {
            let mut quiet = 0;
            while quiet < QUIET_YIELDS {
                let before = self.progress_mark();
                if futures::poll!(call.as_mut()).is_ready() {
                    return done.borrow_mut().take().expect("set when ready");
                }
                crate::storage::sim::yield_once().await;
                quiet = if self.progress_mark() == before {
                    quiet + 1
                } else {
                    0
                };
            }
            self.advance_time(started);
        }
    }

    /// Runs `future` in its own task and moves simulated time whenever the executor has
    /// gone quiet, until the future is done.
    async fn drive<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> T {
        let done = Rc::new(RefCell::new(None));
        let finished = done.clone();
        let progress = self.progress.clone();
        let _task = glommio::spawn_local(async move {
            let output = future.await;
            progress.set(progress.get() + 1);
            *finished.borrow_mut() = Some(output);
        });
        let started = self.clock.elapsed();
        loop {
            let mut quiet = 0;
            while quiet < QUIET_YIELDS {
                let before = self.progress_mark();
                crate::storage::sim::yield_once().await;
                if let Some(output) = done.borrow_mut().take() {
                    return output;
                }
                quiet = if self.progress_mark() == before {
                    quiet + 1
                } else {
                    0
                };
            }
            self.advance_time(started);
        }
    }

    /// What changes when anything happens: disk steps, answers, the model's trace.
    fn progress_mark(&self) -> (u64, u64, u64, usize) {
        (
            self.disk.steps(),
            self.progress.get(),
            self.model.borrow().trace_events,
            self.clock.pending_timers(),
        )
    }

    fn advance_time(&self, started: Duration) {
        if !self.clock.advance_to_next_timer() {
            self.model
                .borrow()
                .violation("deadlock: every task waits, and no timer is set");
        }
        if self.clock.elapsed().saturating_sub(started) > DRIVE_TIME_MAX {
            self.model.borrow().violation(&format!(
                "stuck: {DRIVE_TIME_MAX:?} of simulated time passed without finishing"
            ));
        }
    }
}

/// One shard, small segments (rolls happen), small preallocation (the simulated disk keeps
/// every byte in memory), frequent offsets checkpoints.
fn simulation_config() -> BrokerConfig {
    let settings = Effective::defaults();
    let mut limits = settings.limits();
    limits.segment_preallocate_bytes = 16 << 10;
    limits.offsets_checkpoint_records = 16;
    // Transactions past their timeout are aborted within half a second of it.
    limits.transaction_abort_check_interval = Duration::from_millis(500);
    let mut topic_defaults = settings.topic_defaults();
    topic_defaults.segment_bytes = 64 << 10;
    topic_defaults.segment_preallocate_bytes = 16 << 10;
    BrokerConfig {
        listen: "127.0.0.1:9092".parse().expect("an address"),
        advertised_host: "simulated".into(),
        advertised_port: 9092,
        listeners: Vec::new(),
        sasl: crate::config::SaslConfig::default(),
        super_users: Vec::new(),
        peer_tls: None,
        data_dir: PathBuf::from("/data"),
        shard_cpus: vec![0],
        spin_before_park: None,
        auto_create_topics: false,
        default_partitions: 1,
        limits,
        admin_listen: None,
        topic_defaults,
        cluster: settings.cluster(),
        settings: Arc::new(settings),
        tls: crate::tls::TlsConfig::default(),
    }
}

/// The request of `key` at its all-default value, answered (Produce with acks=1).
fn all_default_request(key: ApiKey) -> Request {
    let mut request = Request::default_of(key)
        .unwrap_or_else(|| panic!("{key:?} is advertised but has no request type"));
    if let Request::Produce(produce) = &mut request {
        produce.acks = 1;
    }
    request
}

/// A request of `key` naming partition 0 of the stable topic `sim-a` (or a resource, group
/// or new topic), for the APIs whose answer has a part per partition or resource.
fn naming_a_partition(key: ApiKey, version: i16) -> Option<Request> {
    use kafka_protocol::messages::{self as m, GroupId, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let topic = || TopicName(StrBytes::from_static_str("sim-a"));
    let group = || GroupId(StrBytes::from_static_str("sim-versions"));
    let request = match key {
        ApiKey::ListOffsets => Request::ListOffsets(m::ListOffsetsRequest::default().with_topics(
            vec![m::list_offsets_request::ListOffsetsTopic::default()
                .with_name(topic())
                .with_partitions(vec![
                    m::list_offsets_request::ListOffsetsPartition::default().with_timestamp(-1),
                ])],
        )),
        ApiKey::OffsetCommit => Request::OffsetCommit(
            m::OffsetCommitRequest::default()
                .with_group_id(group())
                .with_topics(vec![
                    m::offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(topic())
                        .with_partitions(vec![
                            m::offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_committed_offset(1),
                        ]),
                ]),
        ),
        ApiKey::OffsetFetch if version < 8 => Request::OffsetFetch(
            m::OffsetFetchRequest::default()
                .with_group_id(group())
                .with_topics(Some(vec![
                    m::offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(topic())
                        .with_partition_indexes(vec![0]),
                ])),
        ),
        ApiKey::OffsetFetch => Request::OffsetFetch(m::OffsetFetchRequest::default().with_groups(
            vec![m::offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(group())
                .with_topics(Some(vec![m::offset_fetch_request::OffsetFetchRequestTopics::default()
                    .with_name(topic())
                    .with_partition_indexes(vec![0])]))],
        )),
        ApiKey::DescribeConfigs => {
            Request::DescribeConfigs(m::DescribeConfigsRequest::default().with_resources(vec![
                m::describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("sim-a")),
            ]))
        }
        ApiKey::DescribeGroups => {
            Request::DescribeGroups(m::DescribeGroupsRequest::default().with_groups(vec![group()]))
        }
        ApiKey::CreateTopics => {
            Request::CreateTopics(m::CreateTopicsRequest::default().with_topics(
                vec![m::create_topics_request::CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(format!("sim-v{version}"))))
                .with_num_partitions(1)
                .with_replication_factor(1)],
            ))
        }
        ApiKey::DeleteTopics if version < 6 => {
            Request::DeleteTopics(m::DeleteTopicsRequest::default().with_topic_names(vec![
                TopicName(StrBytes::from_string(format!("sim-v{version}"))),
            ]))
        }
        ApiKey::Fetch => Request::Fetch(m::FetchRequest::default().with_topics(vec![
            m::fetch_request::FetchTopic::default()
                .with_topic(topic())
                .with_partitions(vec![m::fetch_request::FetchPartition::default()]),
        ])),
        _ => return None,
    };
    Some(request)
}
