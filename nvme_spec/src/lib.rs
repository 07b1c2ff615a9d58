//! NVMe wire types for vmpath: NVM Express Base Specification 2.0, NVM
//! Command Set Specification 1.0 and NVMe over Fabrics 1.1. No I/O, no
//! unsafe code: every wire structure is a `[u8; N]` newtype (little-endian
//! bytes exactly as on the wire) with a compile-time size assertion and
//! getters/setters at constant offsets. Decoding a received structure is a
//! copy of its bytes ([`Sqe::from_slice`]); encoding is [`Sqe::as_bytes`].
//! Field accessors compile to single loads/stores, so these types are cheap
//! enough for the per-I/O path (SQE 64 B, CQE 16 B).
//!
//! | module | contents | spec |
//! |---|---|---|
//! | [`sqe`] | [`Sqe`] (64 B), [`SglDescriptor`] (16 B), PSDT, FUSE | Base 2.0 §4.2, §4.3.2 |
//! | [`cqe`] | [`Cqe`] (16 B), [`Status`] (SCT/SC, CRD, More, DNR; all status codes incl. path related / ANA) | Base 2.0 §4.2.3 |
//! | [`opcode`] | [`AdminOpcode`], [`NvmOpcode`], [`FabricsType`], [`DataDirection`] | Base 2.0 §5, NVM 1.0 §3, oF 1.1 §3.3 |
//! | [`cmd`] | typed views of command dwords: Read/Write, Write Zeroes, DSM (+ [`cmd::DsmRange`]), Identify, Get Log Page, Features, Abort | Base 2.0 §5.x, NVM 1.0 §3.2 |
//! | [`fabrics`] | Connect (+ 1024 B [`ConnectData`]), Property Get/Set, Connect response DW0 | oF 1.1 §3.3 |
//! | [`regs`] | CAP, VS, CC, CSTS with field accessors; property offsets | Base 2.0 §3.1.3 |
//! | [`identify`] | Identify Controller / Namespace (4096 B), Active NSID list, NS Identification Descriptors | Base 2.0 §5.17.2 |
//! | [`log`] | Error, SMART/Health, Changed NS list, ANA log (builder + parser), Discovery log | Base 2.0 §5.16.1, oF 1.1 §5.3 |
//! | [`features`] | Feature IDs, Number of Queues, Async Event Config, AEN completion encoding | Base 2.0 §5.27.1, §5.2 |
//!
//! Text fields (serial number, model, NQNs, transport addresses) have
//! `fn x(&self) -> Result<&str, FieldError>` and `fn set_x(&mut self, &str) ->
//! Result<(), FieldError>`: ASCII fields are space padded, NQN fields NUL
//! padded with at most 223 bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bytes;
pub mod cmd;
pub mod cqe;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod opcode;
pub mod regs;
pub mod sqe;

pub use bytes::FieldError;
pub use cqe::{Cqe, Sct, Status};
pub use fabrics::{ConnectData, DISCOVERY_NQN};
pub use identify::{IdentifyController, IdentifyNamespace, LbaFormat, NsIdDescList, NsIdList};
pub use log::{AnaState, DiscoveryLogEntry, DiscoveryLogHeader, LogPageId};
pub use opcode::{AdminOpcode, DataDirection, FabricsType, NvmOpcode};
pub use sqe::{SglDescriptor, Sqe, FABRICS_OPCODE};
