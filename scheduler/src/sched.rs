//! The shared scheduler object (`Send + Sync`, one per daemon) and its control plane:
//! VMs, paths, admission control, failover reconciliation, migrate recommendations and
//! the event queue (issue 5, "VM model", "Failover", "Migrate recommendation").
//!
//! Control-plane methods take an internal mutex that the request path never touches;
//! reactors see changes through atomics and a seqlock, noticed via an epoch counter.

use std::collections::HashMap;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::path::{PathId, PathInfo, PathLoad};
use crate::shard::Shard;
use crate::spec::{
    FailoverPolicy, PathPolicySpec, PathSpec, PathState, PriorityClass, SchedulerConfig,
    SelectorSpec, SpecError, VmQosUpdate, VmSpec, MAX_PATHS,
};
use crate::vm::{
    SuspendReason, VmId, VmInfo, VmParams, VmShared, FLAG_ADMIN, FLAG_FAILOVER, MB, NO_PATH,
};
use crate::wheel::before;

/// Number of shard targets: one per path plus "any path".
pub(crate) const NT: usize = MAX_PATHS + 1;
/// Target index meaning "any allowed path".
pub(crate) const ANY: usize = MAX_PATHS;
/// Published class value meaning "nothing queued".
pub(crate) const PUB_NONE: u32 = u32::MAX;

/// Control-plane failures. Messages are meant for operators (they reach RPC replies).
#[derive(Debug, Error)]
pub enum SchedError {
    /// The spec did not validate.
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// A VM with this name exists.
    #[error("VM {0:?} already exists")]
    DuplicateVm(String),
    /// No such VM (deleted or never created).
    #[error("unknown VM {0}")]
    UnknownVm(VmId),
    /// The VM table is full.
    #[error("VM table full ({0} VMs; raise scheduler.max_vms)")]
    VmTableFull(u32),
    /// A path with this name exists.
    #[error("path {0:?} already exists")]
    DuplicatePath(String),
    /// A path name that is not registered.
    #[error("unknown path {0:?}")]
    UnknownPathName(String),
    /// A path id that is not registered.
    #[error("unknown path {0}")]
    UnknownPath(PathId),
    /// The path table is full.
    #[error("path table full ({MAX_PATHS} paths)")]
    PathTableFull,
    /// A VM's affinity names the path.
    #[error("path {path:?} is in the affinity of VM {vm:?}; change that VM's path policy first")]
    PathInUse {
        /// Path name.
        path: String,
        /// VM name.
        vm: String,
    },
    /// The path still has I/O outstanding.
    #[error("path {path:?} has {outstanding} I/Os outstanding")]
    PathBusy {
        /// Path name.
        path: String,
        /// Outstanding I/Os.
        outstanding: u32,
    },
    /// Admission control refused a reservation.
    #[error(
        "reservation refused for VM {vm:?}: {scope} reservations would total {total} {unit} \
         but the paths can carry {capacity} {unit} ({pct}% of estimated capacity)"
    )]
    Admission {
        /// VM name.
        vm: String,
        /// `IOPS` or `MB/s`.
        unit: &'static str,
        /// `all` or `this VM's allowed paths`.
        scope: &'static str,
        /// Reservations including the new one.
        total: u64,
        /// What the paths can carry.
        capacity: u64,
        /// `admission_pct`.
        pct: u32,
    },
    /// The VM still has requests held or in flight.
    #[error(
        "VM {vm:?} is busy: {held} requests held, {inflight} in flight (detach and drain it first)"
    )]
    VmBusy {
        /// VM name.
        vm: String,
        /// Held requests.
        held: u64,
        /// In-flight requests.
        inflight: u64,
    },
    /// Shard index out of range.
    #[error("shard {index} does not exist (scheduler has {shards})")]
    ShardIndex {
        /// Requested index.
        index: usize,
        /// Configured shards.
        shards: usize,
    },
    /// The shard handle is already taken by another reactor.
    #[error("shard {0} is already taken")]
    ShardTaken(usize),
}

/// Why a migrate recommendation was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrateReason {
    /// The VM has no usable path (or is suspended by its failover policy).
    PathsLost,
    /// Paths are usable but over-committed.
    Overcommitted,
}

/// Events for the management API's event stream; the daemon drains them with
/// [`Scheduler::pop_event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SchedEvent {
    /// The VM's reservation has been unmet for the configured window.
    VmMigrateRecommended {
        /// VM handle.
        vm: VmId,
        /// VM name.
        name: String,
        /// Cause.
        reason: MigrateReason,
        /// Measured IOPS over the last interval.
        measured_iops: u64,
        /// Reserved IOPS (0 = none).
        reserved_iops: u64,
        /// Measured bytes/s over the last interval.
        measured_bps: u64,
        /// Reserved bytes/s (0 = none).
        reserved_bps: u64,
    },
    /// The condition behind a recommendation ended.
    VmMigrateCleared {
        /// VM handle.
        vm: VmId,
        /// VM name.
        name: String,
    },
    /// The VM was suspended: its frontend must stop pulling requests.
    VmSuspended {
        /// VM handle.
        vm: VmId,
        /// VM name.
        name: String,
        /// Cause.
        reason: SuspendReason,
    },
    /// The VM runs again.
    VmResumed {
        /// VM handle.
        vm: VmId,
        /// VM name.
        name: String,
    },
    /// A path changed state.
    PathStateChanged {
        /// Path id.
        path: PathId,
        /// Path name.
        name: String,
        /// Previous state.
        old: PathState,
        /// New state.
        new: PathState,
    },
}

/// Per-VM counters of one shard. Each is written by its shard only (plain load + store),
/// read by the control plane.
#[derive(Debug, Default)]
pub(crate) struct VmCounters {
    pub dispatched_ios: AtomicU64,
    pub dispatched_bytes: AtomicU64,
    pub failed: AtomicU64,
    pub held: AtomicU64,
    /// Completions reported for it (in flight = dispatched − completed).
    pub completed_ios: AtomicU64,
}

/// Single-writer increment (the owning shard is the only writer).
#[inline]
pub(crate) fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub T);

/// What one shard publishes to the others.
#[derive(Debug)]
pub(crate) struct ShardPublic {
    claimed: AtomicBool,
    /// Bit t set: the shard has requests waiting for capacity on target t (bit 63 = any).
    pub contended: Padded<AtomicU64>,
    /// Per target: best priority class waiting (PUB_NONE if none) and its smallest start tag.
    pub pub_class: Box<[AtomicU32]>,
    pub pub_key: Box<[AtomicU64]>,
    /// Per target: VM of that smallest start tag.
    pub pub_vm: Box<[AtomicU32]>,
    /// Per class: smallest start tag waiting on the shard (valid where `pub_vset` has the bit).
    pub pub_vmin: [AtomicU64; PriorityClass::COUNT],
    pub pub_vset: AtomicU32,
    /// `now` of the last publication (stale publications are ignored by the gate).
    pub pub_time: AtomicU64,
    pub counters: Arc<[VmCounters]>,
}

#[derive(Debug, Default, Clone)]
struct Monitor {
    last_time: Option<u64>,
    last_ios: u64,
    last_bytes: u64,
    unmet_since: Option<u64>,
    recommended: bool,
}

#[derive(Debug, Clone)]
struct VmRec {
    spec: VmSpec,
    gen: u32,
    affinity: u64,
    home: Option<u16>,
    mon: Monitor,
}

#[derive(Debug)]
struct Control {
    vms: Vec<Option<VmRec>>,
    gens: Vec<u32>,
    by_name: HashMap<String, u32>,
    paths: Vec<Option<PathSpec>>,
    path_by_name: HashMap<String, u16>,
    placed_iops: Vec<u64>,
}

/// Derived constants the shards use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Derived {
    pub io_cost_bytes: u64,
    /// Cross-shard slack in virtual-time units.
    pub slack_v: u64,
    pub resv_catchup_ns: u64,
    /// How far a limit tag may lag real time: the larger of this many request intervals
    /// and `limit_catchup_ns` (both 0 = strict).
    pub limit_catchup: u64,
    pub limit_catchup_ns: u64,
}

/// The scheduler shared by all reactors. Create it with [`Scheduler::new`], hand each
/// reactor its [`Shard`] with [`Scheduler::shard`], drive the control plane from the
/// management thread.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pub(crate) derived: Derived,
    pub(crate) vms: Box<[VmShared]>,
    /// Indexed by path id (< `MAX_PATHS`); one spare slot so that `p & 63` needs no
    /// bounds check on the request path (the spare is never present).
    pub(crate) paths: Box<[PathLoad; NT]>,
    pub(crate) shards: Box<[ShardPublic]>,
    /// Per target (path, or `ANY`): how many shards have requests waiting for it. A
    /// shard's route-now check reads two of these instead of every other shard's mask
    /// (the cost stays flat in the number of reactors); they change only when a shard's
    /// backlog for a target appears or empties.
    pub(crate) contenders: Box<[AtomicU32; NT]>,
    /// Bumped on every control-plane change; reactors re-read state when it moves.
    pub(crate) epoch: AtomicU64,
    pub(crate) opt_mask: AtomicU64,
    pub(crate) nonopt_mask: AtomicU64,
    /// Global virtual time (largest start tag dispatched by the proportional phase).
    pub(crate) vtime: AtomicU64,
    events: ArrayQueue<SchedEvent>,
    events_dropped: AtomicU64,
    control: Mutex<Control>,
}

fn bit(p: usize) -> u64 {
    1u64 << p
}

impl Scheduler {
    /// Builds a scheduler with `cfg.shards` shards and no VMs or paths.
    pub fn new(cfg: SchedulerConfig) -> Result<Arc<Scheduler>, SchedError> {
        cfg.validate()?;
        let n = cfg.max_vms as usize;
        let shards = (0..cfg.shards)
            .map(|_| ShardPublic {
                claimed: AtomicBool::new(false),
                contended: Padded(AtomicU64::new(0)),
                pub_class: (0..NT).map(|_| AtomicU32::new(PUB_NONE)).collect(),
                pub_key: (0..NT).map(|_| AtomicU64::new(0)).collect(),
                pub_vm: (0..NT).map(|_| AtomicU32::new(u32::MAX)).collect(),
                pub_time: AtomicU64::new(0),
                pub_vmin: Default::default(),
                pub_vset: AtomicU32::new(0),
                counters: (0..n)
                    .map(|_| VmCounters::default())
                    .collect::<Vec<_>>()
                    .into(),
            })
            .collect();
        // One 4 KiB request at 1000 shares, in virtual-time units.
        let unit = ((u64::from(cfg.io_cost_bytes) + 4096).div_ceil(512)) * ((1u64 << 30) / 1000);
        let derived = Derived {
            io_cost_bytes: cfg.io_cost_bytes.into(),
            slack_v: unit * u64::from(cfg.cross_shard_slack),
            resv_catchup_ns: cfg.reservation_catchup_us * 1000,
            limit_catchup: cfg.limit_catchup.into(),
            limit_catchup_ns: u64::from(cfg.limit_catchup_us) * 1000,
        };
        let vms: Box<[VmShared]> = (0..n).map(|_| VmShared::default()).collect();
        for v in vms.iter() {
            v.reset_tags();
        }
        Ok(Arc::new(Scheduler {
            events: ArrayQueue::new(cfg.event_queue_len as usize),
            derived,
            vms,
            paths: Box::new(std::array::from_fn(|_| PathLoad::default())),
            shards,
            contenders: Box::new(std::array::from_fn(|_| AtomicU32::new(0))),
            epoch: AtomicU64::new(1),
            opt_mask: AtomicU64::new(0),
            nonopt_mask: AtomicU64::new(0),
            vtime: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            control: Mutex::new(Control {
                vms: vec![None; n],
                gens: vec![0; n],
                by_name: HashMap::new(),
                paths: vec![None; MAX_PATHS],
                path_by_name: HashMap::new(),
                placed_iops: vec![0; MAX_PATHS],
            }),
            cfg,
        }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Takes shard `index` for one reactor. Each shard can be held by one owner at a time
    /// (it is released when the [`Shard`] is dropped).
    pub fn shard(self: &Arc<Self>, index: usize) -> Result<Shard, SchedError> {
        let p = self.shards.get(index).ok_or(SchedError::ShardIndex {
            index,
            shards: self.shards.len(),
        })?;
        if p.claimed.swap(true, AcqRel) {
            return Err(SchedError::ShardTaken(index));
        }
        Ok(Shard::new(Arc::clone(self), index))
    }

    pub(crate) fn release_shard(&self, index: usize) {
        if let Some(p) = self.shards.get(index) {
            p.claimed.store(false, Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock cannot leave Control half-updated in a way that
        // matters more than refusing all further management; keep serving.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_event(&self, e: SchedEvent) {
        if self.events.force_push(e).is_some() {
            self.events_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Next pending event, oldest first.
    pub fn pop_event(&self) -> Option<SchedEvent> {
        self.events.pop()
    }

    /// Events overwritten because the daemon did not drain the queue in time.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Relaxed)
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Release);
    }

    // ----- paths -------------------------------------------------------------------------

    /// Registers a path; returns its id.
    pub fn add_path(&self, spec: PathSpec) -> Result<PathId, SchedError> {
        spec.validate()?;
        let mut c = self.lock();
        if c.path_by_name.contains_key(&spec.name) {
            return Err(SchedError::DuplicatePath(spec.name));
        }
        let idx = c
            .paths
            .iter()
            .position(Option::is_none)
            .ok_or(SchedError::PathTableFull)?;
        let pl = &self.paths[idx];
        pl.reset_load();
        pl.set_capacity(spec.capacity_iops, spec.capacity_mbps.saturating_mul(MB));
        pl.set_weight(spec.weight);
        pl.set_max_outstanding(spec.max_outstanding);
        pl.store_state(spec.state);
        pl.set_present(true);
        c.path_by_name.insert(spec.name.clone(), idx as u16);
        c.paths[idx] = Some(spec);
        self.reconcile(&mut c);
        Ok(PathId(idx as u16))
    }

    /// Unregisters a path. Refused while a VM's affinity names it or I/O is outstanding.
    pub fn remove_path(&self, id: PathId) -> Result<(), SchedError> {
        let mut c = self.lock();
        let name = c
            .paths
            .get(id.index())
            .and_then(|p| p.as_ref())
            .map(|p| p.name.clone())
            .ok_or(SchedError::UnknownPath(id))?;
        if let Some(vm) = c
            .vms
            .iter()
            .flatten()
            .find(|v| v.affinity & bit(id.index()) != 0)
        {
            return Err(SchedError::PathInUse {
                path: name,
                vm: vm.spec.name.clone(),
            });
        }
        let pl = &self.paths[id.index()];
        let outstanding = pl.outstanding_ios();
        if outstanding > 0 {
            return Err(SchedError::PathBusy {
                path: name,
                outstanding,
            });
        }
        pl.store_state(PathState::Failed);
        pl.set_present(false);
        c.paths[id.index()] = None;
        c.path_by_name.remove(&name);
        for v in c.vms.iter_mut().flatten() {
            if v.home == Some(id.0) {
                v.home = None;
            }
        }
        self.reconcile(&mut c);
        Ok(())
    }

    /// Id of a path by name.
    pub fn path_id(&self, name: &str) -> Option<PathId> {
        self.lock().path_by_name.get(name).map(|&i| PathId(i))
    }

    /// Lock-free view of a path's load and state (None if not registered).
    pub fn path(&self, id: PathId) -> Option<&PathLoad> {
        self.paths.get(id.index()).filter(|p| p.present())
    }

    /// Changes a path's state (fed by the multipath layer) and re-routes, holds or
    /// suspends VMs accordingly.
    pub fn set_path_state(&self, id: PathId, state: PathState) -> Result<(), SchedError> {
        let mut c = self.lock();
        let name = c
            .paths
            .get(id.index())
            .and_then(|p| p.as_ref())
            .map(|p| p.name.clone())
            .ok_or(SchedError::UnknownPath(id))?;
        let pl = &self.paths[id.index()];
        let old = pl.state();
        if old == state {
            return Ok(());
        }
        pl.store_state(state);
        if let Some(Some(spec)) = c.paths.get_mut(id.index()) {
            spec.state = state;
        }
        self.push_event(SchedEvent::PathStateChanged {
            path: id,
            name,
            old,
            new: state,
        });
        self.reconcile(&mut c);
        Ok(())
    }

    /// "Failover started" on a path: requests bound for it are re-routed, held or their VM
    /// suspended, per VM policy.
    pub fn failover_started(&self, id: PathId) -> Result<(), SchedError> {
        self.set_path_state(id, PathState::FailingOver)
    }

    /// "Failover finished": the path is usable again in `state`.
    pub fn failover_finished(&self, id: PathId, state: PathState) -> Result<(), SchedError> {
        self.set_path_state(id, state)
    }

    /// Changes a path's selector weight (1..=100) and scheduler queue depth.
    pub fn set_path_tuning(
        &self,
        id: PathId,
        weight: u32,
        max_outstanding: u32,
    ) -> Result<(), SchedError> {
        let mut c = self.lock();
        let spec = c
            .paths
            .get_mut(id.index())
            .and_then(|p| p.as_mut())
            .ok_or(SchedError::UnknownPath(id))?;
        let mut n = spec.clone();
        n.weight = weight;
        n.max_outstanding = max_outstanding;
        n.validate()?;
        *spec = n;
        self.paths[id.index()].set_weight(weight);
        self.paths[id.index()].set_max_outstanding(max_outstanding);
        Ok(())
    }

    /// Snapshots of all paths.
    pub fn paths(&self) -> Vec<PathInfo> {
        let c = self.lock();
        c.paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let spec = p.as_ref()?;
                let pl = &self.paths[i];
                Some(PathInfo {
                    id: PathId(i as u16),
                    name: spec.name.clone(),
                    state: pl.state(),
                    outstanding_ios: pl.outstanding_ios(),
                    outstanding_bytes: pl.outstanding_bytes(),
                    ewma_service_ns: pl.ewma_service_ns(),
                    capacity_iops: pl.capacity_iops(),
                    capacity_bps: pl.capacity_bps(),
                    weight: pl.weight(),
                    max_outstanding: pl.max_outstanding(),
                    completed_ios: pl.completed_ios(),
                    placed_reservation_iops: c.placed_iops[i],
                })
            })
            .collect()
    }

    // ----- VMs ---------------------------------------------------------------------------

    fn resolve_affinity(c: &Control, p: &PathPolicySpec) -> Result<u64, SchedError> {
        let mut mask = 0;
        for name in &p.affinity {
            let i = c
                .path_by_name
                .get(name)
                .ok_or_else(|| SchedError::UnknownPathName(name.clone()))?;
            mask |= bit(usize::from(*i));
        }
        Ok(mask)
    }

    /// Paths whose capacity counts for admission (registered, not failed/inaccessible).
    fn admission_capacity(&self, c: &Control, mask: u64) -> (u64, u64) {
        let (mut iops, mut bps) = (0u64, 0u64);
        for (i, p) in c.paths.iter().enumerate() {
            if p.is_none() || (mask != 0 && mask & bit(i) == 0) {
                continue;
            }
            let pl = &self.paths[i];
            if matches!(pl.state(), PathState::Failed | PathState::Inaccessible) {
                continue;
            }
            iops = iops.saturating_add(pl.capacity_iops());
            bps = bps.saturating_add(pl.capacity_bps());
        }
        let pct = u64::from(self.cfg.admission_pct);
        (iops / 100 * pct, bps / 100 * pct)
    }

    /// Admission control for `spec` (replacing VM `skip`, if any).
    fn admit(
        &self,
        c: &Control,
        spec: &VmSpec,
        affinity: u64,
        skip: Option<u32>,
    ) -> Result<(), SchedError> {
        if spec.reservation.is_none() {
            return Ok(());
        }
        let pct = self.cfg.admission_pct;
        let (cap_iops, cap_bps) = self.admission_capacity(c, 0);
        let (own_iops, own_bps) = self.admission_capacity(c, affinity);
        let r_iops = spec.reservation.iops.unwrap_or(0);
        let r_bps = spec.reservation.mbps.unwrap_or(0).saturating_mul(MB);
        let (mut t_iops, mut t_bps) = (r_iops, r_bps);
        for (i, v) in c.vms.iter().enumerate() {
            if let Some(v) = v {
                if Some(i as u32) != skip {
                    t_iops = t_iops.saturating_add(v.spec.reservation.iops.unwrap_or(0));
                    t_bps = t_bps
                        .saturating_add(v.spec.reservation.mbps.unwrap_or(0).saturating_mul(MB));
                }
            }
        }
        let refuse = |unit, scope, total, capacity| SchedError::Admission {
            vm: spec.name.clone(),
            unit,
            scope,
            total,
            capacity,
            pct,
        };
        if r_iops > own_iops {
            return Err(refuse("IOPS", "this VM's allowed paths:", r_iops, own_iops));
        }
        if r_bps > own_bps {
            return Err(refuse(
                "MB/s",
                "this VM's allowed paths:",
                r_bps / MB,
                own_bps / MB,
            ));
        }
        if t_iops > cap_iops {
            return Err(refuse("IOPS", "all", t_iops, cap_iops));
        }
        if t_bps > cap_bps {
            return Err(refuse("MB/s", "all", t_bps / MB, cap_bps / MB));
        }
        Ok(())
    }

    /// Spreads vm-affinity VMs: the allowed path with the least shares per capacity homed
    /// on it (optimized paths first).
    fn choose_home(&self, c: &Control, affinity: u64, skip: Option<u32>) -> Option<u16> {
        let mut load = [0u64; MAX_PATHS];
        for (i, v) in c.vms.iter().enumerate() {
            if let Some(v) = v {
                if Some(i as u32) != skip {
                    if let Some(h) = v.home {
                        load[usize::from(h)] += u64::from(v.spec.shares);
                    }
                }
            }
        }
        let mut best: Option<(u8, u128, u16)> = None;
        for (i, p) in c.paths.iter().enumerate() {
            if p.is_none() || (affinity != 0 && affinity & bit(i) == 0) {
                continue;
            }
            let pl = &self.paths[i];
            let tier = match pl.state() {
                PathState::Optimized => 0,
                PathState::NonOptimized => 1,
                PathState::Connecting | PathState::FailingOver => 2,
                PathState::Inaccessible | PathState::Failed => 3,
            };
            // Compare load/capacity without division: load × 2^20 / capacity.
            let score = (u128::from(load[i]) << 20) / u128::from(pl.capacity_iops().max(1));
            if best.is_none_or(|(bt, bs, _)| (tier, score) < (bt, bs)) {
                best = Some((tier, score, i as u16));
            }
        }
        best.map(|b| b.2)
    }

    /// Creates a VM. Refused if the name exists, the spec is invalid, an affinity path is
    /// unknown, or admission control cannot carry its reservation.
    pub fn create_vm(&self, spec: VmSpec) -> Result<VmId, SchedError> {
        spec.validate()?;
        let mut c = self.lock();
        if c.by_name.contains_key(&spec.name) {
            return Err(SchedError::DuplicateVm(spec.name));
        }
        let affinity = Self::resolve_affinity(&c, &spec.path_policy)?;
        self.admit(&c, &spec, affinity, None)?;
        let idx = c
            .vms
            .iter()
            .position(Option::is_none)
            .ok_or(SchedError::VmTableFull(self.cfg.max_vms))?;
        let gen = c.gens[idx].wrapping_add(1).max(1);
        c.gens[idx] = gen;
        let home = if spec.path_policy.selector == SelectorSpec::VmAffinity {
            self.choose_home(&c, affinity, None)
        } else {
            None
        };
        let shared = &self.vms[idx];
        shared.reset_tags();
        // Start the proportional tag at the current virtual time: no credit, no debt.
        shared.tags.p.store(self.vtime.load(Relaxed), Relaxed);
        shared.publish(&VmParams::from_spec(&spec, gen, affinity));
        c.by_name.insert(spec.name.clone(), idx as u32);
        c.vms[idx] = Some(VmRec {
            spec,
            gen,
            affinity,
            home,
            mon: Monitor::default(),
        });
        self.reconcile(&mut c);
        Ok(VmId {
            index: idx as u32,
            gen,
        })
    }

    fn rec(c: &mut Control, vm: VmId) -> Result<&mut VmRec, SchedError> {
        c.vms
            .get_mut(vm.index as usize)
            .and_then(|v| v.as_mut())
            .filter(|v| v.gen == vm.gen)
            .ok_or(SchedError::UnknownVm(vm))
    }

    /// Sums a VM's per-shard counters: (dispatched ios, bytes, failed, held, inflight).
    fn counters(&self, idx: usize) -> (u64, u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0, 0);
        for s in self.shards.iter() {
            let k = &s.counters[idx];
            t.0 += k.dispatched_ios.load(Relaxed);
            t.1 += k.dispatched_bytes.load(Relaxed);
            t.2 += k.failed.load(Relaxed);
            t.3 += k.held.load(Relaxed);
            let done = k.completed_ios.load(Relaxed);
            t.4 += k.dispatched_ios.load(Relaxed).saturating_sub(done);
        }
        t
    }

    /// Deletes a VM. Refused while it has requests held or in flight; detach its frontend
    /// (or suspend it) and let it drain first. Requests that still reach a reactor for a
    /// deleted VM are failed back, never lost.
    pub fn delete_vm(&self, vm: VmId) -> Result<(), SchedError> {
        let mut c = self.lock();
        let rec = Self::rec(&mut c, vm)?;
        let name = rec.spec.name.clone();
        let (_, _, _, held, inflight) = self.counters(vm.index as usize);
        if held > 0 || inflight > 0 {
            return Err(SchedError::VmBusy {
                vm: name,
                held,
                inflight,
            });
        }
        c.vms[vm.index as usize] = None;
        c.by_name.remove(&name);
        self.vms[vm.index as usize].publish(&VmParams::DEAD);
        for s in self.shards.iter() {
            let k = &s.counters[vm.index as usize];
            for a in [
                &k.dispatched_ios,
                &k.dispatched_bytes,
                &k.failed,
                &k.completed_ios,
            ] {
                a.store(0, Relaxed);
            }
        }
        self.reconcile(&mut c);
        Ok(())
    }

    /// `vm_set_qos`: changes shares / reservation / limit / priority / failover / max_held
    /// without stopping I/O. A larger reservation passes admission control first.
    pub fn set_qos(&self, vm: VmId, update: &VmQosUpdate) -> Result<(), SchedError> {
        let mut c = self.lock();
        let rec = Self::rec(&mut c, vm)?.clone();
        let spec = rec.spec.with_update(update)?;
        self.admit(&c, &spec, rec.affinity, Some(vm.index))?;
        self.vms[vm.index as usize].publish(&VmParams::from_spec(&spec, vm.gen, rec.affinity));
        Self::rec(&mut c, vm)?.spec = spec;
        self.reconcile(&mut c);
        Ok(())
    }

    /// `vm_set_path_policy`: changes selector and affinity without stopping I/O.
    pub fn set_path_policy(&self, vm: VmId, policy: PathPolicySpec) -> Result<(), SchedError> {
        policy.validate()?;
        let mut c = self.lock();
        let rec = Self::rec(&mut c, vm)?.clone();
        let affinity = Self::resolve_affinity(&c, &policy)?;
        let mut spec = rec.spec.clone();
        spec.path_policy = policy;
        self.admit(&c, &spec, affinity, Some(vm.index))?;
        let home = if spec.path_policy.selector == SelectorSpec::VmAffinity {
            match rec.home {
                Some(h) if affinity == 0 || affinity & bit(h.into()) != 0 => Some(h),
                _ => self.choose_home(&c, affinity, Some(vm.index)),
            }
        } else {
            None
        };
        self.vms[vm.index as usize].publish(&VmParams::from_spec(&spec, vm.gen, affinity));
        let r = Self::rec(&mut c, vm)?;
        r.spec = spec;
        r.affinity = affinity;
        r.home = home;
        self.reconcile(&mut c);
        Ok(())
    }

    /// `vm_suspend`: the frontend stops pulling, held requests stay held, in-flight I/O
    /// completes.
    pub fn suspend_vm(&self, vm: VmId) -> Result<(), SchedError> {
        let mut c = self.lock();
        let name = Self::rec(&mut c, vm)?.spec.name.clone();
        let old = self.vms[vm.index as usize]
            .tags
            .flags
            .fetch_or(FLAG_ADMIN, AcqRel);
        if old & FLAG_ADMIN == 0 {
            self.push_event(SchedEvent::VmSuspended {
                vm,
                name,
                reason: SuspendReason::Admin,
            });
            self.bump_epoch();
        }
        Ok(())
    }

    /// `vm_resume`: clears an operator suspension (a failover suspension stays until a
    /// path can serve the VM).
    pub fn resume_vm(&self, vm: VmId) -> Result<(), SchedError> {
        let mut c = self.lock();
        let name = Self::rec(&mut c, vm)?.spec.name.clone();
        let old = self.vms[vm.index as usize]
            .tags
            .flags
            .fetch_and(!FLAG_ADMIN, AcqRel);
        if old & FLAG_ADMIN != 0 {
            if old & FLAG_FAILOVER == 0 {
                self.push_event(SchedEvent::VmResumed { vm, name });
            }
            self.bump_epoch();
        }
        Ok(())
    }

    /// Handle of a VM by name.
    pub fn vm_id(&self, name: &str) -> Option<VmId> {
        let c = self.lock();
        let idx = *c.by_name.get(name)?;
        c.vms[idx as usize].as_ref().map(|r| VmId {
            index: idx,
            gen: r.gen,
        })
    }

    fn info(&self, idx: usize, r: &VmRec) -> VmInfo {
        let tags = &self.vms[idx].tags;
        let flags = tags.flags.load(Relaxed);
        let mut suspended = Vec::new();
        if flags & FLAG_ADMIN != 0 {
            suspended.push(SuspendReason::Admin);
        }
        if flags & FLAG_FAILOVER != 0 {
            suspended.push(SuspendReason::Failover);
        }
        let serving = tags.serving.load(Relaxed);
        let (ios, bytes, failed, held, inflight) = self.counters(idx);
        VmInfo {
            id: VmId {
                index: idx as u32,
                gen: r.gen,
            },
            spec: r.spec.clone(),
            suspended,
            serving_path: (serving != NO_PATH).then_some(PathId(serving as u16)),
            home_path: r.home.map(PathId),
            held,
            inflight,
            dispatched_ios: ios,
            dispatched_bytes: bytes,
            failed_ios: failed,
            migrate_recommended: r.mon.recommended,
        }
    }

    /// Snapshot of one VM.
    pub fn vm(&self, vm: VmId) -> Option<VmInfo> {
        let c = self.lock();
        let r = c.vms.get(vm.index as usize)?.as_ref()?;
        (r.gen == vm.gen).then(|| self.info(vm.index as usize, r))
    }

    /// `vm_get_vms`: snapshots of all VMs, by table index.
    pub fn vms(&self) -> Vec<VmInfo> {
        let c = self.lock();
        c.vms
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| self.info(i, r)))
            .collect()
    }

    /// True if the VM is suspended (operator or failover); the frontend uses
    /// [`Shard::should_pull`] on its hot path instead.
    pub fn is_suspended(&self, vm: VmId) -> bool {
        self.vms
            .get(vm.index as usize)
            .is_some_and(|v| v.tags.flags.load(Relaxed) != 0)
    }

    // ----- failover reconciliation -------------------------------------------------------

    /// Recomputes usable path masks, serving paths of vm-affinity VMs and failover
    /// suspensions, then bumps the epoch so reactors re-evaluate held requests.
    fn reconcile(&self, c: &mut Control) {
        let (mut opt, mut nonopt, mut present) = (0u64, 0u64, 0u64);
        for (i, p) in c.paths.iter().enumerate() {
            if p.is_none() {
                continue;
            }
            present |= bit(i);
            match self.paths[i].state() {
                PathState::Optimized => opt |= bit(i),
                PathState::NonOptimized => nonopt |= bit(i),
                _ => {}
            }
        }
        self.opt_mask.store(opt, Relaxed);
        self.nonopt_mask.store(nonopt, Relaxed);
        let pct = u64::from(self.cfg.admission_pct);
        let cap = |i: usize| self.paths[i].capacity_iops() / 100 * pct;
        let mut placed = vec![0u64; MAX_PATHS];
        let mut events = Vec::new();
        for (idx, slot) in c.vms.iter().enumerate() {
            let Some(r) = slot else { continue };
            let allowed = if r.affinity == 0 { present } else { r.affinity };
            let usable = (opt | nonopt) & allowed;
            let tier = if opt & allowed != 0 {
                opt & allowed
            } else {
                nonopt & allowed
            };
            let r_iops = r.spec.reservation.iops.unwrap_or(0);
            let suspend_policy = r.spec.failover == FailoverPolicy::Suspend;
            let mut serving = NO_PATH;
            let mut serve_ok = usable != 0;
            if r.spec.path_policy.selector == SelectorSpec::VmAffinity {
                if let Some(h) = r.home.filter(|&h| usable & bit(h.into()) != 0) {
                    serving = u32::from(h);
                } else {
                    // Home lost: the tier path with the most spare reservation capacity.
                    let best = (0..MAX_PATHS)
                        .filter(|&i| tier & bit(i) != 0)
                        .max_by_key(|&i| (cap(i).saturating_sub(placed[i]), std::cmp::Reverse(i)));
                    match best {
                        Some(i)
                            if !suspend_policy || cap(i).saturating_sub(placed[i]) >= r_iops =>
                        {
                            serving = i as u32;
                        }
                        _ => serve_ok = false,
                    }
                }
                if serving != NO_PATH {
                    placed[serving as usize] += r_iops;
                }
            } else if suspend_policy && r_iops > 0 {
                let total: u64 = (0..MAX_PATHS)
                    .filter(|&i| usable & bit(i) != 0)
                    .map(cap)
                    .sum();
                serve_ok &= total >= r_iops;
            }
            let tags = &self.vms[idx].tags;
            tags.serving.store(serving, Relaxed);
            let want_fo = suspend_policy && !serve_ok;
            let id = VmId {
                index: idx as u32,
                gen: r.gen,
            };
            let old = if want_fo {
                tags.flags.fetch_or(FLAG_FAILOVER, AcqRel)
            } else {
                tags.flags.fetch_and(!FLAG_FAILOVER, AcqRel)
            };
            let was_fo = old & FLAG_FAILOVER != 0;
            if want_fo && !was_fo {
                events.push(SchedEvent::VmSuspended {
                    vm: id,
                    name: r.spec.name.clone(),
                    reason: SuspendReason::Failover,
                });
            } else if !want_fo && was_fo && old & FLAG_ADMIN == 0 {
                events.push(SchedEvent::VmResumed {
                    vm: id,
                    name: r.spec.name.clone(),
                });
            }
        }
        c.placed_iops = placed;
        for e in events {
            self.push_event(e);
        }
        self.bump_epoch();
    }

    // ----- monitor -----------------------------------------------------------------------

    /// Periodic housekeeping; call every 10–100 ms with the current time. Evaluates
    /// reservations for migrate recommendations (raised after `migrate_window_ms` of
    /// shortfall, cleared when it ends) and keeps idle VMs' tags near virtual time.
    pub fn tick(&self, now: u64) {
        let mut c = self.lock();
        let tol = u64::from(self.cfg.migrate_tolerance_pct);
        let window = self.cfg.migrate_window_ms.saturating_mul(1_000_000);
        let opt = self.opt_mask.load(Relaxed);
        let nonopt = self.nonopt_mask.load(Relaxed);
        let present: u64 = c
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.is_some())
            .fold(0, |m, (i, _)| m | bit(i));
        let vt = self.vtime.load(Relaxed);
        let mut events = Vec::new();
        for (idx, slot) in c.vms.iter_mut().enumerate() {
            let Some(r) = slot else { continue };
            // Keep an idle VM's proportional tag within 2^60 of virtual time so wrap-around
            // comparisons stay valid (it would be moved up to virtual time anyway).
            let ptag = &self.vms[idx].tags.p;
            let p = ptag.load(Relaxed);
            if before(p, vt.wrapping_sub(1 << 60)) {
                let _ = ptag.compare_exchange(p, vt, Relaxed, Relaxed);
            }
            let (ios, bytes, _, held, _) = {
                let mut t = (0, 0, 0, 0, 0);
                for s in self.shards.iter() {
                    let k = &s.counters[idx];
                    t.0 += k.dispatched_ios.load(Relaxed);
                    t.1 += k.dispatched_bytes.load(Relaxed);
                    t.3 += k.held.load(Relaxed);
                }
                t
            };
            let m = &mut r.mon;
            let Some(last) = m.last_time else {
                m.last_time = Some(now);
                m.last_ios = ios;
                m.last_bytes = bytes;
                continue;
            };
            let dt = now.saturating_sub(last);
            if dt == 0 {
                continue;
            }
            let d_ios = ios.wrapping_sub(m.last_ios);
            let d_bytes = bytes.wrapping_sub(m.last_bytes);
            m.last_time = Some(now);
            m.last_ios = ios;
            m.last_bytes = bytes;
            let rate = |d: u64| (u128::from(d) * 1_000_000_000 / u128::from(dt)) as u64;
            let (m_iops, m_bps) = (rate(d_ios), rate(d_bytes));
            let r_iops = r.spec.reservation.iops.unwrap_or(0);
            let r_bps = r.spec.reservation.mbps.unwrap_or(0).saturating_mul(MB);
            let flags = self.vms[idx].tags.flags.load(Relaxed);
            let fo_suspended = flags & FLAG_FAILOVER != 0;
            // Demand: the VM is backlogged (requests held) or failover-suspended (its guest
            // queues fill while the frontend does not pull).
            let wants = held > 0 || fo_suspended;
            let short = |measured: u64, reserved: u64| {
                reserved > 0
                    && u128::from(measured) * 100 < u128::from(reserved) * u128::from(100 - tol)
            };
            let unmet =
                wants && flags & FLAG_ADMIN == 0 && (short(m_iops, r_iops) || short(m_bps, r_bps));
            if unmet {
                let since = *m.unmet_since.get_or_insert(last);
                if !m.recommended && now.saturating_sub(since) >= window {
                    m.recommended = true;
                    let allowed = if r.affinity == 0 { present } else { r.affinity };
                    let reason = if fo_suspended || (opt | nonopt) & allowed == 0 {
                        MigrateReason::PathsLost
                    } else {
                        MigrateReason::Overcommitted
                    };
                    events.push(SchedEvent::VmMigrateRecommended {
                        vm: VmId {
                            index: idx as u32,
                            gen: r.gen,
                        },
                        name: r.spec.name.clone(),
                        reason,
                        measured_iops: m_iops,
                        reserved_iops: r_iops,
                        measured_bps: m_bps,
                        reserved_bps: r_bps,
                    });
                }
            } else {
                m.unmet_since = None;
                if m.recommended {
                    m.recommended = false;
                    events.push(SchedEvent::VmMigrateCleared {
                        vm: VmId {
                            index: idx as u32,
                            gen: r.gen,
                        },
                        name: r.spec.name.clone(),
                    });
                }
            }
        }
        drop(c);
        for e in events {
            self.push_event(e);
        }
    }

    /// Current epoch (changes whenever control-plane state changes).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Acquire)
    }
}
