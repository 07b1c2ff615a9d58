//! The uring device: io_uring on a regular file or a block device (SPDK's
//! `module/bdev/uring`, Linux `io_uring_setup(2)` / `io_uring_enter(2)`).
//!
//! * The file is opened with `O_DIRECT` when asked and when the file system allows it: the open
//!   is tried with `O_DIRECT`, then one aligned block is read as a probe; `EINVAL` from either
//!   falls back to buffered I/O. [`UringBdev::direct`] says which was chosen, and
//!   [`BdevInfo::buf_align`] is the block size with `O_DIRECT`, 1 without.
//! * Geometry: a block device's size comes from `BLKGETSIZE64` and its logical block size from
//!   `BLKSSZGET` (the default block size); a regular file's size is rounded down to whole
//!   blocks (default block size 512).
//! * One ring per channel, i.e. per reactor. [`IoChannel::submit`] only writes a submission
//!   queue entry (readv, writev, fsync, fallocate); [`IoChannel::poll`] enters the kernel once
//!   for the whole batch and reaps the completion queue without a system call. The file is a
//!   registered (fixed) file of each ring, which saves a file-table lookup per I/O.
//! * In-flight requests live in a fixed slab indexed by the entry's `user_data`; the slab owns
//!   the `iovec` array until the completion arrives. Short transfers are resubmitted for the
//!   remainder, so a request completes whole or with an error.
//! * Unmap punches a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`), write-zeroes uses
//!   `FALLOC_FL_ZERO_RANGE`; where the file system or device does not support one, the channel
//!   falls back (punch hole → zero range → writes from a zeroed buffer) and remembers it. Both
//!   therefore always read back zeroes.
//! * Each ring signals an eventfd on completion ([`UringChannel::wake_fd`]); register it with
//!   [`vmpath_runtime::Reactor::register_wake_fd`] so a sleeping reactor wakes when I/O ends.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use crate::{
    check_block_size, uuid_from_name, validate, BdevError, BdevInfo, BlockDevice, DmaBuf,
    IoChannel, IoCompletion, IoError, IoRequest, IoStats, IoType, SharedStats, SubmitError,
    SubmitErrorKind,
};

/// Default number of in-flight requests per channel (and submission queue entries per ring).
pub const DEFAULT_QUEUE_DEPTH: u32 = 256;

/// Largest queue depth a channel accepts.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// Size of the zero buffer used when the file cannot zero a range itself.
const ZERO_CHUNK: usize = 1 << 20;

/// Retries of one step that failed with `EAGAIN` / `EINTR` before the request fails.
const MAX_RETRIES: u8 = 8;

/// `_IO(0x12, 104)`: logical sector size of a block device (`int`).
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `_IOR(0x12, 114, size_t)`: size of a block device in bytes (`u64`).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The registered file index of the device in every ring.
const FILE: types::Fixed = types::Fixed(0);

/// An io_uring block device over a file or block device.
#[derive(Debug)]
pub struct UringBdev {
    info: BdevInfo,
    path: String,
    file: Arc<File>,
    direct: bool,
    block_device: bool,
    queue_depth: u32,
    stats: Arc<SharedStats>,
}

impl UringBdev {
    /// Opens `filename` (a regular file or a block device) as device `name`.
    ///
    /// `block_size` defaults to the device's logical block size (block devices) or 512
    /// (files), and must be 512 or 4096 and not smaller than the device's logical block size.
    /// With `direct`, `O_DIRECT` is used if the file system allows it (see [`direct`](Self::direct)).
    pub fn new(
        name: &str,
        filename: &str,
        block_size: Option<u32>,
        direct: bool,
    ) -> Result<UringBdev, BdevError> {
        let open_err = |source: std::io::Error| BdevError::Open {
            path: filename.to_string(),
            source,
        };
        let (file, mut is_direct) = open_file(filename, direct).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let ft = meta.file_type();
        let (size, dev_lbs) = if ft.is_block_device() {
            let size = ioctl_u64(&file, BLKGETSIZE64).map_err(open_err)?;
            let lbs = ioctl_int(&file, BLKSSZGET).map_err(open_err)?;
            (size, Some(lbs))
        } else if ft.is_file() {
            (meta.len(), None)
        } else {
            return Err(BdevError::InvalidParam {
                param: "filename",
                msg: format!("{filename} is neither a regular file nor a block device"),
            });
        };
        let block_size = match (block_size, dev_lbs) {
            (Some(bs), _) => bs,
            (None, Some(lbs)) => u32::try_from(lbs).unwrap_or(0),
            (None, None) => 512,
        };
        check_block_size(block_size)?;
        if let Some(lbs) = dev_lbs {
            if lbs <= 0 || !block_size.is_multiple_of(lbs as u32) {
                return Err(BdevError::InvalidParam {
                    param: "block_size",
                    msg: format!(
                        "{block_size} is not a multiple of the logical block size {lbs} of {filename}"
                    ),
                });
            }
        }
        let num_blocks = size / block_size as u64;
        if num_blocks == 0 {
            return Err(BdevError::InvalidParam {
                param: "filename",
                msg: format!(
                    "{filename} has {size} bytes, less than one block of {block_size} bytes"
                ),
            });
        }
        let mut file = file;
        if is_direct && !direct_read_works(&file, block_size as usize, num_blocks) {
            // The file system accepted O_DIRECT at open but not for I/O of this block size.
            let (f, _) = open_file(filename, false).map_err(open_err)?;
            file = f;
            is_direct = false;
        }
        if direct && !is_direct {
            tracing::info!(
                bdev = name,
                path = filename,
                "O_DIRECT not supported here, using buffered I/O"
            );
        }
        Ok(UringBdev {
            info: BdevInfo {
                name: name.to_string(),
                kind: "uring",
                block_size,
                num_blocks,
                buf_align: if is_direct { block_size as usize } else { 1 },
                uuid: uuid_from_name(name),
                max_io_blocks: u32::MAX,
                read_only: false,
            },
            path: filename.to_string(),
            file: Arc::new(file),
            direct: is_direct,
            block_device: ft.is_block_device(),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            stats: Arc::default(),
        })
    }

    /// Replaces the identifier derived from the name (e.g. with a configured UUID).
    pub fn with_uuid(mut self, uuid: [u8; 16]) -> Self {
        self.info.uuid = uuid;
        self
    }

    /// Sets the queue depth of channels opened from now on (1..=[`MAX_QUEUE_DEPTH`]).
    pub fn set_queue_depth(&mut self, depth: u32) -> Result<(), BdevError> {
        if depth == 0 || depth > MAX_QUEUE_DEPTH {
            return Err(BdevError::InvalidParam {
                param: "queue_depth",
                msg: format!("must be 1..={MAX_QUEUE_DEPTH}, got {depth}"),
            });
        }
        self.queue_depth = depth;
        Ok(())
    }

    /// Queue depth of new channels.
    pub fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    /// The backing file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True if the file is open with `O_DIRECT` (buffers must be aligned to the block size).
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// True if the backing file is a block device.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Opens a channel with its own ring; unlike [`BlockDevice::open_channel`] the concrete
    /// type gives access to [`UringChannel::wake_fd`].
    pub fn open_uring_channel(&self) -> Result<UringChannel, BdevError> {
        UringChannel::new(
            self.info.clone(),
            self.file.clone(),
            self.queue_depth,
            self.stats.clone(),
        )
    }
}

impl BlockDevice for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn crate::IoChannel>, BdevError> {
        Ok(Box::new(self.open_uring_channel()?))
    }

    fn unmap_zeroes(&self) -> bool {
        true
    }

    fn stats(&self) -> IoStats {
        self.stats.snapshot()
    }
}

/// Opens read-write, with `O_DIRECT` if asked; returns whether `O_DIRECT` is in effect.
fn open_file(path: &str, direct: bool) -> std::io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).custom_flags(libc::O_CLOEXEC);
    if direct {
        let mut d = opts.clone();
        d.custom_flags(libc::O_CLOEXEC | libc::O_DIRECT);
        match d.open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    opts.open(path).map(|f| (f, false))
}

/// Reads one block with `O_DIRECT` alignment (buffer aligned to the block size but not to
/// twice it, at a block-aligned offset) to learn whether direct I/O of this size works.
fn direct_read_works(file: &File, bs: usize, num_blocks: u64) -> bool {
    let mut buf = DmaBuf::with_align(2 * bs, 2 * bs);
    let off = if num_blocks > 1 { bs } else { 0 };
    let dst = &mut buf.as_mut_slice()[bs..];
    // SAFETY: `dst` is a valid, exclusively borrowed slice of `bs` bytes.
    let r = unsafe { libc::pread(file.as_raw_fd(), dst.as_mut_ptr().cast(), bs, off as i64) };
    if r < 0 {
        // Only EINVAL means "alignment refused"; other errors will show up on real I/O.
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL);
    }
    r as usize == bs
}

fn ioctl_u64(file: &File, req: libc::c_ulong) -> std::io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: `req` is an ioctl that writes one u64 to the pointer, which is valid.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn ioctl_int(file: &File, req: libc::c_ulong) -> std::io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: `req` is an ioctl that writes one int to the pointer, which is valid.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

/// What the slot's next submission queue entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// readv / writev of the remaining iovecs.
    Rw,
    /// fdatasync.
    Fsync,
    /// fallocate(PUNCH_HOLE | KEEP_SIZE).
    Punch,
    /// fallocate(ZERO_RANGE | KEEP_SIZE).
    ZeroRange,
    /// write from the zero buffer, one chunk at a time.
    WriteZeroBuf,
}

/// One in-flight request.
struct Slot {
    tag: u64,
    op: IoType,
    step: Step,
    /// Byte offset in the file of the next step.
    offset: u64,
    /// Bytes not yet transferred / zeroed.
    remaining: u64,
    /// Bytes of the whole request, for the counters.
    bytes: u64,
    retries: u8,
    /// The request's scatter-gather list; the kernel reads it until the step completes.
    iov: Vec<libc::iovec>,
    /// First iovec not fully transferred.
    iov_pos: usize,
}

impl Slot {
    fn empty() -> Slot {
        Slot {
            tag: 0,
            op: IoType::Flush,
            step: Step::Fsync,
            offset: 0,
            remaining: 0,
            bytes: 0,
            retries: 0,
            iov: Vec::with_capacity(4),
            iov_pos: 0,
        }
    }

    /// Advances past `n` transferred bytes.
    fn advance(&mut self, n: u64) {
        let n = n.min(self.remaining);
        self.remaining -= n;
        self.offset += n;
        if self.step != Step::Rw {
            return;
        }
        let mut left = n as usize;
        while left > 0 && self.iov_pos < self.iov.len() {
            let v = &mut self.iov[self.iov_pos];
            if left >= v.iov_len {
                left -= v.iov_len;
                self.iov_pos += 1;
            } else {
                // SAFETY: `left < iov_len`, so the new base stays inside the same buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                v.iov_len -= left;
                left = 0;
            }
        }
    }
}

/// Channel state apart from the ring (so the ring's queues and the state borrow separately).
struct State {
    info: BdevInfo,
    depth: usize,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    inflight: usize,
    /// Requests finished without reaching the kernel (invalid, or empty ranges).
    ready: VecDeque<(IoType, IoCompletion)>,
    /// Slots whose next step could not be queued yet (the SQ never fills by construction; this
    /// keeps a request from being lost if it ever does).
    deferred: VecDeque<u32>,
    /// The file does not support punching holes / zeroing ranges.
    no_punch: bool,
    no_zero_range: bool,
    zero: Option<DmaBuf>,
    stats: Arc<SharedStats>,
    local: IoStats,
}

impl State {
    /// Builds and queues the slot's next step.
    fn push_step(&mut self, idx: u32, sq: &mut squeue::SubmissionQueue<'_>) -> bool {
        let slot = &self.slots[idx as usize];
        let entry = match (slot.step, slot.op) {
            (Step::Rw, IoType::Read) => opcode::Readv::new(
                FILE,
                // SAFETY: iov_pos <= iov.len(), so the pointer is in bounds or one past the end.
                unsafe { slot.iov.as_ptr().add(slot.iov_pos) },
                (slot.iov.len() - slot.iov_pos) as u32,
            )
            .offset(slot.offset)
            .build(),
            (Step::Rw, _) => opcode::Writev::new(
                FILE,
                // SAFETY: as above.
                unsafe { slot.iov.as_ptr().add(slot.iov_pos) },
                (slot.iov.len() - slot.iov_pos) as u32,
            )
            .offset(slot.offset)
            .build(),
            (Step::Fsync, _) => opcode::Fsync::new(FILE)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (Step::Punch, _) => opcode::Fallocate::new(FILE, slot.remaining)
                .offset(slot.offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            (Step::ZeroRange, _) => opcode::Fallocate::new(FILE, slot.remaining)
                .offset(slot.offset)
                .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            (Step::WriteZeroBuf, _) => {
                let zero = self.zero.get_or_insert_with(|| DmaBuf::new(ZERO_CHUNK));
                let len = slot.remaining.min(ZERO_CHUNK as u64) as u32;
                opcode::Write::new(FILE, zero.as_slice().as_ptr(), len)
                    .offset(slot.offset)
                    .build()
            }
        }
        .user_data(idx as u64);
        // SAFETY: the iovec array lives in the slot, and the buffers it points to were lent by
        // the caller (IoVec contract), until this slot completes; the zero buffer lives as long
        // as the channel, which waits for in-flight I/O before dropping (see Drop).
        match unsafe { sq.push(&entry) } {
            Ok(()) => true,
            Err(_) => {
                self.deferred.push_back(idx);
                false
            }
        }
    }

    /// First step of a zeroing request, honouring what the file is known not to support.
    fn zero_step(&self, op: IoType) -> Step {
        if op == IoType::Unmap && !self.no_punch {
            Step::Punch
        } else if !self.no_zero_range {
            Step::ZeroRange
        } else {
            Step::WriteZeroBuf
        }
    }

    /// Handles one completion queue entry. Returns the request's completion when it is done.
    fn on_cqe(
        &mut self,
        idx: u64,
        res: i32,
        sq: &mut squeue::SubmissionQueue<'_>,
    ) -> Option<(IoType, u64, IoCompletion)> {
        let idx = u32::try_from(idx)
            .ok()
            .filter(|&i| (i as usize) < self.slots.len())?;
        let slot = &mut self.slots[idx as usize];
        let result = if res < 0 {
            let errno = -res;
            match errno {
                libc::EOPNOTSUPP | libc::EINVAL
                    if matches!(slot.step, Step::Punch | Step::ZeroRange) =>
                {
                    // Fall back to the next way of zeroing, for this and later requests.
                    if slot.step == Step::Punch {
                        self.no_punch = true;
                        slot.step = Step::ZeroRange;
                    } else {
                        self.no_zero_range = true;
                        slot.step = Step::WriteZeroBuf;
                    }
                    self.push_step(idx, sq);
                    return None;
                }
                libc::EAGAIN | libc::EINTR if slot.retries < MAX_RETRIES => {
                    slot.retries += 1;
                    self.push_step(idx, sq);
                    return None;
                }
                _ => Err(IoError::Device(errno)),
            }
        } else {
            match slot.step {
                Step::Rw | Step::WriteZeroBuf => {
                    if res == 0 {
                        // End of file inside the device's range (the file shrank).
                        Err(IoError::Device(libc::EIO))
                    } else {
                        slot.advance(res as u64);
                        if slot.remaining > 0 {
                            slot.retries = 0;
                            self.push_step(idx, sq);
                            return None;
                        }
                        Ok(())
                    }
                }
                Step::Fsync | Step::Punch | Step::ZeroRange => Ok(()),
            }
        };
        let slot = &mut self.slots[idx as usize];
        let out = (
            slot.op,
            slot.bytes,
            IoCompletion {
                tag: slot.tag,
                result,
            },
        );
        slot.iov.clear();
        self.free.push(idx);
        self.inflight -= 1;
        Some(out)
    }
}

/// How a channel zeroes ranges (see [`UringChannel::zeroing_support`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroingSupport {
    /// Unmap uses `FALLOC_FL_PUNCH_HOLE`.
    pub punch_hole: bool,
    /// Write-zeroes (and unmap without punch hole) use `FALLOC_FL_ZERO_RANGE`; without it,
    /// zeroes are written from a zeroed buffer.
    pub zero_range: bool,
}

/// A reactor's ring on a [`UringBdev`] (`!Send`).
pub struct UringChannel {
    // Declared first so it is dropped first (after Drop waited for in-flight I/O).
    ring: IoUring,
    st: State,
    eventfd: Option<OwnedFd>,
    /// The eventfd was signalled (completions were reaped) and not drained since.
    needs_drain: bool,
    _file: Arc<File>,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for UringChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringChannel")
            .field("bdev", &self.st.info.name)
            .field("depth", &self.st.depth)
            .field("inflight", &self.st.inflight)
            .finish_non_exhaustive()
    }
}

impl UringChannel {
    fn new(
        info: BdevInfo,
        file: Arc<File>,
        depth: u32,
        stats: Arc<SharedStats>,
    ) -> Result<UringChannel, BdevError> {
        let os = |what| move |source| BdevError::Os { what, source };
        let ring = IoUring::builder()
            .setup_cqsize(depth * 2)
            .build(depth)
            .map_err(os("creating io_uring"))?;
        ring.submitter()
            .register_files(&[file.as_raw_fd()])
            .map_err(os("registering the file with io_uring"))?;
        // SAFETY: eventfd(2) has no memory arguments; the result is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        let eventfd = if efd >= 0 {
            // SAFETY: `efd` is a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(efd) };
            match ring.submitter().register_eventfd(fd.as_raw_fd()) {
                Ok(()) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring eventfd not available; no wake-ups");
                    None
                }
            }
        } else {
            None
        };
        let depth = depth as usize;
        Ok(UringChannel {
            ring,
            st: State {
                info,
                depth,
                slots: (0..depth).map(|_| Slot::empty()).collect(),
                free: (0..depth as u32).rev().collect(),
                inflight: 0,
                ready: VecDeque::with_capacity(depth),
                deferred: VecDeque::new(),
                no_punch: false,
                no_zero_range: false,
                zero: None,
                stats,
                local: IoStats::default(),
            },
            eventfd,
            needs_drain: false,
            _file: file,
            _not_send: PhantomData,
        })
    }

    /// An eventfd that becomes readable when this ring posts completions: register it with
    /// the reactor ([`vmpath_runtime::Reactor::register_wake_fd`]) so the reactor's idle sleep
    /// ends when I/O completes. [`poll`](IoChannel::poll) drains it.
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.eventfd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Which kernel zeroing operations this channel still uses (each turns false once the file
    /// refused it and the channel fell back to the next way).
    pub fn zeroing_support(&self) -> ZeroingSupport {
        ZeroingSupport {
            punch_hole: !self.st.no_punch,
            zero_range: !self.st.no_zero_range,
        }
    }

    /// [`reap`](Self::reap), then submits what it re-queued; notes that the eventfd needs
    /// draining once completions have been seen. Returns how many requests finished.
    fn reap_and_resubmit(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let (k, requeued) = self.reap(done);
        if k > 0 {
            self.needs_drain = true;
        }
        if requeued {
            self.flush_sq();
        }
        k
    }

    /// Reaps every completion queue entry now visible. Returns how many requests finished.
    fn reap(&mut self, done: &mut dyn FnMut(IoCompletion)) -> (usize, bool) {
        let (_, mut sq, mut cq) = self.ring.split();
        let mut n = 0;
        let before = sq.len();
        for cqe in &mut cq {
            if let Some((op, bytes, c)) = self.st.on_cqe(cqe.user_data(), cqe.result(), &mut sq) {
                self.st.local.count(op, bytes, c.result.is_ok());
                done(c);
                n += 1;
            }
        }
        let requeued = sq.len() != before;
        (n, requeued)
    }

    /// Enters the kernel to submit what is queued in the SQ.
    fn flush_sq(&mut self) {
        if !self.st.deferred.is_empty() {
            let mut sq = self.ring.submission();
            for _ in 0..self.st.deferred.len() {
                let Some(idx) = self.st.deferred.pop_front() else {
                    break;
                };
                if !self.st.push_step(idx, &mut sq) {
                    break;
                }
            }
        }
        let pending = !self.ring.submission().is_empty();
        if pending {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EBUSY | libc::EINTR)
                    ) => {}
                Err(e) => {
                    tracing::warn!(bdev = %self.st.info.name, error = %e, "io_uring_enter failed")
                }
            }
        }
    }

    fn drain_eventfd(&self) {
        if let Some(fd) = &self.eventfd {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a valid u64 from a non-blocking eventfd we own.
            let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }
}

impl IoChannel for UringChannel {
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError> {
        let st = &mut self.st;
        if st.inflight + st.ready.len() >= st.depth {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        }
        if let Err(e) = validate(&st.info, &req) {
            st.ready.push_back((
                req.op,
                IoCompletion {
                    tag: req.tag,
                    result: Err(e),
                },
            ));
            return Ok(());
        }
        let bs = st.info.block_size as u64;
        let bytes = req.num_blocks as u64 * bs;
        if bytes == 0 && req.op != IoType::Flush {
            // An empty unmap / write-zeroes range: nothing to do.
            st.ready.push_back((
                req.op,
                IoCompletion {
                    tag: req.tag,
                    result: Ok(()),
                },
            ));
            return Ok(());
        }
        let Some(idx) = st.free.pop() else {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        };
        let step = match req.op {
            IoType::Read | IoType::Write => Step::Rw,
            IoType::Flush => Step::Fsync,
            IoType::Unmap | IoType::WriteZeroes => st.zero_step(req.op),
        };
        let slot = &mut st.slots[idx as usize];
        slot.tag = req.tag;
        slot.op = req.op;
        slot.step = step;
        slot.offset = req.offset_blocks * bs;
        slot.remaining = if req.op == IoType::Flush { 0 } else { bytes };
        slot.bytes = if req.op.has_data() { bytes } else { 0 };
        slot.retries = 0;
        slot.iov.clear();
        slot.iov_pos = 0;
        if req.op.has_data() {
            slot.iov.extend(req.iovs.iter().map(|v| libc::iovec {
                iov_base: v.base().cast(),
                iov_len: v.len(),
            }));
        }
        st.inflight += 1;
        let mut sq = self.ring.submission();
        // A push that finds the SQ full parks the slot in `deferred`; it is queued on the next
        // poll. The SQ has at least `depth` entries, so this does not happen in practice.
        st.push_step(idx, &mut sq);
        Ok(())
    }

    fn poll(&mut self, _now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some((op, c)) = self.st.ready.pop_front() {
            self.st.local.count(op, 0, c.result.is_ok());
            done(c);
            n += 1;
        }
        if self.st.inflight > 0 {
            self.flush_sq();
            n += self.reap_and_resubmit(done);
        }
        if n == 0 && self.needs_drain {
            // Idle: consume the eventfd's count so the reactor can sleep on it, then look once
            // more so a completion posted just before the drain is not left unseen.
            self.needs_drain = false;
            self.drain_eventfd();
            n += self.reap_and_resubmit(done);
        }
        if !self.st.local.is_zero() {
            self.st.stats.add(&self.st.local);
            self.st.local = IoStats::default();
        }
        n
    }

    fn outstanding(&self) -> usize {
        self.st.inflight + self.st.ready.len()
    }

    fn capacity(&self) -> usize {
        self.st.depth
    }
}

impl Drop for UringChannel {
    fn drop(&mut self) {
        // The kernel may still write to the caller's buffers and read the slots' iovec arrays:
        // wait for every in-flight request before the ring and the slots go away.
        if self.st.inflight == 0 {
            return;
        }
        tracing::warn!(
            bdev = %self.st.info.name,
            inflight = self.st.inflight,
            "uring channel dropped with I/O in flight; waiting for it"
        );
        let mut lost = 0usize;
        while self.st.inflight > 0 {
            self.flush_sq();
            if self.ring.submit_and_wait(1).is_err() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let (k, _) = self.reap(&mut |_| {});
            lost += k;
        }
        tracing::warn!(bdev = %self.st.info.name, completions = lost, "dropped completions");
    }
}
