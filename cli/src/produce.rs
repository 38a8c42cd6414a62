//! `ringfeed produce TOPIC`: one record per stdin line (or key/value lines split at
//! `--key-separator`), batched per partition and sent to each partition's leader.
//!
//! A reader thread turns stdin into bounded lines; the main thread collects them for up to
//! `--linger-ms` (or until a batch is full) and sends one `Produce` per leader, waiting for
//! the answer before the next, so an interactive user sees each line produced at once and a
//! pipe is sent in large batches. A record that fails is reported with its line number and the
//! command exits non-zero.

use std::collections::BTreeMap;
use std::io::{BufRead, ErrorKind};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use ringfeed_client::ProduceTo;

use super::client::{topic_name, Cluster, TopicLayout, RETRIES_MAX, RETRY_BACKOFF};
use super::{describe_error, fail, parse_key_value, CliError, CliResult, ConnectArgs, Outcome};

/// Records and bytes collected before a send: a batch per partition must stay under Kafka's
/// default `message.max.bytes` (1 MiB), so the bytes of one send are kept below half of it.
const SEND_RECORDS_MAX: usize = 10_000;
const SEND_BYTES_MAX: usize = 512 * 1024;
/// Lines read ahead of the sender; bounds memory to this many `--max-record-bytes` lines.
const LINES_QUEUED_MAX: usize = 64;

#[derive(clap::Args)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to produce to (it must exist).
    pub topic: String,
    /// Split each line at the first SEP: the key before it, the value after it. A line
    /// without SEP is reported as a failed record.
    #[arg(short = 'K', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Send every record to this partition (default: by key hash as Kafka's Java client
    /// does, and records without a key round-robin batch by batch).
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Acknowledgement to wait for: 0 (none; failures cannot be reported), 1 (the leader) or
    /// all (every in-sync replica).
    #[arg(long, value_enum, default_value = "all")]
    pub acks: Acks,
    /// Batch compression.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// A header on every record, key=value (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_key_value)]
    pub headers: Vec<(String, String)>,
    /// Longest line accepted; longer lines are reported as failed records.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=100 * 1024 * 1024))]
    pub max_record_bytes: u64,
    /// How long to wait for more lines before sending what has been read.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    #[value(name = "0")]
    None,
    #[value(name = "1")]
    Leader,
    #[value(name = "all", alias = "-1")]
    All,
}

impl Acks {
    fn code(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Leader => 1,
            Self::All => -1,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    fn codec(self) -> Compression {
        match self {
            Self::None => Compression::None,
            Self::Gzip => Compression::Gzip,
            Self::Snappy => Compression::Snappy,
            Self::Lz4 => Compression::Lz4,
            Self::Zstd => Compression::Zstd,
        }
    }
}

/// One stdin line: its 1-based number and its bytes without the newline, or why it was
/// refused.
struct Line {
    number: u64,
    content: Result<Vec<u8>, String>,
}

/// A record waiting to be sent, with the line it came from.
struct Pending {
    line: u64,
    partition: i32,
    key: Option<Bytes>,
    value: Bytes,
}

struct Producer<'a> {
    args: &'a ProduceArgs,
    cluster: Cluster,
    layout: TopicLayout,
    headers: IndexMap<StrBytes, Option<Bytes>>,
    next_unkeyed_partition: usize,
    produced: u64,
    failed: u64,
}

pub fn run(args: &ProduceArgs) -> CliResult<Outcome> {
    let mut cluster = super::client::connect(&args.connect)?;
    let layout = cluster.topic_layout(&args.topic)?;
    if layout.partitions.is_empty() {
        return fail(format!("topic {} has no partitions", args.topic));
    }
    if let Some(partition) = args.partition {
        if layout.partition(partition).is_none() {
            return fail(format!(
                "topic {} has no partition {partition} (it has {})",
                args.topic,
                layout.partitions.len()
            ));
        }
    }
    let headers = args
        .headers
        .iter()
        .map(|(k, v)| {
            (
                StrBytes::from_string(k.clone()),
                Some(Bytes::from(v.clone().into_bytes())),
            )
        })
        .collect();
    let mut producer = Producer {
        args,
        cluster,
        layout,
        headers,
        next_unkeyed_partition: 0,
        produced: 0,
        failed: 0,
    };
    let (sender, lines) = mpsc::sync_channel(LINES_QUEUED_MAX);
    let line_bytes_max = args.max_record_bytes as usize;
    thread::spawn(move || read_lines(std::io::stdin().lock(), line_bytes_max, &sender));
    producer.pump(&lines)?;
    let acked = if args.acks == Acks::None {
        "sent (acks=0: not confirmed)"
    } else {
        "produced"
    };
    eprintln!(
        "{} records {acked} to {}, {} failed",
        producer.produced, args.topic, producer.failed
    );
    Ok(Outcome::from_failures(producer.failed as usize))
}

/// Reads `input` line by line into `lines`, never holding more than `line_bytes_max` bytes of
/// one line: a longer line is drained and reported as refused.
fn read_lines(mut input: impl BufRead, line_bytes_max: usize, lines: &SyncSender<Line>) {
    for number in 1.. {
        let mut line = Vec::new();
        let mut too_long = false;
        let mut saw_bytes = false;
        let mut ended = false;
        loop {
            let buffer = match input.fill_buf() {
                Ok(buffer) => buffer,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    let _ = lines.send(Line {
                        number,
                        content: Err(format!("reading stdin: {error}")),
                    });
                    return;
                }
            };
            if buffer.is_empty() {
                ended = true;
                break;
            }
            saw_bytes = true;
            let newline = buffer.iter().position(|&b| b == b'\n');
            let chunk = &buffer[..newline.unwrap_or(buffer.len())];
            if line.len() + chunk.len() > line_bytes_max {
                too_long = true;
                line = Vec::new();
            } else if !too_long {
                line.extend_from_slice(chunk);
            }
            let consumed = newline.map_or(buffer.len(), |at| at + 1);
            input.consume(consumed);
            if newline.is_some() {
                break;
            }
        }
        if ended && !saw_bytes {
            return;
        }
        let content = if too_long {
            Err(format!(
                "line longer than --max-record-bytes {line_bytes_max}"
            ))
        } else {
            Ok(line)
        };
        if lines.send(Line { number, content }).is_err() || ended {
            return;
        }
    }
}

impl Producer<'_> {
    /// Collects lines into sends until stdin ends.
    fn pump(&mut self, lines: &Receiver<Line>) -> CliResult<()> {
        let linger = Duration::from_millis(self.args.linger_ms);
        while let Ok(first) = lines.recv() {
            let deadline = Instant::now() + linger;
            let mut pending = Vec::new();
            let mut pending_bytes = 0;
            self.accept(first, &mut pending, &mut pending_bytes);
            while pending.len() < SEND_RECORDS_MAX && pending_bytes < SEND_BYTES_MAX {
                match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) => self.accept(line, &mut pending, &mut pending_bytes),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.send(pending)?;
            self.next_unkeyed_partition = self.next_unkeyed_partition.wrapping_add(1);
        }
        Ok(())
    }

    /// Turns a line into a pending record, or reports why it cannot be one.
    fn accept(&mut self, line: Line, pending: &mut Vec<Pending>, pending_bytes: &mut usize) {
        let bytes = match line.content {
            Ok(bytes) => bytes,
            Err(reason) => return self.record_failed(line.number, &reason),
        };
        let (key, value) = match &self.args.key_separator {
            None => (None, bytes),
            Some(separator) => match split_once(&bytes, separator.as_bytes()) {
                Some((key, value)) => (Some(Bytes::copy_from_slice(key)), value.to_vec()),
                None => {
                    return self.record_failed(
                        line.number,
                        &format!("no key separator {separator:?} in the line"),
                    );
                }
            },
        };
        let partitions = self.layout.partitions.len();
        let partition = match (self.args.partition, &key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => self.layout.partitions[key_partition(key, partitions)].index,
            (None, None) => self.layout.partitions[self.next_unkeyed_partition % partitions].index,
        };
        *pending_bytes += value.len() + key.as_ref().map_or(0, Bytes::len);
        pending.push(Pending {
            line: line.number,
            partition,
            key,
            value: Bytes::from(value),
        });
    }

    fn record_failed(&mut self, line: u64, reason: &str) {
        self.failed += 1;
        eprintln!("record at line {line}: {reason}");
    }

    /// Sends `pending`, retrying partitions whose leader moved, and reports each record that
    /// still failed.
    fn send(&mut self, pending: Vec<Pending>) -> CliResult<()> {
        let mut by_partition: BTreeMap<i32, Vec<Pending>> = BTreeMap::new();
        for record in pending {
            by_partition
                .entry(record.partition)
                .or_default()
                .push(record);
        }
        for attempt in 1..=RETRIES_MAX {
            let mut retry = BTreeMap::new();
            let mut by_leader: BTreeMap<i32, Vec<(i32, Vec<Pending>)>> = BTreeMap::new();
            for (partition, records) in by_partition {
                let leader = self.layout.partition(partition).map_or(-1, |p| p.leader.0);
                by_leader
                    .entry(leader)
                    .or_default()
                    .push((partition, records));
            }
            for (leader, partitions) in by_leader {
                for (partition, records, code) in self.send_to_leader(leader, partitions)? {
                    let retriable = ResponseError::try_from_code(code)
                        .is_some_and(|e| e.is_retriable())
                        && code != ResponseError::RequestTimedOut.code();
                    if retriable && attempt < RETRIES_MAX {
                        retry.insert(partition, records);
                    } else {
                        for record in &records {
                            let reason =
                                format!("partition {partition}: {}", describe_error(code, None));
                            self.record_failed(record.line, &reason);
                        }
                    }
                }
            }
            if retry.is_empty() {
                return Ok(());
            }
            thread::sleep(RETRY_BACKOFF * attempt);
            self.layout = self.cluster.topic_layout(&self.args.topic)?;
            by_partition = retry;
        }
        Ok(())
    }

    /// One `Produce` to `leader`; returns the partitions that failed with their error code
    /// (records of an unanswered request fail with `NETWORK_EXCEPTION`, never retried:
    /// without idempotence a resend could duplicate them).
    fn send_to_leader(
        &mut self,
        leader: i32,
        partitions: Vec<(i32, Vec<Pending>)>,
    ) -> CliResult<Vec<(i32, Vec<Pending>, i16)>> {
        let not_leader = ResponseError::LeaderNotAvailable.code();
        if leader < 0 {
            return Ok(partitions
                .into_iter()
                .map(|(p, r)| (p, r, not_leader))
                .collect());
        }
        let batches = self.encode_batches(&partitions)?;
        let topic = topic_name(&self.layout.name);
        let to = ProduceTo {
            topic: &topic,
            topic_id: self.layout.topic_id,
            acks: self.args.acks.code(),
            timeout_ms: self.cluster.broker_timeout_ms(),
        };
        let connection = match self.cluster.broker(leader) {
            Ok(connection) => connection,
            Err(error) => return Ok(self.unanswered(leader, partitions, &error)),
        };
        let produced = match connection.produce(&to, batches) {
            Ok(produced) => produced,
            // No version of Produce in common: no retry helps.
            Err(error) if error.kind() == ringfeed_client::ErrorKind::Unsupported => {
                return Err(error.into())
            }
            Err(error) => return Ok(self.unanswered(leader, partitions, &error)),
        };
        if self.args.acks == Acks::None {
            self.produced += partitions.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
            return Ok(Vec::new());
        }
        let mut codes: BTreeMap<i32, i16> = BTreeMap::new();
        for partition in produced {
            let code = match &partition.outcome {
                Ok(_) => 0,
                Err(error) => error.broker_code().unwrap_or(-1),
            };
            codes.insert(partition.partition, code);
            if let Some(message) = &partition.error_message {
                eprintln!("partition {}: {message}", partition.partition);
            }
        }
        let mut failed = Vec::new();
        for (partition, records) in partitions {
            match codes
                .get(&partition)
                .copied()
                .unwrap_or(ResponseError::UnknownServerError.code())
            {
                0 => self.produced += records.len() as u64,
                code => failed.push((partition, records, code)),
            }
        }
        Ok(failed)
    }

    fn unanswered(
        &mut self,
        leader: i32,
        partitions: Vec<(i32, Vec<Pending>)>,
        error: &ringfeed_client::Error,
    ) -> Vec<(i32, Vec<Pending>, i16)> {
        eprintln!("{error}");
        if let Some(address) = self.cluster.broker_address(leader).map(str::to_string) {
            self.cluster.forget(&address);
        }
        let code = ResponseError::NetworkException.code();
        partitions.into_iter().map(|(p, r)| (p, r, code)).collect()
    }

    /// One record batch per partition, stamped now.
    fn encode_batches(&self, partitions: &[(i32, Vec<Pending>)]) -> CliResult<Vec<(i32, Bytes)>> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let options = RecordEncodeOptions {
            version: 2,
            compression: self.args.compression.codec(),
        };
        let mut batches = Vec::with_capacity(partitions.len());
        for (partition, pending) in partitions {
            let records: Vec<Record> = pending
                .iter()
                .enumerate()
                .map(|(index, p)| Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: index as i64,
                    sequence: -1,
                    timestamp,
                    key: p.key.clone(),
                    value: Some(p.value.clone()),
                    headers: self.headers.clone(),
                })
                .collect();
            let mut batch = BytesMut::new();
            RecordBatchEncoder::encode(&mut batch, &records, &options)
                .map_err(|error| CliError(format!("encoding a record batch: {error}")))?;
            batches.push((*partition, batch.freeze()));
        }
        Ok(batches)
    }
}

fn split_once<'a>(bytes: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if separator.is_empty() {
        return None;
    }
    let at = bytes
        .windows(separator.len())
        .position(|window| window == separator)?;
    Some((&bytes[..at], &bytes[at + separator.len()..]))
}

/// The partition Kafka's Java client picks for a key: murmur2, sign bit cleared, modulo.
pub fn key_partition(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        assert_eq!(split_once(b"k:v:w", b":"), Some((&b"k"[..], &b"v:w"[..])));
        assert_eq!(split_once(b"k::v", b"::"), Some((&b"k"[..], &b"v"[..])));
        assert_eq!(split_once(b"novalue", b":"), None);
        assert_eq!(split_once(b"x", b""), None);
    }

    fn lines_of(input: &[u8], max: usize) -> Vec<(u64, Result<Vec<u8>, String>)> {
        let (sender, receiver) = mpsc::sync_channel(100);
        read_lines(input, max, &sender);
        drop(sender);
        receiver.iter().map(|l| (l.number, l.content)).collect()
    }

    #[test]
    fn lines_are_split_bounded_and_numbered() {
        let lines = lines_of(b"a\n\nbc\nlast", 10);
        assert_eq!(
            lines,
            vec![
                (1, Ok(b"a".to_vec())),
                (2, Ok(Vec::new())),
                (3, Ok(b"bc".to_vec())),
                (4, Ok(b"last".to_vec()))
            ]
        );
        let lines = lines_of(b"short\nthis line is too long\nok\n", 8);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].1, Ok(b"short".to_vec()));
        assert!(lines[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("--max-record-bytes"));
        assert_eq!(lines[2], (3, Ok(b"ok".to_vec())));
        assert!(lines_of(b"", 8).is_empty());
    }
}
