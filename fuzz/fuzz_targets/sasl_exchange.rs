//! A client's SASL tokens through PLAIN or SCRAM's server side
//! (`ringfeed_broker::fuzzing::sasl_exchange`): message parsing, nonce and proof checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::sasl_exchange(data);
});
