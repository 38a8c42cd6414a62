//! The cluster layer of a broker (issue 12, docs/REPLICATION.md): the broker-to-broker
//! transport on shard 0 and the routing of received Raft messages to the shard that drives
//! their group.
//!
//! - `transport`: listener, one connection per peer, bounded queues, reconnects, counts;
//! - this module: where a broker listens and whom it connects to (from
//!   `controller.quorum.voters` and `node.id`), and [`split_by_shard`], which cuts a received
//!   frame into one frame per owning shard, so each shard's driver steps only its own groups.

pub mod controller_group;
pub mod peer_tls;
pub mod transport;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;

use glommio::channels::local_channel;
use ringfeed_replication::wire::Frame;

use crate::cluster::controller_group::{ControllerGroup, ControllerGroupStart, INBOUND_FRAMES_MAX};
use crate::cluster::transport::{Transport, TransportSettings};
use crate::cluster_config::ClusterConfig;
use crate::config::BrokerConfig;
use crate::controller::registry::Liveness;
use crate::controller::store::{BrokerRecord, ClusterState, ListenerRecord};
use crate::controller::Replicated;
use crate::disk::BrokerDisk;

/// The controller's Raft group (`KRaft`'s `__cluster_metadata`), driven by shard 0.
pub const CONTROLLER_GROUP_ID: u64 = 0;
/// Not a Raft group: frames' messages for this id carry broker heartbeats to the controller
/// (`controller::registry`), taken out before the driver steps the rest.
pub const REGISTRY_MAILBOX: u64 = u64::MAX;

/// Where this broker listens for peers and the internal address of each peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddresses {
    pub listen: SocketAddr,
    /// node id → `host:port`, this broker excluded.
    pub peers: BTreeMap<u64, String>,
}

/// This broker's internal address and its peers', from `controller.quorum.voters`. `None` for
/// a one-node cluster (no voters, or only this broker): it opens no internal port.
pub fn cluster_addresses(config: &ClusterConfig) -> Result<Option<ClusterAddresses>, String> {
    if config.voters.len() <= 1 {
        return Ok(None);
    }
    let own = config.voters.get(config.node_id).ok_or_else(|| {
        format!(
            "node.id {} is not among controller.quorum.voters ({})",
            config.node_id, config.voters
        )
    })?;
    let listen = (own.host.as_str(), own.port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve this broker's internal address {own}: {error}"))?
        .next()
        .ok_or_else(|| format!("this broker's internal address {own} resolves to nothing"))?;
    let peers = config
        .voters
        .voters()
        .iter()
        .filter(|voter| voter.node_id != config.node_id)
        .map(|voter| {
            let address = if voter.host.contains(':') {
                format!("[{}]:{}", voter.host, voter.port)
            } else {
                format!("{}:{}", voter.host, voter.port)
            };
            (node_id_u64(voter.node_id), address)
        })
        .collect();
    Ok(Some(ClusterAddresses { listen, peers }))
}

/// Starts group 0 and the transport on shard 0 of a broker among several voters; returns
/// the controller's part in the group and the last state committed in its log.
pub async fn start_controller_group(
    config: &BrokerConfig,
    disk: &BrokerDisk,
    addresses: &ClusterAddresses,
) -> Result<(Replicated, Option<ClusterState>), String> {
    let node_id = node_id_u64(config.cluster.node_id);
    let incarnation = process_incarnation();
    let committed = Rc::new(RefCell::new(None));
    let sink = committed.clone();
    let (group, recovered) = ControllerGroup::open(
        ControllerGroupStart {
            node_id,
            voters: config
                .cluster
                .voters
                .voters()
                .iter()
                .map(|voter| node_id_u64(voter.node_id))
                .collect(),
            incarnation,
            disk: disk.clone(),
            data_dir: config.data_dir.clone(),
            election_seed: node_id ^ incarnation,
        },
        Box::new(move |state| *sink.borrow_mut() = Some(state)),
    )
    .await?;
    let (inbound, received) = local_channel::new_bounded(INBOUND_FRAMES_MAX);
    let settings = TransportSettings {
        tls: config.peer_tls.clone(),
        incarnation,
        ..TransportSettings::new(node_id, addresses.peers.len())
    };
    let transport = Transport::start(settings, addresses.listen, &addresses.peers, inbound)
        .map_err(|error| {
            format!(
                "cannot listen on the internal address {} (controller.quorum.voters): {error}",
                addresses.listen
            )
        })?;
    group.attach(transport, received);
    tracing::info!(node_id, voters = %config.cluster.voters, recovered = recovered.is_some(), "controller group 0 started");
    tracing::warn!(
        "the cluster is a preview: the controller and every partition are replicated by Raft \
         (acks=all waits for a quorum); what is not built yet is listed in \
         docs/REPLICATION.md, Status"
    );
    let registration = BrokerRecord {
        node_id: config.cluster.node_id,
        incarnation,
        listeners: config
            .listeners
            .iter()
            .map(|listener| ListenerRecord {
                name: listener.name.clone(),
                host: listener.advertised_host.clone(),
                port: listener.advertised_port,
            })
            .collect(),
        rack: config.cluster.rack.clone(),
        shard_count: u32::try_from(config.shard_count()).unwrap_or(u32::MAX),
        fenced: false,
    };
    let replicated = Replicated {
        group,
        committed,
        has_committed_state: Cell::new(false),
        registration,
        liveness: RefCell::new(Liveness::new(
            config.cluster.session_timeout,
            std::time::Instant::now(),
        )),
        wants_offsets_topic: Cell::new(false),
        wants_transaction_state_topic: Cell::new(false),
        leadership: RefCell::default(),
        leadership_urgent: Cell::new(false),
        producer_ids: Rc::default(),
    };
    Ok((replicated, recovered))
}

/// This broker process's incarnation, the same on every shard: it increases at every start
/// (peers drop frames of this broker's previous life, per sending driver, so every shard
/// must send the same one); the clock is the simplest source that does across restarts.
pub fn process_incarnation() -> u64 {
    static INCARNATION: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INCARNATION.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    })
}

/// Kafka node ids are non-negative `int32`s (checked when the voters are parsed); Raft ids are
/// the same numbers as `u64`.
pub fn node_id_u64(node_id: i32) -> u64 {
    u64::try_from(node_id).expect("node ids are non-negative")
}

/// Cuts `frame` into one frame per shard that drives its groups (`shard_of_group`), keeping
/// each group's messages in their order. Frames for other shards travel by a typed router
/// call; shard 0 steps its own piece in place.
pub fn split_by_shard(
    frame: Frame,
    shard_of_group: impl Fn(u64) -> usize,
) -> BTreeMap<usize, Frame> {
    let mut pieces: BTreeMap<usize, Frame> = BTreeMap::new();
    let (from, to, incarnation) = (frame.from_node, frame.to_node, frame.incarnation);
    let empty = || Frame::new(from, to, incarnation);
    for heartbeat in frame.heartbeats {
        let shard = shard_of_group(heartbeat.group_id);
        pieces
            .entry(shard)
            .or_insert_with(empty)
            .heartbeats
            .push(heartbeat);
    }
    for message in frame.messages {
        let shard = shard_of_group(message.group_id);
        pieces
            .entry(shard)
            .or_insert_with(empty)
            .messages
            .push(message);
    }
    pieces
}

/// What a shard's Raft driver task drives: the controller's group 0
/// (`controller_group::ControllerGroup`) or a shard's partition groups
/// (`replica::ReplicaManager`).
pub trait DrivenRounds {
    /// One tick of every group (`TICK_INTERVAL_MS` apart).
    fn tick_groups(&self);
    /// One driver round; whether a durability sync is still in flight.
    fn run_round(&self) -> bool;
    /// How many ticks may pass before one matters (`MultiRaft::ticks_until_needed`); `None`:
    /// every tick does.
    fn ticks_until_needed(&self) -> Option<u64> {
        None
    }
}

/// The driver task of a [`DrivenRounds`]: a round whenever `rung` rings (frames or proposals
/// arrived), a tick every `TICK_INTERVAL_MS`, and a round again 1 ms later while a sync is in
/// flight (the next round releases it). Ends when the driven value is dropped.
///
/// While every group rests (`ticks_until_needed`), the task sleeps until the next tick that
/// matters instead of waking every tick, then delivers the ticks it slept through: a shard of
/// quiet groups wakes once a second, not ten times, and its groups tick at the same moments.
/// Anything that wakes a group (a frame, a proposal, a liveness change) rings `rung` first.
/// Ticks missed otherwise (the shard was busy or stalled) are dropped, not delivered in a
/// burst: a burst would run awake followers' election timeouts out at once.
pub async fn drive_rounds<T: DrivenRounds>(
    driven: std::rc::Weak<T>,
    rung: glommio::channels::local_channel::LocalReceiver<()>,
) {
    use std::time::{Duration, Instant};
    let tick = Duration::from_millis(ringfeed_replication::driver::TICK_INTERVAL_MS);
    let mut next_tick = Instant::now() + tick;
    // Ticks after `next_tick` the task chose to sleep through (0 unless resting).
    let mut slept_through: u32 = 0;
    loop {
        let Some(this) = driven.upgrade() else {
            return;
        };
        let now = Instant::now();
        if now >= next_tick {
            let late = now.duration_since(next_tick).as_nanos() / tick.as_nanos();
            let behind = u32::try_from(late).unwrap_or(u32::MAX).saturating_add(1);
            let due = behind.min(slept_through + 1);
            for _ in 0..due {
                this.tick_groups();
            }
            // Past every tick now due, delivered or dropped: the next one is in the future,
            // so a stall is followed by one tick, not by one now and another at once.
            next_tick += tick * behind;
        }
        let syncs_pending = this.run_round();
        slept_through = this.ticks_until_needed().map_or(0, |ticks| {
            u32::try_from(ticks.saturating_sub(1)).unwrap_or(0)
        });
        drop(this);
        let wait = if syncs_pending {
            Duration::from_millis(1)
        } else {
            (next_tick + tick * slept_through).saturating_duration_since(Instant::now())
        };
        let _ = glommio::timer::timeout(wait, async {
            rung.recv().await;
            Ok(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Message, MessageType};
    use ringfeed_replication::voters::QuorumVoters;

    fn config(node_id: i32, voters: &str) -> ClusterConfig {
        ClusterConfig {
            voters: QuorumVoters::parse(voters).unwrap(),
            ..ClusterConfig::one_node(node_id)
        }
    }

    #[test]
    fn a_broker_listens_on_its_own_voter_address_and_connects_to_the_others() {
        let addresses =
            cluster_addresses(&config(2, "1@127.0.0.1:9201,2@127.0.0.1:9202,3@[::1]:9203"))
                .unwrap()
                .unwrap();
        assert_eq!(addresses.listen, SocketAddr::from(([127, 0, 0, 1], 9202)));
        let peers: Vec<(u64, &str)> = addresses
            .peers
            .iter()
            .map(|(id, address)| (*id, address.as_str()))
            .collect();
        assert_eq!(peers, [(1, "127.0.0.1:9201"), (3, "[::1]:9203")]);
    }

    #[test]
    fn one_node_clusters_open_no_internal_port() {
        assert_eq!(cluster_addresses(&config(1, "")).unwrap(), None);
        assert_eq!(
            cluster_addresses(&config(1, "1@127.0.0.1:9201")).unwrap(),
            None
        );
        assert!(cluster_addresses(&config(4, "1@127.0.0.1:1,2@127.0.0.1:2"))
            .unwrap_err()
            .contains("not among"));
    }

    #[test]
    fn splitting_keeps_every_message_once_in_order_per_group() {
        let mut frame = Frame::new(1, 2, 7);
        for index in 0..20_u64 {
            let group = index % 5;
            let message_type = if index % 2 == 0 {
                MessageType::MsgHeartbeat
            } else {
                MessageType::MsgAppend
            };
            frame.push(
                group,
                Message {
                    msg_type: message_type as i32,
                    from: 1,
                    to: 2,
                    term: index,
                    index: if message_type == MessageType::MsgAppend {
                        index
                    } else {
                        0
                    },
                    ..Message::default()
                },
            );
        }
        let shard_of = |group: u64| usize::try_from(group % 3).unwrap();
        let expected: Vec<(u64, Message)> = frame.clone().into_group_messages().collect();
        let pieces = split_by_shard(frame, shard_of);
        let mut seen = Vec::new();
        for (shard, piece) in pieces {
            assert_eq!(
                (piece.from_node, piece.to_node, piece.incarnation),
                (1, 2, 7)
            );
            for (group, message) in piece.into_group_messages() {
                assert_eq!(shard_of(group), shard, "group {group} on the wrong shard");
                seen.push((group, message));
            }
        }
        for group in 0..5 {
            let of_group = |list: &[(u64, Message)]| -> Vec<Message> {
                list.iter()
                    .filter(|(g, _)| *g == group)
                    .map(|(_, message)| message.clone())
                    .collect()
            };
            assert_eq!(of_group(&seen), of_group(&expected), "group {group}");
        }
        assert_eq!(seen.len(), expected.len());
    }

    /// A [`DrivenRounds`] that records when its ticks and rounds come.
    struct Recorder {
        started: std::time::Instant,
        /// Milliseconds since `started` of every tick.
        ticks_at_ms: RefCell<Vec<u128>>,
        /// How many ticks had come at each round.
        ticks_at_round: RefCell<Vec<u64>>,
        /// Rests until the next tick that is a multiple of 10, like a shard of quiet groups.
        rests: bool,
        /// The next round blocks the thread until this many milliseconds after `started` (a
        /// stalled shard). A fixed end, not a length: where the stall ends against the tick
        /// phase is then known whenever the round starts.
        stall_next_round_until_ms: Cell<Option<u64>>,
        /// Milliseconds since `started` when the stall ended.
        stall_ended_at_ms: Cell<Option<u128>>,
    }

    impl Recorder {
        fn new(rests: bool) -> Rc<Recorder> {
            Rc::new(Recorder {
                started: std::time::Instant::now(),
                ticks_at_ms: RefCell::default(),
                ticks_at_round: RefCell::default(),
                rests,
                stall_next_round_until_ms: Cell::new(None),
                stall_ended_at_ms: Cell::new(None),
            })
        }

        fn ticks(&self) -> u64 {
            self.ticks_at_ms.borrow().len() as u64
        }
    }

    impl DrivenRounds for Recorder {
        fn tick_groups(&self) {
            self.ticks_at_ms
                .borrow_mut()
                .push(self.started.elapsed().as_millis());
        }

        fn run_round(&self) -> bool {
            self.ticks_at_round.borrow_mut().push(self.ticks());
            if let Some(until_ms) = self.stall_next_round_until_ms.take() {
                let until = self.started + std::time::Duration::from_millis(until_ms);
                std::thread::sleep(until.saturating_duration_since(std::time::Instant::now()));
                self.stall_ended_at_ms
                    .set(Some(self.started.elapsed().as_millis()));
            }
            false
        }

        fn ticks_until_needed(&self) -> Option<u64> {
            self.rests.then(|| 10 - self.ticks() % 10)
        }
    }

    #[test]
    fn a_stalled_driver_resumes_with_one_tick_not_a_burst() {
        crate::test_executor::run(|| async {
            let recorder = Recorder::new(false);
            let (doorbell, rung) = glommio::channels::local_channel::new_bounded(1);
            glommio::spawn_local(drive_rounds(Rc::downgrade(&recorder), rung)).detach();
            glommio::timer::sleep(std::time::Duration::from_millis(350)).await;
            // Ticks come at 100, 200, 300 ms...; the stall ends at 1,350 ms, half-way between
            // two of them.
            recorder.stall_next_round_until_ms.set(Some(1_350));
            doorbell.try_send(()).expect("ring the driver");
            // The first sleep ends after the stall (the thread is blocked), the second 450 ms
            // after it.
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            glommio::timer::sleep(std::time::Duration::from_millis(450)).await;
            let stall_ended_at_ms = recorder.stall_ended_at_ms.get().expect("the stall ran");
            let ticks_at_ms = recorder.ticks_at_ms.borrow().clone();
            let before: Vec<u128> = ticks_at_ms
                .iter()
                .copied()
                .filter(|at| *at < stall_ended_at_ms - 1_000)
                .collect();
            let after: Vec<u128> = ticks_at_ms
                .iter()
                .copied()
                .filter(|at| *at >= stall_ended_at_ms)
                .collect();
            assert!(before.len() >= 2, "ticks before the stall: {ticks_at_ms:?}");
            // Ten ticks were missed; one is delivered at once, the next at its usual moment
            // (1,400 ms, 50 ms later).
            let right_after = after
                .iter()
                .filter(|at| **at < stall_ended_at_ms + 25)
                .count();
            assert_eq!(
                right_after, 1,
                "ticks {ticks_at_ms:?}, stall ended at {stall_ended_at_ms}"
            );
            // Then one per 100 ms (fewer if this executor was slow, never more).
            let checked_at_ms = recorder.started.elapsed().as_millis();
            let most = 2 + (checked_at_ms - stall_ended_at_ms) / 100;
            assert!(
                after.len() >= 3 && after.len() as u128 <= most,
                "ticks after the stall: {after:?} (checked at {checked_at_ms} ms)"
            );
            drop(doorbell);
        });
    }

    #[test]
    fn a_resting_driver_wakes_once_per_ten_ticks_and_delivers_the_ticks_it_slept_through() {
        crate::test_executor::run(|| async {
            let recorder = Recorder::new(true);
            let (doorbell, rung) = glommio::channels::local_channel::new_bounded(1);
            glommio::spawn_local(drive_rounds(Rc::downgrade(&recorder), rung)).detach();
            glommio::timer::sleep(std::time::Duration::from_millis(2_500)).await;
            let elapsed_ms = recorder.started.elapsed().as_millis();
            let ticks = recorder.ticks();
            let ticks_at_round = recorder.ticks_at_round.borrow().clone();
            // A wake at 1 s and one at 2 s after the first round (later ones if this executor
            // was slow), none in between; every tick delivered, none extra.
            assert!(
                ticks >= 10 && u128::from(ticks) <= elapsed_ms / 100,
                "ticks in {elapsed_ms} ms of rest: {ticks}"
            );
            assert!(
                ticks_at_round.len() as u128 <= 2 + elapsed_ms / 1_000,
                "rounds in {elapsed_ms} ms of rest: {ticks_at_round:?}"
            );
            assert!(
                ticks_at_round.iter().all(|ticks| ticks % 10 == 0),
                "a round between the ticks that matter: {ticks_at_round:?}"
            );
            // A ring wakes it at once, between the ticks that matter.
            doorbell.try_send(()).expect("ring the driver");
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            assert!(recorder.ticks_at_round.borrow().len() > ticks_at_round.len());
        });
    }
}
