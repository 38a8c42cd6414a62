//! The body of one shard's executor thread: join the meshes, start the shard's services
//! (`shard::ShardServices::start`: on shard 0 recover the controller and publish the
//! metadata, elsewhere wait for the first snapshot), listen and accept, and on shutdown stop
//! accepting, let connections finish, wait until every shard has drained (cross-shard
//! requests may still arrive until then), close every partition log, return.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use glommio::sync::Gate;

use crate::admission::ConnectionCounts;
use crate::config::BrokerConfig;
use crate::disk::BrokerDisk;
use crate::metrics::ScrapeRequest;
use crate::server::connection;
use crate::shard::{self, Meshes, ShardServices};
use crate::storage::Clock;

/// Everything one shard's thread is started with.
pub struct ShardStart {
    pub config: Arc<BrokerConfig>,
    pub meshes: Meshes,
    pub shutdown_requested: oneshot::Receiver<()>,
    /// Shards that have finished their connections; the barrier before logs close.
    pub drained_shards: Arc<AtomicUsize>,
    /// Shards done handing their partitions' leadership over (`leader_moves`).
    pub handed_over_shards: Arc<AtomicUsize>,
    /// Shared by every shard: open connections in total and per client address.
    pub connection_counts: Arc<ConnectionCounts>,
    /// Tells `main` this shard is listening.
    pub listening: std::sync::mpsc::Sender<usize>,
    /// The admin thread's requests for this shard's metrics snapshot.
    pub scrapes: futures::channel::mpsc::Receiver<ScrapeRequest>,
}

/// The body of one shard's executor. Returns when the shard has shut down cleanly.
pub async fn run(start: ShardStart) -> Result<(), String> {
    let ShardStart {
        config,
        meshes,
        shutdown_requested,
        drained_shards,
        handed_over_shards,
        connection_counts,
        listening,
        scrapes,
    } = start;
    let (router, incoming) = shard::join_meshes(meshes).await;
    let id = router.shard_id();
    // The real disk: a shard started on its own thread cannot be handed a `SimDisk` (a
    // single-thread handle, not `Send`); simulations build services on theirs.
    let services = ShardServices::build(
        config.clone(),
        BrokerDisk::default(),
        Clock::System,
        router,
        incoming,
    )
    .await?;
    glommio::spawn_local(shard::serve_scrapes(Rc::downgrade(&services), scrapes)).detach();
    forward_shutdown(&services, shutdown_requested, handed_over_shards);
    services.first_metadata().await;
    let connections = Rc::new(Gate::new());
    let mut accepting = Vec::with_capacity(config.listeners.len());
    for (index, bound) in config.listeners.iter().enumerate() {
        let listener = shard_listener(bound.address).map_err(|error| {
            format!(
                "shard {id}: cannot listen on {} ({}): {error}",
                bound.address, bound.name
            )
        })?;
        accepting.push(glommio::spawn_local(connection::accept_loop(
            services.clone(),
            connection_counts.clone(),
            connection::ListenerOnShard {
                index,
                protocol: bound.protocol,
                socket: listener,
            },
            connections.clone(),
        )));
    }
    let retention = glommio::spawn_local(shard::enforce_retention_periodically(services.clone()));
    let dormancy =
        glommio::spawn_local(shard::put_idle_logs_to_sleep_periodically(services.clone()));
    let cleaner =
        glommio::spawn_local(crate::compaction::clean_logs_periodically(services.clone()));
    let balancing = glommio::spawn_local(crate::leader_moves::balance_leaders_periodically(
        Rc::downgrade(&services),
    ));
    let elections = (id == 0).then(|| {
        glommio::spawn_local(crate::leader_moves::claim_asked_elections(Rc::downgrade(
            &services,
        )))
    });
    let tls_reload =
        (id == 0).then(|| glommio::spawn_local(crate::tls::reload::watch(services.clone())));
    let _ = listening.send(id);
    services.shutdown.started().await;
    drop(accepting);
    drop(retention);
    drop(dormancy);
    // Cancelled between awaits: a pass not yet committed leaves files the next open removes,
    // a committed one is finished by that open (`storage/FORMAT.md` § Log cleaner).
    drop(cleaner);
    drop(tls_reload);
    drop(balancing);
    drop(elections);
    let _ = connections.close().await;
    drained_shards.fetch_add(1, Ordering::SeqCst);
    while drained_shards.load(Ordering::SeqCst) < config.shard_count() {
        // Shutdown only: peers may still send partition calls until they have drained.
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard::close_partitions(&services).await;
    Ok(())
}

/// The signal thread completes `shutdown_requested`: hand leadership over while still
/// serving (`leader_moves::controlled_shutdown`, bounded), then turn it into the local
/// broadcast.
fn forward_shutdown(
    services: &Rc<ShardServices>,
    shutdown_requested: oneshot::Receiver<()>,
    handed_over_shards: Arc<AtomicUsize>,
) {
    let shutdown = services.shutdown.clone();
    let services = Rc::downgrade(services);
    glommio::spawn_local(async move {
        let _ = shutdown_requested.await;
        if let Some(services) = services.upgrade() {
            crate::leader_moves::controlled_shutdown(&services, &handed_over_shards).await;
        }
        shutdown.start();
    })
    .detach();
}

/// One shard's Kafka listener: glommio's `TcpListener::bind` (`SO_REUSEPORT`, so every shard
/// listens on the same port) plus `SO_REUSEADDR`. Accepted connections inherit the flag, so
/// what they leave in `TIME_WAIT` after a restart (even after SIGKILL) does not make
/// `preflight::claim_port` report the port as taken. Call it on the shard's executor.
fn shard_listener(address: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::IntoRawFd;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership moves to the
    // glommio listener (into_raw_fd gives it up here).
    Ok(unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd())
    })
}
