//! `ssl.principal.mapping.rules` parsing and mapping (`ringfeed_broker::fuzzing::principal_mapping`):
//! rule splitting, pattern compilation, Java-style replacements.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::principal_mapping(data);
});
