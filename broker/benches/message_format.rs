//! What old clients cost (issue 15 item 1): throughput of `message_format::down_convert`
//! (the stored v2 batches of a Fetch v0-3 answer as a v0/v1 `MessageSet`) and
//! `message_format::up_convert` (a Produce v0-2 `MessageSet` as one v2 batch), for 1 MiB of
//! 1 KiB log-line-like records. Only requests at those versions pay it: v4+ fetches and v3+
//! produces never enter the module. Plain `main` (no harness), one thread, thread CPU time.
//!
//! Run: `cargo bench -p ringfeed-broker --bench message_format` (figures in
//! docs/BENCHMARKS.md). MB/s counts the records' value bytes.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use ringfeed_broker::message_format::{down_convert, up_convert, DownConversion};
use ringfeed_broker::recompress::{recompress, Codec};
use ringfeed_broker::storage::batch::build;

const RECORD_BYTES: usize = 1024;
const RECORDS: usize = 1024;
const MEASURE: Duration = Duration::from_secs(2);

fn values() -> Vec<Vec<u8>> {
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
        "status=200",
        "latency_ms=",
        "region=eu-west-1",
    ];
    (0..RECORDS)
        .map(|_| {
            let mut value = Vec::with_capacity(RECORD_BYTES);
            while value.len() < RECORD_BYTES {
                let word = words[(next() % words.len() as u64) as usize];
                value.extend_from_slice(word.as_bytes());
                value.extend_from_slice((next() % 100_000).to_string().as_bytes());
                value.push(b' ');
            }
            value.truncate(RECORD_BYTES);
            value
        })
        .collect()
}

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

/// (MB/s of value bytes, CPU µs per 1 MiB) of `run`, per CPU-second.
fn measure(mut run: impl FnMut() -> usize) -> (f64, f64) {
    black_box(run());
    let started = thread_cpu_time();
    let mut rounds = 0_u32;
    while thread_cpu_time().saturating_sub(started) < MEASURE {
        black_box(run());
        rounds += 1;
    }
    let seconds = thread_cpu_time().saturating_sub(started).as_secs_f64();
    let bytes = (RECORDS * RECORD_BYTES) as f64;
    (
        f64::from(rounds) * bytes / seconds / 1e6,
        seconds * 1e6 / f64::from(rounds),
    )
}

fn main() {
    let values = values();
    let records: Vec<build::Record<'_>> = values
        .iter()
        .enumerate()
        .map(|(index, value)| build::Record {
            key: None,
            value: Some(value),
            timestamp_ms: 1_700_000_000_000 + index as i64,
        })
        .collect();
    let plain = build::batch(&records);
    println!("| conversion | stored / sent codec | MB/s per CPU | CPU µs per MiB |");
    println!("| --- | --- | ---: | ---: |");
    for codec in [Codec::None, Codec::Lz4, Codec::Snappy, Codec::Gzip] {
        let stored: Bytes = recompress(plain.clone(), codec).expect("compresses");
        for magic in [1_i8, 0] {
            let rules = DownConversion {
                magic,
                fetch_offset: 0,
                max_bytes: usize::MAX,
                whole_first_message: true,
            };
            let (mb_per_s, micros) = measure(|| {
                down_convert(std::slice::from_ref(&stored), rules).expect("converts")[0].len()
            });
            println!(
                "| down-convert v2 → magic {magic} | {codec:?} | {mb_per_s:.0} | {micros:.0} |"
            );
        }
    }
    // The set an old producer sends: the down-converted records, uncompressed.
    let set = down_convert(
        std::slice::from_ref(&plain),
        DownConversion {
            magic: 1,
            fetch_offset: 0,
            max_bytes: usize::MAX,
            whole_first_message: true,
        },
    )
    .expect("converts")
    .remove(0);
    let (mb_per_s, micros) = measure(|| up_convert(&set, usize::MAX).expect("converts").len());
    println!("| up-convert magic 1 → v2 | None | {mb_per_s:.0} | {micros:.0} |");
}
