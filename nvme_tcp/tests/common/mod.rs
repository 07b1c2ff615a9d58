//! Helpers shared by the integration tests.
#![allow(dead_code)]

use nvme_spec::{Cqe, Sqe, Status};
use nvme_tcp::*;

/// An event with owned data, to compare decodes of differently split input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Pdu(Pdu, Vec<u8>),
    DigestError(Pdu, Vec<u8>),
}

/// Decodes `bytes` fed in pieces of `chunk` bytes; returns the complete PDUs
/// (header and reassembled data) or the first error.
pub fn decode_chunks(
    dec: &mut Decoder,
    bytes: &[u8],
    chunk: usize,
) -> Result<Vec<Owned>, ProtocolError> {
    let mut out = Vec::new();
    let mut cur: Option<(Pdu, u32, Vec<u8>)> = None;
    for piece in bytes.chunks(chunk.max(1)) {
        for ev in dec.feed(piece) {
            match ev? {
                Event::Header { pdu, data_len } => {
                    assert!(cur.is_none(), "header while data pending");
                    if data_len == 0 {
                        out.push(Owned::Pdu(pdu, Vec::new()));
                    } else {
                        cur = Some((pdu, data_len, Vec::new()));
                    }
                }
                Event::Data { offset, data } => {
                    let c = cur.as_mut().expect("data without header");
                    assert_eq!(offset as usize, c.2.len());
                    c.2.extend_from_slice(data);
                }
                Event::DataEnd => {
                    let (p, len, d) = cur.take().expect("end without header");
                    assert_eq!(len as usize, d.len());
                    out.push(Owned::Pdu(p, d));
                }
                Event::DataDigestError { .. } => {
                    let (p, _, d) = cur.take().expect("end without header");
                    out.push(Owned::DigestError(p, d));
                }
            }
        }
    }
    assert!(cur.is_none(), "stream ended inside a PDU");
    Ok(out)
}

pub fn session(hd: bool, dd: bool, pda: u8) -> Session {
    Session {
        header_digest: hd,
        data_digest: dd,
        rx_pda: pda,
        tx_pda: pda,
    }
}

pub fn controller_dec(s: Session) -> Decoder {
    Decoder::with_session(DecoderConfig::controller(), s)
}

pub fn host_dec(s: Session) -> Decoder {
    Decoder::with_session(DecoderConfig::host(), s)
}

pub fn write_sqe(cid: u16) -> Sqe {
    let mut s = Sqe::new(0x01, cid, 1);
    s.set_cdw10(0x1000);
    s.set_cdw12(7);
    s.set_sgl1(nvme_spec::SglDescriptor::in_capsule(0, 4096));
    s
}

pub fn cqe(cid: u16) -> Cqe {
    let mut c = Cqe::new(cid, Status::SUCCESS);
    c.set_sqhd(3);
    c.set_sqid(1);
    c
}

pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A sample of every host-to-controller PDU (after IC) with its data.
pub fn h2c_samples() -> Vec<(Pdu, Vec<u8>)> {
    vec![
        (
            Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(1) }),
            pattern(4096, 1),
        ),
        (
            Pdu::CapsuleCmd(CapsuleCmd { sqe: write_sqe(2) }),
            Vec::new(),
        ),
        (
            Pdu::H2CData(H2CData {
                cccid: 3,
                ttag: 7,
                datao: 8192,
                datal: 3000,
                last: true,
            }),
            pattern(3000, 2),
        ),
        (
            Pdu::H2CData(H2CData {
                cccid: 4,
                ttag: 8,
                datao: 0,
                datal: 1,
                last: false,
            }),
            pattern(1, 3),
        ),
        (Pdu::H2CTermReq(TermReq { fes: 1, fei: 2 }), pattern(24, 4)),
    ]
}

/// A sample of every controller-to-host PDU (after IC) with its data.
pub fn c2h_samples() -> Vec<(Pdu, Vec<u8>)> {
    vec![
        (Pdu::CapsuleResp(CapsuleResp { cqe: cqe(1) }), Vec::new()),
        (
            Pdu::C2HData(C2HData {
                cccid: 2,
                datao: 0,
                datal: 4096,
                last: true,
                success: true,
            }),
            pattern(4096, 5),
        ),
        (
            Pdu::C2HData(C2HData {
                cccid: 2,
                datao: 4096,
                datal: 513,
                last: false,
                success: false,
            }),
            pattern(513, 6),
        ),
        (
            Pdu::R2T(R2T {
                cccid: 9,
                ttag: 1,
                r2to: 0,
                r2tl: 65536,
            }),
            Vec::new(),
        ),
        (Pdu::C2HTermReq(TermReq { fes: 3, fei: 0 }), Vec::new()),
    ]
}
