//! The few raw syscalls of the data path: vectored socket I/O straight to and from request
//! buffers, the poll group's epoll set, and the acceptor's wake-up eventfd. Every `unsafe`
//! block of the crate outside buffer handling is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One scatter-gather element handed to the kernel: raw memory the caller keeps valid for
/// the duration of the call.
pub(crate) type RawIoVec = libc::iovec;

/// Builds a [`RawIoVec`].
#[inline]
pub(crate) fn raw_iovec(ptr: *const u8, len: usize) -> RawIoVec {
    libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    }
}

/// Result of a non-blocking socket call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockIo {
    /// This many bytes moved (0 on a read = the peer closed its side).
    Done(usize),
    /// The socket is not ready.
    WouldBlock,
}

fn check_io(rc: isize) -> io::Result<SockIo> {
    if rc >= 0 {
        return Ok(SockIo::Done(rc as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(SockIo::WouldBlock),
        io::ErrorKind::Interrupted => Ok(SockIo::WouldBlock),
        _ => Err(e),
    }
}

/// `sendmsg(fd, iov, MSG_NOSIGNAL | MSG_DONTWAIT)`: one syscall for a batch of PDUs.
///
/// # Safety
/// Every element of `iov` must describe memory readable for its length during the call.
pub(crate) unsafe fn sendmsg(fd: RawFd, iov: &[RawIoVec]) -> io::Result<SockIo> {
    // SAFETY: an all-zero msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: msg points at `iov`, valid per the caller's contract; the kernel only reads it.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    check_io(rc)
}

/// `readv(fd, iov)` on a non-blocking socket.
///
/// # Safety
/// Every element of `iov` must describe memory writable for its length during the call and
/// not referenced by any live Rust reference.
pub(crate) unsafe fn readv(fd: RawFd, iov: &[RawIoVec]) -> io::Result<SockIo> {
    // SAFETY: per the caller's contract the kernel may write the described memory.
    let rc = unsafe {
        libc::readv(
            fd,
            iov.as_ptr(),
            iov.len().min(libc::UIO_MAXIOV as usize) as _,
        )
    };
    check_io(rc)
}

/// `recv(fd, buf, MSG_DONTWAIT)`.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<SockIo> {
    // SAFETY: `buf` is a valid, exclusively borrowed buffer of `buf.len()` bytes.
    let rc = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    check_io(rc)
}

/// Readiness interest of an fd in an [`Epoll`] set.
pub(crate) const EV_IN: u32 = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
/// Readable or writable.
pub(crate) const EV_IN_OUT: u32 = EV_IN | libc::EPOLLOUT as u32;

/// A ready event from [`Epoll::wait`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub token: u64,
    pub events: u32,
}

impl Ready {
    pub(crate) fn writable(&self) -> bool {
        self.events & libc::EPOLLOUT as u32 != 0
    }
}

/// An epoll set (level triggered).
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
        })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is valid for the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub(crate) fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ms` (0 = just look) and returns the ready events.
    pub(crate) fn wait(&mut self, timeout_ms: i32) -> impl Iterator<Item = Ready> + '_ {
        // SAFETY: `events` is a valid buffer of `len` epoll_event entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        let n = n.max(0) as usize;
        self.events[..n].iter().map(|e| Ready {
            token: e.u64,
            events: e.events,
        })
    }
}

/// An eventfd used to wake the acceptor thread.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    pub(crate) fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `poll(2)` for readability of `fds` up to `timeout_ms`; returns which are readable.
pub(crate) fn poll_readable(fds: &[RawFd], timeout_ms: i32, out: &mut Vec<bool>) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of `p.len()` pollfd entries.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    out.clear();
    out.extend(p.iter().map(|x| n > 0 && x.revents != 0));
}
