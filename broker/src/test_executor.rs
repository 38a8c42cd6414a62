//! The executor unit tests run their async bodies on: one glommio `LocalExecutor` with a
//! small DMA pool (1 MiB, within the 8 MiB memlock limit of development machines), joined
//! before the test returns so a panic inside fails the test.

use std::future::Future;

/// Runs `test` to completion on a fresh executor thread.
pub(crate) fn run<Fut: Future<Output = ()> + 'static>(test: impl FnOnce() -> Fut + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(test)
        .expect("executor")
        .join()
        .expect("test ran");
}
