//! A vhost-user-blk controller: one VM disk, one Unix socket, one management thread.
//!
//! The management thread listens on the socket (created with mode 0600: bound under a
//! temporary name, restricted, then renamed into place, so it is never reachable with wider
//! permissions), serves one frontend connection at a time with rust-vmm's
//! `BackendReqHandler`, and after a disconnect waits for the next one (QEMU
//! `reconnect=1`). The data path runs on the reactors (module `queue`).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rust_vhost::vhost_user::{BackendReqHandler, Error as VuError};
use vmpath_bdev::{BlockDevice, IoType};
use vmpath_runtime::ReactorHandle;

use crate::backend::{build_config, BlkBackend, Ctx, QueueState, SharedBackend};
use crate::blk::{self, ID_BYTES};
use crate::gate::{IoGate, PassThrough};
use crate::queue::{DevParams, QueueCounters, QueueStats};
use crate::request::Geometry;

/// Largest queue size accepted by default (QEMU's maximum for vhost-user-blk).
pub const DEFAULT_MAX_QUEUE_SIZE: u16 = 1024;
/// Default `seg_max` (SPDK's value: 128 iovecs minus header and status).
pub const DEFAULT_SEG_MAX: u32 = 126;
/// Default `size_max` (largest segment).
pub const DEFAULT_SIZE_MAX: u32 = 1 << 20;
/// Default idle time before guest kicks are re-enabled.
pub const DEFAULT_NOTIFY_IDLE_NS: u64 = 100_000;
/// Largest discard / write-zeroes per request, in 512-byte sectors (4 GiB).
pub const MAX_DWZ_SECTORS: u32 = 1 << 23;

/// Errors of the controller API.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// A configuration value is invalid.
    #[error("invalid vhost-blk controller config: {field}: {msg}")]
    Config {
        /// Field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The socket path exists and something is listening on it, or it is not a socket.
    #[error("socket path {path} is in use: {msg}")]
    SocketInUse {
        /// Path.
        path: PathBuf,
        /// Detail.
        msg: String,
    },
    /// Creating the socket failed.
    #[error("cannot create socket {path}: {source}")]
    Socket {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The controller was already started.
    #[error("controller {0} is already started")]
    AlreadyStarted(String),
    /// The controller is not running.
    #[error("controller {0} is not started")]
    NotStarted(String),
    /// In-flight requests did not finish in time (suspend).
    #[error(
        "controller {name}: {queues} queue(s) still have requests in flight after {timeout:?}"
    )]
    DrainTimeout {
        /// Controller.
        name: String,
        /// Queues not drained.
        queues: usize,
        /// Time waited.
        timeout: Duration,
    },
    /// An OS resource could not be created (thread, eventfd).
    #[error("controller {name}: {what}: {source}")]
    Os {
        /// Controller.
        name: String,
        /// What failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Parameters of a controller.
#[derive(Debug, Clone)]
pub struct VhostBlkConfig {
    /// Controller name (unique in the daemon; used in logs and stats).
    pub name: String,
    /// Unix socket the frontend connects to.
    pub socket_path: PathBuf,
    /// The backing block device.
    pub bdev: Arc<dyn BlockDevice>,
    /// The VM this disk belongs to (passed to the gate with every request).
    pub vm: String,
    /// Number of request queues offered (`num_queues`, 1..=64).
    pub num_queues: u16,
    /// Present the disk read-only (`VIRTIO_BLK_F_RO`).
    pub readonly: bool,
    /// Reactors serving the queues: queue `i` runs on `reactors[i % len]`.
    pub reactors: Vec<ReactorHandle>,
    /// Admission hook (default: [`PassThrough`]).
    pub gate: Arc<dyn IoGate>,
    /// Largest virtqueue size accepted.
    pub max_queue_size: u16,
    /// `seg_max` reported to the guest.
    pub seg_max: u32,
    /// `size_max` reported to the guest.
    pub size_max: u32,
    /// Serial returned by GET_ID (default: the controller name), at most 20 bytes used.
    pub serial: Option<String>,
    /// Idle time after which guest kicks are re-enabled, in nanoseconds.
    pub notify_idle_ns: u64,
    /// How long stop / suspend wait for in-flight requests.
    pub drain_timeout: Duration,
}

impl VhostBlkConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        name: impl Into<String>,
        socket_path: impl Into<PathBuf>,
        bdev: Arc<dyn BlockDevice>,
        vm: impl Into<String>,
        reactors: Vec<ReactorHandle>,
    ) -> VhostBlkConfig {
        VhostBlkConfig {
            name: name.into(),
            socket_path: socket_path.into(),
            bdev,
            vm: vm.into(),
            num_queues: 1,
            readonly: false,
            reactors,
            gate: Arc::new(PassThrough),
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            seg_max: DEFAULT_SEG_MAX,
            size_max: DEFAULT_SIZE_MAX,
            serial: None,
            notify_idle_ns: DEFAULT_NOTIFY_IDLE_NS,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// State and counters of one virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue index.
    pub index: u16,
    /// Reactor id running the queue, if it runs.
    pub reactor: Option<u32>,
    /// Enabled by the frontend.
    pub enabled: bool,
    /// Size set by the frontend (0 if not set).
    pub size: u16,
    /// Counters since the controller was created.
    pub stats: QueueStats,
}

/// A controller's state, for management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Controller name.
    pub name: String,
    /// Socket path.
    pub socket_path: PathBuf,
    /// VM.
    pub vm: String,
    /// Backing block device name.
    pub bdev: String,
    /// Queues offered.
    pub num_queues: u16,
    /// Read-only.
    pub readonly: bool,
    /// Management thread running.
    pub started: bool,
    /// A frontend is connected.
    pub connected: bool,
    /// Suspended (rings not pulled).
    pub suspended: bool,
    /// Per-queue state.
    pub queues: Vec<QueueInfo>,
    /// Sum over the queues.
    pub total: QueueStats,
}

/// One vhost-user-blk virtual disk.
#[derive(Debug)]
pub struct VhostBlkController {
    ctx: Arc<Ctx>,
    socket_path: PathBuf,
    backend: SharedBackend,
    thread: Option<JoinHandle<()>>,
    stop_fd: Option<Arc<fs::File>>,
}

fn cfg_err(field: &'static str, msg: impl Into<String>) -> VhostError {
    VhostError::Config {
        field,
        msg: msg.into(),
    }
}

impl VhostBlkController {
    /// Validates the configuration and prepares the controller (no socket yet).
    pub fn new(cfg: VhostBlkConfig) -> Result<VhostBlkController, VhostError> {
        if cfg.name.is_empty() {
            return Err(cfg_err("name", "must not be empty"));
        }
        if cfg.num_queues == 0 || cfg.num_queues > 64 {
            return Err(cfg_err(
                "num_queues",
                format!("must be 1..=64, got {}", cfg.num_queues),
            ));
        }
        if cfg.reactors.is_empty() {
            return Err(cfg_err("reactors", "at least one reactor is needed"));
        }
        if cfg.max_queue_size == 0
            || !cfg.max_queue_size.is_power_of_two()
            || cfg.max_queue_size > 32768
        {
            return Err(cfg_err(
                "max_queue_size",
                format!(
                    "must be a power of two up to 32768, got {}",
                    cfg.max_queue_size
                ),
            ));
        }
        if cfg.seg_max == 0 || cfg.size_max < 4096 {
            return Err(cfg_err(
                "seg_max/size_max",
                "seg_max must be >= 1 and size_max >= 4096",
            ));
        }
        if cfg.socket_path.as_os_str().is_empty() {
            return Err(cfg_err("socket_path", "must not be empty"));
        }
        let info = cfg.bdev.info().clone();
        if !(info.block_size as u64).is_multiple_of(blk::SECTOR_SIZE) {
            return Err(cfg_err(
                "bdev",
                format!("block size {} is not a multiple of 512", info.block_size),
            ));
        }
        let readonly = cfg.readonly || info.read_only;
        let max_io_bytes = (cfg.seg_max as u64 * cfg.size_max as u64)
            .min(info.max_io_blocks as u64 * info.block_size as u64);
        let geometry = Geometry {
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            readonly,
            max_io_bytes,
            max_dwz_sectors: MAX_DWZ_SECTORS,
            discard: cfg.bdev.supports(IoType::Unmap),
            write_zeroes: cfg.bdev.supports(IoType::WriteZeroes),
        };
        let serial = blk::id_bytes(cfg.serial.as_deref().unwrap_or(&cfg.name));
        let _: [u8; ID_BYTES] = serial;
        let dev = DevParams {
            geometry,
            writeback: true,
            serial,
            seg_max: cfg.seg_max,
            notify_idle_ns: cfg.notify_idle_ns,
        };
        let config = build_config(
            &*cfg.bdev,
            cfg.num_queues,
            cfg.seg_max,
            cfg.size_max,
            MAX_DWZ_SECTORS,
        );
        let n = cfg.num_queues as usize;
        let ctx = Arc::new(Ctx {
            name: cfg.name.clone(),
            vm: Arc::from(cfg.vm.as_str()),
            features: Ctx::offered_features(&*cfg.bdev, readonly),
            bdev: cfg.bdev,
            gate: cfg.gate,
            reactors: cfg.reactors,
            num_queues: cfg.num_queues,
            max_queue_size: cfg.max_queue_size,
            readonly,
            dev,
            config,
            drain_timeout: cfg.drain_timeout,
            counters: (0..n).map(|_| Arc::new(QueueCounters::default())).collect(),
            queue_state: (0..n).map(|_| QueueState::default()).collect(),
            suspended: AtomicBool::new(false),
            connected: AtomicBool::new(false),
        });
        let backend = Arc::new(Mutex::new(BlkBackend::new(ctx.clone())));
        Ok(VhostBlkController {
            ctx,
            socket_path: cfg.socket_path,
            backend,
            thread: None,
            stop_fd: None,
        })
    }

    /// The controller name.
    pub fn name(&self) -> &str {
        &self.ctx.name
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The virtio feature bits offered to the frontend.
    pub fn offered_features(&self) -> u64 {
        self.ctx.features
    }

    /// Creates the socket (mode 0600) and starts the management thread.
    pub fn start(&mut self) -> Result<(), VhostError> {
        if self.thread.is_some() {
            return Err(VhostError::AlreadyStarted(self.ctx.name.clone()));
        }
        let listener = bind_private(&self.socket_path)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VhostError::Socket {
                path: self.socket_path.clone(),
                source,
            })?;
        let stop = Arc::new(crate::sys::eventfd().map_err(|source| VhostError::Os {
            name: self.ctx.name.clone(),
            what: "eventfd",
            source,
        })?);
        let ctx = self.ctx.clone();
        let backend = self.backend.clone();
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{}", self.ctx.name))
            .spawn(move || control_thread(ctx, backend, listener, stop2))
            .map_err(|source| VhostError::Os {
                name: self.ctx.name.clone(),
                what: "spawn management thread",
                source,
            })?;
        tracing::info!(ctrl = %self.ctx.name, vm = %self.ctx.vm, socket = %self.socket_path.display(),
            queues = self.ctx.num_queues, readonly = self.ctx.readonly, "vhost-user-blk controller listening");
        self.thread = Some(thread);
        self.stop_fd = Some(stop);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BlkBackend> {
        // A panic on the management thread must not make the controller unmanageable.
        self.backend.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops pulling the VM's rings and waits (up to the drain timeout) until every
    /// in-flight request has completed. The guest sees no error; requests wait in its rings.
    pub fn suspend(&self) -> Result<(), VhostError> {
        let timeout = self.ctx.drain_timeout;
        let r = self.lock().suspend(timeout);
        tracing::info!(ctrl = %self.ctx.name, vm = %self.ctx.vm, drained = r.is_ok(), "suspended");
        r.map_err(|queues| VhostError::DrainTimeout {
            name: self.ctx.name.clone(),
            queues,
            timeout,
        })
    }

    /// Pulls the rings again after [`suspend`](Self::suspend).
    pub fn resume(&self) {
        self.lock().resume();
        tracing::info!(ctrl = %self.ctx.name, vm = %self.ctx.vm, "resumed");
    }

    /// True while suspended.
    pub fn is_suspended(&self) -> bool {
        self.ctx.suspended.load(Ordering::SeqCst)
    }

    /// True while a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.ctx.connected.load(Ordering::SeqCst)
    }

    /// Disconnects the frontend (its in-flight requests finish at the device but are not
    /// reported to the guest; a reconnecting frontend with an inflight region re-runs them),
    /// stops the management thread and removes the socket.
    pub fn stop(&mut self) -> Result<(), VhostError> {
        let Some(thread) = self.thread.take() else {
            return Err(VhostError::NotStarted(self.ctx.name.clone()));
        };
        if let Some(stop) = self.stop_fd.take() {
            let _ = crate::sys::signal(&stop);
        }
        let _ = thread.join();
        self.lock().disconnect();
        let _ = fs::remove_file(&self.socket_path);
        tracing::info!(ctrl = %self.ctx.name, "vhost-user-blk controller stopped");
        Ok(())
    }

    /// Counters of every queue, summed.
    pub fn stats(&self) -> QueueStats {
        let mut t = QueueStats::default();
        for c in &self.ctx.counters {
            t.merge(&c.snapshot());
        }
        t
    }

    /// Full state for management.
    pub fn info(&self) -> ControllerInfo {
        let mut total = QueueStats::default();
        let queues = (0..self.ctx.num_queues as usize)
            .map(|i| {
                let st = &self.ctx.queue_state[i];
                let stats = self.ctx.counters[i].snapshot();
                total.merge(&stats);
                let on = st.running_on.load(Ordering::Relaxed);
                QueueInfo {
                    index: i as u16,
                    reactor: (on > 0).then(|| (on - 1) as u32),
                    enabled: st.enabled.load(Ordering::Relaxed),
                    size: st.size.load(Ordering::Relaxed) as u16,
                    stats,
                }
            })
            .collect();
        ControllerInfo {
            name: self.ctx.name.clone(),
            socket_path: self.socket_path.clone(),
            vm: self.ctx.vm.to_string(),
            bdev: self.ctx.bdev.info().name.clone(),
            num_queues: self.ctx.num_queues,
            readonly: self.ctx.readonly,
            started: self.thread.is_some(),
            connected: self.is_connected(),
            suspended: self.is_suspended(),
            queues,
            total,
        }
    }
}

impl Drop for VhostBlkController {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// Binds a listening socket at `path` that is never reachable with permissions wider than
/// 0600: bound under a temporary name in the same directory, restricted, then renamed.
fn bind_private(path: &Path) -> Result<UnixListener, VhostError> {
    let sock_err = |source| VhostError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(VhostError::SocketInUse {
                    path: path.to_path_buf(),
                    msg: "another process is listening".into(),
                });
            }
            fs::remove_file(path).map_err(sock_err)?;
        }
        Ok(_) => {
            return Err(VhostError::SocketInUse {
                path: path.to_path_buf(),
                msg: "exists and is not a socket".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = path.file_name().ok_or_else(|| {
        sock_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path has no file name",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(sock_err)?;
    let finish = || -> io::Result<()> {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = finish() {
        let _ = fs::remove_file(&tmp);
        return Err(sock_err(e));
    }
    Ok(listener)
}

fn is_disconnect(e: &VuError) -> bool {
    matches!(
        e,
        VuError::Disconnected
            | VuError::PartialMessage
            | VuError::SocketBroken(_)
            | VuError::SocketError(_)
    )
}

fn control_thread(
    ctx: Arc<Ctx>,
    backend: SharedBackend,
    listener: UnixListener,
    stop: Arc<fs::File>,
) {
    let stop_fd = stop.as_raw_fd();
    loop {
        match crate::sys::poll2(listener.as_raw_fd(), stop_fd, -1) {
            Ok((_, true)) => break,
            Ok((false, false)) => continue,
            Ok((true, false)) => {}
            Err(e) => {
                tracing::error!(ctrl = %ctx.name, error = %e, "poll on the listening socket failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(ctrl = %ctx.name, error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(ctrl = %ctx.name, error = %e, "cannot make the connection blocking");
            continue;
        }
        tracing::info!(ctrl = %ctx.name, vm = %ctx.vm, "frontend connected");
        ctx.connected.store(true, Ordering::SeqCst);
        let stopped = serve(&ctx, &backend, stream, stop_fd);
        backend
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .disconnect();
        ctx.connected.store(false, Ordering::SeqCst);
        tracing::info!(ctrl = %ctx.name, vm = %ctx.vm, "frontend disconnected");
        if stopped {
            break;
        }
    }
}

/// Serves one connection; returns true if the controller is stopping.
fn serve(ctx: &Ctx, backend: &SharedBackend, stream: UnixStream, stop_fd: i32) -> bool {
    let conn_fd = stream.as_raw_fd();
    let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
    loop {
        match crate::sys::poll2(conn_fd, stop_fd, -1) {
            Ok((_, true)) => return true,
            Ok((false, false)) => continue,
            Ok((true, false)) => {}
            Err(e) => {
                tracing::error!(ctrl = %ctx.name, error = %e, "poll on the connection failed");
                return false;
            }
        }
        if let Err(e) = handler.handle_request() {
            if is_disconnect(&e) {
                tracing::debug!(ctrl = %ctx.name, error = %e, "connection closed");
            } else {
                tracing::warn!(ctrl = %ctx.name, error = %e, "bad vhost-user message; closing the connection");
            }
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_can_be_shared_with_management_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<VhostBlkController>();
        send_sync::<ControllerInfo>();
        send_sync::<VhostError>();
    }

    #[test]
    fn stale_socket_is_replaced_and_other_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("vmpath-vhost-bind-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.sock");
        let l = bind_private(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            bind_private(&p),
            Err(VhostError::SocketInUse { .. })
        ));
        drop(l);
        // Nobody listens any more: the stale socket is replaced.
        let _l2 = bind_private(&p).unwrap();
        let f = dir.join("plain");
        fs::write(&f, b"x").unwrap();
        assert!(matches!(
            bind_private(&f),
            Err(VhostError::SocketInUse { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
