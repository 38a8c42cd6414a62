//! `ringfeed consume TOPIC`: fetch from each partition's leader and print records, from a
//! chosen offset or time, alone or as a member of a consumer group that commits what it
//! printed.
//!
//! Stops after `--num` records, at the end of every partition with `--exit-at-end`, on
//! SIGINT/SIGTERM, or when stdout is closed (`| head`). A group member commits its positions
//! every second, before a rebalance and at exit, then leaves the group.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, ErrorKind, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use ringfeed_client::FetchFrom;
use ringfeed_protocol::batch::{BatchHeader, WholeBatches, BATCH_HEADER_BYTES, MAGIC_V2};

use super::client::{
    topic_name, Cluster, TopicLayout, OFFSET_EARLIEST, OFFSET_LATEST, RETRY_BACKOFF,
};
use super::format::{write_json, RecordFormat};
use super::membership::{GroupState, Membership, COMMIT_INTERVAL};
use super::{describe_error, fail, CliError, CliResult, ConnectArgs, Outcome};

/// The smallest v2 record is 7 bytes (length, attributes, three zero varints, null key and
/// value, no headers), so an uncompressed batch claiming more records than that allows is
/// corrupt; a compressed one is held to `RECORDS_PER_BATCH_MAX` before it is decompressed.
const RECORD_BYTES_MIN: usize = 7;
const RECORDS_PER_BATCH_MAX: usize = 1 << 20;
/// Longest a fetch waits at the broker for data; short so SIGINT and heartbeats are served.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to read.
    pub topic: String,
    /// Where to start: start, end, or an offset. With --group, only where the group has no
    /// committed offset.
    #[arg(short, long, default_value = "start")]
    pub offset: StartOffset,
    /// Start at the first record whose timestamp is at or after this many ms since the epoch
    /// (`ListOffsets` by time; partitions with none start at their end).
    #[arg(long, conflicts_with = "offset")]
    pub time: Option<i64>,
    /// Only these partitions (comma-separated; default: all). Not with --group.
    #[arg(short, long, value_delimiter = ',', conflicts_with = "group")]
    pub partition: Vec<i32>,
    /// Exit after printing this many records.
    #[arg(short, long)]
    pub num: Option<u64>,
    /// Exit once every partition has been read to its end.
    #[arg(short, long)]
    pub exit_at_end: bool,
    /// Consume as a member of this consumer group, committing what was printed.
    #[arg(short, long)]
    pub group: Option<String>,
    /// Output format: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp,
    /// %h headers, %K/%V key/value length, %% percent; \n \t \r \\ escapes.
    #[arg(short, long, default_value = "%v\\n")]
    pub format: String,
    /// Print one JSON object per record instead of --format.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Largest fetch response asked for, in bytes (also the per-partition limit).
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(i32).range(1024..=32 * 1024 * 1024))]
    pub fetch_max_bytes: i32,
}

/// `--offset`: `start`/`oldest`, `end`/`newest`, or an absolute offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOffset {
    Start,
    End,
    At(i64),
}

impl FromStr for StartOffset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "start" | "oldest" | "beginning" => Ok(Self::Start),
            "end" | "newest" => Ok(Self::End),
            number => match number.parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(Self::At(offset)),
                _ => Err(format!(
                    "expected start, end or an offset >= 0, got {text:?}"
                )),
            },
        }
    }
}

/// How each record is printed.
enum Output {
    Format(RecordFormat),
    Json,
}

/// Why the consume loop stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Continue,
    Done,
}

struct Consumer<'a> {
    args: &'a ConsumeArgs,
    cluster: Cluster,
    layout: TopicLayout,
    output: Output,
    out: BufWriter<io::StdoutLock<'static>>,
    /// The next offset to read per partition.
    positions: BTreeMap<i32, i64>,
    /// Partitions read to their high watermark (for --exit-at-end).
    at_end: BTreeMap<i32, bool>,
    printed: u64,
    /// stdout was closed by its reader (`| head`): stop quietly.
    stdout_closed: bool,
}

pub fn run(args: &ConsumeArgs) -> CliResult<Outcome> {
    let output = if args.json {
        Output::Json
    } else {
        Output::Format(RecordFormat::parse(&args.format).map_err(CliError)?)
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|error| CliError(format!("installing a signal handler: {error}")))?;
    }
    let mut cluster = super::client::connect(&args.connect)?;
    let layout = cluster.topic_layout(&args.topic)?;
    for &partition in &args.partition {
        if layout.partition(partition).is_none() {
            return fail(format!("topic {} has no partition {partition}", args.topic));
        }
    }
    let mut consumer = Consumer {
        args,
        cluster,
        layout,
        output,
        out: BufWriter::new(io::stdout().lock()),
        positions: BTreeMap::new(),
        at_end: BTreeMap::new(),
        printed: 0,
        stdout_closed: false,
    };
    match &args.group {
        None => {
            let partitions = if args.partition.is_empty() {
                consumer.layout.partitions.iter().map(|p| p.index).collect()
            } else {
                args.partition.clone()
            };
            consumer.start_at_policy(&partitions)?;
            consumer.consume(&stop, None)?;
        }
        Some(group) => {
            let mut membership = Membership::join(&mut consumer.cluster, group, &args.topic)?;
            consumer.start_from_commits(&mut membership)?;
            let outcome = consumer.consume(&stop, Some(&mut membership));
            // Commit what was printed even when the loop failed part-way, then leave.
            let committed = membership.commit(&mut consumer.cluster, &consumer.positions);
            membership.leave(&mut consumer.cluster);
            outcome?;
            committed?;
        }
    }
    Ok(Outcome::Success)
}

impl Consumer<'_> {
    /// Positions from `--offset`/`--time` for `partitions`.
    fn start_at_policy(&mut self, partitions: &[i32]) -> CliResult<()> {
        let timestamp = match (self.args.time, self.args.offset) {
            (Some(time), _) => time,
            (None, StartOffset::Start) => OFFSET_EARLIEST,
            (None, StartOffset::End) => OFFSET_LATEST,
            (None, StartOffset::At(offset)) => {
                for &partition in partitions {
                    self.positions.insert(partition, offset);
                }
                return Ok(());
            }
        };
        let found = self
            .cluster
            .list_offsets(&self.layout, partitions, timestamp)?;
        let mut missing = Vec::new();
        for (partition, offset) in found {
            match offset {
                // By time, -1 means no record at or after it: start at the end.
                Ok(-1) => missing.push(partition),
                Ok(offset) => {
                    self.positions.insert(partition, offset);
                }
                Err(error) => return fail(format!("{}/{partition}: {error}", self.layout.name)),
            }
        }
        if !missing.is_empty() {
            for (partition, offset) in
                self.cluster
                    .list_offsets(&self.layout, &missing, OFFSET_LATEST)?
            {
                let offset = offset.map_err(|error| {
                    CliError(format!("{}/{partition}: {error}", self.layout.name))
                })?;
                self.positions.insert(partition, offset);
            }
        }
        Ok(())
    }

    /// Positions for the member's assignment: the group's commits, else `--offset`/`--time`.
    fn start_from_commits(&mut self, membership: &mut Membership) -> CliResult<()> {
        self.positions.clear();
        self.at_end.clear();
        if membership.assigned.is_empty() {
            return Ok(());
        }
        let topics = [(self.layout.name.clone(), membership.assigned.clone())];
        let coordinator = self.cluster.coordinator(&membership.group)?;
        let committed = coordinator.fetch_committed(&membership.group, Some(&topics))?;
        let mut uncommitted = Vec::new();
        for &partition in &membership.assigned {
            match committed.get(&(self.layout.name.clone(), partition)) {
                Some(&offset) => {
                    self.positions.insert(partition, offset);
                }
                None => uncommitted.push(partition),
            }
        }
        self.start_at_policy(&uncommitted)
    }

    fn consume(
        &mut self,
        stop: &AtomicBool,
        mut membership: Option<&mut Membership>,
    ) -> CliResult<()> {
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(membership) = membership.as_deref_mut() {
                let mut state = membership.heartbeat_if_due(&mut self.cluster)?;
                if state == GroupState::Stable && last_commit.elapsed() >= COMMIT_INTERVAL {
                    state = membership.commit(&mut self.cluster, &self.positions)?;
                    last_commit = Instant::now();
                }
                if state == GroupState::MustRejoin {
                    // Commits made in the old generation may be refused; what was printed
                    // since the last commit can then be printed again (at-least-once).
                    let _ = membership.commit(&mut self.cluster, &self.positions);
                    membership.rejoin(&mut self.cluster)?;
                    self.layout = self.cluster.topic_layout(&self.args.topic)?;
                    self.start_from_commits(membership)?;
                }
            }
            if self.positions.is_empty() {
                if self.args.exit_at_end {
                    return Ok(());
                }
                thread::sleep(FETCH_MAX_WAIT);
                continue;
            }
            if self.fetch_round()? == Stop::Done {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One fetch from each leader of an assigned partition.
    fn fetch_round(&mut self) -> CliResult<Stop> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &partition in self.positions.keys() {
            let leader = self.layout.partition(partition).map_or(-1, |p| p.leader.0);
            by_leader.entry(leader).or_default().push(partition);
        }
        let mut refresh = false;
        for (leader, partitions) in by_leader {
            if leader < 0 {
                refresh = true;
                continue;
            }
            let fetched = match self.fetch(leader, &partitions) {
                Ok(fetched) => fetched,
                // The answer's own error code (a fetch session's): no retry helps.
                Err(error) if error.broker_code().is_some() => return Err(error.into()),
                Err(error) => {
                    eprintln!("{error}");
                    if let Some(address) = self.cluster.broker_address(leader).map(str::to_string) {
                        self.cluster.forget(&address);
                    }
                    refresh = true;
                    continue;
                }
            };
            for partition in fetched {
                match self.take_partition(partition)? {
                    PartitionResult::Done => return Ok(Stop::Done),
                    PartitionResult::Refresh => refresh = true,
                    PartitionResult::Continue => {}
                }
            }
        }
        if self.args.exit_at_end
            && !self.at_end.is_empty()
            && self
                .positions
                .keys()
                .all(|p| self.at_end.get(p) == Some(&true))
        {
            return Ok(Stop::Done);
        }
        if refresh {
            thread::sleep(RETRY_BACKOFF);
            self.layout = self.cluster.topic_layout(&self.args.topic)?;
        }
        Ok(Stop::Continue)
    }

    /// One `Fetch` from `leader`. Only the answer's own error code comes back as a broker
    /// error; failing to reach the leader is any other kind.
    fn fetch(
        &mut self,
        leader: i32,
        partitions: &[i32],
    ) -> ringfeed_client::Result<Vec<PartitionData>> {
        let max_wait = FETCH_MAX_WAIT.min(self.cluster.timeout() / 2);
        let topic = topic_name(&self.layout.name);
        let from = FetchFrom {
            topic: &topic,
            topic_id: self.layout.topic_id,
            max_wait_ms: max_wait.as_millis() as i32,
            min_bytes: 1,
            max_bytes: self.args.fetch_max_bytes,
            partition_max_bytes: self.args.fetch_max_bytes,
        };
        let positions: Vec<(i32, i64)> = partitions
            .iter()
            .map(|&p| (p, self.positions[&p]))
            .collect();
        let connection = self.cluster.broker(leader).map_err(|error| {
            // Opening a connection can meet an `ApiVersions` error code: not the Fetch's.
            match error.broker_code() {
                Some(_) => ringfeed_client::Error::failed(error.to_string()),
                None => error,
            }
        })?;
        connection.fetch(&from, positions)
    }

    /// Prints a partition's records and moves its position; acts on its error code.
    fn take_partition(
        &mut self,
        data: kafka_protocol::messages::fetch_response::PartitionData,
    ) -> CliResult<PartitionResult> {
        let partition = data.partition_index;
        let Some(&position) = self.positions.get(&partition) else {
            return Ok(PartitionResult::Continue);
        };
        match ResponseError::try_from_code(data.error_code) {
            None => {}
            Some(ResponseError::OffsetOutOfRange) => {
                self.reset_out_of_range(partition, position)?;
                return Ok(PartitionResult::Continue);
            }
            Some(error) if error.is_retriable() => return Ok(PartitionResult::Refresh),
            Some(_) => {
                return fail(format!(
                    "{}/{partition}: {}",
                    self.layout.name,
                    describe_error(data.error_code, None)
                ));
            }
        }
        let records = data.records.unwrap_or_default();
        let decoded = decode_batches(&records, position).map_err(|error| {
            CliError(format!(
                "{}/{partition} at offset {position}: {error}",
                self.layout.name
            ))
        })?;
        for record in &decoded.records {
            if self.args.num.is_some_and(|n| self.printed >= n) {
                break;
            }
            self.print(partition, record)?;
            if self.stdout_closed {
                return Ok(PartitionResult::Done);
            }
            self.printed += 1;
            self.positions.insert(partition, record.offset + 1);
        }
        let limit_reached = self.args.num.is_some_and(|n| self.printed >= n);
        if !limit_reached {
            if let Some(next) = decoded.next_offset {
                self.positions.insert(partition, next.max(position));
            }
        }
        let now = self.positions[&partition];
        self.at_end.insert(partition, now >= data.high_watermark);
        self.flush()?;
        Ok(if limit_reached || self.stdout_closed {
            PartitionResult::Done
        } else {
            PartitionResult::Continue
        })
    }

    /// Kafka's `auto.offset.reset` for a position outside the log: before the log start
    /// goes to the start, past the end goes to the end.
    fn reset_out_of_range(&mut self, partition: i32, position: i64) -> CliResult<()> {
        let starts = self
            .cluster
            .list_offsets(&self.layout, &[partition], OFFSET_EARLIEST)?;
        let ends = self
            .cluster
            .list_offsets(&self.layout, &[partition], OFFSET_LATEST)?;
        let (Some(Ok(start)), Some(Ok(end))) = (starts.get(&partition), ends.get(&partition))
        else {
            return fail(format!(
                "{}/{partition}: offset {position} is out of range and the range is unknown",
                self.layout.name
            ));
        };
        let reset = if position < *start { *start } else { *end };
        eprintln!("{}/{partition}: offset {position} is out of range [{start}, {end}]; continuing at {reset}", self.layout.name);
        self.positions.insert(partition, reset);
        Ok(())
    }

    fn print(&mut self, partition: i32, record: &Record) -> CliResult<()> {
        let written = match &self.output {
            Output::Format(format) => {
                format.write(&mut self.out, &self.layout.name, partition, record)
            }
            Output::Json => write_json(&mut self.out, &self.layout.name, partition, record),
        };
        self.check_written(written)
    }

    fn flush(&mut self) -> CliResult<()> {
        let flushed = self.out.flush();
        self.check_written(flushed)
    }

    /// A closed pipe (`| head`) means the reader has what it wanted: stop without an error.
    fn check_written(&mut self, written: io::Result<()>) -> CliResult<()> {
        match written {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {
                self.stdout_closed = true;
                Ok(())
            }
            Err(error) => fail(format!("writing to stdout: {error}")),
        }
    }
}

enum PartitionResult {
    Continue,
    Refresh,
    Done,
}

/// The records of a fetch answer at or after `position`, and where the next fetch starts.
#[derive(Debug, Default)]
struct DecodedBatches {
    records: Vec<Record>,
    /// One past the last offset of the last whole batch (control batches included), if any.
    next_offset: Option<i64>,
}

/// Decodes the whole v2 batches in `records`; a partial batch at the end (Kafka cuts a fetch
/// at its byte limit) is left for the next fetch. Control records (transaction markers) are
/// skipped but advance the position.
fn decode_batches(records: &Bytes, position: i64) -> Result<DecodedBatches, String> {
    let mut decoded = DecodedBatches::default();
    let mut batches = WholeBatches::new(records.clone());
    for batch in batches.by_ref() {
        let mut batch = batch.map_err(|error| error.to_string())?;
        let header = BatchHeader::parse(&batch).expect("a whole batch holds its header");
        if header.magic != MAGIC_V2 {
            return Err(format!(
                "record format v{} (only v2 batches are read)",
                header.magic
            ));
        }
        let base_offset = header.base_offset;
        let count_max = if header.is_compressed() {
            RECORDS_PER_BATCH_MAX
        } else {
            (batch.len() - BATCH_HEADER_BYTES) / RECORD_BYTES_MIN
        };
        if usize::try_from(header.record_count).map_or(true, |count| count > count_max) {
            return Err(format!(
                "batch at offset {base_offset} claims {} records",
                header.record_count
            ));
        }
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|error| format!("batch at offset {base_offset}: {error}"))?;
        decoded.records.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control && r.offset >= position),
        );
        decoded.next_offset = Some(base_offset + i64::from(header.last_offset_delta) + 1);
    }
    if decoded.next_offset.is_none()
        && batches.remaining_bytes() > 0
        && records.len() >= BATCH_HEADER_BYTES
    {
        // The first batch alone is larger than the fetch: Kafka always returns a whole first
        // batch, so this is a broker cutting it short.
        return Err("the first batch does not fit the fetch; raise --fetch-max-bytes".to_string());
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use ringfeed_protocol::batch::RECORD_COUNT_OFFSET;

    fn batch(base_offset: i64, values: &[&'static str], compression: Compression) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(index, value)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base_offset + index as i64,
                sequence: -1,
                timestamp: 1000 + index as i64,
                key: None,
                value: Some(Bytes::from_static(value.as_bytes())),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buffer = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buffer,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buffer.freeze()
    }

    fn values(decoded: &DecodedBatches) -> Vec<(i64, &[u8])> {
        decoded
            .records
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap()))
            .collect()
    }

    #[test]
    fn whole_batches_decode_and_records_before_the_position_are_skipped() {
        let mut records = BytesMut::new();
        records.extend_from_slice(&batch(10, &["a", "b", "c"], Compression::None));
        records.extend_from_slice(&batch(13, &["d"], Compression::Zstd));
        let decoded = decode_batches(&records.freeze(), 11).unwrap();
        assert_eq!(
            values(&decoded),
            vec![(11, &b"b"[..]), (12, b"c"), (13, b"d")]
        );
        assert_eq!(decoded.next_offset, Some(14));
    }

    #[test]
    fn a_partial_trailing_batch_waits_for_the_next_fetch() {
        let first = batch(0, &["a"], Compression::None);
        let second = batch(1, &["b"], Compression::None);
        let mut records = BytesMut::new();
        records.extend_from_slice(&first);
        records.extend_from_slice(&second[..second.len() - 3]);
        let decoded = decode_batches(&records.freeze(), 0).unwrap();
        assert_eq!(values(&decoded), vec![(0, &b"a"[..])]);
        assert_eq!(decoded.next_offset, Some(1));
        assert!(
            decode_batches(&second.slice(..second.len() - 3), 1).is_err(),
            "a cut first batch is reported"
        );
        assert_eq!(decode_batches(&Bytes::new(), 0).unwrap().next_offset, None);
    }

    #[test]
    fn corrupt_batches_are_errors_not_panics() {
        let good = batch(0, &["a"], Compression::None);
        let mut bad_crc = BytesMut::from(&good[..]);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(decode_batches(&bad_crc.freeze(), 0)
            .unwrap_err()
            .contains("offset 0"));
        let mut huge_count = BytesMut::from(&good[..]);
        huge_count[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4]
            .copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_batches(&huge_count.freeze(), 0)
            .unwrap_err()
            .contains("claims"));
        let mut negative = BytesMut::from(&good[..]);
        negative[8..12].copy_from_slice(&(-1_i32).to_be_bytes());
        assert!(decode_batches(&negative.freeze(), 0).is_err());
    }

    #[test]
    fn start_offsets_parse() {
        assert_eq!("start".parse(), Ok(StartOffset::Start));
        assert_eq!("newest".parse(), Ok(StartOffset::End));
        assert_eq!("42".parse(), Ok(StartOffset::At(42)));
        assert!("-1".parse::<StartOffset>().is_err());
        assert!("soon".parse::<StartOffset>().is_err());
    }
}
