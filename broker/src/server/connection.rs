//! One client connection, served entirely on the shard that accepted it.
//!
//! Two tasks per connection: the reader takes frames off the socket, decodes them and
//! starts each request's handler as its own task (so requests run concurrently), queueing
//! the handler tasks in arrival order; the writer awaits them in that order and writes the
//! responses, so responses leave in request order however the handlers interleave. What
//! must follow request order is done by the reader itself while it starts the request
//! (`handlers::start`): a Produce request's appends take their places at their partitions
//! before the next request is started, so a client's pipelined produce requests are
//! appended in order while their acks waits overlap. The
//! queue is bounded (`connection_inflight_requests_max`), and every frame holds a share of
//! the shard's request-byte budget from before its body is allocated until its response
//! is written. The reader and the writer each hold their own descriptor of the socket
//! (see `duplicate_for_writing`), so they share no lock.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::{select, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::{Gate, StaticPermit};
use glommio::task::JoinHandle;
use glommio::timer::Timer;

use crate::admission::ConnectionCounts;
use crate::admission::Refusal;
use crate::codec::CodecError;
use crate::frame::{FrameBuffer, FrameError, FRAME_SIZE_PREFIX_BYTES};
use crate::handlers::{self, RequestContext, ResponseFrame};
use crate::listeners::SecurityProtocol;
use crate::log_throttle::LogThrottle;
use crate::request_decode::{decode_frame, FrameVerdict};
use crate::server::sasl_session::{self, Outcome, SaslState};
use crate::server::vectored_write::write_frame;
use crate::shard::ShardServices;

/// Accepts until the task is dropped (shutdown). Each connection runs inside `connections`
/// so shutdown can wait for all of them to finish. A connection over `max.connections` or
/// `max.connections.per.ip` is closed at once (Kafka closes over-limit connections too).
pub async fn accept_loop(
    shard: Rc<ShardServices>,
    connection_counts: Arc<ConnectionCounts>,
    listener: ListenerOnShard,
    connections: Rc<Gate>,
) {
    let mut refusals = RefusalLog::default();
    let ListenerOnShard {
        index,
        protocol,
        socket,
    } = listener;
    loop {
        let stream = match socket.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                // EMFILE/ENFILE land here: the connection waits in the backlog meanwhile.
                tracing::warn!(shard = shard.shard_id, %error, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let admitted = match connection_counts.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                refusals.record(&shard, peer, refusal);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(shard.config.limits.connection_idle_max));
        let shard = shard.clone();
        let spawned = connections.spawn(async move {
            serve(shard, stream, peer, index, protocol).await;
            drop(admitted);
        });
        if let Ok(task) = spawned {
            task.detach();
        }
    }
}

/// One shard's socket for one of the broker's listeners (`BrokerConfig::listeners[index]`).
pub struct ListenerOnShard {
    pub index: usize,
    pub protocol: SecurityProtocol,
    pub socket: TcpListener,
}

/// Logs refused connections at most once per `REPEAT_LOG_INTERVAL` per shard, with a
/// count, so a connection flood cannot flood the log as well.
#[derive(Default)]
struct RefusalLog(LogThrottle);

impl RefusalLog {
    fn record(&mut self, shard: &ShardServices, peer: SocketAddr, refusal: Refusal) {
        let Some(skipped) = self.0.occurrence(Instant::now()) else {
            return;
        };
        let limits = &shard.config.limits;
        let (limit_name, limit) = match refusal {
            Refusal::BrokerFull => ("max.connections", limits.connections_max),
            Refusal::AddressFull => ("max.connections.per.ip", limits.connections_per_ip_max),
        };
        tracing::warn!(
            shard = shard.shard_id,
            %peer,
            limit_name,
            limit,
            refused_before_this_unlogged = skipped,
            "connection refused: at the connection limit"
        );
    }
}

/// A response in the writer's queue: either already encoded, or a handler still running.
enum PendingResponse {
    Ready(ResponseFrame),
    Running(JoinHandle<Result<Option<ResponseFrame>, CodecError>>),
}

struct QueuedResponse {
    response: PendingResponse,
    /// The request's share of the shard's byte budget, released once the response is out.
    _budget: Option<StaticPermit>,
}

/// Why a connection ended, for the log line.
#[derive(Debug)]
enum Ending {
    PeerClosed,
    ShuttingDown,
    /// The connection is closed because of what the peer sent; logged as a warning.
    Refused(String),
    Io(std::io::Error),
}

thread_local! {
    /// Connections this shard's thread has accepted (each shard is one thread).
    static CONNECTIONS_ACCEPTED: Cell<u64> = const { Cell::new(0) };
}

/// An id no other connection of the process has: the shard in the top 16 bits, then the
/// count of connections that shard accepted before.
fn new_connection_id(shard: usize) -> u64 {
    let count = CONNECTIONS_ACCEPTED.with(|accepted| {
        let count = accepted.get();
        accepted.set(count + 1);
        count
    });
    ((shard as u64) << 48) | (count & ((1 << 48) - 1))
}

/// What the reader knows of its connection.
struct ConnectionIdentity {
    peer: SocketAddr,
    connection_id: u64,
    /// Index of the listener the connection came in on (`BrokerConfig::listeners`).
    listener: usize,
    /// Who the client is: from its TLS certificate or SASL login, else `ANONYMOUS`.
    principal: RefCell<Arc<str>>,
    /// The SASL exchange, on a SASL listener only.
    sasl: RefCell<Option<SaslState>>,
    /// The sequence the next request gets.
    next_request: Cell<u64>,
}

/// The principal of a connection nobody authenticated (Kafka's `KafkaPrincipal.ANONYMOUS`).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

async fn serve(
    shard: Rc<ShardServices>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: usize,
    protocol: SecurityProtocol,
) {
    tracing::debug!(shard = shard.shard_id, %peer, %protocol, "connection accepted");
    let _counted = shard.metrics.connection_opened();
    // A TLS listener takes the shard's current configuration (certificates reload).
    let tls = shard
        .config
        .listeners
        .get(listener)
        .filter(|bound| bound.tls.is_some())
        .and_then(|_| shard.tls.current());
    let opened = match tls {
        None => open_plain(stream),
        Some(tls) => open_tls(&shard, stream, tls).await,
    };
    let (reader, writer, principal) = match opened {
        Ok(opened) => opened,
        Err(reason) => {
            tracing::warn!(shard = shard.shard_id, %peer, %protocol, %reason, "closing connection");
            return;
        }
    };
    let (queue, queued) =
        local_channel::new_bounded(shard.config.limits.connection_inflight_requests_max);
    let writing = glommio::spawn_local(write_responses(writer, queued));
    let identity = ConnectionIdentity {
        peer,
        connection_id: new_connection_id(shard.shard_id),
        listener,
        principal: RefCell::new(principal),
        sasl: RefCell::new(protocol.uses_sasl().then_some(SaslState::AwaitingHandshake)),
        next_request: Cell::new(0),
    };
    let ending = read_requests(&shard, reader, &queue, &identity).await;
    drop(queue);
    let write_error = writing.await;
    match (ending, write_error) {
        (Ending::Refused(reason), _) => {
            tracing::warn!(shard = shard.shard_id, %peer, %reason, "closing connection");
        }
        (_, Some(reason)) => {
            tracing::warn!(shard = shard.shard_id, %peer, %reason, "closing connection");
        }
        (Ending::Io(error), None) => {
            tracing::debug!(shard = shard.shard_id, %peer, %error, "connection closed on a socket error");
        }
        (ending, None) => {
            tracing::debug!(shard = shard.shard_id, %peer, ?ending, "connection closed");
        }
    }
}

/// A plaintext connection: the reader and the writer each hold a descriptor of the socket.
fn open_plain(stream: TcpStream) -> Result<(ReadSide, WriteSide, Arc<str>), String> {
    let writer = duplicate_for_writing(&stream)
        .map_err(|error| format!("cannot duplicate its socket: {error}"))?;
    Ok((
        ReadSide::Plain(stream),
        WriteSide::Plain(writer),
        Arc::from(ANONYMOUS),
    ))
}

/// A TLS connection: the handshake (bounded by `request_read_timeout`, so a client that
/// stops halfway through its `ClientHello` does not hold the connection), then the principal
/// of the client certificate if one was given.
async fn open_tls(
    shard: &ShardServices,
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<(ReadSide, WriteSide, Arc<str>), String> {
    let timeout = shard.config.limits.request_read_timeout;
    let mut deadline = Some(Box::pin(Timer::new(timeout)));
    let accept = futures_rustls::TlsAcceptor::from(config).accept(stream);
    let tls = match before_deadline(accept, &mut deadline).await {
        Some(Ok(tls)) => tls,
        Some(Err(error)) => return Err(format!("TLS handshake failed: {error}")),
        None => return Err(format!("TLS handshake not done within {timeout:?}")),
    };
    let principal = match tls.get_ref().1.peer_certificates().and_then(<[_]>::first) {
        Some(certificate) => {
            crate::tls::certificate_principal(certificate, &shard.config.tls.principal_mapper)?
        }
        None => ANONYMOUS.to_string(),
    };
    tracing::debug!(
        shard = shard.shard_id,
        version = ?tls.get_ref().1.protocol_version(),
        %principal,
        "TLS session established"
    );
    // One TLS session serves both directions; the halves share it behind a per-connection
    // `BiLock` (TLS connections copy and encrypt anyway; plaintext ones keep their own fds).
    let (reader, writer) = AsyncReadExt::split(tls);
    Ok((
        ReadSide::Tls(reader),
        WriteSide::Tls(writer),
        Arc::from(principal),
    ))
}

type TlsStream = futures_rustls::server::TlsStream<TcpStream>;

/// Where requests are read from.
enum ReadSide {
    Plain(TcpStream),
    Tls(ReadHalf<TlsStream>),
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Self::Tls(stream) => Pin::new(stream).poll_read(context, buffer),
        }
    }
}

/// Where responses are written.
enum WriteSide {
    Plain(TcpStream),
    Tls(WriteHalf<TlsStream>),
}

/// TLS records carry at most 16 KiB of plaintext: small slices of a frame are gathered up to
/// that before each write, so a Fetch frame of many small batches is not one record each.
const TLS_RECORD_PLAINTEXT_BYTES_MAX: usize = 16 * 1024;

impl WriteSide {
    async fn write_frame(&mut self, frame: &ResponseFrame) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => write_frame(stream, frame).await,
            Self::Tls(stream) => {
                let mut gathered = Vec::with_capacity(TLS_RECORD_PLAINTEXT_BYTES_MAX);
                for slice in frame.slices() {
                    if gathered.len() + slice.len() > TLS_RECORD_PLAINTEXT_BYTES_MAX {
                        stream.write_all(&gathered).await?;
                        gathered.clear();
                    }
                    if slice.len() >= TLS_RECORD_PLAINTEXT_BYTES_MAX {
                        stream.write_all(slice).await?;
                    } else {
                        gathered.extend_from_slice(slice);
                    }
                }
                stream.write_all(&gathered).await?;
                stream.flush().await
            }
        }
    }

    async fn close(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => stream.close().await,
            Self::Tls(stream) => stream.close().await,
        }
    }
}

async fn read_requests(
    shard: &Rc<ShardServices>,
    mut reader: ReadSide,
    queue: &LocalSender<QueuedResponse>,
    identity: &ConnectionIdentity,
) -> Ending {
    let frame_bytes_max = shard.config.limits.request_frame_bytes_max;
    let mut frames = FrameBuffer::new(frame_bytes_max);
    if identity.sasl_pending() {
        // Before authentication a frame is at most a SASL token with its header.
        frames.set_frame_bytes_max(
            frame_bytes_max.min(sasl_session::UNAUTHENTICATED_FRAME_BYTES_MAX),
        );
    }
    let mut budget: Option<StaticPermit> = None;
    // Runs from the first byte of a frame until the frame is whole (`request_read_timeout`).
    let mut frame_deadline: Option<Pin<Box<Timer>>> = None;
    loop {
        if wait_out_mute(shard, identity.connection_id).await {
            // The mute is the broker's doing: the frame's read deadline starts over.
            frame_deadline = None;
        }
        match frames.take_frame() {
            Err(error) => return refused(&error),
            Ok(Some(frame)) => {
                frame_deadline = None;
                let budget = match budget.take() {
                    Some(permit) => permit,
                    None => reserve_budget(shard, frame.len()).await,
                };
                let sasl_was_pending = identity.sasl_pending();
                let Started {
                    response,
                    close_after,
                } = match start_request(shard, frame, identity) {
                    Ok(started) => started,
                    Err(reason) => return Ending::Refused(reason),
                };
                if sasl_was_pending && !identity.sasl_pending() {
                    frames.set_frame_bytes_max(frame_bytes_max);
                }
                if queue
                    .send(QueuedResponse {
                        response,
                        _budget: Some(budget),
                    })
                    .await
                    .is_err()
                {
                    return Ending::PeerClosed;
                }
                if let Some(reason) = close_after {
                    return Ending::Refused(reason);
                }
                continue;
            }
            Ok(None) => {}
        }
        if frames.buffered_bytes() > 0 && frame_deadline.is_none() {
            let timeout = shard.config.limits.request_read_timeout;
            frame_deadline = Some(Box::pin(Timer::new(timeout)));
        }
        if let (Ok(Some(size)), None) = (frames.pending_frame_size(), &budget) {
            // Reserve the budget for the frame before `read_space` allocates room for it.
            // The wait counts against the frame's deadline: a frame stuck behind others
            // that hold the budget must not hold its connection open forever.
            match before_deadline(reserve_budget(shard, size), &mut frame_deadline).await {
                Some(permit) => budget = Some(permit),
                None => return read_timed_out(shard, &frames),
            }
        }
        if shard.shutdown.is_started() && frames.buffered_bytes() == 0 {
            return Ending::ShuttingDown;
        }
        let read_result = {
            let read = std::pin::pin!(reader.read(frames.read_space()));
            let shutdown = std::pin::pin!(shard.shutdown.started());
            match before_deadline(select(read, shutdown), &mut frame_deadline).await {
                Some(Either::Left((result, _))) => Some(result),
                Some(Either::Right(_)) => return Ending::ShuttingDown,
                None => None,
            }
        };
        match read_result {
            None => return read_timed_out(shard, &frames),
            Some(Ok(0)) => return Ending::PeerClosed,
            Some(Ok(count)) => frames.commit(count),
            Some(Err(error)) => return Ending::Io(error),
        }
    }
}

/// KIP-219: a client over its quota is answered at once with the throttle time, then no
/// more of its requests are taken until that time has passed (`quotas`, `handlers::throttle`).
/// Returns whether the connection was muted. Without quotas: one empty-map check.
async fn wait_out_mute(shard: &ShardServices, connection_id: u64) -> bool {
    if !shard.quotas.any_muted() {
        return false;
    }
    let now_ms = u64::try_from(shard.clock.now_ms()).unwrap_or(0);
    let Some(muted) = shard.quotas.muted_for(connection_id, now_ms) else {
        return false;
    };
    let sleep = std::pin::pin!(glommio::timer::sleep(muted));
    let shutdown = std::pin::pin!(shard.shutdown.started());
    select(sleep, shutdown).await;
    true
}

/// Runs `work` unless the frame's deadline passes first (then `None`). No deadline: `work`.
async fn before_deadline<T>(
    work: impl std::future::Future<Output = T>,
    deadline: &mut Option<Pin<Box<Timer>>>,
) -> Option<T> {
    let work = std::pin::pin!(work);
    let expiry = std::pin::pin!(async {
        match deadline.as_mut() {
            Some(timer) => {
                timer.await;
            }
            None => std::future::pending::<()>().await,
        }
    });
    match select(work, expiry).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

fn read_timed_out(shard: &ShardServices, frames: &FrameBuffer) -> Ending {
    Ending::Refused(format!(
        "request not received whole within {:?} of its first byte ({} bytes so far)",
        shard.config.limits.request_read_timeout,
        frames.buffered_bytes()
    ))
}

/// A second handle on the same socket for the writer task, so the reader and the writer
/// never share a lock (`futures::io::split` would put both halves behind a `BiLock`).
fn duplicate_for_writing(stream: &TcpStream) -> std::io::Result<TcpStream> {
    // SAFETY: dup only creates a new descriptor; -1 reports failure.
    let descriptor = unsafe { libc::dup(stream.as_raw_fd()) };
    if descriptor < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of a connected TCP socket, owned from here by the stream.
    Ok(unsafe { TcpStream::from_raw_fd(descriptor) })
}

fn refused(error: &FrameError) -> Ending {
    Ending::Refused(format!("unframeable input: {error}"))
}

async fn reserve_budget(shard: &Rc<ShardServices>, frame_bytes: usize) -> StaticPermit {
    shard
        .budgets
        .request_bytes
        .reserve_permit(frame_bytes as u64)
        .await
}

/// A started request: its response, and why the connection closes after it, if it does.
struct Started {
    response: PendingResponse,
    close_after: Option<String>,
}

impl ConnectionIdentity {
    /// Whether the connection is on a SASL listener and not yet authenticated.
    fn sasl_pending(&self) -> bool {
        self.sasl
            .borrow()
            .as_ref()
            .is_some_and(|state| !matches!(state, SaslState::Authenticated(_)))
    }

    /// Whether the next frame is a raw SASL token (after a v0 `SaslHandshake`).
    fn expects_raw_token(&self) -> bool {
        matches!(
            self.sasl.borrow().as_ref(),
            Some(SaslState::Authenticating {
                raw_tokens: true,
                ..
            })
        )
    }
}

/// Admits, decodes and starts one request. `Err` names why the connection must close.
fn start_request(
    shard: &Rc<ShardServices>,
    frame: Bytes,
    identity: &ConnectionIdentity,
) -> Result<Started, String> {
    if identity.expects_raw_token() {
        let outcome = {
            let mut state = identity.sasl.borrow_mut();
            let state = state
                .as_mut()
                .expect("a raw token is expected on a SASL listener");
            sasl_session::raw_token(shard, state, identity.peer.ip(), &frame)
        };
        return sasl_answer(shard, identity, outcome);
    }
    let frame_bytes = frame.len() + FRAME_SIZE_PREFIX_BYTES;
    let (api_key, api_version, header, request) = match decode_frame(frame) {
        FrameVerdict::Decoded {
            api_key,
            api_version,
            header,
            request,
        } => (api_key, api_version, header, request),
        FrameVerdict::ApiVersionsFallback(frame) => {
            return Ok(Started {
                response: PendingResponse::Ready(ResponseFrame::whole(frame)),
                close_after: None,
            })
        }
        FrameVerdict::Refused { admitted, reason } => {
            if let Some(api_key) = admitted {
                shard.metrics.request_received(api_key, frame_bytes);
            }
            return Err(reason);
        }
    };
    shard.metrics.request_received(api_key, frame_bytes);
    let request_sequence = identity.next_request.get();
    identity.next_request.set(request_sequence + 1);
    let context = RequestContext {
        api_key,
        api_version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|id| id.to_string()),
        peer: identity.peer,
        connection_id: identity.connection_id,
        listener: identity.listener,
        principal: identity.principal.borrow().clone(),
        request_sequence,
        acls: shard.acls.current(),
    };
    // On a SASL listener, also after login (re-authentication, session expiry).
    let sasl_outcome = identity
        .sasl
        .borrow_mut()
        .as_mut()
        .map(|state| sasl_session::request(shard, state, &context, &request));
    if let Some(outcome) = sasl_outcome {
        match outcome {
            Ok(Outcome::Serve) => {}
            Ok(outcome) => return sasl_answer(shard, identity, outcome),
            Err(error) => return Err(format!("internal error, response not encodable: {error}")),
        }
    }
    // `start` does the request's ordered part now, before the next frame is taken.
    let handler = handlers::start(shard.clone(), context, *request);
    Ok(Started {
        response: PendingResponse::Running(glommio::spawn_local(handler).detach()),
        close_after: None,
    })
}

/// Queues the answer of a SASL step (after its delay, for a repeated failure) and records
/// the principal a completed login established.
fn sasl_answer(
    shard: &ShardServices,
    identity: &ConnectionIdentity,
    outcome: Outcome,
) -> Result<Started, String> {
    let (frame, delay, close_after, principal) = match outcome {
        Outcome::Serve => unreachable!("served by the caller"),
        Outcome::Close(reason) => return Err(reason),
        Outcome::Answer {
            frame,
            delay,
            close,
            principal,
        } => (frame, delay, close, principal),
    };
    if let Some(principal) = principal {
        tracing::debug!(shard = shard.shard_id, peer = %identity.peer, %principal, "SASL authentication succeeded");
        *identity.principal.borrow_mut() = Arc::from(principal);
    }
    let frame = sasl_session::response_frame(frame);
    let response = match frame {
        Some(frame) if delay.is_zero() => PendingResponse::Ready(frame),
        frame => PendingResponse::Running(
            glommio::spawn_local(async move {
                glommio::timer::sleep(delay).await;
                Ok(frame)
            })
            .detach(),
        ),
    };
    Ok(Started {
        response,
        close_after,
    })
}

/// Writes responses in queue order until the queue closes; returns why it stopped early.
async fn write_responses(
    mut writer: WriteSide,
    queued: LocalReceiver<QueuedResponse>,
) -> Option<String> {
    while let Some(entry) = queued.recv().await {
        let frame = match entry.response {
            PendingResponse::Ready(frame) => Some(frame),
            PendingResponse::Running(handler) => match handler.await {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    return Some(format!("internal error, response not encodable: {error}"))
                }
                None => return Some("request handler cancelled".into()),
            },
        };
        if let Some(frame) = frame {
            if let Err(error) = writer.write_frame(&frame).await {
                return Some(format!("write failed: {error}"));
            }
        }
    }
    let _ = writer.close().await;
    None
}
