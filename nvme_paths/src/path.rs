//! Paths and their shared, lock-free state and load.
//!
//! A [`Path`] is one way to reach a multipath namespace: a remote controller (one NVMe/TCP
//! association, with one I/O queue pair per reactor — each reactor submits only on its own
//! queue pair of the path) or a local block device (one channel per reactor). Its state and
//! load are atomics, so any reactor (and the scheduler, and the management plane) reads them
//! with plain loads.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vmpath_bdev::BlockDevice;

use crate::ctrlr::Ctrl;

/// Index of a path within its namespace. Stable for the life of the path, never reused by the
/// namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PathId(pub u16);

impl PathId {
    /// The index as `usize`.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path{}", self.0)
    }
}

/// State of a path. The names match the scheduler's `PathState` one to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    /// Not (yet) connected: first connection, or reconnecting after a failover finished.
    Connecting,
    /// Live, ANA optimized.
    Optimized,
    /// Live, ANA non-optimized (used when no optimized path is usable).
    NonOptimized,
    /// Live, ANA inaccessible (or persistent loss / in transition): never used.
    Inaccessible,
    /// Given up (controller loss timeout, detached, or fatal error): never used.
    Failed,
    /// Lost; its outstanding I/O is being moved to other paths (in-doubt writes wait for
    /// their fence).
    FailingOver,
}

impl PathState {
    /// Optimized or non-optimized.
    #[inline]
    pub fn is_usable(self) -> bool {
        matches!(self, PathState::Optimized | PathState::NonOptimized)
    }

    /// The lowercase name used in RPC output.
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Connecting => "connecting",
            PathState::Optimized => "optimized",
            PathState::NonOptimized => "non_optimized",
            PathState::Inaccessible => "inaccessible",
            PathState::Failed => "failed",
            PathState::FailingOver => "failing_over",
        }
    }
}

/// Link state of a path (set by its controller thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Link {
    Connecting = 0,
    Live = 1,
    FailingOver = 2,
    Failed = 3,
}

impl Link {
    fn from_u8(v: u8) -> Link {
        match v {
            1 => Link::Live,
            2 => Link::FailingOver,
            3 => Link::Failed,
            _ => Link::Connecting,
        }
    }
}

/// ANA state of a path as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ana {
    /// Optimized.
    Optimized,
    /// Non-optimized.
    NonOptimized,
    /// Inaccessible, persistent loss or change: not usable.
    Inaccessible,
}

impl Ana {
    fn to_u8(self) -> u8 {
        match self {
            Ana::Optimized => 0,
            Ana::NonOptimized => 1,
            Ana::Inaccessible => 2,
        }
    }
    fn from_u8(v: u8) -> Ana {
        match v {
            0 => Ana::Optimized,
            1 => Ana::NonOptimized,
            _ => Ana::Inaccessible,
        }
    }
    /// From an ANA log state value (NVMe Base 2.0 figure 227).
    pub fn from_log(state: u8) -> Ana {
        match nvme_spec::AnaState::from_u8(state) {
            Some(nvme_spec::AnaState::Optimized) => Ana::Optimized,
            Some(nvme_spec::AnaState::NonOptimized) => Ana::NonOptimized,
            _ => Ana::Inaccessible,
        }
    }
}

/// What a path leads to.
#[derive(Debug)]
pub enum PathKind {
    /// A namespace of a remote controller.
    Remote {
        /// The controller.
        ctrl: Arc<Ctrl>,
        /// The namespace id on that controller.
        nsid: u32,
    },
    /// A local block device.
    Local {
        /// The device.
        dev: Arc<dyn BlockDevice>,
    },
}

/// Hot counters: touched on every submission and completion.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Hot {
    outstanding_ios: AtomicU32,
    outstanding_bytes: AtomicU64,
    ewma_service_ns: AtomicU64,
    completed_ios: AtomicU64,
    completed_bytes: AtomicU64,
}

/// EWMA weight of a new service-time sample: 1/8 (as the scheduler's `PathLoad`).
const EWMA_SHIFT: u32 = 3;

/// One path of a multipath namespace: identity, state and load.
#[derive(Debug)]
pub struct Path {
    id: PathId,
    name: String,
    kind: PathKind,
    link: AtomicU8,
    ana: AtomicU8,
    removed: AtomicBool,
    /// When the path went down (0 = up or never up), for `fast_io_fail_timeout`.
    down_since_ns: AtomicU64,
    /// In-doubt writes parked by reactors, waiting for the fence of a lost association.
    in_doubt: AtomicU32,
    errors: AtomicU64,
    retries_out: AtomicU64,
    hot: Hot,
}

impl Path {
    pub(crate) fn new(id: PathId, name: String, kind: PathKind) -> Path {
        let local = matches!(kind, PathKind::Local { .. });
        Path {
            id,
            name,
            kind,
            link: AtomicU8::new(if local { Link::Live } else { Link::Connecting } as u8),
            ana: AtomicU8::new(Ana::Optimized.to_u8()),
            removed: AtomicBool::new(false),
            down_since_ns: AtomicU64::new(0),
            in_doubt: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            retries_out: AtomicU64::new(0),
            hot: Hot::default(),
        }
    }

    /// The path's id in its namespace.
    #[inline]
    pub fn id(&self) -> PathId {
        self.id
    }

    /// Display name: `{controller name}:{traddr}:{trsvcid}` or the local bdev's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the path leads to.
    pub fn kind(&self) -> &PathKind {
        &self.kind
    }

    /// The controller of a remote path.
    pub fn ctrl(&self) -> Option<&Arc<Ctrl>> {
        match &self.kind {
            PathKind::Remote { ctrl, .. } => Some(ctrl),
            PathKind::Local { .. } => None,
        }
    }

    /// Current state (two relaxed loads).
    #[inline]
    pub fn state(&self) -> PathState {
        if self.removed.load(Relaxed) {
            return PathState::Failed;
        }
        match Link::from_u8(self.link.load(Relaxed)) {
            Link::Live => match Ana::from_u8(self.ana.load(Relaxed)) {
                Ana::Optimized => PathState::Optimized,
                Ana::NonOptimized => PathState::NonOptimized,
                Ana::Inaccessible => PathState::Inaccessible,
            },
            Link::Connecting => PathState::Connecting,
            Link::FailingOver => PathState::FailingOver,
            Link::Failed => PathState::Failed,
        }
    }

    /// The host's view of the path's ANA state.
    pub fn ana(&self) -> Ana {
        Ana::from_u8(self.ana.load(Relaxed))
    }

    pub(crate) fn link(&self) -> Link {
        Link::from_u8(self.link.load(Relaxed))
    }

    pub(crate) fn set_link(&self, l: Link, now: u64) {
        let old = Link::from_u8(self.link.swap(l as u8, Relaxed));
        match l {
            Link::Live => self.down_since_ns.store(0, Relaxed),
            _ if old == Link::Live || self.down_since_ns.load(Relaxed) == 0 => {
                self.down_since_ns.store(now.max(1), Relaxed)
            }
            _ => {}
        }
    }

    /// Sets the ANA state; returns the previous one.
    pub(crate) fn set_ana(&self, a: Ana) -> Ana {
        Ana::from_u8(self.ana.swap(a.to_u8(), Relaxed))
    }

    /// Sets the state of a local path (tests and management: a local device taken out of use).
    pub fn set_local_state(&self, usable: bool) {
        if matches!(self.kind, PathKind::Local { .. }) {
            self.set_link(
                if usable { Link::Live } else { Link::Failed },
                crate::now_ns(),
            );
        }
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Relaxed);
    }

    /// True once the path was removed from its namespace.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }

    /// When the path went down (monotonic ns, 0 = up).
    pub fn down_since_ns(&self) -> u64 {
        self.down_since_ns.load(Relaxed)
    }

    /// True while I/O waiting for this path should keep waiting: the path is not given up and
    /// its `fast_io_fail_timeout` has not run out.
    pub(crate) fn may_return(&self, now: u64) -> bool {
        match self.state() {
            PathState::Failed => false,
            s if s.is_usable() => true,
            _ => {
                let Some(ctrl) = self.ctrl() else {
                    return false;
                };
                let ffail = ctrl.options().fast_io_fail_timeout_ms;
                let down = self.down_since_ns();
                ffail < 0 || down == 0 || now < down + ffail as u64 * 1_000_000
            }
        }
    }

    /// I/Os submitted on the path and not completed.
    #[inline]
    pub fn outstanding_ios(&self) -> u32 {
        self.hot.outstanding_ios.load(Relaxed)
    }

    /// Bytes submitted on the path and not completed.
    #[inline]
    pub fn outstanding_bytes(&self) -> u64 {
        self.hot.outstanding_bytes.load(Relaxed)
    }

    /// Moving average of the service time (submission to completion), ns; 0 before any.
    #[inline]
    pub fn ewma_service_ns(&self) -> u64 {
        self.hot.ewma_service_ns.load(Relaxed)
    }

    /// Completed I/Os and bytes.
    pub fn completed(&self) -> (u64, u64) {
        (
            self.hot.completed_ios.load(Relaxed),
            self.hot.completed_bytes.load(Relaxed),
        )
    }

    /// In-doubt writes waiting for the fence of a lost association of this path.
    pub fn in_doubt(&self) -> u32 {
        self.in_doubt.load(Relaxed)
    }

    /// I/Os that failed on this path and were moved elsewhere.
    pub fn retries_out(&self) -> u64 {
        self.retries_out.load(Relaxed)
    }

    /// I/O errors seen on this path (transport and path errors).
    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    #[inline]
    pub(crate) fn on_submit(&self, bytes: u32) {
        self.hot.outstanding_ios.fetch_add(1, Relaxed);
        self.hot.outstanding_bytes.fetch_add(bytes as u64, Relaxed);
    }

    #[inline]
    pub(crate) fn on_complete(&self, bytes: u32, service_ns: Option<u64>) {
        let _ = self
            .hot
            .outstanding_ios
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
        let _ = self
            .hot
            .outstanding_bytes
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(bytes as u64)));
        if let Some(s) = service_ns {
            let old = self.hot.ewma_service_ns.load(Relaxed);
            let new = if old == 0 {
                s
            } else {
                old - (old >> EWMA_SHIFT) + (s >> EWMA_SHIFT)
            };
            self.hot.ewma_service_ns.store(new.max(1), Relaxed);
            self.hot.completed_ios.fetch_add(1, Relaxed);
            self.hot.completed_bytes.fetch_add(bytes as u64, Relaxed);
        }
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
        self.retries_out.fetch_add(1, Relaxed);
    }

    pub(crate) fn in_doubt_add(&self) {
        self.in_doubt.fetch_add(1, Relaxed);
    }

    pub(crate) fn in_doubt_sub(&self) {
        let _ = self
            .in_doubt
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// A snapshot for the management API.
    pub fn snapshot(&self) -> PathSnapshot {
        let (completed_ios, completed_bytes) = self.completed();
        let (ctrl, traddr, trsvcid, nsid, cntlid) = match &self.kind {
            PathKind::Remote { ctrl, nsid } => (
                Some(ctrl.name().to_string()),
                Some(ctrl.trid().traddr.clone()),
                Some(ctrl.trid().trsvcid.clone()),
                Some(*nsid),
                ctrl.cntlid(),
            ),
            PathKind::Local { .. } => (None, None, None, None, None),
        };
        PathSnapshot {
            id: self.id,
            name: self.name.clone(),
            kind: if ctrl.is_some() { "nvme_tcp" } else { "local" }.into(),
            state: self.state(),
            controller: ctrl,
            traddr,
            trsvcid,
            nsid,
            cntlid,
            outstanding_ios: self.outstanding_ios(),
            outstanding_bytes: self.outstanding_bytes(),
            ewma_service_ns: self.ewma_service_ns(),
            completed_ios,
            completed_bytes,
            errors: self.errors(),
            in_doubt_writes: self.in_doubt(),
        }
    }
}

/// A copy of a path's identity, state and load (management plane; `bdev_nvme_get_io_paths`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathSnapshot {
    /// Id within the namespace.
    pub id: PathId,
    /// Display name.
    pub name: String,
    /// `nvme_tcp` or `local`.
    pub kind: String,
    /// State.
    pub state: PathState,
    /// Controller name (remote paths).
    pub controller: Option<String>,
    /// Transport address (remote paths).
    pub traddr: Option<String>,
    /// Transport service id (remote paths).
    pub trsvcid: Option<String>,
    /// Namespace id on the controller (remote paths).
    pub nsid: Option<u32>,
    /// Controller id of the current association (remote paths, when connected).
    pub cntlid: Option<u16>,
    /// Outstanding I/Os.
    pub outstanding_ios: u32,
    /// Outstanding bytes.
    pub outstanding_bytes: u64,
    /// Moving average of the service time, ns.
    pub ewma_service_ns: u64,
    /// Completed I/Os.
    pub completed_ios: u64,
    /// Completed bytes.
    pub completed_bytes: u64,
    /// Errors seen on the path.
    pub errors: u64,
    /// In-doubt writes waiting for their fence.
    pub in_doubt_writes: u32,
}
