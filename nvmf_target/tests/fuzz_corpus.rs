//! Runs the command-handler fuzz body over the checked-in corpus
//! (`fuzz/corpus/commands/`) and over seeds built here, so the target is exercised by
//! `cargo test` without libFuzzer. `NVMF_WRITE_CORPUS=1` (re)writes the seeds to the corpus.

use std::path::PathBuf;

use nvme_spec::cmd::{DatasetManagement, DsmRange, GetLogPage, Identify, WriteZeroes};
use nvme_spec::fabrics::{Connect, PropertyGet, PropertySet, CNTLID_DYNAMIC};
use nvme_spec::regs::{offset, Cc};
use nvme_spec::sqe::SglDescriptor;
use nvme_spec::{AdminOpcode, ConnectData, NvmOpcode, Sqe};
use nvme_tcp::pdu::Role;
use nvme_tcp::{CapsuleCmd, Encoder, H2CData, IcReq, IcResp, Pdu, Session};
use nvmf_target::fuzzing::{command_stream, HOST, NQN};
use nvmf_target::testing::rw_sqe;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/commands")
}

fn enc(hd: bool, dd: bool) -> Encoder {
    let req = IcReq {
        hdgst: hd,
        ddgst: dd,
        ..IcReq::default()
    };
    let resp = IcResp {
        hdgst: hd,
        ddgst: dd,
        ..IcResp::default()
    };
    Encoder::new(Session::negotiated(Role::Host, &req, &resp))
}

fn cap(e: &Encoder, mut sqe: Sqe, cid: u16, data: &[u8], out: &mut Vec<u8>) {
    sqe.set_cid(cid);
    sqe.set_psdt(nvme_spec::sqe::Psdt::SglMptrContig);
    if !data.is_empty() {
        sqe.set_sgl1(SglDescriptor::in_capsule(0, data.len() as u32));
    }
    let d: &[&[u8]] = if data.is_empty() { &[] } else { &[data] };
    e.push_pdu(&Pdu::CapsuleCmd(CapsuleCmd { sqe }), d, out)
        .unwrap();
}

fn read(nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut s = rw_sqe(NvmOpcode::Read, nsid, slba, nlb);
    s.set_sgl1(SglDescriptor::transport(nlb * 512));
    s
}

/// I/O command stream for a pre-connected queue.
fn io_stream(e: &Encoder) -> Vec<u8> {
    let mut b = Vec::new();
    cap(
        e,
        rw_sqe(NvmOpcode::Write, 1, 0, 1),
        10,
        &[0xab; 512],
        &mut b,
    );
    cap(e, read(1, 0, 1), 11, &[], &mut b);
    cap(e, read(1, 0, 16), 12, &[], &mut b);
    cap(e, Sqe::new(NvmOpcode::Flush.as_u8(), 0, 1), 13, &[], &mut b);
    let mut s = Sqe::new(NvmOpcode::WriteZeroes.as_u8(), 0, 1);
    WriteZeroes {
        slba: 2,
        nlb: 3,
        deallocate: false,
        fua: false,
    }
    .apply(&mut s);
    cap(e, s, 14, &[], &mut b);
    let mut s = Sqe::new(NvmOpcode::DatasetManagement.as_u8(), 0, 1);
    DatasetManagement {
        nr: 1,
        idr: false,
        idw: false,
        deallocate: true,
    }
    .apply(&mut s);
    let mut r = DsmRange::zeroed();
    r.set_slba(4);
    r.set_nlb(2);
    cap(e, s, 15, r.as_bytes(), &mut b);
    cap(e, read(1, 255, 2), 16, &[], &mut b);
    cap(e, read(7, 0, 1), 17, &[], &mut b);
    cap(e, Sqe::new(0x99, 0, 1), 18, &[], &mut b);
    // R2T write of 8 blocks. Read whole, the stream's nine earlier commands hold slots
    // 0..=8 (slots are freed once their responses are taken), so its transfer tag is 9.
    let mut s = rw_sqe(NvmOpcode::Write, 1, 8, 8);
    s.set_sgl1(SglDescriptor::transport(4096));
    cap(e, s, 19, &[], &mut b);
    let h = H2CData {
        cccid: 19,
        ttag: 9,
        datao: 0,
        datal: 4096,
        last: true,
    };
    e.push_pdu(&Pdu::H2CData(h), &[&[0x5a; 4096][..]], &mut b)
        .unwrap();
    b
}

/// A whole admin session from the ICReq.
fn admin_stream(hd: bool, dd: bool) -> Vec<u8> {
    let mut b = vec![0u8; 128];
    Encoder::ic_req(
        &IcReq {
            hdgst: hd,
            ddgst: dd,
            ..IcReq::default()
        },
        &mut b,
    )
    .unwrap();
    let e = enc(hd, dd);
    let c = Connect {
        recfmt: 0,
        qid: 0,
        sqsize: 31,
        cattr: 0,
        kato: 5000,
    };
    let mut d = ConnectData::zeroed();
    d.set_cntlid(CNTLID_DYNAMIC);
    d.set_subnqn(NQN).unwrap();
    d.set_hostnqn(HOST).unwrap();
    cap(&e, c.to_sqe(0), 1, d.as_bytes(), &mut b);
    cap(
        &e,
        PropertyGet::to_sqe(offset::CAP, true, 0),
        2,
        &[],
        &mut b,
    );
    let cc = Cc(0).with_en(1).with_iosqes(6).with_iocqes(4);
    cap(
        &e,
        PropertySet::to_sqe(offset::CC, false, cc.0 as u64, 0),
        3,
        &[],
        &mut b,
    );
    for (cid, cns) in [(4u16, 1u8), (5, 0), (6, 2), (7, 3)] {
        let mut s = Sqe::new(
            AdminOpcode::Identify.as_u8(),
            0,
            if cns == 1 { 0 } else { 1 },
        );
        Identify {
            cns,
            ..Default::default()
        }
        .apply(&mut s);
        s.set_sgl1(SglDescriptor::transport(4096));
        cap(&e, s, cid, &[], &mut b);
    }
    for (cid, lid) in [(8u16, 1u8), (9, 2), (10, 4), (11, 0x0c), (12, 0x70)] {
        let mut s = Sqe::new(AdminOpcode::GetLogPage.as_u8(), 0, 0xffff_ffff);
        GetLogPage {
            lid,
            numd: 128,
            ..Default::default()
        }
        .apply(&mut s);
        s.set_sgl1(SglDescriptor::transport(512));
        cap(&e, s, cid, &[], &mut b);
    }
    let mut s = Sqe::new(AdminOpcode::SetFeatures.as_u8(), 0, 0);
    s.set_cdw10(0x0b);
    s.set_cdw11(0x900);
    cap(&e, s, 13, &[], &mut b);
    cap(
        &e,
        Sqe::new(AdminOpcode::AsyncEventRequest.as_u8(), 0, 0),
        14,
        &[],
        &mut b,
    );
    cap(
        &e,
        Sqe::new(AdminOpcode::KeepAlive.as_u8(), 0, 0),
        15,
        &[],
        &mut b,
    );
    b
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |flags: u8, split: u8, body: Vec<u8>| {
        let mut v = vec![flags, split];
        v.extend(body);
        v
    };
    vec![
        ("io_plain", with(4, 0, io_stream(&enc(false, false)))),
        (
            "io_digests",
            with(4 | 1 | 2, 0, io_stream(&enc(true, true))),
        ),
        ("io_split_7", with(4, 7, io_stream(&enc(false, false)))),
        (
            "io_sqflow_off",
            with(4 | 8, 0, io_stream(&enc(false, false))),
        ),
        ("admin_plain", with(0, 0, admin_stream(false, false))),
        ("admin_digests_split", with(3, 13, admin_stream(true, true))),
        (
            "garbage",
            with(0, 3, (0..600u32).map(|i| (i * 37 % 251) as u8).collect()),
        ),
        (
            "term_req",
            with(
                4,
                0,
                vec![
                    2, 0, 24, 0, 24, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
        ),
    ]
}

#[test]
fn fuzz_corpus_regression() {
    let dir = corpus_dir();
    if std::env::var_os("NVMF_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in seeds() {
        let st = command_stream(&bytes);
        match name {
            // Connect + 10 commands, of which 3 fail (range, namespace, opcode).
            "io_plain" | "io_digests" | "io_sqflow_off" => {
                assert_eq!(
                    (st.ok, st.failed, st.term_reqs),
                    (8, 3, 0),
                    "{name}: {st:?}"
                )
            }
            // Connect, property get/set, 4 identifies, 5 log pages (discovery log refused),
            // set features, keep alive; the AER stays parked.
            "admin_plain" | "admin_digests_split" => {
                assert_eq!((st.ok, st.failed), (13, 1), "{name}: {st:?}")
            }
            "garbage" => assert_eq!(st.term_reqs, 1, "{name}: {st:?}"),
            _ => {}
        }
        // Every prefix too: inputs cut anywhere.
        for cut in (0..bytes.len()).step_by(97) {
            command_stream(&bytes[..cut]);
        }
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.unwrap().path();
        if path.is_file() {
            command_stream(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= seeds().len(), "corpus has {n} files");
}
