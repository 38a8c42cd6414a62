//! Kafka's listener model, parsed: `listeners=NAME://HOST:PORT,...` (a bare `HOST:PORT` is
//! the `PLAINTEXT` listener, as before listeners had names), each name mapped to a security
//! protocol through `listener.security.protocol.map`, and `advertised.listeners` giving the
//! address clients are told per listener name. Pure parsing: no sockets, no resolution.
//!
//! Kafka's rules kept here: listener names are unique; a name must be in the protocol map
//! (the default map names the four protocols after themselves); an advertised entry names a
//! listener that exists; a listener without an advertised entry advertises its own address.

use std::fmt;

/// How a listener's connections are secured (Kafka's `SecurityProtocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub const ALL: [Self; 4] = [
        Self::Plaintext,
        Self::Ssl,
        Self::SaslPlaintext,
        Self::SaslSsl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|protocol| protocol.name().eq_ignore_ascii_case(name))
    }

    /// Whether the connection is TLS from its first byte.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether a client must authenticate with SASL before any other request.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Kafka's default `listener.security.protocol.map`.
pub const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// One `NAME://HOST:PORT` entry as written (the name upper-cased, as Kafka compares them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerAddress {
    pub name: String,
    /// As written, brackets of an IPv6 literal included; empty means every interface.
    pub host: String,
    pub port: u16,
}

impl ListenerAddress {
    /// `HOST:PORT` for binding (an empty host is every interface, as Kafka's `PLAINTEXT://:9092`).
    pub fn bind_address(&self) -> String {
        if self.host.is_empty() {
            format!("0.0.0.0:{}", self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host without IPv6 brackets: what Metadata tells clients.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Listener names and ports are bounded: Kafka's names are identifiers.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// Parses a listener list. An empty value is `Ok(vec![])` (the caller decides if that is allowed).
pub fn parse_list(value: &str) -> Result<Vec<ListenerAddress>, String> {
    let mut listeners: Vec<ListenerAddress> = Vec::new();
    for entry in value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (name, address) = match entry.split_once("://") {
            Some((name, address)) => (name.to_ascii_uppercase(), address),
            None => ("PLAINTEXT".to_string(), entry),
        };
        if !valid_name(&name) {
            return Err(format!("bad listener name in {entry:?}"));
        }
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("expected HOST:PORT or NAME://HOST:PORT, got {entry:?}"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("bad port in {entry:?}"))?;
        if listeners.iter().any(|listener| listener.name == name) {
            return Err(format!("listener name {name} appears twice"));
        }
        listeners.push(ListenerAddress {
            name,
            host: host.to_string(),
            port,
        });
    }
    Ok(listeners)
}

/// The canonical text of a listener list: a lone `PLAINTEXT` listener stays `HOST:PORT` (what
/// the setting held before listeners had names); otherwise `NAME://HOST:PORT,...`.
pub fn canonical(listeners: &[ListenerAddress]) -> String {
    match listeners {
        [only] if only.name == "PLAINTEXT" => only.bind_address(),
        _ => listeners
            .iter()
            .map(|listener| format!("{}://{}:{}", listener.name, listener.host, listener.port))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Parses `listener.security.protocol.map` (`NAME:PROTOCOL,...`).
pub fn parse_protocol_map(value: &str) -> Result<Vec<(String, SecurityProtocol)>, String> {
    let mut map: Vec<(String, SecurityProtocol)> = Vec::new();
    for entry in value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| format!("expected NAME:PROTOCOL, got {entry:?}"))?;
        let name = name.trim().to_ascii_uppercase();
        if !valid_name(&name) {
            return Err(format!("bad listener name in {entry:?}"));
        }
        let protocol = SecurityProtocol::parse(protocol.trim()).ok_or_else(|| {
            format!(
                "unknown security protocol in {entry:?} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
            )
        })?;
        if map.iter().any(|(known, _)| *known == name) {
            return Err(format!("listener name {name} is mapped twice"));
        }
        map.push((name, protocol));
    }
    Ok(map)
}

/// The security protocol of the broker-to-broker port: the one `protocol_map` gives the
/// first name of `controller.listener.names` (empty: `PLAINTEXT`). That port's address is
/// this broker's entry in `controller.quorum.voters`, so the name must not also be a Kafka
/// listener; and it carries no SASL exchange, so only `PLAINTEXT` and `SSL` (mutual TLS
/// between broker principals) are served.
pub fn internal_protocol(
    controller_listener_names: &str,
    protocol_map: &str,
    client_listeners: &[ListenerPlan],
) -> Result<SecurityProtocol, String> {
    let Some(name) = controller_listener_names
        .split(',')
        .map(|name| name.trim().to_ascii_uppercase())
        .find(|name| !name.is_empty())
    else {
        return Ok(SecurityProtocol::Plaintext);
    };
    if client_listeners.iter().any(|plan| plan.name == name) {
        return Err(format!(
            "controller.listener.names names {name}, which is also in listeners: the \
             broker-to-broker port's address is this broker's entry in \
             controller.quorum.voters, not a Kafka listener"
        ));
    }
    let protocol = parse_protocol_map(protocol_map)?
        .into_iter()
        .find(|(mapped, _)| *mapped == name)
        .map(|(_, protocol)| protocol)
        .ok_or_else(|| {
            format!(
                "controller.listener.names names {name}, which has no entry in \
                 listener.security.protocol.map"
            )
        })?;
    match protocol {
        SecurityProtocol::Plaintext | SecurityProtocol::Ssl => Ok(protocol),
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl => Err(format!(
            "controller.listener.names: {name} maps to {protocol:?}; the broker-to-broker \
             port serves PLAINTEXT or SSL (mutual TLS between the brokers of super.users)"
        )),
    }
}

/// One listener as the broker will open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerPlan {
    pub name: String,
    pub protocol: SecurityProtocol,
    /// `HOST:PORT` to bind.
    pub bind: String,
    /// What clients are told, when `advertised.listeners` names this listener.
    pub advertised: Option<(String, u16)>,
}

/// Joins the three settings into the listeners to open, or says what does not fit.
pub fn plan(
    listeners: &str,
    advertised: &str,
    protocol_map: &str,
) -> Result<Vec<ListenerPlan>, String> {
    let addresses = parse_list(listeners)?;
    if addresses.is_empty() {
        return Err("listeners: at least one listener is needed".into());
    }
    let map = parse_protocol_map(protocol_map)?;
    let mut advertised_entries = parse_list(advertised)?;
    // A bare advertised HOST:PORT with a single listener of another name advertises that one
    // (the setting was one address before listeners had names).
    if let ([only_listener], [only_advertised]) = (&addresses[..], &mut advertised_entries[..]) {
        if only_advertised.name == "PLAINTEXT" && !advertised.contains("://") {
            only_advertised.name.clone_from(&only_listener.name);
        }
    }
    if let Some(stray) = advertised_entries
        .iter()
        .find(|entry| !addresses.iter().any(|listener| listener.name == entry.name))
    {
        return Err(format!(
            "advertised.listeners names {}, which is not in listeners",
            stray.name
        ));
    }
    let mut plans = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let protocol = map
            .iter()
            .find(|(name, _)| *name == address.name)
            .map(|(_, protocol)| *protocol)
            .ok_or_else(|| {
                format!(
                    "listener {} has no entry in listener.security.protocol.map",
                    address.name
                )
            })?;
        if address.port != 0
            && plans
                .iter()
                .any(|plan: &ListenerPlan| plan.bind.ends_with(&format!(":{}", address.port)))
        {
            return Err(format!(
                "listeners: port {} is used by two listeners",
                address.port
            ));
        }
        let advertised = advertised_entries
            .iter()
            .find(|entry| entry.name == address.name)
            .map(|entry| (entry.bare_host().to_string(), entry.port));
        plans.push(ListenerPlan {
            name: address.name.clone(),
            protocol,
            bind: address.bind_address(),
            advertised,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_is_the_plaintext_listener() {
        let plans = plan("127.0.0.1:9092", "", DEFAULT_PROTOCOL_MAP).unwrap();
        assert_eq!(
            plans,
            vec![ListenerPlan {
                name: "PLAINTEXT".into(),
                protocol: SecurityProtocol::Plaintext,
                bind: "127.0.0.1:9092".into(),
                advertised: None,
            }]
        );
        assert_eq!(
            canonical(&parse_list("PLAINTEXT://:9092").unwrap()),
            "0.0.0.0:9092"
        );
    }

    #[test]
    fn several_listeners_each_with_its_protocol_and_advertised_address() {
        let plans = plan(
            "PLAINTEXT://127.0.0.1:9092,ssl://0.0.0.0:9093,SASL_SSL://[::1]:9094",
            "PLAINTEXT://a.example:19092,SASL_SSL://b.example:19094",
            DEFAULT_PROTOCOL_MAP,
        )
        .unwrap();
        let summary: Vec<_> = plans
            .iter()
            .map(|plan| (plan.name.as_str(), plan.protocol, plan.bind.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("PLAINTEXT", SecurityProtocol::Plaintext, "127.0.0.1:9092"),
                ("SSL", SecurityProtocol::Ssl, "0.0.0.0:9093"),
                ("SASL_SSL", SecurityProtocol::SaslSsl, "[::1]:9094"),
            ]
        );
        assert_eq!(plans[0].advertised, Some(("a.example".into(), 19092)));
        assert_eq!(plans[1].advertised, None);
        assert_eq!(plans[2].advertised, Some(("b.example".into(), 19094)));
    }

    #[test]
    fn the_internal_port_takes_its_protocol_from_the_controller_listener_name() {
        let clients = plan("127.0.0.1:9092", "", DEFAULT_PROTOCOL_MAP).unwrap();
        let map = "PLAINTEXT:PLAINTEXT,CONTROLLER:SSL,BROKERS:SASL_SSL";
        assert_eq!(
            internal_protocol("", map, &clients),
            Ok(SecurityProtocol::Plaintext)
        );
        assert_eq!(
            internal_protocol("controller", map, &clients),
            Ok(SecurityProtocol::Ssl)
        );
        let sasl = internal_protocol("BROKERS", map, &clients).unwrap_err();
        assert!(sasl.contains("PLAINTEXT or SSL"), "{sasl}");
        let unmapped = internal_protocol("OTHER", map, &clients).unwrap_err();
        assert!(unmapped.contains("no entry"), "{unmapped}");
        let shared = internal_protocol("PLAINTEXT", map, &clients).unwrap_err();
        assert!(shared.contains("also in listeners"), "{shared}");
    }

    #[test]
    fn custom_names_go_through_the_protocol_map() {
        let plans = plan(
            "INTERNAL://127.0.0.1:9092,EXTERNAL://127.0.0.1:9093",
            "",
            "INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL",
        )
        .unwrap();
        assert_eq!(plans[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(plans[1].protocol, SecurityProtocol::SaslSsl);
        let unmapped = plan("CLIENT://127.0.0.1:9092", "", DEFAULT_PROTOCOL_MAP).unwrap_err();
        assert!(unmapped.contains("CLIENT has no entry"), "{unmapped}");
    }

    #[test]
    fn a_bare_advertised_address_fits_a_single_listener_of_any_name() {
        let plans = plan(
            "SSL://0.0.0.0:9093",
            "broker.example:9093",
            DEFAULT_PROTOCOL_MAP,
        )
        .unwrap();
        assert_eq!(plans[0].advertised, Some(("broker.example".into(), 9093)));
    }

    #[test]
    fn refuses_what_kafka_refuses() {
        for (listeners, advertised, map, expected) in [
            (
                "PLAINTEXT://a:1,PLAINTEXT://a:2",
                "",
                DEFAULT_PROTOCOL_MAP,
                "appears twice",
            ),
            (
                "PLAINTEXT://a:1,SSL://b:1",
                "",
                DEFAULT_PROTOCOL_MAP,
                "used by two",
            ),
            (
                "PLAINTEXT://a:1",
                "SSL://b:2",
                DEFAULT_PROTOCOL_MAP,
                "not in listeners",
            ),
            (
                "a",
                "",
                DEFAULT_PROTOCOL_MAP,
                "expected HOST:PORT or NAME://",
            ),
            ("SSL://a:99999", "", DEFAULT_PROTOCOL_MAP, "bad port"),
            ("", "", DEFAULT_PROTOCOL_MAP, "at least one"),
            ("X://a:1", "", "X:TLS", "unknown security protocol"),
            ("B@D://a:1", "", DEFAULT_PROTOCOL_MAP, "bad listener name"),
        ] {
            let error = plan(listeners, advertised, map).unwrap_err();
            assert!(error.contains(expected), "{listeners}: {error}");
        }
        // Port 0 (any free port) may repeat.
        assert!(plan("PLAINTEXT://a:0,SSL://a:0", "", DEFAULT_PROTOCOL_MAP).is_ok());
    }
}
