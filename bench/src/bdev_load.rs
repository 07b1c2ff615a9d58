//! A closed-loop block I/O generator: keeps `qd` random reads or writes of `io_size` bytes in
//! flight on one [`IoChannel`], as a poller of a [`Reactor`], and records each I/O's latency
//! from submission to completion with the reactor's clock.
//!
//! One generator per channel, so one per reactor; run several reactors to load several
//! cores. Each in-flight I/O owns a slot (its buffer and submit time); the slot index is the
//! request tag, so completion handling is an array lookup.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use vmpath_bdev::sync::{run_to_completion, SyncIoError};
use vmpath_bdev::{BdevError, BlockDevice, DmaBuf, IoChannel, IoError, IoRequest, IoType, SgList};
use vmpath_runtime::{PollStatus, Reactor};

use crate::latency::LatencyHist;
use crate::rng::Rng;

/// Errors of load set-up and runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A parameter does not fit the device.
    #[error("invalid load parameter: {0}")]
    Invalid(String),
    /// A channel could not be opened.
    #[error("cannot open a channel: {0}")]
    Channel(String),
    /// A preparatory I/O failed.
    #[error("{what} at block {lba}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        lba: u64,
        /// Why.
        #[source]
        source: SyncIoError,
    },
    /// The device stopped completing I/O.
    #[error("no completion for {0} ms with {1} I/Os in flight")]
    Stalled(u64, usize),
}

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwMode {
    /// Uniformly random reads.
    RandRead,
    /// Uniformly random writes.
    RandWrite,
}

impl RwMode {
    /// fio-style name.
    pub fn name(self) -> &'static str {
        match self {
            RwMode::RandRead => "randread",
            RwMode::RandWrite => "randwrite",
        }
    }

    fn op(self) -> IoType {
        match self {
            RwMode::RandRead => IoType::Read,
            RwMode::RandWrite => IoType::Write,
        }
    }
}

impl fmt::Display for RwMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopAt {
    /// After this many nanoseconds of measurement (after warm-up).
    Duration(u64),
    /// After exactly this many I/Os (no warm-up is applied; for instruction counting).
    Ios(u64),
}

/// Parameters of one run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Access pattern.
    pub rw: RwMode,
    /// I/Os kept in flight.
    pub qd: usize,
    /// Bytes per I/O (a multiple of the block size).
    pub io_size: usize,
    /// End of the run.
    pub stop: StopAt,
    /// Warm-up before measuring (ignored with [`StopAt::Ios`]).
    pub warmup_ns: u64,
    /// Seed of the offset generator.
    pub seed: u64,
    /// A run fails if no I/O completes for this long.
    pub stall_ns: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// I/Os completed during the measurement.
    pub ios: u64,
    /// Length of the measurement in nanoseconds.
    pub elapsed_ns: u64,
    /// I/Os that completed with an error.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<IoError>,
    /// Submission-to-completion latency of every measured I/O.
    pub hist: LatencyHist,
    /// Bytes per I/O.
    pub io_size: usize,
    /// Set if the run was aborted.
    pub failure: Option<LoadError>,
}

impl LoadResult {
    /// Completed I/Os per second.
    pub fn iops(&self) -> f64 {
        if self.elapsed_ns == 0 {
            return 0.0;
        }
        self.ios as f64 * 1e9 / self.elapsed_ns as f64
    }

    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.iops() * self.io_size as f64 / (1024.0 * 1024.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
    Done,
}

/// Everything but the channel, so completions can update it while the channel is polled.
struct State {
    spec: LoadSpec,
    op: IoType,
    blocks_per_io: u32,
    /// Number of `io_size` units on the device.
    units: u64,
    rng: Rng,
    buf: DmaBuf,
    submit_ts: Vec<u64>,
    free: Vec<u32>,
    inflight: usize,
    submitted: u64,
    completed: u64,
    errors: u64,
    first_error: Option<IoError>,
    hist: LatencyHist,
    phase: Phase,
    started: Option<u64>,
    measure_start: u64,
    elapsed: u64,
    last_progress: u64,
    failure: Option<LoadError>,
}

/// A load generator bound to one channel.
pub struct BdevLoad {
    chan: Box<dyn IoChannel>,
    st: State,
}

impl fmt::Debug for BdevLoad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BdevLoad")
            .field("spec", &self.st.spec)
            .field("inflight", &self.st.inflight)
            .finish_non_exhaustive()
    }
}

impl BdevLoad {
    /// A generator on `chan`, a channel of `dev` opened on the reactor that will run it.
    pub fn new(
        dev: &dyn BlockDevice,
        chan: Box<dyn IoChannel>,
        spec: LoadSpec,
    ) -> Result<BdevLoad, LoadError> {
        let info = dev.info();
        let bs = info.block_size as usize;
        if spec.io_size == 0 || !spec.io_size.is_multiple_of(bs) {
            return Err(LoadError::Invalid(format!(
                "I/O size {} is not a multiple of the block size {bs}",
                spec.io_size
            )));
        }
        let blocks_per_io = u32::try_from(spec.io_size / bs)
            .map_err(|_| LoadError::Invalid("I/O size too large".into()))?;
        let units = info.num_blocks / blocks_per_io as u64;
        if units == 0 {
            return Err(LoadError::Invalid(format!(
                "device {} is smaller than one I/O",
                info.name
            )));
        }
        if spec.qd == 0 || spec.qd > chan.capacity() {
            return Err(LoadError::Invalid(format!(
                "queue depth {} must be 1..={} (channel capacity)",
                spec.qd,
                chan.capacity()
            )));
        }
        let align = info.buf_align.max(4096);
        let mut buf = DmaBuf::with_align(spec.qd * spec.io_size, align);
        // Non-zero data, so writes move real bytes and reads overwrite something.
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(97) ^ 0xa5;
        }
        let phase = match spec.stop {
            StopAt::Ios(_) => Phase::Measure,
            StopAt::Duration(_) if spec.warmup_ns == 0 => Phase::Measure,
            StopAt::Duration(_) => Phase::Warmup,
        };
        Ok(BdevLoad {
            chan,
            st: State {
                spec,
                op: spec.rw.op(),
                blocks_per_io,
                units,
                rng: Rng::new(spec.seed),
                buf,
                submit_ts: vec![0; spec.qd],
                free: (0..spec.qd as u32).rev().collect(),
                inflight: 0,
                submitted: 0,
                completed: 0,
                errors: 0,
                first_error: None,
                hist: LatencyHist::new(),
                phase,
                started: None,
                measure_start: 0,
                elapsed: 0,
                last_progress: 0,
                failure: None,
            },
        })
    }

    /// True once the run is over and every I/O has come back.
    pub fn is_done(&self) -> bool {
        self.st.phase == Phase::Done
    }

    /// One poller pass at `now`: reap completions, move between phases, refill the queue.
    /// Returns true if anything happened.
    #[inline]
    pub fn step(&mut self, now: u64) -> bool {
        let st = &mut self.st;
        if st.started.is_none() {
            st.started = Some(now);
            st.measure_start = now;
            st.last_progress = now;
        }
        let n = self.chan.poll(now, &mut |c| {
            let slot = c.tag as usize;
            if st.phase != Phase::Drain {
                st.hist.record(now.wrapping_sub(st.submit_ts[slot]));
                st.completed += 1;
            }
            if let Err(e) = c.result {
                st.errors += 1;
                st.first_error.get_or_insert(e);
            }
            st.free.push(slot as u32);
            st.inflight -= 1;
        });
        if n > 0 {
            st.last_progress = now;
        }
        st.transition(now);
        let mut submitted = false;
        if matches!(st.phase, Phase::Warmup | Phase::Measure) {
            submitted = st.refill(self.chan.as_mut(), now);
        }
        if n == 0 && st.inflight > 0 && now.saturating_sub(st.last_progress) > st.spec.stall_ns {
            st.failure = Some(LoadError::Stalled(
                st.spec.stall_ns / 1_000_000,
                st.inflight,
            ));
            if st.phase != Phase::Drain {
                st.elapsed = now.saturating_sub(st.measure_start);
            }
            st.phase = Phase::Done;
        }
        n > 0 || submitted
    }

    /// The result (complete once [`is_done`](Self::is_done)).
    pub fn result(&self) -> LoadResult {
        let st = &self.st;
        LoadResult {
            ios: st.completed,
            elapsed_ns: st.elapsed,
            errors: st.errors,
            first_error: st.first_error,
            hist: st.hist.clone(),
            io_size: st.spec.io_size,
            failure: st.failure.clone(),
        }
    }
}

impl State {
    fn transition(&mut self, now: u64) {
        match self.phase {
            Phase::Warmup => {
                if now.saturating_sub(self.measure_start) >= self.spec.warmup_ns {
                    self.hist.reset();
                    self.completed = 0;
                    self.errors = 0;
                    self.measure_start = now;
                    self.phase = Phase::Measure;
                }
            }
            Phase::Measure => {
                let over = match self.spec.stop {
                    StopAt::Duration(d) => now.saturating_sub(self.measure_start) >= d,
                    StopAt::Ios(n) => self.completed >= n,
                };
                if over {
                    self.elapsed = now.saturating_sub(self.measure_start);
                    self.phase = Phase::Drain;
                }
            }
            Phase::Drain => {}
            Phase::Done => return,
        }
        if self.phase == Phase::Drain && self.inflight == 0 {
            self.phase = Phase::Done;
        }
    }

    /// Submits until the queue depth is reached. Returns true if anything was submitted.
    #[inline]
    fn refill(&mut self, chan: &mut dyn IoChannel, now: u64) -> bool {
        let limit = match self.spec.stop {
            StopAt::Ios(n) => n,
            StopAt::Duration(_) => u64::MAX,
        };
        let mut any = false;
        while self.submitted < limit {
            let Some(slot) = self.free.pop() else { break };
            let lba = self.rng.below(self.units) * self.blocks_per_io as u64;
            let start = slot as usize * self.spec.io_size;
            let mut iovs = SgList::new();
            // SAFETY: each slot's buffer range is used by at most one I/O at a time (the slot
            // is on the free list only when its I/O has completed), and `buf` lives as long
            // as this generator, which is dropped only after every I/O came back (`Done`).
            iovs.push(unsafe { self.buf.iovec(start..start + self.spec.io_size) });
            let req = IoRequest::with_iovs(self.op, lba, self.blocks_per_io, iovs, slot as u64);
            match chan.submit(req) {
                Ok(()) => {
                    self.submit_ts[slot as usize] = now;
                    self.inflight += 1;
                    self.submitted += 1;
                    any = true;
                }
                Err(_) => {
                    // Backpressure: the slot waits for the next pass.
                    self.free.push(slot);
                    break;
                }
            }
        }
        any
    }
}

/// Writes the whole device once with non-zero data and flushes it, so that reads afterwards
/// hit real memory or real blocks (not holes, unwritten extents or the shared zero page).
/// Blocking; call it before the measurement, on the thread that will run the load.
pub fn prefill(dev: &dyn BlockDevice, clock: &dyn Fn() -> u64) -> Result<(), LoadError> {
    let info = dev.info();
    let mut chan = dev
        .open_channel()
        .map_err(|e: BdevError| LoadError::Channel(e.to_string()))?;
    let mut buf = DmaBuf::with_align(1 << 20, info.buf_align.max(4096));
    buf.as_mut_slice().fill(0x5a);
    let chunk = (1u64 << 20) / info.block_size as u64;
    let mut lba = 0;
    while lba < info.num_blocks {
        let n = chunk.min(info.num_blocks - lba) as u32;
        let len = n as usize * info.block_size as usize;
        let mut iovs = SgList::new();
        // SAFETY: `buf` outlives the write, which run_to_completion waits for.
        iovs.push(unsafe { buf.iovec(0..len) });
        let req = IoRequest::with_iovs(IoType::Write, lba, n, iovs, lba);
        run_to_completion(chan.as_mut(), req, clock, &mut |_| {}).map_err(|source| {
            LoadError::Io {
                what: "prefill write",
                lba,
                source,
            }
        })?;
        lba += n as u64;
    }
    let flush = IoRequest::no_data(IoType::Flush, 0, 0, u64::MAX);
    run_to_completion(chan.as_mut(), flush, clock, &mut |_| {}).map_err(|source| {
        LoadError::Io {
            what: "flush",
            lba: 0,
            source,
        }
    })?;
    Ok(())
}

/// Runs `load` as a poller on `reactor`, polling it with `clock()` until the run is over.
pub fn run_on_reactor(
    reactor: &mut Reactor,
    load: BdevLoad,
    clock: &dyn Fn() -> u64,
) -> LoadResult {
    let cell = Rc::new(RefCell::new(load));
    let c = cell.clone();
    let id = reactor.register_poller("bdev_load", move |r: &mut Reactor| {
        PollStatus::from_work(c.borrow_mut().step(r.now()))
    });
    while !cell.borrow().is_done() {
        reactor.poll(clock());
    }
    reactor.unregister_poller(id);
    // One more pass drops the poller (and with it the channel) on this reactor.
    reactor.poll(clock());
    let result = cell.borrow().result();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use vmpath_bdev::malloc::MallocBdev;
    use vmpath_bdev::null::NullBdev;
    use vmpath_bdev::sim::SimParams;

    #[test]
    fn fixed_count_run_does_exactly_n_ios() {
        let d = NullBdev::new("n", 1 << 20, 512, SimParams::default()).unwrap();
        let spec = LoadSpec {
            rw: RwMode::RandRead,
            qd: 32,
            io_size: 4096,
            stop: StopAt::Ios(1000),
            warmup_ns: 0,
            seed: 1,
            stall_ns: 1_000_000_000,
        };
        let load = BdevLoad::new(&d, d.open_channel().unwrap(), spec).unwrap();
        let mut r = Reactor::new(0, None, 16).unwrap();
        let t = Cell::new(0u64);
        let res = run_on_reactor(&mut r, load, &|| {
            t.set(t.get() + 100);
            t.get()
        });
        assert_eq!(res.ios, 1000);
        assert_eq!(res.errors, 0);
        assert_eq!(res.hist.len(), 1000);
        assert_eq!(d.stats().read_ops, 1000);
        assert_eq!(d.stats().bytes_read, 4096 * 1000);
        assert_eq!(r.poller_count(), 0);
    }

    #[test]
    fn timed_run_on_a_capacity_limited_device() {
        // 10k IOPS device, 100 ms measured on a fake clock after 10 ms warm-up: ~1000 I/Os,
        // and at QD 4 each waits for ~4 services (400 µs).
        let d = MallocBdev::new(
            "m",
            1024,
            4096,
            SimParams {
                max_iops: 10_000,
                ..SimParams::default()
            },
        )
        .unwrap();
        let spec = LoadSpec {
            rw: RwMode::RandWrite,
            qd: 4,
            io_size: 4096,
            stop: StopAt::Duration(100_000_000),
            warmup_ns: 10_000_000,
            seed: 7,
            stall_ns: 1_000_000_000,
        };
        let load = BdevLoad::new(&d, d.open_channel().unwrap(), spec).unwrap();
        let mut r = Reactor::new(0, None, 16).unwrap();
        let t = Cell::new(0u64);
        let res = run_on_reactor(&mut r, load, &|| {
            t.set(t.get() + 1_000);
            t.get()
        });
        assert!((9_500.0..=10_500.0).contains(&res.iops()), "{}", res.iops());
        let p = res.hist.percentiles();
        assert!((390.0..=410.0).contains(&p.p50_us), "{p:?}");
    }

    #[test]
    fn bad_specs_are_rejected() {
        let d = NullBdev::new("n", 8, 4096, SimParams::default()).unwrap();
        let mut spec = LoadSpec {
            rw: RwMode::RandRead,
            qd: 1,
            io_size: 1000,
            stop: StopAt::Ios(1),
            warmup_ns: 0,
            seed: 1,
            stall_ns: 1,
        };
        assert!(BdevLoad::new(&d, d.open_channel().unwrap(), spec).is_err());
        spec.io_size = 64 * 4096;
        assert!(BdevLoad::new(&d, d.open_channel().unwrap(), spec).is_err());
        spec.io_size = 4096;
        spec.qd = 1 << 20;
        assert!(BdevLoad::new(&d, d.open_channel().unwrap(), spec).is_err());
    }
}
