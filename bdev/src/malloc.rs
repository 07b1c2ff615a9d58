//! The malloc device: a RAM disk. Memory is allocated zeroed and lazily backed by the kernel,
//! so a large device costs only what is written. Unmap and write-zeroes zero the range (reads
//! of deallocated blocks return zeroes).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;

use crate::sim::{CompletionQueue, SimDevice, SimParams};
use crate::{
    validate, BdevError, BdevInfo, BlockDevice, IoChannel, IoCompletion, IoRequest, IoStats,
    IoType, SharedStats, SubmitError, SubmitErrorKind,
};

/// Queue depth of one malloc channel.
pub const CHANNEL_DEPTH: usize = 4096;

/// The device's memory.
#[derive(Debug)]
struct Mem {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the memory is a plain byte array owned by Mem; all access goes through raw copies in
// MallocChannel, each bounded by `validate` to the allocation. Concurrent I/O to overlapping
// ranges from different channels has unspecified content, as on real media (NVMe gives no
// ordering between overlapping commands in flight); callers that need order serialise it.
unsafe impl Send for Mem {}
// SAFETY: see above.
unsafe impl Sync for Mem {}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in MallocBdev::new with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A RAM block device.
#[derive(Debug)]
pub struct MallocBdev {
    info: BdevInfo,
    mem: Arc<Mem>,
    sim: Arc<SimDevice>,
    stats: Arc<SharedStats>,
}

impl MallocBdev {
    /// Creates a RAM device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(
        name: &str,
        num_blocks: u64,
        block_size: u32,
        sim: SimParams,
    ) -> Result<MallocBdev, BdevError> {
        let info = BdevInfo::in_memory(name, "malloc", num_blocks, block_size)?;
        let size = num_blocks
            .checked_mul(block_size as u64)
            .filter(|s| *s <= isize::MAX as u64 / 2)
            .ok_or_else(|| BdevError::InvalidParam {
                param: "num_blocks",
                msg: format!("{num_blocks} blocks of {block_size} bytes is too large"),
            })?;
        let layout =
            Layout::from_size_align(size as usize, 4096).map_err(|e| BdevError::InvalidParam {
                param: "num_blocks",
                msg: e.to_string(),
            })?;
        // SAFETY: non-zero size (num_blocks >= 1).
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(BdevError::Os {
                what: "allocating malloc bdev memory",
                source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            });
        }
        Ok(MallocBdev {
            info,
            mem: Arc::new(Mem { ptr, layout }),
            sim: Arc::new(SimDevice::new(sim)),
            stats: Arc::default(),
        })
    }

    /// Replaces the identifier derived from the name (e.g. with a configured UUID).
    pub fn with_uuid(mut self, uuid: [u8; 16]) -> Self {
        self.info.uuid = uuid;
        self
    }

    /// The simulation knobs.
    pub fn sim(&self) -> SimParams {
        self.sim.params()
    }
}

impl BlockDevice for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(MallocChannel {
            info: self.info.clone(),
            mem: self.mem.clone(),
            cq: CompletionQueue::new(CHANNEL_DEPTH, self.sim.clone(), self.stats.clone()),
        }))
    }

    fn unmap_zeroes(&self) -> bool {
        true
    }

    fn stats(&self) -> IoStats {
        self.stats.snapshot()
    }
}

struct MallocChannel {
    info: BdevInfo,
    mem: Arc<Mem>,
    cq: CompletionQueue,
}

impl MallocChannel {
    fn execute(&self, req: &IoRequest) {
        let bs = self.info.block_size as usize;
        let start = req.offset_blocks as usize * bs;
        let len = req.num_blocks as usize * bs;
        match req.op {
            IoType::Read => {
                let mut off = start;
                for v in &req.iovs {
                    // SAFETY: validate() proved the range lies inside the allocation and the
                    // iovecs add up to its length; the IoVec contract lends us the buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(self.mem.ptr.add(off), v.base(), v.len())
                    };
                    off += v.len();
                }
            }
            IoType::Write => {
                let mut off = start;
                for v in &req.iovs {
                    // SAFETY: as for reads, in the other direction.
                    unsafe {
                        std::ptr::copy_nonoverlapping(v.base(), self.mem.ptr.add(off), v.len())
                    };
                    off += v.len();
                }
            }
            IoType::Unmap | IoType::WriteZeroes => {
                // SAFETY: validate() proved start..start+len lies inside the allocation.
                unsafe { std::ptr::write_bytes(self.mem.ptr.add(start), 0, len) };
            }
            IoType::Flush => {}
        }
    }
}

impl IoChannel for MallocChannel {
    #[inline]
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError> {
        if self.cq.is_full() {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        }
        let result = validate(&self.info, &req);
        if result.is_ok() {
            self.execute(&req);
        }
        let bytes = req.num_blocks as u64 * self.info.block_size as u64;
        self.cq.push(req.op, bytes, req.tag, result);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, now: u64, done: &mut dyn FnMut(IoCompletion)) -> usize {
        self.cq.poll(now, done)
    }

    fn outstanding(&self) -> usize {
        self.cq.len()
    }

    fn capacity(&self) -> usize {
        self.cq.cap()
    }
}
