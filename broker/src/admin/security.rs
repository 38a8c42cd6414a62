//! Who may use the admin listener: TLS (`ringfeed.admin.ssl.enable`, with the broker's
//! `ssl.keystore.*`), optionally requiring a client certificate the truststore signs
//! (`ringfeed.admin.ssl.client.auth=required`), and a bearer token
//! (`ringfeed.admin.token.file`) every request but `/health` and `/ready` must carry as
//! `Authorization: Bearer <token>`. The probes stay open to the token's absence because a
//! liveness check reveals nothing and is often made by something that holds no secret; with
//! a required client certificate nothing at all is served without one.
//!
//! Built once at start-up (a bad keystore or an unreadable token file stops the start with
//! the setting named) and owned by the admin thread.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::tls::TlsSettings;

/// A token shorter than this is refused at start-up: it would be guessable.
pub const TOKEN_CHARS_MIN: usize = 16;

/// The admin listener's settings, as written.
#[derive(Clone, Debug, Default)]
pub struct AdminSecuritySettings {
    /// `ringfeed.admin.ssl.enable`.
    pub tls: bool,
    /// `ringfeed.admin.ssl.client.auth`: `none` or `required`.
    pub client_auth: String,
    /// `ringfeed.admin.token.file`: empty for no token.
    pub token_file: String,
}

/// What the admin listener enforces. See the module docs.
#[derive(Default)]
pub struct AdminSecurity {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    token: Option<String>,
}

impl std::fmt::Debug for AdminSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("AdminSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl AdminSecurity {
    pub fn new(settings: &AdminSecuritySettings, tls: &TlsSettings) -> Result<Self, String> {
        let client_auth = if settings.client_auth.is_empty() {
            crate::tls::ClientAuth::None
        } else {
            crate::tls::ClientAuth::parse(&settings.client_auth)
                .map_err(|error| format!("ringfeed.admin.ssl.client.auth: {error}"))?
        };
        if client_auth != crate::tls::ClientAuth::None && !settings.tls {
            return Err(
                "ringfeed.admin.ssl.client.auth asks for client certificates, but the admin \
                 listener serves plaintext: set ringfeed.admin.ssl.enable=true"
                    .into(),
            );
        }
        let tls = settings
            .tls
            .then(|| {
                let client_auth = match client_auth {
                    crate::tls::ClientAuth::None => "none",
                    _ => "required",
                };
                crate::tls::server_config(&TlsSettings {
                    client_auth: client_auth.into(),
                    ..tls.clone()
                })
                .map_err(|error| format!("ringfeed.admin.ssl.enable: {error}"))
            })
            .transpose()?;
        let token = if settings.token_file.is_empty() {
            None
        } else {
            let text = std::fs::read_to_string(&settings.token_file).map_err(|error| {
                format!(
                    "ringfeed.admin.token.file: cannot read {}: {error}",
                    settings.token_file
                )
            })?;
            let token = text.trim().to_string();
            if token.chars().count() < TOKEN_CHARS_MIN || token.contains(char::is_whitespace) {
                return Err(format!(
                    "ringfeed.admin.token.file: the token in {} must be at least \
                     {TOKEN_CHARS_MIN} characters with no spaces",
                    settings.token_file
                ));
            }
            Some(token)
        };
        Ok(Self { tls, token })
    }

    /// Whether a request for `path` carrying `bearer` may be served.
    pub fn admits(&self, path: &str, bearer: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if matches!(path, "/health" | "/ready") {
            return true;
        }
        bearer.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
    }
}

/// Compares two secrets in time that depends on their lengths only, not on where they
/// first differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// An admin connection: the socket, or a TLS session over it. Timeouts and shutdown go to
/// the socket underneath.
pub enum AdminStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl AdminStream {
    pub fn accept(
        socket: TcpStream,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> Result<Self, String> {
        match tls {
            None => Ok(Self::Plain(socket)),
            Some(config) => {
                let session = rustls::ServerConnection::new(config.clone())
                    .map_err(|error| format!("TLS: {error}"))?;
                Ok(Self::Tls(Box::new(rustls::StreamOwned::new(
                    session, socket,
                ))))
            }
        }
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Self::Plain(socket) => socket,
            Self::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for AdminStream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(socket) => socket.read(buffer),
            Self::Tls(tls) => tls.read(buffer),
        }
    }
}

impl Write for AdminStream {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(socket) => socket.write(buffer),
            Self::Tls(tls) => tls.write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(socket) => socket.flush(),
            Self::Tls(tls) => tls.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_guards_everything_but_the_probes() {
        let security = AdminSecurity {
            tls: None,
            token: Some("0123456789abcdef".into()),
        };
        assert!(security.admits("/health", None));
        assert!(security.admits("/ready", None));
        assert!(!security.admits("/metrics", None));
        assert!(!security.admits("/log-level", Some("0123456789abcdeX")));
        assert!(!security.admits("/log-level", Some("0123456789abcde")));
        assert!(security.admits("/log-level", Some("0123456789abcdef")));
        assert!(AdminSecurity::default().admits("/metrics", None));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_setting_named() {
        let short =
            std::env::temp_dir().join(format!("ringfeed-admin-token-{}", std::process::id()));
        std::fs::write(&short, "short\n").unwrap();
        let cases = [
            (
                AdminSecuritySettings {
                    client_auth: "required".into(),
                    ..AdminSecuritySettings::default()
                },
                "set ringfeed.admin.ssl.enable=true",
            ),
            (
                AdminSecuritySettings {
                    token_file: short.display().to_string(),
                    ..AdminSecuritySettings::default()
                },
                "at least 16 characters",
            ),
            (
                AdminSecuritySettings {
                    token_file: "/nonexistent/ringfeed-token".into(),
                    ..AdminSecuritySettings::default()
                },
                "cannot read",
            ),
            (
                AdminSecuritySettings {
                    tls: true,
                    client_auth: "none".into(),
                    ..AdminSecuritySettings::default()
                },
                "ssl.keystore.location",
            ),
        ];
        for (settings, expected) in cases {
            let error = AdminSecurity::new(&settings, &TlsSettings::default()).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let _ = std::fs::remove_file(short);
    }
}
