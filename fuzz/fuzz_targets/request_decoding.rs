//! One connection's incoming bytes through framing, admission, header and body decode, and
//! the shard-independent checks (`ringfeed_broker::fuzzing::request_decoding`).
#![no_main]

use libfuzzer_sys::fuzz_target;

// The allocation guard comes with the library (`ringfeed_broker`'s `#[global_allocator]`):
// a hostile array count reserves address space, not memory, so it is a decode error here
// too instead of an allocation failure.

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::request_decoding(data);
});
