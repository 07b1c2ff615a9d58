//! The vhost-user control plane of one virtio-blk controller (vhost-user specification,
//! "Front-end message types"): feature negotiation, memory table, ring setup, config space,
//! inflight region. It runs on the controller's management thread, behind rust-vmm's
//! `BackendReqHandler` (which decodes the socket messages and calls this handler).
//!
//! A ring starts when it is fully described — memory table, size, addresses, kick fd and
//! enabled (`SET_VRING_ENABLE`, or at once if protocol features were not negotiated) — and is
//! then handed to its reactor (module `queue`). `GET_VRING_BASE`, disabling and reset stop it
//! after its in-flight requests completed; a disconnect freezes it (requests finish at the
//! device but the guest's rings are left alone, so the inflight region re-runs them).
//!
//! Queue `i` of a disk runs on reactor `i % reactors.len()`: one disk is served by several
//! cores.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use rust_vhost::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use rust_vhost::VhostUserMemoryRegionBase;
use vm_memory::GuestMemoryMmap;
use vmpath_bdev::{BlockDevice, IoType};
use vmpath_runtime::ReactorHandle;

use crate::blk::{self, bit, BlkConfigSpace};
use crate::gate::IoGate;
use crate::inflight::InflightRegion;
use crate::memory::{MemTable, RegionDesc, MAX_MEM_SLOTS};
use crate::queue::{DevParams, QueueCounters, QueueSetup, StopMode, StopReply, Worker};

/// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS` (bit 15).
const PROTOCOL_F_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Immutable facts about a controller plus the state other threads read.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub name: String,
    pub vm: Arc<str>,
    pub bdev: Arc<dyn BlockDevice>,
    pub gate: Arc<dyn IoGate>,
    pub reactors: Vec<ReactorHandle>,
    pub num_queues: u16,
    pub max_queue_size: u16,
    pub readonly: bool,
    pub dev: DevParams,
    pub config: BlkConfigSpace,
    pub features: u64,
    pub drain_timeout: Duration,
    pub counters: Vec<Arc<QueueCounters>>,
    pub queue_state: Vec<QueueState>,
    pub suspended: AtomicBool,
    pub connected: AtomicBool,
}

/// Where a queue runs, readable without the control-plane lock.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    /// Reactor id + 1, or 0 when not running.
    pub running_on: AtomicU64,
    pub enabled: AtomicBool,
    pub size: AtomicU64,
}

impl Ctx {
    /// The virtio feature bits offered.
    pub fn offered_features(bdev: &dyn BlockDevice, readonly: bool) -> u64 {
        let mut f = bit(blk::VIRTIO_F_VERSION_1)
            | bit(blk::VIRTIO_RING_F_INDIRECT_DESC)
            | bit(blk::VIRTIO_RING_F_EVENT_IDX)
            | bit(blk::VHOST_USER_F_PROTOCOL_FEATURES)
            | bit(blk::VIRTIO_BLK_F_SIZE_MAX)
            | bit(blk::VIRTIO_BLK_F_SEG_MAX)
            | bit(blk::VIRTIO_BLK_F_BLK_SIZE)
            | bit(blk::VIRTIO_BLK_F_FLUSH)
            | bit(blk::VIRTIO_BLK_F_TOPOLOGY)
            | bit(blk::VIRTIO_BLK_F_CONFIG_WCE)
            | bit(blk::VIRTIO_BLK_F_MQ);
        if readonly {
            f |= bit(blk::VIRTIO_BLK_F_RO);
        } else {
            if bdev.supports(IoType::Unmap) {
                f |= bit(blk::VIRTIO_BLK_F_DISCARD);
            }
            if bdev.supports(IoType::WriteZeroes) {
                f |= bit(blk::VIRTIO_BLK_F_WRITE_ZEROES);
            }
        }
        f
    }

    /// The protocol feature bits offered (REPLY_ACK is added by the library).
    pub fn offered_protocol() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::from_bits_retain(PROTOCOL_F_CONFIGURE_MEM_SLOTS)
    }
}

#[derive(Debug, Default)]
struct Vring {
    num: u16,
    desc_va: u64,
    avail_va: u64,
    used_va: u64,
    addr_set: bool,
    base: u16,
    kick: Option<File>,
    kick_set: bool,
    call: Option<File>,
    err: Option<File>,
    enabled: bool,
    running: Option<Running>,
}

#[derive(Debug, Clone, Copy)]
struct Running {
    reactor: usize,
    key: u64,
}

/// The per-connection protocol state of one controller.
#[derive(Debug)]
pub(crate) struct BlkBackend {
    ctx: Arc<Ctx>,
    acked_features: u64,
    acked_protocol: u64,
    mem: MemTable,
    snapshot: Option<Arc<GuestMemoryMmap>>,
    vrings: Vec<Vring>,
    inflight: Option<Arc<InflightRegion>>,
    writeback: bool,
}

fn invalid(msg: &'static str) -> VuError {
    VuError::InvalidOperation(msg)
}

/// A copy of a vring fd for the reactor that runs the queue.
fn dup_fd(f: &Option<File>) -> VuResult<Option<File>> {
    f.as_ref()
        .map(|f| f.try_clone())
        .transpose()
        .map_err(VuError::ReqHandlerError)
}

fn io_err(e: impl std::fmt::Display) -> VuError {
    VuError::ReqHandlerError(std::io::Error::other(e.to_string()))
}

impl BlkBackend {
    pub(crate) fn new(ctx: Arc<Ctx>) -> BlkBackend {
        let n = ctx.num_queues as usize;
        let writeback = ctx.dev.writeback;
        BlkBackend {
            ctx,
            acked_features: 0,
            acked_protocol: 0,
            mem: MemTable::new(),
            snapshot: None,
            vrings: (0..n).map(|_| Vring::default()).collect(),
            inflight: None,
            writeback,
        }
    }

    fn vring(&mut self, index: u32) -> VuResult<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    /// Hands a copy of a vring's call or err fd to the reactor running the queue, if it
    /// runs (a stopped queue picks the fd up when it starts).
    fn forward_fd(
        &mut self,
        index: u8,
        which: fn(&Vring) -> &Option<File>,
        apply: fn(&mut Worker, Option<File>),
    ) -> VuResult<()> {
        let v = self.vring(index as u32)?;
        if let Some(run) = v.running {
            let dup = dup_fd(which(v))?;
            let _ = self.ctx.reactors[run.reactor].send(move |r| {
                Worker::with(r, run.key, |w, _| apply(w, dup));
            });
        }
        Ok(())
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & bit(blk::VHOST_USER_F_PROTOCOL_FEATURES) != 0
    }

    fn publish_state(&self, i: usize) {
        let v = &self.vrings[i];
        let s = &self.ctx.queue_state[i];
        s.running_on.store(
            v.running
                .map(|r| self.ctx.reactors[r.reactor].id() as u64 + 1)
                .unwrap_or(0),
            Ordering::Relaxed,
        );
        s.enabled.store(v.enabled, Ordering::Relaxed);
        s.size.store(v.num as u64, Ordering::Relaxed);
    }

    /// Starts ring `i` on its reactor if it is fully described and enabled.
    fn try_start(&mut self, i: usize) -> VuResult<()> {
        let enabled_ok = self.vrings[i].enabled || !self.protocol_features_acked();
        let v = &self.vrings[i];
        if v.running.is_some() || !v.kick_set || !enabled_ok || !v.addr_set || v.num == 0 {
            return Ok(());
        }
        let Some(mem) = self.snapshot.clone() else {
            return Ok(());
        };
        let n = v.num as u64;
        let tr = |va: u64, len: u64, what: &'static str| {
            self.mem.va_to_gpa(va, len).ok_or_else(|| {
                tracing::error!(ctrl = %self.ctx.name, queue = i, va = format_args!("{va:#x}"), "{what} is not inside guest memory");
                invalid("ring address is not inside guest memory")
            })
        };
        let desc_gpa = tr(v.desc_va, 16 * n, "descriptor table")?;
        let avail_gpa = tr(v.avail_va, 6 + 2 * n, "available ring")?;
        let used_gpa = tr(v.used_va, 6 + 8 * n, "used ring")?;
        let kick = dup_fd(&v.kick)?;
        let call = dup_fd(&v.call)?;
        let err = dup_fd(&v.err)?;
        let inflight = match &self.inflight {
            Some(r) => match r.queue(i as u16, v.num) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(ctrl = %self.ctx.name, queue = i, error = %e, "inflight tracking disabled for this queue");
                    None
                }
            },
            None => None,
        };
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        let reactor = i % self.ctx.reactors.len();
        let mut dev = self.ctx.dev;
        dev.writeback = self.writeback;
        let setup = QueueSetup {
            key,
            index: i as u16,
            vm: self.ctx.vm.clone(),
            size: v.num,
            desc_gpa,
            avail_gpa,
            used_gpa,
            event_idx: self.acked_features & bit(blk::VIRTIO_RING_F_EVENT_IDX) != 0,
            indirect: self.acked_features & bit(blk::VIRTIO_RING_F_INDIRECT_DESC) != 0,
            base: v.base,
            mem,
            kick,
            call,
            err,
            inflight,
            bdev: self.ctx.bdev.clone(),
            gate: self.ctx.gate.clone(),
            dev,
            counters: self.ctx.counters[i].clone(),
            suspended: self.ctx.suspended.load(Ordering::SeqCst),
        };
        let res = self.ctx.reactors[reactor]
            .call(move |r| Worker::start(r, setup))
            .map_err(|e| io_err(format!("reactor: {e}")))?;
        res.map_err(|e| {
            tracing::error!(ctrl = %self.ctx.name, queue = i, error = %e, "cannot start virtqueue");
            io_err(e)
        })?;
        tracing::info!(ctrl = %self.ctx.name, queue = i, reactor = self.ctx.reactors[reactor].id(), size = n, "virtqueue started");
        self.vrings[i].running = Some(Running { reactor, key });
        self.publish_state(i);
        Ok(())
    }

    /// Stops ring `i` (if running) and returns its final state.
    fn stop(&mut self, i: usize, mode: StopMode) -> Option<StopReply> {
        let run = self.vrings[i].running.take()?;
        self.publish_state(i);
        let (tx, rx) = mpsc::channel();
        let sent = self.ctx.reactors[run.reactor].send(move |r| {
            Worker::with(r, run.key, |w, r| w.begin_stop(r, mode, tx));
        });
        if sent.is_err() {
            tracing::error!(ctrl = %self.ctx.name, queue = i, "reactor unreachable while stopping virtqueue");
            return None;
        }
        match rx.recv_timeout(self.ctx.drain_timeout) {
            Ok(reply) => {
                tracing::info!(ctrl = %self.ctx.name, queue = i, ?mode, next_avail = reply.next_avail, "virtqueue stopped");
                if mode == StopMode::Complete {
                    self.vrings[i].base = reply.next_avail;
                }
                Some(reply)
            }
            Err(_) => {
                tracing::error!(ctrl = %self.ctx.name, queue = i, timeout = ?self.ctx.drain_timeout,
                    "in-flight requests did not finish; the virtqueue stops when they do");
                None
            }
        }
    }

    fn send_all(&self, f: impl Fn(&mut Worker) + Clone + Send + 'static) {
        for v in &self.vrings {
            if let Some(run) = v.running {
                let f = f.clone();
                let _ = self.ctx.reactors[run.reactor].send(move |r| {
                    Worker::with(r, run.key, |w, _| f(w));
                });
            }
        }
    }

    fn push_memory(&mut self) {
        self.snapshot = self.mem.snapshot();
        if let Some(m) = self.snapshot.clone() {
            self.send_all(move |w| w.set_mem(m.clone()));
        }
    }

    /// Stops every ring (after a disconnect: `Freeze`) and forgets the connection's state.
    pub(crate) fn disconnect(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i, StopMode::Freeze);
        }
        self.reset_connection_state();
        self.mem.clear();
        self.snapshot = None;
        self.inflight = None;
    }

    fn reset_connection_state(&mut self) {
        self.acked_features = 0;
        self.acked_protocol = 0;
        for (i, v) in self.vrings.iter_mut().enumerate() {
            *v = Vring::default();
            let _ = i;
        }
        for i in 0..self.vrings.len() {
            self.publish_state(i);
        }
    }

    /// Stops pulling every running ring and waits until nothing is in flight.
    pub(crate) fn suspend(&mut self, timeout: Duration) -> Result<(), usize> {
        self.ctx.suspended.store(true, Ordering::SeqCst);
        let mut waits = Vec::new();
        for v in &self.vrings {
            if let Some(run) = v.running {
                let (tx, rx) = mpsc::channel();
                let sent = self.ctx.reactors[run.reactor].send(move |r| {
                    Worker::with(r, run.key, |w, r| w.suspend(r, tx));
                });
                if sent.is_ok() {
                    waits.push(rx);
                }
            }
        }
        let deadline = Instant::now() + timeout;
        let mut pending = 0;
        for rx in waits {
            let left = deadline.saturating_duration_since(Instant::now());
            // A worker that stopped meanwhile drops its sender: nothing left in flight there.
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(left) {
                pending += 1;
            }
        }
        if pending == 0 {
            Ok(())
        } else {
            Err(pending)
        }
    }

    /// Pulls every ring again.
    pub(crate) fn resume(&mut self) {
        self.ctx.suspended.store(false, Ordering::SeqCst);
        for v in &self.vrings {
            if let Some(run) = v.running {
                let _ = self.ctx.reactors[run.reactor].send(move |r| {
                    Worker::with(r, run.key, |w, r| w.resume(r));
                });
            }
        }
    }

    fn config_space(&self) -> BlkConfigSpace {
        let mut c = self.ctx.config;
        c.writeback = self.writeback as u8;
        c
    }
}

impl VhostUserBackendReqHandlerMut for BlkBackend {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.reset_device()
    }

    fn reset_device(&mut self) -> VuResult<()> {
        for i in 0..self.vrings.len() {
            self.stop(i, StopMode::Complete);
        }
        self.reset_connection_state();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.ctx.features)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.ctx.features != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let descs: Vec<RegionDesc> = ctx
            .iter()
            .map(|r| RegionDesc {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        self.mem.set(&descs, files).map_err(|e| {
            tracing::error!(ctrl = %self.ctx.name, error = %e, "SET_MEM_TABLE rejected");
            io_err(e)
        })?;
        self.push_memory();
        for i in 0..self.vrings.len() {
            self.try_start(i)?;
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let max = self.ctx.max_queue_size as u32;
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("SET_VRING_NUM on a running ring"));
        }
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        v.num = num as u16;
        self.publish_state(index as usize);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("SET_VRING_ADDR on a running ring"));
        }
        v.desc_va = descriptor;
        v.used_va = used;
        v.avail_va = available;
        v.addr_set = true;
        self.try_start(index as usize)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let v = self.vring(index)?;
        if v.running.is_some() {
            return Err(invalid("SET_VRING_BASE on a running ring"));
        }
        v.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let i = index as usize;
        self.vring(index)?;
        self.stop(i, StopMode::Complete);
        let v = &mut self.vrings[i];
        // The ring is stopped; it restarts with the next SET_VRING_KICK.
        v.kick = None;
        v.kick_set = false;
        Ok(VhostUserVringState::new(index, v.base as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let i = index as usize;
        self.vring(index as u32)?;
        if self.vrings[i].running.is_some() {
            self.stop(i, StopMode::Complete);
        }
        let v = &mut self.vrings[i];
        v.kick = fd;
        v.kick_set = true;
        self.try_start(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?.call = fd;
        self.forward_fd(index, |v| &v.call, Worker::set_call)
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(index as u32)?.err = fd;
        self.forward_fd(index, |v| &v.err, Worker::set_err)
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(Ctx::offered_protocol())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        if features & !Ctx::offered_protocol().bits() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.ctx.num_queues as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let i = index as usize;
        self.vring(index)?.enabled = enable;
        if enable {
            self.try_start(i)?;
        } else {
            self.stop(i, StopMode::Complete);
        }
        self.publish_state(i);
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        self.config_space().read(offset, size).map_err(io_err)
    }

    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        let wb = blk::parse_config_write(offset, buf).map_err(io_err)?;
        if wb != self.writeback {
            tracing::info!(ctrl = %self.ctx.name, writeback = wb, "guest changed the cache mode");
        }
        self.writeback = wb;
        self.send_all(move |w| w.set_writeback(wb));
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(invalid("GPU_SET_SOCKET is not supported by a block device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(invalid("shared objects are not supported"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        if inflight.num_queues == 0
            || inflight.num_queues > self.ctx.num_queues
            || inflight.queue_size == 0
            || inflight.queue_size > self.ctx.max_queue_size
        {
            return Err(VuError::InvalidParam);
        }
        let region =
            InflightRegion::create(inflight.num_queues, inflight.queue_size).map_err(io_err)?;
        let file = region
            .file()
            .try_clone()
            .map_err(VuError::ReqHandlerError)?;
        let reply = VhostUserInflight::new(
            region.mmap_size(),
            0,
            inflight.num_queues,
            inflight.queue_size,
        );
        self.inflight = Some(Arc::new(region));
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        if inflight.num_queues > self.ctx.num_queues {
            return Err(VuError::InvalidParam);
        }
        let region = InflightRegion::open(
            file,
            inflight.mmap_size,
            inflight.mmap_offset,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(|e| {
            tracing::error!(ctrl = %self.ctx.name, error = %e, "SET_INFLIGHT_FD rejected");
            io_err(e)
        })?;
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Ok(MAX_MEM_SLOTS as u64)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        let d = RegionDesc {
            gpa: region.guest_phys_addr,
            size: region.memory_size,
            user_addr: region.user_addr,
            mmap_offset: region.mmap_offset,
        };
        self.mem.add(d, fd).map_err(|e| {
            tracing::error!(ctrl = %self.ctx.name, error = %e, "ADD_MEM_REG rejected");
            io_err(e)
        })?;
        self.push_memory();
        for i in 0..self.vrings.len() {
            self.try_start(i)?;
        }
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        self.mem
            .remove(region.guest_phys_addr, region.memory_size)
            .map_err(io_err)?;
        self.push_memory();
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(invalid("device state transfer is not supported"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(invalid("device state transfer is not supported"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(invalid("shared memory regions are not supported"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(invalid("dirty logging is not supported"))
    }
}

/// A block device's config space for a controller.
pub(crate) fn build_config(
    bdev: &dyn BlockDevice,
    num_queues: u16,
    seg_max: u32,
    size_max: u32,
    max_dwz_sectors: u32,
) -> BlkConfigSpace {
    let info = bdev.info();
    let spb = (info.block_size as u64 / blk::SECTOR_SIZE) as u32;
    BlkConfigSpace {
        capacity: info.num_blocks.saturating_mul(spb as u64),
        size_max,
        seg_max,
        blk_size: info.block_size,
        physical_block_exp: 0,
        alignment_offset: 0,
        min_io_size: 1,
        opt_io_size: 0,
        writeback: 1,
        num_queues,
        max_discard_sectors: max_dwz_sectors,
        max_discard_seg: 1,
        discard_sector_alignment: spb,
        max_write_zeroes_sectors: max_dwz_sectors,
        max_write_zeroes_seg: 1,
        write_zeroes_may_unmap: 0,
    }
}

/// The control-plane handler as rust-vmm's `BackendReqHandler` wants it.
pub(crate) type SharedBackend = Arc<Mutex<BlkBackend>>;
