//! NVMe/TCP transport binding PDU codec (NVMe over Fabrics 1.1 section 7.4,
//! originally TP 8000; section numbers below refer to TP 8000 "NVMe/TCP
//! Transport Binding"), shared by the vmpath target and initiator. No I/O,
//! no unsafe code, no allocation per PDU.
//!
//! # PDUs (§3.6.1-3.6.4)
//! Every PDU starts with an 8-byte common header (type, flags, HLEN, PDO,
//! PLEN), then the PDU-specific header, an optional header digest, padding up
//! to PDO, data, and an optional data digest. [`Pdu`] is the typed header:
//! [`IcReq`]/[`IcResp`] (128 B, PFV, HPDA/CPDA, digest enables, MAXR2T /
//! MAXH2CDATA), [`TermReq`] (FES/FEI, H2C and C2H), [`CapsuleCmd`] (SQE, with
//! optional in-capsule data), [`CapsuleResp`] (CQE), [`H2CData`] /
//! [`C2HData`] (CCCID, TTAG, DATAO, DATAL; LAST_PDU and SUCCESS flags) and
//! [`R2T`] (CCCID, TTAG, R2TO, R2TL). SQE/CQE types come from [`nvme_spec`].
//!
//! # Receiving: [`Decoder`] (§3.6.2, §3.6.4)
//! ```
//! use nvme_tcp::{Decoder, DecoderConfig, Event, Pdu};
//! let mut dec = Decoder::new(DecoderConfig::controller());
//! # let socket_bytes: &[u8] = &[];
//! // for each socket read:
//! for ev in dec.feed(socket_bytes) {
//!     match ev {
//!         Ok(Event::Header { pdu: Pdu::IcReq(req), .. }) => { /* reply ICResp, dec.set_session(..) */ }
//!         Ok(Event::Header { pdu, data_len }) => { /* choose a destination for data_len bytes */ }
//!         Ok(Event::Data { offset, data }) => { /* copy data to destination + offset */ }
//!         Ok(Event::DataEnd) => { /* data complete, digest verified */ }
//!         Ok(Event::DataDigestError { .. }) => { /* complete with Transient Transport Error */ }
//!         Err(e) => { /* send TermReq(e.fes(), e.fei()) unless None, close */ break }
//!     }
//! }
//! ```
//! Input may be split anywhere, down to one byte per call; data slices
//! borrow the input (zero copy). The decoder validates: known type,
//! direction (a controller rejects C2H PDUs and vice versa), IC exchange
//! first and only once (PDU sequence error), flags valid for the type,
//! HDGSTF/DDGSTF against the negotiated digests, SUCCESS only with
//! LAST_PDU, HLEN per type, PDO alignment to the receiver's PDA and within
//! PLEN, PLEN per type, data limits (in-capsule size, MAXH2CDATA), DATAL
//! against the data length, PFV / PDA / DGST / MAXH2CDATA of IC PDUs,
//! reserved bytes (configurable; not in TermReqs), header digest, data digest. Errors are
//! [`ProtocolError`]s with [`ProtocolError::fes`] / [`ProtocolError::fei`]
//! (§3.6.2.5, figure 26). Transfer bookkeeping that needs command state
//! (DATAO/DATAL within the R2T, R2T count against MAXR2T) is the caller's;
//! it reports violations with the same error type
//! ([`ProtocolError::DataOutOfRange`], [`ProtocolError::R2tLimitExceeded`]).
//!
//! # Sending: [`Encoder`] (§3.6.1-3.6.3)
//! [`Encoder::encode_header`] / [`Encoder::push_header`] write a PDU header
//! with header digest and PDO padding (aligned to the peer's PDA) into a
//! caller buffer; the caller then sends its data buffers and, when
//! [`PduLayout::data_digest`] is set, [`data_digest`] over them (one `writev`
//! for a batch of headers and data). [`Encoder::push_pdu`] writes a complete
//! PDU into a `Vec` (small PDUs, tests). [`Encoder::term_req`],
//! [`Encoder::ic_req`] and [`Encoder::ic_resp`] build the connection
//! management PDUs. CRC32C uses the `crc32c` crate (SSE4.2 / ARMv8 CRC
//! instructions when present).
//!
//! # Session (§3.6.2.2-3.6.2.3)
//! [`Session::negotiated`] turns an ICReq/ICResp pair into the digest flags
//! and the receive/transmit PDU data alignments of one side; give it to
//! [`Decoder::set_session`] and [`Encoder::new`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod decode;
pub mod encode;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod pdu;

pub use decode::{Decoder, DecoderConfig, Event, Feed, Step};
pub use encode::{data_digest, DataDigest, EncodeError, Encoder, PduLayout};
pub use error::ProtocolError;
pub use pdu::{
    C2HData, CapsuleCmd, CapsuleResp, Fes, H2CData, IcReq, IcResp, Pdu, PduType, Role, Session,
    TermReq, R2T,
};
