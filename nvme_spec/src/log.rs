//! Log pages (NVMe Base 2.0 section 5.16.1): Error Information (figure 205),
//! SMART / Health Information (figure 207), Changed Namespace List (5.16.1.5),
//! Asymmetric Namespace Access (figures 225-227), and the Discovery log page
//! (NVMe-oF 1.1 section 5.3, figures 37-38).

use thiserror::Error;

use crate::bytes::{le_fields, text_fields, wire_struct};
use crate::identify::NsIdList;

/// Errors building or parsing variable-length log pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LogError {
    /// The buffer ends inside a structure.
    #[error("log page truncated: need {need} bytes at offset {offset}, have {have}")]
    Truncated {
        /// Offset of the structure.
        offset: usize,
        /// Bytes needed from that offset.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Log page identifiers (figure 202).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LogPageId {
    /// Supported Log Pages.
    SupportedLogPages = 0x00,
    /// Error Information.
    ErrorInformation = 0x01,
    /// SMART / Health Information.
    SmartHealth = 0x02,
    /// Firmware Slot Information.
    FirmwareSlot = 0x03,
    /// Changed Namespace List.
    ChangedNamespaceList = 0x04,
    /// Commands Supported and Effects.
    CommandEffects = 0x05,
    /// Device Self-test.
    DeviceSelfTest = 0x06,
    /// Telemetry Host-Initiated.
    TelemetryHost = 0x07,
    /// Telemetry Controller-Initiated.
    TelemetryController = 0x08,
    /// Endurance Group Information.
    EnduranceGroup = 0x09,
    /// Asymmetric Namespace Access.
    Ana = 0x0c,
    /// Persistent Event Log.
    PersistentEvent = 0x0d,
    /// Discovery (NVMe-oF).
    Discovery = 0x70,
    /// Reservation Notification.
    ReservationNotification = 0x80,
    /// Sanitize Status.
    SanitizeStatus = 0x81,
}

impl LogPageId {
    /// Decodes a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        use LogPageId::*;
        Some(match v {
            0x00 => SupportedLogPages,
            0x01 => ErrorInformation,
            0x02 => SmartHealth,
            0x03 => FirmwareSlot,
            0x04 => ChangedNamespaceList,
            0x05 => CommandEffects,
            0x06 => DeviceSelfTest,
            0x07 => TelemetryHost,
            0x08 => TelemetryController,
            0x09 => EnduranceGroup,
            0x0c => Ana,
            0x0d => PersistentEvent,
            0x70 => Discovery,
            0x80 => ReservationNotification,
            0x81 => SanitizeStatus,
            _ => return None,
        })
    }
}

wire_struct!(
    /// One 64-byte Error Information log entry.
    ErrorLogEntry, 64, debug [error_count, sqid, cid, status_phase, nsid, lba]
);

impl ErrorLogEntry {
    le_fields! { 64;
        /// Error count (unique, increasing; 0 = invalid entry).
        error_count, set_error_count: u64 @ 0;
        /// Submission queue ID.
        sqid, set_sqid: u16 @ 8;
        /// Command ID.
        cid, set_cid: u16 @ 10;
        /// Status field (bits 15:1) and phase tag (bit 0) of the completion.
        status_phase, set_status_phase: u16 @ 12;
        /// Parameter error location: byte (bits 7:0) and bit (10:8) in the command.
        parameter_error_location, set_parameter_error_location: u16 @ 14;
        /// LBA of the error.
        lba, set_lba: u64 @ 16;
        /// Namespace.
        nsid, set_nsid: u32 @ 24;
        /// Vendor specific information available (log page id).
        vs_info, set_vs_info: u8 @ 28;
        /// Transport type (see [`trtype`]).
        trtype, set_trtype: u8 @ 29;
        /// Command specific information.
        command_specific, set_command_specific: u64 @ 32;
        /// Transport type specific information.
        transport_specific, set_transport_specific: u16 @ 40;
    }
}

wire_struct!(
    /// SMART / Health Information log page, 512 bytes. 128-bit counters.
    SmartLog, 512,
    debug [critical_warning, composite_temperature, data_units_read, data_units_written,
           host_read_commands, host_write_commands, power_on_hours, media_errors]
);

impl SmartLog {
    le_fields! { 512;
        /// Critical warning bits.
        critical_warning, set_critical_warning: u8 @ 0;
        /// Composite temperature (Kelvin).
        composite_temperature, set_composite_temperature: u16 @ 1;
        /// Available spare (percent).
        available_spare, set_available_spare: u8 @ 3;
        /// Available spare threshold (percent).
        available_spare_threshold, set_available_spare_threshold: u8 @ 4;
        /// Percentage used.
        percentage_used, set_percentage_used: u8 @ 5;
        /// Endurance group critical warning summary.
        endurance_group_warning, set_endurance_group_warning: u8 @ 6;
        /// Data units read (thousands of 512-byte units, rounded up).
        data_units_read, set_data_units_read: u128 @ 32;
        /// Data units written (thousands of 512-byte units, rounded up).
        data_units_written, set_data_units_written: u128 @ 48;
        /// Host read commands.
        host_read_commands, set_host_read_commands: u128 @ 64;
        /// Host write commands.
        host_write_commands, set_host_write_commands: u128 @ 80;
        /// Controller busy time (minutes).
        controller_busy_time, set_controller_busy_time: u128 @ 96;
        /// Power cycles.
        power_cycles, set_power_cycles: u128 @ 112;
        /// Power on hours.
        power_on_hours, set_power_on_hours: u128 @ 128;
        /// Unsafe shutdowns.
        unsafe_shutdowns, set_unsafe_shutdowns: u128 @ 144;
        /// Media and data integrity errors.
        media_errors, set_media_errors: u128 @ 160;
        /// Number of error information log entries over the controller's life.
        error_log_entries, set_error_log_entries: u128 @ 176;
        /// Warning composite temperature time (minutes).
        warning_temp_time, set_warning_temp_time: u32 @ 192;
        /// Critical composite temperature time (minutes).
        critical_temp_time, set_critical_temp_time: u32 @ 196;
    }

    /// Data units (1000 x 512 bytes, rounded up) for a byte count, as the
    /// SMART counters report them.
    pub const fn data_units(bytes: u128) -> u128 {
        bytes.div_ceil(512 * 1000)
    }
}

/// The Changed Namespace List log page (4096 bytes): up to 1024 NSIDs; when
/// more than 1024 changed, the first entry is FFFFFFFFh and the rest zero.
pub fn changed_ns_list(changed_sorted: &[u32]) -> NsIdList {
    if changed_sorted.len() > NsIdList::CAPACITY {
        let mut l = NsIdList::zeroed();
        crate::bytes::put(&mut l.0, 0, u32::MAX);
        return l;
    }
    NsIdList::active_after(changed_sorted, 0)
}

/// ANA state (figure 227).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnaState {
    /// ANA Optimized.
    Optimized = 0x01,
    /// ANA Non-Optimized.
    NonOptimized = 0x02,
    /// ANA Inaccessible.
    Inaccessible = 0x03,
    /// ANA Persistent Loss.
    PersistentLoss = 0x04,
    /// ANA Change.
    Change = 0x0f,
}

impl AnaState {
    /// Decodes bits 3:0 of the state byte.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v & 0xf {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            0x03 => AnaState::Inaccessible,
            0x04 => AnaState::PersistentLoss,
            0x0f => AnaState::Change,
            _ => return None,
        })
    }
    /// The completion status a controller returns for I/O to a namespace in
    /// this state, if I/O is not served (section 8.1.3).
    pub const fn io_status(self) -> Option<crate::cqe::Status> {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(crate::cqe::Status::ANA_INACCESSIBLE),
            AnaState::PersistentLoss => Some(crate::cqe::Status::ANA_PERSISTENT_LOSS),
            AnaState::Change => Some(crate::cqe::Status::ANA_TRANSITION),
        }
    }
}

/// Get Log Page LSP bit for the ANA log: Return Groups Only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 1 << 0;
/// Size of the ANA log header.
pub const ANA_HEADER_LEN: usize = 16;
/// Size of an ANA group descriptor without its NSID list.
pub const ANA_GROUP_DESC_LEN: usize = 32;

/// One ANA group descriptor, as built or parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnaGroup<'a> {
    /// ANA group ID.
    pub grpid: u32,
    /// Change count of this group.
    pub change_count: u64,
    /// State byte bits 3:0 (use [`AnaState::from_u8`]).
    pub state: u8,
    /// Little-endian NSID list bytes (4 per NSID; empty with RGO).
    pub nsids_le: &'a [u8],
}

impl AnaGroup<'_> {
    /// Iterates over the NSIDs.
    pub fn nsids(&self) -> impl Iterator<Item = u32> + '_ {
        self.nsids_le
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Builds an ANA log page into a caller-owned buffer (cleared first).
/// Layout: header (change count u64, group count u16, 6 reserved), then per
/// group: ANAGRPID u32, NNSIDS u32, change count u64, state u8, 15 reserved,
/// NSIDs.
#[derive(Debug)]
pub struct AnaLogBuilder<'a> {
    buf: &'a mut Vec<u8>,
    groups: u16,
}

impl<'a> AnaLogBuilder<'a> {
    /// Starts a log with the given global change count.
    pub fn new(buf: &'a mut Vec<u8>, change_count: u64) -> Self {
        buf.clear();
        buf.extend_from_slice(&change_count.to_le_bytes());
        buf.extend_from_slice(&[0u8; 8]);
        AnaLogBuilder { buf, groups: 0 }
    }

    /// Appends a group descriptor with its NSIDs (pass an empty slice for RGO).
    pub fn group(
        &mut self,
        grpid: u32,
        state: AnaState,
        change_count: u64,
        nsids: &[u32],
    ) -> &mut Self {
        self.buf.extend_from_slice(&grpid.to_le_bytes());
        self.buf
            .extend_from_slice(&(nsids.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&change_count.to_le_bytes());
        self.buf.push(state as u8);
        self.buf.extend_from_slice(&[0u8; 15]);
        for n in nsids {
            self.buf.extend_from_slice(&n.to_le_bytes());
        }
        self.groups = self.groups.saturating_add(1);
        self.buf[8..10].copy_from_slice(&self.groups.to_le_bytes());
        self
    }

    /// Length of the log built so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.groups == 0
    }
}

/// Parses an ANA log page: returns the change count and the groups.
pub fn parse_ana_log(b: &[u8]) -> Result<(u64, Vec<AnaGroup<'_>>), LogError> {
    let need = |offset: usize, n: usize| -> Result<(), LogError> {
        if b.len() < offset + n {
            Err(LogError::Truncated {
                offset,
                need: n,
                have: b.len().saturating_sub(offset),
            })
        } else {
            Ok(())
        }
    };
    need(0, ANA_HEADER_LEN)?;
    let change = crate::bytes::get::<u64>(b, 0);
    let ngroups = crate::bytes::get::<u16>(b, 8) as usize;
    let mut off = ANA_HEADER_LEN;
    let mut groups = Vec::with_capacity(ngroups.min(1024));
    for _ in 0..ngroups {
        need(off, ANA_GROUP_DESC_LEN)?;
        let nn = crate::bytes::get::<u32>(b, off + 4) as usize;
        let list = nn.checked_mul(4).ok_or(LogError::Truncated {
            offset: off,
            need: usize::MAX,
            have: b.len() - off,
        })?;
        need(off + ANA_GROUP_DESC_LEN, list)?;
        groups.push(AnaGroup {
            grpid: crate::bytes::get(b, off),
            change_count: crate::bytes::get(b, off + 8),
            state: b[off + 16] & 0xf,
            nsids_le: &b[off + ANA_GROUP_DESC_LEN..off + ANA_GROUP_DESC_LEN + list],
        });
        off += ANA_GROUP_DESC_LEN + list;
    }
    Ok((change, groups))
}

/// Transport type (TRTYPE, NVMe-oF figure 38).
pub mod trtype {
    /// RDMA.
    pub const RDMA: u8 = 1;
    /// Fibre Channel.
    pub const FC: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 3;
    /// Intra-host loopback.
    pub const LOOP: u8 = 0xfe;
}

/// Address family (ADRFAM).
pub mod adrfam {
    /// IPv4.
    pub const IPV4: u8 = 1;
    /// IPv6.
    pub const IPV6: u8 = 2;
    /// InfiniBand.
    pub const IB: u8 = 3;
    /// Fibre Channel.
    pub const FC: u8 = 4;
    /// Intra-host.
    pub const LOOP: u8 = 0xfe;
}

/// Subsystem type (SUBTYPE).
pub mod subtype {
    /// Referral to another discovery service.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    /// NVM subsystem.
    pub const NVME: u8 = 2;
    /// The current discovery subsystem.
    pub const DISCOVERY_CURRENT: u8 = 3;
}

/// Transport requirements (TREQ): bits 1:0 secure channel, bit 2 SQ flow control disable.
pub mod treq {
    /// Secure channel not specified.
    pub const SECURE_NOT_SPECIFIED: u8 = 0;
    /// Secure channel required.
    pub const SECURE_REQUIRED: u8 = 1;
    /// Secure channel not required.
    pub const SECURE_NOT_REQUIRED: u8 = 2;
    /// The subsystem supports disabling SQ flow control.
    pub const SQFLOW_DISABLE_SUPPORTED: u8 = 1 << 2;
}

/// NVMe/TCP security type (TSAS byte 0 for TRTYPE TCP).
pub mod tcp_sectype {
    /// No security.
    pub const NONE: u8 = 0;
    /// TLS 1.2.
    pub const TLS12: u8 = 1;
    /// TLS 1.3.
    pub const TLS13: u8 = 2;
}

wire_struct!(
    /// Discovery log page header (1024 bytes; entries follow at 1024 + 1024*i).
    DiscoveryLogHeader, 1024, debug [genctr, numrec, recfmt]
);

impl DiscoveryLogHeader {
    le_fields! { 1024;
        /// Generation counter (changes whenever the log changes).
        genctr, set_genctr: u64 @ 0;
        /// Number of records.
        numrec, set_numrec: u64 @ 8;
        /// Record format (0).
        recfmt, set_recfmt: u16 @ 16;
    }
}

wire_struct!(
    /// One 1024-byte discovery log page entry.
    DiscoveryLogEntry, 1024,
    debug [trtype, adrfam, subtype, treq, portid, cntlid, asqsz, trsvcid, subnqn, traddr]
);

impl DiscoveryLogEntry {
    le_fields! { 1024;
        /// Transport type (see [`trtype`]).
        trtype, set_trtype: u8 @ 0;
        /// Address family (see [`adrfam`]).
        adrfam, set_adrfam: u8 @ 1;
        /// Subsystem type (see [`subtype`]).
        subtype, set_subtype: u8 @ 2;
        /// Transport requirements (see [`treq`]).
        treq, set_treq: u8 @ 3;
        /// NVM subsystem port ID.
        portid, set_portid: u16 @ 4;
        /// Controller ID (FFFFh: dynamic model).
        cntlid, set_cntlid: u16 @ 6;
        /// Admin max submission queue size.
        asqsz, set_asqsz: u16 @ 8;
        /// Entry flags.
        eflags, set_eflags: u16 @ 10;
        /// TCP security type (TSAS byte 0, see [`tcp_sectype`]).
        tcp_sectype, set_tcp_sectype: u8 @ 768;
    }
    text_fields! { 1024;
        /// Transport service identifier (TCP port number as text).
        Ascii trsvcid, set_trsvcid @ 32, 32;
        /// Subsystem NQN.
        Nqn subnqn, set_subnqn @ 256, 256;
        /// Transport address (IP address as text).
        Ascii traddr, set_traddr @ 512, 256;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ana_log_build_and_parse() {
        let mut buf = Vec::new();
        let mut b = AnaLogBuilder::new(&mut buf, 7);
        b.group(1, AnaState::Optimized, 3, &[1, 2]);
        b.group(2, AnaState::Inaccessible, 4, &[]);
        assert_eq!(b.len(), 16 + 32 + 8 + 32);
        assert_eq!(&buf[0..10], &[7, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert_eq!(&buf[16..24], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(buf[32], 0x01);
        assert_eq!(&buf[48..56], &[1, 0, 0, 0, 2, 0, 0, 0]);
        let (cc, groups) = parse_ana_log(&buf).unwrap();
        assert_eq!(cc, 7);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].nsids().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            AnaState::from_u8(groups[1].state),
            Some(AnaState::Inaccessible)
        );
        assert_eq!(groups[1].change_count, 4);
        assert!(matches!(
            parse_ana_log(&buf[..60]),
            Err(LogError::Truncated { .. })
        ));
        assert!(parse_ana_log(&buf[..10]).is_err());
        assert_eq!(
            AnaState::Inaccessible.io_status(),
            Some(crate::Status::ANA_INACCESSIBLE)
        );
        assert_eq!(
            AnaState::Change.io_status(),
            Some(crate::Status::ANA_TRANSITION)
        );
        assert_eq!(AnaState::NonOptimized.io_status(), None);
    }

    #[test]
    fn discovery_entry_layout() {
        let mut e = DiscoveryLogEntry::zeroed();
        e.set_trtype(trtype::TCP);
        e.set_adrfam(adrfam::IPV4);
        e.set_subtype(subtype::NVME);
        e.set_treq(treq::SECURE_NOT_REQUIRED);
        e.set_portid(1);
        e.set_cntlid(0xffff);
        e.set_asqsz(32);
        e.set_trsvcid("4420").unwrap();
        e.set_subnqn("nqn.2024-01.io.vmpath:a").unwrap();
        e.set_traddr("127.0.0.1").unwrap();
        e.set_tcp_sectype(tcp_sectype::NONE);
        let b = e.as_bytes();
        assert_eq!(&b[0..10], &[3, 1, 2, 2, 1, 0, 0xff, 0xff, 32, 0]);
        assert_eq!(&b[32..37], b"4420 ");
        assert_eq!(&b[256..260], b"nqn.");
        assert_eq!(&b[512..522], b"127.0.0.1 ");
        assert_eq!(e.traddr().unwrap(), "127.0.0.1");
        assert_eq!(e.trsvcid().unwrap(), "4420");
        let mut h = DiscoveryLogHeader::zeroed();
        h.set_genctr(5);
        h.set_numrec(2);
        assert_eq!(&h.0[8..16], &[2, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn smart_error_changed() {
        let mut s = SmartLog::zeroed();
        s.set_data_units_read(SmartLog::data_units(512 * 1000 + 1));
        s.set_composite_temperature(300);
        assert_eq!(&s.0[32..34], &[2, 0]);
        assert_eq!(&s.0[1..3], &300u16.to_le_bytes());
        let mut e = ErrorLogEntry::zeroed();
        e.set_error_count(1);
        e.set_cid(9);
        e.set_nsid(3);
        assert_eq!(&e.0[10..12], &[9, 0]);
        assert_eq!(&e.0[24..28], &[3, 0, 0, 0]);
        let l = changed_ns_list(&[3, 4]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![3, 4]);
        let many: Vec<u32> = (1..=1025).collect();
        let l = changed_ns_list(&many);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![u32::MAX]);
        assert_eq!(LogPageId::from_u8(0x0c), Some(LogPageId::Ana));
        assert_eq!(LogPageId::from_u8(0x70), Some(LogPageId::Discovery));
        assert_eq!(LogPageId::from_u8(0x55), None);
    }
}
