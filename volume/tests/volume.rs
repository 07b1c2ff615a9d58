//! Volumes through the scheduler: data integrity with slicing, shares, limits, suspend, backpressure.

#![allow(unsafe_code)] // Reason: tests lend DmaBufs to the block layer (IoVec), as frontends do.

use std::collections::HashMap;
use std::sync::Arc;

use scheduler::{PathSpec, RateSpec, Scheduler, SchedulerConfig, VmSpec};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::{BlockDevice, DmaBuf, IoChannel, IoError, IoRequest, IoType, SgList};
use vmpath_volume::VolumeManager;

const BS: u32 = 4096;

fn setup(sim: SimParams, max_outstanding: u32) -> (Arc<VolumeManager>, Arc<MallocBdev>) {
    let sched = Scheduler::new(SchedulerConfig {
        shards: 1,
        ..Default::default()
    })
    .unwrap();
    let mgr = VolumeManager::new(sched);
    let dev = Arc::new(MallocBdev::new("m0", 4096, BS, sim).unwrap());
    let mut ps = PathSpec::new("m0", 100_000, 400);
    ps.max_outstanding = max_outstanding;
    mgr.add_path(ps, dev.clone()).unwrap();
    (mgr, dev)
}

fn rw(
    ch: &mut dyn IoChannel,
    op: IoType,
    lba: u64,
    buf: &mut DmaBuf,
    tag: u64,
    now: &mut u64,
) -> Result<(), IoError> {
    let len = buf.len();
    // SAFETY: `buf` outlives the I/O: we poll until its completion before returning.
    let iov = unsafe { buf.iovec(0..len) };
    let req = IoRequest::with_iovs(
        op,
        lba,
        (len / BS as usize) as u32,
        SgList::from_slice(&[iov]),
        tag,
    );
    ch.submit(req).unwrap();
    let mut res = None;
    for _ in 0..100_000 {
        *now += 1_000;
        ch.poll(*now, &mut |c| {
            assert_eq!(c.tag, tag);
            res = Some(c.result);
        });
        if let Some(r) = res {
            return r;
        }
    }
    panic!("no completion");
}

#[test]
fn slices_translate_offsets_and_keep_data() {
    let (mgr, dev) = setup(SimParams::default(), 64);
    let s = mgr.scheduler().clone();
    let a = s.create_vm(VmSpec::new("vm-a")).unwrap();
    let b = s.create_vm(VmSpec::new("vm-b")).unwrap();
    let va = mgr
        .create_volume("vol-a", a, &["m0".into()], 0, Some(1024))
        .unwrap();
    let vb = mgr
        .create_volume("vol-b", b, &["m0".into()], 1024, Some(2048))
        .unwrap();
    assert_eq!(vb.info().num_blocks, 2048);
    mgr.install_on_thread(0).unwrap();
    let mut ca = va.open_channel().unwrap();
    let mut cb = vb.open_channel().unwrap();
    let mut now = 0;
    let mut w = DmaBuf::new(BS as usize);
    w.as_mut_slice().fill(0xa5);
    rw(ca.as_mut(), IoType::Write, 7, &mut w, 1, &mut now).unwrap();
    w.as_mut_slice().fill(0x5b);
    rw(cb.as_mut(), IoType::Write, 7, &mut w, 2, &mut now).unwrap();
    let mut r = DmaBuf::new(BS as usize);
    rw(ca.as_mut(), IoType::Read, 7, &mut r, 3, &mut now).unwrap();
    assert!(r.as_slice().iter().all(|&x| x == 0xa5));
    rw(cb.as_mut(), IoType::Read, 7, &mut r, 4, &mut now).unwrap();
    assert!(r.as_slice().iter().all(|&x| x == 0x5b));
    // The raw device shows B's block at 1024 + 7.
    let mut raw = dev.open_channel().unwrap();
    let mut rr = DmaBuf::new(BS as usize);
    // SAFETY: rr outlives the I/O (run_to_completion returns after its completion).
    let iov = unsafe { rr.iovec(0..BS as usize) };
    vmpath_bdev::sync::run_to_completion(
        raw.as_mut(),
        IoRequest::with_iovs(IoType::Read, 1031, 1, SgList::from_slice(&[iov]), 9),
        &|| 0,
        &mut |_| {},
    )
    .unwrap();
    assert!(rr.as_slice().iter().all(|&x| x == 0x5b));
    // Out of the slice: a clear error, nothing reaches the device.
    let e = rw(cb.as_mut(), IoType::Read, 2048, &mut r, 5, &mut now).unwrap_err();
    assert!(
        matches!(e, IoError::OutOfRange { capacity: 2048, .. }),
        "{e:?}"
    );
    assert_eq!(va.stats().write_ops, 1);
    assert_eq!(va.stats().read_ops, 1);
}

#[test]
fn volume_must_fit_its_storage() {
    let (mgr, _dev) = setup(SimParams::default(), 64);
    let vm = mgr.scheduler().create_vm(VmSpec::new("vm")).unwrap();
    assert!(mgr
        .create_volume("v", vm, &["m0".into()], 4000, Some(200))
        .is_err());
    assert!(mgr
        .create_volume("v", vm, &["nope".into()], 0, None)
        .is_err());
    assert!(mgr.create_volume("v", vm, &[], 0, None).is_err());
    let v = mgr
        .create_volume("v", vm, &["m0".into()], 4000, None)
        .unwrap();
    assert_eq!(v.info().num_blocks, 96);
}

/// One VM per spec, each with a volume over the whole of `m0`, and their channels on this
/// thread (installed as reactor 0).
fn vm_channels(mgr: &Arc<VolumeManager>, specs: Vec<VmSpec>) -> Vec<Box<dyn IoChannel>> {
    let s = mgr.scheduler().clone();
    let mut vols = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let vm = s.create_vm(spec).unwrap();
        vols.push(
            mgr.create_volume(&format!("v{i}"), vm, &["m0".into()], 0, None)
                .unwrap(),
        );
    }
    mgr.install_on_thread(0).unwrap();
    vols.iter().map(|v| v.open_channel().unwrap()).collect()
}

/// Keeps `qd` 4 KiB reads outstanding on each channel for `secs` of simulated time; returns
/// completions per channel.
fn drive(chans: &mut [Box<dyn IoChannel>], qd: usize, secs: f64) -> Vec<u64> {
    let n = chans.len();
    let mut bufs: Vec<Vec<DmaBuf>> = (0..n)
        .map(|_| (0..qd).map(|_| DmaBuf::new(BS as usize)).collect())
        .collect();
    let mut done = vec![0u64; n];
    let mut free: Vec<Vec<usize>> = (0..n).map(|_| (0..qd).collect()).collect();
    let mut now: u64 = 1;
    let end = (secs * 1e9) as u64;
    let mut lba = 0u64;
    while now < end {
        for (i, ch) in chans.iter_mut().enumerate() {
            while let Some(slot) = free[i].pop() {
                if !ch.should_pull() {
                    free[i].push(slot);
                    break;
                }
                // SAFETY: each buffer serves one I/O at a time and lives until the end.
                let iov = unsafe { bufs[i][slot].iovec(0..BS as usize) };
                lba = (lba + 7) % 1000;
                let req = IoRequest::with_iovs(
                    IoType::Read,
                    lba,
                    1,
                    SgList::from_slice(&[iov]),
                    slot as u64,
                );
                if let Err(e) = ch.submit(req) {
                    assert_eq!(e.reason, vmpath_bdev::SubmitErrorKind::QueueFull);
                    free[i].push(slot);
                    break;
                }
            }
            let f = &mut free[i];
            let d = &mut done[i];
            ch.poll(now, &mut |c| {
                c.result.unwrap();
                f.push(c.tag as usize);
                *d += 1;
            });
        }
        now += 2_000;
    }
    done
}

#[test]
fn shares_split_a_saturated_device() {
    // 20k IOPS device, queue depth 4 on the path: the scheduler decides who goes next.
    let (mgr, _dev) = setup(
        SimParams {
            max_iops: 20_000,
            ..Default::default()
        },
        4,
    );
    let shares = [3000u32, 1000, 500];
    let specs = shares
        .iter()
        .enumerate()
        .map(|(i, sh)| {
            let mut spec = VmSpec::new(format!("vm{i}"));
            spec.shares = *sh;
            spec
        })
        .collect();
    let mut chans = vm_channels(&mgr, specs);
    let done = drive(&mut chans, 32, 1.0);
    eprintln!("completions per VM over 1 s: {done:?}");
    let total: u64 = done.iter().sum();
    assert!(
        (19_000..=20_100).contains(&total),
        "device did {total} IOPS"
    );
    let sum_sh: u32 = shares.iter().sum();
    for (i, sh) in shares.iter().enumerate() {
        let want = total as f64 * *sh as f64 / sum_sh as f64;
        let got = done[i] as f64;
        assert!(
            (got - want).abs() / want < 0.05,
            "vm{i}: got {got}, want {want:.0} ({done:?})"
        );
    }
}

#[test]
fn limits_and_reservations_hold_on_a_shared_device() {
    let (mgr, _dev) = setup(
        SimParams {
            max_iops: 20_000,
            ..Default::default()
        },
        4,
    );
    let mut limited = VmSpec::new("limited");
    limited.limit = RateSpec {
        iops: Some(2_000),
        mbps: None,
    };
    let mut reserved = VmSpec::new("reserved");
    reserved.shares = 100;
    reserved.reservation = RateSpec {
        iops: Some(8_000),
        mbps: None,
    };
    let big = VmSpec::new("big");
    let mut chans = vm_channels(&mgr, vec![limited, reserved, big]);
    let done = drive(&mut chans, 32, 1.0);
    eprintln!("completions per VM over 1 s: {done:?}");
    assert!(done[0] <= 2_001, "limit exceeded: {done:?}");
    assert!(done[0] >= 1_900, "limited VM starved: {done:?}");
    assert!(done[1] >= 7_800, "reservation not met: {done:?}");
    // Work conserving: the rest goes to the big VM.
    let total: u64 = done.iter().sum();
    assert!(total >= 19_000, "device idle: {done:?}");
}

#[test]
fn suspend_stops_pulling_and_resume_completes_everything() {
    let (mgr, _dev) = setup(SimParams::default(), 64);
    let s = mgr.scheduler().clone();
    let vm = s.create_vm(VmSpec::new("vm")).unwrap();
    let v = mgr.create_volume("v", vm, &["m0".into()], 0, None).unwrap();
    mgr.install_on_thread(0).unwrap();
    let mut ch = v.open_channel().unwrap();
    assert!(ch.should_pull());
    s.suspend_vm(vm).unwrap();
    assert!(!ch.should_pull());
    // A request already pulled while suspended is held, not failed.
    let mut buf = DmaBuf::new(BS as usize);
    // SAFETY: buf lives until the completion is seen below.
    let iov = unsafe { buf.iovec(0..BS as usize) };
    ch.submit(IoRequest::with_iovs(
        IoType::Write,
        3,
        1,
        SgList::from_slice(&[iov]),
        77,
    ))
    .unwrap();
    let mut got: HashMap<u64, Result<(), IoError>> = HashMap::new();
    for t in 1..1000 {
        ch.poll(t * 1000, &mut |c| {
            got.insert(c.tag, c.result);
        });
    }
    assert!(got.is_empty(), "request completed while suspended");
    assert_eq!(ch.outstanding(), 1);
    s.resume_vm(vm).unwrap();
    assert!(ch.should_pull());
    for t in 1000..2000 {
        ch.poll(t * 1000, &mut |c| {
            got.insert(c.tag, c.result);
        });
    }
    assert_eq!(got.get(&77), Some(&Ok(())));
}

#[test]
fn channel_needs_an_installed_scheduler() {
    let (mgr, _dev) = setup(SimParams::default(), 64);
    let vm = mgr.scheduler().create_vm(VmSpec::new("vm")).unwrap();
    let v = mgr.create_volume("v", vm, &["m0".into()], 0, None).unwrap();
    let h = std::thread::spawn(move || v.open_channel().err().map(|e| e.to_string()));
    let err = h.join().unwrap().expect("must fail off-reactor");
    assert!(err.contains("scheduler"), "{err}");
}

#[test]
fn mixed_shares_limit_and_reservation_on_one_device() {
    let (mgr, _dev) = setup(
        SimParams {
            max_iops: 40_000,
            ..Default::default()
        },
        8,
    );
    let mut specs = Vec::new();
    let mut gold = VmSpec::new("gold");
    gold.shares = 2000;
    specs.push(gold);
    let mut silver = VmSpec::new("silver");
    silver.shares = 1000;
    specs.push(silver);
    let mut capped = VmSpec::new("capped");
    capped.shares = 4000;
    capped.limit = RateSpec {
        iops: Some(4000),
        mbps: None,
    };
    specs.push(capped);
    let mut floor = VmSpec::new("floor");
    floor.shares = 250;
    floor.reservation = RateSpec {
        iops: Some(10_000),
        mbps: None,
    };
    specs.push(floor);
    let mut chans = vm_channels(&mgr, specs);
    let done = drive(&mut chans, 32, 1.0);
    eprintln!("mixed: {done:?}");
    let want = [17333.0, 8667.0, 4000.0, 10000.0];
    for (i, w) in want.iter().enumerate() {
        let got = done[i] as f64;
        assert!(
            (got - w).abs() / w < 0.03,
            "vm{i}: got {got}, want {w} ({done:?})"
        );
    }
}
