//! The admission hook: the single point where a queue pair asks whether an I/O may go to its
//! block device now. Every bdev submission of the target goes through one function
//! (`Conn::submit_io`), which consults the connection's [`AdmissionHook`] once per NVMe
//! command. The default hook ([`PassThrough`]) admits everything; the per-VM scheduler
//! (a VM is bound to host NQNs) plugs in through an [`AdmissionFactory`] set on the
//! [`crate::Target`].
//!
//! A hook that answers [`Admit::Later`] keeps the command on its connection's pending queue
//! (in arrival order, behind it every later command of that connection); it is offered again
//! on the next poll of the connection's reactor. Nothing is dropped.

use std::sync::Arc;

use vmpath_bdev::{BlockDevice, IoType};

/// The hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Submit now.
    Now,
    /// Hold the command; ask again on the next poll.
    Later,
}

/// What the hook is asked about: one NVMe I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoInfo {
    /// Namespace.
    pub nsid: u32,
    /// Operation (a Dataset Management command is one [`IoType::Unmap`] covering all ranges).
    pub op: IoType,
    /// First block (0 for flush and DSM).
    pub offset_blocks: u64,
    /// Blocks covered (summed over DSM ranges).
    pub num_blocks: u64,
    /// Bytes moved over the fabric (reads and writes).
    pub bytes: u64,
}

impl IoInfo {
    /// No I/O yet (a request slot that holds no I/O command).
    pub const NONE: IoInfo = IoInfo {
        nsid: 0,
        op: IoType::Flush,
        offset_blocks: 0,
        num_blocks: 0,
        bytes: 0,
    };
}

/// Identifies the I/O queue a hook is created for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN (a VM is bound to host NQNs).
    pub hostnqn: String,
    /// Controller ID.
    pub cntlid: u16,
    /// Queue ID.
    pub qid: u16,
    /// Reactor the queue pair runs on.
    pub reactor: u32,
}

/// Per-connection admission policy. Lives on the connection's reactor (`!Send` is fine).
pub trait AdmissionHook {
    /// May this I/O of `vm_tag` be submitted now?
    fn admit(&mut self, vm_tag: u64, io: &IoInfo, now_ns: u64) -> Admit;

    /// An admitted I/O completed (`ok` false when it failed).
    fn completed(&mut self, vm_tag: u64, io: &IoInfo, now_ns: u64, ok: bool) {
        let _ = (vm_tag, io, now_ns, ok);
    }
}

/// Admits everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl AdmissionHook for PassThrough {
    #[inline]
    fn admit(&mut self, _vm_tag: u64, _io: &IoInfo, _now_ns: u64) -> Admit {
        Admit::Now
    }
}

/// A connection's admission binding: the VM tag its I/O is accounted to and its hook.
pub struct QueueAdmission {
    /// Tag passed with every I/O of the queue (the VM the host NQN is bound to; 0 = none).
    pub vm_tag: u64,
    /// The hook.
    pub hook: Box<dyn AdmissionHook>,
}

impl std::fmt::Debug for QueueAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueAdmission")
            .field("vm_tag", &self.vm_tag)
            .finish_non_exhaustive()
    }
}

/// Creates the admission binding of each I/O queue when it connects (on its reactor).
pub trait AdmissionFactory: Send + Sync {
    /// The binding for a newly connected I/O queue.
    fn for_queue(&self, q: &QueueInfo) -> QueueAdmission;

    /// The block device that I/O queues of host `hostnqn` use for a namespace backed by
    /// `dev`: `dev` itself unless the factory serves that host through another device of
    /// the same geometry and data (the daemon gives a host bound to a VM a view of a VM
    /// volume that is scheduled as that VM's). Asked on the queue's reactor when it
    /// connects and whenever its routes are rebuilt ([`crate::Target::refresh_routes`]).
    fn device_for(&self, hostnqn: &str, dev: &Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        let _ = hostnqn;
        dev.clone()
    }
}

/// The default factory: VM tag 0, [`PassThrough`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThroughFactory;

impl AdmissionFactory for PassThroughFactory {
    fn for_queue(&self, _q: &QueueInfo) -> QueueAdmission {
        QueueAdmission {
            vm_tag: 0,
            hook: Box::new(PassThrough),
        }
    }
}
