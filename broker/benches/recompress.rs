//! What a topic's `compression.type` costs the shard that receives the produce request:
//! throughput of `recompress::apply_codec_rules` per target codec, against the `producer`
//! passthrough, for batches of 1 KiB records. Plain `main` (no harness), one thread.
//!
//! Run: `cargo bench -p ringfeed-broker --bench recompress [-- FILTER]` (figures in
//! docs/BENCHMARKS.md); FILTER keeps the rows whose text contains it.
//! Input MB/s counts the producer's uncompressed record bytes, so rows compare directly.
//! Time is the thread's CPU time, not wall time: on a shared host the wall clock measures
//! the neighbours (the figures are per CPU-second of the shard that does the work).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use ringfeed_broker::recompress::{apply_codec_rules, recompress, Codec, CompressionType};
use ringfeed_broker::storage::batch::build;

const RECORD_BYTES: usize = 1024;
/// How long each row measures (after one warm-up pass).
const MEASURE: Duration = Duration::from_secs(2);

/// Deterministic values: `text` is log-line-like (compresses 3-5x), `random` does not compress.
fn values(count: usize, text: bool) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = [
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
    (0..count)
        .map(|_| {
            let mut value = Vec::with_capacity(RECORD_BYTES);
            while value.len() < RECORD_BYTES {
                if text {
                    let word = words[(next() % words.len() as u64) as usize];
                    value.extend_from_slice(word.as_bytes());
                    value.extend_from_slice((next() % 100_000).to_string().as_bytes());
                    value.push(b' ');
                } else {
                    value.extend_from_slice(&next().to_le_bytes());
                }
            }
            value.truncate(RECORD_BYTES);
            value
        })
        .collect()
}

fn batch_of(values: &[Vec<u8>]) -> Bytes {
    let records: Vec<build::Record<'_>> = values
        .iter()
        .enumerate()
        .map(|(index, value)| build::Record {
            key: None,
            value: Some(value),
            timestamp_ms: 1_700_000_000_000 + index as i64,
        })
        .collect();
    build::batch(&records)
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    assert_eq!(
        result, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// (input MB/s, microseconds per batch, stored bytes per batch), per CPU-second.
fn measure(batch: &Bytes, input_bytes: usize, compression: CompressionType) -> (f64, f64, usize) {
    let run = || {
        apply_codec_rules(vec![batch.clone()], 9, compression)
            .expect("a valid batch")
            .pop()
            .expect("one batch")
    };
    let stored_bytes = run().len();
    let started = thread_cpu_time();
    let mut rounds = 0_u32;
    while thread_cpu_time().saturating_sub(started) < MEASURE {
        black_box(run());
        rounds += 1;
    }
    let seconds = (thread_cpu_time().saturating_sub(started)).as_secs_f64();
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
            let values = values(records, text);
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
