//! Just enough HTTP/1.1 for the admin listener: one request per connection, read under a
//! byte limit and a deadline, parsed by `httparse` (hyper's parser), answered with
//! `Connection: close`. No chunked bodies, no keep-alive, no pipelining: the admin API has
//! five endpoints and tiny bodies, and every feature left out is one a client cannot abuse.

use std::io::{Read, Write};
use std::time::Instant;

use crate::admin::security::AdminStream;

/// Headers a request may carry; more is answered 431.
const HEADERS_MAX: usize = 32;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The token of an `Authorization: Bearer <token>` header.
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

/// Why a request is refused: the status to answer and a message for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request (head and `Content-Length` body).
    Complete(Request),
    /// Not yet a whole request; read more.
    Incomplete,
}

/// Parses `buffer`, the bytes received so far, refusing what a conforming admin client
/// would not send or what exceeds `request_bytes_max` even before it has all arrived.
pub fn parse(buffer: &[u8], request_bytes_max: usize) -> Result<Parsed, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buffer) {
        Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
        Ok(httparse::Status::Partial) if buffer.len() >= request_bytes_max => {
            return Err(Refusal::new(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "too many headers"));
        }
        Err(error) => return Err(Refusal::new(400, format!("malformed request: {error}"))),
    };
    let mut body_bytes = 0_usize;
    let mut bearer = None;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("authorization") {
            bearer = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().strip_prefix("Bearer "))
                .map(|token| token.trim().to_string());
        }
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::new(
                501,
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            body_bytes = std::str::from_utf8(header.value)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .ok_or_else(|| Refusal::new(400, "bad Content-Length"))?;
        }
    }
    if head_bytes.saturating_add(body_bytes) > request_bytes_max {
        return Err(Refusal::new(
            413,
            format!("request larger than {request_bytes_max} bytes"),
        ));
    }
    if buffer.len() < head_bytes + body_bytes {
        return Ok(Parsed::Incomplete);
    }
    let target = request.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Ok(Parsed::Complete(Request {
        method: request.method.unwrap_or_default().to_string(),
        path: path.to_string(),
        bearer,
        body: buffer[head_bytes..head_bytes + body_bytes].to_vec(),
    }))
}

/// Reads one request from `stream`, which must have no read timeout beyond `deadline`
/// (the caller sets it). `Ok(None)`: the client closed or stalled before sending a whole
/// request; nothing is answered.
pub fn read_request(
    stream: &mut AdminStream,
    request_bytes_max: usize,
    deadline: Instant,
) -> Result<Option<Request>, Refusal> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.socket().set_read_timeout(Some(remaining)).is_err() {
            return Ok(None);
        }
        let wanted = chunk.len().min(request_bytes_max + 1 - buffer.len());
        let count = match stream.read(&mut chunk[..wanted]) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(count) => count,
        };
        buffer.extend_from_slice(&chunk[..count]);
        if let Parsed::Complete(request) = parse(&buffer, request_bytes_max)? {
            return Ok(Some(request));
        }
    }
}

/// Bytes of an unread request `drain_before_close` discards at most.
const DRAIN_BYTES_MAX: usize = 1 << 20;

/// After answering a refused request whose rest is still arriving: closing with unread
/// bytes makes the kernel send a reset, which can destroy the answer before the client
/// reads it. So stop sending, then read and discard what the client still sends, up to
/// `DRAIN_BYTES_MAX` or the deadline.
pub fn drain_before_close(stream: &mut AdminStream, deadline: Instant) {
    let _ = stream.socket().shutdown(std::net::Shutdown::Write);
    let mut discarded = 0;
    let mut chunk = [0_u8; 4096];
    while discarded < DRAIN_BYTES_MAX {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.socket().set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(count) => discarded += count,
        }
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Writes a whole response and closes the exchange (`Connection: close`).
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Request {
        match parse(bytes, 1024) {
            Ok(Parsed::Complete(request)) => request,
            other => panic!("expected a whole request, got {other:?}"),
        }
    }

    #[test]
    fn a_get_with_a_query_string_parses_to_its_path() {
        let request = complete(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/metrics");
        assert!(request.body.is_empty());
    }

    #[test]
    fn a_put_waits_for_its_whole_body() {
        let whole = b"PUT /log-level HTTP/1.1\r\nContent-Length: 5\r\n\r\ndebug";
        assert_eq!(
            parse(&whole[..whole.len() - 2], 1024),
            Ok(Parsed::Incomplete)
        );
        assert_eq!(complete(whole).body, b"debug");
    }

    #[test]
    fn a_partial_head_is_incomplete_until_the_limit() {
        assert_eq!(parse(b"GET /hea", 1024), Ok(Parsed::Incomplete));
        let long = [b"GET /".as_slice(), &[b'a'; 64]].concat();
        assert_eq!(parse(&long, 64).unwrap_err().status, 431);
    }

    #[test]
    fn oversized_and_unsupported_bodies_are_refused() {
        let declared = b"PUT /log-level HTTP/1.1\r\nContent-Length: 999999\r\n\r\n";
        assert_eq!(parse(declared, 1024).unwrap_err().status, 413);
        let chunked = b"PUT /log-level HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(chunked, 1024).unwrap_err().status, 501);
        let bad_length = b"PUT /log-level HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse(bad_length, 1024).unwrap_err().status, 400);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            parse(b"\x00\x01\x02 nonsense\r\n\r\n", 1024)
                .unwrap_err()
                .status,
            400
        );
        let many_headers: Vec<u8> = std::iter::once(b"GET / HTTP/1.1\r\n".to_vec())
            .chain((0..40).map(|i| format!("X-{i}: y\r\n").into_bytes()))
            .chain(std::iter::once(b"\r\n".to_vec()))
            .flatten()
            .collect();
        assert_eq!(parse(&many_headers, 4096).unwrap_err().status, 431);
    }

    #[test]
    fn responses_carry_their_length_and_close() {
        let mut out = Vec::new();
        write_response(&mut out, 503, "text/plain", b"not ready\n", "").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot ready\n"
        );
    }
}
