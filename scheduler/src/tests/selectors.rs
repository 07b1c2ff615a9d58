//! Path selection policies, path state tiers and priority classes.

use super::util::*;
use crate::sim::{Load, Sim, SimPath, SimVm};
use crate::spec::{PathState, PriorityClass, SelectorSpec, VmSpec};

fn with_selector(name: &str, sel: SelectorSpec) -> VmSpec {
    let mut s = VmSpec::new(name);
    s.path_policy.selector = sel;
    s
}

#[test]
fn round_robin_switches_every_n_ios() {
    let mut cfg = config(1, &[100_000, 100_000]);
    let s = with_selector("rr", SelectorSpec::RoundRobin { ios: 4, bytes: 0 });
    cfg.vms.push(SimVm::new(s, Load::Open { iops: 1_000 }));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(30 * MS);
    let p = sim.dispatch_paths(0);
    assert!(p.len() >= 24);
    for (k, chunk) in p.chunks(4).take(6).enumerate() {
        assert!(chunk.iter().all(|&x| x == chunk[0]), "{p:?}");
        if k > 0 {
            assert_ne!(chunk[0], p[(k - 1) * 4], "switched after 4 I/Os: {p:?}");
        }
    }
    sim.finish(100 * MS).unwrap();
}

#[test]
fn round_robin_by_bytes() {
    let mut cfg = config(1, &[100_000, 100_000]);
    let s = with_selector(
        "rr",
        SelectorSpec::RoundRobin {
            ios: 0,
            bytes: 16 << 10,
        },
    );
    let mut v = SimVm::new(s, Load::Open { iops: 1_000 });
    v.bytes = 8 << 10;
    cfg.vms.push(v);
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(20 * MS);
    let p = sim.dispatch_paths(0);
    assert_eq!(
        &p[..8],
        &[
            p[0],
            p[0],
            1 - p[0],
            1 - p[0],
            p[0],
            p[0],
            1 - p[0],
            1 - p[0]
        ]
    );
    sim.finish(100 * MS).unwrap();
}

/// Load-based selectors send more I/O to the faster path; service-time most of all.
#[test]
fn load_based_selectors_favour_the_faster_path() {
    let mut shares = Vec::new();
    for sel in [
        SelectorSpec::LeastQueueDepth,
        SelectorSpec::LeastBytes,
        SelectorSpec::ServiceTime,
    ] {
        let mut cfg = config(1, &[]);
        cfg.paths.push(SimPath::iops("fast", 150_000));
        cfg.paths.push(SimPath::iops("slow", 50_000));
        for i in 0..4 {
            cfg.vms.push(backlogged(
                with_selector(&format!("vm{i}"), sel),
                vec![0],
                4,
            ));
        }
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(50 * MS);
        let fast = sim.path_completed(0) as f64;
        let slow = sim.path_completed(1) as f64;
        shares.push(fast / (fast + slow));
        sim.finish(200 * MS).unwrap();
    }
    // Queue depth and bytes balance outstanding work; both paths stay busy (the device
    // split follows capacity, 75/25, since each path's queue is full).
    assert!(shares.iter().all(|&s| s > 0.6), "{shares:?}");
}

#[test]
fn service_time_weights_steer_load() {
    let mut cfg = config(1, &[]);
    cfg.paths.push(SimPath::iops("a", 100_000));
    cfg.paths.push(SimPath::iops("b", 100_000));
    cfg.paths[1].spec.weight = 10;
    // Light load (no queueing): service-time picks by (outstanding + 1) × latency / weight.
    let s = with_selector("st", SelectorSpec::ServiceTime);
    cfg.vms.push(SimVm::new(s, Load::Open { iops: 20_000 }));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(20 * MS);
    let (a, b) = (sim.path_completed(0), sim.path_completed(1));
    assert!(a > 10 * b.max(1), "weight 100 vs 10: {a} vs {b}");
    sim.finish(100 * MS).unwrap();
}

#[test]
fn vm_weighted_spreads_by_shares_and_priority() {
    let mut cfg = config(1, &[100_000, 100_000]);
    let mut big = with_selector("big", SelectorSpec::VmWeighted);
    big.priority = PriorityClass::High;
    big.shares = 4000;
    cfg.vms.push(backlogged(big, vec![0], 8));
    for i in 0..3 {
        cfg.vms.push(backlogged(
            with_selector(&format!("small{i}"), SelectorSpec::VmWeighted),
            vec![0],
            8,
        ));
    }
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(30 * MS);
    // The high-priority heavy VM keeps a path of its own; the small ones share the other.
    let path_of = |i: usize| {
        let mut p = sim.dispatch_paths(i)[10..].to_vec();
        p.sort_unstable();
        p.dedup();
        p
    };
    let big_p = path_of(0);
    assert_eq!(big_p.len(), 1, "{big_p:?}");
    for i in 1..4 {
        assert_eq!(path_of(i), vec![1 - big_p[0]], "small vm {i}");
    }
    sim.finish(200 * MS).unwrap();
}

#[test]
fn optimized_first_never_unusable() {
    let mut cfg = config(1, &[100_000, 100_000]);
    cfg.paths[1].spec.state = PathState::NonOptimized;
    cfg.vms.push(backlogged(
        with_selector("a", SelectorSpec::LeastQueueDepth),
        vec![0],
        64,
    ));
    cfg.events.push(crate::sim::PathEvent {
        at_ns: 20 * MS,
        path: 0,
        state: PathState::Inaccessible,
    });
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(40 * MS);
    let t = sim.dispatch_times(0);
    let p = sim.dispatch_paths(0);
    assert!(
        t.iter()
            .zip(p)
            .filter(|(&t, _)| t < 20 * MS)
            .all(|(_, &p)| p == 0),
        "optimized path only"
    );
    assert!(
        t.iter()
            .zip(p)
            .filter(|(&t, _)| t >= 20 * MS)
            .all(|(_, &p)| p == 1),
        "non-optimized once alone"
    );
    assert!(sim.rate(0, 21 * MS, 40 * MS) > 90_000.0);
    sim.finish(200 * MS).unwrap();
}

#[test]
fn priority_classes_order_vms_when_capacity_is_short() {
    let mut cfg = config(1, &[100_000]);
    let mut hi = spec("hi", 100, None, None);
    hi.priority = PriorityClass::High;
    cfg.vms.push(backlogged(hi, vec![0], 32));
    let mut lo = spec("lo", 10_000, Some(20_000), None);
    lo.priority = PriorityClass::Low;
    cfg.vms.push(backlogged(lo, vec![0], 32));
    cfg.vms
        .push(backlogged(spec("normal", 5_000, None, None), vec![0], 32));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(50 * MS);
    // Reservations first (all classes), then strictly by class.
    let (hi, lo, normal) = (
        sim.rate(0, 10 * MS, 50 * MS),
        sim.rate(1, 10 * MS, 50 * MS),
        sim.rate(2, 10 * MS, 50 * MS),
    );
    assert!(
        (lo - 20_000.0).abs() < 500.0,
        "low class gets its reservation: {lo}"
    );
    assert!(hi > 79_000.0, "high class takes the rest: {hi}");
    assert!(normal < 500.0, "normal waits: {normal}");
    sim.finish(500 * MS).unwrap();
}
