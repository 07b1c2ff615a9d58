//! # vmpath-bench: load generators and benchmarks for vmpath's data path
//!
//! Benchmarks are binaries (never timed tests), one per layer, sharing the pieces in this
//! library:
//!
//! * [`latency`]: per-I/O latency histograms (HdrHistogram, nanosecond resolution) reported as
//!   p50 / p99 / p99.9 in microseconds;
//! * [`report`]: the plain-text result table every benchmark prints;
//! * [`cpu`]: pinning the measuring thread to one core (`core_affinity`), as a reactor is;
//! * [`rng`]: a tiny, fast random generator for offsets;
//! * [`bdev_load`]: a closed-loop block I/O generator that runs as a poller on a
//!   [`vmpath_runtime::Reactor`] against any [`vmpath_bdev::BlockDevice`] (issue 2, item 7:
//!   "block layer on one pinned reactor, 4 KiB random read/write at QD 1, 32, 128").
//!
//! Binaries: `bdev_bench` (the block layer, null / malloc / uring backends). Protocol load
//! generators (NVMe/TCP initiator, vhost-user-blk driver) are added as further binaries that
//! reuse the same latency, report and pinning modules.
//!
//! Instructions per I/O are counted with valgrind's callgrind (`bench/callgrind.sh`): two runs
//! of `bdev_bench --iters N` with different `N`, and the difference of their instruction
//! totals divided by the difference of `N`, which cancels start-up costs.

#![allow(unsafe_code)] // Reason: I/O buffers are lent to devices as raw IoVecs (the bdev API's contract).

pub mod bdev_load;
pub mod cpu;
pub mod latency;
pub mod report;
pub mod rng;
