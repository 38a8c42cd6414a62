//! Catching a lagging follower up from the leader's log.
//!
//! A group's store keeps its recent entries in memory (`RECENT_BYTES_MAX` beyond the
//! unapplied ones, less when many groups share the shard's `RECENT_BYTES_SHARD_MAX`). A follower further behind (it was down, cut off, or slower than the
//! others under load) asks for entries memory no longer holds: raft-rs's read gets
//! `LogTemporarilyUnavailable`, the store remembers the request, and the driver names the
//! group in `take_fetches_wanted` after its round. One task per shard then serves those
//! groups one request at a time: it reads the entries from the partition log
//! (`LogStore::fetch`, up to raft-rs's `max_size_per_msg`), hands the request's context to
//! the driver, where raft-rs asks again, is served from what was read and sends the append,
//! and gives the memory back. raft-rs then asks for what follows (at once when it sends
//! aggressively, after the follower's answer otherwise), which queues the next read, until
//! the follower is back within memory. How fast that is has not been measured.
//!
//! The same task reads the entry a snapshot is made of, for a follower behind the leader's
//! log start (`LogStore::snapshot`): raft-rs asks for the snapshot again by itself at the
//! follower's next heartbeat response, so such a read hands nothing back.
//!
//! Bounds: at most one queued fetch per group (a set), each store keeps at most a few
//! requests (`log_store::WANTED_MAX`), and one read's entries are held at a time per
//! shard. Without this a follower that fell more than `RECENT_BYTES_MAX` behind was never
//! sent another entry (raft-rs's request waited for a read that nobody made): it stayed
//! out of sync for good, and a partition whose two followers both fell behind stopped
//! committing.
//!
//! Owned by the shard of the manager; no `RefCell` borrow is held across the read.

use std::rc::Weak;

use crate::replica::ReplicaManager;

impl ReplicaManager {
    /// Queues the groups whose stores want entries read (after a round) and starts the
    /// shard's fetch task if it is not running.
    pub(crate) fn queue_fetches(&self, group_ids: Vec<u64>) {
        if group_ids.is_empty() {
            return;
        }
        self.fetches_queued.borrow_mut().extend(group_ids);
        if !self.fetch_task_running.replace(true) {
            glommio::spawn_local(serve_fetches(self.this.clone())).detach();
        }
    }
}

/// Serves queued fetches until none is left (see the module docs).
async fn serve_fetches(manager: Weak<ReplicaManager>) {
    loop {
        let (group_id, store) = {
            let Some(this) = manager.upgrade() else {
                return;
            };
            let next = this.fetches_queued.borrow_mut().pop_first();
            let Some(group_id) = next else {
                this.fetch_task_running.set(false);
                return;
            };
            let Some(store) = this.driver.borrow().store(group_id).cloned() else {
                continue;
            };
            (group_id, store)
        };
        let fetched = store.fetch().await;
        let Some(this) = manager.upgrade() else {
            return;
        };
        match fetched {
            Ok(Some(context)) => {
                this.driver.borrow_mut().entries_fetched(group_id, context);
                store.release_fetched();
                this.counts.borrow_mut().entries_fetches += 1;
                this.ring();
            }
            Ok(None) => {}
            Err(error) => {
                // The group's log could not be read (a removed segment, an IO error): the
                // follower is not served now; raft-rs asks again at its next heartbeat
                // response, which queues the group again.
                tracing::warn!(group_id, %error, "reading entries for a lagging follower failed");
            }
        }
        if store.wants_fetch() {
            this.fetches_queued.borrow_mut().insert(group_id);
        }
    }
}
