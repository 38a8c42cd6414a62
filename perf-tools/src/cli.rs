//! Command-line interface. Flag names are part of the contract: CEILINGS.md and the bench
//! script against them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::disk::DiskOptions;
use crate::net::NetOptions;

#[derive(Debug, Parser)]
#[command(
    name = "ringfeed-perf",
    version,
    about = "Measures the machine's disk and loopback ceilings"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// `O_DIRECT` sequential write bandwidth (`io_uring`) and write+fdatasync latency.
    Disk(DiskArgs),
    /// Loopback TCP ping-pong round trips and single-stream bandwidth.
    Net(NetArgs),
    /// Broker figures as fractions of measured ceilings.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct DiskArgs {
    /// Directory to measure (the broker's data directory); a scratch file is created and removed.
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes per write, a multiple of 4096 (suffixes: 16KiB, 1MiB).
    #[arg(long = "block-size", value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub block_size_bytes: u64,
    /// Writes kept in flight during the bandwidth phase.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub queue_depth: u32,
    /// Bytes written (and preallocated) by the bandwidth phase.
    #[arg(long, value_name = "BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    pub total_bytes: u64,
    /// Write+fdatasync pairs timed by the latency phase.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub sync_samples: u32,
    /// Each phase stops (and says so) after this many seconds.
    #[arg(long = "max-seconds", value_name = "SECS", default_value_t = 60)]
    pub phase_seconds_max: u64,
    /// Write every figure and the parameters to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl DiskArgs {
    pub fn options(&self) -> DiskOptions {
        DiskOptions {
            dir: self.dir.clone(),
            block_size_bytes: self.block_size_bytes,
            queue_depth: self.queue_depth,
            total_bytes: self.total_bytes,
            sync_samples: self.sync_samples,
            phase_seconds_max: self.phase_seconds_max,
        }
    }
}

#[derive(Debug, Args)]
pub struct NetArgs {
    /// Bytes per ping and per pong.
    #[arg(long = "message-size", value_name = "BYTES", default_value = "100", value_parser = parse_bytes)]
    pub message_size_bytes: u64,
    /// Measured round trips.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub round_trips: u64,
    /// Unrecorded round trips first.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub warmup_round_trips: u64,
    /// Busy-poll non-blocking sockets instead of blocking reads (needs two free cores).
    #[arg(long)]
    pub spin: bool,
    /// Core for the client thread (default: the first available).
    #[arg(long, value_name = "N")]
    pub client_cpu: Option<usize>,
    /// Core for the server thread (default: the second available, else the first).
    #[arg(long, value_name = "N")]
    pub server_cpu: Option<usize>,
    /// Bytes per `write()` in the bandwidth phase.
    #[arg(long = "stream-write-size", value_name = "BYTES", default_value = "1MiB", value_parser = parse_bytes)]
    pub stream_write_bytes: u64,
    /// The bandwidth phase stops after this many bytes…
    #[arg(long = "stream-bytes", value_name = "BYTES", default_value = "64GiB", value_parser = parse_bytes)]
    pub stream_bytes_max: u64,
    /// …or after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub stream_seconds: u64,
    /// The ping-pong phase stops (and says so) after this many seconds.
    #[arg(long = "max-seconds", value_name = "SECS", default_value_t = 60)]
    pub phase_seconds_max: u64,
    /// Write every figure and the parameters to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl NetArgs {
    /// Resolves default cores against the cores this process may use.
    pub fn options(&self, cpus: &[usize]) -> NetOptions {
        let first = cpus.first().copied().unwrap_or(0);
        let second = cpus.get(1).copied().unwrap_or(first);
        NetOptions {
            message_size_bytes: usize::try_from(self.message_size_bytes).unwrap_or(usize::MAX),
            round_trips: self.round_trips,
            warmup_round_trips: self.warmup_round_trips,
            spin: self.spin,
            client_cpu: self.client_cpu.unwrap_or(first),
            server_cpu: self.server_cpu.unwrap_or(second),
            stream_write_bytes: usize::try_from(self.stream_write_bytes).unwrap_or(usize::MAX),
            stream_bytes_max: self.stream_bytes_max,
            stream_seconds: self.stream_seconds,
            phase_seconds_max: self.phase_seconds_max,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A `ringfeed-perf disk|net --json` file; repeat for each ceiling.
    #[arg(long, value_name = "FILE.json", required = true)]
    pub ceilings: Vec<PathBuf>,
    /// The broker's figures (any JSON; numeric fields named `*_mb_per_s` / `*_us_pNN` are used).
    #[arg(long, value_name = "FILE.json")]
    pub broker: PathBuf,
    /// Write the comparison as JSON too.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Parses a byte count: a plain integer or one with a binary suffix (`16KiB`, `16K`, `1MiB`,
/// `1M`, `2GiB`, `2G`); case-insensitive, so `16k` works too.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => return Err(format!("unknown size suffix {other:?} (use KiB, MiB, GiB)")),
    };
    count
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} overflows 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let command_line = std::iter::once("ringfeed-perf").chain(args.iter().copied());
        Cli::try_parse_from(command_line).expect("parses").command
    }

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("16384"), Ok(16384));
        assert_eq!(parse_bytes("16KiB"), Ok(16384));
        assert_eq!(parse_bytes("16k"), Ok(16384));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("1.5M").is_err());
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("99999999999999G").is_err());
    }

    #[test]
    fn disk_defaults_and_overrides() {
        let Command::Disk(args) = parse(&["disk", "--dir", "/data"]) else {
            panic!()
        };
        assert_eq!(args.block_size_bytes, 1 << 20);
        assert_eq!(args.queue_depth, 4);
        assert_eq!(args.json, None);
        let Command::Disk(args) = parse(&[
            "disk",
            "--dir",
            "/data",
            "--block-size",
            "16384",
            "--queue-depth",
            "1",
            "--total-bytes",
            "256MiB",
            "--sync-samples",
            "50",
            "--json",
            "out.json",
        ]) else {
            panic!()
        };
        let options = args.options();
        assert_eq!(options.block_size_bytes, 16384);
        assert_eq!(options.queue_depth, 1);
        assert_eq!(options.total_bytes, 256 << 20);
        assert_eq!(options.sync_samples, 50);
        assert_eq!(args.json, Some(PathBuf::from("out.json")));
    }

    #[test]
    fn disk_requires_dir() {
        assert!(Cli::try_parse_from(["ringfeed-perf", "disk"]).is_err());
    }

    #[test]
    fn net_flags_and_cpu_defaults() {
        let Command::Net(args) = parse(&["net"]) else {
            panic!()
        };
        assert!(!args.spin);
        let options = args.options(&[4, 5, 6]);
        assert_eq!((options.client_cpu, options.server_cpu), (4, 5));
        assert_eq!(args.options(&[3]).server_cpu, 3);
        let Command::Net(args) = parse(&[
            "net",
            "--message-size",
            "1KiB",
            "--round-trips",
            "10",
            "--spin",
            "--client-cpu",
            "1",
            "--server-cpu",
            "0",
        ]) else {
            panic!()
        };
        let options = args.options(&[0, 1]);
        assert_eq!(options.message_size_bytes, 1024);
        assert_eq!(options.round_trips, 10);
        assert!(options.spin);
        assert_eq!((options.client_cpu, options.server_cpu), (1, 0));
    }

    #[test]
    fn report_needs_ceilings_and_broker() {
        assert!(Cli::try_parse_from(["ringfeed-perf", "report", "--broker", "b.json"]).is_err());
        let Command::Report(args) = parse(&[
            "report",
            "--ceilings",
            "d.json",
            "--ceilings",
            "n.json",
            "--broker",
            "b.json",
        ]) else {
            panic!()
        };
        assert_eq!(args.ceilings.len(), 2);
    }
}
