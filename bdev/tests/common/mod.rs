//! Shared test drivers: a write-then-read-back checker for one region of a device, run as a
//! reactor poller, either on reactors polled by the test thread or on `Runtime` threads.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use vmpath_bdev::{
    BlockDevice, DmaBuf, IoChannel, IoCompletion, IoRequest, IoType, SgList, SubmitErrorKind,
};
use vmpath_runtime::{PollStatus, Reactor, Runtime, RuntimeConfig, Topology};

/// Byte `i` of a block pattern; different per seed and per block.
pub fn pattern_byte(seed: u64, lba: u64, i: usize) -> u8 {
    let x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(lba.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(i as u64 / 8);
    (x >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(31)
}

/// Fills `buf` with the pattern of `seed` for blocks starting at `lba`.
pub fn fill_pattern(buf: &mut [u8], bs: usize, lba: u64, seed: u64) {
    for (b, block) in buf.chunks_mut(bs).enumerate() {
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = pattern_byte(seed, lba + b as u64, i);
        }
    }
}

/// What one checker does.
#[derive(Debug, Clone, Copy)]
pub struct RegionSpec {
    /// First block of the region.
    pub base_lba: u64,
    /// Number of I/Os per phase.
    pub ios: u64,
    /// Blocks per I/O.
    pub io_blocks: u32,
    /// Queue depth to keep.
    pub qd: usize,
    /// Pattern seed.
    pub seed: u64,
}

impl RegionSpec {
    /// Blocks covered.
    pub fn blocks(&self) -> u64 {
        self.ios * self.io_blocks as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Write,
    Read,
    Done,
}

/// Writes a pattern over its region at a fixed queue depth, in a scrambled order, then reads
/// it back at the same depth and compares.
pub struct RegionCheck {
    chan: Box<dyn IoChannel>,
    spec: RegionSpec,
    bs: usize,
    wbuf: DmaBuf,
    rbuf: DmaBuf,
    phase: Phase,
    next: u64,
    completed: u64,
    inflight: usize,
    /// Highest number of I/Os in flight observed.
    pub max_inflight: usize,
    stride: u64,
    error: Option<String>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl RegionCheck {
    /// A checker on `chan` for a device of block size `bs`.
    pub fn new(chan: Box<dyn IoChannel>, bs: usize, spec: RegionSpec) -> RegionCheck {
        let len = spec.blocks() as usize * bs;
        let mut wbuf = DmaBuf::new(len);
        fill_pattern(wbuf.as_mut_slice(), bs, spec.base_lba, spec.seed);
        let rbuf = DmaBuf::new(len);
        let stride = [7919u64, 104_729, 1]
            .into_iter()
            .find(|s| gcd(*s, spec.ios.max(1)) == 1)
            .unwrap_or(1);
        RegionCheck {
            chan,
            spec,
            bs,
            wbuf,
            rbuf,
            phase: Phase::Write,
            next: 0,
            completed: 0,
            inflight: 0,
            max_inflight: 0,
            stride,
            error: None,
        }
    }

    /// True when done (successfully or not).
    pub fn finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Outcome once finished.
    pub fn result(&self) -> Result<(), String> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None if self.finished() => Ok(()),
            None => Err("not finished".into()),
        }
    }

    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
        self.phase = Phase::Done;
    }

    fn request(&mut self, k: u64) -> IoRequest {
        let k = (k * self.stride) % self.spec.ios;
        let nb = self.spec.io_blocks;
        let start = k as usize * nb as usize * self.bs;
        let len = nb as usize * self.bs;
        let (op, buf) = match self.phase {
            Phase::Write => (IoType::Write, &mut self.wbuf),
            _ => (IoType::Read, &mut self.rbuf),
        };
        let mut iovs = SgList::new();
        // SAFETY: the buffers live in self and are not touched until every I/O completed
        // (the checker only compares after the read phase ends, and is not dropped with
        // I/O in flight while the reactor is polled to completion).
        unsafe {
            if nb >= 2 {
                // Two segments to exercise scatter-gather.
                iovs.push(buf.iovec(start..start + self.bs));
                iovs.push(buf.iovec(start + self.bs..start + len));
            } else {
                iovs.push(buf.iovec(start..start + len));
            }
        }
        IoRequest::with_iovs(op, self.spec.base_lba + k * nb as u64, nb, iovs, k)
    }

    /// Polls completions and keeps the queue full. Returns true if it did work.
    pub fn step(&mut self, now: u64) -> bool {
        if self.finished() {
            return false;
        }
        let mut got: Vec<IoCompletion> = Vec::new();
        let n = self.chan.poll(now, &mut |c| got.push(c));
        for c in got {
            self.inflight -= 1;
            self.completed += 1;
            if let Err(e) = c.result {
                self.fail(format!("{:?} I/O tag {} failed: {e}", self.phase, c.tag));
                return true;
            }
        }
        if self.completed == self.spec.ios && self.inflight == 0 {
            match self.phase {
                Phase::Write => {
                    self.phase = Phase::Read;
                    self.next = 0;
                    self.completed = 0;
                }
                Phase::Read => {
                    if let Some(pos) = self
                        .wbuf
                        .as_slice()
                        .iter()
                        .zip(self.rbuf.as_slice())
                        .position(|(a, b)| a != b)
                    {
                        let lba = self.spec.base_lba + (pos / self.bs) as u64;
                        self.fail(format!(
                            "data mismatch at block {lba} byte {}",
                            pos % self.bs
                        ));
                    } else {
                        self.phase = Phase::Done;
                    }
                    return true;
                }
                Phase::Done => {}
            }
        }
        let mut submitted = 0;
        while self.inflight < self.spec.qd && self.next < self.spec.ios {
            let req = self.request(self.next);
            match self.chan.submit(req) {
                Ok(()) => {
                    self.next += 1;
                    self.inflight += 1;
                    submitted += 1;
                }
                Err(e) => {
                    assert_eq!(e.reason, SubmitErrorKind::QueueFull);
                    break;
                }
            }
        }
        self.max_inflight = self.max_inflight.max(self.inflight);
        if self.chan.outstanding() != self.inflight {
            let o = self.chan.outstanding();
            self.fail(format!("outstanding() = {o}, expected {}", self.inflight));
        }
        n > 0 || submitted > 0
    }
}

/// Runs checkers on reactors polled by this thread (one reactor per checker), with the real
/// clock, until all finish. Returns each checker's result and its highest queue depth.
pub fn run_on_test_thread(checks: Vec<RegionCheck>) -> Vec<(Result<(), String>, usize)> {
    let mut reactors = Vec::new();
    let mut cells = Vec::new();
    for (i, check) in checks.into_iter().enumerate() {
        let mut r = Reactor::new(i as u32, None, 64).expect("reactor");
        let cell = Rc::new(RefCell::new(check));
        let c = cell.clone();
        r.register_poller("region-check", move |r: &mut Reactor| {
            PollStatus::from_work(c.borrow_mut().step(r.now()))
        });
        reactors.push(r);
        cells.push(cell);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut busy = false;
        for r in &mut reactors {
            busy |= r.poll(vmpath_runtime::now_ns()) == PollStatus::Busy;
        }
        if cells.iter().all(|c| c.borrow().finished()) {
            break;
        }
        assert!(Instant::now() < deadline, "checkers did not finish in time");
        if !busy {
            std::thread::yield_now();
        }
    }
    cells
        .iter()
        .map(|c| {
            let c = c.borrow();
            (c.result(), c.max_inflight)
        })
        .collect()
}

/// Up to `n` cores of this process, for a small runtime.
pub fn some_cores(n: usize) -> Vec<usize> {
    let topo = Topology::discover().expect("topology");
    let mut cores = topo.resolve(None).expect("cores");
    cores.truncate(n);
    cores
}

/// Starts a runtime on up to `n` cores with short sleeps (tests never pin).
pub fn start_runtime(n: usize) -> Runtime {
    Runtime::start(RuntimeConfig {
        cores: Some(some_cores(n)),
        idle_sleep_ns: 1_000_000,
        max_sleep_ns: 1_000_000,
        pin: false,
        stop_grace: Duration::from_secs(5),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Runs one checker per spec on the runtime's reactor threads (round robin), each with its
/// own channel opened on its reactor. Returns results in spec order.
pub fn run_on_runtime(
    rt: &Runtime,
    dev: Arc<dyn BlockDevice>,
    specs: &[RegionSpec],
) -> Vec<(Result<(), String>, usize)> {
    let (tx, rx) = mpsc::channel::<(usize, Result<(), String>, usize)>();
    let handles = rt.handles();
    for (i, spec) in specs.iter().copied().enumerate() {
        let dev = dev.clone();
        let tx = tx.clone();
        handles[i % handles.len()]
            .send(move |r: &mut Reactor| {
                let chan = match dev.open_channel() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send((i, Err(format!("open_channel: {e}")), 0));
                        return;
                    }
                };
                let bs = dev.info().block_size as usize;
                let mut check = RegionCheck::new(chan, bs, spec);
                let me = Rc::new(RefCell::new(None));
                let me2 = me.clone();
                let id = r.register_poller("region-check", move |r: &mut Reactor| {
                    let busy = check.step(r.now());
                    if check.finished() {
                        let _ = tx.send((i, check.result(), check.max_inflight));
                        if let Some(id) = *me2.borrow() {
                            r.unregister_poller(id);
                        }
                    }
                    PollStatus::from_work(busy)
                });
                *me.borrow_mut() = Some(id);
            })
            .expect("send to reactor");
    }
    drop(tx);
    let mut out: Vec<Option<(Result<(), String>, usize)>> = vec![None; specs.len()];
    for _ in 0..specs.len() {
        let (i, res, qd) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("checker finished in time");
        out[i] = Some((res, qd));
    }
    out.into_iter().map(|o| o.expect("every result")).collect()
}

/// Submits one request on `chan` and polls (real clock) until its completion.
pub fn run_one(chan: &mut dyn IoChannel, req: IoRequest) -> IoCompletion {
    let tag = req.tag;
    chan.submit(req).expect("queue has room");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = None;
        chan.poll(vmpath_runtime::now_ns(), &mut |c| {
            assert_eq!(c.tag, tag, "unexpected completion");
            got = Some(c);
        });
        if let Some(c) = got {
            return c;
        }
        assert!(Instant::now() < deadline, "no completion for tag {tag}");
        std::thread::yield_now();
    }
}

/// Reads `num_blocks` at `lba` into a fresh buffer and returns it.
pub fn read_blocks(chan: &mut dyn IoChannel, bs: usize, lba: u64, num_blocks: u32) -> DmaBuf {
    let mut buf = DmaBuf::new(num_blocks as usize * bs);
    let len = buf.len();
    // SAFETY: `buf` outlives the I/O, which run_one waits for.
    let iov = unsafe { buf.iovec(0..len) };
    let c = run_one(
        chan,
        IoRequest::with_iovs(IoType::Read, lba, num_blocks, SgList::from_elem(iov, 1), 1),
    );
    c.result.expect("read succeeds");
    buf
}

/// Writes `data` (a whole number of blocks) at `lba`.
pub fn write_blocks(chan: &mut dyn IoChannel, bs: usize, lba: u64, data: &[u8]) {
    let mut buf = DmaBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    let len = buf.len();
    // SAFETY: `buf` outlives the I/O, which run_one waits for.
    let iov = unsafe { buf.iovec(0..len) };
    let c = run_one(
        chan,
        IoRequest::with_iovs(
            IoType::Write,
            lba,
            (data.len() / bs) as u32,
            SgList::from_elem(iov, 1),
            2,
        ),
    );
    c.result.expect("write succeeds");
}
