//! Thin safe wrappers over the few syscalls that poll-mode threads need to sleep and wake:
//! eventfd, epoll and `poll(2)`. The reactor uses them, and so do the crates whose threads
//! or socket sets sleep (the NVMe/TCP target's acceptor and poll groups, the initiator's
//! controller threads and multipath channels), so each wrapper exists once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd used to wake a sleeping thread or reactor.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the returned descriptor is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter; the fd becomes readable.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local u64 to an eventfd we own.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// Resets the counter (non-blocking; nothing to read is fine).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live local u64 from an eventfd we own.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// The descriptor (readable while the counter is non-zero).
    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Readiness interest: readable.
pub const EV_READ: u32 = libc::EPOLLIN as u32;
/// Readable, or the peer closed its side (sockets).
pub const EV_IN: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
/// [`EV_IN`] or writable.
pub const EV_IN_OUT: u32 = EV_IN | libc::EPOLLOUT as u32;

/// A ready event from [`Epoll::wait`].
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// The token the descriptor was registered with.
    pub token: u64,
    /// The `EPOLL*` bits that are ready.
    pub events: u32,
}

impl Ready {
    /// The descriptor can take more output.
    pub fn writable(&self) -> bool {
        self.events & libc::EPOLLOUT as u32 != 0
    }
}

/// An epoll set (level triggered). Its own descriptor is readable when a member is ready, so
/// one set can be registered as a reactor wake fd for many sockets.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A set whose [`wait`](Self::wait) reports up to 256 events at a time.
    pub fn new() -> io::Result<Self> {
        Self::with_capacity(256)
    }

    /// A set whose [`wait`](Self::wait) reports up to `events` (at least 1) at a time.
    pub fn with_capacity(events: usize) -> io::Result<Self> {
        // SAFETY: no pointers; result checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: fresh descriptor owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; events.max(1)],
        })
    }

    /// The set's own descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call (ignored by
        // EPOLL_CTL_DEL on current kernels).
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Adds `fd` with interest `events` ([`EV_READ`], [`EV_IN`], ...) and `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes the interest of a member.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Removes a member (before closing it).
    pub fn del(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (0: just look, -1: forever) and returns the ready events
    /// (none on timeout or signal).
    pub fn wait(&mut self, timeout_ms: i32) -> impl Iterator<Item = Ready> + '_ {
        // SAFETY: `events` is a live buffer of `len` epoll_events; the kernel writes at
        // most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        self.events[..n.max(0) as usize].iter().map(|e| Ready {
            token: e.u64,
            events: e.events,
        })
    }
}

/// `poll(2)` for readability of `fds` for up to `timeout_ms`; `out[i]` tells whether
/// `fds[i]` is readable.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32, out: &mut Vec<bool>) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd entries.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    out.clear();
    out.extend(p.iter().map(|x| n > 0 && x.revents != 0));
}

/// The CPU set this process may run on (sched_getaffinity), in ascending order.
pub(crate) fn process_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed matches it.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cpus = Vec::new();
    for cpu in 0..libc::CPU_SETSIZE as usize {
        // SAFETY: `cpu` is below CPU_SETSIZE and `set` is initialised.
        if unsafe { libc::CPU_ISSET(cpu, &set) } {
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}
