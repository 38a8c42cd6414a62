//! The shutdown signal of one shard: closed once, when shutdown starts, and watched by every
//! long wait of that shard (parked joins and syncs, fetch long polls, the accept loop).
//!
//! Owned by one shard (`!Send`); its services and connections hold clones.

use std::rc::Rc;

use glommio::sync::Semaphore;

/// Closed (never signalled) when shutdown starts: waiters see an error and stop.
#[derive(Clone)]
pub struct ShutdownSignal {
    closed_on_shutdown: Rc<Semaphore>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self {
            closed_on_shutdown: Rc::new(Semaphore::new(0)),
        }
    }
}

impl ShutdownSignal {
    /// Resolves once shutdown has started. Cancel-safe; race it with long waits.
    pub async fn started(&self) {
        let _ = self.closed_on_shutdown.acquire(1).await;
    }

    pub fn is_started(&self) -> bool {
        self.closed_on_shutdown.try_acquire(1).is_err()
    }

    /// Starts the shutdown: every waiter of `started` wakes. Idempotent.
    pub fn start(&self) {
        self.closed_on_shutdown.close();
    }
}
