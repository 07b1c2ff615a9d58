//! # vhost: vhost-user-blk virtual disks served by vmpath's reactors
//!
//! Each VM disk is a vhost-user-blk Unix socket ([`VhostBlkController`]); QEMU
//! (`-chardev socket,... -device vhost-user-blk-pci,chardev=...,num-queues=N`) and
//! cloud-hypervisor (`--disk vhost_user=true,socket=...`) attach to it. Specifications:
//! the vhost-user protocol (QEMU `docs/interop/vhost-user.rst`) and VIRTIO 1.2 (split
//! virtqueues, section 2.7; block device, section 5.2).
//!
//! How a request flows:
//!
//! 1. **Control plane** (module `backend`, on the controller's management thread): rust-vmm's
//!    `vhost` crate decodes the socket messages; this crate negotiates the features (virtio
//!    `VERSION_1`, `INDIRECT_DESC`, `EVENT_IDX`; virtio-blk `SIZE_MAX`, `SEG_MAX`, `BLK_SIZE`,
//!    `FLUSH`, `CONFIG_WCE`, `MQ`, `DISCARD`, `WRITE_ZEROES`, `TOPOLOGY`, `RO`; protocol `MQ`,
//!    `CONFIG`, `REPLY_ACK`, `CONFIGURE_MEM_SLOTS`, `INFLIGHT_SHMFD`), maps guest memory
//!    ([`memory`]) and, once a ring is complete, hands it to a reactor by message. Queue `i`
//!    runs on reactor `i % n`: one disk is served by several cores.
//! 2. **Data path** (module `queue`, on the reactor): the ring belongs to that reactor alone (no
//!    lock). Each pass pulls new heads, walks each descriptor chain with full checks against the
//!    guest memory regions ([`chain`]), interprets it as a virtio-blk request ([`request`]),
//!    asks the VM's admission gate ([`gate`]) and submits zero-copy to the block device; it
//!    completes requests into the used ring, writes the call eventfd at most once per pass, and
//!    adapts guest notifications (kicks suppressed while busy, re-enabled with a race-free
//!    re-check when idle, kick eventfds registered as reactor wake descriptors).
//! 3. **Reconnect** ([`inflight`]): fetched requests are recorded in the shared inflight
//!    region, so a restarted target re-runs what was in flight when a frontend reconnects.
//! 4. **Suspend / resume**: the rings stop being pulled while in-flight requests complete
//!    ([`VhostBlkController::suspend`]); the guest sees no error.
//!
//! Guest input is untrusted: a bad chain fails its request with `VIRTIO_BLK_S_IOERR` or, when
//! it cannot even be followed, marks the queue as needing a reset (error eventfd); nothing a
//! guest writes can crash the target or make it touch memory outside the guest's regions.
//!
//! [`frontend`] is a userspace vhost-user frontend that plays the guest (tests, benchmarks).

#![allow(unsafe_code)] // Reason: zero-copy I/O vectors over guest memory, memfd/eventfd/poll syscalls (memory.rs, sys.rs).

mod backend;
pub mod blk;
pub mod chain;
mod controller;
pub mod frontend;
pub mod gate;
pub mod inflight;
pub mod memory;
mod queue;
pub mod request;
mod sys;

pub use controller::{
    ControllerInfo, QueueInfo, VhostBlkConfig, VhostBlkController, VhostError,
    DEFAULT_MAX_QUEUE_SIZE, DEFAULT_NOTIFY_IDLE_NS, DEFAULT_SEG_MAX, DEFAULT_SIZE_MAX,
};
pub use gate::{Admit, GateChannel, GateIo, IoGate, PassThrough};
pub use queue::QueueStats;

#[doc(hidden)]
pub mod fuzzing;
