//! `vmpathd`: the vmpath storage target daemon.
//!
//! ```text
//! vmpathd                      # built-in default config
//! vmpathd -c /etc/vmpath.toml  # a config file
//! vmpathd -m 0x3 -r /run/vmpath.sock
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vmpath_config::{parse_cpumask, Config};
use vmpathd::{Daemon, DaemonOptions};

/// The vmpath poll-mode storage target.
#[derive(Parser, Debug)]
#[command(name = "vmpathd", version, about, long_about = None)]
struct Args {
    /// Config file (TOML). Without it, the built-in default config is used
    /// (see `--print-default-config`).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Reactor cores as an SPDK-style mask (`0x3`, `[0,2-3]`); overrides the config.
    /// Default: the CPU set the process was started with.
    #[arg(short = 'm', long = "cpumask", value_name = "MASK")]
    cpumask: Option<String>,

    /// JSON-RPC Unix socket path; overrides the config (default /var/tmp/vmpath.sock).
    #[arg(short = 'r', long = "rpc-socket", value_name = "PATH")]
    rpc_socket: Option<PathBuf>,

    /// Directory for vhost-user sockets; overrides `[vhost] socket_dir` (default /var/tmp).
    #[arg(short = 'S', long = "vhost-socket-dir", value_name = "DIR")]
    vhost_socket_dir: Option<PathBuf>,

    /// TCP port for every NVMe/TCP listener of the config (0 = a free port each; see
    /// `nvmf_get_subsystems`). Overrides the configured `trsvcid`s.
    #[arg(long = "nvmf-port", value_name = "PORT")]
    nvmf_port: Option<u16>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info`, `vmpathd=debug`); RUST_LOG wins.
    #[arg(long, default_value = "info")]
    log: String,

    /// Print the built-in default config as TOML and exit.
    #[arg(long)]
    print_default_config: bool,

    /// Check the config and exit without starting.
    #[arg(long)]
    check_config: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("bad --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    if args.print_default_config {
        print!("{}", Config::default_builtin().to_toml_string()?);
        return Ok(());
    }
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default_builtin(),
    };
    let cores = match &args.cpumask {
        Some(mask) => Some(parse_cpumask(mask).with_context(|| format!("-m {mask}"))?),
        None => None,
    };
    if args.check_config {
        config.validate("config")?;
        println!("config OK");
        return Ok(());
    }

    // Handle signals on this thread only; reactors never see them.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let daemon = Daemon::start(
        config,
        DaemonOptions {
            cores,
            rpc_socket: args.rpc_socket.clone(),
            no_pin: false,
            vhost_socket_dir: args.vhost_socket_dir.clone(),
            nvmf_port: args.nvmf_port,
        },
    )?;
    eprintln!(
        "vmpathd {} running: {} reactor(s), JSON-RPC on {} (try: vmpathctl -r {} bdev_get_bdevs). Ctrl-C stops.",
        vmpathd::VERSION,
        daemon.state().reactors.len(),
        daemon.socket().display(),
        daemon.socket().display(),
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    daemon.shutdown();
    tracing::info!("vmpathd stopped");
    Ok(())
}
