//! virtio-blk definitions (VIRTIO 1.2, section 5.2 "Block Device"): feature bits, the
//! configuration space layout, request types and status codes, and the parsing of the request
//! header and of discard / write-zeroes segments.
//!
//! Everything here is plain data and byte parsing; nothing touches guest memory.

/// Maximum size of any single segment is in `size_max` (5.2.3).
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Maximum number of segments in a request is in `seg_max`.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Disk-style geometry specified in `geometry`.
pub const VIRTIO_BLK_F_GEOMETRY: u32 = 4;
/// Device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Block size of disk is in `blk_size`.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Cache flush command support.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Device exports information on optimal I/O alignment.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Device can toggle its cache between writeback and writethrough modes.
pub const VIRTIO_BLK_F_CONFIG_WCE: u32 = 11;
/// Device supports multiqueue.
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Device can support discard command.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Device can support write zeroes command.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Generic feature: indirect descriptors (VIRTIO 1.2, 6; `VIRTIO_F_INDIRECT_DESC`).
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Generic feature: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Generic feature: compliance with VIRTIO 1.0 or later.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// vhost-user: the back-end supports protocol feature negotiation (bit 30 of the virtio
/// feature word in `GET_FEATURES`).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = 30;

/// Read (device writes the data buffers).
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write (device reads the data buffers).
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush the volatile write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Return the device ID string (20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Discard ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Write zeroes to ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request completed successfully.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Request failed (device or request error).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Request type not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Sector unit of the request header and of the `capacity` field, always 512 bytes.
pub const SECTOR_SIZE: u64 = 512;
/// Size of `struct virtio_blk_outhdr`.
pub const REQ_HEADER_LEN: usize = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Size of one `struct virtio_blk_discard_write_zeroes` segment.
pub const DWZ_SEGMENT_LEN: usize = 16;
/// `unmap` flag of a write-zeroes segment: the device may deallocate the range.
pub const DWZ_FLAG_UNMAP: u32 = 1;

/// Size of the configuration space this device serves (`struct virtio_blk_config` up to and
/// including the zoned characteristics). Reads beyond it return zeroes up to
/// [`CONFIG_SPACE_MAX`].
pub const CONFIG_SPACE_LEN: usize = 96;
/// Largest configuration read accepted (fields this device does not know read as zero).
pub const CONFIG_SPACE_MAX: usize = 256;
/// Offset of the `writeback` byte, the only field a driver may write (CONFIG_WCE).
pub const CONFIG_WRITEBACK_OFFSET: usize = 32;

/// Bit mask of a feature bit.
#[inline]
pub const fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlkError {
    /// Fewer than 16 readable bytes for the request header.
    #[error("request header needs {REQ_HEADER_LEN} bytes, the chain has {0} readable bytes")]
    ShortHeader(usize),
    /// A discard / write-zeroes payload is not a whole number of 16-byte segments.
    #[error("discard/write-zeroes payload of {0} bytes is not a multiple of {DWZ_SEGMENT_LEN}")]
    BadSegmentPayload(usize),
    /// A configuration-space access outside the served range.
    #[error("config access of {size} bytes at offset {offset} is out of range")]
    ConfigRange {
        /// Offset.
        offset: u32,
        /// Size.
        size: u32,
    },
    /// A write to a configuration field that is read-only.
    #[error("config field at offset {offset} (size {size}) is read-only")]
    ConfigReadOnly {
        /// Offset.
        offset: u32,
        /// Size.
        size: u32,
    },
}

/// The request header (`struct virtio_blk_outhdr`): type, reserved, sector, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqHeader {
    /// `VIRTIO_BLK_T_*`.
    pub req_type: u32,
    /// First 512-byte sector (IN / OUT).
    pub sector: u64,
}

impl ReqHeader {
    /// Parses the 16 header bytes.
    pub fn parse(bytes: &[u8]) -> Result<ReqHeader, BlkError> {
        if bytes.len() < REQ_HEADER_LEN {
            return Err(BlkError::ShortHeader(bytes.len()));
        }
        let req_type = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&bytes[8..16]);
        Ok(ReqHeader {
            req_type,
            sector: u64::from_le_bytes(s),
        })
    }

    /// Encodes the header (used by the test frontend).
    pub fn encode(&self) -> [u8; REQ_HEADER_LEN] {
        let mut b = [0u8; REQ_HEADER_LEN];
        b[0..4].copy_from_slice(&self.req_type.to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// One `struct virtio_blk_discard_write_zeroes` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwzSegment {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub num_sectors: u32,
    /// Flags (`unmap` is bit 0; the rest are reserved).
    pub flags: u32,
}

impl DwzSegment {
    /// Parses one 16-byte segment.
    pub fn parse(b: &[u8; DWZ_SEGMENT_LEN]) -> DwzSegment {
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[0..8]);
        DwzSegment {
            sector: u64::from_le_bytes(s),
            num_sectors: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the segment (used by the test frontend).
    pub fn encode(&self) -> [u8; DWZ_SEGMENT_LEN] {
        let mut b = [0u8; DWZ_SEGMENT_LEN];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }
}

/// The values the device reports in its configuration space (5.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkConfigSpace {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment in bytes.
    pub size_max: u32,
    /// Most segments in one request.
    pub seg_max: u32,
    /// Logical block size in bytes.
    pub blk_size: u32,
    /// log2(physical block / logical block).
    pub physical_block_exp: u8,
    /// Offset of the first aligned logical block.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size in blocks.
    pub min_io_size: u16,
    /// Optimal I/O size in blocks.
    pub opt_io_size: u32,
    /// 1 = write-back cache (flushes needed), 0 = write-through.
    pub writeback: u8,
    /// Number of request queues.
    pub num_queues: u16,
    /// Largest discard in sectors.
    pub max_discard_sectors: u32,
    /// Most discard segments per request.
    pub max_discard_seg: u32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Largest write-zeroes in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Most write-zeroes segments per request.
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes may deallocate.
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfigSpace {
    /// The configuration space bytes (little endian, [`CONFIG_SPACE_LEN`] long).
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut b = [0u8; CONFIG_SPACE_LEN];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20: geometry (not offered).
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        b[25] = self.alignment_offset;
        b[26..28].copy_from_slice(&self.min_io_size.to_le_bytes());
        b[28..32].copy_from_slice(&self.opt_io_size.to_le_bytes());
        b[32] = self.writeback;
        // 33: unused.
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        // 57..96: secure erase and zoned fields (features not offered): zero.
        b
    }

    /// Parses configuration space bytes (at least [`CONFIG_SPACE_LEN`]; shorter input is
    /// zero-extended). Used by the test frontend.
    pub fn from_bytes(bytes: &[u8]) -> BlkConfigSpace {
        let mut b = [0u8; CONFIG_SPACE_LEN];
        let n = bytes.len().min(CONFIG_SPACE_LEN);
        b[..n].copy_from_slice(&bytes[..n]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[0..8]);
        BlkConfigSpace {
            capacity: u64::from_le_bytes(cap),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            physical_block_exp: b[24],
            alignment_offset: b[25],
            min_io_size: u16::from_le_bytes([b[26], b[27]]),
            opt_io_size: u32_at(28),
            writeback: b[32],
            num_queues: u16::from_le_bytes([b[34], b[35]]),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56],
        }
    }

    /// Bytes `offset..offset+size` of the configuration space; bytes past
    /// [`CONFIG_SPACE_LEN`] read as zero up to [`CONFIG_SPACE_MAX`].
    pub fn read(&self, offset: u32, size: u32) -> Result<Vec<u8>, BlkError> {
        let end = offset as u64 + size as u64;
        if size == 0 || end > CONFIG_SPACE_MAX as u64 {
            return Err(BlkError::ConfigRange { offset, size });
        }
        let all = self.to_bytes();
        let mut out = vec![0u8; size as usize];
        for (i, o) in out.iter_mut().enumerate() {
            if let Some(v) = all.get(offset as usize + i) {
                *o = *v;
            }
        }
        Ok(out)
    }
}

/// Checks a configuration write: only the one-byte `writeback` field is writable. Returns the
/// new writeback value.
pub fn parse_config_write(offset: u32, data: &[u8]) -> Result<bool, BlkError> {
    let size = data.len() as u32;
    if offset as usize == CONFIG_WRITEBACK_OFFSET && data.len() == 1 {
        return Ok(data[0] != 0);
    }
    if offset as u64 + size as u64 > CONFIG_SPACE_MAX as u64 {
        return Err(BlkError::ConfigRange { offset, size });
    }
    Err(BlkError::ConfigReadOnly { offset, size })
}

/// Fills the GET_ID answer: the serial, NUL-padded, truncated to 20 bytes.
pub fn id_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut b = [0u8; ID_BYTES];
    let s = serial.as_bytes();
    let n = s.len().min(ID_BYTES);
    b[..n].copy_from_slice(&s[..n]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BlkConfigSpace {
        BlkConfigSpace {
            capacity: 2048,
            size_max: 1 << 20,
            seg_max: 126,
            blk_size: 4096,
            physical_block_exp: 0,
            alignment_offset: 0,
            min_io_size: 1,
            opt_io_size: 32,
            writeback: 1,
            num_queues: 4,
            max_discard_sectors: 1 << 20,
            max_discard_seg: 1,
            discard_sector_alignment: 8,
            max_write_zeroes_sectors: 1 << 20,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
        }
    }

    #[test]
    fn config_round_trips_and_fields_sit_at_spec_offsets() {
        let c = sample();
        let b = c.to_bytes();
        assert_eq!(BlkConfigSpace::from_bytes(&b), c);
        assert_eq!(&b[0..8], &2048u64.to_le_bytes());
        assert_eq!(&b[20..24], &4096u32.to_le_bytes());
        assert_eq!(b[32], 1);
        assert_eq!(&b[34..36], &4u16.to_le_bytes());
        assert_eq!(&b[52..56], &1u32.to_le_bytes());
    }

    #[test]
    fn config_reads_are_range_checked_and_zero_extended() {
        let c = sample();
        assert_eq!(c.read(34, 2).unwrap(), vec![4, 0]);
        assert_eq!(c.read(200, 8).unwrap(), vec![0; 8]);
        assert!(c.read(250, 8).is_err());
        assert!(c.read(0, 0).is_err());
    }

    #[test]
    fn only_writeback_is_writable() {
        assert_eq!(parse_config_write(32, &[0]), Ok(false));
        assert_eq!(parse_config_write(32, &[1]), Ok(true));
        assert!(matches!(
            parse_config_write(0, &[1; 8]),
            Err(BlkError::ConfigReadOnly { .. })
        ));
        assert!(matches!(
            parse_config_write(32, &[1, 1]),
            Err(BlkError::ConfigReadOnly { .. })
        ));
        assert!(matches!(
            parse_config_write(255, &[1, 1]),
            Err(BlkError::ConfigRange { .. })
        ));
    }

    #[test]
    fn header_and_segments_parse_little_endian() {
        let h = ReqHeader {
            req_type: VIRTIO_BLK_T_OUT,
            sector: 0x1122_3344_5566,
        };
        assert_eq!(ReqHeader::parse(&h.encode()).unwrap(), h);
        assert_eq!(ReqHeader::parse(&[0; 15]), Err(BlkError::ShortHeader(15)));
        let s = DwzSegment {
            sector: 77,
            num_sectors: 8,
            flags: DWZ_FLAG_UNMAP,
        };
        assert_eq!(DwzSegment::parse(&s.encode()), s);
    }

    #[test]
    fn id_is_truncated_and_padded() {
        assert_eq!(&id_bytes("abc")[..4], b"abc\0");
        assert_eq!(
            id_bytes("0123456789abcdefghijXYZ"),
            *b"0123456789abcdefghij"
        );
    }
}
