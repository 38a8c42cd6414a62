//! What the CPU-time benchmarks share: deterministic record values, a v2 batch of them, and
//! a measuring loop on the thread's CPU clock. Each bench program includes it with
//! `mod support;` (a bench is its own crate, so not every bench uses every item).
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use ringfeed_broker::storage::batch::build;

pub const RECORD_BYTES: usize = 1024;

/// What the values look like.
#[derive(Clone, Copy)]
pub enum Values<'a> {
    /// Log-line-like text from these words and numbers (compresses 3-5x).
    Text(&'a [&'a str]),
    /// Pseudo-random bytes (do not compress).
    Random,
}

/// `count` values of `RECORD_BYTES`, the same on every run (a fixed xorshift seed).
pub fn values(count: usize, kind: Values<'_>) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let mut value = Vec::with_capacity(RECORD_BYTES);
            while value.len() < RECORD_BYTES {
                match kind {
                    Values::Text(words) => {
                        let word = words[(next() % words.len() as u64) as usize];
                        value.extend_from_slice(word.as_bytes());
                        value.extend_from_slice((next() % 100_000).to_string().as_bytes());
                        value.push(b' ');
                    }
                    Values::Random => value.extend_from_slice(&next().to_le_bytes()),
                }
            }
            value.truncate(RECORD_BYTES);
            value
        })
        .collect()
}

/// One uncompressed v2 batch of `values`, timestamps one millisecond apart.
pub fn batch_of(values: &[Vec<u8>]) -> Bytes {
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
pub fn thread_cpu_time() -> Duration {
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

/// Runs `run` once to warm up, then repeatedly for `budget` of this thread's CPU time:
/// (rounds, CPU seconds they took). CPU time, not wall time: on a shared host the wall
/// clock measures the neighbours.
pub fn cpu_rounds<T>(budget: Duration, mut run: impl FnMut() -> T) -> (u32, f64) {
    black_box(run());
    let started = thread_cpu_time();
    let mut rounds = 0_u32;
    while thread_cpu_time().saturating_sub(started) < budget {
        black_box(run());
        rounds += 1;
    }
    (
        rounds,
        thread_cpu_time().saturating_sub(started).as_secs_f64(),
    )
}
