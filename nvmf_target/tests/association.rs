//! Controller life cycle and subsystem features over loopback: Keep Alive enforcement,
//! asynchronous events on ANA and namespace changes, ANA states per listener, the host
//! allow list, discovery, multiple portals, the admission hook, spreading over reactors.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nvme_spec::features::{aec, AsyncEvent, FeatureId};
use nvme_spec::log::{parse_ana_log, subtype};
use nvme_spec::{
    AnaState, DiscoveryLogEntry, DiscoveryLogHeader, IdentifyController, LogPageId, NsIdList,
    Status, DISCOVERY_NQN,
};
use nvmf_target::testing::{Connection, Host, InitiatorError, InitiatorOptions};
use nvmf_target::*;
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::BlockDevice;

#[test]
fn keep_alive_timeout_tears_down_a_silent_host() {
    let f = fixture();
    let mut o = opts();
    o.kato_ms = 400;
    // A host that keeps the controller alive survives well past KATO.
    let mut alive = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        alive.admin.keep_alive().unwrap().ok().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    alive.io[0].read(1, 0, 1, BS).unwrap().ok().unwrap();
    // Relax the surviving host's timeout while the silent one is watched.
    alive
        .admin
        .set_features(FeatureId::KeepAliveTimer.as_u8(), 20_000)
        .unwrap()
        .ok()
        .unwrap();
    // A silent host loses its admin and I/O connections shortly after KATO.
    let mut silent = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let t0 = Instant::now();
    silent.admin.wait_closed().unwrap();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
    silent.io[0].wait_closed().unwrap();
    // The other association is untouched.
    alive.admin.keep_alive().unwrap().ok().unwrap();
    alive.io[0].read(1, 0, 1, BS).unwrap().ok().unwrap();
    // The controller is gone: an I/O queue cannot join it any more.
    let mut late = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        late.connect(2, NQN, silent.admin.cntlid).unwrap().status(),
        Status::CONNECT_INVALID_PARAMETERS
    );
}

#[test]
fn ana_change_raises_an_event_and_steers_io() {
    let f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let portal = ListenAddr::from_socket_addr(f.addr);
    // Not enabled in AEC: no event.
    let cid = h.admin.submit_aer().unwrap();
    f.target
        .set_ana_state(NQN, &portal, Some(1), AnaState::NonOptimized)
        .unwrap();
    h.admin
        .set_features(
            FeatureId::AsyncEventConfig.as_u8(),
            aec::ANA_CHANGE | aec::NS_ATTRIBUTE,
        )
        .unwrap()
        .ok()
        .unwrap();
    f.target
        .set_ana_state(NQN, &portal, Some(1), AnaState::Inaccessible)
        .unwrap();
    let c = h.admin.wait(cid).unwrap().ok().unwrap();
    assert_eq!(AsyncEvent::from_dw0(c.cqe.dw0()), AsyncEvent::ANA_CHANGE);
    let log = h
        .admin
        .get_log(LogPageId::Ana as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let (cc, groups) = parse_ana_log(&log.data).unwrap();
    assert_eq!(cc, 2);
    let g1 = groups.iter().find(|g| g.grpid == 1).unwrap();
    assert_eq!(g1.state, AnaState::Inaccessible as u8);
    let g2 = groups.iter().find(|g| g.grpid == 2).unwrap();
    assert_eq!(g2.state, AnaState::Optimized as u8);
    // I/O to group 1 fails with the ANA status; group 2 still works.
    let io = &mut h.io[0];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s = io.read(1, 0, 1, BS).unwrap().status();
        if s == Status::ANA_INACCESSIBLE {
            break;
        }
        assert!(Instant::now() < deadline, "I/O still served: {s:?}");
    }
    io.read(2, 0, 1, 4096).unwrap().ok().unwrap();
    // Back to optimized: a new AER gets the next event, I/O works again.
    let cid = h.admin.submit_aer().unwrap();
    f.target
        .set_ana_state(NQN, &portal, None, AnaState::Optimized)
        .unwrap();
    let c = h.admin.wait(cid).unwrap().ok().unwrap();
    assert_eq!(AsyncEvent::from_dw0(c.cqe.dw0()), AsyncEvent::ANA_CHANGE);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !io.read(1, 0, 1, BS).unwrap().status().is_success() {
        assert!(Instant::now() < deadline);
    }
    // Namespace attribute notice: a new namespace appears in the changed list.
    let cid = h.admin.submit_aer().unwrap();
    let dev = Arc::new(MallocBdev::new("Extra", 64, 512, Default::default()).unwrap());
    let nsid = f
        .target
        .add_namespace(
            NQN,
            NamespaceParams {
                bdev: dev,
                nsid: Some(9),
                anagrpid: None,
            },
        )
        .unwrap();
    let c = h.admin.wait(cid).unwrap().ok().unwrap();
    assert_eq!(
        AsyncEvent::from_dw0(c.cqe.dw0()),
        AsyncEvent::NS_ATTRIBUTE_CHANGED
    );
    let l = h
        .admin
        .get_log(LogPageId::ChangedNamespaceList as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        NsIdList::from_slice(&l.data)
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![nsid]
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while !io
        .write(9, 0, &pattern(512, 4), BS)
        .unwrap()
        .status()
        .is_success()
    {
        assert!(Instant::now() < deadline, "new namespace never routed");
    }
    assert_eq!(
        io.read(9, 0, 1, BS).unwrap().ok().unwrap().data,
        pattern(512, 4)
    );
    // Removing it: I/O gets Invalid Namespace.
    f.target.remove_namespace(NQN, nsid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while io.read(9, 0, 1, BS).unwrap().status() != Status::INVALID_NAMESPACE_OR_FORMAT {
        assert!(Instant::now() < deadline);
    }
    // The removal raised a notice; take it (the log stays unread, so notices stay masked).
    let cid = h.admin.submit_aer().unwrap();
    let c = h.admin.wait(cid).unwrap().ok().unwrap();
    assert_eq!(
        AsyncEvent::from_dw0(c.cqe.dw0()),
        AsyncEvent::NS_ATTRIBUTE_CHANGED
    );
    // AER limit: four may be outstanding, a fifth is refused.
    for _ in 0..4 {
        h.admin.submit_aer().unwrap();
    }
    let cid = h.admin.submit_aer().unwrap();
    assert_eq!(
        h.admin.wait(cid).unwrap().status(),
        Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED
    );
}

#[test]
fn per_listener_ana_states_and_multiple_portals() {
    let f = fixture();
    let second = f
        .target
        .add_listener(
            NQN,
            &ListenAddr::new("127.0.0.1", "0"),
            AnaState::NonOptimized,
        )
        .unwrap();
    let a2 = second.socket_addr().unwrap();
    let mut h1 = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let mut h2 = Host::connect(a2, NQN, &opts(), 1).unwrap();
    let state = |h: &mut Host| {
        let log = h
            .admin
            .get_log(LogPageId::Ana as u8, 0, 4096, 0, 0, true)
            .unwrap()
            .ok()
            .unwrap();
        let (_, g) = parse_ana_log(&log.data).unwrap();
        g.iter().find(|g| g.grpid == 1).unwrap().state
    };
    assert_eq!(state(&mut h1), AnaState::Optimized as u8);
    assert_eq!(state(&mut h2), AnaState::NonOptimized as u8);
    // Data written through one portal reads back through the other.
    let d = pattern(4096, 8);
    h1.io[0].write(1, 40, &d, BS).unwrap().ok().unwrap();
    assert_eq!(h2.io[0].read(1, 40, 8, BS).unwrap().ok().unwrap().data, d);
    // Making portal 2 inaccessible does not affect portal 1.
    f.target
        .set_ana_state(NQN, &second, None, AnaState::Inaccessible)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while h2.io[0].read(1, 40, 8, BS).unwrap().status() != Status::ANA_INACCESSIBLE {
        assert!(Instant::now() < deadline);
    }
    h1.io[0].read(1, 40, 8, BS).unwrap().ok().unwrap();
    // Removing portal 2 ends the associations made through it.
    f.target.remove_listener(NQN, &second).unwrap();
    h2.admin.wait_closed().unwrap();
    h2.io[0].wait_closed().unwrap();
    assert!(
        std::net::TcpStream::connect(a2).is_err(),
        "portal still open"
    );
    h1.io[0].read(1, 40, 8, BS).unwrap().ok().unwrap();
}

#[test]
fn host_allow_list() {
    let f = fixture();
    let nqn = "nqn.2016-06.io.vmpath:restricted";
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000aa";
    f.target
        .create_subsystem(SubsystemParams {
            nqn: nqn.into(),
            serial: "R1".into(),
            model: "restricted".into(),
            allow_any_host: false,
            hosts: vec![allowed.into()],
        })
        .unwrap();
    f.target
        .add_namespace(
            nqn,
            NamespaceParams {
                bdev: f.malloc.clone(),
                nsid: None,
                anagrpid: None,
            },
        )
        .unwrap();
    f.target
        .add_listener(
            nqn,
            &ListenAddr::from_socket_addr(f.addr),
            AnaState::Optimized,
        )
        .unwrap();
    let mut o = opts();
    let mut c = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        c.connect(0, nqn, 0xffff).unwrap().status(),
        Status::CONNECT_INVALID_HOST
    );
    // The connection is still usable for another Connect (to a subsystem that allows it).
    c.connect(0, NQN, 0xffff).unwrap().ok().unwrap();
    o.hostnqn = allowed.into();
    let mut h = Host::connect(f.addr, nqn, &o, 1).unwrap();
    h.io[0].read(1, 0, 1, BS).unwrap().ok().unwrap();
    // Add the other host, and it may connect; remove it and its controller goes away.
    f.target.add_host(nqn, HOST).unwrap();
    let mut h2 = Host::connect(f.addr, nqn, &opts(), 1).unwrap();
    f.target.remove_host(nqn, HOST).unwrap();
    h2.io[0].wait_closed().unwrap();
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    assert_eq!(
        c.connect(0, nqn, 0xffff).unwrap().status(),
        Status::CONNECT_INVALID_HOST
    );
    // An unknown subsystem is an invalid parameter (SUBNQN in the data).
    let r = c.connect(0, "nqn.2016-06.io.vmpath:nope", 0xffff).unwrap();
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(r.cqe.dw0(), 0x1_0100);
    h.io[0].read(1, 0, 1, BS).unwrap().ok().unwrap();
}

#[test]
fn discovery_lists_every_portal() {
    let f = fixture();
    let p2 = f
        .target
        .add_listener(NQN, &ListenAddr::new("127.0.0.1", "0"), AnaState::Optimized)
        .unwrap();
    let other = "nqn.2016-06.io.vmpath:other";
    f.target
        .create_subsystem(SubsystemParams {
            nqn: other.into(),
            serial: "O1".into(),
            model: "other".into(),
            allow_any_host: true,
            hosts: vec![],
        })
        .unwrap();
    f.target
        .add_listener(
            other,
            &ListenAddr::from_socket_addr(f.addr),
            AnaState::Optimized,
        )
        .unwrap();
    let hidden = "nqn.2016-06.io.vmpath:hidden";
    f.target
        .create_subsystem(SubsystemParams {
            nqn: hidden.into(),
            serial: "H1".into(),
            model: "hidden".into(),
            allow_any_host: false,
            hosts: vec![],
        })
        .unwrap();
    f.target
        .add_listener(
            hidden,
            &ListenAddr::from_socket_addr(f.addr),
            AnaState::Optimized,
        )
        .unwrap();

    let mut d = Connection::open(f.addr, &opts()).unwrap();
    d.connect(0, DISCOVERY_NQN, 0xffff).unwrap().ok().unwrap();
    d.enable().unwrap();
    let id = d
        .identify(nvme_spec::cmd::cns::CONTROLLER, 0)
        .unwrap()
        .ok()
        .unwrap();
    let id = IdentifyController::from_slice(&id.data).unwrap();
    assert_eq!(id.cntrltype(), IdentifyController::CNTRLTYPE_DISCOVERY);
    assert_eq!(id.subnqn().unwrap(), DISCOVERY_NQN);
    let hdr = d
        .get_log(LogPageId::Discovery as u8, 0, 1024, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let hdr = DiscoveryLogHeader::from_slice(&hdr.data).unwrap();
    assert_eq!(
        hdr.numrec(),
        3,
        "two portals of {NQN}, one of {other}; {hidden} is not allowed"
    );
    let len = 1024 * (1 + hdr.numrec() as u32);
    let log = d
        .get_log(LogPageId::Discovery as u8, 0, len, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..hdr.numrec() as usize {
        let e = DiscoveryLogEntry::from_slice(&log.data[1024 * (i + 1)..1024 * (i + 2)]).unwrap();
        assert_eq!(e.subtype(), subtype::NVME);
        assert_eq!(e.trtype(), nvme_spec::log::trtype::TCP);
        seen.push((
            e.subnqn().unwrap().to_string(),
            e.trsvcid().unwrap().to_string(),
        ));
    }
    seen.sort();
    let mut want = vec![
        (NQN.to_string(), f.addr.port().to_string()),
        (NQN.to_string(), p2.trsvcid.clone()),
        (other.to_string(), f.addr.port().to_string()),
    ];
    want.sort();
    assert_eq!(seen, want);
    // Log change notice on the discovery controller.
    d.set_features(
        FeatureId::AsyncEventConfig.as_u8(),
        aec::DISCOVERY_LOG_CHANGE,
    )
    .unwrap()
    .ok()
    .unwrap();
    let cid = d.submit_aer().unwrap();
    f.target.remove_listener(NQN, &p2).unwrap();
    let c = d.wait(cid).unwrap().ok().unwrap();
    assert_eq!(
        AsyncEvent::from_dw0(c.cqe.dw0()),
        AsyncEvent::DISCOVERY_LOG_CHANGE
    );
    let hdr2 = d
        .get_log(LogPageId::Discovery as u8, 0, 1024, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let hdr2 = DiscoveryLogHeader::from_slice(&hdr2.data).unwrap();
    assert_eq!(hdr2.numrec(), 2);
    assert!(hdr2.genctr() > hdr.genctr());
    // A discovery controller has no I/O queues and no ANA log.
    assert_eq!(
        d.get_log(LogPageId::Ana as u8, 0, 4096, 0, 0, false)
            .unwrap()
            .status(),
        Status::INVALID_LOG_PAGE
    );
    let mut q = Connection::open(f.addr, &opts()).unwrap();
    assert_eq!(
        q.connect(1, DISCOVERY_NQN, d.cntlid).unwrap().status(),
        Status::CONNECT_INVALID_PARAMETERS
    );
}

struct Counting {
    seen: Arc<AtomicUsize>,
    reactors: Arc<Mutex<Vec<u32>>>,
    hold: Arc<AtomicUsize>,
}

struct CountingHook {
    seen: Arc<AtomicUsize>,
    hold: Arc<AtomicUsize>,
    done: usize,
}

impl AdmissionHook for CountingHook {
    fn admit(&mut self, vm_tag: u64, io: &IoInfo, _now: u64) -> Admit {
        assert_eq!(vm_tag, 42);
        assert_eq!(io.nsid, 1);
        if self.hold.load(Ordering::Acquire) > 0 {
            return Admit::Later;
        }
        self.seen.fetch_add(1, Ordering::AcqRel);
        Admit::Now
    }
    fn completed(&mut self, _vm_tag: u64, _io: &IoInfo, _now: u64, ok: bool) {
        assert!(ok);
        self.done += 1;
    }
}

impl AdmissionFactory for Counting {
    fn for_queue(&self, q: &QueueInfo) -> QueueAdmission {
        assert_eq!(q.subnqn, NQN);
        self.reactors.lock().unwrap().push(q.reactor);
        QueueAdmission {
            vm_tag: 42,
            hook: Box::new(CountingHook {
                seen: self.seen.clone(),
                hold: self.hold.clone(),
                done: 0,
            }),
        }
    }
}

#[test]
fn admission_hook_sees_every_io_and_can_hold_it() {
    let f = fixture();
    let seen = Arc::new(AtomicUsize::new(0));
    let hold = Arc::new(AtomicUsize::new(0));
    let reactors = Arc::new(Mutex::new(Vec::new()));
    f.target.set_admission_factory(Arc::new(Counting {
        seen: seen.clone(),
        reactors: reactors.clone(),
        hold: hold.clone(),
    }));
    let mut h = Host::connect(f.addr, NQN, &opts(), 4).unwrap();
    for (i, io) in h.io.iter_mut().enumerate() {
        io.write(1, i as u64 * 8, &pattern(4096, i as u8), BS)
            .unwrap()
            .ok()
            .unwrap();
    }
    assert_eq!(seen.load(Ordering::Acquire), 4);
    // Connections are spread over the reactors (the fixture runs one per core).
    let rs = reactors.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<u32> = rs.iter().copied().collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    assert_eq!(distinct.len(), cores.min(4), "queues on reactors {rs:?}");
    // Held I/O waits, in order, and completes once released.
    hold.store(1, Ordering::Release);
    let io = &mut h.io[0];
    let c1 = io
        .submit(
            nvmf_target::testing::rw_sqe(nvme_spec::NvmOpcode::Read, 1, 0, 8),
            &[],
            4096,
        )
        .unwrap();
    let c2 = io
        .submit(
            nvmf_target::testing::rw_sqe(nvme_spec::NvmOpcode::Read, 1, 8, 8),
            &[],
            4096,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        seen.load(Ordering::Acquire),
        4,
        "held I/O reached the device"
    );
    hold.store(0, Ordering::Release);
    assert_eq!(io.wait(c1).unwrap().ok().unwrap().data, pattern(4096, 0));
    assert_eq!(io.wait(c2).unwrap().ok().unwrap().data, pattern(4096, 1));
    assert_eq!(seen.load(Ordering::Acquire), 6);
}

#[test]
fn subsystem_deletion_and_target_shutdown() {
    let mut f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 2).unwrap();
    h.io[0]
        .write(1, 0, &pattern(4096, 1), BS)
        .unwrap()
        .ok()
        .unwrap();
    assert!(f.target.connection_count() >= 3);
    f.target.delete_subsystem(NQN).unwrap();
    h.admin.wait_closed().unwrap();
    for q in h.io.iter_mut() {
        q.wait_closed().unwrap();
    }
    assert!(matches!(
        f.target.delete_subsystem(NQN),
        Err(TargetError::NoSuchSubsystem(_))
    ));
    // The portal is closed with its last subsystem.
    assert!(std::net::TcpStream::connect(f.addr).is_err());
    let deadline = Instant::now() + Duration::from_secs(2);
    while f.target.connection_count() > 0 {
        assert!(Instant::now() < deadline, "connections left");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(f.target.shutdown(Duration::from_secs(2)));
    assert!(matches!(
        f.target.create_subsystem(SubsystemParams {
            nqn: NQN.into(),
            serial: "x".into(),
            model: "y".into(),
            allow_any_host: true,
            hosts: vec![],
        }),
        Err(TargetError::Stopped)
    ));
    f.runtime.take().unwrap().shutdown();
    let _ = InitiatorError::Closed;
}

/// Serves one host NQN through another device (what the daemon does for a host bound to a
/// VM); switchable at run time.
struct Redirect {
    host: String,
    to: Arc<dyn BlockDevice>,
    on: Arc<AtomicUsize>,
}

impl AdmissionFactory for Redirect {
    fn for_queue(&self, q: &QueueInfo) -> QueueAdmission {
        PassThroughFactory.for_queue(q)
    }

    fn device_for(&self, hostnqn: &str, dev: &Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        if hostnqn == self.host && self.on.load(Ordering::Acquire) > 0 {
            self.to.clone()
        } else {
            dev.clone()
        }
    }
}

#[test]
fn the_admission_factory_chooses_each_hosts_device_and_can_change_it() {
    let f = fixture();
    let other: Arc<dyn BlockDevice> =
        Arc::new(MallocBdev::new("Other", BLOCKS, BS, Default::default()).unwrap());
    let b_nqn = "nqn.2014-08.org.example:host-b";
    let on = Arc::new(AtomicUsize::new(1));
    f.target.set_admission_factory(Arc::new(Redirect {
        host: b_nqn.into(),
        to: other.clone(),
        on: on.clone(),
    }));
    let mut a = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let b_opts = InitiatorOptions {
        hostnqn: b_nqn.into(),
        hostid: [0xb; 16],
        ..opts()
    };
    let mut b = Host::connect(f.addr, NQN, &b_opts, 1).unwrap();
    let (pa, pb) = (pattern(BS as usize, 1), pattern(BS as usize, 2));
    a.io[0].write(1, 3, &pa, BS).unwrap().ok().unwrap();
    b.io[0].write(1, 3, &pb, BS).unwrap().ok().unwrap();
    // Each host sees its own device behind namespace 1.
    assert!(a.io[0].read(1, 3, 1, BS).unwrap().ok().unwrap().data == pa);
    assert!(b.io[0].read(1, 3, 1, BS).unwrap().ok().unwrap().data == pb);
    // Switched off and refreshed: B's connected queue now reaches the namespace's own device.
    on.store(0, Ordering::Release);
    f.target.refresh_routes();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = b.io[0].read(1, 3, 1, BS).unwrap().ok().unwrap().data;
        if got == pa {
            break;
        }
        assert!(got == pb, "neither device's data");
        assert!(Instant::now() < deadline, "routes never refreshed");
        std::thread::sleep(Duration::from_millis(5));
    }
}
