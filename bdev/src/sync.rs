//! Blocking helpers over the polled API, for management operations and tests (never the data
//! path): submit one request and poll the channel until it completes.

use crate::{IoChannel, IoError, IoRequest, SubmitErrorKind};

/// Errors of [`run_to_completion`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncIoError {
    /// The I/O completed with an error.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The channel never produced the completion within the poll budget.
    #[error("no completion for tag {0} after {1} polls")]
    Stuck(u64, u64),
}

/// Submits `req` and polls `chan` (with `clock` as its time source) until that request
/// completes. Completions of other requests seen meanwhile are passed to `others`.
pub fn run_to_completion(
    chan: &mut dyn IoChannel,
    req: IoRequest,
    clock: &dyn Fn() -> u64,
    others: &mut dyn FnMut(crate::IoCompletion),
) -> Result<(), SyncIoError> {
    let tag = req.tag;
    let mut req = req;
    let mut polls: u64 = 0;
    const MAX_POLLS: u64 = 50_000_000;
    loop {
        match chan.submit(req) {
            Ok(()) => break,
            Err(e) => {
                debug_assert_eq!(e.reason, SubmitErrorKind::QueueFull);
                req = e.req;
                chan.poll(clock(), others);
                polls += 1;
                if polls > MAX_POLLS {
                    return Err(SyncIoError::Stuck(tag, polls));
                }
            }
        }
    }
    let mut result = None;
    while result.is_none() {
        chan.poll(clock(), &mut |c| {
            if c.tag == tag && result.is_none() {
                result = Some(c.result);
            } else {
                others(c);
            }
        });
        polls += 1;
        if polls > MAX_POLLS {
            return Err(SyncIoError::Stuck(tag, polls));
        }
        if result.is_none() && polls.is_multiple_of(1024) {
            std::thread::yield_now();
        }
    }
    Ok(result.expect("set above")?)
}
