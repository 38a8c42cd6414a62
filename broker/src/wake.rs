//! A wake-everyone signal for the tasks of one shard: waiters re-check whatever they wait
//! for after each notification (a long-poll fetch on a replicated partition's commit, a
//! transactional id's next request on its previous transaction's completion).
//!
//! Ownership: lives on one shard's executor (`Cell`, `RefCell`); not `Send`.

use std::cell::{Cell, RefCell};
use std::task::Waker;

#[derive(Default)]
pub(crate) struct Signal {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    pub(crate) fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in std::mem::take(&mut *self.wakers.borrow_mut()) {
            waker.wake();
        }
    }

    /// Completes at the next `notify_all` after this call.
    pub(crate) async fn wait(&self) {
        let seen = self.generation.get();
        std::future::poll_fn(|cx| {
            if self.generation.get() != seen {
                return std::task::Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await;
    }
}
