//! The tail cache: the most recent batches of one partition, as stored (baseOffset
//! rewritten), so consumers at the tail are served without IO. Bounded in bytes per
//! partition; the oldest batches go first.
//!
//! The partitions of a shard also share one budget ([`ShardTailCache`]): a per-partition
//! bound alone lets a shard with a thousand busy partitions hold a thousand times it (4 GiB
//! at the default 4 MiB), where a few hot partitions would have used the same memory better.
//! Over the shard's budget, the oldest batch of the whole shard goes first: every cache
//! keeps its batches oldest first, so the shard's oldest batch is the front of one of them,
//! and the shard keeps each cache's front batch ordered by age.
//!
//! Ownership: a [`ShardTailCache`] and every [`TailCache`] in it live on one shard (`Rc`,
//! `RefCell`); a partition's log owns its `TailCache` handle. Borrows last one method call
//! and call out to nothing, so no log's cache is borrowed while another's is used.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

pub struct CachedBatch {
    pub base_offset: i64,
    /// One past the batch's last offset.
    pub next_offset: i64,
    pub bytes: Bytes,
}

/// A batch in the cache, with its place in the shard's order of arrival.
struct Held {
    batch: CachedBatch,
    age: u64,
}

/// One partition's batches, oldest first, contiguous in offsets.
#[derive(Default)]
struct Batches {
    held: VecDeque<Held>,
    bytes_total: usize,
    bytes_max: usize,
}

/// What the caches of one shard (or a log's standalone cache) hold.
struct Store {
    /// Caches by slot; a dropped cache's slot is reused.
    slots: Vec<Option<Batches>>,
    free_slots: Vec<usize>,
    /// Each non-empty cache's oldest batch: (age, slot). Its first entry is the shard's
    /// oldest batch.
    fronts: BTreeSet<(u64, usize)>,
    next_age: u64,
    bytes_total: usize,
    bytes_max: usize,
    /// Counts kept as they change (`bytes` is `bytes_total`, filled in by `stats()`).
    stats: ShardTailCacheStats,
}

/// What a shard's caches hold and gave up, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTailCacheStats {
    pub bytes: u64,
    pub batches: u64,
    /// Batches evicted because the shard's budget was full (not a partition's own bound).
    pub evicted_for_shard_budget: u64,
}

impl Store {
    fn new(bytes_max: usize) -> Self {
        Store {
            slots: Vec::new(),
            free_slots: Vec::new(),
            fronts: BTreeSet::new(),
            next_age: 0,
            bytes_total: 0,
            bytes_max,
            stats: ShardTailCacheStats::default(),
        }
    }

    fn batches(&self, slot: usize) -> &Batches {
        self.slots[slot].as_ref().expect("a live cache's slot")
    }

    fn batches_mut(&mut self, slot: usize) -> &mut Batches {
        self.slots[slot].as_mut().expect("a live cache's slot")
    }

    fn add(&mut self, bytes_max: usize) -> usize {
        let batches = Batches {
            bytes_max,
            ..Batches::default()
        };
        if let Some(slot) = self.free_slots.pop() {
            self.slots[slot] = Some(batches);
            slot
        } else {
            self.slots.push(Some(batches));
            self.slots.len() - 1
        }
    }

    fn remove(&mut self, slot: usize) {
        self.clear(slot);
        self.slots[slot] = None;
        self.free_slots.push(slot);
    }

    fn push(&mut self, slot: usize, batch: CachedBatch) {
        let age = self.next_age;
        self.next_age += 1;
        let len = batch.bytes.len();
        let batches = self.batches_mut(slot);
        let was_empty = batches.held.is_empty();
        batches.bytes_total += len;
        batches.held.push_back(Held { batch, age });
        if was_empty {
            self.fronts.insert((age, slot));
        }
        self.bytes_total += len;
        self.stats.batches += 1;
        while self.batches(slot).bytes_total > self.batches(slot).bytes_max {
            self.evict_oldest_of(slot);
        }
        while self.bytes_total > self.bytes_max {
            let &(_, oldest) = self.fronts.first().expect("bytes are held by some cache");
            self.evict_oldest_of(oldest);
            self.stats.evicted_for_shard_budget += 1;
        }
    }

    fn evict_oldest_of(&mut self, slot: usize) {
        let batches = self.batches_mut(slot);
        let Some(evicted) = batches.held.pop_front() else {
            return;
        };
        let len = evicted.batch.bytes.len();
        batches.bytes_total -= len;
        let next_front = batches.held.front().map(|held| held.age);
        let removed = self.fronts.remove(&(evicted.age, slot));
        debug_assert!(removed, "a cache's oldest batch is in the shard's fronts");
        if let Some(age) = next_front {
            self.fronts.insert((age, slot));
        }
        self.bytes_total -= len;
        self.stats.batches -= 1;
    }

    fn clear(&mut self, slot: usize) {
        let batches = self.batches_mut(slot);
        let front = batches.held.front().map(|held| held.age);
        let (count, bytes) = (batches.held.len(), batches.bytes_total);
        batches.held.clear();
        batches.bytes_total = 0;
        if let Some(age) = front {
            self.fronts.remove(&(age, slot));
        }
        self.bytes_total -= bytes;
        self.stats.batches -= count as u64;
    }
}

/// The budget the tail caches of one shard's partitions share, and where their batches are
/// kept. A cheap handle; see the module docs.
#[derive(Clone)]
pub struct ShardTailCache(Rc<RefCell<Store>>);

impl ShardTailCache {
    /// At most `bytes_max` bytes of batches over every cache of the shard.
    pub fn new(bytes_max: usize) -> Self {
        ShardTailCache(Rc::new(RefCell::new(Store::new(bytes_max))))
    }

    pub fn stats(&self) -> ShardTailCacheStats {
        let store = self.0.borrow();
        ShardTailCacheStats {
            bytes: store.bytes_total as u64,
            ..store.stats
        }
    }
}

/// One partition's tail cache: a slot in its shard's (or its own) store.
pub struct TailCache {
    store: Rc<RefCell<Store>>,
    slot: usize,
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.store.borrow_mut().remove(self.slot);
    }
}

impl TailCache {
    /// A cache of its own, bounded by `bytes_max` only, until [`Self::share`].
    pub fn new(bytes_max: usize) -> TailCache {
        let store = Rc::new(RefCell::new(Store::new(usize::MAX)));
        let slot = store.borrow_mut().add(bytes_max);
        TailCache { store, slot }
    }

    /// Moves this cache into `shard`'s budget. What it held is dropped (the next appends
    /// fill it again).
    pub fn share(&mut self, shard: &ShardTailCache) {
        if Rc::ptr_eq(&self.store, &shard.0) {
            return;
        }
        let bytes_max = self.bytes_max();
        let slot = shard.0.borrow_mut().add(bytes_max);
        let old_store = std::mem::replace(&mut self.store, shard.0.clone());
        let old_slot = std::mem::replace(&mut self.slot, slot);
        old_store.borrow_mut().remove(old_slot);
    }

    fn bytes_max(&self) -> usize {
        self.store.borrow().batches(self.slot).bytes_max
    }

    /// Whether a batch of `bytes` is worth a copy into the cache: one that would be evicted
    /// after a few more like it is not (the batch stays readable from the segment).
    pub fn admits(&self, bytes: usize) -> bool {
        bytes <= self.bytes_max() / 8
    }

    /// Adds the newest batch. The cache stays contiguous: the caller clears it when a batch
    /// is not admitted, so no read can skip over a missing batch.
    pub fn push(&mut self, batch: CachedBatch) {
        let mut store = self.store.borrow_mut();
        // Reads find a batch by binary search and serve runs of them: the cache must hold
        // consecutive batches, each right after the one before.
        if let Some(newest) = store.batches(self.slot).held.back() {
            assert_eq!(
                batch.base_offset, newest.batch.next_offset,
                "the tail cache must stay contiguous"
            );
        }
        assert!(
            batch.next_offset > batch.base_offset,
            "a batch holds a record"
        );
        store.push(self.slot, batch);
    }

    pub fn clear(&mut self) {
        self.store.borrow_mut().clear(self.slot);
    }

    /// Drops the batches that start below `offset`, oldest first (what is left stays
    /// contiguous). `offset` is a batch boundary: a batch across it is dropped too.
    pub fn drop_below(&mut self, offset: i64) {
        let mut store = self.store.borrow_mut();
        while store
            .batches(self.slot)
            .held
            .front()
            .is_some_and(|held| held.batch.base_offset < offset)
        {
            store.evict_oldest_of(self.slot);
        }
    }

    /// Empties the cache and gives back its memory (a dormant log keeps no batches).
    pub fn release(&mut self) {
        let mut store = self.store.borrow_mut();
        store.clear(self.slot);
        store.batches_mut(self.slot).held = VecDeque::new();
    }

    pub fn set_bytes_max(&mut self, bytes_max: usize) {
        let mut store = self.store.borrow_mut();
        store.batches_mut(self.slot).bytes_max = bytes_max;
        while store.batches(self.slot).bytes_total > bytes_max {
            store.evict_oldest_of(self.slot);
        }
    }

    /// Whole batches from the one containing `offset`, below `visible_end`, until adding one
    /// more would pass `max_bytes` (the first is returned whatever its size). `None` when
    /// the cache does not reach back to `offset`.
    pub fn read(&self, offset: i64, max_bytes: usize, visible_end: i64) -> Option<Vec<Bytes>> {
        let store = self.store.borrow();
        let held = &store.batches(self.slot).held;
        let first = held.front()?;
        if offset < first.batch.base_offset {
            return None;
        }
        let start = held.partition_point(|h| h.batch.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0;
        for Held { batch, .. } in held.range(start..) {
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
    use crate::sim::SeededRng;

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

    #[test]
    fn the_shard_budget_evicts_the_oldest_batch_of_any_partition() {
        let shard = ShardTailCache::new(1000);
        let mut a = TailCache::new(800);
        let mut b = TailCache::new(800);
        a.share(&shard);
        b.share(&shard);
        a.push(batch(0, 1, 300)); // the shard's oldest
        b.push(batch(0, 1, 300));
        a.push(batch(1, 1, 300));
        assert_eq!(shard.stats().bytes, 900);
        b.push(batch(1, 1, 300)); // 1,200 > 1,000: a's first batch goes
        assert!(a.read(0, 10_000, 10).is_none());
        assert_eq!(a.read(1, 10_000, 10).map(|v| v.len()), Some(1));
        assert_eq!(b.read(0, 10_000, 10).map(|v| v.len()), Some(2));
        assert_eq!(
            shard.stats(),
            ShardTailCacheStats {
                bytes: 900,
                batches: 3,
                evicted_for_shard_budget: 1
            }
        );
        drop(b);
        assert_eq!(
            shard.stats().bytes,
            300,
            "a dropped cache gives its bytes back"
        );
    }

    /// A model of the shard's caches: every batch with its age; the shard holds, per cache,
    /// a suffix of what was pushed since its last clear, and evicts the oldest batch first.
    #[test]
    fn shard_caches_follow_the_model_seeded() {
        for seed in 0..50 {
            let mut rng = SeededRng::new(seed);
            let budget = rng.range(500, 5_000) as usize;
            let shard = ShardTailCache::new(budget);
            let mut caches: Vec<TailCache> = Vec::new();
            // Per cache: (next offset, batches held as (age, base, len)).
            let mut model: Vec<ModelCache> = Vec::new();
            let mut age = 0_u64;
            for _ in 0..2_000 {
                match rng.below(20) {
                    0 if caches.len() < 12 => {
                        let bytes_max = rng.range(100, 3_000) as usize;
                        let mut cache = TailCache::new(bytes_max);
                        cache.share(&shard);
                        caches.push(cache);
                        model.push(ModelCache {
                            next: 0,
                            held: VecDeque::new(),
                            bytes_max,
                        });
                    }
                    1 if !caches.is_empty() => {
                        let i = rng.below(caches.len() as u64) as usize;
                        caches[i].clear();
                        model[i].held.clear();
                    }
                    2 if !caches.is_empty() => {
                        let i = rng.below(caches.len() as u64) as usize;
                        drop(caches.swap_remove(i));
                        model.swap_remove(i);
                    }
                    3 if !caches.is_empty() => {
                        // A cleaning pass swapped segments up to some offset.
                        let i = rng.below(caches.len() as u64) as usize;
                        let below = rng.below(model[i].next as u64 + 1) as i64;
                        caches[i].drop_below(below);
                        while model[i].held.front().is_some_and(|b| b.1 < below) {
                            model[i].held.pop_front();
                        }
                    }
                    _ if !caches.is_empty() => {
                        let i = rng.below(caches.len() as u64) as usize;
                        let len = rng.range(1, 400) as usize;
                        let count = rng.range(1, 5) as i64;
                        let base = model[i].next;
                        caches[i].push(batch(base, count, len));
                        model[i].next += count;
                        model[i].held.push_back((age, base, len));
                        age += 1;
                        while model[i].bytes() > model[i].bytes_max {
                            model[i].held.pop_front();
                        }
                        while model.iter().map(ModelCache::bytes).sum::<usize>() > budget {
                            let oldest = (0..model.len())
                                .filter(|&j| !model[j].held.is_empty())
                                .min_by_key(|&j| model[j].held[0].0)
                                .expect("something is held");
                            model[oldest].held.pop_front();
                        }
                    }
                    _ => {}
                }
                let held: usize = model.iter().map(ModelCache::bytes).sum();
                assert_eq!(shard.stats().bytes as usize, held, "seed {seed}");
                for (cache, modelled) in caches.iter().zip(&model) {
                    let next = modelled.next;
                    match modelled.held.front() {
                        None => assert!(cache.read(next - 1, usize::MAX, next).is_none()),
                        Some(&(_, base, _)) => {
                            let read = cache.read(base, usize::MAX, next).expect("held");
                            let lens: Vec<usize> = read.iter().map(Bytes::len).collect();
                            let expected: Vec<usize> = modelled.held.iter().map(|b| b.2).collect();
                            assert_eq!(lens, expected, "seed {seed}");
                            if base > 0 {
                                assert!(read_before(cache, base).is_none(), "seed {seed}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// One cache as the model sees it: its next offset, the batches it holds as (age, base
    /// offset, length), oldest first, and its own bound.
    struct ModelCache {
        next: i64,
        held: VecDeque<(u64, i64, usize)>,
        bytes_max: usize,
    }

    impl ModelCache {
        fn bytes(&self) -> usize {
            self.held.iter().map(|b| b.2).sum()
        }
    }

    fn read_before(cache: &TailCache, base: i64) -> Option<Vec<Bytes>> {
        cache.read(base - 1, usize::MAX, i64::MAX)
    }
}
