//! Guards the broker's own files against crashes, on `storage`'s simulated disk: the
//! controller's `cluster.meta` and the producer-id block file. Each test checks a model, not
//! an example: whatever step the power is cut after, the durable image holds the old or the
//! new state (the new one once acknowledged), and a producer id handed out before a cut is
//! never handed out again. Random choices come from a seed printed on failure, so a failing
//! case replays exactly.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;

use crate::controller::store::{ClusterState, ConfigEntry, MetadataStore, TopicRecord};
use crate::disk::BrokerDisk;
use crate::producer_state::ProducerIds;
use crate::storage::sim::{CrashMode, SimDisk};

const DATA_DIR: &str = "/data";

/// A small deterministic generator (`SplitMix64`): tests need replayable choices, not quality.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

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
fn random_state(rng: &mut Seeded, epoch: u64) -> ClusterState {
    let topics = (0..rng.below(4))
        .map(|index| TopicRecord {
            name: format!("topic-{epoch}-{index}"),
            id: rng
                .next()
                .to_le_bytes()
                .repeat(2)
                .try_into()
                .expect("16 bytes"),
            partition_shards: (0..=rng.below(6)).map(|_| rng.below(4) as u32).collect(),
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
            let mut rng = Seeded(seed);
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
            let mut rng = Seeded(seed);
            let mut issued = BTreeSet::new();
            let mut disk = SimDisk::new();
            for restart in 0..6 {
                let ids = ProducerIds::new(BrokerDisk::Sim(disk.clone()), Path::new(DATA_DIR));
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
                    let ids = ProducerIds::new(BrokerDisk::Sim(disk.clone()), Path::new(DATA_DIR));
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
