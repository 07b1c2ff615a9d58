//! Bad input from the network (issue "Bad input"): each case gets the NVMe status the spec
//! names, or a C2HTermReq with the right FES and a close; the other connection (a witness
//! host doing I/O) never notices; nothing unacknowledged is written.

mod common;

use std::time::Duration;

use common::*;
use nvme_spec::sqe::{Psdt, SglDescriptor};
use nvme_spec::{AdminOpcode, NvmOpcode, Sqe, Status};
use nvme_tcp::pdu::{Fes, Role};
use nvme_tcp::{CapsuleCmd, Encoder, H2CData, IcReq, Pdu};
use nvmf_target::testing::{rw_sqe, Connection, Host, RxPdu};

/// A host on its own connection, checked after every bad input.
struct Witness {
    h: Host,
    n: u8,
}

impl Witness {
    fn new(f: &Fixture) -> Witness {
        let mut o = opts();
        o.hdgst = true;
        o.ddgst = true;
        Witness {
            h: Host::connect(f.addr, NQN, &o, 1).unwrap(),
            n: 0,
        }
    }

    fn check(&mut self) {
        self.n = self.n.wrapping_add(1);
        let d = pattern(4096, self.n);
        self.h.io[0].write(1, 4000, &d, BS).unwrap().ok().unwrap();
        assert_eq!(
            self.h.io[0]
                .read(1, 4000, 8, BS)
                .unwrap()
                .ok()
                .unwrap()
                .data,
            d
        );
        self.h.admin.keep_alive().unwrap().ok().unwrap();
    }
}

/// Expects a C2HTermReq with `fes` (and `fei` when given), then the close.
fn expect_term(c: &mut Connection, fes: Fes, fei: Option<u32>) {
    let got = c.wait_closed().unwrap();
    let term = got.iter().find_map(|p| match p {
        RxPdu::Term { fes, fei, data } => Some((*fes, *fei, data.clone())),
        _ => None,
    });
    let (f, i, data) = term.unwrap_or_else(|| panic!("no TermReq, got {got:?}"));
    assert_eq!(f, fes as u16, "FES");
    if let Some(fei) = fei {
        assert_eq!(i, fei, "FEI");
    }
    assert!(data.len() <= 128);
}

fn connected_io(f: &Fixture, hdgst: bool, ddgst: bool) -> Host {
    let mut o = opts();
    o.hdgst = hdgst;
    o.ddgst = ddgst;
    Host::connect(f.addr, NQN, &o, 1).unwrap()
}

#[test]
fn malformed_pdus_get_a_term_req() {
    let f = fixture();
    let mut w = Witness::new(&f);

    // Unknown PDU type after the IC exchange: Invalid PDU Header Field at byte 0.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&[0x0b, 0, 8, 0, 8, 0, 0, 0]).unwrap();
    expect_term(&mut c, Fes::InvalidHeaderField, Some(0));
    w.check();

    // A controller-to-host PDU type sent to the controller.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&[0x05, 0, 24, 0, 24, 0, 0, 0]).unwrap();
    c.send_raw(&[0; 16]).unwrap();
    expect_term(&mut c, Fes::InvalidHeaderField, Some(0));
    w.check();

    // Wrong HLEN for a CapsuleCmd.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&[0x04, 0, 70, 0, 72, 0, 0, 0]).unwrap();
    expect_term(&mut c, Fes::InvalidHeaderField, Some(2));
    w.check();

    // PLEN smaller than the header.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&[0x04, 0, 72, 0, 8, 0, 0, 0]).unwrap();
    expect_term(&mut c, Fes::InvalidHeaderField, Some(4));
    w.check();

    // In-capsule data beyond the advertised capsule size: Data Transfer Limit Exceeded.
    let h = connected_io(&f, false, false);
    let mut io = h.io.into_iter().next().unwrap();
    let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 32);
    s.set_cid(5);
    s.set_sgl1(SglDescriptor::in_capsule(0, 16384));
    let mut b = Vec::new();
    io.encoder()
        .push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe: s }),
            &[&vec![0u8; 16384][..]],
            &mut b,
        )
        .unwrap();
    io.send_raw(&b).unwrap();
    expect_term(&mut io, Fes::DataTransferLimitExceeded, None);
    w.check();

    // Garbage.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&pattern(3000, 77)).unwrap();
    let _ = c.wait_closed().unwrap();
    w.check();
}

#[test]
fn wrong_pdu_order() {
    let f = fixture();
    let mut w = Witness::new(&f);
    // A command before ICReq: PDU Sequence Error.
    let mut c = Connection::open_raw(f.addr, &opts()).unwrap();
    let mut b = Vec::new();
    Encoder::default()
        .push_pdu::<&[u8]>(
            &Pdu::CapsuleCmd(CapsuleCmd {
                sqe: Sqe::new(0x06, 1, 0),
            }),
            &[],
            &mut b,
        )
        .unwrap();
    c.send_raw(&b).unwrap();
    expect_term(&mut c, Fes::PduSequenceError, None);
    w.check();

    // A second ICReq.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    let mut b = [0u8; 128];
    let n = Encoder::ic_req(&IcReq::default(), &mut b).unwrap();
    c.send_raw(&b[..n]).unwrap();
    expect_term(&mut c, Fes::PduSequenceError, None);
    w.check();

    // H2CData without an R2T: the transfer tag names nothing.
    let h = connected_io(&f, false, false);
    let mut io = h.io.into_iter().next().unwrap();
    let mut b = Vec::new();
    let d = H2CData {
        cccid: 1,
        ttag: 3,
        datao: 0,
        datal: 512,
        last: true,
    };
    io.encoder()
        .push_pdu(&Pdu::H2CData(d), &[&[0u8; 512][..]], &mut b)
        .unwrap();
    io.send_raw(&b).unwrap();
    expect_term(&mut io, Fes::InvalidHeaderField, Some(10));
    w.check();

    // H2CData at the wrong offset of a real R2T.
    let h = connected_io(&f, false, false);
    let mut io = h.io.into_iter().next().unwrap();
    let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 64);
    s.set_cid(7);
    s.set_psdt(Psdt::SglMptrContig);
    s.set_sgl1(SglDescriptor::transport(32768));
    io.submit_raw(s, &[]).unwrap();
    let RxPdu::R2T(r2t) = io.recv_pdu().unwrap() else {
        panic!("no R2T")
    };
    assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (7, 0, 32768));
    let d = H2CData {
        cccid: 7,
        ttag: r2t.ttag,
        datao: 4096,
        datal: 4096,
        last: false,
    };
    let mut b = Vec::new();
    io.encoder()
        .push_pdu(&Pdu::H2CData(d), &[&[0u8; 4096][..]], &mut b)
        .unwrap();
    io.send_raw(&b).unwrap();
    expect_term(&mut io, Fes::DataTransferOutOfRange, None);
    w.check();

    // More commands than the queue has entries.
    let mut o = opts();
    o.queue_entries = 4;
    let mut h = Host::connect(f.addr, NQN, &o, 1).unwrap();
    let io = &mut h.io[0];
    // R2T writes park slots waiting for data; the sixth command overflows 4 entries (+1).
    for i in 0..6u16 {
        let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 64);
        s.set_cid(100 + i);
        s.set_sgl1(SglDescriptor::transport(32768));
        io.submit_raw(s, &[]).unwrap();
    }
    expect_term(io, Fes::PduSequenceError, None);
    w.check();
}

#[test]
fn digest_errors() {
    let f = fixture();
    let mut w = Witness::new(&f);
    // Header digest mismatch: FES Header Digest Error.
    let h = connected_io(&f, true, false);
    let mut io = h.io.into_iter().next().unwrap();
    let mut b = Vec::new();
    let mut s = rw_sqe(NvmOpcode::Read, 1, 0, 1);
    s.set_sgl1(SglDescriptor::transport(512));
    io.encoder()
        .push_pdu::<&[u8]>(&Pdu::CapsuleCmd(CapsuleCmd { sqe: s }), &[], &mut b)
        .unwrap();
    b[72] ^= 0xff;
    io.send_raw(&b).unwrap();
    expect_term(&mut io, Fes::HeaderDigestError, None);
    w.check();

    // Data digest mismatch on an in-capsule write: Transient Transport Error, nothing
    // written, the connection lives on.
    let mut h = connected_io(&f, true, true);
    let io = &mut h.io[0];
    let before = io.read(1, 300, 8, BS).unwrap().ok().unwrap().data;
    let mut s = rw_sqe(NvmOpcode::Write, 1, 300, 8);
    s.set_cid(11);
    s.set_psdt(Psdt::SglMptrContig);
    s.set_sgl1(SglDescriptor::in_capsule(0, 4096));
    let mut b = Vec::new();
    let new = pattern(4096, 66);
    io.encoder()
        .push_pdu(&Pdu::CapsuleCmd(CapsuleCmd { sqe: s }), &[&new[..]], &mut b)
        .unwrap();
    let n = b.len();
    b[n - 1] ^= 0x55;
    io.submit_bytes(11, &b).unwrap();
    assert_eq!(
        io.wait(11).unwrap().status(),
        Status::TRANSIENT_TRANSPORT_ERROR
    );
    assert_eq!(io.read(1, 300, 8, BS).unwrap().ok().unwrap().data, before);

    // Data digest mismatch in an H2CData PDU.
    let mut s = rw_sqe(NvmOpcode::Write, 1, 300, 64);
    s.set_cid(12);
    s.set_sgl1(SglDescriptor::transport(32768));
    io.submit_raw(s, &[]).unwrap();
    let RxPdu::R2T(r2t) = io.recv_pdu().unwrap() else {
        panic!("no R2T")
    };
    let mut b = Vec::new();
    let data = pattern(32768, 3);
    let d = H2CData {
        cccid: 12,
        ttag: r2t.ttag,
        datao: 0,
        datal: 32768,
        last: true,
    };
    io.encoder()
        .push_pdu(&Pdu::H2CData(d), &[&data[..]], &mut b)
        .unwrap();
    let n = b.len();
    b[n - 2] ^= 1;
    io.send_raw(&b).unwrap();
    let c = io.wait(12).unwrap();
    assert_eq!(c.status(), Status::TRANSIENT_TRANSPORT_ERROR);
    assert_eq!(io.read(1, 300, 8, BS).unwrap().ok().unwrap().data, before);
    io.read(1, 300, 64, BS).unwrap().ok().unwrap();
    w.check();
}

#[test]
fn command_level_errors_keep_the_connection() {
    let f = fixture();
    let mut w = Witness::new(&f);
    // Commands before Connect: Command Sequence Error, then Connect still works.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    assert_eq!(
        c.identify(1, 0).unwrap().status(),
        Status::COMMAND_SEQUENCE_ERROR
    );
    assert_eq!(
        c.read(1, 0, 1, BS).unwrap().status(),
        Status::COMMAND_SEQUENCE_ERROR
    );
    assert_eq!(
        c.prop_get(0, true).unwrap_err().to_string(),
        format!("command failed with {:?}", Status::COMMAND_SEQUENCE_ERROR)
    );
    // Bad Connect parameters.
    let mut o = opts();
    o.queue_entries = 1;
    let mut bad = Connection::open(f.addr, &o).unwrap();
    let r = bad.connect(0, NQN, 0xffff).unwrap();
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(r.cqe.dw0(), 44, "IPO = SQSIZE in the SQE");
    let r = c.connect(0, NQN, 5).unwrap();
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(r.cqe.dw0(), 0x1_0010, "IPO = CNTLID in the data");
    let mut s = nvme_spec::fabrics::Connect {
        recfmt: 1,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 0,
    }
    .to_sqe(0);
    s.set_cid(3);
    let mut d = nvme_spec::ConnectData::zeroed();
    d.set_cntlid(0xffff);
    d.set_subnqn(NQN).unwrap();
    d.set_hostnqn(HOST).unwrap();
    c.submit_raw(s, d.as_bytes()).unwrap();
    assert_eq!(
        c.wait(3).unwrap().status(),
        Status::CONNECT_INCOMPATIBLE_FORMAT
    );
    c.connect(0, NQN, 0xffff).unwrap().ok().unwrap();
    // Admin commands before the controller is enabled... Identify still needs a Connect only.
    assert_eq!(
        c.connect(0, NQN, 0xffff).unwrap().status(),
        Status::COMMAND_SEQUENCE_ERROR,
        "second Connect on a queue"
    );
    w.check();

    // SGL problems on an I/O queue.
    let mut h = connected_io(&f, false, false);
    let io = &mut h.io[0];
    let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 1);
    s.set_cid(20);
    s.set_sgl1(SglDescriptor::in_capsule(16, 512));
    io.submit_raw(s, &[0u8; 512]).unwrap();
    assert_eq!(io.wait(20).unwrap().status(), Status::SGL_OFFSET_INVALID);
    let mut s = rw_sqe(NvmOpcode::Read, 1, 0, 1);
    s.set_cid(21);
    s.set_sgl1(SglDescriptor::keyed(0x1000, 512, 7, 0));
    io.submit_raw(s, &[]).unwrap();
    assert_eq!(
        io.wait(21).unwrap().status(),
        Status::SGL_DESCRIPTOR_TYPE_INVALID
    );
    let mut s = rw_sqe(NvmOpcode::Read, 1, 0, 1);
    s.set_cid(22);
    s.set_psdt(Psdt::Prp);
    s.set_sgl1(SglDescriptor::transport(512));
    io.submit_raw(s, &[]).unwrap();
    assert_eq!(io.wait(22).unwrap().status(), Status::INVALID_FIELD);
    let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 2);
    s.set_cid(23);
    s.set_sgl1(SglDescriptor::in_capsule(0, 512));
    io.submit_raw(s, &[0u8; 512]).unwrap();
    assert_eq!(
        io.wait(23).unwrap().status(),
        Status::DATA_SGL_LENGTH_INVALID
    );
    // Writes above MDTS are refused before any R2T.
    let mut s = rw_sqe(NvmOpcode::Write, 1, 0, 512);
    s.set_cid(24);
    s.set_sgl1(SglDescriptor::transport(512 * 512));
    io.submit_raw(s, &[]).unwrap();
    assert_eq!(io.wait(24).unwrap().status(), Status::INVALID_FIELD);
    // Unknown opcodes, out-of-range LBAs, an admin opcode on the I/O queue.
    assert_eq!(
        io.command(Sqe::new(0x7e, 0, 1), &[], 0).unwrap().status(),
        Status::INVALID_OPCODE
    );
    assert_eq!(
        io.command(Sqe::new(AdminOpcode::Identify.as_u8(), 0, 1), &[], 4096)
            .unwrap()
            .status(),
        Status::INVALID_OPCODE
    );
    assert_eq!(
        io.write(1, BLOCKS, &[0u8; 512], BS).unwrap().status(),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        io.read(1, u64::MAX - 1, 4, BS).unwrap().status(),
        Status::LBA_OUT_OF_RANGE
    );
    io.read(1, 0, 1, BS).unwrap().ok().unwrap();
    w.check();
}

#[test]
fn host_disappearing_writes_nothing_unacknowledged() {
    let f = fixture();
    let mut w = Witness::new(&f);
    let mut h = connected_io(&f, false, false);
    let before = h.io[0].read(1, 500, 64, BS).unwrap().ok().unwrap().data;
    // R2T write: half the data, then the host vanishes.
    let mut io = h.io.pop().unwrap();
    let mut s = rw_sqe(NvmOpcode::Write, 1, 500, 64);
    s.set_cid(9);
    s.set_sgl1(SglDescriptor::transport(32768));
    io.submit_raw(s, &[]).unwrap();
    let RxPdu::R2T(r2t) = io.recv_pdu().unwrap() else {
        panic!("no R2T")
    };
    let d = H2CData {
        cccid: 9,
        ttag: r2t.ttag,
        datao: 0,
        datal: 16384,
        last: false,
    };
    let mut b = Vec::new();
    io.encoder()
        .push_pdu(&Pdu::H2CData(d), &[&pattern(16384, 9)[..]], &mut b)
        .unwrap();
    io.send_raw(&b).unwrap();
    drop(io);
    // In-capsule write cut in the middle of its data.
    let mut h2 = connected_io(&f, false, false);
    let mut io = h2.io.pop().unwrap();
    let mut s = rw_sqe(NvmOpcode::Write, 1, 540, 8);
    s.set_cid(1);
    s.set_psdt(Psdt::SglMptrContig);
    s.set_sgl1(SglDescriptor::in_capsule(0, 4096));
    let mut b = Vec::new();
    io.encoder()
        .push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe: s }),
            &[&pattern(4096, 10)[..]],
            &mut b,
        )
        .unwrap();
    io.send_raw(&b[..b.len() - 1000]).unwrap();
    drop(io);
    // A truncated header, then gone.
    let mut c = Connection::open(f.addr, &opts()).unwrap();
    c.send_raw(&[0x04, 0, 72, 0]).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    w.check();
    let after = w.h.io[0].read(1, 500, 64, BS).unwrap().ok().unwrap().data;
    assert_eq!(
        after, before,
        "a write whose data never fully arrived changed the disk"
    );
    let _ = Role::Host;
}
