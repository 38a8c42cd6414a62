//! The tail cache: the most recent batches of one partition, as stored (baseOffset
//! rewritten), so consumers at the tail are served without IO. Bounded in bytes; the oldest
//! batches go first.

use std::collections::VecDeque;

use bytes::Bytes;

pub struct CachedBatch {
    pub base_offset: i64,
    /// One past the batch's last offset.
    pub next_offset: i64,
    pub bytes: Bytes,
}

pub struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes_total: usize,
    bytes_max: usize,
}

impl TailCache {
    pub fn new(bytes_max: usize) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            bytes_total: 0,
            bytes_max,
        }
    }

    /// Whether a batch of `bytes` is worth a copy into the cache: one that would be evicted
    /// after a few more like it is not (the batch stays readable from the segment).
    pub fn admits(&self, bytes: usize) -> bool {
        bytes <= self.bytes_max / 8
    }

    /// Adds the newest batch. The cache stays contiguous: the caller clears it when a batch
    /// is not admitted, so no read can skip over a missing batch.
    pub fn push(&mut self, batch: CachedBatch) {
        // Reads find a batch by binary search and serve runs of them: the cache must hold
        // consecutive batches, each right after the one before.
        if let Some(newest) = self.batches.back() {
            assert_eq!(
                batch.base_offset, newest.next_offset,
                "the tail cache must stay contiguous"
            );
        }
        assert!(
            batch.next_offset > batch.base_offset,
            "a batch holds a record"
        );
        self.bytes_total += batch.bytes.len();
        self.batches.push_back(batch);
        self.evict_over_budget();
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes_total = 0;
    }

    /// Empties the cache and gives back its memory (a dormant log keeps no batches).
    pub fn release(&mut self) {
        self.clear();
        self.batches = VecDeque::new();
    }

    pub fn set_bytes_max(&mut self, bytes_max: usize) {
        self.bytes_max = bytes_max;
        self.evict_over_budget();
    }

    fn evict_over_budget(&mut self) {
        while self.bytes_total > self.bytes_max {
            let Some(evicted) = self.batches.pop_front() else {
                break;
            };
            self.bytes_total -= evicted.bytes.len();
        }
    }

    /// Whole batches from the one containing `offset`, below `visible_end`, until adding one
    /// more would pass `max_bytes` (the first is returned whatever its size). `None` when
    /// the cache does not reach back to `offset`.
    pub fn read(&self, offset: i64, max_bytes: usize, visible_end: i64) -> Option<Vec<Bytes>> {
        let first = self.batches.front()?;
        if offset < first.base_offset {
            return None;
        }
        let start = self.batches.partition_point(|b| b.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0;
        for batch in self.batches.range(start..) {
            if batch.base_offset >= visible_end
                || (!out.is_empty() && total + batch.bytes.len() > max_bytes)
            {
                break;
            }
            total += batch.bytes.len();
            out.push(batch.bytes.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, count: i64, len: usize) -> CachedBatch {
        CachedBatch {
            base_offset: base,
            next_offset: base + count,
            bytes: Bytes::from(vec![0; len]),
        }
    }

    #[test]
    fn serves_from_the_containing_batch_and_respects_bounds() {
        let mut cache = TailCache::new(1000);
        cache.push(batch(0, 10, 300));
        cache.push(batch(10, 10, 300));
        cache.push(batch(20, 10, 300));
        assert_eq!(cache.read(15, 10_000, 30).map(|v| v.len()), Some(2));
        assert_eq!(
            cache.read(15, 10, 30).map(|v| v.len()),
            Some(1),
            "first batch always"
        );
        assert_eq!(
            cache.read(15, 10_000, 20).map(|v| v.len()),
            Some(1),
            "visibility bound"
        );
        cache.push(batch(30, 10, 300)); // evicts the first
        assert!(cache.read(5, 10_000, 40).is_none());
        assert_eq!(cache.read(10, 10_000, 40).map(|v| v.len()), Some(3));
    }
}
