//! Every broker setting in one table (`SETTINGS`, in settings/table.rs): its key, default,
//! accepted values and documentation. The command-line flags, the environment variables,
//! the keys of the TOML file, `ringfeed config print`, the broker's `DescribeConfigs` and
//! docs/CONFIGURATION.md are all derived from it, so adding a setting is one entry in the
//! table plus the line that reads it into `ServeOptions` (`Effective::serve_options`).
//!
//! Names: Kafka's `server.properties` key where Kafka has the setting (`log.retention.ms`),
//! `ringfeed.*` otherwise. From a key: the flag drops the `ringfeed.` prefix and turns dots
//! into dashes (`--log-retention-ms`, `--shards`); the environment variable is `RINGFEED_`
//! plus the same name upper-cased with underscores (`RINGFEED_LOG_RETENTION_MS`,
//! `RINGFEED_SHARDS`). Precedence: flag > environment > file > default.

use std::fmt::{self, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringfeed_replication::voters::QuorumVoters;

use crate::cluster_config::ClusterConfig;
use crate::limits::Limits;
use crate::recompress::CompressionType;
use crate::topic_config::TopicConfig;

/// Values of `group.consumer.migration.policy` (read by `groups::MigrationPolicy`).
pub const MIGRATION_POLICIES: &[&str] = &["bidirectional", "upgrade", "downgrade", "disabled"];

pub use kind::{Group, Kind, Setting};
pub use table::SETTINGS;

/// Environment variables with the `RINGFEED_` prefix that are not settings, so `serve` does
/// not warn about them: keep in step with the tools that read them.
pub const ENV_NOT_SETTINGS: &[&str] = &[
    // The config file to read when `--config` is not given.
    "RINGFEED_CONFIG",
    // The client subcommands' bootstrap brokers (`ringfeed topic|produce|consume|group`).
    "RINGFEED_BROKERS",
    // Binary paths for the test harness, the benchmark and perf-tools scripts.
    "RINGFEED_BIN",
    "RINGFEED_BENCH",
    "RINGFEED_PERF",
];

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "RINGFEED_CONFIG";

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    /// The flag as its canonical name (`--log-retention-ms`).
    Flag(String),
}

impl Source {
    /// One word: default, file, env or flag.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Env(_) => "env",
            Source::Flag(_) => "flag",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(formatter, "default"),
            Source::File(path) => write!(formatter, "file {}", path.display()),
            Source::Env(name) => write!(formatter, "env {name}"),
            Source::Flag(flag) => write!(formatter, "flag --{flag}"),
        }
    }
}

/// A value given on the command line for the setting at `index` in `SETTINGS`.
#[derive(Debug, Clone)]
pub struct FlagValue {
    pub index: usize,
    pub value: String,
}

/// Everything the settings are resolved from.
#[derive(Debug, Default)]
pub struct Inputs {
    /// The TOML file's text and path, if one was given.
    pub file: Option<(PathBuf, String)>,
    /// Environment variables (all of them; only `RINGFEED_*` are looked at).
    pub env: Vec<(String, String)>,
    pub flags: Vec<FlagValue>,
}

/// One setting's effective value.
#[derive(Debug, Clone)]
pub struct Entry {
    pub setting: &'static Setting,
    /// Canonical text (see `Setting::parse`).
    pub value: String,
    pub source: Source,
}

/// The effective value of every setting, in table order. Built once at start-up, then
/// read-only (shared through `BrokerConfig`).
#[derive(Debug, Clone)]
pub struct Effective {
    entries: Vec<Entry>,
    /// What resolution ignored, one line each, for the caller to log once logging is set up
    /// (it is configured by these settings, so it cannot be running yet).
    warnings: Vec<String>,
}

impl Effective {
    /// Every setting at its default.
    pub fn defaults() -> Self {
        Self {
            entries: SETTINGS
                .iter()
                .map(|setting| Entry {
                    setting,
                    value: setting.default.to_string(),
                    source: Source::Default,
                })
                .collect(),
            warnings: Vec::new(),
        }
    }

    /// Applies the file, then the environment, then the flags over the defaults. Every
    /// refused key or value is reported (all of them, one per line), naming the key and
    /// where it came from. A `RINGFEED_*` variable that names no setting is not refused but
    /// becomes a warning (`warnings`): the environment is shared with whatever starts the
    /// broker (wrapper scripts export `RINGFEED_PID`, `RINGFEED_LOG`, ...), while the file
    /// and the flags are written for the broker alone, so an unknown name there is a mistake.
    pub fn resolve(inputs: &Inputs) -> Result<Self, String> {
        let mut effective = Self::defaults();
        let mut errors = Vec::new();
        if let Some((path, text)) = &inputs.file {
            match file_values(text) {
                Ok(values) => {
                    for (key, value) in values {
                        let source = Source::File(path.clone());
                        match index_of(&key) {
                            Some(index) => effective.set(index, &value, source, &mut errors),
                            None => errors.push(unknown_key(&key, &source)),
                        }
                    }
                }
                Err(error) => errors.push(format!(
                    "config file {} is not valid TOML: {error}",
                    path.display()
                )),
            }
        }
        for (name, value) in &inputs.env {
            if !name.starts_with("RINGFEED_") || ENV_NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            match SETTINGS
                .iter()
                .position(|setting| setting.env_name() == *name)
            {
                Some(index) => effective.set(index, value, Source::Env(name.clone()), &mut errors),
                None => effective.warnings.push(unknown_variable(name)),
            }
        }
        for flag in &inputs.flags {
            let source = Source::Flag(SETTINGS[flag.index].flag());
            effective.set(flag.index, &flag.value, source, &mut errors);
        }
        effective.check_combinations(&mut errors);
        if errors.is_empty() {
            Ok(effective)
        } else {
            Err(errors.join("\n"))
        }
    }

    fn set(&mut self, index: usize, value: &str, source: Source, errors: &mut Vec<String>) {
        let setting = &SETTINGS[index];
        match setting.parse(value) {
            Ok(value) => {
                self.entries[index] = Entry {
                    setting,
                    value,
                    source,
                }
            }
            Err(reason) => {
                errors.push(format!("invalid {} (from {source}): {reason}", setting.key));
            }
        }
    }

    fn check_combinations(&self, errors: &mut Vec<String>) {
        let shards = self.entry("ringfeed.shards");
        let cpus = self.entry("ringfeed.cpus");
        if shards.value != "0" && !cpus.value.is_empty() {
            errors.push(format!(
                "ringfeed.shards (from {}) and ringfeed.cpus (from {}) are both set: give one \
                 (ringfeed.cpus runs one shard per listed CPU)",
                shards.source, cpus.source
            ));
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// What resolution ignored (unknown `RINGFEED_*` variables), one line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The entry of `key`. A key missing from the table is a programmer error.
    pub fn entry(&self, key: &str) -> &Entry {
        let index = index_of(key).unwrap_or_else(|| panic!("no setting {key} in SETTINGS"));
        &self.entries[index]
    }

    pub fn text(&self, key: &str) -> &str {
        &self.entry(key).value
    }

    pub fn integer(&self, key: &str) -> i64 {
        let entry = self.entry(key);
        entry
            .value
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not an integer setting"))
    }

    fn unsigned(&self, key: &str) -> u64 {
        u64::try_from(self.integer(key)).unwrap_or_else(|_| panic!("{key} has no negative values"))
    }

    pub fn boolean(&self, key: &str) -> bool {
        self.text(key) == "true"
    }

    /// Where the default of topic config `topic_key` came from, if a setting holds it.
    pub fn topic_default_source(&self, topic_key: &str) -> Option<&Source> {
        self.entries
            .iter()
            .find(|entry| entry.setting.topic_key == Some(topic_key))
            .map(|entry| &entry.source)
    }

    /// The configuration of a topic that overrides nothing.
    pub fn topic_defaults(&self) -> TopicConfig {
        TopicConfig {
            retention_ms: self.integer("log.retention.ms"),
            retention_bytes: self.integer("log.retention.bytes"),
            segment_bytes: self.integer("log.segment.bytes"),
            segment_ms: self.integer("log.roll.ms"),
            max_message_bytes: self.integer("message.max.bytes"),
            flush_policy: self.text("ringfeed.log.flush.policy").to_string(),
            flush_ms: self.integer("log.flush.interval.ms"),
            compression: CompressionType::parse(self.text("compression.type"))
                .expect("validated against the same names"),
            min_insync_replicas: self.integer("min.insync.replicas"),
            segment_preallocate_bytes: self.unsigned("ringfeed.segment.preallocate.bytes"),
            cleanup_policy: crate::topic_config::canonical_cleanup_policy(
                self.text("log.cleanup.policy"),
            )
            .expect("validated by the same function")
            .to_string(),
            delete_retention_ms: self.integer("log.cleaner.delete.retention.ms"),
            min_compaction_lag_ms: self.integer("log.cleaner.min.compaction.lag.ms"),
            max_compaction_lag_ms: self.integer("log.cleaner.max.compaction.lag.ms"),
            min_cleanable_dirty_ratio_ppm: (self
                .text("log.cleaner.min.cleanable.ratio")
                .parse::<f64>()
                .expect("validated as a ratio")
                * 1_000_000.0)
                .round() as i64,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            request_frame_bytes_max: self.unsigned("socket.request.max.bytes") as usize,
            connection_idle_max: Duration::from_millis(self.unsigned("connections.max.idle.ms")),
            connections_max: self.unsigned("max.connections") as usize,
            connections_per_ip_max: self.unsigned("max.connections.per.ip") as usize,
            shard_inflight_request_bytes_max: self.unsigned("queued.max.request.bytes") as usize,
            request_read_timeout: Duration::from_millis(
                self.unsigned("ringfeed.request.read.timeout.ms"),
            ),
            message_bytes_max_default: self.unsigned("message.max.bytes") as usize,
            retention_check_interval: Duration::from_millis(
                self.unsigned("log.retention.check.interval.ms"),
            ),
            log_dormant_after: Duration::from_millis(
                self.unsigned("ringfeed.log.dormant.after.ms"),
            ),
            tail_cache_shard_bytes: self.unsigned("ringfeed.log.tail.cache.shard.bytes") as usize,
            cleaner_enabled: self.boolean("log.cleaner.enable"),
            cleaner_io_bytes_per_second: self.unsigned("log.cleaner.io.max.bytes.per.second"),
            cleaner_map_bytes: self.unsigned("log.cleaner.dedupe.buffer.size") as usize,
            cleaner_backoff: Duration::from_millis(self.unsigned("log.cleaner.backoff.ms")),
            group_initial_rebalance_delay: Duration::from_millis(
                self.unsigned("group.initial.rebalance.delay.ms"),
            ),
            group_session_timeout_min: Duration::from_millis(
                self.unsigned("group.min.session.timeout.ms"),
            ),
            group_session_timeout_max: Duration::from_millis(
                self.unsigned("group.max.session.timeout.ms"),
            ),
            group_consumer_session_timeout: Duration::from_millis(
                self.unsigned("group.consumer.session.timeout.ms"),
            ),
            group_consumer_heartbeat_interval: Duration::from_millis(
                self.unsigned("group.consumer.heartbeat.interval.ms"),
            ),
            group_consumer_max_size: self.unsigned("group.consumer.max.size") as usize,
            group_consumer_migration_policy: MIGRATION_POLICIES
                .iter()
                .find(|name| {
                    name.eq_ignore_ascii_case(self.text("group.consumer.migration.policy"))
                })
                .copied()
                .unwrap_or("bidirectional"),
            offsets_retention: Duration::from_secs(self.unsigned("offsets.retention.minutes") * 60),
            transaction_max_timeout: Duration::from_millis(
                self.unsigned("transaction.max.timeout.ms"),
            ),
            transactional_id_expiration: Duration::from_millis(
                self.unsigned("transactional.id.expiration.ms"),
            ),
            transaction_abort_check_interval: Duration::from_millis(
                self.unsigned("transaction.abort.timed.out.transaction.cleanup.interval.ms"),
            ),
            offsets_checkpoint_records: self.unsigned("ringfeed.offsets.checkpoint.records")
                as usize,
            segment_preallocate_bytes: self.unsigned("ringfeed.segment.preallocate.bytes"),
            shard_fetch_waits_parked_max: self.unsigned("ringfeed.fetch.waits.parked.max") as usize,
            shard_fetch_session_slots_max: self
                .unsigned("max.incremental.fetch.session.cache.slots")
                as usize,
            ..Limits::default()
        }
    }

    /// What `server::serve` needs.
    pub fn serve_options(&self) -> ServeOptions {
        let optional = |key: &str| Some(self.text(key).to_string()).filter(|text| !text.is_empty());
        ServeOptions {
            listen: self.text("listeners").to_string(),
            advertised_listener: optional("advertised.listeners"),
            protocol_map: self.text("listener.security.protocol.map").to_string(),
            controller_listener_names: self.text("controller.listener.names").to_string(),
            sasl_mechanisms: self.text("sasl.enabled.mechanisms").to_string(),
            sasl_session_lifetime_ms: self.unsigned("connections.max.reauth.ms"),
            super_users: self.text("super.users").to_string(),
            tls: crate::tls::TlsSettings {
                keystore_location: self.text("ssl.keystore.location").to_string(),
                certificate_chain: self.text("ssl.keystore.certificate.chain").to_string(),
                key: self.text("ssl.keystore.key").to_string(),
                truststore_location: self.text("ssl.truststore.location").to_string(),
                client_auth: self.text("ssl.client.auth").to_string(),
                principal_mapping_rules: self.text("ssl.principal.mapping.rules").to_string(),
                reload_interval_ms: self.unsigned("ringfeed.ssl.reload.interval.ms"),
            },
            data_dir: PathBuf::from(self.text("log.dirs")),
            shards: Some(self.unsigned("ringfeed.shards") as usize).filter(|shards| *shards > 0),
            cpus: optional("ringfeed.cpus").map(|cpus| {
                cpus.split(',')
                    .map(|cpu| cpu.parse().expect("validated CPU list"))
                    .collect()
            }),
            spin_before_park_us: self.unsigned("ringfeed.spin.before.park.us"),
            auto_create_topics: self.boolean("auto.create.topics.enable"),
            default_partitions: self.integer("num.partitions") as i32,
            limits: self.limits(),
            admin_security: crate::admin::security::AdminSecuritySettings {
                tls: self.boolean("ringfeed.admin.ssl.enable"),
                client_auth: self.text("ringfeed.admin.ssl.client.auth").to_string(),
                token_file: self.text("ringfeed.admin.token.file").to_string(),
            },
            admin_listen: Some(self.text("ringfeed.admin.listen").to_string())
                .filter(|text| text != "off"),
            topic_defaults: self.topic_defaults(),
            cluster: self.cluster(),
            settings: Arc::new(self.clone()),
        }
    }

    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            node_id: self.integer("node.id") as i32,
            voters: QuorumVoters::parse(self.text("controller.quorum.voters"))
                .expect("validated by the same parser"),
            default_replication_factor: self.integer("default.replication.factor") as i16,
            replica_lag_time_max: Duration::from_millis(self.unsigned("replica.lag.time.max.ms")),
            preview: self.boolean("ringfeed.cluster.preview.enable"),
            session_timeout: Duration::from_millis(self.unsigned("broker.session.timeout.ms")),
            rack: Some(self.text("broker.rack").to_string()).filter(|rack| !rack.is_empty()),
            controlled_shutdown: self.boolean("controlled.shutdown.enable"),
            leader_balancing: crate::cluster_config::LeaderBalancing {
                enabled: self.boolean("auto.leader.rebalance.enable"),
                check_interval: Duration::from_secs(
                    self.unsigned("leader.imbalance.check.interval.seconds"),
                ),
                per_broker_percentage: u32::try_from(
                    self.unsigned("leader.imbalance.per.broker.percentage"),
                )
                .unwrap_or(100),
            },
        }
    }

    /// The effective configuration as a TOML file `serve --config` accepts, each line
    /// commented with the value's source.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# ringfeed effective configuration (precedence: flag > env > file > default).\n\
             # Each line ends with where its value came from. Use it with `ringfeed serve --config FILE`.\n",
        );
        for (group, title) in [
            (Group::Kafka, "Kafka settings (server.properties names)"),
            (Group::Ringfeed, "Ringfeed settings"),
        ] {
            let _ = write!(out, "\n# {title}\n");
            for entry in self
                .entries
                .iter()
                .filter(|entry| entry.setting.group() == group)
            {
                let value = if entry.setting.is_bare_toml(&entry.value) {
                    entry.value.clone()
                } else {
                    toml_string(&entry.value)
                };
                let _ = writeln!(
                    out,
                    "\"{}\" = {value}  # {}",
                    entry.setting.key,
                    toml_comment(&entry.source.to_string())
                );
            }
        }
        out
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn toml_comment(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The table row of `key`. A key missing from the table is a programmer error.
pub fn setting(key: &str) -> &'static Setting {
    let index = index_of(key).unwrap_or_else(|| panic!("no setting {key} in SETTINGS"));
    &SETTINGS[index]
}

fn index_of(key: &str) -> Option<usize> {
    SETTINGS.iter().position(|setting| setting.key == key)
}

fn unknown_key(key: &str, source: &Source) -> String {
    let mut message = format!("unknown setting {key:?} (from {source})");
    let hint = [key.replace('_', "."), format!("ringfeed.{key}")]
        .into_iter()
        .find(|candidate| index_of(candidate).is_some());
    if let Some(hint) = hint {
        let _ = write!(message, ": did you mean {hint:?}?");
    } else {
        message.push_str(": `ringfeed config print` lists every setting");
    }
    message
}

fn unknown_variable(name: &str) -> String {
    let nearest = SETTINGS
        .iter()
        .min_by_key(|setting| edit_distance(name, &setting.env_name()))
        .expect("the settings table is not empty");
    format!(
        "ignoring environment variable {name}: no setting has that name (nearest: {} for {}; \
         `ringfeed config print` lists every setting)",
        nearest.env_name(),
        nearest.key
    )
}

/// Levenshtein distance between two ASCII names (single-byte edits).
fn edit_distance(from: &str, to: &str) -> usize {
    let to = to.as_bytes();
    let mut previous: Vec<usize> = (0..=to.len()).collect();
    for (row, from_byte) in from.bytes().enumerate() {
        let mut current = vec![row + 1; to.len() + 1];
        for (column, to_byte) in to.iter().enumerate() {
            let substitution = previous[column] + usize::from(from_byte != *to_byte);
            current[column + 1] = substitution
                .min(previous[column + 1] + 1)
                .min(current[column] + 1);
        }
        previous = current;
    }
    previous[to.len()]
}

/// The file's settings as (dotted key, value text). Nested tables and dotted keys both give
/// dotted names: `[log.retention]\nms = 1`, `log.retention.ms = 1` and
/// `"log.retention.ms" = 1` are the same setting.
fn file_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| error.to_string())?;
    let mut values = Vec::new();
    flatten("", &table, &mut values)?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some((twice, _)) = values.iter().find(|(key, _)| !seen.insert(key.as_str())) {
        // `"log.retention.ms" = 1` and `log.retention.ms = 2` are different TOML keys.
        return Err(format!(
            "{twice} is set twice (once quoted, once as dotted keys or a table)"
        ));
    }
    Ok(values)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            other => out.push((key.clone(), value_text(&key, other)?)),
        }
    }
    Ok(())
}

fn value_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Integer(number) => Ok(number.to_string()),
                toml::Value::String(text) => Ok(text.clone()),
                _ => Err(format!(
                    "invalid {key} (from file): list items must be numbers or strings"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        _ => Err(format!(
            "invalid {key} (from file): expected a string, whole number or boolean, got {value}"
        )),
    }
}

/// Reads the config file named by `--config`, or else by `RINGFEED_CONFIG`.
pub fn read_config_file(flag: Option<&Path>) -> Result<Option<(PathBuf, String)>, String> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => match std::env::var_os(CONFIG_FILE_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => return Ok(None),
        },
    };
    std::fs::read_to_string(&path)
        .map(|text| Some((path.clone(), text)))
        .map_err(|error| format!("cannot read config file {}: {error}", path.display()))
}

/// Resolves an address the way the broker will, so `listeners` typos fail with the key named.
pub fn check_resolvable(effective: &Effective) -> Result<(), String> {
    let entry = effective.entry("listeners");
    let plans = crate::listeners::plan(
        &entry.value,
        &effective.entry("advertised.listeners").value,
        &effective.entry("listener.security.protocol.map").value,
    )
    .map_err(|error| format!("invalid listeners (from {}): {error}", entry.source))?;
    crate::sasl::parse_mechanisms(&effective.entry("sasl.enabled.mechanisms").value).map_err(
        |error| {
            format!(
                "invalid sasl.enabled.mechanisms (from {}): {error}",
                effective.entry("sasl.enabled.mechanisms").source
            )
        },
    )?;
    let mut addresses: Vec<(&str, String)> = plans
        .into_iter()
        .map(|plan| ("listeners", plan.bind))
        .collect();
    let admin = effective.entry("ringfeed.admin.listen");
    if admin.value != "off" {
        addresses.push(("ringfeed.admin.listen", admin.value.clone()));
    }
    for (key, address) in addresses {
        if address.to_socket_addrs().is_err() {
            return Err(format!(
                "invalid {key} (from {}): {address} does not resolve to an address",
                effective.entry(key).source
            ));
        }
    }
    Ok(())
}

/// The settings as a markdown table, for docs/CONFIGURATION.md (a test keeps the file in step).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| key | flag | environment | default | accepts | what |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for setting in SETTINGS {
        let mut flags = format!("`--{}`", setting.flag());
        for alias in setting
            .flag_aliases
            .iter()
            .chain(setting.false_switch.iter())
        {
            let _ = write!(flags, ", `--{alias}`");
        }
        let default = if setting.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", setting.default)
        };
        let _ = writeln!(
            out,
            "| `{}` | {flags} | `{}` | {default} | {} | {} |",
            setting.key,
            setting.env_name(),
            setting.accepted(),
            setting.doc
        );
    }
    out
}

pub mod cli;
mod kind;
mod table;
/// What the settings ask for (`Effective::serve_options`), before resolution: what
/// `server::serve` runs the broker with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `listeners` (canonical text: `HOST:PORT` or `NAME://HOST:PORT,...`).
    pub listen: String,
    pub advertised_listener: Option<String>,
    /// `listener.security.protocol.map`.
    pub protocol_map: String,
    /// `controller.listener.names`, as written.
    pub controller_listener_names: String,
    /// `sasl.enabled.mechanisms`, as written.
    pub sasl_mechanisms: String,
    /// `connections.max.reauth.ms` (0: SASL sessions do not expire).
    pub sasl_session_lifetime_ms: u64,
    /// `super.users`, as written.
    pub super_users: String,
    /// The `ssl.*` settings of the SSL and `SASL_SSL` listeners.
    pub tls: crate::tls::TlsSettings,
    pub data_dir: PathBuf,
    pub shards: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub spin_before_park_us: u64,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub limits: Limits,
    /// HOST:PORT of the HTTP admin listener (metrics, health, log level); None turns it off.
    pub admin_listen: Option<String>,
    /// TLS, client certificates and the token of the admin listener.
    pub admin_security: crate::admin::security::AdminSecuritySettings,
    /// The configuration of a topic that overrides nothing (the broker's `log.*` settings).
    pub topic_defaults: TopicConfig,
    /// `node.id` and the controller quorum (docs/REPLICATION.md).
    pub cluster: ClusterConfig,
    /// Every setting with its value and source, for `DescribeConfigs`.
    pub settings: Arc<Effective>,
}

#[cfg(test)]
mod tests;
