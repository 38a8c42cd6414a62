//! Results as people and tools read them: the human table, the JSON document, the `HdrHistogram`
//! percentile-distribution file, and the A/B comparison.
//!
//! JSON figure names carry their unit last (`throughput_mb_per_s`, `publish_latency_us_p99`)
//! so `ringfeed-perf report --broker FILE` pairs them with the machine's ceilings. Client-side
//! figures use `_ns_` on purpose: they are the bench's own cost, not broker figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::cli::{flag_name, Cli, Workload};
use crate::stats::{round3, LatencySummary, RoleStats, PERCENTILES};
use crate::system::Host;
use crate::workloads::RunResult;

pub const SCHEMA: &str = "ringfeed-bench/1";
pub const COMPARE_SCHEMA: &str = "ringfeed-bench/compare/1";
/// A client thread busier than this may be what limits the figure; the table says so.
const CLIENT_BUSY_FRACTION_WARN: f64 = 0.8;

/// The measured window: from the end of warm-up to the last measured acknowledgement or
/// receipt, or to the end of the requested duration when the role was still running then but
/// had nothing to do (a consumer at the tail with no producer).
fn measured_seconds(role: &RoleStats, result: &RunResult) -> f64 {
    let idle_until_ns = result
        .measure_end_ns
        .map_or(0, |end_ns| end_ns.min(role.stopped_ns));
    let end_ns = role.last_measured_ns.max(idle_until_ns);
    end_ns.saturating_sub(result.measure_start_ns) as f64 / 1e9
}

fn role_json(role: &RoleStats, result: &RunResult) -> Map<String, Value> {
    let seconds = measured_seconds(role, result);
    let per_s = |value: u64| {
        if seconds > 0.0 {
            value as f64 / seconds
        } else {
            0.0
        }
    };
    let mut out = Map::new();
    out.insert("messages".into(), role.messages.into());
    out.insert("bytes".into(), role.bytes.into());
    out.insert(
        "unmeasured_messages".into(),
        role.unmeasured_messages.into(),
    );
    out.insert("errors".into(), role.errors.into());
    out.insert("first_error".into(), role.first_error.clone().into());
    out.insert("seconds".into(), round3(seconds).into());
    out.insert(
        "throughput_msgs_per_s".into(),
        round3(per_s(role.messages)).into(),
    );
    out.insert(
        "throughput_mb_per_s".into(),
        round3(per_s(role.bytes) / 1e6).into(),
    );
    if !role.publish.is_empty() {
        LatencySummary::of(&role.publish).insert_into("publish_latency", &mut out);
    }
    if !role.end_to_end.is_empty() {
        LatencySummary::of(&role.end_to_end).insert_into("e2e_latency", &mut out);
    }
    out
}

/// The client's own cost: CPU per thread and codec time per message, so a client-bound
/// figure is never mistaken for a broker-bound one.
fn client_json(result: &RunResult) -> Value {
    let wall_s = result.wall.as_secs_f64();
    let roles = [result.produce.as_ref(), result.consume.as_ref()];
    let threads: Vec<_> = roles
        .iter()
        .flatten()
        .flat_map(|r| r.threads.clone())
        .collect();
    let busiest = threads.iter().map(|t| t.busy_fraction).fold(0.0, f64::max);
    let codec_ns_per_msg = |role: Option<&RoleStats>| {
        role.map(|r| {
            let messages = r.messages + r.unmeasured_messages;
            if messages == 0 {
                0.0
            } else {
                round3(r.codec_ns as f64 / messages as f64)
            }
        })
    };
    let mut out = json!({
        "process_cpu_s": round3(result.client_cpu.as_secs_f64()),
        "process_cpu_fraction_of_wall": round3(result.client_cpu.as_secs_f64() / wall_s.max(1e-9)),
        "busiest_thread_busy_fraction": busiest,
        "client_may_be_bottleneck": busiest > CLIENT_BUSY_FRACTION_WARN,
        "produce_codec_ns_per_msg": codec_ns_per_msg(result.produce.as_ref()),
        "consume_codec_ns_per_msg": codec_ns_per_msg(result.consume.as_ref()),
        "threads": threads,
    });
    if let Some(produce) = result.produce.as_ref().filter(|p| !p.send_delay.is_empty()) {
        for ((name, _), value_us) in PERCENTILES
            .iter()
            .zip(LatencySummary::of(&produce.send_delay).percentiles_us)
        {
            out[format!("send_delay_ns_{name}")] = round3(value_us * 1_000.0).into();
        }
        out["send_delay_ns_max"] = produce.send_delay.max().into();
    }
    out
}

/// One run as JSON: parameters, host, results per role, client and broker cost.
pub fn run_json(cli: &Cli, result: &RunResult) -> Value {
    let mut results = Map::new();
    if let Some(produce) = &result.produce {
        results.insert("produce".into(), Value::Object(role_json(produce, result)));
    }
    if let Some(consume) = &result.consume {
        results.insert("consume".into(), Value::Object(role_json(consume, result)));
    }
    let wall_s = result.wall.as_secs_f64();
    let mut parameters = serde_json::to_value(cli).expect("parameters serialize");
    parameters["bootstrap"] = result.bootstrap.clone().into();
    parameters["partitions"] = result.partitions.into();
    parameters["duration_s"] = cli.duration().map(|d| d.as_secs_f64()).into();
    parameters["rate_msgs_per_s"] = cli.rate().into();
    json!({
        "schema": SCHEMA,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "started_at_unix_s": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "host": Host::current(),
        "parameters": parameters,
        "results": results,
        "fill_messages": result.fill_messages,
        "wall_s": round3(wall_s),
        "deadline_hit": result.deadline_hit,
        "host_cpu_busy_other_percent": round3(result.other_busy_percent),
        "client": client_json(result),
        "broker": result.broker_cpu.map(|cpu| json!({
            "cpu_s": round3(cpu.as_secs_f64()),
            "cpu_fraction_of_wall": round3(cpu.as_secs_f64() / wall_s.max(1e-9)),
        })),
    })
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency_row(out: &mut String, label: &str, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        return;
    }
    let summary = LatencySummary::of(histogram);
    let _ = write!(out, "{label:<14}");
    for value in summary
        .percentiles_us
        .iter()
        .chain([&summary.max_us, &summary.mean_us])
    {
        let _ = write!(out, " {value:>10.1}");
    }
    let _ = writeln!(out, " {:>10}", thousands(summary.count as f64));
}

/// The table printed at the end of a run.
pub fn table(cli: &Cli, result: &RunResult) -> String {
    let mut out = String::new();
    let rate = cli
        .rate()
        .map_or("unlimited".into(), |r| format!("{} msg/s", thousands(r)));
    let _ = writeln!(
        out,
        "{} against {}  topic {} ({} partitions)  {} B messages  acks={}  batch {} B  linger {} ms  compression {}  rate {rate}",
        flag_name(cli.workload), result.bootstrap, cli.topic, result.partitions, cli.message_size_bytes,
        flag_name(cli.acks), cli.batch_size_bytes, cli.linger_ms, flag_name(cli.compression),
    );
    let _ = writeln!(
        out,
        "{:<14} {:>12} {:>12} {:>10} {:>8} {:>8}",
        "", "messages", "msg/s", "MB/s", "seconds", "errors"
    );
    for (label, role) in [("produce", &result.produce), ("consume", &result.consume)] {
        let Some(role) = role else { continue };
        let seconds = measured_seconds(role, result);
        let per_s = |v: u64| {
            if seconds > 0.0 {
                v as f64 / seconds
            } else {
                0.0
            }
        };
        let _ = writeln!(
            out,
            "{label:<14} {:>12} {:>12} {:>10.1} {seconds:>8.2} {:>8}",
            thousands(role.messages as f64),
            thousands(per_s(role.messages)),
            per_s(role.bytes) / 1e6,
            role.errors,
        );
        if let Some(error) = &role.first_error {
            let _ = writeln!(out, "  first error: {error}");
        }
    }
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency µs", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "count"
    );
    if let Some(produce) = &result.produce {
        latency_row(&mut out, "publish", &produce.publish);
    }
    if let Some(consume) = &result.consume {
        latency_row(&mut out, "end-to-end", &consume.end_to_end);
    }
    out.push_str(&client_line(result));
    out
}

fn client_line(result: &RunResult) -> String {
    let client = client_json(result);
    let wall_s = result.wall.as_secs_f64();
    let mut out = format!(
        "client: {:.2} CPU-s over {wall_s:.1} s wall; busiest thread {:.0}% busy; codec {} ns/msg produce, {} ns/msg consume",
        client["process_cpu_s"].as_f64().unwrap_or(0.0),
        client["busiest_thread_busy_fraction"].as_f64().unwrap_or(0.0) * 100.0,
        client["produce_codec_ns_per_msg"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
        client["consume_codec_ns_per_msg"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
    );
    if let Some(delay) = client["send_delay_ns_p99"].as_f64() {
        let _ = write!(out, "; send delay p99 {:.1} µs", delay / 1_000.0);
    }
    out.push('\n');
    if let Some(cpu) = result.broker_cpu {
        let _ = writeln!(
            out,
            "broker: {:.2} CPU-s ({:.0}% of one CPU)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / wall_s.max(1e-9) * 100.0
        );
    }
    let _ = writeln!(
        out,
        "host: {:.0}% of all CPU time went to other processes during the run",
        result.other_busy_percent
    );
    if client["client_may_be_bottleneck"].as_bool() == Some(true) {
        let _ = writeln!(out, "WARNING: a client thread was busy over {:.0}% of its run: these figures may be client-bound", CLIENT_BUSY_FRACTION_WARN * 100.0);
    }
    if result.deadline_hit {
        let _ = writeln!(
            out,
            "WARNING: the run hit --timeout; figures cover what finished"
        );
    }
    out
}

/// `HdrHistogram`'s percentile-distribution text (as `outputPercentileDistribution` writes
/// it), values in microseconds, so `HdrHistogram`'s plotters read it.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0_u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let value_us = step.value_iterated_to() as f64 / 1_000.0;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let _ = writeln!(
                out,
                "{value_us:>12.3} {quantile:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(out, "{value_us:>12.3} {quantile:>14.12} {total:>10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / 1_000.0,
        histogram.stdev() / 1_000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / 1_000.0,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

/// `dir/stem-suffix.ext` next to `path`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{suffix}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{suffix}"),
    };
    path.with_file_name(name)
}

/// Writes the histogram files `--histogram-file` asks for.
pub fn write_histograms(cli: &Cli, result: &RunResult, path: &Path) -> io::Result<()> {
    let publish = result
        .produce
        .as_ref()
        .map(|p| &p.publish)
        .filter(|h| !h.is_empty());
    let end_to_end = result
        .consume
        .as_ref()
        .map(|c| &c.end_to_end)
        .filter(|h| !h.is_empty());
    match (cli.workload, publish, end_to_end) {
        (Workload::E2e, publish, Some(end_to_end)) => {
            std::fs::write(path, percentile_distribution(end_to_end))?;
            if let Some(publish) = publish {
                std::fs::write(sibling(path, "publish"), percentile_distribution(publish))?;
            }
        }
        (_, Some(publish), _) => std::fs::write(path, percentile_distribution(publish))?,
        (_, None, Some(end_to_end)) => std::fs::write(path, percentile_distribution(end_to_end))?,
        _ => eprintln!(
            "ringfeed-bench: no latency was recorded; {} not written",
            path.display()
        ),
    }
    Ok(())
}

pub fn write_json(document: &Value, path: &Path) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(document).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

/// The numeric figures of a run's `results`, as `role.figure → value`.
pub fn result_figures(document: &Value) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    if let Some(results) = document["results"].as_object() {
        for (role, values) in results {
            for (name, value) in values.as_object().into_iter().flatten() {
                if let Some(number) = value.as_f64() {
                    figures.insert(format!("{role}.{name}"), number);
                }
            }
        }
    }
    figures
}

pub fn median_figures(runs: &[Value]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (name, value) in result_figures(run) {
            all.entry(name).or_default().push(value);
        }
    }
    all.into_iter()
        .map(|(name, mut values)| {
            values.sort_by(f64::total_cmp);
            (name, values[values.len() / 2])
        })
        .collect()
}

/// Figures compared side by side: throughput and latency, not counts.
fn is_compared(name: &str) -> bool {
    name.contains("_per_s") || name.contains("_us_")
}

/// The A/B document and table: medians of each broker's runs and the ratio B / A.
pub fn compare(cli: &Cli, a_runs: &[Value], b_runs: &[Value]) -> (Value, String) {
    let (a, b) = (median_figures(a_runs), median_figures(b_runs));
    let (a_name, b_name) = (
        cli.bootstrap.as_str(),
        cli.compare.as_deref().unwrap_or("?"),
    );
    let mut ratios = Map::new();
    let mut table = format!(
        "{:<34} {:>14} {:>14} {:>8}\n",
        "figure (median)", a_name, b_name, "B/A"
    );
    for (name, &a_value) in a.iter().filter(|(n, _)| is_compared(n)) {
        let Some(&b_value) = b.get(name) else {
            continue;
        };
        let ratio = if a_value == 0.0 {
            f64::NAN
        } else {
            b_value / a_value
        };
        let _ = writeln!(
            table,
            "{name:<34} {a_value:>14.1} {b_value:>14.1} {ratio:>8.3}"
        );
        if ratio.is_finite() {
            ratios.insert(format!("{name}_ratio"), round3(ratio).into());
        }
    }
    let document = json!({
        "schema": COMPARE_SCHEMA,
        "rounds": cli.rounds,
        "a": { "bootstrap": a_name, "median": a, "runs": a_runs },
        "b": { "bootstrap": b_name, "median": b, "runs": b_runs },
        "ratio_b_over_a": ratios,
    });
    (document, table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, record_ns};

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
    }

    #[test]
    fn distribution_has_header_rows_and_footer() {
        let mut histogram = new_histogram();
        for us in 1..=100 {
            record_ns(&mut histogram, us * 1_000);
        }
        let text = percentile_distribution(&histogram);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(text.contains("#[Max     =      100.") || text.contains("#[Max     =      100"));
        assert!(text.contains("Total count    =          100]"));
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last_row.contains("1.000000000000"), "{last_row}");
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("/t/lat.hgrm"), "publish"),
            Path::new("/t/lat-publish.hgrm")
        );
        assert_eq!(
            sibling(Path::new("lat"), "publish"),
            Path::new("lat-publish")
        );
    }

    #[test]
    fn medians_and_ratios() {
        let run = |mbps: f64| json!({"results": {"produce": {"throughput_mb_per_s": mbps, "messages": 5}}});
        let cli = <Cli as clap::Parser>::parse_from(["ringfeed-bench", "--compare", "b:1"]);
        let (document, table) = compare(&cli, &[run(100.0), run(300.0), run(200.0)], &[run(100.0)]);
        assert_eq!(
            document["a"]["median"]["produce.throughput_mb_per_s"],
            200.0
        );
        assert_eq!(
            document["ratio_b_over_a"]["produce.throughput_mb_per_s_ratio"],
            0.5
        );
        assert!(table.contains("0.500"));
        assert!(!table.contains("produce.messages"));
    }
}
