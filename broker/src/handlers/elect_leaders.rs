//! `ElectLeaders` (API key 43): moves partitions' leadership to their preferred replica (the
//! first in the replica list) with the raft leader transfer that leader balancing and
//! controlled shutdown use (`leader_moves::elect_preferred`), and answers once the committed
//! metadata names the preferred replica leader, or `REQUEST_TIMED_OUT` per partition when
//! `timeout_ms` passes first.
//!
//! Per partition, as Kafka answers (`decide`):
//! - unknown topic or partition: `UNKNOWN_TOPIC_OR_PARTITION`;
//! - preferred election (type 0), already led by the preferred replica (always so on a
//!   one-node broker): `ELECTION_NOT_NEEDED`; preferred replica's broker not alive or the
//!   replica not in the ISR: `PREFERRED_LEADER_NOT_AVAILABLE`;
//! - unclean election (type 1) is never done (issue 12: an out-of-sync replica never leads,
//!   so nothing acknowledged is lost): every known partition is answered `INVALID_REQUEST`
//!   with [`UNCLEAN_REFUSED`] as its message, whether it has a leader or not. Kafka answers
//!   `ELECTION_NOT_NEEDED` for a partition with a leader, which would tell an operator that
//!   the cluster could do one when needed; this one cannot, and the message says so. A
//!   partition without a leader gets one when an in-sync replica comes back.
//! - any other type: `INVALID_REQUEST`.
//!
//! A null topic list means every partition; as Kafka's controller does, the partitions that
//! need no election are then left out of the answer. Authorization: `ALTER` on `CLUSTER`
//! (Kafka's `KafkaApis.handleElectLeaders`); refused, every named partition and (v1+) the
//! response carry `CLUSTER_AUTHORIZATION_FAILED`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use crate::acl::model::Operation;
use crate::error_codes as codes;
use crate::handlers::context::{str_bytes, LeaderElection, RequestContext};
use crate::metadata::{MetadataSnapshot, TopicPartition};

const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;
/// Longest wait honoured whatever `timeout_ms` says (Kafka's admin default is 60 s); a
/// transfer to an in-sync replica takes a few round trips, one to a lagging one at most an
/// election timeout before raft-rs abandons it.
const WAIT_MAX: Duration = Duration::from_secs(300);
/// How often the committed metadata is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How often a partition not moved yet is asked for again: the ask rides a best-effort
/// mailbox, and raft-rs abandons a transfer to a replica that did not catch up in time.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// The message of every partition of an unclean election (see the module docs).
pub const UNCLEAN_REFUSED: &str = "unclean leader election is never done by Ringfeed: an out-of-sync replica never leads, so no acknowledged record is lost; a partition without a leader gets one when an in-sync replica is back (use election type 0, preferred)";
/// Partitions answered per request: Kafka sets none, but every one is held while waiting.
const PARTITIONS_MAX: usize = 100_000;

/// What one partition gets: an answer now, or a move to `preferred` and a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Answer(i16, Option<&'static str>),
    Elect { preferred: i32 },
}

/// A partition as the committed metadata has it: replicas (preferred first), leader
/// (-1: none), in-sync replicas.
pub struct Placement<'a> {
    pub replicas: &'a [i32],
    pub leader: i32,
    pub isr: &'a [i32],
}

/// See the module docs. `placement` is `None` for an unknown partition; `alive` says
/// whether a broker is registered and not fenced.
pub fn decide(
    election_type: i8,
    placement: Option<&Placement<'_>>,
    alive: impl Fn(i32) -> bool,
) -> Decision {
    let Some(placement) = placement else {
        return Decision::Answer(codes::UNKNOWN_TOPIC_OR_PARTITION, None);
    };
    match election_type {
        UNCLEAN => Decision::Answer(codes::INVALID_REQUEST, Some(UNCLEAN_REFUSED)),
        PREFERRED => {
            let preferred = placement
                .replicas
                .first()
                .copied()
                .unwrap_or(placement.leader);
            if preferred == placement.leader {
                Decision::Answer(codes::ELECTION_NOT_NEEDED, None)
            } else if !alive(preferred) || !placement.isr.contains(&preferred) {
                Decision::Answer(codes::PREFERRED_LEADER_NOT_AVAILABLE, None)
            } else {
                Decision::Elect { preferred }
            }
        }
        _ => Decision::Answer(
            codes::INVALID_REQUEST,
            Some("election_type is 0 (preferred) or 1 (unclean)"),
        ),
    }
}

pub async fn handle(
    shard: &LeaderElection<'_>,
    context: &RequestContext,
    request: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let snapshot = shard.metadata.current();
    let named = request.topic_partitions.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|topic| {
                let name: Arc<str> = Arc::from(topic.topic.0.as_str());
                topic
                    .partitions
                    .iter()
                    .map(move |&partition| TopicPartition {
                        topic: name.clone(),
                        partition,
                    })
            })
            .take(PARTITIONS_MAX)
            .collect::<Vec<_>>()
    });
    if !context.authorize_cluster(Operation::Alter) {
        let results = named
            .unwrap_or_default()
            .into_iter()
            .map(|tp| (tp, (codes::CLUSTER_AUTHORIZATION_FAILED, None)))
            .collect();
        return response(results).with_error_code(codes::CLUSTER_AUTHORIZATION_FAILED);
    }
    let all = named.is_none();
    let partitions = named.unwrap_or_else(|| every_partition(&snapshot));
    let mut answers = BTreeMap::new();
    let mut elections: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
    for tp in partitions {
        match decide(
            request.election_type,
            placement(&snapshot, &tp).as_ref(),
            |broker| snapshot.is_alive(broker),
        ) {
            Decision::Answer(codes::ELECTION_NOT_NEEDED, _) if all => {}
            Decision::Answer(code, message) => {
                answers.insert(tp, (code, message));
            }
            Decision::Elect { preferred } => elections.entry(preferred).or_default().push(tp),
        }
    }
    let timeout =
        Duration::from_millis(u64::try_from(request.timeout_ms).unwrap_or(0)).min(WAIT_MAX);
    wait_for_elections(shard, elections, timeout, &mut answers).await;
    response(answers)
}

/// Asks each preferred replica's broker for its partitions, then waits until the committed
/// metadata names it leader of each (`NONE`) or `timeout` passes (`REQUEST_TIMED_OUT`).
async fn wait_for_elections(
    shard: &LeaderElection<'_>,
    mut elections: BTreeMap<i32, Vec<TopicPartition>>,
    timeout: Duration,
    answers: &mut BTreeMap<TopicPartition, (i16, Option<&'static str>)>,
) {
    let deadline = Instant::now() + timeout;
    let mut ask_at = Instant::now();
    while !elections.is_empty() {
        if Instant::now() >= ask_at {
            for (&broker, partitions) in &elections {
                shard.elect_preferred(broker, partitions.clone()).await;
            }
            ask_at = Instant::now() + ASK_AGAIN;
        }
        let snapshot = shard.metadata.current();
        for (&broker, partitions) in &mut elections {
            partitions.retain(|tp| {
                let led = snapshot
                    .topic(&tp.topic)
                    .is_some_and(|topic| topic.leader(tp.partition) == broker);
                if led {
                    answers.insert(tp.clone(), (codes::NONE, None));
                }
                !led
            });
        }
        elections.retain(|_, partitions| !partitions.is_empty());
        if elections.is_empty() || Instant::now() >= deadline {
            break;
        }
        glommio::timer::sleep(POLL).await;
    }
    for tp in elections.into_values().flatten() {
        answers.insert(
            tp,
            (
                codes::REQUEST_TIMED_OUT,
                Some("the preferred replica did not take the leadership within timeout_ms"),
            ),
        );
    }
}

fn placement<'a>(snapshot: &'a MetadataSnapshot, tp: &TopicPartition) -> Option<Placement<'a>> {
    let topic = snapshot.topic(&tp.topic)?;
    if tp.partition < 0 || tp.partition >= topic.partition_count() {
        return None;
    }
    Some(Placement {
        replicas: topic.replicas(tp.partition),
        leader: topic.leader(tp.partition),
        isr: topic.isr(tp.partition),
    })
}

fn every_partition(snapshot: &MetadataSnapshot) -> Vec<TopicPartition> {
    snapshot
        .topics
        .values()
        .flat_map(|topic| {
            (0..topic.partition_count()).map(|partition| TopicPartition {
                topic: topic.name.clone(),
                partition,
            })
        })
        .take(PARTITIONS_MAX)
        .collect()
}

/// The results by topic, in name order.
fn response(
    results: BTreeMap<TopicPartition, (i16, Option<&'static str>)>,
) -> ElectLeadersResponse {
    let mut topics: Vec<ReplicaElectionResult> = Vec::new();
    for (tp, (code, message)) in results {
        let result = PartitionResult::default()
            .with_partition_id(tp.partition)
            .with_error_code(code)
            .with_error_message(message.map(str_bytes));
        match topics.last_mut() {
            Some(topic) if topic.topic.0.as_str() == &*tp.topic => {
                topic.partition_result.push(result);
            }
            _ => topics.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(&tp.topic)))
                    .with_partition_result(vec![result]),
            ),
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(replicas: &[i32], leader: i32, isr: &[i32]) -> Placement<'static> {
        Placement {
            replicas: replicas.to_vec().leak(),
            leader,
            isr: isr.to_vec().leak(),
        }
    }

    fn decide_with(
        election_type: i8,
        placement: Option<&Placement<'_>>,
        alive: &[i32],
    ) -> Decision {
        decide(election_type, placement, |broker| alive.contains(&broker))
    }

    #[test]
    fn preferred_election_moves_only_to_a_live_in_sync_preferred_replica() {
        let all = [1, 2, 3];
        // Led by its preferred replica: nothing to do.
        let p = placed(&[1, 2, 3], 1, &[1, 2, 3]);
        assert_eq!(
            decide_with(0, Some(&p), &all),
            Decision::Answer(codes::ELECTION_NOT_NEEDED, None)
        );
        // Led elsewhere, preferred alive and in sync: move.
        let p = placed(&[1, 2, 3], 2, &[1, 2, 3]);
        assert_eq!(
            decide_with(0, Some(&p), &all),
            Decision::Elect { preferred: 1 }
        );
        // Preferred not in the ISR, or its broker not alive: not available.
        let p = placed(&[1, 2, 3], 2, &[2, 3]);
        assert_eq!(
            decide_with(0, Some(&p), &all),
            Decision::Answer(codes::PREFERRED_LEADER_NOT_AVAILABLE, None)
        );
        let p = placed(&[1, 2, 3], 2, &[1, 2, 3]);
        assert_eq!(
            decide_with(0, Some(&p), &[2, 3]),
            Decision::Answer(codes::PREFERRED_LEADER_NOT_AVAILABLE, None)
        );
        // No leader at all and the preferred one in sync: move (it campaigns).
        let p = placed(&[3, 1, 2], -1, &[3]);
        assert_eq!(
            decide_with(0, Some(&p), &all),
            Decision::Elect { preferred: 3 }
        );
        // A one-node broker: its only replica leads.
        let p = placed(&[1], 1, &[1]);
        assert_eq!(
            decide_with(0, Some(&p), &[1]),
            Decision::Answer(codes::ELECTION_NOT_NEEDED, None)
        );
        // Unknown partition.
        assert_eq!(
            decide_with(0, None, &all),
            Decision::Answer(codes::UNKNOWN_TOPIC_OR_PARTITION, None)
        );
    }

    #[test]
    fn unclean_election_is_never_done() {
        let all = [1, 2, 3];
        // With a leader, without one, with its broker gone: always refused with the reason,
        // never a move to an out-of-sync replica.
        for (p, alive) in [
            (placed(&[1, 2, 3], 2, &[2]), &all[..]),
            (placed(&[1, 2, 3], -1, &[]), &all[..]),
            (placed(&[1, 2, 3], 2, &[2]), &[1, 3][..]),
        ] {
            assert_eq!(
                decide_with(1, Some(&p), alive),
                Decision::Answer(codes::INVALID_REQUEST, Some(UNCLEAN_REFUSED))
            );
        }
        assert!(UNCLEAN_REFUSED.contains("never done"));
        // An unknown partition is unknown whatever the type.
        assert_eq!(
            decide_with(1, None, &all),
            Decision::Answer(codes::UNKNOWN_TOPIC_OR_PARTITION, None)
        );
        // Any other type is a bad request.
        let p = placed(&[1, 2, 3], 1, &[1, 2, 3]);
        assert!(matches!(
            decide_with(2, Some(&p), &all),
            Decision::Answer(codes::INVALID_REQUEST, Some(message)) if message != UNCLEAN_REFUSED
        ));
    }
}
