//! Protocol errors of the NVMe/TCP transport and their mapping to TermReq
//! Fatal Error Status / Information (TP 8000 section 3.6.2.5 "Transport
//! Errors" and figure 26).

use thiserror::Error;

use crate::pdu::Fes;

/// A violation of the NVMe/TCP protocol detected on received bytes (by the
/// [`crate::Decoder`], or by the caller's transfer bookkeeping through the
/// constructors below).
///
/// All of these are fatal for the connection. [`ProtocolError::fes`] gives
/// the TermReq FES (and [`ProtocolError::fei`] the FEI) to send before
/// closing it; `None` means close without a TermReq (a malformed TermReq was
/// received). A data digest mismatch is not an error of this type: the
/// decoder reports it as [`crate::Event::DataDigestError`] and the
/// connection stays usable (the command completes with Transient Transport
/// Error, TP 8000 section 3.6.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A header field has an invalid value (FES 01h, FEI = byte offset).
    #[error("invalid PDU header field at byte {offset}: {what}")]
    InvalidHeaderField {
        /// Byte offset of the field within the PDU header.
        offset: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// A PDU arrived that is not allowed at this point (FES 02h).
    #[error("PDU sequence error: {what}")]
    PduSequence {
        /// What was wrong.
        what: &'static str,
    },
    /// The header digest does not match (FES 03h).
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest {
        /// CRC32C computed over the received header.
        computed: u32,
        /// Digest in the PDU.
        received: u32,
    },
    /// Data offset/length outside the command's transfer or the R2T (FES 04h).
    #[error("data transfer out of range: offset {offset} length {len}, expected {what}")]
    DataOutOfRange {
        /// DATAO of the PDU.
        offset: u32,
        /// DATAL of the PDU.
        len: u32,
        /// What was expected.
        what: &'static str,
    },
    /// A data PDU is longer than allowed (MAXH2CDATA, in-capsule data size) (FES 05h).
    #[error("data transfer limit exceeded: {len} bytes, limit {max}")]
    DataLimitExceeded {
        /// Data length of the PDU.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// More R2Ts outstanding for a command than MAXR2T allows (FES 05h).
    #[error("R2T limit exceeded: {outstanding} outstanding, limit {max}")]
    R2tLimitExceeded {
        /// R2Ts outstanding including this one.
        outstanding: u32,
        /// The negotiated limit (MAXR2T + 1).
        max: u32,
    },
    /// A parameter value is valid but not supported (FES 06h, FEI = byte offset).
    #[error("unsupported parameter at byte {offset}: {what}")]
    UnsupportedParameter {
        /// Byte offset of the parameter within the PDU header.
        offset: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// A TermReq with an invalid length: close without sending a TermReq.
    #[error("malformed TermReq (PLEN {plen})")]
    MalformedTermReq {
        /// PLEN received.
        plen: u32,
    },
}

impl ProtocolError {
    /// The TermReq FES to send, or `None` (no TermReq: see the type docs).
    pub const fn fes(&self) -> Option<Fes> {
        match self {
            ProtocolError::InvalidHeaderField { .. } => Some(Fes::InvalidHeaderField),
            ProtocolError::PduSequence { .. } => Some(Fes::PduSequenceError),
            ProtocolError::HeaderDigest { .. } => Some(Fes::HeaderDigestError),
            ProtocolError::DataOutOfRange { .. } => Some(Fes::DataTransferOutOfRange),
            ProtocolError::DataLimitExceeded { .. } | ProtocolError::R2tLimitExceeded { .. } => {
                Some(Fes::DataTransferLimitExceeded)
            }
            ProtocolError::UnsupportedParameter { .. } => Some(Fes::UnsupportedParameter),
            ProtocolError::MalformedTermReq { .. } => None,
        }
    }

    /// The TermReq FEI: the byte offset for FES 01h/06h, else 0.
    pub const fn fei(&self) -> u32 {
        match self {
            ProtocolError::InvalidHeaderField { offset, .. }
            | ProtocolError::UnsupportedParameter { offset, .. } => *offset,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fes_mapping() {
        let cases = [
            (
                ProtocolError::InvalidHeaderField {
                    offset: 3,
                    what: "",
                },
                Some(Fes::InvalidHeaderField),
                3,
            ),
            (
                ProtocolError::PduSequence { what: "" },
                Some(Fes::PduSequenceError),
                0,
            ),
            (
                ProtocolError::HeaderDigest {
                    computed: 1,
                    received: 2,
                },
                Some(Fes::HeaderDigestError),
                0,
            ),
            (
                ProtocolError::DataOutOfRange {
                    offset: 0,
                    len: 1,
                    what: "",
                },
                Some(Fes::DataTransferOutOfRange),
                0,
            ),
            (
                ProtocolError::DataLimitExceeded { len: 2, max: 1 },
                Some(Fes::DataTransferLimitExceeded),
                0,
            ),
            (
                ProtocolError::R2tLimitExceeded {
                    outstanding: 2,
                    max: 1,
                },
                Some(Fes::R2T_LIMIT_EXCEEDED),
                0,
            ),
            (
                ProtocolError::UnsupportedParameter {
                    offset: 8,
                    what: "",
                },
                Some(Fes::UnsupportedParameter),
                8,
            ),
            (ProtocolError::MalformedTermReq { plen: 9 }, None, 0),
        ];
        for (e, fes, fei) in cases {
            assert_eq!(e.fes(), fes, "{e}");
            assert_eq!(e.fei(), fei, "{e}");
        }
    }
}
