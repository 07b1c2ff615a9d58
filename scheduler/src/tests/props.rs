//! Property tests on the simulated clock (issue 5, "Tests"), on one and two reactors:
//! limits never exceeded over any window W ≥ 10 ms beyond the configured burst (one request
//! in strict mode, `max(limit_catchup, limit × limit_catchup_us)` more otherwise); under saturation every
//! backlogged VM within ±2% of its water-filled share of what reservations and limits
//! leave; feasible reservations met; work conservation; per-VM FIFO; no request lost.

use proptest::prelude::*;

use super::util::*;
use crate::sim::{Load, Sim, SimVm};
use crate::spec::{SelectorSpec, VmSpec};

const PATH_IOPS: u64 = 100_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// (shares, kind, fraction, spread over both reactors)
type VmGen = (u32, u8, u64, bool);

fn build(shards: usize, paths: usize, gens: &[VmGen]) -> crate::sim::SimConfig {
    let cap = PATH_IOPS * paths as u64;
    let mut cfg = config(shards, &vec![PATH_IOPS; paths]);
    // Reservations add up to at most 80% of capacity.
    let r_budget = cap * 8 / 10 / gens.len() as u64;
    for (i, &(shares, kind, frac, spread)) in gens.iter().enumerate() {
        let r = (kind & 1 == 1).then(|| (r_budget * frac / 100).max(100));
        let l = (kind & 2 == 2).then(|| (cap * frac / 200).max(r.unwrap_or(0)).max(200));
        let mut s = spec(&format!("vm{i}"), shares, r, l);
        s.path_policy.selector = SelectorSpec::LeastQueueDepth;
        let on = if spread && shards > 1 {
            (0..shards).collect()
        } else {
            vec![i % shards]
        };
        cfg.vms.push(backlogged(s, on, 48));
    }
    cfg
}

fn saturated(shards: usize, paths: usize, gens: &[VmGen], pct: f64) -> Result<(), TestCaseError> {
    let cfg = build(shards, paths, gens);
    let mut sim = Sim::new(cfg.clone()).unwrap();
    let end = 100 * MS;
    sim.run_until(end);
    let cap = (PATH_IOPS * paths as u64) as f64;
    check_limits(&sim, &cfg);
    // Within `pct` of the water-filled share, plus two requests of quantisation per VM.
    check_shares(&sim, &cfg, cap, 30 * MS, end, pct, 2.0);
    // Reservations met.
    for (i, v) in cfg.vms.iter().enumerate() {
        if let Some(r) = v.spec.reservation.iops {
            let got = sim.rate(i, 30 * MS, end);
            prop_assert!(
                got >= r as f64 * 0.98 - 30.0,
                "vm {i}: {got} < reservation {r}"
            );
        }
    }
    // Work conservation: the device is kept busy unless every VM is at its limit.
    let total: f64 = (0..cfg.vms.len()).map(|i| sim.rate(i, 30 * MS, end)).sum();
    let limits: Option<u64> = cfg.vms.iter().map(|v| v.spec.limit.iops).sum();
    let ceiling = limits.map_or(cap, |l| cap.min(l as f64));
    prop_assert!(total >= ceiling * 0.98, "total {total} of {ceiling}");
    sim.finish(end * 3).map_err(TestCaseError::fail)
}

proptest! {
    // 10 random cases per run (plus the saved regressions); `PROPTEST_CASES=30000` for a
    // sweep.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn saturated_mix_is_fair_limited_reserved_and_lossless(
        paths in 1usize..=2,
        gens in proptest::collection::vec((100u32..=2000, 0u8..4, 1u64..=100, any::<bool>()), 2..=5),
    ) {
        saturated(1, paths, &gens, 2.0)?;
    }

    /// The same on two reactors, with VMs on one reactor or spread over both.
    #[test]
    fn saturated_mix_across_reactors(
        paths in 1usize..=2,
        gens in proptest::collection::vec((100u32..=2000, 0u8..4, 1u64..=100, any::<bool>()), 2..=5),
    ) {
        saturated(2, paths, &gens, 2.0)?;
    }

    /// Below capacity every VM gets what it asks (work conserving, nothing held back) and
    /// random arrivals with small hold queues keep FIFO order and lose nothing.
    #[test]
    fn unsaturated_open_loop_gets_its_demand(
        shards in 1usize..=2,
        demands in proptest::collection::vec((1_000u64..=15_000, 1u32..=8), 1..=5),
    ) {
        let mut cfg = config(shards, &[PATH_IOPS]);
        for (i, &(iops, max_held)) in demands.iter().enumerate() {
            let mut s = VmSpec::new(format!("vm{i}"));
            s.max_held = max_held;
            let mut v = SimVm::new(s, Load::Open { iops });
            v.shards = (0..shards).collect();
            cfg.vms.push(v);
        }
        let mut sim = Sim::new(cfg.clone()).unwrap();
        sim.run_until(100 * MS);
        for (i, &(iops, _)) in demands.iter().enumerate() {
            let got = sim.rate(i, 20 * MS, 100 * MS);
            prop_assert!((got - iops as f64).abs() <= iops as f64 * 0.1 + 50.0, "vm {i}: {got} vs demand {iops}");
        }
        sim.finish(300 * MS).map_err(TestCaseError::fail)?;
    }

    /// Limits hold for open-loop bursts on any number of reactors, whatever the timing.
    #[test]
    fn limit_holds_for_bursty_multi_reactor_vm(
        strict in any::<bool>(),
        shards in 1usize..=4,
        limit in 500u64..=20_000,
        demand_x in 2u64..=5,
        max_held in 1u32..=64,
    ) {
        let mut cfg = config(shards, &[PATH_IOPS, PATH_IOPS]);
        if strict {
            cfg.sched.limit_catchup = 0;
            cfg.sched.limit_catchup_us = 0;
        }
        let mut s = spec("lim", 1000, None, Some(limit));
        s.max_held = max_held;
        s.path_policy.selector = SelectorSpec::RoundRobin { ios: 3, bytes: 0 };
        let mut v = SimVm::new(s, Load::Open { iops: limit * demand_x });
        v.shards = (0..shards).collect();
        cfg.vms.push(v);
        cfg.vms.push(backlogged(VmSpec::new("bg"), vec![0], 32));
        let mut sim = Sim::new(cfg.clone()).unwrap();
        sim.run_until(100 * MS);
        check_limits(&sim, &cfg);
        let got = sim.rate(0, 20 * MS, 100 * MS);
        // Default mode loses nothing to waiting; strict mode may lose part of each wait.
        let floor = if strict { 0.9 } else { 0.98 };
        prop_assert!(got >= limit as f64 * floor, "limited VM got {got} of {limit}");
        sim.finish(2_000 * MS).map_err(TestCaseError::fail)?;
    }
}

/// A VM whose limit sits a few percent above its share is held by that limit now and then
/// (bursts after cross-reactor gating). It stays backlogged and must keep its share: when
/// such waits restarted its tag at virtual time it lost 1.6% of its share, and the
/// low-share VM beside it gained 7% (found by `saturated_mix_across_reactors`).
#[test]
fn a_limit_just_above_the_share_costs_nothing() {
    // vm0: limit 72000 above its 68082 share, reactor 0; vm1: reservation 34400 and limit
    // 86000, reactor 1; vm2: reservation 10400 and limit 26000, reactor 0; vm3: 311
    // shares, spread over both reactors.
    let gens = [
        (1063, 2, 72, false),
        (1669, 3, 86, false),
        (1627, 3, 26, false),
        (311, 0, 50, true),
    ];
    saturated(2, 2, &gens, 0.5).unwrap();
}
