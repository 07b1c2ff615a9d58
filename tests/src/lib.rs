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
