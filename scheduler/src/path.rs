//! The scheduler's abstract view of a path (issue 5, "Path selection").
//!
//! A [`PathLoad`] is a block of atomics readable from any reactor without locks: state,
//! outstanding I/Os and bytes, an EWMA of the measured service time, capacity estimates and
//! the selector weight. The scheduler's own dispatches and [`crate::Shard::complete`] keep
//! the load counters up to date; the multipath layer may also call [`PathLoad::on_submit`]
//! / [`PathLoad::on_complete`] for I/O it issues outside the scheduler (retries, admin
//! commands). State changes go through [`crate::Scheduler::set_path_state`] so that VMs are
//! re-routed, held or suspended.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::spec::PathState;

/// Index of a path in the scheduler (0..63). Stable while the path exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PathId(pub u16);

impl PathId {
    /// The index as `usize`.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path#{}", self.0)
    }
}

/// EWMA weight of a new service-time sample: 1/8.
const EWMA_SHIFT: u32 = 3;

/// Hot counters, written on every dispatch and completion.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Hot {
    outstanding_ios: AtomicU32,
    outstanding_bytes: AtomicU64,
    ewma_service_ns: AtomicU64,
    completed_ios: AtomicU64,
    active_weight: AtomicU64,
}

/// Read-mostly settings.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Cold {
    present: AtomicBool,
    state: AtomicU8,
    max_outstanding: AtomicU32,
    weight: AtomicU32,
    capacity_iops: AtomicU64,
    capacity_bps: AtomicU64,
}

/// Lock-free load and state of one path.
#[derive(Debug, Default)]
pub struct PathLoad {
    hot: Hot,
    cold: Cold,
}

impl PathLoad {
    /// Current state.
    #[inline]
    pub fn state(&self) -> PathState {
        PathState::from_u8(self.cold.state.load(Relaxed))
    }

    /// I/Os submitted and not yet completed.
    #[inline]
    pub fn outstanding_ios(&self) -> u32 {
        let v = self.hot.outstanding_ios.load(Relaxed);
        if v > i32::MAX as u32 {
            0
        } else {
            v
        }
    }

    /// Bytes submitted and not yet completed.
    #[inline]
    pub fn outstanding_bytes(&self) -> u64 {
        let v = self.hot.outstanding_bytes.load(Relaxed);
        if v > i64::MAX as u64 {
            0
        } else {
            v
        }
    }

    /// Exponentially weighted moving average of the service time (ns), 0 before any sample.
    #[inline]
    pub fn ewma_service_ns(&self) -> u64 {
        self.hot.ewma_service_ns.load(Relaxed)
    }

    /// Completions counted so far.
    pub fn completed_ios(&self) -> u64 {
        self.hot.completed_ios.load(Relaxed)
    }

    /// Estimated capacity in IOPS.
    #[inline]
    pub fn capacity_iops(&self) -> u64 {
        self.cold.capacity_iops.load(Relaxed)
    }

    /// Estimated capacity in bytes per second.
    #[inline]
    pub fn capacity_bps(&self) -> u64 {
        self.cold.capacity_bps.load(Relaxed)
    }

    /// Selector weight 1..=100.
    #[inline]
    pub fn weight(&self) -> u32 {
        self.cold.weight.load(Relaxed)
    }

    /// Queue depth the scheduler keeps at most on this path.
    #[inline]
    pub fn max_outstanding(&self) -> u32 {
        self.cold.max_outstanding.load(Relaxed)
    }

    /// True while the path can take another I/O from the scheduler.
    #[inline]
    pub fn has_room(&self) -> bool {
        // Signed: an unmatched completion (below zero) still leaves room.
        let (out, max) = self.load_pair();
        out < max
    }

    /// (outstanding I/Os, queue depth) as signed values for comparisons.
    #[inline(always)]
    pub(crate) fn load_pair(&self) -> (i32, i32) {
        (
            self.hot.outstanding_ios.load(Relaxed) as i32,
            self.cold.max_outstanding.load(Relaxed) as i32,
        )
    }

    /// Counts an I/O issued on this path.
    #[inline]
    pub fn on_submit(&self, bytes: u32) {
        self.hot.outstanding_ios.fetch_add(1, Relaxed);
        self.hot.outstanding_bytes.fetch_add(bytes.into(), Relaxed);
    }

    /// Counts a completion with its measured service time. An unmatched completion (a
    /// caller bug) cannot make the path look busy forever: counts below zero read as 0.
    #[inline]
    pub fn on_complete(&self, bytes: u32, service_ns: u64) {
        self.hot.outstanding_ios.fetch_sub(1, Relaxed);
        self.hot.outstanding_bytes.fetch_sub(bytes.into(), Relaxed);
        // Racy read-modify-write is fine for an average: a lost sample only delays it.
        let old = self.hot.ewma_service_ns.load(Relaxed);
        let new = if old == 0 {
            service_ns
        } else {
            old - (old >> EWMA_SHIFT) + (service_ns >> EWMA_SHIFT)
        };
        self.hot.ewma_service_ns.store(new.max(1), Relaxed);
        self.hot.completed_ios.fetch_add(1, Relaxed);
    }

    /// Updates the capacity estimates (e.g. from measured throughput).
    pub fn set_capacity(&self, iops: u64, bytes_per_sec: u64) {
        self.cold.capacity_iops.store(iops.max(1), Relaxed);
        self.cold.capacity_bps.store(bytes_per_sec.max(1), Relaxed);
    }

    #[inline]
    pub(crate) fn present(&self) -> bool {
        self.cold.present.load(Relaxed)
    }

    pub(crate) fn set_present(&self, v: bool) {
        self.cold.present.store(v, Relaxed);
    }

    pub(crate) fn store_state(&self, s: PathState) {
        self.cold.state.store(s.to_u8(), Relaxed);
    }

    pub(crate) fn set_weight(&self, w: u32) {
        self.cold.weight.store(w, Relaxed);
    }

    pub(crate) fn set_max_outstanding(&self, v: u32) {
        self.cold.max_outstanding.store(v, Relaxed);
    }

    pub(crate) fn reset_load(&self) {
        self.hot.outstanding_ios.store(0, Relaxed);
        self.hot.outstanding_bytes.store(0, Relaxed);
        self.hot.ewma_service_ns.store(0, Relaxed);
        self.hot.active_weight.store(0, Relaxed);
    }

    /// Sum of effective weights of `vm-weighted` VMs currently placed on the path.
    #[inline]
    pub(crate) fn active_weight(&self) -> u64 {
        self.hot.active_weight.load(Relaxed)
    }

    #[inline]
    pub(crate) fn add_active_weight(&self, w: u64) {
        self.hot.active_weight.fetch_add(w, Relaxed);
    }

    #[inline]
    pub(crate) fn sub_active_weight(&self, w: u64) {
        let _ = self
            .hot
            .active_weight
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(w)));
    }
}

/// A snapshot of one path for the management API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathInfo {
    /// Scheduler id.
    pub id: PathId,
    /// Name from the spec.
    pub name: String,
    /// Current state.
    pub state: PathState,
    /// Outstanding I/Os.
    pub outstanding_ios: u32,
    /// Outstanding bytes.
    pub outstanding_bytes: u64,
    /// EWMA service time, ns.
    pub ewma_service_ns: u64,
    /// Capacity estimate, IOPS.
    pub capacity_iops: u64,
    /// Capacity estimate, bytes/s.
    pub capacity_bps: u64,
    /// Selector weight.
    pub weight: u32,
    /// Scheduler queue depth.
    pub max_outstanding: u32,
    /// Completed I/Os.
    pub completed_ios: u64,
    /// Sum of IOPS reservations of VMs whose serving path this is (vm-affinity VMs).
    pub placed_reservation_iops: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_counters_and_ewma() {
        let p = PathLoad::default();
        p.set_max_outstanding(2);
        assert!(p.has_room());
        p.on_submit(4096);
        p.on_submit(8192);
        assert!(!p.has_room());
        assert_eq!((p.outstanding_ios(), p.outstanding_bytes()), (2, 12288));
        p.on_complete(4096, 800);
        assert_eq!(p.ewma_service_ns(), 800);
        p.on_complete(8192, 1600);
        assert_eq!(p.ewma_service_ns(), 800 - 100 + 200);
        assert_eq!((p.outstanding_ios(), p.outstanding_bytes()), (0, 0));
        // An unmatched completion reads as zero and leaves room.
        p.on_complete(4096, 10);
        assert_eq!((p.outstanding_ios(), p.outstanding_bytes()), (0, 0));
        assert!(p.has_room());
        assert_eq!(p.completed_ios(), 3);
    }
}
