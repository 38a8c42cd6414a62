//! Command-line interface. `--bootstrap`, `--workload`, `--message-size`, `--duration`,
//! `--rate`, `--acks` and `--json` are a contract: scripts and docs/BENCHMARKS.md use them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kafka_protocol::records::Compression;
use serde::Serialize;

/// Runs stop after this long whatever else was asked, so a stuck broker cannot hang CI.
const RUN_SECONDS_MAX_DEFAULT: u64 = 600;

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "ringfeed-bench",
    version,
    about = "Kafka-protocol load generator: produce, consume and end-to-end workloads with exact latency"
)]
pub struct Cli {
    /// Broker to measure (any Kafka-compatible broker).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// A second broker: the same workload runs against both, alternating, and every figure
    /// is printed for both with the ratio (second / first).
    #[arg(long, value_name = "HOST:PORT")]
    pub compare: Option<String>,
    /// Runs per broker in `--compare` mode (A, B, A, B, ...); medians are compared.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub rounds: u32,
    #[arg(long, value_enum, default_value_t = Workload::Produce)]
    pub workload: Workload,
    /// An `OpenMessaging` Benchmark workload file (YAML): sets the workload, partitions,
    /// message size, producers, consumers, rate, warm-up and duration (so those flags are
    /// refused beside it), warns for fields it approximates or ignores, refuses unknown keys.
    #[arg(
        long = "workload-file",
        value_name = "FILE.yaml",
        conflicts_with_all = [
            "workload", "partitions", "message_size_bytes", "messages", "duration_s",
            "warmup_s", "producers", "consumers", "rate_msgs_per_s",
        ]
    )]
    pub workload_file: Option<PathBuf>,
    #[arg(long, default_value = "ringfeed-bench")]
    pub topic: String,
    /// Partitions of the topic when the bench creates it (an existing topic keeps its own).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub partitions: i32,
    /// Bytes of each record value (at least 16 for end-to-end: send time and run id).
    #[arg(long = "message-size", value_name = "BYTES", default_value_t = 100)]
    pub message_size_bytes: usize,
    /// Measured messages across all producers (or consumers for `consume`).
    #[arg(long, value_name = "N", conflicts_with = "duration_s")]
    pub messages: Option<u64>,
    /// Measured seconds (default 10 when neither this nor `--messages` is given).
    #[arg(long = "duration", value_name = "SECS")]
    pub duration_s: Option<f64>,
    /// Unmeasured seconds before measuring starts (connections, caches, CPU clocks warm up).
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 0.0)]
    pub warmup_s: f64,
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub producers: usize,
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub consumers: usize,
    /// 0 (no response), 1 (leader appended) or all (durable on the broker).
    #[arg(long, value_enum, default_value_t = Acks::One)]
    pub acks: Acks,
    /// Largest record batch a producer builds, in encoded bytes (as Kafka's `batch.size`);
    /// a batch always holds at least one record.
    #[arg(long = "batch-size", value_name = "BYTES", default_value_t = 16_384)]
    pub batch_size_bytes: usize,
    /// How long a producer waits for a batch to fill before sending it anyway.
    #[arg(long = "linger-ms", value_name = "MS", default_value_t = 0.0)]
    pub linger_ms: f64,
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Fixed total send rate; latency is measured from each message's intended send time, so
    /// a stall is charged to every message it delayed (coordinated omission corrected).
    /// Absent or 0: as fast as the broker acknowledges.
    #[arg(long = "rate", value_name = "MSGS_PER_SEC")]
    pub rate_msgs_per_s: Option<f64>,
    /// Produce requests a producer keeps unacknowledged per connection.
    #[arg(long = "max-in-flight", value_name = "N", default_value_t = 5)]
    pub max_in_flight: usize,
    /// Where `consume` starts reading: the log start (filling the topic first if it holds
    /// fewer than `--messages`) or the tail (waits for someone else to produce).
    #[arg(long, value_enum, default_value_t = StartFrom::Earliest)]
    pub from: StartFrom,
    /// Bytes a fetch may return per partition.
    #[arg(long = "fetch-partition-max-bytes", value_name = "BYTES", default_value_t = 4 << 20)]
    pub fetch_partition_bytes_max: i32,
    /// How long the broker may hold a fetch that has no data yet.
    // Serialized under the flag's name: `…_ms_max` would read as a latency figure to
    // `ringfeed-perf report`, which pairs every `_ms_max` leaf with a ceiling.
    #[arg(long = "fetch-max-wait-ms", value_name = "MS", default_value_t = 100)]
    #[serde(rename = "fetch_max_wait_ms")]
    pub fetch_wait_ms_max: i32,
    /// CPUs the client threads are pinned to, round-robin (default: every CPU).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Leave client threads where the scheduler puts them.
    #[arg(long)]
    pub no_pin: bool,
    /// Also sample this process's CPU time (the broker's, when it runs on this host).
    #[arg(long = "broker-pid", value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Hard bound on one run, set-up and drain included.
    #[arg(long = "timeout", value_name = "SECS", default_value_t = RUN_SECONDS_MAX_DEFAULT)]
    pub timeout_s: u64,
    /// Write every figure and the parameters as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// `HdrHistogram` percentile distribution of the headline latency (end-to-end for `e2e`,
    /// publish otherwise); for `e2e` the publish latency goes to `<stem>-publish.<ext>`.
    #[arg(long = "histogram-file", value_name = "FILE")]
    pub histogram_file: Option<PathBuf>,
    /// Latency-percentile plot (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// How the bench learns the broker's API versions: `auto` asks `ApiVersions` and falls
    /// back to `fixed` when the broker refuses it; `fixed` uses Produce v3, Fetch v4,
    /// Metadata v1, `ListOffsets` v1, `CreateTopics` v2 (Kafka 0.11+) without asking.
    #[arg(long = "api-versions", value_enum, default_value_t = ApiVersionsMode::Auto)]
    pub api_versions: ApiVersionsMode,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Produce,
    Consume,
    E2e,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Acks {
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
    #[value(name = "1")]
    #[serde(rename = "1")]
    One,
    #[value(name = "all", alias = "-1")]
    #[serde(rename = "all")]
    All,
}

impl Acks {
    pub fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::One => 1,
            Acks::All => -1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl CompressionArg {
    pub fn codec(self) -> Compression {
        match self {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersionsMode {
    Auto,
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// The name a value has on the command line and in the JSON (`e2e`, `all`, `zstd`).
pub fn flag_name(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Bytes at the front of every value for end-to-end timing: intended send time (ns) and the
/// run id, so records from another run are never mistaken for this one's.
pub const TIMESTAMP_HEADER_BYTES: usize = 16;
const DURATION_S_DEFAULT: f64 = 10.0;

impl Cli {
    /// Checks relations clap cannot express; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.workload != Workload::Produce && self.message_size_bytes < TIMESTAMP_HEADER_BYTES {
            return Err(format!(
                "--message-size must be at least {TIMESTAMP_HEADER_BYTES} bytes for {:?}: each record carries its send time",
                self.workload
            ));
        }
        if self.message_size_bytes == 0 || self.message_size_bytes > 64 << 20 {
            return Err("--message-size must be 1 B..64 MiB".into());
        }
        if self.producers == 0
            || self.consumers == 0
            || self.producers > 256
            || self.consumers > 256
        {
            return Err("--producers and --consumers must be 1..=256".into());
        }
        if self.partitions < 1 || self.max_in_flight == 0 || self.rounds == 0 {
            return Err("--partitions, --max-in-flight and --rounds must be at least 1".into());
        }
        if self.workload == Workload::E2e && self.acks == Acks::None {
            return Err(
                "--workload e2e needs acks 1 or all (acks=0 has no publish latency)".into(),
            );
        }
        if !(self.warmup_s >= 0.0 && self.duration_s.unwrap_or(1.0) > 0.0 && self.linger_ms >= 0.0)
        {
            return Err("--warmup, --duration and --linger-ms must be positive".into());
        }
        Ok(())
    }

    pub fn rate(&self) -> Option<f64> {
        self.rate_msgs_per_s.filter(|&r| r > 0.0)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// The measured window when the run is time-bound; `None` when it is count-bound.
    pub fn duration(&self) -> Option<Duration> {
        match (self.messages, self.duration_s) {
            (Some(_), _) => None,
            (None, Some(seconds)) => Some(Duration::from_secs_f64(seconds)),
            (None, None) => Some(Duration::from_secs_f64(DURATION_S_DEFAULT)),
        }
    }

    pub fn linger(&self) -> Duration {
        Duration::from_secs_f64(self.linger_ms / 1_000.0)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}
