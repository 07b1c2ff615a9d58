//! Fuzz target: a host queue pair fed arbitrary controller bytes (see
//! `nvme_paths::fuzzing::host_rx`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nvme_paths::fuzzing::host_rx(data);
});
