//! Control plane: admission, run-time changes, deletion, suspension, real threads.

use std::sync::Arc;

use super::util::*;
use crate::sched::{SchedError, Scheduler};
use crate::shard::{Decision, FailReason, Outcome, ShardError};
use crate::sim::Sim;
use crate::spec::{PathSpec, RateSpec, SchedulerConfig, VmQosUpdate, VmSpec};

fn sched(shards: usize) -> Arc<Scheduler> {
    Scheduler::new(SchedulerConfig {
        shards,
        max_vms: 16,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn admission_refuses_reservations_the_paths_cannot_carry() {
    let s = sched(1);
    s.add_path(PathSpec::new("p0", 100_000, 1_000)).unwrap();
    s.add_path(PathSpec::new("p1", 50_000, 500)).unwrap();
    s.create_vm(spec("a", 1000, Some(120_000), None)).unwrap();
    let e = s
        .create_vm(spec("b", 1000, Some(40_000), None))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            SchedError::Admission {
                total: 160_000,
                capacity: 150_000,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("160000 IOPS") && msg.contains("150000 IOPS"),
        "{msg}"
    );
    // Pinned to one path: that path's capacity counts.
    let mut c = spec("c", 1000, Some(60_000), None);
    c.path_policy.affinity = vec!["p1".into()];
    assert!(s
        .create_vm(c)
        .unwrap_err()
        .to_string()
        .contains("allowed paths"));
    // MB/s too.
    let mut d = VmSpec::new("d");
    d.reservation = RateSpec {
        iops: None,
        mbps: Some(2_000),
    };
    assert!(s.create_vm(d).unwrap_err().to_string().contains("MB/s"));
    // set_qos goes through admission as well.
    let a = s.vm_id("a").unwrap();
    let up = VmQosUpdate {
        reservation: Some(RateSpec {
            iops: Some(151_000),
            mbps: None,
        }),
        ..Default::default()
    };
    assert!(s.set_qos(a, &up).is_err());
    assert_eq!(s.vm(a).unwrap().spec.reservation.iops, Some(120_000));
}

#[test]
fn control_errors_are_values() {
    let s = sched(1);
    assert!(matches!(
        s.create_vm(VmSpec::new("")),
        Err(SchedError::Spec(_))
    ));
    let mut v = VmSpec::new("x");
    v.path_policy.affinity = vec!["nope".into()];
    assert!(matches!(
        s.create_vm(v),
        Err(SchedError::UnknownPathName(_))
    ));
    let a = s.create_vm(VmSpec::new("a")).unwrap();
    assert!(matches!(
        s.create_vm(VmSpec::new("a")),
        Err(SchedError::DuplicateVm(_))
    ));
    assert!(matches!(s.shard(3), Err(SchedError::ShardIndex { .. })));
    let sh = s.shard(0).unwrap();
    assert!(matches!(s.shard(0), Err(SchedError::ShardTaken(0))));
    drop(sh);
    let mut sh = s.shard(0).unwrap();
    s.delete_vm(a).unwrap();
    assert_eq!(
        sh.enqueue(a, 1, 4096, false, 10),
        Err(ShardError::UnknownVm(a))
    );
    assert!(matches!(s.delete_vm(a), Err(SchedError::UnknownVm(_))));
    // The slot is reused with a new generation; the old handle stays dead.
    let b = s.create_vm(VmSpec::new("b")).unwrap();
    assert_eq!(b.index, a.index);
    assert_ne!(b.gen, a.gen);
    assert!(sh.enqueue(a, 1, 4096, false, 20).is_err());
}

#[test]
fn delete_refuses_busy_vm_and_fails_stragglers_back() {
    let s = sched(1);
    s.add_path(PathSpec::new("p0", 100_000, 1_000)).unwrap();
    let a = s.create_vm(VmSpec::new("a")).unwrap();
    let mut sh = s.shard(0).unwrap();
    let Decision::Route(p) = sh.enqueue(a, 1, 4096, false, 1).unwrap() else {
        panic!("held")
    };
    assert!(matches!(
        s.delete_vm(a),
        Err(SchedError::VmBusy { inflight: 1, .. })
    ));
    sh.complete(a, p, 4096, 1000).unwrap();
    // Held while suspended, then deleted: the held request comes back as failed.
    s.suspend_vm(a).unwrap();
    assert!(!sh.should_pull(a));
    assert_eq!(sh.enqueue(a, 2, 4096, false, 2).unwrap(), Decision::Held);
    assert!(matches!(
        s.delete_vm(a),
        Err(SchedError::VmBusy { held: 1, .. })
    ));
    let mut out = Vec::new();
    sh.poll(3, &mut out, 16);
    assert!(out.is_empty(), "suspended: nothing released");
    s.resume_vm(a).unwrap();
    assert!(sh.should_pull(a));
    sh.poll(4, &mut out, 16);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].token, 2);
    assert_eq!(out[0].outcome, Outcome::Route(p));
    sh.complete(a, p, 4096, 1000).unwrap();
    s.delete_vm(a).unwrap();
    // drain() fails back whatever is still held at shutdown.
    let b = s.create_vm(VmSpec::new("b")).unwrap();
    s.suspend_vm(b).unwrap();
    sh.enqueue(b, 7, 512, true, 5).unwrap();
    out.clear();
    assert_eq!(sh.drain(&mut out), 1);
    assert_eq!(out[0].outcome, Outcome::Fail(FailReason::Drained));
    assert_eq!(sh.held(), 0);
}

#[test]
fn qos_changes_apply_at_run_time() {
    let mut cfg = config(1, &[100_000]);
    cfg.vms.push(backlogged(VmSpec::new("a"), vec![0], 32));
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(10 * MS);
    assert!(sim.rate(0, 2 * MS, 10 * MS) > 90_000.0);
    let up = VmQosUpdate {
        limit: Some(RateSpec {
            iops: Some(10_000),
            mbps: None,
        }),
        ..Default::default()
    };
    sim.scheduler().set_qos(sim.vm_id(0), &up).unwrap();
    sim.run_until(30 * MS);
    let r = sim.rate(0, 12 * MS, 30 * MS);
    assert!((r - 10_000.0).abs() < 300.0, "{r}");
    sim.finish(200 * MS).unwrap();
}

#[test]
fn bandwidth_limit_counts_bytes() {
    let mut cfg = config(1, &[100_000]);
    let mut s = VmSpec::new("a");
    s.limit = RateSpec {
        iops: None,
        mbps: Some(64),
    };
    let mut v = backlogged(s, vec![0], 16);
    v.bytes = 64 << 10;
    cfg.vms.push(v);
    let mut sim = Sim::new(cfg).unwrap();
    sim.run_until(50 * MS);
    let bps = sim.rate(0, 10 * MS, 50 * MS) * f64::from(64u32 << 10);
    assert!(bps <= 64e6 * 1.01 && bps > 64e6 * 0.97, "{bps}");
    sim.finish(500 * MS).unwrap();
}

/// Two real threads, each with its own shard, submit for the same limited VM: the limit
/// holds across reactors (the shared object is Send + Sync, shards are Send).
#[test]
fn limit_holds_across_real_threads() {
    let s = sched(2);
    let p = s
        .add_path(PathSpec::new("p0", 10_000_000, 100_000))
        .unwrap();
    let mut spec = VmSpec::new("a");
    spec.limit.iops = Some(1_000); // one request per ms
    spec.max_held = 1 << 16;
    let a = s.create_vm(spec).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|k| {
            let mut sh = s.shard(k).unwrap();
            std::thread::spawn(move || {
                let mut routed = Vec::new();
                let mut out = Vec::new();
                // Simulated clock shared by construction: 0..100 ms in 10 µs steps.
                for step in 0..10_000u64 {
                    let now = step * 10_000;
                    if step % 2 == k as u64 {
                        if let Decision::Route(q) = sh.enqueue(a, step, 4096, false, now).unwrap() {
                            routed.push(now);
                            sh.complete(a, q, 4096, 1).unwrap();
                        }
                    }
                    out.clear();
                    sh.poll(now, &mut out, 64);
                    for r in &out {
                        if let Outcome::Route(q) = r.outcome {
                            routed.push(now);
                            sh.complete(a, q, 4096, 1).unwrap();
                        }
                    }
                }
                routed
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    // At most limit × W + 2 in any 10 ms window, and close to the limit overall.
    for (i, &t) in all.iter().enumerate() {
        let n = all[i..].iter().take_while(|&&x| x < t + 10 * MS).count();
        assert!(n <= 12, "{n} in 10 ms from {t}");
    }
    assert!(all.len() >= 95 && all.len() <= 102, "{}", all.len());
    assert_eq!(s.path(p).unwrap().outstanding_ios(), 0);
}
