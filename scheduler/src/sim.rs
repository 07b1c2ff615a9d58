//! Deterministic simulator: VMs (closed- or open-loop guests), reactors (one [`Shard`]
//! each), capacity-limited paths (a FIFO server each) and path events on a simulated clock.
//! Used by this crate's tests, its benchmark and the daemon's tests.
//!
//! It checks as it runs: per-VM FIFO order per reactor, each request released once, valid
//! life cycle (generated → enqueued → routed → completed, or failed), no enqueue error
//! other than backpressure. [`Sim::finish`] stops the guests and checks no request is lost.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use thiserror::Error;

use crate::path::PathId;
use crate::sched::{SchedError, Scheduler};
use crate::shard::{Decision, Outcome, Released, Shard, ShardError};
use crate::spec::{PathSpec, PathState, SchedulerConfig, VmSpec};
use crate::vm::VmId;

/// Simulation setup failures.
#[derive(Debug, Error)]
pub enum SimError {
    /// The scheduler refused the setup.
    #[error("scheduler: {0}")]
    Sched(#[from] SchedError),
    /// A VM names a reactor that does not exist.
    #[error("VM {vm}: reactor {shard} does not exist ({shards} configured)")]
    BadShard {
        /// VM index.
        vm: usize,
        /// Reactor.
        shard: usize,
        /// Configured reactors.
        shards: usize,
    },
    /// A VM has no reactor.
    #[error("VM {0}: no reactor given")]
    NoShard(usize),
    /// A path event names a path that does not exist.
    #[error("path event for path {0}, which does not exist")]
    BadPath(usize),
}

/// A simulated path: a FIFO server taking `per_io_ns + bytes × ns_per_kib / 1024` per I/O.
#[derive(Debug, Clone)]
pub struct SimPath {
    /// Scheduler-side spec (capacity estimates, queue depth, weight, initial state).
    pub spec: PathSpec,
    /// Fixed service time per I/O.
    pub per_io_ns: u64,
    /// Transfer time per KiB.
    pub ns_per_kib: u64,
}

impl SimPath {
    /// A path serving `iops` I/Os per second whatever their size, with queue depth 16.
    pub fn iops(name: &str, iops: u64) -> SimPath {
        let mut spec = PathSpec::new(name, iops, (iops * 4096).div_ceil(1_000_000).max(1));
        spec.max_outstanding = 16;
        SimPath {
            spec,
            per_io_ns: 1_000_000_000 / iops.max(1),
            ns_per_kib: 0,
        }
    }

    fn service_ns(&self, bytes: u32) -> u64 {
        self.per_io_ns + u64::from(bytes) * self.ns_per_kib / 1024
    }
}

/// A guest's request generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Keeps `depth` requests outstanding per reactor (backlogged when depth is large).
    Closed {
        /// Outstanding requests per reactor.
        depth: u32,
    },
    /// Submits at a fixed rate (spread over its reactors), whatever completes.
    Open {
        /// Arrival rate.
        iops: u64,
    },
}

/// A simulated VM.
#[derive(Debug, Clone)]
pub struct SimVm {
    /// Its scheduler spec.
    pub spec: VmSpec,
    /// Reactors its requests arrive on (its queues' reactors), round-robin.
    pub shards: Vec<usize>,
    /// Generator.
    pub load: Load,
    /// Request size.
    pub bytes: u32,
    /// Generation starts.
    pub start_ns: u64,
    /// Generation stops.
    pub stop_ns: u64,
}

impl SimVm {
    /// A VM on reactor 0, 4 KiB requests, running for the whole simulation.
    pub fn new(spec: VmSpec, load: Load) -> SimVm {
        SimVm {
            spec,
            shards: vec![0],
            load,
            bytes: 4096,
            start_ns: 0,
            stop_ns: u64::MAX,
        }
    }
}

/// A path state change at a given time (what the multipath layer would report).
#[derive(Debug, Clone, Copy)]
pub struct PathEvent {
    /// When.
    pub at_ns: u64,
    /// Index in [`SimConfig::paths`].
    pub path: usize,
    /// New state (`FailingOver` = "failover started", a usable state = "finished").
    pub state: PathState,
}

/// Everything a simulation needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Scheduler settings (`shards` = number of reactors).
    pub sched: SchedulerConfig,
    /// Paths.
    pub paths: Vec<SimPath>,
    /// VMs.
    pub vms: Vec<SimVm>,
    /// Path events.
    pub events: Vec<PathEvent>,
    /// Keep per-request dispatch times and paths (needed for window and affinity checks).
    pub record: bool,
    /// Interval of [`Scheduler::tick`] calls.
    pub tick_ns: u64,
    /// Seed of the open-loop jitter.
    pub seed: u64,
}

impl SimConfig {
    /// A config with `shards` reactors and nothing else.
    pub fn new(shards: usize) -> SimConfig {
        SimConfig {
            sched: SchedulerConfig {
                shards,
                max_vms: 1024,
                ..Default::default()
            },
            paths: Vec::new(),
            vms: Vec::new(),
            events: Vec::new(),
            record: true,
            tick_ns: 10_000_000,
            seed: 1,
        }
    }
}

const GENERATED: u8 = 0;
const ENQUEUED: u8 = 1;
const ROUTED: u8 = 2;
const COMPLETED: u8 = 3;
const FAILED: u8 = 4;

/// Counters of one simulated VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Requests the guest generated.
    pub generated: u64,
    /// Requests accepted by `enqueue`.
    pub enqueued: u64,
    /// Requests routed (at once or from hold).
    pub routed: u64,
    /// Requests completed by paths.
    pub completed: u64,
    /// Requests failed back.
    pub failed: u64,
    /// `QueueFull` answers (backpressure).
    pub backpressure: u64,
    /// Times a pull was skipped because `should_pull` was false.
    pub not_pulled: u64,
}

#[derive(Debug)]
struct VmRt {
    cfg: SimVm,
    id: VmId,
    /// Per reactor of the VM: waiting guest requests (seq numbers).
    rings: Vec<VecDeque<u64>>,
    /// Per reactor: last seq released (FIFO check).
    last_released: Vec<Option<u64>>,
    next_seq: u64,
    next_ring: usize,
    outstanding: Vec<u32>,
    status: Vec<u8>,
    stats: VmStats,
    times: Vec<u64>,
    paths: Vec<u16>,
    next_arrival: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    finish: u64,
    submit: u64,
    vm: usize,
    seq: u64,
    shard: usize,
    ring: usize,
    bytes: u32,
}

#[derive(Debug)]
struct PathRt {
    cfg: SimPath,
    id: PathId,
    fifo: VecDeque<InFlight>,
    busy_until: u64,
    completed: u64,
}

/// The simulator.
#[derive(Debug)]
pub struct Sim {
    sched: Arc<Scheduler>,
    shards: Vec<Shard>,
    paths: Vec<PathRt>,
    vms: Vec<VmRt>,
    events: Vec<PathEvent>,
    next_event: usize,
    arrivals: BinaryHeap<Reverse<(u64, usize)>>,
    /// Closed-loop guests resubmit a failed request after a pause: (time, vm, ring).
    retries: BinaryHeap<Reverse<(u64, usize, usize)>>,
    pull_list: Vec<usize>,
    in_pull: Vec<bool>,
    now: u64,
    next_tick: u64,
    tick_ns: u64,
    record: bool,
    rng: u64,
    rot: usize,
    out: Vec<Released>,
    violations: Vec<String>,
    violation_count: u64,
    stopped: bool,
}

const TOKEN_SHIFT: u32 = 40;
const RETRY_NS: u64 = 1_000_000;

impl Sim {
    /// Builds the scheduler, paths, VMs and reactors.
    pub fn new(cfg: SimConfig) -> Result<Sim, SimError> {
        let sched = Scheduler::new(cfg.sched.clone())?;
        let nshards = cfg.sched.shards;
        let mut paths = Vec::new();
        for p in &cfg.paths {
            let id = sched.add_path(p.spec.clone())?;
            paths.push(PathRt {
                cfg: p.clone(),
                id,
                fifo: VecDeque::new(),
                busy_until: 0,
                completed: 0,
            });
        }
        for e in &cfg.events {
            if e.path >= paths.len() {
                return Err(SimError::BadPath(e.path));
            }
        }
        let mut vms = Vec::new();
        let mut arrivals = BinaryHeap::new();
        for (i, v) in cfg.vms.iter().enumerate() {
            if v.shards.is_empty() {
                return Err(SimError::NoShard(i));
            }
            if let Some(&s) = v.shards.iter().find(|&&s| s >= nshards) {
                return Err(SimError::BadShard {
                    vm: i,
                    shard: s,
                    shards: nshards,
                });
            }
            let id = sched.create_vm(v.spec.clone())?;
            let n = v.shards.len();
            arrivals.push(Reverse((v.start_ns, i)));
            vms.push(VmRt {
                cfg: v.clone(),
                id,
                rings: vec![VecDeque::new(); n],
                last_released: vec![None; n],
                next_seq: 0,
                next_ring: 0,
                outstanding: vec![0; n],
                status: Vec::new(),
                stats: VmStats::default(),
                times: Vec::new(),
                paths: Vec::new(),
                next_arrival: v.start_ns,
            });
        }
        let mut events = cfg.events.clone();
        events.sort_by_key(|e| e.at_ns);
        let shards = (0..nshards)
            .map(|i| sched.shard(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sim {
            in_pull: vec![false; vms.len()],
            sched,
            shards,
            paths,
            vms,
            events,
            next_event: 0,
            arrivals,
            retries: BinaryHeap::new(),
            pull_list: Vec::new(),
            now: 0,
            next_tick: cfg.tick_ns,
            tick_ns: cfg.tick_ns.max(1),
            record: cfg.record,
            rng: cfg.seed | 1,
            rot: 0,
            out: Vec::with_capacity(1024),
            violations: Vec::new(),
            violation_count: 0,
            stopped: false,
        })
    }

    /// The scheduler under test.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// Simulated time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Scheduler id of VM `i`.
    pub fn vm_id(&self, i: usize) -> VmId {
        self.vms[i].id
    }

    /// Scheduler id of path `i`.
    pub fn path_id(&self, i: usize) -> PathId {
        self.paths[i].id
    }

    /// Counters of VM `i`.
    pub fn stats(&self, i: usize) -> &VmStats {
        &self.vms[i].stats
    }

    /// Dispatch times of VM `i` (when recording).
    pub fn dispatch_times(&self, i: usize) -> &[u64] {
        &self.vms[i].times
    }

    /// Paths of VM `i`'s dispatches, parallel to [`Sim::dispatch_times`].
    pub fn dispatch_paths(&self, i: usize) -> &[u16] {
        &self.vms[i].paths
    }

    /// Completions served by path `i`.
    pub fn path_completed(&self, i: usize) -> u64 {
        self.paths[i].completed
    }

    /// Problems seen so far (FIFO, double release, lifecycle, unexpected errors); the first
    /// 32 are kept verbatim.
    pub fn violations(&self) -> (u64, &[String]) {
        (self.violation_count, &self.violations)
    }

    fn violation(&mut self, msg: String) {
        self.violation_count += 1;
        if self.violations.len() < 32 {
            self.violations.push(msg);
        }
    }

    /// Requests of VM `i` dispatched in `[from, to)`, as a rate per second.
    pub fn rate(&self, i: usize, from: u64, to: u64) -> f64 {
        let t = &self.vms[i].times;
        let a = t.partition_point(|&x| x < from);
        let b = t.partition_point(|&x| x < to);
        (b - a) as f64 * 1e9 / (to - from) as f64
    }

    /// Most dispatches of VM `i` in any window of `window_ns` (windows start at dispatches).
    pub fn max_in_window(&self, i: usize, window_ns: u64) -> usize {
        let t = &self.vms[i].times;
        let mut best = 0;
        let mut j = 0;
        for k in 0..t.len() {
            while j < t.len() && t[j] < t[k] + window_ns {
                j += 1;
            }
            best = best.max(j - k);
        }
        best
    }

    fn jitter(&mut self, base: u64) -> u64 {
        // xorshift64*, ±10%.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let r = self.rng % 2001;
        base * (9000 + r) / 10_000
    }

    fn generate(&mut self, v: usize, ring: usize) {
        let vm = &mut self.vms[v];
        let seq = vm.next_seq;
        vm.next_seq += 1;
        vm.status.push(GENERATED);
        vm.stats.generated += 1;
        vm.rings[ring].push_back(seq);
        vm.outstanding[ring] += 1;
        if !self.in_pull[v] {
            self.in_pull[v] = true;
            self.pull_list.push(v);
        }
    }

    fn next_time(&mut self) -> u64 {
        let mut t = u64::MAX;
        for p in &self.paths {
            if let Some(f) = p.fifo.front() {
                t = t.min(f.finish);
            }
        }
        if !self.stopped {
            if let Some(Reverse((a, _))) = self.arrivals.peek() {
                t = t.min(*a);
            }
            if let Some(Reverse((a, _, _))) = self.retries.peek() {
                t = t.min(*a);
            }
        }
        if let Some(e) = self.events.get(self.next_event) {
            t = t.min(e.at_ns);
        }
        for s in self.shards.iter_mut() {
            if let Some(d) = s.next_deadline() {
                t = t.min(d);
            }
            if s.was_gated() {
                t = t.min(self.now + 1_000);
            }
        }
        t.min(self.next_tick).max(self.now)
    }

    /// Runs until simulated time `end`.
    pub fn run_until(&mut self, end: u64) {
        let mut same = 0u32;
        loop {
            let t = self.next_time();
            if t > end {
                self.now = end;
                return;
            }
            same = if t == self.now { same + 1 } else { 0 };
            if same > 100_000 {
                self.violation(format!("no progress at t={t}: stopping"));
                self.now = end;
                return;
            }
            self.now = t;
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(e) = self.events.get(self.next_event).copied() {
            if e.at_ns > now {
                break;
            }
            self.next_event += 1;
            if let Err(err) = self.sched.set_path_state(self.paths[e.path].id, e.state) {
                self.violation(format!("set_path_state: {err}"));
            }
        }
        // Completions.
        for p in 0..self.paths.len() {
            while let Some(f) = self.paths[p].fifo.front().copied() {
                if f.finish > now {
                    break;
                }
                self.paths[p].fifo.pop_front();
                self.paths[p].completed += 1;
                let id = self.vms[f.vm].id;
                let pid = self.paths[p].id;
                if let Err(e) = self.shards[f.shard].complete(id, pid, f.bytes, f.finish - f.submit)
                {
                    self.violation(format!("complete: {e}"));
                }
                self.finish_request(f.vm, f.seq, f.ring, COMPLETED);
            }
        }
        // Open-loop arrivals (and the first burst of closed-loop guests).
        while !self.stopped {
            let Some(&Reverse((t, v))) = self.arrivals.peek() else {
                break;
            };
            if t > now {
                break;
            }
            self.arrivals.pop();
            let cfg = &self.vms[v].cfg;
            if now >= cfg.stop_ns {
                continue;
            }
            match cfg.load {
                Load::Closed { depth } => {
                    for r in 0..self.vms[v].rings.len() {
                        for _ in 0..depth {
                            self.generate(v, r);
                        }
                    }
                }
                Load::Open { iops } => {
                    let r = self.vms[v].next_ring;
                    self.vms[v].next_ring = (r + 1) % self.vms[v].rings.len();
                    self.generate(v, r);
                    let gap = self.jitter(1_000_000_000 / iops.max(1));
                    let next = t + gap.max(1);
                    self.vms[v].next_arrival = next;
                    self.arrivals.push(Reverse((next, v)));
                }
            }
        }
        while let Some(&Reverse((t, v, ring))) = self.retries.peek() {
            if t > now || self.stopped {
                break;
            }
            self.retries.pop();
            if now < self.vms[v].cfg.stop_ns {
                self.generate(v, ring);
            }
        }
        self.pull();
        for _round in 0..8 {
            let mut progress = 0;
            let n = self.shards.len();
            for k in 0..n {
                let s = (k + self.rot) % n;
                self.out.clear();
                let mut out = std::mem::take(&mut self.out);
                progress += self.shards[s].poll(now, &mut out, 4096);
                for r in out.drain(..) {
                    self.on_released(s, r);
                }
                self.out = out;
            }
            progress += self.pull();
            if progress == 0 {
                break;
            }
        }
        self.rot = self.rot.wrapping_add(1);
        if now >= self.next_tick {
            self.sched.tick(now);
            self.next_tick = now + self.tick_ns;
        }
    }

    fn finish_request(&mut self, v: usize, seq: u64, ring: usize, status: u8) {
        let vm = &mut self.vms[v];
        let st = &mut vm.status[seq as usize];
        let ok = match status {
            COMPLETED => *st == ROUTED,
            _ => *st == ENQUEUED,
        };
        if !ok {
            let was = *st;
            self.violation(format!("vm {v} seq {seq}: status {was} -> {status}"));
            return;
        }
        *st = status;
        if status == COMPLETED {
            vm.stats.completed += 1;
        } else {
            vm.stats.failed += 1;
        }
        vm.outstanding[ring] -= 1;
        if let Load::Closed { .. } = vm.cfg.load {
            if !self.stopped && self.now < vm.cfg.stop_ns {
                if status == COMPLETED {
                    self.generate(v, ring);
                } else {
                    // A guest that got an error retries a millisecond later.
                    self.retries.push(Reverse((self.now + RETRY_NS, v, ring)));
                }
            }
        }
    }

    fn release_check(&mut self, v: usize, ring: usize, seq: u64) {
        let last = self.vms[v].last_released[ring];
        if last.is_some_and(|l| l >= seq) {
            self.violation(format!(
                "vm {v} ring {ring}: seq {seq} released after {}",
                last.unwrap_or(0)
            ));
        }
        self.vms[v].last_released[ring] = Some(seq);
    }

    fn submit(&mut self, v: usize, seq: u64, ring: usize, shard: usize, path: PathId) {
        let Some(p) = self.paths.iter().position(|p| p.id == path) else {
            self.violation(format!("vm {v}: routed to unknown {path}"));
            return;
        };
        let st = self.sched.path(path).map(|l| l.state());
        if !st.is_some_and(PathState::is_usable) {
            self.violation(format!(
                "vm {v} seq {seq}: routed to {path} in state {st:?}"
            ));
        }
        let bytes = self.vms[v].cfg.bytes;
        let rt = &mut self.paths[p];
        let finish = rt.busy_until.max(self.now) + rt.cfg.service_ns(bytes);
        rt.busy_until = finish;
        rt.fifo.push_back(InFlight {
            finish,
            submit: self.now,
            vm: v,
            seq,
            shard,
            ring,
            bytes,
        });
        let vm = &mut self.vms[v];
        vm.stats.routed += 1;
        vm.status[seq as usize] = ROUTED;
        if self.record {
            vm.times.push(self.now);
            vm.paths.push(path.0);
        }
    }

    fn on_released(&mut self, shard: usize, r: Released) {
        let v = (r.token >> TOKEN_SHIFT) as usize;
        let seq = r.token & ((1 << TOKEN_SHIFT) - 1);
        let Some(ring) = self
            .vms
            .get(v)
            .and_then(|vm| vm.cfg.shards.iter().position(|&s| s == shard))
        else {
            self.violation(format!(
                "released token {:#x} on unknown VM/reactor",
                r.token
            ));
            return;
        };
        if self.vms[v].status.get(seq as usize) != Some(&ENQUEUED) {
            self.violation(format!("vm {v} seq {seq}: released while not held"));
            return;
        }
        if r.vm != self.vms[v].id {
            self.violation(format!("vm {v} seq {seq}: released under {}", r.vm));
        }
        self.release_check(v, ring, seq);
        match r.outcome {
            Outcome::Route(p) => self.submit(v, seq, ring, shard, p),
            Outcome::Fail(_) => self.finish_request(v, seq, ring, FAILED),
        }
    }

    /// Frontends pull guest requests while the scheduler lets them. Returns requests taken.
    fn pull(&mut self) -> usize {
        let mut taken = 0;
        let mut k = 0;
        while k < self.pull_list.len() {
            let v = self.pull_list[k];
            let id = self.vms[v].id;
            let mut empty = true;
            for ring in 0..self.vms[v].rings.len() {
                let shard = self.vms[v].cfg.shards[ring];
                while let Some(&seq) = self.vms[v].rings[ring].front() {
                    if !self.shards[shard].should_pull(id) {
                        self.vms[v].stats.not_pulled += 1;
                        break;
                    }
                    let bytes = self.vms[v].cfg.bytes;
                    let token = (v as u64) << TOKEN_SHIFT | seq;
                    match self.shards[shard].enqueue(id, token, bytes, seq % 3 == 0, self.now) {
                        Ok(d) => {
                            self.vms[v].rings[ring].pop_front();
                            self.vms[v].stats.enqueued += 1;
                            self.vms[v].status[seq as usize] = ENQUEUED;
                            taken += 1;
                            if let Decision::Route(p) = d {
                                self.release_check(v, ring, seq);
                                self.submit(v, seq, ring, shard, p);
                            }
                        }
                        Err(ShardError::QueueFull { .. }) => {
                            self.vms[v].stats.backpressure += 1;
                            break;
                        }
                        Err(e) => {
                            self.violation(format!("enqueue vm {v}: {e}"));
                            break;
                        }
                    }
                }
                empty &= self.vms[v].rings[ring].is_empty();
            }
            if empty {
                self.in_pull[v] = false;
                self.pull_list.swap_remove(k);
            } else {
                k += 1;
            }
        }
        taken
    }

    /// Stops the guests, runs until every request is completed or failed (or `deadline`),
    /// then checks nothing was lost: every generated request was enqueued and ended
    /// completed or failed exactly once.
    pub fn finish(&mut self, deadline: u64) -> Result<(), String> {
        self.stopped = true;
        while self.now < deadline {
            let busy = self
                .vms
                .iter()
                .any(|v| v.outstanding.iter().any(|&o| o > 0));
            if !busy {
                break;
            }
            let t = self.next_time();
            if t > deadline {
                self.now = deadline;
                break;
            }
            self.now = t;
            self.step();
        }
        let mut problems = Vec::new();
        for (i, v) in self.vms.iter().enumerate() {
            let lost = v
                .status
                .iter()
                .filter(|&&s| s != COMPLETED && s != FAILED)
                .count();
            if lost > 0 {
                problems.push(format!(
                    "vm {i}: {lost} of {} requests not completed ({:?})",
                    v.status.len(),
                    v.stats
                ));
            }
            if v.stats.routed != v.stats.completed
                || v.stats.enqueued != v.stats.completed + v.stats.failed
            {
                problems.push(format!("vm {i}: counters do not add up: {:?}", v.stats));
            }
        }
        if self.violation_count > 0 {
            problems.push(format!(
                "{} violations: {:?}",
                self.violation_count, self.violations
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Ideal IOPS per backlogged VM on a device of `capacity` IOPS, for `(shares, reservation,
/// limit)` triples (reservation/limit 0 = none): water-filling `clamp(shares × x, r, l)`
/// so the total is the capacity — each VM gets the larger of its reservation and its
/// proportional share of what the reservation-bound and limit-bound VMs leave, never more
/// than its limit.
pub fn expected_shares(capacity: f64, vms: &[(f64, f64, f64)]) -> Vec<f64> {
    let lim = |l: f64| if l > 0.0 { l } else { f64::INFINITY };
    let alloc = |x: f64| -> Vec<f64> {
        vms.iter()
            .map(|&(w, r, l)| (w * x).max(r).min(lim(l)))
            .collect()
    };
    let total = |x: f64| alloc(x).iter().sum::<f64>();
    let (mut lo, mut hi) = (0.0, 1.0);
    while total(hi) < capacity && hi < 1e18 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if total(mid) < capacity {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    alloc(hi)
}
