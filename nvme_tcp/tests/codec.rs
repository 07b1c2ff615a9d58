//! Round trips, split decoding, digests, padding and every error class of
//! the NVMe/TCP codec.

mod common;

use common::*;
use nvme_tcp::pdu::{flags, CAPSULE_CMD_HLEN, IC_LEN};
use nvme_tcp::*;

fn encode_all(enc: &Encoder, pdus: &[(Pdu, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (p, d) in pdus {
        enc.push_pdu(p, &[d.as_slice()], &mut out).unwrap();
    }
    out
}

fn expect_all(pdus: &[(Pdu, Vec<u8>)]) -> Vec<Owned> {
    pdus.iter()
        .map(|(p, d)| Owned::Pdu(*p, d.clone()))
        .collect()
}

#[test]
fn roundtrip_every_pdu_type_digest_and_padding_combinations() {
    for hd in [false, true] {
        for dd in [false, true] {
            for pda in [0u8, 1, 3, 31] {
                let s = session(hd, dd, pda);
                let enc = Encoder::new(s);
                let h2c = h2c_samples();
                let bytes = encode_all(&enc, &h2c);
                let got = decode_chunks(&mut controller_dec(s), &bytes, bytes.len()).unwrap();
                assert_eq!(got, expect_all(&h2c), "h2c hd={hd} dd={dd} pda={pda}");
                let c2h = c2h_samples();
                let bytes = encode_all(&enc, &c2h);
                let got = decode_chunks(&mut host_dec(s), &bytes, bytes.len()).unwrap();
                assert_eq!(got, expect_all(&c2h), "c2h hd={hd} dd={dd} pda={pda}");
            }
        }
    }
}

#[test]
fn split_at_every_byte_and_every_chunk_size() {
    let s = session(true, true, 1);
    let enc = Encoder::new(s);
    let pdus = vec![
        (
            Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
            pattern(100, 1),
        ),
        (
            Pdu::H2CData(H2CData {
                cccid: 1,
                ttag: 2,
                datao: 0,
                datal: 37,
                last: true,
            }),
            pattern(37, 2),
        ),
        (
            Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(5) }),
            Vec::new(),
        ),
    ];
    let bytes = encode_all(&enc, &pdus);
    let want = expect_all(&pdus);
    // one byte at a time
    assert_eq!(
        decode_chunks(&mut controller_dec(s), &bytes, 1).unwrap(),
        want
    );
    // every chunk size
    for chunk in 2..40 {
        assert_eq!(
            decode_chunks(&mut controller_dec(s), &bytes, chunk).unwrap(),
            want,
            "chunk {chunk}"
        );
    }
}

#[test]
fn two_piece_splits_reassemble_identically() {
    let s = session(true, false, 0);
    let enc = Encoder::new(s);
    let pdus = c2h_samples();
    let bytes = encode_all(&enc, &pdus);
    let want = expect_all(&pdus);
    for cut in 0..=bytes.len() {
        let mut dec = host_dec(s);
        let mut first = Vec::new();
        let mut data = Vec::new();
        let mut cur = None;
        for piece in [&bytes[..cut], &bytes[cut..]] {
            for ev in dec.feed(piece) {
                match ev.unwrap() {
                    Event::Header { pdu, data_len: 0 } => first.push(Owned::Pdu(pdu, Vec::new())),
                    Event::Header { pdu, .. } => cur = Some(pdu),
                    Event::Data { data: d, .. } => data.extend_from_slice(d),
                    Event::DataEnd => {
                        first.push(Owned::Pdu(cur.take().unwrap(), std::mem::take(&mut data)))
                    }
                    Event::DataDigestError { .. } => panic!("digest"),
                }
            }
        }
        assert_eq!(first, want, "cut {cut}");
        assert!(dec.at_pdu_boundary());
    }
}

#[test]
fn zero_copy_data_slices_point_into_input() {
    let s = session(false, false, 0);
    let enc = Encoder::new(s);
    let data = pattern(4096, 9);
    let mut bytes = Vec::new();
    enc.push_pdu(
        &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
        &[data.as_slice()],
        &mut bytes,
    )
    .unwrap();
    let mut dec = controller_dec(s);
    let evs: Vec<_> = dec.feed(&bytes).collect::<Result<_, _>>().unwrap();
    assert_eq!(evs.len(), 3);
    match evs[1] {
        Event::Data { offset: 0, data: d } => {
            assert_eq!(
                d.as_ptr(),
                bytes[CAPSULE_CMD_HLEN..].as_ptr(),
                "data borrowed from input"
            );
            assert_eq!(d, &data[..]);
        }
        ref e => panic!("unexpected {e:?}"),
    }
    assert_eq!(evs[2], Event::DataEnd);
}

#[test]
fn ic_exchange_and_session() {
    let req = IcReq {
        pfv: 0,
        hpda: 2,
        hdgst: true,
        ddgst: true,
        maxr2t: 3,
    };
    let resp = IcResp {
        pfv: 0,
        cpda: 1,
        hdgst: true,
        ddgst: false,
        maxh2cdata: 65536,
    };
    let mut b = [0u8; IC_LEN];
    assert_eq!(Encoder::ic_req(&req, &mut b).unwrap(), 128);
    assert_eq!(&b[..8], &[0, 0, 128, 0, 128, 0, 0, 0]);
    assert_eq!((b[10], b[11]), (2, 3));
    assert_eq!(&b[12..16], &[3, 0, 0, 0]);
    let mut ctrl = Decoder::new(DecoderConfig::controller());
    assert!(!ctrl.ic_done());
    let evs: Vec<_> = ctrl.feed(&b).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        evs,
        vec![Event::Header {
            pdu: Pdu::IcReq(req),
            data_len: 0
        }]
    );
    assert!(ctrl.ic_done());
    let cs = Session::negotiated(Role::Controller, &req, &resp);
    ctrl.set_session(cs);
    // a second ICReq is a sequence error
    assert_eq!(
        ctrl.clone().feed(&b).next().unwrap().unwrap_err(),
        ProtocolError::PduSequence {
            what: "second connection initialization PDU"
        }
    );

    let mut r = [0u8; IC_LEN];
    Encoder::ic_resp(&resp, &mut r).unwrap();
    assert_eq!(r[0], 1);
    assert_eq!(&r[12..16], &65536u32.to_le_bytes());
    let mut host = Decoder::new(DecoderConfig::host());
    let evs: Vec<_> = host.feed(&r).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        evs,
        vec![Event::Header {
            pdu: Pdu::IcResp(resp),
            data_len: 0
        }]
    );
    let hs = Session::negotiated(Role::Host, &req, &resp);
    host.set_session(hs);

    // after IC, a host-encoded command with padding to CPDA decodes on the controller
    let henc = Encoder::new(hs);
    let mut cmd = Vec::new();
    henc.push_pdu(
        &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(7) }),
        &[&pattern(10, 0)[..]],
        &mut cmd,
    )
    .unwrap();
    assert_eq!(cmd[3], 80, "PDO = 72 + 4 rounded up to (CPDA+1)*4 = 8");
    let got = decode_chunks(&mut ctrl, &cmd, 3).unwrap();
    assert_eq!(
        got,
        vec![Owned::Pdu(
            Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(7) }),
            pattern(10, 0)
        )]
    );
}

#[test]
fn padding_layout_and_alignment_check() {
    let s = session(true, true, 3); // 16-byte alignment
    let enc = Encoder::new(s);
    let mut b = Vec::new();
    let data = pattern(64, 3);
    enc.push_pdu(
        &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
        &[data.as_slice()],
        &mut b,
    )
    .unwrap();
    assert_eq!(b[1], flags::HDGSTF | flags::DDGSTF);
    assert_eq!(b[3], 80);
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 80 + 64 + 4);
    assert_eq!(&b[76..80], &[0, 0, 0, 0]);
    assert_eq!(
        u32::from_le_bytes(b[72..76].try_into().unwrap()),
        crc32c::crc32c(&b[..72])
    );
    assert_eq!(&b[80..144], &data[..]);
    assert_eq!(
        u32::from_le_bytes(b[144..148].try_into().unwrap()),
        crc32c::crc32c(&data)
    );
    // a receiver expecting 128-byte alignment rejects PDO 80
    let err = decode_chunks(&mut controller_dec(session(true, true, 31)), &b, 1000).unwrap_err();
    assert_eq!(err.fes(), Some(Fes::InvalidHeaderField));
    assert_eq!(err.fei(), 3);
    // a receiver expecting 4-byte alignment accepts any multiple of 4
    assert!(decode_chunks(&mut controller_dec(session(true, true, 0)), &b, 1000).is_ok());
}

#[test]
fn header_digest_error_is_fatal_and_sticky() {
    let s = session(true, false, 0);
    let mut b = Vec::new();
    Encoder::new(s)
        .push_pdu(
            &Pdu::CapsuleResp(CapsuleResp { cqe: cqe(4) }),
            &[] as &[&[u8]],
            &mut b,
        )
        .unwrap();
    b[12] ^= 1; // inside the CQE
    let mut dec = host_dec(s);
    let e = decode_chunks(&mut dec, &b, 5).unwrap_err();
    assert!(matches!(e, ProtocolError::HeaderDigest { .. }));
    assert_eq!(e.fes(), Some(Fes::HeaderDigestError));
    assert_eq!(dec.error(), Some(e));
    assert_eq!(dec.next(&[]).unwrap_err(), e);
}

#[test]
fn data_digest_error_is_reported_and_stream_continues() {
    let s = session(false, true, 0);
    let enc = Encoder::new(s);
    let d1 = pattern(1000, 1);
    let mut b = Vec::new();
    enc.push_pdu(
        &Pdu::C2HData(C2HData {
            cccid: 1,
            datao: 0,
            datal: 1000,
            last: true,
            success: false,
        }),
        &[&d1[..500], &d1[500..]],
        &mut b,
    )
    .unwrap();
    let first_len = b.len();
    enc.push_pdu(
        &Pdu::CapsuleResp(CapsuleResp { cqe: cqe(1) }),
        &[] as &[&[u8]],
        &mut b,
    )
    .unwrap();
    b[30] ^= 0x80; // a data byte of the first PDU
    for chunk in [1, 7, b.len()] {
        let got = decode_chunks(&mut host_dec(s), &b, chunk).unwrap();
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Owned::DigestError(Pdu::C2HData(_), _)));
        assert_eq!(
            got[1],
            Owned::Pdu(Pdu::CapsuleResp(CapsuleResp { cqe: cqe(1) }), Vec::new())
        );
    }
    // digest over split buffers equals the digest over the whole
    assert_eq!(data_digest(&[&d1[..1], &d1[1..]]), crc32c::crc32c(&d1));
    assert_eq!(
        u32::from_le_bytes(b[first_len - 4..first_len].try_into().unwrap()),
        crc32c::crc32c(&d1)
    );
}

/// Encodes one PDU without digests, lets `patch` corrupt it, and returns the
/// decoder's error.
fn corrupt(role: Role, pdu: Pdu, data: &[u8], patch: impl FnOnce(&mut Vec<u8>)) -> ProtocolError {
    let s = session(false, false, 0);
    let mut b = Vec::new();
    Encoder::new(s).push_pdu(&pdu, &[data], &mut b).unwrap();
    patch(&mut b);
    let mut dec = match role {
        Role::Controller => controller_dec(s),
        Role::Host => host_dec(s),
    };
    decode_chunks(&mut dec, &b, 1).unwrap_err()
}

fn field(offset: u32) -> impl Fn(&ProtocolError) -> bool {
    move |e| e.fes() == Some(Fes::InvalidHeaderField) && e.fei() == offset
}

#[test]
fn invalid_header_fields_report_offsets() {
    let cmd = Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) });
    let h2c = Pdu::H2CData(H2CData {
        cccid: 1,
        ttag: 1,
        datao: 0,
        datal: 8,
        last: false,
    });
    let c2h = Pdu::C2HData(C2HData {
        cccid: 1,
        datao: 0,
        datal: 8,
        last: true,
        success: false,
    });
    let r2t = Pdu::R2T(R2T {
        cccid: 1,
        ttag: 1,
        r2to: 0,
        r2tl: 8,
    });
    let resp = Pdu::CapsuleResp(CapsuleResp { cqe: cqe(1) });
    let d = [0u8; 8];
    let cases: Vec<(&str, ProtocolError, u32)> = vec![
        (
            "unknown type",
            corrupt(Role::Controller, cmd, &d, |b| b[0] = 8),
            0,
        ),
        (
            "wrong direction",
            corrupt(Role::Controller, c2h, &d, |_| {}),
            0,
        ),
        (
            "wrong direction host",
            corrupt(Role::Host, cmd, &d, |_| {}),
            0,
        ),
        (
            "flag not valid",
            corrupt(Role::Controller, cmd, &d, |b| b[1] |= flags::LAST_PDU),
            1,
        ),
        (
            "HDGSTF not negotiated",
            corrupt(Role::Host, resp, &[], |b| b[1] |= flags::HDGSTF),
            1,
        ),
        (
            "DDGSTF not negotiated",
            corrupt(Role::Controller, h2c, &d, |b| b[1] |= flags::DDGSTF),
            1,
        ),
        (
            "SUCCESS without LAST",
            corrupt(Role::Host, c2h, &d, |b| b[1] = flags::SUCCESS),
            1,
        ),
        ("HLEN", corrupt(Role::Controller, cmd, &d, |b| b[2] = 70), 2),
        (
            "PDO misaligned",
            corrupt(Role::Controller, cmd, &d, |b| b[3] = 73),
            3,
        ),
        (
            "PDO beyond PLEN",
            corrupt(Role::Controller, h2c, &d, |b| b[3] = 200),
            3,
        ),
        (
            "PDO below header",
            corrupt(Role::Controller, h2c, &d, |b| b[3] = 20),
            3,
        ),
        (
            "PDO on CapsuleResp",
            corrupt(Role::Host, resp, &[], |b| b[3] = 24),
            3,
        ),
        (
            "PLEN on CapsuleResp",
            corrupt(Role::Host, resp, &[], |b| b[4] = 28),
            4,
        ),
        (
            "PLEN on R2T",
            corrupt(Role::Host, r2t, &[], |b| b[4] = 23),
            4,
        ),
        (
            "PLEN smaller than header",
            corrupt(Role::Controller, cmd, &d, |b| b[4] = 40),
            4,
        ),
        (
            "DATAL mismatch",
            corrupt(Role::Controller, h2c, &d, |b| b[16] = 9),
            16,
        ),
        (
            "DATAL mismatch c2h",
            corrupt(Role::Host, c2h, &d, |b| b[16] = 7),
            16,
        ),
        (
            "R2TL zero",
            corrupt(Role::Host, r2t, &[], |b| b[16] = 0),
            16,
        ),
        (
            "reserved h2c",
            corrupt(Role::Controller, h2c, &d, |b| b[21] = 1),
            21,
        ),
        (
            "reserved c2h",
            corrupt(Role::Host, c2h, &d, |b| b[10] = 1),
            10,
        ),
        (
            "reserved r2t",
            corrupt(Role::Host, r2t, &[], |b| b[23] = 1),
            23,
        ),
    ];
    for (name, e, off) in cases {
        assert!(field(off)(&e), "{name}: got {e:?}, want offset {off}");
    }
}

#[test]
fn sequence_limit_unsupported_and_termreq_errors() {
    // PDU before IC
    let mut b = Vec::new();
    Encoder::default()
        .push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
            &[] as &[&[u8]],
            &mut b,
        )
        .unwrap();
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &b, 4).unwrap_err();
    assert_eq!(e.fes(), Some(Fes::PduSequenceError));
    // a TermReq is allowed before IC
    let mut t = [0u8; 64];
    let n =
        Encoder::term_req(Role::Host, Fes::UnsupportedParameter, 8, &[1, 2, 3], &mut t).unwrap();
    assert_eq!(n, 27);
    let got = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &t[..n], 2).unwrap();
    assert_eq!(
        got,
        vec![Owned::Pdu(
            Pdu::H2CTermReq(TermReq { fes: 6, fei: 8 }),
            vec![1, 2, 3]
        )]
    );
    // TermReq error data is truncated to 128 bytes
    let mut t = [0u8; 300];
    let n = Encoder::term_req(
        Role::Controller,
        Fes::InvalidHeaderField,
        1,
        &[7u8; 200],
        &mut t,
    )
    .unwrap();
    assert_eq!(n, 152);
    assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 152);
    // malformed TermReq: close without TermReq
    let e = corrupt(
        Role::Controller,
        Pdu::H2CTermReq(TermReq { fes: 1, fei: 0 }),
        &[],
        |b| b[4] = 200,
    );
    assert_eq!(e, ProtocolError::MalformedTermReq { plen: 200 });
    assert_eq!(e.fes(), None);

    // data limits: in-capsule data and MAXH2CDATA
    let s = session(false, false, 0);
    let mut cfg = DecoderConfig::controller();
    cfg.max_incapsule_data = 100;
    cfg.max_h2c_data = 4096;
    let mut b = Vec::new();
    Encoder::new(s)
        .push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
            &[&[0u8; 101][..]],
            &mut b,
        )
        .unwrap();
    let e = decode_chunks(&mut Decoder::with_session(cfg, s), &b, 9).unwrap_err();
    assert_eq!(e, ProtocolError::DataLimitExceeded { len: 101, max: 100 });
    assert_eq!(e.fes(), Some(Fes::DataTransferLimitExceeded));
    let mut b = Vec::new();
    let big = vec![0u8; 4100];
    Encoder::new(s)
        .push_pdu(
            &Pdu::H2CData(H2CData {
                cccid: 1,
                ttag: 0,
                datao: 0,
                datal: 4100,
                last: true,
            }),
            &[big.as_slice()],
            &mut b,
        )
        .unwrap();
    let e = decode_chunks(&mut Decoder::with_session(cfg, s), &b, 9).unwrap_err();
    assert_eq!(e.fes(), Some(Fes::DataTransferLimitExceeded));

    // IC parameter errors
    let mut ic = [0u8; IC_LEN];
    Encoder::ic_req(&IcReq::default(), &mut ic).unwrap();
    let mut bad = ic;
    bad[8] = 1;
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &bad, 128).unwrap_err();
    assert_eq!((e.fes(), e.fei()), (Some(Fes::UnsupportedParameter), 8));
    let mut bad = ic;
    bad[10] = 32;
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &bad, 128).unwrap_err();
    assert_eq!((e.fes(), e.fei()), (Some(Fes::InvalidHeaderField), 10));
    let mut bad = ic;
    bad[11] = 4;
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &bad, 128).unwrap_err();
    assert_eq!(e.fei(), 11);
    let mut bad = ic;
    bad[100] = 1;
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &bad, 128).unwrap_err();
    assert_eq!(e.fei(), 100);
    let mut lenient = DecoderConfig::controller();
    lenient.check_reserved = false;
    assert!(decode_chunks(&mut Decoder::new(lenient), &bad, 128).is_ok());
    let mut r = [0u8; IC_LEN];
    Encoder::ic_resp(&IcResp::default(), &mut r).unwrap();
    r[12..16].copy_from_slice(&1000u32.to_le_bytes());
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::host()), &r, 128).unwrap_err();
    assert_eq!(e.fei(), 12);
    let mut bad = ic;
    bad[4] = 129;
    let e = decode_chunks(&mut Decoder::new(DecoderConfig::controller()), &bad, 128).unwrap_err();
    assert_eq!(e.fei(), 4);
}

#[test]
fn caller_side_errors_map_to_fes() {
    let e = ProtocolError::DataOutOfRange {
        offset: 4096,
        len: 512,
        what: "within the R2T",
    };
    assert_eq!(e.fes(), Some(Fes::DataTransferOutOfRange));
    let e = ProtocolError::R2tLimitExceeded {
        outstanding: 2,
        max: 1,
    };
    assert_eq!(e.fes(), Some(Fes::R2T_LIMIT_EXCEEDED));
    assert_eq!(e.fei(), 0);
}

#[test]
fn encoder_rejects_bad_requests() {
    let enc = Encoder::new(session(true, true, 0));
    let mut small = [0u8; 20];
    assert!(matches!(
        enc.capsule_resp(&cqe(1), &mut small),
        Err(EncodeError::BufferTooSmall { need: 28, have: 20 })
    ));
    let mut buf = [0u8; 256];
    let h = H2CData {
        cccid: 1,
        ttag: 1,
        datao: 0,
        datal: 0,
        last: true,
    };
    assert!(enc.h2c_data(&h, &mut buf).is_err());
    let c = C2HData {
        cccid: 1,
        datao: 0,
        datal: 10,
        last: false,
        success: true,
    };
    assert!(matches!(
        enc.c2h_data(&c, &mut buf),
        Err(EncodeError::InvalidField { .. })
    ));
    assert!(matches!(
        enc.encode_header(
            &Pdu::R2T(R2T {
                cccid: 1,
                ttag: 1,
                r2to: 0,
                r2tl: 1
            }),
            5,
            &mut buf
        ),
        Err(EncodeError::InvalidDataLen { .. })
    ));
    assert!(Encoder::ic_resp(
        &IcResp {
            maxh2cdata: 100,
            ..Default::default()
        },
        &mut buf
    )
    .is_err());
    assert!(Encoder::ic_req(
        &IcReq {
            hpda: 40,
            ..Default::default()
        },
        &mut buf
    )
    .is_err());
    let mut v = Vec::with_capacity(nvme_tcp::pdu::MAX_ENCODED_HEADER_LEN);
    let cap = v.capacity();
    let n = enc
        .push_header(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
            4096,
            &mut v,
        )
        .unwrap();
    assert_eq!(n, 76);
    assert_eq!(v.capacity(), cap, "no reallocation");
    let l = enc.layout(PduType::CapsuleCmd, 4096).unwrap();
    assert_eq!(
        (l.header_len, l.plen, l.data_digest),
        (76, 76 + 4096 + 4, true)
    );
}

#[test]
fn encode_into_slice_matches_vec_and_is_fully_initialized() {
    let enc = Encoder::new(session(true, false, 2));
    let c = C2HData {
        cccid: 9,
        datao: 512,
        datal: 100,
        last: true,
        success: true,
    };
    let mut a = [0xAAu8; 64];
    let n = enc.c2h_data(&c, &mut a).unwrap();
    let mut v = Vec::new();
    enc.push_header(&Pdu::C2HData(c), 100, &mut v).unwrap();
    assert_eq!(&a[..n], &v[..]);
    assert_eq!(n, 36, "24 + 4 rounded to 12-byte alignment");
    assert_eq!(a[1], flags::HDGSTF | flags::LAST_PDU | flags::SUCCESS);
    assert_eq!(&a[28..36], &[0; 8], "padding zeroed");
    let r = R2T {
        cccid: 3,
        ttag: 4,
        r2to: 8192,
        r2tl: 4096,
    };
    let n = enc.r2t(&r, &mut a).unwrap();
    assert_eq!(n, 28);
    assert_eq!(&a[..8], &[9, flags::HDGSTF, 24, 0, 28, 0, 0, 0]);
    assert_eq!(
        &a[8..24],
        &[3, 0, 4, 0, 0, 0x20, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn termreq_is_accepted_leniently() {
    // PDO pointing at the error data and non-zero reserved bytes are tolerated:
    // the peer is closing and its FES/FEI are what matters.
    let mut t = [0u8; 64];
    let n =
        Encoder::term_req(Role::Controller, Fes::HeaderDigestError, 0, &[9; 8], &mut t).unwrap();
    t[3] = 24;
    t[20] = 0xff;
    let got = decode_chunks(&mut host_dec(session(true, true, 0)), &t[..n], 3).unwrap();
    assert_eq!(
        got,
        vec![Owned::Pdu(
            Pdu::C2HTermReq(TermReq { fes: 3, fei: 0 }),
            vec![9; 8]
        )]
    );
    t[3] = 8;
    let e = decode_chunks(&mut host_dec(session(false, false, 0)), &t[..n], 64).unwrap_err();
    assert_eq!(e.fei(), 3);
}
