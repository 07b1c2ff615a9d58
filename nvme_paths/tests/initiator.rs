//! The initiator against the scripted target: identify, I/O with data verification, two paths,
//! ANA changes, failover, the write rule, held I/O and fast fail, bad targets, discovery,
//! local paths.
#![allow(unsafe_code)] // Reason: test buffers are lent to the initiator as raw IoVecs.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Faults, MockTarget, SUBNQN};
use nvme_paths::{
    AttachParams, CtrlOptions, MultipathChannel, MultipathMode, NvmeHost, PathCompletion,
    PathEventKind, PathId, PathState, PolicyKind, Trid,
};
use nvme_spec::AnaState;
use vmpath_bdev::{BlockDevice, DmaBuf, IoError, IoRequest, IoType, SgList};

fn opts() -> CtrlOptions {
    CtrlOptions {
        keep_alive_timeout_ms: 1000,
        io_timeout_us: 300_000,
        admin_timeout_ms: 500,
        connect_timeout_ms: 500,
        reconnect_delay_ms: 100,
        ctrlr_loss_timeout_ms: -1,
        fast_io_fail_timeout_ms: -1,
        write_fence_grace_ms: 200,
        io_queue_depth: 64,
        hdgst: false,
        ddgst: false,
    }
}

fn attach(host: &NvmeHost, t: &MockTarget, l: usize, o: CtrlOptions) -> Vec<String> {
    host.attach_controller(&AttachParams {
        name: "Nvme0".into(),
        trid: Trid::tcp("127.0.0.1", &t.port(l), SUBNQN),
        hostnqn: Some("nqn.2024-01.io.vmpath:test-host".into()),
        multipath: MultipathMode::Multipath,
        opts: o,
    })
    .unwrap()
    .bdevs
}

/// A request with its own buffer.
struct Io {
    buf: DmaBuf,
}

impl Io {
    fn new(blocks: u32, fill: u8) -> Io {
        let mut buf = DmaBuf::new(blocks as usize * 4096);
        buf.as_mut_slice().fill(fill);
        Io { buf }
    }
    fn req(&mut self, op: IoType, lba: u64, tag: u64) -> IoRequest {
        let n = self.buf.len();
        let mut sg = SgList::new();
        // SAFETY: the buffer outlives the request (the test waits for its completion).
        sg.push(unsafe { self.buf.iovec(0..n) });
        IoRequest::with_iovs(op, lba, (n / 4096) as u32, sg, tag)
    }
}

fn wait(ch: &mut MultipathChannel, n: usize, timeout: Duration) -> Vec<PathCompletion> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        ch.poll_paths(&mut |c| out.push(c));
        assert!(
            Instant::now() < deadline,
            "only {} of {n} completions in {timeout:?} (held {}, in doubt {})",
            out.len(),
            ch.held(),
            ch.in_doubt()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    out
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls the channel until `path` is ready on it.
fn wait_ready(ch: &mut MultipathChannel, path: PathId) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ch.path_ready(path) {
        ch.poll_paths(&mut |_| {});
        assert!(Instant::now() < deadline, "path {path} not ready");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn one(ch: &mut MultipathChannel, req: IoRequest) -> PathCompletion {
    ch.submit(req).unwrap();
    wait(ch, 1, Duration::from_secs(10)).pop().unwrap()
}

use vmpath_bdev::IoChannel;

#[test]
fn identify_and_verified_io_of_every_kind() {
    let t = MockTarget::start(1, 2, 256);
    let host = NvmeHost::new(None);
    let bdevs = attach(&host, &t, 0, opts());
    assert_eq!(bdevs, vec!["Nvme0n1", "Nvme0n2"]);
    let ns = host.namespace("Nvme0n1").unwrap();
    assert_eq!(ns.info().block_size, 4096);
    assert_eq!(ns.info().num_blocks, 256);
    assert_eq!(ns.info().uuid, [1; 16]);
    let ctrls = host.controllers();
    assert_eq!(ctrls[0].serial_number, "MOCK0001");
    wait_for("controller enabled", Duration::from_secs(3), || {
        host.controllers()[0].state == "enabled"
    });
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    // In-capsule 4 KiB write, 64 KiB R2T write (MAXH2CDATA 32 KiB: two H2CData PDUs).
    let mut small = Io::new(1, 0xa5);
    let mut big = Io::new(16, 0);
    for (i, b) in big.buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let c = one(&mut ch, small.req(IoType::Write, 3, 1));
    assert_eq!((c.tag, c.result, c.path), (1, Ok(()), Some(PathId(0))));
    let c = one(&mut ch, big.req(IoType::Write, 10, 2));
    assert_eq!(c.result, Ok(()));
    assert_eq!(t.read_block(1, 3), vec![0xa5; 4096]);
    let mut rd = Io::new(16, 0);
    assert_eq!(one(&mut ch, rd.req(IoType::Read, 10, 3)).result, Ok(()));
    assert_eq!(rd.buf.as_slice(), big.buf.as_slice());
    assert_eq!(
        one(&mut ch, IoRequest::no_data(IoType::Flush, 0, 0, 4)).result,
        Ok(())
    );
    assert_eq!(
        one(&mut ch, IoRequest::no_data(IoType::Unmap, 10, 2, 5)).result,
        Ok(())
    );
    assert_eq!(
        one(&mut ch, IoRequest::no_data(IoType::WriteZeroes, 12, 1, 6)).result,
        Ok(())
    );
    assert_eq!(one(&mut ch, rd.req(IoType::Read, 10, 7)).result, Ok(()));
    let got = rd.buf.as_slice();
    assert!(
        got[..3 * 4096].iter().all(|&b| b == 0),
        "unmapped and zeroed blocks read as 0"
    );
    assert_eq!(&got[3 * 4096..], &big.buf.as_slice()[3 * 4096..]);
    // Out of range: rejected locally, never sent.
    let before = t.shared.ios.load(std::sync::atomic::Ordering::SeqCst);
    let c = one(&mut ch, small.req(IoType::Read, 256, 8));
    assert!(
        matches!(c.result, Err(IoError::OutOfRange { .. })),
        "{:?}",
        c.result
    );
    assert_eq!(
        t.shared.ios.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    // The second namespace is independent.
    let ns2 = host.namespace("Nvme0n2").unwrap();
    let mut ch2 = ns2.open_mp_channel().unwrap();
    wait_ready(&mut ch2, PathId(0));
    assert_eq!(one(&mut ch2, small.req(IoType::Write, 3, 9)).result, Ok(()));
    assert_eq!(t.read_block(2, 3), vec![0xa5; 4096]);
    assert_eq!(ns.stats().write_ops, 2);
    // The generic IoChannel route works too.
    let mut gen = ns.open_channel().unwrap();
    gen.submit(small.req(IoType::Read, 3, 10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut done = None;
    while done.is_none() {
        gen.poll(0, &mut |c| done = Some(c));
        assert!(Instant::now() < deadline);
    }
    assert_eq!(done.unwrap().result, Ok(()));
}

#[test]
fn second_controller_adds_a_path_round_robin_and_ana_changes() {
    let t = MockTarget::start(2, 1, 64);
    let host = NvmeHost::new(None);
    let events = host.subscribe(256);
    attach(&host, &t, 0, opts());
    attach(&host, &t, 1, opts());
    let ns = host.namespace("Nvme0n1").unwrap();
    assert_eq!(ns.live_path_count(), 2);
    assert_eq!(host.io_paths(None).unwrap()[0].1.len(), 2);
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    wait_ready(&mut ch, PathId(1));
    let mut io = Io::new(1, 1);
    let mut per_path = [0u32; 2];
    for i in 0..20 {
        let c = one(&mut ch, io.req(IoType::Write, i, i));
        per_path[c.path.unwrap().index()] += 1;
    }
    assert_eq!(per_path, [10, 10], "round robin with rr_min_io 1");
    // ANA: portal 0 inaccessible -> AEN -> ANA log re-read -> only portal 1 is used.
    t.set_ana(0, AnaState::Inaccessible);
    let p0 = ns.path(PathId(0)).unwrap();
    wait_for("path 0 inaccessible", Duration::from_secs(3), || {
        p0.state() == PathState::Inaccessible
    });
    for i in 0..10 {
        let c = one(&mut ch, io.req(IoType::Write, i, 100 + i));
        assert_eq!(c.path, Some(PathId(1)));
    }
    t.set_ana(0, AnaState::NonOptimized);
    wait_for("path 0 non-optimized", Duration::from_secs(3), || {
        p0.state() == PathState::NonOptimized
    });
    // Optimized first: still path 1.
    for i in 0..4 {
        assert_eq!(
            one(&mut ch, io.req(IoType::Read, i, 200 + i)).path,
            Some(PathId(1))
        );
    }
    // Queue depth policy and active-passive by namespace policy.
    ns.set_policy(PolicyKind::ActivePassive);
    t.set_ana(0, AnaState::Optimized);
    wait_for("path 0 optimized", Duration::from_secs(3), || {
        p0.state() == PathState::Optimized
    });
    for i in 0..4 {
        assert_eq!(
            one(&mut ch, io.req(IoType::Read, i, 300 + i)).path,
            Some(PathId(0))
        );
    }
    // The hook: submit_on honours the chosen path.
    ch.submit_on(PathId(1), io.req(IoType::Read, 0, 400))
        .unwrap();
    assert_eq!(
        wait(&mut ch, 1, Duration::from_secs(5))[0].path,
        Some(PathId(1))
    );
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push((e.path, e.kind));
    }
    assert!(
        kinds.contains(&(
            PathId(0),
            PathEventKind::AnaChange {
                old: PathState::Optimized,
                new: PathState::Inaccessible
            }
        )),
        "{kinds:?}"
    );
    assert!(kinds
        .iter()
        .any(|(p, k)| *p == PathId(1) && matches!(k, PathEventKind::Up { .. })));
}

#[test]
fn connection_loss_fails_over_without_errors_and_path_comes_back() {
    let t = MockTarget::start(2, 1, 64);
    let host = NvmeHost::new(None);
    attach(&host, &t, 0, opts());
    attach(&host, &t, 1, opts());
    let ns = host.namespace("Nvme0n1").unwrap();
    ns.set_policy(PolicyKind::QueueDepth);
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    wait_ready(&mut ch, PathId(1));
    let mut bufs: Vec<Io> = (0..32).map(|i| Io::new(1, i as u8)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        ch.submit(b.req(IoType::Write, i as u64, i as u64)).unwrap();
    }
    let done = wait(&mut ch, 32, Duration::from_secs(5));
    assert!(done.iter().all(|c| c.result.is_ok()));
    // Reads in flight when portal 0 drops every connection: all complete fine on portal 1.
    let mut reads: Vec<Io> = (0..32).map(|_| Io::new(1, 0xee)).collect();
    for (i, b) in reads.iter_mut().enumerate() {
        ch.submit(b.req(IoType::Read, i as u64, 100 + i as u64))
            .unwrap();
    }
    t.kill_connections(0);
    let done = wait(&mut ch, 32, Duration::from_secs(10));
    for c in &done {
        assert_eq!(c.result, Ok(()), "{c:?}");
    }
    for (i, b) in reads.iter().enumerate() {
        assert_eq!(b.buf.as_slice(), &vec![i as u8; 4096][..]);
    }
    // The path reconnects and takes load again.
    let p0 = ns.path(PathId(0)).unwrap();
    wait_for("path 0 back", Duration::from_secs(5), || {
        p0.state().is_usable()
    });
    wait_ready(&mut ch, PathId(0));
    let before = p0.completed().0;
    for i in 0..20 {
        assert_eq!(
            one(&mut ch, reads[0].req(IoType::Read, i, 500 + i)).result,
            Ok(())
        );
    }
    assert!(p0.completed().0 > before, "path 0 carries I/O again");
    assert!(
        host.controller("Nvme0")
            .iter()
            .map(|c| c.resets())
            .sum::<u64>()
            >= 1
    );
}

#[test]
fn write_in_doubt_waits_for_the_fence_and_is_not_overtaken() {
    // Portal 0 executes writes 400 ms late and then goes silent: the host's first attempt is
    // in doubt. KATO 1000 ms + grace 200 ms: the write may only be re-issued after the target
    // tore the controller down, so the late execution on portal 0 happens before the retry,
    // and a newer write acknowledged afterwards is never overwritten.
    let t = MockTarget::start(2, 1, 64);
    let host = NvmeHost::new(None);
    attach(&host, &t, 0, opts());
    attach(&host, &t, 1, opts());
    let ns = host.namespace("Nvme0n1").unwrap();
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    wait_ready(&mut ch, PathId(1));
    t.set_faults(
        0,
        Faults {
            write_delay: Some(Duration::from_millis(400)),
            ..Faults::default()
        },
    );
    let mut old = Io::new(1, 0x01);
    let t0 = Instant::now();
    ch.submit_on(PathId(0), old.req(IoType::Write, 5, 1))
        .unwrap();
    // Let the capsule leave, then silence the portal (responses are never sent).
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        ch.poll_paths(&mut |_| panic!("no completion yet"));
    }
    t.set_faults(
        0,
        Faults {
            silent: true,
            write_delay: Some(Duration::from_millis(400)),
            ..Faults::default()
        },
    );
    let c = wait(&mut ch, 1, Duration::from_secs(10)).pop().unwrap();
    let took = t0.elapsed();
    assert_eq!(c.result, Ok(()));
    assert_eq!(c.path, Some(PathId(1)), "re-issued on the other path");
    assert!(c.attempts >= 2);
    assert!(
        took >= Duration::from_millis(1000),
        "re-issued after only {took:?}: before KATO the first attempt could still land"
    );
    // Newer data, acknowledged on portal 1.
    let mut new = Io::new(1, 0x02);
    assert_eq!(one(&mut ch, new.req(IoType::Write, 5, 2)).result, Ok(()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.read_block(1, 5),
        vec![0x02; 4096],
        "acknowledged write overwritten"
    );
    let log = t.shared.write_log.lock().unwrap().clone();
    let at5: Vec<(usize, u8)> = log
        .iter()
        .filter(|e| e.1 == 5)
        .map(|e| (e.0, e.2))
        .collect();
    assert_eq!(
        at5,
        vec![(0, 1), (1, 1), (1, 2)],
        "late landing, retry, newer write in that order"
    );
}

#[test]
fn io_is_held_while_a_path_may_return_then_fast_fails() {
    let t = MockTarget::start(1, 1, 64);
    let host = NvmeHost::new(None);
    let mut o = opts();
    o.fast_io_fail_timeout_ms = 1500;
    o.ctrlr_loss_timeout_ms = 60_000;
    attach(&host, &t, 0, o);
    let ns = host.namespace("Nvme0n1").unwrap();
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    let p0 = ns.path(PathId(0)).unwrap();
    // Down, then back within fast_io_fail: the held read completes fine.
    t.set_faults(
        0,
        Faults {
            silent: true,
            ..Faults::default()
        },
    );
    t.kill_connections(0);
    wait_for("path down", Duration::from_secs(3), || {
        !p0.state().is_usable()
    });
    let mut io = Io::new(1, 0);
    ch.submit(io.req(IoType::Read, 1, 1)).unwrap();
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        ch.poll_paths(&mut |c| panic!("held I/O completed early: {c:?}"));
    }
    assert_eq!(ch.held(), 1);
    t.set_faults(0, Faults::default());
    let c = wait(&mut ch, 1, Duration::from_secs(5)).pop().unwrap();
    assert_eq!(c.result, Ok(()));
    // Down for longer than fast_io_fail: held I/O fails with NoPath.
    t.set_faults(
        0,
        Faults {
            silent: true,
            ..Faults::default()
        },
    );
    t.kill_connections(0);
    wait_for("path down", Duration::from_secs(3), || {
        !p0.state().is_usable()
    });
    ch.submit(io.req(IoType::Read, 1, 2)).unwrap();
    let t0 = Instant::now();
    let c = wait(&mut ch, 1, Duration::from_secs(5)).pop().unwrap();
    assert_eq!(c.result, Err(IoError::NoPath));
    assert!(t0.elapsed() < Duration::from_millis(1600));
}

fn bad_target_case(f: Faults) {
    let t = MockTarget::start(2, 2, 64);
    let host = NvmeHost::new(None);
    attach(&host, &t, 0, opts());
    attach(&host, &t, 1, opts());
    let ns = host.namespace("Nvme0n1").unwrap();
    ns.set_policy(PolicyKind::ActivePassive);
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    wait_ready(&mut ch, PathId(1));
    let ns2 = host.namespace("Nvme0n2").unwrap();
    let mut ch2 = ns2.open_mp_channel().unwrap();
    wait_ready(&mut ch2, PathId(1));
    let ctrl0 = host.controller("Nvme0")[0].clone();
    let resets = ctrl0.resets();
    t.set_faults(0, f);
    let mut io = Io::new(1, 0x33);
    let c = one(&mut ch, io.req(IoType::Read, 2, 1));
    assert_eq!(c.result, Ok(()), "the bad controller's I/O failed over");
    assert_eq!(c.path, Some(PathId(1)));
    wait_for("controller reset", Duration::from_secs(3), || {
        ctrl0.resets() > resets
    });
    // The other namespace on the healthy portal never noticed.
    ns2.set_policy(PolicyKind::ActivePassive);
    let c = one(&mut ch2, io.req(IoType::Write, 2, 2));
    assert_eq!(c.result, Ok(()));
    // The bad controller comes back after its reset.
    t.set_faults(0, Faults::default());
    let p0 = ns.path(PathId(0)).unwrap();
    wait_for("path 0 back", Duration::from_secs(5), || {
        p0.state().is_usable()
    });
}

#[test]
fn bad_target_completion_for_unknown_cid() {
    bad_target_case(Faults {
        wrong_cid: true,
        ..Faults::default()
    });
}

#[test]
fn bad_target_malformed_pdu() {
    bad_target_case(Faults {
        malformed: true,
        ..Faults::default()
    });
}

#[test]
fn bad_target_unsolicited_completion() {
    bad_target_case(Faults {
        unsolicited: true,
        ..Faults::default()
    });
}

#[test]
fn bad_target_silence() {
    bad_target_case(Faults {
        silent: true,
        ..Faults::default()
    });
}

#[test]
fn discovery_lists_every_portal() {
    let t = MockTarget::start(2, 1, 8);
    let entries =
        nvme_paths::discover("127.0.0.1", &t.port(0), "nqn.2024-01.io.vmpath:h", opts()).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.subnqn == SUBNQN && e.trtype == 3));
    let ports: Vec<String> = entries.iter().map(|e| e.trsvcid.clone()).collect();
    assert_eq!(ports, vec![t.port(0), t.port(1)]);
}

#[test]
fn local_device_is_a_path_and_detach_removes_paths() {
    let t = MockTarget::start(1, 1, 16);
    let host = NvmeHost::new(None);
    attach(&host, &t, 0, opts());
    let ns = host.namespace("Nvme0n1").unwrap();
    let local = Arc::new(
        vmpath_bdev::malloc::MallocBdev::new("Local0", 16, 4096, Default::default())
            .unwrap()
            .with_uuid([1; 16]),
    );
    let lp = ns.add_local_path(local.clone()).unwrap();
    assert_eq!(lp, PathId(1));
    // A device with another identity is refused.
    let other = Arc::new(
        vmpath_bdev::malloc::MallocBdev::new("Other", 16, 4096, Default::default()).unwrap(),
    );
    assert!(ns.add_local_path(other).is_err());
    let mut ch = ns.open_mp_channel().unwrap();
    wait_ready(&mut ch, PathId(0));
    let mut io = Io::new(1, 0x44);
    ch.submit_on(lp, io.req(IoType::Write, 7, 1)).unwrap();
    let c = wait(&mut ch, 1, Duration::from_secs(5)).pop().unwrap();
    assert_eq!((c.result, c.path), (Ok(()), Some(lp)));
    assert_eq!(local.stats().write_ops, 1);
    // Detaching the only remote controller leaves the namespace with its local path.
    let removed = host.detach_controller("Nvme0", None, None, None).unwrap();
    assert!(removed.is_empty());
    assert_eq!(ns.live_path_count(), 1);
    let c = one(&mut ch, io.req(IoType::Read, 7, 2));
    assert_eq!((c.result, c.path), (Ok(()), Some(lp)));
    assert!(host.detach_controller("Nvme0", None, None, None).is_err());
}

#[test]
fn attach_errors_are_clear() {
    let t = MockTarget::start(1, 1, 8);
    let host = NvmeHost::new(None);
    let mut p = AttachParams {
        name: "Nvme0".into(),
        trid: Trid::tcp("127.0.0.1", &t.port(0), "nqn.2024-01.io.vmpath:nope"),
        hostnqn: None,
        multipath: MultipathMode::Disable,
        opts: opts(),
    };
    let e = host.attach_controller(&p).unwrap_err().to_string();
    assert!(e.contains("Connect failed") && e.contains("Nvme0"), "{e}");
    p.trid.subnqn = SUBNQN.into();
    host.attach_controller(&p).unwrap();
    let e = host.attach_controller(&p).unwrap_err().to_string();
    assert!(e.contains("multipath is disabled"), "{e}");
    // Nothing listens on port 1.
    p.name = "Nvme1".into();
    p.trid.trsvcid = "1".into();
    let e = host.attach_controller(&p).unwrap_err().to_string();
    assert!(e.contains("Nvme1") && e.contains("connect"), "{e}");
}
