//! Path cut and restore with each failover policy; vm-affinity placement; migrate
//! recommendations.

use super::util::*;
use crate::sched::{MigrateReason, SchedEvent};
use crate::sim::{PathEvent, Sim};
use crate::spec::{FailoverPolicy, PathState, SelectorSpec, VmSpec};
use crate::vm::SuspendReason;

fn events(sim: &Sim) -> Vec<SchedEvent> {
    std::iter::from_fn(|| sim.scheduler().pop_event()).collect()
}

fn cut(path: usize, from: u64, to: u64) -> [PathEvent; 2] {
    [
        PathEvent {
            at_ns: from,
            path,
            state: PathState::FailingOver,
        },
        PathEvent {
            at_ns: to,
            path,
            state: PathState::Optimized,
        },
    ]
}

fn on_path(sim: &Sim, vm: usize, from: u64, to: u64) -> Vec<u16> {
    let t = sim.dispatch_times(vm);
    let p = sim.dispatch_paths(vm);
    let mut v: Vec<u16> = t
        .iter()
        .zip(p)
        .filter(|(&t, _)| t >= from && t < to)
        .map(|(_, &p)| p)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn hold_reroutes_to_the_other_path_and_returns_home() {
    let mut cfg = config(2, &[100_000, 100_000]);
    for i in 0..4 {
        cfg.vms
            .push(backlogged(VmSpec::new(format!("vm{i}")), vec![i % 2], 8));
    }
    cfg.events.extend(cut(0, 20 * MS, 40 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(60 * MS);
    let homes: Vec<Vec<u16>> = (0..4).map(|i| on_path(&sim, i, 0, 20 * MS)).collect();
    // Spread: two VMs per path, each on one path only.
    assert!(homes.iter().all(|h| h.len() == 1), "{homes:?}");
    assert_eq!(homes.iter().filter(|h| h[0] == 0).count(), 2);
    for (i, home) in homes.iter().enumerate() {
        // During the cut everyone runs on path 1 (the sim flags any dispatch to path 0).
        assert_eq!(on_path(&sim, i, 20 * MS + 1, 40 * MS), vec![1], "vm {i}");
        assert!(
            sim.rate(i, 22 * MS, 40 * MS) > 10_000.0,
            "vm {i} starved during the cut"
        );
        // Back home afterwards.
        assert_eq!(&on_path(&sim, i, 41 * MS, 60 * MS), home, "vm {i}");
    }
    sim.finish(200 * MS).unwrap();
}

#[test]
fn hold_with_no_path_holds_everything_and_releases_it_after() {
    let mut cfg = config(1, &[100_000]);
    cfg.vms.push(backlogged(VmSpec::new("a"), vec![0], 300));
    cfg.events.extend(cut(0, 10 * MS, 30 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(30 * MS - 1);
    assert_eq!(sim.rate(0, 11 * MS, 30 * MS - 1), 0.0);
    // The hold queue filled (256) and the frontend stopped pulling: backpressure, no drop.
    let held = sim.scheduler().vm(sim.vm_id(0)).unwrap().held;
    assert_eq!(held, 256);
    assert!(sim.stats(0).not_pulled > 0);
    sim.run_until(40 * MS);
    assert!(sim.rate(0, 31 * MS, 40 * MS) > 90_000.0);
    sim.finish(200 * MS).unwrap();
    assert_eq!(sim.stats(0).failed, 0);
}

#[test]
fn suspend_stops_pulling_and_resumes_without_loss() {
    let mut cfg = config(1, &[100_000]);
    let mut s = VmSpec::new("a");
    s.failover = FailoverPolicy::Suspend;
    cfg.vms.push(backlogged(s, vec![0], 16));
    cfg.events.extend(cut(0, 10 * MS, 30 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(20 * MS);
    let id = sim.vm_id(0);
    assert!(sim.scheduler().is_suspended(id));
    let info = sim.scheduler().vm(id).unwrap();
    assert_eq!(info.suspended, vec![SuspendReason::Failover]);
    assert_eq!(info.inflight, 0, "in-flight I/O completed");
    assert_eq!(sim.rate(0, 11 * MS, 20 * MS), 0.0);
    let ev = events(&sim);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            SchedEvent::VmSuspended {
                reason: SuspendReason::Failover,
                ..
            }
        )),
        "{ev:?}"
    );
    sim.run_until(40 * MS);
    assert!(!sim.scheduler().is_suspended(id));
    assert!(events(&sim)
        .iter()
        .any(|e| matches!(e, SchedEvent::VmResumed { .. })));
    assert!(sim.rate(0, 31 * MS, 40 * MS) > 90_000.0);
    sim.finish(200 * MS).unwrap();
    assert_eq!(sim.stats(0).failed, 0);
}

#[test]
fn suspend_reroutes_when_another_path_can_carry_the_reservation() {
    let mut cfg = config(1, &[100_000, 100_000]);
    let mut a = spec("a", 1000, Some(30_000), None);
    a.failover = FailoverPolicy::Suspend;
    a.path_policy.affinity = vec!["p0".into(), "p1".into()];
    cfg.vms.push(backlogged(a, vec![0], 16));
    // b has no reservation and homes on the other path.
    cfg.vms.push(backlogged(VmSpec::new("b"), vec![0], 16));
    let sim = Sim::new(cfg.clone()).unwrap();
    let home = sim.scheduler().vm(sim.vm_id(0)).unwrap().home_path.unwrap();
    drop(sim);
    cfg.events
        .extend(cut(usize::from(home.0), 10 * MS, 30 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(30 * MS);
    assert!(!sim.scheduler().is_suspended(sim.vm_id(0)));
    assert!(sim.rate(0, 12 * MS, 30 * MS) >= 30_000.0 * 0.98);
    sim.finish(200 * MS).unwrap();
}

#[test]
fn fail_after_timeout_fails_held_requests_back() {
    let mut cfg = config(1, &[100_000]);
    let mut s = VmSpec::new("a");
    s.failover = FailoverPolicy::FailAfter { timeout_ms: 5 };
    cfg.vms.push(backlogged(s, vec![0], 8));
    cfg.events.extend(cut(0, 10 * MS, 30 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(14 * MS);
    assert_eq!(sim.stats(0).failed, 0, "nothing fails before the timeout");
    sim.run_until(16 * MS);
    let failed = sim.stats(0).failed;
    assert!(failed >= 8, "held requests failed after 5 ms: {failed}");
    sim.run_until(40 * MS);
    assert!(sim.rate(0, 31 * MS, 40 * MS) > 90_000.0);
    assert_eq!(
        sim.scheduler().vm(sim.vm_id(0)).unwrap().failed_ios,
        sim.stats(0).failed
    );
    sim.finish(200 * MS).unwrap();
}

#[test]
fn vm_affinity_keeps_each_vm_on_its_path_while_it_lives() {
    let mut cfg = config(2, &[100_000; 4]);
    for i in 0..20 {
        cfg.vms
            .push(backlogged(VmSpec::new(format!("vm{i}")), vec![i % 2], 4));
    }
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(30 * MS);
    let mut per_path = [0; 4];
    for i in 0..20 {
        let p = on_path(&sim, i, 0, 30 * MS);
        assert_eq!(p.len(), 1, "vm {i} used {p:?}");
        let home = sim.scheduler().vm(sim.vm_id(i)).unwrap().home_path.unwrap();
        assert_eq!(p[0], home.0);
        per_path[usize::from(p[0])] += 1;
    }
    assert_eq!(per_path, [5; 4], "VMs spread evenly over paths");
    sim.finish(200 * MS).unwrap();
}

#[test]
fn migrate_recommended_when_paths_are_lost_and_cleared_after() {
    let mut cfg = config(1, &[100_000]);
    cfg.sched.migrate_window_ms = 20;
    cfg.tick_ns = 5 * MS;
    let mut s = spec("db", 1000, Some(50_000), None);
    s.failover = FailoverPolicy::Suspend;
    cfg.vms.push(backlogged(s, vec![0], 32));
    cfg.events.extend(cut(0, 20 * MS, 60 * MS));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(35 * MS);
    assert!(!events(&sim)
        .iter()
        .any(|e| matches!(e, SchedEvent::VmMigrateRecommended { .. })));
    sim.run_until(59 * MS);
    let ev = events(&sim);
    let rec = ev.iter().find_map(|e| match e {
        SchedEvent::VmMigrateRecommended {
            reason,
            measured_iops,
            reserved_iops,
            ..
        } => Some((*reason, *measured_iops, *reserved_iops)),
        _ => None,
    });
    assert_eq!(rec, Some((MigrateReason::PathsLost, 0, 50_000)), "{ev:?}");
    assert!(
        sim.scheduler()
            .vm(sim.vm_id(0))
            .unwrap()
            .migrate_recommended
    );
    sim.run_until(80 * MS);
    assert!(events(&sim)
        .iter()
        .any(|e| matches!(e, SchedEvent::VmMigrateCleared { .. })));
    sim.finish(300 * MS).unwrap();
}

#[test]
fn migrate_recommended_when_the_path_is_overcommitted() {
    // The capacity estimate (100k) admits the reservation, but the device delivers 40k.
    let mut cfg = config(1, &[40_000]);
    cfg.paths[0].spec.capacity_iops = 100_000;
    cfg.sched.migrate_window_ms = 10;
    cfg.tick_ns = 5 * MS;
    cfg.vms.push(backlogged(
        spec("db", 1000, Some(60_000), None),
        vec![0],
        32,
    ));
    let mut s = VmSpec::new("noisy");
    s.path_policy.selector = SelectorSpec::LeastQueueDepth;
    cfg.vms.push(backlogged(s, vec![0], 32));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(40 * MS);
    let ev = events(&sim);
    assert!(
        ev.iter().any(|e| matches!(e, SchedEvent::VmMigrateRecommended { reason: MigrateReason::Overcommitted, name, .. } if name == "db")),
        "{ev:?}"
    );
    // The reserved VM still gets all the device can give it.
    assert!(sim.rate(0, 10 * MS, 40 * MS) > 39_000.0);
    sim.finish(300 * MS).unwrap();
}
