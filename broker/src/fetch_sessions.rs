//! Incremental fetch sessions (KIP-227): the per-shard session cache and the rules that
//! turn a session's Fetch request into the full list of partitions to fetch and its answer
//! into the partitions that changed.
//!
//! Owner: one [`FetchSessionCache`] per shard (`ShardServices::fetch_sessions`), touched by
//! that shard's fetch handlers only and never borrowed across an await, so there is no lock.
//! A session lives on the shard whose connection sent the request that created it; its id
//! carries that shard's index (`shard * SESSION_ID_RANGE ..`, as Kafka's sharded cache
//! does), so ids are unique across shards without asking the others. A client keeps its
//! session on one connection (the Java client and kafka-python fetch from a node over one
//! connection), so the session is always found where it lives; an id of another shard is
//! answered `FETCH_SESSION_ID_NOT_FOUND` and the client starts again with a full fetch.
//!
//! Kafka's rules (`FetchSession.scala` / `FetchSessionCacheShard`), kept here:
//! - epoch -1: sessionless full fetch; a session id with it closes that session.
//! - epoch 0: full fetch creating a new session (closing the given one, if any); the answer
//!   carries the new id, or 0 when the cache has no slot and evicts nothing.
//! - epoch > 0: incremental. Unknown id: `FETCH_SESSION_ID_NOT_FOUND` (70); an epoch other
//!   than the next expected: `INVALID_FETCH_SESSION_EPOCH` (71); both answered with session
//!   id 0 and no partitions. Otherwise the request's partitions are added or updated, the
//!   forgotten ones removed, and the answer holds only the partitions with records, an
//!   error, or a changed high watermark, last stable or log start offset; those move to the
//!   end of the session's order so every partition gets its turn at the response's room.
//! - Eviction (`tryEvict`) when the cache is full: the session unused for longer than the
//!   minimum eviction time goes first; otherwise the newcomer displaces the least valuable
//!   session it may (key: privileged, then size in partitions, then id) only if it is not
//!   worth less. A consumer's session may displace only sessions that were older than the
//!   minimum eviction time when last used; a follower's (privileged) may also displace
//!   young consumer sessions.
//!
//! Topic ids (Fetch v13+, KIP-516): such a request names topics by id only, and its
//! session keys partitions by topic id and partition (Kafka's `TopicIdPartition`); a request
//! below v13 names them and keys by name. The name is resolved from the id on every round
//! (`handlers::fetch`), so a session holding the id of a deleted topic answers
//! `UNKNOWN_TOPIC_ID` for it, as Kafka's does. A session remembers which kind it is: an
//! incremental request of the other kind (a client that changed version mid-session) is
//! answered `FETCH_SESSION_TOPIC_ID_ERROR` (106), Kafka's `FetchManager.newContext` rule.
//!
//! Bounds: `slots_max` sessions (`max.incremental.fetch.session.cache.slots`, per shard
//! here, per broker in Kafka) and `partitions_max` cached partitions in all of them: a
//! session that would pass the latter is not created (id 0), or, when an incremental
//! request grows it past, closed with `FETCH_SESSION_ID_NOT_FOUND` (the client falls back to
//! a full fetch). Topic names are copied out of the request frame so a session pins no
//! request buffer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use crate::error_codes as codes;

/// Kafka's `FetchMetadata.INITIAL_EPOCH` and `FINAL_EPOCH`, and `INVALID_SESSION_ID`.
pub const INITIAL_EPOCH: i32 = 0;
pub const FINAL_EPOCH: i32 = -1;
pub const NO_SESSION_ID: i32 = 0;

/// Session ids per shard: shard `k` hands out ids in `[k * RANGE, (k + 1) * RANGE)` (id 0
/// excluded), so 128 shards fit in a positive `i32`.
pub const SESSION_ID_RANGE: i32 = 1 << 24;

/// Kafka's `MIN_INCREMENTAL_FETCH_SESSION_EVICTION_MS`: a session younger than this is only
/// displaced by a privileged one, and one unused for longer is displaced by anyone.
pub const MIN_EVICTION_MS: i64 = 120_000;

/// Kafka's `nextEpoch`: 1, 2, ... wrapping to 1 after `i32::MAX`.
fn next_epoch(epoch: i32) -> i32 {
    if epoch < 0 {
        FINAL_EPOCH
    } else if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

/// A topic id and partition (v13+; the name left empty), or a name and partition (the id
/// nil), from [`partition_key`].
type PartitionKey = (Uuid, StrBytes, i32);

/// The key of a partition named by `topic_id` when it is not nil (Fetch v13+), else by
/// `name`: a v13+ answer carries the name the handler resolved, which is not part of the key.
fn partition_key(topic_id: Uuid, name: &StrBytes, partition: i32) -> PartitionKey {
    if topic_id.is_nil() {
        (topic_id, name.clone(), partition)
    } else {
        (topic_id, StrBytes::default(), partition)
    }
}

/// What the session remembers of one partition: the request's parameters (so an
/// incremental request need not repeat them) and what the last answer said of it.
#[derive(Clone, Debug)]
struct CachedPartition {
    request: FetchPartition,
    high_watermark: i64,
    last_stable_offset: i64,
    log_start_offset: i64,
}

impl CachedPartition {
    fn new(request: FetchPartition) -> Self {
        // -1: whatever the first answer says differs, so a partition added to a session is
        // always in the next response (Kafka's INVALID_HIGH_WATERMARK).
        Self {
            request,
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
        }
    }
}

/// A session's partitions in their order (`order`: sequence number → key) with O(log n)
/// moves to the end.
#[derive(Debug, Default)]
struct SessionPartitions {
    by_key: HashMap<PartitionKey, (u64, CachedPartition)>,
    order: BTreeMap<u64, PartitionKey>,
    next_sequence: u64,
}

impl SessionPartitions {
    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Adds `key` at the end, or updates its request parameters in place.
    fn upsert(&mut self, key: PartitionKey, mut request: FetchPartition) {
        request.unknown_tagged_fields.clear();
        if let Some((_, cached)) = self.by_key.get_mut(&key) {
            cached.request = request;
            return;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.insert(sequence, key.clone());
        self.by_key
            .insert(key, (sequence, CachedPartition::new(request)));
    }

    fn remove(&mut self, key: &PartitionKey) {
        if let Some((sequence, _)) = self.by_key.remove(key) {
            self.order.remove(&sequence);
        }
    }

    fn move_to_end(&mut self, key: &PartitionKey) {
        if let Some((sequence, _)) = self.by_key.get_mut(key) {
            let key = self.order.remove(sequence).expect("order and by_key agree");
            *sequence = self.next_sequence;
            self.order.insert(self.next_sequence, key);
            self.next_sequence += 1;
        }
    }

    /// The partitions in order, grouped into topics as a request carries them (a topic
    /// appears once per run of its partitions).
    fn as_request_topics(&self) -> Vec<FetchTopic> {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for key in self.order.values() {
            let (_, cached) = &self.by_key[key];
            match topics.last_mut() {
                Some(topic) if topic.topic_id == key.0 && topic.topic.0 == key.1 => {
                    topic.partitions.push(cached.request.clone());
                }
                _ => topics.push(
                    FetchTopic::default()
                        .with_topic_id(key.0)
                        .with_topic(TopicName(key.1.clone()))
                        .with_partitions(vec![cached.request.clone()]),
                ),
            }
        }
        topics
    }
}

#[derive(Debug)]
struct Session {
    privileged: bool,
    /// Created by a Fetch v13+ request: keyed by topic id.
    uses_topic_ids: bool,
    /// The epoch the next incremental request must carry.
    epoch: i32,
    created_ms: i64,
    last_used_ms: i64,
    /// The size the eviction keys were made with (Kafka's `cachedSize`).
    cached_size: usize,
    partitions: SessionPartitions,
}

/// Kafka's `EvictableKey`: the least valuable session orders first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EvictableKey {
    privileged: bool,
    size: usize,
    id: i32,
}

/// What the cache did, for metrics (`ringfeed_fetch_sessions_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub created: u64,
    pub evicted: u64,
    /// Incremental requests accepted.
    pub incremental: u64,
    /// Requests answered `FETCH_SESSION_ID_NOT_FOUND`, `INVALID_FETCH_SESSION_EPOCH` or
    /// `FETCH_SESSION_TOPIC_ID_ERROR`.
    pub errors: u64,
    /// Full requests that asked for a session and got none (no slot).
    pub refused: u64,
}

/// How a request is served, decided by [`FetchSessionCache::begin`].
#[derive(Debug)]
pub enum SessionPlan {
    /// Serve the request as sent; answer with session id 0.
    Sessionless,
    /// Serve the request as sent; then [`FetchSessionCache::finish_full`] creates the
    /// session from the request's partitions and the answer.
    Full {
        privileged: bool,
        uses_topic_ids: bool,
        partitions: Vec<(PartitionKey, FetchPartition)>,
    },
    /// The request's topics were replaced by all of the session's partitions; then
    /// [`FetchSessionCache::finish_incremental`] keeps the partitions that changed.
    Incremental { session_id: i32 },
    /// Answer this top-level error with session id 0 and no partitions.
    Error(i16),
}

/// See the module docs.
#[derive(Debug)]
pub struct FetchSessionCache {
    slots_max: usize,
    partitions_max: usize,
    eviction_min_ms: i64,
    /// First id of this shard's range, and the state of the id generator.
    id_base: i32,
    id_state: u64,
    sessions: HashMap<i32, Session>,
    last_used: BTreeSet<(i64, i32)>,
    evictable_by_all: BTreeSet<EvictableKey>,
    evictable_by_privileged: BTreeSet<EvictableKey>,
    partitions_cached: usize,
    counters: SessionCounters,
}

impl FetchSessionCache {
    /// A cache of shard `shard_id`; `seed` varies the ids handed out (a restarted broker
    /// should not hand out the ids its clients still hold, as Kafka's random ids do not).
    pub fn new(shard_id: usize, slots_max: usize, partitions_max: usize, seed: u64) -> Self {
        let shard = i32::try_from(shard_id).expect("shard index fits an i32");
        assert!(
            shard < i32::MAX / SESSION_ID_RANGE,
            "shard {shard} has no session id range"
        );
        Self {
            slots_max,
            partitions_max,
            eviction_min_ms: MIN_EVICTION_MS,
            id_base: shard * SESSION_ID_RANGE,
            id_state: seed | 1,
            sessions: HashMap::new(),
            last_used: BTreeSet::new(),
            evictable_by_all: BTreeSet::new(),
            evictable_by_privileged: BTreeSet::new(),
            partitions_cached: 0,
            counters: SessionCounters::default(),
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn partitions_cached(&self) -> usize {
        self.partitions_cached
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    /// Decides how `request` is served and, for an incremental request, checks it against
    /// its session, applies its changes and rewrites its topics to the session's whole list.
    /// `version`: the request's; from 13 topics are named by id.
    pub fn begin(&mut self, now_ms: i64, request: &mut FetchRequest, version: i16) -> SessionPlan {
        let uses_topic_ids = version >= 13;
        let privileged = request.replica_id.0 >= 0 || request.replica_state.replica_id.0 >= 0;
        let (session_id, epoch) = (request.session_id, request.session_epoch);
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            if session_id != NO_SESSION_ID {
                self.remove(session_id);
            }
            if epoch == FINAL_EPOCH {
                return SessionPlan::Sessionless;
            }
            return SessionPlan::Full {
                privileged,
                uses_topic_ids,
                partitions: request_partitions(request),
            };
        }
        match self.update(now_ms, request, uses_topic_ids) {
            Ok(()) => {
                self.counters.incremental += 1;
                SessionPlan::Incremental { session_id }
            }
            Err(error_code) => {
                self.counters.errors += 1;
                SessionPlan::Error(error_code)
            }
        }
    }

    fn update(
        &mut self,
        now_ms: i64,
        request: &mut FetchRequest,
        uses_topic_ids: bool,
    ) -> Result<(), i16> {
        let session_id = request.session_id;
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return Err(codes::FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.epoch != request.session_epoch {
            return Err(codes::INVALID_FETCH_SESSION_EPOCH);
        }
        if session.uses_topic_ids != uses_topic_ids {
            return Err(codes::FETCH_SESSION_TOPIC_ID_ERROR);
        }
        for (key, partition) in request_partitions(request) {
            session.partitions.upsert(key, partition);
        }
        for forgotten in &request.forgotten_topics_data {
            for &partition in &forgotten.partitions {
                let key = partition_key(forgotten.topic_id, &forgotten.topic.0, partition);
                session.partitions.remove(&key);
            }
        }
        let grown = session.partitions.len().saturating_sub(session.cached_size);
        if self.partitions_cached + grown > self.partitions_max {
            self.remove(session_id);
            return Err(codes::FETCH_SESSION_ID_NOT_FOUND);
        }
        session.epoch = next_epoch(session.epoch);
        request.topics = session.partitions.as_request_topics();
        request.forgotten_topics_data.clear();
        self.touch(session_id, now_ms);
        Ok(())
    }

    /// Creates the session of a full request from its partitions and the answer's offsets,
    /// if a slot is free or can be freed (Kafka's `maybeCreateSession`); the id to answer.
    pub fn finish_full(
        &mut self,
        now_ms: i64,
        privileged: bool,
        uses_topic_ids: bool,
        partitions: Vec<(PartitionKey, FetchPartition)>,
        response: &[FetchableTopicResponse],
    ) -> i32 {
        let mut cached = SessionPartitions::default();
        for (key, partition) in partitions {
            cached.upsert(key, partition);
        }
        // The size in partitions, a partition named twice counted once (Kafka's is a map's).
        let size = cached.len();
        let key = EvictableKey {
            privileged,
            size,
            id: 0,
        };
        let room = self.partitions_cached + size <= self.partitions_max;
        if !room
            || (self.sessions.len() >= self.slots_max && !self.try_evict(privileged, key, now_ms))
        {
            self.counters.refused += 1;
            return NO_SESSION_ID;
        }
        record_answer(&mut cached, response, &[], false);
        let id = self.new_session_id();
        self.sessions.insert(
            id,
            Session {
                privileged,
                uses_topic_ids,
                epoch: next_epoch(INITIAL_EPOCH),
                created_ms: now_ms,
                last_used_ms: now_ms,
                cached_size: 0,
                partitions: cached,
            },
        );
        self.touch(id, now_ms);
        self.counters.created += 1;
        id
    }

    /// Keeps in `response` only the partitions an incremental answer carries (see the
    /// module docs), and returns their places in the response as it was (request order), so
    /// the caller drops the same partitions' batches. A session evicted meanwhile keeps the
    /// answer whole (harmless: the client's next request finds no session and starts again).
    /// `has_records`: per partition in response order, whether the answer has batches for
    /// it (the handler keeps them apart from `response`).
    pub fn finish_incremental(
        &mut self,
        session_id: i32,
        response: &mut Vec<FetchableTopicResponse>,
        has_records: &[bool],
    ) -> Vec<bool> {
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return vec![true; response.iter().map(|topic| topic.partitions.len()).sum()];
        };
        let kept = record_answer(&mut session.partitions, response, has_records, true);
        let mut flags = kept.iter();
        for topic in response.iter_mut() {
            topic
                .partitions
                .retain(|_| *flags.next().expect("one flag per partition"));
        }
        response.retain(|topic| !topic.partitions.is_empty());
        kept
    }

    fn new_session_id(&mut self) -> i32 {
        loop {
            // xorshift64*: ids spread over the range, no two sessions share one.
            self.id_state ^= self.id_state >> 12;
            self.id_state ^= self.id_state << 25;
            self.id_state ^= self.id_state >> 27;
            let draw = self.id_state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            let id = self.id_base + (draw as i32 % SESSION_ID_RANGE);
            if id != NO_SESSION_ID && !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// Kafka's `tryEvict`; see the module docs.
    fn try_evict(&mut self, privileged: bool, key: EvictableKey, now_ms: i64) -> bool {
        let Some(&(last_used_ms, stalest)) = self.last_used.first() else {
            return false;
        };
        if now_ms - last_used_ms > self.eviction_min_ms {
            self.remove(stalest);
            self.counters.evicted += 1;
            return true;
        }
        let candidates = if privileged {
            &self.evictable_by_privileged
        } else {
            &self.evictable_by_all
        };
        match candidates.first() {
            Some(&least) if key >= least => {
                self.remove(least.id);
                self.counters.evicted += 1;
                true
            }
            _ => false,
        }
    }

    fn remove(&mut self, session_id: i32) {
        if let Some(session) = self.sessions.remove(&session_id) {
            self.last_used.remove(&(session.last_used_ms, session_id));
            let key = evictable_key(session_id, &session);
            self.evictable_by_all.remove(&key);
            self.evictable_by_privileged.remove(&key);
            self.partitions_cached -= session.cached_size;
        }
    }

    /// Kafka's `touch`: the session's place in the recency and eviction orders.
    fn touch(&mut self, session_id: i32, now_ms: i64) {
        let session = self
            .sessions
            .get_mut(&session_id)
            .expect("touching a live session");
        self.last_used.remove(&(session.last_used_ms, session_id));
        session.last_used_ms = now_ms;
        self.last_used.insert((now_ms, session_id));
        let old_key = evictable_key(session_id, session);
        self.evictable_by_all.remove(&old_key);
        self.evictable_by_privileged.remove(&old_key);
        self.partitions_cached -= session.cached_size;
        session.cached_size = session.partitions.len();
        self.partitions_cached += session.cached_size;
        let key = evictable_key(session_id, session);
        let old_enough = now_ms - session.created_ms > self.eviction_min_ms;
        if !session.privileged || old_enough {
            self.evictable_by_privileged.insert(key);
        }
        if old_enough {
            self.evictable_by_all.insert(key);
        }
    }

    #[cfg(test)]
    fn epoch_of(&self, session_id: i32) -> Option<i32> {
        self.sessions.get(&session_id).map(|session| session.epoch)
    }

    #[cfg(test)]
    fn partitions_of(&self, session_id: i32) -> Option<Vec<(String, i32, i64)>> {
        self.sessions.get(&session_id).map(|session| {
            session
                .partitions
                .order
                .values()
                .map(|key| {
                    let (_, cached) = &session.partitions.by_key[key];
                    (key.1.to_string(), key.2, cached.request.fetch_offset)
                })
                .collect()
        })
    }
}

fn evictable_key(id: i32, session: &Session) -> EvictableKey {
    EvictableKey {
        privileged: session.privileged,
        size: session.cached_size,
        id,
    }
}

/// A copy of a name that shares no memory with the request frame.
fn owned(name: &StrBytes) -> StrBytes {
    StrBytes::from_string(name.to_string())
}

fn request_partitions(request: &FetchRequest) -> Vec<(PartitionKey, FetchPartition)> {
    let mut partitions = Vec::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            let (topic_id, name, partition_index) =
                partition_key(topic.topic_id, &topic.topic.0, partition.partition);
            // Kept by the session: a copy that pins no request frame.
            partitions.push(((topic_id, owned(&name), partition_index), partition.clone()));
        }
    }
    partitions
}

/// Records each answered partition's offsets in the session and says, per partition in
/// response order, whether an incremental answer carries it (Kafka's
/// `maybeUpdateResponseData`): records (`has_records`, in response order), an error, or an
/// offset that changed. With
/// `move_carried`, carried partitions go to the end of the session's order.
fn record_answer(
    partitions: &mut SessionPartitions,
    response: &[FetchableTopicResponse],
    has_records: &[bool],
    move_carried: bool,
) -> Vec<bool> {
    let mut carried = Vec::new();
    for topic in response {
        for answer in &topic.partitions {
            let records = has_records.get(carried.len()).copied().unwrap_or(false);
            let key = partition_key(topic.topic_id, &topic.topic.0, answer.partition_index);
            let Some((_, cached)) = partitions.by_key.get_mut(&key) else {
                carried.push(true);
                continue;
            };
            let mut must = answer.error_code != codes::NONE || records;
            must |= cached.high_watermark != answer.high_watermark
                || cached.last_stable_offset != answer.last_stable_offset
                || cached.log_start_offset != answer.log_start_offset;
            if answer.error_code == codes::NONE {
                cached.high_watermark = answer.high_watermark;
                cached.last_stable_offset = answer.last_stable_offset;
                cached.log_start_offset = answer.log_start_offset;
            } else {
                // As Kafka: once the error clears, the partition is carried again.
                cached.high_watermark = -1;
            }
            if must && move_carried {
                partitions.move_to_end(&key);
            }
            carried.push(must);
        }
    }
    carried
}

#[cfg(test)]
mod tests;
