//! # vmpath-runtime: pinned poll-mode reactors
//!
//! vmpath runs its data path on *reactors*: one OS thread per configured core, pinned to that
//! core, each owning its queue pairs, connections and block-device channels outright. This is
//! SPDK's `spdk_thread` model (`lib/thread/thread.c`, `doc/concurrency.md`) in Rust:
//!
//! * [`Reactor`] is a pure state machine. One call, [`Reactor::poll`]`(now)`, runs
//!   1. up to [`MAX_MSGS_PER_POLL`] messages from the reactor's bounded lock-free inbox,
//!   2. every registered poller (each reports [`PollStatus::Busy`] or [`PollStatus::Idle`]),
//!   3. the timed pollers that are due,
//!
//!   and returns whether any of that did work. Time is passed in (`now`, nanoseconds), so tests
//!   run many reactors on one OS thread with a fake clock (see `tests/fake_clock.rs`).
//! * [`ReactorHandle`] is the only part that crosses threads (`Send + Sync + Clone`): it
//!   sends closures to the reactor ([`ReactorHandle::send`]) and reads its counters.
//!   Messages from one sender arrive exactly once and in the order sent.
//! * A [`Reactor`] and the pollers registered on it are `!Send`: per-reactor resources (SPDK's
//!   io_channels) are created on the reactor and never leave it. The compiler enforces it.
//! * [`Runtime`] starts one pinned thread per core and runs the *adaptive idle* loop: a reactor
//!   that found no work for `idle_sleep` sleeps in `epoll_wait` on its eventfd, on file
//!   descriptors registered by its pollers ([`Reactor::register_wake_fd`]) and until its next
//!   timer, and returns to busy polling as soon as something arrives. An idle daemon costs
//!   almost nothing; a busy one never enters the kernel to wait.
//!
//! Cores come from the configuration, an SPDK-style mask (`-m 0x3`) or, by default, the CPU
//! set the process was started with (`taskset -c 0 vmpathd` runs one reactor on core 0); see
//! [`topology`].

#![allow(unsafe_code)] // Reason: eventfd/epoll/poll syscalls for sleep and wake-up (sys.rs only).

mod reactor;
mod runtime;
pub mod sys;
pub mod topology;

pub use reactor::{
    Message, PollStatus, PollerId, Reactor, ReactorHandle, ReactorStats, SendError,
    MAX_MSGS_PER_POLL,
};
pub use runtime::{Runtime, RuntimeConfig, RuntimeError};
pub use topology::{CoreInfo, Topology};

/// Monotonic clock in nanoseconds since an arbitrary, process-wide origin.
///
/// The reactor loop passes this to [`Reactor::poll`]; tests pass a fake clock instead.
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // u64 nanoseconds last 584 years.
    origin.elapsed().as_nanos() as u64
}
