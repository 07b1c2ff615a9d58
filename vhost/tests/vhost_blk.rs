//! In-process tests: a frontend built on rust-vmm's vhost-user frontend drives split
//! virtqueues in shared memfd memory against a controller on real reactor threads.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vhost::blk::{self, bit, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use vhost::chain::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vhost::frontend::{BlkDriver, DriverOptions, ReqKind};
use vhost::{Admit, GateChannel, GateIo, IoGate, VhostError};

#[test]
fn handshake_get_config_and_socket_permissions() {
    let reactors = Reactors::start(2);
    let dir = TempDir::new("handshake");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(&sock, malloc("m0", 64, 512, 0), &reactors, 2, |c| {
        c.serial = Some("vmpath-serial-0001".into());
    });
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let d = BlkDriver::connect(&sock, opts(2)).unwrap();
    let cfg = d.config();
    assert_eq!(cfg.capacity, 64 * 1024 * 1024 / 512);
    assert_eq!(cfg.blk_size, 512);
    assert_eq!(cfg.seg_max, vhost::DEFAULT_SEG_MAX);
    assert_eq!(cfg.size_max, vhost::DEFAULT_SIZE_MAX);
    assert_eq!(cfg.num_queues, 2);
    assert_eq!(cfg.writeback, 1);
    assert_eq!(cfg.max_discard_seg, 1);
    let f = d.features();
    for b in [
        blk::VIRTIO_F_VERSION_1,
        blk::VIRTIO_RING_F_EVENT_IDX,
        blk::VIRTIO_BLK_F_FLUSH,
        blk::VIRTIO_BLK_F_MQ,
        blk::VIRTIO_BLK_F_DISCARD,
        blk::VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(f & bit(b), 0, "feature {b} not negotiated");
    }
    let offered = ctrl.offered_features();
    assert_eq!(offered & bit(blk::VIRTIO_BLK_F_RO), 0);
    for b in [
        blk::VIRTIO_RING_F_INDIRECT_DESC,
        blk::VIRTIO_BLK_F_SIZE_MAX,
        blk::VIRTIO_BLK_F_SEG_MAX,
        blk::VIRTIO_BLK_F_BLK_SIZE,
        blk::VIRTIO_BLK_F_TOPOLOGY,
        blk::VIRTIO_BLK_F_CONFIG_WCE,
    ] {
        assert_ne!(offered & bit(b), 0, "feature {b} not offered");
    }
    wait_until("both queues running", T, || {
        ctrl.info().queues.iter().all(|q| q.reactor.is_some())
    });
    let info = ctrl.info();
    assert!(info.connected);
    assert_eq!(info.queues[0].reactor, Some(0));
    assert_eq!(info.queues[1].reactor, Some(1));
    assert_eq!(info.queues[0].size, 64);

    // A second controller on a live socket is refused.
    let mut cfg2 = vhost::VhostBlkConfig::new(
        "disk1",
        &sock,
        malloc("m1", 1, 512, 0),
        "vm-b",
        reactors.handles.clone(),
    );
    cfg2.num_queues = 1;
    let mut c2 = vhost::VhostBlkController::new(cfg2).unwrap();
    assert!(matches!(c2.start(), Err(VhostError::SocketInUse { .. })));
    drop(d);
    drop(ctrl);
    assert!(!sock.exists(), "socket removed on stop");
}

fn every_request_type(o: DriverOptions, block_size: u32) {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("reqtypes");
    let sock = dir.sock("disk.sock");
    let bdev = malloc("m0", 16, block_size, 0);
    let ctrl = controller(&sock, bdev.clone(), &reactors, 1, |c| {
        c.serial = Some("SERIAL-XYZ".into());
    });
    let mut d = BlkDriver::connect(&sock, o).unwrap();

    // Writes then reads, compared byte for byte, several sizes and positions.
    let mut expect = Vec::new();
    for (i, (sector, len)) in [(0u64, 4096u32), (8, 8192), (1000, 65536), (24, 4096)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u64 + 1, len as usize);
        write(&mut d, 0, sector, &data);
        expect.push((sector, data));
    }
    for (sector, data) in &expect {
        assert_eq!(&read(&mut d, 0, *sector, data.len() as u32), data);
    }

    // Data split over several descriptors.
    let data = pattern(99, 16384);
    {
        let q = d.queue(0);
        q.write_data(q.next_slot().unwrap(), &data).unwrap();
        q.submit_split(ReqKind::Write, 2048, 16384, 5, 4).unwrap();
        q.kick();
        let c = q.wait_for(1, T);
        assert_eq!(c[0].status, VIRTIO_BLK_S_OK);
    }
    assert_eq!(read(&mut d, 0, 2048, 16384), data);

    // Flush.
    let (c, _) = run_one(&mut d, 0, ReqKind::Flush, 0, 0, None);
    assert_eq!(c.status, VIRTIO_BLK_S_OK);

    // GET_ID returns the serial, NUL padded.
    let (c, id) = run_one(&mut d, 0, ReqKind::GetId, 0, 20, None);
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
    assert_eq!(c.len, 21);
    assert_eq!(&id[..10], b"SERIAL-XYZ");
    assert!(id[10..].iter().all(|&b| b == 0));

    // Discard reads back as zeroes (RAM disk deallocation zeroes), and only that range.
    let (c, _) = run_one(&mut d, 0, ReqKind::Discard, 8, 8192, None);
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
    assert!(read(&mut d, 0, 8, 8192).iter().all(|&b| b == 0));
    assert_eq!(read(&mut d, 0, 0, 4096), expect[0].1);

    // Write zeroes, with and without unmap.
    for unmap in [false, true] {
        let (c, _) = run_one(&mut d, 0, ReqKind::WriteZeroes { unmap }, 1000, 4096, None);
        assert_eq!(c.status, VIRTIO_BLK_S_OK);
        let back = read(&mut d, 0, 1000, 8192);
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert_eq!(&back[4096..], &expect[2].1[4096..8192]);
    }

    // Unknown request type: UNSUPP. Discard with the unmap flag: UNSUPP.
    let (c, _) = run_one(&mut d, 0, ReqKind::Raw(42), 0, 0, None);
    assert_eq!(c.status, VIRTIO_BLK_S_UNSUPP);

    // Out of range and misaligned: IOERR.
    let cap = d.config().capacity;
    let (c, _) = run_one(&mut d, 0, ReqKind::Read, cap, 4096, None);
    assert_eq!(c.status, VIRTIO_BLK_S_IOERR);
    if block_size == 4096 {
        let (c, _) = run_one(&mut d, 0, ReqKind::Read, 1, 4096, None);
        assert_eq!(c.status, VIRTIO_BLK_S_IOERR);
    }

    // Write-through mode: writes are followed by a device flush before completion.
    let flushes = ctrl.stats().flushes;
    let device_flushes = bdev.stats().other_ops;
    d.set_writeback(false).unwrap();
    assert_eq!(d.read_config().unwrap().writeback, 0);
    let data = pattern(7, 4096);
    write(&mut d, 0, 4096, &data);
    assert_eq!(read(&mut d, 0, 4096, 4096), data);
    assert_eq!(
        bdev.stats().other_ops,
        device_flushes + 1,
        "a write-through write is flushed before it completes"
    );
    d.set_writeback(true).unwrap();
    write(&mut d, 0, 4096, &data);
    assert_eq!(
        bdev.stats().other_ops,
        device_flushes + 1,
        "write-back: no flush"
    );
    assert_eq!(
        ctrl.stats().flushes,
        flushes,
        "device flushes are not guest flushes"
    );

    let s = ctrl.stats();
    assert!(s.reads >= 8 && s.writes >= 6);
    assert_eq!(s.get_ids, 1);
    assert!(s.discards >= 1 && s.write_zeroes >= 2);
    assert!(s.unsupported >= 1 && s.io_errors >= 1);
    assert_eq!(s.needs_reset, 0);
    assert_eq!(s.in_flight, 0);
}

#[test]
fn every_request_type_direct_event_idx() {
    every_request_type(opts(1), 512);
}

#[test]
fn every_request_type_indirect_no_event_idx_4k_blocks() {
    every_request_type(
        DriverOptions {
            indirect: true,
            event_idx: false,
            ..opts(1)
        },
        4096,
    );
}

#[test]
fn every_request_type_two_regions_mem_slots_polling_driver() {
    every_request_type(
        DriverOptions {
            two_regions: true,
            mem_slots: true,
            interrupts: false,
            gpa_base: 0x1_0000_0000,
            ..opts(1)
        },
        512,
    );
}

#[test]
fn buffer_spanning_two_memory_regions_is_split() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("span");
    let sock = dir.sock("disk.sock");
    let _ctrl = controller(&sock, malloc("m0", 4, 512, 0), &reactors, 1, |_| {});
    let mut d = BlkDriver::connect(
        &sock,
        DriverOptions {
            two_regions: true,
            ..opts(1)
        },
    )
    .unwrap();
    // The boundary between the two regions.
    let boundary = {
        let m = d.mem();
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let r: Vec<_> = m.iter().map(|r| r.start_addr().0).collect();
        assert_eq!(r.len(), 2);
        r[1]
    };
    let data = pattern(3, 8192);
    let buf = boundary - 4096;
    let q = d.queue(0);
    vm_memory::Bytes::write_slice(q.mem(), &data, vm_memory::GuestAddress(buf)).unwrap();
    let slot = q.alloc_slot().unwrap();
    let a = q.slot(slot);
    vm_memory::Bytes::write_slice(
        q.mem(),
        &blk::ReqHeader {
            req_type: blk::VIRTIO_BLK_T_OUT,
            sector: 64,
        }
        .encode(),
        vm_memory::GuestAddress(a.hdr),
    )
    .unwrap();
    let ds = q.alloc_descs(3).unwrap();
    q.write_desc(ds[0], a.hdr, 16, VRING_DESC_F_NEXT, ds[1])
        .unwrap();
    q.write_desc(ds[1], buf, 8192, VRING_DESC_F_NEXT, ds[2])
        .unwrap();
    q.write_desc(ds[2], a.status, 1, VRING_DESC_F_WRITE, 0)
        .unwrap();
    q.publish(ds[0], 1, ds.clone(), Some(slot), a.status)
        .unwrap();
    q.kick();
    let c = q.wait_for(1, T);
    assert_eq!(c[0].status, VIRTIO_BLK_S_OK);
    assert_eq!(read(&mut d, 0, 64, 8192), data);
}

#[test]
fn multiqueue_spread_over_three_reactors() {
    let reactors = Reactors::start(3);
    let dir = TempDir::new("mq");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(&sock, malloc("m0", 32, 512, 0), &reactors, 4, |_| {});
    let mut d = BlkDriver::connect(&sock, opts(4)).unwrap();
    wait_until("4 queues running", T, || {
        ctrl.info().queues.iter().all(|q| q.reactor.is_some())
    });
    let on: Vec<_> = ctrl
        .info()
        .queues
        .iter()
        .map(|q| q.reactor.unwrap())
        .collect();
    assert_eq!(on, vec![0, 1, 2, 0]);
    // 16 requests in flight on every queue at once, each writing its own range.
    for q in 0..4 {
        let queue = d.queue(q);
        for i in 0..16u64 {
            let tag = q as u64 * 100 + i;
            let data = pattern(tag, 4096);
            queue.write_data(queue.next_slot().unwrap(), &data).unwrap();
            queue.submit(ReqKind::Write, tag * 8, 4096, tag).unwrap();
        }
    }
    for q in 0..4 {
        d.queue(q).kick();
    }
    for q in 0..4 {
        let c = d.queue(q).wait_for(16, T);
        assert_eq!(c.len(), 16, "queue {q}");
        assert!(c.iter().all(|c| c.status == VIRTIO_BLK_S_OK));
    }
    // Read every range back through a different queue.
    for q in 0..4u64 {
        for i in 0..16u64 {
            let tag = q * 100 + i;
            let back = read(&mut d, ((q + 1) % 4) as usize, tag * 8, 4096);
            assert_eq!(back, pattern(tag, 4096), "tag {tag}");
        }
    }
    wait_until("counters published", T, || {
        let t = ctrl.stats();
        t.writes == 64 && t.reads == 64
    });
    let info = ctrl.info();
    for q in &info.queues {
        assert!(
            q.stats.writes >= 16 || q.stats.reads >= 16,
            "queue {} idle",
            q.index
        );
    }
    assert_eq!(info.total.writes, 64);
    assert_eq!(info.total.reads, 64);
}

/// Builds a 3-descriptor request by hand with the given data descriptor (address 0: the
/// slot's own data buffer).
fn raw_request(
    d: &mut BlkDriver,
    req_type: u32,
    data: (u64, u32, u16),
    status_flags: u16,
) -> (u16, u64) {
    let q = d.queue(0);
    let slot = q.alloc_slot().unwrap();
    let a = q.slot(slot);
    vm_memory::Bytes::write_slice(
        q.mem(),
        &blk::ReqHeader {
            req_type,
            sector: 0,
        }
        .encode(),
        vm_memory::GuestAddress(a.hdr),
    )
    .unwrap();
    vm_memory::Bytes::write_obj(q.mem(), 0xffu8, vm_memory::GuestAddress(a.status)).unwrap();
    let ds = q.alloc_descs(3).unwrap();
    let addr = if data.0 == 0 { a.data } else { data.0 };
    q.write_desc(ds[0], a.hdr, 16, VRING_DESC_F_NEXT, ds[1])
        .unwrap();
    q.write_desc(ds[1], addr, data.1, data.2 | VRING_DESC_F_NEXT, ds[2])
        .unwrap();
    q.write_desc(ds[2], a.status, 1, status_flags, 0).unwrap();
    q.publish(ds[0], 1, ds.clone(), Some(slot), a.status)
        .unwrap();
    q.kick();
    (ds[0], a.data)
}

fn expect_status(d: &mut BlkDriver, status: u8) {
    let c = d.queue(0).wait_for(1, T);
    assert_eq!(c.len(), 1, "request did not complete");
    assert_eq!(c[0].status, status);
}

#[test]
fn bad_descriptors_fail_the_request_or_break_the_queue_never_the_target() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("bad");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(&sock, malloc("m0", 4, 512, 0), &reactors, 1, |c| {
        c.seg_max = 4;
    });
    let mut d = BlkDriver::connect(
        &sock,
        DriverOptions {
            indirect: true,
            ..opts(1)
        },
    )
    .unwrap();
    let good = pattern(1, 4096);
    write(&mut d, 0, 0, &good);

    // 1. Data buffer outside guest memory: IOERR, nothing written.
    raw_request(
        &mut d,
        blk::VIRTIO_BLK_T_OUT,
        (1 << 40, 4096, 0),
        VRING_DESC_F_WRITE,
    );
    expect_status(&mut d, VIRTIO_BLK_S_IOERR);
    // Straddling the end of guest memory.
    let end = {
        use vm_memory::GuestMemoryBackend;
        d.mem().last_addr().0 + 1
    };
    raw_request(
        &mut d,
        blk::VIRTIO_BLK_T_IN,
        (end - 512, 4096, VRING_DESC_F_WRITE),
        VRING_DESC_F_WRITE,
    );
    expect_status(&mut d, VIRTIO_BLK_S_IOERR);

    // 2. A read into a device-readable (read-only) buffer: IOERR, buffer untouched.
    let (_, data_gpa) = {
        let q = d.queue(0);
        let next = q.next_slot().unwrap();
        let a = q.slot(next);
        vm_memory::Bytes::write_slice(q.mem(), &[0x5a; 4096], vm_memory::GuestAddress(a.data))
            .unwrap();
        raw_request(
            &mut d,
            blk::VIRTIO_BLK_T_IN,
            (a.data, 4096, 0),
            VRING_DESC_F_WRITE,
        )
    };
    expect_status(&mut d, VIRTIO_BLK_S_IOERR);
    let mut back = [0u8; 4096];
    vm_memory::Bytes::read_slice(d.mem(), &mut back, vm_memory::GuestAddress(data_gpa)).unwrap();
    assert!(
        back.iter().all(|&b| b == 0x5a),
        "read-only buffer was written"
    );

    // 3. A write whose data buffer is device-writable: IOERR.
    raw_request(
        &mut d,
        blk::VIRTIO_BLK_T_OUT,
        (0, 4096, VRING_DESC_F_WRITE),
        VRING_DESC_F_WRITE,
    );
    expect_status(&mut d, VIRTIO_BLK_S_IOERR);

    // 4. More segments than seg_max (4): IOERR.
    {
        let q = d.queue(0);
        q.submit_split(ReqKind::Write, 0, 8192, 9, 8).unwrap();
        q.kick();
    }
    expect_status(&mut d, VIRTIO_BLK_S_IOERR);
    assert_eq!(
        read(&mut d, 0, 0, 4096),
        good,
        "failed requests wrote nothing"
    );

    let s = ctrl.stats();
    assert!(s.bad_chains >= 3, "{s:?}");
    assert_eq!(s.needs_reset, 0);

    // 5. A loop: the queue is marked as needing a reset, the error eventfd fires.
    {
        let q = d.queue(0);
        let ds = q.alloc_descs(2).unwrap();
        let a = q.slot(0);
        q.write_desc(ds[0], a.hdr, 16, VRING_DESC_F_NEXT, ds[1])
            .unwrap();
        q.write_desc(ds[1], a.data, 512, VRING_DESC_F_NEXT, ds[0])
            .unwrap();
        q.publish(ds[0], 77, ds.clone(), None, a.status).unwrap();
        q.kick();
    }
    wait_until("queue marked broken", T, || ctrl.stats().needs_reset == 1);
    assert!(d.queue(0).take_error(), "error eventfd not signalled");
    // The broken queue ignores further requests...
    {
        let q = d.queue(0);
        q.submit(ReqKind::Flush, 0, 0, 1).unwrap();
        q.force_kick();
        assert!(q.wait_for(1, Duration::from_millis(200)).is_empty());
    }
    // ...until the driver resets it; then it works again.
    d.reset_device().unwrap();
    write(&mut d, 0, 8, &good);
    assert_eq!(read(&mut d, 0, 8, 4096), good);

    // 6. An indirect table longer than the queue: broken; reset; works.
    {
        let q = d.queue(0);
        let ds = q.alloc_descs(1).unwrap();
        let a = q.slot(1);
        q.write_desc(ds[0], a.data, 16 * 128, VRING_DESC_F_INDIRECT, 0)
            .unwrap();
        q.publish(ds[0], 78, ds.clone(), None, a.status).unwrap();
        q.kick();
    }
    wait_until("queue marked broken", T, || ctrl.stats().needs_reset == 2);
    d.reset_device().unwrap();

    // 7. Status descriptor not writable: no status byte, broken.
    raw_request(
        &mut d,
        blk::VIRTIO_BLK_T_IN,
        (0, 512, VRING_DESC_F_WRITE),
        0,
    );
    wait_until("queue marked broken", T, || ctrl.stats().needs_reset == 3);
    d.reset_device().unwrap();

    // 8. Head index out of range and an available index far ahead: broken.
    {
        let q = d.queue(0);
        q.publish(1000, 79, vec![], None, 0).unwrap();
        q.kick();
    }
    wait_until("queue marked broken", T, || ctrl.stats().needs_reset == 4);
    d.reset_device().unwrap();
    {
        let q = d.queue(0);
        q.set_avail_idx_raw(500).unwrap();
        q.force_kick();
    }
    wait_until("queue marked broken", T, || ctrl.stats().needs_reset == 5);
    d.reset_device().unwrap();

    // The target is still fine: data intact, new I/O works.
    assert_eq!(read(&mut d, 0, 0, 4096), good);
    assert_eq!(read(&mut d, 0, 8, 4096), good);
    assert!(ctrl.is_connected());
}

#[test]
fn suspend_stops_pulling_lets_inflight_finish_and_resume_continues() {
    let reactors = Reactors::start(2);
    let dir = TempDir::new("suspend");
    let sock = dir.sock("disk.sock");
    // 100 ms per I/O so requests are really in flight when we suspend.
    let ctrl = controller(
        &sock,
        malloc("m0", 8, 512, 100_000_000),
        &reactors,
        2,
        |_| {},
    );
    let mut d = BlkDriver::connect(&sock, opts(2)).unwrap();
    for q in 0..2 {
        let queue = d.queue(q);
        for i in 0..8u64 {
            let tag = q as u64 * 10 + i;
            queue
                .write_data(queue.next_slot().unwrap(), &pattern(tag, 4096))
                .unwrap();
            queue.submit(ReqKind::Write, tag * 8, 4096, tag).unwrap();
        }
        queue.kick();
    }
    wait_until("requests in flight", T, || ctrl.stats().in_flight > 0);
    ctrl.suspend().unwrap();
    assert!(ctrl.is_suspended());
    assert_eq!(
        ctrl.stats().in_flight,
        0,
        "suspend returned with I/O in flight"
    );
    // Everything pulled before the suspend completed; collect it.
    let mut done: Vec<_> = Vec::new();
    for q in 0..2 {
        let mut out = Vec::new();
        d.queue(q).poll(&mut out);
        done.extend(out);
    }
    assert!(done.iter().all(|c| c.status == VIRTIO_BLK_S_OK));
    let before = done.len();
    // New requests wait in the ring while suspended; no error reaches the guest.
    for q in 0..2 {
        let queue = d.queue(q);
        queue.submit(ReqKind::Flush, 0, 0, 500 + q as u64).unwrap();
        queue.force_kick();
    }
    std::thread::sleep(Duration::from_millis(150));
    for q in 0..2 {
        let mut out = Vec::new();
        d.queue(q).poll(&mut out);
        assert!(
            out.is_empty(),
            "queue {q} completed while suspended: {out:?}"
        );
    }
    ctrl.resume();
    assert!(!ctrl.is_suspended());
    let mut total = before;
    for q in 0..2 {
        let left = 9 - done
            .iter()
            .filter(|c| (c.tag / 10) as usize == q && c.tag < 500)
            .count();
        let c = d.queue(q).wait_for(left, T);
        assert_eq!(c.len(), left);
        assert!(c.iter().all(|c| c.status == VIRTIO_BLK_S_OK));
        total += c.len();
    }
    assert_eq!(total, 18);
    for q in 0..2u64 {
        for i in 0..8u64 {
            let tag = q * 10 + i;
            assert_eq!(read(&mut d, 0, tag * 8, 4096), pattern(tag, 4096));
        }
    }
}

fn reconnect_reruns_inflight(restart_target: bool) {
    let reactors = Reactors::start(2);
    let dir = TempDir::new("reconnect");
    let sock = dir.sock("disk.sock");
    let bdev = malloc("m0", 8, 512, 250_000_000);
    let mut ctrl = controller(&sock, bdev.clone(), &reactors, 2, |_| {});
    let mut d = BlkDriver::connect(&sock, opts(2)).unwrap();
    // Complete a first batch normally so the rings are not at index 0.
    for q in 0..2 {
        write(
            &mut d,
            q,
            4000 + q as u64 * 8,
            &pattern(900 + q as u64, 4096),
        );
    }
    let n = 12u64;
    for q in 0..2 {
        let queue = d.queue(q);
        for i in 0..n {
            let tag = q as u64 * 100 + i;
            queue
                .write_data(queue.next_slot().unwrap(), &pattern(tag, 4096))
                .unwrap();
            queue.submit(ReqKind::Write, tag * 8, 4096, tag).unwrap();
        }
        queue.kick();
    }
    wait_until("requests in flight", T, || ctrl.stats().in_flight >= 2);
    if restart_target {
        // The target "dies": its in-flight requests finish at the device, but it never
        // reports them; a new target process serves the same socket.
        ctrl.stop().unwrap();
        drop(ctrl);
        ctrl = controller(&sock, bdev, &reactors, 2, |_| {});
    } else {
        d.disconnect();
        wait_until("backend noticed the disconnect", T, || !ctrl.is_connected());
    }
    // Whatever completed before the cut is still in the used rings; the rest is re-run.
    let mut got = Vec::new();
    for q in 0..2 {
        d.queue(q).poll(&mut got);
    }
    d.reconnect().unwrap();
    for q in 0..2 {
        let already = got.iter().filter(|c| c.tag / 100 == q as u64).count();
        let c = d.queue(q).wait_for(n as usize - already, T);
        got.extend(c);
    }
    assert_eq!(
        got.len(),
        2 * n as usize,
        "every request completes exactly once"
    );
    let mut tags: Vec<_> = got.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), 2 * n as usize, "no request completed twice");
    assert!(got.iter().all(|c| c.status == VIRTIO_BLK_S_OK));
    assert!(
        ctrl.stats().resubmitted > 0,
        "nothing was re-run: {:?}",
        ctrl.stats()
    );
    // Read everything back in one batch per queue (the device is slow on purpose).
    for q in 0..2u64 {
        let queue = d.queue(q as usize);
        let mut want = std::collections::HashMap::new();
        for i in 0..n {
            let tag = q * 100 + i;
            let slot = queue.submit(ReqKind::Read, tag * 8, 4096, tag).unwrap();
            want.insert(slot, pattern(tag, 4096));
        }
        let slot = queue
            .submit(ReqKind::Read, 4000 + q * 8, 4096, 900 + q)
            .unwrap();
        want.insert(slot, pattern(900 + q, 4096));
        queue.kick();
        let c = queue.wait_for(want.len(), T);
        assert_eq!(c.len(), want.len());
        for c in c {
            assert_eq!(c.status, VIRTIO_BLK_S_OK);
            let slot = c.slot.unwrap();
            let mut buf = vec![0u8; 4096];
            queue.read_data(slot, &mut buf).unwrap();
            assert_eq!(buf, want[&slot], "tag {}", c.tag);
        }
    }
}

#[test]
fn frontend_disconnect_mid_io_then_reconnect_reruns_inflight() {
    reconnect_reruns_inflight(false);
}

#[test]
fn target_restart_mid_io_reruns_inflight_from_the_region() {
    reconnect_reruns_inflight(true);
}

#[test]
fn disconnect_without_inflight_region_then_fresh_connection_works() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("noinflight");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(
        &sock,
        malloc("m0", 8, 512, 100_000_000),
        &reactors,
        1,
        |_| {},
    );
    let o = DriverOptions {
        inflight: false,
        ..opts(1)
    };
    let mut d = BlkDriver::connect(&sock, o.clone()).unwrap();
    let q = d.queue(0);
    for i in 0..16u64 {
        q.submit(ReqKind::Write, i * 8, 4096, i).unwrap();
    }
    q.kick();
    wait_until("requests in flight", T, || ctrl.stats().in_flight > 0);
    drop(d);
    wait_until("disconnect noticed", T, || !ctrl.is_connected());
    wait_until("in-flight requests drained", T, || {
        ctrl.stats().in_flight == 0
    });
    let mut d = BlkDriver::connect(&sock, o).unwrap();
    let data = pattern(5, 4096);
    write(&mut d, 0, 0, &data);
    assert_eq!(read(&mut d, 0, 0, 4096), data);
}

/// A gate with a budget of requests, refilled by the test; it can also pause the VM and
/// fail requests.
#[derive(Debug, Default)]
struct BudgetGate {
    budget: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

struct BudgetChannel {
    budget: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl IoGate for BudgetGate {
    fn open(
        &self,
        vm: &str,
        _queue: u16,
        _reactor: &mut vmpath_runtime::Reactor,
    ) -> Box<dyn GateChannel> {
        assert_eq!(vm, "vm-a");
        Box::new(BudgetChannel {
            budget: self.budget.clone(),
            completed: self.completed.clone(),
            paused: self.paused.clone(),
            fail: self.fail.clone(),
        })
    }
}

impl GateChannel for BudgetChannel {
    fn should_pull(&mut self, _now: u64) -> bool {
        !self.paused.load(Ordering::SeqCst)
    }

    fn admit(&mut self, _io: &GateIo, _now: u64) -> Admit {
        if self.fail.load(Ordering::SeqCst) {
            return Admit::Fail;
        }
        let b = self.budget.load(Ordering::SeqCst);
        if b == 0 {
            return Admit::Hold { retry_ns: 200_000 };
        }
        self.budget.store(b - 1, Ordering::SeqCst);
        Admit::Now
    }

    fn complete(&mut self, io: &GateIo, _now: u64, _latency_ns: u64, ok: bool) {
        assert!(ok);
        assert_eq!(
            io.bytes,
            if io.op == vmpath_bdev::IoType::Flush {
                0
            } else {
                4096
            }
        );
        self.completed.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn gate_holds_requests_in_order_and_releases_them() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("gate");
    let sock = dir.sock("disk.sock");
    let gate = Arc::new(BudgetGate::default());
    gate.budget.store(3, Ordering::SeqCst);
    let g2 = gate.clone();
    let ctrl = controller(&sock, malloc("m0", 8, 512, 0), &reactors, 1, move |c| {
        c.gate = g2;
    });
    let mut d = BlkDriver::connect(&sock, opts(1)).unwrap();
    let q = d.queue(0);
    for i in 0..8u64 {
        q.write_data(q.next_slot().unwrap(), &pattern(i, 4096))
            .unwrap();
        q.submit(ReqKind::Write, i * 8, 4096, i).unwrap();
    }
    q.kick();
    let first = q.wait_for(3, T);
    assert_eq!(
        first.iter().map(|c| c.tag).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(
        q.wait_for(1, Duration::from_millis(100)).is_empty(),
        "gate let a request through"
    );
    assert!(ctrl.stats().gate_holds > 0);
    assert_eq!(
        ctrl.stats().in_flight,
        1,
        "the held request counts as in flight"
    );
    gate.budget.store(100, Ordering::SeqCst);
    let rest = q.wait_for(5, T);
    assert_eq!(
        rest.iter().map(|c| c.tag).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(gate.completed.load(Ordering::SeqCst), 8);
    for i in 0..8u64 {
        assert_eq!(read(&mut d, 0, i * 8, 4096), pattern(i, 4096));
    }
    // Paused by the gate: the ring is not pulled; unpaused: it is.
    gate.paused.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(20));
    let q = d.queue(0);
    q.submit(ReqKind::Flush, 0, 0, 50).unwrap();
    q.force_kick();
    assert!(
        q.wait_for(1, Duration::from_millis(100)).is_empty(),
        "pulled while paused"
    );
    gate.paused.store(false, Ordering::SeqCst);
    let c = q.wait_for(1, T);
    assert_eq!((c[0].tag, c[0].status), (50, VIRTIO_BLK_S_OK));
    // Failed by the gate: IOERR, nothing reaches the device.
    gate.fail.store(true, Ordering::SeqCst);
    let (c, _) = run_one(&mut d, 0, ReqKind::Write, 0, 4096, Some(&pattern(77, 4096)));
    assert_eq!(c.status, VIRTIO_BLK_S_IOERR);
    gate.fail.store(false, Ordering::SeqCst);
    assert_eq!(read(&mut d, 0, 0, 4096), pattern(0, 4096));
}

#[test]
fn notifications_are_suppressed_while_busy_and_reenabled_when_idle() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("notify");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(&sock, malloc("m0", 8, 512, 0), &reactors, 1, |c| {
        c.notify_idle_ns = 20_000_000;
    });
    let mut d = BlkDriver::connect(
        &sock,
        DriverOptions {
            event_idx: false,
            ..opts(1)
        },
    )
    .unwrap();
    // Idle: the device asks for kicks and the reactor goes to sleep.
    wait_until("kicks enabled", T, || !d.queue(0).device_suppresses_kicks());
    wait_until("reactor asleep", T, || reactors.handles[0].is_sleeping());
    // A kick wakes it and the request completes.
    let data = pattern(1, 4096);
    write(&mut d, 0, 0, &data);
    wait_until("the kick was seen", T, || ctrl.stats().kicks >= 1);
    // Busy: a stream of requests; the device suppresses kicks while it polls.
    let mut saw_suppressed = false;
    let q = d.queue(0);
    for round in 0..200u64 {
        q.submit(ReqKind::Read, 0, 4096, round).unwrap();
        q.kick();
        saw_suppressed |= q.device_suppresses_kicks();
        assert_eq!(q.wait_for(1, T).len(), 1);
    }
    assert!(saw_suppressed, "kicks were never suppressed while busy");
    assert!(
        q.kicks < 200,
        "every request needed a kick ({} kicks)",
        q.kicks
    );
    // Idle again: re-enabled.
    wait_until("kicks re-enabled", T, || {
        !d.queue(0).device_suppresses_kicks()
    });
    assert!(ctrl.stats().notify_enables >= 2);
    // One interrupt per completion batch at most.
    let s = ctrl.stats();
    assert!(s.interrupts <= s.reads + s.writes);
}

#[test]
fn read_only_disk_rejects_modifications() {
    let reactors = Reactors::start(1);
    let dir = TempDir::new("ro");
    let sock = dir.sock("disk.sock");
    let ctrl = controller(&sock, malloc("m0", 8, 512, 0), &reactors, 1, |c| {
        c.readonly = true;
    });
    assert_ne!(ctrl.offered_features() & bit(blk::VIRTIO_BLK_F_RO), 0);
    assert_eq!(ctrl.offered_features() & bit(blk::VIRTIO_BLK_F_DISCARD), 0);
    let mut d = BlkDriver::connect(&sock, opts(1)).unwrap();
    assert_ne!(d.features() & bit(blk::VIRTIO_BLK_F_RO), 0);
    let (c, _) = run_one(&mut d, 0, ReqKind::Write, 0, 4096, Some(&pattern(1, 4096)));
    assert_eq!(c.status, VIRTIO_BLK_S_IOERR);
    assert!(read(&mut d, 0, 0, 4096).iter().all(|&b| b == 0));
    let (c, _) = run_one(&mut d, 0, ReqKind::Flush, 0, 0, None);
    assert_eq!(c.status, VIRTIO_BLK_S_OK);
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let reactors = Reactors::start(1);
    let mk = |f: &dyn Fn(&mut vhost::VhostBlkConfig)| {
        let mut c = vhost::VhostBlkConfig::new(
            "d",
            "/tmp/unused.sock",
            malloc("m", 1, 512, 0),
            "vm",
            reactors.handles.clone(),
        );
        f(&mut c);
        vhost::VhostBlkController::new(c)
    };
    let field = |r: Result<vhost::VhostBlkController, VhostError>| match r {
        Err(VhostError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(field(mk(&|c| c.num_queues = 0)), "num_queues");
    assert_eq!(field(mk(&|c| c.reactors.clear())), "reactors");
    assert_eq!(field(mk(&|c| c.max_queue_size = 100)), "max_queue_size");
    assert_eq!(field(mk(&|c| c.name.clear())), "name");
}
