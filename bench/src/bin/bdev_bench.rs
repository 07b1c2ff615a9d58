//! `bdev_bench`: the block-device layer on one pinned reactor.
//!
//! For each backend × access pattern × queue depth it runs a closed-loop random I/O load
//! (4 KiB by default) on one reactor pinned to one core and prints IOPS (per core: there is
//! one), MiB/s and p50 / p99 / p99.9 submit-to-completion latency.
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin bdev_bench                     # null+malloc, QD 1/32/128
//! cargo run --release -p vmpath-bench --bin bdev_bench -- --backend uring --file /var/tmp/x.img
//! target/release/bdev_bench --backend null --qd 32 --iters 200000          # fixed count (callgrind)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Parser, ValueEnum};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::uring::UringBdev;
use vmpath_bdev::BlockDevice;
use vmpath_bench::bdev_load::{prefill, run_on_reactor, BdevLoad, LoadSpec, RwMode, StopAt};
use vmpath_bench::report::{micros, thousands, Table};
use vmpath_bench::{cpu, latency::Percentiles};
use vmpath_runtime::{now_ns, Reactor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Null,
    Malloc,
    Uring,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Null => "null",
            Backend::Malloc => "malloc",
            Backend::Uring => "uring",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

impl From<Rw> for RwMode {
    fn from(r: Rw) -> RwMode {
        match r {
            Rw::Randread => RwMode::RandRead,
            Rw::Randwrite => RwMode::RandWrite,
        }
    }
}

/// Block-layer benchmark: random I/O on one pinned reactor.
#[derive(Debug, Parser)]
#[command(name = "bdev_bench", version)]
struct Args {
    /// Backends to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Backend::Null, Backend::Malloc])]
    backend: Vec<Backend>,
    /// Queue depths, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 128])]
    qd: Vec<usize>,
    /// Access patterns, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Rw::Randread, Rw::Randwrite])]
    rw: Vec<Rw>,
    /// Measured seconds per combination (after warm-up).
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Warm-up per combination, in milliseconds.
    #[arg(long, default_value_t = 100)]
    warmup_ms: u64,
    /// Run exactly N I/Os per combination instead of a timed run (no warm-up). Used with
    /// valgrind to count instructions per I/O.
    #[arg(long)]
    iters: Option<u64>,
    /// Core to pin the reactor to (default: the last core of the process CPU set).
    #[arg(long)]
    core: Option<usize>,
    /// Do not pin (e.g. under valgrind, or on a busy shared machine).
    #[arg(long)]
    no_pin: bool,
    /// Bytes per I/O.
    #[arg(long, default_value_t = 4096)]
    io_size: usize,
    /// Device block size (512 or 4096).
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Size of the malloc device and of the uring file, MiB. (The null device is 1 TiB.)
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Backing file of the uring backend; created (and removed afterwards) if missing.
    #[arg(long, default_value = "/var/tmp/vmpath-bench.img")]
    file: PathBuf,
    /// Use O_DIRECT for the uring backend when the file system allows it.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    direct: bool,
    /// Random seed for offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Creates the uring backing file if needed; returns whether it was created.
fn ensure_file(path: &Path, size: u64) -> Result<bool> {
    if let Ok(m) = std::fs::metadata(path) {
        if m.len() >= size || !m.is_file() {
            return Ok(false);
        }
    }
    let existed = path.exists();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(!existed)
}

fn make_device(args: &Args, backend: Backend, max_qd: usize) -> Result<Arc<dyn BlockDevice>> {
    let bs = args.block_size;
    let blocks = args.size_mib * (1 << 20) / bs as u64;
    Ok(match backend {
        Backend::Null => Arc::new(NullBdev::new(
            "null0",
            (1u64 << 40) / bs as u64,
            bs,
            SimParams::default(),
        )?),
        Backend::Malloc => {
            let d = MallocBdev::new("malloc0", blocks, bs, SimParams::default())?;
            prefill(&d, &now_ns).context("prefilling the device")?;
            Arc::new(d)
        }
        Backend::Uring => {
            let path = args.file.to_str().context("file path is not UTF-8")?;
            let mut d = UringBdev::new("uring0", path, Some(bs), args.direct)?;
            d.set_queue_depth((max_qd as u32).max(vmpath_bdev::uring::DEFAULT_QUEUE_DEPTH))?;
            println!(
                "uring: {path}, {} MiB, {}",
                (d.info().num_blocks * bs as u64) >> 20,
                if d.direct() {
                    "O_DIRECT"
                } else {
                    "buffered (page cache)"
                }
            );
            prefill(&d, &now_ns).context("prefilling the device")?;
            Arc::new(d)
        }
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.qd.is_empty() || args.qd.contains(&0) {
        bail!("--qd needs positive queue depths");
    }
    let secs = Duration::try_from_secs_f64(args.secs)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--secs must be a positive number of seconds")?;
    if args.iters == Some(0) {
        bail!("--iters must be positive");
    }
    let core = if args.no_pin {
        None
    } else {
        Some(cpu::pin_current_thread(args.core)?)
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; use --release for meaningful numbers");
    }
    let mut reactor = Reactor::new(0, core, 64).context("creating the reactor")?;
    let max_qd = args.qd.iter().copied().max().unwrap_or(1);

    let mut created_file = false;
    if args.backend.contains(&Backend::Uring) {
        created_file = ensure_file(&args.file, args.size_mib << 20)?;
    }

    let stop = match args.iters {
        Some(n) => StopAt::Ios(n),
        None => StopAt::Duration(secs.as_nanos().min(u64::MAX as u128) as u64),
    };
    println!(
        "bdev_bench: reactor on core {}, {} B I/Os, block size {}, {}",
        core.map_or("(unpinned)".to_string(), |c| c.to_string()),
        args.io_size,
        args.block_size,
        match stop {
            StopAt::Ios(n) => format!("{n} I/Os per run"),
            StopAt::Duration(_) => format!(
                "{} s per run after {} ms warm-up",
                args.secs, args.warmup_ms
            ),
        }
    );
    let mut table = Table::new(&[
        ("backend", false),
        ("rw", false),
        ("qd", true),
        ("IOPS/core", true),
        ("MiB/s", true),
        ("p50 us", true),
        ("p99 us", true),
        ("p99.9 us", true),
        ("errors", true),
    ]);
    let mut failed = false;
    let result = (|| -> Result<()> {
        for &backend in &args.backend {
            let dev = make_device(&args, backend, max_qd)?;
            for &rw in &args.rw {
                for &qd in &args.qd {
                    let spec = LoadSpec {
                        rw: rw.into(),
                        qd,
                        io_size: args.io_size,
                        stop,
                        warmup_ns: args.warmup_ms * 1_000_000,
                        seed: args.seed,
                        stall_ns: 10_000_000_000,
                    };
                    let chan = dev.open_channel()?;
                    let load = BdevLoad::new(dev.as_ref(), chan, spec)?;
                    let res = run_on_reactor(&mut reactor, load, &now_ns);
                    let p: Percentiles = res.hist.percentiles();
                    if let Some(f) = &res.failure {
                        eprintln!("{} {} qd {qd}: {f}", backend.name(), RwMode::from(rw));
                        failed = true;
                    }
                    if let Some(e) = res.first_error {
                        eprintln!(
                            "{} {} qd {qd}: I/O error: {e}",
                            backend.name(),
                            RwMode::from(rw)
                        );
                        failed = true;
                    }
                    table.push(vec![
                        backend.name().into(),
                        RwMode::from(rw).name().into(),
                        qd.to_string(),
                        thousands(res.iops().round() as u64),
                        format!("{:.0}", res.mib_per_s()),
                        micros(p.p50_us),
                        micros(p.p99_us),
                        micros(p.p999_us),
                        res.errors.to_string(),
                    ]);
                }
            }
        }
        Ok(())
    })();
    print!("{}", table.render());
    if created_file {
        let _ = std::fs::remove_file(&args.file);
    }
    result?;
    if failed {
        bail!("some runs failed");
    }
    Ok(())
}
