//! One virtqueue served by one reactor: the data path.
//!
//! The control thread builds a [`QueueSetup`] once the ring is fully described (memory,
//! addresses, kick fd, enabled) and hands it to the queue's reactor by message; from then on the
//! ring, its block-device channel and its gate channel belong to that reactor alone and no lock
//! is taken. Later changes (new call fd, new memory table, suspend, stop) arrive as messages too.
//!
//! Each poll pass (SPDK's vhost-blk poller, VIRTIO 1.2 2.7.13 "Supplying Buffers to The
//! Device" and 2.7.14 "Receiving Used Buffers From The Device"):
//! 1. deliver block-device completions: status byte, inflight bookkeeping, used ring entry;
//! 2. pull new heads from the available ring (bounded batch), walk and check each chain, ask
//!    the VM's gate, submit to the block device (zero copy: the scatter-gather list points
//!    into guest memory);
//! 3. poll the device once more and signal the guest at most once for the whole pass
//!    (`EVENT_IDX` `used_event`, or `VRING_AVAIL_F_NO_INTERRUPT`);
//! 4. adaptive notification: while requests keep coming the guest's kicks stay suppressed
//!    (`VRING_USED_F_NO_NOTIFY`, or a stale `avail_event`); after `notify_idle_ns` without new
//!    requests they are re-enabled, the ring is checked again (the race-free re-check of
//!    2.7.10) and the reactor may sleep on the kick eventfd.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmpath_bdev::{BlockDevice, IoChannel, IoCompletion, IoError, IoRequest, IoType, SgList};
use vmpath_runtime::{PollStatus, PollerId, Reactor};

use crate::blk::{ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use crate::chain::{self, Chain, ChainLimits};
use crate::gate::{Admit, GateChannel, GateIo, IoGate};
use crate::inflight::InflightQueue;
use crate::memory::{translate, GuestRam};
use crate::request::{self, Geometry, Parsed, SegList};

/// Most heads pulled from one ring in one poll pass.
pub const MAX_BATCH: usize = 64;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// How often a queue whose gate refuses pulling (`GateChannel::should_pull`) asks again.
const GATE_PAUSE_RETRY_NS: u64 = 1_000_000;
/// Idle passes in the notification-enabled state between two defensive kick-fd drains.
const DRAIN_EVERY_IDLE_PASSES: u32 = 1024;

/// Errors of starting a queue on its reactor.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring does not fit the queue size or lies outside guest memory.
    #[error("queue {index}: ring addresses are invalid for size {size}: {msg}")]
    BadRing {
        /// Queue index.
        index: u16,
        /// Queue size.
        size: u16,
        /// Detail.
        msg: String,
    },
    /// The block device refused a channel.
    #[error("queue {index}: cannot open block-device channel: {source}")]
    Channel {
        /// Queue index.
        index: u16,
        /// Cause.
        #[source]
        source: vmpath_bdev::BdevError,
    },
    /// An OS call failed (eventfd mode, epoll registration).
    #[error("queue {index}: {what}: {source}")]
    Os {
        /// Queue index.
        index: u16,
        /// What failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Live counters of one virtqueue (updated once per poll pass; read from any thread).
/// Each field is documented in [`QueueStats`].
#[derive(Debug, Default)]
pub struct QueueCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    get_ids: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    io_errors: AtomicU64,
    unsupported: AtomicU64,
    bad_chains: AtomicU64,
    needs_reset: AtomicU64,
    gate_holds: AtomicU64,
    interrupts: AtomicU64,
    kicks: AtomicU64,
    notify_enables: AtomicU64,
    resubmitted: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of one virtqueue's counters (or their sum over a controller).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Reads completed (any status).
    pub reads: u64,
    /// Writes completed (any status).
    pub writes: u64,
    /// Flushes completed.
    pub flushes: u64,
    /// Discards completed.
    pub discards: u64,
    /// Write-zeroes completed.
    pub write_zeroes: u64,
    /// GET_ID requests answered.
    pub get_ids: u64,
    /// Bytes read successfully.
    pub bytes_read: u64,
    /// Bytes written successfully.
    pub bytes_written: u64,
    /// Requests completed with `VIRTIO_BLK_S_IOERR`.
    pub io_errors: u64,
    /// Requests completed with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: u64,
    /// Malformed chains (failed request or broken queue).
    pub bad_chains: u64,
    /// Times the queue was marked as needing a reset.
    pub needs_reset: u64,
    /// Times the gate held a request.
    pub gate_holds: u64,
    /// Call-eventfd writes (guest interrupts).
    pub interrupts: u64,
    /// Kick-eventfd reads that found kicks pending.
    pub kicks: u64,
    /// Times guest notifications were re-enabled after an idle period.
    pub notify_enables: u64,
    /// Requests re-run from the inflight region after a reconnect.
    pub resubmitted: u64,
    /// Requests currently at the block device or held.
    pub in_flight: u64,
}

impl QueueCounters {
    /// Current values.
    pub fn snapshot(&self) -> QueueStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            reads: l(&self.reads),
            writes: l(&self.writes),
            flushes: l(&self.flushes),
            discards: l(&self.discards),
            write_zeroes: l(&self.write_zeroes),
            get_ids: l(&self.get_ids),
            bytes_read: l(&self.bytes_read),
            bytes_written: l(&self.bytes_written),
            io_errors: l(&self.io_errors),
            unsupported: l(&self.unsupported),
            bad_chains: l(&self.bad_chains),
            needs_reset: l(&self.needs_reset),
            gate_holds: l(&self.gate_holds),
            interrupts: l(&self.interrupts),
            kicks: l(&self.kicks),
            notify_enables: l(&self.notify_enables),
            resubmitted: l(&self.resubmitted),
            in_flight: l(&self.in_flight),
        }
    }

    fn add(&self, d: &QueueStats) {
        let a = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        a(&self.reads, d.reads);
        a(&self.writes, d.writes);
        a(&self.flushes, d.flushes);
        a(&self.discards, d.discards);
        a(&self.write_zeroes, d.write_zeroes);
        a(&self.get_ids, d.get_ids);
        a(&self.bytes_read, d.bytes_read);
        a(&self.bytes_written, d.bytes_written);
        a(&self.io_errors, d.io_errors);
        a(&self.unsupported, d.unsupported);
        a(&self.bad_chains, d.bad_chains);
        a(&self.needs_reset, d.needs_reset);
        a(&self.gate_holds, d.gate_holds);
        a(&self.interrupts, d.interrupts);
        a(&self.kicks, d.kicks);
        a(&self.notify_enables, d.notify_enables);
        a(&self.resubmitted, d.resubmitted);
    }
}

impl QueueStats {
    /// Sums two snapshots (gauges are summed too).
    pub fn merge(&mut self, o: &QueueStats) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.flushes += o.flushes;
        self.discards += o.discards;
        self.write_zeroes += o.write_zeroes;
        self.get_ids += o.get_ids;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.io_errors += o.io_errors;
        self.unsupported += o.unsupported;
        self.bad_chains += o.bad_chains;
        self.needs_reset += o.needs_reset;
        self.gate_holds += o.gate_holds;
        self.interrupts += o.interrupts;
        self.kicks += o.kicks;
        self.notify_enables += o.notify_enables;
        self.resubmitted += o.resubmitted;
        self.in_flight += o.in_flight;
    }
}

/// Device parameters every queue of a disk shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevParams {
    pub geometry: Geometry,
    pub writeback: bool,
    pub serial: [u8; ID_BYTES],
    pub seg_max: u32,
    pub notify_idle_ns: u64,
}

/// Everything a reactor needs to run one virtqueue.
pub(crate) struct QueueSetup {
    pub key: u64,
    pub index: u16,
    pub vm: Arc<str>,
    pub size: u16,
    pub desc_gpa: u64,
    pub avail_gpa: u64,
    pub used_gpa: u64,
    pub event_idx: bool,
    pub indirect: bool,
    pub base: u16,
    pub mem: Arc<GuestMemoryMmap>,
    pub kick: Option<File>,
    pub call: Option<File>,
    pub err: Option<File>,
    pub inflight: Option<InflightQueue>,
    pub bdev: Arc<dyn BlockDevice>,
    pub gate: Arc<dyn IoGate>,
    pub dev: DevParams,
    pub counters: Arc<QueueCounters>,
    pub suspended: bool,
}

/// How a queue stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// `GET_VRING_BASE` / disable / reset: finish in-flight requests into the used ring.
    Complete,
    /// Frontend gone or controller stopping: let the device finish in-flight requests but
    /// do not touch the guest's rings any more (the inflight region re-runs them).
    Freeze,
}

/// Final state of a stopped queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StopReply {
    pub next_avail: u16,
    pub broken: bool,
}

#[derive(Default)]
pub(crate) struct VhostLocal {
    queues: HashMap<u64, Rc<RefCell<Worker>>>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    busy: bool,
    op: IoType,
    flush_after: bool,
    in_flush: bool,
    status_gpa: u64,
    used_len: u32,
    bytes: u64,
    start_ns: u64,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            busy: false,
            op: IoType::Flush,
            flush_after: false,
            in_flush: false,
            status_gpa: 0,
            used_len: 0,
            bytes: 0,
            start_ns: 0,
        }
    }
}

struct Pending {
    head: u16,
    req: IoRequest,
    status_gpa: u64,
    used_len: u32,
    bytes: u64,
    from_ring: bool,
    admitted: bool,
}

pub(crate) struct Worker {
    chan: Box<dyn IoChannel>,
    c: Core,
}

struct Core {
    key: u64,
    index: u16,
    vm: Arc<str>,
    queue: Queue,
    size: u16,
    desc_gpa: u64,
    avail_gpa: u64,
    ram: GuestRam,
    retired: Vec<GuestRam>,
    kick: Option<File>,
    call: Option<File>,
    err: Option<File>,
    inflight: Option<InflightQueue>,
    counter: u64,
    gate: Box<dyn GateChannel>,
    dev: DevParams,
    limits: ChainLimits,
    slots: Box<[Slot]>,
    in_flight: usize,
    held: Option<Pending>,
    resubmit: VecDeque<u16>,
    followups: Vec<u16>,
    used_added: bool,
    notify_enabled: bool,
    last_activity: u64,
    idle_passes: u32,
    suspended: bool,
    suspend_waiters: Vec<Sender<()>>,
    stopping: Option<(StopMode, Sender<StopReply>)>,
    broken: bool,
    wake_registered: bool,
    poller: Option<PollerId>,
    retry_timer: Option<PollerId>,
    gate_paused: bool,
    scratch: Chain,
    d: QueueStats,
    counters: Arc<QueueCounters>,
}

fn bad_ring(index: u16, size: u16, msg: impl Into<String>) -> QueueError {
    QueueError::BadRing {
        index,
        size,
        msg: msg.into(),
    }
}

impl Worker {
    /// Builds the queue on reactor `r` and registers its poller.
    pub(crate) fn start(r: &mut Reactor, s: QueueSetup) -> Result<(), QueueError> {
        let index = s.index;
        let size = s.size;
        let mut queue = Queue::new(size).map_err(|e| bad_ring(index, size, e.to_string()))?;
        queue
            .try_set_desc_table_address(GuestAddress(s.desc_gpa))
            .map_err(|e| bad_ring(index, size, e.to_string()))?;
        queue
            .try_set_avail_ring_address(GuestAddress(s.avail_gpa))
            .map_err(|e| bad_ring(index, size, e.to_string()))?;
        queue
            .try_set_used_ring_address(GuestAddress(s.used_gpa))
            .map_err(|e| bad_ring(index, size, e.to_string()))?;
        queue.set_event_idx(s.event_idx);
        queue.set_ready(true);
        if !queue.is_valid(&*s.mem) {
            return Err(bad_ring(index, size, "rings are not inside guest memory"));
        }
        let used = queue
            .used_idx(&*s.mem, Ordering::Acquire)
            .map_err(|e| bad_ring(index, size, e.to_string()))?
            .0;
        queue.set_next_used(used);
        let mut next_avail = s.base;
        let mut resubmit = VecDeque::new();
        let mut counter = 1;
        if let Some(inf) = &s.inflight {
            let rec = inf.recover(used);
            next_avail = used.wrapping_add(rec.heads.len() as u16);
            counter = rec.next_counter;
            if !rec.heads.is_empty() || rec.fixed_last_batch {
                tracing::info!(
                    vm = %s.vm,
                    queue = index,
                    resubmit = rec.heads.len(),
                    repaired = rec.fixed_last_batch,
                    "inflight region: re-running requests of the previous connection"
                );
            }
            resubmit = rec.heads.into();
        }
        queue.set_next_avail(next_avail);
        if let Some(k) = &s.kick {
            crate::sys::set_nonblocking(k).map_err(|source| QueueError::Os {
                index,
                what: "set kick eventfd non-blocking",
                source,
            })?;
        }
        let chan = s
            .bdev
            .open_channel()
            .map_err(|source| QueueError::Channel { index, source })?;
        let gate = s.gate.open(&s.vm, index, r);
        let limits = ChainLimits {
            max_descs: size as u32,
            indirect: s.indirect,
            max_segs: (s.dev.seg_max as usize + 2).min(size as usize),
        };
        let now = r.now();
        let w = Worker {
            chan,
            c: Core {
                key: s.key,
                index,
                vm: s.vm,
                queue,
                size,
                desc_gpa: s.desc_gpa,
                avail_gpa: s.avail_gpa,
                ram: GuestRam::new(s.mem),
                retired: Vec::new(),
                kick: s.kick,
                call: s.call,
                err: s.err,
                inflight: s.inflight,
                counter,
                gate,
                dev: s.dev,
                limits,
                slots: vec![Slot::default(); size as usize].into_boxed_slice(),
                in_flight: 0,
                held: None,
                resubmit,
                followups: Vec::new(),
                used_added: false,
                notify_enabled: false,
                last_activity: now,
                idle_passes: 0,
                suspended: s.suspended,
                suspend_waiters: Vec::new(),
                stopping: None,
                broken: false,
                wake_registered: false,
                poller: None,
                retry_timer: None,
                gate_paused: false,
                scratch: Chain::default(),
                d: QueueStats::default(),
                counters: s.counters,
            },
        };
        let cell = Rc::new(RefCell::new(w));
        let kick_fd = cell.borrow().c.kick.as_ref().map(|k| k.as_raw_fd());
        if let (false, Some(fd)) = (s.suspended, kick_fd) {
            r.register_wake_fd(fd).map_err(|source| QueueError::Os {
                index,
                what: "register kick eventfd",
                source,
            })?;
            cell.borrow_mut().c.wake_registered = true;
        }
        let c2 = cell.clone();
        let name = format!("vhost-blk:{}:q{}", cell.borrow().c.vm, index);
        let pid = r.register_poller(name, move |r| c2.borrow_mut().poll(r));
        cell.borrow_mut().c.poller = Some(pid);
        r.local::<VhostLocal>().queues.insert(s.key, cell);
        Ok(())
    }

    /// Runs `f` on the worker `key` of reactor `r`, if it still exists.
    pub(crate) fn with<T>(
        r: &mut Reactor,
        key: u64,
        f: impl FnOnce(&mut Worker, &mut Reactor) -> T,
    ) -> Option<T> {
        let w = r.local::<VhostLocal>().queues.get(&key).cloned()?;
        let mut w = w.borrow_mut();
        Some(f(&mut w, r))
    }

    /// Stops pulling the ring; `reply` gets the final state once in-flight requests are done.
    pub(crate) fn begin_stop(&mut self, r: &mut Reactor, mode: StopMode, reply: Sender<StopReply>) {
        let c = &mut self.c;
        if let Some(p) = c.held.take() {
            if mode == StopMode::Complete {
                c.undo_fetch(p);
            }
        }
        if mode == StopMode::Freeze {
            c.followups.clear();
        }
        for w in c.suspend_waiters.drain(..) {
            let _ = w.send(());
        }
        c.stopping = Some((mode, reply));
        self.maybe_finish_stop(r);
    }

    /// Stops pulling the ring; `done` is signalled once nothing is in flight.
    pub(crate) fn suspend(&mut self, r: &mut Reactor, done: Sender<()>) {
        let c = &mut self.c;
        c.suspended = true;
        if let Some(p) = c.held.take() {
            c.undo_fetch(p);
        }
        c.unregister_wake(r);
        if c.in_flight == 0 {
            let _ = done.send(());
        } else {
            c.suspend_waiters.push(done);
        }
    }

    /// Pulls the ring again after [`suspend`](Self::suspend).
    pub(crate) fn resume(&mut self, r: &mut Reactor) {
        let c = &mut self.c;
        if !c.suspended {
            return;
        }
        c.suspended = false;
        if !c.broken && c.stopping.is_none() {
            c.register_wake(r);
        }
        // Poll at once; the ring may have filled while suspended.
        let _ = c.queue.disable_notification(c.ram.mmap());
        c.notify_enabled = false;
        c.last_activity = r.now();
    }

    /// Replaces the call eventfd (`SET_VRING_CALL` on a running ring).
    pub(crate) fn set_call(&mut self, call: Option<File>) {
        self.c.call = call;
    }

    /// Replaces the error eventfd.
    pub(crate) fn set_err(&mut self, err: Option<File>) {
        self.c.err = err;
    }

    /// Switches to a new guest memory snapshot; the old one stays mapped while requests that
    /// point into it are in flight.
    pub(crate) fn set_mem(&mut self, mem: Arc<GuestMemoryMmap>) {
        let c = &mut self.c;
        let old = std::mem::replace(&mut c.ram, GuestRam::new(mem));
        if c.in_flight > 0 {
            c.retired.push(old);
        }
    }

    /// Write-back (true) or write-through cache mode (CONFIG_WCE).
    pub(crate) fn set_writeback(&mut self, on: bool) {
        self.c.dev.writeback = on;
    }

    fn poll(&mut self, r: &mut Reactor) -> PollStatus {
        let now = r.now();
        // Always poll the device first, even with nothing in flight: simulated devices take
        // their notion of `now` for new submissions from the last poll.
        let mut work = self.reap(now);
        let mut pulled = false;
        self.c.gate_paused = self.c.pulling() && !self.c.gate.should_pull(now);
        if self.c.gate_paused {
            // The gate stopped this VM (failover hold): leave the ring alone, do not let
            // kicks keep the reactor awake, look again after a while.
            if self.c.notify_enabled {
                self.c.drain_kick();
            }
            self.c.arm_retry(r, GATE_PAUSE_RETRY_NS);
        } else if self.c.pulling() {
            if self.c.held.is_none() {
                self.c.cancel_retry(r);
            }
            pulled = self.pull(r, now);
            work |= pulled;
            if pulled && self.c.in_flight > 0 {
                // Devices that complete at once (null, RAM) finish in the same pass.
                self.reap(now);
            }
        }
        if self.c.used_added {
            self.c.notify_guest();
        }
        if self.c.in_flight == 0 && !self.c.retired.is_empty() {
            self.c.retired.clear();
        }
        if self.c.pulling() && !self.c.gate_paused {
            work |= self.c.adapt_notifications(now, pulled);
        }
        if self.c.broken && self.c.wake_registered {
            self.c.unregister_wake(r);
        }
        self.c.publish();
        if self.c.suspended && self.c.in_flight == 0 {
            for w in self.c.suspend_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        if self.c.stopping.is_some() {
            self.maybe_finish_stop(r);
        }
        // Busy while requests are in flight, and while guest kicks are suppressed: the reactor
        // must not sleep before notifications are re-enabled, or a request could wait for the
        // reactor's next timer instead of waking it.
        let polling_for_guest = self.c.pulling() && !self.c.gate_paused && !self.c.notify_enabled;
        PollStatus::from_work(work || self.c.in_flight > 0 || polling_for_guest)
    }

    /// Delivers device completions and submits write-through flushes.
    fn reap(&mut self, now: u64) -> bool {
        let c = &mut self.c;
        let n = self.chan.poll(now, &mut |cpl| c.on_complete(cpl, now));
        while let Some(&head) = self.c.followups.last() {
            let req = IoRequest::no_data(IoType::Flush, 0, 0, head as u64);
            if self.chan.submit(req).is_err() {
                break;
            }
            self.c.followups.pop();
        }
        n > 0
    }

    /// Pulls and submits requests: held first, then inflight re-runs, then the ring.
    fn pull(&mut self, r: &mut Reactor, now: u64) -> bool {
        let mut did = false;
        if let Some(p) = self.c.held.take() {
            match self.try_submit(r, p, now) {
                Ok(()) => did = true,
                Err(p) => {
                    self.c.held = Some(p);
                    return did;
                }
            }
        }
        while let Some(head) = self.c.resubmit.pop_front() {
            did = true;
            self.c.d.resubmitted += 1;
            self.process_head(r, head, false, now);
            if self.c.held.is_some() || !self.c.pulling() {
                return did;
            }
        }
        let c = &mut self.c;
        let Some(avail) = c.ram.load_u16(c.avail_gpa + 2) else {
            c.mark_broken("cannot read available index");
            return did;
        };
        let next = c.queue.next_avail();
        let pending = avail.wrapping_sub(next);
        if pending == 0 {
            return did;
        }
        if pending > c.size {
            c.mark_broken(&format!(
                "available index jumped from {next} to {avail} (queue size {})",
                c.size
            ));
            return did;
        }
        let n = (pending as usize).min(MAX_BATCH);
        for i in 0..n {
            let pos = next.wrapping_add(i as u16);
            let c = &mut self.c;
            let addr = c.avail_gpa + 4 + 2 * (pos % c.size) as u64;
            let Some(head) = c.ram.load_u16(addr) else {
                c.mark_broken("cannot read available ring");
                return true;
            };
            c.queue.set_next_avail(pos.wrapping_add(1));
            did = true;
            self.process_head(r, head, true, now);
            if self.c.held.is_some() || !self.c.pulling() {
                break;
            }
        }
        did
    }

    /// Walks, checks and submits (or completes) the request at `head`.
    fn process_head(&mut self, r: &mut Reactor, head: u16, from_ring: bool, now: u64) {
        let c = &mut self.c;
        if head >= c.size {
            c.d.bad_chains += 1;
            c.mark_broken(&format!("head {head} is out of range"));
            return;
        }
        if c.slots[head as usize].busy {
            c.d.bad_chains += 1;
            c.mark_broken(&format!("head {head} made available while in flight"));
            return;
        }
        if from_ring {
            if let Some(inf) = &c.inflight {
                inf.get(head, c.counter);
                c.counter += 1;
            }
        }
        let mut chain = std::mem::take(&mut c.scratch);
        let walked = chain::walk(&c.ram, c.desc_gpa, c.size, head, &c.limits, &mut chain);
        if let Err(e) = walked {
            c.scratch = chain;
            c.d.bad_chains += 1;
            c.mark_broken(&format!("head {head}: {e}"));
            return;
        }
        let status_gpa = chain.status_gpa;
        let parsed = request::parse(&c.ram, &chain, &c.dev.geometry);
        c.scratch = chain;
        match parsed {
            Err(e) => {
                if matches!(e, request::RequestError::Chain(_)) {
                    c.d.bad_chains += 1;
                }
                tracing::debug!(vm = %c.vm, queue = c.index, head, error = %e, "request failed");
                c.count_status(e.status());
                c.finish(head, status_gpa, e.status(), 1);
            }
            Ok(Parsed::GetId { data }) => {
                c.d.get_ids += 1;
                let (status, written) = c.write_id(&data);
                c.count_status(status);
                c.finish(head, status_gpa, status, written + 1);
            }
            Ok(Parsed::Io {
                op,
                offset_blocks,
                num_blocks,
                data,
                used_len,
            }) => {
                let bytes = match op {
                    IoType::Read | IoType::Write => data.iter().map(|s| s.len as u64).sum(),
                    IoType::Flush => 0,
                    _ => num_blocks as u64 * c.dev.geometry.block_size as u64,
                };
                let mut iovs = SgList::new();
                if let Err(e) = translate(&c.ram, &data, &mut iovs) {
                    c.d.bad_chains += 1;
                    tracing::debug!(vm = %c.vm, queue = c.index, head, error = %e, "request failed");
                    c.count_status(VIRTIO_BLK_S_IOERR);
                    c.finish(head, status_gpa, VIRTIO_BLK_S_IOERR, 1);
                    return;
                }
                let p = Pending {
                    head,
                    req: IoRequest::with_iovs(op, offset_blocks, num_blocks, iovs, head as u64),
                    status_gpa,
                    used_len,
                    bytes,
                    from_ring,
                    admitted: false,
                };
                if let Err(p) = self.try_submit(r, p, now) {
                    self.c.held = Some(p);
                }
            }
        }
    }

    /// Gate, then device. Hands the request back if either says "not now".
    fn try_submit(&mut self, r: &mut Reactor, mut p: Pending, now: u64) -> Result<(), Pending> {
        let c = &mut self.c;
        if self.chan.outstanding() >= self.chan.capacity() {
            return Err(p);
        }
        let io = GateIo {
            op: p.req.op,
            bytes: p.bytes,
            queue: c.index,
            id: p.head as u64,
        };
        if !p.admitted {
            match c.gate.admit(&io, now) {
                Admit::Now => {
                    p.admitted = true;
                    c.cancel_retry(r);
                }
                Admit::Hold { retry_ns } => {
                    c.d.gate_holds += 1;
                    c.arm_retry(r, retry_ns);
                    return Err(p);
                }
                Admit::Fail => {
                    c.cancel_retry(r);
                    c.count_status(VIRTIO_BLK_S_IOERR);
                    c.finish(p.head, p.status_gpa, VIRTIO_BLK_S_IOERR, 1);
                    return Ok(());
                }
            }
        }
        let op = p.req.op;
        let head = p.head;
        match self.chan.submit(p.req) {
            Ok(()) => {
                let c = &mut self.c;
                c.slots[head as usize] = Slot {
                    busy: true,
                    op,
                    flush_after: op == IoType::Write && !c.dev.writeback,
                    in_flush: false,
                    status_gpa: p.status_gpa,
                    used_len: p.used_len,
                    bytes: p.bytes,
                    start_ns: now,
                };
                c.in_flight += 1;
                Ok(())
            }
            Err(e) => {
                p.req = e.req;
                Err(p)
            }
        }
    }

    fn maybe_finish_stop(&mut self, r: &mut Reactor) {
        let c = &mut self.c;
        if c.in_flight > 0 || !c.followups.is_empty() {
            return;
        }
        let Some((_, reply)) = c.stopping.take() else {
            return;
        };
        c.unregister_wake(r);
        c.cancel_retry(r);
        if let Some(pid) = c.poller.take() {
            r.unregister_poller(pid);
        }
        c.publish();
        c.counters.in_flight.store(0, Ordering::Relaxed);
        let key = c.key;
        let _ = reply.send(StopReply {
            next_avail: c.queue.next_avail(),
            broken: c.broken,
        });
        r.local::<VhostLocal>().queues.remove(&key);
    }
}

impl Core {
    #[inline]
    fn pulling(&self) -> bool {
        !self.suspended && !self.broken && self.stopping.is_none()
    }

    fn frozen(&self) -> bool {
        matches!(self.stopping, Some((StopMode::Freeze, _)))
    }

    fn register_wake(&mut self, r: &mut Reactor) {
        let Some(fd) = self.kick.as_ref().map(|k| k.as_raw_fd()) else {
            return;
        };
        if !self.wake_registered {
            match r.register_wake_fd(fd) {
                Ok(()) => self.wake_registered = true,
                Err(e) => {
                    tracing::warn!(vm = %self.vm, queue = self.index, error = %e, "cannot watch kick eventfd; polling only")
                }
            }
        }
    }

    fn unregister_wake(&mut self, r: &mut Reactor) {
        if let (true, Some(k)) = (self.wake_registered, &self.kick) {
            let _ = r.unregister_wake_fd(k.as_raw_fd());
            self.wake_registered = false;
        }
    }

    fn arm_retry(&mut self, r: &mut Reactor, retry_ns: u64) {
        if self.retry_timer.is_none() {
            let period = retry_ns.clamp(1_000, 100_000_000);
            self.retry_timer =
                Some(r.register_timed_poller("vhost-gate-retry", period, |_| PollStatus::Idle));
        }
    }

    fn cancel_retry(&mut self, r: &mut Reactor) {
        if let Some(t) = self.retry_timer.take() {
            r.unregister_poller(t);
        }
    }

    /// Gives a fetched but unsubmitted request back to where it came from.
    fn undo_fetch(&mut self, p: Pending) {
        if p.from_ring {
            let prev = self.queue.next_avail().wrapping_sub(1);
            self.queue.set_next_avail(prev);
            if let Some(inf) = &self.inflight {
                inf.unmark(p.head);
            }
            self.counter = self.counter.saturating_sub(1);
        } else {
            self.resubmit.push_front(p.head);
        }
    }

    /// Stops processing the ring for good (until the frontend resets it) and tells the
    /// frontend through the error eventfd. The kick fd leaves the reactor's wake set at the end
    /// of the pass.
    fn mark_broken(&mut self, why: &str) {
        if self.broken {
            return;
        }
        self.broken = true;
        self.d.needs_reset += 1;
        tracing::error!(vm = %self.vm, queue = self.index, reason = why, "virtqueue needs reset; no longer processed");
        if let Some(err) = &self.err {
            let _ = crate::sys::signal(err);
        }
    }

    fn count_status(&mut self, status: u8) {
        match status {
            VIRTIO_BLK_S_OK => {}
            VIRTIO_BLK_S_UNSUPP => self.d.unsupported += 1,
            _ => self.d.io_errors += 1,
        }
    }

    fn write_id(&mut self, data: &SegList) -> (u8, u32) {
        let id = self.dev.serial;
        let mut at = 0usize;
        for s in data {
            if at >= ID_BYTES {
                break;
            }
            let n = (s.len as usize).min(ID_BYTES - at);
            if !self.ram.write(s.gpa, &id[at..at + n]) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            at += n;
        }
        (VIRTIO_BLK_S_OK, at as u32)
    }

    /// Status byte, inflight bookkeeping, used ring entry.
    fn finish(&mut self, head: u16, status_gpa: u64, status: u8, used_len: u32) {
        if !self.ram.write(status_gpa, &[status]) {
            self.mark_broken(&format!("head {head}: status byte is no longer mapped"));
            return;
        }
        if let Some(inf) = &self.inflight {
            inf.pre_put(head);
        }
        if let Err(e) = self.queue.add_used(self.ram.mmap(), head, used_len) {
            self.mark_broken(&format!("cannot write used ring: {e}"));
            return;
        }
        if let Some(inf) = &self.inflight {
            inf.post_put(head, self.queue.next_used());
        }
        self.used_added = true;
    }

    fn on_complete(&mut self, cpl: IoCompletion, now: u64) {
        let head = cpl.tag as usize;
        let Some(slot) = self.slots.get(head).copied() else {
            return;
        };
        if !slot.busy {
            tracing::warn!(vm = %self.vm, queue = self.index, head, "completion for an idle slot ignored");
            return;
        }
        let ok = cpl.result.is_ok();
        if ok && slot.flush_after && !slot.in_flush && !self.frozen() {
            self.slots[head].in_flush = true;
            self.followups.push(head as u16);
            return;
        }
        self.slots[head].busy = false;
        self.in_flight -= 1;
        let io = GateIo {
            op: slot.op,
            bytes: slot.bytes,
            queue: self.index,
            id: head as u64,
        };
        self.gate
            .complete(&io, now, now.saturating_sub(slot.start_ns), ok);
        if self.frozen() {
            return;
        }
        let status = match cpl.result {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(IoError::Unsupported(_)) => VIRTIO_BLK_S_UNSUPP,
            Err(_) => VIRTIO_BLK_S_IOERR,
        };
        match slot.op {
            IoType::Read => {
                self.d.reads += 1;
                if ok {
                    self.d.bytes_read += slot.bytes;
                }
            }
            IoType::Write => {
                self.d.writes += 1;
                if ok {
                    self.d.bytes_written += slot.bytes;
                }
            }
            IoType::Flush => self.d.flushes += 1,
            IoType::Unmap => self.d.discards += 1,
            IoType::WriteZeroes => self.d.write_zeroes += 1,
        }
        self.count_status(status);
        let used_len = if ok { slot.used_len } else { 1 };
        self.finish(head as u16, slot.status_gpa, status, used_len);
    }

    fn notify_guest(&mut self) {
        self.used_added = false;
        let need = if self.queue.event_idx_enabled() {
            self.queue
                .needs_notification(self.ram.mmap())
                .unwrap_or(true)
        } else {
            fence(Ordering::SeqCst);
            let flags = self.ram.load_u16(self.avail_gpa).unwrap_or(0);
            flags & VRING_AVAIL_F_NO_INTERRUPT == 0
        };
        if need {
            if let Some(call) = &self.call {
                if crate::sys::signal(call).is_ok() {
                    self.d.interrupts += 1;
                }
            }
        }
    }

    /// Kick suppression while busy, re-enable (with re-check) when idle. Returns true if the
    /// re-check found work.
    fn adapt_notifications(&mut self, now: u64, pulled: bool) -> bool {
        if pulled || self.held.is_some() || !self.resubmit.is_empty() {
            self.last_activity = now;
            if self.notify_enabled {
                let _ = self.queue.disable_notification(self.ram.mmap());
                self.notify_enabled = false;
                self.drain_kick();
            }
            return false;
        }
        if self.notify_enabled {
            self.idle_passes = self.idle_passes.wrapping_add(1);
            if self.idle_passes.is_multiple_of(DRAIN_EVERY_IDLE_PASSES) {
                // A kick that raced with the last re-check (or a spurious one) would keep a
                // level-triggered sleeper awake; clear it now and then.
                self.drain_kick();
            }
            return false;
        }
        if now.saturating_sub(self.last_activity) < self.dev.notify_idle_ns {
            return false;
        }
        self.drain_kick();
        match self.queue.enable_notification(self.ram.mmap()) {
            Ok(false) => {
                self.notify_enabled = true;
                self.idle_passes = 0;
                self.d.notify_enables += 1;
                false
            }
            Ok(true) => {
                // New requests arrived while we were enabling: keep polling.
                let _ = self.queue.disable_notification(self.ram.mmap());
                self.last_activity = now;
                true
            }
            Err(_) => false,
        }
    }

    fn drain_kick(&mut self) {
        if self.kick.as_ref().is_some_and(|k| crate::sys::drain(k) > 0) {
            self.d.kicks += 1;
        }
    }

    fn publish(&mut self) {
        if self.d != QueueStats::default() {
            self.counters.add(&self.d);
            self.d = QueueStats::default();
        }
        let held = self.held.is_some() as usize;
        self.counters
            .in_flight
            .store((self.in_flight + held) as u64, Ordering::Relaxed);
    }
}
