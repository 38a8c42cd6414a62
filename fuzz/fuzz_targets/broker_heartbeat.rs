//! A peer's heartbeat or forwarded security change to a registry mailbox
//! (`ringfeed_broker::fuzzing::broker_heartbeat`): size, magic, checksum, rkyv validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::broker_heartbeat(data);
});
