//! What old clients cost (issue 15 item 1): throughput of `message_format::down_convert`
//! (the stored v2 batches of a Fetch v0-3 answer as a v0/v1 `MessageSet`) and
//! `message_format::up_convert` (a Produce v0-2 `MessageSet` as one v2 batch), for 1 MiB of
//! 1 KiB log-line-like records. Only requests at those versions pay it: v4+ fetches and v3+
//! produces never enter the module. Plain `main` (no harness), one thread, thread CPU time.
//!
//! Run: `cargo bench -p ringfeed-broker --bench message_format` (figures in
//! docs/BENCHMARKS.md). MB/s counts the records' value bytes.

use std::time::Duration;

use bytes::Bytes;
use ringfeed_broker::message_format::{down_convert, up_convert, DownConversion};
use ringfeed_broker::recompress::{recompress, Codec};

mod support;

use support::{batch_of, cpu_rounds, values, Values, RECORD_BYTES};

const RECORDS: usize = 1024;
const MEASURE: Duration = Duration::from_secs(2);
const WORDS: [&str; 6] = [
    "GET",
    "POST",
    "/api/v1/orders",
    "status=200",
    "latency_ms=",
    "region=eu-west-1",
];

/// (MB/s of value bytes, CPU µs per 1 MiB) of `run`, per CPU-second.
fn measure(run: impl FnMut() -> usize) -> (f64, f64) {
    let (rounds, seconds) = cpu_rounds(MEASURE, run);
    let bytes = (RECORDS * RECORD_BYTES) as f64;
    (
        f64::from(rounds) * bytes / seconds / 1e6,
        seconds * 1e6 / f64::from(rounds),
    )
}

fn main() {
    let plain = batch_of(&values(RECORDS, Values::Text(&WORDS)));
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
