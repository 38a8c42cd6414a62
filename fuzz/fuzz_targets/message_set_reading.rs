//! Message format v0/v1 sets (Produce v0-2 records, Fetch v0-3 answers): reading, bounded
//! decompression, up- and down-conversion on arbitrary bytes
//! (`ringfeed_broker::fuzzing::message_set_reading`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringfeed_broker::fuzzing::message_set_reading(data);
});
