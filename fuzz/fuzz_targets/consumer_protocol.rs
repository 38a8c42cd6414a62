//! A classic member's embedded consumer protocol (`ringfeed_broker::fuzzing::consumer_protocol`):
//! subscription and assignment decoding, and a classic member moved into a consumer group.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::consumer_protocol(data);
});
