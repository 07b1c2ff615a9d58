//! Sockets: a [`TcpQpair`] drives a [`QpairCore`] over a non-blocking TCP stream; plus
//! abortive close and `poll` helpers for the controller threads (the eventfd and epoll
//! wrappers are `vmpath_runtime::sys`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmpath_runtime::sys;

use crate::qpair::{Cmd, Done, Phase, QpairCore, QpairError, QpairParams};

/// Size of one socket read.
const RX_CHUNK: usize = 128 * 1024;

/// Resolves `traddr:trsvcid`.
pub fn resolve(traddr: &str, trsvcid: &str) -> io::Result<SocketAddr> {
    let port: u16 = trsvcid.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("trsvcid {trsvcid:?} is not a TCP port"),
        )
    })?;
    let host = if traddr.contains(':') && !traddr.starts_with('[') {
        format!("[{traddr}]")
    } else {
        traddr.to_string()
    };
    (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{traddr} has no address")))
}

/// Makes `close` send a RST and drop unsent data, so nothing queued on the host side can
/// still reach the controller after the socket is closed.
pub fn set_abortive_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a pointer/length to a live `linger`.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn timeout_ms(timeout: Duration) -> i32 {
    timeout.as_millis().min(i32::MAX as u128) as i32
}

/// Waits for any of `fds` to be readable, up to `timeout`.
pub fn poll_any(fds: &[RawFd], timeout: Duration) {
    let mut ready = Vec::with_capacity(fds.len());
    sys::poll_readable(fds, timeout_ms(timeout), &mut ready);
}

/// A queue pair on a non-blocking TCP socket.
#[derive(Debug)]
pub struct TcpQpair {
    /// `None` once closed (dropping the stream with SO_LINGER 0 sends a RST).
    sock: Option<TcpStream>,
    core: QpairCore,
    rx: Vec<u8>,
    /// `now` of the last successful write to the socket (0 = never).
    last_tx_ns: u64,
}

impl TcpQpair {
    /// Connects (blocking, with a timeout), and queues the ICReq.
    pub fn connect(
        addr: SocketAddr,
        timeout: Duration,
        params: QpairParams,
    ) -> Result<Self, QpairError> {
        let sock = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| QpairError::Transport(format!("connect to {addr}: {e}")))?;
        Self::from_stream(sock, params)
    }

    /// Wraps a connected stream.
    pub fn from_stream(sock: TcpStream, params: QpairParams) -> Result<Self, QpairError> {
        let _ = sock.set_nodelay(true);
        set_abortive_close(&sock);
        sock.set_nonblocking(true)
            .map_err(|e| QpairError::Transport(format!("set non-blocking: {e}")))?;
        Ok(TcpQpair {
            sock: Some(sock),
            core: QpairCore::new(params),
            rx: vec![0; RX_CHUNK],
            last_tx_ns: 0,
        })
    }

    /// The protocol engine.
    pub fn core(&self) -> &QpairCore {
        &self.core
    }

    /// The protocol engine, mutable.
    pub fn core_mut(&mut self) -> &mut QpairCore {
        &mut self.core
    }

    /// The socket descriptor.
    pub fn fd(&self) -> RawFd {
        self.sock.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    /// When bytes were last handed to the socket (0 = never).
    pub fn last_tx_ns(&self) -> u64 {
        self.last_tx_ns
    }

    /// Queues a command (see [`QpairCore::submit`]).
    #[inline]
    // The command comes back by value on a full queue: boxing it would allocate per I/O.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, cmd: Cmd, now: u64) -> Result<u16, Cmd> {
        self.core.submit(cmd, now)
    }

    /// Writes queued bytes. Returns true if something was written.
    pub fn flush(&mut self, now: u64) -> Result<bool, QpairError> {
        let mut wrote = false;
        loop {
            let pending = self.core.tx_pending();
            if pending.is_empty() {
                return Ok(wrote);
            }
            let Some(sock) = self.sock.as_mut() else {
                return Err(QpairError::Closed);
            };
            match sock.write(pending) {
                Ok(0) => return Err(QpairError::Transport("closed by peer (write)".into())),
                Ok(n) => {
                    self.core.tx_advance(n);
                    self.last_tx_ns = now;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(wrote),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QpairError::Transport(format!("write: {e}"))),
            }
        }
    }

    /// Flushes, reads what arrived and processes it. Returns true if anything happened.
    pub fn poll(&mut self, now: u64, done: &mut dyn FnMut(Done)) -> Result<bool, QpairError> {
        let mut busy = self.flush(now)?;
        for _ in 0..8 {
            let Some(sock) = self.sock.as_mut() else {
                return Err(QpairError::Closed);
            };
            match sock.read(&mut self.rx) {
                Ok(0) => return Err(QpairError::Transport("closed by the controller".into())),
                Ok(n) => {
                    busy = true;
                    let rx = std::mem::take(&mut self.rx);
                    let r = self.core.on_rx(&rx[..n], done);
                    self.rx = rx;
                    r?;
                    if n < self.rx.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QpairError::Transport(format!("read: {e}"))),
            }
        }
        if busy {
            // Responses to R2Ts queue data: send it now.
            self.flush(now)?;
        }
        Ok(busy)
    }

    /// Drives the connection until the ICResp arrived (blocking, up to `deadline`).
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<(), QpairError> {
        while self.core.phase() != Phase::Ready {
            self.poll(crate::now_ns(), &mut |_| {})?;
            if self.core.phase() == Phase::Ready {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QpairError::Transport("no ICResp in time".into()));
            }
            poll_any(
                &[self.fd()],
                (deadline - now).min(Duration::from_millis(50)),
            );
        }
        Ok(())
    }

    /// Runs `cmd` to completion (blocking, up to `deadline`); completions of other commands
    /// seen meanwhile go to `other`.
    pub fn exec(
        &mut self,
        cmd: Cmd,
        deadline: Instant,
        other: &mut dyn FnMut(Done),
    ) -> Result<Done, QpairError> {
        let tag = cmd.tag;
        let opcode = cmd.sqe.opcode();
        let cid = self
            .core
            .submit(cmd, crate::now_ns())
            .map_err(|_| QpairError::Transport("admin queue full".into()))?;
        let mut result = None;
        loop {
            self.poll(crate::now_ns(), &mut |d| {
                if d.tag == tag && result.is_none() {
                    result = Some(d);
                } else {
                    other(d)
                }
            })?;
            if let Some(d) = result.take() {
                return Ok(d);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QpairError::Timeout {
                    cid,
                    opcode,
                    elapsed_ms: 0,
                });
            }
            poll_any(
                &[self.fd()],
                (deadline - now).min(Duration::from_millis(20)),
            );
        }
    }

    /// Closes the socket abortively (RST) and fails every outstanding command.
    pub fn close(&mut self, done: &mut dyn FnMut(Done)) {
        // Dropping the stream closes it; with SO_LINGER 0 the kernel discards unsent data and
        // sends a RST instead of a FIN.
        self.sock = None;
        self.core.fail_all(done);
    }
}
