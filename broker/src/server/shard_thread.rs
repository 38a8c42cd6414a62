//! The body of one shard's executor thread: join the meshes, start the shard's services
//! (`shard::ShardServices::start`: on shard 0 recover the controller and publish the
//! metadata, elsewhere wait for the first snapshot), listen and accept, and on shutdown stop
//! accepting, let connections finish, wait until every shard has drained (cross-shard
//! requests may still arrive until then), close every partition log, return.

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

/// What a shard's thread tells `serve`, in order: [`ShardEvent::Listening`] or
/// [`ShardEvent::StoppedBeforeListening`], then (after listening) [`ShardEvent::Ended`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// The shard applied the first metadata and listens; its id.
    Listening(usize),
    /// The shard stopped before it listened. `error` is what it returned; `None` when it
    /// went without a word (a panic, or glommio failing to build its executor): its
    /// thread's result says more.
    StoppedBeforeListening {
        shard_index: usize,
        error: Option<String>,
    },
    /// The shard's body finished after listening: after a shutdown, or by a panic.
    Ended { shard_index: usize, panicked: bool },
}

/// Reports one shard's life to `serve` ([`ShardEvent`]) from the shard's thread, made
/// before the thread so that whatever ends the thread ends the reporter too: dropped
/// before it reported listening (an error returned early, a panic unwinding the executor,
/// or the executor never built, which drops the shard's future unrun) it reports a failed
/// start; dropped after, it reports the end and whether a panic caused it. `serve` waits
/// for every shard's start and then for the first end, so a shard gone never leaves the
/// broker waiting (once it did, silently, for a shard that failed to start), nor running
/// on with a shard dead (its partitions' calls would never be answered).
pub struct ShardReporter {
    shard_index: usize,
    listened: bool,
    /// Taken by the last report.
    sender: Option<std::sync::mpsc::Sender<ShardEvent>>,
}

impl ShardReporter {
    pub fn new(shard_index: usize, sender: std::sync::mpsc::Sender<ShardEvent>) -> Self {
        Self {
            shard_index,
            listened: false,
            sender: Some(sender),
        }
    }

    fn listening(&mut self, shard: usize) {
        assert!(!self.listened, "a shard listens once");
        self.listened = true;
        if let Some(sender) = &self.sender {
            let _ = sender.send(ShardEvent::Listening(shard));
        }
    }

    /// Reports a failed start with `error` and hands the error back, for early returns.
    fn failed(mut self, error: String) -> String {
        assert!(!self.listened, "a start failure comes before listening");
        // Reported here with its reason; the drop then has no sender left to report with.
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(ShardEvent::StoppedBeforeListening {
                shard_index: self.shard_index,
                error: Some(error.clone()),
            });
        }
        error
    }
}

impl Drop for ShardReporter {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let shard_index = self.shard_index;
        let event = if self.listened {
            ShardEvent::Ended {
                shard_index,
                panicked: std::thread::panicking(),
            }
        } else {
            ShardEvent::StoppedBeforeListening {
                shard_index,
                error: None,
            }
        };
        let _ = sender.send(event);
    }
}

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
    /// Tells `serve` this shard is listening, or why it stopped before, and when it ends.
    pub reporter: ShardReporter,
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
        reporter: mut report,
        scrapes,
    } = start;
    let (router, incoming) = shard::join_meshes(meshes).await;
    let id = router.shard_id();
    // The real disk: a shard started on its own thread cannot be handed a `SimDisk` (a
    // single-thread handle, not `Send`); simulations build services on theirs.
    let services = match ShardServices::build(
        config.clone(),
        BrokerDisk::default(),
        Clock::System,
        router,
        incoming,
    )
    .await
    {
        Ok(services) => services,
        Err(error) => return Err(report.failed(error)),
    };
    glommio::spawn_local(shard::serve_scrapes(Rc::downgrade(&services), scrapes)).detach();
    forward_shutdown(&services, shutdown_requested, handed_over_shards);
    services.first_metadata().await;
    let connections = Rc::new(Gate::new());
    let mut accepting = Vec::with_capacity(config.listeners.len());
    for (index, bound) in config.listeners.iter().enumerate() {
        let listener = match crate::sockets::reusable_listener(bound.address) {
            Ok(listener) => listener,
            Err(error) => {
                return Err(report.failed(format!(
                    "shard {id}: cannot listen on {} ({}): {error}",
                    bound.address, bound.name
                )))
            }
        };
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
    report.listening(id);
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

#[cfg(test)]
mod tests {
    use super::{ShardEvent, ShardReporter};

    fn reporter() -> (ShardReporter, std::sync::mpsc::Receiver<ShardEvent>) {
        let (sender, receiver) = std::sync::mpsc::channel();
        (ShardReporter::new(1, sender), receiver)
    }

    fn events(receiver: &std::sync::mpsc::Receiver<ShardEvent>) -> Vec<ShardEvent> {
        receiver.try_iter().collect()
    }

    const UNEXPLAINED: ShardEvent = ShardEvent::StoppedBeforeListening {
        shard_index: 1,
        error: None,
    };

    #[test]
    fn a_shard_reports_its_start_then_its_end() {
        let (mut listening, receiver) = reporter();
        listening.listening(3);
        assert_eq!(events(&receiver), vec![ShardEvent::Listening(3)]);
        drop(listening);
        let ended = ShardEvent::Ended {
            shard_index: 1,
            panicked: false,
        };
        assert_eq!(events(&receiver), vec![ended]);

        let (failing, receiver) = reporter();
        assert_eq!(failing.failed("no metadata".into()), "no metadata");
        let failure = ShardEvent::StoppedBeforeListening {
            shard_index: 1,
            error: Some("no metadata".into()),
        };
        assert_eq!(events(&receiver), vec![failure]);

        let (vanishing, receiver) = reporter();
        drop(vanishing);
        assert_eq!(events(&receiver), vec![UNEXPLAINED]);
    }

    /// Holds a reporter in a future on a glommio executor, as a shard does, across an await
    /// (so it lives in the task, not on a stack frame), then panics; returns what the
    /// reporter sent once the executor's thread is gone.
    fn panic_on_an_executor(listen_first: bool) -> Vec<ShardEvent> {
        let (reporter, receiver) = reporter();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let mut reporter = reporter;
                if listen_first {
                    reporter.listening(0);
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                panic!("shard failed");
            })
            .unwrap();
        assert!(executor.join().is_err(), "the shard panicked");
        events(&receiver)
    }

    /// A panic in a shard's future unwinds its executor, which drops the future and with it
    /// the reporter, which then reports: before listening, a failed start; after, an end by
    /// a panic.
    #[test]
    fn a_panicking_shard_still_reports() {
        assert_eq!(panic_on_an_executor(false), vec![UNEXPLAINED]);
        let ended = ShardEvent::Ended {
            shard_index: 1,
            panicked: true,
        };
        assert_eq!(
            panic_on_an_executor(true),
            vec![ShardEvent::Listening(0), ended]
        );
    }
}
