//! One connection to one broker: blocking frames over a `TcpStream`, the versions chosen for
//! it, and calls. A connection runs one request at a time; [`Connection::split`] hands its
//! two halves to two threads so a sender can keep many requests in flight while a reader
//! takes the responses, which Kafka returns in request order on a connection.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use ringfeed_protocol::codec;
use ringfeed_protocol::error_codes;
use ringfeed_protocol::frame::FRAME_SIZE_PREFIX_BYTES;

use crate::error::{check_error, Error, ErrorKind, Result};
use crate::sasl::SaslExchange;
use crate::security::Security;
use crate::versions::{ApiRange, Versions, VersionsMode};

/// What a client is and how its connections behave; one per client, cloned into each
/// connection.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The `client_id` of every request header, and the software name sent in `ApiVersions`.
    pub client_id: &'static str,
    /// Bound on connecting and on any one socket read or write.
    pub timeout: Duration,
    /// Largest response frame accepted, refused before its buffer is allocated.
    pub response_frame_bytes_max: usize,
    /// The APIs and versions this client encodes.
    pub speaks: &'static [ApiRange],
    /// The versions used without asking (`VersionsMode::Fixed`, or the fallback).
    pub fixed: &'static [(ApiKey, i16)],
    pub mode: VersionsMode,
    /// Where a person changes the timeout, named when one expires (empty: nowhere).
    pub timeout_hint: &'static str,
    /// TLS and SASL for every connection (`Security::plaintext()`: neither).
    pub security: Security,
}

/// Encodes a whole request frame (size prefix, header, body) into `frame`, reusing its
/// memory: once the buffer has grown to the largest request, sending allocates nothing.
pub fn encode_request<R: Request>(
    frame: &mut BytesMut,
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
) -> Result<()> {
    codec::encode_request_frame(frame, request, version, correlation_id, client_id)
        .map_err(|error| Error::protocol(format!("encoding a request: {error}")))
}

/// The sending half of a connection.
pub struct FrameWriter {
    stream: Socket,
    address: String,
    options: ConnectOptions,
    /// Reused for every request sent through [`FrameWriter::send`].
    frame: BytesMut,
}

impl FrameWriter {
    /// Encodes and writes one request; returns the frame size in bytes.
    pub fn send<R: Request>(
        &mut self,
        request: &R,
        version: i16,
        correlation_id: i32,
    ) -> Result<usize> {
        encode_request(
            &mut self.frame,
            request,
            version,
            correlation_id,
            self.options.client_id,
        )?;
        let Self {
            stream,
            address,
            options,
            frame,
        } = self;
        stream
            .write_all(frame)
            .and_then(|()| stream.flush())
            .map_err(|error| {
                Error::io(address, "sending a request", &error, options.timeout_hint)
            })?;
        Ok(frame.len())
    }

    /// Writes a frame made by [`encode_request`] (a caller that keeps its own buffer).
    pub fn write_frame(&mut self, frame: &[u8]) -> Result<()> {
        let stream = &mut self.stream;
        stream
            .write_all(frame)
            .and_then(|()| stream.flush())
            .map_err(|error| {
                Error::io(
                    &self.address,
                    "sending a request",
                    &error,
                    self.options.timeout_hint,
                )
            })
    }

    pub fn client_id(&self) -> &'static str {
        self.options.client_id
    }
}

/// The receiving half of a connection.
pub struct FrameReader {
    stream: Socket,
    address: String,
    options: ConnectOptions,
}

impl FrameReader {
    /// Reads one whole response frame (without its size prefix). The declared size is
    /// checked against the bound before the buffer exists.
    pub fn recv_frame(&mut self) -> Result<Bytes> {
        let mut size = [0_u8; FRAME_SIZE_PREFIX_BYTES];
        self.stream
            .read_exact(&mut size)
            .map_err(|error| self.io_error("waiting for a response", &error))?;
        let frame_bytes = i32::from_be_bytes(size);
        let Ok(frame_bytes) = usize::try_from(frame_bytes) else {
            return Err(Error::protocol(format!(
                "{}: negative response size {frame_bytes}",
                self.address
            )));
        };
        let bytes_max = self.options.response_frame_bytes_max;
        if frame_bytes > bytes_max {
            return Err(Error::protocol(format!(
                "{}: a {frame_bytes}-byte response is over the {bytes_max}-byte bound",
                self.address
            )));
        }
        let mut frame = BytesMut::zeroed(frame_bytes);
        self.stream
            .read_exact(&mut frame)
            .map_err(|error| self.io_error("reading a response", &error))?;
        Ok(frame.freeze())
    }

    /// Decodes a response frame (header then body) to a request `R` sent at `version`,
    /// checking that it answers `correlation_id`.
    pub fn decode_response<R: Request>(
        &self,
        mut frame: Bytes,
        version: i16,
        correlation_id: i32,
    ) -> Result<R::Response> {
        self.check_header::<R>(&mut frame, version, correlation_id)?;
        decode_body::<R::Response>(frame, version)
    }

    fn check_header<R: Request>(
        &self,
        frame: &mut Bytes,
        version: i16,
        correlation_id: i32,
    ) -> Result<()> {
        let answered = codec::decode_response_header::<R>(frame, version).map_err(|error| {
            Error::protocol(format!("{}: bad response header: {error}", self.address))
        })?;
        if answered != correlation_id {
            return Err(Error::protocol(format!(
                "{}: response correlation id {answered} where {correlation_id} was expected",
                self.address
            )));
        }
        Ok(())
    }

    fn io_error(&self, doing: &str, error: &std::io::Error) -> Error {
        Error::io(&self.address, doing, error, self.options.timeout_hint)
    }
}

fn decode_body<M: Decodable>(mut frame: Bytes, version: i16) -> Result<M> {
    M::decode(&mut frame, version)
        .map_err(|error| Error::protocol(format!("malformed response (v{version}): {error}")))
}

/// One client connection to one broker, with the versions chosen for it.
pub struct Connection {
    writer: FrameWriter,
    reader: FrameReader,
    pub versions: Versions,
    next_correlation_id: i32,
    /// Why the fixed versions are used, when the broker refused `ApiVersions`
    /// (`VersionsMode::NegotiateOrFixed`); the caller decides whether to say so.
    pub fallback_reason: Option<String>,
}

impl Connection {
    /// Connects (trying every address the name resolves to) and learns the broker's
    /// versions as `options.mode` says.
    pub fn open(address: &str, options: &ConnectOptions) -> Result<Self> {
        let mut connection = Self::connect(address, options)?;
        match options.mode {
            VersionsMode::Fixed => connection.versions = Versions::fixed(options.fixed),
            VersionsMode::Negotiate => {
                let response = connection.api_versions()?;
                connection.versions = Versions::negotiate(options.speaks, &response);
            }
            VersionsMode::NegotiateOrFixed => match connection.api_versions() {
                Ok(response) => {
                    connection.versions = Versions::negotiate(options.speaks, &response);
                }
                Err(error) => {
                    let reason = match error.kind() {
                        ErrorKind::Broker(code) => format!("error {code}"),
                        _ if error.is_closed_by_peer() => "the connection was closed".to_string(),
                        _ => return Err(error),
                    };
                    if error.is_closed_by_peer() {
                        connection = Self::connect(address, options)?;
                    }
                    connection.versions = Versions::fixed(options.fixed);
                    connection.fallback_reason = Some(reason);
                }
            },
        }
        if options.security.sasl.is_some() {
            connection.authenticate()?;
        }
        Ok(connection)
    }

    /// Logs in with `options.security.sasl`: `SaslHandshake` (v1, so the exchange rides in
    /// `SaslAuthenticate` requests), then the mechanism's messages. Kafka lets `ApiVersions`
    /// come first, which is how the versions used here were learned.
    fn authenticate(&mut self) -> Result<()> {
        let Some(login) = self.writer.options.security.sasl.clone() else {
            return Ok(());
        };
        let what = format!(
            "SASL {} login of {:?} at {}",
            login.mechanism.name(),
            login.username,
            self.address()
        );
        let handshake_version = self.versions.get(SaslHandshakeRequest::KEY).unwrap_or(1);
        if handshake_version < 1 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{what}: the broker has no SaslHandshake v1"),
            ));
        }
        let handshake = self.call_at(
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str(login.mechanism.name())),
            handshake_version,
        )?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(StrBytes::as_str).collect();
            let offered =
                StrBytes::from_string(format!("the broker offers {}", offered.join(", ")));
            check_error(handshake.error_code, Some(&offered), &what)?;
        }
        let authenticate_version = self.versions.get(SaslAuthenticateRequest::KEY).unwrap_or(0);
        let (mut exchange, first) = SaslExchange::start(&login)
            .map_err(|error| Error::failed(format!("{what}: {error}")))?;
        let mut answer = self.sasl_step(first, authenticate_version, &what)?;
        if let SaslExchange::Scram(client) = &mut exchange {
            let client_final = client
                .client_final(&answer)
                .map_err(|error| Error::failed(format!("{what}: {error}")))?;
            answer = self.sasl_step(client_final, authenticate_version, &what)?;
            client
                .verify_server_final(&answer)
                .map_err(|error| Error::failed(format!("{what}: {error}")))?;
        }
        Ok(())
    }

    fn sasl_step(&mut self, message: Vec<u8>, version: i16, what: &str) -> Result<Vec<u8>> {
        let response = self.call_at(
            &SaslAuthenticateRequest::default().with_auth_bytes(message.into()),
            version,
        )?;
        check_error(response.error_code, response.error_message.as_ref(), what)?;
        Ok(response.auth_bytes.to_vec())
    }

    /// Connects and disables Nagle (a CLI waits on every answer; every bench figure is a
    /// latency figure).
    fn connect(address: &str, options: &ConnectOptions) -> Result<Self> {
        let stream = connect(address, options)?;
        let stream = match &options.security.tls {
            None => Socket::Plain(stream),
            Some(config) => Socket::Tls(Arc::new(Mutex::new(tls_handshake(
                address, stream, config, options,
            )?))),
        };
        let reader = FrameReader {
            stream: stream
                .try_clone()
                .map_err(|error| Error::io(address, "configuring the socket", &error, ""))?,
            address: address.to_string(),
            options: options.clone(),
        };
        let writer = FrameWriter {
            stream,
            address: address.to_string(),
            options: options.clone(),
            frame: BytesMut::with_capacity(4096),
        };
        Ok(Self {
            writer,
            reader,
            versions: Versions::default(),
            next_correlation_id: 1,
            fallback_reason: None,
        })
    }

    pub fn address(&self) -> &str {
        &self.writer.address
    }

    /// The bound on any one socket read or write (`ConnectOptions::timeout`).
    pub fn timeout(&self) -> Duration {
        self.writer.options.timeout
    }

    /// The sending half, for a caller that times the request and its answer apart.
    pub fn writer(&mut self) -> &mut FrameWriter {
        &mut self.writer
    }

    /// The receiving half; answers arrive in request order.
    pub fn reader(&mut self) -> &mut FrameReader {
        &mut self.reader
    }

    /// `ApiVersions` at our highest version; a broker that does not know it answers with a
    /// v0 body carrying `UNSUPPORTED_VERSION` and its range (KIP-511), and we ask again at
    /// the highest version it named.
    fn api_versions(&mut self) -> Result<ApiVersionsResponse> {
        let ours = self
            .writer
            .options
            .speaks
            .iter()
            .find(|range| range.key == ApiKey::ApiVersions as i16)
            .map_or(0, |range| range.max);
        // Both fields exist from v3 on; below that the codec leaves them out.
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(self.writer.options.client_id))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let what = format!("ApiVersions to {}", self.address());
        let frame = self.round_trip(&request, ours)?;
        let response = match decode_body::<ApiVersionsResponse>(frame.clone(), ours) {
            Ok(response) if response.error_code == 0 => return Ok(response),
            Ok(response) => response,
            Err(_) => decode_body::<ApiVersionsResponse>(frame, 0)?,
        };
        if response.error_code != error_codes::UNSUPPORTED_VERSION {
            check_error(response.error_code, None, &what)?;
        }
        let theirs = response
            .api_keys
            .iter()
            .find(|a| a.api_key == ApiKey::ApiVersions as i16)
            .map_or(0, |a| a.max_version.min(ours));
        let frame = self.round_trip(&request, theirs)?;
        let response = decode_body::<ApiVersionsResponse>(frame, theirs)?;
        check_error(response.error_code, None, &what)?;
        Ok(response)
    }

    /// The chosen version of `R`'s API, or an error naming the API and the broker.
    pub fn version<R: Request>(&self) -> Result<i16> {
        self.versions.get(R::KEY).ok_or_else(|| {
            let name =
                ApiKey::try_from(R::KEY).map_or_else(|()| R::KEY.to_string(), |k| format!("{k:?}"));
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "broker {} supports no version of {name} this client speaks",
                    self.address()
                ),
            )
        })
    }

    pub fn next_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        id
    }

    /// Sends `request` at the chosen version and waits for its response.
    pub fn call<R: Request>(&mut self, request: &R) -> Result<R::Response> {
        let version = self.version::<R>()?;
        self.call_at(request, version)
    }

    pub fn call_at<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let frame = self.round_trip(request, version)?;
        decode_body::<R::Response>(frame, version)
    }

    /// Sends a request the broker does not answer (Produce with acks=0).
    pub fn send_only<R: Request>(&mut self, request: &R, version: i16) -> Result<()> {
        let correlation_id = self.next_correlation_id();
        self.writer
            .send(request, version, correlation_id)
            .map(|_| ())
    }

    /// Lengthens the read timeout for requests the broker may hold (a long-polling fetch,
    /// a `JoinGroup` waiting for the rebalance).
    pub fn set_read_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.reader
            .stream
            .set_read_timeout(Some(timeout))
            .map_err(|error| Error::failed(format!("{}: {error}", self.address())))
    }

    /// Sends and returns the response frame after its header, checked for the correlation id.
    fn round_trip<R: Request>(&mut self, request: &R, version: i16) -> Result<Bytes> {
        let correlation_id = self.next_correlation_id();
        self.writer.send(request, version, correlation_id)?;
        let mut frame = self.reader.recv_frame()?;
        self.reader
            .check_header::<R>(&mut frame, version, correlation_id)?;
        Ok(frame)
    }

    /// Splits the connection so one thread can send while another reads responses.
    ///
    /// Plaintext connections only: the two halves of a TLS session share its state, and a
    /// reader blocked inside it would hold up the writer (refused, not deadlocked).
    pub fn split(self) -> Result<(FrameWriter, FrameReader, Versions)> {
        if matches!(self.writer.stream, Socket::Tls(_)) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: a TLS connection cannot be split for pipelining",
                    self.address()
                ),
            ));
        }
        Ok((self.writer, self.reader, self.versions))
    }
}

/// A connection's byte stream: TCP, or TLS over TCP. A TLS session is one state machine for
/// both directions, so its halves share it behind a lock; only one side uses it at a time
/// (`Connection` runs one request at a time, and `split` refuses TLS).
enum Socket {
    Plain(TcpStream),
    Tls(Arc<Mutex<TlsStream>>),
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Socket {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Plain(stream) => Self::Plain(stream.try_clone()?),
            Self::Tls(session) => Self::Tls(session.clone()),
        })
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.set_read_timeout(timeout),
            Self::Tls(session) => lock(session).sock.set_read_timeout(timeout),
        }
    }
}

fn lock(session: &Mutex<TlsStream>) -> std::sync::MutexGuard<'_, TlsStream> {
    // A panic while holding the lock leaves a session whose state is still the protocol's;
    // the next read or write reports any damage as an IO error.
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.read(buf),
            Self::Tls(session) => lock(session).read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.write(buf),
            Self::Tls(session) => lock(session).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.flush(),
            Self::Tls(session) => lock(session).flush(),
        }
    }
}

/// Runs the TLS handshake to its end, so a refused or untrusted certificate is reported as
/// such at connect, not as a failed first request. The broker's certificate is checked
/// against the host part of `address`.
fn tls_handshake(
    address: &str,
    mut stream: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    options: &ConnectOptions,
) -> Result<TlsStream> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|error| Error::failed(format!("{address}: not a TLS server name: {error}")))?;
    let mut session = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|error| Error::failed(format!("{address}: TLS: {error}")))?;
    while session.is_handshaking() {
        session.complete_io(&mut stream).map_err(|error| {
            Error::io(
                address,
                "in the TLS handshake",
                &error,
                options.timeout_hint,
            )
        })?;
    }
    Ok(rustls::StreamOwned::new(session, stream))
}

fn connect(address: &str, options: &ConnectOptions) -> Result<TcpStream> {
    let hint = options.timeout_hint;
    let addresses = address
        .to_socket_addrs()
        .map_err(|error| Error::failed(format!("broker address {address:?}: {error}")))?;
    let mut last_error = None;
    for socket_address in addresses {
        match TcpStream::connect_timeout(&socket_address, options.timeout) {
            Ok(stream) => {
                let configured = stream
                    .set_nodelay(true)
                    .and_then(|()| stream.set_read_timeout(Some(options.timeout)))
                    .and_then(|()| stream.set_write_timeout(Some(options.timeout)));
                configured
                    .map_err(|error| Error::io(address, "configuring the socket", &error, hint))?;
                return Ok(stream);
            }
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) => Err(Error::io(address, "connecting", &error, hint)),
        None => Err(Error::failed(format!(
            "broker address {address:?} resolves to nothing"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::advertised;
    use bytes::BufMut;
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, ResponseHeader};
    use kafka_protocol::protocol::{Encodable, Message};
    use std::thread;

    const SPEAKS: [ApiRange; 3] = [
        ApiRange::of::<ApiVersionsRequest>(),
        ApiRange::of::<MetadataRequest>(),
        ApiRange::of::<FetchRequest>(),
    ];
    const FIXED: [(ApiKey, i16); 1] = [(ApiKey::Metadata, 1)];

    fn options(mode: VersionsMode) -> ConnectOptions {
        ConnectOptions {
            client_id: "test",
            timeout: Duration::from_secs(5),
            response_frame_bytes_max: 1 << 20,
            speaks: &SPEAKS,
            fixed: &FIXED,
            mode,
            timeout_hint: "",
            security: crate::Security::plaintext(),
        }
    }

    /// Reads one request frame; returns (api key, api version, correlation id).
    fn read_request(stream: &mut TcpStream) -> (i16, i16, i32) {
        let mut size = [0_u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut frame = vec![0_u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut frame).unwrap();
        let field = |at: usize| i16::from_be_bytes([frame[at], frame[at + 1]]);
        (
            field(0),
            field(2),
            i32::from_be_bytes(frame[4..8].try_into().unwrap()),
        )
    }

    fn write_response(
        stream: &mut TcpStream,
        correlation_id: i32,
        body: &ApiVersionsResponse,
        version: i16,
    ) {
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut frame, 0)
            .unwrap();
        body.encode(&mut frame, version).unwrap();
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        stream.write_all(&frame).unwrap();
    }

    /// A broker on a loopback port that runs `serve` on its first connection.
    fn fake_broker(serve: fn(TcpStream)) -> (String, thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream);
        });
        (address, broker)
    }

    #[test]
    fn an_older_broker_gets_api_versions_again_at_the_version_it_knows() {
        // A broker that only knows ApiVersions 0-2 answers our v4 with a v0 body carrying
        // UNSUPPORTED_VERSION and its range (KIP-511); the client asks again at v2.
        let (address, broker) = fake_broker(|mut stream| {
            let (key, version, correlation_id) = read_request(&mut stream);
            assert_eq!(
                (key, version),
                (ApiKey::ApiVersions as i16, ApiVersionsRequest::VERSIONS.max)
            );
            let mut refusal = advertised(&[(ApiKey::ApiVersions, 0, 2)]);
            refusal.error_code = error_codes::UNSUPPORTED_VERSION;
            write_response(&mut stream, correlation_id, &refusal, 0);
            let (key, version, correlation_id) = read_request(&mut stream);
            assert_eq!((key, version), (ApiKey::ApiVersions as i16, 2));
            let ranges = advertised(&[(ApiKey::ApiVersions, 0, 2), (ApiKey::Metadata, 0, 8)]);
            write_response(&mut stream, correlation_id, &ranges, 2);
        });
        let connection = Connection::open(&address, &options(VersionsMode::Negotiate)).unwrap();
        broker.join().unwrap();
        assert_eq!(connection.version::<MetadataRequest>().unwrap(), 8);
        assert!(connection
            .version::<FetchRequest>()
            .unwrap_err()
            .to_string()
            .contains("supports no version of Fetch"));
    }

    #[test]
    fn an_oversized_or_truncated_answer_is_an_error() {
        let (address, broker) = fake_broker(|mut stream| {
            read_request(&mut stream);
            stream.write_all(&i32::MAX.to_be_bytes()).unwrap();
        });
        let error = Connection::open(&address, &options(VersionsMode::Negotiate))
            .err()
            .unwrap();
        broker.join().unwrap();
        assert!(error.to_string().contains("over the"), "{error}");
        let (address, broker) = fake_broker(|mut stream| {
            read_request(&mut stream);
            stream.write_all(&[0, 0, 0, 9, 1]).unwrap();
        });
        let error = Connection::open(&address, &options(VersionsMode::Negotiate))
            .err()
            .unwrap();
        broker.join().unwrap();
        assert!(
            error.to_string().contains("closed the connection"),
            "{error}"
        );
    }

    #[test]
    fn a_broker_that_closes_on_api_versions_gets_the_fixed_versions_when_asked() {
        // Kafka before 0.10 does not know ApiVersions and closes the connection on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let broker = thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            read_request(&mut first);
            drop(first);
            // The client reconnects and uses the fixed versions without asking again.
            let (_second, _) = listener.accept().unwrap();
        });
        let connection =
            Connection::open(&address, &options(VersionsMode::NegotiateOrFixed)).unwrap();
        broker.join().unwrap();
        assert!(connection.versions.fixed);
        assert_eq!(
            connection.fallback_reason.as_deref(),
            Some("the connection was closed")
        );
        assert_eq!(connection.version::<MetadataRequest>().unwrap(), 1);
        // Without the fallback the same refusal is an error.
        let (address, broker) = fake_broker(|mut stream| {
            read_request(&mut stream);
        });
        let error = Connection::open(&address, &options(VersionsMode::Negotiate))
            .err()
            .unwrap();
        broker.join().unwrap();
        assert!(error.is_closed_by_peer(), "{error}");
    }

    #[test]
    fn split_halves_keep_requests_in_flight_and_match_answers_in_order() {
        let (address, broker) = fake_broker(|mut stream| {
            let mut correlation_ids = Vec::new();
            for _ in 0..3 {
                correlation_ids.push(read_request(&mut stream).2);
            }
            // Only once all three are in: answer them in order.
            for correlation_id in correlation_ids {
                write_response(&mut stream, correlation_id, &advertised(&[]), 0);
            }
        });
        let connection = Connection::open(&address, &options(VersionsMode::Fixed)).unwrap();
        let (mut writer, mut reader, _) = connection.split().unwrap();
        let mut frame = BytesMut::new();
        for correlation_id in 1..=3 {
            encode_request(
                &mut frame,
                &ApiVersionsRequest::default(),
                0,
                correlation_id,
                writer.client_id(),
            )
            .unwrap();
            writer.write_frame(&frame).unwrap();
        }
        for correlation_id in 1..=3 {
            let frame = reader.recv_frame().unwrap();
            reader
                .decode_response::<ApiVersionsRequest>(frame, 0, correlation_id)
                .unwrap();
        }
        broker.join().unwrap();
    }
}
