//! Serves one vhost-user-blk disk until killed: a stand-alone target for trying QEMU or
//! cloud-hypervisor against this crate before the daemon is involved.
//!
//! ```text
//! cargo run --release -p vhost@0.1.0 --example vhost_serve -- --socket /tmp/vu.sock --file /tmp/disk.img --queues 2
//! cargo run --release -p vhost@0.1.0 --example vhost_serve -- --socket /tmp/vu.sock --malloc-mib 256
//! ```
//! Options: `--socket PATH` (required), `--file PATH` (io_uring on a file, kept across
//! restarts) or `--malloc-mib N` (RAM, default 256), `--queues N` (default 2), `--cores 0,1`
//! (default: every allowed core), `--readonly`, `--direct`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vhost::{VhostBlkConfig, VhostBlkController};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::sim::SimParams;
use vmpath_bdev::uring::UringBdev;
use vmpath_bdev::BlockDevice;
use vmpath_runtime::{Runtime, RuntimeConfig};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut socket = None;
    let mut file = None;
    let mut mib = 256u64;
    let mut queues = 2u16;
    let mut cores = None;
    let mut readonly = false;
    let mut direct = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(val()?),
            "--file" => file = Some(val()?),
            "--malloc-mib" => mib = val()?.parse()?,
            "--queues" => queues = val()?.parse()?,
            "--cores" => {
                cores = Some(
                    val()?
                        .split(',')
                        .map(|c| c.parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            "--readonly" => readonly = true,
            "--direct" => direct = true,
            other => bail!("unknown option {other}"),
        }
    }
    let socket = socket.context("--socket is required")?;
    let bdev: Arc<dyn BlockDevice> = match &file {
        Some(f) => Arc::new(UringBdev::new("disk0", f, None, direct)?),
        None => Arc::new(MallocBdev::new(
            "disk0",
            mib * 2048,
            512,
            SimParams::default(),
        )?),
    };
    let runtime = Runtime::start(RuntimeConfig {
        cores,
        pin: false,
        ..RuntimeConfig::default()
    })?;
    let mut cfg = VhostBlkConfig::new("disk0", &socket, bdev, "vm0", runtime.handles().to_vec());
    cfg.num_queues = queues;
    cfg.readonly = readonly;
    let mut ctrl = VhostBlkController::new(cfg)?;
    ctrl.start()?;
    println!("vhost_serve: listening on {socket}");
    loop {
        std::thread::park();
    }
}
