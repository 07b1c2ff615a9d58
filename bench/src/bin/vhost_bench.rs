//! `vhost_bench`: vhost-user-blk targets driven by a userspace frontend that plays the guest.
//!
//! The load generator ([`vhost::frontend::BlkDriver`]) owns guest RAM (memfds shared with the
//! target), negotiates like QEMU (indirect descriptors, EVENT_IDX), fills the split ring
//! directly and busy-polls the used ring on its own pinned core, kicking the target only when
//! the target asks for it. For each target × access pattern × queue depth it keeps `qd`
//! random 4 KiB requests in flight on one virtqueue and prints IOPS, the target's CPU use,
//! IOPS per target core and p50 / p99 / p99.9 submit-to-completion latency.
//!
//! Targets, in the same run:
//! * `vmpath`: an in-process vmpath vhost-user-blk controller on a 1 GiB null disk, its queue
//!   served by one reactor pinned to `--target-core`;
//! * `qsd`: the reference, `qemu-storage-daemon --blockdev null-co,node-name=n0,size=1073741824
//!   --export type=vhost-user-blk,...,num-queues=1,writable=on`, pinned to `--target-core`
//!   with `taskset`.
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin vhost_bench                 # both targets, QD 1/32/128
//! target/release/vhost_bench --target vmpath --qd 32 --rw randread --secs 5
//! ```
//!
//! CPU use is read from `/proc` (the reactor thread, or the whole qemu-storage-daemon
//! process) over the measured interval; "IOPS/core" divides IOPS by it. A poll-mode reactor
//! uses its whole core by design; the daemon sleeps when the ring is empty.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use vhost::frontend::{BlkDriver, Completion, DriverOptions, ReqKind};
use vhost::{VhostBlkConfig, VhostBlkController};
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bench::cpu;
use vmpath_bench::latency::LatencyHist;
use vmpath_bench::report::{micros, thousands, Table};
use vmpath_bench::rng::Rng;
use vmpath_runtime::{now_ns, Runtime, RuntimeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// vmpath's vhost-user-blk controller, in process, one pinned reactor.
    Vmpath,
    /// qemu-storage-daemon's vhost-user-blk export (reference).
    Qsd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

/// vhost-user-blk benchmark: a guest-playing frontend against vmpath and qemu-storage-daemon.
#[derive(Debug, Parser)]
#[command(name = "vhost_bench", version)]
struct Args {
    /// Targets, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TargetKind::Vmpath, TargetKind::Qsd])]
    target: Vec<TargetKind>,
    /// Queue depths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 128])]
    qd: Vec<usize>,
    /// Access patterns, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Rw::Randread, Rw::Randwrite])]
    rw: Vec<Rw>,
    /// Measured seconds per combination.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Warm-up per combination, in milliseconds.
    #[arg(long, default_value_t = 200)]
    warmup_ms: u64,
    /// Core of the target (the vmpath reactor, or qemu-storage-daemon).
    #[arg(long, default_value_t = 0)]
    target_core: usize,
    /// Core of the load generator.
    #[arg(long, default_value_t = 1)]
    driver_core: usize,
    /// Virtqueue size.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// I/O size in bytes.
    #[arg(long, default_value_t = 4096)]
    io_size: u32,
    /// qemu-storage-daemon binary.
    #[arg(long, default_value = "/usr/bin/qemu-storage-daemon")]
    qsd: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Disk size of both targets.
const DISK_BYTES: u64 = 1 << 30;

/// Where a target's CPU time is read.
enum CpuProbe {
    /// One thread of this process.
    Thread(i32),
    /// A whole child process.
    Process(u32),
}

impl CpuProbe {
    fn stat_path(&self) -> String {
        match self {
            CpuProbe::Thread(tid) => format!("/proc/self/task/{tid}/stat"),
            CpuProbe::Process(pid) => format!("/proc/{pid}/stat"),
        }
    }

    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> Result<f64> {
        let s = std::fs::read_to_string(self.stat_path())
            .with_context(|| format!("reading {}", self.stat_path()))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = s
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat line")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f
            .get(11)
            .and_then(|v| v.parse().ok())
            .zip(f.get(12).and_then(|v| v.parse::<u64>().ok()))
            .map(|(u, s): (u64, u64)| u + s)
            .context("no utime/stime in stat")?;
        // /proc reports clock ticks in USER_HZ, which the Linux ABI fixes at 100 on x86 and
        // arm64.
        Ok(ticks as f64 / 100.0)
    }
}

/// A running target.
struct Target {
    name: &'static str,
    socket: PathBuf,
    probe: CpuProbe,
    keep: Keep,
}

enum Keep {
    Vmpath {
        ctrl: VhostBlkController,
        runtime: Runtime,
    },
    Qsd(Child),
}

impl Target {
    fn start(kind: TargetKind, args: &Args, dir: &Path) -> Result<Target> {
        match kind {
            TargetKind::Vmpath => {
                let runtime = Runtime::start(RuntimeConfig {
                    cores: Some(vec![args.target_core]),
                    ..RuntimeConfig::default()
                })
                .context("starting the reactor")?;
                // The reactor thread's id, from /proc/thread-self ("<pid>/task/<tid>").
                let tid = runtime.handles()[0]
                    .call(|_| {
                        std::fs::read_link("/proc/thread-self")
                            .ok()
                            .and_then(|p| p.file_name()?.to_str()?.parse::<i32>().ok())
                    })
                    .map_err(|e| anyhow::anyhow!("reactor: {e}"))?
                    .context("cannot read the reactor's thread id")?;
                let bdev = Arc::new(NullBdev::new(
                    "null0",
                    DISK_BYTES / 512,
                    512,
                    SimParams::default(),
                )?);
                let socket = dir.join("vmpath.sock");
                let mut cfg = VhostBlkConfig::new(
                    "bench0",
                    &socket,
                    bdev,
                    "vm-bench",
                    runtime.handles().to_vec(),
                );
                cfg.num_queues = 1;
                let mut ctrl = VhostBlkController::new(cfg)?;
                ctrl.start()?;
                Ok(Target {
                    name: "vmpath",
                    socket,
                    probe: CpuProbe::Thread(tid),
                    keep: Keep::Vmpath { ctrl, runtime },
                })
            }
            TargetKind::Qsd => {
                if !args.qsd.exists() {
                    bail!("{} not found (install qemu-utils)", args.qsd.display());
                }
                let socket = dir.join("qsd.sock");
                let export = format!(
                    "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={},num-queues=1,writable=on",
                    socket.display()
                );
                let child = Command::new("taskset")
                    .arg("-c")
                    .arg(args.target_core.to_string())
                    .arg(&args.qsd)
                    .args(["--blockdev", "null-co,node-name=n0,size=1073741824"])
                    .args(["--export", &export])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .context("starting qemu-storage-daemon")?;
                let mut child = child;
                let pid = child.id();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !socket.exists() {
                    if let Some(st) = child.try_wait()? {
                        bail!("qemu-storage-daemon exited: {st}");
                    }
                    if Instant::now() > deadline {
                        bail!("qemu-storage-daemon did not create {}", socket.display());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(Target {
                    name: "qsd",
                    socket,
                    probe: CpuProbe::Process(pid),
                    keep: Keep::Qsd(child),
                })
            }
        }
    }

    fn stop(self) {
        match self.keep {
            Keep::Vmpath { mut ctrl, runtime } => {
                let _ = ctrl.stop();
                drop(ctrl);
                runtime.shutdown();
            }
            Keep::Qsd(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

struct RunResult {
    iops: f64,
    cpu: f64,
    hist: LatencyHist,
}

/// Keeps `qd` random requests in flight for the warm-up and then `secs`.
fn run_load(
    d: &mut BlkDriver,
    probe: &CpuProbe,
    rw: Rw,
    qd: usize,
    args: &Args,
) -> Result<RunResult> {
    let kind = match rw {
        Rw::Randread => ReqKind::Read,
        Rw::Randwrite => ReqKind::Write,
    };
    let io = args.io_size;
    let slots_on_disk = DISK_BYTES / io as u64;
    let sectors_per_io = io as u64 / 512;
    let mut rng = Rng::new(args.seed ^ qd as u64);
    let q = d.queue(0);
    let mut submitted_at = vec![0u64; q.size() as usize];
    let mut hist = LatencyHist::new();
    let mut done: Vec<Completion> = Vec::with_capacity(qd);
    let mut submit =
        |q: &mut vhost::frontend::DriverQueue, at: &mut [u64], now: u64| -> Result<()> {
            let sector = rng.below(slots_on_disk) * sectors_per_io;
            let slot = q.submit(kind, sector, io, 0)?;
            at[slot as usize] = now;
            Ok(())
        };
    let start = now_ns();
    for _ in 0..qd {
        submit(q, &mut submitted_at, start)?;
    }
    q.kick();
    let warm_end = start + args.warmup_ms * 1_000_000;
    let mut measuring = false;
    let mut t0 = 0u64;
    let mut cpu0 = 0.0;
    let mut completed = 0u64;
    let end_after = (args.secs * 1e9) as u64;
    let mut errors = 0u64;
    loop {
        done.clear();
        let n = q.poll(&mut done);
        if n == 0 {
            std::hint::spin_loop();
            if measuring && now_ns() - t0 >= end_after {
                break;
            }
            continue;
        }
        let now = now_ns();
        for c in &done {
            if c.status != 0 {
                errors += 1;
            }
            if let Some(slot) = c.slot {
                if measuring {
                    hist.record(now - submitted_at[slot as usize]);
                }
            }
        }
        if measuring {
            completed += n as u64;
            if now - t0 >= end_after {
                break;
            }
        } else if now >= warm_end {
            measuring = true;
            t0 = now;
            cpu0 = probe.cpu_secs()?;
        }
        for _ in 0..n {
            submit(q, &mut submitted_at, now)?;
        }
        q.kick();
    }
    let elapsed = (now_ns() - t0) as f64 / 1e9;
    let cpu = (probe.cpu_secs()? - cpu0) / elapsed;
    // Drain what is still in flight so the next run starts clean.
    let left = q.outstanding();
    let drained = q.wait_for(left, Duration::from_secs(10));
    if drained.len() != left {
        bail!("{} requests never completed", left - drained.len());
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(RunResult {
        iops: completed as f64 / elapsed,
        cpu,
        hist,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("vmpath-vhost-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if args.driver_core == args.target_core {
        eprintln!(
            "warning: load generator and target share core {}",
            args.driver_core
        );
    }
    let mut table = Table::new(&[
        ("target", false),
        ("rw", false),
        ("qd", true),
        ("IOPS", true),
        ("target CPU", true),
        ("IOPS/core", true),
        ("p50 us", true),
        ("p99 us", true),
        ("p99.9 us", true),
    ]);
    let args = Arc::new(args);
    for &kind in &args.target {
        let target = Target::start(kind, &args, &dir)?;
        // The load generator runs on its own pinned thread; the main thread stays unpinned so
        // the next target's reactor can be placed anywhere.
        let a = args.clone();
        let socket = target.socket.clone();
        let name = target.name;
        let probe = match &target.probe {
            CpuProbe::Thread(t) => CpuProbe::Thread(*t),
            CpuProbe::Process(p) => CpuProbe::Process(*p),
        };
        let rows = std::thread::spawn(move || -> Result<Vec<Vec<String>>> {
            cpu::pin_current_thread(Some(a.driver_core))
                .with_context(|| format!("pinning the load generator to core {}", a.driver_core))?;
            let opts = DriverOptions {
                num_queues: 1,
                queue_size: a.queue_size,
                max_data: a.io_size.max(4096),
                event_idx: true,
                indirect: true,
                inflight: false,
                interrupts: false,
                ..DriverOptions::default()
            };
            let mut driver = BlkDriver::connect(&socket, opts)
                .with_context(|| format!("connecting to {name}"))?;
            let mut rows = Vec::new();
            for &rw in &a.rw {
                for &qd in &a.qd {
                    if qd == 0 || qd > a.queue_size as usize {
                        bail!("queue depth {qd} must be 1..={}", a.queue_size);
                    }
                    let r = run_load(&mut driver, &probe, rw, qd, &a)
                        .with_context(|| format!("{name} {rw:?} qd {qd}"))?;
                    let p = r.hist.percentiles();
                    let per_core = if r.cpu > 0.01 { r.iops / r.cpu } else { 0.0 };
                    eprintln!("{name} {rw:?} qd {qd}: {} IOPS", thousands(r.iops as u64));
                    rows.push(vec![
                        name.to_string(),
                        format!("{rw:?}").to_lowercase(),
                        qd.to_string(),
                        thousands(r.iops as u64),
                        format!("{:.0}%", r.cpu * 100.0),
                        thousands(per_core as u64),
                        micros(p.p50_us),
                        micros(p.p99_us),
                        micros(p.p999_us),
                    ]);
                }
            }
            Ok(rows)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("load generator thread panicked"))?;
        target.stop();
        for r in rows? {
            table.push(r);
        }
    }
    println!(
        "vhost-user-blk, {} B random I/O, 1 queue of {}, target core {}, load generator core {}, {} s per run",
        args.io_size, args.queue_size, args.target_core, args.driver_core, args.secs
    );
    print!("{}", table.render());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
