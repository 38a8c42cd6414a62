//! Producer-id blocks unique across the brokers of a cluster (Kafka's `AllocateProducerIds`
//! role, issue 12): the controller's committed state holds the start of the next block
//! (`ClusterState::next_producer_id`) and the latest block granted to each broker.
//!
//! - A broker that wants a block says so in its heartbeat ([`ProducerIdRequest`]), naming
//!   the last block it received in this life (`after`, -1 none) and a floor (its own
//!   `producer-ids` file's end, so ids it handed out as a one-node broker are never
//!   handed out again).
//! - The controller leader grants ([`grant`]) only when the broker's recorded block is the
//!   one it names (or is of a previous life, or there is none): a request repeated by
//!   several heartbeats before the grant commits gets one block, not several.
//! - The broker uses a block only once it sees it in a committed state, with its own
//!   incarnation. The allocator only grows, in the Raft log, so no two brokers — across
//!   controller failovers and restarts — ever get overlapping blocks; a restarted broker
//!   asks for a new block instead of reusing its last one, whose ids it may have used.

use crate::controller::store::{ClusterState, ProducerIdBlock, PRODUCER_ID_BLOCK_SIZE};

/// A broker's ask for a producer-id block, in its heartbeat.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProducerIdRequest {
    /// Start of the last block this broker received in this life, -1 none.
    pub after: i64,
    /// No id below this may be granted (the broker's own `producer-ids` file end).
    pub floor: i64,
}

/// Grants `broker` (in its life `incarnation`) a new block if `request` asks for one it
/// has not been granted yet; returns whether `state` changed.
pub fn grant(
    state: &mut ClusterState,
    broker: i32,
    incarnation: u64,
    request: &ProducerIdRequest,
) -> bool {
    let at = state
        .producer_id_blocks
        .binary_search_by_key(&broker, |block| block.broker);
    if let Ok(at) = at {
        let recorded = &state.producer_id_blocks[at];
        let not_received_yet =
            recorded.incarnation == incarnation && recorded.start != request.after;
        // A request of an older life than the recorded block is late news.
        if not_received_yet || recorded.incarnation > incarnation {
            return false;
        }
    }
    let start = state.next_producer_id.max(request.floor).max(0);
    let Some(next) = start.checked_add(PRODUCER_ID_BLOCK_SIZE) else {
        tracing::error!(
            broker,
            start,
            "producer ids are exhausted; no block granted"
        );
        return false;
    };
    state.next_producer_id = next;
    let block = ProducerIdBlock {
        broker,
        incarnation,
        start,
    };
    match at {
        Ok(at) => state.producer_id_blocks[at] = block,
        Err(at) => state.producer_id_blocks.insert(at, block),
    }
    true
}

/// The block `state` records for `broker` in its life `incarnation`, if any.
pub fn granted(state: &ClusterState, broker: i32, incarnation: u64) -> Option<i64> {
    state
        .producer_id_blocks
        .iter()
        .find(|block| block.broker == broker && block.incarnation == incarnation)
        .map(|block| block.start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::store;
    use crate::storage::sim::SeededRng;

    fn ask(after: i64) -> ProducerIdRequest {
        ProducerIdRequest { after, floor: 0 }
    }

    #[test]
    fn a_repeated_request_gets_one_block_and_a_restart_gets_a_new_one() {
        let mut state = ClusterState::default();
        assert!(grant(&mut state, 2, 5, &ask(-1)));
        assert_eq!(granted(&state, 2, 5), Some(0));
        assert!(!grant(&mut state, 2, 5, &ask(-1)), "the same ask, repeated");
        assert!(
            grant(&mut state, 2, 5, &ask(0)),
            "block 0 received: the next one"
        );
        assert_eq!(granted(&state, 2, 5), Some(1000));
        assert!(
            !grant(&mut state, 2, 4, &ask(-1)),
            "a heartbeat of the previous life"
        );
        assert!(
            grant(&mut state, 2, 6, &ask(-1)),
            "restarted: never block 1000 again"
        );
        assert_eq!(granted(&state, 2, 6), Some(2000));
        assert_eq!(granted(&state, 2, 5), None);
        let floor = ProducerIdRequest {
            after: -1,
            floor: 10_500,
        };
        assert!(grant(&mut state, 1, 1, &floor));
        assert_eq!(
            granted(&state, 1, 1),
            Some(10_500),
            "above the broker's own ids"
        );
        assert_eq!(state.next_producer_id, 11_500);
        state.next_producer_id = i64::MAX - 10;
        assert!(!grant(&mut state, 3, 1, &ask(-1)), "exhausted, not wrapped");
    }

    /// Brokers ask in any order, repeat asks, restart, and the controller's state goes
    /// through encode/decode (a failover hands the next leader the committed bytes): the
    /// blocks every broker received never overlap.
    #[test]
    fn blocks_never_overlap_across_brokers_restarts_and_failovers() {
        for seed in 0..50 {
            let mut rng = SeededRng::new(seed);
            let mut state = ClusterState::default();
            // Per broker: incarnation, last block received.
            let mut brokers: Vec<(u64, i64)> = vec![(1, -1); 3];
            let mut received: Vec<i64> = Vec::new();
            for _ in 0..400 {
                let broker = rng.below(3) as usize;
                match rng.below(10) {
                    0 => brokers[broker] = (brokers[broker].0 + 1, -1),
                    1 => state = store::decode(&store::encode(&state)).unwrap(),
                    _ => {
                        let (incarnation, after) = brokers[broker];
                        grant(&mut state, broker as i32, incarnation, &ask(after));
                        if let Some(start) = granted(&state, broker as i32, incarnation) {
                            if start != after {
                                brokers[broker].1 = start;
                                received.push(start);
                            }
                        }
                    }
                }
            }
            received.sort_unstable();
            assert!(
                received.len() > 50,
                "seed {seed}: {} blocks",
                received.len()
            );
            for pair in received.windows(2) {
                assert!(
                    pair[1] >= pair[0] + PRODUCER_ID_BLOCK_SIZE,
                    "seed {seed}: blocks {pair:?} overlap"
                );
            }
        }
    }
}
