//! What the replication crate's integration tests share.

/// Runs `test` on a glommio executor of its own (1 MiB of io memory) and waits for it.
pub fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test task");
}
