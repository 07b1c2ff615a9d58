//! A userspace vhost-user-blk frontend that plays the guest: it owns guest RAM (memfds shared
//! with the backend), lays out split virtqueues in it, speaks the vhost-user protocol through
//! rust-vmm's `Frontend` the way QEMU does (including `reconnect=1` with the inflight region),
//! and fills the rings directly like a guest driver. Tests and the benchmark use it against
//! this crate's controller and against other vhost-user-blk targets.
//!
//! Memory layout per queue: descriptor table, available ring, used ring, then per request
//! slot an indirect table (4 entries), a 16-byte header, a status byte and a data buffer.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use rust_vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use rust_vhost::vhost_user::{Frontend, VhostUserFrontend};
use rust_vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::blk::{
    self, bit, BlkConfigSpace, DwzSegment, ReqHeader, CONFIG_SPACE_LEN, DWZ_FLAG_UNMAP,
};
use crate::chain::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::memory::GuestRam;

/// `VRING_USED_F_NO_NOTIFY`.
const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const IND_ENTRIES: u64 = 4;

/// Errors of the frontend.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A vhost-user request failed.
    #[error("vhost-user {op}: {source}")]
    Vhost {
        /// The request.
        op: &'static str,
        /// Cause.
        #[source]
        source: rust_vhost::Error,
    },
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// An OS resource failed.
    #[error("{what}: {source}")]
    Os {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No free slot or descriptor.
    #[error("queue is full")]
    QueueFull,
    /// A request does not fit its slot.
    #[error("request of {0} bytes does not fit the {1}-byte slot buffer")]
    TooLarge(u32, u32),
    /// The backend lacks a feature the options ask for.
    #[error("backend does not offer {0}")]
    MissingFeature(&'static str),
    /// Not connected.
    #[error("not connected")]
    NotConnected,
}

fn vu(op: &'static str) -> impl FnOnce(rust_vhost::Error) -> DriverError {
    move |source| DriverError::Vhost { op, source }
}

/// How the frontend sets up the device.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Queues to use (at most what the backend offers).
    pub num_queues: u16,
    /// Entries per queue.
    pub queue_size: u16,
    /// Data buffer bytes per request slot.
    pub max_data: u32,
    /// Split guest RAM into two adjacent regions (separate memfds).
    pub two_regions: bool,
    /// Guest physical address of the first region.
    pub gpa_base: u64,
    /// Negotiate `VIRTIO_RING_F_EVENT_IDX`.
    pub event_idx: bool,
    /// Build requests with indirect descriptors (needs `VIRTIO_RING_F_INDIRECT_DESC`).
    pub indirect: bool,
    /// Set up the inflight region (`INFLIGHT_SHMFD`).
    pub inflight: bool,
    /// Use `ADD_MEM_REG` (CONFIGURE_MEM_SLOTS) instead of `SET_MEM_TABLE`.
    pub mem_slots: bool,
    /// Ask for interrupts (call eventfd writes); false: the driver polls and suppresses them.
    pub interrupts: bool,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            num_queues: 1,
            queue_size: 128,
            max_data: 64 * 1024,
            two_regions: false,
            gpa_base: 0,
            event_idx: true,
            indirect: false,
            inflight: true,
            mem_slots: false,
            interrupts: true,
        }
    }
}

/// Request kinds the frontend builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqKind {
    /// VIRTIO_BLK_T_IN.
    Read,
    /// VIRTIO_BLK_T_OUT.
    Write,
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID (`len` bytes of answer buffer).
    GetId,
    /// VIRTIO_BLK_T_DISCARD of `len` bytes from `sector`.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES of `len` bytes from `sector`, with the `unmap` flag.
    WriteZeroes {
        /// Set the unmap flag.
        unmap: bool,
    },
    /// An arbitrary request type with no data (to test unsupported types).
    Raw(u32),
}

/// A completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Caller's tag.
    pub tag: u64,
    /// Head descriptor.
    pub head: u16,
    /// Slot (data buffer) of the request, if it used one.
    pub slot: Option<u16>,
    /// Status byte.
    pub status: u8,
    /// Used length reported by the device.
    pub len: u32,
}

/// Guest-physical addresses of a slot's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotAddrs {
    /// Indirect table.
    pub ind: u64,
    /// Request header.
    pub hdr: u64,
    /// Status byte.
    pub status: u64,
    /// Data buffer.
    pub data: u64,
}

#[derive(Debug, Clone)]
struct Track {
    tag: u64,
    slot: Option<u16>,
    descs: smallvec::SmallVec<[u16; 4]>,
    status_gpa: u64,
}

/// One split virtqueue driven from the guest side.
#[derive(Debug)]
pub struct DriverQueue {
    mem: GuestMemoryMmap,
    ram: GuestRam,
    index: u16,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    slot_base: u64,
    slot_stride: u64,
    max_data: u32,
    avail_idx: u16,
    kicked_at: u16,
    last_used: u16,
    free_descs: Vec<u16>,
    free_slots: Vec<u16>,
    track: Vec<Option<Track>>,
    kick: EventFd,
    call: EventFd,
    err: EventFd,
    event_idx: bool,
    indirect: bool,
    interrupts: bool,
    /// Kicks written to the kick eventfd.
    pub kicks: u64,
}

impl DriverQueue {
    /// Queue index.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest memory (to read and write buffers).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Buffers of slot `slot`.
    pub fn slot(&self, slot: u16) -> SlotAddrs {
        let b = self.slot_base + slot as u64 * self.slot_stride;
        SlotAddrs {
            ind: b,
            hdr: b + 16 * IND_ENTRIES,
            status: b + 16 * IND_ENTRIES + 16,
            data: b + 4096,
        }
    }

    /// Data buffer size of each slot.
    pub fn max_data(&self) -> u32 {
        self.max_data
    }

    /// Requests submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.track.iter().filter(|t| t.is_some()).count()
    }

    /// Free request slots.
    pub fn free_slots(&self) -> usize {
        self.free_slots.len()
    }

    /// Writes `data` into slot `slot`'s data buffer.
    pub fn write_data(&self, slot: u16, data: &[u8]) -> Result<(), DriverError> {
        self.mem
            .write_slice(data, GuestAddress(self.slot(slot).data))
            .map_err(|e| DriverError::Memory(e.to_string()))
    }

    /// Reads slot `slot`'s data buffer into `out`.
    pub fn read_data(&self, slot: u16, out: &mut [u8]) -> Result<(), DriverError> {
        self.mem
            .read_slice(out, GuestAddress(self.slot(slot).data))
            .map_err(|e| DriverError::Memory(e.to_string()))
    }

    fn reset_rings(&mut self) -> Result<(), DriverError> {
        let n = self.size as usize;
        let zero = |gpa: u64, len: usize| {
            self.mem
                .write_slice(&vec![0u8; len], GuestAddress(gpa))
                .map_err(|e| DriverError::Memory(e.to_string()))
        };
        zero(self.desc, 16 * n)?;
        zero(self.avail, 6 + 2 * n)?;
        zero(self.used, 6 + 8 * n)?;
        self.avail_idx = 0;
        self.kicked_at = 0;
        self.last_used = 0;
        self.free_descs = (0..self.size).rev().collect();
        self.free_slots = (0..self.size).rev().collect();
        self.track = vec![None; n];
        let flags = if self.interrupts {
            0
        } else {
            VRING_AVAIL_F_NO_INTERRUPT
        };
        self.store_u16(self.avail, flags)?;
        Ok(())
    }

    fn store_u16(&self, gpa: u64, v: u16) -> Result<(), DriverError> {
        if self.ram.store_u16(gpa, v) {
            Ok(())
        } else {
            Err(DriverError::Memory(format!("cannot store at {gpa:#x}")))
        }
    }

    fn load_u16(&self, gpa: u64) -> u16 {
        self.ram.load_u16(gpa).unwrap_or(0)
    }

    /// Writes descriptor `idx` of the descriptor table.
    pub fn write_desc(
        &self,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), DriverError> {
        self.write_desc_at(self.desc + idx as u64 * 16, addr, len, flags, next)
    }

    /// Writes a descriptor at an arbitrary guest address (indirect tables).
    pub fn write_desc_at(
        &self,
        gpa: u64,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), DriverError> {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        if self.ram.write(gpa, &b) {
            Ok(())
        } else {
            Err(DriverError::Memory(format!(
                "descriptor at {gpa:#x} is outside memory"
            )))
        }
    }

    /// Takes `n` free descriptors (for hand-built chains).
    pub fn alloc_descs(&mut self, n: usize) -> Result<Vec<u16>, DriverError> {
        if self.free_descs.len() < n {
            return Err(DriverError::QueueFull);
        }
        Ok((0..n).filter_map(|_| self.free_descs.pop()).collect())
    }

    /// The slot the next [`submit`](Self::submit) will use (write its data buffer first).
    pub fn next_slot(&self) -> Option<u16> {
        self.free_slots.last().copied()
    }

    fn take_descs(&mut self, n: usize) -> Result<smallvec::SmallVec<[u16; 4]>, DriverError> {
        if self.free_descs.len() < n {
            return Err(DriverError::QueueFull);
        }
        Ok((0..n).filter_map(|_| self.free_descs.pop()).collect())
    }

    /// Takes a free slot (for hand-built chains).
    pub fn alloc_slot(&mut self) -> Result<u16, DriverError> {
        self.free_slots.pop().ok_or(DriverError::QueueFull)
    }

    /// Makes a hand-built chain available. `descs` (and `slot`) are released when it completes;
    /// its status is read from `status_gpa`.
    pub fn publish(
        &mut self,
        head: u16,
        tag: u64,
        descs: Vec<u16>,
        slot: Option<u16>,
        status_gpa: u64,
    ) -> Result<(), DriverError> {
        self.publish_inner(head, tag, descs.into_iter().collect(), slot, status_gpa)
    }

    fn publish_inner(
        &mut self,
        head: u16,
        tag: u64,
        descs: smallvec::SmallVec<[u16; 4]>,
        slot: Option<u16>,
        status_gpa: u64,
    ) -> Result<(), DriverError> {
        if head >= self.size {
            // A deliberately bad head: nothing to track.
        } else {
            self.track[head as usize] = Some(Track {
                tag,
                slot,
                descs,
                status_gpa,
            });
        }
        let pos = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        self.store_u16(pos, head)?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::Release);
        self.store_u16(self.avail + 2, self.avail_idx)
    }

    /// Sets the available index directly (to test a bogus index).
    pub fn set_avail_idx_raw(&mut self, idx: u16) -> Result<(), DriverError> {
        self.store_u16(self.avail + 2, idx)
    }

    /// Builds and publishes a request; returns its slot. Call [`kick`](Self::kick) after.
    pub fn submit(
        &mut self,
        kind: ReqKind,
        sector: u64,
        len: u32,
        tag: u64,
    ) -> Result<u16, DriverError> {
        self.submit_split(kind, sector, len, tag, 1)
    }

    /// Like [`submit`](Self::submit) with the data split into `nsegs` descriptors (direct
    /// mode; indirect tables hold at most one data descriptor).
    pub fn submit_split(
        &mut self,
        kind: ReqKind,
        sector: u64,
        len: u32,
        tag: u64,
        nsegs: u16,
    ) -> Result<u16, DriverError> {
        if len > self.max_data {
            return Err(DriverError::TooLarge(len, self.max_data));
        }
        let (req_type, data_len, data_write) = match kind {
            ReqKind::Read => (blk::VIRTIO_BLK_T_IN, len, true),
            ReqKind::Write => (blk::VIRTIO_BLK_T_OUT, len, false),
            ReqKind::Flush => (blk::VIRTIO_BLK_T_FLUSH, 0, false),
            ReqKind::GetId => (blk::VIRTIO_BLK_T_GET_ID, len, true),
            ReqKind::Discard => (blk::VIRTIO_BLK_T_DISCARD, 16, false),
            ReqKind::WriteZeroes { .. } => (blk::VIRTIO_BLK_T_WRITE_ZEROES, 16, false),
            ReqKind::Raw(t) => (t, 0, false),
        };
        let hdr_sector = match kind {
            ReqKind::Discard | ReqKind::WriteZeroes { .. } => 0,
            _ => sector,
        };
        let nsegs = if data_len == 0 { 0 } else { nsegs.max(1) };
        let ndesc = 2 + nsegs as usize;
        if self.free_slots.is_empty() {
            return Err(DriverError::QueueFull);
        }
        let use_ind = self.indirect && nsegs <= 2;
        if !use_ind && self.free_descs.len() < ndesc {
            return Err(DriverError::QueueFull);
        }
        if use_ind && self.free_descs.is_empty() {
            return Err(DriverError::QueueFull);
        }
        let slot = self.alloc_slot()?;
        let a = self.slot(slot);
        let mem_err = || DriverError::Memory(format!("slot {slot} is outside guest memory"));
        let hdr = ReqHeader {
            req_type,
            sector: hdr_sector,
        }
        .encode();
        if !self.ram.write(a.hdr, &hdr) || !self.ram.write(a.status, &[0xff]) {
            return Err(mem_err());
        }
        if let ReqKind::Discard | ReqKind::WriteZeroes { .. } = kind {
            let unmap = matches!(kind, ReqKind::WriteZeroes { unmap: true });
            let seg = DwzSegment {
                sector,
                num_sectors: len / 512,
                flags: if unmap { DWZ_FLAG_UNMAP } else { 0 },
            };
            if !self.ram.write(a.data, &seg.encode()) {
                return Err(mem_err());
            }
        }
        // (addr, len, flags) of each element.
        let mut elems: smallvec::SmallVec<[(u64, u32, u16); 8]> =
            smallvec::smallvec![(a.hdr, 16, 0)];
        if nsegs > 0 {
            let dflag = if data_write { VRING_DESC_F_WRITE } else { 0 };
            let per = data_len / nsegs as u32;
            let mut off = 0u32;
            for i in 0..nsegs {
                let l = if i == nsegs - 1 { data_len - off } else { per };
                elems.push((a.data + off as u64, l, dflag));
                off += l;
            }
        }
        elems.push((a.status, 1, VRING_DESC_F_WRITE));
        let descs;
        let head;
        if use_ind {
            for (i, &(addr, l, f)) in elems.iter().enumerate() {
                let last = i == elems.len() - 1;
                let flags = if last { f } else { f | VRING_DESC_F_NEXT };
                self.write_desc_at(a.ind + 16 * i as u64, addr, l, flags, i as u16 + 1)?;
            }
            descs = self.take_descs(1)?;
            head = descs[0];
            self.write_desc(
                head,
                a.ind,
                16 * elems.len() as u32,
                VRING_DESC_F_INDIRECT,
                0,
            )?;
        } else {
            descs = self.take_descs(elems.len())?;
            for (i, &(addr, l, f)) in elems.iter().enumerate() {
                let last = i == elems.len() - 1;
                let flags = if last { f } else { f | VRING_DESC_F_NEXT };
                let next = if last { 0 } else { descs[i + 1] };
                self.write_desc(descs[i], addr, l, flags, next)?;
            }
            head = descs[0];
        }
        self.publish_inner(head, tag, descs, Some(slot), a.status)?;
        Ok(slot)
    }

    /// Notifies the device if it asked for notifications (like a guest driver).
    pub fn kick(&mut self) -> bool {
        fence(Ordering::SeqCst);
        let new = self.avail_idx;
        let old = self.kicked_at;
        if new == old {
            return false;
        }
        let need = if self.event_idx {
            let ev = self.load_u16(self.used + 4 + 8 * self.size as u64);
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.load_u16(self.used) & VRING_USED_F_NO_NOTIFY == 0
        };
        self.kicked_at = new;
        if need {
            let _ = self.kick.write(1);
            self.kicks += 1;
        }
        need
    }

    /// Notifies the device unconditionally.
    pub fn force_kick(&mut self) {
        self.kicked_at = self.avail_idx;
        let _ = self.kick.write(1);
        self.kicks += 1;
    }

    /// Collects completed requests; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let used_idx = self.load_u16(self.used + 2);
        let mut n = 0;
        while self.last_used != used_idx {
            let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
            let mut b = [0u8; 8];
            let (id, len) = if self.ram.read(e, &mut b) {
                (
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                )
            } else {
                (u32::MAX, 0)
            };
            self.last_used = self.last_used.wrapping_add(1);
            let head = id as u16;
            let Some(t) = self.track.get_mut(head as usize).and_then(|t| t.take()) else {
                continue;
            };
            let mut st = [0xffu8];
            self.ram.read(t.status_gpa, &mut st);
            let status = st[0];
            self.free_descs.extend(t.descs.iter().rev());
            if let Some(s) = t.slot {
                self.free_slots.push(s);
            }
            out.push(Completion {
                tag: t.tag,
                head,
                slot: t.slot,
                status,
                len,
            });
            n += 1;
        }
        if self.event_idx && self.interrupts {
            // Interrupt on the next completion.
            let _ = self.store_u16(self.avail + 4 + 2 * self.size as u64, self.last_used);
        }
        n
    }

    /// Waits up to `timeout` for the call eventfd; returns whether it fired.
    pub fn wait_call(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        match crate::sys::poll2(self.call.as_raw_fd(), self.call.as_raw_fd(), ms) {
            Ok((true, _)) => {
                let _ = self.call.read();
                true
            }
            _ => false,
        }
    }

    /// Whether the error eventfd fired (the device marked the queue as needing a reset).
    pub fn take_error(&self) -> bool {
        self.err.read().is_ok()
    }

    /// Polls until `n` completions arrived or `timeout` passed.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> Vec<Completion> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        while out.len() < n && Instant::now() < deadline {
            if self.poll(&mut out) == 0 {
                self.wait_call(Duration::from_millis(2));
            }
        }
        out
    }

    /// The available index the driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index the device has written.
    pub fn used_idx(&self) -> u16 {
        self.load_u16(self.used + 2)
    }

    /// Whether the device currently suppresses kicks (`VRING_USED_F_NO_NOTIFY`; without
    /// EVENT_IDX only).
    pub fn device_suppresses_kicks(&self) -> bool {
        self.load_u16(self.used) & VRING_USED_F_NO_NOTIFY != 0
    }
}

/// A connected vhost-user-blk frontend with its guest memory and queues.
pub struct BlkDriver {
    path: PathBuf,
    fe: Option<Frontend>,
    opts: DriverOptions,
    mem: GuestMemoryMmap,
    regions: Vec<VhostUserMemoryRegionInfo>,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    inflight: Option<(VhostUserInflight, File)>,
    queues: Vec<DriverQueue>,
    config: BlkConfigSpace,
}

impl std::fmt::Debug for BlkDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkDriver")
            .field("path", &self.path)
            .field("connected", &self.fe.is_some())
            .field("features", &format_args!("{:#x}", self.features))
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl BlkDriver {
    /// Creates guest memory and queues, connects to `path` and sets the device up.
    pub fn connect(path: impl AsRef<Path>, opts: DriverOptions) -> Result<BlkDriver, DriverError> {
        let qs = opts.queue_size as u64;
        let slot_stride = 4096 + round_up(opts.max_data as u64, 4096);
        let per_queue = round_up(16 * qs, 4096)
            + round_up(6 + 2 * qs, 4096)
            + round_up(6 + 8 * qs, 4096)
            + qs * slot_stride;
        let total = round_up(per_queue * opts.num_queues as u64 + (1 << 20), 2 << 20);
        let (mem, regions) = Self::make_memory(opts.gpa_base, total, opts.two_regions)?;
        let mut queues = Vec::new();
        let mut at = opts.gpa_base;
        for i in 0..opts.num_queues {
            let desc = at;
            let avail = desc + round_up(16 * qs, 4096);
            let used = avail + round_up(6 + 2 * qs, 4096);
            let slot_base = used + round_up(6 + 8 * qs, 4096);
            at = slot_base + qs * slot_stride;
            let ev = || {
                EventFd::new(EFD_NONBLOCK).map_err(|source| DriverError::Os {
                    what: "eventfd",
                    source,
                })
            };
            let mut q = DriverQueue {
                mem: mem.clone(),
                ram: GuestRam::new(std::sync::Arc::new(mem.clone())),
                index: i,
                size: opts.queue_size,
                desc,
                avail,
                used,
                slot_base,
                slot_stride,
                max_data: opts.max_data,
                avail_idx: 0,
                kicked_at: 0,
                last_used: 0,
                free_descs: Vec::new(),
                free_slots: Vec::new(),
                track: Vec::new(),
                kick: ev()?,
                call: ev()?,
                err: ev()?,
                event_idx: opts.event_idx,
                indirect: opts.indirect,
                interrupts: opts.interrupts,
                kicks: 0,
            };
            q.reset_rings()?;
            queues.push(q);
        }
        let mut d = BlkDriver {
            path: path.as_ref().to_path_buf(),
            fe: None,
            opts,
            mem,
            regions,
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            inflight: None,
            queues,
            config: BlkConfigSpace::from_bytes(&[]),
        };
        d.handshake(false)?;
        Ok(d)
    }

    fn make_memory(
        base: u64,
        total: u64,
        two: bool,
    ) -> Result<(GuestMemoryMmap, Vec<VhostUserMemoryRegionInfo>), DriverError> {
        let parts: Vec<(u64, u64)> = if two {
            let half = round_up(total / 2, 2 << 20);
            vec![(base, half), (base + half, total - half)]
        } else {
            vec![(base, total)]
        };
        let mut ranges = Vec::new();
        for &(gpa, size) in &parts {
            let f = crate::sys::memfd("vmpath-guest-ram").map_err(|source| DriverError::Os {
                what: "memfd_create",
                source,
            })?;
            f.set_len(size).map_err(|source| DriverError::Os {
                what: "ftruncate",
                source,
            })?;
            ranges.push((
                GuestAddress(gpa),
                size as usize,
                Some(FileOffset::new(f, 0)),
            ));
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(&ranges)
            .map_err(|e| DriverError::Memory(e.to_string()))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DriverError::Memory(e.to_string()))?;
        Ok((mem, regions))
    }

    fn va(&self, gpa: u64) -> u64 {
        self.regions
            .iter()
            .find(|r| gpa >= r.guest_phys_addr && gpa < r.guest_phys_addr + r.memory_size)
            .map(|r| r.userspace_addr + (gpa - r.guest_phys_addr))
            .unwrap_or(0)
    }

    /// The vhost-user message sequence QEMU sends: features, protocol features, queue count,
    /// owner, config, inflight region, memory, rings. On `reconnect`, the ring bases are the
    /// used indexes and the existing inflight region is handed back.
    fn handshake(&mut self, reconnect: bool) -> Result<(), DriverError> {
        let mut fe =
            Frontend::connect(&self.path, self.opts.num_queues as u64).map_err(vu("connect"))?;
        let offered = fe.get_features().map_err(vu("GET_FEATURES"))?;
        let mut want = bit(blk::VIRTIO_F_VERSION_1)
            | bit(blk::VHOST_USER_F_PROTOCOL_FEATURES)
            | (offered
                & (bit(blk::VIRTIO_BLK_F_SIZE_MAX)
                    | bit(blk::VIRTIO_BLK_F_SEG_MAX)
                    | bit(blk::VIRTIO_BLK_F_BLK_SIZE)
                    | bit(blk::VIRTIO_BLK_F_FLUSH)
                    | bit(blk::VIRTIO_BLK_F_TOPOLOGY)
                    | bit(blk::VIRTIO_BLK_F_CONFIG_WCE)
                    | bit(blk::VIRTIO_BLK_F_MQ)
                    | bit(blk::VIRTIO_BLK_F_DISCARD)
                    | bit(blk::VIRTIO_BLK_F_WRITE_ZEROES)
                    | bit(blk::VIRTIO_BLK_F_RO)));
        if self.opts.event_idx {
            want |= bit(blk::VIRTIO_RING_F_EVENT_IDX);
        }
        if self.opts.indirect {
            want |= bit(blk::VIRTIO_RING_F_INDIRECT_DESC);
        }
        if offered & want != want {
            return Err(DriverError::MissingFeature("a requested virtio feature"));
        }
        let pf = fe
            .get_protocol_features()
            .map_err(vu("GET_PROTOCOL_FEATURES"))?;
        let mut pwant = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG;
        if self.opts.inflight {
            pwant |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        if self.opts.mem_slots {
            pwant |= VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        }
        if !pf.contains(pwant) {
            return Err(DriverError::MissingFeature("a requested protocol feature"));
        }
        fe.set_protocol_features(pwant)
            .map_err(vu("SET_PROTOCOL_FEATURES"))?;
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let nq = fe.get_queue_num().map_err(vu("GET_QUEUE_NUM"))?;
        if nq < self.opts.num_queues as u64 {
            return Err(DriverError::MissingFeature("enough queues"));
        }
        if self.opts.mem_slots {
            fe.get_max_mem_slots().map_err(vu("GET_MAX_MEM_SLOTS"))?;
        }
        fe.set_owner().map_err(vu("SET_OWNER"))?;
        let (_, cfg) = fe
            .get_config(
                0,
                CONFIG_SPACE_LEN as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_SPACE_LEN],
            )
            .map_err(vu("GET_CONFIG"))?;
        self.config = BlkConfigSpace::from_bytes(&cfg);
        fe.set_features(want).map_err(vu("SET_FEATURES"))?;
        self.features = want;
        self.protocol = pwant;
        if self.opts.inflight {
            match (&self.inflight, reconnect) {
                (Some((info, file)), true) => {
                    fe.set_inflight_fd(info, file.as_raw_fd())
                        .map_err(vu("SET_INFLIGHT_FD"))?;
                }
                _ => {
                    let ask =
                        VhostUserInflight::new(0, 0, self.opts.num_queues, self.opts.queue_size);
                    let (info, file) = fe.get_inflight_fd(&ask).map_err(vu("GET_INFLIGHT_FD"))?;
                    fe.set_inflight_fd(&info, file.as_raw_fd())
                        .map_err(vu("SET_INFLIGHT_FD"))?;
                    self.inflight = Some((info, file));
                }
            }
        }
        if self.opts.mem_slots {
            for r in &self.regions {
                fe.add_mem_region(r).map_err(vu("ADD_MEM_REG"))?;
            }
        } else {
            fe.set_mem_table(&self.regions)
                .map_err(vu("SET_MEM_TABLE"))?;
        }
        for i in 0..self.queues.len() {
            let base = if reconnect {
                // QEMU after a backend crash: last_avail_idx restored to the used index.
                self.queues[i].used_idx()
            } else {
                self.queues[i].avail_idx_at_start()
            };
            self.setup_ring(&mut fe, i, base)?;
        }
        self.fe = Some(fe);
        Ok(())
    }

    fn setup_ring(&self, fe: &mut Frontend, i: usize, base: u16) -> Result<(), DriverError> {
        let q = &self.queues[i];
        fe.set_vring_num(i, q.size).map_err(vu("SET_VRING_NUM"))?;
        fe.set_vring_base(i, base).map_err(vu("SET_VRING_BASE"))?;
        let cfg = VringConfigData {
            queue_max_size: q.size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: self.va(q.desc),
            used_ring_addr: self.va(q.used),
            avail_ring_addr: self.va(q.avail),
            log_addr: None,
        };
        fe.set_vring_addr(i, &cfg).map_err(vu("SET_VRING_ADDR"))?;
        fe.set_vring_call(i, &q.call)
            .map_err(vu("SET_VRING_CALL"))?;
        fe.set_vring_err(i, &q.err).map_err(vu("SET_VRING_ERR"))?;
        fe.set_vring_kick(i, &q.kick)
            .map_err(vu("SET_VRING_KICK"))?;
        fe.set_vring_enable(i, true)
            .map_err(vu("SET_VRING_ENABLE"))?;
        Ok(())
    }

    /// The configuration space read at connect time.
    pub fn config(&self) -> BlkConfigSpace {
        self.config
    }

    /// Reads the configuration space again.
    pub fn read_config(&mut self) -> Result<BlkConfigSpace, DriverError> {
        let fe = self.fe.as_mut().ok_or(DriverError::NotConnected)?;
        let (_, cfg) = fe
            .get_config(
                0,
                CONFIG_SPACE_LEN as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; CONFIG_SPACE_LEN],
            )
            .map_err(vu("GET_CONFIG"))?;
        self.config = BlkConfigSpace::from_bytes(&cfg);
        Ok(self.config)
    }

    /// Writes the `writeback` config byte (CONFIG_WCE).
    pub fn set_writeback(&mut self, on: bool) -> Result<(), DriverError> {
        let fe = self.fe.as_mut().ok_or(DriverError::NotConnected)?;
        fe.set_config(
            blk::CONFIG_WRITEBACK_OFFSET as u32,
            VhostUserConfigFlags::WRITABLE,
            &[on as u8],
        )
        .map_err(vu("SET_CONFIG"))
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Queue `i`.
    pub fn queue(&mut self, i: usize) -> &mut DriverQueue {
        &mut self.queues[i]
    }

    /// Number of queues.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Closes the connection (like QEMU losing the backend, or the guest going away); queues
    /// and memory stay as they are.
    pub fn disconnect(&mut self) {
        self.fe = None;
    }

    /// Whether connected.
    pub fn is_connected(&self) -> bool {
        self.fe.is_some()
    }

    /// Reconnects like QEMU with `reconnect=1`: same memory and rings, the inflight region
    /// handed back, ring bases set to the used indexes.
    pub fn reconnect(&mut self) -> Result<(), DriverError> {
        self.fe = None;
        self.handshake(true)
    }

    /// Stops queue `i` (`GET_VRING_BASE`) and returns the base the device reports.
    pub fn stop_queue(&mut self, i: usize) -> Result<u32, DriverError> {
        let fe = self.fe.as_mut().ok_or(DriverError::NotConnected)?;
        fe.get_vring_base(i).map_err(vu("GET_VRING_BASE"))
    }

    /// Resets the device like a guest driver does (QEMU: stop every ring, drop the inflight
    /// region, start again): `GET_VRING_BASE` on every queue, clear the rings, a fresh inflight
    /// region, rings set up from index 0. Requests in flight are forgotten.
    pub fn reset_device(&mut self) -> Result<(), DriverError> {
        for i in 0..self.queues.len() {
            self.stop_queue(i)?;
        }
        for q in &mut self.queues {
            q.reset_rings()?;
        }
        let mut fe = self.fe.take().ok_or(DriverError::NotConnected)?;
        let r = (|| {
            if self.opts.inflight {
                let ask = VhostUserInflight::new(0, 0, self.opts.num_queues, self.opts.queue_size);
                let (info, file) = fe.get_inflight_fd(&ask).map_err(vu("GET_INFLIGHT_FD"))?;
                fe.set_inflight_fd(&info, file.as_raw_fd())
                    .map_err(vu("SET_INFLIGHT_FD"))?;
                self.inflight = Some((info, file));
            }
            for i in 0..self.queues.len() {
                self.setup_ring(&mut fe, i, 0)?;
            }
            Ok(())
        })();
        self.fe = Some(fe);
        r
    }

    /// The raw frontend (for messages not wrapped here).
    pub fn frontend(&mut self) -> Option<&mut Frontend> {
        self.fe.as_mut()
    }
}

impl DriverQueue {
    fn avail_idx_at_start(&self) -> u16 {
        self.avail_idx
    }
}
