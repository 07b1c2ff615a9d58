//! Runs the fuzz target body over the checked-in corpus
//! (`fuzz/corpus/decode/`), so the target is exercised by `cargo test` even
//! where cargo-fuzz is unavailable. With `NVME_TCP_WRITE_CORPUS=1` the seed
//! corpus is (re)generated first.

mod common;

use std::path::PathBuf;

use common::*;
use nvme_tcp::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

/// Seed inputs: a configuration byte, a split byte, then valid PDU streams.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // IC exchanges (config bit 3 clear: decoder starts before IC)
    let mut ic = [0u8; 128];
    Encoder::ic_req(
        &IcReq {
            hpda: 0,
            hdgst: true,
            ddgst: true,
            maxr2t: 0,
            pfv: 0,
        },
        &mut ic,
    )
    .unwrap();
    out.push(("icreq".to_string(), [&[0x06u8, 0][..], &ic[..]].concat()));
    let mut r = [0u8; 128];
    Encoder::ic_resp(&IcResp::default(), &mut r).unwrap();
    out.push(("icresp".to_string(), [&[0x01u8, 7][..], &r[..]].concat()));
    for (hd, dd, pda) in [(false, false, 0u8), (true, true, 0), (true, false, 3)] {
        let s = session(hd, dd, pda);
        let cfg = 8 | (hd as u8) << 1 | (dd as u8) << 2 | pda << 4;
        let enc = Encoder::new(s);
        let mut h2c = vec![cfg, 0];
        for (p, d) in h2c_samples() {
            enc.push_pdu(&p, &[d.as_slice()], &mut h2c).unwrap();
        }
        out.push((format!("h2c_h{}_d{}_p{pda}", hd as u8, dd as u8), h2c));
        let mut c2h = vec![cfg | 1, 13];
        for (p, d) in c2h_samples() {
            enc.push_pdu(&p, &[d.as_slice()], &mut c2h).unwrap();
        }
        out.push((format!("c2h_h{}_d{}_p{pda}", hd as u8, dd as u8), c2h));
    }
    out
}

#[test]
fn fuzz_corpus_regression() {
    let dir = corpus_dir();
    if std::env::var_os("NVME_TCP_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        nvme_tcp::fuzzing::decode_stream(&bytes);
        n += 1;
    }
    assert!(n >= seeds().len(), "corpus has {n} files");
}

#[test]
fn seeds_decode_without_error() {
    // every seed is a valid stream: decoding it yields no protocol error
    for (name, bytes) in seeds() {
        let cfg_byte = bytes[0];
        let role = if cfg_byte & 1 == 0 {
            Role::Controller
        } else {
            Role::Host
        };
        let s = session(cfg_byte & 2 != 0, cfg_byte & 4 != 0, cfg_byte >> 4);
        let cfg = match role {
            Role::Controller => DecoderConfig::controller(),
            Role::Host => DecoderConfig::host(),
        };
        let mut dec = if cfg_byte & 8 != 0 {
            Decoder::with_session(cfg, s)
        } else {
            Decoder::new(cfg)
        };
        let got = decode_chunks(&mut dec, &bytes[2..], 5);
        assert!(got.is_ok(), "{name}: {got:?}");
    }
}
