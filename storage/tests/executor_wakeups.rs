//! Guards the vendored glommio patch to the executor's sleep (vendor/README.md): the
//! barrier between "I am going to sleep" and the last look at the executor's channels is a
//! pair of `SeqCst` fences (one there, one in the sender's notification) instead of
//! glommio 0.9.0's `membarrier` system call. A wrong pairing loses a wake-up: the receiver
//! sleeps with a message waiting, and with nothing else to wake it, sleeps for good.
//!
//! Two executors hand messages back and forth so that each one goes to sleep before almost
//! every message it receives, tens of thousands of times: over shared channels (the
//! cross-shard path the broker uses) and by waking a task of one executor from the other
//! (a foreign waker). A lost wake-up shows as a stall: with the sender's notification
//! skipped, this test fails at once. It did not catch the sleeping side's fence removed
//! (three runs): that race is a few instructions wide per sleep, so a clean run is evidence,
//! not proof, and the argument for the pairing is in the patch's comments.

use std::sync::mpsc;
use std::time::Duration;

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

const ROUND_TRIPS: u64 = 10_000;
const STALL: Duration = Duration::from_secs(60);

/// Waits for a test's executors to report what they did; a stall means a lost wake-up.
fn finished_within<T>(finished: &mpsc::Receiver<T>, stalled: &str) -> T {
    finished.recv_timeout(STALL).expect(stalled)
}

#[test]
fn executors_handing_messages_over_shared_channels_never_miss_a_wake_up() {
    let (to_echo, echo_inbox) = shared_channel::new_bounded::<u64>(1);
    let (to_origin, origin_inbox) = shared_channel::new_bounded::<u64>(1);
    let (finished, finished_receiver) = mpsc::channel();

    let echo = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let inbox = echo_inbox.connect().await;
            let outbox = to_origin.connect().await;
            while let Some(value) = inbox.recv().await {
                outbox.send(value + 1).await.expect("origin listens");
            }
        })
        .expect("echo executor starts");
    let origin = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let outbox = to_echo.connect().await;
            let inbox = origin_inbox.connect().await;
            let mut value = 0;
            for _ in 0..ROUND_TRIPS {
                outbox.send(value).await.expect("echo listens");
                let answer = inbox.recv().await.expect("echo answers");
                assert_eq!(answer, value + 1, "answers come back in order");
                value = answer;
            }
            let _ = finished.send(value);
        })
        .expect("origin executor starts");

    let round_trips = finished_within(
        &finished_receiver,
        "an executor slept through a message on a shared channel",
    );
    assert_eq!(round_trips, ROUND_TRIPS);
    origin.join().expect("origin ran to completion");
    echo.join().expect("echo ran to completion");
}

/// A task on one executor woken from a thread of another (glommio's foreign wakes). The
/// answering executor blocks its thread on the request queue, so every answer comes from a
/// thread just woken, by when the asking executor has usually gone to sleep.
#[test]
fn a_task_woken_from_another_executor_never_misses_the_wake_up() {
    let (requests, request_inbox) = mpsc::sync_channel::<futures::channel::oneshot::Sender<u64>>(1);
    let (finished, finished_receiver) = mpsc::channel();
    let answerer = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut answered = 0_u64;
            while let Ok(reply) = request_inbox.recv() {
                let _ = reply.send(answered);
                answered += 1;
            }
        })
        .expect("answering executor starts");
    let asker = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            for expected in 0..ROUND_TRIPS {
                let (reply, answer) = futures::channel::oneshot::channel();
                requests.send(reply).expect("answerer listens");
                assert_eq!(answer.await, Ok(expected));
            }
            let _ = finished.send(ROUND_TRIPS);
        })
        .expect("asking executor starts");
    let round_trips = finished_within(
        &finished_receiver,
        "an executor slept through a wake-up from another executor",
    );
    assert_eq!(round_trips, ROUND_TRIPS);
    asker.join().expect("asker ran to completion");
    answerer.join().expect("answerer ran to completion");
}
