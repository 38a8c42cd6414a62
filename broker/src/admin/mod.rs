//! The HTTP admin listener (`--admin-listen`, default 127.0.0.1:9644): Prometheus metrics,
//! health, readiness and the run-time log level. Endpoints:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format 0.0.4 (see `metrics::exposition`) |
//! | `GET /health` | 200 while the process serves |
//! | `GET /ready` | 200 once every shard listens with its partitions open; 503 before and during shutdown |
//! | `GET /log-level` | the log filter in force |
//! | `PUT /log-level` | body = new filter (`debug`, `ringfeed_broker=debug,info`); 400 if it does not parse |
//!
//! It runs on its own std thread, never on a shard's core time, and serves one connection
//! at a time under `Limits::admin_*` bounds (request size, time per connection, backlog;
//! a TLS handshake counts against the connection's time). TLS, client certificates and a
//! bearer token are `security`'s.
//! The shards' metrics reach it as snapshots they build on request (see `metrics`).

pub mod http;
pub mod security;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::mpsc::Sender;

use crate::limits::Limits;
use crate::metrics::exposition::{self, ScrapeContext};
use crate::metrics::{ScrapeRequest, ShardSnapshot};
use http::{Refusal, Request};
use security::{AdminSecurity, AdminStream};

/// How long a scrape waits for the shards' snapshots. A shard that has not answered by
/// then (stuck, or still starting) is left out and counted as missing.
const SHARD_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// What the rest of the process tells the admin listener. Written at start-up and
/// shutdown only, so an atomic flag costs nothing on any request path.
#[derive(Debug, Default)]
pub struct AdminStatus {
    ready: AtomicBool,
}

impl AdminStatus {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Everything the admin thread owns.
pub struct AdminListener {
    listener: TcpListener,
    status: Arc<AdminStatus>,
    /// One per shard, by shard index.
    scrapes: Vec<Sender<ScrapeRequest>>,
    limits: Limits,
    security: AdminSecurity,
}

impl AdminListener {
    /// Binds `address` (port 0 picks a free port) with the configured backlog.
    pub fn bind(
        address: SocketAddr,
        status: Arc<AdminStatus>,
        scrapes: Vec<Sender<ScrapeRequest>>,
        limits: Limits,
        security: AdminSecurity,
    ) -> Result<Self, String> {
        let cannot = |error: std::io::Error| format!("admin listener on {address}: {error}");
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::STREAM,
            None,
        )
        .map_err(cannot)?;
        socket.set_reuse_address(true).map_err(cannot)?;
        socket.bind(&address.into()).map_err(cannot)?;
        socket
            .listen(limits.admin_pending_connections_max as i32)
            .map_err(cannot)?;
        Ok(Self {
            listener: socket.into(),
            status,
            scrapes,
            limits,
            security,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, String> {
        self.listener
            .local_addr()
            .map_err(|error| format!("admin listener address: {error}"))
    }

    /// Serves on a thread of its own for the life of the process.
    pub fn spawn(mut self) -> Result<(), String> {
        std::thread::Builder::new()
            .name("ringfeed-admin".into())
            .spawn(move || self.serve())
            .map(drop)
            .map_err(|error| format!("cannot start the admin thread: {error}"))
    }

    fn serve(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => self.serve_connection(stream, peer),
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn serve_connection(&mut self, socket: TcpStream, peer: SocketAddr) {
        let deadline = Instant::now() + self.limits.admin_connection_time_max;
        let _ = socket.set_write_timeout(Some(self.limits.admin_connection_time_max));
        let mut stream = match AdminStream::accept(socket, self.security.tls.as_ref()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%peer, %error, "admin connection refused");
                return;
            }
        };
        let request =
            http::read_request(&mut stream, self.limits.admin_request_bytes_max, deadline);
        let refused = request.is_err();
        let answer = match request {
            Ok(None) => return,
            Ok(Some(request))
                if !self
                    .security
                    .admits(&request.path, request.bearer.as_deref()) =>
            {
                tracing::warn!(%peer, path = %request.path, "admin request without the admin token refused");
                Answer {
                    extra_headers: "WWW-Authenticate: Bearer\r\n",
                    ..Answer::text(401, "send the admin token: Authorization: Bearer <token>\n")
                }
            }
            Ok(Some(request)) => self.route(&request),
            Err(refusal) => {
                tracing::debug!(%peer, status = refusal.status, message = %refusal.message, "admin request refused");
                Answer::from(refusal)
            }
        };
        let written = http::write_response(
            &mut stream,
            answer.status,
            answer.content_type,
            answer.body.as_bytes(),
            answer.extra_headers,
        );
        if let Err(error) = written {
            tracing::debug!(%peer, %error, "admin response not delivered");
        } else if refused {
            http::drain_before_close(&mut stream, deadline);
        }
    }

    fn route(&mut self, request: &Request) -> Answer {
        let method = request.method.as_str();
        match (request.path.as_str(), method) {
            ("/health", "GET") => Answer::text(200, "ok\n"),
            ("/ready", "GET") if self.status.is_ready() => Answer::text(200, "ready\n"),
            ("/ready", "GET") => Answer::text(503, "not ready\n"),
            ("/metrics", "GET") => Answer {
                status: 200,
                content_type: exposition::CONTENT_TYPE,
                body: self.scrape(),
                extra_headers: "",
            },
            ("/log-level", "GET") => match crate::logging::current_filter() {
                Some(filter) => Answer::text(200, filter + "\n"),
                None => Answer::text(503, "logging is not initialised\n"),
            },
            ("/log-level", "PUT") => set_log_level(&request.body),
            ("/health" | "/ready" | "/metrics", _) => Answer::method_not_allowed("GET"),
            ("/log-level", _) => Answer::method_not_allowed("GET, PUT"),
            (path, _) => Answer::text(
                404,
                format!("no such endpoint {path:?}; try /metrics, /health, /ready, /log-level\n"),
            ),
        }
    }

    /// Asks every shard for its snapshot and encodes what arrives within `SHARD_ANSWER_WAIT`.
    fn scrape(&mut self) -> String {
        let (reply, replies) = std::sync::mpsc::sync_channel(self.scrapes.len());
        let mut asked = 0;
        for (shard, sender) in self.scrapes.iter_mut().enumerate() {
            let request = ScrapeRequest {
                reply: reply.clone(),
                committed_offsets_max: self.limits.metrics_group_lag_series_max,
            };
            match sender.try_send(request) {
                Ok(()) => asked += 1,
                // Full: the previous scrape's request is still queued (the shard is busy or
                // still starting); disconnected: the shard has stopped.
                Err(error) => tracing::debug!(shard, %error, "shard not asked for metrics"),
            }
        }
        drop(reply);
        let deadline = Instant::now() + SHARD_ANSWER_WAIT;
        let mut snapshots: Vec<ShardSnapshot> = Vec::with_capacity(asked);
        while snapshots.len() < asked {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match replies.recv_timeout(remaining) {
                Ok(snapshot) => snapshots.push(snapshot),
                Err(_) => break,
            }
        }
        let context = ScrapeContext {
            shard_count: self.scrapes.len(),
            ready: self.status.is_ready(),
            partition_series_max: self.limits.metrics_partition_series_max,
            group_lag_series_max: self.limits.metrics_group_lag_series_max,
        };
        exposition::encode(context, snapshots)
    }
}

/// `PUT /log-level`: the body is the new filter.
fn set_log_level(body: &[u8]) -> Answer {
    let Ok(filter) = std::str::from_utf8(body) else {
        return Answer::text(400, "the log filter must be UTF-8\n");
    };
    let filter = filter.trim();
    if filter.is_empty() {
        return Answer::text(
            400,
            "send the filter as the body, e.g. `debug` or `ringfeed_broker=debug,info`\n",
        );
    }
    match crate::logging::set_filter(filter) {
        Ok(()) => {
            tracing::info!(filter, "log filter changed through the admin API");
            Answer::text(200, format!("log filter set to {filter}\n"))
        }
        Err(error) => Answer::text(400, error + "\n"),
    }
}

/// An HTTP answer before it is written.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    extra_headers: &'static str,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            extra_headers: "",
        }
    }

    fn method_not_allowed(allowed: &'static str) -> Self {
        Self {
            extra_headers: if allowed == "GET" {
                "Allow: GET\r\n"
            } else {
                "Allow: GET, PUT\r\n"
            },
            ..Self::text(405, format!("method not allowed; use {allowed}\n"))
        }
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Answer::text(refusal.status, refusal.message + "\n")
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Sends one raw request and returns the whole answer.
    fn exchange(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).expect("connect to the admin listener");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read the answer");
        answer
    }

    #[test]
    fn ready_follows_the_status_and_a_shard_that_does_not_answer_is_reported_missing() {
        let status = Arc::new(AdminStatus::default());
        let (scrapes, _unanswered) = futures::channel::mpsc::channel(0);
        let listener = AdminListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            status.clone(),
            vec![scrapes],
            Limits::default(),
            AdminSecurity::default(),
        )
        .expect("bind");
        let address = listener.local_addr().unwrap();
        listener.spawn().expect("admin thread");
        let get = |path: &str| exchange(address, &format!("GET {path} HTTP/1.1\r\n\r\n"));
        assert!(
            get("/ready").starts_with("HTTP/1.1 503 "),
            "not ready at start"
        );
        status.set_ready(true);
        assert!(get("/ready").starts_with("HTTP/1.1 200 "));
        status.set_ready(false);
        assert!(
            get("/ready").starts_with("HTTP/1.1 503 "),
            "not ready once stopping"
        );
        assert!(get("/health").starts_with("HTTP/1.1 200 "));
        // The one shard never answers (nobody reads its channel): the scrape waits for it,
        // then reports it missing instead of hanging.
        let metrics = get("/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics}");
        assert!(
            metrics.contains("\nringfeed_scrape_shards_missing 1\n"),
            "{metrics}"
        );
        assert!(get("/nowhere").starts_with("HTTP/1.1 404 "));
        let refused = exchange(address, "DELETE /log-level HTTP/1.1\r\n\r\n");
        assert!(refused.starts_with("HTTP/1.1 405 "), "{refused}");
        assert!(refused.contains("Allow: GET, PUT\r\n"), "{refused}");
    }
}
