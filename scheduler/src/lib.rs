//! # scheduler — the per-VM I/O scheduler of vmpath
//!
//! Pure and I/O-free: the clock is passed in (`u64` nanoseconds), no threads are spawned,
//! nothing blocks, and the request path takes no lock. Implements issue 5 (see
//! `/work/shared/MISSION.md` capabilities 1–5):
//!
//! * **Route or hold** ([`Shard::enqueue`]): a request is routed at once when its VM is
//!   under its limit, its path has room and nobody is waiting ahead of it; otherwise it is
//!   held in the VM's bounded FIFO and released by [`Shard::poll`] — reservation-due
//!   requests first, then priority classes, then proportional shares (mClock tags).
//! * **Path selection** per VM ([`SelectorSpec`]): vm-affinity, round-robin (every N I/Os or
//!   bytes), least-queue-depth, least-bytes, service-time (per-path weights, measured
//!   service time) and vm-weighted; optimized paths first, never an unusable one.
//! * **Failover**: [`Scheduler::failover_started`] / [`Scheduler::failover_finished`]
//!   re-route, hold, suspend ([`Shard::should_pull`]) or fail after a timeout, per VM.
//!   Nothing held is ever dropped.
//! * **Migrate recommendation**: [`Scheduler::tick`] raises
//!   [`SchedEvent::VmMigrateRecommended`] after `migrate_window_ms` of unmet reservation,
//!   and [`SchedEvent::VmMigrateCleared`] when it ends; the daemon drains
//!   [`Scheduler::pop_event`].
//! * **Admission control**: a reservation that the paths' estimated capacity cannot carry
//!   is refused ([`SchedError::Admission`]).
//!
//! ## How a frontend and the daemon use it
//!
//! ```
//! use scheduler::{Decision, Outcome, PathSpec, Scheduler, SchedulerConfig, VmSpec};
//! let sched = Scheduler::new(SchedulerConfig { shards: 2, ..Default::default() }).unwrap();
//! let p0 = sched.add_path(PathSpec::new("fabric-a", 200_000, 2_000)).unwrap();
//! let vm = sched.create_vm(VmSpec::new("vm-a")).unwrap();
//! let mut shard = sched.shard(0).unwrap(); // one per reactor (Send, not Sync)
//! let now = 1_000;
//! if shard.should_pull(vm) {
//!     match shard.enqueue(vm, 42, 4096, false, now).unwrap() {
//!         Decision::Route(path) => { assert_eq!(path, p0); /* issue on `path` */ }
//!         Decision::Held => {}
//!     }
//! }
//! let mut released = Vec::new();
//! shard.poll(now, &mut released, 64); // each loop: issue `Outcome::Route`, fail `Outcome::Fail`
//! for r in &released { if let Outcome::Route(_p) = r.outcome { /* issue */ } }
//! shard.complete(vm, p0, 4096, 20_000).unwrap(); // on completion, with measured service time
//! ```
//!
//! ## Design
//!
//! **Tags (mClock).** Each VM has, in its shared slot, limit tags `L` (IOPS and bytes),
//! reservation tags `R` and a proportional finish tag `P`, all atomics. A dispatch claims
//! `L = max(L, now − catch-up) + cost/limit` with a compare-and-swap
//! that first checks `L <= now` (GCRA), so dispatches of a VM — from any reactor — keep
//! its rate. A head
//! request is *reservation-due* when `R <= now`; only reservation-phase dispatches advance
//! `R` (`R = max(R, now − catch-up) + cost/reservation`), so service received in the share
//! phase does not consume the reservation (mClock's "credit"). The proportional phase is
//! start-time fair queueing: a head that was already queued behind its predecessor gets
//! start tag `P`; one that was queued but waited for its VM's own limit gets
//! `max(V − 128 increments, P)` (the VM stayed backlogged and keeps what it is owed, so a
//! limit a little above a VM's share costs it nothing); a head that starts a new busy
//! period (its VM's queue on this reactor was empty, or it waited for a path or a
//! suspension) gets `max(V, P)`. Each advances `P` by `cost × 2^30 / shares`, where cost =
//! `io_cost_bytes + bytes` in 512-byte units and `V` is virtual time (the start tag of the
//! last share-phase dispatch, per class). A VM waking from idle starts at `V`: it cannot
//! bank credit. P tags count service from both phases,
//! so a reservation is a floor: a VM gets `max(reservation, its share)`, capped by its
//! limit — water-filling over shares (see [`sim::expected_shares`]).
//!
//! **Capacity.** Each path has a queue depth (`max_outstanding`). Requests are dispatched
//! only while their path has room; the order in which held requests take freed slots is
//! the QoS order above. Work-conserving: a free slot is never left unused while a request
//! is eligible for it (limits excepted; across reactors, until the gated reactor's next
//! poll).
//!
//! **Housekeeping.** The daemon calls [`Scheduler::tick`] every 10–100 ms (migrate
//! recommendations, tag hygiene) and drains [`Scheduler::pop_event`].
//!
//! **Flat in the number of VMs.** Each reactor keeps, per (class, target path), a
//! hierarchical 64-ary bucket queue of eligible VMs keyed by start tag, a timer queue of
//! the same kind (limit, reservation and fail-after deadlines) and FIFO lists — all
//! intrusive over a preallocated node arena. Every operation is O(1) amortised (a node
//! moves down at most 11 levels in its life); nothing allocates per request (hold queues
//! grow to their bound once).
//!
//! **Multi-reactor.** [`Scheduler`] is `Send + Sync`; each reactor owns one [`Shard`]
//! (`Send`, not `Sync`). A VM's hold queue is per shard (FIFO per VM per reactor; requests
//! of one VM arriving on two reactors have no order between them anyway), and a request
//! must be completed on the shard that released it. What must be global is global: L/R/P
//! tags are per-VM atomics claimed with CAS (one cache line per VM, touched only by
//! reactors that carry that VM's I/O); path load is per-path atomics. Cross-core traffic
//! per request is bounded: the VM's tag line (VMs with limits, or held requests), the
//! path's counter line, and two per-target contender counts (how many shards have
//! requests waiting for that path, or for any path — written only when a shard's backlog
//! for a target appears or empties, so the check stays flat in the number of reactors).
//! Path states, serving paths and suspensions are copied into each shard when the
//! control-plane epoch moves, so the route-now check reads no other shared line. For shares
//! across reactors each shard publishes, once per poll and per path, the best class and
//! the smallest start tag it has waiting (and which VM it belongs to), plus per class its
//! smallest start tag. A shard releases a share-phase request only if no other shard
//! waits for the same path with a reservation-due request, a higher class, or a start tag
//! smaller by more than `cross_shard_slack` (against a VM's own head on another shard the
//! slack grows by 8 of its increments, so a VM spread over reactors is not throttled to
//! one request per poll). A shard silent for 1 ms is ignored. A shard's virtual time is
//! the smaller of its own and the smallest start waiting elsewhere, so a fresh head never
//! starts behind work that is already waiting.
//!
//! **Error bounds** (checked by the property tests, on one and two reactors).
//! * Limits: in any window `W`, a VM dispatches at most `limit × W` plus
//!   `1 + max(limit_catchup, limit × limit_catchup_us)` requests (defaults 2 intervals and
//!   100 µs: 3 requests for limits up to 20k IOPS, 1% of the limit over 10 ms above; both
//!   0 = strict, one request). The burst tolerance lets a limited VM that was kept waiting
//!   (its path full, other VMs ahead, its reactor descheduled) catch up instead of losing
//!   the wait. Two intervals alone forgave only 23 µs at 88k IOPS: a VM whose limit sat a
//!   few percent above its share lost up to 5% of it. 100 µs alone lost a 500 IOPS VM 20%
//!   of its limit on a busy 2-core host. Across reactors the IOPS tag is exact (checked CAS); the bytes tag may admit one extra
//!   request per concurrently racing reactor.
//! * Shares: under saturation every backlogged VM gets within ±2% (plus two requests of
//!   quantisation over the window) of its water-filled share of what the reservations
//!   and limits leave ([`sim::expected_shares`]), on one reactor and across reactors.
//!   Within one reactor a backlogged VM is never more than one request of its cost away
//!   from its SFQ position; across reactors, `cross_shard_slack` (default 2 requests of
//!   4 KiB at 1000 shares) plus one poll period.
//! * Reservations: met whenever their sum fits the paths (admission control); a
//!   reservation tag never lags real time by more than `reservation_catchup_us` (1 ms by
//!   default), so an idle VM banks at most that much reserved service.
//!
//! **Cost** (release build, 2 shards, `examples/sched_bench.rs`, callgrind instructions
//! inside `enqueue` + `complete` + `poll` per request, identical at 1, 100 and 1000 VMs):
//! route-now with vm-affinity 135, with least-queue-depth over 2 paths 213, with an IOPS
//! and a bandwidth limit and a reservation 200. Held and released in share order (paths
//! full): 907 with one VM spread over both shards, 667 with 100 VMs (about half of their
//! requests still route at once), 1185 with 1000 VMs and 1000+ requests held per shard.
//! Wall clock 35–44 ns route-now, 61–86 ns held. Atomic read-modify-writes count as one
//! instruction each; what costs is arithmetic and bookkeeping, so the held path (hold
//! queue, bucket queue insert and extract, backlog publication for the other shards) is
//! where the remaining work is.

//! **Failover.** Path state changes ([`Scheduler::set_path_state`]) recompute the usable
//! path masks, each vm-affinity VM's serving path (home, or the usable path with most
//! spare reservation capacity) and failover suspensions, then bump an epoch; reactors
//! re-evaluate their held heads on the next call. Held requests wait (hold), are failed
//! back after `timeout_ms` (fail-after) or their VM is suspended (suspend) — never lost.
//!
//! Simulation: [`sim`] runs shards, VMs and capacity-limited paths on a simulated clock
//! (used by the tests, the benchmark and daemon tests).

mod path;
mod sched;
mod shard;
pub mod sim;
mod spec;
mod vm;
mod wheel;

pub use path::{PathId, PathInfo, PathLoad};
pub use sched::{MigrateReason, SchedError, SchedEvent, Scheduler};
pub use shard::{Decision, FailReason, Outcome, Released, Shard, ShardError};
pub use spec::{
    FailoverPolicy, PathPolicySpec, PathSpec, PathState, PriorityClass, RateSpec, SchedulerConfig,
    SelectorSpec, SpecError, VmQosUpdate, VmSpec, DEFAULT_SHARES, MAX_HELD_LIMIT, MAX_NAME_LEN,
    MAX_PATHS, MAX_RATE, MAX_SHARDS, MAX_SHARES, MIN_SHARES,
};
pub use vm::{SuspendReason, VmId, VmInfo};

#[cfg(test)]
mod tests;
