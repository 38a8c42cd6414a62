//! A seeded simulation of an idempotent producer against a replicated partition, checked
//! against the model of what Kafka promises it: every batch acknowledged is in the log once,
//! at the offset it was acknowledged with, and batches are in sequence order.
//!
//! The client behaves as librdkafka does with `enable.idempotence`: at most five batches in
//! flight to the leader it knows, sent in sequence order; a batch answered with an error is
//! sent again with the same sequence, in order with the others not yet acknowledged, to
//! whichever node leads then.
//! Meanwhile the simulation cuts nodes off and heals them, power-cuts and restarts them, and
//! hands leadership to another replica (as leader balancing and controlled shutdown do).
//! Defects it finds when reverted: `producers::committed` taking another batch for a lost
//! proposal (seed 103: batch 18 acknowledged at offset 37, held nowhere); a producer with
//! nothing committed or live taken at a sequence other than 0, so librdkafka's implicit
//! acknowledgement of the batches before it covered batches never written (seed 2, and
//! seed 653 for a producer known only by proposals lost with their term).
//! `RINGFEED_REPLICA_SEEDS=N` runs seeds 1 to N; seed 769 stalls (23 of 40 batches): the
//! broker refuses the producer's next batch as out of order for good, where librdkafka
//! would bump its epoch, which this client does not model.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use crate::error_codes as codes;
use crate::replica::tests::{idempotent_batch, payload, run, seeds_from_env, Cluster, GROUP};
use crate::replica::ReplicaProduce;
use crate::storage::sim::SeededRng;

/// Batches the producer writes per seed.
const BATCHES: i32 = 40;
/// librdkafka's `max.in.flight.requests.per.connection` with idempotence.
const IN_FLIGHT_MAX: usize = 5;
/// `idempotent_batch` holds two records: sequences go up by two.
const RECORDS_PER_BATCH: i32 = 2;

type Answer = Rc<RefCell<Option<ReplicaProduce>>>;

/// The client's view: what it sent, what was answered, what it must send again.
#[derive(Default)]
struct Producer {
    /// Batch number → the offset it was acknowledged at; `None` for a batch acknowledged
    /// implicitly: librdkafka counts every batch before an acknowledged one as written
    /// (the broker's sequence check would have refused a gap), without an offset.
    acknowledged: BTreeMap<i32, Option<i64>>,
    /// Calls not answered yet: (batch number, answer cell).
    in_flight: Vec<(i32, Answer)>,
    /// Calls sent and not yet arrived, in sending order (one connection): (batch number,
    /// the node sent to, where its answer goes). One arrives per simulated step, so a
    /// pipelined request meets the leader as it is a moment later than the one before.
    on_the_wire: VecDeque<(i32, u64, Answer)>,
    /// The next batch number never sent.
    next_new: i32,
    /// Inconsistencies seen in answers (two acknowledgements of one batch at two offsets).
    inconsistent: Vec<String>,
}

impl Producer {
    /// Takes the answers that arrived; an error means the batch goes again (the client does
    /// not know whether it was written: the broker's sequence check decides).
    fn collect(&mut self) {
        let mut still = Vec::new();
        for (number, cell) in std::mem::take(&mut self.in_flight) {
            let answer = *cell.borrow();
            match answer {
                None => still.push((number, cell)),
                Some(answer) if answer.error_code == codes::NONE => {
                    match self.acknowledged.insert(number, Some(answer.base_offset)) {
                        Some(Some(earlier)) if earlier != answer.base_offset => {
                            self.inconsistent.push(format!(
                                "batch {number} acknowledged at {earlier} and at {}",
                                answer.base_offset
                            ));
                        }
                        _ => {}
                    }
                    for before in 0..number {
                        self.acknowledged.entry(before).or_insert(None);
                    }
                }
                Some(_) => {}
            }
        }
        self.in_flight = still;
    }

    /// The next batch to send, in sequence order: the first not acknowledged and not in
    /// flight, provided every batch before it is acknowledged or in flight.
    fn next_to_send(&self) -> Option<i32> {
        if self.in_flight.len() >= IN_FLIGHT_MAX {
            return None;
        }
        let in_flight = |n: i32| self.in_flight.iter().any(|(m, _)| *m == n);
        let candidate = (0..self.next_new.min(BATCHES))
            .find(|&n| !self.acknowledged.contains_key(&n) && !in_flight(n))
            .or((self.next_new < BATCHES).then_some(self.next_new))?;
        Some(candidate)
    }

    fn done(&self) -> bool {
        self.acknowledged.len() == BATCHES as usize
    }
}

fn send(producer: &mut Producer, to: u64, number: i32) {
    let cell: Answer = Rc::new(RefCell::new(None));
    producer.on_the_wire.push_back((number, to, cell.clone()));
    producer.in_flight.push((number, cell));
    producer.next_new = producer.next_new.max(number + 1);
}

/// Up to `count` calls on the wire arrive, in order, and are dispatched where they were sent.
fn deliver(cluster: &Cluster, producer: &mut Producer, count: usize) {
    for _ in 0..count {
        let Some((number, to, cell)) = producer.on_the_wire.pop_front() else {
            return;
        };
        let pending = cluster.manager(to).dispatch_produce(
            &crate::replica::tests::tp(),
            vec![idempotent_batch(number * RECORDS_PER_BATCH)],
            -1,
        );
        glommio::spawn_local(async move {
            *cell.borrow_mut() = Some(pending.wait().await);
        })
        .detach();
    }
}

/// Sends up to `count` of the batches due now to the node the client believes leads.
fn send_what_is_due(cluster: &Cluster, producer: &mut Producer, count: usize) {
    let Some(leader) = cluster.leader() else {
        return;
    };
    for _ in 0..count {
        let Some(number) = producer.next_to_send() else {
            return;
        };
        send(producer, leader, number);
    }
}

/// Every data batch of the partition from offset 0 as (base offset, payload), or `None` if
/// the replica stopped leading meanwhile.
async fn read_all(manager: &crate::replica::ReplicaManager) -> Option<Vec<(i64, Vec<u8>)>> {
    let mut offset = 0;
    let mut found = Vec::new();
    loop {
        let fetched = manager
            .fetch(
                &crate::replica::tests::tp(),
                offset,
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        if fetched.error_code != codes::NONE {
            return None;
        }
        if fetched.batches.is_empty() {
            return Some(found);
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

#[test]
fn an_idempotent_producer_under_faults_and_leader_moves_loses_and_repeats_nothing() {
    // Seeds 103 and 653 found losses (module docs); they stay among the quick seeds.
    for seed in seeds_from_env((1..=8).chain([103, 653])) {
        run(move || async move {
            let mut rng = SeededRng::new(seed);
            let mut cluster = Cluster::new(2).await;
            let mut producer = Producer::default();
            // The client starts as soon as a leader is named: its first batches may meet a
            // leader that does not serve yet, and later ones the same leader once it does.
            while cluster.leader().is_none() {
                cluster.step().await;
            }
            for _round in 0..120 {
                producer.collect();
                match rng.below(8) {
                    0 => cluster.toggle_cut(rng.range(1, 3)),
                    1 if rng.below(3) == 0 => cluster.power_cycle(rng.range(1, 3)).await,
                    2 | 3 => {
                        // Balancing hands the group back to its preferred replica (1), a
                        // controlled shutdown to any other.
                        if let Some(leader) = cluster.leader() {
                            let to = if rng.below(2) == 0 {
                                1
                            } else {
                                rng.range(1, 3)
                            };
                            if to != leader {
                                cluster
                                    .manager(leader)
                                    .driver
                                    .borrow_mut()
                                    .transfer_leader(GROUP, to);
                            }
                        }
                    }
                    _ => {
                        let count = rng.range(1, IN_FLIGHT_MAX as u64) as usize;
                        send_what_is_due(&cluster, &mut producer, count);
                    }
                }
                for _ in 0..rng.range(1, 8) {
                    deliver(&cluster, &mut producer, 1);
                    cluster.step().await;
                }
            }
            // Heal, and let the client finish.
            for id in 1..=3 {
                cluster.set_cut(id, false);
            }
            for _ in 0..600 {
                producer.collect();
                if producer.done() && producer.in_flight.is_empty() {
                    break;
                }
                send_what_is_due(&cluster, &mut producer, IN_FLIGHT_MAX);
                deliver(&cluster, &mut producer, IN_FLIGHT_MAX);
                cluster.step().await;
            }
            assert!(
                producer.done(),
                "seed {seed}: only {} of {BATCHES} batches acknowledged",
                producer.acknowledged.len()
            );
            assert!(
                producer.inconsistent.is_empty(),
                "seed {seed}: {:?}",
                producer.inconsistent
            );
            // A transfer started before the heal may still move the group: read from a
            // leader that stays one for the whole read.
            let held = loop {
                let leader = cluster.elect().await;
                if let Some(held) = read_all(&cluster.manager(leader)).await {
                    break held;
                }
            };
            let mut previous_offset = -1;
            for (number, acknowledged_at) in &producer.acknowledged {
                let wanted = payload(&idempotent_batch(number * RECORDS_PER_BATCH));
                let found: Vec<i64> = held
                    .iter()
                    .filter(|(_, bytes)| *bytes == wanted)
                    .map(|(at, _)| *at)
                    .collect();
                let [offset] = found[..] else {
                    panic!("seed {seed}: batch {number} acknowledged at {acknowledged_at:?}, held at {found:?}");
                };
                assert!(
                    acknowledged_at.is_none_or(|at| at == offset),
                    "seed {seed}: batch {number} acknowledged at {acknowledged_at:?}, held at {offset}"
                );
                assert!(
                    offset > previous_offset,
                    "seed {seed}: batch {number} at {offset} is not after the one before it"
                );
                previous_offset = offset;
            }
            for id in cluster.nodes_up() {
                assert_eq!(
                    cluster.manager(id).counts().offset_mismatches,
                    0,
                    "seed {seed}: replica {id}'s high watermark left its log's offsets"
                );
            }
        });
    }
}
