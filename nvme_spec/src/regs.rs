//! Controller registers / properties (NVMe Base 2.0 section 3.1.3, figures
//! 35-45; over fabrics they are read and written with Property Get/Set,
//! NVMe-oF 1.1 section 3.4).

/// Property offsets (figure 35).
pub mod offset {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set (PCIe only).
    pub const INTMS: u32 = 0x0c;
    /// Interrupt Mask Clear (PCIe only).
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller Status (4 bytes).
    pub const CSTS: u32 = 0x1c;
    /// NVM Subsystem Reset (4 bytes).
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes (PCIe only).
    pub const AQA: u32 = 0x24;
    /// Admin Submission Queue Base Address (PCIe only).
    pub const ASQ: u32 = 0x28;
    /// Admin Completion Queue Base Address (PCIe only).
    pub const ACQ: u32 = 0x30;
}

/// Extracts bits `lo..=hi` of a value.
#[inline(always)]
const fn bits64(v: u64, lo: u32, hi: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

/// Returns `v` with bits `lo..=hi` replaced by `x` (excess bits of `x` dropped).
#[inline(always)]
const fn with64(v: u64, lo: u32, hi: u32, x: u64) -> u64 {
    let m = ((1u64 << (hi - lo + 1)) - 1) << lo;
    (v & !m) | ((x << lo) & m)
}

macro_rules! reg_fields {
    ($t:ty; $( $(#[$m:meta])* $get:ident, $with:ident : $lo:expr, $hi:expr; )*) => {
        $(
            $(#[$m])*
            #[inline]
            pub const fn $get(self) -> u32 {
                bits64(self.0 as u64, $lo, $hi) as u32
            }
            #[doc = concat!("Returns a copy with [`Self::", stringify!($get), "`] replaced.")]
            #[inline]
            pub const fn $with(self, x: u32) -> Self {
                Self(with64(self.0 as u64, $lo, $hi, x as u64) as $t)
            }
        )*
    };
}

/// Controller Capabilities (CAP, offset 0h, 8 bytes, figure 36).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    reg_fields! { u64;
        /// Maximum Queue Entries Supported, 0-based.
        mqes, with_mqes: 0, 15;
        /// Contiguous Queues Required.
        cqr, with_cqr: 16, 16;
        /// Arbitration Mechanism Supported.
        ams, with_ams: 17, 18;
        /// Timeout, in 500 ms units (worst case time to CSTS.RDY change).
        to, with_to: 24, 31;
        /// Doorbell Stride.
        dstrd, with_dstrd: 32, 35;
        /// NVM Subsystem Reset Supported.
        nssrs, with_nssrs: 36, 36;
        /// Command Sets Supported (bit 0: NVM command set, bit 6: I/O command sets, bit 7: admin only).
        css, with_css: 37, 44;
        /// Boot Partition Support.
        bps, with_bps: 45, 45;
        /// Controller Power Scope.
        cps, with_cps: 46, 47;
        /// Memory Page Size Minimum (2^(12+MPSMIN)).
        mpsmin, with_mpsmin: 48, 51;
        /// Memory Page Size Maximum (2^(12+MPSMAX)).
        mpsmax, with_mpsmax: 52, 55;
        /// Persistent Memory Region Supported.
        pmrs, with_pmrs: 56, 56;
        /// Controller Memory Buffer Supported.
        cmbs, with_cmbs: 57, 57;
        /// NVM Subsystem Shutdown Supported.
        nsss, with_nsss: 58, 58;
        /// Controller Ready Modes Supported.
        crms, with_crms: 59, 60;
    }
    /// CSS bit: NVM Command Set supported.
    pub const CSS_NVM: u32 = 1 << 0;
    /// CSS bit: one or more I/O command sets supported.
    pub const CSS_IO_COMMAND_SETS: u32 = 1 << 6;
    /// CSS bit: only the admin command set.
    pub const CSS_ADMIN_ONLY: u32 = 1 << 7;
}

/// Version (VS, offset 8h, figure 37): major bits 31:16, minor 15:8, tertiary 7:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Vs(pub u32);

impl Vs {
    /// NVMe 1.3.
    pub const V1_3: Vs = Vs::new(1, 3, 0);
    /// NVMe 1.4.
    pub const V1_4: Vs = Vs::new(1, 4, 0);
    /// NVMe 2.0.
    pub const V2_0: Vs = Vs::new(2, 0, 0);
    /// Builds a version.
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Self {
        Vs((major as u32) << 16 | (minor as u32) << 8 | tertiary as u32)
    }
    /// Major version.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor version.
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Tertiary version.
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

/// Controller Configuration (CC, offset 14h, figure 41).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

impl Cc {
    reg_fields! { u32;
        /// Enable.
        en, with_en: 0, 0;
        /// I/O Command Set Selected.
        css, with_css: 4, 6;
        /// Memory Page Size (2^(12+MPS)).
        mps, with_mps: 7, 10;
        /// Arbitration Mechanism Selected.
        ams, with_ams: 11, 13;
        /// Shutdown Notification (see [`Cc::SHN_NORMAL`], [`Cc::SHN_ABRUPT`]).
        shn, with_shn: 14, 15;
        /// I/O Submission Queue Entry Size (2^n; 6 = 64 bytes).
        iosqes, with_iosqes: 16, 19;
        /// I/O Completion Queue Entry Size (2^n; 4 = 16 bytes).
        iocqes, with_iocqes: 20, 23;
        /// Controller Ready Independent of Media Enable.
        crime, with_crime: 24, 24;
    }
    /// SHN: no notification.
    pub const SHN_NONE: u32 = 0;
    /// SHN: normal shutdown.
    pub const SHN_NORMAL: u32 = 1;
    /// SHN: abrupt shutdown.
    pub const SHN_ABRUPT: u32 = 2;
    /// Bits that are reserved in CC (written as zero by a correct host).
    pub const RESERVED_MASK: u32 = !0x01ff_fff1;
    /// True if EN is set.
    pub const fn enabled(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Controller Status (CSTS, offset 1Ch, figure 42).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    reg_fields! { u32;
        /// Ready.
        rdy, with_rdy: 0, 0;
        /// Controller Fatal Status.
        cfs, with_cfs: 1, 1;
        /// Shutdown Status (see [`Csts::SHST_COMPLETE`]).
        shst, with_shst: 2, 3;
        /// NVM Subsystem Reset Occurred.
        nssro, with_nssro: 4, 4;
        /// Processing Paused.
        pp, with_pp: 5, 5;
        /// Shutdown Type.
        st, with_st: 6, 6;
    }
    /// SHST: normal operation.
    pub const SHST_NORMAL: u32 = 0;
    /// SHST: shutdown processing occurring.
    pub const SHST_OCCURRING: u32 = 1;
    /// SHST: shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 2;
    /// True if RDY is set.
    pub const fn ready(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Size in bytes of a property, or `None` for offsets that are not
/// properties over fabrics.
pub const fn property_size(off: u32) -> Option<u8> {
    match off {
        offset::CAP => Some(8),
        offset::VS | offset::CC | offset::CSTS | offset::NSSR => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        let cap = Cap(0)
            .with_mqes(1023)
            .with_cqr(1)
            .with_to(30)
            .with_css(Cap::CSS_NVM)
            .with_mpsmin(0)
            .with_mpsmax(4);
        assert_eq!(cap.0 & 0xffff, 1023);
        assert_eq!((cap.0 >> 16) & 1, 1);
        assert_eq!((cap.0 >> 24) & 0xff, 30);
        assert_eq!((cap.0 >> 37) & 0xff, 1);
        assert_eq!((cap.0 >> 52) & 0xf, 4);
        assert_eq!(
            (cap.mqes(), cap.to(), cap.css(), cap.mpsmax()),
            (1023, 30, 1, 4)
        );
        assert_eq!(Cap(u64::MAX).with_mqes(0).mqes(), 0);
        assert_eq!(
            Cap(0).with_mqes(0x1_ffff).mqes(),
            0xffff,
            "excess bits dropped"
        );
    }

    #[test]
    fn cc_csts_vs() {
        // What the Linux host writes: EN, IOSQES 6, IOCQES 4
        let cc = Cc(0x0046_0001);
        assert!(cc.enabled());
        assert_eq!((cc.iosqes(), cc.iocqes(), cc.shn(), cc.mps()), (6, 4, 0, 0));
        assert_eq!(cc.0 & Cc::RESERVED_MASK, 0);
        let cc = cc.with_shn(Cc::SHN_NORMAL);
        assert_eq!(cc.0, 0x0046_4001);
        let cs = Csts(0).with_rdy(1).with_shst(Csts::SHST_COMPLETE);
        assert_eq!(cs.0, 0b1001);
        assert!(cs.ready());
        assert_eq!(Vs::V1_4.0, 0x0001_0400);
        assert_eq!((Vs::V2_0.major(), Vs::V2_0.minor()), (2, 0));
        assert!(Vs::V1_3 < Vs::V2_0);
        assert_eq!(property_size(offset::CAP), Some(8));
        assert_eq!(property_size(offset::CSTS), Some(4));
        assert_eq!(property_size(0x24), None);
    }
}
