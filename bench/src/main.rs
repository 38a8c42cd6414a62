//! `ringfeed-bench`: a Kafka-protocol load generator built for measurement. It speaks the
//! protocol itself (the `kafka-protocol` codec the broker uses) on pinned client threads, so
//! every timestamp is taken where the bytes leave or arrive, and it reports the client's own
//! cost next to every figure.

mod cli;
mod client;
mod consume;
mod omb;
mod plot;
mod produce;
mod progress;
mod report;
mod stats;
mod system;
mod topic;
mod workloads;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

use crate::cli::Cli;
use crate::plot::Series;
use crate::workloads::RunResult;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(path) = cli.workload_file.clone() {
        let applied = omb::load(&path).and_then(|workload| {
            eprintln!("ringfeed-bench: OMB workload \"{}\"", workload.name);
            workload.apply(&mut cli)
        });
        match applied {
            Ok(warnings) => {
                for warning in warnings {
                    eprintln!("ringfeed-bench: warning: {}: {warning}", path.display());
                }
            }
            Err(message) => {
                eprintln!("ringfeed-bench: {message}");
                return ExitCode::from(2);
            }
        }
    }
    if let Err(message) = cli.validate() {
        eprintln!("ringfeed-bench: {message}");
        return ExitCode::from(2);
    }
    let outcome = match cli.compare.clone() {
        None => run_single(&cli),
        Some(other) => run_compare(&cli, &other),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("ringfeed-bench: {error}");
            ExitCode::from(1)
        }
    }
}

/// A run is good when it measured something and nothing failed.
fn is_clean(result: &RunResult) -> bool {
    let roles = [result.produce.as_ref(), result.consume.as_ref()];
    let roles: Vec<_> = roles.into_iter().flatten().collect();
    !result.deadline_hit && roles.iter().all(|r| r.errors == 0 && r.messages > 0)
}

fn run_single(cli: &Cli) -> std::io::Result<bool> {
    let result = workloads::run(cli, &cli.bootstrap)?;
    print!("{}", report::table(cli, &result));
    let document = report::run_json(cli, &result);
    if let Some(path) = &cli.json {
        report::write_json(&document, path)?;
    }
    if let Some(path) = &cli.histogram_file {
        report::write_histograms(cli, &result, path)?;
    }
    if let Some(path) = &cli.plot {
        write_plot(cli, &[("", &result)], path)?;
    }
    Ok(is_clean(&result))
}

/// A/B mode: A, B, A, B, ... for `--rounds`, so drift on the host hits both brokers alike.
fn run_compare(cli: &Cli, other: &str) -> std::io::Result<bool> {
    let mut documents: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
    let mut last: [Option<RunResult>; 2] = [None, None];
    let mut clean = true;
    for round in 0..cli.rounds {
        for (side, bootstrap) in [cli.bootstrap.as_str(), other].into_iter().enumerate() {
            eprintln!(
                "ringfeed-bench: round {} of {} against {bootstrap}",
                round + 1,
                cli.rounds
            );
            let result = workloads::run(cli, bootstrap)?;
            print!("{}", report::table(cli, &result));
            clean &= is_clean(&result);
            documents[side].push(report::run_json(cli, &result));
            last[side] = Some(result);
        }
    }
    let (document, table) = report::compare(cli, &documents[0], &documents[1]);
    println!("\n{table}");
    if let Some(path) = &cli.json {
        report::write_json(&document, path)?;
    }
    let [Some(a), Some(b)] = &last else {
        return Ok(false);
    };
    if let Some(path) = &cli.histogram_file {
        report::write_histograms(cli, a, path)?;
        report::write_histograms(cli, b, &report::sibling(path, "b"))?;
    }
    if let Some(path) = &cli.plot {
        write_plot(cli, &[(cli.bootstrap.as_str(), a), (other, b)], path)?;
    }
    Ok(clean)
}

/// One line per latency kind per broker.
fn write_plot(cli: &Cli, runs: &[(&str, &RunResult)], path: &Path) -> std::io::Result<()> {
    let mut series = Vec::new();
    for &(name, result) in runs {
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name} ")
        };
        if let Some(produce) = result.produce.as_ref().filter(|p| !p.publish.is_empty()) {
            series.push(Series {
                label: format!("{prefix}publish"),
                histogram: &produce.publish,
            });
        }
        if let Some(consume) = result.consume.as_ref().filter(|c| !c.end_to_end.is_empty()) {
            series.push(Series {
                label: format!("{prefix}end-to-end"),
                histogram: &consume.end_to_end,
            });
        }
    }
    let rate = cli
        .rate()
        .map_or("unlimited".to_string(), |r| format!("{r} msg/s"));
    let title = format!(
        "ringfeed-bench {}: {} B messages, acks={}, rate {rate}",
        cli::flag_name(cli.workload),
        cli.message_size_bytes,
        cli::flag_name(cli.acks)
    );
    std::fs::write(path, plot::svg(&title, &series))
}
