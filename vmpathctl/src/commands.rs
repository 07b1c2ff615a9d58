//! One subcommand per RPC. Each subcommand knows its JSON-RPC method, how to build the
//! params from its arguments ([`Command::request`]) and how to show the result to a human
//! ([`Command::render`]).
//!
//! Adding an RPC (the later `nvmf_*`, `bdev_nvme_*`, `vm_*`, `vhost_*` methods) means one
//! variant with its argument struct and one arm in each of those two functions; until
//! then, `vmpathctl call <method> [params]` reaches any method.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use vmpath_config::{MallocBdevParams, NullBdevParams, UringBdevParams};

use crate::format::{self, FormatError};

/// Why a command line could not be turned into a request.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A size argument is not usable.
    #[error("{arg}: {reason}")]
    BadArgument {
        /// The argument name.
        arg: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `call`'s params are not JSON.
    #[error("params are not valid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
}

/// The subcommands. Names are the RPC method names (SPDK style, `object_verb`); the
/// kebab-case spelling is accepted too.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the daemon's version (RPC vmpath_get_version)
    #[command(
        name = "vmpath_get_version",
        visible_alias = "version",
        alias = "vmpath-get-version"
    )]
    VmpathGetVersion,

    /// List the RPC methods the daemon serves (RPC rpc_get_methods)
    #[command(name = "rpc_get_methods", alias = "rpc-get-methods")]
    RpcGetMethods,

    /// Create a RAM-backed bdev (RPC bdev_malloc_create)
    ///
    /// Example: `vmpathctl bdev_malloc_create -b Malloc1 64 4096` creates a 64 MiB bdev
    /// with 4096-byte blocks. The simulation knobs make it behave like a slower device.
    #[command(name = "bdev_malloc_create", alias = "bdev-malloc-create")]
    BdevMallocCreate(MallocCreateArgs),

    /// Create a null bdev that completes I/O without moving data (RPC bdev_null_create)
    ///
    /// Example: `vmpathctl bdev_null_create Null1 1024 512` creates a 1 GiB null bdev.
    #[command(name = "bdev_null_create", alias = "bdev-null-create")]
    BdevNullCreate(NullCreateArgs),

    /// Create an io_uring bdev on a file or block device (RPC bdev_uring_create)
    ///
    /// Example: `vmpathctl bdev_uring_create /dev/nvme0n1 Uring0`.
    #[command(name = "bdev_uring_create", alias = "bdev-uring-create")]
    BdevUringCreate(UringCreateArgs),

    /// Delete a bdev of any type (RPC bdev_delete)
    #[command(name = "bdev_delete", alias = "bdev-delete")]
    BdevDelete {
        /// Name of the bdev
        name: String,
    },

    /// List bdevs with their size and simulation knobs (RPC bdev_get_bdevs)
    #[command(name = "bdev_get_bdevs", alias = "bdev-get-bdevs")]
    BdevGetBdevs {
        /// Show only this bdev
        #[arg(short = 'b', long = "name", value_name = "NAME")]
        name: Option<String>,
    },

    /// Show the reactors (poller threads) and their counters (RPC framework_get_reactors)
    #[command(name = "framework_get_reactors", alias = "framework-get-reactors")]
    FrameworkGetReactors,

    /// Print the running configuration as a config file (RPC save_config)
    ///
    /// The output can be given back to `vmpathd -c FILE` to rebuild the same state.
    #[command(name = "save_config", alias = "save-config")]
    SaveConfig {
        /// Write to this file instead of standard output
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Read management events (RPC vmpath_get_events)
    #[command(
        name = "vmpath_get_events",
        alias = "vmpath-get-events",
        visible_alias = "events"
    )]
    VmpathGetEvents(EventsArgs),

    /// VM, scheduler path and volume commands.
    #[command(flatten)]
    Vm(crate::vm_commands::VmCommand),

    /// NVMe/TCP host commands (bdev_nvme_*).
    #[command(flatten)]
    Nvme(crate::nvme_commands::NvmeCommand),

    /// NVMe-oF target commands (nvmf_*).
    #[command(flatten)]
    Nvmf(crate::nvmf_commands::NvmfCommand),

    /// Call any RPC method with JSON params and print the JSON result
    ///
    /// Example: `vmpathctl call bdev_get_bdevs '{"name": "Malloc0"}'`.
    Call {
        /// Method name
        method: String,
        /// Params as a JSON object or array (omit for none)
        params: Option<String>,
    },
}

/// Simulation knobs shared by the malloc and null bdevs.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Fixed latency added to every I/O, in microseconds
    #[arg(long, value_name = "US", default_value_t = 0)]
    pub latency_us: u64,
    /// IOPS the device can do (0 = unlimited)
    #[arg(long, value_name = "IOPS", default_value_t = 0)]
    pub max_iops: u64,
    /// Bandwidth the device can do, in MiB/s (0 = unlimited)
    #[arg(long, value_name = "MIBPS", default_value_t = 0)]
    pub max_bw_mbps: u64,
}

/// Arguments of `bdev_malloc_create` (SPDK: `bdev_malloc_create -b NAME SIZE BLOCK_SIZE`).
#[derive(Debug, Args)]
pub struct MallocCreateArgs {
    /// Name of the new bdev
    #[arg(short = 'b', long = "name", value_name = "NAME")]
    pub name: String,
    /// Size in MiB
    pub total_size: f64,
    /// Block size in bytes: 512 or 4096
    pub block_size: u32,
    /// Fixed UUID (default: generated)
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Arguments of `bdev_null_create` (SPDK: `bdev_null_create NAME SIZE BLOCK_SIZE`).
#[derive(Debug, Args)]
pub struct NullCreateArgs {
    /// Name of the new bdev
    pub name: String,
    /// Size in MiB
    pub total_size: f64,
    /// Block size in bytes: 512 or 4096
    pub block_size: u32,
    /// Fixed UUID (default: generated)
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,
    #[command(flatten)]
    pub sim: SimArgs,
}

/// Arguments of `bdev_uring_create` (SPDK: `bdev_uring_create FILENAME NAME [BLOCK_SIZE]`).
#[derive(Debug, Args)]
pub struct UringCreateArgs {
    /// Path of the backing file or block device
    pub filename: String,
    /// Name of the new bdev
    pub name: String,
    /// Block size in bytes: 512 or 4096 (default: the device's logical block size)
    pub block_size: Option<u32>,
    /// Fixed UUID (default: generated)
    #[arg(short = 'u', long)]
    pub uuid: Option<String>,
    /// Do not use O_DIRECT (go through the page cache)
    #[arg(long)]
    pub no_direct: bool,
}

/// Arguments of `vmpath_get_events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Return events with this sequence number or later (0 = the oldest kept)
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Return at most this many events
    #[arg(long)]
    pub max: Option<usize>,
    /// Wait up to this many milliseconds for an event when there is none yet
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub wait_ms: u64,
}

/// `total_size` MiB in blocks of `block_size` bytes (rounded down, like SPDK's rpc.py).
pub fn mib_to_blocks(total_size: f64, block_size: u32) -> Result<u64, CommandError> {
    let bad = |reason: String| CommandError::BadArgument {
        arg: "total_size",
        reason,
    };
    if !total_size.is_finite() || total_size <= 0.0 {
        return Err(bad(format!(
            "must be a positive number of MiB, got {total_size}"
        )));
    }
    if block_size == 0 {
        return Err(CommandError::BadArgument {
            arg: "block_size",
            reason: "must be 512 or 4096, got 0".into(),
        });
    }
    let blocks = (total_size * 1024.0 * 1024.0 / f64::from(block_size)).floor();
    if blocks < 1.0 {
        return Err(bad(format!(
            "{total_size} MiB is smaller than one {block_size}-byte block"
        )));
    }
    if blocks >= u64::MAX as f64 {
        return Err(bad(format!("{total_size} MiB is too large")));
    }
    Ok(blocks as u64)
}

fn to_params<T: serde::Serialize>(params: &T) -> Option<Value> {
    // The params structs hold only strings, integers and booleans: they always serialize.
    Some(serde_json::to_value(params).unwrap_or(Value::Null))
}

impl Command {
    /// The JSON-RPC method and params for this command.
    pub fn request(&self) -> Result<(String, Option<Value>), CommandError> {
        let (method, params) = match self {
            Command::VmpathGetVersion => ("vmpath_get_version", None),
            Command::RpcGetMethods => ("rpc_get_methods", None),
            Command::BdevMallocCreate(a) => (
                "bdev_malloc_create",
                to_params(&MallocBdevParams {
                    name: a.name.clone(),
                    uuid: a.uuid.clone(),
                    num_blocks: mib_to_blocks(a.total_size, a.block_size)?,
                    block_size: a.block_size,
                    latency_us: a.sim.latency_us,
                    max_iops: a.sim.max_iops,
                    max_bw_mbps: a.sim.max_bw_mbps,
                }),
            ),
            Command::BdevNullCreate(a) => (
                "bdev_null_create",
                to_params(&NullBdevParams {
                    name: a.name.clone(),
                    uuid: a.uuid.clone(),
                    num_blocks: mib_to_blocks(a.total_size, a.block_size)?,
                    block_size: a.block_size,
                    latency_us: a.sim.latency_us,
                    max_iops: a.sim.max_iops,
                    max_bw_mbps: a.sim.max_bw_mbps,
                }),
            ),
            Command::BdevUringCreate(a) => (
                "bdev_uring_create",
                to_params(&UringBdevParams {
                    name: a.name.clone(),
                    filename: a.filename.clone(),
                    block_size: a.block_size,
                    uuid: a.uuid.clone(),
                    direct: !a.no_direct,
                }),
            ),
            Command::BdevDelete { name } => ("bdev_delete", Some(json!({ "name": name }))),
            Command::BdevGetBdevs { name } => (
                "bdev_get_bdevs",
                name.as_ref().map(|n| json!({ "name": n })),
            ),
            Command::FrameworkGetReactors => ("framework_get_reactors", None),
            Command::SaveConfig { .. } => ("save_config", None),
            Command::VmpathGetEvents(a) => {
                let mut p = json!({ "since": a.since });
                if let Some(max) = a.max {
                    p["max"] = json!(max);
                }
                if a.wait_ms > 0 {
                    p["wait_ms"] = json!(a.wait_ms);
                }
                ("vmpath_get_events", Some(p))
            }
            Command::Vm(c) => {
                let (m, p) = c.request();
                return Ok((m, p));
            }
            Command::Nvme(c) => return Ok(c.request()),
            Command::Nvmf(c) => return Ok(c.request()),
            Command::Call { method, params } => {
                let params = params
                    .as_deref()
                    .map(serde_json::from_str::<Value>)
                    .transpose()
                    .map_err(CommandError::BadJson)?;
                return Ok((method.clone(), params));
            }
        };
        Ok((method.to_owned(), params))
    }

    /// The result as text for a human (`--json` prints the raw result instead).
    pub fn render(&self, result: &Value) -> Result<String, FormatError> {
        match self {
            Command::VmpathGetVersion => format::version(result),
            Command::RpcGetMethods => format::methods(result),
            Command::BdevMallocCreate(_)
            | Command::BdevNullCreate(_)
            | Command::BdevUringCreate(_) => Ok(match result {
                Value::String(name) => format!("{name}\n"),
                other => format!("{other}\n"),
            }),
            Command::BdevDelete { name } => Ok(if result == &Value::Bool(true) {
                format!("deleted bdev {name}\n")
            } else {
                format!("{result}\n")
            }),
            Command::BdevGetBdevs { .. } => format::bdevs(result),
            Command::FrameworkGetReactors => format::reactors(result),
            Command::SaveConfig { .. } => format::saved_config(result),
            Command::VmpathGetEvents(_) => format::events(result),
            Command::Vm(c) => c.render(result),
            Command::Nvme(c) => c.render(result),
            Command::Nvmf(c) => c.render(result),
            Command::Call { .. } => Ok(pretty(result)),
        }
    }
}

/// Pretty-printed JSON with a final newline.
pub fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(mib_to_blocks(64.0, 4096).unwrap(), 16384);
        assert_eq!(mib_to_blocks(1.0, 512).unwrap(), 2048);
        assert_eq!(mib_to_blocks(0.5, 4096).unwrap(), 128);
        assert!(mib_to_blocks(0.0, 512).is_err());
        assert!(mib_to_blocks(-1.0, 512).is_err());
        assert!(mib_to_blocks(f64::NAN, 512).is_err());
        assert!(mib_to_blocks(0.001, 4096).is_err());
        assert!(mib_to_blocks(1.0, 0).is_err());
    }

    #[test]
    fn requests_use_spdk_param_names() {
        let cmd = Command::BdevMallocCreate(MallocCreateArgs {
            name: "M1".into(),
            total_size: 64.0,
            block_size: 4096,
            uuid: None,
            sim: SimArgs {
                latency_us: 5,
                max_iops: 0,
                max_bw_mbps: 0,
            },
        });
        let (method, params) = cmd.request().unwrap();
        assert_eq!(method, "bdev_malloc_create");
        assert_eq!(
            params.unwrap(),
            json!({"name": "M1", "num_blocks": 16384, "block_size": 4096, "latency_us": 5})
        );
        let cmd = Command::BdevUringCreate(UringCreateArgs {
            filename: "/f".into(),
            name: "U".into(),
            block_size: None,
            uuid: None,
            no_direct: true,
        });
        assert_eq!(
            cmd.request().unwrap().1.unwrap(),
            json!({"name": "U", "filename": "/f", "direct": false})
        );
        let cmd = Command::Call {
            method: "x".into(),
            params: Some("{bad".into()),
        };
        assert!(matches!(cmd.request(), Err(CommandError::BadJson(_))));
        let cmd = Command::BdevGetBdevs { name: None };
        assert_eq!(cmd.request().unwrap(), ("bdev_get_bdevs".into(), None));
    }
}
