//! The reactor state machine: inbox, pollers, timed pollers, counters, sleep and wake-up.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::sys::{Epoll, EventFd, EV_READ};

/// How many inbox messages one [`Reactor::poll`] runs at most (SPDK's `max_msgs`), so a flood of
/// messages cannot starve the pollers.
pub const MAX_MSGS_PER_POLL: usize = 64;

/// Default inbox capacity of a reactor (messages; bounded, see [`ReactorHandle::send`]).
pub const DEFAULT_INBOX_CAPACITY: usize = 4096;

/// Whether a poll did useful work. Drives busy/idle accounting and adaptive sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// Work was done (a message ran, a poller moved data).
    Busy,
    /// Nothing to do.
    Idle,
}

impl PollStatus {
    /// `Busy` if `did_work`, else `Idle`.
    #[inline]
    pub fn from_work(did_work: bool) -> Self {
        if did_work {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    #[inline]
    fn is_busy(self) -> bool {
        self == PollStatus::Busy
    }
}

/// A closure run on the destination reactor. Any thread may send one.
pub type Message = Box<dyn FnOnce(&mut Reactor) + Send>;

type PollerFn = Box<dyn FnMut(&mut Reactor) -> PollStatus>;

/// Identifies a registered poller on its reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PollerId(u64);

/// A message could not be queued because the destination inbox is full (or the reactor has
/// stopped). The message is handed back untouched.
pub struct SendError {
    /// The message that was not sent.
    pub msg: Message,
    /// True when the reactor has stopped for good (retrying cannot succeed).
    pub stopped: bool,
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.stopped {
            f.write_str("reactor has stopped")
        } else {
            f.write_str("reactor inbox is full")
        }
    }
}

impl std::error::Error for SendError {}

const STATE_RUNNING: u8 = 0;
const STATE_SLEEPING: u8 = 1;
const STATE_STOPPED: u8 = 2;

/// Counters of one reactor, readable from any thread through its [`ReactorHandle`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// Nanoseconds spent in polls that did work.
    pub busy_ticks: u64,
    /// Nanoseconds spent in polls that found nothing to do (including sleep).
    pub idle_ticks: u64,
    /// Number of poller invocations (active and timed).
    pub poller_runs: u64,
    /// Number of inbox messages run.
    pub messages: u64,
    /// Number of times the reactor went to sleep.
    pub sleeps: u64,
    /// Number of registered pollers (active + timed).
    pub pollers: u64,
}

#[derive(Default)]
struct AtomicStats {
    busy_ticks: AtomicU64,
    idle_ticks: AtomicU64,
    poller_runs: AtomicU64,
    messages: AtomicU64,
    sleeps: AtomicU64,
    pollers: AtomicU64,
}

/// The part of a reactor shared with other threads.
pub(crate) struct Shared {
    id: u32,
    core: Option<usize>,
    inbox: ArrayQueue<Message>,
    /// Set by the reactor just before it blocks; a sender that sees it writes the eventfd.
    sleeping: AtomicBool,
    state: AtomicU8,
    stop: AtomicBool,
    eventfd: EventFd,
    stats: AtomicStats,
}

/// The thread-safe face of a reactor: send it messages, read its counters, ask it to stop.
#[derive(Clone)]
pub struct ReactorHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("id", &self.shared.id)
            .field("core", &self.shared.core)
            .finish()
    }
}

impl ReactorHandle {
    /// The reactor's index (0-based, dense).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The CPU core the reactor is pinned to, if any.
    pub fn core(&self) -> Option<usize> {
        self.shared.core
    }

    /// Queues `f` to run on the reactor. Lock-free and bounded: if the inbox is full the closure
    /// comes back in the error. Messages from one sender run exactly once, in the order sent.
    pub fn send<F>(&self, f: F) -> Result<(), SendError>
    where
        F: FnOnce(&mut Reactor) + Send + 'static,
    {
        self.send_boxed(Box::new(f))
    }

    /// Like [`send`](Self::send) for an already boxed message.
    pub fn send_boxed(&self, msg: Message) -> Result<(), SendError> {
        if self.shared.state.load(Ordering::Acquire) == STATE_STOPPED {
            return Err(SendError { msg, stopped: true });
        }
        if let Err(msg) = self.shared.inbox.push(msg) {
            return Err(SendError {
                msg,
                stopped: false,
            });
        }
        self.wake_if_sleeping();
        Ok(())
    }

    /// Runs `f` on the reactor and waits for its result (management plane only: it blocks the
    /// calling thread). Retries while the inbox is full. Fails if the reactor has stopped.
    pub fn call<T, F>(&self, f: F) -> Result<T, SendError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Reactor) -> T + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut msg: Message = Box::new(move |r: &mut Reactor| {
            let _ = tx.send(f(r));
        });
        loop {
            match self.send_boxed(msg) {
                Ok(()) => break,
                Err(e) if e.stopped => return Err(e),
                Err(e) => {
                    msg = e.msg;
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        }
        let gone = || SendError {
            msg: Box::new(|_| {}),
            stopped: true,
        };
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(v) => return Ok(v),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(gone()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // A message queued just as the reactor stopped is never run.
                    if self.shared.state.load(Ordering::Acquire) == STATE_STOPPED {
                        return rx.try_recv().map_err(|_| gone());
                    }
                }
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> ReactorStats {
        let s = &self.shared.stats;
        ReactorStats {
            busy_ticks: s.busy_ticks.load(Ordering::Relaxed),
            idle_ticks: s.idle_ticks.load(Ordering::Relaxed),
            poller_runs: s.poller_runs.load(Ordering::Relaxed),
            messages: s.messages.load(Ordering::Relaxed),
            sleeps: s.sleeps.load(Ordering::Relaxed),
            pollers: s.pollers.load(Ordering::Relaxed),
        }
    }

    /// "running", "sleeping" or "stopped".
    pub fn state_name(&self) -> &'static str {
        match self.shared.state.load(Ordering::Relaxed) {
            STATE_RUNNING => "running",
            STATE_SLEEPING => "sleeping",
            _ => "stopped",
        }
    }

    /// True while the reactor is blocked in its idle sleep.
    pub fn is_sleeping(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == STATE_SLEEPING
    }

    /// Asks the reactor to stop; its thread leaves the loop once its pollers are gone (or the
    /// runtime's grace period ends). Wakes it if it sleeps.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.eventfd.signal();
    }

    fn wake_if_sleeping(&self) {
        // Pairs with the fence in Reactor::sleep (Dekker): either the reactor sees our message
        // before blocking, or we see `sleeping` and write its eventfd.
        fence(Ordering::SeqCst);
        if self.shared.sleeping.load(Ordering::Relaxed)
            && self.shared.sleeping.swap(false, Ordering::AcqRel)
        {
            self.shared.eventfd.signal();
        }
    }
}

struct PollerSlot {
    id: u64,
    name: String,
    f: Option<PollerFn>,
    /// 0 for active pollers; the period for timed pollers.
    period_ns: u64,
    next_due: u64,
    removed: bool,
}

/// One poll-mode reactor. Lives on one thread for its whole life (`!Send`).
///
/// See the [crate docs](crate) for the model.
pub struct Reactor {
    shared: Arc<Shared>,
    active: Vec<PollerSlot>,
    timed: Vec<PollerSlot>,
    next_timer_due: u64,
    next_poller_id: u64,
    removed_any: bool,
    now: u64,
    last_now: Option<u64>,
    last_status: PollStatus,
    busy_ticks: u64,
    idle_ticks: u64,
    poller_runs: u64,
    messages: u64,
    sleeps: u64,
    epoll: Epoll,
    wake_fds: Vec<RawFd>,
    locals: HashMap<TypeId, Box<dyn Any>>,
    /// Makes the type `!Send` and `!Sync` even if every field were thread-safe.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("id", &self.shared.id)
            .field("pollers", &self.active.len())
            .field("timed_pollers", &self.timed.len())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// Creates a reactor with the given index, pinned core (informational) and inbox capacity.
    pub fn new(id: u32, core: Option<usize>, inbox_capacity: usize) -> io::Result<Reactor> {
        let eventfd = EventFd::new()?;
        // The reactor only sleeps on it: a few events per wait are enough.
        let epoll = Epoll::with_capacity(16)?;
        epoll.add(eventfd.raw(), EV_READ, u64::MAX)?;
        let shared = Arc::new(Shared {
            id,
            core,
            inbox: ArrayQueue::new(inbox_capacity.max(1)),
            sleeping: AtomicBool::new(false),
            state: AtomicU8::new(STATE_RUNNING),
            stop: AtomicBool::new(false),
            eventfd,
            stats: AtomicStats::default(),
        });
        Ok(Reactor {
            shared,
            active: Vec::new(),
            timed: Vec::new(),
            next_timer_due: u64::MAX,
            next_poller_id: 1,
            removed_any: false,
            now: 0,
            last_now: None,
            last_status: PollStatus::Idle,
            busy_ticks: 0,
            idle_ticks: 0,
            poller_runs: 0,
            messages: 0,
            sleeps: 0,
            epoll,
            wake_fds: Vec::new(),
            locals: HashMap::new(),
            _not_send: std::marker::PhantomData,
        })
    }

    /// A handle other threads use to reach this reactor.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: self.shared.clone(),
        }
    }

    /// The reactor's index.
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// The `now` of the poll in progress (or the last one).
    #[inline]
    pub fn now(&self) -> u64 {
        self.now
    }

    /// True once [`ReactorHandle::request_stop`] was called.
    pub fn stop_requested(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// Number of registered pollers (active and timed).
    pub fn poller_count(&self) -> usize {
        self.active.iter().filter(|p| !p.removed).count()
            + self.timed.iter().filter(|p| !p.removed).count()
    }

    /// Registers a poller run on every [`poll`](Self::poll).
    pub fn register_poller<F>(&mut self, name: impl Into<String>, f: F) -> PollerId
    where
        F: FnMut(&mut Reactor) -> PollStatus + 'static,
    {
        let id = self.alloc_id();
        self.active.push(PollerSlot {
            id,
            name: name.into(),
            f: Some(Box::new(f)),
            period_ns: 0,
            next_due: 0,
            removed: false,
        });
        PollerId(id)
    }

    /// Registers a timed poller run every `period_ns` (first run one period from now).
    pub fn register_timed_poller<F>(
        &mut self,
        name: impl Into<String>,
        period_ns: u64,
        f: F,
    ) -> PollerId
    where
        F: FnMut(&mut Reactor) -> PollStatus + 'static,
    {
        let id = self.alloc_id();
        let period_ns = period_ns.max(1);
        let next_due = self.now.saturating_add(period_ns);
        self.next_timer_due = self.next_timer_due.min(next_due);
        self.timed.push(PollerSlot {
            id,
            name: name.into(),
            f: Some(Box::new(f)),
            period_ns,
            next_due,
            removed: false,
        });
        PollerId(id)
    }

    /// Removes a poller (it may be the one running now). Returns false if it was not registered.
    pub fn unregister_poller(&mut self, id: PollerId) -> bool {
        for slot in self.active.iter_mut().chain(self.timed.iter_mut()) {
            if slot.id == id.0 && !slot.removed {
                slot.removed = true;
                self.removed_any = true;
                return true;
            }
        }
        false
    }

    /// Names of the registered pollers (for diagnostics).
    pub fn poller_names(&self) -> Vec<String> {
        self.active
            .iter()
            .chain(self.timed.iter())
            .filter(|p| !p.removed)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Adds a file descriptor whose readability wakes this reactor from its idle sleep (a socket,
    /// a virtqueue kick eventfd, an io_uring eventfd). The caller keeps owning the fd and must
    /// unregister it before closing it.
    pub fn register_wake_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll.add(fd, EV_READ, fd as u64)?;
        self.wake_fds.push(fd);
        Ok(())
    }

    /// Removes a descriptor added by [`register_wake_fd`](Self::register_wake_fd).
    pub fn unregister_wake_fd(&mut self, fd: RawFd) -> io::Result<()> {
        if let Some(pos) = self.wake_fds.iter().position(|&f| f == fd) {
            self.wake_fds.swap_remove(pos);
            self.epoll.del(fd)?;
        }
        Ok(())
    }

    /// Per-reactor storage of one value per type (SPDK's io_channel idea): created on first use,
    /// never visible to another reactor.
    pub fn local<T: Default + 'static>(&mut self) -> &mut T {
        self.locals
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut::<T>()
            .expect("TypeId matches the stored type")
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_poller_id;
        self.next_poller_id += 1;
        id
    }

    /// One iteration: messages, then active pollers, then due timed pollers.
    pub fn poll(&mut self, now: u64) -> PollStatus {
        // Attribute the time since the previous poll to that poll's outcome.
        if let Some(last) = self.last_now {
            let dt = now.saturating_sub(last);
            if self.last_status.is_busy() {
                self.busy_ticks += dt;
            } else {
                self.idle_ticks += dt;
            }
        }
        self.last_now = Some(now);
        self.now = now;
        let mut busy = false;

        let mut n = 0;
        while n < MAX_MSGS_PER_POLL {
            match self.shared.inbox.pop() {
                Some(msg) => {
                    msg(self);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            busy = true;
            self.messages += n as u64;
        }

        let len = self.active.len();
        for i in 0..len {
            let slot = &mut self.active[i];
            if slot.removed {
                continue;
            }
            let id = slot.id;
            let Some(mut f) = slot.f.take() else { continue };
            busy |= f(self).is_busy();
            self.poller_runs += 1;
            let slot = &mut self.active[i];
            if slot.id == id && !slot.removed {
                slot.f = Some(f);
            }
        }

        if now >= self.next_timer_due {
            busy |= self.run_timers(now);
        }

        if self.removed_any {
            self.active.retain(|p| !p.removed);
            self.timed.retain(|p| !p.removed);
            self.removed_any = false;
            self.next_timer_due = self
                .timed
                .iter()
                .map(|p| p.next_due)
                .min()
                .unwrap_or(u64::MAX);
        }

        let status = PollStatus::from_work(busy);
        self.last_status = status;
        self.publish_stats();
        status
    }

    fn run_timers(&mut self, now: u64) -> bool {
        let mut busy = false;
        let len = self.timed.len();
        for i in 0..len {
            let slot = &mut self.timed[i];
            if slot.removed || slot.next_due > now {
                continue;
            }
            let id = slot.id;
            // Skip missed periods rather than running a burst to catch up.
            let periods = (now - slot.next_due) / slot.period_ns + 1;
            slot.next_due += periods * slot.period_ns;
            let Some(mut f) = slot.f.take() else { continue };
            busy |= f(self).is_busy();
            self.poller_runs += 1;
            let slot = &mut self.timed[i];
            if slot.id == id && !slot.removed {
                slot.f = Some(f);
            }
        }
        self.next_timer_due = self
            .timed
            .iter()
            .filter(|p| !p.removed)
            .map(|p| p.next_due)
            .min()
            .unwrap_or(u64::MAX);
        busy
    }

    fn publish_stats(&self) {
        let s = &self.shared.stats;
        s.busy_ticks.store(self.busy_ticks, Ordering::Relaxed);
        s.idle_ticks.store(self.idle_ticks, Ordering::Relaxed);
        s.poller_runs.store(self.poller_runs, Ordering::Relaxed);
        s.messages.store(self.messages, Ordering::Relaxed);
        s.sleeps.store(self.sleeps, Ordering::Relaxed);
        s.pollers.store(
            (self.active.len() + self.timed.len()) as u64,
            Ordering::Relaxed,
        );
    }

    /// When the next timed poller is due (`u64::MAX` if none).
    pub fn next_timer_due(&self) -> u64 {
        self.next_timer_due
    }

    /// True if messages are waiting in the inbox.
    pub fn has_messages(&self) -> bool {
        !self.shared.inbox.is_empty()
    }

    /// Blocks until a message arrives, a registered fd becomes readable, the next timer is due,
    /// or `max_sleep_ns` passes. Returns immediately if work is already waiting.
    pub fn sleep(&mut self, now: u64, max_sleep_ns: u64) {
        self.shared.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.shared.inbox.is_empty() || self.stop_requested() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let until_timer = self.next_timer_due.saturating_sub(now);
        let ns = until_timer.min(max_sleep_ns);
        // Round up so we do not wake just before the timer is due.
        let ms = ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32;
        self.shared.state.store(STATE_SLEEPING, Ordering::Release);
        self.sleeps += 1;
        self.publish_stats();
        let _ = self.epoll.wait(ms);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        self.shared.state.store(STATE_RUNNING, Ordering::Release);
        self.shared.eventfd.drain();
        self.publish_stats();
    }

    pub(crate) fn mark_stopped(&self) {
        self.shared.state.store(STATE_STOPPED, Ordering::Release);
        // Run nothing more: messages still queued are dropped, which drops their reply
        // channels, so waiting callers see the reactor as gone.
        while self.shared.inbox.pop().is_some() {}
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.mark_stopped();
    }
}
