//! Completion queue entry (NVMe Base 2.0, section 4.2.3, figure 89 "Common
//! Completion Queue Entry Layout") and the status field (section 4.2.3.2,
//! figures 92-100).

use crate::bytes::{le_fields, wire_struct};

wire_struct!(
    /// A 16-byte completion queue entry, kept as its little-endian wire bytes.
    Cqe, 16, debug [dw0, dw1, sqhd, sqid, cid, status, phase]
);

impl Cqe {
    le_fields! { 16;
        /// Dword 0 (command specific).
        dw0, set_dw0: u32 @ 0;
        /// Dword 1 (command specific).
        dw1, set_dw1: u32 @ 4;
        /// Submission queue head pointer.
        sqhd, set_sqhd: u16 @ 8;
        /// Submission queue identifier.
        sqid, set_sqid: u16 @ 10;
        /// Command identifier.
        cid, set_cid: u16 @ 12;
        /// Bits 15:0 of dword 3: phase tag (bit 0) and status field (bits 15:1).
        status_phase, set_status_phase: u16 @ 14;
    }

    /// A completion for `cid` with `status`; phase 0, SQHD/SQID 0.
    #[inline]
    pub fn new(cid: u16, status: Status) -> Self {
        let mut c = Self::zeroed();
        c.set_cid(cid);
        c.set_status(status);
        c
    }

    /// Dwords 0 and 1 as one 64-bit value (Property Get returns 8-byte values here).
    #[inline]
    pub fn dw0_dw1(&self) -> u64 {
        crate::bytes::get::<u64>(&self.0, 0)
    }

    /// Sets dwords 0 and 1 from one 64-bit value.
    #[inline]
    pub fn set_dw0_dw1(&mut self, v: u64) {
        crate::bytes::put::<u64>(&mut self.0, 0, v)
    }

    /// Status field (without the phase tag).
    #[inline]
    pub fn status(&self) -> Status {
        Status(self.status_phase() >> 1)
    }

    /// Sets the status field, keeping the phase tag.
    #[inline]
    pub fn set_status(&mut self, s: Status) {
        self.set_status_phase((s.0 << 1) | (self.status_phase() & 1));
    }

    /// Phase tag.
    #[inline]
    pub fn phase(&self) -> bool {
        self.status_phase() & 1 != 0
    }

    /// Sets the phase tag.
    #[inline]
    pub fn set_phase(&mut self, p: bool) {
        self.set_status_phase((self.status_phase() & !1) | p as u16);
    }
}

/// Status Code Type (SCT), section 4.2.3.2 figure 95.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sct {
    /// Generic Command Status.
    Generic,
    /// Command Specific Status.
    CommandSpecific,
    /// Media and Data Integrity Errors.
    MediaError,
    /// Path Related Status.
    PathRelated,
    /// Vendor Specific.
    VendorSpecific,
    /// Reserved (4h-6h).
    Reserved(u8),
}

impl Sct {
    /// Decodes the 3-bit value.
    pub const fn from_bits(b: u8) -> Self {
        match b & 7 {
            0 => Sct::Generic,
            1 => Sct::CommandSpecific,
            2 => Sct::MediaError,
            3 => Sct::PathRelated,
            7 => Sct::VendorSpecific,
            x => Sct::Reserved(x),
        }
    }
    /// The 3-bit encoding.
    pub const fn bits(self) -> u8 {
        match self {
            Sct::Generic => 0,
            Sct::CommandSpecific => 1,
            Sct::MediaError => 2,
            Sct::PathRelated => 3,
            Sct::VendorSpecific => 7,
            Sct::Reserved(x) => x & 7,
        }
    }
}

/// The 15-bit status field of a completion (CQE DW3 bits 31:17):
/// SC bits 7:0, SCT bits 10:8, CRD bits 12:11, More bit 13, DNR bit 14.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

impl core::fmt::Debug for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Status(sct={:?} sc={:#04x}{}{})",
            self.sct(),
            self.sc(),
            if self.dnr() { " dnr" } else { "" },
            if self.more() { " more" } else { "" }
        )
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "sct {} sc {:#04x}", self.sct().bits(), self.sc())
    }
}

const fn st(sct: u8, sc: u8) -> Status {
    Status(((sct as u16 & 7) << 8) | sc as u16)
}

impl Status {
    /// Builds a status from type and code (CRD, More, DNR clear).
    #[inline]
    pub const fn new(sct: Sct, sc: u8) -> Self {
        st(sct.bits(), sc)
    }
    /// Status code.
    #[inline]
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Status code type.
    #[inline]
    pub const fn sct(self) -> Sct {
        Sct::from_bits((self.0 >> 8) as u8)
    }
    /// Command Retry Delay selector (0-3).
    #[inline]
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 3) as u8
    }
    /// More: more status information in the Error Information log page.
    #[inline]
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry.
    #[inline]
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// The same status with DNR set.
    #[inline]
    pub const fn with_dnr(self) -> Self {
        Status(self.0 | (1 << 14))
    }
    /// The same status with More set.
    #[inline]
    pub const fn with_more(self) -> Self {
        Status(self.0 | (1 << 13))
    }
    /// The same status with the given Command Retry Delay selector.
    #[inline]
    pub const fn with_crd(self, crd: u8) -> Self {
        Status((self.0 & !(3 << 11)) | (((crd & 3) as u16) << 11))
    }
    /// Type and code only (CRD, More, DNR cleared), for comparisons.
    #[inline]
    pub const fn code(self) -> Self {
        Status(self.0 & 0x7ff)
    }
    /// True if SCT and SC are both zero.
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }
    /// True for the ANA path errors a multipath host retries on another path
    /// (Asymmetric Access Inaccessible / Transition / Persistent Loss).
    #[inline]
    pub const fn is_ana_error(self) -> bool {
        matches!(self.sct(), Sct::PathRelated) && matches!(self.sc(), 0x01..=0x03)
    }

    // Generic command status (SCT 0), figure 96.
    /// Successful Completion.
    pub const SUCCESS: Status = st(0, 0x00);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = st(0, 0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Status = st(0, 0x02);
    /// Command ID Conflict.
    pub const CID_CONFLICT: Status = st(0, 0x03);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = st(0, 0x04);
    /// Commands Aborted due to Power Loss Notification.
    pub const ABORTED_POWER_LOSS: Status = st(0, 0x05);
    /// Internal Error.
    pub const INTERNAL_ERROR: Status = st(0, 0x06);
    /// Command Abort Requested.
    pub const ABORT_REQUESTED: Status = st(0, 0x07);
    /// Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = st(0, 0x08);
    /// Command Aborted due to Failed Fused Command.
    pub const ABORTED_FAILED_FUSED: Status = st(0, 0x09);
    /// Command Aborted due to Missing Fused Command.
    pub const ABORTED_MISSING_FUSED: Status = st(0, 0x0a);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE_OR_FORMAT: Status = st(0, 0x0b);
    /// Command Sequence Error.
    pub const COMMAND_SEQUENCE_ERROR: Status = st(0, 0x0c);
    /// Invalid SGL Segment Descriptor.
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: Status = st(0, 0x0d);
    /// Invalid Number of SGL Descriptors.
    pub const INVALID_SGL_DESCRIPTOR_COUNT: Status = st(0, 0x0e);
    /// Data SGL Length Invalid.
    pub const DATA_SGL_LENGTH_INVALID: Status = st(0, 0x0f);
    /// Metadata SGL Length Invalid.
    pub const METADATA_SGL_LENGTH_INVALID: Status = st(0, 0x10);
    /// SGL Descriptor Type Invalid.
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = st(0, 0x11);
    /// Invalid Use of Controller Memory Buffer.
    pub const INVALID_CMB_USE: Status = st(0, 0x12);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Status = st(0, 0x13);
    /// Atomic Write Unit Exceeded.
    pub const ATOMIC_WRITE_UNIT_EXCEEDED: Status = st(0, 0x14);
    /// Operation Denied.
    pub const OPERATION_DENIED: Status = st(0, 0x15);
    /// SGL Offset Invalid.
    pub const SGL_OFFSET_INVALID: Status = st(0, 0x16);
    /// Host Identifier Inconsistent Format.
    pub const HOST_ID_INCONSISTENT_FORMAT: Status = st(0, 0x18);
    /// Keep Alive Timer Expired.
    pub const KEEP_ALIVE_TIMER_EXPIRED: Status = st(0, 0x19);
    /// Keep Alive Timeout Invalid.
    pub const KEEP_ALIVE_TIMEOUT_INVALID: Status = st(0, 0x1a);
    /// Command Aborted due to Preempt and Abort.
    pub const ABORTED_PREEMPT: Status = st(0, 0x1b);
    /// Sanitize Failed.
    pub const SANITIZE_FAILED: Status = st(0, 0x1c);
    /// Sanitize In Progress.
    pub const SANITIZE_IN_PROGRESS: Status = st(0, 0x1d);
    /// SGL Data Block Granularity Invalid.
    pub const SGL_DATA_BLOCK_GRANULARITY_INVALID: Status = st(0, 0x1e);
    /// Namespace is Write Protected.
    pub const NAMESPACE_WRITE_PROTECTED: Status = st(0, 0x20);
    /// Command Interrupted.
    pub const COMMAND_INTERRUPTED: Status = st(0, 0x21);
    /// Transient Transport Error.
    pub const TRANSIENT_TRANSPORT_ERROR: Status = st(0, 0x22);
    /// Admin Command Media Not Ready.
    pub const ADMIN_COMMAND_MEDIA_NOT_READY: Status = st(0, 0x24);
    /// LBA Out of Range (NVM command set).
    pub const LBA_OUT_OF_RANGE: Status = st(0, 0x80);
    /// Capacity Exceeded (NVM command set).
    pub const CAPACITY_EXCEEDED: Status = st(0, 0x81);
    /// Namespace Not Ready (NVM command set).
    pub const NAMESPACE_NOT_READY: Status = st(0, 0x82);
    /// Reservation Conflict (NVM command set).
    pub const RESERVATION_CONFLICT: Status = st(0, 0x83);
    /// Format In Progress (NVM command set).
    pub const FORMAT_IN_PROGRESS: Status = st(0, 0x84);

    // Command specific status (SCT 1), figure 97 and NVMe-oF 1.1 figure 17.
    /// Completion Queue Invalid.
    pub const COMPLETION_QUEUE_INVALID: Status = st(1, 0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_IDENTIFIER: Status = st(1, 0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Status = st(1, 0x02);
    /// Abort Command Limit Exceeded.
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = st(1, 0x03);
    /// Asynchronous Event Request Limit Exceeded.
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: Status = st(1, 0x05);
    /// Invalid Firmware Slot.
    pub const INVALID_FIRMWARE_SLOT: Status = st(1, 0x06);
    /// Invalid Firmware Image.
    pub const INVALID_FIRMWARE_IMAGE: Status = st(1, 0x07);
    /// Invalid Interrupt Vector.
    pub const INVALID_INTERRUPT_VECTOR: Status = st(1, 0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Status = st(1, 0x09);
    /// Invalid Format.
    pub const INVALID_FORMAT: Status = st(1, 0x0a);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Status = st(1, 0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Status = st(1, 0x0d);
    /// Feature Not Changeable.
    pub const FEATURE_NOT_CHANGEABLE: Status = st(1, 0x0e);
    /// Feature Not Namespace Specific.
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: Status = st(1, 0x0f);
    /// Overlapping Range.
    pub const OVERLAPPING_RANGE: Status = st(1, 0x14);
    /// Namespace Insufficient Capacity.
    pub const NAMESPACE_INSUFFICIENT_CAPACITY: Status = st(1, 0x15);
    /// Namespace Identifier Unavailable.
    pub const NAMESPACE_ID_UNAVAILABLE: Status = st(1, 0x16);
    /// Namespace Already Attached.
    pub const NAMESPACE_ALREADY_ATTACHED: Status = st(1, 0x18);
    /// Namespace Is Private.
    pub const NAMESPACE_IS_PRIVATE: Status = st(1, 0x19);
    /// Namespace Not Attached.
    pub const NAMESPACE_NOT_ATTACHED: Status = st(1, 0x1a);
    /// Controller List Invalid.
    pub const CONTROLLER_LIST_INVALID: Status = st(1, 0x1c);
    /// ANA Group Identifier Invalid.
    pub const ANA_GROUP_ID_INVALID: Status = st(1, 0x24);
    /// ANA Attach Failed.
    pub const ANA_ATTACH_FAILED: Status = st(1, 0x25);
    /// Conflicting Attributes (NVM command set, e.g. Dataset Management).
    pub const CONFLICTING_ATTRIBUTES: Status = st(1, 0x80);
    /// Invalid Protection Information (NVM command set).
    pub const INVALID_PROTECTION_INFORMATION: Status = st(1, 0x81);
    /// Attempted Write to Read Only Range (NVM command set).
    pub const WRITE_TO_READ_ONLY_RANGE: Status = st(1, 0x82);
    /// Fabrics: Incompatible Format (Connect RECFMT).
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = st(1, 0x80);
    /// Fabrics: Controller Busy (Connect).
    pub const CONNECT_CONTROLLER_BUSY: Status = st(1, 0x81);
    /// Fabrics: Connect Invalid Parameters (DW0 carries IATTR/IPO).
    pub const CONNECT_INVALID_PARAMETERS: Status = st(1, 0x82);
    /// Fabrics: Connect Restart Discovery.
    pub const CONNECT_RESTART_DISCOVERY: Status = st(1, 0x83);
    /// Fabrics: Connect Invalid Host (host not allowed on the subsystem).
    pub const CONNECT_INVALID_HOST: Status = st(1, 0x84);
    /// Fabrics: Invalid Queue Type.
    pub const INVALID_QUEUE_TYPE: Status = st(1, 0x85);
    /// Fabrics: Discover Restart (discovery log changed during read).
    pub const DISCOVER_RESTART: Status = st(1, 0x90);
    /// Fabrics: Authentication Required.
    pub const AUTHENTICATION_REQUIRED: Status = st(1, 0x91);

    // Media and data integrity errors (SCT 2), figure 98.
    /// Write Fault.
    pub const WRITE_FAULT: Status = st(2, 0x80);
    /// Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = st(2, 0x81);
    /// End-to-end Guard Check Error.
    pub const GUARD_CHECK_ERROR: Status = st(2, 0x82);
    /// End-to-end Application Tag Check Error.
    pub const APPLICATION_TAG_CHECK_ERROR: Status = st(2, 0x83);
    /// End-to-end Reference Tag Check Error.
    pub const REFERENCE_TAG_CHECK_ERROR: Status = st(2, 0x84);
    /// Compare Failure.
    pub const COMPARE_FAILURE: Status = st(2, 0x85);
    /// Access Denied.
    pub const ACCESS_DENIED: Status = st(2, 0x86);
    /// Deallocated or Unwritten Logical Block.
    pub const DEALLOCATED_OR_UNWRITTEN_BLOCK: Status = st(2, 0x87);

    // Path related status (SCT 3), figure 99.
    /// Internal Path Error.
    pub const INTERNAL_PATH_ERROR: Status = st(3, 0x00);
    /// Asymmetric Access Persistent Loss.
    pub const ANA_PERSISTENT_LOSS: Status = st(3, 0x01);
    /// Asymmetric Access Inaccessible.
    pub const ANA_INACCESSIBLE: Status = st(3, 0x02);
    /// Asymmetric Access Transition.
    pub const ANA_TRANSITION: Status = st(3, 0x03);
    /// Controller Pathing Error.
    pub const CONTROLLER_PATHING_ERROR: Status = st(3, 0x60);
    /// Host Pathing Error.
    pub const HOST_PATHING_ERROR: Status = st(3, 0x70);
    /// Command Aborted By Host.
    pub const ABORTED_BY_HOST: Status = st(3, 0x71);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cqe_layout() {
        let mut c = Cqe::new(0x1234, Status::LBA_OUT_OF_RANGE.with_dnr());
        c.set_sqhd(5);
        c.set_sqid(2);
        c.set_dw0(0xaabb_ccdd);
        c.set_phase(true);
        let b = c.as_bytes();
        assert_eq!(&b[0..4], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[8..12], &[5, 0, 2, 0]);
        assert_eq!(&b[12..14], &[0x34, 0x12]);
        // status field 0x4080 (DNR | SC 0x80) shifted left by one, phase bit 0 set
        assert_eq!(u16::from_le_bytes([b[14], b[15]]), (0x4080 << 1) | 1);
        assert!(c.phase());
        assert_eq!(c.status().code(), Status::LBA_OUT_OF_RANGE);
        assert!(c.status().dnr());
        c.set_status(Status::SUCCESS);
        assert!(c.phase(), "set_status keeps the phase");
        assert!(c.status().is_success());
        c.set_dw0_dw1(0x0102_0304_0506_0708);
        assert_eq!(c.dw0(), 0x0506_0708);
        assert_eq!(c.dw1(), 0x0102_0304);
    }

    #[test]
    fn status_helpers() {
        let s = Status::ANA_INACCESSIBLE;
        assert_eq!(s.sct(), Sct::PathRelated);
        assert_eq!(s.sc(), 0x02);
        assert!(s.is_ana_error());
        assert!(Status::ANA_TRANSITION.is_ana_error());
        assert!(!Status::HOST_PATHING_ERROR.is_ana_error());
        assert!(!Status::INVALID_FIELD.is_ana_error());
        let m = Status::INTERNAL_ERROR.with_more().with_crd(2);
        assert!(m.more() && !m.dnr());
        assert_eq!(m.crd(), 2);
        assert_eq!(m.code(), Status::INTERNAL_ERROR);
        assert_eq!(
            Status::new(Sct::CommandSpecific, 0x84),
            Status::CONNECT_INVALID_HOST
        );
        assert_eq!(Sct::from_bits(5), Sct::Reserved(5));
        assert_eq!(format!("{}", Status::INVALID_OPCODE), "sct 0 sc 0x01");
    }
}
