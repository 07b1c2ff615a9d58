//! The multipath namespace ([`MultipathNs`], a [`BlockDevice`]) and its per-reactor channel
//! ([`MultipathChannel`], an [`IoChannel`]) that routes every request to a path, moves
//! failed I/O to other paths, holds I/O while no path is usable, and enforces the write
//! fence (see the crate docs).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nvme_spec::cmd::{DatasetManagement, DsmRange, ReadWrite, WriteZeroes};
use nvme_spec::{NvmOpcode, Sct, Sqe, Status};
use smallvec::SmallVec;
use vmpath_bdev::{
    validate, BdevError, BdevInfo, BlockDevice, IoChannel, IoCompletion, IoError, IoRequest,
    IoStats, IoType, SharedStats, SubmitError, SubmitErrorKind,
};

use crate::ctrlr::{Assoc, Conn, Ctrl, CtrlState, NsIdentity, PendingConn};
use crate::events::{EventHub, PathEventKind};
use crate::options::PolicyKind;
use crate::path::{Ana, Path, PathId, PathKind, PathSnapshot};
use crate::policy::{self, Candidate, PathSelector};
use crate::qpair::{Cmd, DataBuf, Dir, Done, Outcome};
use vmpath_runtime::sys::{Epoll, EV_READ};

/// Requests a channel accepts at once.
pub const CHANNEL_DEPTH: usize = 1024;
/// Attempts of one request before its last path error is returned.
const MAX_ATTEMPTS: u16 = 64;
/// Delay before a reactor retries connecting its queue pair of a live controller.
const LANE_RETRY_NS: u64 = 100_000_000;
/// How often a channel checks its queue pairs for timed-out commands.
const TIMEOUT_SCAN_NS: u64 = 1_000_000;

/// A namespace reached through one or more paths.
#[derive(Debug)]
pub struct MultipathNs {
    me: std::sync::Weak<MultipathNs>,
    info: BdevInfo,
    identity: Option<NsIdentity>,
    policy: Mutex<PolicyKind>,
    policy_epoch: AtomicU64,
    paths: RwLock<Vec<Arc<Path>>>,
    epoch: AtomicU64,
    stats: SharedStats,
    events: Arc<EventHub>,
}

/// Errors of path management on a namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NsError {
    /// The new path does not lead to the same namespace.
    #[error("namespace {bdev}: {msg}")]
    Mismatch {
        /// Namespace name.
        bdev: String,
        /// What differs.
        msg: String,
    },
    /// No such path.
    #[error("namespace {bdev} has no path {path}")]
    NoSuchPath {
        /// Namespace name.
        bdev: String,
        /// Path id.
        path: PathId,
    },
    /// Too many paths.
    #[error("namespace {0} has the maximum number of paths")]
    TooManyPaths(String),
}

impl MultipathNs {
    pub(crate) fn new(
        info: BdevInfo,
        identity: Option<NsIdentity>,
        policy: PolicyKind,
        events: Arc<EventHub>,
    ) -> Arc<MultipathNs> {
        Arc::new_cyclic(|me| MultipathNs {
            me: me.clone(),
            info,
            identity,
            policy: Mutex::new(policy),
            policy_epoch: AtomicU64::new(0),
            paths: RwLock::new(Vec::new()),
            epoch: AtomicU64::new(0),
            stats: SharedStats::default(),
            events,
        })
    }

    /// The bdev name (`{controller name}n{nsid}`).
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The identity that every path's namespace matches.
    pub fn identity(&self) -> Option<NsIdentity> {
        self.identity
    }

    /// All paths, including removed ones (their state is `failed`), by id.
    pub fn paths(&self) -> Vec<Arc<Path>> {
        self.paths.read().expect("paths lock").clone()
    }

    /// One path.
    pub fn path(&self, id: PathId) -> Option<Arc<Path>> {
        self.paths
            .read()
            .expect("paths lock")
            .get(id.index())
            .cloned()
    }

    /// Snapshots of the paths that are not removed.
    pub fn path_snapshots(&self) -> Vec<PathSnapshot> {
        self.paths()
            .iter()
            .filter(|p| !p.is_removed())
            .map(|p| p.snapshot())
            .collect()
    }

    /// Number of paths not removed.
    pub fn live_path_count(&self) -> usize {
        self.paths().iter().filter(|p| !p.is_removed()).count()
    }

    /// The built-in policy channels use when no selector is installed.
    pub fn policy(&self) -> PolicyKind {
        *self.policy.lock().expect("policy lock")
    }

    /// Changes the built-in policy (channels switch on their next poll).
    pub fn set_policy(&self, p: PolicyKind) {
        *self.policy.lock().expect("policy lock") = p;
        self.policy_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn check_geometry(&self, num_blocks: u64, block_size: u32) -> Result<(), NsError> {
        if num_blocks != self.info.num_blocks || block_size != self.info.block_size {
            return Err(NsError::Mismatch {
                bdev: self.info.name.clone(),
                msg: format!(
                    "path has {num_blocks} blocks of {block_size} bytes, namespace has {} of {}",
                    self.info.num_blocks, self.info.block_size
                ),
            });
        }
        Ok(())
    }

    /// Adds a path. Remote paths come from [`crate::NvmeHost`]; local ones with
    /// [`MultipathNs::add_local_path`].
    pub(crate) fn add_path(&self, name: String, kind: PathKind) -> Result<Arc<Path>, NsError> {
        let mut paths = self.paths.write().expect("paths lock");
        if paths.len() >= u16::MAX as usize {
            return Err(NsError::TooManyPaths(self.info.name.clone()));
        }
        let p = Arc::new(Path::new(PathId(paths.len() as u16), name, kind));
        paths.push(p.clone());
        drop(paths);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.events
            .publish(&self.info.name, p.id(), p.name(), PathEventKind::Added);
        Ok(p)
    }

    /// Adds a local block device (e.g. a local queue pair of the same namespace) as a path.
    /// The device must have the namespace's geometry and, when the namespace has an NGUID or
    /// UUID, the same 16-byte identifier as its `uuid`.
    pub fn add_local_path(&self, dev: Arc<dyn BlockDevice>) -> Result<PathId, NsError> {
        let info = dev.info();
        self.check_geometry(info.num_blocks, info.block_size)?;
        match self.identity {
            Some(NsIdentity::Nguid(id)) | Some(NsIdentity::Uuid(id)) if id != info.uuid => {
                return Err(NsError::Mismatch {
                    bdev: self.info.name.clone(),
                    msg: format!(
                        "local device {} has identifier {}, not the namespace's",
                        info.name,
                        vmpath_bdev::uuid_string(&info.uuid)
                    ),
                })
            }
            _ => {}
        }
        let name = format!("local:{}", info.name);
        let p = self.add_path(name, PathKind::Local { dev })?;
        self.events.publish(
            &self.info.name,
            p.id(),
            p.name(),
            PathEventKind::Up { state: p.state() },
        );
        Ok(p.id())
    }

    /// Removes a path: reactors close their queue pairs on it and move its I/O.
    pub fn remove_path(&self, id: PathId, reason: &str) -> Result<(), NsError> {
        let p = self.path(id).ok_or(NsError::NoSuchPath {
            bdev: self.info.name.clone(),
            path: id,
        })?;
        if !p.is_removed() {
            p.mark_removed();
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.events.publish(
                &self.info.name,
                id,
                p.name(),
                PathEventKind::Removed {
                    reason: reason.to_string(),
                },
            );
        }
        Ok(())
    }

    /// Opens the concrete channel (with the path-selection hook) for the calling reactor.
    pub fn open_mp_channel(self: &Arc<Self>) -> Result<MultipathChannel, BdevError> {
        let epoll = Epoll::with_capacity(1).map_err(|source| BdevError::Os {
            what: "creating the channel's epoll set",
            source,
        })?;
        let mut ch = MultipathChannel {
            ns: self.clone(),
            epoch: u64::MAX,
            policy_epoch: self.policy_epoch.load(Ordering::Acquire),
            custom_selector: false,
            selector: policy::build(self.policy()),
            lanes: Vec::new(),
            ios: (0..CHANNEL_DEPTH).map(|_| IoCtx::default()).collect(),
            free: (0..CHANNEL_DEPTH as u32).rev().collect(),
            ready: VecDeque::new(),
            held: VecDeque::new(),
            in_doubt: Vec::new(),
            done: VecDeque::new(),
            epoll,
            outstanding: 0,
            next_scan_ns: 0,
            stats: IoStats::default(),
        };
        ch.sync_lanes(crate::now_ns());
        Ok(ch)
    }

    /// True if `op` is supported on every remote path (Flush, Read and Write always are).
    fn op_supported(&self, op: IoType) -> bool {
        let bit = match op {
            IoType::Unmap => nvme_spec::IdentifyController::ONCS_DSM,
            IoType::WriteZeroes => nvme_spec::IdentifyController::ONCS_WRITE_ZEROES,
            _ => return true,
        };
        self.paths()
            .iter()
            .filter(|p| !p.is_removed())
            .all(|p| match p.kind() {
                PathKind::Remote { ctrl, .. } => {
                    let d = ctrl.data();
                    // Before the first Identify nothing is known: allow.
                    d.cntlid == 0 && d.oncs == 0 || d.oncs & bit != 0
                }
                PathKind::Local { dev } => dev.supports(op),
            })
    }
}

impl BlockDevice for MultipathNs {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let me = self.me.upgrade().ok_or_else(|| BdevError::InvalidParam {
            param: "open_channel",
            msg: format!("namespace {} is being destroyed", self.info.name),
        })?;
        Ok(Box::new(me.open_mp_channel()?))
    }

    fn supports(&self, op: IoType) -> bool {
        self.op_supported(op)
    }

    fn stats(&self) -> IoStats {
        self.stats.snapshot()
    }
}

/// A request's completion with the path that served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Outcome.
    pub result: Result<(), IoError>,
    /// The path of the last attempt (None if the request never reached a path).
    pub path: Option<PathId>,
    /// Service time of the last attempt (ns).
    pub service_ns: u64,
    /// Time from submission to completion, failovers included (ns).
    pub latency_ns: u64,
    /// Attempts (1 without failover).
    pub attempts: u16,
    /// Bytes the request moves.
    pub bytes: u32,
}

#[derive(Debug, Default)]
enum CtxState {
    #[default]
    Free,
    /// Waiting in `ready` to be dispatched.
    Ready,
    /// Waiting in `held` for a usable path.
    Held,
    /// On a path.
    Inflight { sent_ns: u64 },
    /// A write whose outcome on `path` is unknown; waits for `assoc`'s fence.
    InDoubt { path: PathId, assoc: Arc<Assoc> },
}

#[derive(Debug, Default)]
struct IoCtx {
    req: Option<IoRequest>,
    state: CtxState,
    requested: Option<PathId>,
    first_ns: u64,
    attempts: u16,
    last_path: Option<PathId>,
    service_ns: u64,
    bytes: u32,
    last_error: Option<IoError>,
}

enum LaneConn {
    Idle { next_try_ns: u64 },
    Pending { pending: Arc<PendingConn>, gen: u64 },
    Live(Box<Conn>),
}

enum LaneKind {
    Remote {
        ctrl: Arc<Ctrl>,
        nsid: u32,
        conn: LaneConn,
    },
    Local {
        chan: Option<Box<dyn IoChannel>>,
    },
    Gone,
}

struct Lane {
    path: Arc<Path>,
    kind: LaneKind,
    local_out: u32,
}

impl Lane {
    fn live(&self) -> bool {
        match &self.kind {
            LaneKind::Remote {
                conn: LaneConn::Live(c),
                ctrl,
                ..
            } => c.assoc().gen() == ctrl.gen() && !c.assoc().is_torn_down(),
            LaneKind::Local { chan: Some(_) } => true,
            _ => false,
        }
    }

    fn has_room(&self) -> bool {
        match &self.kind {
            LaneKind::Remote {
                conn: LaneConn::Live(c),
                ..
            } => c.qp_ref().core().has_room(),
            LaneKind::Local { chan: Some(c) } => c.outstanding() < c.capacity(),
            _ => false,
        }
    }
}

/// A reactor's channel on a multipath namespace (`!Send`).
///
/// Besides [`IoChannel`], it offers the path-selection hook: [`MultipathChannel::submit_on`]
/// puts a request on a given path, [`MultipathChannel::set_selector`] installs a selector for
/// plain submissions, and [`MultipathChannel::poll_paths`] reports the path each request
/// completed on with its service time.
pub struct MultipathChannel {
    ns: Arc<MultipathNs>,
    epoch: u64,
    policy_epoch: u64,
    custom_selector: bool,
    selector: Box<dyn PathSelector>,
    lanes: Vec<Lane>,
    ios: Vec<IoCtx>,
    free: Vec<u32>,
    ready: VecDeque<u32>,
    held: VecDeque<u32>,
    in_doubt: Vec<u32>,
    done: VecDeque<PathCompletion>,
    epoll: Epoll,
    outstanding: usize,
    next_scan_ns: u64,
    stats: IoStats,
}

impl std::fmt::Debug for MultipathChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipathChannel")
            .field("ns", &self.ns.name())
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

/// Whether a completion status means the command was not executed on that path and may be
/// retried on another (path-related status type, or a transport/abort status).
fn retryable(status: Status) -> bool {
    status.sct() == Sct::PathRelated
        || matches!(
            status.code(),
            Status::TRANSIENT_TRANSPORT_ERROR
                | Status::ABORTED_SQ_DELETION
                | Status::COMMAND_INTERRUPTED
                | Status::ABORT_REQUESTED
        )
}

/// Whether an operation changes data (its in-doubt copies are fenced).
fn modifies(op: IoType) -> bool {
    matches!(op, IoType::Write | IoType::Unmap | IoType::WriteZeroes)
}

impl MultipathChannel {
    /// The namespace.
    pub fn ns(&self) -> &Arc<MultipathNs> {
        &self.ns
    }

    /// A descriptor that becomes readable when any of the channel's sockets has data:
    /// register it with the reactor so its idle sleep ends when a completion arrives.
    pub fn wake_fd(&self) -> RawFd {
        self.epoll.raw()
    }

    /// Installs a selector for requests submitted without a path (the per-VM scheduler's hook,
    /// or a custom policy). It replaces the namespace's built-in policy on this channel.
    pub fn set_selector(&mut self, s: Box<dyn PathSelector>) {
        self.selector = s;
        self.custom_selector = true;
    }

    /// Submits `req` on `path`. The path is honoured while it is usable on this reactor;
    /// otherwise (or after a path error) the request fails over like any other and the
    /// completion ([`poll_paths`](Self::poll_paths)) names the path that served it.
    pub fn submit_on(&mut self, path: PathId, req: IoRequest) -> Result<(), SubmitError> {
        self.submit_inner(req, Some(path))
    }

    /// Requests accepted and not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.outstanding
    }

    /// Requests waiting for a usable path.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Writes waiting for the fence of a lost association.
    pub fn in_doubt(&self) -> usize {
        self.in_doubt.len()
    }

    /// True if the path can take a request from this reactor now (usable and this reactor's
    /// queue pair on it connected).
    pub fn path_ready(&self, id: PathId) -> bool {
        self.lanes
            .get(id.index())
            .is_some_and(|l| l.path.state().is_usable() && l.live())
    }

    fn submit_inner(&mut self, req: IoRequest, path: Option<PathId>) -> Result<(), SubmitError> {
        let Some(idx) = self.free.pop() else {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        };
        let now = crate::now_ns();
        self.outstanding += 1;
        let bytes = if req.op.has_data() {
            req.num_blocks.saturating_mul(self.ns.info.block_size)
        } else {
            0
        };
        let check = validate(&self.ns.info, &req).and_then(|_| self.check_limits(&req));
        let ctx = &mut self.ios[idx as usize];
        *ctx = IoCtx {
            req: Some(req),
            state: CtxState::Ready,
            requested: path,
            first_ns: now,
            attempts: 0,
            last_path: None,
            service_ns: 0,
            bytes,
            last_error: None,
        };
        match check {
            Ok(()) => {
                self.ready.push_back(idx);
                self.dispatch(now);
            }
            Err(e) => self.complete(idx, Err(e), now),
        }
        Ok(())
    }

    fn check_limits(&self, req: &IoRequest) -> Result<(), IoError> {
        if !self.ns.op_supported(req.op) {
            return Err(IoError::Unsupported(req.op.name()));
        }
        match req.op {
            IoType::Read | IoType::Write | IoType::WriteZeroes if req.num_blocks > 65_536 => {
                Err(IoError::Unsupported("requests above 65536 blocks"))
            }
            IoType::Read | IoType::Write if req.num_blocks > self.ns.info.max_io_blocks => {
                Err(IoError::Unsupported("requests above the controller's MDTS"))
            }
            _ => Ok(()),
        }
    }

    /// Adds lanes for new paths and retires lanes of removed ones.
    fn sync_lanes(&mut self, now: u64) {
        let epoch = self.ns.epoch.load(Ordering::Acquire);
        if epoch == self.epoch {
            return;
        }
        self.epoch = epoch;
        let paths = self.ns.paths();
        for p in &paths[self.lanes.len().min(paths.len())..] {
            let kind = match p.kind() {
                PathKind::Remote { ctrl, nsid } => LaneKind::Remote {
                    ctrl: ctrl.clone(),
                    nsid: *nsid,
                    conn: LaneConn::Idle { next_try_ns: 0 },
                },
                PathKind::Local { dev } => match dev.open_channel() {
                    Ok(c) => LaneKind::Local { chan: Some(c) },
                    Err(e) => {
                        tracing::error!(path = p.name(), error = %e, "cannot open local path channel");
                        LaneKind::Local { chan: None }
                    }
                },
            };
            self.lanes.push(Lane {
                path: p.clone(),
                kind,
                local_out: 0,
            });
        }
        for i in 0..self.lanes.len() {
            if self.lanes[i].path.is_removed() && !matches!(self.lanes[i].kind, LaneKind::Gone) {
                self.close_lane(i, now);
                self.lanes[i].kind = LaneKind::Gone;
            }
        }
    }

    /// Closes lane `i`'s queue pair and routes its commands through failover.
    fn close_lane(&mut self, i: usize, now: u64) {
        let mut lost = Vec::new();
        let mut assoc = None;
        let lane = &mut self.lanes[i];
        if let LaneKind::Remote { conn, .. } = &mut lane.kind {
            if let LaneConn::Live(c) = conn {
                let _ = self.epoll.del(c.qp_ref().fd());
                assoc = Some(c.assoc().clone());
                c.close(&mut |d| lost.push(d));
            }
            // Dropping the connection accounts its close in the association.
            *conn = LaneConn::Idle {
                next_try_ns: now + LANE_RETRY_NS,
            };
        }
        for d in lost {
            self.on_done(i, d, now, assoc.as_ref());
        }
    }

    /// Drives lane `i`: connection state machine, socket I/O, timeouts.
    fn drive_lane(&mut self, i: usize, now: u64, scan: bool) -> bool {
        let mut busy = false;
        let mut dones: SmallVec<[Done; 16]> = SmallVec::new();
        let mut local: SmallVec<[IoCompletion; 16]> = SmallVec::new();
        let mut fail: Option<String> = None;
        {
            let lane = &mut self.lanes[i];
            match &mut lane.kind {
                LaneKind::Gone => return false,
                LaneKind::Local { chan } => {
                    if let Some(c) = chan {
                        if c.poll(now, &mut |cpl| local.push(cpl)) > 0 {
                            busy = true;
                        }
                    }
                }
                LaneKind::Remote { ctrl, conn, .. } => match conn {
                    LaneConn::Idle { next_try_ns } => {
                        if now >= *next_try_ns
                            && ctrl.state() == CtrlState::Live
                            && !lane.path.is_removed()
                        {
                            match ctrl.connect_io() {
                                Some(p) => {
                                    *conn = LaneConn::Pending {
                                        pending: p,
                                        gen: ctrl.gen(),
                                    }
                                }
                                None => *next_try_ns = now + LANE_RETRY_NS,
                            }
                        }
                    }
                    LaneConn::Pending { pending, gen } => {
                        if let Some(r) = pending.take() {
                            busy = true;
                            match r {
                                Ok(c) if c.assoc().gen() == ctrl.gen() && *gen == ctrl.gen() => {
                                    let fd = c.qp_ref().fd();
                                    let _ = self.epoll.add(fd, EV_READ, fd as u64);
                                    *conn = LaneConn::Live(Box::new(c));
                                }
                                Ok(_) => {
                                    *conn = LaneConn::Idle { next_try_ns: now };
                                }
                                Err(e) => {
                                    tracing::warn!(ctrl = %ctrl.label(), error = %e, "I/O queue connect failed");
                                    let g = *gen;
                                    *conn = LaneConn::Idle {
                                        next_try_ns: now + LANE_RETRY_NS,
                                    };
                                    if g == ctrl.gen() {
                                        ctrl.request_reset(g, &format!("I/O queue connect: {e}"));
                                    }
                                }
                            }
                        }
                    }
                    LaneConn::Live(c) => {
                        if c.assoc().gen() != ctrl.gen() || c.assoc().is_torn_down() {
                            fail = Some(String::new());
                        } else {
                            match c.qp().poll(now, &mut |d| dones.push(d)) {
                                Ok(b) => busy |= b,
                                Err(e) => {
                                    let msg = format!("I/O queue {}: {e}", c.qid());
                                    tracing::warn!(ctrl = %ctrl.label(), error = %msg, "I/O queue failed");
                                    ctrl.request_reset(c.assoc().gen(), &msg);
                                    fail = Some(msg);
                                }
                            }
                            let tmo = c.assoc().io_timeout_us() * 1000;
                            if fail.is_none() && scan && tmo > 0 {
                                if let Some((cid, opcode, t0)) = c.qp_ref().core().oldest() {
                                    if now >= t0 + tmo {
                                        let e = crate::qpair::QpairError::Timeout {
                                            cid,
                                            opcode,
                                            elapsed_ms: (now - t0) / 1_000_000,
                                        };
                                        let msg = format!("I/O queue {}: {e}", c.qid());
                                        tracing::warn!(ctrl = %ctrl.label(), error = %msg, "I/O timeout");
                                        ctrl.request_reset(c.assoc().gen(), &msg);
                                        fail = Some(msg);
                                    }
                                }
                            }
                        }
                    }
                },
            }
        }
        for d in dones {
            self.on_done(i, d, now, None);
        }
        for cpl in local {
            self.on_local_done(i, cpl, now);
        }
        if fail.is_some() {
            busy = true;
            self.close_lane(i, now);
        }
        busy
    }

    fn on_local_done(&mut self, lane: usize, cpl: IoCompletion, now: u64) {
        let idx = cpl.tag as u32;
        let path = self.lanes[lane].path.clone();
        self.lanes[lane].local_out = self.lanes[lane].local_out.saturating_sub(1);
        let (bytes, sent) = self.attempt_end(idx, now);
        match cpl.result {
            Ok(()) => {
                path.on_complete(bytes, Some(now.saturating_sub(sent)));
                self.complete(idx, Ok(()), now);
            }
            Err(e @ (IoError::NoPath | IoError::Timeout | IoError::Aborted)) => {
                path.on_complete(bytes, None);
                path.count_error();
                self.ios[idx as usize].last_error = Some(e);
                self.retry(idx, now);
            }
            Err(e) => {
                path.on_complete(bytes, Some(now.saturating_sub(sent)));
                self.complete(idx, Err(e), now);
            }
        }
    }

    /// Marks the end of an attempt; returns (bytes, when it was sent).
    fn attempt_end(&mut self, idx: u32, now: u64) -> (u32, u64) {
        let ctx = &mut self.ios[idx as usize];
        let sent = match ctx.state {
            CtxState::Inflight { sent_ns, .. } => sent_ns,
            _ => now,
        };
        ctx.service_ns = now.saturating_sub(sent);
        (ctx.bytes, sent)
    }

    /// Handles a finished command of lane `lane`; `assoc` is the association of a queue pair
    /// that was just closed (its lost commands are in doubt).
    fn on_done(&mut self, lane: usize, d: Done, now: u64, assoc: Option<&Arc<Assoc>>) {
        let idx = d.tag as u32;
        if idx as usize >= self.ios.len() {
            return;
        }
        let path = self.lanes[lane].path.clone();
        self.lanes[lane].local_out = self.lanes[lane].local_out.saturating_sub(1);
        let (bytes, sent) = self.attempt_end(idx, now);
        let op = match &self.ios[idx as usize].req {
            Some(r) => r.op,
            None => return,
        };
        match d.outcome {
            Outcome::Completed { status, .. } if status.is_success() => {
                path.on_complete(bytes, Some(now.saturating_sub(sent)));
                self.complete(idx, Ok(()), now);
            }
            Outcome::Completed { status, .. } if retryable(status) => {
                path.on_complete(bytes, None);
                path.count_error();
                if status.is_ana_error() {
                    path.set_ana(Ana::Inaccessible);
                    if let Some(c) = path.ctrl() {
                        c.request_ana_refresh();
                    }
                }
                self.ios[idx as usize].last_error = Some(IoError::Device(status.0 as i32));
                self.retry(idx, now);
            }
            Outcome::Completed { status, .. } => {
                path.on_complete(bytes, Some(now.saturating_sub(sent)));
                self.complete(idx, Err(IoError::Device(status.0 as i32)), now);
            }
            Outcome::Lost { sent: was_sent } => {
                path.on_complete(bytes, None);
                path.count_error();
                self.ios[idx as usize].last_error = Some(IoError::NoPath);
                match assoc {
                    Some(assoc) if was_sent && modifies(op) => {
                        let assoc = assoc.clone();
                        // The write rule: its first attempt may still land; wait for the fence.
                        path.in_doubt_add();
                        self.ios[idx as usize].state = CtxState::InDoubt {
                            path: path.id(),
                            assoc,
                        };
                        self.in_doubt.push(idx);
                    }
                    _ => self.retry(idx, now),
                }
            }
        }
    }

    fn retry(&mut self, idx: u32, now: u64) {
        let ctx = &mut self.ios[idx as usize];
        if ctx.attempts >= MAX_ATTEMPTS {
            let e = ctx.last_error.unwrap_or(IoError::NoPath);
            self.complete(idx, Err(e), now);
            return;
        }
        ctx.state = CtxState::Ready;
        self.ready.push_back(idx);
    }

    fn complete(&mut self, idx: u32, result: Result<(), IoError>, now: u64) {
        let ctx = &mut self.ios[idx as usize];
        let Some(req) = ctx.req.take() else { return };
        self.stats.count(req.op, ctx.bytes as u64, result.is_ok());
        self.done.push_back(PathCompletion {
            tag: req.tag,
            result,
            path: ctx.last_path,
            service_ns: ctx.service_ns,
            latency_ns: now.saturating_sub(ctx.first_ns),
            attempts: ctx.attempts,
            bytes: ctx.bytes,
        });
        ctx.state = CtxState::Free;
        self.free.push(idx);
        self.outstanding -= 1;
    }

    /// Picks a path for request `idx`: the requested one while ready, else the selector's.
    fn choose(&mut self, idx: u32) -> Result<Option<usize>, ()> {
        let ctx = &self.ios[idx as usize];
        if let Some(p) = ctx.requested {
            if let Some(l) = self.lanes.get(p.index()) {
                if l.path.state().is_usable() && l.live() {
                    return if l.has_room() {
                        Ok(Some(p.index()))
                    } else {
                        Ok(None)
                    };
                }
            }
        }
        let mut cands: SmallVec<[Candidate<'_>; 8]> = SmallVec::new();
        let mut any_usable = false;
        for l in &self.lanes {
            if l.path.state().is_usable() && l.live() {
                any_usable = true;
                if l.has_room() {
                    cands.push(Candidate {
                        path: &l.path,
                        local_outstanding: l.local_out,
                    });
                }
            }
        }
        if !any_usable {
            return Err(());
        }
        if cands.is_empty() {
            return Ok(None);
        }
        let req = ctx.req.as_ref().expect("queued request");
        match self.selector.select(req, &cands) {
            Some(p) if cands.iter().any(|c| c.id() == p) => Ok(Some(p.index())),
            _ => Ok(None),
        }
    }

    /// Sends ready requests to paths; parks them as held when no path is usable.
    fn dispatch(&mut self, now: u64) -> bool {
        let mut busy = false;
        while let Some(&idx) = self.ready.front() {
            match self.choose(idx) {
                Err(()) => {
                    self.ready.pop_front();
                    self.ios[idx as usize].state = CtxState::Held;
                    self.held.push_back(idx);
                }
                Ok(None) => break,
                Ok(Some(lane)) => {
                    self.ready.pop_front();
                    busy = true;
                    self.issue(idx, lane, now);
                }
            }
        }
        busy
    }

    fn issue(&mut self, idx: u32, lane_idx: usize, now: u64) {
        let ctx = &mut self.ios[idx as usize];
        let req = ctx.req.as_ref().expect("queued request");
        let path = self.lanes[lane_idx].path.clone();
        ctx.attempts += 1;
        ctx.last_path = Some(path.id());
        ctx.state = CtxState::Inflight { sent_ns: now };
        let bytes = ctx.bytes;
        let lane = &mut self.lanes[lane_idx];
        let accepted = match &mut lane.kind {
            LaneKind::Remote {
                nsid,
                conn: LaneConn::Live(c),
                ..
            } => {
                let cmd = build_cmd(req, *nsid, idx as u64);
                c.qp().submit(cmd, now).is_ok()
            }
            LaneKind::Local { chan: Some(ch) } => {
                let mut r = req.clone();
                r.tag = idx as u64;
                ch.submit(r).is_ok()
            }
            _ => false,
        };
        if accepted {
            lane.local_out += 1;
            path.on_submit(bytes);
        } else {
            let ctx = &mut self.ios[idx as usize];
            ctx.attempts -= 1;
            ctx.state = CtxState::Ready;
            self.ready.push_front(idx);
        }
    }

    /// Moves in-doubt writes whose fence passed back to dispatch.
    fn check_fences(&mut self, now: u64) -> bool {
        if self.in_doubt.is_empty() {
            return false;
        }
        let mut moved = false;
        let mut i = 0;
        while i < self.in_doubt.len() {
            let idx = self.in_doubt[i];
            let pass = match &self.ios[idx as usize].state {
                CtxState::InDoubt { assoc, path } => assoc.fence_passed(now) || self.gave_up(*path),
                _ => true,
            };
            if pass {
                self.in_doubt.swap_remove(i);
                if let CtxState::InDoubt { path, .. } = self.ios[idx as usize].state {
                    if let Some(p) = self.lanes.get(path.index()) {
                        p.path.in_doubt_sub();
                    }
                }
                self.retry(idx, now);
                moved = true;
            } else {
                i += 1;
            }
        }
        moved
    }

    /// A path whose controller was given up can no longer execute anything: its association
    /// is closed for good and, with keep-alive on, fenced; with keep-alive off this is the only
    /// end of the wait.
    fn gave_up(&self, path: PathId) -> bool {
        self.lanes.get(path.index()).is_some_and(|l| {
            l.path.ctrl().is_some_and(|c| {
                c.state() == CtrlState::Failed && c.options().keep_alive_timeout_ms == 0
            })
        })
    }

    /// Releases held requests when a path is usable; fails them when none can come back.
    fn check_held(&mut self, now: u64) -> bool {
        if self.held.is_empty() {
            return false;
        }
        let usable = self
            .lanes
            .iter()
            .any(|l| l.path.state().is_usable() && l.live());
        if usable {
            while let Some(idx) = self.held.pop_back() {
                self.ios[idx as usize].state = CtxState::Ready;
                self.ready.push_front(idx);
            }
            return true;
        }
        let may_return = self.lanes.iter().any(|l| l.path.may_return(now));
        if !may_return {
            while let Some(idx) = self.held.pop_front() {
                let e = self.ios[idx as usize].last_error.unwrap_or(IoError::NoPath);
                let e = if matches!(e, IoError::Device(_)) {
                    e
                } else {
                    IoError::NoPath
                };
                self.complete(idx, Err(e), now);
            }
            return true;
        }
        false
    }

    /// Polls: drives every path, moves failed I/O, dispatches, and hands completions (with
    /// their path and service time) to `done`. Returns the number delivered.
    pub fn poll_paths(&mut self, done: &mut dyn FnMut(PathCompletion)) -> usize {
        let now = crate::now_ns();
        self.sync_lanes(now);
        if !self.custom_selector {
            let pe = self.ns.policy_epoch.load(Ordering::Acquire);
            if pe != self.policy_epoch {
                self.policy_epoch = pe;
                self.selector = policy::build(self.ns.policy());
            }
        }
        let scan = now >= self.next_scan_ns;
        if scan {
            self.next_scan_ns = now + TIMEOUT_SCAN_NS;
        }
        for i in 0..self.lanes.len() {
            self.drive_lane(i, now, scan);
        }
        self.check_fences(now);
        self.check_held(now);
        self.dispatch(now);
        // Flush what dispatch queued right away (one write per lane per poll).
        for i in 0..self.lanes.len() {
            if let LaneKind::Remote {
                conn: LaneConn::Live(c),
                ctrl,
                ..
            } = &mut self.lanes[i].kind
            {
                if let Err(e) = c.qp().flush(now) {
                    let msg = format!("I/O queue {}: {e}", c.qid());
                    ctrl.request_reset(c.assoc().gen(), &msg);
                    self.close_lane(i, now);
                }
            }
        }
        if !self.stats.is_zero() {
            self.ns.stats.add(&self.stats);
            self.stats = IoStats::default();
        }
        let n = self.done.len();
        while let Some(c) = self.done.pop_front() {
            done(c);
        }
        n
    }
}

impl IoChannel for MultipathChannel {
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError> {
        self.submit_inner(req, None)
    }

    /// The per-VM scheduler's path choice: `route` is the [`PathId`] index (see
    /// [`submit_on`](MultipathChannel::submit_on)).
    fn submit_routed(&mut self, route: u16, req: IoRequest) -> Result<(), SubmitError> {
        self.submit_inner(req, Some(PathId(route)))
    }

    fn poll(&mut self, _now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        self.poll_paths(&mut |c| {
            done(IoCompletion {
                tag: c.tag,
                result: c.result,
            })
        })
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn capacity(&self) -> usize {
        CHANNEL_DEPTH
    }
}

impl Drop for MultipathChannel {
    fn drop(&mut self) {
        let now = crate::now_ns();
        for i in 0..self.lanes.len() {
            self.close_lane(i, now);
        }
        for idx in std::mem::take(&mut self.in_doubt) {
            if let CtxState::InDoubt { path, .. } = self.ios[idx as usize].state {
                if let Some(l) = self.lanes.get(path.index()) {
                    l.path.in_doubt_sub();
                }
            }
        }
    }
}

/// The NVMe command for a block request.
fn build_cmd(req: &IoRequest, nsid: u32, tag: u64) -> Cmd {
    let rw = |op: NvmOpcode| {
        let mut sqe = Sqe::new(op as u8, 0, nsid);
        ReadWrite {
            slba: req.offset_blocks,
            nlb: req.num_blocks,
            fua: false,
            limited_retry: false,
        }
        .apply(&mut sqe);
        sqe
    };
    match req.op {
        IoType::Read => Cmd {
            sqe: rw(NvmOpcode::Read),
            dir: Dir::C2H,
            data: DataBuf::Sg(req.iovs.clone()),
            tag,
        },
        IoType::Write => Cmd {
            sqe: rw(NvmOpcode::Write),
            dir: Dir::H2C,
            data: DataBuf::Sg(req.iovs.clone()),
            tag,
        },
        IoType::Flush => Cmd {
            sqe: Sqe::new(NvmOpcode::Flush as u8, 0, nsid),
            dir: Dir::None,
            data: DataBuf::None,
            tag,
        },
        IoType::WriteZeroes => {
            let mut sqe = Sqe::new(NvmOpcode::WriteZeroes as u8, 0, nsid);
            WriteZeroes {
                slba: req.offset_blocks,
                nlb: req.num_blocks,
                deallocate: false,
                fua: false,
            }
            .apply(&mut sqe);
            Cmd {
                sqe,
                dir: Dir::None,
                data: DataBuf::None,
                tag,
            }
        }
        IoType::Unmap => {
            let mut sqe = Sqe::new(NvmOpcode::DatasetManagement as u8, 0, nsid);
            DatasetManagement {
                nr: 1,
                idr: false,
                idw: false,
                deallocate: true,
            }
            .apply(&mut sqe);
            let mut r = DsmRange::zeroed();
            r.set_slba(req.offset_blocks);
            r.set_nlb(req.num_blocks);
            Cmd {
                sqe,
                dir: Dir::H2C,
                data: DataBuf::Owned(r.as_bytes().to_vec()),
                tag,
            }
        }
    }
}
