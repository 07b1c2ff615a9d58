//! The per-reactor shard: the request path (issue 5, "Decision per request").
//!
//! A frontend on a reactor calls [`Shard::enqueue`] for each request it pulls (route now on
//! a path, or held), [`Shard::poll`] once per reactor loop (requests released from hold
//! queues with their paths, or failed back by a `fail-after` policy) and
//! [`Shard::complete`] when the backend completes a routed request. A shard is `Send` but
//! not `Sync`: it is owned by one reactor and needs no locks. Its per-VM state (hold queues,
//! head tags, ordering structures) is private; what other reactors must see (limit,
//! reservation and share tags, path load, backlog summaries) lives in atomics of the shared
//! [`Scheduler`].

use std::collections::VecDeque;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed},
};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::path::PathId;
use crate::sched::{bump, Derived, Scheduler, ANY, NT, PUB_NONE};
use crate::spec::{PriorityClass, MAX_PATHS};
use crate::vm::{Fo, Sel, VmId, VmParams, BYTE_FP_SHIFT, NO_PATH};
use crate::wheel::{before, later, Links, List, NodeId, Wheel};

/// Shard request-path failures. None of them loses a request: the caller keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShardError {
    /// The VM handle is stale or unknown.
    #[error("unknown VM {0}")]
    UnknownVm(VmId),
    /// The VM's hold queue on this reactor is full: backpressure. Keep the request (un-pop
    /// it) and stop pulling this VM until [`Shard::should_pull`] says so.
    #[error("VM {vm}: hold queue full ({held} requests); keep the request and retry after poll")]
    QueueFull {
        /// VM.
        vm: VmId,
        /// Requests held for it on this shard.
        held: u32,
    },
    /// The path id is not registered.
    #[error("unknown path {0}")]
    UnknownPath(PathId),
}

/// Result of [`Shard::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Issue the request on this path now.
    Route(PathId),
    /// The scheduler holds it; it comes back from [`Shard::poll`].
    Held,
}

/// Why a held request is failed back instead of routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailReason {
    /// `fail-after` policy: no usable path for the configured time.
    NoPath,
    /// The VM was deleted while the request was held.
    VmDeleted,
    /// [`Shard::drain`] was called.
    Drained,
}

/// What to do with a released request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Issue it on this path.
    Route(PathId),
    /// Complete it to the guest with an error.
    Fail(FailReason),
}

/// A request leaving a hold queue (from [`Shard::poll`] or [`Shard::drain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Its VM.
    pub vm: VmId,
    /// The caller's opaque token.
    pub token: u64,
    /// Size given at enqueue.
    pub bytes: u32,
    /// Direction given at enqueue.
    pub is_write: bool,
    /// Route or fail.
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    token: u64,
    bytes: u32,
    is_write: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Queue empty.
    Idle,
    /// Head waits for the limit tag (timer node in `timers`).
    Limit,
    /// Head is in a share wheel (and maybe reservation timer / due list).
    Eligible,
    /// No usable path (share node in `path_wait`, maybe fail-after timer).
    PathWait,
    /// VM suspended (share node in `suspended`).
    Suspended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resv {
    None,
    Timer,
    Due,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reservation,
    Share(u64),
}

const NONE8: u8 = u8::MAX;
/// vm-weighted placement is re-evaluated every this many dispatches.
const VW_REBALANCE: u32 = 256;
/// Idle vm-weighted VMs release their path weight after this long.
const VW_IDLE_NS: u64 = 10_000_000;
/// How many of its own increments a VM's head may run ahead of its head on another
/// shard before the fairness gate holds it (see `gated_by_others`).
const SELF_AHEAD: u64 = 8;
/// A shard whose published backlog is older than this is ignored by the fairness gate
/// (a stalled reactor cannot idle the others for longer).
const STALE_PUBLISH_NS: u64 = 1_000_000;
/// How many of its own increments behind virtual time a VM's start tag may stay across a
/// wait for its limit (see `Gap::Limit`).
const LIMIT_LAG: u64 = 128;
/// Keeps that lag far inside the half range that wrapping tag comparisons allow.
const MAX_LAG: u64 = 1 << 60;

/// What preceded a VM's head, which decides its start tag (`claim_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Queued behind its predecessor, dispatched without a gap: SFQ keeps the finish tag.
    Cont,
    /// Queued behind its predecessor but held back by the VM's own limit: the VM stayed
    /// backlogged, so it keeps the service it is owed, up to `LIMIT_LAG` of its
    /// increments. (Starting at virtual time forfeited that debt at every wait: a VM whose
    /// limit sits a few percent above its share lost 1-5% of it. Without a bound, a VM
    /// whose limit is below its share would fall behind virtual time for ever.)
    Limit,
    /// A new busy period (queue was empty, or it waited for a path or a suspension):
    /// starts no earlier than virtual time.
    Fresh,
}

#[derive(Debug)]
struct VmLocal {
    version: u64,
    p: VmParams,
    queue: VecDeque<Entry>,
    st: St,
    target: u8,
    in_class: u8,
    resv: Resv,
    has_start: bool,
    /// How the head's start tag relates to virtual time (see `claim_start`).
    gap: Gap,
    start: u64,
    rr_path: u8,
    rr_advance: bool,
    rr_ios: u32,
    rr_bytes: u64,
    vw_path: u8,
    vw_n: u32,
    vw_weight: u64,
    last_dispatch: u64,
    nopath_since: Option<u64>,
    /// Cached at each epoch change: suspended (admin or failover flag set).
    suspended: bool,
    /// Cached at each epoch change: the serving path of a vm-affinity VM.
    serving: u32,
    /// Cached at each epoch change: the path a vm-affinity VM routes to now (its serving
    /// path when usable and allowed, and the VM not suspended), else `NONE8`.
    fast_path: u8,
}

impl VmLocal {
    fn new() -> Self {
        VmLocal {
            version: u64::MAX,
            p: VmParams::DEAD,
            queue: VecDeque::new(),
            st: St::Idle,
            target: 0,
            in_class: 0,
            resv: Resv::None,
            has_start: false,
            gap: Gap::Fresh,
            start: 0,
            rr_path: 0,
            rr_advance: false,
            rr_ios: 0,
            rr_bytes: 0,
            vw_path: NONE8,
            vw_n: 0,
            vw_weight: 0,
            last_dispatch: 0,
            nopath_since: None,
            suspended: false,
            serving: NO_PATH,
            fast_path: NONE8,
        }
    }
}

#[inline]
fn snode(i: usize) -> NodeId {
    (3 * i) as NodeId
}
#[inline]
fn rnode(i: usize) -> NodeId {
    (3 * i + 1) as NodeId
}
#[inline]
fn tnode(i: usize) -> NodeId {
    (3 * i + 2) as NodeId
}
#[inline]
fn bit(p: usize) -> u64 {
    1u64 << p
}

/// Claims one limit tag: fails with the eligible time if the tag is in the future.
/// The tag may lag `now` down to `floor` (GCRA burst tolerance, see `claim_limits`).
#[inline]
fn claim_checked(tag: &AtomicU64, inc: u64, floor: u64, now: u64) -> Result<(), u64> {
    let mut old = tag.load(Relaxed);
    loop {
        if old > now {
            return Err(old);
        }
        let new = old.max(floor) + inc;
        match tag.compare_exchange_weak(old, new, Relaxed, Relaxed) {
            Ok(_) => return Ok(()),
            Err(o) => old = o,
        }
    }
}

/// Raises a (wrapping) tag to at least `v`.
#[inline]
fn raise(tag: &AtomicU64, v: u64) {
    let mut cur = tag.load(Relaxed);
    while before(cur, v) {
        match tag.compare_exchange_weak(cur, v, Relaxed, Relaxed) {
            Ok(_) => break,
            Err(x) => cur = x,
        }
    }
}

/// Advances a tag unconditionally: `max(old, floor) + inc`.
#[inline]
fn advance(tag: &AtomicU64, inc: u64, floor: u64) {
    let mut old = tag.load(Relaxed);
    loop {
        let new = old.max(floor) + inc;
        match tag.compare_exchange_weak(old, new, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(o) => old = o,
        }
    }
}

/// The paths of `mask`, starting at bit `rot` and wrapping around (rotating tie-breaks).
#[inline(always)]
fn rotated(mask: u64, rot: u32) -> impl Iterator<Item = usize> {
    let mut m = mask.rotate_right(rot);
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let p = ((m.trailing_zeros() + rot) & 63) as usize;
            m &= m - 1;
            p
        })
    })
}

/// Empties a VM's hold queue into failure records (deleted VM, fail-after, shutdown).
fn failed_back(
    queue: &mut VecDeque<Entry>,
    vm: VmId,
    reason: FailReason,
) -> impl Iterator<Item = Released> + '_ {
    queue.drain(..).map(move |e| Released {
        vm,
        token: e.token,
        bytes: e.bytes,
        is_write: e.is_write,
        outcome: Outcome::Fail(reason),
    })
}

#[inline]
fn byte_inc_up(bytes: u32, fp: u64) -> u64 {
    (u64::from(bytes) * fp).div_ceil(1 << BYTE_FP_SHIFT)
}

#[inline]
fn byte_inc_down(bytes: u32, fp: u64) -> u64 {
    (u64::from(bytes) * fp) >> BYTE_FP_SHIFT
}

/// One reactor's handle; see the module docs.
#[derive(Debug)]
pub struct Shard {
    s: Arc<Scheduler>,
    me: usize,
    multi: bool,
    /// Indices of the other shards.
    others: Box<[usize]>,
    /// This shard's per-VM counters (shared with the control plane).
    ctr: Arc<[crate::sched::VmCounters]>,
    epoch: u64,
    /// Optimized / non-optimized path masks, cached at each epoch change.
    opt: u64,
    non: u64,
    d: Derived,
    vms: Vec<VmLocal>,
    links: Links,
    timers: Wheel,
    share: Vec<Option<Box<Wheel>>>,
    share_len: [u32; PriorityClass::COUNT],
    resv_due: Vec<List>,
    path_wait: List,
    suspended: List,
    pending: Vec<u32>,
    pending_mask: u64,
    pub_mask: u64,
    pub_targets: u64,
    held: u64,
    /// Per class: largest start tag dispatched here (this shard's virtual time).
    v_local: [u64; PriorityClass::COUNT],
    /// Per class: smallest start tag waiting on other shards (cached each poll).
    v_floor: [Option<u64>; PriorityClass::COUNT],
    /// Per class: smallest start tag waiting here (computed each poll).
    v_own: [Option<u64>; PriorityClass::COUNT],
    /// Per target and class: smallest start tag waiting (valid for targets not dirty).
    tmin: Vec<[Option<u64>; PriorityClass::COUNT]>,
    /// Targets whose share wheels or reservation lists changed since the last publish.
    dirty: u64,
    v_max: Option<u64>,
    rot: u32,
    deferred: VecDeque<Released>,
    last_now: u64,
    last_sweep: u64,
    gated: bool,
    /// What the other shards publish for the path being dispatched (class, VM, start
    /// tag), read once per path and poll by `dispatch_path`.
    gate: Vec<(u32, u32, u64)>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        if self.multi {
            let mut m = self.pending_mask;
            while m != 0 {
                let t = m.trailing_zeros() as usize;
                m &= m - 1;
                self.s.contenders[t].fetch_sub(1, Relaxed);
            }
            self.s.shards[self.me].contended.0.store(0, Relaxed);
        }
        self.s.release_shard(self.me);
    }
}

impl Shard {
    pub(crate) fn new(s: Arc<Scheduler>, me: usize) -> Shard {
        let n = s.vms.len();
        let v = s.vtime.load(Relaxed);
        Shard {
            multi: s.shards.len() > 1,
            others: (0..s.shards.len()).filter(|&j| j != me).collect(),
            ctr: Arc::clone(&s.shards[me].counters),
            d: s.derived,
            epoch: 0,
            opt: 0,
            non: 0,
            vms: (0..n).map(|_| VmLocal::new()).collect(),
            links: Links::new(3 * n),
            timers: Wheel::new(0),
            share: (0..PriorityClass::COUNT * NT).map(|_| None).collect(),
            share_len: [0; PriorityClass::COUNT],
            resv_due: vec![List::default(); NT],
            path_wait: List::default(),
            suspended: List::default(),
            pending: vec![0; NT],
            pending_mask: 0,
            pub_mask: 0,
            pub_targets: 0,
            held: 0,
            v_local: [v; PriorityClass::COUNT],
            v_floor: [None; PriorityClass::COUNT],
            v_own: [None; PriorityClass::COUNT],
            tmin: vec![[None; PriorityClass::COUNT]; NT],
            dirty: 0,
            v_max: None,
            rot: 0,
            deferred: VecDeque::new(),
            last_now: 0,
            last_sweep: 0,
            gated: false,
            gate: Vec::with_capacity(2 * s.shards.len()),
            me,
            s,
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.me
    }

    /// The scheduler this shard belongs to.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.s
    }

    /// Requests held on this shard (all VMs), including failures not yet returned by poll.
    pub fn held(&self) -> u64 {
        self.held + self.deferred.len() as u64
    }

    /// Requests of `vm` held on this shard.
    pub fn vm_held(&self, vm: VmId) -> usize {
        self.vms
            .get(vm.index as usize)
            .filter(|l| l.p.gen == vm.gen)
            .map_or(0, |l| l.queue.len())
    }

    /// True if the last poll left work undone because another shard's VMs were ahead in
    /// share order (poll again soon; the other shard releases them on its next poll).
    pub fn was_gated(&self) -> bool {
        self.gated
    }

    /// Earliest time at which a held request may become releasable by the passage of time
    /// alone (limit, reservation or fail-after timers); capacity and path events also
    /// release requests, on the next poll after they happen.
    pub fn next_deadline(&mut self) -> Option<u64> {
        self.timers.min_key(&self.links)
    }

    // ----- epoch / parameter refresh -----------------------------------------------------

    #[inline]
    fn sync(&mut self, now: u64) {
        if self.s.epoch.load(Acquire) != self.epoch {
            self.last_now = self.last_now.max(now);
            self.refresh();
        }
    }

    /// Re-reads changed VM parameters and re-evaluates every held head (suspensions,
    /// paths, limits). Runs only after a control-plane change.
    #[cold]
    fn refresh(&mut self) {
        let e = self.s.epoch.load(Acquire);
        let now = self.last_now;
        let mut complete = true;
        for i in 0..self.vms.len() {
            let sh = &self.s.vms[i];
            let ver = sh.version();
            if ver == self.vms[i].version {
                continue;
            }
            let Some((v, p)) = sh.read() else {
                complete = false;
                continue;
            };
            let old = self.vms[i].p;
            let replaced = old.live && (!p.live || p.gen != old.gen);
            if replaced {
                self.unlink(i);
                let l = &mut self.vms[i];
                let vm = VmId {
                    index: i as u32,
                    gen: old.gen,
                };
                let n = l.queue.len() as u64;
                self.deferred
                    .extend(failed_back(&mut l.queue, vm, FailReason::VmDeleted));
                self.held -= n;
                if l.vw_path != NONE8 {
                    self.s.paths[usize::from(l.vw_path)].sub_active_weight(l.vw_weight);
                }
                *l = VmLocal::new();
                let c = &self.ctr[i];
                c.held.store(0, Relaxed);
                c.completed_ios
                    .store(c.dispatched_ios.load(Relaxed), Relaxed);
            }
            let l = &mut self.vms[i];
            l.version = v;
            l.p = p;
            if l.vw_path != NONE8 && p.sel != Sel::Weighted {
                self.s.paths[usize::from(l.vw_path)].sub_active_weight(l.vw_weight);
                l.vw_path = NONE8;
            }
        }
        // Path states, serving paths and suspensions change only with the epoch: the
        // request path reads these copies instead of the shared atomics.
        self.opt = self.s.opt_mask.load(Relaxed);
        self.non = self.s.nonopt_mask.load(Relaxed);
        let usable = self.opt | self.non;
        for (l, sh) in self.vms.iter_mut().zip(self.s.vms.iter()) {
            l.suspended = sh.tags.flags.load(Relaxed) != 0;
            l.serving = sh.tags.serving.load(Relaxed);
            let allowed = if l.p.affinity == 0 { !0 } else { l.p.affinity };
            l.fast_path = match l.serving {
                sv if sv < 64
                    && l.p.sel == Sel::Affinity
                    && !l.suspended
                    && usable & allowed & bit(sv as usize) != 0 =>
                {
                    sv as u8
                }
                _ => NONE8,
            };
        }
        for i in 0..self.vms.len() {
            if self.vms[i].st != St::Idle {
                self.unlink(i);
                self.activate_head(i, now);
            }
        }
        if complete {
            self.epoch = e;
        }
    }

    // ----- path choice -------------------------------------------------------------------

    /// (usable allowed paths in the best tier, all usable allowed paths) for an affinity
    /// mask (0 = all paths).
    #[inline]
    fn tier(&self, affinity: u64) -> (u64, u64) {
        let allowed = if affinity == 0 { !0 } else { affinity };
        let opt = self.opt & allowed;
        let non = self.non & allowed;
        (if opt != 0 { opt } else { non }, opt | non)
    }

    /// Round-robin: current path, advanced when its I/O or byte budget is used up.
    #[inline]
    fn rr_select(&mut self, i: usize, tier: u64) -> usize {
        let l = &mut self.vms[i];
        let cur = usize::from(l.rr_path);
        if !l.rr_advance && tier & bit(cur) != 0 {
            return cur;
        }
        let from = if l.rr_advance { (cur + 1) % 64 } else { cur };
        let next = (from as u32 + tier.rotate_right(from as u32).trailing_zeros()) % 64;
        l.rr_path = next as u8;
        l.rr_advance = false;
        l.rr_ios = 0;
        l.rr_bytes = 0;
        next as usize
    }

    /// Load-based selectors over `tier`; `need_room` skips paths at their queue depth.
    /// Ties go to the first path after a rotating start.
    fn pick(&mut self, i: usize, tier: u64, need_room: bool) -> Option<usize> {
        let sel = self.vms[i].p.sel;
        if sel == Sel::Weighted {
            return self.pick_weighted(i, tier, need_room);
        }
        if tier & (tier.wrapping_sub(1)) == 0 {
            // One candidate.
            let p = tier.trailing_zeros() as usize;
            return (tier != 0 && (!need_room || self.s.paths[p].has_room())).then_some(p);
        }
        if sel == Sel::LeastQueue {
            return self.pick_lqd(tier, need_room);
        }
        let rot = self.rot & 63;
        self.rot = self.rot.wrapping_add(1);
        let paths = &self.s.paths;
        let score = |pl: &crate::path::PathLoad| -> u64 {
            match sel {
                Sel::LeastBytes => pl.outstanding_bytes(),
                Sel::ServiceTime => {
                    let svc = match pl.ewma_service_ns() {
                        0 => 1_000_000_000 / pl.capacity_iops().max(1),
                        s => s,
                    };
                    (u64::from(pl.outstanding_ios()) + 1) * svc.max(1) * 100
                        / u64::from(pl.weight().max(1))
                }
                _ => u64::from(pl.outstanding_ios()),
            }
        };
        let mut best = u64::MAX;
        let mut best_p = None;
        for p in rotated(tier, rot) {
            let pl = &paths[p];
            if need_room && !pl.has_room() {
                continue;
            }
            let sc = score(pl);
            if sc < best {
                best = sc;
                best_p = Some(p);
            }
        }
        best_p
    }

    /// least-queue-depth: the path of `tier` with the fewest outstanding requests (and
    /// room, with `need_room`); ties go to the first after a rotating start.
    #[inline(always)]
    fn pick_lqd(&mut self, tier: u64, need_room: bool) -> Option<usize> {
        let rot = self.rot & 63;
        self.rot = self.rot.wrapping_add(1);
        let paths = &self.s.paths;
        let mut best = i32::MAX;
        let mut best_p = None;
        for p in rotated(tier, rot) {
            let (out, max) = paths[p].load_pair();
            if out < best && (!need_room || out < max) {
                best = out;
                best_p = Some(p);
            }
        }
        best_p
    }

    /// vm-weighted: stay on the current path for a while; otherwise move to the path where
    /// this VM's share of capacity, cap × w / (active weight + w), is largest.
    fn pick_weighted(&mut self, i: usize, tier: u64, need_room: bool) -> Option<usize> {
        let l = &self.vms[i];
        let cur = l.vw_path;
        if cur != NONE8
            && tier & bit(cur.into()) != 0
            && l.vw_n < VW_REBALANCE
            && (!need_room || self.s.paths[usize::from(cur)].has_room())
        {
            return Some(cur.into());
        }
        let w = l.p.weight_eff;
        let mut best: Option<(u128, usize)> = None;
        let mut m = tier;
        while m != 0 {
            let p = m.trailing_zeros() as usize;
            m &= m - 1;
            let pl = &self.s.paths[p];
            if need_room && !pl.has_room() {
                continue;
            }
            let mut active = pl.active_weight();
            if usize::from(cur) == p {
                active = active.saturating_sub(l.vw_weight);
            }
            let score = (u128::from(pl.capacity_iops()) << 32) / u128::from(active + w);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, p));
            }
        }
        let (_, p) = best?;
        let l = &mut self.vms[i];
        if usize::from(l.vw_path) != p {
            if l.vw_path != NONE8 {
                self.s.paths[usize::from(l.vw_path)].sub_active_weight(l.vw_weight);
            }
            self.s.paths[p].add_active_weight(w);
            l.vw_path = p as u8;
            l.vw_weight = w;
        }
        l.vw_n = 0;
        Some(p)
    }

    /// The head's target: a path, `ANY`, or None when no allowed path is usable.
    fn target_for(&mut self, i: usize) -> Option<usize> {
        let (sel, affinity) = (self.vms[i].p.sel, self.vms[i].p.affinity);
        let (tier, usable) = self.tier(affinity);
        if tier == 0 {
            return None;
        }
        match sel {
            Sel::Affinity => {
                let sv = self.vms[i].serving;
                (sv != NO_PATH && usable & bit(sv as usize) != 0).then_some(sv as usize)
            }
            Sel::RoundRobin => Some(self.rr_select(i, tier)),
            // vm-weighted keeps its placement (re-evaluated every VW_REBALANCE dispatches).
            Sel::Weighted => self.pick(i, tier, false),
            _ if affinity == 0 => Some(ANY),
            _ => self.pick(i, tier, false),
        }
    }

    // ----- tags --------------------------------------------------------------------------

    /// Claims the limit tags for a dispatch of `bytes`, or returns when the VM may dispatch.
    #[inline]
    fn claim_limits(&self, i: usize, bytes: u32, now: u64) -> Result<(), u64> {
        let p = &self.vms[i].p;
        let tags = &self.s.vms[i].tags;
        let (k, t) = (self.d.limit_catchup, self.d.limit_catchup_ns);
        // How far a tag of increment `inc` may lag: the larger of k increments and t.
        // inc <= 2^42 ns (a 4 GiB request at 1 MB/s) and k <= 16: no overflow.
        let floor = |inc: u64| now.saturating_sub(inc.wrapping_mul(k).max(t));
        let bw_inc = if p.lim_byte_fp != 0 {
            let t = tags.l_bw.load(Relaxed);
            if t > now {
                return Err(t);
            }
            byte_inc_up(bytes, p.lim_byte_fp)
        } else {
            0
        };
        if p.lim_io_ns != 0 {
            claim_checked(&tags.l_io, p.lim_io_ns, floor(p.lim_io_ns), now)?;
        }
        if bw_inc != 0 {
            // Checked above; a concurrent claim from another shard can slip one request in
            // (documented cross-shard bound).
            advance(&tags.l_bw, bw_inc, floor(bw_inc));
        }
        Ok(())
    }

    #[inline]
    fn limit_wait(&self, i: usize, now: u64) -> Option<u64> {
        let p = &self.vms[i].p;
        let tags = &self.s.vms[i].tags;
        let mut at = 0;
        if p.lim_io_ns != 0 {
            at = tags.l_io.load(Relaxed);
        }
        if p.lim_byte_fp != 0 {
            at = at.max(tags.l_bw.load(Relaxed));
        }
        (at > now).then_some(at)
    }

    #[inline]
    fn resv_due_at(&self, i: usize) -> u64 {
        let p = &self.vms[i].p;
        let tags = &self.s.vms[i].tags;
        let mut at = u64::MAX;
        if p.res_io_ns != 0 {
            at = tags.r_io.load(Relaxed);
        }
        if p.res_byte_fp != 0 {
            at = at.min(tags.r_bw.load(Relaxed));
        }
        at
    }

    fn advance_resv(&self, i: usize, bytes: u32, now: u64) {
        let p = &self.vms[i].p;
        let tags = &self.s.vms[i].tags;
        let floor = now.saturating_sub(self.d.resv_catchup_ns);
        if p.res_io_ns != 0 {
            advance(&tags.r_io, p.res_io_ns, floor);
        }
        if p.res_byte_fp != 0 {
            advance(&tags.r_bw, byte_inc_down(bytes, p.res_byte_fp), floor);
        }
    }

    /// Virtual time for class `c` (SFQ: the start tag of the request being served). With
    /// requests waiting here and elsewhere: the smaller of this shard's last dispatched
    /// start and the smallest start waiting elsewhere. A shard with nothing waiting moves
    /// up to the others' smallest start, so a shard that was idle brings back no old tags.
    #[inline]
    fn vtime(&self, c: usize) -> u64 {
        match self.v_floor[c] {
            // Busy here and elsewhere: the smaller (the request being served globally).
            Some(f) if self.share_len[c] > 0 => {
                if before(f, self.v_local[c]) {
                    f
                } else {
                    self.v_local[c]
                }
            }
            Some(f) => later(self.v_local[c], f),
            None => self.v_local[c],
        }
    }

    /// How far one request of `bytes` moves VM `i`'s proportional tag: its cost
    /// (`io_cost_bytes + bytes` in 512-byte units) × 2^30 / shares.
    #[inline]
    fn share_inc(&self, i: usize, bytes: u32) -> u64 {
        (self.d.io_cost_bytes + u64::from(bytes)).div_ceil(512) * self.vms[i].p.p_inv
    }

    /// Claims the head's proportional start tag and advances the VM's finish tag by
    /// cost / shares. A head that directly follows its predecessor keeps the finish tag
    /// (SFQ); one that waited for its VM's limit keeps it too, but no further than
    /// `LIMIT_LAG` increments behind virtual time; one that starts a new busy period (after
    /// idling, a path wait, a suspension) starts no earlier than virtual time: an idle VM
    /// cannot bank credit.
    fn claim_start(&self, i: usize, bytes: u32) -> u64 {
        let inc = self.share_inc(i, bytes);
        let l = &self.vms[i];
        let c = usize::from(l.p.class);
        let floor = match l.gap {
            Gap::Cont => None,
            Gap::Limit => Some(self.limit_floor(c, inc)),
            Gap::Fresh => Some(self.vtime(c)),
        };

        let tag = &self.s.vms[i].tags.p;
        let mut old = tag.load(Relaxed);
        loop {
            let start = floor.map_or(old, |f| later(old, f));
            match tag.compare_exchange_weak(old, start.wrapping_add(inc), Relaxed, Relaxed) {
                Ok(_) => return start,
                Err(o) => old = o,
            }
        }
    }

    /// The lowest start a head of class `c` with increment `inc` may take after waiting
    /// for its VM's limit.
    fn limit_floor(&self, c: usize, inc: u64) -> u64 {
        self.vtime(c)
            .wrapping_sub(inc.saturating_mul(LIMIT_LAG).min(MAX_LAG))
    }

    /// VM `i`'s head waits for the VM's limit until `at`. A VM that was backlogged (its
    /// head queued behind a dispatched predecessor, or already holding its start tag)
    /// keeps what it is owed through the wait, within `LIMIT_LAG`.
    fn limit_block(&mut self, i: usize, at: u64) {
        let l = &mut self.vms[i];
        if l.gap == Gap::Cont || l.has_start {
            l.gap = Gap::Limit;
        }
        l.st = St::Limit;
        self.timers.insert(&mut self.links, tnode(i), at);
    }

    /// A head whose start tag was claimed before it waited for its limit comes back no
    /// further behind virtual time than `LIMIT_LAG` of its increments; the VM's finish
    /// tag moves with it.
    fn rebase_start(&mut self, i: usize, c: usize, bytes: u32) {
        let inc = self.share_inc(i, bytes);
        let f = self.limit_floor(c, inc);
        let l = &mut self.vms[i];
        if before(l.start, f) {
            l.start = f;
            // The finish tag is at least this head's: later heads follow it.
            raise(&self.s.vms[i].tags.p, f.wrapping_add(inc));
        }
    }

    // ----- structures --------------------------------------------------------------------

    #[inline]
    fn pending_inc(&mut self, t: usize) {
        self.dirty |= bit(t);
        self.pending[t] += 1;
        if self.pending[t] == 1 {
            self.pending_mask |= bit(t);
            if self.multi {
                self.s.contenders[t].fetch_add(1, Relaxed);
            }
            self.publish_mask();
        }
    }

    #[inline]
    fn pending_dec(&mut self, t: usize) {
        self.dirty |= bit(t);
        self.pending[t] -= 1;
        if self.pending[t] == 0 {
            self.pending_mask &= !bit(t);
            if self.multi {
                self.s.contenders[t].fetch_sub(1, Relaxed);
            }
            self.publish_mask();
        }
    }

    #[inline]
    fn publish_mask(&mut self) {
        if self.multi && self.pub_mask != self.pending_mask {
            self.pub_mask = self.pending_mask;
            self.s.shards[self.me]
                .contended
                .0
                .store(self.pending_mask, Relaxed);
        }
    }

    /// Removes VM `i`'s head from whatever structure holds it; state becomes Idle.
    fn unlink(&mut self, i: usize) {
        let (st, t, class, resv) = {
            let l = &self.vms[i];
            (l.st, usize::from(l.target), usize::from(l.in_class), l.resv)
        };
        match st {
            St::Idle => {}
            St::Limit => self.timers.remove(&mut self.links, tnode(i)),
            St::Eligible => {
                if self.links.is_linked(snode(i)) {
                    if let Some(w) = self.share[class * NT + t].as_mut() {
                        w.remove(&mut self.links, snode(i));
                    }
                }
                self.share_len[class] -= 1;
                match resv {
                    Resv::Timer => self.timers.remove(&mut self.links, rnode(i)),
                    Resv::Due => self.resv_due[t].remove(&mut self.links, rnode(i)),
                    Resv::None => {}
                }
                self.pending_dec(t);
            }
            St::PathWait => {
                self.path_wait.remove(&mut self.links, snode(i));
                if self.links.is_linked(tnode(i)) {
                    self.timers.remove(&mut self.links, tnode(i));
                }
            }
            St::Suspended => self.suspended.remove(&mut self.links, snode(i)),
        }
        let l = &mut self.vms[i];
        l.st = St::Idle;
        l.resv = Resv::None;
    }

    /// Places VM `i`'s head request (queue non-empty, state Idle) in the right structure.
    fn activate_head(&mut self, i: usize, now: u64) {
        let Some(head) = self.vms[i].queue.front().copied() else {
            self.vms[i].st = St::Idle;
            return;
        };
        if self.vms[i].suspended {
            self.vms[i].st = St::Suspended;
            self.vms[i].gap = Gap::Fresh;
            self.suspended.push_back(&mut self.links, snode(i), 0);
            return;
        }
        let (limited, fo, fail_timeout_ns, class, reserved) = {
            let p = &self.vms[i].p;
            (
                p.has_limit(),
                p.fo,
                p.fail_timeout_ns,
                usize::from(p.class),
                p.has_reservation(),
            )
        };
        if limited {
            if let Some(at) = self.limit_wait(i, now) {
                self.limit_block(i, at);
                return;
            }
        }
        let Some(t) = self.target_for(i) else {
            self.vms[i].gap = Gap::Fresh;
            self.vms[i].st = St::PathWait;
            self.path_wait.push_back(&mut self.links, snode(i), 0);
            if fo == Fo::FailAfter {
                let since = *self.vms[i].nopath_since.get_or_insert(now);
                let at = since.saturating_add(fail_timeout_ns);
                self.timers.insert(&mut self.links, tnode(i), at);
            }
            return;
        };
        if !self.vms[i].has_start {
            let s = self.claim_start(i, head.bytes);
            let l = &mut self.vms[i];
            l.start = s;
            l.has_start = true;
        } else if self.vms[i].gap == Gap::Limit {
            self.rebase_start(i, class, head.bytes);
        }
        self.vms[i].gap = Gap::Fresh;
        let base = self.vtime(class);
        let w = self.share[class * NT + t].get_or_insert_with(|| Box::new(Wheel::new(base)));
        let start = self.vms[i].start;
        w.insert(&mut self.links, snode(i), start);
        self.share_len[class] += 1;
        self.pending_inc(t);
        let mut resv = Resv::None;
        if reserved {
            let due = self.resv_due_at(i);
            if due <= now {
                self.resv_due[t].push_back(&mut self.links, rnode(i), due);
                resv = Resv::Due;
            } else {
                self.timers.insert(&mut self.links, rnode(i), due);
                resv = Resv::Timer;
            }
        }
        let l = &mut self.vms[i];
        l.nopath_since = None;
        l.st = St::Eligible;
        l.target = t as u8;
        l.in_class = class as u8;
        l.resv = resv;
    }
}

impl Shard {
    // ----- request path ------------------------------------------------------------------

    /// Submits a request of `vm` pulled by the frontend. `token` is the caller's opaque
    /// id; `now` is the reactor's clock in ns (monotonic). Returns the path to issue it on
    /// now, or [`Decision::Held`] (it comes back from [`Shard::poll`]). A full hold queue
    /// is an error that hands the request back (backpressure, never a drop).
    pub fn enqueue(
        &mut self,
        vm: VmId,
        token: u64,
        bytes: u32,
        is_write: bool,
        now: u64,
    ) -> Result<Decision, ShardError> {
        if self.s.epoch.load(Acquire) != self.epoch {
            self.sync(now);
        }
        let i = vm.index as usize;
        let Some(l) = self.vms.get(i) else {
            return Err(ShardError::UnknownVm(vm));
        };
        if l.p.gen != vm.gen || !l.p.live {
            return Err(ShardError::UnknownVm(vm));
        }
        if l.st == St::Idle {
            if let Some(p) = self.try_fast(i, bytes, now) {
                return Ok(Decision::Route(PathId(p as u16)));
            }
        }
        self.hold(vm, token, bytes, is_write, now)
    }

    /// The hold path of [`Shard::enqueue`]: append to the VM's FIFO (or refuse when full).
    #[inline(never)]
    fn hold(
        &mut self,
        vm: VmId,
        token: u64,
        bytes: u32,
        is_write: bool,
        now: u64,
    ) -> Result<Decision, ShardError> {
        let i = vm.index as usize;
        let l = &mut self.vms[i];
        if l.st != St::Idle && l.queue.len() as u32 >= l.p.max_held {
            return Err(ShardError::QueueFull {
                vm,
                held: l.queue.len() as u32,
            });
        }
        l.queue.push_back(Entry {
            token,
            bytes,
            is_write,
        });
        let n = l.queue.len() as u64;
        let idle = l.st == St::Idle;
        self.held += 1;
        self.ctr[i].held.store(n, Relaxed);
        if idle {
            self.activate_head(i, now);
        }
        Ok(Decision::Held)
    }

    /// Route-now check for a VM with nothing held on this shard: not suspended, path with
    /// room, no backlog competing for that path here or on other shards, under its limit.
    #[inline]
    fn try_fast(&mut self, i: usize, bytes: u32, now: u64) -> Option<usize> {
        let l = &self.vms[i];
        let (sel, limited) = (l.p.sel, l.p.has_limit());
        let path = match sel {
            Sel::Affinity => {
                if l.fast_path == NONE8 {
                    return None;
                }
                usize::from(l.fast_path)
            }
            _ if l.suspended => return None,
            Sel::RoundRobin => {
                let (tier, _) = self.tier(l.p.affinity);
                if tier == 0 {
                    return None;
                }
                self.rr_select(i, tier)
            }
            Sel::LeastQueue => self.pick_lqd(self.tier(l.p.affinity).0, true)?,
            Sel::Weighted => self.pick(i, self.tier(l.p.affinity).0, false)?,
            _ => self.pick(i, self.tier(l.p.affinity).0, true)?,
        };
        let pl = &self.s.paths[path & 63];
        if !pl.has_room() {
            return None;
        }
        let compete = bit(path) | bit(ANY);
        if self.pending_mask & compete != 0 || (self.multi && self.others_contended(path)) {
            return None;
        }
        if limited && self.claim_limits(i, bytes, now).is_err() {
            return None;
        }
        pl.on_submit(bytes);
        self.commit_vm(i, bytes, now);
        Some(path)
    }

    /// Another shard has requests waiting for `path` or for any path. Valid when this
    /// shard has none waiting for either (its own count is then not in the totals).
    #[inline(always)]
    fn others_contended(&self, path: usize) -> bool {
        let c = &self.s.contenders;
        c[path & 63].load(Relaxed) | c[ANY].load(Relaxed) != 0
    }

    /// Accounting common to every routed request.
    #[inline(always)]
    fn commit_dispatch(&mut self, i: usize, path: usize, bytes: u32, now: u64) {
        self.s.paths[path].on_submit(bytes);
        self.commit_vm(i, bytes, now);
    }

    /// The VM's side of [`Shard::commit_dispatch`].
    #[inline(always)]
    fn commit_vm(&mut self, i: usize, bytes: u32, now: u64) {
        let c = &self.ctr[i];
        let l = &mut self.vms[i];
        bump(&c.dispatched_ios, 1);
        bump(&c.dispatched_bytes, bytes.into());
        match l.p.sel {
            Sel::RoundRobin => {
                l.rr_ios += 1;
                l.rr_bytes += u64::from(bytes);
                if (l.p.rr_ios != 0 && l.rr_ios >= l.p.rr_ios)
                    || (l.p.rr_bytes != 0 && l.rr_bytes >= l.p.rr_bytes)
                {
                    l.rr_advance = true;
                }
            }
            Sel::Weighted => {
                l.vw_n += 1;
                l.last_dispatch = now;
            }
            _ => {}
        }
    }

    /// Reports the completion of a routed request: path load and service time, VM
    /// in-flight count. `service_ns` is the measured submit-to-completion time.
    pub fn complete(
        &mut self,
        vm: VmId,
        path: PathId,
        bytes: u32,
        service_ns: u64,
    ) -> Result<(), ShardError> {
        if path.index() >= MAX_PATHS {
            return Err(ShardError::UnknownPath(path));
        }
        self.s.paths[path.index() & 63].on_complete(bytes, service_ns);
        let i = vm.index as usize;
        if self.vms.get(i).is_some_and(|l| l.p.gen == vm.gen) {
            if let Some(c) = self.ctr.get(i) {
                bump(&c.completed_ios, 1);
            }
        }
        Ok(())
    }

    /// Should the frontend pull more requests of `vm` from its rings? False while the VM
    /// is suspended (operator or failover policy) or its hold queue here is full.
    #[inline]
    pub fn should_pull(&mut self, vm: VmId) -> bool {
        if self.s.epoch.load(Acquire) != self.epoch {
            self.refresh();
        }
        let i = vm.index as usize;
        self.vms.get(i).is_some_and(|l| {
            l.p.live && l.p.gen == vm.gen && (l.queue.len() as u32) < l.p.max_held && !l.suspended
        })
    }

    /// Releases held requests that may go now, appending at most `max` to `out`:
    /// reservation-due requests first, then the highest priority class in share order,
    /// while paths have room; also `fail-after` failures and requests of deleted VMs.
    /// Call once per reactor loop (it returns at once when nothing is held).
    pub fn poll(&mut self, now: u64, out: &mut Vec<Released>, max: usize) -> usize {
        self.last_now = self.last_now.max(now);
        // Nothing held, nothing to hand back or to withdraw from publication, no
        // control-plane change: the common case on a reactor whose VMs route at once.
        if self.held == 0
            && self.pub_targets == 0
            && self.deferred.is_empty()
            && self.s.epoch.load(Acquire) == self.epoch
        {
            return 0;
        }
        self.poll_held(now, out, max)
    }

    #[inline(never)]
    fn poll_held(&mut self, now: u64, out: &mut Vec<Released>, max: usize) -> usize {
        self.sync(now);
        let first = out.len();
        let limit = first.saturating_add(max);
        self.flush_deferred(out, limit);
        if self.held == 0 {
            if self.multi && self.pub_targets != 0 {
                self.publish(now);
            }
            return out.len() - first;
        }
        if self.multi {
            self.read_floors(now);
        }
        while let Some((n, key)) = self.timers.pop_due(&mut self.links, now) {
            self.on_timer(n, key, now);
        }
        self.flush_deferred(out, limit);
        if now.saturating_sub(self.last_sweep) >= VW_IDLE_NS {
            self.sweep(now);
        }
        self.gated = false;
        if self.pending_mask != 0 {
            let s = Arc::clone(&self.s);
            // The epoch-cached masks: `sync` above brought them up to date.
            let (opt, usable) = (self.opt, self.opt | self.non);
            let rot = self.rot % 64;
            self.rot = self.rot.wrapping_add(1);
            for p in rotated(usable, rot) {
                if out.len() >= limit {
                    break;
                }
                if p >= MAX_PATHS {
                    continue;
                }
                let any_ok = opt == 0 || opt & bit(p) != 0;
                if self.pending[p] == 0 && (!any_ok || self.pending[ANY] == 0) {
                    continue;
                }
                self.dispatch_path(&s, p, any_ok, now, out, limit);
            }
        }

        if self.multi {
            self.publish(now);
        }
        if let Some(v) = self.v_max.take() {
            raise(&self.s.vtime, v);
        }
        out.len() - first
    }

    fn flush_deferred(&mut self, out: &mut Vec<Released>, limit: usize) {
        while out.len() < limit {
            match self.deferred.pop_front() {
                Some(r) => out.push(r),
                None => break,
            }
        }
    }

    /// Dispatches from the queues competing for path `p` while it has room.
    fn dispatch_path(
        &mut self,
        s: &Scheduler,
        p: usize,
        any_ok: bool,
        now: u64,
        out: &mut Vec<Released>,
        limit: usize,
    ) {
        let pl = &s.paths[p];
        if self.multi {
            self.read_gate(p, now);
        }
        while out.len() < limit && pl.has_room() {
            // Reservation phase: the earliest due request.
            let rp = self.resv_due[p].front(&self.links);
            let ra = if any_ok {
                self.resv_due[ANY].front(&self.links)
            } else {
                None
            };
            let due = match (rp, ra) {
                (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
                (a, b) => a.or(b),
            };
            if let Some((n, _)) = due {
                self.dispatch_head(n as usize / 3, Phase::Reservation, p, now, out);
                continue;
            }
            // Proportional phase: highest class, smallest start tag.
            let Some((c, n, key)) = self.share_front(p, any_ok) else {
                break;
            };
            if self.multi && self.gated_by_others(c, n as usize / 3, key) {
                self.gated = true;
                return;
            }

            self.dispatch_head(n as usize / 3, Phase::Share(key), p, now, out);
        }
    }

    /// Highest-class, smallest-start head competing for path `p`: (class, node, true start).
    /// The wheels order by their (possibly clamped) keys; comparisons across wheels and
    /// shards use the heads' true start tags.
    fn share_front(&mut self, p: usize, any_ok: bool) -> Option<(usize, NodeId, u64)> {
        for c in 0..PriorityClass::COUNT {
            if self.share_len[c] == 0 {
                continue;
            }
            let kp = match self.share[c * NT + p].as_mut() {
                Some(w) if !w.is_empty() => w.peek(&self.links),
                _ => None,
            };
            let ka = match self.share[c * NT + ANY].as_mut() {
                Some(w) if any_ok && !w.is_empty() => w.peek(&self.links),
                _ => None,
            };
            let true_key =
                |x: Option<(NodeId, u64)>| x.map(|(n, _)| (n, self.vms[n as usize / 3].start));
            let cand = match (true_key(kp), true_key(ka)) {
                (Some(a), Some(b)) => Some(if before(b.1, a.1) { b } else { a }),
                (a, b) => a.or(b),
            };
            if let Some((n, k)) = cand {
                return Some((c, n, k));
            }
        }
        None
    }

    /// Cross-shard fairness gate: another shard has a reservation-due request, a
    /// higher-class request, or a same-class request older by more than the slack, waiting
    /// for the same path.
    ///
    /// Against its own head on another shard a VM gets `SELF_AHEAD` of its increments of
    /// extra slack: its requests there are no competitor, and without it a VM spread over
    /// reactors would alternate between them, one request per poll.
    fn gated_by_others(&self, class: usize, i: usize, key: u64) -> bool {
        let slack = self.d.slack_v;
        let own_slack = || {
            let bytes = self.vms[i].queue.front().map_or(0, |e| e.bytes);
            slack.saturating_add(self.share_inc(i, bytes).saturating_mul(SELF_AHEAD))
        };
        let class = class as u32 + 1;
        for &(oc, vm, k) in &self.gate {
            if oc < class {
                return true;
            }
            if oc == class {
                let s = if vm == i as u32 { own_slack() } else { slack };
                if before(k.wrapping_add(s), key) {
                    return true;
                }
            }
        }
        false
    }

    /// Snapshots, for path `p` (and `ANY`), what every other live shard that has requests
    /// waiting for it publishes: its best class (0 = reservation-due), that head's VM and
    /// start tag. The fairness gate compares against this snapshot for the rest of the
    /// poll (the published state is itself at most one poll old).
    fn read_gate(&mut self, p: usize, now: u64) {
        self.gate.clear();
        for &j in self.others.iter() {
            let Some(o) = self.s.shards.get(j) else {
                continue;
            };
            if o.contended.0.load(Relaxed) & (bit(p) | bit(ANY)) == 0 {
                continue;
            }
            if o.pub_time.load(Relaxed).saturating_add(STALE_PUBLISH_NS) < now {
                continue;
            }
            for t in [p, ANY] {
                let oc = o.pub_class[t].load(Relaxed);
                if oc != PUB_NONE {
                    let vm = o.pub_vm[t].load(Relaxed);
                    self.gate.push((oc, vm, o.pub_key[t].load(Relaxed)));
                }
            }
        }
    }

    /// Releases VM `i`'s head on path `p` (or, for `ANY` heads, the selector's choice
    /// among paths with room).
    fn dispatch_head(
        &mut self,
        i: usize,
        phase: Phase,
        p: usize,
        now: u64,
        out: &mut Vec<Released>,
    ) {
        let Some(e) = self.vms[i].queue.front().copied() else {
            self.unlink(i);
            return;
        };
        if self.vms[i].p.has_limit() {
            if let Err(at) = self.claim_limits(i, e.bytes, now) {
                self.unlink(i);
                self.limit_block(i, at);
                return;
            }
        }
        let path = if usize::from(self.vms[i].target) == ANY {
            let (tier, _) = self.tier(self.vms[i].p.affinity);
            match self.pick(i, tier, true) {
                Some(q) => q,
                None => p,
            }
        } else {
            usize::from(self.vms[i].target)
        };
        // A share-phase head followed by more requests of a VM whose next head goes back
        // to the same wheel at once (no limit or reservation to wait for, same target
        // within this epoch) is requeued in place: its wheel node is re-inserted with
        // the next start tag, and the shard's backlog accounting is left as it is.
        let requeue = matches!(phase, Phase::Share(_)) && {
            let l = &self.vms[i];
            l.queue.len() > 1
                && !l.p.has_limit()
                && !l.p.has_reservation()
                && (l.p.sel == Sel::Affinity || usize::from(l.target) == ANY)
        };
        if let Phase::Share(_) = phase {
            // Extract (not just remove) so the wheel's cursor follows virtual time.
            let l = &self.vms[i];
            let w = usize::from(l.in_class) * NT + usize::from(l.target);
            if let Some(w) = self.share[w].as_mut() {
                if w.peek(&self.links).map(|m| m.0) == Some(snode(i)) {
                    w.extract(&mut self.links, snode(i));
                } else if requeue && self.links.is_linked(snode(i)) {
                    w.remove(&mut self.links, snode(i));
                }
            }
        }
        if !requeue {
            self.unlink(i);
        }
        match phase {
            Phase::Reservation => self.advance_resv(i, e.bytes, now),
            Phase::Share(key) => {
                let c = usize::from(self.vms[i].in_class);
                self.v_local[c] = later(self.v_local[c], key);
                self.v_max = Some(self.v_max.map_or(key, |m| later(m, key)));
            }
        }
        let l = &mut self.vms[i];
        l.has_start = false;
        l.queue.pop_front();
        let n = l.queue.len();
        // SFQ: the next head continues from this one's finish tag only if it is already
        // queued. A request arriving after the queue emptied starts a new busy period at
        // max(finish, virtual time): a VM that stopped while others were served cannot
        // come back with old tags (the share wheel would clamp them to its floor and serve
        // such VMs first, in arrival order, whatever their shares).
        l.gap = if n > 0 { Gap::Cont } else { Gap::Fresh };
        let vm = VmId {
            index: i as u32,
            gen: l.p.gen,
        };
        self.held -= 1;
        self.ctr[i].held.store(n as u64, Relaxed);
        self.commit_dispatch(i, path, e.bytes, now);
        out.push(Released {
            vm,
            token: e.token,
            bytes: e.bytes,
            is_write: e.is_write,
            outcome: Outcome::Route(PathId(path as u16)),
        });
        if requeue {
            self.requeue_head(i);
        } else if n > 0 {
            self.activate_head(i, now);
        }
    }

    /// Re-inserts VM `i`'s next head in the share wheel it just left (see
    /// [`Shard::dispatch_head`]); its state stays `Eligible`.
    fn requeue_head(&mut self, i: usize) {
        let bytes = self.vms[i].queue.front().map_or(0, |e| e.bytes);
        let s = self.claim_start(i, bytes);
        let l = &mut self.vms[i];
        l.start = s;
        l.has_start = true;
        l.gap = Gap::Fresh;
        let t = usize::from(l.target);
        let w = usize::from(l.in_class) * NT + t;
        if let Some(w) = self.share[w].as_mut() {
            w.insert(&mut self.links, snode(i), s);
        }
        self.dirty |= bit(t);
    }

    fn on_timer(&mut self, n: NodeId, key: u64, now: u64) {
        let i = n as usize / 3;
        match n % 3 {
            1 => {
                let l = &self.vms[i];
                if l.st == St::Eligible && l.resv == Resv::Timer {
                    let t = usize::from(l.target);
                    self.dirty |= bit(t);
                    self.resv_due[t].push_back(&mut self.links, rnode(i), key);
                    self.vms[i].resv = Resv::Due;
                }
            }
            2 => match self.vms[i].st {
                St::Limit => {
                    self.vms[i].st = St::Idle;
                    self.activate_head(i, now);
                }
                St::PathWait => {
                    // fail-after deadline: still no path.
                    self.path_wait.remove(&mut self.links, snode(i));
                    let l = &mut self.vms[i];
                    l.st = St::Idle;
                    l.has_start = false;
                    let vm = VmId {
                        index: i as u32,
                        gen: l.p.gen,
                    };
                    let count = l.queue.len() as u64;
                    self.deferred
                        .extend(failed_back(&mut l.queue, vm, FailReason::NoPath));
                    self.held -= count;
                    let c = &self.ctr[i];
                    c.held.store(0, Relaxed);
                    bump(&c.failed, count);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Releases the path weight of vm-weighted VMs idle for a while.
    #[cold]
    fn sweep(&mut self, now: u64) {
        self.last_sweep = now;
        for (l, c) in self.vms.iter_mut().zip(self.ctr.iter()) {
            if l.vw_path != NONE8
                && c.dispatched_ios.load(Relaxed) == c.completed_ios.load(Relaxed)
                && l.queue.is_empty()
                && now.saturating_sub(l.last_dispatch) >= VW_IDLE_NS
            {
                self.s.paths[usize::from(l.vw_path)].sub_active_weight(l.vw_weight);
                l.vw_path = NONE8;
            }
        }
    }

    /// Per class, the smallest start tag waiting on this shard (from the per-target
    /// minima kept by [`Shard::publish`]; only multi-shard builds need it).
    fn own_min(&mut self) {
        let mut vmin: [Option<u64>; PriorityClass::COUNT] = [None; PriorityClass::COUNT];
        let mut m = self.pending_mask;
        while m != 0 {
            let t = m.trailing_zeros() as usize;
            m &= m - 1;
            for (c, slot) in vmin.iter_mut().enumerate() {
                if let Some(k) = self.tmin[t][c] {
                    *slot = Some(slot.map_or(k, |f| if before(k, f) { k } else { f }));
                }
            }
        }
        self.v_own = vmin;
    }

    /// Caches, per class, the smallest start tag other (live) shards have waiting.
    fn read_floors(&mut self, now: u64) {
        self.v_floor = [None; PriorityClass::COUNT];
        for (j, o) in self.s.shards.iter().enumerate() {
            if j == self.me || o.pub_time.load(Relaxed).saturating_add(STALE_PUBLISH_NS) < now {
                continue;
            }
            let set = o.pub_vset.load(Relaxed);
            for c in 0..PriorityClass::COUNT {
                if set & (1 << c) != 0 {
                    let k = o.pub_vmin[c].load(Relaxed);
                    self.v_floor[c] =
                        Some(self.v_floor[c].map_or(k, |f| if before(k, f) { k } else { f }));
                }
            }
        }
    }

    /// Publishes, per target, the best waiting class and its smallest start tag, and per
    /// class the smallest start tag waiting here (also kept in `v_own`). Targets whose
    /// structures did not change since the last call are not looked at again.
    fn publish(&mut self, now: u64) {
        let me = &self.s.shards[self.me];
        me.pub_time.store(now, Relaxed);
        let mut m = self.dirty & (self.pending_mask | self.pub_targets);
        self.dirty = 0;
        while m != 0 {
            let t = m.trailing_zeros() as usize;
            m &= m - 1;
            // Per class minimum of this target; class 0 in `pub_class` = reservation-due
            // (served before any share-phase request), then 1 + priority class index.
            let mut mins = [None; PriorityClass::COUNT];
            let mut vms = [0u32; PriorityClass::COUNT];
            for (c, slot) in mins.iter_mut().enumerate() {
                if let Some(w) = self.share[c * NT + t].as_mut() {
                    if !w.is_empty() {
                        if let Some((n, _)) = w.peek(&self.links) {
                            *slot = Some(self.vms[n as usize / 3].start);
                            vms[c] = n / 3;
                        }
                    }
                }
            }
            self.tmin[t] = mins;
            let best = match self.resv_due[t].front(&self.links) {
                Some((n, k)) => Some((0u32, k, n / 3)),
                None => mins
                    .iter()
                    .zip(vms.iter())
                    .enumerate()
                    .find_map(|(c, (k, v))| k.map(|k| (c as u32 + 1, k, *v))),
            };
            match best {
                Some((c, k, v)) => {
                    me.pub_vm[t].store(v, Relaxed);
                    me.pub_key[t].store(k, Relaxed);
                    me.pub_class[t].store(c, Relaxed);
                    self.pub_targets |= bit(t);
                }
                None => {
                    me.pub_class[t].store(PUB_NONE, Relaxed);
                    self.pub_targets &= !bit(t);
                }
            }
        }
        self.own_min();
        let me = &self.s.shards[self.me];
        let mut set = 0;
        for (c, v) in self.v_own.iter().enumerate() {
            if let Some(k) = v {
                // A head carrying limit debt (`Gap::Limit`) may start behind this shard's
                // virtual time; it must not pull the others' virtual time back with it.
                me.pub_vmin[c].store(later(*k, self.v_local[c]), Relaxed);
                set |= 1 << c;
            }
        }
        me.pub_vset.store(set, Relaxed);
    }

    /// Fails back every held request (reactor shutdown). Returns how many.
    pub fn drain(&mut self, out: &mut Vec<Released>) -> usize {
        let first = out.len();
        out.extend(self.deferred.drain(..));
        for i in 0..self.vms.len() {
            if self.vms[i].queue.is_empty() {
                continue;
            }
            self.unlink(i);
            let l = &mut self.vms[i];
            l.has_start = false;
            let vm = VmId {
                index: i as u32,
                gen: l.p.gen,
            };
            out.extend(failed_back(&mut l.queue, vm, FailReason::Drained));
            self.ctr[i].held.store(0, Relaxed);
        }
        self.held = 0;
        out.len() - first
    }
}
