//! Guards the delivery of transaction markers between two brokers' controllers over the
//! real transport on loopback (`transactions::marker_mail`): a marker sent from broker 1's
//! post reaches broker 2's mailbox, is taken out by its controller's mail sort (never read
//! as a heartbeat), and the code broker 2 answers comes back to the waiting request through
//! broker 1's sort. Broker 2's writing is a stand-in here (`ShardServices::serve_marker_mail`
//! needs whole shards); the routing decision and the post's bounds are guarded in
//! `transactions/marker_mail_tests.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringfeed_storage::sim::SimDisk;

use super::heartbeat_tests::{offsets_topic, voter_controller};
use super::*;
use crate::partition::TxnMarker;
use crate::transactions::marker_mail::{MarkerMail, MarkerPost, MarkerReply, MarkerRequest};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Brokers 1 and 2, each a controller of a two-voter group 0 on its own loopback port.
async fn two_brokers() -> (Rc<Controller>, Rc<Controller>) {
    let ports: BTreeMap<u64, u16> = [(1, free_port()), (2, free_port())].into();
    let mut controllers = Vec::new();
    for node_id in [1, 2] {
        let peers: BTreeMap<u64, String> = ports
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, port)| (*id, format!("127.0.0.1:{port}")))
            .collect();
        let listen = SocketAddr::from(([127, 0, 0, 1], ports[&node_id]));
        let disk = BrokerDisk::Sim(SimDisk::new());
        controllers.push(Rc::new(
            voter_controller(&disk, node_id, &peers, listen).await,
        ));
    }
    let second = controllers.pop().unwrap();
    (controllers.pop().unwrap(), second)
}

fn group(controller: &Controller) -> Rc<ControllerGroup<BrokerDisk>> {
    controller.replication().unwrap().group.clone()
}

/// Broker 2's shard 0 for as long as the test runs: each round sorts its mailbox and
/// answers every marker request with `answer`, recording the requests.
fn serve(
    controller: Rc<Controller>,
    answer: i16,
    seen: Rc<RefCell<Vec<(u64, MarkerRequest)>>>,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(async move {
        loop {
            drop(controller.registry_round(&[offsets_topic()]).await);
            for (from, mail) in controller.take_marker_mail() {
                let MarkerMail::Request(request) = mail else {
                    panic!("broker 2 asked nobody");
                };
                let reply = MarkerReply {
                    id: request.id,
                    error_code: answer,
                };
                group(&controller).send_mail(from, reply.encode());
                seen.borrow_mut().push((from, request));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    })
    .detach()
}

/// Broker 1's shard 0: sorts its mailbox every 5 ms and hands replies to `post`.
fn receive_replies(
    controller: Rc<Controller>,
    post: Rc<MarkerPost>,
) -> glommio::task::JoinHandle<()> {
    glommio::spawn_local(async move {
        loop {
            drop(controller.registry_round(&[offsets_topic()]).await);
            for (from, mail) in controller.take_marker_mail() {
                if let MarkerMail::Reply(reply) = mail {
                    post.answered(from, reply);
                }
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    })
    .detach()
}

fn marker() -> TxnMarker {
    TxnMarker {
        producer_id: 4000,
        producer_epoch: 1,
        commit: true,
        coordinator_epoch: 3,
    }
}

/// Delivers `marker()` for `orders-<partition>` to broker 2 as the coordinator does: again
/// while the answer is `REQUEST_TIMED_OUT` (the first mails may go before the peers are
/// connected and are lost), for at most 10 s.
async fn deliver_until_answered(sender: &Controller, post: &MarkerPost, partition: i32) -> i16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tp = TopicPartition {
            topic: "orders".into(),
            partition,
        };
        let group = group(sender);
        let send = |bytes| group.send_mail(2, bytes);
        let code = post
            .deliver(2, tp, marker(), send, Duration::from_millis(500))
            .await;
        if code != codes::REQUEST_TIMED_OUT || Instant::now() > deadline {
            return code;
        }
    }
}

#[test]
fn a_marker_for_another_brokers_partition_goes_there_and_its_answer_comes_back() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let (first, second) = two_brokers().await;
            let post = Rc::new(MarkerPost::new(0));
            let seen = Rc::default();
            let _serving = serve(second.clone(), codes::NONE, Rc::clone(&seen));
            let _receiving = receive_replies(first.clone(), post.clone());

            let code = deliver_until_answered(&first, &post, 3).await;
            assert_eq!(code, codes::NONE, "written by broker 2");
            let (from, request) = seen.borrow().last().cloned().unwrap();
            assert_eq!(from, 1, "the mail names its sender");
            assert_eq!(request.marker, marker());
            assert_eq!((&*request.tp.topic, request.tp.partition), ("orders", 3));

            // Several at once, each answered to its own request.
            let deliveries = (0..8).map(|partition| {
                let (first, post) = (first.clone(), post.clone());
                glommio::spawn_local(async move {
                    deliver_until_answered(&first, &post, partition).await
                })
            });
            let codes_back = futures::future::join_all(deliveries).await;
            assert!(
                codes_back.iter().all(|code| *code == codes::NONE),
                "{codes_back:?}"
            );
            assert_eq!(post.waiting_count(), 0);
            let partitions: BTreeSet<i32> = seen
                .borrow()
                .iter()
                .map(|(_, request)| request.tp.partition)
                .collect();
            assert!((0..8).all(|p| partitions.contains(&p)), "{partitions:?}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_leaders_refusal_comes_back_as_its_code() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let (first, second) = two_brokers().await;
            let post = Rc::new(MarkerPost::new(0));
            let _serving = serve(second, codes::NOT_LEADER_OR_FOLLOWER, Rc::default());
            let _receiving = receive_replies(first.clone(), post.clone());
            let code = deliver_until_answered(&first, &post, 0).await;
            assert_eq!(
                code,
                codes::NOT_LEADER_OR_FOLLOWER,
                "the coordinator retries it"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
