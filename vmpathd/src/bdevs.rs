//! Building block devices from their config / RPC parameters.

use std::sync::Arc;

use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::uring::UringBdev;
use vmpath_bdev::{parse_uuid, BdevError, BlockDevice};
use vmpath_config::BdevConfig;

fn sim_of(p: vmpath_config::SimParams) -> SimParams {
    SimParams {
        latency_ns: p.latency_us.saturating_mul(1000),
        max_iops: p.max_iops,
        max_bw_bytes: p.max_bw_mbps.saturating_mul(1 << 20),
    }
}

fn uuid_of(u: &Option<String>) -> Result<Option<[u8; 16]>, BdevError> {
    match u {
        None => Ok(None),
        Some(s) => parse_uuid(s)
            .map(Some)
            .ok_or_else(|| BdevError::InvalidParam {
                param: "uuid",
                msg: format!("{s:?} is not a UUID"),
            }),
    }
}

/// Creates the device a config entry describes. The parameters must have been validated.
pub fn build(cfg: &BdevConfig) -> Result<Arc<dyn BlockDevice>, BdevError> {
    Ok(match cfg {
        BdevConfig::Malloc(p) => {
            let mut d = MallocBdev::new(&p.name, p.num_blocks, p.block_size, sim_of(p.sim()))?;
            if let Some(u) = uuid_of(&p.uuid)? {
                d = d.with_uuid(u);
            }
            Arc::new(d)
        }
        BdevConfig::Null(p) => {
            let mut d = NullBdev::new(&p.name, p.num_blocks, p.block_size, sim_of(p.sim()))?;
            if let Some(u) = uuid_of(&p.uuid)? {
                d = d.with_uuid(u);
            }
            Arc::new(d)
        }
        BdevConfig::Uring(p) => Arc::new(UringBdev::new(
            &p.name,
            &p.filename,
            p.block_size,
            p.direct,
        )?),
    })
}
