//! The broker-to-broker transport on shard 0: one listener on this broker's internal address
//! (its entry in `controller.quorum.voters`) and one outbound connection per peer broker,
//! carrying frames of `ringfeed_replication::wire` (`replication/WIRE.md`).
//!
//! Contract:
//! - Lives on one shard (shard 0) and is `!Send`; every count is a `Cell` only it writes.
//! - Sending never waits: [`Transport::send`] encodes the frame and queues it for its peer.
//!   Each peer's queue is bounded in bytes; a frame that does not fit is dropped and counted.
//!   Raft tolerates lost messages (it retries appends and heartbeats), so dropping is safe,
//!   while waiting would let one dead peer stall the driver round of every group.
//! - Each peer has one writer task: connect (with a timeout), write queued frames in order,
//!   and on any error close, wait a backoff that doubles from `backoff_min` to `backoff_max`,
//!   and connect again. The frame being written when a connection breaks is lost (counted).
//! - Receiving: each accepted connection has a reader task that checks the 4-byte length
//!   against `WireLimits::frame_bytes_max` before buffering the body, decodes the frame
//!   (version, counts and enums checked by the codec), and hands it to the inbound channel.
//!   A frame that does not decode, or is not addressed from a known peer to this broker, closes
//!   the connection with a warning: it came from something that is not a correct peer. A full
//!   inbound channel drops the frame (counted), for the same reason sends do.
//! - Accepted connections are bounded (`inbound_connections_max`): a peer that reconnects
//!   briefly has two, anything more is refused.
//! - Liveness per peer broker, not per group: a writer with nothing to send for
//!   `KEEPALIVE_INTERVAL` sends an empty frame (a header and two empty lists, wire version
//!   1), and a peer heard from (any frame) within `LIVENESS_TIMEOUT` is live. Empty frames
//!   are counted apart and not handed to the driver. A peer heard in a newer incarnation
//!   than before restarted. Each change is logged, counted (`ringfeed_cluster_peers_live`)
//!   and told to the liveness listener: every shard's Raft driver rests idle groups on it
//!   (`docs/REPLICATION.md`, "Quiet idle groups").
//! - A dead link is noticed on both ends: a writer's connection whose bytes stay
//!   unacknowledged for `UNACKNOWLEDGED_TIMEOUT` fails (`TCP_USER_TIMEOUT`) and is made
//!   afresh, and a reader closes a connection from which no byte arrived for
//!   `INBOUND_SILENCE_MAX`, between frames or inside one (a cut link delivers no FIN, and
//!   the stale reader would hold a place of `inbound_connections_max`).
//! - With `tls` set, every connection is mutual TLS between broker principals (`peer_tls`),
//!   both ways, before any frame: a peer that fails the handshake or is not a broker is
//!   refused (inbound: counted in `connections_refused_unauthenticated`; outbound: a
//!   connection failure, retried after the backoff). Without it the port is plaintext and
//!   unauthenticated (`docs/SECURITY.md`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use ringfeed_replication::driver::LivePeers;
use ringfeed_replication::wire::{frame_body_length, Frame, WireLimits, FRAME_LENGTH_BYTES};

use crate::cluster::peer_tls::PeerTls;

/// How long a writer with nothing to send waits before it sends an empty frame: the leader
/// heartbeat interval (`ringfeed_replication::driver::HEARTBEAT_TICKS` ticks).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);
/// A peer heard from within this is live: the shortest election timeout
/// (`ringfeed_replication::driver::ELECTION_TICKS` ticks), five keepalive intervals.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

const _: () = assert!(KEEPALIVE_INTERVAL.as_millis() * 5 <= LIVENESS_TIMEOUT.as_millis());

/// Limits and timings of the transport, fixed at start-up.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// This broker's `node.id`.
    pub node_id: u64,
    /// This start's incarnation, in the header of the empty frames the transport sends
    /// itself (the driver's frames carry their own).
    pub incarnation: u64,
    pub limits: WireLimits,
    /// Encoded bytes queued for one peer at most. 64 MiB: two frames of the largest size, or
    /// about a second of appends at 64 MiB/s to a peer that stopped reading.
    pub send_queue_bytes_max: usize,
    /// Accepted connections open at once at most.
    pub inbound_connections_max: usize,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Mutual TLS between brokers, or None for a plaintext port.
    pub tls: Option<std::sync::Arc<PeerTls>>,
}

impl TransportSettings {
    /// The defaults for `peer_count` peers. Backoff 50 ms .. 1 s: a restarted peer is back in
    /// the cluster within a second of listening, well inside a 1-2 s election timeout.
    pub fn new(node_id: u64, peer_count: usize) -> Self {
        Self {
            node_id,
            incarnation: 0,
            limits: WireLimits::default(),
            send_queue_bytes_max: 64 << 20,
            inbound_connections_max: 2 * peer_count + 2,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            tls: None,
        }
    }
}

/// The transport's counts, as [`Transport::counts`] copies them out for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounts {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Outbound connections established (the first one to each peer included).
    pub connections_opened: u64,
    /// Outbound connection attempts that failed, and connections that broke.
    pub connection_failures: u64,
    /// Frames dropped because their peer's queue was full.
    pub frames_dropped_queue_full: u64,
    /// Frames lost because the connection broke while they were written.
    pub frames_dropped_send_failed: u64,
    /// Frames addressed to a node that is not a peer.
    pub frames_dropped_unknown_peer: u64,
    /// Frames received and dropped because the driver's inbound channel was full.
    pub frames_dropped_inbound_full: u64,
    /// Inbound connections closed for a frame that does not decode or is misaddressed.
    pub connections_refused_bad_frame: u64,
    /// Inbound connections refused above `inbound_connections_max`.
    pub connections_refused_too_many: u64,
    /// Inbound connections refused for a failed TLS handshake or a peer certificate that
    /// is not a broker's (only with `tls`).
    pub connections_refused_unauthenticated: u64,
    /// A gauge, not a count: bytes of frames waiting in the peers' send queues now.
    pub queued_bytes: u64,
    /// Empty frames sent because a peer's writer had nothing else for `KEEPALIVE_INTERVAL`
    /// (not in `frames_sent`).
    pub keepalives_sent: u64,
    /// Empty frames received (not in `frames_received`; not handed to the driver).
    pub keepalives_received: u64,
    /// A gauge: peers heard from within `LIVENESS_TIMEOUT`, as of the last check.
    pub peers_live: u64,
}

/// The counters, written only by the transport's own tasks on its shard.
#[derive(Default)]
struct Stats {
    counts: Cell<TransportCounts>,
}

impl Stats {
    fn add(&self, change: impl FnOnce(&mut TransportCounts)) {
        let mut counts = self.counts.get();
        change(&mut counts);
        self.counts.set(counts);
    }
}

/// One peer's outbound queue: encoded frames waiting for its writer task.
struct PeerQueue {
    address: String,
    frames: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    /// Wakes the writer when a frame is queued (capacity 1: one pending wake is enough).
    doorbell: LocalSender<()>,
}

/// The transport of one broker. See the module docs for the contract.
pub struct Transport {
    settings: TransportSettings,
    local_address: SocketAddr,
    peers: BTreeMap<u64, Rc<PeerQueue>>,
    stats: Rc<Stats>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    /// The reader task of each open inbound connection, by connection number; a reader
    /// removes itself when its connection ends.
    readers: Readers,
    liveness: Rc<Liveness>,
}

type Readers = Rc<RefCell<BTreeMap<u64, JoinHandle<()>>>>;

/// When each peer was last heard from and in which incarnation, written by the readers;
/// which peers the last liveness check found live; and who is told of each change.
#[derive(Default)]
struct Liveness {
    last_heard: RefCell<BTreeMap<u64, (Instant, u64)>>,
    live: RefCell<LivePeers>,
    listener: RefCell<Option<LivenessListener>>,
}

/// Told the live peers (with their incarnations) at each change: the shards' Raft drivers
/// rest idle groups on it (`ringfeed_replication::driver::quiet`).
pub type LivenessListener = Box<dyn Fn(&LivePeers)>;

/// What one liveness check found changed.
#[derive(Debug, Default, PartialEq, Eq)]
struct LivenessChanges {
    came: Vec<u64>,
    went: Vec<u64>,
    /// Heard in a newer incarnation than before: restarted within the liveness timeout.
    restarted: Vec<u64>,
}

impl LivenessChanges {
    fn is_empty(&self) -> bool {
        self.came.is_empty() && self.went.is_empty() && self.restarted.is_empty()
    }
}

impl Liveness {
    fn heard(&self, peer: u64, incarnation: u64) {
        let now = Instant::now();
        let mut last_heard = self.last_heard.borrow_mut();
        let last = last_heard.entry(peer).or_insert((now, incarnation));
        // A frame of an older incarnation (an old connection's last bytes) does not make a
        // restarted peer look restarted again.
        if incarnation >= last.1 {
            *last = (now, incarnation);
        }
    }

    /// Recomputes the live set as of `now` and tells the listener if it changed.
    fn check(&self, now: Instant) -> LivenessChanges {
        let live_now: LivePeers = self
            .last_heard
            .borrow()
            .iter()
            .filter(|(_, (heard, _))| now.saturating_duration_since(*heard) < LIVENESS_TIMEOUT)
            .map(|(peer, (_, incarnation))| (*peer, *incarnation))
            .collect();
        let mut live = self.live.borrow_mut();
        let changes = LivenessChanges {
            came: live_now
                .keys()
                .filter(|peer| !live.contains_key(peer))
                .copied()
                .collect(),
            went: live
                .keys()
                .filter(|peer| !live_now.contains_key(peer))
                .copied()
                .collect(),
            restarted: live_now
                .iter()
                .filter(|(peer, incarnation)| live.get(peer).is_some_and(|was| was != *incarnation))
                .map(|(peer, _)| *peer)
                .collect(),
        };
        *live = live_now;
        drop(live);
        if !changes.is_empty() {
            self.tell_listener();
        }
        changes
    }

    fn tell_listener(&self) {
        if let Some(listener) = self.listener.borrow().as_ref() {
            listener(&self.live.borrow());
        }
    }
}

impl Transport {
    /// Binds the internal address and starts accepting peers, and starts one writer per peer
    /// (`peers`: node id → `host:port`, this broker excluded). Received frames go to `inbound`.
    pub fn start(
        settings: TransportSettings,
        listen: SocketAddr,
        peers: &BTreeMap<u64, String>,
        inbound: LocalSender<Frame>,
    ) -> std::io::Result<Rc<Self>> {
        assert!(
            !peers.contains_key(&settings.node_id),
            "a broker is not its own peer"
        );
        // SO_REUSEPORT lets a transport restarted in the same process bind before the old
        // listener's close completes; SO_REUSEADDR keeps the TIME_WAIT a previous run left
        // from blocking a restart (`preflight::claim_internal_port`).
        let listener = crate::sockets::reusable_listener(listen)?;
        let local_address = listener.local_addr()?;
        let stats = Rc::new(Stats::default());
        let mut tasks = Vec::new();
        let mut queues = BTreeMap::new();
        let liveness = Rc::new(Liveness::default());
        for (&node_id, address) in peers {
            let (doorbell, rung) = local_channel::new_bounded(1);
            let queue = Rc::new(PeerQueue {
                address: address.clone(),
                frames: RefCell::new(VecDeque::new()),
                queued_bytes: Cell::new(0),
                doorbell,
            });
            let mut keepalive = BytesMut::new();
            Frame::new(settings.node_id, node_id, settings.incarnation).encode(&mut keepalive);
            let writer = write_to_peer(
                Peer {
                    node_id,
                    queue: queue.clone(),
                    keepalive: keepalive.freeze(),
                },
                rung,
                settings.clone(),
                stats.clone(),
            );
            tasks.push(glommio::spawn_local(writer).detach());
            queues.insert(node_id, queue);
        }
        let known_peers: Vec<u64> = peers.keys().copied().collect();
        let readers = Readers::default();
        let accept = accept_peers(
            listener,
            settings.clone(),
            known_peers,
            Inbound {
                frames: Rc::new(inbound),
                liveness: liveness.clone(),
            },
            stats.clone(),
            readers.clone(),
        );
        tasks.push(glommio::spawn_local(accept).detach());
        tasks.push(
            glommio::spawn_local(check_liveness_periodically(liveness.clone(), stats.clone()))
                .detach(),
        );
        tracing::info!(node_id = settings.node_id, %local_address, peers = peers.len(), "cluster transport listening");
        Ok(Rc::new(Self {
            settings,
            local_address,
            peers: queues,
            stats,
            tasks: RefCell::new(tasks),
            readers,
            liveness,
        }))
    }

    /// The peers heard from within `LIVENESS_TIMEOUT`, each with the incarnation it was
    /// last heard in, as of the last check (every `KEEPALIVE_INTERVAL`).
    pub fn live_peers(&self) -> LivePeers {
        self.liveness.live.borrow().clone()
    }

    /// From now on `listener` is told the live peers at each change, and once now.
    pub fn set_liveness_listener(&self, listener: LivenessListener) {
        *self.liveness.listener.borrow_mut() = Some(listener);
        self.liveness.tell_listener();
    }

    /// The bound internal address (the port is the OS's choice when 0 was asked).
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    pub fn counts(&self) -> TransportCounts {
        TransportCounts {
            queued_bytes: self
                .peers
                .values()
                .map(|queue| queue.queued_bytes.get() as u64)
                .sum(),
            ..self.stats.counts.get()
        }
    }

    /// Queues `frame` for its `to_node`; never waits (module docs). Returns whether it was
    /// queued.
    pub fn send(&self, frame: &Frame) -> bool {
        assert_eq!(
            frame.from_node, self.settings.node_id,
            "frame from another node"
        );
        let Some(queue) = self.peers.get(&frame.to_node) else {
            self.stats
                .add(|counts| counts.frames_dropped_unknown_peer += 1);
            return false;
        };
        let size = frame.encoded_size();
        // The driver splits its output at the frame limit; a larger frame is a driver bug.
        assert!(
            size - FRAME_LENGTH_BYTES <= self.settings.limits.frame_bytes_max,
            "frame of {size} bytes above the wire limit"
        );
        if queue.queued_bytes.get() + size > self.settings.send_queue_bytes_max {
            self.stats
                .add(|counts| counts.frames_dropped_queue_full += 1);
            return false;
        }
        let mut encoded = BytesMut::with_capacity(size);
        frame.encode(&mut encoded);
        queue.queued_bytes.set(queue.queued_bytes.get() + size);
        queue.frames.borrow_mut().push_back(encoded.freeze());
        // Full means a wake is already pending; the writer drains the whole queue on waking.
        let _ = queue.doorbell.try_send(());
        true
    }

    /// Stops every task: the listener, its readers' accept loop and the writers.
    pub fn stop(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.cancel();
        }
        let readers = std::mem::take(&mut *self.readers.borrow_mut());
        for reader in readers.into_values() {
            reader.cancel();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One peer as its writer task sees it.
struct Peer {
    node_id: u64,
    queue: Rc<PeerQueue>,
    /// The encoded empty frame sent after `KEEPALIVE_INTERVAL` with nothing else to send.
    keepalive: Bytes,
}

/// The writer task of one peer: connect, drain the queue, reconnect after a backoff.
async fn write_to_peer(
    peer: Peer,
    rung: LocalReceiver<()>,
    settings: TransportSettings,
    stats: Rc<Stats>,
) {
    let Peer {
        node_id,
        ref queue,
        ref keepalive,
    } = peer;
    let mut backoff = settings.backoff_min;
    loop {
        let connected =
            TcpStream::connect_timeout(queue.address.as_str(), settings.connect_timeout).await;
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(error) => {
                stats.add(|counts| counts.connection_failures += 1);
                tracing::debug!(peer = node_id, address = %queue.address, %error, "cannot reach peer broker; retrying");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(settings.backoff_max);
                continue;
            }
        };
        // A peer that is down leaves its port free, and a connect to a free loopback port in
        // the ephemeral range can be given that same port as its source: TCP's simultaneous
        // open then connects the socket to itself, and frames written to it reach nobody
        // until the write buffer fills. Such a connection is a failed attempt.
        if is_self_connection(stream.local_addr().ok(), stream.peer_addr().ok()) {
            stats.add(|counts| counts.connection_failures += 1);
            tracing::debug!(peer = node_id, address = %queue.address, "connected to itself (the peer is down); retrying");
            drop(stream);
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(settings.backoff_max);
            continue;
        }
        // Raft messages are small and latency-bound (votes, heartbeats): no Nagle delay.
        let _ = stream.set_nodelay(true);
        set_unacknowledged_timeout(&stream, UNACKNOWLEDGED_TIMEOUT);
        let drained = match &settings.tls {
            None => {
                opened(node_id, queue, &stats);
                backoff = settings.backoff_min;
                drain_queue(&mut stream, queue, &rung, keepalive, &stats).await
            }
            Some(tls) => match tls.connect(stream, &queue.address).await {
                Ok(mut stream) => {
                    opened(node_id, queue, &stats);
                    backoff = settings.backoff_min;
                    drain_queue(&mut stream, queue, &rung, keepalive, &stats).await
                }
                Err(error) => {
                    stats.add(|counts| counts.connection_failures += 1);
                    tracing::warn!(peer = node_id, address = %queue.address, %error, "peer broker refused: TLS between brokers failed; retrying");
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(settings.backoff_max);
                    continue;
                }
            },
        };
        if let Err(error) = drained {
            stats.add(|counts| {
                counts.connection_failures += 1;
                counts.frames_dropped_send_failed += 1;
            });
            tracing::warn!(peer = node_id, address = %queue.address, %error, "connection to peer broker broke; reconnecting");
            glommio::timer::sleep(backoff).await;
        }
    }
}

/// How long written bytes may stay unacknowledged by the peer's kernel before the
/// connection is given up (`TCP_USER_TIMEOUT`). Keepalives keep bytes in flight, so a link
/// that drops everything is noticed within this, and the writer connects afresh, which
/// succeeds as soon as the link is back. Without it the connection waited out TCP's
/// retransmission backoff: after an 8 s cut the partitions harness saw peers heard again
/// 4.8 s and more after the heal (0.5-1.6 s with it).
const UNACKNOWLEDGED_TIMEOUT: Duration = Duration::from_secs(2);

const _: () = assert!(UNACKNOWLEDGED_TIMEOUT.as_millis() > LIVENESS_TIMEOUT.as_millis());

/// An inbound connection from which no byte arrives for this long, between frames or inside
/// one, is closed: its peer sends a keepalive every `KEEPALIVE_INTERVAL`, so it is dead (or a
/// peer without keepalives, which connects again when it next has a frame).
const INBOUND_SILENCE_MAX: Duration = Duration::from_secs(3);

const _: () = assert!(INBOUND_SILENCE_MAX.as_millis() > UNACKNOWLEDGED_TIMEOUT.as_millis());

/// Sets `TCP_USER_TIMEOUT`; a failure leaves the kernel's default (retransmissions for
/// about 15 minutes) and is only logged.
fn set_unacknowledged_timeout(stream: &TcpStream, timeout: Duration) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor is the stream's own and stays open while `stream` is borrowed,
    // which outlives this borrow (glommio's stream has `AsRawFd` but not `AsFd`).
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    if let Err(error) = socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(timeout)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT on a peer connection");
    }
}

/// A TCP connection whose two ends are the same address: connected to itself.
fn is_self_connection(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> bool {
    matches!((local, peer), (Some(local), Some(peer)) if local == peer)
}

fn opened(node_id: u64, queue: &PeerQueue, stats: &Stats) {
    stats.add(|counts| counts.connections_opened += 1);
    tracing::info!(peer = node_id, address = %queue.address, "connected to peer broker");
}

/// Writes queued frames until the connection breaks, and `keepalive` whenever nothing was
/// queued for `KEEPALIVE_INTERVAL`.
async fn drain_queue(
    stream: &mut (impl AsyncWrite + Unpin),
    queue: &PeerQueue,
    rung: &LocalReceiver<()>,
    keepalive: &Bytes,
    stats: &Stats,
) -> std::io::Result<()> {
    loop {
        let next = queue.frames.borrow_mut().pop_front();
        let Some(frame) = next else {
            // TLS holds written frames in its session buffer until flushed; plaintext
            // flushes nothing.
            stream.flush().await?;
            let woken =
                glommio::timer::timeout(KEEPALIVE_INTERVAL, async { Ok(rung.recv().await) }).await;
            match woken {
                Ok(Some(())) => {}
                Ok(None) => return Ok(()),
                Err(_timed_out) => {
                    stream.write_all(keepalive).await?;
                    stats.add(|counts| counts.keepalives_sent += 1);
                }
            }
            continue;
        };
        queue
            .queued_bytes
            .set(queue.queued_bytes.get() - frame.len());
        stream.write_all(&frame).await?;
        stats.add(|counts| {
            counts.frames_sent += 1;
            counts.bytes_sent += frame.len() as u64;
        });
    }
}

/// Where the readers put what they receive: frames for the driver, and when each peer was
/// heard from.
#[derive(Clone)]
struct Inbound {
    frames: Rc<LocalSender<Frame>>,
    liveness: Rc<Liveness>,
}

/// Every `KEEPALIVE_INTERVAL`: which peers are live, counted and logged at each change.
async fn check_liveness_periodically(liveness: Rc<Liveness>, stats: Rc<Stats>) {
    loop {
        glommio::timer::sleep(KEEPALIVE_INTERVAL).await;
        let changes = liveness.check(Instant::now());
        for peer in changes.came {
            tracing::info!(peer, "peer broker is live (heard from)");
        }
        for peer in changes.restarted {
            tracing::info!(
                peer,
                "peer broker restarted (heard from in a new incarnation)"
            );
        }
        for peer in changes.went {
            tracing::warn!(
                peer,
                silent_ms = LIVENESS_TIMEOUT.as_millis() as u64,
                "peer broker is not live: nothing heard from it for the liveness timeout"
            );
        }
        let live = liveness.live.borrow().len() as u64;
        stats.add(|counts| counts.peers_live = live);
    }
}

async fn accept_peers(
    listener: TcpListener,
    settings: TransportSettings,
    known_peers: Vec<u64>,
    inbound: Inbound,
    stats: Rc<Stats>,
    readers: Readers,
) {
    let known_peers = Rc::new(known_peers);
    let mut connection_number = 0_u64;
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer broker connection failed");
                glommio::timer::sleep(settings.backoff_min).await;
                continue;
            }
        };
        if readers.borrow().len() >= settings.inbound_connections_max {
            stats.add(|counts| counts.connections_refused_too_many += 1);
            tracing::warn!(peer = ?stream.peer_addr().ok(), limit = settings.inbound_connections_max, "too many peer broker connections; refused");
            continue;
        }
        connection_number += 1;
        let reader = read_from_peer(
            stream,
            settings.clone(),
            known_peers.clone(),
            inbound.clone(),
            stats.clone(),
        );
        let finished = readers.clone();
        let number = connection_number;
        let task = glommio::spawn_local(async move {
            reader.await;
            finished.borrow_mut().remove(&number);
        });
        readers.borrow_mut().insert(number, task.detach());
    }
}

/// Why an inbound connection was closed by us.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Wire(#[from] ringfeed_replication::wire::WireError),
    #[error("frame from node {from} to node {to}: not a peer's frame for this broker")]
    Misaddressed { from: u64, to: u64 },
}

async fn read_from_peer(
    mut stream: TcpStream,
    settings: TransportSettings,
    known_peers: Rc<Vec<u64>>,
    inbound: Inbound,
    stats: Rc<Stats>,
) {
    let peer = stream.peer_addr().ok();
    // glommio's read timeout runs only while a read waits and restarts with every byte, so
    // it bounds the silence between frames, inside one and in the TLS handshake, without a
    // timer per read that completes at once.
    if let Err(error) = stream.set_read_timeout(Some(INBOUND_SILENCE_MAX)) {
        tracing::warn!(?peer, %error, "cannot set a read timeout on a peer broker connection");
    }
    let outcome = match &settings.tls {
        None => read_frames(&mut stream, &settings, &known_peers, &inbound, &stats).await,
        Some(tls) => match tls.accept(stream).await {
            Ok(mut stream) => {
                read_frames(&mut stream, &settings, &known_peers, &inbound, &stats).await
            }
            Err(error) => {
                stats.add(|counts| counts.connections_refused_unauthenticated += 1);
                tracing::warn!(?peer, %error, "refused a connection to the internal address");
                return;
            }
        },
    };
    match outcome {
        Err(ReadError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(?peer, "peer broker closed its connection");
        }
        Err(ReadError::Io(error)) => {
            tracing::info!(?peer, %error, "peer broker connection lost");
        }
        Err(error) => {
            stats.add(|counts| counts.connections_refused_bad_frame += 1);
            tracing::warn!(?peer, %error, "closing peer broker connection");
        }
        Ok(()) => {}
    }
}

/// Reads frames until the connection ends or sends something no correct peer sends.
async fn read_frames(
    stream: &mut (impl AsyncRead + Unpin),
    settings: &TransportSettings,
    known_peers: &[u64],
    inbound: &Inbound,
    stats: &Stats,
) -> Result<(), ReadError> {
    loop {
        let mut prefix = [0_u8; FRAME_LENGTH_BYTES];
        stream.read_exact(&mut prefix).await?;
        // Checked before a byte of the body is buffered.
        let body_bytes = frame_body_length(prefix, &settings.limits)?;
        let mut bytes = vec![0_u8; FRAME_LENGTH_BYTES + body_bytes];
        bytes[..FRAME_LENGTH_BYTES].copy_from_slice(&prefix);
        stream.read_exact(&mut bytes[FRAME_LENGTH_BYTES..]).await?;
        let frame = Frame::decode(&bytes, &settings.limits)?;
        if frame.to_node != settings.node_id || !known_peers.contains(&frame.from_node) {
            return Err(ReadError::Misaddressed {
                from: frame.from_node,
                to: frame.to_node,
            });
        }
        inbound.liveness.heard(frame.from_node, frame.incarnation);
        if frame.is_empty() {
            stats.add(|counts| counts.keepalives_received += 1);
            continue;
        }
        stats.add(|counts| {
            counts.frames_received += 1;
            counts.bytes_received += bytes.len() as u64;
        });
        if inbound.frames.try_send(frame).is_err() {
            stats.add(|counts| counts.frames_dropped_inbound_full += 1);
        }
    }
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
