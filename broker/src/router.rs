//! Cross-shard calls over glommio's channel mesh, in the manner of Seastar's
//! `invoke_on(shard, func)`: the caller names a shard and hands it a job, a closure that runs
//! there on that shard's services `S` and answers with a value of its own type. The router
//! knows nothing of what the jobs do: each subsystem writes its own typed calls on top
//! (`partition`, `groups`, `controller`, the metadata apply in `shard`). This module imports
//! nothing from the crate.
//!
//! Every shard joins two full meshes: one carries calls, the other carries their replies, so
//! a shard that is busy sending calls can always drain the replies it is waiting for. The
//! mesh channels are SPSC rings; no lock is taken on either side.
//!
//! `ShardRouter` lives on one shard (it is `!Send`); its calls may run from many tasks of
//! that shard at once. Calls to the local shard never go through the mesh: the job runs in
//! place, on the services `serve_incoming` installed.
//!
//! Types: a job's reply crosses the reply mesh as `Box<dyn Any + Send>` next to its call id;
//! the one function that created both (`send_job`) is the one that takes it back, so the
//! downcast in `ReplyWait` cannot fail.
//!
//! Cancellation: a caller that stops waiting (drops the reply future) forgets the call at
//! once. When the call only waits for something (`Ending::WithItsCaller`, a fetch's
//! long-poll wait), the caller also sends a `Cancel` for it, and the callee drops its work
//! on receipt: a wait parked on another shard lives no longer than the fetch that parked it.
//! Every other call runs to completion (a produce is not half-undone because its client went
//! away), and its late reply is dropped.
//!
//! Order: calls sent with `invoke_in_order` reach the peer in the order of those calls (the
//! mesh channel is FIFO, and when it is full they wait in a per-peer outbox here, in order),
//! and the peer runs each job's synchronous part in arrival order, before any await (the
//! part before the job's returned future). A produce job dispatches its batches to the
//! partition's append line in that synchronous part, so produce order survives the mesh.
//! Plain `invoke_on` promises no order: tasks waiting for room in a full channel enter it as
//! they are woken.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use futures::future::{AbortHandle, Abortable, Either, LocalBoxFuture};
use futures::StreamExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::{GlommioError, ResourceType};

/// A job's reply as it crosses the reply mesh (see the module docs on types).
type AnyReply = Box<dyn Any + Send>;

/// A job as it crosses the call mesh. Called on the callee's services, it does its
/// synchronous part at once and returns the rest.
type BoxedJob<S> = Box<dyn FnOnce(&Rc<S>) -> LocalBoxFuture<'static, AnyReply> + Send>;

/// What a call is, for the per-kind counters: an index into the kind names given to
/// [`join`]. The layer above declares its kinds once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallKind(pub usize);

/// Whether the callee's work outlives a caller that stops waiting (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The job changes something: it runs to the end, and a late reply is dropped.
    ToCompletion,
    /// The job only waits and changes nothing: the callee drops it when the caller stops
    /// waiting.
    WithItsCaller,
}

/// Calls of one kind that one shard has sent to and received from the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub kind: &'static str,
    pub sent: u64,
    pub received: u64,
}

pub struct CallEnvelope<S> {
    call_id: u64,
    message: CallMessage<S>,
}

/// What travels on the call mesh: a call, or the cancellation of an earlier one from the
/// same shard (the channel is FIFO, so a `Cancel` never overtakes its call).
enum CallMessage<S> {
    Call {
        job: BoxedJob<S>,
        kind: CallKind,
        ending: Ending,
    },
    Cancel,
}

pub struct ReplyEnvelope {
    call_id: u64,
    reply: AnyReply,
}

/// The two meshes, built once in `main` and cloned into every shard's thread.
pub struct MeshPair<S> {
    calls: MeshBuilder<CallEnvelope<S>, Full>,
    replies: MeshBuilder<ReplyEnvelope, Full>,
}

impl<S: 'static> Clone for MeshPair<S> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            replies: self.replies.clone(),
        }
    }
}

impl<S: 'static> MeshPair<S> {
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

/// A call sent and not yet taken by its caller.
enum Pending {
    /// No reply yet; the waker of the task waiting for it, once it has polled.
    Waiting(Option<Waker>),
    Answered(AnyReply),
}

/// One shard's end of the meshes, running jobs on services of type `S`. Owned by that
/// shard; see the module docs.
pub struct ShardRouter<S> {
    shard_id: usize,
    call_senders: Senders<CallEnvelope<S>>,
    reply_senders: Senders<ReplyEnvelope>,
    /// Calls sent and not yet taken by their callers, by call id. Single-threaded: no
    /// atomics or locks; one map entry per call is its whole cost here.
    pending: RefCell<HashMap<u64, Pending>>,
    next_call_id: Cell<u64>,
    /// Names of the call kinds (`CallKind` indexes them), and the counts per kind. Written
    /// by this shard only; read by its metrics snapshot.
    kinds: &'static [&'static str],
    sent: Box<[Cell<u64>]>,
    received: Box<[Cell<u64>]>,
    /// Calls received that end with their caller, running now, by (calling shard, call id).
    /// Bounded by what the calls bound: for waits, `Limits::shard_fetch_waits_parked_max`
    /// (a wait past it answers at once and leaves the map).
    running_until_cancelled: RefCell<HashMap<(usize, u64), AbortHandle>>,
    /// `invoke_in_order` calls waiting for room in each peer's channel (index: peer shard).
    outboxes: Vec<Outbox<S>>,
    /// This shard's services, on which local calls run (installed by `serve_incoming`).
    local: RefCell<Weak<S>>,
}

/// Calls to one peer that found its channel full, oldest first. Bounded by what sends them:
/// every call holds a request's bytes, which the shard's request budget bounds.
struct Outbox<S> {
    queued: RefCell<VecDeque<CallEnvelope<S>>>,
    /// A task is moving `queued` into the channel; later calls queue behind it.
    draining: Cell<bool>,
}

impl<S> Default for Outbox<S> {
    fn default() -> Self {
        Self {
            queued: RefCell::default(),
            draining: Cell::new(false),
        }
    }
}

/// The receiving halves, handed to `serve_incoming` once the shard is set up.
pub struct IncomingCalls<S> {
    calls: Receivers<CallEnvelope<S>>,
    replies: Receivers<ReplyEnvelope>,
}

/// Joins both meshes. Every shard must call this before any shard can send. `kinds` names
/// the call kinds the layer above counts (`CallKind` indexes it).
pub async fn join<S: 'static>(
    meshes: MeshPair<S>,
    kinds: &'static [&'static str],
) -> (ShardRouter<S>, IncomingCalls<S>) {
    let (call_senders, calls) = meshes.calls.join().await.expect("joining the call mesh");
    let (reply_senders, replies) = meshes.replies.join().await.expect("joining the reply mesh");
    let outboxes = (0..call_senders.nr_consumers())
        .map(|_| Outbox::default())
        .collect();
    let counters = || kinds.iter().map(|_| Cell::new(0)).collect();
    let router = ShardRouter {
        shard_id: call_senders.peer_id(),
        call_senders,
        reply_senders,
        pending: RefCell::new(HashMap::new()),
        next_call_id: Cell::new(0),
        kinds,
        sent: counters(),
        received: counters(),
        running_until_cancelled: RefCell::new(HashMap::new()),
        outboxes,
        local: RefCell::new(Weak::new()),
    };
    (router, IncomingCalls { calls, replies })
}

/// Boxes a typed job for the mesh; its reply comes back as `AnyReply` holding an `R`.
fn erase<S, F, Fut, R>(job: F) -> BoxedJob<S>
where
    F: FnOnce(&Rc<S>) -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    Box::new(move |services: &Rc<S>| {
        let reply = job(services);
        Box::pin(async move { Box::new(reply.await) as AnyReply })
    })
}

impl<S: 'static> ShardRouter<S> {
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Shards in the mesh, this one included.
    pub fn shard_count(&self) -> usize {
        self.call_senders.nr_consumers()
    }

    /// This shard's services, for a call to itself.
    fn local(&self) -> Result<Rc<S>, PeerGone> {
        self.local.borrow().upgrade().ok_or(PeerGone {
            shard: self.shard_id,
        })
    }

    /// Runs `job` on `shard`'s services and returns its answer: in place when `shard` is
    /// this one, else over the mesh. Cancel-safe: dropping the future forgets the call, and
    /// with `Ending::WithItsCaller` stops the job at the callee (see the module docs).
    pub async fn invoke_on<F, Fut, R>(
        self: &Rc<Self>,
        shard: usize,
        kind: CallKind,
        ending: Ending,
        job: F,
    ) -> Result<R, PeerGone>
    where
        F: FnOnce(&Rc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if shard == self.shard_id {
            let local = self.local()?;
            return Ok(job(&local).await);
        }
        let (call_id, mut wait) = self.register_call::<R>(shard, kind);
        let envelope = CallEnvelope {
            call_id,
            message: CallMessage::Call {
                job: erase(job),
                kind,
                ending,
            },
        };
        if self.call_senders.send_to(shard, envelope).await.is_err() {
            return Err(PeerGone { shard });
        }
        wait.cancel_on_drop = ending == Ending::WithItsCaller;
        wait.await
    }

    /// Runs `job` on `shard`'s services, behind every job sent to it this way before: its
    /// synchronous part runs now when `shard` is this one, else at the peer on arrival, in
    /// the order of these calls (see the module docs). Returns the wait for its answer.
    /// The job runs to completion whether or not that wait is kept.
    pub fn invoke_in_order<F, Fut, R>(
        self: &Rc<Self>,
        shard: usize,
        kind: CallKind,
        job: F,
    ) -> impl Future<Output = Result<R, PeerGone>> + 'static
    where
        F: FnOnce(&Rc<S>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        if shard == self.shard_id {
            let running = self.local().map(|local| job(&local));
            return Either::Left(async move { Ok(running?.await) });
        }
        let (call_id, wait) = self.register_call::<R>(shard, kind);
        let envelope = CallEnvelope {
            call_id,
            message: CallMessage::Call {
                job: erase(job),
                kind,
                ending: Ending::ToCompletion,
            },
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
                // Closed (shutdown): the forgotten call reads as `PeerGone`.
                Err(_) => self.forget(call_id),
            }
        }
        Either::Right(wait)
    }

    /// Gives a call to `shard` (never this shard) its id, its pending entry and its count.
    fn register_call<R>(self: &Rc<Self>, shard: usize, kind: CallKind) -> (u64, ReplyWait<S, R>) {
        assert_ne!(
            shard, self.shard_id,
            "local calls do not go through the mesh"
        );
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let sent = &self.sent[kind.0];
        sent.set(sent.get() + 1);
        self.pending
            .borrow_mut()
            .insert(call_id, Pending::Waiting(None));
        let wait = ReplyWait {
            router: self.clone(),
            shard,
            call_id,
            cancel_on_drop: false,
            finished: false,
            reply: PhantomData,
        };
        (call_id, wait)
    }

    /// Drops a pending call that will get no reply; its waiter reads `PeerGone`.
    fn forget(&self, call_id: u64) {
        if let Some(Pending::Waiting(Some(waker))) = self.pending.borrow_mut().remove(&call_id) {
            waker.wake();
        }
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

    /// Moves `shard`'s outbox into its channel, oldest first, as room appears.
    async fn drain_outbox(self: Rc<Self>, shard: usize) {
        loop {
            let next = self.outboxes[shard].queued.borrow_mut().pop_front();
            let Some(envelope) = next else { break };
            let call_id = envelope.call_id;
            if self.call_senders.send_to(shard, envelope).await.is_err() {
                self.forget(call_id);
            }
        }
        self.outboxes[shard].draining.set(false);
    }

    /// Calls sent and received so far, per kind, in the order of the kind names.
    pub fn counts(&self) -> Vec<KindCounts> {
        self.kinds
            .iter()
            .zip(self.sent.iter().zip(self.received.iter()))
            .map(|(kind, (sent, received))| KindCounts {
                kind,
                sent: sent.get(),
                received: received.get(),
            })
            .collect()
    }

    async fn reply(&self, shard: usize, call_id: u64, reply: AnyReply) {
        // A closed reply channel means the caller's shard is shutting down; nobody waits.
        let _ = self
            .reply_senders
            .send_to(shard, ReplyEnvelope { call_id, reply })
            .await;
    }

    fn resolve(&self, envelope: ReplyEnvelope) {
        // The caller may have stopped waiting (a cancelled long poll); then the reply is dropped.
        let mut pending = self.pending.borrow_mut();
        let Some(entry) = pending.get_mut(&envelope.call_id) else {
            return;
        };
        let waiting = std::mem::replace(entry, Pending::Answered(envelope.reply));
        drop(pending);
        if let Pending::Waiting(Some(waker)) = waiting {
            waker.wake();
        }
    }

    /// Stops a running call that ends with its caller; a no-op when it has finished already
    /// (its reply and the cancellation crossed) or runs to completion.
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

/// The wait for a call's reply of type `R`. Dropped while the call is still pending (the
/// caller stopped waiting), it forgets the call and, for calls that end with their caller,
/// cancels it at the callee.
struct ReplyWait<S: 'static, R> {
    router: Rc<ShardRouter<S>>,
    shard: usize,
    call_id: u64,
    /// Set once the call is on the channel, for calls that end with their caller.
    cancel_on_drop: bool,
    /// The reply (or `PeerGone`) has been taken.
    finished: bool,
    reply: PhantomData<fn() -> R>,
}

impl<S: 'static, R: 'static> Future for ReplyWait<S, R> {
    type Output = Result<R, PeerGone>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let call_id = self.call_id;
        let mut pending = self.router.pending.borrow_mut();
        match pending.get_mut(&call_id) {
            Some(Pending::Waiting(waker)) => {
                *waker = Some(context.waker().clone());
                Poll::Pending
            }
            Some(Pending::Answered(_)) => {
                let Some(Pending::Answered(reply)) = pending.remove(&call_id) else {
                    unreachable!("matched just above");
                };
                drop(pending);
                self.finished = true;
                let reply = reply.downcast::<R>().expect(
                    "a reply has the type of its call's job: `invoke_*` created both the job \
                     and this wait for the same call id",
                );
                Poll::Ready(Ok(*reply))
            }
            None => {
                drop(pending);
                self.finished = true;
                Poll::Ready(Err(PeerGone { shard: self.shard }))
            }
        }
    }
}

impl<S: 'static, R> Drop for ReplyWait<S, R> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let removed = self.router.pending.borrow_mut().remove(&self.call_id);
        if matches!(removed, Some(Pending::Waiting(_))) && self.cancel_on_drop {
            self.router.cancel(self.shard, self.call_id);
        }
    }
}

/// Pumps every incoming channel until the peers close them, running the jobs on `services`
/// (which also serve this shard's calls to itself from now on). Each call runs in its own
/// task so a long-poll wait never holds up the calls behind it; a job's synchronous part
/// runs in arrival order, before any await, so what it does there (a produce call taking
/// its place at its partition) keeps the order in which the peer sent the calls.
pub fn serve_incoming<S: 'static>(
    router: &Rc<ShardRouter<S>>,
    mut incoming: IncomingCalls<S>,
    services: &Rc<S>,
) {
    *router.local.borrow_mut() = Rc::downgrade(services);
    for (peer, mut stream) in incoming.calls.streams() {
        let router = router.clone();
        let services = services.clone();
        glommio::spawn_local(async move {
            while let Some(CallEnvelope { call_id, message }) = stream.next().await {
                let (job, kind, ending) = match message {
                    CallMessage::Call { job, kind, ending } => (job, kind, ending),
                    CallMessage::Cancel => {
                        router.cancelled(peer, call_id);
                        continue;
                    }
                };
                let received = &router.received[kind.0];
                received.set(received.get() + 1);
                let reply = job(&services);
                let router = router.clone();
                if ending == Ending::ToCompletion {
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
    use std::sync::Arc;
    use std::time::Duration;

    use futures::future::join_all;
    use glommio::{LocalExecutorBuilder, Placement};

    use super::*;

    const KINDS: &[&str] = &["lookup", "describe"];
    const LOOKUP: CallKind = CallKind(0);
    const DESCRIBE: CallKind = CallKind(1);

    /// A test shard's services: its id, and the order in which jobs reached it.
    struct TestShard {
        id: usize,
        arrivals: RefCell<Vec<u64>>,
    }

    /// Runs `body` on `shard_count` executors, each with its router serving its `TestShard`.
    fn on_shards<F, Fut>(shard_count: usize, channel_slots: usize, body: F)
    where
        F: Fn(Rc<ShardRouter<TestShard>>, Rc<TestShard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let meshes = MeshPair::new(shard_count, channel_slots);
        let shards: Vec<_> = (0..shard_count)
            .map(|_| {
                let (meshes, body) = (meshes.clone(), body.clone());
                LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(1 << 20)
                    .spawn(move || async move {
                        let (router, incoming) = join(meshes, KINDS).await;
                        let router = Rc::new(router);
                        let services = Rc::new(TestShard {
                            id: router.shard_id(),
                            arrivals: RefCell::default(),
                        });
                        serve_incoming(&router, incoming, &services);
                        body(router, services).await;
                    })
                    .expect("executor starts")
            })
            .collect();
        for shard in shards {
            shard.join().expect("shard ran to completion");
        }
    }

    /// Waits until `count` shards have reached this point, serving the others meanwhile.
    async fn barrier(reached: &AtomicUsize, count: usize) {
        reached.fetch_add(1, Ordering::SeqCst);
        while reached.load(Ordering::SeqCst) < count {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn concurrent_calls_between_two_shards_each_get_their_own_reply() {
        let finished = Arc::new(AtomicUsize::new(0));
        on_shards(2, 8, move |router, _| {
            let finished = finished.clone();
            async move {
                let peer = 1 - router.shard_id();
                let calls = (0..100_i64).map(|call| {
                    router.invoke_on(
                        peer,
                        LOOKUP,
                        Ending::ToCompletion,
                        move |shard: &Rc<TestShard>| {
                            let id = shard.id as i64;
                            async move {
                                // Later calls answer sooner, so replies arrive out of order.
                                glommio::timer::sleep(Duration::from_micros(200 - call as u64))
                                    .await;
                                call * 10 + id
                            }
                        },
                    )
                });
                for (call, reply) in join_all(calls).await.into_iter().enumerate() {
                    let reply = reply.expect("the peer answers");
                    assert_eq!(reply, call as i64 * 10 + peer as i64);
                }
                // Keep serving the peer's calls until it has its replies too.
                barrier(&finished, 2).await;
                let counts = router.counts();
                assert_eq!(
                    counts,
                    vec![
                        KindCounts {
                            kind: "lookup",
                            sent: 100,
                            received: 100
                        },
                        KindCounts {
                            kind: "describe",
                            sent: 0,
                            received: 0
                        },
                    ]
                );
            }
        });
    }

    #[test]
    fn replies_of_different_types_reach_their_callers_typed() {
        let finished = Arc::new(AtomicUsize::new(0));
        on_shards(2, 4, move |router, _| {
            let finished = finished.clone();
            async move {
                let peer = 1 - router.shard_id();
                let numbers = (0..20_u64).map(|call| {
                    router.invoke_on(
                        peer,
                        LOOKUP,
                        Ending::ToCompletion,
                        move |shard: &Rc<TestShard>| {
                            let id = shard.id as u64;
                            async move { call + 1000 * id }
                        },
                    )
                });
                let names = (0..20_u64).map(|call| {
                    router.invoke_on(
                        peer,
                        DESCRIBE,
                        Ending::ToCompletion,
                        move |shard: &Rc<TestShard>| {
                            let id = shard.id;
                            async move { (format!("shard {id} call {call}"), vec![call; 3]) }
                        },
                    )
                });
                let (numbers, names) = futures::join!(join_all(numbers), join_all(names));
                for (call, (number, name)) in numbers.into_iter().zip(names).enumerate() {
                    let call = call as u64;
                    assert_eq!(number.expect("answered"), call + 1000 * peer as u64);
                    let (name, list) = name.expect("answered");
                    assert_eq!(name, format!("shard {peer} call {call}"));
                    assert_eq!(list, vec![call; 3]);
                }
                // A call to this shard itself runs in place, with the same types.
                let local = router
                    .invoke_on(
                        router.shard_id(),
                        LOOKUP,
                        Ending::ToCompletion,
                        |shard: &Rc<TestShard>| {
                            let id = shard.id;
                            async move { id }
                        },
                    )
                    .await
                    .expect("local calls always run");
                assert_eq!(local, router.shard_id());
                barrier(&finished, 2).await;
                let counts = router.counts();
                assert_eq!(
                    (counts[0].sent, counts[1].sent),
                    (20, 20),
                    "local calls are not counted"
                );
            }
        });
    }

    #[test]
    fn calls_in_order_arrive_in_order_through_a_full_channel() {
        let finished = Arc::new(AtomicUsize::new(0));
        // Two slots: most of the 200 calls wait in the outbox.
        on_shards(2, 2, move |router, services| {
            let finished = finished.clone();
            async move {
                if router.shard_id() == 0 {
                    let replies: Vec<_> = (0..200_u64)
                        .map(|call| {
                            router.invoke_in_order(1, LOOKUP, move |shard: &Rc<TestShard>| {
                                // The synchronous part: runs on arrival, in arrival order.
                                shard.arrivals.borrow_mut().push(call);
                                async move {
                                    // Later calls finish sooner: order is the arrivals'.
                                    glommio::timer::sleep(Duration::from_micros(400 - call)).await;
                                    call
                                }
                            })
                        })
                        .collect();
                    let replies = join_all(replies).await;
                    for (call, reply) in replies.into_iter().enumerate() {
                        assert_eq!(reply.expect("answered"), call as u64);
                    }
                }
                barrier(&finished, 2).await;
                if router.shard_id() == 1 {
                    assert_eq!(*services.arrivals.borrow(), (0..200).collect::<Vec<u64>>());
                }
            }
        });
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

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !condition() {
            assert!(started.elapsed() < Duration::from_secs(5), "{what}");
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_wait_whose_caller_stops_waiting_is_dropped_at_the_callee_and_other_calls_finish() {
        let working = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        on_shards(2, 8, move |router, _| {
            let (working, finished, done) = (working.clone(), finished.clone(), done.clone());
            async move {
                if router.shard_id() == 0 {
                    // Two waits and then one other call, each given up after 20 ms.
                    for _ in 0..2 {
                        let working = working.clone();
                        let wait = router.invoke_on(
                            1,
                            LOOKUP,
                            Ending::WithItsCaller,
                            move |_: &Rc<TestShard>| {
                                // Shard 1's side: a wait parks for a minute.
                                let working = Working::start(&working);
                                async move {
                                    glommio::timer::sleep(Duration::from_secs(60)).await;
                                    drop(working);
                                }
                            },
                        );
                        let _ = glommio::timer::timeout(Duration::from_millis(20), async {
                            Ok(wait.await)
                        })
                        .await;
                    }
                    let (serving, serving_finished) = (working.clone(), finished.clone());
                    let call = router.invoke_on(
                        1,
                        LOOKUP,
                        Ending::ToCompletion,
                        move |_: &Rc<TestShard>| {
                            // Any other call takes 100 ms.
                            let working = Working::start(&serving);
                            async move {
                                glommio::timer::sleep(Duration::from_millis(100)).await;
                                serving_finished.fetch_add(1, Ordering::SeqCst);
                                drop(working);
                            }
                        },
                    );
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
                        router.running_until_cancelled(),
                        0,
                        "cancelled waits leave the callee's map"
                    );
                }
                done.fetch_add(1, Ordering::SeqCst);
                until("both shards are done", || done.load(Ordering::SeqCst) == 2).await;
            }
        });
    }
}
