//! The byte budgets of one shard: request frames held at once
//! (`Limits::shard_inflight_request_bytes_max`) and Fetch responses assembled at once
//! (`Limits::shard_fetch_bytes_max`).
//!
//! Owned by one shard (`!Send`): connections reserve request bytes before reading a frame,
//! fetches reserve response bytes before reading a partition. Accounting is asserted: what is
//! reserved never exceeds the limit, and every release gives back bytes that were reserved.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::{Semaphore, StaticPermit};

/// A shard's two budgets; see the module docs.
pub struct Budgets {
    pub request_bytes: ByteBudget,
    pub fetch_bytes: ByteBudget,
}

impl Budgets {
    pub fn new(request_bytes_max: u64, fetch_bytes_max: u64) -> Self {
        Self {
            request_bytes: ByteBudget::new(request_bytes_max),
            fetch_bytes: ByteBudget::new(fetch_bytes_max),
        }
    }
}

/// Bytes a shard may hold at once for one purpose. Cheap to clone (the clones share it).
#[derive(Clone)]
pub struct ByteBudget {
    available: Rc<Semaphore>,
    limit_bytes: u64,
    /// Bytes reserved through `reserve`/`try_reserve` and not yet released (permits of
    /// `reserve_permit` count only in `available`).
    reserved_bytes: Rc<Cell<u64>>,
}

impl ByteBudget {
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            available: Rc::new(Semaphore::new(limit_bytes)),
            limit_bytes,
            reserved_bytes: Rc::new(Cell::new(0)),
        }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Bytes held now, by reservations and permits together.
    pub fn in_use_bytes(&self) -> u64 {
        let available = self.available.available();
        assert!(
            available <= self.limit_bytes,
            "budget accounting: {available} bytes available of a {} byte limit",
            self.limit_bytes
        );
        self.limit_bytes - available
    }

    /// Holds `bytes` until the permit is dropped, waiting until the budget has them.
    pub async fn reserve_permit(&self, bytes: u64) -> StaticPermit {
        let permit = self
            .available
            .acquire_static_permit(bytes)
            .await
            .expect("a byte budget is never closed");
        self.in_use_bytes();
        permit
    }

    /// Holds `bytes` until `release`d, waiting until the budget has them.
    pub async fn reserve(&self, bytes: u64) {
        self.available
            .acquire(bytes)
            .await
            .expect("a byte budget is never closed");
        self.reserved(bytes);
    }

    /// Holds `bytes` if the budget has them now; `false` (nothing held) otherwise.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let granted = self
            .available
            .try_acquire(bytes)
            .expect("a byte budget is never closed");
        if granted {
            self.reserved(bytes);
        }
        granted
    }

    fn reserved(&self, bytes: u64) {
        self.reserved_bytes.set(self.reserved_bytes.get() + bytes);
        assert!(
            self.in_use_bytes() >= self.reserved_bytes.get(),
            "budget accounting: more reserved than in use"
        );
    }

    /// Gives back `bytes` taken by `reserve` or `try_reserve`.
    pub fn release(&self, bytes: u64) {
        let reserved = self.reserved_bytes.get();
        assert!(
            bytes <= reserved,
            "budget accounting: releasing {bytes} bytes of {reserved} reserved"
        );
        self.reserved_bytes.set(reserved - bytes);
        self.available.signal(bytes);
        self.in_use_bytes();
    }
}

#[cfg(test)]
mod tests {
    use std::panic::AssertUnwindSafe;

    use super::*;

    fn on_executor(test: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { test() })
            .expect("executor")
            .join()
            .expect("test ran");
    }

    #[test]
    fn reservations_count_until_released_and_never_pass_the_limit() {
        on_executor(|| {
            let budget = ByteBudget::new(100);
            assert!(budget.try_reserve(60));
            assert!(!budget.try_reserve(41), "past the limit");
            assert!(budget.try_reserve(40));
            assert_eq!(budget.in_use_bytes(), 100);
            budget.release(60);
            assert_eq!(budget.in_use_bytes(), 40);
            budget.release(40);
            assert_eq!(budget.in_use_bytes(), 0);
        });
    }

    #[test]
    fn releasing_more_than_was_reserved_trips_the_assertion() {
        on_executor(|| {
            let budget = ByteBudget::new(100);
            assert!(budget.try_reserve(10));
            let released = std::panic::catch_unwind(AssertUnwindSafe(|| budget.release(11)));
            assert!(released.is_err(), "a release must match a reservation");
        });
    }
}
