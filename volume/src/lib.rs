//! # vmpath-volume: per-VM virtual volumes, scheduled per request
//!
//! This crate joins the block layer (`vmpath-bdev`), the reactors (`vmpath-runtime`) and the
//! pure per-VM scheduler (`scheduler`) into the data path that frontends use:
//!
//! * A **path** is a block device registered with the scheduler ([`VolumeManager::add_path`]):
//!   a local bdev, or one fabric path of a multipath NVMe namespace. All paths of a volume
//!   must reach the same storage.
//! * A **volume** ([`VmVolume`]) is a slice (`offset_blocks`, `num_blocks`) of that storage
//!   presented to one VM as its own disk (the *storage virtualizer*, MISSION capability 6).
//!   It is itself a [`BlockDevice`], so every frontend (vhost-user-blk, the NVMe/TCP target)
//!   exports it like any other device.
//! * Every request submitted on a volume's [`IoChannel`] goes through the reactor's scheduler
//!   [`Shard`]: it is **routed** now on the path the VM's policy picks, or **held** in the VM's
//!   FIFO and routed later, in order, when the VM has budget ([`Shard::poll`]). Completions
//!   feed path load and service time back ([`Shard::complete`]).
//! * Suspension and backpressure reach the frontend through [`IoChannel::should_pull`]; a full
//!   hold queue hands the request back ([`SubmitErrorKind::QueueFull`]). Nothing is dropped.
//!
//! ## Per reactor
//!
//! [`VolumeManager::install`] gives a reactor its own [`ReactorSched`]: the reactor's shard,
//! one channel per path device (opened lazily on that reactor), the slab of requests in the
//! scheduler's hands and the completion queues of the volume channels opened there. A poller
//! drives it every loop (releases held requests, polls path channels, delivers completions)
//! and keeps the reactor awake while requests are held or in flight. Nothing here is shared
//! between reactors except through the scheduler's atomics: no lock on the I/O path.
//!
//! A path error [`IoError::NoPath`] (the path could not take the I/O at all) sends the request
//! back through the scheduler to another path; every other outcome is final. Multipath devices
//! apply the write rule themselves (`nvme_paths`): a write whose outcome is unknown completes
//! only once it can no longer land.
//!
//! ## Request path
//!
//! * **Submit**: the request is checked against the volume (a fast check for the common
//!   one-segment read/write, the full [`vmpath_bdev::validate`] otherwise), recorded in a slab
//!   slot taken from a free list (slots are reused in place: no allocation, no move of whole
//!   requests; the slot keeps what is needed to issue it again) and enqueued in the shard. A
//!   request routed at once goes to its path channel as the frontend handed it (offset
//!   translated, tag = slot index). A held request, a full path channel or an
//!   [`IoError::NoPath`] completion is issued later from the slot.
//! * **Complete**: the first volume channel polled in a reactor loop (same `now`) runs the
//!   reactor's pass; path completions go straight from the path channel's callback to the
//!   shard's accounting and the owning channel's done queue (a plain `Vec`). Each volume
//!   channel delivers its own queue. `outstanding` is a per-channel counter shared with the
//!   reactor context, read without borrowing it (frontends call it for every channel, every
//!   loop).
//!
//! Cost (`bash bench/volume_callgrind.sh`, null device, one reactor, QD 128): about 634, 705
//! and 800 instructions per request at 1, 100 and 1000 VMs, of which the scheduler's enqueue
//! and completion take about 100, the null device about 140 and the benchmark's own loop 45
//! to 85 (it and the per-channel polls are what grows with the number of VMs).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use scheduler::{
    Decision, Outcome, PathId, PathPolicySpec, PathSpec, Released, SchedError, Scheduler, Shard,
    ShardError, VmId,
};
use vmpath_bdev::{
    uuid_from_name, BdevError, BdevInfo, BlockDevice, IoChannel, IoCompletion, IoError, IoRequest,
    IoStats, IoType, SgList, SharedStats, SubmitError, SubmitErrorKind,
};
use vmpath_runtime::{PollStatus, Reactor};

/// Most requests one reactor keeps in the scheduler's hands (held or in flight).
pub const MAX_REQS_PER_REACTOR: usize = 16384;
/// Most held requests released per poll.
const RELEASE_BATCH: usize = 256;

/// Errors of the volume layer's control plane.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The scheduler refused.
    #[error(transparent)]
    Sched(#[from] SchedError),
    /// A path is unknown.
    #[error("path {0} does not exist")]
    NoSuchPath(String),
    /// The volume does not fit the storage or mixes block sizes.
    #[error("{0}")]
    Geometry(String),
    /// The scheduler has no shard for this reactor.
    #[error("reactor {reactor} has no scheduler shard (the scheduler has {shards})")]
    NoShard {
        /// Reactor id.
        reactor: u32,
        /// Shards configured.
        shards: usize,
    },
}

static NEXT_MANAGER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The reactor scheduler contexts installed on this thread, by manager id.
    static INSTALLED: RefCell<HashMap<u64, Rc<RefCell<ReactorSched>>>> = RefCell::new(HashMap::new());
}

/// Owns the scheduler and the path table; creates volumes.
#[derive(Debug)]
pub struct VolumeManager {
    id: u64,
    sched: Arc<Scheduler>,
    paths: RwLock<Vec<Option<PathTarget>>>,
}

/// What a scheduler path leads to: a device, and for a multipath device one of its routes.
#[derive(Debug, Clone)]
struct PathTarget {
    dev: Arc<dyn BlockDevice>,
    route: Option<u16>,
}

impl VolumeManager {
    /// A manager over `sched` (one shard per reactor).
    pub fn new(sched: Arc<Scheduler>) -> Arc<VolumeManager> {
        Arc::new(VolumeManager {
            id: NEXT_MANAGER_ID.fetch_add(1, Ordering::Relaxed),
            sched,
            paths: RwLock::new(Vec::new()),
        })
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
    }

    /// Registers `dev` as a scheduler path described by `spec`.
    pub fn add_path(
        &self,
        spec: PathSpec,
        dev: Arc<dyn BlockDevice>,
    ) -> Result<PathId, VolumeError> {
        self.add_routed_path(spec, dev, None)
    }

    /// Registers one route of a multi-route device (a fabric path of a multipath namespace,
    /// by its path index) as a scheduler path: requests the scheduler sends there are
    /// submitted with [`IoChannel::submit_routed`]. Several scheduler paths over the same
    /// device share one channel per reactor.
    pub fn add_routed_path(
        &self,
        spec: PathSpec,
        dev: Arc<dyn BlockDevice>,
        route: Option<u16>,
    ) -> Result<PathId, VolumeError> {
        let id = self.sched.add_path(spec)?;
        let mut t = self.paths.write().expect("path table");
        if t.len() <= id.index() {
            t.resize(id.index() + 1, None);
        }
        t[id.index()] = Some(PathTarget { dev, route });
        Ok(id)
    }

    fn path_target(&self, id: PathId) -> Option<PathTarget> {
        self.paths
            .read()
            .expect("path table")
            .get(id.index())
            .and_then(|d| d.clone())
    }

    /// Unregisters a path (the scheduler refuses while a VM depends on it).
    pub fn remove_path(&self, id: PathId) -> Result<(), VolumeError> {
        self.sched.remove_path(id)?;
        if let Some(slot) = self.paths.write().expect("path table").get_mut(id.index()) {
            *slot = None;
        }
        Ok(())
    }

    /// The device behind a path.
    pub fn path_device(&self, id: PathId) -> Option<Arc<dyn BlockDevice>> {
        self.path_target(id).map(|t| t.dev)
    }

    /// The scheduler path registered for `route` of device `dev` (by name).
    pub fn path_for_route(&self, dev: &str, route: u16) -> Option<PathId> {
        self.paths
            .read()
            .expect("path table")
            .iter()
            .enumerate()
            .find(|(_, t)| {
                t.as_ref()
                    .is_some_and(|t| t.route == Some(route) && t.dev.info().name == dev)
            })
            .map(|(i, _)| PathId(i as u16))
    }

    /// The same storage as `vol` (same name, UUID, blocks and paths), scheduled as VM `vm`'s:
    /// what a host bound to `vm` uses when it reaches `vol` over NVMe/TCP. Its requests go
    /// through `vm`'s queue, shares, reservation, limit and path policy. Checked like
    /// [`create_volume`](Self::create_volume) (`vm` may only use paths that reach `vol`).
    pub fn view_as(
        self: &Arc<Self>,
        vol: &VmVolume,
        vm: VmId,
    ) -> Result<Arc<VmVolume>, VolumeError> {
        self.create_volume(
            &vol.info.name,
            vm,
            &vol.path_names,
            vol.offset_blocks,
            Some(vol.info.num_blocks),
        )
    }

    /// Creates a volume of VM `vm`: blocks `offset_blocks..offset_blocks+num_blocks` of the
    /// storage reached through `paths` (`num_blocks = None`: to the end). If the VM may use any
    /// path (empty affinity), its affinity is narrowed to these paths.
    pub fn create_volume(
        self: &Arc<Self>,
        name: &str,
        vm: VmId,
        paths: &[String],
        offset_blocks: u64,
        num_blocks: Option<u64>,
    ) -> Result<Arc<VmVolume>, VolumeError> {
        if paths.is_empty() {
            return Err(VolumeError::Geometry(
                "a volume needs at least one path".into(),
            ));
        }
        let mut ids = Vec::with_capacity(paths.len());
        let mut block_size = None;
        let mut capacity = u64::MAX;
        let mut read_only = false;
        for p in paths {
            let id = self
                .sched
                .path_id(p)
                .ok_or_else(|| VolumeError::NoSuchPath(p.clone()))?;
            let dev = self
                .path_device(id)
                .ok_or_else(|| VolumeError::NoSuchPath(p.clone()))?;
            let info = dev.info();
            match block_size {
                None => block_size = Some(info.block_size),
                Some(bs) if bs != info.block_size => {
                    return Err(VolumeError::Geometry(format!(
                        "path {p} has {}-byte blocks, other paths {bs}",
                        info.block_size
                    )))
                }
                _ => {}
            }
            capacity = capacity.min(info.num_blocks);
            read_only |= info.read_only;
            ids.push(id);
        }
        let block_size = block_size.expect("at least one path");
        if offset_blocks >= capacity {
            return Err(VolumeError::Geometry(format!(
                "offset_blocks {offset_blocks} is beyond the storage ({capacity} blocks)"
            )));
        }
        let n = num_blocks.unwrap_or(capacity - offset_blocks);
        if n == 0
            || offset_blocks
                .checked_add(n)
                .is_none_or(|end| end > capacity)
        {
            return Err(VolumeError::Geometry(format!(
                "blocks {offset_blocks}..{} do not fit the storage ({capacity} blocks)",
                offset_blocks.saturating_add(n)
            )));
        }
        let info = self.sched.vm(vm).ok_or(SchedError::UnknownVm(vm))?;
        if info.spec.path_policy.affinity.is_empty() {
            self.sched.set_path_policy(
                vm,
                PathPolicySpec {
                    selector: info.spec.path_policy.selector,
                    affinity: paths.to_vec(),
                },
            )?;
        } else if let Some(bad) = info
            .spec
            .path_policy
            .affinity
            .iter()
            .find(|a| !paths.contains(a))
        {
            return Err(VolumeError::Geometry(format!(
                "VM {} may use path {bad}, which does not reach this volume's storage",
                info.spec.name
            )));
        }
        Ok(Arc::new(VmVolume {
            info: BdevInfo {
                name: name.to_string(),
                kind: "volume",
                block_size,
                num_blocks: n,
                buf_align: 1,
                uuid: uuid_from_name(name),
                max_io_blocks: u32::MAX,
                read_only,
            },
            vm,
            vm_name: info.spec.name,
            paths: ids,
            path_names: paths.to_vec(),
            offset_blocks,
            mgr: self.clone(),
            stats: Arc::default(),
        }))
    }

    /// Gives `reactor` its scheduler context (shard = reactor id) and the poller that drives
    /// it. Call once per reactor, on that reactor.
    pub fn install(self: &Arc<Self>, reactor: &mut Reactor) -> Result<(), VolumeError> {
        let ctx = self.install_on_thread(reactor.id() as usize)?;
        let me: Rc<std::cell::Cell<Option<vmpath_runtime::PollerId>>> = Rc::default();
        let me2 = me.clone();
        let id = reactor.register_poller("volume-sched", move |r| {
            let now = r.now();
            let mut c = ctx.borrow_mut();
            let status = c.poll(now);
            // On shutdown, leave once everything in the scheduler's hands has completed.
            if r.stop_requested() && c.held() == 0 && c.inflight() == 0 && c.retry.is_empty() {
                if let Some(id) = me2.get() {
                    r.unregister_poller(id);
                }
            }
            status
        });
        me.set(Some(id));
        Ok(())
    }

    /// Installs a scheduler context on the calling thread without a reactor (tests, tools):
    /// the caller drives it through the volume channels' `poll`.
    pub fn install_on_thread(
        self: &Arc<Self>,
        shard: usize,
    ) -> Result<Rc<RefCell<ReactorSched>>, VolumeError> {
        let sh = self.sched.shard(shard).map_err(|_| VolumeError::NoShard {
            reactor: shard as u32,
            shards: self.sched.shard_count(),
        })?;
        let ctx = Rc::new(RefCell::new(ReactorSched::new(self.clone(), sh)));
        INSTALLED.with(|m| m.borrow_mut().insert(self.id, ctx.clone()));
        Ok(ctx)
    }

    /// Whether a frontend on the calling reactor should pull more requests of `vm` (false
    /// while the VM is suspended or its hold queue here is full). True off-reactor.
    pub fn should_pull(&self, vm: VmId) -> bool {
        match self.installed() {
            Some(ctx) => ctx.borrow_mut().shard.should_pull(vm),
            None => true,
        }
    }

    fn installed(&self) -> Option<Rc<RefCell<ReactorSched>>> {
        INSTALLED.with(|m| m.borrow().get(&self.id).cloned())
    }
}

/// A VM's virtual disk: a slice of the storage behind its paths, scheduled per request.
#[derive(Debug)]
pub struct VmVolume {
    info: BdevInfo,
    vm: VmId,
    vm_name: String,
    paths: Vec<PathId>,
    path_names: Vec<String>,
    offset_blocks: u64,
    mgr: Arc<VolumeManager>,
    stats: Arc<SharedStats>,
}

impl VmVolume {
    /// The VM the volume belongs to.
    pub fn vm(&self) -> VmId {
        self.vm
    }

    /// The VM's name.
    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// Names of the paths reaching the storage.
    pub fn path_names(&self) -> &[String] {
        &self.path_names
    }

    /// First block of the slice on the storage.
    pub fn offset_blocks(&self) -> u64 {
        self.offset_blocks
    }
}

impl BlockDevice for VmVolume {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        let ctx = self
            .mgr
            .installed()
            .ok_or_else(|| BdevError::InvalidParam {
                param: "reactor",
                msg: format!(
                    "volume {} can only be used on a reactor with the scheduler installed",
                    self.info.name
                ),
            })?;
        let (slot, out) = ctx.borrow_mut().open_volume_channel();
        Ok(Box::new(VolumeChannel {
            ctx,
            slot,
            out,
            info: self.info.clone(),
            vm: self.vm,
            offset_blocks: self.offset_blocks,
            allowed: self
                .paths
                .iter()
                .fold(0u64, |m, p| m | 1u64 << (p.index() % 64)),
            stats: self.stats.clone(),
        }))
    }

    fn unmap_zeroes(&self) -> bool {
        self.paths
            .iter()
            .filter_map(|p| self.mgr.path_device(*p))
            .all(|d| d.unmap_zeroes())
    }

    fn stats(&self) -> IoStats {
        self.stats.snapshot()
    }
}

/// [`Pending::path`] of a request the scheduler holds (not routed yet).
const UNROUTED: u16 = u16::MAX;

/// Operations that write the storage (the scheduler accounts them separately).
#[inline]
fn is_write(op: IoType) -> bool {
    matches!(op, IoType::Write | IoType::WriteZeroes | IoType::Unmap)
}

/// [`vmpath_bdev::validate`] against the volume's geometry, with a fast path for the common
/// request: a read (or a write to a writable volume) of one buffer segment, in range.
#[inline]
fn check(info: &BdevInfo, req: &IoRequest) -> Result<(), IoError> {
    if let [v] = req.iovs.as_slice() {
        let n = req.num_blocks as u64;
        if (req.op == IoType::Read || (req.op == IoType::Write && !info.read_only))
            && n != 0
            && req
                .offset_blocks
                .checked_add(n)
                .is_some_and(|end| end <= info.num_blocks)
            && v.len() as u64 == n * info.block_size as u64
            && info.buf_align <= 1
        {
            return Ok(());
        }
    }
    check_full(info, req)
}

#[cold]
fn check_full(info: &BdevInfo, req: &IoRequest) -> Result<(), IoError> {
    vmpath_bdev::validate(info, req)
}

/// Copies a scatter-gather list into `dst`, reusing its storage (one segment: a plain store).
#[inline(always)]
fn copy_sg(dst: &mut SgList, src: &SgList) {
    match src.as_slice() {
        &[v] if !dst.spilled() => {
            dst.clear();
            dst.push(v);
        }
        s => {
            dst.clear();
            dst.extend_from_slice(s);
        }
    }
}

/// A request in the scheduler's hands: one slot of the reactor's slab from submission to
/// completion. The slot keeps what is needed to issue the request again (a held request, a
/// full path channel, an [`IoError::NoPath`] completion); a request routed at once goes to its
/// path as the frontend handed it (offset translated, tagged with the slot index). Slots are
/// reused in place: the scatter-gather copy reuses the slot's storage.
struct Pending {
    /// Copy of the request's buffers.
    iovs: SgList,
    /// First block on the storage (offset translated).
    offset_blocks: u64,
    /// The frontend's tag.
    tag: u64,
    /// When it was issued on its path (reactor clock, ns).
    issued_at: u64,
    /// Paths this volume may use (bit = path index).
    allowed: u64,
    vm: VmId,
    /// The owning volume channel's slot.
    chan: u32,
    bytes: u32,
    num_blocks: u32,
    /// Path it was issued on ([`UNROUTED`] while held).
    path: u16,
    op: IoType,
}

/// A finished request waiting for its volume channel's poll.
#[derive(Clone, Copy)]
struct Done {
    tag: u64,
    result: Result<(), IoError>,
    op: IoType,
    bytes: u32,
}

struct ChanSlot {
    /// Finished requests of this channel, in completion order.
    done: Vec<Done>,
    live: bool,
    /// Requests of this channel in the scheduler's hands plus completions not delivered yet
    /// (the channel's `outstanding`, read by frontends every loop without borrowing the
    /// reactor context).
    out: Rc<Cell<usize>>,
}

impl ChanSlot {
    #[inline]
    fn add_out(&self, n: usize) {
        self.out.set(self.out.get() + n);
    }

    #[inline]
    fn sub_out(&self, n: usize) {
        self.out.set(self.out.get() - n);
    }
}

/// One reactor's requests: the slab (slots never move; free slots are reused, last freed
/// first) and the volume channels' books.
struct Book {
    slots: Vec<Pending>,
    /// Indices of free slots.
    free: Vec<u32>,
    chans: Vec<ChanSlot>,
}

impl Book {
    /// Records a request of volume channel `chan` in a free slot (None: the reactor is full).
    #[inline]
    fn alloc(
        &mut self,
        req: &IoRequest,
        offset_blocks: u64,
        chan: u32,
        vm: VmId,
        bytes: u32,
        allowed: u64,
    ) -> Option<u32> {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => self.grow()?,
        };
        let p = &mut self.slots[idx as usize];
        copy_sg(&mut p.iovs, &req.iovs);
        p.offset_blocks = offset_blocks;
        p.tag = req.tag;
        p.allowed = allowed;
        p.vm = vm;
        p.chan = chan;
        p.bytes = bytes;
        p.num_blocks = req.num_blocks;
        p.path = UNROUTED;
        p.op = req.op;
        self.chans[chan as usize].add_out(1);
        Some(idx)
    }

    /// A new slot, while the slab is below its bound.
    #[cold]
    fn grow(&mut self) -> Option<u32> {
        if self.slots.len() >= MAX_REQS_PER_REACTOR {
            return None;
        }
        self.slots.push(Pending {
            iovs: SgList::new(),
            offset_blocks: 0,
            tag: 0,
            issued_at: 0,
            allowed: 0,
            vm: VmId { index: 0, gen: 0 },
            chan: 0,
            bytes: 0,
            num_blocks: 0,
            path: UNROUTED,
            op: IoType::Flush,
        });
        Some((self.slots.len() - 1) as u32)
    }

    /// Frees slot `idx` and queues its completion to its channel (dropped if the channel is
    /// gone).
    #[inline]
    fn finish(&mut self, idx: u32, result: Result<(), IoError>) {
        let p = &self.slots[idx as usize];
        let c = &mut self.chans[p.chan as usize];
        if c.live {
            c.done.push(Done {
                tag: p.tag,
                result,
                op: p.op,
                bytes: p.bytes,
            });
        } else {
            c.sub_out(1);
        }
        self.free.push(idx);
    }
}

/// Where a scheduler path's requests go on this reactor: a device channel (index into
/// `dev_chans`) and, for a multi-route device, the route.
#[derive(Debug, Clone, Copy)]
struct PathChan {
    dev: u32,
    route: u16,
    routed: bool,
}

/// One reactor's scheduling context: its shard, its path channels, its requests.
pub struct ReactorSched {
    mgr: Arc<VolumeManager>,
    shard: Shard,
    book: Book,
    /// Per scheduler path: index into `dev_chans` and the route, once resolved.
    path_chans: Vec<Option<PathChan>>,
    /// One channel per distinct device (scheduler paths over routes of one device share it),
    /// keyed by the device's address.
    dev_chans: Vec<(*const (), Box<dyn IoChannel>)>,
    /// Requests routed but refused by a full path channel, retried in order.
    retry: std::collections::VecDeque<u32>,
    released: Vec<Released>,
    /// Requests a path completed with [`IoError::NoPath`] in this pass, to route again.
    reroute: Vec<u32>,
    now: u64,
    last_poll: u64,
    inflight: usize,
}

impl std::fmt::Debug for ReactorSched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorSched")
            .field("shard", &self.shard.index())
            .field("inflight", &self.inflight)
            .field("held", &self.shard.held())
            .finish()
    }
}

impl ReactorSched {
    fn new(mgr: Arc<VolumeManager>, shard: Shard) -> Self {
        ReactorSched {
            mgr,
            shard,
            book: Book {
                slots: Vec::new(),
                free: Vec::new(),
                chans: Vec::new(),
            },
            path_chans: Vec::new(),
            dev_chans: Vec::new(),
            retry: std::collections::VecDeque::new(),
            released: Vec::with_capacity(RELEASE_BATCH),
            reroute: Vec::new(),
            now: 0,
            last_poll: u64::MAX,
            inflight: 0,
        }
    }

    /// Requests held by the scheduler on this reactor.
    pub fn held(&self) -> u64 {
        self.shard.held()
    }

    /// Requests issued on paths and not completed.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// A slot for a new volume channel (a closed channel's, once its requests are all done),
    /// and its outstanding counter.
    fn open_volume_channel(&mut self) -> (u32, Rc<Cell<usize>>) {
        let chans = &mut self.book.chans;
        let out = Rc::new(Cell::new(0));
        if let Some(i) = chans.iter().position(|c| !c.live && c.out.get() == 0) {
            let c = &mut chans[i];
            c.done.clear();
            c.live = true;
            c.out = out.clone();
            return (i as u32, out);
        }
        chans.push(ChanSlot {
            done: Vec::new(),
            live: true,
            out: out.clone(),
        });
        ((chans.len() - 1) as u32, out)
    }

    /// The channel index (and route) of a scheduler path, opened on first use.
    #[inline]
    fn path_channel(&mut self, path: PathId) -> Result<PathChan, IoError> {
        match self.path_chans.get(path.index()) {
            Some(&Some(c)) => Ok(c),
            _ => self.open_path_channel(path),
        }
    }

    #[cold]
    fn open_path_channel(&mut self, path: PathId) -> Result<PathChan, IoError> {
        let i = path.index();
        if self.path_chans.len() <= i {
            self.path_chans.resize_with(i + 1, || None);
        }
        let t = self.mgr.path_target(path).ok_or(IoError::NoPath)?;
        let key = Arc::as_ptr(&t.dev) as *const ();
        let ci = match self.dev_chans.iter().position(|(k, _)| *k == key) {
            Some(ci) => ci,
            None => {
                let ch = t.dev.open_channel().map_err(|e| {
                    tracing::error!(path = i, error = %e, "cannot open path channel");
                    IoError::NoPath
                })?;
                self.dev_chans.push((key, ch));
                self.dev_chans.len() - 1
            }
        };
        let pc = PathChan {
            dev: ci as u32,
            route: t.route.unwrap_or(0),
            routed: t.route.is_some(),
        };
        self.path_chans[i] = Some(pc);
        Ok(pc)
    }

    /// Issues request `idx` on `path` from its slot.
    fn issue(&mut self, idx: u32, path: PathId) {
        let p = &self.book.slots[idx as usize];
        let iovs = SgList::from_slice(&p.iovs);
        let req = IoRequest {
            op: p.op,
            offset_blocks: p.offset_blocks,
            num_blocks: p.num_blocks,
            iovs,
            tag: idx as u64,
        };
        self.dispatch(idx, path, req);
    }

    /// Submits `req` (request `idx`, tagged with `idx`) on `path`'s channel. A full channel
    /// queues it for a retry from its slot.
    #[inline(always)]
    fn dispatch(&mut self, idx: u32, path: PathId, req: IoRequest) {
        let p = &mut self.book.slots[idx as usize];
        p.path = path.0;
        p.issued_at = self.now;
        if p.allowed & (1u64 << (path.index() % 64)) == 0 {
            // The VM's policy picked a path that does not reach this volume's storage.
            tracing::warn!(
                path = path.index(),
                "request routed to a path outside its volume"
            );
            return self.fail_issued(idx, path, IoError::NoPath);
        }
        let pc = match self.path_channel(path) {
            Ok(c) => c,
            Err(e) => return self.fail_issued(idx, path, e),
        };
        let ch = &mut self.dev_chans[pc.dev as usize].1;
        let submitted = if pc.routed {
            ch.submit_routed(pc.route, req)
        } else {
            ch.submit(req)
        };
        match submitted {
            Ok(()) => self.inflight += 1,
            Err(SubmitError {
                reason: SubmitErrorKind::QueueFull,
                ..
            }) => self.retry.push_back(idx),
        }
    }

    /// Completes a request routed to `path` with `err` without issuing it.
    #[cold]
    fn fail_issued(&mut self, idx: u32, path: PathId, err: IoError) {
        let p = &self.book.slots[idx as usize];
        let _ = self.shard.complete(p.vm, path, p.bytes, 0);
        self.book.finish(idx, Err(err));
    }

    /// The scheduler refused request `idx`: a full hold queue frees its slot (false: hand the
    /// request back), anything else fails it.
    #[cold]
    fn refused(&mut self, idx: u32, e: ShardError) -> bool {
        if let ShardError::QueueFull { .. } = e {
            let chan = self.book.slots[idx as usize].chan;
            self.book.chans[chan as usize].sub_out(1);
            self.book.free.push(idx);
            return false;
        }
        tracing::warn!(error = %e, "scheduler refused a request");
        self.book.finish(idx, Err(IoError::Aborted));
        true
    }

    /// One pass: release held requests, retry refused ones, reap path completions. A second
    /// call with the same `now` (several volume channels polled in one reactor loop) only
    /// reports whether work is pending.
    pub fn poll(&mut self, now: u64) -> PollStatus {
        if now == self.last_poll {
            return PollStatus::from_work(self.shard.held() > 0 || self.inflight > 0);
        }
        self.poll_pass(now)
    }

    #[inline(never)]
    fn poll_pass(&mut self, now: u64) -> PollStatus {
        self.last_poll = now;
        self.now = now;
        let mut work = false;

        // Retry requests a full path channel refused, in order.
        if !self.retry.is_empty() {
            self.retry_refused();
            work = true;
        }

        // Release held requests the scheduler lets go now.
        let mut released = std::mem::take(&mut self.released);
        released.clear();
        if self.shard.poll(now, &mut released, RELEASE_BATCH) > 0 {
            work = true;
            for r in &released {
                let idx = r.token as u32;
                match r.outcome {
                    Outcome::Route(path) => self.issue(idx, path),
                    Outcome::Fail(reason) => {
                        tracing::debug!(?reason, "held request failed back");
                        self.book.finish(idx, Err(IoError::NoPath));
                    }
                }
            }
        }
        self.released = released;

        // Reap completions of every path channel, straight into the channels' done queues.
        let ReactorSched {
            dev_chans,
            shard,
            book,
            reroute,
            inflight,
            ..
        } = self;
        for (_, ch) in dev_chans.iter_mut() {
            if ch.outstanding() == 0 {
                continue;
            }
            ch.poll(now, &mut |c| {
                work = true;
                *inflight -= 1;
                let idx = c.tag as u32;
                let p = &book.slots[idx as usize];
                let _ = shard.complete(
                    p.vm,
                    PathId(p.path),
                    p.bytes,
                    now.saturating_sub(p.issued_at),
                );
                if c.result == Err(IoError::NoPath) {
                    // The path could not take it at all: route it again (below).
                    reroute.push(idx);
                } else {
                    book.finish(idx, c.result);
                }
            });
        }
        if !self.reroute.is_empty() {
            self.reroute_refused(now);
        }
        PollStatus::from_work(work || self.shard.held() > 0 || self.inflight > 0)
    }

    #[cold]
    fn retry_refused(&mut self) {
        for _ in 0..self.retry.len() {
            let idx = self.retry.pop_front().expect("len checked");
            let path = self.book.slots[idx as usize].path;
            debug_assert_ne!(path, UNROUTED, "retry entries are routed");
            self.issue(idx, PathId(path));
        }
    }

    /// Routes requests completed with [`IoError::NoPath`] again, on another path.
    #[cold]
    fn reroute_refused(&mut self, now: u64) {
        let mut list = std::mem::take(&mut self.reroute);
        for &idx in &list {
            let p = &mut self.book.slots[idx as usize];
            let refused = PathId(p.path);
            p.path = UNROUTED;
            let (vm, bytes, write) = (p.vm, p.bytes, is_write(p.op));
            match self.shard.enqueue(vm, idx as u64, bytes, write, now) {
                Ok(Decision::Route(path)) if path != refused => self.issue(idx, path),
                Ok(Decision::Route(path)) => {
                    // Same path again: it just refused; fail the request rather than spin.
                    let _ = self.shard.complete(vm, path, bytes, 0);
                    self.book.finish(idx, Err(IoError::NoPath));
                }
                Ok(Decision::Held) => {}
                Err(_) => self.book.finish(idx, Err(IoError::NoPath)),
            }
        }
        list.clear();
        self.reroute = list;
    }
}

/// A reactor's channel to a volume.
struct VolumeChannel {
    ctx: Rc<RefCell<ReactorSched>>,
    slot: u32,
    /// The slot's outstanding counter.
    out: Rc<Cell<usize>>,
    info: BdevInfo,
    vm: VmId,
    offset_blocks: u64,
    /// Bit i set: scheduler path i reaches this volume's storage.
    allowed: u64,
    stats: Arc<SharedStats>,
}

impl IoChannel for VolumeChannel {
    /// Records the request in a slab slot and enqueues it through the scheduler. A request
    /// routed at once goes to its path as is (offset translated, tagged with its slot). A full
    /// reactor or hold queue hands it back untouched.
    fn submit(&mut self, mut req: IoRequest) -> Result<(), SubmitError> {
        let mut ctx = self.ctx.borrow_mut();
        let ctx = &mut *ctx;
        if let Err(e) = check(&self.info, &req) {
            let c = &mut ctx.book.chans[self.slot as usize];
            c.add_out(1);
            c.done.push(Done {
                tag: req.tag,
                result: Err(e),
                op: req.op,
                bytes: 0,
            });
            return Ok(());
        }
        let (offset, bytes) = if req.op == IoType::Flush {
            (req.offset_blocks, 0)
        } else {
            (
                req.offset_blocks + self.offset_blocks,
                (req.num_blocks as u64 * self.info.block_size as u64).min(u32::MAX as u64) as u32,
            )
        };
        let vm = self.vm;
        let Some(idx) = ctx
            .book
            .alloc(&req, offset, self.slot, vm, bytes, self.allowed)
        else {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        };
        match ctx
            .shard
            .enqueue(vm, idx as u64, bytes, is_write(req.op), ctx.now)
        {
            Ok(Decision::Route(path)) => {
                req.offset_blocks = offset;
                req.tag = idx as u64;
                ctx.dispatch(idx, path, req);
            }
            Ok(Decision::Held) => {}
            Err(e) => {
                if !ctx.refused(idx, e) {
                    return Err(SubmitError {
                        req,
                        reason: SubmitErrorKind::QueueFull,
                    });
                }
            }
        }
        Ok(())
    }

    fn poll(&mut self, now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut ctx = self.ctx.borrow_mut();
        if now != ctx.last_poll {
            ctx.poll_pass(now);
        }
        let c = &mut ctx.book.chans[self.slot as usize];
        let n = c.done.len();
        if n == 0 {
            return 0;
        }
        let mut local = IoStats::default();
        for d in &c.done {
            local.count(d.op, d.bytes as u64, d.result.is_ok());
            done(IoCompletion {
                tag: d.tag,
                result: d.result,
            });
        }
        c.done.clear();
        self.out.set(self.out.get() - n);
        self.stats.add(&local);
        n
    }

    fn outstanding(&self) -> usize {
        self.out.get()
    }

    fn capacity(&self) -> usize {
        MAX_REQS_PER_REACTOR
    }

    fn should_pull(&mut self) -> bool {
        self.ctx.borrow_mut().shard.should_pull(self.vm)
    }
}

impl Drop for VolumeChannel {
    fn drop(&mut self) {
        if let Ok(mut ctx) = self.ctx.try_borrow_mut() {
            let c = &mut ctx.book.chans[self.slot as usize];
            c.live = false;
            c.sub_out(c.done.len());
            c.done.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler::{SchedulerConfig, VmSpec};
    use vmpath_bdev::malloc::MallocBdev;
    use vmpath_bdev::sim::SimParams;

    fn setup(max_held: u32) -> (Arc<VolumeManager>, Arc<VmVolume>, VmId) {
        let sched = Scheduler::new(SchedulerConfig {
            shards: 1,
            ..Default::default()
        })
        .unwrap();
        let mgr = VolumeManager::new(sched);
        let dev = Arc::new(MallocBdev::new("m0", 1024, 4096, SimParams::default()).unwrap());
        mgr.add_path(PathSpec::new("m0", 100_000, 400), dev)
            .unwrap();
        let mut spec = VmSpec::new("vm");
        spec.max_held = max_held;
        let vm = mgr.scheduler().create_vm(spec).unwrap();
        let vol = mgr
            .create_volume("v", vm, &["m0".into()], 100, Some(50))
            .unwrap();
        mgr.install_on_thread(0).unwrap();
        (mgr, vol, vm)
    }

    fn poll_all(ch: &mut dyn IoChannel, now: &mut u64, got: &mut Vec<IoCompletion>) {
        for _ in 0..100 {
            *now += 1_000;
            ch.poll(*now, &mut |c| got.push(c));
        }
    }

    #[test]
    fn full_hold_queue_hands_the_request_back_untouched() {
        let (mgr, vol, vm) = setup(4);
        let mut ch = vol.open_channel().unwrap();
        mgr.scheduler().suspend_vm(vm).unwrap();
        for tag in 0..4 {
            ch.submit(IoRequest::no_data(IoType::WriteZeroes, tag, 1, tag))
                .unwrap();
        }
        assert_eq!(ch.outstanding(), 4);
        let e = ch
            .submit(IoRequest::no_data(IoType::WriteZeroes, 7, 2, 99))
            .expect_err("hold queue is full");
        assert_eq!(e.reason, SubmitErrorKind::QueueFull);
        assert_eq!(
            (e.req.op, e.req.offset_blocks, e.req.num_blocks, e.req.tag),
            (IoType::WriteZeroes, 7, 2, 99),
            "the request comes back as submitted (volume offset, frontend tag)"
        );
        assert_eq!(ch.outstanding(), 4);
        mgr.scheduler().resume_vm(vm).unwrap();
        let (mut now, mut got) = (0, Vec::new());
        poll_all(ch.as_mut(), &mut now, &mut got);
        let mut tags: Vec<u64> = got.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, vec![0, 1, 2, 3]);
        assert!(got.iter().all(|c| c.result.is_ok()), "{got:?}");
        assert_eq!(ch.outstanding(), 0);
        assert_eq!(vol.stats().other_ops, 4);
    }

    #[test]
    fn invalid_requests_complete_with_an_error_and_count_as_outstanding() {
        let (_mgr, vol, _vm) = setup(64);
        let mut ch = vol.open_channel().unwrap();
        // Block 49 is the volume's last: 2 blocks from there run past its end.
        ch.submit(IoRequest::no_data(IoType::Unmap, 49, 2, 5))
            .unwrap();
        assert_eq!(ch.outstanding(), 1);
        let (mut now, mut got) = (0, Vec::new());
        poll_all(ch.as_mut(), &mut now, &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tag, 5);
        assert!(
            matches!(
                got[0].result,
                Err(IoError::OutOfRange {
                    end: 51,
                    capacity: 50,
                    ..
                })
            ),
            "{got:?}"
        );
        assert_eq!(ch.outstanding(), 0);
        assert_eq!(vol.stats().errors, 1);
    }

    #[test]
    fn a_closed_channel_slot_is_reused_only_once_its_requests_are_done() {
        let (mgr, vol, vm) = setup(64);
        let mut old = vol.open_channel().unwrap();
        mgr.scheduler().suspend_vm(vm).unwrap();
        old.submit(IoRequest::no_data(IoType::WriteZeroes, 0, 1, 1))
            .unwrap();
        drop(old);
        // The held request still owns the old slot: a new channel gets another one and
        // sees none of the old channel's work.
        let mut ch = vol.open_channel().unwrap();
        assert_eq!(ch.outstanding(), 0);
        mgr.scheduler().resume_vm(vm).unwrap();
        let (mut now, mut got) = (0, Vec::new());
        poll_all(ch.as_mut(), &mut now, &mut got);
        assert!(
            got.is_empty(),
            "the closed channel's completion leaked: {got:?}"
        );
        ch.submit(IoRequest::no_data(IoType::WriteZeroes, 1, 1, 2))
            .unwrap();
        poll_all(ch.as_mut(), &mut now, &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].tag, got[0].result), (2, Ok(())));
        drop(ch);
        // Both slots are idle now: the next channel reuses one of them, with a fresh count.
        let ctx = mgr.installed().unwrap();
        assert_eq!(ctx.borrow().book.chans.len(), 2);
        let ch = vol.open_channel().unwrap();
        assert_eq!(ch.outstanding(), 0);
        assert_eq!(ctx.borrow().book.chans.len(), 2);
    }
}
