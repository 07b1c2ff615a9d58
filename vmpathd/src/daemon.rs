//! Daemon life cycle: start from a config, serve, shut down cleanly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmpath_bdev::BdevRegistry;
use vmpath_config::Config;
use vmpath_mgmt::{EventBus, RpcServer, ServerOptions};
use vmpath_runtime::{ReactorHandle, Runtime, RuntimeConfig};

use crate::rpc::Handler;

/// Errors starting the daemon. Each says what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is inconsistent.
    #[error(transparent)]
    Config(#[from] vmpath_config::ConfigError),
    /// Reactors could not be started.
    #[error("starting reactors: {0}")]
    Runtime(#[from] vmpath_runtime::RuntimeError),
    /// A configured block device could not be created.
    #[error("creating bdev {name}: {source}")]
    Bdev {
        /// The bdev's name.
        name: String,
        /// Why.
        #[source]
        source: vmpath_bdev::BdevError,
    },
    /// A configured object (path, VM, volume, ...) could not be created.
    #[error("{0}")]
    Setup(String),
    /// The RPC socket could not be served.
    #[error("serving JSON-RPC on {path}: {source}")]
    Rpc {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmpath_mgmt::ServerError,
    },
}

/// Overrides applied on top of the config (command-line flags).
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Reactor cores (`-m`), replacing `[reactors]` core selection.
    pub cores: Option<Vec<usize>>,
    /// RPC socket path (`-r`).
    pub rpc_socket: Option<PathBuf>,
    /// Pin reactor threads (off in some tests).
    pub no_pin: bool,
    /// Directory of vhost-user sockets (`-S`), replacing `[vhost] socket_dir`.
    pub vhost_socket_dir: Option<PathBuf>,
    /// TCP port of every NVMe/TCP listener (`--nvmf-port`; 0 = a free port each).
    pub nvmf_port: Option<u16>,
}

/// State shared by the RPC handler and the daemon.
pub struct State {
    /// Block devices by name.
    pub bdevs: BdevRegistry,
    /// The config that rebuilds the current state (kept up to date by every RPC that changes
    /// state; `save_config` writes it).
    pub config: Mutex<Config>,
    /// Reactor handles, by reactor id.
    pub reactors: Vec<ReactorHandle>,
    /// Management events.
    pub events: Arc<EventBus>,
    /// The per-VM scheduler, its paths and the VMs' volumes.
    pub volumes: Arc<vmpath_volume::VolumeManager>,
    /// The NVMe/TCP host: remote controllers, multipath namespaces, path events.
    pub nvme: nvme_paths::NvmeHost,
    /// vhost-user-blk controllers by name.
    pub vhost: crate::vhost_rpc::Controllers,
    /// The NVMe-over-TCP target (exported subsystems).
    pub nvmf: Arc<nvmf_target::Target>,
    /// Remote hosts scheduled as VMs (the target's admission factory).
    pub hosts: Arc<crate::hosts::HostBindings>,
    /// When the daemon started.
    pub started: Instant,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("reactors", &self.reactors.len())
            .finish_non_exhaustive()
    }
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    state: Arc<State>,
    runtime: Option<Runtime>,
    rpc: Option<RpcServer>,
    socket: PathBuf,
    pump: Option<(
        std::thread::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicBool>,
    )>,
}

impl Daemon {
    /// Starts reactors, creates the configured objects and serves RPC.
    pub fn start(mut config: Config, opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        if let Some(cores) = &opts.cores {
            config.reactors.cpumask = None;
            config.reactors.cores = Some(cores.clone());
        }
        if let Some(sock) = &opts.rpc_socket {
            config.rpc.socket = sock.clone();
        }
        if let Some(dir) = &opts.vhost_socket_dir {
            config.vhost.socket_dir = dir.clone();
        }
        if let Some(port) = opts.nvmf_port {
            for l in config
                .nvmf_subsystems
                .iter_mut()
                .flat_map(|s| s.listeners.iter_mut())
            {
                l.trsvcid = port.to_string();
            }
        }
        config.validate("command line")?;
        let cores =
            config
                .reactors
                .core_list()
                .map_err(|e| vmpath_config::ConfigError::Invalid {
                    origin: "config".into(),
                    key: format!("reactors.{}", e.field),
                    location: None,
                    message: e.message,
                })?;
        let runtime = Runtime::start(RuntimeConfig {
            cores,
            idle_sleep_ns: config.reactors.idle_sleep_us.saturating_mul(1000),
            pin: !opts.no_pin,
            ..RuntimeConfig::default()
        })?;
        let bdevs = BdevRegistry::new();
        for b in &config.bdevs {
            let dev = crate::bdevs::build(b).map_err(|source| DaemonError::Bdev {
                name: b.name().to_string(),
                source,
            })?;
            bdevs.insert(dev).map_err(|e| DaemonError::Bdev {
                name: b.name().to_string(),
                source: vmpath_bdev::BdevError::InvalidParam {
                    param: "name",
                    msg: e.to_string(),
                },
            })?;
            tracing::info!(bdev = b.name(), kind = %b.kind(), "bdev created");
        }
        let socket = config.rpc.socket.clone();
        let mut sched_cfg = config.scheduler.clone().unwrap_or_default();
        sched_cfg.shards = runtime.handles().len();
        let sched = scheduler::Scheduler::new(sched_cfg).map_err(|e| {
            vmpath_config::ConfigError::Invalid {
                origin: "config".into(),
                key: "scheduler".into(),
                location: None,
                message: e.to_string(),
            }
        })?;
        let volumes = vmpath_volume::VolumeManager::new(sched);
        for h in runtime.handles() {
            let mgr = volumes.clone();
            h.call(move |r| mgr.install(r))
                .map_err(|_| {
                    DaemonError::Setup(format!("reactor {} stopped during start", h.id()))
                })?
                .map_err(|e| DaemonError::Setup(e.to_string()))?;
        }
        let hosts = Arc::new(crate::hosts::HostBindings::new(volumes.clone()));
        let state = Arc::new(State {
            bdevs,
            config: Mutex::new(config.clone()),
            reactors: runtime.handles().to_vec(),
            events: Arc::new(EventBus::new(4096)),
            volumes,
            nvme: nvme_paths::NvmeHost::new(None),
            vhost: Default::default(),
            nvmf: crate::nvmf_rpc::new_target(runtime.handles().to_vec())
                .map_err(DaemonError::Setup)?,
            started: Instant::now(),
            hosts,
        });
        state.nvmf.set_admission_factory(state.hosts.clone());
        crate::nvme_rpc::forward_events(&state);
        crate::vm_rpc::follow_fabric_paths(&state);
        crate::nvme_rpc::attach_configured(&state).map_err(DaemonError::Setup)?;
        crate::build_vm_objects(&state, &config)?;
        for (i, c) in config.vhost_blks.iter().enumerate() {
            crate::vhost_rpc::create(&state, c).map_err(|e| {
                DaemonError::Setup(format!("vhost_blk[{i}] ({}): {}", c.name, e.message))
            })?;
        }
        crate::nvmf_rpc::start_configured(&state).map_err(DaemonError::Setup)?;
        let pump_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pump = {
            let (st, stop) = (state.clone(), pump_stop.clone());
            std::thread::Builder::new()
                .name("sched-events".into())
                .spawn(move || crate::vm_rpc::event_pump(st, stop))
                .map_err(|e| DaemonError::Setup(format!("cannot start the event thread: {e}")))?
        };
        let handler = Arc::new(Handler::new(state.clone()));
        let rpc = RpcServer::bind_with(
            &socket,
            handler,
            ServerOptions {
                events: Some(state.events.clone()),
                ..ServerOptions::default()
            },
        )
        .map_err(|source| DaemonError::Rpc {
            path: socket.clone(),
            source,
        })?;
        tracing::info!(socket = %socket.display(), reactors = state.reactors.len(), "vmpathd ready");
        Ok(Daemon {
            state,
            runtime: Some(runtime),
            rpc: Some(rpc),
            socket,
            pump: Some((pump, pump_stop)),
        })
    }

    /// Shared state (for tests and embedding).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The RPC socket path.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Stops serving RPC, lets in-flight I/O finish and stops the reactors.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(rpc) = self.rpc.take() {
            rpc.shutdown();
        }
        // Frontends first: their in-flight I/O completes, then nothing new arrives.
        crate::vhost_rpc::stop_all(&self.state);
        crate::nvmf_rpc::stop(&self.state);
        if let Some((t, stop)) = self.pump.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            let t0 = Instant::now();
            rt.shutdown();
            tracing::info!(took = ?t0.elapsed().max(Duration::ZERO), "reactors stopped");
        }
        self.state.nvme.shutdown();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
