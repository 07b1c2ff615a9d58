//! `nvme_initiator_bench`: the NVMe/TCP initiator (`nvme_paths`) against the project's target
//! (`nvmf-target`), and failover stalls over real networks.
//!
//! **IOPS mode** (default): the target runs one reactor pinned to one core exporting a RAM
//! namespace on a loopback portal; the initiator's channel is driven by this thread pinned to
//! another core (the reactor's job, without the runtime around it). For each pattern × queue
//! depth it runs a closed-loop 4 KiB random load and prints IOPS per initiator core, MiB/s,
//! p50 / p99 latency and the initiator thread's CPU use.
//!
//! **Failover mode** (`--failover N`, root, needs `ip` and `nft`): host and target namespaces
//! joined by two veth networks, one portal each, a verified 50/50 read/write load at QD 32 on
//! both paths; path 0 or 1 is cut N times by `ip link set down` and N times by an nftables
//! drop. Prints the stall per cut (the longest read and write latency during the cut and
//! recovery) as p50 / p99 for each cut kind.
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin nvme_initiator_bench
//! target/release/nvme_initiator_bench --qd 1,32,128 --seconds 5 --initiator-core 0 --target-core 1
//! target/release/nvme_initiator_bench --failover 10
//! ```

#![allow(unsafe_code)] // Reason: I/O buffers lent to the initiator as raw IoVecs; clock_gettime.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use nvme_paths::{
    AttachParams, CtrlOptions, MultipathChannel, MultipathMode, NvmeHost, PathId, PolicyKind, Trid,
};
use vmpath_bdev::{DmaBuf, IoChannel, IoRequest, IoType, SgList};
use vmpath_bench::latency::LatencyHist;
use vmpath_bench::report::{micros, thousands, Table};
use vmpath_bench::{cpu, rng::Rng};
use vmpath_tests::load::{percentile, VerifiedLoad};
use vmpath_tests::netns::{self, Fabric};
use vmpath_tests::target::{TestTarget, NQN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

#[derive(Debug, Parser)]
#[command(about = "NVMe/TCP initiator IOPS per core and failover stalls")]
struct Args {
    /// Queue depths
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    qd: Vec<usize>,
    /// Patterns
    #[arg(long, value_delimiter = ',', default_value = "randread,randwrite")]
    rw: Vec<Rw>,
    /// Seconds per run
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Core of the initiator (this thread)
    #[arg(long)]
    initiator_core: Option<usize>,
    /// Core of the target's reactor
    #[arg(long)]
    target_core: Option<usize>,
    /// Namespace size in MiB
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Instead of IOPS: cut each path this many times per cut kind and report the stalls
    #[arg(long)]
    failover: Option<usize>,
}

fn bench_opts() -> CtrlOptions {
    CtrlOptions {
        io_queue_depth: 256,
        ..CtrlOptions::default()
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct RunResult {
    iops: f64,
    mibps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu: f64,
}

fn run(ch: &mut MultipathChannel, rw: Rw, qd: usize, blocks: u64, secs: f64) -> Result<RunResult> {
    let mut bufs: Vec<DmaBuf> = (0..qd).map(|_| DmaBuf::new(4096)).collect();
    let mut started = vec![0u64; qd];
    let mut rng = Rng::new(0x1234_5678 ^ qd as u64);
    let mut hist = LatencyHist::new();
    let op = match rw {
        Rw::Randread => IoType::Read,
        Rw::Randwrite => IoType::Write,
    };
    let submit = |ch: &mut MultipathChannel, bufs: &mut [DmaBuf], rng: &mut Rng, slot: usize| {
        let mut sg = SgList::new();
        // SAFETY: the slot's buffer is not touched again until its completion is polled.
        sg.push(unsafe { bufs[slot].iovec(0..4096) });
        ch.submit(IoRequest::with_iovs(
            op,
            rng.below(blocks),
            1,
            sg,
            slot as u64,
        ))
    };
    // Warm up: fill the queue.
    for (s, t) in started.iter_mut().enumerate() {
        *t = vmpath_runtime::now_ns();
        submit(ch, &mut bufs, &mut rng, s).map_err(|e| anyhow!("submit: {:?}", e.reason))?;
    }
    let t0 = Instant::now();
    let cpu0 = thread_cpu_ns();
    let until = t0 + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut completed: Vec<(usize, bool)> = Vec::with_capacity(qd);
    while Instant::now() < until {
        completed.clear();
        ch.poll(0, &mut |c| {
            completed.push((c.tag as usize, c.result.is_ok()))
        });
        let now = vmpath_runtime::now_ns();
        for &(s, ok) in &completed {
            hist.record(now.saturating_sub(started[s]));
            done += 1;
            if !ok {
                errors += 1;
            }
            started[s] = now;
            submit(ch, &mut bufs, &mut rng, s).map_err(|e| anyhow!("submit: {:?}", e.reason))?;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9 / wall;
    // Drain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ch.outstanding() > 0 && Instant::now() < deadline {
        ch.poll(0, &mut |_| {});
    }
    if errors > 0 {
        bail!("{errors} I/O errors");
    }
    let p = hist.percentiles();
    Ok(RunResult {
        iops: done as f64 / wall,
        mibps: done as f64 * 4096.0 / wall / (1 << 20) as f64,
        p50_us: p.p50_us,
        p99_us: p.p99_us,
        cpu,
    })
}

fn iops_mode(a: &Args) -> Result<()> {
    let cores = cpu::allowed_cores().context("allowed cores")?;
    let ic = a.initiator_core.unwrap_or(cores[0]);
    let tc = a
        .target_core
        .unwrap_or_else(|| *cores.iter().find(|&&c| c != ic).unwrap_or(&cores[0]));
    let blocks = a.size_mib * 256;
    let t = TestTarget::start(None, &[("127.0.0.1", "0")], blocks, Some(vec![tc]))
        .map_err(|e| anyhow!("target: {e}"))?;
    cpu::pin_current_thread(Some(ic)).context("pinning the initiator")?;
    let host = NvmeHost::new(None);
    host.attach_controller(&AttachParams {
        name: "Nvme0".into(),
        trid: Trid::tcp("127.0.0.1", &t.portals[0].1, NQN),
        hostnqn: None,
        multipath: MultipathMode::Multipath,
        opts: bench_opts(),
    })?;
    let ns = host.namespace("Nvme0n1").context("namespace")?;
    let mut ch = ns.open_mp_channel()?;
    let until = Instant::now() + Duration::from_secs(5);
    while !ch.path_ready(PathId(0)) {
        ch.poll(0, &mut |_| {});
        if Instant::now() > until {
            bail!("I/O queue did not connect");
        }
    }
    println!(
        "NVMe/TCP initiator -> vmpath target over loopback, 4 KiB random, initiator core {ic}, target reactor core {tc}, {} MiB RAM namespace, {} s per run",
        a.size_mib, a.seconds
    );
    let mut table = Table::new(&[
        ("pattern", false),
        ("QD", true),
        ("IOPS", true),
        ("IOPS/initiator core", true),
        ("MiB/s", true),
        ("p50", true),
        ("p99", true),
        ("initiator CPU", true),
    ]);
    for &rw in &a.rw {
        for &qd in &a.qd {
            let r = run(&mut ch, rw, qd, blocks, a.seconds)?;
            table.push(vec![
                format!("{rw:?}").to_lowercase(),
                qd.to_string(),
                thousands(r.iops as u64),
                thousands((r.iops / r.cpu.max(0.01)) as u64),
                format!("{:.0}", r.mibps),
                micros(r.p50_us),
                micros(r.p99_us),
                format!("{:.0}%", r.cpu * 100.0),
            ]);
        }
    }
    print!("{}", table.render());
    drop(ch);
    host.shutdown();
    Ok(())
}

fn failover_mode(n: usize) -> Result<()> {
    if !netns::available() {
        bail!("--failover needs root, ip and nft");
    }
    let fabric = Fabric::build(2).map_err(|e| anyhow!("{e}"))?;
    let target = TestTarget::start(
        Some(&fabric.target),
        &[
            (fabric.links[0].target_addr.as_str(), "4420"),
            (fabric.links[1].target_addr.as_str(), "4420"),
        ],
        4096,
        None,
    )
    .map_err(|e| anyhow!("target: {e}"))?;
    fabric.host.enter().map_err(|e| anyhow!("{e}"))?;
    let opts = vmpath_tests::fast_failover_opts();
    let host = NvmeHost::new(None);
    for l in &fabric.links {
        host.attach_controller(&AttachParams {
            name: "Nvme0".into(),
            trid: Trid::tcp(&l.target_addr, "4420", NQN),
            hostnqn: None,
            multipath: MultipathMode::Multipath,
            opts,
        })?;
    }
    let ns = host.namespace("Nvme0n1").context("namespace")?;
    ns.set_policy(PolicyKind::RoundRobin { rr_min_io: 4 });
    let mut ch = ns.open_mp_channel()?;
    let mut load = VerifiedLoad::new(4096, 32);
    if !load.run_until(&mut ch, Duration::from_secs(10), |c| {
        c.path_ready(PathId(0)) && c.path_ready(PathId(1))
    }) {
        bail!("paths did not connect");
    }
    println!(
        "failover stalls: 2 veth networks, KATO {} ms, I/O timeout {} ms, write fence grace {} ms, verified 50/50 load at QD 32",
        opts.keep_alive_timeout_ms,
        opts.io_timeout_us / 1000,
        opts.write_fence_grace_ms
    );
    let mut table = Table::new(&[
        ("cut", false),
        ("cuts", true),
        ("detect p50", true),
        ("read stall p50", true),
        ("read stall p99", true),
        ("write stall p50", true),
        ("write stall p99", true),
    ]);
    for (kind, firewall) in [("link-down", false), ("firewall-drop", true)] {
        let (mut det, mut rd, mut wr) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..n {
            let i = k % 2;
            let path = PathId(i as u16);
            let p = ns.path(path).context("path")?;
            let t0 = Instant::now();
            if firewall {
                fabric.set_drop(i, true).map_err(|e| anyhow!("{e}"))?;
            } else {
                fabric.set_link(i, false).map_err(|e| anyhow!("{e}"))?;
            }
            let mut detected = None;
            while t0.elapsed() < Duration::from_millis(1200) {
                load.step(&mut ch);
                if detected.is_none() && !p.state().is_usable() {
                    detected = Some(t0.elapsed());
                }
            }
            if firewall {
                fabric.set_drop(i, false).map_err(|e| anyhow!("{e}"))?;
            } else {
                fabric.set_link(i, true).map_err(|e| anyhow!("{e}"))?;
            }
            if !load.run_until(&mut ch, Duration::from_secs(15), |c| {
                c.path_ready(path) && c.in_doubt() == 0
            }) {
                bail!("path {i} did not come back");
            }
            load.run_for(&mut ch, Duration::from_millis(300));
            let now = Instant::now();
            det.push(detected.unwrap_or_default());
            rd.push(load.max_latency_of(t0, now, false));
            wr.push(load.max_latency_of(t0, now, true));
            if !load.errors.is_empty() {
                bail!("I/O errors: {:?}", &load.errors[..load.errors.len().min(3)]);
            }
        }
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        table.push(vec![
            kind.into(),
            n.to_string(),
            ms(percentile(&det, 50.0)),
            ms(percentile(&rd, 50.0)),
            ms(percentile(&rd, 99.0)),
            ms(percentile(&wr, 50.0)),
            ms(percentile(&wr, 99.0)),
        ]);
    }
    load.drain(&mut ch, Duration::from_secs(15));
    let bad = load.verify_all(&mut ch, Duration::from_secs(60));
    print!("{}", table.render());
    println!(
        "{} verified I/Os, {} errors, {bad} bad blocks at the end",
        load.done.len(),
        load.errors.len()
    );
    drop(ch);
    host.shutdown();
    drop(target);
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    match a.failover {
        Some(n) => failover_mode(n.max(1)),
        None => iops_mode(&a),
    }
}
