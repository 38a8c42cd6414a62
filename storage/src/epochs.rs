//! The leader-epoch cache (Kafka's leader-epoch checkpoint, KIP-101): for each leader epoch
//! (= Raft term) the first offset and Raft index it wrote. It is not a separate file: every
//! segment index records where each term starts in its segment (`FORMAT.md` § Segment
//! index, `term_entries`), so the cache is persisted with the sealed indexes, rebuilt with
//! them when lost (terms are in the batches), cut by a truncation and shortened by retention
//! together with the log. It answers Raft's synchronous `term(i)` for every entry held, and
//! `OffsetForLeaderEpoch`.

use crate::index::TermIndexEntry;
use crate::io::Disk;
use crate::state::PartitionLog;

/// One leader epoch's start in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderEpoch {
    pub epoch: i32,
    pub start_offset: i64,
    pub start_index: u64,
}

/// Kafka's answer for an epoch no entry has (`UNDEFINED_EPOCH`, `UNDEFINED_EPOCH_OFFSET`).
pub const EPOCH_UNDEFINED: (i32, i64) = (-1, -1);

impl<D: Disk> PartitionLog<D> {
    /// The term of the entry at Raft index `index`, if the log holds it.
    pub fn term_at(&self, index: u64) -> Option<i32> {
        let state = self.state();
        let segment = state
            .segments()
            .take_while(|segment| segment.index.base_index() <= index)
            .last()?;
        segment.index.term_at(index)
    }

    /// Every leader epoch in the log, oldest first; an epoch that spans segments is listed
    /// once, at its first batch still in the log.
    pub fn leader_epochs(&self) -> Vec<LeaderEpoch> {
        let state = self.state();
        let mut epochs: Vec<LeaderEpoch> = Vec::new();
        for TermIndexEntry {
            start_index,
            start_offset,
            term,
        } in state
            .segments()
            .flat_map(|segment| segment.index.term_entries())
        {
            if epochs.last().is_some_and(|last| last.epoch == term) {
                continue;
            }
            epochs.push(LeaderEpoch {
                epoch: term,
                start_offset,
                start_index,
            });
        }
        epochs
    }

    /// `OffsetForLeaderEpoch` as Kafka answers it: see [`end_offset_for_epoch`].
    pub fn end_offset_for_leader_epoch(&self, requested: i32) -> (i32, i64) {
        end_offset_for_epoch(&self.leader_epochs(), self.log_end_offset(), requested)
    }
}

/// Kafka's `LeaderEpochFileCache.endOffsetFor` over `epochs` (oldest first, epochs strictly
/// increasing, as [`PartitionLog::leader_epochs`] lists them): for the largest epoch at or
/// below `requested`, the offset where the next epoch starts (`log_end_offset` for the latest
/// epoch). An epoch above the latest, -1, or any epoch of an empty cache is undefined; one
/// below the earliest answers with the requested epoch and the earliest start. (Kafka treats
/// only -1 as undefined, a smaller negative epoch as below the earliest; Ringfeed's epochs
/// start at 0 and no client sends one, so every negative epoch is undefined here.)
pub fn end_offset_for_epoch(
    epochs: &[LeaderEpoch],
    log_end_offset: i64,
    requested: i32,
) -> (i32, i64) {
    let Some(latest) = epochs.last() else {
        return EPOCH_UNDEFINED;
    };
    if requested < 0 {
        return EPOCH_UNDEFINED;
    }
    if latest.epoch == requested {
        return (requested, log_end_offset);
    }
    let higher = epochs.partition_point(|e| e.epoch <= requested);
    let Some(next) = epochs.get(higher) else {
        return EPOCH_UNDEFINED;
    };
    match higher.checked_sub(1) {
        Some(floor) => (epochs[floor].epoch, next.start_offset),
        None => (requested, next.start_offset),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// The rule as Kafka's cache states it, on a sorted map epoch → start offset: the
    /// latest epoch ends at the log end; otherwise the next higher epoch's start, paired with
    /// the floor epoch (or the requested one when there is no floor); undefined without a
    /// higher epoch.
    fn model(epochs: &BTreeMap<i32, i64>, log_end_offset: i64, requested: i32) -> (i32, i64) {
        if requested < 0 || epochs.is_empty() {
            return EPOCH_UNDEFINED;
        }
        if epochs.keys().next_back() == Some(&requested) {
            return (requested, log_end_offset);
        }
        let Some((_, &next_start)) = epochs.range(requested + 1..).next() else {
            return EPOCH_UNDEFINED;
        };
        let floor = epochs
            .range(..=requested)
            .next_back()
            .map(|(epoch, _)| *epoch);
        (floor.unwrap_or(requested), next_start)
    }

    /// Strictly increasing epochs with strictly increasing start offsets, and a log end at
    /// or after the last start.
    fn cache() -> impl Strategy<Value = (Vec<LeaderEpoch>, i64)> {
        proptest::collection::vec((1_i32..4, 1_i64..50), 0..8).prop_flat_map(|steps| {
            let mut epoch = -1;
            let mut offset = 0;
            let mut epochs = Vec::new();
            for (index, (epoch_step, offset_step)) in steps.into_iter().enumerate() {
                epoch += epoch_step;
                offset += offset_step;
                epochs.push(LeaderEpoch {
                    epoch,
                    start_offset: offset,
                    start_index: index as u64 + 1,
                });
            }
            let last_start = epochs.last().map_or(0, |e| e.start_offset);
            (Just(epochs), last_start..last_start + 100)
        })
    }

    proptest! {
        #[test]
        fn answers_as_kafka_s_cache((epochs, log_end_offset) in cache(), requested in -3_i32..30) {
            let as_map: BTreeMap<i32, i64> =
                epochs.iter().map(|e| (e.epoch, e.start_offset)).collect();
            prop_assert_eq!(
                end_offset_for_epoch(&epochs, log_end_offset, requested),
                model(&as_map, log_end_offset, requested)
            );
        }
    }

    #[test]
    fn the_examples_of_kafka_s_rule() {
        let epochs = [(2, 10), (5, 20), (6, 35)].map(|(epoch, start_offset)| LeaderEpoch {
            epoch,
            start_offset,
            start_index: 0,
        });
        assert_eq!(
            end_offset_for_epoch(&epochs, 50, 6),
            (6, 50),
            "latest: log end"
        );
        assert_eq!(end_offset_for_epoch(&epochs, 50, 5), (5, 35));
        assert_eq!(
            end_offset_for_epoch(&epochs, 50, 3),
            (2, 20),
            "unknown: floor's epoch"
        );
        assert_eq!(
            end_offset_for_epoch(&epochs, 50, 1),
            (1, 10),
            "below the earliest"
        );
        assert_eq!(
            end_offset_for_epoch(&epochs, 50, 7),
            EPOCH_UNDEFINED,
            "above the latest"
        );
        assert_eq!(end_offset_for_epoch(&epochs, 50, -1), EPOCH_UNDEFINED);
        assert_eq!(end_offset_for_epoch(&[], 50, 0), EPOCH_UNDEFINED);
    }
}
