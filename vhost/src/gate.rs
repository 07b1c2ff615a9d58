//! The per-VM admission hook: every request of a virtual disk asks its gate before it goes to
//! the block device, so a scheduler (proportional share, reservations, limits, failover hold)
//! decides *whether* it runs now.
//!
//! The shape follows the block-device layer: an [`IoGate`] is shared (`Send + Sync`) and opens
//! one [`GateChannel`] per virtqueue on the reactor that runs the queue, so a scheduler can keep
//! per-core state without locks and exchange credit between cores by message. A request that
//! is held is not dropped: the queue keeps it (and stops pulling its ring, preserving order)
//! and asks again on the next poll, at the latest after the retry time the gate gave.

use std::fmt;

use vmpath_bdev::IoType;
use vmpath_runtime::Reactor;

/// A request as the gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateIo {
    /// Operation.
    pub op: IoType,
    /// Data bytes (0 for flush; the range size for discard / write-zeroes).
    pub bytes: u64,
    /// Virtqueue index.
    pub queue: u16,
    /// Identifies the request among the queue's unfinished ones (the same value when a held
    /// request is asked about again, and at its completion).
    pub id: u64,
}

/// The gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Submit now.
    Now,
    /// Keep the request and ask again; the reactor wakes after at most `retry_ns`.
    Hold {
        /// Upper bound before the next attempt, in nanoseconds.
        retry_ns: u64,
    },
    /// Fail the request (`VIRTIO_BLK_S_IOERR`), e.g. no path came back in time.
    Fail,
}

/// A per-VM admission policy shared by all queues of a disk.
pub trait IoGate: Send + Sync + fmt::Debug {
    /// Opens the gate of one virtqueue; called on the reactor that runs the queue, so the
    /// gate can keep per-reactor state in [`Reactor::local`] (shared by every queue there).
    fn open(&self, vm: &str, queue: u16, reactor: &mut Reactor) -> Box<dyn GateChannel>;
}

/// One virtqueue's view of the gate (`!Send`: used on its reactor only).
pub trait GateChannel {
    /// Whether the queue should pull new requests from its ring at all (false: the VM is
    /// held, e.g. during a path failover; the queue asks again about every millisecond).
    fn should_pull(&mut self, now: u64) -> bool {
        let _ = now;
        true
    }

    /// Whether `io` may be submitted at `now` (reactor clock, nanoseconds).
    fn admit(&mut self, io: &GateIo, now: u64) -> Admit;

    /// An admitted request finished after `latency_ns`.
    fn complete(&mut self, io: &GateIo, now: u64, latency_ns: u64, ok: bool);
}

/// The default gate: admits everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThrough;

/// Channel of [`PassThrough`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThroughChannel;

impl IoGate for PassThrough {
    fn open(&self, _vm: &str, _queue: u16, _reactor: &mut Reactor) -> Box<dyn GateChannel> {
        Box::new(PassThroughChannel)
    }
}

impl GateChannel for PassThroughChannel {
    #[inline]
    fn admit(&mut self, _io: &GateIo, _now: u64) -> Admit {
        Admit::Now
    }

    #[inline]
    fn complete(&mut self, _io: &GateIo, _now: u64, _latency_ns: u64, _ok: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_through_admits_everything() {
        let mut r = Reactor::new(0, None, 16).unwrap();
        let mut c = PassThrough.open("vm", 0, &mut r);
        let io = GateIo {
            op: IoType::Write,
            bytes: 4096,
            queue: 0,
            id: 1,
        };
        assert!(c.should_pull(0));
        assert_eq!(c.admit(&io, 0), Admit::Now);
        c.complete(&io, 1, 1, true);
    }
}
