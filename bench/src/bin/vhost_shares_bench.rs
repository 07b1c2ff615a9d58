//! `vhost_shares_bench`: several VMs, each a guest-playing vhost-user-blk frontend on its own
//! VM volume, share one capacity-limited device through vmpath's per-VM scheduler. Prints the
//! configured shares, reservations and limits next to the measured IOPS per VM and the ideal
//! allocation (water-filling: max(reservation, share of what is left), capped by the limit).
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin vhost_shares_bench
//! target/release/vhost_shares_bench --device-iops 40000 --vm gold:2000 --vm silver:1000 \
//!     --vm capped:4000:0:5000 --vm floor:300:12000 --secs 5
//! ```
//!
//! `--reactor-cores 2,3` spreads the VMs over two reactors (two scheduler shards). Each
//! reactor and the load generator need a core of their own: a reactor that shares its core
//! with the busy-polling load generator is descheduled for whole time slices, and its VMs
//! lose that time (the other shard ignores a silent shard after 1 ms), so on a 2-core
//! machine only the one-reactor run measures the scheduler.
//!
//! `VMPATH_DEBUG_SCHED=1` also prints the scheduler's per-VM counters and each controller's
//! queue counters (kicks, notification re-enables) after the run.
//!
//! The whole data path is real: virtqueues polled by a pinned reactor, requests through each
//! VM's volume channel and the reactor's scheduler shard, onto a malloc device whose
//! simulated capacity (`--device-iops`) makes the VMs contend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use scheduler::{PathSpec, RateSpec, Scheduler, SchedulerConfig, VmSpec};
use vhost::frontend::{BlkDriver, DriverOptions, ReqKind};
use vhost::{VhostBlkConfig, VhostBlkController};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::BlockDevice;
use vmpath_bench::report::Table;
use vmpath_runtime::{Runtime, RuntimeConfig};
use vmpath_volume::VolumeManager;

#[derive(Debug, Parser)]
#[command(name = "vhost_shares_bench", version)]
struct Args {
    /// VMs as NAME:SHARES[:RESERVATION_IOPS[:LIMIT_IOPS]] (0 = none); repeat.
    #[arg(long = "vm", default_values_t = [
        "gold:2000".to_string(),
        "silver:1000".to_string(),
        "capped:4000:0:4000".to_string(),
        "floor:250:10000".to_string(),
    ])]
    vms: Vec<String>,
    /// Capacity of the shared device, IOPS.
    #[arg(long, default_value_t = 40_000)]
    device_iops: u64,
    /// Requests each guest keeps in flight.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Measured seconds (after 0.5 s of warm-up).
    #[arg(long, default_value_t = 4.0)]
    secs: f64,
    /// Cores of the reactors, comma-separated (one scheduler shard each; VM i's queue
    /// is polled by reactor i mod N).
    #[arg(long = "reactor-cores", value_delimiter = ',', default_values_t = [0usize])]
    reactor_cores: Vec<usize>,
    /// Queue depth the scheduler keeps on the device (beyond it, requests wait in QoS order).
    #[arg(long, default_value_t = 8)]
    path_qd: u32,
    /// Core of the load generator (one thread playing every guest).
    #[arg(long, default_value_t = 1)]
    load_core: usize,
}

struct VmArg {
    name: String,
    shares: u32,
    reservation: u64,
    limit: u64,
}

fn parse_vm(s: &str) -> Result<VmArg> {
    let f: Vec<&str> = s.split(':').collect();
    if f.len() < 2 || f.len() > 4 {
        bail!("--vm {s}: expected NAME:SHARES[:RESERVATION[:LIMIT]]");
    }
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .map(|v| {
                v.parse::<u64>()
                    .with_context(|| format!("--vm {s}: {v} is not a number"))
            })
            .transpose()
            .map(|v| v.unwrap_or(0))
    };
    Ok(VmArg {
        name: f[0].to_string(),
        shares: num(1)? as u32,
        reservation: num(2)?,
        limit: num(3)?,
    })
}

const DISK_BLOCKS: u64 = 8192; // per VM, 4 KiB blocks (32 MiB)

/// One load-generator thread plays every guest: it keeps `qd` random 4 KiB reads in flight on
/// each VM's ring (busy-polling the used rings, as `vhost_bench` does) until `end`, and counts
/// completions after `from`. One thread on its own core keeps every ring backlogged, so the
/// measured split is the scheduler's, not the load generator's.
fn guests(
    socks: &[std::path::PathBuf],
    qd: usize,
    from: Instant,
    end: Instant,
) -> Result<Vec<(u64, u64)>> {
    let mut drivers = Vec::new();
    for s in socks {
        drivers.push(BlkDriver::connect(
            s,
            DriverOptions {
                num_queues: 1,
                queue_size: 256,
                max_data: 4096,
                interrupts: false,
                ..DriverOptions::default()
            },
        )?);
    }
    let mut rng = vmpath_bench::rng::Rng::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move || rng.below(DISK_BLOCKS) * 8;
    for d in drivers.iter_mut() {
        let q = d.queue(0);
        for _ in 0..qd {
            q.submit(ReqKind::Read, next(), 4096, 0)?;
        }
        q.kick();
    }
    let mut counts = vec![(0u64, 0u64); drivers.len()];
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        for (i, d) in drivers.iter_mut().enumerate() {
            let q = d.queue(0);
            out.clear();
            let n = q.poll(&mut out);
            if n == 0 {
                continue;
            }
            for c in &out {
                if c.status != 0 {
                    counts[i].1 += 1;
                }
                if now >= from {
                    counts[i].0 += 1;
                }
            }
            for _ in 0..n {
                q.submit(ReqKind::Read, next(), 4096, 0)?;
            }
            q.kick();
        }
    }
    for d in drivers.iter_mut() {
        let q = d.queue(0);
        let left = q.outstanding();
        let rest = q.wait_for(left, Duration::from_secs(10));
        if rest.len() != left {
            bail!("{} requests never completed", left - rest.len());
        }
    }
    Ok(counts)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let vms: Vec<VmArg> = args
        .vms
        .iter()
        .map(|s| parse_vm(s))
        .collect::<Result<_>>()?;
    let runtime = Runtime::start(RuntimeConfig {
        cores: Some(args.reactor_cores.clone()),
        ..RuntimeConfig::default()
    })
    .context("starting the reactor")?;
    let sched = Scheduler::new(SchedulerConfig {
        shards: args.reactor_cores.len(),
        ..Default::default()
    })?;
    let mgr = VolumeManager::new(sched.clone());
    for h in runtime.handles() {
        let m = mgr.clone();
        h.call(move |r| m.install(r))
            .map_err(|e| anyhow::anyhow!("reactor: {e}"))??;
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(MallocBdev::new(
        "shared0",
        DISK_BLOCKS * vms.len() as u64,
        4096,
        SimParams {
            max_iops: args.device_iops,
            ..SimParams::default()
        },
    )?);
    let mut ps = PathSpec::new("shared0", args.device_iops, 4000);
    ps.max_outstanding = args.path_qd;
    mgr.add_path(ps, dev)?;
    let dir = tempfile::tempdir()?;
    let mut ctrls = Vec::new();
    for (i, v) in vms.iter().enumerate() {
        let mut spec = VmSpec::new(&v.name);
        spec.shares = v.shares;
        if v.reservation > 0 {
            spec.reservation = RateSpec {
                iops: Some(v.reservation),
                mbps: None,
            };
        }
        if v.limit > 0 {
            spec.limit = RateSpec {
                iops: Some(v.limit),
                mbps: None,
            };
        }
        let vm = sched.create_vm(spec)?;
        let vol = mgr.create_volume(
            &format!("{}-disk", v.name),
            vm,
            &["shared0".to_string()],
            i as u64 * DISK_BLOCKS,
            Some(DISK_BLOCKS),
        )?;
        let sock = dir.path().join(format!("{}.sock", v.name));
        let handles = runtime.handles();
        let mut cfg = VhostBlkConfig::new(
            &v.name,
            &sock,
            vol,
            &v.name,
            vec![handles[i % handles.len()].clone()],
        );
        cfg.num_queues = 1;
        let mut c = VhostBlkController::new(cfg)?;
        c.start()?;
        ctrls.push((sock, c));
    }
    let from = Instant::now() + Duration::from_millis(500);
    let end = from + Duration::from_secs_f64(args.secs);
    let socks: Vec<_> = ctrls.iter().map(|(s, _)| s.clone()).collect();
    let (qd, load_core) = (args.qd, args.load_core);
    let counts = std::thread::spawn(move || {
        vmpath_bench::cpu::pin_current_thread(Some(load_core))
            .context("pinning the load generator")?;
        guests(&socks, qd, from, end)
    })
    .join()
    .expect("load generator thread")?;
    let mut measured = Vec::new();
    for (n, errors) in counts {
        if errors > 0 {
            bail!("{errors} guest-visible errors");
        }
        measured.push(n as f64 / args.secs);
    }
    let expected = scheduler::sim::expected_shares(
        args.device_iops as f64,
        &vms.iter()
            .map(|v| (v.shares as f64, v.reservation as f64, v.limit as f64))
            .collect::<Vec<_>>(),
    );
    println!(
        "{} VMs on one {} IOPS device, vhost-user-blk guests at QD {} (4 KiB reads), {} s measured",
        vms.len(),
        args.device_iops,
        args.qd,
        args.secs
    );
    let mut t = Table::new(&[
        ("VM", false),
        ("shares", true),
        ("reservation", true),
        ("limit", true),
        ("expected IOPS", true),
        ("measured IOPS", true),
        ("error", true),
    ]);
    let fmt = |v: u64| {
        if v == 0 {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    for (i, v) in vms.iter().enumerate() {
        t.push(vec![
            v.name.clone(),
            v.shares.to_string(),
            fmt(v.reservation),
            fmt(v.limit),
            format!("{:.0}", expected[i]),
            format!("{:.0}", measured[i]),
            format!("{:+.1}%", (measured[i] / expected[i] - 1.0) * 100.0),
        ]);
    }
    t.push(vec![
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        format!("{:.0}", expected.iter().sum::<f64>()),
        format!("{:.0}", measured.iter().sum::<f64>()),
        String::new(),
    ]);
    print!("{}", t.render());
    if std::env::var("VMPATH_DEBUG_SCHED").is_ok() {
        for v in sched.vms() {
            eprintln!(
                "{}: dispatched {} held {} inflight {}",
                v.spec.name, v.dispatched_ios, v.held, v.inflight
            );
        }
        for (_, c) in &ctrls {
            let i = c.info();
            eprintln!("{}: {:?}", i.name, i.total);
        }
    }
    for (_, mut c) in ctrls {
        let _ = c.stop();
    }
    runtime.shutdown();
    Ok(())
}
