//! Client requests on a replicated partition (`docs/REPLICATION.md` § Kafka semantics on
//! top), on the shard hosting its replica:
//!
//! - Produce, leader only (others: `NOT_LEADER_OR_FOLLOWER`). Every batch is checked as
//!   today (CRC, format; control batches refused), acks=all checks `min.insync.replicas`
//!   against the in-sync set before anything is proposed (`NOT_ENOUGH_REPLICAS`), then the
//!   batches are proposed, synchronously, in the order calls are dispatched: a connection's
//!   pipelined produces keep their order because proposing is the append. acks=1 is
//!   answered once the last batch is durable on the leader, acks=all once it is committed
//!   in the proposing term; a leader that loses leadership (or its term) first answers
//!   `NOT_LEADER_OR_FOLLOWER`. The base offset answered is the one the log stamped.
//! - Fetch and `ListOffsets`, leader only: the high watermark is the Kafka end offset of the
//!   committed prefix and no batch at or past it is returned. A new leader answers
//!   ListOffsets(latest) with `OFFSET_NOT_AVAILABLE` until it committed in its term (KIP-207).

use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use raft::StateRole;

use crate::error_codes as codes;
use crate::isolation::Isolation;
use crate::metadata::TopicPartition;
use crate::producer_state::{TxnMarker, OUT_OF_ORDER_SEQUENCE_NUMBER};
use crate::replica::manager::{Hosted, ReplicaManager, Resolution, Waiter};
use crate::replica::producers::{BatchAt, Verdict};
use crate::replica::types::{CoordinatorRole, ReplicaFetch, ReplicaOffset, ReplicaProduce};
use crate::storage::batch::{control, BatchHeader};
use crate::storage::{AppendError, ReadError};

/// Kafka's `DUPLICATE_SEQUENCE_NUMBER` (46): a call of several batches repeats one.
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;

/// Kafka's `OFFSET_NOT_AVAILABLE` (78): a new leader has not committed in its term yet.
pub const OFFSET_NOT_AVAILABLE: i16 = 78;

/// How long a produce call waits for its acks before `REQUEST_TIMED_OUT`. A leader without
/// a quorum steps down after an election timeout (check-quorum) and its calls are answered
/// `NOT_LEADER_OR_FOLLOWER` then, so this only bounds a wait nothing else ends.
pub const PRODUCE_ACKS_TIMEOUT: Duration = Duration::from_secs(30);

/// A produce call proposed (or refused) synchronously; [`Self::wait`] for its answer.
pub struct PendingReplicaProduce(Pending);

enum Pending {
    Done(ReplicaProduce),
    Waiting {
        answered: oneshot::Receiver<Resolution>,
        /// Raft index and term of the call's last batch.
        index: u64,
        term: u64,
        /// Kafka offsets the call's batches before the last one take.
        span_before_last: i64,
        log: crate::disk::PartitionLog,
    },
}

fn refused(error_code: i16) -> PendingReplicaProduce {
    PendingReplicaProduce(Pending::Done(ReplicaProduce {
        error_code,
        base_offset: -1,
        log_start_offset: -1,
    }))
}

impl ReplicaManager {
    /// Whether this replica leads the group now, with its term.
    pub(crate) fn leading_term(&self, group_id: u64) -> Option<u64> {
        let driver = self.driver.borrow();
        let raft = driver.raft(group_id)?;
        (raft.state == StateRole::Leader && !driver.is_fenced(group_id)).then_some(raft.term)
    }

    /// Stage one of a produce call on a hosted partition, synchronous: checks and proposes
    /// `batches` (whole v2 batches, in order) now. See the module docs.
    pub fn dispatch_produce(
        &self,
        tp: &TopicPartition,
        batches: Vec<Bytes>,
        acks: i16,
    ) -> PendingReplicaProduce {
        let Some((group_id, hosted)) = self.hosted(tp) else {
            return refused(codes::NOT_LEADER_OR_FOLLOWER);
        };
        let Some(term) = self.leading_term(group_id) else {
            return refused(codes::NOT_LEADER_OR_FOLLOWER);
        };
        let mut headers = Vec::with_capacity(batches.len());
        for batch in &batches {
            match hosted.log.check(batch.clone()) {
                Ok(checked) if checked.header().is_control() => {
                    return refused(codes::INVALID_RECORD)
                }
                Ok(checked) => headers.push(*checked.header()),
                Err(AppendError::Batch(error)) => {
                    return refused(crate::recompress::batch_error_code(&error))
                }
                Err(AppendError::Storage(_)) => return refused(codes::KAFKA_STORAGE_ERROR),
            }
        }
        if batches.is_empty() {
            return refused(codes::INVALID_RECORD);
        }
        // Kafka's LogValidator: a transactional batch belongs to a producer id.
        if headers
            .iter()
            .any(|header| header.is_transactional() && header.producer_id < 0)
        {
            return refused(codes::INVALID_RECORD);
        }
        if let Err(code) = check_transactions(&hosted, &headers) {
            return refused(code);
        }
        if self.would_pass_shard_txn_bound(&hosted, &headers) {
            tracing::debug!(partition = %tp, "transaction refused: the shard's replicated partitions have their maximum of open transactions");
            return refused(crate::producer_state::POLICY_VIOLATION);
        }
        if acks == -1 {
            let in_sync = self.in_sync(group_id).len();
            if (in_sync as u64) < u64::from(hosted.replica.min_insync_replicas) {
                return refused(codes::NOT_ENOUGH_REPLICAS);
            }
        }
        match self.check_sequences(group_id, &hosted, &headers, term) {
            Ok(None) => {}
            Ok(Some(duplicate)) => {
                return self.answer_duplicate(group_id, &hosted, duplicate, acks)
            }
            Err(code) => return refused(code),
        }
        let spans: Vec<i64> = headers
            .iter()
            .map(|header| i64::from(header.last_offset_delta) + 1)
            .collect();
        let mut last = None;
        for (batch, header) in batches.into_iter().zip(&headers) {
            let proposed = self.driver.borrow_mut().propose(group_id, batch.clone());
            match proposed {
                Ok(proposed) => {
                    if header.producer_id >= 0 {
                        hosted.producers.borrow_mut().proposed(
                            header,
                            proposed.index,
                            proposed.term,
                        );
                    }
                    last = Some(proposed);
                }
                Err(error) => {
                    tracing::debug!(partition = %tp, %error, "proposal refused");
                    self.ring();
                    return refused(codes::NOT_LEADER_OR_FOLLOWER);
                }
            }
        }
        self.ring();
        let last = last.expect("one batch at least");
        debug_assert_eq!(last.term, term);
        if acks == 0 {
            return PendingReplicaProduce(Pending::Done(ReplicaProduce {
                error_code: codes::NONE,
                base_offset: -1,
                log_start_offset: hosted.log.log_start_offset(),
            }));
        }
        let span_before_last = spans[..spans.len() - 1].iter().sum();
        self.wait_for(
            group_id,
            &hosted,
            last.index,
            last.term,
            acks,
            span_before_last,
        )
    }

    /// What an internal topic's coordinator may do on the hosted partition `tp` now
    /// (`groups::offsets_store`): serve it only as its leader; load it (replay) only once
    /// every entry of earlier terms is committed and applied here.
    pub fn coordinator_role(&self, tp: &TopicPartition) -> CoordinatorRole {
        let Some((group_id, hosted)) = self.hosted(tp) else {
            return CoordinatorRole::NotLeader;
        };
        let Some(term) = self.leading_term(group_id) else {
            return CoordinatorRole::NotLeader;
        };
        let applied_all = self
            .driver
            .borrow()
            .raft(group_id)
            .is_some_and(|raft| raft.raft_log.committed == hosted.applied_index.get());
        CoordinatorRole::Leader {
            term,
            caught_up: applied_all && self.committed_in_term(group_id),
        }
    }

    /// The log of hosted partition `tp` (reads only: writes go through Raft).
    pub fn hosted_log(&self, tp: &TopicPartition) -> Option<crate::disk::PartitionLog> {
        self.hosted(tp).map(|(_, hosted)| hosted.log.clone())
    }

    /// The Kafka end offset of hosted partition `tp`'s committed prefix.
    pub fn committed_end_of(&self, tp: &TopicPartition) -> Option<i64> {
        self.hosted(tp)
            .map(|(_, hosted)| hosted.committed_end.get())
    }

    /// An internal topic coordinator's own batch (group coordinator records, transactional
    /// offsets), proposed now if this replica still leads `tp` in `term`; answered once
    /// committed in that term (acks=all) after the `min.insync.replicas` check. Unlike a
    /// client's produce no idempotent-producer check applies: the coordinator writes under
    /// its own per-partition order.
    pub fn propose_as_coordinator(
        &self,
        tp: &TopicPartition,
        term: u64,
        batch: &[u8],
    ) -> PendingReplicaProduce {
        let Some((group_id, hosted)) = self.hosted(tp) else {
            return refused(codes::NOT_LEADER_OR_FOLLOWER);
        };
        if self.leading_term(group_id) != Some(term) {
            return refused(codes::NOT_LEADER_OR_FOLLOWER);
        }
        let in_sync = self.in_sync(group_id).len();
        if (in_sync as u64) < u64::from(hosted.replica.min_insync_replicas) {
            return refused(codes::NOT_ENOUGH_REPLICAS);
        }
        let proposed = self
            .driver
            .borrow_mut()
            .propose(group_id, Bytes::copy_from_slice(batch));
        self.ring();
        match proposed {
            Ok(proposed) if proposed.term == term => {
                self.wait_for(group_id, &hosted, proposed.index, term, -1, 0)
            }
            Ok(_) => refused(codes::NOT_LEADER_OR_FOLLOWER),
            Err(error) => {
                tracing::debug!(partition = %tp, %error, "coordinator proposal refused");
                refused(codes::NOT_LEADER_OR_FOLLOWER)
            }
        }
    }

    /// `DeleteRecords` on a hosted partition this replica leads: proposes a `LOG_START`
    /// control entry (`storage::batch::control`); every replica that applies it raises its own
    /// log start (`manager::apply`), so the records are gone on each and stay gone after a
    /// change of leader. Answered once the entry is committed (acks=all, after the
    /// `min.insync.replicas` check) and this leader's raised start is durable: (error code,
    /// the log start). `offset` -1 means the high watermark.
    pub async fn delete_records(&self, tp: &TopicPartition, offset: i64) -> (i16, i64) {
        let Some((group_id, hosted)) = self.hosted(tp) else {
            return (codes::NOT_LEADER_OR_FOLLOWER, -1);
        };
        let Some(term) = self.leading_term(group_id) else {
            return (codes::NOT_LEADER_OR_FOLLOWER, -1);
        };
        let log_start = hosted.log.log_start_offset();
        let high_watermark = hosted.committed_end.get();
        let target = if offset == -1 { high_watermark } else { offset };
        if target < 0 || target > high_watermark {
            return (codes::OFFSET_OUT_OF_RANGE, log_start);
        }
        if target <= log_start {
            return (codes::NONE, log_start);
        }
        let in_sync = self.in_sync(group_id).len();
        if (in_sync as u64) < u64::from(hosted.replica.min_insync_replicas) {
            return (codes::NOT_ENOUGH_REPLICAS, log_start);
        }
        let entry = control::batch(control::LOG_START, &target.to_be_bytes());
        let proposed = self.driver.borrow_mut().propose(group_id, entry);
        self.ring();
        let pending = match proposed {
            Ok(proposed) if proposed.term == term => {
                self.wait_for(group_id, &hosted, proposed.index, term, -1, 0)
            }
            _ => return (codes::NOT_LEADER_OR_FOLLOWER, -1),
        };
        let answer = pending.wait().await;
        if answer.error_code != codes::NONE {
            return (answer.error_code, -1);
        }
        match hosted.log.advance_log_start(target).await {
            Ok(start) => (codes::NONE, start),
            Err(error) => {
                tracing::error!(partition = %tp, %error, "delete records failed");
                (codes::KAFKA_STORAGE_ERROR, -1)
            }
        }
    }

    /// A transaction marker on a hosted partition this replica leads (the transaction
    /// coordinator's `WriteTxnMarkers`, `partition::write_txn_marker`): Kafka's epoch checks
    /// (`producers::check_marker`), then the control batch proposed and answered once
    /// committed in this term (acks=all after the `min.insync.replicas` check), as Kafka's
    /// leader appends a marker with acks=all. Every replica closes the producer's
    /// transaction when it applies the marker (`txns`). The marker's offset, or the error
    /// code; a marker for a producer with no open transaction here is written all the same
    /// (a retry), and changes nothing.
    pub async fn write_txn_marker(
        &self,
        tp: &TopicPartition,
        marker: TxnMarker,
    ) -> Result<i64, i16> {
        let (group_id, hosted) = self.hosted(tp).ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        let term = self
            .leading_term(group_id)
            .ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        // The producer's committed epochs are those of every earlier leader once this one
        // applied an entry of its term (as for a produce's sequence check).
        let applied_in_term =
            self.driver.borrow().raft(group_id).is_some_and(|raft| {
                raft.raft_log.term(hosted.applied_index.get()).ok() == Some(term)
            });
        if !applied_in_term {
            return Err(codes::NOT_LEADER_OR_FOLLOWER);
        }
        hosted.producers.borrow().check_marker(&marker)?;
        let in_sync = self.in_sync(group_id).len();
        if (in_sync as u64) < u64::from(hosted.replica.min_insync_replicas) {
            return Err(codes::NOT_ENOUGH_REPLICAS);
        }
        let batch = control::txn_marker(
            marker.producer_id,
            marker.producer_epoch,
            marker.commit,
            marker.coordinator_epoch,
            hosted.log.clock().now_ms(),
        );
        let proposed = self.driver.borrow_mut().propose(group_id, batch);
        self.ring();
        let pending = match proposed {
            Ok(proposed) if proposed.term == term => {
                hosted.producers.borrow_mut().marker_proposed(&marker);
                self.wait_for(group_id, &hosted, proposed.index, term, -1, 0)
            }
            Ok(_) => return Err(codes::NOT_LEADER_OR_FOLLOWER),
            Err(error) => {
                tracing::debug!(partition = %tp, %error, "transaction marker proposal refused");
                return Err(codes::NOT_LEADER_OR_FOLLOWER);
            }
        };
        let answer = pending.wait().await;
        match answer.error_code {
            codes::NONE => Ok(answer.base_offset),
            code => Err(code),
        }
    }

    /// Registers a produce call's wait for the entry at `index` proposed in `term`.
    fn wait_for(
        &self,
        group_id: u64,
        hosted: &Hosted,
        index: u64,
        term: u64,
        acks: i16,
        span_before_last: i64,
    ) -> PendingReplicaProduce {
        let (answer, answered) = oneshot::channel();
        let serial = hosted.next_waiter.get();
        hosted.next_waiter.set(serial + 1);
        hosted
            .waiting
            .borrow_mut()
            .insert((index, serial), Waiter { term, acks, answer });
        self.groups_waiting.borrow_mut().insert(group_id);
        PendingReplicaProduce(Pending::Waiting {
            answered,
            index,
            term,
            span_before_last,
            log: hosted.log.clone(),
        })
    }

    /// The idempotent producers' checks of a call's batches (`producers`): `Ok(None)` to
    /// propose them, `Ok(Some(at))` for a one-batch call that repeats a batch seen before.
    fn check_sequences(
        &self,
        group_id: u64,
        hosted: &Hosted,
        headers: &[BatchHeader],
        term: u64,
    ) -> Result<Option<BatchAt>, i16> {
        if headers.iter().all(|header| header.producer_id < 0) {
            return Ok(None);
        }
        // Every earlier leader's batch that will commit must be applied here first: it is
        // once an entry of this term is applied (the term's first entry follows every
        // earlier one). Entries committed and not yet applied beyond that are this
        // leader's own proposals, which `producers` tracks already; requiring every committed
        // entry to be applied (as this check once did) refused healthy leaders between two
        // rounds, and each refusal left the client a sequence gap it answers with an epoch
        // bump (found by `reliability/partitions.py`).
        let applied_in_term = self.driver.borrow().raft(group_id).is_some_and(|raft| {
            raft.state == StateRole::Leader
                && raft.raft_log.term(hosted.applied_index.get()).ok() == Some(raft.term)
        });
        if !applied_in_term {
            return Err(codes::NOT_LEADER_OR_FOLLOWER);
        }
        let producers = hosted.producers.borrow();
        for (position, header) in headers.iter().enumerate() {
            if header.producer_id < 0 {
                continue;
            }
            let previous = position
                .checked_sub(1)
                .map(|p| &headers[p])
                .filter(|p| p.producer_id == header.producer_id);
            if let Some(previous) = previous {
                // Within one call a producer's batches follow each other.
                let next =
                    i64::from(previous.base_sequence) + i64::from(previous.last_offset_delta) + 1;
                let next = i32::try_from(next % (i64::from(i32::MAX) + 1)).unwrap_or(0);
                if header.producer_epoch != previous.producer_epoch || header.base_sequence != next
                {
                    return Err(OUT_OF_ORDER_SEQUENCE_NUMBER);
                }
                continue;
            }
            match producers.check(header, term) {
                Verdict::Propose => {}
                Verdict::Refuse(code) => return Err(code),
                Verdict::Duplicate(at) if headers.len() == 1 => return Ok(Some(at)),
                Verdict::Duplicate(_) => return Err(DUPLICATE_SEQUENCE_NUMBER),
            }
        }
        Ok(None)
    }

    /// A retried batch: answered with the original's offsets once the original's acks hold.
    fn answer_duplicate(
        &self,
        group_id: u64,
        hosted: &Hosted,
        at: BatchAt,
        acks: i16,
    ) -> PendingReplicaProduce {
        tracing::debug!(
            group_id,
            ?at,
            "duplicate batch answered from the producer state"
        );
        match at {
            BatchAt::Committed { base_offset } => {
                PendingReplicaProduce(Pending::Done(ReplicaProduce {
                    error_code: codes::NONE,
                    base_offset,
                    log_start_offset: hosted.log.log_start_offset(),
                }))
            }
            BatchAt::Proposed { index, term } => {
                self.wait_for(group_id, hosted, index, term, acks.max(1), 0)
            }
        }
    }

    /// Reads of a hosted partition are served by its leader only.
    fn leader_hosted(&self, tp: &TopicPartition) -> Result<(u64, std::rc::Rc<Hosted>), i16> {
        let (group_id, hosted) = self.hosted(tp).ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        self.leading_term(group_id)
            .ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        Ok((group_id, hosted))
    }

    /// Whole batches from `offset` below the high watermark, about `max_bytes`;
    /// `read_committed` (`isolation`): below the last stable offset, with the aborted
    /// transactions overlapping them.
    pub async fn fetch(
        &self,
        tp: &TopicPartition,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> ReplicaFetch {
        let hosted = match self.leader_hosted(tp) {
            Ok((_, hosted)) => hosted,
            Err(error_code) => {
                return ReplicaFetch {
                    error_code,
                    high_watermark: -1,
                    last_stable_offset: -1,
                    log_start_offset: -1,
                    batches: Vec::new(),
                    aborted_transactions: Vec::new(),
                }
            }
        };
        // Taken together, before the read: the stable offset never goes back, so batches
        // read below it stay stable whatever commits meanwhile.
        let high_watermark = hosted.committed_end.get();
        let last_stable_offset = last_stable_offset(&hosted);
        let readable_end = match isolation {
            Isolation::ReadCommitted => last_stable_offset,
            Isolation::ReadUncommitted => high_watermark,
        };
        let mut outcome = ReplicaFetch {
            error_code: codes::NONE,
            high_watermark,
            last_stable_offset,
            log_start_offset: hosted.log.log_start_offset(),
            batches: Vec::new(),
            aborted_transactions: Vec::new(),
        };
        if max_bytes == 0 || offset >= readable_end {
            if offset > hosted.log.log_end_offset() || offset < outcome.log_start_offset {
                outcome.error_code = codes::OFFSET_OUT_OF_RANGE;
            }
            return outcome;
        }
        match hosted.log.read(offset, max_bytes).await {
            Ok(batches) => {
                // Committed entries are whole batches: one that starts below the high
                // watermark ends below it. The last stable offset is a batch's first
                // offset (an open transaction's first batch) or the high watermark.
                outcome.batches = batches
                    .into_iter()
                    .take_while(|batch| {
                        crate::storage::batch::BatchHeader::parse(batch)
                            .is_some_and(|header| header.base_offset < readable_end)
                    })
                    .collect();
                let upper = outcome
                    .batches
                    .last()
                    .and_then(|batch| BatchHeader::parse(batch))
                    .map(|header| header.last_offset() + 1);
                if let (Isolation::ReadCommitted, Some(upper)) = (isolation, upper) {
                    outcome.aborted_transactions =
                        hosted.txns.borrow().aborted_overlapping(offset, upper);
                }
                if outcome.batches.is_empty() {
                    // The offset is below the high watermark, so a batch holds it: an empty
                    // answer has the consumer ask again and again without progress.
                    tracing::warn!(
                        partition = %tp,
                        offset,
                        max_bytes,
                        readable_end,
                        written_offset = hosted.log.high_watermark(),
                        log_end_offset = hosted.log.log_end_offset(),
                        "a replica read below the high watermark found no batch"
                    );
                }
            }
            Err(ReadError::OffsetOutOfRange { .. }) => {
                outcome.error_code = codes::OFFSET_OUT_OF_RANGE;
            }
            Err(error) => {
                tracing::error!(partition = %tp, offset, %error, "replica read failed");
                outcome.error_code = codes::KAFKA_STORAGE_ERROR;
            }
        }
        outcome
    }

    /// Kafka `OffsetForLeaderEpoch` on a hosted partition, answered by its leader only (as
    /// Kafka answers consumers): the leader-epoch cache of its log, whose epochs are the Raft
    /// terms (`storage::epochs`; the current term ends at the log end, as Kafka's leader
    /// answers with its log end offset).
    pub fn end_offset_for_leader_epoch(
        &self,
        tp: &TopicPartition,
        leader_epoch: i32,
    ) -> Result<(i32, i64), i16> {
        let (_, hosted) = self.leader_hosted(tp)?;
        Ok(hosted.log.end_offset_for_leader_epoch(leader_epoch))
    }

    /// Kafka `DescribeProducers` on a hosted partition, answered by its leader only (as
    /// Kafka does): the idempotent producers its sequence checks know.
    pub fn describe_producers(
        &self,
        tp: &TopicPartition,
    ) -> Result<Vec<crate::producer_state::ProducerSummary>, i16> {
        let (group_id, hosted) = self.hosted(tp).ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        let term = self
            .leading_term(group_id)
            .ok_or(codes::NOT_LEADER_OR_FOLLOWER)?;
        let txns = hosted.txns.borrow();
        let described = hosted
            .producers
            .borrow()
            .describe(term, |producer_id| txns.open_transaction(producer_id));
        Ok(described)
    }

    /// The bytes of a hosted partition's log on disk, leader or follower (`DescribeLogDirs`
    /// lists every replica a broker holds, as Kafka's does).
    pub fn log_size_bytes(&self, tp: &TopicPartition) -> Option<u64> {
        self.hosted(tp).map(|(_, hosted)| hosted.log.size_bytes())
    }

    /// Resolves when the high watermark (`read_committed`: the last stable offset) passes
    /// `offset`, the group closes, or this replica does not host it (the fetch then reads
    /// its error). Race it with a timer. Both move only when entries are applied, each of
    /// which notifies `committed`.
    pub async fn wait_for_committed(&self, tp: &TopicPartition, offset: i64, isolation: Isolation) {
        loop {
            let Some((_, hosted)) = self.hosted(tp) else {
                return;
            };
            let notified = hosted.committed.wait();
            let readable_end = match isolation {
                Isolation::ReadCommitted => last_stable_offset(&hosted),
                Isolation::ReadUncommitted => hosted.committed_end.get(),
            };
            if readable_end > offset || hosted.closed.get() {
                return;
            }
            notified.await;
        }
    }

    /// Kafka `ListOffsets` on a hosted partition: -2/-4 earliest, -1 latest (the high
    /// watermark; `read_committed`: the last stable offset), -3 the max timestamp, else the
    /// first offset at or after the time; only committed offsets are answered
    /// (`read_committed`: only stable ones).
    pub async fn list_offset(
        &self,
        tp: &TopicPartition,
        timestamp_ms: i64,
        isolation: Isolation,
    ) -> ReplicaOffset {
        let answer = |error_code, offset, timestamp_ms| ReplicaOffset {
            error_code,
            offset,
            timestamp_ms,
        };
        let (group_id, hosted) = match self.leader_hosted(tp) {
            Ok(found) => found,
            Err(code) => return answer(code, -1, -1),
        };
        let high_watermark = match isolation {
            Isolation::ReadCommitted => last_stable_offset(&hosted),
            Isolation::ReadUncommitted => hosted.committed_end.get(),
        };
        let found = match timestamp_ms {
            -2 | -4 => return answer(codes::NONE, hosted.log.log_start_offset(), -1),
            -1 if !self.committed_in_term(group_id) => return answer(OFFSET_NOT_AVAILABLE, -1, -1),
            -1 => return answer(codes::NONE, high_watermark, -1),
            -3 => hosted
                .log
                .max_timestamp()
                .await
                .map(|found| found.map(|(ts, offset)| (offset, ts))),
            timestamp_ms if timestamp_ms >= 0 => {
                hosted.log.offset_for_timestamp(timestamp_ms).await
            }
            _ => return answer(codes::UNSUPPORTED_VERSION, -1, -1),
        };
        match found {
            Ok(Some((offset, ts))) if offset < high_watermark => answer(codes::NONE, offset, ts),
            Ok(_) => answer(codes::NONE, -1, -1),
            Err(error) => {
                tracing::error!(partition = %tp, %error, "time index lookup failed");
                answer(codes::KAFKA_STORAGE_ERROR, -1, -1)
            }
        }
    }

    /// This replica leads the group and has committed an entry of its term.
    pub(crate) fn committed_in_term(&self, group_id: u64) -> bool {
        let driver = self.driver.borrow();
        driver.raft(group_id).is_some_and(|raft| {
            raft.state == StateRole::Leader
                && raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
        })
    }
}

impl PendingReplicaProduce {
    /// The error code of a call refused before anything was proposed.
    pub fn refusal(&self) -> Option<i16> {
        match &self.0 {
            Pending::Done(outcome) if outcome.error_code != codes::NONE => Some(outcome.error_code),
            _ => None,
        }
    }

    /// Stage two: waits for the call's acks (see the module docs).
    pub async fn wait(self) -> ReplicaProduce {
        let (answered, index, term, span_before_last, log) = match self.0 {
            Pending::Done(outcome) => return outcome,
            Pending::Waiting {
                answered,
                index,
                term,
                span_before_last,
                log,
            } => (answered, index, term, span_before_last, log),
        };
        let failed = |error_code| ReplicaProduce {
            error_code,
            base_offset: -1,
            log_start_offset: -1,
        };
        let timer = std::pin::pin!(glommio::timer::sleep(PRODUCE_ACKS_TIMEOUT));
        let resolution = match select(answered, timer).await {
            Either::Left((Ok(resolution), _)) => resolution,
            // The manager dropped the call (stopped): not acknowledged.
            Either::Left((Err(_), _)) => Err(codes::NOT_LEADER_OR_FOLLOWER),
            Either::Right(_) => Err(codes::REQUEST_TIMED_OUT),
        };
        let last_base = match resolution {
            Ok(Some(base)) => base,
            Ok(None) => match stamped_base_offset(&log, index, term).await {
                Ok(base) => base,
                Err(code) => return failed(code),
            },
            Err(code) => return failed(code),
        };
        ReplicaProduce {
            error_code: codes::NONE,
            base_offset: last_base - span_before_last,
            log_start_offset: log.log_start_offset(),
        }
    }
}

/// The group's last stable offset: its open transactions' first offset under the high
/// watermark, at least the log start (records retention removed hold no reader back).
pub(crate) fn last_stable_offset(hosted: &Hosted) -> i64 {
    hosted
        .txns
        .borrow()
        .last_stable_offset(hosted.committed_end.get(), hosted.log.log_start_offset())
}

impl ReplicaManager {
    /// Whether `headers` would open a transaction on `hosted` while the shard's replicated
    /// partitions already hold `open_txns_max` open ones (committed state;
    /// counted only when one would open, as the plain partitions' bound is). The plain
    /// partitions of the shard are bounded apart by the same number, so a shard holds at
    /// most twice it.
    fn would_pass_shard_txn_bound(&self, hosted: &Hosted, headers: &[BatchHeader]) -> bool {
        let opens = {
            let txns = hosted.txns.borrow();
            headers.iter().any(|header| {
                header.is_transactional() && txns.open_transaction(header.producer_id).is_none()
            })
        };
        opens && self.open_txns() >= self.open_txns_max.get()
    }

    /// Open transactions over the shard's hosted partitions.
    fn open_txns(&self) -> usize {
        self.groups
            .borrow()
            .values()
            .map(|hosted| hosted.txns.borrow().ongoing_count())
            .sum()
    }
}

/// The transaction checks of a call's batches at the leader, against the committed
/// transactions (`txns`): a plain batch of a producer with a transaction open is
/// `INVALID_TXN_STATE`, a batch that would open one past the bounds `POLICY_VIOLATION`.
/// A transaction this leader proposed and has not committed yet is not seen here: a plain
/// batch its producer sends meanwhile passes (Kafka would refuse it; a client that keeps
/// to the protocol never sends one).
fn check_transactions(hosted: &Hosted, headers: &[BatchHeader]) -> Result<(), i16> {
    let mut txns = hosted.txns.borrow_mut();
    // Aborts whose markers retention removed count no more towards the bound.
    txns.drop_below(hosted.log.log_start_offset());
    headers
        .iter()
        .filter(|header| header.producer_id >= 0)
        .try_for_each(|header| txns.check_data_batch(header))
}

/// The offset the log stamped on the entry at `index`, if it still has `term` there.
async fn stamped_base_offset(
    log: &crate::disk::PartitionLog,
    index: u64,
    term: u64,
) -> Result<i64, i16> {
    let read = log
        .read_entries(index, index + 1, 0)
        .await
        .map_err(|_| codes::KAFKA_STORAGE_ERROR)?;
    match read.first() {
        Some(entry) if u64::try_from(entry.term).ok() == Some(term) => {
            crate::storage::batch::BatchHeader::parse(&entry.batch)
                .map(|header| header.base_offset)
                .ok_or(codes::KAFKA_STORAGE_ERROR)
        }
        // Replaced by a new leader's entry before this was read: not acknowledged.
        _ => Err(codes::NOT_LEADER_OR_FOLLOWER),
    }
}

#[cfg(test)]
#[path = "delete_records_tests.rs"]
mod delete_records_tests;
