//! Data integrity and error tests of the io_uring backend on temporary files in the target
//! directory (a disk file system; `O_DIRECT` is refused on some tmpfs).

#![allow(unsafe_code)] // Reason: test buffers are lent to devices as raw IoVecs (the bdev API contract).

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    fill_pattern, read_blocks, run_on_runtime, run_on_test_thread, run_one, start_runtime,
    write_blocks, RegionCheck, RegionSpec,
};
use vmpath_bdev::uring::UringBdev;
use vmpath_bdev::{
    BdevError, BlockDevice, DmaBuf, IoChannel, IoError, IoRequest, IoType, SgList, SubmitErrorKind,
};
use vmpath_runtime::Reactor;

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, size: u64) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!(
            "uring-{tag}-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&path).expect("create temp file");
        f.set_len(size).expect("size temp file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    fn contents(&self) -> Vec<u8> {
        let mut v = Vec::new();
        std::fs::File::open(&self.0)
            .expect("open")
            .read_to_end(&mut v)
            .expect("read");
        v
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const MIB: u64 = 1 << 20;

fn open(file: &TempFile, bs: Option<u32>, direct: bool) -> UringBdev {
    UringBdev::new("u0", file.path(), bs, direct).expect("open uring bdev")
}

#[test]
fn geometry_and_direct_flag() {
    let f = TempFile::new("geo", 4 * MIB + 100);
    let d = open(&f, None, true);
    let info = d.info();
    assert_eq!(info.kind, "uring");
    assert_eq!(info.block_size, 512, "files default to 512-byte blocks");
    // The trailing 100 bytes are not a whole block: rounded down.
    assert_eq!(info.num_blocks, 4 * MIB / 512);
    assert_eq!(info.buf_align, if d.direct() { 512 } else { 1 });
    assert!(!d.is_block_device());
    assert!(d.unmap_zeroes());

    let d4 = open(&f, Some(4096), false);
    assert!(!d4.direct());
    assert_eq!(d4.info().buf_align, 1);
    assert_eq!(d4.info().num_blocks, 4 * MIB / 4096);
}

#[test]
fn bad_parameters_are_errors() {
    let missing = format!("{}/no/such/file.img", env!("CARGO_TARGET_TMPDIR"));
    match UringBdev::new("x", &missing, None, true) {
        Err(e @ BdevError::Open { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&missing), "message names the path: {msg}");
        }
        other => panic!("expected an open error, got {other:?}"),
    }
    let small = TempFile::new("small", 511);
    match UringBdev::new("x", small.path(), None, false) {
        Err(BdevError::InvalidParam { param, msg }) => {
            assert_eq!(param, "filename");
            assert!(msg.contains("less than one block"), "{msg}");
        }
        other => panic!("expected invalid param, got {other:?}"),
    }
    let f = TempFile::new("bs", MIB);
    assert!(matches!(
        UringBdev::new("x", f.path(), Some(1024), false),
        Err(BdevError::InvalidParam {
            param: "block_size",
            ..
        })
    ));
    // A directory is neither a file nor a block device (opening it read-write fails).
    assert!(UringBdev::new("x", env!("CARGO_TARGET_TMPDIR"), None, false).is_err());
    let mut d = open(&f, None, false);
    assert!(d.set_queue_depth(0).is_err());
    assert!(d.set_queue_depth(100_000).is_err());
    d.set_queue_depth(8).unwrap();
    assert_eq!(d.open_channel().unwrap().capacity(), 8);
}

/// Writes then reads back through the device, and checks the file holds the bytes at the
/// right offsets (so reads are not just echoing a cache of our own).
fn roundtrip(direct: bool, bs: u32) {
    let f = TempFile::new("rt", 2 * MIB);
    let d = open(&f, Some(bs), direct);
    let bs = bs as usize;
    let mut ch = d.open_channel().unwrap();
    let mut data = vec![0u8; 8 * bs];
    fill_pattern(&mut data, bs, 10, 42);
    write_blocks(ch.as_mut(), bs, 10, &data);
    let back = read_blocks(ch.as_mut(), bs, 10, 8);
    assert_eq!(back.as_slice(), &data[..]);
    // Flush, then look at the file directly.
    let c = run_one(ch.as_mut(), IoRequest::no_data(IoType::Flush, 0, 0, 9));
    assert_eq!(c.result, Ok(()));
    let file = f.contents();
    assert_eq!(&file[10 * bs..18 * bs], &data[..]);
    assert!(file[..10 * bs].iter().all(|&b| b == 0));
    let s = d.stats();
    assert_eq!((s.read_ops, s.write_ops, s.other_ops), (1, 1, 1));
    assert_eq!(s.bytes_written, 8 * bs as u64);
}

#[test]
fn roundtrip_direct_512() {
    roundtrip(true, 512);
}

#[test]
fn roundtrip_direct_4096() {
    roundtrip(true, 4096);
}

#[test]
fn roundtrip_buffered_512() {
    roundtrip(false, 512);
}

#[test]
fn roundtrip_buffered_4096() {
    roundtrip(false, 4096);
}

/// Several reactors polled by this thread, each with its own channel (ring) on the same
/// device, writing and reading back their own region at queue depth 1, 32 and 128.
fn reactors_at_depths(direct: bool) {
    let f = TempFile::new("qd", 16 * MIB);
    let d = open(&f, Some(4096), direct);
    let mut checks = Vec::new();
    let mut base = 0;
    for (i, (qd, io_blocks)) in [(1usize, 1u32), (32, 2), (128, 1), (32, 8)]
        .into_iter()
        .enumerate()
    {
        let spec = RegionSpec {
            base_lba: base,
            ios: 300,
            io_blocks,
            qd,
            seed: i as u64 + 1,
        };
        base += spec.blocks();
        checks.push(RegionCheck::new(d.open_channel().unwrap(), 4096, spec));
    }
    let results = run_on_test_thread(checks);
    for (i, (r, max_qd)) in results.iter().enumerate() {
        assert_eq!(r, &Ok(()), "checker {i}");
        let want = [1, 32, 128, 32][i];
        assert_eq!(*max_qd, want, "checker {i} reached its queue depth");
    }
    let s = d.stats();
    assert_eq!(s.write_ops, 4 * 300);
    assert_eq!(s.read_ops, 4 * 300);
    assert_eq!(s.errors, 0);
}

#[test]
fn reactors_at_depths_direct() {
    reactors_at_depths(true);
}

#[test]
fn reactors_at_depths_buffered() {
    reactors_at_depths(false);
}

#[test]
fn runtime_threads_each_with_a_ring() {
    let f = TempFile::new("rt-threads", 8 * MIB);
    let d: Arc<dyn BlockDevice> = Arc::new(open(&f, Some(512), true));
    let rt = start_runtime(2);
    let specs: Vec<RegionSpec> = [1usize, 32, 128]
        .iter()
        .enumerate()
        .map(|(i, &qd)| RegionSpec {
            base_lba: i as u64 * 4096,
            ios: 256,
            io_blocks: 8,
            qd,
            seed: 100 + i as u64,
        })
        .collect();
    for (i, (r, max_qd)) in run_on_runtime(&rt, d.clone(), &specs)
        .into_iter()
        .enumerate()
    {
        assert_eq!(r, Ok(()), "checker {i}");
        assert_eq!(max_qd, specs[i].qd);
    }
    rt.shutdown();
}

#[test]
fn unmap_and_write_zeroes_read_back_zeroes() {
    for direct in [true, false] {
        let f = TempFile::new("zero", 4 * MIB);
        let d = open(&f, Some(4096), direct);
        let mut ch = d.open_channel().unwrap();
        let mut data = vec![0u8; 64 * 4096];
        fill_pattern(&mut data, 4096, 0, 7);
        write_blocks(ch.as_mut(), 4096, 0, &data);
        // Unmap blocks 4..20, write-zeroes 30..60; the rest keeps the pattern.
        let c = run_one(ch.as_mut(), IoRequest::no_data(IoType::Unmap, 4, 16, 3));
        assert_eq!(c.result, Ok(()));
        let c = run_one(
            ch.as_mut(),
            IoRequest::no_data(IoType::WriteZeroes, 30, 30, 4),
        );
        assert_eq!(c.result, Ok(()));
        let back = read_blocks(ch.as_mut(), 4096, 0, 64);
        let b = back.as_slice();
        let blk = |i: usize| &b[i * 4096..(i + 1) * 4096];
        for i in 0..64 {
            let zero = (4..20).contains(&i) || (30..60).contains(&i);
            if zero {
                assert!(blk(i).iter().all(|&x| x == 0), "block {i} zeroed");
            } else {
                assert_eq!(blk(i), &data[i * 4096..(i + 1) * 4096], "block {i} kept");
            }
        }
        // An empty range completes successfully without touching anything.
        let c = run_one(ch.as_mut(), IoRequest::no_data(IoType::Unmap, 0, 0, 5));
        assert_eq!(c.result, Ok(()));
        assert_eq!(d.stats().errors, 0);
    }
}

#[test]
fn bad_requests_complete_with_errors() {
    let f = TempFile::new("bad", MIB);
    let d = open(&f, Some(512), true);
    let nb = d.info().num_blocks;
    let mut ch = d.open_channel().unwrap();
    let mut buf = DmaBuf::new(8192);
    // SAFETY: buf outlives every I/O below (each is waited for).
    let iov = |b: &mut DmaBuf, r: std::ops::Range<usize>| unsafe { b.iovec(r) };

    let c = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(
            IoType::Read,
            nb - 1,
            2,
            SgList::from_elem(iov(&mut buf, 0..1024), 1),
            1,
        ),
    );
    assert_eq!(
        c.result,
        Err(IoError::OutOfRange {
            offset: nb - 1,
            end: nb + 1,
            capacity: nb
        })
    );
    let c = run_one(
        ch.as_mut(),
        IoRequest::no_data(IoType::WriteZeroes, nb, 1, 2),
    );
    assert!(matches!(c.result, Err(IoError::OutOfRange { .. })));
    let c = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(
            IoType::Write,
            0,
            2,
            SgList::from_elem(iov(&mut buf, 0..512), 1),
            3,
        ),
    );
    assert_eq!(
        c.result,
        Err(IoError::LengthMismatch {
            sg_bytes: 512,
            num_blocks: 2,
            want_bytes: 1024
        })
    );
    if d.direct() {
        // A buffer 8 bytes off the block alignment is refused before reaching the kernel.
        let c = run_one(
            ch.as_mut(),
            IoRequest::with_iovs(
                IoType::Read,
                0,
                1,
                SgList::from_elem(iov(&mut buf, 8..520), 1),
                4,
            ),
        );
        assert_eq!(c.result, Err(IoError::Misaligned { align: 512 }));
    }
    assert!(d.stats().errors >= 3);
    assert_eq!(ch.outstanding(), 0);
}

#[test]
fn full_ring_hands_the_request_back() {
    let f = TempFile::new("full", MIB);
    let mut d = open(&f, Some(4096), false);
    d.set_queue_depth(4).unwrap();
    let mut ch = d.open_channel().unwrap();
    for t in 0..4 {
        ch.submit(IoRequest::no_data(IoType::Flush, 0, 0, t))
            .unwrap();
    }
    let err = ch
        .submit(IoRequest::no_data(IoType::WriteZeroes, 3, 2, 99))
        .expect_err("queue is full");
    assert_eq!(err.reason, SubmitErrorKind::QueueFull);
    assert_eq!(
        (err.req.tag, err.req.offset_blocks, err.req.num_blocks),
        (99, 3, 2)
    );
    assert_eq!(ch.outstanding(), 4);
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.len() < 4 {
        ch.poll(0, &mut |c| done.push(c));
        assert!(Instant::now() < deadline);
    }
    done.sort_by_key(|c| c.tag);
    assert!(done
        .iter()
        .enumerate()
        .all(|(i, c)| c.tag == i as u64 && c.result.is_ok()));
    // Room again: the handed-back request goes through.
    assert_eq!(run_one(ch.as_mut(), err.req).result, Ok(()));
}

#[test]
fn reactor_sleeps_until_the_ring_completes() {
    let f = TempFile::new("wake", MIB);
    let d = open(&f, Some(4096), true);
    let mut ch = d.open_uring_channel().unwrap();
    let fd = ch.wake_fd().expect("eventfd registered");
    let mut r = Reactor::new(0, None, 16).unwrap();
    r.register_wake_fd(fd).unwrap();

    let mut buf = DmaBuf::new(4096);
    buf.as_mut_slice().fill(0x5a);
    // SAFETY: buf outlives the I/O, which is completed below.
    let iov = unsafe { buf.iovec(0..4096) };
    ch.submit(IoRequest::with_iovs(
        IoType::Write,
        1,
        1,
        SgList::from_elem(iov, 1),
        7,
    ))
    .unwrap();
    let mut done = Vec::new();
    // This poll enters the kernel; the completion may or may not be visible yet.
    ch.poll(0, &mut |c| done.push(c));
    let t = Instant::now();
    while done.is_empty() {
        // Without the eventfd this would block for the whole 5 s.
        r.sleep(vmpath_runtime::now_ns(), 5_000_000_000);
        ch.poll(0, &mut |c| done.push(c));
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "woken by the completion"
        );
    }
    assert_eq!(done[0].tag, 7);
    assert_eq!(done[0].result, Ok(()));
    // An idle poll drains the eventfd, after which the reactor really sleeps.
    ch.poll(0, &mut |_| panic!("no more completions"));
    let t = Instant::now();
    r.sleep(vmpath_runtime::now_ns(), 50_000_000);
    assert!(t.elapsed() >= Duration::from_millis(40), "eventfd drained");
    r.unregister_wake_fd(fd).unwrap();
}

#[test]
fn large_write_zeroes_and_multi_segment_io() {
    // A range larger than the zero-buffer chunk, and a read spread over many segments.
    let f = TempFile::new("large", 8 * MIB);
    let d = open(&f, Some(4096), true);
    let mut ch = d.open_channel().unwrap();
    let mut data = vec![0u8; 512 * 4096];
    fill_pattern(&mut data, 4096, 0, 3);
    write_blocks(ch.as_mut(), 4096, 0, &data);
    let c = run_one(
        ch.as_mut(),
        IoRequest::no_data(IoType::WriteZeroes, 1, 510, 1),
    );
    assert_eq!(c.result, Ok(()));
    let mut buf = DmaBuf::new(512 * 4096);
    let mut iovs = SgList::new();
    for i in 0..64 {
        // SAFETY: buf outlives the I/O, which run_one waits for.
        iovs.push(unsafe { buf.iovec(i * 8 * 4096..(i + 1) * 8 * 4096) });
    }
    let c = run_one(
        ch.as_mut(),
        IoRequest::with_iovs(IoType::Read, 0, 512, iovs, 2),
    );
    assert_eq!(c.result, Ok(()));
    let b = buf.as_slice();
    assert_eq!(&b[..4096], &data[..4096]);
    assert!(b[4096..511 * 4096].iter().all(|&x| x == 0));
    assert_eq!(&b[511 * 4096..], &data[511 * 4096..]);
}

/// tmpfs punches holes but has no `FALLOC_FL_ZERO_RANGE`: write-zeroes falls back to writing
/// zeroes from a buffer, and still reads back zeroes. (Skipped where /dev/shm is not tmpfs.)
#[test]
fn zeroing_falls_back_to_writes_on_tmpfs() {
    let shm = std::path::Path::new("/dev/shm");
    // SAFETY: statfs fills the struct; the path is a valid C string.
    let is_tmpfs = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c"/dev/shm".as_ptr(), &mut st) == 0 && st.f_type == libc::TMPFS_MAGIC
    };
    if !shm.is_dir() || !is_tmpfs {
        eprintln!("skipped: /dev/shm is not a tmpfs");
        return;
    }
    let path = shm.join(format!("vmpath-uring-test-{}.img", std::process::id()));
    let f = TempFile(path);
    std::fs::File::create(&f.0)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    // O_DIRECT may or may not be accepted by this kernel's tmpfs; either way works.
    let d = open(&f, Some(4096), true);
    let mut ch = d.open_uring_channel().unwrap();
    let mut data = vec![0u8; 600 * 4096];
    fill_pattern(&mut data, 4096, 0, 11);
    write_blocks(&mut ch, 4096, 0, &data);
    // 2.3 MiB of write-zeroes: more than one zero-buffer chunk.
    let c = run_one(&mut ch, IoRequest::no_data(IoType::WriteZeroes, 10, 580, 1));
    assert_eq!(c.result, Ok(()));
    assert!(!ch.zeroing_support().zero_range, "tmpfs refused ZERO_RANGE");
    let c = run_one(&mut ch, IoRequest::no_data(IoType::Unmap, 0, 5, 2));
    assert_eq!(c.result, Ok(()));
    assert!(ch.zeroing_support().punch_hole, "tmpfs punches holes");
    let back = read_blocks(&mut ch, 4096, 0, 600);
    let b = back.as_slice();
    assert!(b[..5 * 4096].iter().all(|&x| x == 0));
    assert_eq!(&b[5 * 4096..10 * 4096], &data[5 * 4096..10 * 4096]);
    assert!(b[10 * 4096..590 * 4096].iter().all(|&x| x == 0));
    assert_eq!(&b[590 * 4096..], &data[590 * 4096..]);
}

/// A real block device, when one is offered for testing (its contents are overwritten!):
/// `VMPATH_TEST_BLOCKDEV=/dev/loop0 cargo test -p vmpath-bdev --test uring`, e.g. after
/// `losetup -f --show -b 4096 some.img`. Geometry comes from BLKGETSIZE64 / BLKSSZGET.
#[test]
fn block_device_from_env() {
    let Ok(dev) = std::env::var("VMPATH_TEST_BLOCKDEV") else {
        eprintln!("skipped: set VMPATH_TEST_BLOCKDEV to a scratch block device");
        return;
    };
    let size = {
        let f = std::fs::File::open(&dev).expect("open block device");
        use std::io::Seek;
        (&f).seek(std::io::SeekFrom::End(0)).expect("seek to end")
    };
    let d = UringBdev::new("blk", &dev, None, true).expect("open block device");
    assert!(d.is_block_device());
    let bs = d.info().block_size as usize;
    assert!(bs == 512 || bs == 4096);
    assert_eq!(d.info().num_blocks, size / bs as u64);
    if bs == 4096 {
        // Smaller blocks than the device's logical block size are refused.
        assert!(matches!(
            UringBdev::new("blk", &dev, Some(512), true),
            Err(BdevError::InvalidParam { .. })
        ));
    }
    let mut ch = d.open_channel().unwrap();
    let mut data = vec![0u8; 32 * bs];
    fill_pattern(&mut data, bs, 0, 77);
    let last = d.info().num_blocks - 32;
    for lba in [0, last] {
        write_blocks(ch.as_mut(), bs, lba, &data);
        assert_eq!(read_blocks(ch.as_mut(), bs, lba, 32).as_slice(), &data[..]);
    }
    for op in [IoType::Unmap, IoType::WriteZeroes] {
        write_blocks(ch.as_mut(), bs, 0, &data);
        let c = run_one(ch.as_mut(), IoRequest::no_data(op, 8, 8, 1));
        assert_eq!(c.result, Ok(()), "{op:?}");
        let b = read_blocks(ch.as_mut(), bs, 0, 32);
        assert!(
            b.as_slice()[8 * bs..16 * bs].iter().all(|&x| x == 0),
            "{op:?} zeroes"
        );
        assert_eq!(&b.as_slice()[..8 * bs], &data[..8 * bs]);
        assert_eq!(&b.as_slice()[16 * bs..], &data[16 * bs..]);
    }
    let c = run_one(ch.as_mut(), IoRequest::no_data(IoType::Flush, 0, 0, 2));
    assert_eq!(c.result, Ok(()));
}
