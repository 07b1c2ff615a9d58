//! Builders and checks shared by the simulation tests.

use crate::sim::{expected_shares, Load, Sim, SimConfig, SimPath, SimVm};
use crate::spec::VmSpec;

pub(crate) const MS: u64 = 1_000_000;

pub(crate) fn spec(name: &str, shares: u32, r: Option<u64>, l: Option<u64>) -> VmSpec {
    let mut s = VmSpec::new(name);
    s.shares = shares;
    s.reservation.iops = r;
    s.limit.iops = l;
    s
}

/// Backlogged VM on the given reactors.
pub(crate) fn backlogged(s: VmSpec, shards: Vec<usize>, depth: u32) -> SimVm {
    let mut v = SimVm::new(s, Load::Closed { depth });
    v.shards = shards;
    v
}

pub(crate) fn config(shards: usize, paths: &[u64]) -> SimConfig {
    let mut cfg = SimConfig::new(shards);
    for (i, &iops) in paths.iter().enumerate() {
        cfg.paths.push(SimPath::iops(&format!("p{i}"), iops));
    }
    cfg
}

/// Checks every VM's rate over `[from, to)` against water-filling on `capacity`:
/// within `pct` percent plus `quantum` requests over the window.
pub(crate) fn check_shares(sim: &Sim, cfg: &SimConfig, capacity: f64, from: u64, to: u64, pct: f64, quantum: f64) {
    let triples: Vec<(f64, f64, f64)> = cfg
        .vms
        .iter()
        .map(|v| {
            (
                f64::from(v.spec.shares),
                v.spec.reservation.iops.unwrap_or(0) as f64,
                v.spec.limit.iops.unwrap_or(0) as f64,
            )
        })
        .collect();
    let want = expected_shares(capacity, &triples);
    let secs = (to - from) as f64 / 1e9;
    for (i, w) in want.iter().enumerate() {
        let got = sim.rate(i, from, to);
        let tol = w * pct / 100.0 + quantum / secs;
        assert!(
            (got - w).abs() <= tol,
            "vm {i} {:?}: got {got:.0} IOPS, want {w:.0} ± {tol:.0} (all: want {want:?})",
            cfg.vms[i].spec
        );
    }
}

/// Limits: at most limit × W + 1 request in any window W of 10 ms or more.
pub(crate) fn check_limits(sim: &Sim, cfg: &SimConfig) {
    for (i, v) in cfg.vms.iter().enumerate() {
        let Some(l) = v.spec.limit.iops else { continue };
        for w in [10 * MS, 20 * MS, 50 * MS] {
            let max = sim.max_in_window(i, w) as u64;
            let bound = l * w / 1_000_000_000 + 1;
            assert!(max <= bound, "vm {i}: {max} dispatches in {w} ns, limit {l} IOPS allows {bound}");
        }
    }
}
