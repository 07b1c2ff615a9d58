//! Identify data structures (NVMe Base 2.0 section 5.17.2): Identify
//! Controller (figure 275), Identify Namespace (NVM Command Set 1.0 figure 97),
//! Active Namespace ID list (5.17.2.2), Namespace Identification Descriptor
//! list (figures 276-277). All are 4096 bytes.

use thiserror::Error;

use crate::bytes::{array_fields, le_fields, text_fields, wire_struct};

/// Errors building Identify lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum IdentifyError {
    /// The descriptor list has no room for another descriptor.
    #[error("namespace identification descriptor list full ({used} of 4096 bytes used, {needed} more needed)")]
    DescriptorListFull {
        /// Bytes used.
        used: usize,
        /// Bytes the new descriptor needs.
        needed: usize,
    },
}

wire_struct!(
    /// Identify Controller data structure (CNS 01h), 4096 bytes.
    IdentifyController, 4096,
    debug [vid, sn, mn, fr, cntlid, ver, mdts, nn, subnqn, ioccsz, iorcsz]
);

impl IdentifyController {
    le_fields! { 4096;
        /// PCI Vendor ID.
        vid, set_vid: u16 @ 0;
        /// PCI Subsystem Vendor ID.
        ssvid, set_ssvid: u16 @ 2;
        /// Recommended Arbitration Burst.
        rab, set_rab: u8 @ 72;
        /// Controller Multi-Path I/O and Namespace Sharing Capabilities (see `CMIC_*`).
        cmic, set_cmic: u8 @ 76;
        /// Maximum Data Transfer Size, as a power of two of the minimum page size (0 = no limit).
        mdts, set_mdts: u8 @ 77;
        /// Controller ID.
        cntlid, set_cntlid: u16 @ 78;
        /// Version (same encoding as [`crate::regs::Vs`]).
        ver, set_ver: u32 @ 80;
        /// RTD3 Resume Latency (us).
        rtd3r, set_rtd3r: u32 @ 84;
        /// RTD3 Entry Latency (us).
        rtd3e, set_rtd3e: u32 @ 88;
        /// Optional Asynchronous Events Supported (see `OAES_*`).
        oaes, set_oaes: u32 @ 92;
        /// Controller Attributes (see `CTRATT_*`).
        ctratt, set_ctratt: u32 @ 96;
        /// Read Recovery Levels Supported.
        rrls, set_rrls: u16 @ 100;
        /// Controller Type (1 I/O, 2 discovery, 3 administrative).
        cntrltype, set_cntrltype: u8 @ 111;
        /// Command Retry Delay Time 1 (100 ms units).
        crdt1, set_crdt1: u16 @ 128;
        /// Command Retry Delay Time 2.
        crdt2, set_crdt2: u16 @ 130;
        /// Command Retry Delay Time 3.
        crdt3, set_crdt3: u16 @ 132;
        /// Optional Admin Command Support.
        oacs, set_oacs: u16 @ 256;
        /// Abort Command Limit (0-based).
        acl, set_acl: u8 @ 258;
        /// Asynchronous Event Request Limit (0-based).
        aerl, set_aerl: u8 @ 259;
        /// Firmware Updates.
        frmw, set_frmw: u8 @ 260;
        /// Log Page Attributes (see `LPA_*`).
        lpa, set_lpa: u8 @ 261;
        /// Error Log Page Entries (0-based).
        elpe, set_elpe: u8 @ 262;
        /// Number of Power States Support (0-based).
        npss, set_npss: u8 @ 263;
        /// Admin Vendor Specific Command Configuration.
        avscc, set_avscc: u8 @ 264;
        /// Autonomous Power State Transition Attributes.
        apsta, set_apsta: u8 @ 265;
        /// Warning Composite Temperature Threshold (K).
        wctemp, set_wctemp: u16 @ 266;
        /// Critical Composite Temperature Threshold (K).
        cctemp, set_cctemp: u16 @ 268;
        /// Total NVM Capacity (bytes).
        tnvmcap, set_tnvmcap: u128 @ 280;
        /// Unallocated NVM Capacity (bytes).
        unvmcap, set_unvmcap: u128 @ 296;
        /// Keep Alive Support: granularity of KATO in 100 ms units (0 = not supported).
        kas, set_kas: u16 @ 320;
        /// Sanitize Capabilities.
        sanicap, set_sanicap: u32 @ 328;
        /// ANA Transition Time (seconds).
        anatt, set_anatt: u8 @ 342;
        /// Asymmetric Namespace Access Capabilities (see `ANACAP_*`).
        anacap, set_anacap: u8 @ 343;
        /// ANA Group Identifier Maximum.
        anagrpmax, set_anagrpmax: u32 @ 344;
        /// Number of ANA Group Identifiers.
        nanagrpid, set_nanagrpid: u32 @ 348;
        /// Persistent Event Log Size (4 KiB units).
        pels, set_pels: u32 @ 352;
        /// Submission Queue Entry Size: bits 3:0 required, 7:4 maximum (log2; 0x66 = 64 B).
        sqes, set_sqes: u8 @ 512;
        /// Completion Queue Entry Size: bits 3:0 required, 7:4 maximum (log2; 0x44 = 16 B).
        cqes, set_cqes: u8 @ 513;
        /// Maximum Outstanding Commands (fabrics: per queue).
        maxcmd, set_maxcmd: u16 @ 514;
        /// Number of Namespaces (maximum valid NSID).
        nn, set_nn: u32 @ 516;
        /// Optional NVM Command Support (see `ONCS_*`).
        oncs, set_oncs: u16 @ 520;
        /// Fused Operation Support.
        fuses, set_fuses: u16 @ 522;
        /// Format NVM Attributes.
        fna, set_fna: u8 @ 524;
        /// Volatile Write Cache (see `VWC_*`).
        vwc, set_vwc: u8 @ 525;
        /// Atomic Write Unit Normal (0-based blocks).
        awun, set_awun: u16 @ 526;
        /// Atomic Write Unit Power Fail (0-based blocks).
        awupf, set_awupf: u16 @ 528;
        /// I/O Command Set Vendor Specific Command Configuration.
        icsvscc, set_icsvscc: u8 @ 530;
        /// Namespace Write Protection Capabilities.
        nwpc, set_nwpc: u8 @ 531;
        /// Atomic Compare & Write Unit.
        acwu, set_acwu: u16 @ 532;
        /// Copy Formats Supported.
        ocfs, set_ocfs: u16 @ 534;
        /// SGL Support (see `SGLS_*`).
        sgls, set_sgls: u32 @ 536;
        /// Maximum Number of Allowed Namespaces.
        mnan, set_mnan: u32 @ 540;
        /// I/O Queue Command Capsule Supported Size (16-byte units, includes the 64 B SQE).
        ioccsz, set_ioccsz: u32 @ 1792;
        /// I/O Queue Response Capsule Supported Size (16-byte units).
        iorcsz, set_iorcsz: u32 @ 1796;
        /// In Capsule Data Offset (16-byte units).
        icdoff, set_icdoff: u16 @ 1800;
        /// Fabrics Controller Attributes (bit 0: static controller model).
        fcatt, set_fcatt: u8 @ 1802;
        /// Maximum SGL Data Block Descriptors (0 = no limit).
        msdbd, set_msdbd: u8 @ 1803;
        /// Optional Fabrics Commands Support.
        ofcs, set_ofcs: u16 @ 1804;
        /// Power state 0 descriptor: maximum power (centiwatts).
        ps0_mp, set_ps0_mp: u16 @ 2048;
    }
    text_fields! { 4096;
        /// Serial Number (ASCII, space padded).
        Ascii sn, set_sn @ 4, 20;
        /// Model Number (ASCII, space padded).
        Ascii mn, set_mn @ 24, 40;
        /// Firmware Revision (ASCII, space padded).
        Ascii fr, set_fr @ 64, 8;
        /// NVM Subsystem NVMe Qualified Name.
        Nqn subnqn, set_subnqn @ 768, 256;
    }
    array_fields! { 4096;
        /// IEEE OUI Identifier (least significant byte first).
        ieee, set_ieee: [3] @ 73;
        /// FRU Globally Unique Identifier.
        fguid, set_fguid: [16] @ 112;
    }

    /// CMIC: the NVM subsystem may have two or more ports.
    pub const CMIC_MULTI_PORT: u8 = 1 << 0;
    /// CMIC: the NVM subsystem may have two or more controllers.
    pub const CMIC_MULTI_CONTROLLER: u8 = 1 << 1;
    /// CMIC: the controller is associated with an SR-IOV virtual function.
    pub const CMIC_SRIOV: u8 = 1 << 2;
    /// CMIC: Asymmetric Namespace Access reporting supported.
    pub const CMIC_ANA: u8 = 1 << 3;
    /// OAES: Namespace Attribute Notices.
    pub const OAES_NS_ATTRIBUTE: u32 = 1 << 8;
    /// OAES: Firmware Activation Notices.
    pub const OAES_FW_ACTIVATION: u32 = 1 << 9;
    /// OAES: Asymmetric Namespace Access Change Notices.
    pub const OAES_ANA_CHANGE: u32 = 1 << 11;
    /// OAES: Discovery Log Page Change Notification.
    pub const OAES_DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
    /// CTRATT: 128-bit Host Identifier supported.
    pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
    /// LPA: SMART/Health log page per namespace.
    pub const LPA_SMART_PER_NS: u8 = 1 << 0;
    /// LPA: Commands Supported and Effects log page.
    pub const LPA_CMD_EFFECTS: u8 = 1 << 1;
    /// LPA: extended data for Get Log Page (NUMDU, LPOL/LPOU).
    pub const LPA_EXTENDED_DATA: u8 = 1 << 2;
    /// ANACAP: reports ANA Optimized state.
    pub const ANACAP_OPTIMIZED: u8 = 1 << 0;
    /// ANACAP: reports ANA Non-Optimized state.
    pub const ANACAP_NON_OPTIMIZED: u8 = 1 << 1;
    /// ANACAP: reports ANA Inaccessible state.
    pub const ANACAP_INACCESSIBLE: u8 = 1 << 2;
    /// ANACAP: reports ANA Persistent Loss state.
    pub const ANACAP_PERSISTENT_LOSS: u8 = 1 << 3;
    /// ANACAP: reports ANA Change state.
    pub const ANACAP_CHANGE: u8 = 1 << 4;
    /// ANACAP: ANAGRPID does not change while the namespace is attached.
    pub const ANACAP_GRPID_STATIC: u8 = 1 << 6;
    /// ONCS: Compare.
    pub const ONCS_COMPARE: u16 = 1 << 0;
    /// ONCS: Write Uncorrectable.
    pub const ONCS_WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// ONCS: Dataset Management.
    pub const ONCS_DSM: u16 = 1 << 2;
    /// ONCS: Write Zeroes.
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
    /// ONCS: Save field in Set Features / Select field in Get Features.
    pub const ONCS_FEATURES_SAVE_SELECT: u16 = 1 << 4;
    /// ONCS: Reservations.
    pub const ONCS_RESERVATIONS: u16 = 1 << 5;
    /// ONCS: Timestamp feature.
    pub const ONCS_TIMESTAMP: u16 = 1 << 6;
    /// ONCS: Verify.
    pub const ONCS_VERIFY: u16 = 1 << 7;
    /// VWC: a volatile write cache is present.
    pub const VWC_PRESENT: u8 = 1 << 0;
    /// VWC: Flush with NSID FFFFFFFFh supported (bits 2:1 = 11b).
    pub const VWC_FLUSH_BROADCAST: u8 = 0b11 << 1;
    /// SGLS: SGLs supported, no alignment requirement (bits 1:0 = 01b).
    pub const SGLS_SUPPORTED: u32 = 1 << 0;
    /// SGLS: Keyed SGL Data Block descriptor supported.
    pub const SGLS_KEYED: u32 = 1 << 2;
    /// SGLS: address field may be an offset (in-capsule data; required over fabrics).
    pub const SGLS_OFFSET: u32 = 1 << 20;
    /// SGLS: Transport SGL Data Block descriptor supported.
    pub const SGLS_TRANSPORT: u32 = 1 << 21;
    /// CNTRLTYPE: I/O controller.
    pub const CNTRLTYPE_IO: u8 = 1;
    /// CNTRLTYPE: discovery controller.
    pub const CNTRLTYPE_DISCOVERY: u8 = 2;
    /// CNTRLTYPE: administrative controller.
    pub const CNTRLTYPE_ADMIN: u8 = 3;
}

/// An LBA Format entry (NVM Command Set figure 98): MS bits 15:0, LBADS 23:16, RP 25:24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat(pub u32);

impl LbaFormat {
    /// A format with `2^lbads`-byte blocks, `ms` metadata bytes, relative performance `rp`.
    pub const fn new(lbads: u8, ms: u16, rp: u8) -> Self {
        LbaFormat(ms as u32 | (lbads as u32) << 16 | ((rp & 3) as u32) << 24)
    }
    /// Metadata size per block.
    pub const fn ms(self) -> u16 {
        self.0 as u16
    }
    /// LBA data size as a power of two (9 = 512 B, 12 = 4 KiB).
    pub const fn lbads(self) -> u8 {
        (self.0 >> 16) as u8
    }
    /// Relative performance (0 best).
    pub const fn rp(self) -> u8 {
        ((self.0 >> 24) & 3) as u8
    }
    /// Block size in bytes (0 if LBADS is out of the valid range 9..=31).
    pub const fn block_size(self) -> u32 {
        let s = self.lbads();
        if s >= 9 && s < 32 {
            1 << s
        } else {
            0
        }
    }
}

wire_struct!(
    /// Identify Namespace data structure for the NVM command set (CNS 00h), 4096 bytes.
    IdentifyNamespace, 4096,
    debug [nsze, ncap, nuse, nsfeat, nlbaf, flbas, nmic, anagrpid, nguid, eui64]
);

impl IdentifyNamespace {
    /// Number of LBA format slots (NVMe 2.0: 64).
    pub const LBAF_SLOTS: usize = 64;

    le_fields! { 4096;
        /// Namespace Size (blocks).
        nsze, set_nsze: u64 @ 0;
        /// Namespace Capacity (blocks).
        ncap, set_ncap: u64 @ 8;
        /// Namespace Utilization (blocks).
        nuse, set_nuse: u64 @ 16;
        /// Namespace Features (see `NSFEAT_*`).
        nsfeat, set_nsfeat: u8 @ 24;
        /// Number of LBA Formats (0-based).
        nlbaf, set_nlbaf: u8 @ 25;
        /// Formatted LBA Size: bits 3:0 format index low bits, 6:5 high bits, bit 4 extended metadata.
        flbas, set_flbas: u8 @ 26;
        /// Metadata Capabilities.
        mc, set_mc: u8 @ 27;
        /// End-to-end Data Protection Capabilities.
        dpc, set_dpc: u8 @ 28;
        /// End-to-end Data Protection Type Settings.
        dps, set_dps: u8 @ 29;
        /// Namespace Multi-path I/O and Namespace Sharing Capabilities (bit 0: shared).
        nmic, set_nmic: u8 @ 30;
        /// Reservation Capabilities.
        rescap, set_rescap: u8 @ 31;
        /// Deallocate Logical Block Features (see `DLFEAT_*`).
        dlfeat, set_dlfeat: u8 @ 33;
        /// Namespace Atomic Write Unit Normal.
        nawun, set_nawun: u16 @ 34;
        /// Namespace Atomic Write Unit Power Fail.
        nawupf, set_nawupf: u16 @ 36;
        /// Namespace Optimal I/O Boundary (blocks).
        noiob, set_noiob: u16 @ 46;
        /// NVM Capacity (bytes).
        nvmcap, set_nvmcap: u128 @ 48;
        /// Namespace Preferred Write Granularity (0-based blocks).
        npwg, set_npwg: u16 @ 64;
        /// Namespace Preferred Write Alignment.
        npwa, set_npwa: u16 @ 66;
        /// Namespace Preferred Deallocate Granularity.
        npdg, set_npdg: u16 @ 68;
        /// Namespace Preferred Deallocate Alignment.
        npda, set_npda: u16 @ 70;
        /// Namespace Optimal Write Size.
        nows, set_nows: u16 @ 72;
        /// ANA Group Identifier.
        anagrpid, set_anagrpid: u32 @ 92;
        /// Namespace Attributes (bit 0: write protected).
        nsattr, set_nsattr: u8 @ 99;
        /// NVM Set Identifier.
        nvmsetid, set_nvmsetid: u16 @ 100;
        /// Endurance Group Identifier.
        endgid, set_endgid: u16 @ 102;
    }
    array_fields! { 4096;
        /// Namespace Globally Unique Identifier.
        nguid, set_nguid: [16] @ 104;
        /// IEEE Extended Unique Identifier.
        eui64, set_eui64: [8] @ 120;
    }

    /// NSFEAT: thin provisioning.
    pub const NSFEAT_THIN: u8 = 1 << 0;
    /// NSFEAT: NAWUN/NAWUPF/NACWU valid.
    pub const NSFEAT_ATOMICS: u8 = 1 << 1;
    /// NSFEAT: Deallocated or Unwritten Logical Block error supported.
    pub const NSFEAT_DAE: u8 = 1 << 2;
    /// NSFEAT: NPWG, NPWA, NPDG, NPDA, NOWS valid.
    pub const NSFEAT_OPTPERF: u8 = 1 << 4;
    /// NMIC: namespace may be attached to two or more controllers.
    pub const NMIC_SHARED: u8 = 1 << 0;
    /// DLFEAT: deallocated blocks read as zeroes (bits 2:0 = 001b).
    pub const DLFEAT_READ_ZEROES: u8 = 0b001;
    /// DLFEAT: Write Zeroes with DEAC supported.
    pub const DLFEAT_WRITE_ZEROES_DEAC: u8 = 1 << 3;

    /// LBA format slot `i` (zero for `i >= 64`).
    pub fn lbaf(&self, i: usize) -> LbaFormat {
        if i >= Self::LBAF_SLOTS {
            return LbaFormat(0);
        }
        LbaFormat(crate::bytes::get(&self.0, 128 + 4 * i))
    }

    /// Sets LBA format slot `i` (ignored for `i >= 64`).
    pub fn set_lbaf(&mut self, i: usize, f: LbaFormat) {
        if i < Self::LBAF_SLOTS {
            crate::bytes::put(&mut self.0, 128 + 4 * i, f.0);
        }
    }

    /// Index of the format in use (FLBAS bits 3:0 plus bits 6:5 as bits 5:4).
    pub fn flbas_index(&self) -> usize {
        let f = self.flbas();
        ((f & 0xf) | ((f >> 5) & 3) << 4) as usize
    }

    /// Block size of the format in use (bytes).
    pub fn block_size(&self) -> u32 {
        self.lbaf(self.flbas_index()).block_size()
    }
}

wire_struct!(
    /// A namespace ID list (Active Namespace ID list, CNS 02h): up to 1024
    /// NSIDs in increasing order, zero terminated, 4096 bytes.
    NsIdList, 4096, debug [len]
);

impl NsIdList {
    /// Maximum number of entries.
    pub const CAPACITY: usize = 1024;

    /// The list an Identify CNS 02h returns: the first 1024 active NSIDs
    /// greater than `greater_than`, from an increasing slice of active NSIDs.
    pub fn active_after(active_sorted: &[u32], greater_than: u32) -> Self {
        let mut l = Self::zeroed();
        let start = active_sorted.partition_point(|&n| n <= greater_than);
        for (i, &n) in active_sorted[start..]
            .iter()
            .take(Self::CAPACITY)
            .enumerate()
        {
            crate::bytes::put(&mut l.0, 4 * i, n);
        }
        l
    }

    /// Entry `i` (0 when past the end).
    pub fn get(&self, i: usize) -> u32 {
        if i >= Self::CAPACITY {
            return 0;
        }
        crate::bytes::get(&self.0, 4 * i)
    }

    /// Number of entries before the first zero.
    pub fn len(&self) -> usize {
        (0..Self::CAPACITY)
            .find(|&i| self.get(i) == 0)
            .unwrap_or(Self::CAPACITY)
    }

    /// True when the list is empty.
    pub fn is_empty(&self) -> bool {
        self.get(0) == 0
    }

    /// The entries before the first zero.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..Self::CAPACITY)
            .map(|i| self.get(i))
            .take_while(|&n| n != 0)
    }
}

/// Namespace Identifier Type (NIDT) values (figure 277).
pub mod nidt {
    /// IEEE Extended Unique Identifier (8 bytes).
    pub const EUI64: u8 = 1;
    /// Namespace Globally Unique Identifier (16 bytes).
    pub const NGUID: u8 = 2;
    /// Namespace UUID (16 bytes).
    pub const UUID: u8 = 3;
    /// Command Set Identifier (1 byte).
    pub const CSI: u8 = 4;
}

/// One Namespace Identification Descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsIdDescriptor {
    /// EUI-64.
    Eui64([u8; 8]),
    /// NGUID.
    Nguid([u8; 16]),
    /// UUID (RFC 4122 byte order).
    Uuid([u8; 16]),
    /// Command set identifier.
    Csi(u8),
    /// A descriptor type this crate does not know (skipped by length).
    Unknown {
        /// Type.
        nidt: u8,
        /// Length of the identifier.
        nidl: u8,
    },
}

impl NsIdDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsIdDescriptor::Eui64(v) => (nidt::EUI64, v),
            NsIdDescriptor::Nguid(v) => (nidt::NGUID, v),
            NsIdDescriptor::Uuid(v) => (nidt::UUID, v),
            NsIdDescriptor::Csi(v) => (nidt::CSI, core::slice::from_ref(v)),
            NsIdDescriptor::Unknown { nidt, .. } => (*nidt, &[]),
        }
    }
}

wire_struct!(
    /// Namespace Identification Descriptor list (CNS 03h), 4096 bytes:
    /// descriptors of 4-byte header (NIDT, NIDL, 2 reserved) plus NIDL bytes,
    /// terminated by a zero NIDT/NIDL.
    NsIdDescList, 4096, debug [used]
);

impl NsIdDescList {
    /// Bytes used by descriptors so far.
    pub fn used(&self) -> usize {
        let mut off = 0;
        while off + 4 <= Self::SIZE && self.0[off] != 0 && self.0[off + 1] != 0 {
            off += 4 + self.0[off + 1] as usize;
        }
        off.min(Self::SIZE)
    }

    /// Appends a descriptor. Unknown descriptors are not written.
    pub fn push(&mut self, d: NsIdDescriptor) -> Result<(), IdentifyError> {
        let (t, v) = d.parts();
        if v.is_empty() {
            return Ok(());
        }
        let used = self.used();
        let needed = 4 + v.len();
        // a list that ends exactly at 4096 bytes needs no terminator
        if used + needed > Self::SIZE {
            return Err(IdentifyError::DescriptorListFull { used, needed });
        }
        self.0[used] = t;
        self.0[used + 1] = v.len() as u8;
        self.0[used + 2] = 0;
        self.0[used + 3] = 0;
        self.0[used + 4..used + needed].copy_from_slice(v);
        Ok(())
    }

    /// Parses the descriptors (stops at the terminator or at a truncated entry).
    pub fn iter(&self) -> impl Iterator<Item = NsIdDescriptor> + '_ {
        let mut off = 0usize;
        core::iter::from_fn(move || {
            if off + 4 > Self::SIZE {
                return None;
            }
            let (t, l) = (self.0[off], self.0[off + 1]);
            if t == 0 || l == 0 {
                return None;
            }
            let v = self.0.get(off + 4..off + 4 + l as usize)?;
            off += 4 + l as usize;
            Some(match (t, l) {
                (nidt::EUI64, 8) => NsIdDescriptor::Eui64(v.try_into().ok()?),
                (nidt::NGUID, 16) => NsIdDescriptor::Nguid(v.try_into().ok()?),
                (nidt::UUID, 16) => NsIdDescriptor::Uuid(v.try_into().ok()?),
                (nidt::CSI, 1) => NsIdDescriptor::Csi(v[0]),
                _ => NsIdDescriptor::Unknown { nidt: t, nidl: l },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_controller_offsets() {
        let mut c = IdentifyController::zeroed();
        c.set_vid(0x1b36);
        c.set_sn("VMP0001").unwrap();
        c.set_mn("vmpath").unwrap();
        c.set_fr("0.1").unwrap();
        c.set_ieee([0x01, 0x02, 0x03]);
        c.set_cmic(IdentifyController::CMIC_MULTI_PORT | IdentifyController::CMIC_ANA);
        c.set_mdts(5);
        c.set_cntlid(0x21);
        c.set_ver(0x0002_0000);
        c.set_oaes(IdentifyController::OAES_ANA_CHANGE | IdentifyController::OAES_NS_ATTRIBUTE);
        c.set_kas(10);
        c.set_anatt(10);
        c.set_anacap(0x47);
        c.set_anagrpmax(32);
        c.set_nanagrpid(32);
        c.set_sqes(0x66);
        c.set_cqes(0x44);
        c.set_maxcmd(128);
        c.set_nn(1024);
        c.set_oncs(IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES);
        c.set_vwc(IdentifyController::VWC_PRESENT);
        c.set_sgls(
            IdentifyController::SGLS_SUPPORTED
                | IdentifyController::SGLS_OFFSET
                | IdentifyController::SGLS_TRANSPORT,
        );
        c.set_subnqn("nqn.2024-01.io.vmpath:a").unwrap();
        c.set_ioccsz(260);
        c.set_iorcsz(1);
        c.set_msdbd(1);
        let b = c.as_bytes();
        assert_eq!(&b[0..2], &[0x36, 0x1b]);
        assert_eq!(&b[4..24], b"VMP0001             ");
        assert_eq!(&b[24..30], b"vmpath");
        assert_eq!(b[30], b' ');
        assert_eq!(&b[64..72], b"0.1     ");
        assert_eq!(&b[73..76], &[1, 2, 3]);
        assert_eq!(b[76], 0x09);
        assert_eq!(b[77], 5);
        assert_eq!(&b[78..80], &[0x21, 0]);
        assert_eq!(&b[80..84], &[0, 0, 2, 0]);
        assert_eq!(&b[92..96], &[0, 0x09, 0, 0]);
        assert_eq!(&b[320..322], &[10, 0]);
        assert_eq!((b[342], b[343]), (10, 0x47));
        assert_eq!(&b[344..348], &[32, 0, 0, 0]);
        assert_eq!((b[512], b[513]), (0x66, 0x44));
        assert_eq!(&b[514..516], &[128, 0]);
        assert_eq!(&b[516..520], &[0, 4, 0, 0]);
        assert_eq!(&b[520..522], &[0x0c, 0]);
        assert_eq!(b[525], 1);
        assert_eq!(&b[536..540], &[0x01, 0, 0x30, 0]);
        assert_eq!(&b[768..772], b"nqn.");
        assert_eq!(&b[1792..1796], &[4, 1, 0, 0]);
        assert_eq!(&b[1796..1800], &[1, 0, 0, 0]);
        assert_eq!(b[1803], 1);
        assert_eq!(c.sn().unwrap(), "VMP0001");
        assert_eq!(c.subnqn().unwrap(), "nqn.2024-01.io.vmpath:a");
        assert!(c.set_sn("123456789012345678901").is_err());
        let dbg = format!("{c:?}");
        assert!(dbg.contains("VMP0001"));
    }

    #[test]
    fn identify_namespace_offsets() {
        let mut n = IdentifyNamespace::zeroed();
        n.set_nsze(1 << 20);
        n.set_ncap(1 << 20);
        n.set_nuse(1 << 19);
        n.set_nlbaf(1);
        n.set_lbaf(0, LbaFormat::new(9, 0, 0));
        n.set_lbaf(1, LbaFormat::new(12, 0, 0));
        n.set_flbas(1);
        n.set_nmic(IdentifyNamespace::NMIC_SHARED);
        n.set_anagrpid(3);
        n.set_nguid([0xaa; 16]);
        n.set_eui64([0xbb; 8]);
        let b = n.as_bytes();
        assert_eq!(&b[0..8], &[0, 0, 0x10, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..24], &[0, 0, 8, 0, 0, 0, 0, 0]);
        assert_eq!((b[25], b[26], b[30]), (1, 1, 1));
        assert_eq!(&b[92..96], &[3, 0, 0, 0]);
        assert_eq!(&b[104..120], &[0xaa; 16]);
        assert_eq!(&b[120..128], &[0xbb; 8]);
        assert_eq!(&b[128..132], &[0, 0, 9, 0]);
        assert_eq!(&b[132..136], &[0, 0, 12, 0]);
        assert_eq!(n.block_size(), 4096);
        n.set_flbas(0);
        assert_eq!(n.block_size(), 512);
        n.set_flbas(0b0010_0001);
        assert_eq!(n.flbas_index(), 17);
        assert_eq!(n.lbaf(64), LbaFormat(0));
        assert_eq!(LbaFormat::new(40, 0, 0).block_size(), 0);
    }

    #[test]
    fn ns_id_list() {
        let active = [1, 2, 5, 9];
        let l = NsIdList::active_after(&active, 0);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![1, 2, 5, 9]);
        assert_eq!(l.len(), 4);
        let l = NsIdList::active_after(&active, 2);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![5, 9]);
        assert_eq!(&l.0[0..8], &[5, 0, 0, 0, 9, 0, 0, 0]);
        assert!(NsIdList::active_after(&active, 9).is_empty());
        let many: Vec<u32> = (1..=2000).collect();
        let l = NsIdList::active_after(&many, 0);
        assert_eq!(l.len(), 1024);
        assert_eq!(l.get(1023), 1024);
    }

    #[test]
    fn ns_id_descriptors() {
        let mut l = NsIdDescList::zeroed();
        l.push(NsIdDescriptor::Eui64([1; 8])).unwrap();
        l.push(NsIdDescriptor::Nguid([2; 16])).unwrap();
        l.push(NsIdDescriptor::Uuid([3; 16])).unwrap();
        l.push(NsIdDescriptor::Csi(0)).unwrap();
        assert_eq!(&l.0[0..4], &[1, 8, 0, 0]);
        assert_eq!(&l.0[12..16], &[2, 16, 0, 0]);
        assert_eq!(&l.0[32..36], &[3, 16, 0, 0]);
        assert_eq!(&l.0[52..57], &[4, 1, 0, 0, 0]);
        assert_eq!(l.used(), 57);
        let got: Vec<_> = l.iter().collect();
        assert_eq!(
            got,
            vec![
                NsIdDescriptor::Eui64([1; 8]),
                NsIdDescriptor::Nguid([2; 16]),
                NsIdDescriptor::Uuid([3; 16]),
                NsIdDescriptor::Csi(0)
            ]
        );
        let mut full = NsIdDescList::zeroed();
        let mut n = 0;
        while full.push(NsIdDescriptor::Uuid([9; 16])).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4096 / 20);
        assert!(matches!(
            full.push(NsIdDescriptor::Uuid([9; 16])),
            Err(IdentifyError::DescriptorListFull { .. })
        ));
        assert_eq!(full.iter().count(), n);
    }
}
