//! Inflight I/O tracking for split virtqueues (vhost-user specification, "Inflight I/O
//! tracking"; protocol feature `INFLIGHT_SHMFD`).
//!
//! The backend allocates a shared memory file at `GET_INFLIGHT_FD`; the frontend keeps it and
//! hands it back with `SET_INFLIGHT_FD` every time it (re)connects, also to a freshly restarted
//! backend process. Per queue, the region holds (split-ring layout, little endian):
//!
//! ```text
//! u64 features; u16 version (1); u16 desc_num; u16 last_batch_head; u16 used_idx;
//! struct { u8 inflight; u8 pad[5]; u16 next; u64 counter; } desc[desc_num];
//! ```
//!
//! aligned to 64 bytes. When the backend fetches a head it sets `desc[head].counter` (fetch
//! order) and `inflight = 1`; when it completes it records `last_batch_head = head`, writes the
//! used ring entry and index, then clears `inflight` and stores the new `used_idx`. A backend
//! that died between the used index update and the clear is detected on restart
//! (`used_idx` differs from the ring's) and the one affected entry is cleared; every entry
//! still marked is re-run in fetch order ([`InflightQueue::recover`]).

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// Layout version written in each queue header.
pub const INFLIGHT_VERSION: u16 = 1;
const HDR: usize = 16;
const DESC: usize = 16;
const ALIGN: usize = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// Queue count or size is zero or too large.
    #[error("inflight region for {num_queues} queues of {queue_size} entries is invalid")]
    InvalidGeometry {
        /// Queues.
        num_queues: u16,
        /// Entries per queue.
        queue_size: u16,
    },
    /// The region handed back is smaller than the layout needs.
    #[error("inflight region of {have} bytes is smaller than the {need} bytes needed")]
    TooSmall {
        /// Size given.
        have: u64,
        /// Size needed.
        need: u64,
    },
    /// Creating or mapping the shared memory failed.
    #[error("inflight region: {what}: {source}")]
    Os {
        /// What failed.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The queue's header does not match its size (region from another layout).
    #[error("inflight queue {queue}: header version {version} / {desc_num} entries does not match queue size {queue_size}")]
    Mismatch {
        /// Queue index.
        queue: u16,
        /// Version found.
        version: u16,
        /// Entries found.
        desc_num: u16,
        /// Queue size expected.
        queue_size: u16,
    },
    /// A queue index beyond the region.
    #[error("inflight region has no queue {0}")]
    NoQueue(u16),
}

/// Bytes of one queue's area.
pub fn queue_area_size(queue_size: u16) -> usize {
    (HDR + DESC * queue_size as usize).div_ceil(ALIGN) * ALIGN
}

/// A mapped inflight region shared with the frontend.
#[derive(Debug)]
pub struct InflightRegion {
    map: MmapRegion,
    file: File,
    num_queues: u16,
    queue_size: u16,
    mmap_size: u64,
}

fn map(file: &File, offset: u64, size: usize) -> Result<MmapRegion, InflightError> {
    let dup = file.try_clone().map_err(|source| InflightError::Os {
        what: "dup",
        source,
    })?;
    MmapRegionBuilder::new(size)
        .with_file_offset(FileOffset::new(dup, offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|e| InflightError::Os {
            what: "mmap",
            source: std::io::Error::other(e.to_string()),
        })
}

impl InflightRegion {
    /// Allocates a zeroed region for `num_queues` queues of `queue_size` entries and writes the
    /// queue headers (`GET_INFLIGHT_FD`).
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::InvalidGeometry {
                num_queues,
                queue_size,
            });
        }
        let size = queue_area_size(queue_size) * num_queues as usize;
        let file =
            crate::sys::memfd("vmpath-vhost-inflight").map_err(|source| InflightError::Os {
                what: "memfd_create",
                source,
            })?;
        file.set_len(size as u64)
            .map_err(|source| InflightError::Os {
                what: "ftruncate",
                source,
            })?;
        let map = map(&file, 0, size)?;
        let r = InflightRegion {
            map,
            file,
            num_queues,
            queue_size,
            mmap_size: size as u64,
        };
        for q in 0..num_queues {
            let base = q as usize * queue_area_size(queue_size);
            let s = r.slice();
            // Offsets are inside the mapping by construction.
            let _ = s.store(INFLIGHT_VERSION.to_le(), base + 8, Ordering::Relaxed);
            let _ = s.store(queue_size.to_le(), base + 10, Ordering::Relaxed);
        }
        Ok(r)
    }

    /// Maps a region handed back by the frontend (`SET_INFLIGHT_FD`).
    pub fn open(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::InvalidGeometry {
                num_queues,
                queue_size,
            });
        }
        let need = (queue_area_size(queue_size) * num_queues as usize) as u64;
        if mmap_size < need {
            return Err(InflightError::TooSmall {
                have: mmap_size,
                need,
            });
        }
        let len = file
            .metadata()
            .map_err(|source| InflightError::Os {
                what: "fstat",
                source,
            })?
            .len();
        if mmap_offset.checked_add(need).is_none_or(|end| end > len) {
            return Err(InflightError::TooSmall {
                have: len.saturating_sub(mmap_offset),
                need,
            });
        }
        let map = map(&file, mmap_offset, need as usize)?;
        Ok(InflightRegion {
            map,
            file,
            num_queues,
            queue_size,
            mmap_size: need,
        })
    }

    fn slice(&self) -> VolatileSlice<'_, ()> {
        self.map.as_volatile_slice()
    }

    /// The shared memory file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of the mapped area.
    pub fn mmap_size(&self) -> u64 {
        self.mmap_size
    }

    /// Queues in the region.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Entries per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The tracking area of queue `index`, checked against the size the frontend set for it.
    pub fn queue(
        self: &Arc<Self>,
        index: u16,
        queue_size: u16,
    ) -> Result<InflightQueue, InflightError> {
        if index >= self.num_queues {
            return Err(InflightError::NoQueue(index));
        }
        let base = index as usize * queue_area_size(self.queue_size);
        let s = self.slice();
        let version = u16::from_le(s.load::<u16>(base + 8, Ordering::Relaxed).unwrap_or(0));
        let desc_num = u16::from_le(s.load::<u16>(base + 10, Ordering::Relaxed).unwrap_or(0));
        if version != INFLIGHT_VERSION || desc_num != queue_size || queue_size > self.queue_size {
            return Err(InflightError::Mismatch {
                queue: index,
                version,
                desc_num,
                queue_size,
            });
        }
        Ok(InflightQueue {
            region: self.clone(),
            base,
            desc_num,
        })
    }
}

/// One queue's tracking area, owned by the reactor that runs the queue.
#[derive(Debug)]
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: usize,
    desc_num: u16,
}

/// What [`InflightQueue::recover`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Heads still in flight, in the order they were fetched.
    pub heads: Vec<u16>,
    /// The counter to continue from.
    pub next_counter: u64,
    /// True if an entry completed just before a crash was cleared.
    pub fixed_last_batch: bool,
}

impl InflightQueue {
    #[inline]
    fn desc_off(&self, head: u16) -> usize {
        self.base + HDR + head as usize * DESC
    }

    /// Marks `head` as fetched with fetch order `counter`.
    #[inline]
    pub fn get(&self, head: u16, counter: u64) {
        if head >= self.desc_num {
            return;
        }
        let s = self.region.slice();
        let o = self.desc_off(head);
        let _ = s.store(counter.to_le(), o + 8, Ordering::Relaxed);
        let _ = s.store(1u8, o, Ordering::Release);
    }

    /// Records `head` as the entry about to be put in the used ring.
    #[inline]
    pub fn pre_put(&self, head: u16) {
        let _ = self
            .region
            .slice()
            .store(head.to_le(), self.base + 12, Ordering::Release);
    }

    /// Clears `head` after its used entry and the used index (`used_idx`) were written.
    #[inline]
    pub fn post_put(&self, head: u16, used_idx: u16) {
        if head >= self.desc_num {
            return;
        }
        let s = self.region.slice();
        let _ = s.store(0u8, self.desc_off(head), Ordering::Release);
        let _ = s.store(used_idx.to_le(), self.base + 14, Ordering::Release);
    }

    /// Clears `head` without completing it (a fetch that was undone).
    #[inline]
    pub fn unmark(&self, head: u16) {
        if head < self.desc_num {
            let _ = self
                .region
                .slice()
                .store(0u8, self.desc_off(head), Ordering::Release);
        }
    }

    /// Whether `head` is marked in flight.
    pub fn is_inflight(&self, head: u16) -> bool {
        head < self.desc_num
            && self
                .region
                .slice()
                .load::<u8>(self.desc_off(head), Ordering::Acquire)
                .unwrap_or(0)
                != 0
    }

    /// After a (re)connect: repairs the entry of a crash between used-index update and clear,
    /// and lists the heads to re-run. `ring_used_idx` is the used index read from the ring.
    pub fn recover(&self, ring_used_idx: u16) -> Recovered {
        let s = self.region.slice();
        let mut out = Recovered::default();
        let recorded = u16::from_le(
            s.load::<u16>(self.base + 14, Ordering::Acquire)
                .unwrap_or(0),
        );
        if recorded != ring_used_idx {
            let last = u16::from_le(
                s.load::<u16>(self.base + 12, Ordering::Acquire)
                    .unwrap_or(0),
            );
            if self.is_inflight(last) {
                self.unmark(last);
                out.fixed_last_batch = true;
            }
            let _ = s.store(ring_used_idx.to_le(), self.base + 14, Ordering::Release);
        }
        let mut found: Vec<(u64, u16)> = Vec::new();
        let mut max_counter = 0u64;
        for head in 0..self.desc_num {
            let o = self.desc_off(head);
            let counter = u64::from_le(s.load::<u64>(o + 8, Ordering::Relaxed).unwrap_or(0));
            max_counter = max_counter.max(counter);
            if self.is_inflight(head) {
                found.push((counter, head));
            }
        }
        found.sort_unstable();
        out.heads = found.into_iter().map(|(_, h)| h).collect();
        out.next_counter = max_counter + 1;
        out
    }

    /// Entries per queue.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopen_and_recover_in_fetch_order() {
        let r = Arc::new(InflightRegion::create(2, 8).unwrap());
        assert_eq!(r.mmap_size(), 2 * queue_area_size(8) as u64);
        let q1 = r.queue(1, 8).unwrap();
        q1.get(5, 10);
        q1.get(2, 11);
        q1.get(7, 12);
        // 7 completes: pre_put, used idx 1 written, post_put.
        q1.pre_put(7);
        q1.post_put(7, 1);
        // The "backend" dies; the frontend hands the fd back.
        let file = r.file().try_clone().unwrap();
        let size = r.mmap_size();
        drop(q1);
        drop(r);
        let r2 = Arc::new(InflightRegion::open(file, size, 0, 2, 8).unwrap());
        let q1 = r2.queue(1, 8).unwrap();
        let rec = q1.recover(1);
        assert_eq!(rec.heads, vec![5, 2]);
        assert_eq!(rec.next_counter, 13);
        assert!(!rec.fixed_last_batch);
        // Queue 0 is untouched.
        assert!(r2.queue(0, 8).unwrap().recover(0).heads.is_empty());
    }

    #[test]
    fn crash_between_used_update_and_clear_is_repaired() {
        let r = Arc::new(InflightRegion::create(1, 4).unwrap());
        let q = r.queue(0, 4).unwrap();
        q.get(3, 1);
        q.get(1, 2);
        q.pre_put(3);
        // Used ring idx became 1 but the backend died before post_put.
        let rec = q.recover(1);
        assert!(rec.fixed_last_batch);
        assert_eq!(rec.heads, vec![1]);
    }

    #[test]
    fn geometry_and_size_are_checked() {
        assert!(InflightRegion::create(0, 8).is_err());
        let r = Arc::new(InflightRegion::create(1, 8).unwrap());
        assert!(matches!(
            r.queue(0, 16),
            Err(InflightError::Mismatch { .. })
        ));
        assert!(matches!(r.queue(1, 8), Err(InflightError::NoQueue(1))));
        let f = r.file().try_clone().unwrap();
        assert!(matches!(
            InflightRegion::open(f, 16, 0, 1, 8),
            Err(InflightError::TooSmall { .. })
        ));
    }
}
