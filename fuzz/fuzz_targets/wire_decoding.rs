//! Broker-to-broker frames (`replication/WIRE.md`) decoded from arbitrary bytes; a frame that
//! decodes must re-encode to the same bytes and decode to the same value
//! (`ringfeed_replication::fuzzing::wire_decoding`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringfeed_replication::fuzzing::wire_decoding(data));
