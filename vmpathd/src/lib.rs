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
pub mod rpc;

pub use daemon::{Daemon, DaemonError, DaemonOptions};

/// The daemon's version string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
