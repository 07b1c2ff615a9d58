//! NVMe/TCP PDU definitions (NVMe-oF 1.1 section 7.4 / TP 8000 section 3.6):
//! PDU types, common header flags, fixed header lengths, and the typed PDU
//! headers that the decoder yields and the encoder writes.

use nvme_spec::{Cqe, Sqe};

/// Length of the common header (CH).
pub const CH_LEN: usize = 8;
/// Length of a header or data digest (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// HLEN and PLEN of ICReq / ICResp.
pub const IC_LEN: usize = 128;
/// HLEN of H2CTermReq / C2HTermReq.
pub const TERM_HLEN: usize = 24;
/// Maximum error data (the offending PDU header) in a TermReq: PLEN <= 152.
pub const TERM_MAX_DATA: usize = 128;
/// HLEN of CapsuleCmd (CH + 64-byte SQE).
pub const CAPSULE_CMD_HLEN: usize = 72;
/// HLEN of CapsuleResp (CH + 16-byte CQE).
pub const CAPSULE_RESP_HLEN: usize = 24;
/// HLEN of H2CData and C2HData.
pub const DATA_HLEN: usize = 24;
/// HLEN of R2T.
pub const R2T_HLEN: usize = 24;
/// Largest HLEN of any PDU.
pub const MAX_HLEN: usize = IC_LEN;
/// Smallest MAXH2CDATA a controller may advertise.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest HPDA / CPDA value (alignment (PDA+1)*4 = 128 bytes).
pub const MAX_PDA: u8 = 31;
/// Largest header an [`crate::Encoder`] writes for a non-IC PDU (header,
/// header digest and the largest padding): size scratch buffers with this.
pub const MAX_ENCODED_HEADER_LEN: usize = 256;
/// PDU format version 1.0.
pub const PFV_1_0: u16 = 0;

/// Byte alignment in bytes of a PDA value (HPDA/CPDA): (PDA + 1) * 4.
#[inline]
pub const fn pda_alignment(pda: u8) -> usize {
    (pda as usize + 1) * 4
}

/// PDU types (TP 8000 figure 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    /// Initialize Connection Request (host to controller).
    IcReq = 0x00,
    /// Initialize Connection Response (controller to host).
    IcResp = 0x01,
    /// Host to Controller Terminate Connection Request.
    H2CTermReq = 0x02,
    /// Controller to Host Terminate Connection Request.
    C2HTermReq = 0x03,
    /// Command Capsule (host to controller).
    CapsuleCmd = 0x04,
    /// Response Capsule (controller to host).
    CapsuleResp = 0x05,
    /// Host to Controller Data.
    H2CData = 0x06,
    /// Controller to Host Data.
    C2HData = 0x07,
    /// Ready to Transfer (controller to host).
    R2T = 0x09,
}

impl PduType {
    /// Decodes a PDU-type byte.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }
    /// True for PDUs sent by the host (bit 0 of the type clear).
    #[inline]
    pub const fn is_host_to_controller(self) -> bool {
        (self as u8) & 1 == 0
    }
    /// The HLEN every PDU of this type has.
    #[inline]
    pub const fn hlen(self) -> usize {
        match self {
            PduType::IcReq | PduType::IcResp => IC_LEN,
            PduType::H2CTermReq | PduType::C2HTermReq => TERM_HLEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2CData | PduType::C2HData => DATA_HLEN,
            PduType::R2T => R2T_HLEN,
        }
    }
    /// True if the PDU carries a header digest when header digests are enabled.
    #[inline]
    pub const fn has_header_digest(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd
                | PduType::CapsuleResp
                | PduType::H2CData
                | PduType::C2HData
                | PduType::R2T
        )
    }
    /// True if the PDU may carry data with PDO/padding and data digest.
    #[inline]
    pub const fn has_pdu_data(self) -> bool {
        matches!(
            self,
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData
        )
    }
    /// Flags that are valid for this type.
    #[inline]
    pub const fn valid_flags(self) -> u8 {
        match self {
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq => 0,
            PduType::CapsuleCmd => flags::HDGSTF | flags::DDGSTF,
            PduType::CapsuleResp | PduType::R2T => flags::HDGSTF,
            PduType::H2CData => flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU,
            PduType::C2HData => flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU | flags::SUCCESS,
        }
    }
}

/// Common header flags (TP 8000 figure 21 and the data PDU figures).
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData / C2HData: last data PDU of the transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command completed successfully; no CapsuleResp follows
    /// (only with LAST_PDU).
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq / ICResp DGST byte bits.
pub mod dgst {
    /// Header digest enable.
    pub const HDGST_ENABLE: u8 = 1 << 0;
    /// Data digest enable.
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// Fatal Error Status of a TermReq (TP 8000 figure 26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// Invalid PDU Header Field; FEI is the byte offset of the field.
    InvalidHeaderField = 0x01,
    /// PDU Sequence Error.
    PduSequenceError = 0x02,
    /// Header Digest Error.
    HeaderDigestError = 0x03,
    /// Data Transfer Out of Range.
    DataTransferOutOfRange = 0x04,
    /// Data Transfer Limit Exceeded (also R2T Limit Exceeded, same value).
    DataTransferLimitExceeded = 0x05,
    /// Unsupported Parameter; FEI is the byte offset of the parameter.
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// R2T Limit Exceeded shares the value of Data Transfer Limit Exceeded.
    pub const R2T_LIMIT_EXCEEDED: Fes = Fes::DataTransferLimitExceeded;

    /// Decodes a FES value.
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataTransferOutOfRange,
            0x05 => Fes::DataTransferLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// Which side of the connection a codec runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// NVM subsystem side: receives host-to-controller PDUs.
    Controller,
    /// Host side: receives controller-to-host PDUs.
    Host,
}

/// Parameters negotiated by ICReq/ICResp (TP 8000 section 3.6.2.2-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Session {
    /// Header digests enabled.
    pub header_digest: bool,
    /// Data digests enabled.
    pub data_digest: bool,
    /// PDA of data PDUs this side receives (controller: its CPDA; host: its HPDA).
    pub rx_pda: u8,
    /// PDA of data PDUs this side sends (controller: the host's HPDA; host: the CPDA).
    pub tx_pda: u8,
}

impl Session {
    /// The session both sides use after an ICReq/ICResp exchange. The
    /// digests are the ones the ICResp enabled.
    pub fn negotiated(role: Role, req: &IcReq, resp: &IcResp) -> Self {
        let (rx_pda, tx_pda) = match role {
            Role::Controller => (resp.cpda, req.hpda),
            Role::Host => (req.hpda, resp.cpda),
        };
        Session {
            header_digest: resp.hdgst,
            data_digest: resp.ddgst,
            rx_pda,
            tx_pda,
        }
    }
}

/// ICReq PDU-specific header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    /// PDU format version (0).
    pub pfv: u16,
    /// Host PDU data alignment (0..=31): C2H data aligned to (HPDA+1)*4 bytes.
    pub hpda: u8,
    /// Header digest requested.
    pub hdgst: bool,
    /// Data digest requested.
    pub ddgst: bool,
    /// Maximum outstanding R2Ts per command, 0-based.
    pub maxr2t: u32,
}

/// ICResp PDU-specific header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    /// PDU format version (0).
    pub pfv: u16,
    /// Controller PDU data alignment (0..=31): H2C data aligned to (CPDA+1)*4 bytes.
    pub cpda: u8,
    /// Header digest enabled.
    pub hdgst: bool,
    /// Data digest enabled.
    pub ddgst: bool,
    /// Maximum data bytes per H2CData PDU (>= 4096, multiple of 4).
    pub maxh2cdata: u32,
}

impl Default for IcResp {
    fn default() -> Self {
        IcResp {
            pfv: PFV_1_0,
            cpda: 0,
            hdgst: false,
            ddgst: false,
            maxh2cdata: 128 * 1024,
        }
    }
}

/// H2CTermReq / C2HTermReq PDU-specific header. The error data (the
/// offending PDU header, up to 128 bytes) follows as PDU data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal error status as received (see [`Fes::from_u16`]).
    pub fes: u16,
    /// Fatal error information (byte offset for FES 1 and 6, else 0).
    pub fei: u32,
}

/// CapsuleCmd PDU-specific header: the SQE. In-capsule data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCmd {
    /// The submission queue entry.
    pub sqe: Sqe,
}

/// CapsuleResp PDU-specific header: the CQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    /// The completion queue entry.
    pub cqe: Cqe,
}

/// H2CData PDU-specific header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct H2CData {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag from the R2T.
    pub ttag: u16,
    /// Data offset within the command's data.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    /// LAST_PDU flag: last PDU of the R2T's transfer.
    pub last: bool,
}

/// C2HData PDU-specific header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct C2HData {
    /// Command capsule CID.
    pub cccid: u16,
    /// Data offset within the command's data.
    pub datao: u32,
    /// Data length of this PDU.
    pub datal: u32,
    /// LAST_PDU flag: last data PDU of the command.
    pub last: bool,
    /// SUCCESS flag: the command succeeded and no CapsuleResp follows (requires `last`).
    pub success: bool,
}

/// R2T PDU-specific header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2T {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag the host echoes in H2CData.
    pub ttag: u16,
    /// Offset of the requested data.
    pub r2to: u32,
    /// Length of the requested data.
    pub r2tl: u32,
}

/// A typed PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pdu {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq.
    H2CTermReq(TermReq),
    /// C2HTermReq.
    C2HTermReq(TermReq),
    /// CapsuleCmd.
    CapsuleCmd(CapsuleCmd),
    /// CapsuleResp.
    CapsuleResp(CapsuleResp),
    /// H2CData.
    H2CData(H2CData),
    /// C2HData.
    C2HData(C2HData),
    /// R2T.
    R2T(R2T),
}

impl Pdu {
    /// The PDU type.
    #[inline]
    pub const fn pdu_type(&self) -> PduType {
        match self {
            Pdu::IcReq(_) => PduType::IcReq,
            Pdu::IcResp(_) => PduType::IcResp,
            Pdu::H2CTermReq(_) => PduType::H2CTermReq,
            Pdu::C2HTermReq(_) => PduType::C2HTermReq,
            Pdu::CapsuleCmd(_) => PduType::CapsuleCmd,
            Pdu::CapsuleResp(_) => PduType::CapsuleResp,
            Pdu::H2CData(_) => PduType::H2CData,
            Pdu::C2HData(_) => PduType::C2HData,
            Pdu::R2T(_) => PduType::R2T,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_directions() {
        for v in 0..=255u8 {
            if let Some(t) = PduType::from_u8(v) {
                assert_eq!(t as u8, v);
                assert_eq!(t.is_host_to_controller(), v % 2 == 0);
            }
        }
        assert_eq!(PduType::from_u8(8), None);
        assert_eq!(PduType::CapsuleCmd.hlen(), 72);
        assert_eq!(pda_alignment(0), 4);
        assert_eq!(pda_alignment(MAX_PDA), 128);
        assert_eq!(Fes::from_u16(5), Some(Fes::R2T_LIMIT_EXCEEDED));
        assert_eq!(Fes::from_u16(7), None);
    }

    #[test]
    fn session_negotiation() {
        let req = IcReq {
            hpda: 3,
            hdgst: true,
            ddgst: true,
            ..Default::default()
        };
        let resp = IcResp {
            cpda: 1,
            hdgst: true,
            ddgst: false,
            ..Default::default()
        };
        let c = Session::negotiated(Role::Controller, &req, &resp);
        assert_eq!(
            (c.rx_pda, c.tx_pda, c.header_digest, c.data_digest),
            (1, 3, true, false)
        );
        let h = Session::negotiated(Role::Host, &req, &resp);
        assert_eq!((h.rx_pda, h.tx_pda), (3, 1));
    }
}
