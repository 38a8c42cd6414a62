//! Moving leadership on purpose, per shard (`docs/REPLICATION.md` § Status; the transfers
//! themselves are `replica::handover` and `ControllerGroup::hand_over`):
//!
//! - [`controlled_shutdown`] (Kafka's controlled shutdown, `controlled.shutdown.enable`):
//!   on SIGTERM, before the shard stops serving, every partition group it leads is handed
//!   to an in-sync replica; the shard keeps serving (calls on those partitions are answered
//!   `NOT_LEADER_OR_FOLLOWER`, retriable) until the controller has recorded the successors,
//!   so every broker's Metadata already names them when this one stops; then shard 0 hands
//!   group 0 (the controller) over, once every shard is done. All of it within
//!   [`CONTROLLED_SHUTDOWN_TIMEOUT`]: a broker that cannot hand over (no follower in sync)
//!   shuts down anyway, and its followers elect a leader as after a crash.
//! - [`balance_leaders_periodically`] (Kafka's preferred leader election,
//!   `auto.leader.rebalance.enable`): every `leader.imbalance.check.interval.seconds`, the
//!   groups this shard leads whose preferred replica's broker is imbalanced (over
//!   `leader.imbalance.per.broker.percentage`, counted on the committed metadata) go back
//!   to that replica when it is in sync. Each leader decides for its own groups rather than
//!   the controller for all: a transfer starts at the leader in raft-rs, the leader alone
//!   knows whether the preferred replica is in sync now, and the controller has no call to
//!   reach a leader with; the imbalance it decides on is the same committed metadata every
//!   broker holds, so the brokers reach the same verdict as a central controller would.
//!
//! - [`elect_preferred`] (Kafka's `ElectLeaders`, preferred election, asked by a client):
//!   the preferred replica's broker asks its group's leader for the leadership
//!   ([`claim_leadership`]); the broker the client asked sends that broker an
//!   `election_mail` when it is another one. Unlike leader balancing, the leader does not
//!   decide: raft-rs lets a follower ask for the leadership for itself (its leader then
//!   transfers as above), and the preferred replica is the one broker every asking broker
//!   can name, so no call to reach a partition's leader is needed.
//!
//! Runs on the shard's executor; holds its services only for the duration of a pass.

use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::controller::election_mail::{ElectionMail, ELECTION_PARTITIONS_MAX};
use crate::metadata::TopicPartition;
use crate::replica::handover::{imbalanced_brokers, Transfer};
use crate::router::Ending;
use crate::shard::{ShardServices, PARTITION_CALLS, REPLICA_FRAMES_CALLS};

/// How long a controlled shutdown waits, in all, for leadership to move before the shard
/// stops anyway (Kafka bounds its controlled shutdown by retries instead; a raft transfer
/// to a caught-up replica takes a few round trips, one to a lagging one at most an
/// election timeout, 2 s, before raft-rs abandons it).
pub const CONTROLLED_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long leader balancing lets its transfers run before giving up the ones not done
/// (the preferred replica lagging, or refusing because its broker is shutting down): a
/// group being transferred takes no produce calls, so this bounds that pause.
const BALANCE_TRANSFER_WAIT: Duration = Duration::from_millis(500);
/// How often a controlled shutdown looks at its transfers.
const HANDOVER_POLL: Duration = Duration::from_millis(10);

/// See the module docs. `handed_over_shards` counts the shards done with their partitions
/// (shared by every shard of the process); shard 0 hands the controller over after all of
/// them, so their successors' reports reach a controller that is not moving.
pub async fn controlled_shutdown(services: &Rc<ShardServices>, handed_over_shards: &AtomicUsize) {
    let started = Instant::now();
    let deadline = started + CONTROLLED_SHUTDOWN_TIMEOUT;
    let enabled = services.config.cluster.controlled_shutdown;
    if enabled {
        hand_over_partitions(services, deadline).await;
    }
    handed_over_shards.fetch_add(1, Ordering::SeqCst);
    if !enabled || services.shard_id != 0 {
        return;
    }
    let Some(group) = services.controller_group() else {
        return;
    };
    while handed_over_shards.load(Ordering::SeqCst) < services.config.shard_count()
        && Instant::now() < deadline
    {
        glommio::timer::sleep(HANDOVER_POLL).await;
    }
    let led_controller = group.is_leader();
    while group.hand_over() && Instant::now() < deadline {
        glommio::timer::sleep(HANDOVER_POLL).await;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis(),
        led_controller,
        still_leads_controller = group.is_leader(),
        "controlled shutdown: leadership handed over"
    );
}

/// Hands this shard's partition groups over, then waits until the committed metadata no
/// longer names this broker the leader of any of them it handed over (both until
/// `deadline`).
async fn hand_over_partitions(services: &ShardServices, deadline: Instant) {
    let Some(replicas) = &services.replicas else {
        return;
    };
    let started = Instant::now();
    let led_at_start = replicas.led_groups().len();
    let mut moved_at = None;
    // One loop for both waits: a transfer's successor can fail to win its election (seen
    // once in 20 runs), and this replica then wins the group back after an election
    // timeout; it must hand it over again rather than leave as its leader.
    loop {
        let under_way = replicas.hand_over_leadership();
        if under_way == 0 && moved_at.is_none() {
            moved_at = Some(started.elapsed());
        }
        if (under_way == 0 && !still_recorded_here(services)) || Instant::now() >= deadline {
            break;
        }
        glommio::timer::sleep(HANDOVER_POLL).await;
    }
    let moved_at = moved_at.unwrap_or_else(|| started.elapsed());
    tracing::info!(
        shard = services.shard_id,
        led_at_start,
        still_leading = replicas.led_groups().len(),
        moved_ms = moved_at.as_millis(),
        recorded_ms = started.elapsed().as_millis(),
        "controlled shutdown: partition leadership handed over"
    );
}

/// Whether the committed metadata still names this broker the leader of a partition whose
/// group this shard hosts and no longer leads (its successor's report not recorded yet).
fn still_recorded_here(services: &ShardServices) -> bool {
    let Some(replicas) = &services.replicas else {
        return false;
    };
    let snapshot = services.metadata.current();
    let local = snapshot.local_node;
    let Ok(local_id) = u64::try_from(local) else {
        return false;
    };
    snapshot.topics.values().any(|topic| {
        (0..topic.partition_shards.len()).any(|partition| {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            topic.replicas(partition).len() > 1
                && topic.leader(partition) == local
                && replicas
                    .leader_and_term(topic.group_id(partition))
                    .is_some_and(|(leader, _)| leader != local_id)
        })
    })
}

/// See the module docs. Ends with the shard (its services dropped) or at shutdown.
pub async fn balance_leaders_periodically(weak: Weak<ShardServices>) {
    let settings = match weak.upgrade() {
        Some(services) if services.replicas.is_some() => services.config.cluster.leader_balancing,
        _ => return,
    };
    if !settings.enabled {
        return;
    }
    loop {
        glommio::timer::sleep(settings.check_interval).await;
        let Some(services) = weak.upgrade() else {
            return;
        };
        if services.shutdown.is_started() {
            return;
        }
        let started = balance_leaders(&services, settings.per_broker_percentage);
        if started.is_empty() {
            continue;
        }
        drop(services);
        glommio::timer::sleep(BALANCE_TRANSFER_WAIT).await;
        let Some(services) = weak.upgrade() else {
            return;
        };
        if let Some(replicas) = &services.replicas {
            replicas.abort_transfers(&started);
        }
    }
}

/// One pass of leader balancing on this shard (module docs); returns the transfers started.
fn balance_leaders(services: &ShardServices, percentage: u32) -> Vec<Transfer> {
    let Some(replicas) = &services.replicas else {
        return Vec::new();
    };
    let snapshot = services.metadata.current();
    let mut partitions = Vec::new();
    for topic in snapshot.topics.values() {
        for partition in 0..topic.partition_shards.len() {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let placed = topic.replicas(partition);
            if placed.len() > 1 {
                partitions.push((placed[0], topic.leader(partition)));
            }
        }
    }
    let imbalanced = imbalanced_brokers(partitions, percentage);
    if imbalanced.is_empty() {
        return Vec::new();
    }
    replicas.move_to_preferred(|broker| {
        i32::try_from(broker)
            .is_ok_and(|broker| imbalanced.contains(&broker) && snapshot.is_alive(broker))
    })
}

/// `ElectLeaders`: moves each of `partitions` to its preferred replica on `broker`: here
/// ([`claim_leadership`]), or by an `election_mail` to that broker (sent from shard 0,
/// which holds the transport). Returns at once; the caller watches the metadata.
pub async fn elect_preferred(
    services: &Rc<ShardServices>,
    broker: i32,
    partitions: Vec<TopicPartition>,
) {
    if broker == services.metadata.current().local_node {
        claim_leadership(services, partitions).await;
        return;
    }
    let Ok(to) = u64::try_from(broker) else {
        return;
    };
    for chunk in partitions.chunks(ELECTION_PARTITIONS_MAX) {
        let mail = ElectionMail {
            partitions: chunk.to_vec(),
        }
        .encode();
        if let Some(group) = services.controller_group() {
            group.send_mail(to, mail);
            continue;
        }
        // Best effort like the mail itself: the asking handler sends again while it waits.
        let _ = services
            .router
            .invoke_on(
                0,
                REPLICA_FRAMES_CALLS,
                Ending::ToCompletion,
                move |shard0| {
                    if let Some(group) = shard0.controller_group() {
                        group.send_mail(to, mail);
                    }
                    std::future::ready(())
                },
            )
            .await;
    }
}

/// On the preferred replica's broker: asks the leader of each of `partitions` hosted here
/// for the leadership (`ReplicaManager::claim_leadership`), on the shard hosting its group.
pub async fn claim_leadership(services: &Rc<ShardServices>, partitions: Vec<TopicPartition>) {
    let snapshot = services.metadata.current();
    for tp in partitions {
        let Some(topic) = snapshot.topic(&tp.topic) else {
            continue;
        };
        let Some(owner) = snapshot.owner_of(&tp.topic, tp.partition) else {
            continue;
        };
        let group_id = topic.group_id(tp.partition);
        let _ = services
            .router
            .invoke_on(owner, PARTITION_CALLS, Ending::ToCompletion, move |shard| {
                let asked = shard
                    .replicas
                    .as_ref()
                    .is_some_and(|replicas| replicas.claim_leadership(group_id));
                std::future::ready(asked)
            })
            .await;
    }
}

/// How often shard 0 looks for election asks other brokers mailed (`election_mail`).
const ELECTION_ASKS_POLL: Duration = Duration::from_millis(50);

/// Shard 0 of a cluster broker: claims the leadership of the partitions other brokers'
/// `ElectLeaders` asked this broker, the preferred replica, to take
/// (`Controller::take_elections`). Ends with the shard or at shutdown.
pub async fn claim_asked_elections(weak: Weak<ShardServices>) {
    loop {
        glommio::timer::sleep(ELECTION_ASKS_POLL).await;
        let Some(services) = weak.upgrade() else {
            return;
        };
        if services.shutdown.is_started() {
            return;
        }
        let asked = services.take_elections();
        if !asked.is_empty() {
            claim_leadership(&services, asked).await;
        }
    }
}
