//! Cross-shard calls over glommio's channel mesh. Every shard joins two full meshes: one
//! carries calls, the other carries their replies, so a shard that is busy sending calls
//! can always drain the replies it is waiting for. The mesh channels are SPSC rings; no
//! lock is taken on either side.
//!
//! `ShardRouter` lives on one shard (it is `!Send`); `call` may run from many tasks of that
//! shard at once. Calls to the local shard never go through the mesh: `Shard::partition_call`,
//! `Shard::dispatch_partition_call`, `Shard::group_call` and `Shard::controller_call` run
//! them in place (see `shard.rs`).
//!
//! Cancellation: a caller that stops waiting (drops the future of `call`) forgets the call
//! at once. When the call only waits for something (`ShardCall::ends_with_its_caller`, a
//! fetch's long-poll wait), the caller also sends a `Cancel` for it, and the callee drops
//! its work on receipt: a wait parked on another shard lives no longer than the fetch
//! that parked it. Every other call runs to completion (a produce is not half-undone
//! because its client went away), and its late reply is dropped.
//! Order: calls sent with `call_in_order` reach the peer in the order of those calls (the
//! mesh channel is FIFO, and when it is full they wait in a per-peer outbox here, in order),
//! and the peer hands them to its `execute` in arrival order before any await. Plain `call`
//! promises no order: tasks waiting for room in a full channel enter it as they are woken.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::{AbortHandle, Abortable};
use futures::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::{GlommioError, ResourceType};

use crate::controller::{ControllerCall, ControllerReply};
use crate::groups::{GroupEnvelope, GroupReply};
use crate::metadata::MetadataSnapshot;
use crate::partition::{PartitionCall, PartitionReply};

/// What one shard asks of another.
#[derive(Debug)]
pub enum ShardCall {
    /// Work on a partition the receiver owns.
    Partition(PartitionCall),
    /// A topic change, served by the controller on shard 0.
    Controller(ControllerCall),
    /// The controller's new metadata: open/close the receiver's partitions to match, then
    /// install it.
    ApplyMetadata(Arc<MetadataSnapshot>),
    /// Work on a consumer group whose coordinator the receiver is (see `groups`).
    Group(GroupEnvelope),
}

impl ShardCall {
    /// Names of the call kinds, as counted in `CrossShardCounts` and exported as metrics.
    pub const KINDS: [&'static str; 4] = ["partition", "controller", "apply_metadata", "group"];

    /// Calls whose work the callee drops when the caller stops waiting for the reply (see
    /// the module docs): those that only wait, and change nothing.
    fn ends_with_its_caller(&self) -> bool {
        matches!(
            self,
            ShardCall::Partition(PartitionCall::WaitForData { .. })
        )
    }

    fn kind_index(&self) -> usize {
        match self {
            ShardCall::Partition(_) => 0,
            ShardCall::Controller(_) => 1,
            ShardCall::ApplyMetadata(_) => 2,
            ShardCall::Group(_) => 3,
        }
    }
}

/// Calls one shard has sent to and received from the others, by kind (`ShardCall::KINDS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossShardCounts {
    pub sent: [u64; 4],
    pub received: [u64; 4],
}

/// The answer to a `ShardCall`, of the matching variant.
#[derive(Debug)]
pub enum ShardReply {
    Partition(PartitionReply),
    Controller(ControllerReply),
    MetadataApplied,
    Group(GroupReply),
}

#[derive(Debug)]
pub struct CallEnvelope {
    call_id: u64,
    message: CallMessage,
}

/// What travels on the call mesh: a call, or the cancellation of an earlier one from the
/// same shard (the channel is FIFO, so a `Cancel` never overtakes its call).
// Calls are what the mesh carries; boxing them to shrink the rare `Cancel` would allocate
// once per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum CallMessage {
    Call(ShardCall),
    Cancel,
}

#[derive(Debug)]
pub struct ReplyEnvelope {
    call_id: u64,
    reply: ShardReply,
}

/// The two meshes, built once in `main` and cloned into every shard's thread.
#[derive(Clone)]
pub struct MeshPair {
    calls: MeshBuilder<CallEnvelope, Full>,
    replies: MeshBuilder<ReplyEnvelope, Full>,
}

impl MeshPair {
    pub fn new(shard_count: usize, channel_slots: usize) -> Self {
        Self {
            calls: MeshBuilder::full(shard_count, channel_slots),
            replies: MeshBuilder::full(shard_count, channel_slots),
        }
    }
}

/// The peer shard went away (only during shutdown) before answering.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} did not answer: its channel is closed")]
pub struct PeerGone {
    pub shard: usize,
}

/// One shard's end of the meshes. Owned by that shard; see the module docs.
pub struct ShardRouter {
    shard_id: usize,
    call_senders: Senders<CallEnvelope>,
    reply_senders: Senders<ReplyEnvelope>,
    /// Calls sent and not yet answered, by call id.
    /// Each waiter is a one-slot local channel: single-threaded, no atomics or locks.
    pending: RefCell<HashMap<u64, LocalSender<ShardReply>>>,
    next_call_id: Cell<u64>,
    /// Written by this shard only; read by its metrics snapshot.
    counts: Cell<CrossShardCounts>,
    /// Calls received that end with their caller, running now, by (calling shard, call id).
    /// Bounded by what the calls bound: for waits, `Limits::shard_fetch_waits_parked_max`
    /// (a wait past it answers at once and leaves the map).
    running_until_cancelled: RefCell<HashMap<(usize, u64), AbortHandle>>,
    /// `call_in_order` calls waiting for room in each peer's channel (index: peer shard).
    outboxes: Vec<Outbox>,
}

/// Calls to one peer that found its channel full, oldest first. Bounded by what sends them:
/// every call holds a request's bytes, which the shard's request budget bounds.
#[derive(Default)]
struct Outbox {
    queued: RefCell<VecDeque<CallEnvelope>>,
    /// A task is moving `queued` into the channel; later calls queue behind it.
    draining: Cell<bool>,
}

/// The receiving halves, handed to `serve_incoming` once the shard is set up.
pub struct IncomingCalls {
    calls: Receivers<CallEnvelope>,
    replies: Receivers<ReplyEnvelope>,
}

/// Joins both meshes. Every shard must call this before any shard can send.
pub async fn join(meshes: MeshPair) -> (ShardRouter, IncomingCalls) {
    let (call_senders, calls) = meshes.calls.join().await.expect("joining the call mesh");
    let (reply_senders, replies) = meshes.replies.join().await.expect("joining the reply mesh");
    let outboxes = (0..call_senders.nr_consumers())
        .map(|_| Outbox::default())
        .collect();
    let router = ShardRouter {
        shard_id: call_senders.peer_id(),
        call_senders,
        reply_senders,
        pending: RefCell::new(HashMap::new()),
        next_call_id: Cell::new(0),
        counts: Cell::default(),
        running_until_cancelled: RefCell::new(HashMap::new()),
        outboxes,
    };
    (router, IncomingCalls { calls, replies })
}

impl ShardRouter {
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Gives a call to `shard` (never this shard) its id and its pending reply slot.
    fn register_call(&self, shard: usize, call: &ShardCall) -> (u64, LocalReceiver<ShardReply>) {
        assert_ne!(
            shard, self.shard_id,
            "local calls do not go through the mesh"
        );
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        self.count(|counts| counts.sent[call.kind_index()] += 1);
        let (reply_sender, reply_receiver) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(call_id, reply_sender);
        (call_id, reply_receiver)
    }

    /// Sends `call` to `shard` (never this shard) and waits for its reply. Cancel-safe:
    /// dropping the future forgets the call (see the module docs).
    pub async fn call(&self, shard: usize, call: ShardCall) -> Result<ShardReply, PeerGone> {
        let (call_id, reply_receiver) = self.register_call(shard, &call);
        let mut outstanding = Outstanding {
            router: self,
            shard,
            call_id,
            cancel_on_drop: false,
        };
        let ends_with_its_caller = call.ends_with_its_caller();
        let envelope = CallEnvelope {
            call_id,
            message: CallMessage::Call(call),
        };
        if self.call_senders.send_to(shard, envelope).await.is_err() {
            return Err(PeerGone { shard });
        }
        outstanding.cancel_on_drop = ends_with_its_caller;
        reply_receiver.recv().await.ok_or(PeerGone { shard })
    }

    /// Tells `shard` that the caller no longer waits for `call_id`. Without waiting: this
    /// runs in a destructor. When the channel is full at that moment the cancellation is
    /// dropped and the callee's work ends on its own (a wait at its `max_wait_ms`); the
    /// callee's bound on such work holds either way.
    fn cancel(&self, shard: usize, call_id: u64) {
        let envelope = CallEnvelope {
            call_id,
            message: CallMessage::Cancel,
        };
        if self.call_senders.try_send_to(shard, envelope).is_err() {
            tracing::debug!(
                shard,
                call_id,
                "cancellation not sent: the call channel is full or closed"
            );
        }
    }

    /// Sends `call` to `shard` (never this shard) now, behind every call sent to it this way
    /// before, and returns the wait for its reply. See the module docs for the order kept.
    pub fn call_in_order(
        self: &Rc<Self>,
        shard: usize,
        call: ShardCall,
    ) -> impl Future<Output = Result<ShardReply, PeerGone>> + 'static {
        let (call_id, reply_receiver) = self.register_call(shard, &call);
        let envelope = CallEnvelope {
            call_id,
            message: CallMessage::Call(call),
        };
        let outbox = &self.outboxes[shard];
        if outbox.draining.get() {
            outbox.queued.borrow_mut().push_back(envelope);
        } else {
            match self.call_senders.try_send_to(shard, envelope) {
                Ok(()) => {}
                Err(GlommioError::WouldBlock(ResourceType::Channel(envelope))) => {
                    outbox.queued.borrow_mut().push_back(envelope);
                    outbox.draining.set(true);
                    glommio::spawn_local(self.clone().drain_outbox(shard)).detach();
                }
                // Closed (shutdown): the dropped waiter makes the reply `PeerGone`.
                Err(_) => drop(self.pending.borrow_mut().remove(&call_id)),
            }
        }
        async move { reply_receiver.recv().await.ok_or(PeerGone { shard }) }
    }

    /// Moves `shard`'s outbox into its channel, oldest first, as room appears.
    async fn drain_outbox(self: Rc<Self>, shard: usize) {
        loop {
            let next = self.outboxes[shard].queued.borrow_mut().pop_front();
            let Some(envelope) = next else { break };
            let call_id = envelope.call_id;
            if self.call_senders.send_to(shard, envelope).await.is_err() {
                self.pending.borrow_mut().remove(&call_id);
            }
        }
        self.outboxes[shard].draining.set(false);
    }

    /// Calls sent and received so far.
    pub fn counts(&self) -> CrossShardCounts {
        self.counts.get()
    }

    fn count(&self, add: impl FnOnce(&mut CrossShardCounts)) {
        let mut counts = self.counts.get();
        add(&mut counts);
        self.counts.set(counts);
    }

    async fn reply(&self, shard: usize, call_id: u64, reply: ShardReply) {
        // A closed reply channel means the caller's shard is shutting down; nobody waits.
        let _ = self
            .reply_senders
            .send_to(shard, ReplyEnvelope { call_id, reply })
            .await;
    }

    fn resolve(&self, envelope: ReplyEnvelope) {
        // The caller may have stopped waiting (a cancelled long poll); then the reply is dropped.
        if let Some(waiter) = self.pending.borrow_mut().remove(&envelope.call_id) {
            let _ = waiter.try_send(envelope.reply);
        }
    }

    /// Stops a running call that ends with its caller; a no-op when it has finished already
    /// (its reply and the cancellation crossed) or is of another kind.
    fn cancelled(&self, peer: usize, call_id: u64) {
        if let Some(running) = self
            .running_until_cancelled
            .borrow_mut()
            .remove(&(peer, call_id))
        {
            running.abort();
        }
    }

    /// Calls received that end with their caller and are running now.
    #[cfg(test)]
    fn running_until_cancelled(&self) -> usize {
        self.running_until_cancelled.borrow().len()
    }
}

/// A call in `call`. Dropped while the call is still pending (the caller stopped waiting:
/// `resolve` removes the entry of an answered one), it forgets the call and, for calls
/// that end with their caller, cancels it at the callee.
struct Outstanding<'a> {
    router: &'a ShardRouter,
    shard: usize,
    call_id: u64,
    /// Set once the call is on the channel, for calls that end with their caller.
    cancel_on_drop: bool,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let unanswered = self
            .router
            .pending
            .borrow_mut()
            .remove(&self.call_id)
            .is_some();
        if unanswered && self.cancel_on_drop {
            self.router.cancel(self.shard, self.call_id);
        }
    }
}

/// Pumps every incoming channel until the peers close them. Each call runs in its own task
/// so a long-poll wait never holds up the calls behind it; `execute` is the one place where
/// a shard acts on another shard's request. `execute` is called in arrival order, before
/// any await, so what it does synchronously (a produce call taking its place at its
/// partition) keeps the order in which the peer sent the calls.
pub fn serve_incoming<F, Fut>(router: &Rc<ShardRouter>, mut incoming: IncomingCalls, execute: F)
where
    F: Fn(ShardCall) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ShardReply> + 'static,
{
    for (peer, mut stream) in incoming.calls.streams() {
        let router = router.clone();
        let execute = execute.clone();
        glommio::spawn_local(async move {
            while let Some(CallEnvelope { call_id, message }) = stream.next().await {
                let call = match message {
                    CallMessage::Call(call) => call,
                    CallMessage::Cancel => {
                        router.cancelled(peer, call_id);
                        continue;
                    }
                };
                let router = router.clone();
                router.count(|counts| counts.received[call.kind_index()] += 1);
                let ends_with_its_caller = call.ends_with_its_caller();
                let reply = execute(call);
                if !ends_with_its_caller {
                    glommio::spawn_local(async move {
                        let reply = reply.await;
                        router.reply(peer, call_id, reply).await;
                    })
                    .detach();
                    continue;
                }
                let (abort, registration) = AbortHandle::new_pair();
                router
                    .running_until_cancelled
                    .borrow_mut()
                    .insert((peer, call_id), abort);
                glommio::spawn_local(async move {
                    // Aborted: the work (and what it holds, such as a parked wait) is dropped
                    // at once, and nobody wants a reply.
                    let reply = Abortable::new(reply, registration).await;
                    router
                        .running_until_cancelled
                        .borrow_mut()
                        .remove(&(peer, call_id));
                    if let Ok(reply) = reply {
                        router.reply(peer, call_id, reply).await;
                    }
                })
                .detach();
            }
        })
        .detach();
    }
    for (_, mut stream) in incoming.replies.streams() {
        let router = router.clone();
        glommio::spawn_local(async move {
            while let Some(envelope) = stream.next().await {
                router.resolve(envelope);
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::future::join_all;
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;
    use crate::metadata::TopicPartition;
    use crate::partition::OffsetOutcome;

    /// Answers a `ListOffsets` call with `timestamp * 10 + answering shard`, so a caller can
    /// tell both which call and which shard a reply belongs to.
    async fn answer(shard: usize, call: ShardCall) -> ShardReply {
        let ShardCall::Partition(PartitionCall::ListOffsets { timestamp_ms, .. }) = call else {
            panic!("unexpected call {call:?}");
        };
        // Later calls answer sooner, so replies arrive out of order.
        glommio::timer::sleep(Duration::from_micros(200 - timestamp_ms as u64)).await;
        ShardReply::Partition(PartitionReply::Offset(OffsetOutcome {
            error_code: 0,
            offset: timestamp_ms * 10 + shard as i64,
            timestamp_ms,
        }))
    }

    #[test]
    fn concurrent_calls_between_two_shards_each_get_their_own_reply() {
        let meshes = MeshPair::new(2, 8);
        let finished = Arc::new(AtomicUsize::new(0));
        let shards: Vec<_> = (0..2)
            .map(|_| {
                let (meshes, finished) = (meshes.clone(), finished.clone());
                LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(1 << 20)
                    .spawn(move || async move {
                        let (router, incoming) = join(meshes).await;
                        let router = Rc::new(router);
                        let me = router.shard_id();
                        serve_incoming(&router, incoming, move |call| answer(me, call));
                        let peer = 1 - me;
                        let calls = (0..100).map(|timestamp_ms| {
                            let tp = TopicPartition {
                                topic: "t".into(),
                                partition: 0,
                            };
                            let call = PartitionCall::ListOffsets { tp, timestamp_ms };
                            router.call(peer, ShardCall::Partition(call))
                        });
                        for (timestamp_ms, reply) in join_all(calls).await.into_iter().enumerate() {
                            let Ok(ShardReply::Partition(PartitionReply::Offset(outcome))) = reply
                            else {
                                panic!("call {timestamp_ms} failed");
                            };
                            assert_eq!(outcome.offset, timestamp_ms as i64 * 10 + peer as i64);
                        }
                        // Keep serving the peer's calls until it has its replies too.
                        finished.fetch_add(1, Ordering::SeqCst);
                        while finished.load(Ordering::SeqCst) < 2 {
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                        let counts = router.counts();
                        assert_eq!(counts.sent, [100, 0, 0, 0], "partition calls sent");
                        assert_eq!(counts.received, [100, 0, 0, 0], "partition calls received");
                    })
                    .expect("executor starts")
            })
            .collect();
        for shard in shards {
            shard.join().expect("shard ran to completion");
        }
    }

    /// Counts the calls shard 1 is working on; its guard leaves the count when the work
    /// ends, however it ends (completed, or dropped by a cancellation).
    struct Working(Arc<AtomicUsize>);

    impl Working {
        fn start(count: &Arc<AtomicUsize>) -> Self {
            count.fetch_add(1, Ordering::SeqCst);
            Self(count.clone())
        }
    }

    impl Drop for Working {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Shard 1's side: a wait parks for a minute; any other call takes 100 ms.
    async fn park(
        working: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
        call: ShardCall,
    ) -> ShardReply {
        let _working = Working::start(&working);
        if call.ends_with_its_caller() {
            glommio::timer::sleep(Duration::from_secs(60)).await;
            return ShardReply::Partition(PartitionReply::Waited);
        }
        glommio::timer::sleep(Duration::from_millis(100)).await;
        finished.fetch_add(1, Ordering::SeqCst);
        ShardReply::Partition(PartitionReply::Waited)
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !condition() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_wait_whose_caller_stops_waiting_is_dropped_at_the_callee_and_other_calls_finish() {
        let meshes = MeshPair::new(2, 8);
        let working = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let shards: Vec<_> = (0..2)
            .map(|_| {
                let (meshes, working, finished, done) = (
                    meshes.clone(),
                    working.clone(),
                    finished.clone(),
                    done.clone(),
                );
                LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(1 << 20)
                    .spawn(move || async move {
                        let (router, incoming) = join(meshes).await;
                        let router = Rc::new(router);
                        let callee = router.clone();
                        let (serving, serving_finished) = (working.clone(), finished.clone());
                        serve_incoming(&router, incoming, move |call| {
                            park(serving.clone(), serving_finished.clone(), call)
                        });
                        if router.shard_id() == 0 {
                            let tp = TopicPartition {
                                topic: "t".into(),
                                partition: 0,
                            };
                            // Three calls, each given up after 20 ms: more waits than one.
                            for _ in 0..2 {
                                let wait = PartitionCall::WaitForData {
                                    tp: tp.clone(),
                                    offset: 0,
                                    wait: Duration::from_secs(60),
                                };
                                let call = router.call(1, ShardCall::Partition(wait));
                                let _ = glommio::timer::timeout(Duration::from_millis(20), async {
                                    Ok(call.await)
                                })
                                .await;
                            }
                            let list = PartitionCall::ListOffsets {
                                tp,
                                timestamp_ms: -1,
                            };
                            let call = router.call(1, ShardCall::Partition(list));
                            let _ = glommio::timer::timeout(Duration::from_millis(20), async {
                                Ok(call.await)
                            })
                            .await;
                            assert!(
                                router.pending.borrow().is_empty(),
                                "the caller forgets every call it gave up"
                            );
                            until("the waits are dropped at the callee", || {
                                working.load(Ordering::SeqCst) == 1
                            })
                            .await;
                            until("the non-wait call runs to completion", || {
                                finished.load(Ordering::SeqCst) == 1
                            })
                            .await;
                            assert_eq!(working.load(Ordering::SeqCst), 0);
                        } else {
                            until("shard 0 is done", || done.load(Ordering::SeqCst) == 1).await;
                            assert_eq!(
                                callee.running_until_cancelled(),
                                0,
                                "cancelled waits leave the callee's map"
                            );
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        until("both shards are done", || done.load(Ordering::SeqCst) == 2).await;
                    })
                    .expect("executor starts")
            })
            .collect();
        for shard in shards {
            shard.join().expect("shard ran to completion");
        }
    }
}
