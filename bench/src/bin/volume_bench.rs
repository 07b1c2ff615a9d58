//! Cost of the per-VM data path: a request through a VM volume (its channel, the reactor's
//! scheduler shard, path dispatch, completion accounting) onto a null device, at 1, 100 and 1000
//! active VMs, on one or more pinned reactors (one shard each). Prints ns per request and, with
//! `--iters N` under callgrind (`bench/volume_callgrind.sh`), instructions per request.
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin volume_bench                 # table
//! cargo run --release -p vmpath-bench --bin volume_bench -- --vms 1000 --reactors 2 --iters 2000000
//! ```

#![allow(unsafe_code)] // Reason: the request buffer is lent to the device as a raw IoVec.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use scheduler::{PathSpec, Scheduler, SchedulerConfig, VmSpec};
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::{BlockDevice, DmaBuf, IoChannel, IoRequest, IoType, SgList};
use vmpath_volume::VolumeManager;

#[derive(Parser, Debug)]
struct Args {
    /// Active VMs (each with its own volume); default: 1, 100 and 1000 in turn.
    #[arg(long)]
    vms: Option<usize>,
    /// Reactors (threads, one shard each), pinned to cores 0.. when possible.
    #[arg(long, default_value_t = 2)]
    reactors: usize,
    /// Requests kept in flight per reactor.
    #[arg(long, default_value_t = 128)]
    qd: usize,
    /// Requests per reactor (fixed count, for callgrind); default: time-based (1 s).
    #[arg(long)]
    iters: Option<u64>,
    /// Do not pin threads.
    #[arg(long)]
    no_pin: bool,
}

fn run_reactor(
    mgr: Arc<VolumeManager>,
    vols: Vec<Arc<dyn BlockDevice>>,
    shard: usize,
    qd: usize,
    iters: Option<u64>,
    pin: bool,
) -> (u64, f64) {
    if pin {
        core_affinity::set_for_current(core_affinity::CoreId { id: shard });
    }
    mgr.install_on_thread(shard).expect("shard");
    let mut chans: Vec<Box<dyn IoChannel>> =
        vols.iter().map(|v| v.open_channel().unwrap()).collect();
    let mut buf = DmaBuf::new(4096);
    // SAFETY: the null device never touches the buffer; it lives until the end of the function.
    let iov = unsafe { buf.iovec(0..4096) };
    let n = chans.len();
    let mut next_vm = 0usize;
    let mut lba = 0u64;
    let mut inflight = 0usize;
    let mut done_total = 0u64;
    let mut now = 1u64;
    let t0 = Instant::now();
    let budget = iters.unwrap_or(u64::MAX);
    let mut submitted = 0u64;
    loop {
        while inflight < qd && submitted < budget {
            lba = (lba + 8) & 0xffff;
            let req = IoRequest::with_iovs(IoType::Read, lba, 1, SgList::from_slice(&[iov]), 0);
            match chans[next_vm].submit(req) {
                Ok(()) => {
                    inflight += 1;
                    submitted += 1;
                }
                Err(_) => break,
            }
            next_vm = (next_vm + 1) % n;
        }
        now += 1_000;
        let mut got = 0usize;
        // Poll one channel per VM in turn (what frontends do); the first poll of a pass runs
        // the reactor's scheduler work, the others only drain their completion queues.
        for ch in chans.iter_mut() {
            if ch.outstanding() > 0 {
                got += ch.poll(now, &mut |c| {
                    debug_assert!(c.result.is_ok());
                });
            }
        }
        inflight -= got;
        done_total += got as u64;
        if iters.is_some() {
            if submitted >= budget && inflight == 0 {
                break;
            }
        } else if done_total.is_multiple_of(4096) && t0.elapsed().as_secs_f64() >= 1.0 {
            break;
        }
    }
    drop(buf);
    (done_total, t0.elapsed().as_secs_f64())
}

fn bench(vms: usize, args: &Args) -> Result<(f64, f64)> {
    let sched = Scheduler::new(SchedulerConfig {
        shards: args.reactors,
        max_vms: (vms as u32).max(1024),
        ..Default::default()
    })?;
    let mgr = VolumeManager::new(sched);
    let null = Arc::new(NullBdev::new("null0", 1 << 20, 4096, SimParams::default())?);
    let mut ps = PathSpec::new("p0", 10_000_000, 40_000);
    ps.max_outstanding = 65_536;
    mgr.add_path(ps, null)?;
    let mut vols: Vec<Arc<dyn BlockDevice>> = Vec::new();
    for i in 0..vms {
        let vm = mgr.scheduler().create_vm(VmSpec::new(format!("vm{i}")))?;
        vols.push(mgr.create_volume(&format!("v{i}"), vm, &["p0".into()], 0, None)?);
    }
    let threads: Vec<_> = (0..args.reactors)
        .map(|r| {
            let (mgr, vols) = (mgr.clone(), vols.clone());
            let (qd, iters, pin) = (args.qd, args.iters, !args.no_pin);
            std::thread::spawn(move || run_reactor(mgr, vols, r, qd, iters, pin))
        })
        .collect();
    let mut total = 0u64;
    let mut secs: f64 = 0.0;
    for t in threads {
        let (n, s) = t.join().expect("reactor thread");
        total += n;
        secs = secs.max(s);
    }
    let per_reactor_iops = total as f64 / secs / args.reactors as f64;
    Ok((per_reactor_iops, 1e9 / per_reactor_iops))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let list = match args.vms {
        Some(v) => vec![v],
        None => vec![1, 100, 1000],
    };
    println!(
        "volume path on a null device: {} reactor(s), QD {} per reactor, 4 KiB reads",
        args.reactors, args.qd
    );
    println!("{:>6}  {:>14}  {:>12}", "VMs", "IOPS/reactor", "ns/request");
    for vms in list {
        let (iops, ns) = bench(vms, &args)?;
        println!("{vms:>6}  {iops:>14.0}  {ns:>12.1}");
    }
    Ok(())
}
