//! Consumer threads: one pinned thread per consumer, fetching its partitions directly by
//! offset (no consumer group, so the figures do not depend on group coordination and the
//! bench works against any broker that serves Fetch).
//!
//! End-to-end latency is the fetch response's arrival time minus the intended send time the
//! producer wrote into the record value; records of other runs (another run id) are counted
//! but never timed.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::records::RecordBatchDecoder;
use ringfeed_client::fetch::{fetch_request, fetched_partitions};
use ringfeed_client::FetchFrom;
use ringfeed_protocol::batch::{BatchHeader, WholeBatches, MAGIC_V2};
use uuid::Uuid;

use crate::cli::TIMESTAMP_HEADER_BYTES;
use crate::client::{self, protocol_error, Connection};
use crate::stats::{record_ns, ThreadStats};
use crate::system::{prepare_thread, thread_cpu_time};
use crate::topic::{topic_name, Layout};
use crate::workloads::RunContext;

/// Upper bound of one fetch response, whatever the partition count (Kafka's fetch.max.bytes
/// default is 50 MiB; brokers cap it themselves too).
const FETCH_BYTES_MAX: i32 = 50 << 20;
/// After the last producer ends, an e2e consumer waits at most this long for the records
/// still on their way before it reports what it has.
const E2E_DRAIN_MAX: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ConsumeConfig {
    pub layout: Layout,
    pub fetch_partition_bytes_max: i32,
    pub fetch_wait_ms_max: i32,
    /// Measured messages across all consumers; `None` when time- or offset-bound.
    pub messages: Option<u64>,
    /// Follow the producers of this run (e2e) rather than stop at `end_offsets`.
    pub follow_producers: bool,
}

/// One consumer's partitions and where it starts and (for a bounded read) stops.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub partitions: Vec<i32>,
    pub start_offsets: Vec<i64>,
    /// Stop once every partition reaches its end offset; `None` to read until told to stop.
    pub end_offsets: Option<Vec<i64>>,
    pub cpu: Option<usize>,
}

pub fn spawn(
    config: Arc<ConsumeConfig>,
    spec: ConsumerSpec,
    context: Arc<RunContext>,
) -> JoinHandle<ThreadStats> {
    thread::Builder::new()
        .name("bench-consumer".into())
        .spawn(move || run_consumer(&config, &spec, &context))
        .expect("spawning a thread succeeds")
}

/// Where one partition's reading stands.
struct Cursor {
    partition: i32,
    next_offset: i64,
    end_offset: Option<i64>,
}

fn run_consumer(config: &ConsumeConfig, spec: &ConsumerSpec, context: &RunContext) -> ThreadStats {
    prepare_thread(spec.cpu);
    let started_ns = context.clock.now_ns();
    let mut stats = ThreadStats::new("consumer");
    let mut by_leader: BTreeMap<String, Vec<Cursor>> = BTreeMap::new();
    for (i, &partition) in spec.partitions.iter().enumerate() {
        by_leader
            .entry(config.layout.leaders[partition as usize].clone())
            .or_default()
            .push(Cursor {
                partition,
                next_offset: spec.start_offsets[i],
                end_offset: spec.end_offsets.as_ref().map(|ends| ends[i]),
            });
    }
    if let Err(error) = fetch_loop(config, context, &mut by_leader, &mut stats) {
        stats.error(error.to_string());
        context.abort();
    }
    stats.cpu = thread_cpu_time();
    stats.stopped_ns = context.clock.now_ns();
    stats.wall = Duration::from_nanos(stats.stopped_ns - started_ns);
    stats
}

fn fetch_loop(
    config: &ConsumeConfig,
    context: &RunContext,
    by_leader: &mut BTreeMap<String, Vec<Cursor>>,
    stats: &mut ThreadStats,
) -> io::Result<()> {
    let mut connections = BTreeMap::new();
    for leader in by_leader.keys() {
        connections.insert(
            leader.clone(),
            client::open(leader, config.layout.api_versions)?,
        );
    }
    let mut drain_deadline_ns = None;
    while !should_stop(config, context, by_leader, &mut drain_deadline_ns) {
        for (leader, cursors) in by_leader.iter_mut() {
            let connection = connections.get_mut(leader).expect("opened above");
            fetch_once(config, context, connection, cursors, stats)?;
        }
    }
    Ok(())
}

fn should_stop(
    config: &ConsumeConfig,
    context: &RunContext,
    by_leader: &BTreeMap<String, Vec<Cursor>>,
    drain_deadline_ns: &mut Option<u64>,
) -> bool {
    let now_ns = context.clock.now_ns();
    if context.aborted() || now_ns >= context.deadline_ns {
        return true;
    }
    let counters = &context.counters;
    let consumed = counters.consumed_messages.load(Ordering::Relaxed);
    if config.messages.is_some_and(|limit| consumed >= limit) {
        return true;
    }
    if config.follow_producers {
        if counters.producers_running.load(Ordering::Relaxed) > 0 {
            return false;
        }
        let deadline_ns =
            *drain_deadline_ns.get_or_insert(now_ns + E2E_DRAIN_MAX.as_nanos() as u64);
        return consumed >= counters.produced_messages.load(Ordering::Relaxed)
            || now_ns >= deadline_ns;
    }
    if context.measure_end_ns.is_some_and(|end| now_ns >= end) {
        return true;
    }
    by_leader
        .values()
        .flatten()
        .all(|c| c.end_offset.is_some_and(|end| c.next_offset >= end))
}

/// One Fetch round trip to one leader for this consumer's partitions on it.
fn fetch_once(
    config: &ConsumeConfig,
    context: &RunContext,
    connection: &mut Connection,
    cursors: &mut [Cursor],
    stats: &mut ThreadStats,
) -> io::Result<()> {
    let version = client::version(&connection.versions, ApiKey::Fetch)?;
    let unfinished = |c: &&Cursor| c.end_offset.is_none_or(|end| c.next_offset < end);
    if !cursors.iter().any(|c| unfinished(&c)) {
        return Ok(());
    }
    let topic = topic_name(&config.layout.topic);
    let from = FetchFrom {
        topic: &topic,
        // Fetch stops at v12 for the bench: topics are named.
        topic_id: Uuid::nil(),
        max_wait_ms: config.fetch_wait_ms_max,
        min_bytes: 1,
        max_bytes: FETCH_BYTES_MAX,
        partition_max_bytes: config.fetch_partition_bytes_max,
    };
    let positions = cursors
        .iter()
        .filter(unfinished)
        .map(|c| (c.partition, c.next_offset));
    let request = fetch_request(&from, positions);
    let correlation_id = connection.next_correlation_id();
    connection
        .writer()
        .send(&request, version, correlation_id)?;
    let frame = connection.reader().recv_frame()?;
    let received_ns = context.clock.now_ns();
    let response: FetchResponse =
        connection
            .reader()
            .decode_response::<FetchRequest>(frame, version, correlation_id)?;
    if response.error_code != 0 {
        return Err(protocol_error("Fetch", response.error_code));
    }
    for data in fetched_partitions(response)? {
        if data.error_code != 0 {
            return Err(protocol_error(
                &format!("Fetch partition {}", data.partition_index),
                data.error_code,
            ));
        }
        let Some(cursor) = cursors
            .iter_mut()
            .find(|c| c.partition == data.partition_index)
        else {
            continue;
        };
        if let Some(records) = data.records {
            cursor.next_offset =
                take_records(records, cursor.next_offset, received_ns, context, stats)?;
        }
    }
    Ok(())
}

/// Decodes every whole batch in `records` (a fetch may end in a partial batch, which is read
/// again next time), times the records at or after `fetch_offset`, and returns the next offset.
fn take_records(
    records: Bytes,
    fetch_offset: i64,
    received_ns: u64,
    context: &RunContext,
    stats: &mut ThreadStats,
) -> io::Result<i64> {
    let codec_start_ns = context.clock.now_ns();
    let mut next_offset = fetch_offset;
    let (mut measured, mut bytes) = (0_u64, 0_u64);
    // A length field that cannot be a batch's ends the read here, as a partial batch does:
    // the next fetch asks again from `next_offset`.
    for mut batch in WholeBatches::new(records).map_while(Result::ok) {
        let header = BatchHeader::parse(&batch).expect("a whole batch holds its header");
        if header.magic != MAGIC_V2 {
            return Err(protocol_error("Fetch", "record batch magic is not 2"));
        }
        let (base_offset, last_offset_delta) = (header.base_offset, header.last_offset_delta);
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| protocol_error("record batch", e))?;
        for record in set
            .records
            .iter()
            .filter(|r| r.offset >= fetch_offset && !r.control)
        {
            let value = record.value.as_deref().unwrap_or_default();
            if time_record(value, received_ns, context, stats) {
                measured += 1;
                bytes += value.len() as u64;
            } else {
                stats.unmeasured_messages += 1;
            }
        }
        next_offset = next_offset.max(base_offset + i64::from(last_offset_delta) + 1);
    }
    stats.codec_ns += context.clock.now_ns() - codec_start_ns;
    stats.messages += measured;
    stats.bytes += bytes;
    if measured > 0 {
        stats.last_measured_ns = received_ns;
    }
    context.counters.add_consumed(measured, bytes);
    Ok(next_offset)
}

/// Records the end-to-end latency of one record of this run; returns whether it is measured.
fn time_record(
    value: &[u8],
    received_ns: u64,
    context: &RunContext,
    stats: &mut ThreadStats,
) -> bool {
    if value.len() >= TIMESTAMP_HEADER_BYTES {
        let intended_ns = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
        let run_id = u64::from_le_bytes(value[8..16].try_into().expect("8 bytes"));
        if run_id == context.run_id {
            if intended_ns < context.measure_start_ns {
                return false;
            }
            record_ns(
                &mut stats.end_to_end,
                received_ns.saturating_sub(intended_ns),
            );
            return true;
        }
    }
    // Another run's record (a consume-only read): measured by when it arrived.
    received_ns >= context.measure_start_ns
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(base_offset: i64, values: &[Vec<u8>]) -> BytesMut {
        #[allow(clippy::default_trait_access)]
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, value)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base_offset + i as i64,
                sequence: i as i32 - 1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(value.clone())),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut out, &records, &options).unwrap();
        out
    }

    fn value(intended_ns: u64, run_id: u64) -> Vec<u8> {
        let mut value = intended_ns.to_le_bytes().to_vec();
        value.extend_from_slice(&run_id.to_le_bytes());
        value.extend_from_slice(&[7; 84]);
        value
    }

    #[test]
    fn whole_batches_are_timed_and_a_partial_one_is_left_for_the_next_fetch() {
        let context = RunContext::new(
            crate::system::Clock::start(),
            Duration::ZERO,
            None,
            Duration::from_secs(60),
        );
        let (run, other_run) = (context.run_id, context.run_id ^ 1);
        let sent_ns = context.measure_start_ns;
        let mut fetched = batch(
            10,
            &[
                value(sent_ns, run),
                value(sent_ns, run),
                value(sent_ns, other_run),
            ],
        );
        fetched.extend_from_slice(&batch(13, &[value(sent_ns, run)]));
        let partial = batch(14, &[value(sent_ns, run)]);
        fetched.extend_from_slice(&partial[..partial.len() - 3]);
        let mut stats = ThreadStats::new("consumer");
        // Offset 11 was asked for: the record at 10 comes with its batch but is not counted.
        let next =
            take_records(fetched.freeze(), 11, sent_ns + 1_000, &context, &mut stats).unwrap();
        assert_eq!(next, 14, "the partial batch at 14 is fetched again");
        assert_eq!(stats.messages, 3, "offsets 11, 12 (another run's) and 13");
        assert_eq!(
            stats.end_to_end.len(),
            2,
            "only this run's records are timed"
        );
        assert_eq!(stats.end_to_end.max(), 1_000);
        assert_eq!(stats.bytes, 3 * 100);
    }
}
