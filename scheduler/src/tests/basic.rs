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
    cfg.vms.push(SimVm::new(vm("a", 1000), Load::Closed { depth: 32 }));
    cfg.vms.push(SimVm::new(vm("b", 3000), Load::Closed { depth: 32 }));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(100_000_000);
    let a = sim.rate(0, 20_000_000, 100_000_000);
    let b = sim.rate(1, 20_000_000, 100_000_000);
    let want = expected_shares(100_000.0, &[(1000.0, 0.0, 0.0), (3000.0, 0.0, 0.0)]);
    eprintln!("a={a} b={b} want={want:?}");
    assert!((a - want[0]).abs() / want[0] < 0.02, "a={a} want {}", want[0]);
    assert!((b - want[1]).abs() / want[1] < 0.02, "b={b} want {}", want[1]);
    sim.finish(200_000_000).unwrap();
}

fn rated(name: &str, shares: u32, r: Option<u64>, l: Option<u64>) -> VmSpec {
    let mut s = vm(name, shares);
    s.reservation.iops = r;
    s.limit.iops = l;
    s
}

#[test]
fn explore_mix() {
    for shards in [1usize, 2] {
        let mut cfg = SimConfig::new(shards);
        cfg.paths.push(SimPath::iops("p0", 100_000));
        let specs = [
            rated("a", 1000, Some(50_000), None),
            rated("b", 1000, None, None),
            rated("c", 4000, None, Some(20_000)),
            rated("d", 2000, None, None),
        ];
        for (i, s) in specs.iter().enumerate() {
            let mut v = SimVm::new(s.clone(), Load::Closed { depth: 16 });
            v.shards = vec![i % shards];
            cfg.vms.push(v);
        }
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(200_000_000);
        let want = expected_shares(
            100_000.0,
            &[(1000.0, 50_000.0, 0.0), (1000.0, 0.0, 0.0), (4000.0, 0.0, 20_000.0), (2000.0, 0.0, 0.0)],
        );
        for i in 0..4 {
            eprintln!("shards={shards} vm{i}: {} want {}", sim.rate(i, 50_000_000, 200_000_000), want[i]);
        }
        eprintln!("max in 10ms for c: {}", sim.max_in_window(2, 10_000_000));
        for i in 0..4 { let s = i % shards; eprintln!("vm{i}: {}", sim.shard_mut(s).debug_vm(i)); }
        eprintln!("vtime={}", sim.scheduler().vtime.load(std::sync::atomic::Ordering::Relaxed));
        sim.finish(400_000_000).unwrap();
    }
}

#[test]
fn explore_limit_trace() {
    let mut cfg = SimConfig::new(1);
    cfg.paths.push(SimPath::iops("p0", 100_000));
    let specs = [
        rated("b", 1000, None, None),
        rated("c", 4000, None, Some(20_000)),
        rated("a", 1000, Some(50_000), None),
    ];
    for s in specs.iter() {
        cfg.vms.push(SimVm::new(s.clone(), Load::Closed { depth: 16 }));
    }
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(2_000_000);
    let t = sim.dispatch_times(1);
    eprintln!("c times: {:?}", &t[..t.len().min(40)]);
    eprintln!("b {} c {}", sim.rate(0, 1_000_000, 2_000_000), sim.rate(1, 1_000_000, 2_000_000));
}

#[test]
fn explore_scale_small() {
    use crate::spec::SelectorSpec;
    for (paths, reactors, depth) in [(1usize, 1usize, 12u32), (2, 1, 12), (2, 2, 12), (2, 2, 64)] {
        let mut cfg = SimConfig::new(reactors);
        for p in 0..paths {
            cfg.paths.push(SimPath::iops(&format!("p{p}"), 100_000));
        }
        for i in 0..10 {
            let mut s = rated(&format!("vm{i}"), [500, 1000, 2000][i % 3], None, None);
            s.path_policy.selector = SelectorSpec::LeastQueueDepth;
            let mut v = SimVm::new(s, Load::Closed { depth });
            v.shards = vec![i % reactors];
            cfg.vms.push(v);
        }
        let mut sim = Sim::new(cfg).unwrap();
        sim.run_until(40_000_000);
        let r: Vec<u64> = (0..10).map(|i| sim.rate(i, 10_000_000, 40_000_000) as u64).collect();
        eprintln!("paths={paths} reactors={reactors} depth={depth}: {r:?}");
    }
}
