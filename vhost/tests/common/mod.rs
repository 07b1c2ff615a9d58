//! Shared harness of the in-process tests: reactor threads, controllers on RAM disks in a
//! private temporary directory, and the guest-playing frontend.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::frontend::{BlkDriver, Completion, DriverOptions, ReqKind};
use vhost::{VhostBlkConfig, VhostBlkController};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::BlockDevice;
use vmpath_runtime::{now_ns, PollStatus, Reactor, ReactorHandle};

pub const T: Duration = Duration::from_secs(20);

/// Reactor threads with the adaptive idle loop (short sleeps), stopped on drop.
pub struct Reactors {
    pub handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl Reactors {
    pub fn start(n: u32) -> Reactors {
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for id in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let mut r = Reactor::new(id, None, 1024).expect("reactor");
                tx.send(r.handle()).unwrap();
                let mut idle_since: Option<u64> = None;
                let mut stop_at: Option<u64> = None;
                loop {
                    let now = now_ns();
                    let st = r.poll(now);
                    if r.stop_requested() {
                        let d = *stop_at.get_or_insert(now + 5_000_000_000);
                        if (r.poller_count() == 0 && !r.has_messages()) || now > d {
                            break;
                        }
                    }
                    match st {
                        PollStatus::Busy => idle_since = None,
                        PollStatus::Idle => {
                            let s = *idle_since.get_or_insert(now);
                            if now - s > 200_000 {
                                r.sleep(now, 20_000_000);
                            }
                        }
                    }
                }
            }));
            handles.push(rx.recv().unwrap());
        }
        Reactors { handles, threads }
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        for h in &self.handles {
            h.request_stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmpath-vhost-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn malloc(name: &str, mib: u64, block_size: u32, latency_ns: u64) -> Arc<dyn BlockDevice> {
    Arc::new(
        MallocBdev::new(
            name,
            mib * 1024 * 1024 / block_size as u64,
            block_size,
            SimParams {
                latency_ns,
                ..SimParams::default()
            },
        )
        .unwrap(),
    )
}

pub fn controller(
    sock: &Path,
    bdev: Arc<dyn BlockDevice>,
    reactors: &Reactors,
    num_queues: u16,
    tweak: impl FnOnce(&mut VhostBlkConfig),
) -> VhostBlkController {
    let mut cfg = VhostBlkConfig::new("disk0", sock, bdev, "vm-a", reactors.handles.clone());
    cfg.num_queues = num_queues;
    cfg.drain_timeout = Duration::from_secs(10);
    tweak(&mut cfg);
    let mut c = VhostBlkController::new(cfg).unwrap();
    c.start().unwrap();
    c
}

pub fn opts(num_queues: u16) -> DriverOptions {
    DriverOptions {
        num_queues,
        queue_size: 64,
        max_data: 64 * 1024,
        ..DriverOptions::default()
    }
}

/// A deterministic byte pattern for (tag, offset).
pub fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Submits one request on queue `q`, kicks, and waits for its completion.
pub fn run_one(
    d: &mut BlkDriver,
    q: usize,
    kind: ReqKind,
    sector: u64,
    len: u32,
    data: Option<&[u8]>,
) -> (Completion, Vec<u8>) {
    let queue = d.queue(q);
    // The data must be in place before the device can see the request: write it first.
    if let Some(data) = data {
        queue.write_data(queue.next_slot().unwrap(), data).unwrap();
    }
    let slot = queue.submit(kind, sector, len, 7).unwrap();
    queue.kick();
    let c = queue.wait_for(1, T);
    assert_eq!(c.len(), 1, "no completion for {kind:?} at sector {sector}");
    let mut buf = vec![0u8; len as usize];
    if matches!(kind, ReqKind::Read | ReqKind::GetId) {
        queue.read_data(slot, &mut buf).unwrap();
    }
    (c[0], buf)
}

/// Writes `data` at `sector` through queue `q` and asserts success.
pub fn write(d: &mut BlkDriver, q: usize, sector: u64, data: &[u8]) {
    let queue = d.queue(q);
    let slot = queue.next_slot().unwrap();
    queue.write_data(slot, data).unwrap();
    let got = queue
        .submit(ReqKind::Write, sector, data.len() as u32, 1)
        .unwrap();
    assert_eq!(got, slot);
    queue.kick();
    let c = queue.wait_for(1, T);
    assert_eq!(c.len(), 1, "write at {sector} did not complete");
    assert_eq!(c[0].status, 0, "write at {sector} failed");
}

/// Reads `len` bytes at `sector` through queue `q`, asserting success.
pub fn read(d: &mut BlkDriver, q: usize, sector: u64, len: u32) -> Vec<u8> {
    let (c, buf) = run_one(d, q, ReqKind::Read, sector, len, None);
    assert_eq!(c.status, 0, "read at {sector} failed");
    assert_eq!(c.len, len + 1);
    buf
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
