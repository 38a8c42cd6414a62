//! Mutual TLS on the broker-to-broker transport, when `controller.listener.names` names a
//! listener that `listener.security.protocol.map` maps to `SSL`.
//!
//! Both ends present their certificate (the broker's `ssl.keystore.*`) and check the
//! other's against `ssl.truststore.location`; the connecting end also checks that the
//! certificate names the address it dialled (the peer's entry in `controller.quorum.voters`).
//! A chain the truststore signs is not enough: a client certificate from the same CA would
//! pass. So each end maps the other's subject to a principal (`ssl.principal.mapping.rules`)
//! and accepts only the principals of `super.users`, the role Kafka gives the broker
//! principal (it needs `ClusterAction`, which super users have). Anything else is refused
//! before a frame is read or written, logged and counted.
//!
//! Immutable after start-up and shared by the transport's tasks on shard 0. Certificate
//! reload does not reach it: a changed keystore takes effect on the next start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::tls::{PrincipalMapper, TlsSettings};

/// A TLS session to a peer this broker dialled.
pub type ClientStream = futures_rustls::client::TlsStream<TcpStream>;
/// A TLS session a peer opened to this broker.
pub type ServerStream = futures_rustls::server::TlsStream<TcpStream>;

/// How the transport authenticates its peers. See the module docs.
#[derive(Debug)]
pub struct PeerTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    mapper: Arc<PrincipalMapper>,
    /// `super.users`: the principals a peer broker's certificate may map to.
    broker_principals: Vec<String>,
    /// A handshake not done within this closes the connection: a peer that stops halfway
    /// must not hold one of the few inbound slots.
    handshake_timeout: Duration,
}

impl PeerTls {
    pub fn new(
        settings: &TlsSettings,
        mapper: Arc<PrincipalMapper>,
        super_users: &[String],
    ) -> Result<Self, String> {
        if super_users.is_empty() {
            return Err(
                "TLS between brokers (controller.listener.names mapped to SSL) needs \
                 super.users to name the principals of the brokers' certificates: only those \
                 are accepted as peers"
                    .into(),
            );
        }
        let server = crate::tls::server_config(&TlsSettings {
            client_auth: "required".into(),
            ..settings.clone()
        })
        .map_err(|error| format!("TLS between brokers: {error}"))?;
        let client = crate::tls::client_config(settings)
            .map_err(|error| format!("TLS between brokers: {error}"))?;
        Ok(Self {
            server,
            client,
            mapper,
            broker_principals: super_users.to_vec(),
            handshake_timeout: Duration::from_secs(5),
        })
    }

    /// The TLS session to the peer at `address` (`host:port`), once its certificate names
    /// `host` and maps to a broker principal.
    pub async fn connect(&self, stream: TcpStream, address: &str) -> Result<ClientStream, String> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|error| format!("{host} is not a name TLS can check: {error}"))?;
        let connector = futures_rustls::TlsConnector::from(self.client.clone());
        let tls = within(self.handshake_timeout, connector.connect(name, stream))
            .await
            .ok_or_else(|| format!("TLS handshake not done within {:?}", self.handshake_timeout))?
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        self.broker_principal(tls.get_ref().1.peer_certificates())?;
        Ok(tls)
    }

    /// The TLS session a peer opened, once its certificate maps to a broker principal.
    pub async fn accept(&self, stream: TcpStream) -> Result<ServerStream, String> {
        let acceptor = futures_rustls::TlsAcceptor::from(self.server.clone());
        let tls = within(self.handshake_timeout, acceptor.accept(stream))
            .await
            .ok_or_else(|| format!("TLS handshake not done within {:?}", self.handshake_timeout))?
            .map_err(|error| format!("TLS handshake failed: {error}"))?;
        self.broker_principal(tls.get_ref().1.peer_certificates())?;
        Ok(tls)
    }

    /// The principal of a verified peer certificate, if it is one of `super.users`.
    fn broker_principal(
        &self,
        certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<String, String> {
        let certificate = certificates
            .and_then(<[_]>::first)
            .ok_or("the peer sent no certificate")?;
        let principal = crate::tls::certificate_principal(certificate, &self.mapper)?;
        if self.broker_principals.contains(&principal) {
            Ok(principal)
        } else {
            Err(format!(
                "{principal} is not a broker: its certificate is trusted, but only the \
                 principals of super.users may connect to the internal address"
            ))
        }
    }
}

/// `future`'s output, or None when `limit` passes first.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    match select(Box::pin(future), Timer::new(limit)).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}
