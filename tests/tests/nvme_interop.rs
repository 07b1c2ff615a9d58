//! The vmpath initiator against the vmpath target over loopback: identify, verified I/O of
//! every kind, two portals as two paths, ANA changes through the target's API, target kill
//! and restart with held I/O, discovery.

use std::time::Duration;

use nvme_paths::{AttachParams, CtrlOptions, MultipathMode, NvmeHost, PathId, PathState, Trid};
use nvme_spec::AnaState;
use vmpath_bdev::BlockDevice;
use vmpath_tests::load::VerifiedLoad;
use vmpath_tests::target::{TestTarget, NQN};

/// The shared failover timers, with more patience for I/O, admin commands and connects.
fn opts() -> CtrlOptions {
    CtrlOptions {
        io_timeout_us: 500_000,
        admin_timeout_ms: 1000,
        connect_timeout_ms: 1000,
        reconnect_delay_ms: 100,
        ..vmpath_tests::fast_failover_opts()
    }
}

fn attach(host: &NvmeHost, t: &TestTarget, i: usize) {
    let (a, p) = &t.portals[i];
    host.attach_controller(&AttachParams {
        name: "Nvme0".into(),
        trid: Trid::tcp(a, p, NQN),
        hostnqn: None,
        multipath: MultipathMode::Multipath,
        opts: opts(),
    })
    .unwrap();
}

#[test]
fn initiator_against_the_project_target() {
    let t = TestTarget::start(None, &[("127.0.0.1", "0"), ("127.0.0.1", "0")], 512, None).unwrap();
    let host = NvmeHost::new(None);
    attach(&host, &t, 0);
    attach(&host, &t, 1);
    let ns = host.namespace("Nvme0n1").expect("namespace");
    assert_eq!(ns.info().num_blocks, 512);
    assert_eq!(ns.info().block_size, 4096);
    assert_eq!(
        ns.live_path_count(),
        2,
        "matched by identity across both controllers"
    );
    let mut ch = ns.open_mp_channel().unwrap();
    let mut load = VerifiedLoad::new(256, 16);
    assert!(
        load.run_until(&mut ch, Duration::from_secs(5), |c| c.path_ready(PathId(0))
            && c.path_ready(PathId(1)))
    );
    load.run_for(&mut ch, Duration::from_millis(500));
    assert!(load.served(PathId(0)) > 0 && load.served(PathId(1)) > 0);
    // ANA: portal 0 inaccessible through the target's API; I/O continues on portal 1 only.
    t.set_ana(0, AnaState::Inaccessible).unwrap();
    let p0 = ns.path(PathId(0)).unwrap();
    assert!(
        load.run_until(&mut ch, Duration::from_secs(3), |_| p0.state()
            == PathState::Inaccessible)
    );
    // Requests already on the path when it changed finish there; then it gets no more.
    load.run_for(&mut ch, Duration::from_millis(100));
    let before = load.served(PathId(0));
    load.run_for(&mut ch, Duration::from_millis(300));
    assert_eq!(load.served(PathId(0)), before);
    t.set_ana(0, AnaState::Optimized).unwrap();
    assert!(
        load.run_until(&mut ch, Duration::from_secs(3), |_| p0.state()
            == PathState::Optimized)
    );
    // Kill and restart the target: I/O is held (no error), then completes.
    t.kill();
    let before = load.served(PathId(0));
    load.run_for(&mut ch, Duration::from_millis(800));
    t.restart().unwrap();
    assert!(
        load.run_until(&mut ch, Duration::from_secs(10), |c| c
            .path_ready(PathId(0))
            && c.path_ready(PathId(1))),
        "paths back after the restart"
    );
    load.run_for(&mut ch, Duration::from_millis(300));
    assert!(load.drain(&mut ch, Duration::from_secs(10)));
    assert!(load.served(PathId(0)) > before);
    assert_eq!(load.verify_all(&mut ch, Duration::from_secs(10)), 0);
    assert!(
        load.errors.is_empty(),
        "{:?}",
        &load.errors[..load.errors.len().min(5)]
    );
    assert!(ns.stats().write_ops > 0);
}

#[test]
fn discovery_through_the_project_target() {
    let t = TestTarget::start(None, &[("127.0.0.1", "0")], 64, None).unwrap();
    let (a, p) = &t.portals[0];
    let entries = nvme_paths::discover(a, p, "nqn.2024-01.io.vmpath:h1", opts()).unwrap();
    assert!(
        entries.iter().any(|e| e.subnqn == NQN && e.trsvcid == *p),
        "{entries:?}"
    );
}

#[test]
fn header_and_data_digests_against_the_project_target() {
    let t = TestTarget::start(None, &[("127.0.0.1", "0")], 256, None).unwrap();
    let host = NvmeHost::new(None);
    let (a, p) = &t.portals[0];
    host.attach_controller(&AttachParams {
        name: "Nvme0".into(),
        trid: Trid::tcp(a, p, NQN),
        hostnqn: None,
        multipath: MultipathMode::Multipath,
        opts: CtrlOptions {
            hdgst: true,
            ddgst: true,
            ..opts()
        },
    })
    .unwrap();
    let ns = host.namespace("Nvme0n1").unwrap();
    let mut ch = ns.open_mp_channel().unwrap();
    let mut load = VerifiedLoad::new(128, 8);
    assert!(load.run_until(&mut ch, Duration::from_secs(5), |c| c.path_ready(PathId(0))));
    load.run_for(&mut ch, Duration::from_millis(300));
    assert!(load.drain(&mut ch, Duration::from_secs(5)));
    assert_eq!(load.verify_all(&mut ch, Duration::from_secs(10)), 0);
    assert!(
        load.errors.is_empty(),
        "{:?}",
        &load.errors[..load.errors.len().min(5)]
    );
    assert!(load.done.len() > 100);
}
