//! Carries the peer brokers' liveness from shard 0's transport to every shard's Raft driver,
//! which rests idle groups on it (`ringfeed_replication::driver::quiet`).
//!
//! Contract:
//! - Lives on shard 0, `!Send`; the transport's liveness listener calls [`LivenessRelay::tell`]
//!   at each change (a peer came, went, or restarted).
//! - Shard 0's own manager is told at once. Every other shard has one relay task with at most
//!   one call in flight, and each call carries the newest set: a burst of changes arrives as
//!   its last value, never as a queue (bounded by the shard count), and no change is dropped
//!   (a shard that missed one would keep its followers of a dead leader quiet until their
//!   slow tick).

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use ringfeed_replication::driver::LivePeers;

use super::{ShardServices, REPLICA_FRAMES_CALLS};
use crate::router::Ending;

pub(super) struct LivenessRelay {
    latest: Rc<RefCell<LivePeers>>,
    shard0: Weak<ShardServices>,
    /// One per other shard: rung when `latest` changed.
    doorbells: Vec<LocalSender<()>>,
}

impl LivenessRelay {
    /// Starts a relay task per shard other than shard 0's `services`.
    pub(super) fn start(services: &Rc<ShardServices>) -> Self {
        assert_eq!(services.shard_id, 0, "the transport lives on shard 0");
        let latest = Rc::new(RefCell::new(LivePeers::new()));
        let doorbells = (1..services.config.shard_count())
            .map(|shard| {
                let (doorbell, rung) = local_channel::new_bounded(1);
                let relay = relay_to(shard, rung, latest.clone(), Rc::downgrade(services));
                glommio::spawn_local(relay).detach();
                doorbell
            })
            .collect();
        Self {
            latest,
            shard0: Rc::downgrade(services),
            doorbells,
        }
    }

    /// The live peers changed to `live`: every shard's manager hears of it.
    pub(super) fn tell(&self, live: &LivePeers) {
        *self.latest.borrow_mut() = live.clone();
        if let Some(replicas) = self.shard0.upgrade().and_then(|s| s.replicas.clone()) {
            replicas.set_live_peers(live.clone());
        }
        for doorbell in &self.doorbells {
            // Full: a ring is already waiting, and its call will read the newest set.
            let _ = doorbell.try_send(());
        }
    }
}

/// Shard `shard`'s relay: at each ring, the newest set, awaited before the next.
async fn relay_to(
    shard: usize,
    rung: LocalReceiver<()>,
    latest: Rc<RefCell<LivePeers>>,
    shard0: Weak<ShardServices>,
) {
    while rung.recv().await.is_some() {
        let Some(router) = shard0.upgrade().map(|services| services.router.clone()) else {
            return;
        };
        let live = latest.borrow().clone();
        let delivered = router
            .invoke_on(
                shard,
                REPLICA_FRAMES_CALLS,
                Ending::ToCompletion,
                move |services| {
                    if let Some(replicas) = &services.replicas {
                        replicas.set_live_peers(live);
                    }
                    std::future::ready(())
                },
            )
            .await;
        if delivered.is_err() {
            // The shard is gone: the broker is stopping.
            return;
        }
    }
}
