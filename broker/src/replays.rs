//! Each partition of a coordinator's log (`__consumer_offsets` for the group coordinator,
//! `__transaction_state` for the transaction coordinator) is replayed once, by the first
//! request that needs it; requests arriving meanwhile wait for that replay instead of
//! starting their own. A replay that fails is forgotten, so the next request tries again.
//!
//! Owned by one shard's coordinator (`!Send`); nothing here crosses threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use glommio::sync::Semaphore;

/// The partitions replayed or being replayed. See the module docs.
#[derive(Default)]
pub struct Replays {
    /// Closed once the partition's replay ends; absent when it was never replayed or its
    /// replay failed.
    replays: RefCell<HashMap<i32, Rc<Semaphore>>>,
}

/// What a caller of [`Replays::turn`] does next.
pub enum ReplayTurn<'a> {
    /// The partition is replayed: serve the request.
    Replayed,
    /// The replay this caller waited for failed (or was abandoned).
    Failed,
    /// This caller replays the partition and then reports with [`Replaying::finish`].
    Replay(Replaying<'a>),
}

/// A replay in progress. Dropped without [`Replaying::finish`] (the replaying task was
/// cancelled), it counts as failed, so waiters are released and the next request retries.
pub struct Replaying<'a> {
    replays: &'a Replays,
    partition: i32,
    done: Rc<Semaphore>,
    finished: bool,
}

impl Replays {
    /// Waits for the partition's replay when one is running; see [`ReplayTurn`].
    pub async fn turn(&self, partition: i32) -> ReplayTurn<'_> {
        let existing = self.replays.borrow().get(&partition).cloned();
        if let Some(done) = existing {
            // Closed when the replay ends: an error from acquire means exactly that.
            let _ = done.acquire(1).await;
            return if self.replays.borrow().contains_key(&partition) {
                ReplayTurn::Replayed
            } else {
                ReplayTurn::Failed
            };
        }
        let done = Rc::new(Semaphore::new(0));
        self.replays.borrow_mut().insert(partition, done.clone());
        ReplayTurn::Replay(Replaying {
            replays: self,
            partition,
            done,
            finished: false,
        })
    }
}

impl Replays {
    /// Forgets that `partition` was replayed (its coordinator unloaded it): the next request
    /// replays it again.
    pub fn forget(&self, partition: i32) {
        self.replays.borrow_mut().remove(&partition);
    }
}

impl Replaying<'_> {
    /// Ends the replay: `replayed` keeps the partition replayed, `false` forgets it.
    pub fn finish(mut self, replayed: bool) {
        self.end(replayed);
    }

    fn end(&mut self, replayed: bool) {
        self.finished = true;
        if !replayed {
            self.replays.replays.borrow_mut().remove(&self.partition);
        }
        self.done.close();
    }
}

impl Drop for Replaying<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_executor::run;

    #[test]
    fn one_replay_per_partition_and_waiters_learn_its_outcome() {
        run(|| async {
            let replays = Rc::new(Replays::default());
            let ReplayTurn::Replay(first) = replays.turn(0).await else {
                panic!("the first caller replays");
            };
            // A second caller waits for the first replay and is told it succeeded.
            let waiter = {
                let replays = replays.clone();
                glommio::spawn_local(async move {
                    matches!(replays.turn(0).await, ReplayTurn::Replayed)
                })
            };
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            first.finish(true);
            assert!(waiter.await, "the waiter saw the replay succeed");
            assert!(matches!(replays.turn(0).await, ReplayTurn::Replayed));

            // A failed replay is forgotten: its waiter is told, the next caller replays.
            let ReplayTurn::Replay(failing) = replays.turn(1).await else {
                panic!("a new partition is replayed");
            };
            let waiter = {
                let replays = replays.clone();
                glommio::spawn_local(
                    async move { matches!(replays.turn(1).await, ReplayTurn::Failed) },
                )
            };
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            failing.finish(false);
            assert!(waiter.await, "the waiter saw the replay fail");
            let ReplayTurn::Replay(retry) = replays.turn(1).await else {
                panic!("the next caller replays again");
            };
            // A replay abandoned (its task cancelled) counts as failed.
            drop(retry);
            assert!(matches!(replays.turn(1).await, ReplayTurn::Replay(_)));
        });
    }
}
