//! A peer's heartbeat, forwarded security change, election ask or transaction marker to a
//! registry mailbox (`ringfeed_broker::fuzzing::broker_heartbeat`): size, magic, checksum,
//! rkyv validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::broker_heartbeat(data);
});
