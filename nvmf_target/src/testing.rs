//! A small blocking NVMe/TCP initiator built on the shared codec, for tests, the daemon
//! tests and tools. It speaks the protocol plainly (ICReq, Connect, Property Get/Set,
//! admin and I/O commands, in-capsule and R2T writes, multi-PDU reads, digests) and also
//! lets a test send raw bytes to exercise bad input. Not for the data path: it allocates
//! per command and blocks.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nvme_spec::cmd::{Features, GetLogPage, Identify, ReadWrite};
use nvme_spec::fabrics::{Connect, PropertyGet, PropertySet, CNTLID_DYNAMIC};
use nvme_spec::regs::{offset, Cc, Csts};
use nvme_spec::sqe::{Psdt, SglDescriptor};
use nvme_spec::{AdminOpcode, ConnectData, Cqe, NvmOpcode, Sqe, Status};
use nvme_tcp::pdu::Role;
use nvme_tcp::{
    C2HData, Decoder, DecoderConfig, Encoder, Event, H2CData, IcReq, IcResp, Pdu, ProtocolError,
    Session, R2T,
};

/// Errors of the test initiator.
#[derive(Debug, thiserror::Error)]
pub enum InitiatorError {
    /// Socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The target sent something the codec rejects.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The target terminated the connection.
    #[error("target sent C2HTermReq fes {fes:#x} fei {fei}")]
    Terminated {
        /// FES.
        fes: u16,
        /// FEI.
        fei: u32,
    },
    /// The target closed the connection.
    #[error("connection closed by the target")]
    Closed,
    /// No answer in time.
    #[error("timed out waiting for the target")]
    Timeout,
    /// Something the initiator did not expect.
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// A command failed.
    #[error("command failed with {0:?}")]
    Status(Status),
}

/// Connection parameters.
#[derive(Debug, Clone)]
pub struct InitiatorOptions {
    /// Ask for header digests.
    pub hdgst: bool,
    /// Ask for data digests.
    pub ddgst: bool,
    /// Host PDU data alignment.
    pub hpda: u8,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Keep alive timeout for the admin Connect (ms).
    pub kato_ms: u32,
    /// Queue entries asked for (SQSIZE + 1).
    pub queue_entries: u16,
    /// Ask the target to disable SQ flow control (reads then complete by C2HData SUCCESS).
    pub disable_sqflow: bool,
    /// How long to wait for a PDU.
    pub timeout: Duration,
}

impl Default for InitiatorOptions {
    fn default() -> Self {
        InitiatorOptions {
            hdgst: false,
            ddgst: false,
            hpda: 0,
            hostnqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001".into(),
            hostid: [1; 16],
            kato_ms: 0,
            queue_entries: 32,
            disable_sqflow: false,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A received PDU, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxPdu {
    /// CapsuleResp.
    Resp(Cqe),
    /// C2HData with its data; `digest_ok` false on a data digest mismatch.
    C2H {
        /// Header.
        hdr: C2HData,
        /// Data.
        data: Vec<u8>,
        /// Data digest matched (or digests off).
        digest_ok: bool,
    },
    /// R2T.
    R2T(R2T),
    /// C2HTermReq with its error data.
    Term {
        /// FES.
        fes: u16,
        /// FEI.
        fei: u32,
        /// Offending header bytes.
        data: Vec<u8>,
    },
}

/// A finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The response (synthesized with status success when the target used C2HData SUCCESS).
    pub cqe: Cqe,
    /// Data received (reads).
    pub data: Vec<u8>,
    /// The command completed through the C2HData SUCCESS flag, without a CapsuleResp.
    pub by_success_flag: bool,
    /// Number of C2HData PDUs received.
    pub c2h_pdus: usize,
    /// Number of R2Ts answered.
    pub r2ts: usize,
}

impl Completion {
    /// The status.
    pub fn status(&self) -> Status {
        self.cqe.status()
    }

    /// Ok if the command succeeded.
    pub fn ok(self) -> Result<Completion, InitiatorError> {
        if self.cqe.status().is_success() {
            Ok(self)
        } else {
            Err(InitiatorError::Status(self.cqe.status()))
        }
    }
}

struct Outstanding {
    write: Vec<u8>,
    read: Vec<u8>,
    c2h_pdus: usize,
    r2ts: usize,
}

/// One NVMe/TCP connection (one queue) to a target.
pub struct Connection {
    stream: TcpStream,
    dec: Decoder,
    enc: Encoder,
    rx: Vec<u8>,
    rx_pos: usize,
    rx_len: usize,
    cur: Option<(Pdu, Vec<u8>)>,
    queued: VecDeque<RxPdu>,
    out: HashMap<u16, Outstanding>,
    done: VecDeque<(u16, Completion)>,
    next_cid: u16,
    /// Negotiated ICResp.
    pub icresp: IcResp,
    /// Options in force.
    pub opts: InitiatorOptions,
    /// In-capsule data size the target accepts (from Identify IOCCSZ, default 8192).
    pub icd_size: u32,
    /// Queue id after Connect.
    pub qid: u16,
    /// Controller id after Connect.
    pub cntlid: u16,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("qid", &self.qid)
            .field("cntlid", &self.cntlid)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a TCP connection without the IC exchange (for bad-input tests).
    pub fn open_raw(
        addr: SocketAddr,
        opts: &InitiatorOptions,
    ) -> Result<Connection, InitiatorError> {
        let stream = TcpStream::connect_timeout(&addr, opts.timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(opts.timeout))?;
        let mut cfg = DecoderConfig::host();
        cfg.check_reserved = true;
        Ok(Connection {
            stream,
            dec: Decoder::new(cfg),
            enc: Encoder::default(),
            rx: vec![0; 256 * 1024],
            rx_pos: 0,
            rx_len: 0,
            cur: None,
            queued: VecDeque::new(),
            out: HashMap::new(),
            done: VecDeque::new(),
            next_cid: 1,
            icresp: IcResp::default(),
            opts: opts.clone(),
            icd_size: 8192,
            qid: 0,
            cntlid: 0,
        })
    }

    /// Opens a connection and performs the ICReq / ICResp exchange.
    pub fn open(addr: SocketAddr, opts: &InitiatorOptions) -> Result<Connection, InitiatorError> {
        let mut c = Connection::open_raw(addr, opts)?;
        let req = IcReq {
            pfv: 0,
            hpda: opts.hpda,
            hdgst: opts.hdgst,
            ddgst: opts.ddgst,
            maxr2t: 0,
        };
        let mut b = [0u8; 128];
        let n =
            Encoder::ic_req(&req, &mut b).map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
        c.stream.write_all(&b[..n])?;
        let resp = match c.recv_pdu_raw()? {
            (Pdu::IcResp(r), _) => r,
            (Pdu::C2HTermReq(t), _) => {
                return Err(InitiatorError::Terminated {
                    fes: t.fes,
                    fei: t.fei,
                })
            }
            (p, _) => return Err(InitiatorError::Unexpected(format!("{p:?} before ICResp"))),
        };
        let s = Session::negotiated(Role::Host, &req, &resp);
        c.dec.set_session(s);
        c.enc.set_session(s);
        c.icresp = resp;
        Ok(c)
    }

    /// Gives up the connection for a caller that drives it itself (benchmarks): the socket,
    /// the negotiated session and the decoder. Fails if received bytes are still buffered.
    pub fn into_parts(self) -> Result<(TcpStream, Session, Decoder), InitiatorError> {
        if self.rx_pos < self.rx_len || !self.dec.at_pdu_boundary() || !self.out.is_empty() {
            return Err(InitiatorError::Unexpected(
                "connection has unprocessed input".into(),
            ));
        }
        let s = self.enc.session();
        Ok((self.stream, s, self.dec))
    }

    /// The encoder (for building PDUs by hand).
    pub fn encoder(&self) -> &Encoder {
        &self.enc
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) -> Result<(), InitiatorError> {
        self.stream.write_all(b)?;
        Ok(())
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn fill(&mut self) -> Result<(), InitiatorError> {
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            match self.stream.read(&mut self.rx) {
                Ok(0) => return Err(InitiatorError::Closed),
                Ok(n) => {
                    self.rx_pos = 0;
                    self.rx_len = n;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(InitiatorError::Timeout);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(InitiatorError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives the next complete PDU (header and data).
    fn recv_pdu_raw(&mut self) -> Result<(Pdu, Vec<u8>), InitiatorError> {
        {
            if self.rx_pos >= self.rx_len && self.dec.at_pdu_boundary() {
                self.fill()?;
            }
            // Step until the decoder wants more input (an event may complete without
            // input: the end of a PDU's data).
            loop {
                let step = self.dec.next(&self.rx[self.rx_pos..self.rx_len])?;
                self.rx_pos += step.consumed;
                match step.event {
                    None => {
                        if self.rx_pos >= self.rx_len {
                            self.fill()?;
                        }
                        continue;
                    }
                    Some(Event::Header { pdu, data_len }) => {
                        if data_len == 0 {
                            return Ok((pdu, Vec::new()));
                        }
                        self.cur = Some((pdu, Vec::with_capacity(data_len as usize)));
                    }
                    Some(Event::Data { data, .. }) => {
                        if let Some((_, d)) = self.cur.as_mut() {
                            d.extend_from_slice(data);
                        }
                    }
                    Some(Event::DataEnd) => {
                        if let Some(c) = self.cur.take() {
                            return Ok(c);
                        }
                    }
                    Some(Event::DataDigestError { .. }) => {
                        if let Some((p, d)) = self.cur.take() {
                            if let Pdu::C2HData(h) = p {
                                self.queued.push_back(RxPdu::C2H {
                                    hdr: h,
                                    data: d,
                                    digest_ok: false,
                                });
                                continue;
                            }
                            return Ok((p, d));
                        }
                    }
                }
            }
        }
    }

    /// Receives the next PDU.
    pub fn recv_pdu(&mut self) -> Result<RxPdu, InitiatorError> {
        if let Some(p) = self.queued.pop_front() {
            return Ok(p);
        }
        let (pdu, data) = self.recv_pdu_raw()?;
        Ok(match pdu {
            Pdu::CapsuleResp(r) => RxPdu::Resp(r.cqe),
            Pdu::C2HData(h) => RxPdu::C2H {
                hdr: h,
                data,
                digest_ok: true,
            },
            Pdu::R2T(r) => RxPdu::R2T(r),
            Pdu::C2HTermReq(t) => RxPdu::Term {
                fes: t.fes,
                fei: t.fei,
                data,
            },
            other => return Err(InitiatorError::Unexpected(format!("{other:?}"))),
        })
    }

    /// Waits until the target closes the connection (after a TermReq, a KATO expiry...).
    /// Returns the PDUs received before the close.
    pub fn wait_closed(&mut self) -> Result<Vec<RxPdu>, InitiatorError> {
        let mut got = Vec::new();
        loop {
            match self.recv_pdu() {
                Ok(p) => got.push(p),
                Err(InitiatorError::Closed) => return Ok(got),
                Err(InitiatorError::Protocol(_)) => {
                    // Garbage after a TermReq is not our concern; keep reading raw.
                    let mut b = [0u8; 4096];
                    loop {
                        match self.stream.read(&mut b) {
                            Ok(0) => return Ok(got),
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                                return Ok(got)
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A fresh command identifier.
    pub fn alloc_cid(&mut self) -> u16 {
        loop {
            let c = self.next_cid;
            self.next_cid = self.next_cid.wrapping_add(1);
            if c != 0xffff && !self.out.contains_key(&c) {
                return c;
            }
        }
    }

    /// Sends a command: `write` is its data to the target (in the capsule when it fits,
    /// else by R2T), `read_len` the data expected back. The SQE's CID and SGL are set here.
    /// Returns the CID.
    pub fn submit(
        &mut self,
        mut sqe: Sqe,
        write: &[u8],
        read_len: usize,
    ) -> Result<u16, InitiatorError> {
        let cid = self.alloc_cid();
        sqe.set_cid(cid);
        if sqe.psdt() == Psdt::Prp {
            sqe.set_psdt(Psdt::SglMptrContig);
        }
        let incapsule = !write.is_empty() && write.len() <= self.icd_size as usize;
        if incapsule {
            sqe.set_sgl1(SglDescriptor::in_capsule(0, write.len() as u32));
        } else {
            let len = if write.is_empty() {
                read_len
            } else {
                write.len()
            };
            sqe.set_sgl1(SglDescriptor::transport(len as u32));
        }
        let mut b = Vec::with_capacity(128 + write.len());
        let data: &[&[u8]] = if incapsule { &[write] } else { &[] };
        self.enc
            .push_pdu(&Pdu::CapsuleCmd(nvme_tcp::CapsuleCmd { sqe }), data, &mut b)
            .map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
        self.stream.write_all(&b)?;
        self.out.insert(
            cid,
            Outstanding {
                write: if incapsule {
                    Vec::new()
                } else {
                    write.to_vec()
                },
                read: Vec::new(),
                c2h_pdus: 0,
                r2ts: 0,
            },
        );
        Ok(cid)
    }

    /// Sends a capsule exactly as given (SGL and CID untouched), with in-capsule `data`.
    pub fn submit_raw(&mut self, sqe: Sqe, data: &[u8]) -> Result<(), InitiatorError> {
        let mut b = Vec::new();
        let d: &[&[u8]] = if data.is_empty() { &[] } else { &[data] };
        self.enc
            .push_pdu(&Pdu::CapsuleCmd(nvme_tcp::CapsuleCmd { sqe }), d, &mut b)
            .map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
        self.stream.write_all(&b)?;
        self.out.insert(
            sqe.cid(),
            Outstanding {
                write: Vec::new(),
                read: Vec::new(),
                c2h_pdus: 0,
                r2ts: 0,
            },
        );
        Ok(())
    }

    /// Sends hand-made PDU bytes carrying command `cid` (so its completion can be waited for).
    pub fn submit_bytes(&mut self, cid: u16, bytes: &[u8]) -> Result<(), InitiatorError> {
        self.stream.write_all(bytes)?;
        self.out.insert(
            cid,
            Outstanding {
                write: Vec::new(),
                read: Vec::new(),
                c2h_pdus: 0,
                r2ts: 0,
            },
        );
        Ok(())
    }

    /// Answers an R2T with H2CData PDUs of at most MAXH2CDATA bytes.
    fn answer_r2t(&mut self, r: &R2T) -> Result<(), InitiatorError> {
        let max = self.icresp.maxh2cdata.max(4096) as usize;
        let Some(o) = self.out.get_mut(&r.cccid) else {
            return Err(InitiatorError::Unexpected(format!(
                "R2T for unknown cid {}",
                r.cccid
            )));
        };
        o.r2ts += 1;
        let start = r.r2to as usize;
        let end = start + r.r2tl as usize;
        if end > o.write.len() {
            return Err(InitiatorError::Unexpected(
                "R2T beyond the write data".into(),
            ));
        }
        let data = o.write[start..end].to_vec();
        let mut off = 0;
        let mut b = Vec::with_capacity(data.len() + 256);
        while off < data.len() {
            let n = (data.len() - off).min(max);
            let h = H2CData {
                cccid: r.cccid,
                ttag: r.ttag,
                datao: (start + off) as u32,
                datal: n as u32,
                last: off + n == data.len(),
            };
            self.enc
                .push_pdu(&Pdu::H2CData(h), &[&data[off..off + n]], &mut b)
                .map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
            off += n;
        }
        self.stream.write_all(&b)?;
        Ok(())
    }

    /// Processes PDUs until some command completes; returns it.
    pub fn wait_any(&mut self) -> Result<(u16, Completion), InitiatorError> {
        if let Some(d) = self.done.pop_front() {
            return Ok(d);
        }
        loop {
            match self.recv_pdu()? {
                RxPdu::Resp(cqe) => {
                    let cid = cqe.cid();
                    let o = self.out.remove(&cid).ok_or_else(|| {
                        InitiatorError::Unexpected(format!("response for unknown cid {cid}"))
                    })?;
                    return Ok((
                        cid,
                        Completion {
                            cqe,
                            data: o.read,
                            by_success_flag: false,
                            c2h_pdus: o.c2h_pdus,
                            r2ts: o.r2ts,
                        },
                    ));
                }
                RxPdu::C2H {
                    hdr,
                    data,
                    digest_ok,
                } => {
                    if !digest_ok {
                        return Err(InitiatorError::Unexpected("C2HData digest mismatch".into()));
                    }
                    let o = self.out.get_mut(&hdr.cccid).ok_or_else(|| {
                        InitiatorError::Unexpected(format!("C2HData for unknown cid {}", hdr.cccid))
                    })?;
                    if hdr.datao as usize != o.read.len() {
                        return Err(InitiatorError::Unexpected("C2HData out of order".into()));
                    }
                    o.read.extend_from_slice(&data);
                    o.c2h_pdus += 1;
                    if hdr.success {
                        let o = self.out.remove(&hdr.cccid).expect("present");
                        let cqe = Cqe::new(hdr.cccid, Status::SUCCESS);
                        return Ok((
                            hdr.cccid,
                            Completion {
                                cqe,
                                data: o.read,
                                by_success_flag: true,
                                c2h_pdus: o.c2h_pdus,
                                r2ts: o.r2ts,
                            },
                        ));
                    }
                }
                RxPdu::R2T(r) => self.answer_r2t(&r)?,
                RxPdu::Term { fes, fei, .. } => {
                    return Err(InitiatorError::Terminated { fes, fei })
                }
            }
        }
    }

    /// Waits for command `cid` (others completing meanwhile are kept for [`wait_any`](Self::wait_any)).
    pub fn wait(&mut self, cid: u16) -> Result<Completion, InitiatorError> {
        if let Some(i) = self.done.iter().position(|(c, _)| *c == cid) {
            return Ok(self.done.remove(i).expect("present").1);
        }
        loop {
            let (c, comp) = {
                let saved = std::mem::take(&mut self.done);
                let r = self.wait_any();
                self.done = saved;
                r?
            };
            if c == cid {
                return Ok(comp);
            }
            self.done.push_back((c, comp));
        }
    }

    /// Submits a command and waits for it.
    pub fn command(
        &mut self,
        sqe: Sqe,
        write: &[u8],
        read_len: usize,
    ) -> Result<Completion, InitiatorError> {
        let cid = self.submit(sqe, write, read_len)?;
        self.wait(cid)
    }

    /// Fabrics Connect of queue `qid` (0 = admin) to `subnqn`.
    pub fn connect(
        &mut self,
        qid: u16,
        subnqn: &str,
        cntlid: u16,
    ) -> Result<Completion, InitiatorError> {
        let c = Connect {
            recfmt: 0,
            qid,
            sqsize: self.opts.queue_entries.saturating_sub(1),
            cattr: if self.opts.disable_sqflow {
                Connect::CATTR_SQ_FLOW_CONTROL_DISABLE
            } else {
                0
            },
            kato: if qid == 0 { self.opts.kato_ms } else { 0 },
        };
        let mut d = ConnectData::zeroed();
        d.set_hostid(self.opts.hostid);
        d.set_cntlid(cntlid);
        d.set_subnqn(subnqn)
            .map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
        d.set_hostnqn(&self.opts.hostnqn)
            .map_err(|e| InitiatorError::Unexpected(e.to_string()))?;
        let comp = self.command(c.to_sqe(0), d.as_bytes(), 0)?;
        if comp.status().is_success() {
            self.qid = qid;
            self.cntlid = comp.cqe.dw0() as u16;
        }
        Ok(comp)
    }

    /// Property Get.
    pub fn prop_get(&mut self, off: u32, size8: bool) -> Result<u64, InitiatorError> {
        let c = self
            .command(PropertyGet::to_sqe(off, size8, 0), &[], 0)?
            .ok()?;
        Ok(c.cqe.dw0_dw1())
    }

    /// Property Set.
    pub fn prop_set(
        &mut self,
        off: u32,
        size8: bool,
        v: u64,
    ) -> Result<Completion, InitiatorError> {
        self.command(PropertySet::to_sqe(off, size8, v, 0), &[], 0)
    }

    /// Enables the controller (CC.EN with 64/16-byte entries) and waits for CSTS.RDY.
    pub fn enable(&mut self) -> Result<(), InitiatorError> {
        let cc = Cc(0).with_en(1).with_iosqes(6).with_iocqes(4);
        self.prop_set(offset::CC, false, cc.0 as u64)?.ok()?;
        let deadline = Instant::now() + self.opts.timeout;
        loop {
            let csts = Csts(self.prop_get(offset::CSTS, false)? as u32);
            if csts.ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(InitiatorError::Timeout);
            }
        }
    }

    /// Identify with `cns` for `nsid`.
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Completion, InitiatorError> {
        let mut s = Sqe::new(AdminOpcode::Identify.as_u8(), 0, nsid);
        Identify {
            cns,
            ..Default::default()
        }
        .apply(&mut s);
        self.command(s, &[], 4096)
    }

    /// Get Log Page of `len` bytes at `offset`.
    pub fn get_log(
        &mut self,
        lid: u8,
        nsid: u32,
        len: u32,
        offset: u64,
        lsp: u8,
        rae: bool,
    ) -> Result<Completion, InitiatorError> {
        let mut s = Sqe::new(AdminOpcode::GetLogPage.as_u8(), 0, nsid);
        GetLogPage {
            lid,
            lsp,
            rae,
            numd: len / 4,
            lpo: offset,
            ..Default::default()
        }
        .apply(&mut s);
        self.command(s, &[], len as usize)
    }

    /// Get Features.
    pub fn get_features(&mut self, fid: u8) -> Result<Completion, InitiatorError> {
        let mut s = Sqe::new(AdminOpcode::GetFeatures.as_u8(), 0, 0);
        Features {
            fid,
            ..Default::default()
        }
        .apply(&mut s);
        self.command(s, &[], 0)
    }

    /// Set Features.
    pub fn set_features(&mut self, fid: u8, cdw11: u32) -> Result<Completion, InitiatorError> {
        let mut s = Sqe::new(AdminOpcode::SetFeatures.as_u8(), 0, 0);
        Features {
            fid,
            cdw11,
            ..Default::default()
        }
        .apply(&mut s);
        self.command(s, &[], 0)
    }

    /// Keep Alive.
    pub fn keep_alive(&mut self) -> Result<Completion, InitiatorError> {
        self.command(Sqe::new(AdminOpcode::KeepAlive.as_u8(), 0, 0), &[], 0)
    }

    /// Submits an Asynchronous Event Request (completes when an event happens).
    pub fn submit_aer(&mut self) -> Result<u16, InitiatorError> {
        self.submit(
            Sqe::new(AdminOpcode::AsyncEventRequest.as_u8(), 0, 0),
            &[],
            0,
        )
    }

    /// Read `nlb` blocks of `bs` bytes.
    pub fn read(
        &mut self,
        nsid: u32,
        slba: u64,
        nlb: u32,
        bs: u32,
    ) -> Result<Completion, InitiatorError> {
        self.command(
            rw_sqe(NvmOpcode::Read, nsid, slba, nlb),
            &[],
            (nlb * bs) as usize,
        )
    }

    /// Write `data` (a whole number of blocks of `bs` bytes).
    pub fn write(
        &mut self,
        nsid: u32,
        slba: u64,
        data: &[u8],
        bs: u32,
    ) -> Result<Completion, InitiatorError> {
        let nlb = (data.len() / bs as usize) as u32;
        self.command(rw_sqe(NvmOpcode::Write, nsid, slba, nlb), data, 0)
    }
}

/// A Read or Write SQE.
pub fn rw_sqe(op: NvmOpcode, nsid: u32, slba: u64, nlb: u32) -> Sqe {
    let mut s = Sqe::new(op.as_u8(), 0, nsid);
    s.set_psdt(Psdt::SglMptrContig);
    ReadWrite {
        slba,
        nlb,
        ..Default::default()
    }
    .apply(&mut s);
    s
}

/// An association: an admin queue and I/O queues to one subsystem.
#[derive(Debug)]
pub struct Host {
    /// Admin queue.
    pub admin: Connection,
    /// I/O queues.
    pub io: Vec<Connection>,
}

impl Host {
    /// Connects the admin queue, enables the controller, asks for `io_queues` queues and
    /// connects them.
    pub fn connect(
        addr: SocketAddr,
        subnqn: &str,
        opts: &InitiatorOptions,
        io_queues: u16,
    ) -> Result<Host, InitiatorError> {
        let mut admin = Connection::open(addr, opts)?;
        let mut aopts = opts.clone();
        aopts.queue_entries = 32;
        admin.opts = aopts;
        admin.connect(0, subnqn, CNTLID_DYNAMIC)?.ok()?;
        admin.enable()?;
        let ic = admin.identify(nvme_spec::cmd::cns::CONTROLLER, 0)?.ok()?;
        let id = nvme_spec::IdentifyController::from_slice(&ic.data)
            .ok_or_else(|| InitiatorError::Unexpected("short Identify".into()))?;
        let icd = id.ioccsz().saturating_mul(16).saturating_sub(64);
        admin.icd_size = icd;
        if io_queues > 0 {
            let nq = nvme_spec::features::NumberOfQueues {
                nsq: io_queues as u32,
                ncq: io_queues as u32,
            };
            admin
                .set_features(
                    nvme_spec::features::FeatureId::NumberOfQueues.as_u8(),
                    nq.to_dw(),
                )?
                .ok()?;
        }
        let mut io = Vec::new();
        for q in 1..=io_queues {
            let mut c = Connection::open(addr, opts)?;
            c.icd_size = icd;
            c.connect(q, subnqn, admin.cntlid)?.ok()?;
            io.push(c);
        }
        Ok(Host { admin, io })
    }
}
