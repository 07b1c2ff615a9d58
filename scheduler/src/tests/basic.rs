use crate::sim::{expected_shares, Load, Sim, SimConfig, SimPath, SimVm};
use crate::spec::VmSpec;

fn vm(name: &str, shares: u32) -> VmSpec {
    let mut s = VmSpec::new(name);
    s.shares = shares;
    s
}

#[test]
fn two_vms_share_one_path_by_shares() {
    let mut cfg = SimConfig::new(1);
    cfg.paths.push(SimPath::iops("p0", 100_000));
    cfg.vms
        .push(SimVm::new(vm("a", 1000), Load::Closed { depth: 32 }));
    cfg.vms
        .push(SimVm::new(vm("b", 3000), Load::Closed { depth: 32 }));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(100_000_000);
    let a = sim.rate(0, 20_000_000, 100_000_000);
    let b = sim.rate(1, 20_000_000, 100_000_000);
    let want = expected_shares(100_000.0, &[(1000.0, 0.0, 0.0), (3000.0, 0.0, 0.0)]);
    eprintln!("a={a} b={b} want={want:?}");
    assert!(
        (a - want[0]).abs() / want[0] < 0.02,
        "a={a} want {}",
        want[0]
    );
    assert!(
        (b - want[1]).abs() / want[1] < 0.02,
        "b={b} want {}",
        want[1]
    );
    sim.finish(200_000_000).unwrap();
}

#[test]
fn one_vm_spread_over_two_reactors_keeps_the_path_busy() {
    use super::util::*;
    for shares in [100, 500, 1000, 10_000] {
        let mut cfg = config(2, &[100_000]);
        cfg.vms.push(backlogged(vm("a", shares), vec![0, 1], 64));
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(20 * MS);
        let r = sim.rate(0, 5 * MS, 20 * MS);
        assert!(r > 99_000.0, "shares {shares}: {r}");
        sim.finish(100 * MS).unwrap();
    }
}

/// Regression: a VM whose reservation exceeds its share runs its share tag ahead of
/// virtual time. When it is served in the share phase while the others are momentarily
/// empty (work conservation), the share wheel's floor jumps to its tag. The others come
/// back with their old tags; they must restart at that floor, not be clamped to it on
/// every insert (which served them in arrival order, 1:1, instead of 2:1, for as long
/// as real time took to catch up — seen with vhost guests).
#[test]
fn a_reserved_vm_served_ahead_does_not_reorder_the_others() {
    use super::util::spec;
    use crate::shard::{Decision, Outcome};
    use crate::spec::{PathSpec, SchedulerConfig};
    use crate::Scheduler;
    use std::collections::VecDeque;

    let sched = Scheduler::new(SchedulerConfig {
        shards: 1,
        ..Default::default()
    })
    .unwrap();
    let mut ps = PathSpec::new("p", 40_000, 1_000);
    ps.max_outstanding = 1;
    let p = sched.add_path(ps).unwrap();
    let vms = [
        sched.create_vm(spec("gold", 2000, None, None)).unwrap(),
        sched.create_vm(spec("silver", 1000, None, None)).unwrap(),
        sched
            .create_vm(spec("floor", 250, Some(5_000), None))
            .unwrap(),
    ];
    let mut sh = sched.shard(0).unwrap();
    let step = 25_000; // one request per step: 40k IOPS
    let depth = 8;
    let mut outstanding = [0u32; 3];
    let mut inflight: VecDeque<usize> = VecDeque::new();
    let mut counts = [0u64; 3];
    let mut out = Vec::new();
    let mut now = 1_000_000;
    let mut token = 0;
    // refill[v]: whether VM v keeps `depth` requests outstanding in this phase.
    let mut run = |until: u64,
                   refill: [bool; 3],
                   now: &mut u64,
                   counts: &mut [u64; 3],
                   outstanding: &mut [u32; 3]| {
        while *now < until {
            *now += step;
            if let Some(v) = inflight.pop_front() {
                sh.complete(vms[v], p, 4096, step).unwrap();
                outstanding[v] -= 1;
            }
            for v in 0..3 {
                while refill[v] && outstanding[v] < depth {
                    token += 1;
                    outstanding[v] += 1;
                    if let Decision::Route(_) =
                        sh.enqueue(vms[v], token, 4096, false, *now).unwrap()
                    {
                        inflight.push_back(v);
                        counts[v] += 1;
                    }
                }
            }
            out.clear();
            sh.poll(*now, &mut out, 64);
            for r in &out {
                assert_eq!(r.outcome, Outcome::Route(p));
                let v = vms.iter().position(|&x| x == r.vm).unwrap();
                inflight.push_back(v);
                counts[v] += 1;
            }
        }
    };
    // 1 s backlogged: floor's tag runs ahead on reservation service.
    run(
        1_000_000_000,
        [true; 3],
        &mut now,
        &mut counts,
        &mut outstanding,
    );
    // gold and silver pause until their queues drain; floor alone is served (share phase).
    let until = now + 2_000_000;
    run(
        until,
        [false, false, true],
        &mut now,
        &mut counts,
        &mut outstanding,
    );
    assert_eq!(outstanding[0] + outstanding[1], 0);
    // Back to backlogged: over the next 0.5 s gold must get twice silver's service.
    let before = counts;
    let until = now + 500_000_000;
    run(until, [true; 3], &mut now, &mut counts, &mut outstanding);
    let gold = (counts[0] - before[0]) as f64;
    let silver = (counts[1] - before[1]) as f64;
    let floor = (counts[2] - before[2]) as f64;
    assert!(
        (gold / silver - 2.0).abs() < 0.04,
        "gold {gold} silver {silver} floor {floor}: want 2:1"
    );
    assert!(
        (floor - 2_500.0).abs() < 50.0,
        "floor {floor}: want its reservation"
    );
}
