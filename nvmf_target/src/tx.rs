//! The send side of a queue pair: PDU headers are encoded into one growing byte arena,
//! data is referenced in place (request buffers, never copied), and a batch of PDUs leaves
//! in one `sendmsg` with up to [`MAX_IOV`] segments.

use std::collections::VecDeque;

use crate::sys::{raw_iovec, RawIoVec};

/// Segments per `sendmsg`.
pub(crate) const MAX_IOV: usize = 256;

#[derive(Debug, Clone, Copy)]
pub(crate) enum SegKind {
    /// Bytes of the header arena at this virtual offset.
    Hdr(u64),
    /// Bytes of request slot `slot`'s buffer from `off`.
    Data { slot: u16, off: u32 },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg {
    pub kind: SegKind,
    pub len: u32,
    /// Release this request slot once the segment is sent (set on a request's last segment).
    pub release: Option<u16>,
}

/// Pending output of one connection.
#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    hdr: Vec<u8>,
    /// Virtual offset of `hdr[0]`.
    base: u64,
    segs: VecDeque<Seg>,
    /// Bytes of `segs.front()` already sent.
    head_off: u32,
    /// Bytes not yet sent.
    pub bytes: usize,
}

impl TxQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Reserves `n` header bytes at the end of the arena and returns them with their virtual
    /// offset (the caller fills them, then calls [`push_hdr`](Self::push_hdr)).
    #[inline]
    pub(crate) fn hdr_space(&mut self, n: usize) -> (u64, &mut [u8]) {
        let start = self.hdr.len();
        self.hdr.resize(start + n, 0);
        (self.base + start as u64, &mut self.hdr[start..])
    }

    /// Queues `len` header bytes at virtual offset `voff` (from [`hdr_space`](Self::hdr_space)),
    /// merging with the previous header segment when contiguous.
    #[inline]
    pub(crate) fn push_hdr(&mut self, voff: u64, len: usize, release: Option<u16>) {
        if let Some(last) = self.segs.back_mut() {
            if let SegKind::Hdr(v) = last.kind {
                if last.release.is_none() && v + last.len as u64 == voff {
                    last.len += len as u32;
                    last.release = release;
                    self.bytes += len;
                    return;
                }
            }
        }
        self.segs.push_back(Seg {
            kind: SegKind::Hdr(voff),
            len: len as u32,
            release,
        });
        self.bytes += len;
    }

    /// Copies `bytes` into the arena and queues them.
    pub(crate) fn push_bytes(&mut self, bytes: &[u8], release: Option<u16>) {
        let (voff, space) = self.hdr_space(bytes.len());
        space.copy_from_slice(bytes);
        self.push_hdr(voff, bytes.len(), release);
    }

    /// Queues `len` bytes of slot `slot`'s buffer from `off`.
    #[inline]
    pub(crate) fn push_data(&mut self, slot: u16, off: u32, len: u32, release: Option<u16>) {
        self.segs.push_back(Seg {
            kind: SegKind::Data { slot, off },
            len,
            release,
        });
        self.bytes += len as usize;
    }

    /// Fills `iov` with the pending segments (up to [`MAX_IOV`]); `data_ptr(slot, off)` gives
    /// the address of request data.
    pub(crate) fn iovecs(&self, iov: &mut Vec<RawIoVec>, data_ptr: &dyn Fn(u16, u32) -> *const u8) {
        iov.clear();
        let mut first = true;
        let mut last_hdr_end: Option<u64> = None;
        for s in self.segs.iter() {
            if iov.len() >= MAX_IOV {
                break;
            }
            let skip = if first { self.head_off } else { 0 };
            first = false;
            let len = (s.len - skip) as usize;
            match s.kind {
                SegKind::Hdr(v) => {
                    let v = v + skip as u64;
                    // Merge with the previous iovec when it ends where this one starts.
                    if last_hdr_end == Some(v) {
                        if let Some(prev) = iov.last_mut() {
                            prev.iov_len += len;
                            last_hdr_end = Some(v + len as u64);
                            continue;
                        }
                    }
                    let off = (v - self.base) as usize;
                    iov.push(raw_iovec(self.hdr[off..].as_ptr(), len));
                    last_hdr_end = Some(v + len as u64);
                }
                SegKind::Data { slot, off } => {
                    iov.push(raw_iovec(data_ptr(slot, off + skip), len));
                    last_hdr_end = None;
                }
            }
        }
    }

    /// Marks `n` bytes as sent; calls `release` for every slot whose last segment went out.
    pub(crate) fn advance(&mut self, mut n: usize, release: &mut dyn FnMut(u16)) {
        self.bytes -= n.min(self.bytes);
        while n > 0 {
            let Some(front) = self.segs.front() else {
                break;
            };
            let rem = (front.len - self.head_off) as usize;
            if n >= rem {
                n -= rem;
                self.head_off = 0;
                let s = self.segs.pop_front().expect("front exists");
                if let Some(slot) = s.release {
                    release(slot);
                }
            } else {
                self.head_off += n as u32;
                n = 0;
            }
        }
        self.compact();
    }

    /// Drops sent header bytes: all of them when idle, else the consumed prefix once large.
    fn compact(&mut self) {
        if self.segs.is_empty() {
            self.base += self.hdr.len() as u64;
            self.hdr.clear();
            self.head_off = 0;
            return;
        }
        let first_live = self
            .segs
            .iter()
            .find_map(|s| match s.kind {
                SegKind::Hdr(v) => Some(v),
                SegKind::Data { .. } => None,
            })
            .unwrap_or(self.base + self.hdr.len() as u64);
        let dead = (first_live - self.base) as usize;
        if dead >= 64 * 1024 && dead * 2 >= self.hdr.len() {
            self.hdr.drain(..dead);
            self.base += dead as u64;
        }
    }

    /// Drops everything queued, releasing the slots it referenced.
    pub(crate) fn clear(&mut self, release: &mut dyn FnMut(u16)) {
        while let Some(s) = self.segs.pop_front() {
            if let Some(slot) = s.release {
                release(slot);
            }
        }
        self.bytes = 0;
        self.head_off = 0;
        self.compact();
    }

    /// Copies out everything queued (tests and fuzzing), releasing slots.
    pub(crate) fn drain_to(
        &mut self,
        out: &mut Vec<u8>,
        data: &dyn Fn(u16, u32, u32) -> Vec<u8>,
        release: &mut dyn FnMut(u16),
    ) {
        let mut first = true;
        while let Some(s) = self.segs.pop_front() {
            let skip = if first { self.head_off } else { 0 };
            first = false;
            match s.kind {
                SegKind::Hdr(v) => {
                    let off = (v - self.base) as usize + skip as usize;
                    out.extend_from_slice(&self.hdr[off..off + (s.len - skip) as usize]);
                }
                SegKind::Data { slot, off } => {
                    out.extend_from_slice(&data(slot, off + skip, s.len - skip))
                }
            }
            if let Some(slot) = s.release {
                release(slot);
            }
        }
        self.bytes = 0;
        self.head_off = 0;
        self.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_headers_and_advances_partially() {
        let mut t = TxQueue::default();
        t.push_bytes(b"abc", None);
        t.push_bytes(b"de", Some(1));
        t.push_data(2, 10, 4, None);
        t.push_bytes(b"fg", Some(2));
        assert_eq!(t.bytes, 11);
        let data = [0u8; 64];
        let mut iov = Vec::new();
        t.iovecs(&mut iov, &|_, off| data[off as usize..].as_ptr());
        assert_eq!(iov.len(), 3, "abc+de merged");
        assert_eq!(iov[0].iov_len, 5);
        let mut released = Vec::new();
        t.advance(4, &mut |s| released.push(s));
        assert!(released.is_empty());
        t.advance(2, &mut |s| released.push(s));
        assert_eq!(released, vec![1]);
        t.iovecs(&mut iov, &|_, off| data[off as usize..].as_ptr());
        assert_eq!(iov[0].iov_len, 3, "partially sent data segment");
        t.advance(5, &mut |s| released.push(s));
        assert_eq!(released, vec![1, 2]);
        assert!(t.is_empty());
        assert_eq!(t.bytes, 0);
        assert!(t.hdr.is_empty());
    }
}
