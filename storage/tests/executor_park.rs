//! Guards the vendored glommio patch (vendor/README.md): an executor preempted before it ran
//! any task queue must not park while a queue is runnable. glommio 0.9.0 parked there, and
//! with no IO in flight nothing woke it again: a broker shard stalled at start-up (seen as a
//! start that never printed "listening" in the client tests, under load). A 10 µs preemption
//! timer makes the preemption land there at once: unpatched, this test hangs at its first
//! iteration every time.

use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn an_executor_preempted_before_running_its_queues_does_not_park_with_work_pending() {
    let (finished, finished_receiver) = mpsc::channel();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .preempt_timer(Duration::from_micros(10))
        .spawn(move || async move {
            let started = Instant::now();
            let mut handoffs = 0_u64;
            // Tasks handing work to each other, no IO: a park with runnable work never wakes.
            while started.elapsed() < Duration::from_millis(500) {
                let (sender, receiver) = futures::channel::oneshot::channel::<u64>();
                glommio::spawn_local(async move {
                    let _ = sender.send((0..200_u64).sum());
                })
                .detach();
                assert_eq!(receiver.await, Ok(19_900));
                handoffs += 1;
            }
            let _ = finished.send(handoffs);
        })
        .expect("executor starts");
    let handoffs = finished_receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the executor stalled: it parked with a runnable task queue");
    assert!(handoffs > 0);
    executor.join().expect("executor ran to completion");
}
