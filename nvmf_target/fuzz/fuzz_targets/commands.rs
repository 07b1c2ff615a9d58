//! Fuzz target: the NVMe/TCP target's command handler (PDU intake, fabrics, admin and I/O
//! commands, R2T / H2CData bookkeeping, responses) on arbitrary byte streams, with digests,
//! pre-connection and read split taken from the first two bytes (see
//! `nvmf_target::fuzzing::command_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    nvmf_target::fuzzing::command_stream(data);
});
