//! A wake-everyone signal for tasks on one glommio executor (no atomics, no locks).
//!
//! Waiters create a [`SignalWait`] *before* checking the condition they wait for and then
//! await it; any `notify_all` after its creation completes it, so no wake-up is lost.
//! Dropping a wait (a cancelled long poll) leaves at most a stale waker until the next notify.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Signal {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// A future that completes at the next `notify_all` after this call.
    pub fn wait(&self) -> SignalWait<'_> {
        SignalWait {
            signal: self,
            seen_generation: self.generation.get(),
        }
    }
}

pub struct SignalWait<'a> {
    signal: &'a Signal,
    seen_generation: u64,
}

impl Future for SignalWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation.get() != self.seen_generation {
            return Poll::Ready(());
        }
        let mut wakers = self.signal.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
