//! The descriptor-chain walker (VIRTIO 1.2, 2.7.5 "The Virtqueue Descriptor Table" and 2.7.5.3
//! "Indirect Descriptors").
//!
//! The guest owns the descriptor table and may put anything in it. This walker reads each
//! descriptor exactly once (a private copy: no time-of-check/time-of-use), checks every buffer
//! against the guest memory regions, follows at most one level of indirection and bounds the
//! walk, so a chain can never make the backend loop, allocate without bound or touch memory
//! outside the guest's regions.
//!
//! Problems come in two classes:
//! * [`ChainError`] (hard): the chain cannot be followed or has no place for the status byte
//!   (loops, `next` out of range, nested or malformed indirect tables, unreadable table, no
//!   device-writable last descriptor). The queue is marked as needing a reset.
//! * [`SoftFault`] (soft): the chain is well formed and ends with a writable status byte, but
//!   a buffer is outside guest memory, buffers are in the wrong order, or there are too many of
//!   them. The request completes with `VIRTIO_BLK_S_IOERR`.

use smallvec::SmallVec;

use crate::memory::GuestRam;

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// Size of one split-ring descriptor.
pub const DESC_SIZE: u64 = 16;

/// One guest buffer of a chain (a whole descriptor or part of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes (never 0).
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// Limits of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// Most descriptors a chain may have in total (the queue size: VIRTIO 2.7.5.2 forbids
    /// longer chains).
    pub max_descs: u32,
    /// Whether `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
    /// Most non-empty buffers kept; more is a [`SoftFault::TooManySegments`]. Bounds memory.
    pub max_segs: usize,
}

/// A chain that can be followed and has a status byte.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// Head descriptor index.
    pub head: u16,
    /// The non-empty buffers, device-readable ones first (unless `fault` says otherwise).
    pub segs: SmallVec<[Seg; 8]>,
    /// Total device-readable bytes.
    pub readable_len: u64,
    /// Total device-writable bytes (includes the status byte).
    pub writable_len: u64,
    /// Address of the status byte: the last byte of the last descriptor.
    pub status_gpa: u64,
    /// Number of descriptors walked (not counting an indirect pointer).
    pub descs: u32,
    /// First problem that fails the request without breaking the queue.
    pub fault: Option<SoftFault>,
}

/// A problem that fails only this request (`VIRTIO_BLK_S_IOERR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SoftFault {
    /// A buffer lies (partly) outside every guest memory region.
    #[error("buffer {gpa:#x}+{len} is outside guest memory")]
    BufferOutOfMemory {
        /// Buffer address.
        gpa: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one (VIRTIO 2.7.4.2).
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// More buffers than the device accepts.
    #[error("more than {max} buffers in one request")]
    TooManySegments {
        /// The limit.
        max: usize,
    },
}

/// A chain that cannot be followed or completed: the queue needs a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index from the available ring is not below the queue size.
    #[error("head descriptor {head} is out of range (queue size {size})")]
    HeadOutOfRange {
        /// Head index.
        head: u16,
        /// Queue size.
        size: u16,
    },
    /// A descriptor could not be read from guest memory.
    #[error("descriptor at {gpa:#x} is outside guest memory")]
    DescOutOfMemory {
        /// Descriptor address.
        gpa: u64,
    },
    /// A `next` index is not below the table size.
    #[error("next index {next} is out of range (table size {size})")]
    NextOutOfRange {
        /// The index.
        next: u16,
        /// Table size.
        size: u32,
    },
    /// The chain is longer than allowed: a loop, or more descriptors than the queue size.
    #[error("chain longer than {max} descriptors (loop or oversized chain)")]
    TooLong {
        /// The limit.
        max: u32,
    },
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect descriptor")]
    NestedIndirect,
    /// An indirect descriptor although `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// An indirect descriptor with `NEXT` set (VIRTIO 2.7.5.3.1).
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect table whose length is zero or not a multiple of 16.
    #[error("indirect table length {len} is not a positive multiple of 16")]
    IndirectBadLength {
        /// Length.
        len: u32,
    },
    /// An indirect table with more entries than the chain may have.
    #[error("indirect table of {entries} entries exceeds the limit of {max}")]
    IndirectTooLarge {
        /// Entries.
        entries: u32,
        /// Limit.
        max: u32,
    },
    /// An indirect table outside guest memory.
    #[error("indirect table {gpa:#x}+{len} is outside guest memory")]
    IndirectOutOfMemory {
        /// Table address.
        gpa: u64,
        /// Table length.
        len: u32,
    },
    /// The last descriptor is not device-writable or empty: there is no status byte.
    #[error("last descriptor is not a device-writable buffer (no status byte)")]
    NoStatus,
    /// The status byte is outside guest memory.
    #[error("status byte at {gpa:#x} is outside guest memory")]
    StatusOutOfMemory {
        /// Address.
        gpa: u64,
    },
}

/// One descriptor as read from the table.
#[derive(Debug, Clone, Copy)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestRam, gpa: u64) -> Result<RawDesc, ChainError> {
    let b = mem.read16(gpa).ok_or(ChainError::DescOutOfMemory { gpa })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    Ok(RawDesc {
        addr: u64::from_le_bytes(a),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

/// Whether `gpa..gpa+len` lies inside guest memory (possibly across adjacent regions).
#[inline]
pub fn in_memory(mem: &GuestRam, gpa: u64, len: u64) -> bool {
    mem.contains(gpa, len)
}

/// Walks the chain starting at `head` in the descriptor table at `table_gpa` of a queue of
/// `queue_size` entries, and reuses `out` (cleared first) to avoid allocation.
pub fn walk(
    mem: &GuestRam,
    table_gpa: u64,
    queue_size: u16,
    head: u16,
    limits: &ChainLimits,
    out: &mut Chain,
) -> Result<(), ChainError> {
    out.segs.clear();
    out.head = head;
    out.readable_len = 0;
    out.writable_len = 0;
    out.status_gpa = 0;
    out.descs = 0;
    out.fault = None;
    if head >= queue_size {
        return Err(ChainError::HeadOutOfRange {
            head,
            size: queue_size,
        });
    }
    let mut table = table_gpa;
    let mut table_size = queue_size as u32;
    let mut idx = head;
    // Steps left in the current table: a chain visiting more entries than the table has
    // must revisit one, i.e. loop.
    let mut ttl = table_size;
    let mut indirect = false;
    let mut seen_writable = false;
    let last = loop {
        if ttl == 0 {
            return Err(ChainError::TooLong {
                max: table_size.min(limits.max_descs),
            });
        }
        ttl -= 1;
        let gpa = table
            .checked_add(idx as u64 * DESC_SIZE)
            .ok_or(ChainError::DescOutOfMemory { gpa: u64::MAX })?;
        let d = read_desc(mem, gpa)?;
        if d.flags & VRING_DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if !limits.indirect {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if d.flags & VRING_DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            if d.len == 0 || !(d.len as u64).is_multiple_of(DESC_SIZE) {
                return Err(ChainError::IndirectBadLength { len: d.len });
            }
            let entries = d.len / DESC_SIZE as u32;
            if entries > limits.max_descs {
                return Err(ChainError::IndirectTooLarge {
                    entries,
                    max: limits.max_descs,
                });
            }
            if !in_memory(mem, d.addr, d.len as u64) {
                return Err(ChainError::IndirectOutOfMemory {
                    gpa: d.addr,
                    len: d.len,
                });
            }
            indirect = true;
            table = d.addr;
            table_size = entries;
            ttl = entries;
            idx = 0;
            continue;
        }
        out.descs += 1;
        if out.descs > limits.max_descs {
            return Err(ChainError::TooLong {
                max: limits.max_descs,
            });
        }
        let write = d.flags & VRING_DESC_F_WRITE != 0;
        if write {
            seen_writable = true;
            out.writable_len += d.len as u64;
        } else {
            if seen_writable && out.fault.is_none() {
                out.fault = Some(SoftFault::ReadableAfterWritable);
            }
            out.readable_len += d.len as u64;
        }
        if d.len > 0 {
            if !in_memory(mem, d.addr, d.len as u64) {
                if out.fault.is_none() {
                    out.fault = Some(SoftFault::BufferOutOfMemory {
                        gpa: d.addr,
                        len: d.len,
                    });
                }
            } else if out.segs.len() < limits.max_segs {
                out.segs.push(Seg {
                    gpa: d.addr,
                    len: d.len,
                    write,
                });
            } else if out.fault.is_none() {
                out.fault = Some(SoftFault::TooManySegments {
                    max: limits.max_segs,
                });
            }
        }
        if d.flags & VRING_DESC_F_NEXT == 0 {
            break d;
        }
        if d.next as u32 >= table_size {
            return Err(ChainError::NextOutOfRange {
                next: d.next,
                size: table_size,
            });
        }
        idx = d.next;
    };
    if last.flags & VRING_DESC_F_WRITE == 0 || last.len == 0 {
        return Err(ChainError::NoStatus);
    }
    let status_gpa = last
        .addr
        .checked_add(last.len as u64 - 1)
        .ok_or(ChainError::StatusOutOfMemory { gpa: last.addr })?;
    if !in_memory(mem, status_gpa, 1) {
        return Err(ChainError::StatusOutOfMemory { gpa: status_gpa });
    }
    out.status_gpa = status_gpa;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const TABLE: u64 = 0x1000;
    const SIZE: u16 = 16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&b, GuestAddress(table + idx as u64 * 16))
            .unwrap();
    }

    fn limits() -> ChainLimits {
        ChainLimits {
            max_descs: SIZE as u32,
            indirect: true,
            max_segs: 8,
        }
    }

    fn run(m: &GuestMemoryMmap, head: u16) -> Result<Chain, ChainError> {
        let mut c = Chain::default();
        let ram = GuestRam::new(Arc::new(m.clone()));
        walk(&ram, TABLE, SIZE, head, &limits(), &mut c).map(|_| c)
    }

    #[test]
    fn three_descriptor_request_is_split_into_segments() {
        let m = mem();
        put(&m, TABLE, 0, 0x4000, 16, VRING_DESC_F_NEXT, 5);
        put(
            &m,
            TABLE,
            5,
            0x5000,
            4096,
            VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
            2,
        );
        put(&m, TABLE, 2, 0x6000, 1, VRING_DESC_F_WRITE, 0);
        let c = run(&m, 0).unwrap();
        assert_eq!(c.segs.len(), 3);
        assert_eq!(c.readable_len, 16);
        assert_eq!(c.writable_len, 4097);
        assert_eq!(c.status_gpa, 0x6000);
        assert_eq!(c.fault, None);
    }

    #[test]
    fn loops_and_bad_next_are_hard_errors() {
        let m = mem();
        put(&m, TABLE, 0, 0x4000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x5000, 16, VRING_DESC_F_NEXT, 0);
        assert!(matches!(run(&m, 0), Err(ChainError::TooLong { .. })));
        put(&m, TABLE, 1, 0x5000, 16, VRING_DESC_F_NEXT, SIZE);
        assert!(matches!(
            run(&m, 0),
            Err(ChainError::NextOutOfRange { next: 16, .. })
        ));
        assert!(matches!(
            run(&m, SIZE),
            Err(ChainError::HeadOutOfRange { .. })
        ));
    }

    #[test]
    fn buffer_outside_memory_is_a_soft_fault_when_status_is_fine() {
        let m = mem();
        put(&m, TABLE, 0, 0x4000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0xff_0000, 512, VRING_DESC_F_NEXT, 2);
        put(&m, TABLE, 2, 0x6000, 1, VRING_DESC_F_WRITE, 0);
        let c = run(&m, 0).unwrap();
        assert!(matches!(c.fault, Some(SoftFault::BufferOutOfMemory { .. })));
        // Straddling the end of memory is outside too.
        put(&m, TABLE, 1, 0xff00, 0x200, VRING_DESC_F_NEXT, 2);
        assert!(matches!(
            run(&m, 0).unwrap().fault,
            Some(SoftFault::BufferOutOfMemory { .. })
        ));
        // Address overflow.
        put(&m, TABLE, 1, u64::MAX - 4, 0x200, VRING_DESC_F_NEXT, 2);
        assert!(matches!(
            run(&m, 0).unwrap().fault,
            Some(SoftFault::BufferOutOfMemory { .. })
        ));
    }

    #[test]
    fn status_must_be_writable_and_in_memory() {
        let m = mem();
        put(&m, TABLE, 0, 0x4000, 16, VRING_DESC_F_NEXT, 1);
        put(&m, TABLE, 1, 0x6000, 1, 0, 0);
        assert_eq!(run(&m, 0), Err(ChainError::NoStatus));
        put(&m, TABLE, 1, 0x10_0000, 1, VRING_DESC_F_WRITE, 0);
        assert!(matches!(
            run(&m, 0),
            Err(ChainError::StatusOutOfMemory { .. })
        ));
    }

    #[test]
    fn indirect_tables_are_followed_once_and_checked() {
        let m = mem();
        let ind = 0x8000;
        put(&m, ind, 0, 0x4000, 16, VRING_DESC_F_NEXT, 1);
        put(
            &m,
            ind,
            1,
            0x5000,
            512,
            VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
            2,
        );
        put(&m, ind, 2, 0x6000, 1, VRING_DESC_F_WRITE, 0);
        put(&m, TABLE, 3, ind, 48, VRING_DESC_F_INDIRECT, 0);
        let c = run(&m, 3).unwrap();
        assert_eq!(c.descs, 3);
        assert_eq!(c.writable_len, 513);
        // Nested indirect.
        put(&m, ind, 2, 0x9000, 16, VRING_DESC_F_INDIRECT, 0);
        assert_eq!(run(&m, 3), Err(ChainError::NestedIndirect));
        // Bad length, next flag, too large, outside memory, not negotiated.
        put(&m, TABLE, 3, ind, 20, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            run(&m, 3),
            Err(ChainError::IndirectBadLength { len: 20 })
        ));
        put(
            &m,
            TABLE,
            3,
            ind,
            48,
            VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT,
            0,
        );
        assert_eq!(run(&m, 3), Err(ChainError::IndirectWithNext));
        put(&m, TABLE, 3, ind, 16 * 17, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            run(&m, 3),
            Err(ChainError::IndirectTooLarge { .. })
        ));
        put(&m, TABLE, 3, 0xfff0, 48, VRING_DESC_F_INDIRECT, 0);
        assert!(matches!(
            run(&m, 3),
            Err(ChainError::IndirectOutOfMemory { .. })
        ));
        put(&m, TABLE, 3, ind, 48, VRING_DESC_F_INDIRECT, 0);
        let mut c = Chain::default();
        let no_ind = ChainLimits {
            indirect: false,
            ..limits()
        };
        let ram = GuestRam::new(Arc::new(m.clone()));
        assert_eq!(
            walk(&ram, TABLE, SIZE, 3, &no_ind, &mut c),
            Err(ChainError::IndirectNotNegotiated)
        );
    }

    #[test]
    fn order_and_segment_count_faults() {
        let m = mem();
        put(
            &m,
            TABLE,
            0,
            0x4000,
            16,
            VRING_DESC_F_NEXT | VRING_DESC_F_WRITE,
            1,
        );
        put(&m, TABLE, 1, 0x5000, 16, VRING_DESC_F_NEXT, 2);
        put(&m, TABLE, 2, 0x6000, 1, VRING_DESC_F_WRITE, 0);
        assert_eq!(
            run(&m, 0).unwrap().fault,
            Some(SoftFault::ReadableAfterWritable)
        );
        for i in 0..12u16 {
            put(
                &m,
                TABLE,
                i,
                0x4000 + i as u64 * 16,
                16,
                VRING_DESC_F_NEXT,
                i + 1,
            );
        }
        put(&m, TABLE, 12, 0x6000, 1, VRING_DESC_F_WRITE, 0);
        assert_eq!(
            run(&m, 0).unwrap().fault,
            Some(SoftFault::TooManySegments { max: 8 })
        );
    }
}
