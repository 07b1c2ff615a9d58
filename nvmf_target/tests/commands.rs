//! Every command over loopback with the test initiator: fabrics, admin, I/O; digests on and
#![allow(unsafe_code)] // Reason: reads the device directly to check the data landed (bdev IoVec API).
//! off; in-capsule and R2T writes; multi-PDU reads and writes; data read back and compared.

mod common;

use std::time::Duration;

use common::*;
use nvme_spec::cmd::{cns, DatasetManagement, DsmRange, WriteZeroes};
use nvme_spec::features::{aec, FeatureId, NumberOfQueues};
use nvme_spec::identify::NsIdDescriptor;
use nvme_spec::log::{parse_ana_log, SmartLog};
use nvme_spec::regs::{offset, Cap, Cc, Csts, Vs};
use nvme_spec::{
    AdminOpcode, IdentifyController, IdentifyNamespace, LogPageId, NsIdDescList, NsIdList,
    NvmOpcode, Sqe, Status,
};
use nvmf_target::testing::{rw_sqe, Connection, Host, InitiatorOptions};
use nvmf_target::TargetOptions;

#[test]
fn properties_enable_identify_and_features() {
    let f = fixture();
    let o = opts();
    let mut a = Connection::open(f.addr, &o).unwrap();
    a.connect(0, NQN, 0xffff).unwrap().ok().unwrap();
    assert!(a.cntlid >= 1);
    let cap = Cap(a.prop_get(offset::CAP, true).unwrap());
    assert_eq!(cap.mqes(), 127);
    assert_eq!(cap.css() & Cap::CSS_NVM, Cap::CSS_NVM);
    assert_eq!(a.prop_get(offset::VS, false).unwrap() as u32, Vs::V2_0.0);
    assert!(!Csts(a.prop_get(offset::CSTS, false).unwrap() as u32).ready());
    // Wrong size for CAP.
    let c = a
        .command(
            nvme_spec::fabrics::PropertyGet::to_sqe(offset::CAP, false, 0),
            &[],
            0,
        )
        .unwrap();
    assert_eq!(c.status(), Status::INVALID_FIELD);
    // Enabling with bad entry sizes is refused.
    let bad = Cc(0).with_en(1).with_iosqes(5).with_iocqes(4);
    assert_eq!(
        a.prop_set(offset::CC, false, bad.0 as u64)
            .unwrap()
            .status(),
        Status::INVALID_FIELD
    );
    // An I/O queue cannot connect before the controller is ready.
    let mut early = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        early.connect(1, NQN, a.cntlid).unwrap().status(),
        Status::COMMAND_SEQUENCE_ERROR
    );
    a.enable().unwrap();
    assert_eq!(a.prop_get(offset::CC, false).unwrap() as u32 & 1, 1);

    let ic = a.identify(cns::CONTROLLER, 0).unwrap().ok().unwrap();
    let id = IdentifyController::from_slice(&ic.data).unwrap();
    assert_eq!(id.cntlid(), a.cntlid);
    assert_eq!(id.subnqn().unwrap(), NQN);
    assert_eq!(id.sn().unwrap(), "VMPATH-TEST-1");
    assert_eq!(id.mn().unwrap(), "vmpath test");
    assert_eq!(id.mdts(), 5);
    assert_eq!(id.nn(), 1024);
    // Linux refuses an ANA-reporting controller whose MNAN is 0 or above NN.
    assert_eq!(id.mnan(), id.nn());
    assert_eq!(id.ioccsz(), (64 + 8192) / 16);
    assert_eq!(id.cntrltype(), IdentifyController::CNTRLTYPE_IO);
    assert_ne!(id.cmic() & IdentifyController::CMIC_ANA, 0);
    assert_ne!(id.oncs() & IdentifyController::ONCS_DSM, 0);
    assert_ne!(id.oncs() & IdentifyController::ONCS_WRITE_ZEROES, 0);
    assert_eq!(id.sqes(), 0x66);
    assert!(id.kas() > 0);

    let ns = a.identify(cns::NAMESPACE, 1).unwrap().ok().unwrap();
    let ns = IdentifyNamespace::from_slice(&ns.data).unwrap();
    assert_eq!(ns.nsze(), BLOCKS);
    assert_eq!(ns.block_size(), BS);
    assert_eq!(ns.anagrpid(), 1);
    assert_eq!(ns.nguid(), f.malloc.info().uuid);
    // Inactive NSID: zero-filled; invalid NSID: error.
    let z = a.identify(cns::NAMESPACE, 7).unwrap().ok().unwrap();
    assert!(z.data.iter().all(|&b| b == 0));
    assert_eq!(
        a.identify(cns::NAMESPACE, 0).unwrap().status(),
        Status::INVALID_NAMESPACE_OR_FORMAT
    );
    let l = a.identify(cns::ACTIVE_NAMESPACES, 0).unwrap().ok().unwrap();
    let l = NsIdList::from_slice(&l.data).unwrap();
    assert_eq!(l.iter().collect::<Vec<_>>(), vec![1, 2]);
    let l = a.identify(cns::ACTIVE_NAMESPACES, 1).unwrap().ok().unwrap();
    assert_eq!(
        NsIdList::from_slice(&l.data)
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![2]
    );
    let d = a.identify(cns::NS_ID_DESCRIPTORS, 1).unwrap().ok().unwrap();
    let d = NsIdDescList::from_slice(&d.data).unwrap();
    let descs: Vec<_> = d.iter().collect();
    assert!(descs.contains(&NsIdDescriptor::Nguid(f.malloc.info().uuid)));
    assert!(descs.contains(&NsIdDescriptor::Uuid(f.malloc.info().uuid)));
    assert_eq!(a.identify(0x55, 0).unwrap().status(), Status::INVALID_FIELD);

    // Features.
    let nq = NumberOfQueues { nsq: 4, ncq: 4 }.to_dw();
    let c = a
        .set_features(FeatureId::NumberOfQueues.as_u8(), nq)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(NumberOfQueues::from_dw(c.cqe.dw0()).nsq, 4);
    let c = a
        .get_features(FeatureId::NumberOfQueues.as_u8())
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(NumberOfQueues::from_dw(c.cqe.dw0()).nsq, 4);
    a.set_features(FeatureId::KeepAliveTimer.as_u8(), 30_000)
        .unwrap()
        .ok()
        .unwrap();
    let c = a
        .get_features(FeatureId::KeepAliveTimer.as_u8())
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(c.cqe.dw0(), 30_000);
    a.set_features(
        FeatureId::AsyncEventConfig.as_u8(),
        aec::ANA_CHANGE | aec::NS_ATTRIBUTE,
    )
    .unwrap()
    .ok()
    .unwrap();
    let c = a
        .get_features(FeatureId::AsyncEventConfig.as_u8())
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(c.cqe.dw0(), aec::ANA_CHANGE | aec::NS_ATTRIBUTE);
    a.set_features(FeatureId::VolatileWriteCache.as_u8(), 0)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        a.get_features(FeatureId::VolatileWriteCache.as_u8())
            .unwrap()
            .ok()
            .unwrap()
            .cqe
            .dw0(),
        0
    );
    assert_eq!(
        a.set_features(0x7e, 0).unwrap().status(),
        Status::INVALID_FIELD
    );
    a.keep_alive().unwrap().ok().unwrap();
    // Abort: best effort, reports "not aborted".
    let c = a
        .command(Sqe::new(AdminOpcode::Abort.as_u8(), 0, 0), &[], 0)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(c.cqe.dw0() & 1, 1);
    // Unknown admin opcode.
    assert_eq!(
        a.command(Sqe::new(0xc1, 0, 0), &[], 0).unwrap().status(),
        Status::INVALID_OPCODE
    );
    // Number of queues is fixed once an I/O queue exists.
    let mut io = Connection::open(f.addr, &o).unwrap();
    io.connect(1, NQN, a.cntlid).unwrap().ok().unwrap();
    assert_eq!(
        a.set_features(FeatureId::NumberOfQueues.as_u8(), nq)
            .unwrap()
            .status(),
        Status::COMMAND_SEQUENCE_ERROR
    );
    // Queue 5 is beyond the 4 granted; queue 1 is taken.
    let mut q5 = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        q5.connect(5, NQN, a.cntlid).unwrap().status(),
        Status::CONNECT_INVALID_PARAMETERS
    );
    let mut q1 = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        q1.connect(1, NQN, a.cntlid).unwrap().status(),
        Status::CONNECT_INVALID_PARAMETERS
    );
    // Unknown controller.
    let mut qx = Connection::open(f.addr, &o).unwrap();
    assert_eq!(
        qx.connect(2, NQN, 999).unwrap().status(),
        Status::CONNECT_INVALID_PARAMETERS
    );

    // Shutdown notification: SHST complete, I/O queue closed.
    let cc = Cc(a.prop_get(offset::CC, false).unwrap() as u32).with_shn(Cc::SHN_NORMAL);
    a.prop_set(offset::CC, false, cc.0 as u64)
        .unwrap()
        .ok()
        .unwrap();
    let csts = Csts(a.prop_get(offset::CSTS, false).unwrap() as u32);
    assert_eq!(csts.shst(), Csts::SHST_COMPLETE);
    io.wait_closed().unwrap();
}

#[test]
fn log_pages() {
    let f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let data = pattern(8192, 1);
    h.io[0].write(1, 0, &data, BS).unwrap().ok().unwrap();
    h.io[0].read(1, 0, 16, BS).unwrap().ok().unwrap();
    // A failing command lands in the error log.
    let c = h.io[0].read(1, BLOCKS, 1, BS).unwrap();
    assert_eq!(c.status(), Status::LBA_OUT_OF_RANGE);

    let a = &mut h.admin;
    let e = a
        .get_log(LogPageId::ErrorInformation as u8, 0, 64 * 16, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let first = nvme_spec::log::ErrorLogEntry::from_slice(&e.data[..64]).unwrap();
    assert_eq!(first.error_count(), 1);
    assert_eq!(first.sqid(), 1);
    assert_eq!(first.status_phase() >> 1, Status::LBA_OUT_OF_RANGE.0);

    let s = a
        .get_log(LogPageId::SmartHealth as u8, 0xffff_ffff, 512, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let s = SmartLog::from_slice(&s.data).unwrap();
    assert!(s.host_write_commands() >= 1);
    assert!(s.host_read_commands() >= 1);
    assert_eq!(s.data_units_written(), 1);
    let s1 = a
        .get_log(LogPageId::SmartHealth as u8, 1, 512, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        SmartLog::from_slice(&s1.data)
            .unwrap()
            .host_write_commands(),
        s.host_write_commands()
    );

    let an = a
        .get_log(LogPageId::Ana as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let (_, groups) = parse_ana_log(&an.data).unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].grpid, 1);
    assert_eq!(groups[0].nsids().collect::<Vec<_>>(), vec![1]);
    assert_eq!(groups[1].grpid, 2);
    assert_eq!(groups[1].state, nvme_spec::AnaState::Optimized as u8);
    // Return Groups Only.
    let an = a
        .get_log(LogPageId::Ana as u8, 0, 4096, 0, 1, false)
        .unwrap()
        .ok()
        .unwrap();
    let (_, groups) = parse_ana_log(&an.data).unwrap();
    assert_eq!(groups[0].nsids().count(), 0);
    // Offset into the page.
    let part = a
        .get_log(LogPageId::Ana as u8, 0, 32, 16, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(&part.data[..4], &1u32.to_le_bytes());

    let c = a
        .get_log(LogPageId::ChangedNamespaceList as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    assert!(NsIdList::from_slice(&c.data).unwrap().is_empty());
    // Discovery log is not served by an I/O controller; unknown pages neither.
    assert_eq!(
        a.get_log(LogPageId::Discovery as u8, 0, 1024, 0, 0, false)
            .unwrap()
            .status(),
        Status::INVALID_LOG_PAGE
    );
    assert_eq!(
        a.get_log(0xbe, 0, 512, 0, 0, false).unwrap().status(),
        Status::INVALID_LOG_PAGE
    );
    // Offset past the end.
    assert_eq!(
        a.get_log(LogPageId::SmartHealth as u8, 0xffff_ffff, 4, 4096, 0, false)
            .unwrap()
            .status(),
        Status::INVALID_FIELD
    );
}

fn io_round_trip(o: InitiatorOptions, topts: TargetOptions) {
    let f = fixture_with(topts);
    let mut h = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let io = &mut h.io[0];
    // In-capsule write (4 KiB) and R2T write (64 KiB), then read back.
    let small = pattern(4096, 7);
    let c = io.write(1, 0, &small, BS).unwrap().ok().unwrap();
    assert_eq!(c.r2ts, 0, "4 KiB fits in the capsule");
    let big = pattern(64 * 1024, 9);
    let c = io.write(1, 100, &big, BS).unwrap().ok().unwrap();
    assert_eq!(c.r2ts, 1, "64 KiB goes by R2T");
    let r = io.read(1, 0, 8, BS).unwrap().ok().unwrap();
    assert_eq!(r.data, small);
    let r = io.read(1, 100, 128, BS).unwrap().ok().unwrap();
    assert_eq!(r.data, big);
    assert_eq!(r.by_success_flag, o.disable_sqflow);
    // Largest transfer (MDTS, 128 KiB).
    let max = pattern(128 * 1024, 11);
    io.write(1, 1000, &max, BS).unwrap().ok().unwrap();
    let r = io.read(1, 1000, 256, BS).unwrap().ok().unwrap();
    assert_eq!(r.data, max);
    // The data really is on the device.
    let mut buf = vmpath_bdev::DmaBuf::new(4096);
    let mut ch = f.malloc.open_channel().unwrap();
    // SAFETY: the buffer outlives the synchronous I/O below.
    let iov = unsafe { buf.iovec(0..4096) };
    vmpath_bdev::sync::run_to_completion(
        ch.as_mut(),
        vmpath_bdev::IoRequest::with_iovs(
            vmpath_bdev::IoType::Read,
            0,
            8,
            smallvec::smallvec![iov],
            1,
        ),
        &vmpath_runtime::now_ns,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(buf.as_slice(), &small[..]);
}

#[test]
fn io_without_digests() {
    io_round_trip(opts(), TargetOptions::default());
}

#[test]
fn io_with_header_and_data_digests() {
    let mut o = opts();
    o.hdgst = true;
    o.ddgst = true;
    io_round_trip(o, TargetOptions::default());
}

#[test]
fn io_with_header_digest_only_and_sq_flow_control_disabled() {
    let mut o = opts();
    o.hdgst = true;
    o.disable_sqflow = true;
    io_round_trip(o, TargetOptions::default());
}

#[test]
fn io_with_data_digest_only_and_pdu_alignment() {
    let mut o = opts();
    o.ddgst = true;
    o.hpda = 3;
    let t = TargetOptions {
        cpda: 7,
        ..TargetOptions::default()
    };
    io_round_trip(o, t);
}

#[test]
fn multi_pdu_reads_and_writes() {
    // Small PDUs on both sides: 64 KiB moves as 16 C2HData / H2CData PDUs.
    let t = TargetOptions {
        max_c2h_data: 4096,
        max_h2c_data: 4096,
        ..TargetOptions::default()
    };
    for dd in [false, true] {
        let f = fixture_with(t.clone());
        let mut o = opts();
        o.ddgst = dd;
        o.hdgst = dd;
        let mut h = Host::connect(f.addr, NQN, &o, 1).unwrap();
        let io = &mut h.io[0];
        assert_eq!(io.icresp.maxh2cdata, 4096);
        let data = pattern(64 * 1024, 5);
        io.write(1, 64, &data, BS).unwrap().ok().unwrap();
        let r = io.read(1, 64, 128, BS).unwrap().ok().unwrap();
        assert_eq!(r.c2h_pdus, 16);
        assert_eq!(r.data, data);
        // A sector-sized read is one PDU.
        let r = io.read(1, 64, 1, BS).unwrap().ok().unwrap();
        assert_eq!(r.c2h_pdus, 1);
        assert_eq!(r.data, data[..512]);
    }
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let io = &mut h.io[0];
    let data = pattern(16 * 512, 2);
    io.write(1, 200, &data, BS).unwrap().ok().unwrap();
    io.command(Sqe::new(NvmOpcode::Flush.as_u8(), 0, 1), &[], 0)
        .unwrap()
        .ok()
        .unwrap();
    // Broadcast flush is not supported (VWC bits 2:1 = 10b).
    assert_eq!(
        io.command(Sqe::new(NvmOpcode::Flush.as_u8(), 0, 0xffff_ffff), &[], 0)
            .unwrap()
            .status(),
        Status::INVALID_NAMESPACE_OR_FORMAT
    );
    // Write Zeroes over blocks 202..206.
    let mut s = Sqe::new(NvmOpcode::WriteZeroes.as_u8(), 0, 1);
    WriteZeroes {
        slba: 202,
        nlb: 4,
        deallocate: false,
        fua: false,
    }
    .apply(&mut s);
    io.command(s, &[], 0).unwrap().ok().unwrap();
    let r = io.read(1, 200, 16, BS).unwrap().ok().unwrap();
    let mut want = data.clone();
    want[2 * 512..6 * 512].fill(0);
    assert_eq!(r.data, want);
    // Deallocate blocks 208..210 and 212..213 (plus an empty range).
    let mut s = Sqe::new(NvmOpcode::DatasetManagement.as_u8(), 0, 1);
    DatasetManagement {
        nr: 3,
        idr: false,
        idw: false,
        deallocate: true,
    }
    .apply(&mut s);
    let mut ranges = Vec::new();
    for (slba, nlb) in [(208u64, 2u32), (300, 0), (212, 1)] {
        let mut r = DsmRange::zeroed();
        r.set_slba(slba);
        r.set_nlb(nlb);
        ranges.extend_from_slice(r.as_bytes());
    }
    io.command(s, &ranges, 0).unwrap().ok().unwrap();
    let r = io.read(1, 200, 16, BS).unwrap().ok().unwrap();
    want[8 * 512..10 * 512].fill(0);
    want[12 * 512..13 * 512].fill(0);
    assert_eq!(r.data, want);
    // A range past the end fails the whole command, and nothing is deallocated.
    let mut bad = DsmRange::zeroed();
    bad.set_slba(BLOCKS - 1);
    bad.set_nlb(2);
    let mut ok = DsmRange::zeroed();
    ok.set_slba(200);
    ok.set_nlb(1);
    let mut s = Sqe::new(NvmOpcode::DatasetManagement.as_u8(), 0, 1);
    DatasetManagement {
        nr: 2,
        idr: false,
        idw: false,
        deallocate: true,
    }
    .apply(&mut s);
    let body = [ok.as_bytes().as_slice(), bad.as_bytes().as_slice()].concat();
    assert_eq!(
        io.command(s, &body, 0).unwrap().status(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.read(1, 200, 1, BS).unwrap().ok().unwrap().data,
        want[..512]
    );
    // Null namespace (4 KiB blocks): I/O completes.
    io.write(2, 5, &pattern(4096, 1), 4096)
        .unwrap()
        .ok()
        .unwrap();
    io.read(2, 5, 1, 4096).unwrap().ok().unwrap();
}

#[test]
fn queue_depth_32_pipelined_and_io_errors() {
    let f = fixture();
    let mut o = opts();
    o.queue_entries = 64;
    let mut h = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let io = &mut h.io[0];
    let mut cids = Vec::new();
    for i in 0..32u64 {
        let d = pattern(4096, i as u8);
        cids.push(
            io.submit(rw_sqe(NvmOpcode::Write, 1, i * 8, 8), &d, 0)
                .unwrap(),
        );
    }
    for c in cids {
        io.wait(c).unwrap().ok().unwrap();
    }
    let mut cids = Vec::new();
    for i in 0..32u64 {
        cids.push((
            i,
            io.submit(rw_sqe(NvmOpcode::Read, 1, i * 8, 8), &[], 4096)
                .unwrap(),
        ));
    }
    for (i, c) in cids {
        assert_eq!(
            io.wait(c).unwrap().ok().unwrap().data,
            pattern(4096, i as u8)
        );
    }
    // Errors named by the spec.
    assert_eq!(
        io.read(1, BLOCKS - 1, 2, BS).unwrap().status(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.read(1, 0, 512, BS).unwrap().status(),
        Status::INVALID_FIELD,
        "above MDTS"
    );
    assert_eq!(
        io.read(9, 0, 1, BS).unwrap().status(),
        Status::INVALID_NAMESPACE_OR_FORMAT
    );
    assert_eq!(
        io.command(Sqe::new(0x99, 0, 1), &[], 0).unwrap().status(),
        Status::INVALID_OPCODE
    );
    assert_eq!(
        io.command(Sqe::new(NvmOpcode::Compare.as_u8(), 0, 1), &[], 0)
            .unwrap()
            .status(),
        Status::INVALID_OPCODE
    );
    // Admin opcodes mean nothing on an I/O queue; Property Get neither.
    assert_eq!(
        io.command(nvme_spec::fabrics::PropertyGet::to_sqe(0, true, 0), &[], 0)
            .unwrap()
            .status(),
        Status::INVALID_FIELD
    );
    // Host buffer smaller than the transfer.
    let mut s = rw_sqe(NvmOpcode::Read, 1, 0, 8);
    s.set_cid(900);
    s.set_sgl1(nvme_spec::sqe::SglDescriptor::transport(512));
    io.submit_raw(s, &[]).unwrap();
    assert_eq!(
        io.wait(900).unwrap().status(),
        Status::DATA_SGL_LENGTH_INVALID
    );
    // Still fine afterwards.
    io.read(1, 0, 8, BS).unwrap().ok().unwrap();
}

#[test]
fn disconnect_closes_the_io_queue() {
    let f = fixture();
    let mut h = Host::connect(f.addr, NQN, &opts(), 1).unwrap();
    let io = &mut h.io[0];
    let s = nvme_spec::fabrics::fabrics_sqe(nvme_spec::FabricsType::Disconnect, 0);
    io.command(s, &[], 0).unwrap().ok().unwrap();
    io.wait_closed().unwrap();
    // The queue id is free again.
    let mut again = Connection::open(f.addr, &opts()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let c = again.connect(1, NQN, h.admin.cntlid).unwrap();
        if c.status().is_success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "qid 1 never freed");
        again = Connection::open(f.addr, &opts()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    again.read(1, 0, 1, BS).unwrap().ok().unwrap();
}
