//! Real fault tests of NVMe/TCP multipath (issue 4): a host namespace and a target namespace
//! joined by two veth networks, one target portal per network, the initiator reaching the
//! same subsystem through each. Under a steady verified read/write load: cut one path by
//! `ip link set down` and by an nftables drop (no RST, no ICMP), bring it back, many times;
//! flip ANA states through the target's API; kill and restart the target. Asserts that no
//! request fails while a path is usable (or one may come back), that no data is lost or
//! corrupted, and that the cut path comes back and takes load again. Prints the stall per
//! cut (the longest request latency while the path was down) as p50 / p99.
//!
//! Needs root, `ip` and `nft` (see `ci/setup.sh`); says so and returns without them.

use std::time::{Duration, Instant};

use nvme_paths::{
    AttachParams, MultipathChannel, MultipathMode, NvmeHost, PathEventKind, PathId, PathState,
    PolicyKind, Trid,
};
use nvme_spec::AnaState;
use vmpath_tests::load::{percentile, VerifiedLoad};
use vmpath_tests::netns::{self, Fabric};
use vmpath_tests::target::{TestTarget, NQN};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    LinkDown,
    Firewall,
}

struct Rig {
    fabric: Fabric,
    target: TestTarget,
    host: NvmeHost,
    ch: MultipathChannel,
    load: VerifiedLoad,
}

fn cut(f: &Fabric, i: usize, how: Cut, on: bool) {
    match how {
        Cut::LinkDown => f.set_link(i, !on).unwrap(),
        Cut::Firewall => f.set_drop(i, on).unwrap(),
    }
}

/// Cuts path `i` for `down`, restores it, waits for it to come back and carry I/O. Returns
/// the stalls (largest read and write latency completed during the cut and recovery).
fn cut_and_restore(r: &mut Rig, i: usize, how: Cut, down: Duration) -> (Duration, Duration) {
    let path = PathId(i as u16);
    let p = r.ch.ns().path(path).unwrap();
    let t0 = Instant::now();
    cut(&r.fabric, i, how, true);
    let mut detected = None;
    let until = t0 + down;
    while Instant::now() < until {
        r.load.step(&mut r.ch);
        if detected.is_none() && !p.state().is_usable() {
            detected = Some(t0.elapsed());
        }
    }
    assert!(
        !p.state().is_usable() || p.ctrl().unwrap().resets() > 0,
        "path {i} still usable after a {how:?} cut"
    );
    cut(&r.fabric, i, how, false);
    let back = r
        .load
        .run_until(&mut r.ch, Duration::from_secs(15), |c| c.path_ready(path));
    assert!(back, "path {i} did not come back after a {how:?} cut");
    // It takes load again.
    let before = r.load.served(path);
    let until = Instant::now() + Duration::from_secs(5);
    while r.load.served(path) < before + 20 && Instant::now() < until {
        r.load.step(&mut r.ch);
    }
    assert!(
        r.load.served(path) >= before + 20,
        "path {i} came back but carries no I/O"
    );
    // Let writes that were in doubt during the cut finish (their fence is KATO + grace), so
    // the next cut starts clean and each cut's stall is its own.
    assert!(
        r.load
            .run_until(&mut r.ch, Duration::from_secs(10), |c| c.in_doubt() == 0),
        "in-doubt writes never released"
    );
    r.load.run_for(&mut r.ch, Duration::from_millis(100));
    assert!(
        r.load.errors.is_empty(),
        "errors after {how:?} cut of path {i}: {:?}",
        &r.load.errors[..r.load.errors.len().min(5)]
    );
    let now = Instant::now();
    let stalls = (
        r.load.max_latency_of(t0, now, false),
        r.load.max_latency_of(t0, now, true),
    );
    eprintln!(
        "{how:?} cut of path {i}: detected after {:?}, longest read {:?}, longest write {:?}",
        detected.unwrap_or_default(),
        stalls.0,
        stalls.1
    );
    stalls
}

fn setup() -> Option<Rig> {
    if !netns::available() {
        eprintln!("SKIPPED: the fault tests need root, ip and nft");
        return None;
    }
    let fabric = Fabric::build(2).unwrap();
    let target = TestTarget::start(
        Some(&fabric.target),
        &[
            (fabric.links[0].target_addr.as_str(), "4420"),
            (fabric.links[1].target_addr.as_str(), "4420"),
        ],
        1024,
        None,
    )
    .unwrap();
    // The test thread (and every thread it starts: controller threads, queue connectors)
    // lives in the host namespace.
    fabric.host.enter().unwrap();
    let host = NvmeHost::new(None);
    for l in &fabric.links {
        host.attach_controller(&AttachParams {
            name: "Nvme0".into(),
            trid: Trid::tcp(&l.target_addr, "4420", NQN),
            hostnqn: None,
            multipath: MultipathMode::Multipath,
            // Sub-second detection, 1 s KATO (the write fence is KATO + grace).
            opts: vmpath_tests::fast_failover_opts(),
        })
        .unwrap();
    }
    let ns = host.namespace("Nvme0n1").unwrap();
    ns.set_policy(PolicyKind::RoundRobin { rr_min_io: 4 });
    let mut ch = ns.open_mp_channel().unwrap();
    let mut load = VerifiedLoad::new(1024, 32);
    assert!(load.run_until(&mut ch, Duration::from_secs(10), |c| c
        .path_ready(PathId(0))
        && c.path_ready(PathId(1))));
    load.run_for(&mut ch, Duration::from_millis(300));
    Some(Rig {
        fabric,
        target,
        host,
        ch,
        load,
    })
}

#[test]
fn multipath_survives_link_cuts_firewall_drops_ana_flips_and_target_restart() {
    let Some(mut r) = setup() else { return };
    let events = r.host.subscribe(4096);
    // Per cut kind: read stalls, write stalls.
    let mut stalls = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let rounds = 4;
    for round in 0..rounds {
        for (k, how) in [Cut::LinkDown, Cut::Firewall].into_iter().enumerate() {
            let i = (round + k) % 2;
            let (rd, wr) = cut_and_restore(&mut r, i, how, Duration::from_millis(1200));
            stalls[k].0.push(rd);
            stalls[k].1.push(wr);
        }
    }
    // ANA flips through the target's API: all I/O moves to the other portal and back.
    for i in 0..2usize {
        let path = PathId(i as u16);
        let p = r.ch.ns().path(path).unwrap();
        r.target.set_ana(i, AnaState::Inaccessible).unwrap();
        assert!(r
            .load
            .run_until(&mut r.ch, Duration::from_secs(3), |_| p.state()
                == PathState::Inaccessible));
        r.load.run_for(&mut r.ch, Duration::from_millis(100));
        let before = r.load.served(path);
        r.load.run_for(&mut r.ch, Duration::from_millis(300));
        assert_eq!(
            r.load.served(path),
            before,
            "inaccessible path {i} carried I/O"
        );
        r.target.set_ana(i, AnaState::NonOptimized).unwrap();
        assert!(r
            .load
            .run_until(&mut r.ch, Duration::from_secs(3), |_| p.state()
                == PathState::NonOptimized));
        r.load.run_for(&mut r.ch, Duration::from_millis(100));
        let before = r.load.served(path);
        r.load.run_for(&mut r.ch, Duration::from_millis(300));
        assert_eq!(
            r.load.served(path),
            before,
            "non-optimized path {i} used while an optimized one is up"
        );
        r.target.set_ana(i, AnaState::Optimized).unwrap();
        assert!(r
            .load
            .run_until(&mut r.ch, Duration::from_secs(3), |_| p.state()
                == PathState::Optimized));
    }
    // Kill and restart the target: both paths down, I/O held (no error), then served again.
    let mut restart_stalls = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        r.target.kill();
        r.load.run_for(&mut r.ch, Duration::from_millis(700));
        r.target.restart().unwrap();
        assert!(
            r.load.run_until(&mut r.ch, Duration::from_secs(15), |c| c
                .path_ready(PathId(0))
                && c.path_ready(PathId(1))),
            "paths back after the target restart"
        );
        r.load.run_for(&mut r.ch, Duration::from_millis(1500));
        restart_stalls.push(r.load.max_latency_between(t0, Instant::now()));
    }
    assert!(
        r.load.drain(&mut r.ch, Duration::from_secs(15)),
        "requests still in flight"
    );
    let bad = r.load.verify_all(&mut r.ch, Duration::from_secs(30));
    assert_eq!(bad, 0, "{:?}", &r.load.errors[..r.load.errors.len().min(5)]);
    assert!(
        r.load.errors.is_empty(),
        "{:?}",
        &r.load.errors[..r.load.errors.len().min(5)]
    );
    // Events: every cut produced down, failover started/finished and up for its path.
    let mut kinds: Vec<PathEventKind> = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e.kind);
    }
    let count = |f: &dyn Fn(&PathEventKind) -> bool| kinds.iter().filter(|k| f(k)).count();
    assert!(count(&|k| matches!(k, PathEventKind::FailoverStarted)) >= 2 * rounds);
    assert!(count(&|k| matches!(k, PathEventKind::FailoverFinished { .. })) >= 2 * rounds);
    assert!(count(&|k| matches!(k, PathEventKind::AnaChange { .. })) >= 4);
    let ios = r.load.done.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (k, name) in ["link-down", "firewall-drop"].iter().enumerate() {
        let (rd, wr) = &stalls[k];
        println!(
            "stall per {name} cut ({} cuts): reads p50 {:.0} ms p99 {:.0} ms; writes p50 {:.0} ms p99 {:.0} ms",
            rd.len(),
            ms(percentile(rd, 50.0)),
            ms(percentile(rd, 99.0)),
            ms(percentile(wr, 50.0)),
            ms(percentile(wr, 99.0))
        );
    }
    println!(
        "stall per target restart: max {:.0} ms; {ios} verified I/Os, 0 errors",
        ms(restart_stalls.iter().copied().max().unwrap_or_default())
    );
}
