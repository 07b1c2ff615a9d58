//! `nvmf_bench`: the NVMe/TCP target on one pinned reactor against a load generator on
//! another core, compared with a minimal loopback TCP echo server that moves the same bytes.
//!
//! For each backend (null, malloc namespaces, 4 KiB blocks) × pattern (4 KiB random read /
//! write) × queue depth it runs a closed loop over one NVMe/TCP I/O queue and reports IOPS
//! (the target has one core, so this is IOPS per target core), p50 / p99 latency and the
//! target reactor's busy share; then the same load — identical request bytes, responses
//! of the same size (C2HData header + 4 KiB for reads, a CapsuleResp for writes) — against
//! an echo server pinned to the same core: the ceiling of loopback TCP on this machine. The
//! ratio target / echo is the figure of merit (goal >= 70%). `busy%` is the share of the
//! target reactor's time spent in polls that did work; `IOPS/busy-core` divides the IOPS by
//! it (what one fully busy core would do when the load generator, not the target, limits).
//!
//! The load generator connects with the shared codec (`nvme-tcp`): SQ flow control
//! disabled, so reads complete with the C2HData SUCCESS flag; writes carry their 4 KiB in
//! the capsule. In the measured loop it is as cheap as the echo client: one `write` per
//! batch of submissions, 1 MiB reads, and a receive path that reads only PDU headers and
//! skips the data by PLEN without copying (so the ratio compares the target with the echo
//! server, not two load generators). A PDU split over several reads completes exactly
//! once; an earlier version lost such completions, which silently lowered the effective
//! queue depth (QD 127 latencies then contradicted Little's law).
//!
//! ```text
//! cargo run --release -p vmpath-bench --bin nvmf_bench
//! target/release/nvmf_bench --backend null --rw randread --qd 32 --secs 5
//! ```
//!
//! Target-side instructions per I/O: run the target alone under callgrind, collecting only
//! inside its poller, and load it from a second (native) process; divide the collected
//! instructions by the calls of `Conn::complete` (one per I/O):
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='nvmf_target::group::group_of*' \
//!     target/release/nvmf_bench --serve-secs 12      # prints "serving on ADDR"
//! target/release/nvmf_bench --connect ADDR --backend null --rw randread --qd 32 --secs 5
//! ```

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use nvme_spec::sqe::SglDescriptor;
use nvme_spec::NvmOpcode;
use nvme_tcp::pdu::{flags, PduType};
use nvme_tcp::{Encoder, Session};
use nvmf_target::testing::{rw_sqe, Host, InitiatorOptions};
use nvmf_target::{ListenAddr, NamespaceParams, SubsystemParams, Target, TargetOptions};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::null::NullBdev;
use vmpath_bdev::BlockDevice;
use vmpath_bench::latency::{LatencyHist, Percentiles};
use vmpath_bench::report::{micros, thousands, Table};
use vmpath_bench::rng::Rng;
use vmpath_runtime::{ReactorHandle, Runtime, RuntimeConfig};

const NQN: &str = "nqn.2016-06.io.vmpath:bench";
const BS: u32 = 4096;
/// Blocks of each namespace (64 MiB): small enough that the warm-up touches every page of
/// the RAM disk, so page faults of first writes do not count.
const NS_BLOCKS: u64 = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Null,
    Malloc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

/// NVMe/TCP target benchmark against a loopback TCP echo ceiling.
#[derive(Debug, Parser)]
#[command(name = "nvmf_bench", version)]
struct Args {
    /// Backends (namespaces), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Backend::Null, Backend::Malloc])]
    backend: Vec<Backend>,
    /// Access patterns, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Rw::Randread, Rw::Randwrite])]
    rw: Vec<Rw>,
    /// Queue depths, comma-separated (at most 127).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 127])]
    qd: Vec<usize>,
    /// Measured seconds per combination.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Warm-up per combination, in milliseconds.
    #[arg(long, default_value_t = 200)]
    warmup_ms: u64,
    /// Core of the target reactor (and of the echo server).
    #[arg(long, default_value_t = 0)]
    target_core: usize,
    /// Core of the load generator.
    #[arg(long, default_value_t = 1)]
    load_core: usize,
    /// The target's per-connection receive buffer (`rx_buffer_size`), in KiB (default: the
    /// target's default, 64 KiB). Larger buffers made no measurable difference here: QD-127
    /// writes are bimodal (~0.8M IOPS at ~60% busy or ~1.5-1.8M at ~97%) with either size.
    #[arg(long, default_value_t = 64)]
    rx_buffer_kib: usize,
    /// Skip the echo ceiling.
    #[arg(long)]
    no_echo: bool,
    /// Only run the target (on `--target-core`) for this many seconds, printing its
    /// address: profile it alone (e.g. under callgrind) while another process loads it.
    #[arg(long, conflicts_with = "connect")]
    serve_secs: Option<f64>,
    /// Only run the load generator, against a target started with `--serve-secs`
    /// (busy% is then not known; the echo ceiling is skipped).
    #[arg(long)]
    connect: Option<SocketAddr>,
}

/// The load generator's receive path: as cheap as the echo client's byte counting, so the
/// ratio compares the target with the echo server, not two load generators. It reads only
/// the PDU headers the target sends on this benchmark's queue (CapsuleResp, C2HData) and
/// skips everything after the header (digests, padding, data) by PLEN, without copying.
/// State survives across reads, so a PDU split over several reads completes exactly once.
#[derive(Default)]
struct LeanParser {
    /// The current PDU header (CapsuleResp and C2HData headers are 24 bytes).
    hdr: [u8; 24],
    hdr_have: usize,
    /// Bytes of the current PDU still to skip after its header.
    skip: usize,
    /// The command a C2HData with SUCCESS completes once its data is skipped.
    pending: Option<u16>,
}

impl LeanParser {
    /// Parses `buf`, pushing the CID of every completed command into `done`.
    fn parse(&mut self, buf: &[u8], done: &mut Vec<u16>) -> Result<()> {
        let mut pos = 0;
        while pos < buf.len() {
            if self.skip > 0 {
                let k = self.skip.min(buf.len() - pos);
                pos += k;
                self.skip -= k;
                if self.skip == 0 {
                    if let Some(c) = self.pending.take() {
                        done.push(c);
                    }
                }
                continue;
            }
            let need = if self.hdr_have < 8 {
                8
            } else {
                let hlen = self.hdr[2] as usize;
                if hlen <= 8 || hlen > self.hdr.len() {
                    bail!("unexpected PDU header length {hlen}");
                }
                hlen
            };
            let k = (need - self.hdr_have).min(buf.len() - pos);
            self.hdr[self.hdr_have..self.hdr_have + k].copy_from_slice(&buf[pos..pos + k]);
            self.hdr_have += k;
            pos += k;
            if self.hdr_have < need || need == 8 {
                continue;
            }
            let h = &self.hdr;
            let plen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let rest = plen
                .checked_sub(need)
                .context("PDU length shorter than its header")?;
            self.hdr_have = 0;
            if h[0] == PduType::CapsuleResp as u8 {
                // CQE at byte 8: CID at 12..14, status (phase bit 0) at 14..16.
                let cid = u16::from_le_bytes([h[8 + 12], h[8 + 13]]);
                let status = u16::from_le_bytes([h[8 + 14], h[8 + 15]]) >> 1;
                if status != 0 {
                    bail!("I/O failed: status {status:#x}");
                }
                self.skip = rest;
                done.push(cid);
            } else if h[0] == PduType::C2HData as u8 {
                let cid = u16::from_le_bytes([h[8], h[9]]);
                if h[1] & flags::SUCCESS != 0 {
                    self.pending = Some(cid);
                }
                self.skip = rest;
                if rest == 0 {
                    if let Some(c) = self.pending.take() {
                        done.push(c);
                    }
                }
            } else {
                bail!("unexpected PDU type {:#x}", h[0]);
            }
        }
        Ok(())
    }
}

/// Result of one closed-loop run.
struct RunResult {
    iops: f64,
    lat: Percentiles,
}

/// A closed-loop load over one connection. `echo` mode counts fixed-size responses in
/// order instead of decoding PDUs.
struct Load {
    stream: TcpStream,
    enc: Encoder,
    lean: LeanParser,
    rw: Rw,
    qd: usize,
    nsid: u32,
    blocks: u64,
    rng: Rng,
    out: Vec<u8>,
    rx: Vec<u8>,
    data: Vec<u8>,
    submitted_at: Vec<u64>,
    echo_fifo: VecDeque<u64>,
    echo_resp: usize,
    echo_have: usize,
    hist: LatencyHist,
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

impl Load {
    fn queue(&mut self, cid: u16, t: u64) {
        let lba = self.rng.below(self.blocks);
        let (op, write) = match self.rw {
            Rw::Randread => (NvmOpcode::Read, false),
            Rw::Randwrite => (NvmOpcode::Write, true),
        };
        let mut sqe = rw_sqe(op, self.nsid, lba, 1);
        sqe.set_cid(cid);
        let n = self.out.len();
        if write {
            sqe.set_sgl1(SglDescriptor::in_capsule(0, BS));
            self.out.resize(n + 128, 0);
            let h = self
                .enc
                .capsule_cmd(&sqe, BS, &mut self.out[n..])
                .expect("capsule header fits");
            self.out.truncate(n + h);
            self.out.extend_from_slice(&self.data);
        } else {
            sqe.set_sgl1(SglDescriptor::transport(BS));
            self.out.resize(n + 128, 0);
            let h = self
                .enc
                .capsule_cmd(&sqe, 0, &mut self.out[n..])
                .expect("capsule header fits");
            self.out.truncate(n + h);
        }
        if self.echo_resp > 0 {
            self.echo_fifo.push_back(t);
        } else {
            self.submitted_at[cid as usize] = t;
        }
    }

    fn send(&mut self) -> Result<()> {
        let mut off = 0;
        while off < self.out.len() {
            match self.stream.write(&self.out[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e.into()),
            }
        }
        self.out.clear();
        Ok(())
    }

    /// Runs until `deadline` (measuring only after `measure_from`); returns the result.
    fn run(&mut self, origin: Instant, measure_from: u64, deadline: u64) -> Result<RunResult> {
        let t = now_ns(origin);
        for cid in 0..self.qd as u16 {
            self.queue(cid, t);
        }
        self.send()?;
        let mut measured_done = 0u64;
        let mut measuring = false;
        let mut t_measure_start = 0;
        let mut completions: Vec<u16> = Vec::with_capacity(self.qd);
        loop {
            let n = match self.stream.read(&mut self.rx) {
                Ok(0) => bail!("target closed the connection"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let t = now_ns(origin);
            completions.clear();
            if self.echo_resp > 0 {
                self.echo_have += n;
                while self.echo_have >= self.echo_resp {
                    self.echo_have -= self.echo_resp;
                    let s = self
                        .echo_fifo
                        .pop_front()
                        .context("echo reply without request")?;
                    if measuring {
                        self.hist.record(t - s);
                    }
                    completions.push(0);
                }
            } else {
                self.lean.parse(&self.rx[..n], &mut completions)?;
                if measuring {
                    for &c in &completions {
                        self.hist.record(t - self.submitted_at[c as usize]);
                    }
                }
            }
            if !measuring && t >= measure_from {
                measuring = true;
                t_measure_start = t;
            } else if measuring {
                measured_done += completions.len() as u64;
            }
            if t >= deadline {
                // Drain: stop submitting; the connection is dropped after this run.
                let secs = (t - t_measure_start) as f64 / 1e9;
                return Ok(RunResult {
                    iops: measured_done as f64 / secs.max(1e-9),
                    lat: self.hist.percentiles(),
                });
            }
            for &cid in completions.iter() {
                self.queue(cid, t);
            }
            self.send()?;
        }
    }
}

struct TargetSide {
    runtime: Runtime,
    target: Target,
    addr: SocketAddr,
    reactor: ReactorHandle,
}

fn start_target(core: usize, rx_buffer_kib: usize) -> Result<TargetSide> {
    let runtime = Runtime::start(RuntimeConfig {
        cores: Some(vec![core]),
        idle_sleep_ns: u64::MAX,
        pin: true,
        ..RuntimeConfig::default()
    })?;
    let reactor = runtime.handles()[0].clone();
    let target = Target::new(
        TargetOptions {
            rx_buffer_size: rx_buffer_kib * 1024,
            ..TargetOptions::default()
        },
        runtime.handles().to_vec(),
    )?;
    target.create_subsystem(SubsystemParams {
        nqn: NQN.into(),
        serial: "BENCH".into(),
        model: "vmpath bench".into(),
        allow_any_host: true,
        hosts: vec![],
    })?;
    let null: Arc<dyn BlockDevice> =
        Arc::new(NullBdev::new("Null0", NS_BLOCKS, BS, Default::default())?);
    let malloc: Arc<dyn BlockDevice> = Arc::new(MallocBdev::new(
        "Malloc0",
        NS_BLOCKS,
        BS,
        Default::default(),
    )?);
    target.add_namespace(
        NQN,
        NamespaceParams {
            bdev: null,
            nsid: Some(1),
            anagrpid: None,
        },
    )?;
    target.add_namespace(
        NQN,
        NamespaceParams {
            bdev: malloc,
            nsid: Some(2),
            anagrpid: None,
        },
    )?;
    let l = target.add_listener(
        NQN,
        &ListenAddr::new("127.0.0.1", "0"),
        nvme_spec::AnaState::Optimized,
    )?;
    let addr = l.socket_addr()?;
    Ok(TargetSide {
        runtime,
        target,
        addr,
        reactor,
    })
}

fn busy_share(before: vmpath_runtime::ReactorStats, after: vmpath_runtime::ReactorStats) -> f64 {
    let b = after.busy_ticks.saturating_sub(before.busy_ticks) as f64;
    let i = after.idle_ticks.saturating_sub(before.idle_ticks) as f64;
    if b + i == 0.0 {
        0.0
    } else {
        100.0 * b / (b + i)
    }
}

fn run_target(
    args: &Args,
    addr: SocketAddr,
    reactor: Option<&ReactorHandle>,
    backend: Backend,
    rw: Rw,
    qd: usize,
) -> Result<(RunResult, f64)> {
    let o = InitiatorOptions {
        queue_entries: (qd as u16 + 1).max(2),
        disable_sqflow: true,
        timeout: Duration::from_secs(10),
        ..InitiatorOptions::default()
    };
    let mut host = Host::connect(addr, NQN, &o, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    let io = host.io.pop().context("no I/O queue")?;
    let (stream, session, _dec) = io.into_parts().map_err(|e| anyhow::anyhow!("{e}"))?;
    stream.set_nonblocking(true)?;
    let (nsid, blocks) = match backend {
        Backend::Null => (1, NS_BLOCKS),
        Backend::Malloc => (2, NS_BLOCKS),
    };
    let mut load = new_load(stream, session, rw, qd, nsid, blocks, 0);
    let origin = Instant::now();
    let (warm, end) = window(args);
    let before = reactor.map(|r| r.stats());
    let r = load.run(origin, warm, end)?;
    let after = reactor.map(|r| r.stats());
    drop(load);
    drop(host);
    let busy = match (before, after) {
        (Some(b), Some(a)) => busy_share(b, a),
        _ => f64::NAN,
    };
    Ok((r, busy))
}

#[allow(clippy::too_many_arguments)]
fn new_load(
    stream: TcpStream,
    session: Session,
    rw: Rw,
    qd: usize,
    nsid: u32,
    blocks: u64,
    echo_resp: usize,
) -> Load {
    Load {
        stream,
        enc: Encoder::new(session),
        lean: LeanParser::default(),
        rw,
        qd,
        nsid,
        blocks,
        rng: Rng::new(0x5eed + qd as u64),
        out: Vec::with_capacity(qd * (4096 + 128)),
        rx: vec![0; 1 << 20],
        data: vec![0xa5; BS as usize],
        submitted_at: vec![0; qd.max(1)],
        echo_fifo: VecDeque::with_capacity(qd),
        echo_resp,
        echo_have: 0,
        hist: LatencyHist::new(),
    }
}

/// The echo ceiling: a server pinned to the target core that answers every fixed-size
/// request with a fixed-size reply, in one `write` per `read`.
fn run_echo(args: &Args, rw: Rw, qd: usize) -> Result<RunResult> {
    let (_, resp) = echo_sizes(rw);
    let (addr, stop, server) = start_echo(args, rw)?;
    let r = on_load_core(args, || {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut load = new_load(stream, Session::default(), rw, qd, 1, 1 << 18, resp);
        let (warm, end) = window(args);
        load.run(Instant::now(), warm, end)
    });
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    r
}

/// When measuring starts and ends, in ns from the start of a run.
fn window(args: &Args) -> (u64, u64) {
    let warm = args.warmup_ms * 1_000_000;
    (warm, warm + (args.secs * 1e9) as u64)
}

/// Request and reply sizes of the echo ceiling: a CapsuleCmd (with 4 KiB in-capsule data
/// for writes) in, a C2HData header + 4 KiB (reads) or a CapsuleResp (writes) out.
fn echo_sizes(rw: Rw) -> (usize, usize) {
    match rw {
        Rw::Randread => (72usize, 24 + BS as usize),
        Rw::Randwrite => (72 + BS as usize, 24usize),
    }
}

/// Starts the echo server thread (from the unpinned main thread, so it can be pinned to
/// the target core).
#[allow(clippy::type_complexity)]
fn start_echo(
    args: &Args,
    rw: Rw,
) -> Result<(
    SocketAddr,
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<()>>,
)> {
    let (req, resp) = echo_sizes(rw);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let core = args.target_core;
    let server = std::thread::spawn(move || -> Result<()> {
        let _ = vmpath_bench::cpu::pin_current_thread(Some(core));
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let reply = vec![0x5au8; resp * 256];
        let mut buf = vec![0u8; 1 << 20];
        let mut have = 0usize;
        while !stop2.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    have += n;
                    let mut full = have / req;
                    have %= req;
                    while full > 0 {
                        let k = full.min(256);
                        let mut off = 0;
                        while off < k * resp {
                            match s.write(&reply[off..k * resp]) {
                                Ok(m) => off += m,
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                    std::hint::spin_loop()
                                }
                                Err(_) => return Ok(()),
                            }
                        }
                        full -= k;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    });
    Ok((addr, stop, server))
}

/// Runs `f` on a thread pinned to the load-generator core (the main thread stays unpinned
/// so the target and echo threads can be pinned elsewhere).
fn on_load_core<T: Send>(args: &Args, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            vmpath_bench::cpu::pin_current_thread(Some(args.load_core))
                .context("pinning the load generator")?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("load generator panicked"))?
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.qd.iter().any(|&q| q == 0 || q > 127) {
        bail!("--qd values must be 1..=127 (the target's queues have 128 entries, one is kept for Connect)");
    }
    println!(
        "nvmf_bench: target reactor on core {}, load generator on core {}, 4 KiB I/O, {} s per run, target rx buffer {} KiB",
        args.target_core, args.load_core, args.secs, args.rx_buffer_kib
    );
    if let Some(secs) = args.serve_secs {
        let t = start_target(args.target_core, args.rx_buffer_kib)?;
        println!("serving on {} for {secs} s", t.addr);
        std::thread::sleep(Duration::from_secs_f64(secs));
        t.target.shutdown(Duration::from_secs(5));
        t.runtime.shutdown();
        return Ok(());
    }
    // The echo ceilings first, while nothing else runs on the target core.
    let mut echo: Vec<((Rw, usize), RunResult)> = Vec::new();
    if !args.no_echo && args.connect.is_none() {
        for &rw in &args.rw {
            for &qd in &args.qd {
                echo.push(((rw, qd), run_echo(&args, rw, qd)?));
            }
        }
    }
    let t = match args.connect {
        Some(_) => None,
        None => Some(start_target(args.target_core, args.rx_buffer_kib)?),
    };
    let addr = t
        .as_ref()
        .map(|t| t.addr)
        .or(args.connect)
        .context("no target address")?;
    let mut table = Table::new(&[
        ("backend", false),
        ("rw", false),
        ("qd", true),
        ("IOPS/core", true),
        ("p50", true),
        ("p99", true),
        ("busy%", true),
        ("IOPS/busy-core", true),
        ("echo IOPS", true),
        ("echo p50", true),
        ("echo p99", true),
        ("ratio", true),
    ]);
    for &backend in &args.backend {
        for &rw in &args.rw {
            for &qd in &args.qd {
                let (r, busy) = on_load_core(&args, || {
                    run_target(&args, addr, t.as_ref().map(|t| &t.reactor), backend, rw, qd)
                })?;
                let e = echo.iter().find(|(k, _)| *k == (rw, qd)).map(|(_, e)| e);
                table.push(vec![
                    format!("{backend:?}").to_lowercase(),
                    format!("{rw:?}").to_lowercase(),
                    qd.to_string(),
                    thousands(r.iops as u64),
                    micros(r.lat.p50_us),
                    micros(r.lat.p99_us),
                    if busy.is_nan() {
                        "-".into()
                    } else {
                        format!("{busy:.0}")
                    },
                    if busy.is_nan() {
                        "-".into()
                    } else {
                        thousands((r.iops * 100.0 / busy.max(1.0)) as u64)
                    },
                    e.map(|e| thousands(e.iops as u64)).unwrap_or_default(),
                    e.map(|e| micros(e.lat.p50_us)).unwrap_or_default(),
                    e.map(|e| micros(e.lat.p99_us)).unwrap_or_default(),
                    e.map(|e| format!("{:.0}%", 100.0 * r.iops / e.iops))
                        .unwrap_or_default(),
                ]);
            }
        }
    }
    print!("{}", table.render());
    if let Some(t) = t {
        t.target.shutdown(Duration::from_secs(5));
        t.runtime.shutdown();
    }
    Ok(())
}
