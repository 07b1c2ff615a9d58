//! Fuzzing entry point shared by the cargo-fuzz target and the corpus
//! regression test. Not a stable API.
//!
//! Input layout: byte 0 selects the decoder configuration (bit 0 role,
//! bit 1 header digest, bit 2 data digest, bit 3 skip IC exchange, bits 4-7
//! receive PDA); byte 1 the read size used to split the stream (0 = all at
//! once); the rest is the byte stream.

use crate::decode::{Decoder, DecoderConfig, Event};
use crate::pdu::{Role, Session};

/// Decodes `input` as described in the module docs and checks the decoder's
/// invariants: consumption never exceeds the input, data events of a PDU are
/// contiguous and add up to the header's data length, and after an error
/// the decoder keeps returning it.
pub fn decode_stream(input: &[u8]) {
    let (cfg_byte, split, stream) = match input {
        [a, b, rest @ ..] => (*a, *b as usize, rest),
        _ => return,
    };
    let role = if cfg_byte & 1 == 0 {
        Role::Controller
    } else {
        Role::Host
    };
    let mut cfg = match role {
        Role::Controller => DecoderConfig::controller(),
        Role::Host => DecoderConfig::host(),
    };
    cfg.max_c2h_data = 1 << 20;
    let session = Session {
        header_digest: cfg_byte & 2 != 0,
        data_digest: cfg_byte & 4 != 0,
        rx_pda: cfg_byte >> 4,
        tx_pda: 0,
    };
    let mut dec = if cfg_byte & 8 != 0 {
        Decoder::with_session(cfg, session)
    } else {
        Decoder::new(cfg)
    };
    let chunk = if split == 0 {
        stream.len().max(1)
    } else {
        split
    };
    let mut expected: Option<(u32, u32)> = None; // (data_len, next offset)
    for piece in stream.chunks(chunk) {
        let mut buf = piece;
        loop {
            let step = match dec.next(buf) {
                Ok(s) => s,
                Err(e) => {
                    assert_eq!(dec.next(b"x"), Err(e), "failed decoder must stay failed");
                    return;
                }
            };
            assert!(step.consumed <= buf.len(), "consumed more than the input");
            buf = &buf[step.consumed..];
            match step.event {
                None => {
                    assert!(buf.is_empty(), "no event but input left");
                    break;
                }
                Some(Event::Header { data_len, pdu }) => {
                    assert!(expected.is_none(), "header inside a PDU's data");
                    if !dec.ic_done() {
                        unreachable_unless_term(&pdu);
                    }
                    if matches!(pdu, crate::Pdu::IcReq(_) | crate::Pdu::IcResp(_)) {
                        dec.set_session(session);
                    }
                    if data_len > 0 {
                        expected = Some((data_len, 0));
                    }
                }
                Some(Event::Data { offset, data }) => {
                    let (len, next) = expected.expect("data outside a PDU");
                    assert_eq!(offset, next, "data not contiguous");
                    assert!(!data.is_empty(), "empty data event");
                    let end = next + data.len() as u32;
                    assert!(end <= len, "more data than announced");
                    expected = Some((len, end));
                }
                Some(Event::DataEnd) | Some(Event::DataDigestError { .. }) => {
                    let (len, next) = expected.take().expect("data end outside a PDU");
                    assert_eq!(len, next, "data end before all data");
                }
            }
        }
    }
}

fn unreachable_unless_term(pdu: &crate::Pdu) {
    assert!(
        matches!(pdu, crate::Pdu::H2CTermReq(_) | crate::Pdu::C2HTermReq(_)),
        "only TermReq may precede the IC exchange"
    );
}
