//! A scripted NVMe/TCP target on the shared codec, for the initiator's tests: one subsystem,
//! RAM namespaces, several listeners (portals) with per-listener ANA state, KATO enforcement,
//! AENs on ANA change, and fault injection per listener (silence, delayed write execution,
//! malformed PDUs, wrong CIDs, unsolicited completions, abrupt close).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvme_spec::cmd::{cns, DsmRange, Features, GetLogPage, Identify, ReadWrite};
use nvme_spec::fabrics::{Connect, PropertyGet, PropertySet};
use nvme_spec::features::{AsyncEvent, FeatureId};
use nvme_spec::identify::{NsIdDescList, NsIdDescriptor};
use nvme_spec::log::AnaLogBuilder;
use nvme_spec::regs::{offset, Cap, Cc, Csts};
use nvme_spec::{
    AnaState, ConnectData, Cqe, IdentifyController, IdentifyNamespace, LbaFormat, NsIdList, Sqe,
    Status,
};
use nvme_tcp::{
    C2HData, CapsuleResp, Decoder, DecoderConfig, Encoder, Event, IcResp, Pdu, Role, Session, R2T,
};

pub const SUBNQN: &str = "nqn.2024-01.io.vmpath:mock";

/// Faults of one listener.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Read and discard everything; answer nothing (a black hole).
    pub silent: bool,
    /// Execute writes this long after they arrive (and only then answer).
    pub write_delay: Option<Duration>,
    /// Answer the next I/O with a completion for a CID that has no command.
    pub wrong_cid: bool,
    /// Send a malformed PDU instead of the next I/O answer.
    pub malformed: bool,
    /// Send an unsolicited completion (CID 999) before the next I/O answer.
    pub unsolicited: bool,
}

pub struct MockNs {
    pub nsid: u32,
    pub block_size: u32,
    pub data: Mutex<Vec<u8>>,
    pub nguid: [u8; 16],
}

struct CtrlRec {
    listener: usize,
    kato_ms: u32,
    last_ka: Instant,
    torn_down: bool,
    conns: Vec<Arc<Mutex<TcpStream>>>,
    aers: Vec<(u16, Arc<Mutex<TcpStream>>)>,
}

struct Delayed {
    due: Instant,
    cntlid: u16,
    nsid: u32,
    lba: u64,
    data: Vec<u8>,
    cid: u16,
    out: Arc<Mutex<TcpStream>>,
    listener: usize,
}

pub struct Shared {
    pub ns: Vec<MockNs>,
    ana: Mutex<Vec<AnaState>>,
    pub faults: Mutex<Vec<Faults>>,
    ctrls: Mutex<HashMap<u16, CtrlRec>>,
    next_cntlid: AtomicU16,
    delayed: Mutex<Vec<Delayed>>,
    stop: AtomicBool,
    listeners: Mutex<Vec<Option<SocketAddr>>>,
    pub ios: AtomicU64,
    pub writes_executed: AtomicU64,
    pub teardowns: AtomicU64,
    /// (listener, lba, first byte) of every executed write, in order.
    pub write_log: Mutex<Vec<(usize, u64, u8)>>,
}

pub struct MockTarget {
    pub shared: Arc<Shared>,
    pub addrs: Vec<SocketAddr>,
}

impl MockTarget {
    /// Starts `listeners` portals on 127.0.0.1 with `nns` namespaces of `blocks` 4 KiB blocks.
    pub fn start(listeners: usize, nns: u32, blocks: u64) -> MockTarget {
        let ns = (1..=nns)
            .map(|nsid| MockNs {
                nsid,
                block_size: 4096,
                data: Mutex::new(vec![0; (blocks * 4096) as usize]),
                nguid: [nsid as u8; 16],
            })
            .collect();
        let shared = Arc::new(Shared {
            ns,
            ana: Mutex::new(vec![AnaState::Optimized; listeners]),
            faults: Mutex::new(vec![Faults::default(); listeners]),
            ctrls: Mutex::new(HashMap::new()),
            next_cntlid: AtomicU16::new(1),
            delayed: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            ios: AtomicU64::new(0),
            writes_executed: AtomicU64::new(0),
            teardowns: AtomicU64::new(0),
            write_log: Mutex::new(Vec::new()),
        });
        let mut addrs = Vec::new();
        for l in 0..listeners {
            let lis = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = lis.local_addr().unwrap();
            addrs.push(addr);
            shared.listeners.lock().unwrap().push(Some(addr));
            let sh = shared.clone();
            std::thread::spawn(move || accept_loop(sh, lis, l));
        }
        let sh = shared.clone();
        std::thread::spawn(move || reaper(sh));
        MockTarget { shared, addrs }
    }

    pub fn port(&self, l: usize) -> String {
        self.addrs[l].port().to_string()
    }

    pub fn set_faults(&self, l: usize, f: Faults) {
        self.shared.faults.lock().unwrap()[l] = f;
    }

    /// Changes a listener's ANA state and sends an AEN on its controllers.
    pub fn set_ana(&self, l: usize, s: AnaState) {
        self.shared.ana.lock().unwrap()[l] = s;
        let mut ctrls = self.shared.ctrls.lock().unwrap();
        for c in ctrls
            .values_mut()
            .filter(|c| c.listener == l && !c.torn_down)
        {
            if let Some((cid, out)) = c.aers.pop() {
                let mut cqe = Cqe::new(cid, Status::SUCCESS);
                cqe.set_dw0(AsyncEvent::ANA_CHANGE.to_dw0());
                send_resp(&out, &cqe);
            }
        }
    }

    /// Closes every connection of a listener (RST-like abrupt close).
    pub fn kill_connections(&self, l: usize) {
        let mut ctrls = self.shared.ctrls.lock().unwrap();
        for c in ctrls.values_mut().filter(|c| c.listener == l) {
            for s in &c.conns {
                let _ = s.lock().unwrap().shutdown(std::net::Shutdown::Both);
            }
            c.torn_down = true;
        }
    }

    pub fn read_block(&self, nsid: u32, lba: u64) -> Vec<u8> {
        let ns = &self.shared.ns[nsid as usize - 1];
        let d = ns.data.lock().unwrap();
        d[(lba * 4096) as usize..((lba + 1) * 4096) as usize].to_vec()
    }
}

impl Drop for MockTarget {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for l in 0..self.addrs.len() {
            self.kill_connections(l);
            let _ = TcpStream::connect(self.addrs[l]);
        }
    }
}

fn accept_loop(sh: Arc<Shared>, lis: TcpListener, l: usize) {
    for s in lis.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(s) = s else { continue };
        let sh = sh.clone();
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            Conn::new(sh, s, l).run();
        });
    }
}

/// KATO enforcement and delayed writes.
fn reaper(sh: Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        {
            let mut ctrls = sh.ctrls.lock().unwrap();
            for c in ctrls.values_mut() {
                if !c.torn_down
                    && c.kato_ms > 0
                    && now.duration_since(c.last_ka) > Duration::from_millis(c.kato_ms as u64)
                {
                    c.torn_down = true;
                    sh.teardowns.fetch_add(1, Ordering::SeqCst);
                    for s in &c.conns {
                        let _ = s.lock().unwrap().shutdown(std::net::Shutdown::Both);
                    }
                }
            }
        }
        let due: Vec<Delayed> = {
            let mut d = sh.delayed.lock().unwrap();
            let (ready, rest): (Vec<_>, Vec<_>) = d.drain(..).partition(|x| x.due <= now);
            *d = rest;
            ready
        };
        for w in due {
            let alive = sh
                .ctrls
                .lock()
                .unwrap()
                .get(&w.cntlid)
                .is_some_and(|c| !c.torn_down);
            if !alive {
                continue; // torn down: the command is aborted, never executed
            }
            exec_write(&sh, w.listener, w.nsid, w.lba, &w.data);
            let silent = sh.faults.lock().unwrap()[w.listener].silent;
            if !silent {
                send_resp(&w.out, &Cqe::new(w.cid, Status::SUCCESS));
            }
        }
    }
}

fn exec_write(sh: &Shared, l: usize, nsid: u32, lba: u64, data: &[u8]) {
    let ns = &sh.ns[nsid as usize - 1];
    let mut d = ns.data.lock().unwrap();
    let off = (lba * 4096) as usize;
    d[off..off + data.len()].copy_from_slice(data);
    sh.writes_executed.fetch_add(1, Ordering::SeqCst);
    sh.write_log
        .lock()
        .unwrap()
        .push((l, lba, data.first().copied().unwrap_or(0)));
}

fn send_resp(out: &Mutex<TcpStream>, cqe: &Cqe) {
    let mut buf = Vec::new();
    Encoder::default()
        .push_pdu::<&[u8]>(&Pdu::CapsuleResp(CapsuleResp { cqe: *cqe }), &[], &mut buf)
        .unwrap();
    let _ = out.lock().unwrap().write_all(&buf);
}

struct Pending {
    sqe: Sqe,
    data: Vec<u8>,
    want: usize,
}

struct Conn {
    sh: Arc<Shared>,
    rd: TcpStream,
    out: Arc<Mutex<TcpStream>>,
    listener: usize,
    dec: Decoder,
    enc: Encoder,
    cntlid: u16,
    qid: u16,
    cc: u32,
    cur: Option<Pending>,
    r2t: HashMap<u16, Pending>,
    discovery: bool,
}

impl Conn {
    fn new(sh: Arc<Shared>, s: TcpStream, listener: usize) -> Conn {
        let out = Arc::new(Mutex::new(s.try_clone().unwrap()));
        let mut cfg = DecoderConfig::controller();
        cfg.max_incapsule_data = 8192;
        Conn {
            sh,
            rd: s,
            out,
            listener,
            dec: Decoder::new(cfg),
            enc: Encoder::default(),
            cntlid: 0,
            qid: 0,
            cc: 0,
            cur: None,
            r2t: HashMap::new(),
            discovery: false,
        }
    }

    fn faults(&self) -> Faults {
        self.sh.faults.lock().unwrap()[self.listener].clone()
    }

    fn send(&self, b: &[u8]) {
        let _ = self.out.lock().unwrap().write_all(b);
    }

    fn resp(&self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let mut cqe = Cqe::new(cid, status);
        cqe.set_dw0(dw0);
        cqe.set_dw1(dw1);
        let mut b = Vec::new();
        self.enc
            .push_pdu::<&[u8]>(&Pdu::CapsuleResp(CapsuleResp { cqe }), &[], &mut b)
            .unwrap();
        self.send(&b);
    }

    fn run(mut self) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match self.rd.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.sh.stop.load(Ordering::SeqCst) {
                return;
            }
            if self.faults().silent && self.dec.ic_done() {
                continue;
            }
            let mut input = &buf[..n];
            loop {
                let step = match self.dec.next(input) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                input = &input[step.consumed..];
                let Some(ev) = step.event else { break };
                match ev {
                    Event::Header { pdu, data_len } => self.on_header(pdu, data_len),
                    Event::Data { data, .. } => {
                        if let Some(p) = &mut self.cur {
                            p.data.extend_from_slice(data);
                        }
                    }
                    Event::DataEnd | Event::DataDigestError { .. } => {
                        if let Some(p) = self.cur.take() {
                            if p.data.len() >= p.want {
                                self.exec(p.sqe, p.data);
                            } else {
                                let cid = p.sqe.cid();
                                self.r2t.insert(cid, p);
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_header(&mut self, pdu: Pdu, data_len: u32) {
        match pdu {
            Pdu::IcReq(req) => {
                let resp = IcResp {
                    hdgst: req.hdgst,
                    ddgst: req.ddgst,
                    maxh2cdata: 32 * 1024,
                    ..IcResp::default()
                };
                let mut b = [0u8; 128];
                let n = Encoder::ic_resp(&resp, &mut b).unwrap();
                let session = Session::negotiated(Role::Controller, &req, &resp);
                self.dec.set_session(session);
                self.enc.set_session(session);
                self.send(&b[..n]);
            }
            Pdu::CapsuleCmd(c) => {
                let want = c.sqe.sgl1().length() as usize;
                if data_len > 0 {
                    self.cur = Some(Pending {
                        sqe: c.sqe,
                        data: Vec::with_capacity(want),
                        want,
                    });
                } else if c.sqe.opcode() == 0x01 && self.qid > 0 && want > 0 {
                    // Write without in-capsule data: ask for it.
                    let cid = c.sqe.cid();
                    self.r2t.insert(
                        cid,
                        Pending {
                            sqe: c.sqe,
                            data: Vec::with_capacity(want),
                            want,
                        },
                    );
                    let mut b = Vec::new();
                    self.enc
                        .push_pdu::<&[u8]>(
                            &Pdu::R2T(R2T {
                                cccid: cid,
                                ttag: cid,
                                r2to: 0,
                                r2tl: want as u32,
                            }),
                            &[],
                            &mut b,
                        )
                        .unwrap();
                    self.send(&b);
                } else {
                    self.exec(c.sqe, Vec::new());
                }
            }
            Pdu::H2CData(d) => {
                if let Some(p) = self.r2t.remove(&d.cccid) {
                    self.cur = Some(p);
                }
            }
            _ => {}
        }
    }

    fn exec(&mut self, sqe: Sqe, data: Vec<u8>) {
        if sqe.is_fabrics() {
            return self.fabrics(sqe, data);
        }
        if self.qid == 0 {
            self.admin(sqe, data)
        } else {
            self.io(sqe, data)
        }
    }

    fn fabrics(&mut self, sqe: Sqe, data: Vec<u8>) {
        let cid = sqe.cid();
        match sqe.fctype() {
            0x01 => {
                let c = Connect::from_sqe(&sqe);
                let d = ConnectData::from_slice(&data[..1024.min(data.len())]).unwrap_or_default();
                self.discovery = d.subnqn().unwrap_or("") == nvme_spec::DISCOVERY_NQN;
                if d.subnqn().unwrap_or("") != SUBNQN && !self.discovery {
                    return self.resp(cid, Status::CONNECT_INVALID_PARAMETERS, 0, 0);
                }
                self.qid = c.qid;
                if c.qid == 0 {
                    self.cntlid = self.sh.next_cntlid.fetch_add(1, Ordering::SeqCst);
                    self.sh.ctrls.lock().unwrap().insert(
                        self.cntlid,
                        CtrlRec {
                            listener: self.listener,
                            kato_ms: c.kato,
                            last_ka: Instant::now(),
                            torn_down: false,
                            conns: vec![self.out.clone()],
                            aers: Vec::new(),
                        },
                    );
                } else {
                    self.cntlid = d.cntlid();
                    let mut ctrls = self.sh.ctrls.lock().unwrap();
                    match ctrls.get_mut(&self.cntlid) {
                        Some(r) if !r.torn_down => r.conns.push(self.out.clone()),
                        _ => {
                            drop(ctrls);
                            return self.resp(cid, Status::CONNECT_INVALID_PARAMETERS, 0, 0);
                        }
                    }
                }
                self.resp(cid, Status::SUCCESS, self.cntlid as u32, 0)
            }
            0x04 => {
                let p = PropertyGet::from_sqe(&sqe);
                let v: u64 = match p.offset {
                    offset::CAP => Cap(0).with_mqes(127).with_to(2).with_css(1).0,
                    offset::VS => 0x0001_0400,
                    offset::CC => self.cc as u64,
                    offset::CSTS => Csts(0).with_rdy(Cc(self.cc).en()).0 as u64,
                    _ => 0,
                };
                self.resp(cid, Status::SUCCESS, v as u32, (v >> 32) as u32)
            }
            0x00 => {
                let p = PropertySet::from_sqe(&sqe);
                if p.offset == offset::CC {
                    self.cc = p.value as u32;
                }
                self.resp(cid, Status::SUCCESS, 0, 0)
            }
            _ => self.resp(cid, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn send_data(&self, cid: u16, data: &[u8]) {
        let mut b = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(16 * 1024);
            let last = off + n == data.len();
            self.enc
                .push_pdu(
                    &Pdu::C2HData(C2HData {
                        cccid: cid,
                        datao: off as u32,
                        datal: n as u32,
                        last,
                        success: last,
                    }),
                    &[&data[off..off + n]],
                    &mut b,
                )
                .unwrap();
            off += n;
        }
        self.send(&b);
    }

    fn admin(&mut self, sqe: Sqe, _data: Vec<u8>) {
        let cid = sqe.cid();
        match sqe.opcode() {
            0x06 => {
                let id = Identify::from_sqe(&sqe);
                let out: Vec<u8> = match id.cns {
                    cns::CONTROLLER => {
                        let mut c = IdentifyController::zeroed();
                        c.set_sn("MOCK0001").unwrap();
                        c.set_mn("vmpath mock").unwrap();
                        c.set_fr("1.0").unwrap();
                        c.set_subnqn(if self.discovery {
                            nvme_spec::DISCOVERY_NQN
                        } else {
                            SUBNQN
                        })
                        .unwrap();
                        c.set_cntlid(self.cntlid);
                        c.set_cmic(
                            IdentifyController::CMIC_ANA | IdentifyController::CMIC_MULTI_PORT,
                        );
                        c.set_oaes(IdentifyController::OAES_ANA_CHANGE);
                        c.set_anacap(0x47);
                        c.set_nanagrpid(1);
                        c.set_anagrpmax(1);
                        c.set_aerl(3);
                        c.set_maxcmd(128);
                        c.set_nn(self.sh.ns.len() as u32);
                        c.set_ioccsz((8192 + 64) / 16);
                        c.set_oncs(
                            IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES,
                        );
                        c.as_bytes().to_vec()
                    }
                    cns::NAMESPACE => match self.sh.ns.get(sqe.nsid() as usize - 1) {
                        Some(ns) => {
                            let mut n = IdentifyNamespace::zeroed();
                            let blocks = ns.data.lock().unwrap().len() as u64 / 4096;
                            n.set_nsze(blocks);
                            n.set_ncap(blocks);
                            n.set_lbaf(0, LbaFormat::new(12, 0, 0));
                            n.set_nguid(ns.nguid);
                            n.set_anagrpid(1);
                            n.set_nmic(1);
                            n.as_bytes().to_vec()
                        }
                        None => return self.resp(cid, Status::INVALID_NAMESPACE_OR_FORMAT, 0, 0),
                    },
                    cns::ACTIVE_NAMESPACES => {
                        let ids: Vec<u32> = self.sh.ns.iter().map(|n| n.nsid).collect();
                        NsIdList::active_after(&ids, sqe.nsid()).as_bytes().to_vec()
                    }
                    cns::NS_ID_DESCRIPTORS => {
                        let mut l = NsIdDescList::zeroed();
                        l.push(NsIdDescriptor::Nguid([sqe.nsid() as u8; 16]))
                            .unwrap();
                        l.as_bytes().to_vec()
                    }
                    _ => return self.resp(cid, Status::INVALID_FIELD, 0, 0),
                };
                self.send_data(cid, &out);
            }
            0x09 => {
                let f = Features::from_sqe(&sqe);
                let dw0 = if f.fid == FeatureId::NumberOfQueues as u8 {
                    7 | 7 << 16
                } else {
                    0
                };
                self.resp(cid, Status::SUCCESS, dw0, 0)
            }
            0x18 => {
                if let Some(c) = self.sh.ctrls.lock().unwrap().get_mut(&self.cntlid) {
                    c.last_ka = Instant::now();
                }
                self.resp(cid, Status::SUCCESS, 0, 0)
            }
            0x0c => {
                if let Some(c) = self.sh.ctrls.lock().unwrap().get_mut(&self.cntlid) {
                    c.aers.push((cid, self.out.clone()));
                }
            }
            0x02 => {
                let g = GetLogPage::from_sqe(&sqe);
                let len = g.len_bytes() as usize;
                let mut buf = Vec::new();
                if g.lid == 0x70 {
                    let addrs: Vec<SocketAddr> = self
                        .sh
                        .listeners
                        .lock()
                        .unwrap()
                        .iter()
                        .flatten()
                        .copied()
                        .collect();
                    let mut h = nvme_spec::DiscoveryLogHeader::zeroed();
                    h.set_genctr(1);
                    h.set_numrec(addrs.len() as u64);
                    let mut all = h.as_bytes().to_vec();
                    for (i, a) in addrs.iter().enumerate() {
                        let mut e = nvme_spec::DiscoveryLogEntry::zeroed();
                        e.set_trtype(3);
                        e.set_adrfam(1);
                        e.set_subtype(2);
                        e.set_portid(i as u16);
                        e.set_cntlid(0xffff);
                        e.set_traddr(&a.ip().to_string()).unwrap();
                        e.set_trsvcid(&a.port().to_string()).unwrap();
                        e.set_subnqn(SUBNQN).unwrap();
                        all.extend_from_slice(e.as_bytes());
                    }
                    let off = g.lpo as usize;
                    buf = all.get(off..).unwrap_or(&[]).to_vec();
                } else if g.lid == 0x0c {
                    let st = self.sh.ana.lock().unwrap()[self.listener];
                    let ids: Vec<u32> = self.sh.ns.iter().map(|n| n.nsid).collect();
                    AnaLogBuilder::new(&mut buf, 1).group(1, st, 1, &ids);
                }
                buf.resize(len, 0);
                self.send_data(cid, &buf);
            }
            _ => self.resp(cid, Status::INVALID_OPCODE, 0, 0),
        }
    }

    fn io(&mut self, sqe: Sqe, data: Vec<u8>) {
        let cid = sqe.cid();
        self.sh.ios.fetch_add(1, Ordering::SeqCst);
        let mut f = self.faults();
        if f.wrong_cid || f.malformed || f.unsolicited {
            let mut all = self.sh.faults.lock().unwrap();
            let g = &mut all[self.listener];
            if f.wrong_cid {
                g.wrong_cid = false;
                drop(all);
                return self.resp(cid.wrapping_add(77), Status::SUCCESS, 0, 0);
            }
            if f.malformed {
                g.malformed = false;
                drop(all);
                return self.send(&[0x05, 0x00, 0x18, 0x00, 0x99, 0, 0, 0, 1, 2, 3]);
            }
            g.unsolicited = false;
            f.unsolicited = true;
        }
        if f.unsolicited {
            self.resp(999, Status::SUCCESS, 0, 0);
        }
        let st = self.sh.ana.lock().unwrap()[self.listener];
        if let Some(s) = st.io_status() {
            return self.resp(cid, s, 0, 0);
        }
        let Some(ns) = self.sh.ns.get((sqe.nsid() as usize).wrapping_sub(1)) else {
            return self.resp(cid, Status::INVALID_NAMESPACE_OR_FORMAT, 0, 0);
        };
        let blocks = ns.data.lock().unwrap().len() as u64 / 4096;
        match sqe.opcode() {
            0x00 => self.resp(cid, Status::SUCCESS, 0, 0),
            0x02 => {
                let rw = ReadWrite::from_sqe(&sqe);
                if rw.slba + rw.nlb as u64 > blocks {
                    return self.resp(cid, Status::LBA_OUT_OF_RANGE, 0, 0);
                }
                let d = ns.data.lock().unwrap();
                let off = (rw.slba * 4096) as usize;
                let v = d[off..off + rw.nlb as usize * 4096].to_vec();
                drop(d);
                self.send_data(cid, &v);
            }
            0x01 => {
                let rw = ReadWrite::from_sqe(&sqe);
                if rw.slba + rw.nlb as u64 > blocks || data.len() != rw.nlb as usize * 4096 {
                    return self.resp(cid, Status::LBA_OUT_OF_RANGE, 0, 0);
                }
                if let Some(delay) = f.write_delay {
                    self.sh.delayed.lock().unwrap().push(Delayed {
                        due: Instant::now() + delay,
                        cntlid: self.cntlid,
                        nsid: sqe.nsid(),
                        lba: rw.slba,
                        data,
                        cid,
                        out: self.out.clone(),
                        listener: self.listener,
                    });
                    return;
                }
                exec_write(&self.sh, self.listener, sqe.nsid(), rw.slba, &data);
                self.resp(cid, Status::SUCCESS, 0, 0)
            }
            0x08 => {
                let rw = ReadWrite::from_sqe(&sqe);
                exec_write(
                    &self.sh,
                    self.listener,
                    sqe.nsid(),
                    rw.slba,
                    &vec![0; rw.nlb as usize * 4096],
                );
                self.resp(cid, Status::SUCCESS, 0, 0)
            }
            0x09 => {
                if let Some(r) = DsmRange::from_slice(&data[..16.min(data.len())]) {
                    exec_write(
                        &self.sh,
                        self.listener,
                        sqe.nsid(),
                        r.slba(),
                        &vec![0; r.nlb() as usize * 4096],
                    );
                }
                self.resp(cid, Status::SUCCESS, 0, 0)
            }
            _ => self.resp(cid, Status::INVALID_OPCODE, 0, 0),
        }
    }
}
