//! 2 / 10 / 100 / 1000 VMs × 1–8 paths × 1–4 reactors.

use super::util::*;
use crate::sim::Sim;
use crate::spec::SelectorSpec;

/// VMs with shares in three classes (500 / 1000 / 2000), spread over reactors, each
/// backlogged; paths of equal capacity, least-queue-depth selection (capacity is the sum).
fn run(vms: usize, paths: usize, reactors: usize, ms: u64) {
    let per_path = 100_000;
    let mut cfg = config(reactors, &vec![per_path; paths]);
    cfg.sched.max_vms = vms as u32;
    // Enough outstanding demand to keep every path's queue depth (16) full twice over.
    let depth = (64 * paths / vms).max(2) as u32;
    for i in 0..vms {
        let mut s = spec(&format!("vm{i}"), [500, 1000, 2000][i % 3], None, None);
        s.path_policy.selector = SelectorSpec::LeastQueueDepth;
        cfg.vms.push(backlogged(s, vec![i % reactors], depth));
    }
    let t0 = std::time::Instant::now();
    let mut sim = Sim::new(cfg.clone()).unwrap();
    sim.run_until(ms * MS);
    let cap = (per_path * paths as u64) as f64;
    // Work conserving: the paths were kept busy.
    let total: f64 = (0..vms).map(|i| sim.rate(i, ms * MS / 4, ms * MS)).sum();
    assert!(total >= cap * 0.98, "total {total} of capacity {cap}");
    // Fair: each VM within 2% plus two requests of quantisation.
    for i in 0..vms.min(12) {
        eprintln!("vm{i} {}", sim.rate(i, ms * MS / 4, ms * MS));
    }
    check_shares(&sim, &cfg, cap, ms * MS / 4, ms * MS, 2.0, 2.0);
    sim.finish(ms * MS * 4).unwrap();
    eprintln!(
        "{vms} VMs × {paths} paths × {reactors} reactors: {:?}",
        t0.elapsed()
    );
}

#[test]
fn vms_2_paths_1_reactors_1() {
    run(2, 1, 1, 40);
}

#[test]
fn vms_10_paths_2_reactors_2() {
    run(10, 2, 2, 40);
}

#[test]
fn vms_100_paths_4_reactors_4() {
    run(100, 4, 4, 100);
}

#[test]
fn vms_1000_paths_8_reactors_4() {
    run(1000, 8, 4, 200);
}
