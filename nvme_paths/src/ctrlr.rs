//! One remote controller: its admin queue on a thread of its own (connect, enable, Identify,
//! keep-alive, Asynchronous Event Requests, ANA log), reconnection with back-off, controller
//! loss, and the associations that reactors' I/O queue pairs belong to.
//!
//! NVMe over Fabrics 1.1 section 3.3 (Connect, Property Get/Set), NVMe Base 2.0 sections
//! 3.5.1 (controller initialization: CC.EN, CSTS.RDY), 3.9 (Keep Alive), 5.2 (Asynchronous
//! Event Request), 5.16.1.12 (ANA log), 5.17 (Identify), 5.27.1.5 (Number of Queues), 8.1
//! (Asymmetric Namespace Access).
//!
//! # Associations and the write fence
//! Each successful admin connection starts an [`Assoc`] (generation `gen`). Every TCP
//! connection of the association (admin and I/O queues) counts in [`Assoc`]'s open count and,
//! when closed, contributes the time it last handed bytes to its socket. A controller failure
//! tears the association down: the admin socket is closed with a RST (unsent bytes dropped),
//! the generation moves on, and every reactor closes its I/O queue pair of the old generation
//! the same way. [`Assoc::fence_passed`] is then true once no connection is open and
//! `KATO + write_fence_grace` has passed since the last byte any of them sent: by then the
//! target has expired the keep-alive timer of the old controller and torn it down, so no
//! command of the old association can still be executed (see the crate docs for the rule).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvme_spec::cmd::{cns, Features, GetLogPage, Identify};
use nvme_spec::fabrics::{Connect, PropertyGet, PropertySet, CNTLID_DYNAMIC};
use nvme_spec::features::{aec, AsyncEvent, FeatureId, NumberOfQueues};
use nvme_spec::identify::{NsIdDescList, NsIdDescriptor};
use nvme_spec::regs::{offset, Cap, Cc, Csts};
use nvme_spec::{
    AdminOpcode, ConnectData, IdentifyController, IdentifyNamespace, NsIdList, Sqe, Status,
};

use crate::events::{EventHub, PathEventKind};
use crate::options::{CtrlOptions, Trid};
use crate::path::{Ana, Link, Path, PathState};
use crate::qpair::{Cmd, DataBuf, Dir, Done, Outcome, QpairError, QpairParams};
use vmpath_runtime::sys::EventFd;

use crate::sock::{poll_any, resolve, TcpQpair};

/// Admin queue depth.
const ADMIN_DEPTH: u16 = 32;
/// In-capsule data the admin queue (and every Connect) accepts (TP 8000 section 3.4).
const ADMIN_ICD: u32 = 8192;
/// I/O queues asked for in Set Features (Number of Queues).
const IO_QUEUES_WANTED: u32 = 128;
/// Most AERs kept outstanding.
const MAX_AERS: u8 = 4;

/// Errors of controller operations. Messages name the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    /// The transport failed.
    #[error("controller {ctrl}: {source}")]
    Transport {
        /// Controller name and address.
        ctrl: String,
        /// Cause.
        #[source]
        source: QpairError,
    },
    /// A command completed with an error status.
    #[error("controller {ctrl}: {what} failed with status {status}")]
    Command {
        /// Controller name and address.
        ctrl: String,
        /// The command.
        what: &'static str,
        /// Its status.
        status: Status,
    },
    /// The controller is not what was asked for or not usable.
    #[error("controller {ctrl}: {msg}")]
    Unusable {
        /// Controller name and address.
        ctrl: String,
        /// What is wrong.
        msg: String,
    },
}

/// Identify data the host keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtrlData {
    /// Controller id of the association.
    pub cntlid: u16,
    /// Serial number.
    pub sn: String,
    /// Model number.
    pub mn: String,
    /// Firmware revision.
    pub fr: String,
    /// Subsystem NQN reported by the controller.
    pub subnqn: String,
    /// Largest transfer in bytes (0 = no limit).
    pub max_transfer: u64,
    /// In-capsule data the I/O queues accept (IOCCSZ * 16 - 64).
    pub max_icd: u32,
    /// The controller reports ANA.
    pub ana: bool,
    /// I/O queues granted.
    pub io_queues: u16,
    /// Entries per I/O queue.
    pub io_depth: u16,
    /// ONCS (optional NVM commands: DSM, Write Zeroes...).
    pub oncs: u16,
    /// Volatile write cache present.
    pub vwc: bool,
}

/// A namespace as one controller reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsData {
    /// Namespace id.
    pub nsid: u32,
    /// Size in blocks.
    pub num_blocks: u64,
    /// Block size.
    pub block_size: u32,
    /// NGUID (zero if none).
    pub nguid: [u8; 16],
    /// EUI-64 (zero if none).
    pub eui64: [u8; 8],
    /// UUID (zero if none).
    pub uuid: [u8; 16],
    /// ANA group.
    pub anagrpid: u32,
}

impl NsData {
    /// The identity used to match the namespace across controllers: NGUID, else EUI-64, else
    /// UUID (NVMe Base 2.0 section 4.7.1); `None` when the namespace has none.
    pub fn identity(&self) -> Option<NsIdentity> {
        if self.nguid != [0; 16] {
            Some(NsIdentity::Nguid(self.nguid))
        } else if self.eui64 != [0; 8] {
            Some(NsIdentity::Eui64(self.eui64))
        } else if self.uuid != [0; 16] {
            Some(NsIdentity::Uuid(self.uuid))
        } else {
            None
        }
    }
}

/// A globally unique namespace identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NsIdentity {
    /// NGUID.
    Nguid([u8; 16]),
    /// EUI-64.
    Eui64([u8; 8]),
    /// UUID.
    Uuid([u8; 16]),
}

impl std::fmt::Display for NsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        match self {
            NsIdentity::Nguid(b) => write!(f, "nguid:{}", hex(b)),
            NsIdentity::Eui64(b) => write!(f, "eui64:{}", hex(b)),
            NsIdentity::Uuid(b) => write!(f, "uuid:{}", vmpath_bdev::uuid_string(b)),
        }
    }
}

/// One association (one admin connection and its I/O connections) with a controller.
#[derive(Debug)]
pub struct Assoc {
    gen: u64,
    cntlid: u16,
    kato_ms: u32,
    grace_ms: u64,
    addr: SocketAddr,
    max_icd: u32,
    io_depth: u16,
    hdgst: bool,
    ddgst: bool,
    io_timeout_us: u64,
    open: AtomicU32,
    last_tx_ns: AtomicU64,
    torn_down: AtomicBool,
    qids: Mutex<Vec<bool>>,
}

impl Assoc {
    /// Generation (increases with every reconnect of the controller).
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Controller id.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Per-I/O timeout of the association's queue pairs (µs; 0 = none).
    pub fn io_timeout_us(&self) -> u64 {
        self.io_timeout_us
    }

    /// True once the host tore the association down.
    pub fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::Acquire)
    }

    /// Connections of the association still open.
    pub fn open_connections(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// True once no command of this association can be executed by the target any more:
    /// torn down by the host, every connection closed, and KATO + grace passed since the last
    /// byte sent. Never true with keep-alive disabled.
    pub fn fence_passed(&self, now: u64) -> bool {
        self.kato_ms > 0
            && self.is_torn_down()
            && self.open_connections() == 0
            && now
                >= self.last_tx_ns.load(Ordering::Acquire)
                    + (self.kato_ms as u64 + self.grace_ms) * 1_000_000
    }

    /// When the fence will pass if nothing else is sent (None while connections are open or
    /// keep-alive is off).
    pub fn fence_at(&self) -> Option<u64> {
        (self.kato_ms > 0 && self.is_torn_down() && self.open_connections() == 0).then(|| {
            self.last_tx_ns.load(Ordering::Acquire)
                + (self.kato_ms as u64 + self.grace_ms) * 1_000_000
        })
    }

    fn conn_opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn conn_closed(&self, last_tx_ns: u64) {
        self.last_tx_ns.fetch_max(last_tx_ns, Ordering::AcqRel);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn alloc_qid(&self) -> Option<u16> {
        let mut q = self.qids.lock().expect("qid lock");
        let i = q.iter().position(|used| !used)?;
        q[i] = true;
        Some(i as u16 + 1)
    }

    fn free_qid(&self, qid: u16) {
        if let Some(slot) = self
            .qids
            .lock()
            .expect("qid lock")
            .get_mut(qid as usize - 1)
        {
            *slot = false;
        }
    }
}

/// A connection of an association. Dropping it closes the socket with a RST and accounts the
/// close in the association (open count, last transmit time).
#[derive(Debug)]
pub struct Conn {
    qp: TcpQpair,
    assoc: Arc<Assoc>,
    qid: u16,
    accounted: bool,
}

impl Conn {
    /// The queue pair.
    pub fn qp(&mut self) -> &mut TcpQpair {
        &mut self.qp
    }

    /// The queue pair, shared.
    pub fn qp_ref(&self) -> &TcpQpair {
        &self.qp
    }

    /// The association.
    pub fn assoc(&self) -> &Arc<Assoc> {
        &self.assoc
    }

    /// Queue id.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Closes (RST) and fails the outstanding commands into `done`.
    pub fn close(&mut self, done: &mut dyn FnMut(Done)) {
        self.qp.close(done);
        self.account();
    }

    fn account(&mut self) {
        if !self.accounted {
            self.accounted = true;
            if self.qid != 0 {
                self.assoc.free_qid(self.qid);
            }
            self.assoc.conn_closed(self.qp.last_tx_ns());
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.qp.close(&mut |_| {});
        self.account();
    }
}

/// A connection being set up by a helper thread for a reactor.
#[derive(Debug, Default)]
pub struct PendingConn {
    result: Mutex<Option<Result<Conn, String>>>,
}

impl PendingConn {
    /// Takes the result once the helper finished.
    pub fn take(&self) -> Option<Result<Conn, String>> {
        self.result.lock().expect("pending lock").take()
    }
}

/// Controller state as reported by `bdev_nvme_get_controllers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlState {
    /// Connecting for the first time or reconnecting.
    Connecting = 0,
    /// Enabled and usable.
    Live = 1,
    /// Lost; waiting to reconnect.
    Resetting = 2,
    /// Given up (ctrlr_loss_timeout) or stopped.
    Failed = 3,
}

impl CtrlState {
    fn from_u8(v: u8) -> CtrlState {
        match v {
            1 => CtrlState::Live,
            2 => CtrlState::Resetting,
            3 => CtrlState::Failed,
            _ => CtrlState::Connecting,
        }
    }

    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            CtrlState::Connecting => "connecting",
            CtrlState::Live => "enabled",
            CtrlState::Resetting => "resetting",
            CtrlState::Failed => "failed",
        }
    }
}

/// Shared state of one remote controller.
#[derive(Debug)]
pub struct Ctrl {
    name: String,
    trid: Trid,
    hostnqn: String,
    hostid: [u8; 16],
    addr: SocketAddr,
    opts: Mutex<CtrlOptions>,
    state: AtomicU8,
    gen: AtomicU64,
    assoc: Mutex<Option<Arc<Assoc>>>,
    reset_gen: AtomicU64,
    reset_reason: Mutex<String>,
    ana_refresh: AtomicBool,
    stop: AtomicBool,
    wake: EventFd,
    data: Mutex<CtrlData>,
    namespaces: Mutex<Vec<NsData>>,
    paths: Mutex<Vec<(String, Arc<Path>)>>,
    events: Arc<EventHub>,
    resets: AtomicU64,
}

impl Ctrl {
    pub(crate) fn new(
        name: &str,
        trid: Trid,
        hostnqn: String,
        opts: CtrlOptions,
        events: Arc<EventHub>,
    ) -> Result<Arc<Ctrl>, CtrlError> {
        let label = format!("{name} ({trid})");
        let addr = resolve(&trid.traddr, &trid.trsvcid).map_err(|e| CtrlError::Unusable {
            ctrl: label.clone(),
            msg: format!("cannot resolve address: {e}"),
        })?;
        let wake = EventFd::new().map_err(|e| CtrlError::Unusable {
            ctrl: label,
            msg: format!("eventfd: {e}"),
        })?;
        Ok(Arc::new(Ctrl {
            name: name.to_string(),
            hostid: vmpath_bdev::uuid_from_name(&hostnqn),
            hostnqn,
            trid,
            addr,
            opts: Mutex::new(opts),
            state: AtomicU8::new(CtrlState::Connecting as u8),
            gen: AtomicU64::new(0),
            assoc: Mutex::new(None),
            reset_gen: AtomicU64::new(0),
            reset_reason: Mutex::new(String::new()),
            ana_refresh: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake,
            data: Mutex::new(CtrlData::default()),
            namespaces: Mutex::new(Vec::new()),
            paths: Mutex::new(Vec::new()),
            events,
            resets: AtomicU64::new(0),
        }))
    }

    /// The controller group name (`bdev_nvme_attach_controller`'s `name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is.
    pub fn trid(&self) -> &Trid {
        &self.trid
    }

    /// The host NQN used.
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }

    /// `name (traddr:trsvcid:subnqn)`, for logs and errors.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.trid)
    }

    /// Current options.
    pub fn options(&self) -> CtrlOptions {
        *self.opts.lock().expect("opts lock")
    }

    /// Replaces the options (timeouts apply from the next check, KATO and queue depth from
    /// the next association).
    pub fn set_options(&self, o: CtrlOptions) {
        *self.opts.lock().expect("opts lock") = o;
        self.wake.signal();
    }

    /// Current state.
    pub fn state(&self) -> CtrlState {
        CtrlState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: CtrlState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Generation of the current association (0 before the first).
    #[inline]
    pub fn gen(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The live association, if any.
    pub fn assoc(&self) -> Option<Arc<Assoc>> {
        let a = self.assoc.lock().expect("assoc lock").clone()?;
        (!a.is_torn_down()).then_some(a)
    }

    /// Controller id of the live association.
    pub fn cntlid(&self) -> Option<u16> {
        self.assoc().map(|a| a.cntlid)
    }

    /// Identify data of the last association.
    pub fn data(&self) -> CtrlData {
        self.data.lock().expect("data lock").clone()
    }

    /// Namespaces of the last association.
    pub fn namespaces(&self) -> Vec<NsData> {
        self.namespaces.lock().expect("ns lock").clone()
    }

    /// Times the controller was reset after a failure.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    pub(crate) fn set_identity(&self, data: &CtrlData, nss: &[NsData]) {
        *self.data.lock().expect("data lock") = data.clone();
        *self.namespaces.lock().expect("ns lock") = nss.to_vec();
    }

    pub(crate) fn add_path(&self, bdev: &str, path: Arc<Path>) {
        if self.state() == CtrlState::Live {
            path.set_link(Link::Live, crate::now_ns());
        }
        self.paths
            .lock()
            .expect("paths lock")
            .push((bdev.to_string(), path));
        // Re-read ANA so the new path gets its state.
        self.ana_refresh.store(true, Ordering::Release);
        self.wake.signal();
    }

    pub(crate) fn paths(&self) -> Vec<(String, Arc<Path>)> {
        self.paths.lock().expect("paths lock").clone()
    }

    /// Asks the controller thread to reset the association `gen` (an I/O queue pair of that
    /// generation failed or timed out).
    pub fn request_reset(&self, gen: u64, reason: &str) {
        if self.reset_gen.fetch_max(gen, Ordering::AcqRel) < gen {
            *self.reset_reason.lock().expect("reason lock") = reason.to_string();
        }
        self.wake.signal();
    }

    /// Asks the controller thread to re-read the ANA log (an I/O saw an ANA error status).
    pub fn request_ana_refresh(&self) {
        if !self.ana_refresh.swap(true, Ordering::AcqRel) {
            self.wake.signal();
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.signal();
    }

    /// Starts connecting an I/O queue pair of the live association on a helper thread.
    pub fn connect_io(self: &Arc<Self>) -> Option<Arc<PendingConn>> {
        let assoc = self.assoc()?;
        let qid = assoc.alloc_qid()?;
        let pending = Arc::new(PendingConn::default());
        let p = pending.clone();
        let me = self.clone();
        assoc.conn_opened();
        let spawn = std::thread::Builder::new()
            .name(format!("nvme-ioq-{}", self.name))
            .spawn(move || {
                let r = me.connect_io_blocking(&assoc, qid);
                *p.result.lock().expect("pending lock") = Some(r);
            });
        if let Err(e) = spawn {
            *pending.result.lock().expect("pending lock") = Some(Err(format!("spawn: {e}")));
        }
        Some(pending)
    }

    fn connect_io_blocking(&self, assoc: &Arc<Assoc>, qid: u16) -> Result<Conn, String> {
        let timeout = Duration::from_millis(self.options().connect_timeout_ms);
        let deadline = Instant::now() + timeout;
        let params = QpairParams {
            depth: assoc.io_depth,
            max_icd: ADMIN_ICD,
            hdgst: assoc.hdgst,
            ddgst: assoc.ddgst,
        };
        let qp = match TcpQpair::connect(assoc.addr, timeout, params) {
            Ok(q) => q,
            Err(e) => {
                assoc.free_qid(qid);
                assoc.conn_closed(0);
                return Err(e.to_string());
            }
        };
        let mut conn = Conn {
            qp,
            assoc: assoc.clone(),
            qid,
            accounted: false,
        };
        conn.qp.wait_ready(deadline).map_err(|e| e.to_string())?;
        let d = conn
            .qp
            .exec(
                self.connect_cmd(qid, assoc.io_depth - 1, 0, assoc.cntlid),
                deadline,
                &mut |_| {},
            )
            .map_err(|e| e.to_string())?;
        if let Outcome::Completed { status, .. } = d.outcome {
            if !status.is_success() {
                return Err(format!(
                    "I/O queue {qid} Connect failed with status {status}"
                ));
            }
        }
        conn.qp.core_mut().set_max_icd(assoc.max_icd);
        if assoc.is_torn_down() {
            return Err("association torn down while connecting".into());
        }
        Ok(conn)
    }

    fn connect_cmd(&self, qid: u16, sqsize: u16, kato: u32, cntlid: u16) -> Cmd {
        let sqe = Connect {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato,
        }
        .to_sqe(0);
        let mut data = ConnectData::zeroed();
        data.set_hostid(self.hostid);
        data.set_cntlid(cntlid);
        // NQNs were validated at attach; a failure here leaves the field empty and the target
        // refuses the Connect with a clear status.
        let _ = data.set_subnqn(&self.trid.subnqn);
        let _ = data.set_hostnqn(&self.hostnqn);
        Cmd {
            sqe,
            dir: Dir::H2C,
            data: DataBuf::Owned(data.as_bytes().to_vec()),
            tag: u64::MAX,
        }
    }
}

/// Synchronous admin helper used while connecting.
struct Admin<'a> {
    ctrl: &'a Ctrl,
    qp: TcpQpair,
    timeout: Duration,
    next_tag: u64,
}

impl Admin<'_> {
    fn err(&self, source: QpairError) -> CtrlError {
        CtrlError::Transport {
            ctrl: self.ctrl.label(),
            source,
        }
    }

    fn run(&mut self, what: &'static str, mut cmd: Cmd) -> Result<(u32, DataBuf), CtrlError> {
        self.next_tag += 1;
        cmd.tag = self.next_tag;
        let deadline = Instant::now() + self.timeout;
        let d = self
            .qp
            .exec(cmd, deadline, &mut |_| {})
            .map_err(|e| self.err(e))?;
        match d.outcome {
            Outcome::Completed { status, dw0, .. } if status.is_success() => Ok((dw0, d.data)),
            Outcome::Completed { status, .. } => Err(CtrlError::Command {
                ctrl: self.ctrl.label(),
                what,
                status,
            }),
            Outcome::Lost { .. } => Err(self.err(QpairError::Closed)),
        }
    }

    fn prop_get(&mut self, off: u32, size8: bool) -> Result<u64, CtrlError> {
        let sqe = PropertyGet::to_sqe(off, size8, 0);
        self.next_tag += 1;
        let deadline = Instant::now() + self.timeout;
        let d = self
            .qp
            .exec(
                Cmd {
                    sqe,
                    dir: Dir::None,
                    data: DataBuf::None,
                    tag: self.next_tag,
                },
                deadline,
                &mut |_| {},
            )
            .map_err(|e| self.err(e))?;
        match d.outcome {
            Outcome::Completed { status, dw0, dw1 } if status.is_success() => {
                Ok(dw0 as u64 | (dw1 as u64) << 32)
            }
            Outcome::Completed { status, .. } => Err(CtrlError::Command {
                ctrl: self.ctrl.label(),
                what: "Property Get",
                status,
            }),
            Outcome::Lost { .. } => Err(self.err(QpairError::Closed)),
        }
    }

    fn prop_set(&mut self, off: u32, value: u64) -> Result<(), CtrlError> {
        let sqe = PropertySet::to_sqe(off, false, value, 0);
        self.run(
            "Property Set",
            Cmd {
                sqe,
                dir: Dir::None,
                data: DataBuf::None,
                tag: 0,
            },
        )
        .map(|_| ())
    }

    fn identify(&mut self, c: u8, nsid: u32) -> Result<Vec<u8>, CtrlError> {
        let mut sqe = Sqe::new(AdminOpcode::Identify.as_u8(), 0, nsid);
        Identify {
            cns: c,
            ..Identify::default()
        }
        .apply(&mut sqe);
        let (_, data) = self.run(
            "Identify",
            Cmd {
                sqe,
                dir: Dir::C2H,
                data: DataBuf::Owned(vec![0; Identify::DATA_LEN]),
                tag: 0,
            },
        )?;
        match data {
            DataBuf::Owned(v) => Ok(v),
            _ => Ok(vec![0; Identify::DATA_LEN]),
        }
    }

    fn set_feature(&mut self, fid: FeatureId, cdw11: u32) -> Result<u32, CtrlError> {
        let mut sqe = Sqe::new(AdminOpcode::SetFeatures.as_u8(), 0, 0);
        Features {
            fid: fid as u8,
            sel: 0,
            save: false,
            cdw11,
        }
        .apply(&mut sqe);
        self.run(
            "Set Features",
            Cmd {
                sqe,
                dir: Dir::None,
                data: DataBuf::None,
                tag: 0,
            },
        )
        .map(|(dw0, _)| dw0)
    }

    fn get_log(&mut self, lid: u8, len: usize, lpo: u64) -> Result<Vec<u8>, CtrlError> {
        let (sqe, data) = log_cmd(lid, len, lpo);
        let (_, data) = self.run(
            "Get Log Page",
            Cmd {
                sqe,
                dir: Dir::C2H,
                data,
                tag: 0,
            },
        )?;
        match data {
            DataBuf::Owned(v) => Ok(v),
            _ => Ok(Vec::new()),
        }
    }
}

fn log_cmd(lid: u8, len: usize, lpo: u64) -> (Sqe, DataBuf) {
    let len = len.div_ceil(4) * 4;
    let mut sqe = Sqe::new(AdminOpcode::GetLogPage.as_u8(), 0, 0xffff_ffff);
    GetLogPage {
        lid,
        numd: (len / 4) as u32,
        lpo,
        ..GetLogPage::default()
    }
    .apply(&mut sqe);
    (sqe, DataBuf::Owned(vec![0; len]))
}

/// Result of connecting and initializing an admin queue.
pub(crate) struct Connected {
    qp: TcpQpair,
    pub(crate) data: CtrlData,
    pub(crate) namespaces: Vec<NsData>,
    ana_len: usize,
    aers: u8,
    aec: u32,
}

/// Connects the admin queue of `ctrl` and initializes the controller (blocking).
pub(crate) fn connect_admin(ctrl: &Ctrl, discovery: bool) -> Result<Connected, CtrlError> {
    let o = ctrl.options();
    let label = ctrl.label();
    let timeout = Duration::from_millis(o.connect_timeout_ms);
    let mut qp = TcpQpair::connect(
        ctrl.addr,
        timeout,
        QpairParams {
            depth: ADMIN_DEPTH,
            max_icd: ADMIN_ICD,
            hdgst: o.hdgst,
            ddgst: o.ddgst,
        },
    )
    .map_err(|source| CtrlError::Transport {
        ctrl: label.clone(),
        source,
    })?;
    qp.wait_ready(Instant::now() + timeout)
        .map_err(|source| CtrlError::Transport {
            ctrl: label.clone(),
            source,
        })?;
    let mut a = Admin {
        ctrl,
        qp,
        timeout: Duration::from_millis(o.admin_timeout_ms),
        next_tag: 0,
    };
    let kato = if discovery {
        0
    } else {
        o.keep_alive_timeout_ms
    };
    let (cntlid, _) = a.run(
        "Connect",
        ctrl.connect_cmd(0, ADMIN_DEPTH - 1, kato, CNTLID_DYNAMIC),
    )?;
    let cntlid = cntlid as u16;
    let cap = Cap(a.prop_get(offset::CAP, true)?);
    let cc = Cc(0).with_en(1).with_iosqes(6).with_iocqes(4);
    a.prop_set(offset::CC, cc.0 as u64)?;
    let rdy_deadline = Instant::now() + Duration::from_millis((cap.to() as u64).max(1) * 500);
    loop {
        let csts = Csts(a.prop_get(offset::CSTS, false)? as u32);
        if csts.cfs() != 0 {
            return Err(CtrlError::Unusable {
                ctrl: label,
                msg: "controller fatal status (CSTS.CFS) after enable".into(),
            });
        }
        if csts.ready() {
            break;
        }
        if Instant::now() >= rdy_deadline {
            return Err(CtrlError::Unusable {
                ctrl: label,
                msg: "CSTS.RDY did not become 1 within CAP.TO".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let id = IdentifyController::from_slice(&a.identify(cns::CONTROLLER, 0)?).unwrap_or_default();
    let subnqn = id.subnqn().unwrap_or("").to_string();
    if !discovery && subnqn != ctrl.trid.subnqn {
        return Err(CtrlError::Unusable {
            ctrl: label,
            msg: format!("controller reports subsystem {subnqn:?}, not the one asked for"),
        });
    }
    let mps = 4096u64 << cap.mpsmin();
    let mut data = CtrlData {
        cntlid,
        sn: id.sn().unwrap_or("").to_string(),
        mn: id.mn().unwrap_or("").to_string(),
        fr: id.fr().unwrap_or("").to_string(),
        subnqn,
        max_transfer: if id.mdts() == 0 {
            0
        } else {
            mps << id.mdts().min(20)
        },
        max_icd: (id.ioccsz() * 16).saturating_sub(64),
        ana: id.cmic() & IdentifyController::CMIC_ANA != 0,
        io_queues: 0,
        io_depth: o
            .io_queue_depth
            .min(cap.mqes() as u16 + 1)
            .min(if id.maxcmd() > 0 {
                id.maxcmd()
            } else {
                u16::MAX
            })
            .max(2),
        oncs: id.oncs(),
        vwc: id.vwc() & IdentifyController::VWC_PRESENT != 0,
    };
    if discovery {
        return Ok(Connected {
            qp: a.qp,
            data,
            namespaces: Vec::new(),
            ana_len: 0,
            aers: 0,
            aec: 0,
        });
    }
    let granted = a.set_feature(
        FeatureId::NumberOfQueues,
        NumberOfQueues {
            nsq: IO_QUEUES_WANTED,
            ncq: IO_QUEUES_WANTED,
        }
        .to_dw(),
    )?;
    let g = NumberOfQueues::from_dw(granted);
    data.io_queues = g.nsq.min(g.ncq).min(IO_QUEUES_WANTED) as u16;
    let mut want_aec = 0;
    if id.oaes() & IdentifyController::OAES_ANA_CHANGE != 0 {
        want_aec |= aec::ANA_CHANGE;
    }
    if id.oaes() & IdentifyController::OAES_NS_ATTRIBUTE != 0 {
        want_aec |= aec::NS_ATTRIBUTE;
    }
    if want_aec != 0
        && a.set_feature(FeatureId::AsyncEventConfig, want_aec)
            .is_err()
    {
        want_aec = 0;
    }
    let list = NsIdList::from_slice(&a.identify(cns::ACTIVE_NAMESPACES, 0)?).unwrap_or_default();
    let mut namespaces = Vec::new();
    for nsid in list.iter() {
        let ns =
            IdentifyNamespace::from_slice(&a.identify(cns::NAMESPACE, nsid)?).unwrap_or_default();
        let mut d = NsData {
            nsid,
            num_blocks: ns.nsze(),
            block_size: ns.block_size(),
            nguid: ns.nguid(),
            eui64: ns.eui64(),
            uuid: [0; 16],
            anagrpid: ns.anagrpid(),
        };
        if let Ok(desc) = a.identify(cns::NS_ID_DESCRIPTORS, nsid) {
            if let Some(list) = NsIdDescList::from_slice(&desc) {
                for e in list.iter() {
                    match e {
                        NsIdDescriptor::Uuid(u) => d.uuid = u,
                        NsIdDescriptor::Nguid(g) if d.nguid == [0; 16] => d.nguid = g,
                        NsIdDescriptor::Eui64(e) if d.eui64 == [0; 8] => d.eui64 = e,
                        _ => {}
                    }
                }
            }
        }
        if d.block_size == 0 || d.num_blocks == 0 {
            tracing::warn!(ctrl = %label, nsid, "namespace without size or block size skipped");
            continue;
        }
        namespaces.push(d);
    }
    let groups = id.nanagrpid().max(1) as usize;
    let ana_len = (16 + groups * 32 + namespaces.len() * 4).min(64 * 1024);
    Ok(Connected {
        qp: a.qp,
        data,
        namespaces,
        ana_len,
        aers: (id.aerl() + 1).min(MAX_AERS),
        aec: want_aec,
    })
}

/// A discovery log page entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Address family (1 = IPv4, 2 = IPv6).
    pub adrfam: u8,
    /// Subsystem type (2 = NVM subsystem, 3 = this discovery subsystem).
    pub subtype: u8,
    /// Port id.
    pub portid: u16,
    /// Transport address.
    pub traddr: String,
    /// Transport service id.
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
}

/// Connects to the discovery controller at `traddr:trsvcid` and reads its log page
/// (NVMe-oF 1.1 section 5): every portal of every subsystem this host may use.
pub fn discover(
    traddr: &str,
    trsvcid: &str,
    hostnqn: &str,
    opts: CtrlOptions,
) -> Result<Vec<DiscoveryEntry>, CtrlError> {
    use nvme_spec::{DiscoveryLogEntry, DiscoveryLogHeader};
    let trid = Trid::tcp(traddr, trsvcid, nvme_spec::DISCOVERY_NQN);
    let ctrl = Ctrl::new(
        "discovery",
        trid,
        hostnqn.to_string(),
        opts,
        Arc::new(EventHub::new()),
    )?;
    let c = connect_admin(&ctrl, true)?;
    let mut a = Admin {
        ctrl: &ctrl,
        qp: c.qp,
        timeout: Duration::from_millis(opts.admin_timeout_ms),
        next_tag: 0,
    };
    let hdr = a.get_log(nvme_spec::LogPageId::Discovery as u8, 1024, 0)?;
    let h = DiscoveryLogHeader::from_slice(&hdr).unwrap_or_default();
    let n = h.numrec().min(1024) as usize;
    let mut out = Vec::with_capacity(n);
    if n > 0 {
        let body = a.get_log(nvme_spec::LogPageId::Discovery as u8, 1024 * n, 1024)?;
        for chunk in body.chunks_exact(1024) {
            let e = DiscoveryLogEntry::from_slice(chunk).unwrap_or_default();
            out.push(DiscoveryEntry {
                trtype: e.trtype(),
                adrfam: e.adrfam(),
                subtype: e.subtype(),
                portid: e.portid(),
                traddr: e.traddr().unwrap_or("").to_string(),
                trsvcid: e.trsvcid().unwrap_or("").to_string(),
                subnqn: e.subnqn().unwrap_or("").to_string(),
            });
        }
    }
    Ok(out)
}

const TAG_KA: u64 = 1;
const TAG_ANA: u64 = 2;
const TAG_NSLIST: u64 = 3;
const TAG_AER: u64 = 100;

/// Outcome of a failover episode being watched.
struct Failover {
    assoc: Arc<Assoc>,
    started_ns: u64,
}

/// The controller thread: connect, serve, reconnect, give up.
pub(crate) fn run(ctrl: Arc<Ctrl>, first: Connected) {
    let mut next = Some(first);
    let mut failovers: Vec<Failover> = Vec::new();
    let mut lost_since: Option<u64> = None;
    loop {
        let conn = match next.take() {
            Some(c) => Ok(c),
            None => connect_admin(&ctrl, false),
        };
        match conn {
            Ok(c) => {
                lost_since = None;
                let reason = live(&ctrl, c, &mut failovers);
                if ctrl.stop.load(Ordering::Acquire) {
                    finish_failovers(&ctrl, &mut failovers, true);
                    break;
                }
                ctrl.resets.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(ctrl = %ctrl.label(), %reason, "controller lost; failing over and reconnecting");
            }
            Err(e) => {
                if ctrl.stop.load(Ordering::Acquire) {
                    break;
                }
                tracing::warn!(ctrl = %ctrl.label(), error = %e, "reconnect failed");
            }
        }
        let now = crate::now_ns();
        let since = *lost_since.get_or_insert(now);
        let o = ctrl.options();
        if o.ctrlr_loss_timeout_ms >= 0 && now >= since + o.ctrlr_loss_timeout_ms as u64 * 1_000_000
        {
            tracing::error!(ctrl = %ctrl.label(), "ctrlr_loss_timeout expired: controller given up");
            give_up(&ctrl, "ctrlr_loss_timeout expired");
            // Keep watching the last failover so its end is reported.
            while !failovers.is_empty() && !ctrl.stop.load(Ordering::Acquire) {
                finish_failovers(&ctrl, &mut failovers, false);
                poll_any(&[ctrl.wake.raw()], Duration::from_millis(20));
                ctrl.wake.drain();
            }
            return;
        }
        ctrl.set_state(CtrlState::Resetting);
        let until = Instant::now() + Duration::from_millis(o.reconnect_delay_ms);
        while Instant::now() < until && !ctrl.stop.load(Ordering::Acquire) {
            finish_failovers(&ctrl, &mut failovers, false);
            poll_any(
                &[ctrl.wake.raw()],
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20)),
            );
            ctrl.wake.drain();
        }
        if ctrl.stop.load(Ordering::Acquire) {
            finish_failovers(&ctrl, &mut failovers, true);
            break;
        }
        ctrl.set_state(CtrlState::Connecting);
    }
    give_up(&ctrl, "controller detached");
}

fn give_up(ctrl: &Ctrl, reason: &str) {
    ctrl.set_state(CtrlState::Failed);
    let now = crate::now_ns();
    for (bdev, p) in ctrl.paths() {
        if p.link() != Link::Failed {
            p.set_link(Link::Failed, now);
            ctrl.events.publish(
                &bdev,
                p.id(),
                p.name(),
                PathEventKind::Down {
                    reason: reason.to_string(),
                },
            );
        }
    }
}

/// Reports failovers whose association is fully closed and whose in-doubt writes are gone.
fn finish_failovers(ctrl: &Ctrl, failovers: &mut Vec<Failover>, force: bool) {
    let paths = ctrl.paths();
    let in_doubt: u32 = paths.iter().map(|(_, p)| p.in_doubt()).sum();
    let now = crate::now_ns();
    failovers.retain(|f| {
        let done = force || (f.assoc.open_connections() == 0 && in_doubt == 0);
        if done {
            for (bdev, p) in &paths {
                ctrl.events.publish(
                    bdev,
                    p.id(),
                    p.name(),
                    PathEventKind::FailoverFinished {
                        took_ms: now.saturating_sub(f.started_ns) / 1_000_000,
                    },
                );
                if p.link() == Link::FailingOver {
                    p.set_link(Link::Connecting, now);
                }
            }
        }
        !done
    });
}

/// Serves a live association until it fails or the controller is stopped; then tears it
/// down. Returns the reason.
fn live(ctrl: &Arc<Ctrl>, c: Connected, failovers: &mut Vec<Failover>) -> String {
    let o = ctrl.options();
    let gen = ctrl.gen.load(Ordering::Acquire) + 1;
    let assoc = Arc::new(Assoc {
        gen,
        cntlid: c.data.cntlid,
        kato_ms: o.keep_alive_timeout_ms,
        grace_ms: o.write_fence_grace_ms,
        addr: ctrl.addr,
        max_icd: c.data.max_icd,
        io_depth: c.data.io_depth,
        hdgst: o.hdgst,
        ddgst: o.ddgst,
        io_timeout_us: o.io_timeout_us,
        open: AtomicU32::new(1),
        last_tx_ns: AtomicU64::new(0),
        torn_down: AtomicBool::new(false),
        qids: Mutex::new(vec![false; c.data.io_queues as usize]),
    });
    *ctrl.data.lock().expect("data lock") = c.data.clone();
    *ctrl.namespaces.lock().expect("ns lock") = c.namespaces.clone();
    *ctrl.assoc.lock().expect("assoc lock") = Some(assoc.clone());
    ctrl.gen.store(gen, Ordering::Release);
    let mut qp = c.qp;
    // AERs, then the initial ANA log (synchronously, so paths come up with their real state).
    for i in 0..c.aers {
        let _ = qp.submit(aer_cmd(TAG_AER + i as u64), crate::now_ns());
    }
    let mut reason = None;
    if c.data.ana {
        let (sqe, data) = log_cmd(nvme_spec::LogPageId::Ana as u8, c.ana_len, 0);
        let deadline = Instant::now() + Duration::from_millis(o.admin_timeout_ms);
        match qp.exec(
            Cmd {
                sqe,
                dir: Dir::C2H,
                data,
                tag: TAG_ANA,
            },
            deadline,
            &mut |_| {},
        ) {
            Ok(d) => apply_ana(ctrl, &d, false),
            Err(e) => reason = Some(format!("reading the ANA log: {e}")),
        }
    }
    ctrl.ana_refresh.store(false, Ordering::Release);
    let now = crate::now_ns();
    ctrl.set_state(CtrlState::Live);
    for (bdev, p) in ctrl.paths() {
        if !c.data.ana {
            p.set_ana(Ana::Optimized);
        }
        p.set_link(Link::Live, now);
        ctrl.events.publish(
            &bdev,
            p.id(),
            p.name(),
            PathEventKind::Up { state: p.state() },
        );
    }
    tracing::info!(ctrl = %ctrl.label(), cntlid = c.data.cntlid, gen, io_queues = c.data.io_queues, "controller live");
    let kato_ns = o.keep_alive_timeout_ms as u64 * 1_000_000;
    let mut next_ka = now + kato_ns / 2;
    let mut ka_sent: Option<u64> = None;
    let mut ana_inflight = false;
    let mut admin_sent: Vec<(u64, u64)> = Vec::new(); // (tag, sent_ns) of timed commands
    let _ = c.aec;
    while reason.is_none() {
        finish_failovers(ctrl, failovers, false);
        let now = crate::now_ns();
        let mut timeout = Duration::from_millis(20);
        if kato_ns > 0 {
            timeout = timeout.min(Duration::from_nanos(next_ka.saturating_sub(now)));
        }
        poll_any(&[qp.fd(), ctrl.wake.raw()], timeout);
        ctrl.wake.drain();
        if ctrl.stop.load(Ordering::Acquire) {
            reason = Some("controller detached".into());
            break;
        }
        if ctrl.reset_gen.load(Ordering::Acquire) >= gen {
            reason = Some(format!(
                "I/O queue failure: {}",
                ctrl.reset_reason.lock().expect("reason lock")
            ));
            break;
        }
        let now = crate::now_ns();
        let mut completions = Vec::new();
        if let Err(e) = qp.poll(now, &mut |d| completions.push(d)) {
            reason = Some(format!("admin queue: {e}"));
            break;
        }
        for d in completions {
            admin_sent.retain(|(t, _)| *t != d.tag);
            match d.tag {
                TAG_KA => {
                    ka_sent = None;
                    if let Outcome::Completed { status, .. } = d.outcome {
                        if !status.is_success() {
                            reason = Some(format!("Keep Alive failed with status {status}"));
                        }
                    }
                }
                TAG_ANA => {
                    ana_inflight = false;
                    apply_ana(ctrl, &d, true);
                }
                TAG_NSLIST => {}
                t if t >= TAG_AER => {
                    if let Outcome::Completed { status, dw0, .. } = d.outcome {
                        if status.is_success() {
                            let ev = AsyncEvent::from_dw0(dw0);
                            tracing::info!(ctrl = %ctrl.label(), ?ev, "asynchronous event");
                            if ev.log_page == nvme_spec::LogPageId::Ana as u8 {
                                ctrl.ana_refresh.store(true, Ordering::Release);
                            } else if ev.log_page
                                == nvme_spec::LogPageId::ChangedNamespaceList as u8
                            {
                                // Reading the log clears the event; namespace hot-add/remove is
                                // applied on the next reconnect.
                                let (sqe, data) = log_cmd(ev.log_page, 4096, 0);
                                let _ = qp.submit(
                                    Cmd {
                                        sqe,
                                        dir: Dir::C2H,
                                        data,
                                        tag: TAG_NSLIST,
                                    },
                                    now,
                                );
                            }
                            let _ = qp.submit(aer_cmd(t), now);
                        }
                    }
                }
                _ => {}
            }
        }
        if reason.is_some() {
            break;
        }
        if c.data.ana && !ana_inflight && ctrl.ana_refresh.swap(false, Ordering::AcqRel) {
            let (sqe, data) = log_cmd(nvme_spec::LogPageId::Ana as u8, c.ana_len, 0);
            if qp
                .submit(
                    Cmd {
                        sqe,
                        dir: Dir::C2H,
                        data,
                        tag: TAG_ANA,
                    },
                    now,
                )
                .is_ok()
            {
                ana_inflight = true;
                admin_sent.push((TAG_ANA, now));
            }
        }
        if kato_ns > 0 && now >= next_ka {
            if let Some(sent) = ka_sent {
                if now >= sent + kato_ns {
                    reason = Some("keep-alive timeout".into());
                    break;
                }
            } else {
                let ka = Cmd {
                    sqe: Sqe::new(AdminOpcode::KeepAlive.as_u8(), 0, 0),
                    dir: Dir::None,
                    data: DataBuf::None,
                    tag: TAG_KA,
                };
                if qp.submit(ka, now).is_ok() {
                    ka_sent = Some(now);
                }
            }
            next_ka = now + kato_ns / 2;
        }
        let admin_to = o.admin_timeout_ms * 1_000_000;
        if admin_sent.iter().any(|(_, t)| now >= t + admin_to) {
            reason = Some("admin command timeout".into());
            break;
        }
        if let Err(e) = qp.flush(now) {
            reason = Some(format!("admin queue: {e}"));
        }
    }
    let reason = reason.unwrap_or_default();
    // Teardown: paths down first (reactors stop choosing them), then the RST, then the
    // generation moves on so every reactor closes its queue pairs of this association.
    let now = crate::now_ns();
    ctrl.set_state(CtrlState::Resetting);
    let paths = ctrl.paths();
    for (bdev, p) in &paths {
        p.set_link(Link::FailingOver, now);
        ctrl.events.publish(
            bdev,
            p.id(),
            p.name(),
            PathEventKind::Down {
                reason: reason.clone(),
            },
        );
        ctrl.events
            .publish(bdev, p.id(), p.name(), PathEventKind::FailoverStarted);
    }
    assoc.torn_down.store(true, Ordering::Release);
    let last_tx = qp.last_tx_ns();
    qp.close(&mut |_| {});
    assoc.conn_closed(last_tx);
    ctrl.gen.store(gen + 1, Ordering::Release);
    failovers.push(Failover {
        assoc,
        started_ns: now,
    });
    reason
}

fn aer_cmd(tag: u64) -> Cmd {
    Cmd {
        sqe: Sqe::new(AdminOpcode::AsyncEventRequest.as_u8(), 0, 0),
        dir: Dir::None,
        data: DataBuf::None,
        tag,
    }
}

/// Applies an ANA log to this controller's paths.
fn apply_ana(ctrl: &Ctrl, d: &Done, emit: bool) {
    let Outcome::Completed { status, .. } = d.outcome else {
        return;
    };
    if !status.is_success() {
        tracing::warn!(ctrl = %ctrl.label(), %status, "ANA log read failed");
        return;
    }
    let DataBuf::Owned(buf) = &d.data else { return };
    let groups = match nvme_spec::log::parse_ana_log(buf) {
        Ok((_, g)) => g,
        Err(e) => {
            tracing::warn!(ctrl = %ctrl.label(), error = %e, "malformed ANA log ignored");
            return;
        }
    };
    let nss = ctrl.namespaces();
    for (bdev, p) in ctrl.paths() {
        let crate::path::PathKind::Remote { nsid, .. } = p.kind() else {
            continue;
        };
        let grp = nss.iter().find(|n| n.nsid == *nsid).map(|n| n.anagrpid);
        let state = groups
            .iter()
            .find(|g| g.nsids().any(|n| n == *nsid))
            .or_else(|| groups.iter().find(|g| Some(g.grpid) == grp))
            .map(|g| Ana::from_log(g.state));
        if let Some(a) = state {
            let old_state = p.state();
            p.set_ana(a);
            let new_state = p.state();
            if emit && old_state != new_state && p.link() == Link::Live {
                ctrl.events.publish(
                    &bdev,
                    p.id(),
                    p.name(),
                    PathEventKind::AnaChange {
                        old: old_state,
                        new: new_state,
                    },
                );
            }
        }
    }
}

impl Ctrl {
    /// The paths' states by namespace (diagnostics).
    pub fn path_states(&self) -> Vec<(String, PathState)> {
        self.paths()
            .iter()
            .map(|(b, p)| (b.clone(), p.state()))
            .collect()
    }
}
