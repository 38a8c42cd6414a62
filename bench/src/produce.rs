//! Producer threads. Each producer is one pinned sender thread plus, per broker connection, one
//! acker thread that reads responses (Kafka answers in request order on a connection).
//!
//! Every message has an *intended* send time: the schedule's slot in fixed-rate mode, the
//! moment it was generated otherwise. Publish latency is acknowledgement time minus intended
//! time, so a broker stall that delays the schedule is charged to every message it delayed
//! (coordinated omission corrected, as wrk2 and OMB do). The sender's own lateness against
//! the schedule is kept apart as `send_delay` so a slow client shows up as such.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use ringfeed_protocol::batch::BATCH_HEADER_BYTES;

use crate::cli::TIMESTAMP_HEADER_BYTES;
use ringfeed_client::produce::{encode_produce, partition_error_code};
use ringfeed_client::ProduceTo;
use uuid::Uuid;

use crate::client::{self, FrameReader, FrameWriter};
use crate::stats::{record_ns, ThreadStats};
use crate::system::{prepare_thread, thread_cpu_time};
use crate::topic::{topic_name, Layout};
use crate::workloads::RunContext;

/// The most a record adds around its value when it has no key and no headers (length,
/// attributes, timestamp and offset deltas, key and value lengths, header count, all
/// varints). A batch is full when its worst-case encoded size (the v2 batch header plus this
/// per record) would pass `--batch-size`, so a 1 MiB batch stays under the broker's
/// 1 MiB + 12 `message.max.bytes`.
const RECORD_OVERHEAD_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 1 + 5 + 1;
/// How long the broker may take to make a produce durable before answering with an error.
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

/// What every producer of a run does; one per run, shared.
#[derive(Clone, Debug)]
pub struct ProduceConfig {
    pub layout: Layout,
    pub message_size_bytes: usize,
    pub batch_size_bytes: usize,
    pub linger: Duration,
    pub compression: Compression,
    pub acks: i16,
    pub max_in_flight: usize,
}

/// One producer's share of the work.
#[derive(Clone, Debug)]
pub struct ProducerSpec {
    /// Partitions written in turn, one whole batch each (Kafka's sticky partitioner).
    pub partitions: Vec<i32>,
    /// Measured messages to send; `None` when the run is time-bound.
    pub messages: Option<u64>,
    /// Messages per second for this producer; `None` for as fast as acknowledged.
    pub rate_msgs_per_s: Option<f64>,
    pub cpu: Option<usize>,
}

/// A message waiting in the batch being built, or sent and awaiting its acknowledgement.
struct InFlight {
    correlation_id: i32,
    /// Intended send times of the measured messages in the request.
    measured_intended_ns: Vec<u64>,
    unmeasured_messages: u64,
    partition: i32,
}

/// The batch being filled for one partition. Its buffers live as long as the producer: a
/// value is written into `values` and split off (no allocation per record), and once the
/// previous request is encoded and dropped, `reserve` reclaims the same memory. Fresh
/// megabyte-sized allocations per batch cost more in page faults than the encoding itself.
struct Batch {
    partition: i32,
    records: Vec<Record>,
    measured_intended_ns: Vec<u64>,
    unmeasured_messages: u64,
    value_bytes: usize,
    first_intended_ns: u64,
    timestamp_ms: i64,
    values: BytesMut,
    encoded: BytesMut,
}

/// A connection's sending half and the queue to its acker.
struct Lane {
    writer: FrameWriter,
    produce_version: i16,
    /// The topic's name, made once: each request shares its bytes.
    topic: TopicName,
    next_correlation_id: i32,
    to_acker: Option<SyncSender<InFlight>>,
    acker: Option<JoinHandle<ThreadStats>>,
    /// Reused for every request on the lane, for the same reason as `Batch::values`.
    frame: BytesMut,
}

pub fn spawn(
    config: Arc<ProduceConfig>,
    spec: ProducerSpec,
    context: Arc<RunContext>,
) -> JoinHandle<Vec<ThreadStats>> {
    thread::Builder::new()
        .name("bench-producer".into())
        .spawn(move || run_producer(&config, &spec, &context))
        .expect("spawning a thread succeeds")
}

fn run_producer(
    config: &ProduceConfig,
    spec: &ProducerSpec,
    context: &RunContext,
) -> Vec<ThreadStats> {
    prepare_thread(spec.cpu);
    let started_ns = context.clock.now_ns();
    let mut stats = ThreadStats::new("producer");
    let mut lanes = BTreeMap::new();
    for &partition in &spec.partitions {
        let leader = &config.layout.leaders[partition as usize];
        if lanes.contains_key(leader) {
            continue;
        }
        match open_lane(leader, config, spec.cpu, context) {
            Ok(lane) => {
                lanes.insert(leader.clone(), lane);
            }
            Err(error) => {
                stats.error(format!("connect {leader}: {error}"));
                context.abort();
            }
        }
    }
    if !context.aborted() {
        send_loop(config, spec, context, &mut lanes, &mut stats);
    }
    let mut all = close_lanes(lanes);
    stats.cpu = thread_cpu_time();
    stats.stopped_ns = context.clock.now_ns();
    stats.wall = Duration::from_nanos(stats.stopped_ns - started_ns);
    all.push(stats);
    all
}

fn open_lane(
    leader: &str,
    config: &ProduceConfig,
    cpu: Option<usize>,
    context: &RunContext,
) -> io::Result<Lane> {
    let connection = client::open(leader, config.layout.api_versions)?;
    let produce_version = client::version(&connection.versions, ApiKey::Produce)?;
    let (writer, reader, _) = connection.split()?;
    let (to_acker, acker) = if config.acks == 0 {
        (None, None)
    } else {
        // The acker holds one request while it waits for its response, so a queue of
        // max_in_flight - 1 keeps exactly max_in_flight requests on the wire.
        let (sender, receiver) = sync_channel(config.max_in_flight - 1);
        let context = AckerContext {
            run: context.clone(),
            message_size_bytes: config.message_size_bytes,
        };
        let acker = thread::Builder::new()
            .name("bench-acker".into())
            .spawn(move || run_acker(reader, &receiver, produce_version, cpu, &context))
            .expect("spawning a thread succeeds");
        (Some(sender), Some(acker))
    };
    Ok(Lane {
        writer,
        produce_version,
        topic: topic_name(&config.layout.topic),
        next_correlation_id: 1,
        to_acker,
        acker,
        frame: BytesMut::with_capacity(config.batch_size_bytes + 1024),
    })
}

fn close_lanes(lanes: BTreeMap<String, Lane>) -> Vec<ThreadStats> {
    let mut stats = Vec::new();
    for (_, mut lane) in lanes {
        drop(lane.to_acker.take()); // the acker drains what is queued, then ends
        if let Some(acker) = lane.acker.take() {
            stats.push(acker.join().expect("acker thread does not panic"));
        }
    }
    stats
}

/// The next message's intended send time, or `None` when the producer is done. `now_ns` is
/// the caller's latest clock reading: one reading per message is enough, and at a million
/// messages a second the clock itself is a measurable share of the client's time.
fn next_intended_ns(
    spec: &ProducerSpec,
    context: &RunContext,
    generated: u64,
    measured: u64,
    start_ns: u64,
    now_ns: u64,
) -> Option<u64> {
    if context.aborted() || spec.messages.is_some_and(|limit| measured >= limit) {
        return None;
    }
    if now_ns >= context.deadline_ns {
        return None;
    }
    let intended_ns = match spec.rate_msgs_per_s {
        Some(rate) => start_ns + (generated as f64 * 1e9 / rate) as u64,
        None => now_ns,
    };
    if context.measure_end_ns.is_some_and(|end| intended_ns >= end) {
        return None;
    }
    Some(intended_ns)
}

fn send_loop(
    config: &ProduceConfig,
    spec: &ProducerSpec,
    context: &RunContext,
    lanes: &mut BTreeMap<String, Lane>,
    stats: &mut ThreadStats,
) {
    let template = payload_template(config.message_size_bytes);
    let linger_ns = config.linger.as_nanos() as u64;
    let record_bytes = config.message_size_bytes + RECORD_OVERHEAD_BYTES_MAX;
    let start_ns = context.clock.now_ns();
    let (mut generated, mut measured) = (0_u64, 0_u64);
    let mut turn = 0_usize;
    let mut batch = Batch::new(spec.partitions[0], config.batch_size_bytes);
    let mut now_ns = start_ns;
    while let Some(intended_ns) =
        next_intended_ns(spec, context, generated, measured, start_ns, now_ns)
    {
        if intended_ns > now_ns {
            let linger_deadline_ns = batch.first_intended_ns + linger_ns;
            if !batch.records.is_empty() && linger_deadline_ns <= intended_ns {
                context.clock.sleep_until_ns(linger_deadline_ns);
                flush(config, context, lanes, &mut batch, stats);
                turn += 1;
                batch.reset(spec.partitions[turn % spec.partitions.len()]);
                now_ns = context.clock.now_ns();
                continue;
            }
            context.clock.sleep_until_ns(intended_ns);
            now_ns = context.clock.now_ns();
        }
        if spec.rate_msgs_per_s.is_some() {
            record_ns(&mut stats.send_delay, now_ns.saturating_sub(intended_ns));
        }
        let is_measured = intended_ns >= context.measure_start_ns;
        batch.push(&template, intended_ns, is_measured, context.run_id);
        let pushed_ns = context.clock.now_ns();
        stats.codec_ns += pushed_ns - now_ns;
        generated += 1;
        measured += u64::from(is_measured);
        let full =
            BATCH_HEADER_BYTES + (batch.records.len() + 1) * record_bytes > config.batch_size_bytes;
        let lingered = pushed_ns >= batch.first_intended_ns + linger_ns;
        let next_is_later = spec
            .rate_msgs_per_s
            .is_some_and(|rate| start_ns + (generated as f64 * 1e9 / rate) as u64 > pushed_ns);
        now_ns = pushed_ns;
        if full || (lingered && next_is_later) {
            flush(config, context, lanes, &mut batch, stats);
            turn += 1;
            batch.reset(spec.partitions[turn % spec.partitions.len()]);
            now_ns = context.clock.now_ns();
        }
    }
    if !batch.records.is_empty() {
        flush(config, context, lanes, &mut batch, stats);
    }
}

/// Random bytes: incompressible, so compression figures are a worst case, never flattered.
fn payload_template(message_size_bytes: usize) -> Bytes {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut payload = BytesMut::with_capacity(message_size_bytes);
    for _ in 0..message_size_bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        payload.put_u8(state as u8);
    }
    payload.freeze()
}

impl Batch {
    fn new(partition: i32, batch_size_bytes: usize) -> Self {
        Self {
            partition,
            records: Vec::new(),
            measured_intended_ns: Vec::new(),
            unmeasured_messages: 0,
            value_bytes: 0,
            first_intended_ns: 0,
            timestamp_ms: 0,
            values: BytesMut::with_capacity(batch_size_bytes),
            encoded: BytesMut::with_capacity(batch_size_bytes),
        }
    }

    /// Empties the batch for `partition`, keeping its buffers.
    fn reset(&mut self, partition: i32) {
        self.partition = partition;
        self.records.clear();
        self.measured_intended_ns.clear();
        self.unmeasured_messages = 0;
        self.value_bytes = 0;
    }

    /// Appends one record whose value starts with its intended send time and the run id.
    fn push(&mut self, template: &Bytes, intended_ns: u64, is_measured: bool, run_id: u64) {
        let mut header = [0_u8; TIMESTAMP_HEADER_BYTES];
        header[..8].copy_from_slice(&intended_ns.to_le_bytes());
        header[8..].copy_from_slice(&run_id.to_le_bytes());
        let header_bytes = TIMESTAMP_HEADER_BYTES.min(template.len());
        if self.records.is_empty() {
            self.first_intended_ns = intended_ns;
            // One wall-clock reading per batch: Kafka timestamps are milliseconds anyway.
            self.timestamp_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
        }
        self.values.reserve(template.len());
        self.values.put_slice(&header[..header_bytes]);
        self.values.put_slice(&template[header_bytes..]);
        let value = self.values.split();
        #[allow(clippy::default_trait_access)]
        self.records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: self.records.len() as i64,
            // Not idempotent, so the batch's base sequence must be -1; but the codec starts a
            // new batch wherever `offset - sequence` changes, so a constant -1 would make every
            // record its own batch. Only the first record's sequence reaches the wire.
            sequence: self.records.len() as i32 - 1,
            timestamp: self.timestamp_ms,
            key: None,
            value: Some(value.freeze()),
            // The codec does not re-export its `IndexMap`; an empty map is all we need.
            headers: Default::default(),
        });
        self.value_bytes += template.len();
        if is_measured {
            self.measured_intended_ns.push(intended_ns);
        } else {
            self.unmeasured_messages += 1;
        }
    }
}

/// Encodes the batch into a Produce request and writes it on the partition leader's lane.
/// A failure stops the run: a producer that cannot send has nothing left to measure.
fn flush(
    config: &ProduceConfig,
    context: &RunContext,
    lanes: &mut BTreeMap<String, Lane>,
    batch: &mut Batch,
    stats: &mut ThreadStats,
) {
    let codec_start_ns = context.clock.now_ns();
    let lane = lanes
        .get_mut(&config.layout.leaders[batch.partition as usize])
        .expect("a lane was opened for every partition's leader");
    let encoded = encode_batch(config, lane, batch);
    stats.codec_ns += context.clock.now_ns() - codec_start_ns;
    let sent = encoded
        .and_then(|correlation_id| send_batch(config, context, lane, batch, correlation_id, stats));
    if let Err(error) = sent {
        stats.error(error);
        context.abort();
    }
}

/// Encodes the batch and its Produce request into the lane's frame; returns the correlation id.
fn encode_batch(config: &ProduceConfig, lane: &mut Lane, batch: &mut Batch) -> Result<i32, String> {
    batch.encoded.reserve(
        batch.value_bytes + BATCH_HEADER_BYTES + RECORD_OVERHEAD_BYTES_MAX * batch.records.len(),
    );
    let options = RecordEncodeOptions {
        version: 2,
        compression: config.compression,
    };
    RecordBatchEncoder::encode(&mut batch.encoded, &batch.records, &options)
        .map_err(|error| format!("encode batch: {error}"))?;
    let correlation_id = lane.next_correlation_id;
    lane.next_correlation_id = lane.next_correlation_id.wrapping_add(1);
    let to = ProduceTo {
        topic: &lane.topic,
        // Produce stops at v9 for the bench: topics are named.
        topic_id: Uuid::nil(),
        acks: config.acks,
        timeout_ms: PRODUCE_TIMEOUT_MS,
    };
    // The request is dropped inside, releasing the encoded batch, so the next one reuses
    // its memory.
    encode_produce(
        &mut lane.frame,
        &to,
        batch.partition,
        batch.encoded.split().freeze(),
        lane.produce_version,
        correlation_id,
        client::CLIENT_ID,
    )
    .map_err(|error| format!("encode produce request: {error}"))?;
    Ok(correlation_id)
}

/// Queues the batch for the acker (blocking while the in-flight window is full) and writes
/// the frame. With acks=0 no response will come, so the write is the acknowledgement.
fn send_batch(
    config: &ProduceConfig,
    context: &RunContext,
    lane: &mut Lane,
    batch: &mut Batch,
    correlation_id: i32,
    stats: &mut ThreadStats,
) -> Result<(), String> {
    let measured_intended_ns = std::mem::take(&mut batch.measured_intended_ns);
    let measured_count = measured_intended_ns.len() as u64;
    if let Some(to_acker) = &lane.to_acker {
        let in_flight = InFlight {
            correlation_id,
            measured_intended_ns,
            unmeasured_messages: batch.unmeasured_messages,
            partition: batch.partition,
        };
        to_acker
            .send(in_flight)
            .map_err(|_| "acker ended early".to_string())?;
    }
    lane.writer
        .write_frame(&lane.frame)
        .map_err(|error| format!("send produce request: {error}"))?;
    if config.acks == 0 {
        let bytes = measured_count * config.message_size_bytes as u64;
        stats.messages += measured_count;
        stats.bytes += bytes;
        stats.unmeasured_messages += batch.unmeasured_messages;
        stats.last_measured_ns = context.clock.now_ns();
        context.counters.add_produced(measured_count, bytes);
    }
    Ok(())
}

/// What an acker needs besides its queue and socket.
struct AckerContext {
    run: RunContext,
    message_size_bytes: usize,
}

fn run_acker(
    mut reader: FrameReader,
    queue: &Receiver<InFlight>,
    produce_version: i16,
    cpu: Option<usize>,
    acker: &AckerContext,
) -> ThreadStats {
    prepare_thread(cpu);
    let context = &acker.run;
    let started_ns = context.clock.now_ns();
    let mut stats = ThreadStats::new("acker");
    while let Ok(in_flight) = queue.recv() {
        if let Err(error) = acknowledge(&mut reader, &in_flight, produce_version, acker, &mut stats)
        {
            stats.error(error.to_string());
            context.abort();
            break;
        }
    }
    stats.cpu = thread_cpu_time();
    stats.stopped_ns = context.clock.now_ns();
    stats.wall = Duration::from_nanos(stats.stopped_ns - started_ns);
    stats
}

/// Reads one produce response and charges its latency to every measured message it covers.
fn acknowledge(
    reader: &mut FrameReader,
    in_flight: &InFlight,
    produce_version: i16,
    acker: &AckerContext,
    stats: &mut ThreadStats,
) -> io::Result<()> {
    let context = &acker.run;
    let frame = reader.recv_frame()?;
    let acked_ns = context.clock.now_ns();
    let response: ProduceResponse = reader.decode_response::<ProduceRequest>(
        frame,
        produce_version,
        in_flight.correlation_id,
    )?;
    let error_code = partition_error_code(&response, in_flight.partition).unwrap_or(-1);
    if error_code != 0 {
        stats.error(format!(
            "partition {} answered error {error_code}",
            in_flight.partition
        ));
        return Ok(());
    }
    for &intended_ns in &in_flight.measured_intended_ns {
        record_ns(&mut stats.publish, acked_ns.saturating_sub(intended_ns));
    }
    let measured = in_flight.measured_intended_ns.len() as u64;
    let bytes = measured * acker.message_size_bytes as u64;
    stats.messages += measured;
    stats.bytes += bytes;
    stats.unmeasured_messages += in_flight.unmeasured_messages;
    if measured > 0 {
        stats.last_measured_ns = acked_ns;
    }
    context.counters.add_produced(measured, bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker's default `message.max.bytes` (1 MiB + 12): a full 1 MiB batch must fit.
    const BROKER_BATCH_BYTES_MAX: usize = (1 << 20) + 12;

    #[test]
    fn a_full_batch_stays_under_its_size_in_encoded_bytes() {
        for message_size_bytes in [1, 16, 100, 1024, 100_000] {
            let batch_size_bytes = 1 << 20;
            let template = payload_template(message_size_bytes);
            let record_bytes = message_size_bytes + RECORD_OVERHEAD_BYTES_MAX;
            let mut batch = Batch::new(0, batch_size_bytes);
            while BATCH_HEADER_BYTES + (batch.records.len() + 1) * record_bytes <= batch_size_bytes
            {
                batch.push(&template, u64::MAX / 2, true, u64::MAX);
            }
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(&mut batch.encoded, &batch.records, &options).unwrap();
            assert!(
                batch.encoded.len() <= batch_size_bytes,
                "{message_size_bytes} B: {} records in {} bytes",
                batch.records.len(),
                batch.encoded.len()
            );
            assert!(batch.encoded.len() <= BROKER_BATCH_BYTES_MAX);
            let mut encoded = batch.encoded.clone().freeze();
            let headers =
                kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut encoded)
                    .unwrap();
            assert_eq!(headers.len(), 1, "one batch, not one per record");
            assert_eq!(headers[0].record_count as usize, batch.records.len());
            assert_eq!(headers[0].base_sequence, -1, "not idempotent");
            // And the estimate is not wildly pessimistic: from 100 B records up, at least 85%
            // of the batch is used.
            assert!(
                message_size_bytes < 100 || batch.encoded.len() * 100 >= batch_size_bytes * 85,
                "{message_size_bytes} B"
            );
        }
    }
}
