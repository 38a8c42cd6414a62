//! `ringfeed`: the broker binary. `ringfeed serve` runs a Kafka-wire-compatible broker with
//! one pinned glommio executor per shard.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ringfeed_broker::limits::Limits;
use ringfeed_broker::server::{self, ServeOptions};
use ringfeed_broker::{check_data, cli, logging};

#[derive(Parser)]
#[command(
    name = "ringfeed",
    version,
    about = "A thread-per-core, Kafka-wire-compatible message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Verify a stopped broker's data offline (every CRC, index and checkpoint); exit 1 if
    /// anything is damaged.
    CheckData {
        /// The broker's data directory.
        #[arg(default_value = "./ringfeed-data")]
        dir: PathBuf,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args)]
#[allow(clippy::struct_excessive_bools)]
struct ServeArgs {
    /// Address every shard listens on (`SO_REUSEPORT`). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: String,
    /// HOST:PORT of the HTTP admin listener (/metrics, /health, /ready); "off" disables it.
    #[arg(long, default_value = "127.0.0.1:9644")]
    admin_listen: String,
    /// Log filter at start: error, warn, info, debug, trace, or a tracing filter such as
    /// `ringfeed_broker=debug,info`. The `RUST_LOG` environment variable, when set, wins.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// HOST:PORT clients are told to connect to (default: the listen address).
    #[arg(long)]
    advertised_listener: Option<String>,
    /// Directory holding partition logs and cluster metadata.
    #[arg(long, default_value = "./ringfeed-data")]
    data_dir: PathBuf,
    /// Number of shards (default: one per online CPU).
    #[arg(long, conflicts_with = "cpus")]
    shards: Option<usize>,
    /// Comma-separated CPUs, one shard pinned to each (e.g. 2,3).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Busy-poll this many microseconds before an idle shard sleeps (0 = sleep at once).
    /// Trades a core's idle time for lower wake-up latency on dedicated hosts.
    #[arg(long, default_value_t = 0)]
    spin_before_park_us: u64,
    /// Partitions of an auto-created topic (Kafka's num.partitions).
    #[arg(long, default_value_t = 1)]
    default_partitions: i32,
    /// Do not create topics on first Metadata request (Kafka's auto.create.topics.enable=false).
    #[arg(long)]
    no_auto_create_topics: bool,
    /// Largest request frame accepted (socket.request.max.bytes).
    #[arg(long, default_value_t = Limits::default().request_frame_bytes_max)]
    request_max_bytes: usize,
    /// Default largest record batch (message.max.bytes); topics override with max.message.bytes.
    #[arg(long, default_value_t = Limits::default().message_bytes_max_default)]
    message_max_bytes: usize,
    /// group.initial.rebalance.delay.ms: how long the first rebalance of an empty consumer
    /// group waits for more members.
    #[arg(long, default_value_t = Limits::default().group_initial_rebalance_delay.as_millis() as u64)]
    group_initial_rebalance_delay_ms: u64,
    /// offsets.retention.minutes: committed offsets of an empty group expire after this.
    #[arg(long, default_value_t = Limits::default().offsets_retention.as_secs() / 60)]
    offsets_retention_minutes: u64,
    /// Commits to an offsets partition between checkpoints (bounds replay time at start).
    #[arg(long, default_value_t = Limits::default().offsets_checkpoint_records)]
    offsets_checkpoint_records: usize,
    /// max.connections: open client connections across all shards (lowered at start to what
    /// `RLIMIT_NOFILE` allows, two descriptors per connection).
    #[arg(long, default_value_t = Limits::default().connections_max)]
    max_connections: usize,
    /// max.connections.per.ip: open connections from one client address.
    #[arg(long, default_value_t = Limits::default().connections_per_ip_max)]
    max_connections_per_ip: usize,
    /// connections.max.idle.ms: close a connection that has sent nothing for this long.
    #[arg(long, default_value_t = Limits::default().connection_idle_max.as_millis() as u64)]
    connections_max_idle_ms: u64,
    /// Close a connection whose request frame has not arrived whole this long after its
    /// first byte (no Kafka equivalent; bounds clients that trickle a large frame).
    #[arg(long, default_value_t = Limits::default().request_read_timeout.as_millis() as u64)]
    request_read_timeout_ms: u64,
    /// queued.max.request.bytes, per shard: request bytes a shard holds in memory at once.
    #[arg(long, default_value_t = Limits::default().shard_inflight_request_bytes_max)]
    queued_max_request_bytes: usize,
    /// Bytes fallocated ahead of each partition's active segment (multiple of 4096).
    #[arg(long, default_value_t = Limits::default().segment_preallocate_bytes)]
    segment_preallocate_bytes: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_filter = match &cli.command {
        Command::Serve(args) => args.log_level.as_str(),
        Command::CheckData { .. } => "info",
        Command::Client(_) => "warn",
    };
    if let Err(error) = logging::init(log_filter) {
        eprintln!("ringfeed: {error}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::CheckData { dir } => check_data::run(&dir),
        Command::Client(command) => cli::run(command),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let options = ServeOptions {
        listen: args.listen,
        advertised_listener: args.advertised_listener,
        data_dir: args.data_dir,
        shards: args.shards,
        cpus: args.cpus,
        spin_before_park_us: args.spin_before_park_us,
        auto_create_topics: !args.no_auto_create_topics,
        default_partitions: args.default_partitions,
        limits: Limits {
            request_frame_bytes_max: args.request_max_bytes,
            message_bytes_max_default: args.message_max_bytes,
            group_initial_rebalance_delay: Duration::from_millis(
                args.group_initial_rebalance_delay_ms,
            ),
            offsets_retention: Duration::from_secs(args.offsets_retention_minutes * 60),
            offsets_checkpoint_records: args.offsets_checkpoint_records,
            segment_preallocate_bytes: args.segment_preallocate_bytes,
            connections_max: args.max_connections,
            connections_per_ip_max: args.max_connections_per_ip,
            connection_idle_max: Duration::from_millis(args.connections_max_idle_ms),
            request_read_timeout: Duration::from_millis(args.request_read_timeout_ms),
            shard_inflight_request_bytes_max: args.queued_max_request_bytes,
            ..Limits::default()
        },
        admin_listen: (args.admin_listen != "off").then_some(args.admin_listen),
    };
    match server::serve(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("ringfeed: {error}");
            ExitCode::FAILURE
        }
    }
}
