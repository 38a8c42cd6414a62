//! What a setting is: one row of the settings table ([`Setting`]) and the kind of values it
//! accepts ([`Kind`]), with the parsing that turns a value into its canonical text. The table
//! (`table.rs`) and the resolution of values (the parent module) both build on these.

use ringfeed_replication::voters::QuorumVoters;

use crate::topic_config;

/// What values a setting accepts; each kind normalises what it accepts to one canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// A whole number in `min..=max` that is a multiple of `multiple_of`.
    Integer {
        min: i64,
        max: i64,
        multiple_of: i64,
    },
    /// The broker default of a topic config (`Setting::topic_key`): accepted exactly when the
    /// topic config would accept the value as an override.
    TopicDefault,
    /// Kafka listeners: `NAME://HOST:PORT,...` (a bare `HOST:PORT` is `PLAINTEXT`);
    /// `optional` allows "".
    Listener { optional: bool },
    /// Kafka's `listener.security.protocol.map`: `NAME:PROTOCOL,...`.
    ProtocolMap,
    /// Free text, "" allowed (file paths and inline PEM of the `ssl.*` settings).
    Text,
    /// `HOST:PORT` or `off`.
    ListenerOrOff,
    /// A directory path.
    Path,
    /// Comma-separated CPU numbers (a TOML array of integers works too), or "".
    CpuList,
    /// A tracing filter (`info`, `ringfeed_broker=debug,warn`).
    LogFilter,
    /// One of a fixed list of words (`text`, `json`).
    OneOf(&'static [&'static str]),
    /// Kafka's `controller.quorum.voters`: `ID@HOST:PORT,...`, or "" for a one-node cluster.
    QuorumVoters,
}

/// Where a setting's table entry says it belongs in help and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Kafka has this setting under the same key.
    Kafka,
    /// Ringfeed's own (`ringfeed.*`).
    Ringfeed,
}

/// One row of the settings table.
#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    /// The canonical text of the default value.
    pub default: &'static str,
    pub kind: Kind,
    /// The topic config this broker setting is the default of (Kafka's config synonyms:
    /// `log.retention.ms` is the default of `retention.ms`).
    pub topic_key: Option<&'static str>,
    /// Flag names from before this table, still accepted (`--listen` for `--listeners`).
    pub flag_aliases: &'static [&'static str],
    /// A value-less flag that sets a `Bool` setting to false (`--no-auto-create-topics`).
    pub false_switch: Option<&'static str>,
    /// One sentence for `--help`, then any detail for the docs.
    pub doc: &'static str,
}

impl Setting {
    /// The key without the `ringfeed.` prefix: what the flag and variable are made from.
    fn short_name(&self) -> &'static str {
        self.key.strip_prefix("ringfeed.").unwrap_or(self.key)
    }

    /// The flag, without its leading dashes (`log-retention-ms`).
    pub fn flag(&self) -> String {
        self.short_name().replace('.', "-")
    }

    /// The environment variable (`RINGFEED_LOG_RETENTION_MS`).
    pub fn env_name(&self) -> String {
        format!(
            "RINGFEED_{}",
            self.short_name().replace('.', "_").to_ascii_uppercase()
        )
    }

    pub fn group(&self) -> Group {
        if self.key.starts_with("ringfeed.") {
            Group::Ringfeed
        } else {
            Group::Kafka
        }
    }

    /// The first sentence of the doc, for `--help`.
    pub fn summary(&self) -> &'static str {
        self.doc
            .find(". ")
            .map_or(self.doc, |end| &self.doc[..=end])
    }

    /// The values accepted, in words, for the docs.
    pub fn accepted(&self) -> String {
        match self.kind {
            Kind::Bool => "true, false".into(),
            Kind::Integer {
                min,
                max,
                multiple_of: 1,
            } => format!("{min} to {max}"),
            Kind::Integer {
                min,
                max,
                multiple_of,
            } => format!("{min} to {max}, a multiple of {multiple_of}"),
            Kind::TopicDefault => topic_config::accepted_values(
                self.topic_key.expect("a topic default names its topic key"),
            ),
            Kind::Listener { optional: false } => "NAME://HOST:PORT,... or HOST:PORT".into(),
            Kind::Listener { optional: true } => "NAME://HOST:PORT,..., HOST:PORT or empty".into(),
            Kind::ProtocolMap => "NAME:PROTOCOL,...".into(),
            Kind::Text => "text or empty".into(),
            Kind::ListenerOrOff => "HOST:PORT or off".into(),
            Kind::Path => "a directory".into(),
            Kind::CpuList => "CPU numbers, comma-separated, or empty".into(),
            Kind::LogFilter => "a tracing filter".into(),
            Kind::OneOf(names) => names.join(", "),
            Kind::QuorumVoters => "ID@HOST:PORT,... or empty".into(),
        }
    }

    /// Whether a value prints as a bare TOML integer or boolean rather than a string.
    pub(super) fn is_bare_toml(&self, value: &str) -> bool {
        match self.kind {
            Kind::Bool | Kind::Integer { .. } => true,
            Kind::TopicDefault => value.parse::<i64>().is_ok(),
            _ => false,
        }
    }

    /// Checks `value` and returns its canonical text, or why it is refused (without the key,
    /// which the caller adds with the value's source).
    pub fn parse(&self, value: &str) -> Result<String, String> {
        let value = value.trim();
        match self.kind {
            Kind::Bool => match value.to_ascii_lowercase().as_str() {
                "true" => Ok("true".into()),
                "false" => Ok("false".into()),
                _ => Err(format!("expected true or false, got {value:?}")),
            },
            Kind::Integer {
                min,
                max,
                multiple_of,
            } => match value.parse::<i64>() {
                Ok(number) if (min..=max).contains(&number) && number % multiple_of == 0 => {
                    Ok(number.to_string())
                }
                Ok(_) if multiple_of > 1 => Err(format!(
                    "expected a multiple of {multiple_of} from {min} to {max}, got {value}"
                )),
                _ => Err(format!(
                    "expected a whole number from {min} to {max}, got {value:?}"
                )),
            },
            Kind::TopicDefault => {
                let topic_key = self.topic_key.expect("a topic default names its topic key");
                topic_config::validate_override(topic_key, value)?;
                Ok(value.to_string())
            }
            Kind::Listener { optional } => parse_listeners(value, optional),
            Kind::Text => Ok(value.to_string()),
            Kind::ProtocolMap => crate::listeners::parse_protocol_map(value).map(|map| {
                map.iter()
                    .map(|(name, protocol)| format!("{name}:{protocol}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            Kind::ListenerOrOff if value == "off" => Ok(value.into()),
            Kind::ListenerOrOff => parse_listener(value, false),
            Kind::Path if value.is_empty() => Err("expected a directory path".into()),
            Kind::Path if value.contains(',') => Err(format!(
                "one directory is supported, got {value:?} (a list, as Kafka's log.dirs allows, is not)"
            )),
            Kind::Path => Ok(value.into()),
            Kind::CpuList => parse_cpu_list(value),
            Kind::QuorumVoters => QuorumVoters::parse(value).map(|voters| voters.to_string()),
            Kind::LogFilter => tracing_subscriber::EnvFilter::try_new(value)
                .map(|_| value.to_string())
                .map_err(|error| format!("not a log filter ({error}): {value:?}")),
            Kind::OneOf(names) => names
                .iter()
                .find(|name| name.eq_ignore_ascii_case(value))
                .map(|name| (*name).to_string())
                .ok_or_else(|| format!("expected one of {}, got {value:?}", names.join(", "))),
        }
    }
}

fn parse_listeners(value: &str, optional: bool) -> Result<String, String> {
    let listeners = crate::listeners::parse_list(value)?;
    if listeners.is_empty() && !optional {
        return Err("expected at least one listener".into());
    }
    Ok(crate::listeners::canonical(&listeners))
}

fn parse_listener(value: &str, optional: bool) -> Result<String, String> {
    if optional && value.is_empty() {
        return Ok(String::new());
    }
    let address = value
        .strip_prefix("PLAINTEXT://")
        .or_else(|| value.strip_prefix("plaintext://"))
        .unwrap_or(value);
    if address.contains(',') {
        return Err(format!(
            "one listener is supported, got {value:?} (TLS/SASL listeners are not)"
        ));
    }
    if address.contains("://") {
        return Err(format!(
            "only PLAINTEXT listeners are supported, got {value:?}"
        ));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {value:?}"))?;
    port.parse::<u16>()
        .map_err(|_| format!("bad port in {value:?}"))?;
    if host.is_empty() {
        // Kafka's `PLAINTEXT://:9092` means every interface.
        return Ok(format!("0.0.0.0:{port}"));
    }
    Ok(address.to_string())
}

fn parse_cpu_list(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let cpus: Result<Vec<usize>, _> = value.split(',').map(|cpu| cpu.trim().parse()).collect();
    let cpus = cpus.map_err(|_| format!("expected comma-separated CPU numbers, got {value:?}"))?;
    Ok(cpus
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(","))
}
