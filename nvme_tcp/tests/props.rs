//! Property tests: decode(encode(x)) == x under any split of the byte
//! stream, and the decoder never panics on arbitrary bytes.

mod common;

use common::*;
use nvme_spec::{Cqe, Sqe};
use nvme_tcp::*;
use proptest::collection::vec;
use proptest::prelude::*;

fn sqe() -> impl Strategy<Value = Sqe> {
    vec(any::<u8>(), 64).prop_map(|v| Sqe::from_slice(&v).unwrap())
}

fn cqe() -> impl Strategy<Value = Cqe> {
    vec(any::<u8>(), 16).prop_map(|v| Cqe::from_slice(&v).unwrap())
}

fn data(min: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), min..600)
}

fn h2c_pdu() -> impl Strategy<Value = (Pdu, Vec<u8>)> {
    prop_oneof![
        (sqe(), data(0)).prop_map(|(sqe, d)| (Pdu::CapsuleCmd(CapsuleCmd { sqe }), d)),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            data(1)
        )
            .prop_map(|(cccid, ttag, datao, last, d)| {
                (
                    Pdu::H2CData(H2CData {
                        cccid,
                        ttag,
                        datao,
                        datal: d.len() as u32,
                        last,
                    }),
                    d,
                )
            }),
        (any::<u16>(), any::<u32>(), vec(any::<u8>(), 0..=128))
            .prop_map(|(fes, fei, d)| (Pdu::H2CTermReq(TermReq { fes, fei }), d)),
    ]
}

fn c2h_pdu() -> impl Strategy<Value = (Pdu, Vec<u8>)> {
    prop_oneof![
        cqe().prop_map(|cqe| (Pdu::CapsuleResp(CapsuleResp { cqe }), Vec::new())),
        (
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            data(1)
        )
            .prop_map(|(cccid, datao, last, s, d)| {
                let pdu = C2HData {
                    cccid,
                    datao,
                    datal: d.len() as u32,
                    last,
                    success: s && last,
                };
                (Pdu::C2HData(pdu), d)
            }),
        (any::<u16>(), any::<u16>(), any::<u32>(), 1..u32::MAX).prop_map(
            |(cccid, ttag, r2to, r2tl)| (
                Pdu::R2T(R2T {
                    cccid,
                    ttag,
                    r2to,
                    r2tl
                }),
                Vec::new()
            )
        ),
        (any::<u16>(), any::<u32>(), vec(any::<u8>(), 0..=128))
            .prop_map(|(fes, fei, d)| (Pdu::C2HTermReq(TermReq { fes, fei }), d)),
    ]
}

fn session_strategy() -> impl Strategy<Value = Session> {
    (any::<bool>(), any::<bool>(), 0u8..=31).prop_map(|(h, d, p)| session(h, d, p))
}

fn check_roundtrip(
    role: Role,
    s: Session,
    pdus: &[(Pdu, Vec<u8>)],
    chunk: usize,
) -> Result<(), TestCaseError> {
    let enc = Encoder::new(s);
    let mut bytes = Vec::new();
    for (p, d) in pdus {
        enc.push_pdu(p, &[d.as_slice()], &mut bytes).unwrap();
    }
    let mut cfg = match role {
        Role::Controller => DecoderConfig::controller(),
        Role::Host => DecoderConfig::host(),
    };
    cfg.max_incapsule_data = 1 << 20;
    let got = decode_chunks(&mut Decoder::with_session(cfg, s), &bytes, chunk)
        .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
    let want: Vec<_> = pdus
        .iter()
        .map(|(p, d)| Owned::Pdu(*p, d.clone()))
        .collect();
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn h2c_roundtrip(s in session_strategy(), pdus in vec(h2c_pdu(), 1..6), chunk in 1usize..300) {
        check_roundtrip(Role::Controller, s, &pdus, chunk)?;
    }

    #[test]
    fn c2h_roundtrip(s in session_strategy(), pdus in vec(c2h_pdu(), 1..6), chunk in 1usize..300) {
        check_roundtrip(Role::Host, s, &pdus, chunk)?;
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..2048)) {
        nvme_tcp::fuzzing::decode_stream(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_mutated_valid_stream(
        s in session_strategy(),
        pdus in vec(h2c_pdu(), 1..4),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        split in any::<u8>(),
    ) {
        let enc = Encoder::new(s);
        // controller role, IC done, same digests and PDA as the encoder
        let cfg = 8 | (s.header_digest as u8) << 1 | (s.data_digest as u8) << 2 | s.rx_pda << 4;
        let mut bytes = vec![cfg, split];
        for (p, d) in &pdus {
            enc.push_pdu(p, &[d.as_slice()], &mut bytes).unwrap();
        }
        for (i, x) in flips {
            let i = 2 + i.index(bytes.len() - 2);
            bytes[i] ^= x;
        }
        nvme_tcp::fuzzing::decode_stream(&bytes);
    }
}
