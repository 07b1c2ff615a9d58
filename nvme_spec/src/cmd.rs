//! Typed views of the command dwords of the commands an NVMe-oF target serves
//! and an initiator sends. Each view is decoded from an [`Sqe`] with
//! `from_sqe` (pure bit extraction, never fails: range checks belong to the
//! command handler) and written back with `apply`.
//!
//! References (NVMe Base 2.0 unless noted): Identify 5.17 (figures 273-275),
//! Get Log Page 5.16 (figures 195-199), Get/Set Features 5.15 / 5.27
//! (figures 190, 317), Abort 5.1, NVM Command Set 1.0: Read 3.2.4,
//! Write 3.2.6, Write Zeroes 3.2.8, Dataset Management 3.2.3 (figures 36-40).

use crate::bytes::{le_fields, wire_struct};
use crate::sqe::Sqe;

/// Read, Write, Compare, Verify: CDW10-11 SLBA, CDW12 NLB (0-based) / FUA / LR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadWrite {
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks (1-based, 1..=65536; the wire field is 0-based).
    pub nlb: u32,
    /// Force Unit Access.
    pub fua: bool,
    /// Limited Retry.
    pub limited_retry: bool,
}

impl ReadWrite {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let c12 = s.cdw12();
        ReadWrite {
            slba: (s.cdw10() as u64) | ((s.cdw11() as u64) << 32),
            nlb: (c12 & 0xffff) + 1,
            fua: c12 & (1 << 30) != 0,
            limited_retry: c12 & (1 << 31) != 0,
        }
    }
    /// Writes CDW10-12 (an `nlb` of 0 is written as 1 block, above 65536 as 65536).
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        s.set_cdw10(self.slba as u32);
        s.set_cdw11((self.slba >> 32) as u32);
        let n = self.nlb.clamp(1, 0x1_0000) - 1;
        s.set_cdw12(n | (self.fua as u32) << 30 | (self.limited_retry as u32) << 31);
    }
}

/// Write Zeroes: like [`ReadWrite`] plus DEAC (CDW12 bit 25).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteZeroes {
    /// Starting LBA.
    pub slba: u64,
    /// Number of logical blocks (1-based).
    pub nlb: u32,
    /// Deallocate: the host allows the blocks to be deallocated.
    pub deallocate: bool,
    /// Force Unit Access.
    pub fua: bool,
}

impl WriteZeroes {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let rw = ReadWrite::from_sqe(s);
        WriteZeroes {
            slba: rw.slba,
            nlb: rw.nlb,
            deallocate: s.cdw12() & (1 << 25) != 0,
            fua: rw.fua,
        }
    }
    /// Writes CDW10-12.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        ReadWrite {
            slba: self.slba,
            nlb: self.nlb,
            fua: self.fua,
            limited_retry: false,
        }
        .apply(s);
        s.set_cdw12(s.cdw12() | (self.deallocate as u32) << 25);
    }
}

/// Dataset Management: CDW10 NR (0-based), CDW11 attributes IDR/IDW/AD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DatasetManagement {
    /// Number of ranges (1-based, 1..=256).
    pub nr: u16,
    /// Integral Dataset for Read.
    pub idr: bool,
    /// Integral Dataset for Write.
    pub idw: bool,
    /// Attribute Deallocate.
    pub deallocate: bool,
}

impl DatasetManagement {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let a = s.cdw11();
        DatasetManagement {
            nr: (s.cdw10() & 0xff) as u16 + 1,
            idr: a & 1 != 0,
            idw: a & 2 != 0,
            deallocate: a & 4 != 0,
        }
    }
    /// Writes CDW10-11.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        s.set_cdw10(self.nr.clamp(1, 256) as u32 - 1);
        s.set_cdw11(self.idr as u32 | (self.idw as u32) << 1 | (self.deallocate as u32) << 2);
    }
    /// Length of the range list the command transfers, in bytes.
    #[inline]
    pub fn data_len(&self) -> usize {
        self.nr as usize * DsmRange::SIZE
    }
}

wire_struct!(
    /// One 16-byte Dataset Management range (NVM Command Set figure 39).
    DsmRange, 16, debug [context_attributes, nlb, slba]
);

impl DsmRange {
    le_fields! { 16;
        /// Context attributes.
        context_attributes, set_context_attributes: u32 @ 0;
        /// Length in logical blocks (1-based: not a 0-based field).
        nlb, set_nlb: u32 @ 4;
        /// Starting LBA.
        slba, set_slba: u64 @ 8;
    }
}

/// Controller or Namespace Structure (CNS) values of Identify (figure 274).
pub mod cns {
    /// Identify Namespace data structure for the NSID.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller data structure.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list (NSIDs greater than CDW1.NSID).
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NS_ID_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Namespace.
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O Command Set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
    /// I/O Command Set specific Active Namespace ID list.
    pub const CSI_ACTIVE_NAMESPACES: u8 = 0x07;
    /// Allocated Namespace ID list.
    pub const ALLOCATED_NAMESPACES: u8 = 0x10;
    /// Identify Namespace for an allocated NSID.
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    /// Controller list attached to the NSID.
    pub const NS_CONTROLLERS: u8 = 0x12;
    /// Controller list in the NVM subsystem.
    pub const CONTROLLERS: u8 = 0x13;
    /// I/O Command Set data structure.
    pub const IO_COMMAND_SETS: u8 = 0x1c;
}

/// Command Set Identifier (CSI) values (figure 285).
pub mod csi {
    /// NVM Command Set.
    pub const NVM: u8 = 0x00;
    /// Key Value Command Set.
    pub const KEY_VALUE: u8 = 0x01;
    /// Zoned Namespace Command Set.
    pub const ZONED: u8 = 0x02;
}

/// Identify: CDW10 CNS / CNTID, CDW11 CNSSI / CSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identify {
    /// Controller or Namespace Structure (see [`cns`]).
    pub cns: u8,
    /// Controller identifier.
    pub cntid: u16,
    /// CNS specific identifier.
    pub cnssi: u16,
    /// Command set identifier (see [`csi`]).
    pub csi: u8,
}

impl Identify {
    /// Length of every Identify data structure.
    pub const DATA_LEN: usize = 4096;
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        Identify {
            cns: s.cdw10() as u8,
            cntid: (s.cdw10() >> 16) as u16,
            cnssi: s.cdw11() as u16,
            csi: (s.cdw11() >> 24) as u8,
        }
    }
    /// Writes CDW10-11.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        s.set_cdw10(self.cns as u32 | (self.cntid as u32) << 16);
        s.set_cdw11(self.cnssi as u32 | (self.csi as u32) << 24);
    }
}

/// Get Log Page: CDW10 LID/LSP/RAE/NUMDL, CDW11 NUMDU/LSI, CDW12-13 LPO, CDW14.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetLogPage {
    /// Log page identifier (see [`crate::log::LogPageId`]).
    pub lid: u8,
    /// Log specific parameter (7 bits; ANA log: bit 0 = return groups only).
    pub lsp: u8,
    /// Retain Asynchronous Event: when clear, reading the log clears the
    /// event that was reported for it.
    pub rae: bool,
    /// Number of dwords to return (1-based; the wire field is 0-based).
    pub numd: u32,
    /// Log specific identifier.
    pub lsi: u16,
    /// Log page offset in bytes (dword aligned unless OT is set).
    pub lpo: u64,
    /// UUID index.
    pub uuid_index: u8,
    /// Offset Type: the offset is an index into a list of entries.
    pub ot: bool,
    /// Command set identifier.
    pub csi: u8,
}

impl GetLogPage {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let c10 = s.cdw10();
        let c11 = s.cdw11();
        let c14 = s.cdw14();
        GetLogPage {
            lid: c10 as u8,
            lsp: ((c10 >> 8) & 0x7f) as u8,
            rae: c10 & (1 << 15) != 0,
            numd: ((c10 >> 16) | (c11 & 0xffff) << 16).wrapping_add(1),
            lsi: (c11 >> 16) as u16,
            lpo: s.cdw12() as u64 | (s.cdw13() as u64) << 32,
            uuid_index: (c14 & 0x7f) as u8,
            ot: c14 & (1 << 23) != 0,
            csi: (c14 >> 24) as u8,
        }
    }
    /// Writes CDW10-14 (a `numd` of 0 is written as 1).
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        let n = self.numd.max(1) - 1;
        s.set_cdw10(
            self.lid as u32
                | ((self.lsp & 0x7f) as u32) << 8
                | (self.rae as u32) << 15
                | (n & 0xffff) << 16,
        );
        s.set_cdw11((n >> 16) | (self.lsi as u32) << 16);
        s.set_cdw12(self.lpo as u32);
        s.set_cdw13((self.lpo >> 32) as u32);
        s.set_cdw14(
            (self.uuid_index & 0x7f) as u32 | (self.ot as u32) << 23 | (self.csi as u32) << 24,
        );
    }
    /// Number of bytes requested (NUMD * 4). A NUMD of 2^32 (wire 0xffffffff)
    /// decodes as 0 dwords after wrapping; treat it as the maximum instead.
    #[inline]
    pub fn len_bytes(&self) -> u64 {
        if self.numd == 0 {
            (u32::MAX as u64 + 1) * 4
        } else {
            self.numd as u64 * 4
        }
    }
}

/// Get Features / Set Features: CDW10 FID, SEL (get) or SV (set); CDW11 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Feature identifier (see [`crate::features::FeatureId`]).
    pub fid: u8,
    /// Get Features select: 0 current, 1 default, 2 saved, 3 supported capabilities.
    pub sel: u8,
    /// Set Features save.
    pub save: bool,
    /// Feature specific value (CDW11).
    pub cdw11: u32,
}

impl Features {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let c10 = s.cdw10();
        Features {
            fid: c10 as u8,
            sel: ((c10 >> 8) & 7) as u8,
            save: c10 & (1 << 31) != 0,
            cdw11: s.cdw11(),
        }
    }
    /// Writes CDW10-11.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        s.set_cdw10(self.fid as u32 | ((self.sel & 7) as u32) << 8 | (self.save as u32) << 31);
        s.set_cdw11(self.cdw11);
    }
}

/// Abort: CDW10 SQID (bits 15:0) and CID (bits 31:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Abort {
    /// Submission queue of the command to abort.
    pub sqid: u16,
    /// Command identifier to abort.
    pub cid: u16,
}

impl Abort {
    /// Decodes the command dwords.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        Abort {
            sqid: s.cdw10() as u16,
            cid: (s.cdw10() >> 16) as u16,
        }
    }
    /// Writes CDW10.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        s.set_cdw10(self.sqid as u32 | (self.cid as u32) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn read_write_bits() {
        let mut s = Sqe::zeroed();
        s.set_cdw10(0x1000);
        s.set_cdw11(0x2);
        s.set_cdw12(7 | 1 << 30);
        let rw = ReadWrite::from_sqe(&s);
        assert_eq!(rw.slba, 0x2_0000_1000);
        assert_eq!(rw.nlb, 8);
        assert!(rw.fua && !rw.limited_retry);
        let mut t = Sqe::zeroed();
        rw.apply(&mut t);
        assert_eq!(t, s);
    }

    #[test]
    fn get_log_page_bits() {
        let mut s = Sqe::zeroed();
        // LID 0x0c, LSP 1, RAE, NUMDL 0x3ff -> 1024 dwords
        s.set_cdw10(0x0c | 1 << 8 | 1 << 15 | 0x3ff << 16);
        s.set_cdw12(4096);
        let g = GetLogPage::from_sqe(&s);
        assert_eq!(
            (g.lid, g.lsp, g.rae, g.numd, g.lpo),
            (0x0c, 1, true, 1024, 4096)
        );
        assert_eq!(g.len_bytes(), 4096);
        let mut t = Sqe::zeroed();
        g.apply(&mut t);
        assert_eq!(t, s);
        s.set_cdw10(0xffff_0000);
        s.set_cdw11(0xffff);
        assert_eq!(GetLogPage::from_sqe(&s).len_bytes(), 1 << 34);
    }

    #[test]
    fn dsm_and_zeroes() {
        let mut s = Sqe::zeroed();
        let d = DatasetManagement {
            nr: 3,
            idr: false,
            idw: false,
            deallocate: true,
        };
        d.apply(&mut s);
        assert_eq!((s.cdw10(), s.cdw11()), (2, 4));
        assert_eq!(DatasetManagement::from_sqe(&s), d);
        assert_eq!(d.data_len(), 48);
        let mut r = DsmRange::zeroed();
        r.set_slba(100);
        r.set_nlb(8);
        assert_eq!(&r.as_bytes()[4..8], &[8, 0, 0, 0]);
        assert_eq!(&r.as_bytes()[8..16], &[100, 0, 0, 0, 0, 0, 0, 0]);
        let w = WriteZeroes {
            slba: 5,
            nlb: 2,
            deallocate: true,
            fua: false,
        };
        let mut s = Sqe::zeroed();
        w.apply(&mut s);
        assert_eq!(s.cdw12(), 1 | 1 << 25);
        assert_eq!(WriteZeroes::from_sqe(&s), w);
    }

    proptest! {
        #[test]
        fn views_roundtrip(c10 in any::<u32>(), c11 in any::<u32>()) {
            let mut s = Sqe::zeroed();
            s.set_cdw10(c10);
            s.set_cdw11(c11);
            let mut t = Sqe::zeroed();
            Identify::from_sqe(&s).apply(&mut t);
            prop_assert_eq!(t.cdw10(), c10 & 0xffff_00ff);
            prop_assert_eq!(t.cdw11(), c11 & 0xff00_ffff);
            let mut t = Sqe::zeroed();
            Abort::from_sqe(&s).apply(&mut t);
            prop_assert_eq!(t.cdw10(), c10);
            let mut t = Sqe::zeroed();
            Features::from_sqe(&s).apply(&mut t);
            prop_assert_eq!(t.cdw10(), c10 & 0x8000_07ff);
            prop_assert_eq!(t.cdw11(), c11);
        }
    }
}
