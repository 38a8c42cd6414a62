//! Broker figures as fractions of the machine's ceilings.
//!
//! The broker side is any JSON document (the bench's `--json`): every numeric leaf becomes a
//! figure named by its path (`results.produce.throughput_mb_per_s`). Figures are matched to
//! ceilings by the unit at the end of their name, which is why names carry units last:
//! - `…_mb_per_s` → a fraction of each disk `write_mb_per_s` and loopback `stream_mb_per_s`;
//! - `…_us_pNN` / `…_us_max` (or `_ms_`) → a multiple of the loopback `rtt_us_pNN` and the disk
//!   `write_fdatasync_latency_us_pNN` at the same percentile, when the ceiling has it.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::document::{format_bytes, CeilingDocument};
use crate::summary::Figures;

/// A broker document with more numbers than this is not a bench result.
const BROKER_FIGURES_MAX: usize = 100_000;
/// Deeper nesting than this is not a bench result either (and bounds the recursion).
const BROKER_DEPTH_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `ratio` is broker / ceiling: 0.7 means 70% of what the hardware allows.
    Throughput,
    /// `ratio` is broker / ceiling: 2.0 means twice the hardware's floor.
    Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub broker_figure: String,
    /// As found in the broker document, in the unit its name says.
    pub broker_value: f64,
    pub ceiling: String,
    pub ceiling_figure: String,
    pub ceiling_value: f64,
    pub kind: Kind,
    pub ratio: f64,
}

/// Reads any JSON document and flattens its numeric leaves into `path → value`.
pub fn read_broker_figures(path: &Path) -> io::Result<Figures> {
    let text = std::fs::read_to_string(path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    let mut figures = Figures::new();
    flatten("", &value, 0, &mut figures).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(figures)
}

fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    depth: usize,
    out: &mut Figures,
) -> Result<(), String> {
    if depth > BROKER_DEPTH_MAX {
        return Err(format!(
            "nested deeper than {BROKER_DEPTH_MAX} at {prefix:?}"
        ));
    }
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        serde_json::Value::Number(number) => {
            if out.len() == BROKER_FIGURES_MAX {
                return Err(format!("more than {BROKER_FIGURES_MAX} numbers"));
            }
            out.insert(prefix.to_string(), number.as_f64().unwrap_or(f64::NAN));
        }
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                flatten(&join(key), child, depth + 1, out)?;
            }
        }
        serde_json::Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                flatten(&join(&index.to_string()), child, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A latency figure's unit scale to microseconds and its percentile suffix (`p99`, `max`).
fn latency_suffix(name: &str) -> Option<(f64, &str)> {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    for (unit, scale_to_us) in [("_us_", 1.0), ("_ms_", 1_000.0)] {
        if let Some(at) = leaf.rfind(unit) {
            let suffix = &leaf[at + unit.len()..];
            let is_percentile = suffix
                .strip_prefix('p')
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            if is_percentile || suffix == "max" {
                return Some((scale_to_us, suffix));
            }
        }
    }
    None
}

fn label(ceiling: &CeilingDocument) -> String {
    let bytes = |name| {
        ceiling
            .parameter_u64(name)
            .map_or_else(|| "?".to_string(), format_bytes)
    };
    match ceiling.probe.as_str() {
        "disk" => format!(
            "disk {} qd{} {}",
            bytes("block_size_bytes"),
            ceiling.parameter_u64("queue_depth").unwrap_or(0),
            ceiling.host.filesystem.as_deref().unwrap_or("?")
        ),
        "net" => {
            let spin = ceiling
                .parameters
                .get("spin")
                .and_then(serde_json::Value::as_bool)
                == Some(true);
            format!(
                "loopback {} {}",
                bytes("message_size_bytes"),
                if spin { "spin" } else { "block" }
            )
        }
        other => other.to_string(),
    }
}

/// Every (broker figure, ceiling) pair whose units match, in broker-figure order.
pub fn compare(broker: &Figures, ceilings: &[CeilingDocument]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, &value) in broker {
        let leaf = name.rsplit('.').next().unwrap_or(name);
        for ceiling in ceilings {
            // `comparable` is the broker value in the ceiling's unit (ms latencies → µs).
            let (kind, ceiling_figure, comparable) = if leaf.ends_with("_mb_per_s") {
                let figure = if ceiling.probe == "disk" {
                    "write_mb_per_s"
                } else {
                    "stream_mb_per_s"
                };
                (Kind::Throughput, figure.to_string(), value)
            } else if let Some((scale_to_us, suffix)) = latency_suffix(name) {
                let figure = if ceiling.probe == "disk" {
                    "write_fdatasync_latency"
                } else {
                    "rtt"
                };
                (
                    Kind::Latency,
                    format!("{figure}_us_{suffix}"),
                    value * scale_to_us,
                )
            } else {
                continue;
            };
            let Some(&ceiling_value) = ceiling.figures.get(&ceiling_figure) else {
                continue;
            };
            if ceiling_value <= 0.0 {
                continue;
            }
            rows.push(Row {
                broker_figure: name.clone(),
                broker_value: value,
                ceiling: label(ceiling),
                ceiling_figure,
                ceiling_value,
                kind,
                ratio: comparable / ceiling_value,
            });
        }
    }
    rows
}

pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no broker figure matched a ceiling (names must end in _mb_per_s or _us_pNN)\n"
            .to_string();
    }
    let width = rows
        .iter()
        .map(|r| r.broker_figure.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let mut out = format!(
        "{:<width$}  {:>12}  {:<28} {:>12}  {:>10}\n",
        "broker", "value", "ceiling", "value", "ratio"
    );
    for row in rows {
        let ratio = match row.kind {
            Kind::Throughput => format!("{:.1}%", row.ratio * 100.0),
            Kind::Latency => format!("{:.2}x", row.ratio),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>12}  {:<28} {:>12}  {:>10}",
            row.broker_figure,
            format_value(row.broker_value),
            row.ceiling,
            format_value(row.ceiling_value),
            ratio
        );
    }
    out
}

/// Enough digits that a 0.012 ms latency does not print as 0.0.
fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

pub fn write_json(rows: &[Row], path: &Path) -> io::Result<()> {
    let document = serde_json::json!({ "schema": "ringfeed-perf/report/1", "rows": rows });
    let mut text = serde_json::to_string_pretty(&document).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Host;

    fn ceiling(
        probe: &str,
        parameters: &serde_json::Value,
        figures: &[(&str, f64)],
    ) -> CeilingDocument {
        let figures = figures.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        CeilingDocument::new(
            probe,
            Host::current(
                Some("ext4".into()),
                &crate::document::OtherCpuSampler::start(),
            ),
            parameters,
            figures,
        )
    }

    #[test]
    fn flattens_nested_numbers_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(
            &path,
            r#"{"workload":"produce","results":{"throughput_mb_per_s":350.5,"runs":[1,2]}}"#,
        )
        .unwrap();
        let figures = read_broker_figures(&path).unwrap();
        let names: Vec<&str> = figures.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "results.runs.0",
                "results.runs.1",
                "results.throughput_mb_per_s"
            ]
        );
    }

    #[test]
    fn too_deep_is_rejected() {
        let mut deep = String::from("1");
        for _ in 0..20 {
            deep = format!("{{\"a\":{deep}}}");
        }
        let value: serde_json::Value = serde_json::from_str(&deep).unwrap();
        assert!(flatten("", &value, 0, &mut Figures::new()).is_err());
    }

    #[test]
    fn latency_suffixes() {
        assert_eq!(latency_suffix("e2e.latency_us_p99"), Some((1.0, "p99")));
        assert_eq!(
            latency_suffix("publish_latency_ms_p999"),
            Some((1_000.0, "p999"))
        );
        assert_eq!(latency_suffix("latency_us_max"), Some((1.0, "max")));
        assert_eq!(latency_suffix("latency_us_mean"), None);
        assert_eq!(latency_suffix("throughput_mb_per_s"), None);
    }

    #[test]
    fn ratios_against_matching_ceilings() {
        let disk = ceiling(
            "disk",
            &serde_json::json!({"block_size_bytes": 1_048_576, "queue_depth": 4}),
            &[
                ("write_mb_per_s", 1000.0),
                ("write_fdatasync_latency_us_p99", 500.0),
            ],
        );
        let net = ceiling(
            "net",
            &serde_json::json!({"message_size_bytes": 100, "spin": true}),
            &[("stream_mb_per_s", 4000.0), ("rtt_us_p99", 20.0)],
        );
        let broker: Figures = [
            ("produce_mb_per_s", 700.0),
            ("e2e_latency_ms_p99", 0.04),
            ("messages", 5.0),
        ]
        .iter()
        .map(|&(k, v)| (k.to_string(), v))
        .collect();
        let rows = compare(&broker, &[disk, net]);
        assert_eq!(rows.len(), 4);
        let find = |figure: &str| rows.iter().find(|r| r.ceiling_figure == figure).unwrap();
        assert!((find("write_mb_per_s").ratio - 0.7).abs() < 1e-9);
        assert!((find("stream_mb_per_s").ratio - 0.175).abs() < 1e-9);
        assert!((find("rtt_us_p99").ratio - 2.0).abs() < 1e-9);
        // The ratio is unit-converted; the value shown stays in the broker's own unit.
        assert!((find("rtt_us_p99").broker_value - 0.04).abs() < 1e-12);
        assert!((find("write_fdatasync_latency_us_p99").ratio - 0.08).abs() < 1e-9);
        assert_eq!(find("write_mb_per_s").ceiling, "disk 1 MiB qd4 ext4");
        assert_eq!(find("rtt_us_p99").ceiling, "loopback 100 B spin");
        assert!(table(&rows).contains("70.0%"));
        assert!(table(&rows).contains("2.00x"));
        assert!(table(&rows).contains("0.0400"), "{}", table(&rows));
    }
}
