//! One connection's incoming bytes through framing, admission, header and body decode, and
//! the shard-independent checks (`ringfeed_broker::fuzzing::request_decoding`).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// As in the broker binary: a hostile array count reserves address space, not memory, so
/// it is a decode error here too instead of an allocation failure.
#[global_allocator]
static ALLOCATOR: ringfeed_broker::alloc_guard::LazyHugeAllocator =
    ringfeed_broker::alloc_guard::LazyHugeAllocator;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::request_decoding(data);
});
