//! Process start-up and shutdown: resolve the configuration, reserve the listen port,
//! start one pinned executor per shard, route SIGINT/SIGTERM to every shard, and wait for
//! all of them to finish.

pub mod connection;
mod sasl_session;
mod shard_thread;
mod vectored_write;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement};

use crate::admin::{AdminListener, AdminStatus};
use crate::admission::ConnectionCounts;
use crate::config::{BoundListener, BrokerConfig, SaslConfig};
use crate::limits::Limits;
use crate::listeners;
use crate::metrics::ScrapeRequest;
use crate::preflight;
use crate::shard::Meshes;
use crate::topic_config::TopicConfig;
use shard_thread::ShardStart;

/// Memory glommio registers with `io_uring` per shard. Small on purpose: the default needs
/// more locked memory than `RLIMIT_MEMLOCK` allows on ordinary hosts (8 MiB here), and the
/// broker's buffers do not come from this pool.
const SHARD_IO_MEMORY_BYTES: usize = 1 << 20;

pub use crate::settings::ServeOptions;

/// Runs the broker until a signal stops it. Returns once every shard has closed its logs.
pub fn serve(options: &ServeOptions) -> Result<(), String> {
    options.limits.validate()?;
    options.cluster.validate()?;
    if let Some(warning) = preflight::check_data_dir_writable(&options.data_dir)? {
        tracing::warn!("{warning}");
    }
    // glommio opens directories by absolute path only (a relative one fails with EBADF), and
    // the default data dir is relative.
    let data_dir = std::path::absolute(&options.data_dir).map_err(|error| {
        format!(
            "cannot resolve data dir {}: {error}",
            options.data_dir.display()
        )
    })?;
    let _data_dir_lock = lock_data_dir(&data_dir)?;
    let plans = listeners::plan(
        &options.listen,
        options.advertised_listener.as_deref().unwrap_or(""),
        &options.protocol_map,
    )?;
    let sasl = sasl_config(&plans, options, &data_dir)?;
    let principal_mapper = Arc::new(
        crate::tls::PrincipalMapper::parse(&options.tls.principal_mapping_rules)
            .map_err(|error| format!("invalid ssl.principal.mapping.rules: {error}"))?,
    );
    // One TLS configuration for every TLS listener, built before any port is taken so a bad
    // keystore stops the start with the setting named.
    let tls = plans
        .iter()
        .any(|plan| plan.protocol.uses_tls())
        .then(|| crate::tls::server_config(&options.tls))
        .transpose()?;
    let peer_tls = peer_tls(options, &plans, &principal_mapper)?;
    let admin_security =
        crate::admin::security::AdminSecurity::new(&options.admin_security, &options.tls)?;
    let mut claims = preflight::PortClaims::default();
    let requested = plans
        .iter()
        .map(|plan| preflight::claim_port(resolve_address(&plan.bind)?, "listeners", &mut claims))
        .collect::<Result<Vec<_>, String>>()?;
    let admin_listen = options
        .admin_listen
        .as_deref()
        .map(|listen| {
            preflight::claim_port(
                resolve_address(listen)?,
                "ringfeed.admin.listen",
                &mut claims,
            )
        })
        .transpose()?;
    if let Some(internal) = crate::cluster::cluster_addresses(&options.cluster)? {
        preflight::claim_internal_port(internal.listen)?;
    }
    drop(claims);
    let shard_cpus = shard_cpus(options)?;
    preflight::check_io_uring()?;
    if let Some(warning) = preflight::check_memlock(shard_cpus.len())? {
        tracing::warn!("{warning}");
    }
    let (bound, reservations) = reserve_listeners(plans, requested, tls.as_ref())?;
    let first = bound[0].clone();
    let config = Arc::new(BrokerConfig {
        listen: first.address,
        advertised_host: first.advertised_host,
        advertised_port: first.advertised_port,
        listeners: bound,
        sasl,
        super_users: crate::config::parse_super_users(&options.super_users),
        peer_tls,
        data_dir,
        shard_cpus,
        spin_before_park: (options.spin_before_park_us > 0)
            .then(|| Duration::from_micros(options.spin_before_park_us)),
        auto_create_topics: options.auto_create_topics,
        default_partitions: options.default_partitions,
        limits: limits_within_descriptors(&options.limits),
        admin_listen,
        topic_defaults: options.topic_defaults.clone(),
        settings: options.settings.clone(),
        cluster: options.cluster.clone(),
        tls: crate::tls::TlsConfig {
            settings: options.tls.clone(),
            principal_mapper,
        },
    });
    let admin_status = Arc::new(AdminStatus::default());
    let (scrape_senders, scrape_receivers) = (0..config.shard_count())
        .map(|_| futures::channel::mpsc::channel(0))
        .unzip();
    start_admin(&config, &admin_status, scrape_senders, admin_security)?;
    let StartedShards {
        handles,
        shutdown_senders,
        events,
    } = start_shards(&config, scrape_receivers)?;
    install_signal_handler(shutdown_senders, admin_status.clone())?;
    serve_until_the_shards_end(&config, handles, &events, reservations, &admin_status)
}

/// Once every shard listens: the broker is ready, until a shutdown ends every shard or a
/// panic ends one.
fn serve_until_the_shards_end(
    config: &BrokerConfig,
    handles: ShardHandles,
    events: &Receiver<shard_thread::ShardEvent>,
    reservations: Vec<socket2::Socket>,
    admin_status: &AdminStatus,
) -> Result<(), String> {
    if let Err((shard_index, error)) = wait_until_every_shard_listens(events, config.shard_count())
    {
        return Err(error.unwrap_or_else(|| {
            thread_failure(shard_index, handles, "stopped while the broker started")
        }));
    }
    drop(reservations);
    admin_status.set_ready(true);
    log_start_up(config);
    if let Some(shard_index) = wait_for_the_first_end(events) {
        // Fail-stop: the shard's partitions would never answer again, and its calls from
        // other shards would wait forever; exiting lets a supervisor restart the broker,
        // whose recovery treats this as a crash.
        return Err(thread_failure(shard_index, handles, "panicked"));
    }
    join_shards(handles)
}

/// A shard reports listening after it has applied the first metadata, which opens every
/// partition it owns: all of them listening means the broker can serve every partition. A
/// shard that stopped before it listened reports it (its index, and its error when it
/// returned one); the others may be waiting for it (for shard 0's metadata, say), so the
/// broker stops then.
fn wait_until_every_shard_listens(
    events: &Receiver<shard_thread::ShardEvent>,
    shard_count: usize,
) -> Result<(), (usize, Option<String>)> {
    use shard_thread::ShardEvent;
    let mut listening = 0;
    while listening < shard_count {
        match events.recv() {
            Ok(ShardEvent::Listening(_shard)) => listening += 1,
            Ok(ShardEvent::StoppedBeforeListening { shard_index, error }) => {
                return Err((shard_index, error))
            }
            // A listening shard ends before the others listen only by a panic: a shutdown
            // holds it until every shard has drained.
            Ok(ShardEvent::Ended { shard_index, .. }) => return Err((shard_index, None)),
            // Every reporter reports before it goes, so this is never reached.
            Err(std::sync::mpsc::RecvError) => return Err((0, None)),
        }
    }
    Ok(())
}

/// Waits until a shard's body ends, which a shutdown does for every shard; returns the
/// shard's index if a panic ended it.
fn wait_for_the_first_end(events: &Receiver<shard_thread::ShardEvent>) -> Option<usize> {
    loop {
        match events.recv() {
            Ok(shard_thread::ShardEvent::Ended {
                shard_index,
                panicked,
            }) => return panicked.then_some(shard_index),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvError) => return None,
        }
    }
}

/// Why a shard's thread ended, from its result. The thread has ended or is unwinding, so
/// the join returns at once; the other shards are left as they are, since the process is
/// about to exit.
fn thread_failure(shard_index: usize, mut handles: ShardHandles, what: &str) -> String {
    if shard_index >= handles.len() {
        return format!("a shard {what}");
    }
    match handles.swap_remove(shard_index).join() {
        Ok(Err(error)) => error,
        Ok(Ok(())) => format!("shard {shard_index} {what}"),
        Err(error) => format!("shard {shard_index} {what}: {error}"),
    }
}

/// The SASL mechanisms and credentials, when a listener uses SASL.
fn sasl_config(
    plans: &[listeners::ListenerPlan],
    options: &ServeOptions,
    data_dir: &std::path::Path,
) -> Result<SaslConfig, String> {
    if !plans.iter().any(|plan| plan.protocol.uses_sasl()) {
        return Ok(SaslConfig::default());
    }
    let mechanisms = crate::sasl::parse_mechanisms(&options.sasl_mechanisms)?;
    if mechanisms.is_empty() {
        return Err("a SASL listener needs sasl.enabled.mechanisms".into());
    }
    let credentials = crate::sasl::Credentials::load(data_dir)?;
    if credentials.is_empty() {
        tracing::warn!(
            "SASL listener without credentials: create users with `ringfeed user create NAME --data-dir DIR` before starting"
        );
    }
    Ok(SaslConfig {
        mechanisms,
        credentials: Arc::new(credentials),
        session_lifetime: (options.sasl_session_lifetime_ms > 0)
            .then(|| Duration::from_millis(options.sasl_session_lifetime_ms)),
    })
}

/// Holds each claimed port (port 0 already resolved) in the shards' `SO_REUSEPORT` group
/// until every shard listens on it, so nothing else can take it in between; returns the
/// listeners as bound and the reservations to drop once the shards listen.
/// Mutual TLS for the broker-to-broker port, when this broker has peers and
/// `controller.listener.names` maps to `SSL`; built before any port is taken, so a bad
/// keystore or an empty `super.users` stops the start with the setting named.
fn peer_tls(
    options: &ServeOptions,
    plans: &[listeners::ListenerPlan],
    principal_mapper: &Arc<crate::tls::PrincipalMapper>,
) -> Result<Option<Arc<crate::cluster::peer_tls::PeerTls>>, String> {
    let protocol = listeners::internal_protocol(
        &options.controller_listener_names,
        &options.protocol_map,
        plans,
    )?;
    if protocol != listeners::SecurityProtocol::Ssl || options.cluster.voters.len() <= 1 {
        return Ok(None);
    }
    let tls = crate::cluster::peer_tls::PeerTls::new(
        &options.tls,
        principal_mapper.clone(),
        &crate::config::parse_super_users(&options.super_users),
    )?;
    Ok(Some(Arc::new(tls)))
}

fn reserve_listeners(
    plans: Vec<listeners::ListenerPlan>,
    requested: Vec<SocketAddr>,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<(Vec<BoundListener>, Vec<socket2::Socket>), String> {
    let mut reservations = Vec::with_capacity(plans.len());
    let mut bound = Vec::with_capacity(plans.len());
    for (plan, requested) in plans.into_iter().zip(requested) {
        let reservation = reserve_port(requested)?;
        let address = reservation
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .ok_or("cannot read the reserved address")?;
        let (advertised_host, advertised_port) = advertised(plan.advertised, address)?;
        bound.push(BoundListener {
            name: plan.name,
            protocol: plan.protocol,
            address,
            advertised_host,
            advertised_port,
            tls: tls.filter(|_| plan.protocol.uses_tls()).cloned(),
        });
        reservations.push(reservation);
    }
    Ok((bound, reservations))
}

/// The one start-up line: what runs where, and what an ack promises. Its prefix
/// ("ringfeed listening on HOST:PORT ") is what scripts and the client tests wait for.
fn log_start_up(config: &BrokerConfig) {
    let admin = config
        .admin_listen
        .map_or_else(|| "off".to_string(), |address| address.to_string());
    for listener in &config.listeners {
        // One line per listener, so scripts and tests started with port 0 find each port.
        tracing::info!(
            "listener {} ({}) on {} advertised {}:{}",
            listener.name,
            listener.protocol,
            listener.address,
            listener.advertised_host,
            listener.advertised_port
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = config.shard_count(),
        cpus = ?config.shard_cpus,
        data_dir = %config.data_dir.display(),
        kafka_listener = %config.listen,
        admin_listener = %admin,
        durability = %durability_policy(&config.topic_defaults),
        "ringfeed listening on {} (advertised {}:{}), {} shards on cpus {:?}, data dir {}",
        config.listen,
        config.advertised_host,
        config.advertised_port,
        config.shard_count(),
        config.shard_cpus,
        config.data_dir.display()
    );
}

/// What each acks level promises under the default topic flush policy, in words.
pub fn durability_policy(topic_defaults: &TopicConfig) -> String {
    let unsynced = match topic_defaults.flush_policy.as_str() {
        "always" => "after every write".to_string(),
        "interval" => format!("at most {} ms after it is written", topic_defaults.flush_ms),
        _ => {
            "only when an acks=all producer waits (a power cut may lose acks=0/1 data)".to_string()
        }
    };
    format!(
        "acks=all is answered after fdatasync (one fdatasync covers every batch before it); \
         acks=1 once the batch is written to the file (survives a broker crash, not a power \
         cut); acks=0 gets no answer. Default flush policy {} (topics: ringfeed.flush.policy): \
         other data is fdatasync'd {unsynced}",
        topic_defaults.flush_policy
    )
}

/// Starts the admin listener (when configured) before the shards, so `/health` answers and
/// `/ready` says 503 while partitions are still being recovered.
fn start_admin(
    config: &BrokerConfig,
    status: &Arc<AdminStatus>,
    scrapes: Vec<futures::channel::mpsc::Sender<ScrapeRequest>>,
    security: crate::admin::security::AdminSecurity,
) -> Result<(), String> {
    let Some(address) = config.admin_listen else {
        tracing::info!("admin listener off");
        return Ok(());
    };
    let admin = AdminListener::bind(
        address,
        status.clone(),
        scrapes,
        config.limits.clone(),
        security,
    )?;
    // Its own line, so tests started with `--admin-listen 127.0.0.1:0` can read the port.
    tracing::info!("admin listening on {}", admin.local_addr()?);
    admin.spawn()
}

/// Descriptors kept for everything but client connections: segment and index files of
/// open partitions, listeners, the admin server, `io_uring`, the mesh's eventfds.
const DESCRIPTORS_RESERVED: u64 = 1024;
/// Descriptors per client connection: the socket and its duplicate for the writer task.
const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Raises the soft `RLIMIT_NOFILE` to the hard one (as Kafka's packaging does with
/// `LimitNOFILE`; the usual soft default of 1024 allows a few hundred connections), then
/// lowers `max.connections` to what the descriptors allow, so the limit the broker enforces
/// is one it can keep: past it, accepts would fail with EMFILE and leave clients hanging in
/// the listen backlog instead of being refused.
fn limits_within_descriptors(limits: &Limits) -> Limits {
    let mut limits = limits.clone();
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut nofile) } != 0 {
        return limits;
    }
    if nofile.rlim_cur < nofile.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: nofile.rlim_max,
            rlim_max: nofile.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            nofile.rlim_cur = nofile.rlim_max;
        }
    }
    let connections_allowed = usize::try_from(
        nofile.rlim_cur.saturating_sub(DESCRIPTORS_RESERVED) / DESCRIPTORS_PER_CONNECTION,
    )
    .unwrap_or(usize::MAX)
    .max(1);
    if limits.connections_max > connections_allowed {
        // Info, not a warning: with the default limit this is the usual case.
        tracing::info!(
            max_connections = limits.connections_max,
            lowered_to = connections_allowed,
            nofile = nofile.rlim_cur,
            "max.connections lowered to what RLIMIT_NOFILE allows (raise it with ulimit -n or LimitNOFILE)"
        );
        limits.connections_max = connections_allowed;
    }
    limits
}

/// Name of the lock file in the data directory (Kafka's log dirs have the same).
const DATA_DIR_LOCK_FILE: &str = ".lock";

/// Takes an exclusive advisory lock on the data directory for the life of the process, so
/// a second broker pointed at the same directory stops at start-up instead of corrupting
/// the logs of the first. The lock goes with the process, even on SIGKILL.
pub(crate) fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join(DATA_DIR_LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "data dir {} is in use by another ringfeed process ({})",
            data_dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

type ShardHandles = Vec<glommio::ExecutorJoinHandle<Result<(), String>>>;

/// The running shards, as `serve` drives them.
struct StartedShards {
    handles: ShardHandles,
    /// One trigger per shard; the signal thread fires them all.
    shutdown_senders: Vec<oneshot::Sender<()>>,
    /// Each shard's start (its id once it listens, or why it stopped before) and end.
    events: Receiver<shard_thread::ShardEvent>,
}

/// Starts one pinned executor per shard.
fn start_shards(
    config: &Arc<BrokerConfig>,
    scrapes: Vec<futures::channel::mpsc::Receiver<ScrapeRequest>>,
) -> Result<StartedShards, String> {
    let meshes = Meshes::new(config.shard_count(), config.limits.mesh_channel_slots);
    let drained_shards = Arc::new(AtomicUsize::new(0));
    let handed_over_shards = Arc::new(AtomicUsize::new(0));
    let connection_counts = ConnectionCounts::new(
        config.limits.connections_max,
        config.limits.connections_per_ip_max,
    );
    let (event_sender, events) = std::sync::mpsc::channel();
    let mut shutdown_senders = Vec::new();
    let mut handles = Vec::new();
    for ((index, cpu), scrapes) in config.shard_cpus.iter().copied().enumerate().zip(scrapes) {
        let (shutdown_sender, shutdown_requested) = oneshot::channel();
        shutdown_senders.push(shutdown_sender);
        let start = ShardStart {
            config: config.clone(),
            meshes: meshes.clone(),
            shutdown_requested,
            drained_shards: drained_shards.clone(),
            handed_over_shards: handed_over_shards.clone(),
            connection_counts: connection_counts.clone(),
            reporter: shard_thread::ShardReporter::new(index, event_sender.clone()),
            scrapes,
        };
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("ringfeed-shard-{index}"))
            .io_memory(SHARD_IO_MEMORY_BYTES);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder
            .spawn(move || shard_thread::run(start))
            .map_err(|error| format!("cannot start shard {index} on cpu {cpu}: {error}"))?;
        handles.push(handle);
    }
    Ok(StartedShards {
        handles,
        shutdown_senders,
        events,
    })
}

fn join_shards(
    handles: Vec<glommio::ExecutorJoinHandle<Result<(), String>>>,
) -> Result<(), String> {
    let mut failures = Vec::new();
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failures.push(error),
            Err(error) => failures.push(format!("shard {index} failed: {error}")),
        }
        if !failures.is_empty() {
            // The other shards wait for this one's metadata or drain; do not wait for them.
            return Err(failures.join("; "));
        }
    }
    tracing::info!("ringfeed stopped cleanly");
    Ok(())
}

fn resolve_address(listen: &str) -> Result<SocketAddr, String> {
    listen
        .to_socket_addrs()
        .map_err(|error| format!("bad address {listen}: {error}"))?
        .next()
        .ok_or_else(|| format!("{listen} resolves to nothing"))
}

fn reserve_port(address: SocketAddr) -> Result<socket2::Socket, String> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|error| error.to_string())?;
    socket
        .set_reuse_port(true)
        .map_err(|error| error.to_string())?;
    socket
        .set_reuse_address(true)
        .map_err(|error| error.to_string())?;
    socket
        .bind(&address.into())
        .map_err(|error| format!("cannot bind {address}: {error}"))?;
    Ok(socket)
}

/// Where clients on one listener are told to connect. Without an `advertised.listeners`
/// entry it is the listen address, except that a wildcard (0.0.0.0 / ::) is no address a
/// client can dial: then the host name is advertised, as Kafka does.
fn advertised(
    advertised: Option<(String, u16)>,
    listen: SocketAddr,
) -> Result<(String, i32), String> {
    if let Some((host, port)) = advertised {
        return Ok((host, i32::from(port)));
    }
    let host = if listen.ip().is_unspecified() {
        host_name()?
    } else {
        listen.ip().to_string()
    };
    Ok((host, i32::from(listen.port())))
}

fn host_name() -> Result<String, String> {
    let mut buffer = [0_u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on
    // success (the last byte stays 0 either way).
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len() - 1) };
    if result != 0 {
        return Err(format!(
            "listening on a wildcard address needs advertised.listeners (--advertised-listeners) (gethostname failed: {})",
            std::io::Error::last_os_error()
        ));
    }
    let length = buffer
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(buffer.len());
    String::from_utf8(buffer[..length].to_vec())
        .map_err(|_| "the host name is not UTF-8".to_string())
}

fn shard_cpus(options: &ServeOptions) -> Result<Vec<usize>, String> {
    let mut online: Vec<usize> = glommio::CpuSet::online()
        .map_err(|error| error.to_string())?
        .iter()
        .map(|location| location.cpu)
        .collect();
    online.sort_unstable();
    let cpus = match (&options.cpus, options.shards) {
        (Some(cpus), _) => cpus.clone(),
        (None, Some(shards)) => (0..shards)
            .map(|index| online[index % online.len()])
            .collect(),
        (None, None) => online.clone(),
    };
    if cpus.is_empty() {
        return Err("at least one shard is needed".into());
    }
    if let Some(missing) = cpus.iter().find(|cpu| !online.contains(cpu)) {
        return Err(format!("cpu {missing} is not online (online: {online:?})"));
    }
    Ok(cpus)
}

/// First SIGINT/SIGTERM: graceful shutdown on every shard (and `/ready` turns 503). A
/// second one: exit at once.
fn install_signal_handler(
    shutdown_senders: Vec<oneshot::Sender<()>>,
    admin_status: Arc<AdminStatus>,
) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|error| error.to_string())?;
    std::thread::Builder::new()
        .name("ringfeed-signals".into())
        .spawn(move || {
            let mut senders = Some(shutdown_senders);
            for signal in signals.forever() {
                if let Some(senders) = senders.take() {
                    admin_status.set_ready(false);
                    tracing::info!(
                        signal,
                        "shutting down: finishing in-flight requests, closing partition logs"
                    );
                    for sender in senders {
                        let _ = sender.send(());
                    }
                } else {
                    tracing::warn!(signal, "second signal: exiting without a clean shutdown");
                    std::process::exit(130);
                }
            }
        })
        .map_err(|error| error.to_string())?;
    Ok(())
}
