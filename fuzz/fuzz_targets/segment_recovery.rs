//! Recovery of a partition directory whose files hold fuzzer-chosen bytes, on a `SimDisk`,
//! then a full read and a second recovery (`ringfeed_storage::fuzzing::segment_recovery`).
#![no_main]

use libfuzzer_sys::fuzz_target;

thread_local! {
    /// One executor for the whole run: building one per input would dominate the time.
    /// 1 MiB of io memory, as everywhere on this machine (RLIMIT_MEMLOCK is 8 MiB).
    static EXECUTOR: glommio::LocalExecutor = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .expect("a glommio executor");
}

fuzz_target!(|data: &[u8]| {
    EXECUTOR.with(|executor| {
        executor.run(ringfeed_storage::fuzzing::segment_recovery(data));
    });
});
