//! Submission queue entry (NVMe Base 2.0, section 4.2 "Submission Queue Entry",
//! figure 88 "Common Command Format") and SGL descriptors (section 4.3.2,
//! figures 114-119).

use crate::bytes::{le_fields, wire_struct};

/// Opcode of every NVMe-oF Fabrics command (NVMe-oF 1.1, section 3.3).
pub const FABRICS_OPCODE: u8 = 0x7f;

/// PRP or SGL for Data Transfer (PSDT, CDW0 bits 15:14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Psdt {
    /// PRPs are used (PCIe only).
    Prp,
    /// SGLs; MPTR is the address of a contiguous metadata buffer.
    SglMptrContig,
    /// SGLs; MPTR is the address of an SGL segment for metadata.
    SglMptrSgl,
    /// Reserved encoding (11b).
    Reserved,
}

impl Psdt {
    /// Decodes the 2-bit field.
    pub const fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Psdt::Prp,
            1 => Psdt::SglMptrContig,
            2 => Psdt::SglMptrSgl,
            _ => Psdt::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            Psdt::Prp => 0,
            Psdt::SglMptrContig => 1,
            Psdt::SglMptrSgl => 2,
            Psdt::Reserved => 3,
        }
    }
}

/// Fused operation (FUSE, CDW0 bits 9:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Normal operation.
    Normal,
    /// First command of a fused operation.
    First,
    /// Second command of a fused operation.
    Second,
    /// Reserved encoding.
    Reserved,
}

impl Fuse {
    /// Decodes the 2-bit field.
    pub const fn from_bits(b: u8) -> Self {
        match b & 3 {
            0 => Fuse::Normal,
            1 => Fuse::First,
            2 => Fuse::Second,
            _ => Fuse::Reserved,
        }
    }
    /// The 2-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            Fuse::Normal => 0,
            Fuse::First => 1,
            Fuse::Second => 2,
            Fuse::Reserved => 3,
        }
    }
}

wire_struct!(
    /// A 64-byte submission queue entry, kept as its little-endian wire bytes.
    /// Decoding from / encoding to the wire is a 64-byte copy; accessors are
    /// single loads at constant offsets.
    Sqe, 64, debug [opcode, flags, cid, nsid, cdw10, cdw11, cdw12]
);

impl Sqe {
    le_fields! { 64;
        /// Opcode (CDW0 bits 7:0).
        opcode, set_opcode: u8 @ 0;
        /// CDW0 bits 15:8: FUSE (bits 1:0) and PSDT (bits 7:6).
        flags, set_flags: u8 @ 1;
        /// Command identifier (CDW0 bits 31:16).
        cid, set_cid: u16 @ 2;
        /// Namespace identifier (CDW1).
        nsid, set_nsid: u32 @ 4;
        /// Fabrics command type (byte 4, only when opcode is [`FABRICS_OPCODE`]).
        fctype, set_fctype: u8 @ 4;
        /// Command dword 2.
        cdw2, set_cdw2: u32 @ 8;
        /// Command dword 3.
        cdw3, set_cdw3: u32 @ 12;
        /// Metadata pointer (CDW4-5).
        mptr, set_mptr: u64 @ 16;
        /// PRP entry 1 (CDW6-7; the first half of DPTR).
        prp1, set_prp1: u64 @ 24;
        /// PRP entry 2 (CDW8-9; the second half of DPTR).
        prp2, set_prp2: u64 @ 32;
        /// Command dword 10.
        cdw10, set_cdw10: u32 @ 40;
        /// Command dword 11.
        cdw11, set_cdw11: u32 @ 44;
        /// Command dword 12.
        cdw12, set_cdw12: u32 @ 48;
        /// Command dword 13.
        cdw13, set_cdw13: u32 @ 52;
        /// Command dword 14.
        cdw14, set_cdw14: u32 @ 56;
        /// Command dword 15.
        cdw15, set_cdw15: u32 @ 60;
    }

    /// A zeroed entry with opcode, command identifier and namespace set.
    /// For fabrics transports, also set PSDT to SGL ([`Sqe::set_psdt`]).
    #[inline]
    pub fn new(opcode: u8, cid: u16, nsid: u32) -> Self {
        let mut s = Self::zeroed();
        s.set_opcode(opcode);
        s.set_cid(cid);
        s.set_nsid(nsid);
        s
    }

    /// Fused operation field.
    #[inline]
    pub fn fuse(&self) -> Fuse {
        Fuse::from_bits(self.flags())
    }

    /// Sets the fused operation field.
    #[inline]
    pub fn set_fuse(&mut self, f: Fuse) {
        self.set_flags((self.flags() & !0x03) | f.bits());
    }

    /// PRP or SGL selector.
    #[inline]
    pub fn psdt(&self) -> Psdt {
        Psdt::from_bits(self.flags() >> 6)
    }

    /// Sets the PRP or SGL selector.
    #[inline]
    pub fn set_psdt(&mut self, p: Psdt) {
        self.set_flags((self.flags() & 0x3f) | (p.bits() << 6));
    }

    /// Data pointer read as SGL descriptor 1 (bytes 24-39).
    #[inline]
    pub fn sgl1(&self) -> SglDescriptor {
        let mut d = [0u8; 16];
        d.copy_from_slice(&self.0[24..40]);
        SglDescriptor(d)
    }

    /// Writes SGL descriptor 1 into the data pointer.
    #[inline]
    pub fn set_sgl1(&mut self, d: SglDescriptor) {
        self.0[24..40].copy_from_slice(&d.0);
    }

    /// Command dwords 10-15 as an array.
    #[inline]
    pub fn cdw10_15(&self) -> [u32; 6] {
        [
            self.cdw10(),
            self.cdw11(),
            self.cdw12(),
            self.cdw13(),
            self.cdw14(),
            self.cdw15(),
        ]
    }

    /// True for a Fabrics command (opcode 7Fh).
    #[inline]
    pub fn is_fabrics(&self) -> bool {
        self.opcode() == FABRICS_OPCODE
    }
}

/// SGL descriptor type (byte 15 bits 7:4), section 4.3.2 figure 114.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglType {
    /// SGL Data Block.
    DataBlock,
    /// SGL Bit Bucket.
    BitBucket,
    /// SGL Segment.
    Segment,
    /// SGL Last Segment.
    LastSegment,
    /// Keyed SGL Data Block (RDMA).
    KeyedDataBlock,
    /// Transport SGL Data Block (NVMe/TCP: data transferred by R2T/H2CData or C2HData).
    TransportDataBlock,
    /// Vendor specific.
    VendorSpecific,
    /// Any other (reserved) value.
    Reserved(u8),
}

impl SglType {
    /// Decodes the 4-bit type.
    pub const fn from_bits(b: u8) -> Self {
        match b & 0xf {
            0x0 => SglType::DataBlock,
            0x1 => SglType::BitBucket,
            0x2 => SglType::Segment,
            0x3 => SglType::LastSegment,
            0x4 => SglType::KeyedDataBlock,
            0x5 => SglType::TransportDataBlock,
            0xf => SglType::VendorSpecific,
            x => SglType::Reserved(x),
        }
    }
    /// The 4-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            SglType::DataBlock => 0x0,
            SglType::BitBucket => 0x1,
            SglType::Segment => 0x2,
            SglType::LastSegment => 0x3,
            SglType::KeyedDataBlock => 0x4,
            SglType::TransportDataBlock => 0x5,
            SglType::VendorSpecific => 0xf,
            SglType::Reserved(x) => x & 0xf,
        }
    }
}

/// SGL descriptor sub types (byte 15 bits 3:0), section 4.3.2 figure 115.
pub mod sgl_subtype {
    /// The address field is a memory address.
    pub const ADDRESS: u8 = 0x0;
    /// The address field is an offset (in-capsule data, NVMe-oF 1.1 section 2.2).
    pub const OFFSET: u8 = 0x1;
    /// Transport specific (NVMe/TCP uses this with [`super::SglType::TransportDataBlock`]).
    pub const TRANSPORT_SPECIFIC: u8 = 0xa;
    /// RDMA: invalidate key.
    pub const INVALIDATE_KEY: u8 = 0xf;
}

wire_struct!(
    /// A 16-byte SGL descriptor.
    SglDescriptor, 16, debug [sgl_type, subtype, address, length]
);

impl SglDescriptor {
    le_fields! { 16;
        /// Address (or offset) field, bytes 0-7.
        address, set_address: u64 @ 0;
        /// Length, bytes 8-11 (data block, segment, bit bucket, transport data block).
        length, set_length: u32 @ 8;
        /// SGL identifier byte: type in bits 7:4, sub type in bits 3:0.
        id, set_id: u8 @ 15;
        /// Key of a Keyed SGL Data Block, bytes 11-14.
        key, set_key: u32 @ 11;
    }

    /// Descriptor type.
    #[inline]
    pub fn sgl_type(&self) -> SglType {
        SglType::from_bits(self.id() >> 4)
    }

    /// Descriptor sub type (see [`sgl_subtype`]).
    #[inline]
    pub fn subtype(&self) -> u8 {
        self.id() & 0xf
    }

    /// Length of a Keyed SGL Data Block (24 bits, bytes 8-10).
    #[inline]
    pub fn keyed_length(&self) -> u32 {
        u32::from_le_bytes([self.0[8], self.0[9], self.0[10], 0])
    }

    /// Sets the 24-bit length of a Keyed SGL Data Block (upper bits dropped).
    #[inline]
    pub fn set_keyed_length(&mut self, len: u32) {
        let b = len.to_le_bytes();
        self.0[8..11].copy_from_slice(&b[..3]);
    }

    /// An SGL Data Block descriptor with sub type Offset: in-capsule data of
    /// `len` bytes at `offset` from the start of the capsule data (NVMe/TCP
    /// in-capsule writes use offset 0).
    #[inline]
    pub fn in_capsule(offset: u64, len: u32) -> Self {
        let mut d = Self::zeroed();
        d.set_address(offset);
        d.set_length(len);
        d.set_id((SglType::DataBlock.bits() << 4) | sgl_subtype::OFFSET);
        d
    }

    /// A Transport SGL Data Block descriptor (sub type transport specific):
    /// the data is moved by the transport (NVMe/TCP R2T/H2CData or C2HData).
    #[inline]
    pub fn transport(len: u32) -> Self {
        let mut d = Self::zeroed();
        d.set_length(len);
        d.set_id((SglType::TransportDataBlock.bits() << 4) | sgl_subtype::TRANSPORT_SPECIFIC);
        d
    }

    /// A Keyed SGL Data Block descriptor.
    #[inline]
    pub fn keyed(address: u64, len: u32, key: u32, subtype: u8) -> Self {
        let mut d = Self::zeroed();
        d.set_address(address);
        d.set_keyed_length(len);
        d.set_key(key);
        d.set_id((SglType::KeyedDataBlock.bits() << 4) | (subtype & 0xf));
        d
    }

    /// True for an in-capsule (Data Block, sub type Offset) descriptor.
    #[inline]
    pub fn is_in_capsule(&self) -> bool {
        self.sgl_type() == SglType::DataBlock && self.subtype() == sgl_subtype::OFFSET
    }

    /// True for a Transport SGL Data Block descriptor.
    #[inline]
    pub fn is_transport(&self) -> bool {
        self.sgl_type() == SglType::TransportDataBlock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqe_fields_at_spec_offsets() {
        let mut s = Sqe::new(0x02, 0xabcd, 7);
        s.set_psdt(Psdt::SglMptrContig);
        s.set_fuse(Fuse::First);
        s.set_cdw10(0x1111_2222);
        s.set_cdw15(0x9999_8888);
        s.set_mptr(0x0102_0304_0506_0708);
        let b = s.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[1], 0x41);
        assert_eq!(&b[2..4], &[0xcd, 0xab]);
        assert_eq!(&b[4..8], &[7, 0, 0, 0]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[40..44], &[0x22, 0x22, 0x11, 0x11]);
        assert_eq!(&b[60..64], &[0x88, 0x88, 0x99, 0x99]);
        assert_eq!(s.psdt(), Psdt::SglMptrContig);
        assert_eq!(s.fuse(), Fuse::First);
        let back = Sqe::from_slice(b).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.cdw10_15()[5], 0x9999_8888);
        assert!(Sqe::from_slice(&b[..63]).is_none());
    }

    #[test]
    fn sgl_descriptors() {
        let mut s = Sqe::zeroed();
        s.set_sgl1(SglDescriptor::in_capsule(0, 4096));
        assert_eq!(s.as_bytes()[39], 0x01);
        assert!(s.sgl1().is_in_capsule());
        assert_eq!(s.sgl1().length(), 4096);
        s.set_sgl1(SglDescriptor::transport(8192));
        assert_eq!(s.as_bytes()[39], 0x5a);
        assert!(s.sgl1().is_transport());
        let k = SglDescriptor::keyed(0xdead_beef, 0x12_3456, 0xcafe_f00d, 0);
        assert_eq!(k.sgl_type(), SglType::KeyedDataBlock);
        assert_eq!(k.keyed_length(), 0x12_3456);
        assert_eq!(k.key(), 0xcafe_f00d);
        assert_eq!(k.address(), 0xdead_beef);
        assert_eq!(SglType::from_bits(0x7), SglType::Reserved(7));
    }
}
