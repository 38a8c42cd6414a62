//! `ringfeed-perf`: measures the machine's ceilings. See `docs/CEILINGS.md` for the commands
//! and the figures on the reference machine.

use std::io;
use std::process::ExitCode;

use clap::Parser;

use ringfeed_perf::cli::{Cli, Command, DiskArgs, NetArgs, ReportArgs};
use ringfeed_perf::document::{
    format_bytes, latency_table, CeilingDocument, Host, OtherCpuSampler,
};
use ringfeed_perf::{disk, net, report};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Disk(args) => run_disk(args),
        Command::Net(args) => run_net(args),
        Command::Report(args) => run_report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringfeed-perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_disk(args: &DiskArgs) -> io::Result<()> {
    let options = args.options();
    let sampler = OtherCpuSampler::start();
    let result = disk::run(&options)?;
    println!(
        "disk {}  ({})  block {}  queue depth {}",
        options.dir.display(),
        result.filesystem,
        format_bytes(options.block_size_bytes),
        options.queue_depth
    );
    println!(
        "O_DIRECT sequential write: {:.1} MB/s  ({} in {:.2} s)",
        result.write_mb_per_s(),
        format_bytes(result.write_bytes),
        result.write_elapsed.as_secs_f64()
    );
    let queued = format!("write (qd {})", options.queue_depth);
    print!(
        "{}",
        latency_table(&[
            (queued.as_str(), &result.write_latency),
            ("write (qd 1, sync run)", &result.sync_write_latency),
            ("fdatasync", &result.sync_fdatasync_latency),
            ("write+fdatasync", &result.write_fdatasync_latency),
        ])
    );
    if result.stopped_by_time {
        println!(
            "note: a phase hit --max-seconds {} and stopped early",
            options.phase_seconds_max
        );
    }
    if let Some(path) = &args.json {
        let host = Host::current(Some(result.filesystem.clone()), &sampler);
        CeilingDocument::new("disk", host, &options, result.figures()).write(path)?;
    }
    Ok(())
}

fn run_net(args: &NetArgs) -> io::Result<()> {
    let options = args.options(&net::available_cpus());
    if options.spin && options.client_cpu == options.server_cpu {
        eprintln!("warning: --spin with client and server on one core measures the scheduler");
    }
    let sampler = OtherCpuSampler::start();
    let result = net::run(&options)?;
    println!(
        "loopback TCP  message {}  {}  client cpu {}  server cpu {}",
        format_bytes(options.message_size_bytes as u64),
        if options.spin { "spin" } else { "blocking" },
        options.client_cpu,
        options.server_cpu
    );
    print!("{}", latency_table(&[("round trip", &result.rtt)]));
    println!(
        "single stream: {:.1} MB/s  ({} in {:.2} s, {} writes)",
        result.stream_mb_per_s(),
        format_bytes(result.stream_bytes),
        result.stream_elapsed.as_secs_f64(),
        format_bytes(options.stream_write_bytes as u64)
    );
    if result.stopped_by_time {
        println!(
            "note: ping-pong hit --max-seconds {} and stopped early",
            options.phase_seconds_max
        );
    }
    if let Some(path) = &args.json {
        let host = Host::current(None, &sampler);
        CeilingDocument::new("net", host, &options, result.figures()).write(path)?;
    }
    Ok(())
}

fn run_report(args: &ReportArgs) -> io::Result<()> {
    let ceilings = args
        .ceilings
        .iter()
        .map(|path| CeilingDocument::read(path))
        .collect::<io::Result<Vec<_>>>()?;
    let broker = report::read_broker_figures(&args.broker)?;
    let rows = report::compare(&broker, &ceilings);
    print!("{}", report::table(&rows));
    if let Some(path) = &args.json {
        report::write_json(&rows, path)?;
    }
    Ok(())
}
