//! The few raw syscalls of the data path: vectored socket I/O straight to and from request
//! buffers. Every `unsafe` block of the crate outside buffer handling is here; epoll, the
//! eventfd and `poll(2)` come from `vmpath_runtime::sys`.

use std::io;
use std::os::fd::RawFd;

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
