//! Simulation knobs for test devices (SPDK delay-bdev style) and the completion queue that the
//! in-memory backends share.
//!
//! A simulated device is a single server with a fixed capacity: each I/O costs
//! `max(1 s / max_iops, bytes / bandwidth)` of service time, is served after every I/O admitted
//! before it (across all channels, through one atomic "busy until" time), and completes
//! `latency` after its service ends. An idle device does not bank capacity. This gives QoS tests
//! and demos a device whose capacity is known exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{IoCompletion, IoError, IoStats, IoType, SharedStats};

/// Simulation parameters (all zero = a device as fast as memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimParams {
    /// Fixed latency added to every I/O, in nanoseconds.
    pub latency_ns: u64,
    /// Capacity in I/Os per second (0 = unlimited).
    pub max_iops: u64,
    /// Capacity in bytes per second (0 = unlimited).
    pub max_bw_bytes: u64,
}

impl SimParams {
    /// True if any knob is set.
    pub fn is_active(&self) -> bool {
        self.latency_ns != 0 || self.max_iops != 0 || self.max_bw_bytes != 0
    }
}

/// The shared service model of one simulated device.
#[derive(Debug, Default)]
pub struct SimDevice {
    params: SimParams,
    busy_until: AtomicU64,
}

impl SimDevice {
    /// A device with these knobs.
    pub fn new(params: SimParams) -> Self {
        SimDevice {
            params,
            busy_until: AtomicU64::new(0),
        }
    }

    /// The knobs.
    pub fn params(&self) -> SimParams {
        self.params
    }

    /// Service cost of one I/O of `bytes`, in nanoseconds.
    #[inline]
    pub fn cost_ns(&self, bytes: u64) -> u64 {
        let p = &self.params;
        let by_iops = 1_000_000_000u64.checked_div(p.max_iops).unwrap_or(0);
        let by_bw = if p.max_bw_bytes > 0 {
            ((bytes as u128 * 1_000_000_000) / p.max_bw_bytes as u128) as u64
        } else {
            0
        };
        by_iops.max(by_bw)
    }

    /// Admits one I/O of `bytes` submitted at `now`; returns when it completes.
    #[inline]
    pub fn completion_time(&self, now: u64, bytes: u64) -> u64 {
        if !self.params.is_active() {
            return 0;
        }
        let cost = self.cost_ns(bytes);
        if cost == 0 {
            return now + self.params.latency_ns;
        }
        let mut cur = self.busy_until.load(Ordering::Relaxed);
        loop {
            let start = cur.max(now);
            let end = start + cost;
            match self.busy_until.compare_exchange_weak(
                cur,
                end,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return end + self.params.latency_ns,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Pending {
    due: u64,
    bytes: u64,
    done: IoCompletion,
    op: IoType,
}

const EMPTY: Pending = Pending {
    due: 0,
    bytes: 0,
    done: IoCompletion {
        tag: 0,
        result: Ok(()),
    },
    op: IoType::Flush,
};

/// A channel's queue of finished-but-not-yet-delivered I/Os, ordered by due time.
///
/// Due times of one channel never decrease (fixed latency, and a capacity model whose service
/// end times grow monotonically), so a FIFO is enough. It is a fixed ring of `cap` entries
/// (rounded up to a power of two) indexed by free-running counters: no allocation and no
/// wrap-around arithmetic on the I/O path.
pub(crate) struct CompletionQueue {
    ring: Box<[Pending]>,
    mask: usize,
    /// Next entry to deliver (free-running).
    head: usize,
    /// Next free entry (free-running).
    tail: usize,
    cap: usize,
    /// Whether the device has simulation knobs (else completions are due at once).
    sim_active: bool,
    sim: Arc<SimDevice>,
    stats: Arc<SharedStats>,
    local: IoStats,
    now: u64,
}

impl CompletionQueue {
    pub(crate) fn new(cap: usize, sim: Arc<SimDevice>, stats: Arc<SharedStats>) -> Self {
        let cap = cap.max(1);
        let size = cap.next_power_of_two();
        CompletionQueue {
            ring: vec![EMPTY; size].into_boxed_slice(),
            mask: size - 1,
            head: 0,
            tail: 0,
            cap,
            sim_active: sim.params().is_active(),
            sim,
            stats,
            local: IoStats::default(),
            now: 0,
        }
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.tail.wrapping_sub(self.head)
    }

    #[inline]
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Queues the completion of an I/O executed now. The caller checked [`is_full`](Self::is_full).
    #[inline]
    pub(crate) fn push(&mut self, op: IoType, bytes: u64, tag: u64, result: Result<(), IoError>) {
        debug_assert!(!self.is_full());
        let due = if self.sim_active && result.is_ok() {
            self.sim.completion_time(self.now, bytes)
        } else {
            0
        };
        self.ring[self.tail & self.mask] = Pending {
            due,
            bytes,
            done: IoCompletion { tag, result },
            op,
        };
        self.tail = self.tail.wrapping_add(1);
    }

    /// Delivers every completion due at `now`.
    #[inline]
    pub(crate) fn poll(&mut self, now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        self.now = now;
        let start = self.head;
        while self.head != self.tail {
            let p = self.ring[self.head & self.mask];
            if p.due > now {
                break;
            }
            self.head = self.head.wrapping_add(1);
            self.local.count(p.op, p.bytes, p.done.result.is_ok());
            done(p.done);
        }
        let n = self.head.wrapping_sub(start);
        if n != 0 {
            self.stats.add(&self.local);
            self.local = IoStats::default();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_model_serialises_io() {
        let d = SimDevice::new(SimParams {
            latency_ns: 0,
            max_iops: 1000,
            max_bw_bytes: 0,
        });
        // 1000 IOPS = 1 ms each; three I/Os at t=0 end at 1, 2, 3 ms.
        assert_eq!(d.completion_time(0, 4096), 1_000_000);
        assert_eq!(d.completion_time(0, 4096), 2_000_000);
        assert_eq!(d.completion_time(0, 4096), 3_000_000);
        // An idle device does not bank capacity: at t=10 ms the next ends at 11 ms.
        assert_eq!(d.completion_time(10_000_000, 4096), 11_000_000);
    }

    #[test]
    fn bandwidth_and_latency() {
        let d = SimDevice::new(SimParams {
            latency_ns: 500,
            max_iops: 0,
            max_bw_bytes: 1_000_000_000,
        });
        // 1 GB/s: 4096 bytes take 4096 ns, plus 500 ns latency.
        assert_eq!(d.completion_time(0, 4096), 4596);
        let l = SimDevice::new(SimParams {
            latency_ns: 100,
            ..Default::default()
        });
        assert_eq!(l.completion_time(7, 4096), 107);
    }
}
