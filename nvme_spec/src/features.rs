//! Features (NVMe Base 2.0 section 5.27.1, figure 319) and Asynchronous Event
//! Request completions (section 5.2, figures 146-151).

use crate::log::LogPageId;
use crate::opcode::u8_enum;

u8_enum!(
    /// Feature identifiers.
    FeatureId {
        /// Arbitration.
        Arbitration = 0x01,
        /// Power Management.
        PowerManagement = 0x02,
        /// LBA Range Type.
        LbaRangeType = 0x03,
        /// Temperature Threshold.
        TemperatureThreshold = 0x04,
        /// Error Recovery.
        ErrorRecovery = 0x05,
        /// Volatile Write Cache (CDW11 bit 0: WCE).
        VolatileWriteCache = 0x06,
        /// Number of Queues (see [`NumberOfQueues`]).
        NumberOfQueues = 0x07,
        /// Interrupt Coalescing.
        InterruptCoalescing = 0x08,
        /// Interrupt Vector Configuration.
        InterruptVectorConfig = 0x09,
        /// Write Atomicity Normal.
        WriteAtomicity = 0x0a,
        /// Asynchronous Event Configuration (see [`aec`]).
        AsyncEventConfig = 0x0b,
        /// Autonomous Power State Transition.
        AutonomousPowerState = 0x0c,
        /// Host Memory Buffer.
        HostMemoryBuffer = 0x0d,
        /// Timestamp.
        Timestamp = 0x0e,
        /// Keep Alive Timer (CDW11: KATO in milliseconds).
        KeepAliveTimer = 0x0f,
        /// Host Controlled Thermal Management.
        HostThermalManagement = 0x10,
        /// Non-Operational Power State Config.
        NonOpPowerState = 0x11,
        /// Host Identifier.
        HostIdentifier = 0x81,
        /// Reservation Notification Mask.
        ReservationNotificationMask = 0x82,
        /// Reservation Persistence.
        ReservationPersistence = 0x83,
    }
);

/// Number of Queues feature: CDW11 / completion DW0 carry 0-based counts of
/// submission queues (bits 15:0) and completion queues (bits 31:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NumberOfQueues {
    /// Number of I/O submission queues (1-based).
    pub nsq: u32,
    /// Number of I/O completion queues (1-based).
    pub ncq: u32,
}

impl NumberOfQueues {
    /// Decodes a CDW11 / DW0 value (the 0-based fields plus one; FFFFh is
    /// invalid in a request and decodes as 65536).
    pub const fn from_dw(v: u32) -> Self {
        NumberOfQueues {
            nsq: (v & 0xffff) + 1,
            ncq: (v >> 16) + 1,
        }
    }
    /// Encodes to the 0-based dword (counts clamped to 1..=65535 queues).
    pub const fn to_dw(self) -> u32 {
        let s = clamp_q(self.nsq);
        let c = clamp_q(self.ncq);
        (s - 1) | (c - 1) << 16
    }
}

const fn clamp_q(n: u32) -> u32 {
    if n == 0 {
        1
    } else if n > 0xffff {
        0xffff
    } else {
        n
    }
}

/// Asynchronous Event Configuration bits (CDW11 of feature 0Bh, figure 327).
pub mod aec {
    /// SMART / Health critical warnings (bits 7:0).
    pub const SMART_MASK: u32 = 0xff;
    /// Namespace Attribute Notices.
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    /// Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// Telemetry Log Notices.
    pub const TELEMETRY: u32 = 1 << 10;
    /// ANA Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Discovery Log Page Change Notification.
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// Asynchronous event type (completion DW0 bits 2:0, figure 146).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AsyncEventType {
    /// Error status.
    Error = 0,
    /// SMART / Health status.
    SmartHealth = 1,
    /// Notice.
    Notice = 2,
    /// Immediate.
    Immediate = 3,
    /// I/O command specific status.
    IoCommandSpecific = 6,
    /// Vendor specific.
    VendorSpecific = 7,
}

/// Asynchronous event information for type Notice (figure 149).
pub mod notice {
    /// Namespace Attribute Changed (log page 04h).
    pub const NS_ATTRIBUTE_CHANGED: u8 = 0x00;
    /// Firmware Activation Starting.
    pub const FW_ACTIVATION_STARTING: u8 = 0x01;
    /// Telemetry Log Changed.
    pub const TELEMETRY_LOG_CHANGED: u8 = 0x02;
    /// Asymmetric Namespace Access Change (log page 0Ch).
    pub const ANA_CHANGE: u8 = 0x03;
    /// Discovery Log Page Change (log page 70h).
    pub const DISCOVERY_LOG_CHANGE: u8 = 0xf0;
}

/// An Asynchronous Event Request completion DW0: type (bits 2:0),
/// information (bits 15:8), log page identifier (bits 23:16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type.
    pub event_type: u8,
    /// Event information.
    pub info: u8,
    /// Log page the host reads to clear the event.
    pub log_page: u8,
}

impl AsyncEvent {
    /// "Namespace attribute changed" notice (read log 04h).
    pub const NS_ATTRIBUTE_CHANGED: AsyncEvent = AsyncEvent {
        event_type: AsyncEventType::Notice as u8,
        info: notice::NS_ATTRIBUTE_CHANGED,
        log_page: LogPageId::ChangedNamespaceList as u8,
    };
    /// "ANA change" notice (read log 0Ch).
    pub const ANA_CHANGE: AsyncEvent = AsyncEvent {
        event_type: AsyncEventType::Notice as u8,
        info: notice::ANA_CHANGE,
        log_page: LogPageId::Ana as u8,
    };
    /// "Discovery log page change" notice (read log 70h).
    pub const DISCOVERY_LOG_CHANGE: AsyncEvent = AsyncEvent {
        event_type: AsyncEventType::Notice as u8,
        info: notice::DISCOVERY_LOG_CHANGE,
        log_page: LogPageId::Discovery as u8,
    };

    /// Encodes completion DW0.
    pub const fn to_dw0(self) -> u32 {
        (self.event_type & 7) as u32 | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }
    /// Decodes completion DW0.
    pub const fn from_dw0(v: u32) -> Self {
        AsyncEvent {
            event_type: (v & 7) as u8,
            info: (v >> 8) as u8,
            log_page: (v >> 16) as u8,
        }
    }
    /// The Asynchronous Event Configuration bit that enables this event, if any.
    pub const fn aec_bit(self) -> Option<u32> {
        if self.event_type != AsyncEventType::Notice as u8 {
            return None;
        }
        match self.info {
            notice::NS_ATTRIBUTE_CHANGED => Some(aec::NS_ATTRIBUTE),
            notice::FW_ACTIVATION_STARTING => Some(aec::FW_ACTIVATION),
            notice::TELEMETRY_LOG_CHANGED => Some(aec::TELEMETRY),
            notice::ANA_CHANGE => Some(aec::ANA_CHANGE),
            notice::DISCOVERY_LOG_CHANGE => Some(aec::DISCOVERY_LOG_CHANGE),
            _ => None,
        }
    }
}

/// Volatile Write Cache feature: CDW11 bit 0 Write Cache Enable.
pub const VWC_WCE: u32 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_of_queues() {
        let q = NumberOfQueues::from_dw(0x0003_0007);
        assert_eq!((q.nsq, q.ncq), (8, 4));
        assert_eq!(q.to_dw(), 0x0003_0007);
        assert_eq!(
            NumberOfQueues {
                nsq: 0,
                ncq: 1 << 20
            }
            .to_dw(),
            0xfffe_0000
        );
    }

    #[test]
    fn aen_encoding() {
        assert_eq!(AsyncEvent::ANA_CHANGE.to_dw0(), 0x000c_0302);
        assert_eq!(AsyncEvent::NS_ATTRIBUTE_CHANGED.to_dw0(), 0x0004_0002);
        assert_eq!(AsyncEvent::DISCOVERY_LOG_CHANGE.to_dw0(), 0x0070_f002);
        assert_eq!(AsyncEvent::from_dw0(0x000c_0302), AsyncEvent::ANA_CHANGE);
        assert_eq!(AsyncEvent::ANA_CHANGE.aec_bit(), Some(aec::ANA_CHANGE));
        assert_eq!(
            AsyncEvent {
                event_type: 1,
                info: 0,
                log_page: 2
            }
            .aec_bit(),
            None
        );
        assert_eq!(FeatureId::from_u8(0x0f), Some(FeatureId::KeepAliveTimer));
        assert_eq!(FeatureId::from_u8(0x07), Some(FeatureId::NumberOfQueues));
    }
}
