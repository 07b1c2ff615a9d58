//! A verified read/write load on a multipath channel: every write puts a versioned pattern in
//! one block, every read checks the block against the last acknowledged version, and a block
//! has at most one I/O in flight (so the expected content is always known). Any I/O error or
//! mismatch is recorded; completions are kept with their time, latency and path for stall
//! measurements.

use std::time::{Duration, Instant};

use nvme_paths::{MultipathChannel, PathId};
use vmpath_bdev::{DmaBuf, IoChannel, IoRequest, IoType, SgList};

/// Block size used by the load.
pub const BS: usize = 4096;

/// The content of block `b` at `version` (0 = never written: zeroes).
pub fn pattern(b: u64, version: u32, out: &mut [u8]) {
    if version == 0 {
        out.fill(0);
        return;
    }
    let seed = (b << 32) | version as u64;
    for (i, w) in out.chunks_exact_mut(8).enumerate() {
        let v = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

/// One completed I/O.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// When it completed.
    pub at: Instant,
    /// Submission to completion.
    pub latency: Duration,
    /// The path that served it.
    pub path: Option<PathId>,
    /// True for a write.
    pub write: bool,
    /// Attempts (more than 1 after a failover).
    pub attempts: u16,
}

struct Slot {
    buf: DmaBuf,
    block: u64,
    version: u32,
    write: bool,
    busy: bool,
}

/// The load generator.
pub struct VerifiedLoad {
    blocks: u64,
    qd: usize,
    expected: Vec<u32>,
    block_busy: Vec<bool>,
    slots: Vec<Slot>,
    rng: u64,
    /// Completions, in order.
    pub done: Vec<Done>,
    /// Errors and data mismatches (must stay empty).
    pub errors: Vec<String>,
    in_flight: usize,
    check: Vec<u8>,
    per_path: Vec<u64>,
}

impl std::fmt::Debug for VerifiedLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLoad")
            .field("qd", &self.qd)
            .field("done", &self.done.len())
            .field("errors", &self.errors.len())
            .finish()
    }
}

impl VerifiedLoad {
    /// A load over blocks `0..blocks` with `qd` requests in flight.
    pub fn new(blocks: u64, qd: usize) -> VerifiedLoad {
        VerifiedLoad {
            blocks,
            qd,
            expected: vec![0; blocks as usize],
            block_busy: vec![false; blocks as usize],
            slots: (0..qd)
                .map(|_| Slot {
                    buf: DmaBuf::new(BS),
                    block: 0,
                    version: 0,
                    write: false,
                    busy: false,
                })
                .collect(),
            rng: 0x2545_f491_4f6c_dd1d,
            done: Vec::new(),
            errors: Vec::new(),
            in_flight: 0,
            check: vec![0; BS],
            per_path: Vec::new(),
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn submit_some(&mut self, ch: &mut MultipathChannel) {
        for s in 0..self.slots.len() {
            if self.slots[s].busy {
                continue;
            }
            let mut b = self.rand() % self.blocks;
            let mut tries = 0;
            while self.block_busy[b as usize] && tries < 8 {
                b = self.rand() % self.blocks;
                tries += 1;
            }
            if self.block_busy[b as usize] {
                continue;
            }
            let write = self.rand().is_multiple_of(2);
            let version = if write {
                self.expected[b as usize] + 1
            } else {
                0
            };
            let slot = &mut self.slots[s];
            if write {
                pattern(b, version, slot.buf.as_mut_slice());
            } else {
                slot.buf.as_mut_slice().fill(0xee);
            }
            let mut sg = SgList::new();
            // SAFETY: the slot's buffer stays allocated and untouched until its completion is
            // handled in `poll` (the slot is busy until then; slots live as long as self).
            sg.push(unsafe { slot.buf.iovec(0..BS) });
            let op = if write { IoType::Write } else { IoType::Read };
            let req = IoRequest::with_iovs(op, b, 1, sg, s as u64);
            if ch.submit(req).is_err() {
                return;
            }
            slot.block = b;
            slot.version = version;
            slot.write = write;
            slot.busy = true;
            self.block_busy[b as usize] = true;
            self.in_flight += 1;
        }
    }

    /// Submits up to the queue depth and handles completions once.
    pub fn step(&mut self, ch: &mut MultipathChannel) {
        self.submit_some(ch);
        let mut got = Vec::new();
        ch.poll_paths(&mut |c| got.push(c));
        for c in got {
            self.finish_one(c);
        }
    }

    /// Runs for `d`.
    pub fn run_for(&mut self, ch: &mut MultipathChannel, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.step(ch);
        }
    }

    /// Runs until `pred` holds (checked every step) or `timeout`; returns whether it held.
    pub fn run_until(
        &mut self,
        ch: &mut MultipathChannel,
        timeout: Duration,
        mut pred: impl FnMut(&MultipathChannel) -> bool,
    ) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            self.step(ch);
            if pred(ch) {
                return true;
            }
        }
        false
    }

    /// Lets every request in flight finish (submitting nothing new).
    pub fn drain(&mut self, ch: &mut MultipathChannel, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.in_flight > 0 && Instant::now() < until {
            let mut got = Vec::new();
            ch.poll_paths(&mut |c| got.push(c));
            for c in got {
                self.finish_one(c);
            }
        }
        self.in_flight == 0
    }

    fn finish_one(&mut self, c: nvme_paths::PathCompletion) {
        let s = c.tag as usize;
        if let Some(p) = c.path {
            if self.per_path.len() <= p.index() {
                self.per_path.resize(p.index() + 1, 0);
            }
            self.per_path[p.index()] += 1;
        }
        let slot = &mut self.slots[s];
        slot.busy = false;
        self.block_busy[slot.block as usize] = false;
        self.in_flight -= 1;
        self.done.push(Done {
            at: Instant::now(),
            latency: Duration::from_nanos(c.latency_ns),
            path: c.path,
            write: slot.write,
            attempts: c.attempts,
        });
        match c.result {
            Err(e) => self.errors.push(format!(
                "{} of block {} failed: {e} (path {:?}, {} attempts)",
                if slot.write { "write" } else { "read" },
                slot.block,
                c.path,
                c.attempts
            )),
            Ok(()) if slot.write => self.expected[slot.block as usize] = slot.version,
            Ok(()) => {
                let want = self.expected[slot.block as usize];
                pattern(slot.block, want, &mut self.check);
                if slot.buf.as_slice() != &self.check[..] {
                    self.errors.push(format!(
                        "block {} does not hold version {want} (path {:?})",
                        slot.block, c.path
                    ));
                }
            }
        }
    }

    /// Reads back every block and checks it against the last acknowledged version.
    pub fn verify_all(&mut self, ch: &mut MultipathChannel, timeout: Duration) -> usize {
        let until = Instant::now() + timeout;
        let mut buf = DmaBuf::new(BS);
        let mut bad = 0;
        for b in 0..self.blocks {
            let mut sg = SgList::new();
            // SAFETY: `buf` outlives the request: we wait for its completion below.
            sg.push(unsafe { buf.iovec(0..BS) });
            let tag = u64::MAX - b;
            let mut req = Some(IoRequest::with_iovs(IoType::Read, b, 1, sg, tag));
            let mut result = None;
            while result.is_none() && Instant::now() < until {
                if let Some(r) = req.take() {
                    if let Err(e) = ch.submit(r) {
                        req = Some(e.req);
                    }
                }
                ch.poll_paths(&mut |c| {
                    if c.tag == tag {
                        result = Some(c.result);
                    }
                });
            }
            pattern(b, self.expected[b as usize], &mut self.check);
            if result != Some(Ok(())) || buf.as_slice() != &self.check[..] {
                bad += 1;
                self.errors
                    .push(format!("final check: block {b} ({result:?})"));
            }
        }
        bad
    }

    /// The largest request latency among completions in `[from, to]`.
    pub fn max_latency_between(&self, from: Instant, to: Instant) -> Duration {
        self.done
            .iter()
            .rev()
            .take_while(|d| d.at >= from)
            .filter(|d| d.at <= to)
            .map(|d| d.latency)
            .max()
            .unwrap_or_default()
    }

    /// The largest latency of reads (`write` false) or writes completed in `[from, to]`.
    pub fn max_latency_of(&self, from: Instant, to: Instant, write: bool) -> Duration {
        self.done
            .iter()
            .rev()
            .take_while(|d| d.at >= from)
            .filter(|d| d.at <= to && d.write == write)
            .map(|d| d.latency)
            .max()
            .unwrap_or_default()
    }

    /// Completions served by `path` so far.
    pub fn served(&self, path: PathId) -> u64 {
        self.per_path.get(path.index()).copied().unwrap_or(0)
    }
}

/// Percentile (0..=100) of a list of durations.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}
