//! Guards the fetch session cache against a simple model of Kafka's rules (KIP-227,
//! `FetchSessionCacheShard`): sessions created by full requests, incremental adds, updates
//! and forgets in order, epochs, errors, eviction when full (stale first, then the least
//! valuable session a newcomer may displace) and the bounds on slots and partitions.

use std::collections::HashMap;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, TopicName};
use proptest::prelude::*;

use super::*;

fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

fn request(session_id: i32, epoch: i32, partitions: &[(&str, i32, i64)]) -> FetchRequest {
    let topics = partitions
        .iter()
        .map(|&(topic, partition, offset)| {
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(topics)
}

fn forget(mut request: FetchRequest, partitions: &[(&str, i32)]) -> FetchRequest {
    request.forgotten_topics_data = partitions
        .iter()
        .map(|&(topic, partition)| {
            ForgottenTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![partition])
        })
        .collect();
    request
}

/// An answer to `request` with the given high watermark for every partition.
fn answer(request: &FetchRequest, high_watermark: i64) -> Vec<FetchableTopicResponse> {
    request
        .topics
        .iter()
        .map(|topic| {
            FetchableTopicResponse::default()
                .with_topic(topic.topic.clone())
                .with_topic_id(topic.topic_id)
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            PartitionData::default()
                                .with_partition_index(partition.partition)
                                .with_high_watermark(high_watermark)
                                .with_last_stable_offset(high_watermark)
                                .with_log_start_offset(0)
                        })
                        .collect(),
                )
        })
        .collect()
}

/// Creates a session from a full request answered at `high_watermark`.
fn create(
    cache: &mut FetchSessionCache,
    now_ms: i64,
    partitions: &[(&str, i32, i64)],
    high_watermark: i64,
) -> i32 {
    let mut full = request(0, INITIAL_EPOCH, partitions);
    let SessionPlan::Full {
        privileged,
        uses_topic_ids,
        partitions,
    } = cache.begin(now_ms, &mut full, 12)
    else {
        panic!("epoch 0 is a full fetch");
    };
    cache.finish_full(
        now_ms,
        privileged,
        uses_topic_ids,
        partitions,
        &answer(&full, high_watermark),
    )
}

fn listed(request: &FetchRequest) -> Vec<(String, i32, i64)> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|p| (topic.topic.0.to_string(), p.partition, p.fetch_offset))
        })
        .collect()
}

#[test]
fn incremental_request_adds_updates_and_forgets_and_fetches_the_whole_session() {
    let mut cache = FetchSessionCache::new(3, 10, 1000, 7);
    let id = create(&mut cache, 0, &[("a", 0, 5), ("a", 1, 6), ("b", 0, 7)], 10);
    assert_eq!(id / SESSION_ID_RANGE, 3, "the id carries the shard");
    let mut next = forget(request(id, 1, &[("a", 1, 9), ("c", 0, 0)]), &[("b", 0)]);
    assert!(matches!(
        cache.begin(1, &mut next, 12),
        SessionPlan::Incremental { .. }
    ));
    let expected = vec![
        ("a".to_string(), 0, 5),
        ("a".to_string(), 1, 9),
        ("c".to_string(), 0, 0),
    ];
    assert_eq!(listed(&next), expected);
    assert!(next.forgotten_topics_data.is_empty());
    assert_eq!(cache.epoch_of(id), Some(2));
    assert_eq!(cache.partitions_cached(), 3);
}

#[test]
fn session_errors_are_kafkas() {
    let mut cache = FetchSessionCache::new(0, 10, 1000, 7);
    let id = create(&mut cache, 0, &[("a", 0, 5)], 10);
    let mut wrong_epoch = request(id, 2, &[]);
    assert!(matches!(
        cache.begin(1, &mut wrong_epoch, 12),
        SessionPlan::Error(codes::INVALID_FETCH_SESSION_EPOCH)
    ));
    let mut unknown = request(id + 1, 1, &[]);
    assert!(matches!(
        cache.begin(1, &mut unknown, 12),
        SessionPlan::Error(codes::FETCH_SESSION_ID_NOT_FOUND)
    ));
    // A repeated epoch (a retried request) is refused too: the session moved on.
    let mut first = request(id, 1, &[]);
    assert!(matches!(
        cache.begin(1, &mut first, 12),
        SessionPlan::Incremental { .. }
    ));
    let mut again = request(id, 1, &[]);
    assert!(matches!(
        cache.begin(1, &mut again, 12),
        SessionPlan::Error(_)
    ));
    // Epoch -1 with the id closes the session.
    let mut close = request(id, FINAL_EPOCH, &[]);
    assert!(matches!(
        cache.begin(1, &mut close, 12),
        SessionPlan::Sessionless
    ));
    assert_eq!(cache.sessions(), 0);
    assert_eq!(cache.partitions_cached(), 0);
}

#[test]
fn incremental_answer_keeps_changed_partitions_and_moves_them_last() {
    let mut cache = FetchSessionCache::new(0, 10, 1000, 7);
    let id = create(&mut cache, 0, &[("a", 0, 5), ("a", 1, 5), ("a", 2, 5)], 10);
    let mut next = request(id, 1, &[]);
    cache.begin(1, &mut next, 12);
    let mut response = answer(&next, 10);
    // Partition 1 has a new high watermark, partition 2 has records.
    response[0].partitions[1].high_watermark = 11;
    let kept = cache.finish_incremental(id, &mut response, &[false, false, true]);
    assert_eq!(kept, vec![false, true, true]);
    let indexes: Vec<i32> = response[0]
        .partitions
        .iter()
        .map(|p| p.partition_index)
        .collect();
    assert_eq!(indexes, vec![1, 2]);
    let order: Vec<i32> = cache
        .partitions_of(id)
        .unwrap()
        .iter()
        .map(|p| p.1)
        .collect();
    assert_eq!(
        order,
        vec![0, 1, 2],
        "carried partitions moved to the end, in order"
    );
    // Nothing changed: an empty answer.
    let mut quiet = request(id, 2, &[]);
    cache.begin(2, &mut quiet, 12);
    let mut response = answer(&quiet, 10);
    response[0].partitions[1].high_watermark = 11;
    assert_eq!(
        cache.finish_incremental(id, &mut response, &[false; 3]),
        vec![false; 3]
    );
    assert!(response.is_empty());
}

#[test]
fn an_error_is_always_carried_and_the_partition_again_when_it_clears() {
    let mut cache = FetchSessionCache::new(0, 10, 1000, 7);
    let id = create(&mut cache, 0, &[("a", 0, 5)], 10);
    for (epoch, error_code, carried) in [(1, 6, true), (2, 0, true), (3, 0, false)] {
        let mut next = request(id, epoch, &[]);
        cache.begin(1, &mut next, 12);
        let mut response = answer(&next, 10);
        response[0].partitions[0].error_code = error_code;
        let kept = cache.finish_incremental(id, &mut response, &[false]);
        assert_eq!(kept, vec![carried], "epoch {epoch}");
    }
}

#[test]
fn full_cache_evicts_stale_then_less_valuable_and_otherwise_answers_no_session() {
    let mut cache = FetchSessionCache::new(0, 2, 1000, 7);
    let small = create(&mut cache, 0, &[("a", 0, 0)], 0);
    let large = create(&mut cache, 0, &[("a", 0, 0), ("a", 1, 0)], 0);
    assert_ne!(small, NO_SESSION_ID);
    assert_ne!(large, NO_SESSION_ID);
    // Young sessions cannot be displaced by a consumer.
    assert_eq!(
        create(&mut cache, 1000, &[("b", 0, 0); 1], 0),
        NO_SESSION_ID
    );
    // Once old enough, a newcomer at least as large displaces the smallest.
    let keep_alive = |cache: &mut FetchSessionCache, id: i32, epoch: i32, now: i64| {
        let mut next = request(id, epoch, &[]);
        assert!(matches!(
            cache.begin(now, &mut next, 12),
            SessionPlan::Incremental { .. }
        ));
    };
    keep_alive(&mut cache, small, 1, MIN_EVICTION_MS + 10);
    keep_alive(&mut cache, large, 1, MIN_EVICTION_MS + 10);
    let newcomer = create(
        &mut cache,
        MIN_EVICTION_MS + 20,
        &[("b", 0, 0), ("b", 1, 0)],
        0,
    );
    assert_ne!(newcomer, NO_SESSION_ID);
    assert_eq!(cache.epoch_of(small), None, "the smallest session went");
    assert_eq!(cache.epoch_of(large), Some(2));
    // A session unused for longer than the minimum eviction time goes first, whatever its size.
    let later = 3 * MIN_EVICTION_MS;
    keep_alive(&mut cache, newcomer, 1, later);
    let tiny = create(&mut cache, later + 1, &[], 0);
    assert_ne!(tiny, NO_SESSION_ID);
    assert_eq!(cache.epoch_of(large), None, "the stale session went");
    assert_eq!(cache.counters().evicted, 2);
}

#[test]
fn partitions_bound_refuses_new_sessions_and_closes_growing_ones() {
    let mut cache = FetchSessionCache::new(0, 10, 3, 7);
    assert_eq!(
        create(
            &mut cache,
            0,
            &[("a", 0, 0), ("a", 1, 0), ("a", 2, 0), ("a", 3, 0)],
            0
        ),
        NO_SESSION_ID
    );
    let id = create(&mut cache, 0, &[("a", 0, 0), ("a", 1, 0)], 0);
    let mut grow = request(id, 1, &[("b", 0, 0), ("b", 1, 0)]);
    assert!(matches!(
        cache.begin(1, &mut grow, 12),
        SessionPlan::Error(codes::FETCH_SESSION_ID_NOT_FOUND)
    ));
    assert_eq!(cache.sessions(), 0);
    assert_eq!(cache.partitions_cached(), 0);
}

/// The model: sessions as plain lists, eviction by linear scans over Kafka's rules.
#[derive(Clone, Debug)]
struct ModelSession {
    epoch: i32,
    privileged: bool,
    created_ms: i64,
    last_used_ms: i64,
    partitions: Vec<(String, i32, i64)>,
}

#[derive(Default)]
struct Model {
    sessions: HashMap<i32, ModelSession>,
}

impl Model {
    fn total(&self) -> usize {
        self.sessions.values().map(|s| s.partitions.len()).sum()
    }

    /// The session a newcomer would displace, if any.
    fn victim(&self, privileged: bool, size: usize, now: i64) -> Option<i32> {
        let stalest = self
            .sessions
            .iter()
            .min_by_key(|(id, s)| (s.last_used_ms, **id))?;
        if now - stalest.1.last_used_ms > MIN_EVICTION_MS {
            return Some(*stalest.0);
        }
        // As Kafka: whether a session is old enough is decided when it was last used.
        let old = |s: &ModelSession| s.last_used_ms - s.created_ms > MIN_EVICTION_MS;
        let least = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                if privileged {
                    !s.privileged || old(s)
                } else {
                    old(s)
                }
            })
            .map(|(id, s)| (s.privileged, s.partitions.len(), *id))
            .min()?;
        ((privileged, size, 0) >= least).then_some(least.2)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Full {
        privileged: bool,
        close: Option<usize>,
        partitions: Vec<(u8, i32, i64)>,
    },
    Incremental {
        session: usize,
        epoch_off: i32,
        partitions: Vec<(u8, i32, i64)>,
        forget: Vec<(u8, i32)>,
    },
    Close(usize),
    Wait(i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let partition = (0u8..3, 0i32..4, 0i64..100);
    let op = prop_oneof![
        3 => (any::<bool>(), proptest::option::of(0usize..8), proptest::collection::vec(partition.clone(), 0..6))
            .prop_map(|(privileged, close, partitions)| Op::Full { privileged, close, partitions }),
        6 => (0usize..8, prop_oneof![8 => Just(0), 1 => -1i32..3], proptest::collection::vec(partition, 0..4),
              proptest::collection::vec((0u8..3, 0i32..4), 0..3))
            .prop_map(|(session, epoch_off, partitions, forget)| Op::Incremental { session, epoch_off, partitions, forget }),
        1 => (0usize..8).prop_map(Op::Close),
        2 => prop_oneof![Just(1_000i64), Just(MIN_EVICTION_MS / 2), Just(MIN_EVICTION_MS + 1)].prop_map(Op::Wait),
    ];
    proptest::collection::vec(op, 1..60)
}

fn topic(index: u8) -> String {
    format!("t{index}")
}

proptest! {
    #[test]
    fn cache_follows_the_model(ops in ops(), slots in 1usize..5, partitions_max in 1usize..20) {
        let mut cache = FetchSessionCache::new(1, slots, partitions_max, 99);
        let mut model = Model::default();
        let mut ids: Vec<i32> = Vec::new();
        let mut now = 0i64;
        for op in ops {
            match op {
                Op::Wait(ms) => now += ms,
                Op::Close(pick) => {
                    let Some(&id) = ids.get(pick) else { continue };
                    let mut close = request(id, FINAL_EPOCH, &[]);
                    prop_assert!(matches!(cache.begin(now, &mut close, 12), SessionPlan::Sessionless), "unexpected plan");
                    model.sessions.remove(&id);
                }
                Op::Full { privileged, close, partitions } => {
                    let close_id = close.and_then(|pick| ids.get(pick).copied()).unwrap_or(0);
                    let names: Vec<(String, i32, i64)> =
                        partitions.iter().map(|&(t, p, o)| (topic(t), p, o)).collect();
                    let borrowed: Vec<(&str, i32, i64)> =
                        names.iter().map(|(t, p, o)| (t.as_str(), *p, *o)).collect();
                    let mut full = request(close_id, INITIAL_EPOCH, &borrowed);
                    if privileged {
                        full.replica_id = kafka_protocol::messages::BrokerId(1);
                    }
                    model.sessions.remove(&close_id);
                    let SessionPlan::Full { privileged: p, uses_topic_ids, partitions } = cache.begin(now, &mut full, 12) else {
                        return Err(TestCaseError::fail("epoch 0 is full"));
                    };
                    prop_assert_eq!(p, privileged);
                    // The model's session list: a partition repeated in a request counts once,
                    // at its first place, with its last parameters.
                    let mut listed_model: Vec<(String, i32, i64)> = Vec::new();
                    for (t, p, o) in names {
                        match listed_model.iter_mut().find(|e| e.0 == t && e.1 == p) {
                            Some(entry) => entry.2 = o,
                            None => listed_model.push((t, p, o)),
                        }
                    }
                    let size = listed_model.len();
                    let fits = model.total() + size <= partitions_max;
                    let created_expected = fits && (model.sessions.len() < slots || {
                        match model.victim(privileged, size, now) {
                            Some(victim) => { model.sessions.remove(&victim); true }
                            None => false,
                        }
                    });
                    let id = cache.finish_full(now, privileged, uses_topic_ids, partitions, &answer(&full, 0));
                    prop_assert_eq!(id != NO_SESSION_ID, created_expected);
                    if created_expected {
                        prop_assert_eq!(id / SESSION_ID_RANGE, 1);
                        prop_assert!(!model.sessions.contains_key(&id));
                        model.sessions.insert(id, ModelSession {
                            epoch: 1, privileged, created_ms: now, last_used_ms: now,
                            partitions: listed_model,
                        });
                        ids.push(id);
                    }
                }
                Op::Incremental { session, epoch_off, partitions, forget: forgotten } => {
                    let Some(&id) = ids.get(session) else { continue };
                    let expected_epoch = model.sessions.get(&id).map_or(1, |s| s.epoch);
                    let epoch = (expected_epoch + epoch_off).max(1);
                    let names: Vec<(String, i32, i64)> =
                        partitions.iter().map(|&(t, p, o)| (topic(t), p, o)).collect();
                    let borrowed: Vec<(&str, i32, i64)> =
                        names.iter().map(|(t, p, o)| (t.as_str(), *p, *o)).collect();
                    let forget_names: Vec<(String, i32)> =
                        forgotten.iter().map(|&(t, p)| (topic(t), p)).collect();
                    let forget_borrowed: Vec<(&str, i32)> =
                        forget_names.iter().map(|(t, p)| (t.as_str(), *p)).collect();
                    let mut next = forget(request(id, epoch, &borrowed), &forget_borrowed);
                    let plan = cache.begin(now, &mut next, 12);
                    let total_before = model.total();
                    match model.sessions.get_mut(&id) {
                        None => prop_assert!(matches!(plan, SessionPlan::Error(codes::FETCH_SESSION_ID_NOT_FOUND)), "unexpected plan"),
                        Some(s) if s.epoch != epoch => {
                            prop_assert!(matches!(plan, SessionPlan::Error(codes::INVALID_FETCH_SESSION_EPOCH)), "unexpected plan");
                        }
                        Some(s) => {
                            let before = s.partitions.len();
                            let mut updated = s.partitions.clone();
                            for (t, p, o) in names {
                                match updated.iter_mut().find(|e| e.0 == t && e.1 == p) {
                                    Some(entry) => entry.2 = o,
                                    None => updated.push((t, p, o)),
                                }
                            }
                            updated.retain(|e| !forget_names.iter().any(|f| f.0 == e.0 && f.1 == e.1));
                            if total_before - before + updated.len() > partitions_max {
                                prop_assert!(matches!(plan, SessionPlan::Error(codes::FETCH_SESSION_ID_NOT_FOUND)), "unexpected plan");
                                model.sessions.remove(&id);
                            } else {
                                prop_assert!(matches!(plan, SessionPlan::Incremental { .. }), "unexpected plan");
                                s.partitions = updated;
                                s.epoch += 1;
                                s.last_used_ms = now;
                                prop_assert_eq!(&listed(&next), &s.partitions);
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(cache.sessions(), model.sessions.len());
            prop_assert!(cache.sessions() <= slots);
            prop_assert_eq!(cache.partitions_cached(), model.total());
            prop_assert!(cache.partitions_cached() <= partitions_max);
            for (id, s) in &model.sessions {
                prop_assert_eq!(cache.epoch_of(*id), Some(s.epoch));
                let cached = cache.partitions_of(*id);
                prop_assert_eq!(cached.as_ref(), Some(&s.partitions));
            }
        }
    }
}

/// A Fetch v13+ request: `partitions` name topics by id only (no name on the wire).
fn request_by_id(session_id: i32, epoch: i32, partitions: &[(Uuid, i32, i64)]) -> FetchRequest {
    let topics = partitions
        .iter()
        .map(|&(topic_id, partition, offset)| {
            FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20)])
        })
        .collect();
    FetchRequest::default()
        .with_session_id(session_id)
        .with_session_epoch(epoch)
        .with_topics(topics)
}

fn listed_by_id(request: &FetchRequest) -> Vec<(Uuid, i32, i64)> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|p| (topic.topic_id, p.partition, p.fetch_offset))
        })
        .collect()
}

#[test]
fn a_v13_session_is_keyed_by_topic_id_and_refuses_requests_by_name() {
    let (a, b) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
    let mut cache = FetchSessionCache::new(0, 10, 1000, 7);
    let mut full = request_by_id(0, INITIAL_EPOCH, &[(a, 0, 5), (b, 0, 7)]);
    let SessionPlan::Full {
        privileged,
        uses_topic_ids,
        partitions,
    } = cache.begin(0, &mut full, 13)
    else {
        panic!("epoch 0 is a full fetch");
    };
    assert!(uses_topic_ids);
    // The handler's answer carries the names it resolved; they are not part of the key.
    let mut answered = answer(&full, 10);
    answered[0].topic = name("alpha");
    answered[1].topic = name("beta");
    let id = cache.finish_full(0, privileged, uses_topic_ids, partitions, &answered);
    assert_ne!(id, NO_SESSION_ID);

    // Incremental by id: update a-0, forget b-0 by id, add b-1.
    let mut next = request_by_id(id, 1, &[(a, 0, 9), (b, 1, 0)]);
    next.forgotten_topics_data = vec![ForgottenTopic::default()
        .with_topic_id(b)
        .with_partitions(vec![0])];
    assert!(matches!(
        cache.begin(1, &mut next, 18),
        SessionPlan::Incremental { .. }
    ));
    assert_eq!(listed_by_id(&next), vec![(a, 0, 9), (b, 1, 0)]);
    // The session recorded a-0's answer under its id: an unchanged a-0 is not carried.
    let mut answered = answer(&next, 10);
    answered[0].topic = name("alpha");
    let kept = cache.finish_incremental(id, &mut answered, &[false, false]);
    assert_eq!(kept, vec![false, true], "b-1 is new to the session");

    // The same session used below v13 (names): Kafka's FETCH_SESSION_TOPIC_ID_ERROR.
    let mut by_name = request(id, 2, &[]);
    assert!(matches!(
        cache.begin(2, &mut by_name, 12),
        SessionPlan::Error(codes::FETCH_SESSION_TOPIC_ID_ERROR)
    ));
}

#[test]
fn a_session_by_name_refuses_v13_requests() {
    let mut cache = FetchSessionCache::new(0, 10, 1000, 7);
    let id = create(&mut cache, 0, &[("a", 0, 5)], 10);
    let mut by_id = request_by_id(id, 1, &[]);
    assert!(matches!(
        cache.begin(1, &mut by_id, 13),
        SessionPlan::Error(codes::FETCH_SESSION_TOPIC_ID_ERROR)
    ));
    // The same request at v12 is fine: the session keeps its epoch after an error.
    let mut by_name = request(id, 1, &[]);
    assert!(matches!(
        cache.begin(1, &mut by_name, 12),
        SessionPlan::Incremental { .. }
    ));
}
