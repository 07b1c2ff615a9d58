//! The null device: accepts every valid I/O and completes it without moving data. Reads leave
//! the buffers untouched. For benchmarks of everything above the device.

use std::sync::Arc;

use crate::sim::{CompletionQueue, SimDevice, SimParams};
use crate::{
    validate, BdevError, BdevInfo, BlockDevice, IoChannel, IoCompletion, IoRequest, IoStats,
    SharedStats, SubmitError, SubmitErrorKind,
};

/// Queue depth of one null channel.
pub const CHANNEL_DEPTH: usize = 4096;

/// A null block device.
#[derive(Debug)]
pub struct NullBdev {
    info: BdevInfo,
    sim: Arc<SimDevice>,
    stats: Arc<SharedStats>,
}

impl NullBdev {
    /// Creates a null device of `num_blocks` blocks of `block_size` bytes.
    pub fn new(
        name: &str,
        num_blocks: u64,
        block_size: u32,
        sim: SimParams,
    ) -> Result<NullBdev, BdevError> {
        let info = BdevInfo::in_memory(name, "null", num_blocks, block_size)?;
        Ok(NullBdev {
            info,
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

impl BlockDevice for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn IoChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            info: self.info.clone(),
            cq: CompletionQueue::new(CHANNEL_DEPTH, self.sim.clone(), self.stats.clone()),
        }))
    }

    fn stats(&self) -> IoStats {
        self.stats.snapshot()
    }
}

struct NullChannel {
    info: BdevInfo,
    cq: CompletionQueue,
}

impl IoChannel for NullChannel {
    #[inline]
    fn submit(&mut self, req: IoRequest) -> Result<(), SubmitError> {
        if self.cq.is_full() {
            return Err(SubmitError {
                req,
                reason: SubmitErrorKind::QueueFull,
            });
        }
        let result = validate(&self.info, &req);
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
