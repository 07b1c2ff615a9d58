//! # nvmf-target: the NVMe-over-TCP target of vmpath
//!
//! Exports block devices ([`vmpath_bdev::BlockDevice`]) as namespaces of NVM subsystems to
//! standard NVMe/TCP hosts (the Linux kernel host, SPDK, vmpath's own initiator). It follows
//! NVM Express Base 2.0, NVMe over Fabrics 1.1 and the NVMe/TCP transport binding (TP 8000,
//! NVMe-oF 1.1 §7.4); PDUs are encoded and decoded by the shared [`nvme_tcp`] codec and the
//! wire structures come from [`nvme_spec`].
//!
//! ## Objects ([`Target`])
//! * Subsystems ([`Subsystem`], Base 2.0 §1.5): NQN, serial, model, namespaces
//!   ([`NamespaceParams`]: a bdev, an NSID, an ANA group), the allowed host NQNs or
//!   allow-any-host (a Connect from another host gets *Connect Invalid Host*, NVMe-oF 1.1
//!   figure 17), and listeners ([`ListenAddr`]): several portals per subsystem, portals
//!   shared between subsystems.
//! * ANA (Base 2.0 §8.1): every listener has an ANA state per ANA group (optimized,
//!   non-optimized, inaccessible), changeable at run time ([`Target::set_ana_state`]); a
//!   change raises an *ANA change* asynchronous event on the controllers connected through
//!   that portal and shows in the ANA log page; I/O to an inaccessible group completes with
//!   *Asymmetric Access Inaccessible*.
//! * The discovery subsystem (`nqn.2014-08.org.nvmexpress.discovery`, NVMe-oF 1.1 §5),
//!   reachable on every portal, whose log page lists every listener of every subsystem the
//!   asking host may use.
//!
//! ## Controllers and commands
//! Dynamic controller model: an admin-queue Connect creates a controller, I/O-queue
//! Connects join it by CNTLID. Fabrics: Connect, Property Get/Set (CAP, VS, CC, CSTS:
//! enable, reset, shutdown), Disconnect. Admin: Identify (controller, namespace, active
//! namespace list, namespace identification descriptors), Get Log Page (error, SMART /
//! health, changed namespace list, ANA, discovery), Get/Set Features (number of queues,
//! keep alive timer, async event configuration, volatile write cache), Keep Alive (KATO is
//! enforced: a silent host's controller is torn down and its connections closed),
//! Asynchronous Event Request (namespace attribute and ANA change notices), Abort. NVM I/O:
//! Read, Write, Flush, Dataset Management (deallocate), Write Zeroes, with MDTS
//! ([`TargetOptions::max_io_size`]) honoured before any data moves.
//!
//! ## Data path
//! Each TCP connection (queue pair) is owned by one reactor ([`vmpath_runtime::Reactor`]):
//! a dedicated acceptor thread hands accepted sockets round robin to the reactors
//! (`ReactorHandle::send`), where a poll group drives non-blocking sockets from a poller
//! (its epoll fd is registered with `Reactor::register_wake_fd`, so an idle reactor sleeps
//! and wakes on socket readability). Many PDUs per syscall: one `recv` feeds the
//! incremental decoder, one `sendmsg` sends every queued response. No copy between socket
//! and block device where the layout allows: read data is sent from the buffer the device
//! filled; the tail of a large H2C PDU is read by `readv` straight into the request buffer
//! that is then submitted. Request slots and buffers are reused, so the steady state
//! allocates nothing; nothing on the I/O path takes a lock (subsystem changes are picked up
//! through a generation counter and an immutable snapshot). Every bdev submission goes
//! through one function that consults the queue's [`AdmissionHook`] (pass-through by
//! default; the per-VM scheduler plugs in with [`Target::set_admission_factory`]). The same
//! factory may serve a host through another device of a namespace
//! ([`AdmissionFactory::device_for`]): the daemon schedules a host NQN bound to a VM as
//! that VM's through a view of the exported volume.
//!
//! ## Bad input
//! Malformed PDUs, bad header digests, wrong PDU order or out-of-range data transfers end
//! the connection with a C2HTermReq carrying the codec's FES/FEI, then a close; data digest
//! errors complete the command with *Transient Transport Error*; command-level errors
//! (unknown opcode, command before Connect, LBA out of range, transfer above MDTS, bad SGL)
//! complete the command with the status the spec names. A host that disappears mid-write
//! has nothing written: a write is submitted only once all its data arrived. Other
//! connections never notice.
//!
//! [`testing`] has a small blocking NVMe/TCP initiator built on the same codec, used by the
//! tests, the benchmark and the daemon tests.

#![allow(unsafe_code)] // Reason: vectored socket I/O straight into and out of request buffers lent to block devices (sys.rs, conn.rs, io.rs).

mod admin;
pub mod admission;
mod chans;
mod cmd;
mod conn;
mod ctrlr;
mod fabrics;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod io;
pub mod options;
mod pages;
pub mod subsystem;
mod sys;
pub mod target;
pub mod testing;
mod tx;

pub use admission::{
    AdmissionFactory, AdmissionHook, Admit, IoInfo, PassThrough, PassThroughFactory,
    QueueAdmission, QueueInfo,
};
pub use ctrlr::Controller;
pub use options::{OptionsError, TargetOptions};
pub use subsystem::{
    ana_state_name, parse_ana_state, validate_nqn, ListenAddr, Listener, Namespace,
    NamespaceParams, Snapshot, Subsystem, SubsystemError, SubsystemInfo, SubsystemParams,
};
pub use target::{Target, TargetError};

/// The process-wide monotonic clock reactors use.
#[inline]
pub(crate) fn now() -> u64 {
    vmpath_runtime::now_ns()
}
