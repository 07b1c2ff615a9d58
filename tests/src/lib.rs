//! # vmpath-tests: workspace-level integration tests
//!
//! The harness the tests in `tests/` (and the NVMe initiator benchmark) share:
//! * [`netns`]: network namespaces joined by veth pairs, link cuts and nftables drops;
//! * [`target`]: the project's NVMe/TCP target on its own thread, inside a namespace,
//!   killable and restartable on the same device;
//! * [`load`]: a verified read/write load on a multipath channel with per-I/O timing.
//!
//! The fault tests need root, `ip` and `nft` (installed by `ci/setup.sh`); without them they
//! say so and return.

#![allow(unsafe_code)] // Reason: setns(2) for namespaces and raw I/O buffers lent to the initiator.

pub mod load;
pub mod netns;
pub mod target;

/// Controller timers for failover runs (the fault test and the initiator benchmark):
/// sub-second detection (300 ms I/O timeout), 1 s KATO, so an in-doubt write is fenced
/// after KATO + 300 ms grace.
pub fn fast_failover_opts() -> nvme_paths::CtrlOptions {
    nvme_paths::CtrlOptions {
        keep_alive_timeout_ms: 1000,
        io_timeout_us: 300_000,
        admin_timeout_ms: 600,
        connect_timeout_ms: 300,
        reconnect_delay_ms: 150,
        ctrlr_loss_timeout_ms: -1,
        fast_io_fail_timeout_ms: -1,
        write_fence_grace_ms: 300,
        io_queue_depth: 64,
        hdgst: false,
        ddgst: false,
    }
}
