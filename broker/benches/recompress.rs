//! What a topic's `compression.type` costs the shard that receives the produce request:
//! throughput of `recompress::apply_codec_rules` per target codec, against the `producer`
//! passthrough, for batches of 1 KiB records. Plain `main` (no harness), one thread.
//!
//! Run: `cargo bench -p ringfeed-broker --bench recompress [-- FILTER]` (figures in
//! docs/BENCHMARKS.md); FILTER keeps the rows whose text contains it.
//! Input MB/s counts the producer's uncompressed record bytes, so rows compare directly.
//! Time is the thread's CPU time, not wall time: on a shared host the wall clock measures
//! the neighbours (the figures are per CPU-second of the shard that does the work).

use std::time::Duration;

use bytes::Bytes;
use ringfeed_broker::recompress::{apply_codec_rules, recompress, Codec, CompressionType};

mod support;

use support::{batch_of, cpu_rounds, values, Values, RECORD_BYTES};

/// How long each row measures (after one warm-up pass).
const MEASURE: Duration = Duration::from_secs(2);
/// The text values: log-line-like words and numbers (compress 3-5x).
const WORDS: [&str; 13] = [
    "GET",
    "POST",
    "/api/v1/orders",
    "/api/v1/users",
    "status=200",
    "status=404",
    "user_id=",
    "latency_ms=",
    "region=eu-west-1",
    "region=us-east-2",
    "trace=",
    "ok",
    "retry",
];

/// (input MB/s, microseconds per batch, stored bytes per batch), per CPU-second.
fn measure(batch: &Bytes, input_bytes: usize, compression: CompressionType) -> (f64, f64, usize) {
    let run = || {
        apply_codec_rules(vec![batch.clone()], 9, compression)
            .expect("a valid batch")
            .pop()
            .expect("one batch")
    };
    let stored_bytes = run().len();
    let (rounds, seconds) = cpu_rounds(MEASURE, run);
    let mb_per_s = f64::from(rounds) * input_bytes as f64 / seconds / 1e6;
    (mb_per_s, seconds * 1e6 / f64::from(rounds), stored_bytes)
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    println!("| records | batch | producer sent | topic compression.type | input MB/s per CPU | CPU µs per batch | stored bytes |");
    println!("| --- | --- | --- | --- | ---: | ---: | ---: |");
    for (kind, text) in [("text", true), ("random", false)] {
        for records in [64, 1024] {
            let values = values(
                records,
                if text {
                    Values::Text(&WORDS)
                } else {
                    Values::Random
                },
            );
            let input_bytes = records * RECORD_BYTES;
            let plain = batch_of(&values);
            let zstd_sent = recompress(plain.clone(), Codec::Zstd).expect("compresses");
            let rows = [
                (&plain, "none", "producer"),
                (&plain, "none", "uncompressed"),
                (&plain, "none", "lz4"),
                (&plain, "none", "snappy"),
                (&plain, "none", "zstd"),
                (&plain, "none", "gzip"),
                (&zstd_sent, "zstd", "producer"),
                (&zstd_sent, "zstd", "lz4"),
            ];
            for (batch, sent, topic) in rows {
                let label = format!(
                    "{records} × 1 KiB {kind} | {} KiB | {sent} | {topic}",
                    input_bytes / 1024
                );
                if !label.contains(&filter) {
                    continue;
                }
                let compression = CompressionType::parse(topic).expect("a known name");
                let (mb_per_s, micros, stored) = measure(batch, input_bytes, compression);
                println!("| {label} | {mb_per_s:.0} | {micros:.0} | {stored} |");
            }
        }
    }
}
