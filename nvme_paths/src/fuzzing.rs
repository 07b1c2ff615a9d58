//! Fuzzing entry point shared by the cargo-fuzz target and the corpus regression test. Not a
//! stable API.
//!
//! [`host_rx`] plays an arbitrary controller against a host queue pair: byte 0 selects the
//! digests the host asks for (bits 0-1), byte 1 the read size used to split the stream (0 =
//! all at once); the rest is what the "controller" sends, starting with its ICResp. Before
//! the stream, the host has a read (into caller memory), an in-capsule write, an R2T write and
//! a flush outstanding. The queue pair must never panic, never write outside a command's
//! buffer, and stay failed after an error.

use nvme_spec::Sqe;
use vmpath_bdev::{DmaBuf, SgList};

use crate::qpair::{Cmd, DataBuf, Dir, Phase, QpairCore, QpairParams};

/// Feeds `input` to a host queue pair (see the module docs).
pub fn host_rx(input: &[u8]) {
    let (cfg, split, stream) = match input {
        [a, b, rest @ ..] => (*a, *b as usize, rest),
        _ => return,
    };
    let mut q = QpairCore::new(QpairParams {
        depth: 8,
        max_icd: 4096,
        hdgst: cfg & 1 != 0,
        ddgst: cfg & 2 != 0,
    });
    let n = q.tx_pending().len();
    q.tx_advance(n);
    let mut read_buf = DmaBuf::with_align(8192 + 64, 64);
    let guard = 64;
    let chunk = if split == 0 {
        stream.len().max(1)
    } else {
        split
    };
    let mut submitted = false;
    let mut failed = None;
    for piece in stream.chunks(chunk) {
        let r = q.on_rx(piece, &mut |_| {});
        if let Err(e) = r {
            failed = Some(e);
            break;
        }
        if !submitted && q.phase() == Phase::Ready {
            submitted = true;
            let mut sg = SgList::new();
            // SAFETY: read_buf outlives the queue pair's use of it (both live in this
            // function, and the qpair is dropped or failed before read_buf).
            sg.push(unsafe { read_buf.iovec(0..8192) });
            let cmds = [
                (2u8, Dir::C2H, DataBuf::Sg(sg)),
                (1, Dir::H2C, DataBuf::Owned(vec![7; 512])),
                (1, Dir::H2C, DataBuf::Owned(vec![8; 20_000])),
                (0, Dir::None, DataBuf::None),
            ];
            for (i, (op, dir, data)) in cmds.into_iter().enumerate() {
                let _ = q.submit(
                    Cmd {
                        sqe: Sqe::new(op, 0, 1),
                        dir,
                        data,
                        tag: i as u64,
                    },
                    0,
                );
            }
            let n = q.tx_pending().len();
            q.tx_advance(n);
        }
    }
    if let Some(e) = failed {
        // A failed queue pair keeps failing.
        assert!(
            q.on_rx(b"\x05", &mut |_| {}).is_err(),
            "failed qpair accepted input after {e}"
        );
    }
    let mut lost = 0;
    q.fail_all(&mut |_| lost += 1);
    assert_eq!(q.outstanding(), 0);
    assert!(
        read_buf.as_slice()[8192..8192 + guard]
            .iter()
            .all(|&b| b == 0),
        "write past the buffer"
    );
}
