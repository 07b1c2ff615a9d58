//! Micro-benchmark of the NVMe/TCP codec hot path and CRC32C throughput.
//! Run: `cargo run --release -p nvme-tcp --example codec_bench`
//! (not a test; numbers depend on the machine and its load).

use std::hint::black_box;
use std::time::Instant;

use nvme_spec::{Cqe, SglDescriptor, Sqe, Status};
use nvme_tcp::*;

fn per_op(name: &str, iters: u64, mut f: impl FnMut()) {
    // CODEC_BENCH_ONLY=<substring> runs only the matching measurements
    if let Ok(only) = std::env::var("CODEC_BENCH_ONLY") {
        if !name.contains(&only) {
            return;
        }
    }
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<48} {ns:>8.1} ns/op  {:>8.2} M ops/s", 1e3 / ns);
}

fn crc_throughput(len: usize) {
    let buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let iters = (512 << 20) / len as u64;
    let t = Instant::now();
    let mut acc = 0u32;
    for _ in 0..iters {
        acc ^= crc32c::crc32c(black_box(&buf));
    }
    black_box(acc);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "crc32c {:>7} B buffers                          {:>8.2} GB/s",
        len,
        (iters as f64 * len as f64) / secs / 1e9
    );
}

fn main() {
    // CODEC_BENCH_ITERS scales the run (e.g. small under valgrind/callgrind)
    let n: u64 = std::env::var("CODEC_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    for hd in [false, true] {
        let s = Session {
            header_digest: hd,
            data_digest: hd,
            rx_pda: 0,
            tx_pda: 0,
        };
        let enc = Encoder::new(s);
        let mut sqe = Sqe::new(0x02, 1, 1);
        sqe.set_sgl1(SglDescriptor::transport(4096));
        let cqe = Cqe::new(1, Status::SUCCESS);
        let mut buf = [0u8; 256];
        let tag = if hd { "digests on " } else { "digests off" };

        per_op(&format!("encode CapsuleResp ({tag})"), n, || {
            black_box(enc.capsule_resp(black_box(&cqe), &mut buf).unwrap());
        });
        per_op(&format!("encode CapsuleCmd ({tag})"), n, || {
            black_box(enc.capsule_cmd(black_box(&sqe), 0, &mut buf).unwrap());
        });
        let c2h = C2HData {
            cccid: 1,
            datao: 0,
            datal: 4096,
            last: true,
            success: true,
        };
        per_op(&format!("encode C2HData header ({tag})"), n, || {
            black_box(enc.c2h_data(black_box(&c2h), &mut buf).unwrap());
        });

        let mut cmd = Vec::new();
        enc.push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe }),
            &[] as &[&[u8]],
            &mut cmd,
        )
        .unwrap();
        let mut dec = Decoder::with_session(DecoderConfig::controller(), s);
        per_op(&format!("decode CapsuleCmd ({tag})"), n, || {
            let st = dec.next(black_box(&cmd)).unwrap();
            black_box(st.event);
        });
        let mut resp = Vec::new();
        enc.push_pdu(
            &Pdu::CapsuleResp(CapsuleResp { cqe }),
            &[] as &[&[u8]],
            &mut resp,
        )
        .unwrap();
        let mut hdec = Decoder::with_session(DecoderConfig::host(), s);
        per_op(&format!("decode CapsuleResp ({tag})"), n, || {
            let st = hdec.next(black_box(&resp)).unwrap();
            black_box(st.event);
        });

        // 4 KiB in-capsule write: header + data (+ digest), all events
        let data = vec![0x5au8; 4096];
        let mut w = Vec::new();
        enc.push_pdu(
            &Pdu::CapsuleCmd(CapsuleCmd { sqe }),
            &[data.as_slice()],
            &mut w,
        )
        .unwrap();
        per_op(
            &format!("decode CapsuleCmd + 4 KiB data ({tag})"),
            n / 10,
            || {
                for ev in dec.feed(black_box(&w)) {
                    black_box(ev.unwrap());
                }
            },
        );
    }
    if std::env::var_os("CODEC_BENCH_ONLY").is_none() {
        for len in [64, 4096, 131072] {
            crc_throughput(len);
        }
    }
}
