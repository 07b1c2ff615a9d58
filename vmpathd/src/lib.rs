//! # vmpathd: the vmpath storage target daemon
//!
//! The daemon wires the crates together:
//!
//! 1. reads a [`vmpath_config::Config`] (a TOML file, or the built-in default),
//! 2. starts one pinned reactor per core ([`vmpath_runtime::Runtime`]),
//! 3. builds every block device of the config into a [`vmpath_bdev::BdevRegistry`],
//! 4. serves JSON-RPC 2.0 on a Unix socket ([`vmpath_mgmt::RpcServer`]) with SPDK-style
//!    `object_verb` methods (see [`rpc`]),
//! 5. on SIGINT/SIGTERM stops taking RPCs, lets in-flight I/O complete and stops the reactors.
//!
//! [`Daemon`] is also usable in-process (the workspace tests start one per test).

pub mod bdevs;
pub mod daemon;
pub mod hosts;
pub mod nvme_rpc;
pub mod nvmf_rpc;
pub mod rpc;
pub mod vhost_rpc;
pub mod vm_rpc;

pub use daemon::{Daemon, DaemonError, DaemonOptions};

/// The daemon's version string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Creates the scheduler paths, VMs and volumes of the config (after its bdevs).
pub(crate) fn build_vm_objects(
    state: &daemon::State,
    config: &vmpath_config::Config,
) -> Result<(), DaemonError> {
    // Fabric paths attached at start may still be connecting: give them a moment, so VMs are
    // homed over the paths that will actually serve them (vm-affinity spreads VMs over
    // optimized paths).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for (p, route) in config
        .paths
        .iter()
        .filter_map(|p| Some((p, p.fabric_path?)))
    {
        while std::time::Instant::now() < deadline {
            let connecting = state
                .nvme
                .namespace(&p.bdev)
                .and_then(|ns| ns.path(nvme_paths::PathId(route)))
                .is_none_or(|path| path.state() == nvme_paths::PathState::Connecting);
            if !connecting {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    for (i, p) in config.paths.iter().enumerate() {
        vm_rpc::add_path(state, p)
            .map_err(|e| DaemonError::Setup(format!("path[{i}] ({}): {}", p.name, e.message)))?;
    }
    let sched = state.volumes.scheduler();
    for (i, vm) in config.vms.iter().enumerate() {
        sched
            .create_vm(vm.clone())
            .map_err(|e| DaemonError::Setup(format!("vm[{i}] ({}): {e}", vm.name)))?;
    }
    for (i, v) in config.volumes.iter().enumerate() {
        vm_rpc::create_volume(state, v)
            .map_err(|e| DaemonError::Setup(format!("volume[{i}] ({}): {}", v.name, e.message)))?;
    }
    for (i, h) in config.hosts.iter().enumerate() {
        hosts::bind(state, h)
            .map_err(|e| DaemonError::Setup(format!("host[{i}] ({}): {}", h.nqn, e.message)))?;
    }
    Ok(())
}
