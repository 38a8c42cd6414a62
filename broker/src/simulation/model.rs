//! What the simulated clients have been told, and the invariants every answer and every
//! restart is checked against. A violation panics with the seed (`seed=N`), so the failing
//! run replays with `RINGFEED_SIM_SEED=N`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use crate::storage::batch::{BatchHeader, BATCH_HEADER_BYTES};

/// A partition, by topic name and index.
pub type PartitionKey = (String, i32);

/// A batch acknowledged at acks=all: it must be read back at `base_offset` with these
/// records, across every later power cut.
#[derive(Clone, Debug)]
struct AckedBatch {
    record_count: i32,
    /// The batch after its header: the records exactly as the producer sent them (the
    /// broker rewrites only the base offset, in the header).
    records: Bytes,
}

#[derive(Default)]
struct PartitionModel {
    acked: BTreeMap<i64, AckedBatch>,
    /// One past the last acknowledged offset: the high watermark may never be below it.
    acked_end: i64,
}

/// A group's committed offset for one partition: the last acknowledged commit, and the
/// commits sent after it that were not acknowledged (no answer before a crash, or an error
/// such as `COORDINATOR_NOT_AVAILABLE` after the append, whose fdatasync failed): any of
/// them may have landed (a process crash keeps what was written but not synced).
#[derive(Default)]
struct CommitModel {
    acked: Option<i64>,
    unacknowledged: BTreeSet<i64>,
}

/// What the admin client knows of a scratch topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicFate {
    /// Its last create or delete was acknowledged: it exists (`true`) or not.
    Known(bool),
    /// A create or delete was sent and not answered: either is fine.
    Unknown,
}

/// What a transactional producer was told of one of its transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnOutcome {
    /// Not ended yet: never visible, unless its commit was sent (`commit_sent`).
    Open,
    /// `EndTxn(commit)` answered NONE: every batch becomes visible to `read_committed` readers.
    Committed,
    /// `EndTxn(abort)` answered NONE, or given up before a commit was sent: never visible.
    NeverCommitted,
    /// Given up after sending a commit that was not answered: visible whole or not at all.
    Unknown,
}

/// One transaction of a transactional producer.
#[derive(Clone, Debug)]
struct TxnModel {
    key: PartitionKey,
    /// Base offsets of its acknowledged batches.
    batches: Vec<i64>,
    /// `EndTxn(commit)` was sent at least once.
    commit_sent: bool,
    /// Its producer stalled past the transaction timeout: the coordinator has aborted it.
    timed_out: bool,
    outcome: TxnOutcome,
}

impl TxnModel {
    /// May it be visible? `Some(true)`: it must be once stable; `Some(false)`: never.
    fn visibility(&self) -> Option<bool> {
        match self.outcome {
            TxnOutcome::Committed => Some(true),
            TxnOutcome::NeverCommitted => Some(false),
            TxnOutcome::Open if !self.commit_sent => Some(false),
            TxnOutcome::Open | TxnOutcome::Unknown => None,
        }
    }
}

/// The model. Owned by the harness, shared with the clients of one executor.
pub struct Model {
    seed: u64,
    life: u32,
    partitions: BTreeMap<PartitionKey, PartitionModel>,
    commits: BTreeMap<(String, PartitionKey), CommitModel>,
    pub scratch_topics: BTreeMap<String, TopicFate>,
    /// Transactions by (client index, the client's number for it).
    txns: BTreeMap<(u16, u64), TxnModel>,
    /// Digest of every answer the clients saw, in order: two runs of one seed must agree.
    trace: DefaultHasher,
    print_trace: bool,
    pub trace_events: u64,
    /// Counters for the summary.
    pub acked_batches: u64,
    pub acked_commits: u64,
    pub idempotent_retries_checked: u64,
    pub full_scans: u64,
    pub committed_txns: u64,
    pub aborted_txns: u64,
    pub txn_timeouts: u64,
    pub read_committed_scans: u64,
}

impl Model {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            life: 0,
            partitions: BTreeMap::new(),
            commits: BTreeMap::new(),
            scratch_topics: BTreeMap::new(),
            txns: BTreeMap::new(),
            trace: DefaultHasher::new(),
            print_trace: std::env::var_os("RINGFEED_SIM_TRACE").is_some(),
            trace_events: 0,
            acked_batches: 0,
            acked_commits: 0,
            idempotent_retries_checked: 0,
            full_scans: 0,
            committed_txns: 0,
            aborted_txns: 0,
            txn_timeouts: 0,
            read_committed_scans: 0,
        }
    }

    /// Reports a broken invariant: the test fails with the seed that replays it.
    #[track_caller]
    pub fn violation(&self, what: &str) -> ! {
        panic!(
            "seed={} life={}: {what} (replay: RINGFEED_SIM_SEED={})",
            self.seed, self.life, self.seed
        )
    }

    pub fn start_life(&mut self, life: u32) {
        self.life = life;
    }

    /// Adds one observation to the run's digest; printed with `RINGFEED_SIM_TRACE=1`.
    pub fn trace(&mut self, event: impl Hash + std::fmt::Debug) {
        if self.print_trace {
            eprintln!("seed={} life={} {event:?}", self.seed, self.life);
        }
        event.hash(&mut self.trace);
        self.trace_events += 1;
    }

    pub fn trace_digest(&self) -> u64 {
        self.trace.finish()
    }

    pub fn track_partition(&mut self, key: PartitionKey) {
        self.partitions.entry(key).or_default();
    }

    pub fn partitions(&self) -> Vec<PartitionKey> {
        self.partitions.keys().cloned().collect()
    }

    /// One past the last acknowledged offset of `key`.
    pub fn acked_end(&self, key: &PartitionKey) -> i64 {
        self.partitions.get(key).map_or(0, |p| p.acked_end)
    }

    /// An acks=all produce of `batch` was answered `NONE` at `base_offset`. The offsets it
    /// names must not hold another acknowledged batch (offsets are never reused); the same
    /// batch at the same offset is an idempotent retry answered with its original offset.
    pub fn produce_acked(&mut self, key: &PartitionKey, base_offset: i64, batch: &Bytes) {
        let Some(header) = BatchHeader::parse(batch) else {
            self.violation("the simulation sent an unparseable batch");
        };
        let acked = AckedBatch {
            record_count: header.record_count,
            records: batch.slice(BATCH_HEADER_BYTES..),
        };
        let end = base_offset + i64::from(header.record_count);
        if base_offset < 0 {
            self.violation(&format!("{key:?}: acknowledged at offset {base_offset}"));
        }
        let partition = self.partitions.entry(key.clone()).or_default();
        if let Some(same) = partition.acked.get(&base_offset) {
            if same.records == acked.records {
                return; // an idempotent retry answered with its original offset
            }
        }
        let overlapping = partition
            .acked
            .range(..end)
            .next_back()
            .filter(|(base, batch)| **base + i64::from(batch.record_count) > base_offset)
            .map(|(base, _)| *base);
        if let Some(other) = overlapping {
            self.violation(&format!(
                "{key:?}: offsets {base_offset}..{end} acknowledged again; the batch acknowledged at {other} holds them (an offset reused)"
            ));
        }
        partition.acked.insert(base_offset, acked);
        partition.acked_end = partition.acked_end.max(end);
        self.acked_batches += 1;
    }

    /// An acknowledged batch's place, for an idempotent retry's answer.
    pub fn acked_base_of(&self, key: &PartitionKey, batch: &Bytes) -> Option<i64> {
        let records = batch.slice(BATCH_HEADER_BYTES..);
        self.partitions
            .get(key)?
            .acked
            .iter()
            .find(|(_, acked)| acked.records == records)
            .map(|(base, _)| *base)
    }

    /// A high watermark (Fetch, `ListOffsets` latest) seen by a request sent when
    /// `acked_end_at_send` was acknowledged: it may not be below it.
    pub fn check_high_watermark(
        &self,
        key: &PartitionKey,
        high_watermark: i64,
        acked_end_at_send: i64,
        what: &str,
    ) {
        if high_watermark < acked_end_at_send {
            self.violation(&format!(
                "{key:?}: {what} high watermark {high_watermark} below the acknowledged end {acked_end_at_send}"
            ));
        }
    }

    /// Checks fetched batches of `key` read from `fetch_offset`: offsets dense, every
    /// acknowledged batch in their range present at its offset with its bytes. With
    /// `whole_log`, the batches are the log from its start to the high watermark, and each
    /// payload must appear once (no retry appended twice).
    pub fn check_fetched(
        &mut self,
        key: &PartitionKey,
        fetch_offset: i64,
        batches: &[Bytes],
        whole_log: bool,
    ) {
        let mut expected_next: Option<i64> = None;
        let mut payloads: HashMap<u64, i64> = HashMap::new();
        let mut covered = (i64::MAX, i64::MIN);
        for batch in batches {
            let Some(header) = BatchHeader::parse(batch) else {
                self.violation(&format!("{key:?}: unparseable batch fetched"));
            };
            let base = header.base_offset;
            let last = header.last_offset();
            match expected_next {
                None if base > fetch_offset => self.violation(&format!(
                    "{key:?}: fetch from {fetch_offset} starts at {base} (a gap)"
                )),
                Some(next) if base != next => self.violation(&format!(
                    "{key:?}: batch at {base} follows one ending at {} (offsets not dense)",
                    next - 1
                )),
                _ => {}
            }
            expected_next = Some(last + 1);
            covered = (covered.0.min(base), covered.1.max(last));
            let records = batch.slice(BATCH_HEADER_BYTES.min(batch.len())..);
            // Transaction markers repeat their records (the same control record each time).
            if whole_log && !header.is_control() {
                let mut hasher = DefaultHasher::new();
                records.hash(&mut hasher);
                if let Some(first) = payloads.insert(hasher.finish(), base) {
                    self.violation(&format!(
                        "{key:?}: the batch at {base} repeats the one at {first} (appended twice)"
                    ));
                }
            }
            if let Some(acked) = self.partitions.get(key).and_then(|p| p.acked.get(&base)) {
                if acked.record_count != header.record_count || acked.records != records {
                    self.violation(&format!(
                        "{key:?}: the batch read at {base} is not the one acknowledged there"
                    ));
                }
            }
        }
        let Some(partition) = self.partitions.get(key) else {
            return;
        };
        if batches.is_empty() && !whole_log {
            return;
        }
        let (from, to) = if whole_log { (0, i64::MAX) } else { covered };
        let missing = partition.acked.range(from..=to).find(|(base, _)| {
            !batches
                .iter()
                .any(|batch| BatchHeader::parse(batch).is_some_and(|h| h.base_offset == **base))
        });
        if let Some((base, _)) = missing {
            self.violation(&format!(
                "{key:?}: the batch acknowledged at {base} is not in the log read {from}..={to}"
            ));
        }
        if whole_log {
            self.full_scans += 1;
        }
    }

    pub fn txn_begun(&mut self, client: u16, number: u64, key: &PartitionKey) {
        self.txns.insert(
            (client, number),
            TxnModel {
                key: key.clone(),
                batches: Vec::new(),
                commit_sent: false,
                timed_out: false,
                outcome: TxnOutcome::Open,
            },
        );
    }

    fn txn_mut(&mut self, client: u16, number: u64) -> &mut TxnModel {
        if !self.txns.contains_key(&(client, number)) {
            self.violation(&format!("transaction {client}/{number} was never begun"));
        }
        self.txns.get_mut(&(client, number)).expect("checked above")
    }

    /// Acknowledged batches of the transaction so far.
    pub fn txn_batches(&self, client: u16, number: u64) -> usize {
        self.txns
            .get(&(client, number))
            .map_or(0, |txn| txn.batches.len())
    }

    pub fn txn_batch_acked(&mut self, client: u16, number: u64, base_offset: i64) {
        self.txn_mut(client, number).batches.push(base_offset);
    }

    pub fn txn_timed_out(&mut self, client: u16, number: u64) {
        self.txn_mut(client, number).timed_out = true;
        self.txn_timeouts += 1;
    }

    /// `EndTxn` is about to be sent.
    pub fn txn_ending(&mut self, client: u16, number: u64, commit: bool) {
        self.txn_mut(client, number).commit_sent |= commit;
    }

    /// `EndTxn` was answered NONE.
    pub fn txn_ended(&mut self, client: u16, number: u64, commit: bool) {
        if self.txn_mut(client, number).timed_out {
            self.violation(&format!(
                "transaction {client}/{number}: EndTxn (commit {commit}) answered NONE after the transaction timed out: the coordinator did not abort it"
            ));
        }
        let txn = self.txn_mut(client, number);
        txn.outcome = if commit {
            TxnOutcome::Committed
        } else {
            TxnOutcome::NeverCommitted
        };
        if commit {
            self.committed_txns += 1;
        } else {
            self.aborted_txns += 1;
        }
    }

    /// The producer gave the transaction up (an error, or a new life): the coordinator ends
    /// it, completing a commit it decided and aborting anything else.
    pub fn txn_abandoned(&mut self, client: u16, number: u64) {
        let txn = self.txn_mut(client, number);
        if txn.outcome == TxnOutcome::Open {
            txn.outcome = if txn.commit_sent {
                TxnOutcome::Unknown
            } else {
                TxnOutcome::NeverCommitted
            };
        }
    }

    /// Checks what a `read_committed` reader of `key` sees of the log below `covered_end`
    /// (every batch it was handed, aborted ones filtered out as a Kafka client filters them:
    /// `visible` are the base offsets of the transactional data batches it keeps): no
    /// aborted or undecided transaction's batch, no transaction in part, every committed
    /// transaction read whole once it is below `covered_end`, and no transactional batch
    /// that no transaction acknowledged.
    pub fn check_read_committed(
        &mut self,
        key: &PartitionKey,
        covered_end: i64,
        visible: &BTreeSet<i64>,
    ) {
        let mut attributed = BTreeSet::new();
        for ((client, number), txn) in self.txns.iter().filter(|(_, txn)| &txn.key == key) {
            let seen: Vec<i64> = txn
                .batches
                .iter()
                .copied()
                .filter(|base| visible.contains(base))
                .collect();
            attributed.extend(seen.iter().copied());
            let below = txn.batches.iter().all(|base| *base < covered_end);
            let name = format!("{key:?}: transaction {client}/{number} ({:?})", txn.outcome);
            match txn.visibility() {
                Some(false) if !seen.is_empty() => {
                    self.violation(&format!("{name}: read_committed sees its batches {seen:?}"))
                }
                Some(true) if below && seen.len() != txn.batches.len() => self.violation(&format!(
                    "{name}: committed, below {covered_end}, yet only {seen:?} of {:?} read",
                    txn.batches
                )),
                None if below && !seen.is_empty() && seen.len() != txn.batches.len() => {
                    self.violation(&format!("{name}: torn: {seen:?} of {:?} read", txn.batches))
                }
                _ => {}
            }
        }
        if let Some(stray) = visible.difference(&attributed).next() {
            self.violation(&format!(
                "{key:?}: read_committed sees a transactional batch at {stray} that no committed transaction acknowledged"
            ));
        }
        self.read_committed_scans += 1;
    }

    pub fn commit_sent(&mut self, group: &str, key: &PartitionKey, offset: i64) {
        self.commits
            .entry((group.to_string(), key.clone()))
            .or_default()
            .unacknowledged
            .insert(offset);
    }

    pub fn commit_acked(&mut self, group: &str, key: &PartitionKey, offset: i64) {
        let commit = self
            .commits
            .entry((group.to_string(), key.clone()))
            .or_default();
        commit.acked = Some(offset);
        commit.unacknowledged.clear();
        self.acked_commits += 1;
    }

    /// `OffsetFetch` answered `committed` (-1: none): the last acknowledged commit, or one
    /// sent after it and not acknowledged.
    pub fn check_committed(&self, group: &str, key: &PartitionKey, committed: i64) {
        let Some(commit) = self.commits.get(&(group.to_string(), key.clone())) else {
            return;
        };
        let fine =
            commit.acked.unwrap_or(-1) == committed || commit.unacknowledged.contains(&committed);
        if !fine {
            self.violation(&format!(
                "group {group} {key:?}: committed offset {committed}, acknowledged {:?} (unacknowledged {:?})",
                commit.acked, commit.unacknowledged
            ));
        }
    }

    /// Every (group, partition) with a commit sent.
    pub fn commit_keys(&self) -> Vec<(String, PartitionKey)> {
        self.commits.keys().cloned().collect()
    }
}
