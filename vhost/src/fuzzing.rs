//! The body of the descriptor-chain fuzz target (`fuzz/fuzz_targets/chain.rs`), also run over
//! the committed corpus by `cargo test` (`tests/fuzz_corpus.rs`).
//!
//! Input layout: byte 0 selects the queue size (`1 << (b % 10)`), bytes 1..3 the head index
//! (little endian), byte 3 the options (bit 0: indirect descriptors negotiated, bit 1: 4096-byte
//! blocks, bit 2: read-only disk, bits 3..: `seg_max - 1`), the rest is the guest memory image
//! from address 0 (the descriptor table lives at 0). Guest memory is two adjacent 32 KiB
//! regions, so buffers may span regions.

use std::cell::RefCell;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::chain::{self, Chain, ChainLimits};
use crate::memory::{translate, GuestRam};
use crate::request::{self, Geometry, Parsed};

/// Size of the fuzzed guest memory.
pub const MEM_SIZE: usize = 64 * 1024;

thread_local! {
    static MEM: RefCell<Option<GuestMemoryMmap>> = const { RefCell::new(None) };
}

/// Runs the walker and the request parser on `data` and checks their invariants; panics on a
/// violation (that is what the fuzzer looks for).
pub fn chain_and_request(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let size = 1u16 << (data[0] % 10);
    let head = u16::from_le_bytes([data[1], data[2]]);
    let opt = data[3];
    let image = &data[4..data.len().min(4 + MEM_SIZE)];
    MEM.with(|m| {
        let mut m = m.borrow_mut();
        let mem = m.get_or_insert_with(|| {
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), MEM_SIZE / 2),
                (GuestAddress(MEM_SIZE as u64 / 2), MEM_SIZE / 2),
            ])
            .expect("anonymous guest memory")
        });
        mem.write_slice(image, GuestAddress(0)).expect("image fits");
        let zeroes = vec![0u8; MEM_SIZE - image.len()];
        mem.write_slice(&zeroes, GuestAddress(image.len() as u64))
            .expect("rest fits");
        run(
            &GuestRam::new(std::sync::Arc::new(mem.clone())),
            size,
            head,
            opt,
        );
    });
}

fn run(mem: &GuestRam, size: u16, head: u16, opt: u8) {
    let seg_max = (opt >> 3) as usize + 1;
    let limits = ChainLimits {
        max_descs: size as u32,
        indirect: opt & 1 != 0,
        max_segs: seg_max + 2,
    };
    let mut c = Chain::default();
    if chain::walk(mem, 0, size, head, &limits, &mut c).is_err() {
        return;
    }
    // Invariants of a followed chain.
    assert!(c.descs >= 1 && c.descs <= size as u32);
    assert!(c.segs.len() <= limits.max_segs);
    assert!(c.writable_len >= 1);
    assert!(chain::in_memory(mem, c.status_gpa, 1));
    for s in &c.segs {
        assert!(s.len > 0);
        assert!(chain::in_memory(mem, s.gpa, s.len as u64));
    }
    if c.fault.is_none() {
        let r: u64 = c
            .segs
            .iter()
            .filter(|s| !s.write)
            .map(|s| s.len as u64)
            .sum();
        let w: u64 = c
            .segs
            .iter()
            .filter(|s| s.write)
            .map(|s| s.len as u64)
            .sum();
        assert_eq!((r, w), (c.readable_len, c.writable_len));
        let first_write = c.segs.iter().position(|s| s.write).unwrap_or(c.segs.len());
        assert!(c.segs[first_write..].iter().all(|s| s.write));
    }
    let block_size = if opt & 2 != 0 { 4096 } else { 512 };
    let g = Geometry {
        block_size,
        num_blocks: (1 << 20) / block_size as u64,
        readonly: opt & 4 != 0,
        max_io_bytes: 1 << 20,
        max_dwz_sectors: 1 << 16,
        discard: true,
        write_zeroes: true,
    };
    let Ok(parsed) = request::parse(mem, &c, &g) else {
        return;
    };
    if let Parsed::Io {
        op,
        offset_blocks,
        num_blocks,
        data,
        used_len,
    } = parsed
    {
        assert!(offset_blocks + num_blocks as u64 <= g.num_blocks);
        assert!(!g.readonly || !matches!(op, vmpath_bdev::IoType::Write));
        let len: u64 = data.iter().map(|s| s.len as u64).sum();
        if op.has_data() {
            assert_eq!(len, num_blocks as u64 * block_size as u64);
            assert!(used_len >= 1);
        } else {
            assert!(data.is_empty());
        }
        let mut sg = vmpath_bdev::SgList::new();
        translate(mem, &data, &mut sg).expect("walked buffers translate");
        assert_eq!(sg.iter().map(|v| v.len() as u64).sum::<u64>(), len);
        for v in &sg {
            let inside = mem.mmap().iter().any(|r| {
                let base = r.as_ptr() as usize;
                let p = v.base() as usize;
                p >= base && p + v.len() <= base + r.len() as usize
            });
            assert!(inside, "iovec outside the guest mappings");
        }
    }
}
