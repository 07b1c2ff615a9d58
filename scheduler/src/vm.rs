//! Per-VM shared state: identity, QoS parameters (published with a seqlock so reactors read
//! them without locks) and the global mClock tags (atomics claimed with compare-and-swap).

use std::fmt;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::path::PathId;
use crate::spec::{FailoverPolicy, SelectorSpec, VmSpec};

/// A VM handle: table index plus generation, so a handle of a deleted VM never reaches a
/// VM created later in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct VmId {
    /// Slot in the VM table.
    pub index: u32,
    /// Generation of the slot (starts at 1).
    pub gen: u32,
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm#{}.{}", self.index, self.gen)
    }
}

/// Shift of the proportional-share fixed point: tag increment = cost_sectors × 2^30 / shares.
pub(crate) const P_SHIFT: u32 = 30;
/// Fixed point of the ns-per-byte factors.
pub(crate) const BYTE_FP_SHIFT: u32 = 16;
const NS: u128 = 1_000_000_000;
/// 1 MB.
pub(crate) const MB: u64 = 1_000_000;

pub(crate) const FLAG_ADMIN: u32 = 1;
pub(crate) const FLAG_FAILOVER: u32 = 2;
pub(crate) const NO_PATH: u32 = u32::MAX;

/// Selector kinds as stored in the parameter words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sel {
    Affinity,
    RoundRobin,
    LeastQueue,
    LeastBytes,
    ServiceTime,
    Weighted,
}

/// Failover kinds as stored in the parameter words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fo {
    Hold,
    Suspend,
    FailAfter,
}

/// Decoded parameters; each reactor keeps a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VmParams {
    pub live: bool,
    pub gen: u32,
    pub class: u8,
    pub sel: Sel,
    pub fo: Fo,
    pub shares: u32,
    pub max_held: u32,
    /// 2^30 / shares.
    pub p_inv: u64,
    /// ns per I/O of the limit (rounded up), 0 = none.
    pub lim_io_ns: u64,
    /// ns per byte << 16 of the limit (rounded up), 0 = none.
    pub lim_byte_fp: u64,
    /// ns per I/O of the reservation (rounded down), 0 = none.
    pub res_io_ns: u64,
    /// ns per byte << 16 of the reservation (rounded down), 0 = none.
    pub res_byte_fp: u64,
    /// Allowed paths; 0 = all.
    pub affinity: u64,
    pub rr_ios: u32,
    pub rr_bytes: u64,
    pub fail_timeout_ns: u64,
    /// shares × priority factor (vm-weighted selector).
    pub weight_eff: u64,
}

impl VmParams {
    pub(crate) const DEAD: VmParams = VmParams {
        live: false,
        gen: 0,
        class: 1,
        sel: Sel::Affinity,
        fo: Fo::Hold,
        shares: 1,
        max_held: 1,
        p_inv: 1 << P_SHIFT,
        lim_io_ns: 0,
        lim_byte_fp: 0,
        res_io_ns: 0,
        res_byte_fp: 0,
        affinity: 0,
        rr_ios: 0,
        rr_bytes: 0,
        fail_timeout_ns: 0,
        weight_eff: 1,
    };

    #[inline]
    pub(crate) fn has_limit(&self) -> bool {
        (self.lim_io_ns | self.lim_byte_fp) != 0
    }

    #[inline]
    pub(crate) fn has_reservation(&self) -> bool {
        (self.res_io_ns | self.res_byte_fp) != 0
    }

    /// Builds the parameters of a validated spec; `affinity` is the resolved path mask.
    pub(crate) fn from_spec(spec: &VmSpec, gen: u32, affinity: u64) -> VmParams {
        let ceil_div = |a: u128, b: u128| a.div_ceil(b) as u64;
        let per_io_up = |r: Option<u64>| r.map_or(0, |r| ceil_div(NS, r.into()));
        let per_io_down = |r: Option<u64>| r.map_or(0, |r| (NS / u128::from(r)).max(1) as u64);
        let per_byte_up = |r: Option<u64>| {
            r.map_or(0, |r| {
                ceil_div(NS << BYTE_FP_SHIFT, u128::from(r) * u128::from(MB))
            })
        };
        let per_byte_down = |r: Option<u64>| {
            r.map_or(0, |r| {
                ((NS << BYTE_FP_SHIFT) / (u128::from(r) * u128::from(MB))).max(1) as u64
            })
        };
        let (sel, rr_ios, rr_bytes) = match spec.path_policy.selector {
            SelectorSpec::VmAffinity => (Sel::Affinity, 0, 0),
            SelectorSpec::RoundRobin { ios, bytes } => (Sel::RoundRobin, ios, bytes),
            SelectorSpec::LeastQueueDepth => (Sel::LeastQueue, 0, 0),
            SelectorSpec::LeastBytes => (Sel::LeastBytes, 0, 0),
            SelectorSpec::ServiceTime => (Sel::ServiceTime, 0, 0),
            SelectorSpec::VmWeighted => (Sel::Weighted, 0, 0),
        };
        let (fo, fail_timeout_ns) = match spec.failover {
            FailoverPolicy::Hold => (Fo::Hold, 0),
            FailoverPolicy::Suspend => (Fo::Suspend, 0),
            FailoverPolicy::FailAfter { timeout_ms } => {
                (Fo::FailAfter, timeout_ms.saturating_mul(1_000_000))
            }
        };
        let shares = spec.shares.max(1);
        VmParams {
            live: true,
            gen,
            class: spec.priority.index() as u8,
            sel,
            fo,
            shares,
            max_held: spec.max_held.max(1),
            p_inv: (1u64 << P_SHIFT) / u64::from(shares),
            lim_io_ns: per_io_up(spec.limit.iops),
            lim_byte_fp: per_byte_up(spec.limit.mbps),
            res_io_ns: per_io_down(spec.reservation.iops),
            res_byte_fp: per_byte_down(spec.reservation.mbps),
            affinity,
            rr_ios,
            rr_bytes,
            fail_timeout_ns,
            weight_eff: u64::from(shares) * spec.priority.weight_factor(),
        }
    }

    fn encode(&self) -> [u64; WORDS] {
        let sel = self.sel as u64;
        let fo = self.fo as u64;
        [
            u64::from(self.live)
                | u64::from(self.class) << 1
                | sel << 8
                | fo << 16
                | u64::from(self.gen) << 32,
            u64::from(self.shares) | u64::from(self.max_held) << 32,
            self.p_inv,
            self.lim_io_ns,
            self.lim_byte_fp,
            self.res_io_ns,
            self.res_byte_fp,
            self.affinity,
            u64::from(self.rr_ios),
            self.rr_bytes,
            self.fail_timeout_ns,
            self.weight_eff,
        ]
    }

    fn decode(w: &[u64; WORDS]) -> VmParams {
        let sel = match (w[0] >> 8) & 0xff {
            0 => Sel::Affinity,
            1 => Sel::RoundRobin,
            2 => Sel::LeastQueue,
            3 => Sel::LeastBytes,
            4 => Sel::ServiceTime,
            _ => Sel::Weighted,
        };
        let fo = match (w[0] >> 16) & 0xff {
            0 => Fo::Hold,
            1 => Fo::Suspend,
            _ => Fo::FailAfter,
        };
        VmParams {
            live: w[0] & 1 == 1,
            class: ((w[0] >> 1) & 3) as u8,
            sel,
            fo,
            gen: (w[0] >> 32) as u32,
            shares: w[1] as u32,
            max_held: (w[1] >> 32) as u32,
            p_inv: w[2],
            lim_io_ns: w[3],
            lim_byte_fp: w[4],
            res_io_ns: w[5],
            res_byte_fp: w[6],
            affinity: w[7],
            rr_ios: w[8] as u32,
            rr_bytes: w[9],
            fail_timeout_ns: w[10],
            weight_eff: w[11].max(1),
        }
    }
}

const WORDS: usize = 12;

/// Global tags and flags: written on the request path.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct VmTags {
    /// Limit tags (ns): the VM may dispatch once `now >= tag`.
    pub l_io: AtomicU64,
    pub l_bw: AtomicU64,
    /// Reservation tags (ns): a request is reservation-due once `now >= tag`.
    pub r_io: AtomicU64,
    pub r_bw: AtomicU64,
    /// Proportional-share finish tag (virtual time, wraps).
    pub p: AtomicU64,
    /// FLAG_ADMIN | FLAG_FAILOVER.
    pub flags: AtomicU32,
    /// Serving path of a vm-affinity VM (home or failover alternate), NO_PATH if none.
    pub serving: AtomicU32,
}

/// Parameters: written by the control plane only.
#[repr(align(128))]
#[derive(Debug, Default)]
struct VmConf {
    version: AtomicU64,
    words: [AtomicU64; WORDS],
}

/// One VM slot shared by all reactors.
#[derive(Debug, Default)]
pub(crate) struct VmShared {
    pub tags: VmTags,
    conf: VmConf,
}

impl VmShared {
    /// Publishes new parameters (control plane, serialised by the scheduler's mutex).
    pub(crate) fn publish(&self, p: &VmParams) {
        let v = self.conf.version.load(Ordering::Relaxed);
        self.conf
            .version
            .store(v.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, w) in self.conf.words.iter().zip(p.encode()) {
            slot.store(w, Ordering::Relaxed);
        }
        self.conf
            .version
            .store(v.wrapping_add(2), Ordering::Release);
    }

    /// Reads a consistent copy, or `None` if a write is in progress (retry later).
    pub(crate) fn read(&self) -> Option<(u64, VmParams)> {
        for _ in 0..4 {
            let v1 = self.conf.version.load(Ordering::Acquire);
            if v1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut w = [0u64; WORDS];
            for (d, s) in w.iter_mut().zip(self.conf.words.iter()) {
                *d = s.load(Ordering::Relaxed);
            }
            fence(Ordering::Acquire);
            if self.conf.version.load(Ordering::Relaxed) == v1 {
                return Some((v1, VmParams::decode(&w)));
            }
        }
        None
    }

    /// Current parameter version (even = stable).
    #[inline]
    pub(crate) fn version(&self) -> u64 {
        self.conf.version.load(Ordering::Acquire)
    }

    pub(crate) fn reset_tags(&self) {
        for t in [
            &self.tags.l_io,
            &self.tags.l_bw,
            &self.tags.r_io,
            &self.tags.r_bw,
            &self.tags.p,
        ] {
            t.store(0, Ordering::Relaxed);
        }
        self.tags.flags.store(0, Ordering::Relaxed);
        self.tags.serving.store(NO_PATH, Ordering::Relaxed);
    }
}

/// Why a VM is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendReason {
    /// `vm_suspend` from the operator.
    Admin,
    /// Failover policy `suspend`: no path can serve the VM.
    Failover,
}

/// A VM snapshot for `vm_get_vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Handle.
    pub id: VmId,
    /// Current spec (after updates).
    pub spec: VmSpec,
    /// Suspension reasons in force (empty = running).
    pub suspended: Vec<SuspendReason>,
    /// Serving path of a vm-affinity VM.
    pub serving_path: Option<PathId>,
    /// Home path of a vm-affinity VM.
    pub home_path: Option<PathId>,
    /// Requests held in the scheduler (all reactors).
    pub held: u64,
    /// Requests dispatched and not completed (all reactors).
    pub inflight: u64,
    /// Requests dispatched since creation.
    pub dispatched_ios: u64,
    /// Bytes dispatched since creation.
    pub dispatched_bytes: u64,
    /// Requests failed back by `fail-after`.
    pub failed_ios: u64,
    /// A migrate recommendation is active.
    pub migrate_recommended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{PriorityClass, RateSpec};

    #[test]
    fn params_roundtrip_through_seqlock() {
        let mut s = VmSpec::new("a");
        s.shares = 250;
        s.limit = RateSpec {
            iops: Some(3000),
            mbps: Some(7),
        };
        s.reservation.iops = Some(1000);
        s.priority = PriorityClass::Low;
        s.path_policy.selector = SelectorSpec::RoundRobin {
            ios: 16,
            bytes: 1 << 20,
        };
        s.failover = FailoverPolicy::FailAfter { timeout_ms: 5 };
        let p = VmParams::from_spec(&s, 7, 0b101);
        let shared = VmShared::default();
        shared.publish(&p);
        let (v, q) = shared.read().unwrap();
        assert_eq!(v, 2);
        assert!(q.live);
        assert_eq!((q.gen, q.shares, q.class), (7, 250, 2));
        assert_eq!(q.sel, Sel::RoundRobin);
        assert_eq!((q.rr_ios, q.rr_bytes), (16, 1 << 20));
        assert_eq!(q.fo, Fo::FailAfter);
        assert_eq!(q.fail_timeout_ns, 5_000_000);
        assert_eq!(q.lim_io_ns, 333_334); // rounded up: never above the limit
        assert_eq!(q.res_io_ns, 1_000_000);
        assert_eq!(q.affinity, 0b101);
        assert_eq!(q.p_inv, (1 << 30) / 250);
        // 7 MB/s: 1e9/7e6 ns per byte, fixed point, rounded up.
        assert_eq!(
            q.lim_byte_fp,
            ((1u128 << 16) * 1_000_000_000).div_ceil(7_000_000) as u64
        );
        assert_eq!(q.class, 2);
        assert_eq!(q.weight_eff, 250);
    }
}
