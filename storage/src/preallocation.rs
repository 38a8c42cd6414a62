//! How far ahead of its data the active segment is fallocated: steps that adapt to the
//! partition's write rate.
//!
//! Preallocation exists so that appends change no size metadata: the active segment's file is
//! fallocated (keep-size off) past the data, and `O_DIRECT` page writes land inside that range
//! without growing the file. A fixed step (Redpanda's `segment_fallocation_step`) makes every
//! open partition hold a whole step of unwritten disk: 1,000 idle partitions held 32 GB at the
//! 32 MiB default. So a new or recovered segment starts with a small step, each step that a
//! partition used up within [`FAST_FILL_MS`] doubles the next one (a busy partition reaches
//! the maximum after a few steps, and then preallocates exactly as before), and each
//! [`SLOW_FILL_MS`] a step took to fill (or sat unfilled when the segment rolled) halves the
//! next one. The configured step (`LogConfig::preallocate_step_bytes`,
//! `ringfeed.segment.preallocate.bytes`) is the maximum.
//!
//! Everything here is pure arithmetic on bytes and milliseconds, so the step sequence of a
//! write pattern can be tested without a disk or a clock.

use crate::io::align_up;

/// The first step of a new or recovered segment: one write buffer's worth (the default
/// `write_chunk_bytes`). 1,000 idle partitions then hold 256 MiB of unwritten space.
pub const STEP_MIN_BYTES: u64 = 256 << 10;

/// A step used up sooner than this after it was taken means the partition writes at least
/// step/second: the next step doubles, so a partition at a steady rate settles on a step
/// that lasts one to twenty seconds (about 20 fallocates a minute at most past the minimum).
pub const FAST_FILL_MS: i64 = 1_000;

/// Each full period of this length a step took to fill halves the next step: a partition
/// that slowed down gives back its reservation at the next step or roll.
pub const SLOW_FILL_MS: i64 = 10_000;

/// The preallocation of one active segment: how far its file is allocated and the step
/// that got it there. Owned by the log's state, changed only with the append gate held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Preallocation {
    /// The file is allocated (and sized) up to here; appends below it change no metadata.
    pub end_bytes: u64,
    /// The size of the last step taken.
    pub step_bytes: u64,
    /// When the last step was taken (milliseconds, the log's clock).
    pub step_taken_ms: i64,
}

/// The smallest step for a configured maximum: [`STEP_MIN_BYTES`], or the maximum if that
/// is smaller (tests and small hosts configure steps of a few pages).
pub fn step_min_bytes(step_max_bytes: u64) -> u64 {
    STEP_MIN_BYTES.min(step_max_bytes)
}

/// The step that follows one of `step_bytes` taken `elapsed_ms` ago. `filled` says the step
/// was used up (an append needs more room); `false` is a roll judging an unfinished step.
/// Always within `[step_min_bytes(max), max]` and page-aligned when `max` is.
pub fn next_step_bytes(step_bytes: u64, filled: bool, elapsed_ms: i64, step_max_bytes: u64) -> u64 {
    // A clock stepped backwards reads as "just now": a used-up step then doubles, which
    // costs at most one larger reservation.
    let elapsed_ms = elapsed_ms.max(0);
    let next = if filled && elapsed_ms < FAST_FILL_MS {
        step_bytes.saturating_mul(2)
    } else {
        // At most 63 halvings; more would shift out every bit anyway.
        let halvings = (elapsed_ms / SLOW_FILL_MS).min(63);
        step_bytes >> halvings
    };
    align_up_saturating(next).clamp(step_min_bytes(step_max_bytes), step_max_bytes)
}

/// The file length to fallocate so that `needed_bytes` of data fit with a step to spare.
/// Never below what the append needs, whatever the step.
pub fn target_bytes(needed_bytes: u64, step_bytes: u64) -> u64 {
    align_up_saturating(needed_bytes).saturating_add(step_bytes)
}

fn align_up_saturating(value: u64) -> u64 {
    if value > u64::MAX - crate::io::PAGE_BYTES as u64 {
        crate::io::align_down(value)
    } else {
        align_up(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 32 << 20;

    /// Steps taken by a writer at a steady `bytes_per_ms`, starting a fresh segment at
    /// `now_ms = 0` and appending `batch_bytes` at a time until `total_bytes`.
    fn steps_of_steady_writer(bytes_per_ms: u64, batch_bytes: u64, total_bytes: u64) -> Vec<u64> {
        let mut state = Preallocation {
            end_bytes: target_bytes(0, step_min_bytes(MAX)),
            step_bytes: step_min_bytes(MAX),
            step_taken_ms: 0,
        };
        let mut steps = vec![state.step_bytes];
        let mut appended = 0;
        while appended < total_bytes {
            let needed = appended + batch_bytes;
            let now_ms = (needed / bytes_per_ms) as i64;
            if needed > state.end_bytes {
                let step =
                    next_step_bytes(state.step_bytes, true, now_ms - state.step_taken_ms, MAX);
                state = Preallocation {
                    end_bytes: target_bytes(needed, step),
                    step_bytes: step,
                    step_taken_ms: now_ms,
                };
                steps.push(step);
            }
            appended = needed;
        }
        steps
    }

    #[test]
    fn a_fast_writer_doubles_up_to_the_maximum_and_stays_there() {
        // 100 MB/s in 64 KiB batches: every step fills in well under a second.
        let steps = steps_of_steady_writer(100_000, 64 << 10, 256 << 20);
        let mib = |s: &u64| s >> 10;
        assert_eq!(
            steps.iter().map(mib).take(10).collect::<Vec<_>>(),
            [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 32768, 32768],
            "KiB"
        );
        assert!(steps[7..].iter().all(|&s| s == MAX));
    }

    #[test]
    fn a_slow_writer_keeps_the_smallest_step() {
        // 10 KB/s: a 256 KiB step lasts 26 s, so it never grows (and cannot shrink).
        let steps = steps_of_steady_writer(10, 4 << 10, 4 << 20);
        assert!(steps.len() > 10);
        assert!(steps.iter().all(|&s| s == STEP_MIN_BYTES), "{steps:?}");
    }

    #[test]
    fn a_steady_writer_settles_where_a_step_lasts_one_to_twenty_seconds() {
        // 1 MB/s: steps grow to 1-2 MiB (one step lasts 1-2 s) and stop there.
        let steps = steps_of_steady_writer(1_000, 16 << 10, 200 << 20);
        let settled = *steps.last().expect("steps");
        assert_eq!(settled, 1 << 20, "{steps:?}");
        assert!(
            steps.windows(2).all(|w| w[1] >= w[0]),
            "never shrinks at a steady rate"
        );
    }

    #[test]
    fn a_writer_that_slows_down_gives_its_reservation_back() {
        assert_eq!(next_step_bytes(MAX, true, 10_000, MAX), MAX / 2);
        assert_eq!(next_step_bytes(MAX, true, 35_000, MAX), MAX / 8);
        // A roll after an idle day starts the next segment at the minimum.
        assert_eq!(next_step_bytes(MAX, false, 86_400_000, MAX), STEP_MIN_BYTES);
        // An unfinished step judged at a busy roll is kept, not doubled.
        assert_eq!(next_step_bytes(MAX / 4, false, 10, MAX), MAX / 4);
    }

    #[test]
    fn small_maximums_and_odd_clocks() {
        assert_eq!(step_min_bytes(4096), 4096);
        assert_eq!(next_step_bytes(4096, true, 0, 4096), 4096);
        assert_eq!(
            next_step_bytes(0, true, 0, 0),
            0,
            "step 0: fallocate only the data"
        );
        assert_eq!(target_bytes(1, 0), 4096);
        assert_eq!(
            next_step_bytes(STEP_MIN_BYTES, true, -5_000, MAX),
            2 * STEP_MIN_BYTES
        );
        assert_eq!(next_step_bytes(MAX, true, i64::MAX, MAX), STEP_MIN_BYTES);
        assert_eq!(target_bytes(u64::MAX - 10, MAX), u64::MAX);
    }

    /// Random write patterns (batch sizes, pauses, rolls) against random page-multiple
    /// maximums: every step stays within `[min, max]` and page-aligned, every fallocate covers
    /// the append that asked for it, and no fallocate reserves more than a maximum step past it.
    #[test]
    fn steps_stay_bounded_and_cover_every_append() {
        let mut rng = crate::sim::SeededRng::new(1);
        for _ in 0..200 {
            let max = 4096 * rng.below(16 << 10);
            let min = step_min_bytes(max);
            let mut state = Preallocation {
                end_bytes: target_bytes(0, min),
                step_bytes: min,
                step_taken_ms: 0,
            };
            let mut appended = 0u64;
            let mut now_ms = 0i64;
            for _ in 0..500 {
                now_ms += [0, 1, 50, 2_000, 30_000][rng.below(5) as usize];
                if rng.below(50) == 0 {
                    // A roll: the unfinished step is judged and the new segment starts empty.
                    let step =
                        next_step_bytes(state.step_bytes, false, now_ms - state.step_taken_ms, max);
                    assert!((min..=max).contains(&step));
                    state = Preallocation {
                        end_bytes: step,
                        step_bytes: step,
                        step_taken_ms: now_ms,
                    };
                    appended = 0;
                    continue;
                }
                let needed = appended + 1 + rng.below((1 << 20) + 12);
                if needed > state.end_bytes {
                    let step =
                        next_step_bytes(state.step_bytes, true, now_ms - state.step_taken_ms, max);
                    let target = target_bytes(needed, step);
                    assert!(
                        (min..=max).contains(&step),
                        "step {step} outside [{min}, {max}]"
                    );
                    assert_eq!(step % 4096, 0);
                    assert!(target >= needed, "the fallocate covers the append");
                    assert!(
                        target - align_up(needed) <= max,
                        "at most one maximum step ahead"
                    );
                    state = Preallocation {
                        end_bytes: target,
                        step_bytes: step,
                        step_taken_ms: now_ms,
                    };
                }
                appended = needed;
            }
        }
    }
}
