//! Interpretation of a walked chain as a virtio-blk request (VIRTIO 1.2, 5.2.6 "Device
//! Operation").
//!
//! The layout is not assumed (VIRTIO 2.7.4.4, "Message Framing"): the 16-byte header is the
//! first 16 device-readable bytes wherever the descriptor boundaries fall, the status is the
//! last device-writable byte, and the data is what lies between. Every check that decides the
//! request's fate without the device is made here: direction, alignment, range, read-only,
//! limits. The result either completes at once or is a block-device operation ready to submit.

use smallvec::SmallVec;

use vmpath_bdev::IoType;

use crate::blk::{
    DwzSegment, ReqHeader, DWZ_FLAG_UNMAP, DWZ_SEGMENT_LEN, REQ_HEADER_LEN, SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use crate::chain::{Chain, Seg, SoftFault};
use crate::memory::GuestRam;

/// Segment list of a request's data.
pub type SegList = SmallVec<[Seg; 8]>;

/// What the device looks like to requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Logical block size of the backing device (512 or 4096).
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    /// Writes, discards and write-zeroes fail with IOERR.
    pub readonly: bool,
    /// Largest data transfer of one request, in bytes.
    pub max_io_bytes: u64,
    /// Largest discard / write-zeroes, in 512-byte sectors.
    pub max_dwz_sectors: u32,
    /// The backing device supports unmap (discard).
    pub discard: bool,
    /// The backing device supports write-zeroes.
    pub write_zeroes: bool,
}

/// Why a request completes without reaching the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain itself is faulty (buffer outside memory, order, too many buffers).
    #[error("bad descriptor chain: {0}")]
    Chain(#[from] SoftFault),
    /// Fewer than 16 device-readable bytes.
    #[error("request header is {0} bytes, needs 16")]
    ShortHeader(u64),
    /// Unknown request type.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// Data in the wrong direction: a read with device-readable data buffers (a write into a
    /// read-only buffer), a write with device-writable data buffers, extra payload.
    #[error("request type {req_type} has {readable} readable / {writable} writable bytes")]
    WrongDirection {
        /// Request type.
        req_type: u32,
        /// Device-readable bytes.
        readable: u64,
        /// Device-writable bytes.
        writable: u64,
    },
    /// Offset or length not a multiple of the logical block size, or zero length.
    #[error("sector {sector} / {len} bytes is not aligned to the {block_size}-byte block size")]
    Misaligned {
        /// First sector.
        sector: u64,
        /// Data length.
        len: u64,
        /// Block size.
        block_size: u32,
    },
    /// The range goes past the end of the disk.
    #[error("sectors {sector}+{sectors} are beyond the capacity")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Sector count.
        sectors: u64,
    },
    /// A modifying request on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// A transfer larger than the device takes in one request.
    #[error("{0} bytes exceed the largest request")]
    TooLarge(u64),
    /// Discard / write-zeroes payload is not exactly one segment.
    #[error("discard/write-zeroes payload of {0} bytes (one 16-byte segment supported)")]
    BadSegments(u64),
    /// Reserved flag bits set (or `unmap` on a discard).
    #[error("discard/write-zeroes flags {0:#x} are not supported")]
    BadFlags(u32),
}

impl RequestError {
    /// The virtio-blk status reported for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            RequestError::BadSegments(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A request ready for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// GET_ID: write the identifier into these device-writable buffers.
    GetId {
        /// Where the identifier goes (at most 20 bytes are written).
        data: SegList,
    },
    /// A block-device operation.
    Io {
        /// Operation.
        op: IoType,
        /// First logical block.
        offset_blocks: u64,
        /// Logical blocks (0 for flush).
        num_blocks: u32,
        /// Data buffers (read/write only).
        data: SegList,
        /// Bytes the device writes into the chain on success (data read + status byte).
        used_len: u32,
    },
}

/// The bytes `skip..skip+take` of the segments with direction `write`, as segments.
fn slice_segs(segs: &[Seg], write: bool, mut skip: u64, mut take: u64, out: &mut SegList) {
    for s in segs.iter().filter(|s| s.write == write) {
        if take == 0 {
            break;
        }
        let len = s.len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        out.push(Seg {
            gpa: s.gpa + skip,
            len: n as u32,
            write,
        });
        take -= n;
        skip = 0;
    }
}

/// Reads the first `buf.len()` device-readable bytes after `skip`.
fn read_readable(mem: &GuestRam, segs: &[Seg], skip: u64, buf: &mut [u8]) -> Result<(), SoftFault> {
    let mut parts = SegList::new();
    slice_segs(segs, false, skip, buf.len() as u64, &mut parts);
    let mut at = 0usize;
    for p in &parts {
        let n = p.len as usize;
        if !mem.read(p.gpa, &mut buf[at..at + n]) {
            // A piece spanning two regions: byte by byte.
            for (i, b) in buf[at..at + n].iter_mut().enumerate() {
                let mut one = [0u8; 1];
                if !mem.read(p.gpa + i as u64, &mut one) {
                    return Err(SoftFault::BufferOutOfMemory {
                        gpa: p.gpa,
                        len: p.len,
                    });
                }
                *b = one[0];
            }
        }
        at += n;
    }
    if at != buf.len() {
        // The caller checked the readable length; memory changed under us.
        return Err(SoftFault::BufferOutOfMemory { gpa: 0, len: 0 });
    }
    Ok(())
}

/// Checks a sector range against the geometry; returns (first block, blocks).
fn block_range(g: &Geometry, sector: u64, sectors: u64) -> Result<(u64, u64), RequestError> {
    let bs = g.block_size as u64;
    let spb = bs / SECTOR_SIZE;
    let byte_len = sectors.saturating_mul(SECTOR_SIZE);
    if sectors == 0 || !sector.is_multiple_of(spb) || !sectors.is_multiple_of(spb) {
        return Err(RequestError::Misaligned {
            sector,
            len: byte_len,
            block_size: g.block_size,
        });
    }
    let first = sector / spb;
    let blocks = sectors / spb;
    match first.checked_add(blocks) {
        Some(end) if end <= g.num_blocks => Ok((first, blocks)),
        _ => Err(RequestError::OutOfRange { sector, sectors }),
    }
}

/// Interprets `chain` (already walked) as a virtio-blk request.
pub fn parse(mem: &GuestRam, chain: &Chain, g: &Geometry) -> Result<Parsed, RequestError> {
    if let Some(f) = chain.fault {
        return Err(RequestError::Chain(f));
    }
    if chain.readable_len < REQ_HEADER_LEN as u64 {
        return Err(RequestError::ShortHeader(chain.readable_len));
    }
    let mut hb = [0u8; REQ_HEADER_LEN];
    read_readable(mem, &chain.segs, 0, &mut hb)?;
    let hdr = ReqHeader::parse(&hb).map_err(|_| RequestError::ShortHeader(chain.readable_len))?;
    let payload_in = chain.readable_len - REQ_HEADER_LEN as u64;
    // writable_len >= 1: the walker guarantees a status byte.
    let data_out = chain.writable_len - 1;
    let wrong = || RequestError::WrongDirection {
        req_type: hdr.req_type,
        readable: chain.readable_len,
        writable: chain.writable_len,
    };
    match hdr.req_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let is_read = hdr.req_type == VIRTIO_BLK_T_IN;
            let (len, bad_other) = if is_read {
                (data_out, payload_in != 0)
            } else {
                (payload_in, data_out != 0)
            };
            if bad_other {
                return Err(wrong());
            }
            if !is_read && g.readonly {
                return Err(RequestError::ReadOnly);
            }
            if len > g.max_io_bytes {
                return Err(RequestError::TooLarge(len));
            }
            if !len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Misaligned {
                    sector: hdr.sector,
                    len,
                    block_size: g.block_size,
                });
            }
            let (first, blocks) = block_range(g, hdr.sector, len / SECTOR_SIZE)?;
            let blocks = u32::try_from(blocks).map_err(|_| RequestError::TooLarge(len))?;
            let mut data = SegList::new();
            if is_read {
                slice_segs(&chain.segs, true, 0, len, &mut data);
            } else {
                slice_segs(&chain.segs, false, REQ_HEADER_LEN as u64, len, &mut data);
            }
            let used_len = if is_read { len as u32 + 1 } else { 1 };
            Ok(Parsed::Io {
                op: if is_read { IoType::Read } else { IoType::Write },
                offset_blocks: first,
                num_blocks: blocks,
                data,
                used_len,
            })
        }
        VIRTIO_BLK_T_FLUSH => {
            if payload_in != 0 || data_out != 0 {
                return Err(wrong());
            }
            Ok(Parsed::Io {
                op: IoType::Flush,
                offset_blocks: 0,
                num_blocks: 0,
                data: SegList::new(),
                used_len: 1,
            })
        }
        VIRTIO_BLK_T_GET_ID => {
            if payload_in != 0 || data_out == 0 {
                return Err(wrong());
            }
            let mut data = SegList::new();
            slice_segs(&chain.segs, true, 0, data_out, &mut data);
            Ok(Parsed::GetId { data })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = hdr.req_type == VIRTIO_BLK_T_DISCARD;
            if (discard && !g.discard) || (!discard && !g.write_zeroes) {
                return Err(RequestError::Unsupported(hdr.req_type));
            }
            if data_out != 0 {
                return Err(wrong());
            }
            if payload_in != DWZ_SEGMENT_LEN as u64 {
                return Err(RequestError::BadSegments(payload_in));
            }
            if g.readonly {
                return Err(RequestError::ReadOnly);
            }
            let mut sb = [0u8; DWZ_SEGMENT_LEN];
            read_readable(mem, &chain.segs, REQ_HEADER_LEN as u64, &mut sb)?;
            let seg = DwzSegment::parse(&sb);
            let allowed = if discard { 0 } else { DWZ_FLAG_UNMAP };
            if seg.flags & !allowed != 0 {
                return Err(RequestError::BadFlags(seg.flags));
            }
            if seg.num_sectors > g.max_dwz_sectors {
                return Err(RequestError::TooLarge(seg.num_sectors as u64 * SECTOR_SIZE));
            }
            let (first, blocks) = block_range(g, seg.sector, seg.num_sectors as u64)?;
            Ok(Parsed::Io {
                op: if discard {
                    IoType::Unmap
                } else {
                    IoType::WriteZeroes
                },
                offset_blocks: first,
                num_blocks: blocks as u32,
                data: SegList::new(),
                used_len: 1,
            })
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::VIRTIO_BLK_S_OK;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn ram(m: &GuestMemoryMmap) -> GuestRam {
        GuestRam::new(Arc::new(m.clone()))
    }

    fn geo() -> Geometry {
        Geometry {
            block_size: 4096,
            num_blocks: 16,
            readonly: false,
            max_io_bytes: 1 << 20,
            max_dwz_sectors: 1 << 16,
            discard: true,
            write_zeroes: true,
        }
    }

    fn setup(req_type: u32, sector: u64) -> GuestMemoryMmap {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        m.write_slice(
            &ReqHeader { req_type, sector }.encode(),
            GuestAddress(0x100),
        )
        .unwrap();
        m
    }

    fn chain(segs: &[(u64, u32, bool)]) -> Chain {
        let mut c = Chain::default();
        for &(gpa, len, write) in segs {
            c.segs.push(Seg { gpa, len, write });
            if write {
                c.writable_len += len as u64;
            } else {
                c.readable_len += len as u64;
            }
        }
        c.status_gpa = segs.last().map(|s| s.0 + s.1 as u64 - 1).unwrap();
        c
    }

    #[test]
    fn read_with_header_split_across_descriptors() {
        let m = setup(VIRTIO_BLK_T_IN, 8);
        let c = chain(&[
            (0x100, 4, false),
            (0x104, 12, false),
            (0x2000, 8192, true),
            (0x9000, 1, true),
        ]);
        match parse(&ram(&m), &c, &geo()).unwrap() {
            Parsed::Io {
                op,
                offset_blocks,
                num_blocks,
                data,
                used_len,
            } => {
                assert_eq!(op, IoType::Read);
                assert_eq!((offset_blocks, num_blocks), (1, 2));
                assert_eq!(data.len(), 1);
                assert_eq!(data[0].len, 8192);
                assert_eq!(used_len, 8193);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn write_with_header_and_data_in_one_buffer_and_status_in_data() {
        let m = setup(VIRTIO_BLK_T_OUT, 0);
        // Header + 4096 bytes of data in one readable buffer, status alone.
        let c = chain(&[(0x100, 16 + 4096, false), (0x9000, 1, true)]);
        match parse(&ram(&m), &c, &geo()).unwrap() {
            Parsed::Io { op, data, .. } => {
                assert_eq!(op, IoType::Write);
                assert_eq!(data[0].gpa, 0x110);
                assert_eq!(data[0].len, 4096);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A read whose status shares the data buffer.
        let m = setup(VIRTIO_BLK_T_IN, 0);
        let c = chain(&[(0x100, 16, false), (0x2000, 4097, true)]);
        match parse(&ram(&m), &c, &geo()).unwrap() {
            Parsed::Io { data, .. } => assert_eq!(data[0].len, 4096),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_direction_misalignment_range_and_readonly_fail() {
        let m = setup(VIRTIO_BLK_T_IN, 0);
        // Read into a device-readable buffer.
        let c = chain(&[(0x100, 16, false), (0x2000, 4096, false), (0x9000, 1, true)]);
        let e = parse(&ram(&m), &c, &geo()).unwrap_err();
        assert!(matches!(e, RequestError::WrongDirection { .. }));
        assert_eq!(e.status(), crate::blk::VIRTIO_BLK_S_IOERR);
        let m = setup(VIRTIO_BLK_T_IN, 1);
        let c = chain(&[(0x100, 16, false), (0x2000, 4096, true), (0x9000, 1, true)]);
        assert!(matches!(
            parse(&ram(&m), &c, &geo()),
            Err(RequestError::Misaligned { .. })
        ));
        let m = setup(VIRTIO_BLK_T_IN, 15 * 8);
        let c = chain(&[(0x100, 16, false), (0x2000, 8192, true), (0x9000, 1, true)]);
        assert!(matches!(
            parse(&ram(&m), &c, &geo()),
            Err(RequestError::OutOfRange { .. })
        ));
        let m = setup(VIRTIO_BLK_T_OUT, 0);
        let c = chain(&[(0x100, 16, false), (0x2000, 4096, false), (0x9000, 1, true)]);
        let ro = Geometry {
            readonly: true,
            ..geo()
        };
        assert_eq!(parse(&ram(&m), &c, &ro), Err(RequestError::ReadOnly));
    }

    #[test]
    fn discard_write_zeroes_get_id_flush_and_unknown() {
        let m = setup(VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let seg = DwzSegment {
            sector: 8,
            num_sectors: 16,
            flags: DWZ_FLAG_UNMAP,
        };
        m.write_slice(&seg.encode(), GuestAddress(0x110)).unwrap();
        let c = chain(&[(0x100, 32, false), (0x9000, 1, true)]);
        match parse(&ram(&m), &c, &geo()).unwrap() {
            Parsed::Io {
                op,
                offset_blocks,
                num_blocks,
                ..
            } => {
                assert_eq!(op, IoType::WriteZeroes);
                assert_eq!((offset_blocks, num_blocks), (1, 2));
            }
            other => panic!("unexpected {other:?}"),
        }
        // unmap flag on a discard is unsupported.
        m.write_slice(
            &ReqHeader {
                req_type: VIRTIO_BLK_T_DISCARD,
                sector: 0,
            }
            .encode(),
            GuestAddress(0x100),
        )
        .unwrap();
        let e = parse(&ram(&m), &c, &geo()).unwrap_err();
        assert_eq!(e, RequestError::BadFlags(DWZ_FLAG_UNMAP));
        assert_eq!(e.status(), VIRTIO_BLK_S_UNSUPP);

        let m = setup(VIRTIO_BLK_T_GET_ID, 0);
        let c = chain(&[(0x100, 16, false), (0x2000, 20, true), (0x9000, 1, true)]);
        assert!(matches!(
            parse(&ram(&m), &c, &geo()).unwrap(),
            Parsed::GetId { .. }
        ));
        let m = setup(VIRTIO_BLK_T_FLUSH, 0);
        let c = chain(&[(0x100, 16, false), (0x9000, 1, true)]);
        assert!(matches!(
            parse(&ram(&m), &c, &geo()).unwrap(),
            Parsed::Io {
                op: IoType::Flush,
                ..
            }
        ));
        let m = setup(99, 0);
        let e = parse(&ram(&m), &c, &geo()).unwrap_err();
        assert_eq!(e, RequestError::Unsupported(99));
        assert_ne!(e.status(), VIRTIO_BLK_S_OK);
    }
}
