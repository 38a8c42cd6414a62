//! Transactions on one partition through the partition table, as the produce path, the
//! coordinator's markers and `read_committed` fetches use it: examples, then a property test
//! against a model, with crashes (process crash and power cut on the simulated disk) between
//! steps.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::disk::BrokerDisk;
use crate::producer_state::{INVALID_TXN_STATE, TRANSACTION_COORDINATOR_FENCED};
use crate::storage::batch::build::{self, Record};
use crate::storage::batch::BatchHeader;
use crate::storage::sim::{CrashMode, SimDisk};
use crate::storage::{Clock, LogConfig};

use crate::test_executor::run;

fn tp() -> TopicPartition {
    TopicPartition {
        topic: "t".into(),
        partition: 0,
    }
}

/// A table owning `t-0`, its log opened (recovered) on `disk`.
async fn open_table(disk: &SimDisk) -> PartitionTable {
    let config = LogConfig {
        preallocate_step_bytes: 4096,
        ..LogConfig::default()
    };
    let (log, _) = PartitionLog::open_on(
        BrokerDisk::Sim(disk.clone()),
        Path::new("/data/t-0"),
        config,
        Clock::System,
    )
    .await
    .expect("open");
    let table = PartitionTable::new(16);
    table.insert(
        tp(),
        PartitionSlot::Online {
            topic_id: Uuid::nil(),
            log,
        },
    );
    table
}

/// One batch of `records` records of producer `producer_id` (epoch 0) from `base_sequence`;
/// transactional when asked. Producer -1 is a plain (non-idempotent) batch.
fn batch(producer_id: i64, base_sequence: i32, records: usize, transactional: bool) -> Bytes {
    let value = base_sequence.to_be_bytes();
    let records: Vec<_> = (0..records)
        .map(|_| Record {
            key: None,
            value: Some(&value),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    let batch = build::batch(&records);
    if producer_id < 0 {
        return batch;
    }
    crate::replica::tests::as_producer_batch(&batch, producer_id, 0, base_sequence, transactional)
}

async fn produce(table: &PartitionTable, batch: Bytes) -> ProduceOutcome {
    let origin = ProduceOrigin {
        connection_id: 1,
        request_sequence: 0,
    };
    table
        .dispatch_produce(tp(), vec![batch], -1, origin, None)
        .run(table)
        .await
}

fn marker(producer_id: i64, commit: bool) -> TxnMarker {
    TxnMarker {
        producer_id,
        producer_epoch: 0,
        commit,
        coordinator_epoch: 0,
    }
}

/// The base offsets of the data batches a `read_committed` client keeps from `outcome`.
fn consumed(outcome: &FetchOutcome) -> Vec<i64> {
    crate::replica::tests::kept_by_read_committed(
        &outcome.batches,
        &outcome.aborted_transactions,
        &mut HashSet::new(),
    )
    .into_iter()
    .map(|kept| BatchHeader::parse(kept).expect("header").base_offset)
    .collect()
}

async fn read_committed(table: &PartitionTable, offset: i64) -> FetchOutcome {
    table
        .fetch_isolated(&tp(), offset, 1 << 20, Isolation::ReadCommitted)
        .await
}

#[test]
fn commit_and_abort_move_the_lso_and_read_committed_skips_aborted_data() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        let plain = produce(&table, batch(-1, 0, 2, false)).await;
        assert_eq!((plain.error_code, plain.base_offset), (codes::NONE, 0));
        let first = produce(&table, batch(1, 0, 3, true)).await;
        assert_eq!(first.base_offset, 2);
        let other = produce(&table, batch(2, 0, 1, true)).await;
        assert_eq!(other.base_offset, 5);
        produce(&table, batch(-1, 0, 1, false)).await;
        let open = read_committed(&table, 0).await;
        assert_eq!((open.high_watermark, open.last_stable_offset), (7, 2));
        assert_eq!(
            consumed(&open),
            vec![0],
            "only the data before the open transaction"
        );
        let uncommitted = table.fetch(&tp(), 0, 1 << 20).await;
        assert_eq!(
            uncommitted.batches.len(),
            4,
            "read_uncommitted sees everything"
        );
        assert_eq!(uncommitted.last_stable_offset, 2, "and is told the LSO");
        let latest = table
            .list_offset_isolated(&tp(), -1, Isolation::ReadCommitted)
            .await;
        assert_eq!(latest.offset, 2);

        // A non-transactional write of a producer with an open transaction is refused.
        let refused = produce(&table, batch(1, 3, 1, false)).await;
        assert_eq!(refused.error_code, INVALID_TXN_STATE);

        assert_eq!(table.write_txn_marker(&tp(), marker(1, false)).await, Ok(7));
        let after_abort = read_committed(&table, 0).await;
        assert_eq!(after_abort.last_stable_offset, 5, "producer 2 still open");
        assert_eq!(after_abort.aborted_transactions, vec![(1, 2)]);
        assert_eq!(consumed(&after_abort), vec![0]);
        assert_eq!(table.write_txn_marker(&tp(), marker(2, true)).await, Ok(8));
        let done = read_committed(&table, 0).await;
        assert_eq!((done.high_watermark, done.last_stable_offset), (9, 9));
        assert_eq!(
            consumed(&done),
            vec![0, 5, 6],
            "aborted 2-4 skipped, 5 committed"
        );
        // A fetch from past the aborted transaction's marker is not told about it.
        assert!(read_committed(&table, 8)
            .await
            .aborted_transactions
            .is_empty());
        // A retried marker is written again and changes nothing.
        assert_eq!(table.write_txn_marker(&tp(), marker(1, false)).await, Ok(9));
        assert_eq!(
            read_committed(&table, 0).await.aborted_transactions,
            vec![(1, 2)]
        );
    });
}

#[test]
fn stale_markers_are_fenced() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(1, 0, 1, true)).await;
        let bumped = TxnMarker {
            producer_epoch: 1,
            coordinator_epoch: 5,
            ..marker(1, false)
        };
        assert!(table.write_txn_marker(&tp(), bumped).await.is_ok());
        assert_eq!(
            table.write_txn_marker(&tp(), marker(1, true)).await,
            Err(crate::producer_state::INVALID_PRODUCER_EPOCH),
            "epoch 0 after epoch 1"
        );
        let old_coordinator = TxnMarker {
            producer_epoch: 1,
            coordinator_epoch: 4,
            ..marker(1, true)
        };
        assert_eq!(
            table.write_txn_marker(&tp(), old_coordinator).await,
            Err(TRANSACTION_COORDINATOR_FENCED)
        );
        let unknown = TopicPartition {
            topic: "nope".into(),
            partition: 0,
        };
        assert_eq!(
            table.write_txn_marker(&unknown, marker(1, true)).await,
            Err(codes::NOT_LEADER_OR_FOLLOWER)
        );
    });
}

#[test]
fn an_open_transaction_survives_a_crash_and_stays_invisible() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(1, 0, 2, true)).await;
        produce(&table, batch(2, 0, 2, true)).await;
        table
            .write_txn_marker(&tp(), marker(2, false))
            .await
            .expect("marker");
        produce(&table, batch(-1, 0, 1, false)).await;
        for mode in [CrashMode::ProcessCrash, CrashMode::PowerCut] {
            let image = disk.crash_image(mode);
            let reopened = open_table(&image).await;
            let fetched = read_committed(&reopened, 0).await;
            assert_eq!(
                fetched.last_stable_offset, 0,
                "{mode:?}: producer 1 still open"
            );
            assert!(consumed(&fetched).is_empty());
            reopened
                .write_txn_marker(&tp(), marker(1, true))
                .await
                .expect("marker");
            let fetched = read_committed(&reopened, 0).await;
            assert_eq!(fetched.aborted_transactions, vec![(2, 2)], "{mode:?}");
            assert_eq!(consumed(&fetched), vec![0, 5], "{mode:?}");
        }
    });
}

/// An aborted transaction whose marker lies further back than the producer-state scan
/// after a start reaches (`TAIL_SCAN_OFFSETS`, 200,000 offsets) is still known after a crash:
/// a later marker, far enough from the last snapshot, snapshotted it.
#[test]
fn an_aborted_transaction_beyond_the_tail_scan_survives_a_crash_through_the_snapshot() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(1, 0, 2, true)).await;
        table
            .write_txn_marker(&tp(), marker(1, false))
            .await
            .expect("abort");
        for _ in 0..11 {
            let filler = build::filler(20_000, 1, 1_700_000_000_000);
            assert_eq!(produce(&table, filler).await.error_code, codes::NONE);
        }
        // No open transaction for producer 2: written all the same, and far from any
        // snapshot, so it takes one.
        table
            .write_txn_marker(&tp(), marker(2, true))
            .await
            .expect("marker");
        // The snapshot is written in the background.
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let reopened = open_table(&disk.crash_image(CrashMode::PowerCut)).await;
        let fetched = read_committed(&reopened, 0).await;
        assert_eq!(fetched.aborted_transactions, vec![(1, 0)]);
        assert_eq!(
            consumed(&fetched).first(),
            Some(&3),
            "the aborted batch is skipped"
        );
    });
}

/// A `read_committed` long poll parked at the LSO (data above it, in an open transaction)
/// wakes when the commit marker moves the LSO, not at its timeout; a `read_uncommitted` one
/// at the same offset returns at once.
#[test]
fn a_read_committed_wait_wakes_on_the_marker() {
    run(|| async {
        let disk = SimDisk::new();
        let table = std::rc::Rc::new(open_table(&disk).await);
        produce(&table, batch(1, 0, 2, true)).await;
        let long = Duration::from_secs(30);
        let started = Instant::now();
        let outcome = table
            .wait_for_data_isolated(&tp(), 0, long, Isolation::ReadUncommitted)
            .await;
        assert_eq!(outcome, WaitOutcome::Waited);
        assert!(started.elapsed() < Duration::from_secs(5));
        let committer = table.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            committer
                .write_txn_marker(&tp(), marker(1, true))
                .await
                .expect("marker");
        })
        .detach();
        let started = Instant::now();
        table
            .wait_for_data_isolated(&tp(), 0, long, Isolation::ReadCommitted)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken by the marker"
        );
        assert_eq!(read_committed(&table, 0).await.last_stable_offset, 3);
    });
}

/// A `read_committed` long poll parked on a partition whose log closes (a broker shutting
/// down) ends when it closes. It used to loop on the closed log's progress, which completes
/// at once, and never yield: its shard spun until killed (seen stopping 10,000 partitions).
#[test]
fn a_read_committed_wait_ends_when_its_log_closes() {
    run(|| async {
        let disk = SimDisk::new();
        let table = std::rc::Rc::new(open_table(&disk).await);
        produce(&table, batch(1, 0, 2, true)).await;
        let log = table.log(&tp()).expect("log");
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(50)).await;
            log.close().await.expect("close");
        })
        .detach();
        let started = Instant::now();
        table
            .wait_for_data_isolated(&tp(), 0, Duration::from_secs(30), Isolation::ReadCommitted)
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "ended by the close"
        );
    });
}

/// A replicated partition takes transactions through the table as a plain one does: the
/// transactional batch is proposed, the marker written through Raft at the leader, and
/// `read_committed` reads follow (`replica::txn_tests` covers failover and restarts).
#[test]
fn replicated_partitions_take_transactions_through_the_table() {
    use crate::replica::tests::{run, tp, Cluster};
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let table = std::rc::Rc::new(PartitionTable::new(16));
        table.set_replicas(cluster.manager(leader));
        let origin = ProduceOrigin {
            connection_id: 1,
            request_sequence: 0,
        };
        let dispatched = table.dispatch_produce(tp(), vec![batch(1, 0, 1, true)], -1, origin, None);
        let produced = std::rc::Rc::new(std::cell::Cell::new(None));
        let (sink, runner) = (produced.clone(), table.clone());
        glommio::spawn_local(async move { sink.set(Some(dispatched.run(&runner).await)) }).detach();
        while produced.get().is_none() {
            cluster.step().await;
        }
        let produced = produced.get().expect("answered");
        assert_eq!(produced.error_code, codes::NONE);
        // The replica tests' partition, not this module's `tp()`.
        let read_committed = |table: std::rc::Rc<PartitionTable>| async move {
            table
                .fetch_isolated(&tp(), 0, 1 << 20, Isolation::ReadCommitted)
                .await
        };
        let open = read_committed(table.clone()).await;
        assert_eq!(open.error_code, codes::NONE);
        assert_eq!(open.last_stable_offset, produced.base_offset);
        assert!(
            consumed(&open).is_empty(),
            "only the leader's empty entry is below it"
        );

        let marked = std::rc::Rc::new(std::cell::Cell::new(None));
        let (sink, runner) = (marked.clone(), table.clone());
        glommio::spawn_local(async move {
            sink.set(Some(runner.write_txn_marker(&tp(), marker(1, true)).await));
        })
        .detach();
        while marked.get().is_none() {
            cluster.step().await;
        }
        assert_eq!(
            marked.get().expect("answered"),
            Ok(produced.base_offset + 1)
        );
        let committed = read_committed(table.clone()).await;
        assert_eq!(committed.last_stable_offset, committed.high_watermark);
        assert_eq!(consumed(&committed), [produced.base_offset]);
    });
}

/// Records removed by `DeleteRecords` no longer hold `read_committed` readers back: the LSO
/// is at least the log start (Kafka clamps its first unstable offset the same way).
#[test]
fn the_lso_is_never_below_the_log_start() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(-1, 0, 1, false)).await;
        produce(&table, batch(1, 0, 2, true)).await;
        produce(&table, batch(-1, 0, 2, false)).await;
        assert_eq!(read_committed(&table, 0).await.last_stable_offset, 1);
        let deleted = table.delete_records(&tp(), 3).await;
        assert_eq!((deleted.error_code, deleted.offset), (codes::NONE, 3));
        let fetched = read_committed(&table, 3).await;
        assert_eq!(
            (fetched.error_code, fetched.last_stable_offset),
            (codes::NONE, 3)
        );
        let latest = table
            .list_offset_isolated(&tp(), -1, Isolation::ReadCommitted)
            .await;
        assert_eq!(latest.offset, 3);
    });
}

/// A `read_committed` time lookup finds only offsets below the LSO (Kafka's
/// `fetchOffsetForTimestamp`); `read_uncommitted` finds the open transaction's.
#[test]
fn a_read_committed_time_lookup_stops_at_the_lso() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(1, 0, 2, true)).await;
        let time = 1_700_000_000_000;
        let uncommitted = table
            .list_offset_isolated(&tp(), time, Isolation::ReadUncommitted)
            .await;
        assert_eq!(uncommitted.offset, 0);
        let committed = table
            .list_offset_isolated(&tp(), time, Isolation::ReadCommitted)
            .await;
        assert_eq!((committed.error_code, committed.offset), (codes::NONE, -1));
        table
            .write_txn_marker(&tp(), marker(1, true))
            .await
            .expect("marker");
        let committed = table
            .list_offset_isolated(&tp(), time, Isolation::ReadCommitted)
            .await;
        assert_eq!(committed.offset, 0);
    });
}

/// A partition that never held a transactional batch serves `read_committed` readers
/// without loading any producer state (no `transactions.seen` file); one that did loads it,
/// after a restart too.
#[test]
fn read_committed_loads_producer_state_only_where_transactions_were_written() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        produce(&table, batch(-1, 0, 3, false)).await;
        let fetched = read_committed(&table, 0).await;
        assert_eq!((fetched.high_watermark, fetched.last_stable_offset), (3, 3));
        assert_eq!(consumed(&fetched), vec![0]);
        assert!(
            table.producers.loaded_txns(&tp(), |_| ()).is_none(),
            "nothing loaded"
        );
        produce(&table, batch(1, 0, 1, true)).await;
        let reopened = open_table(&disk.crash_image(CrashMode::PowerCut)).await;
        let fetched = read_committed(&reopened, 0).await;
        assert_eq!(
            fetched.last_stable_offset, 3,
            "the open transaction is found"
        );
        assert!(reopened.producers.loaded_txns(&tp(), |_| ()).is_some());
    });
}

/// A step of the property test.
#[derive(Debug, Clone)]
enum Step {
    /// A batch of producer `0..3`, transactional or only idempotent.
    Data { producer: i64, transactional: bool },
    /// A plain batch (no producer id).
    Plain,
    /// The coordinator's marker for the producer.
    End { producer: i64, commit: bool },
    /// The broker crashes and restarts: a process crash (every written batch survives) or a
    /// power cut (only what an fdatasync covered: data is produced with acks=1, so a tail
    /// of it may be lost; markers are answered once durable).
    Crash { power_cut: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3_i64, any::<bool>())
            .prop_map(|(producer, transactional)| Step::Data { producer, transactional }),
        1 => Just(Step::Plain),
        2 => (0..3_i64, any::<bool>()).prop_map(|(producer, commit)| Step::End { producer, commit }),
        1 => any::<bool>().prop_map(|power_cut| Step::Crash { power_cut }),
    ]
}

/// What the log holds, in offset order: each appended data batch (producer -1 plain) or
/// marker, with its offset.
#[derive(Debug, Clone, Copy)]
enum Event {
    Data {
        offset: i64,
        producer: i64,
        transactional: bool,
    },
    Marker {
        offset: i64,
        producer: i64,
        commit: bool,
    },
}

/// The model: where each data batch went and what became of it.
#[derive(Default)]
struct Model {
    /// Base offset → producer (-1 plain) of every data batch appended.
    batches: BTreeMap<i64, i64>,
    /// Producer → base offsets of its open transaction's batches.
    open: BTreeMap<i64, Vec<i64>>,
    /// Base offsets of aborted batches.
    aborted: HashSet<i64>,
    /// Producer → next sequence.
    sequences: BTreeMap<i64, i32>,
    next_offset: i64,
    /// Everything appended, to rebuild the model from what survived a crash.
    history: Vec<Event>,
}

/// Records per data batch of a producer (plain batches hold one).
const RECORDS: i32 = 2;

impl Model {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Data {
                offset,
                producer,
                transactional,
            } => {
                assert_eq!(offset, self.next_offset);
                self.batches.insert(offset, producer);
                if producer < 0 {
                    self.next_offset += 1;
                } else {
                    if transactional {
                        self.open.entry(producer).or_default().push(offset);
                    }
                    *self.sequences.entry(producer).or_default() += RECORDS;
                    self.next_offset += i64::from(RECORDS);
                }
            }
            Event::Marker {
                offset,
                producer,
                commit,
            } => {
                assert_eq!(offset, self.next_offset);
                self.next_offset += 1;
                if let Some(offsets) = self.open.remove(&producer) {
                    if !commit {
                        self.aborted.extend(offsets);
                    }
                }
            }
        }
        self.history.push(event);
    }

    /// The model of the log cut at `high_watermark` (a crash keeps a prefix of the log).
    fn cut_at(&self, high_watermark: i64) -> Model {
        let mut cut = Model::default();
        for event in &self.history {
            let offset = match event {
                Event::Data { offset, .. } | Event::Marker { offset, .. } => *offset,
            };
            if offset < high_watermark {
                cut.apply(*event);
            }
        }
        assert_eq!(
            cut.next_offset, high_watermark,
            "a crash cut a batch in two"
        );
        cut
    }

    fn last_stable_offset(&self) -> i64 {
        self.open
            .values()
            .filter_map(|offsets| offsets.first().copied())
            .min()
            .unwrap_or(self.next_offset)
    }

    fn visible(&self) -> Vec<i64> {
        let stable = self.last_stable_offset();
        self.batches
            .keys()
            .copied()
            .filter(|offset| *offset < stable && !self.aborted.contains(offset))
            .collect()
    }
}

async fn check_against(table: &PartitionTable, model: &Model) {
    let fetched = read_committed(table, 0).await;
    assert_eq!(fetched.error_code, codes::NONE);
    assert_eq!(fetched.high_watermark, model.next_offset);
    assert_eq!(fetched.last_stable_offset, model.last_stable_offset());
    assert_eq!(consumed(&fetched), model.visible());
}

async fn produce_written(table: &PartitionTable, batch: Bytes) -> ProduceOutcome {
    let origin = ProduceOrigin {
        connection_id: 1,
        request_sequence: 0,
    };
    table
        .dispatch_produce(tp(), vec![batch], 1, origin, None)
        .run(table)
        .await
}

async fn play(steps: Vec<Step>) {
    let mut disk = SimDisk::new();
    let mut table = open_table(&disk).await;
    let mut model = Model::default();
    for step in steps {
        match step {
            Step::Data {
                producer,
                transactional,
            } => {
                let sequence = model.sequences.get(&producer).copied().unwrap_or(0);
                let sent = batch(producer, sequence, RECORDS as usize, transactional);
                let outcome = produce_written(&table, sent).await;
                if !transactional && model.open.contains_key(&producer) {
                    assert_eq!(outcome.error_code, INVALID_TXN_STATE);
                    continue;
                }
                assert_eq!(outcome.error_code, codes::NONE, "{step:?}");
                model.apply(Event::Data {
                    offset: outcome.base_offset,
                    producer,
                    transactional,
                });
            }
            Step::Plain => {
                let outcome = produce_written(&table, batch(-1, 0, 1, false)).await;
                model.apply(Event::Data {
                    offset: outcome.base_offset,
                    producer: -1,
                    transactional: false,
                });
            }
            Step::End { producer, commit } => {
                let written = table
                    .write_txn_marker(&tp(), marker(producer, commit))
                    .await
                    .expect("marker written");
                model.apply(Event::Marker {
                    offset: written,
                    producer,
                    commit,
                });
            }
            Step::Crash { power_cut } => {
                let mode = if power_cut {
                    CrashMode::PowerCut
                } else {
                    CrashMode::ProcessCrash
                };
                disk = disk.crash_image(mode);
                table = open_table(&disk).await;
                let high_watermark = table.log(&tp()).expect("online").high_watermark();
                model = model.cut_at(high_watermark);
            }
        }
        check_against(&table, &model).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any interleaving of transactional, idempotent and plain batches, commits, aborts and
    /// crashes (process crashes, and power cuts that lose a tail of unsynced data): the LSO,
    /// the high watermark and what a `read_committed` client keeps match the model of the
    /// log that survived, after every step.
    #[test]
    fn read_committed_matches_the_model(steps in prop::collection::vec(step(), 1..40)) {
        run(move || play(steps));
    }
}

/// What a test verifier was asked: (transactional id, producer, epoch, partition).
type Asked = Rc<RefCell<Vec<(String, i64, i16, TopicPartition)>>>;

/// A verifier answering `answer` (read at each call) and recording what it was asked.
fn recording_verifier(answer: Rc<Cell<i16>>) -> (crate::producer_state::TxnVerifier, Asked) {
    let asked: Asked = Rc::default();
    let record = asked.clone();
    let verifier: crate::producer_state::TxnVerifier =
        Rc::new(move |id, producer_id, epoch, tp| {
            record.borrow_mut().push((id, producer_id, epoch, tp));
            let code = answer.get();
            Box::pin(async move { code })
        });
    (verifier, asked)
}

async fn produce_in(
    table: &PartitionTable,
    batch: Bytes,
    transactional_id: &str,
) -> ProduceOutcome {
    let origin = ProduceOrigin {
        connection_id: 1,
        request_sequence: 0,
    };
    table
        .dispatch_produce(tp(), vec![batch], -1, origin, Some(transactional_id.into()))
        .run(table)
        .await
}

/// KIP-890: a transactional batch that would open its producer's transaction here is
/// verified with the coordinator first. Refused, it opens nothing (readers are not held
/// back by a transaction no coordinator knows); accepted, the transaction's later batches
/// are not asked about again.
#[test]
fn a_batch_outside_its_producers_transaction_is_refused_and_opens_nothing() {
    run(|| async {
        let disk = SimDisk::new();
        let table = open_table(&disk).await;
        let answer = Rc::new(Cell::new(INVALID_TXN_STATE));
        let (verifier, asked) = recording_verifier(answer.clone());
        table.set_txn_verifier(verifier);

        let refused = produce_in(&table, batch(1, 0, 2, true), "tx").await;
        assert_eq!(refused.error_code, INVALID_TXN_STATE);
        assert_eq!(
            asked.borrow().as_slice(),
            &[("tx".to_string(), 1, 0, tp())],
            "the coordinator was asked about this partition"
        );
        produce(&table, batch(-1, 0, 1, false)).await;
        let read = read_committed(&table, 0).await;
        assert_eq!(
            (read.high_watermark, read.last_stable_offset),
            (1, 1),
            "nothing open: the refused batch was not written"
        );

        answer.set(codes::NONE);
        let first = produce_in(&table, batch(1, 0, 2, true), "tx").await;
        assert_eq!((first.error_code, first.base_offset), (codes::NONE, 1));
        let second = produce_in(&table, batch(1, 2, 1, true), "tx").await;
        assert_eq!(second.error_code, codes::NONE);
        assert_eq!(
            asked.borrow().len(),
            2,
            "an open transaction's batches are not asked about"
        );
        let read = read_committed(&table, 0).await;
        assert_eq!(
            read.last_stable_offset, 1,
            "the verified transaction is open"
        );
        table
            .write_txn_marker(&tp(), marker(1, true))
            .await
            .expect("commit");
        // The producer's next transaction is verified again.
        produce_in(&table, batch(1, 3, 1, true), "tx").await;
        assert_eq!(asked.borrow().len(), 3);
    });
}

/// The partition's gate is held while the coordinator answers: a marker for the producer
/// written meanwhile waits, then ends the transaction the verified batch opened. Were it
/// written in between, the batch would open a transaction after its marker, which nothing
/// would ever end.
#[test]
fn a_marker_cannot_slip_between_the_verification_and_the_append() {
    run(|| async {
        let disk = SimDisk::new();
        let table = Rc::new(open_table(&disk).await);
        let (release, released) = futures::channel::oneshot::channel::<()>();
        let released = Rc::new(RefCell::new(Some(released)));
        let verifier: crate::producer_state::TxnVerifier = Rc::new(move |_, _, _, _| {
            let released = released.borrow_mut().take().expect("asked once");
            Box::pin(async move {
                released.await.expect("released");
                codes::NONE
            })
        });
        table.set_txn_verifier(verifier);

        let produced = glommio::spawn_local({
            let table = table.clone();
            async move { produce_in(&table, batch(1, 0, 2, true), "tx").await }
        });
        for _ in 0..10 {
            glommio::executor().yield_task_queue_now().await;
        }
        let marked = glommio::spawn_local({
            let table = table.clone();
            async move { table.write_txn_marker(&tp(), marker(1, false)).await }
        });
        for _ in 0..10 {
            glommio::executor().yield_task_queue_now().await;
        }
        assert_eq!(
            table.fetch(&tp(), 0, 1 << 20).await.high_watermark,
            0,
            "nothing written yet"
        );
        release.send(()).expect("verifier waiting");
        let produced = produced.await;
        let marker_offset = marked.await.expect("marker written");
        assert_eq!(
            (produced.error_code, produced.base_offset),
            (codes::NONE, 0)
        );
        assert_eq!(marker_offset, 2, "the marker after the batch");
        let read = read_committed(&table, 0).await;
        assert_eq!(
            (read.high_watermark, read.last_stable_offset),
            (3, 3),
            "the abort ended the transaction"
        );
        assert_eq!(
            consumed(&read),
            Vec::<i64>::new(),
            "its records are aborted"
        );
    });
}
