//! Time, as the one thing besides the disk that a simulation must control: wall-clock
//! milliseconds (segment age, retention, record timestamps), a monotonic `Instant` (deadlines,
//! latencies) and sleeps. Every service path reads time through a [`Clock`] it was handed,
//! so a simulation that hands them a [`SimClock`] runs as a pure function of its seed.
//!
//! - [`Clock::System`]: the machine's clocks, glommio timers.
//! - [`Clock::Manual`]: a wall clock a test sets by hand; monotonic time and sleeps stay real
//!   (storage tests that only age segments).
//! - [`Clock::Simulated`]: time stands still until the simulation moves it
//!   ([`SimClock::advance_to_next_timer`], [`SimClock::advance`]); sleepers wake in deadline
//!   order, ties in the order they went to sleep.
//!
//! A clock lives on one executor (an `Rc` handle); it is never sent across threads.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The time source of a shard's services. Cheap to clone (a handle).
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Wall-clock ms set by the test; monotonic time and sleeps are the system's.
    Manual(Rc<Cell<i64>>),
    Simulated(SimClock),
}

impl Clock {
    /// Wall-clock milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_wall_ms(),
            Clock::Manual(now) => now.get(),
            Clock::Simulated(clock) => clock.now_ms(),
        }
    }

    /// Monotonic time: only differences and comparisons between its values mean anything.
    pub fn now(&self) -> Instant {
        match self {
            Clock::System | Clock::Manual(_) => Instant::now(),
            Clock::Simulated(clock) => clock.now(),
        }
    }

    /// Resolves once `duration` has passed on this clock. Cancel-safe: dropping it forgets
    /// the timer.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        match self {
            Clock::System | Clock::Manual(_) => {
                Sleep(SleepOn::System(glommio::timer::Timer::new(duration)))
            }
            Clock::Simulated(clock) => clock.sleep_until_elapsed(clock.elapsed() + duration),
        }
    }

    /// Resolves once this clock's [`Clock::now`] reaches `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        self.sleep(deadline.saturating_duration_since(self.now()))
    }
}

fn system_wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// A sleep on some [`Clock`].
pub struct Sleep(SleepOn);

enum SleepOn {
    System(glommio::timer::Timer),
    Simulated(SimSleep),
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            SleepOn::System(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            SleepOn::Simulated(sleep) => sleep.poll(cx),
        }
    }
}

/// Simulated time: a base `Instant` plus the time the simulation has let pass, and the
/// queue of sleepers by (deadline, sequence). Nothing moves it but its owner's calls.
#[derive(Clone)]
pub struct SimClock(Rc<RefCell<SimClockState>>);

struct SimClockState {
    base: Instant,
    wall_start_ms: i64,
    elapsed: Duration,
    /// Sleepers not yet due, by (deadline as elapsed time, sequence): the sequence keeps
    /// equal deadlines in the order they went to sleep.
    timers: BTreeMap<(Duration, u64), Option<Waker>>,
    next_sequence: u64,
}

impl std::fmt::Debug for SimClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.0.borrow();
        f.debug_struct("SimClock")
            .field("elapsed", &state.elapsed)
            .field("timers", &state.timers.len())
            .finish()
    }
}

impl SimClock {
    /// A clock whose wall time starts at `wall_start_ms` and whose monotonic time starts now.
    pub fn new(wall_start_ms: i64) -> Self {
        Self(Rc::new(RefCell::new(SimClockState {
            base: Instant::now(),
            wall_start_ms,
            elapsed: Duration::ZERO,
            timers: BTreeMap::new(),
            next_sequence: 0,
        })))
    }

    /// Time the simulation has let pass since the clock was made.
    pub fn elapsed(&self) -> Duration {
        self.0.borrow().elapsed
    }

    pub fn now(&self) -> Instant {
        let state = self.0.borrow();
        state.base + state.elapsed
    }

    pub fn now_ms(&self) -> i64 {
        let state = self.0.borrow();
        state.wall_start_ms + i64::try_from(state.elapsed.as_millis()).unwrap_or(i64::MAX)
    }

    /// Sleepers waiting for a later time.
    pub fn pending_timers(&self) -> usize {
        self.0.borrow().timers.len()
    }

    /// Moves time to the earliest sleeper's deadline and wakes every sleeper due then.
    /// Returns `false` (time unmoved) when nobody sleeps.
    pub fn advance_to_next_timer(&self) -> bool {
        let next = self
            .0
            .borrow()
            .timers
            .keys()
            .next()
            .map(|(deadline, _)| *deadline);
        match next {
            Some(deadline) => {
                self.set_elapsed(deadline);
                true
            }
            None => false,
        }
    }

    /// Moves time forward by `duration`, waking every sleeper due by then in deadline order.
    pub fn advance(&self, duration: Duration) {
        let target = self.elapsed() + duration;
        self.set_elapsed(target);
    }

    fn set_elapsed(&self, target: Duration) {
        let due = {
            let mut state = self.0.borrow_mut();
            assert!(target >= state.elapsed, "simulated time never goes back");
            state.elapsed = target;
            let later = state.timers.split_off(&(target, u64::MAX));
            std::mem::replace(&mut state.timers, later)
        };
        // Woken in (deadline, sequence) order: the executor runs them in that order.
        for waker in due.into_values().flatten() {
            waker.wake();
        }
    }

    fn sleep_until_elapsed(&self, deadline: Duration) -> Sleep {
        let sequence = {
            let mut state = self.0.borrow_mut();
            let sequence = state.next_sequence;
            state.next_sequence += 1;
            sequence
        };
        Sleep(SleepOn::Simulated(SimSleep {
            clock: self.clone(),
            key: (deadline, sequence),
            registered: false,
        }))
    }
}

struct SimSleep {
    clock: SimClock,
    key: (Duration, u64),
    registered: bool,
}

impl SimSleep {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.clock.0.borrow_mut();
        if state.elapsed >= self.key.0 {
            state.timers.remove(&self.key);
            self.registered = false;
            return Poll::Ready(());
        }
        state.timers.insert(self.key, Some(cx.waker().clone()));
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for SimSleep {
    fn drop(&mut self) {
        if self.registered {
            if let Ok(mut state) = self.clock.0.try_borrow_mut() {
                state.timers.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleepers_wake_in_deadline_order_then_sleep_order() {
        glommio::LocalExecutor::default().run(async {
            let clock = SimClock::new(1_000);
            let woken = Rc::new(RefCell::new(Vec::new()));
            let sleeps = [(30, "c"), (10, "a"), (30, "d"), (20, "b")];
            let tasks: Vec<_> = sleeps
                .into_iter()
                .map(|(ms, name)| {
                    let sleep = Clock::Simulated(clock.clone()).sleep(Duration::from_millis(ms));
                    let woken = woken.clone();
                    glommio::spawn_local(async move {
                        sleep.await;
                        woken.borrow_mut().push(name);
                    })
                })
                .collect();
            crate::sim::yield_once().await;
            assert_eq!(clock.pending_timers(), 4);
            assert!(woken.borrow().is_empty(), "time stands still");
            while clock.advance_to_next_timer() {
                crate::sim::yield_once().await;
            }
            futures::future::join_all(tasks).await;
            assert_eq!(*woken.borrow(), ["a", "b", "c", "d"]);
            assert_eq!(clock.elapsed(), Duration::from_millis(30));
            assert_eq!(Clock::Simulated(clock.clone()).now_ms(), 1_030);
        });
    }

    #[test]
    fn a_dropped_sleep_leaves_the_queue_and_advance_wakes_what_is_due() {
        glommio::LocalExecutor::default().run(async {
            let clock = SimClock::new(0);
            let sim = Clock::Simulated(clock.clone());
            let mut dropped = sim.sleep(Duration::from_secs(5));
            let waker = futures::task::noop_waker();
            assert!(Pin::new(&mut dropped)
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            assert_eq!(clock.pending_timers(), 1);
            drop(dropped);
            assert_eq!(clock.pending_timers(), 0);
            let start = sim.now();
            let due = sim.sleep_until(start + Duration::from_millis(7));
            clock.advance(Duration::from_millis(10));
            due.await;
            assert_eq!(sim.now() - start, Duration::from_millis(10));
        });
    }
}
