//! One NVMe/TCP connection (a queue pair, NVMe-oF 1.1 §7.4 / TP 8000): the receive state
//! machine on top of the shared [`Decoder`], request slots, the send queue, and the glue
//! to the command handlers (`fabrics.rs`, `admin.rs`, `io.rs`).
//!
//! Receive: one `recv` per poll into the connection's buffer, fed to the decoder; data of
//! a PDU is copied to the request buffer it belongs to, or — when the rest of a large PDU
//! is still in the kernel — read by `readv` straight into that request buffer (no copy).
//! Send: responses, R2Ts and C2HData headers are encoded into the send queue's header
//! arena; read data is sent from the request buffer the block device filled (no copy); a
//! batch of PDUs leaves in one `sendmsg`.
//!
//! Protocol violations end the connection with a C2HTermReq (FES/FEI from the codec) and a
//! close; command-level errors complete the command with the NVMe status the spec names.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nvme_spec::{Cqe, Sqe, Status};
use nvme_tcp::pdu::{Fes, Role};
use nvme_tcp::{
    C2HData, Decoder, DecoderConfig, Encoder, Event, IcReq, IcResp, Pdu, PduType, ProtocolError,
    Session, R2T,
};
use vmpath_bdev::{DmaBuf, IoCompletion, IoType};

use crate::admission::{IoInfo, QueueAdmission};
use crate::chans::Channels;
use crate::ctrlr::Controller;
use crate::subsystem::{Snapshot, Subsystem};
use crate::sys::{self, RawIoVec, SockIo};
use crate::target::{ConnTicket, Shared};
use crate::tx::TxQueue;

/// Stop reading a connection while this many bytes wait to be sent (backpressure: a host
/// that does not read its responses cannot make the target buffer without bound).
const TX_BACKPRESSURE: usize = 8 << 20;
/// Reads per connection per poll.
const MAX_READS_PER_POLL: usize = 4;
/// Data still to come of a PDU above which it is read straight into the request buffer.
const DIRECT_READ_MIN: u32 = 16 * 1024;
/// How long a closing connection waits for its TermReq to drain and the peer to close.
const CLOSE_LINGER_NS: u64 = 500_000_000;

/// What the group needs from a poll of a connection.
pub(crate) struct Env<'a> {
    pub chans: &'a mut Channels,
    pub now: u64,
    pub conn_idx: u32,
    pub reactor: u32,
}

/// State of a request slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RState {
    Free,
    /// In-capsule data arriving.
    RecvData,
    /// R2T sent, H2CData arriving.
    WaitH2C,
    /// Waiting for admission or channel space.
    Pending,
    /// At the block device.
    Exec,
    /// A parked Asynchronous Event Request.
    Aer,
    /// Response queued; freed once sent.
    Tx,
}

/// Data transfer direction of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    None,
    H2C,
    C2H,
}

/// The block-device work of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    None,
    Rw {
        op: IoType,
        chan: u32,
        slba: u64,
        nlb: u32,
    },
    Flush {
        chan: u32,
    },
    WriteZeroes {
        chan: u32,
        slba: u64,
        nlb: u32,
    },
    /// Deallocate the `sub_total` ranges at the start of the buffer.
    Dsm {
        chan: u32,
    },
}

/// One command in flight.
pub(crate) struct Req {
    pub state: RState,
    pub sqe: Sqe,
    pub buf: Option<DmaBuf>,
    /// Bytes of the data transfer.
    pub len: u32,
    pub dir: Dir,
    /// The data arrives in the capsule (else by R2T / H2CData).
    pub incapsule: bool,
    /// H2C bytes received.
    pub recvd: u32,
    pub status: Status,
    pub dw0: u32,
    pub dw1: u32,
    pub work: Work,
    pub info: IoInfo,
    pub admitted: bool,
    pub sub_next: u16,
    pub sub_total: u16,
    pub sub_inflight: u16,
}

impl Req {
    fn new() -> Req {
        Req {
            state: RState::Free,
            sqe: Sqe::zeroed(),
            buf: None,
            len: 0,
            dir: Dir::None,
            incapsule: false,
            recvd: 0,
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            work: Work::None,
            info: IoInfo::NONE,
            admitted: false,
            sub_next: 0,
            sub_total: 0,
            sub_inflight: 0,
        }
    }

    /// Base address of the buffer at `off`.
    #[inline]
    pub(crate) fn buf_ptr(&self, off: u32) -> *const u8 {
        match &self.buf {
            Some(b) => b.as_slice()[off as usize..].as_ptr(),
            None => std::ptr::null(),
        }
    }

    /// The first `len` bytes of the buffer.
    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b.as_slice()[..self.len as usize],
            None => &[],
        }
    }

    /// The first `len` bytes of the buffer, mutable.
    #[inline]
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        match &mut self.buf {
            Some(b) => &mut b.as_mut_slice()[..len],
            None => &mut [],
        }
    }
}

/// Where the data of the PDU being received goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    None,
    /// Consumed and dropped; complete `Some(slot)` with its status at the end.
    Discard(Option<u16>),
    /// Into slot `idx` at `base + offset`; `got` of `len` received.
    Slot {
        idx: u16,
        base: u32,
        len: u32,
        got: u32,
        capsule: bool,
        last: bool,
    },
}

/// Kind of queue after Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QKind {
    Admin,
    Io,
}

/// A connected queue.
pub(crate) struct Queue {
    pub kind: QKind,
    pub qid: u16,
    /// Entries (SQSIZE + 1).
    pub size: u16,
    pub ctrl: Arc<Controller>,
    pub sqhd_disabled: bool,
}

/// Life cycle of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serving.
    Active,
    /// Not reading any more; closes once nothing is in flight and everything is sent.
    Draining,
    /// A TermReq (or final response) is being sent; then shut down and linger until
    /// `deadline` or the peer's close.
    Closing { deadline: u64, shut: bool },
    /// Socket closed; kept until the block device returns every buffer.
    Closed,
}

/// The route of a namespace for this queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NsRoute {
    pub chan: u32,
    pub bs_shift: u8,
    pub num_blocks: u64,
    /// Status for I/O while the namespace's ANA group is not accessible through this portal.
    pub ana_status: Option<Status>,
    pub read_only: bool,
}

/// One NVMe/TCP connection.
pub(crate) struct Conn {
    pub sock: Option<TcpStream>,
    pub fd: RawFd,
    pub port: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    _ticket: ConnTicket,
    pub dec: Decoder,
    pub enc: Encoder,
    rx: Vec<u8>,
    sink: Sink,
    pub q: Option<Queue>,
    pub slots: Vec<Req>,
    free: Vec<u16>,
    pub pending: VecDeque<u16>,
    pub tx: TxQueue,
    pub phase: Phase,
    /// Block-device I/Os in flight.
    pub outstanding_io: u32,
    pub created_ns: u64,
    pub last_ka_ns: u64,
    pub sq_head: u16,
    /// Polls since data last arrived (hot connections are read every poll).
    pub idle_polls: u32,
    /// Waiting for EPOLLOUT.
    pub tx_blocked: bool,
    /// EPOLLOUT interest is registered.
    pub epoll_out: bool,
    pub ns_gen: u64,
    pub routes: Vec<Option<NsRoute>>,
    pub snapshot: Option<Arc<Snapshot>>,
    pub subsys: Option<Arc<Subsystem>>,
    pub admission: Option<QueueAdmission>,
    iov: Vec<RawIoVec>,
    /// Offset in the current input where the PDU being decoded started (TermReq error data).
    pdu_start: Option<usize>,
    pub maxr2t: u32,
}

/// Frees request slot `idx` (no-op if already free).
#[inline]
fn release_slot(slots: &mut [Req], free: &mut Vec<u16>, idx: u16) {
    let r = &mut slots[idx as usize];
    if r.state == RState::Free {
        return;
    }
    r.state = RState::Free;
    free.push(idx);
}

/// Why processing input stopped the connection.
#[derive(Debug)]
pub(crate) enum Fatal {
    /// A protocol violation: send a TermReq (unless the error says not to) and close.
    Proto(ProtocolError),
    /// Close without a TermReq (peer sent one, peer closed, I/O error).
    Close(&'static str),
}

impl From<ProtocolError> for Fatal {
    fn from(e: ProtocolError) -> Fatal {
        Fatal::Proto(e)
    }
}

fn decoder_config(shared: &Shared) -> DecoderConfig {
    let mut c = DecoderConfig::controller();
    c.max_incapsule_data = shared.opts.in_capsule_data_size;
    c.max_h2c_data = shared.opts.max_h2c_data;
    c
}

impl Conn {
    /// A connection over `sock` accepted on the portal `port` (or, without a socket, an
    /// in-memory connection driven by [`Conn::feed`] for tests and fuzzing).
    pub(crate) fn new(
        sock: Option<TcpStream>,
        port: SocketAddr,
        shared: Arc<Shared>,
        ticket: ConnTicket,
        now: u64,
    ) -> Conn {
        let fd = sock.as_ref().map(|s| s.as_raw_fd()).unwrap_or(-1);
        let peer = sock.as_ref().and_then(|s| s.peer_addr().ok());
        let rx = vec![0u8; shared.opts.rx_buffer_size];
        let dec = Decoder::new(decoder_config(&shared));
        let slots = vec![Req::new(), Req::new()];
        Conn {
            sock,
            fd,
            port,
            peer,
            shared,
            _ticket: ticket,
            dec,
            enc: Encoder::default(),
            rx,
            sink: Sink::None,
            q: None,
            slots,
            free: vec![1, 0],
            pending: VecDeque::new(),
            tx: TxQueue::default(),
            phase: Phase::Active,
            outstanding_io: 0,
            created_ns: now,
            last_ka_ns: now,
            sq_head: 0,
            idle_polls: 0,
            tx_blocked: false,
            epoll_out: false,
            ns_gen: u64::MAX,
            routes: Vec::new(),
            snapshot: None,
            subsys: None,
            admission: None,
            iov: Vec::with_capacity(crate::tx::MAX_IOV),
            pdu_start: None,
            maxr2t: 0,
        }
    }

    /// The connected queue's id, if connected.
    pub(crate) fn qid(&self) -> Option<u16> {
        self.q.as_ref().map(|q| q.qid)
    }

    /// Resizes the slot table to `n` entries (after Connect).
    pub(crate) fn set_slots(&mut self, n: usize) {
        while self.slots.len() < n {
            self.free.push(self.slots.len() as u16);
            self.slots.push(Req::new());
        }
        // Keep the free list ordered so low slots are reused first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn alloc_slot(&mut self) -> Option<u16> {
        self.free.pop()
    }

    pub(crate) fn free_slot(&mut self, idx: u16) {
        release_slot(&mut self.slots, &mut self.free, idx);
    }

    /// Ensures slot `idx` has a buffer of at least `len` bytes and sets its transfer length.
    pub(crate) fn ensure_buf(&mut self, idx: u16, len: u32) {
        let r = &mut self.slots[idx as usize];
        let need = (len as usize).max(1);
        if r.buf.as_ref().is_none_or(|b| b.len() < need) {
            r.buf = Some(DmaBuf::new(need.next_multiple_of(4096)));
        }
        r.len = len;
    }

    // ---------------------------------------------------------------- receive

    /// Reads and processes what the socket has. Returns true if bytes arrived.
    pub(crate) fn on_readable(&mut self, env: &mut Env<'_>) -> bool {
        let mut got_any = false;
        for _ in 0..MAX_READS_PER_POLL {
            match self.phase {
                Phase::Active => {}
                Phase::Closing { .. } => {
                    self.linger_read();
                    return got_any;
                }
                _ => return got_any,
            }
            if self.tx.bytes > TX_BACKPRESSURE || self.fd < 0 {
                break;
            }
            let mut rx = std::mem::take(&mut self.rx);
            let cap = rx.len();
            let res = self.read_some(env, &mut rx);
            self.rx = rx;
            match res {
                Ok(0) => {
                    self.close_now("peer closed the connection");
                    return got_any;
                }
                Ok(n) => {
                    got_any = true;
                    if n < cap {
                        break;
                    }
                }
                Err(()) => break,
            }
        }
        got_any
    }

    /// One read (plain or direct into a request buffer) and its processing. `Err` = nothing
    /// to read (or the connection failed); `Ok(0)` = EOF.
    fn read_some(&mut self, env: &mut Env<'_>, rx: &mut [u8]) -> Result<usize, ()> {
        if let Sink::Slot {
            idx,
            base,
            len,
            got,
            ..
        } = self.sink
        {
            let rest = len - got;
            if got > 0 && rest >= DIRECT_READ_MIN {
                let dest = self.slots[idx as usize].buf_ptr(base + got);
                let iov = [
                    sys::raw_iovec(dest, rest as usize),
                    sys::raw_iovec(rx.as_ptr(), rx.len()),
                ];
                // SAFETY: `dest..dest+rest` lies inside slot idx's buffer (base + len <= buffer
                // length, checked when the sink was set), which nothing else references while
                // its data arrives; `rx` is exclusively borrowed.
                let r = unsafe { sys::readv(self.fd, &iov) };
                return match r {
                    Ok(SockIo::Done(0)) => Ok(0),
                    Ok(SockIo::Done(n)) => {
                        let direct = n.min(rest as usize);
                        // SAFETY: the kernel just wrote `direct` bytes at `dest`; the slice is
                        // only read (by the decoder) and dropped before the buffer is touched.
                        let placed = unsafe { std::slice::from_raw_parts(dest, direct) };
                        self.process(env, placed);
                        if n > direct && self.phase == Phase::Active {
                            self.process(env, &rx[..n - direct]);
                        }
                        Ok(n)
                    }
                    Ok(SockIo::WouldBlock) => Err(()),
                    Err(_) => {
                        self.close_now("socket read error");
                        Err(())
                    }
                };
            }
        }
        match sys::recv(self.fd, rx) {
            Ok(SockIo::Done(0)) => Ok(0),
            Ok(SockIo::Done(n)) => {
                self.process(env, &rx[..n]);
                Ok(n)
            }
            Ok(SockIo::WouldBlock) => Err(()),
            Err(_) => {
                self.close_now("socket read error");
                Err(())
            }
        }
    }

    /// Feeds received bytes to the decoder and handles the events.
    pub(crate) fn process(&mut self, env: &mut Env<'_>, input: &[u8]) {
        let mut pos = 0usize;
        while self.phase == Phase::Active {
            if self.dec.at_pdu_boundary() {
                self.pdu_start = Some(pos);
            }
            let rest = &input[pos..];
            match self.dec.next(rest) {
                Ok(step) => {
                    pos += step.consumed;
                    let Some(ev) = step.event else { break };
                    if let Err(f) = self.on_event(env, ev) {
                        self.fail(f, input);
                        break;
                    }
                }
                Err(e) => {
                    self.fail(Fatal::Proto(e), input);
                    break;
                }
            }
        }
    }

    fn on_event(&mut self, env: &mut Env<'_>, ev: Event<'_>) -> Result<(), Fatal> {
        match ev {
            Event::Header { pdu, data_len } => match pdu {
                Pdu::IcReq(req) => self.on_icreq(&req),
                Pdu::CapsuleCmd(c) => self.on_capsule(env, c.sqe, data_len),
                Pdu::H2CData(d) => self.on_h2c(&d),
                Pdu::H2CTermReq(t) => {
                    tracing::info!(fes = t.fes, fei = t.fei, "host terminated the connection");
                    Err(Fatal::Close("host sent H2CTermReq"))
                }
                // The decoder only yields host-to-controller PDUs on a controller.
                other => Err(Fatal::Proto(ProtocolError::InvalidHeaderField {
                    offset: 0,
                    what: if matches!(other.pdu_type(), PduType::IcResp) {
                        "ICResp sent to a controller"
                    } else {
                        "PDU type not valid in this direction"
                    },
                })),
            },
            Event::Data { offset, data } => {
                if let Sink::Slot {
                    idx,
                    base,
                    len,
                    ref mut got,
                    ..
                } = self.sink
                {
                    debug_assert_eq!(offset, *got);
                    let at = base + offset;
                    if offset + data.len() as u32 > len {
                        return Err(Fatal::Proto(ProtocolError::DataOutOfRange {
                            offset: at,
                            len: data.len() as u32,
                            what: "data within the PDU",
                        }));
                    }
                    *got += data.len() as u32;
                    let r = &mut self.slots[idx as usize];
                    let dest = r.buf_ptr(at);
                    if dest != data.as_ptr() {
                        let end = at as usize + data.len();
                        if let Some(b) = r.buf.as_mut() {
                            b.as_mut_slice()[at as usize..end].copy_from_slice(data);
                        }
                    }
                }
                Ok(())
            }
            Event::DataEnd => self.on_data_end(env, false),
            Event::DataDigestError { computed, received } => {
                tracing::warn!(computed, received, "data digest error");
                self.on_data_end(env, true)
            }
        }
    }

    fn on_icreq(&mut self, req: &IcReq) -> Result<(), Fatal> {
        let resp = IcResp {
            pfv: nvme_tcp::pdu::PFV_1_0,
            cpda: self.shared.opts.cpda,
            hdgst: req.hdgst,
            ddgst: req.ddgst,
            maxh2cdata: self.shared.opts.max_h2c_data,
        };
        let session = Session::negotiated(Role::Controller, req, &resp);
        let (voff, space) = self.tx.hdr_space(nvme_tcp::pdu::IC_LEN);
        // Parameters come from validated options.
        let n = Encoder::ic_resp(&resp, space).map_err(|_| Fatal::Close("ICResp encoding"))?;
        self.tx.push_hdr(voff, n, None);
        self.dec.set_session(session);
        self.enc.set_session(session);
        self.maxr2t = req.maxr2t;
        Ok(())
    }

    fn on_capsule(&mut self, env: &mut Env<'_>, sqe: Sqe, data_len: u32) -> Result<(), Fatal> {
        if let Some(q) = &self.q {
            self.sq_head = (self.sq_head + 1) % q.size.max(1);
        } else {
            self.sq_head = self.sq_head.wrapping_add(1);
        }
        let Some(idx) = self.alloc_slot() else {
            return Err(Fatal::Proto(ProtocolError::PduSequence {
                what: "more commands outstanding than the queue has entries",
            }));
        };
        {
            let r = &mut self.slots[idx as usize];
            r.state = RState::RecvData;
            r.sqe = sqe;
            r.len = 0;
            r.dir = Dir::None;
            r.incapsule = false;
            r.recvd = 0;
            r.status = Status::SUCCESS;
            r.dw0 = 0;
            r.dw1 = 0;
            r.work = Work::None;
            r.admitted = false;
            r.sub_next = 0;
            r.sub_total = 0;
            r.sub_inflight = 0;
        }
        self.prepare(env, idx, data_len);
        let r = &self.slots[idx as usize];
        if data_len > 0 {
            self.sink = if r.status.is_success() && r.dir == Dir::H2C && r.incapsule {
                Sink::Slot {
                    idx,
                    base: 0,
                    len: data_len,
                    got: 0,
                    capsule: true,
                    last: true,
                }
            } else {
                Sink::Discard(Some(idx))
            };
            return Ok(());
        }
        if !r.status.is_success() {
            self.complete(idx);
            return Ok(());
        }
        if r.dir == Dir::H2C {
            self.send_r2t(idx);
            return Ok(());
        }
        self.execute(env, idx);
        Ok(())
    }

    fn send_r2t(&mut self, idx: u16) {
        let r = &mut self.slots[idx as usize];
        r.state = RState::WaitH2C;
        r.recvd = 0;
        let pdu = R2T {
            cccid: r.sqe.cid(),
            ttag: idx,
            r2to: 0,
            r2tl: r.len,
        };
        let l = self
            .enc
            .layout(PduType::R2T, 0)
            .map(|l| l.header_len)
            .unwrap_or(28);
        let (voff, space) = self.tx.hdr_space(l);
        if let Ok(n) = self.enc.r2t(&pdu, space) {
            self.tx.push_hdr(voff, n, None);
        }
    }

    fn on_h2c(&mut self, d: &nvme_tcp::H2CData) -> Result<(), Fatal> {
        let bad = |what| {
            Fatal::Proto(ProtocolError::DataOutOfRange {
                offset: d.datao,
                len: d.datal,
                what,
            })
        };
        let idx = d.ttag;
        let Some(r) = self.slots.get(idx as usize) else {
            return Err(Fatal::Proto(ProtocolError::InvalidHeaderField {
                offset: 10,
                what: "TTAG does not name an outstanding R2T",
            }));
        };
        if r.state != RState::WaitH2C {
            return Err(Fatal::Proto(ProtocolError::InvalidHeaderField {
                offset: 10,
                what: "TTAG does not name an outstanding R2T",
            }));
        }
        if r.sqe.cid() != d.cccid {
            return Err(Fatal::Proto(ProtocolError::InvalidHeaderField {
                offset: 8,
                what: "CCCID does not match the R2T",
            }));
        }
        if d.datao != r.recvd {
            return Err(bad("the next offset of the R2T"));
        }
        let end = d.datao as u64 + d.datal as u64;
        if end > r.len as u64 {
            return Err(bad("data within the R2T"));
        }
        let last_needed = end == r.len as u64;
        if d.last != last_needed {
            return Err(Fatal::Proto(ProtocolError::PduSequence {
                what: "LAST_PDU flag does not match the end of the R2T",
            }));
        }
        self.sink = Sink::Slot {
            idx,
            base: d.datao,
            len: d.datal,
            got: 0,
            capsule: false,
            last: d.last,
        };
        Ok(())
    }

    fn on_data_end(&mut self, env: &mut Env<'_>, digest_error: bool) -> Result<(), Fatal> {
        let sink = std::mem::replace(&mut self.sink, Sink::None);
        match sink {
            Sink::None => Ok(()),
            Sink::Discard(slot) => {
                if let Some(idx) = slot {
                    if digest_error {
                        self.slots[idx as usize].status = Status::TRANSIENT_TRANSPORT_ERROR;
                    }
                    self.complete(idx);
                }
                Ok(())
            }
            Sink::Slot {
                idx,
                len,
                capsule,
                last,
                ..
            } => {
                let r = &mut self.slots[idx as usize];
                if digest_error && r.status.is_success() {
                    r.status = Status::TRANSIENT_TRANSPORT_ERROR;
                }
                if capsule {
                    if r.status.is_success() {
                        self.execute(env, idx);
                    } else {
                        self.complete(idx);
                    }
                    return Ok(());
                }
                r.recvd += len;
                if last {
                    if r.status.is_success() {
                        self.execute(env, idx);
                    } else {
                        self.complete(idx);
                    }
                }
                Ok(())
            }
        }
    }

    // ---------------------------------------------------------------- completion

    /// Queues the response of slot `idx`: C2HData PDUs for successful reads (the last with
    /// SUCCESS when the host disabled SQ flow control) and/or a CapsuleResp. The slot is
    /// freed once its last byte is sent.
    pub(crate) fn complete(&mut self, idx: u16) {
        if self.phase == Phase::Closed {
            self.free_slot(idx);
            return;
        }
        let (sqid, sqhd_disabled) = match &self.q {
            Some(q) => (q.qid, q.sqhd_disabled),
            None => (0, false),
        };
        let r = &mut self.slots[idx as usize];
        r.state = RState::Tx;
        let status = r.status;
        if !status.is_success() {
            if let Some(q) = &self.q {
                let nsid = r.sqe.nsid();
                let lba = (r.sqe.cdw10() as u64) | ((r.sqe.cdw11() as u64) << 32);
                q.ctrl.record_error(sqid, r.sqe.cid(), status, nsid, lba);
            }
        }
        let cid = r.sqe.cid();
        if status.is_success() && r.dir == Dir::C2H && r.len > 0 {
            let total = r.len;
            let max = self.shared.opts.max_c2h_data;
            let dd = self.enc.session().data_digest;
            let mut off = 0u32;
            while off < total {
                let n = (total - off).min(max);
                let last = off + n == total;
                let success = last && sqhd_disabled;
                let h = C2HData {
                    cccid: cid,
                    datao: off,
                    datal: n,
                    last,
                    success,
                };
                let hl = self
                    .enc
                    .layout(PduType::C2HData, n)
                    .map(|l| l.header_len)
                    .unwrap_or(nvme_tcp::pdu::MAX_ENCODED_HEADER_LEN);
                let (voff, space) = self.tx.hdr_space(hl);
                let Ok(w) = self.enc.c2h_data(&h, space) else {
                    break;
                };
                self.tx.push_hdr(voff, w, None);
                let release_here = success && !dd;
                self.tx
                    .push_data(idx, off, n, if release_here { Some(idx) } else { None });
                if dd {
                    let crc = nvme_tcp::data_digest(&[
                        &self.slots[idx as usize].data()[off as usize..(off + n) as usize]
                    ]);
                    self.tx
                        .push_bytes(&crc.to_le_bytes(), if success { Some(idx) } else { None });
                }
                off += n;
            }
            if sqhd_disabled {
                return;
            }
        }
        let r = &self.slots[idx as usize];
        let mut cqe = Cqe::new(cid, status);
        cqe.set_dw0(r.dw0);
        cqe.set_dw1(r.dw1);
        cqe.set_sqid(sqid);
        cqe.set_sqhd(if sqhd_disabled { 0 } else { self.sq_head });
        let hl = self
            .enc
            .layout(PduType::CapsuleResp, 0)
            .map(|l| l.header_len)
            .unwrap_or(28);
        let (voff, space) = self.tx.hdr_space(hl);
        match self.enc.capsule_resp(&cqe, space) {
            Ok(n) => self.tx.push_hdr(voff, n, Some(idx)),
            Err(_) => self.free_slot(idx),
        }
    }

    /// A block-device I/O of slot `idx` finished.
    pub(crate) fn on_bdev_complete(&mut self, idx: u16, c: &IoCompletion, now: u64) {
        self.outstanding_io = self.outstanding_io.saturating_sub(1);
        let Some(r) = self.slots.get_mut(idx as usize) else {
            return;
        };
        r.sub_inflight = r.sub_inflight.saturating_sub(1);
        if let Err(e) = c.result {
            if r.status.is_success() {
                r.status = crate::io::status_of(e, r.info.op);
            }
        }
        if r.sub_inflight == 0 && r.sub_next >= r.sub_total && r.state == RState::Exec {
            if let Some(a) = self.admission.as_mut() {
                let ok = r.status.is_success();
                a.hook.completed(a.vm_tag, &r.info, now, ok);
            }
            self.complete(idx);
        }
    }

    // ---------------------------------------------------------------- send

    /// Sends what is queued. Returns true if bytes left.
    pub(crate) fn flush(&mut self) -> bool {
        if self.tx.is_empty() || self.fd < 0 || self.tx_blocked {
            return false;
        }
        let mut sent_any = false;
        loop {
            let mut iov = std::mem::take(&mut self.iov);
            {
                let slots = &self.slots;
                self.tx
                    .iovecs(&mut iov, &|slot, off| slots[slot as usize].buf_ptr(off));
            }
            // SAFETY: every iovec points into the header arena or a request buffer owned by
            // this connection, neither of which is modified during the call.
            let r = unsafe { sys::sendmsg(self.fd, &iov) };
            self.iov = iov;
            match r {
                Ok(SockIo::Done(n)) => {
                    sent_any = true;
                    // Slots are freed as their last byte leaves (disjoint borrows: no
                    // list of released slots, which could spill to the heap at high QD).
                    let (slots, free) = (&mut self.slots, &mut self.free);
                    self.tx.advance(n, &mut |s| release_slot(slots, free, s));
                    if self.tx.is_empty() {
                        break;
                    }
                }
                Ok(SockIo::WouldBlock) => {
                    self.tx_blocked = true;
                    break;
                }
                Err(_) => {
                    self.close_now("socket write error");
                    break;
                }
            }
        }
        sent_any
    }

    /// For in-memory connections: takes everything queued as bytes.
    pub(crate) fn take_output(&mut self, out: &mut Vec<u8>) {
        let slots = &self.slots;
        let mut released = Vec::new();
        self.tx.drain_to(
            out,
            &|slot, off, len| {
                slots[slot as usize].data_all()[off as usize..(off + len) as usize].to_vec()
            },
            &mut |s| released.push(s),
        );
        for s in released {
            self.free_slot(s);
        }
    }

    // ---------------------------------------------------------------- teardown

    /// A fatal error: queue a C2HTermReq when the error calls for one, then close.
    fn fail(&mut self, f: Fatal, input: &[u8]) {
        match f {
            Fatal::Proto(e) => {
                tracing::info!(peer = ?self.peer, error = %e, "NVMe/TCP protocol error, terminating connection");
                if let Some(fes) = e.fes() {
                    let start = self.pdu_start.unwrap_or(input.len()).min(input.len());
                    let hdr = &input[start..input.len().min(start + nvme_tcp::pdu::TERM_MAX_DATA)];
                    self.send_term_req(fes, e.fei(), hdr);
                }
                self.begin_close();
            }
            Fatal::Close(why) => {
                tracing::debug!(peer = ?self.peer, why, "closing connection");
                self.close_now(why);
            }
        }
    }

    fn send_term_req(&mut self, fes: Fes, fei: u32, data: &[u8]) {
        let mut b = [0u8; nvme_tcp::pdu::TERM_HLEN + nvme_tcp::pdu::TERM_MAX_DATA];
        if let Ok(n) = nvme_tcp::Encoder::term_req(Role::Controller, fes, fei, data, &mut b) {
            self.tx.push_bytes(&b[..n], None);
        }
    }

    /// Stop serving: send what is queued, shut down the write side, linger, close.
    pub(crate) fn begin_close(&mut self) {
        if matches!(self.phase, Phase::Active | Phase::Draining) {
            self.phase = Phase::Closing {
                deadline: crate::now() + CLOSE_LINGER_NS,
                shut: false,
            };
            self.sink = Sink::None;
        }
    }

    /// Stop reading new commands; close once in-flight work is done.
    pub(crate) fn begin_drain(&mut self) {
        if self.phase == Phase::Active {
            self.phase = Phase::Draining;
        }
    }

    fn linger_read(&mut self) {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match sys::recv(self.fd, &mut buf) {
                Ok(SockIo::Done(0)) | Err(_) => {
                    self.close_now("closed after TermReq");
                    return;
                }
                Ok(SockIo::Done(_)) => {}
                Ok(SockIo::WouldBlock) => return,
            }
        }
    }

    /// Closes the socket now. The connection stays (phase `Closed`) until every block-device
    /// I/O returned its buffer.
    pub(crate) fn close_now(&mut self, why: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        tracing::debug!(peer = ?self.peer, qid = ?self.qid(), why, "connection closed");
        self.phase = Phase::Closed;
        self.sink = Sink::None;
        if let Some(s) = self.sock.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.fd = -1;
        let mut released = Vec::new();
        self.tx.clear(&mut |s| released.push(s));
        for s in released {
            self.free_slot(s);
        }
        // Commands not at the block device are dropped: nothing is written that was not
        // received completely, and nothing is acknowledged.
        for i in 0..self.slots.len() {
            let st = self.slots[i].state;
            let idle = self.slots[i].sub_inflight == 0;
            if st != RState::Free && (st != RState::Exec && st != RState::Pending || idle) {
                self.free_slot(i as u16);
            }
        }
        self.pending.clear();
        self.on_closed();
    }

    /// Detaches from the controller when the socket goes away.
    fn on_closed(&mut self) {
        if let Some(q) = &self.q {
            match q.kind {
                QKind::Admin => {
                    q.ctrl.fail("admin queue closed");
                    match &self.subsys {
                        Some(s) => s.remove_controller(q.ctrl.cntlid()),
                        None => self.shared.remove_discovery_controller(q.ctrl.cntlid()),
                    }
                }
                QKind::Io => {
                    q.ctrl.lock().io_qids.remove(&q.qid);
                }
            }
        }
    }

    /// Everything done: can be dropped.
    pub(crate) fn is_reapable(&self) -> bool {
        self.phase == Phase::Closed && self.outstanding_io == 0
    }

    /// Releases channel references (when the connection is dropped).
    pub(crate) fn release_routes(&mut self, chans: &mut Channels) {
        for r in self.routes.drain(..).flatten() {
            chans.release(r.chan);
        }
    }

    /// Housekeeping run by the group every poll for this connection: teardown of the
    /// association, draining, closing, AEN delivery, pending submissions.
    pub(crate) fn tick(&mut self, env: &mut Env<'_>) {
        if let Some(q) = &self.q {
            let dead = q.ctrl.is_dead() || (q.kind == QKind::Io && !q.ctrl.is_ready());
            if dead && matches!(self.phase, Phase::Active | Phase::Draining) {
                self.close_now("controller torn down");
                return;
            }
        }
        match self.phase {
            Phase::Active => {
                if !self.pending.is_empty() {
                    self.kick(env);
                }
                let (events, io) = match &self.q {
                    Some(q) => (
                        q.kind == QKind::Admin && q.ctrl.has_events(),
                        q.kind == QKind::Io,
                    ),
                    None => (false, false),
                };
                if events {
                    self.deliver_pending_events();
                }
                if io {
                    self.refresh_routes(env);
                }
            }
            Phase::Draining => {
                if !self.pending.is_empty() {
                    self.kick(env);
                }
                if self.outstanding_io == 0 && self.pending.is_empty() && self.tx.is_empty() {
                    self.close_now("drained");
                }
            }
            Phase::Closing { deadline, shut } => {
                if self.tx.is_empty() && !shut {
                    if let Some(s) = &self.sock {
                        let _ = s.shutdown(Shutdown::Write);
                    }
                    self.phase = Phase::Closing {
                        deadline,
                        shut: true,
                    };
                }
                if env.now >= deadline || crate::now() >= deadline {
                    self.close_now("linger over");
                }
            }
            Phase::Closed => {}
        }
    }

    /// Timers checked every few milliseconds: Connect timeout and Keep Alive expiry.
    pub(crate) fn check_timers(&mut self, now: u64) {
        if self.phase != Phase::Active {
            return;
        }
        match &self.q {
            None => {
                let limit = self
                    .shared
                    .opts
                    .connect_timeout_ms
                    .saturating_mul(1_000_000);
                if now.saturating_sub(self.created_ns) > limit {
                    self.close_now("no Connect within the connect timeout");
                }
            }
            Some(q) if q.kind == QKind::Admin => {
                let kato = q.ctrl.kato_ms() as u64;
                if kato > 0 && now.saturating_sub(self.last_ka_ns) > kato * 1_000_000 {
                    tracing::info!(
                        cntlid = q.ctrl.cntlid(),
                        kato_ms = kato,
                        "keep alive timeout expired"
                    );
                    q.ctrl.fail("keep alive timeout expired");
                    self.close_now("keep alive timeout expired");
                }
            }
            Some(_) => {}
        }
    }
}

impl Req {
    /// The whole buffer (test output copying).
    pub(crate) fn data_all(&self) -> &[u8] {
        match &self.buf {
            Some(b) => b.as_slice(),
            None => &[],
        }
    }
}
