//! Fuzzes the descriptor-chain walker and the virtio-blk request parser with arbitrary guest
//! memory images: `cargo +nightly fuzz run chain` from `vhost/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vhost::fuzzing::chain_and_request(data);
});
