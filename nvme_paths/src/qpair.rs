//! The host side of one NVMe/TCP queue pair as a pure protocol engine (no socket): commands go
//! in ([`QpairCore::submit`]), bytes to send come out ([`QpairCore::tx_pending`]), received
//! bytes go in ([`QpairCore::on_rx`]) and completions come out. The socket wrapper
//! ([`crate::sock::TcpQpair`]) and the fuzz target drive it.
//!
//! TP 8000 (NVMe/TCP) sections used: 3.3 (connection setup: ICReq/ICResp), 3.4 (command
//! capsules with in-capsule data, transport SGL data blocks), 3.5 (C2HData with the SUCCESS
//! flag, R2T / H2CData), 3.6.2.5 (transport errors). Everything the controller sends is
//! checked before it is used: an unknown or idle command identifier, data for a command that
//! moves none or moves it the other way, data outside the command's buffer or out of order, an
//! R2T for an in-capsule write or a second outstanding R2T (MAXR2T is 0), a TermReq, or any
//! codec error is a [`QpairError`]; the queue pair is then dead and must be closed (its
//! commands come back through [`QpairCore::fail_all`]).

use nvme_spec::sqe::Psdt;
use nvme_spec::{Cqe, SglDescriptor, Sqe, Status};
use nvme_tcp::pdu::MAX_ENCODED_HEADER_LEN;
use nvme_tcp::{
    DataDigest, Decoder, DecoderConfig, Encoder, Event, H2CData, IcReq, Pdu, ProtocolError, Role,
    Session,
};
use vmpath_bdev::SgList;

/// Errors that kill a queue pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QpairError {
    /// The controller's bytes broke the NVMe/TCP protocol.
    #[error("protocol error from controller: {0}")]
    Protocol(#[from] ProtocolError),
    /// The controller terminated the connection with a C2HTermReq.
    #[error("controller sent C2HTermReq (FES {fes:#x}, FEI {fei:#x})")]
    TermReq {
        /// Fatal error status.
        fes: u16,
        /// Fatal error information.
        fei: u32,
    },
    /// A PDU names a command identifier that has no command outstanding.
    #[error("{what} for command identifier {cid}, which has no command outstanding")]
    UnknownCid {
        /// The CID.
        cid: u16,
        /// The PDU kind.
        what: &'static str,
    },
    /// A PDU does not fit the command it names.
    #[error("{what} (command identifier {cid})")]
    BadTransfer {
        /// The CID.
        cid: u16,
        /// What was wrong.
        what: &'static str,
    },
    /// The ICResp carries parameters the host cannot use.
    #[error("unusable ICResp: {0}")]
    BadIcResp(&'static str),
    /// The connection was closed or failed (socket layer).
    #[error("connection {0}")]
    Transport(String),
    /// A command did not complete in time.
    #[error("command {cid} (opcode {opcode:#04x}) timed out after {elapsed_ms} ms")]
    Timeout {
        /// The CID.
        cid: u16,
        /// Its opcode.
        opcode: u8,
        /// How long it was outstanding.
        elapsed_ms: u64,
    },
    /// The queue pair was closed by the host (controller reset or teardown).
    #[error("queue pair closed by the host")]
    Closed,
}

/// Direction of a command's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// No data.
    None,
    /// Host to controller (write).
    H2C,
    /// Controller to host (read).
    C2H,
}

/// Where a command's data lives.
#[derive(Debug, Default)]
pub enum DataBuf {
    /// No data.
    #[default]
    None,
    /// Caller memory (block I/O): valid until the command completes.
    Sg(SgList),
    /// An owned buffer (admin commands, DSM ranges).
    Owned(Vec<u8>),
}

impl DataBuf {
    fn len(&self) -> usize {
        match self {
            DataBuf::None => 0,
            DataBuf::Sg(sg) => sg.iter().map(|v| v.len()).sum(),
            DataBuf::Owned(v) => v.len(),
        }
    }

    /// Copies `src` into the buffer at byte `off` (bounds checked by the caller).
    fn write_at(&mut self, off: usize, src: &[u8]) {
        match self {
            DataBuf::None => {}
            DataBuf::Owned(v) => v[off..off + src.len()].copy_from_slice(src),
            DataBuf::Sg(sg) => {
                let mut skip = off;
                let mut src = src;
                for v in sg.iter() {
                    if src.is_empty() {
                        break;
                    }
                    if skip >= v.len() {
                        skip -= v.len();
                        continue;
                    }
                    let n = (v.len() - skip).min(src.len());
                    // SAFETY: the IoVec contract (vmpath_bdev::IoVec::from_raw) makes
                    // base..base+len valid and exclusively ours until the command completes;
                    // skip + n <= len.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), v.base().add(skip), n) };
                    src = &src[n..];
                    skip = 0;
                }
            }
        }
    }

    /// Appends `len` bytes from byte `off` of the buffer to `out` and to the digest.
    fn read_into(&self, off: usize, len: usize, out: &mut Vec<u8>, dd: &mut DataDigest) {
        match self {
            DataBuf::None => {}
            DataBuf::Owned(v) => {
                let s = &v[off..off + len];
                dd.update(s);
                out.extend_from_slice(s);
            }
            DataBuf::Sg(sg) => {
                let mut skip = off;
                let mut left = len;
                for v in sg.iter() {
                    if left == 0 {
                        break;
                    }
                    if skip >= v.len() {
                        skip -= v.len();
                        continue;
                    }
                    let n = (v.len() - skip).min(left);
                    // SAFETY: as in write_at; the device only reads the memory of a write.
                    let s = unsafe { std::slice::from_raw_parts(v.base().add(skip), n) };
                    dd.update(s);
                    out.extend_from_slice(s);
                    left -= n;
                    skip = 0;
                }
            }
        }
    }
}

/// A command to submit. The qpair sets the CID, PSDT and SGL.
#[derive(Debug)]
pub struct Cmd {
    /// The entry (opcode, nsid, command dwords).
    pub sqe: Sqe,
    /// Direction of the data.
    pub dir: Dir,
    /// The data buffer (its length is the transfer length).
    pub data: DataBuf,
    /// Caller's context.
    pub tag: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The controller completed it.
    Completed {
        /// Status (a data digest error turns into Transient Transport Error).
        status: Status,
        /// Completion dword 0.
        dw0: u32,
        /// Completion dword 1.
        dw1: u32,
    },
    /// The queue pair died first. `sent` tells whether any byte of the command left the host
    /// (if not, the controller cannot have seen it).
    Lost {
        /// Some byte of the command was handed to the socket.
        sent: bool,
    },
}

/// A finished command, with its buffer handed back.
#[derive(Debug)]
pub struct Done {
    /// The caller's tag.
    pub tag: u64,
    /// The outcome.
    pub outcome: Outcome,
    /// The data buffer (read data for C2H commands with owned buffers).
    pub data: DataBuf,
    /// Opcode of the command.
    pub opcode: u8,
}

#[derive(Debug, Default)]
struct Slot {
    active: bool,
    tag: u64,
    opcode: u8,
    dir: Option<Dir>,
    data: DataBuf,
    len: u32,
    /// Stream offset of the command's first byte in the transmit stream.
    tx_start: u64,
    submitted_ns: u64,
    /// C2H: bytes received so far (in order).
    rx_done: u32,
    /// H2C via R2T: bytes sent so far.
    h2c_done: u32,
    in_capsule: bool,
    r2t_pending: bool,
    digest_error: bool,
}

/// Receive state for the data of the PDU being decoded.
#[derive(Debug, Clone, Copy)]
enum RxData {
    None,
    /// C2HData for `cid` at command offset `datao`; `last`/`success` flags.
    C2H {
        cid: u16,
        datao: u32,
        last: bool,
        success: bool,
    },
    /// TermReq error data (ignored).
    Term {
        fes: u16,
        fei: u32,
    },
}

/// Connection setup phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// ICReq queued, waiting for the ICResp.
    WaitIcResp,
    /// Ready for commands.
    Ready,
}

/// Parameters of a queue pair.
#[derive(Debug, Clone, Copy)]
pub struct QpairParams {
    /// Number of command slots (queue depth).
    pub depth: u16,
    /// Largest in-capsule data the controller accepts (IOCCSZ * 16 - 64); 0 = none.
    pub max_icd: u32,
    /// Ask for header digests.
    pub hdgst: bool,
    /// Ask for data digests.
    pub ddgst: bool,
}

/// The protocol engine of one host queue pair.
#[derive(Debug)]
pub struct QpairCore {
    params: QpairParams,
    phase: Phase,
    icreq: IcReq,
    dec: Decoder,
    enc: Encoder,
    maxh2cdata: u32,
    slots: Vec<Slot>,
    free: Vec<u16>,
    active: usize,
    tx: Vec<u8>,
    tx_pos: usize,
    /// Total bytes ever queued / handed to the socket (monotonic stream offsets).
    tx_queued: u64,
    tx_sent: u64,
    rx_data: RxData,
    scratch: Vec<u8>,
    /// The error that killed the queue pair, returned for any further input.
    dead: Option<QpairError>,
}

impl QpairCore {
    /// A new queue pair; the ICReq is queued for sending.
    pub fn new(params: QpairParams) -> Self {
        let depth = params.depth.max(1);
        let mut q = QpairCore {
            params,
            phase: Phase::WaitIcResp,
            icreq: IcReq {
                pfv: 0,
                hpda: 0,
                hdgst: params.hdgst,
                ddgst: params.ddgst,
                maxr2t: 0,
            },
            dec: Decoder::new(DecoderConfig::host()),
            enc: Encoder::default(),
            maxh2cdata: 0,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth).rev().collect(),
            active: 0,
            tx: Vec::with_capacity(64 * 1024),
            tx_pos: 0,
            tx_queued: 0,
            tx_sent: 0,
            rx_data: RxData::None,
            scratch: Vec::with_capacity(MAX_ENCODED_HEADER_LEN),
            dead: None,
        };
        let mut b = [0u8; 128];
        let n = Encoder::ic_req(&q.icreq, &mut b).expect("128-byte buffer fits an ICReq");
        q.push_tx(&b[..n]);
        q
    }

    /// Connection phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The negotiated session (after the ICResp).
    pub fn session(&self) -> Session {
        self.dec.session()
    }

    /// MAXH2CDATA from the ICResp.
    pub fn maxh2cdata(&self) -> u32 {
        self.maxh2cdata
    }

    /// Queue depth.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.active
    }

    /// True if another command fits.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Sets the in-capsule data limit (known after Identify Controller).
    pub fn set_max_icd(&mut self, max_icd: u32) {
        self.params.max_icd = max_icd;
    }

    fn push_tx(&mut self, b: &[u8]) {
        self.tx.extend_from_slice(b);
        self.tx_queued += b.len() as u64;
    }

    /// Bytes waiting to be written to the socket.
    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_pos..]
    }

    /// Records that the socket took `n` bytes of [`tx_pending`](Self::tx_pending).
    pub fn tx_advance(&mut self, n: usize) {
        let n = n.min(self.tx.len() - self.tx_pos);
        self.tx_pos += n;
        self.tx_sent += n as u64;
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        } else if self.tx_pos > 256 * 1024 {
            self.tx.drain(..self.tx_pos);
            self.tx_pos = 0;
        }
    }

    /// Submits a command; hands it back when the queue is full or the connection is not
    /// ready. Returns the CID.
    // The command comes back by value on a full queue: boxing it would allocate per I/O.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, mut cmd: Cmd, now: u64) -> Result<u16, Cmd> {
        if self.phase != Phase::Ready {
            return Err(cmd);
        }
        let Some(cid) = self.free.pop() else {
            return Err(cmd);
        };
        let len = cmd.data.len();
        let len32 = match u32::try_from(len) {
            Ok(l) => l,
            Err(_) => {
                self.free.push(cid);
                return Err(cmd);
            }
        };
        let dir = if len == 0 { Dir::None } else { cmd.dir };
        cmd.sqe.set_cid(cid);
        cmd.sqe.set_psdt(Psdt::SglMptrContig);
        let in_capsule = dir == Dir::H2C && len32 <= self.params.max_icd;
        if in_capsule {
            cmd.sqe.set_sgl1(SglDescriptor::in_capsule(0, len32));
        } else {
            cmd.sqe.set_sgl1(SglDescriptor::transport(len32));
        }
        let tx_start = self.tx_queued;
        let icd = if in_capsule { len32 } else { 0 };
        self.scratch.clear();
        self.scratch.resize(MAX_ENCODED_HEADER_LEN, 0);
        let n = self
            .enc
            .capsule_cmd(&cmd.sqe, icd, &mut self.scratch)
            .expect("header scratch is large enough");
        let hdr = std::mem::take(&mut self.scratch);
        self.push_tx(&hdr[..n]);
        self.scratch = hdr;
        if in_capsule {
            let mut dd = DataDigest::new();
            let before = self.tx.len();
            cmd.data.read_into(0, len, &mut self.tx, &mut dd);
            self.tx_queued += (self.tx.len() - before) as u64;
            if self.enc.session().data_digest {
                let d = dd.to_bytes();
                self.push_tx(&d);
            }
        }
        let slot = &mut self.slots[cid as usize];
        *slot = Slot {
            active: true,
            tag: cmd.tag,
            opcode: cmd.sqe.opcode(),
            dir: Some(dir),
            data: cmd.data,
            len: len32,
            tx_start,
            submitted_ns: now,
            in_capsule,
            ..Slot::default()
        };
        self.active += 1;
        Ok(cid)
    }

    /// The oldest outstanding command's (cid, opcode, submit time).
    pub fn oldest(&self) -> Option<(u16, u8, u64)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active)
            .min_by_key(|(_, s)| s.submitted_ns)
            .map(|(i, s)| (i as u16, s.opcode, s.submitted_ns))
    }

    fn finish(&mut self, cid: u16, outcome: Outcome) -> Done {
        let slot = std::mem::take(&mut self.slots[cid as usize]);
        self.free.push(cid);
        self.active -= 1;
        Done {
            tag: slot.tag,
            outcome,
            data: slot.data,
            opcode: slot.opcode,
        }
    }

    /// Fails every outstanding command (the connection is gone).
    pub fn fail_all(&mut self, done: &mut dyn FnMut(Done)) {
        for cid in 0..self.slots.len() as u16 {
            if self.slots[cid as usize].active {
                let sent = self.tx_sent > self.slots[cid as usize].tx_start;
                done(self.finish(cid, Outcome::Lost { sent }));
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
    }

    fn active_slot(&mut self, cid: u16, what: &'static str) -> Result<&mut Slot, QpairError> {
        match self.slots.get_mut(cid as usize) {
            Some(s) if s.active => Ok(s),
            _ => Err(QpairError::UnknownCid { cid, what }),
        }
    }

    /// Consumes received bytes; completions go to `done`. After an error the queue pair is
    /// dead and returns the same error for any further input.
    pub fn on_rx(&mut self, input: &[u8], done: &mut dyn FnMut(Done)) -> Result<(), QpairError> {
        if let Some(e) = &self.dead {
            return Err(e.clone());
        }
        let r = self.rx_inner(input, done);
        if let Err(e) = &r {
            self.dead = Some(e.clone());
        }
        r
    }

    fn rx_inner(&mut self, mut input: &[u8], done: &mut dyn FnMut(Done)) -> Result<(), QpairError> {
        // Loop until the decoder wants more input: a PDU's DataEnd comes after its last data
        // byte even when that byte ended the input.
        loop {
            let step = self.dec.next(input)?;
            input = &input[step.consumed..];
            let Some(ev) = step.event else { break };
            match ev {
                Event::Header { pdu, data_len } => self.on_header(pdu, data_len, done)?,
                Event::Data { offset, data } => {
                    if let RxData::C2H { cid, datao, .. } = self.rx_data {
                        let slot = self.active_slot(cid, "C2HData")?;
                        slot.data.write_at((datao + offset) as usize, data);
                    }
                }
                Event::DataEnd | Event::DataDigestError { .. } => {
                    let digest_bad = matches!(ev, Event::DataDigestError { .. });
                    match std::mem::replace(&mut self.rx_data, RxData::None) {
                        RxData::C2H {
                            cid, last, success, ..
                        } => {
                            let slot = self.active_slot(cid, "C2HData")?;
                            slot.digest_error |= digest_bad;
                            if last && success {
                                if slot.rx_done != slot.len {
                                    return Err(QpairError::BadTransfer {
                                        cid,
                                        what: "SUCCESS flag before all data was sent",
                                    });
                                }
                                let status = if slot.digest_error {
                                    Status::TRANSIENT_TRANSPORT_ERROR
                                } else {
                                    Status::SUCCESS
                                };
                                let d = self.finish(
                                    cid,
                                    Outcome::Completed {
                                        status,
                                        dw0: 0,
                                        dw1: 0,
                                    },
                                );
                                done(d);
                            }
                        }
                        RxData::Term { fes, fei } => return Err(QpairError::TermReq { fes, fei }),
                        RxData::None => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn on_header(
        &mut self,
        pdu: Pdu,
        data_len: u32,
        done: &mut dyn FnMut(Done),
    ) -> Result<(), QpairError> {
        match pdu {
            Pdu::IcResp(resp) => {
                if self.phase != Phase::WaitIcResp {
                    return Err(QpairError::BadIcResp("second ICResp"));
                }
                if resp.pfv != 0 {
                    return Err(QpairError::BadIcResp("unsupported PDU format version"));
                }
                if (resp.hdgst && !self.icreq.hdgst) || (resp.ddgst && !self.icreq.ddgst) {
                    return Err(QpairError::BadIcResp(
                        "digest enabled that the host did not ask for",
                    ));
                }
                let session = Session::negotiated(Role::Host, &self.icreq, &resp);
                self.dec.set_session(session);
                self.enc.set_session(session);
                self.maxh2cdata = resp.maxh2cdata;
                self.phase = Phase::Ready;
            }
            Pdu::C2HTermReq(t) => {
                if data_len == 0 {
                    return Err(QpairError::TermReq {
                        fes: t.fes,
                        fei: t.fei,
                    });
                }
                self.rx_data = RxData::Term {
                    fes: t.fes,
                    fei: t.fei,
                };
            }
            Pdu::CapsuleResp(r) => self.on_resp(&r.cqe, done)?,
            Pdu::C2HData(d) => {
                let slot = self.active_slot(d.cccid, "C2HData")?;
                if slot.dir != Some(Dir::C2H) {
                    return Err(QpairError::BadTransfer {
                        cid: d.cccid,
                        what: "C2HData for a command that reads no data",
                    });
                }
                if d.datao != slot.rx_done {
                    return Err(QpairError::BadTransfer {
                        cid: d.cccid,
                        what: "C2HData out of order",
                    });
                }
                let end = d.datao as u64 + d.datal as u64;
                if end > slot.len as u64 || d.datal != data_len {
                    return Err(QpairError::BadTransfer {
                        cid: d.cccid,
                        what: "C2HData beyond the command's data length",
                    });
                }
                if d.last != (end == slot.len as u64) {
                    return Err(QpairError::BadTransfer {
                        cid: d.cccid,
                        what: "LAST_PDU flag does not match the end of the data",
                    });
                }
                slot.rx_done = end as u32;
                self.rx_data = RxData::C2H {
                    cid: d.cccid,
                    datao: d.datao,
                    last: d.last,
                    success: d.success,
                };
            }
            Pdu::R2T(r) => self.on_r2t(r.cccid, r.ttag, r.r2to, r.r2tl)?,
            Pdu::IcReq(_) | Pdu::H2CTermReq(_) | Pdu::CapsuleCmd(_) | Pdu::H2CData(_) => {
                // The host decoder rejects host-to-controller types before this point.
                return Err(QpairError::Protocol(ProtocolError::PduSequence {
                    what: "host-to-controller PDU received by the host",
                }));
            }
        }
        Ok(())
    }

    fn on_resp(&mut self, cqe: &Cqe, done: &mut dyn FnMut(Done)) -> Result<(), QpairError> {
        let cid = cqe.cid();
        let slot = self.active_slot(cid, "CapsuleResp")?;
        let mut status = cqe.status();
        if status.code().is_success() {
            if slot.dir == Some(Dir::C2H) && slot.rx_done != slot.len {
                return Err(QpairError::BadTransfer {
                    cid,
                    what: "successful completion before all read data arrived",
                });
            }
            if slot.dir == Some(Dir::H2C) && !slot.in_capsule && slot.h2c_done != slot.len {
                return Err(QpairError::BadTransfer {
                    cid,
                    what: "successful completion before all write data was requested",
                });
            }
            if slot.digest_error {
                status = Status::TRANSIENT_TRANSPORT_ERROR;
            }
        }
        let d = self.finish(
            cid,
            Outcome::Completed {
                status,
                dw0: cqe.dw0(),
                dw1: cqe.dw1(),
            },
        );
        done(d);
        Ok(())
    }

    fn on_r2t(&mut self, cid: u16, ttag: u16, r2to: u32, r2tl: u32) -> Result<(), QpairError> {
        let maxh2c = self.maxh2cdata.max(4096);
        let slot = self.active_slot(cid, "R2T")?;
        if slot.dir != Some(Dir::H2C) || slot.in_capsule {
            return Err(QpairError::BadTransfer {
                cid,
                what: "R2T for a command that has no data to request",
            });
        }
        if slot.r2t_pending && slot.h2c_done != r2to {
            return Err(QpairError::BadTransfer {
                cid,
                what: "R2T while another R2T is outstanding (MAXR2T is 0)",
            });
        }
        if r2to != slot.h2c_done || r2to as u64 + r2tl as u64 > slot.len as u64 || r2tl == 0 {
            return Err(QpairError::BadTransfer {
                cid,
                what: "R2T offset or length outside the command's data",
            });
        }
        slot.r2t_pending = true;
        // Queue the H2CData PDUs for the whole R2T now.
        let data = std::mem::take(&mut slot.data);
        let mut off = r2to;
        let end = r2to + r2tl;
        let dd_on = self.enc.session().data_digest;
        while off < end {
            let n = (end - off).min(maxh2c);
            let hdr = H2CData {
                cccid: cid,
                ttag,
                datao: off,
                datal: n,
                last: off + n == end,
            };
            self.scratch.clear();
            self.scratch.resize(MAX_ENCODED_HEADER_LEN, 0);
            let hl = self
                .enc
                .h2c_data(&hdr, &mut self.scratch)
                .expect("header scratch is large enough");
            let h = std::mem::take(&mut self.scratch);
            self.push_tx(&h[..hl]);
            self.scratch = h;
            let mut dd = DataDigest::new();
            let before = self.tx.len();
            data.read_into(off as usize, n as usize, &mut self.tx, &mut dd);
            self.tx_queued += (self.tx.len() - before) as u64;
            if dd_on {
                let d = dd.to_bytes();
                self.push_tx(&d);
            }
            off += n;
        }
        let slot = &mut self.slots[cid as usize];
        slot.data = data;
        slot.h2c_done = end;
        slot.r2t_pending = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_tcp::{CapsuleResp, IcResp};

    fn ready_qpair(max_icd: u32) -> (QpairCore, Encoder) {
        let mut q = QpairCore::new(QpairParams {
            depth: 4,
            max_icd,
            hdgst: false,
            ddgst: false,
        });
        assert_eq!(q.tx_pending().len(), 128);
        q.tx_advance(128);
        let mut b = [0u8; 128];
        let n = Encoder::ic_resp(&IcResp::default(), &mut b).unwrap();
        q.on_rx(&b[..n], &mut |_| panic!("no completion")).unwrap();
        assert_eq!(q.phase(), Phase::Ready);
        (q, Encoder::default())
    }

    fn resp(enc: &Encoder, cid: u16, status: Status) -> Vec<u8> {
        let mut out = Vec::new();
        enc.push_pdu::<&[u8]>(
            &Pdu::CapsuleResp(CapsuleResp {
                cqe: Cqe::new(cid, status),
            }),
            &[],
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn read_with_success_flag_and_unknown_cid() {
        let (mut q, enc) = ready_qpair(0);
        let cid = q
            .submit(
                Cmd {
                    sqe: Sqe::new(2, 0, 1),
                    dir: Dir::C2H,
                    data: DataBuf::Owned(vec![0; 8]),
                    tag: 77,
                },
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        enc.push_pdu(
            &Pdu::C2HData(nvme_tcp::C2HData {
                cccid: cid,
                datao: 0,
                datal: 8,
                last: true,
                success: true,
            }),
            &[&[1u8, 2, 3, 4, 5, 6, 7, 8][..]],
            &mut out,
        )
        .unwrap();
        let mut got = Vec::new();
        q.on_rx(&out, &mut |d| got.push(d)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tag, 77);
        match &got[0].data {
            DataBuf::Owned(v) => assert_eq!(v, &[1, 2, 3, 4, 5, 6, 7, 8]),
            _ => panic!("owned buffer expected"),
        }
        // The same CID again is now unknown.
        let err = q
            .on_rx(&resp(&enc, cid, Status::SUCCESS), &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, QpairError::UnknownCid { .. }), "{err}");
    }

    #[test]
    fn r2t_write_and_lost_commands() {
        let (mut q, enc) = ready_qpair(0);
        let pending_before = q.tx_pending().len();
        assert_eq!(pending_before, 0);
        let cid = q
            .submit(
                Cmd {
                    sqe: Sqe::new(1, 0, 1),
                    dir: Dir::H2C,
                    data: DataBuf::Owned(vec![9; 5000]),
                    tag: 1,
                },
                0,
            )
            .unwrap();
        let n = q.tx_pending().len();
        assert_eq!(n, 72, "capsule without in-capsule data");
        q.tx_advance(n);
        let mut out = Vec::new();
        enc.push_pdu::<&[u8]>(
            &Pdu::R2T(nvme_tcp::R2T {
                cccid: cid,
                ttag: 3,
                r2to: 0,
                r2tl: 5000,
            }),
            &[],
            &mut out,
        )
        .unwrap();
        q.on_rx(&out, &mut |_| {}).unwrap();
        assert_eq!(q.tx_pending().len(), 24 + 5000);
        // A read that was never sent, then the connection dies.
        q.submit(
            Cmd {
                sqe: Sqe::new(2, 0, 1),
                dir: Dir::C2H,
                data: DataBuf::Owned(vec![0; 512]),
                tag: 2,
            },
            0,
        )
        .unwrap();
        let mut lost = Vec::new();
        q.fail_all(&mut |d| lost.push((d.tag, d.outcome)));
        assert_eq!(
            lost,
            vec![
                (1, Outcome::Lost { sent: true }),
                (2, Outcome::Lost { sent: false })
            ]
        );
    }

    #[test]
    fn bad_transfers_are_errors() {
        let (mut q, enc) = ready_qpair(8192);
        let cid = q
            .submit(
                Cmd {
                    sqe: Sqe::new(1, 0, 1),
                    dir: Dir::H2C,
                    data: DataBuf::Owned(vec![1; 4096]),
                    tag: 5,
                },
                0,
            )
            .unwrap();
        assert_eq!(q.tx_pending().len(), 72 + 4096);
        // R2T for an in-capsule write.
        let mut out = Vec::new();
        enc.push_pdu::<&[u8]>(
            &Pdu::R2T(nvme_tcp::R2T {
                cccid: cid,
                ttag: 0,
                r2to: 0,
                r2tl: 4096,
            }),
            &[],
            &mut out,
        )
        .unwrap();
        assert!(matches!(
            q.on_rx(&out, &mut |_| {}),
            Err(QpairError::BadTransfer { .. })
        ));
        // C2HData for a write.
        let (mut q, enc) = ready_qpair(8192);
        let cid = q
            .submit(
                Cmd {
                    sqe: Sqe::new(1, 0, 1),
                    dir: Dir::H2C,
                    data: DataBuf::Owned(vec![1; 16]),
                    tag: 5,
                },
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        enc.push_pdu(
            &Pdu::C2HData(nvme_tcp::C2HData {
                cccid: cid,
                datao: 0,
                datal: 4,
                last: true,
                success: false,
            }),
            &[&[0u8; 4][..]],
            &mut out,
        )
        .unwrap();
        assert!(q.on_rx(&out, &mut |_| {}).is_err());
    }
}
