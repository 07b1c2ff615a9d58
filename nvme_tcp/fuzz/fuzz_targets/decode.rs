//! Fuzz target: the NVMe/TCP PDU decoder on arbitrary byte streams, with the
//! decoder configuration and read split taken from the first two bytes (see
//! `nvme_tcp::fuzzing::decode_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nvme_tcp::fuzzing::decode_stream(data);
});
