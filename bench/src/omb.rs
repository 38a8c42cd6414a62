//! `OpenMessaging` Benchmark (OMB) workload files, mapped onto the bench's own workloads so a
//! published OMB workload can be rerun against a Kafka-protocol broker.
//!
//! The mapping, field by field (docs/BENCHMARKS.md has the same table for users):
//! - honoured: `name` (reported), `partitionsPerTopic`, `messageSize`, `producersPerTopic`,
//!   `consumerPerSubscription`, `producerRate` (> 0: fixed total rate), `testDurationMinutes`,
//!   `warmupDurationMinutes`, `subscriptionsPerTopic` 0 (produce only) or 1 (end-to-end),
//!   `keyDistributor: NO_KEY`;
//! - approximated, with a warning: `topics` > 1 (one topic with as many partitions,
//!   producers and consumers as all of them), `subscriptionsPerTopic` > 1 (one subscription:
//!   no fan-out), `producerRate: 0` (as fast as acknowledged, not OMB's search for the
//!   highest sustainable rate), `consumerBacklogSizeGB` > 0 (the bench's consume workload:
//!   the backlog is written first, unmeasured, then read with no producer running);
//! - ignored, with a warning: `payloadFile`, `useRandomizedPayloads`, `randomBytesRatio`,
//!   `randomizedPayloadPoolSize` (the bench writes its own incompressible payload), other
//!   key distributors (the bench sends no keys), `backlogDrainRatio`;
//! - anything else is refused: a misspelt key silently ignored would measure something else.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::cli::{Cli, StartFrom, Workload};

/// A workload file is a few hundred bytes; anything this large is not one.
const FILE_BYTES_MAX: u64 = 1 << 20;
/// Bounds on the counts a file may ask for, before `Cli::validate` checks the products.
const TOPICS_MAX: u32 = 1_000;
const MINUTES_MAX: f64 = 24.0 * 60.0;
/// OMB's default warm-up when the file names none.
const WARMUP_MINUTES_DEFAULT: f64 = 1.0;

/// One OMB workload file. Counts are `u32` so a negative value is a parse error.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OmbWorkload {
    pub name: String,
    pub topics: u32,
    pub partitions_per_topic: u32,
    #[serde(default)]
    pub key_distributor: KeyDistributor,
    pub message_size: usize,
    #[serde(default)]
    pub use_randomized_payloads: Option<bool>,
    #[serde(default)]
    pub random_bytes_ratio: Option<f64>,
    #[serde(default)]
    pub randomized_payload_pool_size: Option<u64>,
    #[serde(default)]
    pub payload_file: Option<String>,
    pub subscriptions_per_topic: u32,
    pub producers_per_topic: u32,
    pub consumer_per_subscription: u32,
    /// Total messages per second over all producers; 0 asks OMB to search for the highest
    /// sustainable rate.
    pub producer_rate: f64,
    #[serde(default, rename = "consumerBacklogSizeGB")]
    pub consumer_backlog_size_gb: f64,
    #[serde(default)]
    pub backlog_drain_ratio: Option<f64>,
    /// OMB's are whole minutes; fractions are accepted here so a smoke test can be short.
    pub test_duration_minutes: f64,
    #[serde(default)]
    pub warmup_duration_minutes: Option<f64>,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyDistributor {
    #[default]
    NoKey,
    KeyRoundRobin,
    RandomNano,
}

/// Reads and parses a workload file; errors name the file and, for YAML, the line.
pub fn load(path: &Path) -> Result<OmbWorkload, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(format!(
            "{}: larger than {FILE_BYTES_MAX} bytes; not a workload file",
            path.display()
        ));
    }
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<OmbWorkload, String> {
    serde_norway::from_str(text).map_err(|e| {
        let message = e.to_string();
        if message.contains("unknown field") {
            format!(
                "{message} (ringfeed-bench refuses keys it does not know rather than ignore them)"
            )
        } else {
            message
        }
    })
}

impl OmbWorkload {
    /// Sets the bench's parameters from the file; returns a warning for every field that is
    /// approximated or ignored.
    pub fn apply(&self, cli: &mut Cli) -> Result<Vec<String>, String> {
        self.check_bounds()?;
        let mut warnings = Vec::new();
        let topics = self.topics;
        if topics > 1 {
            warnings.push(format!(
                "topics: {topics}: the bench drives one topic; running one with {topics}x the \
                 partitions, producers and consumers"
            ));
        }
        cli.partitions = i32::try_from(u64::from(topics) * u64::from(self.partitions_per_topic))
            .map_err(|_| "topics x partitionsPerTopic is too large".to_string())?;
        cli.message_size_bytes = self.message_size;
        cli.producers = (topics as usize) * (self.producers_per_topic as usize);
        cli.consumers = (topics as usize) * (self.consumer_per_subscription as usize).max(1);
        cli.warmup_s = self
            .warmup_duration_minutes
            .unwrap_or(WARMUP_MINUTES_DEFAULT)
            * 60.0;
        cli.duration_s = Some(self.test_duration_minutes * 60.0);
        cli.messages = None;
        if self.producer_rate > 0.0 {
            cli.rate_msgs_per_s = Some(self.producer_rate);
        } else {
            cli.rate_msgs_per_s = None;
            warnings.push(
                "producerRate: 0: producing as fast as the broker acknowledges, not searching \
                 for the highest sustainable rate as OMB does"
                    .into(),
            );
        }
        cli.workload = match self.subscriptions_per_topic {
            0 => Workload::Produce,
            _ => Workload::E2e,
        };
        if self.subscriptions_per_topic > 1 {
            warnings.push(format!(
                "subscriptionsPerTopic: {}: one subscription is run (the consumers share the \
                 partitions); fan-out to several is not supported",
                self.subscriptions_per_topic
            ));
        }
        if self.consumer_backlog_size_gb > 0.0 {
            self.apply_backlog(cli, &mut warnings);
        }
        self.warn_ignored(&mut warnings);
        Ok(warnings)
    }

    /// A backlog is the bench's consume workload: fill the topic (unmeasured), then read it.
    fn apply_backlog(&self, cli: &mut Cli, warnings: &mut Vec<String>) {
        let backlog_bytes = self.consumer_backlog_size_gb * 1e9;
        let messages = (backlog_bytes / self.message_size as f64).ceil() as u64;
        cli.workload = Workload::Consume;
        cli.from = StartFrom::Earliest;
        cli.messages = Some(messages.max(1));
        cli.duration_s = None;
        cli.warmup_s = 0.0;
        warnings.push(format!(
            "consumerBacklogSizeGB: {}: writing the {messages}-message backlog first \
             (unmeasured), then draining it with no producer running; testDurationMinutes, \
             warm-up and producerRate do not apply",
            self.consumer_backlog_size_gb
        ));
    }

    fn warn_ignored(&self, warnings: &mut Vec<String>) {
        if self.key_distributor != KeyDistributor::NoKey {
            warnings.push(format!(
                "keyDistributor: {:?}: ignored; the bench sends records without keys",
                self.key_distributor
            ));
        }
        let payload_fields = [
            ("payloadFile", self.payload_file.is_some()),
            (
                "useRandomizedPayloads",
                self.use_randomized_payloads.is_some(),
            ),
            ("randomBytesRatio", self.random_bytes_ratio.is_some()),
            (
                "randomizedPayloadPoolSize",
                self.randomized_payload_pool_size.is_some(),
            ),
        ];
        for (field, _) in payload_fields.iter().filter(|(_, set)| *set) {
            warnings.push(format!(
                "{field}: ignored; the bench writes its own incompressible payload of \
                 messageSize bytes"
            ));
        }
        if self.backlog_drain_ratio.is_some() {
            warnings.push("backlogDrainRatio: ignored".into());
        }
    }

    fn check_bounds(&self) -> Result<(), String> {
        if !(1..=TOPICS_MAX).contains(&self.topics) || self.partitions_per_topic == 0 {
            return Err(format!(
                "topics must be 1..={TOPICS_MAX} and partitionsPerTopic at least 1"
            ));
        }
        if self.producers_per_topic == 0 {
            return Err("producersPerTopic must be at least 1".into());
        }
        if self.subscriptions_per_topic > 0 && self.consumer_per_subscription == 0 {
            return Err("consumerPerSubscription must be at least 1 with a subscription".into());
        }
        let minutes_in_range = |m: f64| (0.0..=MINUTES_MAX).contains(&m);
        if self.test_duration_minutes <= 0.0
            || !minutes_in_range(self.test_duration_minutes)
            || !minutes_in_range(self.warmup_duration_minutes.unwrap_or(0.0))
        {
            return Err(format!(
                "testDurationMinutes must be above 0 and the durations at most {MINUTES_MAX} minutes"
            ));
        }
        // NaN fails every range check, so it is refused here too.
        if !(0.0..1e9).contains(&self.producer_rate)
            || !(0.0..1e6).contains(&self.consumer_backlog_size_gb)
        {
            return Err(
                "producerRate must be 0..1e9 and consumerBacklogSizeGB 0..1e6, not negative".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const FULL: &str = "
name: 1 topic, 6 partitions, 100 B at 10k msg/s
topics: 1
partitionsPerTopic: 6
keyDistributor: NO_KEY
messageSize: 100
subscriptionsPerTopic: 1
consumerPerSubscription: 2
producersPerTopic: 2
producerRate: 10000
consumerBacklogSizeGB: 0
testDurationMinutes: 5
warmupDurationMinutes: 1
";

    fn cli() -> Cli {
        Cli::parse_from(["ringfeed-bench"])
    }

    #[test]
    fn a_full_file_maps_onto_an_end_to_end_run_without_warnings() {
        let workload = parse(FULL).unwrap();
        assert_eq!(workload.name, "1 topic, 6 partitions, 100 B at 10k msg/s");
        let mut cli = cli();
        let warnings = workload.apply(&mut cli).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cli.workload, Workload::E2e);
        assert_eq!(cli.partitions, 6);
        assert_eq!(cli.message_size_bytes, 100);
        assert_eq!((cli.producers, cli.consumers), (2, 2));
        assert_eq!(cli.rate(), Some(10_000.0));
        assert_eq!(cli.duration_s, Some(300.0));
        assert!((cli.warmup_s - 60.0).abs() < 1e-9);
        cli.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = format!("{FULL}producerRateTypo: 5\n");
        let error = parse(&text).unwrap_err();
        assert!(error.contains("producerRateTypo"), "{error}");
        assert!(error.contains("refuses keys"), "{error}");
    }

    #[test]
    fn missing_required_keys_and_negative_counts_are_errors() {
        let without_size = FULL.replace("messageSize: 100\n", "");
        assert!(parse(&without_size).unwrap_err().contains("messageSize"));
        let negative = FULL.replace("topics: 1", "topics: -1");
        assert!(parse(&negative).is_err());
        let bad_key = FULL.replace("NO_KEY", "BY_HASH");
        assert!(parse(&bad_key).is_err());
    }

    #[test]
    fn approximations_and_ignored_fields_warn() {
        let text = FULL
            .replace("topics: 1", "topics: 2")
            .replace("subscriptionsPerTopic: 1", "subscriptionsPerTopic: 3")
            .replace("producerRate: 10000", "producerRate: 0")
            .replace("NO_KEY", "KEY_ROUND_ROBIN")
            + "payloadFile: payload/payload-100b.data\n";
        let mut cli = cli();
        let warnings = parse(&text).unwrap().apply(&mut cli).unwrap();
        let all = warnings.join("\n");
        for field in [
            "topics",
            "subscriptionsPerTopic",
            "producerRate",
            "keyDistributor",
            "payloadFile",
        ] {
            assert!(all.contains(field), "no warning for {field}: {all}");
        }
        assert_eq!(warnings.len(), 5, "{all}");
        // Two topics become one topic with both topics' partitions and clients.
        assert_eq!(cli.partitions, 12);
        assert_eq!((cli.producers, cli.consumers), (4, 4));
        assert_eq!(cli.rate(), None);
    }

    #[test]
    fn no_subscription_is_a_produce_run_and_a_backlog_is_a_consume_run() {
        let produce_only = FULL.replace("subscriptionsPerTopic: 1", "subscriptionsPerTopic: 0");
        let mut cli = cli();
        parse(&produce_only).unwrap().apply(&mut cli).unwrap();
        assert_eq!(cli.workload, Workload::Produce);

        let backlog = FULL.replace("consumerBacklogSizeGB: 0", "consumerBacklogSizeGB: 0.001");
        let cli = cli_default_then(&backlog);
        assert_eq!(cli.workload, Workload::Consume);
        assert_eq!(cli.messages, Some(10_000)); // 1 MB of 100 B messages
        assert_eq!(cli.duration(), None);
        cli.validate().unwrap();
    }

    fn cli_default_then(text: &str) -> Cli {
        let mut cli = cli();
        let warnings = parse(text).unwrap().apply(&mut cli).unwrap();
        assert!(warnings.iter().any(|w| w.contains("consumerBacklogSizeGB")));
        cli
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (from, to) in [
            ("testDurationMinutes: 5", "testDurationMinutes: 0"),
            ("producersPerTopic: 2", "producersPerTopic: 0"),
            ("partitionsPerTopic: 6", "partitionsPerTopic: 0"),
            ("producerRate: 10000", "producerRate: -1"),
            ("topics: 1", "topics: 100000"),
        ] {
            let text = FULL.replace(from, to);
            let result = parse(&text).and_then(|w| w.apply(&mut cli()));
            assert!(result.is_err(), "{to} accepted");
        }
    }

    #[test]
    fn the_shipped_example_files_parse_and_map() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let mut cli = cli();
                load(&path).unwrap().apply(&mut cli).unwrap();
                cli.validate().unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 2, "example workloads found: {seen}");
    }
}
