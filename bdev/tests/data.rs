//! Data-integrity and behaviour tests of the in-memory backends (malloc, null) and of the
//! simulation knobs, through the public `BlockDevice` / `IoChannel` API.

#![allow(unsafe_code)] // Reason: test buffers are lent to devices as raw IoVecs (the bdev API contract).

mod common;

use std::sync::Arc;

use common::{
    fill_pattern, read_blocks, run_on_runtime, run_on_test_thread, run_one, start_runtime,
    write_blocks, RegionCheck, RegionSpec,
};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::{
    BlockDevice, DmaBuf, IoChannel, IoCompletion, IoError, IoRequest, IoType, SgList,
    SubmitErrorKind,
};

fn malloc(blocks: u64, bs: u32) -> MallocBdev {
    MallocBdev::new("m0", blocks, bs, SimParams::default()).unwrap()
}

/// Several reactor threads, each writing its own region at QD 1, 32 and 128 and reading it
/// back.
#[test]
fn malloc_regions_on_runtime_threads() {
    let rt = start_runtime(3);
    for bs in [512u32, 4096] {
        let d: Arc<dyn BlockDevice> = Arc::new(malloc(64 * 1024, bs));
        let mut specs = Vec::new();
        let mut base = 0;
        for (i, (qd, io_blocks)) in [(1usize, 1u32), (32, 4), (128, 2), (128, 1), (32, 16)]
            .into_iter()
            .enumerate()
        {
            let spec = RegionSpec {
                base_lba: base,
                ios: 1000,
                io_blocks,
                qd,
                seed: bs as u64 * 10 + i as u64,
            };
            base += spec.blocks();
            specs.push(spec);
        }
        for (i, (r, max_qd)) in run_on_runtime(&rt, d.clone(), &specs)
            .into_iter()
            .enumerate()
        {
            assert_eq!(r, Ok(()), "checker {i} (bs {bs})");
            assert_eq!(max_qd, specs[i].qd, "checker {i} reached its queue depth");
        }
        let s = d.stats();
        assert_eq!(s.write_ops, 5000);
        assert_eq!(s.read_ops, 5000);
        assert_eq!(s.errors, 0);
        let bytes: u64 = specs.iter().map(|s| s.blocks() * bs as u64).sum();
        assert_eq!((s.bytes_written, s.bytes_read), (bytes, bytes));
        // Regions are disjoint: a fresh channel sees every region's own pattern.
        let mut ch = d.open_channel().unwrap();
        for spec in &specs {
            let got = read_blocks(ch.as_mut(), bs as usize, spec.base_lba, spec.io_blocks);
            let mut want = vec![0u8; spec.io_blocks as usize * bs as usize];
            fill_pattern(&mut want, bs as usize, spec.base_lba, spec.seed);
            assert_eq!(got.as_slice(), &want[..]);
        }
    }
    rt.shutdown();
}

/// The same on reactors polled by the test thread (deterministic interleaving).
#[test]
fn malloc_regions_on_test_thread_reactors() {
    let d = malloc(16 * 1024, 4096);
    let checks = [1usize, 32, 128]
        .iter()
        .enumerate()
        .map(|(i, &qd)| {
            RegionCheck::new(
                d.open_channel().unwrap(),
                4096,
                RegionSpec {
                    base_lba: i as u64 * 4096,
                    ios: 512,
                    io_blocks: 8,
                    qd,
                    seed: i as u64,
                },
            )
        })
        .collect();
    for (r, _) in run_on_test_thread(checks) {
        assert_eq!(r, Ok(()));
    }
}

#[test]
fn malloc_unmap_and_write_zeroes_read_back_zeroes() {
    let d = malloc(256, 512);
    assert!(d.unmap_zeroes());
    let mut ch = d.open_channel().unwrap();
    let mut data = vec![0u8; 64 * 512];
    fill_pattern(&mut data, 512, 0, 5);
    write_blocks(ch.as_mut(), 512, 0, &data);
    assert_eq!(
        run_one(ch.as_mut(), IoRequest::no_data(IoType::Unmap, 2, 5, 1)).result,
        Ok(())
    );
    assert_eq!(
        run_one(
            ch.as_mut(),
            IoRequest::no_data(IoType::WriteZeroes, 40, 20, 2)
        )
        .result,
        Ok(())
    );
    assert_eq!(
        run_one(ch.as_mut(), IoRequest::no_data(IoType::Flush, 0, 0, 3)).result,
        Ok(())
    );
    let back = read_blocks(ch.as_mut(), 512, 0, 64);
    for i in 0..64 {
        let blk = &back.as_slice()[i * 512..(i + 1) * 512];
        if (2..7).contains(&i) || (40..60).contains(&i) {
            assert!(blk.iter().all(|&b| b == 0), "block {i} reads zeroes");
        } else {
            assert_eq!(blk, &data[i * 512..(i + 1) * 512], "block {i} unchanged");
        }
    }
    assert_eq!(d.stats().other_ops, 3);
}

#[test]
fn malloc_bad_requests() {
    let d = malloc(100, 512);
    let mut ch = d.open_channel().unwrap();
    let mut buf = DmaBuf::new(4096);
    // SAFETY: buf outlives the I/Os, each of which is waited for.
    let iov = |b: &mut DmaBuf, n: usize| SgList::from_elem(unsafe { b.iovec(0..n) }, 1);
    let r = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(IoType::Read, 99, 2, iov(&mut buf, 1024), 1),
    );
    assert_eq!(
        r.result,
        Err(IoError::OutOfRange {
            offset: 99,
            end: 101,
            capacity: 100
        })
    );
    // Offset overflow does not wrap around.
    let r = run_one(
        ch.as_mut(),
        IoRequest::no_data(IoType::Unmap, u64::MAX, 2, 2),
    );
    assert!(matches!(r.result, Err(IoError::OutOfRange { .. })));
    let r = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(IoType::Write, 0, 3, iov(&mut buf, 1024), 3),
    );
    assert_eq!(
        r.result,
        Err(IoError::LengthMismatch {
            sg_bytes: 1024,
            num_blocks: 3,
            want_bytes: 1536
        })
    );
    let r = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(IoType::Read, 0, 0, SgList::new(), 4),
    );
    assert!(
        matches!(r.result, Err(IoError::OutOfRange { .. })),
        "zero-length read"
    );
    let s = d.stats();
    assert_eq!(s.errors, 4);
    assert_eq!(s.read_ops + s.write_ops + s.other_ops, 0);
}

/// A full channel hands the request back untouched; once completions are polled, it fits.
#[test]
fn queue_full_returns_the_request() {
    let d = malloc(16, 512);
    let mut ch = d.open_channel().unwrap();
    let cap = ch.capacity();
    for t in 0..cap as u64 {
        ch.submit(IoRequest::no_data(IoType::Flush, 0, 0, t))
            .unwrap();
    }
    assert_eq!(ch.outstanding(), cap);
    let mut buf = DmaBuf::new(512);
    // SAFETY: buf outlives the I/O below.
    let iov = unsafe { buf.iovec(0..512) };
    let req = IoRequest::with_iovs(IoType::Write, 5, 1, SgList::from_elem(iov, 1), 12345);
    let err = ch.submit(req).expect_err("full");
    assert_eq!(err.reason, SubmitErrorKind::QueueFull);
    assert_eq!(err.req.tag, 12345);
    assert_eq!(err.req.offset_blocks, 5);
    assert_eq!(err.req.iovs.len(), 1);
    assert_eq!(err.req.iovs[0], iov);
    let mut n = 0;
    let mut tags = Vec::new();
    ch.poll(0, &mut |c| {
        tags.push(c.tag);
        n += 1;
    });
    assert_eq!(n, cap);
    assert_eq!(tags, (0..cap as u64).collect::<Vec<_>>(), "FIFO order");
    assert_eq!(ch.outstanding(), 0);
    assert_eq!(run_one(ch.as_mut(), err.req).result, Ok(()));
}

#[test]
fn null_completes_without_moving_data() {
    let d = NullBdev::new("n0", 1 << 28, 4096, SimParams::default()).unwrap();
    assert_eq!(d.info().kind, "null");
    let mut ch = d.open_channel().unwrap();
    let mut buf = DmaBuf::new(8 * 4096);
    buf.as_mut_slice().fill(0xaa);
    for (t, op) in [IoType::Write, IoType::Read].into_iter().enumerate() {
        // SAFETY: buf outlives the I/O, which completes before the next iteration.
        let iov = unsafe { buf.iovec(0..8 * 4096) };
        let r = run_one(
            ch.as_mut(),
            IoRequest::with_iovs(op, (1 << 28) - 8, 8, SgList::from_elem(iov, 1), t as u64),
        );
        assert_eq!(r.result, Ok(()));
    }
    assert!(
        buf.as_slice().iter().all(|&b| b == 0xaa),
        "reads leave buffers untouched"
    );
    for (t, op) in [IoType::Flush, IoType::Unmap, IoType::WriteZeroes]
        .into_iter()
        .enumerate()
    {
        let r = run_one(ch.as_mut(), IoRequest::no_data(op, 0, 8, 10 + t as u64));
        assert_eq!(r.result, Ok(()));
    }
    // Many at once: every one completes in the same poll.
    for t in 0..1000 {
        ch.submit(IoRequest::no_data(IoType::Flush, 0, 0, t))
            .unwrap();
    }
    let mut n = 0;
    ch.poll(0, &mut |c| {
        assert_eq!(c.result, Ok(()));
        n += 1;
    });
    assert_eq!(n, 1000);
    // Validation is the same as for real devices.
    let r = run_one(
        ch.as_mut(),
        IoRequest::no_data(IoType::WriteZeroes, 1 << 28, 1, 99),
    );
    assert!(matches!(r.result, Err(IoError::OutOfRange { .. })));
    let s = d.stats();
    assert_eq!((s.read_ops, s.write_ops), (1, 1));
    assert_eq!((s.bytes_read, s.bytes_written), (32768, 32768));
    assert_eq!(s.other_ops, 1003);
    assert_eq!(s.errors, 1);
}

/// Keeps `qd` I/Os outstanding on every channel, stepping a fake clock in `tick_ns` steps up
/// to `until_ns`, and returns the completion times seen.
fn drive_fake_clock(
    chans: &mut [Box<dyn IoChannel>],
    qd: usize,
    tick_ns: u64,
    until_ns: u64,
) -> Vec<u64> {
    let mut times = Vec::new();
    let mut inflight = vec![0usize; chans.len()];
    let mut tag = 0;
    let mut now = 0;
    while now <= until_ns {
        for (i, ch) in chans.iter_mut().enumerate() {
            ch.poll(now, &mut |c: IoCompletion| {
                assert_eq!(c.result, Ok(()));
                inflight[i] -= 1;
                times.push(now);
            });
            while inflight[i] < qd {
                ch.submit(IoRequest::no_data(IoType::WriteZeroes, 0, 1, tag))
                    .unwrap();
                tag += 1;
                inflight[i] += 1;
            }
        }
        now += tick_ns;
    }
    times
}

/// A device with max_iops = 2000 driven for 200 ms delivers 2000 IOPS (±10%), on a fake clock,
/// whether from one channel or shared by three.
#[test]
fn sim_iops_capacity_on_fake_clock() {
    for channels in [1usize, 3] {
        let d = MallocBdev::new(
            "s",
            1024,
            512,
            SimParams {
                max_iops: 2000,
                ..SimParams::default()
            },
        )
        .unwrap();
        let mut chans: Vec<_> = (0..channels).map(|_| d.open_channel().unwrap()).collect();
        let times = drive_fake_clock(&mut chans, 32, 10_000, 200_000_000);
        let iops = times.len() as f64 / 0.2;
        assert!(
            (1800.0..=2200.0).contains(&iops),
            "{channels} channel(s): {iops} IOPS"
        );
        // Service is evenly spaced: no 10 ms window holds more than its share (+1).
        for w in 0..20u64 {
            let n = times
                .iter()
                .filter(|&&t| t >= w * 10_000_000 && t < (w + 1) * 10_000_000)
                .count();
            assert!(n <= 21, "window {w} has {n} completions");
        }
    }
}

#[test]
fn sim_bandwidth_and_latency_on_fake_clock() {
    // 4 MB/s with 4 KiB I/Os = 1000 IOPS (ignoring the MB/MiB difference: 4096 B / 4 MB/s =
    // 1.024 ms each).
    let d = NullBdev::new(
        "bw",
        1024,
        4096,
        SimParams {
            max_bw_bytes: 4_000_000,
            ..SimParams::default()
        },
    )
    .unwrap();
    let mut chans = vec![d.open_channel().unwrap()];
    let times = drive_fake_clock(&mut chans, 8, 10_000, 200_000_000);
    let iops = times.len() as f64 / 0.2;
    assert!((900.0..=1100.0).contains(&iops), "{iops} IOPS");

    // Fixed latency: an I/O submitted at t=1 ms completes at 1.1 ms, not before.
    let d = MallocBdev::new(
        "lat",
        16,
        512,
        SimParams {
            latency_ns: 100_000,
            ..SimParams::default()
        },
    )
    .unwrap();
    let mut ch = d.open_channel().unwrap();
    ch.poll(1_000_000, &mut |_| panic!("nothing submitted"));
    ch.submit(IoRequest::no_data(IoType::Flush, 0, 0, 1))
        .unwrap();
    assert_eq!(ch.poll(1_099_999, &mut |_| panic!("too early")), 0);
    let mut got = None;
    assert_eq!(ch.poll(1_100_000, &mut |c| got = Some(c)), 1);
    assert_eq!(got.unwrap().tag, 1);
    // Errors are not delayed.
    ch.submit(IoRequest::no_data(IoType::Unmap, 100, 1, 2))
        .unwrap();
    let mut got = None;
    assert_eq!(ch.poll(1_100_000, &mut |c| got = Some(c)), 1);
    assert!(matches!(
        got.unwrap().result,
        Err(IoError::OutOfRange { .. })
    ));
}
