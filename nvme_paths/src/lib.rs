//! # nvme_paths: NVMe/TCP initiator, multipath namespaces, lossless failover
//!
//! The host side of vmpath (issue 4). It reaches remote namespaces through several fabric
//! paths (one NVMe/TCP controller per portal) and local block devices, knows the state and
//! load of every path, and survives the loss of a path without failing or losing a request.
//! The per-VM scheduler decides which path each request takes; this crate provides the paths,
//! their state and load, and the hook to submit on a chosen path.
//!
//! ## Pieces
//! * [`qpair`]: the host side of one NVMe/TCP queue pair as a pure protocol engine on the
//!   shared codec ([`nvme_tcp`]): ICReq/ICResp, command capsules (in-capsule writes up to the
//!   controller's IOCCSZ, R2T/H2CData otherwise), C2HData with the SUCCESS flag, digests.
//!   Everything the controller sends is checked (TP 8000 §3.3-3.6).
//! * [`sock`]: the queue pair on a non-blocking TCP socket; abortive close (RST).
//! * [`ctrlr`]: a controller — admin queue on its own thread: Connect (NVMe-oF 1.1 §3.3),
//!   Property Get/Set CAP/CC/CSTS and enable (Base 2.0 §3.5.1), Identify controller /
//!   namespace / active list / descriptors (§5.17), Number of Queues, Asynchronous Event
//!   Configuration and Requests (§5.2), keep-alive every KATO/2 (§3.9), ANA log (§5.16.1.12,
//!   §8.1) re-read on every ANA change event; reconnect with `reconnect_delay`, give up after
//!   `ctrlr_loss_timeout`; [`discover`] reads a discovery controller's log page (NVMe-oF §5).
//! * [`mpath`]: [`MultipathNs`] (a [`vmpath_bdev::BlockDevice`] named `{name}n{nsid}`) and
//!   its per-reactor [`MultipathChannel`] (an [`vmpath_bdev::IoChannel`]): one I/O queue pair
//!   per reactor per controller, Read / Write / Flush / Deallocate (DSM) / Write Zeroes.
//! * [`path`]: [`Path`] — identity, state ([`PathState`]) and load (outstanding I/Os and
//!   bytes, EWMA service time) in atomics.
//! * [`policy`]: the [`PathSelector`] hook and the standalone policies (active-passive,
//!   round robin every N I/Os, least queue depth), always optimized before non-optimized.
//! * [`events`]: path up / down / failover started / finished / ANA change, timestamped, to
//!   bounded channels and callbacks.
//! * [`host`]: [`NvmeHost`], the management side (`bdev_nvme_*` RPCs).
//!
//! ## Paths, state and load (what the scheduler maps onto its path view)
//! A path is `(controller, queue pair)`: a controller association plus, on each reactor, that
//! reactor's own I/O queue pair of it (a local device path: the device plus each reactor's
//! channel). [`MultipathNs::paths`] lists them by [`PathId`] (dense, stable, never reused).
//! [`Path::state`] is one of `connecting`, `optimized`, `non_optimized`, `inaccessible`,
//! `failed`, `failing_over` — the same six states as the scheduler's `PathState` — computed
//! from two relaxed atomic loads. [`Path::outstanding_ios`], [`Path::outstanding_bytes`] and
//! [`Path::ewma_service_ns`] are relaxed loads too, updated by every reactor's submissions and
//! completions. The daemon maps `PathId`s to scheduler path ids, feeds state changes from
//! [`PathEvent`]s to `Scheduler::set_path_state` / `failover_started` / `failover_finished`,
//! and routes with [`MultipathChannel::submit_on`]; [`MultipathChannel::poll_paths`] returns
//! each completion's path and service time for `Shard::complete`.
//!
//! ## Failover rules
//! * A request that fails with a path error — a path-related status (SCT 3, e.g. ANA
//!   inaccessible / transition), Transient Transport Error, an abort status, or the loss of
//!   its queue pair — is re-issued on another usable path. ANA errors also mark the path
//!   inaccessible until the ANA log (re-read at once) says otherwise.
//! * While no path is usable but one may come back (connecting, failing over, or lost for
//!   less than its `fast_io_fail_timeout`; `-1` = until `ctrlr_loss_timeout`), requests are
//!   held, in order, not failed. Once no path can come back they fail with
//!   [`vmpath_bdev::IoError::NoPath`].
//! * Any queue pair error (transport error, malformed or unexpected PDU, unknown CID, a
//!   TermReq, a per-I/O timeout, a keep-alive timeout) resets the whole association: every
//!   socket of it is closed with a RST (queued bytes are discarded, not sent), and the
//!   controller reconnects every `reconnect_delay` as a new association.
//!
//! ### The write rule
//! **A write (also Deallocate and Write Zeroes) whose outcome on a lost path is unknown is
//! not re-issued anywhere until its first attempt can no longer be executed.** Its outcome is
//! unknown when any byte of its command capsule was handed to the socket and neither a
//! completion nor a "not executed" status came back. The first attempt can no longer be
//! executed when:
//! 1. the controller completed it after all (it is then simply done, or retried if the status
//!    says it was not executed — path-related, transient transport error, aborted), or
//! 2. the association it was sent on has been torn down by the host (all its sockets closed
//!    with RST, so nothing queued on the host can still leave) **and** KATO +
//!    `write_fence_grace` have passed since the last byte any connection of that association
//!    sent. The target must by then have expired the controller's keep-alive timer and torn
//!    the controller down (NVMe Base 2.0 §3.9.4; issue 3 requires our target to do so), and
//!    `write_fence_grace` covers its check granularity, its command quiesce time (Base 2.1's
//!    CQT) and the network's delivery delay. With keep-alive disabled (KATO 0) rule 2 never
//!    holds and the write waits until the controller is given up (`ctrlr_loss_timeout`),
//!    after which the path can execute nothing more.
//!
//! Reads and flushes are re-issued at once; a command that never left the host (no byte
//! sent) is re-issued at once whatever its type. So a write is never duplicated (the target
//! cannot run the first attempt after the second has started), never reordered against an
//! acknowledged write (a late first attempt cannot overwrite newer data acknowledged on
//! another path), and never lost (it is completed only by a success status). The cost is a
//! stall of about KATO + grace for the writes caught on a path that disappears silently.
//!
//! ## Threads
//! Controller threads (one per controller) own the admin queues; helper threads connect I/O
//! queue pairs (blocking connect, ICReq, Connect) and hand them to the reactor; reactors own
//! their channels and never block. All times shared between threads use [`now_ns`] (the
//! runtime's monotonic clock).

#![allow(unsafe_code)] // Reason: I/O buffers are raw IoVecs lent by the caller; one socket option (abortive close).

pub mod ctrlr;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod mpath;
pub mod options;
pub mod path;
pub mod policy;
pub mod qpair;
pub mod sock;

pub use ctrlr::{
    discover, Ctrl, CtrlData, CtrlError, CtrlState, DiscoveryEntry, NsData, NsIdentity,
};
pub use events::{EventHub, PathEvent, PathEventKind};
pub use host::{Attached, ControllerInfo, HostError, NvmeHost};
pub use mpath::{MultipathChannel, MultipathNs, NsError, PathCompletion, CHANNEL_DEPTH};
pub use options::{AttachParams, CtrlOptions, MultipathMode, OptionsError, PolicyKind, Trid};
pub use path::{Ana, Path, PathId, PathKind, PathSnapshot, PathState};
pub use policy::{Candidate, PathSelector};

/// Monotonic clock shared with the reactors (nanoseconds).
#[inline]
pub fn now_ns() -> u64 {
    vmpath_runtime::now_ns()
}
