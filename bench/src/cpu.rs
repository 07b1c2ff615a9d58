//! Pinning the benchmark thread to one core, like a reactor.

/// Errors of core selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// The core is not in the process CPU set.
    #[error("core {core} is not available to this process (allowed: {allowed:?})")]
    NotAllowed {
        /// Requested core.
        core: usize,
        /// Cores the process may use.
        allowed: Vec<usize>,
    },
    /// The CPU set could not be read.
    #[error("cannot read the process CPU set")]
    NoCores,
    /// The kernel refused the affinity change.
    #[error("cannot pin the thread to core {0}")]
    PinFailed(usize),
}

/// Cores this process may run on.
pub fn allowed_cores() -> Result<Vec<usize>, CpuError> {
    let ids = core_affinity::get_core_ids().ok_or(CpuError::NoCores)?;
    let mut v: Vec<usize> = ids.into_iter().map(|c| c.id).collect();
    v.sort_unstable();
    if v.is_empty() {
        return Err(CpuError::NoCores);
    }
    Ok(v)
}

/// Pins the calling thread to `core` (default: the last allowed core, away from core 0 where
/// interrupts and housekeeping usually land). Returns the core used.
pub fn pin_current_thread(core: Option<usize>) -> Result<usize, CpuError> {
    let allowed = allowed_cores()?;
    let core = match core {
        Some(c) if allowed.contains(&c) => c,
        Some(c) => return Err(CpuError::NotAllowed { core: c, allowed }),
        None => *allowed.last().ok_or(CpuError::NoCores)?,
    };
    if core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        Ok(core)
    } else {
        Err(CpuError::PinFailed(core))
    }
}
