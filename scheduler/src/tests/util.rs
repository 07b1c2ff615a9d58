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

/// Checks every VM's rate over `[from, to)` against water-filling on `capacity`
/// (`expected_shares`). A VM whose ideal allocation is its limit must get at least 95% of
/// it (the window check proves it never gets more). Every other VM (unlimited, or limited
/// above its ideal share) must be within `pct` percent (plus `quantum` requests over the
/// window) of its water-filled share of what the capped VMs, at their measured rates,
/// leave: a capped VM that falls a little short of its limit hands that capacity to the
/// others (work conservation), and they are judged on what they could actually share.
pub(crate) fn check_shares(
    sim: &Sim,
    cfg: &SimConfig,
    capacity: f64,
    from: u64,
    to: u64,
    pct: f64,
    quantum: f64,
) {
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
    let ideal = expected_shares(capacity, &triples);
    let got: Vec<f64> = (0..cfg.vms.len()).map(|i| sim.rate(i, from, to)).collect();
    let secs = (to - from) as f64 / 1e9;
    let mut left = capacity;
    let mut rest = Vec::new();
    for (i, t) in triples.iter().enumerate() {
        if t.2 == 0.0 || ideal[i] < t.2 * 0.999 {
            rest.push(i);
            continue;
        }
        left -= got[i];
        assert!(
            got[i] >= t.2 * 0.95,
            "vm {i} capped at {} IOPS got only {:.0} (ideal {ideal:?}, got {got:?})",
            t.2,
            got[i]
        );
    }
    let sub: Vec<(f64, f64, f64)> = rest.iter().map(|&i| triples[i]).collect();
    let want = expected_shares(left, &sub);
    for (k, &i) in rest.iter().enumerate() {
        let w = want[k];
        let tol = w * pct / 100.0 + quantum / secs;
        assert!(
            (got[i] - w).abs() <= tol,
            "vm {i} {:?}: got {:.0} IOPS, want {w:.0} ± {tol:.0} (ideal {ideal:?}, got {got:?})",
            cfg.vms[i].spec,
            got[i]
        );
    }
}

/// Limits: at most limit × W + 1 + max(`limit_catchup`, limit × `limit_catchup_us`)
/// requests in any window W of 10 ms or more (strict mode, both 0: limit × W + 1).
pub(crate) fn check_limits(sim: &Sim, cfg: &SimConfig) {
    let catchup_ns = u64::from(cfg.sched.limit_catchup_us) * 1000;
    let k = u64::from(cfg.sched.limit_catchup);
    for (i, v) in cfg.vms.iter().enumerate() {
        let Some(l) = v.spec.limit.iops else { continue };
        for w in [10 * MS, 20 * MS, 50 * MS] {
            let max = sim.max_in_window(i, w) as u64;
            let bound = l * w / 1_000_000_000 + 1 + k.max(l * catchup_ns / 1_000_000_000 + 1);
            assert!(
                max <= bound,
                "vm {i}: {max} dispatches in {w} ns, limit {l} IOPS allows {bound}"
            );
        }
    }
}
