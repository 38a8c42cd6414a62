//! Guards the marker mail (`marker_mail`): its bytes round trip and every damaged, cut,
//! padded or foreign mail is refused with a reason (never a panic); a marker is routed here,
//! to its leader or refused by the coordinator's metadata, a one-node broker always here;
//! and the post matches replies to waiting requests by id and sender, times out, and holds
//! its bounds.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use uuid::Uuid;

use super::*;
use crate::metadata::{PartitionMetadata, TopicMetadata};

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: Arc::from(topic),
        partition,
    }
}

fn marker(commit: bool) -> TxnMarker {
    TxnMarker {
        producer_id: 4_000_017,
        producer_epoch: 3,
        commit,
        coordinator_epoch: 12,
    }
}

fn request() -> MarkerRequest {
    MarkerRequest {
        id: u64::MAX - 1,
        tp: tp("orders", 7),
        marker: marker(true),
    }
}

/// Recomputes the checksum of a mail changed on purpose, so a later check is reached.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&bytes[VERSION_OFFSET..]);
    bytes[CRC_OFFSET..VERSION_OFFSET].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn refused(bytes: &[u8]) -> String {
    match MarkerMail::decode(bytes) {
        Some(Err(reason)) => reason,
        other => panic!("{bytes:?} was not refused: {other:?}"),
    }
}

#[test]
fn requests_and_replies_round_trip() {
    for commit in [false, true] {
        let request = MarkerRequest {
            marker: marker(commit),
            ..request()
        };
        let bytes = request.encode();
        assert_eq!(bytes.len(), TOPIC_OFFSET + "orders".len());
        assert_eq!(
            MarkerMail::decode(&bytes),
            Some(Ok(MarkerMail::Request(request)))
        );
    }
    let longest = MarkerRequest {
        tp: tp(&"t".repeat(TOPIC_NAME_BYTES_MAX), -1),
        ..request()
    };
    let bytes = longest.encode();
    assert_eq!(bytes.len(), REQUEST_BYTES_MAX);
    assert_eq!(
        MarkerMail::decode(&bytes),
        Some(Ok(MarkerMail::Request(longest)))
    );
    for error_code in [0, codes::NOT_LEADER_OR_FOLLOWER, -1, i16::MIN] {
        let reply = MarkerReply { id: 9, error_code };
        let bytes = reply.encode();
        assert_eq!(bytes.len(), REPLY_BYTES);
        assert_eq!(
            MarkerMail::decode(&bytes),
            Some(Ok(MarkerMail::Reply(reply)))
        );
    }
}

#[test]
fn other_mail_is_not_marker_mail() {
    assert_eq!(MarkerMail::decode(b""), None);
    assert_eq!(MarkerMail::decode(b"RFT"), None, "shorter than a magic");
    assert_eq!(MarkerMail::decode(b"RFHB\x02\x00rest"), None, "a heartbeat");
    assert_eq!(
        MarkerMail::decode(b"RFFQ\0\0\0\0"),
        None,
        "a forwarded change"
    );
}

#[test]
fn cut_mail_is_refused() {
    for bytes in [
        request().encode(),
        MarkerReply {
            id: 1,
            error_code: 0,
        }
        .encode(),
    ] {
        // Below the smallest size by the size check, above it by the checksum.
        for length in 4..bytes.len() {
            refused(&bytes[..length]);
        }
    }
}

#[test]
fn every_damaged_byte_is_refused() {
    for bytes in [
        request().encode(),
        MarkerReply {
            id: 1,
            error_code: 0,
        }
        .encode(),
    ] {
        for at in 4..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut damaged = bytes.clone();
                damaged[at] ^= bit;
                refused(&damaged);
            }
        }
    }
}

#[test]
fn padded_and_oversized_mail_is_refused() {
    let mut padded = request().encode();
    padded.push(0);
    let reason = refused(&resealed(padded));
    assert!(reason.contains("topic length"), "{reason}");

    let mut reply = MarkerReply {
        id: 1,
        error_code: 0,
    }
    .encode();
    reply.push(0);
    refused(&resealed(reply));

    let mut huge = request().encode();
    huge.resize(1 << 20, b'x');
    let reason = refused(&huge);
    assert!(
        reason.contains("1048576 bytes"),
        "before the checksum: {reason}"
    );
}

#[test]
fn fields_out_of_range_are_refused_with_their_offset() {
    let bytes = request().encode();

    let mut version = bytes.clone();
    version[VERSION_OFFSET] = 2;
    let reason = refused(&resealed(version));
    assert!(reason.contains("version 2 at 8"), "{reason}");

    let mut commit = bytes.clone();
    commit[COMMIT_OFFSET] = 2;
    let reason = refused(&resealed(commit));
    assert!(reason.contains("commit byte 2 at 31"), "{reason}");

    let mut length = bytes.clone();
    length[TOPIC_LENGTH_OFFSET] += 1;
    let reason = refused(&resealed(length));
    assert!(reason.contains("at 36"), "{reason}");

    let mut utf8 = bytes.clone();
    utf8[TOPIC_OFFSET] = 0xff;
    let reason = refused(&resealed(utf8));
    assert!(reason.contains("UTF-8 at 38"), "{reason}");

    let mut empty = bytes[..TOPIC_OFFSET].to_vec();
    empty[TOPIC_LENGTH_OFFSET..TOPIC_OFFSET].copy_from_slice(&0u16.to_le_bytes());
    empty.push(b'x');
    refused(&resealed(empty));
}

/// A topic `t` whose partition `p` is led by `leaders[p]`, on shard `p` of this broker.
fn snapshot(local_node: i32, leaders: &[i32]) -> MetadataSnapshot {
    let topic = TopicMetadata {
        name: "t".into(),
        name_bytes: Bytes::from_static(b"t"),
        id: Uuid::nil(),
        partition_shards: (0..leaders.len()).collect(),
        partitions: leaders
            .iter()
            .map(|&leader| PartitionMetadata {
                replicas: vec![1, 2, 3],
                group_id: 1,
                leader,
                leader_epoch: 4,
                isr: vec![1, 2, 3],
                offline_replicas: Vec::new(),
                hosted_here: true,
                target: Vec::new(),
                learners: Vec::new(),
            })
            .collect(),
        overrides: BTreeMap::new(),
        config: crate::settings::Effective::defaults().topic_defaults(),
    };
    MetadataSnapshot {
        local_node,
        topics: [(topic.name.clone(), Arc::new(topic))].into(),
        ..MetadataSnapshot::default()
    }
}

#[test]
fn a_marker_goes_to_its_partitions_leader() {
    let cluster = snapshot(1, &[1, 2, -1]);
    assert_eq!(route(&cluster, true, &tp("t", 0)), MarkerRoute::Here(0));
    assert_eq!(route(&cluster, true, &tp("t", 1)), MarkerRoute::Leader(2));
    assert_eq!(route(&cluster, true, &tp("t", 2)), MarkerRoute::NoLeader);
    assert_eq!(route(&cluster, true, &tp("t", 3)), MarkerRoute::Unknown);
    assert_eq!(route(&cluster, true, &tp("gone", 0)), MarkerRoute::Unknown);
    assert_eq!(route(&cluster, true, &tp("t", -1)), MarkerRoute::Unknown);
    // A one-node broker writes every marker itself, whatever its metadata says.
    for partition in 0..3 {
        assert_eq!(
            route(&cluster, false, &tp("t", partition)),
            MarkerRoute::Here(partition as usize)
        );
    }
    assert_eq!(route(&cluster, false, &tp("gone", 0)), MarkerRoute::Unknown);
}

/// Runs `test` on a glommio executor (the post's timer is glommio's).
fn on_executor<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(test)
        .unwrap()
        .join()
        .unwrap();
}

/// Mail a post sent: (to, bytes).
type Outbox = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

fn sent_request(outbox: &Outbox, index: usize) -> (u64, MarkerRequest) {
    let (to, bytes) = outbox.borrow()[index].clone();
    let Some(Ok(MarkerMail::Request(request))) = MarkerMail::decode(&bytes) else {
        panic!("not a request");
    };
    (to, request)
}

/// Starts `deliver`s of `marker(commit)` to `leader` for each partition, in tasks.
fn deliver_all(
    post: &Rc<MarkerPost>,
    outbox: &Outbox,
    deliveries: &[(u64, i32)],
    timeout: Duration,
) -> Vec<glommio::task::JoinHandle<i16>> {
    deliveries
        .iter()
        .map(|&(leader, partition)| {
            let (post, outbox) = (post.clone(), outbox.clone());
            glommio::spawn_local(async move {
                let send = |bytes| outbox.borrow_mut().push((leader, bytes));
                post.deliver(leader, tp("t", partition), marker(true), send, timeout)
                    .await
            })
            .detach()
        })
        .collect()
}

async fn settle() {
    glommio::timer::sleep(Duration::from_millis(5)).await;
}

#[test]
fn replies_find_their_requests_by_id_and_sender() {
    on_executor(|| async {
        let post = Rc::new(MarkerPost::new(1_000));
        let outbox = Outbox::default();
        let deliveries = [(2, 0), (3, 1), (2, 2)];
        let tasks = deliver_all(&post, &outbox, &deliveries, MARKER_TIMEOUT);
        settle().await;
        assert_eq!(post.waiting_count(), 3);
        let requests: Vec<_> = (0..3).map(|i| sent_request(&outbox, i)).collect();
        for (i, (to, request)) in requests.iter().enumerate() {
            assert_eq!((*to, request.tp.partition), deliveries[i]);
            assert_eq!(request.marker, marker(true));
        }
        let ids: std::collections::BTreeSet<u64> = requests.iter().map(|(_, r)| r.id).collect();
        assert_eq!(ids.len(), 3, "distinct ids");
        assert!(ids.iter().all(|id| *id > 1_000), "after the first id");

        // Answered out of order; a reply from a broker not asked, and a reply nobody waits
        // for, change nothing.
        let (_, second) = &requests[1];
        post.answered(
            2,
            MarkerReply {
                id: second.id,
                error_code: 0,
            },
        );
        post.answered(
            3,
            MarkerReply {
                id: 77,
                error_code: 0,
            },
        );
        assert_eq!(post.waiting_count(), 3);
        let answers = [codes::NONE, codes::NOT_LEADER_OR_FOLLOWER, codes::NONE];
        for index in [2, 1, 0] {
            let (to, request) = &requests[index];
            post.answered(
                *to,
                MarkerReply {
                    id: request.id,
                    error_code: answers[index],
                },
            );
        }
        // A repeated reply finds nobody waiting.
        post.answered(
            2,
            MarkerReply {
                id: requests[0].1.id,
                error_code: 5,
            },
        );
        let mut got = Vec::new();
        for task in tasks {
            got.push(task.await.unwrap());
        }
        assert_eq!(got, answers);
        assert_eq!(post.waiting_count(), 0);
    });
}

#[test]
fn an_unanswered_request_times_out_and_is_forgotten() {
    on_executor(|| async {
        let post = Rc::new(MarkerPost::new(0));
        let outbox = Outbox::default();
        let timeout = Duration::from_millis(30);
        let tasks = deliver_all(&post, &outbox, &[(2, 0)], timeout);
        settle().await;
        assert_eq!(post.waiting_count(), 1);
        let started = std::time::Instant::now();
        for task in tasks {
            assert_eq!(task.await.unwrap(), codes::REQUEST_TIMED_OUT);
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(post.waiting_count(), 0);
        // The late reply matches nothing.
        let (to, request) = sent_request(&outbox, 0);
        post.answered(
            to,
            MarkerReply {
                id: request.id,
                error_code: 0,
            },
        );
        assert!(
            codes::is_retriable(codes::REQUEST_TIMED_OUT),
            "the coordinator retries"
        );
    });
}

#[test]
fn waiting_and_serving_are_bounded() {
    on_executor(|| async {
        let post = Rc::new(MarkerPost::new(0));
        let outbox = Outbox::default();
        let deliveries: Vec<(u64, i32)> = (0..WAITING_MAX as i32).map(|p| (2, p)).collect();
        let tasks = deliver_all(&post, &outbox, &deliveries, MARKER_TIMEOUT);
        settle().await;
        assert_eq!(post.waiting_count(), WAITING_MAX);
        let refused = deliver_all(&post, &outbox, &[(2, -1)], MARKER_TIMEOUT);
        for task in refused {
            assert_eq!(
                task.await.unwrap(),
                codes::REQUEST_TIMED_OUT,
                "refused at once"
            );
        }
        assert_eq!(
            outbox.borrow().len(),
            WAITING_MAX,
            "the refused one was not sent"
        );
        for index in 0..WAITING_MAX {
            let (to, request) = sent_request(&outbox, index);
            post.answered(
                to,
                MarkerReply {
                    id: request.id,
                    error_code: 0,
                },
            );
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), codes::NONE);
        }

        let turns: Vec<ServingTurn> = (0..SERVING_MAX)
            .map_while(|_| post.start_serving())
            .collect();
        assert_eq!(turns.len(), SERVING_MAX);
        assert!(post.start_serving().is_none(), "at the bound");
        drop(turns);
        assert!(post.start_serving().is_some(), "turns given back");
    });
}
