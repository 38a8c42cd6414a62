//! Guards the broker's own files against crashes, on `storage`'s simulated disk: the
//! controller's `cluster.meta` and the producer-id block file. Each test checks a model, not
//! an example: whatever step the power is cut after, the durable image holds the old or the
//! new state (the new one once acknowledged), and a producer id handed out before a cut is
//! never handed out again. Random choices come from a seed printed on failure, so a failing
//! case replays exactly.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;

use crate::controller::store::{
    self, ClusterState, ConfigEntry, MetadataStore, PartitionRecord, ReplicaRecord, TopicRecord,
    LOCAL_BROKER,
};
use crate::disk::BrokerDisk;
use crate::producer_state::ProducerIds;
use crate::storage::sim::{CrashMode, SeededRng, SimDisk};

const DATA_DIR: &str = "/data";

fn run<Fut: Future<Output = ()> + 'static>(test: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test ran");
}

fn store_on(disk: &SimDisk) -> MetadataStore {
    MetadataStore::new(BrokerDisk::Sim(disk.clone()), Path::new(DATA_DIR))
}

/// A cluster state of a few random topics; `epoch` tells successive states apart.
fn random_state(rng: &mut SeededRng, epoch: u64) -> ClusterState {
    let topics = (0..rng.below(4))
        .map(|index| TopicRecord {
            name: format!("topic-{epoch}-{index}"),
            id: rng
                .next_u64()
                .to_le_bytes()
                .repeat(2)
                .try_into()
                .expect("16 bytes"),
            partitions: (0..=rng.below(6))
                .map(|group| {
                    let replica = ReplicaRecord {
                        broker: LOCAL_BROKER,
                        shard: rng.below(4) as u32,
                    };
                    PartitionRecord::placed(vec![replica], group + 1)
                })
                .collect(),
            overrides: (0..rng.below(3))
                .map(|n| ConfigEntry {
                    key: format!("key.{n}"),
                    value: "x".repeat(rng.below(5000) as usize),
                })
                .collect(),
        })
        .collect();
    ClusterState {
        epoch,
        cluster_id: "rf-sim".into(),
        topics,
        ..ClusterState::default()
    }
}

/// The mutating disk steps one `persist` takes, measured on a scratch copy of `disk`.
async fn steps_of_one_persist(disk: &SimDisk, state: &ClusterState) -> u64 {
    let scratch = disk.crash_image(CrashMode::ProcessCrash);
    let before = scratch.steps();
    store_on(&scratch).persist(state).await.expect("no fault");
    scratch.steps() - before
}

/// After a power cut or a process crash at any step of `persist`, the store recovers the
/// old state or the new one, whole; once `persist` has returned `Ok`, the new one.
#[test]
fn controller_store_recovers_old_or_new_state_after_a_cut_at_every_step() {
    run(|| async {
        for seed in 0..12_u64 {
            let mut rng = SeededRng::new(seed);
            // `None` first: a fresh data directory whose first write is cut.
            let mut acknowledged: Option<ClusterState> = None;
            let disk = SimDisk::new();
            for epoch in 1..=4 {
                let next = random_state(&mut rng, epoch);
                let steps = steps_of_one_persist(&disk, &next).await;
                for cut in 0..=steps {
                    let attempt = disk.crash_image(CrashMode::ProcessCrash);
                    attempt.power_cut_after_steps(cut);
                    let persisted = store_on(&attempt).persist(&next).await;
                    assert_eq!(persisted.is_ok(), cut >= steps, "seed {seed}: cut {cut}");
                    for mode in [CrashMode::PowerCut, CrashMode::ProcessCrash] {
                        let image = attempt.crash_image(mode);
                        let recovered = store_on(&image).load().await.unwrap_or_else(|error| {
                            panic!("seed {seed}, cut {cut}, {mode:?}: torn state: {error}")
                        });
                        let whole = recovered == acknowledged || recovered.as_ref() == Some(&next);
                        assert!(whole, "seed {seed}, cut {cut}, {mode:?}: neither state");
                        if persisted.is_ok() {
                            assert_eq!(recovered.as_ref(), Some(&next), "seed {seed}: lost");
                        }
                        // A restart from this image can persist again (over a leftover
                        // temporary file) and reads that back.
                        let restarted = store_on(&image);
                        restarted.persist(&next).await.expect("no fault");
                        let reread = restarted.load().await.expect("readable");
                        assert_eq!(reread.as_ref(), Some(&next), "seed {seed}, cut {cut}");
                    }
                }
                store_on(&disk).persist(&next).await.expect("no fault");
                acknowledged = Some(next);
            }
        }
    });
}

/// Producer ids handed out before a crash are never handed out again after a restart from
/// the surviving image, wherever the power is cut, across several block boundaries; a
/// re-init naming one of them bumps its epoch (KIP-360) instead of reissuing it.
#[test]
fn producer_ids_are_never_reused_across_power_cuts() {
    run(|| async {
        for seed in 0..24_u64 {
            let mut rng = SeededRng::new(seed);
            let mut issued = BTreeSet::new();
            let mut disk = SimDisk::new();
            for restart in 0..6 {
                let ids =
                    ProducerIds::new(BrokerDisk::Sim(disk.clone()), Path::new(DATA_DIR), None);
                // A block file write takes a handful of steps: cut inside one now and then.
                if rng.below(3) > 0 {
                    disk.power_cut_after_steps(rng.below(40));
                }
                for _ in 0..rng.below(2500) {
                    match ids.init(-1, -1).await {
                        Ok((id, epoch)) => {
                            assert_eq!(epoch, 0);
                            let fresh = issued.insert(id);
                            assert!(fresh, "seed {seed}, restart {restart}: id {id} reissued");
                        }
                        Err(_) => break, // the power is off: the broker stops here
                    }
                }
                let mode = match rng.below(3) {
                    0 => CrashMode::ProcessCrash,
                    _ => CrashMode::PowerCut,
                };
                disk = disk.crash_image(mode);
                if let Some(&old) = issued.iter().next_back() {
                    let ids =
                        ProducerIds::new(BrokerDisk::Sim(disk.clone()), Path::new(DATA_DIR), None);
                    let reinit = ids.init(old, 3).await.expect("no fault");
                    assert_eq!(
                        reinit,
                        (old, 4),
                        "seed {seed}: issued id {old} not recognised"
                    );
                }
            }
        }
    });
}

/// Two brokers of a cluster take producer ids from blocks the controller grants
/// (`controller::producer_ids`), interleaved, with restarts (a new life asks for a new
/// block) and controller failovers (the state goes through its committed bytes): no id is
/// ever handed out twice, and none below a broker's own `producer-ids` file.
#[test]
fn cluster_producer_ids_never_overlap_across_brokers_restarts_and_failovers() {
    use crate::controller::producer_ids::{grant, granted, ProducerIdRequest};
    use crate::producer_state::GrantedBlocks;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    // Per broker: incarnation, its blocks, its allocator.
    type Broker = (u64, Rc<GrantedBlocks>, Rc<ProducerIds>);
    run(|| async {
        let state = Rc::new(RefCell::new(ClusterState::default()));
        let start = |incarnation: u64, disk: &SimDisk| -> Broker {
            let blocks = Rc::new(GrantedBlocks::default());
            let ids = ProducerIds::new(
                BrokerDisk::Sim(disk.clone()),
                Path::new(DATA_DIR),
                Some(blocks.clone()),
            );
            (incarnation, blocks, Rc::new(ids))
        };
        let disks = [SimDisk::new(), SimDisk::new()];
        // Broker 1 issued 3,500 ids as a one-node broker before joining the cluster: its
        // file holds the block end 4000.
        let own = ProducerIds::new(BrokerDisk::Sim(disks[1].clone()), Path::new(DATA_DIR), None);
        for _ in 0..3500 {
            own.init(-1, -1).await.expect("no fault");
        }
        let brokers: Rc<RefCell<Vec<Broker>>> =
            Rc::new(RefCell::new(vec![start(1, &disks[0]), start(1, &disks[1])]));
        let stop = Rc::new(Cell::new(false));
        // The controller: grants what the heartbeats ask, and each broker sees the state.
        let controller = glommio::spawn_local({
            let (state, brokers, stop) = (state.clone(), brokers.clone(), stop.clone());
            async move {
                let mut rounds = 0_u64;
                while !stop.get() {
                    rounds += 1;
                    {
                        let mut state = state.borrow_mut();
                        if rounds % 7 == 0 {
                            *state = store::decode(&store::encode(&state)).expect("round trip");
                        }
                        // A broker sees the committed state before its heartbeat asks (a
                        // restarted one sees its previous life's block first).
                        for (node, (incarnation, blocks, _)) in brokers.borrow().iter().enumerate()
                        {
                            if let Some(start) = granted(&state, node as i32, *incarnation) {
                                blocks.receive(start);
                            }
                            if let Some((after, floor)) = blocks.request() {
                                let request = ProducerIdRequest { after, floor };
                                grant(&mut state, node as i32, *incarnation, &request);
                            }
                        }
                    }
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        });
        let mut rng = SeededRng::new(5);
        let mut issued = BTreeSet::new();
        for step in 0..6000 {
            let node = rng.below(2) as usize;
            if step % 1500 == 1499 {
                let incarnation = brokers.borrow()[node].0 + 1;
                brokers.borrow_mut()[node] = start(incarnation, &disks[node]);
            }
            let ids = brokers.borrow()[node].2.clone();
            let (id, epoch) = ids.init_or_code(-1, -1).await.expect("a block arrives");
            assert_eq!(epoch, 0);
            assert!(node == 0 || id >= 4000, "broker 1 reissued its own id {id}");
            assert!(issued.insert(id), "step {step}: id {id} handed out twice");
        }
        stop.set(true);
        controller.await;
        assert!(state.borrow().next_producer_id >= 6000);
        // Without a controller, an init is answered a retriable error, not a made-up id.
        let (_, _, alone) = start(9, &SimDisk::new());
        alone.set_block_wait(std::time::Duration::from_millis(20));
        let load_in_progress =
            kafka_protocol::error::ResponseError::CoordinatorLoadInProgress.code();
        assert_eq!(alone.init_or_code(-1, -1).await, Err(load_in_progress));
        // The next one, right after, does not wait a period of its own (an hour here: a
        // regression would be cut off by the minute below, not pass).
        alone.set_block_wait(std::time::Duration::from_secs(3600));
        let next = glommio::timer::timeout(std::time::Duration::from_secs(60), async {
            Ok(alone.init_or_code(-1, -1).await)
        });
        assert_eq!(next.await.expect("answered at once"), Err(load_in_progress));
    });
}

/// `records` records as one idempotent batch of producer 7, epoch 0, from `base_sequence`.
fn idempotent_batch(base_sequence: i32, records: usize) -> bytes::Bytes {
    use crate::storage::batch::build::{self, Record};
    let value = base_sequence.to_le_bytes();
    let records: Vec<_> = (0..records)
        .map(|_| Record {
            key: None,
            value: Some(&value),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    let mut batch = bytes::BytesMut::from(&build::batch(&records)[..]);
    // Kafka's v2 header: producerId at 43, producerEpoch at 51, baseSequence at 53; the
    // CRC at 17 covers everything from the attributes at 21.
    batch[43..51].copy_from_slice(&7_i64.to_be_bytes());
    batch[51..53].copy_from_slice(&0_i16.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.freeze()
}

/// The broker's partition log and producer state on the simulated disk: an idempotent batch
/// acknowledged as durable before a power cut, retried after the restart, is answered with
/// its original offsets and not written again; batches never acknowledged may be lost, but
/// the log after the cut is exactly the acknowledged prefix or more of what was appended.
#[test]
fn idempotent_retry_after_a_power_cut_is_answered_not_rewritten() {
    use crate::disk::PartitionLog;
    use crate::metadata::TopicPartition;
    use crate::producer_state::ProducerStates;
    use crate::storage::{Clock, LogConfig};

    run(|| async {
        let tp = TopicPartition {
            topic: "t".into(),
            partition: 0,
        };
        let dir = Path::new(DATA_DIR).join("t-0");
        let config = LogConfig {
            preallocate_step_bytes: 4096,
            ..LogConfig::default()
        };
        let open = |disk: &SimDisk| {
            PartitionLog::open_on(
                BrokerDisk::Sim(disk.clone()),
                &dir,
                config.clone(),
                Clock::System,
            )
        };
        for seed in 0..8_u64 {
            let mut rng = SeededRng::new(seed);
            let disk = SimDisk::new();
            let (log, _) = open(&disk).await.expect("open");
            let states = ProducerStates::default();
            let mut acknowledged = Vec::new();
            let mut sequence = 0;
            for _ in 0..=rng.below(6) {
                let records = 1 + rng.below(5) as usize;
                let batch = idempotent_batch(sequence, records);
                let checked = log.check(batch.clone()).expect("valid batch");
                let outcome = states.append(&tp, &log, checked).await.expect("appended");
                log.wait_durable(outcome.last_offset)
                    .await
                    .expect("durable");
                acknowledged.push((batch, outcome));
                sequence += i32::try_from(records).expect("small");
            }
            let image = disk.crash_image(CrashMode::PowerCut);
            let (log, _) = open(&image).await.expect("reopen after the cut");
            let high_watermark = log.high_watermark();
            assert_eq!(
                high_watermark,
                acknowledged.last().expect("one").1.last_offset + 1
            );
            let states = ProducerStates::default();
            let (batch, outcome) = acknowledged.last().expect("one").clone();
            let retried = states
                .append(&tp, &log, log.check(batch).expect("valid"))
                .await;
            assert_eq!(
                retried.ok(),
                Some(outcome),
                "seed {seed}: retry not recognised"
            );
            assert_eq!(
                log.high_watermark(),
                high_watermark,
                "seed {seed}: written twice"
            );
        }
    });
}

/// A `producer-ids` file holding a block end near `i64::MAX` (damage, or a hand-made file):
/// `InitProducerId` is refused with an error, never answered with a wrapped negative id and
/// never a panic.
#[test]
fn a_producer_id_block_end_near_i64_max_is_refused_not_wrapped() {
    run(|| async {
        let disk = SimDisk::new();
        let ids_path = Path::new(DATA_DIR).join("producer-ids");
        let broker_disk = BrokerDisk::Sim(disk.clone());
        crate::storage::Disk::write_file_atomically(
            &broker_disk,
            &ids_path,
            &(i64::MAX - 5).to_le_bytes(),
        )
        .await
        .expect("write the file");
        let ids = ProducerIds::new(broker_disk, Path::new(DATA_DIR), None);
        for _ in 0..2 {
            let refused = ids.init(-1, -1).await;
            assert!(refused.is_err(), "answered {refused:?}");
        }
    });
}
