//! Command opcodes: admin (NVMe Base 2.0 section 5, figure 28), NVM command
//! set I/O (NVM Command Set 1.0 figure 17) and Fabrics command types
//! (NVMe-oF 1.1 section 3.3, figure 11).

/// Declares a `#[repr(u8)]` enum with `from_u8` / `as u8` conversions.
macro_rules! u8_enum {
    ($(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $v:ident = $n:expr, )* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vm])* $v = $n, )*
        }
        impl $name {
            /// Decodes a wire value; `None` for values this crate does not know.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $( $n => Some($name::$v), )*
                    _ => None,
                }
            }
            /// The wire value.
            pub const fn as_u8(self) -> u8 {
                self as u8
            }
        }
    };
}
pub(crate) use u8_enum;

u8_enum!(
    /// Admin command opcodes.
    AdminOpcode {
        /// Delete I/O Submission Queue.
        DeleteIoSq = 0x00,
        /// Create I/O Submission Queue.
        CreateIoSq = 0x01,
        /// Get Log Page.
        GetLogPage = 0x02,
        /// Delete I/O Completion Queue.
        DeleteIoCq = 0x04,
        /// Create I/O Completion Queue.
        CreateIoCq = 0x05,
        /// Identify.
        Identify = 0x06,
        /// Abort.
        Abort = 0x08,
        /// Set Features.
        SetFeatures = 0x09,
        /// Get Features.
        GetFeatures = 0x0a,
        /// Asynchronous Event Request.
        AsyncEventRequest = 0x0c,
        /// Namespace Management.
        NamespaceManagement = 0x0d,
        /// Firmware Commit.
        FirmwareCommit = 0x10,
        /// Firmware Image Download.
        FirmwareImageDownload = 0x11,
        /// Device Self-test.
        DeviceSelfTest = 0x14,
        /// Namespace Attachment.
        NamespaceAttachment = 0x15,
        /// Keep Alive.
        KeepAlive = 0x18,
        /// Directive Send.
        DirectiveSend = 0x19,
        /// Directive Receive.
        DirectiveReceive = 0x1a,
        /// Virtualization Management.
        VirtualizationManagement = 0x1c,
        /// NVMe-MI Send.
        NvmeMiSend = 0x1d,
        /// NVMe-MI Receive.
        NvmeMiReceive = 0x1e,
        /// Doorbell Buffer Config.
        DoorbellBufferConfig = 0x7c,
        /// Fabrics command (see [`FabricsType`]).
        Fabrics = 0x7f,
        /// Format NVM.
        FormatNvm = 0x80,
        /// Security Send.
        SecuritySend = 0x81,
        /// Security Receive.
        SecurityReceive = 0x82,
        /// Sanitize.
        Sanitize = 0x84,
        /// Get LBA Status.
        GetLbaStatus = 0x86,
    }
);

u8_enum!(
    /// NVM command set I/O opcodes.
    NvmOpcode {
        /// Flush.
        Flush = 0x00,
        /// Write.
        Write = 0x01,
        /// Read.
        Read = 0x02,
        /// Write Uncorrectable.
        WriteUncorrectable = 0x04,
        /// Compare.
        Compare = 0x05,
        /// Write Zeroes.
        WriteZeroes = 0x08,
        /// Dataset Management.
        DatasetManagement = 0x09,
        /// Verify.
        Verify = 0x0c,
        /// Reservation Register.
        ReservationRegister = 0x0d,
        /// Reservation Report.
        ReservationReport = 0x0e,
        /// Reservation Acquire.
        ReservationAcquire = 0x11,
        /// Reservation Release.
        ReservationRelease = 0x15,
        /// Copy.
        Copy = 0x19,
        /// Fabrics command (on an I/O queue only Connect is valid).
        Fabrics = 0x7f,
    }
);

u8_enum!(
    /// Fabrics command type (FCTYPE, SQE byte 4 when the opcode is 7Fh).
    FabricsType {
        /// Property Set.
        PropertySet = 0x00,
        /// Connect.
        Connect = 0x01,
        /// Property Get.
        PropertyGet = 0x04,
        /// Authentication Send.
        AuthenticationSend = 0x05,
        /// Authentication Receive.
        AuthenticationReceive = 0x06,
        /// Disconnect.
        Disconnect = 0x08,
    }
);

/// Data transfer direction encoded in bits 1:0 of every opcode (section 5.1 figure 28):
/// 00b none, 01b host to controller, 10b controller to host, 11b bidirectional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    /// No data transfer.
    None,
    /// Host to controller (write-like).
    HostToController,
    /// Controller to host (read-like).
    ControllerToHost,
    /// Bidirectional.
    Bidirectional,
}

impl DataDirection {
    /// Direction of an opcode. Fabrics commands (7Fh) carry the direction in
    /// bits 1:0 of FCTYPE instead; pass FCTYPE for those.
    pub const fn of(opcode: u8) -> Self {
        match opcode & 3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_roundtrip_and_direction() {
        for v in 0..=255u8 {
            if let Some(o) = AdminOpcode::from_u8(v) {
                assert_eq!(o.as_u8(), v);
            }
            if let Some(o) = NvmOpcode::from_u8(v) {
                assert_eq!(o.as_u8(), v);
            }
        }
        assert_eq!(AdminOpcode::from_u8(0x06), Some(AdminOpcode::Identify));
        assert_eq!(AdminOpcode::from_u8(0x03), None);
        assert_eq!(NvmOpcode::from_u8(0x09), Some(NvmOpcode::DatasetManagement));
        assert_eq!(FabricsType::from_u8(0x01), Some(FabricsType::Connect));
        assert_eq!(
            DataDirection::of(NvmOpcode::Write as u8),
            DataDirection::HostToController
        );
        assert_eq!(
            DataDirection::of(NvmOpcode::Read as u8),
            DataDirection::ControllerToHost
        );
        assert_eq!(
            DataDirection::of(FabricsType::Connect as u8),
            DataDirection::HostToController
        );
        assert_eq!(
            DataDirection::of(FabricsType::PropertyGet as u8),
            DataDirection::None
        );
        assert_eq!(
            DataDirection::of(AdminOpcode::Identify as u8),
            DataDirection::ControllerToHost
        );
    }
}
