//! The client's one error type: what went wrong in words a person reads, and its kind, so a
//! caller can tell a connection the broker closed from a malformed answer or an error code.

use std::fmt;
use std::io;

use kafka_protocol::protocol::StrBytes;
use ringfeed_protocol::error_codes;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The socket failed (connect, read, write, timeout, closed by the peer).
    Io(io::ErrorKind),
    /// The broker's bytes are not a valid answer, or a request could not be encoded.
    Protocol,
    /// The broker serves no version of an API this client speaks.
    Unsupported,
    /// The broker answered with this error code where no per-item code applies.
    Broker(i16),
    /// Anything else this client refuses to go on with (no such topic, no bootstrap broker).
    Failed,
}

/// An operating error, never a panic: broker unreachable, unknown topic, a malformed answer.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// A socket failure while `doing` something with the broker at `address`, with a hint
    /// for the two causes a person can act on. `timeout_hint` says where the timeout is set
    /// (the CLI's `--timeout-ms`); empty for none.
    pub fn io(address: &str, doing: &str, error: &io::Error, timeout_hint: &str) -> Self {
        let hint = match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if timeout_hint.is_empty() => {
                " (timed out)".to_string()
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!(" (timed out; {timeout_hint})")
            }
            io::ErrorKind::UnexpectedEof => " (the broker closed the connection)".to_string(),
            _ => String::new(),
        };
        Self::new(
            ErrorKind::Io(error.kind()),
            format!("broker {address}: {doing}: {error}{hint}"),
        )
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The broker's error code, when this error is one.
    pub fn broker_code(&self) -> Option<i16> {
        match self.kind {
            ErrorKind::Broker(code) => Some(code),
            _ => None,
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// A broker that does not know a request closes the connection: the read ends early or
    /// the next write finds the socket reset.
    pub fn is_closed_by_peer(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Io(
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            )
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// For callers that speak `io::Result` (the bench): the IO kind survives, so a closed
/// connection is still recognisable.
impl From<Error> for io::Error {
    fn from(error: Error) -> Self {
        let kind = match error.kind {
            ErrorKind::Io(kind) => kind,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::Protocol | ErrorKind::Broker(_) | ErrorKind::Failed => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, error.message)
    }
}

/// `UnknownTopicOrPartition (3)` plus the broker's message when it sent one.
pub fn describe_error(code: i16, message: Option<&StrBytes>) -> String {
    error_codes::describe(code, message)
}

/// `Err` naming `what` when `code` is an error.
pub fn check_error(code: i16, message: Option<&StrBytes>, what: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Broker(code),
            format!("{what}: {}", describe_error(code, message)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_broker_and_keep_their_kind() {
        let closed = io::Error::new(io::ErrorKind::UnexpectedEof, "early eof");
        let error = Error::io("b:9092", "reading a response", &closed, "");
        assert_eq!(
            error.to_string(),
            "broker b:9092: reading a response: early eof (the broker closed the connection)"
        );
        assert!(error.is_closed_by_peer());
        assert_eq!(
            io::Error::from(error).kind(),
            io::ErrorKind::UnexpectedEof,
            "the kind survives the way back to io::Error"
        );
        let slow = io::Error::new(io::ErrorKind::WouldBlock, "would block");
        let error = Error::io("b:9092", "waiting", &slow, "see --timeout-ms");
        assert!(error.to_string().ends_with("(timed out; see --timeout-ms)"));
        assert!(!error.is_closed_by_peer());
    }

    #[test]
    fn broker_codes_are_errors_that_carry_the_code() {
        assert!(check_error(0, None, "x").is_ok());
        let error = check_error(3, None, "topic t").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Broker(3));
        assert_eq!(error.to_string(), "topic t: UnknownTopicOrPartition (3)");
    }
}
