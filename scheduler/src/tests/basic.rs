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
