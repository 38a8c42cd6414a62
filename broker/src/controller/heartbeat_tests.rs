//! Guards the heartbeat's riders end to end on one controller (a one-voter group 0 over a
//! simulated disk): a leadership report queued with `report_leadership` is carried by the
//! next heartbeat, committed by the registry round and dropped from the queue once the
//! state shows it; a stale leader's report is ignored; an `InitProducerId` of this broker
//! gets its ids from a block the controller granted through the heartbeat.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;
use ringfeed_storage::sim::SimDisk;

use super::*;
use crate::cluster::controller_group::{ControllerGroupStart, INBOUND_FRAMES_MAX};
use crate::cluster::transport::{Transport, TransportSettings};
use crate::controller::leadership::LeadershipChange;
use crate::controller::store::BrokerRecord;
use crate::limits::Limits;
use crate::producer_state::ProducerIds;

pub(super) async fn one_voter_controller(disk: &BrokerDisk) -> Controller {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    voter_controller(disk, 1, &BTreeMap::new(), listen).await
}

/// The controller of broker `node_id` among the voters `peers` and itself, listening on
/// `listen` (loopback) for its peers.
pub(super) async fn voter_controller(
    disk: &BrokerDisk,
    node_id: u64,
    peers: &BTreeMap<u64, String>,
    listen: SocketAddr,
) -> Controller {
    let committed = Rc::new(RefCell::new(None));
    let sink = committed.clone();
    let (group, recovered) = ControllerGroup::open(
        ControllerGroupStart {
            node_id,
            voters: peers.keys().copied().chain([node_id]).collect(),
            incarnation: 7,
            disk: disk.clone(),
            data_dir: "/data".into(),
            election_seed: node_id,
        },
        Box::new(move |state| *sink.borrow_mut() = Some(state)),
    )
    .await
    .unwrap();
    let (inbound, received) = local_channel::new_bounded(INBOUND_FRAMES_MAX);
    let settings = TransportSettings {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..TransportSettings::new(node_id, peers.len())
    };
    let transport = Transport::start(settings, listen, peers, inbound).unwrap();
    group.attach(transport, received);
    let node = i32::try_from(node_id).unwrap();
    let replicated = Replicated {
        group,
        committed,
        has_committed_state: Cell::new(false),
        registration: BrokerRecord {
            node_id: node,
            incarnation: 7,
            listeners: Vec::new(),
            rack: None,
            shard_count: 2,
            fenced: false,
        },
        liveness: RefCell::new(registry::Liveness::new(
            Duration::from_secs(9),
            Instant::now(),
        )),
        wants_offsets_topic: Cell::new(false),
        wants_transaction_state_topic: Cell::new(false),
        leadership: RefCell::default(),
        leadership_urgent: Cell::new(false),
        producer_ids: Rc::default(),
    };
    let rules = PlacementRules {
        shard_count: 2,
        node_id: node,
        clustered: true,
        default_replication_factor: 1,
        default_partitions: 2,
        limits: Limits::default(),
        topic_defaults: crate::settings::Effective::defaults().topic_defaults(),
    };
    let store = MetadataStore::new(disk.clone(), std::path::Path::new("/data"));
    Controller::replicated(store, rules, replicated, recovered)
}

pub(super) fn offsets_topic() -> NewTopic {
    NewTopic {
        name: OFFSETS_TOPIC.into(),
        partitions: 1,
        replication_factor: -1,
        manual_assignment: Vec::new(),
        configs: Vec::new(),
    }
}

pub(super) fn transaction_state_topic() -> NewTopic {
    NewTopic {
        name: TRANSACTION_STATE_TOPIC.into(),
        ..offsets_topic()
    }
}

/// What `shard::follow_controller_group` does every 50 ms, without the publishing.
pub(super) async fn round(controller: &Controller) {
    controller.commit_genesis().await;
    drop(controller.adopt_committed().await);
    controller.heartbeat();
    drop(
        controller
            .registry_round(&[offsets_topic(), transaction_state_topic()])
            .await,
    );
}

pub(super) async fn rounds_until(
    controller: &Controller,
    what: &str,
    done: impl Fn(&Controller) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(controller) {
        assert!(Instant::now() < deadline, "{what} not reached in 10 s");
        round(controller).await;
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

fn leadership_of(controller: &Controller, partition: i32) -> (i32, i32, Vec<i32>) {
    let snapshot = controller.snapshot();
    let topic = snapshot.topic("t").unwrap();
    (
        topic.leader(partition),
        topic.leader_epoch(partition),
        topic.isr(partition).to_vec(),
    )
}

#[test]
fn leadership_reports_and_producer_id_blocks_ride_the_heartbeat() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let disk = BrokerDisk::Sim(SimDisk::new());
            let controller = Rc::new(one_voter_controller(&disk).await);
            rounds_until(&controller, "this broker registered", |controller| {
                controller.snapshot().broker(1).is_some()
            })
            .await;
            let create = ControllerCall::CreateTopics {
                topics: vec![NewTopic {
                    name: "t".into(),
                    ..offsets_topic()
                }],
                validate_only: false,
            };
            let (reply, ..) = controller.execute(create).await;
            assert_eq!(reply.outcomes[0].error_code, codes::NONE);
            let group_id = controller.snapshot().topic("t").unwrap().group_id(0);
            assert_eq!(leadership_of(&controller, 0), (1, 0, vec![1]));

            let report = |term| LeadershipChange {
                group_id,
                leader: 1,
                term,
                isr: vec![1],
                voters: Vec::new(),
            };
            controller.report_leadership(vec![report(3)]);
            assert!(controller.heartbeat_due_now(), "a report goes out at once");
            rounds_until(&controller, "the report committed", |controller| {
                leadership_of(controller, 0).1 == 3
            })
            .await;
            let pending = |controller: &Controller| {
                controller
                    .replication()
                    .unwrap()
                    .leadership
                    .borrow()
                    .is_empty()
            };
            rounds_until(&controller, "the report settled", pending).await;
            assert!(
                !controller.heartbeat_due_now(),
                "steady state sends nothing"
            );

            // A stale leader's report (an older term) changes nothing and is dropped.
            let before = controller.state.borrow().epoch;
            controller.report_leadership(vec![report(2)]);
            rounds_until(&controller, "the stale report dropped", pending).await;
            assert_eq!(leadership_of(&controller, 0), (1, 3, vec![1]));
            assert_eq!(controller.state.borrow().epoch, before, "nothing committed");

            // InitProducerId waits for a block the heartbeat asks for.
            let blocks = controller.replication().unwrap().producer_ids.clone();
            let ids = ProducerIds::new(disk.clone(), std::path::Path::new("/data"), Some(blocks));
            let background = glommio::spawn_local({
                let controller = controller.clone();
                async move {
                    loop {
                        if controller.heartbeat_due_now() {
                            controller.heartbeat();
                        }
                        round(&controller).await;
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
            .detach();
            assert_eq!(ids.init_or_code(-1, -1).await, Ok((0, 0)));
            assert_eq!(ids.init_or_code(-1, -1).await, Ok((1, 0)));
            assert_eq!(controller.state.borrow().next_producer_id, 1000);
            background.cancel();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// A broker asked for `__transaction_state` (a transactional client's `FindCoordinator` at
/// a broker that is not the controller): its heartbeat carries the request and the
/// registry round creates the topic; nothing creates it before anyone asks. Before, only
/// the controller's own `FindCoordinator` created it, so a client talking to other brokers
/// was told `COORDINATOR_NOT_AVAILABLE` until one of its lookups reached the controller.
#[test]
fn a_broker_asking_for_the_transaction_state_topic_gets_it_created() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let disk = BrokerDisk::Sim(SimDisk::new());
            let controller = Rc::new(one_voter_controller(&disk).await);
            rounds_until(&controller, "this broker registered", |controller| {
                controller.snapshot().broker(1).is_some()
            })
            .await;
            for _ in 0..5 {
                round(&controller).await;
            }
            assert!(
                controller
                    .snapshot()
                    .topic(TRANSACTION_STATE_TOPIC)
                    .is_none(),
                "not created before anyone asks"
            );
            let replicated = controller.replication().unwrap();
            replicated.wants_transaction_state_topic.set(true);
            assert!(
                controller.heartbeat_due_now(),
                "the request goes out at once"
            );
            rounds_until(&controller, "__transaction_state created", |controller| {
                controller
                    .snapshot()
                    .topic(TRANSACTION_STATE_TOPIC)
                    .is_some()
            })
            .await;
            assert!(
                !replicated.wants_transaction_state_topic.get(),
                "asked once"
            );
            assert!(
                controller.snapshot().topic(OFFSETS_TOPIC).is_none(),
                "only what was asked for"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
