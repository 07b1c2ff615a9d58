//! Scheduler benchmark (issue 5, "Benchmark").
//!
//! ```text
//! cargo run --release -p scheduler --example sched_bench               # ns/request + fairness
//! cargo run --release -p scheduler --example sched_bench -- time
//! cargo run --release -p scheduler --example sched_bench -- fairness
//! # Instructions per request, fixed iteration count. The whole measured loop (harness
//! # included):
//! valgrind --tool=callgrind --toggle-collect='*run_requests*' \
//!     target/release/examples/sched_bench count <fast|lqd|qos|saturated> <vms> <iters>
//! # Scheduler only (enqueue + complete + poll, callees included); subtract the same run
//! # with <iters> = 0 (the warm-up is collected too), divide by <iters>:
//! valgrind --tool=callgrind --toggle-collect='*Shard::enqueue' \
//!     --toggle-collect='*Shard::complete' --toggle-collect='*Shard::poll' \
//!     target/release/examples/sched_bench count <scenario> <vms> <iters>
//! # "Collected" in callgrind's summary is the instruction count (Ir).
//! ```
//!
//! Scenarios, all with 2 reactor shards driven from one thread (so the count is exact),
//! each VM's requests alternating between the two shards, 4 KiB requests:
//! * `fast`: paths never full, no limits, vm-affinity (the default selector): every
//!   request is routed at once (enqueue → route, complete; one poll per 8 requests).
//! * `lqd`: as `fast` with the least-queue-depth selector over the two paths.
//! * `qos`: as `fast`, but every VM has a reservation and a limit (not binding), so each
//!   request also claims the limit tags (CAS) — the realistic QoS case.
//! * `saturated`: 2 paths with queue depth 32 each, full, and a backlog of one request per
//!   VM (at least 64) per shard: every request is held and released by `poll` in share
//!   order (enqueue → held, poll → released from the bucket queues, complete). One poll
//!   per 8 requests, as a reactor that handles a batch of completions per loop.

use std::hint::black_box;
use std::time::Instant;

use scheduler::sim::{expected_shares, Load, Sim, SimConfig, SimPath, SimVm};
use scheduler::{
    Decision, Outcome, PathId, PathSpec, PriorityClass, RateSpec, Released, Scheduler,
    SchedulerConfig, SelectorSpec, Shard, VmId, VmSpec,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Fast,
    Lqd,
    Qos,
    Saturated,
}

impl Scenario {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "fast" => Some(Scenario::Fast),
            "lqd" => Some(Scenario::Lqd),
            "qos" => Some(Scenario::Qos),
            "saturated" => Some(Scenario::Saturated),
            _ => None,
        }
    }
}

struct Bench {
    shards: Vec<Shard>,
    vms: Vec<VmId>,
    /// In-flight (shard, vm, path) in issue order: the device completes the oldest.
    inflight: std::collections::VecDeque<(usize, VmId, PathId)>,
    out: Vec<Released>,
    /// In-flight requests (all shards) before the oldest is completed.
    depth: usize,
    /// Held requests per shard the saturated scenario keeps.
    hold_target: u64,
    saturated: bool,
    now: u64,
    next_token: u64,
}

fn setup(sc: Scenario, nvms: usize) -> Bench {
    let sched = Scheduler::new(SchedulerConfig {
        shards: 2,
        max_vms: nvms as u32,
        ..Default::default()
    })
    .expect("config");
    let qd = if sc == Scenario::Saturated {
        32
    } else {
        1 << 16
    };
    for p in 0..2 {
        let mut spec = PathSpec::new(format!("p{p}"), 100_000_000, 1_000_000);
        spec.max_outstanding = qd;
        sched.add_path(spec).expect("path");
    }
    let vms: Vec<VmId> = (0..nvms)
        .map(|i| {
            let mut s = VmSpec::new(format!("vm{i}"));
            s.shares = [500, 1000, 2000][i % 3];
            if sc == Scenario::Lqd {
                s.path_policy.selector = SelectorSpec::LeastQueueDepth;
            }
            s.max_held = 1024;
            if sc == Scenario::Qos {
                s.reservation.iops = Some(1_000);
                s.limit = RateSpec {
                    iops: Some(1_000_000_000),
                    mbps: Some(1_000_000),
                };
            }
            sched.create_vm(s).expect("vm")
        })
        .collect();
    let shards = (0..2).map(|i| sched.shard(i).expect("shard")).collect();
    // Saturated: the two paths take 64 in flight; the device completes the oldest request
    // when they are full, and each shard keeps one request per VM (at least 64) held, so
    // every arrival is held and every poll releases in share order.
    let (depth, hold_target) = match sc {
        Scenario::Saturated => (64, (nvms as u64).max(64)),
        _ => (64, u64::MAX),
    };
    Bench {
        shards,
        vms,
        inflight: std::collections::VecDeque::with_capacity(depth * 2),
        out: Vec::with_capacity(1024),
        depth,
        hold_target,
        saturated: sc == Scenario::Saturated,
        now: 1_000_000,
        next_token: 0,
    }
}

/// One request's worth of work: complete the oldest in-flight request (once enough are
/// outstanding), enqueue a new request, and poll each shard once per 8 of its requests
/// (a reactor loop that handles a batch of completions, as under load).
#[inline(always)]
fn one(b: &mut Bench, i: u64, saturated: bool) -> u64 {
    let n = b.vms.len();
    let s = (i & 1) as usize;
    let mut routed = 0;
    b.now += 100;
    // The device: completes its oldest request every iteration when saturated (its queue
    // is full), once 64 are outstanding otherwise.
    if saturated || b.inflight.len() >= b.depth {
        if let Some((t, vm, p)) = b.inflight.pop_front() {
            let _ = b.shards[t].complete(vm, p, 4096, 20_000);
        }
    }
    // Saturated: two arrivals per completion until the backlog is built, then one, none
    // above twice the target (the frontend stops pulling).
    let arrivals = match (saturated, b.shards[s].held()) {
        (false, _) => 1,
        (true, h) if h < b.hold_target => 2,
        (true, h) if h < 2 * b.hold_target => 1,
        _ => 0,
    };
    for _ in 0..arrivals {
        let vm = b.vms[(b.next_token as usize / 2) % n];
        let token = b.next_token;
        b.next_token += 1;
        if let Ok(Decision::Route(p)) = b.shards[s].enqueue(vm, token, 4096, false, b.now) {
            routed += 1;
            b.inflight.push_back((s, vm, p));
        }
    }
    // Each shard polls once per 8 of its iterations (i & 7 is 6 for shard 0, 7 for 1).
    if i & 7 >= 6 {
        b.out.clear();
        let mut out = std::mem::take(&mut b.out);
        b.shards[s].poll(b.now, &mut out, 64);
        for r in &out {
            if let Outcome::Route(p) = r.outcome {
                routed += 1;
                b.inflight.push_back((s, r.vm, p));
            }
        }
        b.out = out;
    }
    routed
}

/// The measured loop (the only code callgrind collects in `count` mode).
#[inline(never)]
fn run_requests(b: &mut Bench, iters: u64) -> u64 {
    let saturated = b.saturated;
    let mut routed = 0;
    for i in 0..iters {
        routed += one(b, i, saturated);
    }
    routed
}

/// Same work, not collected.
#[inline(never)]
fn warm_up(b: &mut Bench, iters: u64) -> u64 {
    let saturated = b.saturated;
    let mut routed = 0;
    for i in 0..iters {
        routed += one(b, i, saturated);
    }
    routed
}

fn time_mode() {
    println!("scheduling cost per request, 2 shards, 4 KiB, release build (enqueue + poll share + complete)");
    println!(
        "{:>10} {:>6} {:>12} {:>10}",
        "scenario", "VMs", "ns/request", "routed%"
    );
    for sc in [
        Scenario::Fast,
        Scenario::Lqd,
        Scenario::Qos,
        Scenario::Saturated,
    ] {
        for nvms in [1usize, 100, 1000] {
            let mut b = setup(sc, nvms);
            // Warm up: fill queues and reach steady state.
            black_box(warm_up(&mut b, 200_000));
            let iters = 2_000_000;
            let t0 = Instant::now();
            let routed = black_box(run_requests(&mut b, iters));
            let ns = t0.elapsed().as_nanos() as f64 / iters as f64;
            println!(
                "{:>10} {:>6} {:>12.1} {:>9.1}%",
                format!("{sc:?}").to_lowercase(),
                nvms,
                ns,
                routed as f64 * 100.0 / iters as f64
            );
        }
    }
}

fn count_mode(args: &[String]) -> Result<(), String> {
    let usage = "usage: sched_bench count <fast|lqd|qos|saturated> <vms> <iters>";
    let sc = args.first().and_then(|s| Scenario::parse(s)).ok_or(usage)?;
    let nvms: usize = args.get(1).and_then(|s| s.parse().ok()).ok_or(usage)?;
    let iters: u64 = args.get(2).and_then(|s| s.parse().ok()).ok_or(usage)?;
    if nvms == 0 || nvms > 65_536 {
        return Err("vms must be 1..=65536".into());
    }
    let mut b = setup(sc, nvms);
    black_box(warm_up(&mut b, 200_000));
    let routed = black_box(run_requests(&mut b, iters));
    println!(
        "scenario={sc:?} vms={nvms} shards=2 iters={iters} routed={routed} held={}+{} inflight={} gated={}/{}",
        b.shards[0].held(),
        b.shards[1].held(),
        b.inflight.len(),
        b.shards[0].was_gated(),
        b.shards[1].was_gated()
    );
    println!("instructions/request = callgrind Ir (collected in run_requests) / {iters}");
    Ok(())
}

struct Row {
    name: &'static str,
    shares: u32,
    reservation: Option<u64>,
    limit: Option<u64>,
    class: PriorityClass,
}

fn fairness_mode() {
    let rows = [
        Row {
            name: "gold",
            shares: 2000,
            reservation: None,
            limit: None,
            class: PriorityClass::Normal,
        },
        Row {
            name: "silver",
            shares: 1000,
            reservation: None,
            limit: None,
            class: PriorityClass::Normal,
        },
        Row {
            name: "bronze",
            shares: 500,
            reservation: None,
            limit: None,
            class: PriorityClass::Normal,
        },
        Row {
            name: "db-resv",
            shares: 500,
            reservation: Some(30_000),
            limit: None,
            class: PriorityClass::Normal,
        },
        Row {
            name: "capped",
            shares: 4000,
            reservation: None,
            limit: Some(10_000),
            class: PriorityClass::Normal,
        },
        Row {
            name: "batch",
            shares: 1000,
            reservation: Some(5_000),
            limit: Some(20_000),
            class: PriorityClass::Normal,
        },
    ];
    for reactors in [1usize, 2] {
        let mut cfg = SimConfig::new(reactors);
        cfg.paths.push(SimPath::iops("dev", 100_000));
        for (i, r) in rows.iter().enumerate() {
            let mut s = VmSpec::new(r.name);
            s.shares = r.shares;
            s.reservation.iops = r.reservation;
            s.limit.iops = r.limit;
            s.priority = r.class;
            let mut v = SimVm::new(s, Load::Closed { depth: 48 });
            v.shards = vec![i % reactors];
            cfg.vms.push(v);
        }
        let triples: Vec<(f64, f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    f64::from(r.shares),
                    r.reservation.unwrap_or(0) as f64,
                    r.limit.unwrap_or(0) as f64,
                )
            })
            .collect();
        let want = expected_shares(100_000.0, &triples);
        let mut sim = match Sim::new(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sim: {e}");
                return;
            }
        };
        let (from, to) = (100_000_000, 1_100_000_000);
        sim.run_until(to);
        println!();
        println!("fairness: 1 path of 100,000 IOPS (queue depth 16), {reactors} reactor(s), 6 backlogged VMs, 1 s measured");
        println!(
            "{:>8} {:>7} {:>12} {:>10} {:>12} {:>12} {:>8}",
            "VM", "shares", "reservation", "limit", "expected", "measured", "error"
        );
        let mut total = 0.0;
        for (i, r) in rows.iter().enumerate() {
            let got = sim.rate(i, from, to);
            total += got;
            let fmt = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
            println!(
                "{:>8} {:>7} {:>12} {:>10} {:>12.0} {:>12.0} {:>+7.2}%",
                r.name,
                r.shares,
                fmt(r.reservation),
                fmt(r.limit),
                want[i],
                got,
                (got - want[i]) * 100.0 / want[i]
            );
        }
        println!(
            "{:>8} {:>7} {:>12} {:>10} {:>12.0} {:>12.0}",
            "total", "", "", "", 100_000.0, total
        );
        if let Err(e) = sim.finish(to + 1_000_000_000) {
            println!("CHECK FAILED: {e}");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {
            time_mode();
            fairness_mode();
        }
        Some("time") => time_mode(),
        Some("fairness") => fairness_mode(),
        Some("count") => {
            if let Err(e) = count_mode(&args[1..]) {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
        Some(other) => {
            eprintln!("unknown mode {other:?}: use time | fairness | count");
            std::process::exit(2);
        }
    }
}
