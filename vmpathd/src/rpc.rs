//! The daemon's JSON-RPC methods (SPDK naming: `object_verb`).
//!
//! | method | params | result |
//! |---|---|---|
//! | `vmpath_get_version` | – | `{"version", "fields": {"major","minor","patch"}}` |
//! | `bdev_malloc_create` | [`MallocBdevParams`] | bdev name |
//! | `bdev_null_create` | [`NullBdevParams`] | bdev name |
//! | `bdev_uring_create` | [`UringBdevParams`] | bdev name |
//! | `bdev_delete` | `{"name"}` | `true` |
//! | `bdev_get_bdevs` | `{"name"?}` | array of bdev objects |
//! | `framework_get_reactors` | – | `{"tick_rate", "reactors": [...]}` |
//! | `save_config` | `{"filename"?}` | `{"config": "<toml>"}` (and writes the file) |
//!
//! The server itself answers `rpc_get_methods` and `vmpath_get_events` (management events,
//! see [`vmpath_mgmt::EventBus`]).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_bdev::{uuid_string, BlockDevice};
use vmpath_config::{BdevConfig, MallocBdevParams, NullBdevParams, UringBdevParams};
use vmpath_mgmt::{parse_params, RpcError, RpcHandler};

use crate::daemon::State;

/// Every method this daemon serves (besides the server's own `rpc_get_methods`).
pub const METHODS: &[&str] = &[
    "vmpath_get_version",
    "bdev_malloc_create",
    "bdev_null_create",
    "bdev_uring_create",
    "bdev_delete",
    "bdev_get_bdevs",
    "framework_get_reactors",
    "save_config",
];

/// Dispatches RPC calls to the daemon state.
#[derive(Debug)]
pub struct Handler {
    state: Arc<State>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptNameParam {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SaveConfigParams {
    #[serde(default)]
    filename: Option<String>,
}

type Call = fn(&State, &str, Option<Value>) -> Option<Result<Value, RpcError>>;

/// The RPC modules: their method lists (in `rpc_get_methods` order) and handlers.
const MODULES: &[(&[&str], Call)] = &[
    (crate::vm_rpc::METHODS, crate::vm_rpc::call),
    (crate::hosts::METHODS, crate::hosts::call),
    (crate::vhost_rpc::METHODS, crate::vhost_rpc::call),
    (crate::nvme_rpc::METHODS, crate::nvme_rpc::call),
    (crate::nvmf_rpc::METHODS, crate::nvmf_rpc::call),
];

pub(crate) fn no_params(params: &Option<Value>) -> Result<(), RpcError> {
    match params {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(m)) if m.is_empty() => Ok(()),
        Some(_) => Err(RpcError::invalid_params("this method takes no parameters")),
    }
}

fn opt_params<T: serde::de::DeserializeOwned + Default>(
    params: Option<Value>,
) -> Result<T, RpcError> {
    match params {
        None | Some(Value::Null) => Ok(T::default()),
        p => parse_params(p),
    }
}

impl Handler {
    /// A handler over the daemon state.
    pub fn new(state: Arc<State>) -> Self {
        Handler { state }
    }

    fn create_bdev(&self, cfg: BdevConfig) -> Result<Value, RpcError> {
        cfg.validate()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let name = cfg.name().to_string();
        if self.state.bdevs.contains(&name) {
            return Err(RpcError::exists(format!("bdev {name} already exists")));
        }
        let dev = crate::bdevs::build(&cfg).map_err(|e| match e {
            vmpath_bdev::BdevError::InvalidParam { .. } => RpcError::invalid_params(e.to_string()),
            other => RpcError::internal(format!("creating bdev {name}: {other}")),
        })?;
        self.state
            .bdevs
            .insert(dev)
            .map_err(|e| RpcError::exists(e.to_string()))?;
        self.state
            .config
            .lock()
            .expect("config lock")
            .bdevs
            .push(cfg);
        tracing::info!(bdev = %name, "bdev created by RPC");
        Ok(Value::String(name))
    }

    fn delete_bdev(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: NameParam = parse_params(params)?;
        if let Some(s) = crate::nvmf_rpc::bdev_in_use(&self.state, &p.name) {
            return Err(RpcError::busy(format!(
                "bdev {} is exported by NVMe-oF subsystem {s}; remove the namespace first",
                p.name
            )));
        }
        if let Some(c) = crate::vhost_rpc::bdev_in_use(&self.state, &p.name) {
            return Err(RpcError::busy(format!(
                "bdev {} is used by vhost controller {c}; delete the controller first",
                p.name
            )));
        }
        self.state
            .bdevs
            .remove(&p.name)
            .map_err(|e| RpcError::no_device(e.to_string()))?;
        self.state
            .config
            .lock()
            .expect("config lock")
            .bdevs
            .retain(|b| b.name() != p.name);
        tracing::info!(bdev = %p.name, "bdev deleted by RPC");
        Ok(Value::Bool(true))
    }

    fn bdev_json(&self, dev: &dyn BlockDevice) -> Value {
        let info = dev.info();
        let stats = dev.stats();
        let params = self
            .state
            .config
            .lock()
            .expect("config lock")
            .bdev(&info.name)
            .map(|c| serde_json::to_value(c).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        json!({
            "name": info.name,
            "type": info.kind,
            "block_size": info.block_size,
            "num_blocks": info.num_blocks,
            "uuid": uuid_string(&info.uuid),
            "buf_align": info.buf_align,
            "read_only": info.read_only,
            "params": params,
            "stats": {
                "read_ops": stats.read_ops,
                "write_ops": stats.write_ops,
                "bytes_read": stats.bytes_read,
                "bytes_written": stats.bytes_written,
                "other_ops": stats.other_ops,
                "errors": stats.errors,
            }
        })
    }

    fn get_bdevs(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: OptNameParam = opt_params(params)?;
        let list = match p.name {
            Some(name) => vec![self
                .state
                .bdevs
                .get(&name)
                .map_err(|e| RpcError::no_device(e.to_string()))?],
            None => self.state.bdevs.list(),
        };
        Ok(Value::Array(
            list.iter().map(|d| self.bdev_json(d.as_ref())).collect(),
        ))
    }

    fn get_reactors(&self) -> Value {
        let reactors: Vec<Value> = self
            .state
            .reactors
            .iter()
            .map(|h| {
                let s = h.stats();
                json!({
                    "id": h.id(),
                    "lcore": h.core(),
                    "state": h.state_name(),
                    "busy_ticks": s.busy_ticks,
                    "idle_ticks": s.idle_ticks,
                    "poller_runs": s.poller_runs,
                    "messages": s.messages,
                    "sleeps": s.sleeps,
                    "pollers": s.pollers,
                })
            })
            .collect();
        json!({ "tick_rate": 1_000_000_000u64, "reactors": reactors })
    }

    fn save_config(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: SaveConfigParams = opt_params(params)?;
        let text = self
            .state
            .config
            .lock()
            .expect("config lock")
            .to_toml_string()
            .map_err(|e| RpcError::internal(e.to_string()))?;
        if let Some(f) = &p.filename {
            std::fs::write(f, &text)
                .map_err(|e| RpcError::invalid_params(format!("cannot write {f}: {e}")))?;
        }
        Ok(json!({ "config": text }))
    }
}

impl RpcHandler for Handler {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "vmpath_get_version" => {
                no_params(&params)?;
                let mut parts = crate::VERSION
                    .split('.')
                    .map(|p| p.parse::<u64>().unwrap_or(0));
                Ok(json!({
                    "version": format!("vmpath v{}", crate::VERSION),
                    "fields": {
                        "major": parts.next(),
                        "minor": parts.next(),
                        "patch": parts.next(),
                    }
                }))
            }
            "bdev_malloc_create" => {
                let p: MallocBdevParams = parse_params(params)?;
                self.create_bdev(BdevConfig::Malloc(p))
            }
            "bdev_null_create" => {
                let p: NullBdevParams = parse_params(params)?;
                self.create_bdev(BdevConfig::Null(p))
            }
            "bdev_uring_create" => {
                let p: UringBdevParams = parse_params(params)?;
                self.create_bdev(BdevConfig::Uring(p))
            }
            "bdev_delete" => self.delete_bdev(params),
            "bdev_get_bdevs" => self.get_bdevs(params),
            "framework_get_reactors" => {
                no_params(&params)?;
                Ok(self.get_reactors())
            }
            "save_config" => self.save_config(params),
            // Every other method belongs to one module, found by its method list.
            m => MODULES
                .iter()
                .find(|(methods, _)| methods.contains(&m))
                .and_then(|(_, call)| call(&self.state, m, params))
                .unwrap_or_else(|| Err(RpcError::method_not_found(m))),
        }
    }

    fn methods(&self) -> Vec<String> {
        METHODS
            .iter()
            .chain(MODULES.iter().flat_map(|(methods, _)| methods.iter()))
            .map(|s| s.to_string())
            .collect()
    }
}
