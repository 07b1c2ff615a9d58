//! # vmpath-bdev: the polled block-device layer
//!
//! Every backend (RAM, null, io_uring files and block devices, and later remote NVMe/TCP
//! namespaces and local NVMe queue pairs) is a [`BlockDevice`]. The model is SPDK's bdev layer
//! (`lib/bdev/bdev.c`):
//!
//! * A [`BlockDevice`] is shared (`Send + Sync`): name, block size, capacity, supported
//!   operations, counters. It does no I/O itself.
//! * Each reactor that wants to do I/O opens its own [`IoChannel`] on the device
//!   ([`BlockDevice::open_channel`]). A channel is `!Send`: it belongs to the reactor that
//!   opened it (its io_uring, its completion queue) and is driven only from there, so the I/O
//!   path takes no lock.
//! * I/O is asynchronous and polled: [`IoChannel::submit`] queues an [`IoRequest`] (read, write,
//!   flush, unmap/deallocate, write-zeroes, with a scatter-gather list); completions come back
//!   from [`IoChannel::poll`] as [`IoCompletion`]s carrying the caller's `tag`. A full channel
//!   hands the request back (backpressure gives ownership back); nothing is dropped.
//! * Requests are validated the same way for every backend ([`validate`]): range, length of the
//!   scatter-gather list against `num_blocks * block_size`, buffer alignment. A bad request
//!   completes with a clear [`IoError`]; it never reaches the backend.
//!
//! Backends: [`null`] (completes without moving data, for benchmarks), [`malloc`] (RAM), both
//! with the simulation knobs of [`sim`] (added latency, IOPS and bandwidth capacity, like SPDK's
//! delay bdev), and [`uring`] (io_uring on a file or block device, O_DIRECT when allowed).
//!
//! Buffers are described by raw [`IoVec`]s: the memory belongs to the caller (guest memory,
//! socket buffers, DMA buffers) and must stay valid until the completion. Building an `IoVec`
//! is therefore `unsafe`; [`DmaBuf`] is an owned, aligned buffer for code that does not manage
//! its own memory.

#![allow(unsafe_code)] // Reason: I/O buffers are raw memory (guest memory, DMA buffers) lent to devices until completion.

mod buf;
pub mod malloc;
pub mod null;
mod registry;
pub mod sim;
pub mod sync;
pub mod uring;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

pub use buf::DmaBuf;
pub use registry::{BdevRegistry, RegistryError};

/// Operation of a block I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoType {
    /// Read `num_blocks` from `offset_blocks` into the buffers.
    Read,
    /// Write the buffers to `offset_blocks`.
    Write,
    /// Make previously completed writes durable. Range fields are ignored.
    Flush,
    /// Deallocate (discard / NVMe DSM deallocate) a range; reads of it return zeroes afterwards
    /// on devices that say so in [`BlockDevice::unmap_zeroes`].
    Unmap,
    /// Write zeroes to a range without a data buffer.
    WriteZeroes,
}

impl IoType {
    /// Lower-case name, as used in stats and logs.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::Flush => "flush",
            IoType::Unmap => "unmap",
            IoType::WriteZeroes => "write_zeroes",
        }
    }

    /// True if the operation moves data through the scatter-gather list.
    #[inline]
    pub fn has_data(self) -> bool {
        matches!(self, IoType::Read | IoType::Write)
    }
}

/// One segment of a scatter-gather list: raw memory lent to the device until completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    base: *mut u8,
    len: usize,
}

// SAFETY: an IoVec is a plain address/length pair; whoever built it (an `unsafe` constructor)
// promised the memory stays valid and unaliased until the I/O completes, on whatever thread
// the device touches it.
unsafe impl Send for IoVec {}

impl IoVec {
    /// Describes `len` bytes at `base`.
    ///
    /// # Safety
    /// The memory `base..base+len` must stay valid, and must not be accessed by anyone else,
    /// from the submission of the request that carries this `IoVec` until its completion has
    /// been delivered by [`IoChannel::poll`] (for reads the device writes it; for writes it
    /// reads it).
    #[inline]
    pub unsafe fn from_raw(base: *mut u8, len: usize) -> IoVec {
        IoVec { base, len }
    }

    /// Start address.
    #[inline]
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the segment is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Scatter-gather list; up to four segments inline without allocation.
pub type SgList = SmallVec<[IoVec; 4]>;

/// One block I/O request.
#[derive(Debug, Clone)]
pub struct IoRequest {
    /// Operation.
    pub op: IoType,
    /// First logical block.
    pub offset_blocks: u64,
    /// Number of logical blocks (ignored for flush).
    pub num_blocks: u32,
    /// Data buffers (reads and writes only); their lengths must add up to
    /// `num_blocks * block_size`.
    pub iovs: SgList,
    /// Caller's context, returned unchanged in the completion.
    pub tag: u64,
}

impl IoRequest {
    /// A request without data buffers (flush, unmap, write-zeroes).
    #[inline]
    pub fn no_data(op: IoType, offset_blocks: u64, num_blocks: u32, tag: u64) -> IoRequest {
        IoRequest {
            op,
            offset_blocks,
            num_blocks,
            iovs: SgList::new(),
            tag,
        }
    }

    /// A read or write over the given segments.
    #[inline]
    pub fn with_iovs(
        op: IoType,
        offset_blocks: u64,
        num_blocks: u32,
        iovs: SgList,
        tag: u64,
    ) -> IoRequest {
        IoRequest {
            op,
            offset_blocks,
            num_blocks,
            iovs,
            tag,
        }
    }

    /// Total bytes described by the scatter-gather list.
    #[inline]
    pub fn sg_len(&self) -> usize {
        self.iovs.iter().map(|v| v.len).sum()
    }
}

/// Why an I/O failed. Each maps to an NVMe / virtio-blk status at the frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// The range goes past the end of the device.
    #[error("blocks {offset}..{end} are out of range (device has {capacity} blocks)")]
    OutOfRange {
        /// First block requested.
        offset: u64,
        /// One past the last block requested.
        end: u64,
        /// Device capacity in blocks.
        capacity: u64,
    },
    /// The scatter-gather list does not match the block count.
    #[error("buffers hold {sg_bytes} bytes but {num_blocks} blocks need {want_bytes} bytes")]
    LengthMismatch {
        /// Sum of the segment lengths.
        sg_bytes: usize,
        /// Blocks requested.
        num_blocks: u32,
        /// Bytes those blocks need.
        want_bytes: u64,
    },
    /// A buffer is not aligned as the device requires (O_DIRECT).
    #[error("buffer segment is not aligned to {align} bytes")]
    Misaligned {
        /// Required alignment.
        align: usize,
    },
    /// The device does not support the operation.
    #[error("operation {0} is not supported by this device")]
    Unsupported(&'static str),
    /// The device is read-only.
    #[error("device is read-only")]
    ReadOnly,
    /// The device reported an error (errno from the kernel, or a device status).
    #[error("device I/O error (errno {0})")]
    Device(i32),
    /// No path can currently carry the I/O (multipath devices); retryable.
    #[error("no usable path")]
    NoPath,
    /// The I/O did not complete in time.
    #[error("I/O timed out")]
    Timeout,
    /// The I/O was aborted (device deleted or reset).
    #[error("I/O aborted")]
    Aborted,
}

/// A finished I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Outcome.
    pub result: Result<(), IoError>,
}

/// Why a request was not accepted; the request is handed back.
#[derive(Debug)]
pub struct SubmitError {
    /// The request, untouched.
    pub req: IoRequest,
    /// Why.
    pub reason: SubmitErrorKind,
}

/// Reasons for [`SubmitError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitErrorKind {
    /// The channel's queue is full: poll for completions, then retry.
    QueueFull,
}

/// Errors of device creation and channel opening.
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    /// A parameter is invalid.
    #[error("invalid parameter {param}: {msg}")]
    InvalidParam {
        /// Parameter name.
        param: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A backing file could not be opened or used.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An OS resource (io_uring, memory) could not be set up.
    #[error("{what}: {source}")]
    Os {
        /// What was being set up.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Static facts about a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique name.
    pub name: String,
    /// Backend kind ("malloc", "null", "uring", ...).
    pub kind: &'static str,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    /// Required buffer alignment in bytes (1 = any).
    pub buf_align: usize,
    /// Stable 128-bit identifier (NVMe NGUID / UUID of exported namespaces).
    pub uuid: [u8; 16],
    /// Largest single request in blocks the backend accepts.
    pub max_io_blocks: u32,
    /// Whether the device rejects writes.
    pub read_only: bool,
}

impl BdevInfo {
    /// The facts of an in-memory device (null, malloc): checks the geometry and derives a
    /// stable UUID from the name.
    pub fn in_memory(
        name: &str,
        kind: &'static str,
        num_blocks: u64,
        block_size: u32,
    ) -> Result<BdevInfo, BdevError> {
        check_block_size(block_size)?;
        if num_blocks == 0 {
            return Err(BdevError::InvalidParam {
                param: "num_blocks",
                msg: "must be at least 1".into(),
            });
        }
        Ok(BdevInfo {
            name: name.to_string(),
            kind,
            block_size,
            num_blocks,
            buf_align: 1,
            uuid: uuid_from_name(name),
            max_io_blocks: u32::MAX,
            read_only: false,
        })
    }
}

/// Counters of a device, summed over all its channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Completed reads.
    pub read_ops: u64,
    /// Completed writes.
    pub write_ops: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Completed flush/unmap/write-zeroes.
    pub other_ops: u64,
    /// I/Os completed with an error.
    pub errors: u64,
}

/// Device-wide counters updated by channels in batches (one atomic add per counter per poll).
#[derive(Debug, Default)]
pub struct SharedStats {
    read_ops: AtomicU64,
    write_ops: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    other_ops: AtomicU64,
    errors: AtomicU64,
}

impl SharedStats {
    /// Adds a channel's local deltas.
    pub fn add(&self, d: &IoStats) {
        if d.read_ops != 0 {
            self.read_ops.fetch_add(d.read_ops, Ordering::Relaxed);
            self.bytes_read.fetch_add(d.bytes_read, Ordering::Relaxed);
        }
        if d.write_ops != 0 {
            self.write_ops.fetch_add(d.write_ops, Ordering::Relaxed);
            self.bytes_written
                .fetch_add(d.bytes_written, Ordering::Relaxed);
        }
        if d.other_ops != 0 {
            self.other_ops.fetch_add(d.other_ops, Ordering::Relaxed);
        }
        if d.errors != 0 {
            self.errors.fetch_add(d.errors, Ordering::Relaxed);
        }
    }

    /// Current totals.
    pub fn snapshot(&self) -> IoStats {
        IoStats {
            read_ops: self.read_ops.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            other_ops: self.other_ops.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

impl IoStats {
    /// Counts one completion of `op` moving `bytes`.
    #[inline]
    pub fn count(&mut self, op: IoType, bytes: u64, ok: bool) {
        if !ok {
            self.errors += 1;
            return;
        }
        match op {
            IoType::Read => {
                self.read_ops += 1;
                self.bytes_read += bytes;
            }
            IoType::Write => {
                self.write_ops += 1;
                self.bytes_written += bytes;
            }
            _ => self.other_ops += 1,
        }
    }

    /// True if nothing was counted.
    #[inline]
    pub fn is_zero(&self) -> bool {
        *self == IoStats::default()
    }
}

/// A block device. Shared between reactors; does no I/O itself.
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Static facts.
    fn info(&self) -> &BdevInfo;

    /// Opens an I/O channel for the calling reactor. The channel must only be used there.
    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError>;

    /// Whether the device implements `op` (unsupported ops complete with
    /// [`IoError::Unsupported`]).
    fn supports(&self, op: IoType) -> bool {
        let _ = op;
        true
    }

    /// Whether reads of an unmapped range return zeroes.
    fn unmap_zeroes(&self) -> bool {
        false
    }

    /// Counters summed over all channels.
    fn stats(&self) -> IoStats;
}

/// A reactor's private queue to a device (`!Send`).
pub trait IoChannel {
    /// Queues a request. On [`SubmitErrorKind::QueueFull`] the request comes back untouched.
    /// Invalid requests are accepted and complete with an error.
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError>;

    /// Delivers finished I/Os to `done` and returns how many. `now` is the reactor's clock
    /// (nanoseconds); simulated devices use it for latency and capacity.
    fn poll(&mut self, now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize;

    /// I/Os submitted and not yet delivered by [`poll`](Self::poll).
    fn outstanding(&self) -> usize;

    /// Maximum number of outstanding I/Os the channel accepts.
    fn capacity(&self) -> usize;

    /// Queues a request on one route of a multi-route device (a fabric path of a multipath
    /// namespace, by its path index). Devices with a single route ignore `route`.
    fn submit_routed(&mut self, route: u16, req: IoRequest) -> Result<(), SubmitError> {
        let _ = route;
        self.submit(req)
    }

    /// Whether the frontend should pull more requests for this channel from its queues
    /// (virtqueues, NVMe/TCP capsules). False while the device's VM is suspended or its hold
    /// queue is full: the frontend leaves requests where they are, the guest sees no error.
    fn should_pull(&mut self) -> bool {
        true
    }
}

/// Checks a request against a device's geometry. Every backend calls this before doing I/O.
#[inline]
pub fn validate(info: &BdevInfo, req: &IoRequest) -> Result<(), IoError> {
    match req.op {
        IoType::Flush => return Ok(()),
        IoType::Write | IoType::Unmap | IoType::WriteZeroes if info.read_only => {
            return Err(IoError::ReadOnly)
        }
        _ => {}
    }
    let end = req.offset_blocks.saturating_add(req.num_blocks as u64);
    if end > info.num_blocks || req.num_blocks == 0 && req.op.has_data() {
        return Err(IoError::OutOfRange {
            offset: req.offset_blocks,
            end,
            capacity: info.num_blocks,
        });
    }
    if req.op.has_data() {
        let want = req.num_blocks as u64 * info.block_size as u64;
        let mut sg = 0usize;
        for v in &req.iovs {
            sg += v.len;
            if info.buf_align > 1
                && (!(v.base as usize).is_multiple_of(info.buf_align)
                    || !v.len.is_multiple_of(info.buf_align))
            {
                return Err(IoError::Misaligned {
                    align: info.buf_align,
                });
            }
        }
        if sg as u64 != want {
            return Err(IoError::LengthMismatch {
                sg_bytes: sg,
                num_blocks: req.num_blocks,
                want_bytes: want,
            });
        }
    }
    Ok(())
}

/// Checks a block size parameter (512 or 4096).
pub fn check_block_size(block_size: u32) -> Result<(), BdevError> {
    if block_size == 512 || block_size == 4096 {
        Ok(())
    } else {
        Err(BdevError::InvalidParam {
            param: "block_size",
            msg: format!("must be 512 or 4096, got {block_size}"),
        })
    }
}

/// Derives a stable UUID (RFC 4122 version 4 layout, name-based content) from a device name, so
/// a device keeps its identity across restarts with the same config.
pub fn uuid_from_name(name: &str) -> [u8; 16] {
    // FNV-1a 128 in two 64-bit halves with different offsets: stable, no extra dependency.
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in name.as_bytes() {
        a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ byte as u64)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(5);
    }
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a.to_be_bytes());
    u[8..].copy_from_slice(&b.to_be_bytes());
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Formats a UUID as the usual 8-4-4-4-12 string.
pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Parses an 8-4-4-4-12 hex UUID string (hyphens optional).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(u)
}
