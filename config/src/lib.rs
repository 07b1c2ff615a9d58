//! Configuration of the `vmpathd` daemon: a TOML file, or the built-in default.
//!
//! The file has one section per concern (see `examples/vmpath.toml`):
//!
//! - `[reactors]`: cores (`cpumask`, SPDK style, or `cores`) and the idle spell after which
//!   a reactor sleeps;
//! - `[rpc]`: the JSON-RPC 2.0 Unix socket (SPDK's default is `/var/tmp/spdk.sock`; ours is
//!   [`DEFAULT_RPC_SOCKET`]);
//! - `[[bdev]]`: block devices, one table each, tagged by `type` = `null` | `malloc` | `uring`.
//!
//! Every struct is `serde` with `deny_unknown_fields`. Errors ([`ConfigError`]) name the
//! file, the key path, the line and column and what is wrong, e.g.
//! `vmpath.toml:14:14: bdev[2].block_size: must be 512 or 4096, got 1000`.
//!
//! The bdev parameter structs ([`MallocBdevParams`], [`NullBdevParams`],
//! [`UringBdevParams`]) double as the JSON-RPC params of `bdev_malloc_create`,
//! `bdev_null_create` and `bdev_uring_create`, with SPDK's `rpc.py` field names
//! (`name`, `num_blocks`, `block_size`, `filename`, `uuid`); their `validate()` returns a
//! [`ParamError`] naming the field. [`Config::to_toml_string`] writes a config that
//! [`Config::from_str`] reads back equal (used by the `save_config` RPC).
//!
//! References: TOML v1.0.0 (<https://toml.io/en/v1.0.0>); SPDK JSON-RPC
//! (`doc/jsonrpc.md`, `spdk_cpuset_parse` for masks).

pub mod bdev;
pub mod config;
pub mod cpumask;
pub mod error;
mod load;
pub mod nvme;
pub mod nvmf;
pub mod vhost;
pub mod vm;

pub use bdev::{
    BdevConfig, BdevKind, MallocBdevParams, NullBdevParams, SimParams, UringBdevParams, BLOCK_SIZES,
};
pub use config::{Config, ReactorsConfig, RpcConfig, DEFAULT_IDLE_SLEEP_US, DEFAULT_RPC_SOCKET};
pub use cpumask::{format_cpumask, parse_cpumask, CpumaskError, MAX_CORES};
pub use error::{ConfigError, KeyPath, Location, ParamError, Segment};
pub use nvme::NvmeControllerConfig;
pub use nvmf::{NvmfListenerConfig, NvmfNamespaceConfig, NvmfSubsystemConfig};
pub use vhost::{VhostBlkConfig, VhostConfig};
pub use vm::{HooksConfig, PathConfig, VolumeConfig};
