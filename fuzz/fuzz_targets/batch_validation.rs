//! Kafka v2 record-batch validation, intactness and record walking on arbitrary bytes
//! (`ringfeed_storage::fuzzing::batch_validation`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringfeed_storage::fuzzing::batch_validation(data));
